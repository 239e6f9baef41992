//! The kernel contract: the six per-layer kernels of the reference Neural Engine trainer
//! (fwdAttn, fwdFFN, ffnBwd, sdpaBwd1, sdpaBwd2, qkvBwd) as one narrow trait, [`Kernels`],
//! implemented by the fp32 `cpu` backend ([`cpu`]), the plain-loop oracle ([`reference`])
//! and the `ane`/`ane-sim` backends in [`crate::ane`]. Everything around the six —
//! embedding, RMSNorm backward, RoPE backward, classifier and cross-entropy, the dW GEMMs —
//! is written once above this seam ([`ops`], called by `train::step`).
//!
//! The seam has one way in. A backend is built for one [`Spec`] (dims, batch, seq, layers,
//! RMSNorm epsilon, RoPE table) and its methods take none of these per call. Weights reach
//! every backend the same way, as per-call views of one layer ([`AttnWeights`],
//! [`FfnWeights`]), with [`Kernels::prepare`] announcing each new weights version. Every call
//! goes through [`Checked`], which checks the slices and the layer index against the spec
//! once for all backends and hands the backend a [`ShapesChecked`] proof.
//!
//! Layout: every activation is a channel-first matrix `[C, N]` (row-major, `a[c·N + t]`),
//! N = B·S token columns, sequence b in columns `b·S..(b+1)·S` — exactly the Neural Engine's
//! `[1, C, 1, S]` surface order. Weights are llama2.c's `W[out, in]`, so `Y = W·X`.
//! D = dim, H = hidden, QD = n_heads·head_dim, KVD = n_kv_heads·head_dim.
//!
//! Which backward undoes which forward (shapes of every input; `train::step` wires them):
//!
//! | forward | its outputs | undone by | inputs of the backward | backward outputs |
//! |---|---|---|---|---|
//! | `fwd_ffn`: x2n = rmsnorm(x2)·g; h1 = W1·x2n; h3 = W3·x2n; gate = silu(h1)⊙h3; f = W2·gate | x2n `[D,N]`, h1 h3 gate `[H,N]`, f `[D,N]` | `ffn_bwd` | dy `[D,N]`, h1 h3 `[H,N]`, W1 W3 `[H,D]`, W2 `[D,H]` | dx2n `[D,N]`, dh1 dh3 `[H,N]` |
//! | … its RMSNorm | | `ops::rmsnorm_bwd` (CPU) | dx2n, x2 `[D,N]`, g `[D]` | adds into dx2 `[D,N]`, dg `[D]` |
//! | `fwd_attn`: o = Wo·attn | attn `[QD,N]`, o `[D,N]` | `sdpa_bwd1` (dattn = Woᵀ·dx2 fused) | dx2 `[D,N]`, q `[QD,N]`, k v `[KVD,N]`, Wo `[D,QD]` (of the attention weights) | dv `[KVD,N]`, dP P `[B,NH,S,S]` |
//! | `fwd_attn`: P = causal softmax(qᵀk/√hd) | (P recomputed, not a tap) | `sdpa_bwd2` | P dP `[B,NH,S,S]`, q `[QD,N]`, k `[KVD,N]` | dq `[QD,N]`, dk `[KVD,N]` (post-RoPE) |
//! | `fwd_attn`: RoPE(q), RoPE(k) | q `[QD,N]`, k `[KVD,N]` | `ops::rope_bwd` (CPU, in place) | dq, dk | dq, dk (pre-RoPE) |
//! | `fwd_attn` (Qwen3): q_h, k_h = rmsnorm(q_h)·q_norm, rmsnorm(k_h)·k_norm per head | (pre-norm q, k recomputed as Wq·xn, Wk·xn, not taps) | `ops::head_rmsnorm_bwd` (CPU) | dq, dk post-norm, pre-norm q, k, q_norm k_norm `[HD]` | dq `[QD,N]`, dk `[KVD,N]` (pre-norm), dq_norm dk_norm `[HD]` |
//! | `fwd_attn`: q,k,v = Wq,Wk,Wv·xn | xn `[D,N]`, v `[KVD,N]` | `qkv_bwd` | dq `[QD,N]`, dk dv `[KVD,N]`, Wq `[QD,D]`, Wk Wv `[KVD,D]` | dxn `[D,N]` |
//! | `fwd_attn`: xn = rmsnorm(x)·g | | `ops::rmsnorm_bwd` (CPU) | dxn, x `[D,N]`, g `[D]` | adds into dx `[D,N]`, dg `[D]` |
//!
//! Weight gradients are not kernels: `dW += dY·Xᵀ` for each projection from the taps (xn,
//! x2n, attn, gate) and the backward outputs (dq, dk, dv, dh1, dh3, dx2, dy), on the CPU.
//!
//! Attention probabilities and their gradients are `[B, NH, S, S]` (query row, key column,
//! zero above the diagonal). RoPE is applied inside fwdAttn (the q, k taps are post-RoPE,
//! and with Qwen3's per-head q/k norms post-norm)
//! with llama2.c's pairs `(2j, 2j+1)` of each head at position `t mod S`. GQA: kv head `j`
//! serves query heads `j·G..(j+1)·G`, G = NH/NKV (llama2.c's `h / (n_heads / n_kv_heads)`);
//! dk and dv of a kv head are summed over its G query heads. Every kernel overwrites its
//! outputs (never accumulates into them).

