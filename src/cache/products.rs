//! The ops over the cache: pooled bags, scores and combinations. Each checks its input,
//! resolves its ids through the pass engine, then launches its kernel over the plain rows
//! view the engine returns.

use super::engine::{submit_together, OpRows};
use super::host_pool::guarded_on_host_pool;
use super::EmbeddingCache;
use crate::batch::{check_finite, check_ids};
use crate::error::{HotrowError, Result};
use crate::gpu::{encoder, Embeddings, StagingEntry};
use crate::ops::bag::{self, check_bags, Pooling, TableOutput};
use crate::ops::matmul::{self, Left, Product};
use crate::ops::update::Produced;
use crate::table::RowSource;

/// Queries for [`EmbeddingCache::scores`]: rows of the table's width, on the host or
/// already on the GPU (e.g. the output of an earlier op or of the caller's own pipeline).
#[derive(Clone, Copy, Debug)]
pub enum Queries<'a> {
    /// Row-major host values, `dim` per query.
    Host {
        /// The values.
        data: &'a [f32],
        /// Values per query (must equal the table's dim).
        dim: usize,
    },
    /// Rows already on the GPU (made on the cache's context).
    Gpu(&'a Embeddings),
}

/// An op's bags recorded over the rows of their batch (and the pass held for them):
/// nothing of either has reached the GPU yet. Submitted with [`RecordedBags::submit`];
/// dropped, the held pass is taken back.
pub(crate) struct RecordedBags<'e> {
    rows: OpRows<'e>,
    commands: wgpu::CommandBuffer,
    entry: StagingEntry,
}

impl RecordedBags<'_> {
    /// Submits the held pass and the bags in one submission.
    pub(crate) fn submit(self) -> Result<()> {
        self.rows.submit(self.commands, self.entry).map(drop)
    }

    /// Submits every recorded op's held pass and bags (caches of one context) in one
    /// submission.
    pub(crate) fn submit_all(all: Vec<Self>) -> Result<()> {
        submit_together(
            all.into_iter()
                .map(|r| (r.rows, r.commands, r.entry))
                .collect(),
        )
        .map(drop)
    }
}

/// The left operand of a product: host values to upload, or rows already on the GPU.
enum Operand<'a> {
    Host(&'a [f32]),
    Gpu(&'a Embeddings),
}

impl<'a> From<Queries<'a>> for Operand<'a> {
    fn from(q: Queries<'a>) -> Self {
        match q {
            Queries::Host { data, .. } => Operand::Host(data),
            Queries::Gpu(rows) => Operand::Gpu(rows),
        }
    }
}

impl<S: RowSource> EmbeddingCache<S> {
    /// Pooled bags: row `b` of the result pools the rows of `ids[offsets[b]..offsets[b+1]]`
    /// (the last bag ends at `ids.len()`, as in PyTorch's `embedding_bag`), optionally
    /// weighted per id (sum and mean only). Empty bags give zeros. The ids go through the
    /// same slot resolution as [`EmbeddingCache::lookup`]: a row repeated inside or across
    /// bags is uploaded at most once, and the kernel reads rows straight from their slots.
    ///
    /// Errors, raised before any work: an id out of range, offsets not starting at 0,
    /// decreasing, or past the ids, ids left outside every bag, weights of the wrong length
    /// or not finite, weights with [`Pooling::Max`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{CacheConfig, EmbeddingCache, GpuContext, HostTable, Pooling};
    /// let ctx = GpuContext::new()?;
    /// let data: Vec<f32> = (0..1000 * 8).map(|i| (i as f32).cos()).collect();
    /// let mut cache = EmbeddingCache::new(&ctx, HostTable::borrowed(&data, 8)?, CacheConfig::default())?;
    /// // bags [3, 5], [], [7]
    /// let pooled = cache.lookup_bags(&[3, 5, 7], &[0, 2, 2], Pooling::Sum, Some(&[0.5, 2.0, 1.0]))?;
    /// assert_eq!(pooled.rows(), 3);
    /// # Ok(()) }
    /// ```
    pub fn lookup_bags(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
    ) -> Result<Embeddings> {
        self.check_bags(ids, offsets, pooling, weights)?;
        let mut out = Embeddings::new(&self.ctx, offsets.len(), self.dim())?;
        self.bags_checked(ids, offsets, pooling, weights, &mut out)?;
        Ok(out)
    }

    /// Like [`EmbeddingCache::lookup_bags`], writing into `out` (grown when too small; it
    /// must come from this cache's context).
    pub fn lookup_bags_into(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
        out: &mut Embeddings,
    ) -> Result<()> {
        self.check_bags(ids, offsets, pooling, weights)?;
        self.bags_checked(ids, offsets, pooling, weights, out)
    }

