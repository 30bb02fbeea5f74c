//! The embedding cache: a fixed number of GPU slots holding the hot rows of a table that
//! lives in host memory (or any [`RowSource`]); each batch uploads only the rows the GPU
//! does not hold yet.
//!
//! The public cache types are façades over one engine: [`EmbeddingCache`] (this file and
//! `products.rs`, the ops over the cache) holds a `PassEngine` (`engine/`, the passes of a
//! batch); `TableBatchedCache` (`batched/`) holds one `EmbeddingCache` per row width; the
//! multi-GPU caches (`multi_gpu/`) hold one per device. The slot map (`slot_map/`, its
//! partitions in `slot_map/partitions/`) decides which row sits in which slot; `config.rs` and `stats.rs` are
//! the settings and counters; `caught.rs` and `host_pool.rs` are side jobs.

mod batched;
mod caught;
mod config;
mod engine;
mod group_ahead;
mod host_pool;
mod multi_gpu;
mod path;
mod products;
mod slot_map;
mod stats;
mod train;

pub use batched::{TableBags, TableBatchedCache, TableStats};
pub use config::{BatchPath, CacheConfig, CacheMemory, Capacity, Resolution};
pub use engine::DrivenState;
pub use multi_gpu::{HostTraffic, OwnedRows, PartitionedCache, ReplicatedCache};
pub use products::Queries;
pub use slot_map::{EvictionPolicy, PartitionedSlotMap, PassPlan, SlotMap};
pub use stats::CacheStats;

use crate::batch::check_ids;
use crate::error::{HotrowError, Result};
use crate::gpu::{Embeddings, GpuContext, LaunchState, Placement, RowBuffer, RowLayout};
use crate::ops::update::Produced;
use crate::table::RowSource;
use engine::{fill_host_table, CopyBack, Driven, PassEngine};
use host_pool::guarded_on_host_pool;

/// A GPU cache of table rows: `lookup(&ids)` returns `table[ids[i]]` for every position as
/// [`Embeddings`] on the GPU, uploading only rows that are not resident.
///
/// **Per batch:** the ids are checked once (an id `>= rows` is an error naming it and its
/// position, raised before anything changes); the [`SlotMap`] resolves them to slots,
/// deduplicating as it goes and evicting by the configured policy (CLOCK by default, exact
/// LRU on request) for the misses; the missed rows are copied from the row source straight
/// into a mapped staging buffer (in parallel) together with the slot lists; one submission
/// copies them up, scatters the rows into their slots (`shaders/copy_rows.wgsl`) and
/// gathers the output. The call returns after submitting, so the host prepares the next
/// batch while the GPU runs this one.
///
/// **More distinct ids than slots:** served correctly in several passes. A pass ends when
/// every slot is pinned by it (or its uploads reach `max_upload_bytes_per_pass`); the next
/// pass may evict the previous pass's rows, which is safe because the GPU runs submissions
/// in order, so the earlier gather has read them before they are overwritten.
///
/// **Failures:** a row source that returns an error or panics fails the batch with
/// [`HotrowError::RowSource`] / [`HotrowError::RowSourcePanicked`]; the cache keeps none of
/// the batch's missed rows and stays usable.
///
/// ```no_run
/// # fn main() -> Result<(), hotrow::HotrowError> {
/// use hotrow::{CacheConfig, Capacity, EmbeddingCache, GpuContext, HostTable};
/// let ctx = GpuContext::new()?;
/// let dim = 16;
/// let data: Vec<f32> = (0..10_000 * dim).map(|i| (i as f32 * 0.37).sin()).collect();
/// let table = HostTable::borrowed(&data, dim)?;
/// let config = CacheConfig::default().capacity(Capacity::Rows(1_000));
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
    layout: RowLayout,
    engine: PassEngine,
    config: CacheConfig,
    /// Launch state of the ops over the cache.
    bag_launch: LaunchState,
    product_launch: LaunchState,
    /// Training: the update's launch state, and whether rows changed since the last flush.
    train_launch: crate::ops::update::TrainState,
    unflushed: train::Unflushed,
}

impl<S: RowSource> std::fmt::Debug for EmbeddingCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingCache")
            .field("rows", &self.source.rows())
            .field("dim", &self.layout.dim())
            .field("config", &self.config)
            .field("stats", &self.engine.stats())
            .finish()
    }
}

impl<S: RowSource> EmbeddingCache<S> {
    /// Builds a cache over `source` on `ctx`. Errors: a capacity of 0 rows
    /// ([`HotrowError::InvalidArgument`]), or more than the adapter can allocate
    /// ([`HotrowError::ExceedsLimit`] / [`HotrowError::OutOfMemory`]).
    ///
    /// On the GPU-driven path ([`BatchPath`]) the whole table is first copied into host
    /// memory the GPU reads; [`EmbeddingCache::with_progress`] reports that fill.
    pub fn new(ctx: &GpuContext, source: S, config: CacheConfig) -> Result<Self> {
        Self::build(ctx, source, config, false, &mut |_, _| {})
    }

