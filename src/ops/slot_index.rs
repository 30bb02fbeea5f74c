//! The slot index: the cache's id -> slot array kept on the GPU for resolution on the GPU
//! (shaders/slot_index.wgsl): `probe` finds a batch's hits (a bitmap of touched slots) and
//! misses (a list of ids), `assign` applies the host's changes to the index, `position`
//! writes the slot list an op reads.
//!
//! Dispatch sizing: one thread per position (per pair for `assign`), 256-thread workgroups
//! in a 2-D grid past `max_compute_workgroups_per_dimension`; one dispatch per call.

use crate::error::Result;
use crate::gpu::{encode as encode_pass, grid_for_threads, GpuContext, Launch, ParamsAt, Shader};
use crate::ops::params_layout;

pub(crate) const SHADER: Shader = Shader {
    file: "slot_index.wgsl",
    source: include_str!("../../shaders/slot_index.wgsl"),
    prefixes: &[""],
};

/// Mirror of `MapParams` in slot_index.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MapParams {
    n: u32,
    groups_x: u32,
    bitmap_words: u32,
    miss_room: u32,
    first: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
params_layout!(
    MapParams,
    "MapParams",
    n,
    groups_x,
    bitmap_words,
    miss_room,
    first,
    _pad0,
    _pad1,
    _pad2
);

/// Bytes of one [`MapParams`] block.
pub(crate) const PARAMS_BYTES: u64 = std::mem::size_of::<MapParams>() as u64;

/// Words before the bitmap in the probe's output (the miss count and padding).
pub(crate) const HEADER_WORDS: u64 = 4;

/// The slot index entry of a row that is not resident (a resident row's is slot + 1).
pub(crate) const NOT_RESIDENT: u32 = 0;

/// The kernels of the family.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kernel {
    /// Hits into the touched bitmap, misses into the miss list.
    Probe,
    /// `slot_of[key] = value` for (key, value) pairs.
    Assign,
    /// `out[i] = slot_of[ids[i]]`.
    Position,
}

impl Kernel {
    fn entry(self) -> &'static str {
        match self {
            Kernel::Probe => "probe",
            Kernel::Assign => "assign",
            Kernel::Position => "position",
        }
    }
}

/// Words of the touched bitmap over `capacity` slots.
pub(crate) fn bitmap_words(capacity: usize) -> u64 {
    (capacity as u64).div_ceil(32)
}

/// The params block of a probe over `n` positions.
pub(crate) fn probe_params(
    ctx: &GpuContext,
    n: usize,
    bitmap_words: u64,
    miss_room: usize,
) -> MapParams {
    MapParams {
        bitmap_words: bitmap_words as u32,
        miss_room: miss_room as u32,
        ..params(ctx, n, 0)
    }
}

/// The params block of an `assign` over pairs `first..first + n`, or of a `position` over
/// `n` positions (`first` 0).
pub(crate) fn params(ctx: &GpuContext, n: usize, first: usize) -> MapParams {
    let (gx, _) = grid_for_threads(ctx, n as u64);
    MapParams {
        n: n as u32,
        groups_x: gx,
        bitmap_words: 0,
        miss_room: 0,
        first: first as u32,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    }
}

/// Builds the family's pipelines ahead of the first batch.
pub(crate) fn prepare(ctx: &GpuContext) -> Result<()> {
    for k in [Kernel::Probe, Kernel::Assign, Kernel::Position] {
        ctx.pipeline(&SHADER, k.entry(), "")?;
    }
    Ok(())
}

/// Encodes one `kernel` dispatch over `n` positions (pairs) whose params block the caller
/// wrote at `params_at` of staging buffer `staged`. `input`: the ids (or pairs); `out`: the
/// probe's output or the slot list (unused by `assign`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    kernel: Kernel,
    n: usize,
    input: &wgpu::Buffer,
    slot_of: &wgpu::Buffer,
    out: &wgpu::Buffer,
    launch: &mut Launch,
    params: ParamsAt<'_>,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline(&SHADER, kernel.entry(), "")?;
    let (gx, gy) = grid_for_threads(ctx, n as u64);
    let from = params.from(&mut *enc);
    let mut storage = vec![(1, input, input.size()), (2, slot_of, slot_of.size())];
    if kernel != Kernel::Assign {
        storage.push((3, out, out.size()));
    }
    let bind_group = launch
        .bind::<MapParams>(ctx, &pipeline, from, &storage)?
        .clone();
    encode_pass(
        ctx,
        enc,
        kernel.entry(),
        &pipeline,
        [(&bind_group, (gx, gy))],
    );
    Ok(())
}
