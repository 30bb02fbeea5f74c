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
