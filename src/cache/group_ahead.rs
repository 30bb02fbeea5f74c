//! A training cache's forward groups its batch for the backward, beside its own work.
//!
//! A backward first groups its batch by distinct id on the host (`ops/groups.rs`): much of
//! its host time on a large batch (BENCHMARKS.md, W7). The forward of the same batch
//! comes just before it, host work on one pool thread while the others idle, so the
//! grouping runs beside it (`rayon::join`) with a copy of the batch kept; a backward of
//! exactly that batch takes the grouping as it is, any other groups its own; and where the
//! forward's pass kept its slot list (`engine/op_slots.rs`) and nothing ran since, the
//! backward reads its rows through that list instead of a pass of its own. A training
//! cache that also serves lookups it will not train on pays for their grouping on another
//! thread: such a forward takes the longer of the two.

use std::time::Instant;

use super::EmbeddingCache;
use crate::ops::update::Produced;
use crate::table::RowSource;

impl<S: RowSource> EmbeddingCache<S> {
    /// Runs `forward` (a lookup or bags of `ids`, `produced` saying which) on this thread
    /// and, on a training cache, groups the batch for its backward on another.
    pub(super) fn forward_grouping_ahead<R: Send>(
        &mut self,
        ids: &[u32],
        produced: Produced<'_>,
        forward: impl FnOnce(&mut Self) -> R + Send,
    ) -> R {
        if self.config.training.is_none() || ids.is_empty() {
            return forward(self);
        }
        let dim = self.dim();
        let before = self.engine.op_serial();
        let mut groups = std::mem::take(&mut self.train_launch.groups);
        // (`forward` stays on this thread: wgpu's error scopes are per thread)
        let ((done, forward_end), grouping) = rayon::join(
            || (forward(self), Instant::now()),
            || {
                let t = Instant::now();
                groups.build_ahead(ids, produced, dim);
                t.elapsed()
            },
        );
        self.train_launch.groups = groups;
        // (a slot list kept during this forward is its batch's; one kept before it is not)
        let kept = self.engine.op_serial();
        self.train_launch.ahead_op = kept.filter(|_| kept != before);
        self.engine
            .count_grouping(grouping, forward_end.elapsed().min(grouping));
        done
    }
}
