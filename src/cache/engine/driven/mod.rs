//! The GPU-driven path: the GPU serves a batch end to end. The table lives in host memory
//! the GPU reads directly (filled once at construction, [`fill`]); the id -> slot array,
//! each slot's row and stamp, and the eviction hand live on the GPU. A pass is one chain
//! of kernels in one submission, with nothing read back:
//!
//! 1. the host copies the ids into a mapped staging entry (they were checked against the
//!    table's rows before);
//! 2. **find** (`find.wgsl`): hits stamped, misses claimed once each and listed;
//! 3. **evict** (`evict.wgsl`): a parallel CLOCK sweep gives each miss a slot no position
//!    of the pass uses; the evicted rows leave the id -> slot array;
//! 4. **fetch** (`fetch.wgsl`): the missed rows are copied from host memory into their
//!    slots by threads striding over the misses the GPU counted;
//! 5. the slot list (`slot_index.wgsl`'s `position`) and, for a lookup, the gather.
//!
//! A pass holds at most as many positions as the cache has slots, so its misses always
//! find slots; a longer batch takes several passes, run in order. The counters of what the
//! GPU decided (distinct ids, hits, misses, evictions) are kept on the GPU and read by
//! [`PassEngine::stats`] when asked ([`totals`]).

mod fill;
mod totals;

pub(crate) use fill::fill_host_table;
pub(crate) use totals::GpuTotals;

use std::time::Instant;

use super::{PassEngine, PassTimes, RecordedPass, Target};
use crate::error::{HotrowError, Result};
use crate::gpu::{
    encoder, grid, grid_for_threads, uniform_stride, GpuContext, GrowBuffer, Launch, ParamsAt,
    RowBuffer, TrackedBuffer,
};
use crate::ops::copy_rows::{self, Direction};
use crate::ops::driven::{self as kernels, DrivenBuffers, DrivenParams, Phase};
use crate::ops::slot_index::{self, Kernel};
use crate::table::RowSource;

/// The GPU's side of the GPU-driven path, and the launch state of its kernels.
pub(crate) struct Driven {
    /// The table in host memory, stored as the slots store rows.
    table: RowBuffer,
    /// slot + 1 of each table row (0: not resident).
    slot_of: TrackedBuffer,
    /// id + 1 of each slot's row, then each slot's stamp (see find.wgsl).
    state: TrackedBuffer,
    /// Counters and lists of the phases (see find.wgsl).
    work: TrackedBuffer,
    /// The ids of the pass.
    ids: GrowBuffer,
    /// The params blocks of a pass, copied up from its staging entry in one copy.
    params: GrowBuffer,
    phases: [Launch; 4],
    fetch: Vec<Launch>,
    position: Launch,
    /// The epoch of the last pass (1 ..= EPOCH; 0 before any), and of its batch's first.
    epoch: u32,
    batch_epoch: u32,
    /// A prefetch's last epoch, whose slots the sweep takes only when no other is left
    /// (0: none), until the next batch has been served.
    held: u32,
    capacity: usize,
    /// Most positions a pass takes.
    max_positions: usize,
    /// Id ranges whose misses the GPU counts (0: none).
    bins: usize,
    totals: GpuTotals,
    /// A training cache: slots carry dirty marks, and dirty rows go back to the table.
    training: bool,
    write_back: Vec<Launch>,
    clean_victims: Launch,
    mark: Launch,
    flush: Vec<Launch>,
    clean: Launch,
    /// The frequency sketch and refused-rows table of admission (a placeholder without).
    adm: TrackedBuffer,
    admission: Option<Admission>,
    touch: Launch,
}

/// Admission on the GPU ([`crate::EvictionPolicy::TinyLfu`]; evict.wgsl): its shape, and
/// the sketch's aging, which the host schedules by positions (it counts them exactly, and
/// the GPU's counts are never read back).
struct Admission {
    /// Transient slots past the capacity.
    transient: u32,
    sketch_mask: u32,
    ghost_mask: u32,
    /// Positions between halvings of the sketch, and since the last.
    age_every: u64,
    since_age: u64,
    age: Launch,
    forget: Launch,
}

