//! Every kernel of both Neural Engine pipelines, generated as MIL text, parsed and executed
//! by the simulated device through the `AneKernels` backend (packing included), against a
//! straightforward f64 reference of the kernel contract written here from the formulas, and
//! against the fp32 `cpu` kernels on the same inputs (which in turn must match the f64
//! reference to 1e-4).
//!
//! Configs: stories260k (GQA 8/4, head_dim 8), stories15m (MHA, head_dim 48) and a GQA
//! config whose head_dim differs from dim / n_heads (dim 48, 4 heads of 16, 2 kv heads), all
//! with 2 layers (the kernels of layer 1 are checked) and 2 sequences of 16 tokens.
//!
//! Tolerance (fp16 storage at every op output and at the surfaces): for every output,
//! `max|ane − ref| ≤ 5e-3 · max|ref|` and `mean|ane − ref| ≤ 1e-3 · max|ref|`.

use anetrain::ane::backend::AneKernels;
use anetrain::ane::sim::SimDevice;
use anetrain::ane::Pipeline;
use anetrain::kernels::cpu::CpuKernels;
use anetrain::kernels::{
    AttnFwd, AttnWeights, Checked, Dims, FfnBwd, FfnFwd, FfnWeights, Kernels, Pass, SdpaBwd1,
    SdpaBwd2,
};
use anetrain::model::{Config, LayerTensor, Params};
use anetrain::util::rng::Rng;

const MAX_TOL: f64 = 5e-3;
const MEAN_TOL: f64 = 1e-3;

fn configs() -> Vec<(&'static str, Config)> {
    let mut v = Vec::new();
    for name in ["stories260k", "stories15m"] {
        let mut c = Config::preset(name).unwrap();
        c.n_layers = 2;
        c.vocab_size = 32;
        v.push((name, c));
    }
    let mut g = Config::llama(48, 96, 2, 4, 2, 32, 64);
    g.head_dim = 16;
    v.push(("gqa-hd16", g));
    v
}

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

/// Weights with std 1/√fan_in (outputs of order one), gains 1 ± 0.2.
fn params(c: &Config, seed: u64) -> Params {
    let mut p = Params::zeros(c);
    let mut rng = Rng::new(seed);
    for l in 0..c.n_layers {
        for t in LayerTensor::ALL {
            let [r, k] = t.shape(c);
            let w = p.layer_mut(l, t);
            if r == 1 {
                for x in w.iter_mut() {
                    *x = 1.0 + 0.2 * rng.normal();
                }
            } else {
                let s = 1.0 / (k as f32).sqrt();
                for x in w.iter_mut() {
                    *x = rng.normal() * s;
                }
            }
        }
    }
    p
}

/// (max, mean) of |got − want| relative to max|want|.
fn errors(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    let mut max = 0f64;
    let mut sum = 0f64;
    for (g, w) in got.iter().zip(want) {
        let e = (*g as f64 - w).abs();
        max = if e.is_nan() {
            f64::INFINITY
        } else {
            max.max(e)
        };
        sum += e;
    }
    (max / scale, sum / got.len() as f64 / scale)
}

fn compare(what: &str, got: &[f32], want: &[f64]) -> (f64, f64) {
    let (max, mean) = errors(got, want);
    assert!(
        max <= MAX_TOL && mean <= MEAN_TOL,
        "{what}: max err {max:.2e}, mean err {mean:.2e} (relative to max|ref|)"
    );
    (max, mean)
}

// ---------------------------------------------------------------------------------------
// f64 reference of the kernel contract. Matrices are [C, N] row-major, N = B·S.

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// y[o, t] = Σ_i W[o, i]·x[i, t]  (W [out, inn]).
fn matmul(w: &[f32], x: &[f64], out: usize, inn: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0f64; out * n];
    for o in 0..out {
        for i in 0..inn {
            let a = w[o * inn + i] as f64;
            for t in 0..n {
                y[o * n + t] += a * x[i * n + t];
            }
        }
    }
    y
}

/// y[i, t] = Σ_o W[o, i]·dy[o, t]  (Wᵀ·dy).
fn matmul_t(w: &[f32], dy: &[f64], out: usize, inn: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0f64; inn * n];
    for o in 0..out {
        for i in 0..inn {
            let a = w[o * inn + i] as f64;
            for t in 0..n {
                y[i * n + t] += a * dy[o * n + t];
            }
        }
    }
    y
}

