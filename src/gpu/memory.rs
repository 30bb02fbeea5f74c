//! GPU memory: every buffer hotrow makes goes through [`GpuContext::create_buffer`], which
//! checks the adapter's limits and the context's budget, turns a driver out-of-memory
//! into a typed error and counts the buffer while it lives. Buffers reused across calls
//! (per-call operands, scratch, readback staging) live in grow-only [`GrowBuffer`]s and the
//! context's readback pool, so a steady stream of same-shaped calls allocates nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{HotrowError, Result};
use crate::gpu::context::{GpuContext, Inner};

/// GPU memory hotrow holds on one context ([`GpuContext::memory_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes of the buffers alive now (tables, slots, outputs, scratch, staging, uniforms,
    /// readback and timestamp buffers: every buffer hotrow made on this context).
    pub bytes: u64,
    /// Buffers alive now.
    pub live_buffers: u64,
    /// Buffers created since the context was made (a steady stream of `*_into` calls
    /// leaves this unchanged).
    pub buffers_created: u64,
}

/// Readback buffers kept for reuse; more returned at once are dropped.
const READBACK_POOL: usize = 8;

pub(crate) struct Memory {
    bytes: AtomicU64,
    live: AtomicU64,
    created: AtomicU64,
    budget: Option<u64>,
    /// Idle `MAP_READ | COPY_DST` buffers for readback, unmapped.
    readback: Mutex<Vec<TrackedBuffer>>,
}

impl Memory {
    pub(crate) fn new(budget: Option<u64>) -> Self {
        Self {
            bytes: AtomicU64::new(0),
            live: AtomicU64::new(0),
            created: AtomicU64::new(0),
            budget,
            readback: Mutex::new(Vec::new()),
        }
    }
}

/// A buffer whose size counts towards [`GpuContext::memory_stats`] while it lives.
#[derive(Debug)]
pub(crate) struct TrackedBuffer {
    pub(crate) buffer: wgpu::Buffer,
    ctx: std::sync::Weak<Inner>,
}

impl std::ops::Deref for TrackedBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for TrackedBuffer {
    fn drop(&mut self) {
        if let Some(inner) = self.ctx.upgrade() {
            inner
                .memory
                .bytes
                .fetch_sub(self.buffer.size(), Ordering::Relaxed);
            inner.memory.live.fetch_sub(1, Ordering::Relaxed);
        }
        // No `destroy()`: wgpu frees the memory once the last submission using it is done.
    }
}

impl GpuContext {
    /// GPU memory hotrow holds on this context, and how many buffers it has made.
    pub fn memory_stats(&self) -> MemoryStats {
        let m = &self.inner.memory;
        MemoryStats {
            bytes: m.bytes.load(Ordering::Relaxed),
            live_buffers: m.live.load(Ordering::Relaxed),
            buffers_created: m.created.load(Ordering::Relaxed),
        }
    }

    /// Bytes of GPU buffers that hotrow objects made on this context currently hold.
    pub fn allocated_bytes(&self) -> u64 {
        self.memory_stats().bytes
    }

