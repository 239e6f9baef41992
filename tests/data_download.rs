//! The TinyStories download path end to end against a small HTTP server on 127.0.0.1 written
//! here (std::net only), serving a tar.gz built here by a hand-written ustar writer — so
//! neither the transport nor the archive format is checked against the code under test.
//! Cases: a clean download with progress, resume after a dropped connection (through a
//! redirect, as Hugging Face serves files), a server that ignores Range, a file that changed
//! between attempts, a part that was already complete (416), an HTML page, a non-gzip body,
//! a truncated archive, a missing shard, 404, and a closed port.

use anetrain::data::download::{
    download_tinystories, Progress, TinyStoriesReport, TinyStoriesRequest,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

// ---------------------------------------------------------------- archive built by the test

/// A ustar header block for a regular file (typeflag '0') or a folder ('5').
fn ustar_header(name: &str, size: usize, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{:0w$o}\0", v, w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is the byte sum with the checksum field read as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn tar_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&ustar_header("tok32000/", 0, b'5'));
    for (name, data) in files {
        out.extend_from_slice(&ustar_header(name, data.len(), b'0'));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Shard `i`: `n` pseudo-random uint16 ids (incompressible, so a cut archive cuts a shard).
fn shard(i: u64, n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i + 1);
    let mut v = Vec::with_capacity(2 * n);
    for k in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = if k % 200 == 0 { 1 } else { (x % 32000) as u16 };
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

struct Fixture {
    archive: Vec<u8>,
    shards: Vec<Vec<u8>>,
}

/// Three shards under a folder, plus a stray file, as a tar.gz.
fn fixture(seed: u64) -> Fixture {
    let shards: Vec<Vec<u8>> = (0..3).map(|i| shard(seed * 10 + i, 40_000)).collect();
    let names = [
        "tok32000/data00.bin",
        "tok32000/data01.bin",
        "tok32000/data02.bin",
    ];
    let mut files: Vec<(&str, &[u8])> = vec![("tok32000/README", b"shards".as_slice())];
    for (n, s) in names.iter().zip(&shards) {
        files.push((n, s));
    }
    Fixture {
        archive: gzip(&tar_bytes(&files)),
        shards,
    }
}

// ---------------------------------------------------------------- the test server

#[derive(Clone)]
struct Route {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    /// Honour `Range` (else always answer 200 with the whole body).
    ranges: bool,
    /// Send the full Content-Length but only this many body bytes, then close (once).
    cut_after: Option<usize>,
    etag: Option<String>,
    location: Option<String>,
}

impl Route {
    fn file(body: Vec<u8>) -> Route {
        Route {
            status: 200,
            body,
            content_type: "application/gzip",
            ranges: true,
            cut_after: None,
            etag: None,
            location: None,
        }
    }
}

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
    if_range: Option<String>,
}

struct Server {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Default::default();
        let log: Arc<Mutex<Vec<Seen>>> = Default::default();
        let (r, l) = (routes.clone(), log.clone());
        // Serves until the test process exits; each test has its own port.
        thread::spawn(move || {
            for stream in listener.incoming().take(100).flatten() {
                let (r, l) = (r.clone(), l.clone());
                thread::spawn(move || handle(stream, &r, &l));
            }
        });
        Server { port, routes, log }
    }
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    fn route(&self, path: &str, r: Route) {
        self.routes.lock().unwrap().insert(path.to_string(), r);
    }
    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

fn handle(mut stream: TcpStream, routes: &Mutex<HashMap<String, Route>>, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (mut range, mut if_range) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "if-range" => if_range = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
        if_range: if_range.clone(),
    });
    let route = {
        let mut rs = routes.lock().unwrap();
        match rs.get_mut(&path) {
            Some(r) => {
                let copy = r.clone();
                r.cut_after = None;
                Some(copy)
            }
            None => None,
        }
    };
    let Some(route) = route else {
        let body = b"<html><body>404 Not Found</body></html>";
        let _ = write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(body);
        return;
    };
    if let Some(loc) = &route.location {
        let _ = write!(
            stream,
            "HTTP/1.1 302 Found\r\nLocation: {loc}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    let len = route.body.len();
    let etag_ok = match (&if_range, &route.etag) {
        (Some(v), Some(e)) => v == e,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|_| route.ranges && etag_ok && route.status == 200);
    let etag = route
        .etag
        .as_ref()
        .map(|e| format!("ETag: {e}\r\n"))
        .unwrap_or_default();
    let (status, extra, body): (String, String, &[u8]) = match start {
        Some(s) if s >= len => {
            let _ = write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Some(s) => (
            "206 Partial Content".into(),
            format!("Content-Range: bytes {s}-{}/{len}\r\n", len - 1),
            &route.body[s..],
        ),
        None => (
            format!("{} X", route.status),
            String::new(),
            &route.body[..],
        ),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{extra}{etag}Accept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        route.content_type,
        body.len()
    );
    let send = route.cut_after.unwrap_or(body.len()).min(body.len());
    let _ = stream.write_all(&body[..send]);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------- helpers

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Start(String, Option<u64>, u64),
    Advance(u64),
    Finish,
    Note(String),
}

#[derive(Default)]
struct Rec(Mutex<Vec<Ev>>);

impl Progress for Rec {
    fn start(&self, label: &str, total: Option<u64>, done: u64) {
        self.0
            .lock()
            .unwrap()
            .push(Ev::Start(label.into(), total, done));
    }
    fn advance(&self, n: u64) {
        self.0.lock().unwrap().push(Ev::Advance(n));
    }
    fn finish(&self) {
        self.0.lock().unwrap().push(Ev::Finish);
    }
    fn note(&self, msg: &str) {
        self.0.lock().unwrap().push(Ev::Note(msg.into()));
    }
}

impl Rec {
    /// (start event, sum of advances, number of advances) of phase `k`.
    fn phase(&self, k: usize) -> (Ev, u64, usize) {
        let evs = self.0.lock().unwrap().clone();
        let starts: Vec<usize> = evs
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, Ev::Start(..)))
            .map(|(i, _)| i)
            .collect();
        let from = starts[k];
        let to = starts.get(k + 1).copied().unwrap_or(evs.len());
        let adv: Vec<u64> = evs[from..to]
            .iter()
            .filter_map(|e| match e {
                Ev::Advance(n) => Some(*n),
                _ => None,
            })
            .collect();
        (evs[from].clone(), adv.iter().sum(), adv.len())
    }
    fn notes(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Ev::Note(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

fn request(dir: &Path, url: &str, shards: usize) -> TinyStoriesRequest {
    TinyStoriesRequest {
        dir: dir.to_path_buf(),
        shards,
        raw: false,
        url: Some(url.to_string()),
        keep_archive: false,
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn shard_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("tinystories_data{i:02}.bin"))
}

fn assert_shards(dir: &Path, fx: &Fixture, n: usize, r: &TinyStoriesReport) {
    for i in 0..n {
        let got = std::fs::read(shard_path(dir, i)).unwrap();
        assert!(
            got == fx.shards[i],
            "shard {i} differs from what was served"
        );
        assert_eq!(r.files[i], (shard_path(dir, i), fx.shards[i].len() as u64));
    }
}

fn err_text(r: anyhow::Result<TinyStoriesReport>) -> String {
    let e = format!("{:#}", r.expect_err("expected an error"));
    eprintln!("ERR: {e}");
    e
}

// ---------------------------------------------------------------- the cases

#[test]
fn downloads_extracts_requested_shards_and_reports_progress() {
    let fx = fixture(1);
    let srv = Server::start();
    srv.route("/ts.tar.gz", Route::file(fx.archive.clone()));
    let d = tempfile::tempdir().unwrap();
    let rec = Rec::default();
    let r = download_tinystories(&request(d.path(), &srv.url("/ts.tar.gz"), 2), &rec).unwrap();
    assert_shards(d.path(), &fx, 2, &r);
    assert_eq!(r.files.len(), 2);
    // Only the requested shards; the archive is deleted; no temporary left behind.
    assert_eq!(
        listing(d.path()),
        vec!["tinystories_data00.bin", "tinystories_data01.bin"]
    );
    let f = r.fetch.clone().unwrap();
    let n = fx.archive.len() as u64;
    assert_eq!(
        (f.bytes, f.received, f.resumed_from, f.restarted),
        (n, n, 0, false)
    );
    // Download phase: total announced up front, advances adding up to it.
    let (start, sum, _) = rec.phase(0);
    assert_eq!(
        start,
        Ev::Start("TinyStories_tok32000.tar.gz".into(), Some(n), 0)
    );
    assert_eq!(sum, n);
    // Unpack phase: measured in compressed bytes read, never past the archive size.
    let (start, sum, count) = rec.phase(1);
    assert!(matches!(start, Ev::Start(ref l, Some(t), 0) if l.starts_with("unpacking") && t == n));
    assert!(sum > 0 && sum <= n && count > 0, "{sum} {count}");

    // A second run finds the shards and touches nothing on the network.
    let before = srv.seen().len();
    let r2 = download_tinystories(
        &request(d.path(), &srv.url("/ts.tar.gz"), 2),
        &Rec::default(),
    )
    .unwrap();
    assert!(r2.fetch.is_none());
    assert_eq!(r2.already_present, 2);
    assert_eq!(srv.seen().len(), before);

    // Asking for three with --keep-archive fetches again, extracts only the missing one.
    let mut req = request(d.path(), &srv.url("/ts.tar.gz"), 3);
    req.keep_archive = true;
    let r3 = download_tinystories(&req, &Rec::default()).unwrap();
    assert_eq!(r3.already_present, 2);
    assert_shards(d.path(), &fx, 3, &r3);
    assert_eq!(
        std::fs::read(d.path().join("TinyStories_tok32000.tar.gz")).unwrap(),
        fx.archive
    );
}

#[test]
fn resumes_an_interrupted_transfer_through_a_redirect() {
    let fx = fixture(2);
    let srv = Server::start();
    let cut = fx.archive.len() / 2;
    let mut route = Route::file(fx.archive.clone());
    route.cut_after = Some(cut);
    route.etag = Some("\"v1\"".into());
    srv.route("/real/ts.tar.gz", route);
    let mut redirect = Route::file(Vec::new());
    redirect.location = Some(srv.url("/real/ts.tar.gz"));
    srv.route("/resolve/ts.tar.gz", redirect);
    let url = srv.url("/resolve/ts.tar.gz");
    let d = tempfile::tempdir().unwrap();

    let e = err_text(download_tinystories(
        &request(d.path(), &url, 2),
        &Rec::default(),
    ));
    assert!(
        e.contains("interrupted") && e.contains("run the same command again"),
        "{e}"
    );
    assert_eq!(
        listing(d.path()),
        vec![
            "TinyStories_tok32000.tar.gz.part",
            "TinyStories_tok32000.tar.gz.part.json"
        ]
    );
    let part = std::fs::read(d.path().join("TinyStories_tok32000.tar.gz.part")).unwrap();
    assert_eq!(part.len(), cut);
    assert!(part[..] == fx.archive[..cut]);

    let rec = Rec::default();
    let r = download_tinystories(&request(d.path(), &url, 2), &rec).unwrap();
    let f = r.fetch.clone().unwrap();
    assert_eq!(f.resumed_from, cut as u64);
    assert_eq!(f.received, (fx.archive.len() - cut) as u64);
    assert!(!f.restarted);
    assert_shards(d.path(), &fx, 2, &r);
    assert_eq!(
        listing(d.path()),
        vec!["tinystories_data00.bin", "tinystories_data01.bin"]
    );
    // The Range and If-Range headers reached the real file behind the redirect.
    let last = srv.seen().last().unwrap().clone();
    assert_eq!(last.path, "/real/ts.tar.gz");
    assert_eq!(
        last.range.as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
    assert_eq!(last.if_range.as_deref(), Some("\"v1\""));
    let (start, sum, _) = rec.phase(0);
    assert_eq!(
        start,
        Ev::Start(
            "TinyStories_tok32000.tar.gz".into(),
            Some(fx.archive.len() as u64),
            cut as u64
        )
    );
    assert_eq!(sum, (fx.archive.len() - cut) as u64);
    assert!(rec.notes().iter().any(|n| n.contains("resuming")));
}

#[test]
fn restarts_when_the_server_ignores_range() {
    let fx = fixture(3);
    let srv = Server::start();
    let mut route = Route::file(fx.archive.clone());
    route.cut_after = Some(fx.archive.len() / 3);
    route.ranges = false;
    srv.route("/ts.tar.gz", route);
    let d = tempfile::tempdir().unwrap();
    let url = srv.url("/ts.tar.gz");
    assert!(download_tinystories(&request(d.path(), &url, 1), &Rec::default()).is_err());
    let rec = Rec::default();
    let r = download_tinystories(&request(d.path(), &url, 1), &rec).unwrap();
    let f = r.fetch.clone().unwrap();
    assert!(f.restarted);
    assert_eq!((f.resumed_from, f.received), (0, fx.archive.len() as u64));
    assert_shards(d.path(), &fx, 1, &r);
    assert!(rec.notes().iter().any(|n| n.contains("whole file")));
}

#[test]
fn restarts_when_the_file_changed_between_attempts() {
    let old = fixture(4);
    let new = fixture(5);
    let srv = Server::start();
    let mut route = Route::file(old.archive.clone());
    route.cut_after = Some(old.archive.len() / 2);
    route.etag = Some("\"old\"".into());
    srv.route("/ts.tar.gz", route);
    let d = tempfile::tempdir().unwrap();
    let url = srv.url("/ts.tar.gz");
    assert!(download_tinystories(&request(d.path(), &url, 2), &Rec::default()).is_err());
    let mut route = Route::file(new.archive.clone());
    route.etag = Some("\"new\"".into());
    srv.route("/ts.tar.gz", route);
    let r = download_tinystories(&request(d.path(), &url, 2), &Rec::default()).unwrap();
    assert!(r.fetch.as_ref().unwrap().restarted);
    // The new file whole, not the old file's head spliced onto the new file's tail.
    assert_shards(d.path(), &new, 2, &r);
}

#[test]
fn a_part_that_was_already_complete_is_finished_without_refetching() {
    let fx = fixture(6);
    let srv = Server::start();
    srv.route("/ts.tar.gz", Route::file(fx.archive.clone()));
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("TinyStories_tok32000.tar.gz.part"),
        &fx.archive,
    )
    .unwrap();
    let r = download_tinystories(
        &request(d.path(), &srv.url("/ts.tar.gz"), 1),
        &Rec::default(),
    )
    .unwrap();
    let f = r.fetch.clone().unwrap();
    assert_eq!((f.bytes, f.received), (fx.archive.len() as u64, 0));
    assert_shards(d.path(), &fx, 1, &r);
}

#[test]
fn an_html_page_is_refused_and_nothing_is_written() {
    let srv = Server::start();
    let mut route =
        Route::file(b"<!doctype html><html><body>Please sign in</body></html>".to_vec());
    route.content_type = "text/html; charset=utf-8";
    srv.route("/ts.tar.gz", route);
    let d = tempfile::tempdir().unwrap();
    let e = err_text(download_tinystories(
        &request(d.path(), &srv.url("/ts.tar.gz"), 1),
        &Rec::default(),
    ));
    assert!(
        e.contains("text/html")
            && e.contains("Please sign in")
            && e.contains("Nothing was written"),
        "{e}"
    );
    assert!(listing(d.path()).is_empty(), "{:?}", listing(d.path()));
}

#[test]
fn a_body_that_is_not_gzip_is_refused() {
    let srv = Server::start();
    let mut route = Route::file(b"PK\x03\x04 this is a zip file".to_vec());
    route.content_type = "application/octet-stream";
    srv.route("/ts.tar.gz", route);
    let d = tempfile::tempdir().unwrap();
    let e = err_text(download_tinystories(
        &request(d.path(), &srv.url("/ts.tar.gz"), 1),
        &Rec::default(),
    ));
    assert!(e.contains("did not send a gzip archive"), "{e}");
    assert!(listing(d.path()).is_empty());
}

#[test]
fn a_truncated_archive_is_deleted_and_leaves_no_shard() {
    let fx = fixture(7);
    let srv = Server::start();
    // Served completely (a consistent Content-Length) but cut inside the second shard.
    let cut = fx.archive.len() * 6 / 10;
    srv.route("/ts.tar.gz", Route::file(fx.archive[..cut].to_vec()));
    let d = tempfile::tempdir().unwrap();
    let e = err_text(download_tinystories(
        &request(d.path(), &srv.url("/ts.tar.gz"), 3),
        &Rec::default(),
    ));
    assert!(e.contains("truncated") && e.contains("deleted"), "{e}");
    // All or nothing: not even the complete first shard appears.
    assert!(listing(d.path()).is_empty(), "{:?}", listing(d.path()));
}

#[test]
fn a_missing_shard_is_named() {
    let fx = fixture(8);
    let srv = Server::start();
    srv.route("/ts.tar.gz", Route::file(fx.archive.clone()));
    let d = tempfile::tempdir().unwrap();
    let e = err_text(download_tinystories(
        &request(d.path(), &srv.url("/ts.tar.gz"), 5),
        &Rec::default(),
    ));
    assert!(
        e.contains("data03.bin is not in the archive") && e.contains("data02.bin"),
        "{e}"
    );
    assert_eq!(listing(d.path()), vec!["TinyStories_tok32000.tar.gz"]);
}

#[test]
fn not_found_and_offline_are_clear_errors() {
    let srv = Server::start();
    let d = tempfile::tempdir().unwrap();
    let e = err_text(download_tinystories(
        &request(d.path(), &srv.url("/nothing.tar.gz"), 1),
        &Rec::default(),
    ));
    assert!(e.contains("404") && e.contains("--url"), "{e}");
    assert!(listing(d.path()).is_empty());

    // A port with nobody listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = err_text(download_tinystories(
        &request(d.path(), &format!("http://127.0.0.1:{port}/ts.tar.gz"), 1),
        &Rec::default(),
    ));
    assert!(
        e.contains("cannot download") && e.contains("offline"),
        "{e}"
    );
    assert!(listing(d.path()).is_empty());
}

#[test]
fn cli_takes_the_url_from_the_environment_and_says_where_files_went() {
    let fx = fixture(9);
    let srv = Server::start();
    srv.route("/mirror.tar.gz", Route::file(fx.archive.clone()));
    let d = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args(["data", "download", "tinystories", "--shards", "2", "--dir"])
        .arg(d.path())
        .env("ANETRAIN_TINYSTORIES_URL", srv.url("/mirror.tar.gz"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&srv.url("/mirror.tar.gz")), "{stdout}");
    let p0 = shard_path(d.path(), 0).display().to_string();
    assert!(
        stdout.contains(&p0) && stdout.contains("40000 tokens"),
        "{stdout}"
    );
    assert!(stdout.contains("deleted the archive"), "{stdout}");
    assert_eq!(
        std::fs::read(shard_path(d.path(), 1)).unwrap(),
        fx.shards[1]
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args(["data", "download", "tinystories", "--shards", "1", "--dir"])
        .arg(d.path())
        .args(["--url", &srv.url("/gone.tar.gz")])
        .env("ANETRAIN_TINYSTORIES_URL", srv.url("/mirror.tar.gz"))
        .output()
        .unwrap();
    // Shard 0 exists, so nothing is fetched even from a bad URL.
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already present"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args(["data", "download", "tinystories", "--shards", "3", "--dir"])
        .arg(d.path())
        .args(["--url", &srv.url("/gone.tar.gz")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("error:") && stderr.contains("404"),
        "{stderr}"
    );
    assert!(!shard_path(d.path(), 2).exists());
}

#[test]
fn a_shard_that_is_not_whole_uint16_ids_is_refused() {
    let srv = Server::start();
    let good = shard(1, 100);
    let odd = vec![7u8; 1001];
    let archive = gzip(&tar_bytes(&[("data00.bin", &good), ("data01.bin", &odd)]));
    srv.route("/ts.tar.gz", Route::file(archive));
    let d = tempfile::tempdir().unwrap();
    let e = err_text(download_tinystories(
        &request(d.path(), &srv.url("/ts.tar.gz"), 2),
        &Rec::default(),
    ));
    assert!(
        e.contains("data01.bin has 1001 bytes") && e.contains("uint16"),
        "{e}"
    );
    assert_eq!(listing(d.path()), vec!["TinyStories_tok32000.tar.gz"]);
}

#[test]
fn raw_stories_archive_gives_json_shards() {
    let srv = Server::start();
    let j0 = br#"[{"story": "Once upon a time."}]"#.to_vec();
    let j1 = br#"[{"story": "The end."}]"#.to_vec();
    let archive = gzip(&tar_bytes(&[("data00.json", &j0), ("data01.json", &j1)]));
    srv.route("/all.tar.gz", Route::file(archive));
    let d = tempfile::tempdir().unwrap();
    let mut req = request(d.path(), &srv.url("/all.tar.gz"), 2);
    req.raw = true;
    let r = download_tinystories(&req, &Rec::default()).unwrap();
    assert_eq!(r.archive, d.path().join("TinyStories_all_data.tar.gz"));
    assert_eq!(
        listing(d.path()),
        vec!["tinystories_data00.json", "tinystories_data01.json"]
    );
    assert_eq!(
        std::fs::read(d.path().join("tinystories_data01.json")).unwrap(),
        j1
    );
}
