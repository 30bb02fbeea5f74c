//! The slot index's host side (resolution on the GPU): the GPU copy of id -> slot
//! (`slot + 1` per table row, 0 when not resident), its scratch, the removals the GPU has
//! not applied yet, and the probe that opens a batch: one submission uploads the ids,
//! applies pending removals, finds hits (a bitmap of touched slots) and misses (a list of
//! ids), and reads that answer back.

use super::stage::{align16, cast_mut, put_params, write_pairs};
use crate::cache::slot_map::PartitionedSlotMap;
use crate::error::{HotrowError, Result};
use crate::gpu::{
    encoder, map_read_with, GpuContext, GrowBuffer, Launch, StagingCopier, StagingEntry,
};
use crate::gpu::{ParamsAt, StagingRing, TrackedBuffer};
use crate::ops::slot_index::{self as kernels, Kernel, MapParams, HEADER_WORDS, NOT_RESIDENT};

pub(super) struct SlotIndex {
    slot_of: TrackedBuffer,
    /// The batch's ids (read by the probe and by the slot-list kernel).
    ids: GrowBuffer,
    /// The probe's output: miss count, touched bitmap, miss list.
    probe_out: GrowBuffer,
    readback: GrowBuffer,
    /// (key, value) changes to the index.
    pairs: GrowBuffer,
    probe: Launch,
    flush: Launch,
    remove: Launch,
    insert: Launch,
    position: Launch,
    /// Evicted ids whose removal has not reached the GPU: those of failed passes, then the
    /// current pass's (queued as soon as it resolves, so a pass that fails later keeps
    /// them). The next submission applies them before anything reads the index, and before
    /// its own insertions (a pass may evict a row and load it again, and a failed pass's
    /// evicted row may be loaded again by a later one).
    pending: Vec<u32>,
    bitmap_words: u64,
    /// Room of the miss list: a decaying high-water mark of the miss entries per batch.
    miss_room: usize,
    /// Distinct misses a pass resolved on the GPU is expected to have (decaying high-water
    /// mark; 0 before the first).
    pub(super) miss_estimate: usize,
    /// The last probe's answer: touched bitmap, missing ids (with repeats).
    pub(super) touched: Vec<u32>,
    pub(super) missing: Vec<u32>,
}

/// What a pass's commands use of the index, beside its pending removals (which the pool
/// writes into staging meanwhile).
pub(super) struct IndexParts<'a> {
    pub(super) slot_of: &'a wgpu::Buffer,
    /// The probe's ids.
    pub(super) ids: &'a GrowBuffer,
    pub(super) pairs: &'a mut GrowBuffer,
    pub(super) remove: &'a mut Launch,
    pub(super) insert: &'a mut Launch,
    pub(super) position: &'a mut Launch,
}

/// Where a probe's parts sit: in its staging entry (the ids, two params blocks, the
/// removal pairs) and in its output (header, touched bitmap, miss list).
#[derive(Clone, Copy, Debug)]
struct ProbeLayout {
    n: usize,
    params_off: u64,
    pairs_off: u64,
    total: u64,
    out_bytes: u64,
}

impl ProbeLayout {
    fn new(n: usize, room: usize, bitmap_words: u64, removals: usize) -> Self {
        let params_off = align16(n as u64 * 4);
        let pairs_off = align16(params_off + 2 * kernels::PARAMS_BYTES);
        Self {
            n,
            params_off,
            pairs_off,
            total: pairs_off + removals as u64 * 8,
            out_bytes: (HEADER_WORDS + bitmap_words + room as u64) * 4,
        }
    }
}

/// The index's buffers and launches a probe records with.
struct ProbeParts<'a> {
    slot_of: &'a wgpu::Buffer,
    ids: &'a mut GrowBuffer,
    out: &'a mut GrowBuffer,
    readback: &'a mut GrowBuffer,
    pairs: &'a mut GrowBuffer,
    probe: &'a mut Launch,
    flush: &'a mut Launch,
}

