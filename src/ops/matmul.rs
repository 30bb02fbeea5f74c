//! Block-wise products over rows read through slots (shaders/block_matmul.wgsl): scores
//! (`Q x E[cand]^T`) and combinations (`X x E[ids]`).
//!
//! Dispatch sizing: one 16 x 16-thread workgroup per 128 x 128 tile of the output, the tiles
//! laid out in a 2-D grid past `max_compute_workgroups_per_dimension`. Only the rows named
//! by the candidates / ids are read, each once per tile that needs it.

use crate::error::Result;
use crate::gpu::{encode as encode_pass, GpuContext, LaunchState, Shader, Staged};
use crate::gpu::{row_prefix, RowLayout};
use crate::ops::{elem_bytes, params_layout, RowsView};

/// The prefix of one variant: how rows are read (a [`crate::RowFormat`], vec4 or scalar),
/// operand A (`AElem`) vec4 or f32, and the product (`B_MODE` 0: scores, 1: combine).
macro_rules! matmul_prefix {
    ($rows:ident, $a:ident, $mode:literal) => {
        concat!(
            row_prefix!($rows),
            row_prefix!($a),
            "const B_MODE: u32 = ",
            $mode,
            "u;\n"
        )
    };
}

/// All A and mode variants of one row prefix, in `variant()` order.
macro_rules! matmul_rows {
    ($rows:ident) => {
        [
            matmul_prefix!($rows, A_VEC4, "0"),
            matmul_prefix!($rows, A_F32, "0"),
            matmul_prefix!($rows, A_VEC4, "1"),
            matmul_prefix!($rows, A_F32, "1"),
        ]
    };
}

/// Every variant, indexed by `variant()`: row prefixes in [`crate::gpu::ROW_PREFIXES`]
/// order, each with A vec4 / f32 for scores, then combine.
const PREFIXES: [[&str; 4]; 12] = [
    matmul_rows!(F32_V4),
    matmul_rows!(F32_S),
    matmul_rows!(F16_V4),
    matmul_rows!(F16_S),
    matmul_rows!(F16_NATIVE_V4),
    matmul_rows!(F16_NATIVE_S),
    matmul_rows!(INT8_V4),
    matmul_rows!(INT8_S),
    matmul_rows!(F32_STATE_V4),
    matmul_rows!(F32_STATE_S),
    matmul_rows!(F32_MOMENTS_V4),
    matmul_rows!(F32_MOMENTS_S),
];

/// [`PREFIXES`] flattened (for the shader list).
const ALL_PREFIXES: [&str; 48] = {
    let mut all = [""; 48];
    let mut i = 0;
    while i < 48 {
        all[i] = PREFIXES[i / 4][i % 4];
        i += 1;
    }
    all
};

/// The prefix for rows of `layout` and an A of `a_lanes` lanes.
fn variant(product: Product, layout: RowLayout, a_lanes: usize) -> &'static str {
    let mode = match product {
        Product::Scores => 0,
        Product::Combine => 2,
    };
    PREFIXES[layout.prefix_index()][mode + usize::from(a_lanes != 4)]
}

pub(crate) const SHADER: Shader = Shader {
    file: "block_matmul.wgsl",
    source: include_str!("../../shaders/block_matmul.wgsl"),
    prefixes: &ALL_PREFIXES,
};

/// Output tile edge of block_matmul.wgsl (must match its `TILE`).
const TILE: usize = 128;

/// Mirror of `MatmulParams` in block_matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    dim: u32,
    identity: u32,
    tiles_n: u32,
    tiles_total: u32,
    groups_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
params_layout!(
    MatmulParams,
    "MatmulParams",
    m,
    n,
    k,
    lda,
    dim,
    identity,
    tiles_n,
    tiles_total,
    groups_x,
    _pad0,
    _pad1,
    _pad2
);

/// Which operand the rows are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Product {
    /// `out (m x n) = A (m x dim) x E[slots]^T`: scores against `n` candidates.
    Scores,
    /// `out (m x dim) = A (m x k) x E[slots]`: a combination of `k` rows.
    Combine,
}

/// The left operand of a product: host values (staged with the call) or a GPU buffer.
pub(crate) enum Left<'a> {
    Host(&'a [f32]),
    Gpu(&'a wgpu::Buffer),
}

/// Encodes `out = a x B` where B is made of the `count` rows of `rows` (see [`Product`]);
/// `a` is `m` rows of `count` (combine) or `dim` (scores) f32 values. Host values and the
/// params go up through `state`'s staging ring; submit `enc` with the returned [`Staged`]
/// entry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    state: &mut LaunchState,
    product: Product,
    a: Left<'_>,
    m: usize,
    rows: &RowsView<'_>,
    count: usize,
    out: &wgpu::Buffer,
) -> Result<Staged> {
    let dim = rows.layout.dim();
    let (n, k) = match product {
        Product::Scores => (count, dim),
        Product::Combine => (dim, count),
    };
    let lda = k;
    let rows_lanes = rows.layout.vector_width();
    let a_lanes = if lda.is_multiple_of(4) { 4 } else { 1 };
    let prefix = variant(product, rows.layout, a_lanes);
    let tiles_n = n.div_ceil(TILE);
    let tiles_total = m.div_ceil(TILE) * tiles_n;
    let (gx, gy) = crate::gpu::grid(
        tiles_total as u32,
        ctx.limits().max_compute_workgroups_per_dimension,
    );
    let params = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        lda: lda as u32,
        dim: dim as u32,
        identity: u32::from(rows.identity),
        tiles_n: tiles_n as u32,
        tiles_total: tiles_total as u32,
        groups_x: gx,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    };
    let pipeline = ctx.pipeline(&SHADER, "block_matmul", prefix)?;
    let host: &[f32] = match a {
        Left::Host(values) => values,
        Left::Gpu(_) => &[],
    };
    let staged = state.stage(
        ctx,
        enc,
        &[bytemuck::cast_slice(host)],
        bytemuck::bytes_of(&params),
    )?;
    let a = match a {
        Left::Host(_) => &staged.input,
        Left::Gpu(buffer) => buffer,
    };
    let a_bytes = elem_bytes((m * lda * 4) as u64, a_lanes, a);
    let bind_group = state.bind_staged::<MatmulParams>(
        ctx,
        enc,
        &pipeline,
        &staged,
        &[
            (1, a, a_bytes),
            (2, rows.slots, rows.slots_bytes),
            (
                3,
                rows.rows,
                elem_bytes(rows.rows_bytes, rows_lanes, rows.rows),
            ),
            (4, out, out.size()),
        ],
    )?;
    encode_pass(
        ctx,
        enc,
        "block_matmul",
        &pipeline,
        [(&bind_group, (gx, gy))],
    );
    Ok(staged)
}
