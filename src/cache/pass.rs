//! The pass engine: runs the passes of one batch through the slot map, the staging ring
//! and one submission per pass, and hands ops a plain rows view of the batch (the op's
//! kernel then goes in the same submission as the pass that loaded its rows).
//!
//! One pass: resolve a window of ids to slots (the map evicts and pins); copy the missed
//! rows from the row source into a mapped staging buffer beside the pass's slot lists;
//! one submission copies them up, scatters the rows into their slots and (for lookups)
//! gathers the output. If anything fails or unwinds between resolving and submitting, the
//! pass's misses are forgotten, so the map never claims a row the GPU does not hold.
//!
//! With device resolution the GPU keeps a copy of the id -> slot table: a batch's first
//! submission probes it (hits into a bitmap of touched slots, misses into a list), the host
//! reads back only that, resolves the misses, and the second submission uploads their rows,
//! applies the changes to the GPU's table and writes the slot list from it. Every pass that
//! changes the map (on either path) carries its changes to the GPU's table in the same
//! submission; removals of a pass that failed after evicting are kept pending and go with
//! the next submission, before anything reads the table.

use rayon::prelude::*;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::batched::UploadTally;
use super::partitioned::{OnMisses, PartitionedSlotMap};
use super::slot_map::PassPlan;
use super::stats::CacheStats;
use crate::error::{HotrowError, Result};
use crate::gpu::{
    encoder, submit, GpuContext, GrowBuffer, Launch, RowBuffer, RowFormat, RowLayout,
};
use crate::gpu::{map_read_with, StagingRing, TrackedBuffer};
use crate::ops::copy_rows::{self, Direction, PARAMS_BYTES};
use crate::ops::device_map::{self, Kernel, HEADER_WORDS, NOT_RESIDENT};
use crate::ops::RowsView;
use crate::table::RowSource;

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

/// Host time of one pass by stage.
#[derive(Default)]
struct PassTimes {
    wait: Duration,
    copy: Duration,
    submit: Duration,
}

/// The GPU side of a pass: staging ring, device scratch and the launches of its kernels.
struct Uploader {
    ring: StagingRing,
    miss_ids: Vec<u32>,
    pos_slots: GrowBuffer,
    miss_slots: GrowBuffer,
    upload: GrowBuffer,
    scatter: Vec<Launch>,
    gather: Vec<Launch>,
    /// The GPU's id -> slot table and its scratch (device resolution only).
    device: Option<DeviceMap>,
    /// Whether the last pass's commands were submitted or held for an op's submission
    /// (set by [`Uploader::finish`]): a pass that failed before that left the GPU's slots
    /// as they were.
    reached_gpu: bool,
    /// Set by [`PassEngine::rows_for_op`] for its pass: keep the pass's commands back, so
    /// the op that reads the rows submits them with its own (one submission for both).
    hold: bool,
    /// A pass's commands kept back and its staging entry (see `hold`). Present only between
    /// `rows_for_op` returning and the op's [`PassEngine::submit_op`]; every entry point
    /// of the engine submits it first, so no later work can overtake it.
    held: Option<(wgpu::CommandBuffer, usize)>,
    /// The GPU table's removals the held pass carries (device resolution): they become
    /// pending again if the held pass is abandoned ([`PassEngine::abandon_held`]).
    held_pending: Vec<u32>,
}

/// The id -> slot table on the GPU (slot + 1 per table row, 0 when not resident) and the
/// scratch of the probe.
struct DeviceMap {
    slot_of: TrackedBuffer,
    /// The batch's ids (read by the probe and by the slot-list kernel).
    ids: GrowBuffer,
    /// The probe's output: miss count, touched bitmap, miss list.
    probe_out: GrowBuffer,
    readback: GrowBuffer,
    /// (key, value) changes to the table.
    pairs: GrowBuffer,
    probe: Launch,
    flush: Launch,
    remove: Launch,
    insert: Launch,
    position: Launch,
    /// Evicted ids whose removal has not reached the GPU's table: the current pass's
    /// evictions (queued as soon as it resolves, so a pass that fails later keeps them)
    /// after those of failed passes. The next submission applies them before anything
    /// reads the table, and before its own insertions (a pass may evict a row and load it
    /// again, and a failed pass's evicted row may be loaded again by a later one).
    pending: Vec<u32>,
    bitmap_words: u64,
    /// Room of the miss list: a decaying high-water mark of the miss entries per batch.
    miss_room: usize,
    /// Distinct misses a device pass is expected to have (decaying high-water mark; 0
    /// before the first).
    miss_estimate: usize,
    /// The last probe's result on the host: touched bitmap, missing ids (with repeats).
    touched: Vec<u32>,
    missing: Vec<u32>,
}

impl DeviceMap {
    fn new(ctx: &GpuContext, rows: usize, capacity: usize) -> Result<Self> {
        device_map::prepare(ctx)?;
        let rw = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        // A new buffer reads as zeros: every row not resident.
        let usage = rw | wgpu::BufferUsages::COPY_SRC; // read back by the consistency check
        let slot_of = ctx.create_buffer("hotrow GPU slot table", rows as u64 * 4, usage, false)?;
        Ok(Self {
            slot_of,
            ids: GrowBuffer::storage("hotrow probe ids"),
            probe_out: GrowBuffer::new("hotrow probe output", rw | wgpu::BufferUsages::COPY_SRC),
            readback: GrowBuffer::new(
                "hotrow probe readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            pairs: GrowBuffer::storage("hotrow slot table changes"),
            probe: Launch::default(),
            flush: Launch::default(),
            remove: Launch::default(),
            insert: Launch::default(),
            position: Launch::default(),
            pending: Vec::new(),
            bitmap_words: device_map::bitmap_words(capacity),
            miss_room: 0,
            miss_estimate: 0,
            touched: Vec::new(),
            missing: Vec::new(),
        })
    }

    fn bytes(&self) -> u64 {
        self.slot_of.size()
            + self.ids.bytes()
            + self.probe_out.bytes()
            + self.readback.bytes()
            + self.pairs.bytes()
    }
}

pub(crate) struct PassEngine {
    ctx: GpuContext,
    layout: RowLayout,
    slots: RowBuffer,
    map: PartitionedSlotMap,
    plan: PassPlan,
    io: Uploader,
    /// Rows of an op's batch gathered in order, when it takes several passes or the slots
    /// are sharded.
    gathered: GrowBuffer,
    max_misses: usize,
    /// Misses a pass is expected to have (a decaying high-water mark); 0 before any pass.
    miss_estimate: usize,
    pub(crate) stats: CacheStats,
    /// When set, every uploaded row's id is logged, to be counted by table (a
    /// table-batched cache's per-table stats).
    pub(crate) uploads: Option<UploadTally>,
}

/// Forgets the misses of a pass unless disarmed: on an error *and* on unwinding (a
/// panicking row source whose panic the caller catches must not leave phantom rows).
struct ForgetMisses<'a> {
    map: &'a mut PartitionedSlotMap,
    misses: &'a [(u32, u32)],
    armed: bool,
}

