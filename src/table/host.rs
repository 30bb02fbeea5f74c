//! [`HostTable`]: rows in host memory, f32 or half precision, owned or borrowed.

use std::borrow::Cow;

use half::{bf16, f16};

use super::{MemoryRows, RowBytes, RowSource, ValueType, WritableRowSource};
use crate::error::{FileProblem, HotrowError, Result};

/// Rows in host memory, row-major: f32, f16 or bf16 values, owned (`Vec`) or borrowed
/// (`&[_]`). Half-precision values are converted to f32 as rows are read.
///
/// [`RowSource::read_rows`] copies rows straight into the destination, spread over the rayon
/// thread pool when there are many; it allocates nothing per row.
///
/// ```
/// use hotrow::{HostTable, RowSource, ValueType};
/// let data = vec![0.5f32; 10 * 4];
/// let t = HostTable::borrowed(&data, 4).unwrap();
/// assert_eq!((t.rows(), t.dim()), (10, 4));
/// let halves = vec![half::f16::from_f32(0.25); 10 * 4];
/// let h = HostTable::owned_f16(halves, 4).unwrap();
/// assert_eq!(h.value_type(), ValueType::F16);
/// assert_eq!(h.read_row(3).unwrap(), vec![0.25; 4]);
/// ```
#[derive(Clone, Debug)]
pub struct HostTable<'a> {
    values: Values<'a>,
    dim: usize,
    /// Optimizer state a training cache flushed (values per row, then the values).
    state: Option<(usize, Vec<f32>)>,
}

#[derive(Clone, Debug)]
enum Values<'a> {
    F32(Cow<'a, [f32]>),
    F16(Cow<'a, [f16]>),
    BF16(Cow<'a, [bf16]>),
}

impl Values<'_> {
    fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F16(v) => v.len(),
            Values::BF16(v) => v.len(),
        }
    }
}

