//! The parameter arena: one contiguous f32 buffer holding every parameter, in llama2.c's
//! file order, with named views into it. Gradients and the AdamW moments use the same layout,
//! so zeroing, clipping, the optimizer and checkpoint I/O are single passes over one slice.
//!
//! Order (llama2.c `memory_map_weights`): token embedding `[V,D]`, attention norms `[L,D]`,
//! wq `[L,QD,D]`, wk `[L,KVD,D]`, wv `[L,KVD,D]`, wo `[L,D,QD]`, ffn norms `[L,D]`,
//! w1 `[L,H,D]`, w2 `[L,D,H]`, w3 `[L,H,D]`, final norm `[D]`, then the classifier `[V,D]`
//! only when untied, then (models with q/k norms, Qwen3) the q norms `[L,HD]` and k norms
//! `[L,HD]`. Every weight is `W[out, in]` row-major.

use super::Config;
use std::ops::Range;

/// The kinds of tensor in a layer, in llama2.c order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum LayerTensor {
    AttentionNorm,
    Wq,
    Wk,
    Wv,
    Wo,
    FfnNorm,
    W1,
    W2,
    W3,
}

impl LayerTensor {
    pub const ALL: [LayerTensor; 9] = [
        LayerTensor::AttentionNorm,
        LayerTensor::Wq,
        LayerTensor::Wk,
        LayerTensor::Wv,
        LayerTensor::Wo,
        LayerTensor::FfnNorm,
        LayerTensor::W1,
        LayerTensor::W2,
        LayerTensor::W3,
    ];

    /// The PyTorch name of llama2.c's model, with `{i}` for the layer.
    pub fn name(self, layer: usize) -> String {
        let s = match self {
            LayerTensor::AttentionNorm => "attention_norm",
            LayerTensor::Wq => "attention.wq",
            LayerTensor::Wk => "attention.wk",
            LayerTensor::Wv => "attention.wv",
            LayerTensor::Wo => "attention.wo",
            LayerTensor::FfnNorm => "ffn_norm",
            LayerTensor::W1 => "feed_forward.w1",
            LayerTensor::W2 => "feed_forward.w2",
            LayerTensor::W3 => "feed_forward.w3",
        };
        format!("layers.{layer}.{s}.weight")
    }

    /// `[rows, cols]` of one layer's tensor (norms are `[D]`, reported as `[1, D]`).
    pub fn shape(self, c: &Config) -> [usize; 2] {
        let (d, h, qd, kvd) = (c.dim, c.hidden_dim, c.q_dim(), c.kv_dim());
        match self {
            LayerTensor::AttentionNorm | LayerTensor::FfnNorm => [1, d],
            LayerTensor::Wq => [qd, d],
            LayerTensor::Wk | LayerTensor::Wv => [kvd, d],
            LayerTensor::Wo => [d, qd],
            LayerTensor::W1 | LayerTensor::W3 => [h, d],
            LayerTensor::W2 => [d, h],
        }
    }
}

/// One named tensor of the arena.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

/// Offsets of every tensor in the arena.
#[derive(Clone, Debug)]
pub struct Layout {
    pub config: Config,
    pub tok_embeddings: Range<usize>,
    /// Base offset of each stacked layer tensor (index by `LayerTensor as usize`).
    bases: [usize; 9],
    pub norm: Range<usize>,
    /// The classifier: the embedding when tied.
    pub output: Range<usize>,
    /// Per-head q norm gains `[L, HD]` (empty without q/k norms).
    pub q_norm: Range<usize>,
    /// Per-head k norm gains `[L, HD]` (empty without q/k norms).
    pub k_norm: Range<usize>,
    pub total: usize,
}

impl Layout {
    pub fn new(c: &Config) -> Layout {
        let mut off = 0;
        let emb = c.vocab_size * c.dim;
        let tok_embeddings = 0..emb;
        off += emb;
        let mut bases = [0; 9];
        for (i, t) in LayerTensor::ALL.iter().enumerate() {
            bases[i] = off;
            let [r, k] = t.shape(c);
            off += c.n_layers * r * k;
        }
        let norm = off..off + c.dim;
        off += c.dim;
        let output = if c.tied {
            tok_embeddings.clone()
        } else {
            let r = off..off + emb;
            off += emb;
            r
        };
        let qk = if c.qk_norm {
            c.n_layers * c.head_dim
        } else {
            0
        };
        let q_norm = off..off + qk;
        off += qk;
        let k_norm = off..off + qk;
        off += qk;
        Layout {
            config: c.clone(),
            tok_embeddings,
            bases,
            norm,
            output,
            q_norm,
            k_norm,
            total: off,
        }
    }

    /// Layer `l`'s q norm gains `[HD]` (empty without q/k norms).
    pub fn q_norm_layer(&self, l: usize) -> Range<usize> {
        let hd = if self.config.qk_norm {
            self.config.head_dim
        } else {
            0
        };
        self.q_norm.start + l * hd..self.q_norm.start + (l + 1) * hd
    }

    /// Layer `l`'s k norm gains `[HD]` (empty without q/k norms).
    pub fn k_norm_layer(&self, l: usize) -> Range<usize> {
        let hd = if self.config.qk_norm {
            self.config.head_dim
        } else {
            0
        };
        self.k_norm.start + l * hd..self.k_norm.start + (l + 1) * hd
    }

    /// The range of one layer's tensor.
    pub fn layer(&self, layer: usize, t: LayerTensor) -> Range<usize> {
        let [r, k] = t.shape(&self.config);
        let n = r * k;
        let start = self.bases[t as usize] + layer * n;
        start..start + n
    }

