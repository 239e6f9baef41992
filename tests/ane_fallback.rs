//! A kernel the Neural Engine refuses falls back to the CPU implementation of the same
//! contract: results stay within the fp16 tolerance of the CPU kernels, the fallback is
//! reported once, and without fallback the refusal is an error naming the kernel.
//! Refusals are injected into the strict simulator.

use anetrain::ane::backend::AneKernels;
use anetrain::ane::chip::Profile;
use anetrain::ane::sim::SimDevice;
use anetrain::ane::Pipeline;
use anetrain::kernels::cpu::CpuKernels;
use anetrain::kernels::{Checked, Dims, FfnBwd, FfnFwd, FfnWeights, Kernels, Pass, Spec};
use anetrain::model::{Config, Params};
use anetrain::util::rng::Rng;

fn setup() -> (Config, Params, Dims) {
    let mut c = Config::preset("stories260k").unwrap();
    c.n_layers = 2;
    c.vocab_size = 32;
    let p = Params::init_random(&c, 4);
    let d = Dims::new(&c, 2, 64);
    (c, p, d)
}

fn device(reject: Option<&str>) -> Box<SimDevice> {
    let mut dev = SimDevice::with_profile(Profile::conservative());
    if let Some(k) = reject {
        dev.reject_kernel(k, "test: this chip refuses it");
    }
    Box::new(dev)
}

/// ffn_bwd of layer 1 on `k` from fixed random inputs.
fn ffn_bwd(k: &mut dyn Kernels, p: &Params, d: &Dims) -> anyhow::Result<Vec<f32>> {
    let (dm, h, n) = (d.dim, d.hidden, d.n());
    let mut rng = Rng::new(8);
    let mut r = |len| -> Vec<f32> { (0..len).map(|_| rng.normal()).collect() };
    let (dy, h1, h3) = (r(dm * n), r(h * n), r(h * n));
    let fw = FfnWeights::of(p, 1);
    let (mut dx2n, mut dh1, mut dh3) = (vec![0.0; dm * n], vec![0.0; h * n], vec![0.0; h * n]);
    Checked::new(k).ffn_bwd(
        1,
        &dy,
        &h1,
        &h3,
        &fw,
        FfnBwd {
            dx2n: &mut dx2n,
            dh1: &mut dh1,
            dh3: &mut dh3,
        },
    )?;
    Ok([dx2n, dh1, dh3].concat())
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let s = b.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
        / s
}

#[test]
fn a_refused_program_falls_back_to_the_cpu_once() {
    let (c, p, d) = setup();
    let mut cpu = CpuKernels::new(Spec::new(&c, d.batch, d.seq));
    let want = ffn_bwd(&mut cpu, &p, &d).unwrap();
    for (pipeline, refused) in [
        (Pipeline::Dynamic, "ffnBwdW13t"),
        (Pipeline::Static, "ffnBwd"),
    ] {
        let prof = Profile::conservative();
        let mut k = AneKernels::build(
            device(Some(refused)),
            &c,
            d.batch,
            d.seq,
            pipeline,
            &prof,
            true,
        )
        .unwrap();
        k.prepare(1, Pass::Training).unwrap();
        let got = ffn_bwd(&mut k, &p, &d).unwrap();
        // The CPU ran it: equal to the CPU kernel exactly.
        assert_eq!(got, want, "{pipeline}");
        let f = k.take_fallbacks();
        assert_eq!(f.len(), 1, "{pipeline}: {f:?}");
        assert_eq!(f[0].kernel, "ffn_bwd");
        assert!(
            f[0].error.contains("injected") && f[0].error.contains(refused),
            "{}",
            f[0].error
        );
        assert!(k.take_fallbacks().is_empty(), "reported once");
        let place = k.placement();
        assert!(place.contains(&("ffn_bwd", "cpu".to_string())), "{place:?}");
        assert!(
            place.contains(&("fwd_attn", "ane-sim".to_string())),
            "{place:?}"
        );
        assert!(Kernels::stats(&k).fallback_cpu_ms > 0.0);
        // The other kernels still run on the simulated Neural Engine, within fp16 tolerance.
        let mut ok =
            AneKernels::build(device(None), &c, d.batch, d.seq, pipeline, &prof, true).unwrap();
        ok.prepare(1, Pass::Training).unwrap();
        let ane = ffn_bwd(&mut ok, &p, &d).unwrap();
        assert!(max_rel(&ane, &want) < 1e-2, "{pipeline}");
        assert!(ok.take_fallbacks().is_empty());
    }
}

