//! MIL ("Model Intermediate Language") programs as the Neural Engine's in-memory compiler
//! accepts them, built by a small typed builder that prints the text.
//!
//! A program is one function `main<ios18>` with one fp16 input `[1, C, 1, W]` and one fp16
//! output of the same form (the hardware takes one input and one output surface per request):
//!
//! ```text
//! program(1.3)
//! [buildInfo = dict<string, string>({{"coremlc-component-MIL", "3510.2.1"}, …})]
//! {
//!     func main<ios18>(tensor<fp16, [1, 64, 1, 32]> x) {
//!         tensor<fp16, [64, 64, 1, 1]> wq = const()[name = string("wq"),
//!             val = tensor<fp16, [64, 64, 1, 1]>(BLOBFILE(path = string("@model_path/weights/wq.bin"), offset = uint64(64)))];
//!         tensor<fp16, [1, 64, 1, 32]> q = conv(x = x, weight = wq, …)[name = string("q")];
//!     } -> (q);
//! }
//! ```
//!
//! Every statement declares its result type; the builder infers it from the operands with the
//! rules in [`shape`] and asserts them (a mismatch is a bug in a generator, never user input).
//! Scalars and small integer vectors (axes, perms, shapes) become deduplicated `const`
//! statements, as the production kernels of the reference write them — deduplicated per
//! parameter kind, so no const feeds two kinds of parameter (a `[0, 0, 0, 0]` pad is not also a
//! slice begin; checker rule P5); weights become `BLOBFILE` constants, one single-tensor blob
//! file per constant ([`crate::ane::blob`]).
//!
//! Two dialects (docs/ANE_HARDWARE.md C9): [`Builder::new`] writes the reference's
//! `program(1.3)` / `main<ios18>` text with shorthand literals (above);
//! [`Builder::with_dialect`]`(…, Dialect::Ios16)` writes CoreML's canonical verbose form,
//! `program(1.0)` / `main<ios16>` with typed literals (`name = tensor<string, []>("q")`,
//! `tensor<fp16, []>(0.5)`, `offset = tensor<uint64, []>(64)`), the form reported to compile
//! on M1/M2.
//!
//! The kernel generators of both pipelines live in [`kernels`].

pub mod kernels;
pub mod shape;

pub use crate::ane::chip::Dialect;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// Element types that appear in programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Fp16,
    Fp32,
    Int32,
    Bool,
    Str,
}

impl DType {
    pub fn mil(self) -> &'static str {
        match self {
            DType::Fp16 => "fp16",
            DType::Fp32 => "fp32",
            DType::Int32 => "int32",
            DType::Bool => "bool",
            DType::Str => "string",
        }
    }
}

/// A value in the program being built: its variable name, element type and shape
/// (`None` for a scalar).
#[derive(Clone, Debug)]
pub struct Var {
    pub name: String,
    pub dtype: DType,
    pub shape: Option<Vec<usize>>,
}

impl Var {
    /// The tensor shape; panics on a scalar (generator bug).
    pub fn dims(&self) -> &[usize] {
        self.shape
            .as_deref()
            .unwrap_or_else(|| panic!("MIL builder: {} is a scalar, not a tensor", self.name))
    }
    fn ty(&self, d: Dialect) -> String {
        ty_text(d, self.dtype, self.shape.as_deref())
    }
}

/// A type: scalars are `fp16` (Ios18) or `tensor<fp16, []>` (Ios16).
fn ty_text(d: Dialect, dtype: DType, shape: Option<&[usize]>) -> String {
    match shape {
        None if d == Dialect::Ios16 => format!("tensor<{}, []>", dtype.mil()),
        None => dtype.mil().to_string(),
        Some(s) => {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("tensor<{}, [{}]>", dtype.mil(), dims.join(", "))
        }
    }
}

/// The path a BLOBFILE constant named `name` is stored under in the weight dictionary.
pub fn weight_path(name: &str) -> String {
    format!("@model_path/weights/{name}.bin")
}

