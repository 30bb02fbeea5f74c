//! Settings of an [`crate::EmbeddingCache`] and the GPU memory it reports.

use crate::gpu::{RowBufferOptions, RowFormat};

use super::slot_map::EvictionPolicy;

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

/// Where a batch's ids are resolved to slots.
///
/// Every miss is resolved by the host's [`crate::SlotMap`] (it owns eviction); the choice
/// is who finds the hits. Measured on an H200 with 16 host threads (BENCHMARKS.md): device
/// resolution made pooled bags over 131,072 ids with 98.7% hits (W3) 1.5-1.8x faster, and
/// a stream of 65,536-id batches with 65% hits (W2) 10-30% slower; batches of 4,096 or
/// 16,384 ids were 1.4-2.2x slower (its GPU round trip costs ~0.2 ms per batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resolution {
    /// The host walks every id of the batch through the slot map (in parallel by
    /// partition). No extra GPU memory; the host's time grows with the batch. The default.
    #[default]
    Host,
    /// The GPU holds a copy of the id -> slot map, the slot index (4 bytes per table row),
    /// and finds the hits itself; the host reads back only the misses and a bitmap of the
    /// slots the batch touched (one GPU round trip per batch), resolves the misses and
    /// updates the slot index with the changes. Its host time grows with the batch's misses, not its
    /// length: choose it for long batches that mostly hit. Batches it cannot serve in one
    /// pass (more distinct ids than slots, or more misses than one upload holds) and
    /// preloads go through the host path. The table must fit one storage binding
    /// ([`crate::HotrowError::ExceedsLimit`] at construction otherwise).
    Device,
}

/// Who serves a batch: the host (it resolves the ids and uploads the missed rows) or the
/// GPU itself (it finds, evicts and fetches from a table in host memory it reads directly).
///
/// **Host** works on every adapter (GL and browsers included); every missed row passes
/// through a CPU core into an upload buffer. **Gpu** (the GPU-driven path) keeps the whole
/// table in host memory the GPU reads across the bus (filled once at construction, in the
/// slot row format), and the id -> slot array (4 bytes per table row), the slots' rows and
/// stamps (8 bytes per slot) and the eviction hand on the GPU; a batch is one submission
/// of kernels with nothing read back (see ARCHITECTURE.md). It needs host-visible storage
/// buffers ([`crate::AdapterSummary::host_visible_storage`], asked for with
/// [`crate::GpuOptions::host_visible_storage`]; Vulkan, Metal and DX12 have them, GL and
/// browsers do not), evicts by CLOCK, and finds hits itself ([`Resolution`] does not
/// apply). Its costs: host memory for the whole table (on Vulkan the driver pins it for the
/// cache's life), the table's fill at construction, and a batch longer than the cache's
/// slots is served in several passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchPath {
    /// The GPU-driven path where the context has host-visible storage and the settings
    /// allow it (CLOCK, [`Resolution::Host`], an id -> slot array within one storage
    /// binding), else the host path. [`crate::EmbeddingCache::config`] tells which was
    /// taken and why. The default.
    #[default]
    Auto,
    /// The host resolves ids and uploads missed rows (every adapter).
    Host,
    /// The GPU serves the batch end to end; an adapter or settings that cannot is an error
    /// at construction ([`crate::HotrowError::Unsupported`] /
    /// [`crate::HotrowError::InvalidArgument`] / [`crate::HotrowError::ExceedsLimit`]).
    Gpu,
}

