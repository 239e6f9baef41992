//! The strict simulator: one hand-written program per checker rule that breaks exactly that
//! rule and is refused with the rule's code and name, next to a compliant variant that
//! compiles; both MIL dialects; the simulated C2 saturation; injected failures.
//!
//! Programs are written as text in the shorthand (ios18) dialect and converted line by line to
//! the typed (ios16) one by [`ios16`], so every case runs under `conservative` (ios16) and under
//! `m3` (ios18, otherwise the same rules).

use anetrain::ane::blob;
use anetrain::ane::check::{check_text, Rule};
use anetrain::ane::chip::Profile;
use anetrain::ane::device::Device;
use anetrain::ane::mil::{Builder, Dialect, Program};
use anetrain::ane::sim::{compile_text, parse, SimDevice};
use half::f16;
use std::collections::{BTreeMap, BTreeSet};

/// The weight path used by the cases with a conv.
const W: &str = "@model_path/weights/w.bin";

/// An ios18 program: header (lines 1–4), `body` from line 5, one output `out`.
fn prog(params: &str, body: &str, out: &str) -> String {
    format!(
        "program(1.3)\n[buildInfo = dict<string, string>({{{{\"coremlc-version\", \"3505.4.1\"}}}})]\n{{\n    func main<ios18>({params}) {{\n{body}\n    }} -> ({out});\n}}\n"
    )
}