impl Drop for ForgetMisses<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.map.forget(self.misses);
        }
    }
}

/// 16-byte alignment of regions inside a staging buffer (vec4 rows, copy alignment).
fn align16(x: u64) -> u64 {
    x.next_multiple_of(16)
}

impl PassEngine {
    /// `device_rows`: the table's rows when the GPU keeps its own id -> slot table (device
    /// resolution), else `None`.
    pub(crate) fn new(
        ctx: &GpuContext,
        slots: RowBuffer,
        map: PartitionedSlotMap,
        staging_buffers: usize,
        max_upload_bytes: u64,
        device_rows: Option<usize>,
    ) -> Result<Self> {
        let layout = slots.layout();
        // Build the pass's pipeline now, so a kernel this device cannot run is refused at
        // construction rather than by the first batch. (It was also meant to shorten the
        // first batch; measured on the H200, it did not: BENCHMARKS.md.)
        copy_rows::prepare(ctx, layout)?;
        // Have the GPU initialise the slots now (wgpu zero-fills a buffer on its first
        // use) rather than inside the first batch, and wait for it.
        let mut enc = encoder(ctx, "hotrow slots init");
        for shard in slots.shards() {
            enc.clear_buffer(shard, 0, None);
        }
        submit(ctx, enc)?;
        ctx.wait_idle()?;
        let device = device_rows
            .map(|rows| DeviceMap::new(ctx, rows, map.capacity()))
            .transpose()?;
        Ok(Self {
            ctx: ctx.clone(),
            layout,
            slots,
            map,
            plan: PassPlan::default(),
            io: Uploader {
                ring: StagingRing::new(staging_buffers),
                miss_ids: Vec::new(),
                pos_slots: GrowBuffer::storage("hotrow pass slots"),
                miss_slots: GrowBuffer::storage("hotrow miss slots"),
                upload: GrowBuffer::storage("hotrow uploaded rows"),
                scatter: Vec::new(),
                gather: Vec::new(),
                device,
                hold: false,
                held: None,
                held_pending: Vec::new(),
                reached_gpu: false,
            },
            gathered: GrowBuffer::storage("hotrow op rows"),
            max_misses: ((max_upload_bytes / layout.row_bytes()) as usize).max(1),
            miss_estimate: 0,
            stats: CacheStats::default(),
            uploads: None,
        })
    }

    pub(crate) fn slots(&self) -> &RowBuffer {
        &self.slots
    }

    pub(crate) fn map(&self) -> &PartitionedSlotMap {
        &self.map
    }

    /// Compares the GPU's id -> slot table (device resolution) with the slot map, row by
    /// row; `Ok` without a GPU table.
    pub(crate) fn check_device_table(&self) -> Result<()> {
        let Some(dev) = &self.io.device else {
            return Ok(());
        };
        let rows = (dev.slot_of.size() / 4) as usize;
        let gpu = crate::gpu::read_f32(&self.ctx, &dev.slot_of, 0, rows)?;
        for (id, v) in gpu.iter().enumerate() {
            let want = self.map.slot_of(id as u32).map_or(NOT_RESIDENT, |s| s + 1);
            let pending = dev.pending.contains(&(id as u32));
            if v.to_bits() != want && !(pending && want == NOT_RESIDENT) {
                return Err(HotrowError::Gpu(format!(
                    "GPU slot table: row {id} holds {} but the slot map says {want}",
                    v.to_bits()
                )));
            }
        }
        Ok(())
    }

    /// Most row bytes one pass uploads.
    pub(crate) fn max_upload_bytes(&self) -> u64 {
        self.layout.bytes(self.max_misses)
    }

    /// Device scratch and staging bytes held.
    pub(crate) fn scratch_bytes(&self) -> (u64, u64) {
        let io = &self.io;
        (
            io.pos_slots.bytes()
                + io.miss_slots.bytes()
                + io.upload.bytes()
                + self.gathered.bytes()
                + io.device.as_ref().map_or(0, DeviceMap::bytes),
            io.ring.bytes(),
        )
    }