impl Admission {
    /// For `capacity` slots and `transient` transient slots: a sketch of 4 rows of twice
    /// the next power of two at or above the capacity (32-64 bytes a slot: each row at most
    /// ~2 counts a counter by the time it ages, as Caffeine sizes its sketch), a
    /// refused-rows table of a quarter of a row, aged every 25 x capacity positions (about
    /// 10 x capacity distinct uses at W2's repeats, Caffeine's sample; chosen with the
    /// CPU twin, evict.wgsl); within one storage binding (`max_binding`).
    fn new(capacity: usize, transient: usize, max_binding: u64) -> Self {
        let mut width = (2 * capacity.next_power_of_two()).max(64);
        while width > 64 && Self::words(width) * 4 > max_binding {
            width /= 2;
        }
        Self {
            transient: transient as u32,
            sketch_mask: (width - 1) as u32,
            ghost_mask: (width / 4 - 1) as u32,
            age_every: kernels::AGE_EVERY * capacity as u64,
            since_age: 0,
            age: Launch::default(),
            forget: Launch::default(),
        }
    }

    /// Words of the admission buffer for a sketch `width` counters wide: the sketch's 4
    /// rows, then (id + 1, epoch) for each of `width / 4` refused rows.
    fn words(width: usize) -> u64 {
        4 * width as u64 + 2 * (width as u64 / 4)
    }

    fn bytes(&self) -> u64 {
        Self::words(self.sketch_mask as usize + 1) * 4
    }
}

impl Driven {
    /// The GPU state over `table` (filled) for `capacity` slots, all empty; with
    /// `training`, room for the slots' dirty marks and the written-rows bitmap; with
    /// `transient` slots past the capacity (> 0), admission (evict.wgsl).
    pub(crate) fn new(
        ctx: &GpuContext,
        table: RowBuffer,
        capacity: usize,
        training: bool,
        transient: usize,
    ) -> Result<Self> {
        let rows = table.rows();
        let row_words = table.layout().words_per_row();
        let slot_of = zeroed_binding(
            ctx,
            "the GPU-driven path's id -> slot array (4 bytes per table row)",
            rows as u64 * 4,
        )?;
        let state = zeroed_binding(
            ctx,
            "the GPU-driven path's slot state (8 bytes per slot, 12 training)",
            capacity as u64 * if training { 12 } else { 8 },
        )?;
        let work = zeroed_binding(
            ctx,
            "the GPU-driven path's work lists (12 bytes per slot; training, a bit per row)",
            kernels::work_words(capacity, 0, training.then_some(rows)) as u64 * 4,
        )?;
        let admission =
            (transient > 0).then(|| Admission::new(capacity, transient, ctx.max_binding()));
        let adm = zeroed_binding(
            ctx,
            "the GPU-driven path's admission sketch (32-64 bytes per slot)",
            admission.as_ref().map_or(16, Admission::bytes),
        )?;
        if admission.is_some() {
            start_window(ctx, &work);
        }
        if training {
            kernels::prepare_write_back(ctx, row_words)?;
        }
        // Every pipeline a pass runs is built now, so the first batch compiles nothing (the
        // cold first batch has a 5 ms goal).
        kernels::prepare(ctx, row_words)?;
        slot_index::prepare(ctx)?;
        // Positions of a pass: at most the slots (so misses always find one), and few
        // enough that the fetch's threads (misses x words) count in a u32.
        let words = kernels::fetch_word(row_words).1 as usize;
        let max_positions = capacity.min((u32::MAX as usize / 2) / words).max(1);
        Ok(Self {
            table,
            slot_of,
            state,
            work,
            ids: GrowBuffer::storage("hotrow driven ids"),
            params: GrowBuffer::new(
                "hotrow driven params",
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            ),
            phases: Default::default(),
            fetch: Vec::new(),
            position: Launch::default(),
            epoch: 0,
            batch_epoch: 0,
            held: 0,
            capacity,
            max_positions,
            bins: 0,
            totals: GpuTotals::default(),
            training,
            write_back: Vec::new(),
            clean_victims: Launch::default(),
            mark: Launch::default(),
            flush: Vec::new(),
            clean: Launch::default(),
            adm,
            admission,
            touch: Launch::default(),
        })
    }

    /// Holds the last pass's rows: later passes take their slots only when no other is
    /// left ([`Driven::release`] ends it).
    pub(crate) fn hold_last_pass(&mut self) {
        self.held = self.epoch;
    }

    /// Ends the hold (if any).
    pub(crate) fn release(&mut self) {
        self.held = 0;
    }

    /// Whether the cache admits rows by frequency (`EvictionPolicy::TinyLfu`).
    pub(crate) fn admits(&self) -> bool {
        self.admission.is_some()
    }

