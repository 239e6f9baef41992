//! The kernel programs of both pipelines, for any Llama-2 config (MHA or GQA, `head_dim`
//! independent of `dim / n_heads`), written only in patterns that the reference trainer ran on
//! real Neural Engines (docs/ANE_HARDWARE.md, "Patterns").
//!
//! Programs see a *planned* geometry ([`Geometry`], made by [`crate::ane::fit`]): channel
//! dimensions padded with zero rows/columns to the chip profile's multiples, the sequence
//! padded to a power of two (the padding positions come after the real tokens, so causal
//! attention never lets a real query see them, and their gradients are zero), the
//! attention-free kernels covering `chunk` sequences per evaluation, and GQA tiled: every
//! attention program is multi-head with `n_heads` kv heads, K/V tiled by replicating each kv
//! head's weight columns (forward) or its rows (backward inputs) and the per-query-head `dk`,
//! `dv` summed over the group when unpacked — the reference's tile/reduce, done at the
//! surface boundary instead of with reshapes.
//!
//! Each kernel has a [`KernelSpec`]: the layout of its one input and one output surface as
//! named [`Region`]s, each with the [`AxisMap`]s from the model's matrices to the padded
//! surface rows and columns. The generator slices its input by those regions and
//! concatenates its output in that order; the backend packs and unpacks by the same regions.
//! One source of truth, so the two cannot drift apart.
//!
//! **Static pipeline** — weights are `BLOBFILE` constants baked in at compile time; logical
//! inputs are stacked along channels (`[1, ΣCi, 1, W]`).
//!
//! | kernel | input channels | output channels | constants |
//! |---|---|---|---|
//! | fwdAttn (W = S) | x D | o D, q Q, k Q, v Q, attn Q, xn D | g_att, Wq, Wk·tile, Wv·tile, Wo, mask, RoPE |
//! | fwdFFN (W = N) | x2 D | f D, h1 H, h3 H, gate H, x2n D | g_ffn, W1, W3, W2 |
//! | ffnBwd (W = N) | dy D, h1 H, h3 H | dx2n D, dh1 H, dh3 H | W2ᵀ, W1ᵀ, W3ᵀ |
//! | sdpaBwd1 (W = S) | q Q, k Q, v Q, dx2 D | dv Q, P NH·S, dP NH·S | Woᵀ, mask, causal 0/1 |
//! | sdpaBwd2 (W = S) | P NH·S, dP NH·S, q Q, k Q | dq Q, dk Q | none |
//! | qkvBwd (W = N) | dq Q, dk KV, dv KV | dxn D | [Wq; Wk; Wv]ᵀ (one conv) |
//!
//! **Dynamic pipeline** — weights travel in the input surface beside the activations (every
//! channel row `c` holds `[activation columns | weight columns]`, activations at W offset 0),
//! so each program is compiled once and serves every layer and every weight update. Every
//! linear is the reference's dynamic matmul: activation `[1, IC, 1, W]` → `[1, 1, IC, W]` →
//! transpose `[1, 1, W, IC]`, times the staged block `[1, 1, IC, OC]` (row = contraction
//! index = surface channel), no transpose flags, transposed back and reshaped to
//! `[1, OC, 1, W]`. RMSNorm runs on the CPU (the programs take `xn`, `x2n`), as in the
//! reference's dynamic kernels.
//!
//! | kernel | surface channels | input columns | output |
//! |---|---|---|---|
//! | fwdAttn (W = S) | D | xn, Wqᵀ, Wkᵀ·tile, Wvᵀ·tile | q, k, v, attn |
//! | woFwd (W = N) | Q | attn, Woᵀ | o |
//! | fwdFFN (W = N) | D | x2n, W1ᵀ, W3ᵀ, W2 (transposed in the program) | f, h1, h3, gate |
//! | ffnBwdW2t (W = N) | D | dy, W2 | dgate |
//! | ffnBwdW13t (W = N) | H | dgate, h1, h3, W1, W3 | dx2n, dh1, dh3 |
//! | woBwd (W = N) | D | dx2, Wo | da |
//! | sdpaBwd1 (W = S) | stacked q, k, v, da | — | dv, P, dP |
//! | sdpaBwd2 (W = S) | stacked P, dP, q, k | — | dq, dk |
//! | qkvBwd (W = N) | Q + 2·KV | [dq; dk; dv], [Wq; Wk; Wv] | dxn |
//!
//! Both pipelines compute exactly the contract of [`crate::kernels`]: RoPE as llama2.c's
//! rotation of pairs `(2j, 2j+1)` of each head with position = token index in the sequence
//! (written per the profile's [`RopeForm`]), causal attention written out (scores + mask
//! constant → softmax → ·V), GQA with kv head `h / G` serving query head `h`.
//!
//! fp16 care: the static RMSNorm squares `x/√D` (a mean of squares cannot overflow until the
//! RMS of `x` passes 255); queries are scaled by `1/√HD` before the score matmul.

use super::{Builder, Program, Var};
use crate::ane::blob;
use crate::ane::chip::{Dialect, RopeForm};
use crate::kernels::ops::Rope;
use crate::kernels::{AttnWeights, FfnWeights};
use crate::model::{Config, LayerTensor, Params};
use anyhow::{bail, Result};

/// Which way weights reach the Neural Engine.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Pipeline {
    /// Weights baked into programs as constants; recompiled after every weight update.
    Static,
    /// Weights carried in the input surface; every program compiled once.
    Dynamic,
}

impl std::fmt::Display for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Pipeline::Static => "static",
            Pipeline::Dynamic => "dynamic",
        })
    }
}

/// The kernel programs. The first six exist in both pipelines (with pipeline-specific
/// layouts where weights are involved); the rest are the dynamic pipeline's splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kernel {
    FwdAttn,
    WoFwd,
    FwdFfn,
    FfnBwd,
    FfnBwdW2t,
    FfnBwdW13t,
    WoBwd,
    SdpaBwd1,
    SdpaBwd2,
    QkvBwd,
}

impl Kernel {
    pub const ALL: [Kernel; 10] = [
        Kernel::FwdAttn,
        Kernel::WoFwd,
        Kernel::FwdFfn,
        Kernel::FfnBwd,
        Kernel::FfnBwdW2t,
        Kernel::FfnBwdW13t,
        Kernel::WoBwd,
        Kernel::SdpaBwd1,
        Kernel::SdpaBwd2,
        Kernel::QkvBwd,
    ];

    /// The reference trainer's name for the kernel.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::FwdAttn => "fwdAttn",
            Kernel::WoFwd => "woFwd",
            Kernel::FwdFfn => "fwdFFN",
            Kernel::FfnBwd => "ffnBwd",
            Kernel::SdpaBwd1 => "sdpaBwd1",
            Kernel::SdpaBwd2 => "sdpaBwd2",
            Kernel::QkvBwd => "qkvBwd",
            Kernel::FfnBwdW2t => "ffnBwdW2t",
            Kernel::FfnBwdW13t => "ffnBwdW13t",
            Kernel::WoBwd => "woBwd",
        }
    }

    /// Parses a kernel name, case-insensitively.
    pub fn from_name(s: &str) -> Option<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
    }

    /// Whether the program's numbers depend on the layer's weights (static pipeline: whether
    /// it must be recompiled after an update).
    pub fn has_weights(self) -> bool {
        self != Kernel::SdpaBwd2
    }

    /// Whether the kernel covers one sequence per evaluation (`W = S`) rather than
    /// `chunk` sequences.
    pub fn per_sequence(self) -> bool {
        matches!(self, Kernel::FwdAttn | Kernel::SdpaBwd1 | Kernel::SdpaBwd2)
    }
}

