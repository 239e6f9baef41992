//! Matrix–vector products for one token: `out = W · x` with `W[rows, n]` row-major, the only
//! heavy arithmetic of inference (llama2.c run.c's `matmul`).
//!
//! Decoding one token is memory-bound: every weight is read once per token, so the aims are to
//! stream the weights at full bandwidth on every core and to keep the per-call overhead small.
//! - Output rows are split into contiguous chunks, one rayon task each (a few per thread, so
//!   that a slow core does not hold the others up). Small products run on the calling thread:
//!   a task costs microseconds, more than a 64×64 product.
//! - Several matrices that read the same `x` (wq/wk/wv; w1/w3) are one call with their outputs
//!   concatenated, so a layer has four parallel regions rather than seven.
//! - The dot product keeps 32 partial sums (four 8-wide accumulators, independent so that
//!   additions pipeline), then sums them pairwise. The portable version is written for
//!   LLVM to vectorise; on x86-64 an AVX2+FMA version with intrinsics is chosen at run time,
//!   since the crate is built for the baseline (SSE2) target.
//!
//! Rounding therefore differs from run.c's sequential sum in the last bits, as it does between
//! run.c's own `-O2` and `-Ofast` builds.

use rayon::prelude::*;

/// Products smaller than this many multiply-adds run on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// Dot product of two equal-length slices (the shorter length is used).
///
/// Written so that it autovectorises: fixed-size chunks of 32 into four independent 8-lane
/// accumulators (independent so that additions pipeline), then 8-wide and scalar tails.
#[inline(always)]
fn dot_unrolled(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [[0f32; 8]; 4];
    let mut ca = a.chunks_exact(32);
    let mut cb = b.chunks_exact(32);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x: &[f32; 32] = x.try_into().unwrap();
        let y: &[f32; 32] = y.try_into().unwrap();
        for (k, lanes) in acc.iter_mut().enumerate() {
            for (i, s) in lanes.iter_mut().enumerate() {
                *s += x[8 * k + i] * y[8 * k + i];
            }
        }
    }
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut c8a = ra.chunks_exact(8);
    let mut c8b = rb.chunks_exact(8);
    for (x, y) in (&mut c8a).zip(&mut c8b) {
        let x: &[f32; 8] = x.try_into().unwrap();
        let y: &[f32; 8] = y.try_into().unwrap();
        for i in 0..8 {
            acc[0][i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in c8a.remainder().iter().zip(c8b.remainder()) {
        tail += x * y;
    }
    let mut lanes = [0f32; 8];
    for (i, l) in lanes.iter_mut().enumerate() {
        *l = (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]);
    }
    let s4 = [
        lanes[0] + lanes[4],
        lanes[1] + lanes[5],
        lanes[2] + lanes[6],
        lanes[3] + lanes[7],
    ];
    (s4[0] + s4[2]) + (s4[1] + s4[3]) + tail
}

/// `out[r] = W[r,:] · x` for the rows of one chunk; `w` holds exactly `out.len()` rows.
#[inline(always)]
fn rows_generic(out: &mut [f32], x: &[f32], w: &[f32]) {
    let n = x.len();
    for (o, row) in out.iter_mut().zip(w.chunks_exact(n)) {
        *o = dot_unrolled(row, x);
    }
}

/// AVX2 + FMA row kernel: the same four-accumulator scheme as [`dot_unrolled`] in 256-bit
/// registers with fused multiply-adds (LLVM does not contract `a * b + c` on its own, and
/// its vectorisation of the portable version spills registers).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `w` must hold `out.len()` rows of `x.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2_fma(out: &mut [f32], x: &[f32], w: &[f32]) {
    use std::arch::x86_64::*;
    let n = x.len();
    assert!(w.len() >= out.len() * n);
    let xp = x.as_ptr();
    for (r, o) in out.iter_mut().enumerate() {
        let wp = w.as_ptr().add(r * n);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 32 ≤ n or i + 8 ≤ n, within this row of w and within x.
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(wp.add(i + 8 * k));
                let xv = _mm256_loadu_ps(xp.add(i + 8 * k));
                *a = _mm256_fmadd_ps(wv, xv, *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(wp.add(i)),
                _mm256_loadu_ps(xp.add(i)),
                acc[0],
            );
            i += 8;
        }
        let s8 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2));
        let mut sum = _mm_cvtss_f32(s1);
        while i < n {
            sum += *wp.add(i) * *xp.add(i);
            i += 1;
        }
        *o = sum;
    }
}

