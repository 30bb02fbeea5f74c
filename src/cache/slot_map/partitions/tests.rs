//! Tests of [`PartitionedSlotMap`]: partitions against one map, undo, passes resolved on
//! the GPU.
use super::bits::{count_bits, set_bits};
use super::*;
use hotrow_workloads::Rng;

/// Random streams, batches both under and over the capacity, through 1-8 partitions on
/// the parallel path: every pass serves a non-empty prefix, each served position's id
/// sits in the slot reported, slots are in range and never shared, misses are distinct.
#[test]
fn partitions_serve_passes_consistently() {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(3);
    eprintln!("seed {s}");
    let mut rng = Rng::new(s);
    for round in 0..12 {
        let rows = 20_000 + rng.below(30_000) as usize;
        let cap = 4096 + rng.below(8192) as usize;
        let policy = [
            EvictionPolicy::Clock,
            EvictionPolicy::Lru,
            EvictionPolicy::TinyLfu,
        ][round % 3];
        let mut map = PartitionedSlotMap::new(rows, cap, policy, 1 << (round % 4));
        let want = (1usize << (round % 4)).min(cap / 1024);
        assert_eq!(
            map.partitions(),
            1 << (usize::BITS - 1 - want.leading_zeros())
        );
        let mut plan = PassPlan::default();
        let hot: Vec<u32> = (0..3000).map(|_| rng.below(rows as u64) as u32).collect();
        for _ in 0..12 {
            let n = 4096 + rng.below(3 * cap as u64) as usize;
            let ids: Vec<u32> = (0..n)
                .map(|_| {
                    if rng.below(2) == 0 {
                        hot[rng.below(3000) as usize]
                    } else {
                        rng.below(rows as u64) as u32
                    }
                })
                .collect();
            let mut start = 0;
            while start < ids.len() {
                let done = map.resolve(&ids[start..], &mut plan);
                assert!(done >= 1);
                assert_eq!(plan.slots.len(), done);
                for (k, &id) in ids[start..start + done].iter().enumerate() {
                    let slot = plan.slots[k];
                    if slot as usize >= cap {
                        // TinyLFU: a transient slot, past every partition's own
                        assert!((slot as usize) < map.slots());
                        assert_eq!(map.slot_of(id), None, "transient id {id} resident");
                        continue;
                    }
                    assert_eq!(
                        map.slot_of(id),
                        Some(slot),
                        "{policy:?}: id {id} not in its slot (seed {s})"
                    );
                }
                let mut ms: Vec<u32> = plan.misses.iter().map(|m| m.1).collect();
                ms.sort_unstable();
                ms.dedup();
                assert_eq!(
                    ms.len(),
                    plan.misses.len(),
                    "a slot filled twice in one pass"
                );
                for &(id, slot) in &plan.misses {
                    let transient = slot as usize >= cap;
                    assert_eq!(map.slot_of(id), (!transient).then_some(slot));
                }
                map.check_invariants().unwrap();
                start += done;
            }
            assert!(map.len() <= cap);
        }
        let resident = map.resident();
        assert_eq!(resident.len(), map.len());
        let mut slots: Vec<u32> = resident
            .iter()
            .map(|&id| map.slot_of(id).unwrap())
            .collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), resident.len(), "two ids share a slot");
    }
}

/// A failed pass undone over partitions (passes resolved on the host and on the GPU, merged in parallel
/// or not): forgetting its misses and restoring its evictions gives back the map it
/// started from, slot for slot.
#[test]
fn a_failed_pass_undone_leaves_the_partitions_as_they_were() {
    let mut rng = Rng::new(29);
    let (rows, cap) = (60_000usize, 16_384usize);
    let mut map = PartitionedSlotMap::new(rows, cap, EvictionPolicy::Clock, 4);
    let mut plan = PassPlan::default();
    let words = cap.div_ceil(32);
    for round in 0..24 {
        let n = 2000 + rng.below(9000) as usize;
        let ids: Vec<u32> = (0..n).map(|_| rng.below(rows as u64) as u32).collect();
        let before: Vec<Option<u32>> = (0..rows as u32).map(|id| map.slot_of(id)).collect();
        if round % 2 == 0 {
            map.resolve(&ids, &mut plan);
        } else {
            let missing: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|&id| map.slot_of(id).is_none())
                .collect();
            let touched = vec![0u32; words];
            if !map.resolve_on_gpu(&touched, &missing, usize::MAX, &mut plan, &|_| {}) {
                continue;
            }
        }
        if round % 3 == 0 {
            continue; // kept
        }
        map.forget(&plan.misses);
        let back = map.restore(&plan.evicted, &plan.evicted_slots);
        assert_eq!(back, plan.evicted.len(), "round {round}");
        let after: Vec<Option<u32>> = (0..rows as u32).map(|id| map.slot_of(id)).collect();
        assert!(after == before, "round {round}: the map changed");
        map.check_invariants().unwrap();
    }
}

/// One partition is exactly a single SlotMap.
#[test]
fn one_partition_is_a_slot_map() {
    let mut rng = Rng::new(11);
    let mut a = PartitionedSlotMap::new(5000, 700, EvictionPolicy::Lru, 8); // 700 < 2048: 1 part
    let mut b = SlotMap::new(5000, 700, EvictionPolicy::Lru);
    assert_eq!(a.partitions(), 1);
    let (mut pa, mut pb) = (PassPlan::default(), PassPlan::default());
    for _ in 0..30 {
        let ids: Vec<u32> = (0..600).map(|_| rng.below(5000) as u32).collect();
        assert_eq!(a.resolve(&ids, &mut pa), b.resolve(&ids, &mut pb));
        assert_eq!(pa.slots, pb.slots);
        assert_eq!(pa.misses, pb.misses);
    }
    assert_eq!(a.resident(), b.resident());
}

