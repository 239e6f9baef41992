//! Drawing the dashboard: one function per panel, all reading an [`App`] and nothing else, so
//! the same frame comes out of a real terminal and of ratatui's `TestBackend`.
//!
//! ```text
//! ┌ anetrain · backend · model · params · batch ─────────────────────── following ┐
//! │ step / total  progress │ ETA │ lr │ loss │ best                                 │
//! ├ Loss (train, EMA, val) ───────────────┬ Speed (ms/step; tokens/s) ────────────┤
//! ├ Time per step (bars per component) ───┬ Process (CPU%, RSS, power, compiles) ─┤
//! ├ Story (from the newest checkpoint) ───┬ Events (scrollable) ──────────────────┤
//! keys · log file · corrupt-line count
//! ```
//! Rows with charts and text take what is left after the fixed-height rows, so the layout
//! holds from 80×24 up; below 40×12 a one-line notice replaces it.

use super::app::{App, LogStatus};
use super::state::{downsample, fmt_bytes, fmt_count, fmt_duration, robust_range, LineKind};
use super::story::StoryState;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, LegendPosition, Paragraph, Wrap};
use ratatui::Frame;

const MIN_WIDTH: u16 = 40;
const MIN_HEIGHT: u16 = 12;

/// Where each panel goes in a frame of `area` (the timing row grows with the terminal until
/// every component has its bar).
struct Panels {
    status: Rect,
    loss: Rect,
    speed: Rect,
    timing: Rect,
    system: Rect,
    story: Rect,
    events: Rect,
    keys: Rect,
}

fn panels(area: Rect, app: &App) -> Panels {
    let bars = app.state.timing_breakdown().len() as u16 + 3;
    let mid = bars.clamp(6, 6 + area.height.saturating_sub(24) / 3);
    let rows = Layout::vertical([
        Constraint::Length(3),
        Constraint::Fill(5),
        Constraint::Length(mid),
        Constraint::Fill(3),
        Constraint::Length(1),
    ])
    .split(area);
    let top =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).split(rows[1]);
    let mid =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).split(rows[2]);
    let bottom =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).split(rows[3]);
    Panels {
        status: rows[0],
        loss: top[0],
        speed: top[1],
        timing: mid[0],
        system: mid[1],
        story: bottom[0],
        events: bottom[1],
        keys: rows[4],
    }
}

fn too_small(area: Rect) -> bool {
    area.width < MIN_WIDTH || area.height < MIN_HEIGHT
}

/// Rows of event-log lines the events panel shows in a frame of `area` (what a page key
/// scrolls by); 1 when the terminal is too small for the dashboard.
pub fn events_rows(area: Rect, app: &App) -> usize {
    if too_small(area) {
        return 1;
    }
    (Block::bordered().inner(panels(area, app).events).height as usize).max(1)
}

/// Draws the whole dashboard into the frame.
pub fn render(f: &mut Frame, app: &App) {
    let area = f.area();
    if too_small(area) {
        let msg = format!(
            "terminal {}×{} is too small for the dashboard (needs {MIN_WIDTH}×{MIN_HEIGHT}, \
             80×24 or more is best) · q quits",
            area.width, area.height
        );
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    let p = panels(area, app);
    render_status(f, p.status, app);
    render_loss(f, p.loss, app);
    render_speed(f, p.speed, app);
    render_timing(f, p.timing, app);
    render_system(f, p.system, app);
    render_story(f, p.story, app);
    render_events(f, p.events, app);
    render_keys(f, p.keys, app);
}

fn title(text: &str) -> Span<'static> {
    Span::styled(
        format!(" {text} "),
        Style::default().add_modifier(Modifier::BOLD),
    )
}

fn block_with(spans: Vec<Span<'static>>) -> Block<'static> {
    Block::bordered()
        .border_style(Style::default().fg(Color::DarkGray))
        .title(Line::from(spans))
}

fn dim(s: impl Into<String>) -> Span<'static> {
    Span::styled(s.into(), Style::default().fg(Color::Gray))
}

