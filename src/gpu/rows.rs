//! Device-resident rows: [`RowBuffer`] (a table or a cache's slots) and [`Embeddings`]
//! (an op's output, left on the GPU). Ops over them live in `crate::ops`.

use crate::error::{HotrowError, Result};
use crate::gpu::{host_import, readback, GpuContext, LaunchState, RowLayout, TrackedBuffer};

/// Where a [`RowBuffer`]'s rows live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// GPU memory (the default).
    #[default]
    Device,
    /// Host memory that kernels read across the bus ([`RowBuffer::in_host_memory`]).
    Host,
}

/// Options for [`RowBuffer::with_options`].
#[derive(Clone, Debug, Default)]
pub struct RowBufferOptions {
    /// Cap on the bytes of one shard, below the adapter's `max_storage_buffer_binding_size`
    /// (useful to bound single allocations, and to exercise sharding in tests).
    pub max_shard_bytes: Option<u64>,
}

/// `rows x dim` f32 values in GPU memory.
///
/// **Splitting:** when the rows exceed the adapter's largest storage binding
/// (`max_storage_buffer_binding_size`) or largest buffer, they are split transparently into
/// several buffers ("shards") of whole rows; every op dispatches once per shard. Construction
/// fails with [`HotrowError::ExceedsLimit`] only when a single row exceeds that limit, when
/// there are more than `u32::MAX` rows, or when the context's memory budget would be passed;
/// a driver out-of-memory is [`HotrowError::OutOfMemory`].
///
/// ```no_run
/// # fn main() -> Result<(), hotrow::HotrowError> {
/// let ctx = hotrow::GpuContext::new()?;
/// let data: Vec<f32> = (0..4 * 8).map(|i| i as f32 * 0.5).collect();
/// let table = hotrow::RowBuffer::from_host(&ctx, &data, 8)?; // 4 rows of dim 8
/// let out = table.gather(&[3, 1, 3])?;                        // stays on the GPU
/// assert_eq!(out.to_host()?[..8], data[24..32]);
/// # Ok(()) }
/// ```
pub struct RowBuffer {
    ctx: GpuContext,
    shards: Vec<TrackedBuffer>,
    shard_rows: usize,
    rows: usize,
    layout: RowLayout,
    placement: Placement,
    /// With [`Placement::Host`] on a context that imports host memory: each shard's
    /// memory, mapped for the host too (empty otherwise).
    host: Vec<std::sync::Arc<host_import::Mapping>>,
    /// Launch state of [`RowBuffer::gather_into`] (ids buffer, uniforms, bind groups),
    /// reused across calls.
    pub(crate) gather: std::sync::Mutex<LaunchState>,
}

impl std::fmt::Debug for RowBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowBuffer")
            .field("rows", &self.rows)
            .field("dim", &self.layout.dim())
            .field("shards", &self.shards.len())
            .field("placement", &self.placement)
            .finish()
    }
}

impl RowBuffer {
    /// Allocates `rows x dim` zeroed f32 on the GPU, split into shards as needed.
    pub fn new(ctx: &GpuContext, rows: usize, dim: usize) -> Result<Self> {
        Self::with_options(ctx, rows, dim, RowBufferOptions::default())
    }

    /// Like [`RowBuffer::new`], with options.
    pub fn with_options(
        ctx: &GpuContext,
        rows: usize,
        dim: usize,
        options: RowBufferOptions,
    ) -> Result<Self> {
        Self::with_layout(ctx, rows, RowLayout::f32(dim)?, options, Placement::Device)
    }

