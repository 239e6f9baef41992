//! Every parameter's gradient from the training step (fp32; with the `cpu` kernels and with
//! the plain-loop `reference` kernels, the oracle of tests/kernels_reference.rs) against
//! central finite differences of the loss computed by a separate, straightforward f64 forward
//! pass written here (token-major loops, llama2.c's math), on tiny configs: MHA, GQA and MQA,
//! tied and untied classifiers, batch > 1, sequence lengths that are not powers of two
//! (one longer than the attention tile), head_dim ≠ dim / n_heads.
//!
//! Tolerances: each entry must satisfy |g − fd| ≤ 5e-4·|fd| + 5e-6·max|fd| (max over the
//! whole model), and each tensor ‖g − fd‖ ≤ 1e-4·‖fd‖ (measured: ≤ 3e-6). The f64 differences themselves are
//! accurate to ~1e-9 relative; what the tolerance absorbs is fp32 rounding in the step.
//!
//! The `cpu` kernels run twice: on the native GEMM and on the system BLAS (`--gemm blas`)
//! when one loads; without one the BLAS run prints SKIP, and under `CI=true` it fails. The
//! GEMM engine is process-wide, so the steps of the tests here take turns ([`ENGINE`]).

use anetrain::kernels::blas;
use anetrain::kernels::cpu::CpuKernels;
use anetrain::kernels::gemm::{self, Engine, Selection, Threading};
use anetrain::kernels::reference::ReferenceKernels;
use anetrain::kernels::{Kernels, Spec};
use anetrain::model::{Config, LayerTensor, Layout, Params};
use anetrain::train::step::Workspace;
use anetrain::train::timing::Timings;
use anetrain::util::rng::Rng;

