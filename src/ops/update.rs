//! Training's kernels: the gradient of each distinct row of a batch, summed over the
//! positions that read it, and the optimizer's update of that row where it is cached
//! (shaders/update.wgsl), with the batch grouped on the host by its CPU twin [`Groups`].
//! The cache's side (passes of distinct ids, dirty slots, `flush`): `crate::cache::train`.

use crate::error::{HotrowError, Result};

/// How a training step changes the rows a batch reached, applied once per distinct row
/// with that row's gradient summed over every position that read it (sparse updates:
/// rows the batch did not read are left as they are, their state too).
///
/// ```
/// use hotrow::Optimizer;
/// let opt = Optimizer::RowWiseAdagrad { lr: 0.01, eps: 1e-8 };
/// assert_eq!(opt.state_values(), 1);
/// assert_eq!(Optimizer::Sgd { lr: 0.1 }.state_values(), 0);
/// let adam = Optimizer::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
/// assert_eq!(adam.state_per_row(64), 128); // both moments of every value
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// Plain gradient descent: `row -= lr * g`.
    Sgd {
        /// Learning rate (finite, >= 0).
        lr: f32,
    },
    /// Row-wise Adagrad (FBGEMM's exact row-wise Adagrad, TorchRec's default for
    /// embeddings): one accumulator per row, `acc += mean(g * g)` over the row's values,
    /// then `row -= lr * g / sqrt(acc + eps)`. The accumulator is the row's optimizer
    /// state: it travels with the row (cache slot, host table) and starts at 0.
    RowWiseAdagrad {
        /// Learning rate (finite, >= 0).
        lr: f32,
        /// Added to the accumulator under the square root (finite, > 0).
        eps: f32,
    },
    /// Adam, sparse ("lazy") as PyTorch's `SparseAdam`: the rows a step reaches update
    /// their two moments, `m = beta1 m + (1 - beta1) g`, `v = beta2 v + (1 - beta2) g^2`,
    /// then `row -= lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)`; rows the
    /// step does not reach keep their moments as they are. `t` counts the cache's backward
    /// calls that updated rows (1 for the first), kept by the cache. Both moments travel
    /// with the row: `2 dim` values of state a row (three times the row's own memory in the
    /// cache and in a table that keeps state).
    Adam {
        /// Learning rate (finite, >= 0).
        lr: f32,
        /// Decay of the first moment (in [0, 1)).
        beta1: f32,
        /// Decay of the second moment (in [0, 1)).
        beta2: f32,
        /// Added to the second moment's square root (finite, > 0).
        eps: f32,
    },
}

impl Optimizer {
    /// f32 values of optimizer state kept per row for the row-wise optimizers (SGD 0,
    /// row-wise Adagrad 1); for Adam, per value of the row (2: its moments). What a row of
    /// `dim` values keeps: [`Optimizer::state_per_row`].
    pub fn state_values(&self) -> usize {
        match self {
            Optimizer::Sgd { .. } => 0,
            Optimizer::RowWiseAdagrad { .. } => 1,
            Optimizer::Adam { .. } => 2,
        }
    }

    /// f32 values of optimizer state a row of `dim` values keeps (what a flush hands to
    /// [`crate::WritableRowSource::write_state`] per row, and what
    /// [`crate::HostTable::with_state`] takes): Adam's are the row's first moments, then
    /// its second moments.
    pub fn state_per_row(&self, dim: usize) -> usize {
        match self {
            Optimizer::Adam { .. } => 2 * dim,
            other => other.state_values(),
        }
    }

    /// [`HotrowError::InvalidArgument`] for a learning rate that is negative or not
    /// finite, or an `eps` that is not finite and positive.
    pub(crate) fn check(&self) -> Result<()> {
        let (lr, eps) = match *self {
            Optimizer::Sgd { lr } => (lr, 1.0),
            Optimizer::RowWiseAdagrad { lr, eps } => (lr, eps),
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&b) {
                        return Err(HotrowError::InvalidArgument(format!(
                            "Adam's {name} must be in [0, 1), got {b}"
                        )));
                    }
                }
                (lr, eps)
            }
        };
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(HotrowError::InvalidArgument(format!(
                "learning rate must be finite and >= 0, got {lr}"
            )));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(HotrowError::InvalidArgument(format!(
                "eps must be finite and > 0, got {eps}"
            )));
        }
        Ok(())
    }
}

