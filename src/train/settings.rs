//! Everything that defines a training run ([`Settings`]) and how windows are drawn from the
//! data ([`Sampling`]). A leaf: the trainer, the report and the checkpoint read it; it reads
//! nothing of theirs.

use super::loss_scale::LossScaler;
use super::optim::AdamWConfig;
use crate::kernels::BackendKind;
use crate::model::Config;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// How training windows are drawn from the token data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// A uniformly random window start per sequence (the reference trainer's scheme).
    Random,
    /// Consecutive windows, wrapping at the end.
    Sequential,
}

/// Everything that defines a training run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub batch: usize,
    pub seq: usize,
    pub accum: usize,
    pub steps: u64,
    pub optim: AdamWConfig,
    pub seed: u64,
    pub sampling: Sampling,
    pub backend: BackendKind,
    pub ckpt: PathBuf,
    pub ckpt_every: u64,
    pub keep_ckpts: usize,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub sample_every: u64,
    pub log: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    /// Consecutive non-finite steps tolerated before training stops.
    pub max_bad_steps: u32,
    /// Initial loss scale (fp16 backends use dynamic scaling from here; 1 for fp32).
    pub loss_scale: f32,
    pub quiet: bool,
    /// Stop after this step (with a checkpoint) even though the schedule spans `steps`.
    #[serde(default)]
    pub until: Option<u64>,
}

/// The model every command takes when `--model` is not given (`train`, `info`, `bench`,
/// `mil`, `ane check`): the built-in run's preset.
pub const DEFAULT_MODEL: &str = "stories260k";

/// Where a run's files go when `--out` is not given.
pub const DEFAULT_OUT: &str = "runs/default";

/// The checkpoint a run writes when neither `--out` nor `--ckpt` is given (what `generate`
/// and `eval` read by default).
pub const DEFAULT_CKPT: &str = "runs/default/model.ckpt";

/// Optimizer steps when `--steps` is not given. The built-in corpus run keeps this schedule
/// and is bounded in time instead ([`BUILTIN_TIME_LIMIT_S`]): measured, a shorter schedule
/// ends worse than this one at the same step (README.md).
pub const DEFAULT_STEPS: u64 = 1000;

/// Seconds of training after which the built-in corpus run without `--steps` stops (with a
/// checkpoint and the command that continues it), so that the demo ends in about 3 minutes
/// on any machine; a fast one finishes all [`DEFAULT_STEPS`] before.
pub const BUILTIN_TIME_LIMIT_S: u64 = 180;

/// Peak learning rate: 1e-3, or 3e-3 for the built-in corpus run (a small model on simple
/// text tolerates it and the three-minute run gets further).
pub fn default_lr(builtin_corpus: bool) -> f32 {
    if builtin_corpus {
        3e-3
    } else {
        1e-3
    }
}

/// Peak learning rate when `--model` holds trained weights: a tenth of [`default_lr`], so
/// that the first steps do not undo what the model knows.
pub fn default_fine_tune_lr(builtin_corpus: bool) -> f32 {
    if builtin_corpus {
        3e-4
    } else {
        1e-4
    }
}

/// Warm-up when fine-tuning: 10% of the steps, at least 5 (never more than the run), so
/// that AdamW's first, noisy moments do not move trained weights at the full rate.
pub fn default_fine_tune_warmup(steps: u64) -> u64 {
    (steps / 10).max(5).min(steps)
}

/// Final learning rate of the cosine decay: a tenth of the peak.
pub fn default_min_lr(lr: f32) -> f32 {
    lr / 10.0
}

/// Linear warm-up: 5% of the steps.
pub fn default_warmup(steps: u64) -> u64 {
    steps / 20
}

/// Tokens per training window: the model's context, at most 256.
pub fn default_seq(c: &Config) -> usize {
    c.seq_len.min(256)
}

/// The loss scale a run starts from: 1 when the backend's backward is fp32, else `flag` or
/// `2^⌈log2(tokens)⌉` ([`LossScaler::for_tokens`]) for `tokens` = batch·seq.
pub fn initial_loss_scale(needs_loss_scaling: bool, flag: Option<f32>, tokens: usize) -> f32 {
    if needs_loss_scaling {
        flag.unwrap_or_else(|| LossScaler::for_tokens(tokens).scale)
    } else {
        1.0
    }
}

