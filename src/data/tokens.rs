//! Token data files: flat little-endian `uint16` token ids, no header (llama2.c's pretokenized
//! TinyStories format; stories separated by BOS = 1). A file whose sidecar `FILE.json` (written
//! by `anetrain tokenize`, see [`super::tokenize::TokenSidecar`]) says `"format": "u32"` holds
//! little-endian `uint32` ids instead (vocabularies above 65536); without a sidecar, or with
//! one that says `u16`, a file is read as `uint16` exactly as before. Files are memory-mapped,
//! validated once before training (length not a whole number of ids, too short, ids outside
//! the vocabulary), and can be split into a training part and a held-out tail that starts at
//! a story boundary.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The BOS token id of llama2.c tokenizers.
pub const BOS: u16 = 1;

/// Where the token ids live: a memory map (of `uint16` or `uint32` ids) or an owned buffer
/// (built-in corpus, tests).
enum Storage {
    Mapped(Mmap),
    Mapped32(Mmap),
    Owned(Vec<u16>),
    Owned32(Vec<u32>),
}

/// A view of token ids of either width.
#[derive(Clone, Copy, Debug)]
pub enum Ids<'a> {
    U16(&'a [u16]),
    U32(&'a [u32]),
}

impl<'a> Ids<'a> {
    pub fn len(&self) -> usize {
        match self {
            Ids::U16(s) => s.len(),
            Ids::U32(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Id `i` (panics when out of range, like slice indexing).
    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        match self {
            Ids::U16(s) => s[i] as u32,
            Ids::U32(s) => s[i],
        }
    }
    /// The ids of `r`.
    pub fn slice(&self, r: Range<usize>) -> Ids<'a> {
        match self {
            Ids::U16(s) => Ids::U16(&s[r]),
            Ids::U32(s) => Ids::U32(&s[r]),
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        let me = *self;
        (0..me.len()).map(move |i| me.get(i))
    }
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }
    /// The ids as `uint16`, when that is their width.
    pub fn as_u16(&self) -> Option<&'a [u16]> {
        match self {
            Ids::U16(s) => Some(s),
            Ids::U32(_) => None,
        }
    }
}

/// A token file (or a contiguous part of one).
#[derive(Clone)]
pub struct TokenData {
    storage: Arc<Storage>,
    range: Range<usize>,
    pub path: PathBuf,
}

impl TokenData {
    /// Memory-maps `path` (`uint32` when its sidecar says so, else `uint16`). Fails with a
    /// clear message on an empty file or one that is not a whole number of ids.
    pub fn open(path: &Path) -> Result<TokenData> {
        let f = File::open(path)
            .with_context(|| format!("{}: cannot open token data", path.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("{}: cannot stat token data", path.display()))?
            .len();
        let wide = matches!(
            super::tokenize::read_sidecar(path)?,
            Some(sc) if sc.format == super::tokenize::TokenFormat::U32
        );
        if wide && len % 4 != 0 {
            bail!(
                "{}: its sidecar {} says uint32 ids, but the file length ({len} bytes) is not a multiple of 4",
                path.display(),
                super::tokenize::sidecar_path(path).display()
            );
        }
        if len % 2 != 0 {
            bail!(
                "{}: token data must be uint16 ids, but the file has an odd length ({len} bytes)",
                path.display()
            );
        }
        if len == 0 {
            bail!("{}: token data file is empty", path.display());
        }
        // SAFETY: the file is opened read-only; we never write through the map. A concurrent
        // truncation by another process is outside what we can defend against.
        let map = unsafe { Mmap::map(&f) }
            .with_context(|| format!("{}: cannot memory-map token data", path.display()))?;
        if cfg!(target_endian = "big") {
            bail!("token data is little-endian; big-endian hosts are not supported");
        }
        let (n, storage) = if wide {
            (map.len() / 4, Storage::Mapped32(map))
        } else {
            (map.len() / 2, Storage::Mapped(map))
        };
        Ok(TokenData {
            storage: Arc::new(storage),
            range: 0..n,
            path: path.to_path_buf(),
        })
    }

    /// `uint32` token data held in memory.
    pub fn from_vec_u32(tokens: Vec<u32>, name: &str) -> TokenData {
        let n = tokens.len();
        TokenData {
            storage: Arc::new(Storage::Owned32(tokens)),
            range: 0..n,
            path: PathBuf::from(name),
        }
    }

    /// Bytes per id in the file (2 or 4).
    pub fn width(&self) -> usize {
        match &*self.storage {
            Storage::Mapped(_) | Storage::Owned(_) => 2,
            Storage::Mapped32(_) | Storage::Owned32(_) => 4,
        }
    }

    /// All token ids of this part, whatever their width.
    pub fn ids(&self) -> Ids<'_> {
        let all = match &*self.storage {
            Storage::Owned(v) => Ids::U16(v),
            Storage::Owned32(v) => Ids::U32(v),
            // SAFETY: an mmap is page-aligned, so 2- and 4-byte alignment hold; the length
            // was checked to be a whole number of ids.
            Storage::Mapped(m) => Ids::U16(unsafe {
                std::slice::from_raw_parts(m.as_ptr() as *const u16, m.len() / 2)
            }),
            Storage::Mapped32(m) => Ids::U32(unsafe {
                std::slice::from_raw_parts(m.as_ptr() as *const u32, m.len() / 4)
            }),
        };
        all.slice(self.range.clone())
    }

    /// Token data held in memory.
    pub fn from_vec(tokens: Vec<u16>, name: &str) -> TokenData {
        let n = tokens.len();
        TokenData {
            storage: Arc::new(Storage::Owned(tokens)),
            range: 0..n,
            path: PathBuf::from(name),
        }
    }

    /// All token ids of this part, for `uint16` data (see [`TokenData::ids`] for either).
    ///
    /// # Panics
    /// On `uint32` data; callers that accept it use [`TokenData::ids`].
    pub fn tokens(&self) -> &[u16] {
        self.ids()
            .as_u16()
            .expect("uint16 token data (uint32 data is read through ids())")
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Checks that training windows of `seq + 1` tokens fit and that every id is below
    /// `vocab`; the error names the first offending offset and value.
    pub fn validate(&self, seq: usize, vocab: usize) -> Result<()> {
        let n = self.len();
        if n < seq + 1 {
            bail!(
                "{}: {n} tokens, but a training window needs seq + 1 = {} tokens",
                self.path.display(),
                seq + 1
            );
        }
        if let Some((i, t)) = self
            .ids()
            .iter()
            .enumerate()
            .find(|&(_, t)| t as usize >= vocab)
        {
            bail!(
                "{}: token id {t} at offset {} (byte {}) is not below the model's vocabulary size {vocab}",
                self.path.display(),
                self.range.start + i,
                self.width() * (self.range.start + i)
            );
        }
        Ok(())
    }

    /// Training data from `path` and validation data: from `val` when given, else the tail
    /// `val_fraction` of `path` (none when the fraction is 0).
    pub fn open_with_validation(
        path: &Path,
        val: Option<&Path>,
        val_fraction: f64,
    ) -> Result<(TokenData, Option<TokenData>)> {
        let d = TokenData::open(path)?;
        match val {
            Some(v) => Ok((d, Some(TokenData::open(v)?))),
            None if val_fraction > 0.0 => {
                let (t, v) = d.split_tail(val_fraction)?;
                Ok((t, Some(v)))
            }
            None => Ok((d, None)),
        }
    }

    /// Splits off the last `fraction` of the tokens as a validation part, cut at a BOS so no
    /// story straddles the boundary (falls back to the exact cut when there is no BOS near).
    pub fn split_tail(&self, fraction: f64) -> Result<(TokenData, TokenData)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            bail!("--val-fraction must be between 0 and 1 (exclusive), got {fraction}");
        }
        let n = self.len();
        let want = ((n as f64) * (1.0 - fraction)) as usize;
        let toks = self.ids();
        let bos = BOS as u32;
        // The first BOS at or after the cut, else the last before it.
        let cut = (want..n)
            .find(|&i| toks.get(i) == bos)
            .or_else(|| (1..want).rev().find(|&i| toks.get(i) == bos))
            .unwrap_or(want);
        let mk = |r: Range<usize>, tag: &str| TokenData {
            storage: self.storage.clone(),
            range: self.range.start + r.start..self.range.start + r.end,
            path: PathBuf::from(format!("{} ({tag})", self.path.display())),
        };
        Ok((mk(0..cut, "train part"), mk(cut..n, "validation tail")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn validation_errors_name_file_and_problem() {
        let d = tempfile::tempdir().unwrap();
        let odd = write(d.path(), "odd.bin", &[1, 0, 5]);
        let e = format!("{:#}", TokenData::open(&odd).err().unwrap());
        assert!(e.contains("odd.bin") && e.contains("odd length"), "{e}");

        let toks: Vec<u8> = [1u16, 5, 6, 700, 8]
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect();
        let p = write(d.path(), "t.bin", &toks);
        let td = TokenData::open(&p).unwrap();
        assert_eq!(td.tokens(), &[1, 5, 6, 700, 8]);
        let e = format!("{:#}", td.validate(2, 512).unwrap_err());
        assert!(e.contains("700") && e.contains("offset 3"), "{e}");
        let e = format!("{:#}", td.validate(8, 1000).unwrap_err());
        assert!(e.contains("5 tokens"), "{e}");
        td.validate(4, 1000).unwrap();
    }

    #[test]
    fn split_cuts_at_a_story_boundary() {
        let mut v = Vec::new();
        for s in 0..10u16 {
            v.push(BOS);
            v.extend(std::iter::repeat_n(10 + s, 9));
        }
        let td = TokenData::from_vec(v, "mem");
        let (tr, va) = td.split_tail(0.25).unwrap();
        assert_eq!(tr.len() + va.len(), 100);
        assert_eq!(va.tokens()[0], BOS);
        assert_eq!(tr.len(), 80);
        assert!(td.split_tail(1.5).is_err());
    }
}
