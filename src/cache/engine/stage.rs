//! Where each part of a pass sits in its staging entry ([`StagingLayout`]), and the plain
//! writers that fill it: params blocks ([`put_params`]), the slot index's (key, value)
//! changes ([`write_pairs`]) and the parallel writes of the overlapped copy ([`RawBytes`]).

use rayon::prelude::*;

use crate::error::{HotrowError, Result};
use crate::ops::{copy_rows, slot_index};

/// 16-byte alignment of regions inside a staging entry (vec4 rows, copy alignment).
pub(super) fn align16(x: u64) -> u64 {
    x.next_multiple_of(16)
}

/// The layout of one pass's staging entry, in order: the per-position slot list, the missed
/// slots, the copy kernels' params blocks (scatter, then gather, one per shard of the
/// slots), the slot index's params blocks (removals, insertions, and with resolution on the
/// GPU the slot list), the slot index's (key, value) changes, then the missed rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StagingLayout {
    /// Room for the slot list (positions x 4 bytes).
    pub(super) pos_room: u64,
    pub(super) miss_off: u64,
    pub(super) params_off: u64,
    /// Bytes of the scatter params blocks (the gather's follow them).
    pub(super) scatter_params: u64,
    /// Offset of the slot index's params blocks.
    pub(super) index_params_off: u64,
    pub(super) pairs_off: u64,
    /// (key, value) pairs the entry has room for.
    pub(super) pairs_room: usize,
    pub(super) rows_off: u64,
    /// Rows the entry has room for.
    pub(super) rows_cap: usize,
    pub(super) total: u64,
}

/// What a pass's staging entry must hold room for.
#[derive(Clone, Copy, Debug)]
pub(super) struct Room {
    /// Shards of the slots (one params block each per copy kernel).
    pub(super) shards: usize,
    /// Positions whose slots the host writes (0 when the GPU writes the slot list).
    pub(super) positions: usize,
    /// Missed rows.
    pub(super) rows: usize,
    /// Bytes of one stored row.
    pub(super) row_bytes: u64,
    /// Whether the pass gathers an output (a second copy kernel).
    pub(super) gather: bool,
    /// (key, value) changes to the slot index.
    pub(super) pairs: usize,
    /// Params blocks of the slot index's kernels.
    pub(super) index_blocks: u64,
}

impl StagingLayout {
    pub(super) fn new(room: Room) -> Self {
        let shards = room.shards as u64;
        let scatter_params = shards * copy_rows::PARAMS_BYTES;
        let gather_params = if room.gather { scatter_params } else { 0 };
        let pos_room = align16(room.positions as u64 * 4);
        let miss_off = pos_room;
        let params_off = align16(miss_off + room.rows as u64 * 4);
        let index_params_off = params_off + scatter_params + gather_params;
        let pairs_off = align16(index_params_off + room.index_blocks * slot_index::PARAMS_BYTES);
        let rows_off = align16(pairs_off + room.pairs as u64 * 8);
        Self {
            pos_room,
            miss_off,
            params_off,
            scatter_params,
            index_params_off,
            pairs_off,
            pairs_room: room.pairs,
            rows_off,
            rows_cap: room.rows,
            total: rows_off + room.rows as u64 * room.row_bytes,
        }
    }
}

/// Writes each of `params` into the next of `blocks` (params blocks in staging, laid out
/// with room for all of them).
pub(super) fn put_params<'b, P: bytemuck::Pod>(
    blocks: &mut impl Iterator<Item = &'b mut [u8]>,
    params: impl IntoIterator<Item = P>,
) {
    for p in params {
        blocks
            .next()
            .expect("room for params")
            .copy_from_slice(bytemuck::bytes_of(&p));
    }
}

/// Writes `pair(x)` for every `x` of `items` into consecutive pairs of `dst` (two words
/// each): the slot index's changes, tens of thousands per W6 step, in parallel chunks when
/// many (the destination is write-combined staging).
pub(super) fn write_pairs<T: Sync>(
    dst: &mut [u32],
    items: &[T],
    pair: impl Fn(&T) -> [u32; 2] + Sync,
) {
    const PER_TASK: usize = 8192;
    let fill = |(dst, items): (&mut [u32], &[T])| {
        for (d, x) in dst.chunks_exact_mut(2).zip(items) {
            d.copy_from_slice(&pair(x));
        }
    };
    if items.len() < 2 * PER_TASK {
        fill((dst, items));
    } else {
        dst.par_chunks_mut(2 * PER_TASK)
            .zip(items.par_chunks(PER_TASK))
            .for_each(fill);
    }
}

