//! One `anetrain train` run from its [`Plan`] to its end: open the token data (or prepare the
//! built-in corpus), load or resume the parameters, build the backend, fill in the settings
//! that depend on the model and the backend (sequence length, loss scale), run the loop, and
//! hand back what the caller prints. The CLI parses flags into a `Plan` and prints the result;
//! everything in between is here.

use super::backend::{make_kernels, set_threads, BackendChoice};
use super::distributed::{self, Group};
use super::log::LogWriter;
use super::settings::{self, Settings};
use super::trainer::{self, Outcome, Trainer};
use super::{builtin, checkpoint};
use crate::data::TokenData;
use crate::model::{Config, ModelSource, Params};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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

/// The training data of a run, recorded in its checkpoint (the settings' `"data"`), so
/// that `--resume` continues on the same tokens: the file by its absolute path and by its
/// contents (size and SHA-256), the validation file or fraction.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataRecord {
    /// The built-in corpus (prepared in the run's folder) rather than a `--data` file.
    pub builtin: bool,
    /// The token file, absolute.
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// `--val-data`, absolute.
    pub val: Option<PathBuf>,
    /// `--val-fraction`.
    pub val_fraction: f64,
}

impl DataRecord {
    /// The record of a token file as it is now.
    fn of(builtin: bool, path: &Path, val: Option<&Path>, val_fraction: f64) -> Result<Self> {
        let (bytes, sha256) = contents(path)?;
        Ok(DataRecord {
            builtin,
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            bytes,
            sha256,
            val: val.map(|v| std::path::absolute(v).unwrap_or_else(|_| v.to_path_buf())),
            val_fraction,
        })
    }

    /// The data `--resume` continues on: the recorded file (checked to be unchanged), or
    /// `given` (a `--data` file with the recorded contents); refused by name otherwise.
    fn resume_choice(&self, plan: &Plan, note: &dyn Fn(&str)) -> Result<DataChoice> {
        let given = |id: &str| plan.given.contains(id);
        let (given_val, given_fraction) = match &plan.data {
            DataChoice::Files {
                val, val_fraction, ..
            } => (val.clone(), *val_fraction),
            DataChoice::Builtin { val_fraction } => (None, *val_fraction),
        };
        let mut conflicts = Vec::new();
        if given("val_fraction") && given_fraction != self.val_fraction {
            conflicts.push(format!(
                "--val-fraction {given_fraction} (the checkpoint's run has {})",
                self.val_fraction
            ));
        }
        if given("val_data") {
            let v = given_val
                .as_deref()
                .map(|v| std::path::absolute(v).unwrap_or(v.into()));
            if v != self.val {
                conflicts.push(format!(
                    "--val-data {} (the checkpoint's run has {})",
                    given_val.as_deref().unwrap_or(Path::new("")).display(),
                    self.val
                        .as_deref()
                        .map_or("none".to_string(), |p| p.display().to_string())
                ));
            }
        }
        let path = match (&plan.data, given("data")) {
            (DataChoice::Files { data, .. }, true) => {
                let (bytes, sha) = contents(data).context("--data")?;
                if (bytes, &sha) != (self.bytes, &self.sha256) {
                    conflicts.push(format!(
                        "--data {} ({}), not the tokens of {} that the checkpoint's run \
                         trained on",
                        data.display(),
                        if bytes == self.bytes {
                            "other contents".to_string()
                        } else {
                            format!("{bytes} bytes, not {}", self.bytes)
                        },
                        self.path.display()
                    ));
                } else if std::path::absolute(data).ok().as_ref() != Some(&self.path) {
                    note(&format!(
                        "note: --data {} holds the tokens the run trained on ({}); continuing on it",
                        data.display(),
                        self.path.display()
                    ));
                }
                data.clone()
            }
            _ if self.builtin => self.path.clone(),
            _ => {
                if !self.path.exists() {
                    bail!(
                        "--resume: the checkpoint's run trained on {}, which no longer exists; if \
                         it moved, give its new place with --data (its contents are checked \
                         against the checkpoint's record)",
                        self.path.display()
                    );
                }
                let (bytes, sha) = contents(&self.path)?;
                if (bytes, &sha) != (self.bytes, &self.sha256) {
                    bail!(
                        "--resume: {} has changed since the checkpoint's run trained on it \
                         ({} bytes then, {bytes} now{}); to train on it as it is, start a new \
                         run from the checkpoint's weights with --model {} (without --resume)",
                        self.path.display(),
                        self.bytes,
                        if bytes == self.bytes {
                            ", other contents"
                        } else {
                            ""
                        },
                        plan.settings.ckpt.display()
                    );
                }
                self.path.clone()
            }
        };
        if !conflicts.is_empty() {
            bail!(
                "--resume continues on the data the checkpoint records, and these flags would \
                 change it: {}. Drop them to continue as recorded, or start a new run from the \
                 checkpoint's weights with --model {} (without --resume)",
                conflicts.join(", "),
                plan.settings.ckpt.display()
            );
        }
        Ok(if self.builtin && !given("data") {
            DataChoice::Builtin {
                val_fraction: self.val_fraction,
            }
        } else {
            DataChoice::Files {
                data: path,
                val: self.val.clone(),
                val_fraction: self.val_fraction,
            }
        })
    }
}

