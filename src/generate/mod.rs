//! CPU inference with a KV cache and llama2.c run.c-compatible sampling.
//!
//! The pieces mirror run.c's three parts, so that a model, prompt, seed and settings give the
//! tokens run.c gives:
//! - [`Transformer`]: the forward pass for one token at a time over a borrowed parameter
//!   arena ([`crate::model::Params`]), with the KV cache and every buffer allocated once;
//!   its matrix–vector products ([`matvec`]) are multi-threaded and SIMD;
//! - [`Sampler`]: greedy, multinomial and top-p sampling with run.c's generator and order;
//! - [`generate_ids`]: run.c's `generate` loop — feed the prompt (forcing its tokens), then
//!   sample; stop after `steps` positions (prompt included) or when BOS comes out.
//!
//! [`generate_text`] wraps that with the tokenizer for callers that want a story as a string
//! (the trainer's samples, the dashboard).

pub mod matvec;
pub mod sampler;
pub mod team;
pub mod transformer;

pub use sampler::Sampler;
pub use transformer::Transformer;

use crate::model::Params;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

/// The BOS token: starts every sequence and, when sampled, ends generation.
pub const BOS: u32 = 1;

/// Loads the parameters of a model to run: a llama2.c model file (legacy or version 1) or a
/// training checkpoint (`.ckpt`, verified before use).
pub fn load_model_params(spec: &Path) -> Result<Params> {
    crate::train::load_params(&crate::model::ModelSource::with_weights(spec), 0)
}

/// run.c's rule for the number of positions: 0, or more than the model's `seq_len`, means
/// `seq_len`.
pub fn clamp_steps(steps: usize, seq_len: usize) -> usize {
    if steps == 0 || steps > seq_len {
        seq_len
    } else {
        steps
    }
}

/// What a generation produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The sequence: the first prompt token, then every token that followed it (forced prompt
    /// tokens, then sampled ones), without the BOS that ends generation. One more than the
    /// number of positions run.
    pub tokens: Vec<u32>,
    /// Tokens per second as run.c reports it: positions after the first over the time since
    /// the first finished (0 when only one position ran).
    pub tokens_per_s: f64,
}

/// run.c's `generate` over token ids: positions `0..steps` (after [`clamp_steps`]); at each,
/// the next token is the next prompt token while the prompt lasts, else the sampler's pick;
/// a BOS pick (for a model from a Hugging Face folder: its EOS) ends generation. `on_token(prev, next)` sees every next token as it comes,
/// forced prompt tokens included (run.c prints those too), the final BOS excluded.
pub fn generate_ids(
    params: &Params,
    prompt: &[u32],
    steps: usize,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32, u32),
) -> Result<Generation> {
    let c = params.config();
    if prompt.is_empty() {
        bail!("the prompt has no tokens: it needs at least one (BOS = 1 to start a story)");
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= c.vocab_size) {
        bail!(
            "prompt token id {bad} is outside the model's vocabulary of {} tokens",
            c.vocab_size
        );
    }
    let steps = clamp_steps(steps, c.seq_len);
    // The token that ends generation: BOS for llama2.c models, the config's EOS for a
    // model from a Hugging Face folder.
    let stop = c.hf.as_ref().map_or(Some(BOS), |o| o.eos);
    let mut model = Transformer::new(params);
    let mut tokens = Vec::with_capacity(steps + 1);
    tokens.push(prompt[0]);
    let mut token = prompt[0];
    let mut start: Option<Instant> = None;
    let mut pos = 0;
    while pos < steps {
        let logits = model.forward(token, pos);
        let next = match prompt.get(pos + 1) {
            Some(&t) => t,
            None => sampler.sample(logits),
        };
        pos += 1;
        if Some(next) == stop {
            break;
        }
        on_token(token, next);
        tokens.push(next);
        token = next;
        start.get_or_insert_with(Instant::now);
    }
    let tokens_per_s = match start {
        Some(t0) if pos > 1 => (pos - 1) as f64 / t0.elapsed().as_secs_f64().max(1e-9),
        _ => 0.0,
    };
    Ok(Generation {
        tokens,
        tokens_per_s,
    })
}

