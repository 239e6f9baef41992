//! Hugging Face model folders: `config.json` plus `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), architectures `LlamaForCausalLM` and `Qwen3ForCausalLM`.
//!
//! Reading: the config is mapped to [`Config`]; every field that would change the math and
//! is not supported (attention or MLP bias, a sliding window, another activation, a RoPE
//! scaling other than `llama3`, quantization, dropout) is refused by name. Every tensor is
//! checked (present, shape, dtype bf16/f16/f32) against the config before the arena is
//! allocated, then widened straight from the memory-mapped file into it.
//!
//! RoPE: transformers rotates the two halves of each head (`rotate_half`: channel `j` pairs
//! with `j + hd/2`), llama2.c (and every kernel here) interleaved pairs `(2j, 2j+1)`. Both use
//! frequency `j` for pair `j`, so permuting the rows of `q_proj` and `k_proj` per head —
//! arena row `2j` = HF row `j`, arena row `2j+1` = HF row `j + hd/2` — gives the same
//! attention scores (q·k is invariant under the same permutation of q and k; v and o are
//! untouched). The q/k norm gains (Qwen3) are permuted the same way, since RMSNorm over a
//! head commutes with a permutation of its channels. Writing applies the inverse, so a
//! folder read and written back is tensor-for-tensor identical in its own dtype.

pub use super::config::HfOrigin;
use super::config::RopeScaling;
use super::params::LayerTensor;
use super::{Config, Params};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The architectures read and written.
pub const ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "Qwen3ForCausalLM"];

/// Sequence length used for buffers when `max_position_embeddings` is larger (RoPE tables,
/// generation's KV cache); training windows are chosen with `--seq` anyway.
pub const MAX_SEQ_LEN: usize = 4096;

/// Files beside the weights that describe the tokenizer and generation; copied on export.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
];

/// Whether `dir` looks like a Hugging Face model folder (has a `config.json`).
pub fn is_model_dir(dir: &Path) -> bool {
    dir.is_dir() && dir.join("config.json").is_file()
}

fn field<'a>(j: &'a Value, name: &str) -> Option<&'a Value> {
    j.get(name).filter(|v| !v.is_null())
}

fn usize_field(j: &Value, name: &str) -> Result<Option<usize>> {
    match field(j, name) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n as usize)),
            None => bail!("field {name} = {v} is not a non-negative integer"),
        },
    }
}

fn need_usize(j: &Value, name: &str) -> Result<usize> {
    usize_field(j, name)?.with_context(|| format!("field {name} is missing"))
}

fn f32_field(j: &Value, name: &str) -> Result<Option<f32>> {
    match field(j, name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x as f32)),
            _ => bail!("field {name} = {v} is not a finite number"),
        },
    }
}

fn token_id(j: &Value, name: &str) -> Result<Option<u32>> {
    let v = match field(j, name) {
        None => return Ok(None),
        Some(Value::Array(a)) => match a.first() {
            None => return Ok(None),
            Some(v) => v.clone(),
        },
        Some(v) => v.clone(),
    };
    match v.as_u64() {
        Some(n) if n <= u32::MAX as u64 => Ok(Some(n as u32)),
        _ => bail!("field {name} = {v} is not a token id"),
    }
}

