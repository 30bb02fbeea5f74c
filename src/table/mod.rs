//! Where full tables live: the [`RowSource`] trait the cache reads missed rows through, and
//! [`HostTable`], rows in host memory (owned or borrowed). Later tiers (memory-mapped files,
//! remote stores) implement the same trait.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{HotrowError, Result};

/// A full embedding table the cache copies missed rows from.
pub trait RowSource: Send + Sync {
    /// Number of rows.
    fn rows(&self) -> usize;
    /// f32 values per row.
    fn dim(&self) -> usize;
    /// Writes row `ids[k]` to `out[k * dim .. (k + 1) * dim]` for every `k`.
    ///
    /// `out.len() == ids.len() * dim` and every id is `< rows()` (the cache checked them).
    /// `out` may be write-combined mapped GPU staging memory: write it, never read it.
    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()>;
}

/// Rows in host memory, row-major, owned (`Vec<f32>`) or borrowed (`&[f32]`).
///
/// [`RowSource::read_rows`] copies rows straight into the destination, spread over the rayon
/// thread pool when there are many; it allocates nothing per row.
///
/// ```
/// use hotrow::{HostTable, RowSource};
/// let data = vec![0.5f32; 10 * 4];
/// let t = HostTable::borrowed(&data, 4).unwrap();
/// assert_eq!((t.rows(), t.dim()), (10, 4));
/// ```
#[derive(Clone, Debug)]
pub struct HostTable<'a> {
    data: Cow<'a, [f32]>,
    dim: usize,
}

/// Rows per rayon task in [`HostTable::read_rows`]: enough work to beat the task overhead,
/// few enough that the tasks spread evenly over the threads (W2 misses ~9,000 rows a batch).
const ROWS_PER_TASK: usize = 64;

/// Rows ahead whose cache lines [`HostTable::read_rows`] prefetches: random rows of a large
/// table miss the TLB and the caches, so the copy is bound by memory latency.
const PREFETCH_ROWS: usize = 4;

impl<'a> HostTable<'a> {
    fn make(data: Cow<'a, [f32]>, dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(HotrowError::InvalidArgument(
                "dim must be at least 1".into(),
            ));
        }
        if data.is_empty() || !data.len().is_multiple_of(dim) {
            return Err(HotrowError::LengthMismatch {
                what: "table data (a non-zero multiple of dim)",
                expected: (data.len() / dim).max(1) * dim,
                got: data.len(),
            });
        }
        Ok(Self { data, dim })
    }

    /// Takes ownership of row-major `data` of width `dim`.
    pub fn owned(data: Vec<f32>, dim: usize) -> Result<HostTable<'static>> {
        HostTable::make(Cow::Owned(data), dim)
    }

    /// Borrows row-major `data` of width `dim`.
    pub fn borrowed(data: &'a [f32], dim: usize) -> Result<Self> {
        Self::make(Cow::Borrowed(data), dim)
    }

    /// All values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// One row.
    pub fn row(&self, id: usize) -> &[f32] {
        &self.data[id * self.dim..(id + 1) * self.dim]
    }
}

impl RowSource for HostTable<'_> {
    fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        let dim = self.dim;
        if out.len() != ids.len() * dim {
            return Err(HotrowError::LengthMismatch {
                what: "read_rows destination",
                expected: ids.len() * dim,
                got: out.len(),
            });
        }
        let copy = |ids: &[u32], out: &mut [f32]| {
            for (k, (&id, dst)) in ids.iter().zip(out.chunks_exact_mut(dim)).enumerate() {
                if let Some(&ahead) = ids.get(k + PREFETCH_ROWS) {
                    let row = self.row(ahead as usize);
                    for line in (0..row.len()).step_by(16) {
                        crate::util::prefetch(&row[line]);
                    }
                }
                dst.copy_from_slice(self.row(id as usize));
            }
        };
        if ids.len() < 2 * ROWS_PER_TASK {
            copy(ids, out);
        } else {
            ids.par_chunks(ROWS_PER_TASK)
                .zip(out.par_chunks_mut(ROWS_PER_TASK * dim))
                .for_each(|(ids, out)| copy(ids, out));
        }
        Ok(())
    }
}
