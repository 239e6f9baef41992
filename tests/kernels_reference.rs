//! The `cpu` kernels against the reference backend (`kernels::reference`, plain f64 loops of
//! the contract's formulas, itself checked by finite differences in tests/gradcheck.rs):
//! every output of every kernel, on MHA, GQA and MQA shapes, sequences shorter and longer
//! than the attention tile, batch > 1 and head_dim·heads ≠ dim, fwd_attn with and without
//! Qwen3's per-head q/k norms. Each entry must be within
//! 1e-5 of the largest reference value of its tensor. Outputs start as NaN and every
//! kernel runs twice, so a kernel that reads its outputs or leaves part of them is caught.

use anetrain::kernels::cpu::CpuKernels;
use anetrain::kernels::reference::ReferenceKernels;
use anetrain::kernels::{
    AttnFwd, AttnWeights, Checked, FfnBwd, FfnFwd, FfnWeights, SdpaBwd1, SdpaBwd2, Spec,
};
use anetrain::model::Config;
use anetrain::util::rng::Rng;

fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| r.next_f32() * 2.0 - 1.0).collect()
}

/// `may_vanish`: the tensor is zero by the math (dq, dk of one-token sequences, whose softmax
/// over a single key has no gradient); otherwise an all-zero reference is an error.
fn close(shape: &str, what: &str, got: &[f32], want: &[f32], may_vanish: bool) {
    assert_eq!(got.len(), want.len(), "{shape}: {what}");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    if scale == 0.0 && may_vanish {
        assert!(
            got.iter().all(|&g| g == 0.0),
            "{shape}: {what} should be zero"
        );
        return;
    }
    assert!(scale > 0.0, "{shape}: {what} is all zero in the reference");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w as f64).abs() <= 1e-5 * scale,
            "{shape}: {what}[{i}]: cpu {g} vs reference {w} (scale {scale})"
        );
    }
}

/// The spec of a one-layer model of these shapes (llama2.c's eps and RoPE theta).
#[allow(clippy::too_many_arguments)]
fn dims(dim: usize, hidden: usize, heads: usize, kv: usize, hd: usize, b: usize, s: usize) -> Spec {
    let mut c = Config::llama(dim, hidden, 1, heads, kv, 8, s);
    c.head_dim = hd;
    Spec::new(&c, b, s)
}

/// The shapes: (name, spec).
fn shapes() -> Vec<(&'static str, Spec)> {
    vec![
        // GQA, head_dim·heads ≠ dim, two sequences longer than one 64-row tile
        ("gqa_b2_s70", dims(12, 20, 4, 2, 4, 2, 70)),
        ("mha_b3_s7", dims(16, 24, 4, 4, 4, 3, 7)),
        ("mqa_b1_s130", dims(8, 12, 4, 1, 6, 1, 130)),
        ("gqa_s1", dims(8, 16, 2, 1, 8, 2, 1)),
    ]
}

/// Runs `f` on a fresh `cpu` backend twice (outputs NaN-filled before the first call) and
/// on the reference once; returns (cpu outputs, reference outputs).
fn both(
    spec: &Spec,
    lens: &[usize],
    mut f: impl FnMut(&mut Checked, &mut [Vec<f32>]),
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut cpu_out: Vec<Vec<f32>> = lens.iter().map(|&l| vec![f32::NAN; l]).collect();
    let mut ref_out: Vec<Vec<f32>> = lens.iter().map(|&l| vec![f32::NAN; l]).collect();
    let mut cpu = CpuKernels::new(spec.clone());
    f(&mut Checked::new(&mut cpu), &mut cpu_out);
    f(&mut Checked::new(&mut cpu), &mut cpu_out);
    let mut reference = ReferenceKernels::new(spec.clone());
    f(&mut Checked::new(&mut reference), &mut ref_out);
    (cpu_out, ref_out)
}

fn compare(shape: &str, names: &[&str], (c, r): (Vec<Vec<f32>>, Vec<Vec<f32>>)) {
    for ((name, c), r) in names.iter().zip(&c).zip(&r) {
        let vanishes = shape.ends_with("_s1") && (*name == "dq" || *name == "dk");
        close(shape, name, c, r, vanishes);
    }
}