pub mod blas;
pub mod cpu;
pub mod gemm;
pub mod ops;
pub mod reference;

use crate::model::{Config, LayerTensor, Params};
use anyhow::{ensure, Result};

/// Shapes of one kernel call: the model's dimensions and the batch geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub dim: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub batch: usize,
    pub seq: usize,
}

impl Dims {
    pub fn new(c: &Config, batch: usize, seq: usize) -> Dims {
        Dims {
            dim: c.dim,
            hidden: c.hidden_dim,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            batch,
            seq,
        }
    }
    /// Token columns N = B·S.
    pub fn n(&self) -> usize {
        self.batch * self.seq
    }
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// Elements of the `[B, NH, S, S]` probability tensor.
    pub fn probs_len(&self) -> usize {
        self.batch * self.n_heads * self.seq * self.seq
    }
}

/// What a backend is built for, fixed at construction: the shapes of every call, the number
/// of layers, RMSNorm's epsilon and the RoPE table (from the config's theta). The kernel
/// methods take none of these; [`Checked`] holds every call to them.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub dims: Dims,
    pub layers: usize,
    pub eps: f32,
    pub rope_theta: f32,
    /// `[seq, head_dim/2]`, as llama2.c computes it (with the config's RoPE scaling, if any).
    pub rope: ops::Rope,
}

impl Spec {
    /// The spec of `c` at `batch` sequences of `seq` tokens per call.
    pub fn new(c: &Config, batch: usize, seq: usize) -> Spec {
        Spec {
            dims: Dims::new(c, batch, seq),
            layers: c.n_layers,
            eps: c.norm_eps,
            rope_theta: c.rope_theta,
            rope: ops::Rope::for_config(c, seq),
        }
    }

    /// One line naming the geometry, for error messages.
    pub fn describe(&self) -> String {
        let d = &self.dims;
        format!(
            "dim {}, hidden {}, {} heads ({} kv) of {}, {} layers, batch {} × seq {}, eps {:e}, \
             RoPE theta {}",
            d.dim,
            d.hidden,
            d.n_heads,
            d.n_kv_heads,
            d.head_dim,
            self.layers,
            d.batch,
            d.seq,
            self.eps,
            self.rope_theta
        )
    }

    /// Head geometry of the attention kernels: whole GQA groups, RoPE pairs, a sequence.
    fn check_heads(&self, kernel: &str) -> Result<()> {
        let d = &self.dims;
        ensure!(
            d.n_kv_heads > 0
                && d.n_heads.is_multiple_of(d.n_kv_heads)
                && d.head_dim.is_multiple_of(2)
                && d.seq > 0,
            "{kernel}: invalid dims {d:?}"
        );
        Ok(())
    }

    fn check_layer(&self, kernel: &str, layer: usize) -> Result<()> {
        ensure!(
            layer < self.layers,
            "{kernel}: layer {layer} of a {}-layer model",
            self.layers
        );
        Ok(())
    }

    /// Every argument's length against the shape the contract gives it, as
    /// `(name, got, want)`; a mismatch names the geometry the backend was built for.
    fn check_lens(&self, kernel: &str, args: &[(&str, usize, usize)]) -> Result<()> {
        for &(what, got, want) in args {
            ensure!(
                got == want,
                "{kernel}: {what} has {got} elements, expected {want} (the backend was built for \
                 {})",
                self.describe()
            );
        }
        Ok(())
    }
}

