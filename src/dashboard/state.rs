//! What the dashboard knows about a run: the events of its log folded into series that the
//! panels and plots draw. Pure data, no I/O, no clock — so rendering is reproducible in tests.
//!
//! A resumed run appends to the same log and may repeat steps that were logged before the
//! crash (it restarts from the last checkpoint). A step number at or below the last one seen
//! therefore cuts the series back to before it: the newest history wins and x stays
//! increasing.

use crate::train::log::{Event, RunHeader, StepRecord};
use std::collections::{BTreeMap, VecDeque};

/// One optimizer step, as the charts need it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepPoint {
    pub step: u64,
    pub loss: f64,
    /// Debiased exponential moving average of `loss` up to and including this step.
    pub ema: f64,
    pub lr: f64,
    pub ms: f64,
    pub tokens_per_s: f64,
    /// Unix seconds when the step was logged (0 when the log does not say).
    pub time: f64,
    pub compiles: u64,
}

/// A checkpoint written by the run.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    pub step: u64,
    /// The path as the trainer logged it (relative to the trainer's working folder, or absolute).
    pub path: String,
    pub ms: f64,
}

/// What kind of line an event-log entry is (it picks the colour).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    Run,
    Step,
    Eval,
    Checkpoint,
    Sample,
    Warning,
    Error,
    Report,
    Notice,
}

/// One line of the event-log panel.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub kind: LineKind,
    pub text: String,
}

/// Lines kept for the event-log panel; older ones are dropped.
pub const MAX_LOG_LINES: usize = 5000;
/// Steps averaged for the timing bars and the speed estimate behind the ETA.
pub const RECENT_STEPS: usize = 20;

/// Debiased exponential moving average, as TensorBoard smooths scalars:
/// `acc_t = w·acc_{t-1} + (1−w)·x_t`, shown as `acc_t / (1 − w^t)`, so the first values are
/// not pulled towards zero. `w` is the weight of the past (0 = no smoothing, 0.9 = about the
/// last ten values).
#[derive(Clone, Debug)]
pub struct Ema {
    weight: f64,
    acc: f64,
    debias: f64,
}

impl Ema {
    pub fn new(weight: f64) -> Ema {
        let weight = if weight.is_finite() {
            weight.clamp(0.0, 0.9999)
        } else {
            0.0
        };
        Ema {
            weight,
            acc: 0.0,
            debias: 1.0,
        }
    }
    /// Adds `x` and returns the smoothed value; a non-finite `x` leaves the average as it was.
    pub fn push(&mut self, x: f64) -> f64 {
        if x.is_finite() {
            self.acc = self.weight * self.acc + (1.0 - self.weight) * x;
            self.debias *= self.weight;
        }
        self.value().unwrap_or(x)
    }
    pub fn value(&self) -> Option<f64> {
        let d = 1.0 - self.debias;
        (d > 0.0).then(|| self.acc / d)
    }
}

/// Smooths a whole series with [`Ema`].
pub fn ema_series(values: &[f64], weight: f64) -> Vec<f64> {
    let mut e = Ema::new(weight);
    values.iter().map(|&v| e.push(v)).collect()
}

/// The run as read so far.
#[derive(Clone, Debug)]
pub struct RunState {
    /// The newest run header (a resumed run writes a new one).
    pub header: Option<RunHeader>,
    pub steps: Vec<StepPoint>,
    /// (step, validation loss)
    pub evals: Vec<(u64, f64)>,
    pub checkpoints: Vec<CheckpointInfo>,
    /// Timing maps of the newest steps (ms per component), newest last.
    pub recent_timing: VecDeque<BTreeMap<String, f64>>,
    /// The newest sample text the trainer itself logged: (step, text).
    pub last_sample: Option<(u64, String)>,
    /// The final report, once the run has finished.
    pub report: Option<serde_json::Value>,
    pub skipped_steps: u64,
    pub errors: u64,
    /// Kernels the backend moved to the CPU (`fallback` events), in order.
    pub on_cpu: Vec<String>,
    pub log_lines: VecDeque<LogLine>,
    smooth: f64,
    ema: Ema,
}