impl<'a> HostTable<'a> {
    fn make(values: Values<'a>, dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(HotrowError::InvalidArgument(
                "dim must be at least 1".into(),
            ));
        }
        let len = values.len();
        if len == 0 || !len.is_multiple_of(dim) {
            return Err(HotrowError::LengthMismatch {
                what: "table data (a non-zero multiple of dim)",
                expected: (len / dim).max(1) * dim,
                got: len,
            });
        }
        Ok(Self {
            values,
            dim,
            state: None,
        })
    }

    /// The same table with optimizer state to start training from (`per_row` values a row,
    /// as [`HostTable::state`] gave them: row-wise Adagrad's accumulators). A training
    /// cache over it loads each row's state with the row.
    pub fn with_state(mut self, per_row: usize, state: Vec<f32>) -> Result<Self> {
        if per_row == 0 || state.len() != self.rows() * per_row {
            return Err(HotrowError::LengthMismatch {
                what: "optimizer state (per_row values for every row, per_row >= 1)",
                expected: self.rows() * per_row.max(1),
                got: state.len(),
            });
        }
        self.state = Some((per_row, state));
        Ok(self)
    }

    /// The optimizer state a training cache flushed into this table, if any: values per
    /// row, and the values (row-major). Save it with the rows to resume training later
    /// ([`HostTable::with_state`]).
    pub fn state(&self) -> Option<(usize, &[f32])> {
        self.state.as_ref().map(|(k, v)| (*k, &v[..]))
    }

    /// Takes ownership of row-major f32 `data` of width `dim`.
    pub fn owned(data: Vec<f32>, dim: usize) -> Result<HostTable<'static>> {
        HostTable::make(Values::F32(Cow::Owned(data)), dim)
    }

    /// Borrows row-major f32 `data` of width `dim`.
    pub fn borrowed(data: &'a [f32], dim: usize) -> Result<Self> {
        Self::make(Values::F32(Cow::Borrowed(data)), dim)
    }

    /// Takes ownership of row-major f16 `data` of width `dim`.
    pub fn owned_f16(data: Vec<f16>, dim: usize) -> Result<HostTable<'static>> {
        HostTable::make(Values::F16(Cow::Owned(data)), dim)
    }

    /// Borrows row-major f16 `data` of width `dim`.
    pub fn borrowed_f16(data: &'a [f16], dim: usize) -> Result<Self> {
        Self::make(Values::F16(Cow::Borrowed(data)), dim)
    }

    /// Takes ownership of row-major bf16 `data` of width `dim`.
    pub fn owned_bf16(data: Vec<bf16>, dim: usize) -> Result<HostTable<'static>> {
        HostTable::make(Values::BF16(Cow::Owned(data)), dim)
    }

    /// Borrows row-major bf16 `data` of width `dim`.
    pub fn borrowed_bf16(data: &'a [bf16], dim: usize) -> Result<Self> {
        Self::make(Values::BF16(Cow::Borrowed(data)), dim)
    }

    /// How the values are stored.
    pub fn value_type(&self) -> ValueType {
        match self.values {
            Values::F32(_) => ValueType::F32,
            Values::F16(_) => ValueType::F16,
            Values::BF16(_) => ValueType::BF16,
        }
    }

    /// All values, row-major, of an f32 table (`None` for f16 and bf16 tables: read
    /// those through [`RowSource::read_rows`] or [`HostTable::read_row`]).
    pub fn data(&self) -> Option<&[f32]> {
        match &self.values {
            Values::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Row `id` as f32 ([`HotrowError::IdOutOfRange`] past the table).
    pub fn read_row(&self, id: u32) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.dim];
        self.read_rows(&[id], &mut out)?;
        Ok(out)
    }

    /// Writes the table as a `.npy` file (format 1.0, C order, `<f4` or `<f2`), which
    /// [`crate::FileTable::open_npy`] and `numpy.load` read. bf16 tables have no numpy
    /// dtype: [`FileProblem::UnsupportedDtype`].
    pub fn save_npy(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let fail = |problem| HotrowError::File {
            path: path.to_path_buf(),
            problem,
        };
        let descr = match self.value_type() {
            ValueType::F32 => "<f4",
            ValueType::F16 => "<f2",
            ValueType::BF16 => return Err(fail(FileProblem::UnsupportedDtype("bfloat16".into()))),
        };
        let shape = format!("({}, {})", self.rows(), self.dim);
        let mut bytes = super::file::npy_header(descr, &shape);
        bytes.extend(self.row_bytes().bytes);
        std::fs::write(path, bytes).map_err(|e| fail(FileProblem::Io(e.to_string())))
    }

    fn row_bytes(&self) -> RowBytes<'_> {
        let bytes: &[u8] = match &self.values {
            Values::F32(v) => bytemuck::cast_slice(v),
            Values::F16(v) => bytemuck::cast_slice(v),
            Values::BF16(v) => bytemuck::cast_slice(v),
        };
        RowBytes {
            bytes,
            ty: self.value_type(),
            dim: self.dim,
        }
    }
}

impl RowSource for HostTable<'_> {
    fn rows(&self) -> usize {
        self.values.len() / self.dim
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        self.row_bytes().read_rows(ids, out)
    }

    fn read_rows_f16(&self, ids: &[u32], out: &mut [half::f16]) -> Result<bool> {
        self.row_bytes().read_rows_f16(ids, out)
    }

    fn memory_rows(&self) -> Result<Option<MemoryRows<'_>>> {
        Ok(Some(MemoryRows(self.row_bytes())))
    }

    fn read_state(&self, ids: &[u32], out: &mut [f32]) -> Result<bool> {
        let Some((per_row, state)) = &self.state else {
            return Ok(false);
        };
        if ids.is_empty() || out.len() != ids.len() * per_row {
            return Ok(false);
        }
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(*per_row)) {
            dst.copy_from_slice(&state[id as usize * per_row..][..*per_row]);
        }
        Ok(true)
    }
}

