//! The `ane` / `ane-sim` backends: the kernel contract of [`crate::kernels`] over any
//! [`Device`], for both pipelines, on the geometry [`crate::ane::fit`] planned for the chip.
//!
//! Per kernel call: pack the f32 activations into the kernel's input surface (f32 → fp16
//! with `half`'s vectorised slice conversion, through the regions' [`AxisMap`]s: padding
//! slots stay zero, GQA kv heads are tiled), evaluate, unpack the output regions (fp16 →
//! f32; tiled gradients summed over their group). Attention kernels run once per sequence
//! (`W = S`); the attention-free ones once per `chunk` of sequences.
//!
//! - **Static**: `new()` compiles the weight-free `sdpaBwd2` once; `prepare()` compiles the
//!   five weight-bearing kernels of every layer whenever `weights_version` changes, after
//!   checking that the device's compile budget covers all of them (the trainer asks
//!   [`AneKernels::compiles_left`] and [`AneKernels::compiles_per_update`] first and
//!   checkpoints + re-execs itself when it does not). Input/output surfaces are shared by
//!   the layers.
//! - **Dynamic**: `new()` compiles every program once; each weight-carrying kernel has one
//!   input surface per layer whose weight columns `prepare()` re-stages (fp16) when
//!   `weights_version` changes; each call rewrites only the activation columns. RMSNorm runs
//!   on the CPU in fp32 (the programs take `xn`, `x2n`), as in the reference. ffnBwd's
//!   `dgate` goes surface → surface in fp16.
//!
//! Weight arguments of the kernel calls are ignored by these backends: the weights come
//! from the arena given to `prepare()`, the version number says when they changed.

use crate::ane::chip::Profile;
use crate::ane::device::{Device, ProgramId, SurfaceId};
use crate::ane::fit::{self, Plan};
use crate::ane::mil::kernels::{
    dense, generate, kernel_set, tensor_shape, Kernel, KernelSpec, LayerWeights, Pipeline,
    SurfaceLayout,
};
use crate::kernels::cpu::CpuKernels;
use crate::kernels::ops::{self, Rope};
use crate::kernels::{
    AttnFwd, AttnWeights, BackendStats, Dims, FfnBwd, FfnFwd, FfnWeights, Kernels, SdpaBwd1,
    SdpaBwd2,
};
use crate::model::{Config, LayerTensor, Params};
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

/// The device refused a program (compile) or an evaluation: what the backend may route
/// to the CPU instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Neural Engine refused {kernel}: {message}")]
pub struct DeviceRefused {
    pub kernel: &'static str,
    pub message: String,
}

/// The six kernels of the contract ([`crate::kernels::Kernels`]), the unit a refused
/// program falls back to the CPU by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Contract {
    FwdAttn,
    FwdFfn,
    FfnBwd,
    SdpaBwd1,
    SdpaBwd2,
    QkvBwd,
}

impl Contract {
    pub const ALL: [Contract; 6] = [
        Contract::FwdAttn,
        Contract::FwdFfn,
        Contract::FfnBwd,
        Contract::SdpaBwd1,
        Contract::SdpaBwd2,
        Contract::QkvBwd,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Contract::FwdAttn => "fwd_attn",
            Contract::FwdFfn => "fwd_ffn",
            Contract::FfnBwd => "ffn_bwd",
            Contract::SdpaBwd1 => "sdpa_bwd1",
            Contract::SdpaBwd2 => "sdpa_bwd2",
            Contract::QkvBwd => "qkv_bwd",
        }
    }
    /// The contract kernel a program serves.
    pub fn of(k: Kernel) -> Contract {
        match k {
            Kernel::FwdAttn | Kernel::WoFwd => Contract::FwdAttn,
            Kernel::FwdFfn => Contract::FwdFfn,
            Kernel::FfnBwd | Kernel::FfnBwdW2t | Kernel::FfnBwdW13t => Contract::FfnBwd,
            Kernel::WoBwd | Kernel::SdpaBwd1 => Contract::SdpaBwd1,
            Kernel::SdpaBwd2 => Contract::SdpaBwd2,
            Kernel::QkvBwd => Contract::QkvBwd,
        }
    }
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
    pub compiles: u64,
    pub compile_ms: f64,
    /// Packing and unpacking this kernel's surfaces (f32 ↔ fp16).
    pub io_ms: f64,
}

