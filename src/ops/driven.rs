//! The kernels of the GPU-driven path, one shader per phase of a batch: `find.wgsl` (hits
//! stamped, misses claimed and listed), `evict.wgsl` (a parallel CLOCK sweep: `tally`,
//! `plan`, `evict`) and `fetch.wgsl` (missed rows copied from the table in host memory into
//! their slots, an indirect dispatch sized by the GPU). The slot list an op reads is written
//! by `slot_index.wgsl`'s `position`, whose encoding (slot + 1) these kernels share.
//!
//! One params block (`DrivenParams`) serves every dispatch; the caller writes the blocks
//! into its staging entry and names their offsets.

use crate::error::Result;
use crate::gpu::{
    encode as encode_pass, grid, grid_for_threads, GpuContext, Launch, ParamsFrom, Shader,
};
use crate::ops::params_layout;

/// The params block and work layout the three files share, prepended to each.
macro_rules! common {
    () => {
        include_str!("../../shaders/driven_common.wgsl")
    };
}
pub(crate) const COMMON: &str = common!();

pub(crate) const FIND: Shader = Shader {
    file: "find.wgsl",
    source: include_str!("../../shaders/find.wgsl"),
    prefixes: &[COMMON],
};

pub(crate) const EVICT: Shader = Shader {
    file: "evict.wgsl",
    source: include_str!("../../shaders/evict.wgsl"),
    prefixes: &[COMMON],
};

/// Rows moved a `vec4<u32>` at a time (rows of whole 16-byte units), or a word at a time.
const WORD_VEC4: &str = concat!(common!(), "alias Word = vec4<u32>;\n");
const WORD_U32: &str = concat!(common!(), "alias Word = u32;\n");

pub(crate) const FETCH: Shader = Shader {
    file: "fetch.wgsl",
    source: include_str!("../../shaders/fetch.wgsl"),
    prefixes: &[WORD_VEC4, WORD_U32],
};

/// Slots swept by one workgroup of `tally` and `evict` (`BLOCK` in evict.wgsl).
pub(crate) const BLOCK: usize = 1024;

/// Words of the work buffer before its lists (see driven_common.wgsl).
pub(crate) const HEADER_WORDS: usize = 32;

/// Where the kept counters sit in the work buffer (see driven_common.wgsl): the hand, then 64-bit
/// totals (lo, hi) of distinct ids, hits, misses and evictions, then the fault count.
pub(crate) mod word {
    pub(crate) const HAND: usize = 16;
    pub(crate) const TOTALS: usize = 18;
    pub(crate) const FAULT: usize = 26;
}

/// The reference bit of a slot's stamp, and the epoch bits beside it.
pub(crate) const EPOCH: u32 = 0x7fff_ffff;

/// Mirror of `DrivenParams` in driven_common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct DrivenParams {
    pub(crate) n: u32,
    pub(crate) groups_x: u32,
    pub(crate) epoch: u32,
    pub(crate) capacity: u32,
    pub(crate) blocks: u32,
    pub(crate) words: u32,
    pub(crate) table_base: u32,
    pub(crate) table_rows: u32,
    pub(crate) slot_base: u32,
    pub(crate) slot_rows: u32,
    pub(crate) max_groups: u32,
    pub(crate) batch_epoch: u32,
}
params_layout!(
    DrivenParams,
    "DrivenParams",
    n,
    groups_x,
    epoch,
    capacity,
    blocks,
    words,
    table_base,
    table_rows,
    slot_base,
    slot_rows,
    max_groups,
    batch_epoch
);

/// Bytes of one [`DrivenParams`] block.
pub(crate) const PARAMS_BYTES: u64 = std::mem::size_of::<DrivenParams>() as u64;

/// Sweep blocks over `capacity` slots.
pub(crate) fn blocks(capacity: usize) -> usize {
    capacity.div_ceil(BLOCK)
}

/// Words of the work buffer of a cache of `capacity` slots: header, block lists, miss ids
/// and their slots.
pub(crate) fn work_words(capacity: usize) -> usize {
    HEADER_WORDS + 2 * blocks(capacity) + 2 * capacity
}

/// How fetch moves a row of `row_words` u32 words: (shader prefix, Words per row).
pub(crate) fn fetch_word(row_words: usize) -> (&'static str, u32) {
    if row_words.is_multiple_of(4) {
        (WORD_VEC4, (row_words / 4) as u32)
    } else {
        (WORD_U32, row_words as u32)
    }
}

/// The phases, in the order a pass runs them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Phase {
    Find,
    Tally,
    Plan,
    Evict,
}

impl Phase {
    fn shader(self) -> &'static Shader {
        match self {
            Phase::Find => &FIND,
            _ => &EVICT,
        }
    }

    fn entry(self) -> &'static str {
        match self {
            Phase::Find => "find",
            Phase::Tally => "tally",
            Phase::Plan => "plan",
            Phase::Evict => "evict",
        }
    }
}