/// fwd_attn of both attention variants: Llama's, and Qwen3's with per-head q/k RMSNorm
/// gains (`AttnWeights::q_norm`, `k_norm`) applied before RoPE.
#[test]
fn fwd_attn_matches_the_reference() {
    for qk_norm in [false, true] {
        for (name, spec) in shapes() {
            let d = spec.dims;
            let (n, dim, qd, kvd, hd) = (d.n(), d.dim, d.q_dim(), d.kv_dim(), d.head_dim);
            let x = rand_vec(dim * n, 1);
            let g = rand_vec(dim, 2);
            let (wq, wk, wv, wo) = (
                rand_vec(qd * dim, 3),
                rand_vec(kvd * dim, 4),
                rand_vec(kvd * dim, 5),
                rand_vec(dim * qd, 6),
            );
            let (qg, kg) = (rand_vec(hd, 7), rand_vec(hd, 8));
            let w = AttnWeights {
                g: &g,
                wq: &wq,
                wk: &wk,
                wv: &wv,
                wo: &wo,
                q_norm: qk_norm.then_some(&qg[..]),
                k_norm: qk_norm.then_some(&kg[..]),
            };
            let lens = [dim * n, qd * n, kvd * n, kvd * n, qd * n, dim * n];
            let out = both(&spec, &lens, |k, o| {
                let [xn, q, kk, v, attn, oo] = o.get_disjoint_mut([0, 1, 2, 3, 4, 5]).unwrap();
                let out = AttnFwd {
                    xn,
                    q,
                    k: kk,
                    v,
                    attn,
                    o: oo,
                };
                k.fwd_attn(0, &x, &w, out).unwrap();
            });
            let shape = format!("{name}{}", if qk_norm { "_qk_norm" } else { "" });
            compare(&shape, &["xn", "q", "k", "v", "attn", "o"], out);
        }
    }
}

