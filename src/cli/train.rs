//! `anetrain train`, `export`, `eval`, `grad` and `bench`.

use crate::data::TokenData;
use crate::kernels::{BackendKind, Kernels};
use crate::model::llama2c::{Format, Model};
use crate::model::{Config, Params, StepFlops};
use crate::train::log::LogWriter;
use crate::train::optim::AdamWConfig;
use crate::train::step::Workspace;
use crate::train::timing::{Component, Timings};
use crate::train::trainer::{self, Sampling, Settings, Trainer};
use crate::train::{builtin, checkpoint};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub use crate::ane::Pipeline;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "With no arguments, trains a stories260k-shaped model on the built-in \
corpus of generated children's stories (about 3 minutes on 2 cores), then prints a story and \
where the checkpoint, tokenizer and log went. `anetrain generate` then works with no flags."
)]
pub struct TrainArgs {
    /// Model to train: a preset (stories260k, stories15m, stories42m, stories110m,
    /// qwen3-0.6b-shape) or config file for random init, a llama2.c .bin or a .ckpt to start from.
    #[arg(long, short, default_value = "stories260k")]
    pub model: String,
    /// Token data: flat uint16 ids (llama2.c pretokenized format). Default: the built-in corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation token data (default: a held-out tail of --data, see --val-fraction).
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Fraction of --data held out as the validation tail when --val-data is absent (0 = none).
    #[arg(long, default_value_t = 0.02)]
    pub val_fraction: f64,
    /// How windows are drawn from the data.
    #[arg(long, value_enum, default_value_t = Sampling::Random)]
    pub sampling: Sampling,
    /// Sequences per micro-step.
    #[arg(long, short, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence (default: min(256, the model's seq_len)).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Micro-steps accumulated per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Peak learning rate (default: 1e-3; 3e-3 for the built-in corpus run).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Final learning rate of the cosine decay (default: lr/10).
    #[arg(long)]
    pub min_lr: Option<f32>,
    /// Linear warm-up steps (default: 5% of --steps).
    #[arg(long)]
    pub warmup: Option<u64>,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f32,
    #[arg(long, default_value_t = 0.95)]
    pub beta2: f32,
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f32,
    /// Clip the global gradient norm (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    /// Seed for initialisation and data sampling.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Folder for the checkpoint, log, and (built-in corpus) tokenizer and data.
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// Checkpoint path (default: OUT/model.ckpt).
    #[arg(long)]
    pub ckpt: Option<PathBuf>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub ckpt_every: u64,
    /// Checkpoints kept: the newest plus K−1 older copies (NAME.1, NAME.2, …).
    #[arg(long, default_value_t = 2)]
    pub keep_ckpts: usize,
    /// Continue exactly from the checkpoint at --ckpt.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this step with a checkpoint (the schedule still spans --steps); continue
    /// later with --resume.
    #[arg(long)]
    pub until: Option<u64>,
    /// Validation every N steps (0 disables).
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Batches per validation.
    #[arg(long, default_value_t = 8)]
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
    /// Neural Engine chip profile (conservative, m1, m2, m3, m4, m5, m1-ultra, m2-ultra,
    /// m3-ultra; default: the chip this runs on, else conservative).
    #[arg(long)]
    pub ane_profile: Option<String>,
    /// Consecutive non-finite steps tolerated before stopping.
    #[arg(long, default_value_t = 5)]
    pub max_bad_steps: u32,
    /// Initial loss scale for the fp16 backends (default: 2^⌈log2(batch·seq)⌉; dynamic:
    /// halves on overflow and skips the update, doubles after 1000 finite steps).
    #[arg(long)]
    pub loss_scale: Option<f32>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Sets the worker-thread count for rayon and the GEMMs.
pub fn set_threads(threads: Option<usize>) -> usize {
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    crate::kernels::gemm::set_threads(n);
    n
}

/// Builds the compute backend.
pub fn make_kernels(
    kind: BackendKind,
    c: &Config,
    batch: usize,
    seq: usize,
    pipeline: Pipeline,
    profile: Option<&str>,
    budget: Option<u32>,
) -> Result<Box<dyn Kernels>> {
    use crate::ane::{AneKernels, Profile};
    if kind == BackendKind::Cpu {
        return Ok(Box::new(crate::kernels::cpu::CpuKernels::new()));
    }
    let profile = Profile::select(profile)?;
    let device =
        crate::ane::open_device(kind == BackendKind::AneSim, &profile, budget.map(u64::from))?;
    Ok(Box::new(AneKernels::with_profile(
        device, c, batch, seq, pipeline, &profile,
    )?))
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    let threads = set_threads(a.threads);
    trainer::install_signal_handlers();
    let mut tokenizer = a.tokenizer.clone();
    let (data, val) = match &a.data {
        Some(p) => {
            let d = TokenData::open(p)?;
            match &a.val_data {
                Some(v) => (d, Some(TokenData::open(v)?)),
                None if a.val_fraction > 0.0 => {
                    let (t, v) = d.split_tail(a.val_fraction)?;
                    (t, Some(v))
                }
                None => (d, None),
            }
        }
        None => {
            let b = builtin::prepare(&a.out, a.seed, a.quiet)?;
            tokenizer.get_or_insert(b.tokenizer.clone());
            let d = TokenData::open(&b.tokens)?;
            let (t, v) = d.split_tail(a.val_fraction.max(0.01))?;
            (t, Some(v))
        }
    };
    // Absolute, so that `generate` finds the tokenizer recorded in the checkpoint from anywhere.
    let tokenizer = tokenizer.map(|p| p.canonicalize().unwrap_or(p));
    let ckpt = a.ckpt.clone().unwrap_or_else(|| a.out.join("model.ckpt"));
    let log_path = a.log.clone().unwrap_or_else(|| a.out.join("run.jsonl"));

    let resume_ck = if a.resume {
        if !ckpt.exists() {
            bail!(
                "--resume: no checkpoint at {} (start without --resume, or pass --ckpt)",
                ckpt.display()
            );
        }
        Some(checkpoint::load_or_explain(&ckpt)?)
    } else {
        None
    };
    let params = match &resume_ck {
        Some(ck) => ck.params.clone(),
        None => trainer::initial_params(&a.model, a.seed)?,
    };
    let c = params.config().clone();
    let seq = a.seq.unwrap_or(c.seq_len.min(256));
    if seq > c.seq_len {
        bail!("--seq {seq} exceeds the model's seq_len {}", c.seq_len);
    }
    if a.batch == 0 || a.accum == 0 || seq == 0 {
        bail!("--batch, --accum and --seq must be positive");
    }
    let lr = a.lr.unwrap_or(if a.data.is_none() { 3e-3 } else { 1e-3 });
    let settings = Settings {
        batch: a.batch,
        seq,
        accum: a.accum,
        steps: a.steps,
        optim: AdamWConfig {
            lr,
            min_lr: a.min_lr.unwrap_or(lr / 10.0),
            warmup: a.warmup.unwrap_or(a.steps / 20),
            total_steps: a.steps,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            weight_decay: a.weight_decay,
            grad_clip: a.grad_clip,
        },
        seed: a.seed,
        sampling: a.sampling,
        backend: a.backend,
        ckpt: ckpt.clone(),
        ckpt_every: a.ckpt_every,
        keep_ckpts: a.keep_ckpts,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        sample_every: a.sample_every,
        log: Some(log_path.clone()),
        tokenizer: tokenizer.clone(),
        max_bad_steps: a.max_bad_steps.max(1),
        loss_scale: if a.backend == BackendKind::Cpu {
            1.0
        } else {
            a.loss_scale
                .unwrap_or_else(|| crate::ane::LossScaler::for_tokens(a.batch * seq).scale)
        },
        quiet: a.quiet,
        until: a.until,
    };
    let kernels = make_kernels(
        a.backend,
        &c,
        a.batch,
        seq,
        a.pipeline,
        a.ane_profile.as_deref(),
        a.compile_budget,
    )?;
    let mut tr = match resume_ck {
        Some(ck) => {
            if !a.quiet {
                eprintln!(
                    "resuming {} at step {} of {}",
                    ckpt.display(),
                    ck.header.step,
                    a.steps
                );
            }
            Trainer::resume(settings, ck, kernels)
        }
        None => Trainer::new(settings, params, kernels),
    };
    tr.data_desc = Some(data.path.display().to_string());
    let peak = crate::util::peak::measure_fma_gflops(threads);
    if !a.quiet {
        eprintln!(
            "training {} ({:.2}M params) on {} ({} tokens), backend {}, batch {} x seq {} x accum {}, {} steps, {} threads",
            a.model,
            c.num_params() as f64 / 1e6,
            data.path.display(),
            data.len(),
            a.backend,
            a.batch,
            seq,
            a.accum,
            a.steps,
            threads
        );
    }
    let mut log = LogWriter::open(&log_path)?;
    let tok = match &tokenizer {
        Some(p) => Some(crate::tokenizer::Tokenizer::load(p)?),
        None => None,
    };
    let sampler_fn = |p: &Params| -> Result<String> {
        match &tok {
            Some(t) => crate::generate::generate_text(p, t, "", 200, 0.8, 0.9, 42),
            None => bail!("no tokenizer"),
        }
    };
    let sample: Option<trainer::SampleFn> = if tok.is_some() {
        Some(&sampler_fn)
    } else {
        None
    };
    let out = tr.run(&data, val.as_ref(), &mut log, sample, peak)?;
    if out.restart {
        drop(log);
        return restart_process();
    }

    if let (Some(first), false) = (out.first_loss, a.quiet) {
        eprintln!(
            "loss {first:.4} -> {:.4}{}",
            out.last_loss,
            out.val_loss
                .map(|v| format!(" (validation {v:.4})"))
                .unwrap_or_default()
        );
    }
    if a.data.is_none() && !a.quiet {
        let h = builtin::unigram_entropy(&data);
        eprintln!("unigram entropy of the corpus: {h:.4} nats/token (a model that ignores context cannot go below it)");
    }
    if let Some(t) = &tok {
        if !out.interrupted && !a.quiet {
            let story = crate::generate::generate_text(&tr.params, t, "", 256, 0.8, 0.9, a.seed)?;
            println!(
                "--- a story from the trained model ---\n{}\n---",
                story.trim()
            );
        }
    }
    if !a.quiet {
        eprintln!("checkpoint: {}", out.ckpt.display());
        eprintln!("log:        {}", log_path.display());
        if let Some(t) = &tokenizer {
            eprintln!("tokenizer:  {}", t.display());
        }
        if out.interrupted {
            eprintln!("interrupted: continue with the same command plus --resume");
        } else {
            eprintln!(
                "next: anetrain generate{}   |   anetrain export --ckpt {} -o model.bin",
                if out.ckpt == Path::new("runs/default/model.ckpt") {
                    String::new()
                } else {
                    format!(" --model {}", out.ckpt.display())
                },
                out.ckpt.display()
            );
        }
    }
    Ok(())
}

/// Replaces this process by a fresh copy of itself with `--resume` (the Neural Engine's
/// per-process compile budget is spent; a new process gets a new budget).
fn restart_process() -> Result<()> {
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

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint to export.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Output llama2.c model file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// llama2.c format: legacy (version 0, what run.c reads) or v1.
    #[arg(long, value_enum, default_value_t = ExportFormat::Legacy)]
    pub format: ExportFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ExportFormat {
    Legacy,
    V1,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    let ck = checkpoint::load_or_explain(&a.ckpt)?;
    let m = Model::from_params(ck.params);
    let f = match a.format {
        ExportFormat::Legacy => Format::Legacy,
        ExportFormat::V1 => Format::V1,
    };
    m.save(&a.out, f)?;
    eprintln!(
        "wrote {} ({:?}, {:.2}M params, step {})",
        a.out.display(),
        f,
        m.config().num_params() as f64 / 1e6,
        ck.header.step
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// llama2.c .bin model or .ckpt checkpoint.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Token data (uint16 ids).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, short, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per window (default: min(256, seq_len)).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Batches of consecutive windows to evaluate (default: the whole file).
    #[arg(long)]
    pub batches: Option<usize>,
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run_eval(a: EvalArgs) -> Result<()> {
    set_threads(a.threads);
    let params = load_params(&a.model)?;
    let c = params.config().clone();
    let seq = a.seq.unwrap_or(c.seq_len.min(256));
    let data = TokenData::open(&a.data)?;
    data.validate(seq, c.vocab_size)?;
    let per_batch = a.batch * seq;
    let max = ((data.len() - 1) / per_batch).max(1);
    let batches = a.batches.unwrap_or(max).min(max);
    let mut k = crate::kernels::cpu::CpuKernels::new();
    let mut ws = Workspace::new(&c, a.batch, seq);
    let t = std::time::Instant::now();
    let loss = trainer::evaluate(&mut k, &mut ws, &params, &data, a.batch, seq, batches)?;
    println!(
        "loss {loss:.4}  perplexity {:.3}  ({} windows of {seq} tokens, {:.1}s)",
        (loss as f64).exp(),
        batches * a.batch,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Parameters from a llama2.c `.bin` or a `.ckpt`.
pub fn load_params(p: &Path) -> Result<Params> {
    if p.extension().is_some_and(|e| e == "ckpt") {
        Ok(checkpoint::load_or_explain(p)?.params)
    } else {
        Ok(Model::load(p)?.params)
    }
}

#[derive(clap::Args, Debug)]
pub struct GradArgs {
    /// llama2.c .bin model or .ckpt checkpoint.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Token data (uint16 ids).
    #[arg(long)]
    pub data: PathBuf,
    /// First token of the window: inputs are tokens[O..O+S], targets tokens[O+1..O+S+1].
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    /// Output safetensors file (tensor names as llama2.c's PyTorch model).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run_grad(a: GradArgs) -> Result<()> {
    set_threads(a.threads);
    let params = load_params(&a.model)?;
    let c = params.config().clone();
    let data = TokenData::open(&a.data)?;
    let toks = data.tokens();
    let end = a
        .offset
        .checked_add(a.seq + 1)
        .context("window overflows")?;
    if end > toks.len() {
        bail!(
            "{}: window {}..{} needs {} tokens but the file has {}",
            a.data.display(),
            a.offset,
            end,
            end,
            toks.len()
        );
    }
    if a.seq > c.seq_len {
        bail!("--seq {} exceeds the model's seq_len {}", a.seq, c.seq_len);
    }
    let win = &toks[a.offset..end];
    if let Some((i, &t)) = win
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= c.vocab_size)
    {
        bail!(
            "{}: token {t} at offset {} is not below the vocabulary size {}",
            a.data.display(),
            a.offset + i,
            c.vocab_size
        );
    }
    let inputs: Vec<u32> = win[..a.seq].iter().map(|&t| t as u32).collect();
    let targets: Vec<u32> = win[1..].iter().map(|&t| t as u32).collect();
    let mut k = crate::kernels::cpu::CpuKernels::new();
    let mut ws = Workspace::new(&c, 1, a.seq);
    let mut grads = Params::zeros(&c);
    let mut t = Timings::default();
    let loss = ws.forward_backward(&mut k, &params, &mut grads, &inputs, &targets, 1.0, &mut t)?;
    write_safetensors(&a.out, &grads, loss)?;
    println!(
        "loss {loss:.6}; wrote {} gradients ({} tensors) to {}",
        grads.data.len(),
        grads.layout.tensors().len(),
        a.out.display()
    );
    Ok(())
}

/// Writes every tensor of an arena as f32 safetensors, with the loss in the metadata.
pub fn write_safetensors(path: &Path, p: &Params, loss: f32) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let tensors = p.layout.tensors();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| {
            p.data[t.range.clone()]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(bytes.iter())
        .map(|(t, b)| {
            Ok((
                t.name.clone(),
                TensorView::new(Dtype::F32, t.shape.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    let meta = std::collections::HashMap::from([("loss".to_string(), format!("{loss}"))]);
    let out = safetensors::serialize(views, &Some(meta))?;
    crate::util::fs::write_atomic(path, |w| w.write_all(&out))
        .with_context(|| format!("{}: cannot write", path.display()))
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each measured step is what `anetrain train` does per optimizer step: zero \
the gradients, --accum forward+backward passes over random token ids, the gradient norm, clip and \
AdamW (`optim::clip_and_step`). The FMA peak is measured first (widest vector ISA, same thread \
count). On a shared machine run it as `chrt -f 10 anetrain bench ...` and repeat: the spread \
between min and max says how much the neighbours took."
)]
pub struct BenchArgs {
    /// Model preset or config file (random weights).
    #[arg(long, short, default_value = "stories110m")]
    pub model: String,
    #[arg(long, short, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Sequences accumulated per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Measured optimizer steps (after the warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Unmeasured optimizer steps first (first touch of every buffer, caches, clocks).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    #[arg(long, value_enum, default_value_t = Pipeline::Dynamic)]
    pub pipeline: Pipeline,
    /// Neural Engine chip profile (default: the chip this runs on, else conservative).
    #[arg(long)]
    pub ane_profile: Option<String>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Median, min and max of a non-empty sample.
fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|x, y| x.total_cmp(y));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    };
    (med, s[0], s[n - 1])
}

/// The process's peak resident set (VmHWM) in bytes, where /proc says it (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Minor page faults of the process so far (getrusage), 0 where unavailable.
fn minor_faults() -> u64 {
    // SAFETY: getrusage writes one rusage struct, which lives on this stack frame.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) == 0 {
            u.ru_minflt as u64
        } else {
            0
        }
    }
}

pub fn run_bench(a: BenchArgs) -> Result<()> {
    if a.steps == 0 || a.batch == 0 || a.seq == 0 || a.accum == 0 {
        bail!("--steps, --batch, --seq and --accum must each be at least 1");
    }
    let threads = set_threads(a.threads);
    let c = Config::resolve(&a.model)?;
    if a.seq > c.seq_len {
        bail!("--seq {} exceeds the model's seq_len {}", a.seq, c.seq_len);
    }
    let peak = crate::util::peak::measure_fma(threads);
    let mut params = Params::init_random(&c, 1);
    let mut grads = Params::zeros(&c);
    let mut opt = crate::train::optim::AdamW::new(&params.layout);
    let ocfg = AdamWConfig {
        lr: 1e-4,
        min_lr: 1e-5,
        warmup: 0,
        total_steps: 1000,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_clip: 1.0,
    };
    let mut k = make_kernels(
        a.backend,
        &c,
        a.batch,
        a.seq,
        a.pipeline,
        a.ane_profile.as_deref(),
        None,
    )?;
    let mut ws = Workspace::new(&c, a.batch, a.seq);
    let mut rng = crate::util::rng::Rng::new(7);
    let (n, accum) = (a.batch * a.seq, a.accum);
    let mut inputs = vec![0u32; n];
    let mut targets = vec![0u32; n];
    let mut step_ms = Vec::with_capacity(a.steps);
    let mut cum = Timings::default();
    let mut faults = 0u64;
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    for it in 0..a.warmup + a.steps {
        let mut t = Timings::default();
        let f0 = minor_faults();
        let t0 = std::time::Instant::now();
        // The trainer's optimizer step (src/train/trainer.rs, one_step), with random ids.
        t.time(Component::Optimizer, || {
            crate::train::optim::zero(&mut grads.data)
        });
        // The weights change once per optimizer step.
        ws.set_weights_version(it as u64);
        for _ in 0..accum {
            t.time(Component::Data, || {
                for (i, tg) in inputs.iter_mut().zip(targets.iter_mut()) {
                    *i = rng.below(c.vocab_size as u64) as u32;
                    *tg = rng.below(c.vocab_size as u64) as u32;
                }
            });
            ws.forward_backward(
                k.as_mut(),
                &params,
                &mut grads,
                &inputs,
                &targets,
                1.0 / accum as f32,
                &mut t,
            )?;
        }
        let t2 = std::time::Instant::now();
        let lr = ocfg.lr_at(opt.t);
        if let Err(e) = crate::train::optim::clip_and_step(
            &mut opt,
            &ocfg,
            lr,
            &mut params.data,
            &grads.data,
            1.0,
        ) {
            bail!(
                "gradient of {} is non-finite",
                params.layout.name_of(e.index)
            );
        }
        t.add(Component::Optimizer, ms(t2));
        let step = ms(t0);
        let measured = it >= a.warmup;
        if measured {
            faults += minor_faults() - f0;
            step_ms.push(step);
            cum.merge(&t);
        }
        if !a.json {
            eprintln!(
                "{} step: {step:.1} ms",
                if measured { "measured" } else { "warm-up" }
            );
        }
    }
    let (ms_step, min, max) = median_min_max(&step_ms);
    let seqs = (accum * a.batch) as f64;
    let ms_seq = ms_step / seqs;
    let flops = StepFlops::new(&c, a.batch, a.seq).total() * accum as f64;
    let gflops = flops / (ms_step * 1e6);
    let tps = (n * accum) as f64 / (ms_step / 1e3);
    let mfu = gflops / peak.gflops;
    let steps_f = a.steps as f64;
    let rss = peak_rss_bytes();
    let (mem_params, mem_acts) = crate::model::config::training_memory_bytes(&c, a.batch, a.seq);
    let comps: serde_json::Map<String, serde_json::Value> = cum
        .entries()
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v / steps_f)))
        .collect();
    let j = serde_json::json!({
        "model": a.model, "backend": a.backend.to_string(), "batch": a.batch, "seq": a.seq,
        "accum": accum, "threads": threads, "steps": a.steps, "warmup": a.warmup,
        "ms_per_step": ms_step, "ms_per_step_min": min, "ms_per_step_max": max,
        "ms_per_seq": ms_seq, "ms_per_seq_min": min / seqs, "ms_per_seq_max": max / seqs,
        "tokens_per_s": tps, "gflops": gflops, "flops_per_step": flops,
        "peak_gflops": peak.gflops, "peak_isa": peak.isa, "mfu": mfu,
        "timing_ms_per_step": comps, "page_faults_per_step": faults as f64 / steps_f,
        "peak_rss_bytes": rss, "memory_model_bytes": mem_params + mem_acts,
    });
    if a.json {
        println!("{j}");
    } else {
        println!(
            "{} batch {} x seq {} x accum {} on {} ({threads} threads)",
            a.model, a.batch, a.seq, accum, a.backend
        );
        println!(
            "  ms/step   median {ms_step:.1}  min {min:.1}  max {max:.1}  ({} steps after {} warm-up)",
            a.steps, a.warmup
        );
        println!(
            "  ms/seq    median {ms_seq:.1}  min {:.1}  max {:.1}",
            min / seqs,
            max / seqs
        );
        println!("  tokens/s  {tps:.0}");
        println!("  page faults per step  {:.0}", faults as f64 / steps_f);
        println!(
            "  GFLOP/s   {gflops:.1} ({:.2} GFLOP/step) = MFU {:.1}% of the measured FMA peak {peak}",
            flops / 1e9,
            100.0 * mfu
        );
        if let Some(r) = rss {
            println!(
                "  peak RSS  {:.0} MiB (model: {:.0} MiB = 16 B/param {:.0} + activations {:.0})",
                r as f64 / 1048576.0,
                (mem_params + mem_acts) as f64 / 1048576.0,
                mem_params as f64 / 1048576.0,
                mem_acts as f64 / 1048576.0
            );
        }
        println!("  time per component (ms/step):");
        for (k, v) in cum.entries() {
            println!("    {k:14} {:8.1}", v / steps_f);
        }
    }
    Ok(())
}