/// The params block of a pass of `n` positions (fetch's shard fields are filled per
/// dispatch by [`fetch_params`]).
pub(crate) fn params(
    ctx: &GpuContext,
    n: usize,
    (epoch, batch_epoch): (u32, u32),
    capacity: usize,
    row_words: usize,
) -> DrivenParams {
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    DrivenParams {
        n: n as u32,
        groups_x: grid_for_threads(ctx, n as u64).0,
        epoch,
        batch_epoch,
        capacity: capacity as u32,
        blocks: blocks(capacity) as u32,
        words: fetch_word(row_words).1,
        max_groups: max,
        ..Default::default()
    }
}

/// `base` with the sweep's grid (one workgroup per block) as its `groups_x`.
pub(crate) fn sweep_params(ctx: &GpuContext, base: DrivenParams) -> DrivenParams {
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    DrivenParams {
        groups_x: grid(base.blocks, max).0,
        ..base
    }
}

/// `base` for the fetch from table rows `table` (first, count) into slots `slots`.
pub(crate) fn fetch_params(
    base: DrivenParams,
    table: (usize, usize),
    slots: (usize, usize),
) -> DrivenParams {
    DrivenParams {
        table_base: table.0 as u32,
        table_rows: table.1 as u32,
        slot_base: slots.0 as u32,
        slot_rows: slots.1 as u32,
        ..base
    }
}

/// Builds the family's pipelines ahead of the first batch.
pub(crate) fn prepare(ctx: &GpuContext, row_words: usize) -> Result<()> {
    for phase in [Phase::Find, Phase::Tally, Phase::Plan, Phase::Evict] {
        ctx.pipeline(phase.shader(), phase.entry(), COMMON)?;
    }
    ctx.pipeline(&FETCH, "fetch", fetch_word(row_words).0)?;
    Ok(())
}

/// The buffers of the GPU-driven state a phase binds.
pub(crate) struct DrivenBuffers<'a> {
    pub(crate) ids: &'a wgpu::Buffer,
    pub(crate) slot_of: &'a wgpu::Buffer,
    pub(crate) state: &'a wgpu::Buffer,
    pub(crate) work: &'a wgpu::Buffer,
    pub(crate) args: &'a wgpu::Buffer,
}

/// Encodes one phase (its params block at `params_at` of staging buffer `staged`), with
/// `groups` workgroups (a grid past the per-dimension limit).
pub(crate) fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    phase: Phase,
    b: &DrivenBuffers<'_>,
    groups: (u32, u32),
    launch: &mut Launch,
    staged: (&wgpu::Buffer, u64),
) -> Result<()> {
    let pipeline = ctx.pipeline(phase.shader(), phase.entry(), COMMON)?;
    let from = ParamsFrom::Staged {
        enc: &mut *enc,
        src: staged.0,
        offset: staged.1,
    };
    fn whole(n: u32, buf: &wgpu::Buffer) -> (u32, &wgpu::Buffer, u64) {
        (n, buf, buf.size())
    }
    let storage: Vec<_> = match phase {
        Phase::Find => vec![
            whole(1, b.ids),
            whole(2, b.slot_of),
            whole(3, b.state),
            whole(4, b.work),
        ],
        // (Each entry point's layout has only the bindings it uses.)
        Phase::Tally => vec![whole(2, b.state), whole(3, b.work)],
        Phase::Plan => vec![whole(3, b.work), whole(4, b.args)],
        Phase::Evict => vec![whole(1, b.slot_of), whole(2, b.state), whole(3, b.work)],
    };
    let group = launch
        .bind::<DrivenParams>(ctx, &pipeline, from, &storage)?
        .clone();
    encode_pass(ctx, enc, phase.entry(), &pipeline, [(&group, groups)]);
    Ok(())
}

/// Encodes the fetch: one indirect dispatch per (table shard, slot shard) pair, each with
/// its params block at `staged.1 + k * PARAMS_BYTES` in pair order (table shard major).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_fetch(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    row_words: usize,
    work: &wgpu::Buffer,
    args: &wgpu::Buffer,
    pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
    launches: &mut [Launch],
    staged: (&wgpu::Buffer, u64),
) -> Result<()> {
    let pipeline = ctx.pipeline(&FETCH, "fetch", fetch_word(row_words).0)?;
    let mut groups = Vec::with_capacity(pairs.len());
    for (k, ((table, slots), launch)) in pairs.iter().zip(launches.iter_mut()).enumerate() {
        let from = ParamsFrom::Staged {
            enc: &mut *enc,
            src: staged.0,
            offset: staged.1 + k as u64 * PARAMS_BYTES,
        };
        let storage = [
            (1, work, work.size()),
            (2, *table, table.size()),
            (3, *slots, slots.size()),
        ];
        groups.push(
            launch
                .bind::<DrivenParams>(ctx, &pipeline, from, &storage)?
                .clone(),
        );
    }
    let ts = ctx.next_timestamps("fetch");
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("fetch"),
        timestamp_writes: crate::gpu::pass_writes(&ts),
    });
    pass.set_pipeline(&pipeline);
    for group in &groups {
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups_indirect(args, 0);
    }
    Ok(())
}
