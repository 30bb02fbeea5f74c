//! Gather: `out[out_offset + i] = table[slots[i]]` (shaders/gather.wgsl).
//!
//! Dispatch sizing: one thread per output element (per vec4 when dim % 4 == 0), 256-thread
//! workgroups, laid out in 2-D when the count passes `max_compute_workgroups_per_dimension`;
//! one dispatch per shard of the table, all in one compute pass.

use crate::error::Result;
use crate::gpu::{GpuContext, RowBuffer};
use crate::ops::{encode_row_copy, Direction, RowCopyBindings};

/// Encodes the gather of `n` rows whose table rows are in `slots` (u32, on the GPU) into
/// rows `out_offset..out_offset + n` of `out`. Slots must be `< table.rows()` (the caller
/// checked them on the host).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    table: &RowBuffer,
    slots: &wgpu::Buffer,
    n: usize,
    out: &wgpu::Buffer,
    out_offset: usize,
    bindings: &mut RowCopyBindings,
) -> Result<()> {
    encode_row_copy(
        ctx,
        enc,
        Direction::Gather,
        table,
        slots,
        n,
        out,
        out_offset,
        bindings,
    )
}