impl WritableRowSource for HostTable<'_> {
    /// Keeps the state beside the values (any table, borrowed ones too: the state is the
    /// table's own memory), created at the first write; a write with another number of
    /// values per row than the state kept is refused ([`HotrowError::LengthMismatch`]).
    fn write_state(&mut self, ids: &[u32], state: &[f32]) -> Result<bool> {
        crate::batch::check_ids(ids, self.rows())?;
        if ids.is_empty() {
            return Ok(true);
        }
        let per_row = state.len() / ids.len();
        let want = self.state.as_ref().map_or(per_row.max(1), |s| s.0);
        if per_row != want || state.len() != ids.len() * per_row {
            return Err(HotrowError::LengthMismatch {
                what: "optimizer state to write (the same values per row for every row)",
                expected: ids.len() * want,
                got: state.len(),
            });
        }
        let rows = self.rows();
        let (_, kept) = self
            .state
            .get_or_insert_with(|| (per_row, vec![0.0; rows * per_row]));
        for (&id, row) in ids.iter().zip(state.chunks_exact(per_row)) {
            kept[id as usize * per_row..][..per_row].copy_from_slice(row);
        }
        Ok(true)
    }

    /// Writes into an owned table, in its own value type (f16 and bf16 rounded to nearest
    /// even). A borrowed table is refused ([`HotrowError::InvalidArgument`]: the caller's
    /// slice is not writable through it, and a silent copy of the whole table is not what a
    /// write should cost); so are ids out of range and a row count that does not match,
    /// before anything is written.
    fn write_rows(&mut self, ids: &[u32], rows: &[f32]) -> Result<()> {
        crate::batch::check_ids(ids, self.rows())?;
        let dim = self.dim;
        if rows.len() != ids.len() * dim {
            return Err(HotrowError::LengthMismatch {
                what: "rows to write (dim values per id)",
                expected: ids.len() * dim,
                got: rows.len(),
            });
        }
        fn owned<'v, T: Clone>(v: &'v mut Cow<'_, [T]>) -> Result<&'v mut [T]> {
            match v {
                Cow::Owned(values) => Ok(values),
                Cow::Borrowed(_) => Err(HotrowError::InvalidArgument(
                    "writing rows needs an owned HostTable (HostTable::owned*): this one borrows its values".into(),
                )),
            }
        }
        let each = ids.iter().zip(rows.chunks_exact(dim));
        match &mut self.values {
            Values::F32(v) => {
                let v = owned(v)?;
                for (&id, row) in each {
                    v[id as usize * dim..][..dim].copy_from_slice(row);
                }
            }
            Values::F16(v) => {
                let v = owned(v)?;
                for (&id, row) in each {
                    for (d, &x) in v[id as usize * dim..][..dim].iter_mut().zip(row) {
                        *d = f16::from_f32(x);
                    }
                }
            }
            Values::BF16(v) => {
                let v = owned(v)?;
                for (&id, row) in each {
                    for (d, &x) in v[id as usize * dim..][..dim].iter_mut().zip(row) {
                        *d = bf16::from_f32(x);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_tables_take_rows_back_in_their_own_value_type() {
        let rows = 6;
        let dim = 3;
        let new_rows = [0.5f32, -1.25, 3.0, 7.0, 8.0, -9.5];
        let tables = [
            HostTable::owned(vec![1.0; rows * dim], dim).unwrap(),
            HostTable::owned_f16(vec![f16::ONE; rows * dim], dim).unwrap(),
            HostTable::owned_bf16(vec![bf16::ONE; rows * dim], dim).unwrap(),
        ];
        for mut t in tables {
            t.write_rows(&[4, 0], &new_rows).unwrap();
            // (every value above is exact in f16 and bf16)
            assert_eq!(t.read_row(4).unwrap(), new_rows[..3]);
            assert_eq!(t.read_row(0).unwrap(), new_rows[3..]);
            assert_eq!(t.read_row(1).unwrap(), vec![1.0; 3], "other rows untouched");
        }
    }

    #[test]
    fn bad_writes_change_nothing() {
        let data = vec![2.0f32; 4 * 2];
        let mut t = HostTable::owned(data.clone(), 2).unwrap();
        let before = t.data().unwrap().to_vec();
        // out of range (the bad id last: nothing before it may be written either)
        let err = t.write_rows(&[1, 4], &[9.0; 4]).unwrap_err();
        assert!(
            matches!(err, HotrowError::IdOutOfRange { id: 4, .. }),
            "{err:?}"
        );
        // a row count that does not match the ids
        let err = t.write_rows(&[1], &[9.0; 3]).unwrap_err();
        assert!(matches!(err, HotrowError::LengthMismatch { .. }), "{err:?}");
        assert_eq!(t.data().unwrap(), &before[..]);
        // a borrowed table is not written through
        let mut b = HostTable::borrowed(&data, 2).unwrap();
        let err = b.write_rows(&[0], &[9.0; 2]).unwrap_err();
        assert!(matches!(err, HotrowError::InvalidArgument(_)), "{err:?}");
        assert_eq!(b.data().unwrap(), &data[..]);
    }
}
