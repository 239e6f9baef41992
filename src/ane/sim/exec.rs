//! Type-checks a parsed MIL program into an execution plan and runs it with fp16 storage
//! semantics.
//!
//! Compile step: every statement's operands are resolved, static parameters (axes, perms,
//! shapes, slice bounds, booleans) must be constants, the result shape and dtype are inferred
//! with the rules of [`crate::ane::mil::shape`] and compared with the declared type, weight
//! constants are read from the blob dictionary (validated by [`crate::ane::blob`]) and
//! copied into the plan — so changing a blob after compiling changes nothing, as on the
//! hardware.
//!
//! Run step: tensors are f32 vectors whose values are all representable in their dtype.
//! Every op computes in f32 from its (already rounded) operands — matmul and conv through
//! `matrixmultiply`'s sgemm, reductions and softmax accumulated in f32 — and rounds its result
//! to fp16 (nearest even) when the result is fp16. Overflow becomes ±inf and propagates as
//! IEEE arithmetic says (a −65504 mask plus a negative score is −inf, whose exponential is 0).

use super::parse::{Arg, Dt, Function, Lit, Program as Ast, Stmt, Ty};
use crate::ane::blob;
use crate::ane::mil::shape;
use anyhow::{anyhow, bail, Context, Result};
use half::slice::HalfFloatSliceExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The ops the simulator executes.
pub const SUPPORTED_OPS: &[&str] = &[
    "const",
    "conv",
    "matmul",
    "add",
    "sub",
    "mul",
    "real_div",
    "pow",
    "sigmoid",
    "softmax",
    "reduce_sum",
    "reshape",
    "transpose",
    "slice_by_size",
    "concat",
    "cast",
    "scaled_dot_product_attention",
];

/// C2 (docs/ANE_HARDWARE.md): on chips whose profile has `w_slice_saturates`, a W-axis slice
/// that begins at a nonzero offset turns values with |x| above this into ±inf (ANEForge
/// `predict_fp16_divergence`, bit-exact on M1 and M2).
pub const W_SLICE_SATURATION: f32 = crate::ane::chip::W_SLICE_SATURATION;

/// Behaviour of the simulated chip that changes results, not acceptance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// C2: simulate the saturation of nonzero-offset W-axis slices (axis 3 of a rank-4
    /// tensor): |x| > [`W_SLICE_SATURATION`] → ±inf, sign kept.
    pub w_slice_saturates: bool,
}

impl ExecOptions {
    /// The options a chip profile implies.
    pub fn for_profile(p: &crate::ane::chip::Profile) -> ExecOptions {
        ExecOptions {
            w_slice_saturates: p.w_slice_saturates,
        }
    }
}

/// The largest tensor an op may produce in the simulator (1 GiB of f32).
pub const MAX_ELEMS: usize = 1 << 28;

/// Element count as f64 (for FLOP counts; cannot overflow).
fn numel(s: &[usize]) -> f64 {
    s.iter().map(|&d| d as f64).product()
}

/// A dense tensor; values are exactly representable in the dtype it was declared with.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Arc<Vec<f32>>,
}

/// Rounds every value to the nearest fp16 (ties to even), in place.
pub fn round_f16(v: &mut [f32]) {
    let mut buf = [half::f16::ZERO; 1024];
    for chunk in v.chunks_mut(1024) {
        let b = &mut buf[..chunk.len()];
        b.convert_from_f32_slice(chunk);
        b.convert_to_f32_slice(chunk);
    }
}

#[derive(Clone, Debug)]
enum Const {
    Num(Dt, f64),
    Bool(bool),
    Str(String),
    Ints(Vec<i64>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Clone, Debug)]
enum Op {
    Conv {
        groups: usize,
    },
    Matmul {
        tx: bool,
        ty: bool,
    },
    Bin(Bin),
    Sigmoid,
    Softmax {
        axis: usize,
    },
    ReduceSum {
        axes: Vec<usize>,
    },
    Reshape,
    Transpose {
        perm: Vec<usize>,
    },
    /// `saturate`: C2, values with |x| > [`W_SLICE_SATURATION`] become ±inf.
    Slice {
        begin: Vec<usize>,
        saturate: bool,
    },
    Concat {
        axis: usize,
    },
    Cast,
    Sdpa,
}

#[derive(Clone, Debug)]
struct Instr {
    op: Op,
    inputs: Vec<usize>,
    out: usize,
    shape: Vec<usize>,
    dt: Dt,
    flops: f64,
}

/// A compiled program: slots for every tensor value, constants pre-filled.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `(name, shape)` of each function parameter, in order; parameter `i` lives in slot `i`.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// `(slot, shape)` of each output.
    outputs: Vec<(usize, Vec<usize>)>,
    slots: usize,
    consts: Vec<(usize, Tensor)>,
    instrs: Vec<Instr>,
    /// Slots whose last use is instruction `i` (freed after it).
    frees: Vec<Vec<usize>>,
    /// Arithmetic of one evaluation (multiply-add = 2), for the cost model.
    pub flops: f64,
    /// Bytes of fp16/fp32 constants, read once per evaluation.
    pub const_bytes: usize,
    /// Whether the program uses `scaled_dot_product_attention` (whose mask is ignored).
    pub uses_sdpa: bool,
}

impl Plan {
    pub fn output_shapes(&self) -> Vec<Vec<usize>> {
        self.outputs.iter().map(|o| o.1.clone()).collect()
    }
}

#[derive(Clone)]
struct VarInfo {
    ty: Ty,
    slot: Option<usize>,
    konst: Option<Const>,
}

