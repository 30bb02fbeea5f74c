//! The embedding cache: a fixed number of GPU slots holding the hot rows of a table that
//! lives in host memory (or any [`RowSource`]); each batch uploads only the rows the GPU
//! does not hold yet.

mod partitioned;
mod slot_map;
mod stats;

use std::time::Instant;

pub use partitioned::PartitionedSlotMap;
pub use slot_map::{EvictionPolicy, PassPlan, SlotMap};
pub use stats::CacheStats;

use crate::batch::check_ids;
use crate::error::{HotrowError, Result};
use crate::gpu::{Embeddings, GpuContext, RowBuffer, RowBufferOptions, StagingRing, TrackedBuffer};
use crate::ops::RowCopyBindings;
use crate::table::RowSource;

/// How many slots the cache holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Capacity {
    /// This many rows.
    Rows(usize),
    /// As many rows as fit in this many bytes of GPU memory.
    Bytes(u64),
    /// This fraction of the table's rows (rounded up).
    Fraction(f64),
}

/// Settings of an [`EmbeddingCache`].
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Slots on the GPU. Default: 10% of the table's rows. Clamped to the table's row count.
    pub capacity: Capacity,
    /// Staging buffers in the upload ring: the host may run `staging_buffers - 1` batches
    /// ahead of the GPU. Default 3.
    pub staging_buffers: usize,
    /// Most row bytes uploaded in one pass; a batch missing more is served in several
    /// passes. Default 256 MiB (and never more than the adapter's largest storage binding).
    pub max_upload_bytes_per_pass: u64,
    /// Options of the slot buffer (e.g. a cap on shard size).
    pub slot_buffer: RowBufferOptions,
    /// Which resident row makes room for a miss. Default: CLOCK.
    pub policy: EvictionPolicy,
    /// Partitions of the slot map, resolved in parallel (ids split by their low bits, each
    /// partition evicting among its own slots). Rounded down to a power of two and to one
    /// per 1,024 slots. Default: the rayon thread count.
    pub partitions: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: Capacity::Fraction(0.1),
            staging_buffers: 3,
            max_upload_bytes_per_pass: 256 << 20,
            slot_buffer: RowBufferOptions::default(),
            policy: EvictionPolicy::default(),
            partitions: rayon::current_num_threads(),
        }
    }
}

/// GPU memory an [`EmbeddingCache`] holds, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheMemory {
    /// The slots (capacity x dim x 4).
    pub slots: u64,
    /// Device-local scratch: per-pass slot lists and uploaded rows.
    pub scratch: u64,
    /// Host-visible staging buffers of the upload ring.
    pub staging: u64,
}

impl CacheMemory {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.slots + self.scratch + self.staging
    }
}

/// A grow-only device buffer for per-pass data.
struct Scratch {
    what: &'static str,
    usage: wgpu::BufferUsages,
    buf: Option<TrackedBuffer>,
}

impl Scratch {
    fn new(what: &'static str, usage: wgpu::BufferUsages) -> Self {
        Self {
            what,
            usage,
            buf: None,
        }
    }

    fn get(&mut self, ctx: &GpuContext, bytes: u64) -> Result<&wgpu::Buffer> {
        if self.buf.as_ref().is_none_or(|b| b.size() < bytes) {
            self.buf = None;
            // 25% headroom so slowly growing batches do not reallocate every time.
            let mut size = (bytes + bytes / 4).next_multiple_of(1 << 16);
            if size > ctx.max_binding() {
                size = bytes;
            }
            self.buf = Some(ctx.create_buffer(self.what, size, self.usage, false)?);
        }
        Ok(self.buf.as_ref().expect("scratch buffer just made"))
    }

    fn bytes(&self) -> u64 {
        self.buf.as_ref().map_or(0, |b| b.size())
    }
}

