//! The `cpu` backend: the six kernels in fp32 over [`super::gemm`].
//!
//! Every projection is one GEMM on the whole `[C, N]` activation (split over the cores by
//! [`super::gemm::sgemm`]). Attention runs per (sequence, kv head) task, the tasks spread
//! statically over the rayon pool, each worker with its own `[S, S]` scratch; a task handles
//! the `G = NH/NKV` query heads of its kv head one after another, so the GQA sums of dk and
//! dv stay inside one task. Causal attention walks query rows in tiles of [`TILE`] and
//! touches only keys up to the tile's end, so about half of the `S²` work is skipped.
//!
//! Every call arrives through [`super::Checked`], which has checked each slice against the
//! backend's [`Spec`]: the raw-pointer loops below rely on those lengths.
//!
//! Scratch lives in the struct and only grows: after the first call of a shape nothing is
//! allocated here (the GEMM library allocates its packing buffers per call; glibc serves
//! most of them from memory already touched: a Stories110M step sees ~4k page faults).

use super::gemm::{sgemm, sgemm_raw, Op};
use super::ops;
use super::{
    AttnFwd, AttnWeights, Dims, FfnBwd, FfnFwd, FfnWeights, Kernels, SdpaBwd1, SdpaBwd2,
    ShapesChecked, Spec,
};
use anyhow::Result;
use rayon::prelude::*;

/// Query rows per causal tile.
pub const TILE: usize = 64;

/// The fp32 CPU implementation of [`Kernels`], for one [`Spec`].
pub struct CpuKernels {
    spec: Spec,
    /// `[N]` per-token RMS scale.
    inv_rms: Vec<f32>,
    /// `[QD, N]` Woᵀ·dx2 in sdpa_bwd1; `[H, N]` W2ᵀ·dy in ffn_bwd.
    tmp: Vec<f32>,
    /// One `[S, S]` scores / dS matrix per worker.
    heads: Vec<f32>,
}

impl CpuKernels {
    pub fn new(spec: Spec) -> CpuKernels {
        CpuKernels {
            spec,
            inv_rms: Vec::new(),
            tmp: Vec::new(),
            heads: Vec::new(),
        }
    }
}

/// Grows `v` to at least `len` (never shrinks, so steady state allocates nothing).
fn grow(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// A raw pointer that worker tasks may share; each task writes a disjoint block through it.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only to hand disjoint output blocks to parallel tasks (see each use).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    fn at(self, off: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(off) }
    }
}

/// Workers for `tasks` equal tasks: the pool's threads, at most one per task.
fn workers(tasks: usize) -> usize {
    rayon::current_num_threads().clamp(1, tasks.max(1))
}

/// Runs `f(task, scratch)` for `tasks` equal tasks, split into contiguous runs over the
/// rayon pool, each run with its own `slot`-sized part of `scratch`.
fn for_each_task(
    scratch: &mut Vec<f32>,
    tasks: usize,
    slot: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let w = workers(tasks);
    let buf = grow(scratch, w * slot);
    buf.par_chunks_mut(slot).enumerate().for_each(|(wi, scr)| {
        for task in wi * tasks / w..(wi + 1) * tasks / w {
            f(task, scr);
        }
    });
}

/// [`for_each_task`] without scratch.
fn for_each_task_plain(tasks: usize, f: impl Fn(usize) + Sync) {
    let w = workers(tasks);
    (0..w).into_par_iter().for_each(|wi| {
        for task in wi * tasks / w..(wi + 1) * tasks / w {
            f(task);
        }
    });
}

/// Geometry of one attention head's blocks inside the `[C, N]` activations.
#[derive(Clone, Copy)]
struct Head {
    /// token columns N (row stride of every activation)
    n: usize,
    /// sequence length S
    s: usize,
    hd: usize,
    /// offset of query head h's block: row h·hd, column b·S
    q_off: usize,
    /// offset of its kv head's block: row j·hd, column b·S
    kv_off: usize,
    /// offset of the head's `[S, S]` block in `[B, NH, S, S]`
    p_off: usize,
    /// 1/√hd
    scale: f32,
}

