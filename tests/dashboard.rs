//! The dashboard, its log follower, process stats, trainer child and PNG plots, driven the way
//! the terminal loop drives them and checked by what ends up on screen (ratatui's TestBackend)
//! or in the file. Logs are produced here by serializing `Event`s, as `anetrain train` does.

use anetrain::dashboard::app::{App, DashboardConfig};
use anetrain::dashboard::follow::LogFollower;
use anetrain::dashboard::plot::{plot_logs, PlotOptions};
use anetrain::dashboard::story::{StoryFn, StoryState};
use anetrain::dashboard::sysstats::{read_process, ProcMonitor};
use anetrain::train::log::{Event, RunHeader, StepRecord};
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A pid that no process has (Linux caps pids at 2^22).
const NO_PID: u32 = 999_999_999;
const TOTAL: u64 = 200;
const TOKENS_PER_STEP: f64 = 256.0;

fn header(pid: u32) -> Event {
    Event::Run(RunHeader {
        pid,
        start_unix: 1000.0,
        backend: "cpu".into(),
        model: serde_json::json!({"dim": 64, "n_layers": 5, "n_heads": 8, "n_kv_heads": 4,
                                  "vocab_size": 512}),
        params: 260_000,
        batch: 4,
        seq: 64,
        accum: 1,
        total_steps: TOTAL,
        tokens_per_step: TOKENS_PER_STEP as u64,
        ..Default::default()
    })
}

/// A loss curve that falls from about 8 towards 2, with a little deterministic wobble.
fn loss_at(step: u64) -> f64 {
    let s = step as f64;
    2.0 + 6.0 * (-s / 40.0).exp() + 0.05 * (s * 1.7).sin()
}

fn ms_at(step: u64) -> f64 {
    48.0 + (step % 5) as f64
}

fn step(step: u64) -> Event {
    let mut timing = BTreeMap::new();
    timing.insert("fwd_attn".to_string(), 10.0);
    timing.insert("fwd_ffn".to_string(), 12.0);
    timing.insert("ffn_bwd".to_string(), 15.0);
    timing.insert("dw".to_string(), 8.0);
    timing.insert("optimizer".to_string(), 3.0);
    Event::Step(StepRecord {
        step,
        loss: loss_at(step),
        lr: 3e-4,
        grad_norm: 1.0,
        ms: ms_at(step),
        tokens_per_s: TOKENS_PER_STEP / ms_at(step) * 1000.0,
        timing,
        compiles: 0,
        // One step every 50 ms of wall time.
        time: 1000.0 + 0.05 * step as f64,
    })
}

fn line(e: &Event) -> String {
    let mut s = serde_json::to_string(e).unwrap();
    s.push('\n');
    s
}

