//! llama2.c model files.
//!
//! Legacy (version 0) export, as read by llama2.c's `run.c`:
//! ```text
//! i32 × 7   dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//!           (vocab_size < 0 ⇒ untied classifier of |vocab_size| rows)
//! f32 …     token_embedding [V,D], rms_att [L,D], wq [L,QD,D], wk [L,KVD,D], wv [L,KVD,D],
//!           wo [L,D,QD], rms_ffn [L,D], w1 [L,H,D], w2 [L,D,H], w3 [L,H,D], rms_final [D],
//!           freq_cis_real [seq_len, HD/2], freq_cis_imag [seq_len, HD/2] (unused by run.c),
//!           wcls [V,D] only when untied
//! ```
//! Version 1 (`export.py --version 1`): a 256-byte header — u32 magic `0x616b3432` ("ak42"),
//! i32 version = 1, the same seven i32 (vocab positive), u8 shared_classifier, zero padding —
//! then rms_att ×L, rms_ffn ×L, rms_final, token_embedding, wq ×L, wk ×L, wv ×L, wo ×L,
//! w1 ×L, w2 ×L, w3 ×L, and wcls when not shared. No RoPE tables.
//!
//! Reading keeps the legacy RoPE tables verbatim so that read-then-write is byte-identical;
//! a model created here gets tables computed as `export.py` does.

use super::params::LayerTensor;
use super::{Config, Params};
use anyhow::{bail, Context, Result};
use std::path::Path;

const V1_MAGIC: u32 = 0x616b_3432;
const V1_HEADER: usize = 256;

/// Which llama2.c export format a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Legacy,
    V1,
}

/// A llama2.c model: parameters plus what the file carried beyond them.
#[derive(Clone, Debug)]
pub struct Model {
    pub params: Params,
    pub format: Format,
    /// The legacy file's two RoPE tables (`2·seq_len·HD/2` f32), kept to round-trip exactly.
    pub rope_tables: Option<Vec<f32>>,
}

fn read_i32s(bytes: &[u8], n: usize) -> Vec<i32> {
    (0..n)
        .map(|i| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()))
        .collect()
}

/// Validates the seven header fields and builds a config; errors say which field is wrong.
fn config_from_header(h: &[i32], tied_from_sign: bool, shared: bool) -> Result<Config> {
    let names = [
        "dim",
        "hidden_dim",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "vocab_size",
        "seq_len",
    ];
    for (i, (&v, name)) in h.iter().zip(names).enumerate() {
        if v == 0 || (v < 0 && !(i == 5 && tied_from_sign)) {
            bail!("header field {name} = {v} is not a positive size");
        }
    }
    let (dim, n_heads) = (h[0] as usize, h[3] as usize);
    if dim % n_heads != 0 {
        bail!("header: dim {dim} is not a multiple of n_heads {n_heads}");
    }
    let mut c = Config::llama(
        dim,
        h[1] as usize,
        h[2] as usize,
        n_heads,
        h[4] as usize,
        h[5].unsigned_abs() as usize,
        h[6] as usize,
    );
    c.tied = if tied_from_sign { h[5] > 0 } else { shared };
    c.validate().context("header describes an invalid model")?;
    Ok(c)
}

