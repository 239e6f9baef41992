//! The dashboard's state machine: follows the log, samples the process and power, drives the
//! story worker, handles keys.
//!
//! [`App::tick`] does the periodic work and says whether anything changed; [`App::handle_key`]
//! applies a key. Neither touches the terminal, so tests drive an `App` directly and draw it
//! with [`super::ui::render`] on ratatui's `TestBackend`. The terminal loop around them is
//! [`super::driver`]; the cadences it keeps are the constants below.

use super::child::TrainerChild;
use super::follow::LogFollower;
use super::state::{LineKind, RunState};
use super::story::{StoryFn, StoryWorker};
use super::sysstats::{PowerMonitor, ProcMonitor};
use crate::train::log::Event;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// What the dashboard follows and how.
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    /// The JSONL log of the run.
    pub log: PathBuf,
    /// A folder whose newest `*.ckpt` is the story's checkpoint when the log names none.
    pub ckpt_dir: Option<PathBuf>,
    /// EMA weight of the smoothed loss line (0 = none; 0.9 ≈ the last ten steps).
    pub smooth: f64,
    /// Sample CPU, memory and power (off in tests that need a reproducible screen).
    pub system_stats: bool,
}

impl DashboardConfig {
    pub fn new(log: &Path) -> DashboardConfig {
        DashboardConfig {
            log: log.to_path_buf(),
            ckpt_dir: None,
            smooth: 0.9,
            system_stats: true,
        }
    }
}

/// Whether the log could be read at the last poll.
#[derive(Clone, Debug, PartialEq)]
pub enum LogStatus {
    Missing,
    Reading,
    Error(String),
}

/// Interval between log polls.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// Interval between process/power samples.
pub const STATS_EVERY: Duration = Duration::from_secs(1);
/// Shortest interval between two redraws.
pub const FRAME_MIN: Duration = Duration::from_millis(100);

pub struct App {
    cfg: DashboardConfig,
    follower: LogFollower,
    pub state: RunState,
    pub paused: bool,
    pub log_status: LogStatus,
    corrupt: u64,
    scroll: usize,
    /// Rows the events panel showed last (what a page key scrolls by); the terminal
    /// driver sets it from the layout.
    events_page: usize,
    story: StoryWorker,
    /// Checkpoint (path and modification time) that the last story request was for: a
    /// trainer rewrites the same path at every checkpoint, so the time tells them apart.
    auto_story_for: Option<(PathBuf, Option<SystemTime>)>,
    proc_mon: Option<ProcMonitor>,
    power: PowerMonitor,
    last_stats: Option<Instant>,
    dir_ckpt: Option<(PathBuf, Instant)>,
    last_dir_scan: Option<Instant>,
    trainer: Option<TrainerChild>,
    trainer_exit: Option<String>,
}

impl App {
    pub fn new(cfg: DashboardConfig, generate: StoryFn) -> App {
        let power = if cfg.system_stats {
            PowerMonitor::detect()
        } else {
            PowerMonitor::disabled("not sampled")
        };
        App {
            follower: LogFollower::new(&cfg.log),
            state: RunState::new(cfg.smooth),
            paused: false,
            log_status: LogStatus::Missing,
            corrupt: 0,
            scroll: 0,
            events_page: 10,
            story: StoryWorker::new(generate),
            auto_story_for: None,
            proc_mon: None,
            power,
            last_stats: None,
            dir_ckpt: None,
            last_dir_scan: None,
            trainer: None,
            trainer_exit: None,
            cfg,
        }
    }

    /// Watches a trainer that this dashboard started (its pid is sampled until its log header
    /// arrives; its exit is reported in the event log).
    pub fn attach_trainer(&mut self, child: TrainerChild) {
        self.state.note(
            LineKind::Notice,
            format!(
                "started trainer pid {} (output: {})",
                child.pid(),
                child.output().display()
            ),
        );
        self.trainer = Some(child);
    }

    pub fn take_trainer(&mut self) -> Option<TrainerChild> {
        self.trainer.take()
    }

    pub fn log_path(&self) -> &Path {
        &self.cfg.log
    }

    /// Corrupt lines skipped since the log was (re)read from its start.
    pub fn corrupt_lines(&self) -> u64 {
        self.corrupt
    }

