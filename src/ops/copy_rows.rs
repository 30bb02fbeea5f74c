//! Row copies through slots (shaders/copy_rows.wgsl): gather (`out[i] = table[slots[i]]`,
//! lookups) and scatter (`table[slots[i]] = rows[i]`, uploaded misses into cache slots),
//! and [`RowBuffer::gather`] over it.
//!
//! Dispatch sizing: one thread per output element (per vec4 when dim % 4 == 0), 256-thread
//! workgroups, laid out in 2-D when the count passes `max_compute_workgroups_per_dimension`;
//! one dispatch per shard of the table, all in one compute pass.

use crate::batch::check_ids;
use crate::error::Result;
use crate::gpu::submit;
use crate::gpu::{
    encode as encode_pass, encoder, first_launches, grid_for_threads, Embeddings, GpuContext,
    Launch, LaunchState, ParamsAt, ParamsFrom, RowBuffer, RowFormat, RowLayout, Shader,
    COPY_PREFIXES, RAW_WORDS,
};
use crate::ops::params_layout;

pub(crate) const SHADER: Shader = Shader {
    file: "copy_rows.wgsl",
    source: include_str!("../../shaders/copy_rows.wgsl"),
    prefixes: COPY_PREFIXES,
};

/// Mirror of `CopyParams` in copy_rows.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CopyParams {
    n: u32,
    width: u32,
    groups_x: u32,
    offset: u32,
    shard_base: u32,
    shard_rows: u32,
    scatter: u32,
    _pad: u32,
}
params_layout!(
    CopyParams,
    "CopyParams",
    n,
    width,
    groups_x,
    offset,
    shard_base,
    shard_rows,
    scatter,
    _pad
);

/// Direction of a row copy between a (sharded) [`RowBuffer`] and a plain buffer of rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// `plain[offset + i] = table[slots[i]]`
    Gather,
    /// `table[slots[i]] = plain[offset + i]`
    Scatter,
    /// `plain[offset + i] = table[slots[i]]` as stored (compact rows undecoded, f32 rows
    /// with their optimizer state): training's rows leaving the slots on the host path.
    GatherStored,
}

/// The prefix and elements per row of a copy in direction `dir` over rows of `layout`:
/// gathers read (and decode) rows as the layout says; scatters of compact rows move them
/// as raw words, so what the host encoded lands in the slots unchanged.
fn variant(dir: Direction, layout: RowLayout) -> (&'static str, u32) {
    // (Compact rows, and f32 rows with their optimizer state, move as stored words.)
    let stored = matches!(dir, Direction::Scatter | Direction::GatherStored);
    if stored && (layout.format() != RowFormat::F32 || layout.has_state()) {
        (RAW_WORDS, layout.words_per_row() as u32)
    } else {
        (layout.elem_prefix(), layout.width())
    }
}

/// Builds the pipelines for rows of `layout` ahead of the first copy (a stored-words
/// gather uses one of these two).
pub(crate) fn prepare(ctx: &GpuContext, layout: RowLayout) -> Result<()> {
    for dir in [Direction::Gather, Direction::Scatter] {
        ctx.pipeline(&SHADER, "copy_rows", variant(dir, layout).0)?;
    }
    Ok(())
}

/// Bytes of one [`CopyParams`] block: a copy over a table of `k` shards has `k` of them.
pub(crate) const PARAMS_BYTES: u64 = std::mem::size_of::<CopyParams>() as u64;

/// The params block of each shard's dispatch for moving `n` rows between `table` and plain
/// rows `offset..offset + n` (see [`encode`]).
pub(crate) fn params<'a>(
    ctx: &GpuContext,
    dir: Direction,
    table: &'a RowBuffer,
    n: usize,
    offset: usize,
) -> impl Iterator<Item = CopyParams> + 'a {
    let width = variant(dir, table.layout()).1;
    let (gx, _) = grid_for_threads(ctx, n as u64 * width as u64);
    (0..table.shards().len()).map(move |k| {
        let base = k * table.shard_rows();
        CopyParams {
            n: n as u32,
            width,
            groups_x: gx,
            offset: offset as u32,
            shard_base: base as u32,
            shard_rows: table.shard_rows().min(table.rows() - base) as u32,
            scatter: u32::from(dir == Direction::Scatter),
            _pad: 0,
        }
    })
}

