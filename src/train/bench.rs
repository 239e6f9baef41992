//! `anetrain bench`: warm-up steps, then measured optimizer steps on random token ids with
//! random weights — each one [`Stepper::step`], the function the trainer's loop calls, so
//! the per-component times ([`Timings`]) are recorded by the trainer's own code path.
//! [`super::report::BenchReport`] turns a run into the printed table or JSON.

use super::distributed::{Group, SyncStats};
use super::loss_scale::LossScaler;
use super::optim::{AdamW, AdamWConfig};
use super::settings;
use super::step::Workspace;
use super::stepper::{StepOutcome, Stepper};
use super::timing::Timings;
use crate::kernels::Kernels;
use crate::model::Params;
use crate::util::rng::Rng;
use anyhow::{bail, Result};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub batch: usize,
    pub seq: usize,
    /// Micro-steps accumulated per optimizer step.
    pub accum: usize,
    /// Measured optimizer steps.
    pub steps: usize,
    /// Unmeasured steps first (first touch of every buffer, caches, clocks).
    pub warmup: usize,
}

/// The optimizer settings of the benchmark (a mid-run learning rate; clipping on, as in
/// training).
pub fn bench_optim() -> AdamWConfig {
    AdamWConfig {
        lr: 1e-4,
        min_lr: 1e-5,
        warmup: 0,
        total_steps: 1000,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_clip: 1.0,
    }
}

/// Random ids in `[0, vocab)` for inputs and targets, from `rng`.
pub fn random_batch(rng: &mut Rng, vocab: usize, inputs: &mut [u32], targets: &mut [u32]) {
    for (i, t) in inputs.iter_mut().zip(targets.iter_mut()) {
        *i = rng.below(vocab as u64) as u32;
        *t = rng.below(vocab as u64) as u32;
    }
}

/// The measurements of one benchmark run.
pub struct BenchRun {
    /// Wall milliseconds of each measured step.
    pub step_ms: Vec<f64>,
    /// Components summed over the measured steps.
    pub timings: Timings,
    /// Minor page faults over the measured steps.
    pub page_faults: u64,
    /// The state after the last step (parameters, moments).
    pub stepper: Stepper,
    /// The backend's counters over the measured steps (per-program Neural Engine times).
    pub backend: crate::kernels::BackendStats,
    /// Data parallel: this rank's communication over the measured steps.
    pub sync: Option<SyncStats>,
}

/// What `bench --distributed` reports per measured step, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistributedFigures {
    /// The step without the wait for the all-reduce: forward, backward, optimizer.
    pub compute_ms: f64,
    /// The all-reduce's own duration (its thread, overlapped with the backward or not).
    pub allreduce_ms: f64,
    /// The part of the all-reduce the step waited for after its backward.
    pub exposed_ms: f64,
    /// Gradient bytes each rank handed to the all-reduce.
    pub bytes: f64,
}

impl DistributedFigures {
    pub fn new(run: &BenchRun) -> Option<DistributedFigures> {
        let s = run.sync?;
        let n = run.step_ms.len().max(1) as f64;
        let step_ms = run.step_ms.iter().sum::<f64>() / n;
        Some(DistributedFigures {
            compute_ms: step_ms - s.wait_ms / n,
            allreduce_ms: s.reduce_ms / n,
            exposed_ms: s.wait_ms / n,
            bytes: 4.0 * s.values as f64 / n,
        })
    }

    /// The share of the all-reduce hidden behind the backward (0 … 1).
    pub fn overlap(&self) -> f64 {
        if self.allreduce_ms > 0.0 {
            (1.0 - self.exposed_ms / self.allreduce_ms).clamp(0.0, 1.0)
        } else {
            1.0
        }
    }
}

/// Runs `spec.warmup + spec.steps` optimizer steps of `params` on backend `k`, drawing token
/// ids from `Rng::new(7)`; the loss scale is the trainer's choice for this backend.
/// `on_step(measured, ms)` is called after each step.
pub fn measure(
    k: &mut dyn Kernels,
    params: Params,
    spec: &BenchSpec,
    on_step: &mut dyn FnMut(bool, f64),
) -> Result<BenchRun> {
    measure_in(k, params, spec, on_step, None)
}

/// [`measure`] as one rank of `group` (data parallel; rank r draws from `Rng::new(7 + r)`).
pub fn measure_in(
    k: &mut dyn Kernels,
    params: Params,
    spec: &BenchSpec,
    on_step: &mut dyn FnMut(bool, f64),
    mut group: Option<&mut dyn Group>,
) -> Result<BenchRun> {
    if spec.steps == 0 || spec.batch == 0 || spec.seq == 0 || spec.accum == 0 {
        bail!("--steps, --batch, --seq and --accum must each be at least 1");
    }
    let c = params.config().clone();
    if spec.seq > c.seq_len {
        bail!(
            "--seq {} exceeds the model's seq_len {}",
            spec.seq,
            c.seq_len
        );
    }
    let tokens = spec.batch * spec.seq;
    let scale = settings::initial_loss_scale(k.needs_loss_scaling(), None, tokens);
    let scaler = LossScaler::starting_at(scale, k.needs_loss_scaling());
    let opt = AdamW::new(&params.layout);
    let mut stepper = Stepper::new(params, opt, scaler, tokens);
    let cfg = bench_optim();
    let mut ws = Workspace::new(&c, spec.batch, spec.seq);
    let mut rng = Rng::new(7 + group.as_ref().map_or(0, |g| g.rank() as u64));
    let mut sync_before = SyncStats::default();
    let mut step_ms = Vec::with_capacity(spec.steps);
    let mut timings = Timings::default();
    let mut page_faults = 0u64;
    let mut before = k.stats();
    for it in 0..spec.warmup + spec.steps {
        if it == spec.warmup {
            before = k.stats();
            sync_before = group.as_ref().map(|g| g.stats()).unwrap_or_default();
        }
        let mut t = Timings::default();
        let f0 = minor_faults();
        let t0 = std::time::Instant::now();
        let outcome = stepper.step_in(
            k,
            &mut ws,
            &cfg,
            it as u64,
            spec.accum,
            &mut |inputs, targets| random_batch(&mut rng, c.vocab_size, inputs, targets),
            &mut t,
            group.as_mut().map(|g| &mut **g as &mut dyn Group),
        )?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if let StepOutcome::Skipped { reason } = outcome {
            bail!("benchmark step {} was skipped: {reason}", it + 1);
        }
        let measured = it >= spec.warmup;
        if measured {
            page_faults += minor_faults() - f0;
            step_ms.push(ms);
            timings.merge(&t);
        }
        on_step(measured, ms);
    }
    let sync = group.map(|g| {
        let (now, b) = (g.stats(), sync_before);
        SyncStats {
            reduce_ms: now.reduce_ms - b.reduce_ms,
            wait_ms: now.wait_ms - b.wait_ms,
            values: now.values - b.values,
            buckets: now.buckets - b.buckets,
        }
    });
    Ok(BenchRun {
        step_ms,
        timings,
        page_faults,
        stepper,
        backend: k.stats().since(&before),
        sync,
    })
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

/// The process's peak resident set (VmHWM) in bytes, where /proc says it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