fn write_log(path: &Path, events: &[Event]) {
    let text: String = events.iter().map(line).collect();
    std::fs::write(path, text).unwrap();
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// Header, steps 1..=120, evals at 50 and 100, a checkpoint and a sample at 100.
fn representative(dir: &Path) -> Vec<Event> {
    let mut ev = vec![header(NO_PID)];
    for s in 1..=120 {
        ev.push(step(s));
        if s == 50 || s == 100 {
            ev.push(Event::Eval {
                step: s,
                val_loss: loss_at(s) + 0.1,
                time: 0.0,
            });
        }
        if s == 100 {
            ev.push(Event::Checkpoint {
                step: s,
                path: dir.join("step100.ckpt").display().to_string(),
                ms: 12.0,
                time: 0.0,
            });
            ev.push(Event::Sample {
                step: s,
                text: "Once upon a time".into(),
                time: 0.0,
            });
        }
    }
    ev
}

fn no_story() -> StoryFn {
    Box::new(|_p: &Path| Ok("(no story)".to_string()))
}

fn app_for(log: &Path, story: StoryFn) -> App {
    let mut cfg = DashboardConfig::new(log);
    cfg.system_stats = false;
    App::new(cfg, story)
}

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| anetrain::dashboard::ui::render(f, app)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn assert_has(s: &str, what: &str) {
    assert!(s.contains(what), "screen lacks {what:?}:\n{s}");
}

/// The debiased EMA written out independently of the crate.
fn reference_ema(xs: &[f64], w: f64) -> f64 {
    let mut acc = 0.0;
    for x in xs {
        acc = w * acc + (1.0 - w) * x;
    }
    acc / (1.0 - w.powi(xs.len() as i32))
}

const TITLES: [&str; 6] = [
    "Loss",
    "Speed",
    "Time per step",
    "Process",
    "Story",
    "Events",
];

#[test]
fn representative_log_shows_its_numbers_and_panels() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    write_log(&log, &representative(d.path()));
    let mut app = app_for(&log, no_story());
    assert!(app.tick());
    let s = screen(&app, 120, 36);
    for t in TITLES {
        assert_has(&s, t);
    }
    assert_has(&s, "step 120/200");
    assert_has(&s, "60.0%");
    // 80 steps left at 50 ms each (the log's timestamps).
    assert_has(&s, "ETA 4.0s");
    assert_has(&s, "lr 3.00e-4");
    assert_has(&s, &format!("loss {:.4}", loss_at(120)));
    assert_has(&s, &format!("train {:.4}", loss_at(120)));
    let losses: Vec<f64> = (1..=120).map(loss_at).collect();
    assert_has(&s, &format!("ema {:.4}", reference_ema(&losses, 0.9)));
    assert_has(&s, &format!("val {:.4} @100", loss_at(100) + 0.1));
    // The best validation loss is the later one (the curve falls).
    assert_has(&s, &format!("best val {:.4} @100", loss_at(100) + 0.1));
    assert_has(&s, &format!("Speed {:.1} ms", ms_at(120)));
    // Timing bars, largest first, as mean over the last 20 steps.
    assert_has(&s, "ffn_bwd");
    assert_has(&s, "15.00 ms");
    assert!(s.find("ffn_bwd").unwrap() < s.find("optimizer").unwrap());
    // The step time (48..52 ms) exceeds the timed 48 ms on average: the rest is shown.
    assert_has(&s, "(untimed)");
    assert_has(&s, "d64 L5 H8/4 V512");
    assert_has(&s, "260k params");
    assert_has(&s, "ANE compiles n/a (cpu backend)");
    assert_has(&s, "CPU   n/a");
    // The newest events: the last step line.
    assert_has(&s, &format!("step      120  loss {:.4}", loss_at(120)));
    // The checkpoint file does not exist: the trainer's own sample is shown instead.
    assert_has(&s, "sample logged at step 100");
    assert_has(&s, "Once upon a time");
}

#[test]
fn fits_80x24_and_degrades_below() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    write_log(&log, &representative(d.path()));
    let mut app = app_for(&log, no_story());
    app.tick();
    let s = screen(&app, 80, 24);
    for t in TITLES {
        assert_has(&s, t);
    }
    assert_has(&s, "step 120/200");
    assert_has(&s, "q ");
    // Resizing through many sizes, tiny ones included, never panics.
    for (w, h) in [
        (1, 1),
        (10, 3),
        (39, 11),
        (40, 12),
        (55, 17),
        (80, 24),
        (200, 60),
    ] {
        let s = screen(&app, w, h);
        if w < 40 || h < 12 {
            assert!(s.contains("too small") || w * h < 40, "{w}x{h}:\n{s}");
        } else {
            assert_has(&s, "Loss");
        }
    }
}

