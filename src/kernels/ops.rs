//! CPU-side operations around the six kernels: embedding, RMSNorm, RoPE, SiLU, the
//! classifier and a fused softmax-cross-entropy. Each op is a forward/backward pair with the
//! shapes in its doc comment.
//!
//! Every activation is channel-first `[C, N]` (row-major, element `(c, t)` at `c·N + t`), so
//! per-token reductions (RMSNorm) run as row sweeps whose inner loop walks contiguous token
//! columns — the form the compiler vectorises. Backward functions that feed a residual
//! stream or a parameter gradient ADD into their output, so callers accumulate without
//! extra buffers.

use super::gemm::{sgemm, sgemm_serial, Op};
use rayon::prelude::*;

/// Compiles a function's body three times — for AVX-512, for AVX2+FMA and for the baseline
/// target — and picks one at run time (the build targets plain x86-64, whose SSE2 would
/// quarter the width of these loops). The body must be written so that it vectorises.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features v4 was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for v3.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// RoPE tables computed exactly as llama2.c's `run.c` does in f32:
/// `freq = 1 / theta^(i/hd)` for even `i` (llama2.c's theta is 10000), angle `pos·freq`;
/// pairs `(2j, 2j+1)` of each head rotate together.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub head_dim: usize,
    /// `[seq_len, hd/2]`
    pub cos: Vec<f32>,
    /// `[seq_len, hd/2]`
    pub sin: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, seq_len: usize, theta: f32) -> Rope {
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|j| 1.0f32 / theta.powf((2 * j) as f32 / head_dim as f32))
            .collect();
        Rope::from_inv_freq(head_dim, seq_len, &inv_freq)
    }

    /// The tables of a model: its θ and, when it has one, its RoPE scaling
    /// ([`Config::rope_inv_freq`](crate::model::Config::rope_inv_freq)).
    pub fn for_config(c: &crate::model::Config, seq_len: usize) -> Rope {
        Rope::from_inv_freq(c.head_dim, seq_len, &c.rope_inv_freq())
    }

    /// Tables for the inverse frequencies `inv_freq` `[head_dim/2]` of the pairs.
    pub fn from_inv_freq(head_dim: usize, seq_len: usize, inv_freq: &[f32]) -> Rope {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for pos in 0..seq_len {
            for &freq in &inv_freq[..half] {
                let val = pos as f32 * freq;
                cos.push(val.cos());
                sin.push(val.sin());
            }
        }
        Rope { head_dim, cos, sin }
    }

    /// Positions the table covers.
    pub fn len(&self) -> usize {
        self.cos.len() / (self.head_dim / 2).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }
}

/// `e^x` to about 2 ulp for `x` in [-87, 88] (clamped outside), written without calls or
/// branches so that loops over it vectorise. Cephes `expf`: `x = n·ln2 + f`, |f| ≤ ln2/2,
/// a degree-7 polynomial for `e^f`, and `2^n` built in the exponent bits.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let r = x * LOG2E + MAGIC;
    let n = r - MAGIC;
    let f = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * f + 1.398_2e-3;
    p = p * f + 8.333_452e-3;
    p = p * f + 4.166_579_6e-2;
    p = p * f + 0.166_666_65;
    p = p * f + 0.5;
    let e = p * f * f + f + 1.0;
    let pow2n = f32::from_bits(((r.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32);
    e * pow2n
}

/// Logistic sigmoid through [`exp_approx`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_approx(-x))
}

/// `silu(x) = x·σ(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// `silu'(x) = σ(x)·(1 + x·(1 − σ(x)))`.
#[inline(always)]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

multiversion! {
    /// SwiGLU gate forward: gate = silu(h1)⊙h3, all `[H, N]` (flat).
    pub fn swiglu_fwd(gate: &mut [f32], h1: &[f32], h3: &[f32]) {
        for ((g, &a), &b) in gate.iter_mut().zip(h1).zip(h3) {
            *g = silu(a) * b;
        }
    }
}

multiversion! {
    /// SwiGLU gate backward: dh1 = dgate⊙h3⊙silu′(h1), dh3 = dgate⊙silu(h1), all `[H, N]`.
    pub fn swiglu_bwd(dh1: &mut [f32], dh3: &mut [f32], dgate: &[f32], h1: &[f32], h3: &[f32]) {
        for ((o1, o3), (&dg, (&a, &b))) in dh1
            .iter_mut()
            .zip(dh3.iter_mut())
            .zip(dgate.iter().zip(h1.iter().zip(h3)))
        {
            let s = sigmoid(a);
            *o1 = dg * b * s * (1.0 + a * (1.0 - s));
            *o3 = dg * a * s;
        }
    }
}

