//! The program checker: every rule a chip profile ([`crate::ane::chip::Profile`]) imposes on
//! a MIL program, checked on the parsed text, each failure a [`Violation`] that names the rule,
//! the program line, the shape and the public report the rule comes from.
//!
//! One checker serves the strict simulator ([`crate::ane::sim::SimDevice::with_profile`]
//! refuses a program with any violation) and the command-line check of generated programs.
//! The rules are restated with their sources in docs/ANE_HARDWARE.md: `C…` rules are hardware
//! reports (C1–C24 there), `P…` rules keep programs to the patterns the reference trainer
//! (maderix/ANE) ran on hardware. The saturation rule C2 changes results rather than
//! acceptance and is simulated by the executor ([`crate::ane::sim::exec::ExecOptions`]).
//!
//! The checker trusts the declared types of the statements; [`check_text`] also type-checks
//! the program (as the simulator does) when no rule is broken, so `Ok(vec![])` means the
//! program is accepted in strict mode.

use crate::ane::chip::{Dialect, Profile, RopeForm};
use crate::ane::sim::exec;
use crate::ane::sim::parse::{self, Arg, Dt, Function, Lit, Program, Stmt, Ty};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// A rule of the checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// C1: axis caps on every tensor.
    AxisCap,
    /// C3: the RoPE form (no concat off the channel axis on chips that reject the pairs form).
    RopeForm,
    /// C7: the smallest and the aligned input/output surfaces.
    SurfaceMinAlign,
    /// C8: softmax lengths a power of two.
    SoftmaxPow2,
    /// C9: the MIL dialect; no `cast`.
    Dialect,
    /// C11: a single output that is `reshape(matmul(…))`.
    ReshapeMatmulOutput,
    /// C12: a channel reduction fed from a W-axis slice of the input, with matmul/conv.
    NormAfterWSlice,
    /// C17: parameters are named consts, `buildInfo` present, no conv `bias`.
    Literals,
    /// C18: the largest input/output surface.
    SurfaceMax,
    /// P1: only the ops the reference ran on hardware.
    OpsAllowlist,
    /// P2: `transpose_x` only on square operands.
    TransposeXSquare,
    /// P3: no identity reshapes.
    IdentityReshape,
    /// P4: no head regrouping reshapes (GQA `[NH, S] ↔ [NKV, G·S]`).
    HeadRegroup,
    /// P5: one const per parameter kind.
    SharedConst,
    /// P6: aligned, at least 32 wide slices of the function input.
    InputSliceAlign,
    /// P7: one input and one output.
    OneInput,
}

