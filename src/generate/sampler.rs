//! Next-token sampling, step for step as llama2.c run.c's `sample`, so that the same logits,
//! settings and seed pick the same tokens:
//! - temperature 0: argmax (the first maximum), and no random number is drawn;
//! - otherwise logits / temperature, softmax, one coin from the xorshift generator, then
//!   - top-p outside (0, 1): `sample_mult`, the inverse CDF over all tokens in id order;
//!   - else `sample_topp`: drop tokens under `(1 − p)/(n − 1)`, sort the rest by descending
//!     probability (ties keep id order, as glibc's merge-sort `qsort` does), keep the shortest
//!     prefix whose cumulative probability exceeds p, and pick `r = coin · cumulative` in it.
//!
//! All arithmetic is f32 in run.c's order. The buffers are allocated once, not per token.

use crate::util::rng::Rng;

/// run.c's `Sampler`: settings, the generator state and the scratch buffers.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub temperature: f32,
    pub topp: f32,
    pub rng: Rng,
    probs: Vec<f32>,
    /// `(probability, token id)` candidates of top-p sampling.
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler over `vocab_size` logits. run.c seeds the generator state with the seed as is
    /// (and replaces a seed of 0 by the time; callers do that, see [`default_seed`]).
    pub fn new(vocab_size: usize, temperature: f32, topp: f32, seed: u64) -> Sampler {
        Sampler {
            temperature,
            topp,
            rng: Rng::new(seed),
            probs: vec![0.0; vocab_size],
            candidates: Vec::with_capacity(vocab_size),
        }
    }

    /// run.c `sample`: the next token for `logits` (length = the vocabulary size).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits) as u32;
        }
        self.probs.clear();
        self.probs
            .extend(logits.iter().map(|&l| l / self.temperature));
        softmax(&mut self.probs);
        let coin = self.rng.next_f32();
        if self.topp <= 0.0 || self.topp >= 1.0 {
            sample_mult(&self.probs, coin) as u32
        } else {
            sample_topp(&self.probs, self.topp, &mut self.candidates, coin)
        }
    }
}

/// run.c's default seed: the current Unix time in seconds, as `(unsigned int)time(NULL)`.
pub fn default_seed() -> u64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    (secs as u32).max(1) as u64
}

/// Index of the first maximum (run.c `sample_argmax`; NaNs never win).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for i in 1..x.len() {
        if x[i] > x[best] {
            best = i;
        }
    }
    best
}

/// In-place softmax in run.c's order: max, `expf(x − max)`, sequential sum, divide.
pub fn softmax(x: &mut [f32]) {
    let Some(&first) = x.first() else { return };
    let max = x.iter().fold(first, |m, &v| if v > m { v } else { m });
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// run.c `sample_mult`: the first index whose running CDF exceeds `coin` ∈ [0, 1); the last
/// index when rounding leaves the total below `coin`.
pub fn sample_mult(probs: &[f32], coin: f32) -> usize {
    let mut cdf = 0f32;
    for (i, &p) in probs.iter().enumerate() {
        cdf += p;
        if coin < cdf {
            return i;
        }
    }
    probs.len().saturating_sub(1)
}

/// run.c `sample_topp` (nucleus sampling); `candidates` is scratch space of `probs.len()`.
///
/// Where run.c has undefined behaviour (no probability reaches the cutoff: NaN logits, or
/// `topp < 1/n` with a flat distribution) this returns the first maximum instead.
pub fn sample_topp(probs: &[f32], topp: f32, candidates: &mut Vec<(f32, u32)>, coin: f32) -> u32 {
    let n = probs.len();
    // Tokens below this cannot be in the nucleus: they would need all the others to sum
    // below topp. run.c divides by the int n − 1 converted to float.
    let cutoff = (1.0f32 - topp) / (n as i64 - 1) as f32;
    candidates.clear();
    candidates.extend(
        probs
            .iter()
            .enumerate()
            .filter(|(_, &p)| p >= cutoff)
            .map(|(i, &p)| (p, i as u32)),
    );
    if candidates.is_empty() {
        return argmax(probs) as u32;
    }
    // run.c's comparator (-1 if a > b, 1 if a < b, else 0) with a stable sort: equal
    // probabilities keep ascending ids.
    candidates.sort_by(|a, b| {
        if a.0 > b.0 {
            std::cmp::Ordering::Less
        } else if a.0 < b.0 {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    let mut cumulative = 0f32;
    let mut last = candidates.len() - 1;
    for (i, &(p, _)) in candidates.iter().enumerate() {
        cumulative += p;
        if cumulative > topp {
            last = i;
            break;
        }
    }
    let r = coin * cumulative;
    let mut cdf = 0f32;
    for &(p, id) in &candidates[..=last] {
        cdf += p;
        if r < cdf {
            return id;
        }
    }
    candidates[last].1
}