/// Encodes one compute pass moving `n` rows between `table` (through `slots`, u32 on the
/// GPU, each `< table.rows()`) and `plain` (rows `offset..offset + n`), one dispatch per
/// shard of `table`. `launches` keeps the call site's uniforms and bind groups. `staged`:
/// where the caller already wrote [`params`] (one block per shard, in a staging buffer the
/// encoder copies from); `None` writes them with queue writes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    dir: Direction,
    table: &RowBuffer,
    slots: &wgpu::Buffer,
    n: usize,
    plain: &wgpu::Buffer,
    offset: usize,
    launches: &mut Vec<Launch>,
    staged: Option<ParamsAt<'_>>,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let (prefix, width) = variant(dir, table.layout());
    let (gx, gy) = grid_for_threads(ctx, n as u64 * width as u64);
    let pipeline = ctx.pipeline(&SHADER, "copy_rows", prefix)?;
    let shards = table.shards().len();
    let mut groups = Vec::with_capacity(shards);
    let blocks = params(ctx, dir, table, n, offset);
    for (((k, shard), launch), block) in table
        .shards()
        .enumerate()
        .zip(first_launches(launches, shards))
        .zip(blocks)
    {
        let (src, dst) = match dir {
            Direction::Gather | Direction::GatherStored => (shard, plain),
            Direction::Scatter => (plain, shard),
        };
        let from = match staged {
            Some(at) => at.nth(k).from(&mut *enc),
            None => ParamsFrom::Host(&block),
        };
        let group = launch.bind(
            ctx,
            &pipeline,
            from,
            &[
                (1, slots, slots.size()),
                (2, src, src.size()),
                (3, dst, dst.size()),
            ],
        )?;
        groups.push(group.clone());
    }
    let label = match dir {
        Direction::Gather => "gather",
        Direction::Scatter => "scatter_rows",
        Direction::GatherStored => "gather_stored",
    };
    encode_pass(
        ctx,
        enc,
        label,
        &pipeline,
        groups.iter().map(|g| (g, (gx, gy))),
    );
    Ok(())
}

impl RowBuffer {
    /// Gathers `out[i] = self[ids[i]]` into a new [`Embeddings`] left on the GPU.
    ///
    /// An id `>= rows()` is [`crate::HotrowError::IdOutOfRange`] (naming the id and its
    /// position), found before any GPU work. An empty `ids` gives an empty result.
    pub fn gather(&self, ids: &[u32]) -> Result<Embeddings> {
        check_ids(ids, self.rows())?;
        let mut out = Embeddings::new(self.context(), ids.len(), self.dim())?;
        self.gather_checked(ids, &mut out)?;
        Ok(out)
    }

    /// Like [`RowBuffer::gather`], reusing `out` (grown when too small): no allocation per
    /// call once sizes settle. `out` must come from this buffer's context
    /// ([`crate::HotrowError::ForeignContext`] otherwise).
    pub fn gather_into(&self, ids: &[u32], out: &mut Embeddings) -> Result<()> {
        check_ids(ids, self.rows())?;
        self.gather_checked(ids, out)
    }

    fn gather_checked(&self, ids: &[u32], out: &mut Embeddings) -> Result<()> {
        let ctx = self.context().clone();
        ctx.guarded(|| {
            let ctx = self.context();
            out.reset_for(ctx, ids.len(), self.dim())?;
            if ids.is_empty() {
                return Ok(());
            }
            let mut state = self.gather.lock().unwrap_or_else(|e| e.into_inner());
            let LaunchState {
                input,
                launches,
                ring,
                ..
            } = &mut *state;
            // The ids and each shard's params go up through one mapped staging buffer.
            let ids_bytes = ids.len() as u64 * 4;
            let params_off = ids_bytes.next_multiple_of(16);
            let total = params_off + self.shards().len() as u64 * PARAMS_BYTES;
            let mut entry = ring.acquire(ctx, total)?;
            entry.write(|bytes| {
                let (head, blocks) = bytes.split_at_mut(params_off as usize);
                crate::util::copy_parallel(
                    bytemuck::cast_slice_mut(&mut head[..ids_bytes as usize]),
                    ids,
                );
                let blocks = blocks.chunks_exact_mut(PARAMS_BYTES as usize);
                for (dst, b) in blocks.zip(params(ctx, Direction::Gather, self, ids.len(), 0)) {
                    dst.copy_from_slice(bytemuck::bytes_of(&b));
                }
            })?;
            let ids_buf = input.get(ctx, ids_bytes)?;
            let mut enc = encoder(ctx, "hotrow gather");
            entry.copier().copy_to(&mut enc, 0, ids_buf, 0, ids_bytes);
            encode(
                ctx,
                &mut enc,
                Direction::Gather,
                self,
                ids_buf,
                ids.len(),
                out.buffer(),
                0,
                launches,
                Some(ParamsAt::staged(entry.buffer(), params_off, PARAMS_BYTES)),
            )?;
            submit(ctx, [enc.finish()], [entry]).map(drop)
        })
    }
}
