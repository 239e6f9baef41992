//! `anetrain train --backend ane-sim`: the Neural Engine backends driven through the real
//! training loop (simulated device), against the cpu backend, and across exec() restarts.

mod common;

use std::path::Path;
use std::process::Command;

fn setup(dir: &Path) {
    common::tiny_model_and_data(dir);
}

/// Trains 50 steps; returns the step losses and how many processes the run took.
fn train(dir: &Path, name: &str, backend: &str, pipeline: &str, budget: &str) -> (Vec<f64>, usize) {
    train_with(
        dir,
        name,
        backend,
        pipeline,
        budget,
        &["--model", "tiny.toml"],
        ["50", "2", "16"],
    )
}

fn train_with(
    dir: &Path,
    name: &str,
    backend: &str,
    pipeline: &str,
    budget: &str,
    extra: &[&str],
    [steps, batch, seq]: [&str; 3],
) -> (Vec<f64>, usize) {
    let out = dir.join(name);
    let o = Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .current_dir(dir)
        .arg("train")
        .args(extra)
        .args([
            "--data",
            "tokens.bin",
            "--steps",
            steps,
            "--batch",
            batch,
            "--seq",
            seq,
            "--eval-every",
            "0",
            "--lr",
            "3e-3",
            "--threads",
            "2",
            "--quiet",
            "--backend",
            backend,
            "--pipeline",
            pipeline,
            "--compile-budget",
            budget,
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = anetrain::train::log::read_log(&out.join("run.jsonl")).unwrap();
    let losses = ev
        .iter()
        .filter_map(|e| match e {
            anetrain::train::log::Event::Step(s) => Some(s.loss),
            _ => None,
        })
        .collect();
    let runs = ev
        .iter()
        .filter(|e| matches!(e, anetrain::train::log::Event::Run(_)))
        .count();
    (losses, runs)
}

#[test]
fn ane_sim_follows_the_cpu_loss_curve_for_both_pipelines() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let (cpu, _) = train(d.path(), "cpu", "cpu", "dynamic", "119");
    assert_eq!(cpu.len(), 50);
    assert!(cpu[49] < cpu[0] - 1.0, "cpu run did not learn: {cpu:?}");
    for pipeline in ["static", "dynamic"] {
        let (sim, _) = train(d.path(), pipeline, "ane-sim", pipeline, "119");
        assert_eq!(sim.len(), 50);
        // fp16 storage at every op: per-step losses within 0.01 nats of fp32 over 50 steps.
        let worst = cpu
            .iter()
            .zip(&sim)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("{pipeline}: worst |loss_cpu - loss_sim| over 50 steps = {worst:.2e}");
        assert!(worst < 1e-2, "{pipeline}: {worst}");
    }
}

#[test]
fn stories260k_follows_the_cpu_under_every_kind_of_profile() {
    // Each profile plans its own padding, tiles, RoPE form (permutation matmul on m1, m3 and
    // conservative; pairs/concat on m4), MIL dialect (ios16 on m1 and conservative) and
    // saturation rule; the strict simulator enforces it. Each must follow the fp32 curve.
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let m = ["--model", "stories260k"];
    let geo = ["50", "2", "64"];
    let (cpu, _) = train_with(d.path(), "cpu260", "cpu", "dynamic", "119", &m, geo);
    assert!(cpu[49] < cpu[0] - 1.0, "cpu run did not learn: {cpu:?}");
    for pipeline in ["static", "dynamic"] {
        for profile in ["conservative", "m1", "m3", "m4"] {
            let name = format!("{pipeline}-{profile}");
            let (sim, _) = train_with(
                d.path(),
                &name,
                "ane-sim",
                pipeline,
                "1000",
                &["--model", "stories260k", "--ane-profile", profile],
                geo,
            );
            assert_eq!(sim.len(), 50);
            let worst = cpu
                .iter()
                .zip(&sim)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            eprintln!("{name}: worst |loss_cpu - loss_sim| over 50 steps = {worst:.2e}");
            assert!(worst < 2e-2, "{name}: {worst}");
        }
    }
}

#[test]
fn static_pipeline_crosses_exec_restarts_and_ends_at_the_same_losses() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    // A budget of 40 compiles fits 3 updates of 2 layers (11 + 10 + 10 compiles) per process.
    let (restarted, runs) = train(d.path(), "small", "ane-sim", "static", "40");
    let (whole, runs_whole) = train(d.path(), "large", "ane-sim", "static", "100000");
    assert_eq!(runs_whole, 1);
    assert!(runs >= 10, "only {runs} processes");
    assert_eq!(restarted.len(), 50);
    for (i, (a, b)) in restarted.iter().zip(&whole).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "step {}: {a} vs {b}", i + 1);
    }
}

#[test]
fn stories15m_at_seq_256_follows_the_cpu_for_a_few_steps() {
    // The stories15m shape (dim 288, head_dim 48: padded to 320 and 64 under the
    // conservative profile) at its full sequence length.
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let m = ["--model", "stories15m"];
    let (cpu, _) = train_with(
        d.path(),
        "cpu15",
        "cpu",
        "dynamic",
        "119",
        &m,
        ["3", "1", "256"],
    );
    for pipeline in ["dynamic", "static"] {
        let (sim, _) = train_with(
            d.path(),
            &format!("sim15-{pipeline}"),
            "ane-sim",
            pipeline,
            "119",
            &["--model", "stories15m", "--ane-profile", "conservative"],
            ["3", "1", "256"],
        );
        assert_eq!(sim.len(), 3);
        let worst = cpu
            .iter()
            .zip(&sim)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("stories15m {pipeline}: worst |loss_cpu - loss_sim| over 3 steps = {worst:.2e}");
        assert!(worst < 1e-2, "{pipeline}: {worst} ({cpu:?} vs {sim:?})");
    }
}
