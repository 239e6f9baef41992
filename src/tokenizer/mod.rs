//! llama2.c `tokenizer.bin`: loading, run.c's BPE encoding and decoding, and BPE training.
//!
//! # File format
//!
//! Little-endian, no magic, no count (the vocabulary size is implied by the end of the file):
//!
//! ```text
//! i32 max_token_length                 longest piece in bytes (run.c sizes its buffers by it)
//! repeated vocab_size times:
//!     f32 score                        merge priority: higher merges first
//!     i32 len                          piece length in bytes
//!     u8  piece[len]                   raw bytes; SentencePiece's "▁" already replaced by ' '
//! ```
//!
//! Id layout (SentencePiece with byte fallback, as exported by llama2.c's `tokenizer.py`):
//! 0 `<unk>`, 1 BOS (`"\n<s>\n"`), 2 EOS (`"\n</s>\n"`), 3..=258 the byte pieces
//! `<0x00>`..`<0xFF>`, then merged pieces and single characters.
//!
//! # Encoding
//!
//! [`Tokenizer::encode`] is run.c's `encode()`: an optional BOS, a dummy-prefix `" "` token
//! when the text is non-empty, one token per UTF-8 code point (or its bytes as byte-fallback
//! tokens, id = byte + 3, when the code point is not a piece), then repeatedly the adjacent
//! pair whose concatenated bytes are a piece with the highest score is merged (the leftmost
//! such pair on ties; scores at or below -1e10 never merge), and an optional EOS.
//!
//! run.c finds pieces with a binary search over a sorted copy of the vocabulary and rescans
//! the whole sequence after every merge (O(n²)). Here a hash map finds pieces and a priority
//! queue over (score, position) picks the next merge, which visits merges in the same order
//! and so produces the same tokens; `tests/tokenizer.rs` checks this against a literal
//! transcription of run.c.
//!
//! Where run.c's behaviour is undefined or inexpressible this module chooses:
//! - a NUL byte in the text (a C string cannot hold one) is an ordinary character, and
//!   `<0x00>` decodes to a NUL byte (run.c's C string would end there and print nothing);
//! - a vocabulary without a `" "` piece takes the byte token of `' '` as its dummy prefix
//!   (run.c would index the vocabulary with -1);
//! - duplicate pieces resolve to the lowest id (run.c's `bsearch` returns any of them).
//!
//! Training a vocabulary in this layout lives in [`bpe`].

pub mod bpe;
pub mod hf;

pub use bpe::{train_bpe, train_bpe_detailed, BpeTraining, TrainedChunk};

use anyhow::{bail, Context, Result};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::Path;

/// Id of `<unk>`.
pub const UNK: u32 = 0;
/// Id of the beginning-of-sequence token `<s>`.
pub const BOS: u32 = 1;
/// Id of the end-of-sequence token `</s>`.
pub const EOS: u32 = 2;
/// Id of the byte-fallback piece `<0x00>`; byte `b` is token `BYTE_OFFSET + b`.
pub const BYTE_OFFSET: u32 = 3;
/// Number of ids before the first learned piece: 3 specials and 256 bytes.
pub const N_RESERVED: u32 = BYTE_OFFSET + 256;

/// A fast non-cryptographic hasher for piece lookups (the multiply-rotate scheme of rustc's
/// FxHash, over 8-byte words). Encoding does one lookup per adjacent pair, so SipHash's cost
/// dominated; the keys are a fixed vocabulary, so hash flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct PieceHasher(u64);

impl Hasher for PieceHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap());
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Piece bytes -> id.
pub(crate) type PieceIndex = HashMap<Vec<u8>, u32, BuildHasherDefault<PieceHasher>>;

/// run.c's initial `best_score`: a merge whose piece scores at or below this never happens.
const NO_MERGE_SCORE: f32 = -1e10;

/// Every byte value once, so that [`Tokenizer::decode`] can hand out a one-byte slice for a
/// byte-fallback piece (run.c's `byte_pieces`).
static BYTE_VALUES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// A llama2.c tokenizer: pieces with merge scores; id 0 `<unk>`, 1 `<s>` (BOS), 2 `</s>` (EOS),
/// 3..=258 the byte-fallback pieces `<0x00>`..`<0xFF>`.
///
/// Build one with [`Tokenizer::load`], [`Tokenizer::from_parts`] or [`train_bpe`]; the public
/// fields are for reading (a lookup index is built from them at construction, so editing them
/// afterwards would leave it stale).
#[derive(Clone)]
pub struct Tokenizer {
    pub pieces: Vec<Vec<u8>>,
    pub scores: Vec<f32>,
    pub max_token_length: u32,
    /// piece bytes -> lowest id holding them
    index: PieceIndex,
    /// the dummy-prefix token: the id of `" "`, or the byte token of `' '`
    space: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.pieces.len())
            .field("max_token_length", &self.max_token_length)
            .finish()
    }
}

