//! One-token-at-a-time forward pass with a KV cache: llama2.c run.c's `forward`, generalised
//! to `head_dim ≠ dim / n_heads`.
//!
//! Per token at position `pos` (shapes for one token; D dim, QD = NH·HD, KVD = NKV·HD, H hidden):
//! ```text
//! x[D] = tok_embeddings[token]
//! per layer l:
//!   xn = rmsnorm(x) · g_att                       eps 1e-5 (the config's norm_eps)
//!   q[QD], k[KVD], v[KVD] = Wq·xn, Wk·xn, Wv·xn   one stacked matvec
//!   (q/k norm models, Qwen3: each head of q and k ← rmsnorm(head) · g_q / g_k)
//!   RoPE on pairs (i, i+1) of q and k: θ = pos · 1/θ_base^((i mod HD)/HD)
//!   k, v → cache[l, pos]
//!   per head h (kv head h / (NH/NKV)): softmax over t ≤ pos of q·k_t/√HD, weighted sum of v_t
//!   x += Wo · attn
//!   xn = rmsnorm(x) · g_ffn ; h1, h3 = W1·xn, W3·xn ; x += W2 · (silu(h1) ⊙ h3)
//! logits[V] = Wcls · (rmsnorm(x) · g_final)       Wcls = tok_embeddings when tied
//! ```
//! Threads: every matrix–vector product and the attention heads are split into static shares
//! that a [`Team`] runs (the caller plus helpers, as many threads as the rayon pool has),
//! which picks each of the ~30 short stages of a token up faster than rayon's sleeping
//! workers and, when the cores are busy with other work, lets the caller finish a stage
//! alone rather than wait for a descheduled helper; see [`super::team`].
//!
//! Element-wise operations follow run.c's expression order (`w · (s · x)`, `x · (1/(1+e^−x))`,
//! `score / √HD`); only the dot products are summed in a different (SIMD) order.

use super::matvec::{dot, stacked_range};
use super::team::{share, SharedOut, Team};
use crate::model::{Config, LayerTensor, Params};

/// Attention with fewer multiply-adds than this (over all heads) runs on the calling thread.
const PARALLEL_ATTENTION_MIN_WORK: usize = 1 << 14;

/// Matrix–vector products with fewer multiply-adds than this run on the calling thread.
const PARALLEL_MATVEC_MIN_WORK: usize = 1 << 15;

/// `out = [W₀; W₁; …] · x` (outputs concatenated), the rows split statically over the team.
fn team_matvec(team: &Team, out: &mut [f32], x: &[f32], mats: &[&[f32]]) {
    let (rows, n) = (out.len(), x.len());
    let total: usize = mats.iter().map(|m| m.len()).sum();
    assert!(
        n > 0 && total == rows * n && mats.iter().all(|m| m.len() % n == 0),
        "matvec shapes: out {rows} rows, x {n}, matrices {:?}",
        mats.iter().map(|m| m.len()).collect::<Vec<_>>()
    );
    if team.size() == 1 || rows * n < PARALLEL_MATVEC_MIN_WORK {
        stacked_range(out, 0, x, mats);
        return;
    }
    let o = SharedOut(out.as_mut_ptr());
    let s = team.shares();
    team.run(&|j| {
        let (lo, hi) = share(j, s, rows);
        // SAFETY: shares write disjoint row ranges of `out`, which outlives the stage.
        let part = unsafe { std::slice::from_raw_parts_mut(o.ptr().add(lo), hi - lo) };
        stacked_range(part, lo, x, mats);
    });
}

/// Inference state over borrowed parameters: activations, KV cache and logits, all allocated
/// once in [`Transformer::new`] (the KV cache is `2·L·seq_len·KVD` f32).
pub struct Transformer<'a> {
    params: &'a Params,
    cfg: Config,
    /// Residual stream `[D]`.
    x: Vec<f32>,
    /// Normalised input of a block `[D]`.
    xn: Vec<f32>,
    /// q, k, v of the current token, concatenated `[QD + 2·KVD]`.
    qkv: Vec<f32>,
    /// Attention output, heads concatenated `[QD]`.
    attn: Vec<f32>,
    /// Output of Wo or W2 `[D]`.
    proj: Vec<f32>,
    /// h1 then h3 `[2·H]`; the gate overwrites h1.
    h13: Vec<f32>,
    /// Attention weights per head `[NH, seq_len]`.
    scores: Vec<f32>,
    /// `[L, seq_len, KVD]`
    key_cache: Vec<f32>,
    /// `[L, seq_len, KVD]`
    value_cache: Vec<f32>,
    logits: Vec<f32>,
    /// The threads that run each stage (as many as the rayon pool has).
    team: Team,
    /// RoPE inverse frequencies per pair `[HD/2]`: `1/θ_base^(2j/HD)` in f32, as run.c.
    inv_freq: Vec<f32>,
    /// `(cos, sin)` of the current position per pair `[HD/2]`.
    rope_cos_sin: Vec<(f32, f32)>,
}