/// A GPU cache of table rows: `lookup(&ids)` returns `table[ids[i]]` for every position as
/// [`Embeddings`] on the GPU, uploading only rows that are not resident.
///
/// **Per batch:** the ids are checked (an id `>= rows` is an error naming it and its
/// position, raised before anything changes); the [`SlotMap`] resolves them to slots,
/// deduplicating as it goes and evicting least-recently-used rows for the misses; the
/// missed rows are copied from the row source straight into a mapped staging buffer
/// (in parallel) together with the slot lists; one submission copies them up, scatters the
/// rows into their slots (`shaders/scatter_rows.wgsl`) and gathers the output
/// (`shaders/gather.wgsl`). The call returns after submitting, so the host prepares the
/// next batch while the GPU runs this one.
///
/// **More distinct ids than slots:** served correctly in several passes. A pass ends when
/// every slot is pinned by it (or its uploads reach `max_upload_bytes_per_pass`); the next
/// pass may evict the previous pass's rows, which is safe because the GPU runs submissions
/// in order, so the earlier gather has read them before they are overwritten.
///
/// ```no_run
/// # fn main() -> Result<(), hotrow::HotrowError> {
/// use hotrow::{CacheConfig, Capacity, EmbeddingCache, GpuContext, HostTable};
/// let ctx = GpuContext::new()?;
/// let dim = 16;
/// let data: Vec<f32> = (0..10_000 * dim).map(|i| (i as f32 * 0.37).sin()).collect();
/// let table = HostTable::borrowed(&data, dim)?;
/// let config = CacheConfig { capacity: Capacity::Rows(1_000), ..Default::default() };
/// let mut cache = EmbeddingCache::new(&ctx, table, config)?;
/// cache.preload(&[1, 2, 3])?;                       // warm rows you know are hot
/// let out = cache.lookup(&[7, 3, 9_999, 3])?;       // 4 x 16 on the GPU
/// let host = out.to_host()?;
/// assert_eq!(&host[16..32], &data[3 * dim..4 * dim]);
/// println!("hit rate {:.2}", cache.stats().hit_rate());
/// # Ok(()) }
/// ```
pub struct EmbeddingCache<S: RowSource> {
    ctx: GpuContext,
    source: S,
    slots: RowBuffer,
    map: PartitionedSlotMap,
    ring: StagingRing,
    plan: PassPlan,
    miss_ids: Vec<u32>,
    pos_slots: Scratch,
    miss_slots: Scratch,
    upload: Scratch,
    max_misses: usize,
    scatter_bindings: RowCopyBindings,
    gather_bindings: RowCopyBindings,
    stats: CacheStats,
}

impl<S: RowSource> std::fmt::Debug for EmbeddingCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingCache")
            .field("rows", &self.source.rows())
            .field("dim", &self.source.dim())
            .field("capacity", &self.map.capacity())
            .field("stats", &self.stats)
            .finish()
    }
}

/// Where a pass's rows go.
#[derive(Clone, Copy)]
enum PassTarget<'a> {
    /// Only make the rows resident (preload).
    Resident,
    /// Also upload the per-position slot list (for an op that reads through slots).
    SlotsOnly,
    /// Gather the rows into this buffer from this row on.
    Gather(&'a wgpu::Buffer, usize),
}

/// How an op reads the rows of its batch (see `EmbeddingCache::resolve_for_op`).
pub(crate) enum OpRows {
    /// Through the cache's slots and the pass's slot list.
    Slots,
    /// From this buffer, position `i` at row `i`.
    Gathered(Embeddings),
}

/// Buffers an op binds to read the rows of its batch (see `EmbeddingCache::op_bindings`).
pub(crate) struct OpBindings {
    pub(crate) rows: wgpu::Buffer,
    pub(crate) rows_bytes: u64,
    /// 1 when position `i` reads row `i` of `rows` (gathered), 0 when it reads `slots[i]`.
    pub(crate) identity: u32,
    pub(crate) slots: wgpu::Buffer,
    pub(crate) slots_bytes: u64,
}

/// 16-byte alignment of regions inside a staging buffer (vec4 rows, copy alignment).
fn align16(x: u64) -> u64 {
    x.next_multiple_of(16)
}