impl Rule {
    /// Every rule, in report order.
    pub const ALL: &'static [Rule] = &[
        Rule::AxisCap,
        Rule::RopeForm,
        Rule::SurfaceMinAlign,
        Rule::SoftmaxPow2,
        Rule::Dialect,
        Rule::ReshapeMatmulOutput,
        Rule::NormAfterWSlice,
        Rule::Literals,
        Rule::SurfaceMax,
        Rule::OpsAllowlist,
        Rule::TransposeXSquare,
        Rule::IdentityReshape,
        Rule::HeadRegroup,
        Rule::SharedConst,
        Rule::InputSliceAlign,
        Rule::OneInput,
    ];

    /// The rule number: `C…` as in docs/ANE_HARDWARE.md, `P…` for reference patterns.
    pub fn code(self) -> &'static str {
        match self {
            Rule::AxisCap => "C1",
            Rule::RopeForm => "C3",
            Rule::SurfaceMinAlign => "C7",
            Rule::SoftmaxPow2 => "C8",
            Rule::Dialect => "C9",
            Rule::ReshapeMatmulOutput => "C11",
            Rule::NormAfterWSlice => "C12",
            Rule::Literals => "C17",
            Rule::SurfaceMax => "C18",
            Rule::OpsAllowlist => "P1",
            Rule::TransposeXSquare => "P2",
            Rule::IdentityReshape => "P3",
            Rule::HeadRegroup => "P4",
            Rule::SharedConst => "P5",
            Rule::InputSliceAlign => "P6",
            Rule::OneInput => "P7",
        }
    }

    /// A short kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Rule::AxisCap => "axis-cap",
            Rule::RopeForm => "rope-form",
            Rule::SurfaceMinAlign => "surface-min-align",
            Rule::SoftmaxPow2 => "softmax-pow2",
            Rule::Dialect => "dialect",
            Rule::ReshapeMatmulOutput => "reshape-matmul-output",
            Rule::NormAfterWSlice => "norm-after-w-slice",
            Rule::Literals => "literals",
            Rule::SurfaceMax => "surface-max",
            Rule::OpsAllowlist => "ops-allowlist",
            Rule::TransposeXSquare => "transpose-x-square",
            Rule::IdentityReshape => "identity-reshape",
            Rule::HeadRegroup => "head-regroup",
            Rule::SharedConst => "shared-const",
            Rule::InputSliceAlign => "input-slice-align",
            Rule::OneInput => "one-input",
        }
    }

    /// The public report the rule comes from, in one line.
    pub fn source(self) -> &'static str {
        match self {
            Rule::AxisCap => "ANEForge _targets.py; rustane #13 (M3 Ultra)",
            Rule::RopeForm => "rustane PR #9 (M3 Ultra)",
            Rule::SurfaceMinAlign => {
                "Espresso (M3 Max); rustane (M4 Max); Orion (M4 Max); maderix/ANE 184b182"
            }
            Rule::SoftmaxPow2 => "Espresso, M3 Max",
            Rule::Dialect => "maderix/ANE PR #6 (M1 Pro); dev-erik/ANE inmem_peak.m",
            Rule::ReshapeMatmulOutput => "luengnat/rustane docs/DPF_COMPILATION_ISSUE.md",
            Rule::NormAfterWSlice => "Espresso; hollance/neural-engine #44 (M3 Max)",
            Rule::Literals => "Orion docs/ane_constraints.md; luengnat/rustane; Espresso",
            Rule::SurfaceMax => {
                "maderix/ANE (largest surface run: 16.4 MB); dev-erik/ANE SRAM probe; Orion (M4 Max)"
            }
            Rule::OpsAllowlist => "maderix/ANE kernels: the ops run on hardware",
            Rule::TransposeXSquare => {
                "maderix/ANE mil_dynamic.h: transpose_x only on square [S, S] attention"
            }
            Rule::IdentityReshape => "maderix/ANE kernels: no identity reshapes",
            Rule::HeadRegroup => "maderix/ANE kernels: GQA tiles K/V with concat",
            Rule::SharedConst => "maderix/ANE kernels: one const per parameter kind",
            Rule::InputSliceAlign => {
                "maderix/ANE dynamic kernels: 64-byte-aligned input slices, none width 1"
            }
            Rule::OneInput => "maderix/ANE README: one input and one output surface (error 0x1d)",
        }
    }
}

impl Rule {
    /// Whether the rule constrains programs under `profile` (C3 only where the pairs RoPE form
    /// is rejected, C8 only where softmax lengths must be powers of two; the rest always).
    pub fn applies(self, profile: &Profile) -> bool {
        match self {
            Rule::RopeForm => profile.rope == RopeForm::Permutation,
            Rule::SoftmaxPow2 => profile.softmax_pow2,
            _ => true,
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code(), self.name())
    }
}

/// One broken rule at one line of the program text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    /// 1-based line of the MIL text.
    pub line: usize,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rule {} {} ({}): line {}: {}",
            self.rule.code(),
            self.rule.name(),
            self.rule.source(),
            self.line,
            self.detail
        )
    }
}

/// The ops the reference trainer ran on hardware (P1).
pub const HARDWARE_OPS: &[&str] = &[
    "const",
    "conv",
    "matmul",
    "add",
    "sub",
    "mul",
    "pow",
    "sigmoid",
    "softmax",
    "reduce_sum",
    "reshape",
    "transpose",
    "slice_by_size",
    "concat",
];

/// The `program(<ver>)` and opset of a dialect.
pub fn dialect_header(d: Dialect) -> (&'static str, &'static str) {
    match d {
        Dialect::Ios18 => ("1.3", "ios18"),
        Dialect::Ios16 => ("1.0", "ios16"),
    }
}

