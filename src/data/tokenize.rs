//! Tokenization of text corpora into flat token files, streaming and parallel.
//!
//! Inputs, one document each:
//! - JSON arrays (TinyStories' `dataNN.json`): each element an object whose `"story"` field
//!   (or `--field NAME`) is the document, or a plain string;
//! - JSON lines: one such object (or string) per line;
//! - plain text: blocks separated by blank lines, or the whole file (`doc_per_file`).
//!
//! Output: the documents' ids in input order, each document encoded as llama2.c's
//! `pretokenize` does (`text.strip()`, BOS = 1 first, no EOS), as flat little-endian `uint16`
//! (or `uint32` with [`TokenFormat::U32`]), plus a JSON sidecar `OUT.json` ([`TokenSidecar`]).
//!
//! Memory stays bounded whatever the input size: one reader thread parses the inputs as a
//! stream (a JSON array is walked element by element through serde's `SeqAccess`, never held
//! whole) and hands batches of about [`BATCH_BYTES`] of text through a bounded channel; the
//! calling thread takes a group of batches, encodes them in parallel with rayon (order kept
//! by `collect`), and appends the ids to the output. In flight at once: the channel's batches,
//! one group and its ids — tens of megabytes. The output goes to a temporary sibling renamed
//! over `OUT` only on success, so an error or interruption leaves no partial token file.

use super::download::Progress;
use crate::tokenizer::hf::Encode;
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Target amount of text per batch handed to one encoding task.
pub const BATCH_BYTES: usize = 256 << 10;
/// The BOS id written before every document.
pub const BOS_ID: u32 = 1;

/// Width of the ids in the output file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// Little-endian uint16: llama2.c's format, what training reads; vocabularies up to 65536.
    U16,
    /// Little-endian uint32, for vocabularies above 65536 (read by train, eval and grad
    /// through the sidecar, which records the width).
    U32,
}

impl TokenFormat {
    pub fn bytes_per_id(self) -> usize {
        match self {
            TokenFormat::U16 => 2,
            TokenFormat::U32 => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            TokenFormat::U16 => "u16",
            TokenFormat::U32 => "u32",
        }
    }
}

/// How an input file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// `.json` / `.jsonl` / `.ndjson` by their first character (`[` array, `{` lines);
    /// anything else as text.
    Auto,
    /// A JSON array of objects (or strings).
    Json,
    /// One JSON object (or string) per line.
    Jsonl,
    /// Plain text.
    Text,
}

/// Options of [`tokenize_files`].
#[derive(Clone, Debug)]
pub struct TokenizeOptions {
    pub format: TokenFormat,
    pub input_format: InputFormat,
    /// The field of a JSON object that holds the document.
    pub field: String,
    /// Plain text: the whole file is one document (else blank-line-separated blocks).
    pub doc_per_file: bool,
    /// Worker threads (0: rayon's default, all cores).
    pub threads: usize,
}

impl Default for TokenizeOptions {
    fn default() -> Self {
        TokenizeOptions {
            format: TokenFormat::U16,
            input_format: InputFormat::Auto,
            field: "story".into(),
            doc_per_file: false,
            threads: 0,
        }
    }
}

/// The sidecar `OUT.json` written beside a token file: enough to know which tokenizer made
/// it and to cross-check the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenSidecar {
    /// `u16` or `u32`, little-endian.
    pub format: TokenFormat,
    /// The tokenizer file as given on the command line.
    pub tokenizer: String,
    /// SHA-256 of the tokenizer file, lowercase hex.
    pub tokenizer_sha256: String,
    pub vocab_size: usize,
    /// Number of ids in the token file.
    pub tokens: u64,
    /// Number of documents (= number of BOS ids written).
    pub documents: u64,
    /// The id written before each document (none for tokenizers without BOS, such as
    /// Qwen3's, whose documents end with EOS instead).
    pub bos: Option<u32>,
    /// Documents left out because they were empty after trimming whitespace.
    pub skipped_empty: u64,
    /// Input files, in order.
    pub inputs: Vec<String>,
    /// Input size in bytes.
    pub input_bytes: u64,
    /// Largest id written.
    pub max_id: u32,
}

