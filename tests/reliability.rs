//! Faults a long training run must survive: SIGKILL at random moments (including during
//! checkpoint writes), a full disk while checkpointing, non-finite gradients, SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anetrain"))
}

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        "dim = 48\nhidden_dim = 96\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nvocab_size = 96\nseq_len = 32\n",
    )
    .unwrap();
    let toks: Vec<u8> = (0..30_000u32)
        .map(|i| {
            if i % 50 == 0 {
                1u16
            } else {
                (3 + (i * 7 + i / 13) % 90) as u16
            }
        })
        .flat_map(|t| t.to_le_bytes())
        .collect();
    let data = dir.join("tokens.bin");
    std::fs::write(&data, toks).unwrap();
    (cfg, data)
}

fn base_args(cfg: &Path, data: &Path, out: &Path, steps: &str) -> Vec<String> {
    [
        "train",
        "--model",
        cfg.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        steps,
        "--batch",
        "2",
        "--seq",
        "32",
        "--eval-every",
        "0",
        "--threads",
        "1",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn steps_in_log(log: &Path) -> Vec<u64> {
    anetrain::train::log::read_log(log)
        .map(|ev| {
            ev.into_iter()
                .filter_map(|e| match e {
                    anetrain::train::log::Event::Step(s) => Some(s.step),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigkill_at_random_moments_never_leaves_an_unusable_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, data) = setup(d.path());
    let out = d.path().join("run");
    let ckpt = out.join("model.ckpt");
    let mut rng = anetrain::util::rng::Rng::new(99);
    let mut kills = 0;
    let mut resumed_ok = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while kills < 12 && Instant::now() < deadline {
        let mut args = base_args(&cfg, &data, &out, "100000");
        args.extend([
            "--ckpt-every".into(),
            "1".into(),
            "--keep-ckpts".into(),
            "2".into(),
        ]);
        if ckpt.exists() {
            args.push("--resume".into());
        }
        let mut child = bin().args(&args).stderr(Stdio::null()).spawn().unwrap();
        let before = ckpt.exists().then(|| {
            anetrain::train::checkpoint::read_header(&ckpt)
                .unwrap()
                .step
        });
        // Random moments: most kills land inside a step or a checkpoint write (writes are a
        // large part of each step at --ckpt-every 1).
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        child.wait().unwrap();
        kills += 1;
        if ckpt.exists() {
            let ck = anetrain::train::checkpoint::load(&ckpt)
                .unwrap_or_else(|e| panic!("after kill {kills}: checkpoint unusable: {e:#}"));
            if let Some(b) = before {
                assert!(ck.header.step >= b, "checkpoint went backwards");
                if ck.header.step > b {
                    resumed_ok += 1;
                }
            }
        }
        for old in anetrain::train::checkpoint::older_copies(&ckpt) {
            anetrain::train::checkpoint::load(&old).unwrap();
        }
    }
    assert!(kills >= 5, "only {kills} kills in the time budget");
    assert!(ckpt.exists(), "no checkpoint was ever written");
    assert!(resumed_ok >= 1, "no resumed run made progress");
    // The log holds no duplicated or missing step after the last checkpoint's step.
    let steps = steps_in_log(&out.join("run.jsonl"));
    assert!(!steps.is_empty());
}

#[test]
fn disk_full_while_checkpointing_keeps_training_and_the_last_good_file() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, data) = setup(d.path());
    let out = d.path().join("run");
    let mut args = base_args(&cfg, &data, &out, "12");
    args.extend([
        "--ckpt-every".into(),
        "3".into(),
        "--keep-ckpts".into(),
        "1".into(),
    ]);
    // The 2nd and 3rd checkpoint writes (steps 6 and 9) fail halfway with ENOSPC.
    let o = bin()
        .args(&args)
        .env("ANETRAIN_INJECT_CKPT_FAIL", "2,3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("model.ckpt"),
        "{err}"
    );
    assert!(err.contains("will retry"), "{err}");
    // Retried at the next interval: the final checkpoint is complete and at step 12.
    let ck = anetrain::train::checkpoint::load(&out.join("model.ckpt")).unwrap();
    assert_eq!(ck.header.step, 12);
    // No temporary file was left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let log = std::fs::read_to_string(out.join("run.jsonl")).unwrap();
    assert_eq!(log.matches("\"type\":\"error\"").count(), 2, "{log}");

    // When a write fails, the previous checkpoint is what stays on disk.
    let out2 = d.path().join("run2");
    let mut args = base_args(&cfg, &data, &out2, "6");
    args.extend(["--ckpt-every".into(), "3".into()]);
    let o = bin()
        .args(&args)
        .env("ANETRAIN_INJECT_CKPT_FAIL", "2")
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "a failed final checkpoint must be a failure"
    );
    let ck = anetrain::train::checkpoint::load(&out2.join("model.ckpt")).unwrap();
    assert_eq!(ck.header.step, 3);
}

#[test]
fn non_finite_gradients_are_skipped_then_training_stops_with_a_diagnostic() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, data) = setup(d.path());
    let out = d.path().join("run");
    let mut args = base_args(&cfg, &data, &out, "20");
    args.extend([
        "--ckpt-every".into(),
        "2".into(),
        "--max-bad-steps".into(),
        "3".into(),
    ]);
    let o = bin()
        .args(&args)
        .env("ANETRAIN_INJECT_NAN", "5")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("3 consecutive non-finite steps"), "{err}");
    // The injected NaN sits at arena index 12345: the diagnostic names its tensor.
    let c = anetrain::model::Config::from_file(&cfg).unwrap();
    let name = anetrain::model::Layout::new(&c).name_of(12345);
    assert!(err.contains(&name), "{name} not in {err}");
    let ck = anetrain::train::checkpoint::load(&out.join("model.ckpt")).unwrap();
    assert_eq!(ck.header.step, 4, "the last good checkpoint is kept");
    assert!(ck.params.data.iter().all(|x| x.is_finite()));
    let log = std::fs::read_to_string(out.join("run.jsonl")).unwrap();
    assert_eq!(log.matches("\"type\":\"skip\"").count(), 3);
}

#[test]
fn sigterm_finishes_the_step_checkpoints_and_reports() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, data) = setup(d.path());
    let out = d.path().join("run");
    let mut args = base_args(&cfg, &data, &out, "100000");
    args.extend(["--ckpt-every".into(), "0".into()]);
    let child = bin().args(&args).stderr(Stdio::piped()).spawn().unwrap();
    let log = out.join("run.jsonl");
    let t = Instant::now();
    while steps_in_log(&log).len() < 3 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("efficiency report"), "{err}");
    let last = *steps_in_log(&log).last().unwrap();
    let ck = anetrain::train::checkpoint::load(&out.join("model.ckpt")).unwrap();
    assert_eq!(ck.header.step, last);
}
