//! TinyStories download: the pretokenized archive the reference trains on, or the original
//! JSON stories, fetched over HTTP(S) and unpacked shard by shard.
//!
//! Two archives exist (both tar.gz on Hugging Face):
//! - `enio/TinyStories` `tok32000/TinyStories_tok32000.tar.gz` (~993 MB): `data00.bin` …
//!   `data49.bin`, flat little-endian uint16 ids from llama2.c's 32000-token Llama 2 tokenizer,
//!   BOS (1) before each story — what the reference's `training/download_data.sh` fetches;
//! - `roneneldan/TinyStories` `TinyStories_all_data.tar.gz`: `data00.json` … `data49.json`,
//!   JSON arrays of objects with a `"story"` field — the input of `anetrain tokenize`.
//!
//! The design keeps every file a user sees complete:
//! 1. the archive streams into `ARCHIVE.part`; an interrupted transfer leaves the `.part` (and
//!    a small `ARCHIVE.part.json` with the server's validators) so the next run continues it
//!    with a `Range` request; a server that ignores `Range` (answers 200) or whose file changed
//!    (`If-Range` fails) restarts it from byte 0;
//! 2. before one byte is stored the response is checked: status, a content type that is not a
//!    web page or JSON, and the gzip magic number — so an error page never becomes an archive;
//! 3. only a transfer whose length matches the announced one is renamed to `ARCHIVE`;
//! 4. the requested members are unpacked to hidden temporary files in the target folder, their
//!    sizes checked against the tar headers, and renamed into place only when all of them are
//!    complete; a truncated or corrupt archive is deleted (so the next run fetches it afresh)
//!    and leaves no output.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The pretokenized TinyStories archive used by the reference trainer.
pub const TINYSTORIES_TOK32000_URL: &str =
    "https://huggingface.co/datasets/enio/TinyStories/resolve/main/tok32000/TinyStories_tok32000.tar.gz?download=true";
/// The original TinyStories JSON archive.
pub const TINYSTORIES_RAW_URL: &str =
    "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories_all_data.tar.gz";
/// Environment variable overriding [`TINYSTORIES_TOK32000_URL`] (a mirror).
pub const TINYSTORIES_URL_ENV: &str = "ANETRAIN_TINYSTORIES_URL";
/// Environment variable overriding [`TINYSTORIES_RAW_URL`].
pub const TINYSTORIES_RAW_URL_ENV: &str = "ANETRAIN_TINYSTORIES_RAW_URL";
/// Number of shards in either archive (`data00` … `data49`).
pub const TINYSTORIES_SHARDS: usize = 50;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const CHUNK: usize = 1 << 20;

/// Where a long operation reports how far it got. The command line draws a progress bar; tests
/// record the calls. Units are bytes for downloads and unpacking.
pub trait Progress {
    /// A new phase named `label`, `total` units long when known, `done` units already done.
    fn start(&self, label: &str, total: Option<u64>, done: u64);
    /// `n` more units done.
    fn advance(&self, n: u64);
    /// The phase is over.
    fn finish(&self);
    /// A remark worth a line of its own (resuming, restarting).
    fn note(&self, msg: &str);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: Option<u64>, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
    fn note(&self, _: &str) {}
}

/// What [`fetch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Size of the complete file.
    pub bytes: u64,
    /// Bytes taken from an earlier partial download (0 for a fresh one).
    pub resumed_from: u64,
    /// Bytes received over the network by this call.
    pub received: u64,
    /// The server ignored the `Range` request or the file changed, so the partial download
    /// was discarded.
    pub restarted: bool,
    /// The file was already complete; nothing was fetched.
    pub already_present: bool,
}

/// What the server said about the file when a partial download began; compared on resume.
#[derive(Serialize, Deserialize, Default, Debug)]
struct PartMeta {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    total: Option<u64>,
}

fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

fn part_meta_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part.json");
    PathBuf::from(s)
}

/// The HTTP client: rustls, no transparent decompression (byte offsets must be those of the
/// file for `Range` to make sense), status codes inspected by the caller, a stall timeout.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .accept_encoding("identity")
        .user_agent(concat!("anetrain/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .max_redirects(10)
        .build()
        .new_agent()
}

fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Parses `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`) into (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let start = if range.trim() == "*" {
        0
    } else {
        range.split_once('-')?.0.trim().parse().ok()?
    };
    Some((start, total))
}