fn render_status(f: &mut Frame, area: Rect, app: &App) {
    let s = &app.state;
    let (state_text, state_color) = if app.paused {
        ("❚❚ paused", Color::Yellow)
    } else if s.finished() {
        ("✓ finished", Color::Green)
    } else {
        match &app.log_status {
            LogStatus::Missing => ("waiting for log", Color::Yellow),
            LogStatus::Error(_) => ("log unreadable", Color::Red),
            LogStatus::Reading if s.steps.is_empty() => ("waiting for steps", Color::Yellow),
            LogStatus::Reading => ("● following", Color::Green),
        }
    };
    let mut head = vec![title("anetrain")];
    if let Some(h) = &s.header {
        // (priority, text): the lowest priority goes first when the title does not fit.
        let mut parts: Vec<(u8, String)> = Vec::new();
        if !h.backend.is_empty() {
            parts.push((3, h.backend.clone()));
        }
        if let Some(m) = model_summary(&h.model) {
            parts.push((0, m));
        }
        if h.params > 0 {
            parts.push((1, format!("{} params", fmt_count(h.params as f64))));
        }
        if h.batch > 0 && h.seq > 0 {
            let accum = if h.accum > 1 {
                format!("×{}", h.accum)
            } else {
                String::new()
            };
            parts.push((2, format!("batch {}×{}{accum}", h.batch, h.seq)));
        }
        let room = (area.width as usize).saturating_sub(2 + 10 + state_text.chars().count() + 3);
        let text = |parts: &[(u8, String)]| {
            let v: Vec<&str> = parts.iter().map(|p| p.1.as_str()).collect();
            format!("· {} ", v.join(" · "))
        };
        while !parts.is_empty() && text(&parts).chars().count() > room {
            let lowest = (0..parts.len()).min_by_key(|&i| parts[i].0).unwrap_or(0);
            parts.remove(lowest);
        }
        if !parts.is_empty() {
            head.push(dim(text(&parts)));
        }
    }
    let block = block_with(head).title(
        Line::from(Span::styled(
            format!(" {state_text} "),
            Style::default().fg(state_color),
        ))
        .right_aligned(),
    );
    let line = match s.last_step() {
        None => match &app.log_status {
            LogStatus::Missing => Line::from(format!(
                "no log at {} yet: waiting for the trainer to create it",
                app.log_path().display()
            )),
            LogStatus::Error(e) => Line::from(Span::styled(e.clone(), Style::default().red())),
            LogStatus::Reading => Line::from(format!(
                "no steps logged yet in {}",
                app.log_path().display()
            )),
        },
        Some(p) => {
            // (priority, joined to the previous item without a separator, span); the lowest
            // priority goes first when the line is wider than the panel.
            let mut items: Vec<(u8, bool, Span<'static>)> = Vec::new();
            let bold = Style::default().add_modifier(Modifier::BOLD);
            match s.total_steps() {
                Some(t) => {
                    items.push((
                        9,
                        false,
                        Span::styled(format!("step {}/{}", p.step, t), bold),
                    ));
                    let pct = (p.step as f64 / t as f64 * 100.0).min(100.0);
                    items.push((1, true, dim(format!(" {pct:.1}%"))));
                }
                None => items.push((9, false, Span::styled(format!("step {}", p.step), bold))),
            }
            let eta = match s.eta_seconds() {
                Some(e) if s.finished() && e == 0.0 => "done".to_string(),
                Some(e) => format!("ETA {}", fmt_duration(e)),
                None => "ETA ?".to_string(),
            };
            items.push((8, false, Span::raw(eta)));
            items.push((5, false, Span::raw(format!("lr {:.2e}", p.lr))));
            items.push((7, false, Span::raw(format!("loss {:.4}", p.loss))));
            if let Some((what, step, val)) = s.best_loss() {
                let green = Style::default().fg(Color::Green);
                items.push((
                    6,
                    false,
                    Span::styled(format!("best {what} {val:.4}"), green),
                ));
                items.push((2, true, Span::styled(format!(" @{step}"), green)));
            }
            let room = area.width.saturating_sub(2) as usize;
            let width = |items: &[(u8, bool, Span)]| -> usize {
                items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| {
                        it.2.content.chars().count() + if i > 0 && !it.1 { 3 } else { 0 }
                    })
                    .sum()
            };
            while items.len() > 1 && width(&items) > room {
                let lowest = (0..items.len()).min_by_key(|&i| items[i].0).unwrap_or(0);
                items.remove(lowest);
            }
            let mut v = Vec::new();
            for (i, (_, joined, span)) in items.into_iter().enumerate() {
                if i > 0 && !joined {
                    v.push(dim(" │ "));
                }
                v.push(span);
            }
            Line::from(v)
        }
    };
    f.render_widget(Paragraph::new(line).block(block), area);
}

