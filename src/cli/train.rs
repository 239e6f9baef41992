//! `anetrain train`, `export`, `eval`, `grad` and `bench`.

use crate::data::TokenData;
use crate::kernels::BackendKind;
use crate::model::llama2c::{Format, Model};
use crate::model::ModelSource;
use crate::train::backend::{make_kernels, set_threads, BackendChoice};
use crate::train::bench::{self, BenchSpec};

use crate::train::eval;
use crate::train::gemm_choice::GemmArgs;
use crate::train::optim::AdamWConfig;
use crate::train::report::BenchReport;
use crate::train::session::{self, DataChoice, Finished, Plan};
use crate::train::settings::{self, Sampling, Settings, DEFAULT_CKPT, DEFAULT_OUT};
use crate::train::{builtin, checkpoint};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use crate::ane::Pipeline;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "With no arguments, trains a stories260k-shaped model on the built-in \
corpus of generated children's stories for 1000 steps, stopping with a checkpoint after 180 s \
of training if it has not finished (and printing the command that continues it; --steps or \
--time-limit 0 runs to the end), then prints a story and where the checkpoint, tokenizer and \
log went. `anetrain generate` then works with no flags."
)]
pub struct TrainArgs {
    /// Model to train: a preset (stories260k, stories15m, stories42m, stories110m,
    /// qwen3-0.6b-shape) or config file for random init, a llama2.c .bin or a .ckpt to start from.
    #[arg(long, short, default_value = settings::DEFAULT_MODEL)]
    pub model: String,
    /// Token data: flat uint16 ids (llama2.c pretokenized format). Default: the built-in corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation token data (default: a held-out tail of --data, see --val-fraction).
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Fraction of --data held out as the validation tail when --val-data is absent (0 = none).
    #[arg(long, default_value_t = 0.02, value_parser = super::fraction)]
    pub val_fraction: f64,
    /// How windows are drawn from the data.
    #[arg(long, value_enum, default_value_t = Sampling::Random)]
    pub sampling: Sampling,
    /// Sequences per micro-step.
    #[arg(long, short, default_value_t = 8, value_parser = super::at_least_one)]
    pub batch: usize,
    /// Tokens per sequence (default: min(256, the model's seq_len)).
    #[arg(long, value_parser = super::at_least_one)]
    pub seq: Option<usize>,
    /// Micro-steps accumulated per optimizer step.
    #[arg(long, default_value_t = 1, value_parser = super::at_least_one)]
    pub accum: usize,
    /// Optimizer steps [default: 1000] (the built-in corpus run without --steps also stops
    /// after 180 s of training: see --time-limit).
    #[arg(long, value_parser = super::at_least_one_u64)]
    pub steps: Option<u64>,
    /// Peak learning rate (default: 1e-3; 3e-3 for the built-in corpus run; a tenth of
    /// that when --model holds trained weights).
    #[arg(long, value_parser = super::learning_rate)]
    pub lr: Option<f32>,
    /// Final learning rate of the cosine decay (default: lr/10).
    #[arg(long, value_parser = super::non_negative)]
    pub min_lr: Option<f32>,
    /// Linear warm-up steps (default: 5% of --steps; when --model holds trained weights,
    /// 10% and at least 5).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// AdamW decoupled weight decay (not applied to the RMSNorm gains).
    #[arg(long, default_value_t = 0.1, value_parser = super::unit_interval)]
    pub weight_decay: f32,
    /// AdamW β₁: decay of the first-moment (mean) estimate.
    #[arg(long, default_value_t = 0.9, value_parser = super::unit_interval)]
    pub beta1: f32,
    /// AdamW β₂: decay of the second-moment (variance) estimate.
    #[arg(long, default_value_t = 0.95, value_parser = super::unit_interval)]
    pub beta2: f32,
    /// AdamW ε added to √v̂ in the update's denominator.
    #[arg(long, default_value_t = 1e-8, value_parser = super::positive)]
    pub eps: f32,
    /// Clip the global gradient norm (0 disables).
    #[arg(long, default_value_t = 1.0, value_parser = super::non_negative)]
    pub grad_clip: f32,
    /// Seed for initialisation and data sampling.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Worker threads (default, or 0: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Folder for the checkpoint, log, and (built-in corpus) tokenizer and data.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// Checkpoint path (default: OUT/model.ckpt).
    #[arg(long)]
    pub ckpt: Option<PathBuf>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub ckpt_every: u64,
    /// Checkpoints kept: the newest plus K−1 older copies (NAME.1, NAME.2, …).
    #[arg(long, default_value_t = 2, value_parser = super::at_least_one)]
    pub keep_ckpts: usize,
    /// Continue exactly from the checkpoint at --ckpt: its batch, seq, accum, steps,
    /// optimizer, seed and sampling (a flag that would change them is refused), and its
    /// intervals and tokenizer unless given.
    #[arg(long)]
    pub resume: bool,
    /// Start a new run even though --ckpt holds one: the old checkpoint, its older copies
    /// and the log are replaced (without this, a new run into a run's folder is refused).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Stop after this many seconds of training with a checkpoint, as at --until (0: no
    /// limit; default: 180 for the built-in corpus run without --steps, none otherwise).
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<u64>,
    /// Stop after this step with a checkpoint (the schedule still spans --steps); continue
    /// later with --resume.
    #[arg(long, value_parser = super::at_least_one_u64)]
    pub until: Option<u64>,
    /// Validation every N steps (0 disables).
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Batches per validation.
    #[arg(long, default_value_t = 8, value_parser = super::at_least_one)]
    pub eval_batches: usize,
    /// Log a generated sample every N steps (needs a tokenizer; 0 disables).
    #[arg(long, default_value_t = 0)]
    pub sample_every: u64,
    /// Tokenizer (llama2.c tokenizer.bin) for samples and for `generate` later.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// JSONL event log (default: OUT/run.jsonl).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// Neural Engine pipeline (ane, ane-sim backends).
    #[arg(long, value_enum, default_value_t = Pipeline::Dynamic)]
    pub pipeline: Pipeline,
    /// Neural Engine compile budget per process (default: the chip profile's, 100; compiles
    /// start failing near 119).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub compile_budget: Option<u32>,
    /// Neural Engine chip profile: conservative, m1, m2, m3, m4, m5, m1-ultra, m2-ultra,
    /// m3-ultra, optionally with single-rule overrides (`m4,dialect=ios16`); default: the chip
    /// this runs on, else conservative.
    #[arg(long)]
    pub ane_profile: Option<String>,
    /// Stop when the Neural Engine refuses a program, instead of running that kernel on the
    /// CPU (a warning and a `fallback` log event).
    #[arg(long)]
    pub ane_strict: bool,
    /// Consecutive non-finite steps tolerated before stopping.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_bad_steps: u32,
    /// Initial loss scale for the fp16 backends (default: 2^⌈log2(batch·seq)⌉; dynamic:
    /// halves on overflow and skips the update, doubles after 1000 finite steps).
    #[arg(long, value_parser = super::positive)]
    pub loss_scale: Option<f32>,
    /// No progress, banner, summary or report (warnings, errors and, after a stop, the
    /// command that continues the run still print).
    #[arg(long, short)]
    pub quiet: bool,
    /// Train data parallel as one rank of an MPI job (`mpirun -np N anetrain train …
    /// --distributed mpi`): --batch and --accum are per rank, rank 0 writes the checkpoint,
    /// the log and samples. Needs a build with `--features mpi` (docs/DISTRIBUTED.md).
    #[arg(long, value_enum)]
    pub distributed: Option<crate::train::distributed::Kind>,
    /// With --distributed: the ranks compare a checksum of their parameters every N steps
    /// and at the end, and stop if they differ (0: only at the end).
    #[arg(long, default_value_t = crate::train::trainer::DEFAULT_CHECK_EVERY, requires = "distributed")]
    pub check_every: u64,
    #[command(flatten)]
    pub gemm: GemmArgs,
}

