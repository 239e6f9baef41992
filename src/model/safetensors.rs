//! Writing a parameter-shaped arena (parameters or gradients) as a safetensors file: every
//! tensor f32 under its llama2.c PyTorch name and shape, with string metadata — the format
//! PyTorch and the `safetensors` libraries read, so `anetrain grad` can be compared with a
//! PyTorch autograd run tensor by tensor.

use super::Params;
use anyhow::{Context, Result};

/// Writes every tensor of `p` as f32 safetensors (atomically), with `meta` as the header's
/// metadata.
pub fn write(path: &std::path::Path, p: &Params, meta: &[(&str, String)]) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let tensors = p.layout.tensors();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| {
            p.data[t.range.clone()]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(bytes.iter())
        .map(|(t, b)| {
            Ok((
                t.name.clone(),
                TensorView::new(Dtype::F32, t.shape.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    let meta: std::collections::HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let out = safetensors::serialize(views, &Some(meta))?;
    crate::util::fs::write_atomic(path, |w| w.write_all(&out))
        .with_context(|| format!("{}: cannot write", path.display()))
}