multiversion! {
    /// `x ← x·k`.
    pub fn scale_in_place(x: &mut [f32], k: f32) {
        x.iter_mut().for_each(|v| *v *= k);
    }
}

// ---------------------------------------------------------------------------------------
// Embedding

/// x `[D, N]` = columns `emb[tokens[t], :]` of the embedding `[V, D]`. Tokens must be < V.
pub fn embedding_fwd(x: &mut [f32], emb: &[f32], tokens: &[u32], dim: usize) {
    let n = tokens.len();
    assert_eq!(x.len(), dim * n);
    for (t, &tok) in tokens.iter().enumerate() {
        let row = &emb[tok as usize * dim..(tok as usize + 1) * dim];
        for (c, &e) in row.iter().enumerate() {
            x[c * n + t] = e;
        }
    }
}

/// demb `[V, D]` rows `tokens[t]` += dx `[D, N]` column t (a repeated token accumulates).
/// With a tied classifier `demb` is the same arena rows the classifier gradient went into.
pub fn embedding_bwd(demb: &mut [f32], dx: &[f32], tokens: &[u32], dim: usize) {
    let n = tokens.len();
    assert_eq!(dx.len(), dim * n);
    for (t, &tok) in tokens.iter().enumerate() {
        let row = &mut demb[tok as usize * dim..(tok as usize + 1) * dim];
        for (c, r) in row.iter_mut().enumerate() {
            *r += dx[c * n + t];
        }
    }
}

// ---------------------------------------------------------------------------------------
// RMSNorm

multiversion! {
    /// `inv_rms[t] = 1 / sqrt(mean_c x[c,t]² + eps)` for x `[C, N]`; inv_rms `[N]`.
    pub fn rms_inv(inv_rms: &mut [f32], x: &[f32], channels: usize, eps: f32) {
        let n = inv_rms.len();
        assert_eq!(x.len(), channels * n);
        inv_rms.fill(0.0);
        for row in x.chunks_exact(n) {
            for (s, &v) in inv_rms.iter_mut().zip(row) {
                *s += v * v;
            }
        }
        for s in inv_rms.iter_mut() {
            *s = 1.0 / (*s / channels as f32 + eps).sqrt();
        }
    }
}

multiversion! {
    /// out `[C, N]` = g `[C]` ⊙ x `[C, N]` · inv_rms (llama2.c `rmsnorm` per token column).
    /// `inv_rms` `[N]` is scratch that receives the per-token scale.
    pub fn rmsnorm_fwd(out: &mut [f32], inv_rms: &mut [f32], x: &[f32], g: &[f32], eps: f32) {
        let channels = g.len();
        assert_eq!(out.len(), x.len());
        rms_inv(inv_rms, x, channels, eps);
        for ((orow, xrow), &gc) in out
            .chunks_exact_mut(inv_rms.len())
            .zip(x.chunks_exact(inv_rms.len()))
            .zip(g)
        {
            for ((o, &v), &r) in orow.iter_mut().zip(xrow).zip(inv_rms.iter()) {
                *o = gc * (v * r);
            }
        }
    }
}

