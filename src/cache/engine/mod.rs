//! The pass engine: serves a batch as one or more *passes* and hands ops a plain rows view
//! of it. A newcomer can read one pass in order, one file a phase:
//!
//! 1. **resolve** the ids of a window to slots: on the host ([`host_pass`]: the slot map
//!    dedups, pins, evicts), or first on the GPU ([`gpu_pass`]: the slot index's probe finds
//!    the hits, [`slot_index`]); the missed rows are copied into a mapped staging entry
//!    while the map resolves ([`overlap`]) or right after ([`read`]);
//! 2. **stage and record** ([`record`]): the slot lists, params blocks and slot index
//!    changes are written into the same entry ([`stage`] lays it out) while the pass's
//!    commands (copies up, scatter into the slots, index changes, gather) are recorded;
//! 3. **submit or hold**: a lookup's pass is submitted at once ([`PassEngine::serve`]); an
//!    op's is held in [`OpRows`] ([`held`]) and goes in one submission with the op's own
//!    commands, or is taken back if the op fails;
//! 4. **take back** on failure ([`take_back`]): a pass that failed after resolving forgets
//!    its misses and, if it never reached the GPU, restores the rows it evicted;
//! 5. **count** ([`count`]): the pass's and then the batch's counters.
//!
//! Training on the host path adds [`copy_back`]: the dirty rows a pass evicts are copied
//! out in its own submission and kept on the host ([`trained_rows`]), where later passes
//! read them before the row source.
//!
//! A batch with more distinct ids than one pass can hold runs several passes in order; the
//! GPU runs them in submission order, so a pass may evict an earlier pass's rows.

mod copy_back;
mod count;
mod driven;
mod gpu_pass;
mod held;
mod host_pass;
mod op_slots;
mod overlap;
mod prefetched;
mod read;
mod record;
mod slot_index;
mod stage;
mod take_back;
mod trained_rows;

use std::time::Duration;

pub(crate) use copy_back::CopyBack;
pub use driven::DrivenState;
pub(crate) use driven::{fill_host_table, Driven, Written};
pub(crate) use held::{submit_together, OpRows};

use super::slot_map::PartitionedSlotMap;
use super::slot_map::PassPlan;
use super::stats::CacheStats;
use crate::error::{HotrowError, Result};
use crate::gpu::{
    encoder, submit, submit_encoder, GpuContext, GrowBuffer, Launch, RowBuffer, RowLayout,
    StagingEntry, StagingRing,
};
use crate::ops::copy_rows::{self, Direction};
use crate::sizing::Shards;
use crate::table::RowSource;
use slot_index::SlotIndex;

/// Told of every row a pass uploads, and of passes taken back: how a cache of several
/// tables counts uploads by table without the engine knowing its tables.
pub(crate) trait UploadLog: Send {
    /// A pass that stands (submitted or held) uploaded these `(id, slot)` rows.
    fn uploaded(&mut self, misses: &[(u32, u32)]);
    /// The last `rows` logged rows were taken back with their pass.
    fn taken_back(&mut self, rows: usize);
}

/// Where a pass's rows go.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// Only make the rows resident (preload).
    Resident,
    /// Also upload the per-position slot list (for an op that reads through slots).
    SlotsOnly,
    /// Gather the rows into this buffer from this row on.
    Gather(&'a wgpu::Buffer, usize),
}

impl Target<'_> {
    /// Whether the pass writes a slot list (one slot per position).
    fn positions(&self) -> bool {
        !matches!(self, Target::Resident)
    }
}

/// The GPU scratch of the passes, reused from pass to pass.
struct PassBuffers {
    /// The slot of each position.
    pos_slots: GrowBuffer,
    /// The slot of each missed row.
    miss_slots: GrowBuffer,
    /// The missed rows.
    upload: GrowBuffer,
    scatter: Vec<Launch>,
    gather: Vec<Launch>,
    /// Rows of an op's batch gathered in order, when it takes several passes or the slots
    /// are sharded.
    gathered: GrowBuffer,
    /// The missed ids of a pass copied serially.
    miss_ids: Vec<u32>,
}