    /// Bytes of GPU memory held (the table is in host memory: [`Driven::host_bytes`]).
    pub(crate) fn bytes(&self) -> u64 {
        self.slot_of.size()
            + self.state.size()
            + self.work.size()
            + self.ids.bytes()
            + self.adm.size()
    }

    /// Bytes of the table in host memory.
    pub(crate) fn host_bytes(&self) -> u64 {
        self.table.bytes()
    }

    /// Most positions one pass takes.
    pub(crate) fn max_positions(&self) -> usize {
        self.max_positions
    }

    pub(crate) fn totals(&self) -> &GpuTotals {
        &self.totals
    }

    /// The work buffer (the kept counters live in it).
    pub(crate) fn work(&self) -> &wgpu::Buffer {
        &self.work
    }

    /// Has the GPU count misses by id range from now on: range `j` holds ids
    /// `bounds[j]..bounds[j + 1]` (sorted; a table-batched width's tables). Called before
    /// any pass: the work buffer is made again, with room for the ranges.
    pub(crate) fn count_misses_by_range(&mut self, ctx: &GpuContext, bounds: &[u64]) -> Result<()> {
        let bins = bounds.len().saturating_sub(1);
        if bins == 0 {
            return Ok(());
        }
        let training_rows = self.training.then_some(self.table.rows());
        let work = zeroed_binding(
            ctx,
            "the GPU-driven path's work lists with per-table counts",
            kernels::work_words(self.capacity, bins, training_rows) as u64 * 4,
        )?;
        let words: Vec<u32> = bounds.iter().map(|&b| b as u32).collect();
        let at = kernels::bins_at(self.capacity) as u64 * 4;
        ctx.queue()
            .write_buffer(&work, at, bytemuck::cast_slice(&words));
        if self.admission.is_some() {
            start_window(ctx, &work);
        }
        self.work = work;
        self.bins = bins;
        Ok(())
    }

    /// Misses counted in each id range since construction (read back, waiting for the
    /// passes submitted so far); empty when not counted by range.
    pub(crate) fn misses_by_range(&self, ctx: &GpuContext) -> Result<Vec<u64>> {
        if self.bins == 0 {
            return Ok(Vec::new());
        }
        let at = kernels::bins_at(self.capacity) + self.bins + 1;
        totals::read_u64s(ctx, &self.work, at, self.bins)
    }

    /// The ids of the resident rows (read back from the slots' ids, waiting for the passes
    /// submitted so far).
    pub(crate) fn resident_ids(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        let id_of = crate::gpu::read_u32(ctx, &self.state, 0, self.capacity)?;
        Ok(id_of
            .into_iter()
            .filter(|&v| v != 0)
            .map(|v| v - 1)
            .collect())
    }

    /// The GPU's state for the tests ([`DrivenState`]).
    pub(crate) fn read_state(&self, ctx: &GpuContext) -> Result<DrivenState> {
        let rows = self.table.rows();
        let slot_of = crate::gpu::read_u32(ctx, &self.slot_of, 0, rows)?;
        let state = crate::gpu::read_u32(ctx, &self.state, 0, 2 * self.capacity)?;
        let head = crate::gpu::read_u32(ctx, &self.work, 0, kernels::HEADER_WORDS)?;
        let (ids, stamps) = state.split_at(self.capacity);
        let sketch = match &self.admission {
            Some(a) => crate::gpu::read_u32(ctx, &self.adm, 0, 4 * (a.sketch_mask as usize + 1))?,
            None => Vec::new(),
        };
        Ok(DrivenState {
            sketch,
            slot_of,
            id_of: ids.to_vec(),
            stamps: stamps.to_vec(),
            hand: head[kernels::word::HAND + 1],
            fault: head[kernels::word::FAULT],
            window: head[kernels::word::WINDOW],
        })
    }
}

/// Sets the admission window's first share in a fresh `work` buffer (a queue write, after
/// the buffer's clear).
fn start_window(ctx: &GpuContext, work: &wgpu::Buffer) {
    let at = kernels::word::WINDOW as u64 * 4;
    ctx.queue()
        .write_buffer(work, at, bytemuck::bytes_of(&kernels::FIRST_WINDOW));
}

