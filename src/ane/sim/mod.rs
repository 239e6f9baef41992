//! A simulated Neural Engine: parses MIL *text* ([`parse`]), type-checks it against its
//! weight dictionary into a plan and executes it with fp16 storage semantics ([`exec`]),
//! behind the same [`Device`] trait as the real runtime.
//!
//! What it enforces, because the hardware does (docs/ANE.md, "The simulated device"; docs/ANE_HARDWARE.md):
//! - one input and one output surface per request (the hardware's error `0x1d`);
//! - fp16 surfaces `[1, C, 1, W]`, sized exactly to the program's declared tensors;
//! - either MIL dialect, consistently: `program(1.3)` with `main<ios18>`, or `program(1.0)`
//!   with `main<ios16>` (shorthand or typed literals parse to the same tree and execute
//!   bit-identically; which dialect a chip takes is strict mode's rule C9);
//! - a per-process compile budget (default [`DEFAULT_COMPILE_BUDGET`] = 119 for a lenient
//!   device, the profile's 100 in strict mode; configurable), counted per device instance —
//!   the trainer owns one device per process;
//! - weights fixed at compile time (the plan holds copies of the blobs);
//! - `scaled_dot_product_attention` ignores its `attn_mask`;
//! - unknown ops, unknown parameters, non-constant static parameters, declared types that
//!   disagree with the inferred ones, missing blobs and bad blob offsets are compile errors
//!   that name the line.
//!
//! **Strict mode.** [`SimDevice::with_profile`] simulates one chip ([`Profile`]): every compile
//! runs the program checker ([`crate::ane::check`]) and refuses a program that breaks any of
//! the profile's rules, with an error that lists each violation (rule code and name, program
//! line, shape, public source) and names the kernel; the compile budget is the profile's
//! (C14); and on chips whose W-axis slices saturate (C2, M1/M2) a `slice_by_size` that begins
//! at a nonzero W offset turns values with |x| > 4094 into ±inf, so a layout that would
//! overflow there shows up as inf. The backends always run on a device with a profile;
//! [`SimDevice::new`] (no profile, lenient: well-typed programs in either dialect compile)
//! exists for interpreter unit tests.
//!
//! **Injected failures.** [`SimDevice::reject_kernel`] and [`SimDevice::reject_op`] make
//! compiles fail on purpose, to test how callers handle a compiler that refuses a program.
//!
//! It also estimates how long an evaluation would take on the hardware, from the cost model
//! in [`CostModel`] — an estimate, not a measurement.

pub mod exec;
pub mod parse;

