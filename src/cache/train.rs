//! Training on the cache: the backward of lookups and pooled bags fused with the optimizer,
//! applied to the rows where they are cached, and the changed rows written back: by the GPU
//! into the table in host memory when they leave the cache, and to the row source at
//! [`EmbeddingCache::flush`].
//!
//! A backward call groups the batch by distinct id on the host ([`Groups`], a counting
//! sort; unless the forward grouped this very batch ahead: `group_ahead.rs`). If the
//! forward's slot list is still kept for this batch (`engine/op_slots.rs`), one update
//! reads every distinct row through it (the slot at the row's first position). Else it
//! serves the distinct ids in passes of at most a pass's positions: each pass makes its
//! rows resident (a row evicted since the forward comes back from the table) and, in the
//! same submission, `update` sums each row's gradient over its positions and applies the
//! optimizer in the slot, and `mark` flags the slot dirty. For max bags an
//! `argmax` over the batch's rows, as they are before the update, goes first.

use std::time::{Duration, Instant};

use super::engine::OpRows;
use super::host_pool::guarded_on_host_pool;
use super::{CacheConfig, EmbeddingCache, EvictionPolicy};
use crate::batch::check_ids;
use crate::error::{HotrowError, Result};
use crate::gpu::{encoder, Embeddings, GpuContext, RowFormat};
use crate::ops::bag::Pooling;
use crate::ops::update::{self, ArgmaxRows, Groups, Optimizer, Produced};
use crate::table::{RowSource, WritableRowSource};

/// Refusals of a training configuration that need no device: a bad optimizer setting, and
/// rows not stored as f32.
pub(super) fn check_settings(optimizer: Optimizer, config: &CacheConfig) -> Result<()> {
    optimizer.check()?;
    if config.row_format != RowFormat::F32 {
        return Err(HotrowError::InvalidArgument(format!(
            "training needs f32 rows (RowFormat::F32), not {:?}",
            config.row_format
        )));
    }
    if config.policy == EvictionPolicy::TinyLfu {
        return Err(HotrowError::InvalidArgument(
            "training updates rows in their slots and writes them back when they leave: \
             EvictionPolicy::TinyLfu serves refused rows from transient slots, never resident, \
             so it is not offered for training (use Clock or Lru)"
                .into(),
        ));
    }
    Ok(())
}

/// Training needs the slots in one storage binding (`update` binds them whole).
pub(super) fn check_slots(ctx: &GpuContext, slot_bytes: u64) -> Result<()> {
    if slot_bytes > ctx.max_binding() {
        return Err(HotrowError::ExceedsLimit {
            what: "a training cache's slots (one storage binding)",
            bytes: slot_bytes,
            limit_name: "max_storage_buffer_binding_size",
            limit: ctx.max_binding(),
        });
    }
    Ok(())
}

/// Whether rows changed since the last flush; dropped while they have, it says so in the
/// log (the rows left in the cache and the host table are lost with it).
#[derive(Default)]
pub(super) struct Unflushed(pub(super) bool);

impl Drop for Unflushed {
    fn drop(&mut self) {
        if self.0 {
            log::warn!(
                "hotrow: a training cache was dropped with rows changed since its last flush(); \
                 they were not written to the row source"
            );
        }
    }
}

