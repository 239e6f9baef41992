//! Fuzz target bodies for every parser of outside bytes in anetrain, and the seed corpora.
//!
//! Each `pub fn NAME(data: &[u8])` feeds arbitrary bytes to one parser and then checks what
//! the parser promised: a parse either fails with an error or yields a value that survives
//! a round trip through the crate's own writer; no input may panic, overflow, or make the
//! parser allocate far beyond the input's size. The libFuzzer binaries in `fuzz_targets/`
//! are one line each around these functions, and `tests/fuzz_regressions.rs` includes this
//! file to replay the seed corpora and every crash input ever found, on stable Rust, in CI.
//!
//! Targets that read files (token data, sidecars, configs, tokenizer inputs, archives) write
//! the input into a per-thread temporary folder (under `/dev/shm` when it exists) and call
//! the file-reading API, so the code under test is exactly what the CLI runs.
//!
//! | target | parser |
//! |---|---|
//! | `llama2c` | `model::llama2c::Model::parse` (legacy and version-1 exports) |
//! | `tokenizer` | `tokenizer::Tokenizer::from_bytes`, then encode/decode with the parsed vocabulary |
//! | `checkpoint` | `train::checkpoint::parse`, raw and with the CRC fixed up |
//! | `jsonl` | `train::log::parse_line` on every line, round trip of what parses |
//! | `token_data` | `data::TokenData::open` + `validate` + `split_tail`, `read_sidecar`, `data::info::describe` |
//! | `config` | `model::Config::from_file` (TOML and JSON) |
//! | `tokenize_inputs` | `data::tokenize::tokenize_files` (JSON array, JSON lines, text) |
//! | `archive` | `data::download::extract` (tar.gz, and tar wrapped in gzip by the harness) |
//! | `mil` | `ane::sim::compile_text` (MIL parser and type checker), then running small plans |
//! | `dashboard` | `dashboard::follow::LogFollower` on a log appended in fuzzer-chosen pieces, `RunState`, and (flagged inputs) the PNG plot |

use anetrain::data::download::{extract, Member, NoProgress};
use anetrain::data::tokenize::{
    read_sidecar, sidecar_path, tokenize_files, InputFormat, TokenFormat, TokenSidecar,
    TokenizeOptions,
};
use anetrain::data::tokens::TokenData;
use anetrain::model::llama2c::{Format, Model};
use anetrain::model::{Config, Layout, Params};
use anetrain::tokenizer::{byte_piece, Tokenizer};
use anetrain::train::checkpoint;
use anetrain::train::log::{parse_line, Event, StepRecord};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A target body: arbitrary bytes in, panics on a broken promise.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test and the seed writer.
pub const TARGETS: &[(&str, Target)] = &[
    ("llama2c", llama2c),
    ("tokenizer", tokenizer),
    ("checkpoint", checkpoint),
    ("jsonl", jsonl),
    ("token_data", token_data),
    ("config", config),
    ("tokenize_inputs", tokenize_inputs),
    ("archive", archive),
    ("mil", mil),
    ("dashboard", dashboard),
];

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

thread_local! {
    /// A scratch folder per thread (the test harness runs tests on several threads).
    static SCRATCH: tempfile::TempDir = {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::Builder::new().prefix("anetrain-fuzz").tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("anetrain-fuzz").tempdir()
        }
        .expect("scratch folder for fuzz inputs")
    };
}

fn scratch(name: &str) -> PathBuf {
    SCRATCH.with(|d| d.path().join(name))
}