    /// `rows x dim` f32 values in **host memory** that kernels read directly across the bus
    /// (zero-filled; fill them with [`RowBuffer::write_rows`]). Every op over the buffer,
    /// [`RowBuffer::gather`] first, then reads each row it needs from host memory at that
    /// moment, with no copy kept on the GPU: a table larger than GPU memory served without a
    /// cache, and the baseline a cache is measured against.
    ///
    /// Costs: the rows' bytes of host memory (on Vulkan, host-visible cached memory the
    /// driver pins for the buffer's life; counted in [`crate::MemoryStats`] like GPU
    /// buffers) and no GPU memory for them; each read crosses the bus (PCIe), so a random
    /// row costs far more than from GPU memory. Sharded like any `RowBuffer`. Needs
    /// [`crate::AdapterSummary::host_visible_storage`], asked for with
    /// [`crate::GpuOptions::host_visible_storage`]; without it (not asked for, or GL and
    /// browsers) the error is [`HotrowError::Unsupported`] and nothing is allocated.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{GpuContext, GpuOptions};
    /// let ctx = GpuContext::with_options(GpuOptions { host_visible_storage: true, ..Default::default() })?;
    /// let table = hotrow::RowBuffer::in_host_memory(&ctx, 1_000, 8, Default::default())?;
    /// table.write_rows(0, &vec![0.5f32; 1_000 * 8])?;
    /// let rows = table.gather(&[999, 3, 999])?; // read from host memory, output on the GPU
    /// assert_eq!(rows.to_host()?[0], 0.5);
    /// # Ok(()) }
    /// ```
    pub fn in_host_memory(
        ctx: &GpuContext,
        rows: usize,
        dim: usize,
        options: RowBufferOptions,
    ) -> Result<Self> {
        if !ctx.adapter().host_visible_storage {
            return Err(HotrowError::Unsupported {
                what: "a row buffer in host memory (GpuOptions::host_visible_storage)",
                feature: "MAPPABLE_PRIMARY_BUFFERS",
            });
        }
        Self::with_layout(ctx, rows, RowLayout::f32(dim)?, options, Placement::Host)
    }

    /// Rows stored as `layout` says (the cache's slots in a compact format).
    pub(crate) fn with_layout(
        ctx: &GpuContext,
        rows: usize,
        layout: RowLayout,
        options: RowBufferOptions,
        placement: Placement,
    ) -> Result<Self> {
        ctx.guarded(|| {
            if rows == 0 {
                return Err(HotrowError::InvalidArgument(
                    "a row buffer needs at least 1 row".into(),
                ));
            }
            let row_bytes = layout.row_bytes();
            let binding = ctx.max_binding();
            let mut limit = binding.min(ctx.limits().max_buffer_size);
            let mut limit_name = if binding <= ctx.limits().max_buffer_size {
                "max_storage_buffer_binding_size"
            } else {
                "max_buffer_size"
            };
            if let Some(cap) = options.max_shard_bytes {
                if cap < limit {
                    limit = cap;
                    limit_name = "RowBufferOptions::max_shard_bytes";
                }
            }
            // (A shard is whole rows; rows read as vec4 are 16-byte multiples themselves.)
            let shard_rows = (limit / row_bytes) as usize;
            if shard_rows == 0 {
                return Err(HotrowError::ExceedsLimit {
                    what: "one row",
                    bytes: row_bytes,
                    limit_name,
                    limit,
                });
            }
            if rows as u64 > u32::MAX as u64 {
                return Err(HotrowError::ExceedsLimit {
                    what: "row count (slots are u32)",
                    bytes: layout.bytes(rows),
                    limit_name: "u32::MAX rows",
                    limit: u32::MAX as u64,
                });
            }
            let total = layout.bytes(rows);
            let mut shards = Vec::new();
            let mut host = Vec::new();
            let mut import = placement == Placement::Host && ctx.adapter().host_memory_import;
            let mut left = rows;
            while left > 0 {
                let n = left.min(shard_rows);
                if import {
                    let usage = wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC;
                    ctx.check_budget("row buffer", layout.bytes(n))?;
                    let made = host_import::imported_buffer(
                        ctx.device(),
                        "hotrow rows (imported host memory)",
                        layout.bytes(n),
                        usage,
                    );
                    if let Some((buffer, mapping)) = made {
                        shards.push(ctx.adopt(buffer));
                        host.push(mapping);
                        left -= n;
                        continue;
                    }
                    // (Refused: this shard and the rest in wgpu's mappable buffers.)
                    log::warn!("hotrow: host memory import refused; using wgpu's mappable buffers");
                    import = false;
                    host.clear();
                }
                let mut usage = wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC;
                if placement == Placement::Host {
                    // A buffer mappable for reading (and not for writing) is placed in
                    // host memory the device reads (wgpu-hal: GPU-to-CPU memory, on Vulkan
                    // host-visible and host-cached); it is never mapped by hotrow.
                    usage |= wgpu::BufferUsages::MAP_READ;
                }
                let b = ctx
                    .create_buffer("hotrow rows", layout.bytes(n), usage, false)
                    .map_err(|e| match e {
                        HotrowError::ExceedsLimit {
                            limit_name, limit, ..
                        } => HotrowError::ExceedsLimit {
                            what: "row buffer",
                            bytes: total,
                            limit_name,
                            limit,
                        },
                        other => other,
                    })?;
                shards.push(b);
                left -= n;
            }
            Ok(Self {
                ctx: ctx.clone(),
                shards,
                shard_rows,
                rows,
                layout,
                placement,
                host,
                gather: Default::default(),
            })
        })
    }

