//! Everything that talks to wgpu: adapter/device selection, compiled pipelines,
//! device-resident row buffers, staging uploads, readback and pass timing.

mod context;
pub(crate) mod kernels;
pub(crate) mod readback;
mod rows;
mod staging;

mod timing;

pub(crate) use context::TrackedBuffer;
pub use context::{AdapterSummary, GpuContext, GpuOptions};
pub use kernels::SHADERS;
pub use rows::{Embeddings, RowBuffer, RowBufferOptions};

pub(crate) use staging::StagingRing;
pub(crate) use timing::pass_writes;
pub use timing::PassTiming;

/// Threads per workgroup of every 1-D kernel in `shaders/` (must match `@workgroup_size`).
pub(crate) const WORKGROUP: u32 = 256;

/// Splits `groups` workgroups into an (x, y) grid with x <= `max_per_dim`, so dispatches
/// past 65,535 workgroups stay legal. Kernels rebuild the linear id as `y * x_count + x`
/// and skip ids past the end.
pub(crate) fn grid(groups: u32, max_per_dim: u32) -> (u32, u32) {
    if groups <= max_per_dim {
        return (groups.max(1), 1);
    }
    let y = groups.div_ceil(max_per_dim);
    (groups.div_ceil(y), y)
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn grid_covers_and_respects_limit() {
        for &(g, m) in &[
            (1u32, 65535u32),
            (65535, 65535),
            (65536, 65535),
            (1 << 24, 65535),
            (40, 7),
            (49, 7),
            (0, 10),
        ] {
            let (x, y) = grid(g, m);
            assert!(x <= m && y <= m, "{g} {m} -> {x} {y}");
            assert!(x as u64 * y as u64 >= g as u64);
            // little waste: at most one partial row of x
            assert!((x as u64 * y as u64) < g as u64 + x as u64 + 1);
        }
    }
}
