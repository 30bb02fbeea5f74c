//! [`TableBatchedCache`]: many tables served by one cache per row width, one call per step
//! (FBGEMM's table-batched embedding bags).

mod step;
mod tables;
mod tally;
mod train;

use std::sync::Arc;

use super::host_pool::{on_host_pool, wake_host_pool};
use super::products::RecordedBags;
use super::{CacheConfig, CacheMemory, CacheStats, Capacity, EmbeddingCache};
use crate::error::{HotrowError, Result};
use crate::gpu::{Embeddings, GpuContext};
use crate::ops::bag::{Pooling, TableOutput};
use crate::table::RowSource;
use step::WidthStep;
use tables::Tables;
use tally::SharedTally;

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
/// repeated across bags is uploaded once) and one pooling kernel over all its tables; every
/// width's pass and kernel go to the GPU in one submission.
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
    widths: Vec<Width<S>>,
    /// (width, position among the width's tables) of each table.
    place: Vec<(usize, usize)>,
    /// First output column (f32) of each table, and the output width.
    cols: Vec<usize>,
    width: usize,
    stats: Vec<TableStats>,
    /// Training steps taken (Adam's step count, shared by every width).
    steps: u64,
}

/// The tables of one row width and their cache.
struct Width<S: RowSource> {
    cache: EmbeddingCache<Tables<S>>,
    members: Vec<usize>,
    /// First global row of each member, then the total.
    bases: Vec<u64>,
    /// This width's part of the step being served.
    step: WidthStep,
    /// Its cache's uploads, by member.
    tally: SharedTally,
}