use crate::gpu::{
    encode as encode_pass, first_launches, grid, grid_for_threads, Bound, GpuContext, GrowBuffer,
    Launch, LaunchState, ParamsFrom, Shader, Staged,
};
use crate::ops::bag::{Pooling, TableOutput};
pub(crate) use crate::ops::groups::Groups;
use crate::ops::params_layout;

pub(crate) const SHADER: Shader = Shader {
    file: "update.wgsl",
    source: include_str!("../../shaders/update.wgsl"),
    prefixes: &[""],
};

/// Mirror of `UpdateParams` in update.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct UpdateParams {
    pub(crate) n: u32,
    pub(crate) groups_x: u32,
    pub(crate) dim: u32,
    pub(crate) stride: u32,
    pub(crate) state_at: u32,
    pub(crate) mode: u32,
    pub(crate) mean: u32,
    pub(crate) has_weights: u32,
    pub(crate) n_bags: u32,
    pub(crate) n_ids: u32,
    pub(crate) optimizer: u32,
    pub(crate) first: u32,
    pub(crate) starts_at: u32,
    pub(crate) order_at: u32,
    pub(crate) offsets_at: u32,
    pub(crate) weights_at: u32,
    pub(crate) argmax_at: u32,
    pub(crate) lr: f32,
    pub(crate) eps: f32,
    pub(crate) identity: u32,
    pub(crate) grad_stride: u32,
    pub(crate) per_table: u32,
    pub(crate) cols_at: u32,
    pub(crate) n_split: u32,
    pub(crate) n_chunks: u32,
    pub(crate) split_at: u32,
    pub(crate) chunks_at: u32,
    pub(crate) split_over: u32,
    pub(crate) beta1: f32,
    pub(crate) beta2: f32,
    pub(crate) bias1: f32,
    pub(crate) bias2: f32,
    /// 0, read at run time: update.wgsl's `keep`.
    pub(crate) zero: u32,
    /// 1: `slots` has a slot per position of the batch (the forward's slot list), and a
    /// distinct row's slot is its first position's; 0: a slot per distinct row.
    pub(crate) by_position: u32,
    pub(crate) _pad1: u32,
    pub(crate) _pad2: u32,
}
params_layout!(
    UpdateParams,
    "UpdateParams",
    n,
    groups_x,
    dim,
    stride,
    state_at,
    mode,
    mean,
    has_weights,
    n_bags,
    n_ids,
    optimizer,
    first,
    starts_at,
    order_at,
    offsets_at,
    weights_at,
    argmax_at,
    lr,
    eps,
    identity,
    grad_stride,
    per_table,
    cols_at,
    n_split,
    n_chunks,
    split_at,
    chunks_at,
    split_over,
    beta1,
    beta2,
    bias1,
    bias2,
    zero,
    by_position,
    _pad1,
    _pad2
);

/// What produced the output whose gradient comes back: a lookup (one output row per
/// position) or pooled bags (one per bag, PyTorch's offsets convention; with `tables`,
/// several tables' bags table-major, each table's pooled rows in its own columns of one
/// output row per sample, as a table-batched step writes them: `out_stride` and `cols` in
/// f32 values).
#[derive(Clone, Copy)]
pub(crate) enum Produced<'a> {
    Lookup,
    Bags {
        offsets: &'a [u32],
        pooling: Pooling,
        weights: Option<&'a [f32]>,
        tables: Option<TableOutput<'a>>,
    },
}

impl PartialEq for UpdateParams {
    fn eq(&self, other: &Self) -> bool {
        bytemuck::bytes_of(self) == bytemuck::bytes_of(other)
    }
}