impl RunState {
    /// An empty state; `smooth` is the EMA weight of the smoothed loss line.
    pub fn new(smooth: f64) -> RunState {
        RunState {
            header: None,
            steps: Vec::new(),
            evals: Vec::new(),
            checkpoints: Vec::new(),
            recent_timing: VecDeque::new(),
            last_sample: None,
            report: None,
            skipped_steps: 0,
            on_cpu: Vec::new(),
            errors: 0,
            log_lines: VecDeque::new(),
            smooth,
            ema: Ema::new(smooth),
        }
    }

    /// Folds a whole log.
    pub fn from_events(events: impl IntoIterator<Item = Event>, smooth: f64) -> RunState {
        let mut s = RunState::new(smooth);
        for e in events {
            s.apply(e);
        }
        s
    }

    pub fn smooth(&self) -> f64 {
        self.smooth
    }

    /// Forgets everything (the log was truncated or replaced) but keeps the event-log lines, so
    /// the user sees that it happened.
    pub fn reset(&mut self) {
        let lines = std::mem::take(&mut self.log_lines);
        *self = RunState::new(self.smooth);
        self.log_lines = lines;
    }

    /// Adds a line to the event-log panel.
    pub fn note(&mut self, kind: LineKind, text: impl Into<String>) {
        if self.log_lines.len() >= MAX_LOG_LINES {
            self.log_lines.pop_front();
        }
        // One line each: control characters (newlines in messages) would break the panel.
        let text: String = text
            .into()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.log_lines.push_back(LogLine { kind, text });
    }

    pub fn apply(&mut self, e: Event) {
        match e {
            Event::Run(h) => {
                self.note(
                    LineKind::Run,
                    format!(
                        "run: pid {} · {} · {} params · batch {}×{} · {} steps from {}",
                        h.pid,
                        if h.backend.is_empty() {
                            "?"
                        } else {
                            &h.backend
                        },
                        fmt_count(h.params as f64),
                        h.batch,
                        h.seq,
                        h.total_steps,
                        h.start_step
                    ),
                );
                self.header = Some(h);
                self.report = None;
            }
            Event::Step(r) => self.apply_step(r),
            Event::Eval { step, val_loss, .. } => {
                while self.evals.last().is_some_and(|&(s, _)| s >= step) {
                    self.evals.pop();
                }
                if val_loss.is_finite() {
                    self.evals.push((step, val_loss));
                }
                self.note(
                    LineKind::Eval,
                    format!("eval  {step:>7}  val loss {val_loss:.4}"),
                );
            }
            Event::Checkpoint { step, path, ms, .. } => {
                self.note(
                    LineKind::Checkpoint,
                    format!("ckpt  {step:>7}  {path} ({ms:.0} ms)"),
                );
                self.checkpoints.push(CheckpointInfo { step, path, ms });
            }
            Event::Sample { step, text, .. } => {
                let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                self.note(LineKind::Sample, format!("sample {step:>6}  {one_line}"));
                self.last_sample = Some((step, text));
            }
            Event::Skip { step, reason, .. } => {
                self.skipped_steps += 1;
                self.note(LineKind::Warning, format!("skip  {step:>7}  {reason}"));
            }
            Event::Error { step, message, .. } => {
                self.errors += 1;
                self.note(LineKind::Error, format!("error {step:>7}  {message}"));
            }
            Event::Fallback {
                step,
                kernel,
                error,
                ..
            } => {
                self.note(
                    LineKind::Warning,
                    format!("cpu   {step:>7}  {kernel} falls back to the CPU: {error}"),
                );
                if !self.on_cpu.contains(&kernel) {
                    self.on_cpu.push(kernel);
                }
            }
            Event::Report(v) => {
                let ms = v.get("ms_per_step").and_then(|x| x.as_f64());
                let steps = v.get("steps").and_then(|x| x.as_u64());
                let wall = v.get("wall_s").and_then(|x| x.as_f64());
                let mut t = String::from("report: run finished");
                if let Some(s) = steps {
                    t += &format!(" · {s} steps");
                }
                if let Some(w) = wall {
                    t += &format!(" in {}", fmt_duration(w));
                }
                if let Some(m) = ms {
                    t += &format!(" · {m:.1} ms/step");
                }
                self.note(LineKind::Report, t);
                self.report = Some(v);
            }
        }
    }

