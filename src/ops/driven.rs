//! The kernels of the GPU-driven path, one shader per phase of a batch: `find.wgsl` (hits
//! stamped, misses claimed and listed), `evict.wgsl` (a parallel CLOCK sweep: `tally`,
//! `plan`, `evict`) and `fetch.wgsl` (missed rows copied from the table in host memory into
//! their slots by a grid the host sizes from the pass's positions, striding over the
//! misses the GPU counted). The slot list an op reads is written
//! by `slot_index.wgsl`'s `position`, whose encoding (slot + 1) these kernels share.
//!
//! One params block (`DrivenParams`) serves every dispatch; the caller writes the blocks
//! into its staging entry and names their offsets.

use crate::error::Result;
use crate::gpu::{
    encode as encode_pass, grid, grid_for_threads, Bound, GpuContext, Launch, ParamsAt, ParamsFrom,
    RowBuffer, Shader,
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

/// A training cache's changed rows back into the table (write_back.wgsl).
pub(crate) const WRITE_BACK: Shader = Shader {
    file: "write_back.wgsl",
    source: include_str!("../../shaders/write_back.wgsl"),
    prefixes: &[WORD_VEC4, WORD_U32],
};

/// Slots swept by one workgroup of `tally` and `evict` (`BLOCK` in evict.wgsl).
pub(crate) const BLOCK: usize = 1024;

/// Words of the work buffer before its lists (see driven_common.wgsl).
pub(crate) const HEADER_WORDS: usize = 48;

// The kept words sit past the 16 per-pass counters the host clears each pass, and before
// the lists; four 64-bit totals come before the fault count.
const _: () = assert!(
    word::HAND >= 16
        && word::TOTALS > word::HAND
        && word::FAULT == word::TOTALS + 8
        && word::REFUSED == word::FAULT + 1
        && word::WINDOW == word::REFUSED + 2
        && word::WINDOW + 2 < HEADER_WORDS
);

/// Where the kept counters sit in the work buffer (see driven_common.wgsl): the hand, then
/// 64-bit totals (lo, hi) of distinct ids, hits, misses and evictions, the fault count,
/// then admission's 64-bit refused count and its window.
pub(crate) mod word {
    pub(crate) const HAND: usize = 16;
    pub(crate) const TOTALS: usize = 18;
    pub(crate) const FAULT: usize = 26;
    /// 64-bit count of rows refused admission (admission caches).
    pub(crate) const REFUSED: usize = 27;
    /// The window's share of a pass's victims, per mille (admission caches).
    pub(crate) const WINDOW: usize = 29;
}

/// The window's share a cache with admission starts with, per mille (evict.wgsl tunes it).
pub(crate) const FIRST_WINDOW: u32 = 100;

/// Positions between halvings of a cache's frequency sketch, per slot (the host schedules
/// `age`; chosen with the CPU twin on W2's and W5's traces).
pub(crate) const AGE_EVERY: u64 = 25;

/// The epoch bits of a slot's stamp (beside its reference bit, bit 31, and admission's
/// SAVED mark, bit 30).
pub(crate) const EPOCH: u32 = 0x3fff_ffff;

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
    pub(crate) bins: u32,
    pub(crate) batch_epoch: u32,
    pub(crate) written_at: u32,
    pub(crate) held: u32,
    pub(crate) shard_rows: u32,
    pub(crate) group_rows: u32,
    pub(crate) admit: u32,
    pub(crate) transient: u32,
    pub(crate) sketch_mask: u32,
    pub(crate) ghost_mask: u32,
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
    bins,
    batch_epoch,
    written_at,
    held,
    shard_rows,
    group_rows,
    admit,
    transient,
    sketch_mask,
    ghost_mask
);

/// Bytes of one [`DrivenParams`] block.
pub(crate) const PARAMS_BYTES: u64 = std::mem::size_of::<DrivenParams>() as u64;

/// Sweep blocks over `capacity` slots.
pub(crate) fn blocks(capacity: usize) -> usize {
    capacity.div_ceil(BLOCK)
}

