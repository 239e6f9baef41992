//! The weight blob file that a MIL `BLOBFILE(path=…, offset=uint64(64))` constant points at:
//! Core ML's "MILBlob" storage format with one tensor per file.
//!
//! ```text
//! byte   0  u32  count = 1             (storage header: number of blobs in the file)
//! byte   4  u32  version = 2
//! byte   8  ..64 zero
//! byte  64  u32  sentinel 0xDEADBEEF   (blob metadata record; the MIL offset points HERE)
//! byte  68  u32  dtype (1 fp16, 2 fp32, 3 uint8, 4 int8)
//! byte  72  u64  payload size in bytes
//! byte  80  u64  absolute file offset of the payload = 128
//! byte  88  ..128 zero
//! byte 128  payload, row-major, tightly packed
//! ```
//!
//! The MIL offset names the metadata record, not the data: the payload of the record at
//! `offset` starts at `offset + 64`. Every field is written correctly (M1-generation chips
//! validate them; later chips ignore size and data offset), and [`read_fp16`] validates them
//! all, so the simulated device rejects what the strictest hardware rejects.

use anyhow::{bail, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Offset of the metadata record in a single-tensor file: the value of `offset=uint64(…)`.
pub const MIL_OFFSET: u64 = 64;
/// Bytes before the payload of a single-tensor file.
pub const HEADER_BYTES: usize = 128;
/// The metadata record's first word.
pub const SENTINEL: u32 = 0xDEAD_BEEF;
/// Core ML's `mil_dtype` code for fp16.
pub const DTYPE_FP16: u32 = 1;
/// Core ML's `mil_dtype` code for fp32.
pub const DTYPE_FP32: u32 = 2;
/// Core ML's `mil_dtype` code for int8.
pub const DTYPE_INT8: u32 = 4;

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A single-tensor blob file holding `values` as fp16 (round to nearest even), in the order
/// given. The declared MIL shape defines how they are read, so `values` must be the row-major
/// flattening of that shape (`[Cout, Cin, 1, 1]` ↔ `W[out][in]`).
pub fn fp16(values: &[f32]) -> Vec<u8> {
    let payload = values.len() * 2;
    let mut b = vec![0u8; HEADER_BYTES + payload];
    put_u32(&mut b, 0, 1);
    put_u32(&mut b, 4, 2);
    put_u32(&mut b, 64, SENTINEL);
    put_u32(&mut b, 68, DTYPE_FP16);
    put_u64(&mut b, 72, payload as u64);
    put_u64(&mut b, 80, HEADER_BYTES as u64);
    let mut h = vec![f16::ZERO; values.len()];
    h.convert_from_f32_slice(values);
    for (dst, v) in b[HEADER_BYTES..].chunks_exact_mut(2).zip(&h) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// The transpose of `w` (`[rows, cols]` row-major) as an fp16 blob: a `[cols, rows]` matrix,
/// element `j·rows + i` = `w[i·cols + j]`. Backward kernels declare it as a conv weight
/// `[cols, rows, 1, 1]`, so that the conv computes `Wᵀ·dy`.
pub fn fp16_transposed(w: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(w.len(), rows * cols, "transposed blob: size mismatch");
    let mut t = vec![0f32; w.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = w[i * cols + j];
        }
    }
    fp16(&t)
}

/// The additive causal mask `[S, S]`: row = query position `t`, column = key position `t2`;
/// 0 where `t2 ≤ t`, −65504 (the most negative finite fp16) above the diagonal. Added to the
/// scores before the softmax, it sends masked entries to ≤ −65504 (or −inf), whose
/// exponentials are exactly 0; the diagonal is never masked, so every row keeps a finite max.
pub fn causal_mask(s: usize) -> Vec<u8> {
    let mut m = vec![0f32; s * s];
    for t in 0..s {
        for t2 in t + 1..s {
            m[t * s + t2] = -65504.0;
        }
    }
    fp16(&m)
}

/// The multiplicative causal mask `[S, S]`: 1 where `t2 ≤ t`, 0 above the diagonal. sdpaBwd1
/// multiplies `dP` by it so that, as on the CPU, the gradient of masked probabilities is 0.
pub fn causal_keep(s: usize) -> Vec<u8> {
    let mut m = vec![0f32; s * s];
    for t in 0..s {
        m[t * s..t * s + t + 1].fill(1.0);
    }
    fp16(&m)
}

/// RoPE tables declared `[1, 1, S, HD]`: for position `p` and pair `j`, entries `2j` and
/// `2j+1` of row `p` both hold `cos θ` (resp. `sin θ`), `θ = p·θ_base^(−2j/HD)`.
/// `cos`, `sin` are `[≥S, HD/2]` as in [`crate::kernels::ops::Rope`] (llama2.c's f32 tables),
/// so the Neural Engine rotates by exactly the CPU's angles, rounded to fp16.
pub fn rope_tables(cos: &[f32], sin: &[f32], s: usize, hd: usize) -> (Vec<u8>, Vec<u8>) {
    let half = hd / 2;
    assert!(
        cos.len() >= s * half && sin.len() >= s * half,
        "RoPE table too short"
    );
    let mut c = vec![0f32; s * hd];
    let mut n = vec![0f32; s * hd];
    for p in 0..s {
        for j in 0..half {
            c[p * hd + 2 * j] = cos[p * half + j];
            c[p * hd + 2 * j + 1] = cos[p * half + j];
            n[p * hd + 2 * j] = sin[p * half + j];
            n[p * hd + 2 * j + 1] = sin[p * half + j];
        }
    }
    (fp16(&c), fp16(&n))
}

/// What the metadata record at a MIL offset says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub dtype: u32,
    pub size: u64,
    pub data_offset: u64,
}