    /// Serves checked, non-empty `ids`: row `i` of the batch lands at row `i` of `out`
    /// (or nowhere: preload).
    pub(crate) fn serve<S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
        out: Option<&wgpu::Buffer>,
    ) -> Result<()> {
        self.ctx.check()?;
        self.submit_op(None)?;
        let target = |start| match out {
            Some(out) => Target::Gather(out, start),
            None => Target::Resident,
        };
        let n = match self.device_pass(source, ids, target(0))? {
            Some(n) => n,
            None => self.run_pass(source, ids, target(0))?,
        };
        self.finish_batch(source, ids, n, target)
    }

    /// Resolves checked, non-empty `ids` for an op and returns how it reads row `i` of the
    /// batch. Common case: one pass covers the batch and the slots are one buffer; the op
    /// then reads the slots through the pass's slot list, touching only the rows the batch
    /// names. Otherwise the rows are gathered, pass by pass, into a scratch buffer read in
    /// order; GPU submission order keeps each pass's rows valid until they are read.
    ///
    /// A batch whose gathered rows would not fit one storage binding, where that may be
    /// needed, is refused before anything changes.
    pub(crate) fn rows_for_op<S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
    ) -> Result<RowsView<'_>> {
        self.ctx.check()?;
        self.submit_op(None)?;
        // Gathered rows are decoded to f32, read with the same element width as the slots
        // (an op sizes its output mapping by it).
        let mut gathered_layout = RowLayout::f32(self.layout.dim())?;
        if gathered_layout.vector_width() != self.layout.vector_width() {
            gathered_layout = gathered_layout.scalar();
        }
        let bytes = gathered_layout.bytes(ids.len());
        let per_part = self.map.capacity() / self.map.partitions();
        let may_split = self.slots.shards().len() > 1 || ids.len() > per_part.min(self.max_misses);
        if may_split && bytes > self.ctx.max_binding() {
            return Err(HotrowError::ExceedsLimit {
                what: "rows of an op's batch bigger than the cache (split the batch)",
                bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: self.ctx.max_binding(),
            });
        }
        // The pass's commands are held for the op's submission when it covers the batch
        // (the common case); otherwise they go now, before the passes and the gather
        // after them.
        self.io.hold = true;
        let first = match self.device_pass(source, ids, Target::SlotsOnly) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => self.run_pass(source, ids, Target::SlotsOnly),
            Err(e) => Err(e),
        };
        self.io.hold = false;
        let n = first?;
        let direct = n == ids.len() && self.slots.shards().len() == 1;
        if !direct {
            self.submit_op(None)?;
            let gathered = self.gathered.get(&self.ctx, bytes)?.clone();
            let pos = self
                .io
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
                &mut self.io.gather,
                None,
            )?;
            submit(&self.ctx, enc)?;
            self.stats.submissions += 1;
            self.finish_batch(source, ids, n, |start| Target::Gather(&gathered, start))?;
        } else {
            self.finish_batch(source, ids, n, |_| Target::SlotsOnly)?;
        }
        let pos = self.io.pos_slots.current().expect("slot list of the pass");
        let rows = if direct {
            self.slots.shards().next().expect("one shard")
        } else {
            self.gathered.current().expect("gathered rows")
        };
        Ok(RowsView {
            rows,
            rows_bytes: rows.size(),
            slots: pos,
            slots_bytes: pos.size(),
            identity: !direct,
            layout: if direct { self.layout } else { gathered_layout },
        })
    }

    /// Submits an op's commands (`None`: the op failed before it had any) together with the
    /// pass [`PassEngine::rows_for_op`] held back for it, pass first: one submission.
    /// `None` when nothing was submitted (no op commands and no held pass).
    pub(crate) fn submit_op(
        &mut self,
        op: Option<wgpu::CommandEncoder>,
    ) -> Result<Option<wgpu::SubmissionIndex>> {
        let sub = self
            .io
            .submit_held(&self.ctx, op.map(wgpu::CommandEncoder::finish))?;
        self.stats.submissions += u64::from(sub.is_some());
        Ok(sub)
    }

    /// Takes back the pass [`PassEngine::rows_for_op`] held for an op that will not be
    /// submitted (a table-batched step whose later width failed), so that the call changes
    /// nothing: the commands are dropped unsubmitted (the GPU's slots still hold what they
    /// held; the staging entry, unmapped and never submitted, is replaced at its next use),
    /// the pass is undone as one that failed before reaching the GPU (its misses leave the
    /// map, the rows it evicted go back, its table removals are pending again, its uploads
    /// leave the per-table tally) and the counters return to `before` (taken before the op;
    /// the submissions that did go, such as a device pass's probe, stay counted). Nothing
    /// is done when no pass is held: the op's passes already went to the GPU and stand.
    pub(crate) fn abandon_held(&mut self, before: &CacheStats) {
        let Some((commands, _entry)) = self.io.held.take() else {
            return;
        };
        drop(commands);
        if let Some(dev) = self.io.device.as_mut() {
            // (Empty: the held pass took every pending removal with it.)
            dev.pending.append(&mut self.io.held_pending);
        }
        if let Some(tally) = &mut self.uploads {
            tally.unlog(self.plan.misses.len());
        }
        self.forget_failed(false);
        let submissions = self.stats.submissions;
        self.stats = before.clone();
        self.stats.submissions = submissions;
    }

    /// Runs the passes after the first (which served `n` positions) and counts the batch.
    fn finish_batch<'t, S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
        n: usize,
        target: impl Fn(usize) -> Target<'t>,
    ) -> Result<()> {
        let s = &mut self.stats;
        if n == ids.len() {
            let p = &self.plan;
            s.distinct += p.distinct();
            s.hits += p.hits;
            s.misses += p.misses.len() as u64;
        } else {
            // A batch bigger than one pass: count its distinct ids and the ids it uploaded
            // at least once (rare, so plain hash sets do).
            let mut uploaded: HashSet<u32> = self.plan.misses.iter().map(|&(id, _)| id).collect();
            let mut start = n;
            while start < ids.len() {
                start += self.run_pass(source, &ids[start..], target(start))?;
                uploaded.extend(self.plan.misses.iter().map(|&(id, _)| id));
            }
            let distinct = ids.iter().copied().collect::<HashSet<u32>>().len() as u64;
            let s = &mut self.stats;
            s.distinct += distinct;
            s.misses += uploaded.len() as u64;
            s.hits += distinct - uploaded.len() as u64;
        }
        self.stats.batches += 1;
        self.stats.requests += ids.len() as u64;
        Ok(())
    }

    /// One pass over a prefix of `ids`; returns how many positions it served.
    ///
    /// Once a pass has run, the next ones are *overlapped*: a staging buffer sized for the
    /// misses seen so far is taken first, and each partition of the slot map copies its
    /// missed rows into it as soon as it has resolved, while other partitions still
    /// resolve. A pass with more misses than that room is finished by the serial path
    /// (resolve, then copy), as the first pass is.
    fn run_pass<S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
        target: Target<'_>,
    ) -> Result<usize> {
        // Bound the misses of the pass by bounding the positions looked at (max_misses >= 1),
        // then let the slot map stop early when every slot is pinned.
        let window = &ids[..ids.len().min(self.max_misses)];
        let needs_pos = !matches!(target, Target::Resident);
        let mut t0 = Instant::now();
        let mut staged = None;
        let mut copied = false;
        let mut wait = Duration::ZERO;
        // A remote source is read once per pass, after resolution (each call is a round
        // trip), not once per partition while resolving.
        let n = if self.miss_estimate > 0 && !source.remote() {
            let room = (self.miss_estimate + self.miss_estimate / 4 + 64).min(self.max_misses);
            let positions = if needs_pos { window.len() } else { 0 };
            let pairs = self.io.pairs_room(room);
            let lay = StagingLayout::new(&self.slots, positions, room, target, pairs, 2);
            let entry = self.io.ring.acquire(&self.ctx, lay.total)?;
            wait = t0.elapsed();
            t0 = Instant::now();
            let (map, plan) = (&mut self.map, &mut self.plan);
            let (n, outcome, copy_threads) = copy_while_resolving(
                &mut self.io.ring,
                entry,
                &lay,
                source,
                self.layout,
                |on_misses| map.resolve_with(window, plan, on_misses),
            )?;
            self.stats.resolve_copy_thread_time += copy_threads;
            self.io.queue_evictions(&self.plan);
            match outcome {
                Err(e) => {
                    // The rows were not all copied: the map must not claim them.
                    self.forget_failed(false);
                    return Err(e);
                }
                Ok(fit) => {
                    copied = fit;
                    staged = Some((entry, lay));
                }
            }
            n
        } else {
            let n = self.map.resolve(window, &mut self.plan);
            self.io.queue_evictions(&self.plan);
            n
        };
        let resolve = t0.elapsed();
        let m = self.plan.misses.len();
        self.miss_estimate = m.max(self.miss_estimate - self.miss_estimate / 16);
        if m == 0 && !needs_pos {
            self.stats.passes += 1;
            self.stats.resolve_time += resolve;
            return Ok(n);
        }
        // (The guard forgets the misses if this unwinds; an error is handled below.)
        let mut guard = ForgetMisses {
            map: &mut self.map,
            misses: &self.plan.misses,
            armed: true,
        };
        self.io.reached_gpu = false;
        let result = match staged {
            Some((entry, lay)) if copied => self.io.finish(
                &self.ctx,
                &self.slots,
                &self.plan,
                entry,
                &lay,
                n,
                target,
                false,
            ),
            _ => self.io.upload_and_dispatch(
                &self.ctx,
                &self.slots,
                &self.plan,
                source,
                n,
                target,
                false,
            ),
        };
        guard.armed = false;
        drop(guard);
        self.settle(result, m, resolve, wait, false)?;
        Ok(n)
    }

    /// After a failed pass: its misses leave the map. If the pass never reached the GPU
    /// (`reached_gpu` false: a row source failed, or anything before its submission), the
    /// slots it took still hold the rows it evicted, and those go back into the map (and
    /// their removal from the GPU's table is dropped): the batch changed nothing. Otherwise
    /// its evictions stand, counted and queued for the GPU's table.
    fn forget_failed(&mut self, reached_gpu: bool) {
        self.map.forget(&self.plan.misses);
        let plan = &self.plan;
        let back = if reached_gpu {
            0
        } else {
            self.map.restore(&plan.evicted, &plan.evicted_slots)
        };
        if back > 0 {
            if let Some(dev) = self.io.device.as_mut() {
                // The pass queued its evictions last (`queue_evictions`); keep only those
                // that did not go back.
                let queued = dev.pending.len() - plan.evicted.len();
                dev.pending.truncate(queued);
                let map = &self.map;
                dev.pending.extend(
                    plan.evicted
                        .iter()
                        .zip(&plan.evicted_slots)
                        .filter(|&(&id, &s)| map.slot_of(id) != Some(s))
                        .map(|(&id, _)| id),
                );
            }
        }
        self.stats.evictions += plan.evictions - back as u64;
    }

    /// Ends a resolved pass once its upload was built and submitted (or held), or failed:
    /// on success its evictions and its `m` uploaded rows are counted, on failure it is
    /// undone as far as it can be ([`PassEngine::forget_failed`]).
    fn settle(
        &mut self,
        result: Result<PassTimes>,
        m: usize,
        resolve: Duration,
        wait: Duration,
        dev: bool,
    ) -> Result<()> {
        let times = match result {
            Ok(times) => times,
            Err(e) => {
                self.forget_failed(self.io.reached_gpu);
                return Err(e);
            }
        };
        self.stats.evictions += self.plan.evictions;
        self.account(m, resolve, wait + times.wait, times, dev);
        Ok(())
    }

    /// Counts a pass that uploaded `m` rows.
    fn account(&mut self, m: usize, resolve: Duration, wait: Duration, t: PassTimes, dev: bool) {
        if let Some(tally) = &mut self.uploads {
            tally.log(&self.plan.misses);
        }
        let s = &mut self.stats;
        let m = m as u64;
        s.passes += 1;
        // A held pass is submitted with its op (counted there).
        s.submissions += u64::from(!self.io.hold);
        s.device_passes += u64::from(dev);
        s.rows_uploaded += m;
        s.bytes_uploaded += m * self.layout.row_bytes();
        s.resolve_time += resolve;
        s.staging_wait_time += wait;
        s.copy_time += t.copy;
        s.submit_time += t.submit;
    }

    /// Serves all of `ids` in one pass through the GPU's id -> slot table, or returns
    /// `None` (having changed nothing but the GPU's scratch) when the cache has no such
    /// table or the batch does not fit one such pass: the caller then runs the host path.
    fn device_pass<S: RowSource>(
        &mut self,
        source: &S,
        ids: &[u32],
        target: Target<'_>,
    ) -> Result<Option<usize>> {
        if self.io.device.is_none()
            || matches!(target, Target::Resident)
            || ids.len() as u64 * 4 > self.ctx.max_binding()
        {
            return Ok(None);
        }
        let t0 = Instant::now();
        let complete = self.io.probe(&self.ctx, ids)?;
        self.stats.probe_time += t0.elapsed();
        self.stats.submissions += 1;
        if !complete {
            return Ok(None);
        }
        let Uploader { ring, device, .. } = &mut self.io;
        let dev = device.as_mut().expect("device resolution");
        let (map, plan, max_misses) = (&mut self.map, &mut self.plan, self.max_misses);
        let (touched, missing) = (&dev.touched, &dev.missing);
        // As on the host path: with an estimate of the distinct misses, the partitions copy
        // their rows into staging as they resolve; without one (the first batch, whose miss
        // list counts every repeat), resolve first and copy into staging sized exactly.
        let est = dev.miss_estimate;
        let t1 = Instant::now();
        let mut wait = Duration::ZERO;
        let mut staged = None;
        let (fits, outcome) = if est > 0 && !source.remote() {
            let room = missing.len().min(est + est / 4 + 64);
            let lay = StagingLayout::new(&self.slots, 0, room, target, 2 * room, 3);
            let entry = ring.acquire(&self.ctx, lay.total)?;
            wait = t1.elapsed();
            let (fits, outcome, copy_threads) =
                copy_while_resolving(ring, entry, &lay, source, self.layout, |on_misses| {
                    map.resolve_device(touched, missing, max_misses, plan, on_misses)
                })?;
            self.stats.resolve_copy_thread_time += copy_threads;
            staged = Some((entry, lay));
            (fits, outcome)
        } else {
            let fits = map.resolve_device(touched, missing, max_misses, plan, &|_| {});
            (fits, Ok(false))
        };
        if !fits {
            return Ok(None); // nothing resolved; a staging entry stays mapped for later
        }
        let m = self.plan.misses.len();
        dev.miss_estimate = m.max(est - est / 16).max(1);
        self.io.queue_evictions(&self.plan);
        let copied = match outcome {
            Err(e) => {
                self.forget_failed(false);
                return Err(e);
            }
            Ok(copied) => copied,
        };
        let resolve = t1.elapsed() - wait;
        // (The guard forgets the misses if this unwinds; an error is handled below.)
        let mut guard = ForgetMisses {
            map: &mut self.map,
            misses: &self.plan.misses,
            armed: true,
        };
        self.io.reached_gpu = false;
        let (ctx, slots, plan, n) = (&self.ctx, &self.slots, &self.plan, ids.len());
        let result = match staged {
            Some((entry, lay)) if copied => self
                .io
                .finish(ctx, slots, plan, entry, &lay, n, target, true),
            _ => self
                .io
                .upload_and_dispatch(ctx, slots, plan, source, n, target, true),
        };
        guard.armed = false;
        drop(guard);
        self.settle(result, m, resolve, wait, true)?;
        Ok(Some(ids.len()))
    }
}