/// The RoPE settings: `rope_theta` and `rope_scaling` (transformers 4) or `rope_parameters`
/// (transformers 5). Returns θ and the llama3 scaling if any.
fn rope_settings(j: &Value) -> Result<(f32, Option<RopeScaling>)> {
    let params = field(j, "rope_parameters");
    let scaling = field(j, "rope_scaling").or(params);
    let theta = match f32_field(j, "rope_theta")? {
        Some(t) => t,
        None => match params {
            Some(p) => f32_field(p, "rope_theta")
                .context("rope_parameters")?
                .unwrap_or(10000.0),
            None => 10000.0,
        },
    };
    if theta.is_nan() || theta <= 1.0 {
        bail!("field rope_theta = {theta} must be above 1");
    }
    let Some(s) = scaling else {
        return Ok((theta, None));
    };
    let what = if field(j, "rope_scaling").is_some() {
        "rope_scaling"
    } else {
        "rope_parameters"
    };
    let ty = field(s, "rope_type")
        .or_else(|| field(s, "type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    match ty {
        "default" => Ok((theta, None)),
        "llama3" => {
            let get = |k: &str| -> Result<f32> {
                f32_field(s, k)
                    .context(what)?
                    .with_context(|| format!("{what}: llama3 scaling needs {k}"))
            };
            let r = RopeScaling {
                factor: get("factor")?,
                low_freq_factor: get("low_freq_factor")?,
                high_freq_factor: get("high_freq_factor")?,
                original_max_position_embeddings: usize_field(
                    s,
                    "original_max_position_embeddings",
                )
                .context(what)?
                .with_context(|| {
                    format!("{what}: llama3 scaling needs original_max_position_embeddings")
                })?,
            };
            if !(r.factor >= 1.0
                && r.low_freq_factor > 0.0
                && r.high_freq_factor > r.low_freq_factor
                && r.original_max_position_embeddings > 0)
            {
                bail!("{what}: llama3 parameters out of range: {r:?}");
            }
            Ok((theta, Some(r)))
        }
        other => {
            bail!("{what}.rope_type = \"{other}\" is not supported (only none/default and llama3)")
        }
    }
}

/// Maps a parsed `config.json` to a [`Config`] and the model's origin. Fields that change
/// the math and are not supported are refused by name.
pub fn config_from_json(j: &Value, dir: &Path) -> Result<Config> {
    let arch = match field(j, "architectures") {
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap().to_string()
        }
        Some(v) => bail!("field architectures = {v}: expected one of {ARCHITECTURES:?}"),
        None => match field(j, "model_type").and_then(|v| v.as_str()) {
            Some("llama") => "LlamaForCausalLM".into(),
            Some("qwen3") => "Qwen3ForCausalLM".into(),
            Some(t) => bail!(
                "field model_type = \"{t}\" (and no architectures): supported are llama and qwen3"
            ),
            None => bail!("neither architectures nor model_type is given"),
        },
    };
    let qwen3 = match arch.as_str() {
        "LlamaForCausalLM" => false,
        "Qwen3ForCausalLM" => true,
        other => bail!(
            "field architectures = \"{other}\" is not supported (supported: {})",
            ARCHITECTURES.join(", ")
        ),
    };
    // Fields that change the math: refused unless they hold the value computed here.
    for name in ["attention_bias", "mlp_bias"] {
        if field(j, name).and_then(|v| v.as_bool()) == Some(true) {
            bail!("field {name} = true: biases in the projections are not supported");
        }
    }
    if let Some(act) = field(j, "hidden_act").or_else(|| field(j, "hidden_activation")) {
        if act.as_str() != Some("silu") {
            bail!("field hidden_act = {act} is not supported (only \"silu\", SwiGLU)");
        }
    }
    if field(j, "use_sliding_window").and_then(|v| v.as_bool()) == Some(true) {
        bail!("field use_sliding_window = true: sliding-window attention is not supported");
    }
    if !qwen3 && field(j, "sliding_window").is_some() {
        bail!("field sliding_window is set: sliding-window attention is not supported");
    }
    if let Some(Value::Array(types)) = field(j, "layer_types") {
        if let Some(t) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
            bail!("field layer_types holds {t}: only full_attention layers are supported");
        }
    }
    for name in ["attention_dropout", "hidden_dropout", "mlp_dropout"] {
        if let Some(p) = f32_field(j, name)? {
            if p != 0.0 {
                bail!("field {name} = {p}: dropout is not supported (0 only)");
            }
        }
    }
    if field(j, "quantization_config").is_some() {
        bail!("field quantization_config is set: quantized weights are not supported");
    }
    let dim = need_usize(j, "hidden_size")?;
    let n_heads = need_usize(j, "num_attention_heads")?;
    if n_heads == 0 {
        bail!("field num_attention_heads = 0");
    }
    let n_kv_heads = usize_field(j, "num_key_value_heads")?.unwrap_or(n_heads);
    // transformers: Qwen3Config's head_dim defaults to 128, Llama's to hidden/heads.
    let head_dim = match usize_field(j, "head_dim")? {
        Some(h) => h,
        None if qwen3 => 128,
        None => dim / n_heads,
    };
    let (rope_theta, rope_scaling) = rope_settings(j)?;
    let max_pos = usize_field(j, "max_position_embeddings")?.unwrap_or(2048);
    let c = Config {
        dim,
        hidden_dim: need_usize(j, "intermediate_size")?,
        n_layers: need_usize(j, "num_hidden_layers")?,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size: need_usize(j, "vocab_size")?,
        seq_len: max_pos.clamp(1, MAX_SEQ_LEN),
        tied: field(j, "tie_word_embeddings")
            .map(|v| {
                v.as_bool()
                    .context("field tie_word_embeddings is not a boolean")
            })
            .transpose()?
            .unwrap_or(false),
        norm_eps: f32_field(j, "rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta,
        rope_scaling,
        qk_norm: qwen3,
        hf: Some(Box::new(HfOrigin {
            architecture: arch,
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
            config: j.clone(),
            bos: token_id(j, "bos_token_id")?,
            eos: token_id(j, "eos_token_id")?,
            dtype: field(j, "torch_dtype")
                .or_else(|| field(j, "dtype"))
                .and_then(|v| v.as_str())
                .unwrap_or("float32")
                .to_string(),
        })),
    };
    if c.norm_eps.is_nan() || c.norm_eps <= 0.0 {
        bail!("field rms_norm_eps = {} must be positive", c.norm_eps);
    }
    c.validate()
        .context("the config describes an invalid model")?;
    Ok(c)
}