    pub(crate) fn check_bags(
        &self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
    ) -> Result<()> {
        check_ids(ids, self.rows())?;
        check_bags(ids.len(), offsets, pooling, weights)?;
        // Offsets and weights travel in one binding.
        let bytes = (offsets.len() + 1 + weights.map_or(0, |w| w.len())) as u64 * 4;
        self.check_binding("bag offsets and weights (split the batch)", bytes)
    }

    /// [`HotrowError::ExceedsLimit`] when `bytes` do not fit one storage binding.
    pub(super) fn check_binding(&self, what: &'static str, bytes: u64) -> Result<()> {
        let limit = self.ctx.max_binding();
        if bytes > limit {
            return Err(HotrowError::ExceedsLimit {
                what,
                bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit,
            });
        }
        Ok(())
    }

    fn bags_checked(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
        out: &mut Embeddings,
    ) -> Result<()> {
        let ctx = self.ctx.clone();
        guarded_on_host_pool(&ctx, || {
            out.reset_for(&self.ctx, offsets.len(), self.dim())?;
            if offsets.is_empty() {
                return Ok(());
            }
            if ids.is_empty() {
                return out.fill(0.0); // every bag is empty
            }
            // Submitted with the pass that loaded the rows; if the bags fail to record (a
            // limit, the memory budget), the pass is taken back and the call changes nothing.
            let produced = Produced::Bags {
                offsets,
                pooling,
                weights,
                tables: None,
            };
            let out = out.buffer();
            self.forward_grouping_ahead(ids, produced, |c| {
                c.record_bags(ids, offsets, pooling, weights, out, None)?
                    .submit()
            })
        })
    }