impl Head {
    fn new(d: &Dims, task: usize, g: usize) -> Head {
        let group = d.n_heads / d.n_kv_heads;
        let (b, j) = (task / d.n_kv_heads, task % d.n_kv_heads);
        let h = j * group + g;
        let (n, s) = (d.n(), d.seq);
        Head {
            n,
            s,
            hd: d.head_dim,
            q_off: h * d.head_dim * n + b * s,
            kv_off: j * d.head_dim * n + b * s,
            p_off: (b * d.n_heads + h) * s * s,
            scale: 1.0 / (d.head_dim as f32).sqrt(),
        }
    }

    /// Fills rows `r0..r1` of `p` (`[S, S]`, row stride S) with the causal softmax of
    /// `scale·qᵀk` over keys `0..r1`: probabilities for keys ≤ query, zero for the rest of
    /// the tile; columns ≥ r1 are left alone.
    ///
    /// # Safety
    /// `q`, `k` point at this head's blocks of live `[C, N]` activations; `p` at a live
    /// `[S, S]` block no one else touches.
    unsafe fn probs_rows(&self, q: *const f32, k: *const f32, p: *mut f32, r0: usize, r1: usize) {
        let (n, s) = (self.n as isize, self.s);
        // scores[i, j] = Σ_d q[d, i]·k[d, j]: op(A) = q block transposed.
        sgemm_raw(
            r1 - r0,
            r1,
            self.hd,
            self.scale,
            q.add(r0),
            1,
            n,
            k,
            n,
            1,
            0.0,
            p.add(r0 * s),
            s as isize,
        );
        for i in r0..r1 {
            let row = std::slice::from_raw_parts_mut(p.add(i * s), r1);
            let (live, masked) = row.split_at_mut(i + 1);
            softmax_in_place(live);
            masked.fill(0.0);
        }
    }
}

/// Softmax of one row in place.
fn softmax_in_place(row: &mut [f32]) {
    let max = ops::max_of(row);
    let inv = 1.0 / ops::exp_shifted(row, max);
    ops::scale_in_place(row, inv);
}

/// Query-row tiles `[r0, r1)` of a sequence of `s`.
fn tiles(s: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..s).step_by(TILE).map(move |r0| (r0, (r0 + TILE).min(s)))
}

impl Kernels for CpuKernels {
    fn name(&self) -> &str {
        "cpu"
    }

    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn fwd_attn(
        &mut self,
        _: ShapesChecked,
        _layer: usize,
        x: &[f32],
        w: &AttnWeights,
        out: AttnFwd,
    ) -> Result<()> {
        let d = &self.spec.dims;
        let (dim, n, qd, kvd) = (d.dim, d.n(), d.q_dim(), d.kv_dim());
        let inv = grow(&mut self.inv_rms, n);
        ops::rmsnorm_fwd(out.xn, inv, x, w.g, self.spec.eps);
        let xn = &*out.xn;
        sgemm(
            Op::N,
            Op::N,
            qd,
            n,
            dim,
            1.0,
            w.wq,
            dim,
            xn,
            n,
            0.0,
            out.q,
            n,
        );
        sgemm(
            Op::N,
            Op::N,
            kvd,
            n,
            dim,
            1.0,
            w.wk,
            dim,
            xn,
            n,
            0.0,
            out.k,
            n,
        );
        sgemm(
            Op::N,
            Op::N,
            kvd,
            n,
            dim,
            1.0,
            w.wv,
            dim,
            xn,
            n,
            0.0,
            out.v,
            n,
        );
        if let (Some(qg), Some(kg)) = (w.q_norm, w.k_norm) {
            let inv = grow(&mut self.inv_rms, n);
            ops::head_rmsnorm_fwd(out.q, inv, qg, self.spec.eps);
            ops::head_rmsnorm_fwd(out.k, inv, kg, self.spec.eps);
        }
        ops::rope_fwd(out.q, &self.spec.rope, n, d.seq);
        ops::rope_fwd(out.k, &self.spec.rope, n, d.seq);

        let (q, k, v) = (
            out.q.as_ptr() as usize,
            out.k.as_ptr() as usize,
            out.v.as_ptr() as usize,
        );
        let attn = SharedMut(out.attn.as_mut_ptr());
        let group = d.n_heads / d.n_kv_heads;
        let s = d.seq;
        let dd = *d;
        for_each_task(
            &mut self.heads,
            d.batch * d.n_kv_heads,
            s * s,
            |task, sc| {
                let (q, k, v) = (q as *const f32, k as *const f32, v as *const f32);
                for g in 0..group {
                    let hv = Head::new(&dd, task, g);
                    for (r0, r1) in tiles(s) {
                        // SAFETY: q, k, v are live [C, N] activations borrowed for this call;
                        // sc is this worker's [S, S] scratch; the attn block of head (b, h)
                        // columns r0..r1 is written by this task only.
                        unsafe {
                            hv.probs_rows(
                                q.add(hv.q_off),
                                k.add(hv.kv_off),
                                sc.as_mut_ptr(),
                                r0,
                                r1,
                            );
                            // attn[:, i] = Σ_j P[i, j]·v[:, j]
                            sgemm_raw(
                                hv.hd,
                                r1 - r0,
                                r1,
                                1.0,
                                v.add(hv.kv_off),
                                hv.n as isize,
                                1,
                                sc.as_ptr().add(r0 * s),
                                1,
                                s as isize,
                                0.0,
                                attn.at(hv.q_off + r0),
                                hv.n as isize,
                            );
                        }
                    }
                }
            },
        );
        sgemm(
            Op::N,
            Op::N,
            dim,
            n,
            qd,
            1.0,
            w.wo,
            qd,
            out.attn,
            n,
            0.0,
            out.o,
            n,
        );
        Ok(())
    }

