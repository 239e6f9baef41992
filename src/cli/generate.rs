//! `anetrain generate`: run a model on the CPU and print what it writes, as llama2.c's
//! `run` does (same defaults, same sampling, same tokens for the same seed).

use crate::generate::{self, sampler, Sampler};
use crate::tokenizer::hf::{HfTokenizer, StreamDecoder};
use crate::tokenizer::Tokenizer;

/// The tokenizer generation decodes with.
enum Tok {
    /// llama2.c `tokenizer.bin` (fitted to the model's vocabulary as run.c does).
    Bin(Box<Tokenizer>),
    /// Hugging Face `tokenizer.json`.
    Hf(Box<HfTokenizer>),
}
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    after_help = "llama2.c's run flags work too: `anetrain generate model.bin -t 0.8 -p 0.9 \
-s 42 -n 256 -i \"Once upon a time\" -z tokenizer.bin` (run.c's -m chat mode is not offered; \
-m is --model here)."
)]
pub struct Args {
    /// Model to run, as run.c takes it (the same as --model).
    #[arg(value_name = "MODEL", conflicts_with = "model")]
    pub model_path: Option<PathBuf>,
    /// Model to run: a llama2.c model file (.bin), a training checkpoint (.ckpt) or a Hugging
    /// Face model folder [default: runs/default/model.ckpt, what `anetrain train` writes].
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    /// llama2.c tokenizer.bin or Hugging Face tokenizer.json (default: the one a checkpoint was
    /// trained with, or a model folder's own tokenizer.json); without one, token ids are
    /// printed instead of text. run.c: -z.
    #[arg(long, short = 'z')]
    pub tokenizer: Option<PathBuf>,
    /// Text to continue (needs --tokenizer); encoded with BOS as run.c does. run.c: -i.
    #[arg(long, short = 'i', conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// Prompt as comma-separated token ids, fed verbatim (start with 1, BOS, as run.c does).
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Positions to run, prompt included; 0 = the model's seq_len. run.c: -n (also --steps).
    #[arg(long = "tokens", short = 'n', alias = "steps", default_value_t = 256)]
    pub tokens: usize,
    /// Sampling temperature; 0 = greedy. run.c: -t.
    #[arg(long, short = 't', default_value_t = 1.0, value_parser = super::non_negative)]
    pub temperature: f32,
    /// Top-p (nucleus) sampling threshold; 0 or 1 samples from the whole distribution. run.c: -p.
    #[arg(long, short = 'p', default_value_t = 0.9, value_parser = super::probability)]
    pub top_p: f32,
    /// Random seed (run.c's xorshift state); default, or 0: the current time. run.c: -s.
    #[arg(long, short = 's')]
    pub seed: Option<u64>,
    /// (Generation runs matrix-vector products of its own, src/generate/matvec.rs; this
    /// selects the library of any GEMM, and checks that `blas` loads.)
    #[command(flatten)]
    pub gemm: crate::train::gemm_choice::GemmArgs,
    /// Threads of the forward pass (default, or 0: all cores). The caller finishes a stage
    /// alone when the other threads are not running, so busy cores slow it towards one
    /// thread's speed, not below it.
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    crate::train::backend::set_threads(a.threads);
    let model = a
        .model_path
        .clone()
        .or_else(|| a.model.clone())
        .unwrap_or_else(|| PathBuf::from(crate::train::settings::DEFAULT_CKPT));
    let model = model.as_path();
    if !model.exists() && model == std::path::Path::new(crate::train::settings::DEFAULT_CKPT) {
        bail!(
            "no model given and no default run at {} (train one with `anetrain train`, or pass --model FILE)",
            model.display()
        );
    }
    let params = generate::load_model_params(model)?;
    let c = params.config();
    crate::train::backend::select_gemm(&a.gemm.gemm, c, 1, 1)?;
    let recorded = crate::model::ModelSource::with_weights(model)
        .checkpoint()
        .and_then(|ck| crate::train::checkpoint::read_header(ck).ok())
        .and_then(|h| h.tokenizer);
    // A model folder's own tokenizer, else the one a checkpoint records.
    let own =
        c.hf.as_ref()
            .and_then(|o| crate::model::hf::tokenizer_path(&o.dir));
    let tokenizer = a.tokenizer.clone().or_else(|| {
        recorded
            .clone()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .or(own)
    });
    let tok = match &tokenizer {
        Some(p) if crate::tokenizer::hf::is_hf_tokenizer(p) => {
            let t = HfTokenizer::load(p)?.with_special(
                c.hf.as_ref().and_then(|o| o.bos),
                c.hf.as_ref().and_then(|o| o.eos),
            );
            if t.vocab_size() > c.vocab_size {
                bail!(
                    "{}: the tokenizer has {} ids but the model {} has a vocabulary of {}: use the model's own tokenizer",
                    p.display(),
                    t.vocab_size(),
                    model.display(),
                    c.vocab_size
                );
            }
            Some(Tok::Hf(Box::new(t)))
        }
        Some(p) => {
            let t = Tokenizer::load(p)?;
            let fitted = generate::fit_tokenizer(&t, c.vocab_size)
                .with_context(|| format!("{}: does not fit {}", p.display(), model.display()))?
                .into_owned();
            if t.vocab_size() != c.vocab_size {
                eprintln!(
                    "note: {} has {} pieces; using the first {}, the model's vocabulary, as run.c does",
                    p.display(),
                    t.vocab_size(),
                    c.vocab_size
                );
            }
            Some(Tok::Bin(Box::new(fitted)))
        }
        None => {
            eprintln!(
                "note: no tokenizer, so token ids are printed: {} (give --tokenizer FILE)",
                match recorded {
                    Some(p) => format!("{} records {p}, which does not exist", model.display()),
                    None => format!("none given, and {} records none", model.display()),
                }
            );
            None
        }
    };
    // The first token when no prompt is given: BOS (llama2.c), the config's BOS (a Hugging
    // Face model), or for one without BOS (Qwen3) its EOS, which is what precedes a document.
    let start = match &c.hf {
        Some(o) => o.bos.or(o.eos).unwrap_or(generate::BOS),
        None => generate::BOS,
    };
    let prompt: Vec<u32> = match (&a.prompt, &a.prompt_ids, &tok) {
        (Some(text), _, Some(Tok::Bin(t))) => t.encode(text, true, false),
        (Some(text), _, Some(Tok::Hf(t))) => {
            let mut ids = t.encode_prompt(text)?;
            if t.bos.is_none() {
                ids.insert(0, start);
            }
            ids
        }
        (Some(_), _, None) => bail!("--prompt needs --tokenizer (or give --prompt-ids)"),
        (None, Some(ids), _) => ids.clone(),
        (None, None, Some(Tok::Bin(t))) => t.encode("", true, false),
        (None, None, _) => vec![start],
    };
    let seed = match a.seed {
        Some(s) if s != 0 => s,
        _ => sampler::default_seed(),
    };
    let mut sampler = Sampler::new(c.vocab_size, a.temperature, a.top_p, seed);

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_err = None;
    let mut stream = match &tok {
        Some(Tok::Hf(t)) => Some(StreamDecoder::new(t)),
        _ => None,
    };
    let result = generate::generate_ids(&params, &prompt, a.tokens, &mut sampler, |prev, next| {
        let r = match (&tok, stream.as_mut()) {
            (Some(Tok::Hf(_)), Some(s)) => match s.push(next) {
                Ok(text) => out.write_all(text.as_bytes()),
                Err(e) => Err(std::io::Error::other(format!("{e:#}"))),
            },
            (Some(Tok::Bin(t)), _) => {
                out.write_all(generate::printable_piece(t.decode(prev, next)))
            }
            _ => write!(out, "{next} "),
        };
        if let Err(e) = r.and_then(|_| out.flush()) {
            write_err.get_or_insert(e);
        }
    });
    let g = result.with_context(|| format!("{}: cannot generate", model.display()))?;
    if let Some(e) = write_err {
        return Err(e).context("cannot write to standard output");
    }
    writeln!(out).context("cannot write to standard output")?;
    eprintln!(
        "achieved tok/s: {:.2} ({} positions, seed {seed}, {} threads)",
        g.tokens_per_s,
        g.tokens.len() - 1,
        rayon::current_num_threads()
    );
    Ok(())
}