/// Settings of an [`crate::EmbeddingCache`], built from [`CacheConfig::default`] with the
/// builder methods (the struct may gain fields, so it cannot be written as a literal):
///
/// ```
/// use hotrow::{CacheConfig, Capacity, EvictionPolicy};
/// let config = CacheConfig::default()
///     .capacity(Capacity::Fraction(0.05))
///     .policy(EvictionPolicy::Lru);
/// assert_eq!(config.staging_buffers, 3);
/// ```
///
/// [`crate::EmbeddingCache::config`] reports the values in force after clamping.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Slots on the GPU. Default: 10% of the table's rows. Clamped to the table's row count.
    pub capacity: Capacity,
    /// Staging buffers in the upload ring: the host may run `staging_buffers - 1` batches
    /// ahead of the GPU. Default 3 (at least 1 is used).
    pub staging_buffers: usize,
    /// Most row bytes uploaded in one pass; a batch missing more is served in several
    /// passes. Default 256 MiB (and never more than the adapter's largest storage binding,
    /// nor half its largest buffer). The host path's: the GPU-driven path fetches every
    /// miss of a pass (at most `capacity` positions) in that pass.
    pub max_upload_bytes_per_pass: u64,
    /// Options of the slot buffer (e.g. a cap on shard size).
    pub slot_buffer: RowBufferOptions,
    /// Options of the GPU-driven path's table in host memory (e.g. a cap on shard size,
    /// to bound single allocations). Its shards are never larger than the adapter's
    /// largest storage binding; the fetch binds four at a time.
    pub table_buffer: RowBufferOptions,
    /// Which resident row makes room for a miss. Default: CLOCK.
    pub policy: EvictionPolicy,
    /// Partitions of the slot map, resolved in parallel (ids split by their low bits, each
    /// partition evicting among its own slots). Rounded down to a power of two and to one
    /// per 1,024 slots. Default 0: four per thread of the rayon pool the cache is made on
    /// (a multi-GPU cache: per thread of each device's share), chosen at construction and
    /// shown by `config()`. Smaller partitions keep each one's arrays in a core's cache and
    /// balance the threads' load: on a 16-thread host, W2 took 0.61-0.69 ms per batch with
    /// 64 partitions against 0.77-0.83 with 16, and W6 on the host path 2.6 against 3.3 ms.
    pub partitions: usize,
    /// Who finds a batch's hits. Default [`Resolution::Host`].
    pub resolution: Resolution,
    /// How rows are stored in the slots: f32 (default), f16 (half the memory and upload)
    /// or row-wise int8 (about a quarter). Rows are converted on upload; every op reads
    /// them decoded to f32. See [`RowFormat`].
    pub row_format: RowFormat,
    /// Read f16 slots as WGSL `f16` where the adapter has `shader-f16` (default true); off,
    /// or without the feature, f16 rows are unpacked with integer operations (the same
    /// values, on every adapter).
    pub shader_f16: bool,
    /// Who serves a batch (default [`BatchPath::Auto`]). In the settings a cache reports
    /// ([`crate::EmbeddingCache::config`]) it is the path taken, `Host` or `Gpu`.
    pub path: BatchPath,
    /// Why the cache took its path (set in the settings a cache reports; ignored when
    /// building).
    pub path_reason: &'static str,
    /// A training cache: [`crate::EmbeddingCache::backward_bags`] and
    /// [`crate::EmbeddingCache::backward_lookup`] update the rows where they are cached with
    /// this optimizer, and changed rows go back to the table (`flush` writes them to the
    /// row source). Needs f32 rows; either path (default `None`).
    pub training: Option<crate::Optimizer>,
    /// Estimate the miss-ratio curve of the traffic online
    /// ([`crate::CacheStats::miss_ratio_curve`], [`crate::sizing`]): every id of every
    /// batch is hashed on the calling thread, and a hashed sample of the ids is followed:
    /// all of them at first, fewer as more distinct ids appear, so that at most 16,384 are
    /// tracked at once (about 1 MB however big the table). Default off: it costs the
    /// calling thread ~0.2 ms per 65,536-id batch (`examples/size_cache.rs` prints the
    /// figure on your machine).
    pub miss_ratio_curve: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: Capacity::Fraction(0.1),
            staging_buffers: 3,
            max_upload_bytes_per_pass: 256 << 20,
            slot_buffer: RowBufferOptions::default(),
            table_buffer: RowBufferOptions::default(),
            policy: EvictionPolicy::default(),
            partitions: 0,
            resolution: Resolution::default(),
            row_format: RowFormat::F32,
            shader_f16: true,
            path: BatchPath::Auto,
            path_reason: "",
            training: None,
            miss_ratio_curve: false,
        }
    }
}