/// Reads `DIR/config.json` as a [`Config`] (reads no weights).
pub fn read_config(dir: &Path) -> Result<Config> {
    let p = dir.join("config.json");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    let j: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))?;
    if !j.is_object() {
        bail!("{}: not a JSON object", p.display());
    }
    config_from_json(&j, dir).with_context(|| format!("{}", p.display()))
}

/// How an arena tensor relates to its Hugging Face tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// Same element order.
    Same,
    /// Rows permuted per head of `head_dim` rows (q_proj, k_proj; rotate_half ↔ pairs).
    HeadPairs,
    /// A `[head_dim]` gain permuted like one head's rows (q_norm, k_norm).
    GainPairs,
}

/// One tensor of a Hugging Face model and where it lives in the arena.
#[derive(Clone, Debug)]
pub struct HfTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
    pub rows: Rows,
}

/// Every tensor of the Hugging Face form of `c`, in transformers' parameter order.
pub fn tensors(c: &Config) -> Vec<HfTensor> {
    let lay = super::Layout::new(c);
    let (d, v) = (c.dim, c.vocab_size);
    let mut out = vec![HfTensor {
        name: "model.embed_tokens.weight".into(),
        shape: vec![v, d],
        range: lay.tok_embeddings.clone(),
        rows: Rows::Same,
    }];
    use LayerTensor::*;
    for l in 0..c.n_layers {
        let layer = |name: &str, t: LayerTensor, rows: Rows| {
            let [r, k] = t.shape(c);
            HfTensor {
                name: format!("model.layers.{l}.{name}.weight"),
                shape: if r == 1 { vec![k] } else { vec![r, k] },
                range: lay.layer(l, t),
                rows,
            }
        };
        out.push(layer("self_attn.q_proj", Wq, Rows::HeadPairs));
        out.push(layer("self_attn.k_proj", Wk, Rows::HeadPairs));
        out.push(layer("self_attn.v_proj", Wv, Rows::Same));
        out.push(layer("self_attn.o_proj", Wo, Rows::Same));
        if c.qk_norm {
            for (name, r) in [
                ("self_attn.q_norm", lay.q_norm_layer(l)),
                ("self_attn.k_norm", lay.k_norm_layer(l)),
            ] {
                out.push(HfTensor {
                    name: format!("model.layers.{l}.{name}.weight"),
                    shape: vec![c.head_dim],
                    range: r,
                    rows: Rows::GainPairs,
                });
            }
        }
        out.push(layer("mlp.gate_proj", W1, Rows::Same));
        out.push(layer("mlp.up_proj", W3, Rows::Same));
        out.push(layer("mlp.down_proj", W2, Rows::Same));
        out.push(layer("input_layernorm", AttentionNorm, Rows::Same));
        out.push(layer("post_attention_layernorm", FfnNorm, Rows::Same));
    }
    out.push(HfTensor {
        name: "model.norm.weight".into(),
        shape: vec![d],
        range: lay.norm.clone(),
        rows: Rows::Same,
    });
    if !c.tied {
        out.push(HfTensor {
            name: "lm_head.weight".into(),
            shape: vec![v, d],
            range: lay.output.clone(),
            rows: Rows::Same,
        });
    }
    out
}