/// The batch's rows as an argmax reads them: a slot per position into `rows` (or the rows
/// themselves in batch order, `identity`), `stride` words apart.
#[derive(Clone, Copy)]
pub(crate) struct ArgmaxRows<'a> {
    pub(crate) slots: &'a wgpu::Buffer,
    pub(crate) rows: &'a wgpu::Buffer,
    pub(crate) identity: bool,
    pub(crate) stride: usize,
}

/// A training cache's state between backward calls: its dispatches' launches and staging,
/// and the room for the partial sums of split rows (written by a backward's first dispatch,
/// read by all of its updates).
pub(crate) struct TrainState {
    pub(crate) launch: LaunchState,
    partials: GrowBuffer,
    /// The last backward's grouping, its buffers reused.
    pub(crate) groups: Groups,
    /// When `groups` was built ahead by a forward whose pass kept its slot list: that op's
    /// serial in the cache's engine (`engine/op_slots.rs`).
    pub(crate) ahead_op: Option<u64>,
    /// Backward calls that updated rows so far (Adam's `t` is the next one's number).
    pub(crate) steps: u64,
}

impl Default for TrainState {
    fn default() -> Self {
        Self {
            launch: LaunchState::default(),
            partials: GrowBuffer::storage("hotrow partial sums"),
            groups: Groups::default(),
            ahead_op: None,
            steps: 0,
        }
    }
}

impl TrainState {
    /// Device bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.launch.input.bytes() + self.partials.bytes()
    }
}

/// Bytes of `groups`' partial sums for rows of `dim` values.
pub(crate) fn partials_bytes(groups: &Groups, dim: usize) -> u64 {
    // (each a df value: two f32)
    (groups.chunks() * dim * 8).max(8) as u64
}

/// What every dispatch of one backward shares: the batch grouped, the gradient of the
/// output (one row of `dim` per position for a lookup, per bag for bags), the optimizer,
/// and where a stored row's values and state sit (rows `stride` words apart, the state at
/// word `state_at`).
pub(crate) struct Step<'a> {
    pub(crate) groups: &'a Groups,
    pub(crate) grad: &'a wgpu::Buffer,
    pub(crate) optimizer: Optimizer,
    pub(crate) stride: usize,
    pub(crate) state_at: usize,
    /// Adam's step: this backward's number among the cache's (1 for the first).
    pub(crate) t: u64,
    /// The rows' slots are the forward's, a slot per position (`UpdateParams::by_position`).
    pub(crate) by_position: bool,
}

/// Adam's betas and bias corrections `1 - beta^t` for step `t` (computed in f64; 1 for
/// the other optimizers, whose kernels ignore them).
pub(crate) fn adam_terms(optimizer: Optimizer, t: u64) -> (f32, f32, f32, f32) {
    match optimizer {
        Optimizer::Adam { beta1, beta2, .. } => {
            let t = t.clamp(1, i32::MAX as u64) as i32;
            let bias = |b: f32| (1.0 - f64::from(b).powi(t)) as f32;
            (beta1, beta2, bias(beta1), bias(beta2))
        }
        _ => (0.0, 0.0, 1.0, 1.0),
    }
}