/// A storage buffer of the GPU-driven state (`what`, `bytes`), bound whole by its kernels,
/// read back by the counters and tests, and zeroed by the GPU before its first use (the
/// empty cache); past one storage binding, [`HotrowError::ExceedsLimit`].
fn zeroed_binding(ctx: &GpuContext, what: &'static str, bytes: u64) -> Result<TrackedBuffer> {
    if bytes > ctx.max_binding() {
        return Err(HotrowError::ExceedsLimit {
            what,
            bytes,
            limit_name: "max_storage_buffer_binding_size",
            limit: ctx.max_binding(),
        });
    }
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let buffer = ctx.create_buffer(what, bytes, usage, false)?;
    let mut enc = encoder(ctx, "hotrow driven init");
    enc.clear_buffer(&buffer, 0, None);
    crate::gpu::submit_encoder(ctx, enc)?;
    Ok(buffer)
}

/// A copy of the GPU-driven path's state (test hook): the encodings of find.wgsl.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct DrivenState {
    /// slot + 1 of each table row, 0 when not resident.
    pub slot_of: Vec<u32>,
    /// id + 1 of each slot's row, 0 when empty.
    pub id_of: Vec<u32>,
    /// Each slot's stamp: the epoch of the last pass that used it, bit 31 its reference bit.
    pub stamps: Vec<u32>,
    /// Where the next pass's sweep starts.
    pub hand: u32,
    /// Misses that found no slot (a bug if ever non-zero).
    pub fault: u32,
    /// Admission's window: the share of a pass's victims whose misses enter without the
    /// sketch's say, per mille (0 without admission).
    pub window: u32,
    /// Admission's frequency sketch: 4 rows of counters (empty without admission).
    pub sketch: Vec<u32>,
}