/// Host time of one pass by phase.
#[derive(Default, Clone, Copy)]
struct PassTimes {
    resolve: Duration,
    wait: Duration,
    copy: Duration,
}

/// A pass resolved, staged and recorded, not yet submitted: its commands, the staging entry
/// they copy from, how many pending slot-index removals it applies, and what it counts once
/// it stands (its plan is the engine's until the next pass).
struct RecordedPass {
    commands: wgpu::CommandBuffer,
    entry: StagingEntry,
    removals: usize,
    times: PassTimes,
    /// Resolved on the GPU.
    on_gpu: bool,
}

pub(crate) struct PassEngine {
    ctx: GpuContext,
    layout: RowLayout,
    slots: RowBuffer,
    map: PartitionedSlotMap,
    /// What the last pass decided (its vectors are reused).
    plan: PassPlan,
    ring: StagingRing,
    buffers: PassBuffers,
    /// The slot index, with resolution on the GPU.
    index: Option<SlotIndex>,
    /// The GPU's own cache state, on the GPU-driven path (every pass is then driven).
    driven: Option<Driven>,
    /// Training on the host path: the dirty marks, the copies of rows leaving, the rows
    /// kept on the host.
    copy_back: Option<CopyBack>,
    /// The online miss-ratio curve of the batches counted, when asked for.
    curve: Option<Shards>,
    /// The copy kernels' params blocks of the pass being recorded.
    copy_params: Vec<copy_rows::CopyParams>,
    max_misses: usize,
    /// Misses a pass resolved on the host is expected to have (a decaying high-water mark);
    /// 0 before any pass.
    miss_estimate: usize,
    stats: CacheStats,
    upload_log: Option<Box<dyn UploadLog>>,
    /// The last prefetch's slot list, kept for the lookup of its ids ([`prefetched`]).
    prefetched: prefetched::Prefetched,
    op_slots: op_slots::OpSlots,
}

impl PassEngine {
    /// `index_rows`: the table's rows when the GPU keeps a slot index (resolution on the
    /// GPU), else `None`.
    pub(crate) fn new(
        ctx: &GpuContext,
        slots: RowBuffer,
        map: PartitionedSlotMap,
        staging_buffers: usize,
        max_upload_bytes: u64,
        index_rows: Option<usize>,
        driven: Option<Driven>,
    ) -> Result<Self> {
        let layout = slots.layout();
        // Build the pass's pipeline now, so a kernel this device cannot run is refused at
        // construction rather than by the first batch.
        copy_rows::prepare(ctx, layout)?;
        // Have the GPU initialise the slots now (wgpu zero-fills a buffer on its first
        // use) rather than inside the first batch, and wait for it.
        let mut enc = encoder(ctx, "hotrow slots init");
        for shard in slots.shards() {
            enc.clear_buffer(shard, 0, None);
        }
        submit_encoder(ctx, enc)?;
        ctx.wait_idle()?;
        let index = index_rows
            .map(|rows| SlotIndex::new(ctx, rows, map.capacity()))
            .transpose()?;
        Ok(Self {
            ctx: ctx.clone(),
            layout,
            slots,
            map,
            plan: PassPlan::default(),
            ring: StagingRing::new(staging_buffers),
            buffers: PassBuffers {
                pos_slots: GrowBuffer::storage("hotrow pass slots"),
                miss_slots: GrowBuffer::storage("hotrow miss slots"),
                upload: GrowBuffer::storage("hotrow uploaded rows"),
                scatter: Vec::new(),
                gather: Vec::new(),
                gathered: GrowBuffer::storage("hotrow op rows"),
                miss_ids: Vec::new(),
            },
            index,
            driven,
            copy_back: None,
            curve: None,
            copy_params: Vec::new(),
            max_misses: ((max_upload_bytes / layout.row_bytes()) as usize).max(1),
            miss_estimate: 0,
            stats: CacheStats::default(),
            upload_log: None,
            prefetched: Default::default(),
            op_slots: Default::default(),
        })
    }

