//! A step's input, checked and written per width: each table's ids numbered as its width's
//! rows and its bag offsets moved past the tables before it, in one parallel task per
//! table.

use rayon::prelude::*;

use super::TableBags;
use super::TableBatchedCache;
use crate::batch::check_ids;
use crate::error::{HotrowError, Result};
use crate::ops::bag::{check_bags, Pooling};
use crate::table::RowSource;

/// One width's part of a step, table-major, written while the step is checked and reused
/// across steps: the members' ids numbered as the width's rows, their bag offsets (each
/// member's moved past the ids before it) and, when any member has weights, every id's
/// weight (1 for members without).
#[derive(Default)]
pub(super) struct WidthStep {
    pub(super) ids: Vec<u32>,
    pub(super) offsets: Vec<u32>,
    pub(super) weights: Vec<f32>,
    pub(super) weighted: bool,
    pub(super) cols: Vec<u32>,
}

/// One table's share of a step: where [`TableBatchedCache::prepare`] checks it and writes
/// it into its width's [`WidthStep`].
struct TableTask<'a, 'b> {
    part: &'a TableBags<'b>,
    rows: usize,
    base: u32,
    start: u32,
    ids: &'a mut [u32],
    offsets: &'a mut [u32],
    weights: Option<&'a mut [f32]>,
}

impl<S: RowSource> TableBatchedCache<S> {
    /// Checks a step's input and writes each width's part of it ([`WidthStep`]); returns
    /// the bags per table. Each table is checked and written by one task, all in parallel
    /// (a W6 step holds 426,000 ids): one pass over the pool instead of a check and then a
    /// numbering. The error reported is the first bad table's, as a serial check would
    /// give; after one, the steps' buffers hold garbage no later step reads.
    pub(super) fn prepare(&mut self, batch: &[TableBags<'_>], pooling: Pooling) -> Result<usize> {
        if batch.len() != self.sources.len() {
            return Err(HotrowError::LengthMismatch {
                what: "tables in the step",
                expected: self.sources.len(),
                got: batch.len(),
            });
        }
        let bags = batch[0].offsets.len();
        let mut tasks: Vec<Option<TableTask<'_, '_>>> = batch.iter().map(|_| None).collect();
        for g in &mut self.widths {
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
        for g in &self.widths {
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
}
