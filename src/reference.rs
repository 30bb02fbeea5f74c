//! Plain CPU implementations of every op: the oracle the GPU results are tested against.
//! Written for clarity, not speed.

/// `out[i] = table[ids[i]]` for a row-major `table` of width `dim`.
pub fn gather(table: &[f32], dim: usize, ids: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let r = id as usize * dim;
        out.extend_from_slice(&table[r..r + dim]);
    }
    out
}

/// Relative error `||a - b|| / ||b||` (0 when both are empty or `b` is zero and `a == b`).
pub fn relative_error(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "relative_error: lengths differ");
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = x as f64 - y;
        num += d * d;
        den += y * y;
    }
    if num.is_nan() {
        return f64::INFINITY;
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

/// Pooled bags in f64: bag `b` is `ids[offsets[b]..offsets[b + 1]]` (last bag to the end);
/// `mode` 0 sum, 1 mean (weighted sum over the bag length), 2 max; empty bags give zeros.
pub fn bags(
    table: &[f32],
    dim: usize,
    ids: &[u32],
    offsets: &[u32],
    mode: u32,
    weights: Option<&[f32]>,
) -> Vec<f64> {
    let mut out = vec![0.0f64; offsets.len() * dim];
    for b in 0..offsets.len() {
        let start = offsets[b] as usize;
        let end = offsets.get(b + 1).map_or(ids.len(), |&e| e as usize);
        let o = &mut out[b * dim..(b + 1) * dim];
        if start == end {
            continue;
        }
        if mode == 2 {
            o.fill(f64::NEG_INFINITY);
        }
        for j in start..end {
            let row = &table[ids[j] as usize * dim..(ids[j] as usize + 1) * dim];
            let w = weights.map_or(1.0, |w| w[j] as f64);
            for (acc, &v) in o.iter_mut().zip(row) {
                if mode == 2 {
                    *acc = acc.max(v as f64);
                } else {
                    *acc += w * v as f64;
                }
            }
        }
        if mode == 1 {
            for acc in o.iter_mut() {
                *acc /= (end - start) as f64;
            }
        }
    }
    out
}

/// `out[i][j] = sum_p q[i][p] * table[cand[j]][p]` in f64 (`q` is `m x dim`).
pub fn scores(table: &[f32], dim: usize, q: &[f32], cand: &[u32]) -> Vec<f64> {
    let m = q.len() / dim;
    let mut out = Vec::with_capacity(m * cand.len());
    for i in 0..m {
        let qi = &q[i * dim..(i + 1) * dim];
        for &c in cand {
            let row = &table[c as usize * dim..(c as usize + 1) * dim];
            out.push(qi.iter().zip(row).map(|(&a, &b)| a as f64 * b as f64).sum());
        }
    }
    out
}

/// `out[i][d] = sum_p x[i][p] * table[ids[p]][d]` in f64 (`x` is `m x ids.len()`).
pub fn combine(table: &[f32], dim: usize, x: &[f32], ids: &[u32]) -> Vec<f64> {
    let k = ids.len();
    let m = x.len() / k;
    let mut out = vec![0.0f64; m * dim];
    for i in 0..m {
        for (p, &id) in ids.iter().enumerate() {
            let w = x[i * k + p] as f64;
            let row = &table[id as usize * dim..(id as usize + 1) * dim];
            for (acc, &v) in out[i * dim..(i + 1) * dim].iter_mut().zip(row) {
                *acc += w * v as f64;
            }
        }
    }
    out
}
