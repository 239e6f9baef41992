//! `anetrain ane …`: Neural Engine bring-up on the user's own machine.

use crate::ane::bringup::{self, CheckSpec};
use crate::ane::{Pipeline, Profile};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum AneCommand {
    /// Preflight and bring-up: every program of a training geometry generated, checked
    /// against the chip profile, compiled, evaluated and compared with the CPU kernels; a
    /// refused program retried with the documented alternatives. Without a Neural Engine the
    /// same runs on the simulated device (and says so).
    Check(CheckArgs),
}

#[derive(clap::Args)]
#[command(
    after_help = "Attach the --json file to a bug report or a benchmark comparison: it \
holds the machine, the versions, the geometry, every program's timings and the runtime's full \
error text."
)]
pub struct CheckArgs {
    /// A preset, a config file (.toml/.json) or a llama2.c model file.
    #[arg(long, short, default_value = crate::train::settings::DEFAULT_MODEL)]
    pub model: String,
    /// Sequences per step of the geometry checked.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Tokens per sequence (default: 256, or the model's seq_len if smaller).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub seq: Option<u64>,
    /// Neural Engine pipeline: static (weights baked into programs) or dynamic (weights streamed through the input surface).
    #[arg(long, value_enum, default_value_t = Pipeline::Dynamic)]
    pub pipeline: Pipeline,
    /// Chip profile (default: the chip this runs on, else conservative); accepts overrides
    /// such as `m4,dialect=ios16`.
    #[arg(long)]
    pub ane_profile: Option<String>,
    /// Compile budget per process (default: the profile's).
    #[arg(long)]
    pub compile_budget: Option<u64>,
    /// Evaluations per program (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub evals: u64,
    /// Write the whole report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(c: AneCommand) -> Result<()> {
    match c {
        AneCommand::Check(a) => check(a),
    }
}

fn check(a: CheckArgs) -> Result<()> {
    let cfg = crate::train::load_config(&crate::model::ModelSource::resolve(&a.model)?)?;
    let seq = a
        .seq
        .map_or(crate::train::settings::default_seq(&cfg), |s| s as usize);
    let profile = Profile::select(a.ane_profile.as_deref())?;
    let simulated = crate::ane::availability().is_err();
    let budget = a.compile_budget;
    let factory = move |p: &Profile| crate::ane::open_device(simulated, p, budget);
    let spec = CheckSpec {
        model: a.model.clone(),
        cfg,
        batch: a.batch as usize,
        seq,
        pipeline: a.pipeline,
        profile,
        budget,
        evals: a.evals as usize,
        simulated,
        device: &factory,
    };
    let rep = bringup::run(&spec, &mut |line| eprintln!("  … {line}"))?;
    print!("{}", rep.render());
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&rep)?;
        crate::util::fs::write_atomic(path, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("{}: cannot write the report", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    match rep.verdict {
        "ok" => Ok(()),
        "fallback" => anyhow::bail!(
            "some kernels would run on the CPU (see above); training still works, slower"
        ),
        _ => anyhow::bail!("the Neural Engine cannot run this geometry here (see above)"),
    }
}