fn rmsnorm(x: &[f64], g: &[f32], d: usize, n: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0f64; d * n];
    for t in 0..n {
        let ms: f64 = (0..d).map(|c| x[c * n + t] * x[c * n + t]).sum::<f64>() / d as f64;
        let r = 1.0 / (ms + eps).sqrt();
        for c in 0..d {
            y[c * n + t] = x[c * n + t] * r * g[c] as f64;
        }
    }
    y
}

/// llama2.c RoPE: pairs (2j, 2j+1) of each head rotate by pos·θ^(−2j/hd), pos = t mod S.
fn rope(x: &mut [f64], heads: usize, hd: usize, d: &Dims, theta: f64) {
    let n = d.n();
    for h in 0..heads {
        for j in 0..hd / 2 {
            let freq = theta.powf(-((2 * j) as f64) / hd as f64);
            let (ce, co) = (h * hd + 2 * j, h * hd + 2 * j + 1);
            for t in 0..n {
                let a = (t % d.seq) as f64 * freq;
                let (e, o) = (x[ce * n + t], x[co * n + t]);
                x[ce * n + t] = e * a.cos() - o * a.sin();
                x[co * n + t] = e * a.sin() + o * a.cos();
            }
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Causal softmax probabilities [B, NH, S, S] from post-RoPE q, k.
fn probs(q: &[f64], k: &[f64], d: &Dims) -> Vec<f64> {
    let (s, hd, n, g) = (d.seq, d.head_dim, d.n(), d.n_heads / d.n_kv_heads);
    let mut p = vec![0f64; d.probs_len()];
    for b in 0..d.batch {
        for h in 0..d.n_heads {
            let kh = h / g;
            for t in 0..s {
                let row = &mut p[((b * d.n_heads + h) * s + t) * s..][..s];
                let mut mx = f64::NEG_INFINITY;
                for t2 in 0..=t {
                    let mut dot = 0.0;
                    for e in 0..hd {
                        dot += q[(h * hd + e) * n + b * s + t] * k[(kh * hd + e) * n + b * s + t2];
                    }
                    row[t2] = dot / (hd as f64).sqrt();
                    mx = mx.max(row[t2]);
                }
                let mut sum = 0.0;
                for v in row[..=t].iter_mut() {
                    *v = (*v - mx).exp();
                    sum += *v;
                }
                for v in row[..=t].iter_mut() {
                    *v /= sum;
                }
            }
        }
    }
    p
}

struct AttnRef {
    xn: Vec<f64>,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    attn: Vec<f64>,
    o: Vec<f64>,
}

fn ref_fwd_attn(c: &Config, d: &Dims, x: &[f32], w: &AttnWeights) -> AttnRef {
    let (dm, qd, kvd, n, s, hd) = (d.dim, d.q_dim(), d.kv_dim(), d.n(), d.seq, d.head_dim);
    let xn = rmsnorm(&f64s(x), w.g, dm, n, c.norm_eps as f64);
    let mut q = matmul(w.wq, &xn, qd, dm, n);
    let mut k = matmul(w.wk, &xn, kvd, dm, n);
    let v = matmul(w.wv, &xn, kvd, dm, n);
    rope(&mut q, d.n_heads, hd, d, c.rope_theta as f64);
    rope(&mut k, d.n_kv_heads, hd, d, c.rope_theta as f64);
    let p = probs(&q, &k, d);
    let g = d.n_heads / d.n_kv_heads;
    let mut attn = vec![0f64; qd * n];
    for b in 0..d.batch {
        for h in 0..d.n_heads {
            for t in 0..s {
                for t2 in 0..=t {
                    let pr = p[((b * d.n_heads + h) * s + t) * s + t2];
                    for e in 0..hd {
                        attn[(h * hd + e) * n + b * s + t] +=
                            pr * v[((h / g) * hd + e) * n + b * s + t2];
                    }
                }
            }
        }
    }
    let o = matmul(w.wo, &attn, dm, qd, n);
    AttnRef {
        xn,
        q,
        k,
        v,
        attn,
        o,
    }
}

/// The inputs of one call of each kernel, drawn independently (f32) so every backend sees
/// the same numbers.
struct Inputs {
    x: Vec<f32>,
    x2: Vec<f32>,
    dy: Vec<f32>,
    h1: Vec<f32>,
    h3: Vec<f32>,
    dx2: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    dp: Vec<f32>,
    gq: Vec<f32>,
    gk: Vec<f32>,
    gv: Vec<f32>,
}

fn inputs(c: &Config, d: &Dims, aw: &AttnWeights, seed: u64) -> Inputs {
    let (dm, h, qd, kvd, n) = (d.dim, d.hidden, d.q_dim(), d.kv_dim(), d.n());
    let mut rng = Rng::new(seed);
    // Attention inputs from a real forward (post-RoPE q, k; causal probabilities).
    let xa = randn(&mut rng, dm * n, 1.0);
    let r = ref_fwd_attn(c, d, &xa, aw);
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (q, k, v) = (f32s(&r.q), f32s(&r.k), f32s(&r.v));
    let probs = f32s(&probs(&r.q, &r.k, d));
    Inputs {
        x: randn(&mut rng, dm * n, 1.0),
        x2: randn(&mut rng, dm * n, 1.0),
        dy: randn(&mut rng, dm * n, 1.0),
        h1: randn(&mut rng, h * n, 1.5),
        h3: randn(&mut rng, h * n, 1.5),
        dx2: randn(&mut rng, dm * n, 1.0),
        q,
        k,
        v,
        probs,
        dp: randn(&mut rng, d.probs_len(), 1.0),
        gq: randn(&mut rng, qd * n, 1.0),
        gk: randn(&mut rng, kvd * n, 1.0),
        gv: randn(&mut rng, kvd * n, 1.0),
    }
}

type Outputs = Vec<(&'static str, Vec<f32>)>;

/// Calls all six kernels of `layer` once on `inp`.
fn run_all(
    kern: &mut dyn Kernels,
    d: &Dims,
    layer: usize,
    aw: &AttnWeights,
    fw: &FfnWeights,
    inp: &Inputs,
) -> Outputs {
    let (dm, h, qd, kvd, n) = (d.dim, d.hidden, d.q_dim(), d.kv_dim(), d.n());
    let z = |len: usize| vec![0f32; len];
    let mut kern = Checked::new(kern);
    let (mut xn, mut q, mut k, mut v, mut attn, mut o) = (
        z(dm * n),
        z(qd * n),
        z(kvd * n),
        z(kvd * n),
        z(qd * n),
        z(dm * n),
    );
    kern.fwd_attn(
        layer,
        &inp.x,
        aw,
        AttnFwd {
            xn: &mut xn,
            q: &mut q,
            k: &mut k,
            v: &mut v,
            attn: &mut attn,
            o: &mut o,
        },
    )
    .unwrap();
    let (mut x2n, mut h1, mut h3, mut gate, mut f) =
        (z(dm * n), z(h * n), z(h * n), z(h * n), z(dm * n));
    kern.fwd_ffn(
        layer,
        &inp.x2,
        fw,
        FfnFwd {
            x2n: &mut x2n,
            h1: &mut h1,
            h3: &mut h3,
            gate: &mut gate,
            f: &mut f,
        },
    )
    .unwrap();
    let (mut dx2n, mut dh1, mut dh3) = (z(dm * n), z(h * n), z(h * n));
    kern.ffn_bwd(
        layer,
        &inp.dy,
        &inp.h1,
        &inp.h3,
        fw,
        FfnBwd {
            dx2n: &mut dx2n,
            dh1: &mut dh1,
            dh3: &mut dh3,
        },
    )
    .unwrap();
    let (mut dv, mut dp, mut pp) = (z(kvd * n), z(d.probs_len()), z(d.probs_len()));
    kern.sdpa_bwd1(
        layer,
        &inp.dx2,
        &inp.q,
        &inp.k,
        &inp.v,
        aw,
        SdpaBwd1 {
            dv: &mut dv,
            dp: &mut dp,
            probs: &mut pp,
        },
    )
    .unwrap();
    let (mut dq, mut dk) = (z(qd * n), z(kvd * n));
    kern.sdpa_bwd2(
        layer,
        &inp.probs,
        &inp.dp,
        &inp.q,
        &inp.k,
        SdpaBwd2 {
            dq: &mut dq,
            dk: &mut dk,
        },
    )
    .unwrap();
    let mut dxn = z(dm * n);
    kern.qkv_bwd(layer, &inp.gq, &inp.gk, &inp.gv, aw, &mut dxn)
        .unwrap();
    vec![
        ("fwdAttn xn", xn),
        ("fwdAttn q", q),
        ("fwdAttn k", k),
        ("fwdAttn v", v),
        ("fwdAttn attn", attn),
        ("fwdAttn o", o),
        ("fwdFFN x2n", x2n),
        ("fwdFFN h1", h1),
        ("fwdFFN h3", h3),
        ("fwdFFN gate", gate),
        ("fwdFFN f", f),
        ("ffnBwd dx2n", dx2n),
        ("ffnBwd dh1", dh1),
        ("ffnBwd dh3", dh3),
        ("sdpaBwd1 dv", dv),
        ("sdpaBwd1 dp", dp),
        ("sdpaBwd1 probs", pp),
        ("sdpaBwd2 dq", dq),
        ("sdpaBwd2 dk", dk),
        ("qkvBwd dxn", dxn),
    ]
}

/// The f64 reference of every output of [`run_all`], in the same order.
fn reference(
    c: &Config,
    d: &Dims,
    aw: &AttnWeights,
    fw: &FfnWeights,
    inp: &Inputs,
) -> Vec<Vec<f64>> {
    let (dm, h, qd, kvd, n, s, hd) = (
        d.dim,
        d.hidden,
        d.q_dim(),
        d.kv_dim(),
        d.n(),
        d.seq,
        d.head_dim,
    );
    let g = d.n_heads / d.n_kv_heads;
    let r = ref_fwd_attn(c, d, &inp.x, aw);

    let x2n = rmsnorm(&f64s(&inp.x2), fw.g, dm, n, c.norm_eps as f64);
    let h1 = matmul(fw.w1, &x2n, h, dm, n);
    let h3 = matmul(fw.w3, &x2n, h, dm, n);
    let gate: Vec<f64> = h1
        .iter()
        .zip(&h3)
        .map(|(a, b)| a * sigmoid(*a) * b)
        .collect();
    let f = matmul(fw.w2, &gate, dm, h, n);

    let dg = matmul_t(fw.w2, &f64s(&inp.dy), dm, h, n);
    let (h1i, h3i) = (f64s(&inp.h1), f64s(&inp.h3));
    let mut dh1 = vec![0f64; h * n];
    let mut dh3 = vec![0f64; h * n];
    for i in 0..h * n {
        let sg = sigmoid(h1i[i]);
        dh1[i] = dg[i] * h3i[i] * sg * (1.0 + h1i[i] * (1.0 - sg));
        dh3[i] = dg[i] * h1i[i] * sg;
    }
    let mut dx2n = matmul_t(fw.w1, &dh1, h, dm, n);
    for (a, b) in dx2n.iter_mut().zip(matmul_t(fw.w3, &dh3, h, dm, n)) {
        *a += b;
    }

    // sdpaBwd1: dattn = Woᵀ·dx2; P from q, k; dv = Σ over the kv group of dattn·P;
    // dP = dattnᵀ·v on and below the diagonal, 0 above.
    let da = matmul_t(aw.wo, &f64s(&inp.dx2), dm, qd, n);
    let (q, k, v) = (f64s(&inp.q), f64s(&inp.k), f64s(&inp.v));
    let p = probs(&q, &k, d);
    let mut dv = vec![0f64; kvd * n];
    let mut dp = vec![0f64; d.probs_len()];
    for b in 0..d.batch {
        for hh in 0..d.n_heads {
            let kh = hh / g;
            for t in 0..s {
                for t2 in 0..=t {
                    let pr = p[((b * d.n_heads + hh) * s + t) * s + t2];
                    let mut dot = 0.0;
                    for e in 0..hd {
                        let dae = da[(hh * hd + e) * n + b * s + t];
                        dot += dae * v[(kh * hd + e) * n + b * s + t2];
                        dv[(kh * hd + e) * n + b * s + t2] += pr * dae;
                    }
                    dp[((b * d.n_heads + hh) * s + t) * s + t2] = dot;
                }
            }
        }
    }

    // sdpaBwd2: dS = P⊙(dP − rowsum(P⊙dP))/√hd; dq = dS·k; dk = Σ over the group dSᵀ·q.
    let (pin, dpin) = (f64s(&inp.probs), f64s(&inp.dp));
    let mut dq = vec![0f64; qd * n];
    let mut dk = vec![0f64; kvd * n];
    for b in 0..d.batch {
        for hh in 0..d.n_heads {
            let kh = hh / g;
            for t in 0..s {
                let base = ((b * d.n_heads + hh) * s + t) * s;
                let rs: f64 = (0..s).map(|t2| pin[base + t2] * dpin[base + t2]).sum();
                for t2 in 0..s {
                    let ds = pin[base + t2] * (dpin[base + t2] - rs) / (hd as f64).sqrt();
                    for e in 0..hd {
                        dq[(hh * hd + e) * n + b * s + t] += ds * k[(kh * hd + e) * n + b * s + t2];
                        dk[(kh * hd + e) * n + b * s + t2] += ds * q[(hh * hd + e) * n + b * s + t];
                    }
                }
            }
        }
    }

    let mut dxn = matmul_t(aw.wq, &f64s(&inp.gq), qd, dm, n);
    for (a, b) in dxn
        .iter_mut()
        .zip(matmul_t(aw.wk, &f64s(&inp.gk), kvd, dm, n))
    {
        *a += b;
    }
    for (a, b) in dxn
        .iter_mut()
        .zip(matmul_t(aw.wv, &f64s(&inp.gv), kvd, dm, n))
    {
        *a += b;
    }
    vec![
        r.xn, r.q, r.k, r.v, r.attn, r.o, x2n, h1, h3, gate, f, dx2n, dh1, dh3, dv, dp, p, dq, dk,
        dxn,
    ]
}

fn weights(p: &Params, layer: usize) -> (AttnWeights<'_>, FfnWeights<'_>) {
    (
        AttnWeights {
            g: p.layer(layer, LayerTensor::AttentionNorm),
            wq: p.layer(layer, LayerTensor::Wq),
            wk: p.layer(layer, LayerTensor::Wk),
            wv: p.layer(layer, LayerTensor::Wv),
            wo: p.layer(layer, LayerTensor::Wo),
            q_norm: None,
            k_norm: None,
        },
        FfnWeights {
            g: p.layer(layer, LayerTensor::FfnNorm),
            w1: p.layer(layer, LayerTensor::W1),
            w2: p.layer(layer, LayerTensor::W2),
            w3: p.layer(layer, LayerTensor::W3),
        },
    )
}

fn check_pipeline(name: &str, c: &Config, pipeline: Pipeline) {
    let d = Dims::new(c, 2, 16);
    let p = params(c, 7);
    let layer = 1;
    let (aw, fw) = weights(&p, layer);
    let inp = inputs(c, &d, &aw, 11);
    let want = reference(c, &d, &aw, &fw, &inp);

    let mut ane = AneKernels::new(Box::new(SimDevice::new()), c, d.batch, d.seq, pipeline)
        .unwrap_or_else(|e| panic!("{name} {pipeline}: {e:#}"));
    ane.prepare(1, Pass::Training).unwrap();
    let got = run_all(&mut ane, &d, layer, &aw, &fw, &inp);

    let mut cpu = CpuKernels::new(ane.spec().clone());
    let cpu_out = run_all(&mut cpu, &d, layer, &aw, &fw, &inp);

    let mut worst = (0f64, 0f64);
    let mut worst_cpu = (0f64, 0f64);
    for (((what, g), w), (_, cv)) in got.iter().zip(&want).zip(&cpu_out) {
        let tag = format!("{name} {pipeline} {what}");
        let e = compare(&format!("{tag} vs f64 reference"), g, w);
        worst = (worst.0.max(e.0), worst.1.max(e.1));
        let e = compare(&format!("{tag} vs cpu kernel"), g, &f64s(cv));
        worst_cpu = (worst_cpu.0.max(e.0), worst_cpu.1.max(e.1));
        // The reference itself agrees with the fp32 CPU kernels to fp32 accuracy.
        let (m, _) = errors(cv, w);
        assert!(m < 1e-4, "{tag}: cpu kernel vs f64 reference {m:.2e}");
    }
    // Above the diagonal probabilities and their gradients are exactly zero.
    let (pp, dp) = (&got[16].1, &got[15].1);
    let s = d.seq;
    for bh in 0..d.batch * d.n_heads {
        for t in 0..s {
            for t2 in t + 1..s {
                assert_eq!(
                    (pp[(bh * s + t) * s + t2], dp[(bh * s + t) * s + t2]),
                    (0.0, 0.0)
                );
            }
        }
    }

    let st = ane.stats();
    eprintln!(
        "{name:12} {pipeline:7}: max/mean err vs f64 {:.2e}/{:.2e}, vs cpu {:.2e}/{:.2e} (relative \
         to max|ref|); {} compiles, {:.0} ms compiling, {:.1} ms surface I/O, est. ANE {:.3} ms",
        worst.0,
        worst.1,
        worst_cpu.0,
        worst_cpu.1,
        st.compiles,
        st.compile_ms,
        st.io_ms,
        ane.estimated_ane_ms().unwrap()
    );
}

#[test]
fn static_pipeline_matches_reference_and_cpu() {
    for (name, c) in configs() {
        check_pipeline(name, &c, Pipeline::Static);
    }
}

#[test]
fn dynamic_pipeline_matches_reference_and_cpu() {
    for (name, c) in configs() {
        check_pipeline(name, &c, Pipeline::Dynamic);
    }
}
