//! The offline optimum (Belady's MIN) of a cache served batch by batch, the ceiling any
//! eviction or admission policy is measured against: after each batch the cache keeps the
//! rows whose next use comes soonest, among those it held and those the batch read (a row
//! it does not keep was still served: bypass). Needs the whole trace, so it is a sizing
//! tool's, not a cache's.

use std::collections::BTreeSet;

use crate::batch::check_ids;
use crate::error::Result;

/// Hits and references of the optimum with `capacity` rows over `batches` of ids below
/// `rows` (each batch's distinct ids are its references, as a cache counts them; repeats
/// within a batch are one reference). Per batch, the misses (rows uploaded) go to
/// `misses` when given. An id not below `rows` is
/// [`crate::HotrowError::IdOutOfRange`] (its position within its batch).
///
/// ```
/// let batches = vec![vec![1, 2, 3], vec![1, 2, 4], vec![3, 1]];
/// // two rows: the optimum keeps 1 and 2 (both used next): 1, 2, then 1 hit
/// assert_eq!(hotrow::sizing::optimal_hits(&batches, 5, 2, None)?, (3, 8));
/// assert!(hotrow::sizing::optimal_hits(&batches, 4, 2, None).is_err());
/// # Ok::<(), hotrow::HotrowError>(())
/// ```
pub fn optimal_hits(
    batches: &[Vec<u32>],
    rows: usize,
    capacity: usize,
    mut misses: Option<&mut Vec<u64>>,
) -> Result<(u64, u64)> {
    for b in batches {
        check_ids(b, rows)?;
    }
    // Each batch's distinct ids, and the batch of each one's next use (u32::MAX: never).
    let mut stamp = vec![u32::MAX; rows];
    let distinct: Vec<Vec<u32>> = batches
        .iter()
        .enumerate()
        .map(|(b, ids)| {
            ids.iter()
                .copied()
                .filter(|&id| {
                    let fresh = stamp[id as usize] != b as u32;
                    stamp[id as usize] = b as u32;
                    fresh
                })
                .collect()
        })
        .collect();
    let mut next_use = vec![u32::MAX; rows];
    let mut next: Vec<Vec<u32>> = vec![Vec::new(); batches.len()];
    for b in (0..batches.len()).rev() {
        next[b] = distinct[b]
            .iter()
            .map(|&id| std::mem::replace(&mut next_use[id as usize], b as u32))
            .collect();
    }
    // Resident rows by next use (the furthest leaves first); a resident row's key is its
    // next use, which is the current batch when the batch reads it.
    let mut resident: BTreeSet<(u32, u32)> = BTreeSet::new();
    let mut is_resident = vec![false; rows];
    let (mut hits, mut refs) = (0u64, 0u64);
    for (b, ids) in distinct.iter().enumerate() {
        let mut missed = 0u64;
        for (&id, &after) in ids.iter().zip(&next[b]) {
            refs += 1;
            if is_resident[id as usize] {
                hits += 1;
                resident.remove(&(b as u32, id));
            } else {
                missed += 1;
                is_resident[id as usize] = true;
            }
            resident.insert((after, id));
        }
        while resident.len() > capacity {
            let (_, id) = resident.pop_last().expect("over capacity");
            is_resident[id as usize] = false;
        }
        if let Some(m) = misses.as_deref_mut() {
            m.push(missed);
        }
    }
    Ok((hits, refs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EvictionPolicy, PassPlan, SlotMap};
    use hotrow_workloads::{Rng, ZipfIds};

    /// Hits of the library's own slot map over the batches: each batch's distinct ids
    /// less the rows it uploaded (a batch bigger than the cache, served in several
    /// passes, may upload a row twice).
    fn slot_map_hits(batches: &[Vec<u32>], rows: usize, cap: usize, p: EvictionPolicy) -> u64 {
        let mut map = SlotMap::new(rows, cap, p);
        let mut plan = PassPlan::default();
        let mut hits = 0;
        for ids in batches {
            let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len() as u64;
            let (mut at, mut uploads) = (0, 0u64);
            while at < ids.len() {
                at += map.resolve(&ids[at..], &mut plan);
                uploads += plan.misses.len() as u64;
            }
            hits += distinct - uploads.min(distinct);
        }
        hits
    }

    /// The optimum never does worse than the library's policies, counts every distinct
    /// reference once, hits every reuse when everything fits, and misses every reference
    /// of a one-row cache that a batch does not repeat from the last.
    #[test]
    fn the_optimum_bounds_every_policy() {
        let mut rng = Rng::new(0xbe1a ^ std::process::id() as u64);
        for round in 0..8 {
            let rows = 200 + rng.below(3_000) as usize;
            let zipf = ZipfIds::new(rows, 0.8 + rng.unit() * 0.4, rng.next_u64());
            let batch = 1 + rng.below(300) as usize;
            let batches: Vec<Vec<u32>> = (0..40).map(|_| zipf.batch(batch, &mut rng)).collect();
            let distinct: u64 = batches
                .iter()
                .map(|b| b.iter().collect::<std::collections::HashSet<_>>().len() as u64)
                .sum();
            let all: std::collections::HashSet<u32> = batches.iter().flatten().copied().collect();
            for cap in [1usize, rows / 50 + 1, rows / 10 + 1, rows / 3 + 1] {
                let mut misses = Vec::new();
                let (opt, refs) = optimal_hits(&batches, rows, cap, Some(&mut misses)).unwrap();
                assert_eq!(refs, distinct, "round {round}");
                assert_eq!(misses.iter().sum::<u64>(), refs - opt);
                for p in [EvictionPolicy::Lru, EvictionPolicy::Clock] {
                    let h = slot_map_hits(&batches, rows, cap, p);
                    assert!(
                        opt >= h,
                        "round {round} cap {cap} {p:?}: optimum {opt} < {h}"
                    );
                }
            }
            let (opt, refs) = optimal_hits(&batches, rows, all.len(), None).unwrap();
            assert_eq!(refs - opt, all.len() as u64, "only first uses miss");
        }
    }
}
