//! The one error type of the crate: every fallible call returns [`HotrowError`].

use thiserror::Error;

/// Everything that can go wrong in hotrow, as a typed value.
///
/// Input errors (ids out of range, bad offsets, mismatched lengths, NaN weights) are found
/// before any GPU work or state change: the cache, its counters and the GPU buffers stay as
/// they were when one of them is returned.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HotrowError {
    /// No adapter that can run compute shaders was found.
    #[error("no GPU adapter with compute shaders found (backends tried: {backends}){hint}")]
    NoAdapter {
        /// The backends that were searched.
        backends: String,
        /// Extra advice (e.g. which package provides a software adapter).
        hint: String,
    },
    /// `WGPU_ADAPTER_NAME` (or [`crate::GpuOptions::adapter_name`]) matched no adapter.
    #[error("no adapter name contains {wanted:?}; adapters seen: {seen}")]
    AdapterNotFound {
        /// The requested name fragment.
        wanted: String,
        /// Names of the adapters that were enumerated.
        seen: String,
    },
    /// The adapter refused the device request.
    #[error("device request failed: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),
    /// An id is not a row of the table.
    #[error("id {id} at position {position} is out of range for a table of {rows} rows")]
    IdOutOfRange {
        /// The offending id.
        id: u32,
        /// Its position in the caller's batch.
        position: usize,
        /// Number of rows of the table.
        rows: usize,
    },
    /// A range of rows (`first..first + count`) is not inside the buffer.
    #[error("rows {first}..{first}+{count} are out of range for a buffer of {rows} rows")]
    RowRange {
        /// First row of the range.
        first: usize,
        /// Rows in the range.
        count: usize,
        /// Rows of the buffer.
        rows: usize,
    },
    /// A buffer made on another [`crate::GpuContext`] was passed to this one's op (each
    /// context has its own device; its buffers mean nothing to another).
    #[error("{what} belongs to another GpuContext than the one it was used with")]
    ForeignContext {
        /// Which argument.
        what: &'static str,
    },
    /// Two inputs that must agree in length do not.
    #[error("length mismatch for {what}: expected {expected}, got {got}")]
    LengthMismatch {
        /// Which input.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A dimension that must match the table's does not.
    #[error("dimension mismatch for {what}: table dim is {expected}, got {got}")]
    DimMismatch {
        /// Which input.
        what: &'static str,
        /// The table's dim.
        expected: usize,
        /// The dim given.
        got: usize,
    },
    /// A size or shape argument is invalid (zero dim, zero capacity, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The device lacks a feature the call needs (e.g. storage buffers in host memory on
    /// GL or in a browser); nothing was allocated.
    #[error("{what} needs the device feature {feature}, which this device lacks")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// The `wgpu::Features` flag it needs.
        feature: &'static str,
    },
    /// A buffer would exceed an adapter limit that cannot be worked around by splitting.
    #[error("{what} needs {bytes} bytes, over the adapter limit {limit_name} = {limit}")]
    ExceedsLimit {
        /// What was being allocated.
        what: &'static str,
        /// Bytes needed.
        bytes: u64,
        /// Name of the `wgpu::Limits` field (or hotrow budget) that was exceeded.
        limit_name: &'static str,
        /// Value of that limit.
        limit: u64,
    },
    /// The device could not allocate a buffer.
    #[error("GPU out of memory while allocating {what} ({bytes} bytes)")]
    OutOfMemory {
        /// What was being allocated.
        what: &'static str,
        /// Bytes requested.
        bytes: u64,
    },
    /// Bag offsets are malformed.
    #[error("bad bag offsets at position {position}: {reason}")]
    BadOffsets {
        /// Index into the offsets slice.
        position: usize,
        /// What is wrong.
        reason: String,
    },
    /// An input value (a per-sample weight, a combination weight, a query) is NaN or
    /// infinite.
    #[error("{what} at position {position} is not finite ({value})")]
    NonFinite {
        /// Which input ("weights", "x", "queries").
        what: &'static str,
        /// Position in that input's slice.
        position: usize,
        /// The value.
        value: f32,
    },
    /// A candidate set was empty (scores over no candidates are undefined).
    #[error("the candidate set is empty")]
    EmptyCandidates,
    /// A pooling mode was given per-sample weights it does not support.
    #[error("pooling mode {mode} does not support per-sample weights")]
    WeightsUnsupported {
        /// The pooling mode.
        mode: &'static str,
    },
    /// The GPU device was lost (driver reset, device removed, or destroyed).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// GPU work did not finish in time (the device may be hung or very slow); the device is
    /// not known to be lost.
    #[error("GPU timeout: {0}")]
    Timeout(String),
    /// A buffer could not be mapped for reading or writing.
    #[error("buffer mapping failed: {0}")]
    Map(String),
    /// wgpu reported an error (validation or internal).
    #[error("GPU error: {0}")]
    Gpu(String),
    /// A row source failed to provide rows.
    #[error("row source failed: {0}")]
    RowSource(String),
    /// A row source panicked while providing rows; the panic was caught, the batch failed
    /// cleanly and the cache holds none of its missed rows.
    #[error("row source panicked: {0}")]
    RowSourcePanicked(String),
    /// One table of a table-batched call ([`crate::TableBatchedCache`]) failed: its input
    /// was wrong, or its row source failed or panicked while its rows were read.
    #[error("table {table}: {source}")]
    InTable {
        /// The table's index.
        table: usize,
        /// What was wrong with its input.
        #[source]
        source: Box<HotrowError>,
    },
    /// One device of a multi-GPU cache ([`crate::ReplicatedCache`],
    /// [`crate::PartitionedCache`]) failed its part of a call (lost, out of memory, its
    /// rows' source failed, ...): the call failed as a whole and its output must not be
    /// used; the other devices' caches stay consistent.
    #[error("device {device} ({adapter}): {source}")]
    OnDevice {
        /// The device's index in the multi-GPU cache.
        device: usize,
        /// Its adapter's name.
        adapter: String,
        /// What went wrong there.
        #[source]
        source: Box<HotrowError>,
    },
    /// A remote row tier (Redis) could not provide row `id` (or, `id: None`, could not be
    /// opened): the batch failed cleanly and the cache holds none of its missed rows.
    #[error("remote rows{}: {problem}", id.map(|i| format!(" (row {i})")).unwrap_or_default())]
    Remote {
        /// The first row of the request that failed, when a row was asked for.
        id: Option<u32>,
        /// What went wrong.
        problem: RemoteProblem,
    },
    /// A table file could not be used: which file, and what is wrong with it.
    #[error("{}: {problem}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: FileProblem,
    },
}

