//! Tokenizer tests against independent references:
//! - token ids published with llama2.c's `test.c` (produced by SentencePiece itself on Meta's
//!   example prompts) and ids read from the Llama 2 vocabulary's pieces;
//! - `RunC`, a literal transcription of llama2.c run.c's `encode()` (sorted vocabulary, binary
//!   search, full rescan after every merge), compared with the crate's hash-map + heap
//!   encoder on real, random and invalid-UTF-8 text;
//! - round trips through `decode`, malformed `tokenizer.bin` files, and BPE training on the
//!   built-in corpus, where `RunC` on whole stories must reproduce the training-time
//!   segmentation of every chunk.

use anetrain::data::corpus;
use anetrain::tokenizer::bpe::pre_split;
use anetrain::tokenizer::{train_bpe_detailed, Tokenizer, BOS, EOS};
use anetrain::util::rng::Rng;
use std::collections::HashMap;
use std::path::Path;

/// run.c's tokenizer state: the vocabulary, its scores, and `sorted_vocab`.
struct RunC {
    vocab: Vec<Vec<u8>>,
    scores: Vec<f32>,
    sorted: Vec<(Vec<u8>, i64)>,
}

impl RunC {
    fn new(t: &Tokenizer) -> RunC {
        let mut sorted: Vec<(Vec<u8>, i64)> = t
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as i64))
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0)); // strcmp order = unsigned byte order
        RunC {
            vocab: t.pieces.clone(),
            scores: t.scores.clone(),
            sorted,
        }
    }

    /// `str_lookup`: bsearch over the sorted vocabulary, -1 when absent.
    fn str_lookup(&self, s: &[u8]) -> i64 {
        match self.sorted.binary_search_by(|(p, _)| p.as_slice().cmp(s)) {
            Ok(i) => self.sorted[i].1,
            Err(_) => -1,
        }
    }

    /// `encode()`, statement by statement.
    fn encode(&self, text: &[u8], bos: bool, eos: bool) -> Vec<u32> {
        let mut tokens: Vec<i64> = Vec::new();
        if bos {
            tokens.push(1);
        }
        if !text.is_empty() {
            tokens.push(self.str_lookup(b" "));
        }
        let mut str_buffer: Vec<u8> = Vec::new();
        for c in 0..text.len() {
            if text[c] & 0xC0 != 0x80 {
                str_buffer.clear();
            }
            str_buffer.push(text[c]);
            let next = if c + 1 < text.len() { text[c + 1] } else { 0 };
            if next & 0xC0 == 0x80 && str_buffer.len() < 4 {
                continue;
            }
            let id = self.str_lookup(&str_buffer);
            if id != -1 {
                tokens.push(id);
            } else {
                for &b in &str_buffer {
                    tokens.push(b as i64 + 3);
                }
            }
            str_buffer.clear();
        }
        loop {
            let mut best_score = -1e10f32;
            let mut best_id = -1i64;
            let mut best_idx = -1i64;
            for i in 0..tokens.len().saturating_sub(1) {
                let mut s = self.vocab[tokens[i] as usize].clone();
                s.extend_from_slice(&self.vocab[tokens[i + 1] as usize]);
                let id = self.str_lookup(&s);
                if id != -1 && self.scores[id as usize] > best_score {
                    best_score = self.scores[id as usize];
                    best_id = id;
                    best_idx = i as i64;
                }
            }
            if best_idx == -1 {
                break;
            }
            tokens[best_idx as usize] = best_id;
            tokens.remove(best_idx as usize + 1);
        }
        if eos {
            tokens.push(2);
        }
        tokens.into_iter().map(|t| t as u32).collect()
    }
}

fn llama() -> Option<Tokenizer> {
    let path = anetrain::fixture("tokenizer.bin")?;
    Some(Tokenizer::load(&path).expect("the Llama 2 tokenizer loads"))
}

/// A random string mixing ASCII (no NUL: run.c takes C strings), Latin, Greek, Cyrillic, CJK
/// and emoji, so both vocabulary characters and byte fallback occur.
fn random_text(rng: &mut Rng, max_chars: u64) -> String {
    let n = rng.below(max_chars + 1);
    (0..n)
        .map(|_| {
            let cp = match rng.below(10) {
                0..=4 => 0x20 + rng.below(0x5F) as u32,
                5 => 1 + rng.below(0x7F) as u32,
                6 => 0xA0 + rng.below(0x180) as u32,
                7 => 0x391 + rng.below(0x90) as u32,
                8 => 0x4E00 + rng.below(0x5200) as u32,
                _ => 0x1F300 + rng.below(0x300) as u32,
            };
            char::from_u32(cp).unwrap_or('?')
        })
        .collect()
}