impl<S: RowSource> EmbeddingCache<S> {
    /// Builds a cache over `source` on `ctx`. Errors: a capacity of 0 rows
    /// ([`HotrowError::InvalidArgument`]), or more than the adapter can allocate
    /// ([`HotrowError::ExceedsLimit`] / [`HotrowError::OutOfMemory`]).
    pub fn new(ctx: &GpuContext, source: S, config: CacheConfig) -> Result<Self> {
        let (rows, dim) = (source.rows(), source.dim());
        if dim == 0 || rows == 0 {
            return Err(HotrowError::InvalidArgument(format!(
                "row source must have rows and dim >= 1 (got {rows} x {dim})"
            )));
        }
        if rows > u32::MAX as usize {
            return Err(HotrowError::ExceedsLimit {
                what: "table rows (ids are u32)",
                bytes: rows as u64 * dim as u64 * 4,
                limit_name: "u32::MAX rows",
                limit: u32::MAX as u64,
            });
        }
        let row_bytes = dim as u64 * 4;
        let cap = match config.capacity {
            Capacity::Rows(n) => n as u64,
            Capacity::Bytes(b) => b / row_bytes,
            Capacity::Fraction(f) if f.is_finite() && f > 0.0 => (rows as f64 * f).ceil() as u64,
            Capacity::Fraction(f) => {
                return Err(HotrowError::InvalidArgument(format!(
                    "capacity fraction must be > 0, got {f}"
                )))
            }
        };
        if cap == 0 {
            return Err(HotrowError::InvalidArgument(format!(
                "cache capacity must be at least one row ({:?} of {row_bytes}-byte rows gives 0)",
                config.capacity
            )));
        }
        let capacity = cap.min(rows as u64) as usize;
        let slots = RowBuffer::with_options(ctx, capacity, dim, config.slot_buffer.clone())?;
        let max_upload = config
            .max_upload_bytes_per_pass
            .min(ctx.max_binding())
            .min(ctx.limits().max_buffer_size / 2);
        let max_misses = ((max_upload / row_bytes) as usize).max(1);
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        Ok(Self {
            ctx: ctx.clone(),
            map: PartitionedSlotMap::new(rows, capacity, config.policy, config.partitions),
            source,
            slots,
            ring: StagingRing::new(config.staging_buffers),
            plan: PassPlan::default(),
            miss_ids: Vec::new(),
            pos_slots: Scratch::new("hotrow pass slots", storage),
            miss_slots: Scratch::new("hotrow miss slots", storage),
            upload: Scratch::new("hotrow uploaded rows", storage),
            max_misses,
            scatter_bindings: RowCopyBindings::default(),
            gather_bindings: RowCopyBindings::default(),
            stats: CacheStats::default(),
        })
    }

    /// Looks up `ids` into new [`Embeddings`] (`ids.len() x dim`, on the GPU).
    pub fn lookup(&mut self, ids: &[u32]) -> Result<Embeddings> {
        check_ids(ids, self.source.rows())?;
        let mut out = Embeddings::new(&self.ctx, ids.len(), self.source.dim())?;
        self.lookup_into(ids, &mut out)?;
        Ok(out)
    }

    /// Like [`EmbeddingCache::lookup`], reusing `out` (grown when too small).
    pub fn lookup_into(&mut self, ids: &[u32], out: &mut Embeddings) -> Result<()> {
        check_ids(ids, self.source.rows())?;
        out.reset(ids.len(), self.source.dim())?;
        self.serve(ids, Some(out.buffer()))
    }

    /// Makes `ids` resident (uploading those that are not), with no output.
    pub fn preload(&mut self, ids: &[u32]) -> Result<()> {
        check_ids(ids, self.source.rows())?;
        self.serve(ids, None)
    }

    /// Runs the passes of one checked batch. `out` receives row `i` of the batch at row `i`.
    pub(crate) fn serve(&mut self, ids: &[u32], out: Option<&wgpu::Buffer>) -> Result<()> {
        self.ctx.check()?;
        if ids.is_empty() {
            return Ok(());
        }
        let mut start = 0;
        while start < ids.len() {
            let target = match out {
                Some(out) => PassTarget::Gather(out, start),
                None => PassTarget::Resident,
            };
            start += self.run_pass(&ids[start..], target)?;
        }
        self.stats.batches += 1;
        self.stats.requests += ids.len() as u64;
        Ok(())
    }