#[test]
fn without_fallback_a_refusal_is_an_error_naming_the_kernel() {
    let (c, p, d) = setup();
    let prof = Profile::conservative();
    let e = AneKernels::build(
        device(Some("qkvBwd")),
        &c,
        d.batch,
        d.seq,
        Pipeline::Dynamic,
        &prof,
        false,
    )
    .err()
    .expect("refused");
    let msg = format!("{e:#}");
    assert!(msg.contains("qkvBwd") && msg.contains("injected"), "{msg}");
    // Static: the refusal comes at the first call under the first weights version, when the
    // kernel is compiled with the layer's weights.
    let mut k = AneKernels::build(
        device(Some("fwdFFN")),
        &c,
        d.batch,
        d.seq,
        Pipeline::Static,
        &prof,
        false,
    )
    .unwrap();
    k.prepare(1, Pass::Training).unwrap();
    let n = d.n();
    let x2 = vec![0.5f32; d.dim * n];
    let z = |len: usize| vec![0f32; len];
    let (mut x2n, mut h1, mut h3, mut gate, mut f) = (
        z(d.dim * n),
        z(d.hidden * n),
        z(d.hidden * n),
        z(d.hidden * n),
        z(d.dim * n),
    );
    let e = Checked::new(&mut k).fwd_ffn(
        0,
        &x2,
        &FfnWeights::of(&p, 0),
        FfnFwd {
            x2n: &mut x2n,
            h1: &mut h1,
            h3: &mut h3,
            gate: &mut gate,
            f: &mut f,
        },
    );
    let msg = format!("{:#}", e.unwrap_err());
    assert!(msg.contains("fwdFFN"), "{msg}");
}

/// `anetrain train` on the simulator with `ANETRAIN_SIM_REJECT`; returns (success, stderr,
/// step losses, fallback events, the report).
fn train_rejecting(
    dir: &std::path::Path,
    name: &str,
    reject: Option<&str>,
    strict: bool,
) -> (
    bool,
    String,
    Vec<f64>,
    Vec<String>,
    Option<serde_json::Value>,
) {
    let out = dir.join(name);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"));
    cmd.current_dir(dir).args([
        "train",
        "--model",
        "tiny.toml",
        "--data",
        "tokens.bin",
        "--steps",
        "20",
        "--batch",
        "2",
        "--seq",
        "16",
        "--eval-every",
        "0",
        "--lr",
        "3e-3",
        "--threads",
        "2",
        "--backend",
    ]);
    cmd.arg(if reject.is_some() || strict {
        "ane-sim"
    } else {
        "cpu"
    });
    if strict {
        cmd.arg("--ane-strict");
    }
    cmd.arg("--out").arg(&out);
    match reject {
        Some(r) => cmd.env(anetrain::ane::SIM_REJECT_ENV, r),
        None => cmd.env_remove(anetrain::ane::SIM_REJECT_ENV),
    };
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let ev = anetrain::train::log::read_log(&out.join("run.jsonl")).unwrap_or_default();
    use anetrain::train::log::Event;
    let losses = ev
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some(s.loss),
            _ => None,
        })
        .collect();
    let fb = ev
        .iter()
        .filter_map(|e| match e {
            Event::Fallback { kernel, .. } => Some(kernel.clone()),
            _ => None,
        })
        .collect();
    let rep = ev.iter().rev().find_map(|e| match e {
        Event::Report(v) => Some(v.clone()),
        _ => None,
    });
    (o.status.success(), err, losses, fb, rep)
}

#[path = "common/mod.rs"]
mod common;

#[test]
fn training_survives_a_refused_kernel_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    common::tiny_model_and_data(d.path());
    let (ok, _, cpu, _, _) = train_rejecting(d.path(), "cpu", None, false);
    assert!(ok);
    let (ok, err, sim, fb, rep) = train_rejecting(d.path(), "fb", Some("kernel:ffnBwdW13t"), false);
    assert!(ok, "{err}");
    // Warned once, naming the kernel, the error and the diagnosis command.
    assert_eq!(
        err.matches("the Neural Engine refused ffn_bwd").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("anetrain ane check") && err.contains("injected"),
        "{err}"
    );
    assert_eq!(fb, vec!["ffn_bwd".to_string()]);
    let rep = rep.expect("a report");
    assert_eq!(rep["on_cpu"], serde_json::json!(["ffn_bwd"]));
    assert!(rep["fallback_cpu_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(rep["ane_times"], "cost model");
    // Same training as the cpu run, within the fp16/fp32 difference.
    assert_eq!(sim.len(), 20);
    let worst = cpu
        .iter()
        .zip(&sim)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-2, "{worst}");
    // --ane-strict stops instead, naming the kernel.
    let (ok, err, _, _, _) = train_rejecting(d.path(), "strict", Some("kernel:ffnBwdW13t"), true);
    assert!(!ok);
    assert!(
        err.contains("ffnBwdW13t") && err.contains("injected"),
        "{err}"
    );
}
