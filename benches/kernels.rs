//! Criterion benchmarks of the GEMM wrapper, the six `cpu` kernels and the CPU ops on the
//! Stories110M shapes at B1×S256 (small samples: the machines are shared).
//! `cargo bench --bench kernels [-- FILTER]`.

use anetrain::kernels::cpu::CpuKernels;
use anetrain::kernels::gemm::{sgemm, Op};
use anetrain::kernels::ops::{self, ClassifierGrads, Rope};
use anetrain::kernels::{
    AttnFwd, AttnWeights, Checked, Dims, FfnBwd, FfnFwd, FfnWeights, SdpaBwd1, SdpaBwd2, Spec,
};
use anetrain::model::Config;
use anetrain::util::rng::Rng;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

fn rand_vec(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| (r.next_f32() - 0.5) * scale).collect()
}

fn spec() -> Spec {
    Spec::new(&Config::preset("stories110m").unwrap(), 1, 256)
}

fn dims() -> Dims {
    spec().dims
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    let n = 256;
    // (name, m, n, k, op_a, op_b): forward Y = W·X, dX = Wᵀ·dY, dW = dY·Xᵀ.
    let shapes = [
        ("fwd_768x768", 768, n, 768, Op::N, Op::N),
        ("fwd_2048x768", 2048, n, 768, Op::N, Op::N),
        ("dx_768x2048", 768, n, 2048, Op::T, Op::N),
        ("dw_2048x768", 2048, 768, n, Op::N, Op::T),
        ("cls_logits_256x32000", n, 32000, 768, Op::T, Op::T),
    ];
    for (name, m, nn, k, oa, ob) in shapes {
        let a = rand_vec(m * k, 1, 1.0);
        let b = rand_vec(k * nn, 2, 1.0);
        let mut cc = vec![0.0; m * nn];
        let lda = if oa == Op::N { k } else { m };
        let ldb = if ob == Op::N { nn } else { k };
        g.throughput(Throughput::Elements((2 * m * nn * k) as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| sgemm(oa, ob, m, nn, k, 1.0, &a, lda, &b, ldb, 0.0, &mut cc, nn))
        });
    }
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let d = dims();
    let (n, dim, h, qd, kvd) = (d.n(), d.dim, d.hidden, d.q_dim(), d.kv_dim());
    let x = rand_vec(dim * n, 1, 2.0);
    let g1 = vec![1.0; dim];
    let s = 1.0 / (dim as f32).sqrt();
    let (wq, wk, wv, wo) = (
        rand_vec(qd * dim, 2, s),
        rand_vec(kvd * dim, 3, s),
        rand_vec(kvd * dim, 4, s),
        rand_vec(dim * qd, 5, s),
    );
    let (w1, w2, w3) = (
        rand_vec(h * dim, 6, s),
        rand_vec(dim * h, 7, s),
        rand_vec(h * dim, 8, s),
    );
    let aw = AttnWeights {
        g: &g1,
        wq: &wq,
        wk: &wk,
        wv: &wv,
        wo: &wo,
        q_norm: None,
        k_norm: None,
    };
    let fw = FfnWeights {
        g: &g1,
        w1: &w1,
        w2: &w2,
        w3: &w3,
    };
    let mut cpu = CpuKernels::new(spec());
    let mut k = Checked::new(&mut cpu);
    let z = |len: usize| vec![0.0f32; len];
    let (mut xn, mut q, mut kk, mut v, mut attn, mut o) = (
        z(dim * n),
        z(qd * n),
        z(kvd * n),
        z(kvd * n),
        z(qd * n),
        z(dim * n),
    );
    let (mut x2n, mut h1, mut h3, mut gate, mut f) =
        (z(dim * n), z(h * n), z(h * n), z(h * n), z(dim * n));
    let mut g = c.benchmark_group("kernels");
    g.bench_function("fwd_attn", |b| {
        b.iter(|| {
            k.fwd_attn(
                0,
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
            )
            .unwrap()
        })
    });
    g.bench_function("fwd_ffn", |b| {
        b.iter(|| {
            k.fwd_ffn(
                0,
                &x,
                &fw,
                FfnFwd {
                    x2n: &mut x2n,
                    h1: &mut h1,
                    h3: &mut h3,
                    gate: &mut gate,
                    f: &mut f,
                },
            )
            .unwrap()
        })
    });
    let dy = rand_vec(dim * n, 9, 1.0);
    let (mut dx2n, mut dh1, mut dh3) = (z(dim * n), z(h * n), z(h * n));
    g.bench_function("ffn_bwd", |b| {
        b.iter(|| {
            k.ffn_bwd(
                0,
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
            .unwrap()
        })
    });
    let (mut dv, mut dp, mut probs) = (z(kvd * n), z(d.probs_len()), z(d.probs_len()));
    g.bench_function("sdpa_bwd1", |b| {
        b.iter(|| {
            k.sdpa_bwd1(
                0,
                &dy,
                &q,
                &kk,
                &v,
                &aw,
                SdpaBwd1 {
                    dv: &mut dv,
                    dp: &mut dp,
                    probs: &mut probs,
                },
            )
            .unwrap()
        })
    });
    let (mut dq, mut dk) = (z(qd * n), z(kvd * n));
    g.bench_function("sdpa_bwd2", |b| {
        b.iter(|| {
            k.sdpa_bwd2(
                0,
                &probs,
                &dp,
                &q,
                &kk,
                SdpaBwd2 {
                    dq: &mut dq,
                    dk: &mut dk,
                },
            )
            .unwrap()
        })
    });
    let mut dxn = z(dim * n);
    g.bench_function("qkv_bwd", |b| {
        b.iter(|| k.qkv_bwd(0, &dq, &dk, &dv, &aw, &mut dxn).unwrap())
    });
    g.finish();
}

