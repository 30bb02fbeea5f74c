//! Training's changed rows leaving the slots on the host path, without stalling the
//! stream. An update marks its slots dirty (here, on the host: the slot map is the host's).
//! A pass that evicts a dirty row copies its stored words out in the pass's own submission,
//! before the missed rows overwrite its slot: a stored-words gather into scratch, then a
//! copy into a readback buffer mapped asynchronously ([`Returning`], one per submission in
//! flight). The host waits for such a copy only when it needs one of its rows: a later
//! pass misses the row again, a flush, or too many copies in flight. Arrived rows go to
//! [`TrainedRows`], which the passes read before the row source.

use std::collections::{HashMap, VecDeque};

use futures::channel::oneshot;

use super::trained_rows::TrainedRows;
use super::{PassEngine, Written};
use crate::cache::slot_map::{PartitionedSlotMap, PassPlan};
use crate::error::{HotrowError, Result};
use crate::gpu::{encoder, submit_encoder, GpuContext, GrowBuffer, Launch, RowBuffer};
use crate::gpu::{TrackedBuffer, MAP_TIMEOUT};
use crate::ops::copy_rows::{self, Direction};
use crate::table::RowSource;

/// Copies in flight past which a pass waits for the oldest (each holds a readback buffer).
const MAX_IN_FLIGHT: usize = 8;

/// One copy of evicted dirty rows: recorded with its pass, then in flight once the pass is
/// submitted, until its buffer is mapped and its rows go to [`TrainedRows`].
struct Returning {
    /// The rows' ids and the slots they left.
    rows: Vec<(u32, u32)>,
    /// Its number among the copies sent ([`InFlightRows`]); set when sent.
    sent: u64,
    buffer: TrackedBuffer,
    bytes: u64,
    mapping: Mapping,
}

/// Where a copy's mapping stands.
enum Mapping {
    /// Recorded, its pass not yet submitted.
    NotAsked,
    Pending(oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>),
    /// The map's outcome (`Err`: it failed, or its callback was dropped).
    Done(std::result::Result<(), String>),
}

impl Returning {
    /// Whether the mapping finished (checking without waiting).
    fn arrived(&mut self) -> bool {
        if let Mapping::Pending(rx) = &mut self.mapping {
            match rx.try_recv() {
                Ok(None) => return false,
                Ok(Some(r)) => self.mapping = Mapping::Done(r.map_err(|e| e.to_string())),
                Err(_) => self.mapping = Mapping::Done(Err("its callback was dropped".into())),
            }
        }
        matches!(self.mapping, Mapping::Done(_))
    }
}

pub(crate) struct CopyBack {
    /// Per slot: its row changed since it was loaded or last copied out.
    dirty: Vec<bool>,
    /// The copy recorded with the pass not yet submitted (its rows' marks cleared).
    recorded: Option<Returning>,
    in_flight: VecDeque<Returning>,
    returning: InFlightRows,
    kept: TrainedRows,
    row_bytes: u64,
    slot_list: GrowBuffer,
    scratch: GrowBuffer,
    launches: Vec<Launch>,
}

impl CopyBack {
    /// For `capacity` slots over a table of `rows` rows stored as `words` words each;
    /// `state`: the rows carry optimizer state.
    pub(crate) fn new(capacity: usize, rows: usize, words: usize, state: bool) -> Self {
        Self {
            dirty: vec![false; capacity],
            recorded: None,
            in_flight: VecDeque::new(),
            returning: InFlightRows::new(rows),
            kept: TrainedRows::new(words, state),
            row_bytes: words as u64 * 4,
            slot_list: GrowBuffer::storage("hotrow copy-back slots"),
            scratch: GrowBuffer::new(
                "hotrow copy-back rows",
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            ),
            launches: Vec::new(),
        }
    }

    /// The rows a pass reads before the row source.
    pub(crate) fn kept(&self) -> &TrainedRows {
        &self.kept
    }

    /// Host bytes held (kept rows, marks and the in-flight bitmap).
    pub(crate) fn host_bytes(&self) -> u64 {
        self.kept.bytes() + self.dirty.len() as u64 + self.returning.bytes()
    }

    /// Device scratch held.
    pub(crate) fn device_bytes(&self) -> u64 {
        self.slot_list.bytes() + self.scratch.bytes()
    }