/// Encodes `step`'s update of rows `first..first + n` of its distinct ids, whose slots are
/// `slots[0..n]` in `rows`; for max bags, first the argmax over the batch's rows as
/// `argmax_over` reads them, which must be the rows before any update of this batch. The
/// batch's words go up through `state`'s staging ring when `upload` (else the ones an
/// earlier call of this batch uploaded are read again, the argmax's results among them),
/// with both params blocks: submit `enc` with the returned entry. The call that uploads
/// also sums the split rows' chunks (after the argmax, which they read).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    train: &mut TrainState,
    step: &Step<'_>,
    (first, n): (usize, usize),
    (slots, rows): (&wgpu::Buffer, &wgpu::Buffer),
    argmax_over: Option<ArgmaxRows<'_>>,
    upload: bool,
) -> Result<Staged> {
    let Step {
        groups,
        grad,
        optimizer,
        stride,
        state_at,
        t,
        by_position,
    } = *step;
    let TrainState {
        launch: state,
        partials,
        ..
    } = train;
    let partials = match (upload, partials.current()) {
        (false, Some(b)) => b.clone(),
        _ => partials
            .get(ctx, partials_bytes(groups, groups.params.dim as usize))?
            .clone(),
    };
    let (code, lr, eps) = match optimizer {
        Optimizer::Sgd { lr } => (0, lr, 1.0),
        Optimizer::RowWiseAdagrad { lr, eps } => (1, lr, eps),
        Optimizer::Adam { lr, eps, .. } => (2, lr, eps),
    };
    let (beta1, beta2, bias1, bias2) = adam_terms(optimizer, t);
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    let (gx, gy) = grid(n as u32, max);
    let update = UpdateParams {
        n: n as u32,
        groups_x: gx,
        stride: stride as u32,
        state_at: state_at as u32,
        optimizer: code,
        first: first as u32,
        lr,
        eps,
        beta1,
        beta2,
        bias1,
        bias2,
        by_position: u32::from(by_position),
        ..groups.params
    };
    let threads = u64::from(update.n_bags) * u64::from(update.dim);
    let (ax, ay) = grid_for_threads(ctx, threads);
    let argmax = UpdateParams {
        groups_x: ax,
        identity: u32::from(argmax_over.is_some_and(|a| a.identity)),
        stride: argmax_over.map_or(stride, |a| a.stride) as u32,
        ..update
    };
    let (qx, qy) = grid(groups.params.n_chunks, max);
    let sums = UpdateParams {
        groups_x: qx,
        ..update
    };
    let blocks = [update, argmax, sums];
    let blocks_bytes = std::mem::size_of_val(&blocks);
    let staged = match (upload, state.input.current()) {
        (false, Some(input)) => {
            let input = input.clone();
            let mut entry = state.ring.acquire(ctx, blocks_bytes as u64)?;
            entry.write(|bytes| {
                bytes[..blocks_bytes].copy_from_slice(bytemuck::cast_slice(&blocks))
            })?;
            Staged {
                input,
                entry,
                params_at: 0,
            }
        }
        _ => state.stage(
            ctx,
            enc,
            &[bytemuck::cast_slice(&groups.meta)],
            bytemuck::cast_slice(&blocks),
        )?,
    };
    let meta = &staged.input;
    let src = staged.entry.buffer().clone();
    let [update_launch, argmax_launch, _, sums_launch] = first_launches(&mut state.launches, 4)
    else {
        unreachable!("four launches")
    };
    // (Params blocks in the staged entry: update, argmax, partial sums.)
    let at = |block: u64| staged.params_at + block * PARAMS_BYTES;
    if let Some(over) = argmax_over {
        let bound = [
            (1, over.slots, over.slots.size()),
            (2, meta, meta.size()),
            (4, over.rows, over.rows.size()),
        ];
        let params = (&src, at(1));
        staged_pass(ctx, enc, argmax_launch, "argmax", params, &bound, (ax, ay))?;
    }
    if upload && groups.params.n_chunks > 0 {
        let bound = [
            (2, meta, meta.size()),
            (3, grad, grad.size()),
            (6, &partials, partials.size()),
        ];
        let params = (&src, at(2));
        staged_pass(
            ctx,
            enc,
            sums_launch,
            "partial_sums",
            params,
            &bound,
            (qx, qy),
        )?;
    }
    if n == 0 {
        return Ok(staged); // (the argmax alone, and the partial sums)
    }
    let bound = [
        (1, slots, slots.size()),
        (2, meta, meta.size()),
        (3, grad, grad.size()),
        (4, rows, rows.size()),
        (6, &partials, partials.size()),
    ];
    staged_pass(
        ctx,
        enc,
        update_launch,
        "update",
        (&src, at(0)),
        &bound,
        (gx, gy),
    )?;
    Ok(staged)
}

