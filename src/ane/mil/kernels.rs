//! The kernel programs of both pipelines, for any Llama-2 config (MHA or GQA, `head_dim`
//! independent of `dim / n_heads`).
//!
//! Each kernel has a [`KernelSpec`]: the layout of its one input and one output surface as
//! named [`Region`]s. The generator slices its input by those regions and concatenates its
//! output in that order; the backend packs and unpacks by the same regions. One source of
//! truth, so the two cannot drift apart.
//!
//! **Static pipeline** — weights are `BLOBFILE` constants baked in at compile time; logical
//! inputs are stacked along channels (`[1, ΣCi, 1, W]`). Six programs per layer; `sdpaBwd2`
//! is weight-free and the same for every layer, so one program serves all of them.
//!
//! | kernel | input channels | output channels | constants |
//! |---|---|---|---|
//! | fwdAttn (W = S) | x D | o D, q QD, k KVD, v KVD, attn QD, xn D | g_att, Wq, Wk, Wv, Wo, mask, RoPE cos/sin |
//! | fwdFFN (W = N) | x2 D | f D, h1 H, h3 H, gate H, x2n D | g_ffn, W1, W3, W2 |
//! | ffnBwd (W = N) | dy D, h1 H, h3 H | dx2n D, dh1 H, dh3 H | W2ᵀ, W1ᵀ, W3ᵀ |
//! | sdpaBwd1 (W = S) | q QD, k KVD, v KVD, dx2 D | dv KVD, P NH·S, dP NH·S | Woᵀ, mask, causal 0/1 |
//! | sdpaBwd2 (W = S) | P NH·S, dP NH·S, q QD, k KVD | dq QD, dk KVD | none |
//! | qkvBwd (W = N) | dq QD, dk KVD, dv KVD | dxn D | Wqᵀ, Wkᵀ, Wvᵀ |
//!
//! **Dynamic pipeline** — weights travel in the input surface beside the activations
//! (spatial concatenation: every channel row `c` holds `[activation columns | weight
//! columns]`), so each program is compiled once and serves every layer and every weight
//! update. A weight block sits in a surface whose channel count equals one of its matrix's
//! dimensions: a block whose rows are the contraction index is used through
//! `matmul(transpose_x = true)`; a block whose rows are the output index is used as is.
//! Attention-free kernels that would need surfaces of two different channel counts are
//! split (ffnBwd → ffnBwdW2t + ffnBwdW13t; sdpaBwd1's Woᵀ → woBwd); for GQA, qkvBwd → qBwd
//! + kvBwd summed on the CPU.
//!
//! Both pipelines compute exactly the contract of [`crate::kernels`]: RMSNorm inside the
//! forward kernels, RoPE as llama2.c's rotation of pairs `(2j, 2j+1)` of each head with
//! position = token index in the sequence, causal attention written out (scores + mask
//! constant → softmax → ·V), GQA with kv head `h / G` serving query head `h` — done without
//! tiling by viewing the queries of one kv group as `G·S` rows of one matrix — and the
//! kv-head reductions of `dk`, `dv` done inside the matmuls.
//!
//! fp16 care: RMSNorm squares `x/√D` (a mean of squares cannot overflow until the RMS of `x`
//! passes 255, where summing raw squares overflows at RMS ≈ 256/√D); queries are scaled by
//! `1/√HD` before the score matmul.

use super::{Builder, Program, Var};
use crate::ane::blob;
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    FwdAttn,
    FwdFfn,
    FfnBwd,
    SdpaBwd1,
    SdpaBwd2,
    QkvBwd,
    FfnBwdW2t,
    FfnBwdW13t,
    WoBwd,
    QBwd,
    KvBwd,
}

impl Kernel {
    pub const ALL: [Kernel; 11] = [
        Kernel::FwdAttn,
        Kernel::FwdFfn,
        Kernel::FfnBwd,
        Kernel::SdpaBwd1,
        Kernel::SdpaBwd2,
        Kernel::QkvBwd,
        Kernel::FfnBwdW2t,
        Kernel::FfnBwdW13t,
        Kernel::WoBwd,
        Kernel::QBwd,
        Kernel::KvBwd,
    ];

    /// The reference trainer's name for the kernel.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::FwdAttn => "fwdAttn",
            Kernel::FwdFfn => "fwdFFN",
            Kernel::FfnBwd => "ffnBwd",
            Kernel::SdpaBwd1 => "sdpaBwd1",
            Kernel::SdpaBwd2 => "sdpaBwd2",
            Kernel::QkvBwd => "qkvBwd",
            Kernel::FfnBwdW2t => "ffnBwdW2t",
            Kernel::FfnBwdW13t => "ffnBwdW13t",
            Kernel::WoBwd => "woBwd",
            Kernel::QBwd => "qBwd",
            Kernel::KvBwd => "kvBwd",
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
}

