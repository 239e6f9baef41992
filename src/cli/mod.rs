//! The `anetrain` command line: one subcommand per job, each in its own file.

pub mod ane;
pub mod dashboard;
pub mod data;
pub mod generate;
pub mod info;
pub mod mil;
pub mod train;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Subcommand};
use std::collections::BTreeSet;

/// Train llama2.c-style language models on Apple's Neural Engine or any CPU.
///
/// With no arguments, `anetrain train` trains a small model on a built-in corpus of
/// generated children's stories and then tells a story.
#[derive(clap::Parser)]
#[command(name = "anetrain", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show a model's config, parameter counts, FLOPs per step, memory needs and the backends available here.
    Info(info::Args),
    /// Generate text with a llama2.c model or checkpoint (run.c-compatible sampling).
    Generate(generate::Args),
    /// Train a model (the built-in story corpus when no --data is given).
    Train(Box<train::TrainArgs>),
    /// Export a checkpoint as a llama2.c model file that run.c can run.
    Export(train::ExportArgs),
    /// Loss and perplexity of a model on token data.
    Eval(train::EvalArgs),
    /// Loss and every parameter's gradient for one window of tokens, as safetensors.
    Grad(train::GradArgs),
    /// Benchmark training steps: ms/step, tokens/s, GFLOP/s and MFU against the measured peak.
    Bench(train::BenchArgs),
    /// Print a Neural Engine MIL kernel program and write its weight blobs.
    Mil(mil::Args),
    /// Neural Engine bring-up: `anetrain ane check` runs every program of a geometry on this
    /// machine's Neural Engine (or the simulator) and reports what works.
    #[command(subcommand)]
    Ane(ane::AneCommand),
    /// Live terminal dashboard of a training run.
    Dashboard(dashboard::DashboardArgs),
    /// PNG plots of loss and ms/step from one or more training logs.
    Plot(dashboard::PlotArgs),
    /// Training data: download TinyStories, inspect token files.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Tokenize JSON / JSON-lines / text files into flat uint16 token data.
    Tokenize(data::TokenizeArgs),
}

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    // Behave like other Unix tools when the reader of our output goes away (`| head`).
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = matches
        .subcommand()
        .map(|(_, m)| given_flags(m))
        .unwrap_or_default();
    let r = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Train(a) => train::run_train(*a, &given),
        Command::Export(a) => train::run_export(a),
        Command::Eval(a) => train::run_eval(a),
        Command::Grad(a) => train::run_grad(a),
        Command::Bench(a) => train::run_bench(a),
        Command::Mil(a) => mil::run(a),
        Command::Ane(c) => ane::run(c),
        Command::Dashboard(a) => dashboard::run_dashboard(a),
        Command::Plot(a) => dashboard::run_plot(a),
        Command::Data(c) => data::run(c),
        Command::Tokenize(a) => data::run_tokenize(a),
    };
    match r {
        Ok(()) => 0,
        Err(e) if e.downcast_ref::<ExitStatus>().is_some() => {
            e.downcast_ref::<ExitStatus>().map_or(1, |s| s.0)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// The ids (field names, `min_lr`) of the options given on the command line, as opposed to
/// left at their defaults: a resumed run takes the rest from its checkpoint.
pub fn given_flags(m: &clap::ArgMatches) -> BTreeSet<String> {
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.as_str().to_string())
        .collect()
}

// Range checks of numeric flags, so that a mistake is a usage error naming the flag
// ("invalid value '0' for '--batch <BATCH>': must be at least 1", exit 2) rather than a
// division by zero or a poisoned run later.

/// An integer ≥ 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// An integer ≥ 1 (u64).
pub fn at_least_one_u64(s: &str) -> Result<u64, String> {
    at_least_one(s).map(|n| n as u64)
}

/// A finite number > 0.
pub fn positive(s: &str) -> Result<f32, String> {
    let x: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err("must be a finite number above 0".into())
    }
}

/// A finite number ≥ 0.
pub fn non_negative(s: &str) -> Result<f32, String> {
    let x: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err("must be a finite number ≥ 0".into())
    }
}

/// A learning rate: a finite number in (0, 1].
pub fn learning_rate(s: &str) -> Result<f32, String> {
    let x = positive(s)?;
    if x <= 1.0 {
        Ok(x)
    } else {
        Err("must be at most 1 (AdamW learning rates are around 1e-4 to 1e-2)".into())
    }
}

/// A number in [0, 1) (β₁, β₂, weight decay, a fraction).
pub fn unit_interval(s: &str) -> Result<f32, String> {
    let x: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..1.0).contains(&x) {
        Ok(x)
    } else {
        Err("must be a number in [0, 1)".into())
    }
}

/// A fraction in [0, 1) as f64.
pub fn fraction(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..1.0).contains(&x) {
        Ok(x)
    } else {
        Err("must be a number in [0, 1)".into())
    }
}

/// A probability in [0, 1] (top-p).
pub fn probability(s: &str) -> Result<f32, String> {
    let x: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&x) {
        Ok(x)
    } else {
        Err("must be a number in [0, 1]".into())
    }
}

/// A command's outcome that is not a success but has been reported already: `main` exits
/// with this status and prints nothing more (130 after SIGINT, as shells expect).
#[derive(Debug)]
pub struct ExitStatus(pub i32);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}