/// rmsnorm as run.c: `o = w · (x / √(mean(x²) + eps))`, sum of squares in order.
fn rmsnorm(o: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let mut ss = 0f32;
    for v in x {
        ss += v * v;
    }
    ss /= x.len() as f32;
    ss += eps;
    let s = 1.0 / ss.sqrt();
    for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
        *o = w * (s * x);
    }
}

/// rmsnorm in place (run.c's final norm `rmsnorm(x, x, w)`).
fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let mut ss = 0f32;
    for v in x.iter() {
        ss += v * v;
    }
    ss /= x.len() as f32;
    ss += eps;
    let s = 1.0 / ss.sqrt();
    for (x, w) in x.iter_mut().zip(w) {
        *x = w * (s * *x);
    }
}

/// Rotates the pairs `(v[i], v[i+1])` of every head by `pos · inv_freq[(i mod HD)/2]`.
fn rope(v: &mut [f32], cos_sin: &[(f32, f32)]) {
    let hd = 2 * cos_sin.len();
    for head in v.chunks_exact_mut(hd) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cos_sin) {
            let (v0, v1) = (pair[0], pair[1]);
            pair[0] = v0 * c - v1 * s;
            pair[1] = v0 * s + v1 * c;
        }
    }
}

/// Causal attention of one query head over cached positions `0..=pos`.
/// `q`, `out`: `[HD]`; `scores`: `[≥ pos+1]`; caches: this layer's `[seq_len, KVD]`, read at
/// kv head offset `kv_off`.
#[allow(clippy::too_many_arguments)]
fn attend_head(
    q: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
    keys: &[f32],
    values: &[f32],
    kvd: usize,
    kv_off: usize,
    pos: usize,
) {
    let hd = q.len();
    let scale = (hd as f32).sqrt();
    let scores = &mut scores[..=pos];
    for (t, s) in scores.iter_mut().enumerate() {
        let k = &keys[t * kvd + kv_off..t * kvd + kv_off + hd];
        *s = dot(q, k) / scale;
    }
    super::sampler::softmax(scores);
    out.fill(0.0);
    for (t, &a) in scores.iter().enumerate() {
        let v = &values[t * kvd + kv_off..t * kvd + kv_off + hd];
        for (o, v) in out.iter_mut().zip(v) {
            *o += a * v;
        }
    }
}

/// `x = x / rms(x) · g` in place (one head of q or k).
fn head_rmsnorm(x: &mut [f32], g: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let s = 1.0 / (ss + eps).sqrt();
    for (v, w) in x.iter_mut().zip(g) {
        *v = w * (s * *v);
    }
}

