//! [`FileTable`]: the rows of a `.npy` or `.safetensors` file, memory-mapped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::{MemoryRows, RowBytes, RowSource, ValueType};
use crate::error::{FileProblem, HotrowError, Result};

/// A table read straight from a file: a 2-D `.npy` array (float32 or float16, C order) or
/// one named 2-D tensor of a `.safetensors` file (F32, F16 or BF16), memory-mapped.
///
/// Opening reads and checks only the header, so a 50 GB file opens at once; the operating
/// system pages rows in as the cache reads them (the mapping is advised for random access,
/// so resident memory grows with the rows read, not with the file). Rows are copied with
/// the same parallel, prefetching loop as [`crate::HostTable`], half-precision values
/// converted to f32.
///
/// **If the file changes while it is open.** The mapping shows the file as it is on disk,
/// so an in-place rewrite would change rows under the cache, and a truncation would make
/// reading the lost pages fault. Before every read the table checks the file's size and
/// modification time against those at opening, and returns
/// [`FileProblem::Changed`] instead of reading a changed file (a batch then fails cleanly;
/// reopen the file to serve the new rows). Writers should replace a table atomically (write
/// a new file, then rename it over the old path): the open table keeps reading the old
/// file, which stays intact until it is closed. A truncation that races with a read in
/// progress, or a rewrite within the file system's timestamp resolution that keeps the
/// size, cannot be detected this way.
///
/// Every problem with a file is [`HotrowError::File`] naming the file and a
/// [`FileProblem`]: missing, truncated, not 2-D, unsupported dtype, Fortran order, unknown
/// tensor name, corrupt header.
///
/// ```no_run
/// # fn main() -> Result<(), hotrow::HotrowError> {
/// use hotrow::{CacheConfig, EmbeddingCache, FileTable, GpuContext, RowSource};
/// // numpy.save("emb.npy", emb.weight.detach().cpu().numpy())
/// let table = FileTable::open_npy("emb.npy")?;
/// println!("{} rows x {}", table.rows(), table.dim());
/// let ctx = GpuContext::new()?;
/// let mut cache = EmbeddingCache::new(&ctx, table, CacheConfig::default())?;
/// let rows = cache.lookup(&[0, 42, 42])?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileTable {
    path: PathBuf,
    file: File,
    map: Mmap,
    /// Byte range of the rows in the file.
    start: usize,
    end: usize,
    ty: ValueType,
    rows: usize,
    dim: usize,
    /// Size and modification time when opened (and after each of its own writes).
    opened: (u64, Option<SystemTime>),
    /// The file opened for writing as well ([`FileTable::writable`]).
    writer: Option<File>,
}

impl FileTable {
    /// Opens a `.npy` file holding a 2-D C-ordered array of float32 (`<f4`) or float16
    /// (`<f2`) values, as `numpy.save` writes it.
    pub fn open_npy(path: impl AsRef<Path>) -> Result<Self> {
        let (path, file, map) = open_mapped(path.as_ref())?;
        let bad = |problem| file_error(&path, problem);
        let h = parse_npy_header(&map).map_err(bad)?;
        let (rows, dim) = table_shape(&h.shape).map_err(bad)?;
        let data = data_bytes(rows, dim, h.ty).map_err(bad)?;
        let need = (h.data_start as u64).saturating_add(data);
        let have = map.len() as u64;
        if have < need {
            return Err(bad(FileProblem::Truncated { need, have }));
        }
        Self::finish(path, file, map, h.data_start, h.ty, rows, dim)
    }

