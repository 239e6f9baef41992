//! Model configuration: the Llama-2 shape (dims, heads, vocabulary), the named presets of the
//! llama2.c "stories" family, and custom configs read from a small TOML or JSON file.
//!
//! `head_dim` is explicit because some shapes (Qwen3) use `n_heads·head_dim ≠ dim`; llama2.c
//! files always have `head_dim = dim / n_heads`.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The shape of a Llama-2-architecture model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Maximum sequence length (the RoPE table's length and llama2.c's `seq_len`).
    pub seq_len: usize,
    /// Classifier shares the token embedding (llama2.c: positive vocab_size in the header).
    #[serde(default = "default_true")]
    pub tied: bool,
    #[serde(default = "default_eps")]
    pub norm_eps: f32,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    /// RoPE frequency scaling (Llama 3's `rope_scaling`); none for llama2.c models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Per-head RMSNorm of q and k after projection, before RoPE (Qwen3's `q_norm`,
    /// `k_norm`, gains `[head_dim]` per layer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// The Hugging Face folder the model came from, when it did: architecture, the original
    /// `config.json` and token ids, so that an export writes the same architecture back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf: Option<Box<HfOrigin>>,
}

/// What a model read from a Hugging Face folder remembers of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HfOrigin {
    /// `LlamaForCausalLM` or `Qwen3ForCausalLM`.
    pub architecture: String,
    /// The folder it was read from (absolute when it could be made so).
    pub dir: std::path::PathBuf,
    /// The original `config.json`, written back (with the dtype updated) on export.
    pub config: serde_json::Value,
    /// `bos_token_id`, `eos_token_id` (the first when the config lists several).
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// The dtype of the weights read (`bfloat16`, `float16`, `float32`).
    pub dtype: String,
}

/// Llama 3's RoPE frequency scaling (transformers' `rope_type: "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

fn default_true() -> bool {
    true
}
fn default_eps() -> f32 {
    1e-5
}
fn default_theta() -> f32 {
    10000.0
}

/// A custom config file may leave `head_dim`, `n_kv_heads` and the rest to defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    dim: usize,
    hidden_dim: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    seq_len: usize,
    tied: Option<bool>,
    norm_eps: Option<f32>,
    rope_theta: Option<f32>,
}

/// Names of the built-in presets, for help texts and errors.
pub const PRESETS: &[&str] = &[
    "stories260k",
    "stories15m",
    "stories42m",
    "stories110m",
    "qwen3-0.6b-shape",
];

impl Config {
    /// A llama2.c-style config (`head_dim = dim / n_heads`, tied classifier).
    pub fn llama(
        dim: usize,
        hidden_dim: usize,
        n_layers: usize,
        n_heads: usize,
        n_kv_heads: usize,
        vocab_size: usize,
        seq_len: usize,
    ) -> Config {
        Config {
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim: dim / n_heads.max(1),
            vocab_size,
            seq_len,
            tied: true,
            norm_eps: default_eps(),
            rope_theta: default_theta(),
            rope_scaling: None,
            qk_norm: false,
            hf: None,
        }
    }