use crate::ane::check;
use crate::ane::chip::Profile;
use crate::ane::device::{Device, ProgramId, SurfaceId, DEFAULT_COMPILE_BUDGET};
use crate::ane::mil::Program;
use anyhow::{anyhow, bail, Context, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::collections::BTreeMap;

pub use exec::Plan;

/// Parses and compiles MIL text against a weight dictionary (BLOBFILE path → blob bytes),
/// leniently (no chip profile).
pub fn compile_text(text: &str, weights: &BTreeMap<String, Vec<u8>>) -> Result<Plan> {
    compile_text_for(text, weights, None)
}

/// [`compile_text`] for a chip: with a profile, a program that breaks any of its rules is
/// refused with every violation listed, and the chip's result-changing behaviour (C2
/// saturation) is simulated.
pub fn compile_text_for(
    text: &str,
    weights: &BTreeMap<String, Vec<u8>>,
    profile: Option<&Profile>,
) -> Result<Plan> {
    let ast = parse::parse(text).context("MIL parse error")?;
    compile_ast(&ast, weights, profile)
}

fn compile_ast(
    ast: &parse::Program,
    weights: &BTreeMap<String, Vec<u8>>,
    profile: Option<&Profile>,
) -> Result<Plan> {
    let opts = match profile {
        Some(p) => {
            let v = check::check(ast, p);
            if !v.is_empty() {
                bail!("{}", strict_refusal(p, &v));
            }
            exec::ExecOptions::for_profile(p)
        }
        None => exec::ExecOptions::default(),
    };
    exec::compile_with(ast, weights, opts).context("MIL compile error")
}

/// The error text of a program refused in strict mode.
fn strict_refusal(p: &Profile, v: &[check::Violation]) -> String {
    let mut s = format!(
        "refused by the strict simulator under Neural Engine profile {}: {} rule violation(s) \
         (docs/ANE_HARDWARE.md)",
        p.name,
        v.len()
    );
    for x in v {
        s.push_str("\n  ");
        s.push_str(&x.to_string());
    }
    s
}

/// The estimate of one evaluation's Neural Engine time:
/// `dispatch + max(flops / compute, bytes / bandwidth)`.
///
/// Defaults, with their sources:
/// - `dispatch_ms` 0.07: average evaluation time of a tiny (8.4 MFLOP) program on M5
///   (docs/ANE.md, "Cost model"; the reference's `training/m5result.md`) — per-request overhead;
/// - `compute_tflops` 5.0: what the reference's static Stories110M forward kernels achieve
///   on an M4 Pro (≈45 GFLOP of forward linears and attention in ≈8.9 ms, §6.3), well below
///   the ≈10–12.5 TFLOPS of large chained 1×1 convolutions (§6.4);
/// - `bandwidth_gbs` 100: an assumed DRAM bandwidth for streaming surfaces and constants (the
///   repository measures none);
/// - compile + load `13 ms + 7.5 ms per MB of fp16 weights`: a small conv compiles in 11–14 ms
///   plus ≈1.7 ms load (M5), and the static pipeline's 60 weight-bearing Stories110M programs
///   (≈5.7 MB each) recompile in 3.2–3.5 s on M4 Pro/Max and M5 (≈56 ms each); M1 Pro/Max take
///   7.1–8.5 s, about 2.3× longer (docs/ANE.md, "Cost model"; the reference's compile timings).
#[derive(Clone, Copy, Debug)]
pub struct CostModel {
    pub dispatch_ms: f64,
    pub compute_tflops: f64,
    pub bandwidth_gbs: f64,
    /// Compile + load of a program: `compile_base_ms + compile_ms_per_mb · weight MB`.
    pub compile_base_ms: f64,
    pub compile_ms_per_mb: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            dispatch_ms: 0.07,
            compute_tflops: 5.0,
            bandwidth_gbs: 100.0,
            compile_base_ms: 13.0,
            compile_ms_per_mb: 7.5,
        }
    }
}

impl CostModel {
    /// Estimated milliseconds of one evaluation of `plan`.
    pub fn eval_ms(&self, plan: &Plan, io_bytes: usize) -> f64 {
        let compute = plan.flops / (self.compute_tflops * 1e12) * 1e3;
        let memory = (plan.const_bytes + io_bytes) as f64 / (self.bandwidth_gbs * 1e9) * 1e3;
        self.dispatch_ms + compute.max(memory)
    }

    /// Estimated milliseconds to compile and load a program carrying `const_bytes` of
    /// weights (docs/ANE.md, "Cost model").
    pub fn compile_ms(&self, const_bytes: usize) -> f64 {
        self.compile_base_ms + self.compile_ms_per_mb * const_bytes as f64 / 1e6
    }
}

struct Loaded {
    label: String,
    plan: Plan,
    est_ms: f64,
    compile_est_ms: f64,
}

/// What a simulated compile needs besides the program: the chip, the injected failures and
/// the cost model. Shared by [`SimDevice::compile`] and its background compiler.
#[derive(Clone)]
struct SimCompiler {
    profile: Option<Profile>,
    reject_kernels: Vec<(String, String)>,
    reject_ops: Vec<String>,
    cost: CostModel,
}

impl SimCompiler {
    fn compile(&self, p: &Program) -> Result<Loaded> {
        if let Some((sub, why)) = self
            .reject_kernels
            .iter()
            .find(|(sub, _)| p.label.contains(sub.as_str()))
        {
            bail!(
                "kernel {}: compile refused by an injected failure \
                 (SimDevice::reject_kernel({sub:?})): {why}",
                p.label
            );
        }
        let plan = (|| {
            let ast = parse::parse(&p.text).context("MIL parse error")?;
            for f in &ast.functions {
                if let Some(s) = f.body.iter().find(|s| self.reject_ops.contains(&s.op)) {
                    bail!(
                        "compile refused by an injected failure (SimDevice::reject_op({:?})): \
                         line {}: {} = {}(…)",
                        s.op,
                        s.line,
                        s.var,
                        s.op
                    );
                }
            }
            compile_ast(&ast, &p.weights, self.profile.as_ref())
        })()
        .with_context(|| format!("kernel {}", p.label))?;
        let io: usize = plan
            .inputs
            .iter()
            .map(|i| i.1.iter().product::<usize>())
            .sum::<usize>()
            + plan
                .output_shapes()
                .iter()
                .map(|s| s.iter().product::<usize>())
                .sum::<usize>();
        Ok(Loaded {
            label: p.label.clone(),
            est_ms: self.cost.eval_ms(&plan, 2 * io),
            compile_est_ms: self.cost.compile_ms(plan.const_bytes),
            plan,
        })
    }
}