/// `d288 L6 H6 V32000` from the header's model config, when it has those fields.
fn model_summary(m: &serde_json::Value) -> Option<String> {
    let g = |k: &str| m.get(k).and_then(|v| v.as_u64());
    let dim = g("dim")?;
    let mut s = format!("d{dim}");
    if let Some(l) = g("n_layers") {
        s += &format!(" L{l}");
    }
    if let Some(h) = g("n_heads") {
        s += &format!(" H{h}");
        if let Some(kv) = g("n_kv_heads").filter(|&kv| kv != h) {
            s += &format!("/{kv}");
        }
    }
    if let Some(v) = g("vocab_size") {
        s += &format!(" V{v}");
    }
    Some(s)
}

fn empty_panel(f: &mut Frame, area: Rect, block: Block<'static>, text: &str) {
    f.render_widget(
        Paragraph::new(dim(text.to_string()))
            .block(block)
            .wrap(Wrap { trim: true }),
        area,
    );
}

fn x_bounds(first: f64, last: f64) -> [f64; 2] {
    if last > first {
        [first, last]
    } else {
        [first - 0.5, first + 0.5]
    }
}

fn y_label(v: f64, span: f64) -> String {
    if span < 0.05 {
        format!("{v:.4}")
    } else if span < 2.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

fn render_loss(f: &mut Frame, area: Rect, app: &App) {
    let s = &app.state;
    let mut head = vec![title("Loss")];
    if let Some(p) = s.last_step() {
        head.push(Span::styled(
            format!("train {:.4} ", p.loss),
            Style::default().fg(Color::Gray),
        ));
        head.push(Span::styled(
            format!("ema {:.4} ", p.ema),
            Style::default().fg(Color::Yellow),
        ));
    }
    if let Some(&(st, v)) = s.evals.last() {
        head.push(Span::styled(
            format!("val {v:.4} @{st} "),
            Style::default().fg(Color::LightCyan),
        ));
    }
    let block = block_with(head);
    if s.steps.is_empty() {
        return empty_panel(f, area, block, "no steps yet");
    }
    let w = block.inner(area).width.max(1) as usize;
    let raw_all: Vec<(f64, f64)> = s.steps.iter().map(|p| (p.step as f64, p.loss)).collect();
    let ema_all: Vec<(f64, f64)> = s.steps.iter().map(|p| (p.step as f64, p.ema)).collect();
    let raw = downsample(&raw_all, w * 2, true);
    let ema = downsample(&ema_all, w * 2, false);
    let val: Vec<(f64, f64)> = s.evals.iter().map(|&(st, v)| (st as f64, v)).collect();
    let (first, last) = (raw_all[0].0, raw_all[raw_all.len() - 1].0);
    let xb = x_bounds(first, last);
    let (lo, hi) = robust_range(raw.iter().chain(ema.iter()).chain(val.iter()).map(|p| p.1))
        .unwrap_or((0.0, 1.0));
    let span = hi - lo;
    let smooth = s.smooth();
    let datasets = vec![
        Dataset::default()
            .name("train")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::DarkGray))
            .data(&raw),
        Dataset::default()
            .name(format!("ema {smooth}"))
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Yellow))
            .data(&ema),
        Dataset::default()
            .name("val")
            .marker(Marker::Dot)
            .graph_type(GraphType::Scatter)
            .style(Style::default().fg(Color::LightCyan))
            .data(&val),
    ];
    let chart = Chart::new(datasets)
        .block(block)
        .x_axis(
            Axis::default()
                .style(Style::default().fg(Color::DarkGray))
                .bounds(xb)
                .labels([
                    format!("{first:.0}"),
                    format!("{:.0}", (first + last) / 2.0),
                    format!("{last:.0}"),
                ]),
        )
        .y_axis(
            Axis::default()
                .style(Style::default().fg(Color::DarkGray))
                .bounds([lo, hi])
                .labels([
                    y_label(lo, span),
                    y_label((lo + hi) / 2.0, span),
                    y_label(hi, span),
                ]),
        )
        .legend_position(Some(LegendPosition::TopRight))
        .hidden_legend_constraints((Constraint::Ratio(1, 3), Constraint::Ratio(1, 2)));
    f.render_widget(chart, area);
}