/// The shape checks of the six kernels, written once, above the seam: [`Checked`] runs the
/// one for its kernel before the backend touches a slice (the `cpu` backend's loops index
/// through raw pointers).
impl Spec {
    fn check_fwd_attn(
        &self,
        layer: usize,
        x: &[f32],
        w: &AttnWeights,
        out: &AttnFwd,
    ) -> Result<()> {
        self.check_heads("fwd_attn")?;
        self.check_layer("fwd_attn", layer)?;
        let d = &self.dims;
        let (dim, n, qd, kvd) = (d.dim, d.n(), d.q_dim(), d.kv_dim());
        self.check_lens(
            "fwd_attn",
            &[
                ("x", x.len(), dim * n),
                ("g", w.g.len(), dim),
                ("wq", w.wq.len(), qd * dim),
                ("wk", w.wk.len(), kvd * dim),
                ("wv", w.wv.len(), kvd * dim),
                ("wo", w.wo.len(), dim * qd),
                ("xn", out.xn.len(), dim * n),
                ("q", out.q.len(), qd * n),
                ("k", out.k.len(), kvd * n),
                ("v", out.v.len(), kvd * n),
                ("attn", out.attn.len(), qd * n),
                ("o", out.o.len(), dim * n),
            ],
        )?;
        ensure!(
            w.q_norm.is_some() == w.k_norm.is_some(),
            "fwd_attn: q_norm and k_norm come together (got only one of them)"
        );
        if let (Some(qg), Some(kg)) = (w.q_norm, w.k_norm) {
            self.check_lens(
                "fwd_attn",
                &[
                    ("q_norm", qg.len(), d.head_dim),
                    ("k_norm", kg.len(), d.head_dim),
                ],
            )?;
        }
        ensure!(
            self.rope.head_dim == d.head_dim && self.rope.len() >= d.seq,
            "fwd_attn: RoPE table (head_dim {}, {} positions) does not cover head_dim {} × seq {}",
            self.rope.head_dim,
            self.rope.len(),
            d.head_dim,
            d.seq
        );
        Ok(())
    }