const REAL_TEXT: &[&str] = &[
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "The quick brown fox jumps over the lazy dog! 1234567890 (parentheses) [brackets] {braces}",
    "Tom said, \"Can I have the red ball?\" and Mia replied: \"Yes, you can.\"\n\nThe end.",
    "Le café était très bon, et la crème brûlée aussi. Ça va? Über größe straße.",
    "東京は日本の首都です。我喜欢学习。한국어도 있어요. Привет, как дела? 😀👍🏽🎉",
    "  leading spaces, trailing spaces   \ttabs\tand\r\nwindows newlines\n",
    "a",
    " ",
    "<s> </s> <unk> <0x41> tokens that look special",
];

/// llama2.c `test.c`: prompts from Meta's `example_text_completion.py` with the ids
/// SentencePiece gives them (BOS included).
const KNOWN: &[(&str, &[u32])] = &[
    ("", &[1]),
    (
        "I believe the meaning of life is",
        &[1, 306, 4658, 278, 6593, 310, 2834, 338],
    ),
    (
        "Simply put, the theory of relativity states that ",
        &[1, 3439, 17632, 1925, 29892, 278, 6368, 310, 14215, 537, 5922, 393, 29871],
    ),
    (
        "A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ",
        &[
            1, 319, 11473, 2643, 378, 629, 271, 18099, 278, 3815, 373, 278, 6826, 29901, 13, 13,
            4706, 6324, 14332, 29892, 13, 13, 4706, 306, 925, 29871,
        ],
    ),
    (
        "Translate English to French:\n\n        sea otter => loutre de mer\n        peppermint => menthe poivrée\n        plush girafe => girafe peluche\n        cheese =>",
        &[
            1, 4103, 9632, 4223, 304, 5176, 29901, 13, 13, 4706, 7205, 4932, 357, 1149, 301, 449,
            276, 316, 2778, 13, 4706, 1236, 407, 837, 524, 1149, 6042, 354, 772, 440, 29878, 1318,
            13, 4706, 715, 1878, 330, 3055, 1725, 1149, 330, 3055, 1725, 4639, 28754, 13, 4706,
            923, 968, 1149,
        ],
    ),
];

#[test]
fn llama_file_loads_with_its_implied_vocab_and_saves_byte_identically() {
    let Some(path) = anetrain::fixture("tokenizer.bin") else {
        return;
    };
    let t = Tokenizer::load(&path).unwrap();
    assert_eq!(t.vocab_size(), 32000);
    assert_eq!(t.max_token_length, 27);
    assert_eq!(t.piece(0), b"<unk>");
    assert_eq!(t.piece(BOS), b"\n<s>\n");
    assert_eq!(t.piece(EOS), b"\n</s>\n");
    assert_eq!(t.piece(3), b"<0x00>");
    assert_eq!(t.piece(258), b"<0xFF>");
    assert_eq!(t.to_bytes(), std::fs::read(&path).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.bin");
    t.save(&out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&path).unwrap());
}

#[test]
fn llama_known_ids() {
    let Some(t) = llama() else { return };
    for (text, ids) in KNOWN {
        assert_eq!(&t.encode(text, true, false), ids, "{text:?}");
    }
    // "▁Hello" is 15043 in Llama 2's vocabulary.
    assert_eq!(t.piece(15043), b" Hello");
    assert_eq!(t.encode("Hello", true, false), vec![1, 15043]);
    assert_eq!(t.encode("Hello", false, true), vec![15043, 2]);
    // Whole words, ids read from the vocabulary.
    let id = |s: &str| {
        t.find(s.as_bytes())
            .unwrap_or_else(|| panic!("{s:?} not a piece"))
    };
    assert_eq!(
        t.encode("Once upon a time", true, false),
        vec![1, id(" Once"), id(" upon"), id(" a"), id(" time")]
    );
    assert_eq!(
        [id(" Once"), id(" upon"), id(" a"), id(" time")],
        [9038, 2501, 263, 931]
    );
}

