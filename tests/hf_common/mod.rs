//! Hugging Face model folders written by the tests themselves (random weights, the
//! `safetensors` crate, bf16/f16/f32, optionally sharded), and an f64 reference of
//! transformers' LlamaForCausalLM / Qwen3ForCausalLM forward pass written from transformers'
//! definitions: RMSNorm `x·rsqrt(mean(x²)+ε)·w`, `rotate_half` RoPE on the HF-layout q/k rows
//! with `cos/sin(cat(freqs, freqs))`, `repeat_kv` GQA, causal softmax of `qkᵀ/√hd`, Qwen3's
//! per-head q/k RMSNorm before RoPE, SwiGLU `down(silu(gate)·up)`, mean cross-entropy.

#![allow(dead_code)]

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The shape of a test model and its config.json.
#[derive(Clone, Debug)]
pub struct Spec {
    pub arch: &'static str,
    pub dim: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub tied: bool,
    pub theta: f64,
    pub eps: f64,
    /// (factor, low, high, original max positions) of Llama 3's scaling.
    pub llama3: Option<(f64, f64, f64, usize)>,
}

impl Spec {
    pub fn llama(dim: usize, heads: usize, kv: usize) -> Spec {
        Spec {
            arch: "LlamaForCausalLM",
            dim,
            hidden: 24,
            layers: 2,
            heads,
            kv_heads: kv,
            head_dim: dim / heads,
            vocab: 32,
            tied: false,
            theta: 10000.0,
            eps: 1e-5,
            llama3: None,
        }
    }
    pub fn qwen3(&self) -> bool {
        self.arch == "Qwen3ForCausalLM"
    }

    pub fn config_json(&self, dtype: &str) -> Value {
        let mut j = json!({
            "architectures": [self.arch],
            "model_type": if self.qwen3() { "qwen3" } else { "llama" },
            "hidden_size": self.dim,
            "intermediate_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "max_position_embeddings": 64,
            "rms_norm_eps": self.eps,
            "rope_theta": self.theta,
            "tie_word_embeddings": self.tied,
            "hidden_act": "silu",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": dtype,
            "rope_scaling": null,
        });
        if !self.qwen3() {
            j["mlp_bias"] = json!(false);
        } else {
            j["use_sliding_window"] = json!(false);
            j["sliding_window"] = json!(null);
        }
        if let Some((f, lo, hi, old)) = self.llama3 {
            j["rope_scaling"] = json!({
                "rope_type": "llama3", "factor": f, "low_freq_factor": lo,
                "high_freq_factor": hi, "original_max_position_embeddings": old
            });
        }
        j
    }

    /// transformers' parameter names and shapes.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, h, qd, kvd) = (
            self.dim,
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        let mut v = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, d])];
        for l in 0..self.layers {
            let p = |n: &str| format!("model.layers.{l}.{n}.weight");
            v.push((p("self_attn.q_proj"), vec![qd, d]));
            v.push((p("self_attn.k_proj"), vec![kvd, d]));
            v.push((p("self_attn.v_proj"), vec![kvd, d]));
            v.push((p("self_attn.o_proj"), vec![d, qd]));
            if self.qwen3() {
                v.push((p("self_attn.q_norm"), vec![self.head_dim]));
                v.push((p("self_attn.k_norm"), vec![self.head_dim]));
            }
            v.push((p("mlp.gate_proj"), vec![h, d]));
            v.push((p("mlp.up_proj"), vec![h, d]));
            v.push((p("mlp.down_proj"), vec![d, h]));
            v.push((p("input_layernorm"), vec![d]));
            v.push((p("post_attention_layernorm"), vec![d]));
        }
        v.push(("model.norm.weight".into(), vec![d]));
        if !self.tied {
            v.push(("lm_head.weight".into(), vec![self.vocab, d]));
        }
        v
    }
}

