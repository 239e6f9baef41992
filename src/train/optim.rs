//! AdamW over the parameter arena, global-norm gradient clipping, and the learning-rate
//! schedule (linear warm-up, cosine decay to a floor) — each a single pass over flat slices.

use crate::kernels::ops::multiversion;
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
/// cores each take a few big pieces (few synchronisations per step), small enough (1 MiB of
/// each array) that a late core does not hold the other up for long.
const CHUNK: usize = 1 << 18;

/// Per-update constants of the AdamW formula.
#[derive(Clone, Copy)]
struct AdamWConsts {
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    /// lr·weight_decay for decayed tensors, 0 for the gains.
    wd: f32,
    /// multiplies every gradient as it is read (unscaling, clipping)
    grad_mult: f32,
}

multiversion! {
    /// The AdamW update of one contiguous piece, all slices the same length: reads p, g, m,
    /// v once and writes p, m, v once (28 bytes per parameter, the memory-bound minimum).
    /// Returns whether every updated parameter is finite (a branch-free test of the exponent
    /// bits of the value just written, so the check costs no pass of its own).
    fn adamw_piece(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamWConsts) -> bool {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        let mut finite = true;
        for i in 0..n {
            let gi = g[i] * k.grad_mult;
            let mi = k.b1 * m[i] + (1.0 - k.b1) * gi;
            let vi = k.b2 * v[i] + (1.0 - k.b2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            let denom = vi.sqrt() * k.inv_sqrt_bc2 + k.eps;
            p[i] -= k.step_size * mi / denom + k.wd * p[i];
            finite &= p[i].to_bits() & 0x7f80_0000 != 0x7f80_0000;
        }
        finite
    }
}

multiversion! {
    /// Σ x² in f64 over 16 lanes (f32 squares are exact in f64; the lanes vectorise).
    fn sum_squares(x: &[f32]) -> f64 {
        let mut acc = [0f64; 16];
        let mut it = x.chunks_exact(16);
        for c in it.by_ref() {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += (v as f64) * (v as f64);
            }
        }
        let tail: f64 = it.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
        acc.iter().sum::<f64>() + tail
    }
}

multiversion! {
    /// Whether every value is finite (no early exit, so it vectorises).
    fn all_finite(x: &[f32]) -> bool {
        // A value is finite iff its exponent bits are not all ones.
        x.iter().fold(true, |ok, v| ok & (v.to_bits() & 0x7f80_0000 != 0x7f80_0000))
    }
}

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
    /// Returns whether every updated parameter is finite.
    pub fn step(&mut self, cfg: &AdamWConfig, lr: f32, params: &mut [f32], grads: &[f32]) -> bool {
        self.step_scaled(cfg, lr, params, grads, 1.0)
    }

    /// [`AdamW::step`] with every gradient multiplied by `grad_mult` as it is read: the
    /// same result as scaling the gradients first, one pass over the arena fewer. Returns
    /// whether every updated parameter is finite (checked as each is written).
    pub fn step_scaled(
        &mut self,
        cfg: &AdamWConfig,
        lr: f32,
        params: &mut [f32],
        grads: &[f32],
        grad_mult: f32,
    ) -> bool {
        use rayon::prelude::*;
        assert!(
            params.len() == grads.len() && params.len() == self.m.len(),
            "AdamW: {} parameters, {} gradients, {} moments",
            params.len(),
            grads.len(),
            self.m.len()
        );
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2 = 1.0 - cfg.beta2.powi(t);
        let base = AdamWConsts {
            b1: cfg.beta1,
            b2: cfg.beta2,
            eps: cfg.eps,
            step_size: lr / bc1,
            inv_sqrt_bc2: 1.0 / bc2.sqrt(),
            wd: lr * cfg.weight_decay,
            grad_mult,
        };
        let no_decay = &self.no_decay[..];
        params
            .par_chunks_mut(CHUNK)
            .zip(grads.par_chunks(CHUNK))
            .zip(self.m.par_chunks_mut(CHUNK))
            .zip(self.v.par_chunks_mut(CHUNK))
            .enumerate()
            .map(|(ci, (((p, g), m), v))| {
                // Walk the chunk in pieces cut at the borders of the gains (few, short
                // ranges), each piece one branch-free loop with its own decay.
                let (start, end) = (ci * CHUNK, ci * CHUNK + p.len());
                let mut a = start;
                let mut finite = true;
                while a < end {
                    let (b, decayed) = match no_decay.iter().find(|r| r.contains(&a)) {
                        Some(r) => (r.end.min(end), false),
                        None => {
                            let next = no_decay
                                .iter()
                                .filter(|r| r.start > a)
                                .map(|r| r.start)
                                .min()
                                .unwrap_or(end);
                            (next.min(end), true)
                        }
                    };
                    let k = AdamWConsts {
                        wd: if decayed { base.wd } else { 0.0 },
                        ..base
                    };
                    let r = a - start..b - start;
                    finite &= adamw_piece(
                        &mut p[r.clone()],
                        &g[r.clone()],
                        &mut m[r.clone()],
                        &mut v[r],
                        k,
                    );
                    a = b;
                }
                finite
            })
            .reduce(|| true, |x, y| x & y)
    }
}

