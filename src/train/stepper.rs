//! One optimizer step — the function both `anetrain train` ([`super::trainer`]) and
//! `anetrain bench` ([`super::bench`]) run, so every published figure is of the step users
//! run. In order, with the passes over the parameter arena it makes:
//!
//! 1. zero the gradient arena (one parallel pass);
//! 2. `accum` micro-steps: draw a batch, forward + backward of
//!    `loss_scale/(accum·ranks) × ∂loss/∂θ`; the first micro-step writes into the arena, each
//!    later one into a zeroed second arena that is then added (two passes more per extra
//!    micro-step), so the sum is `((g₁ + g₂) + g₃) + …` — the order in which data-parallel
//!    ranks' gradients are summed ([`super::distributed`]), which makes W ranks × `--accum 1`
//!    and one process × `--accum W` agree bit for bit;
//! 3. data parallel only: each layer's gradients are handed to the all-reduce as the last
//!    micro-step's backward finishes them; the step then waits for the sums, and the loss is
//!    summed over the ranks;
//! 4. the non-finite guard and the global gradient norm, fused: one pass computes the norm,
//!    which is non-finite exactly when some gradient is; only then a second pass names the
//!    first bad gradient, and the step is skipped;
//! 5. unscale, clip to `grad_clip` and AdamW in one pass ([`optim::clip_and_step`]: AdamW
//!    reads every gradient through the combined factor, and tests each parameter it writes
//!    for finiteness — a non-finite parameter is an error, never a checkpoint);
//! 6. the loss-scale update ([`LossScaler::update`]): halve after a skip, double after a run
//!    of finite steps — only when the backend needs loss scaling.
//!
//! Every rank then holds the same summed gradients, so the norm, the clipping, the
//! non-finite guard and the loss scale are global without further exchange.

use super::distributed::Group;
use super::loss_scale::LossScaler;
use super::optim::{self, AdamW, AdamWConfig};
use super::step::Workspace;
use super::timing::{Component, Timings};
use crate::kernels::Kernels;
use crate::model::Params;
use anyhow::Result;

/// What one step did.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOutcome {
    /// The update was applied: the mean loss over the micro-steps and the global norm of the
    /// (unscaled, unclipped) gradients.
    Applied { loss: f32, grad_norm: f64 },
    /// A loss or gradient was not finite; nothing was updated. Says where.
    Skipped { reason: String },
}

/// The state one step reads and writes: parameters, their gradients, the AdamW moments, the
/// loss scale, and the token buffers of one micro-step.
pub struct Stepper {
    pub params: Params,
    pub grads: Params,
    /// The gradients of one micro-step after the first (allocated when `accum` > 1).
    micro: Option<Params>,
    pub opt: AdamW,
    pub scaler: LossScaler,
    /// Bumped after every applied update and handed to [`Kernels::prepare`], so that a
    /// backend that keeps a copy of the weights (compiled programs, staged surfaces)
    /// rebuilds it exactly when they changed.
    pub weights_version: u64,
    /// `[B·S]` input ids of the current micro-step.
    pub inputs: Vec<u32>,
    /// `[B·S]` target ids.
    pub targets: Vec<u32>,
    /// Test hook (`ANETRAIN_INJECT_NAN=STEP`): from step STEP (0-based) on, a gradient is
    /// made non-finite after the backward pass, to exercise the guard end to end.
    inject_nan_from: Option<u64>,
}

