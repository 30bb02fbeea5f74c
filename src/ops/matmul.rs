//! Block-wise multiplication over the cache (shaders/block_matmul.wgsl):
//! `EmbeddingCache::scores` (Q x E[cand]^T) and `EmbeddingCache::combine` (X x E[ids]).
//!
//! Dispatch sizing: one 16 x 16-thread workgroup per 128 x 128 tile of the output, the tiles
//! laid out in a 2-D grid past `max_compute_workgroups_per_dimension`. Only the rows named
//! by the candidates / ids are read, each once per tile that needs it.

use wgpu::util::DeviceExt;

use crate::batch::check_ids;
use crate::cache::EmbeddingCache;
use crate::error::{HotrowError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::{grid, Embeddings};
use crate::ops::bag::check_finite;
use crate::ops::{binding, params_bind_group, submit_dispatch};
use crate::table::RowSource;

/// Output tile edge of block_matmul.wgsl (must match its `TILE`).
const TILE: usize = 128;

/// Queries for [`EmbeddingCache::scores`]: rows of the table's width, on the host or
/// already on the GPU (e.g. the output of an earlier op or of the caller's own pipeline).
#[derive(Clone, Copy, Debug)]
pub enum Queries<'a> {
    /// Row-major host values, `dim` per query.
    Host {
        /// The values.
        data: &'a [f32],
        /// Values per query (must equal the table's dim).
        dim: usize,
    },
    /// Rows already on the GPU.
    Gpu(&'a Embeddings),
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    dim: u32,
    b_mode: u32,
    identity: u32,
    tiles_n: u32,
    tiles_total: u32,
    groups_x: u32,
    vec4_loads: u32,
    _pad: u32,
}

/// Which operand the slot list indexes.
#[derive(Clone, Copy)]
enum BMode {
    /// B(p, j) = E[slot(j)][p]: scores against candidates.
    Candidates = 0,
    /// B(p, j) = E[slot(p)][j]: combination of rows.
    Rows = 1,
}

impl<S: RowSource> EmbeddingCache<S> {
    /// Scores of every query against every candidate: `out[i][j] = <queries[i], E[cand[j]]>`,
    /// an `m x cand.len()` result on the GPU (retrieval, sampled softmax). Reads only the
    /// candidates' rows, through their cache slots, tiled in workgroup memory.
    ///
    /// Errors: query dim different from the table's, host query data not a multiple of
    /// dim, non-finite host queries, an empty candidate set, a candidate out of range.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// use hotrow::{CacheConfig, EmbeddingCache, GpuContext, HostTable, Queries};
    /// let ctx = GpuContext::new()?;
    /// let data: Vec<f32> = (0..1000 * 4).map(|i| (i as f32).sin()).collect();
    /// let mut cache = EmbeddingCache::new(&ctx, HostTable::borrowed(&data, 4)?, CacheConfig::default())?;
    /// let q = [0.1f32, 0.2, 0.3, 0.4, 1.0, 0.0, 0.0, -1.0]; // two queries
    /// let s = cache.scores(Queries::Host { data: &q, dim: 4 }, &[10, 999, 42])?;
    /// assert_eq!((s.rows(), s.dim()), (2, 3));
    /// # Ok(()) }
    /// ```
    pub fn scores(&mut self, queries: Queries<'_>, cand: &[u32]) -> Result<Embeddings> {
        let m = match queries {
            Queries::Host { data, dim } => data.len() / dim.max(1),
            Queries::Gpu(e) => e.rows(),
        };
        let mut out = Embeddings::new(self.context(), m, cand.len().max(1))?;
        self.scores_into(queries, cand, &mut out)?;
        Ok(out)
    }

    /// Like [`EmbeddingCache::scores`], writing into `out` (grown when too small).
    pub fn scores_into(
        &mut self,
        queries: Queries<'_>,
        cand: &[u32],
        out: &mut Embeddings,
    ) -> Result<()> {
        let dim = self.dim();
        let (m, qdim) = match queries {
            Queries::Host { data, dim: qd } => {
                if qd == 0 || !data.len().is_multiple_of(qd) {
                    return Err(HotrowError::LengthMismatch {
                        what: "host queries (a multiple of their dim)",
                        expected: (data.len() / qd.max(1) + 1) * qd,
                        got: data.len(),
                    });
                }
                (data.len() / qd, qd)
            }
            Queries::Gpu(e) => (e.rows(), e.dim()),
        };
        if qdim != dim {
            return Err(HotrowError::DimMismatch {
                what: "queries",
                expected: dim,
                got: qdim,
            });
        }
        if cand.is_empty() {
            return Err(HotrowError::EmptyCandidates);
        }
        check_ids(cand, self.rows())?;
        if let Queries::Host { data, .. } = queries {
            check_finite("queries", data)?;
        }
        out.reset(m, cand.len())?;
        if m == 0 {
            return Ok(());
        }
        let a = match queries {
            Queries::Host { data, .. } => self.upload_operand("hotrow queries", data),
            Queries::Gpu(e) => e.buffer().clone(),
        };
        self.launch(&a, m, cand.len(), dim, dim, BMode::Candidates, cand, out)
    }

    /// Combination of rows: `out = x * E[ids]` for a dense `m x k` matrix `x` (row-major,
    /// `k = ids.len()`), an `m x dim` result on the GPU (multi-hot features, the sparse x
    /// dense product). Reads only the rows of `ids`, through their cache slots.
    ///
    /// Errors: no ids, `x.len()` not a multiple of `ids.len()`, non-finite `x`, an id out
    /// of range.
    pub fn combine(&mut self, x: &[f32], ids: &[u32]) -> Result<Embeddings> {
        let m = x.len() / ids.len().max(1);
        let mut out = Embeddings::new(self.context(), m, self.dim())?;
        self.combine_into(x, ids, &mut out)?;
        Ok(out)
    }

    /// Like [`EmbeddingCache::combine`], writing into `out` (grown when too small).
    pub fn combine_into(&mut self, x: &[f32], ids: &[u32], out: &mut Embeddings) -> Result<()> {
        let dim = self.dim();
        let k = ids.len();
        if k == 0 {
            return Err(HotrowError::InvalidArgument(
                "combine needs at least one id".into(),
            ));
        }
        if !x.len().is_multiple_of(k) {
            return Err(HotrowError::LengthMismatch {
                what: "x (m rows of one weight per id)",
                expected: (x.len() / k + 1) * k,
                got: x.len(),
            });
        }
        check_ids(ids, self.rows())?;
        check_finite("x", x)?;
        let m = x.len() / k;
        out.reset(m, dim)?;
        if m == 0 {
            return Ok(());
        }
        let a = self.upload_operand("hotrow combine weights", x);
        self.launch(&a, m, dim, k, k, BMode::Rows, ids, out)
    }

    /// Uploads an operand, padded with zeros to whole 16-byte units (it is also bound as an
    /// array of vec4).
    fn upload_operand(&self, label: &'static str, data: &[f32]) -> wgpu::Buffer {
        let mut padded = data.to_vec();
        padded.resize(data.len().next_multiple_of(4).max(4), 0.0);
        self.context()
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(&padded),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    /// Resolves `ids` and encodes `out (m x n) = a (m x k, stride lda) * B`.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        a: &wgpu::Buffer,
        m: usize,
        n: usize,
        k: usize,
        lda: usize,
        mode: BMode,
        ids: &[u32],
        out: &Embeddings,
    ) -> Result<()> {
        let dim = self.dim();
        let op_rows = self.resolve_for_op(ids)?;
        let ctx = self.context().clone();
        let bind = self.op_bindings(&op_rows, ids.len());
        // Scores over rows of a width divisible by 4 load whole vec4s (queries too: lda = dim).
        let vec4_loads = u32::from(matches!(mode, BMode::Candidates) && dim.is_multiple_of(4));
        let tiles_n = n.div_ceil(TILE);
        let tiles_total = m.div_ceil(TILE) * tiles_n;
        let (gx, gy) = grid(
            tiles_total as u32,
            ctx.limits().max_compute_workgroups_per_dimension,
        );
        let params = MatmulParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            lda: lda as u32,
            dim: dim as u32,
            b_mode: mode as u32,
            identity: bind.identity,
            tiles_n: tiles_n as u32,
            tiles_total: tiles_total as u32,
            groups_x: gx,
            vec4_loads,
            _pad: 0,
        };
        let pipeline = ctx.inner.kernels.get(Kernel::BlockMatmul);
        let a_bytes = (m * lda * 4) as u64;
        let bg = params_bind_group(
            &ctx,
            "block_matmul",
            pipeline,
            &params,
            &[
                (1, binding(a, a_bytes)),
                (2, binding(&bind.slots, bind.slots_bytes)),
                (3, binding(&bind.rows, bind.rows_bytes)),
                (4, binding(out.buffer(), (m * n * 4) as u64)),
                // The same buffers again as arrays of vec4 (whole 16-byte units).
                (5, binding(a, a_bytes.next_multiple_of(16).min(a.size()))),
                (
                    6,
                    binding(
                        &bind.rows,
                        bind.rows_bytes.next_multiple_of(16).min(bind.rows.size()),
                    ),
                ),
            ],
        );
        submit_dispatch(&ctx, "block_matmul", pipeline, &bg, (gx, gy))
    }
}