impl CacheConfig {
    /// Sets [`CacheConfig::capacity`].
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets [`CacheConfig::staging_buffers`].
    pub fn staging_buffers(mut self, n: usize) -> Self {
        self.staging_buffers = n;
        self
    }

    /// Sets [`CacheConfig::max_upload_bytes_per_pass`].
    pub fn max_upload_bytes_per_pass(mut self, bytes: u64) -> Self {
        self.max_upload_bytes_per_pass = bytes;
        self
    }

    /// Sets [`CacheConfig::slot_buffer`].
    pub fn slot_buffer(mut self, options: RowBufferOptions) -> Self {
        self.slot_buffer = options;
        self
    }

    /// Sets [`CacheConfig::table_buffer`].
    pub fn table_buffer(mut self, options: RowBufferOptions) -> Self {
        self.table_buffer = options;
        self
    }

    /// Sets [`CacheConfig::policy`].
    pub fn policy(mut self, policy: EvictionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets [`CacheConfig::resolution`].
    pub fn resolution(mut self, resolution: Resolution) -> Self {
        self.resolution = resolution;
        self
    }

    /// Sets [`CacheConfig::row_format`].
    pub fn row_format(mut self, format: RowFormat) -> Self {
        self.row_format = format;
        self
    }

    /// Sets [`CacheConfig::path`].
    pub fn path(mut self, path: BatchPath) -> Self {
        self.path = path;
        self
    }

    /// Sets [`CacheConfig::miss_ratio_curve`].
    pub fn miss_ratio_curve(mut self, on: bool) -> Self {
        self.miss_ratio_curve = on;
        self
    }

    /// Sets [`CacheConfig::training`]: a cache that trains its rows with `optimizer`.
    pub fn training(mut self, optimizer: crate::Optimizer) -> Self {
        self.training = Some(optimizer);
        self
    }

    /// Sets [`CacheConfig::shader_f16`].
    pub fn shader_f16(mut self, on: bool) -> Self {
        self.shader_f16 = on;
        self
    }

    /// The slot-map partitions a cache whose host work runs on `threads` threads uses:
    /// [`CacheConfig::partitions`], or four per thread when that is 0 (the default).
    pub(crate) fn partitions_for(&self, threads: usize) -> usize {
        match self.partitions {
            0 => 4 * threads,
            p => p,
        }
    }

    /// Sets [`CacheConfig::partitions`].
    pub fn partitions(mut self, partitions: usize) -> Self {
        self.partitions = partitions;
        self
    }
}

/// GPU memory an [`crate::EmbeddingCache`] holds, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheMemory {
    /// The slots (capacity x the layout's row bytes).
    pub slots: u64,
    /// Device-local scratch: per-pass slot lists, uploaded rows, op inputs, the rows an op
    /// gathers when its batch takes several passes, and with [`Resolution::Device`] the
    /// GPU's slot index (4 bytes per table row) and the probe's output.
    pub scratch: u64,
    /// Host-visible staging buffers of the upload ring.
    pub staging: u64,
    /// Host memory the GPU reads: the GPU-driven path's table (0 on the host path). Not
    /// in [`CacheMemory::total`], which is what the cache holds on the GPU and for uploads.
    pub host_table: u64,
    /// Host memory of a training cache on the host path: the rows training changed that
    /// left the cache (values and optimizer state; rows with state stay after a flush, as
    /// the row source keeps values only) and the dirty marks. Not in
    /// [`CacheMemory::total`].
    pub host_trained: u64,
}

impl CacheMemory {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.slots + self.scratch + self.staging
    }
}
