//! `anetrain tokenize`: the ids in the output are, document by document and in input order,
//! exactly what `Tokenizer::encode(text, bos = true, eos = false)` gives for each story (as
//! llama2.c's pretokenize does), for TinyStories-style JSON arrays spanning several batches,
//! JSON lines and text files, at any thread count; the sidecar records the facts; bad inputs
//! fail with clear errors and no output; the u16 limit is enforced; memory stays bounded.

use anetrain::data::download::NoProgress;
use anetrain::data::tokenize::{
    read_sidecar, tokenize_files, InputFormat, TokenFormat, TokenizeOptions, BATCH_BYTES,
};
use anetrain::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tokenizer() -> Option<(Tokenizer, PathBuf)> {
    let p = anetrain::fixture("tokenizer.bin")?;
    Some((Tokenizer::load(&p).unwrap(), p))
}

fn read_u16(p: &Path) -> Vec<u32> {
    std::fs::read(p)
        .unwrap()
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
        .collect()
}

/// The expected file: every document's ids with its BOS, concatenated.
fn expected(tok: &Tokenizer, docs: &[String]) -> Vec<u32> {
    docs.iter()
        .flat_map(|d| tok.encode(d.trim(), true, false))
        .collect()
}

/// Small deterministic generator of story-like text (with quotes, newlines, non-ASCII).
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn story(&mut self, words: usize) -> String {
        const W: &[&str] = &[
            "Once", "upon", "a", "time,", "there", "was", "little", "girl", "named", "Lily.",
            "She", "loved", "to", "play", "with", "her", "dog", "\"Max\"", "in", "the", "park.",
            "café", "naïve", "😊", "big", "red", "ball!", "\n", "Tom", "said,", "\"Yes!\"",
        ];
        let n = words / 2 + (self.next() as usize % words);
        let mut s = String::new();
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(W[self.next() as usize % W.len()]);
        }
        s
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[test]
fn json_shard_gives_the_tokenizer_ids_with_bos_separators() {
    let Some((tok, tpath)) = tokenizer() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let mut g = Gen(42);
    // The first story pins the ids against known Llama 2 tokenizer output.
    let mut stories = vec!["Once upon a time".to_string()];
    let mut json = String::from("[\n");
    json.push_str(&format!(
        "{{\"story\": {}, \"instruction\": {{\"prompt:\": \"x\", \"words\": [\"a\", \"story\"]}}, \"summary\": \"s\", \"source\": \"GPT-4\"}}",
        json_string(&stories[0])
    ));
    // Enough text for several batches, so batch order and boundaries matter.
    let mut bytes = 0;
    while bytes < 3 * BATCH_BYTES {
        let s = format!("  {}\n", g.story(120));
        bytes += s.len();
        json.push_str(&format!(
            ",\n{{\"summary\": {}, \"story\": {}, \"source\": \"GPT-3.5\"}}",
            json_string("the story field is not first"),
            json_string(&s)
        ));
        stories.push(s);
    }
    json.push_str("\n]\n");
    let input = d.path().join("data00.json");
    std::fs::write(&input, &json).unwrap();
    let want = expected(&tok, &stories);
    assert_eq!(&want[..5], &[1, 9038, 2501, 263, 931]);

    for threads in [1, 3] {
        let out = d.path().join(format!("t{threads}.bin"));
        let opts = TokenizeOptions {
            threads,
            ..Default::default()
        };
        let sc = tokenize_files(
            &tok,
            &tpath,
            std::slice::from_ref(&input),
            &out,
            &opts,
            &NoProgress,
        )
        .unwrap();
        let got = read_u16(&out);
        assert_eq!(got.len(), want.len());
        assert!(
            got == want,
            "ids differ at {:?}",
            got.iter().zip(&want).position(|(a, b)| a != b)
        );
        assert_eq!(sc.documents, stories.len() as u64);
        assert_eq!(sc.tokens, want.len() as u64);
        assert_eq!(got.iter().filter(|&&t| t == 1).count(), stories.len());
        assert_eq!(sc.max_id, *want.iter().max().unwrap());
        assert_eq!(read_sidecar(&out).unwrap().unwrap(), sc);
        assert_eq!(sc.vocab_size, 32000);
        assert_eq!(sc.format, TokenFormat::U16);
        assert_eq!(sc.input_bytes, json.len() as u64);
    }
}

#[test]
fn sidecar_hash_is_the_tokenizer_files_sha256() {
    let Some((tok, tpath)) = tokenizer() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("a.txt");
    std::fs::write(&input, "One story.\n").unwrap();
    let out = d.path().join("a.bin");
    let sc = tokenize_files(
        &tok,
        &tpath,
        &[input],
        &out,
        &Default::default(),
        &NoProgress,
    )
    .unwrap();
    // Independent hash: the system's sha256sum, when present.
    if let Ok(o) = Command::new("sha256sum").arg(&tpath).output() {
        let s = String::from_utf8_lossy(&o.stdout);
        assert_eq!(s.split_whitespace().next().unwrap(), sc.tokenizer_sha256);
    }
    assert_eq!(sc.tokenizer_sha256.len(), 64);
}

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

