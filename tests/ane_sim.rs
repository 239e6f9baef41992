//! The simulated Neural Engine: what it rejects (as the hardware does), its fp16 semantics,
//! the compile budget seen through the backend, and the `anetrain mil` output compiled back
//! from disk.

use anetrain::ane::backend::{AneKernels, BudgetExhausted};
use anetrain::ane::blob;
use anetrain::ane::device::{Device, SurfaceId};
use anetrain::ane::mil::kernels::{generate, Geometry, Kernel};
use anetrain::ane::mil::Program;
use anetrain::ane::sim::{compile_text, SimDevice};
use anetrain::ane::Pipeline;
use anetrain::kernels::ops::Rope;
use anetrain::kernels::{
    AttnFwd, AttnWeights, Checked, FfnBwd, FfnFwd, FfnWeights, Kernels, Pass, SdpaBwd1, SdpaBwd2,
};
use anetrain::model::{Config, Params};
use half::f16;
use std::collections::BTreeMap;

const HEADER: &str =
    "program(1.3)\n[buildInfo = dict<string, string>({{\"coremlc-version\", \"3505.4.1\"}})]\n{\n";

/// A one-function program around `params` and `body`.
fn prog(params: &str, body: &str, out: &str) -> String {
    format!("{HEADER}    func main<ios18>({params}) {{\n{body}\n    }} -> ({out});\n}}\n")
}

fn program(
    text: String,
    weights: BTreeMap<String, Vec<u8>>,
    input: [usize; 4],
    output: [usize; 4],
) -> Program {
    Program {
        label: "test".into(),
        text,
        weights,
        input,
        output,
    }
}

