//! `anetrain ane check` without a Neural Engine: the same bring-up against the strict
//! simulator, saying plainly that it is simulated; an injected refusal is retried with the
//! documented alternatives and the override that worked is named.

use anetrain::ane::bringup::{self, CheckSpec};
use anetrain::ane::chip::{Dialect, Profile};
use anetrain::ane::device::Device;
use anetrain::ane::sim::SimDevice;
use anetrain::ane::Pipeline;
use anetrain::model::Config;
use std::process::Command;

#[test]
fn check_runs_on_the_simulator_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let json = d.path().join("report.json");
    let o = Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args([
            "ane",
            "check",
            "--model",
            "stories260k",
            "--batch",
            "2",
            "--evals",
            "2",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("SIMULATED") && out.contains("cost model"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["simulated"], true);
    assert_eq!(v["times"], "cost model");
    assert_eq!(v["device"], "ane-sim");
    assert_eq!(v["verdict"], "ok");
    let progs = v["programs"].as_array().unwrap();
    assert_eq!(progs.len(), 9, "the dynamic pipeline's nine programs");
    for p in progs {
        assert_eq!(p["compiled"], true, "{p}");
        assert!(p["violations"].as_array().unwrap().is_empty(), "{p}");
        assert!(p["eval_ms"].as_f64().unwrap() > 0.0);
    }
    let ks = v["kernels"].as_array().unwrap();
    assert_eq!(ks.len(), 6);
    for k in ks {
        assert!(k["max_rel_err"].as_f64().unwrap() < 1e-2, "{k}");
    }
    assert!(v["ane_ms_per_step"].as_f64().unwrap() > 0.0);
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
}

#[test]
fn a_refusal_is_retried_with_the_alternatives_and_the_override_named() {
    // A "chip" that refuses fwdAttn in the typed (ios16) dialect only.
    let factory = |p: &Profile| -> anyhow::Result<Box<dyn Device>> {
        let mut d = SimDevice::with_profile(p.clone());
        if p.dialect == Dialect::Ios16 {
            d.reject_kernel("fwdAttn", "this chip's compiler rejects it");
        }
        Ok(Box::new(d))
    };
    let spec = CheckSpec {
        model: "stories260k".into(),
        cfg: Config::preset("stories260k").unwrap(),
        batch: 2,
        seq: 64,
        pipeline: Pipeline::Dynamic,
        profile: Profile::conservative(),
        budget: None,
        evals: 1,
        simulated: true,
        device: &factory,
    };
    let rep = bringup::run(&spec, &mut |_| {}).unwrap();
    let fa = rep.programs.iter().find(|p| p.kernel == "fwdAttn").unwrap();
    assert!(!fa.compiled);
    let err = fa.error.as_deref().unwrap();
    assert!(err.contains("injected") && err.contains("fwdAttn"), "{err}");
    assert!(fa.suspected.as_deref().unwrap().contains("C9"));
    assert_eq!(fa.alternatives[0].change, "MIL dialect ios18");
    assert!(fa.alternatives[0].ok);
    assert_eq!(
        fa.implied_profile.as_deref(),
        Some("conservative,dialect=ios18")
    );
    // Every other program compiled; the refused kernel ran on the CPU in the comparison.
    assert!(rep
        .programs
        .iter()
        .filter(|p| p.kernel != "fwdAttn")
        .all(|p| p.compiled));
    let k = rep
        .kernels
        .iter()
        .find(|k| k.kernel == "fwd_attn")
        .unwrap_or_else(|| panic!("{:?}", rep.compare_error));
    assert_eq!(k.runs_on, "cpu");
    assert_eq!(rep.verdict, "fallback");
    assert!(rep
        .render()
        .contains("works with --ane-profile conservative,dialect=ios18"));
}

#[test]
fn a_refused_geometry_is_reported_before_anything_compiles() {
    let o = Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args([
            "ane",
            "check",
            "--model",
            "stories110m",
            "--batch",
            "1",
            "--seq",
            "1024",
            "--ane-profile",
            "m1",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("refused before compiling") && out.contains("--seq 512"),
        "{out}"
    );
}

#[test]
fn mil_all_writes_every_program_and_check_prints_each_rule() {
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args([
            "mil",
            "--all",
            "--model",
            "stories260k",
            "--batch",
            "8",
            "--pipeline",
            "static",
            "--ane-profile",
            "m1",
            "--out",
        ])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let profile = Profile::named("m1").unwrap();
    let mut n = 0;
    for k in anetrain::ane::mil::kernels::kernel_set(Pipeline::Static) {
        let dir = d.path().join(k.name());
        let text = std::fs::read_to_string(dir.join("model.mil")).unwrap();
        assert!(
            text.starts_with("program(1.0)"),
            "m1 takes the typed dialect"
        );
        let mut weights = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(dir.join("weights")).unwrap() {
            let e = e.unwrap();
            weights.insert(
                format!("@model_path/weights/{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).unwrap(),
            );
        }
        // What was written compiles back on the strict simulator for that chip.
        anetrain::ane::sim::compile_text_for(&text, &weights, Some(&profile))
            .unwrap_or_else(|e| panic!("{}: {e:#}", k.name()));
        n += 1;
    }
    assert_eq!(n, 6);
    let o = Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args([
            "mil",
            "--kernel",
            "fwdAttn",
            "--model",
            "stories260k",
            "--check",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let rules = anetrain::ane::check::Rule::ALL;
    for r in rules {
        assert!(out.contains(r.name()), "{out}");
    }
    assert_eq!(out.matches(" pass ").count(), rules.len(), "{out}");
}