    pub(crate) fn slots(&self) -> &RowBuffer {
        &self.slots
    }

    pub(crate) fn map(&self) -> &PartitionedSlotMap {
        &self.map
    }

    /// The counters; on the GPU-driven path this waits for the passes submitted so far
    /// when one ran since the last call (the GPU keeps what it decided).
    pub(crate) fn stats(&self) -> CacheStats {
        let mut stats = self.stats.clone();
        stats.miss_ratio_curve = self.curve.as_ref().map(|c| c.curve().clone());
        if let Some(d) = &self.driven {
            d.totals()
                .add_to(&self.ctx, d.work(), self.layout.row_bytes(), &mut stats);
        }
        stats
    }

    pub(crate) fn reset_stats(&mut self) {
        self.stats = CacheStats::default();
        if let Some(curve) = self.curve.as_mut() {
            *curve = curve.emptied();
        }
        if let Some(d) = &self.driven {
            d.totals().reset(&self.ctx, d.work());
        }
    }

    /// Estimates the miss-ratio curve of the traffic over a table of `rows` rows from now
    /// on ([`Shards::for_table`]).
    pub(crate) fn estimate_curve(&mut self, rows: usize) {
        self.curve = Some(Shards::for_table(rows));
    }

    /// Has a training cache on the host path copy its changed rows out as they leave.
    pub(crate) fn set_copy_back(&mut self, copy_back: CopyBack) {
        self.copy_back = Some(copy_back);
    }

    /// The host path's training state, for a training cache.
    pub(crate) fn copy_back(&self) -> Option<&CopyBack> {
        self.copy_back.as_ref()
    }

    /// Before a pass over `ids`: training on the host path takes in the rows copied out
    /// so far, waiting only for copies carrying rows of `ids`.
    fn before_pass(&mut self, ids: &[u32]) -> Result<()> {
        match self.copy_back.as_mut() {
            Some(copy_back) => copy_back.before_pass(&self.ctx, ids),
            None => Ok(()),
        }
    }

    /// The GPU-driven path's state, when the cache takes it.
    pub(crate) fn driven(&self) -> Option<&Driven> {
        self.driven.as_ref()
    }

    /// The same, to change.
    pub(crate) fn driven_mut(&mut self) -> Option<&mut Driven> {
        self.driven.as_mut()
    }

    /// Has every uploaded row told to `log` from now on.
    pub(crate) fn set_upload_log(&mut self, log: Box<dyn UploadLog>) {
        self.upload_log = Some(log);
    }

    /// Compares the GPU's slot index with the slot map, row by row; `Ok` without an index.
    pub(crate) fn check_slot_index(&self) -> Result<()> {
        match &self.index {
            Some(index) => index.check_against(&self.ctx, &self.map),
            None => Ok(()),
        }
    }

    /// Most row bytes one pass uploads.
    pub(crate) fn max_upload_bytes(&self) -> u64 {
        self.layout.bytes(self.max_misses)
    }

    /// Device scratch and staging bytes held.
    pub(crate) fn scratch_bytes(&self) -> (u64, u64) {
        let b = &self.buffers;
        (
            b.pos_slots.bytes()
                + b.miss_slots.bytes()
                + b.upload.bytes()
                + b.gathered.bytes()
                + self.index.as_ref().map_or(0, SlotIndex::bytes)
                + self.driven.as_ref().map_or(0, Driven::bytes)
                + self.copy_back.as_ref().map_or(0, CopyBack::device_bytes),
            self.ring.bytes(),
        )
    }