impl PassEngine {
    /// One GPU-driven pass over a prefix of `ids` (checked, non-empty; the batch's first
    /// pass when `batch_start`): returns the positions it served and the pass, recorded and
    /// not yet submitted.
    pub(super) fn driven_pass(
        &mut self,
        ids: &[u32],
        target: Target<'_>,
        batch_start: bool,
    ) -> Result<(usize, RecordedPass)> {
        let ctx = self.ctx.clone();
        let d = self.driven.as_mut().expect("a GPU-driven engine");
        let n = ids.len().min(d.max_positions);
        let mut enc = encoder(&ctx, "hotrow driven pass");
        if batch_start {
            // (all the batch's passes, not only this one's positions)
            let passes = ids.len().div_ceil(d.max_positions) as u64;
            if u64::from(d.epoch) + passes >= u64::from(kernels::EPOCH) {
                // Stamps compare with epochs that only grow: before they would wrap, the
                // old stamps go (and the reference bits with them, once per 2^31 passes);
                // a training cache's dirty marks after them stay.
                let stamps = d.capacity as u64 * 4;
                enc.clear_buffer(&d.state, stamps, Some(stamps));
                d.epoch = 0;
                d.held = 0;
            }
            d.batch_epoch = d.epoch + 1;
        }
        d.epoch += 1;
        let ids = &ids[..n];
        let row_words = self.layout.words_per_row();
        let mut base = DrivenParams {
            bins: d.bins as u32,
            held: d.held,
            written_at: kernels::written_at(d.capacity, d.bins) as u32,
            ..kernels::params(&ctx, n, (d.epoch, d.batch_epoch), d.capacity, row_words)
        };
        let mut age = false;
        if let Some(a) = d.admission.as_mut() {
            base.admit = 1;
            base.transient = a.transient;
            base.sketch_mask = a.sketch_mask;
            base.ghost_mask = a.ghost_mask;
            a.since_age += n as u64;
            if a.since_age >= a.age_every {
                a.since_age = 0;
                age = true;
            }
        }
        let sweep = kernels::sweep_params(&ctx, base);
        let table_shards = d.table.shards().len();
        let slot_shards = self.slots.shards().len();
        let pairs = table_shards * slot_shards;
        let fetch_grid = kernels::fetch_grid(&ctx, n, base.words);
        let fetch_blocks = pair_params(base, fetch_grid.0, &d.table, &self.slots);
        let gather = match target {
            Target::Gather(_, offset) => Some(offset),
            _ => None,
        };
        let copy_blocks = gather
            .map(|offset| copy_rows::params(&ctx, Direction::Gather, &self.slots, n, offset))
            .into_iter()
            .flatten();
        // Staging: the params blocks, `stride` apart (base, sweep, fetch pairs, position,
        // gather shards), copied up in one copy and bound where they land; then the ids.
        // (Blocks first: their offsets do not move with the batch's size, so the bind
        // groups made for them are reused.)
        let stride = uniform_stride(&ctx);
        debug_assert!(
            [
                kernels::PARAMS_BYTES,
                slot_index::PARAMS_BYTES,
                copy_rows::PARAMS_BYTES
            ]
            .iter()
            .all(|&b| b <= stride),
            "a params block larger than the stride"
        );
        let fetch_at = 2 * stride;
        let position_at = fetch_at + pairs as u64 * stride;
        let gather_at = position_at + stride;
        let params_bytes = gather_at + slot_shards as u64 * stride;
        let ids_bytes = n as u64 * 4;
        let total = params_bytes + ids_bytes;
        let t0 = Instant::now();
        let mut entry = self.ring.acquire(&ctx, total)?;
        let t1 = Instant::now();
        let position = slot_index::params(&ctx, n, 0);
        entry.write(|bytes| {
            let (blocks, tail) = bytes.split_at_mut(params_bytes as usize);
            crate::util::copy_parallel(
                bytemuck::cast_slice_mut(&mut tail[..ids_bytes as usize]),
                ids,
            );
            let mut blocks = blocks.chunks_exact_mut(stride as usize);
            let mut put = |b: &[u8]| {
                let block = blocks.next().expect("a block for every params block");
                block[..b.len()].copy_from_slice(b);
            };
            put(bytemuck::bytes_of(&base));
            put(bytemuck::bytes_of(&sweep));
            for b in fetch_blocks {
                put(bytemuck::bytes_of::<DrivenParams>(&b));
            }
            put(bytemuck::bytes_of(&position));
            for b in copy_blocks {
                put(bytemuck::bytes_of(&b));
            }
        })?;
        let copier = entry.copier();
        let staged = d.params.get(&ctx, params_bytes)?.clone();
        copier.copy_to(&mut enc, 0, &staged, 0, params_bytes);
        let ids_buf = d.ids.get(&ctx, ids_bytes)?.clone();
        copier.copy_to(&mut enc, params_bytes, &ids_buf, 0, ids_bytes);
        let at = |offset| ParamsAt::bound(&staged, offset, stride);
        // This pass's counters start at 0; the kept ones (from word 16) stay.
        enc.clear_buffer(&d.work, 0, Some(64));
        let bufs = DrivenBuffers {
            ids: &ids_buf,
            slot_of: &d.slot_of,
            state: &d.state,
            work: &d.work,
            adm: &d.adm,
        };
        let max = ctx.limits().max_compute_workgroups_per_dimension;
        if let Some(a) = d.admission.as_mut() {
            // Before this pass counts its own uses: the sketch forgotten if the last pass
            // saw the hot set move (the GPU decided; 1,024 groups at most, so the usual
            // early return costs microseconds), then halved when its period is up.
            let counters = 4 * (u64::from(a.sketch_mask) + 1);
            let groups = counters.div_ceil(256).min(u64::from(max));
            let phases = [(Phase::Forget, groups.min(1024), &mut a.forget)];
            let halve = age.then_some((Phase::Age, groups, &mut a.age));
            for (phase, groups, launch) in phases.into_iter().chain(halve) {
                kernels::encode(
                    &ctx,
                    &mut enc,
                    phase,
                    &bufs,
                    (groups as u32, 1),
                    launch,
                    kernels::ParamsSource::At(at(0)),
                )?;
            }
        }
        let sweep_grid = grid(sweep.blocks, max);
        let [find, tally, plan, evict] = &mut d.phases;
        let steps: [(Phase, (u32, u32), &mut Launch, u64); 4] = [
            (Phase::Find, grid_for_threads(&ctx, n as u64), find, 0),
            (Phase::Tally, sweep_grid, tally, stride),
            (Phase::Plan, (1, 1), plan, stride),
            (Phase::Evict, sweep_grid, evict, stride),
        ];
        for (phase, groups, launch, offset) in steps {
            kernels::encode(
                &ctx,
                &mut enc,
                phase,
                &bufs,
                groups,
                launch,
                kernels::ParamsSource::At(at(offset)),
            )?;
        }
        let fetches = kernels::fetch_dispatches(&d.table, &self.slots);
        if d.fetch.len() < fetches {
            d.fetch.resize_with(fetches, Launch::default);
        }
        if d.training {
            // Dirty victims' rows go back to the table before the fetch overwrites them (the
            // fetch's params blocks and grid serve these dispatches too).
            if d.write_back.len() < pairs {
                d.write_back.resize_with(pairs, Launch::default);
            }
            let b = kernels::WriteBackBuffers {
                table: &d.table,
                slots: &self.slots,
                work: &d.work,
                state: &d.state,
            };
            let params = kernels::ParamsSource::At(at(fetch_at));
            let launches = &mut d.write_back[..pairs];
            kernels::encode_copy_out(
                &ctx,
                &mut enc,
                "write_back",
                &b,
                fetch_grid,
                launches,
                params,
            )?;
            kernels::encode_marks(
                &ctx,
                &mut enc,
                "clean_victims",
                row_words,
                &d.state,
                Some((1, &d.work)),
                fetch_grid,
                &mut d.clean_victims,
                params,
            )?;
        }
        kernels::encode_fetch(
            &ctx,
            &mut enc,
            &d.table,
            &self.slots,
            &d.work,
            fetch_grid,
            &mut d.fetch[..fetches],
            at(fetch_at),
        )?;
        if target.positions() {
            let pos = self.buffers.pos_slots.get(&ctx, ids_bytes)?.clone();
            slot_index::encode(
                &ctx,
                &mut enc,
                Kernel::Position,
                n,
                &ids_buf,
                &d.slot_of,
                &pos,
                &mut d.position,
                at(position_at),
            )?;
            if let Target::Gather(out, offset) = target {
                copy_rows::encode(
                    &ctx,
                    &mut enc,
                    Direction::Gather,
                    &self.slots,
                    &pos,
                    n,
                    out,
                    offset,
                    &mut self.buffers.gather,
                    Some(at(gather_at)),
                )?;
            }
        }
        d.totals.changed();
        // A driven pass changes nothing on the host the counters read: an empty plan.
        self.plan.clear();
        let times = PassTimes {
            wait: t1 - t0,
            copy: t1.elapsed(),
            ..Default::default()
        };
        Ok((
            n,
            RecordedPass {
                commands: enc.finish(),
                entry,
                removals: 0,
                times,
                on_gpu: true,
            },
        ))
    }
}

