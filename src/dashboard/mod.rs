//! The live terminal dashboard (`anetrain dashboard`) and PNG plots (`anetrain plot`) of
//! training runs, both read from the run's JSONL event log ([`crate::train::log`]).
//!
//! The dashboard never talks to the trainer: the log is the whole interface, so it can follow
//! a run started elsewhere, one that has finished, or one it started itself. The parts:
//! - [`follow`]: reads what was appended to the log since the last poll, tolerating partial,
//!   corrupt, truncated and replaced logs;
//! - [`state`]: folds events into the series the panels draw (steps, EMA, evals, timing,
//!   event-log lines), with no I/O or clock, so screens are reproducible;
//! - [`sysstats`]: CPU% and RSS of the trainer's pid, and machine power where readable;
//! - [`story`]: a background thread that turns the newest checkpoint into a story through an
//!   injected function;
//! - [`child`]: the trainer process that `dashboard --train` starts;
//! - [`app`]: ties these together and handles keys;
//! - [`ui`]: draws an [`app::App`] into a ratatui frame, reading it and writing nothing back;
//! - [`driver`]: the terminal loop around the two;
//! - [`plot`]: PNG plots of one or more logs, with text drawn by [`text_backend`].
//!
//! docs/DASHBOARD.md describes each panel and where its numbers come from.

pub mod app;
pub mod child;
pub mod driver;
pub mod follow;
pub mod plot;
pub mod state;
pub mod story;
pub mod sysstats;
pub mod text_backend;
pub mod ui;

pub use app::{App, DashboardConfig};
pub use driver::run_terminal;
pub use plot::{plot_logs, PlotOptions};
pub use story::StoryFn;
