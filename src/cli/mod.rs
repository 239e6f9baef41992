//! The `anetrain` command line: one subcommand per job, each in its own file.

pub mod ane;
pub mod dashboard;
pub mod data;
pub mod generate;
pub mod info;
pub mod mil;
pub mod train;

use clap::{Parser, Subcommand};

/// Train llama2.c-style language models on Apple's Neural Engine or any CPU.
///
/// With no arguments, `anetrain train` trains a small model on a built-in corpus of
/// generated children's stories and then tells a story.
#[derive(Parser)]
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
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Train(a) => train::run_train(*a),
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
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