impl PassEngine {
    /// Records in `enc` the `touch` of a prefetched batch of `n` positions whose slot list
    /// is `pos` (prefetched.rs): its slots stamped by a new batch's epoch, its hits
    /// counted. `false` (nothing recorded) when the epochs would wrap: a pass serves it.
    pub(super) fn encode_touch(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        pos: &wgpu::Buffer,
        n: usize,
    ) -> Result<bool> {
        let ctx = self.ctx.clone();
        let d = self.driven.as_mut().expect("a GPU-driven engine");
        if d.epoch + 1 >= kernels::EPOCH {
            return Ok(false);
        }
        d.epoch += 1;
        d.batch_epoch = d.epoch;
        let grid = grid_for_threads(&ctx, n as u64);
        let p = DrivenParams {
            n: n as u32,
            groups_x: grid.0,
            epoch: d.epoch,
            batch_epoch: d.epoch,
            capacity: d.capacity as u32,
            ..Default::default()
        };
        let bufs = DrivenBuffers {
            ids: pos,
            slot_of: &d.slot_of,
            state: &d.state,
            work: &d.work,
            adm: &d.adm,
        };
        let params = kernels::ParamsSource::Host(std::slice::from_ref(&p));
        kernels::encode(&ctx, enc, Phase::Touch, &bufs, grid, &mut d.touch, params)?;
        d.totals.changed();
        Ok(true)
    }
}

/// `base` for each (table shard, slot shard) pair, table shard major, over a grid
/// `groups_x` workgroups wide: the params blocks of the dispatches that move rows between
/// the table in host memory and the slots (fetch, write-back, flush).
fn pair_params<'a>(
    base: DrivenParams,
    groups_x: u32,
    table: &'a RowBuffer,
    slots: &'a RowBuffer,
) -> impl Iterator<Item = DrivenParams> + 'a {
    let slot_shards = slots.shards().len();
    (0..table.shards().len() * slot_shards).map(move |k| {
        let (t, s) = (k / slot_shards, k % slot_shards);
        let slot_range = kernels::shard_range(slots, s);
        kernels::fetch_params(base, groups_x, (table, t), slot_range)
    })
}

/// What a flush of a training cache read back: the table rows written since the last
/// flush, ascending, and their stored words (values, then optimizer state).
pub(crate) struct Written {
    pub(crate) ids: Vec<u32>,
    pub(crate) words: Vec<u32>,
}