/// The kernels a pipeline uses for a config, in the order a layer runs them.
pub fn kernel_set(p: Pipeline, g: &Geometry) -> Vec<Kernel> {
    use Kernel::*;
    match p {
        Pipeline::Static => vec![FwdAttn, FwdFfn, FfnBwd, SdpaBwd1, SdpaBwd2, QkvBwd],
        Pipeline::Dynamic => {
            let mut v = vec![
                FwdAttn, FwdFfn, FfnBwdW2t, FfnBwdW13t, WoBwd, SdpaBwd1, SdpaBwd2,
            ];
            if g.n_heads == g.n_kv_heads {
                v.push(QkvBwd);
            } else {
                v.extend([QBwd, KvBwd]);
            }
            v
        }
    }
}

/// Model dimensions and the columns each evaluation covers.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    pub dim: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Tokens per sequence: the width of the attention kernels (one sequence per evaluation).
    pub seq: usize,
    /// Token columns of the attention-free kernels: all `B·S` columns in one evaluation.
    pub cols: usize,
    pub eps: f32,
}

impl Geometry {
    pub fn new(c: &Config, batch: usize, seq: usize) -> Geometry {
        Geometry {
            dim: c.dim,
            hidden: c.hidden_dim,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            seq,
            cols: batch * seq,
            eps: c.norm_eps,
        }
    }
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
    /// Score channels `NH·S`: attention probabilities `[NH, S, S]` as `[NH·S, S]`.
    pub fn score_channels(&self) -> usize {
        self.n_heads * self.seq
    }
}

/// Where a weight block comes from: a layer tensor, stored as is (row `c` of the block =
/// row `c` of `W[out, in]`) or transposed (row `c` = column `c` of `W`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightSource {
    pub tensor: LayerTensor,
    pub transposed: bool,
}

/// A named block of a surface: channels `ch0..ch0+ch`, columns `col0..col0+cols`.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    pub name: &'static str,
    pub ch0: usize,
    pub ch: usize,
    pub col0: usize,
    pub cols: usize,
    /// Set for the weight blocks of the dynamic pipeline's inputs.
    pub weight: Option<WeightSource>,
}

/// A `[1, channels, 1, width]` fp16 surface and its named regions.
#[derive(Clone, Debug, PartialEq)]
pub struct SurfaceLayout {
    pub channels: usize,
    pub width: usize,
    pub regions: Vec<Region>,
}