/// Writes `bytes` to `path`, or removes `path` when `bytes` is `None`.
fn put(path: &Path, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => std::fs::write(path, b).expect("write scratch file"),
        None => {
            let _ = std::fs::remove_file(path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// llama2.c model files

/// `Model::parse`; a legacy file that parses is rewritten byte for byte, and any file that
/// parses re-parses from its rewrite with the same config and bit-identical parameters.
pub fn llama2c(data: &[u8]) {
    let Ok(m) = Model::parse(data) else { return };
    assert_eq!(m.params.data.len(), m.config().num_params());
    let again = m.to_bytes(m.format);
    if m.format == Format::Legacy {
        assert!(again == data, "legacy rewrite differs from the input");
    }
    let back = Model::parse(&again).expect("the writer's output parses");
    assert_eq!(back.config(), m.config());
    assert!(same_bits(&back.params.data, &m.params.data));
}

// ---------------------------------------------------------------------------------------
// tokenizer.bin

/// `Tokenizer::from_bytes`; what parses is rewritten byte for byte, and then encodes the
/// input's last bytes (as raw text) to ids inside the vocabulary and decodes them again.
pub fn tokenizer(data: &[u8]) {
    let Ok(t) = Tokenizer::from_bytes(data) else {
        return;
    };
    assert!(
        t.to_bytes() == data,
        "tokenizer rewrite differs from the input"
    );
    let text = &data[data.len().saturating_sub(96)..];
    for (bos, eos) in [(true, false), (false, true)] {
        let ids = t.encode_bytes(text, bos, eos);
        assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
        let _ = t.decode_bytes(&ids);
    }
    if let Ok(s) = std::str::from_utf8(text) {
        let _ = t.decode_str(&t.encode(s, true, true));
    }
}

// ---------------------------------------------------------------------------------------
// checkpoints

fn check_checkpoint(data: &[u8]) {
    let Ok(ck) = checkpoint::parse(data) else {
        return;
    };
    let n = Layout::new(&ck.header.config).total;
    assert_eq!((ck.params.data.len(), ck.m.len(), ck.v.len()), (n, n, n));
    assert!(data.len() >= 12 * n + 20);
}

/// `checkpoint::parse` on the bytes as they are, and again with the trailing CRC-32 made to
/// match, so that mutations also reach the code behind the checksum.
pub fn checkpoint(data: &[u8]) {
    check_checkpoint(data);
    if data.len() >= 20 {
        let mut d = data.to_vec();
        let body = d.len() - 4;
        let crc = crc32fast::hash(&d[..body]);
        d[body..].copy_from_slice(&crc.to_le_bytes());
        check_checkpoint(&d);
    }
}

// ---------------------------------------------------------------------------------------
// JSONL run logs

/// `parse_line` on every line (lossy UTF-8, as `read_log` reads); an event that parses is
/// written back with serde and re-parses to an equal event, so the dashboard and plot
/// readers see what the trainer wrote.
pub fn jsonl(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        if let Some(e) = parse_line(line) {
            let s = serde_json::to_string(&e).expect("an event serialises");
            assert!(!s.contains('\n'), "one event, one line");
            let back = parse_line(&s).expect("a written event parses");
            assert_eq!(back, e);
        }
    }
}

// ---------------------------------------------------------------------------------------
// token data, sidecars, `data info`

/// Input layout: `[seq u8][flags u8][vocab u16][sidecar_len u16][sidecar …][token bytes …]`;
/// flags bit 0 writes the sidecar, bit 1 passes a tokenizer to `describe`.
pub fn token_data(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let seq = data[0] as usize;
    let flags = data[1];
    let vocab = u16::from_le_bytes([data[2], data[3]]) as usize;
    let side_len = (u16::from_le_bytes([data[4], data[5]]) as usize).min(data.len() - 6);
    let (side, toks) = data[6..].split_at(side_len);
    let path = scratch("tokens.bin");
    put(&path, Some(toks));
    put(&sidecar_path(&path), (flags & 1 == 1).then_some(side));

    let _ = read_sidecar(&path);
    if let Ok(td) = TokenData::open(&path) {
        assert_eq!(td.len() * 2, toks.len());
        if td.validate(seq, vocab).is_ok() {
            assert!(td.len() > seq);
            assert!(td.tokens().iter().all(|&t| (t as usize) < vocab));
        }
        let fraction = (seq as f64 + 0.5) / 256.5;
        if let Ok((train, val)) = td.split_tail(fraction) {
            assert_eq!(train.len() + val.len(), td.len());
            let joined: Vec<u16> = train.tokens().iter().chain(val.tokens()).copied().collect();
            assert!(joined == td.tokens());
        }
    }
    let tok_path = scratch("tokenizer.bin");
    let tok = (flags & 2 == 2).then(|| {
        let t = small_tokenizer();
        if !tok_path.exists() {
            put(&tok_path, Some(&t.to_bytes()));
        }
        t
    });
    let _ = anetrain::data::info::describe(&path, tok.as_ref().map(|t| (t, tok_path.as_path())), 5);
}

// ---------------------------------------------------------------------------------------
// model config files

/// `Config::from_file` on the bytes as `m.toml` and as `m.json`; a config that loads is valid.
pub fn config(data: &[u8]) {
    for name in ["m.toml", "m.json"] {
        let p = scratch(name);
        put(&p, Some(data));
        if let Ok(c) = Config::from_file(&p) {
            c.validate().expect("a loaded config validates");
            let _ = c.num_params();
        }
    }
}

// ---------------------------------------------------------------------------------------
// tokenizer inputs (`data tokenize`)

/// `tokenize_files` on one input: byte 0 picks the reader (auto/json/jsonl/text, and the
/// file's extension for auto), the rest is the file. What succeeds wrote `tokens` u16 ids,
/// every one inside the vocabulary, `documents` of them BOS.
pub fn tokenize_inputs(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let (input_format, ext) = match sel % 6 {
        0 => (InputFormat::Auto, "json"),
        1 => (InputFormat::Auto, "jsonl"),
        2 => (InputFormat::Auto, "txt"),
        3 => (InputFormat::Json, "in"),
        4 => (InputFormat::Jsonl, "in"),
        _ => (InputFormat::Text, "in"),
    };
    let input = scratch(&format!("input.{ext}"));
    put(&input, Some(body));
    let tok = small_tokenizer();
    let tok_path = scratch("tokenizer.bin");
    if !tok_path.exists() {
        put(&tok_path, Some(&tok.to_bytes()));
    }
    let out = scratch("out.bin");
    let opts = TokenizeOptions {
        format: TokenFormat::U16,
        input_format,
        field: "story".into(),
        doc_per_file: sel & 0x80 != 0,
        threads: 1,
    };
    if let Ok(sc) = tokenize_files(&tok, &tok_path, &[input], &out, &opts, &NoProgress) {
        let bytes = std::fs::read(&out).expect("the token file was written");
        assert_eq!(bytes.len() as u64, 2 * sc.tokens);
        let ids: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
        assert_eq!(ids.iter().filter(|&&i| i == 1).count() as u64, sc.documents);
        assert_eq!(read_sidecar(&out).expect("sidecar reads"), Some(sc));
    }
}

// ---------------------------------------------------------------------------------------
// TinyStories archives

/// `extract` of members `data00.bin` (uint16 ids) and `data01.json`: byte 0 odd means the
/// rest is a tar that the harness gzips (to reach the tar reader past gzip's CRC), even
/// means the rest is the archive file as downloaded.
pub fn archive(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let arc = scratch("archive.tar.gz");
    if sel & 1 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body).expect("gzip in memory");
        put(&arc, Some(&gz.finish().expect("gzip in memory")));
    } else {
        put(&arc, Some(body));
    }
    let members = [
        Member {
            name: "data00.bin".into(),
            dest: scratch("data00.bin"),
            uint16_ids: true,
        },
        Member {
            name: "data01.json".into(),
            dest: scratch("data01.json"),
            uint16_ids: false,
        },
    ];
    for m in &members {
        put(&m.dest, None);
    }
    match extract(&arc, &members, &NoProgress) {
        Ok(sizes) => {
            for (m, s) in members.iter().zip(sizes) {
                let len = std::fs::metadata(&m.dest).expect("member in place").len();
                assert_eq!(len, s);
            }
            let ids = std::fs::metadata(&members[0].dest)
                .expect("member in place")
                .len();
            assert_eq!(
                ids % 2,
                0,
                "a uint16 member with an odd byte count was accepted"
            );
        }
        Err(_) => {
            // All or nothing: no member in place, no temporary left behind.
            for m in &members {
                assert!(
                    !m.dest.exists(),
                    "a failed extract left {}",
                    m.dest.display()
                );
            }
            let leftovers = SCRATCH.with(|d| {
                std::fs::read_dir(d.path())
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().contains(".tmp"))
            });
            assert!(!leftovers, "a failed extract left a temporary file");
        }
    }
}