/// Why [`clip_and_step`] did not update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonFinite {
    /// Arena index of the first non-finite gradient, or with `after_update` of the first
    /// non-finite parameter.
    pub index: usize,
    /// The gradients were finite but the update made a parameter non-finite: the parameters
    /// are lost (the caller must stop without checkpointing them).
    pub after_update: bool,
}

/// Everything the trainer does between the last backward pass and the next step, in the
/// fewest passes over the arena: the gradient norm (which is non-finite exactly when some
/// gradient is, so the search for the bad one runs only then), the unscale-and-clip factor,
/// and AdamW reading the gradients through that factor ([`AdamW::step_scaled`]).
///
/// `grads` hold `loss_scale × the gradients`; the reported norm is of the unscaled ones;
/// the gradients are clipped to `cfg.grad_clip` (0: no clipping). Returns that norm, or
/// where the first non-finite gradient is (nothing updated then). Same arithmetic as
/// [`grad_norm`], scaling by `1/loss_scale·min(1, clip/norm)`, then [`AdamW::step`].
pub fn clip_and_step(
    opt: &mut AdamW,
    cfg: &AdamWConfig,
    lr: f32,
    params: &mut [f32],
    grads: &[f32],
    loss_scale: f32,
) -> Result<f64, NonFinite> {
    let norm = grad_norm(grads) / loss_scale as f64;
    if !norm.is_finite() {
        let index = first_non_finite(grads).unwrap_or(0);
        return Err(NonFinite {
            index,
            after_update: false,
        });
    }
    let clip = cfg.grad_clip as f64;
    let mut mult = 1.0 / loss_scale as f64;
    if clip > 0.0 && norm > clip {
        mult *= clip / norm;
    }
    if !opt.step_scaled(cfg, lr, params, grads, mult as f32) {
        let index = first_non_finite(params).unwrap_or(0);
        return Err(NonFinite {
            index,
            after_update: true,
        });
    }
    Ok(norm)
}

/// Global L2 norm of a gradient arena, accumulated in f64 per chunk (deterministic: the
/// chunk sums are combined in order). Not finite exactly when some gradient is not (f32
/// squares cannot overflow an f64 sum of any arena that fits in memory).
pub fn grad_norm(grads: &[f32]) -> f64 {
    use rayon::prelude::*;
    // Chunk sums into a fixed-size stack array in order, then summed in order: no
    // allocation, and the same result whatever thread ran which chunk.
    const MAX_PARTS: usize = 1024;
    let chunk = CHUNK.max(grads.len().div_ceil(MAX_PARTS));
    let mut parts = [0f64; MAX_PARTS];
    parts
        .par_iter_mut()
        .zip(grads.par_chunks(chunk))
        .for_each(|(s, c)| *s = sum_squares(c));
    parts.iter().sum::<f64>().sqrt()
}

/// Sets every gradient to zero (in parallel: the first touch of each page is the costly
/// part, and both cores share it).
pub fn zero(grads: &mut [f32]) {
    use rayon::prelude::*;
    grads.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0));
}