    /// The range holding tensor `t` for all layers at once (as stored in llama2.c files).
    pub fn stacked(&self, t: LayerTensor) -> Range<usize> {
        let [r, k] = t.shape(&self.config);
        let start = self.bases[t as usize];
        start..start + self.config.n_layers * r * k
    }

    /// Every named tensor, in arena order (the classifier only when untied).
    pub fn tensors(&self) -> Vec<TensorInfo> {
        let c = &self.config;
        let mut v = vec![TensorInfo {
            name: "tok_embeddings.weight".into(),
            shape: vec![c.vocab_size, c.dim],
            range: self.tok_embeddings.clone(),
        }];
        for t in LayerTensor::ALL {
            for l in 0..c.n_layers {
                let [r, k] = t.shape(c);
                let shape = if r == 1 { vec![k] } else { vec![r, k] };
                v.push(TensorInfo {
                    name: t.name(l),
                    shape,
                    range: self.layer(l, t),
                });
            }
        }
        v.push(TensorInfo {
            name: "norm.weight".into(),
            shape: vec![c.dim],
            range: self.norm.clone(),
        });
        if !c.tied {
            v.push(TensorInfo {
                name: "output.weight".into(),
                shape: vec![c.vocab_size, c.dim],
                range: self.output.clone(),
            });
        }
        if c.qk_norm {
            for (what, f) in [
                (
                    "q_norm",
                    Layout::q_norm_layer as fn(&Layout, usize) -> Range<usize>,
                ),
                ("k_norm", Layout::k_norm_layer),
            ] {
                for l in 0..c.n_layers {
                    v.push(TensorInfo {
                        name: format!("layers.{l}.attention.{what}.weight"),
                        shape: vec![c.head_dim],
                        range: f(self, l),
                    });
                }
            }
        }
        v
    }

    /// Ranges of the RMSNorm gains (exempt from weight decay).
    pub fn is_norm(&self, idx: usize) -> bool {
        self.stacked(LayerTensor::AttentionNorm).contains(&idx)
            || self.stacked(LayerTensor::FfnNorm).contains(&idx)
            || self.norm.contains(&idx)
            || self.q_norm.contains(&idx)
            || self.k_norm.contains(&idx)
    }

    /// The ranges of all gain vectors (attention norms, ffn norms, final norm, and the q/k
    /// norms, empty when the model has none).
    pub fn norm_ranges(&self) -> [Range<usize>; 5] {
        [
            self.stacked(LayerTensor::AttentionNorm),
            self.stacked(LayerTensor::FfnNorm),
            self.norm.clone(),
            self.q_norm.clone(),
            self.k_norm.clone(),
        ]
    }

    /// Name of the tensor holding arena index `idx` (for diagnostics).
    pub fn name_of(&self, idx: usize) -> String {
        self.tensors()
            .into_iter()
            .find(|t| t.range.contains(&idx))
            .map(|t| t.name)
            .unwrap_or_else(|| format!("<offset {idx}>"))
    }
}

/// Parameters (or gradients, or optimizer moments) of a model: an arena plus its layout.
#[derive(Clone, Debug)]
pub struct Params {
    pub layout: Layout,
    pub data: Vec<f32>,
}

impl Params {
    pub fn zeros(c: &Config) -> Params {
        let layout = Layout::new(c);
        let data = vec![0.0; layout.total];
        Params { layout, data }
    }

    pub fn config(&self) -> &Config {
        &self.layout.config
    }

    pub fn layer(&self, l: usize, t: LayerTensor) -> &[f32] {
        &self.data[self.layout.layer(l, t)]
    }
    pub fn layer_mut(&mut self, l: usize, t: LayerTensor) -> &mut [f32] {
        let r = self.layout.layer(l, t);
        &mut self.data[r]
    }
    pub fn tok_embeddings(&self) -> &[f32] {
        &self.data[self.layout.tok_embeddings.clone()]
    }
    pub fn norm(&self) -> &[f32] {
        &self.data[self.layout.norm.clone()]
    }
    pub fn output(&self) -> &[f32] {
        &self.data[self.layout.output.clone()]
    }

    /// Random initialisation as in llama2.c's `model.py`: weights N(0, 0.02), the residual
    /// projections (wo, w2) N(0, 0.02/√(2L)), norms 1. Deterministic from `seed`.
    pub fn init_random(c: &Config, seed: u64) -> Params {
        let mut p = Params::zeros(c);
        let mut rng = crate::util::rng::Rng::new(seed);
        let std = 0.02f32;
        let resid_std = 0.02 / (2.0 * c.n_layers as f32).sqrt();
        let lay = p.layout.clone();
        for t in lay.tensors() {
            let s = if t.name.ends_with("attention.wo.weight")
                || t.name.ends_with("feed_forward.w2.weight")
            {
                resid_std
            } else {
                std
            };
            let slice = &mut p.data[t.range.clone()];
            if t.shape.len() == 1 {
                slice.fill(1.0);
            } else {
                for v in slice.iter_mut() {
                    *v = rng.normal() * s;
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_arena_without_gaps() {
        for name in super::super::config::PRESETS {
            let mut c = Config::preset(name).unwrap();
            for (tied, qk) in [(true, false), (false, false), (true, true), (false, true)] {
                c.qk_norm = qk;
                c.tied = tied;
                let lay = Layout::new(&c);
                let mut end = 0;
                for t in lay.tensors() {
                    assert_eq!(t.range.start, end, "{}", t.name);
                    assert_eq!(t.range.len(), t.shape.iter().product::<usize>());
                    end = t.range.end;
                }
                assert_eq!(end, lay.total);
                assert_eq!(lay.total, c.num_params());
            }
        }
    }
}
