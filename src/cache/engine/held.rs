//! An op's rows, and the pass held for the op's submission, as one value: [`OpRows`]
//! borrows the engine, so nothing else can reach the GPU while the pass is held; it is
//! consumed by [`OpRows::submit`] (the pass, then the op's commands, in one submission) or
//! dropped, which takes the pass back so the op changes nothing.

use super::{PassEngine, RecordedPass};
use crate::cache::stats::CacheStats;
use crate::error::Result;
use crate::gpu::{RowLayout, StagingEntry};
use crate::ops::RowsView;

/// A pass held for an op, and the counters from before the op (restored if it is taken
/// back).
pub(super) struct Held {
    pub(super) pass: RecordedPass,
    pub(super) before: CacheStats,
}

/// The rows of an op's batch ([`PassEngine::rows_for_op`]). The op records its commands
/// over [`OpRows::view`], then hands them to [`OpRows::submit`]; an op that fails drops
/// its `OpRows`, and the held pass is taken back (misses forgotten, evicted rows restored,
/// counters as before the op).
#[must_use = "an op's rows hold its pass: submit them, or drop them to take the pass back"]
pub(crate) struct OpRows<'e> {
    engine: &'e mut PassEngine,
    /// How the op reads the rows: `None`, the slots through the pass's slot list; else
    /// gathered rows in batch order, stored as this layout.
    gathered: Option<RowLayout>,
    held: Option<Held>,
}

impl<'e> OpRows<'e> {
    /// The op reads the slots through the slot list of the pass `held` (if any).
    pub(super) fn direct(engine: &'e mut PassEngine, held: Option<Held>) -> Self {
        Self {
            engine,
            gathered: None,
            held,
        }
    }

    /// The op reads rows gathered in order (their passes already submitted).
    pub(super) fn gathered(engine: &'e mut PassEngine, layout: RowLayout) -> Self {
        Self {
            engine,
            gathered: Some(layout),
            held: None,
        }
    }

    /// The rows view the op's kernel reads.
    pub(crate) fn view(&self) -> RowsView<'_> {
        let e = &*self.engine;
        let slots = e
            .buffers
            .pos_slots
            .current()
            .expect("slot list of the pass");
        let (rows, layout) = match self.gathered {
            None => (e.slots.shards().next().expect("one shard"), e.layout),
            Some(layout) => (e.buffers.gathered.current().expect("gathered rows"), layout),
        };
        RowsView {
            rows,
            rows_bytes: rows.size(),
            slots,
            slots_bytes: slots.size(),
            identity: self.gathered.is_some(),
            layout,
        }
    }

    /// Submits the held pass (if any) and then the op's `commands` reading `staged`, in one
    /// submission. If it fails, the pass's misses leave the map.
    pub(crate) fn submit(
        mut self,
        commands: wgpu::CommandBuffer,
        staged: StagingEntry,
    ) -> Result<wgpu::SubmissionIndex> {
        let t = std::time::Instant::now();
        let pass = self.held.take().map(|held| held.pass);
        let engine = &mut *self.engine;
        let removals = pass.as_ref().map(|p| p.removals);
        let (pass_commands, pass_entry) = pass.map(|p| (p.commands, p.entry)).unzip();
        let sent = engine.submit(
            pass_commands.into_iter().chain([commands]),
            pass_entry.into_iter().chain([staged]),
        );
        engine.stats.submit_time += t.elapsed();
        match (&sent, removals) {
            (_, None) => {}
            // (The pass was counted when it was held, evictions included.)
            (Err(_), Some(_)) => engine.map.forget(&engine.plan.misses),
            (Ok(_), Some(removals)) => {
                if let Some(index) = engine.index.as_mut() {
                    index.applied(removals);
                }
            }
        }
        sent
    }
}

impl Drop for OpRows<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.engine.take_back_held(held);
        }
    }
}
