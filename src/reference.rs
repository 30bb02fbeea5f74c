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

/// Hits and references of an exact LRU cache of `capacity` rows (at least 1) updated
/// batch by batch, as a cache counts them: a batch's distinct ids are its references, they
/// hit when resident as the batch arrived, then become the most recent in their batch
/// order. The oracle of the miss-ratio curve and of the policies' simulations.
///
/// ```
/// let batches = vec![vec![1, 2, 1], vec![2, 3], vec![1, 2]];
/// // two rows: after [2, 3], 1 is gone and 2 stays
/// assert_eq!(hotrow::reference::batch_lru_hits(&batches, 2), (2, 6));
/// ```
pub fn batch_lru_hits(batches: &[Vec<u32>], capacity: usize) -> (u64, u64) {
    let cap = std::num::NonZeroUsize::new(capacity.max(1)).expect("at least 1");
    let mut lru = lru::LruCache::<u32, ()>::new(cap);
    let (mut hits, mut refs) = (0u64, 0u64);
    for b in batches {
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<u32> = b.iter().copied().filter(|&id| seen.insert(id)).collect();
        refs += distinct.len() as u64;
        hits += distinct.iter().filter(|id| lru.contains(id)).count() as u64;
        for id in distinct {
            lru.put(id, ());
        }
    }
    (hits, refs)
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

/// The gradient of `sum(out * grad)` with respect to each row a lookup read
/// (`out[p] = table[ids[p]]`, `grad` row-major, `dim` per position): `(id, gradient)` for
/// each distinct id, ascending, the positions of an id summed in f64.
pub fn lookup_grads(dim: usize, ids: &[u32], grad: &[f32]) -> Vec<(u32, Vec<f64>)> {
    let mut by_id = std::collections::BTreeMap::<u32, Vec<f64>>::new();
    for (p, &id) in ids.iter().enumerate() {
        let g = by_id.entry(id).or_insert_with(|| vec![0.0; dim]);
        for (acc, &v) in g.iter_mut().zip(&grad[p * dim..(p + 1) * dim]) {
            *acc += v as f64;
        }
    }
    by_id.into_iter().collect()
}

/// The gradient of `sum(out * grad)` with respect to each row pooled bags read (`out` as
/// [`bags`] computes it over `table`, `grad` one row per bag): `(id, gradient)` for each
/// distinct id of a non-empty bag, ascending. Sum and mean spread a bag's gradient over its
/// positions (times the position's weight, over the bag's length for mean); max sends
/// each column's gradient to the first position holding the bag's maximum there.
pub fn bags_grads(
    table: &[f64],
    dim: usize,
    ids: &[u32],
    offsets: &[u32],
    mode: u32,
    weights: Option<&[f32]>,
    grad: &[f32],
) -> Vec<(u32, Vec<f64>)> {
    let mut by_id = std::collections::BTreeMap::<u32, Vec<f64>>::new();
    for b in 0..offsets.len() {
        let start = offsets[b] as usize;
        let end = offsets.get(b + 1).map_or(ids.len(), |&e| e as usize);
        let gb = &grad[b * dim..(b + 1) * dim];
        if mode == 2 {
            for (c, &g) in gb.iter().enumerate() {
                let row = |j: usize| table[ids[j] as usize * dim + c];
                let Some(best) = (start..end).reduce(|a, j| if row(j) > row(a) { j } else { a })
                else {
                    continue;
                };
                by_id.entry(ids[best]).or_insert_with(|| vec![0.0; dim])[c] += g as f64;
            }
            continue;
        }
        for j in start..end {
            let mut scale = weights.map_or(1.0, |w| w[j] as f64);
            if mode == 1 {
                scale /= (end - start) as f64;
            }
            let g = by_id.entry(ids[j]).or_insert_with(|| vec![0.0; dim]);
            for (acc, &v) in g.iter_mut().zip(gb) {
                *acc += scale * v as f64;
            }
        }
    }
    by_id.into_iter().collect()
}

/// The gradient of `sum(out * grad)` with respect to each candidate row of
/// [`scores`] (`out[i][j] = <q[i], table[cand[j]]>`, `grad` `m x cand.len()`): row
/// `cand[j]` gets `sum_i grad[i][j] * q[i]`, repeats summed; `(id, gradient)` ascending.
pub fn scores_grads(dim: usize, q: &[f32], cand: &[u32], grad: &[f32]) -> Vec<(u32, Vec<f64>)> {
    let m = q.len() / dim;
    let n = cand.len();
    let mut by_id = std::collections::BTreeMap::<u32, Vec<f64>>::new();
    for (j, &id) in cand.iter().enumerate() {
        let g = by_id.entry(id).or_insert_with(|| vec![0.0; dim]);
        for i in 0..m {
            let w = grad[i * n + j] as f64;
            for (acc, &v) in g.iter_mut().zip(&q[i * dim..(i + 1) * dim]) {
                *acc += w * v as f64;
            }
        }
    }
    by_id.into_iter().collect()
}

/// The gradient of `sum(out * grad)` with respect to each row of [`combine`]
/// (`out[i] = sum_p x[i][p] * table[ids[p]]`, `grad` `m x dim`): row `ids[p]` gets
/// `sum_i x[i][p] * grad[i]`, repeats summed; `(id, gradient)` ascending.
pub fn combine_grads(dim: usize, x: &[f32], ids: &[u32], grad: &[f32]) -> Vec<(u32, Vec<f64>)> {
    let k = ids.len();
    let m = x.len() / k;
    let mut by_id = std::collections::BTreeMap::<u32, Vec<f64>>::new();
    for (p, &id) in ids.iter().enumerate() {
        let g = by_id.entry(id).or_insert_with(|| vec![0.0; dim]);
        for i in 0..m {
            let w = x[i * k + p] as f64;
            for (acc, &v) in g.iter_mut().zip(&grad[i * dim..(i + 1) * dim]) {
                *acc += w * v as f64;
            }
        }
    }
    by_id.into_iter().collect()
}

/// A plain CPU trainer in f64: the table and its optimizer state, updated as the cache's
/// training updates them (the oracle of the training tests).
#[derive(Clone, Debug)]
pub struct Trainer {
    /// The rows, row-major.
    pub rows: Vec<f64>,
    /// [`crate::Optimizer::state_per_row`] values per row.
    pub state: Vec<f64>,
    /// Values per row.
    pub dim: usize,
    /// The update applied.
    pub optimizer: crate::Optimizer,
    /// Steps applied that updated rows (Adam's `t` of the last one).
    pub steps: u64,
}

impl Trainer {
    /// A trainer starting from `table` (`dim` per row), every state value 0.
    pub fn new(table: &[f32], dim: usize, optimizer: crate::Optimizer) -> Self {
        let n = table.len() / dim;
        Self {
            rows: table.iter().map(|&v| v as f64).collect(),
            state: vec![0.0; n * optimizer.state_per_row(dim)],
            dim,
            optimizer,
            steps: 0,
        }
    }

    /// Applies the optimizer to each `(id, gradient)` once: one step (a step with no
    /// gradient changes nothing, Adam's step count included).
    pub fn apply(&mut self, grads: &[(u32, Vec<f64>)]) {
        let dim = self.dim;
        if grads.is_empty() {
            return;
        }
        self.steps += 1;
        let t = self.steps;
        for (id, g) in grads {
            let row = &mut self.rows[*id as usize * dim..(*id as usize + 1) * dim];
            match self.optimizer {
                crate::Optimizer::Sgd { lr } => {
                    for (w, &gv) in row.iter_mut().zip(g) {
                        *w -= lr as f64 * gv;
                    }
                }
                crate::Optimizer::RowWiseAdagrad { lr, eps } => {
                    let acc = &mut self.state[*id as usize];
                    *acc += g.iter().map(|v| v * v).sum::<f64>() / dim as f64;
                    let step = lr as f64 / (*acc + eps as f64).sqrt();
                    for (w, &gv) in row.iter_mut().zip(g) {
                        *w -= step * gv;
                    }
                }
                crate::Optimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                } => {
                    let (b1, b2) = (beta1 as f64, beta2 as f64);
                    let (bias1, bias2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
                    let state = &mut self.state[*id as usize * 2 * dim..][..2 * dim];
                    let (m, v) = state.split_at_mut(dim);
                    for c in 0..dim {
                        m[c] = b1 * m[c] + (1.0 - b1) * g[c];
                        v[c] = b2 * v[c] + (1.0 - b2) * g[c] * g[c];
                        row[c] -= lr as f64 * (m[c] / bias1) / ((v[c] / bias2).sqrt() + eps as f64);
                    }
                }
            }
        }
    }

    /// The rows rounded to f32.
    pub fn rows_f32(&self) -> Vec<f32> {
        self.rows.iter().map(|&v| v as f32).collect()
    }
}