multiversion! {
    /// Backward of [`rmsnorm_fwd`]. With `y = g⊙x·r`, `r = (mean x² + eps)^(-1/2)`:
    /// `dx += r·g⊙dy − x·r³/C·Σ_c g_c·dy_c·x_c` and `dg += Σ_t dy⊙x·r`.
    /// dx, dy, x `[C, N]`; g, dg `[C]`; scratch `[2N]`.
    pub fn rmsnorm_bwd(
        dx: &mut [f32],
        dg: &mut [f32],
        dy: &[f32],
        x: &[f32],
        g: &[f32],
        eps: f32,
        scratch: &mut [f32],
    ) {
        let channels = g.len();
        let n = x.len() / channels;
        assert!(dx.len() == x.len() && dy.len() == x.len() && dg.len() == channels);
        let (inv_rms, dot) = scratch[..2 * n].split_at_mut(n);
        rms_inv(inv_rms, x, channels, eps);
        dot.fill(0.0);
        for ((dyrow, xrow), (&gc, dgc)) in dy
            .chunks_exact(n)
            .zip(x.chunks_exact(n))
            .zip(g.iter().zip(dg.iter_mut()))
        {
            // Lane accumulators for dg so that the loop vectorises.
            let mut acc = [0.0f32; LANES];
            let mut rest = 0.0f32;
            let mut it_d = dot.chunks_exact_mut(LANES);
            let mut it_a = dyrow.chunks_exact(LANES);
            let mut it_b = xrow.chunks_exact(LANES);
            let mut it_r = inv_rms.chunks_exact(LANES);
            for (((d, a), b), r) in (&mut it_d).zip(&mut it_a).zip(&mut it_b).zip(&mut it_r) {
                for l in 0..LANES {
                    let ab = a[l] * b[l];
                    d[l] += gc * ab;
                    acc[l] += ab * r[l];
                }
            }
            for (((d, &a), &b), &r) in it_d
                .into_remainder()
                .iter_mut()
                .zip(it_a.remainder())
                .zip(it_b.remainder())
                .zip(it_r.remainder())
            {
                *d += gc * a * b;
                rest += a * b * r;
            }
            *dgc += acc.iter().sum::<f32>() + rest;
        }
        // dot[t] becomes the coefficient of x: r³/C·Σ g·dy·x.
        for (d, &r) in dot.iter_mut().zip(inv_rms.iter()) {
            *d *= r * r * r / channels as f32;
        }
        for (((dxrow, dyrow), xrow), &gc) in dx
            .chunks_exact_mut(n)
            .zip(dy.chunks_exact(n))
            .zip(x.chunks_exact(n))
            .zip(g)
        {
            for (((o, &a), &b), (&r, &k)) in dxrow
                .iter_mut()
                .zip(dyrow)
                .zip(xrow)
                .zip(inv_rms.iter().zip(dot.iter()))
            {
                *o += r * gc * a - b * k;
            }
        }
    }
}

/// Per-head RMSNorm in place (Qwen3's q/k norms): x `[heads·hd, N]`, each head's rows
/// `[hd, N]` normalised per token column over its hd channels and scaled by g `[hd]`.
/// `inv_rms` `[N]` is scratch.
pub fn head_rmsnorm_fwd(x: &mut [f32], inv_rms: &mut [f32], g: &[f32], eps: f32) {
    let hd = g.len();
    let n = inv_rms.len();
    assert!(hd > 0 && x.len().is_multiple_of(hd * n));
    for head in x.chunks_exact_mut(hd * n) {
        rms_inv(inv_rms, head, hd, eps);
        for (row, &gc) in head.chunks_exact_mut(n).zip(g) {
            for (v, &r) in row.iter_mut().zip(inv_rms.iter()) {
                *v = gc * (*v * r);
            }
        }
    }
}

/// Backward of [`head_rmsnorm_fwd`]: dx `[heads·hd, N]` = the gradient w.r.t. the pre-norm
/// x (overwritten), given dy w.r.t. the output and the pre-norm x; dg `[hd]` += the gain's
/// gradient summed over heads and tokens. N = `n` token columns; scratch `[≥ 2N]`.
#[allow(clippy::too_many_arguments)]
pub fn head_rmsnorm_bwd(
    n: usize,
    dx: &mut [f32],
    dg: &mut [f32],
    dy: &[f32],
    x: &[f32],
    g: &[f32],
    eps: f32,
    scratch: &mut [f32],
) {
    let hd = g.len();
    assert!(hd > 0 && dx.len() == x.len() && dy.len() == x.len() && dg.len() == hd);
    assert!(n > 0 && x.len().is_multiple_of(hd * n));
    let blk = hd * n;
    dx.fill(0.0);
    for ((dxh, dyh), xh) in dx
        .chunks_exact_mut(blk)
        .zip(dy.chunks_exact(blk))
        .zip(x.chunks_exact(blk))
    {
        rmsnorm_bwd(dxh, dg, dyh, xh, g, eps, scratch);
    }
}

// ---------------------------------------------------------------------------------------
// RoPE

/// Rotates x `[R, N]` (R = heads·hd rows, N = B·S token columns) in place: RoPE forward.
/// Column t has position `t mod seq`; the pair (2j, 2j+1) of each head turns by
/// `pos·freq_j` exactly as llama2.c's `run.c`.
pub fn rope_fwd(x: &mut [f32], rope: &Rope, n: usize, seq: usize) {
    rope_rotate(x, rope, n, seq, 1.0);
}