/// One dispatch of [`encode`]: entry point `entry` over `bound`, its params block copied
/// from `params` (the staged entry's buffer and the block's offset).
fn staged_pass(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    launch: &mut Launch,
    entry: &'static str,
    (src, offset): (&wgpu::Buffer, u64),
    bound: &[Bound<'_>],
    grid: (u32, u32),
) -> Result<()> {
    let pipeline = ctx.pipeline(&SHADER, entry, "")?;
    let from = ParamsFrom::Staged { enc, src, offset };
    let group = launch
        .bind::<UpdateParams>(ctx, &pipeline, from, bound)?
        .clone();
    encode_pass(ctx, enc, entry, &pipeline, [(&group, grid)]);
    Ok(())
}

/// Encodes `out = left^T right` (left `m x n`, right `m x dim`, out `n x dim`, f32,
/// row-major): the per-position gradient of a product (see update.wgsl's `a_t_b`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_a_t_b(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    state: &mut LaunchState,
    (left, right, out): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    m: usize,
    n: usize,
    dim: usize,
) -> Result<()> {
    let (gx, gy) = grid_for_threads(ctx, n as u64 * dim as u64);
    let p = UpdateParams {
        n: n as u32,
        groups_x: gx,
        dim: dim as u32,
        n_bags: m as u32,
        ..Default::default()
    };
    let pipeline = ctx.pipeline(&SHADER, "a_t_b", "")?;
    let launch = &mut first_launches(&mut state.launches, 3)[2];
    let group = launch
        .bind(
            ctx,
            &pipeline,
            ParamsFrom::Host(&p),
            &[
                (3, left, left.size()),
                (4, out, out.size()),
                (5, right, right.size()),
            ],
        )?
        .clone();
    encode_pass(ctx, enc, "a_t_b", &pipeline, [(&group, (gx, gy))]);
    Ok(())
}