    /// Opens the 2-D tensor `tensor` (F32, F16 or BF16) of a `.safetensors` file, as
    /// `safetensors.torch.save_file` writes it.
    pub fn open_safetensors(path: impl AsRef<Path>, tensor: &str) -> Result<Self> {
        let (path, file, map) = open_mapped(path.as_ref())?;
        let bad = |problem| file_error(&path, problem);
        let (header, meta) = match SafeTensors::read_metadata(&map) {
            Ok(m) => m,
            Err(SafeTensorError::MetadataIncompleteBuffer) => {
                let need = safetensors_data_end(&map).unwrap_or(0);
                let have = map.len() as u64;
                return Err(bad(if need > have {
                    FileProblem::Truncated { need, have }
                } else {
                    FileProblem::CorruptHeader(
                        "the file's length does not match its tensors".into(),
                    )
                }));
            }
            Err(e) => return Err(bad(FileProblem::CorruptHeader(e.to_string()))),
        };
        let Some(info) = meta.info(tensor) else {
            let mut available: Vec<String> = meta.tensors().into_keys().collect();
            available.sort();
            return Err(bad(FileProblem::UnknownTensor {
                name: tensor.into(),
                available,
            }));
        };
        let ty = match info.dtype {
            Dtype::F32 => ValueType::F32,
            Dtype::F16 => ValueType::F16,
            Dtype::BF16 => ValueType::BF16,
            other => return Err(bad(FileProblem::UnsupportedDtype(format!("{other:?}")))),
        };
        let (rows, dim) = table_shape(&info.shape).map_err(bad)?;
        data_bytes(rows, dim, ty).map_err(bad)?;
        // read_metadata checked the offsets against the shapes and the file's length.
        let data = 8 + header;
        let (start, end) = (data + info.data_offsets.0, data + info.data_offsets.1);
        if end - start != rows * dim * ty.bytes() || end > map.len() {
            return Err(bad(FileProblem::CorruptHeader(format!(
                "tensor {tensor:?}: data offsets {:?} do not hold its shape",
                info.data_offsets
            ))));
        }
        Self::finish(path, file, map, start, ty, rows, dim)
    }

    fn finish(
        path: PathBuf,
        file: File,
        map: Mmap,
        start: usize,
        ty: ValueType,
        rows: usize,
        dim: usize,
    ) -> Result<Self> {
        // Embedding rows are read at random: read-ahead would page in neighbours nobody
        // asked for (and grow resident memory with them).
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        let opened = stamp(&file).map_err(|e| file_error(&path, FileProblem::Io(e)))?;
        Ok(Self {
            path,
            file,
            map,
            start,
            end: start + rows * dim * ty.bytes(),
            ty,
            rows,
            dim,
            opened,
            writer: None,
        })
    }

    /// The same table, writable: training's [`crate::WritableRowSource`] writes rows into
    /// the file in place (in its own value type: f16 and bf16 rounded to nearest even),
    /// seen at once by the mapping, and syncs them to disk before returning. The file is
    /// opened again for writing, and refused ([`FileProblem::Changed`]) if it changed since
    /// this table opened it.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{CacheConfig, EmbeddingCache, FileTable, GpuContext, Optimizer};
    /// let table = FileTable::open_npy("emb.npy")?.writable()?;
    /// let ctx = GpuContext::new()?;
    /// let config = CacheConfig::default().training(Optimizer::Sgd { lr: 0.01 });
    /// let mut cache = EmbeddingCache::new(&ctx, table, config)?;
    /// // ... forward, backward_bags ...
    /// cache.flush()?; // the trained rows are in emb.npy
    /// # Ok(()) }
    /// ```
    pub fn writable(mut self) -> Result<Self> {
        let io = |e: std::io::Error| file_error(&self.path, FileProblem::Io(e.to_string()));
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io)?;
        let now = stamp(&writer).map_err(|e| file_error(&self.path, FileProblem::Io(e)))?;
        if now != self.opened {
            return Err(file_error(&self.path, FileProblem::Changed));
        }
        self.writer = Some(writer);
        Ok(self)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the file stores the values (read as f32).
    pub fn value_type(&self) -> ValueType {
        self.ty
    }

    /// Row `id` as f32.
    pub fn read_row(&self, id: u32) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.dim];
        self.read_rows(&[id], &mut out)?;
        Ok(out)
    }
}

impl RowSource for FileTable {
    fn rows(&self) -> usize {
        self.rows
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        self.rows_checked()?.read_rows(ids, out)
    }

