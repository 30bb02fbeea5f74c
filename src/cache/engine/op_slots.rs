//! The backward of an op reads its rows through the op's own slot list.
//!
//! A training step is an op (bags, a lookup) and then the backward of the very same batch.
//! The op's pass made every row of the batch resident and wrote a slot per position; when
//! nothing runs in between, the backward finds each distinct row's slot at one of its
//! positions instead of resolving the distinct ids in a pass of their own (a second chain
//! of phases on the GPU-driven path, a second resolution on the host path). Kept only for
//! an op whose batch took one pass over unsharded slots and left no row in a transient
//! slot; every pass forgets it, and so does a pass taken back. Each op gets a serial, so
//! the caller can tell that the slot list kept is its batch's (`group_ahead.rs` keeps the
//! serial of the forward whose batch it grouped).

use super::held::OpRows;
use super::PassEngine;

/// The last op's slot list: `n` positions, a slot each (the passes' `pos_slots`).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct OpSlots {
    /// The kept op's serial and positions; `None` once forgotten.
    kept: Option<(u64, usize)>,
    /// The serial the next op gets.
    next: u64,
}

impl PassEngine {
    /// Keeps the slot list of the op pass just recorded over `n` positions (all of its
    /// batch, unsharded slots), unless a row of it sits in a transient slot.
    pub(super) fn keep_op_slots(&mut self, n: usize) {
        let transient = match &self.driven {
            Some(d) => d.admits(),
            None => self.plan.transient > 0,
        };
        let s = &mut self.op_slots;
        s.kept = (!transient).then_some((s.next, n));
        s.next += 1;
    }

    /// Forgets the kept slot list: a pass is about to run, or one was taken back.
    pub(super) fn forget_op_slots(&mut self) {
        self.op_slots.kept = None;
    }

    /// The serial of the op whose slot list is kept (`None`: none is).
    pub(crate) fn op_serial(&self) -> Option<u64> {
        self.op_slots.kept.map(|(serial, _)| serial)
    }

    /// Whether the slot list of op `serial`, `n` positions, is still kept.
    pub(crate) fn has_op_slots(&self, serial: u64, n: usize) -> bool {
        self.op_slots.kept == Some((serial, n))
    }

    /// The kept op's rows, read through its slot list ([`PassEngine::has_op_slots`] first:
    /// nothing ran since, so the list is the passes' current one).
    pub(crate) fn rows_of_op(&mut self) -> OpRows<'_> {
        debug_assert!(self.op_slots.kept.is_some(), "no op's slot list kept");
        OpRows::direct(self, None)
    }
}
