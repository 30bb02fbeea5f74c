//! Staging and recording one resolved pass: the slot list, the params blocks and the slot
//! index's changes are written into the pass's staging entry (beside the missed slots and
//! rows already there) by the pool's threads while this thread records the commands: copies
//! up, scatter of the missed rows into their slots, the index's removals then insertions,
//! the slot list (from the index with resolution on the GPU), gather of the output.

use std::time::Instant;

use super::copy_back::CopyBack;
use super::read::read_rows_encoded;
use super::slot_index::IndexParts;
use super::stage::{cast_mut, put_params, write_pairs, Room, StagingLayout};
use super::{PassBuffers, PassEngine, PassTimes, RecordedPass, Target};
use crate::cache::slot_map::PassPlan;
use crate::error::Result;
use crate::gpu::{encoder, GpuContext, ParamsAt, RowBuffer, StagingCopier, StagingEntry};
use crate::ops::copy_rows::{self, CopyParams, Direction};
use crate::ops::slot_index::{self as kernels, Kernel, MapParams, NOT_RESIDENT};
use crate::table::RowSource;

/// What [`fill_staging`] writes besides the rows: plain values, so the layout of a pass's
/// staging entry is tested without a GPU.
pub(super) struct Fill<'a> {
    /// The slot of each position, when the host writes the slot list.
    pub(super) slot_list: Option<&'a [u32]>,
    /// The copy kernels' params blocks: scatter (one per shard), then gather.
    pub(super) copy_params: &'a [CopyParams],
    /// The slot index's changes and params blocks, with a slot index.
    pub(super) index: Option<IndexFill<'a>>,
}

pub(super) struct IndexFill<'a> {
    /// Pending removals (this pass's evictions last).
    pub(super) removals: &'a [u32],
    /// `(id, slot)` insertions.
    pub(super) misses: &'a [(u32, u32)],
    /// Removal, insertion, and (resolution on the GPU) slot-list params blocks.
    pub(super) params: &'a [MapParams],
}

/// Writes `fill` into `bytes`, a pass's staging entry laid out as `lay`.
pub(super) fn fill_staging(bytes: &mut [u8], lay: &StagingLayout, fill: &Fill<'_>) -> Result<()> {
    if let Some(slots) = fill.slot_list {
        debug_assert!(slots.len() as u64 * 4 <= lay.pos_room);
        crate::util::copy_parallel(cast_mut::<u32>(&mut bytes[..slots.len() * 4])?, slots);
    }
    let mut blocks = bytes[lay.params_off as usize..lay.index_params_off as usize]
        .chunks_exact_mut(copy_rows::PARAMS_BYTES as usize);
    put_params(&mut blocks, fill.copy_params.iter().copied());
    let Some(index) = &fill.index else {
        return Ok(());
    };
    let (removals, m) = (index.removals.len(), index.misses.len());
    debug_assert!(removals + m <= lay.pairs_room);
    let room = &mut bytes[lay.pairs_off as usize..lay.rows_off as usize];
    let words = cast_mut::<u32>(room)?;
    let (gone, added) = words[..2 * (removals + m)].split_at_mut(2 * removals);
    write_pairs(gone, index.removals, |&id| [id, NOT_RESIDENT]);
    write_pairs(added, index.misses, |&(id, slot)| [id, slot + 1]);
    let mut blocks = bytes[lay.index_params_off as usize..lay.pairs_off as usize]
        .chunks_exact_mut(kernels::PARAMS_BYTES as usize);
    put_params(&mut blocks, index.params.iter().copied());
    Ok(())
}

impl PassEngine {
    /// Room for the slot index's changes of a pass with up to `rows` misses (the pending
    /// removals, then at most one eviction and one insertion per miss); 0 without an index.
    pub(super) fn pairs_room(&self, rows: usize) -> usize {
        self.index
            .as_ref()
            .map_or(0, |i| i.pending().len() + 2 * rows)
    }

    /// The staging layout of a pass with room for `rows` missed rows, over `positions`
    /// positions whose slots the host writes.
    pub(super) fn staging_layout(
        &self,
        positions: usize,
        rows: usize,
        target: Target<'_>,
        on_gpu: bool,
    ) -> StagingLayout {
        StagingLayout::new(Room {
            shards: self.slots.shards().len(),
            positions,
            rows,
            row_bytes: self.layout.row_bytes(),
            gather: matches!(target, Target::Gather(..)),
            pairs: self.pairs_room(rows),
            index_blocks: if on_gpu { 3 } else { 2 },
        })
    }

