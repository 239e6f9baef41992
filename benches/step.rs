//! Wall time of one training forward+backward (`Workspace::forward_backward`, `cpu`
//! kernels) per model, with the per-component breakdown and the achieved GFLOP/s against
//! `StepFlops`. `cargo bench --bench step [-- MODEL BATCH SEQ REPS]`; by default stories15m
//! and Stories110M at B1×S256, 3 timed steps after one warm-up.

use anetrain::kernels::cpu::CpuKernels;
use anetrain::model::{Config, Params, StepFlops};
use anetrain::train::step::Workspace;
use anetrain::train::timing::Timings;
use anetrain::util::rng::Rng;
use std::time::Instant;

/// (CPU seconds, minor page faults) of this process so far: under contention from other
/// processes, CPU time per step shows efficiency where wall time shows the machine's load.
fn cpu_and_faults() -> (f64, i64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (tv(u.ru_utime) + tv(u.ru_stime), u.ru_minflt)
}

fn run(model: &str, batch: usize, seq: usize, reps: usize) {
    let c = Config::preset(model).expect("unknown preset");
    let params = Params::init_random(&c, 7);
    let mut grads = Params::zeros(&c);
    let mut rng = Rng::new(3);
    let n = batch * seq;
    let inputs: Vec<u32> = (0..n)
        .map(|_| rng.below(c.vocab_size as u64) as u32)
        .collect();
    let targets: Vec<u32> = (0..n)
        .map(|_| rng.below(c.vocab_size as u64) as u32)
        .collect();
    let mut ws = Workspace::new(&c, batch, seq);
    let mut k = CpuKernels::new(anetrain::kernels::Spec::new(&c, batch, seq));
    let mut t = Timings::default();
    ws.forward_backward(&mut k, &params, &mut grads, &inputs, &targets, 1.0, &mut t)
        .unwrap();
    let mut times = Vec::new();
    let mut sum = Timings::default();
    let (cpu0, faults0) = cpu_and_faults();
    for _ in 0..reps {
        let mut t = Timings::default();
        let s = Instant::now();
        ws.forward_backward(&mut k, &params, &mut grads, &inputs, &targets, 1.0, &mut t)
            .unwrap();
        times.push(s.elapsed().as_secs_f64());
        sum.merge(&t);
    }
    let (cpu1, faults1) = cpu_and_faults();
    let cpu = (cpu1 - cpu0) / reps as f64;
    let faults = (faults1 - faults0) as f64 / reps as f64;
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    let flops = StepFlops::new(&c, batch, seq).total();
    println!(
        "{model} B{batch}xS{seq}: median {:.1} ms (min {:.1}, max {:.1}) over {reps}; {:.1} GFLOP/step, {:.1} GFLOP/s",
        med * 1e3,
        times[0] * 1e3,
        times[times.len() - 1] * 1e3,
        flops / 1e9,
        flops / med / 1e9
    );
    println!(
        "  CPU time {:.1} ms/step ({:.2} cores busy), {:.1} GFLOP per CPU-second, {:.0} page faults/step",
        cpu * 1e3,
        cpu / (times.iter().sum::<f64>() / reps as f64),
        flops / cpu / 1e9,
        faults
    );
    let parts: Vec<String> = sum
        .entries()
        .iter()
        .map(|(k, v)| format!("{k} {:.1}", v / reps as f64))
        .collect();
    println!("  per step (ms): {}", parts.join(", "));
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench binaries without
    // it, and a test run should not spend minutes benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench`");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if args.len() >= 3 {
        let reps = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
        run(
            &args[0],
            args[1].parse().unwrap(),
            args[2].parse().unwrap(),
            reps,
        );
    } else {
        run("stories15m", 1, 256, 5);
        run("stories110m", 1, 256, 3);
    }
}
