//! Shape rules of the MIL operators this project uses, shared by the program builder (where a
//! violation is a generator bug) and the simulated device's type checker (where it is a
//! compile error naming the statement). Errors are plain strings; callers add context.

/// Resolves a possibly negative axis against a rank.
pub fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if v < 0 || v >= r {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(v as usize)
}

/// numpy broadcasting of two shapes (right-aligned; sizes equal or 1).
pub fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

/// Batched matrix product over the last two axes, leading axes broadcast.
pub fn matmul(x: &[usize], y: &[usize], tx: bool, ty: bool) -> Result<Vec<usize>, String> {
    if x.len() < 2 || y.len() < 2 {
        return Err(format!(
            "matmul needs rank ≥ 2 operands, got {x:?} and {y:?}"
        ));
    }
    let (xr, xc) = (x[x.len() - 2], x[x.len() - 1]);
    let (yr, yc) = (y[y.len() - 2], y[y.len() - 1]);
    let (m, kx) = if tx { (xc, xr) } else { (xr, xc) };
    let (ky, n) = if ty { (yc, yr) } else { (yr, yc) };
    if kx != ky {
        return Err(format!(
            "matmul inner dimensions differ: x {x:?} (transpose_x={tx}) and y {y:?} (transpose_y={ty})"
        ));
    }
    let mut out = broadcast(&x[..x.len() - 2], &y[..y.len() - 2])?;
    out.push(m);
    out.push(n);
    Ok(out)
}

/// 2-D convolution without padding, stride or dilation: x `[N, Cin, H, W]`, weight
/// `[Cout, Cin/groups, kH, kW]`.
pub fn conv(x: &[usize], w: &[usize], groups: usize) -> Result<Vec<usize>, String> {
    if x.len() != 4 || w.len() != 4 {
        return Err(format!(
            "conv needs rank-4 x and weight, got {x:?} and {w:?}"
        ));
    }
    if groups == 0 || !x[1].is_multiple_of(groups) || !w[0].is_multiple_of(groups) {
        return Err(format!(
            "conv groups {groups} must divide input channels {} and output channels {}",
            x[1], w[0]
        ));
    }
    if w[1] * groups != x[1] {
        return Err(format!(
            "conv weight {w:?} expects {} input channels, x {x:?} has {}",
            w[1] * groups,
            x[1]
        ));
    }
    if w[2] > x[2] || w[3] > x[3] {
        return Err(format!("conv kernel {w:?} is larger than the input {x:?}"));
    }
    Ok(vec![x[0], w[0], x[2] - w[2] + 1, x[3] - w[3] + 1])
}

/// Sum over `axes`, keeping them as size 1 or dropping them.
pub fn reduce(x: &[usize], axes: &[i64], keep: bool) -> Result<Vec<usize>, String> {
    let mut ax = Vec::new();
    for &a in axes {
        let a = axis(a, x.len())?;
        if ax.contains(&a) {
            return Err(format!("axis {a} listed twice"));
        }
        ax.push(a);
    }
    Ok(x.iter()
        .enumerate()
        .filter_map(|(i, &d)| match (ax.contains(&i), keep) {
            (true, true) => Some(1),
            (true, false) => None,
            (false, _) => Some(d),
        })
        .collect())
}

/// Row-major reshape; the element count must not change. No `-1` wildcards (the generators
/// always spell the shape).
pub fn reshape(x: &[usize], shape: &[i64]) -> Result<Vec<usize>, String> {
    if shape.iter().any(|&d| d <= 0) {
        return Err(format!("reshape target {shape:?} must have positive sizes"));
    }
    let out: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let count = |s: &[usize]| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let (a, b) = (count(x), count(&out));
    if a.is_none() || a != b {
        return Err(format!(
            "cannot reshape {x:?} ({} elements) to {out:?} ({} elements)",
            a.map_or("too many".into(), |v| v.to_string()),
            b.map_or("too many".into(), |v| v.to_string())
        ));
    }
    Ok(out)
}