    fn check_fwd_ffn(&self, layer: usize, x2: &[f32], w: &FfnWeights, out: &FfnFwd) -> Result<()> {
        self.check_layer("fwd_ffn", layer)?;
        let d = &self.dims;
        let (dim, n, h) = (d.dim, d.n(), d.hidden);
        self.check_lens(
            "fwd_ffn",
            &[
                ("x2", x2.len(), dim * n),
                ("g", w.g.len(), dim),
                ("w1", w.w1.len(), h * dim),
                ("w2", w.w2.len(), dim * h),
                ("w3", w.w3.len(), h * dim),
                ("x2n", out.x2n.len(), dim * n),
                ("h1", out.h1.len(), h * n),
                ("h3", out.h3.len(), h * n),
                ("gate", out.gate.len(), h * n),
                ("f", out.f.len(), dim * n),
            ],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn check_ffn_bwd(
        &self,
        layer: usize,
        dy: &[f32],
        h1: &[f32],
        h3: &[f32],
        w: &FfnWeights,
        out: &FfnBwd,
    ) -> Result<()> {
        self.check_layer("ffn_bwd", layer)?;
        let d = &self.dims;
        let (dim, n, h) = (d.dim, d.n(), d.hidden);
        self.check_lens(
            "ffn_bwd",
            &[
                ("dy", dy.len(), dim * n),
                ("h1", h1.len(), h * n),
                ("h3", h3.len(), h * n),
                ("g", w.g.len(), dim),
                ("w1", w.w1.len(), h * dim),
                ("w2", w.w2.len(), dim * h),
                ("w3", w.w3.len(), h * dim),
                ("dx2n", out.dx2n.len(), dim * n),
                ("dh1", out.dh1.len(), h * n),
                ("dh3", out.dh3.len(), h * n),
            ],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn check_sdpa_bwd1(
        &self,
        layer: usize,
        dx2: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        w: &AttnWeights,
        out: &SdpaBwd1,
    ) -> Result<()> {
        self.check_heads("sdpa_bwd1")?;
        self.check_layer("sdpa_bwd1", layer)?;
        let d = &self.dims;
        let (dim, n, qd, kvd) = (d.dim, d.n(), d.q_dim(), d.kv_dim());
        self.check_lens(
            "sdpa_bwd1",
            &[
                ("dx2", dx2.len(), dim * n),
                ("q", q.len(), qd * n),
                ("k", k.len(), kvd * n),
                ("v", v.len(), kvd * n),
                ("g", w.g.len(), dim),
                ("wq", w.wq.len(), qd * dim),
                ("wk", w.wk.len(), kvd * dim),
                ("wv", w.wv.len(), kvd * dim),
                ("wo", w.wo.len(), dim * qd),
                ("dv", out.dv.len(), kvd * n),
                ("dp", out.dp.len(), d.probs_len()),
                ("probs", out.probs.len(), d.probs_len()),
            ],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn check_sdpa_bwd2(
        &self,
        layer: usize,
        probs: &[f32],
        dp: &[f32],
        q: &[f32],
        k: &[f32],
        out: &SdpaBwd2,
    ) -> Result<()> {
        self.check_heads("sdpa_bwd2")?;
        self.check_layer("sdpa_bwd2", layer)?;
        let d = &self.dims;
        let (n, qd, kvd) = (d.n(), d.q_dim(), d.kv_dim());
        self.check_lens(
            "sdpa_bwd2",
            &[
                ("probs", probs.len(), d.probs_len()),
                ("dp", dp.len(), d.probs_len()),
                ("q", q.len(), qd * n),
                ("k", k.len(), kvd * n),
                ("dq", out.dq.len(), qd * n),
                ("dk", out.dk.len(), kvd * n),
            ],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn check_qkv_bwd(
        &self,
        layer: usize,
        dq: &[f32],
        dk: &[f32],
        dv: &[f32],
        w: &AttnWeights,
        dxn: &[f32],
    ) -> Result<()> {
        self.check_layer("qkv_bwd", layer)?;
        let d = &self.dims;
        let (dim, n, qd, kvd) = (d.dim, d.n(), d.q_dim(), d.kv_dim());
        self.check_lens(
            "qkv_bwd",
            &[
                ("dq", dq.len(), qd * n),
                ("dk", dk.len(), kvd * n),
                ("dv", dv.len(), kvd * n),
                ("g", w.g.len(), dim),
                ("wq", w.wq.len(), qd * dim),
                ("wk", w.wk.len(), kvd * dim),
                ("wv", w.wv.len(), kvd * dim),
                ("wo", w.wo.len(), dim * qd),
                ("dxn", dxn.len(), dim * n),
            ],
        )
    }
}

/// Weights of the attention block of one layer (llama2.c orientation).
#[derive(Clone, Copy)]
pub struct AttnWeights<'a> {
    /// RMSNorm gain `[D]`.
    pub g: &'a [f32],
    /// `[QD, D]`
    pub wq: &'a [f32],
    /// `[KVD, D]`
    pub wk: &'a [f32],
    /// `[KVD, D]`
    pub wv: &'a [f32],
    /// `[D, QD]`
    pub wo: &'a [f32],
    /// Per-head q RMSNorm gain `[HD]` (Qwen3's q_norm), applied to each head of Wq·xn
    /// before RoPE; `None` for Llama.
    pub q_norm: Option<&'a [f32]>,
    /// Per-head k RMSNorm gain `[HD]` (Qwen3's k_norm); `None` for Llama.
    pub k_norm: Option<&'a [f32]>,
}

impl<'a> AttnWeights<'a> {
    /// Layer `l`'s attention weights in the parameter arena.
    pub fn of(p: &'a Params, l: usize) -> AttnWeights<'a> {
        let qk = p.config().qk_norm;
        AttnWeights {
            g: p.layer(l, LayerTensor::AttentionNorm),
            wq: p.layer(l, LayerTensor::Wq),
            wk: p.layer(l, LayerTensor::Wk),
            wv: p.layer(l, LayerTensor::Wv),
            wo: p.layer(l, LayerTensor::Wo),
            q_norm: qk.then(|| &p.data[p.layout.q_norm_layer(l)]),
            k_norm: qk.then(|| &p.data[p.layout.k_norm_layer(l)]),
        }
    }
}

/// Both weight blocks of one layer (for [`Kernels::upcoming`]).
#[derive(Clone, Copy)]
pub struct LayerViews<'a> {
    pub attn: AttnWeights<'a>,
    pub ffn: FfnWeights<'a>,
}

/// Weights of the feed-forward block of one layer.
#[derive(Clone, Copy)]
pub struct FfnWeights<'a> {
    /// RMSNorm gain `[D]`.
    pub g: &'a [f32],
    /// `[H, D]`
    pub w1: &'a [f32],
    /// `[D, H]`
    pub w2: &'a [f32],
    /// `[H, D]`
    pub w3: &'a [f32],
}

impl<'a> FfnWeights<'a> {
    /// Layer `l`'s feed-forward weights in the parameter arena.
    pub fn of(p: &'a Params, l: usize) -> FfnWeights<'a> {
        FfnWeights {
            g: p.layer(l, LayerTensor::FfnNorm),
            w1: p.layer(l, LayerTensor::W1),
            w2: p.layer(l, LayerTensor::W2),
            w3: p.layer(l, LayerTensor::W3),
        }
    }
}

/// fwdAttn outputs: `o` and the taps the backward pass needs.
pub struct AttnFwd<'a> {
    /// rmsnorm(x)·g `[D, N]`
    pub xn: &'a mut [f32],
    /// post-RoPE queries `[QD, N]`
    pub q: &'a mut [f32],
    /// post-RoPE keys `[KVD, N]`
    pub k: &'a mut [f32],
    /// values `[KVD, N]`
    pub v: &'a mut [f32],
    /// attention output before Wo `[QD, N]`
    pub attn: &'a mut [f32],
    /// Wo·attn `[D, N]`
    pub o: &'a mut [f32],
}

/// fwdFFN outputs.
pub struct FfnFwd<'a> {
    /// rmsnorm(x2)·g `[D, N]`
    pub x2n: &'a mut [f32],
    /// W1·x2n `[H, N]`
    pub h1: &'a mut [f32],
    /// W3·x2n `[H, N]`
    pub h3: &'a mut [f32],
    /// silu(h1)⊙h3 `[H, N]`
    pub gate: &'a mut [f32],
    /// W2·gate `[D, N]`
    pub f: &'a mut [f32],
}

/// ffnBwd outputs.
pub struct FfnBwd<'a> {
    /// W1ᵀ·dh1 + W3ᵀ·dh3 `[D, N]`
    pub dx2n: &'a mut [f32],
    /// `[H, N]`
    pub dh1: &'a mut [f32],
    /// `[H, N]`
    pub dh3: &'a mut [f32],
}

/// sdpaBwd1 outputs.
pub struct SdpaBwd1<'a> {
    /// dv `[KVD, N]` (summed over the query heads of each kv head)
    pub dv: &'a mut [f32],
    /// dP `[B, NH, S, S]`
    pub dp: &'a mut [f32],
    /// P `[B, NH, S, S]`, recomputed from q, k (zero above the diagonal)
    pub probs: &'a mut [f32],
}

/// sdpaBwd2 outputs (gradients w.r.t. the post-RoPE q and k).
pub struct SdpaBwd2<'a> {
    /// `[QD, N]`
    pub dq: &'a mut [f32],
    /// `[KVD, N]`
    pub dk: &'a mut [f32],
}

/// Counters a backend reports for the efficiency report.
#[derive(Clone, Debug, Default)]
pub struct BackendStats {
    /// Programs compiled by this process (Neural Engine backends).
    pub compiles: u64,
    pub compile_ms: f64,
    /// Time spent converting and copying surfaces (Neural Engine backends).
    pub io_ms: f64,
    /// Weight surfaces written from the call's views, one per (kernel, layer) and weights
    /// version (the dynamic Neural Engine pipeline).
    pub weight_stages: u64,
    /// Time spent in kernels that fell back to the CPU (Neural Engine backends).
    pub fallback_cpu_ms: f64,
    /// Per program type (Neural Engine backends): evaluations and their time.
    pub programs: Vec<ProgramStat>,
    /// Whether program times are measured on the device (`ane`) rather than interpreted by
    /// the simulator, whose Neural Engine figures are then the cost model's (`est_ms`).
    pub measured: bool,
    /// Contract kernels running on the CPU after a refusal.
    pub on_cpu: Vec<&'static str>,
    /// Programs compiled on the background compile thread (static pipeline, rule C25).
    pub background_compiles: u64,
    /// Wall time the backend blocked waiting for background compiles.
    pub compile_waited_ms: f64,
    /// The device's estimate of the compile time in all (the simulator's cost model) and of
    /// what of it the Neural Engine's time line waited for (`ane::compile_queue::Timeline`).
    pub compile_est_ms: Option<f64>,
    pub compile_exposed_est_ms: Option<f64>,
}

/// One Neural Engine program type's counters.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProgramStat {
    pub name: &'static str,
    pub compiles: u64,
    pub compile_ms: f64,
    pub evals: u64,
    /// Wall time of the evaluations (on the simulator: its interpretation time).
    pub eval_ms: f64,
    /// The simulator's cost-model estimate of the Neural Engine time; `None` on hardware.
    pub est_ms: Option<f64>,
    /// Surface packing and unpacking (f32 ↔ fp16) for this program.
    pub io_ms: f64,
}

impl BackendStats {
    /// The counters accumulated since `earlier` (a snapshot of the same backend).
    pub fn since(&self, earlier: &BackendStats) -> BackendStats {
        let mut d = self.clone();
        d.compiles -= earlier.compiles.min(d.compiles);
        d.weight_stages -= earlier.weight_stages.min(d.weight_stages);
        d.compile_ms -= earlier.compile_ms;
        d.io_ms -= earlier.io_ms;
        d.fallback_cpu_ms -= earlier.fallback_cpu_ms;
        d.background_compiles -= earlier.background_compiles.min(d.background_compiles);
        d.compile_waited_ms -= earlier.compile_waited_ms;
        if let (Some(a), Some(b)) = (d.compile_est_ms.as_mut(), earlier.compile_est_ms) {
            *a -= b;
        }
        if let (Some(a), Some(b)) = (
            d.compile_exposed_est_ms.as_mut(),
            earlier.compile_exposed_est_ms,
        ) {
            *a -= b;
        }
        for p in d.programs.iter_mut() {
            if let Some(e) = earlier.programs.iter().find(|e| e.name == p.name) {
                p.compiles -= e.compiles.min(p.compiles);
                p.compile_ms -= e.compile_ms;
                p.evals -= e.evals.min(p.evals);
                p.eval_ms -= e.eval_ms;
                p.est_ms = p.est_ms.map(|x| x - e.est_ms.unwrap_or(0.0));
                p.io_ms -= e.io_ms;
            }
        }
        d
    }

