//! One pass resolved on the GPU (`Resolution::Device`): the probe's submission finds the
//! batch's hits and misses in the slot index and comes back (one round trip); the host
//! pins and ages the touched slots and resolves only the missing ids, copying their rows
//! into staging as the partitions resolve (once a miss estimate exists); the pass's
//! submission then uploads the rows, applies the index's changes and has the GPU write the
//! slot list from the index.

use std::time::Instant;

use super::copy_back::CopyBack;
use super::overlap::copy_while_resolving;
use super::slot_index::Probe;
use super::{PassEngine, PassTimes, RecordedPass, Target};
use crate::cache::host_pool::wake_host_pool;
use crate::error::Result;
use crate::table::RowSource;

impl PassEngine {
    /// Resolves all of `ids` in one pass on the GPU and records it, or returns `None`
    /// (having changed nothing but the index's scratch) when the cache has no slot index,
    /// writes no output, or the batch does not fit one such pass: the caller then runs the
    /// host path.
    pub(super) fn gpu_pass<S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
        target: Target<'_>,
    ) -> Result<Option<RecordedPass>> {
        if self.index.is_none()
            || !target.positions()
            || ids.len() as u64 * 4 > self.ctx.max_binding()
        {
            return Ok(None);
        }
        self.before_pass(ids)?;
        if !self.probe(ids)? {
            return Ok(None);
        }
        let index = self.index.as_mut().expect("checked above");
        // As on the host path: with an estimate of the distinct misses, the partitions copy
        // their rows into staging as they resolve; without one (the first batch, whose miss
        // list counts every repeat), resolve first and copy into staging sized exactly.
        let est = index.miss_estimate;
        let room = index.missing.len().min(est + est / 4 + 64);
        let overlapped = est > 0 && !source.remote();
        let lay = self.staging_layout(0, room, target, true);
        let mut times = PassTimes::default();
        let t1 = Instant::now();
        let mut entry = if overlapped {
            Some(self.ring.acquire(&self.ctx, lay.total)?)
        } else {
            None
        };
        times.wait = t1.elapsed();
        let index = self.index.as_mut().expect("checked above");
        let (map, plan, layout, max_misses) =
            (&mut self.map, &mut self.plan, self.layout, self.max_misses);
        let kept = self.copy_back.as_ref().map(CopyBack::kept);
        let (touched, missing) = (&index.touched, &index.missing);
        let (fits, copied) = match entry.as_mut() {
            Some(entry) => {
                let (fits, copied) = entry.write(|bytes| {
                    copy_while_resolving(bytes, &lay, (source, kept), layout, |on_misses| {
                        map.resolve_on_gpu(touched, missing, max_misses, plan, on_misses)
                    })
                })?;
                (fits, Some(copied))
            }
            None => (
                map.resolve_on_gpu(touched, missing, max_misses, plan, &|_| {}),
                None,
            ),
        };
        if !fits {
            return Ok(None); // nothing resolved; the entry goes back to the ring
        }
        let m = self.plan.misses.len();
        index.miss_estimate = m.max(est - est / 16).max(1);
        self.queue_removals();
        times.resolve = t1.elapsed() - times.wait;
        let fit = match copied {
            Some(copied) => self.settle_copy(copied)?,
            None => false,
        };
        let n = ids.len();
        let staged = entry.filter(|_| fit); // (with no room, back to the ring, still mapped)
        let recorded = self.record_or_take_back(|e| match staged {
            Some(entry) => e.record(entry, &lay, n, target, true, times),
            None => e.record_serially(source, n, target, true, times),
        })?;
        Ok(Some(recorded))
    }

    /// The probe of `ids` (one submission and its answer read back); `false` when its miss
    /// list overflowed (the batch then takes the host path).
    fn probe(&mut self, ids: &[u32]) -> Result<bool> {
        let t0 = Instant::now();
        let index = self.index.as_mut().expect("a slot index");
        let Probe {
            commands,
            entry,
            answer,
        } = index.record_probe(&self.ctx, &mut self.ring, ids)?;
        self.submit([commands], Some(entry))?;
        // Woken now, the pool's threads are still looking for work when the answer comes
        // back a fraction of a millisecond later (and woken again then, in case it was late).
        wake_host_pool();
        let index = self.index.as_mut().expect("a slot index");
        index.applied(answer.removals());
        let complete = index.read_probe(&self.ctx, answer)?;
        wake_host_pool();
        self.stats.probe_time += t0.elapsed();
        Ok(complete)
    }
}
