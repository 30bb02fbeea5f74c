//! Counting: a pass's counters once it stands (submitted, or held for an op), a batch's once
//! all its passes ran. The counts are plain functions of the pass's plan, tested here.

use std::collections::HashSet;
use std::time::Duration;

use super::{PassEngine, PassTimes};
use crate::cache::slot_map::PassPlan;
use crate::cache::stats::CacheStats;

impl PassEngine {
    /// Counts the last pass, which stands, and tells the upload log its rows.
    pub(super) fn count_pass(&mut self, times: PassTimes, on_gpu: bool) {
        if let Some(log) = self.upload_log.as_mut() {
            log.uploaded(&self.plan.misses);
        }
        count_pass(
            &mut self.stats,
            &self.plan,
            self.layout.row_bytes(),
            times,
            on_gpu,
        );
    }

    /// Counts the grouping of a backward's batch: `time` grouping, `waited` of it by a
    /// forward that grouped ahead.
    pub(crate) fn count_grouping(&mut self, time: Duration, waited: Duration) {
        self.stats.group_time += time;
        self.stats.group_wait_time += waited;
    }

    /// Counts a pass that found every row resident and writes no output (nothing to send).
    pub(super) fn count_resident_pass(&mut self, resolve: Duration) {
        self.stats.passes += 1;
        self.stats.resolve_time += resolve;
    }

    /// Counts a batch of `ids`; `uploaded`: the distinct ids uploaded over all passes of a
    /// batch that took several (`None`: the last plan was its only pass).
    /// On the GPU-driven path the GPU counts what it decided: only the batch and its
    /// positions are counted here.
    pub(super) fn count_batch(&mut self, ids: &[u32], uploaded: Option<u64>) {
        if let Some(curve) = self.curve.as_mut() {
            curve.batch(ids);
        }
        if self.driven.is_some() {
            self.stats.batches += 1;
            self.stats.requests += ids.len() as u64;
            return;
        }
        count_batch(&mut self.stats, ids, &self.plan, uploaded);
    }
}

fn count_pass(s: &mut CacheStats, plan: &PassPlan, row_bytes: u64, t: PassTimes, on_gpu: bool) {
    let m = plan.misses.len() as u64;
    s.passes += 1;
    s.device_passes += u64::from(on_gpu);
    s.evictions += plan.evictions;
    s.refused += plan.refused;
    s.transient += plan.transient;
    s.rows_uploaded += m;
    s.bytes_uploaded += m * row_bytes;
    s.resolve_time += t.resolve;
    s.staging_wait_time += t.wait;
    s.copy_time += t.copy;
}

/// `plan`: the batch's only pass when `uploaded` is `None`.
fn count_batch(s: &mut CacheStats, ids: &[u32], plan: &PassPlan, uploaded: Option<u64>) {
    match uploaded {
        None => {
            s.distinct += plan.distinct();
            s.hits += plan.hits;
            s.misses += plan.misses.len() as u64;
        }
        Some(uploaded) => {
            let distinct = ids.iter().copied().collect::<HashSet<u32>>().len() as u64;
            s.distinct += distinct;
            s.misses += uploaded;
            s.hits += distinct - uploaded;
        }
    }
    s.batches += 1;
    s.requests += ids.len() as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(hits: u64, misses: &[(u32, u32)], evicted: &[u32]) -> PassPlan {
        PassPlan {
            slots: Vec::new(),
            misses: misses.to_vec(),
            hits,
            evictions: evicted.len() as u64,
            evicted: evicted.to_vec(),
            evicted_slots: (0..evicted.len() as u32).collect(),
            ..PassPlan::default()
        }
    }

    #[test]
    fn a_pass_counts_its_uploads_evictions_and_times() {
        let mut s = CacheStats::default();
        let t = PassTimes {
            resolve: Duration::from_micros(3),
            wait: Duration::from_micros(5),
            copy: Duration::from_micros(7),
        };
        count_pass(&mut s, &plan(4, &[(9, 0), (11, 1)], &[2]), 64, t, true);
        count_pass(&mut s, &plan(0, &[(1, 2)], &[]), 64, t, false);
        assert_eq!((s.passes, s.device_passes), (2, 1));
        assert_eq!(
            (s.rows_uploaded, s.bytes_uploaded, s.evictions),
            (3, 192, 1)
        );
        assert_eq!(s.resolve_time, Duration::from_micros(6));
        assert_eq!(s.staging_wait_time, Duration::from_micros(10));
        assert_eq!(s.copy_time, Duration::from_micros(14));
        assert_eq!(
            (s.batches, s.submissions, s.distinct),
            (0, 0, 0),
            "batch counters untouched"
        );
    }

    #[test]
    fn a_batch_counts_distinct_ids_hits_and_misses() {
        let mut s = CacheStats::default();
        // one pass: 3 distinct ids over 5 positions, 1 of them missed
        count_batch(&mut s, &[4, 4, 7, 8, 7], &plan(2, &[(8, 3)], &[]), None);
        assert_eq!(
            (s.batches, s.requests, s.distinct, s.hits, s.misses),
            (1, 5, 3, 2, 1)
        );
        // several passes: the ids uploaded at least once are the misses
        count_batch(&mut s, &[1, 2, 3, 1, 5], &plan(0, &[], &[]), Some(3));
        assert_eq!(
            (s.batches, s.requests, s.distinct, s.hits, s.misses),
            (2, 10, 7, 3, 4)
        );
        assert_eq!(s.hits + s.misses, s.distinct);
    }
}
