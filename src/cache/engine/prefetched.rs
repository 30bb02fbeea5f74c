//! Lookahead without resolving twice: a prefetch resolves its batch once, uploads the rows
//! it lacks, writes the batch's slot list, and keeps that list; the next call, if it is a
//! lookup of the very same ids with nothing in between, gathers through the kept list
//! instead of resolving the batch again (the rows are resident: the prefetch's hold kept
//! them). On the host path resolving 65,536 ids is most of a batch's time; on the
//! GPU-driven path a second pass is a second chain of kernels (find, the sweep, fetch,
//! position): without the kept list, a stream that prefetches each batch would do either
//! twice. On the GPU-driven path the lookup still stamps its slots and counts its hits on the GPU
//! (`touch`), so the counters and CLOCK see it as a batch.
//!
//! The kept list is good only until the next pass of any kind (its buffer is the passes'
//! scratch, and a pass may move rows): every pass forgets it ([`PassEngine::forget_prefetched`]
//! in `resolve_and_record`), and a lookup of other ids resolves as usual.

use super::{PassEngine, Target};
use crate::error::Result;
use crate::gpu::encoder;
use crate::ops::copy_rows::{self, Direction};
use crate::table::RowSource;

/// The last prefetch's batch, when it was resolved in one pass: its ids, its slot list on
/// the GPU (one slot per position; `None` once forgotten), and its distinct rows (all
/// resident then). The ids' vector is reused from prefetch to prefetch.
#[derive(Default)]
pub(super) struct Prefetched {
    ids: Vec<u32>,
    pos: Option<wgpu::Buffer>,
    distinct: u64,
}

impl PassEngine {
    /// Makes checked, non-empty `ids` resident as [`PassEngine::serve`] does with no
    /// output, then holds the rows of its last pass (all of them when the batch fits one
    /// pass) until the next batch has been resolved: the slot map keeps them, or, on the
    /// GPU-driven path, the sweep takes their slots last. A batch served in one pass keeps
    /// its slot list for the lookup of the same ids (module docs).
    pub(crate) fn prefetch<S: RowSource>(&mut self, source: &S, ids: &[u32]) -> Result<()> {
        self.ctx.check()?;
        // Not kept with resolution on the GPU's slot index (it keeps its own lists), nor
        // with admission on the GPU-driven path (a refused row's transient slot is not
        // resident, and the host cannot see which were refused).
        let keep = self.index.is_none() && !self.driven.as_ref().is_some_and(|d| d.admits());
        let target = if keep {
            Target::SlotsOnly
        } else {
            Target::Resident
        };
        let n = self.first_pass(source, ids, target)?;
        // (Rows the host path refused admission sit in transient slots: not kept.)
        let kept = keep && n == ids.len() && self.plan.transient == 0;
        let pos = kept
            .then(|| self.buffers.pos_slots.current().cloned())
            .flatten();
        let distinct = self.plan.distinct();
        self.run_remaining_passes(source, ids, n, |_| Target::Resident)?;
        // (The hold of an earlier prefetch ends: this batch has been resolved.)
        self.release_hold();
        match self.driven.as_mut() {
            Some(d) => d.hold_last_pass(),
            None => self.map.hold_last_pass(),
        }
        if pos.is_some() {
            let p = &mut self.prefetched;
            p.ids.clear();
            p.ids.extend_from_slice(ids);
            p.pos = pos;
            p.distinct = distinct;
        }
        Ok(())
    }

    /// Forgets a kept slot list: a pass is about to run.
    pub(super) fn forget_prefetched(&mut self) {
        self.prefetched.pos = None;
    }

    /// Serves checked, non-empty `ids` into `out` through the kept slot list, when the last
    /// call was the prefetch of these ids; returns whether it did. Counted as a batch whose
    /// distinct rows all hit (no pass: nothing was resolved or uploaded).
    pub(super) fn serve_prefetched(&mut self, ids: &[u32], out: &wgpu::Buffer) -> Result<bool> {
        let Some(pos) = self.prefetched.pos.take() else {
            return Ok(false);
        };
        if self.prefetched.ids != ids {
            return Ok(false);
        }
        let mut enc = encoder(&self.ctx, "hotrow prefetched gather");
        if self.driven.is_some() && !self.encode_touch(&mut enc, &pos, ids.len())? {
            return Ok(false);
        }
        copy_rows::encode(
            &self.ctx,
            &mut enc,
            Direction::Gather,
            &self.slots,
            &pos,
            ids.len(),
            out,
            0,
            &mut self.buffers.gather,
            None,
        )?;
        self.submit([enc.finish()], None)?;
        if self.driven.is_some() {
            // (the GPU counted the hits)
            self.count_batch(ids, None);
        } else {
            if let Some(curve) = self.curve.as_mut() {
                curve.batch(ids);
            }
            let s = &mut self.stats;
            s.batches += 1;
            s.requests += ids.len() as u64;
            s.distinct += self.prefetched.distinct;
            s.hits += self.prefetched.distinct;
        }
        self.release_hold();
        Ok(true)
    }
}
