//! [`StagingRing`]: reusable host-visible upload buffers.
//!
//! Each entry is mapped for writing while the host fills it, unmapped and copied from by
//! one submission, then re-mapped with `map_async`; the mapping completes only once the GPU
//! has finished that submission, so an entry is never overwritten while a copy may still
//! read it. With `n` entries the host can run `n - 1` batches ahead of the GPU.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::error::{HotrowError, Result};
use crate::gpu::{GpuContext, TrackedBuffer};

const PENDING: u8 = 0;
const MAPPED: u8 = 1;
const FAILED: u8 = 2;

struct Entry {
    buffer: Option<TrackedBuffer>,
    state: Arc<AtomicU8>,
    submission: Option<wgpu::SubmissionIndex>,
}

pub(crate) struct StagingRing {
    entries: Vec<Entry>,
    next: usize,
    /// Size of the largest entry made so far.
    largest: u64,
}

impl StagingRing {
    pub(crate) fn new(count: usize) -> Self {
        Self {
            entries: (0..count.max(1))
                .map(|_| Entry {
                    buffer: None,
                    state: Arc::new(AtomicU8::new(PENDING)),
                    submission: None,
                })
                .collect(),
            next: 0,
            largest: 0,
        }
    }

    /// Bytes of staging memory held.
    pub(crate) fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| e.buffer.as_ref().map(|b| b.size()))
            .sum()
    }

    /// The next entry, mapped and at least `bytes` long; waits for the GPU when that entry's
    /// previous copy has not finished.
    pub(crate) fn acquire(&mut self, ctx: &GpuContext, bytes: u64) -> Result<usize> {
        let i = self.next;
        self.next = (i + 1) % self.entries.len();
        let e = &mut self.entries[i];
        if let Some(sub) = e.submission.take() {
            let state = e.state.clone();
            ctx.poll_until(Some(sub), crate::gpu::MAP_TIMEOUT, || {
                state.load(Ordering::Acquire) != PENDING
            })?;
        }
        if e.state.load(Ordering::Acquire) != MAPPED {
            // Mapping failed, or a pass failed between unmapping and submitting: make a
            // new buffer rather than write one that is not mapped.
            ctx.check()?;
            e.buffer = None;
        }
        if e.buffer.as_ref().is_none_or(|b| b.size() < bytes) {
            e.buffer = None;
            // 25% headroom so slowly growing batches do not reallocate every time, and at
            // least the largest entry so far, so a steady stream allocates each entry once.
            // Entries are made at their own first use, not all at the first call: a new
            // mapped buffer is zero-filled by wgpu through the mapping, which on a discrete
            // GPU is a PCIe write of its whole size.
            let size = (bytes + bytes / 4)
                .max(self.largest)
                .next_multiple_of(1 << 16);
            self.largest = size;
            let e = &mut self.entries[i];
            e.buffer = Some(Self::mapped_buffer(ctx, size)?);
            e.state.store(MAPPED, Ordering::Release);
        }
        Ok(i)
    }

    fn mapped_buffer(ctx: &GpuContext, size: u64) -> Result<TrackedBuffer> {
        ctx.create_buffer(
            "hotrow staging",
            size,
            wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            true,
        )
    }

    pub(crate) fn buffer(&self, i: usize) -> &wgpu::Buffer {
        self.entries[i].buffer.as_ref().expect("acquired entry")
    }

    /// Runs `fill` on the first `bytes` of entry `i`'s mapped memory.
    pub(crate) fn write<R>(
        &mut self,
        i: usize,
        bytes: u64,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R> {
        let buffer = self.buffer(i);
        let mut view = buffer
            .slice(0..bytes.max(4))
            .get_mapped_range_mut()
            .map_err(|e| HotrowError::Map(e.to_string()))?;
        let mut w = view.slice(..);
        let mut ptr = w.as_raw_ptr();
        // SAFETY: the pointer covers the mapped range of `view`, which stays mapped and is
        // exclusively ours until `view` drops at the end of this function. Mapped memory is
        // initialised (wgpu zero-fills new mappings), so a `&mut [u8]` over it is valid; the
        // closure only writes (the memory may be write-combined, where reads are slow).
        let bytes_mut: &mut [u8] = unsafe { ptr.as_mut() };
        Ok(fill(bytes_mut))
    }

    /// Unmaps entry `i` so a copy in the next submission can read it.
    pub(crate) fn unmap(&mut self, i: usize) {
        let e = &mut self.entries[i];
        e.state.store(PENDING, Ordering::Release);
        if let Some(b) = &e.buffer {
            b.unmap();
        }
    }

    /// Records the submission that reads entry `i` and asks for it to be mapped again once
    /// that submission is done.
    pub(crate) fn submitted(&mut self, i: usize, sub: wgpu::SubmissionIndex) {
        let e = &mut self.entries[i];
        let state = e.state.clone();
        if let Some(b) = &e.buffer {
            b.map_async(wgpu::MapMode::Write, .., move |r| {
                state.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
            });
        }
        e.submission = Some(sub);
    }
}
