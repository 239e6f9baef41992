//! Every kernel of both Neural Engine pipelines, generated as MIL text, parsed and executed
//! by the simulated device through the `AneKernels` backend (packing included), against a
//! straightforward f64 reference of the kernel contract written here from the formulas.
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
use anetrain::kernels::ops::Rope;
use anetrain::kernels::{
    AttnFwd, AttnWeights, Dims, FfnBwd, FfnFwd, FfnWeights, Kernels, SdpaBwd1, SdpaBwd2,
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

fn compare(what: &str, got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    let mut max = 0f64;
    let mut sum = 0f64;
    for (g, w) in got.iter().zip(want) {
        let e = (*g as f64 - w).abs();
        assert!(e.is_finite(), "{what}: non-finite output");
        max = max.max(e);
        sum += e;
    }
    let (max, mean) = (max / scale, sum / got.len() as f64 / scale);
    assert!(
        max <= MAX_TOL && mean <= MEAN_TOL,
        "{what}: max err {max:.2e}, mean err {mean:.2e} (relative to max|ref| {scale:.3e})"
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

fn random_dims(c: &Config) -> Dims {
    Dims::new(c, 2, 16)
}

fn check_pipeline(name: &str, c: &Config, pipeline: Pipeline) {
    let d = random_dims(c);
    let (dm, h, qd, kvd, n, s) = (d.dim, d.hidden, d.q_dim(), d.kv_dim(), d.n(), d.seq);
    let p = params(c, 7);
    let layer = 1;
    let aw = AttnWeights {
        g: p.layer(layer, LayerTensor::AttentionNorm),
        wq: p.layer(layer, LayerTensor::Wq),
        wk: p.layer(layer, LayerTensor::Wk),
        wv: p.layer(layer, LayerTensor::Wv),
        wo: p.layer(layer, LayerTensor::Wo),
    };
    let fw = FfnWeights {
        g: p.layer(layer, LayerTensor::FfnNorm),
        w1: p.layer(layer, LayerTensor::W1),
        w2: p.layer(layer, LayerTensor::W2),
        w3: p.layer(layer, LayerTensor::W3),
    };
    let mut ane = AneKernels::new(Box::new(SimDevice::new()), c, d.batch, d.seq, pipeline)
        .unwrap_or_else(|e| panic!("{name} {pipeline}: {e:#}"));
    ane.prepare(&p, 1).unwrap();
    let rope_t = Rope::new(c.head_dim, c.seq_len, c.rope_theta);
    let mut rng = Rng::new(11);
    let tag = |k: &str| format!("{name} {pipeline} {k}");
    let mut worst = (0f64, 0f64);
    let mut note = |e: (f64, f64)| {
        worst = (worst.0.max(e.0), worst.1.max(e.1));
    };

    // fwdAttn
    let x = randn(&mut rng, dm * n, 1.0);
    let r = ref_fwd_attn(c, &d, &x, &aw);
    let (mut xn, mut q, mut k, mut v, mut attn, mut o) = (
        vec![0.0; dm * n],
        vec![0.0; qd * n],
        vec![0.0; kvd * n],
        vec![0.0; kvd * n],
        vec![0.0; qd * n],
        vec![0.0; dm * n],
    );
    ane.fwd_attn(
        layer,
        &d,
        &rope_t,
        &x,
        &aw,
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
    note(compare(&tag("fwdAttn xn"), &xn, &r.xn));
    note(compare(&tag("fwdAttn q"), &q, &r.q));
    note(compare(&tag("fwdAttn k"), &k, &r.k));
    note(compare(&tag("fwdAttn v"), &v, &r.v));
    note(compare(&tag("fwdAttn attn"), &attn, &r.attn));
    note(compare(&tag("fwdAttn o"), &o, &r.o));

    // fwdFFN
    let x2 = randn(&mut rng, dm * n, 1.0);
    let x2n_r = rmsnorm(&f64s(&x2), fw.g, dm, n, c.norm_eps as f64);
    let h1_r = matmul(fw.w1, &x2n_r, h, dm, n);
    let h3_r = matmul(fw.w3, &x2n_r, h, dm, n);
    let gate_r: Vec<f64> = h1_r
        .iter()
        .zip(&h3_r)
        .map(|(a, b)| a * sigmoid(*a) * b)
        .collect();
    let f_r = matmul(fw.w2, &gate_r, dm, h, n);
    let (mut x2n, mut h1, mut h3, mut gate, mut f) = (
        vec![0.0; dm * n],
        vec![0.0; h * n],
        vec![0.0; h * n],
        vec![0.0; h * n],
        vec![0.0; dm * n],
    );
    ane.fwd_ffn(
        layer,
        &d,
        &x2,
        &fw,
        FfnFwd {
            x2n: &mut x2n,
            h1: &mut h1,
            h3: &mut h3,
            gate: &mut gate,
            f: &mut f,
        },
    )
    .unwrap();
    note(compare(&tag("fwdFFN x2n"), &x2n, &x2n_r));
    note(compare(&tag("fwdFFN h1"), &h1, &h1_r));
    note(compare(&tag("fwdFFN h3"), &h3, &h3_r));
    note(compare(&tag("fwdFFN gate"), &gate, &gate_r));
    note(compare(&tag("fwdFFN f"), &f, &f_r));

    // ffnBwd (on the forward's h1, h3 and a random upstream gradient)
    let dy = randn(&mut rng, dm * n, 1.0);
    let dg = matmul_t(fw.w2, &f64s(&dy), dm, h, n);
    let h1d = f64s(&h1);
    let h3d = f64s(&h3);
    let mut dh1_r = vec![0f64; h * n];
    let mut dh3_r = vec![0f64; h * n];
    for i in 0..h * n {
        let sg = sigmoid(h1d[i]);
        dh1_r[i] = dg[i] * h3d[i] * sg * (1.0 + h1d[i] * (1.0 - sg));
        dh3_r[i] = dg[i] * h1d[i] * sg;
    }
    let mut dx2n_r = matmul_t(fw.w1, &dh1_r, h, dm, n);
    for (a, b) in dx2n_r.iter_mut().zip(matmul_t(fw.w3, &dh3_r, h, dm, n)) {
        *a += b;
    }
    let (mut dx2n, mut dh1, mut dh3) = (vec![0.0; dm * n], vec![0.0; h * n], vec![0.0; h * n]);
    ane.ffn_bwd(
        layer,
        &d,
        &dy,
        &h1,
        &h3,
        &fw,
        FfnBwd {
            dx2n: &mut dx2n,
            dh1: &mut dh1,
            dh3: &mut dh3,
        },
    )
    .unwrap();
    note(compare(&tag("ffnBwd dx2n"), &dx2n, &dx2n_r));
    note(compare(&tag("ffnBwd dh1"), &dh1, &dh1_r));
    note(compare(&tag("ffnBwd dh3"), &dh3, &dh3_r));

    // sdpaBwd1 on the forward's q, k, v
    let dx2 = randn(&mut rng, dm * n, 1.0);
    let da = matmul_t(aw.wo, &f64s(&dx2), dm, qd, n);
    let (qd64, kd64, vd64) = (f64s(&q), f64s(&k), f64s(&v));
    let p_r = probs(&qd64, &kd64, &d);
    let g = d.n_heads / d.n_kv_heads;
    let hd = d.head_dim;
    let mut dv_r = vec![0f64; kvd * n];
    let mut dp_r = vec![0f64; d.probs_len()];
    for b in 0..d.batch {
        for hh in 0..d.n_heads {
            let kh = hh / g;
            for t in 0..s {
                for t2 in 0..s {
                    let pr = p_r[((b * d.n_heads + hh) * s + t) * s + t2];
                    let mut dot = 0.0;
                    for e in 0..hd {
                        let dae = da[(hh * hd + e) * n + b * s + t];
                        dot += dae * vd64[(kh * hd + e) * n + b * s + t2];
                        dv_r[(kh * hd + e) * n + b * s + t2] += pr * dae;
                    }
                    dp_r[((b * d.n_heads + hh) * s + t) * s + t2] = dot;
                }
            }
        }
    }
    let (mut dv, mut dp, mut pp) = (
        vec![0.0; kvd * n],
        vec![0.0; d.probs_len()],
        vec![0.0; d.probs_len()],
    );
    ane.sdpa_bwd1(
        layer,
        &d,
        &dx2,
        &q,
        &k,
        &v,
        aw.wo,
        SdpaBwd1 {
            dv: &mut dv,
            dp: &mut dp,
            probs: &mut pp,
        },
    )
    .unwrap();
    note(compare(&tag("sdpaBwd1 dv"), &dv, &dv_r));
    note(compare(&tag("sdpaBwd1 dp"), &dp, &dp_r));
    note(compare(&tag("sdpaBwd1 probs"), &pp, &p_r));
    // Above the diagonal the probabilities are exactly zero.
    for b in 0..d.batch * d.n_heads {
        for t in 0..s {
            for t2 in t + 1..s {
                assert_eq!(pp[(b * s + t) * s + t2], 0.0);
            }
        }
    }

    // sdpaBwd2 on reference probabilities and a random dP
    let dp_in = randn(&mut rng, d.probs_len(), 1.0);
    let p_in: Vec<f32> = p_r.iter().map(|&x| x as f32).collect();
    let mut dq_r = vec![0f64; qd * n];
    let mut dk_r = vec![0f64; kvd * n];
    for b in 0..d.batch {
        for hh in 0..d.n_heads {
            let kh = hh / g;
            for t in 0..s {
                let base = ((b * d.n_heads + hh) * s + t) * s;
                let rs: f64 = (0..s)
                    .map(|t2| p_in[base + t2] as f64 * dp_in[base + t2] as f64)
                    .sum();
                for t2 in 0..s {
                    let ds = p_in[base + t2] as f64 * (dp_in[base + t2] as f64 - rs)
                        / (hd as f64).sqrt();
                    for e in 0..hd {
                        dq_r[(hh * hd + e) * n + b * s + t] +=
                            ds * kd64[(kh * hd + e) * n + b * s + t2];
                        dk_r[(kh * hd + e) * n + b * s + t2] +=
                            ds * qd64[(hh * hd + e) * n + b * s + t];
                    }
                }
            }
        }
    }
    let (mut dq, mut dk) = (vec![0.0; qd * n], vec![0.0; kvd * n]);
    ane.sdpa_bwd2(
        layer,
        &d,
        &p_in,
        &dp_in,
        &q,
        &k,
        SdpaBwd2 {
            dq: &mut dq,
            dk: &mut dk,
        },
    )
    .unwrap();
    note(compare(&tag("sdpaBwd2 dq"), &dq, &dq_r));
    note(compare(&tag("sdpaBwd2 dk"), &dk, &dk_r));

    // qkvBwd
    let (gq, gk, gv) = (
        randn(&mut rng, qd * n, 1.0),
        randn(&mut rng, kvd * n, 1.0),
        randn(&mut rng, kvd * n, 1.0),
    );
    let mut dxn_r = matmul_t(aw.wq, &f64s(&gq), qd, dm, n);
    for (a, b) in dxn_r.iter_mut().zip(matmul_t(aw.wk, &f64s(&gk), kvd, dm, n)) {
        *a += b;
    }
    for (a, b) in dxn_r.iter_mut().zip(matmul_t(aw.wv, &f64s(&gv), kvd, dm, n)) {
        *a += b;
    }
    let mut dxn = vec![0.0; dm * n];
    ane.qkv_bwd(layer, &d, &gq, &gk, &gv, &aw, &mut dxn).unwrap();
    note(compare(&tag("qkvBwd dxn"), &dxn, &dxn_r));

    let st = ane.stats();
    eprintln!(
        "{name:12} {pipeline:7}: worst max err {:.2e}, worst mean err {:.2e} (relative to max|ref|); \
         {} compiles, {:.0} ms compiling, {:.1} ms surface I/O, est. ANE {:.3} ms",
        worst.0,
        worst.1,
        st.compiles,
        st.compile_ms,
        st.io_ms,
        ane.estimated_ane_ms().unwrap()
    );
}

#[test]
fn static_pipeline_matches_reference() {
    for (name, c) in configs() {
        check_pipeline(name, &c, Pipeline::Static);
    }
}

#[test]
fn dynamic_pipeline_matches_reference() {
    for (name, c) in configs() {
        check_pipeline(name, &c, Pipeline::Dynamic);
    }
}