impl<S: RowSource> Width<S> {
    /// The pool of `members` (tables of one dim), its share of `config`'s capacity by its
    /// rows out of `all_rows`.
    fn new(
        ctx: &GpuContext,
        sources: &Arc<Vec<S>>,
        members: Vec<usize>,
        config: &CacheConfig,
        all_rows: u64,
        scalar: bool,
    ) -> Result<Self> {
        let d = sources[members[0]].dim();
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
        let share = |n: u64| (n as f64 * rows as f64 / all_rows as f64).ceil() as u64;
        let capacity = match config.capacity {
            // (Rounded up: a pool gets at least one slot of a non-zero capacity, and a zero
            // capacity stays zero, refused by the cache.)
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
        let mut cache = EmbeddingCache::build(
            ctx,
            source,
            config.clone().capacity(capacity),
            scalar,
            &mut |_, _| {},
        )?;
        let tally = SharedTally::new(bases.clone());
        cache.count_uploads_by_range(&bases, Box::new(tally.clone()))?;
        Ok(Self {
            cache,
            members,
            bases,
            step: WidthStep::default(),
            tally,
        })
    }
}

impl<S: RowSource> std::fmt::Debug for TableBatchedCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableBatchedCache")
            .field("tables", &self.sources.len())
            .field("widths", &self.widths.len())
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
        let mut pools = Vec::with_capacity(widths.len());
        let mut place = vec![(0, 0); dims.len()];
        for (g, &d) in widths.iter().enumerate() {
            let members: Vec<usize> = (0..dims.len()).filter(|&t| dims[t] == d).collect();
            for (k, &t) in members.iter().enumerate() {
                place[t] = (g, k);
            }
            pools.push(Width::new(
                ctx, &sources, members, &config, all_rows, scalar,
            )?);
        }
        Ok(Self {
            ctx: ctx.clone(),
            stats: vec![TableStats::default(); dims.len()],
            sources,
            widths: pools,
            place,
            cols,
            width,
            steps: 0,
        })
    }

    /// Pools every table's bags of one step into a new `B x width()` result (row `b`: each
    /// table's bag `b`, side by side in table order).
    pub fn lookup_bags(&mut self, batch: &[TableBags<'_>], pooling: Pooling) -> Result<Embeddings> {
        wake_host_pool();
        on_host_pool(|| {
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
        wake_host_pool();
        on_host_pool(|| {
            let bags = self.prepare(batch, pooling)?;
            self.ctx.check_same(out.context(), "output")?;
            self.run(batch, pooling, bags, out)
        })
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
        if self.widths.iter().any(|w| w.step.ids.is_empty()) {
            out.fill(0.0)?; // a width whose bags are all empty: its columns are zeros
        }
        let ctx = self.ctx.clone();
        ctx.guarded(|| self.run_widths(pooling, bags, out))?;
        for (t, part) in batch.iter().enumerate() {
            let s = &mut self.stats[t];
            s.steps += 1;
            s.bags += bags as u64;
            s.requests += part.ids.len() as u64;
        }
        Ok(())
    }

    /// Every width's pass resolved and its bags recorded, then all submitted. A width that
    /// fails (its row source, a limit) drops the widths recorded before it, which takes
    /// their held passes back, so a failed step changes nothing, as a failed call of one
    /// cache. (A width whose ids took several passes, more distinct rows than its pool
    /// holds, or whose slots are sharded, sent its passes to the GPU as they ran: those
    /// stand, as a single cache's finished passes do.)
    fn run_widths(&mut self, pooling: Pooling, bags: usize, out: &Embeddings) -> Result<()> {
        let (cols, width) = (&self.cols, self.width);
        let mut recorded: Vec<(RecordedBags<'_>, SharedTally)> = Vec::new();
        let mut result = Ok(());
        for w in self.widths.iter_mut() {
            let tally = w.tally.clone();
            match record_width(w, cols, width, pooling, bags, out) {
                Ok(Some(r)) => recorded.push((r, tally)),
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            // Taken back, the last recorded first.
            while let Some(r) = recorded.pop() {
                drop(r);
            }
        }
        // Every width in one submission; their uploads are counted by table on the pool's
        // other threads meanwhile (tens of thousands of ids a step).
        let (bags, tallies): (Vec<_>, Vec<_>) = recorded.into_iter().unzip();
        if bags.is_empty() {
            drop(bags);
        } else {
            let (sent, ()) = rayon::join(
                || RecordedBags::submit_all(bags),
                || {
                    for t in &tallies {
                        t.lock().count_logged();
                    }
                },
            );
            result = result.and(sent);
        }
        // Uploaded rows that stand, counted per table.
        for w in &self.widths {
            let mut tally = w.tally.lock();
            tally.count_logged();
            for (k, n) in tally.counts.iter_mut().enumerate() {
                self.stats[w.members[k]].rows_uploaded += std::mem::take(n);
            }
        }
        result
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

    /// Counters of table `t`. On the GPU-driven path the GPU counts each table's uploads:
    /// this then waits for the steps submitted so far and reads them back.
    pub fn table_stats(&self, t: usize) -> Option<TableStats> {
        let mut stats = self.stats.get(t)?.clone();
        let &(g, k) = self.place.get(t)?;
        if let Some(read) = self.widths[g].cache.uploads_by_range() {
            match read {
                Ok(counts) => stats.rows_uploaded += counts.get(k).copied().unwrap_or(0),
                Err(e) => log::warn!("hotrow: reading the GPU's upload counts failed: {e}"),
            }
        }
        Some(stats)
    }

    /// Counters over all tables (slot resolution counts distinct rows per pool and step).
    pub fn stats(&self) -> CacheStats {
        let mut all = CacheStats::default();
        for g in &self.widths {
            all += &g.cache.stats();
        }
        all
    }

    /// GPU memory held by all pools.
    pub fn memory(&self) -> CacheMemory {
        let mut m = CacheMemory::default();
        for g in &self.widths {
            let x = g.cache.memory();
            m.slots += x.slots;
            m.scratch += x.scratch;
            m.staging += x.staging;
            m.host_table += x.host_table;
            m.host_trained += x.host_trained;
        }
        m
    }

    /// Slots of all pools.
    pub fn capacity(&self) -> usize {
        self.widths.iter().map(|g| g.cache.capacity()).sum()
    }

    /// Rows of table `t` resident on the GPU now.
    pub fn resident(&self, t: usize) -> Option<usize> {
        let &(g, k) = self.place.get(t)?;
        let width = &self.widths[g];
        let (lo, hi) = (width.bases[k], width.bases[k + 1]);
        let resident = width.cache.resident_ids().unwrap_or_else(|e| {
            log::warn!("hotrow: reading the GPU's resident rows failed: {e}");
            Vec::new()
        });
        Some(
            resident
                .iter()
                .filter(|&&id| (lo..hi).contains(&(id as u64)))
                .count(),
        )
    }
}

/// One width's tables: their ids as the width's rows, their bags table-major (as
/// [`TableBatchedCache::prepare`] wrote them), resolved and recorded; `None` when every
/// bag of the width is empty (zeros, written by the caller).
fn record_width<'w, S: RowSource>(
    w: &'w mut Width<S>,
    cols: &[usize],
    width: usize,
    pooling: Pooling,
    bags: usize,
    out: &Embeddings,
) -> Result<Option<RecordedBags<'w>>> {
    let lanes = w.cache.layout().vector_width();
    let step = &mut w.step;
    step.cols.clear();
    step.cols
        .extend(w.members.iter().map(|&t| (cols[t] / lanes) as u32));
    if step.ids.is_empty() {
        return Ok(None);
    }
    let tables = TableOutput {
        per_table: bags,
        out_stride: (width / lanes) as u32,
        cols: &step.cols,
    };
    let weights = step.weighted.then_some(&step.weights[..]);
    w.cache
        .record_bags(
            &step.ids,
            &step.offsets,
            pooling,
            weights,
            out.buffer(),
            Some(tables),
        )
        .map(Some)
}