    /// The Neural Engine / CPU split as report lines (empty for backends without programs).
    pub fn device_lines(&self, steps: f64) -> Vec<String> {
        if self.programs.is_empty() {
            return Vec::new();
        }
        let steps = steps.max(1.0);
        let eval: f64 = self.programs.iter().map(|p| p.eval_ms).sum();
        let est: Option<f64> = self.programs.iter().map(|p| p.est_ms).sum();
        let mut v = vec!["time by device (ms/step)".to_string()];
        v.push(if self.measured {
            format!(
                "  Neural Engine  evaluate {:.2} (measured), surface I/O {:.2}, compile {:.2}",
                eval / steps,
                self.io_ms / steps,
                self.compile_ms / steps
            )
        } else {
            format!(
                "  Neural Engine  evaluate {} (cost-model estimate; the simulator took {:.2}), \
                 surface I/O {:.2}, compile {:.2} (simulator)",
                est.map_or("n/a".into(), |e| format!("{:.2}", e / steps)),
                eval / steps,
                self.io_ms / steps,
                self.compile_ms / steps
            )
        });
        if let (Some(total), Some(exposed)) = (self.compile_est_ms, self.compile_exposed_est_ms) {
            v.push(format!(
                "  compile (est.) {:.2} of which {:.2} on the critical path ({} of {} programs \
                 compiled in the background; the device's estimates)",
                total / steps,
                exposed / steps,
                self.background_compiles,
                self.compiles
            ));
        } else if self.background_compiles > 0 {
            v.push(format!(
                "  compile wait   {:.2} ({} programs compiled in the background)",
                self.compile_waited_ms / steps,
                self.background_compiles
            ));
        }
        v.push(if self.on_cpu.is_empty() {
            "  CPU fallback   none".to_string()
        } else {
            format!(
                "  CPU fallback   {:.2} ({})",
                self.fallback_cpu_ms / steps,
                self.on_cpu.join(", ")
            )
        });
        v.push(format!(
            "  {:<11} {:>7} {:>11} {:>11} {:>11} {:>11}",
            "program",
            "evals",
            if self.measured { "eval ms" } else { "sim ms" },
            "est. ms",
            "I/O ms",
            "compile ms"
        ));
        for p in &self.programs {
            v.push(format!(
                "  {:<11} {:>7} {:>11.2} {:>11} {:>11.2} {:>11.1}",
                p.name,
                p.evals,
                p.eval_ms,
                p.est_ms.map_or("—".into(), |e| format!("{e:.2}")),
                p.io_ms,
                p.compile_ms
            ));
        }
        v
    }
}

/// A kernel a backend moved to the CPU because the device refused its program.
#[derive(Clone, Debug, PartialEq)]
pub struct Fallback {
    /// The contract kernel (`fwd_attn`, …).
    pub kernel: &'static str,
    /// The device's error.
    pub error: String,
}

/// Which kernels a pass over the layers calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// `fwd_attn` and `fwd_ffn` (evaluation).
    Forward,
    /// All six (a training micro-step).
    Training,
}

