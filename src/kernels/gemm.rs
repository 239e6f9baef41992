//! fp32 GEMM for the whole crate: row-major `C = alpha·op(A)·op(B) + beta·C`, transposes by
//! strides, over the `gemm` crate (sarah-ek), which picks its AVX-512, AVX2+FMA or scalar
//! micro-kernel at run time. docs/GEMM.md records the measurements behind the choice.
//!
//! Threading: on these 2-core machines two single-threaded GEMMs side by side beat one GEMM
//! that forks inside, so every call here runs the library single-threaded and parallelism
//! is ours: [`sgemm`] splits C into [`threads`] blocks (by rows of C when it is taller than
//! wide, else by columns) and runs them with `rayon::join`; [`sgemm_serial`] never splits.
//! The training step uses the serial form where it already runs independent work on each
//! core (weight gradients beside the input-gradient chain).
//!
//! Engine: every product runs on the `gemm` crate ([`Engine::Native`], the default) or, once
//! [`select`]ed, on the system BLAS's `cblas_sgemm` ([`Engine::Blas`], found at run time by
//! [`super::blas`]). With BLAS, threads are either still ours (the library runs one thread
//! per call and the splits above stay, [`Threading::Split`]) or the library's
//! ([`Threading::Library`]: no splitting here, the library's thread count set to
//! [`threads`]). A product CBLAS cannot express (a dimension above `i32::MAX`, an operand
//! with no unit stride) runs natively.

use super::blas::{self, Blas};
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// Whether an operand is used as stored (`N`) or transposed (`T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The library that computes the products.
#[derive(Clone, Copy)]
pub enum Engine {
    /// The `gemm` crate, single-threaded per call.
    Native,
    /// The system BLAS's `cblas_sgemm`.
    Blas(&'static Blas),
}

/// Who runs a product on several cores (with [`Engine::Blas`]; native products always split
/// here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threading {
    /// [`sgemm`] splits C over [`threads`] blocks, each one single-threaded library call.
    Split,
    /// One call per product; the library uses [`threads`] threads of its own.
    Library,
}

/// The engine and threading of every product from now on.
#[derive(Clone, Copy)]
pub struct Selection {
    pub engine: Engine,
    pub threading: Threading,
}

impl Selection {
    pub const NATIVE: Selection = Selection {
        engine: Engine::Native,
        threading: Threading::Split,
    };

    /// `native`, `blas`, or `blas-threads` (what logs and cache files call it).
    pub fn label(&self) -> &'static str {
        match (self.engine, self.threading) {
            (Engine::Native, _) => "native",
            (Engine::Blas(_), Threading::Split) => "blas",
            (Engine::Blas(_), Threading::Library) => "blas-threads",
        }
    }

    /// One line for run headers: engine, library, threading.
    pub fn describe(&self) -> String {
        let t = threads();
        match (self.engine, self.threading) {
            (Engine::Native, _) => format!("native (gemm crate; products split over {t} threads)"),
            (Engine::Blas(b), Threading::Split) => format!(
                "blas {} [{}] (one library thread per call; products split over {t} threads)",
                b.path, b.about
            ),
            (Engine::Blas(b), Threading::Library) => {
                format!(
                    "blas {} [{}] ({t} library threads per call)",
                    b.path, b.about
                )
            }
        }
    }
}

/// The active BLAS (null: native).
static BLAS: AtomicPtr<Blas> = AtomicPtr::new(std::ptr::null_mut());
/// Whether the active BLAS threads each call itself ([`Threading::Library`]).
static LIBRARY_THREADS: AtomicBool = AtomicBool::new(false);

/// Makes `s` the engine of every later product in this process, and sets the library's
/// thread count: 1 for [`Threading::Split`], [`threads`] for [`Threading::Library`] (call
/// [`set_threads`] first). Products already running finish on the engine they started on.
pub fn select(s: Selection) {
    match s.engine {
        Engine::Native => {
            BLAS.store(std::ptr::null_mut(), Ordering::Release);
            LIBRARY_THREADS.store(false, Ordering::Release);
        }
        Engine::Blas(b) => {
            let lib = s.threading == Threading::Library;
            b.set_threads(if lib { threads() } else { 1 });
            LIBRARY_THREADS.store(lib, Ordering::Release);
            BLAS.store(b as *const Blas as *mut Blas, Ordering::Release);
        }
    }
}

