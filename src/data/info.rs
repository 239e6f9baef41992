//! `anetrain data info`: what is inside a token file — size, documents, id range, the most
//! frequent ids (decoded with a tokenizer when one is given), and whether the ids fit the
//! tokenizer's vocabulary.
//!
//! One parallel pass over the memory-mapped ids: each chunk builds a 65536-bin histogram and
//! its document-boundary summary (tokens before its first BOS, after its last, longest run in
//! between); histograms are summed and the summaries joined in file order.

use super::tokenize::{read_sidecar, sha256_file, TokenFormat, TokenSidecar};
use super::tokens::{TokenData, BOS};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

const CHUNK: usize = 1 << 20;

/// Counts over a token file.
#[derive(Clone, Debug)]
pub struct TokenStats {
    pub tokens: u64,
    /// BOS ids = documents.
    pub documents: u64,
    pub min_id: u16,
    pub max_id: u16,
    /// Distinct ids present.
    pub distinct: usize,
    /// Occurrences of every id, indexed by id (65536 entries).
    pub counts: Vec<u64>,
    /// Longest document in tokens, its BOS included (the whole file when there is no BOS).
    pub longest_document: u64,
    /// The file's first id is BOS.
    pub starts_with_bos: bool,
}

impl TokenStats {
    /// Ids not below `vocab`, and the first such (offset, id).
    pub fn outside_vocab(&self, data: &TokenData, vocab: usize) -> (u64, Option<(usize, u16)>) {
        let n: u64 = self.counts.iter().skip(vocab).sum();
        if n == 0 {
            return (0, None);
        }
        let first = data
            .tokens()
            .par_iter()
            .position_first(|&t| t as usize >= vocab)
            .map(|i| (i, data.tokens()[i]));
        (n, first)
    }

    /// The `k` most frequent ids with their counts, most frequent first (ties: lower id first).
    pub fn top(&self, k: usize) -> Vec<(u16, u64)> {
        let mut v: Vec<(u16, u64)> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (i as u16, c))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }
}

/// Document-boundary summary of one chunk.
#[derive(Clone, Copy)]
struct Runs {
    len: u64,
    /// Ids before the first BOS (all of them when there is none).
    head: u64,
    /// Ids from the last BOS to the end (meaningful only with a BOS).
    tail: u64,
    /// Longest complete document strictly inside the chunk.
    inner: u64,
    has_bos: bool,
}

fn chunk_runs(ids: &[u16]) -> Runs {
    let mut first = None;
    let mut last = 0usize;
    let mut inner = 0u64;
    for (i, &t) in ids.iter().enumerate() {
        if t == BOS {
            if first.is_some() {
                inner = inner.max((i - last) as u64);
            } else {
                first = Some(i);
            }
            last = i;
        }
    }
    Runs {
        len: ids.len() as u64,
        head: first.unwrap_or(ids.len()) as u64,
        tail: (ids.len() - last) as u64,
        inner,
        has_bos: first.is_some(),
    }
}

/// Scans `data` once.
pub fn token_stats(data: &TokenData) -> TokenStats {
    let ids = data.tokens();
    let per_chunk: Vec<(Vec<u64>, Runs)> = ids
        .par_chunks(CHUNK)
        .map(|c| {
            let mut h = vec![0u64; 1 << 16];
            for &t in c {
                h[t as usize] += 1;
            }
            (h, chunk_runs(c))
        })
        .collect();
    let mut counts = vec![0u64; 1 << 16];
    // Joining runs in file order: `open` is the length of the document still going on.
    let mut open = 0u64;
    let mut longest = 0u64;
    for (h, r) in &per_chunk {
        for (a, b) in counts.iter_mut().zip(h) {
            *a += b;
        }
        if r.has_bos {
            longest = longest.max(open + r.head).max(r.inner);
            open = r.tail;
        } else {
            open += r.len;
        }
    }
    longest = longest.max(open);
    let present = || {
        counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, _)| i as u16)
    };
    TokenStats {
        tokens: ids.len() as u64,
        documents: counts[BOS as usize],
        min_id: present().next().unwrap_or(0),
        max_id: present().next_back().unwrap_or(0),
        distinct: present().count(),
        longest_document: longest,
        starts_with_bos: ids.first() == Some(&BOS),
        counts,
    }
}