fn cpu_ops(c: &mut Criterion) {
    let d = dims();
    let (n, dim, qd) = (d.n(), d.dim, d.q_dim());
    let vocab = 32000;
    let x = rand_vec(dim * n, 1, 2.0);
    let g1 = vec![1.0; dim];
    let mut out = vec![0.0; dim * n];
    let mut scratch = vec![0.0; 2 * n];
    let mut g = c.benchmark_group("ops");
    g.bench_function("rmsnorm_fwd", |b| {
        b.iter(|| ops::rmsnorm_fwd(&mut out, &mut scratch[..n], &x, &g1, 1e-5))
    });
    let dy = rand_vec(dim * n, 2, 1.0);
    let mut dg = vec![0.0; dim];
    g.bench_function("rmsnorm_bwd", |b| {
        b.iter(|| ops::rmsnorm_bwd(&mut out, &mut dg, &dy, &x, &g1, 1e-5, &mut scratch))
    });
    let rope = Rope::new(d.head_dim, d.seq, 10000.0);
    let mut q = rand_vec(qd * n, 3, 1.0);
    g.bench_function("rope_fwd", |b| {
        b.iter(|| ops::rope_fwd(&mut q, &rope, n, d.seq))
    });
    let w = rand_vec(vocab * dim, 4, 0.1);
    let targets: Vec<u32> = (0..n as u32).map(|t| t * 97 % vocab as u32).collect();
    let mut logits = vec![0.0; n * vocab];
    let mut dxf = vec![0.0; dim * n];
    let mut dw = vec![0.0; vocab * dim];
    g.bench_function("classifier_ce_fwd_bwd", |b| {
        b.iter(|| {
            let mut times = [0.0; 3];
            ops::classifier_ce(
                &x,
                &w,
                &targets,
                dim,
                n,
                &mut logits,
                1.0 / n as f32,
                Some(ClassifierGrads {
                    dxf: &mut dxf,
                    dwcls: &mut dw,
                }),
                &mut times,
            )
        })
    });
    let mut row = rand_vec(vocab, 5, 10.0);
    g.bench_function("softmax_ce_row_32000", |b| {
        b.iter(|| ops::softmax_ce_row(&mut row, 7, true, 1.0))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = gemm, kernels, cpu_ops
}
criterion_main!(benches);
