//! Drawing training windows from token data, as [`Sampling`] says: a [`Sampler`]'s state
//! (RNG and cursor) is part of the checkpoint, so a resumed run draws the same windows.

use super::settings::Sampling;
use crate::data::TokenData;
use crate::util::rng::Rng;

/// Draws training windows: B sequences of S inputs and their S next-token targets.
pub struct Sampler {
    pub rng: Rng,
    pub cursor: u64,
    pub mode: Sampling,
}

impl Sampler {
    pub fn fill(&mut self, data: &TokenData, seq: usize, inputs: &mut [u32], targets: &mut [u32]) {
        let toks = data.ids();
        let span = (toks.len() - seq - 1) as u64 + 1;
        for (inp, tgt) in inputs.chunks_mut(seq).zip(targets.chunks_mut(seq)) {
            let pos = match self.mode {
                Sampling::Random => self.rng.below(span) as usize,
                Sampling::Sequential => {
                    let p = (self.cursor % span) as usize;
                    self.cursor += seq as u64;
                    p
                }
            };
            for i in 0..seq {
                inp[i] = toks.get(pos + i);
                tgt[i] = toks.get(pos + i + 1);
            }
        }
    }

    /// Moves on as if `sequences` windows had been drawn with [`Sampler::fill`] (another
    /// data-parallel rank's share), without copying them.
    pub fn skip(&mut self, data: &TokenData, seq: usize, sequences: usize) {
        let span = (data.tokens().len() - seq - 1) as u64 + 1;
        for _ in 0..sequences {
            match self.mode {
                Sampling::Random => {
                    self.rng.below(span);
                }
                Sampling::Sequential => self.cursor += seq as u64,
            }
        }
    }
}