    /// Allocates rows for `data.len() / dim` rows and uploads `data` (row-major).
    pub fn from_host(ctx: &GpuContext, data: &[f32], dim: usize) -> Result<Self> {
        RowLayout::f32(dim)?;
        if data.is_empty() || !data.len().is_multiple_of(dim) {
            return Err(HotrowError::LengthMismatch {
                what: "table data (a non-zero multiple of dim)",
                expected: (data.len() / dim).max(1) * dim,
                got: data.len(),
            });
        }
        let t = Self::new(ctx, data.len() / dim, dim)?;
        t.write_rows(0, data)?;
        Ok(t)
    }

    /// Rows in a compact format are written by the cache and read by gathering them
    /// ([`RowBuffer::gather`] decodes to f32), not copied as f32.
    fn check_f32(&self, what: &str) -> Result<()> {
        if self.layout.format() != crate::gpu::RowFormat::F32 {
            return Err(HotrowError::InvalidArgument(format!(
                "{what} moves f32 rows; these are stored as {:?} (gather them instead)",
                self.layout.format()
            )));
        }
        Ok(())
    }

    /// Checks that rows `first..first + count` exist.
    fn check_range(&self, first: usize, count: usize) -> Result<()> {
        if first.checked_add(count).is_none_or(|end| end > self.rows) {
            return Err(HotrowError::RowRange {
                first,
                count,
                rows: self.rows,
            });
        }
        Ok(())
    }

    /// Uploads whole rows starting at row `first`, in large writes (at most 64 MiB each,
    /// split at shard boundaries), never one write per row.
    pub fn write_rows(&self, first: usize, data: &[f32]) -> Result<()> {
        self.ctx.guarded(|| {
            self.check_f32("write_rows")?;
            let dim = self.layout.dim();
            if !data.len().is_multiple_of(dim) {
                return Err(HotrowError::LengthMismatch {
                    what: "row data (a multiple of dim)",
                    expected: data.len() / dim * dim + dim,
                    got: data.len(),
                });
            }
            self.check_range(first, data.len() / dim)?;
            self.ctx.check()?;
            const CHUNK_BYTES: u64 = 64 << 20;
            let chunk_rows = (CHUNK_BYTES / self.layout.row_bytes()).max(1) as usize;
            let mut row = first;
            let mut rest = data;
            while !rest.is_empty() {
                let shard = row / self.shard_rows;
                let local = row % self.shard_rows;
                let take = (self.shard_rows - local)
                    .min(chunk_rows)
                    .min(rest.len() / dim);
                let (now, later) = rest.split_at(take * dim);
                self.ctx.queue().write_buffer(
                    &self.shards[shard],
                    self.layout.bytes(local),
                    bytemuck::cast_slice(now),
                );
                row += take;
                rest = later;
            }
            Ok(())
        })
    }

