//! The `reference` backend: the kernel contract written as plain loops, one formula per line,
//! accumulating in f64 — llm.c's `_naive` twins. Nothing here is fast or clever; it is the
//! oracle the fast backends are tested against (`tests/kernels_reference.rs` for `cpu`), and
//! it passes the finite-difference gradient checks itself (`tests/gradcheck.rs`).
//!
//! Shapes are checked above the seam, by [`super::Checked`] (as for every backend).
//! Every activation is `[C, N]` (element `(c, t)` at `c·N + t`), token `t` at position
//! `t mod S` of sequence `t / S`; weights are `W[out, in]`. Intermediate values stay in f64
//! inside a kernel; only the outputs are rounded to f32.

use super::ops::Rope;
use super::{
    AttnFwd, AttnWeights, Dims, FfnBwd, FfnFwd, FfnWeights, Kernels, SdpaBwd1, SdpaBwd2,
    ShapesChecked, Spec,
};
use anyhow::Result;

/// The plain-loop implementation of [`Kernels`], for one [`Spec`].
pub struct ReferenceKernels {
    spec: Spec,
}

impl ReferenceKernels {
    pub fn new(spec: Spec) -> ReferenceKernels {
        ReferenceKernels { spec }
    }
}

/// `Y = W·X`: W `[rows, cols]` (f32), X `[cols, n]` (f64) → `[rows, n]`.
fn matmul(w: &[f32], x: &[f64], rows: usize, cols: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0f64; rows * n];
    for r in 0..rows {
        for c in 0..cols {
            let wrc = w[r * cols + c] as f64;
            for t in 0..n {
                y[r * n + t] += wrc * x[c * n + t];
            }
        }
    }
    y
}

/// `Y = Wᵀ·X`: W `[rows, cols]` (f32), X `[rows, n]` (f64) → `[cols, n]`.
fn matmul_t(w: &[f32], x: &[f64], rows: usize, cols: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0f64; cols * n];
    for r in 0..rows {
        for c in 0..cols {
            let wrc = w[r * cols + c] as f64;
            for t in 0..n {
                y[c * n + t] += wrc * x[r * n + t];
            }
        }
    }
    y
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn store(out: &mut [f32], v: &[f64]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o = x as f32;
    }
}

/// rmsnorm(x)·g per token column: `x[c,t] / √(mean_c x[c,t]² + eps) · g[c]`.
fn rmsnorm(x: &[f32], g: &[f32], dim: usize, n: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0f64; dim * n];
    for t in 0..n {
        let ms = (0..dim).map(|c| (x[c * n + t] as f64).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for c in 0..dim {
            y[c * n + t] = x[c * n + t] as f64 * inv * g[c] as f64;
        }
    }
    y
}

/// Per-head RMSNorm in place (Qwen3's q/k norms): x `[heads·hd, n]`, each head's hd rows
/// normalised per token over hd channels and scaled by g `[hd]`.
fn head_rmsnorm(x: &mut [f64], g: &[f32], n: usize, eps: f64) {
    let hd = g.len();
    for head in x.chunks_exact_mut(hd * n) {
        for t in 0..n {
            let ms = (0..hd).map(|c| head[c * n + t].powi(2)).sum::<f64>() / hd as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            for c in 0..hd {
                head[c * n + t] *= inv * g[c] as f64;
            }
        }
    }
}

/// RoPE as llama2.c: in each head, rows (2j, 2j+1) of token t turn by the table's angle for
/// position `t mod seq` and frequency j.
fn rope(x: &mut [f64], r: &Rope, rows: usize, n: usize, seq: usize) {
    let (hd, half) = (r.head_dim, r.head_dim / 2);
    for row in (0..rows).step_by(2) {
        let j = (row % hd) / 2;
        for t in 0..n {
            let pos = t % seq;
            let (c, s) = (r.cos[pos * half + j] as f64, r.sin[pos * half + j] as f64);
            let (a, b) = (x[row * n + t], x[(row + 1) * n + t]);
            x[row * n + t] = a * c - b * s;
            x[(row + 1) * n + t] = a * s + b * c;
        }
    }
}