// ---------------------------------------------------------------------------------------
// MIL program text (the Neural Engine simulator)

/// The weight blobs of every static-pipeline kernel of the tiny model, so that mutated
/// programs' `BLOBFILE` references can resolve.
fn mil_weights() -> &'static std::collections::BTreeMap<String, Vec<u8>> {
    static W: std::sync::OnceLock<std::collections::BTreeMap<String, Vec<u8>>> =
        std::sync::OnceLock::new();
    W.get_or_init(|| {
        let mut all = std::collections::BTreeMap::new();
        for (_, prog) in mil_programs() {
            all.extend(prog.weights);
        }
        all
    })
}

/// A copy of the `mil` target's weight dictionary (for the seed checks in the tests).
pub fn mil_weights_for_tests() -> std::collections::BTreeMap<String, Vec<u8>> {
    mil_weights().clone()
}

/// Every kernel program of both pipelines for a tiny GQA model (dim 16, 2 heads, 1 kv head,
/// 8 tokens), as `(file name, program)`.
fn mil_programs() -> Vec<(String, anetrain::ane::mil::Program)> {
    use anetrain::ane::mil::kernels::{generate, kernel_set, Geometry, LayerWeights, Pipeline};
    let c = Config::llama(16, 32, 1, 2, 1, 16, 8);
    let params = Params::init_random(&c, 5);
    let geo = Geometry::new(&c, 1, 8);
    let rope = anetrain::kernels::ops::Rope::new(c.head_dim, 8, c.rope_theta);
    let w = LayerWeights::from_params(&params, 0);
    let mut out = Vec::new();
    for p in [Pipeline::Static, Pipeline::Dynamic] {
        for k in kernel_set(p) {
            let weights = (p == Pipeline::Static && k.has_weights()).then_some(&w);
            let prog = generate(p, k, &geo, weights, &rope).expect("tiny kernel program");
            out.push((format!("{p}-{}.mil", k.name()), prog));
        }
    }
    out
}