    /// Marks the slots of `ids` (resident: an update just changed them) dirty.
    pub(crate) fn mark(&mut self, map: &PartitionedSlotMap, ids: &[u32]) {
        for &id in ids {
            if let Some(slot) = map.slot_of(id) {
                self.dirty[slot as usize] = true;
            }
        }
    }

    /// Before a pass over `ids`: takes in the copies that arrived; waits for all of them
    /// if one carries a row of `ids` (the pass may miss it: its words must be kept first),
    /// or for the oldest when too many are in flight.
    pub(crate) fn before_pass(&mut self, ctx: &GpuContext, ids: &[u32]) -> Result<()> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        ctx.device()
            .poll(wgpu::PollType::Poll)
            .map_err(|e| HotrowError::DeviceLost(e.to_string()))?;
        self.take_arrived(ctx)?;
        if self.in_flight.is_empty() {
            return Ok(());
        }
        if ids.iter().any(|&id| self.returning.contains(id)) {
            return self.wait_all(ctx);
        }
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.wait(ctx, 1)?;
        }
        Ok(())
    }

    /// Takes in the copies at the front that have arrived.
    fn take_arrived(&mut self, ctx: &GpuContext) -> Result<()> {
        while self.in_flight.front_mut().is_some_and(Returning::arrived) {
            let copy = self.in_flight.pop_front().expect("the front copy");
            if let Mapping::Done(Err(e)) = &copy.mapping {
                ctx.check()?;
                return Err(HotrowError::Map(format!(
                    "a copy of {} trained rows out of the cache: {e}",
                    copy.rows.len()
                )));
            }
            self.keep(ctx, copy)?;
        }
        Ok(())
    }

    /// An arrived copy's rows into the kept rows; its buffer back to the pool.
    fn keep(&mut self, ctx: &GpuContext, copy: Returning) -> Result<()> {
        let words = self.row_bytes as usize / 4;
        {
            let view = copy
                .buffer
                .get_mapped_range(0..copy.bytes)
                .map_err(|e| HotrowError::Map(e.to_string()))?;
            let all: &[u32] = bytemuck::cast_slice(&view);
            for (&(id, _), row) in copy.rows.iter().zip(all.chunks_exact(words)) {
                self.kept.put(id, row);
            }
        }
        copy.buffer.unmap();
        self.returning
            .arrived(copy.sent, copy.rows.iter().map(|&(id, _)| id));
        ctx.return_readback(copy.buffer);
        Ok(())
    }

    fn wait_all(&mut self, ctx: &GpuContext) -> Result<()> {
        self.wait(ctx, self.in_flight.len())
    }

    /// Waits until the first `n` copies in flight arrived, and takes them in.
    fn wait(&mut self, ctx: &GpuContext, n: usize) -> Result<()> {
        let n = n.min(self.in_flight.len());
        let copies = &mut self.in_flight;
        ctx.poll_until(None, MAP_TIMEOUT, || {
            copies.iter_mut().take(n).all(Returning::arrived)
        })?;
        self.take_arrived(ctx)
    }

    /// Records, at the start of a pass's commands, the copy of the dirty rows `plan`
    /// evicts (their marks cleared: their slots now take the missed rows).
    pub(crate) fn encode_victims(
        &mut self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        slots: &RowBuffer,
        plan: &PassPlan,
    ) -> Result<()> {
        debug_assert!(self.recorded.is_none(), "one pass recorded at a time");
        let rows: Vec<(u32, u32)> = plan
            .evicted
            .iter()
            .zip(&plan.evicted_slots)
            .filter(|&(_, &slot)| self.dirty[slot as usize])
            .map(|(&id, &slot)| (id, slot))
            .collect();
        // The pass's missed rows arrive clean (their slots' old rows are being copied out,
        // or were free).
        for &(_, slot) in &plan.misses {
            self.dirty[slot as usize] = false;
        }
        if rows.is_empty() {
            return Ok(());
        }
        self.recorded = Some(self.encode_copy(ctx, enc, slots, rows)?);
        Ok(())
    }

    /// Records, after the pass's scatter, the rows the pass evicted dirty and loads again
    /// (the slot map may do both in one pass): their row source values are stale, so
    /// their copied-out words go into their new slots.
    pub(crate) fn encode_reloads(
        &self,
        enc: &mut wgpu::CommandEncoder,
        slots: &RowBuffer,
        plan: &PassPlan,
    ) {
        let Some(copy) = &self.recorded else { return };
        let Some(scratch) = self.scratch.current() else {
            return;
        };
        let victims: std::collections::HashMap<u32, usize> = copy
            .rows
            .iter()
            .enumerate()
            .map(|(k, &(id, _))| (id, k))
            .collect();
        let shard = slots.shards().next().expect("a training cache's one shard");
        for &(id, slot) in &plan.misses {
            if let Some(&k) = victims.get(&id) {
                let (from, to) = (k as u64 * self.row_bytes, slot as u64 * self.row_bytes);
                enc.copy_buffer_to_buffer(scratch, from, shard, to, self.row_bytes);
            }
        }
    }

    /// Records the copy of `rows` (ids and slots) into a pooled readback buffer.
    fn encode_copy(
        &mut self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        slots: &RowBuffer,
        rows: Vec<(u32, u32)>,
    ) -> Result<Returning> {
        let n = rows.len();
        let list: Vec<u32> = rows.iter().map(|&(_, slot)| slot).collect();
        let bytes = n as u64 * self.row_bytes;
        // (Written at the next submission, before its commands: this pass's.)
        let list_buf = self.slot_list.get(ctx, n as u64 * 4)?.clone();
        ctx.queue()
            .write_buffer(&list_buf, 0, bytemuck::cast_slice(&list));
        let scratch = self.scratch.get(ctx, bytes)?.clone();
        copy_rows::encode(
            ctx,
            enc,
            Direction::GatherStored,
            slots,
            &list_buf,
            n,
            &scratch,
            0,
            &mut self.launches,
            None,
        )?;
        let buffer = ctx.take_readback(bytes)?;
        enc.copy_buffer_to_buffer(&scratch, 0, &buffer, 0, bytes);
        Ok(Returning {
            rows,
            sent: 0,
            buffer,
            bytes,
            mapping: Mapping::NotAsked,
        })
    }

    /// The pass whose copy was recorded was submitted: the copy is in flight.
    pub(crate) fn sent(&mut self) {
        let Some(mut copy) = self.recorded.take() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        copy.buffer
            .map_async(wgpu::MapMode::Read, 0..copy.bytes, move |r| {
                let _ = tx.send(r);
            });
        copy.mapping = Mapping::Pending(rx);
        copy.sent = self.returning.send(copy.rows.iter().map(|&(id, _)| id));
        self.in_flight.push_back(copy);
    }

    /// The pass whose copy was recorded was taken back: if it never reached the queue
    /// (`restore`) its evicted rows are back in their slots, dirty again; else its copy
    /// did not run and its rows are lost with the failed submission.
    pub(crate) fn taken_back(&mut self, ctx: &GpuContext, restore: bool) {
        let Some(copy) = self.recorded.take() else {
            return;
        };
        if restore {
            for &(_, slot) in &copy.rows {
                self.dirty[slot as usize] = true;
            }
        } else {
            log::error!(
                "hotrow: a submission carrying {} trained rows out of the cache failed; they \
                 are lost",
                copy.rows.len()
            );
        }
        ctx.return_readback(copy.buffer);
    }

    /// A flush: copies every dirty resident row out, waits for every copy, and returns the
    /// rows the row source does not have yet.
    pub(crate) fn flush(
        &mut self,
        ctx: &GpuContext,
        slots: &RowBuffer,
        map: &PartitionedSlotMap,
    ) -> Result<Written> {
        let mut rows: Vec<(u32, u32)> = map
            .resident()
            .into_iter()
            .filter_map(|id| map.slot_of(id).map(|slot| (id, slot)))
            .filter(|&(_, slot)| self.dirty[slot as usize])
            .collect();
        rows.sort_unstable_by_key(|&(_, slot)| slot);
        if !rows.is_empty() {
            let mut enc = encoder(ctx, "hotrow flush");
            let copy = self.encode_copy(ctx, &mut enc, slots, rows)?;
            let sub = submit_encoder(ctx, enc);
            if let Err(e) = sub {
                ctx.return_readback(copy.buffer);
                return Err(e);
            }
            for &(_, slot) in &copy.rows {
                self.dirty[slot as usize] = false;
            }
            self.recorded = Some(copy);
            self.sent();
        }
        self.wait_all(ctx)?;
        Ok(self.kept.unflushed())
    }

    /// The row source now has `ids` as kept.
    pub(crate) fn flushed(&mut self, ids: &[u32]) {
        self.kept.flushed(ids);
    }

    /// What a flush can still hand the row source after the device is lost: the rows kept
    /// and those of copies that arrived before the loss (copies that did not, and dirty
    /// resident rows, are lost).
    pub(crate) fn salvage(&mut self, ctx: &GpuContext) -> Written {
        let copies = std::mem::take(&mut self.in_flight);
        for mut copy in copies {
            if copy.arrived() && matches!(copy.mapping, Mapping::Done(Ok(()))) {
                let _ = self.keep(ctx, copy);
            } else {
                self.in_flight.push_back(copy);
            }
        }
        self.kept.unflushed()
    }

    /// Dirty resident rows and rows in copies in flight: what a device loss now would lose.
    pub(crate) fn at_risk(&self) -> usize {
        self.dirty.iter().filter(|&&d| d).count()
            + self.in_flight.iter().map(|c| c.rows.len()).sum::<usize>()
    }
}