/// A file's size and SHA-256.
fn contents(path: &Path) -> Result<(u64, String)> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .len();
    Ok((bytes, crate::data::tokenize::sha256_file(path)?))
}

/// The data a resumed run continues on, for a checkpoint that records none (written before
/// the record existed): `--data` if given, else the file its header names.
fn resume_choice_unrecorded(plan: &Plan, ck: &checkpoint::Checkpoint) -> Result<DataChoice> {
    if plan.given.contains("data") {
        return Ok(plan.data.clone());
    }
    match &ck.header.data {
        // The built-in corpus (its folder holds the corpus stamp).
        Some(p) if Path::new(p).with_file_name("corpus.json").exists() => Ok(plan.data.clone()),
        Some(p) if Path::new(p).exists() => {
            eprintln!(
                "warning: {} records its data only by name; continuing on {p} (give --data to choose)",
                plan.settings.ckpt.display()
            );
            let val_fraction = match &plan.data {
                DataChoice::Files { val_fraction, .. } | DataChoice::Builtin { val_fraction } => {
                    *val_fraction
                }
            };
            Ok(DataChoice::Files {
                data: p.into(),
                val: None,
                val_fraction,
            })
        }
        Some(p) => bail!(
            "--resume: the checkpoint's run trained on {p}, which no longer exists; give --data FILE"
        ),
        None => Ok(plan.data.clone()),
    }
}