/// Writes each of `params` into the next of `blocks` (params blocks in staging, laid out
/// with room for all of them).
fn put_params<'b, P: bytemuck::Pod>(
    blocks: &mut impl Iterator<Item = &'b mut [u8]>,
    params: impl IntoIterator<Item = P>,
) {
    for p in params {
        blocks
            .next()
            .expect("room for params")
            .copy_from_slice(bytemuck::bytes_of(&p));
    }
}

/// Writes `pair(x)` for every `x` of `items` into consecutive pairs of `dst` (two words
/// each): the GPU table's changes, tens of thousands per W6 step, in parallel chunks when
/// many (the destination is write-combined staging).
fn write_pairs<T: Sync>(dst: &mut [u32], items: &[T], pair: impl Fn(&T) -> [u32; 2] + Sync) {
    const PER_TASK: usize = 8192;
    let fill = |(dst, items): (&mut [u32], &[T])| {
        for (d, x) in dst.chunks_exact_mut(2).zip(items) {
            d.copy_from_slice(&pair(x));
        }
    };
    if items.len() < 2 * PER_TASK {
        fill((dst, items));
    } else {
        dst.par_chunks_mut(2 * PER_TASK)
            .zip(items.par_chunks(PER_TASK))
            .for_each(fill);
    }
}

