//! Launching kernels without per-call allocation: a [`Launch`] keeps one call site's
//! uniform buffer and bind group, refilling the uniform by a copy from the call's staging
//! entry (or a queue write) and rebuilding the bind group only when the bound buffers
//! change; [`LaunchState::stage`] puts a call's input and params into a mapped ring entry;
//! [`encode`] records dispatches in one timed compute pass.

use crate::error::Result;
use crate::gpu::{pass_writes, GpuContext, GrowBuffer, StagingEntry, StagingRing, TrackedBuffer};

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

/// The (x, y) grid of 256-thread workgroups covering `threads` threads on `ctx`.
pub(crate) fn grid_for_threads(ctx: &GpuContext, threads: u64) -> (u32, u32) {
    let groups = threads.div_ceil(WORKGROUP as u64) as u32;
    grid(groups, ctx.limits().max_compute_workgroups_per_dimension)
}

/// One storage binding: a buffer and the bytes of it the kernel may see (from offset 0).
pub(crate) type Bound<'a> = (u32, &'a wgpu::Buffer, u64);

/// One call site's uniform block and bind group (group 0, uniform at binding 0).
#[derive(Default)]
pub(crate) struct Launch {
    params: Option<TrackedBuffer>,
    /// The bind group and the (pipeline, uniform, bindings) it was made for.
    bound: Option<BoundGroup>,
}

struct BoundGroup {
    pipeline: wgpu::ComputePipeline,
    uniform: (wgpu::Buffer, u64),
    storage: Vec<(u32, wgpu::Buffer, u64)>,
    group: wgpu::BindGroup,
}

/// Where a launch's params block comes from.
pub(crate) enum ParamsFrom<'a, P> {
    /// These values, written with a queue write (which wgpu stages in a buffer of its own).
    Host(&'a P),
    /// Already written into a mapped staging buffer at this offset: copied by `enc` into
    /// the uniform buffer, before the dispatch that reads it (no queue write, no allocation).
    Staged {
        enc: &'a mut wgpu::CommandEncoder,
        src: &'a wgpu::Buffer,
        offset: u64,
    },
    /// Already in a device buffer with `UNIFORM` usage at this offset (a multiple of
    /// [`uniform_stride`]): bound where it is, with no copy. A GPU-driven pass copies all
    /// its blocks up at once: a copy before each dispatch costs the GPU a transfer and two
    /// barriers between kernels that run for microseconds.
    Bound {
        buffer: &'a wgpu::Buffer,
        offset: u64,
    },
}

/// Bytes between params blocks bound in place ([`ParamsFrom::Bound`]): room for the
/// largest params block (128 bytes at most), at the device's uniform offset alignment.
pub(crate) fn uniform_stride(ctx: &GpuContext) -> u64 {
    let align = u64::from(ctx.limits().min_uniform_buffer_offset_alignment).max(1);
    128u64.next_multiple_of(align)
}

/// Where a call's params blocks lie, block `k` at `offset + k * stride`: in a staging
/// buffer (each copied into its launch's uniform) or bound in place.
#[derive(Clone, Copy)]
pub(crate) struct ParamsAt<'a> {
    buffer: &'a wgpu::Buffer,
    offset: u64,
    stride: u64,
    bound: bool,
}

impl<'a> ParamsAt<'a> {
    /// Blocks in a mapped staging buffer ([`ParamsFrom::Staged`]).
    pub(crate) fn staged(buffer: &'a wgpu::Buffer, offset: u64, stride: u64) -> Self {
        Self {
            buffer,
            offset,
            stride,
            bound: false,
        }
    }

    /// Blocks in a uniform buffer, [`uniform_stride`] apart ([`ParamsFrom::Bound`]).
    pub(crate) fn bound(buffer: &'a wgpu::Buffer, offset: u64, stride: u64) -> Self {
        Self {
            buffer,
            offset,
            stride,
            bound: true,
        }
    }

