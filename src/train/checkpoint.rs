//! The `.ckpt` checkpoint: everything needed to continue training bit-exactly.
//!
//! ```text
//! bytes 0..8    magic "ANETCKPT"
//! u32           format version (1)
//! u32           header length H
//! H bytes       header, JSON: config, step, AdamW t, data-sampler state, cumulative timings,
//!               optimizer and run settings, paths of the tokenizer and data
//! f32 × P       parameters (arena order, see model::params)
//! f32 × P       AdamW m
//! f32 × P       AdamW v
//! u32           CRC-32 of every preceding byte
//! ```
//! P is derived from the header's config and checked against the file size before anything
//! is allocated. Files are written atomically (temporary sibling, fsync, rename), and the
//! previous K−1 checkpoints are kept as `NAME.1`, `NAME.2`, … (`--keep-ckpts K`).

use crate::model::{Config, Params};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"ANETCKPT";
const VERSION: u32 = 1;
/// Headers are small JSON; anything larger is corruption.
const MAX_HEADER: u32 = 1 << 20;

/// Checkpoint header (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub config: Config,
    /// Optimizer steps completed (the next step to run).
    pub step: u64,
    /// Total steps the run was asked for.
    pub total_steps: u64,
    /// AdamW updates applied.
    pub adam_t: u64,
    /// State of the data sampler's RNG.
    pub sampler_rng: u64,
    /// Position of the sequential sampler.
    #[serde(default)]
    pub sampler_cursor: u64,
    /// Loss-scale state (fp16 backends).
    #[serde(default)]
    pub loss_scale: f32,
    /// Finite steps in a row at the current loss scale.
    #[serde(default)]
    pub loss_scale_good_steps: u64,
    /// Cumulative per-component milliseconds (`Component::ALL` order).
    pub timings_ms: Vec<f64>,
    /// Cumulative wall-clock seconds of training so far.
    pub wall_s: f64,
    pub last_loss: f32,
    #[serde(default)]
    pub best_val_loss: Option<f32>,
    /// Training settings, recorded for `--resume` and for inspection.
    #[serde(default)]
    pub settings: serde_json::Value,
    #[serde(default)]
    pub tokenizer: Option<String>,
    #[serde(default)]
    pub data: Option<String>,
    /// Data-parallel ranks of the run that wrote it (0 in files from before it was
    /// recorded: one). `settings.accum` is per rank; the global batch is
    /// batch × accum × ranks.
    #[serde(default)]
    pub world_size: usize,
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub header: Header,
    pub params: Params,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

