//! Dynamic loss scaling for backward passes that run in fp16.
//!
//! Why: the Neural Engine kernels store every gradient in fp16, whose smallest normal value
//! is 6.1e-5 (subnormals reach 6e-8 with fewer bits). The gradient of a mean loss over
//! `N = B·S` tokens enters the network as `(p − onehot)/N`, so with `N` in the hundreds the
//! per-element gradients sink into the subnormal range within a layer or two (the reference
//! trainer's loss plateaued at the unigram entropy until it scaled). Scaling the loss by `s`
//! scales every backward activation by `s`; the optimizer divides the gradients by `s` again.
//! Too large a scale overflows fp16 (65504) and shows up as inf/NaN gradients.
//!
//! The scheme: start at `s = 2^⌈log2 N⌉` (which cancels the `1/N` of the mean: per-token
//! gradients of order one), and after every backward pass check that all gradients are
//! finite. On inf/NaN: skip the update, halve `s`. After `growth_interval` finite steps in a
//! row: double `s`. `s` stays within `[1, 2^24]`. The scale is part of the training state
//! (checkpoint it) so a restarted process continues with the same value.
//!
//! Whether a run scales at all is the backend's answer to
//! [`crate::kernels::Kernels::needs_loss_scaling`]; an fp32 backend keeps `s = 1` fixed
//! ([`LossScaler::fixed`]) and only counts the finite steps.

/// The state of dynamic loss scaling.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    /// The factor to pass as `grad_scale`; divide the accumulated gradients by it.
    pub scale: f32,
    /// Finite steps in a row since the last change (a fixed scale never changes, so it
    /// counts every finite step).
    pub good_steps: u64,
    /// Finite steps in a row after which the scale doubles.
    pub growth_interval: u64,
    /// Whether the scale moves (fp16 backward); a fixed scaler never changes `scale`.
    pub dynamic: bool,
}

/// The largest scale the scaler will use.
pub const MAX_SCALE: f32 = (1u32 << 24) as f32;

/// Finite steps in a row after which a dynamic scale doubles.
pub const GROWTH_INTERVAL: u64 = 1000;

impl LossScaler {
    /// A dynamic scaler starting at `initial` (clamped to `[1, 2^24]`), doubling after
    /// [`GROWTH_INTERVAL`] finite steps.
    pub fn new(initial: f32) -> LossScaler {
        LossScaler {
            scale: initial.clamp(1.0, MAX_SCALE),
            good_steps: 0,
            growth_interval: GROWTH_INTERVAL,
            dynamic: true,
        }
    }

    /// A scale that never changes (fp32 backward: nothing underflows).
    pub fn fixed(scale: f32) -> LossScaler {
        LossScaler {
            scale,
            good_steps: 0,
            growth_interval: GROWTH_INTERVAL,
            dynamic: false,
        }
    }

    /// A scaler at exactly `scale` (no clamping: a run continues with the value it was
    /// given or checkpointed), dynamic or fixed as the backend needs
    /// ([`crate::kernels::Kernels::needs_loss_scaling`]).
    pub fn starting_at(scale: f32, dynamic: bool) -> LossScaler {
        LossScaler {
            dynamic,
            ..LossScaler::fixed(scale)
        }
    }

    /// The recommended start for a mean loss over `tokens` = B·S token columns:
    /// the next power of two ≥ `tokens`.
    pub fn for_tokens(tokens: usize) -> LossScaler {
        LossScaler::new(tokens.max(1).next_power_of_two() as f32)
    }

    /// Records the outcome of a backward pass; returns whether the optimizer may apply the
    /// gradients (`false`: they overflowed, skip this update).
    pub fn update(&mut self, grads_finite: bool) -> bool {
        if !grads_finite {
            if self.dynamic {
                self.scale = (self.scale * 0.5).max(1.0);
                self.good_steps = 0;
            }
            return false;
        }
        self.good_steps += 1;
        if self.dynamic && self.good_steps >= self.growth_interval {
            self.scale = (self.scale * 2.0).min(MAX_SCALE);
            self.good_steps = 0;
        }
        true
    }
}

/// Whether every value is finite (no inf, no NaN).
pub fn all_finite(v: &[f32]) -> bool {
    super::optim::first_non_finite(v).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_doubles_after_a_clean_run() {
        let mut s = LossScaler::for_tokens(300);
        assert_eq!(s.scale, 512.0);
        s.growth_interval = 3;
        assert!(!s.update(false));
        assert_eq!(s.scale, 256.0);
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale, 256.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.good_steps), (512.0, 0));
        let mut t = LossScaler::new(1.0);
        t.update(false);
        assert_eq!(t.scale, 1.0);
        assert_eq!(LossScaler::new(1e30).scale, MAX_SCALE);
    }

    #[test]
    fn a_fixed_scale_never_moves() {
        let mut s = LossScaler::fixed(1.0);
        s.growth_interval = 2;
        assert!(!s.update(false));
        assert!(s.update(true) && s.update(true) && s.update(true));
        assert_eq!((s.scale, s.good_steps), (1.0, 3));
    }

    #[test]
    fn finiteness() {
        let mut v = vec![1.0f32; 10_000];
        assert!(all_finite(&v));
        v[9_999] = f32::INFINITY;
        assert!(!all_finite(&v));
        v[9_999] = f32::NAN;
        assert!(!all_finite(&v));
        v[9_999] = -f32::MAX;
        assert!(all_finite(&v));
    }
}