    /// The blocks from block `k` on.
    pub(crate) fn nth(self, k: usize) -> Self {
        Self {
            offset: self.offset + k as u64 * self.stride,
            ..self
        }
    }

    /// The first block, for a launch recorded into `enc`.
    pub(crate) fn from<'e, P>(self, enc: &'e mut wgpu::CommandEncoder) -> ParamsFrom<'e, P>
    where
        'a: 'e,
    {
        if self.bound {
            ParamsFrom::Bound {
                buffer: self.buffer,
                offset: self.offset,
            }
        } else {
            ParamsFrom::Staged {
                enc,
                src: self.buffer,
                offset: self.offset,
            }
        }
    }
}

impl Launch {
    /// Brings `params` into this call site's uniform buffer (or binds them where they are)
    /// and returns a bind group for `pipeline` with the uniform at binding 0 and `storage`
    /// after it (reused when the same buffers are bound again).
    pub(crate) fn bind<P: bytemuck::Pod>(
        &mut self,
        ctx: &GpuContext,
        pipeline: &wgpu::ComputePipeline,
        params: ParamsFrom<'_, P>,
        storage: &[Bound<'_>],
    ) -> Result<&wgpu::BindGroup> {
        let size = std::mem::size_of::<P>() as u64;
        let uniform = match params {
            ParamsFrom::Bound { buffer, offset } => (buffer.clone(), offset),
            ParamsFrom::Host(p) => {
                let own = self.own_uniform(ctx, size)?;
                ctx.queue().write_buffer(&own, 0, bytemuck::bytes_of(p));
                (own, 0)
            }
            ParamsFrom::Staged { enc, src, offset } => {
                let own = self.own_uniform(ctx, size)?;
                enc.copy_buffer_to_buffer(src, offset, &own, 0, size);
                (own, 0)
            }
        };
        let same = self.bound.as_ref().is_some_and(|b| {
            &b.pipeline == pipeline
                && b.uniform == uniform
                && b.storage.len() == storage.len()
                && b.storage
                    .iter()
                    .zip(storage)
                    .all(|((n, buf, sz), (n2, buf2, sz2))| n == n2 && buf == *buf2 && sz == sz2)
        });
        if !same {
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &uniform.0,
                    offset: uniform.1,
                    size: std::num::NonZeroU64::new(size),
                }),
            }];
            entries.extend(
                storage
                    .iter()
                    .map(|&(binding, buffer, bytes)| wgpu::BindGroupEntry {
                        binding,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer,
                            offset: 0,
                            size: std::num::NonZeroU64::new(bytes.max(4)),
                        }),
                    }),
            );
            let group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("hotrow op"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            let key = storage
                .iter()
                .map(|&(n, b, sz)| (n, b.clone(), sz))
                .collect();
            self.bound = Some(BoundGroup {
                pipeline: pipeline.clone(),
                uniform,
                storage: key,
                group,
            });
        }
        Ok(&self.bound.as_ref().expect("bind group just made").group)
    }

    /// This call site's own uniform buffer, at least `size` bytes.
    fn own_uniform(&mut self, ctx: &GpuContext, size: u64) -> Result<wgpu::Buffer> {
        if self.params.as_ref().is_none_or(|b| b.size() < size) {
            self.params = Some(ctx.create_buffer(
                "hotrow params",
                size,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                false,
            )?);
            self.bound = None;
        }
        Ok(self
            .params
            .as_ref()
            .expect("uniform buffer just made")
            .buffer
            .clone())
    }
}

/// Reusable launch state of one op call site: its per-call input (ids, offsets, operands)
/// staged in a ring of mapped staging buffers and copied into a grow-only
/// device buffer, and one [`Launch`] per dispatch (e.g. per shard of a table).
pub(crate) struct LaunchState {
    pub(crate) input: GrowBuffer,
    pub(crate) launches: Vec<Launch>,
    /// Mapped upload buffers (made on first use): a call writes its input and params here
    /// and the GPU copies them, with no queue write and no allocation per call.
    pub(crate) ring: StagingRing,
}