    fn apply_step(&mut self, r: StepRecord) {
        if self.steps.last().is_some_and(|p| p.step >= r.step) {
            let keep = self.steps.partition_point(|p| p.step < r.step);
            self.steps.truncate(keep);
            self.ema = Ema::new(self.smooth);
            for p in &mut self.steps {
                p.ema = self.ema.push(p.loss);
            }
            self.recent_timing.clear();
        }
        let ema = self.ema.push(r.loss);
        self.note(
            LineKind::Step,
            format!(
                "step  {:>7}  loss {:.4}  lr {:.2e}  {:.1} ms  {} tok/s",
                r.step,
                r.loss,
                r.lr,
                r.ms,
                fmt_count(r.tokens_per_s)
            ),
        );
        if self.recent_timing.len() >= RECENT_STEPS {
            self.recent_timing.pop_front();
        }
        self.recent_timing.push_back(r.timing);
        self.steps.push(StepPoint {
            step: r.step,
            loss: r.loss,
            ema,
            lr: r.lr,
            ms: r.ms,
            tokens_per_s: r.tokens_per_s,
            time: r.time,
            compiles: r.compiles,
        });
    }

    pub fn last_step(&self) -> Option<&StepPoint> {
        self.steps.last()
    }

    pub fn total_steps(&self) -> Option<u64> {
        self.header
            .as_ref()
            .map(|h| h.total_steps)
            .filter(|&t| t > 0)
    }

    /// Has the run said it is done (a report, or the last step reached)?
    pub fn finished(&self) -> bool {
        self.report.is_some()
            || match (self.total_steps(), self.last_step()) {
                (Some(t), Some(p)) => p.step >= t,
                _ => false,
            }
    }

    /// Wall seconds per step over the newest steps: from the log's timestamps when they cover
    /// the window (they include evals and checkpoints), else the mean step time.
    pub fn seconds_per_step(&self) -> Option<f64> {
        let n = self.steps.len();
        if n == 0 {
            return None;
        }
        let w = &self.steps[n.saturating_sub(RECENT_STEPS + 1)..];
        if w.len() >= 2 {
            let (a, b) = (&w[0], &w[w.len() - 1]);
            if a.time > 0.0 && b.time > a.time && b.step > a.step {
                return Some((b.time - a.time) / (b.step - a.step) as f64);
            }
        }
        let ms: Vec<f64> = w.iter().map(|p| p.ms).filter(|m| *m > 0.0).collect();
        (!ms.is_empty()).then(|| ms.iter().sum::<f64>() / ms.len() as f64 / 1e3)
    }

    /// Estimated seconds until the last step; `Some(0.0)` when finished.
    pub fn eta_seconds(&self) -> Option<f64> {
        if self.finished() {
            return Some(0.0);
        }
        let total = self.total_steps()?;
        let last = self.last_step()?.step;
        Some(total.saturating_sub(last) as f64 * self.seconds_per_step()?)
    }