    /// Copies rows `first..first + count` back to the host (blocking).
    pub fn read_rows(&self, first: usize, count: usize) -> Result<Vec<f32>> {
        self.ctx.guarded(|| {
            self.check_f32("read_rows")?;
            self.check_range(first, count)?;
            let dim = self.layout.dim();
            let mut out = Vec::with_capacity(count * dim);
            let mut row = first;
            while row < first + count {
                let shard = row / self.shard_rows;
                let local = row % self.shard_rows;
                let take = (self.shard_rows - local).min(first + count - row);
                out.extend(readback::read_f32(
                    &self.ctx,
                    &self.shards[shard],
                    self.layout.bytes(local),
                    take * dim,
                )?);
                row += take;
            }
            Ok(out)
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Where the rows live.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// f32 values per row.
    pub fn dim(&self) -> usize {
        self.layout.dim()
    }

    /// How a row is stored.
    pub fn layout(&self) -> RowLayout {
        self.layout
    }

    /// The GPU buffers holding the rows, in order; shard `k` holds rows
    /// `k * shard_rows() ..` (the last one may hold fewer).
    pub fn shards(&self) -> impl ExactSizeIterator<Item = &wgpu::Buffer> {
        self.shards.iter().map(|b| &b.buffer)
    }

    /// Whether the rows are hotrow's own host memory imported into the device (the host
    /// then writes them directly: [`RowBuffer::host_words`]).
    pub(crate) fn host_mapped(&self) -> bool {
        !self.host.is_empty()
    }

    /// The stored words of shard `shard`, as the host sees the imported memory (`None`
    /// unless [`RowBuffer::host_mapped`]).
    ///
    /// # Safety
    /// No submission that reads or writes the shard may be in flight while the slice is
    /// used, and no two such slices of one shard may be alive at once.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn host_words(&self, shard: usize) -> Option<&mut [u32]> {
        let m = self.host.get(shard)?;
        let words = self.layout.words_per_row() * self.shard_len(shard);
        debug_assert!(words * 4 <= m.len());
        // SAFETY: the mapping holds at least the shard's rows (made for them, rounded up to
        // whole huge pages) and lives as long as `self`; exclusivity is the caller's.
        Some(unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<u32>(), words) })
    }

    /// Rows held by shard `shard`.
    fn shard_len(&self, shard: usize) -> usize {
        (self.rows - shard * self.shard_rows).min(self.shard_rows)
    }

    /// Rows per shard (all shards but the last hold exactly this many).
    pub fn shard_rows(&self) -> usize {
        self.shard_rows
    }

    /// Bytes of memory the rows take (GPU memory, or host memory for rows there; imported
    /// host memory is whole 2 MiB pages per shard).
    pub fn bytes(&self) -> u64 {
        if !self.host.is_empty() {
            return self.host.iter().map(|m| m.len() as u64).sum();
        }
        self.shards.iter().map(|b| b.size()).sum()
    }

    /// The context the rows live on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }
}

/// Rows produced by an op (gather, lookup, bags, scores), left in a GPU buffer that later
/// ops and the caller's own pipelines can bind (`STORAGE | COPY_SRC | COPY_DST`).
/// Row-major, `rows() x dim()` f32.
pub struct Embeddings {
    ctx: GpuContext,
    buffer: TrackedBuffer,
    rows: usize,
    dim: usize,
}

impl std::fmt::Debug for Embeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embeddings")
            .field("rows", &self.rows)
            .field("dim", &self.dim)
            .finish()
    }
}

impl Embeddings {
    /// Allocates room for `rows x dim` f32 (contents unspecified until an op writes them).
    pub fn new(ctx: &GpuContext, rows: usize, dim: usize) -> Result<Self> {
        ctx.guarded(|| {
            let bytes = Self::check_size(ctx, rows, dim)?;
            Ok(Self {
                ctx: ctx.clone(),
                buffer: Self::alloc(ctx, bytes)?,
                rows,
                dim,
            })
        })
    }

