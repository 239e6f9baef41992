//! Compares the fp32 GEMM candidates on the Stories110M training shapes (M = 256 tokens):
//! `matrixmultiply` and `gemm` (sarah-ek), each single-threaded, with its own threading, and
//! split by hand into two single-threaded halves run side by side (rayon::join).
//!
//! `cargo bench --bench gemm_candidates` (a few repetitions per shape; the figures in
//! docs/GEMM.md come from this). `GEMM_BENCH_REPS` sets the timed repetitions (default 5).

use std::time::Instant;

#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    /// op(A) = Aᵀ
    ta: bool,
    /// op(B) = Bᵀ
    tb: bool,
    /// how often the shape occurs in one Stories110M training step
    per_step: usize,
}

const fn sh(
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    per_step: usize,
) -> Shape {
    Shape {
        name,
        m,
        n,
        k,
        ta,
        tb,
        per_step,
    }
}

/// Row-major C[m,n] = op(A)·op(B); forward Y = W·X, dX = Wᵀ·dY, dW = dY·Xᵀ. Counts for 12
/// layers: wq wk wv wo are 768x768, w1 w3 are 2048x768, w2 is 768x2048; the classifier
/// [32000, 768] once each way (logits are computed token-major: [N, V] = Xᵀ·Wᵀ).
const SHAPES: &[Shape] = &[
    sh("fwd 768x768", 768, 256, 768, false, false, 48),
    sh("fwd 2048x768", 2048, 256, 768, false, false, 24),
    sh("fwd 768x2048", 768, 256, 2048, false, false, 12),
    sh("fwd cls [N,V]", 256, 32000, 768, true, true, 1),
    sh("dX 768x768", 768, 256, 768, true, false, 48),
    sh("dX 2048x768", 768, 256, 2048, true, false, 24),
    sh("dX 768x2048", 2048, 256, 768, true, false, 12),
    sh("dX cls", 768, 256, 32000, true, true, 1),
    sh("dW 768x768", 768, 768, 256, false, true, 48),
    sh("dW 2048x768", 2048, 768, 256, false, true, 24),
    sh("dW 768x2048", 768, 2048, 256, false, true, 12),
    sh("dW cls", 32000, 768, 256, true, true, 1),
];

/// Strides (row, col) of op(X) for a row-major stored matrix with `rows x cols` of op(X).
fn strides(trans: bool, cols_of_op: usize, rows_of_op: usize) -> (isize, isize) {
    if trans {
        (1, rows_of_op as isize)
    } else {
        (cols_of_op as isize, 1)
    }
}

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

#[derive(Clone, Copy)]
struct Call {
    m: usize,
    n: usize,
    k: usize,
    a: Ptr,
    ars: isize,
    acs: isize,
    b: Ptr,
    brs: isize,
    bcs: isize,
    c: Ptr,
    crs: isize,
}

impl Call {
    /// Two halves: by rows of C when m >= n, else by columns.
    fn halves(self) -> (Call, Call) {
        let (mut x, mut y) = (self, self);
        unsafe {
            if self.m >= self.n {
                let h = self.m / 2;
                x.m = h;
                y.m = self.m - h;
                y.a = Ptr(self.a.0.offset(h as isize * self.ars));
                y.c = Ptr(self.c.0.offset(h as isize * self.crs));
            } else {
                let h = self.n / 2;
                x.n = h;
                y.n = self.n - h;
                y.b = Ptr(self.b.0.offset(h as isize * self.bcs));
                y.c = Ptr(self.c.0.add(h));
            }
        }
        (x, y)
    }
}

unsafe fn mm(c: Call) {
    matrixmultiply::sgemm(
        c.m, c.k, c.n, 1.0, c.a.0, c.ars, c.acs, c.b.0, c.brs, c.bcs, 0.0, c.c.0, c.crs, 1,
    );
}

unsafe fn gm(c: Call, par: gemm::Parallelism) {
    gemm::gemm(
        c.m, c.n, c.k, c.c.0, 1, c.crs, false, c.a.0, c.acs, c.ars, c.b.0, c.bcs, c.brs, 0.0, 1.0,
        false, false, false, par,
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // matrixmultiply reads its thread count once, from the environment, on first use.
    std::env::set_var("MATMUL_NUM_THREADS", "1");
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let reps: usize = std::env::var("GEMM_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    type Candidate = (&'static str, Box<dyn Fn(Call) + Sync>);
    let candidates: Vec<Candidate> = vec![
        ("matrixmultiply 1t", Box::new(|c| unsafe { mm(c) })),
        (
            "matrixmultiply 2x1t split",
            Box::new(|c| {
                let (x, y) = c.halves();
                rayon::join(|| unsafe { mm(x) }, || unsafe { mm(y) });
            }),
        ),
        (
            "gemm 1t",
            Box::new(|c| unsafe { gm(c, gemm::Parallelism::None) }),
        ),
        (
            "gemm rayon(2)",
            Box::new(|c| unsafe { gm(c, gemm::Parallelism::Rayon(2)) }),
        ),
        (
            "gemm 2x1t split",
            Box::new(|c| {
                let (x, y) = c.halves();
                rayon::join(
                    || unsafe { gm(x, gemm::Parallelism::None) },
                    || unsafe { gm(y, gemm::Parallelism::None) },
                );
            }),
        ),
    ];
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let mut totals = vec![(0.0f64, 0.0f64); candidates.len()];
    print!("{:<16}", "shape (m,n,k)");
    for (name, _) in &candidates {
        print!(" {name:>26}");
    }
    println!();
    for s in SHAPES {
        let mut rng = 1u64;
        let mut fill = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((rng >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect()
        };
        let mut a = fill(s.m * s.k);
        let mut b = fill(s.k * s.n);
        let mut c = vec![0.0f32; s.m * s.n];
        let (ars, acs) = strides(s.ta, s.k, s.m);
        let (brs, bcs) = strides(s.tb, s.n, s.k);
        let call = Call {
            m: s.m,
            n: s.n,
            k: s.k,
            a: Ptr(a.as_mut_ptr()),
            ars,
            acs,
            b: Ptr(b.as_mut_ptr()),
            brs,
            bcs,
            c: Ptr(c.as_mut_ptr()),
            crs: s.n as isize,
        };
        let flops = 2.0 * (s.m * s.n * s.k) as f64;
        print!("{:<16}", s.name);
        for (i, (_, f)) in candidates.iter().enumerate() {
            let times: Vec<f64> = pool.install(|| {
                f(call);
                (0..reps)
                    .map(|_| {
                        let t = Instant::now();
                        f(call);
                        t.elapsed().as_secs_f64()
                    })
                    .collect()
            });
            let t = median(times);
            totals[i].0 += flops * s.per_step as f64;
            totals[i].1 += t * s.per_step as f64;
            print!(" {:>26.1}", flops / t / 1e9);
        }
        println!();
    }
    print!("{:<16}", "step-weighted");
    for (f, t) in &totals {
        print!(" {:>26.1}", f / t / 1e9);
    }
    println!();
    print!("{:<16}", "step GEMM s");
    for (_, t) in &totals {
        print!(" {:>26.3}", t);
    }
    println!();
}