/// q/k norm gains of the wrong length, or only one of the two, are refused by name.
#[test]
fn fwd_attn_refuses_bad_qk_norm_gains() {
    let spec = dims(8, 16, 2, 1, 4, 1, 3);
    let d = spec.dims;
    let (n, dim, qd, kvd) = (d.n(), d.dim, d.q_dim(), d.kv_dim());
    let x = rand_vec(dim * n, 1);
    let g = rand_vec(dim, 2);
    let (wq, wk, wv, wo) = (
        rand_vec(qd * dim, 3),
        rand_vec(kvd * dim, 4),
        rand_vec(kvd * dim, 5),
        rand_vec(dim * qd, 6),
    );
    let (good, short) = (rand_vec(4, 7), rand_vec(3, 8));
    for (qn, kn, want) in [
        (
            Some(&good[..]),
            Some(&short[..]),
            "k_norm has 3 elements, expected 4",
        ),
        (
            Some(&short[..]),
            Some(&good[..]),
            "q_norm has 3 elements, expected 4",
        ),
        (Some(&good[..]), None, "q_norm and k_norm come together"),
    ] {
        let w = AttnWeights {
            g: &g,
            wq: &wq,
            wk: &wk,
            wv: &wv,
            wo: &wo,
            q_norm: qn,
            k_norm: kn,
        };
        let mut o: Vec<Vec<f32>> = [dim * n, qd * n, kvd * n, kvd * n, qd * n, dim * n]
            .iter()
            .map(|&l| vec![0.0; l])
            .collect();
        let [xn, q, kk, v, attn, oo] = o.get_disjoint_mut([0, 1, 2, 3, 4, 5]).unwrap();
        let out = AttnFwd {
            xn,
            q,
            k: kk,
            v,
            attn,
            o: oo,
        };
        let mut cpu = CpuKernels::new(spec.clone());
        let e = format!(
            "{:#}",
            Checked::new(&mut cpu).fwd_attn(0, &x, &w, out).unwrap_err()
        );
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn ffn_kernels_match_the_reference() {
    for (name, spec) in shapes() {
        let d = spec.dims;
        let (n, dim, h) = (d.n(), d.dim, d.hidden);
        let x2 = rand_vec(dim * n, 21);
        let g = rand_vec(dim, 22);
        let (w1, w2, w3) = (
            rand_vec(h * dim, 23),
            rand_vec(dim * h, 24),
            rand_vec(h * dim, 25),
        );
        let w = FfnWeights {
            g: &g,
            w1: &w1,
            w2: &w2,
            w3: &w3,
        };
        let lens = [dim * n, h * n, h * n, h * n, dim * n];
        let out = both(&spec, &lens, |k, o| {
            let [x2n, h1, h3, gate, f] = o.get_disjoint_mut([0, 1, 2, 3, 4]).unwrap();
            k.fwd_ffn(
                0,
                &x2,
                &w,
                FfnFwd {
                    x2n,
                    h1,
                    h3,
                    gate,
                    f,
                },
            )
            .unwrap();
        });
        let (h1, h3) = (out.1[1].clone(), out.1[2].clone());
        compare(name, &["x2n", "h1", "h3", "gate", "f"], out);

        let dy = rand_vec(dim * n, 26);
        let out = both(&spec, &[dim * n, h * n, h * n], |k, o| {
            let [dx2n, dh1, dh3] = o.get_disjoint_mut([0, 1, 2]).unwrap();
            k.ffn_bwd(0, &dy, &h1, &h3, &w, FfnBwd { dx2n, dh1, dh3 })
                .unwrap();
        });
        compare(name, &["dx2n", "dh1", "dh3"], out);
    }
}

#[test]
fn sdpa_backward_kernels_match_the_reference() {
    for (name, spec) in shapes() {
        let d = spec.dims;
        let (n, dim, qd, kvd) = (d.n(), d.dim, d.q_dim(), d.kv_dim());
        let (q, k, v) = (
            rand_vec(qd * n, 11),
            rand_vec(kvd * n, 12),
            rand_vec(kvd * n, 13),
        );
        let (dx2, wo) = (rand_vec(dim * n, 14), rand_vec(dim * qd, 15));
        // Only wo is read; the rest of the block is there because the views are whole.
        let (g, wq, wkv) = (
            rand_vec(dim, 16),
            rand_vec(qd * dim, 17),
            rand_vec(kvd * dim, 18),
        );
        let w = AttnWeights {
            g: &g,
            wq: &wq,
            wk: &wkv,
            wv: &wkv,
            wo: &wo,
            q_norm: None,
            k_norm: None,
        };
        let out = both(
            &spec,
            &[kvd * n, d.probs_len(), d.probs_len()],
            |kern, o| {
                let [dv, dp, probs] = o.get_disjoint_mut([0, 1, 2]).unwrap();
                kern.sdpa_bwd1(0, &dx2, &q, &k, &v, &w, SdpaBwd1 { dv, dp, probs })
                    .unwrap();
            },
        );
        let (dp, probs) = (out.1[1].clone(), out.1[2].clone());
        compare(name, &["dv", "dp", "probs"], out);

        let out = both(&spec, &[qd * n, kvd * n], |kern, o| {
            let [dq, dk] = o.get_disjoint_mut([0, 1]).unwrap();
            kern.sdpa_bwd2(0, &probs, &dp, &q, &k, SdpaBwd2 { dq, dk })
                .unwrap();
        });
        compare(name, &["dq", "dk"], out);
    }
}

#[test]
fn qkv_bwd_matches_the_reference() {
    for (name, spec) in shapes() {
        let d = spec.dims;
        let (n, dim, qd, kvd) = (d.n(), d.dim, d.q_dim(), d.kv_dim());
        let (dq, dk, dv) = (
            rand_vec(qd * n, 31),
            rand_vec(kvd * n, 32),
            rand_vec(kvd * n, 33),
        );
        let g = rand_vec(dim, 30);
        let (wq, wk, wv, wo) = (
            rand_vec(qd * dim, 34),
            rand_vec(kvd * dim, 35),
            rand_vec(kvd * dim, 36),
            rand_vec(dim * qd, 37),
        );
        let w = AttnWeights {
            g: &g,
            wq: &wq,
            wk: &wk,
            wv: &wv,
            wo: &wo,
            q_norm: None,
            k_norm: None,
        };
        let out = both(&spec, &[dim * n], |kern, o| {
            kern.qkv_bwd(0, &dq, &dk, &dv, &w, &mut o[0]).unwrap();
        });
        compare(name, &["dxn"], out);
    }
}

#[test]
fn the_reference_rejects_bad_shapes() {
    let spec = shapes()[0].1.clone();
    let d = spec.dims;
    let (n, dim, qd, kvd) = (d.n(), d.dim, d.q_dim(), d.kv_dim());
    let (dq, dk, dv) = (vec![0.0; qd * n], vec![0.0; kvd * n], vec![0.0; kvd * n]);
    let w = vec![0.0; qd * dim];
    let wk = vec![0.0; kvd * dim];
    let aw = AttnWeights {
        g: &w[..dim],
        wq: &w,
        wk: &wk,
        wv: &wk,
        wo: &w,
        q_norm: None,
        k_norm: None,
    };
    let mut dxn = vec![0.0; dim * n - 1];
    let mut reference = ReferenceKernels::new(spec.clone());
    let e = Checked::new(&mut reference)
        .qkv_bwd(0, &dq, &dk, &dv, &aw, &mut dxn)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dxn") && e.contains("expected"), "{e}");
    // A layer the spec does not have.
    let mut dxn = vec![0.0; dim * n];
    let e = Checked::new(&mut reference)
        .qkv_bwd(1, &dq, &dk, &dv, &aw, &mut dxn)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 1 of a 1-layer model"), "{e}");
}

/// A backend built for one geometry refuses the slices of another (here: the same model at
/// batch 1 instead of 2, and at seq 35 instead of 70), naming the argument and the geometry
/// it was built for; the cpu backend's loops never see them.
#[test]
fn a_backend_refuses_a_call_of_another_geometry() {
    let spec = shapes()[0].1.clone();
    let d = spec.dims;
    let (dim, qd, kvd) = (d.dim, d.q_dim(), d.kv_dim());
    let g = rand_vec(dim, 1);
    let (wq, wkv, wo) = (
        rand_vec(qd * dim, 2),
        rand_vec(kvd * dim, 3),
        rand_vec(dim * qd, 4),
    );
    let w = AttnWeights {
        g: &g,
        wq: &wq,
        wk: &wkv,
        wv: &wkv,
        wo: &wo,
        q_norm: None,
        k_norm: None,
    };
    for n in [d.n() / 2, d.batch * (d.seq / 2)] {
        let x = rand_vec(dim * n, 5);
        let z = |len: usize| vec![0f32; len];
        let (mut xn, mut q, mut k, mut v, mut attn, mut o) = (
            z(dim * n),
            z(qd * n),
            z(kvd * n),
            z(kvd * n),
            z(qd * n),
            z(dim * n),
        );
        let mut cpu = CpuKernels::new(spec.clone());
        let mut reference = ReferenceKernels::new(spec.clone());
        for e in [
            Checked::new(&mut cpu).fwd_attn(
                0,
                &x,
                &w,
                AttnFwd {
                    xn: &mut xn,
                    q: &mut q,
                    k: &mut k,
                    v: &mut v,
                    attn: &mut attn,
                    o: &mut o,
                },
            ),
            Checked::new(&mut reference).fwd_attn(
                0,
                &x,
                &w,
                AttnFwd {
                    xn: &mut xn,
                    q: &mut q,
                    k: &mut k,
                    v: &mut v,
                    attn: &mut attn,
                    o: &mut o,
                },
            ),
        ] {
            let e = e.unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "fwd_attn: x has {} elements, expected {}",
                    dim * n,
                    dim * d.n()
                )) && e.contains("built for")
                    && e.contains("batch 2 × seq 70"),
                "{e}"
            );
        }
        assert!(xn.iter().chain(&o).all(|&v| v == 0.0), "outputs touched");
    }
}
