//! Host launch code of the GPU ops, one file per kernel family; dispatch sizing sits next
//! to each launch.

pub(crate) mod bag;
pub(crate) mod gather;
pub(crate) mod matmul;
pub(crate) mod scatter;

use std::num::NonZeroU64;

use wgpu::util::DeviceExt;

use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::gpu::{grid, pass_writes, GpuContext, RowBuffer, WORKGROUP};

/// Uniform block shared by gather.wgsl and scatter_rows.wgsl (must match both).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RowCopyParams {
    n: u32,
    width: u32,
    groups_x: u32,
    offset: u32,
    shard_base: u32,
    shard_rows: u32,
    _pad: [u32; 2],
}

/// Direction of a row copy between a sharded [`RowBuffer`] and a plain row buffer.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    /// `plain[offset + i] = table[slots[i]]`
    Gather,
    /// `table[slots[i]] = plain[offset + i]`
    Scatter,
}

pub(crate) fn binding(buffer: &wgpu::Buffer, bytes: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: 0,
        size: NonZeroU64::new(bytes.max(4)),
    })
}

/// Encodes one compute pass moving `n` rows between `table` (through `slots`) and `plain`
/// (rows `offset..offset + n`), one dispatch per shard of `table`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_row_copy(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    dir: Direction,
    table: &RowBuffer,
    slots: &wgpu::Buffer,
    n: usize,
    plain: &wgpu::Buffer,
    offset: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let dim = table.dim();
    let vec4 = dim.is_multiple_of(4);
    let width = if vec4 { dim / 4 } else { dim } as u32;
    let (kernel, label) = match (dir, vec4) {
        (Direction::Gather, false) => (Kernel::GatherScalar, "gather"),
        (Direction::Gather, true) => (Kernel::GatherVec4, "gather"),
        (Direction::Scatter, false) => (Kernel::ScatterScalar, "scatter_rows"),
        (Direction::Scatter, true) => (Kernel::ScatterVec4, "scatter_rows"),
    };
    let (read_b, write_b) = if vec4 { (4, 5) } else { (2, 3) };
    let threads = n as u64 * width as u64;
    let groups = threads.div_ceil(WORKGROUP as u64) as u32;
    let (gx, gy) = grid(groups, ctx.limits().max_compute_workgroups_per_dimension);
    let pipeline = ctx.inner.kernels.get(kernel);
    let layout = pipeline.get_bind_group_layout(0);
    let plain_bytes = ((offset + n) * dim * 4) as u64;
    let bind_groups: Vec<wgpu::BindGroup> = table
        .shards()
        .enumerate()
        .map(|(k, shard)| {
            let base = k * table.shard_rows();
            let shard_rows = table.shard_rows().min(table.rows() - base);
            let params = RowCopyParams {
                n: n as u32,
                width,
                groups_x: gx,
                offset: offset as u32,
                shard_base: base as u32,
                shard_rows: shard_rows as u32,
                _pad: [0; 2],
            };
            let ubuf = ctx
                .device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("hotrow row-copy params"),
                    contents: bytemuck::bytes_of(&params),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let shard_bytes = (shard_rows * dim * 4) as u64;
            let (read, read_bytes, write, write_bytes) = match dir {
                Direction::Gather => (shard, shard_bytes, plain, plain_bytes),
                Direction::Scatter => (plain, plain_bytes, shard, shard_bytes),
            };
            ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: ubuf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: binding(slots, n as u64 * 4),
                    },
                    wgpu::BindGroupEntry {
                        binding: read_b,
                        resource: binding(read, read_bytes),
                    },
                    wgpu::BindGroupEntry {
                        binding: write_b,
                        resource: binding(write, write_bytes),
                    },
                ],
            })
        })
        .collect();
    let ts = ctx.next_timestamps(label);
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: pass_writes(&ts),
    });
    pass.set_pipeline(pipeline);
    for bg in &bind_groups {
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(gx, gy, 1);
    }
    Ok(())
}