    fn fwd_ffn(
        &mut self,
        _: ShapesChecked,
        _layer: usize,
        x2: &[f32],
        w: &FfnWeights,
        out: FfnFwd,
    ) -> Result<()> {
        let d = &self.spec.dims;
        let (dim, n, h) = (d.dim, d.n(), d.hidden);
        let inv = grow(&mut self.inv_rms, n);
        ops::rmsnorm_fwd(out.x2n, inv, x2, w.g, self.spec.eps);
        sgemm(
            Op::N,
            Op::N,
            h,
            n,
            dim,
            1.0,
            w.w1,
            dim,
            out.x2n,
            n,
            0.0,
            out.h1,
            n,
        );
        sgemm(
            Op::N,
            Op::N,
            h,
            n,
            dim,
            1.0,
            w.w3,
            dim,
            out.x2n,
            n,
            0.0,
            out.h3,
            n,
        );
        out.gate
            .par_chunks_mut(n)
            .zip(out.h1.par_chunks(n).zip(out.h3.par_chunks(n)))
            .with_min_len(16)
            .for_each(|(g, (a, b))| ops::swiglu_fwd(g, a, b));
        sgemm(
            Op::N,
            Op::N,
            dim,
            n,
            h,
            1.0,
            w.w2,
            h,
            out.gate,
            n,
            0.0,
            out.f,
            n,
        );
        Ok(())
    }

    fn ffn_bwd(
        &mut self,
        _: ShapesChecked,
        _layer: usize,
        dy: &[f32],
        h1: &[f32],
        h3: &[f32],
        w: &FfnWeights,
        out: FfnBwd,
    ) -> Result<()> {
        let d = &self.spec.dims;
        let (dim, n, h) = (d.dim, d.n(), d.hidden);
        let dgate = grow(&mut self.tmp, h * n);
        sgemm(Op::T, Op::N, h, n, dim, 1.0, w.w2, h, dy, n, 0.0, dgate, n);
        out.dh1
            .par_chunks_mut(n)
            .zip(out.dh3.par_chunks_mut(n))
            .zip(
                dgate
                    .par_chunks(n)
                    .zip(h1.par_chunks(n).zip(h3.par_chunks(n))),
            )
            .with_min_len(16)
            .for_each(|((d1, d3), (dg, (a, b)))| ops::swiglu_bwd(d1, d3, dg, a, b));
        sgemm(
            Op::T,
            Op::N,
            dim,
            n,
            h,
            1.0,
            w.w1,
            dim,
            out.dh1,
            n,
            0.0,
            out.dx2n,
            n,
        );
        sgemm(
            Op::T,
            Op::N,
            dim,
            n,
            h,
            1.0,
            w.w3,
            dim,
            out.dh3,
            n,
            1.0,
            out.dx2n,
            n,
        );
        Ok(())
    }