#[test]
fn empty_and_missing_logs() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    let mut app = app_for(&log, no_story());
    app.tick();
    let s = screen(&app, 80, 24);
    assert_has(&s, "no log at");
    assert_has(&s, "waiting for log");
    std::fs::write(&log, "").unwrap();
    app.tick();
    let s = screen(&app, 80, 24);
    assert_has(&s, "no steps logged yet");
    assert_has(&s, "no steps yet");
    for t in TITLES {
        assert_has(&s, t);
    }
    // A header alone: the run is known, no steps yet.
    append(&log, &line(&header(NO_PID)));
    app.tick();
    let s = screen(&app, 80, 24);
    assert_has(&s, "waiting for steps");
    assert_has(&s, "batch 4×64");
}

#[test]
fn corrupt_lines_are_skipped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    let mut text = line(&header(NO_PID));
    text += &line(&step(1));
    text += "{\"type\":\"step\",\"step\":2,\"lo\n"; // cut short
    text += "\u{fffd}\u{1} not json at all\n";
    text += &line(&step(3));
    std::fs::write(&log, text).unwrap();
    let mut app = app_for(&log, no_story());
    app.tick();
    assert_eq!(app.corrupt_lines(), 2);
    let steps: Vec<u64> = app.state.steps.iter().map(|p| p.step).collect();
    assert_eq!(steps, vec![1, 3]);
    let s = screen(&app, 100, 30);
    assert_has(&s, "step 3/200");
    assert_has(&s, "2 corrupt lines skipped");
    assert_has(&s, "skipped 2 corrupt lines");
}

#[test]
fn extreme_values_never_panic() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    let mut ev = vec![Event::Run(RunHeader {
        pid: 0,
        total_steps: 3,
        ..Default::default()
    })];
    let values = [
        1e300,
        -1e300,
        0.0,
        1e-300,
        5.0,
        -3.0,
        f64::MAX,
        f64::MIN_POSITIVE,
    ];
    for (i, &v) in values.iter().enumerate() {
        let mut timing = BTreeMap::new();
        timing.insert("x\ny".to_string(), v);
        timing.insert(String::new(), -v);
        ev.push(Event::Step(StepRecord {
            step: [u64::MAX, 0, 7, 7, 1 << 60, 3, 2, 1][i],
            loss: v,
            lr: v,
            ms: v,
            tokens_per_s: v,
            timing,
            compiles: u64::MAX,
            time: v,
            ..Default::default()
        }));
        ev.push(Event::Eval {
            step: i as u64,
            val_loss: -v,
            time: v,
        });
    }
    ev.push(Event::Error {
        step: 1,
        message: "two\nlines\tand \u{1b}[31m escapes".into(),
        time: 0.0,
    });
    ev.push(Event::Report(
        serde_json::json!({"steps": "many", "wall_s": -1}),
    ));
    write_log(&log, &ev);
    let mut app = app_for(&log, no_story());
    app.tick();
    for (w, h) in [(80, 24), (40, 12), (200, 50), (41, 13)] {
        let s = screen(&app, w, h);
        assert_has(&s, "Loss");
    }
    assert!(app
        .state
        .log_lines
        .iter()
        .all(|l| !l.text.chars().any(char::is_control)));
    // The plot may refuse such a log, but must not panic.
    let opts = PlotOptions {
        width: 400,
        height: 300,
        smooth: 0.9,
    };
    let _ = plot_logs(&[log], &d.path().join("x.png"), &opts);
}

#[test]
fn truncated_log_is_read_again() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    write_log(&log, &representative(d.path()));
    let mut app = app_for(&log, no_story());
    app.tick();
    assert_eq!(app.state.steps.len(), 120);
    // A new, shorter run written over the old log.
    let mut ev = vec![header(NO_PID)];
    ev.extend((1..=7).map(step));
    write_log(&log, &ev);
    app.tick();
    assert_eq!(app.state.steps.len(), 7);
    assert!(app.state.evals.is_empty());
    let s = screen(&app, 100, 30);
    assert_has(&s, "step 7/200");
    assert!(app
        .state
        .log_lines
        .iter()
        .any(|l| l.text.contains("truncated or replaced")));
    // A log cut in the middle of a line: the partial line waits, nothing breaks.
    let full = line(&step(8));
    append(&log, &full[..full.len() / 2]);
    app.tick();
    assert_eq!(app.state.steps.len(), 7);
    append(&log, &full[full.len() / 2..]);
    app.tick();
    assert_eq!(app.state.steps.len(), 8);
    assert_eq!(app.corrupt_lines(), 0);
}