    fn read_rows_f16(&self, ids: &[u32], out: &mut [half::f16]) -> Result<bool> {
        if self.ty != ValueType::F16 {
            return Ok(false);
        }
        self.rows_checked()?.read_rows_f16(ids, out)
    }

    fn memory_rows(&self) -> Result<Option<MemoryRows<'_>>> {
        Ok(Some(MemoryRows(self.rows_checked()?)))
    }
}

impl crate::table::WritableRowSource for FileTable {
    /// Writes rows into the file ([`FileTable::writable`]; a table opened read-only is
    /// refused with [`HotrowError::InvalidArgument`]), runs of consecutive ids in one write
    /// each, then syncs the file's data. Ids out of range, a row count that does not match,
    /// and a file changed by someone else since opening are refused before anything is
    /// written.
    fn write_rows(&mut self, ids: &[u32], rows: &[f32]) -> Result<()> {
        crate::batch::check_ids(ids, self.rows)?;
        let dim = self.dim;
        if rows.len() != ids.len() * dim {
            return Err(HotrowError::LengthMismatch {
                what: "rows to write (dim values per id)",
                expected: ids.len() * dim,
                got: rows.len(),
            });
        }
        self.rows_checked()?;
        let path = self.path.clone();
        let io = |e: std::io::Error| file_error(&path, FileProblem::Io(e.to_string()));
        let Some(writer) = self.writer.as_mut() else {
            return Err(HotrowError::InvalidArgument(format!(
                "{} is open read-only: FileTable::writable opens it for training's writes",
                self.path.display()
            )));
        };
        let row_bytes = dim * self.ty.bytes();
        let mut bytes = Vec::new();
        let mut k = 0;
        while k < ids.len() {
            // a run of consecutive ids: one write
            let mut end = k + 1;
            while end < ids.len() && ids[end] == ids[end - 1].wrapping_add(1) {
                end += 1;
            }
            bytes.clear();
            encode_values(self.ty, &rows[k * dim..end * dim], &mut bytes);
            let at = (self.start + ids[k] as usize * row_bytes) as u64;
            write_at(writer, at, &bytes).map_err(io)?;
            k = end;
        }
        writer.sync_data().map_err(io)?;
        self.opened = stamp(writer).map_err(|e| file_error(&path, FileProblem::Io(e)))?;
        Ok(())
    }
}

/// `values` stored as `ty` (little-endian; f16 and bf16 rounded to nearest even).
fn encode_values(ty: ValueType, values: &[f32], out: &mut Vec<u8>) {
    match ty {
        ValueType::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        ValueType::F16 => out.extend(
            values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes()),
        ),
        ValueType::BF16 => out.extend(
            values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()),
        ),
    }
}

/// Writes all of `bytes` at byte `at` of `file`.
fn write_at(file: &mut File, at: u64, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(at))?;
    file.write_all(bytes)
}

impl FileTable {
    /// The rows, once the file is checked unchanged since opening.
    fn rows_checked(&self) -> Result<RowBytes<'_>> {
        let now = stamp(&self.file).map_err(|e| file_error(&self.path, FileProblem::Io(e)))?;
        if now != self.opened {
            return Err(file_error(&self.path, FileProblem::Changed));
        }
        Ok(RowBytes {
            bytes: &self.map[self.start..self.end],
            ty: self.ty,
            dim: self.dim,
        })
    }
}

fn file_error(path: &Path, problem: FileProblem) -> HotrowError {
    HotrowError::File {
        path: path.to_path_buf(),
        problem,
    }
}

/// Size and modification time of the open file.
fn stamp(file: &File) -> std::result::Result<(u64, Option<SystemTime>), String> {
    let m = file.metadata().map_err(|e| e.to_string())?;
    Ok((m.len(), m.modified().ok()))
}

