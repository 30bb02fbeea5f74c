//! A backward's batch grouped by distinct id on the host, as update.wgsl reads it: each
//! distinct row's positions (ascending, so every row's gradient is summed in one fixed
//! order), the bag offsets, the weights, room for the argmax, and the chunks of the rows
//! read so often that their sums are split (`partial_sums`).
//!
//! Grouping is most of a training step's host time on one core (a W7 batch: 131,072 ids,
//! 46,569 distinct; BENCHMARKS.md), so buffers are reused from call to call
//! ([`Groups::build`]) and large batches are grouped in `SHARDS` shards of the id hash, in
//! parallel: the
//! batch, cut into `SHARDS` runs of positions, is scattered by shard (each run's positions
//! in order), each shard hashes and counting-sorts its own positions, and the shards are
//! laid end to end. The shard count depends on the batch length only, never on the
//! threads, so the grouping (and the summation order) is the same on every machine.

use rayon::prelude::*;

use crate::ops::bag::Pooling;
use crate::ops::update::{Produced, UpdateParams};

/// A distinct row read at more positions than this is split into chunks summed in parallel
/// (update.wgsl's `partial_sums`).
pub(crate) const SPLIT_OVER: u32 = 32;

/// Shards of a large batch; batches shorter than `PARALLEL_FROM` are one shard.
const SHARDS: usize = 16;
const PARALLEL_FROM: usize = 32_768;

/// Positions per chunk of a split row read `count` times: about its square root (at least
/// `SPLIT_OVER`), which balances a chunk's serial sum against the row's sum of its chunks.
fn chunk_len(count: u32) -> u32 {
    ((count as f64).sqrt().ceil() as u32).max(SPLIT_OVER)
}