impl crate::ane::device::Compiler for SimCompiler {
    fn compile(&mut self, p: &Program) -> Result<crate::ane::device::Compiled> {
        let l = SimCompiler::compile(self, p)?;
        let est = Some(l.compile_est_ms);
        Ok(crate::ane::device::Compiled::new(l, est))
    }
}

/// The simulated device.
pub struct SimDevice {
    budget: u64,
    compiles: u64,
    programs: Vec<Option<Loaded>>,
    surfaces: Vec<Option<Vec<f16>>>,
    cost: CostModel,
    scratch: Vec<f32>,
    profile: Option<Profile>,
    /// Injected failures: (label substring, reason).
    reject_kernels: Vec<(String, String)>,
    /// Injected failures: op names.
    reject_ops: Vec<String>,
}

impl Default for SimDevice {
    fn default() -> Self {
        SimDevice::new()
    }
}

impl SimDevice {
    /// A lenient simulated device (no chip profile) with the hardware's compile budget (119):
    /// any well-typed program compiles. For interpreter tests; the backends use
    /// [`SimDevice::with_profile`].
    pub fn new() -> SimDevice {
        SimDevice::with_budget(DEFAULT_COMPILE_BUDGET)
    }

    /// A lenient simulated device that refuses compiles after `budget` successful ones.
    pub fn with_budget(budget: u64) -> SimDevice {
        SimDevice {
            budget,
            compiles: 0,
            programs: Vec::new(),
            surfaces: Vec::new(),
            cost: CostModel::default(),
            scratch: Vec::new(),
            profile: None,
            reject_kernels: Vec::new(),
            reject_ops: Vec::new(),
        }
    }

    /// A strict simulated device for one chip: compiles refuse programs that break the
    /// profile's rules ([`crate::ane::check`]), C2 saturation is simulated, and the compile
    /// budget is the profile's (`compile_budget`; override with [`SimDevice::budget`]).
    pub fn with_profile(profile: Profile) -> SimDevice {
        let mut d = SimDevice::with_budget(profile.compile_budget);
        d.profile = Some(profile);
        d
    }

    /// The same device with a compile budget of `n` (e.g. `--compile-budget`).
    pub fn budget(mut self, n: u64) -> SimDevice {
        self.budget = n;
        self
    }

    /// The chip profile this device enforces; `None` for a lenient device.
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }

    /// Injected failure: every later compile of a program whose label contains
    /// `label_substring` fails with an "injected" error naming it and `reason`.
    pub fn reject_kernel(&mut self, label_substring: &str, reason: &str) {
        self.reject_kernels
            .push((label_substring.to_string(), reason.to_string()));
    }

    /// Injected failure: every later compile of a program that uses the op `op_name` fails
    /// with an "injected" error naming the op and its line.
    pub fn reject_op(&mut self, op_name: &str) {
        self.reject_ops.push(op_name.to_string());
    }

    /// Removes every injected failure.
    pub fn clear_injections(&mut self) {
        self.reject_kernels.clear();
        self.reject_ops.clear();
    }

    pub fn cost_model(&self) -> CostModel {
        self.cost
    }

    fn loaded(&self, p: ProgramId) -> Result<&Loaded> {
        self.programs
            .get(p.0)
            .and_then(|l| l.as_ref())
            .ok_or_else(|| anyhow!("program {} is not loaded (freed or never compiled)", p.0))
    }

    fn compiler(&self) -> SimCompiler {
        SimCompiler {
            profile: self.profile.clone(),
            reject_kernels: self.reject_kernels.clone(),
            reject_ops: self.reject_ops.clone(),
            cost: self.cost,
        }
    }

    fn check_budget(&self, label: &str) -> Result<()> {
        if self.compiles >= self.budget {
            bail!(
                "{label}: compile budget exhausted ({} compiles in this process); the Neural \
                 Engine compiler fails from here on — checkpoint and restart the process",
                self.compiles
            );
        }
        Ok(())
    }

    fn adopt(&mut self, l: Loaded) -> ProgramId {
        self.compiles += 1;
        self.programs.push(Some(l));
        ProgramId(self.programs.len() - 1)
    }

    fn surface_len(&self, s: SurfaceId) -> Result<usize> {
        self.surfaces
            .get(s.0)
            .and_then(|v| v.as_ref())
            .map(|v| v.len())
            .ok_or_else(|| anyhow!("surface {} does not exist", s.0))
    }
}

