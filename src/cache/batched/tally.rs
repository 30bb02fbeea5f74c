//! Uploads counted by table for a pool of several tables: the engine tells a
//! [`SharedTally`] every row a pass uploads (and the passes it takes back); the
//! table-batched cache counts them by member once per step.

use std::sync::{Arc, Mutex, MutexGuard};

use rayon::prelude::*;

use super::tables::member_of;
use crate::cache::engine::UploadLog;

/// An [`UploadTally`] shared by a width's cache engine (which logs into it) and the
/// table-batched cache (which counts it).
#[derive(Clone)]
pub(super) struct SharedTally(Arc<Mutex<UploadTally>>);

impl SharedTally {
    pub(super) fn new(bases: Vec<u64>) -> Self {
        Self(Arc::new(Mutex::new(UploadTally::new(bases))))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, UploadTally> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl UploadLog for SharedTally {
    fn uploaded(&mut self, misses: &[(u32, u32)]) {
        self.lock().log(misses);
    }

    fn taken_back(&mut self, rows: usize) {
        self.lock().unlog(rows);
    }
}

/// Rows uploaded by a pool of several tables, by table: the engine logs the id of every row
/// a pass uploaded (through [`SharedTally`], its [`UploadLog`]); [`UploadTally::count_logged`]
/// counts them by member (tens of thousands a step, in parallel chunks) while the step's
/// bags are submitted.
pub(super) struct UploadTally {
    /// As [`Tables`]' `bases`.
    bases: Vec<u64>,
    logged: Vec<u32>,
    /// Rows uploaded per member since the caller last took them.
    pub(super) counts: Vec<u64>,
}

impl UploadTally {
    pub(super) fn new(bases: Vec<u64>) -> Self {
        let members = bases.len().saturating_sub(1);
        Self {
            bases,
            logged: Vec::new(),
            counts: vec![0; members],
        }
    }

    /// Logs a pass's uploaded rows (`(id, slot)`).
    pub(super) fn log(&mut self, misses: &[(u32, u32)]) {
        self.logged.extend(misses.iter().map(|&(id, _)| id));
    }

    /// Forgets the last `n` logged ids (their pass was taken back).
    pub(super) fn unlog(&mut self, n: usize) {
        self.logged.truncate(self.logged.len().saturating_sub(n));
    }

    /// Adds the logged ids to `counts`, by member, and empties the log.
    pub(super) fn count_logged(&mut self) {
        let bases = &self.bases;
        let tally = || vec![0u64; bases.len() - 1];
        let counts = self
            .logged
            .par_chunks(1024)
            .fold(tally, |mut counts, ids| {
                for &id in ids {
                    counts[member_of(bases, id)] += 1;
                }
                counts
            })
            .reduce(tally, |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            });
        self.counts
            .iter_mut()
            .zip(&counts)
            .for_each(|(a, b)| *a += b);
        self.logged.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_counted_by_table_and_taken_back_ones_are_not() {
        let mut log = SharedTally::new(vec![0, 10, 15, 40]);
        log.uploaded(&[(0, 1), (9, 2), (10, 3), (39, 4)]);
        log.uploaded(&[(12, 5), (20, 6)]);
        log.taken_back(2); // the last pass (12, 20) was taken back
        log.uploaded(&[(14, 7)]);
        log.lock().count_logged();
        assert_eq!(log.lock().counts, [2, 2, 1]);
        // many, in parallel chunks
        let many: Vec<(u32, u32)> = (0..5000).map(|i| (i % 40, 0)).collect();
        log.uploaded(&many);
        log.lock().count_logged();
        assert_eq!(log.lock().counts, [2 + 1250, 2 + 625, 1 + 3125]);
    }
}
