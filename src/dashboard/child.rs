//! The training process that `anetrain dashboard --train` starts and watches.
//!
//! Its standard output and error go to a file (the terminal belongs to the dashboard); standard
//! input is closed. When the dashboard quits it either leaves the trainer running (detach) or
//! asks it to stop with SIGTERM — the trainer's chance to write a last checkpoint — and waits a
//! bounded time for it to exit.

use anyhow::{Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct TrainerChild {
    child: Child,
    output: PathBuf,
    exited: Option<ExitStatus>,
}

impl TrainerChild {
    /// Starts `program args…` with stdout and stderr appended to `output`.
    pub fn spawn(program: &Path, args: &[String], output: &Path) -> Result<TrainerChild> {
        if let Some(d) = output.parent() {
            if !d.as_os_str().is_empty() {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("{}: cannot create folder", d.display()))?;
            }
        }
        let out = File::options()
            .create(true)
            .append(true)
            .open(output)
            .with_context(|| format!("{}: cannot open trainer output file", output.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("{}: cannot share output file", output.display()))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(TrainerChild {
            child,
            output: output.to_path_buf(),
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> &Path {
        &self.output
    }

    /// The exit status once the process has ended (reaps it).
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
            }
        }
        self.exited
    }

    /// Sends SIGTERM (a kill where there are no signals) and waits up to `grace` for the exit;
    /// kills it if it is still running then. Returns the exit status when known.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.poll_exit() {
            return Some(s);
        }
        #[cfg(unix)]
        {
            // SAFETY: kill(2) on our own child's pid; it has not been reaped (poll_exit above
            // found it running), so the pid still names it.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        #[cfg(not(unix))]
        {
            let _ = self.child.kill();
        }
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Some(s) = self.poll_exit() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
        self.exited
    }

    /// The last `n` lines of the trainer's output (for showing why it stopped).
    pub fn output_tail(&self, n: usize) -> Vec<String> {
        tail_lines(&self.output, n)
    }
}

/// The last `n` lines of a text file, reading at most its last 64 KiB.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    // Progress bars redraw with '\r': keep what the line ended as.
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.rsplit('\r').map(str::trim_end).find(|p| !p.is_empty()))
        .map(str::to_string)
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}
