//! Pooled bags over the cache (shaders/bag.wgsl): `EmbeddingCache::lookup_bags`.
//!
//! Dispatch sizing: one thread per output element (per vec4 when dim % 4 == 0), 256-thread
//! workgroups in a 2-D grid past `max_compute_workgroups_per_dimension`. Each thread walks
//! its bag's ids; the threads of a bag read each row at consecutive addresses.

use wgpu::util::DeviceExt;

use crate::batch::check_ids;
use crate::cache::EmbeddingCache;
use crate::error::{HotrowError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::{grid, Embeddings, WORKGROUP};
use crate::ops::{binding, params_bind_group, submit_dispatch};
use crate::table::RowSource;

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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BagParams {
    n_bags: u32,
    width: u32,
    groups_x: u32,
    mode: u32,
    has_weights: u32,
    identity: u32,
    _pad: [u32; 2],
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
        check_finite("weights", w)?;
    }
    Ok(())
}

/// The first NaN or infinite value of `v`, as an error.
pub(crate) fn check_finite(what: &'static str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(position) => Err(HotrowError::NonFinite {
            what,
            position,
            value: v[position],
        }),
        None => Ok(()),
    }
}

impl<S: RowSource> EmbeddingCache<S> {
    /// Pooled bags: row `b` of the result pools the rows of `ids[offsets[b]..offsets[b+1]]`
    /// (the last bag ends at `ids.len()`, as in PyTorch's `embedding_bag`), optionally
    /// weighted per id (sum and mean only). Empty bags give zeros. The ids go through the
    /// same slot resolution as [`EmbeddingCache::lookup`]: a row repeated inside or across
    /// bags is uploaded at most once, and the kernel reads rows straight from their slots.
    ///
    /// Errors, raised before any work: an id out of range, offsets not starting at 0,
    /// decreasing, or past the ids, ids left outside every bag, weights of the wrong length
    /// or not finite, weights with [`Pooling::Max`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{CacheConfig, EmbeddingCache, GpuContext, HostTable, Pooling};
    /// let ctx = GpuContext::new()?;
    /// let data: Vec<f32> = (0..1000 * 8).map(|i| (i as f32).cos()).collect();
    /// let mut cache = EmbeddingCache::new(&ctx, HostTable::borrowed(&data, 8)?, CacheConfig::default())?;
    /// // bags [3, 5], [], [7]
    /// let pooled = cache.lookup_bags(&[3, 5, 7], &[0, 2, 2], Pooling::Sum, Some(&[0.5, 2.0, 1.0]))?;
    /// assert_eq!(pooled.rows(), 3);
    /// # Ok(()) }
    /// ```
    pub fn lookup_bags(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
    ) -> Result<Embeddings> {
        check_ids(ids, self.rows())?;
        check_bags(ids.len(), offsets, pooling, weights)?;
        let mut out = Embeddings::new(self.context(), offsets.len(), self.dim())?;
        self.lookup_bags_into(ids, offsets, pooling, weights, &mut out)?;
        Ok(out)
    }

    /// Like [`EmbeddingCache::lookup_bags`], writing into `out` (grown when too small).
    pub fn lookup_bags_into(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
        out: &mut Embeddings,
    ) -> Result<()> {
        check_ids(ids, self.rows())?;
        check_bags(ids.len(), offsets, pooling, weights)?;
        let ctx = self.context().clone();
        let dim = self.dim();
        let n_bags = offsets.len();
        out.reset(n_bags, dim)?;
        if n_bags == 0 {
            return Ok(());
        }
        if ids.is_empty() {
            return out.fill(0.0); // every bag is empty
        }
        let op_rows = self.resolve_for_op(ids)?;
        let bind = self.op_bindings(&op_rows, ids.len());
        let device = ctx.device();
        let mut ends: Vec<u32> = Vec::with_capacity(n_bags + 1);
        ends.extend_from_slice(offsets);
        ends.push(ids.len() as u32);
        let storage = wgpu::BufferUsages::STORAGE;
        let offsets_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("hotrow bag offsets"),
            contents: bytemuck::cast_slice(&ends),
            usage: storage,
        });
        let weights_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("hotrow bag weights"),
            contents: bytemuck::cast_slice(weights.unwrap_or(&[0.0])),
            usage: storage,
        });
        let vec4 = dim.is_multiple_of(4);
        let width = if vec4 { dim / 4 } else { dim } as u32;
        let groups = (n_bags as u64 * width as u64).div_ceil(WORKGROUP as u64) as u32;
        let (gx, gy) = grid(groups, ctx.limits().max_compute_workgroups_per_dimension);
        let params = BagParams {
            n_bags: n_bags as u32,
            width,
            groups_x: gx,
            mode: pooling.code(),
            has_weights: u32::from(weights.is_some()),
            identity: bind.identity,
            _pad: [0; 2],
        };
        let pipeline = ctx.inner.kernels.get(if vec4 {
            Kernel::BagVec4
        } else {
            Kernel::BagScalar
        });
        let (rb, ob) = if vec4 { (6, 7) } else { (4, 5) };
        let bg = params_bind_group(
            &ctx,
            "bag",
            pipeline,
            &params,
            &[
                (1, binding(&bind.slots, bind.slots_bytes)),
                (2, offsets_buf.as_entire_binding()),
                (3, weights_buf.as_entire_binding()),
                (rb, binding(&bind.rows, bind.rows_bytes)),
                (ob, binding(out.buffer(), (n_bags * dim * 4) as u64)),
            ],
        );
        let done = submit_dispatch(&ctx, "bag", pipeline, &bg, (gx, gy));
        drop(op_rows); // a gathered buffer may go: wgpu keeps it alive until the pass ran
        done
    }
}