impl<'a> Transformer<'a> {
    pub fn new(params: &'a Params) -> Transformer<'a> {
        let c = params.config().clone();
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let cache = c.n_layers * c.seq_len * kvd;
        let inv_freq = c.rope_inv_freq();
        Transformer {
            params,
            x: vec![0.0; c.dim],
            xn: vec![0.0; c.dim],
            qkv: vec![0.0; qd + 2 * kvd],
            attn: vec![0.0; qd],
            proj: vec![0.0; c.dim],
            h13: vec![0.0; 2 * c.hidden_dim],
            scores: vec![0.0; c.n_heads * c.seq_len],
            key_cache: vec![0.0; cache],
            value_cache: vec![0.0; cache],
            logits: vec![0.0; c.vocab_size],
            inv_freq,
            rope_cos_sin: vec![(0.0, 0.0); c.head_dim / 2],
            team: Team::new(rayon::current_num_threads()),
            cfg: c,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The counters of the thread team that runs the forward pass.
    pub fn team_stats(&self) -> super::team::TeamStats {
        self.team.stats()
    }

    /// The logits of the last [`forward`](Self::forward) call `[V]`.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Runs `token` at position `pos` and returns the next-token logits `[V]`.
    ///
    /// Positions must be fed in order from 0 (each call reads the cache of positions
    /// `0..pos` and writes position `pos`); feeding `pos = 0` again starts a new sequence.
    ///
    /// # Panics
    /// If `token ≥ vocab_size` or `pos ≥ seq_len` (callers validate user input first).
    pub fn forward(&mut self, token: u32, pos: usize) -> &[f32] {
        let c = &self.cfg;
        assert!(
            (token as usize) < c.vocab_size && pos < c.seq_len,
            "forward: token {token} (vocab {}) at position {pos} (seq_len {})",
            c.vocab_size,
            c.seq_len
        );
        self.forward_team(token as usize, pos);
        &self.logits
    }

    fn forward_team(&mut self, token: usize, pos: usize) {
        let p = self.params;
        let c = &self.cfg;
        let (d, hd, qd, kvd, h) = (c.dim, c.head_dim, c.q_dim(), c.kv_dim(), c.hidden_dim);
        let (seq, eps, group) = (c.seq_len, c.norm_eps, c.group());
        self.x
            .copy_from_slice(&p.tok_embeddings()[token * d..(token + 1) * d]);

        // cos/sin of this position for each pair (run.c computes them per pair and head).
        for (cs, &f) in self.rope_cos_sin.iter_mut().zip(&self.inv_freq) {
            let val = pos as f32 * f;
            *cs = (val.cos(), val.sin());
        }
        let cos_sin = &self.rope_cos_sin[..];

        for l in 0..c.n_layers {
            use LayerTensor::*;
            rmsnorm(&mut self.xn, &self.x, p.layer(l, AttentionNorm), eps);
            team_matvec(
                &self.team,
                &mut self.qkv,
                &self.xn,
                &[p.layer(l, Wq), p.layer(l, Wk), p.layer(l, Wv)],
            );
            let (q, kv) = self.qkv.split_at_mut(qd);
            let (k, v) = kv.split_at_mut(kvd);
            if c.qk_norm {
                // Qwen3: per-head RMSNorm of q and k before RoPE.
                let (gq, gk) = (
                    &p.data[p.layout.q_norm_layer(l)],
                    &p.data[p.layout.k_norm_layer(l)],
                );
                q.chunks_mut(hd).for_each(|x| head_rmsnorm(x, gq, eps));
                k.chunks_mut(hd).for_each(|x| head_rmsnorm(x, gk, eps));
            }
            rope(q, cos_sin);
            rope(k, cos_sin);
            let layer_off = l * seq * kvd;
            let keys = &mut self.key_cache[layer_off..layer_off + seq * kvd];
            let values = &mut self.value_cache[layer_off..layer_off + seq * kvd];
            keys[pos * kvd..(pos + 1) * kvd].copy_from_slice(k);
            values[pos * kvd..(pos + 1) * kvd].copy_from_slice(v);
            let (keys, values, q) = (&*keys, &*values, &*q);

            let nh = c.n_heads;
            let attend = |hi: usize, out: &mut [f32], scores: &mut [f32]| {
                let qh = &q[hi * hd..(hi + 1) * hd];
                attend_head(qh, out, scores, keys, values, kvd, (hi / group) * hd, pos);
            };
            if (pos + 1) * qd * 2 < PARALLEL_ATTENTION_MIN_WORK || self.team.size() == 1 {
                for (hi, (out, scores)) in self
                    .attn
                    .chunks_mut(hd)
                    .zip(self.scores.chunks_mut(seq))
                    .enumerate()
                {
                    attend(hi, out, scores);
                }
            } else {
                let (attn, scores) = (
                    SharedOut(self.attn.as_mut_ptr()),
                    SharedOut(self.scores.as_mut_ptr()),
                );
                let s = self.team.shares();
                self.team.run(&|j| {
                    let (h0, h1) = share(j, s, nh);
                    for hi in h0..h1 {
                        // SAFETY: head hi's `[HD]` output and `[seq_len]` scores rows are
                        // written by the share that holds hi only; both buffers outlive
                        // the stage.
                        let (out, sc) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(attn.ptr().add(hi * hd), hd),
                                std::slice::from_raw_parts_mut(scores.ptr().add(hi * seq), seq),
                            )
                        };
                        attend(hi, out, sc);
                    }
                });
            }

            team_matvec(&self.team, &mut self.proj, &self.attn, &[p.layer(l, Wo)]);
            for (x, o) in self.x.iter_mut().zip(&self.proj) {
                *x += o;
            }

            rmsnorm(&mut self.xn, &self.x, p.layer(l, FfnNorm), eps);
            team_matvec(
                &self.team,
                &mut self.h13,
                &self.xn,
                &[p.layer(l, W1), p.layer(l, W3)],
            );
            let (h1, h3) = self.h13.split_at_mut(h);
            for (a, b) in h1.iter_mut().zip(h3.iter()) {
                let mut val = *a;
                val *= 1.0 / (1.0 + (-val).exp());
                val *= b;
                *a = val;
            }
            team_matvec(&self.team, &mut self.proj, h1, &[p.layer(l, W2)]);
            for (x, o) in self.x.iter_mut().zip(&self.proj) {
                *x += o;
            }
        }

        rmsnorm_inplace(&mut self.x, p.norm(), eps);
        team_matvec(&self.team, &mut self.logits, &self.x, &[p.output()]);
    }
}
