//! [`TableBatchedCache`]: many tables served by one cache per row width, one call per step
//! (FBGEMM's table-batched embedding bags).

use std::sync::Arc;

use rayon::prelude::*;

use super::products::RecordedBags;
use super::{CacheConfig, CacheMemory, CacheStats, Capacity, EmbeddingCache};
use crate::batch::check_ids;
use crate::error::{HotrowError, Result};
use crate::gpu::{Embeddings, GpuContext};
use crate::ops::bag::{check_bags, Pooling, TableOutput};
use crate::table::{prefetching, MemoryRows, RowBytes, RowSource};

/// One table's part of a step: its ids, bag offsets (PyTorch's `embedding_bag`
/// convention, as [`EmbeddingCache::lookup_bags`]) and optional per-id weights.
#[derive(Clone, Copy, Debug)]
pub struct TableBags<'a> {
    /// Row ids of the table.
    pub ids: &'a [u32],
    /// Start of each bag in `ids` (one per sample; every table has the same number).
    pub offsets: &'a [u32],
    /// One weight per id (sum and mean pooling), or none.
    pub weights: Option<&'a [f32]>,
}

/// Counters of one table of a [`TableBatchedCache`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Steps served.
    pub steps: u64,
    /// Bags pooled.
    pub bags: u64,
    /// Ids requested (repeats included).
    pub requests: u64,
    /// Rows of this table uploaded to the GPU.
    pub rows_uploaded: u64,
}

/// Several tables (a recommender's categorical features) served by one GPU cache: the
/// tables' rows share one pool of slots (per row width; tables of one width compete for the
/// same slots, so hot rows of any table stay: on W6's 26 tables, one pool of 10% of all
/// rows kept 77.3% of each step's distinct rows resident, a pool of 10% per table 45.4%),
/// and one call pools every table's bags for a
/// step into one output of one row per sample, the tables' pooled rows side by side
/// (`B x (dim_0 + dim_1 + ...)`, as FBGEMM's table-batched embedding bags).
///
/// Per step and width there is one slot resolution (all that width's ids at once: a row
/// repeated across bags is uploaded once) and one pooling kernel over all its tables.
///
/// Bad input to any table is [`HotrowError::InTable`] naming the table (ids out of its
/// range, bad offsets, weights), found before any work; so is a table's row source that
/// fails or panics while the step reads it. Either way the step changes nothing: every
/// width's rows are resolved and read, and its bags recorded, before any width is
/// submitted, so the widths read before a failing one are taken back (rows, slots and
/// counters as they were). Only a width whose ids took several passes (more distinct rows
/// than its pool holds at once), or whose pool is split over several GPU buffers (larger
/// than one storage binding), sends its passes as they run, and keeps them, as a single
/// [`EmbeddingCache`] does.
///
/// ```no_run
/// # fn main() -> Result<(), hotrow::HotrowError> {
/// use hotrow::{CacheConfig, GpuContext, HostTable, Pooling, TableBags, TableBatchedCache};
/// let ctx = GpuContext::new()?;
/// let (a, b) = (vec![0.5f32; 1000 * 16], vec![0.25f32; 50 * 16]);
/// let tables = vec![HostTable::borrowed(&a, 16)?, HostTable::borrowed(&b, 16)?];
/// let mut cache = TableBatchedCache::new(&ctx, tables, CacheConfig::default())?;
/// // two samples: table 0 bags [3, 7] and [9], table 1 bags [] and [4, 4]
/// let out = cache.lookup_bags(
///     &[
///         TableBags { ids: &[3, 7, 9], offsets: &[0, 2], weights: None },
///         TableBags { ids: &[4, 4], offsets: &[0, 0], weights: None },
///     ],
///     Pooling::Sum,
/// )?;
/// assert_eq!((out.rows(), out.dim()), (2, 32));
/// # Ok(()) }
/// ```
pub struct TableBatchedCache<S: RowSource> {
    ctx: GpuContext,
    sources: Arc<Vec<S>>,
    groups: Vec<Group<S>>,
    /// (group, position in the group) of each table.
    place: Vec<(usize, usize)>,
    /// First output column (f32) of each table, and the output width.
    cols: Vec<usize>,
    width: usize,
    stats: Vec<TableStats>,
}