impl<S: RowSource> EmbeddingCache<S> {
    /// The backward of [`EmbeddingCache::lookup`] fused with the optimizer of a training
    /// cache ([`CacheConfig::training`]): `grad` holds the gradient of the loss with respect
    /// to the lookup's output (`ids.len() x dim`); each distinct row's gradient (summed over
    /// the positions that read it, in position order: deterministic) updates the row where
    /// it is cached. Call it with the ids of the forward lookup, before any other call that
    /// changes the rows.
    ///
    /// Errors, before any work: not a training cache, an id out of range, `grad` of another
    /// context or of the wrong shape.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{CacheConfig, EmbeddingCache, Embeddings, GpuContext, GpuOptions, HostTable, Optimizer};
    /// let ctx = GpuContext::with_options(GpuOptions { host_visible_storage: true, ..Default::default() })?;
    /// let table = HostTable::owned(vec![0.5f32; 1000 * 8], 8)?;
    /// let config = CacheConfig::default().training(Optimizer::Sgd { lr: 0.1 });
    /// let mut cache = EmbeddingCache::new(&ctx, table, config)?;
    /// let ids = [3u32, 7, 3];
    /// let out = cache.lookup(&ids)?;
    /// let grad = Embeddings::from_host(&ctx, &vec![1.0f32; ids.len() * 8], 8)?;
    /// cache.backward_lookup(&ids, &grad)?;
    /// cache.flush()?; // the trained rows into the table
    /// assert_eq!(cache.source().read_row(3)?, vec![0.5 - 0.2; 8]);
    /// # let _ = out;
    /// # Ok(()) }
    /// ```
    pub fn backward_lookup(&mut self, ids: &[u32], grad: &Embeddings) -> Result<()> {
        let optimizer = self.optimizer()?;
        // (a batch its forward grouped ahead passed this very check)
        let ahead = self.grouped_ahead(ids, Produced::Lookup);
        if !ahead {
            check_ids(ids, self.rows())?;
        }
        let what = "a lookup's gradient (one row per id)";
        self.check_grad(grad, (ids.len(), self.dim()), what)?;
        if ids.is_empty() {
            return Ok(());
        }
        self.backward(ids, Produced::Lookup, grad, optimizer, ahead)
    }

    /// The backward of [`EmbeddingCache::lookup_bags`] fused with the optimizer of a training
    /// cache: `grad` holds the gradient with respect to the bags' output (`offsets.len() x
    /// dim`). Sum and mean spread a bag's gradient over its positions (times each position's
    /// weight, over the bag's length for mean); max sends each column's gradient to the
    /// first position holding the bag's maximum there (found again over the rows as they
    /// are: call it before anything else changes them). Empty bags contribute nothing;
    /// bags with more distinct rows than the cache are served in several passes.
    ///
    /// Errors, before any work: not a training cache, the input errors of `lookup_bags`,
    /// `grad` of another context or of the wrong shape.
    pub fn backward_bags(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
        grad: &Embeddings,
    ) -> Result<()> {
        let optimizer = self.optimizer()?;
        let produced = Produced::Bags {
            offsets,
            pooling,
            weights,
            tables: None,
        };
        // (a batch its forward grouped ahead passed these very checks)
        let ahead = self.grouped_ahead(ids, produced);
        if !ahead {
            self.check_bags(ids, offsets, pooling, weights)?;
        }
        let what = "a bags' gradient (one row per bag)";
        self.check_grad(grad, (offsets.len(), self.dim()), what)?;
        if ids.is_empty() || offsets.is_empty() {
            return Ok(());
        }
        self.backward(ids, produced, grad, optimizer, ahead)
    }

    /// The backward of bags checked by the caller (a table-batched step's width: its
    /// tables' bags table-major, `produced` saying where each table's gradient columns
    /// are), fused with the optimizer.
    pub(crate) fn backward_checked_bags(
        &mut self,
        ids: &[u32],
        produced: Produced<'_>,
        grad: &Embeddings,
    ) -> Result<()> {
        let optimizer = self.optimizer()?;
        if ids.is_empty() {
            return Ok(());
        }
        // (a table-batched width's bags are never grouped ahead)
        self.backward(ids, produced, grad, optimizer, false)
    }

    /// The backward calls that updated rows so far: Adam's step count (`t` of the last
    /// update; the next is `train_steps() + 1`). 0 for a new cache.
    pub fn train_steps(&self) -> u64 {
        self.train_launch.steps
    }

