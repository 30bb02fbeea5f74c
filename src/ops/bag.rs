//! Pooled bags (shaders/bag.wgsl): `out[b]` pools the rows of bag `b`, read through slots.
//!
//! Dispatch sizing: one thread per output element (per vec4 when dim % 4 == 0), 256-thread
//! workgroups in a 2-D grid past `max_compute_workgroups_per_dimension`. Each thread walks
//! its bag's ids; the threads of a bag read each row at consecutive addresses.

use crate::error::{HotrowError, Result};
use crate::gpu::ROW_PREFIXES;
use crate::gpu::{
    encode as encode_pass, grid_for_threads, GpuContext, LaunchState, Shader, Staged,
};
use crate::ops::{elem_bytes, params_layout, RowsView};

pub(crate) const SHADER: Shader = Shader {
    file: "bag.wgsl",
    source: include_str!("../../shaders/bag.wgsl"),
    prefixes: ROW_PREFIXES,
};

/// How the rows of a bag are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Sum of the rows (weighted by per-sample weights when given).
    Sum,
    /// Sum (weighted when weights are given) divided by the bag's length.
    Mean,
    /// Element-wise maximum; per-sample weights are not supported.
    Max,
}

impl Pooling {
    fn code(self) -> u32 {
        match self {
            Pooling::Sum => 0,
            Pooling::Mean => 1,
            Pooling::Max => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Pooling::Sum => "sum",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
        }
    }
}

/// Mirror of `BagParams` in bag.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct BagParams {
    n_bags: u32,
    width: u32,
    groups_x: u32,
    mode: u32,
    has_weights: u32,
    identity: u32,
    weights_at: u32,
    tables: u32,
    per_table: u32,
    out_stride: u32,
    cols_at: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
params_layout!(
    BagParams,
    "BagParams",
    n_bags,
    width,
    groups_x,
    mode,
    has_weights,
    identity,
    weights_at,
    tables,
    per_table,
    out_stride,
    cols_at,
    _pad0,
    _pad1,
    _pad2
);

/// Where table-batched bags land: the bags are `cols.len()` tables of `per_table` bags each,
/// table-major; bag `b` of table `t` is written to output row `b` (`out_stride` Elems wide)
/// from Elem column `cols[t]`.
#[derive(Clone, Copy)]
pub(crate) struct TableOutput<'a> {
    pub(crate) per_table: usize,
    pub(crate) out_stride: u32,
    pub(crate) cols: &'a [u32],
}

/// Checks offsets (PyTorch's `embedding_bag` convention: one start per bag, bag `b` is
/// `ids[offsets[b]..offsets[b + 1]]`, the last bag ending at `ids.len()`) and weights.
pub(crate) fn check_bags(
    n_ids: usize,
    offsets: &[u32],
    pooling: Pooling,
    weights: Option<&[f32]>,
) -> Result<()> {
    if offsets.is_empty() {
        if n_ids > 0 {
            return Err(HotrowError::BadOffsets {
                position: 0,
                reason: format!("no bags, but {n_ids} ids would be dropped"),
            });
        }
    } else if offsets[0] != 0 {
        return Err(HotrowError::BadOffsets {
            position: 0,
            reason: format!("the first offset must be 0, got {}", offsets[0]),
        });
    }
    for (b, w) in offsets.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(HotrowError::BadOffsets {
                position: b + 1,
                reason: format!("offsets decrease ({} after {})", w[1], w[0]),
            });
        }
    }
    if let Some(&last) = offsets.last() {
        if last as usize > n_ids {
            let position = offsets
                .iter()
                .position(|&o| o as usize > n_ids)
                .unwrap_or(0);
            return Err(HotrowError::BadOffsets {
                position,
                reason: format!("offset {} is past the {n_ids} ids", offsets[position]),
            });
        }
    }
    if let Some(w) = weights {
        if pooling == Pooling::Max {
            return Err(HotrowError::WeightsUnsupported {
                mode: pooling.name(),
            });
        }
        if w.len() != n_ids {
            return Err(HotrowError::LengthMismatch {
                what: "per-sample weights (one per id)",
                expected: n_ids,
                got: w.len(),
            });
        }
        crate::batch::check_finite("weights", w)?;
    }
    Ok(())
}

/// Encodes the pooling of `offsets.len()` bags over `rows` into `out` (checked input:
/// see [`check_bags`]). Offsets, weights and params go up through `state`'s staging ring;
/// submit `enc` with the returned [`Staged`] entry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    state: &mut LaunchState,
    rows: &RowsView<'_>,
    n_ids: usize,
    offsets: &[u32],
    pooling: Pooling,
    weights: Option<&[f32]>,
    out: &wgpu::Buffer,
    tables: Option<TableOutput<'_>>,
) -> Result<Staged> {
    let n_bags = offsets.len();
    let layout = rows.layout;
    let width = layout.width();
    // The `bags` binding: offsets, the end of the last bag, the weights as bits, then the
    // tables' output columns (staged straight from the caller's slices).
    let end = [n_ids as u32];
    let weights = weights.unwrap_or_default();
    let cols = tables.as_ref().map_or(&[][..], |t| t.cols);
    let pieces: [&[u8]; 4] = [
        bytemuck::cast_slice(offsets),
        bytemuck::cast_slice(&end),
        bytemuck::cast_slice(weights),
        bytemuck::cast_slice(cols),
    ];
    let weights_at = (offsets.len() + 1) as u32;
    let cols_at = weights_at + weights.len() as u32;
    let (gx, gy) = grid_for_threads(ctx, n_bags as u64 * width as u64);
    let params = BagParams {
        n_bags: n_bags as u32,
        width,
        groups_x: gx,
        mode: pooling.code(),
        has_weights: u32::from(!weights.is_empty()),
        identity: u32::from(rows.identity),
        weights_at,
        tables: tables.as_ref().map_or(0, |t| t.cols.len() as u32),
        per_table: tables.as_ref().map_or(0, |t| t.per_table as u32),
        out_stride: tables.as_ref().map_or(0, |t| t.out_stride),
        cols_at,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    };
    let pipeline = ctx.pipeline(&SHADER, "bag", layout.elem_prefix())?;
    let lanes = layout.vector_width();
    let staged = state.stage(ctx, enc, &pieces, bytemuck::bytes_of(&params))?;
    let bags = &staged.input;
    let bind_group = state.bind_staged::<BagParams>(
        ctx,
        enc,
        &pipeline,
        &staged,
        &[
            (1, rows.slots, rows.slots_bytes),
            (2, bags, bags.size()),
            (3, rows.rows, elem_bytes(rows.rows_bytes, lanes, rows.rows)),
            (4, out, out.size()),
        ],
    )?;
    encode_pass(ctx, enc, "bag", &pipeline, [(&bind_group, (gx, gy))]);
    Ok(staged)
}
