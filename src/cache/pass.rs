//! The pass engine: runs the passes of one batch through the slot map, the staging ring
//! and one submission per pass, and hands ops a plain rows view of the batch.
//!
//! One pass: resolve a window of ids to slots (the map evicts and pins); copy the missed
//! rows from the row source into a mapped staging buffer beside the pass's slot lists;
//! one submission copies them up, scatters the rows into their slots and (for lookups)
//! gathers the output. If anything fails or unwinds between resolving and submitting, the
//! pass's misses are forgotten, so the map never claims a row the GPU does not hold.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::partitioned::PartitionedSlotMap;
use super::slot_map::PassPlan;
use super::stats::CacheStats;
use crate::error::{HotrowError, Result};
use crate::gpu::StagingRing;
use crate::gpu::{encoder, submit, GpuContext, GrowBuffer, Launch, RowBuffer, RowLayout};
use crate::ops::copy_rows::{self, Direction, PARAMS_BYTES};
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
    pub(crate) fn new(
        ctx: &GpuContext,
        slots: RowBuffer,
        map: PartitionedSlotMap,
        staging_buffers: usize,
        max_upload_bytes: u64,
    ) -> Result<Self> {
        let layout = slots.layout();
        // Build the pass's pipeline now, so a kernel this device cannot run is refused at
        // construction rather than by the first batch. (It was also meant to shorten the
        // first batch; measured on the H200, it did not: BENCHMARKS.md.)
        copy_rows::prepare(ctx, layout)?;
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
            },
            gathered: GrowBuffer::storage("hotrow op rows"),
            max_misses: ((max_upload_bytes / layout.row_bytes()) as usize).max(1),
            miss_estimate: 0,
            stats: CacheStats::default(),
        })
    }

    pub(crate) fn slots(&self) -> &RowBuffer {
        &self.slots
    }

    pub(crate) fn map(&self) -> &PartitionedSlotMap {
        &self.map
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
                + self.gathered.bytes(),
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
        let target = |start| match out {
            Some(out) => Target::Gather(out, start),
            None => Target::Resident,
        };
        let n = self.run_pass(source, ids, target(0))?;
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
        let bytes = self.layout.bytes(ids.len());
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
        let n = self.run_pass(source, ids, Target::SlotsOnly)?;
        let direct = n == ids.len() && self.slots.shards().len() == 1;
        if !direct {
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
            layout: self.layout,
        })
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
        let n = if self.miss_estimate > 0 {
            let room = (self.miss_estimate + self.miss_estimate / 4 + 64).min(self.max_misses);
            let positions = if needs_pos { window.len() } else { 0 };
            let lay = StagingLayout::new(&self.slots, positions, room, target);
            let entry = self.io.ring.acquire(&self.ctx, lay.total)?;
            wait = t0.elapsed();
            t0 = Instant::now();
            let (n, outcome) = self.resolve_copying(source, window, entry, &lay)?;
            match outcome {
                Err(e) => {
                    // The rows were not all copied: the map must not claim them.
                    self.map.forget(&self.plan.misses);
                    self.stats.evictions += self.plan.evictions;
                    return Err(e);
                }
                Ok(fit) => {
                    copied = fit;
                    staged = Some((entry, lay));
                }
            }
            n
        } else {
            self.map.resolve(window, &mut self.plan)
        };
        let resolve = t0.elapsed();
        let m = self.plan.misses.len();
        self.miss_estimate = m.max(self.miss_estimate - self.miss_estimate / 16);
        if m == 0 && !needs_pos {
            self.stats.passes += 1;
            self.stats.resolve_time += resolve;
            return Ok(n);
        }
        let mut guard = ForgetMisses {
            map: &mut self.map,
            misses: &self.plan.misses,
            armed: true,
        };
        let result = match staged {
            Some((entry, lay)) if copied => {
                self.io
                    .finish(&self.ctx, &self.slots, &self.plan, entry, &lay, n, target)
            }
            _ => self
                .io
                .upload_and_dispatch(&self.ctx, &self.slots, &self.plan, source, n, target),
        };
        let s = &mut self.stats;
        s.evictions += self.plan.evictions;
        let times = result?;
        guard.armed = false;
        let m = m as u64;
        s.passes += 1;
        s.rows_uploaded += m;
        s.bytes_uploaded += m * self.layout.row_bytes();
        s.resolve_time += resolve;
        s.staging_wait_time += wait + times.wait;
        s.copy_time += times.copy;
        s.submit_time += times.submit;
        Ok(n)
    }

    /// Resolves `window` while the partitions copy their missed rows into staging entry
    /// `entry` (laid out as `lay`, with room for `lay.rows_cap` rows). Returns the positions
    /// served and whether every missed row fit and was copied (`Ok(false)`: no room, the
    /// caller copies them serially), or the row source's error or panic.
    fn resolve_copying<S: RowSource>(
        &mut self,
        source: &S,
        window: &[u32],
        entry: usize,
        lay: &StagingLayout,
    ) -> Result<(usize, Result<bool>)> {
        let dim = self.layout.dim();
        let row_bytes = self.layout.row_bytes() as usize;
        let bump = AtomicUsize::new(0);
        let overflow = AtomicBool::new(false);
        let failure: Mutex<Option<HotrowError>> = Mutex::new(None);
        let (map, plan) = (&mut self.map, &mut self.plan);
        let n = self.io.ring.write(entry, lay.total, |bytes| {
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
                        base.slice::<f32>(
                            lay.rows_off as usize + at * row_bytes,
                            misses.len() * dim,
                        ),
                    )
                };
                let mut ids = Vec::with_capacity(misses.len());
                for (dst, &(id, slot)) in slots_out.iter_mut().zip(misses) {
                    *dst = slot;
                    ids.push(id);
                }
                let Err(err) = read_rows_caught(source, &ids, rows_out) else {
                    return;
                };
                failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(err);
            };
            map.resolve_with(window, plan, &on_misses)
        })?;
        let outcome = match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(!overflow.into_inner()),
        };
        Ok((n, outcome))
    }
}

