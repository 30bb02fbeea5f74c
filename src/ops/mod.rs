//! The GPU ops: for each kernel family, its params block (mirroring the WGSL struct), its
//! dispatch sizing and its launch over plain buffer views, one module per family beside its
//! shader file. Ops know the `gpu` layer and nothing above it.

pub(crate) mod bag;
pub(crate) mod copy_rows;
pub(crate) mod driven;
pub(crate) mod groups;
pub(crate) mod matmul;
pub(crate) mod slot_index;
pub(crate) mod update;

use crate::gpu::{RowLayout, Shader};

/// Every kernel family of the crate, with each prefix it is compiled with.
pub(crate) const KERNELS: &[&Shader] = &[
    &copy_rows::SHADER,
    &bag::SHADER,
    &matmul::SHADER,
    &slot_index::SHADER,
    &driven::FIND,
    &driven::EVICT,
    &driven::FETCH,
    &driven::WRITE_BACK,
    &update::SHADER,
];

/// Every WGSL module the crate can build: `(file, complete source)` for each kernel file
/// under `shaders/` and each element prefix it is compiled with. The tests validate each
/// with naga and translate it for every backend; applications can do the same for theirs.
///
/// ```
/// for (file, source) in hotrow::shader_modules() {
///     assert!(source.contains("@compute"), "{file}");
/// }
/// ```
pub fn shader_modules() -> Vec<(&'static str, String)> {
    KERNELS
        .iter()
        .flat_map(|s| s.prefixes.iter().map(move |p| (s.file, s.with_prefix(p))))
        .collect()
}

/// Every embedded WGSL file, `(file name, text)`: the kernel files (without prefixes) and
/// the declarations some of them share.
pub fn shader_files() -> Vec<(&'static str, &'static str)> {
    KERNELS
        .iter()
        .map(|s| (s.file, s.source))
        // (declarations the GPU-driven path's kernels share, prepended to each)
        .chain([("driven_common.wgsl", driven::COMMON)])
        .collect()
}

/// Rows an op reads, as plain buffers: row `i` of the batch is row `slots[i]` of `rows`
/// (or row `i` itself when `identity`).
pub(crate) struct RowsView<'a> {
    pub(crate) rows: &'a wgpu::Buffer,
    /// Bytes of `rows` the op may read.
    pub(crate) rows_bytes: u64,
    pub(crate) slots: &'a wgpu::Buffer,
    /// Bytes of `slots` the op may read.
    pub(crate) slots_bytes: u64,
    pub(crate) identity: bool,
    pub(crate) layout: RowLayout,
}

/// Bytes of a binding read as `lanes`-wide elements: whole 16-byte units for vec4 views
/// (buffers are allocated in 16-byte units, so this never passes the buffer's end).
pub(crate) fn elem_bytes(bytes: u64, lanes: usize, buffer: &wgpu::Buffer) -> u64 {
    if lanes == 4 {
        bytes.next_multiple_of(16).min(buffer.size())
    } else {
        bytes
    }
}

/// Params blocks as the tests see them: `(WGSL struct name, size, field offsets)` of each
/// Rust mirror, checked against the WGSL declaration by naga reflection.
#[doc(hidden)]
pub fn params_layouts() -> Vec<(&'static str, usize, Vec<usize>)> {
    vec![
        copy_rows::CopyParams::layout(),
        bag::BagParams::layout(),
        matmul::MatmulParams::layout(),
        slot_index::MapParams::layout(),
        driven::DrivenParams::layout(),
        update::UpdateParams::layout(),
    ]
}

/// `(name, size, field offsets)` of a `#[repr(C)]` params struct of u32 fields.
macro_rules! params_layout {
    ($ty:ident, $wgsl:literal, $($field:ident),+) => {
        impl $ty {
            pub(crate) fn layout() -> (&'static str, usize, Vec<usize>) {
                (
                    $wgsl,
                    std::mem::size_of::<$ty>(),
                    vec![$(std::mem::offset_of!($ty, $field)),+],
                )
            }
        }
    };
}
pub(crate) use params_layout;