/// RoPE backward: the gradient rotates by the opposite angle (the rotation's transpose).
/// dx `[R, N]` in place.
pub fn rope_bwd(dx: &mut [f32], rope: &Rope, n: usize, seq: usize) {
    rope_rotate(dx, rope, n, seq, -1.0);
}

multiversion! {
    fn rope_rotate(x: &mut [f32], rope: &Rope, n: usize, seq: usize, sign: f32) {
        let hd = rope.head_dim;
        let half = hd / 2;
        assert!(
            seq <= rope.len(),
            "rope: sequence of {seq} exceeds the table's {} positions",
            rope.len()
        );
        assert!(n.is_multiple_of(seq) && x.len().is_multiple_of(hd * n));
        // The angle depends on (pos, j) only: gather cos/sin for a block of positions once and
        // apply it to every head and sequence with contiguous, vectorisable loops.
        const BLOCK: usize = 128;
        let mut cos = [0.0f32; BLOCK];
        let mut sin = [0.0f32; BLOCK];
        for j in 0..half {
            for p0 in (0..seq).step_by(BLOCK) {
                let p1 = (p0 + BLOCK).min(seq);
                let len = p1 - p0;
                for (i, pos) in (p0..p1).enumerate() {
                    cos[i] = rope.cos[pos * half + j];
                    sin[i] = sign * rope.sin[pos * half + j];
                }
                for head in x.chunks_exact_mut(hd * n) {
                    let (r0, r1) = head[2 * j * n..(2 * j + 2) * n].split_at_mut(n);
                    for b0 in (0..n).step_by(seq) {
                        let a = &mut r0[b0 + p0..b0 + p1];
                        let b = &mut r1[b0 + p0..b0 + p1];
                        for (((a, b), &c), &s) in a
                            .iter_mut()
                            .zip(b.iter_mut())
                            .zip(&cos[..len])
                            .zip(&sin[..len])
                        {
                            let (v0, v1) = (*a, *b);
                            *a = v0 * c - v1 * s;
                            *b = v0 * s + v1 * c;
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Classifier with fused softmax-cross-entropy

/// Token columns per classifier chunk so that the `[chunk, V]` logits stay near 32 MiB.
pub fn ce_chunk_tokens(vocab: usize, n: usize) -> usize {
    ((8 << 20) / vocab.max(1)).clamp(1, n.max(1))
}

/// Gradient outputs of [`classifier_ce`].
pub struct ClassifierGrads<'a> {
    /// dL/dxf `[D, N]`, overwritten.
    pub dxf: &'a mut [f32],
    /// dL/dW_cls `[V, D]`, accumulated (the embedding rows when tied).
    pub dwcls: &'a mut [f32],
}

/// Classifier and cross-entropy, chunked over token columns so that no `[V, N]` logits
/// buffer exists: per chunk of `nc` columns,
/// logits `[nc, V]` = xfᵀ·W_clsᵀ (token-major, so each softmax row is contiguous);
/// loss += Σ (logsumexp − `logit[target]`); dlogits = (softmax − onehot)·`scale` in place;
/// dxf `[D, nc]` = W_clsᵀ·dlogitsᵀ; dW_cls `[V, D]` += dlogitsᵀ·xfᵀ.
///
/// xf `[D, N]`, wcls `[V, D]`, targets `[N]` (each < V), logits scratch ≥ `chunk·V`.
/// Returns the summed (not averaged) loss in f64. `grads = None` computes the loss only.
/// `times` receives (classifier GEMM, cross-entropy, dW GEMM) milliseconds; dxf and dW_cls
/// run side by side, so the dW time is only what it took beyond the dxf product.
#[allow(clippy::too_many_arguments)]
pub fn classifier_ce(
    xf: &[f32],
    wcls: &[f32],
    targets: &[u32],
    dim: usize,
    chunk: usize,
    logits: &mut [f32],
    scale: f32,
    mut grads: Option<ClassifierGrads>,
    times: &mut [f64; 3],
) -> f64 {
    let n = targets.len();
    let vocab = wcls.len() / dim;
    assert_eq!(xf.len(), dim * n);
    assert!(chunk >= 1 && logits.len() >= chunk.min(n) * vocab);
    let mut loss = 0.0f64;
    let mut c0 = 0;
    while c0 < n {
        let nc = chunk.min(n - c0);
        let lg = &mut logits[..nc * vocab];
        let t = std::time::Instant::now();
        sgemm(
            Op::T,
            Op::T,
            nc,
            vocab,
            dim,
            1.0,
            &xf[c0..],
            n,
            wcls,
            dim,
            0.0,
            lg,
            vocab,
        );
        times[0] += t.elapsed().as_secs_f64() * 1e3;
        let t = std::time::Instant::now();
        let want_grad = grads.is_some();
        loss += lg
            .par_chunks_mut(vocab)
            .with_min_len(8)
            .zip(targets[c0..c0 + nc].par_iter())
            .map(|(row, &tgt)| softmax_ce_row(row, tgt as usize, want_grad, scale))
            .sum::<f64>();
        times[1] += t.elapsed().as_secs_f64() * 1e3;
        if let Some(g) = grads.as_mut() {
            // dxf and dW_cls of this chunk are independent products of the same size
            // (2·D·nc·V each): one per core, each whole, rather than each cut in two.
            let t = std::time::Instant::now();
            let lg = &*lg;
            let dxf = &mut g.dxf[c0..];
            let dwcls = &mut *g.dwcls;
            let xfc = &xf[c0..];
            let (dx_ms, ()) = rayon::join(
                || {
                    let t = std::time::Instant::now();
                    sgemm_serial(
                        Op::T,
                        Op::T,
                        dim,
                        nc,
                        vocab,
                        1.0,
                        wcls,
                        dim,
                        lg,
                        vocab,
                        0.0,
                        dxf,
                        n,
                    );
                    t.elapsed().as_secs_f64() * 1e3
                },
                || {
                    sgemm_serial(
                        Op::T,
                        Op::T,
                        vocab,
                        dim,
                        nc,
                        1.0,
                        lg,
                        vocab,
                        xfc,
                        n,
                        1.0,
                        dwcls,
                        dim,
                    )
                },
            );
            let total = t.elapsed().as_secs_f64() * 1e3;
            times[0] += dx_ms;
            times[2] += (total - dx_ms).max(0.0);
        }
        c0 += nc;
    }
    loss
}

/// One token's cross-entropy from its logits row `[V]`: returns `logsumexp − row[target]`;
/// with `grad`, overwrites the row with `(softmax − onehot(target))·scale`.
pub fn softmax_ce_row(row: &mut [f32], target: usize, grad: bool, scale: f32) -> f64 {
    let max = max_of(row);
    let target_logit = row[target];
    let sum = if grad {
        let sum = exp_shifted(row, max);
        scale_in_place(row, scale / sum);
        row[target] -= scale;
        sum
    } else {
        sum_exp_shifted(row, max)
    };
    (sum as f64).ln() + max as f64 - target_logit as f64
}

/// Independent accumulators per reduction, so that the loops vectorise without reordering
/// a single floating-point chain.
const LANES: usize = 16;

multiversion! {
    /// Largest element (−∞ for an empty slice).
    pub fn max_of(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a = a.max(v);
            }
        }
        let tail = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        acc.iter().fold(tail, |m, &v| m.max(v))
    }
}

multiversion! {
    /// `x ← e^(x − shift)` in place; returns the sum of the new values.
    pub fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
                *v = exp_approx(*v - shift);
                *a += *v;
            }
        }
        let mut tail = 0.0;
        for v in chunks.into_remainder() {
            *v = exp_approx(*v - shift);
            tail += *v;
        }
        acc.iter().sum::<f32>() + tail
    }
}

multiversion! {
    /// `Σ e^(x − shift)` without writing.
    pub fn sum_exp_shifted(x: &[f32], shift: f32) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += exp_approx(v - shift);
            }
        }
        let tail: f32 = chunks
            .remainder()
            .iter()
            .map(|&v| exp_approx(v - shift))
            .sum();
        acc.iter().sum::<f32>() + tail
    }
}