    /// Sets [`EmbeddingCache::train_steps`]: resuming Adam from a table whose moments a
    /// flush kept, set the steps the earlier training took, so the bias corrections carry
    /// on where they were. [`HotrowError::InvalidArgument`] for a cache that does not train.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{CacheConfig, EmbeddingCache, GpuContext, HostTable, Optimizer};
    /// let ctx = GpuContext::new()?;
    /// let (rows, dim) = (1_000, 8);
    /// // values and Adam's moments (2 * dim a row) saved by an earlier run's flush
    /// let (values, moments) = (vec![0.1f32; rows * dim], vec![0.0f32; rows * 2 * dim]);
    /// let table = HostTable::owned(values, dim)?.with_state(2 * dim, moments)?;
    /// let adam = Optimizer::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    /// let mut cache = EmbeddingCache::new(&ctx, table, CacheConfig::default().training(adam))?;
    /// cache.set_train_steps(5_000)?; // the earlier run's steps
    /// # Ok(()) }
    /// ```
    pub fn set_train_steps(&mut self, steps: u64) -> Result<()> {
        self.optimizer()?;
        self.train_launch.steps = steps;
        Ok(())
    }

    /// The optimizer of a training cache, or [`HotrowError::InvalidArgument`].
    pub(crate) fn optimizer(&self) -> Result<Optimizer> {
        self.config.training.ok_or_else(|| {
            HotrowError::InvalidArgument(
                "not a training cache (CacheConfig::training sets an optimizer)".into(),
            )
        })
    }