    /// RoPE inverse frequencies `[head_dim/2]`: `θ^(-2j/hd)`, adjusted as transformers'
    /// `_compute_llama3_parameters` does when [`Config::rope_scaling`] is set (low
    /// frequencies divided by `factor`, high ones kept, a smooth blend between).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let hd = self.head_dim;
        let base: Vec<f32> = (0..hd / 2)
            .map(|j| 1.0f32 / self.rope_theta.powf((2 * j) as f32 / hd as f32))
            .collect();
        let Some(s) = self.rope_scaling else {
            return base;
        };
        let old = s.original_max_position_embeddings as f32;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }

    /// A built-in preset by name (case-insensitive).
    pub fn preset(name: &str) -> Option<Config> {
        let c = match name.to_ascii_lowercase().as_str() {
            "stories260k" => Config::llama(64, 172, 5, 8, 4, 512, 512),
            "stories15m" => Config::llama(288, 768, 6, 6, 6, 32000, 256),
            "stories42m" => Config::llama(512, 1376, 8, 8, 8, 32000, 1024),
            "stories110m" => Config::llama(768, 2048, 12, 12, 12, 32000, 1024),
            "qwen3-0.6b-shape" => Config {
                head_dim: 128,
                rope_theta: 1_000_000.0,
                norm_eps: 1e-6,
                ..Config::llama(1024, 3072, 28, 16, 8, 151936, 4096)
            },
            _ => return None,
        };
        Some(c)
    }

    /// Reads a custom config from a `.toml` or `.json` file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config file", path.display()))?;
        let is_json = path.extension().is_some_and(|e| e == "json");
        let f: ConfigFile = if is_json {
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a valid JSON model config", path.display()))?
        } else {
            toml::from_str(&text)
                .with_context(|| format!("{}: not a valid TOML model config", path.display()))?
        };
        let n_heads = f.n_heads;
        let c = Config {
            dim: f.dim,
            hidden_dim: f.hidden_dim,
            n_layers: f.n_layers,
            n_heads,
            n_kv_heads: f.n_kv_heads.unwrap_or(n_heads),
            head_dim: f
                .head_dim
                .unwrap_or(f.dim.checked_div(n_heads).unwrap_or(0)),
            vocab_size: f.vocab_size,
            seq_len: f.seq_len,
            tied: f.tied.unwrap_or(true),
            norm_eps: f.norm_eps.unwrap_or(default_eps()),
            rope_theta: f.rope_theta.unwrap_or(default_theta()),
            rope_scaling: None,
            qk_norm: false,
            hf: None,
        };
        c.validate()
            .with_context(|| format!("{}: invalid model config", path.display()))?;
        Ok(c)
    }

    /// Checks the invariants every other module relies on. Sizes are bounded so that a
    /// corrupt header can never make us allocate absurd amounts of memory.
    pub fn validate(&self) -> Result<()> {
        let pos = [
            ("dim", self.dim),
            ("hidden_dim", self.hidden_dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
        ];
        for (name, v) in pos {
            if v == 0 {
                bail!("{name} must be positive");
            }
        }
        if self.dim > 65536 || self.hidden_dim > 262144 || self.head_dim > 4096 {
            bail!(
                "implausible size (dim {}, hidden_dim {}, head_dim {})",
                self.dim,
                self.hidden_dim,
                self.head_dim
            );
        }
        if self.n_layers > 1024 || self.n_heads > 1024 || self.seq_len > 1 << 20 {
            bail!(
                "implausible size (n_layers {}, n_heads {}, seq_len {})",
                self.n_layers,
                self.n_heads,
                self.seq_len
            );
        }
        if self.vocab_size > 1 << 22 {
            bail!("implausible vocab_size {}", self.vocab_size);
        }
        if self.n_kv_heads > self.n_heads || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.n_heads,
                self.n_kv_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("head_dim ({}) must be even for RoPE", self.head_dim);
        }
        if self.num_params() > 64_000_000_000 {
            bail!("implausible parameter count {}", self.num_params());
        }
        Ok(())
    }

    /// Query channels `n_heads · head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    /// Key/value channels `n_kv_heads · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// Query heads per kv head (1 for MHA).
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Parameters of one transformer layer (with the q/k norm gains when there are).
    pub fn layer_params(&self) -> usize {
        let (d, h) = (self.dim, self.hidden_dim);
        let qk = if self.qk_norm { 2 * self.head_dim } else { 0 };
        2 * d + d * self.q_dim() * 2 + 2 * d * self.kv_dim() + 3 * d * h + qk
    }
    /// Transformer parameters: all layers plus the final norm.
    pub fn transformer_params(&self) -> usize {
        self.n_layers * self.layer_params() + self.dim
    }
    /// Embedding parameters (plus the classifier when untied).
    pub fn embedding_params(&self) -> usize {
        let e = self.vocab_size * self.dim;
        if self.tied {
            e
        } else {
            2 * e
        }
    }
    pub fn num_params(&self) -> usize {
        self.transformer_params() + self.embedding_params()
    }
}

/// FLOPs of one training step over `batch` sequences of `seq` tokens (multiply-add = 2).
///
/// With N = batch·seq tokens:
/// - forward linears `F = 2·N·L·(D·QD + 2·D·KVD + QD·D + 3·D·H)`;
/// - backward-dx and backward-dW each `F` again;
/// - attention (dense, the masked half counted as the hardware computes it):
///   forward `4·B·S²·QD·L` (QᵀK and P·V), backward `8·B·S²·QD·L` (dP, dV, dQ, dK);
/// - classifier forward `2·N·D·V`, backward `4·N·D·V` (dx and dW).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct StepFlops {
    pub forward: f64,
    pub backward_dx: f64,
    pub backward_dw: f64,
    pub attention: f64,
    pub classifier: f64,
}