/// The selection in force.
pub fn selected() -> Selection {
    Selection {
        engine: engine(),
        threading: if LIBRARY_THREADS.load(Ordering::Acquire) {
            Threading::Library
        } else {
            Threading::Split
        },
    }
}

fn engine() -> Engine {
    let p = BLAS.load(Ordering::Acquire);
    if p.is_null() {
        Engine::Native
    } else {
        // SAFETY: only `select` stores here, from a `&'static Blas`.
        Engine::Blas(unsafe { &*p })
    }
}

/// Blocks [`sgemm`] splits a product into under the current selection.
fn split_parts() -> usize {
    if LIBRARY_THREADS.load(Ordering::Acquire) {
        1
    } else {
        threads()
    }
}

/// An operand seen through `op` as `rows x cols` with element (i, j) at `i·rs + j·cs`, as
/// CBLAS row-major takes it: (transpose flag, leading dimension), if it can.
fn cblas_operand(rows: usize, cols: usize, rs: isize, cs: isize) -> Option<(c_int, c_int)> {
    let ld = if cs == 1 && (rows == 1 || rs >= cols as isize) {
        (
            blas::NO_TRANS,
            if rows == 1 { cols.max(1) as isize } else { rs },
        )
    } else if rs == 1 && (cols == 1 || cs >= rows as isize) {
        (
            blas::TRANS,
            if cols == 1 { rows.max(1) as isize } else { cs },
        )
    } else {
        return None;
    };
    Some((ld.0, c_int::try_from(ld.1).ok()?))
}

/// Sets how many blocks [`sgemm`] splits one product into (1 = never split). 0 restores the
/// default, the number of threads of the current rayon pool.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// The number of blocks [`sgemm`] splits one product into.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => rayon::current_num_threads().max(1),
        n => n,
    }
}

/// Products smaller than this (in multiply-adds) are never split: the fork costs more than
/// the second core gives back.
const MIN_SPLIT_MACS: usize = 1 << 20;

/// One validated product in raw form: `C[m,n] (+)= op(A)[m,k]·op(B)[k,n]`, each operand
/// described by its (row, column) strides as seen through `op`.
#[derive(Clone, Copy)]
struct Raw {
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    c_rs: isize,
}

// SAFETY: a `Raw` is only built by `check`, from slices whose bounds were verified, and the
// blocks a split produces write disjoint parts of C.
unsafe impl Send for Raw {}

