//! The `ane` / `ane-sim` backends: the kernel contract of [`crate::kernels`] over any
//! [`Device`], for both pipelines.
//!
//! Per kernel call: pack the f32 activations into the kernel's input surface (f32 → fp16
//! with `half`'s vectorised slice conversion, row by row into the regions of
//! [`KernelSpec`]), evaluate, unpack the output regions (fp16 → f32). Attention kernels run
//! once per sequence (`W = S`); the attention-free ones once over all `B·S` columns.
//!
//! - **Static**: `new()` compiles the weight-free `sdpaBwd2` once; `prepare()` compiles the
//!   five weight-bearing kernels of every layer whenever `weights_version` changes, after
//!   checking that the device's compile budget covers all of them (the trainer asks
//!   [`AneKernels::compiles_left`] and [`AneKernels::compiles_per_update`] first and
//!   checkpoints + re-execs itself when it does not). Input/output surfaces are shared by
//!   the layers.
//! - **Dynamic**: `new()` compiles every program once; each weight-carrying kernel has one
//!   input surface per layer whose weight columns `prepare()` re-stages (fp16) when
//!   `weights_version` changes; each call rewrites only the activation columns. Intermediate
//!   results that feed a second program of the same call (ffnBwd's `dgate`, sdpaBwd1's
//!   `da`) go surface → surface in fp16 without a round trip through f32.
//!
//! Weight arguments of the kernel calls are ignored by these backends: the weights come
//! from the arena given to `prepare()`, the version number says when they changed.

use crate::ane::device::{Device, ProgramId, SurfaceId};
use crate::ane::mil::kernels::{
    generate, kernel_set, spec, Geometry, Kernel, KernelSpec, LayerWeights, Pipeline, SurfaceLayout,
};
use crate::kernels::ops::Rope;
use crate::kernels::{
    AttnFwd, AttnWeights, BackendStats, Dims, FfnBwd, FfnFwd, FfnWeights, Kernels, SdpaBwd1,
    SdpaBwd2,
};
use crate::model::{Config, Params};
use anyhow::{anyhow, bail, Context, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::collections::BTreeMap;
use std::time::Instant;

/// The static pipeline's next weight update needs more compiles than the process has left.
/// Returned by `prepare()` before anything is compiled; the trainer finds it with
/// `err.downcast_ref::<BudgetExhausted>()` (also through added context), checkpoints and
/// restarts the process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the static pipeline needs {needed} compiles for this weight update but only {left} of the \
     process's {budget} remain: checkpoint and restart the process"
)]
pub struct BudgetExhausted {
    pub needed: u64,
    pub left: u64,
    pub budget: u64,
}

/// Timing of one kernel type.
#[derive(Clone, Debug, Default)]
pub struct KernelStat {
    pub name: &'static str,
    pub evals: u64,
    /// Wall time of the evaluations (the simulator's interpretation time for `ane-sim`).
    pub eval_ms: f64,
    /// Estimated Neural Engine time from the simulator's cost model; `None` on real hardware.
    pub est_ane_ms: Option<f64>,
}

/// An input or output region of a kernel call, with its f32 matrix: row `c` of the region
/// is `data[c·stride + col0 ..][.. region.cols]`.
struct Src<'a> {
    region: &'static str,
    data: &'a [f32],
    stride: usize,
    col0: usize,
}

struct Dst<'a> {
    region: &'static str,
    data: &'a mut [f32],
    stride: usize,
    col0: usize,
}

struct Io {
    /// One per layer for the dynamic pipeline's weight-carrying kernels, else one.
    inputs: Vec<SurfaceId>,
    output: SurfaceId,
}

/// The Neural Engine kernels over a device.
pub struct AneKernels {
    dev: Box<dyn Device>,
    cfg: Config,
    dims: Dims,
    geo: Geometry,
    pipeline: Pipeline,
    name: String,
    rope: Rope,
    specs: BTreeMap<Kernel, KernelSpec>,
    io: BTreeMap<Kernel, Io>,
    /// Programs used by every layer (sdpaBwd2; everything in the dynamic pipeline).
    shared: BTreeMap<Kernel, ProgramId>,
    /// Static pipeline: per (kernel, layer).
    per_layer: BTreeMap<(Kernel, usize), ProgramId>,
    weights_version: Option<u64>,
    stats: BackendStats,
    kstats: BTreeMap<Kernel, KernelStat>,
    /// fp16 scratch for surface → surface copies.
    scratch16: Vec<f16>,
    /// f32 scratch (transposed weights, GQA partial sums).
    scratch32: Vec<f32>,
}