#[test]
fn follower_reads_appended_lines_incrementally() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    let mut f = LogFollower::new(&log);
    let p = f.poll();
    assert!(p.missing && p.events.is_empty());
    write_log(&log, &[header(1), step(1)]);
    let p = f.poll();
    assert_eq!(p.events.len(), 2);
    assert!(!p.reset);
    assert_eq!(f.poll().events.len(), 0);
    let l2 = line(&step(2));
    append(&log, &l2[..10]);
    assert_eq!(f.poll().events.len(), 0);
    append(&log, &l2[10..]);
    append(&log, &line(&step(3)));
    let p = f.poll();
    let steps: Vec<u64> = p
        .events
        .iter()
        .map(|e| match e {
            Event::Step(r) => r.step,
            _ => 0,
        })
        .collect();
    assert_eq!(steps, vec![2, 3]);
    append(&log, "garbage\n\n");
    let p = f.poll();
    assert_eq!((p.events.len(), p.corrupt), (0, 1));
    // A crash left half a line; the restarted trainer appended a whole event after it.
    let l4 = line(&step(4));
    append(&log, &l4[..20]);
    append(&log, &line(&step(5)));
    let p = f.poll();
    assert_eq!(p.events.len(), 1);
    assert!(matches!(&p.events[0], Event::Step(r) if r.step == 5));
    // Truncation: read again from the start.
    write_log(&log, &[header(1)]);
    let p = f.poll();
    assert!(p.reset);
    assert_eq!(p.events.len(), 1);
    assert_eq!(f.offset(), std::fs::metadata(&log).unwrap().len());
    // Deleted: missing, and a later file is read from its start.
    std::fs::remove_file(&log).unwrap();
    assert!(f.poll().missing);
    write_log(&log, &[step(1), step(2)]);
    assert_eq!(f.poll().events.len(), 2);
}

#[test]
fn new_steps_show_within_a_second() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    write_log(&log, &[header(NO_PID), step(1)]);
    let mut app = app_for(&log, no_story());
    app.tick();
    let writer_log = log.clone();
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Instant)>();
    let writer = std::thread::spawn(move || {
        for s in 2..=6 {
            std::thread::sleep(Duration::from_millis(150));
            append(&writer_log, &line(&step(s)));
            tx.send((s, Instant::now())).unwrap();
        }
    });
    // The terminal loop's cadence: a tick every POLL_EVERY, a frame after it.
    let mut seen: Vec<(u64, Duration)> = Vec::new();
    let mut written: Vec<(u64, Instant)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 5 && Instant::now() < deadline {
        std::thread::sleep(anetrain::dashboard::app::POLL_EVERY);
        app.tick();
        let s = screen(&app, 80, 24);
        written.extend(rx.try_iter());
        for &(st, at) in &written {
            if !seen.iter().any(|x| x.0 == st) && s.contains(&format!("step {st}/200")) {
                seen.push((st, at.elapsed()));
            }
        }
    }
    writer.join().unwrap();
    assert_eq!(seen.len(), 5, "steps seen: {seen:?}");
    let worst = seen.iter().map(|s| s.1).max().unwrap_or_default();
    eprintln!("slowest step to reach the screen: {worst:?}");
    for (st, lag) in seen {
        assert!(
            lag < Duration::from_secs(1),
            "step {st} took {lag:?} to show"
        );
    }
}