impl ProbeParts<'_> {
    /// The probe's commands: ids up, pending removals applied, the output cleared, the
    /// probe, the output copied to the readback buffer (returned).
    fn record(
        self,
        ctx: &GpuContext,
        copier: &StagingCopier,
        lay: &ProbeLayout,
        bitmap_words: u64,
        removals: usize,
    ) -> Result<(wgpu::CommandEncoder, wgpu::Buffer)> {
        let mut enc = encoder(ctx, "hotrow probe");
        let staging = copier.buffer();
        let ids_bytes = lay.n as u64 * 4;
        let ids_dev = self.ids.get(ctx, ids_bytes)?.clone();
        copier.copy_to(&mut enc, 0, &ids_dev, 0, ids_bytes);
        if removals > 0 {
            let bytes = removals as u64 * 8;
            let pairs_dev = self.pairs.get(ctx, bytes)?.clone();
            copier.copy_to(&mut enc, lay.pairs_off, &pairs_dev, 0, bytes);
            let params = ParamsAt::staged(
                staging,
                lay.params_off + kernels::PARAMS_BYTES,
                kernels::PARAMS_BYTES,
            );
            kernels::encode(
                ctx,
                &mut enc,
                Kernel::Assign,
                removals,
                &pairs_dev,
                self.slot_of,
                &pairs_dev,
                self.flush,
                params,
            )?;
        }
        let out = self.out.get(ctx, lay.out_bytes)?.clone();
        enc.clear_buffer(&out, 0, Some((HEADER_WORDS + bitmap_words) * 4));
        kernels::encode(
            ctx,
            &mut enc,
            Kernel::Probe,
            lay.n,
            &ids_dev,
            self.slot_of,
            &out,
            self.probe,
            ParamsAt::staged(staging, lay.params_off, kernels::PARAMS_BYTES),
        )?;
        let back = self.readback.get(ctx, lay.out_bytes)?.clone();
        enc.copy_buffer_to_buffer(&out, 0, &back, 0, lay.out_bytes);
        Ok((enc, back))
    }
}

/// A probe recorded and written: what its submission takes, and the answer to read after it.
pub(super) struct Probe {
    pub(super) commands: wgpu::CommandBuffer,
    pub(super) entry: StagingEntry,
    pub(super) answer: ProbeAnswer,
}