/// The canonical text of byte piece `b`: `<0x0A>` (two upper-case hex digits).
pub fn byte_piece(b: u8) -> Vec<u8> {
    format!("<0x{b:02X}>").into_bytes()
}

impl Tokenizer {
    /// Loads a llama2.c `tokenizer.bin`, reading pieces until the end of the file.
    ///
    /// Fails, naming the file, on a truncated header or entry, a negative or oversized piece
    /// length, a piece longer than the header's `max_token_length`, fewer than 259 pieces, or
    /// ids 3..=258 that are not the byte pieces `<0x00>`..`<0xFF>` that encoding relies on.
    /// Allocations are bounded by the file's size, never by a value read from it.
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("{}: cannot read tokenizer file", path.display()))?;
        Tokenizer::from_bytes(&bytes)
            .with_context(|| format!("{}: not a valid llama2.c tokenizer file", path.display()))
    }

    /// Parses the bytes of a `tokenizer.bin` (see the module docs for the layout).
    pub fn from_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        if bytes.len() < 4 {
            bail!(
                "the file has {} bytes, too few for the 4-byte max_token_length header",
                bytes.len()
            );
        }
        let max_len = i32::from_le_bytes(bytes[0..4].try_into().unwrap());
        if max_len <= 0 {
            bail!("max_token_length in the header is {max_len}; it must be positive");
        }
        let mut pieces = Vec::new();
        let mut scores = Vec::new();
        let mut off = 4usize;
        while off < bytes.len() {
            let i = pieces.len();
            let left = bytes.len() - off;
            if left < 8 {
                bail!(
                    "truncated: token {i} at byte offset {off} needs 8 bytes for its score and \
                     length, but only {left} remain"
                );
            }
            let score = f32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
            let len = i32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap());
            off += 8;
            if len < 0 {
                bail!(
                    "token {i} (byte offset {}) has a negative length {len}",
                    off - 4
                );
            }
            let len = len as usize;
            if len > bytes.len() - off {
                bail!(
                    "truncated: token {i} declares {len} bytes at byte offset {off}, but only {} \
                     remain",
                    bytes.len() - off
                );
            }
            if len > max_len as usize {
                bail!(
                    "token {i} is {len} bytes long, more than the header's max_token_length \
                     {max_len}"
                );
            }
            pieces.push(bytes[off..off + len].to_vec());
            scores.push(score);
            off += len;
        }
        let mut t = Tokenizer::from_parts(pieces, scores)?;
        t.max_token_length = max_len as u32;
        Ok(t)
    }

    /// Builds a tokenizer from pieces and scores (`max_token_length` = the longest piece).
    /// Fails when the lengths differ, there are fewer than 259 pieces, or ids 3..=258 are not
    /// the byte pieces.
    pub fn from_parts(pieces: Vec<Vec<u8>>, scores: Vec<f32>) -> Result<Tokenizer> {
        if pieces.len() != scores.len() {
            bail!(
                "{} pieces but {} scores; every piece needs one score",
                pieces.len(),
                scores.len()
            );
        }
        if pieces.len() < N_RESERVED as usize {
            bail!(
                "the vocabulary has {} pieces; a llama2.c tokenizer needs at least {N_RESERVED} \
                 (<unk>, <s>, </s> and the 256 byte pieces)",
                pieces.len()
            );
        }
        if pieces.len() > u32::MAX as usize {
            bail!(
                "the vocabulary has {} pieces, more than u32 ids can name",
                pieces.len()
            );
        }
        for b in 0..=255u8 {
            let id = (BYTE_OFFSET + b as u32) as usize;
            if pieces[id] != byte_piece(b) {
                bail!(
                    "token {id} is {:?}, but byte fallback needs it to be {:?}",
                    String::from_utf8_lossy(&pieces[id]),
                    String::from_utf8_lossy(&byte_piece(b))
                );
            }
        }
        let mut index = PieceIndex::with_capacity_and_hasher(pieces.len(), Default::default());
        for (id, p) in pieces.iter().enumerate() {
            index.entry(p.clone()).or_insert(id as u32);
        }
        let space = index
            .get(&b" "[..])
            .copied()
            .unwrap_or(BYTE_OFFSET + b' ' as u32);
        let max_token_length = pieces.iter().map(|p| p.len()).max().unwrap_or(0) as u32;
        Ok(Tokenizer {
            pieces,
            scores,
            max_token_length,
            index,
            space,
        })
    }

    /// The bytes of a `tokenizer.bin` holding this vocabulary.
    pub fn to_bytes(&self) -> Vec<u8> {
        let total: usize = self.pieces.iter().map(|p| 8 + p.len()).sum();
        let mut out = Vec::with_capacity(4 + total);
        let max_len = self.max_token_length.max(
            self.pieces
                .iter()
                .map(|p| p.len() as u32)
                .max()
                .unwrap_or(0),
        );
        out.extend_from_slice(&(max_len as i32).to_le_bytes());
        for (p, s) in self.pieces.iter().zip(&self.scores) {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&(p.len() as i32).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    /// Writes this vocabulary as a llama2.c `tokenizer.bin`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes();
        crate::util::fs::write_atomic(path, |w: &mut dyn Write| w.write_all(&bytes))
            .with_context(|| format!("{}: cannot write tokenizer file", path.display()))
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The raw bytes of piece `id` (e.g. `b" Hello"`, `b"<0x0A>"`).
    pub fn piece(&self, id: u32) -> &[u8] {
        &self.pieces[id as usize]
    }

    /// The merge score of piece `id`.
    pub fn score(&self, id: u32) -> f32 {
        self.scores[id as usize]
    }

    /// The id of the piece with exactly these bytes (the lowest id if several have them).
    pub fn find(&self, piece: &[u8]) -> Option<u32> {
        self.index.get(piece).copied()
    }

    /// run.c `encode`: dummy-prefix space, byte fallback, score-driven BPE merges.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        self.encode_bytes(text.as_bytes(), bos, eos)
    }

    /// [`Tokenizer::encode`] over raw bytes, which need not be valid UTF-8: a lead byte and
    /// the continuation bytes after it (at most 4 bytes in all) form one unit, as in run.c.
    pub fn encode_bytes(&self, text: &[u8], bos: bool, eos: bool) -> Vec<u32> {
        let mut tokens = Vec::with_capacity(text.len() + 3);
        if bos {
            tokens.push(BOS);
        }
        if !text.is_empty() {
            tokens.push(self.space);
        }
        self.push_code_points(text, &mut tokens);
        merge_greedy(&self.pieces, &self.scores, &self.index, &mut tokens);
        if eos {
            tokens.push(EOS);
        }
        tokens
    }

    /// run.c's first pass: one token per code point found in the vocabulary, else its bytes.
    fn push_code_points(&self, text: &[u8], tokens: &mut Vec<u32>) {
        push_code_points(&self.index, text, tokens)
    }

    /// run.c `decode`: the bytes of `token` following `prev` (leading space stripped after
    /// BOS; `<0xXX>` pieces become the raw byte). Ids outside the vocabulary decode to nothing.
    pub fn decode(&self, prev: u32, token: u32) -> &[u8] {
        let Some(mut piece) = self.pieces.get(token as usize).map(|p| p.as_slice()) else {
            return &[];
        };
        if prev == BOS && piece.first() == Some(&b' ') {
            piece = &piece[1..];
        }
        match parse_byte_piece(piece) {
            Some(b) => &BYTE_VALUES[b as usize..b as usize + 1],
            None => piece,
        }
    }

    /// The text of a token sequence: each token decoded after its predecessor as run.c prints
    /// it (so the dummy-prefix space after a BOS disappears), BOS and EOS themselves
    /// contributing nothing, and the concatenated bytes read as lossy UTF-8 (byte-fallback
    /// tokens of one character only form it together).
    ///
    /// `decode_str(encode(s, true, _))` is `s`; `decode_str(encode(s, false, _))` is `" " + s`.
    pub fn decode_str(&self, tokens: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(tokens)).into_owned()
    }

    /// The bytes behind [`Tokenizer::decode_str`].
    pub fn decode_bytes(&self, tokens: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(tokens.len() * 4);
        let mut prev = u32::MAX;
        for &t in tokens {
            if t != BOS && t != EOS {
                out.extend_from_slice(self.decode(prev, t));
            }
            prev = t;
        }
        out
    }
}

