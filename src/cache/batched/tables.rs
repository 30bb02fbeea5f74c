//! [`Tables`]: the tables of one row width as one row source, global row `bases[k] + i`
//! being row `i` of member `k`; the missed rows of a step are read across tables in one
//! loop when the tables sit in memory.

use std::sync::Arc;

use rayon::prelude::*;

use crate::batch::check_ids;
use crate::cache::caught::caught;
use crate::error::{HotrowError, Result};
use crate::table::{prefetching, MemoryRows, RowBytes, RowSource};

/// The tables of one width as one row source: global row `bases[k] + i` is row `i` of
/// member `k`.
pub(super) struct Tables<S> {
    pub(super) sources: Arc<Vec<S>>,
    pub(super) members: Vec<usize>,
    /// First global row of each member, then the total.
    pub(super) bases: Vec<u64>,
    pub(super) dim: usize,
}

/// The member holding global row `id` of tables numbered from `bases` (`bases[k]` is
/// member `k`'s first row; the last entry is the total, above every id): the count of
/// inner bases at or below the id, without branches (tens of thousands per step).
pub(super) fn member_of(bases: &[u64], id: u32) -> usize {
    bases[1..bases.len() - 1]
        .iter()
        .map(|&b| usize::from(b <= id as u64))
        .sum()
}

/// Ids per task of [`Tables::read_rows`]. A W6 step resolved on the GPU has each of 64
/// slot-map partitions read its ~500 missed rows as it resolves: split in tasks of this
/// size, the last partitions' copies spread over the threads that are done instead of
/// finishing on one.
const IDS_PER_TASK: usize = 128;

impl<S: RowSource> Tables<S> {
    /// Each id's member and row in that member (in parallel for many: the serial copy of
    /// a first pass reads every row it loads in one call).
    fn locate(&self, ids: &[u32]) -> Vec<(u32, u32)> {
        let place = |&id: &u32| {
            let k = member_of(&self.bases, id);
            (k as u32, (id as u64 - self.bases[k]) as u32)
        };
        if ids.len() >= 8 * IDS_PER_TASK {
            ids.par_iter().map(place).collect()
        } else {
            ids.iter().map(place).collect()
        }
    }

    /// The rows in memory ([`RowSource::memory_rows`]) of every member that `rows` (from
    /// [`Tables::locate`]) reads, or `None` if one of them does not hold its rows there.
    /// Members not read are not asked: a table whose file changed fails only the steps
    /// that read it.
    fn memory_members(&self, rows: &[(u32, u32)]) -> Result<Option<Vec<Option<RowBytes<'_>>>>> {
        let mut read = vec![false; self.members.len()];
        for &(k, _) in rows {
            read[k as usize] = true;
        }
        let mut members = vec![None; self.members.len()];
        for (k, _) in read.iter().enumerate().filter(|(_, &r)| r) {
            match self.member_call(k, |source| source.memory_rows())? {
                Some(MemoryRows(rows)) => members[k] = Some(rows),
                None => return Ok(None),
            }
        }
        Ok(Some(members))
    }

    /// Reads the rows `rows` (from [`Tables::locate`]) into `out` from the members' rows
    /// in memory, in the ids' order: no sort, no per-table call, and the prefetches run
    /// ahead across tables (a partition's few hundred missed rows of a W6 step spread over
    /// 26 tables, a few each, too few for a per-table loop to prefetch ahead). The ids'
    /// tables and rows are found first, in a loop of their own: the copy loop then stays
    /// short enough for the core to keep several rows' misses in flight (benches/HISTORY.md
    /// has the per-row costs of the alternatives).
    fn read_across(&self, members: &[Option<RowBytes<'_>>], rows: &[(u32, u32)], out: &mut [f32]) {
        let member = |k: u32| {
            members[k as usize]
                .as_ref()
                .expect("a member read is in memory")
        };
        let ahead = members
            .iter()
            .flatten()
            .map(RowBytes::rows_ahead)
            .min()
            .unwrap_or(2);
        prefetching(
            rows,
            out.chunks_exact_mut(self.dim),
            ahead,
            |(k, row)| member(k).prefetch_row(row as usize),
            |(k, row), dst| {
                let m = member(k);
                m.convert(m.row(row as usize), dst)
            },
        );
    }

    /// A call into member `k`'s source; its failure or panic named by the table
    /// ([`HotrowError::InTable`]: with 26 tables, which one failed is the first question).
    fn member_call<'s, R>(&'s self, k: usize, call: impl FnOnce(&'s S) -> Result<R>) -> Result<R> {
        let table = self.members[k];
        caught(|| call(&self.sources[table])).map_err(|source| HotrowError::InTable {
            table,
            source: Box::new(source),
        })
    }

    /// Reads the rows `rows` (from [`Tables::locate`]) into `out`: sorted by table, one
    /// `read_rows` per table.
    fn read_chunk(&self, rows: &[(u32, u32)], out: &mut [f32]) -> Result<()> {
        let dim = self.dim;
        let mut order: Vec<(usize, u32, usize)> = rows
            .iter()
            .enumerate()
            .map(|(pos, &(k, row))| (k as usize, row, pos))
            .collect();
        order.sort_unstable_by_key(|e| e.0);
        let mut local = Vec::new();
        let mut values = Vec::new();
        for run in order.chunk_by(|a, b| a.0 == b.0) {
            local.clear();
            local.extend(run.iter().map(|e| e.1));
            values.clear();
            values.resize(run.len() * dim, 0.0);
            self.member_call(run[0].0, |source| source.read_rows(&local, &mut values))?;
            for (e, row) in run.iter().zip(values.chunks_exact(dim)) {
                out[e.2 * dim..(e.2 + 1) * dim].copy_from_slice(row);
            }
        }
        Ok(())
    }
}