/// The first bytes of a body, printable, for error messages about what came instead of an
/// archive.
fn snippet(bytes: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Explains a transport error: offline, DNS, refused, TLS, timeout.
fn transport_error(url: &str, e: ureq::Error) -> anyhow::Error {
    let hint = match &e {
        ureq::Error::HostNotFound => "the host name does not resolve: are you offline?",
        ureq::Error::ConnectionFailed | ureq::Error::Io(_) => {
            "could not connect or the connection broke: are you offline, or is a proxy needed?"
        }
        ureq::Error::Timeout(_) => "the server did not answer in time",
        _ => "the request failed",
    };
    anyhow!(
        "cannot download {url}: {e} ({hint}). To use a mirror, pass --url or set {TINYSTORIES_URL_ENV} / {TINYSTORIES_RAW_URL_ENV}"
    )
}

/// Reads until `buf` holds `n` bytes or the body ends.
fn read_at_least(r: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let mut tmp = [0u8; 512];
    while buf.len() < n {
        let k = r.read(&mut tmp)?;
        if k == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..k]);
    }
    Ok(())
}

/// Downloads `url` to `dest`, resuming `dest.part` when one exists. The file must start with
/// the gzip magic number. On success `dest` is complete and the `.part` files are gone; on an
/// interrupted transfer the `.part` is kept for the next call.
pub fn fetch(url: &str, dest: &Path, progress: &dyn Progress) -> Result<FetchReport> {
    if dest.exists() {
        let bytes = fs::metadata(dest)?.len();
        return Ok(FetchReport {
            bytes,
            already_present: true,
            ..Default::default()
        });
    }
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let part = part_path(dest);
    let meta_path = part_meta_path(dest);
    let agent = agent();
    let mut report = FetchReport::default();

    // A partial file that does not even start like a gzip stream is of no use.
    let mut offset = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if offset > 0 {
        let mut head = Vec::new();
        File::open(&part)
            .and_then(|mut f| read_at_least(&mut f, &mut head, 2))
            .with_context(|| format!("cannot read {}", part.display()))?;
        if head.len() >= 2 && head[..2] != GZIP_MAGIC {
            progress.note(&format!(
                "{} is not the start of a gzip file; starting over",
                part.display()
            ));
            offset = 0;
            report.restarted = true;
        }
    }
    let old_meta: Option<PartMeta> = if offset > 0 {
        fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    } else {
        None
    };

    // At most two requests: a resume attempt, then (if the server cannot resume) a fresh one.
    for _attempt in 0..2 {
        let mut req = agent.get(url);
        if offset > 0 {
            req = req.header("Range", &format!("bytes={offset}-"));
            if let Some(m) = &old_meta {
                if let Some(v) = m.etag.as_deref().or(m.last_modified.as_deref()) {
                    req = req.header("If-Range", v);
                }
            }
        }
        let mut resp = req.call().map_err(|e| transport_error(url, e))?;
        let status = resp.status().as_u16();

        let (start, total) = match status {
            200 => {
                if offset > 0 {
                    progress.note(&format!(
                        "the server sent the whole file instead of the rest (no resume support, or the file changed); discarding {offset} downloaded bytes"
                    ));
                    report.restarted = true;
                }
                (0, resp.body().content_length())
            }
            206 => {
                let cr = header(&resp, "content-range").unwrap_or("");
                match parse_content_range(cr) {
                    Some((_, Some(t))) if old_meta.as_ref().and_then(|m| m.total).is_some_and(|t0| t0 != t) => {
                        // Without validators to send, a changed length is the sign of a
                        // different file: start over rather than splice two files.
                        drop(resp);
                        progress.note("the remote file changed size since the partial download; starting over");
                        offset = 0;
                        report.restarted = true;
                        continue;
                    }
                    Some((s, t)) if s == offset => (s, t),
                    _ => bail!(
                        "cannot download {url}: asked for bytes from {offset} on, the server answered with Content-Range {cr:?}"
                    ),
                }
            }
            416 if offset > 0 => {
                // Nothing left past `offset`: either the part is complete already, or the
                // remote file shrank (then start over).
                let total = header(&resp, "content-range")
                    .and_then(parse_content_range)
                    .and_then(|(_, t)| t);
                if total == Some(offset) {
                    finish_part(&part, &meta_path, dest)?;
                    report.bytes = offset;
                    report.resumed_from = offset;
                    return Ok(report);
                }
                progress.note("the server cannot continue the partial download; starting over");
                offset = 0;
                report.restarted = true;
                continue;
            }
            404 => bail!(
                "cannot download {url}: HTTP 404 not found. The file may have moved; pass --url or set {TINYSTORIES_URL_ENV} / {TINYSTORIES_RAW_URL_ENV} to a mirror"
            ),
            s => {
                let mut head = Vec::new();
                let _ = read_at_least(&mut resp.body_mut().as_reader(), &mut head, 120);
                bail!(
                    "cannot download {url}: HTTP {s} {}; the server said: {:?}",
                    resp.status().canonical_reason().unwrap_or(""),
                    snippet(&head)
                );
            }
        };

        let ctype = header(&resp, "content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        let mime = ctype.split(';').next().unwrap_or("").trim().to_string();
        let etag = header(&resp, "etag").map(str::to_string);
        let last_modified = header(&resp, "last-modified").map(str::to_string);
        let mut body = resp.body_mut().as_reader();
        let mut head = Vec::new();
        if mime.starts_with("text/")
            || mime.contains("json")
            || mime.contains("xml")
            || mime.contains("html")
        {
            let _ = read_at_least(&mut body, &mut head, 120);
            bail!(
                "{url} answered with {mime} instead of a gzip archive (a web page: an error, login or consent page?). It begins: {:?}. Nothing was written",
                snippet(&head)
            );
        }
        if start == 0 {
            read_at_least(&mut body, &mut head, 2).map_err(|e| {
                anyhow!("cannot download {url}: the connection broke at once ({e})")
            })?;
            if head.len() < 2 || head[..2] != GZIP_MAGIC {
                bail!(
                    "{url} did not send a gzip archive (content type {:?}); it begins: {:?}. Nothing was written",
                    if mime.is_empty() { "none" } else { &mime },
                    snippet(&head)
                );
            }
        }

        let total_len = total;
        let meta = PartMeta {
            url: url.to_string(),
            etag,
            last_modified,
            total: total_len,
        };
        let meta_json = serde_json::to_vec(&meta)?;
        fs::write(&meta_path, meta_json)
            .with_context(|| format!("cannot write {}", meta_path.display()))?;
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .with_context(|| format!("cannot open {}", part.display()))?;
        file.set_len(start)
            .and_then(|_| file.seek(SeekFrom::Start(start)).map(|_| ()))
            .with_context(|| format!("cannot write {}", part.display()))?;
        report.resumed_from = start;
        if start > 0 {
            progress.note(&format!("resuming the download at byte {start}"));
        }

        let label = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "download".into());
        progress.start(&label, total_len, start);
        let mut done = start;
        let write_err = |e: io::Error| anyhow!("cannot write {}: {e}", part.display());
        if !head.is_empty() {
            file.write_all(&head).map_err(write_err)?;
            done += head.len() as u64;
            progress.advance(head.len() as u64);
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    file.write_all(&buf[..n]).map_err(write_err)?;
                    done += n as u64;
                    progress.advance(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = file.sync_all();
                    progress.finish();
                    let of = total_len.map(|t| format!(" of {t}")).unwrap_or_default();
                    bail!(
                        "download of {url} interrupted after {done}{of} bytes ({e}); the partial file {} is kept: run the same command again to resume",
                        part.display()
                    );
                }
            }
        }
        progress.finish();
        file.sync_all().map_err(write_err)?;
        drop(file);
        if let Some(t) = total_len {
            if done != t {
                bail!(
                    "download of {url} ended after {done} of {t} bytes; the partial file {} is kept: run the same command again to resume",
                    part.display()
                );
            }
        }
        finish_part(&part, &meta_path, dest)?;
        report.bytes = done;
        report.received = done - start;
        return Ok(report);
    }
    bail!("cannot download {url}: the server neither resumed nor restarted the transfer")
}