/// Resolves a pass with `resolve` while the partitions copy their missed rows into staging
/// entry `entry` (laid out as `lay`, with room for `lay.rows_cap` rows). Returns what
/// `resolve` returned and whether every missed row fit and was copied (`Ok(false)`: no
/// room, the caller copies them serially), or the row source's error or panic; and the
/// time the copies took, summed over the threads that made them.
fn copy_while_resolving<S: RowSource, R>(
    ring: &mut StagingRing,
    entry: usize,
    lay: &StagingLayout,
    source: &S,
    layout: RowLayout,
    resolve: impl FnOnce(OnMisses<'_>) -> R,
) -> Result<(R, Result<bool>, Duration)> {
    let words = layout.words_per_row();
    let row_bytes = words * 4;
    let bump = AtomicUsize::new(0);
    let copy_ns = AtomicU64::new(0);
    let overflow = AtomicBool::new(false);
    let failure: Mutex<Option<HotrowError>> = Mutex::new(None);
    let r = ring.write(entry, lay.total, |bytes| {
        let base = RawBytes(bytes.as_mut_ptr());
        let on_misses = |misses: &[(u32, u32)]| {
            if misses.is_empty() {
                return;
            }
            let at = bump.fetch_add(misses.len(), Ordering::Relaxed);
            if at + misses.len() > lay.rows_cap {
                overflow.store(true, Ordering::Relaxed);
                return;
            }
            // SAFETY: the bump allocator gives this call rows at..at + len of the
            // staging entry's row and miss-slot regions, which no other call touches;
            // both regions lie inside the mapped range (`lay`), 16-byte aligned, and
            // the mapping outlives the resolve.
            let (slots_out, rows_out) = unsafe {
                (
                    base.slice::<u32>(lay.miss_off as usize + at * 4, misses.len()),
                    base.slice::<u32>(lay.rows_off as usize + at * row_bytes, misses.len() * words),
                )
            };
            let t = Instant::now();
            let mut ids = Vec::with_capacity(misses.len());
            for (dst, &(id, slot)) in slots_out.iter_mut().zip(misses) {
                *dst = slot;
                ids.push(id);
            }
            let copied = read_rows_encoded(source, layout, &ids, rows_out);
            copy_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let Err(err) = copied else {
                return;
            };
            failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(err);
        };
        resolve(&on_misses)
    })?;
    let outcome = match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(!overflow.into_inner()),
    };
    Ok((r, outcome, Duration::from_nanos(copy_ns.into_inner())))
}

/// Where each part of a pass sits in its staging buffer: the per-position slot list, the
/// missed slots, the kernels' params blocks (scatter and gather per shard, then the GPU
/// table's removal, insertion and slot-list blocks), the changes to the GPU's table, then
/// the rows.
struct StagingLayout {
    /// Room for the slot list (positions x 4 bytes).
    pos_room: u64,
    miss_off: u64,
    params_off: u64,
    scatter_params: u64,
    /// Offset of the device-map params blocks.
    map_params_off: u64,
    pairs_off: u64,
    /// (key, value) pairs the entry has room for.
    pairs_room: usize,
    rows_off: u64,
    /// Rows the entry has room for.
    rows_cap: usize,
    total: u64,
}

impl StagingLayout {
    /// `map_blocks`: device-map params blocks (removals, insertions, and for device
    /// resolution the slot list).
    fn new(
        slots: &RowBuffer,
        positions: usize,
        rows: usize,
        target: Target<'_>,
        pairs: usize,
        map_blocks: u64,
    ) -> Self {
        let shards = slots.shards().len() as u64;
        let scatter_params = shards * PARAMS_BYTES;
        let gather_params = match target {
            Target::Gather(..) => shards * PARAMS_BYTES,
            _ => 0,
        };
        let pos_room = align16(positions as u64 * 4);
        let miss_off = pos_room;
        let params_off = align16(miss_off + rows as u64 * 4);
        let map_params_off = params_off + scatter_params + gather_params;
        let pairs_off = align16(map_params_off + map_blocks * device_map::PARAMS_BYTES);
        let rows_off = align16(pairs_off + pairs as u64 * 8);
        Self {
            pos_room,
            miss_off,
            params_off,
            scatter_params,
            map_params_off,
            pairs_off,
            pairs_room: pairs,
            rows_off,
            rows_cap: rows,
            total: rows_off + slots.layout().bytes(rows),
        }
    }
}

/// The base of a mapped staging range, written by parallel tasks at disjoint offsets.
#[derive(Clone, Copy)]
struct RawBytes(*mut u8);

// SAFETY: only `slice`, whose callers guarantee disjoint, in-bounds, aligned regions.
unsafe impl Send for RawBytes {}
unsafe impl Sync for RawBytes {}