    /// Creates a buffer, checking the budget and the adapter's `max_buffer_size` first and
    /// turning a driver out-of-memory into [`HotrowError::OutOfMemory`]. Sizes are rounded
    /// up to whole 16 bytes, so any buffer can be bound whole as an array of vec4.
    pub(crate) fn create_buffer(
        &self,
        what: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
        mapped_at_creation: bool,
    ) -> Result<TrackedBuffer> {
        let size = size.max(16).next_multiple_of(16);
        let limits = &self.inner.limits;
        if size > limits.max_buffer_size {
            return Err(HotrowError::ExceedsLimit {
                what,
                bytes: size,
                limit_name: "max_buffer_size",
                limit: limits.max_buffer_size,
            });
        }
        self.check_budget(what, size)?;
        self.check()?;
        let scope = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage,
            mapped_at_creation,
        });
        if pollster::block_on(scope.pop()).is_some() {
            return Err(HotrowError::OutOfMemory { what, bytes: size });
        }
        Ok(self.adopt(buffer))
    }

    /// [`HotrowError::ExceedsLimit`] when `size` more bytes would pass the context's budget.
    pub(crate) fn check_budget(&self, what: &'static str, size: u64) -> Result<()> {
        let m = &self.inner.memory;
        if let Some(budget) = m.budget {
            let now = m.bytes.load(Ordering::Relaxed);
            if now + size > budget {
                return Err(HotrowError::ExceedsLimit {
                    what,
                    bytes: now + size,
                    limit_name: "GpuOptions::memory_budget",
                    limit: budget,
                });
            }
        }
        Ok(())
    }

    /// Counts a buffer made on this context (by [`GpuContext::create_buffer`], or over
    /// imported host memory) while it lives.
    pub(crate) fn adopt(&self, buffer: wgpu::Buffer) -> TrackedBuffer {
        let m = &self.inner.memory;
        m.bytes.fetch_add(buffer.size(), Ordering::Relaxed);
        m.live.fetch_add(1, Ordering::Relaxed);
        m.created.fetch_add(1, Ordering::Relaxed);
        TrackedBuffer {
            buffer,
            ctx: Arc::downgrade(&self.inner),
        }
    }

    fn readback_pool(&self) -> std::sync::MutexGuard<'_, Vec<TrackedBuffer>> {
        self.inner
            .memory
            .readback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// An unmapped `MAP_READ | COPY_DST` buffer of at least `size` bytes, from the pool
    /// when one is idle. Give it back with [`GpuContext::return_readback`].
    pub(crate) fn take_readback(&self, size: u64) -> Result<TrackedBuffer> {
        let mut pool = self.readback_pool();
        if let Some(i) = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.size() >= size)
            .min_by_key(|(_, b)| b.size())
            .map(|(i, _)| i)
        {
            return Ok(pool.swap_remove(i));
        }
        drop(pool);
        let size = size
            .next_power_of_two()
            .min(self.inner.limits.max_buffer_size)
            .max(size);
        self.create_buffer(
            "hotrow readback",
            size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            false,
        )
    }

    /// Returns an unmapped readback buffer to the pool (the smallest is dropped when full).
    pub(crate) fn return_readback(&self, buffer: TrackedBuffer) {
        let mut pool = self.readback_pool();
        pool.push(buffer);
        if pool.len() > READBACK_POOL {
            if let Some(i) = pool
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.size())
                .map(|(i, _)| i)
            {
                pool.swap_remove(i);
            }
        }
    }
}

/// A grow-only device buffer reused across calls: per-call operands, ids, scratch.
/// It is replaced only when a call needs more bytes than it holds (with 25% headroom, so
/// slowly growing inputs do not reallocate every time).
pub(crate) struct GrowBuffer {
    what: &'static str,
    usage: wgpu::BufferUsages,
    buf: Option<TrackedBuffer>,
}

impl GrowBuffer {
    pub(crate) fn new(what: &'static str, usage: wgpu::BufferUsages) -> Self {
        Self {
            what,
            usage,
            buf: None,
        }
    }

    /// Storage buffer filled by copies (from staging) or by the GPU.
    pub(crate) fn storage(what: &'static str) -> Self {
        Self::new(
            what,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// The buffer, at least `bytes` long (never more than one storage binding unless
    /// `bytes` itself is).
    pub(crate) fn get(&mut self, ctx: &GpuContext, bytes: u64) -> Result<&wgpu::Buffer> {
        if self.buf.as_ref().is_none_or(|b| b.size() < bytes) {
            self.buf = None;
            let mut size = (bytes + bytes / 4).next_multiple_of(1 << 12);
            if size > ctx.max_binding() {
                size = bytes;
            }
            self.buf = Some(ctx.create_buffer(self.what, size, self.usage, false)?);
        }
        Ok(self.buf.as_ref().expect("buffer just made"))
    }

    /// The buffer as last sized, if any.
    pub(crate) fn current(&self) -> Option<&wgpu::Buffer> {
        self.buf.as_ref().map(|b| &b.buffer)
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.buf.as_ref().map_or(0, |b| b.size())
    }
}