    /// The serial copy: the last plan's missed slots and rows go into an entry sized for
    /// exactly them (after resolution), then the pass is recorded.
    pub(super) fn record_serially<S: RowSource>(
        &mut self,
        source: &S,
        n: usize,
        target: Target<'_>,
        on_gpu: bool,
        mut times: PassTimes,
    ) -> Result<RecordedPass> {
        let m = self.plan.misses.len();
        let positions = if target.positions() && !on_gpu { n } else { 0 };
        let lay = self.staging_layout(positions, m, target, on_gpu);
        let t0 = Instant::now();
        let mut entry = self.ring.acquire(&self.ctx, lay.total)?;
        let t1 = Instant::now();
        let miss_ids = &mut self.buffers.miss_ids;
        miss_ids.clear();
        miss_ids.extend(self.plan.misses.iter().map(|&(id, _)| id));
        let (plan, layout, miss_ids) = (&self.plan, self.layout, &*miss_ids);
        let kept = self.copy_back.as_ref().map(CopyBack::kept);
        entry.write(|bytes| -> Result<()> {
            let (head, rows) = bytes.split_at_mut(lay.rows_off as usize);
            let misses = &mut head[lay.miss_off as usize..lay.params_off as usize];
            for (dst, &(_, slot)) in cast_mut::<u32>(misses)?.iter_mut().zip(&plan.misses) {
                *dst = slot;
            }
            let rows = &mut cast_mut::<u32>(rows)?[..m * layout.words_per_row()];
            read_rows_encoded(source, layout, miss_ids, rows)?;
            if let Some(kept) = kept {
                kept.patch(miss_ids, rows);
            }
            Ok(())
        })??;
        times.wait += t1 - t0;
        times.copy += t1.elapsed();
        self.record(entry, &lay, n, target, on_gpu, times)
    }

    /// Writes the slot list (unless the GPU writes it from the index), the params blocks
    /// and the slot index's changes into `entry` (whose missed slots and rows are already
    /// there), recording the pass's commands meanwhile.
    pub(super) fn record(
        &mut self,
        mut entry: StagingEntry,
        lay: &StagingLayout,
        n: usize,
        target: Target<'_>,
        on_gpu: bool,
        mut times: PassTimes,
    ) -> Result<RecordedPass> {
        let t0 = Instant::now();
        let ctx = &self.ctx;
        let (slots, plan) = (&self.slots, &self.plan);
        let m = plan.misses.len();
        let pos_bytes = if target.positions() { n as u64 * 4 } else { 0 };
        // (Kept in the engine, so a pass allocates nothing for them.)
        let copy_params = &mut self.copy_params;
        copy_params.clear();
        copy_params.extend(copy_rows::params(ctx, Direction::Scatter, slots, m, 0));
        if let Target::Gather(_, offset) = target {
            copy_params.extend(copy_rows::params(ctx, Direction::Gather, slots, n, offset));
        }
        let (pending, index) = match self.index.as_mut() {
            Some(i) => {
                let (pending, parts) = i.parts();
                (Some(pending), Some(parts))
            }
            None => (None, None),
        };
        let removals = pending.map_or(0, <[u32]>::len);
        // Removals, insertions, and with resolution on the GPU the slot list.
        let index_params = [
            kernels::params(ctx, removals, 0),
            kernels::params(ctx, m, removals),
            kernels::params(ctx, n, 0),
        ];
        let index_params = &index_params[..if on_gpu { 3 } else { 2 }];
        let fill = Fill {
            slot_list: (pos_bytes > 0 && !on_gpu).then(|| &plan.slots[..n]),
            copy_params,
            index: pending.map(|removals| IndexFill {
                removals,
                misses: &plan.misses,
                params: index_params,
            }),
        };
        let copier = entry.copier();
        let cmds = Commands {
            ctx,
            plan,
            slots,
            copier: &copier,
            lay,
            m,
            n,
            removals,
            pos_bytes,
            target,
            on_gpu,
        };
        let (buffers, copy_back) = (&mut self.buffers, self.copy_back.as_mut());
        let (recorded, filled) = entry.write(|bytes| {
            rayon::join(
                || cmds.record(buffers, copy_back, index),
                || fill_staging(bytes, lay, &fill),
            )
        })?;
        filled?;
        let enc = recorded?;
        let commands = enc.finish();
        times.copy += t0.elapsed();
        Ok(RecordedPass {
            commands,
            entry,
            removals,
            times,
            on_gpu,
        })
    }
}