pub fn run_train(a: TrainArgs, given: &BTreeSet<String>) -> Result<()> {
    // Data parallel: an error on any rank ends every rank (MPI_Abort, naming the rank).
    let distributed = a.distributed.is_some();
    match train(a, given) {
        // A run stopped by Ctrl-C ended cleanly on every rank: only the exit code is left.
        Err(e) if distributed && e.is::<super::ExitStatus>() => {
            crate::train::distributed::finalize();
            Err(e)
        }
        r => crate::train::distributed::conclude(distributed, r),
    }
}

fn train(a: TrainArgs, given: &BTreeSet<String>) -> Result<()> {
    let builtin = a.data.is_none();
    let steps = a.steps.unwrap_or(settings::DEFAULT_STEPS);
    // Starting from trained weights (not resuming): fine-tuning defaults.
    let fine_tune = !a.resume && ModelSource::resolve(&a.model).is_ok_and(|src| src.has_weights());
    let lr = a.lr.unwrap_or(if fine_tune {
        settings::default_fine_tune_lr(builtin)
    } else {
        settings::default_lr(builtin)
    });
    let warmup = a.warmup.unwrap_or(if fine_tune {
        settings::default_fine_tune_warmup(steps)
    } else {
        settings::default_warmup(steps)
    });
    if fine_tune && !a.quiet && (a.lr.is_none() || a.warmup.is_none()) {
        eprintln!(
            "fine-tuning {}: lr {lr}, warm-up {warmup} steps (defaults for trained weights; \
             --lr and --warmup override them)",
            a.model
        );
    }
    let plan = Plan {
        model: a.model.clone(),
        data: match &a.data {
            Some(p) => DataChoice::Files {
                data: p.clone(),
                val: a.val_data.clone(),
                val_fraction: a.val_fraction,
            },
            None => DataChoice::Builtin {
                val_fraction: a.val_fraction,
            },
        },
        out: a.out.clone(),
        resume: a.resume,
        overwrite: a.overwrite,
        given: given.clone(),
        threads: a.threads,
        backend: BackendChoice {
            kind: a.backend,
            pipeline: a.pipeline,
            compile_budget: a.compile_budget,
            ane_profile: a.ane_profile.clone(),
            ane_strict: a.ane_strict,
            gemm: a.gemm.gemm.clone(),
        },
        seq: a.seq,
        loss_scale: a.loss_scale,
        time_limit: match a.time_limit {
            Some(0) => None,
            Some(s) => Some(s as f64),
            None if builtin && a.steps.is_none() => Some(settings::BUILTIN_TIME_LIMIT_S as f64),
            None => None,
        },
        settings: Settings {
            batch: a.batch,
            seq: 0,
            accum: a.accum,
            steps,
            optim: AdamWConfig {
                lr,
                min_lr: a.min_lr.unwrap_or(settings::default_min_lr(lr)),
                warmup,
                total_steps: steps,
                beta1: a.beta1,
                beta2: a.beta2,
                eps: a.eps,
                weight_decay: a.weight_decay,
                grad_clip: a.grad_clip,
            },
            seed: a.seed,
            sampling: a.sampling,
            backend: a.backend,
            ckpt: a.ckpt.clone().unwrap_or_else(|| a.out.join("model.ckpt")),
            ckpt_every: a.ckpt_every,
            keep_ckpts: a.keep_ckpts,
            eval_every: a.eval_every,
            eval_batches: a.eval_batches,
            sample_every: a.sample_every,
            log: Some(a.log.clone().unwrap_or_else(|| a.out.join("run.jsonl"))),
            tokenizer: a.tokenizer.clone(),
            max_bad_steps: a.max_bad_steps.max(1),
            loss_scale: 1.0,
            quiet: a.quiet,
            until: a.until,
        },
        distributed: a.distributed,
        check_every: a.check_every,
    };
    let done = session::run(plan)?;
    if done.outcome.restart {
        return session::restart_process();
    }
    if done.trainer.rank_of().0 > 0 {
        // Rank 0 reports for the run.
        return Ok(());
    }
    if !a.quiet {
        print_summary(&done, builtin, a.seed)?;
    }
    if let Some(why) = done.outcome.failure() {
        anyhow::bail!("{why}");
    }
    let (step, steps) = (done.trainer.step, done.trainer.s.steps);
    if done.outcome.interrupted {
        eprintln!(
            "interrupted at step {step} of {steps}; continue with: {}",
            resume_command()
        );
        // Ctrl-C: 128 + SIGINT, as shells expect of an interrupted command. SIGTERM is the
        // supervisor's (the dashboard's) request for a clean stop, which this is: 0.
        let sig = crate::train::trainer::STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst);
        if sig == libc::SIGINT {
            return Err(super::ExitStatus(130).into());
        }
    }
    if step < steps && !done.outcome.interrupted {
        let why = if done.outcome.time_limited {
            match a.time_limit {
                Some(s) => format!("the --time-limit of {s} s"),
                None => format!(
                    "the built-in run's time limit of {} s; --steps or --time-limit 0 runs to \
                     the end",
                    settings::BUILTIN_TIME_LIMIT_S
                ),
            }
        } else {
            "--until".to_string()
        };
        eprintln!(
            "stopped at step {step} of {steps} ({why}); continue with: {}",
            resume_command()
        );
    }
    Ok(())
}