fn render_speed(f: &mut Frame, area: Rect, app: &App) {
    let s = &app.state;
    let mut head = vec![title("Speed")];
    if let Some(p) = s.last_step() {
        head.push(Span::styled(
            format!("{:.1} ms ", p.ms),
            Style::default().fg(Color::LightMagenta),
        ));
        head.push(Span::styled(
            format!("{} tok/s ", fmt_count(p.tokens_per_s)),
            Style::default().fg(Color::LightGreen),
        ));
    }
    let block = block_with(head);
    if s.steps.is_empty() {
        return empty_panel(f, area, block, "no steps yet");
    }
    let inner = block.inner(area);
    f.render_widget(block, area);
    let w = inner.width.max(1) as usize;
    let ms: Vec<(f64, f64)> = s.steps.iter().map(|p| (p.step as f64, p.ms)).collect();
    let tps: Vec<(f64, f64)> = s
        .steps
        .iter()
        .map(|p| (p.step as f64, p.tokens_per_s))
        .collect();
    let parts = if inner.height >= 4 {
        Layout::vertical([Constraint::Fill(1), Constraint::Fill(1)]).split(inner)
    } else {
        Layout::vertical([Constraint::Fill(1), Constraint::Length(0)]).split(inner)
    };
    let ms_range = value_range(&ms, w);
    let tps_range = value_range(&tps, w);
    let ms_labels = [
        format!("{:.0}ms", ms_range.0),
        format!("{:.0}ms", ms_range.1),
    ];
    let tps_labels = [
        format!("{}/s", fmt_count(tps_range.0)),
        format!("{}/s", fmt_count(tps_range.1)),
    ];
    // Same label width in both charts, so their x axes line up.
    let lw = ms_labels
        .iter()
        .chain(tps_labels.iter())
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    let pad = |l: &String| format!("{l:>lw$}");
    series_chart(
        f,
        parts[0],
        &ms,
        w,
        ms_range,
        ms_labels.each_ref().map(pad),
        Color::LightMagenta,
    );
    if parts[1].height > 0 {
        series_chart(
            f,
            parts[1],
            &tps,
            w,
            tps_range,
            tps_labels.each_ref().map(pad),
            Color::LightGreen,
        );
    }
}

/// The y range of a series as drawn at `width` cells (non-negative).
fn value_range(all: &[(f64, f64)], width: usize) -> (f64, f64) {
    let pts = downsample(all, width * 2, true);
    let (lo, hi) = robust_range(pts.iter().map(|p| p.1)).unwrap_or((0.0, 1.0));
    (lo.max(0.0), hi)
}