/// The table rows in copies in flight: a bit per row for the check every pass makes, and
/// the newest copy carrying each. A row evicted, loaded again in the same pass (from the
/// copy's scratch) and evicted again sits in two copies at once; the older copy's arrival
/// must not clear it, or a pass would read the older words while the newer are in flight.
struct InFlightRows {
    bits: Vec<u64>,
    newest: HashMap<u32, u64>,
    sent: u64,
}

impl InFlightRows {
    fn new(rows: usize) -> Self {
        Self {
            bits: vec![0; rows.div_ceil(64)],
            newest: HashMap::new(),
            sent: 0,
        }
    }

    fn contains(&self, id: u32) -> bool {
        self.bits[id as usize / 64] >> (id % 64) & 1 == 1
    }

    /// A copy of rows `ids` was sent; returns its number.
    fn send(&mut self, ids: impl Iterator<Item = u32>) -> u64 {
        self.sent += 1;
        for id in ids {
            self.bits[id as usize / 64] |= 1 << (id % 64);
            self.newest.insert(id, self.sent);
        }
        self.sent
    }

    /// Copy number `sent` (of rows `ids`) arrived: its rows no newer copy carries are no
    /// longer in flight.
    fn arrived(&mut self, sent: u64, ids: impl Iterator<Item = u32>) {
        for id in ids {
            if self.newest.get(&id) == Some(&sent) {
                self.newest.remove(&id);
                self.bits[id as usize / 64] &= !(1 << (id % 64));
            }
        }
    }

