//! Fixtures shared by the end-to-end tests: a tiny GQA config and token data drawn from a
//! small repetitive language, so that a few dozen steps are enough to see learning.

use std::path::{Path, PathBuf};

/// Writes `tiny.toml` and `tokens.bin` into `dir`; returns their paths.
pub fn tiny_model_and_data(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        "dim = 32\nhidden_dim = 64\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nvocab_size = 64\nseq_len = 32\n",
    )
    .unwrap();
    let mut rng = anetrain::util::rng::Rng::new(5);
    let mut toks: Vec<u16> = Vec::new();
    while toks.len() < 20_000 {
        toks.push(1);
        let start = 3 + rng.below(20) as u16;
        for i in 0..(5 + rng.below(20) as u16) {
            toks.push(3 + (start + 3 * i) % 60);
        }
    }
    let data = dir.join("tokens.bin");
    let bytes: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(&data, bytes).unwrap();
    (cfg, data)
}