struct Compiler<'a> {
    weights: &'a BTreeMap<String, Vec<u8>>,
    opts: ExecOptions,
    vars: HashMap<String, VarInfo>,
    labels: HashMap<String, usize>,
    slots: usize,
    consts: Vec<(usize, Tensor)>,
    instrs: Vec<Instr>,
    const_bytes: usize,
    uses_sdpa: bool,
}

fn float_tensor(dt: Dt, shape: Vec<usize>, mut data: Vec<f32>) -> Tensor {
    if dt == Dt::Fp16 {
        round_f16(&mut data);
    }
    Tensor {
        shape,
        data: Arc::new(data),
    }
}

impl Compiler<'_> {
    fn new_slot(&mut self) -> usize {
        self.slots += 1;
        self.slots - 1
    }

    /// A literal as a constant tensor slot (floats) or a static constant (everything else).
    fn lit_value(&mut self, l: &Lit) -> Result<(Ty, Option<usize>, Option<Const>)> {
        Ok(match l {
            Lit::Num(dt, v) if dt.is_float() => {
                let slot = self.new_slot();
                self.consts
                    .push((slot, float_tensor(*dt, vec![], vec![*v as f32])));
                (
                    Ty {
                        dt: *dt,
                        shape: None,
                    },
                    Some(slot),
                    Some(Const::Num(*dt, *v)),
                )
            }
            Lit::Num(dt, v) => (
                Ty {
                    dt: *dt,
                    shape: None,
                },
                None,
                Some(Const::Num(*dt, *v)),
            ),
            Lit::Bool(b) => (
                Ty {
                    dt: Dt::Bool,
                    shape: None,
                },
                None,
                Some(Const::Bool(*b)),
            ),
            Lit::Str(s) => (
                Ty {
                    dt: Dt::Str,
                    shape: None,
                },
                None,
                Some(Const::Str(s.clone())),
            ),
            Lit::Tensor(ty, vals) => {
                let shape = ty.shape.clone().unwrap_or_default();
                match ty.dt {
                    Dt::Int32 | Dt::Int8 | Dt::Uint64 => {
                        let v: Vec<i64> = vals
                            .iter()
                            .map(|x| match x {
                                Lit::Num(_, f) => *f as i64,
                                _ => 0,
                            })
                            .collect();
                        (ty.clone(), None, Some(Const::Ints(v)))
                    }
                    Dt::Fp16 | Dt::Fp32 => {
                        let mut data = Vec::with_capacity(vals.len());
                        for x in vals {
                            match x {
                                Lit::Num(_, f) => data.push(*f as f32),
                                other => bail!("non-numeric value {other:?} in a {ty} literal"),
                            }
                        }
                        let slot = self.new_slot();
                        self.const_bytes += data.len() * if ty.dt == Dt::Fp16 { 2 } else { 4 };
                        self.consts.push((slot, float_tensor(ty.dt, shape, data)));
                        (ty.clone(), Some(slot), None)
                    }
                    _ => bail!("{ty} literals are not supported"),
                }
            }
            Lit::Blob { ty, path, offset } => {
                if ty.dt != Dt::Fp16 {
                    bail!(
                        "BLOBFILE constants of type {} are not simulated (fp16 only)",
                        ty.dt.name()
                    );
                }
                let blob = self.weights.get(path).ok_or_else(|| {
                    anyhow!(
                        "BLOBFILE path {path} is not in the weight dictionary (it holds: {})",
                        self.weights.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })?;
                let shape = ty.shape.clone().unwrap_or_default();
                let n: usize = shape.iter().product();
                let data = blob::read_fp16(blob, *offset, n)
                    .with_context(|| format!("weight blob {path}"))?;
                let slot = self.new_slot();
                self.const_bytes += 2 * n;
                self.consts.push((
                    slot,
                    Tensor {
                        shape,
                        data: Arc::new(data),
                    },
                ));
                (ty.clone(), Some(slot), None)
            }
        })
    }

    fn var(&self, name: &str) -> Result<&VarInfo> {
        self.vars
            .get(name)
            .ok_or_else(|| anyhow!("variable {name} is used before it is defined"))
    }

    /// A tensor operand (variables, inline float literals).
    fn tensor_arg(&mut self, a: &Arg, p: &str) -> Result<(usize, Ty)> {
        let (ty, slot) = match a {
            Arg::Var(n) => {
                let v = self.var(n)?;
                (v.ty.clone(), v.slot)
            }
            Arg::Lit(l) => {
                let (ty, slot, _) = self.lit_value(l)?;
                (ty, slot)
            }
            Arg::Tuple(_) => bail!("parameter {p} takes a tensor, not a tuple"),
        };
        let Some(slot) = slot.filter(|_| ty.dt.is_float()) else {
            bail!("parameter {p} needs an fp16/fp32 tensor, got {ty}");
        };
        Ok((slot, ty))
    }

    /// A compile-time constant parameter.
    fn const_arg(&mut self, a: &Arg, p: &str) -> Result<Const> {
        match a {
            Arg::Var(n) => self.var(n)?.konst.clone().ok_or_else(|| {
                anyhow!("parameter {p} must be a constant, but {n} is computed at run time")
            }),
            Arg::Lit(l) => self
                .lit_value(l)?
                .2
                .ok_or_else(|| anyhow!("parameter {p} must be a scalar or integer constant")),
            Arg::Tuple(_) => bail!("parameter {p} takes a constant, not a tuple"),
        }
    }

    fn stmt(&mut self, s: &Stmt) -> Result<()> {
        if let Some(l) = s.label() {
            if let Some(prev) = self.labels.insert(l.to_string(), s.line) {
                bail!("label \"{l}\" is also used on line {prev}; labels must be unique");
            }
        }
        if self.vars.contains_key(&s.var) {
            bail!("variable {} is defined twice", s.var);
        }
        if s.op == "const" {
            if !s.args.is_empty() {
                bail!(
                    "const takes its value in the attribute brackets: const()[name = …, val = …]"
                );
            }
            let val = s
                .attrs
                .iter()
                .find(|(k, _)| k == "val")
                .map(|(_, v)| v)
                .ok_or_else(|| anyhow!("const {} has no val attribute", s.var))?;
            let (ty, slot, konst) = self.lit_value(val)?;
            if ty != s.ty {
                bail!("{} is declared {} but its value is {ty}", s.var, s.ty);
            }
            self.vars.insert(s.var.clone(), VarInfo { ty, slot, konst });
            return Ok(());
        }
        if !SUPPORTED_OPS.contains(&s.op.as_str()) {
            bail!(
                "unsupported op '{}': the simulated Neural Engine implements {}",
                s.op,
                SUPPORTED_OPS.join(", ")
            );
        }
        if let Some((k, _)) = s.attrs.iter().find(|(k, _)| k != "name") {
            bail!("{} takes no attribute {k} (only name = string(…))", s.op);
        }
        let args: HashMap<&str, &Arg> = s.args.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let allowed: &[&str] = match s.op.as_str() {
            "conv" => &[
                "x",
                "weight",
                "strides",
                "pad_type",
                "pad",
                "dilations",
                "groups",
            ],
            "matmul" => &["x", "y", "transpose_x", "transpose_y"],
            "add" | "sub" | "mul" | "real_div" | "pow" => &["x", "y"],
            "sigmoid" => &["x"],
            "softmax" => &["x", "axis"],
            "reduce_sum" => &["x", "axes", "keep_dims"],
            "reshape" => &["x", "shape"],
            "transpose" => &["x", "perm"],
            "slice_by_size" => &["x", "begin", "size"],
            "concat" => &["values", "axis", "interleave"],
            "cast" => &["x", "dtype"],
            "scaled_dot_product_attention" => &["query", "key", "value", "attn_mask"],
            _ => unreachable!(),
        };
        for (k, _) in &s.args {
            if !allowed.contains(&k.as_str()) {
                bail!(
                    "{} has no parameter {k} (it takes {})",
                    s.op,
                    allowed.join(", ")
                );
            }
        }
        let need = |k: &str| -> Result<&Arg> {
            args.get(k)
                .copied()
                .ok_or_else(|| anyhow!("{} is missing parameter {k}", s.op))
        };
        let ints = |c: Const, p: &str| -> Result<Vec<i64>> {
            match c {
                Const::Ints(v) => Ok(v),
                Const::Num(dt, v) if !dt.is_float() => Ok(vec![v as i64]),
                other => bail!("parameter {p} must be int32 values, got {other:?}"),
            }
        };
        let int = |c: Const, p: &str| -> Result<i64> {
            match c {
                Const::Num(dt, v) if !dt.is_float() => Ok(v as i64),
                Const::Ints(v) if v.len() == 1 => Ok(v[0]),
                other => bail!("parameter {p} must be an int32 scalar, got {other:?}"),
            }
        };
        let boolean = |c: Const, p: &str| -> Result<bool> {
            match c {
                Const::Bool(b) => Ok(b),
                other => bail!("parameter {p} must be a bool, got {other:?}"),
            }
        };
        let opt_const = |this: &mut Self, k: &str| -> Result<Option<Const>> {
            match args.get(k) {
                Some(a) => Ok(Some(this.const_arg(a, k)?)),
                None => Ok(None),
            }
        };

        let (op, inputs, shape, dt, flops) = match s.op.as_str() {
            "conv" => {
                let (x, tx) = self.tensor_arg(need("x")?, "x")?;
                let (w, tw) = self.tensor_arg(need("weight")?, "weight")?;
                let groups = match opt_const(self, "groups")? {
                    Some(c) => int(c, "groups")?,
                    None => 1,
                };
                if let Some(c) = opt_const(self, "strides")? {
                    if ints(c, "strides")?.iter().any(|&v| v != 1) {
                        bail!("conv: only strides [1, 1] are simulated");
                    }
                }
                if let Some(c) = opt_const(self, "dilations")? {
                    if ints(c, "dilations")?.iter().any(|&v| v != 1) {
                        bail!("conv: only dilations [1, 1] are simulated");
                    }
                }
                if let Some(c) = opt_const(self, "pad")? {
                    if ints(c, "pad")?.iter().any(|&v| v != 0) {
                        bail!("conv: only zero padding is simulated");
                    }
                }
                if let Some(c) = opt_const(self, "pad_type")? {
                    match c {
                        Const::Str(p) if p == "valid" || p == "same" || p == "custom" => {}
                        other => bail!("conv: pad_type must be \"valid\", got {other:?}"),
                    }
                }
                if tx.dt != tw.dt {
                    bail!("conv: x is {} but weight is {}", tx.dt.name(), tw.dt.name());
                }
                let xs = tx.shape.clone().unwrap_or_default();
                let ws = tw.shape.clone().unwrap_or_default();
                if ws.len() == 4 && (ws[2] != 1 || ws[3] != 1) {
                    bail!("conv: only 1×1 kernels are simulated, weight is {ws:?}");
                }
                if groups < 1 {
                    bail!("conv: groups must be positive");
                }
                let out =
                    shape::conv(&xs, &ws, groups as usize).map_err(|e| anyhow!("conv: {e}"))?;
                let flops = 2.0 * numel(&out) * ws[1] as f64;
                (
                    Op::Conv {
                        groups: groups as usize,
                    },
                    vec![x, w],
                    out,
                    tx.dt,
                    flops,
                )
            }
            "matmul" => {
                let (x, tx) = self.tensor_arg(need("x")?, "x")?;
                let (y, ty) = self.tensor_arg(need("y")?, "y")?;
                let trx = match opt_const(self, "transpose_x")? {
                    Some(c) => boolean(c, "transpose_x")?,
                    None => false,
                };
                let try_ = match opt_const(self, "transpose_y")? {
                    Some(c) => boolean(c, "transpose_y")?,
                    None => false,
                };
                if tx.dt != ty.dt {
                    bail!("matmul: x is {} but y is {}", tx.dt.name(), ty.dt.name());
                }
                let xs = tx.shape.clone().unwrap_or_default();
                let ys = ty.shape.clone().unwrap_or_default();
                let out = shape::matmul(&xs, &ys, trx, try_).map_err(|e| anyhow!("matmul: {e}"))?;
                let k = if trx {
                    xs[xs.len() - 2]
                } else {
                    xs[xs.len() - 1]
                };
                let flops = 2.0 * numel(&out) * k as f64;
                (
                    Op::Matmul { tx: trx, ty: try_ },
                    vec![x, y],
                    out,
                    tx.dt,
                    flops,
                )
            }
            "add" | "sub" | "mul" | "real_div" | "pow" => {
                let (x, tx) = self.tensor_arg(need("x")?, "x")?;
                let (y, ty) = self.tensor_arg(need("y")?, "y")?;
                if tx.dt != ty.dt {
                    bail!("{}: x is {} but y is {}", s.op, tx.dt.name(), ty.dt.name());
                }
                let out = shape::broadcast(
                    &tx.shape.clone().unwrap_or_default(),
                    &ty.shape.clone().unwrap_or_default(),
                )
                .map_err(|e| anyhow!("{}: {e}", s.op))?;
                let b = match s.op.as_str() {
                    "add" => Bin::Add,
                    "sub" => Bin::Sub,
                    "mul" => Bin::Mul,
                    "real_div" => Bin::Div,
                    _ => Bin::Pow,
                };
                let n = numel(&out);
                (Op::Bin(b), vec![x, y], out, tx.dt, n)
            }
            "sigmoid" => {
                let (x, tx) = self.tensor_arg(need("x")?, "x")?;
                let out = tx.shape.clone().unwrap_or_default();
                let n = numel(&out);
                (Op::Sigmoid, vec![x], out, tx.dt, 4.0 * n)
            }
            "softmax" => {
                let (x, tx) = self.tensor_arg(need("x")?, "x")?;
                let out = tx.shape.clone().unwrap_or_default();
                let a = match opt_const(self, "axis")? {
                    Some(c) => int(c, "axis")?,
                    None => -1,
                };
                let axis = shape::axis(a, out.len()).map_err(|e| anyhow!("softmax: {e}"))?;
                let n = numel(&out);
                (Op::Softmax { axis }, vec![x], out, tx.dt, 5.0 * n)
            }
            "reduce_sum" => {
                let (x, tx) = self.tensor_arg(need("x")?, "x")?;
                let c = self.const_arg(need("axes")?, "axes")?;
                let axes = ints(c, "axes")?;
                let keep = match opt_const(self, "keep_dims")? {
                    Some(c) => boolean(c, "keep_dims")?,
                    None => false,
                };
                let xs = tx.shape.clone().unwrap_or_default();
                let out =
                    shape::reduce(&xs, &axes, keep).map_err(|e| anyhow!("reduce_sum: {e}"))?;
                let mut ax: Vec<usize> = axes
                    .iter()
                    .map(|&a| shape::axis(a, xs.len()).unwrap())
                    .collect();
                ax.sort_unstable();
                let n = numel(&xs);
                (Op::ReduceSum { axes: ax }, vec![x], out, tx.dt, n)
            }
            "reshape" => {
                let (x, tx) = self.tensor_arg(need("x")?, "x")?;
                let c = self.const_arg(need("shape")?, "shape")?;
                let to = ints(c, "shape")?;
                let out = shape::reshape(&tx.shape.clone().unwrap_or_default(), &to)
                    .map_err(|e| anyhow!("reshape: {e}"))?;
                (Op::Reshape, vec![x], out, tx.dt, 0.0)
            }
            "transpose" => {
                let (x, tx) = self.tensor_arg(need("x")?, "x")?;
                let c = self.const_arg(need("perm")?, "perm")?;
                let perm = ints(c, "perm")?;
                let xs = tx.shape.clone().unwrap_or_default();
                let out = shape::transpose(&xs, &perm).map_err(|e| anyhow!("transpose: {e}"))?;
                let perm = perm
                    .iter()
                    .map(|&p| shape::axis(p, xs.len()).unwrap())
                    .collect();
                (Op::Transpose { perm }, vec![x], out, tx.dt, 0.0)
            }
            "slice_by_size" => {
                let (x, tx) = self.tensor_arg(need("x")?, "x")?;
                let c = self.const_arg(need("begin")?, "begin")?;
                let begin = ints(c, "begin")?;
                let c = self.const_arg(need("size")?, "size")?;
                let size = ints(c, "size")?;
                let out = shape::slice(&tx.shape.clone().unwrap_or_default(), &begin, &size)
                    .map_err(|e| anyhow!("slice_by_size: {e}"))?;
                let begin: Vec<usize> = begin.iter().map(|&b| b as usize).collect();
                let saturate = self.opts.w_slice_saturates && begin.len() == 4 && begin[3] != 0;
                (Op::Slice { begin, saturate }, vec![x], out, tx.dt, 0.0)
            }
            "concat" => {
                let Arg::Tuple(names) = need("values")? else {
                    bail!("concat: values must be a tuple (a, b, …)");
                };
                let mut ins = Vec::new();
                let mut shapes = Vec::new();
                let mut dt = None;
                for n in names {
                    let (slot, ty) = self.tensor_arg(&Arg::Var(n.clone()), "values")?;
                    if *dt.get_or_insert(ty.dt) != ty.dt {
                        bail!("concat: values mix dtypes");
                    }
                    ins.push(slot);
                    shapes.push(ty.shape.clone().unwrap_or_default());
                }
                let c = self.const_arg(need("axis")?, "axis")?;
                let a = int(c, "axis")?;
                if let Some(c) = opt_const(self, "interleave")? {
                    if boolean(c, "interleave")? {
                        bail!("concat: interleave = true is not simulated");
                    }
                }
                let refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
                let out = shape::concat(&refs, a).map_err(|e| anyhow!("concat: {e}"))?;
                let axis = shape::axis(a, out.len()).unwrap();
                (Op::Concat { axis }, ins, out, dt.unwrap_or(Dt::Fp16), 0.0)
            }
            "cast" => {
                let (x, tx) = self.tensor_arg(need("x")?, "x")?;
                let c = self.const_arg(need("dtype")?, "dtype")?;
                let to = match c {
                    Const::Str(s) if s == "fp16" => Dt::Fp16,
                    Const::Str(s) if s == "fp32" => Dt::Fp32,
                    other => bail!("cast: dtype must be \"fp16\" or \"fp32\", got {other:?}"),
                };
                let out = tx.shape.clone().unwrap_or_default();
                (Op::Cast, vec![x], out, to, 0.0)
            }
            "scaled_dot_product_attention" => {
                let (q, tq) = self.tensor_arg(need("query")?, "query")?;
                let (k, tk) = self.tensor_arg(need("key")?, "key")?;
                let (v, tv) = self.tensor_arg(need("value")?, "value")?;
                // attn_mask is accepted and ignored, as by the hardware.
                if let Some(Arg::Var(n)) = args.get("attn_mask") {
                    self.var(n)?;
                }
                let qs = tq.shape.clone().unwrap_or_default();
                let ks = tk.shape.clone().unwrap_or_default();
                let vs = tv.shape.clone().unwrap_or_default();
                let sc = shape::matmul(&qs, &ks, false, true)
                    .map_err(|e| anyhow!("scaled_dot_product_attention: {e}"))?;
                let out = shape::matmul(&sc, &vs, false, false)
                    .map_err(|e| anyhow!("scaled_dot_product_attention: {e}"))?;
                self.uses_sdpa = true;
                let flops = 2.0 * numel(&sc) * (qs[qs.len() - 1] + vs[vs.len() - 1]) as f64;
                (Op::Sdpa, vec![q, k, v], out, tq.dt, flops)
            }
            _ => unreachable!(),
        };
        if shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none_or(|n| n > MAX_ELEMS)
        {
            bail!(
                "{} produces a {shape:?} tensor, larger than the simulator's limit of {MAX_ELEMS} values",
                s.op
            );
        }
        let inferred = Ty {
            dt,
            shape: Some(shape.clone()),
        };
        if inferred != s.ty {
            bail!(
                "{} is declared {} but {} produces {inferred}",
                s.var,
                s.ty,
                s.op
            );
        }
        let out = self.new_slot();
        self.instrs.push(Instr {
            op,
            inputs,
            out,
            shape,
            dt,
            flops,
        });
        self.vars.insert(
            s.var.clone(),
            VarInfo {
                ty: s.ty.clone(),
                slot: Some(out),
                konst: None,
            },
        );
        Ok(())
    }
}

