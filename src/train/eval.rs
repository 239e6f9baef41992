//! One-shot uses of the step outside training: the mean loss of a model over a token file
//! (`anetrain eval`), and the gradient of one window (`anetrain grad`, for comparison with a
//! PyTorch autograd run).

use super::sampler::Sampler;
use super::settings::Sampling;
use super::step::Workspace;
use super::timing::Timings;
use crate::data::TokenData;
use crate::kernels::cpu::CpuKernels;
use crate::kernels::{Kernels, Spec};
use crate::model::Params;
use crate::util::rng::Rng;
use anyhow::{bail, Context, Result};

/// Mean loss over `batches` consecutive windows from the start of `data` (deterministic).
/// `k` and `ws` must be built for `batch × seq` (the step says so otherwise).
pub fn evaluate(
    k: &mut dyn Kernels,
    ws: &mut Workspace,
    params: &Params,
    data: &TokenData,
    batch: usize,
    seq: usize,
    batches: usize,
) -> Result<f32> {
    evaluate_with(k, ws, params, data, batch, seq, batches, &mut |_| {})
}

/// [`evaluate`], calling `on_batch(batches done)` after each batch.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with(
    k: &mut dyn Kernels,
    ws: &mut Workspace,
    params: &Params,
    data: &TokenData,
    batch: usize,
    seq: usize,
    batches: usize,
    on_batch: &mut dyn FnMut(usize),
) -> Result<f32> {
    let mut s = Sampler {
        rng: Rng::new(1),
        cursor: 0,
        mode: Sampling::Sequential,
    };
    let mut inputs = vec![0u32; batch * seq];
    let mut targets = vec![0u32; batch * seq];
    let mut t = Timings::default();
    let n = batches.max(1);
    let mut sum = 0f64;
    for i in 0..n {
        s.fill(data, seq, &mut inputs, &mut targets);
        sum += ws.forward_loss(k, params, &inputs, &targets, &mut t)? as f64;
        on_batch(i + 1);
    }
    Ok((sum / n as f64) as f32)
}

/// Mean loss of `params` on the `cpu` backend over `batches` batches of consecutive windows
/// from the start of `data` (default and at most: every whole batch the file holds). Returns
/// the loss and the number of windows.
pub fn eval_file(
    params: &Params,
    data: &TokenData,
    batch: usize,
    seq: usize,
    batches: Option<usize>,
) -> Result<(f32, usize)> {
    eval_file_with(params, data, batch, seq, batches, &mut |_, _| {})
}

/// The batches [`eval_file`] evaluates of `data`: `batches`, at most every whole batch the
/// data holds (at least 1).
pub fn eval_batches(data: &TokenData, batch: usize, seq: usize, batches: Option<usize>) -> usize {
    let max = (data.len().saturating_sub(1) / (batch * seq)).max(1);
    batches.unwrap_or(max).min(max)
}

/// [`eval_file`], calling `on_batch(done, total)` after each batch (for a progress bar).
pub fn eval_file_with(
    params: &Params,
    data: &TokenData,
    batch: usize,
    seq: usize,
    batches: Option<usize>,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<(f32, usize)> {
    let c = params.config();
    data.validate(seq, c.vocab_size)?;
    let batches = eval_batches(data, batch, seq, batches);
    let mut ws = Workspace::new(c, batch, seq);
    let loss = evaluate_with(
        &mut CpuKernels::new(Spec::new(c, batch, seq)),
        &mut ws,
        params,
        data,
        batch,
        seq,
        batches,
        &mut |done| on_batch(done, batches),
    )?;
    Ok((loss, batches * batch))
}

/// The gradients (fp32, `cpu` backend, loss scale 1) of the mean loss of the window whose
/// inputs are `tokens[offset..offset+seq]` and targets one token later; and that loss.
pub fn window_gradients(
    params: &Params,
    data: &TokenData,
    offset: usize,
    seq: usize,
) -> Result<(Params, f32)> {
    let c = params.config();
    let toks = data.ids();
    let end = offset.checked_add(seq + 1).context("window overflows")?;
    if end > toks.len() {
        bail!(
            "{}: window {offset}..{end} needs {end} tokens but the file has {}",
            data.path.display(),
            toks.len()
        );
    }
    if seq > c.seq_len {
        bail!("--seq {seq} exceeds the model's seq_len {}", c.seq_len);
    }
    let win = toks.slice(offset..end).to_vec();
    if let Some((i, &t)) = win
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= c.vocab_size)
    {
        bail!(
            "{}: token {t} at offset {} is not below the vocabulary size {}",
            data.path.display(),
            offset + i,
            c.vocab_size
        );
    }
    let inputs: Vec<u32> = win[..seq].to_vec();
    let targets: Vec<u32> = win[1..].to_vec();
    let mut ws = Workspace::new(c, 1, seq);
    let mut grads = Params::zeros(c);
    let mut t = Timings::default();
    let loss = ws.forward_backward(
        &mut CpuKernels::new(Spec::new(c, 1, seq)),
        params,
        &mut grads,
        &inputs,
        &targets,
        1.0,
        &mut t,
    )?;
    Ok((grads, loss))
}