#[test]
fn llama_bos_eos_and_empty_text() {
    let Some(t) = llama() else { return };
    assert_eq!(t.encode("", true, false), vec![1]);
    assert_eq!(t.encode("", false, false), Vec::<u32>::new());
    assert_eq!(t.encode("", true, true), vec![1, 2]);
    assert_eq!(t.encode("", false, true), vec![2]);
    // A lone space: the dummy prefix and the space merge into "  " (id 259).
    assert_eq!(t.piece(259), b"  ");
    assert_eq!(t.encode(" ", true, false), vec![1, 259]);
}

#[test]
fn llama_byte_fallback() {
    let Some(t) = llama() else { return };
    for ch in ["😀", "龘"] {
        assert_eq!(
            t.find(ch.as_bytes()),
            None,
            "{ch} must be outside the vocabulary"
        );
        let mut expect = vec![BOS, t.find(b" ").unwrap()];
        expect.extend(ch.bytes().map(|b| b as u32 + 3));
        assert_eq!(t.encode(ch, true, false), expect, "{ch}");
        assert_eq!(t.decode_str(&t.encode(ch, true, false)), ch);
    }
    // A character in the vocabulary ("é" is 29948) is one token, and merges like any other.
    assert_eq!(t.find("é".as_bytes()), Some(29948));
    assert_eq!(
        t.encode("é", false, false),
        vec![t.find(" é".as_bytes()).unwrap()]
    );
    assert_eq!(t.encode("\té", false, false)[2], 29948);
    // Newline has no piece: byte fallback <0x0A> = 13.
    assert_eq!(t.find(b"\n"), None);
    assert_eq!(t.encode("\n", false, false)[1], 13);
}

#[test]
fn llama_decode_like_run_c() {
    let Some(t) = llama() else { return };
    assert_eq!(t.decode(BOS, 15043), b"Hello");
    assert_eq!(t.decode(306, 15043), b" Hello");
    assert_eq!(t.decode(BOS, 10994), b"Hello");
    assert_eq!(t.decode(5, 13), b"\n");
    assert_eq!(t.decode(5, 3 + 0xF0), &[0xF0]);
    assert_eq!(t.decode(BOS, 29871), b"");
    let ids = t.encode("Once upon a time, Lily was happy.", true, false);
    let printed: Vec<u8> = ids
        .windows(2)
        .flat_map(|w| t.decode(w[0], w[1]).to_vec())
        .collect();
    assert_eq!(printed, b"Once upon a time, Lily was happy.");
}

#[test]
fn llama_matches_literal_run_c_and_round_trips() {
    let Some(t) = llama() else { return };
    let reference = RunC::new(&t);
    let mut rng = Rng::new(2024);
    let mut texts: Vec<String> = REAL_TEXT.iter().map(|s| s.to_string()).collect();
    texts.extend(corpus::corpus(99, 20));
    texts.extend((0..300).map(|_| random_text(&mut rng, 40)));
    for s in &texts {
        let ids = t.encode(s, true, false);
        assert_eq!(ids, reference.encode(s.as_bytes(), true, false), "{s:?}");
        assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
        assert_eq!(&t.decode_str(&ids), s, "round trip after BOS");
        let plain = t.encode(s, false, true);
        assert_eq!(plain, reference.encode(s.as_bytes(), false, true));
        let expect = if s.is_empty() {
            String::new()
        } else {
            format!(" {s}")
        };
        assert_eq!(t.decode_str(&plain), expect, "round trip without BOS");
    }
}

#[test]
fn llama_arbitrary_bytes_match_run_c() {
    let Some(t) = llama() else { return };
    let reference = RunC::new(&t);
    let mut rng = Rng::new(7);
    for _ in 0..300 {
        let n = rng.below(24) as usize;
        // Mostly high bytes: lead bytes, stray and over-long continuation runs.
        let bytes: Vec<u8> = (0..n)
            .map(|_| match rng.below(3) {
                0 => 0x21 + rng.below(0x5E) as u8,
                1 => 0x80 + rng.below(0x40) as u8,
                _ => 0xC0 + rng.below(0x40) as u8,
            })
            .collect();
        let ids = t.encode_bytes(&bytes, true, false);
        assert_eq!(ids, reference.encode(&bytes, true, false), "{bytes:x?}");
        let mut back = t.decode_bytes(&t.encode_bytes(&bytes, false, false));
        if !bytes.is_empty() {
            assert_eq!(back.remove(0), b' ');
        }
        assert_eq!(back, bytes);
    }
}