/// Words of the work buffer of a cache of `capacity` slots whose misses are counted in
/// `bins` id ranges (0: not counted): header, block lists, miss ids, their slots and the
/// rows those slots held, then the ranges' boundaries and 64-bit counts; then, for a
/// training cache over `rows` table rows, one bit per row (see [`written_at`]).
pub(crate) fn work_words(capacity: usize, bins: usize, training_rows: Option<usize>) -> usize {
    written_at(capacity, bins) + training_rows.map_or(0, |rows| rows.div_ceil(32))
}

/// Where the id ranges' boundaries start in the work buffer (their counts follow them).
pub(crate) fn bins_at(capacity: usize) -> usize {
    HEADER_WORDS + 3 * blocks(capacity) + 3 * capacity
}

/// Where a training cache's written-rows bitmap starts in the work buffer.
pub(crate) fn written_at(capacity: usize, bins: usize) -> usize {
    bins_at(capacity) + if bins == 0 { 0 } else { 3 * bins + 1 }
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
    /// Halves the frequency sketch's counters (admission caches; not a phase of every
    /// pass).
    Age,
    /// Zeroes the sketch if the last pass saw the hot set move (admission caches: before
    /// every pass; it returns at once otherwise).
    Forget,
    /// Stamps a prefetched batch's slots and counts its hits (find.wgsl's `touch`: the
    /// lookup served through the prefetch's slot list, no pass).
    Touch,
}