    /// Resolves checked, non-empty `ids` for an op that reads rows through slots.
    ///
    /// Common case: one pass covers the batch and the slots live in one buffer; the op then
    /// binds [`EmbeddingCache::slots`] and the per-position slot list, touching only the
    /// rows the batch needs. Otherwise (more distinct ids than slots, or a sharded slot
    /// buffer) the rows are gathered, pass by pass, into a temporary buffer the op reads
    /// with identity slots; GPU submission order keeps each pass's rows valid until read.
    pub(crate) fn resolve_for_op(&mut self, ids: &[u32]) -> Result<OpRows> {
        self.ctx.check()?;
        let n = self.run_pass(ids, PassTarget::SlotsOnly)?;
        let rows = if n == ids.len() && self.slots.shards().len() == 1 {
            OpRows::Slots
        } else {
            let tmp = Embeddings::new(&self.ctx, ids.len(), self.source.dim())?;
            let pos = self.pos_slots.get(&self.ctx, n as u64 * 4)?.clone();
            let mut enc =
                self.ctx
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("hotrow op fallback gather"),
                    });
            crate::ops::gather::encode(
                &self.ctx,
                &mut enc,
                &self.slots,
                &pos,
                n,
                tmp.buffer(),
                0,
                &mut self.gather_bindings,
            )?;
            self.ctx.queue().submit([enc.finish()]);
            let mut start = n;
            while start < ids.len() {
                start += self.run_pass(&ids[start..], PassTarget::Gather(tmp.buffer(), start))?;
            }
            OpRows::Gathered(tmp)
        };
        self.stats.batches += 1;
        self.stats.requests += ids.len() as u64;
        Ok(rows)
    }

    /// What an op binds after [`EmbeddingCache::resolve_for_op`] over `n` ids: the rows
    /// buffer, its bytes, whether slots are identity (rows gathered in order), and the
    /// per-position slot list of the pass (valid until the next pass is submitted).
    pub(crate) fn op_bindings(&self, rows: &OpRows, n: usize) -> OpBindings {
        let (rows, rows_bytes, identity) = match rows {
            OpRows::Slots => {
                let b = self.slots.shards().next().expect("one shard").clone();
                let bytes = b.size();
                (b, bytes, 0)
            }
            OpRows::Gathered(tmp) => (tmp.buffer().clone(), (n * self.dim() * 4) as u64, 1),
        };
        let slots = self
            .pos_slots
            .buf
            .as_ref()
            .expect("slots uploaded by the pass");
        OpBindings {
            rows,
            rows_bytes,
            identity,
            slots_bytes: slots.size().min(n as u64 * 4),
            slots: slots.buffer.clone(),
        }
    }

    /// One pass over a prefix of `ids`; returns how many positions it served.
    fn run_pass(&mut self, ids: &[u32], target: PassTarget<'_>) -> Result<usize> {
        let dim = self.source.dim();
        let t0 = Instant::now();
        // Bound the misses of the pass by bounding the positions looked at (max_misses >= 1),
        // then let the slot map stop early when every slot is pinned.
        let window = &ids[..ids.len().min(self.max_misses)];
        let n = self.map.resolve(window, &mut self.plan);
        let t1 = Instant::now();
        let m = self.plan.misses.len();
        let pos_bytes = match target {
            PassTarget::Resident => 0,
            _ => n as u64 * 4,
        };
        let miss_off = pos_bytes;
        let rows_off = align16(miss_off + m as u64 * 4);
        let total = rows_off + (m * dim) as u64 * 4;

        if m == 0 && matches!(target, PassTarget::Resident) {
            self.account(
                t1 - t0,
                Default::default(),
                Default::default(),
                Default::default(),
            );
            return Ok(n);
        }
        let result = self.upload_and_dispatch(n, target, pos_bytes, rows_off, total);
        match result {
            Ok((wait, copy, submit)) => {
                self.account(t1 - t0, wait, copy, submit);
                Ok(n)
            }
            Err(e) => {
                // The rows were not uploaded: the map must not claim them.
                let misses = std::mem::take(&mut self.plan.misses);
                self.map.forget(&misses);
                Err(e)
            }
        }
    }

    fn account(
        &mut self,
        resolve: std::time::Duration,
        wait: std::time::Duration,
        copy: std::time::Duration,
        submit: std::time::Duration,
    ) {
        let s = &mut self.stats;
        let m = self.plan.misses.len() as u64;
        s.passes += 1;
        s.distinct += self.plan.distinct();
        s.hits += self.plan.hits;
        s.misses += m;
        s.evictions += self.plan.evictions;
        s.bytes_uploaded += m * self.source.dim() as u64 * 4;
        s.resolve_time += resolve;
        s.staging_wait_time += wait;
        s.copy_time += copy;
        s.submit_time += submit;
    }

    #[allow(clippy::type_complexity)]
    fn upload_and_dispatch(
        &mut self,
        n: usize,
        target: PassTarget<'_>,
        pos_bytes: u64,
        rows_off: u64,
        total: u64,
    ) -> Result<(
        std::time::Duration,
        std::time::Duration,
        std::time::Duration,
    )> {
        let dim = self.source.dim();
        let m = self.plan.misses.len();
        let t0 = Instant::now();
        let entry = self.ring.acquire(&self.ctx, total)?;
        let t1 = Instant::now();
        self.miss_ids.clear();
        self.miss_ids
            .extend(self.plan.misses.iter().map(|&(id, _)| id));
        let (plan, source, miss_ids) = (&self.plan, &self.source, &self.miss_ids);
        self.ring.write(entry, total, |bytes| -> Result<()> {
            let (head, rows) = bytes.split_at_mut(rows_off as usize);
            let (pos, misses) = head.split_at_mut(pos_bytes as usize);
            if pos_bytes > 0 {
                cast_mut::<u32>(pos)?.copy_from_slice(&plan.slots);
            }
            let miss_slots = &mut cast_mut::<u32>(misses)?[..m];
            for (dst, &(_, slot)) in miss_slots.iter_mut().zip(&plan.misses) {
                *dst = slot;
            }
            source.read_rows(miss_ids, &mut cast_mut::<f32>(rows)?[..m * dim])
        })??;
        self.ring.unmap(entry);
        let t2 = Instant::now();

        let ctx = self.ctx.clone();
        let staging = self.ring.buffer(entry).clone();
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("hotrow cache pass"),
            });
        if m > 0 {
            let miss_buf = self.miss_slots.get(&ctx, m as u64 * 4)?.clone();
            let rows_buf = self.upload.get(&ctx, (m * dim) as u64 * 4)?.clone();
            enc.copy_buffer_to_buffer(&staging, pos_bytes, &miss_buf, 0, m as u64 * 4);
            enc.copy_buffer_to_buffer(&staging, rows_off, &rows_buf, 0, (m * dim) as u64 * 4);
            crate::ops::scatter::encode(
                &ctx,
                &mut enc,
                &self.slots,
                &miss_buf,
                m,
                &rows_buf,
                0,
                &mut self.scatter_bindings,
            )?;
        }
        if pos_bytes > 0 {
            let pos_buf = self.pos_slots.get(&ctx, pos_bytes)?.clone();
            enc.copy_buffer_to_buffer(&staging, 0, &pos_buf, 0, pos_bytes);
            if let PassTarget::Gather(out, out_offset) = target {
                crate::ops::gather::encode(
                    &ctx,
                    &mut enc,
                    &self.slots,
                    &pos_buf,
                    n,
                    out,
                    out_offset,
                    &mut self.gather_bindings,
                )?;
            }
        }
        let sub = ctx.queue().submit([enc.finish()]);
        self.ring.submitted(entry, sub);
        ctx.check()?;
        Ok((t1 - t0, t2 - t1, t2.elapsed()))
    }

    /// Counters since construction or the last [`EmbeddingCache::reset_stats`].
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Zeroes the counters (residency is kept).
    pub fn reset_stats(&mut self) {
        self.stats = CacheStats::default();
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Rows of the table.
    pub fn rows(&self) -> usize {
        self.source.rows()
    }

    /// f32 values per row.
    pub fn dim(&self) -> usize {
        self.source.dim()
    }

    /// The row source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Gives the row source back, dropping the cache.
    pub fn into_source(self) -> S {
        self.source
    }

    /// The slot map (which id is in which slot).
    pub fn slot_map(&self) -> &PartitionedSlotMap {
        &self.map
    }

    /// The slots on the GPU (bindable by the caller's own pipelines; slot `s` is row `s`).
    pub fn slots(&self) -> &RowBuffer {
        &self.slots
    }

    /// The context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// GPU memory this cache holds.
    pub fn memory(&self) -> CacheMemory {
        CacheMemory {
            slots: self.slots.shards().map(|b| b.size()).sum(),
            scratch: self.pos_slots.bytes() + self.miss_slots.bytes() + self.upload.bytes(),
            staging: self.ring.bytes(),
        }
    }
}

fn cast_mut<T: bytemuck::Pod>(bytes: &mut [u8]) -> Result<&mut [T]> {
    bytemuck::try_cast_slice_mut(bytes).map_err(|e| {
        HotrowError::Map(format!(
            "staging memory not aligned for {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}