/// The arena element that holds HF element `i` of a tensor of `cols` columns.
#[inline]
fn arena_index(i: usize, rows: Rows, hd: usize, cols: usize) -> usize {
    let perm = |r: usize| {
        // HF row r of a head: j (first half) -> 2j, j + hd/2 -> 2j + 1.
        let (h, j) = (r / hd, r % hd);
        let half = hd / 2;
        h * hd + if j < half { 2 * j } else { 2 * (j - half) + 1 }
    };
    match rows {
        Rows::Same => i,
        Rows::HeadPairs => perm(i / cols) * cols + i % cols,
        Rows::GainPairs => perm(i),
    }
}

fn cols(shape: &[usize]) -> usize {
    if shape.len() == 2 {
        shape[1]
    } else {
        1
    }
}

/// Copies an HF-ordered f32 tensor into its arena place (applying the row permutation).
pub fn put_hf(dst: &mut [f32], src: impl Iterator<Item = f32>, t: &HfTensor, hd: usize) {
    let c = cols(&t.shape);
    let arena = &mut dst[t.range.clone()];
    for (i, x) in src.enumerate() {
        arena[arena_index(i, t.rows, hd, c)] = x;
    }
}

/// The HF-ordered elements of one tensor of the arena `data`.
pub fn get_hf<'a>(data: &'a [f32], t: &'a HfTensor, hd: usize) -> impl Iterator<Item = f32> + 'a {
    let c = cols(&t.shape);
    let arena = &data[t.range.clone()];
    (0..t.range.len()).map(move |i| arena[arena_index(i, t.rows, hd, c)])
}

/// A memory-mapped safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let f = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: read-only map of a file we do not write; a concurrent truncation by another
        // process is outside what we can defend against.
        let map = unsafe { memmap2::Mmap::map(&f) }
            .with_context(|| format!("{}: cannot memory-map", path.display()))?;
        // Parse once here so that a truncated or corrupt file fails with its name.
        safetensors::SafeTensors::deserialize(&map).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a valid safetensors file ({e:?}; truncated or corrupt?)",
                path.display()
            )
        })?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
        })
    }
    fn tensors(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.map).expect("checked in open")
    }
}

/// The safetensors files of a folder: the single file, or the shards of the index.
fn open_shards(dir: &Path) -> Result<(Vec<Shard>, BTreeMap<String, usize>)> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let mut shards = Vec::new();
    let mut by_name = BTreeMap::new();
    if single.is_file() {
        let s = Shard::open(&single)?;
        for n in s.tensors().names() {
            by_name.insert(n.to_string(), 0);
        }
        shards.push(s);
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("{}: cannot read", index.display()))?;
        let j: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = field(&j, "weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: no weight_map object", index.display()))?;
        let mut files: BTreeMap<String, usize> = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().with_context(|| {
                format!("{}: weight_map[{name}] is not a file name", index.display())
            })?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                bail!(
                    "{}: weight_map[{name}] = \"{file}\" is not a file in the folder",
                    index.display()
                );
            }
            let k = match files.get(file) {
                Some(&k) => k,
                None => {
                    let p = dir.join(file);
                    if !p.is_file() {
                        bail!(
                            "{}: shard {file} (holding {name}) does not exist",
                            index.display()
                        );
                    }
                    shards.push(Shard::open(&p)?);
                    files.insert(file.to_string(), shards.len() - 1);
                    shards.len() - 1
                }
            };
            by_name.insert(name.clone(), k);
        }
    } else {
        bail!(
            "{}: neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        );
    }
    Ok((shards, by_name))
}