fn pack(dev: &mut dyn Device, s: SurfaceId, lay: &SurfaceLayout, srcs: &[Src]) -> Result<()> {
    let w = lay.width;
    dev.write_surface(s, &mut |buf| {
        for src in srcs {
            let r = lay.region(src.region);
            if r.col0 == 0 && r.cols == w && src.col0 == 0 && src.stride == w {
                buf[r.ch0 * w..(r.ch0 + r.ch) * w].convert_from_f32_slice(&src.data[..r.ch * w]);
                continue;
            }
            for c in 0..r.ch {
                let from = &src.data[c * src.stride + src.col0..][..r.cols];
                let o = (r.ch0 + c) * w + r.col0;
                buf[o..o + r.cols].convert_from_f32_slice(from);
            }
        }
    })
}

fn unpack(dev: &mut dyn Device, s: SurfaceId, lay: &SurfaceLayout, dsts: &mut [Dst]) -> Result<()> {
    let w = lay.width;
    dev.read_surface(s, &mut |buf| {
        for d in dsts.iter_mut() {
            let r = lay.region(d.region);
            if r.col0 == 0 && r.cols == w && d.col0 == 0 && d.stride == w {
                buf[r.ch0 * w..(r.ch0 + r.ch) * w].convert_to_f32_slice(&mut d.data[..r.ch * w]);
                continue;
            }
            for c in 0..r.ch {
                let o = (r.ch0 + c) * w + r.col0;
                let to = &mut d.data[c * d.stride + d.col0..][..r.cols];
                buf[o..o + r.cols].convert_to_f32_slice(to);
            }
        }
    })
}

fn check_len(what: &str, s: &[f32], n: usize) -> Result<()> {
    if s.len() != n {
        bail!("{what} has {} values, expected {n}", s.len());
    }
    Ok(())
}

impl AneKernels {
    /// A backend for `cfg` at `batch` sequences of `seq` tokens per call, on `device`.
    /// Compiles what never changes (static: `sdpaBwd2`; dynamic: everything) and creates
    /// the surfaces.
    pub fn new(
        device: Box<dyn Device>,
        cfg: &Config,
        batch: usize,
        seq: usize,
        pipeline: Pipeline,
    ) -> Result<AneKernels> {
        cfg.validate().context("Neural Engine backend")?;
        if batch == 0 || seq == 0 {
            bail!("Neural Engine backend: batch and seq must be positive");
        }
        if seq > cfg.seq_len {
            bail!(
                "Neural Engine backend: seq {seq} exceeds the model's seq_len {} (RoPE table)",
                cfg.seq_len
            );
        }
        let geo = Geometry::new(cfg, batch, seq);
        let dims = Dims::new(cfg, batch, seq);
        let kernels = kernel_set(pipeline, &geo);
        let mut specs = BTreeMap::new();
        for &k in &kernels {
            specs.insert(k, spec(pipeline, k, &geo)?);
        }
        let mut me = AneKernels {
            name: device.name().to_string(),
            dev: device,
            cfg: cfg.clone(),
            dims,
            geo,
            pipeline,
            rope: Rope::new(cfg.head_dim, seq, cfg.rope_theta),
            specs,
            io: BTreeMap::new(),
            shared: BTreeMap::new(),
            per_layer: BTreeMap::new(),
            weights_version: None,
            stats: BackendStats::default(),
            kstats: BTreeMap::new(),
            scratch16: Vec::new(),
            scratch32: Vec::new(),
        };
        if pipeline == Pipeline::Static {
            let per_process = me.compiles_per_update() + 1;
            if per_process > me.dev.compile_budget() {
                bail!(
                    "the static pipeline compiles {} programs per weight update (+1 once) for {} \
                     layers, more than the device's budget of {} compiles per process; use the \
                     dynamic pipeline",
                    me.compiles_per_update(),
                    cfg.n_layers,
                    me.dev.compile_budget()
                );
            }
        }
        for &k in &kernels {
            let sp = &me.specs[&k];
            let (ie, oe) = (sp.input.elems(), sp.output.elems());
            let per_layer_inputs = pipeline == Pipeline::Dynamic
                && sp.input.regions.iter().any(|r| r.weight.is_some());
            let n_in = if per_layer_inputs { cfg.n_layers } else { 1 };
            let mut inputs = Vec::with_capacity(n_in);
            for _ in 0..n_in {
                inputs.push(me.dev.create_surface(ie)?);
            }
            let output = me.dev.create_surface(oe)?;
            me.io.insert(k, Io { inputs, output });
            me.kstats.insert(
                k,
                KernelStat {
                    name: k.name(),
                    ..Default::default()
                },
            );
            if pipeline == Pipeline::Dynamic || !k.has_weights() {
                let id = me.compile(k, None)?;
                me.shared.insert(k, id);
            }
        }
        Ok(me)
    }