    /// [`EmbeddingCache::new`], calling `progress(rows done, rows)` as the GPU-driven
    /// path's table fills (a big table takes seconds; not called on the host path).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{BatchPath, CacheConfig, EmbeddingCache, GpuContext, GpuOptions, HostTable};
    /// let ctx = GpuContext::with_options(GpuOptions { host_visible_storage: true, ..Default::default() })?;
    /// let data = vec![0.25f32; 100_000 * 32];
    /// let table = HostTable::borrowed(&data, 32)?;
    /// let config = CacheConfig::default().path(BatchPath::Gpu);
    /// let cache = EmbeddingCache::with_progress(&ctx, table, config, |done, rows| {
    ///     eprintln!("table in host memory: {done} / {rows} rows");
    /// })?;
    /// assert_eq!(cache.config().path, BatchPath::Gpu);
    /// # Ok(()) }
    /// ```
    pub fn with_progress(
        ctx: &GpuContext,
        source: S,
        config: CacheConfig,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        Self::build(ctx, source, config, false, &mut progress)
    }

    /// [`EmbeddingCache::new`]; with `scalar`, kernels read rows one value at a time.
    pub(crate) fn build(
        ctx: &GpuContext,
        source: S,
        config: CacheConfig,
        scalar: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        ctx.guarded(|| {
            let (rows, dim) = (source.rows(), source.dim());
            if dim == 0 || rows == 0 {
                return Err(HotrowError::InvalidArgument(format!(
                    "row source must have rows and dim >= 1 (got {rows} x {dim})"
                )));
            }
            let native = config.shader_f16 && ctx.adapter().shader_f16;
            let mut layout = RowLayout::new(dim, config.row_format)?.with_native_f16(native);
            if let Some(optimizer) = config.training {
                train::check_settings(optimizer, &config)?;
                if optimizer.state_values() > 0 {
                    layout = layout.with_state(optimizer.state_per_row(layout.dim()));
                }
            }
            if scalar {
                layout = layout.scalar();
            }
            if rows > u32::MAX as usize {
                return Err(HotrowError::ExceedsLimit {
                    what: "table rows (ids are u32)",
                    bytes: layout.bytes(rows),
                    limit_name: "u32::MAX rows",
                    limit: u32::MAX as u64,
                });
            }
            let cap = capacity_rows(&config.capacity, rows, layout.row_bytes())?;
            let capacity = cap.min(rows as u64) as usize;
            let (path, path_reason) = path::choose_path(ctx, &config, rows, capacity)?;
            if config.training.is_some() {
                train::check_slots(ctx, layout.bytes(capacity))?;
            }
            let row_bytes = layout.row_bytes();
            let partitions = config.partitions_for(rayon::current_num_threads());
            let map = PartitionedSlotMap::new(rows, capacity, config.policy, partitions);
            // (With admission, the transient slots follow the cache's own.)
            let slots = RowBuffer::with_layout(
                ctx,
                map.slots(),
                layout,
                config.slot_buffer.clone(),
                Placement::Device,
            )?;
            let max_upload = config
                .max_upload_bytes_per_pass
                .min(ctx.max_binding())
                .min(ctx.limits().max_buffer_size / 2)
                .max(row_bytes);
            let staging = config.staging_buffers.max(1);
            let table_bytes = rows as u64 * 4;
            let fits = table_bytes <= ctx.max_binding();
            let device = config.resolution == Resolution::Device;
            if device && config.policy == EvictionPolicy::TinyLfu {
                return Err(HotrowError::InvalidArgument(
                    "Resolution::Device keeps only resident rows in the GPU's slot index: \
                     EvictionPolicy::TinyLfu (transient slots) needs Resolution::Host"
                        .into(),
                ));
            }
            if device && !fits {
                return Err(HotrowError::ExceedsLimit {
                    what: "the GPU's slot index (Resolution::Device)",
                    bytes: table_bytes,
                    limit_name: "max_storage_buffer_binding_size",
                    limit: ctx.max_binding(),
                });
            }
            let index_rows = device.then_some(rows);
            let driven = match path {
                BatchPath::Gpu => {
                    let options = config.table_buffer.clone();
                    let table = fill_host_table(ctx, &source, (layout, options), progress)?;
                    // (The slots past the capacity, with admission, are its transient ones.)
                    Some(Driven::new(
                        ctx,
                        table,
                        capacity,
                        config.training.is_some(),
                        slots.rows() - capacity,
                    )?)
                }
                _ => None,
            };
            let mut engine =
                PassEngine::new(ctx, slots, map, staging, max_upload, index_rows, driven)?;
            if config.miss_ratio_curve {
                engine.estimate_curve(rows);
            }
            if config.training.is_some() && path == BatchPath::Host {
                let state = layout.has_state();
                let words = layout.words_per_row();
                engine.set_copy_back(CopyBack::new(capacity, rows, words, state));
            }
            let effective = config
                .clone()
                .capacity(Capacity::Rows(capacity))
                .partitions(engine.map().partitions())
                .staging_buffers(staging)
                .max_upload_bytes_per_pass(engine.max_upload_bytes())
                .shader_f16(layout.native_f16())
                .path(path);
            let effective = CacheConfig {
                path_reason,
                ..effective
            };
            Ok(Self {
                ctx: ctx.clone(),
                source,
                layout,
                engine,
                config: effective,
                bag_launch: LaunchState::default(),
                product_launch: LaunchState::default(),
                train_launch: Default::default(),
                unflushed: train::Unflushed::default(),
            })
        })
    }