fn dtype_name(d: safetensors::Dtype) -> &'static str {
    use safetensors::Dtype::*;
    match d {
        BF16 => "bfloat16",
        F16 => "float16",
        F32 => "float32",
        _ => "other",
    }
}

/// Reads a Hugging Face model folder: config, then every tensor checked, then widened into a
/// freshly allocated arena (the only copy of the weights held).
pub fn load(dir: &Path) -> Result<Params> {
    let mut c = read_config(dir)?;
    let (shards, by_name) = open_shards(dir)?;
    let want = tensors(&c);
    // Check every tensor first: nothing is allocated from a size the files have not agreed to.
    let mut dtypes = std::collections::BTreeSet::new();
    for t in &want {
        let k = match by_name.get(&t.name) {
            Some(&k) => k,
            None => bail!(
                "{}: tensor {} is missing (the config {} says {})",
                dir.display(),
                t.name,
                dir.join("config.json").display(),
                if t.name == "lm_head.weight" {
                    "tie_word_embeddings is false".to_string()
                } else {
                    format!("shape {:?}", t.shape)
                }
            ),
        };
        let s = &shards[k];
        let view = s
            .tensors()
            .tensor(&t.name)
            .map_err(|e| anyhow::anyhow!("{}: tensor {}: {e:?}", s.path.display(), t.name))?;
        if view.shape() != t.shape.as_slice() {
            bail!(
                "{}: tensor {} has shape {:?}, but config.json implies {:?}",
                s.path.display(),
                t.name,
                view.shape(),
                t.shape
            );
        }
        match view.dtype() {
            safetensors::Dtype::BF16 | safetensors::Dtype::F16 | safetensors::Dtype::F32 => {
                dtypes.insert(dtype_name(view.dtype()));
            }
            d => bail!(
                "{}: tensor {} has dtype {d:?}; only BF16, F16 and F32 are read",
                s.path.display(),
                t.name
            ),
        }
    }
    if let Some(o) = c.hf.as_mut() {
        if dtypes.len() == 1 {
            o.dtype = dtypes.iter().next().unwrap().to_string();
        }
    }
    let need = 4 * c.num_params() as u64;
    if let Some(avail) = crate::util::mem::available_memory_bytes() {
        if need > avail {
            bail!(
                "{}: the model's {:.2}M parameters need {:.2} GiB as f32, but only {:.2} GiB of \
                 memory is available",
                dir.display(),
                c.num_params() as f64 / 1e6,
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            );
        }
    }
    let mut p = Params::zeros(&c);
    let hd = c.head_dim;
    for t in &want {
        let s = &shards[by_name[&t.name]];
        let st = s.tensors();
        let view = st.tensor(&t.name).expect("checked above");
        let b = view.data();
        match view.dtype() {
            safetensors::Dtype::BF16 => put_hf(
                &mut p.data,
                b.chunks_exact(2)
                    .map(|x| half::bf16::from_le_bytes([x[0], x[1]]).to_f32()),
                t,
                hd,
            ),
            safetensors::Dtype::F16 => put_hf(
                &mut p.data,
                b.chunks_exact(2)
                    .map(|x| half::f16::from_le_bytes([x[0], x[1]]).to_f32()),
                t,
                hd,
            ),
            _ => put_hf(
                &mut p.data,
                b.chunks_exact(4)
                    .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]])),
                t,
                hd,
            ),
        }
    }
    Ok(p)
}

/// Element type of an exported folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    Bf16,
    F16,
    F32,
}

