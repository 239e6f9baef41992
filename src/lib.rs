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
///
/// When `ANETRAIN_FIXTURES` is set (CI sets it: `.ci/run`), the fixtures are expected, and a
/// missing one panics — a failed test in the summary, not a SKIP line that libtest hides.
pub fn fixture(name: &str) -> Option<std::path::PathBuf> {
    match fixture_in(std::env::var_os("ANETRAIN_FIXTURES").as_deref(), name) {
        Ok(p) => p,
        Err(why) => panic!("{why}"),
    }
}

/// [`fixture`] with the value of `ANETRAIN_FIXTURES` given: `Ok(Some(path))` when the file
/// exists, `Ok(None)` (after printing a SKIP line) when it is absent and no folder was set,
/// `Err` naming the file when a folder was set and the file is not in it.
pub fn fixture_in(
    env_dir: Option<&std::ffi::OsStr>,
    name: &str,
) -> Result<Option<std::path::PathBuf>, String> {
    let dir = match env_dir {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    };
    let p = dir.join(name);
    if p.exists() {
        Ok(Some(p))
    } else if env_dir.is_some() {
        Err(format!(
            "fixture {} not found, and ANETRAIN_FIXTURES is set, so the fixtures are expected \
             (unset it to skip the tests that need them)",
            p.display()
        ))
    } else {
        eprintln!(
            "SKIP: fixture {} not found (set ANETRAIN_FIXTURES to the folder holding it)",
            p.display()
        );
        Ok(None)
    }
}