/// The tables of one row width and their cache.
struct Group<S: RowSource> {
    cache: EmbeddingCache<Tables<S>>,
    members: Vec<usize>,
    /// First global row of each member, then the total.
    bases: Vec<u64>,
    /// This width's part of the step being served.
    step: GroupStep,
}

/// One width's part of a step, table-major, written while the step is checked and reused
/// across steps: the members' ids numbered as the group's rows, their bag offsets (each
/// member's moved past the ids before it) and, when any member has weights, every id's
/// weight (1 for members without).
#[derive(Default)]
struct GroupStep {
    ids: Vec<u32>,
    offsets: Vec<u32>,
    weights: Vec<f32>,
    weighted: bool,
    cols: Vec<u32>,
}

/// One table's share of a step: where [`TableBatchedCache::prepare`] checks it and writes
/// it into its width's [`GroupStep`].
struct TableTask<'a, 'b> {
    part: &'a TableBags<'b>,
    rows: usize,
    base: u32,
    start: u32,
    ids: &'a mut [u32],
    offsets: &'a mut [u32],
    weights: Option<&'a mut [f32]>,
}

impl<S: RowSource> std::fmt::Debug for TableBatchedCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableBatchedCache")
            .field("tables", &self.sources.len())
            .field("widths", &self.groups.len())
            .field("output width", &self.width)
            .finish()
    }
}

impl<S: RowSource> TableBatchedCache<S> {
    /// Serves `tables` (at least one). Tables of one width share one pool of slots;
    /// `config.capacity` is per pool (a fraction of its tables' rows, or rows / bytes
    /// split between pools by their rows). Errors as [`EmbeddingCache::new`],
    /// [`HotrowError::InTable`] naming a table without rows or of dim 0, and
    /// [`HotrowError::ExceedsLimit`] when one width's tables hold more than `u32::MAX` rows.
    pub fn new(ctx: &GpuContext, tables: Vec<S>, config: CacheConfig) -> Result<Self> {
        if tables.is_empty() {
            return Err(HotrowError::InvalidArgument(
                "a table-batched cache needs at least one table".into(),
            ));
        }
        // (Each table checked by itself, so the error names it; an empty table could serve
        // no id, and was certainly not meant.)
        for (table, t) in tables.iter().enumerate() {
            let (rows, dim) = (t.rows(), t.dim());
            if rows == 0 || dim == 0 {
                return Err(HotrowError::InTable {
                    table,
                    source: Box::new(HotrowError::InvalidArgument(format!(
                        "row source must have rows and dim >= 1 (got {rows} x {dim})"
                    ))),
                });
            }
        }
        let sources = Arc::new(tables);
        let dims: Vec<usize> = sources.iter().map(|t| t.dim()).collect();
        // Output columns of the tables, side by side; kernels write whole vec4s only when
        // every table's columns stay 4-aligned.
        let mut cols = Vec::with_capacity(dims.len());
        let mut width = 0;
        for &d in &dims {
            cols.push(width);
            width += d;
        }
        let scalar = dims.iter().any(|d| !d.is_multiple_of(4));
        let all_rows: u64 = sources.iter().map(|t| t.rows() as u64).sum();
        let mut widths: Vec<usize> = Vec::new();
        for &d in &dims {
            if !widths.contains(&d) {
                widths.push(d);
            }
        }
        let mut groups = Vec::with_capacity(widths.len());
        let mut place = vec![(0, 0); dims.len()];
        for (g, &d) in widths.iter().enumerate() {
            let members: Vec<usize> = (0..dims.len()).filter(|&t| dims[t] == d).collect();
            let mut bases = vec![0u64];
            for &t in &members {
                bases.push(bases.last().copied().unwrap_or(0) + sources[t].rows() as u64);
            }
            let rows = *bases.last().unwrap_or(&0);
            if rows > u32::MAX as u64 {
                return Err(HotrowError::ExceedsLimit {
                    what: "rows of the tables of one width (ids are u32)",
                    bytes: rows * d as u64 * 4,
                    limit_name: "u32::MAX rows",
                    limit: u32::MAX as u64,
                });
            }
            for (k, &t) in members.iter().enumerate() {
                place[t] = (g, k);
            }
            let share = |n: u64| (n as f64 * rows as f64 / all_rows as f64).ceil() as u64;
            let capacity = match config.capacity {
                // (Rounded up: a pool gets at least one slot of a non-zero capacity, and a
                // zero capacity stays zero, refused by the cache.)
                Capacity::Rows(n) => Capacity::Rows(share(n as u64) as usize),
                Capacity::Bytes(b) => Capacity::Bytes(share(b)),
                f @ Capacity::Fraction(_) => f,
            };
            let source = Tables {
                sources: sources.clone(),
                members: members.clone(),
                bases: bases.clone(),
                dim: d,
            };
            let mut cache =
                EmbeddingCache::build(ctx, source, config.clone().capacity(capacity), scalar)?;
            cache.engine.uploads = Some(UploadTally::new(bases.clone()));
            groups.push(Group {
                cache,
                members,
                bases,
                step: GroupStep::default(),
            });
        }
        Ok(Self {
            ctx: ctx.clone(),
            stats: vec![TableStats::default(); dims.len()],
            sources,
            groups,
            place,
            cols,
            width,
        })
    }