impl Settings {
    /// Refuses hyperparameters that cannot train: non-finite or out-of-range values, each
    /// named by its flag. The parser range-checks single flags too; this is the check for the
    /// library path and for combinations (`--min-lr` above `--lr`, `--warmup` beyond
    /// `--steps`).
    pub fn validate(&self) -> Result<()> {
        let o = &self.optim;
        let mut bad = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                bad.push(msg)
            }
        };
        check(
            self.batch > 0,
            format!("--batch {} must be at least 1", self.batch),
        );
        check(
            self.seq > 0,
            format!("--seq {} must be at least 1", self.seq),
        );
        check(
            self.accum > 0,
            format!("--accum {} must be at least 1", self.accum),
        );
        check(
            self.steps > 0,
            format!("--steps {} must be at least 1", self.steps),
        );
        check(
            o.lr.is_finite() && o.lr > 0.0 && o.lr <= 1.0,
            format!("--lr {} must be a number in (0, 1]", o.lr),
        );
        check(
            o.min_lr.is_finite() && o.min_lr >= 0.0 && o.min_lr <= o.lr,
            format!(
                "--min-lr {} must be a number in [0, --lr {}]",
                o.min_lr, o.lr
            ),
        );
        check(
            o.warmup <= o.total_steps,
            format!("--warmup {} exceeds --steps {}", o.warmup, o.total_steps),
        );
        check(
            (0.0..1.0).contains(&o.beta1),
            format!("--beta1 {} must be in [0, 1)", o.beta1),
        );
        check(
            (0.0..1.0).contains(&o.beta2),
            format!("--beta2 {} must be in [0, 1)", o.beta2),
        );
        check(
            o.eps.is_finite() && o.eps > 0.0,
            format!("--eps {} must be a positive number", o.eps),
        );
        check(
            o.weight_decay.is_finite() && (0.0..1.0).contains(&o.weight_decay),
            format!("--weight-decay {} must be in [0, 1)", o.weight_decay),
        );
        check(
            o.grad_clip.is_finite() && o.grad_clip >= 0.0,
            format!(
                "--grad-clip {} must be a number ≥ 0 (0 disables)",
                o.grad_clip
            ),
        );
        check(
            self.loss_scale.is_finite() && self.loss_scale > 0.0,
            format!("--loss-scale {} must be a positive number", self.loss_scale),
        );
        if !bad.is_empty() {
            bail!("{}", bad.join("; "));
        }
        Ok(())
    }

    /// The settings of a resumed run: what defines the run's trajectory (geometry, schedule,
    /// optimizer, seed, sampling) comes from the checkpoint's `recorded` settings; a flag in
    /// `given` (clap ids: `min_lr`) that would change one of them is refused by name. The
    /// intervals (evaluation, checkpoints, samples), the tokenizer and `max_bad_steps` come
    /// from the checkpoint unless given; paths, `--until`, `--quiet` and the backend are this
    /// invocation's. `self.seq` is 0 when `--seq` was not given.
    pub fn resumed(mut self, recorded: &Settings, given: &BTreeSet<String>) -> Result<Settings> {
        let mut conflicts = Vec::new();
        let flag = |id: &str| format!("--{}", id.replace('_', "-"));
        macro_rules! recorded {
            ($id:literal, $($f:ident).+) => {
                if given.contains($id) && self.$($f).+ != recorded.$($f).+ {
                    conflicts.push(format!(
                        "{} {:?} (the checkpoint's run has {:?})",
                        flag($id), self.$($f).+, recorded.$($f).+
                    ));
                }
                self.$($f).+ = recorded.$($f).+.clone();
            };
        }
        recorded!("batch", batch);
        recorded!("seq", seq);
        recorded!("accum", accum);
        recorded!("steps", steps);
        recorded!("steps", optim.total_steps);
        recorded!("lr", optim.lr);
        recorded!("min_lr", optim.min_lr);
        recorded!("warmup", optim.warmup);
        recorded!("beta1", optim.beta1);
        recorded!("beta2", optim.beta2);
        recorded!("eps", optim.eps);
        recorded!("weight_decay", optim.weight_decay);
        recorded!("grad_clip", optim.grad_clip);
        recorded!("seed", seed);
        recorded!("sampling", sampling);
        conflicts.dedup();
        if !conflicts.is_empty() {
            bail!(
                "--resume continues the run recorded in the checkpoint, and these flags would change it: {}. \
                 Drop them to continue as recorded, or start a new run from the checkpoint's weights with \
                 --model {} (without --resume)",
                conflicts.join(", "),
                self.ckpt.display()
            );
        }
        macro_rules! unless_given {
            ($id:literal, $f:ident) => {
                if !given.contains($id) {
                    self.$f = recorded.$f.clone();
                }
            };
        }
        unless_given!("eval_every", eval_every);
        unless_given!("eval_batches", eval_batches);
        unless_given!("ckpt_every", ckpt_every);
        unless_given!("keep_ckpts", keep_ckpts);
        unless_given!("sample_every", sample_every);
        unless_given!("max_bad_steps", max_bad_steps);
        unless_given!("tokenizer", tokenizer);
        Ok(self)
    }
}
