//! Hugging Face model folders against an independent f64 implementation of transformers'
//! math (tests/hf_common): logits of the generation path, loss and every gradient of the
//! training step (central finite differences of the f64 loss, in transformers' layout), for
//! Llama with GQA and an untied head (f32), SmolLM2-style tied with θ = 100000 (bf16), Llama 3
//! RoPE scaling (f16, sharded) and Qwen3 with q/k norms and head_dim ≠ dim/heads (bf16).

mod hf_common;

use anetrain::data::TokenData;
use anetrain::generate::Transformer;
use anetrain::model::hf;
use hf_common::*;

fn tokens(spec: &Spec, n: usize, seed: u64) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| ((r.next() + 1.0) / 2.0 * spec.vocab as f64) as u32 % spec.vocab as u32)
        .collect()
}

/// Logits of every position from anetrain's generation path against the reference.
fn check_logits(m: &Model, dir: &std::path::Path, toks: &[u32]) {
    let p = hf::load(dir).unwrap();
    let want = m.logits(toks);
    let mut tr = Transformer::new(&p);
    for (pos, &t) in toks.iter().enumerate() {
        let got: Vec<f64> = tr.forward(t, pos).iter().map(|&x| x as f64).collect();
        let (e, scale) = rel_err(&got, &want[pos]);
        assert!(
            e < 2e-5,
            "{}: position {pos}: logits rel err {e:e} (scale {scale})",
            dir.display()
        );
    }
}