/// A finished program: the MIL text, its weight dictionary (BLOBFILE path → blob file bytes)
/// and the shapes of its single input and output surface.
#[derive(Clone, Debug)]
pub struct Program {
    /// Kernel label (`fwdAttn`, …), for reports and temp-dir names.
    pub label: String,
    pub text: String,
    pub weights: BTreeMap<String, Vec<u8>>,
    /// `[1, C, 1, W]`
    pub input: [usize; 4],
    /// `[1, C, 1, W]`
    pub output: [usize; 4],
}

/// The builder. Variable names double as statement labels (`name=string(…)`), unique in the
/// function.
pub struct Builder {
    label: String,
    dialect: Dialect,
    input: Option<Var>,
    body: String,
    used: HashMap<String, usize>,
    consts: HashMap<String, Var>,
    weights: BTreeMap<String, Vec<u8>>,
}

/// Prints an fp16 constant: the value rounded to fp16, in plain decimal (Rust's `Display`
/// never uses exponent notation and prints the shortest text that reads back exactly).
fn fp16_text(v: f32) -> String {
    let h = half::f16::from_f32(v).to_f32();
    format!("{h}")
}

impl Builder {
    /// A builder for the reference's dialect (`program(1.3)`, `main<ios18>`, shorthand
    /// literals).
    pub fn new(label: &str) -> Builder {
        Builder::with_dialect(label, Dialect::Ios18)
    }

    /// A builder writing `dialect`.
    pub fn with_dialect(label: &str, dialect: Dialect) -> Builder {
        Builder {
            label: label.into(),
            dialect,
            input: None,
            body: String::new(),
            used: HashMap::new(),
            consts: HashMap::new(),
            weights: BTreeMap::new(),
        }
    }

    /// A unique variable name starting with `base`.
    fn fresh(&mut self, base: &str) -> String {
        let n = self.used.entry(base.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base.to_string()
        } else {
            format!("{base}_{}", *n - 1)
        }
    }

    /// The function's single fp16 input `[1, C, 1, W]`.
    pub fn input(&mut self, name: &str, shape: [usize; 4]) -> Var {
        assert!(self.input.is_none(), "MIL builder: one input per program");
        assert!(
            shape[0] == 1 && shape[2] == 1,
            "MIL builder: input must be [1, C, 1, W]"
        );
        let name = self.fresh(name);
        let v = Var {
            name,
            dtype: DType::Fp16,
            shape: Some(shape.to_vec()),
        };
        self.input = Some(v.clone());
        v
    }

    /// The dialect this builder writes.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A scalar literal: `fp16(0.5)` (Ios18) or `tensor<fp16, []>(0.5)` (Ios16).
    fn scalar_lit(&self, dtype: DType, body: &str) -> String {
        self.scalar_lit_named(dtype.mil(), body)
    }
    fn scalar_lit_named(&self, dtype: &str, body: &str) -> String {
        match self.dialect {
            Dialect::Ios18 => format!("{dtype}({body})"),
            Dialect::Ios16 => format!("tensor<{dtype}, []>({body})"),
        }
    }

    /// A string literal in this dialect.
    fn str_lit(&self, v: &str) -> String {
        self.scalar_lit(DType::Str, &format!("\"{v}\""))
    }

    fn line(&mut self, ty: &str, var: &str, op: &str, args: &str, attrs: &str) {
        let name = self.str_lit(var);
        let _ = writeln!(
            self.body,
            "        {ty} {var} = {op}({args})[name = {name}{attrs}];"
        );
    }

    /// A constant with literal text `lit` (e.g. `fp16(0.125)`), deduplicated per
    /// (type, literal, parameter kind): a const is reused only by parameters of the same
    /// `kind` (checker rule P5). `kind` is the parameter name (`pad`, `begin`, …; both matmul
    /// transpose flags use `transpose`); `""` for data operands and untagged constants.
    pub fn constant_for(
        &mut self,
        kind: &str,
        base: &str,
        dtype: DType,
        shape: Option<Vec<usize>>,
        lit: String,
    ) -> Var {
        let key = format!(
            "{kind}:{}={lit}",
            ty_text(self.dialect, dtype, shape.as_deref())
        );
        if let Some(v) = self.consts.get(&key) {
            return v.clone();
        }
        let name = self.fresh(base);
        let v = Var {
            name: name.clone(),
            dtype,
            shape,
        };
        let attrs = format!(", val = {lit}");
        let ty = v.ty(self.dialect);
        self.line(&ty, &name, "const", "", &attrs);
        self.consts.insert(key, v.clone());
        v
    }