/// Type-checks a parsed program against its weight dictionary and builds the plan.
/// Enforces what the Neural Engine's compiler is known to accept: one of the two dialects
/// (`program(1.3)` with `main<ios18>`, or `program(1.0)` with `main<ios16>`; which one a chip
/// takes is the strict checker's rule C9), one function `main`, fp16 parameters and outputs
/// of the surface form `[1, C, 1, W]`. Both dialects execute identically.
pub fn compile(ast: &Ast, weights: &BTreeMap<String, Vec<u8>>) -> Result<Plan> {
    compile_with(ast, weights, ExecOptions::default())
}

/// [`compile`] with the result-changing behaviour of a chip ([`ExecOptions`]).
pub fn compile_with(
    ast: &Ast,
    weights: &BTreeMap<String, Vec<u8>>,
    opts: ExecOptions,
) -> Result<Plan> {
    let opset_for = match ast.version.as_str() {
        "1.3" => "ios18",
        "1.0" => "ios16",
        v => bail!(
            "program({v}) is not known to compile on the Neural Engine; use program(1.3) \
             (with main<ios18>) or program(1.0) (with main<ios16>)"
        ),
    };
    let f: &Function = match ast.functions.as_slice() {
        [f] => f,
        [] => bail!("the program has no function"),
        _ => bail!(
            "the program has {} functions; the in-memory compiler takes one, main",
            ast.functions.len()
        ),
    };
    if f.name != "main" {
        bail!("the function is called {}; it must be main", f.name);
    }
    if f.opset != opset_for {
        bail!(
            "opset {} is not known to compile on the Neural Engine under program({}); use \
             main<{opset_for}>",
            f.opset,
            ast.version
        );
    }
    let surface_ok = |t: &Ty| {
        t.dt == Dt::Fp16
            && t.shape
                .as_ref()
                .is_some_and(|s| s.len() == 4 && s[0] == 1 && s[2] == 1 && s[1] > 0 && s[3] > 0)
    };
    let mut c = Compiler {
        weights,
        opts,
        vars: HashMap::new(),
        labels: HashMap::new(),
        slots: 0,
        consts: Vec::new(),
        instrs: Vec::new(),
        const_bytes: 0,
        uses_sdpa: false,
    };
    let mut inputs = Vec::new();
    for (ty, name) in &f.params {
        if !surface_ok(ty) {
            bail!("input {name} is {ty}; Neural Engine inputs are fp16 surfaces [1, C, 1, W]");
        }
        if c.vars.contains_key(name) {
            bail!("input {name} is declared twice");
        }
        let slot = c.new_slot();
        c.vars.insert(
            name.clone(),
            VarInfo {
                ty: ty.clone(),
                slot: Some(slot),
                konst: None,
            },
        );
        inputs.push((name.clone(), ty.shape.clone().unwrap()));
    }
    for s in &f.body {
        c.stmt(s)
            .with_context(|| format!("line {}: {} = {}(…)", s.line, s.var, s.op))?;
    }
    let mut outputs = Vec::new();
    for o in &f.outputs {
        let v = c
            .vars
            .get(o)
            .ok_or_else(|| anyhow!("output {o} is not defined in the function"))?;
        if !surface_ok(&v.ty) || v.slot.is_none() {
            bail!(
                "output {o} is {}; Neural Engine outputs are fp16 surfaces [1, C, 1, W]",
                v.ty
            );
        }
        outputs.push((v.slot.unwrap(), v.ty.shape.clone().unwrap()));
    }
    // Last use of every computed slot, so intermediates are freed as soon as possible.
    let mut last = vec![usize::MAX; c.slots];
    for (i, ins) in c.instrs.iter().enumerate() {
        for &s in &ins.inputs {
            last[s] = i;
        }
    }
    let is_const: Vec<bool> = {
        let mut v = vec![false; c.slots];
        for (s, _) in &c.consts {
            v[*s] = true;
        }
        v
    };
    let mut frees = vec![Vec::new(); c.instrs.len()];
    for (s, &l) in last.iter().enumerate() {
        if l != usize::MAX && !is_const[s] && !outputs.iter().any(|o| o.0 == s) {
            frees[l].push(s);
        }
    }
    let flops = c.instrs.iter().map(|i| i.flops).sum();
    Ok(Plan {
        inputs,
        outputs,
        slots: c.slots,
        consts: c.consts,
        instrs: c.instrs,
        frees,
        flops,
        const_bytes: c.const_bytes,
        uses_sdpa: c.uses_sdpa,
    })
}

