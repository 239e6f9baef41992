//! `anetrain dashboard` (live terminal UI of a training run) and `anetrain plot` (PNG plots of
//! training logs).

use crate::dashboard::child::TrainerChild;
use crate::dashboard::{plot_logs, run_terminal, App, DashboardConfig, PlotOptions, StoryFn};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
#[command(
    after_help = "Keys: q quit · g story from the newest checkpoint · p pause following · \
                        ↑↓ PgUp PgDn Home End scroll the event log.\n\n\
                        Examples:\n  anetrain dashboard --log run.jsonl\n  \
                        anetrain dashboard --run runs/small\n  \
                        anetrain dashboard --train -- --model stories260k --steps 2000"
)]
pub struct DashboardArgs {
    /// The run's JSONL log (written by `anetrain train --log FILE`).
    #[arg(long, value_name = "FILE", conflicts_with = "run")]
    pub log: Option<PathBuf>,
    /// A run folder: its log is DIR/run.jsonl and its checkpoints DIR/*.ckpt.
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Start `anetrain train ARGS… --log FILE` (the arguments after `--`) and follow it.
    #[arg(long)]
    pub train: bool,
    /// With --train: leave the trainer running when the dashboard quits (otherwise it is
    /// stopped with SIGTERM).
    #[arg(long, requires = "train")]
    pub detach: bool,
    /// EMA weight of the smoothed loss line, in [0, 1): 0 = none, 0.9 ≈ the last ten steps.
    #[arg(long, default_value_t = 0.9)]
    pub smooth: f64,
    /// Do not sample CPU, memory and power.
    #[arg(long)]
    pub no_stats: bool,
    /// Arguments for `anetrain train` (after `--`, with --train).
    #[arg(last = true, value_name = "TRAIN_ARGS")]
    pub train_args: Vec<String>,
}

#[derive(clap::Args)]
pub struct PlotArgs {
    /// A training log; repeat to overlay several runs.
    #[arg(long = "log", value_name = "FILE", required = true)]
    pub logs: Vec<PathBuf>,
    /// The PNG file to write.
    #[arg(
        short = 'o',
        long = "out",
        value_name = "PNG",
        default_value = "loss.png"
    )]
    pub out: PathBuf,
    /// EMA weight of the smoothed lines, in [0, 1).
    #[arg(long, default_value_t = 0.9)]
    pub smooth: f64,
    #[arg(long, default_value_t = 1200)]
    pub width: u32,
    #[arg(long, default_value_t = 800)]
    pub height: u32,
}

fn check_smooth(s: f64) -> Result<()> {
    if !(0.0..1.0).contains(&s) {
        bail!("--smooth {s}: must be at least 0 and below 1 (0.9 is a good start)");
    }
    Ok(())
}

/// The story function used until the dashboard is given a real one: it says where the
/// checkpoint is and that stories are not generated here.
pub fn placeholder_story() -> StoryFn {
    Box::new(|ckpt: &Path| {
        Ok(format!(
            "Stories are not generated from checkpoints by this dashboard build. \
             Newest checkpoint: {}",
            ckpt.display()
        ))
    })
}

pub fn run_dashboard(a: DashboardArgs) -> Result<()> {
    run_dashboard_with(a, placeholder_story())
}

/// The value of `--log` in train arguments (`--log FILE` or `--log=FILE`), if present.
fn log_in_args(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--log" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--log=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// `anetrain dashboard` with the given story function.
pub fn run_dashboard_with(a: DashboardArgs, generate: StoryFn) -> Result<()> {
    check_smooth(a.smooth)?;
    if !a.train && !a.train_args.is_empty() {
        bail!("arguments after `--` are for the trainer: add --train to start one");
    }
    let (mut log, ckpt_dir) = match (&a.log, &a.run) {
        (Some(l), _) => (Some(l.clone()), None),
        (None, Some(d)) => (Some(d.join("run.jsonl")), Some(d.clone())),
        (None, None) => (None, None),
    };
    let mut child = None;
    if a.train {
        let mut args = vec!["train".to_string()];
        args.extend(a.train_args.iter().cloned());
        match (log_in_args(&a.train_args), &log) {
            (Some(given), Some(ours)) if given != *ours => bail!(
                "the trainer's --log {} and the dashboard's log {} differ: give one",
                given.display(),
                ours.display()
            ),
            (Some(given), _) => log = Some(given),
            (None, _) => {
                let l = log.clone().unwrap_or_else(|| {
                    PathBuf::from(format!(
                        "runs/{}/run.jsonl",
                        crate::train::log::now_unix() as u64
                    ))
                });
                args.push("--log".into());
                args.push(l.display().to_string());
                log = Some(l);
            }
        }
        let log = log.as_ref().expect("set above");
        let out = log.with_extension("out");
        let exe = std::env::current_exe().context("cannot find the anetrain executable")?;
        child = Some(TrainerChild::spawn(&exe, &args, &out)?);
    }
    let Some(log) = log else {
        bail!("which run? give --log FILE, --run DIR, or --train -- TRAIN_ARGS");
    };
    if !a.train && !log.exists() {
        eprintln!(
            "{}: no such file yet; waiting for it to appear (q quits)",
            log.display()
        );
    }
    let cfg = DashboardConfig {
        log: log.clone(),
        ckpt_dir,
        smooth: a.smooth,
        system_stats: !a.no_stats,
    };
    let mut app = App::new(cfg, generate);
    if let Some(c) = child {
        app.attach_trainer(c);
    }
    let r = run_terminal(&mut app);
    if let Some(mut c) = app.take_trainer() {
        if let Some(s) = c.poll_exit() {
            if r.is_ok() && !s.success() {
                bail!(
                    "the trainer failed ({s}); its output is in {}",
                    c.output().display()
                );
            }
            eprintln!("trainer exited ({s}); output in {}", c.output().display());
        } else if a.detach {
            eprintln!(
                "trainer pid {} keeps running; log {}, output {}",
                c.pid(),
                log.display(),
                c.output().display()
            );
        } else {
            eprintln!("stopping trainer pid {} (SIGTERM)…", c.pid());
            match c.stop(Duration::from_secs(30)) {
                Some(s) => eprintln!("trainer stopped ({s}); output in {}", c.output().display()),
                None => eprintln!("trainer pid {} did not report its exit", c.pid()),
            }
        }
    }
    r
}

pub fn run_plot(a: PlotArgs) -> Result<()> {
    check_smooth(a.smooth)?;
    let opts = PlotOptions {
        width: a.width,
        height: a.height,
        smooth: a.smooth,
    };
    plot_logs(&a.logs, &a.out, &opts)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
