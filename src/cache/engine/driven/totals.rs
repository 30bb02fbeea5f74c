//! The GPU-driven path's counters: what the GPU decided (distinct ids, hits, misses,
//! evictions, rows refused admission) is summed on the GPU (64-bit, in the work buffer)
//! and read only when the counters are asked for, so the steady stream reads nothing back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::cache::stats::CacheStats;
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::ops::driven::word;

/// The last totals read, and whether a pass ran since.
#[derive(Default)]
pub(crate) struct GpuTotals {
    last: Mutex<[u64; 5]>,
    stale: AtomicBool,
}

impl GpuTotals {
    /// A pass was recorded: the next read goes to the GPU.
    pub(super) fn changed(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Adds the GPU's totals (read from `work`, waiting for the passes submitted so far,
    /// when a pass ran since the last read) into `stats`. A failed read (device lost)
    /// leaves the last totals read.
    pub(crate) fn add_to(
        &self,
        ctx: &GpuContext,
        work: &wgpu::Buffer,
        row_bytes: u64,
        stats: &mut CacheStats,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if self.stale.swap(false, Ordering::AcqRel) {
            match read(ctx, work) {
                Ok(now) => *last = now,
                Err(e) => {
                    self.stale.store(true, Ordering::Release);
                    log::warn!("hotrow: reading the GPU's counters failed: {e}");
                }
            }
        }
        let [distinct, hits, misses, evictions, refused] = *last;
        stats.distinct += distinct;
        // (Every row refused admission on the GPU is served from a transient slot.)
        stats.refused += refused;
        stats.transient += refused;
        stats.hits += hits;
        stats.misses += misses;
        stats.rows_uploaded += misses;
        stats.bytes_uploaded += misses * row_bytes;
        stats.evictions += evictions;
    }

    /// Zeroes the GPU's totals (a queue write, ordered after every pass submitted so far).
    pub(crate) fn reset(&self, ctx: &GpuContext, work: &wgpu::Buffer) {
        ctx.queue()
            .write_buffer(work, word::TOTALS as u64 * 4, &[0u8; 32]);
        ctx.queue()
            .write_buffer(work, word::REFUSED as u64 * 4, &[0u8; 8]);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = [0; 5];
        self.stale.store(false, Ordering::Release);
    }
}

fn read(ctx: &GpuContext, work: &wgpu::Buffer) -> Result<[u64; 5]> {
    // The four totals, the fault count, then the refused rows: one read.
    let w = crate::gpu::read_u32(
        ctx,
        work,
        word::TOTALS as u64 * 4,
        word::WINDOW - word::TOTALS,
    )?;
    let at = |k: usize| u64_at(&w, k);
    Ok([at(0), at(2), at(4), at(6), at(word::REFUSED - word::TOTALS)])
}

/// The 64-bit counter whose (lo, hi) words are `w[k]`, `w[k + 1]`.
fn u64_at(w: &[u32], k: usize) -> u64 {
    u64::from(w[k]) | (u64::from(w[k + 1]) << 32)
}

/// `n` 64-bit counters, each a (lo, hi) pair of u32 words, from word `at` of `work`
/// (waiting for the passes submitted so far).
pub(super) fn read_u64s(
    ctx: &GpuContext,
    work: &wgpu::Buffer,
    at: usize,
    n: usize,
) -> Result<Vec<u64>> {
    let w = crate::gpu::read_u32(ctx, work, at as u64 * 4, 2 * n)?;
    Ok((0..n).map(|k| u64_at(&w, 2 * k)).collect())
}