/// The command that continues this run: this one without `--until` and with `--resume`.
fn resume_command() -> String {
    let mut out = vec!["anetrain".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--until" {
            args.next();
            continue;
        }
        if a.starts_with("--until=") || a == "--overwrite" {
            continue;
        }
        out.push(a);
    }
    if !out.iter().any(|a| a == "--resume") {
        out.push("--resume".into());
    }
    out.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a finished run prints: the loss, the corpus's entropy floor, a story, where the
/// files went and what to run next.
fn print_summary(done: &Finished, builtin: bool, seed: u64) -> Result<()> {
    let (out, s) = (&done.outcome, &done.trainer.s);
    if let Some(first) = out.first_loss {
        eprintln!(
            "loss {first:.4} -> {:.4}{}{}",
            out.last_loss,
            out.val_loss
                .map(|v| format!(" (validation {v:.4})"))
                .unwrap_or_default(),
            if out.skipped > 0 {
                format!(
                    "; {} of {} steps skipped (non-finite)",
                    out.skipped, out.steps_done
                )
            } else {
                String::new()
            }
        );
    }
    if builtin {
        let h = builtin::unigram_entropy(&done.data);
        eprintln!("unigram entropy of the corpus: {h:.4} nats/token (a model that ignores context cannot go below it)");
    }
    if let (Some(t), false) = (&done.tokenizer, out.interrupted) {
        let params = done.trainer.params();
        let story = crate::generate::generate_text(params, t, "", 256, 0.8, 0.9, seed)?;
        println!(
            "--- a story from the trained model ---\n{}\n---",
            story.trim()
        );
    } else if let (Some(p), false) = (&s.tokenizer, out.interrupted) {
        // A Hugging Face tokenizer.json (a model from a Hugging Face folder).
        if crate::tokenizer::hf::is_hf_tokenizer(p) {
            let t = crate::tokenizer::hf::HfTokenizer::load(p)?;
            let params = done.trainer.params();
            let text = crate::generate::generate_text_hf(params, &t, "", 128, 0.8, 0.9, seed)?;
            println!(
                "--- a sample from the trained model ---\n{}\n---",
                text.trim()
            );
        }
    }
    eprintln!("checkpoint: {}", out.ckpt.display());
    if let Some(log) = &s.log {
        eprintln!("log:        {}", log.display());
    }
    if let Some(t) = &s.tokenizer {
        eprintln!("tokenizer:  {}", t.display());
    }
    if !out.interrupted {
        eprintln!(
            "next: anetrain generate{}   |   anetrain export --ckpt {} -o model.bin",
            if out.ckpt == Path::new(DEFAULT_CKPT) {
                String::new()
            } else {
                format!(" --model {}", out.ckpt.display())
            },
            out.ckpt.display()
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "--format hf writes a Hugging Face model folder (config.json, model.safetensors \
and, for a model that came from one, its tokenizer files), which transformers loads with \
from_pretrained. A model read from a Hugging Face folder keeps its architecture and config; \
a llama2.c model becomes a LlamaForCausalLM."
)]
pub struct ExportArgs {
    /// Checkpoint to export.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub ckpt: Option<PathBuf>,
    /// Or any model with weights: a llama2.c .bin, a .ckpt or a Hugging Face model folder.
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    /// Output: a llama2.c model file, or for --format hf a folder.
    #[arg(long, short, value_name = "PATH")]
    pub out: PathBuf,
    /// Format: llama2c (legacy, version 0, what run.c reads), v1 (llama2.c version 1) or hf
    /// (a Hugging Face model folder).
    #[arg(long, value_enum, default_value_t = ExportFormat::Legacy)]
    pub format: ExportFormat,
    /// Element type of --format hf's safetensors (default: the dtype the model was read in,
    /// else f32).
    #[arg(long, value_enum)]
    pub dtype: Option<crate::model::hf::Dtype>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    #[value(alias = "llama2c")]
    Legacy,
    V1,
    Hf,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    let (params, step, tokenizer, from) = match (&a.ckpt, &a.model) {
        (Some(ck), _) => {
            let ck_data = checkpoint::load_or_explain(ck)?;
            (
                ck_data.params,
                Some(ck_data.header.step),
                ck_data.header.tokenizer,
                ck.clone(),
            )
        }
        (None, Some(m)) => {
            let src = ModelSource::with_weights(m);
            (crate::train::load_params(&src, 0)?, None, None, m.clone())
        }
        (None, None) => anyhow::bail!("give --ckpt FILE or --model MODEL to export"),
    };
    let c = params.config().clone();
    let steps = step.map(|s| format!(", step {s}")).unwrap_or_default();
    if a.format == ExportFormat::Hf {
        let dtype = a.dtype.unwrap_or(crate::model::hf::default_dtype(&c));
        let copied = crate::model::hf::save(&a.out, &params, dtype)
            .with_context(|| format!("exporting {} to {}", from.display(), a.out.display()))?;
        eprintln!(
            "wrote {} ({}, {}, {:.2}M params{steps})",
            a.out.display(),
            c.hf.as_ref()
                .map_or("LlamaForCausalLM", |o| o.architecture.as_str()),
            dtype.torch_name(),
            c.num_params() as f64 / 1e6,
        );
        if copied.is_empty() {
            eprintln!("tokenizer: no tokenizer files to copy (add the model's tokenizer.json to the folder)");
        } else {
            eprintln!("copied: {}", copied.join(", "));
        }
        return Ok(());
    }
    if a.dtype.is_some() {
        anyhow::bail!("--dtype applies to --format hf only (llama2.c files are f32)");
    }
    if c.qk_norm {
        anyhow::bail!(
            "{}: a {} model has per-head q/k norms (q_norm, k_norm), which llama2.c's format \
             cannot express; export it with --format hf",
            from.display(),
            c.hf.as_ref().map_or("Qwen3", |o| o.architecture.as_str())
        );
    }
    if c.rope_scaling.is_some() {
        anyhow::bail!(
            "{}: the model uses Llama 3 RoPE scaling (rope_scaling), which llama2.c's format \
             cannot express; export it with --format hf",
            from.display()
        );
    }
    let m = Model::from_params(params);
    let f = match a.format {
        ExportFormat::V1 => Format::V1,
        _ => Format::Legacy,
    };
    m.save(&a.out, f)?;
    eprintln!(
        "wrote {} ({:?}, {:.2}M params{steps})",
        a.out.display(),
        f,
        m.config().num_params() as f64 / 1e6,
    );
    match &tokenizer {
        Some(t) => eprintln!(
            "tokenizer: {t} (the one it was trained with; run.c: `run {} -z {t}`)",
            a.out.display()
        ),
        None => eprintln!("tokenizer: none recorded in {}", from.display()),
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "By default the last 2% of --data is evaluated, cut at a story start \
exactly as `anetrain train --data FILE` holds out its validation tail: the text a model trained \
on FILE did not see. --all evaluates the whole file (a separate validation file); \
--eval-batches N stops after N batches. A progress bar shows on a terminal (-q hides it)."
)]
pub struct EvalArgs {
    /// llama2.c .bin model, .ckpt checkpoint or Hugging Face model folder [default:
    /// runs/default/model.ckpt].
    #[arg(long, short, default_value = DEFAULT_CKPT, hide_default_value = true)]
    pub model: PathBuf,
    /// Token data (uint16 ids).
    #[arg(long)]
    pub data: PathBuf,
    /// Windows per batch.
    #[arg(long, short, default_value_t = 8, value_parser = super::at_least_one)]
    pub batch: usize,
    /// Tokens per window (default: min(256, seq_len)).
    #[arg(long, value_parser = super::at_least_one)]
    pub seq: Option<usize>,
    /// Evaluate the last FRACTION of --data, cut as train cuts its validation tail (train's
    /// --val-fraction; 0: the whole file).
    #[arg(long, default_value_t = 0.02, value_parser = super::fraction, value_name = "FRACTION")]
    pub val_fraction: f64,
    /// Evaluate the whole of --data, not its tail.
    #[arg(long, conflicts_with = "val_fraction")]
    pub all: bool,
    /// At most N batches of consecutive windows from the start of the part evaluated
    /// (default: all of it); the same name as train's --eval-batches.
    #[arg(long, alias = "batches", value_name = "N", value_parser = super::at_least_one)]
    pub eval_batches: Option<usize>,
    /// Worker threads (default, or 0: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub gemm: GemmArgs,
}

pub fn run_eval(a: EvalArgs) -> Result<()> {
    set_threads(a.threads);
    if !a.model.exists() && a.model == Path::new(DEFAULT_CKPT) {
        anyhow::bail!(
            "no --model given and no default run at {} (train one with `anetrain train`, or pass --model FILE)",
            a.model.display()
        );
    }
    let params = crate::train::load_params(&ModelSource::with_weights(&a.model), 0)?;
    let seq = a.seq.unwrap_or(settings::default_seq(params.config()));
    crate::train::backend::select_gemm(&a.gemm.gemm, params.config(), a.batch, seq)?;
    let file = TokenData::open(&a.data)?;
    let (data, part) = if a.all || a.val_fraction == 0.0 {
        (file, "all".to_string())
    } else {
        let (_, tail) = file
            .split_tail(a.val_fraction)
            .map_err(|e| anyhow::anyhow!("--val-fraction {}: {e:#}", a.val_fraction))?;
        let pct = 100.0 * tail.len() as f64 / file.len().max(1) as f64;
        (tail, format!("the last {pct:.1}%"))
    };
    let total = eval::eval_batches(&data, a.batch, seq, a.eval_batches);
    let bar = EvalProgress::new(total as u64, a.quiet);
    let t = std::time::Instant::now();
    let (loss, windows) = eval::eval_file_with(
        &params,
        &data,
        a.batch,
        seq,
        a.eval_batches,
        &mut |done, _| bar.update(done as u64),
    )?;
    bar.finish();
    println!(
        "loss {loss:.4}  perplexity {:.3}  ({windows} windows of {seq} tokens from {part} of {}, {:.1}s)",
        (loss as f64).exp(),
        a.data.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `eval`'s progress: an indicatif bar on a terminal, a line every 5 s otherwise (as
/// `train` shows its steps), nothing with `-q`.
struct EvalProgress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    quiet: bool,
    start: std::time::Instant,
    last: std::cell::Cell<std::time::Instant>,
}

impl EvalProgress {
    fn new(total: u64, quiet: bool) -> EvalProgress {
        use std::io::IsTerminal;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "eval {bar:30.cyan/blue} {pos}/{len} batches [{elapsed_precise}<{eta_precise}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        let now = std::time::Instant::now();
        EvalProgress {
            bar,
            total,
            quiet,
            start: now,
            last: std::cell::Cell::new(now),
        }
    }

    fn update(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        } else if !self.quiet && self.last.get().elapsed().as_secs_f64() >= 5.0 {
            let per = self.start.elapsed().as_secs_f64() / done.max(1) as f64;
            eprintln!(
                "eval batch {done}/{} | eta {:.0}s",
                self.total,
                per * (self.total - done) as f64
            );
            self.last.set(std::time::Instant::now());
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct GradArgs {
    /// llama2.c .bin model, .ckpt checkpoint or Hugging Face model folder.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Token data (uint16 ids).
    #[arg(long)]
    pub data: PathBuf,
    /// First token of the window: inputs are tokens[O..O+S], targets tokens[O+1..O+S+1].
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Tokens in the window.
    #[arg(long, default_value_t = 64, value_parser = super::at_least_one)]
    pub seq: usize,
    /// Output safetensors file (tensor names as llama2.c's PyTorch model; for a model read from
    /// a Hugging Face folder, transformers' names, shapes and row order).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// Worker threads (default, or 0: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub gemm: GemmArgs,
}

pub fn run_grad(a: GradArgs) -> Result<()> {
    set_threads(a.threads);
    let params = crate::train::load_params(&ModelSource::with_weights(&a.model), 0)?;
    crate::train::backend::select_gemm(&a.gemm.gemm, params.config(), 1, a.seq)?;
    let data = TokenData::open(&a.data)?;
    let (grads, loss) = eval::window_gradients(&params, &data, a.offset, a.seq)?;
    let meta = [("loss", format!("{loss}"))];
    let tensors = if grads.config().hf.is_some() {
        // transformers' names, shapes and row order: compares directly with `param.grad`.
        crate::model::hf::write_grads(&a.out, &grads, &meta)?;
        crate::model::hf::tensors(grads.config()).len()
    } else {
        crate::model::safetensors::write(&a.out, &grads, &meta)?;
        grads.layout.tensors().len()
    };
    println!(
        "loss {loss:.6}; wrote {} gradients ({tensors} tensors) to {}",
        grads.data.len(),
        a.out.display()
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each measured step is the trainer's optimizer step (`Stepper::step` in \
src/train/stepper.rs, the function `anetrain train` runs): zero the gradients, --accum \
forward+backward passes over random token ids, the fused non-finite check and gradient norm, \
clip and AdamW in one pass, and the loss-scale update. The FMA peak is measured first (widest \
vector ISA, same thread count). On a shared machine run it as `chrt -f 10 anetrain bench ...` \
and repeat: the spread between min and max says how much the neighbours took."
)]
pub struct BenchArgs {
    /// Model: a preset or config file (random weights), or a llama2.c .bin / .ckpt.
    #[arg(long, short, default_value = settings::DEFAULT_MODEL)]
    pub model: String,
    /// Sequences per micro-step.
    #[arg(long, short, default_value_t = 1, value_parser = super::at_least_one)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256, value_parser = super::at_least_one)]
    pub seq: usize,
    /// Micro-steps (of --batch sequences) accumulated per optimizer step.
    #[arg(long, default_value_t = 1, value_parser = super::at_least_one)]
    pub accum: usize,
    /// Measured optimizer steps (after the warm-up).
    #[arg(long, default_value_t = 5, value_parser = super::at_least_one)]
    pub steps: usize,
    /// Unmeasured optimizer steps first (first touch of every buffer, caches, clocks).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// Neural Engine pipeline (ane, ane-sim backends).
    #[arg(long, value_enum, default_value_t = Pipeline::Dynamic)]
    pub pipeline: Pipeline,
    /// Neural Engine chip profile (default: the chip this runs on, else conservative).
    #[arg(long)]
    pub ane_profile: Option<String>,
    /// Worker threads (default, or 0: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Measure data-parallel steps as one rank of an MPI job (`mpirun -np N anetrain bench
    /// … --distributed mpi`): adds the per-step compute, all-reduce time and its overlap with
    /// the backward (rank 0 prints). --batch and --accum are per rank.
    #[arg(long, value_enum)]
    pub distributed: Option<crate::train::distributed::Kind>,
    #[command(flatten)]
    pub gemm: GemmArgs,
}

pub fn run_bench(a: BenchArgs) -> Result<()> {
    let distributed = a.distributed.is_some();
    crate::train::distributed::conclude(distributed, bench_cmd(a))
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    let mut group = match a.distributed {
        Some(kind) => Some(crate::train::distributed::join(kind)?),
        None => None,
    };
    let (rank, ranks) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.size()));
    let quiet = a.json || rank > 0;
    let spec = BenchSpec {
        batch: a.batch,
        seq: a.seq,
        accum: a.accum,
        steps: a.steps,
        warmup: a.warmup,
    };
    let threads = set_threads(a.threads);
    let params = crate::train::load_params(&ModelSource::resolve(&a.model)?, 1)?;
    let c = params.config().clone();
    let peak = crate::util::peak::measure_fma(threads);
    let backend = BackendChoice {
        kind: a.backend,
        pipeline: a.pipeline,
        compile_budget: None,
        ane_profile: a.ane_profile.clone(),
        ane_strict: false,
        gemm: a.gemm.gemm.clone(),
    };
    let gemm = crate::train::backend::select_gemm(&backend.gemm, &c, a.batch, a.seq)?;
    if !quiet {
        eprintln!("{}", gemm.line());
    }
    let mut k = make_kernels(&backend, &c, a.batch, a.seq)?;
    let run = bench::measure_in(
        k.as_mut(),
        params,
        &spec,
        &mut |measured, ms| {
            if !quiet {
                let what = if measured { "measured" } else { "warm-up" };
                eprintln!("{what} step: {ms:.1} ms");
            }
        },
        group
            .as_mut()
            .map(|g| g.as_mut() as &mut dyn crate::train::distributed::Group),
    )?;
    let dist = bench::DistributedFigures::new(&run);
    drop(group);
    if rank > 0 {
        return Ok(());
    }
    let backend = a.backend.to_string();
    let rss = bench::peak_rss_bytes();
    let ceiling_ms = crate::train::gemm_choice::ceiling_ms(&c, a.batch, a.seq, a.accum);
    let mut report = BenchReport::new(
        &c, &a.model, &backend, threads, &spec, &run, &peak, rss, &gemm, ceiling_ms,
    );
    if let (Some(d), Some(obj)) = (dist, report.json.as_object_mut()) {
        obj.insert(
            "distributed".into(),
            serde_json::json!({
                "ranks": ranks,
                "compute_ms": d.compute_ms,
                "allreduce_ms": d.allreduce_ms,
                "exposed_ms": d.exposed_ms,
                "overlap": d.overlap(),
                "bytes_per_rank": d.bytes,
            }),
        );
    }
    if a.json {
        println!("{}", report.json);
    } else {
        report.print();
        if let Some(d) = dist {
            println!(
                "data parallel    {ranks} ranks (figures of rank 0, per step): compute {:.1} ms, \
                 all-reduce {:.1} ms of {:.1} MB, {:.1} ms of it exposed ({:.0}% overlapped \
                 with the backward)",
                d.compute_ms,
                d.allreduce_ms,
                d.bytes / 1e6,
                d.exposed_ms,
                100.0 * d.overlap()
            );
        }
    }
    Ok(())
}