/// Index of the first non-finite value, if any.
pub fn first_non_finite(xs: &[f32]) -> Option<usize> {
    use rayon::prelude::*;
    // Scan chunks in parallel without early exit (vectorised), then locate the first bad
    // value inside the first bad chunk.
    xs.par_chunks(CHUNK)
        .position_first(|c| !all_finite(c))
        .and_then(|ci| {
            let base = ci * CHUNK;
            xs[base..]
                .iter()
                .position(|x| !x.is_finite())
                .map(|i| base + i)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Config, Params};

    /// The separate scaling pass the fused step replaced: the arithmetic it must match.
    fn scale(grads: &mut [f32], s: f32) {
        grads.iter_mut().for_each(|v| *v *= s);
    }

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
    fn step_scaled_is_scale_then_step() {
        let cfgm = Config::llama(8, 16, 2, 2, 2, 10, 4);
        let lay = Params::zeros(&cfgm).layout;
        let n = lay.total;
        let p0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
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
        let (mut a, mut b) = (AdamW::new(&lay), AdamW::new(&lay));
        let (mut pa, mut pb) = (p0.clone(), p0.clone());
        let mut gs = g.clone();
        scale(&mut gs, 0.3);
        a.step(&c, 0.01, &mut pa, &gs);
        b.step_scaled(&c, 0.01, &mut pb, &g, 0.3);
        assert_eq!(pa, pb);
        assert_eq!((a.m, a.v), (b.m, b.v));
    }

    #[test]
    fn clip_and_step_is_the_trainers_sequence() {
        let cfgm = Config::llama(8, 16, 2, 2, 2, 10, 4);
        let lay = Params::zeros(&cfgm).layout;
        let n = lay.total;
        let p0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let g: Vec<f32> = (0..n).map(|i| 64.0 * (i as f32 * 0.11).cos()).collect();
        let c = AdamWConfig {
            lr: 0.01,
            min_lr: 0.0,
            warmup: 0,
            total_steps: 10,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        };
        // The separate passes the trainer once made: norm of the unscaled gradients,
        // unscale and clip, AdamW.
        let loss_scale = 64.0f32;
        let mut ga = g.clone();
        let want_norm = grad_norm(&ga) / loss_scale as f64;
        assert!(want_norm > 1.0, "the test must clip");
        scale(
            &mut ga,
            (1.0 / loss_scale as f64 * (1.0 / want_norm)) as f32,
        );
        let (mut a, mut b) = (AdamW::new(&lay), AdamW::new(&lay));
        let (mut pa, mut pb) = (p0.clone(), p0.clone());
        a.step(&c, 0.01, &mut pa, &ga);
        let norm = clip_and_step(&mut b, &c, 0.01, &mut pb, &g, loss_scale).unwrap();
        assert_eq!(norm, want_norm);
        assert_eq!(pa, pb);
        // A non-finite gradient: nothing moves, the first bad index is named.
        let mut bad = g.clone();
        bad[n - 3] = f32::NAN;
        bad[n - 1] = f32::INFINITY;
        let before = (pb.clone(), b.m.clone(), b.t);
        let e = clip_and_step(&mut b, &c, 0.01, &mut pb, &bad, loss_scale).unwrap_err();
        assert_eq!(
            e,
            NonFinite {
                index: n - 3,
                after_update: false
            }
        );
        assert_eq!((pb, b.m, b.t), before);
    }

    #[test]
    fn arena_wide_passes_over_several_chunks() {
        // Long enough for several parallel chunks and a ragged last one.
        let n = 3 * CHUNK + 1234;
        let g: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-3).collect();
        let want: f64 = g
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        let got = grad_norm(&g);
        assert!((got - want).abs() <= 1e-12 * want, "{got} {want}");
        assert_eq!(first_non_finite(&g), None);
        let mut bad = g.clone();
        bad[2 * CHUNK + 7] = f32::INFINITY;
        bad[3 * CHUNK + 5] = f32::NAN;
        assert_eq!(first_non_finite(&bad), Some(2 * CHUNK + 7));
        assert!(!grad_norm(&bad).is_finite());
        let mut z = g.clone();
        scale(&mut z, -2.0);
        assert!(z.iter().zip(&g).all(|(a, b)| *a == -2.0 * b));
        zero(&mut z);
        assert!(z.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn norm_is_l2() {
        let g = vec![3.0f32, 4.0, 0.0];
        assert!((grad_norm(&g) - 5.0).abs() < 1e-12);
        assert_eq!(first_non_finite(&[1.0, f32::NAN]), Some(1));
    }
}