    /// An fp16 scalar constant (a data operand).
    pub fn scalar(&mut self, v: f32) -> Var {
        let lit = self.scalar_lit(DType::Fp16, &fp16_text(v));
        self.constant_for("", "c", DType::Fp16, None, lit)
    }
    /// An int32 scalar constant for parameters of kind `kind`.
    pub fn int_for(&mut self, kind: &str, v: i64) -> Var {
        let lit = self.scalar_lit(DType::Int32, &v.to_string());
        self.constant_for(kind, "ci", DType::Int32, None, lit)
    }
    /// A bool constant for parameters of kind `kind`.
    pub fn boolean_for(&mut self, kind: &str, v: bool) -> Var {
        let lit = self.scalar_lit(DType::Bool, &v.to_string());
        self.constant_for(kind, "cb", DType::Bool, None, lit)
    }
    /// A string constant for parameters of kind `kind`.
    pub fn string_for(&mut self, kind: &str, v: &str) -> Var {
        let lit = self.str_lit(v);
        self.constant_for(kind, "cs", DType::Str, None, lit)
    }
    /// An int32 vector constant for parameters of kind `kind`.
    pub fn ints_for(&mut self, kind: &str, v: &[i64]) -> Var {
        let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        let ty = ty_text(self.dialect, DType::Int32, Some(&[v.len()]));
        self.constant_for(
            kind,
            "cv",
            DType::Int32,
            Some(vec![v.len()]),
            format!("{ty}([{}])", items.join(", ")),
        )
    }
    /// An untagged int32 scalar constant (kind `""`).
    pub fn int(&mut self, v: i64) -> Var {
        self.int_for("", v)
    }
    /// An untagged bool constant (kind `""`).
    pub fn boolean(&mut self, v: bool) -> Var {
        self.boolean_for("", v)
    }
    /// An untagged string constant (kind `""`).
    pub fn string(&mut self, v: &str) -> Var {
        self.string_for("", v)
    }
    /// An untagged int32 vector constant (kind `""`).
    pub fn ints(&mut self, v: &[i64]) -> Var {
        self.ints_for("", v)
    }

    /// An fp16 constant read from a weight blob at `@model_path/weights/<name>.bin`.
    /// `blob` must be a single-tensor file ([`crate::ane::blob::fp16`]) holding the row-major
    /// flattening of `shape`. A blob registered twice under one name is shared.
    pub fn weight(&mut self, name: &str, shape: &[usize], blob: Vec<u8>) -> Var {
        let path = weight_path(name);
        let ty = ty_text(self.dialect, DType::Fp16, Some(shape));
        let lit = format!(
            "{ty}(BLOBFILE(path = {}, offset = {}))",
            self.str_lit(&path),
            self.scalar_lit_named("uint64", &crate::ane::blob::MIL_OFFSET.to_string())
        );
        assert_eq!(
            blob.len(),
            crate::ane::blob::HEADER_BYTES + 2 * shape.iter().product::<usize>(),
            "MIL builder: blob {name} does not hold {shape:?} fp16 values"
        );
        self.weights.entry(path).or_insert(blob);
        self.constant_for("", name, DType::Fp16, Some(shape.to_vec()), lit)
    }

    fn op(&mut self, base: &str, op: &str, args: &[(&str, &Var)], shape: Vec<usize>) -> Var {
        let name = self.fresh(base);
        let dtype = args
            .iter()
            .find(|(_, v)| v.shape.is_some() && v.dtype == DType::Fp16)
            .map(|(_, v)| v.dtype)
            .unwrap_or(DType::Fp16);
        let v = Var {
            name: name.clone(),
            dtype,
            shape: Some(shape),
        };
        let a: Vec<String> = args
            .iter()
            .map(|(k, x)| format!("{k} = {}", x.name))
            .collect();
        let ty = v.ty(self.dialect);
        self.line(&ty, &name, op, &a.join(", "), "");
        v
    }

