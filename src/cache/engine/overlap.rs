//! The overlapped copy: while the slot map's partitions resolve a pass, each one copies its
//! missed rows into the pass's staging entry as soon as it has resolved, at offsets handed
//! out by an atomic bump counter, so resolution and the row copy run side by side.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::read::read_rows_encoded;
use super::stage::{RawBytes, StagingLayout};
use super::trained_rows::TrainedRows;
use crate::cache::slot_map::OnMisses;
use crate::error::{HotrowError, Result};
use crate::gpu::RowLayout;
use crate::table::RowSource;

/// What [`copy_while_resolving`] copied.
pub(super) struct Copied {
    /// Every missed row fit the room and was copied (`Ok(false)`: no room, the caller copies
    /// them serially), or the row source's error or panic.
    pub(super) outcome: Result<bool>,
    /// The time the copies took, summed over the threads that made them.
    pub(super) thread_time: Duration,
}

/// Resolves a pass with `resolve` while the partitions copy their missed rows and slots into
/// `bytes` (a staging entry laid out as `lay`, with room for `lay.rows_cap` rows), rows
/// in `kept` (training on the host path) taken from there. Returns what `resolve`
/// returned and what was copied.
pub(super) fn copy_while_resolving<S: RowSource, R>(
    bytes: &mut [u8],
    lay: &StagingLayout,
    (source, kept): (&S, Option<&TrainedRows>),
    layout: RowLayout,
    resolve: impl FnOnce(OnMisses<'_>) -> R,
) -> (R, Copied) {
    assert!(
        bytes.len() as u64 >= lay.total,
        "staging entry smaller than its layout"
    );
    let words = layout.words_per_row();
    let row_bytes = words * 4;
    let bump = AtomicUsize::new(0);
    let copy_ns = AtomicU64::new(0);
    let overflow = AtomicBool::new(false);
    let failure: Mutex<Option<HotrowError>> = Mutex::new(None);
    let base = RawBytes::new(bytes);
    let on_misses = |misses: &[(u32, u32)]| {
        if misses.is_empty() {
            return;
        }
        let at = bump.fetch_add(misses.len(), Ordering::Relaxed);
        if at + misses.len() > lay.rows_cap {
            overflow.store(true, Ordering::Relaxed);
            return;
        }
        // SAFETY: the bump counter gives this call rows at..at + len of the entry's row and
        // missed-slot regions, which no other call touches; both regions lie inside `bytes`
        // (asserted above against `lay`), 16-byte aligned, and `bytes` outlives the resolve.
        let (slots_out, rows_out) = unsafe {
            (
                base.slice::<u32>(lay.miss_off as usize + at * 4, misses.len()),
                base.slice::<u32>(lay.rows_off as usize + at * row_bytes, misses.len() * words),
            )
        };
        let t = Instant::now();
        let mut ids = Vec::with_capacity(misses.len());
        for (dst, &(id, slot)) in slots_out.iter_mut().zip(misses) {
            *dst = slot;
            ids.push(id);
        }
        let copied = read_rows_encoded(source, layout, &ids, rows_out);
        if let (Ok(()), Some(kept)) = (&copied, kept) {
            kept.patch(&ids, rows_out);
        }
        copy_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if let Err(err) = copied {
            failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(err);
        }
    };
    let r = resolve(&on_misses);
    let outcome = match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(!overflow.into_inner()),
    };
    let thread_time = Duration::from_nanos(copy_ns.into_inner());
    (
        r,
        Copied {
            outcome,
            thread_time,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::stage::Room;
    use super::*;
    use crate::table::HostTable;
    use rayon::prelude::*;

    fn layout_for(rows: usize, dim: usize) -> (StagingLayout, RowLayout) {
        let layout = RowLayout::f32(dim).unwrap();
        let lay = StagingLayout::new(Room {
            shards: 1,
            positions: 0,
            rows,
            row_bytes: layout.row_bytes(),
            gather: false,
            pairs: 0,
            index_blocks: 2,
        });
        (lay, layout)
    }

    /// Reports `parts` of misses from parallel tasks, as the partitions do.
    fn resolve_in_parts(parts: &[Vec<(u32, u32)>]) -> impl FnOnce(OnMisses<'_>) -> usize + '_ {
        move |on_misses| {
            parts.par_iter().for_each(|p| on_misses(p));
            parts.len()
        }
    }

    #[test]
    fn every_partitions_rows_land_beside_their_slots() {
        let dim = 5;
        let data: Vec<f32> = (0..200 * dim).map(|i| i as f32 * 0.5).collect();
        let table = HostTable::borrowed(&data, dim).unwrap();
        let parts: Vec<Vec<(u32, u32)>> = (0..8u32)
            .map(|k| {
                (0..1 + k * 3)
                    .map(|j| (k * 20 + j, 1000 + k * 20 + j))
                    .collect()
            })
            .collect();
        let total: usize = parts.iter().map(Vec::len).sum();
        let (lay, layout) = layout_for(total, dim);
        let mut words = vec![u32::MAX; lay.total as usize / 4];
        let (r, copied) = copy_while_resolving(
            bytemuck::cast_slice_mut(&mut words),
            &lay,
            (&table, None),
            layout,
            resolve_in_parts(&parts),
        );
        assert_eq!(r, 8);
        assert!(copied.outcome.unwrap(), "everything fit");
        // Order between partitions is free; each slot sits beside its own row.
        let slots = &words[lay.miss_off as usize / 4..][..total];
        let rows: &[f32] = bytemuck::cast_slice(&words[lay.rows_off as usize / 4..]);
        let mut seen: Vec<u32> = slots.to_vec();
        seen.sort_unstable();
        let mut want: Vec<u32> = parts.iter().flatten().map(|&(_, s)| s).collect();
        want.sort_unstable();
        assert_eq!(seen, want);
        for (k, &slot) in slots.iter().enumerate() {
            let id = (slot - 1000) as usize;
            assert_eq!(
                &rows[k * dim..][..dim],
                &data[id * dim..][..dim],
                "slot {slot}"
            );
        }
    }

    #[test]
    fn too_many_misses_report_no_room_and_stay_inside_the_entry() {
        let dim = 3;
        let data: Vec<f32> = (0..100 * dim).map(|i| i as f32).collect();
        let table = HostTable::borrowed(&data, dim).unwrap();
        let parts: Vec<Vec<(u32, u32)>> = (0..4u32)
            .map(|k| (0..10).map(|j| (k * 10 + j, j)).collect())
            .collect();
        let (lay, layout) = layout_for(25, dim); // room for 25 of 40
        let mut words = vec![7u32; lay.total as usize / 4 + 16];
        let (_, copied) = copy_while_resolving(
            bytemuck::cast_slice_mut(&mut words),
            &lay,
            (&table, None),
            layout,
            resolve_in_parts(&parts),
        );
        assert!(
            !copied.outcome.unwrap(),
            "no room: the caller copies serially"
        );
        assert!(words[lay.total as usize / 4..].iter().all(|&w| w == 7));
    }

    #[test]
    fn a_failing_source_is_reported_after_resolution_finishes() {
        struct Fails;
        impl RowSource for Fails {
            fn rows(&self) -> usize {
                100
            }
            fn dim(&self) -> usize {
                2
            }
            fn read_rows(&self, ids: &[u32], _: &mut [f32]) -> Result<()> {
                if ids.contains(&13) {
                    panic!("13 is unlucky");
                }
                Ok(())
            }
        }
        let parts: Vec<Vec<(u32, u32)>> = vec![vec![(1, 1)], vec![(13, 2)], vec![(5, 3)]];
        let (lay, layout) = layout_for(3, 2);
        let mut words = vec![0u32; lay.total as usize / 4];
        let (r, copied) = copy_while_resolving(
            bytemuck::cast_slice_mut(&mut words),
            &lay,
            (&Fails, None),
            layout,
            resolve_in_parts(&parts),
        );
        assert_eq!(r, 3, "resolution ran to its end");
        assert!(
            matches!(copied.outcome, Err(HotrowError::RowSourcePanicked(m)) if m.contains("13"))
        );
    }
}