/// Reads and validates the metadata record at `offset` (the MIL `offset=uint64(…)` value).
pub fn record(blob: &[u8], offset: u64) -> Result<Record> {
    let off = usize::try_from(offset)
        .ok()
        .filter(|o| o.checked_add(64).is_some_and(|end| end <= blob.len()));
    let Some(off) = off else {
        bail!(
            "BLOBFILE offset {offset} leaves no room for a 64-byte metadata record in a {}-byte blob",
            blob.len()
        );
    };
    let sentinel = get_u32(blob, off);
    if sentinel != SENTINEL {
        bail!(
            "no blob metadata at offset {offset}: found 0x{sentinel:08X}, expected the sentinel 0xDEADBEEF \
             (the MIL offset must point at the metadata record, 64 for a single-tensor file)"
        );
    }
    Ok(Record {
        dtype: get_u32(blob, off + 4),
        size: get_u64(blob, off + 8),
        data_offset: get_u64(blob, off + 16),
    })
}

/// The `count` fp16 values of the tensor whose metadata record sits at `offset`, as f32.
/// Checks the sentinel, the dtype, the size and data-offset fields, and the payload range.
pub fn read_fp16(blob: &[u8], offset: u64, count: usize) -> Result<Vec<f32>> {
    let r = record(blob, offset)?;
    if r.dtype != DTYPE_FP16 {
        bail!(
            "blob at offset {offset} holds dtype code {} but the constant is declared fp16 (code 1)",
            r.dtype
        );
    }
    let want = count as u64 * 2;
    if r.data_offset != offset + 64 {
        bail!(
            "blob at offset {offset}: data offset field is {}, expected {} (record + 64)",
            r.data_offset,
            offset + 64
        );
    }
    if r.size < want {
        bail!(
            "blob at offset {offset} holds {} bytes but the declared shape needs {want}",
            r.size
        );
    }
    let start = offset + 64;
    if start + want > blob.len() as u64 {
        bail!(
            "blob at offset {offset}: payload bytes {start}..{} run past the end of the {}-byte blob",
            start + want,
            blob.len()
        );
    }
    let bytes = &blob[start as usize..(start + want) as usize];
    let h: Vec<f16> = bytes
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]))
        .collect();
    let mut out = vec![0f32; count];
    h.convert_to_f32_slice(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_payload() {
        let b = fp16(&[1.0, -2.0, 0.5]);
        assert_eq!(b.len(), 128 + 6);
        assert_eq!(&b[0..8], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&b[64..68], &[0xEF, 0xBE, 0xAD, 0xDE]);
        assert_eq!(get_u32(&b, 68), 1);
        assert_eq!(get_u64(&b, 72), 6);
        assert_eq!(get_u64(&b, 80), 128);
        // 1.0 = 0x3C00, −2.0 = 0xC000, 0.5 = 0x3800 in IEEE half.
        assert_eq!(&b[128..], &[0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38]);
        assert_eq!(read_fp16(&b, 64, 3).unwrap(), vec![1.0, -2.0, 0.5]);
    }

    #[test]
    fn transposed_and_mask() {
        // w = [[1,2,3],[4,5,6]] → wᵀ = [[1,4],[2,5],[3,6]].
        let b = fp16_transposed(&[1., 2., 3., 4., 5., 6.], 2, 3);
        assert_eq!(read_fp16(&b, 64, 6).unwrap(), vec![1., 4., 2., 5., 3., 6.]);
        let m = read_fp16(&causal_mask(3), 64, 9).unwrap();
        assert_eq!(m, vec![0., -65504., -65504., 0., 0., -65504., 0., 0., 0.]);
    }

    #[test]
    fn rejects_bad_offsets_and_fields() {
        let b = fp16(&[1.0; 4]);
        let e = format!("{:#}", read_fp16(&b, 0, 4).unwrap_err());
        assert!(e.contains("sentinel"), "{e}");
        assert!(format!("{:#}", read_fp16(&b, 1 << 40, 4).unwrap_err()).contains("no room"));
        let e = format!("{:#}", read_fp16(&b, 64, 5).unwrap_err());
        assert!(e.contains("needs 10"), "{e}");
        let mut bad = b.clone();
        put_u32(&mut bad, 68, DTYPE_INT8);
        assert!(format!("{:#}", read_fp16(&bad, 64, 4).unwrap_err()).contains("dtype"));
        let mut bad = b.clone();
        put_u64(&mut bad, 72, 1000);
        let e = format!("{:#}", read_fp16(&bad, 64, 4 + 400).unwrap_err());
        assert!(e.contains("past the end"), "{e}");
    }
}
