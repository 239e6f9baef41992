//! Training: the model-level forward/backward over the kernel contract (`step`), the one
//! optimizer step (`stepper`: accumulation, non-finite guard, clipping, AdamW, loss scaling),
//! the learning-rate schedule, checkpoints, the loop (`trainer`) and its settings, backend
//! construction, the benchmark, the event log and the reports; and loading what `--model`
//! names.

pub mod backend;
pub mod bench;
pub mod builtin;
pub mod checkpoint;
pub mod distributed;
pub mod eval;
pub mod gemm_choice;
pub mod log;
pub mod loss_scale;
pub mod optim;
pub mod report;
pub mod sampler;
pub mod session;
pub mod settings;
pub mod step;
pub mod stepper;
pub mod timing;
pub mod trainer;

use crate::model::{hf, llama2c, Config, ModelSource, Params};
use anyhow::{bail, Context, Result};

pub use crate::util::mem::available_memory_bytes;

/// Refuses, with the figures, a training run of `c` at `batch × seq` that needs more memory
/// than the machine has available (checked before anything is allocated).
pub fn check_fits(c: &Config, batch: usize, seq: usize) -> Result<()> {
    let (p, a) = crate::model::config::training_memory_bytes(c, batch, seq);
    let gib = |x: u64| x as f64 / (1u64 << 30) as f64;
    if let Some(avail) = available_memory_bytes() {
        if p + a > avail {
            bail!(
                "training this model at batch {batch} x seq {seq} needs {:.2} GiB ({:.2} GiB \
                 parameters, gradients and AdamW state at 16 B/param + {:.2} GiB activations), \
                 but only {:.2} GiB of memory is available",
                gib(p + a),
                gib(p),
                gib(a),
                gib(avail)
            );
        }
    }
    Ok(())
}

/// The shape of a model source; reads only a checkpoint's header, and a llama2.c file.
pub fn load_config(src: &ModelSource) -> Result<Config> {
    Ok(match src {
        ModelSource::Preset(c) => c.clone(),
        ModelSource::ConfigFile(p) => Config::from_file(p)?,
        ModelSource::Llama2c(p) => llama2c::Model::load(p)?.config().clone(),
        ModelSource::Checkpoint(p) => checkpoint::read_header(p)?.config,
        ModelSource::HfDir(p) => hf::read_config(p)?,
    })
}

/// The parameters of a model source: its weights (a checkpoint is verified first), or for a
/// shape a random initialisation from `seed`.
pub fn load_params(src: &ModelSource, seed: u64) -> Result<Params> {
    Ok(match src {
        ModelSource::Preset(c) => Params::init_random(c, seed),
        ModelSource::ConfigFile(p) => {
            Params::init_random(&Config::from_file(p).context("--model")?, seed)
        }
        ModelSource::Llama2c(p) => llama2c::Model::load(p)?.params,
        ModelSource::Checkpoint(p) => checkpoint::load_or_explain(p)?.params,
        ModelSource::HfDir(p) => hf::load(p)?,
    })
}
