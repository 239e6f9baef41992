//! `anetrain dashboard` (live terminal UI of a training run) and `anetrain plot` (PNG plots of
//! training logs).

use crate::cli::train::TrainArgs;
use crate::dashboard::child::TrainerChild;
use crate::dashboard::{plot_logs, run_terminal, App, DashboardConfig, PlotOptions, StoryFn};
use crate::train::log::{read_log, Event};
use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::{Args as _, FromArgMatches as _};
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
    /// Tokenizer for the story panel (default: the run's own, from its log header, else
    /// tokenizer.bin beside the checkpoint).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
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
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u32).range(1..))]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 800, value_parser = clap::value_parser!(u32).range(1..))]
    pub height: u32,
}

fn check_smooth(s: f64) -> Result<()> {
    if !(0.0..1.0).contains(&s) {
        bail!("--smooth {s}: must be at least 0 and below 1 (0.9 is a good start)");
    }
    Ok(())
}

/// Positions generated for a story (prompt included), as the trainer's own samples.
pub const STORY_TOKENS: usize = 200;

/// The story panel's generator: loads the checkpoint, finds a tokenizer (`tokenizer`, else
/// the newest run header's in `log`, else `tokenizer.bin` beside the checkpoint) and samples
/// [`STORY_TOKENS`] positions from an empty prompt with temperature 0.8 and top-p 0.9 — the
/// trainer's sample settings — and a fixed seed, so stories of successive checkpoints differ
/// only by what the model learned.
pub fn checkpoint_story(log: PathBuf, tokenizer: Option<PathBuf>) -> StoryFn {
    Box::new(move |ckpt: &Path| {
        let tok_path = find_tokenizer(&log, tokenizer.as_deref(), ckpt)?;
        if crate::tokenizer::hf::is_hf_tokenizer(&tok_path) {
            let tok = crate::tokenizer::hf::HfTokenizer::load(&tok_path)?;
            let c = crate::train::checkpoint::load(ckpt)?;
            return crate::generate::generate_text_hf(
                &c.params,
                &tok,
                "",
                STORY_TOKENS,
                0.8,
                0.9,
                42,
            )
            .with_context(|| format!("{} with {}", ckpt.display(), tok_path.display()));
        }
        let tok = crate::tokenizer::Tokenizer::load(&tok_path)?;
        let c = crate::train::checkpoint::load(ckpt)?;
        crate::generate::generate_text(&c.params, &tok, "", STORY_TOKENS, 0.8, 0.9, 42)
            .with_context(|| format!("{} with {}", ckpt.display(), tok_path.display()))
    })
}

fn find_tokenizer(log: &Path, given: Option<&Path>, ckpt: &Path) -> Result<PathBuf> {
    if let Some(t) = given {
        return Ok(t.to_path_buf());
    }
    let from_header = read_log(log).ok().and_then(|ev| {
        ev.into_iter().rev().find_map(|e| match e {
            Event::Run(h) => h.tokenizer,
            _ => None,
        })
    });
    if let Some(t) = from_header {
        let p = PathBuf::from(&t);
        if p.is_absolute() || p.exists() {
            return Ok(p);
        }
        if let Some(d) = log.parent().filter(|d| d.join(&p).exists()) {
            return Ok(d.join(p));
        }
    }
    let beside = ckpt.with_file_name("tokenizer.bin");
    if beside.exists() {
        return Ok(beside);
    }
    bail!(
        "no tokenizer for the story: the run's log names none and there is no {}; \
         pass --tokenizer",
        beside.display()
    )
}

pub fn run_dashboard(a: DashboardArgs) -> Result<()> {
    run_dashboard_with(a, None)
}

/// What the dashboard follows when it starts the trainer: the trainer's arguments are parsed
/// as `anetrain train` parses them (so mistakes show before the screen is taken over), and
/// the dashboard's `--log`/`--run` are passed on as `--log`/`--out` unless the trainer's
/// arguments already say otherwise.
#[derive(Debug)]
struct TrainPlan {
    args: Vec<String>,
    log: PathBuf,
    out: PathBuf,
}

