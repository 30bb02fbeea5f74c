//! Where full tables live: the [`RowSource`] trait the cache reads missed rows through;
//! [`HostTable`], rows in host memory (f32, f16 or bf16, owned or borrowed); [`FileTable`],
//! rows of a memory-mapped `.npy` or `.safetensors` file. Both copy rows with the same
//! parallel, prefetching loop ([`RowBytes`]), converting half-precision values to f32.

mod file;
mod host;
#[cfg(feature = "redis")]
mod redis;
mod tier;

pub use file::FileTable;
pub use host::HostTable;
#[cfg(feature = "redis")]
pub use redis::{RedisOptions, RedisStats, RedisTable, RedisTarget};
pub use tier::{HostTier, TierStats};

use rayon::prelude::*;

use crate::error::{HotrowError, Result};

/// A full embedding table the cache copies missed rows from.
pub trait RowSource: Send + Sync {
    /// Number of rows.
    fn rows(&self) -> usize;
    /// Values per row.
    fn dim(&self) -> usize;
    /// Writes row `ids[k]` as f32 to `out[k * dim .. (k + 1) * dim]` for every `k`.
    ///
    /// `out.len() == ids.len() * dim` and every id is `< rows()` (the cache checked them).
    /// `out` may be write-combined mapped GPU staging memory: write it, never read it.
    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()>;

    /// Writes row `ids[k]` as IEEE f16 values to `out[k * dim .. (k + 1) * dim]`, when the
    /// source stores f16 and can copy its values as they are (a cache with f16 slots then
    /// uploads them without converting). Returns `Ok(false)`, having written nothing, when
    /// it cannot (the default): the cache then converts what [`RowSource::read_rows`] gives.
    /// Same preconditions as `read_rows`.
    fn read_rows_f16(&self, ids: &[u32], out: &mut [half::f16]) -> Result<bool> {
        let _ = (ids, out);
        Ok(false)
    }

    /// Writes the optimizer state of row `ids[k]` (`out.len() / ids.len()` values a row:
    /// row-wise Adagrad's accumulator) to `out`, when the source keeps state a training
    /// cache gave it ([`WritableRowSource::write_state`]): a training cache loads it with
    /// the row, so training resumes where it stopped. Returns `Ok(false)`, having written
    /// nothing, when it keeps none (the default): the rows then start with zero state.
    /// Same preconditions as `read_rows`.
    fn read_state(&self, ids: &[u32], out: &mut [f32]) -> Result<bool> {
        let _ = (ids, out);
        Ok(false)
    }

    /// Whether each call costs a round trip to another process or machine (a network
    /// store such as Redis: `RedisTable`, feature `redis`). The cache then reads a pass's missed rows in
    /// one call after resolving them, instead of one call per slot-map partition while it
    /// resolves (which suits memory, not a network). Default `false`.
    fn remote(&self) -> bool {
        false
    }

    /// The rows as they sit in this process's memory, when the source holds them there (the
    /// built-in [`HostTable`] and [`FileTable`]; only they can make a [`MemoryRows`]).
    /// Reading them must give what [`RowSource::read_rows`] gives. A cache serving many
    /// tables at once ([`crate::TableBatchedCache`]) then reads the missed rows of all its
    /// tables in one prefetching loop instead of one `read_rows` call per table. Default
    /// `Ok(None)`; errors as `read_rows` would give them (a changed file).
    ///
    /// ```
    /// use hotrow::{HostTable, RowSource};
    /// let table = HostTable::owned(vec![0.5f32; 3 * 4], 4)?;
    /// let rows = table.memory_rows()?.expect("a host table holds its rows in memory");
    /// assert_eq!((rows.rows(), rows.dim()), (3, 4));
    /// # Ok::<(), hotrow::HotrowError>(())
    /// ```
    fn memory_rows(&self) -> Result<Option<MemoryRows<'_>>> {
        Ok(None)
    }
}

/// A row source that also takes rows back: where training writes the rows it changed,
/// when they leave the cache and on `flush`.
///
/// ```
/// use hotrow::{HostTable, RowSource, WritableRowSource};
/// let mut t = HostTable::owned(vec![0.0; 4 * 2], 2).unwrap();
/// t.write_rows(&[3, 1], &[1.0, 2.0, 3.0, 4.0]).unwrap();
/// assert_eq!(t.read_row(3).unwrap(), vec![1.0, 2.0]);
/// assert!(t.write_rows(&[4], &[0.0, 0.0]).is_err()); // out of range: nothing written
/// ```
pub trait WritableRowSource: RowSource {
    /// Writes `rows` (`ids.len() * dim` values, row-major) to the rows `ids` (distinct).
    /// On an error the caller treats every row of the call as not written (and keeps it
    /// to write again), so a partial write is allowed but never relied on.
    fn write_rows(&mut self, ids: &[u32], rows: &[f32]) -> Result<()>;