    /// The backward of [`EmbeddingCache::scores`] fused with the optimizer, for the rows
    /// (the candidates' side): `grad` is the gradient with respect to the scores (`m x
    /// cand.len()`), and candidate `j`'s row gets `sum_i grad[i][j] * queries[i]` (repeats
    /// summed). The queries are not trained (they are the caller's).
    ///
    /// Errors, before any work: not a training cache, the input errors of `scores`, `grad`
    /// of another context or of the wrong shape.
    pub fn backward_scores(
        &mut self,
        queries: super::Queries<'_>,
        cand: &[u32],
        grad: &Embeddings,
    ) -> Result<()> {
        let optimizer = self.optimizer()?;
        let m = self.check_scores(queries, cand)?;
        self.check_grad(
            grad,
            (m, cand.len()),
            "a scores' gradient (queries x candidates)",
        )?;
        if m == 0 {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let uploaded;
        let q = match queries {
            super::Queries::Host { data, dim } => {
                uploaded = Embeddings::from_host(&ctx, data, dim)?;
                &uploaded
            }
            super::Queries::Gpu(e) => e,
        };
        self.backward_product(cand, (grad, q), m, optimizer)
    }

    /// The backward of [`EmbeddingCache::combine`] fused with the optimizer, for the rows:
    /// `grad` is the gradient with respect to the combination (`m x dim`), and row `ids[p]`
    /// gets `sum_i x[i][p] * grad[i]` (repeats summed). `x` is not trained.
    ///
    /// Errors, before any work: not a training cache, the input errors of `combine`, `grad`
    /// of another context or of the wrong shape.
    pub fn backward_combine(&mut self, x: &[f32], ids: &[u32], grad: &Embeddings) -> Result<()> {
        let optimizer = self.optimizer()?;
        let m = self.check_combine(x, ids)?;
        self.check_grad(grad, (m, self.dim()), "a combination's gradient (m x dim)")?;
        if m == 0 {
            return Ok(());
        }
        let xs = Embeddings::from_host(&self.ctx, x, ids.len())?;
        self.backward_product(ids, (&xs, grad), m, optimizer)
    }

    /// The rows' side of a product's backward: the per-position gradient `left^T right`
    /// (left `m x ids.len()`, right `m x dim`) on the GPU, then the lookup's backward.
    fn backward_product(
        &mut self,
        ids: &[u32],
        (left, right): (&Embeddings, &Embeddings),
        m: usize,
        optimizer: Optimizer,
    ) -> Result<()> {
        let ctx = self.ctx.clone();
        let dim = self.dim();
        let per_position = Embeddings::new(&ctx, ids.len(), dim)?;
        let mut enc = encoder(&ctx, "hotrow product gradient");
        let buffers = (left.buffer(), right.buffer(), per_position.buffer());
        update::encode_a_t_b(
            &ctx,
            &mut enc,
            &mut self.train_launch.launch,
            buffers,
            m,
            ids.len(),
            dim,
        )?;
        crate::gpu::submit_encoder(&ctx, enc)?;
        let ahead = self.grouped_ahead(ids, Produced::Lookup);
        self.backward(ids, Produced::Lookup, &per_position, optimizer, ahead)
    }

    /// `grad` is of this context, `rows x cols`.
    fn check_grad(
        &self,
        grad: &Embeddings,
        (rows, cols): (usize, usize),
        what: &'static str,
    ) -> Result<()> {
        self.ctx.check_same(grad.context(), what)?;
        if grad.dim() != cols {
            return Err(HotrowError::DimMismatch {
                what,
                expected: cols,
                got: grad.dim(),
            });
        }
        if grad.rows() != rows {
            return Err(HotrowError::LengthMismatch {
                what,
                expected: rows,
                got: grad.rows(),
            });
        }
        Ok(())
    }

    /// Checked, non-empty input: the argmax pass (max bags), then a pass per chunk of the
    /// distinct ids with the update and the dirty marks in its submission.
    /// `ahead`: the grouping kept is of this very batch ([`EmbeddingCache::grouped_ahead`]).
    fn backward(
        &mut self,
        ids: &[u32],
        produced: Produced<'_>,
        grad: &Embeddings,
        optimizer: Optimizer,
        ahead: bool,
    ) -> Result<()> {
        let ctx = self.ctx.clone();
        guarded_on_host_pool(&ctx, || {
            self.backward_checked(ids, produced, grad, optimizer, ahead)
        })
    }

    /// Whether the forward of this very batch grouped it ahead (`group_ahead.rs`): then it
    /// also passed the forward's checks of these inputs.
    fn grouped_ahead(&self, ids: &[u32], produced: Produced<'_>) -> bool {
        self.train_launch.groups.is_of(ids, produced, self.dim())
    }

    fn backward_checked(
        &mut self,
        ids: &[u32],
        produced: Produced<'_>,
        grad: &Embeddings,
        optimizer: Optimizer,
        ahead: bool,
    ) -> Result<()> {
        // (The grouping's buffers are kept from call to call.)
        let mut groups = std::mem::take(&mut self.train_launch.groups);
        // (grouped already where the forward of this very batch came just before, and
        // its rows' slots kept with the forward's slot list if nothing ran since)
        let op = self
            .train_launch
            .ahead_op
            .filter(|&serial| ahead && self.engine.has_op_slots(serial, ids.len()));
        if !ahead {
            let t = Instant::now();
            groups.build(ids, produced, self.dim());
            self.engine.count_grouping(t.elapsed(), Duration::ZERO);
        }
        let result = self.backward_grouped(ids, &groups, produced, grad, optimizer, op.is_some());
        self.train_launch.groups = groups;
        if result.is_ok() {
            self.train_launch.steps += 1;
        }
        result
    }

    /// `forward_slots`: the forward's slot list is kept for this very batch
    /// (`engine/op_slots.rs`): the rows are read through it, no pass of the backward's own.
    fn backward_grouped(
        &mut self,
        ids: &[u32],
        groups: &Groups,
        produced: Produced<'_>,
        grad: &Embeddings,
        optimizer: Optimizer,
        forward_slots: bool,
    ) -> Result<()> {
        let dim = self.dim();
        let bytes = groups.meta.len() as u64 * 4;
        self.check_binding("a backward's batch (split it)", bytes)?;
        let partials = update::partials_bytes(groups, dim);
        self.check_binding("a backward's partial sums of its most-read rows", partials)?;
        let stride = self.layout.words_per_row();
        let per_pass = self.engine.positions_per_op_pass();
        let max = matches!(
            produced,
            Produced::Bags {
                pooling: Pooling::Max,
                ..
            }
        );
        let ctx = self.ctx.clone();
        let step = update::Step {
            groups,
            grad: grad.buffer(),
            optimizer,
            stride,
            state_at: dim,
            t: self.train_launch.steps + 1,
            by_position: forward_slots,
        };
        // The batch's words go up once: with the argmax (whose results they then hold), or
        // with the first chunk's update.
        if max {
            let rows = if forward_slots {
                self.engine.rows_of_op()
            } else {
                self.engine.rows_for_op(&self.source, ids)?
            };
            let view = rows.view();
            let over = ArgmaxRows {
                slots: view.slots,
                rows: view.rows,
                identity: view.identity,
                stride: view.layout.words_per_row(),
            };
            let (slots, table) = (view.slots.clone(), view.rows.clone());
            let mut enc = encoder(&ctx, "hotrow argmax");
            let launch = &mut self.train_launch;
            let buffers = (&slots, &table);
            let staged = update::encode(
                &ctx,
                &mut enc,
                launch,
                &step,
                (0, 0),
                buffers,
                Some(over),
                true,
            )?;
            rows.submit(enc.finish(), staged.entry)?;
        }
        if forward_slots {
            // Every distinct row in one update, its slot at its first position.
            let rows = self.engine.rows_of_op();
            let all = (0, groups.distinct.len());
            let marks = (&groups.distinct[..], ids.len());
            update_through(&ctx, rows, &mut self.train_launch, &step, all, !max, marks)?;
            self.unflushed.0 = true;
            return Ok(());
        }
        for (c, chunk) in groups.distinct.chunks(per_pass).enumerate() {
            let rows = self.engine.rows_for_op(&self.source, chunk)?;
            let chunk_rows = (c * per_pass, chunk.len());
            let upload = c == 0 && !max;
            let marks = (chunk, chunk.len());
            update_through(
                &ctx,
                rows,
                &mut self.train_launch,
                &step,
                chunk_rows,
                upload,
                marks,
            )?;
            self.unflushed.0 = true;
        }
        Ok(())
    }
}

/// Records and submits one update of `step`'s distinct rows `range` (first, count), read
/// through the slot list of `rows`, with the batch's words uploaded when `upload`; the
/// rows of `marks.0` are marked changed through the list's first `marks.1` entries (the
/// distinct rows' own slots, or the forward's, a slot per position).
fn update_through(
    ctx: &GpuContext,
    mut rows: OpRows<'_>,
    train: &mut update::TrainState,
    step: &update::Step<'_>,
    range: (usize, usize),
    upload: bool,
    (marked, positions): (&[u32], usize),
) -> Result<()> {
    let view = rows.view();
    debug_assert!(!view.identity, "an update reads one pass's unsharded slots");
    let (slots, table) = (view.slots.clone(), view.rows.clone());
    let mut enc = encoder(ctx, "hotrow update");
    let buffers = (&slots, &table);
    let staged = update::encode(ctx, &mut enc, train, step, range, buffers, None, upload)?;
    rows.mark_changed(&mut enc, marked, positions)?;
    rows.submit(enc.finish(), staged.entry)?;
    Ok(())
}

impl<S: WritableRowSource> EmbeddingCache<S> {
    /// Writes every row training changed since the last flush into the row source: the
    /// rows still cached are first copied out of the slots (on the GPU-driven path into the
    /// table in host memory; on the host path into host memory of the cache's own, where
    /// rows that left the cache already wait), then the changed rows (values only: the
    /// optimizer state stays with the cache) go to [`WritableRowSource::write_rows`].
    /// Returns how many rows were written (0 for a cache that does not train).
    ///
    /// If the write fails, the error is returned and the rows stay marked as changed: the
    /// next flush writes them again (nothing is dropped).
    ///
    /// If the device is lost, the rows that left the cache before the loss are still in
    /// host memory: on the host path always, on the GPU-driven path where the table is
    /// hotrow's own memory ([`crate::GpuOptions::host_memory_import`]; the flush finds them
    /// by comparing the table with the row source). The flush writes them and returns
    /// [`HotrowError::DeviceLost`] saying how many it saved and how many rows changed in
    /// the cache were lost with the device (at most the capacity, plus on the host path the
    /// rows in copies not yet arrived). Over wgpu's host buffers nothing can be read after
    /// the loss.
    pub fn flush(&mut self) -> Result<usize> {
        self.flush_into(&mut |source, ids, rows, state| {
            source.write_rows(ids, rows)?;
            if let Some(state) = state {
                source.write_state(ids, state)?;
            }
            Ok(())
        })
    }
}

/// How a flush hands rows to a row source: `write(source, ids, values, state)` (the
/// optimizer state of each row, for an optimizer with state).
pub(crate) type WriteRows<'a, S> =
    dyn FnMut(&mut S, &[u32], &[f32], Option<&[f32]>) -> Result<()> + 'a;

impl<S: RowSource> EmbeddingCache<S> {
    /// [`EmbeddingCache::flush`], the rows handed to `write`.
    pub(crate) fn flush_into(&mut self, write: &mut WriteRows<'_, S>) -> Result<usize> {
        if self.config.training.is_none() {
            return Ok(0);
        }
        let ctx = self.ctx.clone();
        let written = match ctx.guarded(|| self.engine.flush_written()) {
            Err(HotrowError::DeviceLost(reason)) => return Err(self.salvage(reason, write)),
            other => other?,
        };
        let rows = self.write_flushed(&written, write)?;
        self.engine.written_done(&written.ids)?;
        self.unflushed.0 = false;
        Ok(rows)
    }

