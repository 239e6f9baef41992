//! The `cpu` kernels against the reference backend (`kernels::reference`, plain f64 loops of
//! the contract's formulas, itself checked by finite differences in tests/gradcheck.rs):
//! every output of every kernel, on MHA, GQA and MQA shapes, sequences shorter and longer
//! than the attention tile, batch > 1 and head_dim·heads ≠ dim. Each entry must be within
//! 1e-5 of the largest reference value of its tensor. Outputs start as NaN and every
//! kernel runs twice, so a kernel that reads its outputs or leaves part of them is caught.

use anetrain::kernels::cpu::CpuKernels;
use anetrain::kernels::ops::Rope;
use anetrain::kernels::reference::ReferenceKernels;
use anetrain::kernels::{
    AttnFwd, AttnWeights, Dims, FfnBwd, FfnFwd, FfnWeights, Kernels, SdpaBwd1, SdpaBwd2,
};
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

#[allow(clippy::too_many_arguments)]
fn dims(dim: usize, hidden: usize, heads: usize, kv: usize, hd: usize, b: usize, s: usize) -> Dims {
    Dims {
        dim,
        hidden,
        n_heads: heads,
        n_kv_heads: kv,
        head_dim: hd,
        batch: b,
        seq: s,
    }
}

/// The shapes: (name, dims).
fn shapes() -> Vec<(&'static str, Dims)> {
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
    lens: &[usize],
    mut f: impl FnMut(&mut dyn Kernels, &mut [Vec<f32>]),
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut cpu_out: Vec<Vec<f32>> = lens.iter().map(|&l| vec![f32::NAN; l]).collect();
    let mut ref_out: Vec<Vec<f32>> = lens.iter().map(|&l| vec![f32::NAN; l]).collect();
    let mut cpu = CpuKernels::new();
    f(&mut cpu, &mut cpu_out);
    f(&mut cpu, &mut cpu_out);
    f(&mut ReferenceKernels::new(1e-5), &mut ref_out);
    (cpu_out, ref_out)
}

fn compare(shape: &str, names: &[&str], (c, r): (Vec<Vec<f32>>, Vec<Vec<f32>>)) {
    for ((name, c), r) in names.iter().zip(&c).zip(&r) {
        let vanishes = shape.ends_with("_s1") && (*name == "dq" || *name == "dk");
        close(shape, name, c, r, vanishes);
    }
}

#[test]
fn fwd_attn_matches_the_reference() {
    for (name, d) in shapes() {
        let (n, dim, qd, kvd) = (d.n(), d.dim, d.q_dim(), d.kv_dim());
        let x = rand_vec(dim * n, 1);
        let g = rand_vec(dim, 2);
        let (wq, wk, wv, wo) = (
            rand_vec(qd * dim, 3),
            rand_vec(kvd * dim, 4),
            rand_vec(kvd * dim, 5),
            rand_vec(dim * qd, 6),
        );
        let rope = Rope::new(d.head_dim, 256, 10000.0);
        let w = AttnWeights {
            g: &g,
            wq: &wq,
            wk: &wk,
            wv: &wv,
            wo: &wo,
        };
        let lens = [dim * n, qd * n, kvd * n, kvd * n, qd * n, dim * n];
        let out = both(&lens, |k, o| {
            let [xn, q, kk, v, attn, oo] = o.get_disjoint_mut([0, 1, 2, 3, 4, 5]).unwrap();
            let out = AttnFwd {
                xn,
                q,
                k: kk,
                v,
                attn,
                o: oo,
            };
            k.fwd_attn(0, &d, &rope, &x, &w, out).unwrap();
        });
        compare(name, &["xn", "q", "k", "v", "attn", "o"], out);
    }
}

#[test]
fn ffn_kernels_match_the_reference() {
    for (name, d) in shapes() {
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
        let out = both(&lens, |k, o| {
            let [x2n, h1, h3, gate, f] = o.get_disjoint_mut([0, 1, 2, 3, 4]).unwrap();
            k.fwd_ffn(
                0,
                &d,
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
        let out = both(&[dim * n, h * n, h * n], |k, o| {
            let [dx2n, dh1, dh3] = o.get_disjoint_mut([0, 1, 2]).unwrap();
            k.ffn_bwd(0, &d, &dy, &h1, &h3, &w, FfnBwd { dx2n, dh1, dh3 })
                .unwrap();
        });
        compare(name, &["dx2n", "dh1", "dh3"], out);
    }
}

#[test]
fn sdpa_backward_kernels_match_the_reference() {
    for (name, d) in shapes() {
        let (n, dim, qd, kvd) = (d.n(), d.dim, d.q_dim(), d.kv_dim());
        let (q, k, v) = (
            rand_vec(qd * n, 11),
            rand_vec(kvd * n, 12),
            rand_vec(kvd * n, 13),
        );
        let (dx2, wo) = (rand_vec(dim * n, 14), rand_vec(dim * qd, 15));
        let out = both(&[kvd * n, d.probs_len(), d.probs_len()], |kern, o| {
            let [dv, dp, probs] = o.get_disjoint_mut([0, 1, 2]).unwrap();
            kern.sdpa_bwd1(0, &d, &dx2, &q, &k, &v, &wo, SdpaBwd1 { dv, dp, probs })
                .unwrap();
        });
        let (dp, probs) = (out.1[1].clone(), out.1[2].clone());
        compare(name, &["dv", "dp", "probs"], out);

        let out = both(&[qd * n, kvd * n], |kern, o| {
            let [dq, dk] = o.get_disjoint_mut([0, 1]).unwrap();
            kern.sdpa_bwd2(0, &d, &probs, &dp, &q, &k, SdpaBwd2 { dq, dk })
                .unwrap();
        });
        compare(name, &["dq", "dk"], out);
    }
}

#[test]
fn qkv_bwd_matches_the_reference() {
    for (name, d) in shapes() {
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
        };
        let out = both(&[dim * n], |kern, o| {
            kern.qkv_bwd(0, &d, &dq, &dk, &dv, &w, &mut o[0]).unwrap();
        });
        compare(name, &["dxn"], out);
    }
}

#[test]
fn the_reference_rejects_bad_shapes() {
    let d = shapes()[0].1;
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
    };
    let mut dxn = vec![0.0; dim * n - 1];
    let e = ReferenceKernels::default()
        .qkv_bwd(0, &d, &dq, &dk, &dv, &aw, &mut dxn)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dxn") && e.contains("expected"), "{e}");
}