fn hash(id: u32) -> u64 {
    (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Which of `shards` (a power of two) shards holds `id`: the hash's top bits.
fn shard_of(id: u32, shards: usize) -> usize {
    if shards == 1 {
        0
    } else {
        (hash(id) >> (64 - shards.trailing_zeros())) as usize
    }
}

/// One shard's grouping: its distinct ids (first seen first), each one's position count
/// and its positions grouped by distinct id.
#[derive(Clone, Debug, Default)]
struct Shard {
    /// (id, local index) per bucket; `u32::MAX` index marks a free bucket (every id value
    /// can be a key).
    table: Vec<(u32, u32)>,
    distinct: Vec<u32>,
    /// (position, local index) of each of the shard's positions, in position order.
    members: Vec<(u32, u32)>,
    /// Group starts (distinct + 1), then the positions grouped.
    starts: Vec<u32>,
    order: Vec<u32>,
}

impl Shard {
    /// Groups the shard's `len` positions, `(position, id)` in position order, of a batch
    /// cut into `shards` shards.
    fn build(&mut self, positions: impl Iterator<Item = (u32, u32)>, len: usize, shards: usize) {
        self.members.clear();
        self.distinct.clear();
        let buckets = (len * 2).next_power_of_two().max(16);
        self.table.clear();
        self.table.resize(buckets, (0, u32::MAX));
        let mask = buckets - 1;
        // bucket bits below the shard bits
        let skip = shards.trailing_zeros();
        for (j, id) in positions {
            let mut b = ((hash(id) << skip) >> (64 - buckets.trailing_zeros())) as usize;
            let k = loop {
                let (key, k) = self.table[b];
                if k == u32::MAX {
                    let k = self.distinct.len() as u32;
                    self.table[b] = (id, k);
                    self.distinct.push(id);
                    break k;
                }
                if key == id {
                    break k;
                }
                b = (b + 1) & mask;
            };
            self.members.push((j, k));
        }
        // counting sort by local index; positions stay ascending within each group
        let d = self.distinct.len();
        self.starts.clear();
        self.starts.resize(d + 1, 0);
        for &(_, k) in &self.members {
            self.starts[k as usize + 1] += 1;
        }
        for k in 0..d {
            self.starts[k + 1] += self.starts[k];
        }
        self.order.clear();
        self.order.resize(self.members.len(), 0);
        // (`table` is done with: its first d entries' second halves serve as cursors)
        let next = &mut self.table[..d];
        for (cursor, &start) in next.iter_mut().zip(&self.starts) {
            cursor.1 = start;
        }
        for &(j, k) in &self.members {
            let cursor = &mut next[k as usize].1;
            self.order[*cursor as usize] = j;
            *cursor += 1;
        }
    }
}

/// A batch grouped by distinct id, as `update` reads it: the distinct ids, and the `meta`
/// words: each distinct id's group start (distinct + 1), its positions (ascending) as a
/// run of `order`, the bag offsets, the weights, room for the argmax, and the split rows'
/// chunks.
#[derive(Clone, Debug, Default)]
pub(crate) struct Groups {
    pub(crate) distinct: Vec<u32>,
    pub(crate) meta: Vec<u32>,
    pub(crate) params: UpdateParams,
    shards: Vec<Shard>,
    /// A sharded grouping's scratch: each position's shard, and the positions
    /// `(position, id)` by shard.
    shard_of_position: Vec<u8>,
    by_shard: Vec<(u32, u32)>,
    /// A copy of the batch this grouping is of, kept when it was built ahead of its
    /// backward ([`Groups::build_ahead`]); its buffers are reused.
    kept: Batch,
    /// Whether `kept` is this grouping's batch (not after a plain [`Groups::build`]).
    ahead: bool,
}

/// The inputs of a grouping built ahead, compared whole before a backward takes it (a
/// grouping of other ids would update other rows): ids, bag offsets and pooling, the
/// weights' bits, the row width.
#[derive(Clone, Debug, Default, PartialEq)]
struct Batch {
    ids: Vec<u32>,
    /// `None` for a lookup's batch
    bags: Option<(Vec<u32>, Pooling)>,
    weight_bits: Option<Vec<u32>>,
    dim: usize,
}

impl Batch {
    /// `false` for a table-batched width's bags (they are never grouped ahead).
    fn is(&self, ids: &[u32], produced: Produced<'_>, dim: usize) -> bool {
        let bags = match produced {
            Produced::Lookup => None,
            Produced::Bags {
                tables: Some(_), ..
            } => return false,
            Produced::Bags {
                offsets, pooling, ..
            } => Some((offsets, pooling)),
        };
        let weights = match produced {
            Produced::Bags {
                weights: Some(w), ..
            } => Some(bytemuck::cast_slice::<f32, u32>(w)),
            _ => None,
        };
        self.dim == dim
            && self.ids == ids
            && self.bags.as_ref().map(|(o, p)| (&o[..], *p)) == bags
            && self.weight_bits.as_deref() == weights
    }

    /// Keeps a copy of the inputs (reusing this value's buffers).
    fn keep(&mut self, ids: &[u32], produced: Produced<'_>, dim: usize) {
        self.dim = dim;
        self.ids.clear();
        self.ids.extend_from_slice(ids);
        let (bags, weights) = match produced {
            Produced::Lookup => (None, None),
            Produced::Bags {
                offsets,
                pooling,
                weights,
                ..
            } => (Some((offsets, pooling)), weights),
        };
        self.bags = bags.map(|(offsets, pooling)| {
            let mut kept = self.bags.take().map(|(o, _)| o).unwrap_or_default();
            kept.clear();
            kept.extend_from_slice(offsets);
            (kept, pooling)
        });
        self.weight_bits = weights.map(|w| {
            let mut kept = self.weight_bits.take().unwrap_or_default();
            kept.clear();
            kept.extend_from_slice(bytemuck::cast_slice(w));
            kept
        });
    }
}

impl Groups {
    /// Groups `ids` (checked) for the gradient of what `produced` made from them, over rows
    /// of `dim` values.
    #[cfg(test)]
    pub(crate) fn new(ids: &[u32], produced: Produced<'_>, dim: usize) -> Self {
        let mut g = Self::default();
        g.build(ids, produced, dim);
        g
    }

    /// [`Groups::build`], keeping a copy of the batch so that a backward of exactly this
    /// batch can take the grouping as it is ([`Groups::is_of`]): a training cache's forward
    /// groups its batch beside its own work, for the backward that usually follows. A
    /// table-batched width's bags are grouped and not kept.
    pub(crate) fn build_ahead(&mut self, ids: &[u32], produced: Produced<'_>, dim: usize) {
        self.build(ids, produced, dim);
        if !matches!(
            produced,
            Produced::Bags {
                tables: Some(_),
                ..
            }
        ) {
            self.kept.keep(ids, produced, dim);
            self.ahead = true;
        }
    }

    /// Whether this is a grouping built ahead of exactly this batch.
    pub(crate) fn is_of(&self, ids: &[u32], produced: Produced<'_>, dim: usize) -> bool {
        self.ahead && self.kept.is(ids, produced, dim)
    }

    /// [`Groups::new`] into this value, reusing its buffers.
    pub(crate) fn build(&mut self, ids: &[u32], produced: Produced<'_>, dim: usize) {
        self.ahead = false;
        let shards = if ids.len() >= PARALLEL_FROM {
            SHARDS
        } else {
            1
        };
        self.shards.resize_with(shards, Shard::default);
        if shards == 1 {
            let positions = ids.iter().enumerate().map(|(j, &id)| (j as u32, id));
            self.shards[0].build(positions, ids.len(), 1);
        } else {
            self.group_sharded(ids);
        }
        let parts = &self.shards[..shards];
        let d: usize = parts.iter().map(|p| p.distinct.len()).sum();
        self.distinct.clear();
        self.meta.clear();
        self.meta.reserve(d + 1 + ids.len());
        self.meta.push(0);
        let mut base = 0u32;
        for p in parts.iter() {
            self.distinct.extend_from_slice(&p.distinct);
            self.meta.extend(p.starts[1..].iter().map(|&s| base + s));
            base += p.order.len() as u32;
        }
        let order_at = self.meta.len();
        for p in parts.iter() {
            self.meta.extend_from_slice(&p.order);
        }
        let meta = &mut self.meta;
        let mut params = UpdateParams {
            dim: dim as u32,
            n_ids: ids.len() as u32,
            order_at: order_at as u32,
            offsets_at: meta.len() as u32,
            ..Default::default()
        };
        if let Produced::Bags {
            offsets,
            pooling,
            weights,
            tables,
        } = produced
        {
            meta.extend_from_slice(offsets);
            meta.push(ids.len() as u32);
            params.n_bags = offsets.len() as u32;
            params.mode = if pooling == Pooling::Max { 2 } else { 1 };
            params.mean = u32::from(pooling == Pooling::Mean);
            params.weights_at = meta.len() as u32;
            if let Some(w) = weights {
                meta.extend(w.iter().map(|x| x.to_bits()));
                params.has_weights = 1;
            }
            // Bag b's gradient row: (b % per_table) * grad_stride + cols[b / per_table].
            let one = [0u32];
            let (per_table, stride, cols) = match tables {
                Some(t) => (t.per_table, t.out_stride as usize, t.cols),
                None => (offsets.len(), dim, &one[..]),
            };
            params.per_table = per_table.max(1) as u32;
            params.grad_stride = stride as u32;
            params.cols_at = meta.len() as u32;
            meta.extend_from_slice(cols);
            params.argmax_at = meta.len() as u32;
            if pooling == Pooling::Max {
                meta.resize(meta.len() + offsets.len() * dim, u32::MAX);
            }
        }
        split_hot_rows(meta, &mut params, d);
        self.params = params;
    }

    /// The shards of a large batch, grouped in parallel (module docs).
    fn group_sharded(&mut self, ids: &[u32]) {
        let n = ids.len();
        let run = n.div_ceil(SHARDS);
        self.shard_of_position.resize(n, 0);
        let mut counts = vec![[0usize; SHARDS]; SHARDS]; // [run][shard]
        self.shard_of_position
            .par_chunks_mut(run)
            .zip(ids.par_chunks(run))
            .zip(counts.par_iter_mut())
            .for_each(|((of, ids), count)| {
                for (s, &id) in of.iter_mut().zip(ids) {
                    let x = shard_of(id, SHARDS);
                    *s = x as u8;
                    count[x] += 1;
                }
            });
        // Shard-major: shard s holds run 0's positions of it, then run 1's, ...
        self.by_shard.resize(n, (0, 0));
        let mut rest = &mut self.by_shard[..];
        let mut outs: Vec<Vec<&mut [(u32, u32)]>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for s in 0..SHARDS {
            for (count, out) in counts.iter().zip(outs.iter_mut()) {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(count[s]);
                out.push(head);
                rest = tail;
            }
        }
        outs.into_par_iter()
            .zip(ids.par_chunks(run))
            .zip(self.shard_of_position.par_chunks(run))
            .enumerate()
            .for_each(|(r, ((mut out, ids), of))| {
                let mut at = [0usize; SHARDS];
                for (i, (&id, &s)) in ids.iter().zip(of).enumerate() {
                    let s = s as usize;
                    out[s][at[s]] = ((r * run + i) as u32, id);
                    at[s] += 1;
                }
            });
        let mut rest = &self.by_shard[..];
        let mut mine = Vec::with_capacity(SHARDS);
        for s in 0..SHARDS {
            let len = counts.iter().map(|c| c[s]).sum();
            let (head, tail) = rest.split_at(len);
            mine.push(head);
            rest = tail;
        }
        self.shards
            .par_iter_mut()
            .zip(mine)
            .for_each(|(shard, positions)| {
                shard.build(positions.iter().copied(), positions.len(), SHARDS)
            });
    }

    /// Chunks the partial sums need room for.
    pub(crate) fn chunks(&self) -> usize {
        self.params.n_chunks as usize
    }

    /// The positions of distinct id `k`, ascending.
    #[cfg(test)]
    pub(crate) fn positions(&self, k: usize) -> &[u32] {
        let at = self.params.order_at as usize;
        &self.meta[at + self.meta[k] as usize..at + self.meta[k + 1] as usize]
    }
}

/// Appends to `meta` the chunks of the rows (of `d` distinct, whose group starts open
/// `meta`) read more than `SPLIT_OVER` times: `split_at` (k, first chunk, end chunk) per
/// split row, ascending k, then `chunks_at` (begin, end) per chunk, consecutive positions
/// of the row's group.
fn split_hot_rows(meta: &mut Vec<u32>, params: &mut UpdateParams, d: usize) {
    let mut split = Vec::new();
    let mut chunks = Vec::new();
    for k in 0..d {
        let (begin, end) = (meta[k], meta[k + 1]);
        if end - begin <= SPLIT_OVER {
            continue;
        }
        let len = chunk_len(end - begin);
        let first = (chunks.len() / 2) as u32;
        let mut at = begin;
        while at < end {
            let to = (at + len).min(end);
            chunks.extend([at, to]);
            at = to;
        }
        split.extend([k as u32, first, (chunks.len() / 2) as u32]);
    }
    params.split_over = SPLIT_OVER;
    params.n_split = (split.len() / 3) as u32;
    params.n_chunks = (chunks.len() / 2) as u32;
    params.split_at = meta.len() as u32;
    meta.extend_from_slice(&split);
    params.chunks_at = meta.len() as u32;
    meta.extend_from_slice(&chunks);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::bag::TableOutput;
    use hotrow_workloads::{Rng, ZipfIds};

    #[test]
    fn a_grouping_built_ahead_is_of_its_batch_alone() {
        let ids = [5u32, 1, 5, 9, 1];
        let offsets = [0u32, 2];
        let w = [0.5f32, 1.0, 1.5, 2.0, 2.5];
        let bags = |offsets, pooling, weights| Produced::Bags {
            offsets,
            pooling,
            weights,
            tables: None,
        };
        let mut g = Groups::default();
        let produced = bags(&offsets[..], Pooling::Sum, Some(&w[..]));
        assert!(!g.is_of(&ids, produced, 4), "nothing grouped yet");
        g.build_ahead(&ids, produced, 4);
        assert!(g.is_of(&ids, produced, 4));
        let other_ids = [5u32, 1, 5, 9, 2];
        let other_w = [0.5f32, 1.0, 1.5, 2.0, -2.5];
        let others = [
            (&other_ids[..], produced, 4),
            (&ids[..3], produced, 4),
            (&ids[..], produced, 8),
            (&ids[..], bags(&[0, 3], Pooling::Sum, Some(&w[..])), 4),
            (&ids[..], bags(&offsets, Pooling::Mean, Some(&w[..])), 4),
            (
                &ids[..],
                bags(&offsets, Pooling::Sum, Some(&other_w[..])),
                4,
            ),
            (&ids[..], bags(&offsets, Pooling::Sum, None), 4),
            (&ids[..], Produced::Lookup, 4),
        ];
        for (k, &(i, p, d)) in others.iter().enumerate() {
            assert!(!g.is_of(i, p, d), "case {k}: another batch");
        }
        // the same batch's bags for a table-batched width: never kept
        let cols = [0u32];
        let tables = TableOutput {
            per_table: 2,
            out_stride: 4,
            cols: &cols,
        };
        let batched = Produced::Bags {
            offsets: &offsets,
            pooling: Pooling::Sum,
            weights: Some(&w),
            tables: Some(tables),
        };
        assert!(!g.is_of(&ids, batched, 4));
        g.build_ahead(&ids, batched, 4);
        assert!(!g.is_of(&ids, batched, 4) && !g.is_of(&ids, produced, 4));
        // a lookup's batch; then a plain build forgets it
        g.build_ahead(&ids, Produced::Lookup, 4);
        assert!(g.is_of(&ids, Produced::Lookup, 4) && !g.is_of(&ids, produced, 4));
        g.build(&ids, Produced::Lookup, 4);
        assert!(!g.is_of(&ids, Produced::Lookup, 4));
    }

    #[test]
    fn groups_list_each_ids_positions_in_order() {
        let ids = [7u32, 3, 7, 9, 3, 7];
        let g = Groups::new(&ids, Produced::Lookup, 4);
        assert_eq!(g.distinct, vec![7, 3, 9]);
        assert_eq!(g.positions(0), &[0, 2, 5]);
        assert_eq!(g.positions(1), &[1, 4]);
        assert_eq!(g.positions(2), &[3]);
        let offsets = [0u32, 2, 2];
        let w = [0.5f32; 6];
        let bags = Produced::Bags {
            offsets: &offsets,
            pooling: Pooling::Max,
            weights: None,
            tables: None,
        };
        let g = Groups::new(&ids, bags, 4);
        let p = g.params;
        assert_eq!((p.mode, p.n_bags, p.has_weights), (2, 3, 0));
        assert_eq!(&g.meta[p.offsets_at as usize..][..4], &[0, 2, 2, 6]);
        assert_eq!(g.meta.len(), p.argmax_at as usize + 3 * 4, "argmax room");
        // one table: bag b's gradient row is b * dim
        assert_eq!((p.per_table, p.grad_stride), (3, 4));
        assert_eq!(g.meta[p.cols_at as usize], 0);
        let weighted = Produced::Bags {
            offsets: &offsets,
            pooling: Pooling::Mean,
            weights: Some(&w),
            tables: None,
        };
        let g = Groups::new(&ids, weighted, 4);
        assert_eq!(
            (g.params.mode, g.params.mean, g.params.has_weights),
            (1, 1, 1)
        );
        assert_eq!(g.meta[g.params.weights_at as usize], 0.5f32.to_bits());
        // two tables' bags table-major (2 per table) in a 10-wide gradient, at columns 0
        // and 6: bag 3 (table 1, sample 1) reads row 1 from column 6
        let offsets = [0u32, 1, 3, 4];
        let tables = Produced::Bags {
            offsets: &offsets,
            pooling: Pooling::Sum,
            weights: None,
            tables: Some(TableOutput {
                per_table: 2,
                out_stride: 10,
                cols: &[0, 6],
            }),
        };
        let g = Groups::new(&ids, tables, 4);
        let p = g.params;
        assert_eq!((p.per_table, p.grad_stride), (2, 10));
        assert_eq!(&g.meta[p.cols_at as usize..][..2], &[0, 6]);
        assert_eq!(p.argmax_at, p.cols_at + 2);
    }

    /// The sharded grouping against a plain one on random and skewed batches on both sides
    /// of `PARALLEL_FROM`: every distinct id once, each with exactly its positions in
    /// ascending order, the split rows' chunks covering their groups in order; and the same
    /// result whatever the threads (a one-thread pool against the global one).
    #[test]
    fn groups_hold_each_ids_positions_in_order_serial_or_sharded() {
        let mut rng = Rng::new(0x6b0c ^ std::process::id() as u64);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut reused = Groups::default();
        for round in 0..12 {
            let n = match round % 3 {
                0 => rng.below(2_000) as usize,
                1 => PARALLEL_FROM + rng.below(20_000) as usize,
                _ => PARALLEL_FROM - 1,
            };
            let ids: Vec<u32> = if round % 2 == 0 {
                let zipf = ZipfIds::new(50_000, 1.05, rng.next_u64());
                zipf.batch(n, &mut rng)
            } else {
                (0..n)
                    .map(|_| match rng.below(4) {
                        0 => u32::MAX - rng.below(3) as u32,
                        _ => rng.below(5_000) as u32,
                    })
                    .collect()
            };
            let g = Groups::new(&ids, Produced::Lookup, 4);
            reused.build(&ids, Produced::Lookup, 4);
            assert_eq!((&reused.distinct, &reused.meta), (&g.distinct, &g.meta));
            let single = one.install(|| Groups::new(&ids, Produced::Lookup, 4));
            assert_eq!((&single.distinct, &single.meta), (&g.distinct, &g.meta));
            let mut want: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
            for (j, &id) in ids.iter().enumerate() {
                want.entry(id).or_default().push(j as u32);
            }
            assert_eq!(g.distinct.len(), want.len(), "round {round}: distinct");
            for (k, &id) in g.distinct.iter().enumerate() {
                assert_eq!(g.positions(k), &want[&id][..], "round {round}: id {id}");
            }
            // chunks: split rows ascending, each one's chunks its group's positions in order
            let p = g.params;
            let split = &g.meta[p.split_at as usize..][..3 * p.n_split as usize];
            let chunks = &g.meta[p.chunks_at as usize..][..2 * p.n_chunks as usize];
            let mut next_chunk = 0;
            let mut split_rows = split.chunks_exact(3).peekable();
            for k in 0..g.distinct.len() {
                let (begin, end) = (g.meta[k], g.meta[k + 1]);
                if end - begin <= SPLIT_OVER {
                    assert!(split_rows.peek().is_none_or(|s| s[0] != k as u32));
                    continue;
                }
                let s = split_rows.next().expect("a split row");
                assert_eq!((s[0], s[1]), (k as u32, next_chunk));
                let mut at = begin;
                for q in s[1]..s[2] {
                    let c = &chunks[2 * q as usize..][..2];
                    assert_eq!(c[0], at);
                    assert!(c[1] > c[0] && c[1] - c[0] <= chunk_len(end - begin));
                    at = c[1];
                }
                assert_eq!(at, end, "the chunks cover the group");
                next_chunk = s[2];
            }
            assert_eq!(next_chunk, p.n_chunks);
        }
    }
}