/// Axis permutation.
pub fn transpose(x: &[usize], perm: &[i64]) -> Result<Vec<usize>, String> {
    if perm.len() != x.len() {
        return Err(format!("perm {perm:?} does not match rank {}", x.len()));
    }
    let mut seen = vec![false; x.len()];
    let mut out = Vec::with_capacity(x.len());
    for &p in perm {
        let a = axis(p, x.len())?;
        if seen[a] {
            return Err(format!("perm {perm:?} is not a permutation"));
        }
        seen[a] = true;
        out.push(x[a]);
    }
    Ok(out)
}

/// `x[b0:b0+s0, …]`, bounds-checked; sizes must be positive.
pub fn slice(x: &[usize], begin: &[i64], size: &[i64]) -> Result<Vec<usize>, String> {
    if begin.len() != x.len() || size.len() != x.len() {
        return Err(format!(
            "slice begin {begin:?} / size {size:?} do not match rank {}",
            x.len()
        ));
    }
    let mut out = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        let (b, s) = (begin[i], size[i]);
        if b < 0 || s <= 0 || (b + s) as u64 > x[i] as u64 {
            return Err(format!(
                "slice begin {begin:?} size {size:?} is outside {x:?} (axis {i})"
            ));
        }
        out.push(s as usize);
    }
    Ok(out)
}

/// Concatenation along `axis`: every other axis must agree.
pub fn concat(xs: &[&[usize]], ax: i64) -> Result<Vec<usize>, String> {
    let Some(first) = xs.first() else {
        return Err("concat of nothing".into());
    };
    let a = axis(ax, first.len())?;
    let mut out = first.to_vec();
    for s in &xs[1..] {
        if s.len() != first.len()
            || s.iter()
                .zip(first.iter())
                .enumerate()
                .any(|(i, (p, q))| i != a && p != q)
        {
            return Err(format!(
                "concat along axis {a}: {s:?} does not match {first:?}"
            ));
        }
        out[a] += s[a];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(
            broadcast(&[1, 8, 4, 4], &[1, 1, 4, 4]).unwrap(),
            vec![1, 8, 4, 4]
        );
        assert_eq!(broadcast(&[3, 1], &[]).unwrap(), vec![3, 1]);
        assert!(broadcast(&[2, 3], &[3, 2]).is_err());
        assert_eq!(
            matmul(&[1, 2, 5, 3], &[1, 2, 4, 3], false, true).unwrap(),
            vec![1, 2, 5, 4]
        );
        assert_eq!(
            matmul(&[1, 1, 3, 5], &[1, 1, 3, 7], true, false).unwrap(),
            vec![1, 1, 5, 7]
        );
        assert!(matmul(&[1, 1, 3, 5], &[1, 1, 3, 7], false, false).is_err());
        assert_eq!(
            conv(&[1, 8, 1, 16], &[4, 8, 1, 1], 1).unwrap(),
            vec![1, 4, 1, 16]
        );
        assert!(conv(&[1, 8, 1, 16], &[4, 6, 1, 1], 1).is_err());
        assert_eq!(
            reduce(&[1, 8, 1, 16], &[1], true).unwrap(),
            vec![1, 1, 1, 16]
        );
        assert_eq!(reduce(&[1, 8, 1, 16], &[-1], false).unwrap(), vec![1, 8, 1]);
        assert!(reshape(&[1, 8, 1, 16], &[1, 2, 4, 15]).is_err());
        assert_eq!(
            transpose(&[1, 2, 3, 4], &[0, 1, 3, 2]).unwrap(),
            vec![1, 2, 4, 3]
        );
        assert!(slice(&[1, 8, 1, 16], &[0, 4, 0, 0], &[1, 5, 1, 16]).is_err());
        assert_eq!(
            concat(&[&[1, 2, 1, 4], &[1, 3, 1, 4]], 1).unwrap(),
            vec![1, 5, 1, 4]
        );
        assert!(concat(&[&[1, 2, 1, 4], &[1, 3, 1, 5]], 1).is_err());
    }
}
