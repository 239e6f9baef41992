//! The fuzz targets on stable Rust: every seed in `fuzz/seeds/` and every input that once
//! crashed a target (`fuzz/regressions/`) is replayed through the same target bodies that
//! `cargo fuzz` runs (`fuzz/src/lib.rs`), plus named regression tests for the bugs the
//! fuzzers found, and the "absurd header sizes fail before allocating" property of each
//! binary format, checked with the process's peak RSS.
//!
//! `ANETRAIN_WRITE_SEEDS=1 cargo test --release --test fuzz_regressions write_seed_corpora`
//! rewrites the seed files from the crate's own writers.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn target(name: &str) -> harness::Target {
    harness::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1
}

/// Files of `dir/<target>/`, sorted, as (target, path).
fn inputs_under(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(targets) = std::fs::read_dir(dir) else {
        return out;
    };
    for t in targets.filter_map(|e| e.ok()) {
        if !t.path().is_dir() {
            continue;
        }
        let name = t.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(t.path()).unwrap().filter_map(|e| e.ok()) {
            if f.path().is_file() && !f.file_name().to_string_lossy().starts_with('.') {
                out.push((name.clone(), f.path()));
            }
        }
    }
    out.sort();
    out
}

#[test]
#[ignore = "writes fuzz/seeds; run with ANETRAIN_WRITE_SEEDS=1"]
fn write_seed_corpora() {
    if std::env::var_os("ANETRAIN_WRITE_SEEDS").is_none() {
        return;
    }
    for (t, name, bytes) in harness::seeds() {
        let d = fuzz_dir().join("seeds").join(t);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    }
}

#[test]
fn committed_seeds_are_what_the_writers_make_now() {
    // A format change that forgets the seeds would leave the fuzzers starting from files
    // that no longer parse.
    let seeds = harness::seeds();
    assert!(seeds.len() > 20);
    for (t, name, bytes) in &seeds {
        let p = fuzz_dir().join("seeds").join(t).join(name);
        let on_disk = std::fs::read(&p).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate with ANETRAIN_WRITE_SEEDS=1 (see the file's docs)",
                p.display()
            )
        });
        assert!(
            &on_disk == bytes,
            "{} differs from what the writers make now; regenerate the seeds",
            p.display()
        );
    }
    for (t, _) in harness::TARGETS {
        assert!(seeds.iter().any(|(s, _, _)| s == t), "no seed for {t}");
    }
}

/// The weight dictionary the `mil` target compiles against.
fn mil_weights() -> std::collections::BTreeMap<String, Vec<u8>> {
    // The harness keeps it private; rebuild it from the seeds' generator the same way.
    harness::mil_weights_for_tests()
}

#[test]
fn valid_seeds_parse() {
    use anetrain::model::llama2c::Model;
    let d = fuzz_dir().join("seeds");
    for f in [
        "legacy-tied-gqa.bin",
        "legacy-untied-mha.bin",
        "v1-tied-gqa.bin",
        "v1-untied-mha.bin",
    ] {
        let b = std::fs::read(d.join("llama2c").join(f)).unwrap();
        Model::parse(&b).unwrap_or_else(|e| panic!("{f}: {e:#}"));
    }
    let b = std::fs::read(d.join("tokenizer/small.bin")).unwrap();
    assert_eq!(
        anetrain::tokenizer::Tokenizer::from_bytes(&b)
            .unwrap()
            .vocab_size(),
        262
    );
    for f in ["tied.bin", "untied.bin"] {
        let b = std::fs::read(d.join("checkpoint").join(f)).unwrap();
        assert_eq!(
            anetrain::train::checkpoint::parse(&b).unwrap().header.step,
            3
        );
    }
    for (_, name) in inputs_under(&d).into_iter().filter(|(t, _)| t == "mil") {
        let text = std::fs::read_to_string(&name).unwrap();
        let plan = anetrain::ane::sim::compile_text(&text, &mil_weights())
            .unwrap_or_else(|e| panic!("{}: {e:#}", name.display()));
        assert_eq!(
            plan.inputs.len(),
            1,
            "{}: one input surface",
            name.display()
        );
    }
    let log = std::fs::read_to_string(d.join("jsonl/run.jsonl")).unwrap();
    assert_eq!(
        log.lines()
            .filter_map(anetrain::train::log::parse_line)
            .count(),
        8
    );
}