/// Proof that a call's shapes were checked against the backend's [`Spec`]: only
/// [`Checked`] makes one, so a backend method cannot be reached with unchecked slices.
pub struct ShapesChecked(());

/// The six kernels of one transformer layer, for the one geometry in [`Kernels::spec`].
/// Callers go through [`Checked`], which checks every slice and the layer index, then
/// dispatches here with a [`ShapesChecked`]; an implementation relies on those checks and
/// repeats none of them.
///
/// Weights arrive one way, for every backend: as per-call views ([`AttnWeights`],
/// [`FfnWeights`]) of layer `layer`. [`Kernels::prepare`] announces that a new weights
/// version starts; within one version the weights must not change. A backend that keeps a
/// copy of the weights (the Neural Engine programs and surfaces) takes it from the views at
/// the first call of the version that needs it; a backend that keeps none (cpu, reference)
/// reads the views on every call.
pub trait Kernels: Send {
    /// Short name (`cpu`, `reference`, `ane`, `ane-sim`).
    fn name(&self) -> &str;

    /// The geometry, epsilon and RoPE table this backend was built for.
    fn spec(&self) -> &Spec;

    /// The shapes of every call ([`Spec::dims`]).
    fn dims(&self) -> Dims {
        self.spec().dims
    }

    /// Called before each pass over the layers: weights version `weights_version` starts
    /// (the same number again: nothing changed), for a pass that calls the kernels of `pass`.
    /// A backend that keeps a copy of the weights marks it stale on a new version, and may
    /// refuse a pass it cannot afford before starting it (the static Neural Engine pipeline,
    /// when the compiles the pass still needs exceed the budget left).
    fn prepare(&mut self, _weights_version: u64, _pass: Pass) -> Result<()> {
        Ok(())
    }