impl Dtype {
    /// transformers' name (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::Bf16 => "bfloat16",
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
        }
    }
    fn st_name(self) -> &'static str {
        match self {
            Dtype::Bf16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::F32 => "F32",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
    /// The dtype transformers calls `name`, if it is one of the three.
    pub fn from_torch(name: &str) -> Option<Dtype> {
        match name {
            "bfloat16" => Some(Dtype::Bf16),
            "float16" => Some(Dtype::F16),
            "float32" => Some(Dtype::F32),
            _ => None,
        }
    }
    fn put(self, out: &mut Vec<u8>, x: f32) {
        match self {
            Dtype::Bf16 => out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
            Dtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
}

/// The `config.json` of `c`: the original one for a model read from a folder (its shape
/// fields checked against `c`, the dtype set), else a `LlamaForCausalLM` config written from
/// the shape (a llama2.c model).
pub fn config_json(c: &Config, dtype: Dtype) -> Result<Value> {
    let mut j = match &c.hf {
        Some(o) => o.config.clone(),
        None => {
            if c.qk_norm {
                bail!("a model with q/k norms needs its Hugging Face origin to be exported");
            }
            let mut j = serde_json::json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_act": "silu",
                "attention_bias": false,
                "mlp_bias": false,
                "attention_dropout": 0.0,
                "initializer_range": 0.02,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pretraining_tp": 1,
                "use_cache": true,
                "rope_scaling": null,
            });
            j["max_position_embeddings"] = c.seq_len.into();
            j
        }
    };
    let o = j.as_object_mut().context("config.json is not an object")?;
    o.insert("hidden_size".into(), c.dim.into());
    o.insert("intermediate_size".into(), c.hidden_dim.into());
    o.insert("num_hidden_layers".into(), c.n_layers.into());
    o.insert("num_attention_heads".into(), c.n_heads.into());
    o.insert("num_key_value_heads".into(), c.n_kv_heads.into());
    o.insert("head_dim".into(), c.head_dim.into());
    o.insert("vocab_size".into(), c.vocab_size.into());
    o.insert("tie_word_embeddings".into(), c.tied.into());
    if c.hf.is_none() {
        o.insert("rms_norm_eps".into(), serde_json::json!(c.norm_eps as f64));
        o.insert("rope_theta".into(), serde_json::json!(c.rope_theta as f64));
    }
    let key = if o.contains_key("dtype") && !o.contains_key("torch_dtype") {
        "dtype"
    } else {
        "torch_dtype"
    };
    o.insert(key.into(), dtype.torch_name().into());
    // The written config must read back as the same model.
    let back = config_from_json(&j, Path::new("."))?;
    let same = |a: &Config, b: &Config| {
        (
            a.dim,
            a.hidden_dim,
            a.n_layers,
            a.n_heads,
            a.n_kv_heads,
            a.head_dim,
        ) == (
            b.dim,
            b.hidden_dim,
            b.n_layers,
            b.n_heads,
            b.n_kv_heads,
            b.head_dim,
        ) && (a.vocab_size, a.tied, a.qk_norm) == (b.vocab_size, b.tied, b.qk_norm)
            && a.rope_scaling == b.rope_scaling
            && a.rope_theta == b.rope_theta
            && a.norm_eps == b.norm_eps
    };
    if !same(&back, c) {
        bail!("internal: the written config.json would not describe the same model");
    }
    Ok(j)
}

/// The dtype an export defaults to: the one the model was read in, else f32.
pub fn default_dtype(c: &Config) -> Dtype {
    c.hf.as_ref()
        .and_then(|o| Dtype::from_torch(&o.dtype))
        .unwrap_or(Dtype::F32)
}

/// Writes `tensors` (HF names, shapes and order) from `data` as one safetensors file,
/// streaming tensor by tensor (atomically: temporary sibling, fsync, rename).
pub fn write_safetensors(
    path: &Path,
    c: &Config,
    data: &[f32],
    list: &[HfTensor],
    dtype: Dtype,
    meta: &[(&str, String)],
) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut md = serde_json::Map::new();
    md.insert("format".into(), "pt".into());
    for (k, v) in meta {
        md.insert(k.to_string(), v.clone().into());
    }
    header.insert("__metadata__".into(), Value::Object(md));
    let mut off = 0usize;
    for t in list {
        let n = t.range.len() * dtype.size();
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": dtype.st_name(),
                "shape": t.shape,
                "data_offsets": [off, off + n],
            }),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))?;
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    crate::util::fs::write_atomic(path, |w| {
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        let mut buf = Vec::with_capacity(1 << 20);
        for t in list {
            buf.clear();
            for x in get_hf(data, t, c.head_dim) {
                dtype.put(&mut buf, x);
                if buf.len() >= 1 << 20 {
                    w.write_all(&buf)?;
                    buf.clear();
                }
            }
            w.write_all(&buf)?;
        }
        Ok(())
    })
    .with_context(|| format!("{}: cannot write", path.display()))
}

