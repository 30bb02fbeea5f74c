//! One pass resolved on the host: the slot map resolves a window of the batch (at most
//! `max_misses` positions, so a pass's uploads stay bounded) and stops early when every
//! slot is pinned; the rest of the batch is the next pass.
//!
//! Once a pass has run, the next ones are *overlapped*: a staging entry sized for the
//! misses seen so far is taken first, and each partition of the slot map copies its missed
//! rows into it as soon as it has resolved ([`super::overlap`]). A pass with more misses
//! than that room is finished by the serial copy, as the first pass is.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::copy_back::CopyBack;
use super::overlap::{copy_while_resolving, Copied};
use super::take_back::Reached;
use super::{PassEngine, PassTimes, RecordedPass, Target};
use crate::error::Result;
use crate::table::RowSource;

impl PassEngine {
    /// One pass over a prefix of `ids`; returns the positions it served and the pass
    /// recorded (`None` when every row was resident and no output is written).
    pub(super) fn host_pass<S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
        target: Target<'_>,
    ) -> Result<(usize, Option<RecordedPass>)> {
        let window = &ids[..ids.len().min(self.max_misses)];
        self.before_pass(window)?;
        let mut times = PassTimes::default();
        let t0 = Instant::now();
        let mut staged = None;
        // A remote source is read once per pass, after resolution (each call is a round
        // trip), not once per partition while resolving.
        let n = if self.miss_estimate > 0 && !source.remote() {
            let est = self.miss_estimate;
            let room = (est + est / 4 + 64).min(self.max_misses);
            let positions = if target.positions() { window.len() } else { 0 };
            let lay = self.staging_layout(positions, room, target, false);
            let mut entry = self.ring.acquire(&self.ctx, lay.total)?;
            times.wait = t0.elapsed();
            let t1 = Instant::now();
            let (map, plan, layout) = (&mut self.map, &mut self.plan, self.layout);
            let kept = self.copy_back.as_ref().map(CopyBack::kept);
            let (n, copied) = entry.write(|bytes| {
                copy_while_resolving(bytes, &lay, (source, kept), layout, |on_misses| {
                    map.resolve_with(window, plan, on_misses)
                })
            })?;
            self.queue_removals();
            times.resolve = t1.elapsed();
            // (With no room, the entry goes back to the ring, still mapped.)
            staged = self.settle_copy(copied)?.then_some((entry, lay));
            n
        } else {
            let n = self.map.resolve(window, &mut self.plan);
            self.queue_removals();
            times.resolve = t0.elapsed();
            n
        };
        let m = self.plan.misses.len();
        self.miss_estimate = m.max(self.miss_estimate - self.miss_estimate / 16);
        if m == 0 && !target.positions() {
            self.count_resident_pass(times.resolve);
            return Ok((n, None));
        }
        let recorded = self.record_or_take_back(|e| match staged {
            Some((entry, lay)) => e.record(entry, &lay, n, target, false, times),
            None => e.record_serially(source, n, target, false, times),
        })?;
        Ok((n, Some(recorded)))
    }

    /// What the overlapped copy of the last pass came to: whether every missed row fit and
    /// was copied; a row source's error or panic takes the pass back (the map must not
    /// claim rows that were not copied). The copy's thread time counts only then.
    pub(super) fn settle_copy(&mut self, copied: Copied) -> Result<bool> {
        match copied.outcome {
            Err(e) => {
                self.take_back(Reached::Host);
                Err(e)
            }
            Ok(fit) => {
                self.stats.resolve_copy_thread_time += copied.thread_time;
                Ok(fit)
            }
        }
    }

    /// The slot index (if any) is told of the last pass's evictions as soon as it resolved,
    /// so a pass that fails later leaves them pending.
    pub(super) fn queue_removals(&mut self) {
        if let Some(index) = self.index.as_mut() {
            index.queue_removals(&self.plan.evicted);
        }
    }

    /// Records the resolved pass with `record`; if that fails or unwinds, the pass is taken
    /// back as one that never reached the GPU.
    pub(super) fn record_or_take_back(
        &mut self,
        record: impl FnOnce(&mut Self) -> Result<RecordedPass>,
    ) -> Result<RecordedPass> {
        match catch_unwind(AssertUnwindSafe(|| record(self))) {
            Ok(Ok(pass)) => Ok(pass),
            Ok(Err(e)) => {
                self.take_back(Reached::Host);
                Err(e)
            }
            Err(panic) => {
                self.take_back(Reached::Host);
                resume_unwind(panic)
            }
        }
    }
}