#[test]
fn keys_pause_scroll_and_quit() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    write_log(&log, &representative(d.path()));
    let mut app = app_for(&log, no_story());
    app.tick();
    let _ = screen(&app, 80, 24);
    assert!(!app.handle_key(key(KeyCode::Char('p'))));
    append(&log, &line(&step(121)));
    app.tick();
    let s = screen(&app, 80, 24);
    assert_has(&s, "paused");
    assert_has(&s, "step 120/200");
    app.handle_key(key(KeyCode::Char('p')));
    app.tick();
    assert_has(&screen(&app, 80, 24), "step 121/200");
    app.handle_key(key(KeyCode::Up));
    app.handle_key(key(KeyCode::Up));
    let s = screen(&app, 80, 24);
    assert_eq!(app.scroll(), 2);
    assert_has(&s, "↑2");
    assert!(
        !s.contains("step      121"),
        "scrolled view still shows the newest line"
    );
    app.handle_key(key(KeyCode::PageUp));
    assert!(app.scroll() > 2);
    app.handle_key(key(KeyCode::End));
    assert_eq!(app.scroll(), 0);
    app.handle_key(key(KeyCode::Home));
    assert!(app.scroll() > 100);
    app.handle_key(key(KeyCode::PageDown));
    let _ = screen(&app, 80, 24);
    assert!(app.handle_key(key(KeyCode::Char('q'))));
    assert!(app.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)));
}