/// What a run was asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `--model`: see [`ModelSource::resolve`] (when resuming, only checked against the
    /// checkpoint).
    pub model: String,
    pub data: DataChoice,
    /// The run's folder (the built-in corpus goes there).
    pub out: PathBuf,
    /// Continue exactly from the checkpoint at `settings.ckpt`.
    pub resume: bool,
    /// Replace the run at `settings.ckpt` (its checkpoints and the log) if there is one;
    /// without this or `resume`, a checkpoint there is an error.
    pub overwrite: bool,
    /// Worker threads (default: every core).
    pub threads: Option<usize>,
    /// The backend (`settings.backend` is set from it).
    pub backend: BackendChoice,
    /// Tokens per window (default: [`settings::default_seq`] of the model).
    pub seq: Option<usize>,
    /// Initial loss scale for backends that need one (default:
    /// [`settings::initial_loss_scale`]).
    pub loss_scale: Option<f32>,
    /// Seconds of training after which this process stops with a checkpoint.
    pub time_limit: Option<f64>,
    /// The options given on the command line (clap ids, `min_lr`), as opposed to left at
    /// their defaults: a resumed run takes the others from its checkpoint
    /// ([`Settings::resumed`]).
    pub given: BTreeSet<String>,
    /// The rest; `seq`, `loss_scale`, `backend` and (for the built-in corpus) `tokenizer`
    /// are overwritten by [`run`].
    pub settings: Settings,
    /// `--distributed`: train data parallel as one rank of the run this process was
    /// started in (`settings.batch` and `settings.accum` are per rank).
    pub distributed: Option<distributed::Kind>,
    /// `--check-every`: steps between the ranks' checksum comparisons.
    pub check_every: u64,
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
///
/// Everything that can be checked without training is checked before the first step, and
/// before any file is written: the settings, the checkpoint to resume and the flags against
/// it, the model against the data and the tokenizer, and that the checkpoint and log folders
/// can be written.
///
/// Data parallel (`plan.distributed`): this process joins the run it was started in; the
/// caller ends it with [`distributed::conclude`].
pub fn run(plan: Plan) -> Result<Finished> {
    let mut group: Option<Box<dyn Group>> = match plan.distributed {
        Some(kind) => Some(distributed::join(kind)?),
        None => None,
    };
    let mut s = plan.settings.clone();
    let (rank, ranks) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.size()));
    if rank > 0 {
        // Rank 0 speaks for the run.
        s.quiet = true;
    }
    s.backend = plan.backend.kind;
    // First: the global thread pool is built once, by whoever uses it first.
    let threads = set_threads(plan.threads);
    let quiet = s.quiet;
    let note = |m: &str| {
        if !quiet {
            eprintln!("{m}")
        }
    };

    // The checkpoint to resume, and the settings it records.
    if !plan.resume && s.ckpt.exists() && !plan.overwrite {
        let at = checkpoint::read_header(&s.ckpt)
            .map(|h| format!(" (step {} of {})", h.step, h.total_steps))
            .unwrap_or_default();
        bail!(
            "{} holds a run{at}: continue it with --resume, replace it with --overwrite, or \
             give another --out (or --ckpt)",
            s.ckpt.display()
        );
    }
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
    // The data: a resumed run continues on what its checkpoint records.
    let data_choice = match &resume_ck {
        None => plan.data.clone(),
        Some(ck) => match ck.header.settings.get("data") {
            Some(v) => serde_json::from_value::<DataRecord>(v.clone())
                .with_context(|| format!("{}: unreadable data record", s.ckpt.display()))?
                .resume_choice(&plan, &note)?,
            None => resume_choice_unrecorded(&plan, ck)?,
        },
    };
    let recorded_data = resume_ck
        .as_ref()
        .and_then(|ck| ck.header.settings.get("data"))
        .and_then(|v| serde_json::from_value::<DataRecord>(v.clone()).ok());
    let mut fresh_params = None;
    let (c, what) = match &resume_ck {
        Some(ck) => {
            s.seq = plan.seq.unwrap_or(0);
            match serde_json::from_value::<Settings>(ck.header.settings.clone()) {
                Ok(mut recorded) => {
                    recorded.accum =
                        per_rank_accum(recorded.accum, ck.header.world_size.max(1), ranks)?;
                    s = s.resumed(&recorded, &plan.given)?;
                    if recorded.backend != s.backend {
                        note(&format!(
                            "note: the checkpoint's run used backend {}; it continues on {}",
                            recorded.backend, s.backend
                        ));
                    }
                }
                Err(_) => {
                    s.seq = plan.seq.unwrap_or(settings::default_seq(&ck.header.config));
                    eprintln!(
                        "warning: {} records no settings this build can read; the run continues \
                         with the flags given",
                        s.ckpt.display()
                    );
                }
            }
            let c = ck.header.config.clone();
            if plan.given.contains("model") {
                let asked = super::load_config(&ModelSource::resolve(&plan.model)?)
                    .with_context(|| format!("--model {}", plan.model))?;
                if asked != c {
                    bail!(
                        "--model {} ({}) is not the model in the checkpoint {} ({}): drop --model \
                         to resume, or pass the --ckpt of that model's run",
                        plan.model,
                        shape(&asked),
                        s.ckpt.display(),
                        shape(&c)
                    );
                }
                note(&format!(
                    "note: --model {} has the checkpoint's shape; the weights come from {}",
                    plan.model,
                    s.ckpt.display()
                ));
            }
            let what = format!("{} (from step {})", s.ckpt.display(), ck.header.step);
            (c, what)
        }
        None => {
            let src = ModelSource::resolve(&plan.model).context("--model")?;
            // A Hugging Face folder's size is known from its config: refuse a run that cannot
            // fit before reading gigabytes of weights.
            if let ModelSource::HfDir(d) = &src {
                let shape = crate::model::hf::read_config(d)?;
                let seq = plan.seq.unwrap_or(settings::default_seq(&shape));
                super::check_fits(&shape, s.batch, seq)
                    .with_context(|| format!("--model {}", plan.model))?;
            }
            let p = super::load_params(&src, s.seed)
                .with_context(|| format!("--model {}", plan.model))?;
            s.seq = plan.seq.unwrap_or(settings::default_seq(p.config()));
            fresh_params = Some(p);
            (
                fresh_params.as_ref().unwrap().config().clone(),
                plan.model.clone(),
            )
        }
    };
    if s.seq > c.seq_len {
        bail!("--seq {} exceeds the model's seq_len {}", s.seq, c.seq_len);
    }
    s.validate()?;
    if matches!(data_choice, DataChoice::Builtin { .. }) && c.vocab_size < builtin::VOCAB {
        bail!(
            "the built-in corpus has {} token ids but the model ({}) has a vocabulary of {}: \
             give --data with ids below {}, or a model with vocab_size ≥ {}",
            builtin::VOCAB,
            what,
            c.vocab_size,
            c.vocab_size,
            builtin::VOCAB
        );
    }
    let gemm = super::backend::select_gemm(&plan.backend.gemm, &c, s.batch, s.seq)?;
    let kernels = make_kernels(&plan.backend, &c, s.batch, s.seq)?;
    s.loss_scale = settings::initial_loss_scale(
        kernels.needs_loss_scaling(),
        plan.loss_scale,
        s.batch * s.seq,
    );
    s.validate()?;
    let log_path = s.log.clone().context("the settings name no log file")?;
    if rank == 0 {
        check_writable(&s.ckpt, "--ckpt")?;
        check_writable(&log_path, "--log")?;
    }

    trainer::install_signal_handlers();
    let (data, val, record) = match &data_choice {
        DataChoice::Files {
            data,
            val,
            val_fraction,
        } => {
            let (t, v) = TokenData::open_with_validation(data, val.as_deref(), *val_fraction)?;
            let record = match &recorded_data {
                // Checked against the file by `resume_choice` (which may be the recorded
                // tokens at a new place).
                Some(r) => DataRecord {
                    path: std::path::absolute(data).unwrap_or_else(|_| data.clone()),
                    ..r.clone()
                },
                None => DataRecord::of(false, data, val.as_deref(), *val_fraction)?,
            };
            (t, v, record)
        }
        DataChoice::Builtin { val_fraction } => {
            // Rank 0 first: on a shared folder the others then find the corpus made.
            if let (true, Some(g)) = (rank > 0, group.as_mut()) {
                g.barrier();
            }
            let b = builtin::prepare(&plan.out, s.seed, s.quiet)?;
            if let (0, Some(g)) = (rank, group.as_mut()) {
                g.barrier();
            }
            s.tokenizer.get_or_insert(b.tokenizer.clone());
            let record = DataRecord::of(true, &b.tokens, None, *val_fraction)?;
            if let Some(r) = recorded_data.as_ref().filter(|r| r.builtin) {
                if (r.bytes, &r.sha256) != (record.bytes, &record.sha256) {
                    bail!(
                        "--resume: the built-in corpus prepared in {} is not the one the \
                         checkpoint's run trained on ({} bytes then, {} now)",
                        plan.out.display(),
                        r.bytes,
                        record.bytes
                    );
                }
            }
            let (t, v) = TokenData::open(&b.tokens)?.split_tail(val_fraction.max(0.01))?;
            (t, Some(v), record)
        }
    };
    // A model from a Hugging Face folder: its own tokenizer.json, recorded for `generate`.
    if s.tokenizer.is_none() {
        s.tokenizer =
            c.hf.as_ref()
                .and_then(|o| crate::model::hf::tokenizer_path(&o.dir));
    }
    // Absolute, so that `generate` finds the tokenizer recorded in the checkpoint from anywhere.
    s.tokenizer = s.tokenizer.map(|p| p.canonicalize().unwrap_or(p));
    // The data against the model: `Trainer::run` checks every id before its first step.
    let tokenizer = match &s.tokenizer {
        // A Hugging Face tokenizer is recorded for `generate`; the samples during training
        // and the closing story use llama2.c tokenizers only.
        Some(p) if crate::tokenizer::hf::is_hf_tokenizer(p) => {
            let t = crate::tokenizer::hf::HfTokenizer::load(p)?;
            if t.vocab_size() > c.vocab_size {
                bail!(
                    "the tokenizer {} has {} ids but the model {} has a vocabulary of {}: \
                     give the --tokenizer the model was trained with",
                    p.display(),
                    t.vocab_size(),
                    what,
                    c.vocab_size
                );
            }
            None
        }
        Some(p) => {
            let t = Tokenizer::load(p)?;
            if t.vocab_size() != c.vocab_size {
                bail!(
                    "the tokenizer {} has {} pieces but the model {} has a vocabulary of {}: \
                     give the --tokenizer the model was trained with",
                    p.display(),
                    t.vocab_size(),
                    what,
                    c.vocab_size
                );
            }
            Some(t)
        }
        None => None,
    };

    let summary = format!(
        "training {what}: {} ({:.2}M params) on {} ({} tokens), backend {}, batch {} x seq {} x accum {}{}, {} steps, lr {}, {threads} threads",
        shape(&c),
        c.num_params() as f64 / 1e6,
        data.path.display(),
        data.len(),
        s.backend,
        s.batch,
        s.seq,
        s.accum,
        if ranks > 1 || group.is_some() {
            format!(" x {ranks} ranks (MPI)")
        } else {
            String::new()
        },
        s.steps,
        s.optim.lr,
    );
    let mut tr = match resume_ck {
        Some(ck) => {
            note(&format!(
                "resuming {} at step {} of {}",
                s.ckpt.display(),
                ck.header.step,
                s.steps
            ));
            Trainer::resume(s, ck, kernels)
        }
        None => Trainer::new(s, fresh_params.context("no parameters")?, kernels),
    };
    tr.data_desc = Some(data.path.display().to_string());
    tr.data_record = Some(serde_json::to_value(&record)?);
    tr.time_limit = plan.time_limit;
    tr.group = group;
    tr.check_every = plan.check_every;
    if rank == 0 && plan.overwrite && !plan.resume && tr.s.ckpt.exists() {
        replace_run(&tr.s.ckpt, &log_path)?;
        note(&format!(
            "--overwrite: the run at {} and its log {} are replaced",
            tr.s.ckpt.display(),
            log_path.display()
        ));
    }
    let peak = crate::util::peak::measure_fma_gflops(threads);
    note(&summary);
    note(&gemm.line());
    let mut log = if rank == 0 {
        LogWriter::open(&log_path)?
    } else {
        LogWriter::disabled()
    };
    let sample_text = |p: &Params| -> Result<String> {
        match &tokenizer {
            Some(t) => crate::generate::generate_text(p, t, "", 200, 0.8, 0.9, 42),
            None => bail!("no tokenizer"),
        }
    };
    let sample: Option<trainer::SampleFn> =
        (tokenizer.is_some() && rank == 0).then_some(&sample_text);
    let outcome = tr.run(&data, val.as_ref(), &mut log, sample, peak)?;
    Ok(Finished {
        outcome,
        trainer: tr,
        data,
        tokenizer,
    })
}