/// Renames a complete `.part` to its destination and drops its metadata.
fn finish_part(part: &Path, meta: &Path, dest: &Path) -> Result<()> {
    fs::rename(part, dest)
        .with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))?;
    let _ = fs::remove_file(meta);
    Ok(())
}

/// Counts the compressed bytes the unpacker consumes, for its progress bar.
struct CountingReader<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// One member to take out of an archive.
#[derive(Debug, Clone)]
pub struct Member {
    /// File name of the member inside the archive (any folder prefix is ignored).
    pub name: String,
    /// Where it goes.
    pub dest: PathBuf,
    /// The member must be a whole number of uint16 ids (an even byte count).
    pub uint16_ids: bool,
}

/// Unpacks `members` from the tar.gz `archive`. All or nothing: each member goes to a hidden
/// temporary file beside its destination and is checked against its tar header size; the
/// temporaries are renamed into place only when every member is complete. Returns the byte
/// size of each member, in the order given.
pub fn extract(archive: &Path, members: &[Member], progress: &dyn Progress) -> Result<Vec<u64>> {
    let f = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let total = f.metadata()?.len();
    let temps: Vec<PathBuf> = members
        .iter()
        .map(|m| crate::util::fs::temp_path(&m.dest))
        .collect();
    let label = format!(
        "unpacking {}",
        archive.file_name().unwrap_or_default().to_string_lossy()
    );
    progress.start(&label, Some(total), 0);
    let result = extract_to_temps(f, archive, members, &temps, progress);
    progress.finish();
    match result {
        Ok(sizes) => {
            for (m, t) in members.iter().zip(&temps) {
                fs::rename(t, &m.dest).with_context(|| {
                    format!("cannot rename {} to {}", t.display(), m.dest.display())
                })?;
            }
            Ok(sizes)
        }
        Err(e) => {
            for t in &temps {
                let _ = fs::remove_file(t);
            }
            Err(e)
        }
    }
}

