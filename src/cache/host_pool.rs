//! Where a call's host work runs: on a thread of the caller's rayon pool, with the pool's
//! threads woken ahead of a burst of parallel phases.
//!
//! A batch has several short parallel phases (bucketing ids by partition, resolving the
//! partitions, copying missed rows, writing staging). Started from a thread outside the
//! pool, each phase hands its work to the pool and sleeps until woken: two thread wake-ups
//! per phase, each tens of microseconds on a virtual machine. From inside the pool the
//! phases follow one another on threads that are still awake.

use crate::error::Result;
use crate::gpu::GpuContext;

/// Runs `work` on a thread of the caller's rayon pool (inline when the caller is already
/// on one; the global pool otherwise), once per call.
pub(crate) fn on_host_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

/// [`on_host_pool`] around `ctx.guarded(work)`: a cache call's GPU work under its error
/// scopes, which wgpu keeps per thread, so they are pushed and popped on the pool thread
/// that does the work.
pub(crate) fn guarded_on_host_pool<R: Send>(
    ctx: &GpuContext,
    work: impl FnOnce() -> Result<R> + Send,
) -> Result<R> {
    on_host_pool(|| ctx.guarded(work))
}

/// Wakes every thread of the caller's rayon pool without waiting (each runs an empty
/// task): idle workers sleep, and a parallel phase otherwise wakes them one split at a
/// time. Woken together, they are still looking for work (rayon spins a few dozen rounds
/// before sleeping) when the phase begins. Used before a table-batched step's first
/// parallel phase and around the GPU round trip of resolution on the GPU; at the entry of
/// a plain lookup it does not pay (BENCHMARKS.md, benches/HISTORY.md).
pub(crate) fn wake_host_pool() {
    rayon::spawn_broadcast(|_| {});
}
