//! `anetrain train` and `anetrain bench` run one and the same optimizer step,
//! `Stepper::step`: driven by hand with the same token windows, it reproduces both the
//! trainer's loop and the benchmark bit for bit, and the benchmark's per-component times are
//! the ones that function records (the trainer logs the same components per step).

mod common;

use anetrain::data::TokenData;
use anetrain::kernels::cpu::CpuKernels;
use anetrain::kernels::{BackendKind, Spec};
use anetrain::model::{Config, ModelSource, Params};
use anetrain::train::bench::{self, BenchSpec};
use anetrain::train::log::LogWriter;
use anetrain::train::loss_scale::LossScaler;
use anetrain::train::optim::{AdamW, AdamWConfig};
use anetrain::train::sampler::Sampler;
use anetrain::train::settings::{Sampling, Settings};
use anetrain::train::step::Workspace;
use anetrain::train::stepper::{StepOutcome, Stepper};
use anetrain::train::timing::Timings;
use anetrain::train::trainer::Trainer;
use anetrain::util::rng::Rng;

const BATCH: usize = 2;
const SEQ: usize = 16;
const ACCUM: usize = 2;
const STEPS: u64 = 4;

fn tiny_params(dir: &std::path::Path) -> (Params, TokenData) {
    let (cfg, data) = common::tiny_model_and_data(dir);
    let src = ModelSource::resolve(cfg.to_str().unwrap()).unwrap();
    let params = anetrain::train::load_params(&src, 3).unwrap();
    (params, TokenData::open(&data).unwrap())
}

fn optim() -> AdamWConfig {
    AdamWConfig {
        lr: 3e-3,
        min_lr: 3e-4,
        warmup: 1,
        total_steps: STEPS,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        // small enough that the steps clip
        grad_clip: 0.5,
    }
}

/// `Stepper::step` called directly, `steps` times, each micro-step's ids from `next`.
fn by_hand(
    params: Params,
    cfg: &AdamWConfig,
    steps: u64,
    next: &mut dyn FnMut(&mut [u32], &mut [u32]),
) -> (Stepper, Timings) {
    let c: Config = params.config().clone();
    let opt = AdamW::new(&params.layout);
    let mut s = Stepper::new(params, opt, LossScaler::fixed(1.0), BATCH * SEQ);
    let mut ws = Workspace::new(&c, BATCH, SEQ);
    let mut k = CpuKernels::new(Spec::new(&c, BATCH, SEQ));
    let mut t = Timings::default();
    for i in 0..steps {
        let out = s
            .step(&mut k, &mut ws, cfg, i, ACCUM, next, &mut t)
            .unwrap();
        assert!(matches!(out, StepOutcome::Applied { .. }), "{out:?}");
    }
    (s, t)
}

#[test]
fn the_trainer_runs_the_stepper() {
    let d = tempfile::tempdir().unwrap();
    let (params, data) = tiny_params(d.path());
    let settings = Settings {
        batch: BATCH,
        seq: SEQ,
        accum: ACCUM,
        steps: STEPS,
        optim: optim(),
        seed: 9,
        sampling: Sampling::Sequential,
        backend: BackendKind::Cpu,
        ckpt: d.path().join("m.ckpt"),
        ckpt_every: 0,
        keep_ckpts: 1,
        eval_every: 0,
        eval_batches: 1,
        sample_every: 0,
        log: None,
        tokenizer: None,
        max_bad_steps: 1,
        loss_scale: 1.0,
        quiet: true,
        until: None,
    };
    let mut tr = Trainer::new(
        settings,
        params.clone(),
        Box::new(CpuKernels::new(Spec::new(params.config(), BATCH, SEQ))),
    );
    let mut log = LogWriter::open(&d.path().join("run.jsonl")).unwrap();
    let out = tr.run(&data, None, &mut log, None, 0.0).unwrap();
    assert_eq!(out.steps_done, STEPS);

    let mut sampler = Sampler {
        rng: Rng::new(1),
        cursor: 0,
        mode: Sampling::Sequential,
    };
    let (s, _) = by_hand(params.clone(), &optim(), STEPS, &mut |i, t| {
        sampler.fill(&data, SEQ, i, t)
    });
    assert_ne!(
        s.params.data, params.data,
        "the steps must move the weights"
    );
    assert_eq!(tr.params().data, s.params.data);
    assert_eq!(tr.stepper.opt.m, s.opt.m);
    assert_eq!(tr.stepper.opt.v, s.opt.v);
    assert_eq!(tr.stepper.opt.t, STEPS);
}

#[test]
fn the_benchmark_runs_the_stepper_and_reports_its_timings() {
    let d = tempfile::tempdir().unwrap();
    let (params, _) = tiny_params(d.path());
    let c = params.config().clone();
    let spec = BenchSpec {
        batch: BATCH,
        seq: SEQ,
        accum: ACCUM,
        steps: 3,
        warmup: 1,
    };
    let mut calls = Vec::new();
    let run = bench::measure(
        &mut CpuKernels::new(Spec::new(&c, BATCH, SEQ)),
        params.clone(),
        &spec,
        &mut |m, _| calls.push(m),
    )
    .unwrap();
    assert_eq!(calls, [false, true, true, true]);
    assert_eq!(run.step_ms.len(), 3);

    let mut rng = Rng::new(7);
    let (s, t) = by_hand(params, &bench::bench_optim(), 4, &mut |i, tg| {
        bench::random_batch(&mut rng, c.vocab_size, i, tg)
    });
    assert_eq!(run.stepper.params.data, s.params.data);
    assert_eq!(run.stepper.opt.m, s.opt.m);
    // The benchmark's components are exactly those the step records (over its measured
    // steps): every one the hand-driven step timed, and none of its own.
    let names = |t: &Timings| t.entries().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(names(&run.timings), names(&t));
    for want in ["optimizer", "data"] {
        assert!(names(&t).contains(&want), "{want} missing: {:?}", names(&t));
    }
}
