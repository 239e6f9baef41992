//! Measures this machine's fp32 FMA peak (GFLOP/s), the yardstick for model FLOP
//! utilisation: independent chains of fused multiply-adds on every thread, in the widest
//! vector unit the CPU has (AVX-512, else AVX2+FMA, else portable code), long enough to hide
//! FMA latency, short enough (~0.1 s with AVX-512) to run before a benchmark.
//!
//! The widest ISA matters: the GEMM library and the element-wise ops pick AVX-512 at run
//! time where it exists, so a peak measured with 256-bit vectors on an AVX-512 machine
//! would be half the real one and every MFU figure twice too high.

use std::time::Instant;

/// A measured peak and the instruction set that reached it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    pub gflops: f64,
    pub threads: usize,
    /// `"avx512f"`, `"avx2+fma"` or `"portable"`.
    pub isa: &'static str,
}

impl std::fmt::Display for Peak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} GFLOP/s ({}, {} thread{})",
            self.gflops,
            self.isa,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )
    }
}

/// The widest FMA instruction set this CPU runs.
pub fn fma_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "portable"
}

/// Rounds per measurement; the best counts (the others lost time to neighbours).
const ROUNDS: usize = 5;

/// Peak GFLOP/s over `threads` threads (best of a few short rounds), in the widest ISA.
pub fn measure_fma_gflops(threads: usize) -> f64 {
    measure_fma(threads).gflops
}

/// [`measure_fma_gflops`] with the ISA it used.
pub fn measure_fma(threads: usize) -> Peak {
    measure_fma_isa(threads, fma_isa())
}

/// The peak in a given ISA (`"avx512f"`, `"avx2+fma"`, `"portable"`); an ISA this CPU does
/// not have falls back to the widest one it has.
pub fn measure_fma_isa(threads: usize, isa: &'static str) -> Peak {
    let isa = match isa {
        "avx512f" if fma_isa() == "avx512f" => "avx512f",
        "avx2+fma" if fma_isa() != "portable" => "avx2+fma",
        "portable" => "portable",
        _ => fma_isa(),
    };
    let threads = threads.max(1);
    let mut best = 0f64;
    // 96M FMA instructions per thread and round: ~12 ms at two 512-bit FMAs per cycle and
    // 4 GHz, long enough that thread start-up (~0.1 ms) and clock ramp-up do not count.
    // The portable loop may call a software fma: far fewer.
    let iters = if isa == "portable" {
        2_000_000
    } else {
        96_000_000u64
    };
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let flops: f64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || fma_loop(isa, iters)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum::<f64>()
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max(flops / secs / 1e9);
    }
    Peak {
        gflops: best,
        threads,
        isa,
    }
}

/// Runs the loop in `isa`; returns the FLOPs it performed.
fn fma_loop(isa: &str, iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if isa == "avx512f" && is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time just above.
            return unsafe { fma_loop_avx512(iters) };
        }
        if isa != "portable" && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { fma_loop_avx2(iters) };
        }
    }
    let _ = isa;
    fma_loop_portable(iters)
}

/// Independent accumulators: enough to cover 2 FMA pipes × 4–5 cycles of latency with
/// margin, few enough to stay in registers (16 of the 32 zmm registers).
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    let rounds = iters / CHAINS as u64;
    for _ in 0..rounds {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in acc {
        s = _mm512_add_ps(s, x);
    }
    std::hint::black_box(_mm512_reduce_add_ps(s));
    // 16 lanes × 2 flops per FMA.
    (rounds * CHAINS as u64) as f64 * 32.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    let rounds = iters / CHAINS as u64;
    for _ in 0..rounds {
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
    // 8 lanes × 2 flops per FMA.
    (rounds * CHAINS as u64) as f64 * 16.0
}

fn fma_loop_portable(iters: u64) -> f64 {
    let mut acc = [[1.0f32; 8]; CHAINS];
    let rounds = iters / CHAINS as u64;
    for _ in 0..rounds {
        for x in acc.iter_mut() {
            for v in x.iter_mut() {
                *v = v.mul_add(0.999_999, 1e-7);
            }
        }
    }
    std::hint::black_box(acc);
    (rounds * CHAINS as u64) as f64 * 16.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widest_isa_is_used() {
        let p = measure_fma(1);
        assert_eq!(p.isa, fma_isa());
        assert!(p.gflops > 0.5, "{p}");
        #[cfg(target_arch = "x86_64")]
        if p.isa == "avx512f" {
            // The narrower loop can still be asked for by name. Which is faster is a
            // benchmark's question (`anetrain bench` prints the peak), not a timed test's.
            let narrow = measure_fma_isa(1, "avx2+fma");
            assert_eq!(narrow.isa, "avx2+fma");
        }
        assert!(p.to_string().contains(p.isa));
    }
}