/// An input or output region of a kernel call, with its f32 matrix: model row `r`, model
/// column `j` of the region is `data[r·stride + col0 + j]`.
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
    plan: Plan,
    name: String,
    rope: Rope,
    specs: BTreeMap<Kernel, KernelSpec>,
    io: BTreeMap<Kernel, Io>,
    /// Programs used by every layer (sdpaBwd2; everything in the dynamic pipeline).
    shared: BTreeMap<Kernel, ProgramId>,
    /// Static pipeline: per (kernel, layer).
    per_layer: BTreeMap<(Kernel, usize), ProgramId>,
    weights_version: Option<u64>,
    /// Dynamic pipeline: per layer, the attention and FFN RMSNorm gains (CPU norms).
    gains: Vec<(Vec<f32>, Vec<f32>)>,
    stats: BackendStats,
    kstats: BTreeMap<Kernel, KernelStat>,
    /// f32 scratch (da, inverse RMS).
    scratch32: Vec<f32>,
    inv_rms: Vec<f32>,
    /// Route a contract kernel whose program the device refuses to the CPU instead of
    /// failing.
    fallback: bool,
    cpu: CpuKernels,
    /// Contract kernels running on the CPU, with the device's reason.
    on_cpu: BTreeMap<Contract, String>,
    /// Fallbacks not yet taken by [`Kernels::take_fallbacks`].
    pending: Vec<crate::kernels::Fallback>,
    cpu_ms: f64,
}

fn pack(dev: &mut dyn Device, s: SurfaceId, lay: &SurfaceLayout, srcs: &[Src]) -> Result<()> {
    let w = lay.width;
    dev.write_surface(s, &mut |buf| {
        for src in srcs {
            let r = lay.region(src.region);
            let (cm, rm) = (r.cols, r.rows);
            for i in 0..r.ch() {
                let Some(si) = rm.src(i) else { continue };
                let row = &src.data[si * src.stride + src.col0..];
                let o = (r.ch0 + i) * w + r.col0;
                for b in 0..cm.n {
                    let d = o + b * cm.blk_p;
                    buf[d..d + cm.blk].convert_from_f32_slice(&row[b * cm.blk..][..cm.blk]);
                }
            }
        }
    })
}

fn unpack(dev: &mut dyn Device, s: SurfaceId, lay: &SurfaceLayout, dsts: &mut [Dst]) -> Result<()> {
    let w = lay.width;
    dev.read_surface(s, &mut |buf| {
        let mut tmp = Vec::new();
        for d in dsts.iter_mut() {
            let r = lay.region(d.region);
            let (cm, rm) = (r.cols, r.rows);
            for i in 0..r.ch() {
                let Some(si) = rm.src(i) else { continue };
                let first = rm.first_copy(i);
                if !first && !r.sum_copies {
                    continue;
                }
                let o = (r.ch0 + i) * w + r.col0;
                let row = &mut d.data[si * d.stride + d.col0..];
                for b in 0..cm.n {
                    let from = &buf[o + b * cm.blk_p..][..cm.blk];
                    let to = &mut row[b * cm.blk..][..cm.blk];
                    if first {
                        from.convert_to_f32_slice(to);
                    } else {
                        tmp.resize(cm.blk, 0.0);
                        from.convert_to_f32_slice(&mut tmp);
                        for (a, v) in to.iter_mut().zip(&tmp) {
                            *a += v;
                        }
                    }
                }
            }
        }
    })
}

fn src<'a>(region: &'static str, data: &'a [f32], stride: usize, col0: usize) -> Src<'a> {
    Src {
        region,
        data,
        stride,
        col0,
    }
}

fn dst<'a>(region: &'static str, data: &'a mut [f32], stride: usize, col0: usize) -> Dst<'a> {
    Dst {
        region,
        data,
        stride,
        col0,
    }
}

fn check_len(what: &str, s: &[f32], n: usize) -> Result<()> {
    if s.len() != n {
        bail!("{what} has {} values, expected {n}", s.len());
    }
    Ok(())
}

