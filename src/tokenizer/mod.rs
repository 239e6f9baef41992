//! llama2.c `tokenizer.bin`: loading, run.c's BPE encoding and decoding, and BPE training.
//!
//! API placeholder: the implementation replaces these bodies.

use anyhow::{bail, Result};
use std::path::Path;

/// A llama2.c tokenizer: pieces with merge scores; id 0 `<unk>`, 1 `<s>` (BOS), 2 `</s>` (EOS),
/// 3..=258 the byte-fallback pieces `<0x00>`..`<0xFF>`.
pub struct Tokenizer {
    pub pieces: Vec<Vec<u8>>,
    pub scores: Vec<f32>,
    pub max_token_length: u32,
}

impl Tokenizer {
    /// Loads a llama2.c `tokenizer.bin`.
    pub fn load(_path: &Path) -> Result<Tokenizer> {
        bail!("tokenizer: not built yet")
    }
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
    /// run.c `encode`: dummy-prefix space, byte fallback, score-driven BPE merges.
    pub fn encode(&self, _text: &str, _bos: bool, _eos: bool) -> Vec<u32> {
        unimplemented!("tokenizer: not built yet")
    }
    /// run.c `decode`: the bytes of `token` following `prev` (leading space stripped after
    /// BOS; `<0xXX>` pieces become the raw byte).
    pub fn decode(&self, _prev: u32, _token: u32) -> &[u8] {
        unimplemented!("tokenizer: not built yet")
    }
}