/// `bytes` as a slice of `T` (staging regions are 16-byte aligned).
pub(super) fn cast_mut<T: bytemuck::Pod>(bytes: &mut [u8]) -> Result<&mut [T]> {
    bytemuck::try_cast_slice_mut(bytes).map_err(|e| {
        HotrowError::Map(format!(
            "staging memory not aligned for {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// The base of a mapped staging range, written by parallel tasks at disjoint offsets.
#[derive(Clone, Copy)]
pub(super) struct RawBytes(*mut u8);

// SAFETY: only `slice`, whose callers guarantee disjoint, in-bounds, aligned regions.
unsafe impl Send for RawBytes {}
unsafe impl Sync for RawBytes {}

impl RawBytes {
    pub(super) fn new(bytes: &mut [u8]) -> Self {
        Self(bytes.as_mut_ptr())
    }

    /// # Safety
    /// `offset..offset + len * size_of::<T>()` is inside the range `new` was given, aligned
    /// for `T`, and no other live reference overlaps it.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn slice<T: bytemuck::Pod>(&self, offset: usize, len: usize) -> &mut [T] {
        let p = unsafe { self.0.add(offset) } as *mut T;
        debug_assert!(p.is_aligned());
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(positions: usize, rows: usize, pairs: usize, gather: bool) -> Room {
        Room {
            shards: 3,
            positions,
            rows,
            row_bytes: 20,
            gather,
            pairs,
            index_blocks: 3,
        }
    }

    #[test]
    fn staging_regions_are_aligned_ordered_and_disjoint() {
        for positions in [0, 1, 5, 4096] {
            for rows in [0, 1, 7, 1000] {
                for pairs in [0, 3, 64] {
                    for gather in [false, true] {
                        let r = room(positions, rows, pairs, gather);
                        let l = StagingLayout::new(r);
                        let offs = [l.miss_off, l.params_off, l.pairs_off, l.rows_off];
                        assert!(offs.iter().all(|o| o % 16 == 0), "{l:?}");
                        assert!(l.pos_room >= positions as u64 * 4);
                        assert!(l.miss_off + rows as u64 * 4 <= l.params_off);
                        let copy = (1 + u64::from(gather)) * 3 * copy_rows::PARAMS_BYTES;
                        assert_eq!(l.index_params_off, l.params_off + copy);
                        assert!(l.index_params_off + 3 * slot_index::PARAMS_BYTES <= l.pairs_off);
                        assert!(l.pairs_off + pairs as u64 * 8 <= l.rows_off);
                        assert_eq!(l.total, l.rows_off + rows as u64 * 20);
                        assert_eq!((l.rows_cap, l.pairs_room), (rows, pairs));
                    }
                }
            }
        }
    }

    #[test]
    fn pairs_are_written_in_order_serially_and_in_parallel() {
        for n in [0usize, 1, 100, 16_383, 16_384, 50_001] {
            let items: Vec<u32> = (0..n as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            let mut dst = vec![u32::MAX; 2 * n + 2];
            write_pairs(&mut dst, &items, |&x| [x, x ^ 1]);
            for (k, &x) in items.iter().enumerate() {
                assert_eq!([dst[2 * k], dst[2 * k + 1]], [x, x ^ 1], "pair {k} of {n}");
            }
            assert_eq!(
                &dst[2 * n..],
                &[u32::MAX; 2],
                "nothing past the pairs ({n})"
            );
        }
    }

    #[test]
    fn params_fill_consecutive_blocks() {
        let mut bytes = [0u8; 4 * 8 + 4];
        let mut blocks = bytes.chunks_exact_mut(8);
        put_params(&mut blocks, [[1u32, 2], [3, 4]]);
        put_params(&mut blocks, [[5u32, 6]]);
        let words: Vec<u32> = bytes[..32]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(words, [1, 2, 3, 4, 5, 6, 0, 0]);
    }

    #[test]
    fn misaligned_staging_is_an_error() {
        let mut bytes = [0u8; 12];
        let at = (bytes.as_ptr() as usize).next_multiple_of(4) - bytes.as_ptr() as usize;
        assert!(cast_mut::<u32>(&mut bytes[at..at + 8]).is_ok());
        assert!(cast_mut::<u32>(&mut bytes[at + 1..at + 5]).is_err());
    }
}