    /// The best validation loss if the run evaluated, else the best smoothed training loss:
    /// (what, step, value).
    pub fn best_loss(&self) -> Option<(&'static str, u64, f64)> {
        if let Some(&(s, v)) = self.evals.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
            return Some(("val", s, v));
        }
        self.steps
            .iter()
            .filter(|p| p.ema.is_finite())
            .min_by(|a, b| a.ema.total_cmp(&b.ema))
            .map(|p| ("ema", p.step, p.ema))
    }

    /// Mean milliseconds per component over the newest steps, largest first.
    pub fn timing_breakdown(&self) -> Vec<(String, f64)> {
        let n = self.recent_timing.len();
        if n == 0 {
            return Vec::new();
        }
        let mut sum: BTreeMap<&str, f64> = BTreeMap::new();
        for t in &self.recent_timing {
            for (k, v) in t {
                if v.is_finite() {
                    *sum.entry(k.as_str()).or_default() += v;
                }
            }
        }
        let mut v: Vec<(String, f64)> = sum
            .into_iter()
            .map(|(k, s)| (k.to_string(), s / n as f64))
            .filter(|(_, m)| *m > 0.0)
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Mean step time over the same window as [`RunState::timing_breakdown`].
    pub fn recent_mean_ms(&self) -> Option<f64> {
        let n = self.recent_timing.len().min(self.steps.len());
        if n == 0 {
            return None;
        }
        let w = &self.steps[self.steps.len() - n..];
        Some(w.iter().map(|p| p.ms).sum::<f64>() / n as f64)
    }
}

/// Reduces `points` (x increasing) to at most `max_points` for drawing: consecutive points are
/// grouped into buckets; `envelope` keeps each bucket's minimum and maximum (so noise stays
/// visible), otherwise its mean.
pub fn downsample(points: &[(f64, f64)], max_points: usize, envelope: bool) -> Vec<(f64, f64)> {
    let max_points = max_points.max(2);
    if points.len() <= max_points {
        return points.to_vec();
    }
    let buckets = if envelope { max_points / 2 } else { max_points }.max(1);
    let per = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(buckets * 2);
    for chunk in points.chunks(per) {
        let x = chunk.iter().map(|p| p.0).sum::<f64>() / chunk.len() as f64;
        if envelope {
            let lo = chunk.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let hi = chunk.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
            // Visit the extremes in the direction the bucket moves, so lines stay short.
            if chunk[0].1 <= chunk[chunk.len() - 1].1 {
                out.extend([(x, lo), (x, hi)]);
            } else {
                out.extend([(x, hi), (x, lo)]);
            }
        } else {
            out.push((
                x,
                chunk.iter().map(|p| p.1).sum::<f64>() / chunk.len() as f64,
            ));
        }
    }
    out
}

/// A y range that shows the bulk of `values` and lets rare early spikes run off the top:
/// from the minimum to the 98th percentile when there are enough values (the first steps of a
/// run from scratch sit far above the rest), padded by 4%.
pub fn robust_range(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let lo = v[0];
    let hi = if v.len() >= 50 {
        v[((v.len() - 1) as f64 * 0.98).round() as usize]
    } else {
        v[v.len() - 1]
    };
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.04
    } else {
        (lo.abs() * 0.05).max(1e-3)
    };
    Some((lo - pad, hi + pad))
}