/// What is wrong with a table file ([`HotrowError::File`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FileProblem {
    /// There is no such file.
    #[error("no such file")]
    Missing,
    /// Reading or mapping the file failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// The header cannot be parsed (not the format, or damaged).
    #[error("corrupt header: {0}")]
    CorruptHeader(String),
    /// The values are of a type hotrow does not read (it reads f32, f16 and bf16).
    #[error("unsupported dtype {0} (hotrow reads float32, float16 and bfloat16)")]
    UnsupportedDtype(String),
    /// A `.npy` array stored in column-major (Fortran) order.
    #[error("Fortran (column-major) order; save a C-ordered array (numpy.ascontiguousarray)")]
    FortranOrder,
    /// The array is not a 2-D table of rows.
    #[error("shape {0:?} is not a 2-D table (rows x dim) with rows and dim >= 1")]
    NotTwoD(Vec<usize>),
    /// The header promises more bytes than the file has.
    #[error("truncated: the header says the data ends at byte {need}, the file has {have}")]
    Truncated {
        /// Bytes the header requires.
        need: u64,
        /// Bytes the file has.
        have: u64,
    },
    /// A `.safetensors` file has no tensor of that name.
    #[error("no tensor named {name:?} (tensors: {available:?})")]
    UnknownTensor {
        /// The name asked for.
        name: String,
        /// The names the file has.
        available: Vec<String>,
    },
    /// The file changed (size or modification time) after it was opened; its rows are no
    /// longer read (reopen it).
    #[error("changed after it was opened (size or modification time); reopen it")]
    Changed,
}

/// Shorthand for `Result<T, HotrowError>`.
pub type Result<T, E = HotrowError> = std::result::Result<T, E>;

/// What went wrong with a remote row tier ([`HotrowError::Remote`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RemoteProblem {
    /// The row's key does not exist.
    #[error("key {key} is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// The row's value has the wrong number of bytes for the table's dim and value type.
    #[error("key {key} holds {got} bytes, a row is {want}")]
    WrongLength {
        /// The key.
        key: String,
        /// Bytes found.
        got: usize,
        /// Bytes of one row.
        want: usize,
    },
    /// The server did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// No connection, or it dropped (the next call connects again).
    #[error("connection: {0}")]
    Connection(String),
    /// The table's description key is missing or malformed.
    #[error("table description: {0}")]
    BadTable(String),
    /// Another error reported by the server or the client.
    #[error("{0}")]
    Other(String),
}