    /// 1×1 convolution `y[o, t] = Σ_i W[o, i]·x[i, t]` — a linear layer on `[1, Cin, 1, W]`.
    pub fn conv(&mut self, name: &str, x: &Var, w: &Var) -> Var {
        let shape = shape::conv(x.dims(), w.dims(), 1).expect("MIL builder: conv");
        let strides = self.ints_for("strides", &[1, 1]);
        let pad_type = self.string_for("pad_type", "valid");
        let pad = self.ints_for("pad", &[0, 0, 0, 0]);
        let dil = self.ints_for("dilations", &[1, 1]);
        let groups = self.int_for("groups", 1);
        self.op(
            name,
            "conv",
            &[
                ("x", x),
                ("weight", w),
                ("strides", &strides),
                ("pad_type", &pad_type),
                ("pad", &pad),
                ("dilations", &dil),
                ("groups", &groups),
            ],
            shape,
        )
    }

    /// Batched matrix product over the last two axes.
    pub fn matmul(&mut self, name: &str, x: &Var, y: &Var, tx: bool, ty: bool) -> Var {
        let shape = shape::matmul(x.dims(), y.dims(), tx, ty).expect("MIL builder: matmul");
        let bx = self.boolean_for("transpose", tx);
        let by = self.boolean_for("transpose", ty);
        self.op(
            name,
            "matmul",
            &[
                ("x", x),
                ("y", y),
                ("transpose_x", &bx),
                ("transpose_y", &by),
            ],
            shape,
        )
    }

    fn binary(&mut self, name: &str, op: &str, x: &Var, y: &Var) -> Var {
        let sx = x.shape.clone().unwrap_or_default();
        let sy = y.shape.clone().unwrap_or_default();
        let shape = shape::broadcast(&sx, &sy).expect("MIL builder: broadcast");
        self.op(name, op, &[("x", x), ("y", y)], shape)
    }
    pub fn add(&mut self, name: &str, x: &Var, y: &Var) -> Var {
        self.binary(name, "add", x, y)
    }
    pub fn sub(&mut self, name: &str, x: &Var, y: &Var) -> Var {
        self.binary(name, "sub", x, y)
    }
    pub fn mul(&mut self, name: &str, x: &Var, y: &Var) -> Var {
        self.binary(name, "mul", x, y)
    }
    pub fn pow(&mut self, name: &str, x: &Var, y: &Var) -> Var {
        self.binary(name, "pow", x, y)
    }
    /// `x · c` for an fp16 scalar `c`.
    pub fn scale(&mut self, name: &str, x: &Var, c: f32) -> Var {
        let c = self.scalar(c);
        self.mul(name, x, &c)
    }

    pub fn sigmoid(&mut self, name: &str, x: &Var) -> Var {
        let s = x.dims().to_vec();
        self.op(name, "sigmoid", &[("x", x)], s)
    }

    pub fn softmax(&mut self, name: &str, x: &Var, axis: i64) -> Var {
        shape::axis(axis, x.dims().len()).expect("MIL builder: softmax axis");
        let a = self.int_for("axis", axis);
        let s = x.dims().to_vec();
        self.op(name, "softmax", &[("x", x), ("axis", &a)], s)
    }

    /// Sum over `axes`, keeping them (size 1).
    pub fn reduce_sum(&mut self, name: &str, x: &Var, axes: &[i64]) -> Var {
        let s = shape::reduce(x.dims(), axes, true).expect("MIL builder: reduce_sum");
        let a = self.ints_for("axes", axes);
        let k = self.boolean_for("keep_dims", true);
        self.op(
            name,
            "reduce_sum",
            &[("x", x), ("axes", &a), ("keep_dims", &k)],
            s,
        )
    }

    pub fn reshape(&mut self, name: &str, x: &Var, to: &[usize]) -> Var {
        let t: Vec<i64> = to.iter().map(|&d| d as i64).collect();
        let s = shape::reshape(x.dims(), &t).expect("MIL builder: reshape");
        let v = self.ints_for("shape", &t);
        self.op(name, "reshape", &[("x", x), ("shape", &v)], s)
    }

    pub fn transpose(&mut self, name: &str, x: &Var, perm: &[i64]) -> Var {
        let s = shape::transpose(x.dims(), perm).expect("MIL builder: transpose");
        let p = self.ints_for("perm", perm);
        self.op(name, "transpose", &[("x", x), ("perm", &p)], s)
    }

