//! Training a table-batched cache: a step's backward (every table's bags, the gradient of
//! the step's `B x width` output) fused with the optimizer, width by width, each width's
//! tables' bags in one backward of its cache; and the flush, each width's changed rows
//! handed to their own tables.

use std::sync::Arc;

use super::tables::{member_of, Tables};
use super::{TableBags, TableBatchedCache};
use crate::cache::caught::caught;
use crate::cache::host_pool::{on_host_pool, wake_host_pool};
use crate::error::{HotrowError, Result};
use crate::gpu::Embeddings;
use crate::ops::bag::{Pooling, TableOutput};
use crate::ops::update::Produced;
use crate::table::{RowSource, WritableRowSource};

impl<S: RowSource> TableBatchedCache<S> {
    /// The backward of [`TableBatchedCache::lookup_bags`] fused with the optimizer of a
    /// training cache ([`crate::CacheConfig::training`]): `grad` is the gradient of the
    /// loss with respect to the step's output (`B x width()`, each table's columns where
    /// the forward wrote its pooled rows); every table's rows are updated as
    /// [`crate::EmbeddingCache::backward_bags`] updates one table's (repeats summed in
    /// position order, max through each bag's argmax: call it with the step's input,
    /// before anything else changes the rows). Each width's tables go in one backward.
    ///
    /// Errors, before any work: not a training cache, the input errors of `lookup_bags`
    /// (naming the table), `grad` of another context or of the wrong shape. A failure
    /// after that (a row source failing while an evicted row is read again, a lost
    /// device) may leave the widths before the failing one updated.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{CacheConfig, Embeddings, GpuContext, HostTable, Optimizer, Pooling};
    /// use hotrow::{TableBags, TableBatchedCache};
    /// let ctx = GpuContext::new()?;
    /// let tables = vec![
    ///     HostTable::owned(vec![0.5; 1000 * 8], 8)?,
    ///     HostTable::owned(vec![0.5; 50 * 4], 4)?,
    /// ];
    /// let config = CacheConfig::default().training(Optimizer::Sgd { lr: 0.1 });
    /// let mut cache = TableBatchedCache::new(&ctx, tables, config)?;
    /// let step = [
    ///     TableBags { ids: &[3, 7, 9], offsets: &[0, 2], weights: None },
    ///     TableBags { ids: &[4, 4], offsets: &[0, 0], weights: None },
    /// ];
    /// let out = cache.lookup_bags(&step, Pooling::Sum)?; // 2 x 12
    /// let grad = Embeddings::from_host(&ctx, &vec![1.0; 2 * 12], 12)?;
    /// cache.backward_bags(&step, Pooling::Sum, &grad)?;
    /// cache.flush()?; // every table's trained rows into the table
    /// # let _ = out;
    /// # Ok(()) }
    /// ```
    pub fn backward_bags(
        &mut self,
        batch: &[TableBags<'_>],
        pooling: Pooling,
        grad: &Embeddings,
    ) -> Result<()> {
        self.widths[0].cache.optimizer()?;
        wake_host_pool();
        on_host_pool(|| {
            let bags = self.prepare(batch, pooling)?;
            let what = "a step's gradient (B x the output width)";
            self.ctx.check_same(grad.context(), what)?;
            if grad.dim() != self.width {
                return Err(HotrowError::DimMismatch {
                    what,
                    expected: self.width,
                    got: grad.dim(),
                });
            }
            if grad.rows() != bags {
                return Err(HotrowError::LengthMismatch {
                    what,
                    expected: bags,
                    got: grad.rows(),
                });
            }
            let (cols, width) = (&self.cols, self.width);
            // Every width's update is step `steps + 1` (Adam's t), whichever tables it has.
            let steps = self.steps;
            for w in &mut self.widths {
                let step = &w.step;
                if step.ids.is_empty() {
                    continue;
                }
                w.cache.set_train_steps(steps)?;
                let member_cols: Vec<u32> = w.members.iter().map(|&t| cols[t] as u32).collect();
                let produced = Produced::Bags {
                    offsets: &step.offsets,
                    pooling,
                    weights: step.weighted.then_some(&step.weights[..]),
                    tables: Some(TableOutput {
                        per_table: bags,
                        out_stride: width as u32,
                        cols: &member_cols,
                    }),
                };
                w.cache.backward_checked_bags(&step.ids, produced, grad)?;
            }
            self.steps += 1;
            Ok(())
        })
    }

    /// The training steps taken (each `backward_bags` call): Adam's step count, one for
    /// every table whether or not a step read its rows. 0 for a new cache.
    pub fn train_steps(&self) -> u64 {
        self.steps
    }

    /// Sets [`TableBatchedCache::train_steps`] (resuming Adam: see
    /// [`crate::EmbeddingCache::set_train_steps`]); [`HotrowError::InvalidArgument`] for a
    /// cache that does not train.
    pub fn set_train_steps(&mut self, steps: u64) -> Result<()> {
        self.widths[0].cache.optimizer()?;
        self.steps = steps;
        Ok(())
    }
}

impl<S: WritableRowSource> TableBatchedCache<S> {
    /// Writes every row training changed since the last flush into its table
    /// ([`WritableRowSource::write_rows`]), as [`crate::EmbeddingCache::flush`] does for
    /// one table; returns how many rows were written (0 for a cache that does not train).
    /// A table's failing write is [`HotrowError::InTable`] naming it; that width's rows
    /// stay marked as changed and the next flush writes them again (rows of other tables
    /// of the width included: writing a row twice is harmless).
    pub fn flush(&mut self) -> Result<usize> {
        // The widths' handles on the tables are set aside, so this cache holds the only one
        // and the tables can be written; they are handed back whatever happened.
        for w in &mut self.widths {
            w.cache.source_mut().sources = Arc::new(Vec::new());
        }
        let flushed = self.flush_widths();
        for w in &mut self.widths {
            w.cache.source_mut().sources = self.sources.clone();
        }
        flushed
    }