    /// A flush after the device is lost: what the table in host memory still holds goes
    /// to the row source; the error to return says what was saved and what was not.
    fn salvage(&mut self, reason: String, write: &mut WriteRows<'_, S>) -> HotrowError {
        let saved = match self.engine.salvage_written(&self.source) {
            Ok(Some(written)) => match self.write_flushed(&written, write) {
                Ok(rows) => {
                    // (The GPU-driven path's own marks are gone with the device.)
                    let _ = self.engine.written_done(&written.ids);
                    format!("flush wrote the {rows} rows that had left the cache before the loss")
                }
                Err(e) => format!("writing the rows written back before the loss failed: {e}"),
            },
            Ok(None) => "the table in wgpu's host buffers cannot be read after the loss".into(),
            Err(e) => format!("reading the table after the loss failed: {e}"),
        };
        let lost = match self.engine.copy_back() {
            Some(copy_back) => format!("{} rows", copy_back.at_risk()),
            None => format!("at most {}", self.capacity()),
        };
        HotrowError::DeviceLost(format!(
            "{reason}; {saved}; rows changed in the cache and not yet out of it ({lost}) are \
             lost"
        ))
    }

    /// Hands flushed rows (their values) to the row source; returns how many.
    fn write_flushed(
        &mut self,
        written: &super::engine::Written,
        write: &mut WriteRows<'_, S>,
    ) -> Result<usize> {
        let (dim, stride) = (self.dim(), self.layout.words_per_row());
        let values: Vec<f32> = written
            .words
            .chunks_exact(stride)
            .flat_map(|row| row[..dim].iter().map(|&w| f32::from_bits(w)))
            .collect();
        let state_values = self.optimizer()?.state_per_row(dim);
        let state: Vec<f32> = written
            .words
            .chunks_exact(stride)
            .flat_map(|row| {
                row[dim..dim + state_values]
                    .iter()
                    .map(|&w| f32::from_bits(w))
            })
            .collect();
        let state = (state_values > 0).then_some(&state[..]);
        if !written.ids.is_empty() {
            write(&mut self.source, &written.ids, &values, state)?;
        }
        Ok(written.ids.len())
    }
}