/// `3h02m`, `12m03s`, `4.5s`.
pub fn fmt_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h >= 24 {
        format!("{}d{:02}h", h / 24, h % 24)
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// A count in three significant figures with a k/M/G suffix: `950`, `5.12k`, `1.20M`.
pub fn fmt_count(x: f64) -> String {
    if !x.is_finite() {
        return "?".into();
    }
    let a = x.abs();
    let (v, suffix) = if a >= 1e9 {
        (x / 1e9, "G")
    } else if a >= 1e6 {
        (x / 1e6, "M")
    } else if a >= 1e3 {
        (x / 1e3, "k")
    } else {
        return format!("{x:.0}");
    };
    if v.abs() >= 100.0 {
        format!("{v:.0}{suffix}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}{suffix}")
    } else {
        format!("{v:.2}{suffix}")
    }
}

/// Bytes as `512.3 MiB` / `1.25 GiB`.
pub fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, loss: f64, time: f64) -> Event {
        Event::Step(StepRecord {
            step,
            loss,
            ms: 100.0,
            time,
            ..Default::default()
        })
    }

    #[test]
    fn ema_matches_the_debiased_formula() {
        // Written out: acc_t = 0.9·acc_{t-1} + 0.1·x_t; shown acc_t / (1 − 0.9^t).
        let x = [4.0, 2.0, 3.0, 1.0];
        let got = ema_series(&x, 0.9);
        let mut acc = 0.0;
        for (t, &v) in x.iter().enumerate() {
            acc = 0.9 * acc + 0.1 * v;
            let want = acc / (1.0 - 0.9f64.powi(t as i32 + 1));
            assert!((got[t] - want).abs() < 1e-12, "{t}: {} vs {want}", got[t]);
        }
        assert_eq!(got[0], 4.0);
        assert_eq!(ema_series(&x, 0.0), x.to_vec());
    }

    #[test]
    fn repeated_steps_after_a_resume_replace_the_old_tail() {
        let ev = vec![
            step(1, 5.0, 0.0),
            step(2, 4.0, 0.0),
            step(3, 3.0, 0.0),
            step(2, 4.5, 0.0),
            step(3, 3.5, 0.0),
        ];
        let s = RunState::from_events(ev, 0.5);
        let steps: Vec<(u64, f64)> = s.steps.iter().map(|p| (p.step, p.loss)).collect();
        assert_eq!(steps, vec![(1, 5.0), (2, 4.5), (3, 3.5)]);
        let ema = ema_series(&[5.0, 4.5, 3.5], 0.5);
        for (p, e) in s.steps.iter().zip(ema) {
            assert!((p.ema - e).abs() < 1e-12);
        }
    }

    #[test]
    fn fallback_events_say_which_kernels_run_on_the_cpu() {
        let fb = |k: &str| Event::Fallback {
            step: 1,
            kernel: k.into(),
            error: "refused".into(),
            time: 0.0,
        };
        let s = RunState::from_events(
            vec![
                step(1, 5.0, 0.0),
                fb("ffn_bwd"),
                fb("qkv_bwd"),
                fb("ffn_bwd"),
            ],
            0.5,
        );
        assert_eq!(s.on_cpu, vec!["ffn_bwd".to_string(), "qkv_bwd".to_string()]);
        assert!(s
            .log_lines
            .iter()
            .any(|l| l.text.contains("ffn_bwd falls back to the CPU")));
    }

    #[test]
    fn eta_uses_log_timestamps() {
        let mut ev = vec![Event::Run(RunHeader {
            pid: 1,
            total_steps: 100,
            ..Default::default()
        })];
        // 0.5 s per step by the clock (the ms field says 100 ms: evals etc. in between).
        for i in 1..=10 {
            ev.push(step(i, 3.0, 1000.0 + 0.5 * i as f64));
        }
        let s = RunState::from_events(ev, 0.9);
        assert!((s.seconds_per_step().unwrap() - 0.5).abs() < 1e-9);
        assert!((s.eta_seconds().unwrap() - 45.0).abs() < 1e-6);
        assert!(!s.finished());
    }

    #[test]
    fn downsample_keeps_extremes() {
        let pts: Vec<(f64, f64)> = (0..1000)
            .map(|i| (i as f64, if i == 517 { 9.0 } else { (i % 7) as f64 }))
            .collect();
        let d = downsample(&pts, 100, true);
        assert!(d.len() <= 100);
        assert!(d.iter().any(|p| p.1 == 9.0));
        assert!(d.iter().any(|p| p.1 == 0.0));
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0));
        let m = downsample(&pts, 10, false);
        assert_eq!(m.len(), 10);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_duration(3.25), "3.2s");
        assert_eq!(fmt_duration(723.0), "12m03s");
        assert_eq!(fmt_duration(3.0 * 3600.0 + 125.0), "3h02m");
        assert_eq!(fmt_count(5123.0), "5.12k");
        assert_eq!(fmt_count(950.0), "950");
        assert_eq!(fmt_count(15.2e6), "15.2M");
        assert_eq!(fmt_bytes(512 * 1024 * 1024), "512.0 MiB");
    }
}
