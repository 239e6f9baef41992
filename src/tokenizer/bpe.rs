//! BPE training that produces a llama2.c vocabulary whose run.c encoding is the training-time
//! segmentation.
//!
//! # Layout of the result
//!
//! 0 `<unk>`, 1 `"\n<s>\n"`, 2 `"\n</s>\n"` (the strings llama2.c's `tokenizer.py` exports),
//! 3..=258 `<0x00>`..`<0xFF>` (score 0), then the merged pieces in the order they were
//! learned (score -1, -2, …), then the single characters (lower scores still; no merge ever
//! produces a single character, so their scores never matter). The characters are `" "` (the
//! dummy prefix run.c puts before every text), every ASCII character that occurs except NUL,
//! and the most frequent non-ASCII characters seen at least twice, up to a quarter of the
//! learned budget; any other character is encoded by byte fallback.
//!
//! # Pre-splitting
//!
//! As in SentencePiece, text is cut into chunks that merges never cross: a run of letters, of
//! digits, of other visible characters, or of line breaks and other whitespace; a single space
//! belongs to the run that follows it (`" the"`, `" \""`), and a space followed by a space,
//! a line break or the end stands alone. Training sees `" " + text`, the string run.c's
//! encoder works on. Because no learned piece mixes two classes or holds a space anywhere but
//! at its start, no pair across a chunk boundary concatenates to a piece, so run.c's encoder
//! (which knows nothing of chunks) segments each chunk independently.
//!
//! # Why the learned order needs care
//!
//! run.c does not replay merges as (left, right) rules: it merges any adjacent pair whose
//! concatenation is a piece, highest score first. Classic BPE replay can disagree with that:
//! with pieces `bc` (score -1), `ab` (-2), `abc` (-3, learned as `ab`+`c` elsewhere), the
//! word `abc` is `a|bc` by rule replay but `abc` for run.c (`a`+`bc` also spells `abc`).
//! So the trainer keeps every chunk's tokens equal to run.c's encoding under the vocabulary
//! learned so far. Adding a piece `p` with the lowest score changes nothing until run.c's old
//! result is reached, so the new encoding is run.c's greedy loop continued from the old one,
//! and only chunks holding an adjacent pair that spells `p` (any split of `p`, not only the
//! pair that was counted) can change. The next merge is the most frequent adjacent pair of
//! these encodings (ties: lower ids first); counts are kept incrementally with a pair →
//! chunks index and a lazy max-heap.

use super::{byte_piece, merge_greedy, push_code_points, PieceIndex, Tokenizer, N_RESERVED};
use anyhow::{bail, Result};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Non-ASCII characters need at least this many occurrences to become pieces.
const MIN_CHAR_COUNT: u64 = 2;

/// One distinct chunk of the training text with its final segmentation.
#[derive(Clone, Debug)]
pub struct TrainedChunk {
    pub text: String,
    /// occurrences in the training text
    pub count: u64,
    /// run.c's encoding of `text` with the trained vocabulary (no BOS or dummy prefix)
    pub tokens: Vec<u32>,
}

/// A trained tokenizer and what it was trained on.
#[derive(Clone, Debug)]
pub struct BpeTraining {
    pub tokenizer: Tokenizer,
    /// distinct chunks, sorted by text
    pub chunks: Vec<TrainedChunk>,
    pub n_merges: usize,
    pub n_chars: usize,
}

/// Trains a `vocab_size`-piece llama2.c vocabulary on `texts` (each one story or document;
/// each is seen as run.c's encoder sees it, with the dummy-prefix space). Fewer pieces result
/// only when no adjacent pair is left to merge. Fails when `vocab_size` cannot hold the
/// reserved ids and the characters that must be pieces.
pub fn train_bpe<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    vocab_size: usize,
) -> Result<Tokenizer> {
    Ok(train_bpe_detailed(texts, vocab_size)?.tokenizer)
}

/// Character class used for pre-splitting.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Space,
    Break,
    Letter,
    Digit,
    Other,
}

fn class(c: char) -> Class {
    if c == ' ' {
        Class::Space
    } else if c.is_whitespace() || c.is_control() {
        Class::Break
    } else if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else {
        Class::Other
    }
}

/// Calls `f` with each chunk of `text` in order (see the module docs); the chunks concatenate
/// to `text`.
pub fn for_each_chunk<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    let mut it = text.char_indices().peekable();
    while let Some((start, c)) = it.next() {
        let run = if c == ' ' {
            match it.peek() {
                Some(&(_, d)) if !matches!(class(d), Class::Space | Class::Break) => {
                    it.next();
                    class(d)
                }
                _ => {
                    f(&text[start..start + 1]);
                    continue;
                }
            }
        } else {
            class(c)
        };
        let mut end = text.len();
        while let Some(&(j, d)) = it.peek() {
            if class(d) == run {
                it.next();
            } else {
                end = j;
                break;
            }
        }
        f(&text[start..end]);
    }
}

/// The chunks of `text` (see [`for_each_chunk`]).
pub fn pre_split(text: &str) -> Vec<&str> {
    let mut v = Vec::new();
    for_each_chunk(text, |c| v.push(c));
    v
}