    /// Keeps the optimizer state of rows `ids` (`state.len() / ids.len()` values a row),
    /// written by a flush right after their values; [`RowSource::read_state`] gives it
    /// back. Returns `Ok(false)` when the source keeps no state (the default: the state
    /// then lives as long as the cache, and a new cache over the source starts from zero).
    /// Errors as `write_rows`: the rows stay to be written again.
    fn write_state(&mut self, ids: &[u32], state: &[f32]) -> Result<bool> {
        let _ = (ids, state);
        Ok(false)
    }
}

/// A source's rows in host memory, as stored ([`RowSource::memory_rows`]): made only by the
/// built-in sources, so what it points at is always a whole, live table.
#[derive(Clone, Copy)]
pub struct MemoryRows<'a>(pub(crate) RowBytes<'a>);

impl MemoryRows<'_> {
    /// Rows held.
    pub fn rows(&self) -> usize {
        self.0.rows()
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.0.dim
    }

    /// How the values are stored.
    pub fn value_type(&self) -> ValueType {
        self.0.ty
    }
}

impl std::fmt::Debug for MemoryRows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRows")
            .field("rows", &self.0.rows())
            .field("dim", &self.0.dim)
            .field("value_type", &self.0.ty)
            .finish()
    }
}

/// A shared reference reads the same rows (a cache can borrow a table that outlives it), so
/// does an `Arc` (a table shared by several caches: the devices of a multi-GPU cache), and a
/// `Box` (tables of different kinds in one [`crate::TableBatchedCache`], as
/// `Box<dyn RowSource>`).
macro_rules! forward_row_source {
    ($($ty:ty),*) => {$(
        impl<T: RowSource + ?Sized> RowSource for $ty {
            fn rows(&self) -> usize {
                (**self).rows()
            }
            fn dim(&self) -> usize {
                (**self).dim()
            }
            fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
                (**self).read_rows(ids, out)
            }
            fn read_rows_f16(&self, ids: &[u32], out: &mut [half::f16]) -> Result<bool> {
                (**self).read_rows_f16(ids, out)
            }
            fn remote(&self) -> bool {
                (**self).remote()
            }
            fn memory_rows(&self) -> Result<Option<MemoryRows<'_>>> {
                (**self).memory_rows()
            }
        }
    )*};
}

forward_row_source!(&T, std::sync::Arc<T>, Box<T>);

/// How a table's values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16 (`half::f16`, numpy `float16`, PyTorch `torch.float16`).
    F16,
    /// bfloat16 (`half::bf16`, PyTorch `torch.bfloat16`).
    BF16,
}

impl ValueType {
    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            ValueType::F32 => 4,
            ValueType::F16 | ValueType::BF16 => 2,
        }
    }
}

/// Rows per rayon task in [`RowBytes::read_rows`]: enough work to beat the task overhead,
/// few enough that the tasks spread evenly over the threads (W2 misses ~9,000 rows a batch,
/// ~140 per slot-map partition). On the H200 host, 32,768 random rows of 256 B took 148 us
/// on 16 threads in tasks of 128 against 170 in tasks of 64, and W2's copy thread time fell
/// 15% (benches/HISTORY.md).
const ROWS_PER_TASK: usize = 128;

/// Cache lines the row copies keep in flight by prefetching the rows ahead: random rows of
/// a large table miss the TLB and the caches, so the copy is bound by memory latency, and
/// a row of 4 lines (64 f32) copies in a fraction of it. Four rows of 128 f32 (W2's) or
/// eight of 64 f32 (W6's).
const PREFETCH_LINES: usize = 32;

/// Runs `each(item, dst)` over `items` and `out` in order, having called `prefetch(item)`
/// `ahead` items before each item's turn: the one row loop of every in-memory read.
pub(crate) fn prefetching<I: Copy, D>(
    items: &[I],
    out: impl Iterator<Item = D>,
    ahead: usize,
    prefetch: impl Fn(I),
    mut each: impl FnMut(I, D),
) {
    for &item in &items[..ahead.min(items.len())] {
        prefetch(item);
    }
    for (k, (&item, dst)) in items.iter().zip(out).enumerate() {
        if let Some(&later) = items.get(k + ahead) {
            prefetch(later);
        }
        each(item, dst);
    }
}

