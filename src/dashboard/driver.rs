//! The terminal loop of the dashboard: waits for input with a 100 ms timeout, ticks the
//! [`App`] every [`POLL_EVERY`] (the log; the process and power once a second), and redraws
//! with [`ui::render`] at most every [`FRAME_MIN`] — when something changed, on a resize, and
//! at least once a second (for the clocks). The only part of the dashboard that touches the
//! terminal.

use super::app::{App, FRAME_MIN, POLL_EVERY};
use super::ui;
use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event as TermEvent};
use std::time::{Duration, Instant};

/// Runs the dashboard in the terminal until the user quits.
pub fn run_terminal(app: &mut App) -> Result<()> {
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let r = event_loop(&mut terminal, app);
    ratatui::restore();
    r
}

fn event_loop(terminal: &mut ratatui::DefaultTerminal, app: &mut App) -> Result<()> {
    let mut dirty = true;
    let mut last_draw: Option<Instant> = None;
    let mut last_tick: Option<Instant> = None;
    loop {
        if last_tick.is_none_or(|t| t.elapsed() >= POLL_EVERY) {
            last_tick = Some(Instant::now());
            dirty |= app.tick();
        }
        let since_draw = last_draw.map(|t| t.elapsed());
        if since_draw.is_none_or(|d| (dirty && d >= FRAME_MIN) || d >= Duration::from_secs(1)) {
            let frame = terminal
                .draw(|f| ui::render(f, app))
                .context("cannot draw to the terminal")?;
            // Drawing only reads the app; the page a key scrolls by comes from the layout.
            let rows = ui::events_rows(frame.area, app);
            app.set_events_page(rows);
            last_draw = Some(Instant::now());
            dirty = false;
        }
        let wait = POLL_EVERY.saturating_sub(last_tick.map(|t| t.elapsed()).unwrap_or_default());
        if event::poll(wait).context("cannot read terminal input")? {
            match event::read().context("cannot read terminal input")? {
                TermEvent::Key(k) => {
                    if app.handle_key(k) {
                        return Ok(());
                    }
                    dirty = true;
                }
                TermEvent::Resize(..) => {
                    terminal.autoresize().ok();
                    dirty = true;
                }
                _ => {}
            }
        }
    }
}
