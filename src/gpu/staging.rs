//! [`StagingRing`]: reusable host-visible upload buffers, handed out as [`StagingEntry`]
//! values.
//!
//! An entry is mapped for writing while the host fills it; its copies into device buffers
//! are recorded by the entry itself ([`StagingEntry::copier`], as wgpu's `StagingBelt`
//! does); the one submit path ([`crate::gpu::submit`]) unmaps it, submits, and asks for it
//! to be mapped again, which completes only once the GPU has finished that submission, so an
//! entry is never overwritten while a copy may still read it. With `n` entries the host can
//! run `n - 1` batches ahead of the GPU. An entry dropped without being submitted is still
//! mapped and goes back to the ring as it is.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{HotrowError, Result};
use crate::gpu::{GpuContext, TrackedBuffer};

/// Unmapped, waiting for the submission that reads it and then its new mapping.
const PENDING: u8 = 0;
/// Mapped and in the ring.
const MAPPED: u8 = 1;
/// Mapping failed: the buffer is replaced at its next use.
const FAILED: u8 = 2;
/// Mapped and handed out as a [`StagingEntry`].
const OUT: u8 = 3;

/// The state one ring entry shares with the [`StagingEntry`] handed out for it.
struct Slot {
    state: AtomicU8,
    /// The submission that copies from the entry, while its new mapping is pending.
    submission: Mutex<Option<wgpu::SubmissionIndex>>,
}

impl Slot {
    fn take_submission(&self) -> Option<wgpu::SubmissionIndex> {
        self.submission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

struct RingEntry {
    buffer: Option<TrackedBuffer>,
    slot: Arc<Slot>,
}

pub(crate) struct StagingRing {
    entries: Vec<RingEntry>,
    next: usize,
    /// Size of the largest entry made so far.
    largest: u64,
}

/// One mapped staging buffer, handed out by [`StagingRing::acquire`]: written through
/// [`StagingEntry::write`], copied from by the commands it records, and given to the
/// submission that runs them ([`crate::gpu::submit`]). Dropped unsubmitted (a pass taken
/// back), it returns to its ring still mapped.
pub(crate) struct StagingEntry {
    buffer: wgpu::Buffer,
    len: u64,
    slot: Arc<Slot>,
}

impl StagingRing {
    pub(crate) fn new(count: usize) -> Self {
        Self {
            entries: (0..count.max(1))
                .map(|_| RingEntry {
                    buffer: None,
                    slot: Arc::new(Slot {
                        state: AtomicU8::new(PENDING),
                        submission: Mutex::new(None),
                    }),
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
    pub(crate) fn acquire(&mut self, ctx: &GpuContext, bytes: u64) -> Result<StagingEntry> {
        let i = self.next;
        self.next = (i + 1) % self.entries.len();
        let slot = self.entries[i].slot.clone();
        if slot.state.load(Ordering::Acquire) == OUT {
            // Every user gives its entry back (submitted or dropped) before the ring comes
            // round to it again; two live handles would write the same memory.
            return Err(HotrowError::Gpu(
                "a staging entry was handed out twice (hotrow bug)".into(),
            ));
        }
        if let Some(sub) = slot.take_submission() {
            let state = &slot.state;
            ctx.poll_until(Some(sub), crate::gpu::MAP_TIMEOUT, || {
                state.load(Ordering::Acquire) != PENDING
            })?;
        }
        let e = &mut self.entries[i];
        if slot.state.load(Ordering::Acquire) != MAPPED {
            // Mapping failed (or the entry was never made): make a new buffer rather than
            // write one that is not mapped.
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
            e.buffer = Some(ctx.create_buffer(
                "hotrow staging",
                size,
                wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                true,
            )?);
        }
        slot.state.store(OUT, Ordering::Release);
        let buffer = (**e.buffer.as_ref().expect("entry buffer just checked")).clone();
        Ok(StagingEntry {
            buffer,
            len: bytes,
            slot,
        })
    }
}

impl StagingEntry {
    /// The staging buffer (a launch copies its params block from it).
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Runs `fill` on the entry's mapped bytes (as many as asked for). Called any number of
    /// times before the entry is submitted.
    pub(crate) fn write<R>(&mut self, fill: impl FnOnce(&mut [u8]) -> R) -> Result<R> {
        let mut view = self
            .buffer
            .slice(0..self.len.max(4))
            .get_mapped_range_mut()
            .map_err(|e| HotrowError::Map(e.to_string()))?;
        let mut w = view.slice(..);
        let mut ptr = w.as_raw_ptr();
        // SAFETY: the pointer covers the mapped range of `view`, which stays mapped and is
        // exclusively ours (this handle is the entry's only one, borrowed mutably) until
        // `view` drops at the end of this function. Mapped memory is initialised (wgpu
        // zero-fills new mappings), so a `&mut [u8]` over it is valid; the closure only
        // writes (the memory may be write-combined, where reads are slow).
        let bytes_mut: &mut [u8] = unsafe { ptr.as_mut() };
        Ok(fill(bytes_mut))
    }

    /// The copy side of this entry: records its copies into device buffers (they run in
    /// the submission this entry is given to), also on one thread while others write the
    /// entry.
    pub(crate) fn copier(&self) -> StagingCopier {
        StagingCopier {
            buffer: self.buffer.clone(),
        }
    }

    /// Unmaps the entry so that the submission about to be made can read it.
    pub(super) fn close(&self) {
        self.slot.state.store(PENDING, Ordering::Release);
        self.buffer.unmap();
    }

    /// After `sub` (which reads the entry) was submitted: map it again once that is done.
    pub(super) fn submitted(self, sub: wgpu::SubmissionIndex) {
        let state = self.slot.clone();
        self.buffer.map_async(wgpu::MapMode::Write, .., move |r| {
            let v = if r.is_ok() { MAPPED } else { FAILED };
            state.state.store(v, Ordering::Release);
        });
        *self
            .slot
            .submission
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sub);
    }
}

/// Records copies out of a [`StagingEntry`] (see [`StagingEntry::copier`]).
pub(crate) struct StagingCopier {
    buffer: wgpu::Buffer,
}

impl StagingCopier {
    /// The staging buffer (a launch copies its params block from it).
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Records in `enc` the copy of `size` bytes at `offset` of the entry into `dst` at
    /// `dst_offset`.
    pub(crate) fn copy_to(
        &self,
        enc: &mut wgpu::CommandEncoder,
        offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) {
        if size > 0 {
            enc.copy_buffer_to_buffer(&self.buffer, offset, dst, dst_offset, size);
        }
    }
}

impl Drop for StagingEntry {
    fn drop(&mut self) {
        // Never submitted: still mapped, back to the ring as it is.
        let _ = self
            .slot
            .state
            .compare_exchange(OUT, MAPPED, Ordering::AcqRel, Ordering::Acquire);
    }
}