/// The kernels a pipeline uses, in the order a layer runs them.
pub fn kernel_set(p: Pipeline) -> Vec<Kernel> {
    use Kernel::*;
    match p {
        Pipeline::Static => vec![FwdAttn, FwdFfn, FfnBwd, SdpaBwd1, SdpaBwd2, QkvBwd],
        Pipeline::Dynamic => vec![
            FwdAttn, WoFwd, FwdFfn, FfnBwdW2t, FfnBwdW13t, WoBwd, SdpaBwd1, SdpaBwd2, QkvBwd,
        ],
    }
}

/// How the rows (or columns) of a model matrix land in a padded surface axis: `n` blocks of
/// `blk_p` slots, of which the first `blk` hold block `h / group`'s entries and the rest are
/// zero. `n = 1, blk_p = blk` is the identity; `group > 1` tiles (GQA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AxisMap {
    pub n: usize,
    pub blk_p: usize,
    pub blk: usize,
    pub group: usize,
}

impl AxisMap {
    pub fn plain(len: usize) -> AxisMap {
        AxisMap::padded(len, len)
    }
    pub fn padded(len: usize, len_p: usize) -> AxisMap {
        AxisMap {
            n: 1,
            blk_p: len_p,
            blk: len,
            group: 1,
        }
    }
    pub fn blocks(n: usize, blk: usize, blk_p: usize) -> AxisMap {
        AxisMap {
            n,
            blk_p,
            blk,
            group: 1,
        }
    }
    /// Surface slots.
    pub fn len_p(&self) -> usize {
        self.n * self.blk_p
    }
    /// Model entries covered.
    pub fn len(&self) -> usize {
        self.n / self.group * self.blk
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The model index behind surface slot `i`, or `None` for padding.
    pub fn src(&self, i: usize) -> Option<usize> {
        let (h, d) = (i / self.blk_p, i % self.blk_p);
        (d < self.blk).then(|| (h / self.group) * self.blk + d)
    }
    /// Whether slot `i` is the first copy of its model entry (tiled maps).
    pub fn first_copy(&self, i: usize) -> bool {
        (i / self.blk_p).is_multiple_of(self.group)
    }
}

/// The planned dimensions the programs are written for (see the module doc).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Geometry {
    /// Model width, padded.
    pub dim: usize,
    pub dim_real: usize,
    /// FFN width, padded.
    pub hidden: usize,
    pub hidden_real: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Head width, padded (even).
    pub head_dim: usize,
    pub head_dim_real: usize,
    /// Sequence length the programs run at (attention width), padded.
    pub seq: usize,
    pub seq_real: usize,
    /// Sequences per evaluation of the attention-free kernels.
    pub chunk: usize,
    pub eps: f32,
    pub rope: RopeForm,
    pub dialect: Dialect,
    /// Multiple the stacked qkvBwd contraction is padded to.
    pub channel_multiple: usize,
    /// Multiple the dynamic pipeline's surface widths are padded to.
    pub align: usize,
}

impl Geometry {
    /// The unpadded geometry: every dimension as the model has it, all `batch` sequences in
    /// one attention-free evaluation, the reference's RoPE form and dialect. For inspection
    /// and tests; the backends use [`crate::ane::fit::plan`].
    pub fn new(c: &Config, batch: usize, seq: usize) -> Geometry {
        Geometry {
            dim: c.dim,
            dim_real: c.dim,
            hidden: c.hidden_dim,
            hidden_real: c.hidden_dim,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            head_dim_real: c.head_dim,
            seq,
            seq_real: seq,
            chunk: batch,
            eps: c.norm_eps,
            rope: RopeForm::PairsConcat,
            dialect: Dialect::Ios18,
            channel_multiple: 1,
            align: 32,
        }
    }
    /// Padded query width `NH·HD`.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    /// Padded kv width `NKV·HD` (untiled).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
    /// Token columns of one attention-free evaluation.
    pub fn cols(&self) -> usize {
        self.chunk * self.seq
    }
    /// Score channels `NH·S`: attention probabilities `[NH, S, S]` as `[NH·S, S]`.
    pub fn score_channels(&self) -> usize {
        self.n_heads * self.seq
    }
    /// Rows of `[dq; dk; dv]` in qkvBwd, padded to the channel multiple.
    pub fn qkv_rows(&self) -> usize {
        (self.q_dim() + 2 * self.kv_dim()).div_ceil(self.channel_multiple) * self.channel_multiple
    }

    pub fn dim_map(&self) -> AxisMap {
        AxisMap::padded(self.dim_real, self.dim)
    }
    pub fn hidden_map(&self) -> AxisMap {
        AxisMap::padded(self.hidden_real, self.hidden)
    }
    /// Query heads.
    pub fn q_map(&self) -> AxisMap {
        AxisMap::blocks(self.n_heads, self.head_dim_real, self.head_dim)
    }
    /// KV heads, untiled.
    pub fn kv_map(&self) -> AxisMap {
        AxisMap::blocks(self.n_kv_heads, self.head_dim_real, self.head_dim)
    }
    /// KV heads tiled to the query heads (kv head `h / G` in slot block `h`).
    pub fn kv_tiled_map(&self) -> AxisMap {
        AxisMap {
            n: self.n_heads,
            blk_p: self.head_dim,
            blk: self.head_dim_real,
            group: self.group(),
        }
    }
    /// Token columns of one attention evaluation.
    pub fn seq_map(&self) -> AxisMap {
        AxisMap::padded(self.seq_real, self.seq)
    }
    /// Token columns of one attention-free evaluation.
    pub fn cols_map(&self) -> AxisMap {
        AxisMap::blocks(self.chunk, self.seq_real, self.seq)
    }
    /// Rows of a `[NH·S, S]` score block.
    pub fn score_rows_map(&self) -> AxisMap {
        AxisMap::blocks(self.n_heads, self.seq_real, self.seq)
    }
}

/// Where a weight block comes from: a layer tensor `W[out, in]`, stored as is (row `r` of the
/// block = row `r` of `W`) or transposed (row `r` = column `r` of `W`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WeightSource {
    pub tensor: LayerTensor,
    pub transposed: bool,
}

/// What a surface region holds and how its slots map to the model's matrix.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Region {
    pub name: &'static str,
    pub ch0: usize,
    pub col0: usize,
    /// Model rows → surface channels `ch0..ch0 + rows.len_p()`.
    pub rows: AxisMap,
    /// Model columns → surface columns `col0..col0 + cols.len_p()`.
    pub cols: AxisMap,
    /// Set for the weight blocks of the dynamic pipeline's inputs.
    pub weight: Option<WeightSource>,
    /// For a tiled output: sum the copies when unpacking (gradients) rather than read the
    /// first (activations).
    pub sum_copies: bool,
}

impl Region {
    pub fn ch(&self) -> usize {
        self.rows.len_p()
    }
    pub fn width(&self) -> usize {
        self.cols.len_p()
    }
}