    /// Looks up `ids` into new [`Embeddings`] (`ids.len() x dim`, on the GPU).
    pub fn lookup(&mut self, ids: &[u32]) -> Result<Embeddings> {
        check_ids(ids, self.source.rows())?;
        let mut out = Embeddings::new(&self.ctx, ids.len(), self.dim())?;
        self.lookup_checked(ids, &mut out)?;
        Ok(out)
    }

    /// Like [`EmbeddingCache::lookup`], reusing `out` (grown when too small; it must come
    /// from this cache's context).
    pub fn lookup_into(&mut self, ids: &[u32], out: &mut Embeddings) -> Result<()> {
        check_ids(ids, self.source.rows())?;
        self.lookup_checked(ids, out)
    }

    fn lookup_checked(&mut self, ids: &[u32], out: &mut Embeddings) -> Result<()> {
        let ctx = self.ctx.clone();
        guarded_on_host_pool(&ctx, || {
            out.reset_for(&self.ctx, ids.len(), self.layout.dim())?;
            if ids.is_empty() {
                return self.ctx.check();
            }
            let out = out.buffer();
            self.forward_grouping_ahead(ids, Produced::Lookup, |c| {
                c.engine.serve(&c.source, ids, Some(out))
            })
        })
    }

    /// Makes `ids` resident (uploading those that are not), with no output.
    pub fn preload(&mut self, ids: &[u32]) -> Result<()> {
        self.make_resident(ids, false)
    }

    /// Lookahead: uploads the rows of `ids` (the next batch) that are not resident, and
    /// returns once that is submitted, so it runs while the GPU works on the batch before;
    /// the next `lookup(ids)` then finds them all resident. Call it after the current
    /// batch's call, or before it: the prefetched rows are held until the next batch has
    /// been resolved, so the current batch cannot push them out, unless it needs their room
    /// itself (it then wins): the host path's slot map does not evict them, the GPU-driven
    /// path's sweep takes their slots only when no other is left. A batch with more
    /// distinct rows than the cache keeps what fits (its last pass's rows). Under
    /// [`EvictionPolicy::TinyLfu`] a prefetched row is admitted as a missed row is: one
    /// refused (`stats().refused`) is not kept, and the lookup uploads it again. Ids are
    /// checked first (nothing changes on an error); empty `ids` do nothing. Its uploads
    /// count in [`EmbeddingCache::stats`] as a batch's.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{CacheConfig, Capacity, EmbeddingCache, GpuContext, HostTable};
    /// let ctx = GpuContext::new()?;
    /// let data = vec![0.5f32; 100_000 * 64];
    /// let table = HostTable::borrowed(&data, 64)?;
    /// let mut cache = EmbeddingCache::new(&ctx, table, CacheConfig::default())?;
    /// let batches: Vec<Vec<u32>> = (0..10u32).map(|b| (0..512).map(|i| i * 97 + b).collect()).collect();
    /// cache.prefetch(&batches[0])?;
    /// for k in 0..batches.len() {
    ///     let out = cache.lookup(&batches[k])?; // all hits: prefetched
    ///     if let Some(next) = batches.get(k + 1) {
    ///         cache.prefetch(next)?; // uploads while the GPU runs batch k
    ///     }
    ///     // ... use `out` ...
    /// }
    /// # Ok(()) }
    /// ```
    pub fn prefetch(&mut self, ids: &[u32]) -> Result<()> {
        self.make_resident(ids, true)
    }

    /// [`EmbeddingCache::preload`], or with `hold` [`EmbeddingCache::prefetch`].
    fn make_resident(&mut self, ids: &[u32], hold: bool) -> Result<()> {
        let ctx = self.ctx.clone();
        guarded_on_host_pool(&ctx, || {
            check_ids(ids, self.source.rows())?;
            if ids.is_empty() {
                return self.ctx.check();
            }
            if hold {
                self.engine.prefetch(&self.source, ids)
            } else {
                self.engine.serve(&self.source, ids, None)
            }
        })
    }