/// `compile_text` (parse, then type-check against the weight dictionary); a plan whose
/// inputs and arithmetic are small is run on a fixed input and must give outputs of the
/// shapes it declares.
pub fn mil(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(plan) = anetrain::ane::sim::compile_text(&text, mil_weights()) else {
        return;
    };
    let sizes: Vec<usize> = plan
        .inputs
        .iter()
        .map(|(_, s)| s.iter().product())
        .collect();
    if sizes.iter().sum::<usize>() > 1 << 16 || plan.flops > 2e7 {
        return;
    }
    let inputs: Vec<Vec<f32>> = sizes
        .iter()
        .map(|&n| (0..n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect())
        .collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    if let Ok(outs) = plan.run(&refs) {
        let shapes = plan.output_shapes();
        assert_eq!(outs.len(), shapes.len());
        for (o, s) in outs.iter().zip(&shapes) {
            assert_eq!(o.len(), s.iter().product::<usize>());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The dashboard's incremental log reader

/// Input: `[flags][cut1][cut2][cut3][log bytes …]`. The log is appended to a file in up to
/// four pieces (the cuts are fractions of its length), with a `LogFollower::poll` after each;
/// the events gathered that way must equal those of one poll over the whole file (following
/// a growing log loses, duplicates or reorders nothing). Flag bit 0 then rewrites the file
/// shorter, which the next poll must report as a reset. Every event goes through the
/// dashboard's `RunState` and its summaries; flag bit 1 also renders the PNG plot.
pub fn dashboard(data: &[u8]) {
    use anetrain::dashboard::follow::LogFollower;
    use anetrain::dashboard::state::RunState;
    if data.len() < 4 {
        return;
    }
    let (head, log) = data.split_at(4);
    let flags = head[0];
    let mut cuts: Vec<usize> = head[1..]
        .iter()
        .map(|&c| c as usize * log.len() / 255)
        .collect();
    cuts.push(log.len());
    cuts.sort_unstable();

    let path = scratch("run.jsonl");
    put(&path, None);
    let mut follower = LogFollower::new(&path);
    let mut pieces = Vec::new();
    let mut f = std::fs::File::create(&path).expect("create log");
    let mut at = 0;
    for &c in &cuts {
        f.write_all(&log[at..c]).expect("append to log");
        at = c;
        let p = follower.poll();
        assert!(
            !p.reset && p.error.is_none(),
            "an appended log read as replaced"
        );
        pieces.extend(p.events);
    }
    drop(f);
    let whole = LogFollower::new(&path).poll().events;
    assert!(
        pieces == whole,
        "events read in pieces differ from one read"
    );

    if flags & 1 == 1 && !log.is_empty() {
        put(&path, Some(&log[..log.len() / 2]));
        let p = follower.poll();
        let consumed = follower.offset();
        assert!(p.reset || consumed <= (log.len() / 2) as u64);
    }

    let mut state = RunState::new(0.9);
    for e in whole {
        state.apply(e);
    }
    let _ = (state.last_step(), state.total_steps(), state.finished());
    let _ = (
        state.seconds_per_step(),
        state.eta_seconds(),
        state.best_loss(),
    );
    let _ = (state.timing_breakdown(), state.recent_mean_ms());
    if flags & 2 == 2 {
        use anetrain::dashboard::plot::{render_png, PlotOptions, RunSeries};
        let series = RunSeries::from_state("fuzz", &state);
        let opts = PlotOptions {
            width: 320,
            height: 240,
            smooth: 0.9,
        };
        let _ = render_png(&[series], &opts);
    }
}

// ---------------------------------------------------------------------------------------
// Seeds: small valid inputs made with the crate's own writers, plus cut and edited variants.

/// A 262-piece vocabulary: the three specials, the 256 byte pieces, and `" "`, `"a"`, `"ab"`.
pub fn small_tokenizer() -> Tokenizer {
    let mut pieces: Vec<Vec<u8>> =
        vec![b"<unk>".to_vec(), b"\n<s>\n".to_vec(), b"\n</s>\n".to_vec()];
    pieces.extend((0..=255u8).map(byte_piece));
    pieces.extend([b" ".to_vec(), b"a".to_vec(), b"ab".to_vec()]);
    let mut scores = vec![0.0f32; pieces.len()];
    scores[259] = -1.0;
    scores[260] = -2.0;
    scores[261] = -0.5;
    Tokenizer::from_parts(pieces, scores).expect("a valid small vocabulary")
}

fn tiny_params(tied: bool, kv: usize) -> Params {
    let mut c = Config::llama(8, 16, 1, 2, kv, 12, 4);
    c.tied = tied;
    Params::init_random(&c, 11)
}

fn checkpoint_bytes(tied: bool) -> Vec<u8> {
    let p = tiny_params(tied, 1);
    let header = checkpoint::Header {
        config: p.config().clone(),
        step: 3,
        total_steps: 10,
        adam_t: 3,
        sampler_rng: 42,
        sampler_cursor: 7,
        loss_scale: 1.0,
        loss_scale_good_steps: 0,
        timings_ms: vec![0.5; 4],
        wall_s: 1.5,
        last_loss: 2.25,
        best_val_loss: Some(2.5),
        settings: serde_json::json!({"lr": 0.001, "batch": 2}),
        tokenizer: Some("tok.bin".into()),
        data: Some("data.bin".into()),
        world_size: 1,
    };
    let m: Vec<f32> = p.data.iter().map(|x| 0.1 * x).collect();
    let v: Vec<f32> = p.data.iter().map(|x| x * x).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("seed.ckpt");
    checkpoint::save(&path, &header, &p.data, &m, &v, 1).expect("write seed checkpoint");
    std::fs::read(&path).expect("read seed checkpoint")
}

fn with_cuts(name: &str, bytes: Vec<u8>, out: &mut Vec<(String, Vec<u8>)>) {
    let n = bytes.len();
    for cut in [n / 2, n.saturating_sub(1)] {
        if cut > 0 && cut < n {
            out.push((format!("{name}-cut{cut}"), bytes[..cut].to_vec()));
        }
    }
    out.push((name.to_string(), bytes));
}

fn u16s(ids: &[u16]) -> Vec<u8> {
    ids.iter().flat_map(|t| t.to_le_bytes()).collect()
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *body).expect("tar in memory");
    }
    b.into_inner().expect("tar in memory")
}

/// The seed corpus of each target: `(target, file name, bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut all = Vec::new();
    let mut add = |target: &'static str, v: Vec<(String, Vec<u8>)>| {
        all.extend(v.into_iter().map(|(n, b)| (target, n, b)));
    };

    let mut v = Vec::new();
    for (tied, kv) in [(true, 1), (false, 2)] {
        let m = Model::from_params(tiny_params(tied, kv));
        let tag = if tied { "tied-gqa" } else { "untied-mha" };
        with_cuts(
            &format!("legacy-{tag}.bin"),
            m.to_bytes(Format::Legacy),
            &mut v,
        );
        with_cuts(&format!("v1-{tag}.bin"), m.to_bytes(Format::V1), &mut v);
    }
    add("llama2c", v);

    let mut v = Vec::new();
    with_cuts("small.bin", small_tokenizer().to_bytes(), &mut v);
    add("tokenizer", v);

    let mut v = Vec::new();
    with_cuts("tied.bin", checkpoint_bytes(true), &mut v);
    v.push(("untied.bin".into(), checkpoint_bytes(false)));
    add("checkpoint", v);

    let step = Event::Step(StepRecord {
        step: 7,
        loss: 3.25,
        lr: 1e-3,
        grad_norm: 0.5,
        ms: 12.5,
        tokens_per_s: 4000.0,
        timing: [("fwd_attn".to_string(), 1.5), ("adamw".to_string(), 0.25)]
            .into_iter()
            .collect(),
        compiles: 0,
        time: 1.7e9,
    });
    let mut log = String::new();
    log.push_str(r#"{"type":"run","pid":42,"start_unix":1.7e9,"backend":"cpu","model":{"dim":8},"params":1000,"batch":2,"seq":4,"accum":1,"total_steps":10,"tokens_per_step":8,"flops_per_step":1e6,"peak_gflops":50.0,"ckpt":"m.ckpt","tokenizer":null,"args":{"lr":0.001}}"#);
    log.push('\n');
    log.push_str(&serde_json::to_string(&step).unwrap());
    log.push('\n');
    for l in [
        r#"{"type":"eval","step":7,"val_loss":3.5,"time":1.7e9}"#,
        r#"{"type":"checkpoint","step":7,"path":"run/model.ckpt","ms":4.0,"time":1.7e9}"#,
        r#"{"type":"sample","step":7,"text":"Once upon a time\n\u00e9","time":1.7e9}"#,
        r#"{"type":"skip","step":8,"reason":"non-finite loss","time":1.7e9}"#,
        r#"{"type":"error","step":9,"message":"No space left on device","time":1.7e9}"#,
        r#"{"type":"report","steps":10,"wall_s":1.5,"ms_per_step":150.0,"timing":{"fwd_attn":1.0}}"#,
        r#"{"type":"step","st"#,
    ] {
        log.push_str(l);
        log.push('\n');
    }
    add("jsonl", vec![("run.jsonl".into(), log.as_bytes().to_vec())]);

    let ids: Vec<u16> = (0..40u16)
        .map(|i| if i % 10 == 0 { 1 } else { 3 + i % 7 })
        .collect();
    let side = TokenSidecar {
        format: TokenFormat::U16,
        tokenizer: "tok.bin".into(),
        tokenizer_sha256: "ab".repeat(32),
        vocab_size: 262,
        tokens: ids.len() as u64,
        documents: 4,
        bos: Some(1),
        skipped_empty: 0,
        inputs: vec!["a.json".into()],
        input_bytes: 100,
        max_id: 9,
    };
    let side = serde_json::to_vec_pretty(&side).unwrap();
    let frame = |seq: u8, flags: u8, vocab: u16, side: &[u8], toks: &[u8]| {
        let mut b = vec![seq, flags];
        b.extend_from_slice(&vocab.to_le_bytes());
        b.extend_from_slice(&(side.len() as u16).to_le_bytes());
        b.extend_from_slice(side);
        b.extend_from_slice(toks);
        b
    };
    add(
        "token_data",
        vec![
            ("with-sidecar".into(), frame(8, 3, 262, &side, &u16s(&ids))),
            ("no-sidecar".into(), frame(4, 2, 9, &[], &u16s(&ids))),
            ("odd-length".into(), frame(4, 0, 512, &[], &[1, 0, 5])),
            (
                "out-of-vocab".into(),
                frame(2, 2, 6, &[], &u16s(&[1, 5, 700, 2])),
            ),
        ],
    );

    add(
        "config",
        vec![
            (
                "gqa.toml".into(),
                b"dim = 32\nhidden_dim = 64\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nvocab_size = 100\nseq_len = 16\n".to_vec(),
            ),
            (
                "full.json".into(),
                br#"{"dim":64,"hidden_dim":172,"n_layers":5,"n_heads":8,"n_kv_heads":4,"head_dim":8,"vocab_size":512,"seq_len":512,"tied":false,"norm_eps":1e-5,"rope_theta":10000.0}"#.to_vec(),
            ),
        ],
    );

    add(
        "tokenize_inputs",
        vec![
            (
                "array.json".into(),
                b"\x00[{\"story\":\"ab a b\"},\"plain\",{\"other\":1}]".to_vec(),
            ),
            (
                "lines.jsonl".into(),
                b"\x01{\"story\":\"a b\"}\n\"ab\"\n\n{\"story\":\"\\u00e9\"}\n".to_vec(),
            ),
            (
                "blocks.txt".into(),
                b"\x02ab ab\n\nsecond doc\n\n\n  \n".to_vec(),
            ),
            ("whole.txt".into(), b"\x85one\n\ndocument".to_vec()),
        ],
    );

    let ids = u16s(&[1, 5, 6, 7]);
    let good = tar_of(&[("TinyStories/data00.bin", &ids), ("data01.json", b"[]")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&good).unwrap();
    let gz = gz.finish().unwrap();
    let mut v = vec![
        (
            "tar-gzipped-by-harness".to_string(),
            [&[1u8][..], &good].concat(),
        ),
        (
            "odd-member".to_string(),
            [
                &[1u8][..],
                &tar_of(&[("data00.bin", b"abc"), ("data01.json", b"[]")]),
            ]
            .concat(),
        ),
    ];
    with_cuts("archive.tar.gz", [&[0u8][..], &gz].concat(), &mut v);
    add("archive", v);

    let mut dash_log = log.clone();
    dash_log
        .push_str(r#"{"type":"step","step":8,"loss":3.0,"ms":11.0,"timing":{"fwd_attn":1.25}}"#);
    add(
        "dashboard",
        vec![
            (
                "pieces".into(),
                [&[0u8, 40, 120, 200][..], dash_log.as_bytes()].concat(),
            ),
            (
                "truncated-then-plot".into(),
                [&[3u8, 10, 128, 250][..], dash_log.as_bytes()].concat(),
            ),
        ],
    );

    add(
        "mil",
        mil_programs()
            .into_iter()
            .map(|(name, p)| (name, p.text.into_bytes()))
            .collect(),
    );
    all
}