    /// The weights of every layer under the version `prepare` announced, ahead of the calls
    /// that will pass the same views: a backend that compiles weights into programs may start
    /// on all of them now (the static Neural Engine pipeline compiles them in the background,
    /// profile rule C25); the others ignore it.
    fn upcoming(&mut self, _layers: &[LayerViews]) -> Result<()> {
        Ok(())
    }

    /// xn = rmsnorm(x)·g; q,k,v = W·xn; RoPE(q,k); causal softmax(qᵀk/√hd)·v; o = Wo·attn.
    fn fwd_attn(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
        x: &[f32],
        w: &AttnWeights,
        out: AttnFwd,
    ) -> Result<()>;

    /// x2n = rmsnorm(x2)·g; h1 = W1·x2n; h3 = W3·x2n; gate = silu(h1)⊙h3; f = W2·gate.
    fn fwd_ffn(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
        x2: &[f32],
        w: &FfnWeights,
        out: FfnFwd,
    ) -> Result<()>;

    /// dgate = W2ᵀ·dy; dh1 = dgate⊙h3⊙silu′(h1); dh3 = dgate⊙silu(h1); dx2n = W1ᵀdh1 + W3ᵀdh3.
    #[allow(clippy::too_many_arguments)]
    fn ffn_bwd(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
        dy: &[f32],
        h1: &[f32],
        h3: &[f32],
        w: &FfnWeights,
        out: FfnBwd,
    ) -> Result<()>;

    /// dattn = Woᵀ·dx2; per head: P = causal softmax(qᵀk/√hd), dv = dattn·P, dP = dattnᵀ·v.
    /// Of the weights only `w.wo` is read.
    #[allow(clippy::too_many_arguments)]
    fn sdpa_bwd1(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
        dx2: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        w: &AttnWeights,
        out: SdpaBwd1,
    ) -> Result<()>;

    /// dS = P⊙(dP − rowsum(dP⊙P)); dq = k·dSᵀ/√hd; dk = q·dS/√hd (weight-free).
    #[allow(clippy::too_many_arguments)]
    fn sdpa_bwd2(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
        probs: &[f32],
        dp: &[f32],
        q: &[f32],
        k: &[f32],
        out: SdpaBwd2,
    ) -> Result<()>;

    /// dxn = Wqᵀ·dq + Wkᵀ·dk + Wvᵀ·dv (dq, dk already through RoPE backward).
    #[allow(clippy::too_many_arguments)]
    fn qkv_bwd(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
        dq: &[f32],
        dk: &[f32],
        dv: &[f32],
        w: &AttnWeights,
        dxn: &mut [f32],
    ) -> Result<()>;

    fn stats(&self) -> BackendStats {
        BackendStats::default()
    }