    pub fn slice(&mut self, name: &str, x: &Var, begin: &[usize], size: &[usize]) -> Var {
        let b: Vec<i64> = begin.iter().map(|&d| d as i64).collect();
        let z: Vec<i64> = size.iter().map(|&d| d as i64).collect();
        let s = shape::slice(x.dims(), &b, &z).expect("MIL builder: slice_by_size");
        let bv = self.ints_for("begin", &b);
        let zv = self.ints_for("size", &z);
        self.op(
            name,
            "slice_by_size",
            &[("x", x), ("begin", &bv), ("size", &zv)],
            s,
        )
    }

    pub fn concat(&mut self, name: &str, xs: &[&Var], axis: i64) -> Var {
        let shapes: Vec<&[usize]> = xs.iter().map(|v| v.dims()).collect();
        let s = shape::concat(&shapes, axis).expect("MIL builder: concat");
        let a = self.int_for("axis", axis);
        let il = self.boolean_for("interleave", false);
        let name = self.fresh(name);
        let v = Var {
            name: name.clone(),
            dtype: DType::Fp16,
            shape: Some(s),
        };
        let vals: Vec<&str> = xs.iter().map(|x| x.name.as_str()).collect();
        let args = format!(
            "values = ({}), axis = {}, interleave = {}",
            vals.join(", "),
            a.name,
            il.name
        );
        let ty = v.ty(self.dialect);
        self.line(&ty, &name, "concat", &args, "");
        v
    }