/// Parses `text`, checks it against `profile` and, when no rule is broken, type-checks it
/// against `weights` as the simulator would. `Err` for text that does not parse or does not
/// type-check; `Ok(vec![])` for a program strict mode accepts.
pub fn check_text(
    text: &str,
    weights: &BTreeMap<String, Vec<u8>>,
    profile: &Profile,
) -> Result<Vec<Violation>> {
    let ast = parse::parse(text).context("MIL parse error")?;
    let v = check(&ast, profile);
    if v.is_empty() {
        exec::compile(&ast, weights).context("MIL compile error")?;
    }
    Ok(v)
}

/// [`check_text`] of a generated program (its text and weight dictionary).
pub fn check_program(p: &crate::ane::mil::Program, profile: &Profile) -> Result<Vec<Violation>> {
    check_text(&p.text, &p.weights, profile).with_context(|| format!("kernel {}", p.label))
}

/// Every violation of `profile`'s rules in a parsed program, ordered by line.
pub fn check(ast: &Program, profile: &Profile) -> Vec<Violation> {
    let mut c = Checker {
        profile,
        out: Vec::new(),
    };
    c.program(ast);
    let mut out = c.out;
    out.sort_by_key(|v| (v.line, v.rule));
    out
}

/// A `tensor<…>` type as text.
fn ty_s(t: &Ty) -> String {
    t.to_string()
}

fn pow2(n: usize) -> bool {
    n.is_power_of_two()
}

/// Normalises a possibly negative axis of a rank-`r` tensor.
fn norm_axis(a: i64, r: usize) -> Option<usize> {
    let r = r as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

/// What the checker knows of a variable.
struct Info<'a> {
    ty: Ty,
    line: usize,
    /// The defining statement; `None` for a function parameter.
    stmt: Option<&'a Stmt>,
}

struct Checker<'p> {
    profile: &'p Profile,
    out: Vec<Violation>,
}