/// RoPE tables as llama2.c's `precompute_freqs_cis`: cos then sin, `[seq_len, HD/2]` each.
pub fn rope_tables(c: &Config) -> Vec<f32> {
    let half = c.head_dim / 2;
    let mut cos = Vec::with_capacity(c.seq_len * half);
    let mut sin = Vec::with_capacity(c.seq_len * half);
    for t in 0..c.seq_len {
        for i in 0..half {
            let freq = 1.0f32 / c.rope_theta.powf((2 * i) as f32 / c.head_dim as f32);
            let a = t as f32 * freq;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    cos.extend(sin);
    cos
}

fn copy_f32(dst: &mut [f32], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes(s.try_into().unwrap());
    }
}

/// The arena ranges in version-1 file order.
fn v1_order(p: &Params) -> Vec<std::ops::Range<usize>> {
    use LayerTensor::*;
    let lay = &p.layout;
    let mut v = vec![
        lay.stacked(AttentionNorm),
        lay.stacked(FfnNorm),
        lay.norm.clone(),
        lay.tok_embeddings.clone(),
    ];
    for t in [Wq, Wk, Wv, Wo, W1, W2, W3] {
        v.push(lay.stacked(t));
    }
    if !p.config().tied {
        v.push(lay.output.clone());
    }
    v
}

impl Model {
    /// Wraps parameters for export (legacy format, computed RoPE tables).
    pub fn from_params(params: Params) -> Model {
        Model {
            params,
            format: Format::Legacy,
            rope_tables: None,
        }
    }

    pub fn config(&self) -> &Config {
        self.params.config()
    }

    /// Reads a legacy or version-1 file. Every size is checked against the file length
    /// before anything is allocated.
    pub fn load(path: &Path) -> Result<Model> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("{}: cannot read model file", path.display()))?;
        Model::parse(&bytes)
            .with_context(|| format!("{}: not a valid llama2.c model file", path.display()))
    }

    /// Parses a model from bytes (see [`Model::load`]).
    pub fn parse(bytes: &[u8]) -> Result<Model> {
        if bytes.len() < 28 {
            bail!(
                "file is {} bytes, shorter than the 28-byte header",
                bytes.len()
            );
        }
        let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
        if magic == V1_MAGIC {
            return Model::parse_v1(bytes);
        }
        let h = read_i32s(bytes, 7);
        let c = config_from_header(&h, true, false)?;
        let n_rope = c.seq_len * c.head_dim; // two tables of seq_len·HD/2
        let expected = 28 + 4 * (c.num_params() + n_rope);
        if bytes.len() != expected {
            bail!(
                "size {} bytes does not match the header ({}; dim {}, layers {}, vocab {}, seq_len {}, {} classifier), which needs {} bytes",
                bytes.len(),
                if bytes.len() < expected { "truncated" } else { "trailing data" },
                c.dim,
                c.n_layers,
                c.vocab_size,
                c.seq_len,
                if c.tied { "tied" } else { "untied" },
                expected
            );
        }
        let mut params = Params::zeros(&c);
        let body = &bytes[28..];
        let split = 4 * params.layout.norm.end;
        copy_f32(&mut params.data[..params.layout.norm.end], &body[..split]);
        let mut rope = vec![0f32; n_rope];
        copy_f32(&mut rope, &body[split..split + 4 * n_rope]);
        if !c.tied {
            let r = params.layout.output.clone();
            copy_f32(&mut params.data[r], &body[split + 4 * n_rope..]);
        }
        Ok(Model {
            params,
            format: Format::Legacy,
            rope_tables: Some(rope),
        })
    }

    fn parse_v1(bytes: &[u8]) -> Result<Model> {
        if bytes.len() < V1_HEADER {
            bail!(
                "version-1 file is {} bytes, shorter than its 256-byte header",
                bytes.len()
            );
        }
        let version = i32::from_le_bytes(bytes[4..8].try_into().unwrap());
        if version != 1 {
            bail!("unsupported llama2.c export version {version} (only 0 and 1 are fp32)");
        }
        let h = read_i32s(&bytes[8..], 7);
        let shared = match bytes[36] {
            0 => false,
            1 => true,
            b => bail!("shared_classifier flag is {b}, expected 0 or 1"),
        };
        let c = config_from_header(&h, false, shared)?;
        let expected = V1_HEADER + 4 * c.num_params();
        if bytes.len() != expected {
            bail!(
                "size {} bytes does not match the version-1 header, which needs {} bytes",
                bytes.len(),
                expected
            );
        }
        let mut params = Params::zeros(&c);
        let mut off = V1_HEADER;
        for r in v1_order(&params) {
            let n = r.len();
            copy_f32(&mut params.data[r], &bytes[off..off + 4 * n]);
            off += 4 * n;
        }
        Ok(Model {
            params,
            format: Format::V1,
            rope_tables: None,
        })
    }

    /// Serialises in `format`.
    pub fn to_bytes(&self, format: Format) -> Vec<u8> {
        let c = self.config();
        let p = &self.params;
        let mut out = Vec::with_capacity(V1_HEADER + 4 * (p.data.len() + c.seq_len * c.head_dim));
        let put = |out: &mut Vec<u8>, xs: &[f32]| {
            for x in xs {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
        let vocab = c.vocab_size as i32;
        let header = [
            c.dim as i32,
            c.hidden_dim as i32,
            c.n_layers as i32,
            c.n_heads as i32,
            c.n_kv_heads as i32,
            if format == Format::Legacy && !c.tied {
                -vocab
            } else {
                vocab
            },
            c.seq_len as i32,
        ];
        match format {
            Format::Legacy => {
                for v in header {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                put(&mut out, &p.data[..p.layout.norm.end]);
                let computed;
                let rope = match &self.rope_tables {
                    Some(r) if r.len() == c.seq_len * c.head_dim => r,
                    _ => {
                        computed = rope_tables(c);
                        &computed
                    }
                };
                put(&mut out, rope);
                if !c.tied {
                    put(&mut out, p.output());
                }
            }
            Format::V1 => {
                out.extend_from_slice(&V1_MAGIC.to_le_bytes());
                out.extend_from_slice(&1i32.to_le_bytes());
                for v in header {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.push(c.tied as u8);
                out.resize(V1_HEADER, 0);
                for r in v1_order(p) {
                    put(&mut out, &p.data[r]);
                }
            }
        }
        out
    }

    /// Writes atomically: a temporary file in the same folder, fsync, rename.
    pub fn save(&self, path: &Path, format: Format) -> Result<()> {
        crate::util::fs::write_atomic(path, |w| w.write_all(&self.to_bytes(format)))
            .with_context(|| format!("{}: cannot write model file", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(tied: bool, kv: usize) -> Params {
        let mut c = Config::llama(16, 40, 2, 4, kv, 33, 8);
        c.tied = tied;
        Params::init_random(&c, 7)
    }

    #[test]
    fn round_trips_both_formats_tied_untied_gqa() {
        for tied in [true, false] {
            for kv in [4, 2] {
                let m = Model::from_params(tiny(tied, kv));
                for f in [Format::Legacy, Format::V1] {
                    let b = m.to_bytes(f);
                    let back = Model::parse(&b).unwrap();
                    assert_eq!(back.format, f);
                    assert_eq!(back.config(), m.config());
                    assert_eq!(back.params.data, m.params.data);
                    assert_eq!(back.to_bytes(f), b, "byte-identical rewrite");
                }
            }
        }
    }

    #[test]
    fn rejects_malformed_headers_without_allocating() {
        let m = Model::from_params(tiny(true, 2));
        let good = m.to_bytes(Format::Legacy);
        // Truncated.
        let e = format!("{:#}", Model::parse(&good[..good.len() - 4]).unwrap_err());
        assert!(e.contains("truncated"), "{e}");
        // Negative dim.
        let mut b = good.clone();
        b[0..4].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(format!("{:#}", Model::parse(&b).unwrap_err()).contains("dim"));
        // Absurd layer count: must fail on validation, not allocate.
        let mut b = good.clone();
        b[8..12].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(Model::parse(&b).is_err());
        // Absurd vocab that overflows nothing but does not match the size.
        let mut b = good.clone();
        b[20..24].copy_from_slice(&4_000_000i32.to_le_bytes());
        assert!(Model::parse(&b).is_err());
        assert!(Model::parse(&good[..10]).is_err());
        // Version 1 with a bad flag.
        let mut v1 = m.to_bytes(Format::V1);
        v1[36] = 7;
        assert!(format!("{:#}", Model::parse(&v1).unwrap_err()).contains("shared_classifier"));
    }
}