/// The row kernel for this CPU.
#[inline]
fn rows(out: &mut [f32], x: &[f32], w: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above); callers pass `w` with
            // `out.len()` rows of `x.len()` (asserted inside as well).
            unsafe { rows_avx2_fma(out, x, w) };
            return;
        }
    }
    rows_generic(out, x, w)
}

/// Dot product with the fastest kernel for this CPU (attention scores use it).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut out = [0f32];
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    rows(&mut out, &b[..n], &a[..n]);
    out[0]
}

/// `out = W · x` for `W[out.len(), x.len()]` row-major (run.c `matmul(out, x, w, n, d)`).
pub fn matvec(out: &mut [f32], x: &[f32], w: &[f32]) {
    matvec_stacked(out, x, &[w]);
}

/// `out = [W₀; W₁; …] · x`: several matrices with `x.len()` columns applied to the same `x`,
/// their outputs concatenated in `out` (`out.len()` = total rows). One parallel region.
pub fn matvec_stacked(out: &mut [f32], x: &[f32], mats: &[&[f32]]) {
    let n = x.len();
    let total_rows: usize = mats.iter().map(|m| m.len() / n.max(1)).sum();
    assert!(
        n > 0 && out.len() == total_rows && mats.iter().all(|m| m.len() % n == 0),
        "matvec shapes: out {} rows, x {}, matrices {:?}",
        out.len(),
        n,
        mats.iter().map(|m| m.len()).collect::<Vec<_>>()
    );
    if total_rows * n < PARALLEL_MIN_WORK || rayon::current_num_threads() == 1 {
        stacked_range(out, 0, x, mats);
        return;
    }
    // A few chunks per thread balance load; at least 16 rows keep per-task overhead small.
    let chunks = 4 * rayon::current_num_threads();
    let chunk_rows = total_rows.div_ceil(chunks).max(16);
    out.par_chunks_mut(chunk_rows)
        .enumerate()
        .for_each(|(c, o)| stacked_range(o, c * chunk_rows, x, mats));
}

/// Rows `first..first + out.len()` of the stacked matrices (on the calling thread).
pub(crate) fn stacked_range(out: &mut [f32], first: usize, x: &[f32], mats: &[&[f32]]) {
    let n = x.len();
    let mut row0 = 0; // first stacked row of the current matrix
    let mut done = 0; // rows of `out` written
    for m in mats {
        let rows_m = m.len() / n;
        let (lo, hi) = (first + done, first + out.len());
        if lo < row0 + rows_m && hi > row0 {
            let a = lo - row0;
            let b = (hi - row0).min(rows_m);
            rows(&mut out[done..done + (b - a)], x, &m[a * n..b * n]);
            done += b - a;
        }
        row0 += rows_m;
        if done == out.len() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(w: &[f32], x: &[f32]) -> Vec<f64> {
        w.chunks(x.len())
            .map(|r| r.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum())
            .collect()
    }

    #[test]
    fn stacked_matvec_matches_f64_for_odd_shapes() {
        let mut rng = crate::util::rng::Rng::new(3);
        // Lengths exercising the 32-, 8- and scalar tails; row counts that split chunks
        // across matrix boundaries; sizes above and below the parallel threshold.
        for &(n, r0, r1, r2) in &[
            (1, 1, 2, 3),
            (45, 7, 0, 9),
            (172, 300, 50, 50),
            (288, 288, 288, 288),
        ] {
            let gen = |rng: &mut crate::util::rng::Rng, k: usize| -> Vec<f32> {
                (0..k).map(|_| rng.normal()).collect()
            };
            let x = gen(&mut rng, n);
            let ms = [
                gen(&mut rng, r0 * n),
                gen(&mut rng, r1 * n),
                gen(&mut rng, r2 * n),
            ];
            let mut out = vec![f32::NAN; r0 + r1 + r2];
            matvec_stacked(&mut out, &x, &[&ms[0], &ms[1], &ms[2]]);
            let want: Vec<f64> = ms.iter().flat_map(|m| naive(m, &x)).collect();
            for (i, (o, w)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (*o as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
                    "n {n} row {i}: {o} vs {w}"
                );
            }
            // The portable kernel too (the CPU here may take the AVX2 path above).
            let mut generic = vec![f32::NAN; r0];
            rows_generic(&mut generic, &x, &ms[0]);
            for (g, w) in generic.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
                    "generic n {n}"
                );
            }
            let d = dot(&ms[0][..n.min(ms[0].len())], &x);
            if r0 > 0 {
                assert!((d as f64 - want[0]).abs() < 1e-4 * (1.0 + want[0].abs()));
            }
        }
    }
}