/// A borderless line chart of one series with its range's ends as y labels.
fn series_chart(
    f: &mut Frame,
    area: Rect,
    all: &[(f64, f64)],
    width: usize,
    (lo, hi): (f64, f64),
    labels: [String; 2],
    color: Color,
) {
    let pts = downsample(all, width * 2, true);
    let xb = x_bounds(all[0].0, all[all.len() - 1].0);
    let ds = vec![Dataset::default()
        .marker(Marker::Braille)
        .graph_type(GraphType::Line)
        .style(Style::default().fg(color))
        .data(&pts)];
    let chart = Chart::new(ds)
        .x_axis(Axis::default().bounds(xb))
        .y_axis(
            Axis::default()
                .style(Style::default().fg(Color::DarkGray))
                .bounds([lo, hi.max(lo + 1e-9)])
                .labels(labels),
        )
        .legend_position(None);
    f.render_widget(chart, area);
}

/// Horizontal bar of `frac` (0..1) of `width` cells, in eighths.
fn bar(frac: f64, width: usize) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let cells = (frac.clamp(0.0, 1.0) * width as f64 * 8.0).round() as usize;
    let mut s = "█".repeat(cells / 8);
    if !cells.is_multiple_of(8) {
        s.push(EIGHTHS[cells % 8]);
    }
    let used = s.chars().count();
    s.extend(std::iter::repeat_n(' ', width.saturating_sub(used)));
    s
}

fn render_timing(f: &mut Frame, area: Rect, app: &App) {
    let s = &app.state;
    let mut parts = s.timing_breakdown();
    let n = s.recent_timing.len();
    let step_ms = s.recent_mean_ms().unwrap_or(0.0);
    let mut head = vec![title("Time per step")];
    if n > 0 {
        head.push(dim(format!("mean of last {n} · {step_ms:.1} ms ")));
    }
    let block = block_with(head);
    if parts.is_empty() {
        return empty_panel(f, area, block, "no timing breakdown in the log yet");
    }
    let timed: f64 = parts.iter().map(|p| p.1).sum();
    if step_ms > timed * 1.02 {
        parts.push(("(untimed)".into(), step_ms - timed));
    }
    let total = step_ms.max(timed);
    let inner = block.inner(area);
    let rows = inner.height as usize;
    let name_w = 13usize;
    let bar_w = (inner.width as usize).saturating_sub(name_w + 17).max(1);
    let mut lines: Vec<Line> = Vec::new();
    let show = if parts.len() > rows {
        rows.saturating_sub(1)
    } else {
        parts.len()
    };
    for (name, ms) in parts.iter().take(show) {
        let frac = if total > 0.0 { ms / total } else { 0.0 };
        lines.push(Line::from(vec![
            Span::raw(format!("{:<w$.w$} ", name, w = name_w - 1)),
            Span::styled(bar(frac, bar_w), Style::default().fg(Color::Cyan)),
            Span::raw(format!(" {ms:>8.2} ms {:>3.0}%", frac * 100.0)),
        ]));
    }
    if show < parts.len() {
        let rest = &parts[show..];
        let ms: f64 = rest.iter().map(|p| p.1).sum();
        lines.push(Line::from(dim(format!(
            "… {} more: {ms:.2} ms {:.0}%",
            rest.len(),
            if total > 0.0 { ms / total * 100.0 } else { 0.0 }
        ))));
    }
    f.render_widget(Paragraph::new(lines).block(block), area);
}

