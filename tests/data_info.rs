//! `anetrain data info` through the built binary: the figures it prints against counts made
//! here directly, and each kind of bad data with its exit status and message.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(args: &[&str], dir: &Path) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write_ids(dir: &Path, name: &str, ids: &[u16]) -> PathBuf {
    let p = dir.join(name);
    let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The printed line that starts with `key`.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("no {key:?} line in\n{out}"))
}

#[test]
fn figures_match_a_direct_count() {
    let d = tempfile::tempdir().unwrap();
    // Three documents: lengths 4, 6, 3; id 278 most frequent (5), then 29889 (4), then BOS (3).
    let ids: Vec<u16> = vec![
        1, 278, 278, 29889, //
        1, 278, 3290, 29889, 278, 29889, //
        1, 278, 29889,
    ];
    write_ids(d.path(), "t.bin", &ids);
    let (code, out, err) = run(&["data", "info", "t.bin", "--top", "3"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(line(&out, "tokens:").contains(" 13 "), "{out}");
    assert!(line(&out, "documents:").contains(" 3 "), "{out}");
    let per = line(&out, "per document:");
    assert!(
        per.contains("4.3 tokens") && per.contains("6 the longest"),
        "{out}"
    );
    let idl = line(&out, "ids:");
    assert!(
        idl.contains("4 distinct") && idl.contains("min 1") && idl.contains("max 29889"),
        "{out}"
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("most frequent"))
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(&rows[0][..3], &["1", "278", "5"]);
    assert_eq!(&rows[1][..3], &["2", "29889", "4"]);
    assert_eq!(&rows[2][..3], &["3", "1", "3"]);
    assert!(err.is_empty(), "{err}");

    // With the Llama 2 tokenizer the ids are decoded: 278 is " the", 29889 is ".".
    if let Some(tp) = anetrain::fixture("tokenizer.bin") {
        let (code, out, err) = run(
            &[
                "data",
                "info",
                "t.bin",
                "--top",
                "2",
                "--tokenizer",
                tp.to_str().unwrap(),
            ],
            d.path(),
        );
        assert_eq!(code, 0, "{err}");
        assert!(line(&out, "tokenizer:").contains("32000 tokens"), "{out}");
        let r1 = out
            .lines()
            .find(|l| l.trim_start().starts_with("1 "))
            .unwrap();
        assert!(r1.ends_with("\" the\""), "{r1}");
        let r2 = out
            .lines()
            .find(|l| l.trim_start().starts_with("2 "))
            .unwrap();
        assert!(r2.ends_with("\".\""), "{r2}");
        assert!(err.is_empty(), "{err}");
    }
}

#[test]
fn ids_beyond_the_vocabulary_are_warned_about_with_their_offset() {
    let Some(tp) = anetrain::fixture("tokenizer.bin") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    write_ids(d.path(), "t.bin", &[1, 5, 6, 1, 7, 40000, 8, 32000, 9]);
    let (code, out, err) = run(
        &["data", "info", "t.bin", "--tokenizer", tp.to_str().unwrap()],
        d.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("warning:") && err.contains("t.bin"), "{err}");
    assert!(
        err.contains("2 ids") && err.contains("vocabulary size 32000"),
        "{err}"
    );
    assert!(
        err.contains("first is 40000 at offset 5 (byte 10)"),
        "{err}"
    );
    assert!(out.contains("(outside the vocabulary)"), "{out}");
}

#[test]
fn bad_files_exit_1_with_the_file_and_the_problem() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("odd.bin"), [1u8, 0, 5]).unwrap();
    std::fs::write(d.path().join("empty.bin"), []).unwrap();
    write_ids(d.path(), "ok.bin", &[1, 2, 3]);
    std::fs::write(d.path().join("bad.bin"), [1u8, 0]).unwrap();
    std::fs::write(d.path().join("bad.bin.json"), "{ not json").unwrap();
    write_ids(d.path(), "wide.bin", &[1, 0, 5, 0]);
    std::fs::write(
        d.path().join("wide.bin.json"),
        r#"{"format":"u32","tokenizer":"t","tokenizer_sha256":"00","vocab_size":70000,"tokens":2,"documents":1,"bos":1,"skipped_empty":0,"inputs":[],"input_bytes":1,"max_id":5}"#,
    )
    .unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["odd.bin"], &["odd.bin", "odd length (3 bytes)"]),
        (&["empty.bin"], &["empty.bin", "empty"]),
        (&["missing.bin"], &["missing.bin", "cannot open"]),
        (&["bad.bin"], &["bad.bin.json", "not a token-file sidecar"]),
        (&["wide.bin"], &["wide.bin", "uint32"]),
        (
            &["ok.bin", "--tokenizer", "nope.bin"],
            &["nope.bin", "cannot load the tokenizer"],
        ),
    ];
    for (args, needles) in cases {
        let mut a = vec!["data", "info"];
        a.extend_from_slice(args);
        let (code, out, err) = run(&a, d.path());
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        for n in *needles {
            assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
        }
        assert!(out.is_empty(), "{args:?}: printed {out}");
    }
}

#[test]
fn missing_bos_and_stale_sidecars_are_warned_about() {
    let d = tempfile::tempdir().unwrap();
    write_ids(d.path(), "nobos.bin", &[5, 6, 7]);
    let (code, _, err) = run(&["data", "info", "nobos.bin"], d.path());
    assert_eq!(code, 0);
    assert!(err.contains("no BOS"), "{err}");

    write_ids(d.path(), "cut.bin", &[5, 1, 7]);
    let (_, _, err) = run(&["data", "info", "cut.bin"], d.path());
    assert!(err.contains("the first id is 5, not BOS"), "{err}");

    write_ids(d.path(), "t.bin", &[1, 6, 7, 1, 8]);
    std::fs::write(
        d.path().join("t.bin.json"),
        r#"{"format":"u16","tokenizer":"t","tokenizer_sha256":"ab","vocab_size":512,"tokens":9,"documents":2,"bos":1,"skipped_empty":0,"inputs":["a"],"input_bytes":1,"max_id":8}"#,
    )
    .unwrap();
    let (code, out, err) = run(&["data", "info", "t.bin"], d.path());
    assert_eq!(code, 0);
    assert!(out.contains("sidecar:"), "{out}");
    assert!(
        err.contains("records 9 tokens and 2 documents, the file has 5 and 2"),
        "{err}"
    );
}