/// A distinct chunk during training.
struct Word {
    tokens: Vec<u32>,
    count: u64,
}

type Pair = (u32, u32);

/// [`train_bpe`], also returning every distinct chunk with its final segmentation.
pub fn train_bpe_detailed<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    vocab_size: usize,
) -> Result<BpeTraining> {
    // 1. Distinct chunks of " " + text, with counts.
    let mut chunk_counts: HashMap<String, u64> = HashMap::new();
    let mut line = String::new();
    for text in texts {
        if text.is_empty() {
            continue;
        }
        line.clear();
        line.push(' ');
        line.push_str(text);
        for_each_chunk(&line, |c| match chunk_counts.get_mut(c) {
            Some(n) => *n += 1,
            None => {
                chunk_counts.insert(c.to_owned(), 1);
            }
        });
    }
    let mut chunks: Vec<(String, u64)> = chunk_counts.into_iter().collect();
    chunks.sort_unstable_by(|a, b| a.0.cmp(&b.0));

    // 2. Character pieces.
    let mut char_counts: HashMap<char, u64> = HashMap::new();
    for (text, n) in &chunks {
        for c in text.chars() {
            *char_counts.entry(c).or_insert(0) += n;
        }
    }
    let mut chars: Vec<char> = char_counts
        .keys()
        .copied()
        .filter(|&c| c.is_ascii() && c != '\0')
        .collect();
    if !chars.contains(&' ') {
        chars.push(' ');
    }
    chars.sort_unstable();
    let mut rare: Vec<(u64, char)> = char_counts
        .iter()
        .filter(|(c, &n)| !c.is_ascii() && n >= MIN_CHAR_COUNT)
        .map(|(&c, &n)| (n, c))
        .collect();
    rare.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let needed = N_RESERVED as usize + chars.len();
    if vocab_size < needed {
        bail!(
            "vocab_size {vocab_size} is too small: the text needs {needed} pieces before any \
             merge (<unk>, <s>, </s>, 256 byte pieces and {} single characters)",
            chars.len()
        );
    }
    let cap = (vocab_size - needed) / 4;
    chars.extend(rare.iter().take(cap).map(|&(_, c)| c));
    let n_chars = chars.len();

    // 3. Initial vocabulary: reserved ids, then characters (moved after the merges at the end).
    let mut pieces: Vec<Vec<u8>> =
        vec![b"<unk>".to_vec(), b"\n<s>\n".to_vec(), b"\n</s>\n".to_vec()];
    pieces.extend((0..=255u8).map(byte_piece));
    debug_assert_eq!(pieces.len(), N_RESERVED as usize);
    for &c in &chars {
        pieces.push(c.to_string().into_bytes());
    }
    let mut scores = vec![0.0f32; pieces.len()];
    let mut index = PieceIndex::default();
    for (id, p) in pieces.iter().enumerate() {
        index.entry(p.clone()).or_insert(id as u32);
    }

    // 4. Initial segmentation: run.c's code-point pass (byte fallback for other characters).
    let mut words: Vec<Word> = chunks
        .iter()
        .map(|(text, n)| {
            let mut tokens = Vec::with_capacity(text.len());
            push_code_points(&index, text.as_bytes(), &mut tokens);
            merge_greedy(&pieces, &scores, &index, &mut tokens);
            Word { tokens, count: *n }
        })
        .collect();

    // Byte-fallback and special tokens never merge: their piece text is not the text they
    // stand for.
    let mergeable = |id: u32| id >= N_RESERVED;
    let mut pair_count: HashMap<Pair, i64> = HashMap::new();
    let mut pair_words: HashMap<Pair, Vec<u32>> = HashMap::new();
    for (w, word) in words.iter().enumerate() {
        for x in word.tokens.windows(2) {
            if mergeable(x[0]) && mergeable(x[1]) {
                let p = (x[0], x[1]);
                *pair_count.entry(p).or_insert(0) += word.count as i64;
                let ws = pair_words.entry(p).or_default();
                if ws.last() != Some(&(w as u32)) {
                    ws.push(w as u32);
                }
            }
        }
    }
    let mut heap: BinaryHeap<(i64, Reverse<Pair>)> =
        pair_count.iter().map(|(&p, &n)| (n, Reverse(p))).collect();

    // 5. Merge loop.
    let mut merge_ids: Vec<u32> = Vec::new();
    let mut touched: Vec<Pair> = Vec::new();
    while pieces.len() < vocab_size {
        let Some((n, Reverse(pair))) = heap.pop() else {
            break;
        };
        if n <= 0 || pair_count.get(&pair) != Some(&n) {
            continue; // stale heap entry
        }
        let mut piece = pieces[pair.0 as usize].clone();
        piece.extend_from_slice(&pieces[pair.1 as usize]);
        if index.contains_key(&piece) {
            // Cannot happen: every chunk is a fixed point of run.c's loop, so no adjacent pair
            // spells an existing piece. Dropping the pair keeps the loop finite regardless.
            debug_assert!(false, "adjacent pair spells an existing piece");
            pair_count.remove(&pair);
            continue;
        }
        let id = pieces.len() as u32;
        pieces.push(piece.clone());
        scores.push(-(merge_ids.len() as f32 + 1.0));
        index.insert(piece.clone(), id);
        merge_ids.push(id);

        // Every way to spell the new piece as two pieces.
        let splits: Vec<Pair> = (1..piece.len())
            .filter_map(|k| Some((*index.get(&piece[..k])?, *index.get(&piece[k..])?)))
            .collect();
        let mut affected: Vec<u32> = splits
            .iter()
            .flat_map(|p| pair_words.remove(p).unwrap_or_default())
            .collect();
        affected.sort_unstable();
        affected.dedup();
        touched.clear();
        for w in affected {
            let word = &mut words[w as usize];
            let holds_split = word
                .tokens
                .windows(2)
                .any(|x| splits.contains(&(x[0], x[1])));
            if !holds_split {
                continue;
            }
            let count = word.count as i64;
            let old: Vec<Pair> = word
                .tokens
                .windows(2)
                .filter(|x| mergeable(x[0]) && mergeable(x[1]))
                .map(|x| (x[0], x[1]))
                .collect();
            for p in &old {
                *pair_count.get_mut(p).expect("counted pair") -= count;
                touched.push(*p);
            }
            merge_greedy(&pieces, &scores, &index, &mut word.tokens);
            for x in word.tokens.windows(2) {
                if mergeable(x[0]) && mergeable(x[1]) {
                    let p = (x[0], x[1]);
                    *pair_count.entry(p).or_insert(0) += count;
                    touched.push(p);
                    if !old.contains(&p) {
                        pair_words.entry(p).or_default().push(w);
                    }
                }
            }
        }
        for p in &splits {
            debug_assert!(pair_count.get(p).copied().unwrap_or(0) == 0);
            pair_count.remove(p);
        }
        touched.sort_unstable();
        touched.dedup();
        for p in &touched {
            match pair_count.get(p).copied() {
                Some(n) if n > 0 => heap.push((n, Reverse(*p))),
                Some(_) => {
                    pair_count.remove(p);
                }
                None => {}
            }
        }
    }

    // 6. Final order: reserved, merges in learned order, then characters below every merge.
    let n_merges = merge_ids.len();
    let mut remap = vec![0u32; pieces.len()];
    let mut final_pieces = Vec::with_capacity(pieces.len());
    let mut final_scores = Vec::with_capacity(pieces.len());
    let order = (0..N_RESERVED)
        .chain(merge_ids.iter().copied())
        .chain(N_RESERVED..N_RESERVED + n_chars as u32);
    for old in order {
        remap[old as usize] = final_pieces.len() as u32;
        final_pieces.push(std::mem::take(&mut pieces[old as usize]));
        final_scores.push(scores[old as usize]);
    }
    for (k, s) in final_scores[N_RESERVED as usize + n_merges..]
        .iter_mut()
        .enumerate()
    {
        *s = -((n_merges + 1 + k) as f32);
    }
    let tokenizer = Tokenizer::from_parts(final_pieces, final_scores)?;
    let chunks = chunks
        .into_iter()
        .zip(words)
        .map(|((text, count), w)| TrainedChunk {
            text,
            count,
            tokens: w.tokens.iter().map(|&t| remap[t as usize]).collect(),
        })
        .collect();
    Ok(BpeTraining {
        tokenizer,
        chunks,
        n_merges,
        n_chars,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// run.c's encoding of a chunk alone: no BOS, no dummy prefix.
    fn encode_plain(t: &Tokenizer, text: &str) -> Vec<u32> {
        let mut v = Vec::new();
        push_code_points(&t.index, text.as_bytes(), &mut v);
        merge_greedy(&t.pieces, &t.scores, &t.index, &mut v);
        v
    }

    #[test]
    fn pre_split_attaches_spaces_to_the_following_run() {
        assert_eq!(
            pre_split(" Once upon a time, Tom said: \"Hi!\"\n\nThe  end 42."),
            vec![
                " Once", " upon", " a", " time", ",", " Tom", " said", ":", " \"", "Hi", "!\"",
                "\n\n", "The", " ", " end", " 42", "."
            ]
        );
        assert_eq!(pre_split(" "), vec![" "]);
        assert_eq!(pre_split("a \n"), vec!["a", " ", "\n"]);
        assert_eq!(pre_split("héllo wörld"), vec!["héllo", " wörld"]);
    }

    #[test]
    fn learns_the_frequent_words_and_keeps_run_c_segmentation() {
        let texts = ["the cat sat on the mat", "the cat ate", "a cat and the dog"];
        let tr = train_bpe_detailed(texts.iter().copied(), 259 + 40).unwrap();
        let t = &tr.tokenizer;
        assert!(t.find(b" the").is_some() && t.find(b" cat").is_some());
        for c in &tr.chunks {
            assert_eq!(encode_plain(t, &c.text), c.tokens);
        }
        for s in texts {
            assert_eq!(t.decode_str(&t.encode(s, true, false)), s);
        }
    }

    #[test]
    fn too_small_vocab_is_an_error() {
        let e = train_bpe(["hello world"].iter().copied(), 262).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
    }
}