impl StepFlops {
    pub fn new(c: &Config, batch: usize, seq: usize) -> StepFlops {
        let n = (batch * seq) as f64;
        let (d, h, qd, kvd) = (
            c.dim as f64,
            c.hidden_dim as f64,
            c.q_dim() as f64,
            c.kv_dim() as f64,
        );
        let l = c.n_layers as f64;
        let lin = 2.0 * n * l * (d * qd + 2.0 * d * kvd + qd * d + 3.0 * d * h);
        let s = seq as f64;
        StepFlops {
            forward: lin,
            backward_dx: lin,
            backward_dw: lin,
            attention: 12.0 * batch as f64 * s * s * qd * l,
            classifier: 6.0 * n * d * c.vocab_size as f64,
        }
    }
    pub fn total(&self) -> f64 {
        self.forward + self.backward_dx + self.backward_dw + self.attention + self.classifier
    }
}

/// Bytes a training run keeps resident: parameters, gradients and AdamW m, v in f32
/// (16 B/param) plus the activations the backward pass needs.
///
/// Activations kept per token per layer (f32): x, xn, q, k, v, attn, x2, x2n (`4D + 2QD + 2KVD`
/// counting q/attn at QD and k/v at KVD), h1, h3, gate (`3H`); per layer the attention
/// probabilities `B·NH·S²`; plus logits-sized scratch for one sequence chunk (`S·V`); with
/// q/k norms, the pre-norm q, k and their gradients recomputed in the backward (`2QD + 2KVD`
/// per token, once).
pub fn training_memory_bytes(c: &Config, batch: usize, seq: usize) -> (u64, u64) {
    let params = 16 * c.num_params() as u64;
    let n = (batch * seq) as u64;
    let per_tok = (4 * c.dim + 2 * c.q_dim() + 2 * c.kv_dim() + 3 * c.hidden_dim) as u64;
    let probs = (batch * c.n_heads * seq * seq) as u64;
    let qk = if c.qk_norm {
        n * (2 * c.q_dim() + 2 * c.kv_dim()) as u64
    } else {
        0
    };
    let acts =
        4 * (c.n_layers as u64 * (n * per_tok + probs) + seq as u64 * c.vocab_size as u64 + qk);
    (params, acts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories110m_counts_match_llama2c() {
        let c = Config::preset("stories110m").unwrap();
        // 12·(4·768² + 3·768·2048 + 2·768) + 768 and 32000·768, computed by hand.
        assert_eq!(c.transformer_params(), 84_953_856);
        assert_eq!(c.embedding_params(), 24_576_000);
        assert_eq!(c.num_params(), 109_529_856);
    }

    #[test]
    fn stories110m_flops_per_sequence() {
        let c = Config::preset("stories110m").unwrap();
        let f = StepFlops::new(&c, 1, 256);
        // 6·N·(params without embedding) + classifier + attention ≈ 175.5 GFLOP.
        assert!(
            (f.total() / 1e9 - 175.46).abs() < 0.05,
            "{}",
            f.total() / 1e9
        );
    }

    #[test]
    fn config_file_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(
            &p,
            "dim=32\nhidden_dim=64\nn_layers=2\nn_heads=4\nn_kv_heads=2\nvocab_size=100\nseq_len=16\n",
        )
        .unwrap();
        let c = Config::from_file(&p).unwrap();
        assert_eq!((c.head_dim, c.kv_dim(), c.group()), (8, 16, 2));
        std::fs::write(&p, "dim=32\nhidden_dim=64\nn_layers=2\nn_heads=3\nn_kv_heads=2\nvocab_size=100\nseq_len=16\n").unwrap();
        let e = format!("{:#}", Config::from_file(&p).unwrap_err());
        assert!(e.contains("m.toml") && e.contains("multiple"), "{e}");
        assert!(super::super::source::ModelSource::resolve("nonsense").is_err());
    }
}