    pub fn pipeline(&self) -> Pipeline {
        self.pipeline
    }

    /// Compiles the device may still make in this process.
    pub fn compiles_left(&self) -> u64 {
        self.dev
            .compile_budget()
            .saturating_sub(self.dev.compiles())
    }

    /// Compiles one `prepare()` with a new weights version makes (0 for dynamic).
    pub fn compiles_per_update(&self) -> u64 {
        match self.pipeline {
            Pipeline::Dynamic => 0,
            Pipeline::Static => {
                let per_layer = kernel_set(Pipeline::Static, &self.geo)
                    .iter()
                    .filter(|k| k.has_weights())
                    .count();
                (per_layer * self.cfg.n_layers) as u64
            }
        }
    }

    /// Evaluations and times per kernel type, in pipeline order.
    pub fn kernel_report(&self) -> Vec<KernelStat> {
        kernel_set(self.pipeline, &self.geo)
            .iter()
            .map(|k| self.kstats[k].clone())
            .collect()
    }

    /// The device's estimated Neural Engine milliseconds of all evaluations so far, where
    /// it has a cost model.
    pub fn estimated_ane_ms(&self) -> Option<f64> {
        self.kstats
            .values()
            .map(|s| s.est_ane_ms)
            .try_fold(0.0, |a, b| b.map(|b| a + b))
    }

    fn compile(&mut self, k: Kernel, w: Option<&LayerWeights>) -> Result<ProgramId> {
        let t = Instant::now();
        let p = generate(self.pipeline, k, &self.geo, w, &self.rope)?;
        let id = self.dev.compile(&p)?;
        self.stats.compile_ms += t.elapsed().as_secs_f64() * 1e3;
        self.stats.compiles = self.dev.compiles();
        Ok(id)
    }

    fn check(&self, what: &str, layer: usize, d: &Dims) -> Result<()> {
        if *d != self.dims {
            bail!(
                "{what}: called with {d:?}, but this Neural Engine backend was built for {:?}",
                self.dims
            );
        }
        if layer >= self.cfg.n_layers {
            bail!(
                "{what}: layer {layer} of a {}-layer model",
                self.cfg.n_layers
            );
        }
        if self.weights_version.is_none() {
            bail!("{what}: prepare() has not been given the weights yet");
        }
        Ok(())
    }

    fn program(&self, k: Kernel, layer: usize) -> Result<ProgramId> {
        self.shared
            .get(&k)
            .or_else(|| self.per_layer.get(&(k, layer)))
            .copied()
            .ok_or_else(|| anyhow!("{} of layer {layer} is not compiled", k.name()))
    }

    fn input(&self, k: Kernel, layer: usize) -> SurfaceId {
        let io = &self.io[&k];
        if io.inputs.len() == 1 {
            io.inputs[0]
        } else {
            io.inputs[layer]
        }
    }