/// The causal softmax `P[i, j]` (`j ≤ i`, zero above) of `qᵀk/√hd` for query head `h` of
/// sequence `b`; its kv head is `h / (NH/NKV)`.
fn probs(d: &Dims, q: &[f64], k: &[f64], b: usize, h: usize) -> Vec<f64> {
    let (s, n, hd) = (d.seq, d.n(), d.head_dim);
    let kvh = h / (d.n_heads / d.n_kv_heads);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut p = vec![0f64; s * s];
    for i in 0..s {
        let scores: Vec<f64> = (0..=i)
            .map(|j| {
                (0..hd)
                    .map(|e| q[(h * hd + e) * n + b * s + i] * k[(kvh * hd + e) * n + b * s + j])
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = scores.iter().map(|x| (x - max).exp()).sum();
        for (j, x) in scores.iter().enumerate() {
            p[i * s + j] = (x - max).exp() / z;
        }
    }
    p
}

fn silu(a: f64) -> f64 {
    a / (1.0 + (-a).exp())
}

/// d silu(a)/da = σ(a)·(1 + a·(1 − σ(a))).
fn silu_grad(a: f64) -> f64 {
    let sig = 1.0 / (1.0 + (-a).exp());
    sig * (1.0 + a * (1.0 - sig))
}

impl Kernels for ReferenceKernels {
    fn name(&self) -> &str {
        "reference"
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
        let (d, r) = (&self.spec.dims, &self.spec.rope);
        let (dim, n, qd, kvd, hd) = (d.dim, d.n(), d.q_dim(), d.kv_dim(), d.head_dim);
        let xn = rmsnorm(x, w.g, dim, n, self.spec.eps as f64);
        let mut q = matmul(w.wq, &xn, qd, dim, n);
        let mut k = matmul(w.wk, &xn, kvd, dim, n);
        let v = matmul(w.wv, &xn, kvd, dim, n);
        if let (Some(qg), Some(kg)) = (w.q_norm, w.k_norm) {
            head_rmsnorm(&mut q, qg, n, self.spec.eps as f64);
            head_rmsnorm(&mut k, kg, n, self.spec.eps as f64);
        }
        rope(&mut q, r, qd, n, d.seq);
        rope(&mut k, r, kvd, n, d.seq);
        let s = d.seq;
        let mut attn = vec![0f64; qd * n];
        for b in 0..d.batch {
            for h in 0..d.n_heads {
                let kvh = h / (d.n_heads / d.n_kv_heads);
                let p = probs(d, &q, &k, b, h);
                for i in 0..s {
                    for e in 0..hd {
                        attn[(h * hd + e) * n + b * s + i] = (0..=i)
                            .map(|j| p[i * s + j] * v[(kvh * hd + e) * n + b * s + j])
                            .sum();
                    }
                }
            }
        }
        let o = matmul(w.wo, &attn, dim, qd, n);
        store(out.xn, &xn);
        store(out.q, &q);
        store(out.k, &k);
        store(out.v, &v);
        store(out.attn, &attn);
        store(out.o, &o);
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
        let (dim, n, hid) = (d.dim, d.n(), d.hidden);
        let x2n = rmsnorm(x2, w.g, dim, n, self.spec.eps as f64);
        let h1 = matmul(w.w1, &x2n, hid, dim, n);
        let h3 = matmul(w.w3, &x2n, hid, dim, n);
        let gate: Vec<f64> = h1.iter().zip(&h3).map(|(&a, &b)| silu(a) * b).collect();
        let f = matmul(w.w2, &gate, dim, hid, n);
        store(out.x2n, &x2n);
        store(out.h1, &h1);
        store(out.h3, &h3);
        store(out.gate, &gate);
        store(out.f, &f);
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
        let (dim, n, hid) = (d.dim, d.n(), d.hidden);
        let dgate = matmul_t(w.w2, &f64s(dy), dim, hid, n);
        let mut dh1 = vec![0f64; hid * n];
        let mut dh3 = vec![0f64; hid * n];
        for i in 0..hid * n {
            let (a, b) = (h1[i] as f64, h3[i] as f64);
            dh1[i] = dgate[i] * b * silu_grad(a);
            dh3[i] = dgate[i] * silu(a);
        }
        let from1 = matmul_t(w.w1, &dh1, hid, dim, n);
        let from3 = matmul_t(w.w3, &dh3, hid, dim, n);
        let dx2n: Vec<f64> = from1.iter().zip(&from3).map(|(a, b)| a + b).collect();
        store(out.dx2n, &dx2n);
        store(out.dh1, &dh1);
        store(out.dh3, &dh3);
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
        let (dim, n, qd, kvd, hd, s) = (d.dim, d.n(), d.q_dim(), d.kv_dim(), d.head_dim, d.seq);
        let dattn = matmul_t(w.wo, &f64s(dx2), dim, qd, n);
        let (q, k, v) = (f64s(q), f64s(k), f64s(v));
        let mut dv = vec![0f64; kvd * n];
        for b in 0..d.batch {
            for h in 0..d.n_heads {
                let kvh = h / (d.n_heads / d.n_kv_heads);
                let p = probs(d, &q, &k, b, h);
                let base = (b * d.n_heads + h) * s * s;
                for i in 0..s {
                    for j in 0..s {
                        out.probs[base + i * s + j] = p[i * s + j] as f32;
                        // dP[i, j] = Σ_e dattn[e, i]·v[e, j] on and below the diagonal.
                        out.dp[base + i * s + j] = if j <= i {
                            (0..hd)
                                .map(|e| {
                                    dattn[(h * hd + e) * n + b * s + i]
                                        * v[(kvh * hd + e) * n + b * s + j]
                                })
                                .sum::<f64>() as f32
                        } else {
                            0.0
                        };
                    }
                }
                // dv[e, j] += Σ_{i ≥ j} P[i, j]·dattn[e, i], summed over the group's heads.
                for j in 0..s {
                    for e in 0..hd {
                        dv[(kvh * hd + e) * n + b * s + j] += (j..s)
                            .map(|i| p[i * s + j] * dattn[(h * hd + e) * n + b * s + i])
                            .sum::<f64>();
                    }
                }
            }
        }
        store(out.dv, &dv);
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
        let (n, qd, kvd, hd, s) = (d.n(), d.q_dim(), d.kv_dim(), d.head_dim, d.seq);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut dq = vec![0f64; qd * n];
        let mut dk = vec![0f64; kvd * n];
        for b in 0..d.batch {
            for h in 0..d.n_heads {
                let kvh = h / (d.n_heads / d.n_kv_heads);
                let base = (b * d.n_heads + h) * s * s;
                let p = |i: usize, j: usize| probs[base + i * s + j] as f64;
                let g = |i: usize, j: usize| dp[base + i * s + j] as f64;
                for i in 0..s {
                    // dS[i, j] = P[i, j]·(dP[i, j] − Σ_{j' ≤ i} dP[i, j']·P[i, j'])
                    let dot: f64 = (0..=i).map(|j| g(i, j) * p(i, j)).sum();
                    for j in 0..=i {
                        let ds = p(i, j) * (g(i, j) - dot) * scale;
                        for e in 0..hd {
                            let (qi, kj) =
                                ((h * hd + e) * n + b * s + i, (kvh * hd + e) * n + b * s + j);
                            dq[qi] += ds * k[kj] as f64;
                            dk[kj] += ds * q[qi] as f64;
                        }
                    }
                }
            }
        }
        store(out.dq, &dq);
        store(out.dk, &dk);
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
        let a = matmul_t(w.wq, &f64s(dq), qd, dim, n);
        let b = matmul_t(w.wk, &f64s(dk), kvd, dim, n);
        let c = matmul_t(w.wv, &f64s(dv), kvd, dim, n);
        for (i, o) in dxn.iter_mut().enumerate() {
            *o = (a[i] + b[i] + c[i]) as f32;
        }
        Ok(())
    }
}