fn open_mapped(path: &Path) -> Result<(PathBuf, File, Mmap)> {
    let path = path.to_path_buf();
    let io = |e: std::io::Error| {
        let problem = match e.kind() {
            std::io::ErrorKind::NotFound => FileProblem::Missing,
            _ => FileProblem::Io(e.to_string()),
        };
        file_error(&path, problem)
    };
    let file = File::open(&path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len < 8 {
        return Err(file_error(
            &path,
            FileProblem::CorruptHeader(format!("{len} bytes: too short for any header")),
        ));
    }
    // SAFETY: the mapping is read-only and private to this table; the file changing under
    // it is the hazard, which `FileTable` documents and checks for before every read.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    Ok((path, file, map))
}

/// Bytes of `rows x dim` values of `ty` ([`FileProblem::CorruptHeader`] past `u64`).
fn data_bytes(rows: usize, dim: usize, ty: ValueType) -> std::result::Result<u64, FileProblem> {
    (rows as u64)
        .checked_mul(dim as u64)
        .and_then(|n| n.checked_mul(ty.bytes() as u64))
        .filter(|&n| n <= usize::MAX as u64)
        .ok_or_else(|| FileProblem::CorruptHeader(format!("shape ({rows}, {dim}) is too large")))
}

/// Rows and dim of a 2-D shape with both at least 1.
fn table_shape(shape: &[usize]) -> std::result::Result<(usize, usize), FileProblem> {
    match *shape {
        [rows, dim] if rows >= 1 && dim >= 1 => Ok((rows, dim)),
        _ => Err(FileProblem::NotTwoD(shape.to_vec())),
    }
}

/// The largest data offset a `.safetensors` header names (for a truncation message; the
/// crate rejects such a file without saying how long it should be).
fn safetensors_data_end(map: &[u8]) -> Option<u64> {
    let n = u64::from_le_bytes(map.get(..8)?.try_into().ok()?) as usize;
    let header = std::str::from_utf8(map.get(8..8 + n)?).ok()?;
    let mut end = 0u64;
    let mut rest = header;
    while let Some(at) = rest.find("\"data_offsets\"") {
        rest = &rest[at..];
        let open = rest.find('[')?;
        let close = rest.find(']')?;
        let last = rest[open + 1..close].split(',').next_back()?.trim();
        end = end.max(last.parse().ok()?);
        rest = &rest[close..];
    }
    Some(8 + n as u64 + end)
}

/// The bytes before the data of a `.npy` file (format 1.0, C order) of values `descr`
/// (`<f4`, `<f2`, ...) and `shape` (a Python tuple, e.g. `(3, 5)`), padded so the data
/// starts 64-byte aligned.
pub(crate) fn npy_header(descr: &str, shape: &str) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic, version, length, header, newline.
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((h.len() as u16).to_le_bytes());
    bytes.extend(h.as_bytes());
    bytes
}

/// What a `.npy` header says.
#[derive(Debug, PartialEq)]
struct NpyHeader {
    ty: ValueType,
    shape: Vec<usize>,
    data_start: usize,
}

