//! Reading a pass's missed rows from the row source into staging, encoded as the slots
//! store them, with a panic in the source caught.

use rayon::prelude::*;

use crate::cache::caught::caught;
use crate::error::Result;
use crate::gpu::{RowFormat, RowLayout};
use crate::table::RowSource;

/// Rows per task when compact rows are read and encoded in parallel (a task's f32 rows stay
/// in the core's cache between the read and the encoding).
const ENCODE_ROWS_PER_TASK: usize = 128;

/// Reads rows `ids` from `source` into `out` encoded as `layout` stores them
/// ([`RowLayout::encode_rows`]): f32 rows straight into `out`; f16 rows of a source that
/// stores f16 as stored, where the widths allow; other compact ones chunk by chunk (in
/// parallel when there are several), each chunk read into a small per-thread f32 scratch
/// buffer and encoded from there while it is in cache.
pub(super) fn read_rows_encoded<S: RowSource>(
    source: &S,
    layout: RowLayout,
    ids: &[u32],
    out: &mut [u32],
) -> Result<()> {
    if layout.format() == RowFormat::F32 && !layout.has_state() {
        return caught(|| source.read_rows(ids, bytemuck::cast_slice_mut(out)));
    }
    // f16 slots of an even width hold exactly the f16 rows (little-endian): a source that
    // stores f16 copies all of them straight in (in parallel itself), with no conversion.
    if layout.format() == RowFormat::F16
        && layout.dim().is_multiple_of(2)
        && cfg!(target_endian = "little")
    {
        let halves: &mut [half::f16] = bytemuck::cast_slice_mut(out);
        if caught(|| source.read_rows_f16(ids, halves))? {
            return Ok(());
        }
    }
    let words = layout.words_per_row();
    if ids.len() <= ENCODE_ROWS_PER_TASK {
        return encode_chunk(source, layout, ids, out);
    }
    ids.par_chunks(ENCODE_ROWS_PER_TASK)
        .zip(out.par_chunks_mut(ENCODE_ROWS_PER_TASK * words))
        .try_for_each(|(ids, out)| encode_chunk(source, layout, ids, out))
}

/// One chunk of [`read_rows_encoded`]. The scratch buffer is taken out of its slot while in
/// use: a rayon thread waiting inside `read_rows` may run another chunk's copy on the same
/// thread (work stealing), which then finds the slot empty and uses a buffer of its own.
fn encode_chunk<S: RowSource>(
    source: &S,
    layout: RowLayout,
    ids: &[u32],
    out: &mut [u32],
) -> Result<()> {
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut values = SCRATCH.with(|s| s.take());
    values.clear();
    values.resize(ids.len() * layout.dim(), 0.0);
    let result = caught(|| source.read_rows(ids, &mut values));
    if result.is_ok() {
        layout.encode_rows(&values, out);
    }
    SCRATCH.with(|s| s.set(values));
    result?;
    if layout.has_state() {
        read_state(source, layout, ids, out)?;
    }
    Ok(())
}

/// The rows' optimizer state from the source, where it keeps some, into their stored
/// words (else they keep the zero state `encode_rows` gave them).
fn read_state<S: RowSource>(
    source: &S,
    layout: RowLayout,
    ids: &[u32],
    out: &mut [u32],
) -> Result<()> {
    let per_row = layout.state_values();
    let mut state = vec![0f32; ids.len() * per_row];
    if !caught(|| source.read_state(ids, &mut state))? {
        return Ok(());
    }
    let (dim, words) = (layout.dim(), layout.words_per_row());
    for (row, s) in out.chunks_exact_mut(words).zip(state.chunks_exact(per_row)) {
        for (w, v) in row[dim..dim + per_row].iter_mut().zip(s) {
            *w = v.to_bits();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HotrowError;
    use crate::table::HostTable;

    /// A table whose row `bad` fails (error) or panics.
    struct Failing<'a> {
        inner: HostTable<'a>,
        bad: u32,
        panic: bool,
    }

    impl RowSource for Failing<'_> {
        fn rows(&self) -> usize {
            self.inner.rows()
        }
        fn dim(&self) -> usize {
            self.inner.dim()
        }
        fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
            if ids.contains(&self.bad) {
                if self.panic {
                    panic!("row {} panics", self.bad);
                }
                return Err(HotrowError::InvalidArgument(format!("row {}", self.bad)));
            }
            self.inner.read_rows(ids, out)
        }
    }

    fn values(rows: usize, dim: usize) -> Vec<f32> {
        (0..rows * dim)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173)
            .collect()
    }

    #[test]
    fn rows_arrive_encoded_as_the_slots_store_them() {
        for format in [RowFormat::F32, RowFormat::F16, RowFormat::Int8] {
            for dim in [1usize, 3, 8, 13] {
                let data = values(700, dim);
                let table = HostTable::borrowed(&data, dim).unwrap();
                let layout = RowLayout::new(dim, format).unwrap();
                let words = layout.words_per_row();
                // a few ids, and enough for several parallel chunks; repeats included
                for n in [1usize, 5, 129, 600] {
                    let ids: Vec<u32> = (0..n).map(|i| ((i * 7919) % 700) as u32).collect();
                    let mut out = vec![0xdead_beef_u32; n * words + 1];
                    read_rows_encoded(&table, layout, &ids, &mut out[..n * words]).unwrap();
                    let mut want = vec![0u32; n * words];
                    let rows: Vec<f32> = ids
                        .iter()
                        .flat_map(|&id| data[id as usize * dim..][..dim].to_vec())
                        .collect();
                    layout.encode_rows(&rows, &mut want);
                    assert_eq!(&out[..n * words], &want[..], "{format:?} dim {dim} n {n}");
                    assert_eq!(out[n * words], 0xdead_beef, "wrote past its rows");
                }
            }
        }
    }

    #[test]
    fn a_failing_or_panicking_source_is_an_error() {
        let data = values(400, 4);
        for format in [RowFormat::F32, RowFormat::Int8] {
            for panic in [false, true] {
                let source = Failing {
                    inner: HostTable::borrowed(&data, 4).unwrap(),
                    bad: 300,
                    panic,
                };
                let layout = RowLayout::new(4, format).unwrap();
                let ids: Vec<u32> = (0..400).collect();
                let mut out = vec![0u32; 400 * layout.words_per_row()];
                let err = read_rows_encoded(&source, layout, &ids, &mut out).unwrap_err();
                match (panic, err) {
                    (true, HotrowError::RowSourcePanicked(m)) => assert!(m.contains("300")),
                    (false, HotrowError::InvalidArgument(m)) => assert!(m.contains("300")),
                    (_, e) => panic!("{format:?} panic {panic}: unexpected {e:?}"),
                }
                // the ids before the bad one are still served
                let ok: Vec<u32> = (0..300).collect();
                let words = 300 * layout.words_per_row();
                read_rows_encoded(&source, layout, &ok, &mut out[..words]).unwrap();
            }
        }
    }
}