/// Checks that `len` elements hold a row-major `rows x cols` matrix with row stride `ld`.
fn fits(what: &str, len: usize, rows: usize, cols: usize, ld: usize) {
    assert!(
        ld >= cols,
        "gemm: {what} row stride {ld} < its {cols} columns"
    );
    if rows > 0 && cols > 0 {
        assert!(
            (rows - 1) * ld + cols <= len,
            "gemm: {what} [{rows}x{cols}, ld {ld}] needs {} elements, slice has {len}",
            (rows - 1) * ld + cols
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    op_a: Op,
    op_b: Op,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> Raw {
    let (a_rs, a_cs) = match op_a {
        Op::N => {
            fits("A", a.len(), m, k, lda);
            (lda as isize, 1)
        }
        Op::T => {
            fits("A", a.len(), k, m, lda);
            (1, lda as isize)
        }
    };
    let (b_rs, b_cs) = match op_b {
        Op::N => {
            fits("B", b.len(), k, n, ldb);
            (ldb as isize, 1)
        }
        Op::T => {
            fits("B", b.len(), n, k, ldb);
            (1, ldb as isize)
        }
    };
    fits("C", c.len(), m, n, ldc);
    Raw {
        m,
        n,
        k,
        alpha,
        beta,
        a: a.as_ptr(),
        a_rs,
        a_cs,
        b: b.as_ptr(),
        b_rs,
        b_cs,
        c: c.as_mut_ptr(),
        c_rs: ldc as isize,
    }
}

impl Raw {
    /// Runs the product on the calling thread.
    ///
    /// # Safety
    /// The pointers and strides must describe valid, in-bounds matrices (see `check`), and C
    /// must not be written by anyone else meanwhile.
    unsafe fn run(self) {
        self.run_on(engine())
    }

    /// [`Raw::run`] on engine `e`.
    ///
    /// # Safety
    /// As [`Raw::run`].
    unsafe fn run_on(self, e: Engine) {
        if self.m == 0 || self.n == 0 {
            return;
        }
        if self.k == 0 {
            for i in 0..self.m {
                let row =
                    std::slice::from_raw_parts_mut(self.c.offset(i as isize * self.c_rs), self.n);
                if self.beta == 0.0 {
                    row.fill(0.0);
                } else {
                    row.iter_mut().for_each(|x| *x *= self.beta);
                }
            }
            return;
        }
        if let Engine::Blas(b) = e {
            if self.run_blas(b) {
                return;
            }
        }
        // The gemm crate computes dst = alpha·dst + beta·lhs·rhs (reading dst only when
        // asked): our beta is its alpha and our alpha its beta.
        gemm::gemm(
            self.m,
            self.n,
            self.k,
            self.c,
            1,
            self.c_rs,
            self.beta != 0.0,
            self.a,
            self.a_cs,
            self.a_rs,
            self.b,
            self.b_cs,
            self.b_rs,
            self.beta,
            self.alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }

    /// The product through `cblas_sgemm`; false (nothing done) when CBLAS cannot express it.
    ///
    /// # Safety
    /// As [`Raw::run`]; m, n, k > 0.
    unsafe fn run_blas(self, b: &Blas) -> bool {
        let dims = (
            c_int::try_from(self.m),
            c_int::try_from(self.n),
            c_int::try_from(self.k),
        );
        let (Ok(m), Ok(n), Ok(k)) = dims else {
            return false;
        };
        let (Some((ta, lda)), Some((tb, ldb))) = (
            cblas_operand(self.m, self.k, self.a_rs, self.a_cs),
            cblas_operand(self.k, self.n, self.b_rs, self.b_cs),
        ) else {
            return false;
        };
        let ldc = if self.m == 1 {
            self.n as isize
        } else {
            self.c_rs
        };
        let Ok(ldc) = c_int::try_from(ldc) else {
            return false;
        };
        if (ldc as usize) < self.n {
            return false;
        }
        // CBLAS with op = T reads the stored matrix [cols, rows] of what op shows: the
        // (trans, ld) pair above says exactly that.
        b.sgemm(
            ta, tb, m, n, k, self.alpha, self.a, lda, self.b, ldb, self.beta, self.c, ldc,
        );
        true
    }

    /// Splits into two blocks of C: by rows when C is at least as tall as wide.
    fn halves(self) -> (Raw, Raw) {
        let (mut x, mut y) = (self, self);
        // SAFETY (pointer offsets): each offset stays inside the matrix it points into.
        unsafe {
            if self.m >= self.n {
                let h = self.m / 2;
                x.m = h;
                y.m = self.m - h;
                y.a = self.a.offset(h as isize * self.a_rs);
                y.c = self.c.offset(h as isize * self.c_rs);
            } else {
                let h = self.n / 2;
                x.n = h;
                y.n = self.n - h;
                y.b = self.b.offset(h as isize * self.b_cs);
                y.c = self.c.add(h);
            }
        }
        (x, y)
    }

    /// Runs the product on engine `e` as up to `parts` blocks in parallel.
    fn run_split(self, parts: usize, e: Engine) {
        if parts <= 1 || self.m * self.n * self.k < MIN_SPLIT_MACS || self.m.max(self.n) < 32 {
            // SAFETY: validated by `check`; C is exclusively ours.
            unsafe { self.run_on(e) };
            return;
        }
        let (x, y) = self.halves();
        let px = parts / 2;
        rayon::join(
            move || x.run_split(px, e),
            move || y.run_split(parts - px, e),
        );
    }
}

/// Row-major `C[m,n] = alpha·op(A)·op(B) + beta·C`, split over [`threads`] blocks (not
/// split when the selected BLAS threads each call itself).
///
/// `op(A)` is `[m,k]`: A is stored `[m,k]` (`Op::N`) or `[k,m]` (`Op::T`) with row stride
/// `lda`; likewise `op(B)` is `[k,n]`; C is `[m,n]` with row stride `ldc`. With `beta = 0`
/// C is not read (NaN there does not propagate). Panics when a slice is too short for the
/// shape it is said to hold.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    op_a: Op,
    op_b: Op,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let raw = check(op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    raw.run_split(split_parts(), engine());
}

/// [`sgemm`] on the calling thread only.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_serial(
    op_a: Op,
    op_b: Op,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let raw = check(op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    // SAFETY: validated by `check`; C is borrowed mutably for the call.
    unsafe { raw.run() };
}

/// [`sgemm`] split into exactly `parts` blocks (at most), whatever [`threads`] says.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_parts(
    parts: usize,
    op_a: Op,
    op_b: Op,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    sgemm_parts_on(
        engine(),
        parts,
        op_a,
        op_b,
        m,
        n,
        k,
        alpha,
        a,
        lda,
        b,
        ldb,
        beta,
        c,
        ldc,
    )
}

/// [`sgemm_parts`] on engine `e`, whatever is selected (calibration, tests).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_parts_on(
    e: Engine,
    parts: usize,
    op_a: Op,
    op_b: Op,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let raw = check(op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    raw.run_split(parts, e);
}

/// Serial product over raw strided operands, for callers that write interleaved blocks of
/// one matrix from several threads (attention heads of a `[C, N]` activation), where
/// disjoint `&mut` slices cannot express the split. `C[m,n] = alpha·op(A)·op(B) + beta·C`,
/// element `(i,p)` of op(A) at `a + i·a_rs + p·a_cs`, likewise B, and `(i,j)` of C at
/// `c + i·c_rs + j`.
///
/// # Safety
/// Every addressed element must lie inside a live allocation; C's elements must not be
/// read or written by anyone else during the call, nor alias A or B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_raw(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    beta: f32,
    c: *mut f32,
    c_rs: isize,
) {
    Raw {
        m,
        n,
        k,
        alpha,
        beta,
        a,
        a_rs,
        a_cs,
        b,
        b_rs,
        b_cs,
        c,
        c_rs,
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward f64 triple loop over explicitly transposed operands.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        op_a: Op,
        op_b: Op,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        beta: f32,
        c: &[f32],
        ldc: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let av = match op_a {
                        Op::N => a[i * lda + p],
                        Op::T => a[p * lda + i],
                    };
                    let bv = match op_b {
                        Op::N => b[p * ldb + j],
                        Op::T => b[j * ldb + p],
                    };
                    s += av as f64 * bv as f64;
                }
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c[i * ldc + j] as f64
                };
                out[i * n + j] = alpha as f64 * s + old;
            }
        }
        out
    }

    /// Native, and the system BLAS when one loads (SKIP printed otherwise).
    fn engines() -> Vec<Engine> {
        let mut v = vec![Engine::Native];
        if let Some(b) = blas::system_or_skip("gemm unit tests on BLAS") {
            b.set_threads(1);
            v.push(Engine::Blas(b));
        }
        v
    }

    fn name(e: Engine) -> &'static str {
        match e {
            Engine::Native => "native",
            Engine::Blas(_) => "blas",
        }
    }

    #[test]
    fn cblas_operand_maps_strides() {
        // [3x4] stored row-major, ld 5: as stored.
        assert_eq!(cblas_operand(3, 4, 5, 1), Some((blas::NO_TRANS, 5)));
        // [3x4] seen through a transpose of a stored [4x3] with ld 7.
        assert_eq!(cblas_operand(3, 4, 1, 7), Some((blas::TRANS, 7)));
        // One row: any row stride; one column: any column stride.
        assert_eq!(cblas_operand(1, 4, 0, 1), Some((blas::NO_TRANS, 4)));
        assert_eq!(cblas_operand(4, 1, 1, 0), Some((blas::TRANS, 4)));
        // No unit stride, or overlapping rows: not expressible.
        assert_eq!(cblas_operand(3, 4, 8, 2), None);
        assert_eq!(cblas_operand(3, 4, 2, 1), None);
    }

    /// The attention form: operands that are column blocks of a `[C, N]` activation, read
    /// transposed through strides, on every engine, against the f64 loop.
    #[test]
    fn raw_strided_blocks_match_naive_on_every_engine() {
        let (c_rows, n_cols) = (16usize, 40usize);
        let act = rand_vec(c_rows * n_cols, 9);
        // scores[i, j] = Σ_d q[d, 3 + i]·k[d, 5 + j], i < 7, j < 9, d < 16: op(A) = q block ᵀ.
        let (m, n, k) = (7usize, 9usize, c_rows);
        let mut want = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k)
                    .map(|d| act[d * n_cols + 3 + i] as f64 * act[d * n_cols + 5 + j] as f64)
                    .sum();
            }
        }
        for e in engines() {
            let ldc = n + 1;
            let mut out = vec![f32::NAN; m * ldc];
            let raw = Raw {
                m,
                n,
                k,
                alpha: 1.0,
                beta: 0.0,
                a: act.as_ptr().wrapping_add(3),
                a_rs: 1,
                a_cs: n_cols as isize,
                b: act.as_ptr().wrapping_add(5),
                b_rs: n_cols as isize,
                b_cs: 1,
                c: out.as_mut_ptr(),
                c_rs: ldc as isize,
            };
            // SAFETY: every addressed element lies in `act` / `out`.
            unsafe { raw.run_on(e) };
            for i in 0..m {
                for j in 0..n {
                    let (g, w) = (out[i * ldc + j] as f64, want[i * n + j]);
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()) * 4.0,
                        "{} [{i},{j}] {g} vs {w}",
                        name(e)
                    );
                }
                assert!(out[i * ldc + n].is_nan(), "padding written");
            }
        }
    }

    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::util::rng::Rng::new(seed);
        (0..len).map(|_| r.next_f32() - 0.5).collect()
    }

    #[test]
    fn all_transposes_strides_and_splits_match_naive() {
        let shapes = [
            (1, 1, 1),
            (5, 7, 3),
            (67, 45, 33),
            (130, 70, 129),
            (40, 300, 90),
        ];
        for &(m, n, k) in &shapes {
            for op_a in [Op::N, Op::T] {
                for op_b in [Op::N, Op::T] {
                    for &(alpha, beta) in &[(1.0f32, 0.0f32), (0.5, 1.0), (-2.0, 0.25)] {
                        // Leading dimensions wider than the matrices exercise the strides.
                        let (ar, ac) = if op_a == Op::N { (m, k) } else { (k, m) };
                        let (br, bc) = if op_b == Op::N { (k, n) } else { (n, k) };
                        let (lda, ldb, ldc) = (ac + 3, bc + 1, n + 2);
                        let a = rand_vec(ar * lda, 1 + m as u64);
                        let b = rand_vec(br * ldb, 2 + n as u64);
                        let c0 = rand_vec(m * ldc, 3 + k as u64);
                        let want =
                            naive(op_a, op_b, m, n, k, alpha, &a, lda, &b, ldb, beta, &c0, ldc);
                        for (e, parts) in engines()
                            .into_iter()
                            .flat_map(|e| [1, 2, 3].map(|p| (e, p)))
                        {
                            let mut c = c0.clone();
                            sgemm_parts_on(
                                e, parts, op_a, op_b, m, n, k, alpha, &a, lda, &b, ldb, beta,
                                &mut c, ldc,
                            );
                            for i in 0..m {
                                for j in 0..n {
                                    let (g, w) = (c[i * ldc + j] as f64, want[i * n + j]);
                                    assert!(
                                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()) * (k as f64).sqrt(),
                                        "{} {op_a:?}{op_b:?} {m}x{n}x{k} parts {parts} [{i},{j}]: {g} vs {w}",
                                        name(e)
                                    );
                                }
                                // Padding columns of C are untouched.
                                for j in n..ldc {
                                    assert_eq!(c[i * ldc + j], c0[i * ldc + j]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_and_k_zero_scales() {
        let a = [1.0f32, 2.0];
        let b = [3.0f32, 4.0];
        for e in engines() {
            let mut c = [f32::NAN];
            sgemm_parts_on(
                e,
                1,
                Op::N,
                Op::N,
                1,
                1,
                2,
                1.0,
                &a,
                2,
                &b,
                1,
                0.0,
                &mut c,
                1,
            );
            assert_eq!(c[0], 11.0, "{}", name(e));
        }
        let mut c = [2.0f32, 4.0];
        sgemm_serial(Op::N, Op::N, 1, 2, 0, 1.0, &[], 0, &[], 2, 0.5, &mut c, 2);
        assert_eq!(c, [1.0, 2.0]);
    }

    #[test]
    #[should_panic(expected = "needs")]
    fn short_slice_panics_with_shape() {
        let mut c = [0.0f32; 4];
        sgemm_serial(
            Op::N,
            Op::N,
            2,
            2,
            2,
            1.0,
            &[0.0; 3],
            2,
            &[0.0; 4],
            2,
            0.0,
            &mut c,
            2,
        );
    }
}