/// Where each part of a pass sits in its staging buffer: the per-position slot list, the
/// missed slots, the kernels' params blocks, then the rows.
struct StagingLayout {
    /// Room for the slot list (positions x 4 bytes).
    pos_room: u64,
    miss_off: u64,
    params_off: u64,
    scatter_params: u64,
    rows_off: u64,
    /// Rows the entry has room for.
    rows_cap: usize,
    total: u64,
}

impl StagingLayout {
    fn new(slots: &RowBuffer, positions: usize, rows: usize, target: Target<'_>) -> Self {
        let shards = slots.shards().len() as u64;
        let scatter_params = shards * PARAMS_BYTES;
        let gather_params = match target {
            Target::Gather(..) => shards * PARAMS_BYTES,
            _ => 0,
        };
        let pos_room = align16(positions as u64 * 4);
        let miss_off = pos_room;
        let params_off = align16(miss_off + rows as u64 * 4);
        let rows_off = align16(params_off + scatter_params + gather_params);
        Self {
            pos_room,
            miss_off,
            params_off,
            scatter_params,
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
    /// The serial pass: copies the slot lists, params and every missed row into a staging
    /// buffer sized for exactly this pass, then [`Uploader::finish`]es it.
    fn upload_and_dispatch<S: RowSource>(
        &mut self,
        ctx: &GpuContext,
        slots: &RowBuffer,
        plan: &PassPlan,
        source: &S,
        n: usize,
        target: Target<'_>,
    ) -> Result<PassTimes> {
        let dim = slots.layout().dim();
        let m = plan.misses.len();
        let positions = if matches!(target, Target::Resident) {
            0
        } else {
            n
        };
        let lay = StagingLayout::new(slots, positions, m, target);
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
            let rows = &mut cast_mut::<f32>(rows)?[..m * dim];
            read_rows_caught(source, miss_ids, rows)
        })??;
        let copy = t1.elapsed();
        let mut times = self.finish(ctx, slots, plan, entry, &lay, n, target)?;
        times.wait += t1 - t0;
        times.copy += copy;
        Ok(times)
    }

    /// Writes the slot list and the params blocks into staging entry `entry` (whose missed
    /// slots and rows are already there), unmaps it, and submits the pass: copies up,
    /// scatter of the missed rows into their slots, gather of the output.
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
    ) -> Result<PassTimes> {
        let m = plan.misses.len();
        let pos_bytes = match target {
            Target::Resident => 0,
            _ => n as u64 * 4,
        };
        debug_assert!(pos_bytes <= lay.pos_room && m <= lay.rows_cap);
        let t0 = Instant::now();
        self.ring.write(entry, lay.total, |bytes| -> Result<()> {
            if pos_bytes > 0 {
                cast_mut::<u32>(&mut bytes[..pos_bytes as usize])?.copy_from_slice(&plan.slots);
            }
            let blocks = &mut bytes[lay.params_off as usize..lay.rows_off as usize];
            let mut blocks = blocks.chunks_exact_mut(PARAMS_BYTES as usize);
            for b in copy_rows::params(ctx, Direction::Scatter, slots, m, 0) {
                blocks
                    .next()
                    .expect("room for params")
                    .copy_from_slice(bytemuck::bytes_of(&b));
            }
            if let Target::Gather(_, offset) = target {
                for b in copy_rows::params(ctx, Direction::Gather, slots, n, offset) {
                    blocks
                        .next()
                        .expect("room for params")
                        .copy_from_slice(bytemuck::bytes_of(&b));
                }
            }
            Ok(())
        })??;
        self.ring.unmap(entry);
        let t1 = Instant::now();
        let staging = self.ring.buffer(entry).clone();
        let mut enc = encoder(ctx, "hotrow cache pass");
        if m > 0 {
            let rows_bytes = slots.layout().bytes(m);
            let miss_buf = self.miss_slots.get(ctx, m as u64 * 4)?;
            let rows_buf = self.upload.get(ctx, rows_bytes)?;
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
                &mut self.scatter,
                Some((&staging, lay.params_off)),
            )?;
        }
        if pos_bytes > 0 {
            let pos_buf = self.pos_slots.get(ctx, pos_bytes)?;
            enc.copy_buffer_to_buffer(&staging, 0, pos_buf, 0, pos_bytes);
            if let Target::Gather(out, offset) = target {
                copy_rows::encode(
                    ctx,
                    &mut enc,
                    Direction::Gather,
                    slots,
                    pos_buf,
                    n,
                    out,
                    offset,
                    &mut self.gather,
                    Some((&staging, lay.params_off + lay.scatter_params)),
                )?;
            }
        }
        let sub = ctx.queue().submit([enc.finish()]);
        self.ring.submitted(entry, sub);
        ctx.check()?;
        Ok(PassTimes {
            wait: Duration::ZERO,
            copy: t1 - t0,
            submit: t1.elapsed(),
        })
    }
}

/// `source.read_rows`, with a panic in it caught and returned as
/// [`HotrowError::RowSourcePanicked`] (the caller then forgets the pass's misses).
fn read_rows_caught<S: RowSource>(source: &S, ids: &[u32], out: &mut [f32]) -> Result<()> {
    catch_unwind(AssertUnwindSafe(|| source.read_rows(ids, out)))
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