/// run.c's `safe_printf` filter: a single-byte piece that is neither printable ASCII nor
/// whitespace (a control code, or a lone byte of a multi-byte character) prints as nothing.
pub fn printable_piece(piece: &[u8]) -> &[u8] {
    match piece {
        [b] if !(b.is_ascii_graphic() || *b == b' ' || b"\t\n\x0b\x0c\r".contains(b)) => &[],
        _ => piece,
    }
}

/// The tokenizer run.c would use with a model of `vocab_size` tokens. run.c reads exactly
/// that many pieces from the tokenizer file, so a larger vocabulary is cut to its first
/// `vocab_size` pieces (which changes what prompts encode to, as in run.c); a smaller one
/// cannot decode the model's ids and is an error.
pub fn fit_tokenizer(tok: &Tokenizer, vocab_size: usize) -> Result<Cow<'_, Tokenizer>> {
    let n = tok.vocab_size();
    if n == vocab_size {
        return Ok(Cow::Borrowed(tok));
    }
    if n < vocab_size {
        bail!(
            "the tokenizer has {n} pieces but the model's vocabulary has {vocab_size}: use the model's own tokenizer"
        );
    }
    let cut = Tokenizer::from_parts(
        tok.pieces[..vocab_size].to_vec(),
        tok.scores[..vocab_size].to_vec(),
    )
    .with_context(|| {
        format!("cannot use the first {vocab_size} of the tokenizer's {n} pieces, as run.c would")
    })?;
    Ok(Cow::Owned(cut))
}

/// Encodes `prompt` as run.c does (BOS, no EOS), generates `steps` positions (prompt included,
/// see [`clamp_steps`]) and returns the text run.c would print (prompt included, no final
/// newline). The tokenizer is fitted to the model by [`fit_tokenizer`]. `seed` must be nonzero to be reproducible (see [`sampler::default_seed`]).
pub fn generate_text(
    params: &Params,
    tok: &Tokenizer,
    prompt: &str,
    steps: usize,
    temperature: f32,
    topp: f32,
    seed: u64,
) -> Result<String> {
    let tok = fit_tokenizer(tok, params.config().vocab_size)?;
    let ids = tok.encode(prompt, true, false);
    let mut sampler = Sampler::new(params.config().vocab_size, temperature, topp, seed);
    let mut bytes = Vec::new();
    generate_ids(params, &ids, steps, &mut sampler, |prev, next| {
        bytes.extend_from_slice(printable_piece(tok.decode(prev, next)));
    })
    .context("cannot generate from the prompt (is the tokenizer the model's own?)")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// [`generate_text`] for a model read from a Hugging Face folder and its `tokenizer.json`:
/// the prompt is the config's BOS (or, for a model without one, its EOS, what precedes a
/// document) and the text's ids; generation stops at the config's EOS.
pub fn generate_text_hf(
    params: &Params,
    tok: &crate::tokenizer::hf::HfTokenizer,
    prompt: &str,
    steps: usize,
    temperature: f32,
    topp: f32,
    seed: u64,
) -> Result<String> {
    let c = params.config();
    let (bos, eos) = c.hf.as_ref().map_or((tok.bos, tok.eos), |o| (o.bos, o.eos));
    let mut ids: Vec<u32> = bos.or(eos).into_iter().collect();
    ids.extend(tok.encode_plain(prompt)?);
    if ids.is_empty() {
        bail!("an empty prompt needs a BOS or EOS id in the model's config");
    }
    let mut sampler = Sampler::new(c.vocab_size, temperature, topp, seed);
    let g = generate_ids(params, &ids, steps, &mut sampler, |_, _| {})
        .context("cannot generate from the prompt (is the tokenizer the model's own?)")?;
    tok.decode(&g.tokens)
}
