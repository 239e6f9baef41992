//! PNG plots of training logs (`anetrain plot`): the loss curves of one or more runs overlaid
//! (each raw as a thin pale line, smoothed as a solid line, validation losses as dots), and
//! the step time in a second panel below.
//!
//! Drawing is plotters' bitmap backend into an RGB buffer, encoded with the `png` crate.
//! Text needs a font, and asking the system for one (plotters' default `ttf` feature, through
//! font-kit) fails on headless CI machines; so DejaVu Sans is compiled into the binary
//! (`fonts/LICENSE-DejaVu.txt` is its license, which allows this). Text is drawn by
//! [`TextBackend`], a thin wrapper around the bitmap backend that lays glyphs out with
//! `ab_glyph` itself: plotters' own `ab_glyph` text path drops each glyph's side bearing,
//! which puts gaps after narrow glyphs ("1 e-3") and dots in the wrong place. The font is also
//! registered with that path, as a fallback for any text that does not go through the
//! backend.
//!
//! plotters does not clip lines to the plotting area, and the y range deliberately lets the
//! highest early losses run off the top (see [`robust_range`]), so lines are clipped here
//! before they are drawn.

use super::state::{downsample, ema_series, robust_range, RunState};
use super::text_backend::TextBackend;
use crate::train::log::read_log;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::{Path, PathBuf};
use std::sync::Once;

use super::text_backend::DEJAVU_SANS;
const FONT: &str = "sans-serif";

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded file is a valid TrueType font; failure here would be a build defect
        // that the plot tests catch (text would be missing), not a user error.
        let _ = register_font(FONT, FontStyle::Normal, DEJAVU_SANS);
    });
}

/// One run's series for plotting.
#[derive(Clone, Debug)]
pub struct RunSeries {
    pub name: String,
    /// (step, loss, smoothed loss)
    pub loss: Vec<(f64, f64, f64)>,
    /// (step, ms per step)
    pub ms: Vec<(f64, f64)>,
    /// (step, validation loss)
    pub val: Vec<(f64, f64)>,
}

impl RunSeries {
    /// Reads a log; `smooth` is the EMA weight of the smoothed line.
    pub fn load(path: &Path, smooth: f64) -> Result<RunSeries> {
        let events = read_log(path)?;
        let s = RunState::from_events(events, smooth);
        Ok(RunSeries::from_state(&run_name(path), &s))
    }

    /// Points with a value or step beyond ±1e15 (nonsense for a loss or a step time) are left
    /// out: they would only squash the rest into a line.
    pub fn from_state(name: &str, s: &RunState) -> RunSeries {
        let ok = |v: f64| v.is_finite() && v.abs() <= MAX_VALUE;
        RunSeries {
            name: name.to_string(),
            loss: s
                .steps
                .iter()
                .map(|p| (p.step as f64, p.loss, p.ema))
                .filter(|p| ok(p.0) && ok(p.1) && ok(p.2))
                .collect(),
            ms: s
                .steps
                .iter()
                .map(|p| (p.step as f64, p.ms))
                .filter(|p| ok(p.0) && ok(p.1) && p.1 > 0.0)
                .collect(),
            val: s
                .evals
                .iter()
                .map(|&(st, v)| (st as f64, v))
                .filter(|p| ok(p.0) && ok(p.1))
                .collect(),
        }
    }
}

/// Largest magnitude of a plotted value or step.
const MAX_VALUE: f64 = 1e15;

/// A range plotters can put ticks on. Its tick search never returns on a range that is not
/// finite (values near `f64::MAX` make the width overflow), so such a range is refused; a
/// range narrower than a millionth of its magnitude is widened so its ticks stay distinct.
fn plottable((lo, hi): (f64, f64)) -> Result<(f64, f64)> {
    if !(lo.is_finite() && hi.is_finite()) || lo.abs().max(hi.abs()) > 2.0 * MAX_VALUE {
        bail!("values beyond ±{MAX_VALUE:e} cannot be plotted");
    }
    let mid = (lo + hi) / 2.0;
    let half = ((hi - lo).abs() / 2.0).max(mid.abs() * 1e-6).max(1e-9);
    Ok((mid - half, mid + half))
}

/// A legend name for a log: its file stem, or its folder's name for `DIR/run.jsonl`.
pub fn run_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    if stem == "run" {
        if let Some(dir) = path
            .parent()
            .and_then(|d| d.file_name())
            .map(|s| s.to_string_lossy().into_owned())
        {
            return dir;
        }
    }
    stem
}

/// Size and smoothing of a plot.
#[derive(Clone, Debug)]
pub struct PlotOptions {
    pub width: u32,
    pub height: u32,
    /// EMA weight of the smoothed lines (also applied to ms/step).
    pub smooth: f64,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            width: 1200,
            height: 800,
            smooth: 0.9,
        }
    }
}