/// Parses the header of a `.npy` file (format versions 1, 2 and 3).
fn parse_npy_header(bytes: &[u8]) -> std::result::Result<NpyHeader, FileProblem> {
    let corrupt = |why: &str| FileProblem::CorruptHeader(why.into());
    if bytes.get(..6) != Some(b"\x93NUMPY") {
        return Err(corrupt("no .npy magic (\\x93NUMPY)"));
    }
    let major = *bytes.get(6).ok_or_else(|| corrupt("no version"))?;
    let (len, at) = match major {
        1 => {
            let b = bytes
                .get(8..10)
                .ok_or_else(|| corrupt("no header length"))?;
            (u16::from_le_bytes([b[0], b[1]]) as usize, 10)
        }
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or_else(|| corrupt("no header length"))?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(corrupt(&format!("unknown format version {v}"))),
    };
    let text = bytes
        .get(at..at + len)
        .ok_or_else(|| corrupt("header longer than the file"))?;
    let text = std::str::from_utf8(text).map_err(|_| corrupt("header is not text"))?;
    let dict = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| corrupt("header is not a dict"))?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for item in split_top_level(dict) {
        let Some((key, value)) = item.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match unquote(key.trim()) {
            Some("descr") => descr = unquote(value),
            Some("fortran_order") => {
                fortran = match value {
                    "True" => Some(true),
                    "False" => Some(false),
                    _ => return Err(corrupt("fortran_order is not True or False")),
                }
            }
            Some("shape") => {
                let inner = value
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(|| corrupt("shape is not a tuple"))?;
                let dims: std::result::Result<Vec<usize>, _> = inner
                    .split(',')
                    .map(|d| d.trim().trim_end_matches('L'))
                    .filter(|d| !d.is_empty())
                    .map(str::parse)
                    .collect();
                shape = Some(dims.map_err(|_| corrupt("shape holds a non-integer"))?);
            }
            _ => {}
        }
    }
    let descr = descr.ok_or_else(|| corrupt("no 'descr' string"))?;
    if fortran.ok_or_else(|| corrupt("no 'fortran_order'"))? {
        return Err(FileProblem::FortranOrder);
    }
    let shape = shape.ok_or_else(|| corrupt("no 'shape'"))?;
    let ty = match descr {
        "<f4" => ValueType::F32,
        "<f2" => ValueType::F16,
        "=f4" if cfg!(target_endian = "little") => ValueType::F32,
        "=f2" if cfg!(target_endian = "little") => ValueType::F16,
        other => return Err(FileProblem::UnsupportedDtype(other.into())),
    };
    Ok(NpyHeader {
        ty,
        shape,
        data_start: at + len,
    })
}

/// Splits a Python dict body at commas outside brackets and quotes.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut quote, mut from) = (Vec::new(), 0i32, None, 0);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[from..]);
    parts
}

/// The text inside matching single or double quotes.
fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|t| t.strip_suffix('"')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format-1.0 header whose text is exactly `dict` (then a newline).
    fn npy(dict: &str) -> Vec<u8> {
        let text = format!("{dict}\n");
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((text.len() as u16).to_le_bytes());
        v.extend(text.as_bytes());
        v
    }

    #[test]
    fn npy_headers() {
        let ok = npy_header("<f4", "(3, 5)");
        let h = parse_npy_header(&ok).unwrap();
        assert_eq!((h.ty, h.shape), (ValueType::F32, vec![3, 5]));
        assert_eq!(h.data_start, ok.len());
        assert_eq!(h.data_start % 64, 0);
        let half = npy("{'shape': (7L, 2L), 'descr': '<f2', 'fortran_order': False}");
        assert_eq!(parse_npy_header(&half).unwrap().ty, ValueType::F16);
        let bad = |h: &str| parse_npy_header(&npy(h)).unwrap_err();
        assert_eq!(
            bad("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 5), }"),
            FileProblem::FortranOrder
        );
        assert_eq!(
            bad("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 5), }"),
            FileProblem::UnsupportedDtype("<f8".into())
        );
        assert_eq!(
            bad("{'descr': '>f4', 'fortran_order': False, 'shape': (3, 5), }"),
            FileProblem::UnsupportedDtype(">f4".into())
        );
        assert!(matches!(
            bad("{'descr': '<f4', 'shape': (3, 5), }"),
            FileProblem::CorruptHeader(_)
        ));
        assert!(matches!(
            bad("{'descr': '<f4', 'fortran_order': False, 'shape': (3, x), }"),
            FileProblem::CorruptHeader(_)
        ));
        assert!(matches!(
            parse_npy_header(b"PK\x03\x04 not numpy"),
            Err(FileProblem::CorruptHeader(_))
        ));
        assert_eq!(
            table_shape(&[12]).unwrap_err(),
            FileProblem::NotTwoD(vec![12])
        );
        assert!(table_shape(&[2, 3, 4]).is_err() && table_shape(&[0, 3]).is_err());
        assert!(matches!(
            data_bytes(usize::MAX, 2, ValueType::F32),
            Err(FileProblem::CorruptHeader(_))
        ));
    }
}
