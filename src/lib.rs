//! anetrain: train Llama-2-architecture language models (the llama2.c "stories" family and
//! any config of the same shape, GQA included) on Apple's Neural Engine through its private
//! runtime, or on any CPU.
//!
//! The folders show the architecture:
//! - [`model`]: config, the parameter arena, what `--model` names, llama2.c model files,
//!   safetensors dumps;
//! - [`kernels`]: the six-kernel contract, the fp32 `cpu` backend and the plain-loop
//!   `reference` backend it is tested against;
//! - [`ane`]: MIL generation, weight blobs, the simulated device, the private runtime and the
//!   Neural Engine backends;
//! - [`train`]: the training step, the one optimizer step, AdamW, loss scaling, checkpoints,
//!   the loop and a run's session, backend construction, the benchmark, logs and reports;
//! - [`data`]: token data, the built-in story corpus, TinyStories download and tokenization;
//! - [`tokenizer`]: llama2.c `tokenizer.bin` and BPE training;
//! - [`generate`]: CPU inference with a KV cache and run.c-compatible sampling;
//! - [`dashboard`]: the live terminal UI and PNG plots;
//! - [`cli`]: the `anetrain` command: parses flags and prints results.

pub mod ane;
pub mod cli;
pub mod dashboard;
pub mod data;
pub mod generate;
pub mod kernels;
pub mod model;
pub mod tokenizer;
pub mod train;
pub mod util;

/// Where tests and examples find the shared fixtures: `$ANETRAIN_FIXTURES`, else
/// `../shared/fixtures` relative to the crate.
pub fn fixtures_dir() -> std::path::PathBuf {
    match std::env::var_os("ANETRAIN_FIXTURES") {
        Some(d) => d.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    }
}

/// A fixture file if present; otherwise prints why the caller skips and returns `None`.
pub fn fixture(name: &str) -> Option<std::path::PathBuf> {
    let p = fixtures_dir().join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: fixture {} not found (set ANETRAIN_FIXTURES to the folder holding it)",
            p.display()
        );
        None
    }
}