impl RawBytes {
    /// # Safety
    /// `offset..offset + len * size_of::<T>()` is inside the mapped range, aligned for `T`,
    /// and no other live reference overlaps it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice<T: bytemuck::Pod>(&self, offset: usize, len: usize) -> &mut [T] {
        let p = unsafe { self.0.add(offset) } as *mut T;
        debug_assert!(p.is_aligned());
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }
}

impl Uploader {
    /// Queues the removals of `plan`'s evictions for the GPU's table (see
    /// [`DeviceMap::pending`]).
    fn queue_evictions(&mut self, plan: &PassPlan) {
        if let Some(dev) = self.device.as_mut() {
            dev.pending.extend_from_slice(&plan.evicted);
        }
    }

    /// Room for the GPU table's changes of a pass with up to `rows` misses (the pending
    /// removals, then at most one eviction and one insertion per miss); 0 without a table.
    /// Submits the held pass (if any) together with `op`'s commands (if any), in that
    /// order: one submission.
    /// `None` when there was nothing to submit.
    fn submit_held(
        &mut self,
        ctx: &GpuContext,
        op: Option<wgpu::CommandBuffer>,
    ) -> Result<Option<wgpu::SubmissionIndex>> {
        let held = self.held.take();
        self.held_pending.clear();
        if held.is_none() && op.is_none() {
            return Ok(None);
        }
        let entry = held.as_ref().map(|&(_, e)| e);
        let sub = ctx
            .queue()
            .submit(held.map(|(c, _)| c).into_iter().chain(op));
        if let Some(entry) = entry {
            self.ring.submitted(entry, sub.clone());
        }
        ctx.check()?;
        Ok(Some(sub))
    }

    fn pairs_room(&self, rows: usize) -> usize {
        self.device
            .as_ref()
            .map_or(0, |d| d.pending.len() + 2 * rows)
    }

    /// The first submission of a device pass: uploads the batch's ids, applies pending
    /// removals to the GPU's table, probes it and reads back the miss count, the touched
    /// bitmap and the miss list (into the [`DeviceMap`]'s host copies). Returns `false` when
    /// the miss list overflowed its room (the batch then goes to the host path; the room
    /// grows for the next batch).
    fn probe(&mut self, ctx: &GpuContext, ids: &[u32]) -> Result<bool> {
        let dev = self.device.as_mut().expect("device resolution");
        let n = ids.len();
        if dev.miss_room == 0 {
            dev.miss_room = n; // the first batch: no estimate yet
        }
        let room = dev.miss_room.min(n).max(1);
        let bw = dev.bitmap_words;
        let ids_bytes = n as u64 * 4;
        let params_off = align16(ids_bytes);
        let pairs_off = align16(params_off + 2 * device_map::PARAMS_BYTES);
        let pending = dev.pending.len();
        let total = pairs_off + pending as u64 * 8;
        let out_bytes = (HEADER_WORDS + bw + room as u64) * 4;
        let entry = self.ring.acquire(ctx, total)?;
        let staging = self.ring.buffer(entry).clone();
        let DeviceMap {
            slot_of,
            ids: ids_buf,
            probe_out,
            readback,
            pairs: pairs_buf,
            probe: probe_launch,
            flush,
            pending,
            ..
        } = dev;
        let pending = &*pending;
        // The commands are recorded on this thread while the pool's threads write the ids
        // into staging (hundreds of thousands of them in a W6 step; each half takes tens of
        // microseconds). wgpu checks that the entry is unmapped only at submission.
        let encode = || -> Result<(wgpu::CommandEncoder, wgpu::Buffer)> {
            let mut enc = encoder(ctx, "hotrow probe");
            let ids_dev = ids_buf.get(ctx, ids_bytes)?.clone();
            enc.copy_buffer_to_buffer(&staging, 0, &ids_dev, 0, ids_bytes);
            if !pending.is_empty() {
                let pairs_dev = pairs_buf.get(ctx, pending.len() as u64 * 8)?.clone();
                enc.copy_buffer_to_buffer(
                    &staging,
                    pairs_off,
                    &pairs_dev,
                    0,
                    pending.len() as u64 * 8,
                );
                device_map::encode(
                    ctx,
                    &mut enc,
                    Kernel::Assign,
                    pending.len(),
                    &pairs_dev,
                    slot_of,
                    &pairs_dev,
                    flush,
                    (&staging, params_off + device_map::PARAMS_BYTES),
                )?;
            }
            let out = probe_out.get(ctx, out_bytes)?.clone();
            enc.clear_buffer(&out, 0, Some((HEADER_WORDS + bw) * 4));
            device_map::encode(
                ctx,
                &mut enc,
                Kernel::Probe,
                n,
                &ids_dev,
                slot_of,
                &out,
                probe_launch,
                (&staging, params_off),
            )?;
            let back = readback.get(ctx, out_bytes)?.clone();
            enc.copy_buffer_to_buffer(&out, 0, &back, 0, out_bytes);
            Ok((enc, back))
        };
        let fill = |bytes: &mut [u8]| -> Result<()> {
            let (head, tail) = bytes.split_at_mut(params_off as usize);
            crate::util::copy_parallel(cast_mut::<u32>(&mut head[..ids_bytes as usize])?, ids);
            let (blocks, pairs) = tail.split_at_mut((pairs_off - params_off) as usize);
            let probe = device_map::probe_params(ctx, n, bw, room);
            let flush = device_map::params(ctx, pending.len(), 0);
            let (a, b) = blocks.split_at_mut(device_map::PARAMS_BYTES as usize);
            a.copy_from_slice(bytemuck::bytes_of(&probe));
            b.copy_from_slice(bytemuck::bytes_of(&flush));
            write_pairs(cast_mut::<u32>(pairs)?, pending, |&id| [id, NOT_RESIDENT]);
            Ok(())
        };
        let (encoded, filled) = self
            .ring
            .write(entry, total, |bytes| rayon::join(encode, || fill(bytes)))?;
        self.ring.unmap(entry);
        filled?;
        let (enc, readback) = encoded?;
        let sub = ctx.queue().submit([enc.finish()]);
        // Woken now, the pool's threads are still looking for work when the answer comes
        // back a fraction of a millisecond later (and woken again then, in case it was late).
        super::wake_host_pool();
        self.ring.submitted(entry, sub);
        ctx.check()?;
        dev.pending.clear();
        let (touched, missing) = (&mut dev.touched, &mut dev.missing);
        let count = map_read_with(ctx, &readback, 0, out_bytes, |bytes| {
            let words: &[u32] = bytemuck::cast_slice(bytes);
            let count = words[0] as usize;
            let bitmap = &words[HEADER_WORDS as usize..(HEADER_WORDS + bw) as usize];
            touched.clear();
            touched.extend_from_slice(bitmap);
            missing.clear();
            let list = &words[(HEADER_WORDS + bw) as usize..];
            missing.extend_from_slice(&list[..count.min(room)]);
            count
        })?;
        // The pool slept through the round trip; resolution comes next.
        super::wake_host_pool();
        // Room for the next batch: a decaying high-water mark with 25% headroom.
        let want = count + count / 4 + 256;
        dev.miss_room = want.max(dev.miss_room - dev.miss_room / 16);
        Ok(count <= room)
    }

