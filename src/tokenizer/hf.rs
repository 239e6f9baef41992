//! Hugging Face `tokenizer.json` through the `tokenizers` crate (Hugging Face's own Rust
//! library), and [`Encode`], the one interface the tokenize pipeline needs of either kind of
//! tokenizer.
//!
//! BOS and EOS: from `tokenizer_config.json` beside the file (`bos_token`, `eos_token`), or
//! from the model's `config.json` beside it (`bos_token_id`, `eos_token_id`). A document is
//! encoded without the tokenizer's own special tokens, preceded by BOS when there is one (the
//! Llama family), else followed by EOS (Qwen3), so that documents stay apart in a token file.

use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};

/// What the tokenize pipeline needs of a tokenizer.
pub trait Encode: Sync {
    /// Ids the tokenizer can produce (its vocabulary, added tokens included).
    fn vocab_size(&self) -> usize;
    /// One document as it goes into a token file (with its BOS or EOS).
    fn encode_document(&self, text: &str) -> Vec<u32>;
    /// The id written before each document, if any.
    fn document_bos(&self) -> Option<u32>;
}

impl Encode for super::Tokenizer {
    fn vocab_size(&self) -> usize {
        super::Tokenizer::vocab_size(self)
    }
    fn encode_document(&self, text: &str) -> Vec<u32> {
        self.encode(text, true, false)
    }
    fn document_bos(&self) -> Option<u32> {
        Some(1)
    }
}

/// A `tokenizer.json` and its special tokens.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    pub path: PathBuf,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HfTokenizer({}, {} ids, bos {:?}, eos {:?})",
            self.path.display(),
            self.vocab_size(),
            self.bos,
            self.eos
        )
    }
}

/// Whether `path` names a Hugging Face tokenizer (a `.json` file, or a folder holding a
/// `tokenizer.json`) rather than a llama2.c `tokenizer.bin`.
pub fn is_hf_tokenizer(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
        || (path.is_dir() && path.join("tokenizer.json").is_file())
}

fn special_token(j: &serde_json::Value, key: &str) -> Option<String> {
    match j.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn json_file(p: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

impl HfTokenizer {
    /// Loads `path` (a `tokenizer.json`, or a folder holding one).
    pub fn load(path: &Path) -> Result<HfTokenizer> {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        let inner = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| anyhow!("{}: not a usable tokenizer.json: {e}", file.display()))?;
        let mut t = HfTokenizer {
            inner,
            path: file.clone(),
            bos: None,
            eos: None,
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        if let Some(j) = json_file(&dir.join("tokenizer_config.json")) {
            t.bos = special_token(&j, "bos_token").and_then(|s| t.inner.token_to_id(&s));
            t.eos = special_token(&j, "eos_token").and_then(|s| t.inner.token_to_id(&s));
        }
        if let Some(j) = json_file(&dir.join("config.json")) {
            let id = |k: &str| {
                let v = j.get(k)?;
                let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
                v.as_u64().map(|x| x as u32)
            };
            t.bos = t.bos.or(id("bos_token_id"));
            t.eos = t.eos.or(id("eos_token_id"));
        }
        Ok(t)
    }

    /// Overrides BOS/EOS with a model's config (its ids are what the model was trained on).
    pub fn with_special(mut self, bos: Option<u32>, eos: Option<u32>) -> HfTokenizer {
        if bos.is_some() {
            self.bos = bos;
        }
        if eos.is_some() {
            self.eos = eos;
        }
        self
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `text`'s ids without special tokens.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let e = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("{}: cannot encode: {e}", self.path.display()))?;
        Ok(e.get_ids().to_vec())
    }

    /// A prompt: BOS (when the model has one) then the text's ids.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut v: Vec<u32> = self.bos.into_iter().collect();
        v.extend(self.encode_plain(text)?);
        Ok(v)
    }

    /// The text of `ids` (special tokens left out).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow!("{}: cannot decode: {e}", self.path.display()))
    }
}

impl Encode for HfTokenizer {
    fn vocab_size(&self) -> usize {
        HfTokenizer::vocab_size(self)
    }
    fn encode_document(&self, text: &str) -> Vec<u32> {
        // A text the tokenizer cannot encode is rare (its normaliser refuses it): no ids.
        let body = self.encode_plain(text).unwrap_or_default();
        let mut v = Vec::with_capacity(body.len() + 1);
        v.extend(self.bos);
        v.extend(body);
        if self.bos.is_none() {
            v.extend(self.eos);
        }
        v
    }
    fn document_bos(&self) -> Option<u32> {
        self.bos
    }
}

/// Streaming decoding for generation: each new id's text is what decoding the whole
/// sequence adds (byte-level BPE pieces may complete a character only later).
pub struct StreamDecoder<'a> {
    tok: &'a HfTokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a HfTokenizer) -> StreamDecoder<'a> {
        StreamDecoder {
            tok,
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// The text that `id` adds (empty while a character is incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self
            .tok
            .decode(&self.ids)
            .context("decoding generated ids")?;
        if text.ends_with('\u{FFFD}') || text.len() < self.printed {
            return Ok(String::new());
        }
        let new = text.get(self.printed..).unwrap_or("").to_string();
        self.printed = text.len();
        Ok(new)
    }
}