impl PassEngine {
    /// Marks the slots `list[0..n]` (the rows an update changed) dirty, recorded in `enc`.
    pub(crate) fn mark_changed(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        list: &wgpu::Buffer,
        n: usize,
    ) -> Result<()> {
        let ctx = self.ctx.clone();
        let row_words = self.layout.words_per_row();
        let d = self.driven.as_mut().expect("a GPU-driven engine");
        let groups = grid_for_threads(&ctx, n as u64);
        let p = DrivenParams {
            n: n as u32,
            groups_x: groups.0,
            capacity: d.capacity as u32,
            ..Default::default()
        };
        kernels::encode_marks(
            &ctx,
            enc,
            "mark",
            row_words,
            &d.state,
            Some((5, list)),
            groups,
            &mut d.mark,
            kernels::ParamsSource::Host(&[p]),
        )
    }

    /// Writes every dirty resident row back to the table and clears the marks, waits, and
    /// reads back the rows written since the last [`PassEngine::written_done`].
    pub(super) fn flush_table(&mut self) -> Result<Written> {
        let ctx = self.ctx.clone();
        let row_words = self.layout.words_per_row();
        let d = self.driven.as_mut().expect("a GPU-driven engine");
        let written_at = kernels::written_at(d.capacity, d.bins);
        let words = kernels::fetch_word(row_words).1;
        let grid = kernels::fetch_grid(&ctx, d.capacity, words);
        let base = DrivenParams {
            groups_x: grid.0,
            capacity: d.capacity as u32,
            words,
            written_at: written_at as u32,
            ..Default::default()
        };
        let rows = d.table.rows();
        let pairs: Vec<DrivenParams> = pair_params(base, grid.0, &d.table, &self.slots).collect();
        if d.flush.len() < pairs.len() {
            d.flush.resize_with(pairs.len(), Launch::default);
        }
        let mut enc = encoder(&ctx, "hotrow flush");
        let b = kernels::WriteBackBuffers {
            table: &d.table,
            slots: &self.slots,
            work: &d.work,
            state: &d.state,
        };
        let launches = &mut d.flush[..pairs.len()];
        let params = kernels::ParamsSource::Host(&pairs);
        kernels::encode_copy_out(&ctx, &mut enc, "flush", &b, grid, launches, params)?;
        let groups = grid_for_threads(&ctx, d.capacity as u64);
        let clean = DrivenParams {
            groups_x: groups.0,
            ..base
        };
        kernels::encode_marks(
            &ctx,
            &mut enc,
            "clean",
            row_words,
            &d.state,
            None,
            groups,
            &mut d.clean,
            kernels::ParamsSource::Host(&[clean]),
        )?;
        crate::gpu::submit_encoder(&ctx, enc)?;
        ctx.wait_idle()?;
        let bits = crate::gpu::read_u32(&ctx, &d.work, written_at as u64 * 4, rows.div_ceil(32))?;
        let ids: Vec<u32> = bits
            .iter()
            .enumerate()
            .flat_map(|(w, &b)| {
                (0..32)
                    .filter(move |k| b >> k & 1 == 1)
                    .map(move |k| (w * 32 + k) as u32)
            })
            .collect();
        let words = read_table_rows(&ctx, &d.table, &ids)?;
        Ok(Written { ids, words })
    }

    /// Forgets the written-rows bitmap once a flush's rows are safe in the row source.
    pub(super) fn table_flushed(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        let d = self.driven.as_mut().expect("a GPU-driven engine");
        let at = kernels::written_at(d.capacity, d.bins) as u64 * 4;
        let mut enc = encoder(&ctx, "hotrow flush done");
        enc.clear_buffer(&d.work, at, Some(d.table.rows().div_ceil(32) as u64 * 4));
        crate::gpu::submit_encoder(&ctx, enc)?;
        Ok(())
    }
}

