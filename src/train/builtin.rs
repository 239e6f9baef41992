//! The built-in default run: a corpus of generated children's stories, a 512-token BPE
//! tokenizer trained on it, and the corpus tokenized to llama2.c's uint16 format — all
//! deterministic from the seed and cached in the run folder.

use crate::data::TokenData;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Stories generated for the built-in corpus.
pub const N_STORIES: usize = 12_000;
/// Vocabulary of the built-in tokenizer (the stories260k shape).
pub const VOCAB: usize = 512;

pub struct Builtin {
    pub tokens: PathBuf,
    pub tokenizer: PathBuf,
}

/// Creates (or reuses) `dir/tokenizer.bin` and `dir/tokens.bin`.
pub fn prepare(dir: &Path, seed: u64, quiet: bool) -> Result<Builtin> {
    let tokenizer = dir.join("tokenizer.bin");
    let tokens = dir.join("tokens.bin");
    let stamp = dir.join("corpus.json");
    let want =
        serde_json::json!({"seed": seed, "stories": N_STORIES, "vocab": VOCAB, "version": 1});
    let fresh = std::fs::read(&stamp)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v == want)
        && tokenizer.exists()
        && tokens.exists();
    if fresh {
        return Ok(Builtin { tokens, tokenizer });
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let t = std::time::Instant::now();
    let stories = crate::data::corpus::corpus(seed, N_STORIES);
    let bytes: usize = stories.iter().map(|s| s.len()).sum();
    let tok = crate::tokenizer::train_bpe(stories.iter().map(|s| s.as_str()), VOCAB)?;
    tok.save(&tokenizer)?;
    let mut ids: Vec<u16> = Vec::with_capacity(bytes / 2);
    for s in &stories {
        ids.extend(tok.encode(s, true, false).into_iter().map(|x| x as u16));
    }
    crate::util::fs::write_atomic(&tokens, |w| {
        let b: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_all(&b)
    })
    .with_context(|| format!("{}: cannot write", tokens.display()))?;
    crate::util::fs::write_atomic(&stamp, |w| w.write_all(want.to_string().as_bytes()))?;
    if !quiet {
        eprintln!(
            "built-in corpus: {N_STORIES} generated stories ({:.1} MB), BPE tokenizer with {VOCAB} tokens, {} tokens ({:.2} bytes/token) in {:.1}s -> {}",
            bytes as f64 / 1e6,
            ids.len(),
            bytes as f64 / ids.len() as f64,
            t.elapsed().as_secs_f64(),
            dir.display()
        );
    }
    Ok(Builtin { tokens, tokenizer })
}

/// Entropy (nats/token) of the unigram distribution of `data`: the loss of the best model
/// that ignores context.
pub fn unigram_entropy(data: &TokenData) -> f64 {
    let mut counts = std::collections::HashMap::<u32, u64>::new();
    for t in data.ids().iter() {
        *counts.entry(t).or_default() += 1;
    }
    let n = data.len() as f64;
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}