    /// Resolves checked, non-empty `ids` (their pass held for the bags) and records the
    /// bags over them into `out` (of this context, sized by the caller; with `tables`, a
    /// table-batched width's bags, table-major, each landing at its table's columns of its
    /// sample's row). Nothing reaches the GPU before [`RecordedBags::submit`]: a
    /// table-batched step records every width before submitting any.
    pub(crate) fn record_bags(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
        out: &wgpu::Buffer,
        tables: Option<TableOutput<'_>>,
    ) -> Result<RecordedBags<'_>> {
        let Self {
            ctx,
            source,
            engine,
            bag_launch,
            ..
        } = self;
        let rows = engine.rows_for_op(source, ids)?;
        let mut enc = encoder(ctx, "hotrow bags");
        let staged = bag::encode(
            ctx,
            &mut enc,
            bag_launch,
            &rows.view(),
            ids.len(),
            offsets,
            pooling,
            weights,
            out,
            tables,
        )?;
        Ok(RecordedBags {
            rows,
            commands: enc.finish(),
            entry: staged.entry,
        })
    }

    /// Scores of every query against every candidate: `out[i][j] = <queries[i], E[cand[j]]>`,
    /// an `m x cand.len()` result on the GPU (retrieval, sampled softmax). Reads only the
    /// candidates' rows, through their cache slots, tiled in workgroup memory.
    ///
    /// Errors: query dim different from the table's (0 included), host query data not a
    /// multiple of dim, non-finite host queries, GPU queries of another context, an empty
    /// candidate set, a candidate out of range.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{CacheConfig, EmbeddingCache, GpuContext, HostTable, Queries};
    /// let ctx = GpuContext::new()?;
    /// let data: Vec<f32> = (0..1000 * 4).map(|i| (i as f32).sin()).collect();
    /// let mut cache = EmbeddingCache::new(&ctx, HostTable::borrowed(&data, 4)?, CacheConfig::default())?;
    /// let q = [0.1f32, 0.2, 0.3, 0.4, 1.0, 0.0, 0.0, -1.0]; // two queries
    /// let s = cache.scores(Queries::Host { data: &q, dim: 4 }, &[10, 999, 42])?;
    /// assert_eq!((s.rows(), s.dim()), (2, 3));
    /// # Ok(()) }
    /// ```
    pub fn scores(&mut self, queries: Queries<'_>, cand: &[u32]) -> Result<Embeddings> {
        let m = self.check_scores(queries, cand)?;
        let mut out = Embeddings::new(&self.ctx, m, cand.len())?;
        self.product_checked(Product::Scores, queries.into(), m, cand, &mut out)?;
        Ok(out)
    }

    /// Like [`EmbeddingCache::scores`], writing into `out` (grown when too small; it must
    /// come from this cache's context).
    pub fn scores_into(
        &mut self,
        queries: Queries<'_>,
        cand: &[u32],
        out: &mut Embeddings,
    ) -> Result<()> {
        let m = self.check_scores(queries, cand)?;
        self.product_checked(Product::Scores, queries.into(), m, cand, out)
    }

    /// Checks the input of a scores call; returns the number of queries.
    pub(crate) fn check_scores(&self, queries: Queries<'_>, cand: &[u32]) -> Result<usize> {
        let dim = self.dim();
        let (m, qdim) = match queries {
            Queries::Host { data, dim: qd } => (data.len() / qd.max(1), qd),
            Queries::Gpu(e) => {
                self.ctx.check_same(e.context(), "GPU queries")?;
                (e.rows(), e.dim())
            }
        };
        if qdim != dim {
            return Err(HotrowError::DimMismatch {
                what: "queries",
                expected: dim,
                got: qdim,
            });
        }
        if let Queries::Host { data, .. } = queries {
            if !data.len().is_multiple_of(dim) {
                return Err(HotrowError::LengthMismatch {
                    what: "host queries (a multiple of their dim)",
                    expected: (data.len() / dim + 1) * dim,
                    got: data.len(),
                });
            }
            check_finite("queries", data)?;
            self.check_binding("host queries", data.len() as u64 * 4)?;
        }
        if cand.is_empty() {
            return Err(HotrowError::EmptyCandidates);
        }
        check_ids(cand, self.rows())?;
        Ok(m)
    }

    /// Combination of rows: `out = x * E[ids]` for a dense `m x k` matrix `x` (row-major,
    /// `k = ids.len()`), an `m x dim` result on the GPU (multi-hot features, the sparse x
    /// dense product). Reads only the rows of `ids`, through their cache slots.
    ///
    /// Errors: no ids, `x.len()` not a multiple of `ids.len()`, non-finite `x`, an id out
    /// of range.
    pub fn combine(&mut self, x: &[f32], ids: &[u32]) -> Result<Embeddings> {
        let m = self.check_combine(x, ids)?;
        let mut out = Embeddings::new(&self.ctx, m, self.dim())?;
        self.product_checked(Product::Combine, Operand::Host(x), m, ids, &mut out)?;
        Ok(out)
    }

    /// Like [`EmbeddingCache::combine`], writing into `out` (grown when too small; it must
    /// come from this cache's context).
    pub fn combine_into(&mut self, x: &[f32], ids: &[u32], out: &mut Embeddings) -> Result<()> {
        let m = self.check_combine(x, ids)?;
        self.product_checked(Product::Combine, Operand::Host(x), m, ids, out)
    }

    /// Checks the input of a combine call; returns the number of rows of `x`.
    pub(crate) fn check_combine(&self, x: &[f32], ids: &[u32]) -> Result<usize> {
        let k = ids.len();
        check_combine_shape(x.len(), k)?;
        check_ids(ids, self.rows())?;
        check_finite("x", x)?;
        self.check_binding("x (split the batch)", x.len() as u64 * 4)?;
        Ok(x.len() / k)
    }

    /// Prepares `out` (`m` rows of `ids.len()` scores, or of `dim` combined values),
    /// resolves `ids` and launches `out = a x E[ids]` (or its transpose for scores).
    fn product_checked(
        &mut self,
        product: Product,
        a: Operand<'_>,
        m: usize,
        ids: &[u32],
        out: &mut Embeddings,
    ) -> Result<()> {
        let width = match product {
            Product::Scores => ids.len(),
            Product::Combine => self.dim(),
        };
        let ctx = self.ctx.clone();
        guarded_on_host_pool(&ctx, || {
            out.reset_for(&self.ctx, m, width)?;
            if m == 0 {
                return Ok(());
            }
            let left = match a {
                Operand::Host(values) => Left::Host(values),
                Operand::Gpu(rows) => Left::Gpu(rows.buffer()),
            };
            let Self {
                engine,
                source,
                product_launch,
                ..
            } = self;
            let rows = engine.rows_for_op(source, ids)?;
            let mut enc = encoder(&ctx, "hotrow product");
            // (A failure drops `rows`: the held pass is taken back, as for bags.)
            let staged = matmul::encode(
                &ctx,
                &mut enc,
                product_launch,
                product,
                left,
                m,
                &rows.view(),
                ids.len(),
                out.buffer(),
            )?;
            rows.submit(enc.finish(), staged.entry).map(drop)
        })
    }
}

/// `x` of a combine call holds `m` whole rows of one weight per id, for at least one id.
pub(crate) fn check_combine_shape(x_len: usize, k: usize) -> Result<()> {
    if k == 0 {
        return Err(HotrowError::InvalidArgument(
            "combine needs at least one id".into(),
        ));
    }
    if !x_len.is_multiple_of(k) {
        return Err(HotrowError::LengthMismatch {
            what: "x (m rows of one weight per id)",
            expected: (x_len / k + 1) * k,
            got: x_len,
        });
    }
    Ok(())
}