/// Bytes of one [`UpdateParams`] block.
const PARAMS_BYTES: u64 = std::mem::size_of::<UpdateParams>() as u64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{encoder, submit, Placement, RowBuffer, RowBufferOptions, RowLayout};
    use crate::reference::{bags_grads, lookup_grads, Trainer};
    use hotrow_workloads::Rng;

    #[test]
    fn rows_with_state_keep_room_after_their_values() {
        // (dim, state values, words per row): an accumulator, or Adam's two moments
        for (dim, state, words) in [
            (3usize, 1usize, 4usize),
            (8, 1, 12),
            (1, 1, 2),
            (4, 1, 8),
            (3, 6, 9),
            (8, 16, 24),
        ] {
            let l = RowLayout::f32(dim).unwrap().with_state(state);
            assert_eq!(l.words_per_row(), words, "dim {dim}");
            let values: Vec<f32> = (0..2 * dim).map(|i| i as f32 + 0.5).collect();
            let mut out = vec![u32::MAX; 2 * words];
            l.encode_rows(&values, &mut out);
            for r in 0..2 {
                let row = &out[r * words..][..words];
                assert!(
                    row[dim..].iter().all(|&w| w == 0),
                    "a fresh row's state is 0"
                );
                let back: Vec<f32> = row[..dim].iter().map(|&w| f32::from_bits(w)).collect();
                assert_eq!(back, values[r * dim..][..dim]);
            }
        }
    }

    #[test]
    fn bad_optimizer_settings_are_refused() {
        assert!(Optimizer::Sgd { lr: f32::NAN }.check().is_err());
        assert!(Optimizer::Sgd { lr: -1.0 }.check().is_err());
        let eps = |eps| Optimizer::RowWiseAdagrad { lr: 0.1, eps }.check();
        assert!(eps(0.0).is_err() && eps(f32::INFINITY).is_err() && eps(1e-8).is_ok());
        let adam = |beta1, beta2, eps| {
            Optimizer::Adam {
                lr: 0.1,
                beta1,
                beta2,
                eps,
            }
            .check()
        };
        assert!(adam(0.9, 0.999, 1e-8).is_ok() && adam(0.0, 0.0, 1e-8).is_ok());
        assert!(adam(1.0, 0.999, 1e-8).is_err() && adam(0.9, -0.1, 1e-8).is_err());
        assert!(adam(f32::NAN, 0.9, 1e-8).is_err() && adam(0.9, 0.9, 0.0).is_err());
    }

    /// Several steps of each kind of gradient and each optimizer, on rows with their state
    /// in place (slots = the rows themselves), against the f64 reference trainer.
    #[test]
    fn updates_match_the_reference_trainer() {
        let Ok(ctx) = GpuContext::new() else {
            eprintln!("skipped: no adapter");
            return;
        };
        let mut rng = Rng::new(0x7e57 ^ std::process::id() as u64);
        for dim in [3usize, 8] {
            for optimizer in [
                Optimizer::Sgd { lr: 0.3 },
                Optimizer::RowWiseAdagrad {
                    lr: 0.05,
                    eps: 1e-8,
                },
                Optimizer::Adam {
                    lr: 0.05,
                    beta1: 0.9,
                    beta2: 0.99,
                    eps: 1e-6,
                },
            ] {
                for kind in 0..4 {
                    run_steps(&ctx, &mut rng, dim, optimizer, kind);
                }
            }
        }
    }

    fn run_steps(ctx: &GpuContext, rng: &mut Rng, dim: usize, optimizer: Optimizer, kind: u32) {
        let rows = 40usize;
        let table: Vec<f32> = (0..rows * dim)
            .map(|_| rng.unit() as f32 * 2.0 - 1.0)
            .collect();
        let layout = RowLayout::f32(dim)
            .unwrap()
            .with_state(optimizer.state_per_row(dim));
        let (stride, state_at) = (layout.words_per_row(), dim);
        let mut words = vec![0u32; rows * stride];
        layout.encode_rows(&table, &mut words);
        let buf = RowBuffer::with_layout(
            ctx,
            rows,
            layout,
            RowBufferOptions::default(),
            Placement::Device,
        )
        .unwrap();
        let shard = buf.shards().next().unwrap();
        ctx.queue()
            .write_buffer(shard, 0, bytemuck::cast_slice(&words));
        let mut reference = Trainer::new(&table, dim, optimizer);
        let mut state = TrainState::default();
        for step in 0..6 {
            // repeats: ids from a small range; from step 3 on a skewed batch whose two
            // hottest rows are read hundreds of times (split into chunks)
            let hot = step >= 3;
            let n = if hot {
                40 + rng.below(1500) as usize
            } else {
                1 + rng.below(60) as usize
            };
            let ids: Vec<u32> = (0..n)
                .map(|_| match rng.below(10) {
                    0..=5 if hot => rng.below(2) as u32,
                    _ => rng.below(rows as u64 / 2) as u32,
                })
                .collect();
            let n_bags = 1 + rng.below(8) as usize;
            let mut offsets: Vec<u32> = (0..n_bags)
                .map(|_| rng.below(n as u64 + 1) as u32)
                .collect();
            offsets.sort_unstable();
            offsets[0] = 0;
            let weights: Vec<f32> = (0..n).map(|_| rng.unit() as f32 + 0.25).collect();
            let (produced, out_rows, mode) = match kind {
                0 => (Produced::Lookup, n, None),
                1 => (
                    bags(&offsets, Pooling::Sum, Some(&weights)),
                    n_bags,
                    Some(0),
                ),
                2 => (bags(&offsets, Pooling::Mean, None), n_bags, Some(1)),
                _ => (bags(&offsets, Pooling::Max, None), n_bags, Some(2)),
            };
            let grad: Vec<f32> = (0..out_rows * dim)
                .map(|_| rng.unit() as f32 - 0.5)
                .collect();
            let want = match mode {
                None => lookup_grads(dim, &ids, &grad),
                Some(m) => {
                    let w = (kind == 1).then_some(&weights[..]);
                    bags_grads(&reference.rows, dim, &ids, &offsets, m, w, &grad)
                }
            };
            reference.apply(&want);
            let groups = Groups::new(&ids, produced, dim);
            let most = (0..rows as u32)
                .map(|r| ids.iter().filter(|&&id| id == r).count())
                .max()
                .unwrap_or(0);
            assert_eq!(most > 32, groups.chunks() > 0, "rows read often are split");
            let positions = upload(ctx, bytemuck::cast_slice(&ids));
            let grad_buf = upload(ctx, bytemuck::cast_slice(&grad));
            // Every other step the rows' slots are a slot per position (the forward's
            // list, `by_position`): all distinct rows in one dispatch.
            let by_position = step % 2 == 1;
            let batch = Step {
                groups: &groups,
                grad: &grad_buf,
                optimizer,
                stride,
                state_at,
                t: reference.steps,
                by_position,
            };
            // As a cache runs it: max bags' argmax alone first; then the distinct rows in
            // one to three dispatches, the batch uploaded (and the partial sums made) once.
            let d = groups.distinct.len();
            let parts = 1 + rng.below(3) as usize;
            let mut calls: Vec<(usize, usize)> = Vec::new();
            if kind == 3 {
                calls.push((0, 0));
            }
            let per = if by_position {
                d.max(1)
            } else {
                d.div_ceil(parts)
            };
            calls.extend((0..d).step_by(per).map(|first| (first, per.min(d - first))));
            for (c, &(first, len)) in calls.iter().enumerate() {
                let slot_ids = if len == 0 {
                    vec![0u32]
                } else if by_position {
                    ids.clone()
                } else {
                    groups.distinct[first..first + len].to_vec()
                };
                let slots = upload(ctx, bytemuck::cast_slice(&slot_ids));
                let mut enc = encoder(ctx, "update test");
                let staged = encode(
                    ctx,
                    &mut enc,
                    &mut state,
                    &batch,
                    (first, len),
                    (&slots, shard),
                    (kind == 3 && c == 0).then_some(ArgmaxRows {
                        slots: &positions,
                        rows: shard,
                        identity: false,
                        stride,
                    }),
                    c == 0,
                )
                .unwrap();
                submit(ctx, [enc.finish()], [staged.entry]).unwrap();
            }
            let got = crate::gpu::read_u32(ctx, shard, 0, rows * stride).unwrap();
            // The kernels' row prefix for rows with state reads the values where they are.
            let some: Vec<u32> = (0..rows as u32).step_by(3).collect();
            let read = buf.gather(&some).unwrap().to_host().unwrap();
            for (k, &r) in some.iter().enumerate() {
                let stored = &got[r as usize * stride..][..dim];
                let stored: Vec<f32> = stored.iter().map(|&w| f32::from_bits(w)).collect();
                assert_eq!(read[k * dim..][..dim], stored[..], "gathered row {r}");
            }
            for r in 0..rows {
                let row = &got[r * stride..][..stride];
                for (c, &word) in row[..dim].iter().enumerate() {
                    let (g, w) = (f32::from_bits(word) as f64, reference.rows[r * dim + c]);
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{optimizer:?} kind {kind} dim {dim} step {step}: row {r} col {c}: GPU {g}, CPU {w}"
                    );
                }
                let per_row = optimizer.state_per_row(dim);
                for k in 0..per_row {
                    let g = f32::from_bits(row[state_at + k]) as f64;
                    let w = reference.state[r * per_row + k];
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{optimizer:?} kind {kind} step {step}: row {r} state {k}: GPU {g}, CPU {w}"
                    );
                }
            }
        }
    }

    fn bags<'a>(offsets: &'a [u32], pooling: Pooling, weights: Option<&'a [f32]>) -> Produced<'a> {
        Produced::Bags {
            offsets,
            pooling,
            weights,
            tables: None,
        }
    }

    fn upload(ctx: &GpuContext, words: &[u32]) -> wgpu::Buffer {
        let b = ctx
            .create_buffer(
                "test input",
                (words.len().max(1) * 4) as u64,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                false,
            )
            .unwrap();
        ctx.queue().write_buffer(&b, 0, bytemuck::cast_slice(words));
        b.buffer.clone()
    }
}
