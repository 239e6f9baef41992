//! Atomic file writes: a file is written to a temporary sibling, flushed, fsynced and renamed
//! over its destination, so a reader sees either the old complete file or the new complete
//! file — never a half-written one, whatever happens to the process meanwhile.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The temporary sibling used while writing `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// `NAME.i`: the i-th older copy kept by [`write_atomic_with_rotation`].
pub fn rotated_path(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Writes `path` atomically with the bytes produced by `fill`.
pub fn write_atomic<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    write_atomic_with_rotation(path, 1, fill)
}

/// Like [`write_atomic`], keeping the `keep − 1` previous versions as `NAME.1` (newest) …
/// `NAME.{keep−1}`. The new file is complete and synced before any rotation happens, so at
/// every instant at least one complete version exists under one of these names.
pub fn write_atomic_with_rotation<F>(path: &Path, keep: usize, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir)?;
        }
    }
    let tmp = temp_path(path);
    let result = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        if keep > 1 && path.exists() {
            for i in (1..keep - 1).rev() {
                let from = rotated_path(path, i);
                if from.exists() {
                    fs::rename(&from, rotated_path(path, i + 1))?;
                }
            }
            // A hard link keeps `path` itself in place until the rename below replaces it.
            let first = rotated_path(path, 1);
            let _ = fs::remove_file(&first);
            if fs::hard_link(path, &first).is_err() {
                fs::copy(path, &first)?;
            }
        }
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.bin");
        write_atomic(&p, |w| w.write_all(b"good")).unwrap();
        let r = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("injected"))
        });
        assert!(r.is_err());
        assert_eq!(fs::read(&p).unwrap(), b"good");
        assert!(!temp_path(&p).exists());
    }
}