/// xorshift64* in [-1, 1).
pub struct Rng(u64);
impl Rng {
    pub fn new(s: u64) -> Rng {
        Rng(s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// A model: tensors in transformers' layout, f64 (values exactly representable in `dtype`).
#[derive(Clone)]
pub struct Model {
    pub spec: Spec,
    pub t: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
}

pub fn round(x: f64, dtype: &str) -> f64 {
    match dtype {
        "bfloat16" => half::bf16::from_f64(x).to_f64(),
        "float16" => half::f16::from_f64(x).to_f64(),
        _ => x as f32 as f64,
    }
}

impl Model {
    pub fn random(spec: &Spec, seed: u64, dtype: &str) -> Model {
        let mut rng = Rng::new(seed);
        let mut t = BTreeMap::new();
        for (name, shape) in spec.tensor_shapes() {
            let n: usize = shape.iter().product();
            let norm = shape.len() == 1;
            let scale = if name.contains("embed") || name.contains("lm_head") {
                0.8
            } else {
                0.9 / (shape[shape.len() - 1] as f64).sqrt() * 2.0
            };
            let v: Vec<f64> = (0..n)
                .map(|_| {
                    let r = rng.next();
                    round(if norm { 1.0 + 0.3 * r } else { scale * r }, dtype)
                })
                .collect();
            t.insert(name, (shape, v));
        }
        Model {
            spec: spec.clone(),
            t,
        }
    }

    pub fn w(&self, name: &str) -> &[f64] {
        &self.t[name].1
    }

    /// Writes `dir/config.json` and the weights in `dtype` (`shards` > 1: an index and that
    /// many files).
    pub fn write(&self, dir: &Path, dtype: &str, shards: usize) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&self.spec.config_json(dtype)).unwrap(),
        )
        .unwrap();
        let (st, size) = match dtype {
            "bfloat16" => (Dtype::BF16, 2),
            "float16" => (Dtype::F16, 2),
            _ => (Dtype::F32, 4),
        };
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .t
            .iter()
            .map(|(n, (shape, v))| {
                let mut b = Vec::with_capacity(v.len() * size);
                for &x in v {
                    match dtype {
                        "bfloat16" => b.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
                        "float16" => b.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
                        _ => b.extend_from_slice(&(x as f32).to_le_bytes()),
                    }
                }
                (n.clone(), shape.clone(), b)
            })
            .collect();
        let meta = Some([("format".to_string(), "pt".to_string())].into());
        if shards <= 1 {
            let views: Vec<(String, TensorView)> = bytes
                .iter()
                .map(|(n, s, b)| (n.clone(), TensorView::new(st, s.clone(), b).unwrap()))
                .collect();
            safetensors::serialize_to_file(views, &meta, &dir.join("model.safetensors")).unwrap();
            return;
        }
        let mut map = serde_json::Map::new();
        for k in 0..shards {
            let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards);
            let views: Vec<(String, TensorView)> = bytes
                .iter()
                .enumerate()
                .filter(|(i, _)| i % shards == k)
                .map(|(_, (n, s, b))| {
                    map.insert(n.clone(), json!(file));
                    (n.clone(), TensorView::new(st, s.clone(), b).unwrap())
                })
                .collect();
            safetensors::serialize_to_file(views, &meta, &dir.join(&file)).unwrap();
        }
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::to_string(&json!({"metadata": {}, "weight_map": map})).unwrap(),
        )
        .unwrap();
    }

    /// RoPE inverse frequencies in f64 (Llama 3's adjustment as transformers writes it).
    pub fn inv_freq(&self) -> Vec<f64> {
        let s = &self.spec;
        let hd = s.head_dim;
        (0..hd / 2)
            .map(|j| {
                let f = 1.0 / s.theta.powf((2 * j) as f64 / hd as f64);
                match s.llama3 {
                    None => f,
                    Some((factor, lo, hi, old)) => {
                        let old = old as f64;
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < old / hi {
                            f
                        } else if wl > old / lo {
                            f / factor
                        } else {
                            let sm = (old / wl - lo) / (hi - lo);
                            (1.0 - sm) * f / factor + sm * f
                        }
                    }
                }
            })
            .collect()
    }

    /// Logits `[S][V]` for `tokens` (positions 0..S).
    pub fn logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let s = &self.spec;
        let (d, hd, nh, nkv) = (s.dim, s.head_dim, s.heads, s.kv_heads);
        let n = tokens.len();
        let emb = self.w("model.embed_tokens.weight");
        let mut x: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| emb[t as usize * d..(t as usize + 1) * d].to_vec())
            .collect();
        let inv = self.inv_freq();
        let rope = |v: &mut [f64], pos: usize| {
            // rotate_half: out = x·cos + cat(-x2, x1)·sin, cos/sin = cat(freqs, freqs).
            let h = hd / 2;
            let orig = v.to_vec();
            for j in 0..hd {
                let a = pos as f64 * inv[j % h];
                let rot = if j < h { -orig[j + h] } else { orig[j - h] };
                v[j] = orig[j] * a.cos() + rot * a.sin();
            }
        };
        for l in 0..s.layers {
            let p = |n: &str| format!("model.layers.{l}.{n}.weight");
            let xn: Vec<Vec<f64>> = x
                .iter()
                .map(|r| rmsnorm(r, self.w(&p("input_layernorm")), s.eps))
                .collect();
            let mut q: Vec<Vec<f64>> = xn
                .iter()
                .map(|r| matvec(self.w(&p("self_attn.q_proj")), r))
                .collect();
            let mut k: Vec<Vec<f64>> = xn
                .iter()
                .map(|r| matvec(self.w(&p("self_attn.k_proj")), r))
                .collect();
            let v: Vec<Vec<f64>> = xn
                .iter()
                .map(|r| matvec(self.w(&p("self_attn.v_proj")), r))
                .collect();
            for t in 0..n {
                for hh in 0..nh {
                    let qh = &mut q[t][hh * hd..(hh + 1) * hd];
                    if s.qwen3() {
                        let y = rmsnorm(qh, self.w(&p("self_attn.q_norm")), s.eps);
                        qh.copy_from_slice(&y);
                    }
                    rope(qh, t);
                }
                for hh in 0..nkv {
                    let kh = &mut k[t][hh * hd..(hh + 1) * hd];
                    if s.qwen3() {
                        let y = rmsnorm(kh, self.w(&p("self_attn.k_norm")), s.eps);
                        kh.copy_from_slice(&y);
                    }
                    rope(kh, t);
                }
            }
            let group = nh / nkv;
            for t in 0..n {
                let mut att = vec![0.0; nh * hd];
                for hh in 0..nh {
                    let kv = hh / group; // repeat_kv
                    let qh = &q[t][hh * hd..(hh + 1) * hd];
                    let sc: Vec<f64> = (0..=t)
                        .map(|u| {
                            let kh = &k[u][kv * hd..(kv + 1) * hd];
                            qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|z| (z - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (u, eu) in e.iter().enumerate() {
                        for j in 0..hd {
                            att[hh * hd + j] += eu / z * v[u][kv * hd + j];
                        }
                    }
                }
                let o = matvec(self.w(&p("self_attn.o_proj")), &att);
                for (a, b) in x[t].iter_mut().zip(o) {
                    *a += b;
                }
            }
            for r in x.iter_mut() {
                let xn = rmsnorm(r, self.w(&p("post_attention_layernorm")), s.eps);
                let g = matvec(self.w(&p("mlp.gate_proj")), &xn);
                let u = matvec(self.w(&p("mlp.up_proj")), &xn);
                let a: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let dn = matvec(self.w(&p("mlp.down_proj")), &a);
                for (a, b) in r.iter_mut().zip(dn) {
                    *a += b;
                }
            }
        }
        let head = if s.tied {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        x.iter()
            .map(|r| {
                matvec(
                    self.w(head),
                    &rmsnorm(r, self.w("model.norm.weight"), s.eps),
                )
            })
            .collect()
    }

    /// Mean cross-entropy of predicting `targets` from `inputs`.
    pub fn loss(&self, inputs: &[u32], targets: &[u32]) -> f64 {
        let lg = self.logits(inputs);
        let mut sum = 0.0;
        for (row, &t) in lg.iter().zip(targets) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            sum += lse - row[t as usize];
        }
        sum / inputs.len() as f64
    }

    /// Central finite differences of [`Model::loss`] for every parameter (f64, step 1e-5),
    /// in transformers' layout.
    pub fn fd_grads(&self, inputs: &[u32], targets: &[u32]) -> BTreeMap<String, Vec<f64>> {
        let mut out = BTreeMap::new();
        let mut m = self.clone();
        let h = 1e-5;
        let names: Vec<String> = self.t.keys().cloned().collect();
        for name in names {
            let n = self.t[&name].1.len();
            let mut g = vec![0.0; n];
            for (i, gi) in g.iter_mut().enumerate() {
                let x0 = self.t[&name].1[i];
                m.t.get_mut(&name).unwrap().1[i] = x0 + h;
                let lp = m.loss(inputs, targets);
                m.t.get_mut(&name).unwrap().1[i] = x0 - h;
                let lm = m.loss(inputs, targets);
                m.t.get_mut(&name).unwrap().1[i] = x0;
                *gi = (lp - lm) / (2.0 * h);
            }
            out.insert(name, g);
        }
        out
    }
}

pub fn rmsnorm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| w * (v * r)).collect()
}

pub fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

/// Max |a-b| over max |b| (and the max |b|).
pub fn rel_err(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    (diff / scale.max(1e-30), scale)
}

/// Runs the anetrain binary in `dir`; returns (status, stdout, stderr).
pub fn run(args: &[&str], dir: &Path) -> (i32, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args(args)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Writes flat uint16 token ids.
pub fn write_u16(path: &Path, ids: &[u32]) {
    let b: Vec<u8> = ids.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect();
    std::fs::write(path, b).unwrap();
}
