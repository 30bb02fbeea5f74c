//! Host launch code of the GPU ops, one file per kernel family; dispatch sizing sits next
//! to each launch.

pub(crate) mod bag;
pub(crate) mod gather;
pub(crate) mod matmul;
pub(crate) mod scatter;

use std::num::NonZeroU64;

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

/// Reusable uniform buffers and bind groups of one row-copy call site (one entry per shard
/// of its table). Bind groups bind whole buffers, so they stay valid while the same buffers
/// are used; the per-call shape goes through a queue write of the uniform block, which the
/// queue orders before the submission that reads it.
#[derive(Default)]
pub(crate) struct RowCopyBindings {
    entries: Vec<BindingEntry>,
}

struct BindingEntry {
    params: wgpu::Buffer,
    /// (slots, plain, vec4) the bind group was made for.
    bound: Option<(wgpu::Buffer, wgpu::Buffer, bool, wgpu::BindGroup)>,
}

/// Encodes one compute pass moving `n` rows between `table` (through `slots`) and `plain`
/// (rows `offset..offset + n`), one dispatch per shard of `table`. All buffers are bound
/// whole (each at most one storage binding in size).
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
    cache: &mut RowCopyBindings,
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
    while cache.entries.len() < table.shards().len() {
        cache.entries.push(BindingEntry {
            params: ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("hotrow row-copy params"),
                size: std::mem::size_of::<RowCopyParams>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            bound: None,
        });
    }
    for (k, shard) in table.shards().enumerate() {
        let base = k * table.shard_rows();
        let params = RowCopyParams {
            n: n as u32,
            width,
            groups_x: gx,
            offset: offset as u32,
            shard_base: base as u32,
            shard_rows: table.shard_rows().min(table.rows() - base) as u32,
            _pad: [0; 2],
        };
        let e = &mut cache.entries[k];
        ctx.queue()
            .write_buffer(&e.params, 0, bytemuck::bytes_of(&params));
        let fresh = match &e.bound {
            Some((s, p, v, _)) => s != slots || p != plain || *v != vec4,
            None => true,
        };
        if fresh {
            let (read, write) = match dir {
                Direction::Gather => (shard, plain),
                Direction::Scatter => (plain, shard),
            };
            let bg = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: e.params.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: slots.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: read_b,
                        resource: read.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: write_b,
                        resource: write.as_entire_binding(),
                    },
                ],
            });
            e.bound = Some((slots.clone(), plain.clone(), vec4, bg));
        }
    }
    let ts = ctx.next_timestamps(label);
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: pass_writes(&ts),
    });
    pass.set_pipeline(pipeline);
    for e in &cache.entries[..table.shards().len()] {
        let (_, _, _, bg) = e.bound.as_ref().expect("bind group made above");
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(gx, gy, 1);
    }
    Ok(())
}

/// Encodes one compute pass of one dispatch (timed under `label` when timing is on) and
/// submits it.
pub(crate) fn submit_dispatch(
    ctx: &GpuContext,
    label: &'static str,
    pipeline: &wgpu::ComputePipeline,
    bind_group: &wgpu::BindGroup,
    (gx, gy): (u32, u32),
) -> Result<()> {
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
    {
        let ts = ctx.next_timestamps(label);
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: pass_writes(&ts),
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(gx, gy, 1);
    }
    ctx.queue().submit([enc.finish()]);
    ctx.check()
}

/// A bind group for group 0 of `pipeline`: a fresh uniform buffer holding `params` at
/// binding 0, then `entries` (binding number, resource).
pub(crate) fn params_bind_group<P: bytemuck::Pod>(
    ctx: &GpuContext,
    label: &'static str,
    pipeline: &wgpu::ComputePipeline,
    params: &P,
    entries: &[(u32, wgpu::BindingResource<'_>)],
) -> wgpu::BindGroup {
    use wgpu::util::DeviceExt;
    let ubuf = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
    let mut all = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: ubuf.as_entire_binding(),
    }];
    all.extend(
        entries
            .iter()
            .map(|(binding, resource)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: resource.clone(),
            }),
    );
    ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &all,
    })
}
