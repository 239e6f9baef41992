//! End-to-end checks of `anetrain train`, `export`, `eval` and `grad` through the binary.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anetrain"))
}

fn run(args: &[&str]) -> Output {
    let out = bin().args(args).output().expect("run anetrain");
    if !out.status.success() {
        eprintln!(
            "anetrain {:?} failed:\n{}\n{}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

use common::tiny_model_and_data as setup;

fn step_losses(log: &Path) -> Vec<(u64, f64)> {
    anetrain::train::log::read_log(log)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            anetrain::train::log::Event::Step(s) => Some((s.step, s.loss)),
            _ => None,
        })
        .collect()
}

fn train_args<'a>(cfg: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        cfg,
        "--data",
        data,
        "--out",
        out,
        "--steps",
        "24",
        "--batch",
        "2",
        "--seq",
        "16",
        "--accum",
        "2",
        "--lr",
        "3e-3",
        "--eval-every",
        "8",
        "--ckpt-every",
        "5",
        "--threads",
        "2",
        "--quiet",
    ]
}

#[test]
fn resume_reproduces_the_uninterrupted_run_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, data) = setup(d.path());
    let (cfg, data) = (cfg.to_str().unwrap(), data.to_str().unwrap());
    let a = d.path().join("a");
    let b = d.path().join("b");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    assert!(run(&train_args(cfg, data, a)).status.success());
    let mut first = train_args(cfg, data, b);
    first.extend(["--until", "9"]);
    assert!(run(&first).status.success());
    let mut second = train_args(cfg, data, b);
    second.push("--resume");
    assert!(run(&second).status.success());

    let la = step_losses(&Path::new(a).join("run.jsonl"));
    let lb = step_losses(&Path::new(b).join("run.jsonl"));
    assert_eq!(la.len(), 24);
    assert_eq!(lb.len(), 24);
    for ((sa, xa), (sb, xb)) in la.iter().zip(lb.iter()) {
        assert_eq!(sa, sb);
        assert_eq!(xa.to_bits(), xb.to_bits(), "step {sa}: {xa} vs {xb}");
    }
    // And the run learned something.
    assert!(la[23].1 < la[0].1 - 0.5, "{:?}", la);
}

#[test]
fn export_eval_and_grad_work_on_a_trained_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, data) = setup(d.path());
    let (cfg, data) = (cfg.to_str().unwrap(), data.to_str().unwrap());
    let out = d.path().join("r");
    let out_s = out.to_str().unwrap();
    let mut args = train_args(cfg, data, out_s);
    args[8] = "6";
    assert!(run(&args).status.success());
    let ckpt = out.join("model.ckpt");
    let model = d.path().join("m.bin");
    let o = run(&[
        "export",
        "--ckpt",
        ckpt.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    // The exported file is a valid llama2.c model holding the checkpoint's parameters.
    let m = anetrain::model::llama2c::Model::load(&model).unwrap();
    let ck = anetrain::train::checkpoint::load(&ckpt).unwrap();
    assert_eq!(m.params.data, ck.params.data);

    let e1 = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data,
        "--seq",
        "16",
        "--batches",
        "4",
    ]);
    let e2 = run(&[
        "eval",
        "--model",
        ckpt.to_str().unwrap(),
        "--data",
        data,
        "--seq",
        "16",
        "--batches",
        "4",
    ]);
    assert!(e1.status.success() && e2.status.success());
    let s1 = String::from_utf8_lossy(&e1.stdout).to_string();
    assert!(s1.contains("perplexity"), "{s1}");
    assert_eq!(
        s1.split_whitespace().nth(1),
        String::from_utf8_lossy(&e2.stdout)
            .split_whitespace()
            .nth(1)
    );

    let g = d.path().join("g.safetensors");
    let o = run(&[
        "grad",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data,
        "--offset",
        "7",
        "--seq",
        "9",
        "--out",
        g.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let bytes = std::fs::read(&g).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st
        .names()
        .iter()
        .any(|n| *n == "layers.1.attention.wk.weight"));
    let wk = st.tensor("layers.1.attention.wk.weight").unwrap();
    assert_eq!(wk.shape(), &[16, 32]);
}

#[test]
fn bad_data_is_refused_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, _) = setup(d.path());
    let cfg = cfg.to_str().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("odd.bin", vec![1, 0, 2], "odd length"),
        ("short.bin", vec![1, 0, 5, 0, 6, 0], "training window needs"),
        (
            "big.bin",
            (0..200u16)
                .map(|i| if i == 77 { 9999u16 } else { 5 })
                .flat_map(|t| t.to_le_bytes())
                .collect(),
            "offset 77",
        ),
    ];
    for (name, bytes, msg) in cases {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let out = bin()
            .args([
                "train",
                "--model",
                cfg,
                "--data",
                p.to_str().unwrap(),
                "--out",
            ])
            .arg(d.path().join("o"))
            .args([
                "--steps",
                "2",
                "--seq",
                "16",
                "--val-fraction",
                "0",
                "--quiet",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name) && err.contains(msg), "{name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// The built-in default: a stories260k-shaped model on the generated corpus learns far below
/// the corpus's unigram entropy, and `generate` then works with no flags from the same folder.
#[test]
fn builtin_corpus_run_beats_unigram_entropy_and_generate_needs_no_flags() {
    let d = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(d.path())
        .args([
            "train",
            "--steps",
            "300",
            "--batch",
            "4",
            "--seq",
            "128",
            "--eval-every",
            "300",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let grab = |key: &str| -> f64 {
        let i = err
            .find(key)
            .unwrap_or_else(|| panic!("{key} missing in {err}"));
        err[i + key.len()..]
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let unigram = grab("unigram entropy of the corpus: ");
    let val = grab("(validation ");
    eprintln!("unigram entropy {unigram:.3} nats/token, validation loss {val:.3}");
    // The unigram entropy is the floor for a model without context; well below it means the
    // model uses context.
    assert!(
        val < 0.7 * unigram,
        "validation {val} vs unigram entropy {unigram}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("a story from the trained model"));

    let g = bin()
        .current_dir(d.path())
        .args(["generate", "-n", "60", "--seed", "5"])
        .output()
        .unwrap();
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let text = String::from_utf8_lossy(&g.stdout);
    // Decoded text, not token ids: letters and spaces.
    assert!(
        text.chars().filter(|c| c.is_ascii_alphabetic()).count() > 40,
        "{text}"
    );
}