fn wait_story(app: &mut App, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        app.tick();
        let s = screen(app, 100, 30);
        if s.contains(want) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn story_comes_from_the_newest_checkpoint_in_the_background() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    let mut ev = representative(d.path());
    std::fs::write(d.path().join("step100.ckpt"), b"x").unwrap();
    let seen: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    let seen2 = seen.clone();
    let story: StoryFn = Box::new(move |p: &Path| {
        seen2.lock().unwrap().push(p.to_path_buf());
        if p.ends_with("bad.ckpt") {
            anyhow::bail!("{}: not a checkpoint", p.display());
        }
        Ok(format!(
            "Lily found {} in the garden.",
            p.file_name().unwrap().to_string_lossy()
        ))
    });
    write_log(&log, &ev);
    let mut app = app_for(&log, story);
    let s = wait_story(&mut app, "Lily found step100.ckpt");
    assert_has(&s, "Lily found step100.ckpt in the garden.");
    assert_has(&s, "Story");
    // A newer checkpoint event triggers a new story on its own.
    std::fs::write(d.path().join("step120.ckpt"), b"x").unwrap();
    let c = Event::Checkpoint {
        step: 120,
        path: d.path().join("step120.ckpt").display().to_string(),
        ms: 1.0,
        time: 0.0,
    };
    append(&log, &line(&c));
    ev.push(c);
    let s = wait_story(&mut app, "Lily found step120.ckpt");
    assert_has(&s, "Lily found step120.ckpt");
    // A trainer rewrites the same path at each checkpoint: a rewritten file is a new story.
    let calls = seen.lock().unwrap().len();
    let f = std::fs::File::options()
        .write(true)
        .open(d.path().join("step120.ckpt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    append(&log, &line(&ev[ev.len() - 1]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() == calls && Instant::now() < deadline {
        app.tick();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen.lock().unwrap().len(), calls + 1);
    // `g` asks again for the same checkpoint.
    let before = seen.lock().unwrap().len();
    app.handle_key(key(KeyCode::Char('g')));
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen.lock().unwrap().len(), before + 1);
    // A failing generator is shown as an error, not a crash.
    std::fs::write(d.path().join("bad.ckpt"), b"x").unwrap();
    append(
        &log,
        &line(&Event::Checkpoint {
            step: 121,
            path: d.path().join("bad.ckpt").display().to_string(),
            ms: 1.0,
            time: 0.0,
        }),
    );
    let s = wait_story(&mut app, "could not generate");
    assert_has(&s, "could not generate");
    assert_has(&s, "bad.ckpt");
    match &app.story().state {
        StoryState::Failed { error, .. } => assert!(error.contains("not a checkpoint"), "{error}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn run_folder_supplies_checkpoints_when_the_log_names_none() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.jsonl");
    write_log(&log, &[header(NO_PID), step(1)]);
    std::fs::write(d.path().join("a.ckpt"), b"x").unwrap();
    let mut cfg = DashboardConfig::new(&log);
    cfg.system_stats = false;
    cfg.ckpt_dir = Some(d.path().to_path_buf());
    let mut app = App::new(
        cfg,
        Box::new(|p: &Path| Ok(format!("story of {}", p.display()))),
    );
    let s = wait_story(&mut app, "story of");
    assert_has(&s, "a.ckpt");
}

#[test]
fn plot_writes_a_png_of_the_runs() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.jsonl");
    let b = d.path().join("b.jsonl");
    write_log(&a, &representative(d.path()));
    // A second run: higher loss, slower steps.
    let mut ev = vec![header(NO_PID)];
    for s in 1..=80 {
        if let Event::Step(mut r) = step(s) {
            r.loss += 0.5;
            r.ms *= 2.0;
            ev.push(Event::Step(r));
        }
    }
    write_log(&b, &ev);
    let out = d.path().join("plots/loss.png");
    let opts = PlotOptions {
        width: 900,
        height: 600,
        smooth: 0.9,
    };
    plot_logs(&[a.clone(), b.clone()], &out, &opts).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut r = dec.read_info().unwrap();
    let mut px = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut px).unwrap();
    assert_eq!((info.width, info.height), (900, 600));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let count = |c: [u8; 3]| px.chunks(3).filter(|p| *p == c).count();
    // The smoothed lines are drawn in the first two palette colours, at full strength.
    let blue = count([31, 119, 180]);
    let orange = count([255, 127, 14]);
    assert!(blue > 500 && orange > 500, "blue {blue}, orange {orange}");
    // Text (axis labels, titles, legend) is drawn: dark anti-aliased pixels exist.
    let dark = px.chunks(3).filter(|p| p.iter().all(|&v| v < 60)).count();
    assert!(dark > 2000, "only {dark} dark pixels: text missing?");
    // A log with no steps is refused with its name.
    let empty = d.path().join("empty.jsonl");
    write_log(&empty, &[header(NO_PID)]);
    let e = plot_logs(&[empty], &d.path().join("x.png"), &opts).unwrap_err();
    assert!(format!("{e:#}").contains("empty.jsonl"), "{e:#}");
}