fn extract_to_temps(
    f: File,
    archive: &Path,
    members: &[Member],
    temps: &[PathBuf],
    progress: &dyn Progress,
) -> Result<Vec<u64>> {
    let corrupt = |what: String| {
        anyhow!(
            "{}: not a valid tar.gz archive, or a truncated one ({what})",
            archive.display()
        )
    };
    let counted = CountingReader {
        inner: BufReader::with_capacity(CHUNK, f),
        progress,
    };
    let mut gz = flate2::read::MultiGzDecoder::new(counted);
    let mut sizes: Vec<Option<u64>> = vec![None; members.len()];
    let mut seen: Vec<String> = Vec::new();
    {
        let mut tar = tar::Archive::new(&mut gz);
        let entries = tar.entries().map_err(|e| corrupt(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path().map_err(|e| corrupt(e.to_string()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if seen.len() < 64 {
                seen.push(name.clone());
            }
            let Some(i) = members.iter().position(|m| m.name == name) else {
                continue;
            };
            if sizes[i].is_some() {
                continue;
            }
            let want = entry.size();
            let tmp = &temps[i];
            let out =
                File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            let mut w = io::BufWriter::with_capacity(CHUNK, out);
            let got = io::copy(&mut entry, &mut w)
                .map_err(|e| corrupt(format!("reading member {name}: {e}")))?;
            if got != want {
                return Err(corrupt(format!(
                    "member {name} has {got} of its {want} bytes"
                )));
            }
            let out = w
                .into_inner()
                .map_err(|e| anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
            out.sync_all()
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            if members[i].uint16_ids && got % 2 != 0 {
                bail!(
                    "{}: member {name} has {got} bytes, not a whole number of uint16 token ids; is this the pretokenized archive?",
                    archive.display()
                );
            }
            sizes[i] = Some(got);
            if sizes.iter().all(Option::is_some) {
                break;
            }
        }
    }
    if let Some(i) = sizes.iter().position(Option::is_none) {
        // Reading on to the end of the gzip stream tells a truncated archive (no trailer, bad
        // CRC) apart from one that simply lacks the member.
        if let Err(e) = io::copy(&mut gz, &mut io::sink()) {
            return Err(corrupt(e.to_string()));
        }
        let listed = if seen.is_empty() {
            "no files".to_string()
        } else {
            seen.join(", ")
        };
        bail!(
            "{}: {} is not in the archive (it holds: {listed})",
            archive.display(),
            members[i].name
        );
    }
    Ok(sizes.into_iter().map(|s| s.unwrap_or(0)).collect())
}

/// A TinyStories download request.
#[derive(Debug, Clone)]
pub struct TinyStoriesRequest {
    /// Folder for the archive and the shards.
    pub dir: PathBuf,
    /// Shards 0..shards are unpacked (1..=50).
    pub shards: usize,
    /// The original JSON stories instead of the pretokenized ids.
    pub raw: bool,
    /// Archive URL; `None` means the environment variable, else the default.
    pub url: Option<String>,
    /// Keep the archive after unpacking (it is deleted by default: ~1 GB).
    pub keep_archive: bool,
}

/// What [`download_tinystories`] did.
#[derive(Debug, Clone)]
pub struct TinyStoriesReport {
    pub url: String,
    pub archive: PathBuf,
    pub fetch: Option<FetchReport>,
    /// Each shard's path and byte size.
    pub files: Vec<(PathBuf, u64)>,
    /// Shards that were already present and left alone.
    pub already_present: usize,
    pub archive_kept: bool,
}

/// The URL for the pretokenized (`raw = false`) or JSON archive: `explicit`, else the
/// environment variable, else the Hugging Face default.
pub fn tinystories_url(raw: bool, explicit: Option<&str>) -> String {
    if let Some(u) = explicit {
        return u.to_string();
    }
    let (env, default) = if raw {
        (TINYSTORIES_RAW_URL_ENV, TINYSTORIES_RAW_URL)
    } else {
        (TINYSTORIES_URL_ENV, TINYSTORIES_TOK32000_URL)
    };
    match std::env::var(env) {
        Ok(u) if !u.trim().is_empty() => u.trim().to_string(),
        _ => default.to_string(),
    }
}

/// File name of shard `i` inside the archive and in the target folder.
pub fn shard_names(raw: bool, i: usize) -> (String, String) {
    let ext = if raw { "json" } else { "bin" };
    (
        format!("data{i:02}.{ext}"),
        format!("tinystories_data{i:02}.{ext}"),
    )
}

/// Downloads the TinyStories archive (unless every requested shard is already present) and
/// unpacks shards `0..shards` into `dir` as `tinystories_dataNN.bin` (or `.json` with `raw`).
pub fn download_tinystories(
    req: &TinyStoriesRequest,
    progress: &dyn Progress,
) -> Result<TinyStoriesReport> {
    if req.shards == 0 || req.shards > TINYSTORIES_SHARDS {
        bail!(
            "--shards must be between 1 and {TINYSTORIES_SHARDS}, got {}",
            req.shards
        );
    }
    let url = tinystories_url(req.raw, req.url.as_deref());
    let archive = req.dir.join(if req.raw {
        "TinyStories_all_data.tar.gz"
    } else {
        "TinyStories_tok32000.tar.gz"
    });
    let mut members = Vec::new();
    let mut files = Vec::new();
    let mut already_present = 0;
    for i in 0..req.shards {
        let (inner, outer) = shard_names(req.raw, i);
        let dest = req.dir.join(outer);
        // Shards are only ever renamed into place complete, so an existing one is whole.
        if let Ok(m) = fs::metadata(&dest) {
            already_present += 1;
            files.push((dest, m.len()));
        } else {
            members.push(Member {
                name: inner,
                dest,
                uint16_ids: !req.raw,
            });
        }
    }
    let mut report = TinyStoriesReport {
        url: url.clone(),
        archive: archive.clone(),
        fetch: None,
        files: Vec::new(),
        already_present,
        archive_kept: archive.exists(),
    };
    if members.is_empty() {
        report.files = files;
        return Ok(report);
    }
    fs::create_dir_all(&req.dir).with_context(|| format!("cannot create {}", req.dir.display()))?;
    report.fetch = Some(fetch(&url, &archive, progress)?);
    let sizes = match extract(&archive, &members, progress) {
        Ok(s) => s,
        Err(e) => {
            let bad = format!("{e:#}").contains("not a valid tar.gz");
            if bad {
                let _ = fs::remove_file(&archive);
                return Err(anyhow!(
                    "{e:#}; the archive was deleted: run the command again to download it afresh from {url}"
                ));
            }
            return Err(e);
        }
    };
    files.extend(members.iter().map(|m| m.dest.clone()).zip(sizes));
    files.sort();
    report.files = files;
    report.archive_kept = req.keep_archive;
    if !req.keep_archive {
        fs::remove_file(&archive)
            .with_context(|| format!("cannot delete {}", archive.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */42"), Some((0, Some(42))));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes x-9/10"), None);
    }

    #[test]
    fn urls_and_names() {
        assert_eq!(
            shard_names(false, 7),
            (
                "data07.bin".to_string(),
                "tinystories_data07.bin".to_string()
            )
        );
        assert_eq!(shard_names(true, 12).0, "data12.json");
        assert_eq!(tinystories_url(false, Some("http://m/x")), "http://m/x");
        assert!(TINYSTORIES_TOK32000_URL.contains("enio/TinyStories"));
    }
}