/// The commands of one pass (see the module's description).
struct Commands<'a> {
    ctx: &'a GpuContext,
    plan: &'a PassPlan,
    slots: &'a RowBuffer,
    copier: &'a StagingCopier,
    lay: &'a StagingLayout,
    m: usize,
    n: usize,
    removals: usize,
    pos_bytes: u64,
    target: Target<'a>,
    on_gpu: bool,
}

impl Commands<'_> {
    fn record(
        &self,
        buffers: &mut PassBuffers,
        copy_back: Option<&mut CopyBack>,
        mut index: Option<IndexParts<'_>>,
    ) -> Result<wgpu::CommandEncoder> {
        let mut enc = encoder(self.ctx, "hotrow cache pass");
        // Training on the host path: the dirty rows this pass evicts leave their slots
        // before the missed rows overwrite them (and those it loads again come back).
        if let Some(copy_back) = copy_back {
            copy_back.encode_victims(self.ctx, &mut enc, self.slots, self.plan)?;
            self.scatter(&mut enc, buffers)?;
            copy_back.encode_reloads(&mut enc, self.slots, self.plan);
        } else {
            self.scatter(&mut enc, buffers)?;
        }
        if let Some(index) = index.as_mut() {
            self.change_index(&mut enc, index)?;
        }
        if self.pos_bytes > 0 {
            self.slot_list_and_gather(&mut enc, buffers, index)?;
        }
        Ok(enc)
    }

    /// Copies the missed slots and rows up and scatters the rows into their slots.
    fn scatter(&self, enc: &mut wgpu::CommandEncoder, buffers: &mut PassBuffers) -> Result<()> {
        let (ctx, lay, m) = (self.ctx, self.lay, self.m);
        if m == 0 {
            return Ok(());
        }
        let rows_bytes = self.slots.layout().bytes(m);
        let miss_buf = buffers.miss_slots.get(ctx, m as u64 * 4)?;
        let rows_buf = buffers.upload.get(ctx, rows_bytes)?;
        self.copier
            .copy_to(enc, lay.miss_off, miss_buf, 0, m as u64 * 4);
        self.copier
            .copy_to(enc, lay.rows_off, rows_buf, 0, rows_bytes);
        copy_rows::encode(
            ctx,
            enc,
            Direction::Scatter,
            self.slots,
            miss_buf,
            m,
            rows_buf,
            0,
            &mut buffers.scatter,
            Some(ParamsAt::staged(
                self.copier.buffer(),
                lay.params_off,
                copy_rows::PARAMS_BYTES,
            )),
        )
    }

    /// Applies the slot index's removals, then its insertions (a pass may evict a row and
    /// load it again).
    fn change_index(
        &self,
        enc: &mut wgpu::CommandEncoder,
        index: &mut IndexParts<'_>,
    ) -> Result<()> {
        let (ctx, lay) = (self.ctx, self.lay);
        let pairs = self.removals + self.m;
        if pairs == 0 {
            return Ok(());
        }
        let bytes = pairs as u64 * 8;
        let pairs_buf = index.pairs.get(ctx, bytes)?.clone();
        self.copier
            .copy_to(enc, lay.pairs_off, &pairs_buf, 0, bytes);
        let block = kernels::PARAMS_BYTES;
        let slot_of = index.slot_of;
        let runs = [
            (0, self.removals, &mut *index.remove),
            (1, self.m, &mut *index.insert),
        ];
        for (k, count, launch) in runs {
            kernels::encode(
                ctx,
                enc,
                Kernel::Assign,
                count,
                &pairs_buf,
                slot_of,
                &pairs_buf,
                launch,
                ParamsAt::staged(
                    self.copier.buffer(),
                    lay.index_params_off + k * block,
                    block,
                ),
            )?;
        }
        Ok(())
    }

    /// The slot list (copied up, or written by the GPU from the index), then the gather of
    /// the output through it.
    fn slot_list_and_gather(
        &self,
        enc: &mut wgpu::CommandEncoder,
        buffers: &mut PassBuffers,
        index: Option<IndexParts<'_>>,
    ) -> Result<()> {
        let (ctx, lay, n) = (self.ctx, self.lay, self.n);
        let staging = self.copier.buffer();
        let pos_buf = buffers.pos_slots.get(ctx, self.pos_bytes)?.clone();
        if self.on_gpu {
            let index = index.expect("a slot index with resolution on the GPU");
            let ids_buf = index.ids.current().expect("the probe's ids").clone();
            kernels::encode(
                ctx,
                enc,
                Kernel::Position,
                n,
                &ids_buf,
                index.slot_of,
                &pos_buf,
                index.position,
                ParamsAt::staged(
                    staging,
                    lay.index_params_off + 2 * kernels::PARAMS_BYTES,
                    kernels::PARAMS_BYTES,
                ),
            )?;
        } else {
            self.copier.copy_to(enc, 0, &pos_buf, 0, self.pos_bytes);
        }
        let Target::Gather(out, offset) = self.target else {
            return Ok(());
        };
        copy_rows::encode(
            ctx,
            enc,
            Direction::Gather,
            self.slots,
            &pos_buf,
            n,
            out,
            offset,
            &mut buffers.gather,
            Some(ParamsAt::staged(
                staging,
                lay.params_off + lay.scatter_params,
                copy_rows::PARAMS_BYTES,
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(bytes: &[u8]) -> Vec<u32> {
        bytemuck::cast_slice(bytes).to_vec()
    }

    #[test]
    fn a_pass_fills_its_staging_regions_and_nothing_else() {
        let lay = StagingLayout::new(Room {
            shards: 2,
            positions: 5,
            rows: 3,
            row_bytes: 16,
            gather: true,
            pairs: 2 + 2 * 3,
            index_blocks: 3,
        });
        let copy_params: Vec<CopyParams> = (1..=4u32).map(|k| bytemuck::cast([k; 8])).collect();
        let index_params: Vec<MapParams> = (5..=7u32).map(|k| bytemuck::cast([k; 8])).collect();
        let slot_list = [9u32, 8, 7, 9, 6];
        let misses = [(40u32, 8u32), (41, 7), (42, 6)];
        let fill = Fill {
            slot_list: Some(&slot_list),
            copy_params: &copy_params,
            index: Some(IndexFill {
                removals: &[70, 71],
                misses: &misses,
                params: &index_params,
            }),
        };
        let poison = 0xaaaa_aaaa_u32;
        let mut staging = vec![poison; lay.total as usize / 4];
        fill_staging(bytemuck::cast_slice_mut(&mut staging), &lay, &fill).unwrap();
        let all = words(bytemuck::cast_slice(&staging));
        let at = |off: u64| off as usize / 4;
        assert_eq!(&all[..5], &slot_list);
        // the missed slots and rows are the resolve's to write: untouched
        assert!(all[at(lay.miss_off)..at(lay.miss_off) + 3]
            .iter()
            .all(|&w| w == poison));
        assert!(all[at(lay.rows_off)..].iter().all(|&w| w == poison));
        for k in 0..4 {
            let block = &all[at(lay.params_off) + 8 * k..][..8];
            assert_eq!(block, &[k as u32 + 1; 8], "copy params block {k}");
        }
        for k in 0..3 {
            let block = &all[at(lay.index_params_off) + 8 * k..][..8];
            assert_eq!(block, &[k as u32 + 5; 8], "index params block {k}");
        }
        let pairs = &all[at(lay.pairs_off)..][..10];
        assert_eq!(
            pairs,
            &[70, NOT_RESIDENT, 71, NOT_RESIDENT, 40, 9, 41, 8, 42, 7]
        );
    }

    #[test]
    fn without_an_index_or_a_slot_list_only_the_copy_params_are_written() {
        let lay = StagingLayout::new(Room {
            shards: 1,
            positions: 0,
            rows: 2,
            row_bytes: 8,
            gather: false,
            pairs: 0,
            index_blocks: 2,
        });
        let copy_params: Vec<CopyParams> = vec![bytemuck::cast([3u32; 8])];
        let fill = Fill {
            slot_list: None,
            copy_params: &copy_params,
            index: None,
        };
        let mut staging = vec![1u32; lay.total as usize / 4];
        fill_staging(bytemuck::cast_slice_mut(&mut staging), &lay, &fill).unwrap();
        let p = lay.params_off as usize / 4;
        assert_eq!(&staging[p..p + 8], &[3; 8]);
        let written = staging.iter().filter(|&&w| w != 1).count();
        assert_eq!(written, 8, "only the one params block");
    }
}