/// Row-major strides of a shape.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides of `shape` broadcast to `out` (right-aligned; 0 on broadcast axes).
fn bstrides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = strides(shape);
    let off = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < off || shape[i - off] == 1 {
                0
            } else {
                st[i - off]
            }
        })
        .collect()
}

/// Visits every index of `shape` in row-major order; `f` gets the offsets of each operand
/// (one stride vector per operand) for a run of `shape.last()` elements along the last axis.
fn for_runs<const K: usize>(
    shape: &[usize],
    st: [&[usize]; K],
    base: [usize; K],
    mut f: impl FnMut([usize; K]),
) {
    let r = shape.len();
    if shape.contains(&0) {
        return;
    }
    if r <= 1 {
        f(base);
        return;
    }
    let mut idx = vec![0usize; r - 1];
    let mut off = base;
    loop {
        f(off);
        let mut ax = r - 1;
        loop {
            if ax == 0 {
                return;
            }
            ax -= 1;
            idx[ax] += 1;
            for k in 0..K {
                off[k] += st[k][ax];
            }
            if idx[ax] < shape[ax] {
                break;
            }
            for k in 0..K {
                off[k] -= st[k][ax] * shape[ax];
            }
            idx[ax] = 0;
        }
    }
}

fn gather(src: &[f32], out_shape: &[usize], st: &[usize], base: usize) -> Vec<f32> {
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let last = out_shape.last().copied().unwrap_or(1);
    let ls = st.last().copied().unwrap_or(0);
    for_runs(out_shape, [st], [base], |[o]| {
        if ls == 1 {
            out.extend_from_slice(&src[o..o + last]);
        } else {
            out.extend((0..last).map(|j| src[o + j * ls]));
        }
    });
    out
}