multiversion! {
    /// `Σ a⊙b`.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut ca = a.chunks_exact(LANES);
        let mut cb = b.chunks_exact(LANES);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
                *s += p * q;
            }
        }
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(p, q)| p * q)
            .sum();
        acc.iter().sum::<f32>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..len).map(|_| r.next_f32() * 2.0 - 1.0).collect()
    }

    #[test]
    fn exp_approx_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp_approx(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_approx(0.0), 1.0);
        assert!(exp_approx(-1000.0) < 1e-37);
        assert!(exp_approx(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn silu_and_its_derivative() {
        for i in -80..80 {
            let x = i as f64 * 0.25;
            let s = 1.0 / (1.0 + (-x).exp());
            assert!((silu(x as f32) as f64 - x * s).abs() < 1e-6 * (1.0 + x.abs()));
            let h = 1e-4;
            let fd = ((x + h) / (1.0 + (-(x + h)).exp()) - (x - h) / (1.0 + (-(x - h)).exp()))
                / (2.0 * h);
            assert!((silu_grad(x as f32) as f64 - fd).abs() < 1e-5, "{x}");
        }
    }

    #[test]
    fn embedding_pair_is_gather_and_scatter_add() {
        let (v, d) = (5, 3);
        let emb: Vec<f32> = (0..v * d).map(|i| i as f32).collect();
        let toks = [4u32, 0, 4, 2];
        let mut x = vec![0.0; d * 4];
        embedding_fwd(&mut x, &emb, &toks, d);
        for (t, &tok) in toks.iter().enumerate() {
            for c in 0..d {
                assert_eq!(x[c * 4 + t], (tok as usize * d + c) as f32);
            }
        }
        let mut demb = vec![0.0; v * d];
        let dx: Vec<f32> = (0..d * 4).map(|i| i as f32 + 1.0).collect();
        embedding_bwd(&mut demb, &dx, &toks, d);
        // Token 4 appears at columns 0 and 2: its row gets both columns.
        for c in 0..d {
            assert_eq!(demb[4 * d + c], dx[c * 4] + dx[c * 4 + 2]);
            assert_eq!(demb[c], dx[c * 4 + 1]);
            assert_eq!(demb[d + c], 0.0);
        }
    }

    /// f64 RMSNorm of one column, straight from the definition.
    fn rms_col(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + eps).sqrt();
        x.iter().zip(g).map(|(v, gc)| gc * v * r).collect()
    }

    #[test]
    fn rmsnorm_forward_and_backward_match_finite_differences() {
        let (c, n, eps) = (13, 6, 1e-5f32);
        let x = rand_vec(c * n, 1);
        let g: Vec<f32> = rand_vec(c, 2).iter().map(|v| 1.0 + v).collect();
        let dy = rand_vec(c * n, 3);
        let mut out = vec![0.0; c * n];
        let mut inv = vec![0.0; n];
        rmsnorm_fwd(&mut out, &mut inv, &x, &g, eps);
        let g64: Vec<f64> = g.iter().map(|&v| v as f64).collect();
        let col =
            |x: &[f32], t: usize| -> Vec<f64> { (0..c).map(|i| x[i * n + t] as f64).collect() };
        for t in 0..n {
            let want = rms_col(&col(&x, t), &g64, eps as f64);
            for i in 0..c {
                assert!((out[i * n + t] as f64 - want[i]).abs() < 1e-5);
            }
        }
        // Loss = Σ dy ⊙ y; its gradients by central differences in f64.
        let loss = |x: &[f64], g: &[f64]| -> f64 {
            let mut s = 0.0;
            for t in 0..n {
                let xc: Vec<f64> = (0..c).map(|i| x[i * n + t]).collect();
                let y = rms_col(&xc, g, eps as f64);
                for i in 0..c {
                    s += y[i] * dy[i * n + t] as f64;
                }
            }
            s
        };
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mut dx = vec![0.5f32; c * n]; // accumulates onto what is there
        let mut dg = vec![0.25f32; c];
        let mut scratch = vec![0.0; 2 * n];
        rmsnorm_bwd(&mut dx, &mut dg, &dy, &x, &g, eps, &mut scratch);
        let h = 1e-6;
        for i in 0..c * n {
            let (mut p, mut m) = (x64.clone(), x64.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&p, &g64) - loss(&m, &g64)) / (2.0 * h);
            assert!(
                (dx[i] as f64 - 0.5 - fd).abs() < 1e-4 * (1.0 + fd.abs()),
                "dx[{i}]"
            );
        }
        for i in 0..c {
            let (mut p, mut m) = (g64.clone(), g64.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&x64, &p) - loss(&x64, &m)) / (2.0 * h);
            assert!(
                (dg[i] as f64 - 0.25 - fd).abs() < 1e-4 * (1.0 + fd.abs()),
                "dg[{i}]"
            );
        }
    }

    #[test]
    fn rope_matches_run_c_and_backward_is_transpose() {
        let (heads, hd, b, s) = (3, 8, 2, 5);
        let (rows, n) = (heads * hd, b * s);
        let rope = Rope::new(hd, 16, 10000.0);
        let x = rand_vec(rows * n, 7);
        let mut y = x.clone();
        rope_fwd(&mut y, &rope, n, s);
        // run.c: for each i (even) in the q vector of one token at position pos.
        for t in 0..n {
            let pos = t % s;
            for i in (0..rows).step_by(2) {
                let head_dim = i % hd;
                let freq = 1.0f32 / 10000f32.powf(head_dim as f32 / hd as f32);
                let val = pos as f32 * freq;
                let (fcr, fci) = (val.cos(), val.sin());
                let (v0, v1) = (x[i * n + t], x[(i + 1) * n + t]);
                assert!((y[i * n + t] - (v0 * fcr - v1 * fci)).abs() < 1e-6);
                assert!((y[(i + 1) * n + t] - (v0 * fci + v1 * fcr)).abs() < 1e-6);
            }
        }
        // <R x, z> = <x, Rᵀ z>
        let z = rand_vec(rows * n, 8);
        let mut rz = z.clone();
        rope_bwd(&mut rz, &rope, n, s);
        let a: f64 = y.iter().zip(&z).map(|(p, q)| *p as f64 * *q as f64).sum();
        let bb: f64 = x.iter().zip(&rz).map(|(p, q)| *p as f64 * *q as f64).sum();
        assert!((a - bb).abs() < 1e-5, "{a} {bb}");
    }

    #[test]
    fn classifier_ce_matches_naive_for_any_chunking() {
        let (d, v, n) = (7, 23, 9);
        let xf = rand_vec(d * n, 11);
        let w = rand_vec(v * d, 12);
        let targets: Vec<u32> = (0..n as u32).map(|t| (t * 5 + 3) % v as u32).collect();
        let scale = 0.37f32;
        // Naive f64: logits, loss, dlogits, then dx and dW by their definitions.
        let mut want_loss = 0.0;
        let mut dlog = vec![0.0f64; n * v];
        for t in 0..n {
            let lg: Vec<f64> = (0..v)
                .map(|r| {
                    (0..d)
                        .map(|c| w[r * d + c] as f64 * xf[c * n + t] as f64)
                        .sum()
                })
                .collect();
            let m = lg.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = lg.iter().map(|l| (l - m).exp()).sum();
            want_loss += z.ln() + m - lg[targets[t] as usize];
            for r in 0..v {
                let p = (lg[r] - m).exp() / z;
                dlog[t * v + r] =
                    scale as f64 * (p - if r == targets[t] as usize { 1.0 } else { 0.0 });
            }
        }
        for chunk in [1, 4, 9, 100] {
            let mut logits = vec![0.0; chunk.min(n) * v];
            let mut dxf = vec![f32::NAN; d * n];
            let mut dw = vec![1.0f32; v * d];
            let mut times = [0.0; 3];
            let loss = classifier_ce(
                &xf,
                &w,
                &targets,
                d,
                chunk,
                &mut logits,
                scale,
                Some(ClassifierGrads {
                    dxf: &mut dxf,
                    dwcls: &mut dw,
                }),
                &mut times,
            );
            assert!(
                (loss - want_loss).abs() < 1e-5 * want_loss,
                "{loss} {want_loss}"
            );
            for c in 0..d {
                for t in 0..n {
                    let want: f64 = (0..v).map(|r| w[r * d + c] as f64 * dlog[t * v + r]).sum();
                    assert!((dxf[c * n + t] as f64 - want).abs() < 1e-5, "dxf {c} {t}");
                }
            }
            for r in 0..v {
                for c in 0..d {
                    let want: f64 = 1.0
                        + (0..n)
                            .map(|t| dlog[t * v + r] * xf[c * n + t] as f64)
                            .sum::<f64>();
                    assert!((dw[r * d + c] as f64 - want).abs() < 1e-5, "dw {r} {c}");
                }
            }
            let loss_only = classifier_ce(
                &xf,
                &w,
                &targets,
                d,
                chunk,
                &mut logits,
                scale,
                None,
                &mut times,
            );
            assert!((loss_only - want_loss).abs() < 1e-5 * want_loss);
        }
    }
}