#[test]
fn plot_command_line() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("run.jsonl");
    write_log(&a, &representative(d.path()));
    let out = d.path().join("loss.png");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args(["plot", "--log"])
        .arg(&a)
        .arg("-o")
        .arg(&out)
        .args(["--smooth", "0.8"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"\x89PNG");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args(["plot", "--log", "/nonexistent/run.jsonl", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/run.jsonl"));
}

#[cfg(unix)]
fn rusage_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

#[cfg(unix)]
#[test]
fn process_stats_of_this_test() {
    let pid = std::process::id();
    // Burn some CPU so the numbers are not all zero.
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < Duration::from_millis(300) {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    std::hint::black_box(x);
    let before = rusage_cpu_seconds();
    let s = read_process(pid).expect("own process readable");
    let after = rusage_cpu_seconds();
    // getrusage is an independent account of the same CPU time; /proc counts in clock ticks
    // (10 ms), ps in 10 ms too.
    assert!(
        s.cpu_seconds >= before - 0.03 && s.cpu_seconds <= after + 0.03,
        "{before} <= {} <= {after}",
        s.cpu_seconds
    );
    // Touch 64 MiB: resident memory grows by about that.
    let mut big = vec![0u8; 64 << 20];
    for i in (0..big.len()).step_by(4096) {
        big[i] = 1;
    }
    std::hint::black_box(&big);
    let s2 = read_process(pid).unwrap();
    assert!(
        s2.rss_bytes >= s.rss_bytes + (48 << 20),
        "rss {} -> {}",
        s.rss_bytes,
        s2.rss_bytes
    );
    drop(big);
    let mut m = ProcMonitor::new(pid, 0.0);
    assert!(m.sample().is_some_and(|r| r.cpu_percent.is_none()));
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(200) {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    std::hint::black_box(x);
    let r = m.sample().unwrap().clone();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let c = r.cpu_percent.unwrap();
    assert!(c > 0.0 && c <= 100.0 * cpus + 20.0, "cpu {c}%");
    assert_eq!(m.history.len(), 1);
    // A pid with no process, and a header written before this process started (so the pid
    // was reused), both read as gone.
    assert!(read_process(NO_PID).is_none());
    assert!(ProcMonitor::new(NO_PID, 0.0).sample().is_none());
    #[cfg(target_os = "linux")]
    assert!(ProcMonitor::new(pid, 1000.0).sample().is_none());
}

#[cfg(unix)]
#[test]
fn trainer_child_is_stopped_with_sigterm() {
    use anetrain::dashboard::child::TrainerChild;
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("t/train.out");
    let mut c = TrainerChild::spawn(
        Path::new("/bin/sh"),
        &[
            "-c".into(),
            "echo started; echo progress\r; exec sleep 30".into(),
        ],
        &out,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.output_tail(5).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.output_tail(5), vec!["started", "progress"]);
    assert!(c.poll_exit().is_none());
    let t = Instant::now();
    let st = c.stop(Duration::from_secs(5)).unwrap();
    assert_eq!(st.signal(), Some(libc::SIGTERM));
    assert!(t.elapsed() < Duration::from_secs(4));
}

/// The story panel's real generator on a checkpoint that `anetrain train` wrote, checked
/// against `anetrain generate` on the same checkpoint exported to a llama2.c model with the
/// same sampling settings.
#[test]
fn checkpoint_story_matches_anetrain_generate() {
    let exe = env!("CARGO_BIN_EXE_anetrain");
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("r");
    let st = std::process::Command::new(exe)
        .args([
            "train",
            "--steps",
            "2",
            "--batch",
            "1",
            "--seq",
            "32",
            "--threads",
            "1",
            "-q",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let ckpt = out.join("model.ckpt");
    let story = anetrain::cli::dashboard::checkpoint_story(out.join("run.jsonl"), None);
    let text = story(&ckpt).unwrap();
    let bin = d.path().join("m.bin");
    let st = std::process::Command::new(exe)
        .args(["export", "--ckpt"])
        .arg(&ckpt)
        .arg("-o")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let n = anetrain::cli::dashboard::STORY_TOKENS.to_string();
    let g = std::process::Command::new(exe)
        .args([
            "generate",
            "--temperature",
            "0.8",
            "--top-p",
            "0.9",
            "--seed",
            "42",
            "-n",
            &n,
        ])
        .arg("--model")
        .arg(&bin)
        .arg("--tokenizer")
        .arg(out.join("tokenizer.bin"))
        .output()
        .unwrap();
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let want = String::from_utf8_lossy(&g.stdout);
    assert!(!text.trim().is_empty());
    assert_eq!(text.trim_end(), want.trim_end());
    // Without a tokenizer anywhere, the panel gets an error that says what to do.
    let lone = d.path().join("lone");
    std::fs::create_dir(&lone).unwrap();
    std::fs::copy(&ckpt, lone.join("x.ckpt")).unwrap();
    let story = anetrain::cli::dashboard::checkpoint_story(lone.join("run.jsonl"), None);
    let e = story(&lone.join("x.ckpt")).unwrap_err();
    assert!(format!("{e:#}").contains("--tokenizer"), "{e:#}");
}
