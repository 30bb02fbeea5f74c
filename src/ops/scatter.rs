//! Scatter: `table[slots[i]] = src[src_offset + i]` (shaders/scatter_rows.wgsl): moves the
//! rows uploaded for cache misses into their slots in one pass.
//!
//! Dispatch sizing as in [`super::gather`]. The slots of one call must be distinct.

use crate::error::Result;
use crate::gpu::{GpuContext, RowBuffer};
use crate::ops::{encode_row_copy, Direction, RowCopyBindings};

/// Encodes the scatter of `n` rows of `src` (from row `src_offset`) into `table` at `slots`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    table: &RowBuffer,
    slots: &wgpu::Buffer,
    n: usize,
    src: &wgpu::Buffer,
    src_offset: usize,
    bindings: &mut RowCopyBindings,
) -> Result<()> {
    encode_row_copy(
        ctx,
        enc,
        Direction::Scatter,
        table,
        slots,
        n,
        src,
        src_offset,
        bindings,
    )
}