#[test]
fn set_bits_and_count_bits_match_a_plain_scan() {
    let mut rng = Rng::new(5);
    for _ in 0..200 {
        let words: Vec<u32> = (0..1 + rng.below(6))
            .map(|_| rng.next_u64() as u32 & rng.next_u64() as u32)
            .collect();
        let total = words.len() as u32 * 32;
        let start = rng.below(total as u64) as u32;
        let len = rng.below((total - start) as u64 + 1) as u32;
        let want: Vec<u32> = (start..start + len)
            .filter(|&b| words[(b / 32) as usize] >> (b % 32) & 1 == 1)
            .map(|b| b - start)
            .collect();
        assert_eq!(set_bits(&words, start, len).collect::<Vec<_>>(), want);
        assert_eq!(count_bits(&words, start, len), want.len());
    }
}

/// Passes resolved on the GPU: touched slots are pinned and counted as hits, missing ids (with
/// repeats) get distinct free or evicted slots never among the touched ones, and a pass
/// that might not fit is refused with nothing changed.
#[test]
fn gpu_resolved_passes_pin_touched_slots_and_refuse_what_does_not_fit() {
    let mut rng = Rng::new(17);
    // A small map, then one whose passes merge their partitions in parallel.
    for (cap, most) in [(4096usize, 600u64), (16_384, 3000)] {
        gpu_resolved_passes_on(&mut rng, cap, most);
    }
}

fn gpu_resolved_passes_on(rng: &mut Rng, cap: usize, most: u64) {
    let rows = 50_000usize;
    let mut map = PartitionedSlotMap::new(rows, cap, EvictionPolicy::Clock, 4);
    let mut plan = PassPlan::default();
    let words = cap.div_ceil(32);
    for round in 0..40 {
        let before: std::collections::HashSet<u32> = map.resident().into_iter().collect();
        // Touch a random third of the resident rows, miss a few hundred others.
        let resident = map.resident();
        let mut touched = vec![0u32; words];
        let mut pinned = Vec::new();
        for &id in &resident {
            if rng.below(3) == 0 {
                let s = map.slot_of(id).unwrap();
                touched[(s / 32) as usize] |= 1 << (s % 32);
                pinned.push((id, s));
            }
        }
        let missing: Vec<u32> = (0..1 + rng.below(most))
            .map(|_| rng.below(rows as u64) as u32)
            .filter(|&id| map.slot_of(id).is_none())
            .flat_map(|id| [id, id]) // repeats
            .collect();
        assert!(map.resolve_on_gpu(&touched, &missing, usize::MAX, &mut plan, &|_| {}));
        assert_eq!(plan.hits, pinned.len() as u64, "round {round}");
        for &(id, s) in &pinned {
            assert_eq!(
                map.slot_of(id),
                Some(s),
                "a touched row stays (round {round})"
            );
        }
        let mut distinct = missing.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(plan.misses.len(), distinct.len());
        for &(id, s) in &plan.misses {
            assert_eq!(map.slot_of(id), Some(s));
            assert!(touched[(s / 32) as usize] >> (s % 32) & 1 == 0);
        }
        assert_eq!(plan.evicted.len() as u64, plan.evictions);
        // Evicted: resident before, and gone now unless the pass loaded it again.
        let loaded: std::collections::HashSet<u32> = plan.misses.iter().map(|m| m.0).collect();
        for &id in &plan.evicted {
            assert!(before.contains(&id), "round {round}: {id} was not resident");
            assert!(
                map.slot_of(id).is_none() || loaded.contains(&id),
                "round {round}: evicted {id} still resident"
            );
        }
        map.check_invariants().unwrap();
    }
    // Too many misses for one upload, or for a partition: refused, nothing changed.
    let before = map.resident();
    let missing: Vec<u32> = (0..rows as u32)
        .filter(|&id| map.slot_of(id).is_none())
        .collect();
    let touched = vec![0u32; words];
    assert!(!map.resolve_on_gpu(&touched, &missing[..10], 5, &mut plan, &|_| {}));
    assert!(!map.resolve_on_gpu(
        &touched,
        &missing[..cap + 4],
        usize::MAX,
        &mut plan,
        &|_| {}
    ));
    assert_eq!(map.resident(), before);
}

/// TinyLFU over several partitions: their windows are tuned as one (every partition's
/// window stays the same share of its slots), and a hot set that moves opens them.
#[test]
fn partitions_tune_their_windows_together() {
    use hotrow_workloads::ZipfIds;
    let mut rng = Rng::new(0x51DE);
    let rows = 200_000;
    let mut map = PartitionedSlotMap::new(rows, 16_384, EvictionPolicy::TinyLfu, 8);
    assert_eq!(map.partitions(), 8);
    let mut plan = PassPlan::default();
    let shares =
        |map: &PartitionedSlotMap| -> Vec<usize> { map.parts.iter().map(|p| p.window()).collect() };
    let mut opened = false;
    for k in 0..120u64 {
        let ids = ZipfIds::new(rows, 1.05, 7 + k / 40).batch(4_096, &mut rng);
        let mut at = 0;
        while at < ids.len() {
            at += map.resolve(&ids[at..], &mut plan);
        }
        let w = shares(&map);
        let (lo, hi) = (w.iter().min().unwrap(), w.iter().max().unwrap());
        assert!(hi - lo <= 1, "batch {k}: windows {w:?}");
        opened |= k > 40 && map.window() > 16_384 / 2;
    }
    assert!(opened, "the windows never opened after the hot set moved");
    map.check_invariants().unwrap();
}