impl Phase {
    fn shader(self) -> &'static Shader {
        match self {
            Phase::Find | Phase::Touch => &FIND,
            _ => &EVICT,
        }
    }

    fn entry(self) -> &'static str {
        match self {
            Phase::Find => "find",
            Phase::Tally => "tally",
            Phase::Plan => "plan",
            Phase::Evict => "evict",
            Phase::Age => "age",
            Phase::Forget => "forget",
            Phase::Touch => "touch",
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
    DrivenParams {
        n: n as u32,
        groups_x: grid_for_threads(ctx, n as u64).0,
        epoch,
        batch_epoch,
        capacity: capacity as u32,
        blocks: blocks(capacity) as u32,
        words: fetch_word(row_words).1,
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

/// Most workgroups of the fetch's grid: its threads stride over the missed words, so a few
/// thousand workgroups keep any GPU busy, and a pass that misses little wastes little.
const FETCH_GROUPS: u64 = 4096;

/// The fetch's grid for a pass of `n` positions of `words` Words: one thread per word of
/// every position, capped at [`FETCH_GROUPS`] workgroups.
pub(crate) fn fetch_grid(ctx: &GpuContext, n: usize, words: u32) -> (u32, u32) {
    let threads = (n as u64 * words as u64).min(FETCH_GROUPS * 256);
    grid_for_threads(ctx, threads)
}

/// Table shards one fetch dispatch binds (`table0..table3` in fetch.wgsl).
pub(crate) const FETCH_TABLES: usize = 4;

/// Storage buffers the fetch binds: the work buffer, a slot shard and [`FETCH_TABLES`]
/// table shards (the most of any GPU-driven kernel; the path needs this many per stage).
pub(crate) const FETCH_STORAGE: u32 = 2 + FETCH_TABLES as u32;

/// Where table shard `k` of `table` lies: (first row, rows).
pub(crate) fn shard_range(table: &RowBuffer, k: usize) -> (usize, usize) {
    let per = table.shard_rows();
    (k * per, per.min(table.rows() - k * per))
}

/// `base` for the dispatch that moves rows between table shard `t` of `table` and slots
/// `slots` (first, count), over a grid `groups_x` workgroups wide. Write-back and flush
/// bind shard `t` alone (`table_base`, `table_rows`); the fetch binds the group of up to
/// [`FETCH_TABLES`] shards from `t` (`group_rows`, each shard `shard_rows` rows).
pub(crate) fn fetch_params(
    base: DrivenParams,
    groups_x: u32,
    (table, t): (&RowBuffer, usize),
    slots: (usize, usize),
) -> DrivenParams {
    let (first, rows) = shard_range(table, t);
    let last = (t + FETCH_TABLES).min(table.shards().len()) - 1;
    let end = shard_range(table, last);
    DrivenParams {
        groups_x,
        table_base: first as u32,
        table_rows: rows as u32,
        shard_rows: table.shard_rows() as u32,
        group_rows: (end.0 + end.1 - first) as u32,
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

/// Builds the write-back pipelines of a training cache ahead of its first batch.
pub(crate) fn prepare_write_back(ctx: &GpuContext, row_words: usize) -> Result<()> {
    for entry in ["write_back", "clean_victims", "mark", "flush", "clean"] {
        ctx.pipeline(&WRITE_BACK, entry, fetch_word(row_words).0)?;
    }
    Ok(())
}

/// A training cache's GPU state a write-back kernel binds.
pub(crate) struct WriteBackBuffers<'a> {
    pub(crate) table: &'a RowBuffer,
    pub(crate) slots: &'a RowBuffer,
    pub(crate) work: &'a wgpu::Buffer,
    pub(crate) state: &'a wgpu::Buffer,
}

/// Encodes `entry` ("write_back" or "flush") once per (table shard, slot shard) pair,
/// the pair's params block `k` from `params`, over a `grid`.
pub(crate) fn encode_copy_out(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    entry: &'static str,
    b: &WriteBackBuffers<'_>,
    grid: (u32, u32),
    launches: &mut [Launch],
    params: ParamsSource<'_>,
) -> Result<()> {
    let row_words = b.slots.layout().words_per_row();
    let pipeline = ctx.pipeline(&WRITE_BACK, entry, fetch_word(row_words).0)?;
    let state = [(4, b.state, b.state.size())];
    let pairs = (b.table, b.slots, b.work);
    encode_pairs(
        ctx,
        enc,
        (entry, &pipeline),
        pairs,
        &state,
        grid,
        launches,
        params,
    )
}

/// Where a dispatch's params blocks come from.
#[derive(Clone, Copy)]
pub(crate) enum ParamsSource<'a> {
    /// Blocks in a buffer (staged or bound in place).
    At(ParamsAt<'a>),
    /// These blocks, written by queue writes.
    Host(&'a [DrivenParams]),
}

impl<'a> ParamsSource<'a> {
    /// Where block `k` comes from, copied by `enc` when staged.
    fn block<'e>(&self, enc: &'e mut wgpu::CommandEncoder, k: usize) -> ParamsFrom<'e, DrivenParams>
    where
        'a: 'e,
    {
        match *self {
            ParamsSource::At(at) => at.nth(k).from(enc),
            ParamsSource::Host(blocks) => ParamsFrom::Host(&blocks[k]),
        }
    }
}

/// Encodes `pipeline` once per (table shard, slot shard) pair, table shard major: the work
/// buffer at binding 1, the pair's table shard at 2 and slot shard at 3, then `extra`; the
/// pair's params block `k` from `params`; each dispatch in a compute pass of its own.
#[allow(clippy::too_many_arguments)]
fn encode_pairs(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    (label, pipeline): (&'static str, &wgpu::ComputePipeline),
    (table, slots, work): (&RowBuffer, &RowBuffer, &wgpu::Buffer),
    extra: &[Bound<'_>],
    grid: (u32, u32),
    launches: &mut [Launch],
    params: ParamsSource<'_>,
) -> Result<()> {
    let pairs = table
        .shards()
        .flat_map(|t| slots.shards().map(move |s| (t, s)));
    for (k, ((t, s), launch)) in pairs.zip(launches.iter_mut()).enumerate() {
        let mut storage = vec![(1, work, work.size()), (2, t, t.size()), (3, s, s.size())];
        storage.extend_from_slice(extra);
        let from = params.block(&mut *enc, k);
        let group = launch.bind(ctx, pipeline, from, &storage)?.clone();
        encode_pass(ctx, enc, label, pipeline, [(&group, grid)]);
    }
    Ok(())
}

/// Encodes one dispatch of `entry` ("clean_victims", "mark" or "clean") binding the slot
/// state (and for the first two the work buffer, or the `list` of changed slots), over a
/// `grid`, with the first block of `params`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_marks(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    entry: &'static str,
    row_words: usize,
    state: &wgpu::Buffer,
    other: Option<(u32, &wgpu::Buffer)>,
    grid: (u32, u32),
    launch: &mut Launch,
    params: ParamsSource<'_>,
) -> Result<()> {
    let pipeline = ctx.pipeline(&WRITE_BACK, entry, fetch_word(row_words).0)?;
    let mut storage = vec![(4, state, state.size())];
    if let Some((binding, buffer)) = other {
        storage.insert(0, (binding, buffer, buffer.size()));
    }
    let from = params.block(&mut *enc, 0);
    let group = launch.bind(ctx, &pipeline, from, &storage)?.clone();
    encode_pass(ctx, enc, entry, &pipeline, [(&group, grid)]);
    Ok(())
}

/// The buffers of the GPU-driven state a phase binds.
pub(crate) struct DrivenBuffers<'a> {
    pub(crate) ids: &'a wgpu::Buffer,
    pub(crate) slot_of: &'a wgpu::Buffer,
    pub(crate) state: &'a wgpu::Buffer,
    pub(crate) work: &'a wgpu::Buffer,
    /// The admission buffer (a placeholder without admission).
    pub(crate) adm: &'a wgpu::Buffer,
}

/// Encodes one phase (its params block the first of `params`), with `groups` workgroups (a
/// grid past the per-dimension limit).
pub(crate) fn encode<'a>(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    phase: Phase,
    b: &DrivenBuffers<'a>,
    groups: (u32, u32),
    launch: &mut Launch,
    params: ParamsSource<'_>,
) -> Result<()> {
    let pipeline = ctx.pipeline(phase.shader(), phase.entry(), COMMON)?;
    let from = params.block(&mut *enc, 0);
    let whole = |n: u32, buf: &'a wgpu::Buffer| (n, buf, buf.size());
    // (Each entry point's layout has only the bindings it uses; fixed arrays, so a pass
    // allocates nothing for them.)
    let find = [
        whole(1, b.ids),
        whole(2, b.slot_of),
        whole(3, b.state),
        whole(4, b.work),
        whole(5, b.adm),
    ];
    let sweep = [
        whole(1, b.slot_of),
        whole(2, b.state),
        whole(3, b.work),
        whole(4, b.adm),
    ];
    // (`ids` holds the slot list here)
    let touch = [whole(1, b.ids), whole(3, b.state), whole(4, b.work)];
    let storage = match phase {
        Phase::Find => &find[..],
        Phase::Touch => &touch[..],
        Phase::Tally => &sweep[1..3],
        Phase::Plan => &sweep[2..3],
        Phase::Evict => &sweep[..],
        Phase::Age => &sweep[3..],
        Phase::Forget => &sweep[2..],
    };
    let group = launch
        .bind::<DrivenParams>(ctx, &pipeline, from, storage)?
        .clone();
    encode_pass(ctx, enc, phase.entry(), &pipeline, [(&group, groups)]);
    Ok(())
}

/// Dispatches of the fetch: one per (group of [`FETCH_TABLES`] table shards, slot shard).
pub(crate) fn fetch_dispatches(table: &RowBuffer, slots: &RowBuffer) -> usize {
    table.shards().len().div_ceil(FETCH_TABLES) * slots.shards().len()
}

/// Encodes the fetch: one dispatch of `grid` per (group of table shards, slot shard), each
/// in a compute pass of its own (so nothing is collected per pass). `params` holds the
/// blocks of every (table shard, slot shard) pair, table shard major ([`fetch_params`]):
/// the dispatch of a group takes its first shard's block.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_fetch(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    table: &RowBuffer,
    slots: &RowBuffer,
    work: &wgpu::Buffer,
    grid: (u32, u32),
    launches: &mut [Launch],
    params: ParamsAt<'_>,
) -> Result<()> {
    let row_words = slots.layout().words_per_row();
    let pipeline = ctx.pipeline(&FETCH, "fetch", fetch_word(row_words).0)?;
    let (table_shards, slot_shards) = (table.shards().len(), slots.shards().len());
    let dispatches = (0..table_shards)
        .step_by(FETCH_TABLES)
        .flat_map(|first| slots.shards().enumerate().map(move |s| (first, s)));
    for ((first, (s, slot)), launch) in dispatches.zip(launches.iter_mut()) {
        // table0..table3 at bindings 2, 4, 5, 6; a short group repeats its last shard
        let last = (first + FETCH_TABLES).min(table_shards) - 1;
        let shard = |k: usize| {
            let t = table.shards().nth((first + k).min(last)).expect("a shard");
            (t, t.size())
        };
        let [t0, t1, t2, t3] = [0, 1, 2, 3].map(shard);
        let storage = [
            (1, work, work.size()),
            (2, t0.0, t0.1),
            (3, slot, slot.size()),
            (4, t1.0, t1.1),
            (5, t2.0, t2.1),
            (6, t3.0, t3.1),
        ];
        let from = params
            .nth(first * slot_shards + s)
            .from::<DrivenParams>(&mut *enc);
        let bound = launch.bind(ctx, &pipeline, from, &storage)?.clone();
        encode_pass(ctx, enc, "fetch", &pipeline, [(&bound, grid)]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_buffer_holds_header_block_lists_and_miss_lists() {
        for (capacity, blocks_want) in [(1usize, 1usize), (1024, 1), (1025, 2), (838_861, 820)] {
            assert_eq!(blocks(capacity), blocks_want, "{capacity}");
            let lists = HEADER_WORDS + 3 * blocks_want + 3 * capacity;
            assert_eq!(work_words(capacity, 0, None), lists);
            // 26 ranges: 27 boundaries and 26 64-bit counts
            assert_eq!(work_words(capacity, 26, None), lists + 27 + 52);
            // a training cache over 100 rows: 4 words of bits after them
            assert_eq!(work_words(capacity, 26, Some(100)), lists + 27 + 52 + 4);
            assert_eq!(written_at(capacity, 26), lists + 27 + 52);
        }
    }

    #[test]
    fn rows_move_as_vec4_words_when_they_are_whole_16_byte_units() {
        assert_eq!(fetch_word(128), (WORD_VEC4, 32));
        assert_eq!(fetch_word(4), (WORD_VEC4, 1));
        assert_eq!(fetch_word(3), (WORD_U32, 3));
        assert_eq!(fetch_word(66), (WORD_U32, 66));
    }

    #[test]
    fn params_blocks_are_16_byte_multiples() {
        // (each is copied into a uniform buffer from a 16-byte aligned staging offset)
        assert_eq!(PARAMS_BYTES % 16, 0);
    }

    #[test]
    fn a_fetch_binds_a_group_of_table_shards_and_writeback_one() {
        let Ok(ctx) = GpuContext::new() else {
            return;
        };
        // 10 rows of 4 floats in shards of 2 rows: 5 shards, the last 2 rows
        let options = crate::RowBufferOptions {
            max_shard_bytes: Some(2 * 16),
        };
        let table = RowBuffer::with_options(&ctx, 10, 4, options).unwrap();
        let slots = RowBuffer::new(&ctx, 6, 4).unwrap();
        assert_eq!(table.shards().len(), 5);
        assert_eq!(fetch_dispatches(&table, &slots), 2);
        let at = |t| fetch_params(DrivenParams::default(), 7, (&table, t), (0, 6));
        let f = at(0);
        let fields = |f: DrivenParams| (f.table_base, f.table_rows, f.shard_rows, f.group_rows);
        assert_eq!(fields(f), (0, 2, 2, 8), "shards 0-3");
        assert_eq!(fields(at(4)), (8, 2, 2, 2), "the short last group");
        assert_eq!(fields(at(3)), (6, 2, 2, 4), "write-back's shard 3");
        assert_eq!((f.groups_x, f.slot_base, f.slot_rows), (7, 0, 6));
        let base = DrivenParams {
            blocks: 3,
            words: 8,
            ..Default::default()
        };
        let f = fetch_params(base, 7, (&table, 1), (2, 4));
        assert_eq!((f.blocks, f.words), (3, 8), "the rest kept");
        assert_eq!((f.slot_base, f.slot_rows), (2, 4));
    }
}