/// Whether `perm` is `[0, 1, …, r−1, r−2]`.
fn swaps_last_two(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2
        && perm[r - 1] == r - 2
        && perm[r - 2] == r - 1
        && perm[..r - 2].iter().enumerate().all(|(i, &p)| p == i)
}

/// Transposes the last two axes, in 32×32 tiles.
fn transpose_last_two(t: &Tensor) -> Vec<f32> {
    let r = t.shape.len();
    let (rows, cols) = (t.shape[r - 2], t.shape[r - 1]);
    let mut out = vec![0f32; t.data.len()];
    const B: usize = 32;
    for (src, dst) in t
        .data
        .chunks_exact((rows * cols).max(1))
        .zip(out.chunks_exact_mut((rows * cols).max(1)))
    {
        for i0 in (0..rows).step_by(B) {
            for j0 in (0..cols).step_by(B) {
                for i in i0..(i0 + B).min(rows) {
                    for j in j0..(j0 + B).min(cols) {
                        dst[j * rows + i] = src[i * cols + j];
                    }
                }
            }
        }
    }
    out
}

fn binary(a: &Tensor, b: &Tensor, out: &[usize], op: Bin) -> Vec<f32> {
    let f = |x: f32, y: f32| match op {
        Bin::Add => x + y,
        Bin::Sub => x - y,
        Bin::Mul => x * y,
        Bin::Div => x / y,
        Bin::Pow => x.powf(y),
    };
    if a.shape == b.shape {
        return a
            .data
            .iter()
            .zip(b.data.iter())
            .map(|(&x, &y)| f(x, y))
            .collect();
    }
    if b.data.len() == 1 && a.shape == out {
        let y = b.data[0];
        return a.data.iter().map(|&x| f(x, y)).collect();
    }
    if a.data.len() == 1 && b.shape == out {
        let x = a.data[0];
        return b.data.iter().map(|&y| f(x, y)).collect();
    }
    let (sa, sb) = (bstrides(&a.shape, out), bstrides(&b.shape, out));
    let n: usize = out.iter().product();
    let mut v = Vec::with_capacity(n);
    let last = out.last().copied().unwrap_or(1);
    let (la, lb) = (
        sa.last().copied().unwrap_or(0),
        sb.last().copied().unwrap_or(0),
    );
    for_runs(out, [&sa, &sb], [0, 0], |[oa, ob]| match (la, lb) {
        (1, 1) => v.extend(
            a.data[oa..oa + last]
                .iter()
                .zip(&b.data[ob..ob + last])
                .map(|(&x, &y)| f(x, y)),
        ),
        (1, 0) => {
            let y = b.data[ob];
            v.extend(a.data[oa..oa + last].iter().map(|&x| f(x, y)));
        }
        (0, 1) => {
            let x = a.data[oa];
            v.extend(b.data[ob..ob + last].iter().map(|&y| f(x, y)));
        }
        _ => v.extend((0..last).map(|j| f(a.data[oa + j * la], b.data[ob + j * lb]))),
    });
    v
}

