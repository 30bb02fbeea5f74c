//! Taking a pass back. A pass that fails after resolving must not leave the slot map
//! claiming rows the GPU does not hold: its misses are forgotten. If its commands never
//! reached the queue (a row source failed, a recording failed, a held pass was dropped),
//! the slots still hold the rows it evicted: those go back into the map and their removals
//! from the slot index are dropped, so the batch changed nothing. Otherwise its evictions
//! stand. Evictions are counted only when they stand, so `rows_uploaded - evictions` stays
//! the resident count.

use super::held::Held;
use super::PassEngine;
use crate::cache::slot_map::PartitionedSlotMap;
use crate::cache::slot_map::PassPlan;

/// Where a failed pass got to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Reached {
    /// Its commands never reached the queue: its evictions are undone.
    Host,
    /// Its commands were submitted: its evictions stand.
    Queue,
}

/// Undoes `plan` in `map` as far as `reached` allows; returns how many evicted rows went
/// back into their slots.
pub(super) fn undo(map: &mut PartitionedSlotMap, plan: &PassPlan, reached: Reached) -> usize {
    map.forget(&plan.misses);
    match reached {
        Reached::Host => map.restore(&plan.evicted, &plan.evicted_slots),
        Reached::Queue => 0,
    }
}

impl PassEngine {
    /// Takes back the last pass, which failed having got to `reached`.
    pub(super) fn take_back(&mut self, reached: Reached) {
        self.forget_op_slots();
        let back = undo(&mut self.map, &self.plan, reached);
        if let Some(copy_back) = self.copy_back.as_mut() {
            copy_back.taken_back(&self.ctx, reached == Reached::Host);
        }
        if back > 0 {
            if let Some(index) = self.index.as_mut() {
                let (map, plan) = (&self.map, &self.plan);
                index.undo_removals(&plan.evicted, |k| {
                    map.slot_of(plan.evicted[k]) == Some(plan.evicted_slots[k])
                });
            }
        }
        self.stats.evictions += self.plan.evictions - back as u64;
    }

    /// Takes back a pass held for an op that will not be submitted: its commands are
    /// dropped unsubmitted (its staging entry goes back to the ring still mapped), the pass
    /// is undone as one that never reached the GPU, the upload log forgets its rows and the
    /// counters return to what they were before the op (the submissions that did go, such
    /// as a probe's, stay counted).
    pub(super) fn take_back_held(&mut self, held: Held) {
        let Held { pass, before } = held;
        drop(pass);
        self.forget_op_slots();
        if let Some(log) = self.upload_log.as_mut() {
            log.taken_back(self.plan.misses.len());
        }
        self.take_back(Reached::Host);
        let submissions = self.stats.submissions;
        self.stats = before;
        self.stats.submissions = submissions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::slot_map::EvictionPolicy;

    fn held(map: &PartitionedSlotMap, rows: u32) -> Vec<Option<u32>> {
        (0..rows).map(|id| map.slot_of(id)).collect()
    }

    #[test]
    fn a_pass_that_never_reached_the_gpu_leaves_the_map_as_it_was() {
        let (rows, cap) = (5000u32, 300usize);
        let mut map = PartitionedSlotMap::new(rows as usize, cap, EvictionPolicy::Lru, 1);
        let mut plan = PassPlan::default();
        let first: Vec<u32> = (0..300).collect();
        map.resolve(&first, &mut plan);
        let before = held(&map, rows);
        // a pass that evicts half the cache
        let second: Vec<u32> = (1000..1150).chain(0..20).collect();
        map.resolve(&second, &mut plan);
        assert!(plan.evictions > 0 && !plan.misses.is_empty());
        let back = undo(&mut map, &plan, Reached::Host);
        assert_eq!(back, plan.evicted.len());
        assert_eq!(held(&map, rows), before);
        map.check_invariants().unwrap();
    }

    #[test]
    fn a_submitted_pass_that_failed_keeps_its_evictions_and_forgets_its_misses() {
        let (rows, cap) = (5000u32, 200usize);
        let mut map = PartitionedSlotMap::new(rows as usize, cap, EvictionPolicy::Clock, 1);
        let mut plan = PassPlan::default();
        map.resolve(&(0..200).collect::<Vec<u32>>(), &mut plan);
        map.resolve(&(3000..3100).collect::<Vec<u32>>(), &mut plan);
        let (evicted, misses) = (plan.evicted.clone(), plan.misses.clone());
        assert_eq!(undo(&mut map, &plan, Reached::Queue), 0);
        assert!(evicted.iter().all(|&id| map.slot_of(id).is_none()));
        assert!(misses.iter().all(|&(id, _)| map.slot_of(id).is_none()));
        assert_eq!(map.len(), 200 - evicted.len());
        map.check_invariants().unwrap();
    }
}
