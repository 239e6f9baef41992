//! Everything that defines a training run ([`Settings`]) and how windows are drawn from the
//! data ([`Sampling`]). A leaf: the trainer, the report and the checkpoint read it; it reads
//! nothing of theirs.

use super::loss_scale::LossScaler;
use super::optim::AdamWConfig;
use crate::kernels::BackendKind;
use crate::model::Config;
use serde::{Deserialize, Serialize};
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

/// Where a run's files go when `--out` is not given.
pub const DEFAULT_OUT: &str = "runs/default";

/// The checkpoint a run writes when neither `--out` nor `--ckpt` is given (what `generate`
/// and `eval` read by default).
pub const DEFAULT_CKPT: &str = "runs/default/model.ckpt";

/// Peak learning rate: 1e-3, or 3e-3 for the built-in corpus run (a small model on simple
/// text tolerates it and the three-minute run gets further).
pub fn default_lr(builtin_corpus: bool) -> f32 {
    if builtin_corpus {
        3e-3
    } else {
        1e-3
    }
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