fn err_text(r: anyhow::Result<impl Sized>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn surface_with(dev: &mut SimDevice, vals: &[f32]) -> SurfaceId {
    let s = dev.create_surface(vals.len()).unwrap();
    dev.write_surface(s, &mut |b| {
        for (d, v) in b.iter_mut().zip(vals) {
            *d = f16::from_f32(*v);
        }
    })
    .unwrap();
    s
}

fn read(dev: &mut SimDevice, s: SurfaceId) -> Vec<f32> {
    let mut out = Vec::new();
    dev.read_surface(s, &mut |b| out = b.iter().map(|x| x.to_f32()).collect())
        .unwrap();
    out
}

#[test]
fn rejects_a_second_input_surface() {
    let t = prog(
        "tensor<fp16, [1, 4, 1, 8]> a, tensor<fp16, [1, 4, 1, 8]> b",
        "        tensor<fp16, [1, 4, 1, 8]> y = add(x = a, y = b)[name = string(\"y\")];",
        "y",
    );
    let mut dev = SimDevice::new();
    // It compiles (the experiments of the reference compiled such programs) ...
    let p = dev
        .compile(&program(t, BTreeMap::new(), [1, 4, 1, 8], [1, 4, 1, 8]))
        .unwrap();
    let (a, b, y) = (
        surface_with(&mut dev, &[1.0; 32]),
        surface_with(&mut dev, &[2.0; 32]),
        dev.create_surface(32).unwrap(),
    );
    // ... but a request with two input surfaces is refused, as the hardware's error 0x1d.
    let e = err_text(dev.evaluate(p, &[a, b], &[y]));
    assert!(e.contains("0x1d") && e.contains("exactly one input"), "{e}");
    // A request that binds one surface to a two-input program is refused too.
    let e = err_text(dev.evaluate(p, &[a], &[y]));
    assert!(e.contains("declares 2 input(s)"), "{e}");

    // The same for a production kernel.
    let c = Config::preset("stories260k").unwrap();
    let g = Geometry::new(&c, 1, 16);
    let rope = Rope::new(c.head_dim, 16, c.rope_theta);
    let k = generate(Pipeline::Static, Kernel::SdpaBwd2, &g, None, &rope).unwrap();
    let p = dev.compile(&k).unwrap();
    let n_in: usize = k.input.iter().product();
    let n_out: usize = k.output.iter().product();
    let (i1, i2, o) = (
        dev.create_surface(n_in).unwrap(),
        dev.create_surface(n_in).unwrap(),
        dev.create_surface(n_out).unwrap(),
    );
    let e = err_text(dev.evaluate(p, &[i1, i2], &[o]));
    assert!(e.contains("sdpaBwd2") && e.contains("0x1d"), "{e}");
    assert!(dev.evaluate(p, &[i1], &[o]).is_ok());
    // A surface of the wrong size is refused.
    let small = dev.create_surface(n_in - 1).unwrap();
    let e = err_text(dev.evaluate(p, &[small], &[o]));
    assert!(e.contains("needs"), "{e}");
}

#[test]
fn rejects_unknown_ops_with_the_line() {
    let t = prog(
        "tensor<fp16, [1, 4, 1, 8]> x",
        "        tensor<fp16, [1, 4, 1, 8]> y = mul(x = x, y = x)[name = string(\"y\")];\n        tensor<fp16, [1, 4, 1, 8]> z = frobnicate(x = y)[name = string(\"z\")];",
        "z",
    );
    let e = err_text(compile_text(&t, &BTreeMap::new()));
    assert!(
        e.contains("line 6") && e.contains("unsupported op 'frobnicate'"),
        "{e}"
    );
    assert!(
        e.contains("softmax"),
        "the error lists what is supported: {e}"
    );
}

#[test]
fn rejects_bad_blob_offsets_and_missing_blobs() {
    let body = |off: u64| {
        format!(
            "        tensor<fp16, [2, 4, 1, 1]> w = const()[name = string(\"w\"), val = tensor<fp16, [2, 4, 1, 1]>(BLOBFILE(path = string(\"@model_path/weights/w.bin\"), offset = uint64({off})))];\n        tensor<fp16, [1, 2, 1, 8]> y = conv(x = x, weight = w)[name = string(\"y\")];"
        )
    };
    let mut w = BTreeMap::new();
    w.insert(
        "@model_path/weights/w.bin".to_string(),
        blob::fp16(&[0.5; 8]),
    );
    // The offset must point at the metadata record (64), not at the data (128) or the file
    // header (0).
    for off in [0, 128] {
        let t = prog("tensor<fp16, [1, 4, 1, 8]> x", &body(off), "y");
        let e = err_text(compile_text(&t, &w));
        assert!(
            e.contains("line 5") && e.contains("weights/w.bin") && e.contains("offset"),
            "{e}"
        );
    }
    let t = prog("tensor<fp16, [1, 4, 1, 8]> x", &body(1 << 20), "y");
    assert!(err_text(compile_text(&t, &w)).contains("no room"));
    // Correct offset compiles and computes y = 0.5·Σ_i x_i.
    let t = prog("tensor<fp16, [1, 4, 1, 8]> x", &body(64), "y");
    let plan = compile_text(&t, &w).unwrap();
    let y = plan.run(&[&[1.0; 32]]).unwrap();
    assert_eq!(y[0], vec![2.0; 16]);
    // A blob too small for the declared shape, and a path missing from the dictionary.
    let mut small = BTreeMap::new();
    small.insert(
        "@model_path/weights/w.bin".to_string(),
        blob::fp16(&[0.5; 7]),
    );
    assert!(err_text(compile_text(&t, &small)).contains("needs 16"));
    let e = err_text(compile_text(&t, &BTreeMap::new()));
    assert!(e.contains("not in the weight dictionary"), "{e}");
}

#[test]
fn rejects_type_mismatches_and_malformed_programs() {
    // Declared shape disagrees with the conv's result.
    let t = prog(
        "tensor<fp16, [1, 4, 1, 8]> x",
        "        tensor<int32, [4]> sh = const()[name = string(\"sh\"), val = tensor<int32, [4]>([1, 8, 1, 4])];\n        tensor<fp16, [1, 4, 1, 8]> y = reshape(x = x, shape = sh)[name = string(\"y\")];",
        "y",
    );
    let e = err_text(compile_text(&t, &BTreeMap::new()));
    assert!(
        e.contains(
            "declared tensor<fp16, [1, 4, 1, 8]> but reshape produces tensor<fp16, [1, 8, 1, 4]>"
        ),
        "{e}"
    );
    // A static parameter computed at run time.
    let t = prog(
        "tensor<fp16, [1, 4, 1, 8]> x",
        "        tensor<fp16, [1, 4, 1, 8]> y = softmax(x = x, axis = x)[name = string(\"y\")];",
        "y",
    );
    assert!(err_text(compile_text(&t, &BTreeMap::new())).contains("must be a constant"));
    // Outputs and inputs must be fp16 [1, C, 1, W] surfaces.
    let t = prog("tensor<fp32, [1, 4, 1, 8]> x", "", "x");
    assert!(err_text(compile_text(&t, &BTreeMap::new())).contains("fp16 surfaces"));
    let t = prog(
        "tensor<fp16, [1, 4, 1, 8]> x",
        "        tensor<fp16, [1, 32]> y = reshape(x = x, shape = tensor<int32, [2]>([1, 32]))[name = string(\"y\")];",
        "y",
    );
    assert!(err_text(compile_text(&t, &BTreeMap::new())).contains("output y"));
    // An intermediate too large to simulate is refused at compile time, not allocated.
    let t = prog(
        "tensor<fp16, [1, 1, 1, 32768]> x",
        "        tensor<fp16, [1, 1, 32768, 1]> c = reshape(x = x, shape = tensor<int32, [4]>([1, 1, 32768, 1]))[name = string(\"c\")];
        tensor<fp16, [1, 1, 32768, 32768]> o = matmul(x = c, y = x)[name = string(\"o\")];",
        "x",
    );
    assert!(err_text(compile_text(&t, &BTreeMap::new())).contains("limit"));
    // Truncated text, unknown opset, broken broadcast, duplicated label.
    let t = prog("tensor<fp16, [1, 4, 1, 8]> x", "", "x");
    let e = err_text(compile_text(&t[..t.len() - 3], &BTreeMap::new()));
    assert!(e.contains("parse error"), "{e}");
    let e = err_text(compile_text(&t.replace("ios18", "ios16"), &BTreeMap::new()));
    assert!(e.contains("opset ios16"), "{e}");
    let t = prog(
        "tensor<fp16, [1, 4, 1, 8]> x",
        "        tensor<fp16, [1, 2, 1, 8]> h = slice_by_size(x = x, begin = tensor<int32, [4]>([0, 0, 0, 0]), size = tensor<int32, [4]>([1, 2, 1, 8]))[name = string(\"h\")];\n        tensor<fp16, [1, 4, 1, 8]> y = add(x = x, y = h)[name = string(\"h\")];",
        "y",
    );
    let e = err_text(compile_text(&t, &BTreeMap::new()));
    assert!(e.contains("also used on line 5"), "{e}");
}

#[test]
fn fp16_storage_semantics() {
    // 1 + 2^-12 rounds back to 1 in fp16 (spacing 2^-10 at 1); 300·300 overflows to +inf;
    // a −65504 mask plus a score below −16 is −inf, and the softmax gives it exactly 0.
    let t = prog(
        "tensor<fp16, [1, 1, 1, 4]> x",
        "        fp16 e = const()[name = string(\"e\"), val = fp16(0x1p-12)];
        tensor<fp16, [1, 1, 1, 4]> a = add(x = x, y = e)[name = string(\"a\")];
        tensor<fp16, [1, 1, 1, 4]> b = mul(x = x, y = x)[name = string(\"b\")];
        tensor<fp16, [1, 1, 1, 4]> m = const()[name = string(\"m\"), val = tensor<fp16, [1, 1, 1, 4]>([0, -65504, -65504, 0])];
        tensor<fp16, [1, 1, 1, 4]> s = add(x = x, y = m)[name = string(\"s\")];
        tensor<fp16, [1, 1, 1, 4]> p = softmax(x = s, axis = int32(-1))[name = string(\"p\")];
        tensor<fp16, [1, 4, 1, 4]> y = concat(values = (a, b, s, p), axis = int32(1), interleave = false)[name = string(\"y\")];",
        "y",
    );
    let plan = compile_text(&t, &BTreeMap::new()).unwrap();
    let y = &plan.run(&[&[1.0, 300.0, -20.0, 0.5]]).unwrap()[0];
    assert_eq!(&y[0..4], &[1.0, 300.0, -20.0, 0.5]);
    assert_eq!(&y[4..8], &[1.0, f32::INFINITY, 400.0, 0.25]);
    assert_eq!(y[8], 1.0);
    assert_eq!(y[9], -65216.0); // −65504 + 300 = −65204, rounded to the fp16 grid (spacing 32)
    assert_eq!(y[10], f32::NEG_INFINITY);
    assert_eq!(y[11], 0.5);
    // softmax over (1, −65216, −inf, 0.5): e^0.5/(e^0.5 + 1) etc., rounded to fp16.
    let p0 = 1.0f32 / (1.0 + (-0.5f32).exp());
    assert_eq!(y[12], f16::from_f32(p0).to_f32());
    assert_eq!((y[13], y[14]), (0.0, 0.0));
    assert_eq!(y[15], f16::from_f32(1.0 - p0).to_f32());
    // Inputs are rounded to fp16 as they enter a surface: 0.1 → 0.0999755859375.
    let t = prog("tensor<fp16, [1, 1, 1, 1]> x", "", "x");
    let plan = compile_text(&t, &BTreeMap::new()).unwrap();
    assert_eq!(plan.run(&[&[0.1]]).unwrap()[0][0], 1638.0 / 16384.0);
}

#[test]
fn sdpa_ignores_its_attention_mask() {
    // q = k = v rows e_t (one-hot); with the causal mask honoured row 0 would attend to
    // itself only; the simulated hardware ignores the mask, so every row is uniform-ish.
    let s = 4;
    let t = prog(
        "tensor<fp16, [1, 1, 1, 16]> x",
        "        tensor<fp16, [1, 1, 4, 4]> q = reshape(x = x, shape = tensor<int32, [4]>([1, 1, 4, 4]))[name = string(\"q\")];
        tensor<fp16, [1, 1, 4, 4]> mask = const()[name = string(\"mask\"), val = tensor<fp16, [1, 1, 4, 4]>(BLOBFILE(path = string(\"@model_path/weights/mask.bin\"), offset = uint64(64)))];
        tensor<fp16, [1, 1, 4, 4]> a = scaled_dot_product_attention(query = q, key = q, value = q, attn_mask = mask)[name = string(\"a\")];
        tensor<fp16, [1, 1, 1, 16]> y = reshape(x = a, shape = tensor<int32, [4]>([1, 1, 1, 16]))[name = string(\"y\")];",
        "y",
    );
    let mut w = BTreeMap::new();
    w.insert(
        "@model_path/weights/mask.bin".to_string(),
        blob::causal_mask(s),
    );
    let plan = compile_text(&t, &w).unwrap();
    assert!(plan.uses_sdpa);
    let mut x = vec![0f32; 16];
    for i in 0..4 {
        x[i * 4 + i] = 1.0;
    }
    let y = &plan.run(&[&x]).unwrap()[0];
    // Unmasked: row t = (e^{1/2} e_t + Σ_{u≠t} e_u)/(e^{1/2} + 3).
    let (hi, lo) = (
        0.5f64.exp() / (0.5f64.exp() + 3.0),
        1.0 / (0.5f64.exp() + 3.0),
    );
    for r in 0..4 {
        for c in 0..4 {
            let want = if r == c { hi } else { lo };
            assert!(
                (y[r * 4 + c] as f64 - want).abs() < 1e-3,
                "{r},{c}: {}",
                y[r * 4 + c]
            );
        }
    }
    assert!(
        y[1] > 0.1,
        "row 0 attends to the future: the mask was ignored"
    );
}

#[test]
fn weights_are_fixed_at_compile_time_and_budget_is_enforced() {
    let t = prog(
        "tensor<fp16, [1, 2, 1, 2]> x",
        "        tensor<fp16, [2, 2, 1, 1]> w = const()[name = string(\"w\"), val = tensor<fp16, [2, 2, 1, 1]>(BLOBFILE(path = string(\"@model_path/weights/w.bin\"), offset = uint64(64)))];
        tensor<fp16, [1, 2, 1, 2]> y = conv(x = x, weight = w, groups = int32(1))[name = string(\"y\")];",
        "y",
    );
    let mut w = BTreeMap::new();
    w.insert(
        "@model_path/weights/w.bin".to_string(),
        blob::fp16(&[1.0, 0.0, 0.0, 1.0]),
    );
    let mut p = program(t, w, [1, 2, 1, 2], [1, 2, 1, 2]);
    let mut dev = SimDevice::with_budget(2);
    let id = dev.compile(&p).unwrap();
    assert!(dev.estimated_eval_ms(id).unwrap() > 0.0);
    // Rewriting the blob after compiling changes nothing (ANE_FACTS §1.9).
    p.weights.insert(
        "@model_path/weights/w.bin".to_string(),
        blob::fp16(&[2.0, 0.0, 0.0, 2.0]),
    );
    let (x, y) = (
        surface_with(&mut dev, &[1.0, 2.0, 3.0, 4.0]),
        dev.create_surface(4).unwrap(),
    );
    dev.evaluate(id, &[x], &[y]).unwrap();
    assert_eq!(read(&mut dev, y), vec![1.0, 2.0, 3.0, 4.0]);
    // Recompiled, it uses the new weights; the third compile exceeds the budget of 2.
    let id2 = dev.compile(&p).unwrap();
    dev.evaluate(id2, &[x], &[y]).unwrap();
    assert_eq!(read(&mut dev, y), vec![2.0, 4.0, 6.0, 8.0]);
    let e = err_text(dev.compile(&p));
    assert!(
        e.contains("compile budget exhausted") && e.contains("restart"),
        "{e}"
    );
    assert_eq!(dev.compiles(), 2);
    // Freed programs cannot be evaluated.
    dev.free(id).unwrap();
    assert!(err_text(dev.evaluate(id, &[x], &[y])).contains("not loaded"));
}

/// Every contract kernel of every layer once on `k`, with the layer's weights from `p` and
/// fixed activations (the backward kernels take the forward's outputs); returns every output.
fn every_kernel(k: &mut dyn Kernels, p: &Params) -> anyhow::Result<Vec<f32>> {
    let (d, layers) = (k.dims(), k.spec().layers);
    let (dm, h, qd, kvd, n, pl) = (d.dim, d.hidden, d.q_dim(), d.kv_dim(), d.n(), d.probs_len());
    let ramp = |len: usize, s: f32| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * s)
            .collect()
    };
    let z = |len: usize| vec![0f32; len];
    let x = ramp(dm * n, 2.0);
    let mut all = Vec::new();
    let mut k = Checked::new(k);
    for l in 0..layers {
        let (aw, fw) = (AttnWeights::of(p, l), FfnWeights::of(p, l));
        let (mut xn, mut q, mut kk, mut v, mut attn, mut o) = (
            z(dm * n),
            z(qd * n),
            z(kvd * n),
            z(kvd * n),
            z(qd * n),
            z(dm * n),
        );
        k.fwd_attn(
            l,
            &x,
            &aw,
            AttnFwd {
                xn: &mut xn,
                q: &mut q,
                k: &mut kk,
                v: &mut v,
                attn: &mut attn,
                o: &mut o,
            },
        )?;
        let (mut x2n, mut h1, mut h3, mut gate, mut f) =
            (z(dm * n), z(h * n), z(h * n), z(h * n), z(dm * n));
        k.fwd_ffn(
            l,
            &x,
            &fw,
            FfnFwd {
                x2n: &mut x2n,
                h1: &mut h1,
                h3: &mut h3,
                gate: &mut gate,
                f: &mut f,
            },
        )?;
        let (mut dx2n, mut dh1, mut dh3) = (z(dm * n), z(h * n), z(h * n));
        k.ffn_bwd(
            l,
            &x,
            &h1,
            &h3,
            &fw,
            FfnBwd {
                dx2n: &mut dx2n,
                dh1: &mut dh1,
                dh3: &mut dh3,
            },
        )?;
        let (mut dv, mut dp, mut probs) = (z(kvd * n), z(pl), z(pl));
        k.sdpa_bwd1(
            l,
            &x,
            &q,
            &kk,
            &v,
            &aw,
            SdpaBwd1 {
                dv: &mut dv,
                dp: &mut dp,
                probs: &mut probs,
            },
        )?;
        let (mut dq, mut dk) = (z(qd * n), z(kvd * n));
        k.sdpa_bwd2(
            l,
            &probs,
            &dp,
            &q,
            &kk,
            SdpaBwd2 {
                dq: &mut dq,
                dk: &mut dk,
            },
        )?;
        let mut dxn = z(dm * n);
        k.qkv_bwd(l, &dq, &dk, &dv, &aw, &mut dxn)?;
        for t in [
            xn, q, kk, v, attn, o, x2n, h1, h3, gate, f, dx2n, dh1, dh3, dv, dp, probs,
        ] {
            all.extend(t);
        }
        all.extend(dq.into_iter().chain(dk).chain(dxn));
    }
    Ok(all)
}

#[test]
fn static_backend_budgets_its_compiles() {
    let mut c = Config::preset("stories260k").unwrap();
    c.vocab_size = 32;
    let p = Params::init_random(&c, 3);
    // 5 weight-bearing kernels × 5 layers per update, + sdpaBwd2 once: 26 per process.
    let dev = SimDevice::with_budget(60);
    let mut k = AneKernels::new(Box::new(dev), &c, 1, 16, Pipeline::Static).unwrap();
    assert_eq!(k.compiles_per_update(), 25);
    assert_eq!(k.compiles_left(), 59);
    k.prepare(1, Pass::Training).unwrap();
    every_kernel(&mut k, &p).unwrap();
    k.prepare(1, Pass::Training).unwrap(); // same version: nothing recompiled
    every_kernel(&mut k, &p).unwrap();
    assert_eq!((k.stats().compiles, k.compiles_left()), (26, 34));
    k.prepare(2, Pass::Training).unwrap();
    every_kernel(&mut k, &p).unwrap();
    assert_eq!(k.compiles_left(), 9);
    // The next update does not fit: a clear error before anything is compiled.
    let err = k.prepare(3, Pass::Training).unwrap_err();
    let e = format!("{err:#}");
    assert!(
        e.contains("needs 25 compiles") && e.contains("only 9") && e.contains("restart"),
        "{e}"
    );
    // The trainer recognises it by type, also under added context.
    let err = err.context("backend could not prepare the weights");
    assert_eq!(
        err.downcast_ref::<BudgetExhausted>(),
        Some(&BudgetExhausted {
            needed: 25,
            left: 9,
            budget: 60
        })
    );
    assert_eq!(k.stats().compiles, 51);
    // A forward pass (validation) needs only its forward kernels: 2 per layer.
    let e = err_text(k.prepare(3, Pass::Forward));
    assert!(
        e.contains("needs 10 compiles") && e.contains("only 9"),
        "{e}"
    );
    // Kernels refuse to run on weights that were not compiled.
    let mut dxn = vec![0f32; c.dim * 16];
    let z = vec![0f32; c.dim * 16];
    let zk = vec![0f32; c.kv_dim() * 16];
    let aw = AttnWeights::of(&p, 0);
    let e = err_text(Checked::new(&mut k).qkv_bwd(0, &z, &zk, &zk, &aw, &mut dxn));
    assert!(e.contains("prepare()"), "{e}");

    // A model whose update needs more compiles than a process has cannot use the static
    // pipeline at all.
    let e = err_text(AneKernels::new(
        Box::new(SimDevice::with_budget(20)),
        &c,
        1,
        16,
        Pipeline::Static,
    ));
    assert!(e.contains("--pipeline dynamic"), "{e}");
    // The dynamic pipeline compiles once and never again.
    let mut k = AneKernels::new(
        Box::new(SimDevice::with_budget(20)),
        &c,
        1,
        16,
        Pipeline::Dynamic,
    )
    .unwrap();
    let n0 = k.stats().compiles;
    for v in 1..5 {
        k.prepare(v, Pass::Training).unwrap();
        every_kernel(&mut k, &p).unwrap();
    }
    assert_eq!((n0, k.stats().compiles, k.compiles_per_update()), (9, 9, 0));
}

/// Weights reach the Neural Engine backend as per-call views: each weights version is
/// compiled (static) or staged (dynamic) exactly once per (kernel, layer), at its first call;
/// the same version again rebuilds nothing; weights changed without a new version are an
/// error, not a silent run on the old copy; the new version then runs on the new weights.
#[test]
fn the_backend_rebuilds_exactly_when_the_version_changes() {
    let mut c = Config::preset("stories260k").unwrap();
    c.vocab_size = 32;
    c.n_layers = 2;
    let mut p = Params::init_random(&c, 3);
    let new = |pipeline| AneKernels::new(Box::new(SimDevice::new()), &c, 1, 16, pipeline).unwrap();
    for pipeline in [Pipeline::Static, Pipeline::Dynamic] {
        let mut k = new(pipeline);
        // (compiles, weight surfaces staged) since construction.
        let base = k.stats();
        let built = |k: &AneKernels| {
            let s = k.stats().since(&base);
            (s.compiles, s.weight_stages)
        };
        assert_eq!(
            built(&k),
            (0, 0),
            "{pipeline}: nothing before the first version"
        );
        k.prepare(1, Pass::Training).unwrap();
        assert_eq!(
            built(&k),
            (0, 0),
            "{pipeline}: prepare alone builds nothing"
        );
        let first = every_kernel(&mut k, &p).unwrap();
        let per_version = built(&k);
        match pipeline {
            // Five weight-bearing kernels per layer, compiled with the weights baked in.
            Pipeline::Static => assert_eq!(per_version, (5 * 2, 0)),
            // Nothing compiled; every weight-carrying kernel's surface of each layer staged.
            Pipeline::Dynamic => {
                assert_eq!(per_version.0, 0);
                assert!(per_version.1 >= 5 * 2, "{per_version:?}");
            }
        }
        assert_eq!(per_version.0, k.compiles_per_update());
        // The same version again: nothing rebuilt, the same results.
        k.prepare(1, Pass::Training).unwrap();
        assert_eq!(every_kernel(&mut k, &p).unwrap(), first, "{pipeline}");
        assert_eq!(built(&k), per_version, "{pipeline}");

        // Equal values at another address are refused too (the views are held by address).
        let copy = p.clone();
        assert!(err_text(every_kernel(&mut k, &copy)).contains("weights version 1"));
        // Weights changed in place without a new version: refused, naming the version.
        p.data.iter_mut().for_each(|w| *w *= 1.5);
        let e = err_text(every_kernel(&mut k, &p));
        assert!(
            e.contains("fwd_attn of layer 0")
                && e.contains("weights version 1")
                && e.contains("announce a new version"),
            "{pipeline}: {e}"
        );
        assert_eq!(
            built(&k),
            per_version,
            "{pipeline}: a refused call builds nothing"
        );

        // The new version: rebuilt once more, and it runs on the new weights, exactly as a
        // fresh backend given them as its first version.
        k.prepare(2, Pass::Training).unwrap();
        let second = every_kernel(&mut k, &p).unwrap();
        assert_eq!(
            built(&k),
            (2 * per_version.0, 2 * per_version.1),
            "{pipeline}"
        );
        assert_ne!(second, first, "{pipeline}");
        let mut fresh = new(pipeline);
        fresh.prepare(1, Pass::Training).unwrap();
        assert_eq!(every_kernel(&mut fresh, &p).unwrap(), second, "{pipeline}");
        p.data.iter_mut().for_each(|w| *w /= 1.5);
    }
}

#[test]
fn mil_command_output_compiles_back_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    for (kernel, pipeline) in [
        ("fwdAttn", "static"),
        ("ffnBwdW13t", "dynamic"),
        ("sdpaBwd2", "static"),
    ] {
        let out = dir.path().join(format!("{kernel}-{pipeline}"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"))
            .args([
                "mil",
                "--kernel",
                kernel,
                "--model",
                "stories260k",
                "--pipeline",
                pipeline,
            ])
            .args(["--layer", "2", "--seq", "32", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = std::fs::read_to_string(out.join("model.mil")).unwrap();
        assert_eq!(String::from_utf8(o.stdout).unwrap(), text);
        let mut w = BTreeMap::new();
        for e in std::fs::read_dir(out.join("weights")).unwrap() {
            let e = e.unwrap();
            let name = format!("@model_path/weights/{}", e.file_name().to_string_lossy());
            w.insert(name, std::fs::read(e.path()).unwrap());
        }
        let plan = compile_text(&text, &w).unwrap_or_else(|e| panic!("{kernel}: {e:#}"));
        assert_eq!(plan.inputs.len(), 1);
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args([
            "mil",
            "--kernel",
            "woBwd",
            "--model",
            "stories260k",
            "--pipeline",
            "static",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a kernel of the static pipeline"));
}
