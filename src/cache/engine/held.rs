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
    /// The engine, borrowed for the op (taken out only by a submission).
    engine: Option<&'e mut PassEngine>,
    /// How the op reads the rows: `None`, the slots through the pass's slot list; else
    /// gathered rows in batch order, stored as this layout.
    gathered: Option<RowLayout>,
    held: Option<Held>,
}

impl<'e> OpRows<'e> {
    /// The op reads the slots through the slot list of the pass `held` (if any).
    pub(super) fn direct(engine: &'e mut PassEngine, held: Option<Held>) -> Self {
        Self {
            engine: Some(engine),
            gathered: None,
            held,
        }
    }

    /// The op reads rows gathered in order (their passes already submitted).
    pub(super) fn gathered(engine: &'e mut PassEngine, layout: RowLayout) -> Self {
        Self {
            engine: Some(engine),
            gathered: Some(layout),
            held: None,
        }
    }

    /// The rows view the op's kernel reads.
    pub(crate) fn view(&self) -> RowsView<'_> {
        let e = self.engine.as_deref().expect("the op's engine");
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

    /// Marks the rows of `ids` (distinct) as changed by an update whose slots are the first
    /// `positions` of the slot list (the distinct rows' own, or an op's list with a slot
    /// per position: `op_slots.rs`): recorded in `enc` on the GPU-driven path, on the host
    /// on the host path.
    pub(crate) fn mark_changed(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        ids: &[u32],
        positions: usize,
    ) -> Result<()> {
        let e = self.engine.as_deref_mut().expect("the op's engine");
        if let Some(copy_back) = e.copy_back.as_mut() {
            copy_back.mark(&e.map, ids);
            return Ok(());
        }
        let list = e
            .buffers
            .pos_slots
            .current()
            .expect("slot list of the op")
            .clone();
        // (a row at several positions is marked once per position: the same mark)
        e.mark_changed(enc, &list, positions)
    }

    /// Submits the held pass (if any) and then the op's `commands` reading `staged`, in one
    /// submission. If it fails, the pass's misses leave the map.
    pub(crate) fn submit(
        self,
        commands: wgpu::CommandBuffer,
        staged: StagingEntry,
    ) -> Result<wgpu::SubmissionIndex> {
        let t = std::time::Instant::now();
        let (pass, unsettled) = self.into_parts();
        let (pass_commands, pass_entry) = pass.unzip();
        let sent = unsettled.engine.submit(
            pass_commands.into_iter().chain([commands]),
            pass_entry.into_iter().chain([staged]),
        );
        unsettled.engine.stats.submit_time += t.elapsed();
        unsettled.settle(sent.is_ok());
        sent
    }

    /// The held pass's commands and entry (if any), and what is settled after their
    /// submission (with no held pass left, dropping `self` takes nothing back).
    fn into_parts(mut self) -> (Option<(wgpu::CommandBuffer, StagingEntry)>, Unsettled<'e>) {
        let pass = self.held.take().map(|held| held.pass);
        let removals = pass.as_ref().map(|p| p.removals);
        let engine = self.engine.take().expect("the op's engine");
        (
            pass.map(|p| (p.commands, p.entry)),
            Unsettled { engine, removals },
        )
    }
}

/// A held pass handed to the queue: what its engine settles once the submission is made.
struct Unsettled<'e> {
    engine: &'e mut PassEngine,
    removals: Option<usize>,
}

impl Unsettled<'_> {
    fn settle(self, ok: bool) {
        let engine = self.engine;
        match (ok, self.removals) {
            (_, None) => {}
            // (The pass was counted when it was held, evictions included.)
            (false, Some(_)) => {
                engine.map.forget(&engine.plan.misses);
                if let Some(copy_back) = engine.copy_back.as_mut() {
                    copy_back.taken_back(&engine.ctx, false);
                }
            }
            (true, Some(removals)) => {
                if let Some(copy_back) = engine.copy_back.as_mut() {
                    copy_back.sent();
                }
                if let Some(index) = engine.index.as_mut() {
                    index.applied(removals);
                }
            }
        }
    }
}

/// Submits several ops' rows (each with its held pass, of caches on one context) and their
/// commands in **one** submission: a table-batched step's widths. The submission is
/// counted once, by the first op's engine; if it fails, every held pass's misses leave its
/// map.
pub(crate) fn submit_together(
    ops: Vec<(OpRows<'_>, wgpu::CommandBuffer, StagingEntry)>,
) -> Result<wgpu::SubmissionIndex> {
    let t = std::time::Instant::now();
    let mut commands = Vec::new();
    let mut entries = Vec::new();
    let mut unsettled = Vec::with_capacity(ops.len());
    for (rows, cmds, staged) in ops {
        let (pass, u) = rows.into_parts();
        if let Some((c, e)) = pass {
            commands.push(c);
            entries.push(e);
        }
        commands.push(cmds);
        entries.push(staged);
        unsettled.push(u);
    }
    let mut parts = unsettled.into_iter();
    let Some(first) = parts.next() else {
        return Err(crate::error::HotrowError::InvalidArgument(
            "nothing to submit".into(),
        ));
    };
    let sent = first.engine.submit(commands, entries);
    first.engine.stats.submit_time += t.elapsed();
    let ok = sent.is_ok();
    first.settle(ok);
    for u in parts {
        u.settle(ok);
    }
    sent
}

impl Drop for OpRows<'_> {
    fn drop(&mut self) {
        if let (Some(held), Some(engine)) = (self.held.take(), self.engine.as_deref_mut()) {
            engine.take_back_held(held);
        }
    }
}
