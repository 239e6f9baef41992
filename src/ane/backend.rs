//! The `ane` / `ane-sim` backends: the kernel contract of [`crate::kernels`] over any
//! [`Device`], for both pipelines, on the geometry [`crate::ane::fit`] planned for the chip.
//!
//! Per kernel call: pack the f32 activations into the kernel's input surface (f32 → fp16
//! with `half`'s vectorised slice conversion, through the regions' [`AxisMap`]s: padding
//! slots stay zero, GQA kv heads are tiled), evaluate, unpack the output regions (fp16 →
//! f32; tiled gradients summed over their group). Attention kernels run once per sequence
//! (`W = S`); the attention-free ones once per `chunk` of sequences.
//!
//! Weights arrive as every backend's do: per-call views of one layer, with `prepare()`
//! announcing a new weights version. Each program keeps the version it was built or staged
//! for, per layer; the first call of a contract kernel in a layer under a newer version
//! rebuilds that kernel's programs of the layer from the call's views:
//!
//! - **Static**: `new()` compiles the weight-free `sdpaBwd2` once; the five weight-bearing
//!   kernels are compiled per layer with the weights baked in, each at its first call under
//!   a new version. `prepare(version, pass)` first checks that the device's compile budget
//!   covers the compiles the pass still needs (a training pass under a new version: the
//!   whole update; a validation pass: its forward kernels) and returns [`BudgetExhausted`]
//!   before anything is compiled when it does not (the trainer asks
//!   [`AneKernels::compiles_left`] and [`AneKernels::compiles_per_update`] before each step
//!   and checkpoints + re-execs itself first). Input/output surfaces are shared by the
//!   layers.
//! - **Dynamic**: `new()` compiles every program once; each weight-carrying kernel has one
//!   input surface per layer whose weight columns are re-staged (fp16) at the first call
//!   under a new version; each call rewrites only the activation columns. RMSNorm runs on
//!   the CPU in fp32 from the call's gain (the programs take `xn`, `x2n`), as in the
//!   reference. ffnBwd's `dgate` goes surface → surface in fp16.
//!
//! Within one version the weights must not change. The backend holds the first views of a
//! (block, layer) in each version by a fingerprint — every tensor's address, length and
//! [`SAMPLES`] values spread over it — and a later call of that version whose views differ
//! is an error asking for a new version, rather than a silent run on the old copy. (A change
//! that keeps the address and every sampled value is not seen; an optimizer update changes
//! them all.) A kernel running on the CPU after a refusal reads the views directly.