/// The stored words of table rows `ids` (ascending), read from host memory: directly where
/// the table is hotrow's own imported memory, else through a mapping of each shard's range
/// (no submission uses the table meanwhile: the caller waited for the GPU).
fn read_table_rows(ctx: &GpuContext, table: &RowBuffer, ids: &[u32]) -> Result<Vec<u32>> {
    let words = table.layout().words_per_row();
    let shard_rows = table.shard_rows();
    let mut out = Vec::with_capacity(ids.len() * words);
    let shards: Vec<&wgpu::Buffer> = table.shards().collect();
    let mut at = 0;
    while at < ids.len() {
        let shard = ids[at] as usize / shard_rows;
        let end = at + ids[at..].partition_point(|&id| (id as usize) / shard_rows == shard);
        let local = |id: u32| id as usize - shard * shard_rows;
        // SAFETY: the caller waited for the GPU; no other slice of the shard is alive.
        if let Some(host) = unsafe { table.host_words(shard) } {
            for &id in &ids[at..end] {
                out.extend_from_slice(&host[local(id) * words..][..words]);
            }
        } else {
            let row_bytes = words as u64 * 4;
            let first = local(ids[at]) as u64 * row_bytes;
            let start = first / 8 * 8; // (map offsets are 8-byte aligned)
            let stop = ((local(ids[end - 1]) as u64 + 1) * row_bytes).next_multiple_of(4);
            crate::gpu::map_read_with(ctx, shards[shard], start, stop - start, |bytes| {
                let all: &[u8] = bytes;
                for &id in &ids[at..end] {
                    let from = (local(id) as u64 * row_bytes - start) as usize;
                    let row = &all[from..from + row_bytes as usize];
                    out.extend(
                        row.chunks_exact(4)
                            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    );
                }
            })?;
        }
        at = end;
    }
    Ok(out)
}

/// Rows compared per chunk when a flush salvages the table after a device loss.
const SALVAGE_ROWS: usize = 1 << 14;

impl PassEngine {
    /// After the device is lost: the table rows that differ from `source` (bitwise), read
    /// by the host from hotrow's own imported table memory, with their stored words; the
    /// rows written back before the loss are among them, found without the GPU's bitmap.
    /// `None` when the table is not host-mapped (wgpu's buffers cannot be mapped then).
    pub(super) fn salvage_table<S: RowSource>(&self, source: &S) -> Result<Option<Written>> {
        let d = self.driven.as_ref().expect("a GPU-driven engine");
        if !d.table.host_mapped() {
            return Ok(None);
        }
        let (dim, words) = (self.layout.dim(), self.layout.words_per_row());
        let mut out = Written {
            ids: Vec::new(),
            words: Vec::new(),
        };
        let mut values = vec![0f32; SALVAGE_ROWS * dim];
        let mut ids: Vec<u32> = Vec::with_capacity(SALVAGE_ROWS);
        for shard in 0..d.table.shards().len() {
            // SAFETY: the device is lost: no submission reads or writes the table any more,
            // and this is the only slice of the shard alive.
            let Some(host) = (unsafe { d.table.host_words(shard) }) else {
                return Ok(None);
            };
            let base = shard * d.table.shard_rows();
            for (k, chunk) in host.chunks(SALVAGE_ROWS * words).enumerate() {
                let first = base + k * SALVAGE_ROWS;
                let n = chunk.len() / words;
                ids.clear();
                ids.extend(first as u32..(first + n) as u32);
                crate::cache::caught::caught(|| source.read_rows(&ids, &mut values[..n * dim]))?;
                for (r, row) in chunk.chunks_exact(words).enumerate() {
                    let stored = &values[r * dim..][..dim];
                    if row[..dim]
                        .iter()
                        .zip(stored)
                        .any(|(&w, v)| w != v.to_bits())
                    {
                        out.ids.push((first + r) as u32);
                        out.words.extend_from_slice(row);
                    }
                }
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::Admission;

    #[test]
    fn the_sketch_is_twice_the_capacity_and_fits_one_binding() {
        // 838,860 slots (W2's 10%): rows of 2^21 counters, a table of 2^19 refused rows.
        let a = Admission::new(838_860, 104_858, 2 << 30);
        assert_eq!(a.sketch_mask + 1, 1 << 21);
        assert_eq!(a.ghost_mask + 1, 1 << 19);
        assert_eq!(a.bytes(), (4 * (1 << 21) + 2 * (1 << 19)) * 4);
        assert_eq!((a.transient, a.age_every), (104_858, 20_971_500));
        // a small binding halves the rows until the buffer fits
        let small = Admission::new(838_860, 1, 16 << 20);
        assert!(small.bytes() <= 16 << 20);
        assert_eq!(small.sketch_mask + 1, 1 << 19);
        // tiny caches keep 64 counters a row
        let tiny = Admission::new(3, 1, 2 << 30);
        assert_eq!((tiny.sketch_mask, tiny.ghost_mask), (63, 15));
    }
}