impl<S: RowSource> RowSource for Tables<S> {
    fn rows(&self) -> usize {
        *self.bases.last().unwrap_or(&0) as usize
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        if out.len() != ids.len() * self.dim {
            return Err(HotrowError::LengthMismatch {
                what: "read_rows destination",
                expected: ids.len() * self.dim,
                got: out.len(),
            });
        }
        check_ids(ids, self.rows())?;
        // Tables all in memory: every row read in one loop, in the ids' order.
        let rows = self.locate(ids);
        if let Some(members) = self.memory_members(&rows)? {
            if ids.len() <= IDS_PER_TASK {
                self.read_across(&members, &rows, out);
            } else {
                rows.par_chunks(IDS_PER_TASK)
                    .zip(out.par_chunks_mut(IDS_PER_TASK * self.dim))
                    .for_each(|(rows, out)| self.read_across(&members, rows, out));
            }
            return Ok(());
        }
        // A remote table is read in one call per table (each call is a round trip).
        if ids.len() <= IDS_PER_TASK || self.remote() {
            return self.read_chunk(&rows, out);
        }
        rows.par_chunks(IDS_PER_TASK)
            .zip(out.par_chunks_mut(IDS_PER_TASK * self.dim))
            .try_for_each(|(rows, out)| self.read_chunk(rows, out))
    }

    fn remote(&self) -> bool {
        self.sources.iter().any(RowSource::remote)
    }

    /// Each member's rows' state from that member (one call per member read); members
    /// keeping none leave their rows' state at zero.
    fn read_state(&self, ids: &[u32], out: &mut [f32]) -> Result<bool> {
        if ids.is_empty() || !out.len().is_multiple_of(ids.len()) {
            return Ok(false);
        }
        let per_row = out.len() / ids.len();
        let rows = self.locate(ids);
        let mut any = false;
        for k in 0..self.members.len() {
            let at: Vec<usize> = (0..rows.len())
                .filter(|&p| rows[p].0 as usize == k)
                .collect();
            if at.is_empty() {
                continue;
            }
            let local: Vec<u32> = at.iter().map(|&p| rows[p].1).collect();
            let mut state = vec![0f32; local.len() * per_row];
            if self.member_call(k, |source| source.read_state(&local, &mut state))? {
                any = true;
                for (&p, s) in at.iter().zip(state.chunks_exact(per_row)) {
                    out[p * per_row..][..per_row].copy_from_slice(s);
                }
            } else {
                for &p in &at {
                    out[p * per_row..][..per_row].fill(0.0);
                }
            }
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::HostTable;

    #[test]
    fn member_of_finds_the_table_of_every_row() {
        let bases = [0u64, 3, 3, 10, 12];
        let want = [0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 3, 3];
        for (id, &k) in want.iter().enumerate() {
            assert_eq!(member_of(&bases, id as u32), k, "row {id}");
        }
        assert_eq!(member_of(&[0, 5], 4), 0);
    }

    #[test]
    fn rows_read_across_tables_in_the_ids_order() {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            (0..30).map(|v| v as f32).collect(),
            (0..8).map(|v| -(v as f32)).collect(),
        );
        let sources = Arc::new(vec![
            HostTable::borrowed(&a, 2).unwrap(),
            HostTable::borrowed(&b, 2).unwrap(),
        ]);
        let tables = Tables {
            sources,
            members: vec![0, 1],
            bases: vec![0, 15, 19],
            dim: 2,
        };
        assert_eq!(tables.rows(), 19);
        // in memory (one loop), and many ids (parallel chunks)
        for n in [5usize, 1000] {
            let ids: Vec<u32> = (0..n).map(|i| ((i * 7) % 19) as u32).collect();
            let mut out = vec![f32::NAN; n * 2];
            tables.read_rows(&ids, &mut out).unwrap();
            for (k, &id) in ids.iter().enumerate() {
                let want = if id < 15 {
                    [a[id as usize * 2], a[id as usize * 2 + 1]]
                } else {
                    let r = (id - 15) as usize;
                    [b[r * 2], b[r * 2 + 1]]
                };
                assert_eq!(&out[k * 2..k * 2 + 2], &want, "id {id}");
            }
        }
        let mut short = vec![0.0; 3];
        assert!(tables.read_rows(&[1, 2], &mut short).is_err());
        assert!(tables.read_rows(&[19], &mut short[..2]).is_err());
    }
}
