//! One `anetrain train` run from its [`Plan`] to its end: open the token data (or prepare the
//! built-in corpus), load or resume the parameters, build the backend, fill in the settings
//! that depend on the model and the backend (sequence length, loss scale), run the loop, and
//! hand back what the caller prints. The CLI parses flags into a `Plan` and prints the result;
//! everything in between is here.

use super::backend::{make_kernels, set_threads, BackendChoice};
use super::log::LogWriter;
use super::settings::{self, Settings};
use super::trainer::{self, Outcome, Trainer};
use super::{builtin, checkpoint};
use crate::data::TokenData;
use crate::model::{ModelSource, Params};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Where the token data comes from.
#[derive(Clone, Debug)]
pub enum DataChoice {
    /// A token file; validation from `val`, else the tail `val_fraction` of it (0: none).
    Files {
        data: PathBuf,
        val: Option<PathBuf>,
        val_fraction: f64,
    },
    /// The built-in corpus of generated stories (with its tokenizer), prepared in the run's
    /// folder; at least 1% of it is held out.
    Builtin { val_fraction: f64 },
}

/// What a run was asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `--model`: see [`ModelSource::resolve`] (ignored when resuming).
    pub model: String,
    pub data: DataChoice,
    /// The run's folder (the built-in corpus goes there).
    pub out: PathBuf,
    /// Continue exactly from the checkpoint at `settings.ckpt`.
    pub resume: bool,
    /// Worker threads (default: every core).
    pub threads: Option<usize>,
    /// The backend (`settings.backend` is set from it).
    pub backend: BackendChoice,
    /// Tokens per window (default: [`settings::default_seq`] of the model).
    pub seq: Option<usize>,
    /// Initial loss scale for backends that need one (default:
    /// [`settings::initial_loss_scale`]).
    pub loss_scale: Option<f32>,
    /// The rest; `seq`, `loss_scale`, `backend` and (for the built-in corpus) `tokenizer`
    /// are overwritten by [`run`].
    pub settings: Settings,
}

/// What a finished (or interrupted, or restarting) run leaves.
pub struct Finished {
    pub outcome: Outcome,
    pub trainer: Trainer,
    /// The training part of the data.
    pub data: TokenData,
    /// The run's tokenizer (for samples and the closing story), if it has one.
    pub tokenizer: Option<Tokenizer>,
}

/// Runs the plan (see the module doc). Status lines go to stderr unless `settings.quiet`.
pub fn run(plan: Plan) -> Result<Finished> {
    let mut s = plan.settings;
    s.backend = plan.backend.kind;
    let threads = set_threads(plan.threads);
    trainer::install_signal_handlers();
    let (data, val) = match &plan.data {
        DataChoice::Files {
            data,
            val,
            val_fraction,
        } => TokenData::open_with_validation(data, val.as_deref(), *val_fraction)?,
        DataChoice::Builtin { val_fraction } => {
            let b = builtin::prepare(&plan.out, s.seed, s.quiet)?;
            s.tokenizer.get_or_insert(b.tokenizer.clone());
            let (t, v) = TokenData::open(&b.tokens)?.split_tail(val_fraction.max(0.01))?;
            (t, Some(v))
        }
    };
    // Absolute, so that `generate` finds the tokenizer recorded in the checkpoint from anywhere.
    s.tokenizer = s.tokenizer.map(|p| p.canonicalize().unwrap_or(p));

    let resume_ck = if plan.resume {
        if !s.ckpt.exists() {
            bail!(
                "--resume: no checkpoint at {} (start without --resume, or pass --ckpt)",
                s.ckpt.display()
            );
        }
        Some(checkpoint::load_or_explain(&s.ckpt)?)
    } else {
        None
    };
    let params = match &resume_ck {
        Some(ck) => ck.params.clone(),
        None => super::load_params(&ModelSource::resolve(&plan.model)?, s.seed)?,
    };
    let c = params.config().clone();
    s.seq = plan.seq.unwrap_or(settings::default_seq(&c));
    if s.seq > c.seq_len {
        bail!("--seq {} exceeds the model's seq_len {}", s.seq, c.seq_len);
    }
    if s.batch == 0 || s.accum == 0 || s.seq == 0 {
        bail!("--batch, --accum and --seq must be positive");
    }
    let gemm = super::backend::select_gemm(&plan.backend.gemm, &c, s.batch, s.seq)?;
    let kernels = make_kernels(&plan.backend, &c, s.batch, s.seq)?;
    s.loss_scale = settings::initial_loss_scale(
        kernels.needs_loss_scaling(),
        plan.loss_scale,
        s.batch * s.seq,
    );
    let tokenizer_path = s.tokenizer.clone();
    let log_path = s.log.clone().context("the settings name no log file")?;
    let quiet = s.quiet;
    let summary = format!(
        "training {} ({:.2}M params) on {} ({} tokens), backend {}, batch {} x seq {} x accum {}, {} steps, {threads} threads",
        plan.model,
        c.num_params() as f64 / 1e6,
        data.path.display(),
        data.len(),
        s.backend,
        s.batch,
        s.seq,
        s.accum,
        s.steps,
    );
    let mut tr = match resume_ck {
        Some(ck) => {
            if !quiet {
                eprintln!(
                    "resuming {} at step {} of {}",
                    s.ckpt.display(),
                    ck.header.step,
                    s.steps
                );
            }
            Trainer::resume(s, ck, kernels)
        }
        None => Trainer::new(s, params, kernels),
    };
    tr.data_desc = Some(data.path.display().to_string());
    let peak = crate::util::peak::measure_fma_gflops(threads);
    if !quiet {
        eprintln!("{summary}");
        eprintln!("{}", gemm.line());
    }
    let mut log = LogWriter::open(&log_path)?;
    let tokenizer = match &tokenizer_path {
        Some(p) => Some(Tokenizer::load(p)?),
        None => None,
    };
    let sample_text = |p: &Params| -> Result<String> {
        match &tokenizer {
            Some(t) => crate::generate::generate_text(p, t, "", 200, 0.8, 0.9, 42),
            None => bail!("no tokenizer"),
        }
    };
    let sample: Option<trainer::SampleFn> = tokenizer.is_some().then_some(&sample_text);
    let outcome = tr.run(&data, val.as_ref(), &mut log, sample, peak)?;
    Ok(Finished {
        outcome,
        trainer: tr,
        data,
        tokenizer,
    })
}

/// Replaces this process by a fresh copy of itself with `--resume` added (the Neural
/// Engine's per-process compile budget is spent; a new process gets a new budget). Returns
/// only on failure.
pub fn restart_process() -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--resume") {
        args.push("--resume".into());
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        Err(err).context("exec() restart failed")
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().context("restart failed")?;
        std::process::exit(status.code().unwrap_or(1));
    }
}