/// Writes `bytes` to a temporary file and returns the load error's full text.
fn load_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad_tokenizer.bin");
    std::fs::write(&path, bytes).unwrap();
    let e = Tokenizer::load(&path).expect_err("malformed file must not load");
    let text = format!("{e:#}");
    assert!(
        text.contains("bad_tokenizer.bin"),
        "error names the file: {text}"
    );
    text
}

/// A minimal valid file: specials, byte pieces and `extra`.
fn file_with(extra: &[&[u8]], max_len: i32) -> Vec<u8> {
    let mut pieces: Vec<Vec<u8>> =
        vec![b"<unk>".to_vec(), b"\n<s>\n".to_vec(), b"\n</s>\n".to_vec()];
    pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>").into_bytes()));
    pieces.extend(extra.iter().map(|p| p.to_vec()));
    let mut out = max_len.to_le_bytes().to_vec();
    for p in &pieces {
        out.extend_from_slice(&0.5f32.to_le_bytes());
        out.extend_from_slice(&(p.len() as i32).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

#[test]
fn malformed_files_give_clear_errors() {
    let good = file_with(&[b" ", b"hi"], 6);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.bin");
    std::fs::write(&path, &good).unwrap();
    let t = Tokenizer::load(&path).unwrap();
    assert_eq!(t.vocab_size(), 261);

    assert!(load_error(b"").contains("too few"));
    assert!(load_error(&[1, 0]).contains("too few"));
    assert!(load_error(&(-3i32).to_le_bytes()).contains("must be positive"));
    assert!(load_error(&6i32.to_le_bytes()).contains("at least 259"));
    // Truncated in an entry header, and in a piece.
    assert!(load_error(&good[..good.len() - 2 - 8 + 3]).contains("truncated"));
    let e = load_error(&good[..good.len() - 1]);
    assert!(e.contains("truncated") && e.contains("token 260"), "{e}");
    // An absurd length is caught before any allocation.
    let mut huge = good.clone();
    let at = good.len() - 2 - 4;
    huge[at..at + 4].copy_from_slice(&i32::MAX.to_le_bytes());
    let e = load_error(&huge);
    assert!(e.contains("truncated") && e.contains("2147483647"), "{e}");
    let mut negative = good.clone();
    negative[at..at + 4].copy_from_slice(&(-1i32).to_le_bytes());
    assert!(load_error(&negative).contains("negative length"));
    // A piece longer than the header's max_token_length (run.c's buffers overflow).
    assert!(load_error(&file_with(&[b"toolong"], 6)).contains("max_token_length"));
    // Byte pieces out of place.
    let mut swapped = file_with(&[], 6);
    let first_byte_piece = 4 + (8 + 5) + (8 + 5) + (8 + 6) + 8;
    swapped[first_byte_piece + 3..first_byte_piece + 5].copy_from_slice(b"7F");
    assert!(load_error(&swapped).contains("byte fallback"));
    // A missing file.
    let e = format!(
        "{:#}",
        Tokenizer::load(Path::new("/nonexistent/tok.bin")).unwrap_err()
    );
    assert!(e.contains("/nonexistent/tok.bin"), "{e}");
}

#[test]
fn llama_file_cut_anywhere_is_an_error() {
    let Some(path) = anetrain::fixture("tokenizer.bin") else {
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    for cut in [3, 5, 100, 4000, bytes.len() / 2, bytes.len() - 1] {
        let e = load_error(&bytes[..cut]);
        assert!(
            e.contains("truncated") || e.contains("too few") || e.contains("at least 259"),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn bpe_on_the_corpus() {
    let train = corpus::corpus(1, 3000);
    let bytes: usize = train.iter().map(|s| s.len()).sum();
    let start = std::time::Instant::now();
    let tr = train_bpe_detailed(train.iter().map(|s| s.as_str()), 512).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let t = &tr.tokenizer;
    assert_eq!(t.vocab_size(), 512);
    assert_eq!(t.piece(0), b"<unk>");
    assert_eq!(t.piece(BOS), b"\n<s>\n");
    assert_eq!(t.piece(EOS), b"\n</s>\n");
    assert_eq!(t.piece(3 + 0x41), b"<0x41>");
    assert!(t.find(b" ").is_some());
    let used: std::collections::BTreeSet<u8> = train.iter().flat_map(|s| s.bytes()).collect();
    for b in used {
        assert!(
            t.find(&[b]).is_some(),
            "character {:?} must be a piece",
            b as char
        );
    }
    for w in [" the", " and", " was", " to"] {
        assert!(t.find(w.as_bytes()).is_some(), "{w:?} should be learned");
    }
    // Merges score -1, -2, ... in id order; characters below them.
    for id in 259..259 + tr.n_merges {
        assert_eq!(t.scores[id], -((id - 258) as f32));
    }
    assert!(t.scores[259 + tr.n_merges..]
        .iter()
        .all(|&s| s < -(tr.n_merges as f32)));

    // run.c on whole stories reproduces the training-time segmentation of each chunk.
    let reference = RunC::new(t);
    let seg: HashMap<&str, &[u32]> = tr
        .chunks
        .iter()
        .map(|c| (c.text.as_str(), c.tokens.as_slice()))
        .collect();
    for s in &train[..60] {
        let ids = reference.encode(s.as_bytes(), false, false);
        let line = format!(" {s}");
        let from_training: Vec<u32> = pre_split(&line)
            .into_iter()
            .flat_map(|c| seg[c].iter().copied())
            .collect();
        assert_eq!(ids, from_training, "{s:?}");
        assert_eq!(t.encode(s, false, false), ids);
    }

    // Held-out stories: round trip and compression.
    let test = corpus::corpus(2, 300);
    let (mut n_tok, mut n_bytes) = (0usize, 0usize);
    for s in &test {
        let ids = t.encode(s, true, false);
        assert_eq!(&t.decode_str(&ids), s);
        n_tok += ids.len() - 1;
        n_bytes += s.len();
    }
    let tpb = n_tok as f64 / n_bytes as f64;
    eprintln!(
        "bpe: trained vocab 512 on {bytes} bytes ({} stories, {} distinct chunks, {} merges, {} characters) in {secs:.2} s; held-out {:.3} tokens/byte ({:.2} bytes/token)",
        train.len(),
        tr.chunks.len(),
        tr.n_merges,
        tr.n_chars,
        tpb,
        1.0 / tpb
    );
    assert!(tpb < 0.5, "tokens per byte {tpb}");

    // Save and load.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok512.bin");
    t.save(&path).unwrap();
    let back = Tokenizer::load(&path).unwrap();
    assert_eq!(back.pieces, t.pieces);
    assert_eq!(back.scores, t.scores);
    assert_eq!(
        back.encode(&test[0], true, false),
        t.encode(&test[0], true, false)
    );
}

#[test]
fn bpe_on_mixed_text_falls_back_to_bytes_for_rare_characters() {
    let mut rng = Rng::new(5);
    let mut texts: Vec<String> = (0..200).map(|_| random_text(&mut rng, 30)).collect();
    texts.extend(REAL_TEXT.iter().map(|s| s.to_string()));
    texts.extend(corpus::corpus(3, 50));
    let tr = train_bpe_detailed(texts.iter().map(|s| s.as_str()), 700).unwrap();
    let t = &tr.tokenizer;
    let reference = RunC::new(t);
    let seg: HashMap<&str, &[u32]> = tr
        .chunks
        .iter()
        .map(|c| (c.text.as_str(), c.tokens.as_slice()))
        .collect();
    let mut fallbacks = 0;
    for s in &texts {
        let ids = t.encode(s, true, false);
        assert_eq!(ids, reference.encode(s.as_bytes(), true, false), "{s:?}");
        assert_eq!(&t.decode_str(&ids), s);
        fallbacks += ids.iter().filter(|&&i| (3..259).contains(&i)).count();
        if !s.is_empty() {
            let line = format!(" {s}");
            let from_training: Vec<u32> = pre_split(&line)
                .into_iter()
                .flat_map(|c| seg[c].iter().copied())
                .collect();
            assert_eq!(ids[1..], from_training[..], "{s:?}");
        }
    }
    assert!(
        fallbacks > 0,
        "rare CJK/emoji characters should use byte fallback"
    );
}
