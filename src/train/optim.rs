//! AdamW over the parameter arena, global-norm gradient clipping, and the learning-rate
//! schedule (linear warm-up, cosine decay to a floor) — each a single pass over flat slices.

use crate::model::Layout;
use serde::{Deserialize, Serialize};

/// Optimizer hyperparameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub min_lr: f32,
    pub warmup: u64,
    pub total_steps: u64,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value (0 disables).
    pub grad_clip: f32,
}

impl AdamWConfig {
    /// Learning rate at optimizer step `step` (0-based): linear warm-up over `warmup` steps,
    /// then cosine decay from `lr` to `min_lr` at `total_steps`.
    pub fn lr_at(&self, step: u64) -> f32 {
        if step < self.warmup {
            return self.lr * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup).max(1);
        let p = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        (self.min_lr as f64 + coeff * (self.lr - self.min_lr) as f64) as f32
    }
}

/// The optimizer's state: first and second moments, same layout as the parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Updates applied so far (bias correction uses t = this + 1 for the next one).
    pub t: u64,
    /// Per-element weight decay mask as ranges exempt from decay (the RMSNorm gains).
    no_decay: Vec<std::ops::Range<usize>>,
}

/// Elements per parallel chunk of the optimizer and the norm: large enough that the two
/// cores each take a few big pieces (few synchronisations per step).
const CHUNK: usize = 1 << 18;

impl AdamW {
    pub fn new(layout: &Layout) -> AdamW {
        AdamW {
            m: vec![0.0; layout.total],
            v: vec![0.0; layout.total],
            t: 0,
            no_decay: layout.norm_ranges().to_vec(),
        }
    }

    /// Restores state read from a checkpoint.
    pub fn from_state(layout: &Layout, m: Vec<f32>, v: Vec<f32>, t: u64) -> AdamW {
        AdamW {
            m,
            v,
            t,
            no_decay: layout.norm_ranges().to_vec(),
        }
    }

    /// One AdamW update of `params` with gradients `grads` (already unscaled and clipped):
    /// `m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; p ← p − lr·(m̂/(√v̂+ε) + wd·p)`, with decoupled
    /// weight decay on every tensor except the RMSNorm gains.
    pub fn step(&mut self, cfg: &AdamWConfig, lr: f32, params: &mut [f32], grads: &[f32]) {
        use rayon::prelude::*;
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2 = 1.0 - cfg.beta2.powi(t);
        let (b1, b2, eps) = (cfg.beta1, cfg.beta2, cfg.eps);
        let step_size = lr / bc1;
        let inv_sqrt_bc2 = 1.0 / bc2.sqrt();
        let no_decay = &self.no_decay;
        params
            .par_chunks_mut(CHUNK)
            .zip(grads.par_chunks(CHUNK))
            .zip(self.m.par_chunks_mut(CHUNK))
            .zip(self.v.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(ci, (((p, g), m), v))| {
                let base = ci * CHUNK;
                // Decay applies per element; gains are short ranges, so split the chunk at
                // their borders and run a branch-free loop on each piece.
                let mut cuts = vec![0, p.len()];
                for r in no_decay {
                    for x in [r.start, r.end] {
                        if x > base && x < base + p.len() {
                            cuts.push(x - base);
                        }
                    }
                }
                cuts.sort_unstable();
                for w in cuts.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    if a == b {
                        continue;
                    }
                    let decayed = !no_decay.iter().any(|r| r.contains(&(base + a)));
                    let wd = if decayed { lr * cfg.weight_decay } else { 0.0 };
                    for i in a..b {
                        let gi = g[i];
                        let mi = b1 * m[i] + (1.0 - b1) * gi;
                        let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                        m[i] = mi;
                        v[i] = vi;
                        let denom = vi.sqrt() * inv_sqrt_bc2 + eps;
                        p[i] -= step_size * mi / denom + wd * p[i];
                    }
                }
            });
    }
}

/// Global L2 norm of a gradient arena, accumulated in f64 per chunk (deterministic: the
/// chunk sums are combined in order).
pub fn grad_norm(grads: &[f32]) -> f64 {
    use rayon::prelude::*;
    let parts: Vec<f64> = grads
        .par_chunks(CHUNK)
        .map(|c| {
            let mut acc = [0f64; 4];
            let mut it = c.chunks_exact(4);
            for q in it.by_ref() {
                for j in 0..4 {
                    acc[j] += (q[j] as f64) * (q[j] as f64);
                }
            }
            let tail: f64 = it
                .remainder()
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum();
            acc.iter().sum::<f64>() + tail
        })
        .collect();
    parts.iter().sum::<f64>().sqrt()
}

/// Multiplies every gradient by `s` (unscaling and clipping in one pass).
pub fn scale(grads: &mut [f32], s: f32) {
    use rayon::prelude::*;
    if s != 1.0 {
        grads.par_chunks_mut(CHUNK).for_each(|c| {
            for x in c {
                *x *= s;
            }
        });
    }
}

/// Index of the first non-finite value, if any.
pub fn first_non_finite(xs: &[f32]) -> Option<usize> {
    xs.iter().position(|x| !x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Config, Params};

    #[test]
    fn schedule_warmup_then_cosine() {
        let c = AdamWConfig {
            lr: 1.0,
            min_lr: 0.1,
            warmup: 10,
            total_steps: 110,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
        };
        assert!((c.lr_at(0) - 0.1).abs() < 1e-6);
        assert!((c.lr_at(9) - 1.0).abs() < 1e-6);
        assert!((c.lr_at(10) - 1.0).abs() < 1e-6);
        assert!((c.lr_at(60) - 0.55).abs() < 1e-5);
        assert!((c.lr_at(110) - 0.1).abs() < 1e-6);
        assert!((c.lr_at(500) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn adamw_matches_scalar_formula() {
        let cfgm = Config::llama(8, 16, 1, 2, 2, 10, 4);
        let lay = Params::zeros(&cfgm).layout;
        let n = lay.total;
        let mut p: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let c = AdamWConfig {
            lr: 0.01,
            min_lr: 0.0,
            warmup: 0,
            total_steps: 10,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 0.0,
        };
        let mut opt = AdamW::new(&lay);
        let p0 = p.clone();
        opt.step(&c, 0.01, &mut p, &g);
        opt.step(&c, 0.01, &mut p, &g);
        // Reference in f64, two steps, written out.
        for i in 0..n {
            let (mut pi, mut m, mut v) = (p0[i] as f64, 0.0f64, 0.0f64);
            let gi = g[i] as f64;
            let wd = if lay.is_norm(i) { 0.0 } else { 0.1 };
            for t in 1..=2 {
                m = 0.9 * m + 0.1 * gi;
                v = 0.95 * v + 0.05 * gi * gi;
                let mh = m / (1.0 - 0.9f64.powi(t));
                let vh = v / (1.0 - 0.95f64.powi(t));
                pi -= 0.01 * (mh / (vh.sqrt() + 1e-8) + wd * pi);
            }
            assert!((pi - p[i] as f64).abs() < 1e-5, "{i}: {pi} vs {}", p[i]);
        }
    }

    #[test]
    fn norm_is_l2() {
        let g = vec![3.0f32, 4.0, 0.0];
        assert!((grad_norm(&g) - 5.0).abs() < 1e-12);
        assert_eq!(first_non_finite(&[1.0, f32::NAN]), Some(1));
    }
}
