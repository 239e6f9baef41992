//! The JSONL event log of a training run (`--log run.jsonl`): one JSON object per line, each
//! with a `"type"` field. The dashboard and `anetrain plot` read it; so can any script.
//!
//! ```text
//! {"type":"run", "pid":…, "start_unix":…, "backend":"cpu", "model":{config}, "params":…,
//!  "batch":…, "seq":…, "accum":…, "total_steps":…, "tokens_per_step":…, "flops_per_step":…,
//!  "peak_gflops":…, "ckpt":"path"|null, "tokenizer":"path"|null, "args":{…},
//!  "world_size":ranks}
//! {"type":"step", "step":…, "loss":…, "lr":…, "grad_norm":…, "ms":…, "tokens_per_s":…,
//!  "timing":{"fwd_attn":ms,…}, "compiles":…, "time":unix_seconds}
//! {"type":"eval", "step":…, "val_loss":…, "time":…}
//! {"type":"checkpoint", "step":…, "path":…, "ms":…, "time":…}
//! {"type":"sample", "step":…, "text":…, "time":…}
//! {"type":"skip", "step":…, "reason":…, "time":…}        (non-finite step skipped)
//! {"type":"error", "step":…, "message":…, "time":…}      (recoverable I/O trouble)
//! {"type":"report", "steps":…, "wall_s":…, "ms_per_step":…, "gflops":…, "timing":{…}, …}
//! ```
//! Unknown fields are ignored by readers, so the format can grow.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One event of the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Run(RunHeader),
    Step(StepRecord),
    Eval {
        step: u64,
        val_loss: f64,
        #[serde(default)]
        time: f64,
    },
    Checkpoint {
        step: u64,
        path: String,
        #[serde(default)]
        ms: f64,
        #[serde(default)]
        time: f64,
    },
    Sample {
        step: u64,
        text: String,
        #[serde(default)]
        time: f64,
    },
    Skip {
        step: u64,
        reason: String,
        #[serde(default)]
        time: f64,
    },
    Error {
        step: u64,
        message: String,
        #[serde(default)]
        time: f64,
    },
    /// A kernel of the contract moved from the Neural Engine to the CPU because the device
    /// refused its program (the run goes on, slower).
    Fallback {
        step: u64,
        kernel: String,
        error: String,
        #[serde(default)]
        time: f64,
    },
    Report(serde_json::Value),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct RunHeader {
    pub pid: u32,
    #[serde(default)]
    pub start_unix: f64,
    #[serde(default)]
    pub backend: String,
    #[serde(default)]
    pub model: serde_json::Value,
    #[serde(default)]
    pub params: u64,
    #[serde(default)]
    pub batch: usize,
    #[serde(default)]
    pub seq: usize,
    #[serde(default)]
    pub accum: usize,
    #[serde(default)]
    pub total_steps: u64,
    #[serde(default)]
    pub start_step: u64,
    #[serde(default)]
    pub tokens_per_step: u64,
    #[serde(default)]
    pub flops_per_step: f64,
    #[serde(default)]
    pub peak_gflops: f64,
    #[serde(default)]
    pub ckpt: Option<String>,
    #[serde(default)]
    pub tokenizer: Option<String>,
    #[serde(default)]
    pub args: serde_json::Value,
    /// Data-parallel ranks (1: one process); `tokens_per_step` and `flops_per_step` are of
    /// all of them.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    #[serde(default)]
    pub lr: f64,
    #[serde(default)]
    pub grad_norm: f64,
    /// Wall time of the whole optimizer step (all accumulation micro-steps).
    #[serde(default)]
    pub ms: f64,
    #[serde(default)]
    pub tokens_per_s: f64,
    #[serde(default)]
    pub timing: BTreeMap<String, f64>,
    #[serde(default)]
    pub compiles: u64,
    #[serde(default)]
    pub time: f64,
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Appends events to a log file, one line each, flushed per event so followers see them.
pub struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    failures: u64,
}

impl LogWriter {
    /// Opens `path` for appending (a resumed run continues the same log).
    pub fn open(path: &Path) -> Result<LogWriter> {
        if let Some(d) = path.parent() {
            if !d.as_os_str().is_empty() {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("{}: cannot create log folder", d.display()))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open log for appending", path.display()))?;
        Ok(LogWriter {
            path: path.to_path_buf(),
            file: Some(file),
            failures: 0,
        })
    }

    /// A writer that drops everything (no `--log`).
    pub fn disabled() -> LogWriter {
        LogWriter {
            path: PathBuf::new(),
            file: None,
            failures: 0,
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|_| self.path.as_path())
    }

    /// Writes an event; a failure (disk full, …) never stops training: it is reported on
    /// stderr (the first time and then every 100th) and the next event is tried again.
    pub fn emit(&mut self, e: &Event) {
        if let Err(err) = self.write(e) {
            if self.failures.is_multiple_of(100) {
                eprintln!("warning: {err:#} (training continues; further log errors are counted)");
            }
            self.failures += 1;
        }
    }

    /// Writes one event as one line. The line is assembled first and written with a single
    /// `write_all`, so a crash leaves at most one truncated last line, which readers skip.
    pub fn write(&mut self, e: &Event) -> Result<()> {
        if let Some(f) = self.file.as_mut() {
            let mut line = serde_json::to_string(e)?;
            line.push('\n');
            f.write_all(line.as_bytes())
                .with_context(|| format!("{}: cannot append to log", self.path.display()))?;
        }
        Ok(())
    }
}

/// Parses one line; `None` for blank, truncated or corrupt lines (never panics).
pub fn parse_line(line: &str) -> Option<Event> {
    let t = line.trim();
    if t.is_empty() {
        return None;
    }
    serde_json::from_str(t).ok()
}

/// Reads every parseable event of a log file, skipping corrupt lines.
pub fn read_log(path: &Path) -> Result<Vec<Event>> {
    let f = File::open(path).with_context(|| format!("{}: cannot open log", path.display()))?;
    let mut out = Vec::new();
    let mut r = BufReader::new(f);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{}: cannot read log", path.display()))?;
        if n == 0 {
            break;
        }
        if let Some(e) = parse_line(&String::from_utf8_lossy(&buf)) {
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_corrupt_lines_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run.jsonl");
        let mut w = LogWriter::open(&p).unwrap();
        let step = Event::Step(StepRecord {
            step: 3,
            loss: 2.5,
            ..Default::default()
        });
        w.write(&step).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"type\":\"step\",\"st\n\xff\xfe garbage\n{\"type\":\"eval\",\"step\":1,\"val_loss\":2.0}\n")
            .unwrap();
        let ev = read_log(&p).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0], step);
        assert!(matches!(ev[1], Event::Eval { step: 1, .. }));
        assert!(
            parse_line("{\"type\":\"eval\",\"step\":1,\"val_loss\":2.0,\"extra\":5}").is_some()
        );
    }
}