fn f32s_to_bytes(
    w: &mut dyn Write,
    xs: &[f32],
    crc: &mut crc32fast::Hasher,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 16);
    for c in xs.chunks(1 << 14) {
        buf.clear();
        for x in c {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        crc.update(&buf);
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Writes a checkpoint atomically and rotates older ones (`keep` ≥ 1 files in all).
pub fn save(
    path: &Path,
    header: &Header,
    params: &[f32],
    m: &[f32],
    v: &[f32],
    keep: usize,
) -> Result<()> {
    let json = serde_json::to_vec(header)?;
    let inject = injected_write_failure();
    let tmp_done = crate::util::fs::write_atomic_with_rotation(path, keep, |w| {
        let mut crc = crc32fast::Hasher::new();
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(json.len() as u32).to_le_bytes());
        head.extend_from_slice(&json);
        crc.update(&head);
        w.write_all(&head)?;
        for (i, xs) in [params, m, v].into_iter().enumerate() {
            f32s_to_bytes(w, xs, &mut crc)?;
            if inject && i == 1 {
                // Half the file is written: fail as a full disk would.
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        w.write_all(&crc.finalize().to_le_bytes())
    });
    tmp_done.with_context(|| format!("{}: cannot write checkpoint", path.display()))
}

/// Test hook: `ANETRAIN_INJECT_CKPT_FAIL=a,b,…` makes the a-th, b-th, … checkpoint write of
/// this process (1-based) fail midway with ENOSPC, to exercise the disk-full path.
fn injected_write_failure() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
    std::env::var("ANETRAIN_INJECT_CKPT_FAIL")
        .map(|v| v.split(',').any(|x| x.trim().parse() == Ok(n)))
        .unwrap_or(false)
}

/// Reads only the header (cheap; used by `info`, `generate` and the dashboard).
pub fn read_header(path: &Path) -> Result<Header> {
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open checkpoint", path.display()))?;
    let mut pre = [0u8; 16];
    f.read_exact(&mut pre)
        .with_context(|| format!("{}: too short to be a checkpoint", path.display()))?;
    let hlen = check_preamble(&pre).with_context(|| format!("{}", path.display()))?;
    let mut json = vec![0u8; hlen as usize];
    f.read_exact(&mut json)
        .with_context(|| format!("{}: truncated checkpoint header", path.display()))?;
    parse_header(&json).with_context(|| format!("{}", path.display()))
}

fn check_preamble(pre: &[u8]) -> Result<u32> {
    if &pre[0..8] != MAGIC {
        bail!("not an anetrain checkpoint (bad magic)");
    }
    let version = u32::from_le_bytes(pre[8..12].try_into().unwrap());
    if version != VERSION {
        bail!("unsupported checkpoint version {version} (this build reads version {VERSION})");
    }
    let hlen = u32::from_le_bytes(pre[12..16].try_into().unwrap());
    if hlen == 0 || hlen > MAX_HEADER {
        bail!("implausible checkpoint header length {hlen}");
    }
    Ok(hlen)
}

fn parse_header(json: &[u8]) -> Result<Header> {
    let h: Header = serde_json::from_slice(json).context("corrupt checkpoint header")?;
    h.config
        .validate()
        .context("checkpoint header holds an invalid config")?;
    if h.timings_ms.len() > 64 {
        bail!("corrupt checkpoint header (timings)");
    }
    Ok(h)
}

/// Loads and verifies a checkpoint (size and checksum) before using any of it.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
    parse(&bytes).with_context(|| format!("{}: checkpoint is unusable", path.display()))
}

/// Parses checkpoint bytes (see [`load`]).
pub fn parse(bytes: &[u8]) -> Result<Checkpoint> {
    if bytes.len() < 20 {
        bail!(
            "file is {} bytes, too short to be a checkpoint",
            bytes.len()
        );
    }
    let hlen = check_preamble(&bytes[..16])? as usize;
    if bytes.len() < 16 + hlen + 4 {
        bail!("truncated checkpoint header");
    }
    let header = parse_header(&bytes[16..16 + hlen])?;
    let n = crate::model::Layout::new(&header.config).total;
    let expected = 16 + hlen + 12 * n + 4;
    if bytes.len() != expected {
        bail!(
            "size {} bytes does not match its header ({} parameters need {} bytes): {}",
            bytes.len(),
            n,
            expected,
            if bytes.len() < expected {
                "truncated"
            } else {
                "trailing data"
            }
        );
    }
    let body_end = expected - 4;
    let stored = u32::from_le_bytes(bytes[body_end..].try_into().unwrap());
    let actual = crc32fast::hash(&bytes[..body_end]);
    if stored != actual {
        bail!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x}): the file is corrupt"
        );
    }
    let read = |k: usize| -> Vec<f32> {
        let s = 16 + hlen + 4 * n * k;
        bytes[s..s + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let mut params = Params::zeros(&header.config);
    params.data = read(0);
    Ok(Checkpoint {
        m: read(1),
        v: read(2),
        params,
        header,
    })
}

/// The rotated older copies of `path` that exist, newest first (`NAME.1`, `NAME.2`, …).
pub fn older_copies(path: &Path) -> Vec<PathBuf> {
    (1..100)
        .map(|i| crate::util::fs::rotated_path(path, i))
        .take_while(|p| p.exists())
        .collect()
}

/// Loads `path`, and when it fails explains which older checkpoint could be used instead.
pub fn load_or_explain(path: &Path) -> Result<Checkpoint> {
    match load(path) {
        Ok(c) => Ok(c),
        Err(e) => {
            let older: Vec<String> = older_copies(path)
                .into_iter()
                .filter(|p| load_header_ok(p))
                .map(|p| p.display().to_string())
                .collect();
            if older.is_empty() {
                Err(e)
            } else {
                Err(e.context(format!(
                    "an earlier checkpoint verifies and can be used instead: {} (pass it with --ckpt, or rename it to {})",
                    older.join(", "),
                    path.display()
                )))
            }
        }
    }
}

fn load_header_ok(p: &Path) -> bool {
    load(p).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(c: &Config) -> Header {
        Header {
            config: c.clone(),
            step: 5,
            total_steps: 10,
            adam_t: 5,
            sampler_rng: 99,
            sampler_cursor: 0,
            loss_scale: 1.0,
            loss_scale_good_steps: 0,
            timings_ms: vec![1.0; 17],
            wall_s: 2.0,
            last_loss: 3.5,
            best_val_loss: None,
            settings: serde_json::json!({"lr": 0.001}),
            tokenizer: None,
            data: None,
            world_size: 1,
        }
    }

    #[test]
    fn round_trip_checksum_and_rotation() {
        let c = Config::llama(16, 24, 1, 2, 1, 20, 8);
        let p = Params::init_random(&c, 3);
        let m: Vec<f32> = p.data.iter().map(|x| x * 0.5).collect();
        let v: Vec<f32> = p.data.iter().map(|x| x * x).collect();
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("a.ckpt");
        save(&path, &header(&c), &p.data, &m, &v, 3).unwrap();
        let ck = load(&path).unwrap();
        assert_eq!(ck.header, header(&c));
        assert_eq!(
            (ck.params.data, ck.m, ck.v),
            (p.data.clone(), m.clone(), v.clone())
        );
        assert_eq!(read_header(&path).unwrap().step, 5);

        // Two more saves: the first is kept as .1 and .2.
        for _ in 0..2 {
            save(&path, &header(&c), &p.data, &m, &v, 3).unwrap();
        }
        assert_eq!(older_copies(&path).len(), 2);

        // Flip one byte in the body: checksum error, and the older copy is offered.
        let mut b = std::fs::read(&path).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        std::fs::write(&path, &b).unwrap();
        let e = format!("{:#}", load_or_explain(&path).err().unwrap());
        assert!(e.contains("checksum") && e.contains("a.ckpt.1"), "{e}");

        // Truncation and absurd header sizes are refused before allocating.
        assert!(format!("{:#}", parse(&b[..b.len() - 9]).err().unwrap()).contains("truncated"));
        let mut bad = b.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&bad).is_err());
    }
}