/// Loss and every gradient of the training step against the reference; returns the max
/// relative error over tensors.
fn check_grads(m: &Model, dir: &std::path::Path, toks: &[u32]) -> f64 {
    let p = hf::load(dir).unwrap();
    let seq = toks.len() - 1;
    let data = TokenData::from_vec(toks.iter().map(|&t| t as u16).collect(), "mem");
    let (g, loss) = anetrain::train::eval::window_gradients(&p, &data, 0, seq).unwrap();
    let want_loss = m.loss(&toks[..seq], &toks[1..]);
    assert!(
        ((loss as f64) - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
        "loss {loss} vs reference {want_loss}"
    );
    let fd = m.fd_grads(&toks[..seq], &toks[1..]);
    let mut worst = 0f64;
    let list = hf::tensors(g.config());
    assert_eq!(list.len(), fd.len(), "tensor count");
    for t in &list {
        let got: Vec<f64> = hf::get_hf(&g.data, t, g.config().head_dim)
            .map(|x| x as f64)
            .collect();
        let (e, scale) = rel_err(&got, &fd[&t.name]);
        assert!(scale > 0.0, "{}: zero gradient in the reference", t.name);
        assert!(
            e < 2e-3,
            "{}: gradient rel err {e:e} (scale {scale:e})",
            t.name
        );
        worst = worst.max(e);
    }
    worst
}

#[test]
fn llama_gqa_untied_f32_logits_loss_and_every_gradient() {
    let d = tempfile::tempdir().unwrap();
    let spec = Spec::llama(16, 4, 2);
    let m = Model::random(&spec, 1, "float32");
    m.write(d.path(), "float32", 1);
    let toks = tokens(&spec, 7, 2);
    check_logits(&m, d.path(), &toks);
    let e = check_grads(&m, d.path(), &toks);
    eprintln!("llama gqa untied f32: max gradient rel err {e:e}");
}

#[test]
fn smollm2_style_tied_theta_1e5_bf16() {
    let d = tempfile::tempdir().unwrap();
    let mut spec = Spec::llama(16, 2, 1);
    spec.tied = true;
    spec.theta = 100000.0;
    let m = Model::random(&spec, 3, "bfloat16");
    m.write(d.path(), "bfloat16", 1);
    let toks = tokens(&spec, 7, 4);
    check_logits(&m, d.path(), &toks);
    let e = check_grads(&m, d.path(), &toks);
    eprintln!("smollm2-style tied bf16: max gradient rel err {e:e}");
}

#[test]
fn llama3_rope_scaling_f16_sharded() {
    let d = tempfile::tempdir().unwrap();
    let mut spec = Spec::llama(16, 2, 2);
    spec.head_dim = 8;
    spec.theta = 500000.0;
    // Wavelengths of θ=5e5, hd=8: 6.3, 170, 4.6e3, 1.2e5 — one high, one blended, two low.
    spec.llama3 = Some((8.0, 1.0, 4.0, 2048));
    let m = Model::random(&spec, 5, "float16");
    m.write(d.path(), "float16", 3);
    assert!(d.path().join("model-00003-of-00003.safetensors").exists());
    let toks = tokens(&spec, 9, 6);
    check_logits(&m, d.path(), &toks);
    check_grads(&m, d.path(), &toks);
    // The scaling matters: without it the reference differs.
    let mut plain = m.clone();
    plain.spec.llama3 = None;
    let (a, b) = (m.logits(&toks), plain.logits(&toks));
    assert!(rel_err(&a[8], &b[8]).0 > 1e-4);
}

#[test]
fn qwen3_qk_norm_head_dim_not_dim_over_heads_logits_loss_and_every_gradient() {
    let d = tempfile::tempdir().unwrap();
    let spec = Spec {
        arch: "Qwen3ForCausalLM",
        head_dim: 6,
        theta: 1_000_000.0,
        eps: 1e-6,
        ..Spec::llama(16, 4, 2)
    };
    let m = Model::random(&spec, 7, "bfloat16");
    m.write(d.path(), "bfloat16", 1);
    let toks = tokens(&spec, 7, 8);
    check_logits(&m, d.path(), &toks);
    let e = check_grads(&m, d.path(), &toks);
    eprintln!("qwen3 q/k norms bf16: max gradient rel err {e:e}");
    // The q/k norms matter: with unit gains replaced the logits move.
    let mut other = m.clone();
    for l in 0..spec.layers {
        for v in &mut other
            .t
            .get_mut(&format!("model.layers.{l}.self_attn.q_norm.weight"))
            .unwrap()
            .1
        {
            *v *= 1.5;
        }
    }
    assert!(rel_err(&other.logits(&toks)[6], &m.logits(&toks)[6]).0 > 1e-3);
}

/// The same weights as a llama2.c file — written here with the test's own rotate_half →
/// interleaved-pairs permutation — give exactly the logits of the Hugging Face folder.
#[test]
fn llama2c_file_of_the_same_weights_gives_identical_logits() {
    let d = tempfile::tempdir().unwrap();
    let spec = Spec::llama(16, 4, 2);
    let m = Model::random(&spec, 11, "float32");
    m.write(d.path(), "float32", 1);
    let (dim, hd, l) = (spec.dim, spec.head_dim, spec.layers);
    let mut b: Vec<u8> = Vec::new();
    let vocab = -(spec.vocab as i32); // untied
    for v in [
        dim as i32,
        spec.hidden as i32,
        l as i32,
        spec.heads as i32,
        spec.kv_heads as i32,
        vocab,
        64,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let mut put = |xs: &[f64]| {
        for &x in xs {
            b.extend_from_slice(&(x as f32).to_le_bytes());
        }
    };
    // Per head: llama2.c row 2j is HF row j, row 2j+1 is HF row j + hd/2.
    let pairs = |w: &[f64]| -> Vec<f64> {
        let rows = w.len() / dim;
        let mut out = vec![0.0; w.len()];
        for r in 0..rows {
            let (h, j) = (r / hd, r % hd);
            let src = if j % 2 == 0 {
                h * hd + j / 2
            } else {
                h * hd + j / 2 + hd / 2
            };
            out[r * dim..(r + 1) * dim].copy_from_slice(&w[src * dim..(src + 1) * dim]);
        }
        out
    };
    let name = |i: usize, n: &str| format!("model.layers.{i}.{n}.weight");
    put(m.w("model.embed_tokens.weight"));
    for i in 0..l {
        put(m.w(&name(i, "input_layernorm")));
    }
    for i in 0..l {
        put(&pairs(m.w(&name(i, "self_attn.q_proj"))));
    }
    for i in 0..l {
        put(&pairs(m.w(&name(i, "self_attn.k_proj"))));
    }
    for (n, _) in [("self_attn.v_proj", 0), ("self_attn.o_proj", 0)] {
        for i in 0..l {
            put(m.w(&name(i, n)));
        }
    }
    for i in 0..l {
        put(m.w(&name(i, "post_attention_layernorm")));
    }
    for n in ["mlp.gate_proj", "mlp.down_proj", "mlp.up_proj"] {
        for i in 0..l {
            put(m.w(&name(i, n)));
        }
    }
    put(m.w("model.norm.weight"));
    put(&vec![0.0; 64 * hd]); // freq_cis tables (unused)
    put(m.w("lm_head.weight"));
    let bin = d.path().join("same.bin");
    std::fs::write(&bin, &b).unwrap();

    let a = hf::load(d.path()).unwrap();
    let c = anetrain::model::llama2c::Model::load(&bin).unwrap().params;
    assert_eq!(a.data, c.data, "same arena");
    let toks = tokens(&spec, 8, 12);
    let (mut ta, mut tc) = (Transformer::new(&a), Transformer::new(&c));
    for (pos, &t) in toks.iter().enumerate() {
        assert_eq!(
            ta.forward(t, pos).to_vec(),
            tc.forward(t, pos).to_vec(),
            "position {pos}"
        );
    }
}

/// Read and written back in each dtype: every tensor byte-identical to the original file.
#[test]
fn hf_to_hf_round_trip_is_tensor_for_tensor_identical() {
    for (dtype, shards) in [("bfloat16", 1), ("float16", 2), ("float32", 1)] {
        for arch in ["LlamaForCausalLM", "Qwen3ForCausalLM"] {
            let d = tempfile::tempdir().unwrap();
            let spec = Spec {
                arch,
                head_dim: 6,
                ..Spec::llama(16, 4, 2)
            };
            let m = Model::random(&spec, 21, dtype);
            let src = d.path().join("src");
            m.write(&src, dtype, shards);
            std::fs::write(src.join("tokenizer.json"), "{}").unwrap();
            let p = hf::load(&src).unwrap();
            let out = d.path().join("out");
            let copied = hf::save(&out, &p, hf::default_dtype(p.config())).unwrap();
            assert_eq!(copied, vec!["tokenizer.json".to_string()]);
            let read = |dir: &std::path::Path| -> std::collections::BTreeMap<String, (Vec<usize>, String, Vec<u8>)> {
                let mut all = std::collections::BTreeMap::new();
                for e in std::fs::read_dir(dir).unwrap() {
                    let path = e.unwrap().path();
                    if path.extension().is_some_and(|x| x == "safetensors") {
                        let bytes = std::fs::read(&path).unwrap();
                        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                        for (n, v) in st.tensors() {
                            all.insert(n, (v.shape().to_vec(), format!("{:?}", v.dtype()), v.data().to_vec()));
                        }
                    }
                }
                all
            };
            let (a, b) = (read(&src), read(&out));
            assert_eq!(a.len(), b.len(), "{arch} {dtype}");
            for (n, x) in &a {
                assert!(
                    b[n] == *x,
                    "{arch} {dtype}: tensor {n} differs after the round trip"
                );
            }
            let cj: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                    .unwrap();
            assert_eq!(cj["architectures"][0], arch);
            assert_eq!(cj["torch_dtype"], dtype);
            assert_eq!(hf::load(&out).unwrap().data, p.data);
        }
    }
}

/// The Neural Engine backends place a Qwen3 model's fwd_attn on the CPU by design, say so in
/// `placement()` with the reason (not as a refusal), and compute it exactly as the cpu
/// backend does; the other kernels stay on the (simulated) Neural Engine.
#[test]
fn qwen3_fwd_attn_is_placed_on_the_cpu_by_the_neural_engine_backends() {
    use anetrain::ane::backend::{AneKernels, QK_NORM_ON_CPU};
    use anetrain::ane::chip::Profile;
    use anetrain::ane::sim::SimDevice;
    use anetrain::ane::Pipeline;
    use anetrain::kernels::cpu::CpuKernels;
    use anetrain::kernels::{AttnFwd, AttnWeights, Checked, Kernels, Pass};

    let d = tempfile::tempdir().unwrap();
    let spec = Spec {
        arch: "Qwen3ForCausalLM",
        head_dim: 6,
        ..Spec::llama(16, 4, 2)
    };
    Model::random(&spec, 11, "float32").write(d.path(), "float32", 1);
    let p = hf::load(d.path()).unwrap();
    let c = p.config().clone();
    let (batch, seq) = (1, 8);
    let ks = anetrain::kernels::Spec::new(&c, batch, seq);
    let dd = ks.dims;
    let (n, dim, qd, kvd) = (dd.n(), dd.dim, dd.q_dim(), dd.kv_dim());
    let mut r = Rng::new(12);
    let x: Vec<f32> = (0..dim * n).map(|_| r.next() as f32).collect();
    let fwd = |k: &mut dyn Kernels| -> Vec<f32> {
        let mut o: Vec<Vec<f32>> = [dim * n, qd * n, kvd * n, kvd * n, qd * n, dim * n]
            .iter()
            .map(|&l| vec![f32::NAN; l])
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
        Checked::new(k)
            .fwd_attn(1, &x, &AttnWeights::of(&p, 1), out)
            .unwrap();
        o.concat()
    };
    let want = fwd(&mut CpuKernels::new(ks.clone()));
    for pipeline in [Pipeline::Static, Pipeline::Dynamic] {
        let prof = Profile::conservative();
        let dev = Box::new(SimDevice::with_profile(prof.clone()));
        let mut ane = AneKernels::build(dev, &c, batch, seq, pipeline, &prof, false).unwrap();
        let place = ane.placement();
        for (kernel, at) in &place {
            if *kernel == "fwd_attn" {
                assert_eq!(*at, format!("cpu ({QK_NORM_ON_CPU})"), "{pipeline}");
            } else {
                assert_eq!(at, "ane-sim", "{pipeline}: {kernel}");
            }
        }
        ane.prepare(1, Pass::Training).unwrap();
        assert_eq!(
            fwd(&mut ane),
            want,
            "{pipeline}: fwd_attn = the cpu kernel's"
        );
        assert!(ane.take_fallbacks().is_empty(), "{pipeline}: not a refusal");
        assert!(Kernels::stats(&ane).on_cpu.is_empty(), "{pipeline}");
    }
}