/// A `[1, channels, 1, width]` fp16 surface and its named regions.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SurfaceLayout {
    pub channels: usize,
    pub width: usize,
    pub regions: Vec<Region>,
}

/// One region of a layout under construction: name, row map, column map, weight source.
type Part = (&'static str, AxisMap, AxisMap, Option<WeightSource>);

impl SurfaceLayout {
    /// Regions stacked along channels, sharing the columns.
    fn stacked(parts: &[(&'static str, AxisMap)], cols: AxisMap) -> SurfaceLayout {
        let mut regions = Vec::new();
        let mut ch0 = 0;
        for &(name, rows) in parts {
            regions.push(Region {
                name,
                ch0,
                col0: 0,
                rows,
                cols,
                weight: None,
                sum_copies: false,
            });
            ch0 += rows.len_p();
        }
        SurfaceLayout {
            channels: ch0,
            width: cols.len_p(),
            regions,
        }
    }

    /// Blocks side by side along the columns, every block spanning all `channels` rows (a
    /// block with fewer rows leaves zero rows below it). The width is padded to `align`.
    fn spatial(channels: usize, parts: &[Part], align: usize) -> SurfaceLayout {
        let mut regions = Vec::new();
        let mut col0 = 0;
        for &(name, rows, cols, weight) in parts {
            debug_assert!(rows.len_p() <= channels);
            regions.push(Region {
                name,
                ch0: 0,
                col0,
                rows,
                cols,
                weight,
                sum_copies: false,
            });
            col0 += cols.len_p();
        }
        SurfaceLayout {
            channels,
            width: col0.div_ceil(align.max(1)) * align.max(1),
            regions,
        }
    }

    /// The region called `name`; panics if absent (the layouts are fixed in this file).
    pub fn region(&self, name: &str) -> &Region {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("surface layout has no region {name}"))
    }

    /// fp16 elements of the surface.
    pub fn elems(&self) -> usize {
        self.channels * self.width
    }
    pub fn bytes(&self) -> usize {
        2 * self.elems()
    }
    pub fn shape(&self) -> [usize; 4] {
        [1, self.channels, 1, self.width]
    }
}

/// A kernel's surfaces.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KernelSpec {
    pub kernel: Kernel,
    pub pipeline: Pipeline,
    pub input: SurfaceLayout,
    pub output: SurfaceLayout,
}

fn ws(tensor: LayerTensor, transposed: bool) -> Option<WeightSource> {
    Some(WeightSource { tensor, transposed })
}

/// The surface layouts of a kernel.
pub fn spec(p: Pipeline, k: Kernel, g: &Geometry) -> Result<KernelSpec> {
    use LayerTensor as T;
    let (dm, hm, qm, kvm, kvt) = (
        g.dim_map(),
        g.hidden_map(),
        g.q_map(),
        g.kv_map(),
        g.kv_tiled_map(),
    );
    let (sm, cm, srm) = (g.seq_map(), g.cols_map(), g.score_rows_map());
    let st = SurfaceLayout::stacked;
    let (d, q, kv, n) = (g.dim, g.q_dim(), g.kv_dim(), g.cols());
    let al = g.align;
    let sum = |mut l: SurfaceLayout, names: &[&str]| {
        for r in l.regions.iter_mut() {
            if names.contains(&r.name) {
                r.sum_copies = true;
            }
        }
        l
    };
    let sdpa1_out = || sum(st(&[("dv", kvt), ("probs", srm), ("dp", srm)], sm), &["dv"]);
    let sdpa1_in =
        |last: (&'static str, AxisMap)| st(&[("q", qm), ("k", kvt), ("v", kvt), last], sm);
    let dyn_mm = |act: (&'static str, AxisMap), w: (&'static str, AxisMap, LayerTensor, bool)| {
        SurfaceLayout::spatial(
            act.1.len_p(),
            &[(act.0, act.1, cm, None), (w.0, act.1, w.1, ws(w.2, w.3))],
            al,
        )
    };
    let (input, output) = match (p, k) {
        (_, Kernel::SdpaBwd2) => (
            st(&[("probs", srm), ("dp", srm), ("q", qm), ("k", kvt)], sm),
            sum(st(&[("dq", qm), ("dk", kvt)], sm), &["dk"]),
        ),
        (Pipeline::Static, Kernel::FwdAttn) => (
            st(&[("x", dm)], sm),
            st(
                &[
                    ("o", dm),
                    ("q", qm),
                    ("k", kvt),
                    ("v", kvt),
                    ("attn", qm),
                    ("xn", dm),
                ],
                sm,
            ),
        ),
        (Pipeline::Static, Kernel::FwdFfn) => (
            st(&[("x2", dm)], cm),
            st(
                &[("f", dm), ("h1", hm), ("h3", hm), ("gate", hm), ("x2n", dm)],
                cm,
            ),
        ),
        (Pipeline::Static, Kernel::FfnBwd) => (
            st(&[("dy", dm), ("h1", hm), ("h3", hm)], cm),
            st(&[("dx2n", dm), ("dh1", hm), ("dh3", hm)], cm),
        ),
        (Pipeline::Static, Kernel::SdpaBwd1) => (sdpa1_in(("dx2", dm)), sdpa1_out()),
        (Pipeline::Static, Kernel::QkvBwd) => {
            let mut parts = vec![("dq", qm), ("dk", kvm), ("dv", kvm)];
            let pad = g.qkv_rows() - (q + 2 * kv);
            if pad > 0 {
                parts.push(("pad", AxisMap::padded(0, pad)));
            }
            (st(&parts, cm), st(&[("dxn", dm)], cm))
        }
        (Pipeline::Dynamic, Kernel::FwdAttn) => (
            SurfaceLayout::spatial(
                d,
                &[
                    ("xn", dm, sm, None),
                    ("wq_t", dm, qm, ws(T::Wq, true)),
                    ("wk_t", dm, kvt, ws(T::Wk, true)),
                    ("wv_t", dm, kvt, ws(T::Wv, true)),
                ],
                al,
            ),
            st(&[("q", qm), ("k", kvt), ("v", kvt), ("attn", qm)], sm),
        ),
        (Pipeline::Dynamic, Kernel::WoFwd) => (
            dyn_mm(("attn", qm), ("wo_t", dm, T::Wo, true)),
            st(&[("o", dm)], cm),
        ),
        (Pipeline::Dynamic, Kernel::FwdFfn) => (
            SurfaceLayout::spatial(
                d,
                &[
                    ("x2n", dm, cm, None),
                    ("w1_t", dm, hm, ws(T::W1, true)),
                    ("w3_t", dm, hm, ws(T::W3, true)),
                    ("w2", dm, hm, ws(T::W2, false)),
                ],
                al,
            ),
            st(&[("f", dm), ("h1", hm), ("h3", hm), ("gate", hm)], cm),
        ),
        (Pipeline::Dynamic, Kernel::FfnBwdW2t) => (
            dyn_mm(("dy", dm), ("w2", hm, T::W2, false)),
            st(&[("dgate", hm)], cm),
        ),
        (Pipeline::Dynamic, Kernel::FfnBwdW13t) => (
            SurfaceLayout::spatial(
                g.hidden,
                &[
                    ("dgate", hm, cm, None),
                    ("h1", hm, cm, None),
                    ("h3", hm, cm, None),
                    ("w1", hm, dm, ws(T::W1, false)),
                    ("w3", hm, dm, ws(T::W3, false)),
                ],
                al,
            ),
            st(&[("dx2n", dm), ("dh1", hm), ("dh3", hm)], cm),
        ),
        (Pipeline::Dynamic, Kernel::WoBwd) => (
            dyn_mm(("dx2", dm), ("wo", qm, T::Wo, false)),
            st(&[("da", qm)], cm),
        ),
        (Pipeline::Dynamic, Kernel::SdpaBwd1) => (sdpa1_in(("da", qm)), sdpa1_out()),
        (Pipeline::Dynamic, Kernel::QkvBwd) => {
            // [dq; dk; dv] stacked along the contraction, the three weights likewise, so
            // that one matmul computes Wqᵀ·dq + Wkᵀ·dk + Wvᵀ·dv with every activation at W
            // offset 0.
            let rows = g.qkv_rows();
            let mut regions = Vec::new();
            let mut ch0 = 0;
            for (a, w, t, m) in [
                ("dq", "wq", T::Wq, qm),
                ("dk", "wk", T::Wk, kvm),
                ("dv", "wv", T::Wv, kvm),
            ] {
                let r = |name, col0, cols, weight| Region {
                    name,
                    ch0,
                    col0,
                    rows: m,
                    cols,
                    weight,
                    sum_copies: false,
                };
                regions.push(r(a, 0, cm, None));
                regions.push(r(w, n, dm, ws(t, false)));
                ch0 += m.len_p();
            }
            (
                SurfaceLayout {
                    channels: rows,
                    width: (n + d).div_ceil(al) * al,
                    regions,
                },
                st(&[("dxn", dm)], cm),
            )
        }
        (Pipeline::Static, _) => bail!(
            "{} is a dynamic-pipeline kernel; the static pipeline has fwdAttn, fwdFFN, ffnBwd, sdpaBwd1, sdpaBwd2, qkvBwd",
            k.name()
        ),
        (Pipeline::Dynamic, Kernel::FfnBwd) => bail!(
            "the dynamic pipeline splits ffnBwd into ffnBwdW2t and ffnBwdW13t"
        ),
    };
    Ok(KernelSpec {
        kernel: k,
        pipeline: p,
        input,
        output,
    })
}

/// `[rows, cols]` of a layer tensor at the model's real dimensions.
pub fn tensor_shape(g: &Geometry, t: LayerTensor) -> (usize, usize) {
    use LayerTensor as T;
    let (d, h) = (g.dim_real, g.hidden_real);
    let (qd, kvd) = (g.n_heads * g.head_dim_real, g.n_kv_heads * g.head_dim_real);
    match t {
        T::AttentionNorm | T::FfnNorm => (d, 1),
        T::Wq => (qd, d),
        T::Wk | T::Wv => (kvd, d),
        T::Wo => (d, qd),
        T::W1 | T::W3 => (h, d),
        T::W2 => (d, h),
    }
}

/// The padded block `[rows.len_p(), cols.len_p()]` (row-major) of matrix `m` (`shape`,
/// row-major), transposed first if asked; padding slots are zero.
pub fn dense(
    m: &[f32],
    shape: (usize, usize),
    transposed: bool,
    rows: AxisMap,
    cols: AxisMap,
) -> Vec<f32> {
    assert_eq!(m.len(), shape.0 * shape.1, "dense: matrix size");
    let (nr, nc) = (rows.len_p(), cols.len_p());
    let mut out = vec![0f32; nr * nc];
    for i in 0..nr {
        let Some(si) = rows.src(i) else { continue };
        for j in 0..nc {
            let Some(sj) = cols.src(j) else { continue };
            out[i * nc + j] = if transposed {
                m[sj * shape.1 + si]
            } else {
                m[si * shape.1 + sj]
            };
        }
    }
    out
}

/// One layer's weights, as the static generators bake them in: the per-call views of the
/// attention block, the feed-forward block, or both.
#[derive(Clone, Copy, Default)]
pub struct LayerWeights<'a> {
    pub attn: Option<AttnWeights<'a>>,
    pub ffn: Option<FfnWeights<'a>>,
}

impl<'a> LayerWeights<'a> {
    /// Both blocks of layer `layer` of the parameter arena.
    pub fn from_params(p: &'a Params, layer: usize) -> LayerWeights<'a> {
        LayerWeights {
            attn: Some(AttnWeights::of(p, layer)),
            ffn: Some(FfnWeights::of(p, layer)),
        }
    }

    /// The attention block's views only.
    pub fn attn(w: &AttnWeights<'a>) -> LayerWeights<'a> {
        LayerWeights {
            attn: Some(*w),
            ffn: None,
        }
    }

    /// The feed-forward block's views only.
    pub fn ffn(w: &FfnWeights<'a>) -> LayerWeights<'a> {
        LayerWeights {
            attn: None,
            ffn: Some(*w),
        }
    }

    /// Tensor `t`; empty when the views of its block were not given.
    pub fn tensor(&self, t: LayerTensor) -> &'a [f32] {
        use LayerTensor::*;
        match (t, self.attn, self.ffn) {
            (AttentionNorm, Some(a), _) => a.g,
            (Wq, Some(a), _) => a.wq,
            (Wk, Some(a), _) => a.wk,
            (Wv, Some(a), _) => a.wv,
            (Wo, Some(a), _) => a.wo,
            (FfnNorm, _, Some(f)) => f.g,
            (W1, _, Some(f)) => f.w1,
            (W2, _, Some(f)) => f.w2,
            (W3, _, Some(f)) => f.w3,
            _ => &[],
        }
    }
}

/// Generates a kernel's program. The static pipeline's weight-bearing kernels need
/// `weights`; `rope` supplies the RoPE angles (llama2.c's tables, `[≥S, HD/2]`, at the real
/// head dim).
pub fn generate(
    p: Pipeline,
    k: Kernel,
    g: &Geometry,
    weights: Option<&LayerWeights>,
    rope: &Rope,
) -> Result<Program> {
    let sp = spec(p, k, g)?;
    if rope.head_dim != g.head_dim_real || rope.len() < g.seq_real {
        bail!(
            "RoPE tables cover head_dim {} and {} positions; the kernels need head_dim {} and {} positions",
            rope.head_dim,
            rope.len(),
            g.head_dim_real,
            g.seq_real
        );
    }
    let need_w = p == Pipeline::Static && k.has_weights();
    let w = match (need_w, weights) {
        (true, None) => bail!(
            "{} (static) bakes in the layer's weights: none given",
            k.name()
        ),
        (true, Some(w)) => Some(*w),
        (false, _) => None,
    };
    let mut gen = Gen {
        b: Builder::with_dialect(k.name(), g.dialect),
        g,
        sp: &sp,
        x: None,
        w,
    };
    let x = gen.b.input("x", sp.input.shape());
    gen.x = Some(x);
    let outs: Vec<(&'static str, Var)> = match (p, k) {
        (Pipeline::Static, Kernel::FwdAttn) => gen.static_fwd_attn(rope),
        (Pipeline::Static, Kernel::FwdFfn) => gen.static_fwd_ffn(),
        (Pipeline::Static, Kernel::FfnBwd) => gen.static_ffn_bwd(),
        (Pipeline::Static, Kernel::SdpaBwd1) => gen.static_sdpa_bwd1(),
        (_, Kernel::SdpaBwd2) => gen.sdpa_bwd2(),
        (Pipeline::Static, Kernel::QkvBwd) => gen.static_qkv_bwd(),
        (Pipeline::Dynamic, Kernel::FwdAttn) => gen.dyn_fwd_attn(rope),
        (Pipeline::Dynamic, Kernel::WoFwd) => {
            let a = gen.take("attn");
            let w = gen.block("wo_t");
            vec![("o", gen.lin("o", &[(&a, &w)]))]
        }
        (Pipeline::Dynamic, Kernel::FwdFfn) => gen.dyn_fwd_ffn(),
        (Pipeline::Dynamic, Kernel::FfnBwdW2t) => {
            let dy = gen.take("dy");
            let w = gen.block("w2");
            vec![("dgate", gen.lin("dgate", &[(&dy, &w)]))]
        }
        (Pipeline::Dynamic, Kernel::FfnBwdW13t) => gen.dyn_ffn_bwd_w13t(),
        (Pipeline::Dynamic, Kernel::WoBwd) => {
            let dx2 = gen.take("dx2");
            let w = gen.block("wo");
            vec![("da", gen.lin("da", &[(&dx2, &w)]))]
        }
        (Pipeline::Dynamic, Kernel::SdpaBwd1) => gen.dyn_sdpa_bwd1(),
        (Pipeline::Dynamic, Kernel::QkvBwd) => {
            let n = g.cols();
            let act = gen.take_cols("dqkv", 0, n);
            let blk = gen.take_cols("wqkv", n, g.dim);
            let blk = gen.matrix("wqkv_m", &blk);
            vec![("dxn", gen.lin("dxn", &[(&act, &blk)]))]
        }
        _ => unreachable!("spec() rejected this pair"),
    };
    Ok(gen.finish(outs))
}

struct Gen<'a> {
    b: Builder,
    g: &'a Geometry,
    sp: &'a KernelSpec,
    x: Option<Var>,
    w: Option<LayerWeights<'a>>,
}

impl Gen<'_> {
    /// The input region `name` as a `[1, ch, 1, cols]` tensor (the input itself when the
    /// region is the whole surface).
    fn take(&mut self, name: &str) -> Var {
        let r = self.sp.input.region(name).clone();
        let x = self.x.clone().unwrap();
        if r.ch() == self.sp.input.channels && r.width() == self.sp.input.width {
            return x;
        }
        self.b
            .slice(name, &x, &[0, r.ch0, 0, r.col0], &[1, r.ch(), 1, r.width()])
    }

    /// Columns `col0..col0 + cols` of every channel of the input.
    fn take_cols(&mut self, name: &str, col0: usize, cols: usize) -> Var {
        let x = self.x.clone().unwrap();
        let c = self.sp.input.channels;
        self.b.slice(name, &x, &[0, 0, 0, col0], &[1, c, 1, cols])
    }

    /// Concatenates the outputs in the spec's order into the single output surface.
    fn finish(mut self, outs: Vec<(&'static str, Var)>) -> Program {
        let regions = self.sp.output.regions.clone();
        assert_eq!(
            regions.len(),
            outs.len(),
            "{}: output count",
            self.sp.kernel.name()
        );
        for (r, (n, v)) in regions.iter().zip(&outs) {
            assert_eq!(r.name, *n, "{}: output order", self.sp.kernel.name());
            assert_eq!(
                v.dims(),
                &[1, r.ch(), 1, r.width()],
                "{}: output {n}",
                self.sp.kernel.name()
            );
        }
        let out = if outs.len() == 1 {
            outs[0].1.clone()
        } else {
            let vs: Vec<&Var> = outs.iter().map(|(_, v)| v).collect();
            self.b.concat("out", &vs, 1)
        };
        self.b.finish(&out)
    }

    /// A baked weight: layer tensor `t` (transposed if asked) through the row and column
    /// maps, declared `[rows, cols, 1, 1]` (a 1×1 conv weight or a gain `[1, C, 1, 1]`).
    fn baked(
        &mut self,
        name: &str,
        t: LayerTensor,
        tr: bool,
        rows: AxisMap,
        cols: AxisMap,
    ) -> Vec<f32> {
        let w = self.w.expect("static kernel without weights");
        let _ = name;
        dense(w.tensor(t), tensor_shape(self.g, t), tr, rows, cols)
    }

    fn conv_weight(
        &mut self,
        name: &str,
        t: LayerTensor,
        tr: bool,
        rows: AxisMap,
        cols: AxisMap,
    ) -> Var {
        let m = self.baked(name, t, tr, rows, cols);
        self.b
            .weight(name, &[rows.len_p(), cols.len_p(), 1, 1], blob::fp16(&m))
    }

    /// The RMSNorm gain `[1, D, 1, 1]` of `t` as a constant (zero on padded channels).
    fn gain(&mut self, name: &str, t: LayerTensor) -> Var {
        let dm = self.g.dim_map();
        let m = self.baked(name, t, false, dm, AxisMap::plain(1));
        self.b.weight(name, &[1, dm.len_p(), 1, 1], blob::fp16(&m))
    }

    /// `xn = x·(mean_c (x/√D)² ·D/D + eps)^(−1/2)·g` over the model's `D` real channels
    /// (padded channels are zero and add nothing), computed as the mean of squares of `x/√D`
    /// so that fp16 does not overflow. `x` `[1, Dp, 1, W]`, `g` `[1, Dp, 1, 1]`.
    fn rmsnorm(&mut self, p: &str, x: &Var, gain: &Var) -> Var {
        let d = self.g.dim_real;
        let b = &mut self.b;
        let xs = b.scale(&format!("{p}_xs"), x, 1.0 / (d as f32).sqrt());
        let sq = b.mul(&format!("{p}_sq"), &xs, &xs);
        let ms = b.reduce_sum(&format!("{p}_ms"), &sq, &[1]);
        let eps = b.scalar(self.g.eps);
        let mse = b.add(&format!("{p}_mse"), &ms, &eps);
        let mh = b.scalar(-0.5);
        let r = b.pow(&format!("{p}_r"), &mse, &mh);
        let xr = b.mul(&format!("{p}_xr"), x, &r);
        b.mul(p, &xr, gain)
    }

    /// `[1, n·HD, 1, S]` → `[1, n, S, HD]` (channel `h·HD + d`).
    fn heads(&mut self, p: &str, t: &Var) -> Var {
        let (hd, s) = (self.g.head_dim, t.dims()[3]);
        let n = t.dims()[1] / hd;
        let r = self.b.reshape(&format!("{p}_r"), t, &[1, n, hd, s]);
        self.b.transpose(p, &r, &[0, 1, 3, 2])
    }

    /// `[1, n, S, HD]` → `[1, n·HD, 1, S]`.
    fn unheads(&mut self, p: &str, t: &Var) -> Var {
        let dims = t.dims().to_vec();
        let (n, s, hd) = (dims[1], dims[2], dims[3]);
        let tr = self.b.transpose(&format!("{p}_t"), t, &[0, 1, 3, 2]);
        self.b.reshape(p, &tr, &[1, n * hd, 1, s])
    }

    /// llama2.c RoPE on `[1, n, S, HD]`: pairs `(e, o) = (2j, 2j+1)` become
    /// `(e·cos − o·sin, o·cos + e·sin)`, written `t·cos + rot(t)·sin` with
    /// `rot(e, o) = (−o, e)` and tables holding each angle twice. `rot` is a matmul with a
    /// constant ±1 permutation (C3's working form) or the reference's reshape/slice/concat.
    fn rope(&mut self, p: &str, t: &Var, cos: &Var, sin: &Var) -> Var {
        let dims = t.dims().to_vec();
        let (n, s, hd) = (dims[1], dims[2], dims[3]);
        let rot4 = match self.g.rope {
            RopeForm::Permutation => {
                let mut m = vec![0f32; n * hd * hd];
                for h in 0..n {
                    for j in 0..hd / 2 {
                        // rot[2j] = −t[2j+1]; rot[2j+1] = t[2j]; rot = t·P.
                        m[h * hd * hd + (2 * j + 1) * hd + 2 * j] = -1.0;
                        m[h * hd * hd + (2 * j) * hd + 2 * j + 1] = 1.0;
                    }
                }
                let perm = self
                    .b
                    .weight(&format!("rope_perm{n}"), &[1, n, hd, hd], blob::fp16(&m));
                self.b.matmul(&format!("{p}_rot"), t, &perm, false, false)
            }
            RopeForm::PairsConcat => {
                let m = s * hd / 2;
                let b = &mut self.b;
                let pairs = b.reshape(&format!("{p}_pairs"), t, &[1, n, m, 2]);
                let e = b.slice(&format!("{p}_e"), &pairs, &[0, 0, 0, 0], &[1, n, m, 1]);
                let o = b.slice(&format!("{p}_o"), &pairs, &[0, 0, 0, 1], &[1, n, m, 1]);
                let no = b.scale(&format!("{p}_no"), &o, -1.0);
                let rot = b.concat(&format!("{p}_rot"), &[&no, &e], 3);
                b.reshape(&format!("{p}_rot4"), &rot, &[1, n, s, hd])
            }
        };
        let b = &mut self.b;
        let tc = b.mul(&format!("{p}_tc"), t, cos);
        let rs = b.mul(&format!("{p}_rs"), &rot4, sin);
        b.add(p, &tc, &rs)
    }

    fn mask(&mut self) -> Var {
        let s = self.g.seq;
        self.b.weight("mask", &[1, 1, s, s], blob::causal_mask(s))
    }

    /// RoPE tables `[1, 1, S, HD]` at the padded sizes: real positions and pairs from
    /// llama2.c's tables; padding positions and pairs rotate by 0.
    fn rope_consts(&mut self, rope: &Rope) -> (Var, Var) {
        let g = self.g;
        let (s, hd, half) = (g.seq, g.head_dim, g.head_dim_real / 2);
        let mut c = vec![1f32; s * hd];
        let mut n = vec![0f32; s * hd];
        for p in 0..g.seq_real {
            for j in 0..half {
                for e in 0..2 {
                    c[p * hd + 2 * j + e] = rope.cos[p * half + j];
                    n[p * hd + 2 * j + e] = rope.sin[p * half + j];
                }
            }
        }
        let cos = self.b.weight("rope_cos", &[1, 1, s, hd], blob::fp16(&c));
        let sin = self.b.weight("rope_sin", &[1, 1, s, hd], blob::fp16(&n));
        (cos, sin)
    }

    /// Causal attention probabilities `[1, NH, S, S]` from roped `q`, `k` `[1, NH, S, HD]`.
    fn probs(&mut self, q: &Var, k: &Var, mask: &Var) -> Var {
        let hd = self.g.head_dim_real;
        let b = &mut self.b;
        let qs = b.scale("qs", q, 1.0 / (hd as f32).sqrt());
        let sc = b.matmul("scores", &qs, k, false, true);
        let masked = b.add("masked", &sc, mask);
        b.softmax("probs", &masked, -1)
    }

    /// fwdAttn after the three projections `[1, Q, 1, S]` (k and v tiled): the roped q, k,
    /// v and the attention output.
    fn attention(&mut self, q: Var, k: Var, v: Var, rope: &Rope) -> (Var, Var, Var, Var) {
        let (cos, sin) = self.rope_consts(rope);
        let mask = self.mask();
        let qh = self.heads("qh", &q);
        let kh = self.heads("kh", &k);
        let vh = self.heads("vh", &v);
        let qr = self.rope("qr", &qh, &cos, &sin);
        let kr = self.rope("kr", &kh, &cos, &sin);
        let p = self.probs(&qr, &kr, &mask);
        let ah = self.b.matmul("ah", &p, &vh, false, false);
        let attn = self.unheads("attn", &ah);
        let qo = self.unheads("q_rope", &qr);
        let ko = self.unheads("k_rope", &kr);
        (qo, ko, v, attn)
    }

    fn static_fwd_attn(&mut self, rope: &Rope) -> Vec<(&'static str, Var)> {
        use LayerTensor as T;
        let g = self.g;
        let (dm, qm, kvt) = (g.dim_map(), g.q_map(), g.kv_tiled_map());
        let x = self.take("x");
        let gn = self.gain("rms_att", T::AttentionNorm);
        let wq = self.conv_weight("wq", T::Wq, false, qm, dm);
        let wk = self.conv_weight("wk", T::Wk, false, kvt, dm);
        let wv = self.conv_weight("wv", T::Wv, false, kvt, dm);
        let wo = self.conv_weight("wo", T::Wo, false, dm, qm);
        let xn = self.rmsnorm("xn", &x, &gn);
        let q = self.b.conv("q", &xn, &wq);
        let k = self.b.conv("k", &xn, &wk);
        let v = self.b.conv("v", &xn, &wv);
        let (qo, ko, v, attn) = self.attention(q, k, v, rope);
        let o = self.b.conv("o", &attn, &wo);
        vec![
            ("o", o),
            ("q", qo),
            ("k", ko),
            ("v", v),
            ("attn", attn),
            ("xn", xn),
        ]
    }

    /// gate = silu(h1)⊙h3.
    fn swiglu(&mut self, h1: &Var, h3: &Var) -> Var {
        let b = &mut self.b;
        let sg = b.sigmoid("sig", h1);
        let si = b.mul("silu", h1, &sg);
        b.mul("gate", &si, h3)
    }

    fn static_fwd_ffn(&mut self) -> Vec<(&'static str, Var)> {
        use LayerTensor as T;
        let (dm, hm) = (self.g.dim_map(), self.g.hidden_map());
        let x2 = self.take("x2");
        let gn = self.gain("rms_ffn", T::FfnNorm);
        let w1 = self.conv_weight("w1", T::W1, false, hm, dm);
        let w3 = self.conv_weight("w3", T::W3, false, hm, dm);
        let w2 = self.conv_weight("w2", T::W2, false, dm, hm);
        let x2n = self.rmsnorm("x2n", &x2, &gn);
        let h1 = self.b.conv("h1", &x2n, &w1);
        let h3 = self.b.conv("h3", &x2n, &w3);
        let gate = self.swiglu(&h1, &h3);
        let out = self.b.conv("f", &gate, &w2);
        vec![
            ("f", out),
            ("h1", h1),
            ("h3", h3),
            ("gate", gate),
            ("x2n", x2n),
        ]
    }

    /// SiLU backward: `dh1 = dg·h3·s·(1 + h1·(1 − s))`, `dh3 = dg·h1·s`, `s = σ(h1)`.
    fn silu_bwd(&mut self, dg: &Var, h1: &Var, h3: &Var) -> (Var, Var) {
        let b = &mut self.b;
        let s = b.sigmoid("s", h1);
        let silu = b.mul("silu", h1, &s);
        let dh3 = b.mul("dh3", dg, &silu);
        let one = b.scalar(1.0);
        let oms = b.sub("one_minus_s", &one, &s);
        let t = b.mul("h1_oms", h1, &oms);
        let t1 = b.add("one_plus", &t, &one);
        let ds = b.mul("dsilu", &s, &t1);
        let dgh3 = b.mul("dg_h3", dg, h3);
        let dh1 = b.mul("dh1", &dgh3, &ds);
        (dh1, dh3)
    }

    fn static_ffn_bwd(&mut self) -> Vec<(&'static str, Var)> {
        use LayerTensor as T;
        let (dm, hm) = (self.g.dim_map(), self.g.hidden_map());
        let dy = self.take("dy");
        let h1 = self.take("h1");
        let h3 = self.take("h3");
        let w2t = self.conv_weight("w2t", T::W2, true, hm, dm);
        let w1t = self.conv_weight("w1t", T::W1, true, dm, hm);
        let w3t = self.conv_weight("w3t", T::W3, true, dm, hm);
        let dg = self.b.conv("dgate", &dy, &w2t);
        let (dh1, dh3) = self.silu_bwd(&dg, &h1, &h3);
        let a = self.b.conv("dx_w1", &dh1, &w1t);
        let c = self.b.conv("dx_w3", &dh3, &w3t);
        let dx2n = self.b.add("dx2n", &a, &c);
        vec![("dx2n", dx2n), ("dh1", dh1), ("dh3", dh3)]
    }

    /// sdpaBwd1 from roped `q`, tiled `k`, `v` `[1, Q, 1, S]` and `da` (gradient of `attn`):
    /// per query head `dv = Pᵀ·dA` (summed over the group when unpacked), `dP = dA·Vᵀ`
    /// zeroed above the diagonal (like the CPU kernel), plus `P`.
    fn sdpa_bwd1_tail(&mut self, q: Var, k: Var, v: Var, da: Var) -> Vec<(&'static str, Var)> {
        let (s, sc) = (self.g.seq, self.g.score_channels());
        let mask = self.mask();
        let qh = self.heads("qh", &q);
        let kh = self.heads("kh", &k);
        let vh = self.heads("vh", &v);
        let p = self.probs(&qh, &kh, &mask);
        let dah = self.heads("dah", &da);
        let dvh = self.b.matmul("dvh", &p, &dah, true, false);
        let dp = self.b.matmul("dp4", &dah, &vh, false, true);
        let keep = self
            .b
            .weight("causal_keep", &[1, 1, s, s], blob::causal_keep(s));
        let dpm = self.b.mul("dp_causal", &dp, &keep);
        let dv = self.unheads("dv", &dvh);
        let pf = self.b.reshape("p_flat", &p, &[1, sc, 1, s]);
        let dpf = self.b.reshape("dp_flat", &dpm, &[1, sc, 1, s]);
        vec![("dv", dv), ("probs", pf), ("dp", dpf)]
    }

    fn static_sdpa_bwd1(&mut self) -> Vec<(&'static str, Var)> {
        let (dm, qm) = (self.g.dim_map(), self.g.q_map());
        let q = self.take("q");
        let k = self.take("k");
        let v = self.take("v");
        let dx2 = self.take("dx2");
        let wot = self.conv_weight("wot", LayerTensor::Wo, true, qm, dm);
        let da = self.b.conv("da", &dx2, &wot);
        self.sdpa_bwd1_tail(q, k, v, da)
    }

    /// `dS = P⊙(dP − rowsum(P⊙dP))/√HD`; `dq = dS·K`, `dk = dSᵀ·Q` per query head (dk summed
    /// over the group when unpacked).
    fn sdpa_bwd2(&mut self) -> Vec<(&'static str, Var)> {
        let g = self.g;
        let (nh, s, hd) = (g.n_heads, g.seq, g.head_dim_real);
        let pf = self.take("probs");
        let dpf = self.take("dp");
        let q = self.take("q");
        let k = self.take("k");
        let b = &mut self.b;
        let p = b.reshape("p", &pf, &[1, nh, s, s]);
        let dp = b.reshape("dp4", &dpf, &[1, nh, s, s]);
        let pdp = b.mul("p_dp", &p, &dp);
        let rs = b.reduce_sum("rowsum", &pdp, &[-1]);
        let diff = b.sub("dp_minus", &dp, &rs);
        let ds = b.mul("ds", &p, &diff);
        let dss = b.scale("ds_scaled", &ds, 1.0 / (hd as f32).sqrt());
        let qh = self.heads("qh", &q);
        let kh = self.heads("kh", &k);
        let dqh = self.b.matmul("dqh", &dss, &kh, false, false);
        let dkh = self.b.matmul("dkh", &dss, &qh, true, false);
        let dq = self.unheads("dq", &dqh);
        let dk = self.unheads("dk", &dkh);
        vec![("dq", dq), ("dk", dk)]
    }

    /// dxn = [Wq; Wk; Wv]ᵀ·[dq; dk; dv] as one 1×1 conv over the whole input.
    fn static_qkv_bwd(&mut self) -> Vec<(&'static str, Var)> {
        use LayerTensor as T;
        let g = self.g;
        let (dm, qm, kvm) = (g.dim_map(), g.q_map(), g.kv_map());
        let rows = g.qkv_rows();
        let x = self.take_all();
        let parts = [
            self.baked("wqt", T::Wq, true, dm, qm),
            self.baked("wkt", T::Wk, true, dm, kvm),
            self.baked("wvt", T::Wv, true, dm, kvm),
        ];
        let widths = [qm.len_p(), kvm.len_p(), kvm.len_p()];
        let mut w = vec![0f32; g.dim * rows];
        for r in 0..g.dim {
            let mut c0 = 0;
            for (p, &wd) in parts.iter().zip(&widths) {
                w[r * rows + c0..r * rows + c0 + wd].copy_from_slice(&p[r * wd..(r + 1) * wd]);
                c0 += wd;
            }
        }
        let wt = self.b.weight("wqkvt", &[g.dim, rows, 1, 1], blob::fp16(&w));
        vec![("dxn", self.b.conv("dxn", &x, &wt))]
    }

    fn take_all(&mut self) -> Var {
        self.x.clone().unwrap()
    }

    /// A region `[1, C, 1, K]` as the matrix `[1, 1, C, K]`.
    fn block(&mut self, name: &str) -> Var {
        let t = self.take(name);
        self.matrix(&format!("{name}_m"), &t)
    }

    fn matrix(&mut self, name: &str, t: &Var) -> Var {
        let (c, k) = (t.dims()[1], t.dims()[3]);
        self.b.reshape(name, t, &[1, 1, c, k])
    }

    /// The reference's dynamic linear, summed over terms: `y[o, t] = Σ_i Σ_c a_i[c, t]·B_i[c, o]`
    /// for activations `a_i` `[1, IC_i, 1, W]` and staged blocks `B_i` `[1, 1, IC_i, OC]`:
    /// each activation is transposed to `[1, 1, W, IC]` and multiplied with no transpose
    /// flags; the sum `[1, 1, W, OC]` is transposed back and reshaped to `[1, OC, 1, W]`.
    fn lin(&mut self, name: &str, terms: &[(&Var, &Var)]) -> Var {
        let mut acc: Option<Var> = None;
        for (i, (a, blk)) in terms.iter().enumerate() {
            let (c, w) = (a.dims()[1], a.dims()[3]);
            let am = self.b.reshape(&format!("{name}_a{i}"), a, &[1, 1, c, w]);
            let at = self
                .b
                .transpose(&format!("{name}_at{i}"), &am, &[0, 1, 3, 2]);
            let y = self
                .b
                .matmul(&format!("{name}_mm{i}"), &at, blk, false, false);
            acc = Some(match acc {
                None => y,
                Some(p) => self.b.add(&format!("{name}_sum{i}"), &p, &y),
            });
        }
        let y = acc.expect("at least one term");
        let (w, oc) = (y.dims()[2], y.dims()[3]);
        let yt = self.b.transpose(&format!("{name}_t"), &y, &[0, 1, 3, 2]);
        self.b.reshape(name, &yt, &[1, oc, 1, w])
    }

    fn dyn_fwd_attn(&mut self, rope: &Rope) -> Vec<(&'static str, Var)> {
        let xn = self.take("xn");
        let wq = self.block("wq_t");
        let wk = self.block("wk_t");
        let wv = self.block("wv_t");
        let q = self.lin("q", &[(&xn, &wq)]);
        let k = self.lin("k", &[(&xn, &wk)]);
        let v = self.lin("v", &[(&xn, &wv)]);
        let (qo, ko, v, attn) = self.attention(q, k, v, rope);
        vec![("q", qo), ("k", ko), ("v", v), ("attn", attn)]
    }

    fn dyn_fwd_ffn(&mut self) -> Vec<(&'static str, Var)> {
        let x2n = self.take("x2n");
        let w1 = self.block("w1_t");
        let w3 = self.block("w3_t");
        let w2 = self.block("w2");
        // W2 is staged as stored ([D, H], rows = the surface's channels) and transposed in
        // the program to the [H, D] block the second matmul contracts over.
        let w2t = self.b.transpose("w2_tr", &w2, &[0, 1, 3, 2]);
        let h1 = self.lin("h1", &[(&x2n, &w1)]);
        let h3 = self.lin("h3", &[(&x2n, &w3)]);
        let gate = self.swiglu(&h1, &h3);
        let f = self.lin("f", &[(&gate, &w2t)]);
        vec![("f", f), ("h1", h1), ("h3", h3), ("gate", gate)]
    }

    fn dyn_ffn_bwd_w13t(&mut self) -> Vec<(&'static str, Var)> {
        let dg = self.take("dgate");
        let h1 = self.take("h1");
        let h3 = self.take("h3");
        let w1 = self.block("w1");
        let w3 = self.block("w3");
        let (dh1, dh3) = self.silu_bwd(&dg, &h1, &h3);
        let dx2n = self.lin("dx2n", &[(&dh1, &w1), (&dh3, &w3)]);
        vec![("dx2n", dx2n), ("dh1", dh1), ("dh3", dh3)]
    }

    fn dyn_sdpa_bwd1(&mut self) -> Vec<(&'static str, Var)> {
        let q = self.take("q");
        let k = self.take("k");
        let v = self.take("v");
        let da = self.take("da");
        self.sdpa_bwd1_tail(q, k, v, da)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories110m_static_surface_sizes_match_the_reference() {
        // The reference's fwdAttn output is 6D = 4608 channels, sdpaBwd1's D + 2·SC = 6912,
        // sdpaBwd2's input 2·SC + 2D = 7680 (docs/ANE.md static pipeline table, S = 256).
        let c = Config::preset("stories110m").unwrap();
        let g = Geometry::new(&c, 1, 256);
        let ch = |k| spec(Pipeline::Static, k, &g).unwrap();
        assert_eq!(ch(Kernel::FwdAttn).output.channels, 4608);
        assert_eq!(ch(Kernel::FwdFfn).output.channels, 2 * 768 + 3 * 2048);
        assert_eq!(ch(Kernel::FfnBwd).input.channels, 4864);
        assert_eq!(ch(Kernel::SdpaBwd1).output.channels, 6912);
        assert_eq!(ch(Kernel::SdpaBwd2).input.channels, 7680);
        assert_eq!(ch(Kernel::QkvBwd).input.channels, 2304);
        // 6 kernels per layer: 72 programs for 12 layers.
        assert_eq!(kernel_set(Pipeline::Static).len() * c.n_layers, 72);
    }

    #[test]
    fn axis_maps_pad_and_tile() {
        // 2 kv heads of width 3 tiled to 4 query heads padded to width 4.
        let m = AxisMap {
            n: 4,
            blk_p: 4,
            blk: 3,
            group: 2,
        };
        let got: Vec<Option<usize>> = (0..16).map(|i| m.src(i)).collect();
        let want = [
            Some(0),
            Some(1),
            Some(2),
            None,
            Some(0),
            Some(1),
            Some(2),
            None,
            Some(3),
            Some(4),
            Some(5),
            None,
            Some(3),
            Some(4),
            Some(5),
            None,
        ];
        assert_eq!(got, want);
        assert_eq!(m.len(), 6);
        assert!(m.first_copy(0) && !m.first_copy(4) && m.first_copy(8));
        // dense(): a [2, 3] matrix transposed into a [4, 2] block padded to [4, 4].
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let d = dense(
            &w,
            (2, 3),
            true,
            AxisMap::padded(3, 4),
            AxisMap::padded(2, 4),
        );
        assert_eq!(
            d,
            vec![1.0, 4.0, 0.0, 0.0, 2.0, 5.0, 0.0, 0.0, 3.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn dynamic_layouts_put_activations_at_offset_zero() {
        let c = Config::preset("stories260k").unwrap();
        let g = Geometry::new(&c, 2, 32);
        for k in kernel_set(Pipeline::Dynamic) {
            let s = spec(Pipeline::Dynamic, k, &g).unwrap();
            for r in &s.input.regions {
                if r.weight.is_none() && s.input.regions.iter().any(|r| r.weight.is_some()) {
                    // Loss-scaled gradients must not sit behind a nonzero W offset (C2).
                    if ["dy", "dx2", "dgate", "dq", "dk", "dv", "xn", "x2n", "attn"]
                        .contains(&r.name)
                    {
                        assert_eq!(r.col0, 0, "{} {}", k.name(), r.name);
                    }
                }
            }
            assert_eq!(s.input.width % 32, 0, "{}", k.name());
        }
        assert!(spec(Pipeline::Static, Kernel::WoBwd, &g).is_err());
        assert!(spec(Pipeline::Dynamic, Kernel::FfnBwd, &g).is_err());
    }
}
