//! Batch compaction: distinct ids and the inverse map, in time proportional to the batch.

use crate::error::{HotrowError, Result};

/// Checks every id is `< rows`; the first bad one is reported with its position.
pub(crate) fn check_ids(ids: &[u32], rows: usize) -> Result<()> {
    // A branch-free max first: the common all-valid case is one pass with no early exits.
    let max = ids.iter().copied().max().unwrap_or(0);
    if ids.is_empty() || (max as usize) < rows {
        return Ok(());
    }
    let position = ids
        .iter()
        .position(|&id| id as usize >= rows)
        .unwrap_or_default();
    Err(HotrowError::IdOutOfRange {
        id: ids[position],
        position,
        rows,
    })
}

/// The first NaN or infinite value of `v`, as an error.
pub(crate) fn check_finite(what: &'static str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(position) => Err(HotrowError::NonFinite {
            what,
            position,
            value: v[position],
        }),
        None => Ok(()),
    }
}

/// A batch of ids reduced to its distinct ids (in order of first occurrence) and, for each
/// position of the batch, the index of its id among the distinct ones, so that
/// `distinct[inverse[i]] == ids[i]`.
///
/// Cost is proportional to the batch (an open-addressing hash table sized to the batch and
/// reused across calls), never to the table the ids index.
///
/// ```
/// let b = hotrow::CompactBatch::new(&[7, 3, 7, 9, 3]);
/// assert_eq!(b.distinct(), &[7, 3, 9]);
/// assert_eq!(b.inverse(), &[0, 1, 0, 2, 1]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct CompactBatch {
    distinct: Vec<u32>,
    inverse: Vec<u32>,
    /// (id, distinct index) per bucket; `EMPTY` id marks a free bucket.
    table: Vec<(u32, u32)>,
}

const EMPTY: u32 = u32::MAX;

impl CompactBatch {
    /// Compacts `ids`.
    pub fn new(ids: &[u32]) -> Self {
        let mut b = Self::default();
        b.build(ids);
        b
    }

    /// Compacts `ids`, reusing this value's allocations.
    pub fn build(&mut self, ids: &[u32]) {
        self.distinct.clear();
        self.inverse.clear();
        self.inverse.reserve(ids.len());
        let buckets = (ids.len() * 2).next_power_of_two().max(16);
        self.table.clear();
        self.table.resize(buckets, (EMPTY, 0));
        let shift = 64 - buckets.trailing_zeros();
        let mask = buckets - 1;
        let mut extra: Vec<(u32, u32)> = Vec::new(); // id u32::MAX, which EMPTY cannot hold
        for &id in ids {
            if id == EMPTY {
                let k = match extra.first() {
                    Some(&(_, k)) => k,
                    None => {
                        let k = self.distinct.len() as u32;
                        self.distinct.push(id);
                        extra.push((id, k));
                        k
                    }
                };
                self.inverse.push(k);
                continue;
            }
            let mut b = ((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize;
            loop {
                let (key, k) = self.table[b];
                if key == id {
                    self.inverse.push(k);
                    break;
                }
                if key == EMPTY {
                    let k = self.distinct.len() as u32;
                    self.table[b] = (id, k);
                    self.distinct.push(id);
                    self.inverse.push(k);
                    break;
                }
                b = (b + 1) & mask;
            }
        }
    }

    /// Distinct ids, in order of first occurrence.
    pub fn distinct(&self) -> &[u32] {
        &self.distinct
    }

    /// For each position of the batch, the index of its id in [`CompactBatch::distinct`].
    pub fn inverse(&self) -> &[u32] {
        &self.inverse
    }

    /// Number of positions in the batch.
    pub fn len(&self) -> usize {
        self.inverse.len()
    }

    /// Whether the batch was empty.
    pub fn is_empty(&self) -> bool {
        self.inverse.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotrow_workloads::Rng;

    #[test]
    fn compaction_matches_naive_dedup() {
        let mut rng = Rng::new(0xC0FFEE ^ std::process::id() as u64);
        let mut b = CompactBatch::default();
        for round in 0..50 {
            let n = rng.below(3000) as usize;
            let range = 1 + rng.below(if round % 2 == 0 { 50 } else { 1 << 30 }) as u32;
            let mut ids: Vec<u32> = (0..n).map(|_| rng.below(range as u64) as u32).collect();
            if round == 3 && n > 2 {
                ids[1] = u32::MAX;
                ids[n - 1] = u32::MAX;
            }
            b.build(&ids);
            let mut seen = std::collections::HashMap::new();
            let mut want = Vec::new();
            for &id in &ids {
                seen.entry(id).or_insert_with(|| {
                    want.push(id);
                    want.len() - 1
                });
            }
            assert_eq!(b.distinct(), &want[..]);
            assert_eq!(b.len(), ids.len());
            for (i, &id) in ids.iter().enumerate() {
                assert_eq!(b.distinct()[b.inverse()[i] as usize], id);
            }
        }
    }

    #[test]
    fn check_ids_reports_first_bad_position() {
        assert!(check_ids(&[], 0).is_ok());
        assert!(check_ids(&[0, 4, 2], 5).is_ok());
        match check_ids(&[1, 9, 5, 12], 5) {
            Err(HotrowError::IdOutOfRange { id, position, rows }) => {
                assert_eq!((id, position, rows), (9, 1, 5));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