/// Writes `p` as a Hugging Face model folder: `config.json`, `model.safetensors` in `dtype`
/// and, when the model came from a folder, its tokenizer and generation files. Returns the
/// files copied.
pub fn save(dir: &Path, p: &Params, dtype: Dtype) -> Result<Vec<String>> {
    let c = p.config();
    let j = config_json(c, dtype)?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    write_safetensors(
        &dir.join("model.safetensors"),
        c,
        &p.data,
        &tensors(c),
        dtype,
        &[],
    )?;
    let cfg = dir.join("config.json");
    let text = serde_json::to_string_pretty(&j)? + "\n";
    crate::util::fs::write_atomic(&cfg, |w| w.write_all(text.as_bytes()))
        .with_context(|| format!("{}: cannot write", cfg.display()))?;
    // A stale index beside a single file would make readers pick the shards.
    let stale = dir.join("model.safetensors.index.json");
    if stale.exists() {
        std::fs::remove_file(&stale)
            .with_context(|| format!("{}: cannot remove the stale index", stale.display()))?;
    }
    let mut copied = Vec::new();
    if let Some(o) = &c.hf {
        let same = std::fs::canonicalize(&o.dir).ok() == std::fs::canonicalize(dir).ok();
        for f in TOKENIZER_FILES {
            let src = o.dir.join(f);
            if src.is_file() && !same {
                std::fs::copy(&src, dir.join(f)).with_context(|| {
                    format!("{}: cannot copy to {}", src.display(), dir.display())
                })?;
                copied.push(f.to_string());
            }
        }
    }
    Ok(copied)
}

/// Gradients (or any parameter-shaped arena) under transformers' names, shapes and row
/// order, as f32 safetensors: directly comparable with `param.grad` there.
pub fn write_grads(path: &Path, g: &Params, meta: &[(&str, String)]) -> Result<()> {
    let c = g.config();
    write_safetensors(path, c, &g.data, &tensors(c), Dtype::F32, meta)
}

/// The tokenizer file of a model folder, if it has one.
pub fn tokenizer_path(dir: &Path) -> Option<PathBuf> {
    let p = dir.join("tokenizer.json");
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_bijection_and_pairs_halves() {
        let hd = 8;
        let mut seen = [false; 16];
        for i in 0..16 {
            let a = arena_index(i, Rows::GainPairs, hd, 1);
            assert!(!seen[a]);
            seen[a] = true;
        }
        // HF row 1 (first half) -> arena 2; HF row 5 (= 1 + hd/2) -> arena 3.
        assert_eq!(arena_index(1, Rows::GainPairs, hd, 1), 2);
        assert_eq!(arena_index(5, Rows::GainPairs, hd, 1), 3);
        assert_eq!(arena_index(8 + 5, Rows::GainPairs, hd, 1), 11);
        assert_eq!(arena_index(5 * 3 + 2, Rows::HeadPairs, hd, 3), 3 * 3 + 2);
    }

    #[test]
    fn llama3_rope_scaling_matches_the_formula() {
        let mut c = Config::llama(64, 128, 1, 1, 1, 10, 16);
        c.rope_theta = 500000.0;
        c.rope_scaling = Some(RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let f = c.rope_inv_freq();
        // Written out independently in f64: high frequencies kept, low ones / factor.
        for (j, &got) in f.iter().enumerate() {
            let base = 1.0 / 500000f64.powf(2.0 * j as f64 / 64.0);
            let wl = 2.0 * std::f64::consts::PI / base;
            let want = if wl < 8192.0 / 4.0 {
                base
            } else if wl > 8192.0 {
                base / 32.0
            } else {
                let s = (8192.0 / wl - 1.0) / 3.0;
                (1.0 - s) * base / 32.0 + s * base
            };
            assert!(
                ((got as f64) - want).abs() <= 1e-5 * want,
                "{j}: {got} {want}"
            );
        }
    }
}