    fn pack(&mut self, k: Kernel, layer: usize, srcs: &[Src]) -> Result<()> {
        let t = Instant::now();
        let s = self.input(k, layer);
        pack(self.dev.as_mut(), s, &self.specs[&k].input, srcs)?;
        self.stats.io_ms += t.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    fn unpack(&mut self, k: Kernel, dsts: &mut [Dst]) -> Result<()> {
        let t = Instant::now();
        let s = self.io[&k].output;
        unpack(self.dev.as_mut(), s, &self.specs[&k].output, dsts)?;
        self.stats.io_ms += t.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    fn eval(&mut self, k: Kernel, layer: usize) -> Result<()> {
        let p = self.program(k, layer)?;
        let (i, o) = (self.input(k, layer), self.io[&k].output);
        let t = Instant::now();
        self.dev
            .evaluate(p, &[i], &[o])
            .with_context(|| format!("{} (layer {layer})", k.name()))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let est = self.dev.estimated_eval_ms(p);
        let st = self.kstats.get_mut(&k).unwrap();
        st.evals += 1;
        st.eval_ms += ms;
        if let Some(e) = est {
            *st.est_ane_ms.get_or_insert(0.0) += e;
        }
        Ok(())
    }

    /// Copies fp16 output region `from` of kernel `a` into input region `to` of kernel `b`
    /// (same shape), without converting.
    fn forward_f16(
        &mut self,
        a: Kernel,
        from: &str,
        b: Kernel,
        layer: usize,
        to: &str,
    ) -> Result<()> {
        let t = Instant::now();
        let (ra, la) = {
            let l = &self.specs[&a].output;
            (l.region(from).clone(), l.width)
        };
        let (rb, lb) = {
            let l = &self.specs[&b].input;
            (l.region(to).clone(), l.width)
        };
        debug_assert_eq!((ra.ch, ra.cols), (rb.ch, rb.cols));
        let mut tmp = std::mem::take(&mut self.scratch16);
        tmp.resize(ra.ch * ra.cols, f16::ZERO);
        let out = self.io[&a].output;
        self.dev.read_surface(out, &mut |buf| {
            for c in 0..ra.ch {
                let o = (ra.ch0 + c) * la + ra.col0;
                tmp[c * ra.cols..(c + 1) * ra.cols].copy_from_slice(&buf[o..o + ra.cols]);
            }
        })?;
        let inp = self.input(b, layer);
        self.dev.write_surface(inp, &mut |buf| {
            for c in 0..rb.ch {
                let o = (rb.ch0 + c) * lb + rb.col0;
                buf[o..o + rb.cols].copy_from_slice(&tmp[c * rb.cols..(c + 1) * rb.cols]);
            }
        })?;
        self.scratch16 = tmp;
        self.stats.io_ms += t.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    /// Writes the weight columns of every dynamic kernel's per-layer input surface.
    fn stage_weights(&mut self, params: &Params) -> Result<()> {
        let t = Instant::now();
        let kernels: Vec<Kernel> = self.specs.keys().copied().collect();
        let mut tmp = std::mem::take(&mut self.scratch32);
        for k in kernels {
            let lay = self.specs[&k].input.clone();
            if !lay.regions.iter().any(|r| r.weight.is_some()) {
                continue;
            }
            for layer in 0..self.cfg.n_layers {
                let s = self.io[&k].inputs[layer];
                let w = lay.width;
                let mut res = Ok(());
                self.dev.write_surface(s, &mut |buf| {
                    for r in lay.regions.iter() {
                        let Some(src) = r.weight else { continue };
                        let m = params.layer(layer, src.tensor);
                        if m.len() != r.ch * r.cols {
                            res = Err(anyhow!(
                                "{} layer {layer}: {} has {} values, region {} needs {}",
                                k.name(),
                                src.tensor.name(layer),
                                m.len(),
                                r.name,
                                r.ch * r.cols
                            ));
                            return;
                        }
                        let rows: &[f32] = if src.transposed {
                            // m is [cols, ch]; row c of the block is column c of m.
                            tmp.resize(m.len(), 0.0);
                            for j in 0..r.cols {
                                for c in 0..r.ch {
                                    tmp[c * r.cols + j] = m[j * r.ch + c];
                                }
                            }
                            &tmp
                        } else {
                            m
                        };
                        for c in 0..r.ch {
                            let o = c * w + r.col0;
                            buf[o..o + r.cols]
                                .convert_from_f32_slice(&rows[c * r.cols..][..r.cols]);
                        }
                    }
                })?;
                res?;
            }
        }
        self.scratch32 = tmp;
        self.stats.io_ms += t.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    fn compile_static(&mut self, params: &Params) -> Result<()> {
        let need = self.compiles_per_update();
        let left = self.compiles_left();
        if left < need {
            return Err(BudgetExhausted {
                needed: need,
                left,
                budget: self.dev.compile_budget(),
            }
            .into());
        }
        let old: Vec<ProgramId> = std::mem::take(&mut self.per_layer).into_values().collect();
        for p in old {
            self.dev.free(p)?;
        }
        let kernels: Vec<Kernel> = kernel_set(Pipeline::Static, &self.geo)
            .into_iter()
            .filter(|k| k.has_weights())
            .collect();
        for layer in 0..self.cfg.n_layers {
            let w = LayerWeights::from_params(params, layer);
            for &k in &kernels {
                let id = self
                    .compile(k, Some(&w))
                    .with_context(|| format!("layer {layer}"))?;
                self.per_layer.insert((k, layer), id);
            }
        }
        Ok(())
    }

    fn check_rope(&self, rope: &Rope) -> Result<()> {
        let n = self.geo.seq * self.geo.head_dim / 2;
        if rope.head_dim != self.geo.head_dim
            || rope.cos.len() < n
            || rope.cos[..n] != self.rope.cos[..]
            || rope.sin[..n] != self.rope.sin[..]
        {
            bail!(
                "fwd_attn: the RoPE tables differ from the ones compiled into the programs \
                 (head_dim {}, theta {})",
                self.cfg.head_dim,
                self.cfg.rope_theta
            );
        }
        Ok(())
    }
}

impl Kernels for AneKernels {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(&mut self, params: &Params, weights_version: u64) -> Result<()> {
        let pc = params.config();
        if (
            pc.dim,
            pc.hidden_dim,
            pc.n_layers,
            pc.n_heads,
            pc.n_kv_heads,
            pc.head_dim,
        ) != (
            self.cfg.dim,
            self.cfg.hidden_dim,
            self.cfg.n_layers,
            self.cfg.n_heads,
            self.cfg.n_kv_heads,
            self.cfg.head_dim,
        ) {
            bail!("prepare: the parameters' config differs from the backend's");
        }
        if self.weights_version == Some(weights_version) {
            return Ok(());
        }
        self.weights_version = None;
        match self.pipeline {
            Pipeline::Static => self.compile_static(params)?,
            Pipeline::Dynamic => self.stage_weights(params)?,
        }
        self.weights_version = Some(weights_version);
        Ok(())
    }

    fn fwd_attn(
        &mut self,
        layer: usize,
        d: &Dims,
        rope: &Rope,
        x: &[f32],
        _w: &AttnWeights,
        out: AttnFwd,
    ) -> Result<()> {
        self.check("fwd_attn", layer, d)?;
        self.check_rope(rope)?;
        let (dm, qd, kvd, n, s) = (d.dim, d.q_dim(), d.kv_dim(), d.n(), d.seq);
        check_len("fwd_attn x", x, dm * n)?;
        let k = Kernel::FwdAttn;
        let AttnFwd {
            xn,
            q,
            k: kk,
            v,
            attn,
            o,
        } = out;
        check_len("fwd_attn xn", xn, dm * n)?;
        check_len("fwd_attn q", q, qd * n)?;
        check_len("fwd_attn k", kk, kvd * n)?;
        check_len("fwd_attn v", v, kvd * n)?;
        check_len("fwd_attn attn", attn, qd * n)?;
        check_len("fwd_attn o", o, dm * n)?;
        for b in 0..d.batch {
            let c0 = b * s;
            self.pack(
                k,
                layer,
                &[Src {
                    region: "x",
                    data: x,
                    stride: n,
                    col0: c0,
                }],
            )?;
            self.eval(k, layer)?;
            let mk = |region, data| Dst {
                region,
                data,
                stride: n,
                col0: c0,
            };
            self.unpack(
                k,
                &mut [
                    mk("o", &mut *o),
                    mk("q", &mut *q),
                    mk("k", &mut *kk),
                    mk("v", &mut *v),
                    mk("attn", &mut *attn),
                    mk("xn", &mut *xn),
                ],
            )?;
        }
        Ok(())
    }

    fn fwd_ffn(
        &mut self,
        layer: usize,
        d: &Dims,
        x2: &[f32],
        _w: &FfnWeights,
        out: FfnFwd,
    ) -> Result<()> {
        self.check("fwd_ffn", layer, d)?;
        let (dm, h, n) = (d.dim, d.hidden, d.n());
        check_len("fwd_ffn x2", x2, dm * n)?;
        let FfnFwd {
            x2n,
            h1,
            h3,
            gate,
            f,
        } = out;
        for (nm, s, len) in [
            ("x2n", &*x2n, dm),
            ("h1", &*h1, h),
            ("h3", &*h3, h),
            ("gate", &*gate, h),
            ("f", &*f, dm),
        ] {
            check_len(&format!("fwd_ffn {nm}"), s, len * n)?;
        }
        let k = Kernel::FwdFfn;
        self.pack(
            k,
            layer,
            &[Src {
                region: "x2",
                data: x2,
                stride: n,
                col0: 0,
            }],
        )?;
        self.eval(k, layer)?;
        let mk = |region, data| Dst {
            region,
            data,
            stride: n,
            col0: 0,
        };
        self.unpack(
            k,
            &mut [
                mk("f", f),
                mk("h1", h1),
                mk("h3", h3),
                mk("gate", gate),
                mk("x2n", x2n),
            ],
        )
    }

    fn ffn_bwd(
        &mut self,
        layer: usize,
        d: &Dims,
        dy: &[f32],
        h1: &[f32],
        h3: &[f32],
        _w: &FfnWeights,
        out: FfnBwd,
    ) -> Result<()> {
        self.check("ffn_bwd", layer, d)?;
        let (dm, h, n) = (d.dim, d.hidden, d.n());
        check_len("ffn_bwd dy", dy, dm * n)?;
        check_len("ffn_bwd h1", h1, h * n)?;
        check_len("ffn_bwd h3", h3, h * n)?;
        check_len("ffn_bwd dx2n", out.dx2n, dm * n)?;
        check_len("ffn_bwd dh1", out.dh1, h * n)?;
        check_len("ffn_bwd dh3", out.dh3, h * n)?;
        let src = |region, data| Src {
            region,
            data,
            stride: n,
            col0: 0,
        };
        let last = match self.pipeline {
            Pipeline::Static => {
                let k = Kernel::FfnBwd;
                self.pack(k, layer, &[src("dy", dy), src("h1", h1), src("h3", h3)])?;
                self.eval(k, layer)?;
                k
            }
            Pipeline::Dynamic => {
                let (k1, k2) = (Kernel::FfnBwdW2t, Kernel::FfnBwdW13t);
                self.pack(k1, layer, &[src("dy", dy)])?;
                self.eval(k1, layer)?;
                self.forward_f16(k1, "dgate", k2, layer, "dgate")?;
                self.pack(k2, layer, &[src("h1", h1), src("h3", h3)])?;
                self.eval(k2, layer)?;
                k2
            }
        };
        let FfnBwd { dx2n, dh1, dh3 } = out;
        let mk = |region, data| Dst {
            region,
            data,
            stride: n,
            col0: 0,
        };
        self.unpack(
            last,
            &mut [mk("dx2n", dx2n), mk("dh1", dh1), mk("dh3", dh3)],
        )
    }

    fn sdpa_bwd1(
        &mut self,
        layer: usize,
        d: &Dims,
        dx2: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        _wo: &[f32],
        out: SdpaBwd1,
    ) -> Result<()> {
        self.check("sdpa_bwd1", layer, d)?;
        let (dm, qd, kvd, n, s) = (d.dim, d.q_dim(), d.kv_dim(), d.n(), d.seq);
        let per = d.n_heads * s * s;
        check_len("sdpa_bwd1 dx2", dx2, dm * n)?;
        check_len("sdpa_bwd1 q", q, qd * n)?;
        check_len("sdpa_bwd1 k", k, kvd * n)?;
        check_len("sdpa_bwd1 v", v, kvd * n)?;
        check_len("sdpa_bwd1 dv", out.dv, kvd * n)?;
        check_len("sdpa_bwd1 dp", out.dp, d.probs_len())?;
        check_len("sdpa_bwd1 probs", out.probs, d.probs_len())?;
        let kern = Kernel::SdpaBwd1;
        let mut da16 = Vec::new();
        if self.pipeline == Pipeline::Dynamic {
            // da = Woᵀ·dx2 over all columns, kept in fp16 for the per-sequence packing.
            let kw = Kernel::WoBwd;
            self.pack(
                kw,
                layer,
                &[Src {
                    region: "dx2",
                    data: dx2,
                    stride: n,
                    col0: 0,
                }],
            )?;
            self.eval(kw, layer)?;
            let t = Instant::now();
            let lay = self.specs[&kw].output.clone();
            da16 = std::mem::take(&mut self.scratch16);
            da16.resize(qd * n, f16::ZERO);
            let out_s = self.io[&kw].output;
            let buf_ref = &mut da16;
            self.dev.read_surface(out_s, &mut |buf| {
                let r = lay.region("da");
                buf_ref.copy_from_slice(&buf[r.ch0 * lay.width..(r.ch0 + r.ch) * lay.width]);
            })?;
            self.stats.io_ms += t.elapsed().as_secs_f64() * 1e3;
        }
        let SdpaBwd1 { dv, dp, probs } = out;
        for b in 0..d.batch {
            let c0 = b * s;
            let src = |region, data| Src {
                region,
                data,
                stride: n,
                col0: c0,
            };
            match self.pipeline {
                Pipeline::Static => {
                    self.pack(
                        kern,
                        layer,
                        &[src("q", q), src("k", k), src("v", v), src("dx2", dx2)],
                    )?;
                }
                Pipeline::Dynamic => {
                    self.pack(kern, layer, &[src("q", q), src("k", k), src("v", v)])?;
                    let t = Instant::now();
                    let lay = self.specs[&kern].input.clone();
                    let inp = self.input(kern, layer);
                    let da = &da16;
                    self.dev.write_surface(inp, &mut |buf| {
                        let r = lay.region("da");
                        for c in 0..r.ch {
                            let o = (r.ch0 + c) * lay.width;
                            buf[o..o + s].copy_from_slice(&da[c * n + c0..c * n + c0 + s]);
                        }
                    })?;
                    self.stats.io_ms += t.elapsed().as_secs_f64() * 1e3;
                }
            }
            self.eval(kern, layer)?;
            self.unpack(
                kern,
                &mut [
                    Dst {
                        region: "dv",
                        data: &mut *dv,
                        stride: n,
                        col0: c0,
                    },
                    Dst {
                        region: "probs",
                        data: &mut probs[b * per..(b + 1) * per],
                        stride: s,
                        col0: 0,
                    },
                    Dst {
                        region: "dp",
                        data: &mut dp[b * per..(b + 1) * per],
                        stride: s,
                        col0: 0,
                    },
                ],
            )?;
        }
        if !da16.is_empty() {
            self.scratch16 = da16;
        }
        Ok(())
    }

    fn sdpa_bwd2(
        &mut self,
        layer: usize,
        d: &Dims,
        probs: &[f32],
        dp: &[f32],
        q: &[f32],
        k: &[f32],
        out: SdpaBwd2,
    ) -> Result<()> {
        self.check("sdpa_bwd2", layer, d)?;
        let (qd, kvd, n, s) = (d.q_dim(), d.kv_dim(), d.n(), d.seq);
        let per = d.n_heads * s * s;
        check_len("sdpa_bwd2 probs", probs, d.probs_len())?;
        check_len("sdpa_bwd2 dp", dp, d.probs_len())?;
        check_len("sdpa_bwd2 q", q, qd * n)?;
        check_len("sdpa_bwd2 k", k, kvd * n)?;
        check_len("sdpa_bwd2 dq", out.dq, qd * n)?;
        check_len("sdpa_bwd2 dk", out.dk, kvd * n)?;
        let kern = Kernel::SdpaBwd2;
        let SdpaBwd2 { dq, dk } = out;
        for b in 0..d.batch {
            let c0 = b * s;
            self.pack(
                kern,
                layer,
                &[
                    Src {
                        region: "probs",
                        data: &probs[b * per..(b + 1) * per],
                        stride: s,
                        col0: 0,
                    },
                    Src {
                        region: "dp",
                        data: &dp[b * per..(b + 1) * per],
                        stride: s,
                        col0: 0,
                    },
                    Src {
                        region: "q",
                        data: q,
                        stride: n,
                        col0: c0,
                    },
                    Src {
                        region: "k",
                        data: k,
                        stride: n,
                        col0: c0,
                    },
                ],
            )?;
            self.eval(kern, layer)?;
            self.unpack(
                kern,
                &mut [
                    Dst {
                        region: "dq",
                        data: &mut *dq,
                        stride: n,
                        col0: c0,
                    },
                    Dst {
                        region: "dk",
                        data: &mut *dk,
                        stride: n,
                        col0: c0,
                    },
                ],
            )?;
        }
        Ok(())
    }

    fn qkv_bwd(
        &mut self,
        layer: usize,
        d: &Dims,
        dq: &[f32],
        dk: &[f32],
        dv: &[f32],
        _w: &AttnWeights,
        dxn: &mut [f32],
    ) -> Result<()> {
        self.check("qkv_bwd", layer, d)?;
        let (dm, qd, kvd, n) = (d.dim, d.q_dim(), d.kv_dim(), d.n());
        check_len("qkv_bwd dq", dq, qd * n)?;
        check_len("qkv_bwd dk", dk, kvd * n)?;
        check_len("qkv_bwd dv", dv, kvd * n)?;
        check_len("qkv_bwd dxn", dxn, dm * n)?;
        let src = |region, data| Src {
            region,
            data,
            stride: n,
            col0: 0,
        };
        if self.specs.contains_key(&Kernel::QkvBwd) {
            let k = Kernel::QkvBwd;
            self.pack(k, layer, &[src("dq", dq), src("dk", dk), src("dv", dv)])?;
            self.eval(k, layer)?;
            return self.unpack(
                k,
                &mut [Dst {
                    region: "dxn",
                    data: dxn,
                    stride: n,
                    col0: 0,
                }],
            );
        }
        // Dynamic GQA: dxn = Wqᵀ·dq (qBwd) + Wkᵀ·dk + Wvᵀ·dv (kvBwd).
        let (kq, kkv) = (Kernel::QBwd, Kernel::KvBwd);
        self.pack(kq, layer, &[src("dq", dq)])?;
        self.eval(kq, layer)?;
        self.unpack(
            kq,
            &mut [Dst {
                region: "dxq",
                data: &mut *dxn,
                stride: n,
                col0: 0,
            }],
        )?;
        self.pack(kkv, layer, &[src("dk", dk), src("dv", dv)])?;
        self.eval(kkv, layer)?;
        let mut part = std::mem::take(&mut self.scratch32);
        part.resize(dm * n, 0.0);
        self.unpack(
            kkv,
            &mut [Dst {
                region: "dxkv",
                data: &mut part,
                stride: n,
                col0: 0,
            }],
        )?;
        for (a, b) in dxn.iter_mut().zip(&part) {
            *a += b;
        }
        self.scratch32 = part;
        Ok(())
    }

    fn stats(&self) -> BackendStats {
        let mut s = self.stats.clone();
        s.compiles = self.dev.compiles();
        s
    }

    fn compiles_left(&self) -> Option<u64> {
        Some(AneKernels::compiles_left(self))
    }

    fn compiles_per_update(&self) -> u64 {
        AneKernels::compiles_per_update(self)
    }

    fn needs_loss_scaling(&self) -> bool {
        true // fp16 surfaces: gradients underflow without it
    }
}