/// `C[m, n] = A·B` through sgemm with arbitrary strides (transposes are stride swaps).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    // The extents follow from the strides; check them so the unsafe call stays in bounds.
    assert!((m - 1) * rsa + (k - 1) * csa < a.len());
    assert!((k - 1) * rsb + (n - 1) * csb < b.len());
    assert!(m * n <= c.len());
    // SAFETY: every index the kernel touches was bounds-checked above; C is row-major
    // `[m, n]` and does not alias A or B.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

fn matmul(x: &Tensor, y: &Tensor, tx: bool, ty: bool, out: &[usize]) -> Vec<f32> {
    let (xr, xc) = (x.shape[x.shape.len() - 2], x.shape[x.shape.len() - 1]);
    let (yr, yc) = (y.shape[y.shape.len() - 2], y.shape[y.shape.len() - 1]);
    let (m, k) = if tx { (xc, xr) } else { (xr, xc) };
    let n = if ty { yr } else { yc };
    let (rsa, csa) = if tx { (1, xc) } else { (xc, 1) };
    let (rsb, csb) = if ty { (1, yc) } else { (yc, 1) };
    let batch = &out[..out.len() - 2];
    // Batch strides in units of whole matrices.
    let xb: Vec<usize> = x.shape[..x.shape.len() - 2].to_vec();
    let yb: Vec<usize> = y.shape[..y.shape.len() - 2].to_vec();
    let sx: Vec<usize> = bstrides(&xb, batch).iter().map(|s| s * xr * xc).collect();
    let sy: Vec<usize> = bstrides(&yb, batch).iter().map(|s| s * yr * yc).collect();
    let mut c = vec![0f32; out.iter().product()];
    let mut chunks = c.chunks_mut((m * n).max(1));
    // Treat the batch as a shape whose last axis is iterated one element at a time.
    let mut bshape = batch.to_vec();
    bshape.push(1);
    let mut sx1 = sx.clone();
    sx1.push(0);
    let mut sy1 = sy.clone();
    sy1.push(0);
    for_runs(&bshape, [&sx1, &sy1], [0, 0], |[ox, oy]| {
        let cc = chunks.next().unwrap();
        sgemm(
            m,
            k,
            n,
            &x.data[ox..],
            rsa,
            csa,
            &y.data[oy..],
            rsb,
            csb,
            cc,
        );
    });
    c
}