    fn sdpa_bwd1(
        &mut self,
        _: ShapesChecked,
        _layer: usize,
        dx2: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        w: &AttnWeights,
        out: SdpaBwd1,
    ) -> Result<()> {
        let d = &self.spec.dims;
        let (dim, n, qd) = (d.dim, d.n(), d.q_dim());
        let dattn = grow(&mut self.tmp, qd * n);
        sgemm(
            Op::T,
            Op::N,
            qd,
            n,
            dim,
            1.0,
            w.wo,
            qd,
            dx2,
            n,
            0.0,
            dattn,
            n,
        );
        let dattn = &*dattn;

        let (qp, kp, vp, dap) = (
            q.as_ptr() as usize,
            k.as_ptr() as usize,
            v.as_ptr() as usize,
            dattn.as_ptr() as usize,
        );
        let (dv, dp, probs) = (
            SharedMut(out.dv.as_mut_ptr()),
            SharedMut(out.dp.as_mut_ptr()),
            SharedMut(out.probs.as_mut_ptr()),
        );
        let group = d.n_heads / d.n_kv_heads;
        let s = d.seq;
        let dd = *d;
        for_each_task_plain(d.batch * d.n_kv_heads, |task| {
            let (q, k, v, da) = (
                qp as *const f32,
                kp as *const f32,
                vp as *const f32,
                dap as *const f32,
            );
            for g in 0..group {
                let hv = Head::new(&dd, task, g);
                let ni = hv.n as isize;
                // SAFETY: inputs are live [C, N] activations borrowed for this call; the
                // [S, S] blocks of probs and dp at p_off, and the dv block of kv head j in
                // sequence b, belong to this task alone.
                unsafe {
                    let p = probs.at(hv.p_off);
                    let dpb = dp.at(hv.p_off);
                    for (r0, r1) in tiles(s) {
                        hv.probs_rows(q.add(hv.q_off), k.add(hv.kv_off), p, r0, r1);
                        // dP[i, j] = Σ_d dattn[d, i]·v[d, j]
                        sgemm_raw(
                            r1 - r0,
                            r1,
                            hv.hd,
                            1.0,
                            da.add(hv.q_off + r0),
                            1,
                            ni,
                            v.add(hv.kv_off),
                            ni,
                            1,
                            0.0,
                            dpb.add(r0 * s),
                            s as isize,
                        );
                        for i in r0..r1 {
                            std::slice::from_raw_parts_mut(p.add(i * s + i + 1), s - i - 1)
                                .fill(0.0);
                            std::slice::from_raw_parts_mut(dpb.add(i * s + i + 1), s - i - 1)
                                .fill(0.0);
                        }
                    }
                    // dv[:, j] (+)= Σ_{i ≥ j} dattn[:, i]·P[i, j], per key tile.
                    for (c0, c1) in tiles(s) {
                        sgemm_raw(
                            hv.hd,
                            c1 - c0,
                            s - c0,
                            1.0,
                            da.add(hv.q_off + c0),
                            ni,
                            1,
                            p.add(c0 * s + c0),
                            s as isize,
                            1,
                            if g == 0 { 0.0 } else { 1.0 },
                            dv.at(hv.kv_off + c0),
                            ni,
                        );
                    }
                }
            }
        });
        Ok(())
    }