    /// The serial pass: copies the slot lists, params and every missed row into a staging
    /// buffer sized for exactly this pass, then [`Uploader::finish`]es it.
    #[allow(clippy::too_many_arguments)]
    fn upload_and_dispatch<S: RowSource>(
        &mut self,
        ctx: &GpuContext,
        slots: &RowBuffer,
        plan: &PassPlan,
        source: &S,
        n: usize,
        target: Target<'_>,
        device_positions: bool,
    ) -> Result<PassTimes> {
        let layout = slots.layout();
        let m = plan.misses.len();
        let positions = if matches!(target, Target::Resident) || device_positions {
            0
        } else {
            n
        };
        let pairs = self.pairs_room(m);
        let blocks = if device_positions { 3 } else { 2 };
        let lay = StagingLayout::new(slots, positions, m, target, pairs, blocks);
        let t0 = Instant::now();
        let entry = self.ring.acquire(ctx, lay.total)?;
        let t1 = Instant::now();
        self.miss_ids.clear();
        self.miss_ids.extend(plan.misses.iter().map(|&(id, _)| id));
        let miss_ids = &self.miss_ids;
        self.ring.write(entry, lay.total, |bytes| -> Result<()> {
            let (head, rows) = bytes.split_at_mut(lay.rows_off as usize);
            let misses = &mut head[lay.miss_off as usize..lay.params_off as usize];
            for (dst, &(_, slot)) in cast_mut::<u32>(misses)?.iter_mut().zip(&plan.misses) {
                *dst = slot;
            }
            let rows = &mut cast_mut::<u32>(rows)?[..m * layout.words_per_row()];
            read_rows_encoded(source, layout, miss_ids, rows)
        })??;
        let copy = t1.elapsed();
        let mut times = self.finish(ctx, slots, plan, entry, &lay, n, target, device_positions)?;
        times.wait += t1 - t0;
        times.copy += copy;
        Ok(times)
    }

    /// Writes the slot list (unless `device_positions`: the GPU writes it from its table),
    /// the params blocks and the GPU table's changes into staging entry `entry` (whose
    /// missed slots and rows are already there), unmaps it, and submits the pass: copies up,
    /// scatter of the missed rows into their slots, the changes to the GPU's table, the slot
    /// list, gather of the output.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        ctx: &GpuContext,
        slots: &RowBuffer,
        plan: &PassPlan,
        entry: usize,
        lay: &StagingLayout,
        n: usize,
        target: Target<'_>,
        device_positions: bool,
    ) -> Result<PassTimes> {
        let m = plan.misses.len();
        let pos_bytes = match target {
            Target::Resident => 0,
            _ => n as u64 * 4,
        };
        let host_pos = if device_positions { 0 } else { pos_bytes };
        debug_assert!(host_pos <= lay.pos_room && m <= lay.rows_cap);
        let t0 = Instant::now();
        let staging = self.ring.buffer(entry).clone();
        let Uploader {
            ring,
            pos_slots,
            miss_slots,
            upload,
            scatter,
            gather,
            device,
            ..
        } = self;
        // The device table's changes are written (pending removals) by the pool while this
        // thread records the commands (which use their counts).
        let (pending, mut dev) = match device.as_mut() {
            Some(d) => {
                let DeviceMap {
                    pending,
                    pairs,
                    remove,
                    insert,
                    position,
                    ids,
                    slot_of,
                    ..
                } = d;
                let parts = (pairs, remove, insert, position, &*ids, &*slot_of);
                (Some(&*pending), Some(parts))
            }
            None => (None, None),
        };
        let removals = pending.map_or(0, Vec::len);
        let fill = |bytes: &mut [u8]| -> Result<()> {
            if host_pos > 0 {
                crate::util::copy_parallel(
                    cast_mut::<u32>(&mut bytes[..host_pos as usize])?,
                    &plan.slots,
                );
            }
            let blocks = &mut bytes[lay.params_off as usize..lay.map_params_off as usize];
            let mut blocks = blocks.chunks_exact_mut(PARAMS_BYTES as usize);
            put_params(
                &mut blocks,
                copy_rows::params(ctx, Direction::Scatter, slots, m, 0),
            );
            if let Target::Gather(_, offset) = target {
                put_params(
                    &mut blocks,
                    copy_rows::params(ctx, Direction::Gather, slots, n, offset),
                );
            }
            let Some(pending) = pending else {
                return Ok(());
            };
            let room = &mut bytes[lay.pairs_off as usize..lay.rows_off as usize];
            // Removals (pending, which includes this pass's evictions), then insertions.
            debug_assert!(removals + m <= lay.pairs_room);
            let words = cast_mut::<u32>(room)?;
            let (gone, added) = words[..2 * (removals + m)].split_at_mut(2 * removals);
            write_pairs(gone, pending, |&id| [id, NOT_RESIDENT]);
            write_pairs(added, &plan.misses, |&(id, slot)| [id, slot + 1]);
            let at = lay.map_params_off as usize;
            let mut blocks = bytes[at..lay.pairs_off as usize]
                .chunks_exact_mut(device_map::PARAMS_BYTES as usize);
            put_params(
                &mut blocks,
                [
                    device_map::params(ctx, removals, 0),
                    device_map::params(ctx, m, removals),
                ],
            );
            if device_positions {
                put_params(&mut blocks, [device_map::params(ctx, n, 0)]);
            }
            Ok(())
        };
        let encode = || -> Result<wgpu::CommandEncoder> {
            let mut enc = encoder(ctx, "hotrow cache pass");
            if m > 0 {
                let rows_bytes = slots.layout().bytes(m);
                let miss_buf = miss_slots.get(ctx, m as u64 * 4)?;
                let rows_buf = upload.get(ctx, rows_bytes)?;
                enc.copy_buffer_to_buffer(&staging, lay.miss_off, miss_buf, 0, m as u64 * 4);
                enc.copy_buffer_to_buffer(&staging, lay.rows_off, rows_buf, 0, rows_bytes);
                copy_rows::encode(
                    ctx,
                    &mut enc,
                    Direction::Scatter,
                    slots,
                    miss_buf,
                    m,
                    rows_buf,
                    0,
                    scatter,
                    Some((&staging, lay.params_off)),
                )?;
            }
            if let Some((pairs, remove, insert, _, _, slot_of)) = dev.as_mut() {
                let n_pairs = removals + m;
                if n_pairs > 0 {
                    let bytes = n_pairs as u64 * 8;
                    let pairs_buf = pairs.get(ctx, bytes)?.clone();
                    enc.copy_buffer_to_buffer(&staging, lay.pairs_off, &pairs_buf, 0, bytes);
                    let block = device_map::PARAMS_BYTES;
                    for (k, n, launch) in [(0, removals, &mut **remove), (1, m, &mut **insert)] {
                        device_map::encode(
                            ctx,
                            &mut enc,
                            Kernel::Assign,
                            n,
                            &pairs_buf,
                            slot_of,
                            &pairs_buf,
                            launch,
                            (&staging, lay.map_params_off + k * block),
                        )?;
                    }
                }
            }
            if pos_bytes > 0 {
                let pos_buf = pos_slots.get(ctx, pos_bytes)?.clone();
                if device_positions {
                    let (_, _, _, position, ids, slot_of) =
                        dev.as_mut().expect("device resolution");
                    let ids_buf = ids.current().expect("the probe's ids").clone();
                    device_map::encode(
                        ctx,
                        &mut enc,
                        Kernel::Position,
                        n,
                        &ids_buf,
                        slot_of,
                        &pos_buf,
                        position,
                        (&staging, lay.map_params_off + 2 * device_map::PARAMS_BYTES),
                    )?;
                } else {
                    enc.copy_buffer_to_buffer(&staging, 0, &pos_buf, 0, pos_bytes);
                }
                if let Target::Gather(out, offset) = target {
                    copy_rows::encode(
                        ctx,
                        &mut enc,
                        Direction::Gather,
                        slots,
                        &pos_buf,
                        n,
                        out,
                        offset,
                        gather,
                        Some((&staging, lay.params_off + lay.scatter_params)),
                    )?;
                }
            }
            Ok(enc)
        };
        let (encoded, filled) = ring.write(entry, lay.total, |bytes| {
            rayon::join(encode, || fill(bytes))
        })?;
        ring.unmap(entry);
        filled?;
        let enc = encoded?;
        let t1 = Instant::now();
        let commands = enc.finish();
        // From here on the pass's commands are the GPU's (now, or with the op's).
        self.reached_gpu = true;
        if self.hold {
            self.held = Some((commands, entry));
        } else {
            let sub = ctx.queue().submit([commands]);
            self.ring.submitted(entry, sub);
            ctx.check()?;
        }
        if let Some(dev) = self.device.as_mut() {
            // Applied by this pass's submission (now, or held: it goes before anything
            // else reaches the GPU; kept aside until then, in case the held pass is
            // abandoned; `submit_held` or `abandon_held` empties it again).
            if self.hold {
                self.held_pending.append(&mut dev.pending);
            }
            dev.pending.clear();
        }
        Ok(PassTimes {
            wait: Duration::ZERO,
            copy: t1 - t0,
            submit: t1.elapsed(),
        })
    }
}