/// Staging buffers per op call site: the host may run this many calls ahead of the GPU.
const OP_STAGING_BUFFERS: usize = 4;

impl Default for LaunchState {
    fn default() -> Self {
        Self {
            input: GrowBuffer::storage("hotrow op input"),
            launches: Vec::new(),
            ring: StagingRing::new(OP_STAGING_BUFFERS),
        }
    }
}

/// A call's input and params written into a ring entry by [`LaunchState::stage`]; its
/// `entry` goes to the submission of the encoder given to `stage`.
pub(crate) struct Staged {
    /// The device buffer the input is copied into (by the encoder given to `stage`).
    pub(crate) input: wgpu::Buffer,
    /// The staging entry, and where the params block sits in it (for
    /// [`ParamsFrom::Staged`]).
    pub(crate) entry: StagingEntry,
    pub(crate) params_at: u64,
}

impl LaunchState {
    /// Writes the `input` pieces one after another, then `params`, into the next mapped
    /// ring entry (straight from the caller's slices) and
    /// records in `enc` the copy of the input into the call site's grow-only device
    /// buffer: per-call data goes up with no queue write and no allocation once sizes
    /// settle. Submit `enc` with the returned entry.
    pub(crate) fn stage(
        &mut self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        input: &[&[u8]],
        params: &[u8],
    ) -> Result<Staged> {
        let in_bytes = input.iter().map(|p| p.len() as u64).sum::<u64>();
        let params_at = in_bytes.next_multiple_of(16);
        let total = params_at + params.len() as u64;
        let mut entry = self.ring.acquire(ctx, total)?;
        entry.write(|bytes| {
            let mut at = 0;
            for piece in input {
                bytes[at..at + piece.len()].copy_from_slice(piece);
                at += piece.len();
            }
            bytes[params_at as usize..total as usize].copy_from_slice(params);
        })?;
        let buf = self.input.get(ctx, in_bytes.max(4))?.clone();
        entry
            .copier()
            .copy_to(enc, 0, &buf, 0, in_bytes.next_multiple_of(4));
        Ok(Staged {
            input: buf,
            entry,
            params_at,
        })
    }

    /// The bind group of this call site's launch of `pipeline`, with `storage` bound and
    /// its params block copied by `enc` from where [`LaunchState::stage`] put it.
    pub(crate) fn bind_staged<P: bytemuck::Pod>(
        &mut self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        staged: &Staged,
        storage: &[Bound<'_>],
    ) -> Result<wgpu::BindGroup> {
        let from = ParamsFrom::Staged {
            enc,
            src: staged.entry.buffer(),
            offset: staged.params_at,
        };
        let launch = &mut first_launches(&mut self.launches, 1)[0];
        Ok(launch.bind::<P>(ctx, pipeline, from, storage)?.clone())
    }
}

/// The first `n` of `launches`, made as needed.
pub(crate) fn first_launches(launches: &mut Vec<Launch>, n: usize) -> &mut [Launch] {
    if launches.len() < n {
        launches.resize_with(n, Launch::default);
    }
    &mut launches[..n]
}

/// Records one compute pass (timed under `label` when timing is on) running `pipeline`
/// once per (bind group, grid).
pub(crate) fn encode<'a>(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    label: &'static str,
    pipeline: &wgpu::ComputePipeline,
    dispatches: impl IntoIterator<Item = (&'a wgpu::BindGroup, (u32, u32))>,
) {
    let ts = ctx.next_timestamps(label);
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: pass_writes(&ts),
    });
    pass.set_pipeline(pipeline);
    for (group, (gx, gy)) in dispatches {
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(gx, gy, 1);
    }
}

/// A command encoder on `ctx` labelled `label`.
pub(crate) fn encoder(ctx: &GpuContext, label: &'static str) -> wgpu::CommandEncoder {
    ctx.device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
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