impl Device for SimDevice {
    fn name(&self) -> &str {
        "ane-sim"
    }

    fn profile(&self) -> Option<Profile> {
        self.profile.clone()
    }

    fn compile(&mut self, p: &Program) -> Result<ProgramId> {
        self.check_budget(&p.label)?;
        let l = self.compiler().compile(p)?;
        Ok(self.adopt(l))
    }

    fn background_compiler(&self) -> Option<Box<dyn crate::ane::device::Compiler>> {
        Some(Box::new(self.compiler()))
    }

    fn install(&mut self, c: crate::ane::device::Compiled) -> Result<ProgramId> {
        let l: Loaded = c.take()?;
        self.check_budget(&l.label)?;
        Ok(self.adopt(l))
    }

    fn estimated_compile_ms(&self, p: ProgramId) -> Option<f64> {
        self.loaded(p).ok().map(|l| l.compile_est_ms)
    }

    fn free(&mut self, p: ProgramId) -> Result<()> {
        self.loaded(p)?;
        self.programs[p.0] = None;
        Ok(())
    }

    fn create_surface(&mut self, elems: usize) -> Result<SurfaceId> {
        if elems == 0 || elems > 1 << 30 {
            bail!("surface of {elems} fp16 values: must be between 1 and 2^30");
        }
        self.surfaces.push(Some(vec![f16::ZERO; elems]));
        Ok(SurfaceId(self.surfaces.len() - 1))
    }

    fn write_surface(&mut self, s: SurfaceId, f: &mut dyn FnMut(&mut [f16])) -> Result<()> {
        self.surface_len(s)?;
        f(self.surfaces[s.0].as_mut().unwrap());
        Ok(())
    }

    fn read_surface(&mut self, s: SurfaceId, f: &mut dyn FnMut(&[f16])) -> Result<()> {
        self.surface_len(s)?;
        f(self.surfaces[s.0].as_ref().unwrap());
        Ok(())
    }

    fn evaluate(
        &mut self,
        p: ProgramId,
        inputs: &[SurfaceId],
        outputs: &[SurfaceId],
    ) -> Result<()> {
        let label = self.loaded(p)?.label.clone();
        if inputs.len() != 1 || outputs.len() != 1 {
            bail!(
                "{label}: request rejected with error 0x1d: a Neural Engine request takes exactly \
                 one input and one output surface, got {} input(s) and {} output(s); pack \
                 logical tensors into one surface",
                inputs.len(),
                outputs.len()
            );
        }
        let (ins, outs) = {
            let l = self.loaded(p)?;
            (l.plan.inputs.clone(), l.plan.output_shapes())
        };
        if ins.len() != 1 || outs.len() != 1 {
            bail!(
                "{label}: the program declares {} input(s) and {} output(s); a request binds \
                 exactly one of each (error 0x1d)",
                ins.len(),
                outs.len()
            );
        }
        let need_in: usize = ins[0].1.iter().product();
        let need_out: usize = outs[0].iter().product();
        let (li, lo) = (self.surface_len(inputs[0])?, self.surface_len(outputs[0])?);
        if li != need_in || lo != need_out {
            bail!(
                "{label}: surfaces hold {li} and {lo} fp16 values but the program's input {:?} \
                 needs {need_in} and its output {:?} needs {need_out}",
                ins[0].1,
                outs[0]
            );
        }
        let mut x = std::mem::take(&mut self.scratch);
        x.resize(li, 0.0);
        self.surfaces[inputs[0].0]
            .as_ref()
            .unwrap()
            .convert_to_f32_slice(&mut x);
        let y = self.loaded(p)?.plan.run(&[&x]);
        self.scratch = x;
        let y = y.with_context(|| format!("{label}: evaluation failed"))?;
        self.surfaces[outputs[0].0]
            .as_mut()
            .unwrap()
            .convert_from_f32_slice(&y[0]);
        Ok(())
    }

    fn compiles(&self) -> u64 {
        self.compiles
    }

    fn compile_budget(&self) -> u64 {
        self.budget
    }

    fn estimated_eval_ms(&self, p: ProgramId) -> Option<f64> {
        self.loaded(p).ok().map(|l| l.est_ms)
    }
}
