//! The training loop: one optimizer step ([`Stepper::step`]: sampled windows, forward and
//! backward with gradient accumulation, the non-finite guard, clipping, AdamW, the loss
//! scale), then log, evaluate, checkpoint and sample on their intervals; restart before the
//! compile budget runs out. A checkpoint holds everything the loop's state
//! depends on, so a resumed run reproduces an uninterrupted one bit for bit.

use super::checkpoint::{self, Header};
use super::distributed::{self, Group};
use super::eval::evaluate;
use super::log::{now_unix, Event, LogWriter, RunHeader, StepRecord};
use super::loss_scale::LossScaler;
use super::optim::AdamW;
use super::sampler::Sampler;
use super::settings::Settings;
use super::step::Workspace;
use super::stepper::{StepOutcome, Stepper};
use super::timing::Timings;
use crate::data::TokenData;
use crate::kernels::Kernels;
use crate::model::{Config, Params, StepFlops};
use crate::util::rng::Rng;
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

/// Set by SIGINT/SIGTERM: the loop finishes the current step, checkpoints and reports.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// The signal that set [`STOP`] (0: none yet).
pub static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Installs the SIGINT/SIGTERM handlers that request a clean stop.
pub fn install_signal_handlers() {
    extern "C" fn on_signal(sig: libc::c_int) {
        STOP_SIGNAL.store(sig, Ordering::SeqCst);
        STOP.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

/// Steps between the ranks' parameter checksums (`--check-every`).
pub const DEFAULT_CHECK_EVERY: u64 = 50;

/// Turns the current parameters into a text sample (for the log's `sample` events).
pub type SampleFn<'a> = &'a dyn Fn(&Params) -> Result<String>;

/// What the loop ended with.
pub struct Outcome {
    pub steps_done: u64,
    pub last_loss: f32,
    pub first_loss: Option<f32>,
    pub val_loss: Option<f32>,
    pub ckpt: PathBuf,
    pub interrupted: bool,
    /// Steps of this process skipped for a non-finite loss or gradient (their update not
    /// applied).
    pub skipped: u64,
    /// Whether the backend scales the loss (fp16): a skipped step is then the loss scale
    /// backing off, not a sign that the run is failing.
    pub loss_scaling: bool,
    /// The compile budget is nearly spent: the caller must re-exec the process with
    /// `--resume` (the checkpoint has been written).
    pub restart: bool,
    /// The run stopped at [`Trainer::time_limit`] before its last step (with a checkpoint).
    pub time_limited: bool,
}

impl Outcome {
    /// Why a run that reached its end did not train as asked, if it did not: steps were
    /// skipped on a backend without loss scaling (an fp32 run skips only when it diverges).
    pub fn failure(&self) -> Option<String> {
        (self.skipped > 0 && !self.loss_scaling).then(|| {
            format!(
                "{} of {} steps were skipped (non-finite loss or gradients; their updates were \
                 not applied): the run diverged — lower --lr or --grad-clip",
                self.skipped, self.steps_done
            )
        })
    }
}

/// What one call of [`Trainer::run`] tracks besides the trainer's own state.
#[derive(Default)]
struct RunState {
    first_loss: Option<f32>,
    val_loss: Option<f32>,
    /// Non-finite steps in a row, and the reason of the first of them.
    bad_run: u32,
    first_bad: Option<String>,
    /// Skipped steps in all.
    skipped: u64,
    interrupted: bool,
    time_limited: bool,
    /// A checkpoint failed (disk full…) and is retried after the next step.
    ckpt_pending: bool,
}

impl RunState {
    fn outcome(&self, t: &Trainer, start_step: u64, restart: bool) -> Outcome {
        Outcome {
            steps_done: t.step - start_step,
            last_loss: t.last_loss,
            first_loss: self.first_loss,
            val_loss: self.val_loss,
            ckpt: t.s.ckpt.clone(),
            interrupted: self.interrupted && !restart,
            skipped: self.skipped,
            loss_scaling: t.stepper.scaler.dynamic,
            restart,
            time_limited: self.time_limited,
        }
    }
}

/// The state of a run between steps.
pub struct Trainer {
    pub s: Settings,
    /// Parameters, gradients, AdamW moments and the loss scale: what one step changes.
    pub stepper: Stepper,
    /// Optimizer steps taken, skipped ones included (they consume their data).
    pub step: u64,
    pub sampler: Sampler,
    pub cum: Timings,
    pub wall_s: f64,
    pub last_loss: f32,
    pub best_val: Option<f32>,
    pub data_desc: Option<String>,
    /// The training data as recorded in the checkpoint's settings (under `"data"`), so that
    /// `--resume` continues on it: see `session::DataRecord`.
    pub data_record: Option<serde_json::Value>,
    /// Seconds of training after which this process stops with a checkpoint, as at
    /// `--until` (`--time-limit`; `None`: no limit).
    pub time_limit: Option<f64>,
    pub kernels: Box<dyn Kernels>,
    /// Data parallel: this process's ranks group. Rank 0 alone evaluates, samples and writes
    /// checkpoints (the caller gives the other ranks a disabled log).
    pub group: Option<Box<dyn Group>>,
    /// Data parallel: the ranks compare a checksum of their parameters and moments every
    /// this many steps (0: only at the end).
    pub check_every: u64,
    /// Test hook (`ANETRAIN_PERTURB_AT=STEP`): after step STEP one parameter of this
    /// process is nudged, to exercise the ranks' checksum comparison end to end.
    perturb_at: Option<u64>,
}

impl Trainer {
    /// A fresh run from the given parameters. The loss scale starts at `s.loss_scale` and
    /// moves only if the backend needs loss scaling.
    pub fn new(s: Settings, params: Params, kernels: Box<dyn Kernels>) -> Trainer {
        let opt = AdamW::new(&params.layout);
        let scaler = LossScaler::starting_at(s.loss_scale, kernels.needs_loss_scaling());
        let stepper = Stepper::new(params, opt, scaler, s.batch * s.seq);
        let sampler = Sampler {
            rng: Rng::new(s.seed ^ 0x5EED_DA7A),
            cursor: 0,
            mode: s.sampling,
        };
        Trainer {
            s,
            stepper,
            step: 0,
            sampler,
            cum: Timings::default(),
            wall_s: 0.0,
            last_loss: f32::NAN,
            best_val: None,
            data_desc: None,
            data_record: None,
            time_limit: None,
            kernels,
            group: None,
            check_every: DEFAULT_CHECK_EVERY,
            perturb_at: std::env::var("ANETRAIN_PERTURB_AT")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    /// Continues exactly from a checkpoint.
    pub fn resume(s: Settings, ck: checkpoint::Checkpoint, kernels: Box<dyn Kernels>) -> Trainer {
        let h = ck.header;
        let mut t = Trainer::new(s, ck.params, kernels);
        t.stepper.opt = AdamW::from_state(&t.stepper.params.layout, ck.m, ck.v, h.adam_t);
        t.step = h.step;
        t.sampler.rng.state = h.sampler_rng;
        t.sampler.cursor = h.sampler_cursor;
        if h.loss_scale > 0.0 {
            t.stepper.scaler.scale = h.loss_scale;
        }
        t.stepper.scaler.good_steps = h.loss_scale_good_steps;
        let mut ms = [0f64; 17];
        for (d, v) in ms.iter_mut().zip(h.timings_ms.iter()) {
            *d = *v;
        }
        t.cum = Timings::from_array(ms);
        t.wall_s = h.wall_s;
        t.last_loss = h.last_loss;
        t.best_val = h.best_val_loss;
        t
    }

    pub fn params(&self) -> &Params {
        &self.stepper.params
    }

    pub fn config(&self) -> &Config {
        self.stepper.params.config()
    }

    /// (rank, ranks): (0, 1) for a process on its own.
    pub fn rank_of(&self) -> (usize, usize) {
        self.group.as_ref().map_or((0, 1), |g| (g.rank(), g.size()))
    }

    /// Whether this process writes the run's files (checkpoints, log, samples).
    fn writes(&self) -> bool {
        self.rank_of().0 == 0
    }

    /// Data parallel: stops with an error when the ranks' parameters or moments differ.
    fn check_ranks_agree(&mut self) -> Result<()> {
        let Some(g) = self.group.as_mut() else {
            return Ok(());
        };
        let st = &self.stepper;
        let sum = distributed::checksum(&[&st.params.data, &st.opt.m, &st.opt.v]);
        let all = g.gather_u64(sum);
        if all.iter().any(|&s| s != all[0]) {
            let sums: Vec<String> = all
                .iter()
                .enumerate()
                .map(|(r, s)| format!("rank {r}: {s:016x}"))
                .collect();
            bail!(
                "after step {} the ranks' parameters differ ({}): the ranks have diverged —                  every rank must run the same anetrain build, backend and --gemm on CPUs that                  round alike; the last good checkpoint {} is intact",
                self.step,
                sums.join(", "),
                self.s.ckpt.display()
            );
        }
        Ok(())
    }

    fn header(&self) -> Header {
        Header {
            config: self.config().clone(),
            step: self.step,
            total_steps: self.s.steps,
            adam_t: self.stepper.opt.t,
            sampler_rng: self.sampler.rng.state,
            sampler_cursor: self.sampler.cursor,
            loss_scale: self.stepper.scaler.scale,
            loss_scale_good_steps: self.stepper.scaler.good_steps,
            timings_ms: self.cum.as_array().to_vec(),
            wall_s: self.wall_s,
            last_loss: self.last_loss,
            best_val_loss: self.best_val,
            settings: {
                let mut v = serde_json::to_value(&self.s).unwrap_or_default();
                if let (Some(m), Some(d)) = (v.as_object_mut(), &self.data_record) {
                    m.insert("data".into(), d.clone());
                }
                v
            },
            tokenizer: self.s.tokenizer.as_ref().map(|p| p.display().to_string()),
            data: self.data_desc.clone(),
            world_size: self.rank_of().1,
        }
    }

    /// Writes the checkpoint (atomically, rotating older ones).
    pub fn save_checkpoint(&self) -> Result<f64> {
        let t = Instant::now();
        checkpoint::save(
            &self.s.ckpt,
            &self.header(),
            &self.stepper.params.data,
            &self.stepper.opt.m,
            &self.stepper.opt.v,
            self.s.keep_ckpts.max(1),
        )?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }

    /// The loop. `val` is evaluated every `eval_every` steps; `sample` turns the current
    /// parameters into a text sample every `sample_every` steps.
    pub fn run(
        &mut self,
        data: &TokenData,
        val: Option<&TokenData>,
        log: &mut LogWriter,
        sample: Option<SampleFn>,
        peak_gflops: f64,
    ) -> Result<Outcome> {
        let (b, seq) = (self.s.batch, self.s.seq);
        data.validate(seq, self.config().vocab_size)?;
        if let Some(v) = val {
            v.validate(seq, self.config().vocab_size)?;
        }
        let mut ws = Workspace::new(self.config(), b, seq);
        let (rank, ranks) = self.rank_of();
        let accum = self.s.accum.max(1);
        let tokens_per_step = (b * seq * accum * ranks) as u64;
        self.log_header(log, tokens_per_step, peak_gflops)?;

        let progress = Progress::new(self.step, self.s.steps, self.s.quiet);
        let start_step = self.step;
        let mut r = RunState::default();
        let run_start = Instant::now();
        let wall_before = self.wall_s;

        let stop_at = self.s.until.unwrap_or(u64::MAX).min(self.s.steps);
        while self.step < stop_at {
            if self.step > start_step
                && self.check_every > 0
                && self.step.is_multiple_of(self.check_every)
            {
                self.check_ranks_agree()?;
            }
            let mut stop = STOP.load(Ordering::SeqCst);
            let mut timed_out = self
                .time_limit
                .is_some_and(|l| self.step > start_step && run_start.elapsed().as_secs_f64() >= l);
            if let Some(g) = self.group.as_mut() {
                // A signal or the clock reaches the ranks at different moments: all stop
                // after the same step.
                let all = g.gather_u64(stop as u64 | (timed_out as u64) << 1);
                stop = all.iter().any(|v| v & 1 != 0);
                timed_out = all.iter().any(|v| v & 2 != 0);
            }
            if stop {
                r.interrupted = true;
                break;
            }
            if timed_out {
                r.time_limited = true;
                break;
            }
            if self.compile_budget_spent(log, &progress)? {
                return Ok(r.outcome(self, start_step, true));
            }
            let mut t = Timings::default();
            let t_step = Instant::now();
            let sampler = &mut self.sampler;
            // Rank r draws the windows of global micro-steps r·accum … (r+1)·accum − 1 and
            // steps over the others' (every rank's sampler stays in the same state).
            let mut drawn = 0;
            let outcome = self.stepper.step_in(
                self.kernels.as_mut(),
                &mut ws,
                &self.s.optim,
                self.step,
                self.s.accum,
                &mut |inputs, targets| {
                    if drawn == 0 {
                        sampler.skip(data, seq, rank * accum * b);
                    }
                    sampler.fill(data, seq, inputs, targets);
                    drawn += 1;
                    if drawn == accum {
                        sampler.skip(data, seq, (ranks - 1 - rank) * accum * b);
                    }
                },
                &mut t,
                self.group.as_mut().map(|g| g.as_mut() as &mut dyn Group),
            )?;
            let ms = t_step.elapsed().as_secs_f64() * 1e3;
            if self.perturb_at == Some(self.step + 1) {
                let p = &mut self.stepper.params.data[0];
                *p = f32::from_bits(p.to_bits() ^ 1);
            }
            self.report_fallbacks(log, &progress);
            self.cum.merge(&t);
            self.wall_s = wall_before + run_start.elapsed().as_secs_f64();
            match outcome {
                StepOutcome::Skipped { reason } => {
                    self.skipped(&reason, &mut r, log, &progress)?;
                    // A skipped step still consumes its data, so the run moves on.
                    self.step += 1;
                    continue;
                }
                StepOutcome::Applied { loss, grad_norm } => {
                    r.bad_run = 0;
                    r.first_bad = None;
                    self.last_loss = loss;
                    r.first_loss.get_or_insert(loss);
                    self.step += 1;
                    self.log_step(log, &progress, grad_norm, ms, tokens_per_step, &t);
                }
            }
            if let Some(v) = val {
                self.evaluate_if_due(&mut ws, v, &mut r, log, &progress)?;
            }
            if let Some(f) = sample {
                self.sample_if_due(f, log);
            }
            let due = self.s.ckpt_every > 0 && self.step.is_multiple_of(self.s.ckpt_every);
            if (due || r.ckpt_pending) && self.step < stop_at {
                r.ckpt_pending = !self.checkpoint_logged(log, &progress)?;
            }
        }
        self.wall_s = wall_before + run_start.elapsed().as_secs_f64();
        progress.finish();
        self.check_ranks_agree()?;
        if self.step > start_step || r.interrupted || !self.s.ckpt.exists() {
            // The final checkpoint: failures here are fatal, the state must not be lost silently.
            let existed = self.s.ckpt.exists();
            let ok = self.checkpoint_logged(log, &progress)?;
            if !ok {
                bail!(
                    "could not write the final checkpoint {} (see the message above); {}",
                    self.s.ckpt.display(),
                    if existed {
                        "the previous checkpoint is intact"
                    } else {
                        "no checkpoint of this run exists"
                    }
                );
            }
        }
        let report = super::report::Report::new(
            self.config(),
            &self.s,
            self.step - start_step,
            run_start.elapsed().as_secs_f64(),
            &self.cum,
            self.kernels.stats(),
            peak_gflops,
        );
        // --quiet silences the report of a run that ended as planned; a run stopped by a
        // signal reports where its time went (on stderr), whoever asked for the stop.
        if !self.s.quiet || r.interrupted {
            report.print();
        }
        log.emit(&Event::Report(report.to_json()));
        Ok(r.outcome(self, start_step, false))
    }

    /// The `run` event that opens this process's part of the log.
    fn log_header(
        &self,
        log: &mut LogWriter,
        tokens_per_step: u64,
        peak_gflops: f64,
    ) -> Result<()> {
        let (b, seq) = (self.s.batch, self.s.seq);
        let ranks = self.rank_of().1;
        let flops =
            StepFlops::new(self.config(), b, seq).total() * (self.s.accum.max(1) * ranks) as f64;
        log.emit(&Event::Run(RunHeader {
            pid: std::process::id(),
            start_unix: now_unix(),
            backend: self.kernels.name().to_string(),
            model: serde_json::to_value(self.config())?,
            params: self.config().num_params() as u64,
            batch: b,
            seq,
            accum: self.s.accum,
            total_steps: self.s.steps,
            start_step: self.step,
            tokens_per_step,
            flops_per_step: flops,
            peak_gflops,
            ckpt: Some(absolute(&self.s.ckpt)),
            tokenizer: self.s.tokenizer.as_ref().map(|p| p.display().to_string()),
            args: serde_json::to_value(&self.s)?,
            world_size: ranks,
        }));
        Ok(())
    }

    /// Whether the next update would exceed the Neural Engine's compile budget; then the
    /// state is checkpointed for the `exec()` restart.
    fn compile_budget_spent(&self, log: &mut LogWriter, progress: &Progress) -> Result<bool> {
        let (Some(left), need) = (
            self.kernels.compiles_left(),
            self.kernels.compiles_per_update(),
        ) else {
            return Ok(false);
        };
        if need == 0 || left >= need {
            return Ok(false);
        }
        progress.finish();
        if !self.checkpoint_logged(log, progress)? {
            bail!("cannot checkpoint before the compile-budget restart");
        }
        if self.group.is_some() {
            bail!(
                "compile budget: {left} compiles left, {need} needed per update; a rank of a                  data-parallel run cannot restart itself: the checkpoint {} is written,                  start the run again with --resume",
                self.s.ckpt.display()
            );
        }
        progress.println(&format!(
            "compile budget: {left} compiles left, {need} needed per update; restarting the process from {}",
            self.s.ckpt.display()
        ));
        Ok(true)
    }

    /// Kernels the backend moved to the CPU during this step: a warning once each (naming the
    /// kernel, the device's error and `anetrain ane check`) and a `fallback` event.
    fn report_fallbacks(&mut self, log: &mut LogWriter, progress: &Progress) {
        for f in self.kernels.take_fallbacks() {
            progress.warn(&format!(
                "warning: the Neural Engine refused {}; it runs on the CPU from now on \
                 (results unchanged beyond fp16 vs fp32; `anetrain ane check` diagnoses it, \
                 --ane-strict stops instead): {}",
                f.kernel, f.error
            ));
            log.emit(&Event::Fallback {
                step: self.step + 1,
                kernel: f.kernel.to_string(),
                error: f.error,
                time: now_unix(),
            });
        }
    }

    /// Reports a skipped step; stops the run after `max_bad_steps` in a row.
    fn skipped(
        &self,
        reason: &str,
        r: &mut RunState,
        log: &mut LogWriter,
        progress: &Progress,
    ) -> Result<()> {
        r.bad_run += 1;
        r.skipped += 1;
        r.first_bad.get_or_insert_with(|| reason.to_string());
        let scaler = &self.stepper.scaler;
        progress.println(&format!(
            "step {}: skipped, {reason}{}",
            self.step + 1,
            if scaler.dynamic {
                format!("; loss scale now {}", scaler.scale)
            } else {
                String::new()
            }
        ));
        log.emit(&Event::Skip {
            step: self.step + 1,
            reason: reason.to_string(),
            time: now_unix(),
        });
        if r.bad_run >= self.s.max_bad_steps {
            progress.finish();
            bail!(
                "training stopped after {} consecutive non-finite steps (first: {}); the last good checkpoint {} is untouched",
                r.bad_run,
                r.first_bad.clone().unwrap_or_default(),
                self.s.ckpt.display()
            );
        }
        Ok(())
    }

    /// The `step` event and the progress line of the step just taken.
    fn log_step(
        &self,
        log: &mut LogWriter,
        progress: &Progress,
        grad_norm: f64,
        ms: f64,
        tokens_per_step: u64,
        t: &Timings,
    ) {
        let tps = tokens_per_step as f64 / (ms / 1e3);
        log.emit(&Event::Step(StepRecord {
            step: self.step,
            loss: self.last_loss as f64,
            lr: self.s.optim.lr_at(self.step - 1) as f64,
            grad_norm,
            ms,
            tokens_per_s: tps,
            timing: t.to_map(),
            compiles: self.kernels.stats().compiles,
            time: now_unix(),
        }));
        progress.update(self.step, self.last_loss, ms, tps);
    }

    /// Validation every `eval_every` steps and at the last one.
    fn evaluate_if_due(
        &mut self,
        ws: &mut Workspace,
        val: &TokenData,
        r: &mut RunState,
        log: &mut LogWriter,
        progress: &Progress,
    ) -> Result<()> {
        let every = self.s.eval_every;
        if every == 0
            || !(self.step.is_multiple_of(every) || self.step == self.s.steps)
            || !self.writes()
        {
            return Ok(());
        }
        let (b, seq) = (self.s.batch, self.s.seq);
        let vl = evaluate(
            self.kernels.as_mut(),
            ws,
            &self.stepper.params,
            val,
            b,
            seq,
            self.s.eval_batches,
        )?;
        r.val_loss = Some(vl);
        if self.best_val.is_none_or(|bv| vl < bv) {
            self.best_val = Some(vl);
        }
        progress.println(&format!(
            "step {}: train loss {:.4}, val loss {vl:.4}",
            self.step, self.last_loss
        ));
        log.emit(&Event::Eval {
            step: self.step,
            val_loss: vl as f64,
            time: now_unix(),
        });
        Ok(())
    }

    /// A text sample every `sample_every` steps (a failed sample is not an error).
    fn sample_if_due(&self, f: SampleFn, log: &mut LogWriter) {
        if self.s.sample_every > 0 && self.step.is_multiple_of(self.s.sample_every) {
            if let Ok(text) = f(&self.stepper.params) {
                log.emit(&Event::Sample {
                    step: self.step,
                    text,
                    time: now_unix(),
                });
            }
        }
    }

    /// Checkpoints and logs; on an I/O error (disk full, permissions) prints and logs a
    /// clear message and returns false so the caller retries at the next opportunity.
    fn checkpoint_logged(&self, log: &mut LogWriter, progress: &Progress) -> Result<bool> {
        if !self.writes() {
            return Ok(true);
        }
        match self.save_checkpoint() {
            Ok(ms) => {
                log.emit(&Event::Checkpoint {
                    step: self.step,
                    path: absolute(&self.s.ckpt),
                    ms,
                    time: now_unix(),
                });
                Ok(true)
            }
            Err(e) => {
                let msg = format!("{e:#}; training continues and will retry at the next interval");
                progress.warn(&format!("warning: {msg}"));
                log.emit(&Event::Error {
                    step: self.step,
                    message: msg,
                    time: now_unix(),
                });
                Ok(false)
            }
        }
    }
}

/// A path as the log records it: absolute, so that a reader of the log (the dashboard) finds
/// the file whatever its working folder.
fn absolute(p: &std::path::Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// The progress display: an indicatif bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    quiet: bool,
    last_print: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(start: u64, total: u64, quiet: bool) -> Progress {
        use std::io::IsTerminal;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_position(start);
            b
        });
        Progress {
            bar,
            total,
            quiet,
            last_print: std::cell::Cell::new(Instant::now() - std::time::Duration::from_secs(60)),
        }
    }

    fn update(&self, step: u64, loss: f32, ms: f64, tps: f64) {
        let msg = format!("loss {loss:.4} | {ms:.0} ms/step | {tps:.0} tok/s");
        if let Some(b) = &self.bar {
            b.set_position(step);
            b.set_message(msg);
        } else if !self.quiet
            && (self.last_print.get().elapsed().as_secs_f64() >= 5.0 || step == self.total)
        {
            let eta = (self.total - step) as f64 * ms / 1e3;
            eprintln!("step {step}/{} {msg} | eta {eta:.0}s", self.total);
            self.last_print.set(Instant::now());
        }
    }

    fn println(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None if !self.quiet => eprintln!("{s}"),
            None => {}
        }
    }

    /// Always shown, even with --quiet.
    fn warn(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