/// Every seed and every saved crash input goes through its target without a panic.
#[test]
fn seeds_and_past_crashes_replay_cleanly() {
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        for (t, path) in inputs_under(&fuzz_dir().join(dir)) {
            let bytes = std::fs::read(&path).unwrap();
            let f = target(&t);
            let r = std::panic::catch_unwind(|| f(&bytes));
            assert!(r.is_ok(), "{} panicked in target {t}", path.display());
            n += 1;
        }
    }
    assert!(n > 20, "only {n} inputs replayed");
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Headers that claim sizes in the tens of gigabytes, each followed by a few bytes: every
/// parser says what is wrong, quickly, and the process's peak RSS does not grow by more
/// than a few MiB (an allocation sized from the header would add gigabytes, or abort).
#[test]
fn absurd_header_sizes_fail_before_allocating() {
    use anetrain::model::llama2c::Model;
    use anetrain::tokenizer::Tokenizer;
    use anetrain::train::checkpoint;

    let before = peak_rss_mib();
    let t = Instant::now();
    let mut errors = Vec::new();

    // llama2.c legacy: a valid-looking Stories110M-sized header (and bigger) on 64 bytes.
    for h in [
        [768, 2048, 12, 12, 12, 32000, 1024],
        [65536, 262144, 1024, 1024, 1024, 1 << 22, 1 << 20],
        [8192, 28672, 80, 64, 8, -128000, 4096],
        [i32::MAX, i32::MAX, i32::MAX, 1, 1, i32::MAX, i32::MAX],
    ] {
        let mut b = i32s(&h);
        b.extend([0u8; 64]);
        errors.push(format!("{:#}", Model::parse(&b).unwrap_err()));
    }
    // llama2.c version 1.
    let mut v1 = 0x616b_3432u32.to_le_bytes().to_vec();
    v1.extend(i32s(&[1, 4096, 11008, 32, 32, 32, 32000, 4096]));
    v1.resize(256 + 64, 0);
    errors.push(format!("{:#}", Model::parse(&v1).unwrap_err()));

    // Tokenizer: a piece length of 2 GiB and a max_token_length of i32::MAX.
    let mut tok = i32s(&[i32::MAX]);
    tok.extend(0f32.to_le_bytes());
    tok.extend(i32s(&[i32::MAX]));
    tok.extend([b'x'; 16]);
    errors.push(format!("{:#}", Tokenizer::from_bytes(&tok).unwrap_err()));

    // Checkpoint: a 4 GiB header length, then a valid header describing Llama-2-7B (6.7·10^9 parameters, 80 GB).
    let mut ck = b"ANETCKPT".to_vec();
    ck.extend(1u32.to_le_bytes());
    ck.extend(u32::MAX.to_le_bytes());
    ck.extend([0u8; 64]);
    errors.push(format!("{:#}", checkpoint::parse(&ck).err().unwrap()));
    let json = br#"{"config":{"dim":4096,"hidden_dim":11008,"n_layers":32,"n_heads":32,"n_kv_heads":32,"head_dim":128,"vocab_size":32000,"seq_len":4096},"step":1,"total_steps":1,"adam_t":1,"sampler_rng":1,"timings_ms":[],"wall_s":0,"last_loss":0}"#;
    let mut ck = b"ANETCKPT".to_vec();
    ck.extend(1u32.to_le_bytes());
    ck.extend((json.len() as u32).to_le_bytes());
    ck.extend(json);
    ck.extend([0u8; 64]);
    errors.push(format!("{:#}", checkpoint::parse(&ck).err().unwrap()));

    // The same checkpoint through the file readers (header only, and whole).
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("huge.ckpt");
    std::fs::write(&p, &ck).unwrap();
    let h = checkpoint::read_header(&p).unwrap();
    assert_eq!(h.config.n_layers, 32, "the header alone is fine to read");
    errors.push(format!("{:#}", checkpoint::load(&p).err().unwrap()));

    let elapsed = t.elapsed();
    let grown = peak_rss_mib() - before;
    for e in &errors {
        assert!(
            e.contains("does not match")
                || e.contains("implausible")
                || e.contains("truncated")
                || e.contains("max_token_length")
                || e.contains("remain"),
            "unclear error: {e}"
        );
    }
    assert!(
        errors[1].contains("implausible") || errors[1].contains("invalid"),
        "{}",
        errors[1]
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(grown < 64.0, "peak RSS grew by {grown:.1} MiB");
}

/// Found by the `jsonl` target: serde_json's default float parser is not correctly rounded,
/// so `2293372036854775808` and `2.293372036854776e18` came back one ulp off, and an event
/// written by the trainer did not read back equal (the dashboard, plots and checkpoint
/// headers read numbers through it). Fixed by serde_json's `float_roundtrip` feature;
/// checked against Rust's own correctly rounded `str::parse::<f64>`.
#[test]
fn log_numbers_parse_correctly_rounded_and_round_trip() {
    use anetrain::train::log::{parse_line, Event};
    for text in [
        "2293372036854775808",
        "2.293372036854776e18",
        "2.2933720368547758e18",
        "0.30000000000000004",
        "1.7976931348623157e308",
        "5e-324",
        "3.0517578125e-05",
    ] {
        let want: f64 = text.parse().unwrap();
        let line = format!(r#"{{"type":"eval","step":1,"val_loss":{text}}}"#);
        let Some(Event::Eval { val_loss, .. }) = parse_line(&line) else {
            panic!("{line} did not parse");
        };
        assert_eq!(val_loss.to_bits(), want.to_bits(), "{text}");
        let line = format!(r#"{{"type":"step","step":7,"loss":1,"timing":{{"adamw":{text}}}}}"#);
        let e = parse_line(&line).unwrap();
        let back = parse_line(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e, "{text}");
    }
}

/// `data info` printed the first 12 bytes of the sidecar's `tokenizer_sha256` by slicing the
/// string, in two places (the sidecar line, and the warning when `--tokenizer` is a different
/// file), which panics when byte 12 falls inside a multi-byte character of a corrupt or
/// hand-edited sidecar. It must print, not panic.
#[test]
fn data_info_survives_a_sidecar_hash_with_multibyte_characters() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("t.bin");
    let ids: Vec<u8> = [1u16, 5, 6, 1, 7]
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .collect();
    std::fs::write(&p, ids).unwrap();
    std::fs::write(
        d.path().join("t.bin.json"),
        r#"{"format":"u16","tokenizer":"t","tokenizer_sha256":"0123456789€€","vocab_size":512,"tokens":5,"documents":2,"bos":1,"skipped_empty":0,"inputs":["a"],"input_bytes":1,"max_id":7}"#,
    )
    .unwrap();
    let r = std::panic::catch_unwind(|| anetrain::data::info::describe(&p, None, 5));
    let (out, _) = r.expect("describe panicked").unwrap();
    assert!(out.contains("sha256 0123456789€"), "{out}");

    let tok = harness::small_tokenizer();
    let tp = d.path().join("tok.bin");
    std::fs::write(&tp, tok.to_bytes()).unwrap();
    let r = std::panic::catch_unwind(|| {
        anetrain::data::info::describe(&p, Some((&tok, tp.as_path())), 5)
    });
    let (_, warnings) = r.expect("describe with a tokenizer panicked").unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("different tokenizer") && w.contains("sha256 0123456789€")),
        "{warnings:?}"
    );
}