/// Matplotlib's "tab10" colours: distinct, and readable on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Reads the logs and writes the plot to `out` (atomically).
pub fn plot_logs(logs: &[PathBuf], out: &Path, opts: &PlotOptions) -> Result<()> {
    if logs.is_empty() {
        bail!("no log to plot: give at least one --log");
    }
    let mut runs = Vec::new();
    for l in logs {
        let r = RunSeries::load(l, opts.smooth)?;
        if r.loss.is_empty() {
            bail!(
                "{}: no step events with a plottable loss in this log",
                l.display()
            );
        }
        runs.push(r);
    }
    // Two logs with the same name (run.jsonl in folders of the same name) get numbered.
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    for (i, r) in runs.iter_mut().enumerate() {
        if names.iter().filter(|n| **n == r.name).count() > 1 {
            r.name = format!("{} ({})", r.name, i + 1);
        }
    }
    let png = render_png(&runs, opts)?;
    crate::util::fs::write_atomic(out, |w| w.write_all(&png))
        .with_context(|| format!("{}: cannot write plot", out.display()))
}

/// Draws the runs and returns the PNG file's bytes.
pub fn render_png(runs: &[RunSeries], opts: &PlotOptions) -> Result<Vec<u8>> {
    let (w, h) = (opts.width.clamp(320, 8000), opts.height.clamp(240, 8000));
    if runs.iter().all(|r| r.loss.is_empty()) {
        bail!("nothing to plot: the logs have no steps");
    }
    register_fonts();
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = TextBackend::new(&mut rgb, (w, h))?.into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (top, bottom) = root.split_vertically((h as f64 * 0.64) as u32);
        draw_loss(&top, runs, opts.smooth)?;
        draw_ms(&bottom, runs, opts.smooth)?;
        root.present().map_err(plot_err)?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().context("PNG encoder")?;
        wr.write_image_data(&rgb).context("PNG encoder")?;
    }
    Ok(png_bytes)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot failed: {e:?}")
}