use crate::ane::chip::Profile;
use crate::ane::compile_queue::{CompileQueue, Ticket, Timeline};
use crate::ane::device::{Device, ProgramId, SurfaceId};
use crate::ane::fit::{self, Plan};
use crate::ane::mil::kernels::{
    dense, generate, kernel_set, tensor_shape, Kernel, KernelSpec, LayerWeights, Pipeline,
    SurfaceLayout,
};
use crate::kernels::cpu::CpuKernels;
use crate::kernels::ops;
use crate::kernels::{
    AttnFwd, AttnWeights, BackendStats, FfnBwd, FfnFwd, FfnWeights, Kernels, Pass, SdpaBwd1,
    SdpaBwd2, ShapesChecked, Spec,
};
use crate::model::Config;
use anyhow::{anyhow, bail, Context, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::collections::BTreeMap;
use std::time::Instant;

/// The static pipeline's next pass needs more compiles (its kernels not yet built for the
/// weights version) than the process has left. Returned by `prepare()` before anything is
/// compiled; the trainer finds it with
/// `err.downcast_ref::<BudgetExhausted>()` (also through added context), checkpoints and
/// restarts the process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the static pipeline needs {needed} compiles for this pass under the new weights but only \
     {left} of the process's {budget} remain: checkpoint and restart the process"
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
    /// The weight views the kernel takes (`None`: weight-free).
    fn block(self) -> Option<Block> {
        match self {
            Contract::FwdAttn | Contract::SdpaBwd1 | Contract::QkvBwd => Some(Block::Attn),
            Contract::FwdFfn | Contract::FfnBwd => Some(Block::Ffn),
            Contract::SdpaBwd2 => None,
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

/// The two weight blocks of a layer, as the kernel calls pass them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Block {
    Attn,
    Ffn,
}

/// Values sampled per tensor by a [`Fingerprint`].
pub const SAMPLES: usize = 64;

/// What a call's weight views are: per tensor its address, its length and the bits of
/// [`SAMPLES`] values evenly spread over it (first and last included).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint(Vec<(usize, usize, [u32; SAMPLES])>);

impl Fingerprint {
    fn of(w: &LayerWeights, b: Block) -> Fingerprint {
        use crate::model::LayerTensor::*;
        let ts: &[_] = match b {
            Block::Attn => &[AttentionNorm, Wq, Wk, Wv, Wo],
            Block::Ffn => &[FfnNorm, W1, W2, W3],
        };
        Fingerprint(
            ts.iter()
                .map(|&t| {
                    let m = w.tensor(t);
                    let mut v = [0u32; SAMPLES];
                    if !m.is_empty() {
                        for (i, x) in v.iter_mut().enumerate() {
                            *x = m[i * (m.len() - 1) / (SAMPLES - 1)].to_bits();
                        }
                    }
                    (m.as_ptr() as usize, m.len(), v)
                })
                .collect(),
        )
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

/// The reason [`AneKernels::placement`] gives for a Qwen3 model's fwd_attn on the CPU.
pub const QK_NORM_ON_CPU: &str = "Qwen3 q/k norms";

/// The Neural Engine kernels over a device.
pub struct AneKernels {
    dev: Box<dyn Device>,
    spec: Spec,
    plan: Plan,
    name: String,
    specs: BTreeMap<Kernel, KernelSpec>,
    io: BTreeMap<Kernel, Io>,
    /// Programs used by every layer (sdpaBwd2; everything in the dynamic pipeline).
    shared: BTreeMap<Kernel, ProgramId>,
    /// Static pipeline: per (kernel, layer).
    per_layer: BTreeMap<(Kernel, usize), ProgramId>,
    /// The version `prepare()` announced last (`None`: none yet, or it was refused).
    version: Option<u64>,
    /// Per weight-bearing (kernel, layer): the version its program (static) or its input
    /// surface's weight columns (dynamic) were built from.
    built: BTreeMap<(Kernel, usize), u64>,
    /// Per (block, layer): the version and fingerprint of the first views of that version.
    seen: BTreeMap<(Block, usize), (u64, Fingerprint)>,
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
    /// Contract kernels placed on the CPU by design for this model, with the reason (Qwen3's
    /// per-head q/k norms have no Neural Engine program: its fwd_attn runs on the CPU).
    placed_cpu: BTreeMap<Contract, &'static str>,
    /// Fallbacks not yet taken by [`Kernels::take_fallbacks`].
    pending: Vec<crate::kernels::Fallback>,
    cpu_ms: f64,
    /// Static pipeline under profile rule C25: the background compile thread.
    queue: Option<CompileQueue>,
    /// The pass `prepare()` announced last.
    pass: Pass,
    /// Per weight-bearing (kernel, layer): the submitted compile and its version.
    tickets: BTreeMap<(Kernel, usize), (Ticket, u64)>,
    /// The Neural Engine's time line in the device's estimates (compiles and evaluations).
    timeline: Timeline,
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
        let spec = Spec::new(cfg, batch, seq);
        let specs: BTreeMap<Kernel, KernelSpec> =
            plan.specs.iter().map(|s| (s.kernel, s.clone())).collect();
        let mut me = AneKernels {
            name: device.name().to_string(),
            dev: device,
            cpu: CpuKernels::new(spec.clone()),
            spec,
            specs,
            plan,
            io: BTreeMap::new(),
            shared: BTreeMap::new(),
            per_layer: BTreeMap::new(),
            version: None,
            built: BTreeMap::new(),
            seen: BTreeMap::new(),
            stats: BackendStats::default(),
            kstats: BTreeMap::new(),
            scratch32: Vec::new(),
            inv_rms: Vec::new(),
            fallback,
            on_cpu: BTreeMap::new(),
            placed_cpu: BTreeMap::new(),
            pending: Vec::new(),
            cpu_ms: 0.0,
            queue: None,
            tickets: BTreeMap::new(),
            pass: Pass::Training,
            timeline: Timeline::default(),
        };
        if cfg.qk_norm {
            me.placed_cpu.insert(Contract::FwdAttn, QK_NORM_ON_CPU);
        }
        if pipeline == Pipeline::Static && profile.background_compile {
            if let Some(c) = me.dev.background_compiler() {
                me.queue = Some(CompileQueue::new(c)?);
            }
        }
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

    /// Compiles one weight update makes (0 for dynamic): every weight-bearing kernel of
    /// every layer, each at its first call under the new version.
    pub fn compiles_per_update(&self) -> u64 {
        self.plan.compiles_per_update()
    }

    /// Static pipeline: the compiles a `pass` under weights version `v` still needs — its
    /// weight-bearing kernels of every layer not built for `v` and not moved to the CPU.
    fn compiles_needed(&self, v: u64, pass: Pass) -> u64 {
        let kernels: Vec<Kernel> = kernel_set(Pipeline::Static)
            .into_iter()
            .filter(|&k| {
                k.has_weights()
                    && !self.on_cpu(Contract::of(k))
                    && (pass == Pass::Training
                        || matches!(Contract::of(k), Contract::FwdAttn | Contract::FwdFfn))
            })
            .collect();
        (0..self.spec.layers)
            .flat_map(|l| kernels.iter().map(move |&k| (k, l)))
            .filter(|kl| self.built.get(kl) != Some(&v))
            .count() as u64
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
        let p = generate(self.plan.pipeline, k, &self.plan.geo, w, &self.spec.rope)?;
        let id = self.dev.compile(&p).map_err(|e| DeviceRefused {
            kernel: k.name(),
            message: format!("compile: {e:#}"),
        })?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        self.timeline
            .serial_compile(self.dev.estimated_compile_ms(id).unwrap_or(0.0));
        self.compiled(k, ms);
        Ok(id)
    }

    fn compiled(&mut self, k: Kernel, ms: f64) {
        self.stats.compile_ms += ms;
        if let Some(st) = self.kstats.get_mut(&k) {
            st.compiles += 1;
            st.compile_ms += ms;
        }
        self.stats.compiles = self.dev.compiles();
    }

    /// Static pipeline: the program of `k` for `layer` under version `v` — the background
    /// compile submitted by [`Kernels::upcoming`] when there is one (waiting for it only
    /// now), else compiled here.
    fn obtain(&mut self, k: Kernel, layer: usize, w: &LayerWeights, v: u64) -> Result<ProgramId> {
        match self.tickets.remove(&(k, layer)) {
            Some((t, tv)) if tv == v => self.collect(k, t),
            Some((t, _)) => {
                self.discard(k, t)?;
                self.compile(k, Some(w))
            }
            None => self.compile(k, Some(w)),
        }
    }

    /// A background compile for a version that was never run: installed (so the compile
    /// budget counts it, as the hardware does) and released.
    fn discard(&mut self, k: Kernel, t: Ticket) -> Result<()> {
        if let Ok(id) = self.collect(k, t) {
            self.dev.free(id)?;
        }
        Ok(())
    }

    /// Waits for a background compile and installs it on the device.
    fn collect(&mut self, k: Kernel, t: Ticket) -> Result<ProgramId> {
        let q = self.queue.as_mut().expect("tickets come from the queue");
        let r = q.wait(t, &mut self.timeline).map_err(|e| DeviceRefused {
            kernel: k.name(),
            message: format!("compile (background): {e:#}"),
        })?;
        self.stats.compile_waited_ms += r.waited_ms;
        self.stats.background_compiles += 1;
        let id = self.dev.install(r.compiled).map_err(|e| DeviceRefused {
            kernel: k.name(),
            message: format!("install: {e:#}"),
        })?;
        self.compiled(k, r.compile_wall_ms);
        Ok(id)
    }

    /// Records the first views of `b` in `layer` under version `v`, or checks later views
    /// against them.
    fn see(&mut self, what: &str, b: Block, layer: usize, w: &LayerWeights, v: u64) -> Result<()> {
        let fp = Fingerprint::of(w, b);
        match self.seen.get(&(b, layer)) {
            Some((sv, f)) if *sv == v => {
                if *f != fp {
                    bail!(
                        "{what} of layer {layer}: the weights differ from those this backend was \
                         given earlier in weights version {v}; announce a new version \
                         (prepare) whenever the weights change"
                    );
                }
            }
            _ => {
                self.seen.insert((b, layer), (v, fp));
            }
        }
        Ok(())
    }

    /// Before contract kernel `c` of `layer` runs on the device with weight views `w`:
    /// checks that a version was announced and that `w` are the weights of this version seen
    /// so far, then rebuilds the kernel's programs (static) or weight columns (dynamic) of
    /// the layer that are older than the version.
    fn sync(&mut self, c: Contract, layer: usize, w: &LayerWeights) -> Result<()> {
        let Some(v) = self.version else {
            bail!(
                "{}: prepare() has not announced a weights version yet (or refused the last one)",
                c.name()
            );
        };
        let Some(b) = c.block() else {
            return Ok(());
        };
        self.see(c.name(), b, layer, w, v)?;
        let pipeline = self.plan.pipeline;
        for k in kernel_set(pipeline) {
            if Contract::of(k) != c || !k.has_weights() || self.built.get(&(k, layer)) == Some(&v) {
                continue;
            }
            match pipeline {
                Pipeline::Static => {
                    if let Some(old) = self.per_layer.remove(&(k, layer)) {
                        self.dev.free(old)?;
                    }
                    let id = self
                        .obtain(k, layer, w, v)
                        .with_context(|| format!("layer {layer}"))?;
                    self.per_layer.insert((k, layer), id);
                }
                Pipeline::Dynamic => self.stage(k, layer, w)?,
            }
            self.built.insert((k, layer), v);
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
            self.timeline.eval(e);
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
        let (b, s) = (self.spec.dims.batch, self.spec.dims.seq);
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

    /// Writes the weight columns of dynamic kernel `k`'s input surface of `layer` from `w`
    /// (nothing for a kernel without weight columns).
    fn stage(&mut self, k: Kernel, layer: usize, w: &LayerWeights) -> Result<()> {
        let t = Instant::now();
        let lay = &self.specs[&k].input;
        if !lay.regions.iter().any(|r| r.weight.is_some()) {
            return Ok(()); // all its weights are upstream (sdpaBwd1 takes Woᵀ·dx2)
        }
        let s = self.io[&k].inputs[layer];
        let width = lay.width;
        let mut blocks = Vec::new();
        for r in lay.regions.iter() {
            let Some(src) = r.weight else { continue };
            let m = w.tensor(src.tensor);
            let shape = tensor_shape(&self.plan.geo, src.tensor);
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
                    let o = (r.ch0 + i) * width + r.col0;
                    buf[o..o + cols].convert_from_f32_slice(&d[i * cols..][..cols]);
                }
            }
        })?;
        self.stats.weight_stages += 1;
        self.io_done(k, t);
        Ok(())
    }

    fn on_cpu(&self, c: Contract) -> bool {
        self.on_cpu.contains_key(&c) || self.placed_cpu.contains_key(&c)
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

    /// Where each contract kernel runs: `ane` (or `ane-sim`), `cpu` (after a refusal) or
    /// `cpu (<reason>)` when placed there by design for this model.
    pub fn placement(&self) -> Vec<(&'static str, String)> {
        Contract::ALL
            .iter()
            .map(|&c| {
                let d = if let Some(why) = self.placed_cpu.get(&c) {
                    format!("cpu ({why})")
                } else if self.on_cpu(c) {
                    "cpu".to_string()
                } else {
                    self.name.clone()
                };
                (c.name(), d)
            })
            .collect()
    }

    /// Dynamic pipeline: `out = rmsnorm(x)·g` on the CPU (fp32).
    fn cpu_norm(&mut self, out: &mut [f32], x: &[f32], g: &[f32]) {
        self.inv_rms.resize(self.spec.dims.n(), 0.0);
        ops::rmsnorm_fwd(out, &mut self.inv_rms, x, g, self.spec.eps);
    }
}

impl AneKernels {
    fn ane_fwd_attn(
        &mut self,
        layer: usize,
        x: &[f32],
        w: &AttnWeights,
        out: AttnFwd,
    ) -> Result<()> {
        self.sync(Contract::FwdAttn, layer, &LayerWeights::attn(w))?;
        let n = self.spec.dims.n();
        let AttnFwd {
            xn,
            q,
            k: kk,
            v,
            attn,
            o,
        } = out;
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
                self.cpu_norm(xn, x, w.g);
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

    fn ane_fwd_ffn(&mut self, layer: usize, x2: &[f32], w: &FfnWeights, out: FfnFwd) -> Result<()> {
        self.sync(Contract::FwdFfn, layer, &LayerWeights::ffn(w))?;
        let n = self.spec.dims.n();
        let FfnFwd {
            x2n,
            h1,
            h3,
            gate,
            f,
        } = out;
        let k = Kernel::FwdFfn;
        let dynamic = self.plan.pipeline == Pipeline::Dynamic;
        if dynamic {
            self.cpu_norm(x2n, x2, w.g);
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
        dy: &[f32],
        h1: &[f32],
        h3: &[f32],
        w: &FfnWeights,
        out: FfnBwd,
    ) -> Result<()> {
        self.sync(Contract::FfnBwd, layer, &LayerWeights::ffn(w))?;
        let n = self.spec.dims.n();
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
        dx2: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        w: &AttnWeights,
        out: SdpaBwd1,
    ) -> Result<()> {
        self.sync(Contract::SdpaBwd1, layer, &LayerWeights::attn(w))?;
        let d = self.spec.dims;
        let (qd, n, s) = (d.q_dim(), d.n(), d.seq);
        let per = d.n_heads * s * s;
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
        probs: &[f32],
        dp: &[f32],
        q: &[f32],
        k: &[f32],
        out: SdpaBwd2,
    ) -> Result<()> {
        self.sync(Contract::SdpaBwd2, layer, &LayerWeights::default())?;
        let d = self.spec.dims;
        let (n, s) = (d.n(), d.seq);
        let per = d.n_heads * s * s;
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
        dq: &[f32],
        dk: &[f32],
        dv: &[f32],
        w: &AttnWeights,
        dxn: &mut [f32],
    ) -> Result<()> {
        self.sync(Contract::QkvBwd, layer, &LayerWeights::attn(w))?;
        let n = self.spec.dims.n();
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

    fn spec(&self) -> &Spec {
        &self.spec
    }

    /// A new version marks every program (static) or weight column (dynamic) stale; they are
    /// rebuilt from the views of each kernel's first call under it. The static pipeline
    /// refuses a pass whose kernels not yet compiled for the version need more compiles than
    /// are left ([`BudgetExhausted`]; a training pass under a new version needs
    /// [`AneKernels::compiles_per_update`]), before compiling anything; the kernels then fail
    /// until a version is accepted.
    fn prepare(&mut self, weights_version: u64, pass: Pass) -> Result<()> {
        self.version = None;
        if self.plan.pipeline == Pipeline::Static {
            let need = self.compiles_needed(weights_version, pass);
            let left = self.compiles_left();
            if left < need {
                return Err(BudgetExhausted {
                    needed: need,
                    left,
                    budget: self.dev.compile_budget(),
                }
                .into());
            }
        }
        self.version = Some(weights_version);
        self.pass = pass;
        Ok(())
    }

    /// Static pipeline with a background compiler (C25): submits every weight-bearing
    /// program of this version that is not built or submitted yet, in the order the step
    /// evaluates them (the forward's layer by layer, then the backward's from the last layer),
    /// so each compiles while the ones before it run.
    fn upcoming(&mut self, layers: &[crate::kernels::LayerViews]) -> Result<()> {
        let (Some(v), true) = (self.version, self.queue.is_some()) else {
            return Ok(());
        };
        let ks = kernel_set(Pipeline::Static);
        let forward = |k: &Kernel| matches!(Contract::of(*k), Contract::FwdAttn | Contract::FwdFfn);
        let mut order: Vec<(Kernel, usize)> = Vec::new();
        for l in 0..layers.len() {
            order.extend(ks.iter().filter(|k| forward(k)).map(|&k| (k, l)));
        }
        let backward = if self.pass == Pass::Training {
            layers.len()
        } else {
            0 // an evaluation pass needs no backward programs
        };
        for l in (0..backward).rev() {
            for c in [Contract::FfnBwd, Contract::SdpaBwd1, Contract::QkvBwd] {
                order.extend(
                    ks.iter()
                        .filter(|k| Contract::of(**k) == c)
                        .map(|&k| (k, l)),
                );
            }
        }
        for (k, l) in order {
            let c = Contract::of(k);
            let (Some(b), true) = (c.block(), k.has_weights()) else {
                continue;
            };
            if self.on_cpu(c)
                || self.built.get(&(k, l)) == Some(&v)
                || self.tickets.get(&(k, l)).is_some_and(|t| t.1 == v)
            {
                continue;
            }
            let w = match b {
                Block::Attn => LayerWeights::attn(&layers[l].attn),
                Block::Ffn => LayerWeights::ffn(&layers[l].ffn),
            };
            self.see(c.name(), b, l, &w, v)?;
            let p = generate(
                Pipeline::Static,
                k,
                &self.plan.geo,
                Some(&w),
                &self.spec.rope,
            )?;
            let q = self.queue.as_mut().expect("checked above");
            let t = q.submit(p, &self.timeline)?;
            if let Some((old, _)) = self.tickets.insert((k, l), (t, v)) {
                self.discard(k, old)?;
            }
        }
        Ok(())
    }

    fn fwd_attn(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
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
            match self.ane_fwd_attn(layer, x, w, o) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::FwdAttn, e)?,
            }
        }
        self.timed_cpu(|c| c.fwd_attn(ok, layer, x, w, out))
    }

    fn fwd_ffn(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
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
            match self.ane_fwd_ffn(layer, x2, w, o) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::FwdFfn, e)?,
            }
        }
        self.timed_cpu(|c| c.fwd_ffn(ok, layer, x2, w, out))
    }

    fn ffn_bwd(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
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
            match self.ane_ffn_bwd(layer, dy, h1, h3, w, o) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::FfnBwd, e)?,
            }
        }
        self.timed_cpu(|c| c.ffn_bwd(ok, layer, dy, h1, h3, w, out))
    }

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
    ) -> Result<()> {
        if !self.on_cpu(Contract::SdpaBwd1) {
            let o = SdpaBwd1 {
                dv: &mut *out.dv,
                dp: &mut *out.dp,
                probs: &mut *out.probs,
            };
            match self.ane_sdpa_bwd1(layer, dx2, q, k, v, w, o) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::SdpaBwd1, e)?,
            }
        }
        self.timed_cpu(|c| c.sdpa_bwd1(ok, layer, dx2, q, k, v, w, out))
    }

    fn sdpa_bwd2(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
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
            match self.ane_sdpa_bwd2(layer, probs, dp, q, k, o) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::SdpaBwd2, e)?,
            }
        }
        self.timed_cpu(|c| c.sdpa_bwd2(ok, layer, probs, dp, q, k, out))
    }

    fn qkv_bwd(
        &mut self,
        ok: ShapesChecked,
        layer: usize,
        dq: &[f32],
        dk: &[f32],
        dv: &[f32],
        w: &AttnWeights,
        dxn: &mut [f32],
    ) -> Result<()> {
        if !self.on_cpu(Contract::QkvBwd) {
            match self.ane_qkv_bwd(layer, dq, dk, dv, w, &mut *dxn) {
                Ok(()) => return Ok(()),
                Err(e) => self.fail_over(Contract::QkvBwd, e)?,
            }
        }
        self.timed_cpu(|c| c.qkv_bwd(ok, layer, dq, dk, dv, w, dxn))
    }

    fn stats(&self) -> BackendStats {
        let mut s = self.stats.clone();
        s.compiles = self.dev.compiles();
        s.fallback_cpu_ms = self.cpu_ms;
        s.measured = self.dev.name() == "ane";
        s.on_cpu = self.on_cpu.keys().map(|c| c.name()).collect();
        if !s.measured {
            s.compile_est_ms = Some(self.timeline.compile_ms);
            s.compile_exposed_est_ms = Some(self.timeline.exposed_ms);
        }
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