fn conv1x1(x: &Tensor, w: &Tensor, groups: usize, out: &[usize]) -> Vec<f32> {
    let (nb, cin, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3]);
    let cout = w.shape[0];
    let (cig, cog) = (cin / groups, cout / groups);
    let mut y = vec![0f32; out.iter().product()];
    for b in 0..nb {
        for g in 0..groups {
            let wo = g * cog * cig;
            let xo = (b * cin + g * cig) * hw;
            let yo = (b * cout + g * cog) * hw;
            sgemm(
                cog,
                cig,
                hw,
                &w.data[wo..],
                cig,
                1,
                &x.data[xo..],
                hw,
                1,
                &mut y[yo..yo + cog * hw],
            );
        }
    }
    y
}

/// Splits a shape around `axis` into (outer, len, inner).
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

fn softmax(x: &[f32], shape: &[usize], axis: usize) -> Vec<f32> {
    let (outer, len, inner) = around(shape, axis);
    let mut y = vec![0f32; x.len()];
    let mut row = vec![0f32; len];
    for o in 0..outer {
        for i in 0..inner {
            let base = o * len * inner + i;
            let mut mx = f32::NEG_INFINITY;
            for j in 0..len {
                row[j] = x[base + j * inner];
                mx = mx.max(row[j]);
            }
            let mut sum = 0f32;
            for r in row.iter_mut() {
                // Below −88 the exponential is under f32's smallest normal: 0 for every
                // purpose here, and masked entries (−inf) skip libm's slow underflow path.
                let z = *r - mx;
                *r = if z < -88.0 { 0.0 } else { z.exp() };
                sum += *r;
            }
            let inv = 1.0 / sum;
            for j in 0..len {
                y[base + j * inner] = row[j] * inv;
            }
        }
    }
    y
}