    pub fn scroll(&self) -> usize {
        self.scroll
    }

    pub fn story(&self) -> &StoryWorker {
        &self.story
    }

    pub fn stats_enabled(&self) -> bool {
        self.cfg.system_stats
    }

    pub fn proc_monitor(&self) -> Option<&ProcMonitor> {
        self.proc_mon.as_ref()
    }

    pub fn power_monitor(&self) -> &PowerMonitor {
        &self.power
    }

    /// The pid whose CPU and memory are shown: the newest run header's, else the trainer this
    /// dashboard started.
    pub fn watched_pid(&self) -> Option<u32> {
        self.state
            .header
            .as_ref()
            .map(|h| h.pid)
            .filter(|&p| p > 0)
            .or_else(|| self.trainer.as_ref().map(|t| t.pid()))
    }

    /// A short word on the trainer this dashboard started, if any.
    pub fn trainer_status(&self) -> Option<String> {
        match (&self.trainer, &self.trainer_exit) {
            (_, Some(e)) => Some(format!("trainer {e}")),
            (Some(t), None) => Some(format!("trainer pid {} running", t.pid())),
            (None, None) => None,
        }
    }

    /// Tells the app how many event-log rows one page is (see [`super::ui::events_rows`]).
    pub fn set_events_page(&mut self, rows: usize) {
        self.events_page = rows.max(1);
    }