    /// Rows uploaded from row-major host `data` of width `dim` (e.g. a loss's gradient for
    /// [`crate::EmbeddingCache::backward_bags`]).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// let ctx = hotrow::GpuContext::new()?;
    /// let g = hotrow::Embeddings::from_host(&ctx, &[1.0, 2.0, 3.0, 4.0], 2)?;
    /// assert_eq!((g.rows(), g.dim()), (2, 2));
    /// # Ok(()) }
    /// ```
    pub fn from_host(ctx: &GpuContext, data: &[f32], dim: usize) -> Result<Self> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(HotrowError::LengthMismatch {
                what: "row data (a multiple of dim >= 1)",
                expected: data.len() / dim.max(1) * dim.max(1),
                got: data.len(),
            });
        }
        let out = Self::new(ctx, data.len() / dim, dim)?;
        if !data.is_empty() {
            ctx.queue()
                .write_buffer(&out.buffer, 0, bytemuck::cast_slice(data));
        }
        Ok(out)
    }

    fn alloc(ctx: &GpuContext, bytes: u64) -> Result<TrackedBuffer> {
        ctx.create_buffer(
            "hotrow output",
            bytes,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            false,
        )
    }

    fn check_size(ctx: &GpuContext, rows: usize, dim: usize) -> Result<u64> {
        let bytes = (rows as u64).saturating_mul(dim as u64 * 4);
        if bytes > ctx.max_binding() {
            return Err(HotrowError::ExceedsLimit {
                what: "output rows (split the batch)",
                bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: ctx.max_binding(),
            });
        }
        Ok(bytes)
    }

    /// Prepares this output for an op of `ctx` writing `rows x dim`: refuses an output of
    /// another context ([`HotrowError::ForeignContext`]) and grows the buffer when it is
    /// too small.
    pub(crate) fn reset_for(&mut self, ctx: &GpuContext, rows: usize, dim: usize) -> Result<()> {
        ctx.check_same(&self.ctx, "output Embeddings")?;
        let bytes = Self::check_size(&self.ctx, rows, dim)?;
        if self.buffer.size() < bytes {
            self.buffer = Self::alloc(&self.ctx, bytes)?;
        }
        self.rows = rows;
        self.dim = dim;
        Ok(())
    }

    /// Sets these rows to `data` (`rows x dim`, row-major) from host memory, growing the
    /// buffer when too small; the output must be of `ctx` ([`HotrowError::ForeignContext`]).
    pub(crate) fn write_host(
        &mut self,
        ctx: &GpuContext,
        data: &[f32],
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        debug_assert_eq!(data.len(), rows * dim);
        ctx.guarded(|| {
            self.reset_for(ctx, rows, dim)?;
            if !data.is_empty() {
                ctx.queue()
                    .write_buffer(&self.buffer, 0, bytemuck::cast_slice(data));
            }
            ctx.check()
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// f32 values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes the rows take (`rows() * dim() * 4`; the buffer may be larger).
    pub fn bytes(&self) -> u64 {
        (self.rows * self.dim * 4) as u64
    }

    /// The GPU buffer (its first `rows() * dim() * 4` bytes are the rows; it may be larger).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The context the buffer lives on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Fills the rows with a value (used by tests to poison outputs, e.g. with NaN).
    pub fn fill(&self, value: f32) -> Result<()> {
        self.ctx.guarded(|| {
            if self.rows * self.dim == 0 {
                return Ok(());
            }
            let data = vec![value; self.rows * self.dim];
            self.ctx
                .queue()
                .write_buffer(&self.buffer, 0, bytemuck::cast_slice(&data));
            Ok(())
        })
    }

    /// Copies the rows to host memory, waiting for the op that produced them.
    pub fn to_host(&self) -> Result<Vec<f32>> {
        self.ctx
            .guarded(|| readback::read_f32(&self.ctx, &self.buffer, 0, self.rows * self.dim))
    }

    /// Async form of [`Embeddings::to_host`]: the copy is submitted at once, and the future
    /// completes when it is done, without the caller driving wgpu (the context's one poll
    /// thread does).
    pub fn to_host_async(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<f32>>> + Send + 'static {
        readback::read_f32_async(&self.ctx, &self.buffer, 0, self.rows * self.dim)
    }
}