/// run.c's `sscanf(piece, "<0x%02hhX>", &b) == 1`: `<0x` followed by one or two hex digits.
/// (The closing `>` is not checked by run.c either: sscanf's result counts conversions only.)
fn parse_byte_piece(piece: &[u8]) -> Option<u8> {
    let rest = piece.strip_prefix(b"<0x")?;
    let digits = rest
        .iter()
        .take(2)
        .take_while(|c| c.is_ascii_hexdigit())
        .count();
    if digits == 0 {
        return None;
    }
    let s = std::str::from_utf8(&rest[..digits]).ok()?;
    u8::from_str_radix(s, 16).ok()
}

/// run.c's first pass over the text (see [`Tokenizer::encode_bytes`]).
fn push_code_points(index: &PieceIndex, text: &[u8], tokens: &mut Vec<u32>) {
    let mut start = 0;
    let mut len = 0;
    for i in 0..text.len() {
        if len == 0 {
            start = i;
        }
        len += 1;
        let next_is_continuation = text.get(i + 1).is_some_and(|&c| c & 0xC0 == 0x80);
        if next_is_continuation && len < 4 {
            continue;
        }
        let unit = &text[start..start + len];
        match index.get(unit) {
            Some(&id) => tokens.push(id),
            None => tokens.extend(unit.iter().map(|&b| BYTE_OFFSET + b as u32)),
        }
        len = 0;
    }
}

