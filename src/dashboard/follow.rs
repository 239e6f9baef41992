//! Following a JSONL log that another process is appending to (`tail -F` for events).
//!
//! The follower remembers the byte offset it has consumed and, on each [`LogFollower::poll`],
//! reads what was appended since, in bounded chunks. Only complete lines (ending in `\n`) are
//! parsed; a partial last line waits for the rest of it. The file is opened anew on every poll,
//! so a log that is deleted and recreated, or truncated (shorter than the offset), or replaced
//! by another file (new inode on Unix) is read again from the start and the poll says so with
//! `reset`. Lines that do not parse are counted and skipped; a line that starts with the
//! remains of a crashed writer's last line followed by a complete event still yields the event.

use crate::train::log::{parse_line, Event};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes read per poll at most, so a huge finished log is taken in over several polls rather
/// than in one allocation.
pub const READ_CHUNK: u64 = 32 << 20;
/// A line longer than this is not an event of ours: it is dropped (and counted as corrupt).
pub const MAX_LINE: usize = 4 << 20;

/// What one poll found.
#[derive(Debug, Default)]
pub struct Poll {
    pub events: Vec<Event>,
    /// The file shrank or was replaced: everything known before must be forgotten; `events`
    /// start from the beginning of the new file.
    pub reset: bool,
    /// Complete lines that did not parse as events.
    pub corrupt: u64,
    /// The log does not exist (yet).
    pub missing: bool,
    /// More bytes are waiting than one poll reads.
    pub more: bool,
    /// Why the file could not be read, when it exists but reading failed.
    pub error: Option<String>,
}

pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    pending: Vec<u8>,
    /// Set while discarding the rest of an over-long line.
    skipping: bool,
    identity: Option<(u64, u64)>,
    corrupt_total: u64,
}

impl LogFollower {
    pub fn new(path: &Path) -> LogFollower {
        LogFollower {
            path: path.to_path_buf(),
            offset: 0,
            pending: Vec::new(),
            skipping: false,
            identity: None,
            corrupt_total: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes consumed so far (complete lines plus a waiting partial line).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Corrupt lines seen since the last reset.
    pub fn corrupt_lines(&self) -> u64 {
        self.corrupt_total
    }

    /// Reads what was appended since the last poll. Never fails: trouble is reported in the
    /// returned [`Poll`].
    pub fn poll(&mut self) -> Poll {
        let mut out = Poll::default();
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.missing = true;
                if self.offset > 0 || !self.pending.is_empty() {
                    self.restart(&mut out);
                }
                return out;
            }
            Err(e) => {
                out.error = Some(format!("{}: cannot open log: {e}", self.path.display()));
                return out;
            }
        };
        let meta = match f.metadata() {
            Ok(m) => m,
            Err(e) => {
                out.error = Some(format!("{}: cannot stat log: {e}", self.path.display()));
                return out;
            }
        };
        let id = file_identity(&meta);
        let len = meta.len();
        if len < self.offset || (self.identity.is_some() && id.is_some() && id != self.identity) {
            self.restart(&mut out);
        }
        self.identity = id;
        if len == self.offset {
            return out;
        }
        let want = (len - self.offset).min(READ_CHUNK);
        out.more = len - self.offset > READ_CHUNK;
        let mut buf = Vec::with_capacity(want as usize);
        let read = f
            .seek(SeekFrom::Start(self.offset))
            .and_then(|_| (&mut f).take(want).read_to_end(&mut buf));
        if let Err(e) = read {
            out.error = Some(format!("{}: cannot read log: {e}", self.path.display()));
            return out;
        }
        self.offset += buf.len() as u64;
        self.consume(&buf, &mut out);
        self.corrupt_total += out.corrupt;
        out
    }

    fn restart(&mut self, out: &mut Poll) {
        self.offset = 0;
        self.pending.clear();
        self.skipping = false;
        self.corrupt_total = 0;
        out.reset = true;
    }

    fn consume(&mut self, mut buf: &[u8], out: &mut Poll) {
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let (head, rest) = (&buf[..nl], &buf[nl + 1..]);
            buf = rest;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.pending.is_empty() {
                parse_into(head, out);
            } else {
                let mut line = std::mem::take(&mut self.pending);
                line.extend_from_slice(head);
                parse_into(&line, out);
            }
        }
        if self.skipping {
            return;
        }
        self.pending.extend_from_slice(buf);
        if self.pending.len() > MAX_LINE {
            self.pending = Vec::new();
            self.skipping = true;
            out.corrupt += 1;
        }
    }
}

fn parse_into(line: &[u8], out: &mut Poll) {
    if line.len() > MAX_LINE {
        out.corrupt += 1;
        return;
    }
    let text = String::from_utf8_lossy(line);
    if text.trim().is_empty() {
        return;
    }
    if let Some(e) = parse_line(&text) {
        out.events.push(e);
        return;
    }
    // The remains of a line cut short by a crash, then a whole event appended after a restart.
    if let Some(i) = text.rfind("{\"type\"") {
        if i > 0 {
            if let Some(e) = parse_line(&text[i..]) {
                out.events.push(e);
                out.corrupt += 1;
                return;
            }
        }
    }
    out.corrupt += 1;
}

#[cfg(unix)]
fn file_identity(m: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(_m: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}