    fn flush_widths(&mut self) -> Result<usize> {
        let tables = Arc::get_mut(&mut self.sources).ok_or_else(|| {
            HotrowError::InvalidArgument("the tables are shared: they cannot be written".into())
        })?;
        let mut total = 0;
        for w in &mut self.widths {
            let (members, bases) = (&w.members, &w.bases);
            let mut write =
                |_: &mut Tables<S>, ids: &[u32], values: &[f32], state: Option<&[f32]>| {
                    write_members(tables, members, bases, ids, values, state)
                };
            total += w.cache.flush_into(&mut write)?;
        }
        Ok(total)
    }
}

/// One member table's share of a flush: its rows, their values and state.
#[derive(Default, Clone)]
struct MemberRows {
    ids: Vec<u32>,
    values: Vec<f32>,
    state: Vec<f32>,
}

/// Writes rows `ids` of a width (its global rows) with `values` (and `state`) into the
/// member tables they belong to, each member's rows in one call.
fn write_members<S: WritableRowSource>(
    tables: &mut [S],
    members: &[usize],
    bases: &[u64],
    ids: &[u32],
    values: &[f32],
    state: Option<&[f32]>,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let dim = values.len() / ids.len();
    let per_row = state.map_or(0, |s| s.len() / ids.len());
    let mut by_member = vec![MemberRows::default(); members.len()];
    for (p, (&id, row)) in ids.iter().zip(values.chunks_exact(dim)).enumerate() {
        let k = member_of(bases, id);
        let m = &mut by_member[k];
        m.ids.push((id as u64 - bases[k]) as u32);
        m.values.extend_from_slice(row);
        if let Some(s) = state {
            m.state.extend_from_slice(&s[p * per_row..][..per_row]);
        }
    }
    for (k, m) in by_member.iter().enumerate() {
        if m.ids.is_empty() {
            continue;
        }
        let table = members[k];
        let t = &mut tables[table];
        caught(|| {
            t.write_rows(&m.ids, &m.values)?;
            if state.is_some() {
                t.write_state(&m.ids, &m.state)?;
            }
            Ok(())
        })
        .map_err(|source| HotrowError::InTable {
            table,
            source: Box::new(source),
        })?;
    }
    Ok(())
}