/// A merge candidate: the pair starting at slot `left` would become piece `id`.
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    left_version: u32,
    right_version: u32,
    id: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Candidate {
    /// Max-heap order: higher score first, then the leftmost slot (run.c keeps the first pair
    /// it meets among equal scores).
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// run.c's merge loop over `tokens`, in place: while some adjacent pair concatenates to a piece
/// scoring above -1e10, merge the highest-scoring such pair (the leftmost on ties).
///
/// Slots keep their original positions in a doubly linked list; a merge keeps the left slot
/// and unlinks the right one, so slot order is sequence order and "leftmost" is "lowest
/// slot". Each slot carries a version bumped when its token changes, which retires stale
/// candidates in the heap. O(n log n) lookups instead of run.c's O(n²).
pub(crate) fn merge_greedy(
    pieces: &[Vec<u8>],
    scores: &[f32],
    index: &PieceIndex,
    tokens: &mut Vec<u32>,
) {
    let n = tokens.len();
    if n < 2 {
        return;
    }
    const NONE: usize = usize::MAX;
    let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    prev[0] = NONE;
    let mut version = vec![0u32; n];
    let mut alive = vec![true; n];
    let mut heap = BinaryHeap::new();
    let mut buf = Vec::new();

    let candidate = |tokens: &[u32],
                     version: &[u32],
                     left: usize,
                     right: usize,
                     buf: &mut Vec<u8>|
     -> Option<Candidate> {
        buf.clear();
        buf.extend_from_slice(&pieces[tokens[left] as usize]);
        buf.extend_from_slice(&pieces[tokens[right] as usize]);
        let &id = index.get(buf.as_slice())?;
        // +0.0 folds -0.0 into 0.0: run.c compares with `>`, for which they are equal.
        let score = scores[id as usize] + 0.0;
        (score > NO_MERGE_SCORE).then_some(Candidate {
            score,
            left,
            right,
            left_version: version[left],
            right_version: version[right],
            id,
        })
    };

    for i in 0..n - 1 {
        if let Some(c) = candidate(tokens, &version, i, i + 1, &mut buf) {
            heap.push(c);
        }
    }
    while let Some(c) = heap.pop() {
        let valid = alive[c.left]
            && alive[c.right]
            && next[c.left] == c.right
            && version[c.left] == c.left_version
            && version[c.right] == c.right_version;
        if !valid {
            continue;
        }
        tokens[c.left] = c.id;
        version[c.left] += 1;
        alive[c.right] = false;
        let after = next[c.right];
        next[c.left] = after;
        if after != NONE {
            prev[after] = c.left;
        }
        let before = prev[c.left];
        if before != NONE {
            if let Some(cand) = candidate(tokens, &version, before, c.left, &mut buf) {
                heap.push(cand);
            }
        }
        if after != NONE {
            if let Some(cand) = candidate(tokens, &version, c.left, after, &mut buf) {
                heap.push(cand);
            }
        }
    }
    let mut w = 0;
    for r in 0..n {
        if alive[r] {
            tokens[w] = tokens[r];
            w += 1;
        }
    }
    tokens.truncate(w);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small vocabulary: specials, bytes, then the given pieces with their scores.
    fn tiny(extra: &[(&str, f32)]) -> Tokenizer {
        let mut pieces: Vec<Vec<u8>> =
            vec![b"<unk>".to_vec(), b"\n<s>\n".to_vec(), b"\n</s>\n".to_vec()];
        pieces.extend((0..=255u8).map(byte_piece));
        let mut scores = vec![0.0; pieces.len()];
        for (p, s) in extra {
            pieces.push(p.as_bytes().to_vec());
            scores.push(*s);
        }
        Tokenizer::from_parts(pieces, scores).unwrap()
    }

    #[test]
    fn merges_highest_score_first_and_leftmost_on_ties() {
        let t = tiny(&[
            (" ", -100.0),
            ("a", -100.0),
            ("b", -100.0),
            ("ab", -1.0),
            ("ba", -2.0),
            (" a", -3.0),
        ]);
        let id = |s: &str| t.find(s.as_bytes()).unwrap();
        // " abab": pairs " a"(-3) ab(-1) ba(-2) ab(-1): the first "ab" merges, then the
        // second; " a" cannot form any more because "a" was consumed.
        assert_eq!(
            t.encode("abab", false, false),
            vec![id(" "), id("ab"), id("ab")]
        );
        // "aba": ab(-1) beats ba(-2); then " "+"ab" is not a piece.
        assert_eq!(
            t.encode("aba", false, false),
            vec![id(" "), id("ab"), id("a")]
        );
        // "bab": " b" no, ba(-2) at 1, ab(-1) at 2 -> "ab" first, leaving " ", b, ab.
        assert_eq!(
            t.encode("bab", false, false),
            vec![id(" "), id("b"), id("ab")]
        );
    }

    #[test]
    fn scores_at_or_below_minus_1e10_never_merge() {
        let t = tiny(&[(" ", 0.0), ("a", 0.0), (" a", -1e10), ("aa", -2e10)]);
        let id = |s: &str| t.find(s.as_bytes()).unwrap();
        assert_eq!(
            t.encode("aa", false, false),
            vec![id(" "), id("a"), id("a")]
        );
    }

    #[test]
    fn byte_fallback_and_dummy_prefix_fallback() {
        // No " " piece: the dummy prefix is the byte token of ' ' (35).
        let t = tiny(&[("h", -1.0)]);
        assert_eq!(
            t.encode("hé", true, true),
            vec![BOS, 35, t.find(b"h").unwrap(), 0xC3 + 3, 0xA9 + 3, EOS]
        );
        assert_eq!(t.encode("", true, true), vec![BOS, EOS]);
        // Invalid UTF-8: a stray continuation byte is its own unit.
        assert_eq!(t.encode_bytes(b"\x80", false, false), vec![35, 0x80 + 3]);
    }

    #[test]
    fn nul_is_an_ordinary_character() {
        let t = tiny(&[(" ", -1.0), ("a", -1.0)]);
        let ids = t.encode("a\0a", false, false);
        assert_eq!(ids[2], BYTE_OFFSET);
        assert_eq!(t.decode_bytes(&ids), b" a\0a");
    }

    #[test]
    fn decode_strips_space_after_bos_and_maps_byte_pieces() {
        let t = tiny(&[(" hi", -1.0)]);
        let hi = t.find(b" hi").unwrap();
        assert_eq!(t.decode(BOS, hi), b"hi");
        assert_eq!(t.decode(5, hi), b" hi");
        assert_eq!(t.decode(BOS, BYTE_OFFSET + 0x0A), b"\n");
        assert_eq!(t.decode(0, BYTE_OFFSET + 0xFF), &[0xFF]);
        assert_eq!(t.decode(0, 1_000_000), b"");
        assert_eq!(parse_byte_piece(b"<0x4"), Some(4));
        assert_eq!(parse_byte_piece(b"<0xG1>"), None);
    }

    #[test]
    fn bytes_round_trip_and_validation() {
        let t = tiny(&[(" ", -5.0), ("xyz", 2.5)]);
        let back = Tokenizer::from_bytes(&t.to_bytes()).unwrap();
        assert_eq!(back.pieces, t.pieces);
        assert_eq!(back.scores, t.scores);
        assert_eq!(back.max_token_length, 6);
        let mut bytes = t.to_bytes();
        bytes[4 + 8 + 5 + 4..4 + 8 + 5 + 8].copy_from_slice(&(-7i32).to_le_bytes());
        let e = format!("{:#}", Tokenizer::from_bytes(&bytes).unwrap_err());
        assert!(e.contains("token 1") && e.contains("negative"), "{e}");
    }
}