/// A sparkline of the newest `width` values, scaled from zero to their maximum.
pub fn sparkline(values: impl DoubleEndedIterator<Item = f64>, width: usize) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let mut v: Vec<f64> = values.rev().take(width).collect();
    v.reverse();
    let max = v.iter().cloned().fold(0.0, f64::max);
    v.iter()
        .map(|&x| {
            if max <= 0.0 || !x.is_finite() {
                LEVELS[0]
            } else {
                LEVELS[((x / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

fn render_system(f: &mut Frame, area: Rect, app: &App) {
    let s = &app.state;
    let pid = app.watched_pid();
    let mut head = vec![title("Process")];
    if let Some(p) = pid {
        head.push(dim(format!("pid {p} ")));
    }
    let block = block_with(head);
    let inner = block.inner(area);
    let label_w = 18usize;
    let spark_w = (inner.width as usize).saturating_sub(label_w + 1);
    let mut lines: Vec<Line> = Vec::new();
    let reading = app
        .proc_monitor()
        .and_then(|m| m.current.as_ref().map(|r| (m, r)));
    match (&reading, app.stats_enabled(), pid) {
        (_, false, _) => {
            lines.push(Line::from("CPU   n/a (not sampled)"));
            lines.push(Line::from("RSS   n/a"));
        }
        (Some((m, r)), true, _) => {
            let cpu = match r.cpu_percent {
                Some(c) => format!("{c:.0}%"),
                None => "…".into(),
            };
            lines.push(Line::from(vec![
                Span::raw(format!("{:<w$}", format!("CPU   {cpu}"), w = label_w)),
                Span::styled(
                    sparkline(m.history.iter().map(|h| h.0), spark_w),
                    Style::default().fg(Color::LightRed),
                ),
            ]));
            lines.push(Line::from(vec![
                Span::raw(format!(
                    "{:<w$}",
                    format!("RSS   {}", fmt_bytes(r.rss_bytes)),
                    w = label_w
                )),
                Span::styled(
                    sparkline(m.history.iter().map(|h| h.1 as f64), spark_w),
                    Style::default().fg(Color::LightBlue),
                ),
            ]));
        }
        (None, true, Some(p)) => {
            lines.push(Line::from(format!("CPU   n/a (process {p} not running)")));
            lines.push(Line::from("RSS   n/a"));
        }
        (None, true, None) => {
            lines.push(Line::from("CPU   n/a (no pid in the log yet)"));
            lines.push(Line::from("RSS   n/a"));
        }
    }
    let power = app.power_monitor();
    match (power.current.as_ref(), &power.unavailable) {
        (Some(r), _) => {
            let mut t = format!("Power {:.1} W", r.watts);
            if let Some(a) = r.ane_watts {
                t += &format!(" (ANE {a:.1})");
            }
            lines.push(Line::from(vec![
                Span::raw(format!("{t:<w$}", w = label_w)),
                Span::styled(
                    sparkline(power.history.iter().cloned(), spark_w),
                    Style::default().fg(Color::Yellow),
                ),
                dim(format!(" {}", r.source)),
            ]));
        }
        (None, Some(why)) => lines.push(Line::from(vec![
            Span::raw("Power unavailable "),
            dim(format!("· {why}")),
        ])),
        (None, None) => lines.push(Line::from("Power …")),
    }
    let backend = s.header.as_ref().map(|h| h.backend.as_str()).unwrap_or("");
    let compiles = s.last_step().map(|p| p.compiles).unwrap_or(0);
    if backend.contains("ane") || compiles > 0 {
        lines.push(Line::from(format!("ANE compiles {compiles}")));
        lines.push(Line::from(if s.on_cpu.is_empty() {
            vec![Span::raw("Kernels "), dim(format!("all on {backend}"))]
        } else {
            vec![
                Span::raw("Kernels "),
                Span::styled(
                    format!("{} on the CPU (fallback)", s.on_cpu.join(", ")),
                    Style::default().fg(Color::Yellow),
                ),
                dim(format!(" · rest on {backend}")),
            ]
        }));
    } else {
        lines.push(Line::from(vec![
            Span::raw("ANE compiles "),
            dim(if backend.is_empty() {
                "n/a".to_string()
            } else {
                format!("n/a ({backend} backend)")
            }),
        ]));
    }
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn render_story(f: &mut Frame, area: Rect, app: &App) {
    let short = |p: &std::path::Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    let (head, body): (Vec<Span<'static>>, Paragraph) = match &app.story().state {
        StoryState::Idle => match &app.state.last_sample {
            Some((step, text)) => (
                vec![
                    title("Story"),
                    dim(format!("sample logged at step {step} ")),
                ],
                Paragraph::new(text.clone()),
            ),
            None => (
                vec![title("Story")],
                Paragraph::new(dim(
                    "A story from the newest checkpoint appears here when the run writes one; \
                     g generates one now.",
                )),
            ),
        },
        StoryState::Generating { ckpt, .. } => (
            vec![
                title("Story"),
                dim(format!("generating from {}… ", short(ckpt))),
            ],
            Paragraph::new(dim("generating…")),
        ),
        StoryState::Ready { ckpt, text, took } => (
            vec![
                title("Story"),
                dim(format!("{} · {:.1} s ", short(ckpt), took.as_secs_f64())),
            ],
            Paragraph::new(text.clone()),
        ),
        StoryState::Failed { ckpt, error } => (
            vec![title("Story"), dim(format!("{} ", short(ckpt)))],
            Paragraph::new(Span::styled(
                format!("could not generate: {error}"),
                Style::default().fg(Color::Red),
            )),
        ),
    };
    f.render_widget(
        body.block(block_with(head)).wrap(Wrap { trim: false }),
        area,
    );
}

fn kind_style(k: LineKind) -> Style {
    match k {
        LineKind::Run => Style::default().fg(Color::LightBlue),
        LineKind::Step => Style::default().fg(Color::Gray),
        LineKind::Eval => Style::default().fg(Color::LightCyan),
        LineKind::Checkpoint => Style::default().fg(Color::Green),
        LineKind::Sample => Style::default().fg(Color::White),
        LineKind::Warning => Style::default().fg(Color::Yellow),
        LineKind::Error => Style::default().fg(Color::Red),
        LineKind::Report => Style::default().fg(Color::LightGreen).bold(),
        LineKind::Notice => Style::default().fg(Color::Magenta),
    }
}

fn render_events(f: &mut Frame, area: Rect, app: &App) {
    let lines = &app.state.log_lines;
    let mut head = vec![title("Events"), dim(format!("{} ", lines.len()))];
    let block_inner = Block::bordered().inner(area);
    let h = block_inner.height as usize;
    let scroll = app.scroll().min(lines.len().saturating_sub(h));
    if scroll > 0 {
        head.push(Span::styled(
            format!("↑{scroll} "),
            Style::default().fg(Color::Yellow),
        ));
    }
    let end = lines.len() - scroll;
    let start = end.saturating_sub(h);
    let shown: Vec<Line> = lines
        .range(start..end)
        .map(|l| Line::from(Span::styled(l.text.clone(), kind_style(l.kind))))
        .collect();
    f.render_widget(Paragraph::new(shown).block(block_with(head)), area);
}

fn render_keys(f: &mut Frame, area: Rect, app: &App) {
    let key = |k: &str| Span::styled(format!(" {k} "), Style::default().reversed());
    let mut v = vec![
        key("q"),
        Span::raw(" quit "),
        key("g"),
        Span::raw(" story "),
        key("p"),
        Span::raw(if app.paused { " resume " } else { " pause " }),
        key("↑↓ PgUp PgDn"),
        Span::raw(" scroll  "),
    ];
    let name = app
        .log_path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    v.push(dim(name));
    let c = app.corrupt_lines();
    if c > 0 {
        v.push(Span::styled(
            format!(
                " · {c} corrupt line{} skipped",
                if c == 1 { "" } else { "s" }
            ),
            Style::default().fg(Color::Yellow),
        ));
    }
    if let Some(t) = app.trainer_status() {
        v.push(dim(format!(" · {t}")));
    }
    f.render_widget(Paragraph::new(Line::from(v)), area);
}