impl SlotIndex {
    pub(super) fn new(ctx: &GpuContext, rows: usize, capacity: usize) -> Result<Self> {
        kernels::prepare(ctx)?;
        let rw = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        // A new buffer reads as zeros: every row not resident.
        let usage = rw | wgpu::BufferUsages::COPY_SRC; // read back by the consistency check
        let slot_of = ctx.create_buffer("hotrow slot index", rows as u64 * 4, usage, false)?;
        Ok(Self {
            slot_of,
            ids: GrowBuffer::storage("hotrow probe ids"),
            probe_out: GrowBuffer::new("hotrow probe output", rw | wgpu::BufferUsages::COPY_SRC),
            readback: GrowBuffer::new(
                "hotrow probe readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            pairs: GrowBuffer::storage("hotrow slot index changes"),
            probe: Launch::default(),
            flush: Launch::default(),
            remove: Launch::default(),
            insert: Launch::default(),
            position: Launch::default(),
            pending: Vec::new(),
            bitmap_words: kernels::bitmap_words(capacity),
            miss_room: 0,
            miss_estimate: 0,
            touched: Vec::new(),
            missing: Vec::new(),
        })
    }

    pub(super) fn bytes(&self) -> u64 {
        self.slot_of.size()
            + self.ids.bytes()
            + self.probe_out.bytes()
            + self.readback.bytes()
            + self.pairs.bytes()
    }

    /// Removals not yet applied on the GPU (the next submission writes them first).
    pub(super) fn pending(&self) -> &[u32] {
        &self.pending
    }

    /// The pending removals, and what a pass's commands use.
    pub(super) fn parts(&mut self) -> (&[u32], IndexParts<'_>) {
        let parts = IndexParts {
            slot_of: &self.slot_of,
            ids: &self.ids,
            pairs: &mut self.pairs,
            remove: &mut self.remove,
            insert: &mut self.insert,
            position: &mut self.position,
        };
        (&self.pending, parts)
    }

    /// Queues the removals of a pass's evictions.
    pub(super) fn queue_removals(&mut self, evicted: &[u32]) {
        self.pending.extend_from_slice(evicted);
    }

    /// The first `n` pending removals reached the GPU (their submission went).
    pub(super) fn applied(&mut self, n: usize) {
        self.pending.drain(..n);
    }

    /// After a pass that never reached the GPU was undone: of its evictions (queued last),
    /// only those of rows that did not go back to their slots (`back(k)` false for
    /// `evicted[k]`) stay pending.
    pub(super) fn undo_removals(&mut self, evicted: &[u32], back: impl Fn(usize) -> bool) {
        undo_removals(&mut self.pending, evicted, back);
    }

    /// Records the probe of `ids` into a staging entry of `ring` (ids, params, pending
    /// removals written by the pool while this thread records the commands).
    pub(super) fn record_probe(
        &mut self,
        ctx: &GpuContext,
        ring: &mut StagingRing,
        ids: &[u32],
    ) -> Result<Probe> {
        let n = ids.len();
        if self.miss_room == 0 {
            self.miss_room = n; // the first batch: no estimate yet
        }
        let room = self.miss_room.min(n).max(1);
        let bw = self.bitmap_words;
        let lay = ProbeLayout::new(n, room, bw, self.pending.len());
        let mut entry = ring.acquire(ctx, lay.total)?;
        let Self {
            slot_of,
            ids: ids_buf,
            probe_out,
            readback,
            pairs: pairs_buf,
            probe: probe_launch,
            flush,
            pending,
            ..
        } = self;
        let parts = ProbeParts {
            slot_of,
            ids: ids_buf,
            out: probe_out,
            readback,
            pairs: pairs_buf,
            probe: probe_launch,
            flush,
        };
        let pending = &*pending;
        let copier = entry.copier();
        let params = [
            kernels::probe_params(ctx, n, bw, room),
            kernels::params(ctx, pending.len(), 0),
        ];
        // The commands are recorded on this thread while the pool's threads write the ids
        // into staging (hundreds of thousands of them in a W6 step; each half takes tens of
        // microseconds). wgpu checks that the entry is unmapped only at submission.
        let (recorded, filled) = entry.write(|bytes| {
            rayon::join(
                || parts.record(ctx, &copier, &lay, bw, pending.len()),
                || fill_probe(bytes, ids, lay.params_off, lay.pairs_off, &params, pending),
            )
        })?;
        filled?;
        let (enc, readback) = recorded?;
        Ok(Probe {
            commands: enc.finish(),
            entry,
            answer: ProbeAnswer {
                readback,
                out_bytes: lay.out_bytes,
                room,
                removals: pending.len(),
            },
        })
    }

    /// After the probe's submission: reads its answer back into `touched` and `missing`.
    /// Returns `false` when the miss list overflowed its room (the batch then takes the
    /// host path; the room grows for the next batch).
    pub(super) fn read_probe(&mut self, ctx: &GpuContext, probe: ProbeAnswer) -> Result<bool> {
        let (room, bw) = (probe.room, self.bitmap_words);
        let (touched, missing) = (&mut self.touched, &mut self.missing);
        let count = map_read_with(ctx, &probe.readback, 0, probe.out_bytes, |bytes| {
            let words: &[u32] = bytemuck::cast_slice(bytes);
            let count = words[0] as usize;
            let bitmap = &words[HEADER_WORDS as usize..(HEADER_WORDS + bw) as usize];
            touched.clear();
            touched.extend_from_slice(bitmap);
            missing.clear();
            let list = &words[(HEADER_WORDS + bw) as usize..];
            missing.extend_from_slice(&list[..count.min(room)]);
            count
        })?;
        // Room for the next batch: a decaying high-water mark with 25% headroom.
        let want = count + count / 4 + 256;
        self.miss_room = want.max(self.miss_room - self.miss_room / 16);
        Ok(count <= room)
    }

    /// Compares the GPU's index with the slot map, row by row (rows whose removal is still
    /// pending excepted).
    pub(super) fn check_against(&self, ctx: &GpuContext, map: &PartitionedSlotMap) -> Result<()> {
        let rows = (self.slot_of.size() / 4) as usize;
        let gpu = crate::gpu::read_f32(ctx, &self.slot_of, 0, rows)?;
        for (id, v) in gpu.iter().enumerate() {
            let want = map.slot_of(id as u32).map_or(NOT_RESIDENT, |s| s + 1);
            let pending = self.pending.contains(&(id as u32));
            if v.to_bits() != want && !(pending && want == NOT_RESIDENT) {
                return Err(HotrowError::Gpu(format!(
                    "slot index: row {id} holds {} but the slot map says {want}",
                    v.to_bits()
                )));
            }
        }
        Ok(())
    }
}

/// A submitted probe's answer, to be read back ([`SlotIndex::read_probe`]).
pub(super) struct ProbeAnswer {
    readback: wgpu::Buffer,
    out_bytes: u64,
    room: usize,
    /// Pending removals the probe applies.
    removals: usize,
}

impl ProbeAnswer {
    /// Pending removals the probe's submission applied.
    pub(super) fn removals(&self) -> usize {
        self.removals
    }
}

/// Writes a probe's staging: the ids, then at `params_off` the probe's and the flush's
/// params blocks, then at `pairs_off` the pending removals as (id, not resident) pairs.
fn fill_probe(
    bytes: &mut [u8],
    ids: &[u32],
    params_off: u64,
    pairs_off: u64,
    params: &[MapParams; 2],
    pending: &[u32],
) -> Result<()> {
    let (head, tail) = bytes.split_at_mut(params_off as usize);
    crate::util::copy_parallel(cast_mut::<u32>(&mut head[..ids.len() * 4])?, ids);
    let (blocks, pairs) = tail.split_at_mut((pairs_off - params_off) as usize);
    let mut blocks = blocks.chunks_exact_mut(kernels::PARAMS_BYTES as usize);
    put_params(&mut blocks, params.iter().copied());
    write_pairs(cast_mut::<u32>(pairs)?, pending, |&id| [id, NOT_RESIDENT]);
    Ok(())
}

/// [`SlotIndex::undo_removals`] over a plain list: `evicted` were queued last on `pending`;
/// those for which `back(k)` holds are dropped, the others stay, in order.
fn undo_removals(pending: &mut Vec<u32>, evicted: &[u32], back: impl Fn(usize) -> bool) {
    let queued = pending.len() - evicted.len();
    debug_assert_eq!(
        &pending[queued..],
        evicted,
        "a pass's evictions are queued last"
    );
    pending.truncate(queued);
    pending.extend((0..evicted.len()).filter(|&k| !back(k)).map(|k| evicted[k]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_stages_its_ids_params_and_pending_removals() {
        let ids: Vec<u32> = (0..37).map(|i| i * 3).collect();
        let lay = ProbeLayout::new(37, 10, 5, 3);
        let (params_off, pairs_off) = (lay.params_off, lay.pairs_off);
        assert!(params_off >= 37 * 4 && params_off % 16 == 0 && pairs_off % 16 == 0);
        assert_eq!(pairs_off, params_off + 2 * kernels::PARAMS_BYTES);
        assert_eq!(lay.total, pairs_off + 3 * 8);
        assert_eq!(lay.out_bytes, (HEADER_WORDS + 5 + 10) * 4);
        let params: [MapParams; 2] = [bytemuck::cast([4u32; 8]), bytemuck::cast([5u32; 8])];
        let pending = [11u32, 12, 13];
        let mut staging = vec![u32::MAX; (pairs_off as usize + 3 * 8) / 4 + 4];
        let bytes = bytemuck::cast_slice_mut(&mut staging);
        fill_probe(bytes, &ids, params_off, pairs_off, &params, &pending).unwrap();
        assert_eq!(&staging[..37], &ids[..]);
        let p = params_off as usize / 4;
        assert_eq!(&staging[p..p + 16], &[[4u32; 8], [5; 8]].concat()[..]);
        let q = pairs_off as usize / 4;
        assert_eq!(
            &staging[q..q + 6],
            &[11, NOT_RESIDENT, 12, NOT_RESIDENT, 13, NOT_RESIDENT]
        );
        assert!(staging[q + 6..].iter().all(|&w| w == u32::MAX));
    }

    #[test]
    fn undone_evictions_leave_only_rows_that_did_not_go_back() {
        // Removals of two failed passes (1, 2), then this pass's evictions 7, 8, 9.
        let mut pending = vec![1, 2, 7, 8, 9];
        undo_removals(&mut pending, &[7, 8, 9], |k| k != 1);
        assert_eq!(pending, [1, 2, 8]);
        let mut none_back = vec![7, 8];
        undo_removals(&mut none_back, &[7, 8], |_| false);
        assert_eq!(none_back, [7, 8]);
        let mut all_back = vec![3, 7];
        undo_removals(&mut all_back, &[7], |_| true);
        assert_eq!(all_back, [3]);
        let mut nothing = vec![4];
        undo_removals(&mut nothing, &[], |_| true);
        assert_eq!(nothing, [4]);
    }
}