    /// Whether the backward pass stores gradients in a format that underflows without loss
    /// scaling (fp16). The trainer then scales the loss dynamically
    /// ([`crate::train::loss_scale`]); otherwise the scale stays fixed.
    fn needs_loss_scaling(&self) -> bool {
        false
    }

    /// Compiles this process may still perform (`None`: no limit).
    fn compiles_left(&self) -> Option<u64> {
        None
    }

    /// Kernels moved to the CPU since the last call (each reported once).
    fn take_fallbacks(&mut self) -> Vec<Fallback> {
        Vec::new()
    }

    /// Where each contract kernel runs (`fwd_attn` → `ane`, `cpu`, …); empty for a backend
    /// that runs everything in one place.
    fn placement(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Compiles one weight update costs (the static pipeline recompiles every
    /// weight-bearing kernel; 0 for backends that never recompile).
    fn compiles_per_update(&self) -> u64 {
        0
    }
}

/// The one way into a backend: every call's slices and layer index checked against the
/// backend's [`Spec`], then dispatched. A slice of another geometry (another batch, seq or
/// model) is an error naming the kernel, the argument and the geometry the backend was
/// built for.
pub struct Checked<'a> {
    k: &'a mut dyn Kernels,
}

impl<'a> Checked<'a> {
    pub fn new(k: &'a mut dyn Kernels) -> Checked<'a> {
        Checked { k }
    }

    /// [`Kernels::upcoming`], for every layer of the spec.
    pub fn upcoming(&mut self, layers: &[LayerViews]) -> Result<()> {
        ensure!(
            layers.len() == self.k.spec().layers,
            "upcoming: {} layers of weights for a {}-layer backend",
            layers.len(),
            self.k.spec().layers
        );
        self.k.upcoming(layers)
    }

    pub fn fwd_attn(
        &mut self,
        layer: usize,
        x: &[f32],
        w: &AttnWeights,
        out: AttnFwd,
    ) -> Result<()> {
        self.k.spec().check_fwd_attn(layer, x, w, &out)?;
        self.k.fwd_attn(ShapesChecked(()), layer, x, w, out)
    }

    pub fn fwd_ffn(&mut self, layer: usize, x2: &[f32], w: &FfnWeights, out: FfnFwd) -> Result<()> {
        self.k.spec().check_fwd_ffn(layer, x2, w, &out)?;
        self.k.fwd_ffn(ShapesChecked(()), layer, x2, w, out)
    }

    pub fn ffn_bwd(
        &mut self,
        layer: usize,
        dy: &[f32],
        h1: &[f32],
        h3: &[f32],
        w: &FfnWeights,
        out: FfnBwd,
    ) -> Result<()> {
        self.k.spec().check_ffn_bwd(layer, dy, h1, h3, w, &out)?;
        self.k.ffn_bwd(ShapesChecked(()), layer, dy, h1, h3, w, out)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sdpa_bwd1(
        &mut self,
        layer: usize,
        dx2: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        w: &AttnWeights,
        out: SdpaBwd1,
    ) -> Result<()> {
        self.k
            .spec()
            .check_sdpa_bwd1(layer, dx2, q, k, v, w, &out)?;
        self.k
            .sdpa_bwd1(ShapesChecked(()), layer, dx2, q, k, v, w, out)
    }

    pub fn sdpa_bwd2(
        &mut self,
        layer: usize,
        probs: &[f32],
        dp: &[f32],
        q: &[f32],
        k: &[f32],
        out: SdpaBwd2,
    ) -> Result<()> {
        self.k
            .spec()
            .check_sdpa_bwd2(layer, probs, dp, q, k, &out)?;
        self.k
            .sdpa_bwd2(ShapesChecked(()), layer, probs, dp, q, k, out)
    }

    pub fn qkv_bwd(
        &mut self,
        layer: usize,
        dq: &[f32],
        dk: &[f32],
        dv: &[f32],
        w: &AttnWeights,
        dxn: &mut [f32],
    ) -> Result<()> {
        self.k.spec().check_qkv_bwd(layer, dq, dk, dv, w, dxn)?;
        self.k.qkv_bwd(ShapesChecked(()), layer, dq, dk, dv, w, dxn)
    }
}

/// The backends this build knows, for `--backend`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// fp32 on the CPU, multi-threaded SIMD GEMM.
    Cpu,
    /// Apple Neural Engine through the private runtime (macOS on Apple Silicon).
    Ane,
    /// The Neural Engine backend driving the simulated device (fp16 semantics, any machine).
    AneSim,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Ane => "ane",
            BackendKind::AneSim => "ane-sim",
        })
    }
}
