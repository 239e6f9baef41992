//! Measures this machine's fp32 FMA peak (GFLOP/s), the yardstick for model FLOP
//! utilisation: independent chains of 8-wide fused multiply-adds on every thread, long
//! enough to hide FMA latency, short enough (~0.15 s) to run before a benchmark.

use std::time::Instant;

/// Peak GFLOP/s over `threads` threads (best of a few short rounds).
pub fn measure_fma_gflops(threads: usize) -> f64 {
    let threads = threads.max(1);
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let iters = 4_000_000u64;
        let flops_per_thread: f64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || fma_loop(iters)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum::<f64>() / threads as f64
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max(flops_per_thread * threads as f64 / secs / 1e9);
    }
    best
}

/// Runs the loop; returns the FLOPs it performed.
fn fma_loop(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time just above.
            return unsafe { fma_loop_avx2(iters) };
        }
    }
    fma_loop_portable(iters)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    // 10 independent accumulators: 2 FMA ports × latency 4–5 cycles.
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 10];
    for _ in 0..iters / 10 {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for x in acc {
        s = _mm256_add_ps(s, x);
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    std::hint::black_box(out);
    (iters / 10 * 10) as f64 * 16.0
}

fn fma_loop_portable(iters: u64) -> f64 {
    let mut acc = [[1.0f32; 8]; 10];
    for _ in 0..iters / 10 {
        for x in acc.iter_mut() {
            for v in x.iter_mut() {
                *v = v.mul_add(0.999_999, 1e-7);
            }
        }
    }
    std::hint::black_box(acc);
    (iters / 10 * 10) as f64 * 16.0
}