    /// Closes the function with its single output `[1, C, 1, W]` and returns the program.
    pub fn finish(self, out: &Var) -> Program {
        let input = self.input.expect("MIL builder: program without input");
        let o = out.dims();
        assert!(
            o.len() == 4 && o[0] == 1 && o[2] == 1 && out.dtype == DType::Fp16,
            "MIL builder: output must be fp16 [1, C, 1, W], got {o:?}"
        );
        let (version, opset, st) = match self.dialect {
            Dialect::Ios18 => ("1.3", "ios18", "string"),
            Dialect::Ios16 => ("1.0", "ios16", "tensor<string, []>"),
        };
        let mut text = String::new();
        let _ = writeln!(text, "program({version})");
        let _ = writeln!(
            text,
            "[buildInfo = dict<{st}, {st}>({{{{\"coremlc-component-MIL\", \"3510.2.1\"}}, \
             {{\"coremlc-version\", \"3505.4.1\"}}, {{\"coremltools-component-milinternal\", \"\"}}, \
             {{\"coremltools-version\", \"9.0\"}}}})]"
        );
        text.push_str("{\n");
        let _ = writeln!(
            text,
            "    func main<{opset}>({} {}) {{",
            input.ty(self.dialect),
            input.name
        );
        text.push_str(&self.body);
        let _ = writeln!(text, "    }} -> ({});", out.name);
        text.push_str("}\n");
        let id = input.dims();
        Program {
            label: self.label,
            text,
            weights: self.weights,
            input: [id[0], id[1], id[2], id[3]],
            output: [o[0], o[1], o[2], o[3]],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_grammar() {
        let mut b = Builder::new("t");
        let x = b.input("x", [1, 4, 1, 8]);
        let w = b.weight("w", &[2, 4, 1, 1], crate::ane::blob::fp16(&[0.0; 8]));
        let y = b.conv("y", &x, &w);
        let z = b.scale("z", &y, 0.1);
        let z2 = b.scale("z", &z, 0.1);
        let p = b.finish(&z2);
        assert!(p
            .text
            .starts_with("program(1.3)\n[buildInfo = dict<string, string>({{"));
        assert!(p
            .text
            .contains("    func main<ios18>(tensor<fp16, [1, 4, 1, 8]> x) {\n"));
        assert!(p.text.contains(
            "tensor<fp16, [2, 4, 1, 1]> w = const()[name = string(\"w\"), val = tensor<fp16, [2, 4, 1, 1]>(BLOBFILE(path = string(\"@model_path/weights/w.bin\"), offset = uint64(64)))];"
        ));
        // strides and dilations are both [1, 1] but of different kinds: one const each (P5).
        assert!(p.text.contains("tensor<fp16, [1, 2, 1, 8]> y = conv(x = x, weight = w, strides = cv, pad_type = cs, pad = cv_1, dilations = cv_2, groups = ci)[name = string(\"y\")];"), "{}", p.text);
        // The scalar 0.1 is declared once (rounded to fp16) and reused; names stay unique.
        assert_eq!(p.text.matches("fp16(0.099975586)").count(), 1, "{}", p.text);
        assert!(p.text.contains("z_1 = mul(x = z, y = c)"));
        assert!(p.text.ends_with("    } -> (z_1);\n}\n"));
        assert_eq!(p.input, [1, 4, 1, 8]);
        assert_eq!(p.output, [1, 2, 1, 8]);
        assert!(p.weights.contains_key("@model_path/weights/w.bin"));
    }

    #[test]
    fn prints_the_typed_dialect() {
        let mut b = Builder::with_dialect("t", Dialect::Ios16);
        let x = b.input("x", [1, 4, 1, 8]);
        let w = b.weight("w", &[2, 4, 1, 1], crate::ane::blob::fp16(&[0.0; 8]));
        let y = b.conv("y", &x, &w);
        let z = b.scale("z", &y, 0.5);
        let r = b.reshape("r", &z, &[1, 2, 2, 4]);
        let t = b.transpose("t", &r, &[0, 1, 3, 2]);
        let m = b.matmul("m", &t, &r, false, false);
        let o = b.reshape("o", &m, &[1, 2, 1, 16]);
        let p = b.finish(&o);
        let expect = [
            "program(1.0)\n",
            "[buildInfo = dict<tensor<string, []>, tensor<string, []>>({{\"coremlc-component-MIL\", \"3510.2.1\"}, {\"coremlc-version\", \"3505.4.1\"}, {\"coremltools-component-milinternal\", \"\"}, {\"coremltools-version\", \"9.0\"}})]\n{\n",
            "    func main<ios16>(tensor<fp16, [1, 4, 1, 8]> x) {\n",
            "tensor<fp16, [2, 4, 1, 1]> w = const()[name = tensor<string, []>(\"w\"), val = tensor<fp16, [2, 4, 1, 1]>(BLOBFILE(path = tensor<string, []>(\"@model_path/weights/w.bin\"), offset = tensor<uint64, []>(64)))];",
            "tensor<string, []> cs = const()[name = tensor<string, []>(\"cs\"), val = tensor<string, []>(\"valid\")];",
            "tensor<int32, [4]> cv_1 = const()[name = tensor<string, []>(\"cv_1\"), val = tensor<int32, [4]>([0, 0, 0, 0])];",
            "tensor<int32, []> ci = const()[name = tensor<string, []>(\"ci\"), val = tensor<int32, []>(1)];",
            "tensor<fp16, [1, 2, 1, 8]> y = conv(x = x, weight = w, strides = cv, pad_type = cs, pad = cv_1, dilations = cv_2, groups = ci)[name = tensor<string, []>(\"y\")];",
            "tensor<fp16, []> c = const()[name = tensor<string, []>(\"c\"), val = tensor<fp16, []>(0.5)];",
            "tensor<int32, [4]> cv_4 = const()[name = tensor<string, []>(\"cv_4\"), val = tensor<int32, [4]>([0, 1, 3, 2])];",
            "tensor<bool, []> cb = const()[name = tensor<string, []>(\"cb\"), val = tensor<bool, []>(false)];",
            "tensor<fp16, [1, 2, 4, 4]> m = matmul(x = t, y = r, transpose_x = cb, transpose_y = cb)[name = tensor<string, []>(\"m\")];",
            "    } -> (o);\n}\n",
        ];
        for e in expect {
            assert!(p.text.contains(e), "missing {e}\n{}", p.text);
        }
        assert!(p.text.starts_with(expect[0]));
        assert!(!p.text.contains("string(\""), "{}", p.text);
        // It parses and type-checks; the checker sees one dialect.
        let ast = crate::ane::sim::parse::parse(&p.text).unwrap();
        assert!(ast.shorthand_lines.is_empty());
        crate::ane::sim::exec::compile(&ast, &p.weights).unwrap();
    }
}
