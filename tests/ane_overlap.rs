//! Compiles beside evaluations (static pipeline, profile rule C25): with a background compile
//! thread the step computes exactly what it computes with compiles on the critical path, every
//! weight-bearing program of a version goes through the thread, and the Neural Engine's time
//! line (the simulator's estimates) shows compile time moved off the critical path.

use anetrain::ane::backend::AneKernels;
use anetrain::ane::chip::Profile;
use anetrain::ane::compile_queue::Timeline;
use anetrain::ane::device::{Compiled, Device};
use anetrain::ane::sim::SimDevice;
use anetrain::ane::Pipeline;
use anetrain::kernels::Kernels;
use anetrain::model::{Config, Params};
use anetrain::train::step::Workspace;
use anetrain::train::timing::Timings;

const SEQ: usize = 64;

fn config() -> Config {
    let mut c = Config::preset("stories260k").unwrap();
    c.vocab_size = 64;
    c.n_layers = 3;
    c
}

/// Loss and gradients of three weight versions (the parameters move between them).
fn run(k: &mut AneKernels, c: &Config) -> Vec<(f32, Vec<f32>)> {
    let mut p = Params::init_random(c, 7);
    let mut ws = Workspace::new(c, 1, SEQ);
    let inputs: Vec<u32> = (0..SEQ as u32).map(|i| (i * 7 + 3) % 64).collect();
    let targets: Vec<u32> = (0..SEQ as u32).map(|i| (i * 5 + 1) % 64).collect();
    let mut out = Vec::new();
    for v in 1..=3u64 {
        ws.set_weights_version(v);
        let mut g = Params::zeros(c);
        let loss = ws
            .forward_backward(
                k,
                &p,
                &mut g,
                &inputs,
                &targets,
                1.0,
                &mut Timings::default(),
            )
            .unwrap();
        out.push((loss, g.data.clone()));
        for (i, w) in p.data.iter_mut().enumerate() {
            *w += 1e-3 * ((i % 13) as f32 - 6.0);
        }
    }
    out
}

fn backend(profile: &str) -> AneKernels {
    let p = Profile::named(profile).unwrap();
    AneKernels::new(
        Box::new(SimDevice::with_profile(p).budget(1000)),
        &config(),
        1,
        SEQ,
        Pipeline::Static,
    )
    .unwrap()
}

#[test]
fn background_compiles_change_nothing_but_the_critical_path() {
    let c = config();
    let mut serial = backend("conservative");
    let mut bg = backend("conservative,background-compile=on");
    let a = run(&mut serial, &c);
    let b = run(&mut bg, &c);
    for (v, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.0.to_bits(), y.0.to_bits(), "loss of version {}", v + 1);
        assert!(
            x.1.iter()
                .zip(&y.1)
                .all(|(p, q)| p.to_bits() == q.to_bits()),
            "gradients of version {} differ",
            v + 1
        );
    }

    let (s, t) = (serial.stats(), bg.stats());
    let per_update = serial.compiles_per_update();
    assert_eq!(per_update, 5 * c.n_layers as u64);
    // The same programs in both (sdpaBwd2 once, then every weight-bearing one per version).
    assert_eq!(s.compiles, 1 + 3 * per_update);
    assert_eq!(t.compiles, s.compiles);
    assert_eq!(s.background_compiles, 0);
    assert_eq!(t.background_compiles, 3 * per_update);

    // The time line, in the device's estimates: serially every compile is on the critical
    // path; in the background the same compile time, less of it waited for.
    let (st, se) = (s.compile_est_ms.unwrap(), s.compile_exposed_est_ms.unwrap());
    let (tt, te) = (t.compile_est_ms.unwrap(), t.compile_exposed_est_ms.unwrap());
    assert!(st > 0.0);
    assert!((st - se).abs() < 1e-9 * st, "serial: {se} of {st} exposed");
    assert!(
        (st - tt).abs() < 1e-9 * st,
        "the same programs: {st} vs {tt}"
    );
    assert!(te < se, "background: {te} exposed, serial {se}");
    // The report says so.
    let lines = bg.stats().device_lines(3.0).join("\n");
    assert!(
        lines.contains("on the critical path") && lines.contains("in the background"),
        "{lines}"
    );
}

/// With one compiler thread the time line is an exact schedule: recomputed here by hand from
/// the per-program estimates of the backend's own order, it matches the backend's figure.
#[test]
fn the_timeline_is_the_schedule_of_one_compiler_beside_the_device() {
    // Three programs of 50 ms each submitted at t = 0; the device evaluates each for 1 ms
    // as soon as it is ready: waits 50, 49, 49 → 148 of 150 ms exposed.
    let mut tl = Timeline::default();
    let ready: Vec<f64> = (0..3).map(|_| tl.background_compile(0.0, 50.0)).collect();
    for r in ready {
        tl.need(r);
        tl.eval(1.0);
    }
    assert_eq!(tl.exposed_ms, 148.0);
    assert_eq!(tl.compile_ms, 150.0);
}

#[test]
fn a_program_compiled_for_another_device_is_refused() {
    let mut d = SimDevice::new();
    let e = d.install(Compiled::new(42u32, None)).unwrap_err();
    assert!(format!("{e:#}").contains("another kind of device"), "{e:#}");
}

#[test]
fn the_m4_profile_compiles_in_the_background_and_others_do_not() {
    for p in Profile::all() {
        assert_eq!(p.background_compile, p.name == "m4", "{}", p.name);
    }
}