impl SurfaceLayout {
    /// Logical tensors stacked along channels, each `width` columns wide.
    fn stacked(parts: &[(&'static str, usize)], width: usize) -> SurfaceLayout {
        let mut regions = Vec::new();
        let mut ch0 = 0;
        for &(name, ch) in parts {
            regions.push(Region {
                name,
                ch0,
                ch,
                col0: 0,
                cols: width,
                weight: None,
            });
            ch0 += ch;
        }
        SurfaceLayout {
            channels: ch0,
            width,
            regions,
        }
    }

    /// Blocks side by side along the columns of `channels` rows; the width is padded to a
    /// multiple of 32 fp16 values (64 bytes), the row stride every production surface of the
    /// reference uses.
    fn spatial(
        channels: usize,
        parts: &[(&'static str, usize, Option<WeightSource>)],
    ) -> SurfaceLayout {
        let mut regions = Vec::new();
        let mut col0 = 0;
        for &(name, cols, weight) in parts {
            regions.push(Region {
                name,
                ch0: 0,
                ch: channels,
                col0,
                cols,
                weight,
            });
            col0 += cols;
        }
        SurfaceLayout {
            channels,
            width: col0.div_ceil(32) * 32,
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
    pub fn shape(&self) -> [usize; 4] {
        [1, self.channels, 1, self.width]
    }
}

/// A kernel's surfaces.
#[derive(Clone, Debug, PartialEq)]
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
    let (d, h, qd, kvd, s, n, sc) = (
        g.dim,
        g.hidden,
        g.q_dim(),
        g.kv_dim(),
        g.seq,
        g.cols,
        g.score_channels(),
    );
    let st = SurfaceLayout::stacked;
    let attn_out = || {
        st(
            &[
                ("o", d),
                ("q", qd),
                ("k", kvd),
                ("v", kvd),
                ("attn", qd),
                ("xn", d),
            ],
            s,
        )
    };
    let ffn_out = || {
        st(
            &[("f", d), ("h1", h), ("h3", h), ("gate", h), ("x2n", d)],
            n,
        )
    };
    let sdpa1_out = || st(&[("dv", kvd), ("probs", sc), ("dp", sc)], s);
    let (input, output) = match (p, k) {
        (_, Kernel::SdpaBwd2) => (
            st(&[("probs", sc), ("dp", sc), ("q", qd), ("k", kvd)], s),
            st(&[("dq", qd), ("dk", kvd)], s),
        ),
        (Pipeline::Static, Kernel::FwdAttn) => (st(&[("x", d)], s), attn_out()),
        (Pipeline::Static, Kernel::FwdFfn) => (st(&[("x2", d)], n), ffn_out()),
        (Pipeline::Static, Kernel::FfnBwd) => (
            st(&[("dy", d), ("h1", h), ("h3", h)], n),
            st(&[("dx2n", d), ("dh1", h), ("dh3", h)], n),
        ),
        (Pipeline::Static, Kernel::SdpaBwd1) => (
            st(&[("q", qd), ("k", kvd), ("v", kvd), ("dx2", d)], s),
            sdpa1_out(),
        ),
        (Pipeline::Static, Kernel::QkvBwd) => (
            st(&[("dq", qd), ("dk", kvd), ("dv", kvd)], n),
            st(&[("dxn", d)], n),
        ),
        (Pipeline::Dynamic, Kernel::FwdAttn) => (
            SurfaceLayout::spatial(
                d,
                &[
                    ("x", s, None),
                    ("g", 1, ws(T::AttentionNorm, false)),
                    ("wq_t", qd, ws(T::Wq, true)),
                    ("wk_t", kvd, ws(T::Wk, true)),
                    ("wv_t", kvd, ws(T::Wv, true)),
                    ("wo", qd, ws(T::Wo, false)),
                ],
            ),
            attn_out(),
        ),
        (Pipeline::Dynamic, Kernel::FwdFfn) => (
            SurfaceLayout::spatial(
                d,
                &[
                    ("x2", n, None),
                    ("g", 1, ws(T::FfnNorm, false)),
                    ("w1_t", h, ws(T::W1, true)),
                    ("w3_t", h, ws(T::W3, true)),
                    ("w2", h, ws(T::W2, false)),
                ],
            ),
            ffn_out(),
        ),
        (Pipeline::Dynamic, Kernel::FfnBwdW2t) => (
            SurfaceLayout::spatial(d, &[("dy", n, None), ("w2", h, ws(T::W2, false))]),
            st(&[("dgate", h)], n),
        ),
        (Pipeline::Dynamic, Kernel::FfnBwdW13t) => (
            SurfaceLayout::spatial(
                h,
                &[
                    ("dgate", n, None),
                    ("h1", n, None),
                    ("h3", n, None),
                    ("w1", d, ws(T::W1, false)),
                    ("w3", d, ws(T::W3, false)),
                ],
            ),
            st(&[("dx2n", d), ("dh1", h), ("dh3", h)], n),
        ),
        (Pipeline::Dynamic, Kernel::WoBwd) => (
            SurfaceLayout::spatial(d, &[("dx2", n, None), ("wo", qd, ws(T::Wo, false))]),
            st(&[("da", qd)], n),
        ),
        (Pipeline::Dynamic, Kernel::SdpaBwd1) => (
            st(&[("q", qd), ("k", kvd), ("v", kvd), ("da", qd)], s),
            sdpa1_out(),
        ),
        (Pipeline::Dynamic, Kernel::QkvBwd) => {
            if qd != kvd {
                bail!("qkvBwd (dynamic) needs n_heads = n_kv_heads; use qBwd + kvBwd for GQA");
            }
            (
                SurfaceLayout::spatial(
                    qd,
                    &[
                        ("dq", n, None),
                        ("dk", n, None),
                        ("dv", n, None),
                        ("wq", d, ws(T::Wq, false)),
                        ("wk", d, ws(T::Wk, false)),
                        ("wv", d, ws(T::Wv, false)),
                    ],
                ),
                st(&[("dxn", d)], n),
            )
        }
        (Pipeline::Dynamic, Kernel::QBwd) => (
            SurfaceLayout::spatial(qd, &[("dq", n, None), ("wq", d, ws(T::Wq, false))]),
            st(&[("dxq", d)], n),
        ),
        (Pipeline::Dynamic, Kernel::KvBwd) => (
            SurfaceLayout::spatial(
                kvd,
                &[
                    ("dk", n, None),
                    ("dv", n, None),
                    ("wk", d, ws(T::Wk, false)),
                    ("wv", d, ws(T::Wv, false)),
                ],
            ),
            st(&[("dxkv", d)], n),
        ),
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

/// One layer's weights, as the static generators bake them in.
#[derive(Clone, Copy)]
pub struct LayerWeights<'a> {
    pub attn: AttnWeights<'a>,
    pub ffn: FfnWeights<'a>,
}

impl<'a> LayerWeights<'a> {
    pub fn from_params(p: &'a Params, layer: usize) -> LayerWeights<'a> {
        use LayerTensor as T;
        LayerWeights {
            attn: AttnWeights {
                g: p.layer(layer, T::AttentionNorm),
                wq: p.layer(layer, T::Wq),
                wk: p.layer(layer, T::Wk),
                wv: p.layer(layer, T::Wv),
                wo: p.layer(layer, T::Wo),
            },
            ffn: FfnWeights {
                g: p.layer(layer, T::FfnNorm),
                w1: p.layer(layer, T::W1),
                w2: p.layer(layer, T::W2),
                w3: p.layer(layer, T::W3),
            },
        }
    }
}

/// Generates a kernel's program. The static pipeline's weight-bearing kernels need
/// `weights`; `rope` supplies the RoPE angles (llama2.c's tables, `[≥S, HD/2]`).
pub fn generate(
    p: Pipeline,
    k: Kernel,
    g: &Geometry,
    weights: Option<&LayerWeights>,
    rope: &Rope,
) -> Result<Program> {
    let sp = spec(p, k, g)?;
    if rope.head_dim != g.head_dim || rope.cos.len() < g.seq * g.head_dim / 2 {
        bail!(
            "RoPE tables cover head_dim {} and {} positions; the kernels need head_dim {} and {} positions",
            rope.head_dim,
            rope.cos.len() / (rope.head_dim / 2).max(1),
            g.head_dim,
            g.seq
        );
    }
    let need_w = p == Pipeline::Static && k.has_weights();
    let w = match (need_w, weights) {
        (true, None) => bail!(
            "{} (static) bakes in the layer's weights: none given",
            k.name()
        ),
        (true, Some(w)) => Some(w),
        (false, _) => None,
    };
    let mut gen = Gen {
        b: Builder::new(k.name()),
        g,
        sp: &sp,
        x: None,
    };
    let x = gen.b.input("x", sp.input.shape());
    gen.x = Some(x);
    let outs: Vec<(&'static str, Var)> = match (p, k) {
        (Pipeline::Static, Kernel::FwdAttn) => gen.static_fwd_attn(w.unwrap(), rope),
        (Pipeline::Static, Kernel::FwdFfn) => gen.static_fwd_ffn(w.unwrap()),
        (Pipeline::Static, Kernel::FfnBwd) => gen.static_ffn_bwd(w.unwrap()),
        (Pipeline::Static, Kernel::SdpaBwd1) => gen.static_sdpa_bwd1(w.unwrap()),
        (_, Kernel::SdpaBwd2) => gen.sdpa_bwd2(),
        (Pipeline::Static, Kernel::QkvBwd) => gen.static_qkv_bwd(w.unwrap()),
        (Pipeline::Dynamic, Kernel::FwdAttn) => gen.dyn_fwd_attn(rope),
        (Pipeline::Dynamic, Kernel::FwdFfn) => gen.dyn_fwd_ffn(),
        (Pipeline::Dynamic, Kernel::FfnBwdW2t) => {
            vec![("dgate", gen.dyn_linear_sum(&[("w2", "dy")], "dgate"))]
        }
        (Pipeline::Dynamic, Kernel::FfnBwdW13t) => gen.dyn_ffn_bwd_w13t(),
        (Pipeline::Dynamic, Kernel::WoBwd) => {
            vec![("da", gen.dyn_linear_sum(&[("wo", "dx2")], "da"))]
        }
        (Pipeline::Dynamic, Kernel::SdpaBwd1) => gen.dyn_sdpa_bwd1(),
        (Pipeline::Dynamic, Kernel::QkvBwd) => vec![(
            "dxn",
            gen.dyn_linear_sum(&[("wq", "dq"), ("wk", "dk"), ("wv", "dv")], "dxn"),
        )],
        (Pipeline::Dynamic, Kernel::QBwd) => {
            vec![("dxq", gen.dyn_linear_sum(&[("wq", "dq")], "dxq"))]
        }
        (Pipeline::Dynamic, Kernel::KvBwd) => vec![(
            "dxkv",
            gen.dyn_linear_sum(&[("wk", "dk"), ("wv", "dv")], "dxkv"),
        )],
        _ => unreachable!("spec() rejected this pair"),
    };
    Ok(gen.finish(outs))
}

struct Gen<'a> {
    b: Builder,
    g: &'a Geometry,
    sp: &'a KernelSpec,
    x: Option<Var>,
}

impl Gen<'_> {
    /// The input region `name` as a `[1, ch, 1, cols]` tensor.
    fn take(&mut self, name: &str) -> Var {
        let r = self.sp.input.region(name).clone();
        let x = self.x.clone().unwrap();
        if r.ch == self.sp.input.channels && r.cols == self.sp.input.width {
            return x;
        }
        self.b
            .slice(name, &x, &[0, r.ch0, 0, r.col0], &[1, r.ch, 1, r.cols])
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
                &[1, r.ch, 1, r.cols],
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

    fn weight(&mut self, name: &str, shape: &[usize], blob: Vec<u8>) -> Var {
        self.b.weight(name, shape, blob)
    }

    /// The RMSNorm gain `[1, D, 1, 1]` as a constant.
    fn gain(&mut self, name: &str, gv: &[f32]) -> Var {
        self.weight(name, &[1, gv.len(), 1, 1], blob::fp16(gv))
    }

    /// `xn = x·(mean_c (x/1)² + eps)^(−1/2)·g` over channels, computed as the mean of squares
    /// of `x/√D` so that fp16 does not overflow. `x` `[1, D, 1, W]`, `g` `[1, D, 1, 1]`.
    fn rmsnorm(&mut self, p: &str, x: &Var, gain: &Var) -> Var {
        let d = x.dims()[1];
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
    fn heads(&mut self, p: &str, t: &Var, n: usize) -> Var {
        let (hd, s) = (self.g.head_dim, t.dims()[3]);
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
    /// `rot(e, o) = (−o, e)` and tables holding each angle twice.
    fn rope(&mut self, p: &str, t: &Var, cos: &Var, sin: &Var) -> Var {
        let dims = t.dims().to_vec();
        let (n, s, hd) = (dims[1], dims[2], dims[3]);
        let m = s * hd / 2;
        let b = &mut self.b;
        let pairs = b.reshape(&format!("{p}_pairs"), t, &[1, n, m, 2]);
        let e = b.slice(&format!("{p}_e"), &pairs, &[0, 0, 0, 0], &[1, n, m, 1]);
        let o = b.slice(&format!("{p}_o"), &pairs, &[0, 0, 0, 1], &[1, n, m, 1]);
        let no = b.scale(&format!("{p}_no"), &o, -1.0);
        let rot = b.concat(&format!("{p}_rot"), &[&no, &e], 3);
        let rot4 = b.reshape(&format!("{p}_rot4"), &rot, &[1, n, s, hd]);
        let tc = b.mul(&format!("{p}_tc"), t, cos);
        let rs = b.mul(&format!("{p}_rs"), &rot4, sin);
        b.add(p, &tc, &rs)
    }

    fn mask(&mut self) -> Var {
        let s = self.g.seq;
        self.weight("mask", &[1, 1, s, s], blob::causal_mask(s))
    }

    fn rope_consts(&mut self, rope: &Rope) -> (Var, Var) {
        let (s, hd) = (self.g.seq, self.g.head_dim);
        let (c, n) = blob::rope_tables(&rope.cos, &rope.sin, s, hd);
        let cos = self.weight("rope_cos", &[1, 1, s, hd], c);
        let sin = self.weight("rope_sin", &[1, 1, s, hd], n);
        (cos, sin)
    }

    /// Causal attention probabilities `[1, NH, S, S]` from roped `q` `[1, NH, S, HD]` and `k`
    /// `[1, NKV, S, HD]`: the `G` query heads of kv head `j` (heads `j·G..(j+1)·G`, adjacent
    /// in `q`) form the `G·S` rows of one score matrix against `k_j`.
    fn probs(&mut self, q: &Var, k: &Var, mask: &Var) -> Var {
        let g = self.g;
        let (nh, nkv, s, hd) = (g.n_heads, g.n_kv_heads, g.seq, g.head_dim);
        let b = &mut self.b;
        let qs = b.scale("qs", q, 1.0 / (hd as f32).sqrt());
        let qg = b.reshape("qg", &qs, &[1, nkv, g.group() * s, hd]);
        let sc = b.matmul("scores", &qg, k, false, true);
        let sc4 = b.reshape("scores4", &sc, &[1, nh, s, s]);
        let masked = b.add("masked", &sc4, mask);
        b.softmax("probs", &masked, -1)
    }

    /// `[1, NH, S, X]` viewed as `[1, NKV, G·S, X]`.
    fn group_rows(&mut self, name: &str, t: &Var) -> Var {
        let d = t.dims().to_vec();
        let (nkv, gs) = (self.g.n_kv_heads, self.g.group() * d[2]);
        self.b.reshape(name, t, &[1, nkv, gs, d[3]])
    }

    /// Everything of fwdAttn after `xn` and the three projections `[1, C, 1, S]`;
    /// `wo_apply` turns `attn` into `o`.
    fn attention_tail(
        &mut self,
        xn: Var,
        q: Var,
        k: Var,
        v: Var,
        rope: &Rope,
        wo_apply: &mut dyn FnMut(&mut Self, &Var) -> Var,
    ) -> Vec<(&'static str, Var)> {
        let (nh, nkv) = (self.g.n_heads, self.g.n_kv_heads);
        let (cos, sin) = self.rope_consts(rope);
        let mask = self.mask();
        let qh = self.heads("qh", &q, nh);
        let kh = self.heads("kh", &k, nkv);
        let vh = self.heads("vh", &v, nkv);
        let qr = self.rope("qr", &qh, &cos, &sin);
        let kr = self.rope("kr", &kh, &cos, &sin);
        let p = self.probs(&qr, &kr, &mask);
        let pg = self.group_rows("pg", &p);
        let ag = self.b.matmul("ag", &pg, &vh, false, false);
        let s = self.g.seq;
        let ah = self.b.reshape("ah", &ag, &[1, nh, s, self.g.head_dim]);
        let attn = self.unheads("attn", &ah);
        let o = wo_apply(self, &attn);
        let qo = self.unheads("q_rope", &qr);
        let ko = self.unheads("k_rope", &kr);
        vec![
            ("o", o),
            ("q", qo),
            ("k", ko),
            ("v", v),
            ("attn", attn),
            ("xn", xn),
        ]
    }

    fn static_fwd_attn(&mut self, w: &LayerWeights, rope: &Rope) -> Vec<(&'static str, Var)> {
        let (d, qd, kvd) = (self.g.dim, self.g.q_dim(), self.g.kv_dim());
        let a = w.attn;
        let x = self.take("x");
        let g = self.gain("rms_att", a.g);
        let wq = self.weight("wq", &[qd, d, 1, 1], blob::fp16(a.wq));
        let wk = self.weight("wk", &[kvd, d, 1, 1], blob::fp16(a.wk));
        let wv = self.weight("wv", &[kvd, d, 1, 1], blob::fp16(a.wv));
        let wo = self.weight("wo", &[d, qd, 1, 1], blob::fp16(a.wo));
        let xn = self.rmsnorm("xn", &x, &g);
        let q = self.b.conv("q", &xn, &wq);
        let k = self.b.conv("k", &xn, &wk);
        let v = self.b.conv("v", &xn, &wv);
        self.attention_tail(xn, q, k, v, rope, &mut |gen, attn| {
            gen.b.conv("o", attn, &wo)
        })
    }

    /// FFN forward after the norm: `[f, h1, h3, gate]` from `x2n` and the three projections.
    fn ffn_tail(&mut self, h1: Var, h3: Var) -> (Var, Var, Var, Var) {
        let b = &mut self.b;
        let sg = b.sigmoid("sig", &h1);
        let si = b.mul("silu", &h1, &sg);
        let gate = b.mul("gate", &si, &h3);
        (h1, h3, gate, sg)
    }

    fn static_fwd_ffn(&mut self, w: &LayerWeights) -> Vec<(&'static str, Var)> {
        let (d, h) = (self.g.dim, self.g.hidden);
        let f = w.ffn;
        let x2 = self.take("x2");
        let g = self.gain("rms_ffn", f.g);
        let w1 = self.weight("w1", &[h, d, 1, 1], blob::fp16(f.w1));
        let w3 = self.weight("w3", &[h, d, 1, 1], blob::fp16(f.w3));
        let w2 = self.weight("w2", &[d, h, 1, 1], blob::fp16(f.w2));
        let x2n = self.rmsnorm("x2n", &x2, &g);
        let h1 = self.b.conv("h1", &x2n, &w1);
        let h3 = self.b.conv("h3", &x2n, &w3);
        let (h1, h3, gate, _) = self.ffn_tail(h1, h3);
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

    fn static_ffn_bwd(&mut self, w: &LayerWeights) -> Vec<(&'static str, Var)> {
        let (d, h) = (self.g.dim, self.g.hidden);
        let f = w.ffn;
        let dy = self.take("dy");
        let h1 = self.take("h1");
        let h3 = self.take("h3");
        let w2t = self.weight("w2t", &[h, d, 1, 1], blob::fp16_transposed(f.w2, d, h));
        let w1t = self.weight("w1t", &[d, h, 1, 1], blob::fp16_transposed(f.w1, h, d));
        let w3t = self.weight("w3t", &[d, h, 1, 1], blob::fp16_transposed(f.w3, h, d));
        let dg = self.b.conv("dgate", &dy, &w2t);
        let (dh1, dh3) = self.silu_bwd(&dg, &h1, &h3);
        let a = self.b.conv("dx_w1", &dh1, &w1t);
        let c = self.b.conv("dx_w3", &dh3, &w3t);
        let dx2n = self.b.add("dx2n", &a, &c);
        vec![("dx2n", dx2n), ("dh1", dh1), ("dh3", dh3)]
    }

    /// sdpaBwd1 from roped `q`, `k`, `v` `[1, C, 1, S]` and `da` (gradient of `attn`,
    /// `[1, QD, 1, S]`): `dv = Σ_heads of the group Pᵀ·dA`, `dP = dA·Vᵀ` zeroed above the
    /// diagonal (like the CPU kernel), plus `P`.
    fn sdpa_bwd1_tail(&mut self, q: Var, k: Var, v: Var, da: Var) -> Vec<(&'static str, Var)> {
        let (nh, nkv, s, sc) = (
            self.g.n_heads,
            self.g.n_kv_heads,
            self.g.seq,
            self.g.score_channels(),
        );
        let mask = self.mask();
        let qh = self.heads("qh", &q, nh);
        let kh = self.heads("kh", &k, nkv);
        let vh = self.heads("vh", &v, nkv);
        let p = self.probs(&qh, &kh, &mask);
        let pg = self.group_rows("pg", &p);
        let dah = self.heads("dah", &da, nh);
        let dag = self.group_rows("dag", &dah);
        let dvh = self.b.matmul("dvh", &pg, &dag, true, false);
        let dpg = self.b.matmul("dpg", &dag, &vh, false, true);
        let keep = self.weight("causal_keep", &[1, 1, s, s], blob::causal_keep(s));
        let dp4 = self.b.reshape("dp4", &dpg, &[1, nh, s, s]);
        let dpm = self.b.mul("dp_causal", &dp4, &keep);
        let dv = self.unheads("dv", &dvh);
        let pf = self.b.reshape("p_flat", &p, &[1, sc, 1, s]);
        let dpf = self.b.reshape("dp_flat", &dpm, &[1, sc, 1, s]);
        vec![("dv", dv), ("probs", pf), ("dp", dpf)]
    }

    fn static_sdpa_bwd1(&mut self, w: &LayerWeights) -> Vec<(&'static str, Var)> {
        let (d, qd) = (self.g.dim, self.g.q_dim());
        let q = self.take("q");
        let k = self.take("k");
        let v = self.take("v");
        let dx2 = self.take("dx2");
        let wot = self.weight(
            "wot",
            &[qd, d, 1, 1],
            blob::fp16_transposed(w.attn.wo, d, qd),
        );
        let da = self.b.conv("da", &dx2, &wot);
        self.sdpa_bwd1_tail(q, k, v, da)
    }

    /// `dS = P⊙(dP − rowsum(P⊙dP))/√HD`; `dq = dS·K` per head; `dk = Σ_group dSᵀ·Q`.
    fn sdpa_bwd2(&mut self) -> Vec<(&'static str, Var)> {
        let (nh, nkv, s, hd) = (
            self.g.n_heads,
            self.g.n_kv_heads,
            self.g.seq,
            self.g.head_dim,
        );
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
        let dsg = self.group_rows("dsg", &dss);
        let qh = self.heads("qh", &q, nh);
        let qg = self.group_rows("qg", &qh);
        let kh = self.heads("kh", &k, nkv);
        let dqg = self.b.matmul("dqg", &dsg, &kh, false, false);
        let dqh = self.b.reshape("dqh", &dqg, &[1, nh, s, hd]);
        let dkh = self.b.matmul("dkh", &dsg, &qg, true, false);
        let dq = self.unheads("dq", &dqh);
        let dk = self.unheads("dk", &dkh);
        vec![("dq", dq), ("dk", dk)]
    }

    fn static_qkv_bwd(&mut self, w: &LayerWeights) -> Vec<(&'static str, Var)> {
        let (d, qd, kvd) = (self.g.dim, self.g.q_dim(), self.g.kv_dim());
        let a = w.attn;
        let dq = self.take("dq");
        let dk = self.take("dk");
        let dv = self.take("dv");
        let wqt = self.weight("wqt", &[d, qd, 1, 1], blob::fp16_transposed(a.wq, qd, d));
        let wkt = self.weight("wkt", &[d, kvd, 1, 1], blob::fp16_transposed(a.wk, kvd, d));
        let wvt = self.weight("wvt", &[d, kvd, 1, 1], blob::fp16_transposed(a.wv, kvd, d));
        let xq = self.b.conv("dx_q", &dq, &wqt);
        let xk = self.b.conv("dx_k", &dk, &wkt);
        let xv = self.b.conv("dx_v", &dv, &wvt);
        let s1 = self.b.add("dx_qk", &xq, &xk);
        let dxn = self.b.add("dxn", &s1, &xv);
        vec![("dxn", dxn)]
    }

    /// A weight block `[1, C, 1, K]` as the matrix `[1, 1, C, K]`.
    fn block(&mut self, name: &str) -> Var {
        let t = self.take(name);
        let (c, k) = (t.dims()[1], t.dims()[3]);
        self.b.reshape(&format!("{name}_m"), &t, &[1, 1, c, k])
    }

    /// `y = Bᵀ·a` for a block `B` `[C, K]` whose rows are the contraction index and an
    /// activation `a` `[1, C, 1, W]`: `[1, K, 1, W]`.
    fn lin_t(&mut self, name: &str, blk: &Var, a: &Var) -> Var {
        let (c, w) = (a.dims()[1], a.dims()[3]);
        let am = self.b.reshape(&format!("{name}_a"), a, &[1, 1, c, w]);
        let y = self.b.matmul(&format!("{name}_mm"), blk, &am, true, false);
        let k = y.dims()[2];
        self.b.reshape(name, &y, &[1, k, 1, w])
    }

    /// `y = B·a` for a block `B` `[C, K]` whose rows are the output index and an activation
    /// `a` `[1, K, 1, W]`: `[1, C, 1, W]`.
    fn lin(&mut self, name: &str, blk: &Var, a: &Var) -> Var {
        let (k, w) = (a.dims()[1], a.dims()[3]);
        let am = self.b.reshape(&format!("{name}_a"), a, &[1, 1, k, w]);
        let y = self.b.matmul(&format!("{name}_mm"), blk, &am, false, false);
        let c = y.dims()[2];
        self.b.reshape(name, &y, &[1, c, 1, w])
    }

    fn dyn_fwd_attn(&mut self, rope: &Rope) -> Vec<(&'static str, Var)> {
        let x = self.take("x");
        let g = self.take("g");
        let wq = self.block("wq_t");
        let wk = self.block("wk_t");
        let wv = self.block("wv_t");
        let wo = self.block("wo");
        let xn = self.rmsnorm("xn", &x, &g);
        let q = self.lin_t("q", &wq, &xn);
        let k = self.lin_t("k", &wk, &xn);
        let v = self.lin_t("v", &wv, &xn);
        self.attention_tail(xn, q, k, v, rope, &mut |gen, attn| gen.lin("o", &wo, attn))
    }

    fn dyn_fwd_ffn(&mut self) -> Vec<(&'static str, Var)> {
        let x2 = self.take("x2");
        let g = self.take("g");
        let w1 = self.block("w1_t");
        let w3 = self.block("w3_t");
        let w2 = self.block("w2");
        let x2n = self.rmsnorm("x2n", &x2, &g);
        let h1 = self.lin_t("h1", &w1, &x2n);
        let h3 = self.lin_t("h3", &w3, &x2n);
        let (h1, h3, gate, _) = self.ffn_tail(h1, h3);
        let f = self.lin("f", &w2, &gate);
        vec![
            ("f", f),
            ("h1", h1),
            ("h3", h3),
            ("gate", gate),
            ("x2n", x2n),
        ]
    }

    /// `Σ_i B_iᵀ·a_i` over (weight block, activation) region pairs sharing the channels.
    fn dyn_linear_sum(&mut self, terms: &[(&str, &str)], out: &str) -> Var {
        let mut acc: Option<Var> = None;
        for (i, (wn, an)) in terms.iter().enumerate() {
            let blk = self.block(wn);
            let a = self.take(an);
            let name = if terms.len() == 1 {
                out.to_string()
            } else {
                format!("{out}_{i}")
            };
            let y = self.lin_t(&name, &blk, &a);
            acc = Some(match acc {
                None => y,
                Some(p) => {
                    let n = if i + 1 == terms.len() {
                        out.to_string()
                    } else {
                        format!("{out}_acc{i}")
                    };
                    self.b.add(&n, &p, &y)
                }
            });
        }
        acc.expect("at least one term")
    }

    fn dyn_ffn_bwd_w13t(&mut self) -> Vec<(&'static str, Var)> {
        let dg = self.take("dgate");
        let h1 = self.take("h1");
        let h3 = self.take("h3");
        let w1 = self.block("w1");
        let w3 = self.block("w3");
        let (dh1, dh3) = self.silu_bwd(&dg, &h1, &h3);
        let a = self.lin_t("dx_w1", &w1, &dh1);
        let c = self.lin_t("dx_w3", &w3, &dh3);
        let dx2n = self.b.add("dx2n", &a, &c);
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
        // sdpaBwd2's input 2·SC + 2D = 7680 (ANE_FACTS §4.2, S = 256).
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
        assert_eq!(kernel_set(Pipeline::Static, &g).len() * c.n_layers, 72);
    }

    #[test]
    fn dynamic_layouts_are_64_byte_rows() {
        let c = Config::preset("stories260k").unwrap();
        let g = Geometry::new(&c, 2, 16);
        for k in kernel_set(Pipeline::Dynamic, &g) {
            let s = spec(Pipeline::Dynamic, k, &g).unwrap();
            if s.input.regions.iter().any(|r| r.weight.is_some()) {
                assert_eq!(s.input.width % 32, 0, "{}", k.name());
                let used: usize = s.input.regions.iter().map(|r| r.cols).sum();
                assert!(used <= s.input.width && s.input.width - used < 32);
            }
        }
        // GQA splits qkvBwd.
        assert!(kernel_set(Pipeline::Dynamic, &g).contains(&Kernel::KvBwd));
        assert!(spec(Pipeline::Dynamic, Kernel::QkvBwd, &g).is_err());
        assert!(spec(Pipeline::Static, Kernel::WoBwd, &g).is_err());
    }
}