/// `rows x dim` values of type `ty`, little-endian, back to back in `bytes` (which need not
/// be aligned): the storage behind every built-in row source.
#[derive(Clone, Copy)]
pub(crate) struct RowBytes<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) ty: ValueType,
    pub(crate) dim: usize,
}

impl RowBytes<'_> {
    fn row_bytes(&self) -> usize {
        self.dim * self.ty.bytes()
    }

    /// Rows stored.
    pub(crate) fn rows(&self) -> usize {
        self.bytes.len() / self.row_bytes().max(1)
    }

    pub(crate) fn row(&self, id: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.bytes[id * n..(id + 1) * n]
    }

    /// How many rows ahead of the one being copied to prefetch ([`PREFETCH_LINES`]).
    pub(crate) fn rows_ahead(&self) -> usize {
        (PREFETCH_LINES * 64 / self.row_bytes().max(1)).clamp(2, 16)
    }

    /// Asks for row `id`'s cache lines (a hint: it reads nothing and never faults).
    pub(crate) fn prefetch_row(&self, id: usize) {
        let row = self.row(id);
        for line in (0..row.len()).step_by(64) {
            crate::util::prefetch(&row[line]);
        }
    }

    /// Converts one stored row into `dst` (f32).
    pub(crate) fn convert(&self, src: &[u8], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        // Aligned (the usual case: `.npy` data starts 64-byte aligned) values are read as a
        // slice; unaligned ones value by value.
        match self.ty {
            ValueType::F32 => match bytemuck::try_cast_slice::<u8, f32>(src) {
                Ok(v) if cfg!(target_endian = "little") => dst.copy_from_slice(v),
                _ => {
                    for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
            },
            ValueType::F16 => match bytemuck::try_cast_slice::<u8, half::f16>(src) {
                Ok(v) if cfg!(target_endian = "little") => v.convert_to_f32_slice(dst),
                _ => {
                    for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                        *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }
            },
            ValueType::BF16 => match bytemuck::try_cast_slice::<u8, half::bf16>(src) {
                Ok(v) if cfg!(target_endian = "little") => v.convert_to_f32_slice(dst),
                _ => {
                    for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                        *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }
            },
        }
    }

    /// [`RowSource::read_rows_f16`] over these rows: the stored values copied as they are,
    /// when they are f16 (on a little-endian host, where stored and in-memory f16 agree).
    pub(crate) fn read_rows_f16(&self, ids: &[u32], out: &mut [half::f16]) -> Result<bool> {
        if self.ty != ValueType::F16 || cfg!(target_endian = "big") {
            return Ok(false);
        }
        self.for_rows(ids, out, |src, dst| {
            bytemuck::cast_slice_mut::<half::f16, u8>(dst).copy_from_slice(src)
        })?;
        Ok(true)
    }

    /// Checks the destination and the ids, then runs `copy_row(stored row, destination)`
    /// for every id (the rows ahead prefetched): on this thread for few rows, spread over
    /// the rayon pool for many.
    fn for_rows<T: Send>(
        &self,
        ids: &[u32],
        out: &mut [T],
        copy_row: impl Fn(&[u8], &mut [T]) + Sync,
    ) -> Result<()> {
        self.check(ids, out.len())?;
        let ahead = self.rows_ahead();
        let copy = |ids: &[u32], out: &mut [T]| {
            prefetching(
                ids,
                out.chunks_exact_mut(self.dim),
                ahead,
                |id| self.prefetch_row(id as usize),
                |id, dst| copy_row(self.row(id as usize), dst),
            )
        };
        if ids.len() < 2 * ROWS_PER_TASK {
            copy(ids, out);
        } else {
            ids.par_chunks(ROWS_PER_TASK)
                .zip(out.par_chunks_mut(ROWS_PER_TASK * self.dim))
                .for_each(|(ids, out)| copy(ids, out));
        }
        Ok(())
    }

    /// The destination holds `ids.len()` rows and every id is a row.
    fn check(&self, ids: &[u32], out_len: usize) -> Result<()> {
        if out_len != ids.len() * self.dim {
            return Err(HotrowError::LengthMismatch {
                what: "read_rows destination",
                expected: ids.len() * self.dim,
                got: out_len,
            });
        }
        let rows = self.rows();
        if let Some(position) = ids.iter().position(|&id| id as usize >= rows) {
            return Err(HotrowError::IdOutOfRange {
                id: ids[position],
                position,
                rows,
            });
        }
        Ok(())
    }

    /// [`RowSource::read_rows`] over these rows: spread over the rayon pool when there are
    /// many, the next rows' cache lines prefetched, nothing allocated per row.
    pub(crate) fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        self.for_rows(ids, out, |src, dst| self.convert(src, dst))
    }
}