#[test]
fn text_files_json_lines_and_several_inputs_through_the_cli() {
    let Some((tok, tpath)) = tokenizer() else {
        return;
    };
    let t = tpath.to_str().unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut g = Gen(7);
    let blocks: Vec<String> = (0..50).map(|_| g.story(40).replace('\n', " ")).collect();
    // Blocks separated by blank lines (one with spaces, CRLF in one), lines inside a block.
    let mut text = String::from("\n\n");
    for (i, b) in blocks.iter().enumerate() {
        let half = b.len() / 2;
        let cut = (half..b.len()).find(|&k| b.is_char_boundary(k) && b.as_bytes()[k] == b' ');
        match cut {
            Some(k) => text.push_str(&format!("{}\n{}", &b[..k], &b[k + 1..])),
            None => text.push_str(b),
        }
        text.push_str(if i % 7 == 3 { "\r\n  \r\n" } else { "\n\n\n" });
    }
    std::fs::write(d.path().join("stories.txt"), &text).unwrap();
    let docs: Vec<String> = blocks
        .iter()
        .map(|b| {
            let half = b.len() / 2;
            match (half..b.len()).find(|&k| b.is_char_boundary(k) && b.as_bytes()[k] == b' ') {
                Some(k) => format!("{}\n{}", &b[..k], &b[k + 1..]),
                None => b.clone(),
            }
        })
        .collect();

    let lines: Vec<String> = (0..30).map(|_| g.story(30)).collect();
    let mut jl = String::new();
    for l in &lines {
        jl.push_str(&format!("{{\"text\": {}, \"id\": 3}}\n", json_string(l)));
    }
    std::fs::write(d.path().join("more.jsonl"), &jl).unwrap();

    let (code, out, err) = run(
        &["tokenize", "--tokenizer", t, "stories.txt", "-o", "txt.bin"],
        d.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("50 documents") && out.contains("txt.bin.json"),
        "{out}"
    );
    assert_eq!(read_u16(&d.path().join("txt.bin")), expected(&tok, &docs));

    // Text then JSON lines, one output, in argument order.
    let (code, out, err) = run(
        &[
            "tokenize",
            "--tokenizer",
            t,
            "stories.txt",
            "more.jsonl",
            "--field",
            "text",
            "-o",
            "both.bin",
            "--threads",
            "2",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let mut all = docs.clone();
    all.extend(lines.iter().cloned());
    assert_eq!(read_u16(&d.path().join("both.bin")), expected(&tok, &all));

    // The whole file as one document.
    let (code, _, err) = run(
        &[
            "tokenize",
            "--tokenizer",
            t,
            "stories.txt",
            "--doc-per-file",
            "-o",
            "one.bin",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        read_u16(&d.path().join("one.bin")),
        tok.encode(text.trim(), true, false)
    );

    // u32 output: the same ids, four bytes each.
    let (code, _, err) = run(
        &[
            "tokenize",
            "--tokenizer",
            t,
            "stories.txt",
            "--format",
            "u32",
            "-o",
            "w.bin",
        ],
        d.path(),
    );
    assert_eq!(code, 0, "{err}");
    let wide: Vec<u32> = std::fs::read(d.path().join("w.bin"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(wide, expected(&tok, &docs));
    assert_eq!(
        read_sidecar(&d.path().join("w.bin"))
            .unwrap()
            .unwrap()
            .format,
        TokenFormat::U32
    );
}

#[test]
fn bad_inputs_fail_clearly_and_write_nothing() {
    let Some((_, tpath)) = tokenizer() else {
        return;
    };
    let t = tpath.to_str().unwrap();
    let d = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str], &[&str])] = &[
        (
            "nofield.json",
            r#"[{"story": "fine"}, {"text": "no story here"}]"#,
            &[],
            &["nofield.json", "element 1", "\"story\""],
        ),
        (
            "broken.json",
            "[{\"story\": \"fine\"},\n {\"story\": \"unterminated}]",
            &[],
            &["broken.json", "line 2"],
        ),
        (
            "notjson.json",
            "hello",
            &[],
            &["notjson.json", "does not look like JSON"],
        ),
        (
            "badline.jsonl",
            "{\"story\": \"a\"}\n{\"story\": 3}\n",
            &[],
            &["badline.jsonl", "line 2"],
        ),
        ("empty.txt", "\n  \n\n", &[], &["no documents"]),
        ("latin1.txt", "caf\u{e9}", &["--input-format", "text"], &[]),
    ];
    for (name, content, extra, needles) in cases {
        let bytes: Vec<u8> = if *name == "latin1.txt" {
            b"caf\xe9\n".to_vec()
        } else {
            content.as_bytes().to_vec()
        };
        std::fs::write(d.path().join(name), bytes).unwrap();
        let mut args = vec!["tokenize", "--tokenizer", t, name, "-o", "out.bin"];
        args.extend_from_slice(extra);
        let (code, out, err) = run(&args, d.path());
        assert_eq!(code, 1, "{name}: {out}{err}");
        let needles: Vec<&str> = if *name == "latin1.txt" {
            vec!["latin1.txt", "UTF-8"]
        } else {
            needles.to_vec()
        };
        for n in needles {
            assert!(err.contains(n), "{name}: {err:?} lacks {n:?}");
        }
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("out.bin"))
            .collect();
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
    let (code, _, err) = run(
        &[
            "tokenize",
            "--tokenizer",
            "nope.bin",
            "x.txt",
            "-o",
            "o.bin",
        ],
        d.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("nope.bin"), "{err}");
}

#[test]
fn vocabularies_past_u16_need_the_u32_format() {
    // A synthetic vocabulary of 70 000 pieces whose word piece " zyx" has an id above 65535.
    let mut pieces: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
    pieces.extend((0..=255u8).map(anetrain::tokenizer::byte_piece));
    let filler = 70_000 - 7 - pieces.len();
    pieces.extend((0..filler).map(|i| format!("#{i}").into_bytes()));
    for p in [" ", "z", "y", "x", " z", " zy", " zyx"] {
        pieces.push(p.as_bytes().to_vec());
    }
    let n = pieces.len();
    let scores: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let tok = Tokenizer::from_parts(pieces, scores).unwrap();
    let d = tempfile::tempdir().unwrap();
    let tpath = d.path().join("big.bin");
    tok.save(&tpath).unwrap();
    let input = d.path().join("s.txt");
    std::fs::write(&input, "zyx\n\nzyx zyx\n").unwrap();
    let out = d.path().join("o.bin");
    let e = tokenize_files(
        &tok,
        &tpath,
        std::slice::from_ref(&input),
        &out,
        &Default::default(),
        &NoProgress,
    )
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("70000") && e.contains("--format u32"), "{e}");
    assert!(!out.exists());
    let opts = TokenizeOptions {
        format: TokenFormat::U32,
        input_format: InputFormat::Text,
        ..Default::default()
    };
    let sc = tokenize_files(&tok, &tpath, &[input], &out, &opts, &NoProgress).unwrap();
    let ids: Vec<u32> = std::fs::read(&out)
        .unwrap()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let zyx = (n - 1) as u32;
    assert!(zyx > 65535);
    assert_eq!(ids, vec![1, zyx, 1, zyx, zyx]);
    assert_eq!(sc.max_id, zyx);
}

/// Peak resident memory of a child `anetrain tokenize` on a ~100 MB JSON array (a quarter of it
/// story text, the rest a field that is skipped), read from the kernel's accounting of that one
/// child (`wait4`'s `ru_maxrss`). Loading the array whole would take several times the input.
#[cfg(target_os = "linux")]
#[test]
fn peak_memory_stays_bounded_on_a_large_input() {
    use std::io::Write;
    let Some((_, tpath)) = tokenizer() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("big.json");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let mut g = Gen(99);
    let mut size = 0usize;
    let mut n = 0u64;
    w.write_all(b"[").unwrap();
    while size < 100_000_000 {
        let story = g.story(150);
        let skipped = json_string(&story.repeat(3));
        let obj = format!(
            "{}{{\"summary\": {skipped}, \"story\": {}}}",
            if n > 0 { ",\n" } else { "" },
            json_string(&story)
        );
        w.write_all(obj.as_bytes()).unwrap();
        size += obj.len();
        n += 1;
    }
    w.write_all(b"]").unwrap();
    drop(w);
    let out = d.path().join("big.bin");
    #[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its rusage
    let child = Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .arg("tokenize")
        .arg("--tokenizer")
        .arg(&tpath)
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0i32;
    // SAFETY: plain FFI calls with valid pointers to locals; `child` is our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let peak_mb = ru.ru_maxrss as f64 / 1024.0;
    let sc = read_sidecar(&out).unwrap().unwrap();
    eprintln!(
        "tokenize: {:.0} MB of JSON, {} documents, {} tokens, peak RSS {peak_mb:.1} MB",
        size as f64 / 1e6,
        sc.documents,
        sc.tokens
    );
    assert_eq!(sc.documents, n);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 2 * sc.tokens);
    assert!(
        peak_mb < 100.0,
        "peak RSS {peak_mb:.1} MB on a 100 MB input"
    );
}
