//! The kernel contract: the six per-layer kernels of the reference Neural Engine trainer
//! (fwdAttn, fwdFFN, ffnBwd, sdpaBwd1, sdpaBwd2, qkvBwd) as one narrow trait, implemented by
//! the `cpu` backend here and by the `ane`/`ane-sim` backends in [`crate::ane`].
//!
//! Layout: every activation is a channel-first matrix `[C, N]` (row-major, `a[c·N + t]`),
//! N = B·S token columns, sequence b in columns `b·S..(b+1)·S` — exactly the Neural Engine's
//! `[1, C, 1, S]` surface order. Weights are llama2.c's `W[out, in]`, so `Y = W·X`.
//!
//! Attention probabilities and their gradients are `[B, NH, S, S]` (query row, key column).
//! RoPE is applied inside fwdAttn (q, k taps are post-RoPE); its backward is a CPU op applied
//! between sdpaBwd2 and qkvBwd. GQA: kv head `j` serves query heads `j·G..(j+1)·G`
//! (llama2.c's `h / (n_heads / n_kv_heads)`).

pub mod cpu;
pub mod gemm;
pub mod ops;

use crate::model::Config;
use anyhow::Result;

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
}

/// The six kernels of one transformer layer. `layer` lets a backend that bakes weights into
/// compiled programs pick the right one; a backend that does not may ignore it.
pub trait Kernels: Send {
    /// Short name (`cpu`, `ane`, `ane-sim`).
    fn name(&self) -> &str;

    /// Called before each forward pass with the full parameter arena. A backend that compiles
    /// weights into programs (re)compiles here when `weights_version` changed.
    fn prepare(&mut self, _params: &crate::model::Params, _weights_version: u64) -> Result<()> {
        Ok(())
    }

    /// xn = rmsnorm(x)·g; q,k,v = W·xn; RoPE(q,k); causal softmax(qᵀk/√hd)·v; o = Wo·attn.
    fn fwd_attn(
        &mut self,
        layer: usize,
        d: &Dims,
        rope: &ops::Rope,
        x: &[f32],
        w: &AttnWeights,
        out: AttnFwd,
    ) -> Result<()>;

    /// x2n = rmsnorm(x2)·g; h1 = W1·x2n; h3 = W3·x2n; gate = silu(h1)⊙h3; f = W2·gate.
    fn fwd_ffn(
        &mut self,
        layer: usize,
        d: &Dims,
        x2: &[f32],
        w: &FfnWeights,
        out: FfnFwd,
    ) -> Result<()>;

    /// dgate = W2ᵀ·dy; dh1 = dgate⊙h3⊙silu′(h1); dh3 = dgate⊙silu(h1); dx2n = W1ᵀdh1 + W3ᵀdh3.
    #[allow(clippy::too_many_arguments)]
    fn ffn_bwd(
        &mut self,
        layer: usize,
        d: &Dims,
        dy: &[f32],
        h1: &[f32],
        h3: &[f32],
        w: &FfnWeights,
        out: FfnBwd,
    ) -> Result<()>;

    /// dattn = Woᵀ·dx2; per head: P = causal softmax(qᵀk/√hd), dv = dattn·P, dP = dattnᵀ·v.
    #[allow(clippy::too_many_arguments)]
    fn sdpa_bwd1(
        &mut self,
        layer: usize,
        d: &Dims,
        dx2: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        wo: &[f32],
        out: SdpaBwd1,
    ) -> Result<()>;

    /// dS = P⊙(dP − rowsum(dP⊙P)); dq = k·dSᵀ/√hd; dk = q·dS/√hd (weight-free).
    #[allow(clippy::too_many_arguments)]
    fn sdpa_bwd2(
        &mut self,
        layer: usize,
        d: &Dims,
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
        layer: usize,
        d: &Dims,
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

    /// Compiles one weight update costs (the static pipeline recompiles every
    /// weight-bearing kernel; 0 for backends that never recompile).
    fn compiles_per_update(&self) -> u64 {
        0
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