/// Rows per task when compact rows are read and encoded in parallel (a task's f32 rows stay
/// in the core's cache between the read and the encoding).
const ENCODE_ROWS_PER_TASK: usize = 128;

/// Reads rows `ids` from `source` into `out` encoded as `layout` stores them
/// ([`RowLayout::encode_rows`]): f32 rows straight into `out`, f16 rows of an f16 source as
/// stored where the widths allow; other compact ones chunk by chunk
/// (in parallel when there are several), each chunk read into a small per-thread f32
/// scratch buffer and encoded from there while it is in cache.
fn read_rows_encoded<S: RowSource>(
    source: &S,
    layout: RowLayout,
    ids: &[u32],
    out: &mut [u32],
) -> Result<()> {
    use rayon::prelude::*;
    if layout.format() == RowFormat::F32 {
        return read_rows_caught(source, ids, bytemuck::cast_slice_mut(out));
    }
    // f16 slots of an even width hold exactly the f16 rows (little-endian): a source that
    // stores f16 copies all of them straight in (in parallel itself), with no conversion.
    if layout.format() == RowFormat::F16
        && layout.dim().is_multiple_of(2)
        && cfg!(target_endian = "little")
    {
        let halves: &mut [half::f16] = bytemuck::cast_slice_mut(out);
        if caught(|| source.read_rows_f16(ids, halves))? {
            return Ok(());
        }
    }
    let words = layout.words_per_row();
    if ids.len() <= ENCODE_ROWS_PER_TASK {
        return encode_chunk(source, layout, ids, out);
    }
    ids.par_chunks(ENCODE_ROWS_PER_TASK)
        .zip(out.par_chunks_mut(ENCODE_ROWS_PER_TASK * words))
        .try_for_each(|(ids, out)| encode_chunk(source, layout, ids, out))
}

/// One chunk of [`read_rows_encoded`]. The scratch buffer is taken out of its slot while in
/// use: a rayon thread waiting inside `read_rows` may run another chunk's copy on the same
/// thread (work stealing), which then finds the slot empty and uses a buffer of its own.
fn encode_chunk<S: RowSource>(
    source: &S,
    layout: RowLayout,
    ids: &[u32],
    out: &mut [u32],
) -> Result<()> {
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut values = SCRATCH.with(|s| s.take());
    values.clear();
    values.resize(ids.len() * layout.dim(), 0.0);
    let result = read_rows_caught(source, ids, &mut values);
    if result.is_ok() {
        layout.encode_rows(&values, out);
    }
    SCRATCH.with(|s| s.set(values));
    result
}

/// `source.read_rows`, with a panic in it caught (see [`caught`]).
fn read_rows_caught<S: RowSource>(source: &S, ids: &[u32], out: &mut [f32]) -> Result<()> {
    caught(|| source.read_rows(ids, out))
}

/// A call into the row source, with a panic in it caught and returned as
/// [`HotrowError::RowSourcePanicked`] (the caller then forgets the pass's misses).
pub(crate) fn caught<R>(call: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(call))
        .map_err(|p| HotrowError::RowSourcePanicked(panic_message(&*p)))?
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn cast_mut<T: bytemuck::Pod>(bytes: &mut [u8]) -> Result<&mut [T]> {
    bytemuck::try_cast_slice_mut(bytes).map_err(|e| {
        HotrowError::Map(format!(
            "staging memory not aligned for {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}