    fn bytes(&self) -> u64 {
        self.bits.len() as u64 * 8 + self.newest.capacity() as u64 * 16
    }
}

impl PassEngine {
    /// A training cache's flush, either path: writes every changed resident row where the
    /// rows that left are (the table in host memory; the kept rows), waits, and returns the
    /// rows the row source does not have yet.
    pub(crate) fn flush_written(&mut self) -> Result<Written> {
        match self.copy_back.as_mut() {
            Some(copy_back) => copy_back.flush(&self.ctx, &self.slots, &self.map),
            None => self.flush_table(),
        }
    }

    /// The row source took the rows of the last [`PassEngine::flush_written`].
    pub(crate) fn written_done(&mut self, ids: &[u32]) -> Result<()> {
        match self.copy_back.as_mut() {
            Some(copy_back) => {
                copy_back.flushed(ids);
                Ok(())
            }
            None => self.table_flushed(),
        }
    }

    /// After the device is lost: the changed rows host memory still holds and the row
    /// source does not have (`None`: nothing can be read).
    pub(crate) fn salvage_written<S: RowSource>(&mut self, source: &S) -> Result<Option<Written>> {
        match self.copy_back.as_mut() {
            Some(copy_back) => Ok(Some(copy_back.salvage(&self.ctx))),
            None => self.salvage_table(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::InFlightRows;

    #[test]
    fn a_row_in_two_copies_stays_in_flight_until_the_newer_arrives() {
        let mut f = InFlightRows::new(200);
        let a = f.send([1u32, 2, 130].into_iter());
        // row 1 loaded again in the pass that evicted it, trained, evicted again
        let b = f.send([1u32, 7].into_iter());
        assert!(f.contains(1) && f.contains(2) && f.contains(130) && f.contains(7));
        f.arrived(a, [1u32, 2, 130].into_iter());
        assert!(f.contains(1), "the newer copy still carries row 1");
        assert!(f.contains(7));
        assert!(!f.contains(2) && !f.contains(130));
        f.arrived(b, [1u32, 7].into_iter());
        assert!((0..200).all(|id| !f.contains(id)));
        assert!(f.newest.is_empty());
    }
}