    /// Periodic work; true when the screen should be redrawn.
    pub fn tick(&mut self) -> bool {
        let mut changed = self.story.poll();
        if !self.paused {
            changed |= self.poll_log();
        }
        changed |= self.poll_trainer();
        self.maybe_auto_story();
        if self.cfg.system_stats && self.last_stats.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
            self.last_stats = Some(Instant::now());
            self.sample_stats();
            changed = true;
        }
        changed
    }

    fn poll_log(&mut self) -> bool {
        let p = self.follower.poll();
        let mut changed = false;
        let status = if let Some(e) = p.error {
            LogStatus::Error(e)
        } else if p.missing {
            LogStatus::Missing
        } else {
            LogStatus::Reading
        };
        if status != self.log_status {
            self.log_status = status;
            changed = true;
        }
        if p.reset {
            self.state.reset();
            self.corrupt = 0;
            self.auto_story_for = None;
            self.state.note(
                LineKind::Notice,
                "log was truncated or replaced: reading it again from the start",
            );
            changed = true;
        }
        if p.corrupt > 0 {
            self.corrupt += p.corrupt;
            self.state.note(
                LineKind::Warning,
                format!(
                    "skipped {} corrupt line{}",
                    p.corrupt,
                    if p.corrupt == 1 { "" } else { "s" }
                ),
            );
            changed = true;
        }
        let before = self.state.log_lines.len();
        for e in p.events {
            if let Event::Run(h) = &e {
                if self.proc_mon.as_ref().map(|m| m.pid()) != Some(h.pid) {
                    self.proc_mon = None;
                }
            }
            self.state.apply(e);
            changed = true;
        }
        if self.scroll > 0 {
            // Keep the lines the user scrolled to in view while new ones arrive below.
            self.scroll += self.state.log_lines.len().saturating_sub(before);
        }
        changed
    }

    fn poll_trainer(&mut self) -> bool {
        let Some(t) = self.trainer.as_mut() else {
            return false;
        };
        if self.trainer_exit.is_some() {
            return false;
        }
        let Some(status) = t.poll_exit() else {
            return false;
        };
        let ok = status.success();
        let text = if ok {
            "exited".to_string()
        } else {
            format!("failed ({status})")
        };
        self.state.note(
            if ok {
                LineKind::Notice
            } else {
                LineKind::Error
            },
            format!("trainer {text}"),
        );
        if !ok {
            for l in t.output_tail(6) {
                self.state.note(LineKind::Error, format!("  {l}"));
            }
        }
        self.trainer_exit = Some(text);
        true
    }

    fn sample_stats(&mut self) {
        if let Some(pid) = self.watched_pid() {
            let started = self
                .state
                .header
                .as_ref()
                .filter(|h| h.pid == pid)
                .map(|h| h.start_unix)
                .unwrap_or(0.0);
            let m = self
                .proc_mon
                .get_or_insert_with(|| ProcMonitor::new(pid, started));
            m.sample();
        }
        self.power.sample();
    }

    /// Resolves a checkpoint path from the log: absolute as is (what the trainer logs now);
    /// a relative one (older logs) against the log's folder and its ancestors, the first that
    /// exists, else as given.
    pub fn resolve_checkpoint(&self, logged: &str) -> PathBuf {
        let p = PathBuf::from(logged);
        if p.is_absolute() {
            return p;
        }
        // A relative path is relative to the trainer's working folder, which is the log's
        // folder or one of its ancestors (`runs/default/model.ckpt` beside
        // `runs/default/run.jsonl`); the dashboard's own working folder is only the last
        // resort (it may hold another run under the same relative name).
        let log_dir = self
            .cfg
            .log
            .parent()
            .map(|d| d.to_path_buf())
            .unwrap_or_default();
        let log_dir = std::path::absolute(&log_dir).unwrap_or(log_dir);
        log_dir
            .ancestors()
            .map(|d| d.join(&p))
            .find(|c| c.exists())
            .unwrap_or(p)
    }

    /// The checkpoint a story should come from: the newest one the log announced, else the
    /// newest `*.ckpt` in the checkpoint folder, else the header's `ckpt` (where the run
    /// writes its checkpoints).
    pub fn newest_checkpoint(&mut self) -> Option<PathBuf> {
        if let Some(c) = self.state.checkpoints.last() {
            return Some(self.resolve_checkpoint(&c.path.clone()));
        }
        if let Some(dir) = self.cfg.ckpt_dir.clone() {
            if self
                .last_dir_scan
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
            {
                self.last_dir_scan = Some(Instant::now());
                self.dir_ckpt = newest_ckpt_in(&dir);
            }
            if let Some((p, _)) = &self.dir_ckpt {
                return Some(p.clone());
            }
        }
        let start = self.state.header.as_ref()?.ckpt.clone()?;
        Some(self.resolve_checkpoint(&start))
    }

    fn maybe_auto_story(&mut self) {
        if self.paused {
            return;
        }
        let Some(ck) = self.newest_checkpoint() else {
            return;
        };
        let key = (ck.clone(), modified(&ck));
        if self.auto_story_for.as_ref() == Some(&key) {
            return;
        }
        let exists = key.1.is_some();
        self.auto_story_for = Some(key);
        if exists {
            self.story.request(&ck);
        }
    }

    /// Asks for a story from the newest checkpoint now (key `g`).
    pub fn generate_now(&mut self) {
        match self.newest_checkpoint() {
            Some(ck) if ck.exists() => {
                self.auto_story_for = Some((ck.clone(), modified(&ck)));
                self.story.request(&ck);
            }
            Some(ck) => self.state.note(
                LineKind::Warning,
                format!("checkpoint {} not found: no story", ck.display()),
            ),
            None => self
                .state
                .note(LineKind::Warning, "no checkpoint yet: no story to generate"),
        }
    }

    /// Applies a key; returns true when the dashboard should quit.
    pub fn handle_key(&mut self, key: KeyEvent) -> bool {
        if key.kind == KeyEventKind::Release {
            return false;
        }
        let page = self.events_page.max(1);
        let max_scroll = self.state.log_lines.len().saturating_sub(page);
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return true,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return true,
            KeyCode::Char('g') => self.generate_now(),
            KeyCode::Char('p') => {
                self.paused = !self.paused;
            }
            KeyCode::Up => self.scroll = (self.scroll + 1).min(max_scroll),
            KeyCode::Down => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageUp => self.scroll = (self.scroll + page).min(max_scroll),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::Home => self.scroll = max_scroll,
            KeyCode::End => self.scroll = 0,
            _ => {}
        }
        false
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The most recently modified `*.ckpt` in `dir`.
pub fn newest_ckpt_in(dir: &Path) -> Option<(PathBuf, Instant)> {
    let mut best: Option<(PathBuf, std::time::SystemTime)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "ckpt") {
            if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                if best.as_ref().is_none_or(|(_, bt)| t > *bt) {
                    best = Some((p, t));
                }
            }
        }
    }
    best.map(|(p, _)| (p, Instant::now()))
}