impl AneKernels {
    /// A backend for `cfg` at `batch` sequences of `seq` tokens per call, on `device`,
    /// planned for the device's chip profile (`conservative` when the device names none).
    /// Compiles what never changes (static: `sdpaBwd2`; dynamic: everything) and creates
    /// the surfaces.
    pub fn new(
        device: Box<dyn Device>,
        cfg: &Config,
        batch: usize,
        seq: usize,
        pipeline: Pipeline,
    ) -> Result<AneKernels> {
        let profile = device.profile().unwrap_or_else(Profile::conservative);
        AneKernels::with_profile(device, cfg, batch, seq, pipeline, &profile)
    }

    /// As [`AneKernels::new`], planned for `profile`; any refusal by the device is an error.
    pub fn with_profile(
        device: Box<dyn Device>,
        cfg: &Config,
        batch: usize,
        seq: usize,
        pipeline: Pipeline,
        profile: &Profile,
    ) -> Result<AneKernels> {
        AneKernels::build(device, cfg, batch, seq, pipeline, profile, false)
    }

    /// As [`AneKernels::with_profile`]; with `fallback`, a contract kernel whose program the
    /// device refuses (at compile or evaluation) runs on the CPU instead, reported once
    /// through [`Kernels::take_fallbacks`].
    pub fn build(
        device: Box<dyn Device>,
        cfg: &Config,
        batch: usize,
        seq: usize,
        pipeline: Pipeline,
        profile: &Profile,
        fallback: bool,
    ) -> Result<AneKernels> {
        let plan = fit::plan(cfg, batch, seq, pipeline, profile, device.compile_budget())
            .context("Neural Engine backend")?;
        let dims = Dims::new(cfg, batch, seq);
        let specs: BTreeMap<Kernel, KernelSpec> =
            plan.specs.iter().map(|s| (s.kernel, s.clone())).collect();
        let mut me = AneKernels {
            name: device.name().to_string(),
            dev: device,
            cfg: cfg.clone(),
            dims,
            rope: Rope::for_config(cfg, seq),
            specs,
            plan,
            io: BTreeMap::new(),
            shared: BTreeMap::new(),
            per_layer: BTreeMap::new(),
            weights_version: None,
            gains: Vec::new(),
            stats: BackendStats::default(),
            kstats: BTreeMap::new(),
            scratch32: Vec::new(),
            inv_rms: Vec::new(),
            fallback,
            cpu: CpuKernels::with_eps(cfg.norm_eps),
            on_cpu: BTreeMap::new(),
            pending: Vec::new(),
            cpu_ms: 0.0,
        };
        for k in kernel_set(pipeline) {
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
                if me.on_cpu(Contract::of(k)) {
                    continue;
                }
                match me.compile(k, None) {
                    Ok(id) => {
                        me.shared.insert(k, id);
                    }
                    Err(e) => me.fail_over(Contract::of(k), e)?,
                }
            }
        }
        Ok(me)
    }

    pub fn pipeline(&self) -> Pipeline {
        self.plan.pipeline
    }

    /// The plan the programs follow (padding, tiles, compiles).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Compiles the device may still make in this process.
    pub fn compiles_left(&self) -> u64 {
        self.dev
            .compile_budget()
            .saturating_sub(self.dev.compiles())
    }

    /// Compiles one `prepare()` with a new weights version makes (0 for dynamic).
    pub fn compiles_per_update(&self) -> u64 {
        self.plan.compiles_per_update()
    }

    /// Evaluations and times per kernel type, in pipeline order.
    pub fn kernel_report(&self) -> Vec<KernelStat> {
        kernel_set(self.plan.pipeline)
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
        let p = generate(self.plan.pipeline, k, &self.plan.geo, w, &self.rope)?;
        let id = self.dev.compile(&p).map_err(|e| DeviceRefused {
            kernel: k.name(),
            message: format!("compile: {e:#}"),
        })?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        self.stats.compile_ms += ms;
        if let Some(st) = self.kstats.get_mut(&k) {
            st.compiles += 1;
            st.compile_ms += ms;
        }
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
        self.io_done(k, t);
        Ok(())
    }

    fn unpack(&mut self, k: Kernel, dsts: &mut [Dst]) -> Result<()> {
        let t = Instant::now();
        let s = self.io[&k].output;
        unpack(self.dev.as_mut(), s, &self.specs[&k].output, dsts)?;
        self.io_done(k, t);
        Ok(())
    }

    fn io_done(&mut self, k: Kernel, t: Instant) {
        let ms = t.elapsed().as_secs_f64() * 1e3;
        self.stats.io_ms += ms;
        if let Some(st) = self.kstats.get_mut(&k) {
            st.io_ms += ms;
        }
    }

    fn eval(&mut self, k: Kernel, layer: usize) -> Result<()> {
        let p = self.program(k, layer)?;
        let (i, o) = (self.input(k, layer), self.io[&k].output);
        let t = Instant::now();
        self.dev
            .evaluate(p, &[i], &[o])
            .map_err(|e| DeviceRefused {
                kernel: k.name(),
                message: format!("evaluation (layer {layer}): {e:#}"),
            })?;
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

    /// One evaluation of `k`: pack `srcs`, evaluate, unpack into `dsts`. The columns of
    /// every source and destination start at `col0` (token columns) unless the region is a
    /// score block (its own per-sequence slice).
    fn run(&mut self, k: Kernel, layer: usize, srcs: &[Src], dsts: &mut [Dst]) -> Result<()> {
        self.pack(k, layer, srcs)?;
        self.eval(k, layer)?;
        self.unpack(k, dsts)
    }

    /// Token-column offsets of the evaluations of `k`: one per sequence or per chunk.
    fn col0s(&self, k: Kernel) -> Vec<usize> {
        let (b, s) = (self.dims.batch, self.dims.seq);
        let per = if k.per_sequence() {
            1
        } else {
            self.plan.geo.chunk
        };
        (0..b / per).map(|t| t * per * s).collect()
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
        debug_assert_eq!((ra.ch(), ra.width()), (rb.ch(), rb.width()));
        let (ch, cols) = (ra.ch(), ra.width());
        let mut tmp = vec![f16::ZERO; ch * cols];
        let out = self.io[&a].output;
        self.dev.read_surface(out, &mut |buf| {
            for c in 0..ch {
                let o = (ra.ch0 + c) * la + ra.col0;
                tmp[c * cols..(c + 1) * cols].copy_from_slice(&buf[o..o + cols]);
            }
        })?;
        let inp = self.input(b, layer);
        self.dev.write_surface(inp, &mut |buf| {
            for c in 0..ch {
                let o = (rb.ch0 + c) * lb + rb.col0;
                buf[o..o + cols].copy_from_slice(&tmp[c * cols..(c + 1) * cols]);
            }
        })?;
        self.io_done(b, t);
        Ok(())
    }

    /// Writes the weight columns of every dynamic kernel's per-layer input surface.
    fn stage_weights(&mut self, params: &Params) -> Result<()> {
        let t = Instant::now();
        let geo = self.plan.geo.clone();
        let kernels: Vec<Kernel> = self.specs.keys().copied().collect();
        for k in kernels {
            let lay = self.specs[&k].input.clone();
            if !lay.regions.iter().any(|r| r.weight.is_some()) {
                continue;
            }
            for layer in 0..self.cfg.n_layers {
                let s = self.io[&k].inputs[layer];
                let w = lay.width;
                let mut blocks = Vec::new();
                for r in lay.regions.iter() {
                    let Some(src) = r.weight else { continue };
                    let m = params.layer(layer, src.tensor);
                    let shape = tensor_shape(&geo, src.tensor);
                    if m.len() != shape.0 * shape.1 {
                        bail!(
                            "{} layer {layer}: {} has {} values, expected {}×{}",
                            k.name(),
                            src.tensor.name(layer),
                            m.len(),
                            shape.0,
                            shape.1
                        );
                    }
                    blocks.push((r, dense(m, shape, src.transposed, r.rows, r.cols)));
                }
                self.dev.write_surface(s, &mut |buf| {
                    for (r, d) in &blocks {
                        let cols = r.width();
                        for i in 0..r.ch() {
                            let o = (r.ch0 + i) * w + r.col0;
                            buf[o..o + cols].convert_from_f32_slice(&d[i * cols..][..cols]);
                        }
                    }
                })?;
            }
        }
        self.gains = (0..self.cfg.n_layers)
            .map(|l| {
                (
                    params.layer(l, LayerTensor::AttentionNorm).to_vec(),
                    params.layer(l, LayerTensor::FfnNorm).to_vec(),
                )
            })
            .collect();
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
        let kernels: Vec<Kernel> = kernel_set(Pipeline::Static)
            .into_iter()
            .filter(|k| k.has_weights())
            .collect();
        for layer in 0..self.cfg.n_layers {
            let w = LayerWeights::from_params(params, layer);
            for &k in &kernels {
                if self.on_cpu(Contract::of(k)) {
                    continue;
                }
                match self.compile(k, Some(&w)) {
                    Ok(id) => {
                        self.per_layer.insert((k, layer), id);
                    }
                    Err(e) => {
                        self.fail_over(Contract::of(k), e.context(format!("layer {layer}")))?
                    }
                }
            }
        }
        Ok(())
    }

    fn on_cpu(&self, c: Contract) -> bool {
        self.on_cpu.contains_key(&c)
    }

    /// After `e`: with fallback enabled and a device refusal, `c` moves to the CPU (Ok);
    /// anything else is returned.
    fn fail_over(&mut self, c: Contract, e: anyhow::Error) -> Result<()> {
        if !self.fallback || e.downcast_ref::<DeviceRefused>().is_none() {
            return Err(e);
        }
        let reason = format!("{e:#}");
        self.on_cpu.insert(c, reason.clone());
        self.pending.push(crate::kernels::Fallback {
            kernel: c.name(),
            error: reason,
        });
        Ok(())
    }

    fn timed_cpu(&mut self, f: impl FnOnce(&mut CpuKernels) -> Result<()>) -> Result<()> {
        let t = Instant::now();
        let r = f(&mut self.cpu);
        self.cpu_ms += t.elapsed().as_secs_f64() * 1e3;
        r
    }

    /// Where each contract kernel runs: `ane` (or `ane-sim`) or `cpu`.
    pub fn placement(&self) -> Vec<(&'static str, String)> {
        Contract::ALL
            .iter()
            .map(|&c| {
                let d = if self.on_cpu(c) {
                    "cpu".to_string()
                } else {
                    self.name.clone()
                };
                (c.name(), d)
            })
            .collect()
    }

    fn check_rope(&self, rope: &Rope) -> Result<()> {
        let n = self.dims.seq * self.cfg.head_dim / 2;
        if rope.head_dim != self.cfg.head_dim
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

    /// Dynamic pipeline: `out = rmsnorm(x)·g` on the CPU (fp32).
    fn cpu_norm(&mut self, out: &mut [f32], x: &[f32], layer: usize, ffn: bool) {
        let (ga, gf) = &self.gains[layer];
        let g = if ffn { gf } else { ga };
        self.inv_rms.resize(self.dims.n(), 0.0);
        ops::rmsnorm_fwd(out, &mut self.inv_rms, x, g, self.cfg.norm_eps);
    }
}

impl AneKernels {
    fn ane_fwd_attn(
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
        let (dm, qd, kvd, n) = (d.dim, d.q_dim(), d.kv_dim(), d.n());
        check_len("fwd_attn x", x, dm * n)?;
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
        let k = Kernel::FwdAttn;
        match self.plan.pipeline {
            Pipeline::Static => {
                for c0 in self.col0s(k) {
                    self.run(
                        k,
                        layer,
                        &[src("x", x, n, c0)],
                        &mut [
                            dst("o", &mut *o, n, c0),
                            dst("q", &mut *q, n, c0),
                            dst("k", &mut *kk, n, c0),
                            dst("v", &mut *v, n, c0),
                            dst("attn", &mut *attn, n, c0),
                            dst("xn", &mut *xn, n, c0),
                        ],
                    )?;
                }
            }
            Pipeline::Dynamic => {
                self.cpu_norm(xn, x, layer, false);
                for c0 in self.col0s(k) {
                    self.run(
                        k,
                        layer,
                        &[src("xn", &*xn, n, c0)],
                        &mut [
                            dst("q", &mut *q, n, c0),
                            dst("k", &mut *kk, n, c0),
                            dst("v", &mut *v, n, c0),
                            dst("attn", &mut *attn, n, c0),
                        ],
                    )?;
                }
                let kw = Kernel::WoFwd;
                for c0 in self.col0s(kw) {
                    self.run(
                        kw,
                        layer,
                        &[src("attn", &*attn, n, c0)],
                        &mut [dst("o", &mut *o, n, c0)],
                    )?;
                }
            }
        }
        Ok(())
    }

    fn ane_fwd_ffn(
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
        let dynamic = self.plan.pipeline == Pipeline::Dynamic;
        if dynamic {
            self.cpu_norm(x2n, x2, layer, true);
        }
        for c0 in self.col0s(k) {
            let mut outs = vec![
                dst("f", &mut *f, n, c0),
                dst("h1", &mut *h1, n, c0),
                dst("h3", &mut *h3, n, c0),
                dst("gate", &mut *gate, n, c0),
            ];
            if dynamic {
                self.run(k, layer, &[src("x2n", &*x2n, n, c0)], &mut outs)?;
            } else {
                outs.push(dst("x2n", &mut *x2n, n, c0));
                self.run(k, layer, &[src("x2", x2, n, c0)], &mut outs)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn ane_ffn_bwd(
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
        let FfnBwd { dx2n, dh1, dh3 } = out;
        let last = match self.plan.pipeline {
            Pipeline::Static => Kernel::FfnBwd,
            Pipeline::Dynamic => Kernel::FfnBwdW13t,
        };
        for c0 in self.col0s(last) {
            match self.plan.pipeline {
                Pipeline::Static => {
                    self.pack(
                        last,
                        layer,
                        &[
                            src("dy", dy, n, c0),
                            src("h1", h1, n, c0),
                            src("h3", h3, n, c0),
                        ],
                    )?;
                }
                Pipeline::Dynamic => {
                    let k1 = Kernel::FfnBwdW2t;
                    self.pack(k1, layer, &[src("dy", dy, n, c0)])?;
                    self.eval(k1, layer)?;
                    self.forward_f16(k1, "dgate", last, layer, "dgate")?;
                    self.pack(last, layer, &[src("h1", h1, n, c0), src("h3", h3, n, c0)])?;
                }
            }
            self.eval(last, layer)?;
            self.unpack(
                last,
                &mut [
                    dst("dx2n", &mut *dx2n, n, c0),
                    dst("dh1", &mut *dh1, n, c0),
                    dst("dh3", &mut *dh3, n, c0),
                ],
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn ane_sdpa_bwd1(
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
        let mut da = std::mem::take(&mut self.scratch32);
        let dynamic = self.plan.pipeline == Pipeline::Dynamic;
        if dynamic {
            // da = Woᵀ·dx2 over all columns (fp16 values, exact in f32).
            da.resize(qd * n, 0.0);
            let kw = Kernel::WoBwd;
            for c0 in self.col0s(kw) {
                self.run(
                    kw,
                    layer,
                    &[src("dx2", dx2, n, c0)],
                    &mut [Dst {
                        region: "da",
                        data: &mut da,
                        stride: n,
                        col0: c0,
                    }],
                )?;
            }
        }
        let SdpaBwd1 { dv, dp, probs } = out;
        for (b, c0) in self.col0s(kern).into_iter().enumerate() {
            let last = if dynamic {
                src("da", &da, n, c0)
            } else {
                src("dx2", dx2, n, c0)
            };
            self.run(
                kern,
                layer,
                &[
                    src("q", q, n, c0),
                    src("k", k, n, c0),
                    src("v", v, n, c0),
                    last,
                ],
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
        self.scratch32 = da;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn ane_sdpa_bwd2(
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
        for (b, c0) in self.col0s(kern).into_iter().enumerate() {
            self.run(
                kern,
                layer,
                &[
                    src("probs", &probs[b * per..(b + 1) * per], s, 0),
                    src("dp", &dp[b * per..(b + 1) * per], s, 0),
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

    #[allow(clippy::too_many_arguments)]
    fn ane_qkv_bwd(
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
        let k = Kernel::QkvBwd;
        for c0 in self.col0s(k) {
            self.run(
                k,
                layer,
                &[
                    src("dq", dq, n, c0),
                    src("dk", dk, n, c0),
                    src("dv", dv, n, c0),
                ],
                &mut [Dst {
                    region: "dxn",
                    data: &mut *dxn,
                    stride: n,
                    col0: c0,
                }],
            )?;
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
        self.cpu.prepare(params, weights_version)?;
        match self.plan.pipeline {
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
        w: &AttnWeights,
        out: AttnFwd,
    ) -> Result<()> {
        if !self.on_cpu(Contract::FwdAttn) {
            let o = AttnFwd {
                xn: &mut *out.xn,
                q: &mut *out.q,
                k: &mut *out.k,
                v: &mut *out.v,
                attn: &mut *out.attn,
                o: &mut *out.o,
            };
            match self.ane_fwd_attn(layer, d, rope, x, w, o) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::FwdAttn, e)?,
            }
        }
        self.timed_cpu(|c| c.fwd_attn(layer, d, rope, x, w, out))
    }

    fn fwd_ffn(
        &mut self,
        layer: usize,
        d: &Dims,
        x2: &[f32],
        w: &FfnWeights,
        out: FfnFwd,
    ) -> Result<()> {
        if !self.on_cpu(Contract::FwdFfn) {
            let o = FfnFwd {
                x2n: &mut *out.x2n,
                h1: &mut *out.h1,
                h3: &mut *out.h3,
                gate: &mut *out.gate,
                f: &mut *out.f,
            };
            match self.ane_fwd_ffn(layer, d, x2, w, o) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::FwdFfn, e)?,
            }
        }
        self.timed_cpu(|c| c.fwd_ffn(layer, d, x2, w, out))
    }

    fn ffn_bwd(
        &mut self,
        layer: usize,
        d: &Dims,
        dy: &[f32],
        h1: &[f32],
        h3: &[f32],
        w: &FfnWeights,
        out: FfnBwd,
    ) -> Result<()> {
        if !self.on_cpu(Contract::FfnBwd) {
            let o = FfnBwd {
                dx2n: &mut *out.dx2n,
                dh1: &mut *out.dh1,
                dh3: &mut *out.dh3,
            };
            match self.ane_ffn_bwd(layer, d, dy, h1, h3, w, o) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::FfnBwd, e)?,
            }
        }
        self.timed_cpu(|c| c.ffn_bwd(layer, d, dy, h1, h3, w, out))
    }

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
    ) -> Result<()> {
        if !self.on_cpu(Contract::SdpaBwd1) {
            let o = SdpaBwd1 {
                dv: &mut *out.dv,
                dp: &mut *out.dp,
                probs: &mut *out.probs,
            };
            match self.ane_sdpa_bwd1(layer, d, dx2, q, k, v, wo, o) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::SdpaBwd1, e)?,
            }
        }
        self.timed_cpu(|c| c.sdpa_bwd1(layer, d, dx2, q, k, v, wo, out))
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
        if !self.on_cpu(Contract::SdpaBwd2) {
            let o = SdpaBwd2 {
                dq: &mut *out.dq,
                dk: &mut *out.dk,
            };
            match self.ane_sdpa_bwd2(layer, d, probs, dp, q, k, o) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::SdpaBwd2, e)?,
            }
        }
        self.timed_cpu(|c| c.sdpa_bwd2(layer, d, probs, dp, q, k, out))
    }

    fn qkv_bwd(
        &mut self,
        layer: usize,
        d: &Dims,
        dq: &[f32],
        dk: &[f32],
        dv: &[f32],
        w: &AttnWeights,
        dxn: &mut [f32],
    ) -> Result<()> {
        if !self.on_cpu(Contract::QkvBwd) {
            match self.ane_qkv_bwd(layer, d, dq, dk, dv, w, &mut *dxn) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::QkvBwd, e)?,
            }
        }
        self.timed_cpu(|c| c.qkv_bwd(layer, d, dq, dk, dv, w, dxn))
    }

    fn stats(&self) -> BackendStats {
        let mut s = self.stats.clone();
        s.compiles = self.dev.compiles();
        s.fallback_cpu_ms = self.cpu_ms;
        s.measured = self.dev.name() == "ane";
        s.on_cpu = self.on_cpu.keys().map(|c| c.name()).collect();
        s.programs = self
            .kernel_report()
            .into_iter()
            .map(|k| crate::kernels::ProgramStat {
                name: k.name,
                compiles: k.compiles,
                compile_ms: k.compile_ms,
                evals: k.evals,
                eval_ms: k.eval_ms,
                est_ms: k.est_ane_ms,
                io_ms: k.io_ms,
            })
            .collect();
        s
    }

    fn take_fallbacks(&mut self) -> Vec<crate::kernels::Fallback> {
        std::mem::take(&mut self.pending)
    }

    fn placement(&self) -> Vec<(&'static str, String)> {
        AneKernels::placement(self)
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