/// The per-rank `--accum` that continues, on `ranks` ranks, a run recorded with `accum` per
/// rank on `recorded_ranks`: the same global batch (micro-steps × ranks), or an error.
pub fn per_rank_accum(accum: usize, recorded_ranks: usize, ranks: usize) -> Result<usize> {
    let global = accum.max(1) * recorded_ranks;
    if !global.is_multiple_of(ranks) {
        bail!(
            "--resume: the checkpoint's run accumulated {global} micro-steps per update              ({} per rank on {recorded_ranks} rank(s)); {ranks} ranks cannot share them              evenly: resume on a number of ranks that divides {global}",
            accum.max(1)
        );
    }
    Ok(global / ranks)
}

/// Removes a run's checkpoint, its older copies and its log (`--overwrite`).
fn replace_run(ckpt: &Path, log: &Path) -> Result<()> {
    for p in checkpoint::older_copies(ckpt)
        .into_iter()
        .chain([ckpt.to_path_buf(), log.to_path_buf()])
    {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e)
                    .with_context(|| format!("--overwrite: cannot remove {}", p.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A model's shape in one phrase, for messages and the banner.
fn shape(c: &Config) -> String {
    format!(
        "dim {}, {} layers, {} heads ({} kv), vocab {}, seq_len {}",
        c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len
    )
}

/// Creates `path`'s folder and probes that a file can be created in it, so that a run does
/// not train for an hour and then fail to save. Leaves nothing behind but the folder.
fn check_writable(path: &Path, flag: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "{flag} {}: cannot create the folder {}",
            path.display(),
            dir.display()
        )
    })?;
    let probe = dir.join(format!(".anetrain-write-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "{flag} {}: the folder {} is not writable; choose another {flag} or --out",
                path.display(),
                dir.display()
            )
        }),
    }
}

/// Replaces this process by a fresh copy of itself with `--resume` added (the Neural
/// Engine's per-process compile budget is spent; a new process gets a new budget). Returns
/// only on failure.
pub fn restart_process() -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    // Without --overwrite: the restarted process continues this run, it must not replace it
    // (and --overwrite conflicts with --resume).
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--overwrite")
        .collect();
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