/// The model's loss in f64, straight from the definition: for each sequence and position,
/// RMSNorm, projections, RoPE (pairs (2j, 2j+1) per head, position within the sequence),
/// causal softmax attention with kv head h / (NH/NKV), SwiGLU FFN, final norm, classifier,
/// mean cross-entropy over all B·S tokens.
fn reference_loss(
    c: &Config,
    lay: &Layout,
    p: &[f64],
    inputs: &[u32],
    targets: &[u32],
    seq: usize,
) -> f64 {
    let (dim, hd, nh, nkv) = (c.dim, c.head_dim, c.n_heads, c.n_kv_heads);
    let (qd, kvd) = (nh * hd, nkv * hd);
    let w = |l: usize, t: LayerTensor| &p[lay.layer(l, t)];
    let matvec = |m: &[f64], x: &[f64], rows: usize| -> Vec<f64> {
        let cols = x.len();
        (0..rows)
            .map(|r| (0..cols).map(|k| m[r * cols + k] * x[k]).sum())
            .collect()
    };
    let rmsnorm = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + c.norm_eps as f64).sqrt();
        x.iter().zip(g).map(|(v, gg)| v * r * gg).collect()
    };
    let rope = |v: &mut [f64], pos: usize| {
        for i in (0..v.len()).step_by(2) {
            let j = (i % hd) / 2;
            let freq = 1.0 / (c.rope_theta as f64).powf((2 * j) as f64 / hd as f64);
            let (s, co) = (pos as f64 * freq).sin_cos();
            let (a, b) = (v[i], v[i + 1]);
            v[i] = a * co - b * s;
            v[i + 1] = a * s + b * co;
        }
    };
    let mut total = 0.0;
    for (toks, tgts) in inputs.chunks(seq).zip(targets.chunks(seq)) {
        let mut x: Vec<Vec<f64>> = toks
            .iter()
            .map(|&t| {
                p[lay.tok_embeddings.clone()][t as usize * dim..(t as usize + 1) * dim].to_vec()
            })
            .collect();
        for l in 0..c.n_layers {
            let mut q = Vec::new();
            let mut k = Vec::new();
            let mut v = Vec::new();
            for (pos, xt) in x.iter().enumerate() {
                let xn = rmsnorm(xt, w(l, LayerTensor::AttentionNorm));
                let mut qt = matvec(w(l, LayerTensor::Wq), &xn, qd);
                let mut kt = matvec(w(l, LayerTensor::Wk), &xn, kvd);
                rope(&mut qt, pos);
                rope(&mut kt, pos);
                q.push(qt);
                k.push(kt);
                v.push(matvec(w(l, LayerTensor::Wv), &xn, kvd));
            }
            for pos in 0..x.len() {
                let mut att = vec![0.0; qd];
                for h in 0..nh {
                    let kvh = h / (nh / nkv);
                    let sc: Vec<f64> = (0..=pos)
                        .map(|s| {
                            (0..hd)
                                .map(|i| q[pos][h * hd + i] * k[s][kvh * hd + i])
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                    for (s, scv) in sc.iter().enumerate() {
                        let pr = (scv - m).exp() / z;
                        for i in 0..hd {
                            att[h * hd + i] += pr * v[s][kvh * hd + i];
                        }
                    }
                }
                let o = matvec(w(l, LayerTensor::Wo), &att, dim);
                for (xv, ov) in x[pos].iter_mut().zip(o) {
                    *xv += ov;
                }
                let xn2 = rmsnorm(&x[pos], w(l, LayerTensor::FfnNorm));
                let h1 = matvec(w(l, LayerTensor::W1), &xn2, c.hidden_dim);
                let h3 = matvec(w(l, LayerTensor::W3), &xn2, c.hidden_dim);
                let gate: Vec<f64> = h1
                    .iter()
                    .zip(&h3)
                    .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                    .collect();
                let f = matvec(w(l, LayerTensor::W2), &gate, dim);
                for (xv, fv) in x[pos].iter_mut().zip(f) {
                    *xv += fv;
                }
            }
        }
        for (xt, &tg) in x.iter().zip(tgts) {
            let xf = rmsnorm(xt, &p[lay.norm.clone()]);
            let logits = matvec(&p[lay.output.clone()], &xf, c.vocab_size);
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            total += z.ln() + m - logits[tg as usize];
        }
    }
    total / inputs.len() as f64
}

/// Random parameters large enough that every path carries signal: weights N(0, 1/fan_in)
/// scaled up a little, gains 1 ± 0.3, embedding N(0, 1).
fn random_params(c: &Config, seed: u64) -> Params {
    let mut p = Params::zeros(c);
    let mut rng = Rng::new(seed);
    for t in p.layout.tensors() {
        let fan_in = *t.shape.last().unwrap() as f32;
        let s = &mut p.data[t.range.clone()];
        if t.shape.len() == 1 {
            s.iter_mut().for_each(|v| *v = 1.0 + 0.3 * rng.normal());
        } else if t.name.starts_with("tok_") {
            s.iter_mut().for_each(|v| *v = rng.normal());
        } else {
            s.iter_mut()
                .for_each(|v| *v = 1.5 * rng.normal() / fan_in.sqrt());
        }
    }
    p
}

/// Held while a test selects a GEMM engine and runs steps on it.
static ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `ce_chunk`: classifier token columns per chunk (0: the default, one chunk here).
fn check(
    name: &str,
    mut c: Config,
    tied: bool,
    batch: usize,
    seq: usize,
    seed: u64,
    ce_chunk: usize,
) {
    c.tied = tied;
    c.validate().unwrap();
    let params = random_params(&c, seed);
    let lay = params.layout.clone();
    let mut rng = Rng::new(seed + 100);
    let n = batch * seq;
    let inputs: Vec<u32> = (0..n)
        .map(|_| rng.below(c.vocab_size as u64) as u32)
        .collect();
    let targets: Vec<u32> = (0..n)
        .map(|_| rng.below(c.vocab_size as u64) as u32)
        .collect();

    let mut p64: Vec<f64> = params.data.iter().map(|&v| v as f64).collect();
    let h = 1e-5;
    let mut fd = vec![0.0f64; p64.len()];
    for i in 0..p64.len() {
        let orig = p64[i];
        p64[i] = orig + h;
        let lp = reference_loss(&c, &lay, &p64, &inputs, &targets, seq);
        p64[i] = orig - h;
        let lm = reference_loss(&c, &lay, &p64, &inputs, &targets, seq);
        p64[i] = orig;
        fd[i] = (lp - lm) / (2.0 * h);
    }
    let p64 = p64;
    let mut runs: Vec<(Box<dyn Kernels>, Selection, &str)> = vec![
        (
            Box::new(CpuKernels::new(Spec::new(&c, batch, seq))),
            Selection::NATIVE,
            "native",
        ),
        (
            Box::new(ReferenceKernels::new(Spec::new(&c, batch, seq))),
            Selection::NATIVE,
            "native",
        ),
    ];
    if let Some(b) = blas::system_or_skip(&format!("{name}/cpu on BLAS")) {
        runs.push((
            Box::new(CpuKernels::new(Spec::new(&c, batch, seq))),
            Selection {
                engine: Engine::Blas(b),
                threading: Threading::Split,
            },
            "blas",
        ));
    }
    let _turn = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    for (mut kb, engine, engine_name) in runs {
        gemm::select(engine);
        let k = kb.as_mut();
        let name = format!("{name}/{}/{engine_name}", k.name());
        let name = name.as_str();
        let mut ws = Workspace::new(&c, batch, seq);
        if ce_chunk > 0 {
            ws.set_ce_chunk(ce_chunk);
        }
        let mut grads = Params::zeros(&c);
        // A non-zero start checks that the step adds; grad_scale checks the scaling.
        grads.data.iter_mut().for_each(|g| *g = 0.5);
        let scale = 1.7f32;
        let mut t = Timings::default();
        let loss = ws
            .forward_backward(k, &params, &mut grads, &inputs, &targets, scale, &mut t)
            .unwrap();

        let want = reference_loss(&c, &lay, &p64, &inputs, &targets, seq);
        assert!(
            (loss as f64 - want).abs() < 2e-6 * want.max(1.0),
            "{name}: loss {loss} vs f64 reference {want}"
        );
        let eval = ws
            .forward_loss(k, &params, &inputs, &targets, &mut t)
            .unwrap();
        assert_eq!(
            eval, loss,
            "{name}: forward_loss differs from forward_backward"
        );

        let g: Vec<f64> = grads
            .data
            .iter()
            .map(|&v| (v as f64 - 0.5) / scale as f64)
            .collect();
        let gmax = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(gmax > 1e-3, "{name}: gradients vanish ({gmax})");
        let mut worst = (0.0f64, String::new());
        for ti in lay.tensors() {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            let mut nonzero = 0;
            for i in ti.range.clone() {
                let err = (g[i] - fd[i]).abs();
                let tol = 5e-4 * fd[i].abs() + 5e-6 * gmax;
                assert!(
                    err <= tol,
                    "{name}: {} [{}]: step {} vs finite difference {}",
                    ti.name,
                    i - ti.range.start,
                    g[i],
                    fd[i]
                );
                if fd[i].abs() > 1e-3 * gmax {
                    nonzero += 1;
                }
                num += err * err;
                den += fd[i] * fd[i];
            }
            let rel = (num / den.max(1e-300)).sqrt();
            assert!(rel <= 1e-4, "{name}: {} relative error {rel}", ti.name);
            // Each tensor carries real signal (an all-zero gradient would pass trivially).
            assert!(nonzero > 0, "{name}: {} has no signal", ti.name);
            if rel > worst.0 {
                worst = (rel, ti.name.clone());
            }
        }
        eprintln!(
            "{name}: {} parameters, loss {loss:.6}, worst tensor relative error {:.2e} ({})",
            p64.len(),
            worst.0,
            worst.1
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn cfg(
    dim: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv: usize,
    head_dim: usize,
    vocab: usize,
    seq_len: usize,
) -> Config {
    Config {
        head_dim,
        ..Config::llama(dim, hidden, layers, heads, kv, vocab, seq_len)
    }
}

#[test]
fn mha_tied_batch2_seq7_head_dim_not_dim_over_heads() {
    check(
        "mha-tied",
        cfg(16, 24, 2, 4, 4, 6, 13, 16),
        true,
        2,
        7,
        1,
        0,
    );
}

#[test]
fn gqa_untied_batch3_seq7() {
    check(
        "gqa-untied",
        cfg(12, 20, 2, 4, 2, 4, 11, 7),
        false,
        3,
        7,
        2,
        0,
    );
}

/// Also splits the classifier into token chunks of 3 (dW_cls accumulates across chunks).
#[test]
fn mqa_untied_batch2_seq5_chunked_classifier() {
    check(
        "mqa-untied",
        cfg(8, 12, 1, 3, 1, 4, 9, 8),
        false,
        2,
        5,
        3,
        3,
    );
}

/// Longer than one causal tile (64 query rows), so tile edges and the skipped masked
/// blocks are exercised.
#[test]
fn gqa_tied_seq70_spans_tiles() {
    check(
        "gqa-seq70",
        cfg(8, 12, 1, 4, 2, 4, 7, 80),
        true,
        2,
        70,
        4,
        0,
    );
}