    /// Serves checked, non-empty `ids`: row `i` of the batch lands at row `i` of `out`
    /// (or nowhere: preload). Each pass is submitted as soon as it is recorded.
    pub(crate) fn serve<S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
        out: Option<&wgpu::Buffer>,
    ) -> Result<()> {
        self.ctx.check()?;
        if let Some(out) = out {
            if self.serve_prefetched(ids, out)? {
                return Ok(());
            }
        }
        let target = |start| match out {
            Some(out) => Target::Gather(out, start),
            None => Target::Resident,
        };
        let n = self.first_pass(source, ids, target(0))?;
        // (a lookup's slot list, kept for its backward as an op's: `op_slots.rs`)
        if out.is_some() && n == ids.len() && self.slots.shards().len() == 1 && self.index.is_none()
        {
            self.keep_op_slots(ids.len());
        }
        self.run_remaining_passes(source, ids, n, target)?;
        // (A prefetch's hold lasts until the next batch has been resolved.)
        self.release_hold();
        Ok(())
    }

    /// Ends a prefetch's hold (the batch after it has been resolved).
    fn release_hold(&mut self) {
        self.map.release();
        if let Some(d) = self.driven.as_mut() {
            d.release();
        }
    }

    /// Most positions an op's batch may have and still be served in one pass over
    /// unsharded slots (a training update's chunk of distinct ids).
    pub(crate) fn positions_per_op_pass(&self) -> usize {
        match &self.driven {
            Some(d) => d.max_positions(),
            None => (self.map.capacity() / self.map.partitions()).min(self.max_misses),
        }
        .max(1)
    }

    /// Resolves checked, non-empty `ids` for an op. Common case: one pass covers the batch
    /// and the slots are one buffer; the op then reads the slots through the pass's slot
    /// list, touching only the rows the batch names, and the pass is held in the returned
    /// [`OpRows`] for the op's own submission. Otherwise the rows are gathered, pass by
    /// pass, into a scratch buffer read in order (those passes are submitted as they run;
    /// GPU submission order keeps each pass's rows valid until they are read).
    ///
    /// A batch whose gathered rows would not fit one storage binding, where that may be
    /// needed, is refused before anything changes.
    pub(crate) fn rows_for_op<S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
    ) -> Result<OpRows<'_>> {
        self.ctx.check()?;
        let before = self.stats.clone();
        // Gathered rows are decoded to f32, read with the same element width as the slots
        // (an op sizes its output mapping by it).
        let mut gathered_layout = RowLayout::f32(self.layout.dim())?;
        if gathered_layout.vector_width() != self.layout.vector_width() {
            gathered_layout = gathered_layout.scalar();
        }
        let bytes = gathered_layout.bytes(ids.len());
        let per_pass = self.positions_per_op_pass();
        let sharded = self.slots.shards().len() > 1;
        let may_split = sharded || ids.len() > per_pass;
        if may_split && bytes > self.ctx.max_binding() {
            return Err(HotrowError::ExceedsLimit {
                what: "rows of an op's batch bigger than the cache (split the batch)",
                bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: self.ctx.max_binding(),
            });
        }
        let (n, recorded) = self.resolve_and_record(source, ids, Target::SlotsOnly)?;
        if n == ids.len() {
            self.release_hold();
        }
        if n == ids.len() && !sharded {
            // Held for the op's submission; counted now, and back to `before` if taken back.
            if let Some(pass) = &recorded {
                self.count_pass(pass.times, pass.on_gpu);
            }
            self.count_batch(ids, None);
            self.keep_op_slots(ids.len());
            let held = recorded.map(|pass| held::Held { pass, before });
            return Ok(OpRows::direct(self, held));
        }
        if let Some(pass) = recorded {
            self.send(pass)?;
        }
        let gathered = self.buffers.gathered.get(&self.ctx, bytes)?.clone();
        let pos = self
            .buffers
            .pos_slots
            .current()
            .expect("slot list of the pass")
            .clone();
        let mut enc = encoder(&self.ctx, "hotrow op rows");
        copy_rows::encode(
            &self.ctx,
            &mut enc,
            Direction::Gather,
            &self.slots,
            &pos,
            n,
            &gathered,
            0,
            &mut self.buffers.gather,
            None,
        )?;
        self.submit([enc.finish()], None)?;
        self.run_remaining_passes(source, ids, n, |start| Target::Gather(&gathered, start))?;
        self.release_hold();
        Ok(OpRows::gathered(self, gathered_layout))
    }

    /// The first pass of a batch, submitted at once; returns the positions it served.
    fn first_pass<S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
        target: Target<'_>,
    ) -> Result<usize> {
        let (n, recorded) = self.resolve_and_record(source, ids, target)?;
        if let Some(pass) = recorded {
            self.send(pass)?;
        }
        Ok(n)
    }

    /// One pass over a prefix of `ids`, resolved on the GPU when the cache has a slot
    /// index and the batch fits one such pass, else on the host; returns the positions it
    /// served and the pass recorded (`None`: nothing to send, every row was resident and
    /// no output is written).
    fn resolve_and_record<S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
        target: Target<'_>,
    ) -> Result<(usize, Option<RecordedPass>)> {
        self.forget_prefetched();
        self.forget_op_slots();
        if self.driven.is_some() {
            let (n, pass) = self.driven_pass(ids, target, true)?;
            return Ok((n, Some(pass)));
        }
        if let Some(recorded) = self.gpu_pass(source, ids, target)? {
            return Ok((ids.len(), Some(recorded)));
        }
        self.host_pass(source, ids, target)
    }

    /// Runs the passes after the first (which served `n` positions), each submitted as
    /// recorded, and counts the batch.
    fn run_remaining_passes<'t, S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
        n: usize,
        target: impl Fn(usize) -> Target<'t>,
    ) -> Result<()> {
        if n == ids.len() || self.driven.is_some() {
            let mut start = n;
            while start < ids.len() {
                let (served, pass) = self.driven_pass(&ids[start..], target(start), false)?;
                self.send(pass)?;
                start += served;
            }
            self.count_batch(ids, None);
            return Ok(());
        }
        // A batch bigger than one pass: count its distinct ids and the ids it uploaded at
        // least once (rare, so a plain hash set does).
        let mut uploaded: std::collections::HashSet<u32> =
            self.plan.misses.iter().map(|&(id, _)| id).collect();
        let mut start = n;
        while start < ids.len() {
            let (served, recorded) = self.host_pass(source, &ids[start..], target(start))?;
            if let Some(pass) = recorded {
                self.send(pass)?;
            }
            start += served;
            uploaded.extend(self.plan.misses.iter().map(|&(id, _)| id));
        }
        self.count_batch(ids, Some(uploaded.len() as u64));
        Ok(())
    }

    /// Submits a recorded pass now and counts it. If the submission fails, the pass's
    /// misses leave the map (its evictions stand: its commands reached the queue).
    fn send(&mut self, pass: RecordedPass) -> Result<()> {
        let t = std::time::Instant::now();
        let (times, on_gpu, removals) = (pass.times, pass.on_gpu, pass.removals);
        if let Err(e) = self.submit([pass.commands], Some(pass.entry)) {
            self.take_back(take_back::Reached::Queue);
            return Err(e);
        }
        if let Some(copy_back) = self.copy_back.as_mut() {
            copy_back.sent();
        }
        if let Some(index) = self.index.as_mut() {
            index.applied(removals);
        }
        self.count_pass(times, on_gpu);
        self.stats.submit_time += t.elapsed();
        Ok(())
    }

    /// The engine's one submit path: `commands` in one submission, reading `staged`,
    /// counted in [`CacheStats::submissions`].
    fn submit(
        &mut self,
        commands: impl IntoIterator<Item = wgpu::CommandBuffer>,
        staged: impl IntoIterator<Item = StagingEntry>,
    ) -> Result<wgpu::SubmissionIndex> {
        let sub = submit(&self.ctx, commands, staged)?;
        self.stats.submissions += 1;
        Ok(sub)
    }
}