/// Path of the sidecar of token file `path`: `path` with `.json` appended.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// Reads the sidecar of `tokens` if there is one.
pub fn read_sidecar(tokens: &Path) -> Result<Option<TokenSidecar>> {
    let p = sidecar_path(tokens);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("{}: not a token-file sidecar", p.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Tokenizes `inputs` into `out` (and its sidecar) with `tok`. Returns the sidecar written.
pub fn tokenize_files(
    tok: &dyn Encode,
    tokenizer_path: &Path,
    inputs: &[PathBuf],
    out: &Path,
    opts: &TokenizeOptions,
    progress: &dyn Progress,
) -> Result<TokenSidecar> {
    if inputs.is_empty() {
        bail!("no input files given");
    }
    let vocab = tok.vocab_size();
    if opts.format == TokenFormat::U16 && vocab > 1 << 16 {
        bail!(
            "{}: the vocabulary has {vocab} tokens, more than uint16 ids can hold (65536); use --format u32",
            tokenizer_path.display()
        );
    }
    let mut input_bytes = 0u64;
    let mut formats = Vec::new();
    for p in inputs {
        let m =
            std::fs::metadata(p).with_context(|| format!("{}: cannot open input", p.display()))?;
        if !m.is_file() {
            bail!("{}: not a file", p.display());
        }
        input_bytes += m.len();
        formats.push(resolve_format(p, opts.input_format)?);
    }
    let tokenizer_sha256 = sha256_file(tokenizer_path)?;
    let threads = if opts.threads == 0 {
        rayon::current_num_threads()
    } else {
        opts.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start worker threads")?;

    let mut failure: Option<anyhow::Error> = None;
    let mut stats: Option<RunStats> = None;
    let written = crate::util::fs::write_atomic(out, |w| {
        match run_pipeline(
            tok,
            inputs,
            &formats,
            opts,
            threads,
            &pool,
            w,
            input_bytes,
            progress,
        ) {
            Ok(s) if s.documents == 0 => {
                failure = Some(anyhow!(
                    "no documents found in {} (every document was empty or missing)",
                    inputs
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                Err(io::Error::other("no documents"))
            }
            Ok(s) => {
                stats = Some(s);
                Ok(())
            }
            Err(e) => {
                failure = Some(e);
                Err(io::Error::other("tokenization failed"))
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    written.with_context(|| format!("cannot write {}", out.display()))?;
    let s = stats.expect("pipeline succeeded");
    let sidecar = TokenSidecar {
        format: opts.format,
        tokenizer: tokenizer_path.display().to_string(),
        tokenizer_sha256,
        vocab_size: vocab,
        tokens: s.tokens,
        documents: s.documents,
        bos: tok.document_bos(),
        skipped_empty: s.skipped_empty,
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        input_bytes,
        max_id: s.max_id,
    };
    let sp = sidecar_path(out);
    crate::util::fs::write_atomic(&sp, |w| {
        serde_json::to_writer_pretty(&mut *w, &sidecar).map_err(io::Error::other)?;
        w.write_all(b"\n")
    })
    .with_context(|| format!("cannot write {}", sp.display()))?;
    Ok(sidecar)
}

#[derive(Default, Debug)]
struct RunStats {
    tokens: u64,
    documents: u64,
    skipped_empty: u64,
    max_id: u32,
}

/// Concrete reading mode of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    JsonArray,
    JsonLines,
    Text,
}

fn resolve_format(path: &Path, f: InputFormat) -> Result<Mode> {
    Ok(match f {
        InputFormat::Json => Mode::JsonArray,
        InputFormat::Jsonl => Mode::JsonLines,
        InputFormat::Text => Mode::Text,
        InputFormat::Auto => {
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            if !matches!(ext.as_str(), "json" | "jsonl" | "ndjson") {
                return Ok(Mode::Text);
            }
            let mut r = BufReader::new(
                File::open(path)
                    .with_context(|| format!("{}: cannot open input", path.display()))?,
            );
            let first = loop {
                let buf = r
                    .fill_buf()
                    .with_context(|| format!("{}: cannot read input", path.display()))?;
                if buf.is_empty() {
                    break None;
                }
                let skip = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
                if skip < buf.len() {
                    break Some(buf[skip]);
                }
                let n = buf.len();
                r.consume(n);
            };
            match first {
                Some(b'[') => Mode::JsonArray,
                Some(b'{') | Some(b'"') => Mode::JsonLines,
                None => bail!("{}: the file is empty", path.display()),
                Some(c) => bail!(
                    "{}: does not look like JSON (starts with {:?}); pass --input-format text to read it as text",
                    path.display(),
                    c as char
                ),
            }
        }
    })
}

/// One batch of documents (already trimmed, non-empty).
type Batch = Vec<String>;

/// The reader side: collects documents into batches and sends them on.
struct DocSink {
    tx: SyncSender<Result<Batch>>,
    batch: Batch,
    bytes: usize,
    skipped_empty: u64,
}

impl DocSink {
    fn push(&mut self, text: &str) -> Result<(), String> {
        let t = text.trim();
        if t.is_empty() {
            self.skipped_empty += 1;
            return Ok(());
        }
        self.bytes += t.len();
        self.batch.push(t.to_string());
        if self.bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let b = std::mem::take(&mut self.batch);
        self.tx.send(Ok(b)).map_err(|_| "stopped".to_string())
    }
}

/// Counts bytes read into a shared counter (the progress bar reads it).
struct Counted<'a, R> {
    inner: R,
    count: &'a AtomicU64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads every input in order, pushing documents into `sink`.
fn read_inputs(
    inputs: &[PathBuf],
    modes: &[Mode],
    opts: &TokenizeOptions,
    sink: &mut DocSink,
    count: &AtomicU64,
) -> Result<()> {
    for (path, &mode) in inputs.iter().zip(modes) {
        let f =
            File::open(path).with_context(|| format!("{}: cannot open input", path.display()))?;
        let r = BufReader::with_capacity(1 << 20, Counted { inner: f, count });
        let res = match mode {
            Mode::JsonArray => read_json_array(r, &opts.field, sink),
            Mode::JsonLines => read_json_lines(r, &opts.field, sink),
            Mode::Text if opts.doc_per_file => read_whole(r, sink),
            Mode::Text => read_text_blocks(r, sink),
        };
        res.with_context(|| format!("{}: cannot read input", path.display()))?;
    }
    sink.flush().map_err(|e| anyhow!(e))?;
    Ok(())
}

/// Deserializes one document: an object's `field` (`None` if the object lacks it) or a string.
struct DocSeed<'a> {
    field: &'a str,
}

impl<'de> DeserializeSeed<'de> for DocSeed<'_> {
    type Value = Option<String>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocSeed<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "an object with a \"{}\" string field, or a string",
            self.field
        )
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<String>, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Option<String>, E> {
        Ok(Some(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        let mut out = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.field && out.is_none() {
                out = Some(map.next_value::<String>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// Walks a top-level JSON array element by element, never holding more than one.
struct ArrayWalker<'a> {
    field: &'a str,
    sink: &'a mut DocSink,
}

impl<'de> Visitor<'de> for ArrayWalker<'_> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a JSON array of documents")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut i = 0u64;
        while let Some(doc) = seq.next_element_seed(DocSeed { field: self.field })? {
            match doc {
                Some(text) => self.sink.push(&text).map_err(de::Error::custom)?,
                None => {
                    return Err(de::Error::custom(format!(
                    "element {i} of the array has no \"{}\" field (choose another with --field)",
                    self.field
                )))
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

fn read_json_array(r: impl Read, field: &str, sink: &mut DocSink) -> Result<()> {
    let mut de = serde_json::Deserializer::from_reader(r);
    de::Deserializer::deserialize_seq(&mut de, ArrayWalker { field, sink })?;
    de.end()?;
    Ok(())
}

fn read_json_lines(mut r: impl BufRead, field: &str, sink: &mut DocSink) -> Result<()> {
    let mut line = String::new();
    let mut lineno = 0u64;
    loop {
        line.clear();
        lineno += 1;
        if r.read_line(&mut line)
            .with_context(|| format!("line {lineno}"))?
            == 0
        {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_str(&line);
        let doc = DocSeed { field }
            .deserialize(&mut de)
            .and_then(|d| de.end().map(|_| d))
            .with_context(|| format!("line {lineno}"))?;
        match doc {
            Some(text) => sink.push(&text).map_err(|e| anyhow!(e))?,
            None => bail!(
                "line {lineno}: the object has no \"{field}\" field (choose another with --field)"
            ),
        }
    }
}

fn read_text_blocks(mut r: impl BufRead, sink: &mut DocSink) -> Result<()> {
    let mut line = String::new();
    let mut doc = String::new();
    let mut lineno = 0u64;
    loop {
        line.clear();
        lineno += 1;
        let n = r
            .read_line(&mut line)
            .with_context(|| format!("line {lineno} (text inputs must be UTF-8)"))?;
        if n == 0 || line.trim().is_empty() {
            if !doc.is_empty() {
                sink.push(&doc).map_err(|e| anyhow!(e))?;
                doc.clear();
            }
            if n == 0 {
                return Ok(());
            }
            continue;
        }
        let l = line.strip_suffix('\n').unwrap_or(&line);
        let l = l.strip_suffix('\r').unwrap_or(l);
        if !doc.is_empty() {
            doc.push('\n');
        }
        doc.push_str(l);
    }
}

fn read_whole(mut r: impl Read, sink: &mut DocSink) -> Result<()> {
    let mut s = String::new();
    r.read_to_string(&mut s)
        .context("text inputs must be UTF-8")?;
    sink.push(&s).map_err(|e| anyhow!(e))?;
    Ok(())
}

/// One encoded batch: the output bytes, ids and documents in it, and the largest id.
struct Encoded {
    bytes: Vec<u8>,
    tokens: u64,
    documents: u64,
    max_id: u32,
}

fn encode_batch(tok: &dyn Encode, batch: &Batch, format: TokenFormat) -> Encoded {
    let mut bytes = Vec::with_capacity(batch.iter().map(|d| d.len()).sum::<usize>() / 2);
    let mut tokens = 0u64;
    let mut max_id = 0u32;
    for doc in batch {
        let ids = tok.encode_document(doc);
        tokens += ids.len() as u64;
        for &id in &ids {
            max_id = max_id.max(id);
            match format {
                // The vocabulary was checked to fit, so every id does.
                TokenFormat::U16 => bytes.extend_from_slice(&(id as u16).to_le_bytes()),
                TokenFormat::U32 => bytes.extend_from_slice(&id.to_le_bytes()),
            }
        }
    }
    Encoded {
        bytes,
        tokens,
        documents: batch.len() as u64,
        max_id,
    }
}

#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    tok: &dyn Encode,
    inputs: &[PathBuf],
    modes: &[Mode],
    opts: &TokenizeOptions,
    threads: usize,
    pool: &rayon::ThreadPool,
    w: &mut dyn Write,
    input_bytes: u64,
    progress: &dyn Progress,
) -> Result<RunStats> {
    let group = 4 * threads.max(1);
    let (tx, rx): (SyncSender<Result<Batch>>, Receiver<Result<Batch>>) = sync_channel(group);
    let read_count = AtomicU64::new(0);
    let mut stats = RunStats::default();
    progress.start("tokenizing", Some(input_bytes), 0);
    let result = std::thread::scope(|s| -> Result<()> {
        // Owned here so that an early return drops it, which unblocks and ends the reader.
        let rx = rx;
        let reader = s.spawn(|| {
            let mut sink = DocSink {
                tx,
                batch: Vec::new(),
                bytes: 0,
                skipped_empty: 0,
            };
            let r = read_inputs(inputs, modes, opts, &mut sink, &read_count);
            if let Err(e) = r {
                // The consumer may already have stopped; then there is nobody to tell.
                let _ = sink.tx.send(Err(e));
            }
            sink.skipped_empty
        });
        let mut reported = 0u64;
        let mut pending: Vec<Batch> = Vec::with_capacity(group);
        let mut closed = false;
        while !closed {
            pending.clear();
            while pending.len() < group {
                match rx.recv() {
                    Ok(Ok(b)) => pending.push(b),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let encoded: Vec<Encoded> = pool.install(|| {
                pending
                    .par_iter()
                    .map(|b| encode_batch(tok, b, opts.format))
                    .collect()
            });
            for e in encoded {
                w.write_all(&e.bytes)
                    .context("cannot write the token file")?;
                stats.tokens += e.tokens;
                stats.documents += e.documents;
                stats.max_id = stats.max_id.max(e.max_id);
            }
            let now = read_count.load(Ordering::Relaxed);
            progress.advance(now - reported);
            reported = now;
        }
        stats.skipped_empty = reader
            .join()
            .map_err(|_| anyhow!("the input reader panicked"))?;
        Ok(())
    });
    progress.finish();
    result?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(mode: Mode, text: &str, field: &str) -> Result<(Vec<String>, u64)> {
        let (tx, rx) = sync_channel(1000);
        let mut sink = DocSink {
            tx,
            batch: Vec::new(),
            bytes: 0,
            skipped_empty: 0,
        };
        let r = io::Cursor::new(text.as_bytes().to_vec());
        match mode {
            Mode::JsonArray => read_json_array(r, field, &mut sink)?,
            Mode::JsonLines => read_json_lines(r, field, &mut sink)?,
            Mode::Text => read_text_blocks(r, &mut sink)?,
        }
        sink.flush().unwrap();
        let skipped = sink.skipped_empty;
        drop(sink);
        let docs = rx.iter().flat_map(|b| b.unwrap()).collect();
        Ok((docs, skipped))
    }

    #[test]
    fn json_array_elements_in_order() {
        let j = r#" [ {"story": " Once \"upon\" a time.\n", "summary": {"x": [1, 2]}},
                      {"instruction": {"a": "story"}, "story": "Two"}, "three", {"story": "  "} ] "#;
        let (docs, skipped) = collect(Mode::JsonArray, j, "story").unwrap();
        assert_eq!(docs, vec!["Once \"upon\" a time.", "Two", "three"]);
        assert_eq!(skipped, 1);
        let e = format!(
            "{:#}",
            collect(Mode::JsonArray, r#"[{"story":"a"},{"text":"b"}]"#, "story").unwrap_err()
        );
        assert!(e.contains("element 1") && e.contains("\"story\""), "{e}");
        let e = format!(
            "{:#}",
            collect(Mode::JsonArray, r#"[{"story":"a"}, {"story": 5}]"#, "story").unwrap_err()
        );
        assert!(e.contains("line 1"), "{e}");
        assert!(collect(Mode::JsonArray, r#"[{"story":"a"}] x"#, "story").is_err());
        assert!(collect(Mode::JsonArray, r#"[{"story":"a"}"#, "story").is_err());
    }

    #[test]
    fn json_lines_and_text_blocks() {
        let (docs, _) = collect(
            Mode::JsonLines,
            "{\"text\":\"a b\"}\n\n{\"text\":\"c\"}\n",
            "text",
        )
        .unwrap();
        assert_eq!(docs, vec!["a b", "c"]);
        let e = format!(
            "{:#}",
            collect(Mode::JsonLines, "{\"text\":\"a\"}\n{oops\n", "text").unwrap_err()
        );
        assert!(e.contains("line 2"), "{e}");
        let (docs, _) =
            collect(Mode::Text, "\n\nOne line.\r\nTwo line.\n \n\n\nThird\n", "").unwrap();
        assert_eq!(docs, vec!["One line.\nTwo line.", "Third"]);
    }

    #[test]
    fn many_elements_make_several_batches() {
        let story = "x".repeat(1000);
        let n = 3 * BATCH_BYTES / 1000 + 7;
        let mut j = String::from("[");
        for i in 0..n {
            if i > 0 {
                j.push(',');
            }
            j.push_str(&format!("{{\"story\":\"{story}{i}\"}}"));
        }
        j.push(']');
        let (tx, rx) = sync_channel(1000);
        let mut sink = DocSink {
            tx,
            batch: Vec::new(),
            bytes: 0,
            skipped_empty: 0,
        };
        read_json_array(io::Cursor::new(j.into_bytes()), "story", &mut sink).unwrap();
        sink.flush().unwrap();
        drop(sink);
        let batches: Vec<Batch> = rx.iter().map(|b| b.unwrap()).collect();
        assert!(batches.len() >= 3, "{}", batches.len());
        let docs: Vec<String> = batches.into_iter().flatten().collect();
        assert_eq!(docs.len(), n);
        assert_eq!(docs[n - 1], format!("{story}{}", n - 1));
    }
}