/// A printable form of a piece's bytes.
fn shown(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// The full `data info` report for `path`: the text to print and the warnings.
pub fn describe(
    path: &Path,
    tokenizer: Option<(&Tokenizer, &Path)>,
    top_k: usize,
) -> Result<(String, Vec<String>)> {
    let sidecar = read_sidecar(path)?;
    if let Some(TokenSidecar {
        format: TokenFormat::U32,
        ..
    }) = sidecar
    {
        bail!(
            "{}: holds uint32 ids (its sidecar says format u32); data info reads uint16 token files (training, eval and grad read both)",
            path.display()
        );
    }
    let data = TokenData::open(path)?;
    let st = token_stats(&data);
    let mut out = String::new();
    let mut warnings = Vec::new();
    let mb = st.tokens as f64 * 2.0 / 1e6;
    writeln!(out, "file:         {}", path.display())?;
    writeln!(out, "tokens:       {} ({mb:.1} MB of uint16)", st.tokens)?;
    writeln!(out, "documents:    {} (BOS = {BOS} ids)", st.documents)?;
    if st.documents > 0 {
        writeln!(
            out,
            "per document: {:.1} tokens on average, {} the longest",
            st.tokens as f64 / st.documents as f64,
            st.longest_document
        )?;
    }
    writeln!(
        out,
        "ids:          {} distinct, min {}, max {}",
        st.distinct, st.min_id, st.max_id
    )?;
    if st.documents == 0 {
        warnings.push(format!(
            "{}: no BOS ({BOS}) ids, so documents cannot be told apart; was it tokenized with a BOS before each document?",
            path.display()
        ));
    } else if !st.starts_with_bos {
        warnings.push(format!(
            "{}: the first id is {}, not BOS ({BOS}); the file may be a cut from a larger one",
            path.display(),
            data.tokens()[0]
        ));
    }
    if let Some(sc) = &sidecar {
        writeln!(
            out,
            "sidecar:      {} tokens, {} documents, tokenizer {} (sha256 {}), vocab {}",
            sc.tokens,
            sc.documents,
            sc.tokenizer,
            sc.tokenizer_sha256.chars().take(12).collect::<String>(),
            sc.vocab_size
        )?;
        if sc.tokens != st.tokens || sc.documents != st.documents {
            warnings.push(format!(
                "{}: the sidecar records {} tokens and {} documents, the file has {} and {}; the file was changed after tokenization",
                path.display(),
                sc.tokens,
                sc.documents,
                st.tokens,
                st.documents
            ));
        }
    }
    if let Some((tok, tpath)) = tokenizer {
        let vocab = tok.vocab_size();
        writeln!(out, "tokenizer:    {} ({vocab} tokens)", tpath.display())?;
        let (n, first) = st.outside_vocab(&data, vocab);
        if let Some((off, id)) = first {
            warnings.push(format!(
                "{}: {n} ids ({:.3}%) are not below the tokenizer's vocabulary size {vocab}; the first is {id} at offset {off} (byte {}). The file was not made with this tokenizer",
                path.display(),
                100.0 * n as f64 / st.tokens as f64,
                2 * off
            ));
        }
        if let Some(sc) = &sidecar {
            if let Ok(h) = sha256_file(tpath) {
                if h != sc.tokenizer_sha256 {
                    warnings.push(format!(
                        "{}: tokenized with a different tokenizer ({}, sha256 {}) than {}",
                        path.display(),
                        sc.tokenizer,
                        sc.tokenizer_sha256.chars().take(12).collect::<String>(),
                        tpath.display()
                    ));
                }
            }
        }
    }
    if top_k > 0 {
        writeln!(out, "most frequent ids:")?;
        writeln!(
            out,
            "  {:>4}  {:>6}  {:>12}  {:>7}  piece",
            "rank", "id", "count", "share"
        )?;
        for (rank, (id, c)) in st.top(top_k).into_iter().enumerate() {
            let piece = match tokenizer {
                Some((tok, _)) if (id as usize) < tok.vocab_size() => {
                    shown(tok.decode(0, id as u32))
                }
                Some(_) => "(outside the vocabulary)".to_string(),
                None => String::new(),
            };
            writeln!(
                out,
                "  {:>4}  {:>6}  {:>12}  {:>6.2}%  {piece}",
                rank + 1,
                id,
                c,
                100.0 * c as f64 / st.tokens as f64
            )?;
        }
    }
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward sequential reference for the chunked scan.
    fn reference(ids: &[u16]) -> (u64, u64) {
        let docs = ids.iter().filter(|&&t| t == BOS).count() as u64;
        let mut longest = 0u64;
        let mut cur = 0u64;
        for &t in ids {
            if t == BOS {
                longest = longest.max(cur);
                cur = 0;
            }
            cur += 1;
        }
        (docs, longest.max(cur))
    }

    #[test]
    fn chunked_scan_matches_sequential_reference() {
        let mut rng = crate::util::rng::Rng::new(7);
        // Documents of varied length, some longer than a chunk, around chunk boundaries.
        let mut ids: Vec<u16> = vec![5, 6, 7];
        for d in 0..40 {
            ids.push(BOS);
            let len = if d % 13 == 5 {
                CHUNK + 17
            } else {
                (rng.next_u32() % 50_000) as usize
            };
            ids.extend((0..len).map(|_| 2 + (rng.next_u32() % 30_000) as u16));
        }
        let td = TokenData::from_vec(ids.clone(), "mem");
        let st = token_stats(&td);
        let (docs, longest) = reference(&ids);
        assert_eq!(st.documents, docs);
        assert_eq!(st.longest_document, longest);
        assert_eq!(st.tokens, ids.len() as u64);
        assert_eq!(st.max_id, *ids.iter().max().unwrap());
        assert_eq!(st.min_id, 1);
        assert!(!st.starts_with_bos);
        let (n, first) = st.outside_vocab(&td, 20_000);
        assert_eq!(n, ids.iter().filter(|&&t| t >= 20_000).count() as u64);
        let pos = ids.iter().position(|&t| t >= 20_000).unwrap();
        assert_eq!(first, Some((pos, ids[pos])));
    }

    #[test]
    fn top_orders_by_count_then_id() {
        let td = TokenData::from_vec(vec![1, 9, 9, 4, 4, 7, 1, 9], "mem");
        let st = token_stats(&td);
        assert_eq!(st.top(3), vec![(9, 3), (1, 2), (4, 2)]);
        assert_eq!(st.distinct, 4);
        assert_eq!(st.longest_document, 6);
    }
}