fn reduce_sum(x: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f32> {
    let mut cur = x.to_vec();
    let mut sh = shape.to_vec();
    for &a in axes {
        let (outer, len, inner) = around(&sh, a);
        let mut y = vec![0f32; outer * inner];
        for o in 0..outer {
            for j in 0..len {
                let src = &cur[(o * len + j) * inner..(o * len + j + 1) * inner];
                for (d, s) in y[o * inner..(o + 1) * inner].iter_mut().zip(src) {
                    *d += s;
                }
            }
        }
        cur = y;
        sh[a] = 1;
    }
    cur
}

fn concat(parts: &[&Tensor], axis: usize, out: &[usize]) -> Vec<f32> {
    let (outer, _, inner) = around(out, axis);
    let mut y = Vec::with_capacity(out.iter().product());
    for o in 0..outer {
        for p in parts {
            let run = p.shape[axis] * inner;
            y.extend_from_slice(&p.data[o * run..(o + 1) * run]);
        }
    }
    y
}

fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, out: &[usize]) -> Vec<f32> {
    let e = q.shape[q.shape.len() - 1];
    let mut sshape = out.to_vec();
    let l = sshape.len();
    sshape[l - 1] = k.shape[k.shape.len() - 2];
    let mut sc = matmul(q, k, false, true, &sshape);
    let scale = 1.0 / (e as f32).sqrt();
    sc.iter_mut().for_each(|s| *s *= scale);
    let p = softmax(&sc, &sshape, l - 1);
    let pt = Tensor {
        shape: sshape,
        data: Arc::new(p),
    };
    matmul(&pt, v, false, false, out)
}

impl Plan {
    /// Runs the plan on f32 inputs (one per parameter, rounded to fp16 on entry as a surface
    /// would) and returns the outputs.
    pub fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        if inputs.len() != self.inputs.len() {
            bail!(
                "the program takes {} inputs, {} given",
                self.inputs.len(),
                inputs.len()
            );
        }
        let mut slots: Vec<Option<Tensor>> = vec![None; self.slots];
        for (i, ((name, shape), data)) in self.inputs.iter().zip(inputs).enumerate() {
            let n: usize = shape.iter().product();
            if data.len() != n {
                bail!(
                    "input {name} needs {n} values ({shape:?}), got {}",
                    data.len()
                );
            }
            slots[i] = Some(float_tensor(Dt::Fp16, shape.clone(), data.to_vec()));
        }
        for (s, t) in &self.consts {
            slots[*s] = Some(t.clone());
        }
        for (idx, ins) in self.instrs.iter().enumerate() {
            // Ok: freshly computed values; Err: the operand's values shared unchanged.
            let res: std::result::Result<Vec<f32>, Arc<Vec<f32>>> = {
                let get =
                    |i: usize| -> &Tensor { slots[ins.inputs[i]].as_ref().expect("slot filled") };
                match &ins.op {
                    Op::Conv { groups } => Ok(conv1x1(get(0), get(1), *groups, &ins.shape)),
                    Op::Matmul { tx, ty } => Ok(matmul(get(0), get(1), *tx, *ty, &ins.shape)),
                    Op::Bin(b) => Ok(binary(get(0), get(1), &ins.shape, *b)),
                    Op::Sigmoid => Ok(get(0)
                        .data
                        .iter()
                        .map(|&x| 1.0 / (1.0 + (-x).exp()))
                        .collect()),
                    Op::Softmax { axis } => Ok(softmax(&get(0).data, &get(0).shape, *axis)),
                    Op::ReduceSum { axes } => Ok(reduce_sum(&get(0).data, &get(0).shape, axes)),
                    // A reshape moves no data; a cast to fp32 keeps every value.
                    Op::Reshape => Err(get(0).data.clone()),
                    Op::Cast if ins.dt == Dt::Fp32 => Err(get(0).data.clone()),
                    Op::Cast => Ok(get(0).data.to_vec()),
                    Op::Transpose { perm } if swaps_last_two(perm) => {
                        Ok(transpose_last_two(get(0)))
                    }
                    Op::Transpose { perm } => {
                        let t = get(0);
                        let st = strides(&t.shape);
                        let ps: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
                        Ok(gather(&t.data, &ins.shape, &ps, 0))
                    }
                    Op::Slice { begin, saturate } => {
                        let t = get(0);
                        let st = strides(&t.shape);
                        let base = begin.iter().zip(&st).map(|(b, s)| b * s).sum();
                        let mut v = gather(&t.data, &ins.shape, &st, base);
                        if *saturate {
                            for x in v.iter_mut() {
                                if x.abs() > W_SLICE_SATURATION {
                                    *x = f32::INFINITY.copysign(*x);
                                }
                            }
                        }
                        Ok(v)
                    }
                    Op::Concat { axis } => {
                        let parts: Vec<&Tensor> = (0..ins.inputs.len()).map(get).collect();
                        Ok(concat(&parts, *axis, &ins.shape))
                    }
                    Op::Sdpa => Ok(sdpa(get(0), get(1), get(2), &ins.shape)),
                }
            };
            slots[ins.out] = Some(match res {
                Ok(data) => float_tensor(ins.dt, ins.shape.clone(), data),
                Err(shared) => Tensor {
                    shape: ins.shape.clone(),
                    data: shared,
                },
            });
            for &f in &self.frees[idx] {
                slots[f] = None;
            }
        }
        Ok(self
            .outputs
            .iter()
            .map(|(s, _)| slots[*s].as_ref().expect("output computed").data.to_vec())
            .collect())
    }
}