    /// Counters since construction or the last [`EmbeddingCache::reset_stats`]. On the
    /// GPU-driven path the GPU keeps what it decided (distinct ids, hits, misses,
    /// evictions): this waits for the batches submitted so far and reads them back, once
    /// per call after a batch ran (call it between batches, not inside a hot loop).
    pub fn stats(&self) -> CacheStats {
        self.engine.stats()
    }

    /// Zeroes the counters (residency is kept).
    pub fn reset_stats(&mut self) {
        self.engine.reset_stats();
    }

    /// The settings in force: capacity in rows, partitions, staging buffers and upload cap
    /// after clamping to the table and the adapter.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.engine.map().capacity()
    }

    /// Rows of the table.
    pub fn rows(&self) -> usize {
        self.source.rows()
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.layout.dim()
    }

    /// How a row is stored in the slots.
    pub fn layout(&self) -> RowLayout {
        self.layout
    }

    /// The row source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The row source, to change (a table-batched cache's tables, during its flush).
    pub(crate) fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// Gives the row source back, dropping the cache.
    pub fn into_source(self) -> S {
        self.source
    }

    /// The slot map (which id is in which slot) of the host path. On the GPU-driven path
    /// the GPU keeps that state and this map stays empty.
    pub fn slot_map(&self) -> &PartitionedSlotMap {
        self.engine.map()
    }

    /// The slots on the GPU (bindable by the caller's own pipelines; slot `s` is row `s`).
    pub fn slots(&self) -> &RowBuffer {
        self.engine.slots()
    }

    /// The context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The ids of the resident rows: the slot map's, or on the GPU-driven path the GPU's
    /// (read back, waiting for the batches submitted so far).
    pub(crate) fn resident_ids(&self) -> Result<Vec<u32>> {
        match self.engine.driven() {
            Some(d) => d.resident_ids(&self.ctx),
            None => Ok(self.engine.map().resident()),
        }
    }

    /// Test hook: a copy of the GPU-driven path's state (`None` on the host path).
    #[doc(hidden)]
    pub fn driven_state(&self) -> Result<Option<DrivenState>> {
        self.engine
            .driven()
            .map(|d| d.read_state(&self.ctx))
            .transpose()
    }

    /// Test hook: checks that the GPU's slot index ([`crate::Resolution::Device`]) agrees
    /// with the slot map (rows whose removal is still queued excepted).
    #[doc(hidden)]
    pub fn check_device_table(&self) -> Result<()> {
        self.engine.check_slot_index()
    }

    /// Counts the rows this cache uploads by id range, `bounds[j]..bounds[j + 1]` (a
    /// table-batched cache's tables): on the host path every uploaded row is told to `log`;
    /// on the GPU-driven path the GPU counts them ([`EmbeddingCache::uploads_by_range`]).
    pub(crate) fn count_uploads_by_range(
        &mut self,
        bounds: &[u64],
        log: Box<dyn engine::UploadLog>,
    ) -> Result<()> {
        let ctx = self.ctx.clone();
        match self.engine.driven_mut() {
            Some(d) => d.count_misses_by_range(&ctx, bounds),
            None => {
                self.engine.set_upload_log(log);
                Ok(())
            }
        }
    }

    /// On the GPU-driven path, the rows uploaded in each range given to
    /// [`EmbeddingCache::count_uploads_by_range`] (read back); `None` on the host path.
    pub(crate) fn uploads_by_range(&self) -> Option<Result<Vec<u64>>> {
        self.engine.driven().map(|d| d.misses_by_range(&self.ctx))
    }

    /// GPU memory this cache holds.
    pub fn memory(&self) -> CacheMemory {
        let (scratch, staging) = self.engine.scratch_bytes();
        CacheMemory {
            slots: self.engine.slots().bytes(),
            scratch: scratch
                + self.bag_launch.input.bytes()
                + self.product_launch.input.bytes()
                + self.train_launch.bytes(),
            staging,
            host_table: self.engine.driven().map_or(0, Driven::host_bytes),
            host_trained: self.engine.copy_back().map_or(0, CopyBack::host_bytes),
        }
    }
}

/// The slots `capacity` asks for over `rows` rows of `row_bytes` bytes (before clamping to
/// the table): at least one, else [`HotrowError::InvalidArgument`].
fn capacity_rows(capacity: &Capacity, rows: usize, row_bytes: u64) -> Result<u64> {
    let cap = match *capacity {
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
            "cache capacity must be at least one row ({capacity:?} of {row_bytes}-byte rows gives 0)"
        )));
    }
    Ok(cap)
}