fn plan_training(a: &DashboardArgs) -> Result<TrainPlan> {
    let cmd = TrainArgs::augment_args(clap::Command::new("anetrain train").no_binary_name(true));
    let m = cmd
        .try_get_matches_from(&a.train_args)
        .map_err(|e| anyhow!("trainer arguments: {}", e.render()))?;
    let ta = TrainArgs::from_arg_matches(&m).map_err(|e| anyhow!("{e}"))?;
    let out_given = m.value_source("out") == Some(ValueSource::CommandLine);
    let mut args = vec!["train".to_string()];
    args.extend(a.train_args.iter().cloned());
    let mut out = ta.out.clone();
    if let Some(dir) = &a.run {
        if out_given && ta.out != *dir {
            bail!(
                "--run {} and the trainer's --out {} differ: give one",
                dir.display(),
                ta.out.display()
            );
        }
        if !out_given {
            args.extend(["--out".to_string(), dir.display().to_string()]);
        }
        out = dir.clone();
    }
    let log = match (&ta.log, &a.log) {
        (Some(t), Some(d)) if t != d => bail!(
            "the trainer's --log {} and the dashboard's --log {} differ: give one",
            t.display(),
            d.display()
        ),
        (Some(t), _) => t.clone(),
        (None, Some(d)) => {
            args.extend(["--log".to_string(), d.display().to_string()]);
            d.clone()
        }
        (None, None) => out.join("run.jsonl"),
    };
    Ok(TrainPlan { args, log, out })
}

/// `anetrain dashboard` with the given story function (`None`: [`checkpoint_story`]).
pub fn run_dashboard_with(a: DashboardArgs, generate: Option<StoryFn>) -> Result<()> {
    check_smooth(a.smooth)?;
    if !a.train && !a.train_args.is_empty() {
        bail!("arguments after `--` are for the trainer: add --train to start one");
    }
    let (log, ckpt_dir, child) = if a.train {
        let plan = plan_training(&a)?;
        let output = plan.log.with_extension("out");
        let exe = std::env::current_exe().context("cannot find the anetrain executable")?;
        let child = TrainerChild::spawn(&exe, &plan.args, &output)?;
        (plan.log, Some(plan.out), Some(child))
    } else {
        match (&a.log, &a.run) {
            (Some(l), _) => (l.clone(), None, None),
            (None, Some(d)) => (d.join("run.jsonl"), Some(d.clone()), None),
            (None, None) => {
                bail!("which run? give --log FILE, --run DIR, or --train -- TRAIN_ARGS")
            }
        }
    };
    let generate = generate.unwrap_or_else(|| checkpoint_story(log.clone(), a.tokenizer.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        d: DashboardArgs,
    }

    fn plan(args: &[&str]) -> Result<TrainPlan> {
        let c = Cli::try_parse_from(std::iter::once("dashboard").chain(args.iter().copied()))
            .map_err(|e| anyhow!("{e}"))?;
        plan_training(&c.d)
    }

    #[test]
    fn training_plans_pass_the_dashboards_paths_on() {
        let p = plan(&["--train", "--run", "runs/a", "--", "--steps", "5"]).unwrap();
        assert_eq!(p.args, ["train", "--steps", "5", "--out", "runs/a"]);
        assert_eq!(p.log, PathBuf::from("runs/a/run.jsonl"));
        assert_eq!(p.out, PathBuf::from("runs/a"));
        let p = plan(&["--train", "--", "--out", "o", "--log", "x.jsonl"]).unwrap();
        assert_eq!(p.args, ["train", "--out", "o", "--log", "x.jsonl"]);
        assert_eq!(p.log, PathBuf::from("x.jsonl"));
        let p = plan(&["--train", "--log", "y.jsonl"]).unwrap();
        assert_eq!(p.args, ["train", "--log", "y.jsonl"]);
        // The trainer's own default folder.
        let p = plan(&["--train"]).unwrap();
        assert_eq!(p.log, PathBuf::from("runs/default/run.jsonl"));
        assert!(plan(&["--train", "--run", "a", "--", "--out", "b"]).is_err());
        assert!(plan(&["--train", "--log", "a", "--", "--log", "b"]).is_err());
        let e = plan(&["--train", "--", "--no-such-flag"]).unwrap_err();
        assert!(format!("{e}").contains("--no-such-flag"), "{e}");
    }
}