    /// Pools every table's bags of one step into a new `B x width()` result (row `b`: each
    /// table's bag `b`, side by side in table order).
    pub fn lookup_bags(&mut self, batch: &[TableBags<'_>], pooling: Pooling) -> Result<Embeddings> {
        super::wake_host_pool();
        super::on_host_pool(|| {
            let bags = self.prepare(batch, pooling)?;
            let mut out = Embeddings::new(&self.ctx, bags, self.width)?;
            self.run(batch, pooling, bags, &mut out)?;
            Ok(out)
        })
    }

    /// Like [`TableBatchedCache::lookup_bags`], writing into `out` (grown when too small;
    /// it must come from this cache's context). After a failure (a row source's error) its
    /// contents are unspecified.
    pub fn lookup_bags_into(
        &mut self,
        batch: &[TableBags<'_>],
        pooling: Pooling,
        out: &mut Embeddings,
    ) -> Result<()> {
        super::wake_host_pool();
        super::on_host_pool(|| {
            let bags = self.prepare(batch, pooling)?;
            self.ctx.check_same(out.context(), "output")?;
            self.run(batch, pooling, bags, out)
        })
    }

    /// Checks a step's input and writes each width's part of it ([`GroupStep`]); returns
    /// the bags per table. Each table is checked and written by one task, all in parallel
    /// (a W6 step holds 426,000 ids): one pass over the pool instead of a check and then a
    /// numbering. The error reported is the first bad table's, as a serial check would
    /// give; after one, the steps' buffers hold garbage no later step reads.
    fn prepare(&mut self, batch: &[TableBags<'_>], pooling: Pooling) -> Result<usize> {
        if batch.len() != self.sources.len() {
            return Err(HotrowError::LengthMismatch {
                what: "tables in the step",
                expected: self.sources.len(),
                got: batch.len(),
            });
        }
        let bags = batch[0].offsets.len();
        let mut tasks: Vec<Option<TableTask<'_, '_>>> = batch.iter().map(|_| None).collect();
        for g in &mut self.groups {
            let step = &mut g.step;
            step.weighted = g.members.iter().any(|&t| batch[t].weights.is_some());
            let total: usize = g.members.iter().map(|&t| batch[t].ids.len()).sum();
            // (Resized, not cleared: every position is written by a task, and refilling a
            // cleared vector would zero megabytes on one thread first.)
            step.ids.resize(total, 0);
            step.offsets.resize(g.members.len() * bags, 0);
            step.weights
                .resize(if step.weighted { total } else { 0 }, 0.0);
            let (mut ids, mut offsets) = (&mut step.ids[..], &mut step.offsets[..]);
            let mut weights = step.weighted.then_some(&mut step.weights[..]);
            let mut start = 0;
            for (k, &t) in g.members.iter().enumerate() {
                let n = batch[t].ids.len();
                let (mine, rest) = std::mem::take(&mut ids).split_at_mut(n);
                ids = rest;
                let (my_offsets, rest) = std::mem::take(&mut offsets).split_at_mut(bags);
                offsets = rest;
                let my_weights = match weights.take() {
                    Some(w) => {
                        let (mine, rest) = w.split_at_mut(n);
                        weights = Some(rest);
                        Some(mine)
                    }
                    None => None,
                };
                tasks[t] = Some(TableTask {
                    part: &batch[t],
                    rows: self.sources[t].rows(),
                    base: g.bases[k] as u32,
                    start: start as u32,
                    ids: mine,
                    offsets: my_offsets,
                    weights: my_weights,
                });
                start += n;
            }
        }
        let checked: Vec<Result<()>> = tasks
            .into_par_iter()
            .enumerate()
            .map(|(t, task)| {
                let task = task.expect("every table belongs to one width");
                Self::prepare_table(task, bags, pooling).map_err(|source| HotrowError::InTable {
                    table: t,
                    source: Box::new(source),
                })
            })
            .collect();
        checked.into_iter().collect::<Result<()>>()?;
        // A width's bags go to the kernel in one binding: its tables' offsets, the end of
        // the last bag, their weights (if any table has some) and their output columns.
        for g in &self.groups {
            let step = &g.step;
            let weights = if step.weighted { step.ids.len() } else { 0 };
            let words = g.members.len() * (bags + 1) + weights + 1;
            let bytes = words as u64 * 4;
            let limit = self.ctx.max_binding();
            if bytes > limit {
                return Err(HotrowError::ExceedsLimit {
                    what: "bag offsets and weights of one width's tables (split the step)",
                    bytes,
                    limit_name: "max_storage_buffer_binding_size",
                    limit,
                });
            }
        }
        Ok(bags)
    }

    /// Checks one table's share of a step, then writes it (see [`TableTask`]).
    fn prepare_table(task: TableTask<'_, '_>, bags: usize, pooling: Pooling) -> Result<()> {
        let part = task.part;
        if part.offsets.len() != bags {
            return Err(HotrowError::LengthMismatch {
                what: "bags (every table has one per sample)",
                expected: bags,
                got: part.offsets.len(),
            });
        }
        check_ids(part.ids, task.rows)?;
        check_bags(part.ids.len(), part.offsets, pooling, part.weights)?;
        for (dst, &id) in task.ids.iter_mut().zip(part.ids) {
            *dst = task.base + id;
        }
        for (dst, &o) in task.offsets.iter_mut().zip(part.offsets) {
            *dst = task.start + o;
        }
        if let Some(w) = task.weights {
            match part.weights {
                Some(given) => w.copy_from_slice(given),
                None => w.fill(1.0),
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        batch: &[TableBags<'_>],
        pooling: Pooling,
        bags: usize,
        out: &mut Embeddings,
    ) -> Result<()> {
        out.reset_for(&self.ctx, bags, self.width)?;
        if bags == 0 {
            return Ok(());
        }
        if self.groups.iter().any(|g| g.step.ids.is_empty()) {
            out.fill(0.0)?; // a width whose bags are all empty: its columns are zeros
        }
        let ctx = self.ctx.clone();
        ctx.guarded(|| self.run_groups(pooling, bags, out))?;
        for (t, part) in batch.iter().enumerate() {
            let s = &mut self.stats[t];
            s.steps += 1;
            s.bags += bags as u64;
            s.requests += part.ids.len() as u64;
        }
        Ok(())
    }

    /// Every width's pass resolved and its bags recorded, then all submitted. A width that
    /// fails (its row source, a limit) takes back the widths recorded before it (their
    /// passes were held: `PassEngine::abandon_held`), so a failed step changes
    /// nothing, as a failed call of one cache. (A width whose ids took several passes, more
    /// distinct rows than its pool holds, or whose slots are sharded, sent its passes to the
    /// GPU as they ran: those stand, as a single cache's finished passes do.)
    fn run_groups(&mut self, pooling: Pooling, bags: usize, out: &Embeddings) -> Result<()> {
        let mut recorded = Vec::with_capacity(self.groups.len());
        let mut failed = None;
        for g in 0..self.groups.len() {
            let before = self.groups[g].cache.stats().clone();
            match self.record_group(g, pooling, bags, out) {
                Ok(Some(r)) => recorded.push((g, before, r)),
                Ok(None) => {}
                Err(e) => {
                    // Its own pass, if held (its bags failed to record).
                    self.groups[g].cache.engine.abandon_held(&before);
                    failed = Some(e);
                    break;
                }
            }
        }
        let result = match failed {
            Some(e) => {
                // (The recorded bags are dropped unsubmitted: their staging entry, never
                // submitted, is replaced at its next use.)
                for (g, before, _) in recorded.drain(..).rev() {
                    self.groups[g].cache.engine.abandon_held(&before);
                }
                Err(e)
            }
            None => recorded
                .drain(..)
                .try_for_each(|(g, _, r)| self.groups[g].cache.submit_bags(r)),
        };
        // Uploaded rows that stand, counted per table (mostly counted already, while the
        // bags were submitted).
        for group in &mut self.groups {
            if let Some(tally) = group.cache.engine.uploads.as_mut() {
                tally.count_logged();
                for (k, n) in tally.counts.iter_mut().enumerate() {
                    self.stats[group.members[k]].rows_uploaded += std::mem::take(n);
                }
            }
        }
        result
    }

    /// One width's tables: their ids as the group's rows, their bags table-major (as
    /// [`TableBatchedCache::prepare`] wrote them), resolved and recorded; `None` when every
    /// bag of the width is empty (zeros, written by the caller).
    fn record_group(
        &mut self,
        g: usize,
        pooling: Pooling,
        bags: usize,
        out: &Embeddings,
    ) -> Result<Option<RecordedBags>> {
        let group = &mut self.groups[g];
        let lanes = group.cache.layout().vector_width();
        let sc = &mut group.step;
        sc.cols.clear();
        sc.cols
            .extend(group.members.iter().map(|&t| (self.cols[t] / lanes) as u32));
        if sc.ids.is_empty() {
            return Ok(None);
        }
        let tables = TableOutput {
            per_table: bags,
            out_stride: (self.width / lanes) as u32,
            cols: &sc.cols,
        };
        let weights = sc.weighted.then_some(&sc.weights[..]);
        group
            .cache
            .record_bags(
                &sc.ids,
                &sc.offsets,
                pooling,
                weights,
                out.buffer(),
                Some(tables),
            )
            .map(Some)
    }

    /// Number of tables.
    pub fn tables(&self) -> usize {
        self.sources.len()
    }

    /// The tables.
    pub fn sources(&self) -> &[S] {
        &self.sources
    }

    /// Width of a step's output rows (the sum of the tables' dims).
    pub fn width(&self) -> usize {
        self.width
    }

    /// First output column of table `t`'s pooled rows.
    pub fn column(&self, t: usize) -> Option<usize> {
        self.cols.get(t).copied()
    }

    /// Counters of table `t`.
    pub fn table_stats(&self, t: usize) -> Option<&TableStats> {
        self.stats.get(t)
    }

    /// Counters over all tables (slot resolution counts distinct rows per pool and step).
    pub fn stats(&self) -> CacheStats {
        let mut all = CacheStats::default();
        for g in &self.groups {
            all += g.cache.stats();
        }
        all
    }

    /// GPU memory held by all pools.
    pub fn memory(&self) -> CacheMemory {
        let mut m = CacheMemory::default();
        for g in &self.groups {
            let x = g.cache.memory();
            m.slots += x.slots;
            m.scratch += x.scratch;
            m.staging += x.staging;
        }
        m
    }

    /// Slots of all pools.
    pub fn capacity(&self) -> usize {
        self.groups.iter().map(|g| g.cache.capacity()).sum()
    }

    /// Rows of table `t` resident on the GPU now.
    pub fn resident(&self, t: usize) -> Option<usize> {
        let &(g, k) = self.place.get(t)?;
        let group = &self.groups[g];
        let (lo, hi) = (group.bases[k], group.bases[k + 1]);
        Some(
            group
                .cache
                .slot_map()
                .resident()
                .iter()
                .filter(|&&id| (lo..hi).contains(&(id as u64)))
                .count(),
        )
    }
}

/// The tables of one width as one row source: global row `bases[k] + i` is row `i` of
/// member `k`.
struct Tables<S> {
    sources: Arc<Vec<S>>,
    members: Vec<usize>,
    bases: Vec<u64>,
    dim: usize,
}

/// The member holding global row `id` of tables numbered from `bases` (`bases[k]` is
/// member `k`'s first row; the last entry is the total, above every id): the count of
/// inner bases at or below the id, without branches (tens of thousands per step).
fn member_of(bases: &[u64], id: u32) -> usize {
    bases[1..bases.len() - 1]
        .iter()
        .map(|&b| usize::from(b <= id as u64))
        .sum()
}

/// Rows uploaded by a pool of several tables, by table: the engine logs the id of every row
/// a pass uploaded; [`UploadTally::count_logged`] counts them by member (tens of thousands
/// a step, in parallel chunks) while the step's bags are submitted.
pub(crate) struct UploadTally {
    /// As [`Tables`]' `bases`.
    bases: Vec<u64>,
    logged: Vec<u32>,
    /// Rows uploaded per member since the caller last took them.
    pub(crate) counts: Vec<u64>,
}

impl UploadTally {
    pub(crate) fn new(bases: Vec<u64>) -> Self {
        let members = bases.len().saturating_sub(1);
        Self {
            bases,
            logged: Vec::new(),
            counts: vec![0; members],
        }
    }

    /// Logs a pass's uploaded rows (`(id, slot)`).
    pub(crate) fn log(&mut self, misses: &[(u32, u32)]) {
        self.logged.extend(misses.iter().map(|&(id, _)| id));
    }

    /// Forgets the last `n` logged ids (their pass was taken back).
    pub(crate) fn unlog(&mut self, n: usize) {
        self.logged.truncate(self.logged.len().saturating_sub(n));
    }

    /// Adds the logged ids to `counts`, by member, and empties the log.
    pub(crate) fn count_logged(&mut self) {
        let bases = &self.bases;
        let tally = || vec![0u64; bases.len() - 1];
        let counts = self
            .logged
            .par_chunks(1024)
            .fold(tally, |mut counts, ids| {
                for &id in ids {
                    counts[member_of(bases, id)] += 1;
                }
                counts
            })
            .reduce(tally, |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            });
        self.counts
            .iter_mut()
            .zip(&counts)
            .for_each(|(a, b)| *a += b);
        self.logged.clear();
    }
}

/// Ids per task of [`Tables::read_rows`]. A device-resolved W6 step has each of 64
/// slot-map partitions read its ~500 missed rows as it resolves: split in tasks of this
/// size, the last partitions' copies spread over the threads that are done instead of
/// finishing on one.
const IDS_PER_TASK: usize = 128;

impl<S: RowSource> Tables<S> {
    /// Each id's member and row in that member (in parallel for many: the serial copy of
    /// a first pass reads every row it loads in one call).
    fn locate(&self, ids: &[u32]) -> Vec<(u32, u32)> {
        let place = |&id: &u32| {
            let k = member_of(&self.bases, id);
            (k as u32, (id as u64 - self.bases[k]) as u32)
        };
        if ids.len() >= 8 * IDS_PER_TASK {
            ids.par_iter().map(place).collect()
        } else {
            ids.iter().map(place).collect()
        }
    }

    /// The rows in memory ([`RowSource::memory_rows`]) of every member that `rows` (from
    /// [`Tables::locate`]) reads, or `None` if one of them does not hold its rows there.
    /// Members not read are not asked: a table whose file changed fails only the steps
    /// that read it.
    fn memory_members(&self, rows: &[(u32, u32)]) -> Result<Option<Vec<Option<RowBytes<'_>>>>> {
        let mut read = vec![false; self.members.len()];
        for &(k, _) in rows {
            read[k as usize] = true;
        }
        let mut members = vec![None; self.members.len()];
        for (k, _) in read.iter().enumerate().filter(|(_, &r)| r) {
            match self.member_call(k, |source| source.memory_rows())? {
                Some(MemoryRows(rows)) => members[k] = Some(rows),
                None => return Ok(None),
            }
        }
        Ok(Some(members))
    }

    /// Reads the rows `rows` (from [`Tables::locate`]) into `out` from the members' rows
    /// in memory, in the ids' order: no sort, no per-table call, and the prefetches run
    /// ahead across tables (a partition's few hundred missed rows of a W6 step spread over
    /// 26 tables, a few each, too few for a per-table loop to prefetch ahead). The ids'
    /// tables and rows are found first, in a loop of their own: the copy loop then stays
    /// short enough for the core to keep several rows' misses in flight (a 2-core Zen 4 dev
    /// box, W6's tables: 110-120 ns a row, against 240-300 with the lookup inside the copy
    /// loop and 135 for one `read_rows` per table).
    fn read_across(&self, members: &[Option<RowBytes<'_>>], rows: &[(u32, u32)], out: &mut [f32]) {
        let member = |k: u32| {
            members[k as usize]
                .as_ref()
                .expect("a member read is in memory")
        };
        let ahead = members
            .iter()
            .flatten()
            .map(RowBytes::rows_ahead)
            .min()
            .unwrap_or(2);
        prefetching(
            rows,
            out.chunks_exact_mut(self.dim),
            ahead,
            |(k, row)| member(k).prefetch_row(row as usize),
            |(k, row), dst| {
                let m = member(k);
                m.convert(m.row(row as usize), dst)
            },
        );
    }

    /// A call into member `k`'s source; its failure or panic named by the table
    /// ([`HotrowError::InTable`]: with 26 tables, which one failed is the first question).
    fn member_call<'s, R>(&'s self, k: usize, call: impl FnOnce(&'s S) -> Result<R>) -> Result<R> {
        let table = self.members[k];
        super::pass::caught(|| call(&self.sources[table])).map_err(|source| HotrowError::InTable {
            table,
            source: Box::new(source),
        })
    }

    /// Reads the rows `rows` (from [`Tables::locate`]) into `out`: sorted by table, one
    /// `read_rows` per table.
    fn read_chunk(&self, rows: &[(u32, u32)], out: &mut [f32]) -> Result<()> {
        let dim = self.dim;
        let mut order: Vec<(usize, u32, usize)> = rows
            .iter()
            .enumerate()
            .map(|(pos, &(k, row))| (k as usize, row, pos))
            .collect();
        order.sort_unstable_by_key(|e| e.0);
        let mut local = Vec::new();
        let mut values = Vec::new();
        for run in order.chunk_by(|a, b| a.0 == b.0) {
            local.clear();
            local.extend(run.iter().map(|e| e.1));
            values.clear();
            values.resize(run.len() * dim, 0.0);
            self.member_call(run[0].0, |source| source.read_rows(&local, &mut values))?;
            for (e, row) in run.iter().zip(values.chunks_exact(dim)) {
                out[e.2 * dim..(e.2 + 1) * dim].copy_from_slice(row);
            }
        }
        Ok(())
    }
}

impl<S: RowSource> RowSource for Tables<S> {
    fn rows(&self) -> usize {
        *self.bases.last().unwrap_or(&0) as usize
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        if out.len() != ids.len() * self.dim {
            return Err(HotrowError::LengthMismatch {
                what: "read_rows destination",
                expected: ids.len() * self.dim,
                got: out.len(),
            });
        }
        check_ids(ids, self.rows())?;
        // Tables all in memory: every row read in one loop, in the ids' order.
        let rows = self.locate(ids);
        if let Some(members) = self.memory_members(&rows)? {
            if ids.len() <= IDS_PER_TASK {
                self.read_across(&members, &rows, out);
            } else {
                rows.par_chunks(IDS_PER_TASK)
                    .zip(out.par_chunks_mut(IDS_PER_TASK * self.dim))
                    .for_each(|(rows, out)| self.read_across(&members, rows, out));
            }
            return Ok(());
        }
        // A remote table is read in one call per table (each call is a round trip).
        if ids.len() <= IDS_PER_TASK || self.remote() {
            return self.read_chunk(&rows, out);
        }
        rows.par_chunks(IDS_PER_TASK)
            .zip(out.par_chunks_mut(IDS_PER_TASK * self.dim))
            .try_for_each(|(rows, out)| self.read_chunk(rows, out))
    }

    fn remote(&self) -> bool {
        self.sources.iter().any(RowSource::remote)
    }
}