impl Stepper {
    /// `tokens` = B·S, the columns of one micro-step.
    pub fn new(params: Params, opt: AdamW, scaler: LossScaler, tokens: usize) -> Stepper {
        let grads = Params::zeros(params.config());
        Stepper {
            params,
            grads,
            micro: None,
            opt,
            scaler,
            weights_version: 1,
            inputs: vec![0; tokens],
            targets: vec![0; tokens],
            inject_nan_from: std::env::var("ANETRAIN_INJECT_NAN")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    /// One optimizer step (the module doc lists its parts). `step` is the 0-based index of
    /// this step in the schedule (it picks the learning rate); `next_batch` fills the inputs
    /// and targets of one micro-step. Errors are the backend's; a non-finite loss or gradient
    /// is not an error but [`StepOutcome::Skipped`].
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        k: &mut dyn Kernels,
        ws: &mut Workspace,
        cfg: &AdamWConfig,
        step: u64,
        accum: usize,
        next_batch: &mut dyn FnMut(&mut [u32], &mut [u32]),
        t: &mut Timings,
    ) -> Result<StepOutcome> {
        self.step_in(k, ws, cfg, step, accum, next_batch, t, None)
    }

    /// [`Stepper::step`] as one rank of `group` (data parallel), or alone (None):
    /// `next_batch` then draws this rank's share only.
    #[allow(clippy::too_many_arguments)]
    pub fn step_in(
        &mut self,
        k: &mut dyn Kernels,
        ws: &mut Workspace,
        cfg: &AdamWConfig,
        step: u64,
        accum: usize,
        next_batch: &mut dyn FnMut(&mut [u32], &mut [u32]),
        t: &mut Timings,
        mut group: Option<&mut dyn Group>,
    ) -> Result<StepOutcome> {
        let accum = accum.max(1);
        let ranks = group.as_ref().map_or(1, |g| g.size());
        t.time(Component::Optimizer, || optim::zero(&mut self.grads.data));
        ws.set_weights_version(self.weights_version);
        let scale = self.scaler.scale;
        let grad_scale = scale / (accum * ranks) as f32;
        let mut loss_sum = 0f64;
        for a in 0..accum {
            t.time(Component::Data, || {
                next_batch(&mut self.inputs, &mut self.targets)
            });
            let last = a + 1 == accum;
            let (params, inputs, targets) = (&self.params, &self.inputs, &self.targets);
            let hooked = last && group.is_some();
            let loss = if a == 0 {
                let mut hook = |p: &[(usize, &[f32])]| {
                    if let Some(g) = group.as_mut() {
                        g.bucket_ready(p, None)
                    }
                };
                ws.forward_backward_hooked(
                    k,
                    params,
                    &mut self.grads,
                    inputs,
                    targets,
                    grad_scale,
                    t,
                    hooked.then_some(&mut hook),
                )?
            } else {
                let micro = self
                    .micro
                    .get_or_insert_with(|| Params::zeros(params.config()));
                t.time(Component::Optimizer, || optim::zero(&mut micro.data));
                let acc = &self.grads.data;
                let mut hook = |p: &[(usize, &[f32])]| {
                    if let Some(g) = group.as_mut() {
                        g.bucket_ready(p, Some(acc))
                    }
                };
                let loss = ws.forward_backward_hooked(
                    k,
                    params,
                    micro,
                    inputs,
                    targets,
                    grad_scale,
                    t,
                    hooked.then_some(&mut hook),
                )?;
                if !hooked {
                    t.time(Component::Optimizer, || {
                        add_into(&mut self.grads.data, &micro.data)
                    });
                }
                loss
            };
            loss_sum += loss as f64;
        }
        if let Some(g) = group.as_mut() {
            let ms = g.finish(&mut self.grads.data)?;
            t.add(Component::Other, ms);
            loss_sum = g.sum_f64(loss_sum);
        }
        let loss = (loss_sum / (accum * ranks) as f64) as f32;
        if self.inject_nan_from.is_some_and(|from| step >= from) {
            let n = self.grads.data.len();
            self.grads.data[12345 % n] = f32::NAN;
        }

        let t0 = std::time::Instant::now();
        let outcome = if !loss.is_finite() {
            StepOutcome::Skipped {
                reason: format!("loss is {loss}"),
            }
        } else {
            let lr = cfg.lr_at(step);
            match optim::clip_and_step(
                &mut self.opt,
                cfg,
                lr,
                &mut self.params.data,
                &self.grads.data,
                scale,
            ) {
                Ok(grad_norm) => {
                    // The weights changed: the next use of the workspace (the next step, or
                    // a validation pass) announces the new version.
                    self.weights_version += 1;
                    ws.set_weights_version(self.weights_version);
                    StepOutcome::Applied { loss, grad_norm }
                }
                Err(bad) if bad.after_update => anyhow::bail!(
                    "step {}: the update made {} non-finite ({}) although every gradient was \
                     finite (learning rate {lr}): the parameters are lost and are not \
                     checkpointed; lower --lr and resume from the last checkpoint",
                    step + 1,
                    self.params.layout.name_of(bad.index),
                    self.params.data[bad.index]
                ),
                Err(bad) => StepOutcome::Skipped {
                    reason: format!(
                        "gradient of {} is non-finite ({})",
                        self.params.layout.name_of(bad.index),
                        self.grads.data[bad.index]
                    ),
                },
            }
        };
        self.scaler
            .update(matches!(outcome, StepOutcome::Applied { .. }));
        t.add(Component::Optimizer, t0.elapsed().as_secs_f64() * 1e3);
        Ok(outcome)
    }
}

/// `dst[i] += src[i]`, in parallel chunks.
fn add_into(dst: &mut [f32], src: &[f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 18;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(a, &b)| *a += b));
}