    fn sdpa_bwd2(
        &mut self,
        _: ShapesChecked,
        _layer: usize,
        probs: &[f32],
        dp: &[f32],
        q: &[f32],
        k: &[f32],
        out: SdpaBwd2,
    ) -> Result<()> {
        let d = &self.spec.dims;
        let (qp, kp) = (q.as_ptr() as usize, k.as_ptr() as usize);
        let (dq, dk) = (
            SharedMut(out.dq.as_mut_ptr()),
            SharedMut(out.dk.as_mut_ptr()),
        );
        let group = d.n_heads / d.n_kv_heads;
        let s = d.seq;
        let dd = *d;
        for_each_task(
            &mut self.heads,
            d.batch * d.n_kv_heads,
            s * s,
            |task, ds| {
                let (q, k) = (qp as *const f32, kp as *const f32);
                for g in 0..group {
                    let hv = Head::new(&dd, task, g);
                    let ni = hv.n as isize;
                    let p = &probs[hv.p_off..hv.p_off + s * s];
                    let dpb = &dp[hv.p_off..hv.p_off + s * s];
                    // dS = P ⊙ (dP − rowsum(dP ⊙ P)), zero above the diagonal.
                    for i in 0..s {
                        let (pr, dr) = (&p[i * s..i * s + i + 1], &dpb[i * s..i * s + i + 1]);
                        let dot = ops::dot(pr, dr);
                        let row = &mut ds[i * s..(i + 1) * s];
                        for ((o, &a), &b) in row.iter_mut().zip(pr).zip(dr) {
                            *o = a * (b - dot);
                        }
                        row[i + 1..].fill(0.0);
                    }
                    // SAFETY: q, k are live [C, N] activations; the dq block of head (b, h) and
                    // the dk block of kv head j in sequence b belong to this task alone.
                    unsafe {
                        // dq[:, i] = scale·Σ_{j ≤ i} dS[i, j]·k[:, j]
                        for (r0, r1) in tiles(s) {
                            sgemm_raw(
                                hv.hd,
                                r1 - r0,
                                r1,
                                hv.scale,
                                k.add(hv.kv_off),
                                ni,
                                1,
                                ds.as_ptr().add(r0 * s),
                                1,
                                s as isize,
                                0.0,
                                dq.at(hv.q_off + r0),
                                ni,
                            );
                        }
                        // dk[:, j] (+)= scale·Σ_{i ≥ j} dS[i, j]·q[:, i]
                        for (c0, c1) in tiles(s) {
                            sgemm_raw(
                                hv.hd,
                                c1 - c0,
                                s - c0,
                                hv.scale,
                                q.add(hv.q_off + c0),
                                ni,
                                1,
                                ds.as_ptr().add(c0 * s + c0),
                                s as isize,
                                1,
                                if g == 0 { 0.0 } else { 1.0 },
                                dk.at(hv.kv_off + c0),
                                ni,
                            );
                        }
                    }
                }
            },
        );
        Ok(())
    }

    fn qkv_bwd(
        &mut self,
        _: ShapesChecked,
        _layer: usize,
        dq: &[f32],
        dk: &[f32],
        dv: &[f32],
        w: &AttnWeights,
        dxn: &mut [f32],
    ) -> Result<()> {
        let d = &self.spec.dims;
        let (dim, n, qd, kvd) = (d.dim, d.n(), d.q_dim(), d.kv_dim());
        sgemm(Op::T, Op::N, dim, n, qd, 1.0, w.wq, dim, dq, n, 0.0, dxn, n);
        sgemm(
            Op::T,
            Op::N,
            dim,
            n,
            kvd,
            1.0,
            w.wk,
            dim,
            dk,
            n,
            1.0,
            dxn,
            n,
        );
        sgemm(
            Op::T,
            Op::N,
            dim,
            n,
            kvd,
            1.0,
            w.wv,
            dim,
            dv,
            n,
            1.0,
            dxn,
            n,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The backend's own mechanics; its numbers are checked against the reference backend
    //! in tests/kernels_reference.rs.
    use super::*;
    use crate::util::rng::Rng;

    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..len).map(|_| r.next_f32() * 2.0 - 1.0).collect()
    }

    /// GQA, head_dim·heads ≠ dim, two sequences longer than one tile.
    fn spec() -> Spec {
        let mut c = crate::model::Config::llama(12, 20, 1, 4, 2, 8, 70);
        c.head_dim = 4;
        Spec::new(&c, 2, 70)
    }

    #[test]
    fn scratch_is_reused_and_bad_shapes_are_errors() {
        let s = spec();
        let d = s.dims;
        let (n, qd, kvd) = (d.n(), d.q_dim(), d.kv_dim());
        let (probs, dp) = (vec![0.0; d.probs_len()], vec![0.0; d.probs_len()]);
        let (q, k) = (rand_vec(qd * n, 1), rand_vec(kvd * n, 2));
        let (mut dq, mut dk) = (vec![0.0; qd * n], vec![0.0; kvd * n]);
        let mut kern = CpuKernels::new(s);
        let mut run = |kern: &mut CpuKernels, dq: &mut [f32]| {
            super::super::Checked::new(kern).sdpa_bwd2(
                0,
                &probs,
                &dp,
                &q,
                &k,
                SdpaBwd2 { dq, dk: &mut dk },
            )
        };
        run(&mut kern, &mut dq).unwrap();
        let ptr = kern.heads.as_ptr();
        run(&mut kern, &mut dq).unwrap();
        assert_eq!(
            ptr,
            kern.heads.as_ptr(),
            "scratch reallocated on the second call"
        );
        let e = run(&mut kern, &mut dq[1..]).unwrap_err().to_string();
        assert!(e.contains("dq") && e.contains("expected"), "{e}");
    }
}