/// Splits a polyline into the pieces inside `lo ≤ y ≤ hi`, cutting segments at the bounds.
pub fn clip_polyline(points: &[(f64, f64)], lo: f64, hi: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur: Vec<(f64, f64)> = Vec::new();
    let inside = |y: f64| y >= lo && y <= hi;
    for (i, &p) in points.iter().enumerate() {
        if i == 0 {
            if inside(p.1) {
                cur.push(p);
            }
            continue;
        }
        let a = points[i - 1];
        // Parametric clip of segment a→p against the horizontal band.
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        let dy = p.1 - a.1;
        let mut visible = true;
        for (q, r) in [(-dy, a.1 - lo), (dy, hi - a.1)] {
            if q == 0.0 {
                if r < 0.0 {
                    visible = false;
                }
            } else {
                let t = r / q;
                if q < 0.0 {
                    t0 = t0.max(t);
                } else {
                    t1 = t1.min(t);
                }
            }
        }
        if !visible || t0 > t1 {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let at = |t: f64| (a.0 + (p.0 - a.0) * t, a.1 + dy * t);
        if t0 > 0.0 || cur.is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.push(at(t0));
        }
        cur.push(at(t1));
        if t1 < 1.0 {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn x_range(runs: &[RunSeries]) -> Result<(f64, f64)> {
    let first = runs
        .iter()
        .filter_map(|r| r.loss.first().map(|p| p.0))
        .fold(f64::INFINITY, f64::min);
    let last = runs
        .iter()
        .filter_map(|r| r.loss.last().map(|p| p.0))
        .fold(f64::NEG_INFINITY, f64::max);
    if last > first {
        plottable((first, last))
    } else {
        plottable((first - 1.0, first + 1.0))
    }
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 10000.0 {
        format!("{:.0}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn draw_loss(
    area: &DrawingArea<TextBackend, Shift>,
    runs: &[RunSeries],
    smooth: f64,
) -> Result<()> {
    let (x0, x1) = x_range(runs)?;
    let width_px = area.dim_in_pixel().0 as usize;
    let raw_pts: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            let pts: Vec<(f64, f64)> = r.loss.iter().map(|p| (p.0, p.1)).collect();
            downsample(&pts, width_px * 2, true)
        })
        .collect();
    let smooth_pts: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            let pts: Vec<(f64, f64)> = r.loss.iter().map(|p| (p.0, p.2)).collect();
            downsample(&pts, width_px * 2, false)
        })
        .collect();
    let (lo, hi) = robust_range(
        raw_pts
            .iter()
            .flatten()
            .chain(smooth_pts.iter().flatten())
            .map(|p| p.1)
            .chain(runs.iter().flat_map(|r| r.val.iter().map(|v| v.1))),
    )
    .unwrap_or((0.0, 1.0));
    let (lo, hi) = plottable((lo, hi))?;
    let mut chart = ChartBuilder::on(area)
        .caption("Training loss", (FONT, 26))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, lo..hi)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (cross-entropy, nats)")
        .axis_desc_style((FONT, 17))
        .label_style((FONT, 15))
        .x_label_formatter(&|v| fmt_tick(*v))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .max_light_lines(4)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(205, 205, 205))
        .draw()
        .map_err(plot_err)?;
    for (i, r) in runs.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        for piece in clip_polyline(&raw_pts[i], lo, hi) {
            chart
                .draw_series(LineSeries::new(piece, c.mix(0.28).stroke_width(1)))
                .map_err(plot_err)?;
        }
        let label = format!("{} (EMA {smooth})", r.name);
        let mut first = true;
        for piece in clip_polyline(&smooth_pts[i], lo, hi) {
            let s = chart
                .draw_series(LineSeries::new(piece, c.stroke_width(3)))
                .map_err(plot_err)?;
            if first {
                s.label(label.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3))
                });
                first = false;
            }
        }
        let val: Vec<(f64, f64)> = r
            .val
            .iter()
            .filter(|v| v.1 >= lo && v.1 <= hi)
            .cloned()
            .collect();
        if !val.is_empty() {
            chart
                .draw_series(val.iter().map(|&p| Circle::new(p, 6, WHITE.filled())))
                .map_err(plot_err)?;
            chart
                .draw_series(
                    val.iter()
                        .map(|&p| Circle::new(p, 5, c.filled().stroke_width(1))),
                )
                .map_err(plot_err)?
                .label(format!("{} validation", r.name))
                .legend(move |(x, y)| Circle::new((x + 12, y), 5, c.filled()));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn draw_ms(area: &DrawingArea<TextBackend, Shift>, runs: &[RunSeries], smooth: f64) -> Result<()> {
    let (x0, x1) = x_range(runs)?;
    let width_px = area.dim_in_pixel().0 as usize;
    let raw: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| downsample(&r.ms, width_px * 2, true))
        .collect();
    let smoothed: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            let ys: Vec<f64> = r.ms.iter().map(|p| p.1).collect();
            let pts: Vec<(f64, f64)> =
                r.ms.iter()
                    .zip(ema_series(&ys, smooth))
                    .map(|(p, e)| (p.0, e))
                    .collect();
            downsample(&pts, width_px * 2, false)
        })
        .collect();
    let (lo, hi) = robust_range(raw.iter().flatten().map(|p| p.1)).unwrap_or((0.0, 1.0));
    let (lo, hi) = plottable((lo.max(0.0), hi))?;
    let mut chart = ChartBuilder::on(area)
        .caption("Step time", (FONT, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, lo..hi)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("ms / step")
        .axis_desc_style((FONT, 17))
        .label_style((FONT, 15))
        .x_label_formatter(&|v| fmt_tick(*v))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .max_light_lines(4)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(205, 205, 205))
        .draw()
        .map_err(plot_err)?;
    for (i, r) in runs.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        for piece in clip_polyline(&raw[i], lo, hi) {
            chart
                .draw_series(LineSeries::new(piece, c.mix(0.28).stroke_width(1)))
                .map_err(plot_err)?;
        }
        let mut first = true;
        for piece in clip_polyline(&smoothed[i], lo, hi) {
            let s = chart
                .draw_series(LineSeries::new(piece, c.stroke_width(2)))
                .map_err(plot_err)?;
            if first {
                s.label(r.name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2))
                });
                first = false;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_cuts_segments_at_the_band() {
        // A spike above the band splits the line into two pieces ending exactly on y = 2.
        let pts = [(0.0, 1.0), (1.0, 3.0), (2.0, 1.0)];
        let pieces = clip_polyline(&pts, 0.0, 2.0);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0], vec![(0.0, 1.0), (0.5, 2.0)]);
        assert_eq!(pieces[1], vec![(1.5, 2.0), (2.0, 1.0)]);
        // Entirely inside: one piece, unchanged.
        let inside = [(0.0, 0.5), (1.0, 1.5), (2.0, 1.0)];
        assert_eq!(clip_polyline(&inside, 0.0, 2.0), vec![inside.to_vec()]);
        // Starting above: the first piece starts on the bound.
        let p = clip_polyline(&[(0.0, 4.0), (2.0, 0.0)], 0.0, 2.0);
        assert_eq!(p, vec![vec![(1.0, 2.0), (2.0, 0.0)]]);
        // Entirely outside: nothing.
        assert!(clip_polyline(&[(0.0, 5.0), (1.0, 6.0)], 0.0, 2.0).is_empty());
    }

    #[test]
    fn ranges_are_made_plottable() {
        assert!(plottable((f64::NEG_INFINITY, 1.0)).is_err());
        assert!(plottable((0.0, 1e300)).is_err());
        assert_eq!(plottable((1.0, 3.0)).unwrap(), (1.0, 3.0));
        let (lo, hi) = plottable((1e12, 1e12 + 1e-3)).unwrap();
        assert!(hi - lo >= 2e6 * 0.999, "{lo} {hi}");
        // And plotters puts ticks and labels on it.
        register_fonts();
        let mut buf = vec![255u8; 200 * 100 * 3];
        let root = BitMapBackend::with_buffer(&mut buf, (200, 100)).into_drawing_area();
        let mut c = ChartBuilder::on(&root)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..1.0, lo..hi)
            .unwrap();
        c.configure_mesh().draw().unwrap();
    }

    #[test]
    fn run_names() {
        assert_eq!(run_name(Path::new("runs/big/run.jsonl")), "big");
        assert_eq!(run_name(Path::new("a/lr3e-4.jsonl")), "lr3e-4");
    }
}