/// The same program in the typed dialect: `program(1.0)`, `main<ios16>`, typed scalar types
/// and literals. Line numbers are unchanged.
fn ios16(t: &str) -> String {
    let mut out = String::new();
    for line in t.lines() {
        let mut l = line
            .replace("program(1.3)", "program(1.0)")
            .replace("<ios18>", "<ios16>")
            .replace(
                "dict<string, string>",
                "dict<tensor<string, []>, tensor<string, []>>",
            );
        for dt in ["fp16", "fp32", "int32", "bool", "string", "uint64"] {
            l = l.replace(&format!("{dt}("), &format!("tensor<{dt}, []>("));
            let body = l.trim_start();
            if let Some(rest) = body.strip_prefix(&format!("{dt} ")) {
                let indent = l.len() - body.len();
                l = format!("{}tensor<{dt}, []> {rest}", &l[..indent]);
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn weights() -> BTreeMap<String, Vec<u8>> {
    // A 64×64 1×1 conv weight with small, exactly representable values.
    let w: Vec<f32> = (0..64 * 64)
        .map(|i| ((i * 7) % 13) as f32 / 64.0 - 0.09375)
        .collect();
    BTreeMap::from([(W.to_string(), blob::fp16(&w))])
}

fn program(text: &str, w: &BTreeMap<String, Vec<u8>>) -> Program {
    Program {
        label: "strictTest".into(),
        text: text.into(),
        weights: w.clone(),
        input: [1, 1, 1, 1],
        output: [1, 1, 1, 1],
    }
}

fn err_text(r: anyhow::Result<impl Sized>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

const X: &str = "tensor<fp16, [1, 64, 1, 384]> x";
const X1024: &str = "tensor<fp16, [1, 64, 1, 1024]> x";

/// A conv of `src` ([1, 64, 1, W]) into `dst`, with its own static consts (one per kind).
fn conv(dst: &str, src: &str, wdim: usize) -> String {
    format!("{}\n{}", conv_consts(), conv_stmt(dst, src, wdim))
}

/// The weight and static parameters of [`conv_stmt`].
fn conv_consts() -> String {
    format!(
        r#"        tensor<fp16, [64, 64, 1, 1]> w = const()[name = string("w"), val = tensor<fp16, [64, 64, 1, 1]>(BLOBFILE(path = string("{W}"), offset = uint64(64)))];
        tensor<int32, [2]> st = const()[name = string("st"), val = tensor<int32, [2]>([1, 1])];
        tensor<int32, [2]> dl = const()[name = string("dl"), val = tensor<int32, [2]>([1, 1])];
        string pt = const()[name = string("pt"), val = string("valid")];
        tensor<int32, [4]> pd = const()[name = string("pd"), val = tensor<int32, [4]>([0, 0, 0, 0])];
        int32 gr = const()[name = string("gr"), val = int32(1)];"#
    )
}

fn conv_stmt(dst: &str, src: &str, wdim: usize) -> String {
    format!(
        r#"        tensor<fp16, [1, 64, 1, {wdim}]> {dst} = conv(x = {src}, weight = w, strides = st, pad_type = pt, pad = pd, dilations = dl, groups = gr)[name = string("{dst}")];"#
    )
}

/// One rule's pair of programs (ios18 text; the ios16 twin is derived).
struct Case {
    rule: Rule,
    /// Breaks exactly `rule`.
    bad: String,
    /// The compliant variant.
    good: String,
}

fn case(rule: Rule, bad: String, good: String) -> Case {
    Case { rule, bad, good }
}

fn cases() -> Vec<Case> {
    let c = r#"        fp16 c = const()[name = string("c"), val = fp16(0.5)];"#;
    let mul = format!(
        "{c}\n        tensor<fp16, [1, 64, 1, 384]> y = mul(x = x, y = c)[name = string(\"y\")];"
    );
    let r1 = r#"        tensor<int32, [4]> s1 = const()[name = string("s1"), val = tensor<int32, [4]>([1, 1, 64, 384])];
        tensor<fp16, [1, 1, 64, 384]> r = reshape(x = x, shape = s1)[name = string("r")];
        tensor<int32, [4]> pm = const()[name = string("pm"), val = tensor<int32, [4]>([0, 1, 3, 2])];
        tensor<fp16, [1, 1, 384, 64]> rt = transpose(x = r, perm = pm)[name = string("rt")];
        bool f = const()[name = string("f"), val = bool(false)];
        bool t = const()[name = string("t"), val = bool(true)];
        tensor<int32, [4]> s2 = const()[name = string("s2"), val = tensor<int32, [4]>([1, 384, 1, 384])];"#;
    vec![
        // C1: an intermediate axis of 24 576 > 16 384.
        case(
            Rule::AxisCap,
            prog(
                X,
                r#"        tensor<int32, [4]> s1 = const()[name = string("s1"), val = tensor<int32, [4]>([1, 1, 1, 24576])];
        tensor<fp16, [1, 1, 1, 24576]> r = reshape(x = x, shape = s1)[name = string("r")];
        tensor<int32, [4]> s2 = const()[name = string("s2"), val = tensor<int32, [4]>([1, 64, 1, 384])];
        tensor<fp16, [1, 64, 1, 384]> y = reshape(x = r, shape = s2)[name = string("y")];"#,
                "y",
            ),
            prog(
                X,
                r#"        tensor<int32, [4]> s1 = const()[name = string("s1"), val = tensor<int32, [4]>([1, 1, 64, 384])];
        tensor<fp16, [1, 1, 64, 384]> r = reshape(x = x, shape = s1)[name = string("r")];
        tensor<int32, [4]> s2 = const()[name = string("s2"), val = tensor<int32, [4]>([1, 64, 1, 384])];
        tensor<fp16, [1, 64, 1, 384]> y = reshape(x = r, shape = s2)[name = string("y")];"#,
                "y",
            ),
        ),
        // C3: concat on the W axis (the pairs RoPE form's concat) vs on channels.
        case(
            Rule::RopeForm,
            prog(
                X,
                r#"        tensor<int32, [4]> b0 = const()[name = string("b0"), val = tensor<int32, [4]>([0, 0, 0, 0])];
        tensor<int32, [4]> b1 = const()[name = string("b1"), val = tensor<int32, [4]>([0, 0, 0, 192])];
        tensor<int32, [4]> sz = const()[name = string("sz"), val = tensor<int32, [4]>([1, 64, 1, 192])];
        tensor<fp16, [1, 64, 1, 192]> lo = slice_by_size(x = x, begin = b0, size = sz)[name = string("lo")];
        tensor<fp16, [1, 64, 1, 192]> hi = slice_by_size(x = x, begin = b1, size = sz)[name = string("hi")];
        int32 ax = const()[name = string("ax"), val = int32(3)];
        bool il = const()[name = string("il"), val = bool(false)];
        tensor<fp16, [1, 64, 1, 384]> y = concat(values = (hi, lo), axis = ax, interleave = il)[name = string("y")];"#,
                "y",
            ),
            prog(
                X,
                r#"        tensor<int32, [4]> b0 = const()[name = string("b0"), val = tensor<int32, [4]>([0, 0, 0, 0])];
        tensor<int32, [4]> b1 = const()[name = string("b1"), val = tensor<int32, [4]>([0, 32, 0, 0])];
        tensor<int32, [4]> sz = const()[name = string("sz"), val = tensor<int32, [4]>([1, 32, 1, 384])];
        tensor<fp16, [1, 32, 1, 384]> lo = slice_by_size(x = x, begin = b0, size = sz)[name = string("lo")];
        tensor<fp16, [1, 32, 1, 384]> hi = slice_by_size(x = x, begin = b1, size = sz)[name = string("hi")];
        int32 ax = const()[name = string("ax"), val = int32(1)];
        bool il = const()[name = string("il"), val = bool(false)];
        tensor<fp16, [1, 64, 1, 384]> y = concat(values = (hi, lo), axis = ax, interleave = il)[name = string("y")];"#,
                "y",
            ),
        ),
        // C7: W = 96 (not a multiple of 64) and 12 KB (< 48 KB).
        case(
            Rule::SurfaceMinAlign,
            prog(
                "tensor<fp16, [1, 64, 1, 96]> x",
                &format!("{c}\n        tensor<fp16, [1, 64, 1, 96]> y = mul(x = x, y = c)[name = string(\"y\")];"),
                "y",
            ),
            prog(X, &mul, "y"),
        ),
        // C8: softmax over 384 (W) vs over 64 (channels).
        case(
            Rule::SoftmaxPow2,
            prog(
                X,
                r#"        int32 ax = const()[name = string("ax"), val = int32(3)];
        tensor<fp16, [1, 64, 1, 384]> y = softmax(x = x, axis = ax)[name = string("y")];"#,
                "y",
            ),
            prog(
                X,
                r#"        int32 ax = const()[name = string("ax"), val = int32(1)];
        tensor<fp16, [1, 64, 1, 384]> y = softmax(x = x, axis = ax)[name = string("y")];"#,
                "y",
            ),
        ),
        // C9 is table-driven separately (the bad program is the other dialect's text);
        // here: the ios18 text marked for conversion by an empty `good`.
        case(Rule::Dialect, String::new(), prog(X, &mul, "y")),
        // C11: the single output is reshape(matmul(…)) vs matmul → transpose → reshape.
        case(
            Rule::ReshapeMatmulOutput,
            prog(
                X,
                &format!(
                    "{r1}\n        tensor<fp16, [1, 1, 384, 384]> m = matmul(x = rt, y = r, transpose_x = f, transpose_y = f)[name = string(\"m\")];\n        tensor<fp16, [1, 384, 1, 384]> y = reshape(x = m, shape = s2)[name = string(\"y\")];"
                ),
                "y",
            ),
            prog(
                X,
                &format!(
                    "{r1}\n        tensor<fp16, [1, 1, 384, 384]> m = matmul(x = rt, y = r, transpose_x = f, transpose_y = f)[name = string(\"m\")];\n        tensor<fp16, [1, 1, 384, 384]> mt = transpose(x = m, perm = pm)[name = string(\"mt\")];\n        tensor<fp16, [1, 384, 1, 384]> y = reshape(x = mt, shape = s2)[name = string(\"y\")];"
                ),
                "y",
            ),
        ),
        // C12: RMSNorm-like channel sum of a W-slice of the input, then a conv; vs the same
        // over a channel slice.
        case(
            Rule::NormAfterWSlice,
            prog(
                X1024,
                &format!(
                    r#"        tensor<int32, [4]> b0 = const()[name = string("b0"), val = tensor<int32, [4]>([0, 0, 0, 0])];
        tensor<int32, [4]> sz = const()[name = string("sz"), val = tensor<int32, [4]>([1, 64, 1, 384])];
        tensor<fp16, [1, 64, 1, 384]> h = slice_by_size(x = x, begin = b0, size = sz)[name = string("h")];
        tensor<fp16, [1, 64, 1, 384]> sq = mul(x = h, y = h)[name = string("sq")];
        tensor<int32, [1]> a1 = const()[name = string("a1"), val = tensor<int32, [1]>([1])];
        bool kd = const()[name = string("kd"), val = bool(true)];
        tensor<fp16, [1, 1, 1, 384]> ss = reduce_sum(x = sq, axes = a1, keep_dims = kd)[name = string("ss")];
        tensor<fp16, [1, 64, 1, 384]> n = mul(x = h, y = ss)[name = string("n")];
{}"#,
                    conv("y", "n", 384)
                ),
                "y",
            ),
            prog(
                "tensor<fp16, [1, 128, 1, 384]> x",
                &format!(
                    r#"        tensor<int32, [4]> b0 = const()[name = string("b0"), val = tensor<int32, [4]>([0, 0, 0, 0])];
        tensor<int32, [4]> sz = const()[name = string("sz"), val = tensor<int32, [4]>([1, 64, 1, 384])];
        tensor<fp16, [1, 64, 1, 384]> h = slice_by_size(x = x, begin = b0, size = sz)[name = string("h")];
        tensor<fp16, [1, 64, 1, 384]> sq = mul(x = h, y = h)[name = string("sq")];
        tensor<int32, [1]> a1 = const()[name = string("a1"), val = tensor<int32, [1]>([1])];
        bool kd = const()[name = string("kd"), val = bool(true)];
        tensor<fp16, [1, 1, 1, 384]> ss = reduce_sum(x = sq, axes = a1, keep_dims = kd)[name = string("ss")];
        tensor<fp16, [1, 64, 1, 384]> n = mul(x = h, y = ss)[name = string("n")];
{}"#,
                    conv("y", "n", 384)
                ),
                "y",
            ),
        ),
        // C17: an inline literal parameter (the other C17 forms are in their own test).
        case(
            Rule::Literals,
            prog(
                X,
                "        tensor<fp16, [1, 64, 1, 384]> y = softmax(x = x, axis = int32(1))[name = string(\"y\")];",
                "y",
            ),
            prog(
                X,
                r#"        int32 ax = const()[name = string("ax"), val = int32(1)];
        tensor<fp16, [1, 64, 1, 384]> y = softmax(x = x, axis = ax)[name = string("y")];"#,
                "y",
            ),
        ),
        // C18: a 32 MB input and output vs exactly 16 MB.
        case(
            Rule::SurfaceMax,
            prog(
                "tensor<fp16, [1, 1024, 1, 16384]> x",
                &format!("{c}\n        tensor<fp16, [1, 1024, 1, 16384]> y = mul(x = x, y = c)[name = string(\"y\")];"),
                "y",
            ),
            prog(
                "tensor<fp16, [1, 512, 1, 16384]> x",
                &format!("{c}\n        tensor<fp16, [1, 512, 1, 16384]> y = mul(x = x, y = c)[name = string(\"y\")];"),
                "y",
            ),
        ),
        // P1: real_div (never run on hardware) vs mul.
        case(
            Rule::OpsAllowlist,
            prog(
                X,
                &format!("{c}\n        tensor<fp16, [1, 64, 1, 384]> y = real_div(x = x, y = c)[name = string(\"y\")];"),
                "y",
            ),
            prog(X, &mul, "y"),
        ),
        // P2: transpose_x on a [64, 384] operand vs an explicit transpose first.
        case(
            Rule::TransposeXSquare,
            prog(
                X,
                &format!(
                    "{r1}\n        tensor<fp16, [1, 1, 384, 384]> m = matmul(x = r, y = r, transpose_x = t, transpose_y = f)[name = string(\"m\")];\n        tensor<fp16, [1, 1, 384, 384]> mt = transpose(x = m, perm = pm)[name = string(\"mt\")];\n        tensor<fp16, [1, 384, 1, 384]> y = reshape(x = mt, shape = s2)[name = string(\"y\")];"
                ),
                "y",
            ),
            prog(
                X,
                &format!(
                    "{r1}\n        tensor<fp16, [1, 1, 384, 384]> m = matmul(x = rt, y = r, transpose_x = f, transpose_y = f)[name = string(\"m\")];\n        tensor<fp16, [1, 1, 384, 384]> mt = transpose(x = m, perm = pm)[name = string(\"mt\")];\n        tensor<fp16, [1, 384, 1, 384]> y = reshape(x = mt, shape = s2)[name = string(\"y\")];"
                ),
                "y",
            ),
        ),
        // P3: a reshape to the same shape vs a mul.
        case(
            Rule::IdentityReshape,
            prog(
                X,
                r#"        tensor<int32, [4]> s1 = const()[name = string("s1"), val = tensor<int32, [4]>([1, 64, 1, 384])];
        tensor<fp16, [1, 64, 1, 384]> y = reshape(x = x, shape = s1)[name = string("y")];"#,
                "y",
            ),
            prog(X, &mul, "y"),
        ),
        // P4: [1, 4, 16, S] → [1, 2, 32, S] regroups heads; [1, 64, 1, S] ↔ [1, 4, 16, S] is fine.
        case(
            Rule::HeadRegroup,
            prog(
                X,
                r#"        tensor<int32, [4]> s1 = const()[name = string("s1"), val = tensor<int32, [4]>([1, 4, 16, 384])];
        tensor<fp16, [1, 4, 16, 384]> h = reshape(x = x, shape = s1)[name = string("h")];
        tensor<int32, [4]> s2 = const()[name = string("s2"), val = tensor<int32, [4]>([1, 2, 32, 384])];
        tensor<fp16, [1, 2, 32, 384]> g = reshape(x = h, shape = s2)[name = string("g")];
        tensor<int32, [4]> s3 = const()[name = string("s3"), val = tensor<int32, [4]>([1, 64, 1, 384])];
        tensor<fp16, [1, 64, 1, 384]> y = reshape(x = g, shape = s3)[name = string("y")];"#,
                "y",
            ),
            prog(
                X,
                r#"        tensor<int32, [4]> s1 = const()[name = string("s1"), val = tensor<int32, [4]>([1, 4, 16, 384])];
        tensor<fp16, [1, 4, 16, 384]> h = reshape(x = x, shape = s1)[name = string("h")];
        tensor<int32, [4]> s3 = const()[name = string("s3"), val = tensor<int32, [4]>([1, 64, 1, 384])];
        tensor<fp16, [1, 64, 1, 384]> y = reshape(x = h, shape = s3)[name = string("y")];"#,
                "y",
            ),
        ),
        // P5: one [0, 0, 0, 0] as slice begin and conv pad vs one const each.
        case(
            Rule::SharedConst,
            prog(
                X1024,
                &format!(
                    "{}\n        tensor<int32, [4]> sz = const()[name = string(\"sz\"), val = tensor<int32, [4]>([1, 64, 1, 384])];\n        tensor<fp16, [1, 64, 1, 384]> h = slice_by_size(x = x, begin = pd, size = sz)[name = string(\"h\")];\n{}",
                    conv_consts(),
                    conv_stmt("y", "h", 384)
                ),
                "y",
            ),
            prog(
                X1024,
                &format!(
                    "        tensor<int32, [4]> b0 = const()[name = string(\"b0\"), val = tensor<int32, [4]>([0, 0, 0, 0])];\n        tensor<int32, [4]> sz = const()[name = string(\"sz\"), val = tensor<int32, [4]>([1, 64, 1, 384])];\n        tensor<fp16, [1, 64, 1, 384]> h = slice_by_size(x = x, begin = b0, size = sz)[name = string(\"h\")];\n{}",
                    conv("y", "h", 384)
                ),
                "y",
            ),
        ),
        // P6: a width-1 gain slice and an unaligned slice of the input vs one aligned slice.
        case(
            Rule::InputSliceAlign,
            prog(
                X1024,
                r#"        tensor<int32, [4]> b0 = const()[name = string("b0"), val = tensor<int32, [4]>([0, 0, 0, 0])];
        tensor<int32, [4]> s1 = const()[name = string("s1"), val = tensor<int32, [4]>([1, 64, 1, 1])];
        tensor<fp16, [1, 64, 1, 1]> g = slice_by_size(x = x, begin = b0, size = s1)[name = string("g")];
        tensor<int32, [4]> b1 = const()[name = string("b1"), val = tensor<int32, [4]>([0, 0, 0, 257])];
        tensor<int32, [4]> s2 = const()[name = string("s2"), val = tensor<int32, [4]>([1, 64, 1, 384])];
        tensor<fp16, [1, 64, 1, 384]> h = slice_by_size(x = x, begin = b1, size = s2)[name = string("h")];
        tensor<fp16, [1, 64, 1, 384]> y = mul(x = h, y = g)[name = string("y")];"#,
                "y",
            ),
            prog(
                X1024,
                r#"        tensor<int32, [4]> b1 = const()[name = string("b1"), val = tensor<int32, [4]>([0, 0, 0, 256])];
        tensor<int32, [4]> s2 = const()[name = string("s2"), val = tensor<int32, [4]>([1, 64, 1, 384])];
        tensor<fp16, [1, 64, 1, 384]> h = slice_by_size(x = x, begin = b1, size = s2)[name = string("h")];
        tensor<fp16, [1, 64, 1, 384]> y = mul(x = h, y = h)[name = string("y")];"#,
                "y",
            ),
        ),
        // P7: two inputs vs one.
        case(
            Rule::OneInput,
            prog(
                "tensor<fp16, [1, 64, 1, 384]> a, tensor<fp16, [1, 64, 1, 384]> b",
                "        tensor<fp16, [1, 64, 1, 384]> y = add(x = a, y = b)[name = string(\"y\")];",
                "y",
            ),
            prog(
                X,
                "        tensor<fp16, [1, 64, 1, 384]> y = add(x = x, y = x)[name = string(\"y\")];",
                "y",
            ),
        ),
    ]
}

/// Rules broken by `text` under `profile` (the checker's verdict).
fn rules_of(text: &str, profile: &Profile) -> BTreeSet<Rule> {
    check_text(text, &weights(), profile)
        .unwrap_or_else(|e| panic!("{e:#}\n{text}"))
        .iter()
        .map(|v| v.rule)
        .collect()
}

/// The offending text of a case in the dialect of `profile`, and the profile.
fn variants(c: &Case) -> Vec<(Profile, String, String)> {
    let m3 = Profile::named("m3").unwrap();
    let cons = Profile::conservative();
    assert_eq!(cons.dialect, Dialect::Ios16);
    assert_eq!(m3.dialect, Dialect::Ios18);
    if c.rule == Rule::Dialect {
        // Each dialect's text is the other profile's violation.
        return vec![
            (cons, c.good.clone(), ios16(&c.good)),
            (m3, ios16(&c.good), c.good.clone()),
        ];
    }
    vec![
        (cons, ios16(&c.bad), ios16(&c.good)),
        (m3, c.bad.clone(), c.good.clone()),
    ]
}

#[test]
fn every_rule_has_a_program_that_breaks_exactly_it() {
    let cases = cases();
    let covered: BTreeSet<Rule> = cases.iter().map(|c| c.rule).collect();
    let all: BTreeSet<Rule> = Rule::ALL.iter().copied().collect();
    assert_eq!(covered, all, "the table must cover Rule::ALL");
    assert_eq!(cases.len(), Rule::ALL.len());
    for c in &cases {
        for (profile, bad, good) in variants(c) {
            let want = format!("{} {}", c.rule.code(), c.rule.name());
            // The checker names exactly this rule.
            assert_eq!(
                rules_of(&bad, &profile),
                BTreeSet::from([c.rule]),
                "{want} under {}:\n{bad}",
                profile.name
            );
            // The strict device refuses it, naming the rule, its source, the kernel and a line.
            let mut dev = SimDevice::with_profile(profile.clone());
            let e = err_text(dev.compile(&program(&bad, &weights())));
            assert!(
                e.contains(&want)
                    && e.contains(c.rule.source())
                    && e.contains("strictTest")
                    && e.contains(": line ")
                    && e.contains(&profile.name),
                "{want} under {}: {e}",
                profile.name
            );
            assert_eq!(dev.compiles(), 0);
            // The compliant variant passes the checker and compiles.
            assert_eq!(
                rules_of(&good, &profile),
                BTreeSet::new(),
                "compliant {want} under {}:\n{good}",
                profile.name
            );
            dev.compile(&program(&good, &weights()))
                .unwrap_or_else(|e| panic!("compliant {want} under {}: {e:#}", profile.name));
            assert_eq!(dev.compiles(), 1);
            // The lenient device takes both (the offending ones that type-check).
            if c.rule != Rule::Literals {
                let _ = SimDevice::new().compile(&program(&bad, &weights()));
            }
        }
    }
}

#[test]
fn the_two_dialects_execute_identically() {
    // Every compliant program of the table, in both dialects, on one deterministic input.
    for c in cases() {
        let t18 = c.good.clone();
        let t16 = ios16(&t18);
        assert!(t16.contains("program(1.0)") && t16.contains("main<ios16>"));
        assert!(!t16.contains("string(\""), "{t16}");
        let ast = parse::parse(&t16).unwrap();
        let shape = ast.functions[0].params[0].0.shape.clone().unwrap();
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let a = compile_text(&t18, &weights()).unwrap().run(&[&x]).unwrap();
        let b = compile_text(&t16, &weights()).unwrap().run(&[&x]).unwrap();
        let bits =
            |v: &Vec<Vec<f32>>| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(&a), bits(&b), "{}", c.rule);
    }
    // A generated program with every op the Builder writes, in both dialects.
    let run = |d: Dialect| -> (String, Vec<u32>) {
        let mut b = Builder::with_dialect("both", d);
        let x = b.input("x", [1, 64, 1, 64]);
        let w: Vec<f32> = (0..64 * 64)
            .map(|i| ((i % 9) as f32 - 4.0) / 32.0)
            .collect();
        let wv = b.weight("w", &[64, 64, 1, 1], blob::fp16(&w));
        let y = b.conv("y", &x, &wv);
        let s = b.sigmoid("s", &y);
        let z = b.mul("z", &y, &s);
        let p = b.pow("p", &z, &z);
        let q = b.sub("q", &z, &p);
        let sm = b.softmax("sm", &q, 1);
        let r = b.reshape("r", &sm, &[1, 1, 64, 64]);
        let rt = b.transpose("rt", &r, &[0, 1, 3, 2]);
        let m = b.matmul("m", &rt, &r, false, false);
        let mt = b.transpose("mt", &m, &[0, 1, 3, 2]);
        let mr = b.reshape("mr", &mt, &[1, 64, 1, 64]);
        let ss = b.reduce_sum("ss", &mr, &[1]);
        let n = b.add("n", &mr, &ss);
        let lo = b.slice("lo", &n, &[0, 0, 0, 0], &[1, 32, 1, 64]);
        let hi = b.slice("hi", &n, &[0, 32, 0, 0], &[1, 32, 1, 64]);
        let cat = b.concat("cat", &[&hi, &lo], 1);
        let out = b.scale("out", &cat, 0.25);
        let prog = b.finish(&out);
        let xs: Vec<f32> = (0..64 * 64)
            .map(|i| ((i * 13) % 29) as f32 / 16.0 - 0.9)
            .collect();
        let y = compile_text(&prog.text, &prog.weights)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", prog.text))
            .run(&[&xs])
            .unwrap();
        (prog.text, y[0].iter().map(|v| v.to_bits()).collect())
    };
    let (t18, y18) = run(Dialect::Ios18);
    let (t16, y16) = run(Dialect::Ios16);
    assert!(t18.starts_with("program(1.3)\n") && t16.starts_with("program(1.0)\n"));
    assert_eq!(t18.lines().count(), t16.lines().count());
    assert_eq!(y18, y16);
}

#[test]
fn other_literal_rules() {
    let p = Profile::named("m3").unwrap();
    let c = r#"        fp16 c = const()[name = string("c"), val = fp16(0.5)];
        tensor<fp16, [1, 64, 1, 384]> y = mul(x = x, y = c)[name = string("y")];"#;
    // No buildInfo.
    let t = prog(X, c, "y").replace(
        "[buildInfo = dict<string, string>({{\"coremlc-version\", \"3505.4.1\"}})]\n",
        "",
    );
    assert_eq!(rules_of(&t, &p), BTreeSet::from([Rule::Literals]));
    let e = err_text(SimDevice::with_profile(p.clone()).compile(&program(&t, &weights())));
    assert!(e.contains("C17 literals") && e.contains("buildInfo"), "{e}");
    // A conv with bias.
    let t = prog(
        X,
        &format!(
            "        tensor<fp16, [1, 64, 1, 1]> bi = const()[name = string(\"bi\"), val = tensor<fp16, [1, 64, 1, 1]>({:?})];\n{}",
            vec![0; 64],
            conv("y", "x", 384),
        )
        .replace("groups = gr)", "groups = gr, bias = bi)"),
        "y",
    );
    let v = check_text(&t, &weights(), &p).unwrap();
    assert!(
        v.len() == 1 && v[0].rule == Rule::Literals && v[0].detail.contains("bias"),
        "{v:?}"
    );
    // cast: no cast on M1/M2 (C9) and not an op run on hardware (P1).
    let t = prog(
        X,
        r#"        string dt = const()[name = string("dt"), val = string("fp16")];
        tensor<fp16, [1, 64, 1, 384]> y = cast(x = x, dtype = dt)[name = string("y")];"#,
        "y",
    );
    assert_eq!(
        rules_of(&t, &p),
        BTreeSet::from([Rule::Dialect, Rule::OpsAllowlist])
    );
}

#[test]
fn profiles_that_allow_what_conservative_refuses() {
    let m4 = Profile::named("m4").unwrap();
    let cs = cases();
    let get = |r: Rule| cs.iter().find(|c| c.rule == r).unwrap();
    // M4 accepts the W-axis concat (C3, the pairs form ran there) and axes up to 65 536 (C1).
    for r in [Rule::RopeForm, Rule::AxisCap] {
        assert_eq!(rules_of(&get(r).bad, &m4), BTreeSet::new(), "{r}");
        SimDevice::with_profile(m4.clone())
            .compile(&program(&get(r).bad, &weights()))
            .unwrap();
    }
}

/// A program that reads `x[1, 64, 1, 768]` through a W slice at offset `off`, 384 wide.
fn w_slice_program(off: usize) -> String {
    prog(
        "tensor<fp16, [1, 64, 1, 768]> x",
        &format!(
            r#"        tensor<int32, [4]> b = const()[name = string("b"), val = tensor<int32, [4]>([0, 0, 0, {off}])];
        tensor<int32, [4]> s = const()[name = string("s"), val = tensor<int32, [4]>([1, 64, 1, 384])];
        tensor<fp16, [1, 64, 1, 384]> y = slice_by_size(x = x, begin = b, size = s)[name = string("y")];"#
        ),
        "y",
    )
}

fn eval(dev: &mut SimDevice, text: &str, x: &[f32]) -> Vec<f32> {
    let p = dev.compile(&program(text, &BTreeMap::new())).unwrap();
    let i = dev.create_surface(x.len()).unwrap();
    dev.write_surface(i, &mut |b| {
        for (d, v) in b.iter_mut().zip(x) {
            *d = f16::from_f32(*v);
        }
    })
    .unwrap();
    let o = dev.create_surface(64 * 384).unwrap();
    dev.evaluate(p, &[i], &[o]).unwrap();
    let mut out = Vec::new();
    dev.read_surface(o, &mut |b| out = b.iter().map(|v| v.to_f32()).collect())
        .unwrap();
    out
}

#[test]
fn w_slice_saturation_on_m1_not_on_m4() {
    // Input [1, 64, 1, 768]: channel c, column w at c·768 + w. The slice starts at w = 32, so
    // output (c, j) is input (c, 32 + j).
    let mut x = vec![1.0f32; 64 * 768];
    x[32] = 5000.0; // → out[0]
    x[768 + 40] = -5000.0; // → out[384 + 8]
    x[2 * 768 + 50] = 4094.0; // → out[2·384 + 18]: not above the threshold
    x[3 * 768 + 60] = 4096.0; // → out[3·384 + 28]: the next fp16 above 4094
    for (name, inf) in [("m1", true), ("m2", true), ("m4", false), ("m5", false)] {
        let p = Profile::named(name).unwrap();
        let text = if p.dialect == Dialect::Ios16 {
            ios16(&w_slice_program(32))
        } else {
            w_slice_program(32)
        };
        let mut dev = SimDevice::with_profile(p);
        let y = eval(&mut dev, &text, &x);
        if inf {
            assert_eq!(y[0], f32::INFINITY, "{name}");
            assert_eq!(y[384 + 8], f32::NEG_INFINITY, "{name}");
            assert_eq!(y[3 * 384 + 28], f32::INFINITY, "{name}");
        } else {
            assert_eq!(y[0], 5000.0, "{name}");
            assert_eq!(y[384 + 8], -5000.0, "{name}");
            assert_eq!(y[3 * 384 + 28], 4096.0, "{name}");
        }
        assert_eq!(y[2 * 384 + 18], 4094.0, "{name}");
        assert_eq!(y[1], 1.0, "{name}");
    }
    // A slice at W offset 0 does not saturate on M1; the lenient device never does.
    let mut x0 = vec![1.0f32; 64 * 768];
    x0[0] = 5000.0;
    let m1 = Profile::named("m1").unwrap();
    let y = eval(
        &mut SimDevice::with_profile(m1),
        &ios16(&w_slice_program(0)),
        &x0,
    );
    assert_eq!(y[0], 5000.0);
    let y = eval(&mut SimDevice::new(), &w_slice_program(32), &x);
    assert_eq!(y[0], 5000.0);
}

#[test]
fn injected_failures() {
    let good = ios16(&prog(
        X,
        "        tensor<fp16, [1, 64, 1, 384]> y = add(x = x, y = x)[name = string(\"y\")];",
        "y",
    ));
    let mut dev = SimDevice::with_profile(Profile::conservative());
    let mut p = program(&good, &BTreeMap::new());
    p.label = "fwdAttn3".into();
    dev.compile(&p).unwrap();
    dev.reject_kernel("fwdAttn", "simulated compiler failure");
    let e = err_text(dev.compile(&p));
    assert!(
        e.contains("injected")
            && e.contains("fwdAttn3")
            && e.contains("\"fwdAttn\"")
            && e.contains("simulated compiler failure"),
        "{e}"
    );
    p.label = "ffnBwd".into();
    dev.compile(&p).unwrap();
    dev.reject_op("add");
    let e = err_text(dev.compile(&p));
    assert!(
        e.contains("injected")
            && e.contains("reject_op(\"add\")")
            && e.contains("line 5")
            && e.contains("ffnBwd"),
        "{e}"
    );
    assert_eq!(dev.compiles(), 2, "failed compiles do not count");
    dev.clear_injections();
    dev.compile(&p).unwrap();
    assert_eq!(dev.compiles(), 3);
}

#[test]
fn profile_budget_and_accessors() {
    let dev = SimDevice::with_profile(Profile::named("m4").unwrap());
    assert_eq!(dev.compile_budget(), 100);
    assert_eq!(dev.profile().unwrap().name, "m4");
    let dev = SimDevice::with_profile(Profile::conservative()).budget(7);
    assert_eq!(dev.compile_budget(), 7);
    assert!(SimDevice::new().profile().is_none());
    // The budget refuses the compile after the last one.
    let mut dev = SimDevice::with_profile(Profile::conservative()).budget(1);
    let good = ios16(&prog(
        X,
        "        tensor<fp16, [1, 64, 1, 384]> y = add(x = x, y = x)[name = string(\"y\")];",
        "y",
    ));
    dev.compile(&program(&good, &BTreeMap::new())).unwrap();
    assert!(err_text(dev.compile(&program(&good, &BTreeMap::new()))).contains("budget"));
}

#[test]
fn a_violation_message_names_line_shape_and_source() {
    let t = ios16(&cases()[3].bad); // C8: softmax on line 6
    let v = check_text(&t, &BTreeMap::new(), &Profile::conservative()).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(
        v[0].to_string(),
        "rule C8 softmax-pow2 (Espresso, M3 Max): line 6: softmax over 384 (axis 3 of \
         tensor<fp16, [1, 64, 1, 384]>), not a power of two"
    );
}

/// The profiles table of docs/ANE_HARDWARE.md, rendered from [`Profile::all`].
fn profile_table() -> String {
    let ps = Profile::all();
    let kb = |b: usize| {
        if b.is_multiple_of(1024 * 1024) {
            format!("{} MB", b / (1024 * 1024))
        } else {
            format!("{} KB", b / 1024)
        }
    };
    let yn = |b: bool| if b { "yes" } else { "no" }.to_string();
    type Cell = Box<dyn Fn(&Profile) -> String>;
    let rows: Vec<(&str, Cell)> = vec![
        ("C1 `max_axis`", Box::new(|p| p.max_axis.to_string())),
        (
            "C1 `max_channels`",
            Box::new(|p| p.max_channels.to_string()),
        ),
        (
            "C2 `w_slice_saturates`",
            Box::new(move |p| yn(p.w_slice_saturates)),
        ),
        (
            "C3 `rope`",
            Box::new(|p| {
                match p.rope {
                    anetrain::ane::chip::RopeForm::Permutation => "permutation",
                    anetrain::ane::chip::RopeForm::PairsConcat => "pairs-concat",
                }
                .to_string()
            }),
        ),
        ("C8 `softmax_pow2`", Box::new(move |p| yn(p.softmax_pow2))),
        ("C7 `min_width`", Box::new(|p| p.min_width.to_string())),
        (
            "C7/C24 `width_multiple`",
            Box::new(|p| p.width_multiple.to_string()),
        ),
        (
            "C7 `channel_multiple`",
            Box::new(|p| p.channel_multiple.to_string()),
        ),
        (
            "C7 `min_surface_bytes`",
            Box::new(move |p| kb(p.min_surface_bytes)),
        ),
        (
            "C18 `max_surface_bytes`",
            Box::new(move |p| kb(p.max_surface_bytes)),
        ),
        ("C9 `dialect`", Box::new(|p| p.dialect.name().to_string())),
        (
            "C14 `compile_budget`",
            Box::new(|p| p.compile_budget.to_string()),
        ),
        (
            "C19 `throughput_decay_evals`",
            Box::new(|p| {
                p.throughput_decay_evals
                    .map_or("—".to_string(), |n| n.to_string())
            }),
        ),
        (
            "C25 `background_compile`",
            Box::new(move |p| yn(p.background_compile)),
        ),
    ];
    let mut s = String::from("| field |");
    for p in &ps {
        s.push_str(&format!(" {} |", p.name));
    }
    s.push_str("\n|---|");
    for _ in &ps {
        s.push_str("---|");
    }
    s.push('\n');
    for (name, f) in &rows {
        s.push_str(&format!("| {name} |"));
        for p in &ps {
            s.push_str(&format!(" {} |", f(p)));
        }
        s.push('\n');
    }
    s
}

#[test]
fn the_hardware_doc_lists_the_profiles_and_every_rule() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ANE_HARDWARE.md"))
        .unwrap_or_default();
    if std::env::var_os("PRINT_PROFILE_TABLE").is_some() {
        println!("{}", profile_table());
    }
    assert!(
        doc.contains(&profile_table()),
        "docs/ANE_HARDWARE.md's profiles table is stale; expected:\n{}",
        profile_table()
    );
    for r in Rule::ALL {
        assert!(
            doc.contains(&format!("| {} | `{}` |", r.code(), r.name())),
            "docs/ANE_HARDWARE.md does not list {r}"
        );
    }
}

#[test]
fn builder_programs_pass_strict_mode_in_each_profiles_dialect() {
    // A slice begin and a conv pad of [0, 0, 0, 0], strides and dilations of [1, 1], both
    // transpose flags false: the Builder gives each parameter kind its own const (P5).
    for p in Profile::all() {
        let mut b = Builder::with_dialect("builderStrict", p.dialect);
        let x = b.input("x", [1, 128, 1, 384]);
        let h = b.slice("h", &x, &[0, 0, 0, 0], &[1, 64, 1, 384]);
        let w: Vec<f32> = (0..64 * 64).map(|i| (i % 5) as f32 / 8.0).collect();
        let wv = b.weight("w", &[64, 64, 1, 1], blob::fp16(&w));
        let y = b.conv("y", &h, &wv);
        let s = b.softmax("s", &y, 1);
        let r = b.reshape("r", &s, &[1, 1, 64, 384]);
        let rt = b.transpose("rt", &r, &[0, 1, 3, 2]);
        let m = b.matmul("m", &rt, &r, false, false);
        let mt = b.transpose("mt", &m, &[0, 1, 3, 2]);
        let o = b.reshape("o", &mt, &[1, 384, 1, 384]);
        let prog = b.finish(&o);
        let v = anetrain::ane::check::check_program(&prog, &p).unwrap();
        assert!(v.is_empty(), "{}: {v:?}", p.name);
        SimDevice::with_profile(p.clone()).compile(&prog).unwrap();
        // The same program in the other dialect is refused by C9 only.
        let other = if p.dialect == Dialect::Ios16 {
            Dialect::Ios18
        } else {
            Dialect::Ios16
        };
        let mut b = Builder::with_dialect("builderStrict", other);
        let x = b.input("x", [1, 64, 1, 384]);
        let y = b.scale("y", &x, 0.5);
        let prog = b.finish(&y);
        let rules: BTreeSet<Rule> = anetrain::ane::check::check_program(&prog, &p)
            .unwrap()
            .iter()
            .map(|v| v.rule)
            .collect();
        assert_eq!(rules, BTreeSet::from([Rule::Dialect]), "{}", p.name);
    }
}
