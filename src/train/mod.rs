//! Training: the model-level forward/backward over the kernel contract, AdamW, the learning
//! rate schedule, checkpoints, the training loop, the event log and the efficiency report.

pub mod builtin;
pub mod checkpoint;
pub mod log;
pub mod optim;
pub mod report;
pub mod step;
pub mod timing;
pub mod trainer;

use crate::model::Config;
use anyhow::Result;

/// The config named by `--model`: a preset, a config file, a llama2.c `.bin` model or a
/// `.ckpt` checkpoint.
pub fn resolve_config(spec: &str) -> Result<Config> {
    if spec.ends_with(".ckpt") {
        return Ok(checkpoint::read_header(std::path::Path::new(spec))?.config);
    }
    if spec.ends_with(".bin") {
        return Ok(
            crate::model::llama2c::Model::load(std::path::Path::new(spec))?
                .config()
                .clone(),
        );
    }
    Config::resolve(spec)
}