impl Checker<'_> {
    fn push(&mut self, rule: Rule, line: usize, detail: String) {
        self.out.push(Violation { rule, line, detail });
    }

    fn program(&mut self, ast: &Program) {
        let p = self.profile;
        // C9: version, opset, literal style.
        let (ver, opset) = dialect_header(p.dialect);
        if ast.version != ver {
            self.push(
                Rule::Dialect,
                ast.version_line,
                format!(
                    "program({}) under profile {}, whose dialect {} is program({ver}) with main<{opset}>",
                    ast.version,
                    p.name,
                    p.dialect.name()
                ),
            );
        }
        let (wrong, style, want) = match p.dialect {
            Dialect::Ios16 => (
                &ast.shorthand_lines,
                "shorthand scalar types/literals (fp16, string(\"x\"), uint64(64))",
                "typed ones (tensor<fp16, []>, tensor<string, []>(\"x\"))",
            ),
            Dialect::Ios18 => (
                &ast.typed_lines,
                "typed scalar types/literals (tensor<string, []>(\"x\"))",
                "shorthand ones (string(\"x\"), fp16(0.5))",
            ),
        };
        if let Some(&first) = wrong.first() {
            self.push(
                Rule::Dialect,
                first,
                format!(
                    "{style} on {} line(s) (first here); profile {} uses dialect {}, which needs {want}",
                    wrong.len(),
                    p.name,
                    p.dialect.name()
                ),
            );
        }
        // C17: buildInfo.
        if !ast.attr_names.iter().any(|(n, _)| n == "buildInfo") {
            self.push(
                Rule::Literals,
                ast.version_line,
                "the program has no [buildInfo = dict<…>(…)] block".into(),
            );
        }
        for f in &ast.functions {
            if f.opset != opset {
                self.push(
                    Rule::Dialect,
                    f.line,
                    format!(
                        "func {}<{}> under profile {}, whose dialect {} is main<{opset}>",
                        f.name,
                        f.opset,
                        p.name,
                        p.dialect.name()
                    ),
                );
            }
            self.function(f);
        }
    }

    fn function(&mut self, f: &Function) {
        let p = self.profile;
        let mut vars: HashMap<&str, Info> = HashMap::new();
        let params: HashSet<&str> = f.params.iter().map(|(_, n)| n.as_str()).collect();
        // P7.
        if f.params.len() != 1 || f.outputs.len() != 1 {
            self.push(
                Rule::OneInput,
                f.line,
                format!(
                    "func {} has {} input(s) and {} output(s); a request binds exactly one input \
                     and one output surface",
                    f.name,
                    f.params.len(),
                    f.outputs.len()
                ),
            );
        }
        for (ty, n) in &f.params {
            self.axis_cap(n, ty, f.line);
            self.surface(&format!("input {n}"), ty, f.line);
            vars.insert(
                n,
                Info {
                    ty: ty.clone(),
                    line: f.line,
                    stmt: None,
                },
            );
        }
        let has_linear = f.body.iter().any(|s| s.op == "matmul" || s.op == "conv");
        // C12: variables derived from a W-axis slice of a function input, with that slice's line.
        let mut from_w_slice: HashMap<&str, usize> = HashMap::new();
        // P5: parameter kinds each static const feeds.
        let mut kinds: BTreeMap<&str, BTreeSet<&'static str>> = BTreeMap::new();
        for s in &f.body {
            self.axis_cap(&s.var, &s.ty, s.line);
            if !HARDWARE_OPS.contains(&s.op.as_str()) {
                if s.op == "cast" {
                    self.push(
                        Rule::Dialect,
                        s.line,
                        format!(
                            "{} = cast(…): M1/M2 have no cast; keep fp16 throughout",
                            s.var
                        ),
                    );
                }
                self.push(
                    Rule::OpsAllowlist,
                    s.line,
                    format!(
                        "{} = {}(…): not an op the reference ran on hardware (it ran {})",
                        s.var,
                        s.op,
                        HARDWARE_OPS.join(", ")
                    ),
                );
            }
            // C17: inline literals, conv bias.
            for (k, a) in &s.args {
                if let Arg::Lit(_) = a {
                    self.push(
                        Rule::Literals,
                        s.line,
                        format!(
                            "parameter {k} of {} = {}(…) is an inline literal; give it a named const",
                            s.var, s.op
                        ),
                    );
                }
            }
            if s.op == "conv" && s.args.iter().any(|(k, _)| k == "bias") {
                self.push(
                    Rule::Literals,
                    s.line,
                    format!(
                        "{} = conv(…, bias = …): conv takes no bias; add it separately",
                        s.var
                    ),
                );
            }
            // P5 uses, C12 taint.
            if s.op != "const" {
                let mut tainted = None;
                for (k, a) in &s.args {
                    let names: Vec<&str> = match a {
                        Arg::Var(n) => vec![n.as_str()],
                        Arg::Tuple(ns) => ns.iter().map(|n| n.as_str()).collect(),
                        Arg::Lit(_) => vec![],
                    };
                    for n in names {
                        if let Some(&l) = from_w_slice.get(n) {
                            tainted.get_or_insert(l);
                        }
                        if let Some(Info {
                            ty, stmt: Some(d), ..
                        }) = vars.get(n)
                        {
                            if d.op == "const" && !ty.dt.is_float() {
                                let kind = match k.as_str() {
                                    "transpose_x" | "transpose_y" => "transpose_x/transpose_y",
                                    other => static_kind(other),
                                };
                                kinds.entry(n).or_default().insert(kind);
                            }
                        }
                    }
                }
                if s.op == "slice_by_size" {
                    if let Some(Arg::Var(x)) = arg(s, "x") {
                        if params.contains(x.as_str()) {
                            let xs = vars.get(x.as_str()).and_then(|i| i.ty.shape.clone());
                            let begin = arg(s, "begin").and_then(|a| const_ints(a, &vars));
                            let cuts_w = match (&xs, &s.ty.shape, &begin) {
                                (Some(xs), Some(os), b) if xs.len() == 4 && os.len() == 4 => {
                                    os[3] != xs[3]
                                        || b.as_ref().is_some_and(|b| b.get(3) != Some(&0))
                                }
                                _ => false,
                            };
                            if cuts_w {
                                tainted = Some(s.line);
                            }
                            self.input_slice(s, xs.as_deref(), begin.as_deref());
                        }
                    }
                }
                if let Some(l) = tainted {
                    from_w_slice.insert(&s.var, l);
                }
            }
            match s.op.as_str() {
                "softmax" if p.softmax_pow2 => {
                    let r = s.ty.shape.as_ref().map_or(0, |v| v.len());
                    let a = arg(s, "axis")
                        .and_then(|a| const_ints(a, &vars))
                        .and_then(|v| v.first().copied())
                        .unwrap_or(-1);
                    if let (Some(ax), Some(sh)) = (norm_axis(a, r), &s.ty.shape) {
                        if !pow2(sh[ax]) {
                            self.push(
                                Rule::SoftmaxPow2,
                                s.line,
                                format!(
                                    "softmax over {} (axis {ax} of {}), not a power of two",
                                    sh[ax],
                                    ty_s(&s.ty)
                                ),
                            );
                        }
                    }
                }
                "concat" if p.rope == RopeForm::Permutation => {
                    let r = s.ty.shape.as_ref().map_or(0, |v| v.len());
                    let a = arg(s, "axis")
                        .and_then(|a| const_ints(a, &vars))
                        .and_then(|v| v.first().copied());
                    if let Some(ax) = a.and_then(|a| norm_axis(a, r)) {
                        if ax != 1 {
                            self.push(
                                Rule::RopeForm,
                                s.line,
                                format!(
                                    "concat on axis {ax} into {}; profile {} accepts concat only on \
                                     the channel axis 1 (write RoPE as t·cos + (t·P)·sin)",
                                    ty_s(&s.ty),
                                    p.name
                                ),
                            );
                        }
                    }
                }
                "matmul" => {
                    let tx = arg(s, "transpose_x").and_then(|a| const_bool(a, &vars));
                    let x = arg(s, "x").and_then(|a| match a {
                        Arg::Var(n) => vars.get(n.as_str()),
                        _ => None,
                    });
                    if let (Some(true), Some(x)) = (tx, x) {
                        if let Some(xs) = x.ty.shape.as_ref().filter(|v| v.len() >= 2) {
                            let (r, c) = (xs[xs.len() - 2], xs[xs.len() - 1]);
                            if r != c {
                                self.push(
                                    Rule::TransposeXSquare,
                                    s.line,
                                    format!(
                                        "{} = matmul(transpose_x = true) of x {}: its last two \
                                         axes {r}×{c} are not square",
                                        s.var,
                                        ty_s(&x.ty)
                                    ),
                                );
                            }
                        }
                    }
                }
                "reshape" => {
                    let x = arg(s, "x").and_then(|a| match a {
                        Arg::Var(n) => vars.get(n.as_str()),
                        _ => None,
                    });
                    if let (Some(xs), Some(os)) = (x.and_then(|x| x.ty.shape.as_ref()), &s.ty.shape)
                    {
                        if xs == os {
                            self.push(
                                Rule::IdentityReshape,
                                s.line,
                                format!("{} = reshape(…) to its own shape {os:?}", s.var),
                            );
                        } else if xs.len() == 4
                            && os.len() == 4
                            && xs[0] == 1
                            && os[0] == 1
                            && xs[3] == os[3]
                            && xs[1] != os[1]
                            && [xs[1], xs[2], os[1], os[2]].iter().all(|&d| d > 1)
                        {
                            self.push(
                                Rule::HeadRegroup,
                                s.line,
                                format!(
                                    "{} = reshape {xs:?} → {os:?} regroups heads; tile (concat) \
                                     instead",
                                    s.var
                                ),
                            );
                        }
                    }
                }
                "reduce_sum" if has_linear => {
                    let r = s.ty.shape.as_ref().map_or(0, |v| v.len());
                    let axes = arg(s, "axes").and_then(|a| const_ints(a, &vars));
                    let over_c =
                        axes.is_some_and(|v| v.iter().any(|&a| norm_axis(a, r) == Some(1)));
                    if over_c {
                        if let Some(&l) = from_w_slice.get(s.var.as_str()) {
                            self.push(
                                Rule::NormAfterWSlice,
                                s.line,
                                format!(
                                    "{} = reduce_sum over channels of values from the W-axis \
                                     slice of the input on line {l}, in a program with \
                                     matmul/conv; normalise on the CPU or in a separate program",
                                    s.var
                                ),
                            );
                        }
                    }
                }
                _ => {}
            }
            vars.insert(
                &s.var,
                Info {
                    ty: s.ty.clone(),
                    line: s.line,
                    stmt: Some(s),
                },
            );
        }
        for (n, ks) in &kinds {
            if ks.len() > 1 {
                let line = vars.get(n).map_or(f.line, |i| i.line);
                let ks: Vec<&str> = ks.iter().copied().collect();
                self.push(
                    Rule::SharedConst,
                    line,
                    format!(
                        "const {n} feeds parameters of {} kinds ({}); declare one const per kind",
                        ks.len(),
                        ks.join(", ")
                    ),
                );
            }
        }
        for o in &f.outputs {
            if let Some(i) = vars.get(o.as_str()) {
                let ty = i.ty.clone();
                self.surface(&format!("output {o}"), &ty, f.outputs_line);
            }
        }
        // C11.
        if let [o] = f.outputs.as_slice() {
            if let Some(Info { stmt: Some(s), .. }) = vars.get(o.as_str()) {
                if s.op == "reshape" {
                    if let Some(Arg::Var(x)) = arg(s, "x") {
                        if let Some(Info { stmt: Some(m), .. }) = vars.get(x.as_str()) {
                            if m.op == "matmul" {
                                self.push(
                                    Rule::ReshapeMatmulOutput,
                                    s.line,
                                    format!(
                                        "the single output {o} {} is reshape(matmul(…)) of line {}; \
                                         end with matmul → transpose → reshape",
                                        ty_s(&s.ty),
                                        m.line
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// C1 on one tensor.
    fn axis_cap(&mut self, name: &str, ty: &Ty, line: usize) {
        let p = self.profile;
        let Some(sh) = ty.shape.as_ref().filter(|s| s.len() == 4) else {
            return;
        };
        if sh[1] > p.max_channels {
            self.push(
                Rule::AxisCap,
                line,
                format!(
                    "{name} {}: axis 1 is {}, above profile {}'s channel cap {}",
                    ty_s(ty),
                    sh[1],
                    p.name,
                    p.max_channels
                ),
            );
        }
        for ax in [2, 3] {
            if sh[ax] > p.max_axis {
                self.push(
                    Rule::AxisCap,
                    line,
                    format!(
                        "{name} {}: axis {ax} is {}, above profile {}'s axis cap {}",
                        ty_s(ty),
                        sh[ax],
                        p.name,
                        p.max_axis
                    ),
                );
            }
        }
    }

    /// C7 and C18 on an input or output surface.
    fn surface(&mut self, what: &str, ty: &Ty, line: usize) {
        let p = self.profile;
        let Some(sh) = ty.shape.as_ref().filter(|s| s.len() == 4) else {
            return;
        };
        let (c, w) = (sh[1], sh[3]);
        let bytes = 2 * sh.iter().product::<usize>();
        let mut why = Vec::new();
        if w < p.min_width {
            why.push(format!("width {w} < {}", p.min_width));
        }
        if w % p.width_multiple != 0 {
            why.push(format!("width {w} not a multiple of {}", p.width_multiple));
        }
        if c % p.channel_multiple != 0 {
            why.push(format!(
                "channels {c} not a multiple of {}",
                p.channel_multiple
            ));
        }
        if bytes < p.min_surface_bytes {
            why.push(format!("{bytes} bytes < {}", p.min_surface_bytes));
        }
        if !why.is_empty() {
            self.push(
                Rule::SurfaceMinAlign,
                line,
                format!(
                    "{what} {}: {} (profile {})",
                    ty_s(ty),
                    why.join(", "),
                    p.name
                ),
            );
        }
        if bytes > p.max_surface_bytes {
            self.push(
                Rule::SurfaceMax,
                line,
                format!(
                    "{what} {}: {bytes} bytes, above profile {}'s largest surface of {} bytes",
                    ty_s(ty),
                    p.name,
                    p.max_surface_bytes
                ),
            );
        }
    }

    /// P6 on a slice of the function input.
    fn input_slice(&mut self, s: &Stmt, xs: Option<&[usize]>, begin: Option<&[i64]>) {
        let (Some(xs), Some(b), Some(os)) = (xs, begin, s.ty.shape.as_ref()) else {
            return;
        };
        if xs.len() != 4 || b.len() != 4 || os.len() != 4 {
            return;
        }
        let mut why = Vec::new();
        for ax in [1, 3] {
            if b[ax] % 32 != 0 {
                why.push(format!(
                    "begins at {} on axis {ax}, not a multiple of 32",
                    b[ax]
                ));
            }
        }
        if os[3] < 32 {
            why.push(format!("is {} wide, narrower than 32", os[3]));
        }
        if !why.is_empty() {
            self.push(
                Rule::InputSliceAlign,
                s.line,
                format!(
                    "{} = slice_by_size of the input {xs:?} to {}: {}",
                    s.var,
                    ty_s(&s.ty),
                    why.join("; ")
                ),
            );
        }
    }
}

/// The kind of a static parameter, as a `'static` name.
fn static_kind(k: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "strides",
        "pad_type",
        "pad",
        "dilations",
        "groups",
        "axis",
        "axes",
        "keep_dims",
        "shape",
        "perm",
        "begin",
        "size",
        "interleave",
        "dtype",
        "x",
        "y",
    ];
    KNOWN.iter().copied().find(|n| *n == k).unwrap_or("other")
}

fn arg<'s>(s: &'s Stmt, k: &str) -> Option<&'s Arg> {
    s.args.iter().find(|(n, _)| n == k).map(|(_, a)| a)
}

/// The value literal of an argument: inline, or the `val` of a const variable.
fn lit_of<'a>(a: &'a Arg, vars: &'a HashMap<&str, Info>) -> Option<&'a Lit> {
    match a {
        Arg::Lit(l) => Some(l),
        Arg::Var(n) => {
            let s = vars.get(n.as_str())?.stmt?;
            if s.op != "const" {
                return None;
            }
            s.attrs.iter().find(|(k, _)| k == "val").map(|(_, v)| v)
        }
        Arg::Tuple(_) => None,
    }
}

fn const_ints(a: &Arg, vars: &HashMap<&str, Info>) -> Option<Vec<i64>> {
    match lit_of(a, vars)? {
        Lit::Num(dt, v) if !dt.is_float() => Some(vec![*v as i64]),
        Lit::Tensor(ty, vals) if !ty.dt.is_float() && ty.dt != Dt::Bool && ty.dt != Dt::Str => vals
            .iter()
            .map(|x| match x {
                Lit::Num(_, v) => Some(*v as i64),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn const_bool(a: &Arg, vars: &HashMap<&str, Info>) -> Option<bool> {
    match lit_of(a, vars)? {
        Lit::Bool(b) => Some(*b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_have_distinct_codes_and_names() {
        let codes: HashSet<&str> = Rule::ALL.iter().map(|r| r.code()).collect();
        let names: HashSet<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(codes.len(), Rule::ALL.len());
        assert_eq!(names.len(), Rule::ALL.len());
        for r in Rule::ALL {
            assert!(!r.source().contains('\n') && !r.source().is_empty());
            assert!(r
                .name()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
        let m4 = Profile::named("m4").unwrap();
        assert!(!Rule::RopeForm.applies(&m4) && Rule::RopeForm.applies(&Profile::conservative()));
        assert!(Rule::ALL
            .iter()
            .all(|r| r.applies(&Profile::conservative())));
        let v = Violation {
            rule: Rule::SoftmaxPow2,
            line: 42,
            detail: "softmax over 100, not a power of two".into(),
        };
        assert_eq!(
            v.to_string(),
            "rule C8 softmax-pow2 (Espresso, M3 Max): line 42: softmax over 100, not a power of two"
        );
    }
}
