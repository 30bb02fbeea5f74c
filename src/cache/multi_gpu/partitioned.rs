//! [`PartitionedCache`]: each row is owned by one device (`id % devices`); partial results
//! are reduced per device, combined on the host and written to the device the caller names.

use std::sync::Arc;

use rayon::prelude::*;

use super::devices::{on_device, Devices};
use super::owned_rows::{HostTraffic, OwnedRows};
use crate::batch::{check_finite, check_ids};
use crate::cache::products::check_combine_shape;
use crate::cache::{CacheConfig, CacheStats, EmbeddingCache, Queries};
use crate::error::{HotrowError, Result};
use crate::gpu::{encoder, submit_encoder, Embeddings, GpuContext, RowBuffer};
use crate::ops::bag::{check_bags, Pooling};
use crate::table::RowSource;

/// One device's share of a partitioned call: its ids (or candidates), where they sit in
/// the batch, and its partial result.
#[derive(Default)]
struct Share {
    ids: Vec<u32>,
    positions: Vec<u32>,
    offsets: Vec<u32>,
    weights: Vec<f32>,
}

/// A cache over several GPUs that split the table: row `id` is owned by device
/// `id % devices` and cached only there, so the devices together hold `devices` times the
/// rows one would. Each device looks up its share of a batch; bags and scores are reduced
/// on each device first (partial sums or maxima per bag, score columns per candidate), so
/// only partial results cross the host, where they are combined and written to the
/// device the caller names; a lookup's rows that the receiving device owns never leave it
/// (only the other devices' rows cross the host). Every device holds `config`'s capacity,
/// and besides it, for the calls it serves, a buffer of partial results and, when it
/// receives a lookup, the assembled rows (each up to a batch's rows x dim x 4 bytes, kept
/// for the next call).
///
/// Bad input is refused before any device starts; a device that fails fails the call with
/// [`HotrowError::OnDevice`] naming it. [`PartitionedCache::traffic`] counts the bytes
/// that crossed the host.
///
/// ```no_run
/// # fn main() -> Result<(), hotrow::HotrowError> {
/// use hotrow::{CacheConfig, GpuContext, GpuOptions, HostTable, PartitionedCache, Pooling};
/// let gpus = GpuContext::every(GpuOptions::default())?;
/// let data: Vec<f32> = (0..10_000 * 8).map(|i| (i as f32).cos()).collect();
/// let mut cache = PartitionedCache::new(&gpus, HostTable::borrowed(&data, 8)?, CacheConfig::default())?;
/// let rows = cache.lookup(&[5, 9_999, 5, 17], 0)?;                  // 4 x 8 on GPU 0
/// let bags = cache.lookup_bags(&[1, 2, 3], &[0, 2], Pooling::Sum, None, 0)?; // 2 x 8
/// assert_eq!((rows.rows(), bags.rows()), (4, 2));
/// # Ok(()) }
/// ```
pub struct PartitionedCache<S: RowSource> {
    devices: Devices<OwnedRows<S>>,
    shares: Vec<Share>,
    partials: Vec<Embeddings>,
    host: Vec<f32>,
    /// Per position of a lookup: (device, row of that device's share).
    from: Vec<(u32, u32)>,
    /// Per device, the rows of a lookup whose result it receives: its own share (copied
    /// on the GPU) then the other devices' shares (through the host), gathered into the
    /// output in batch order. Grown as needed, kept across calls.
    assembled: Vec<Option<RowBuffer>>,
    /// Per position of a lookup: its row in `assembled`.
    order: Vec<u32>,
    traffic: HostTraffic,
}

impl<S: RowSource> std::fmt::Debug for PartitionedCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedCache")
            .field("devices", &self.devices.len())
            .field("traffic", &self.traffic)
            .finish()
    }
}

impl<S: RowSource> PartitionedCache<S> {
    /// One cache per context (each a different device), all over `source`; row `id` is
    /// owned by device `id % contexts.len()`.
    pub fn new(contexts: &[GpuContext], source: S, config: CacheConfig) -> Result<Self> {
        let (rows, source) = (source.rows(), Arc::new(source));
        let n = contexts.len().max(1);
        let devices = Devices::new(contexts, rows, config, |d| OwnedRows {
            source: source.clone(),
            device: d as u32,
            devices: n as u32,
        })?;
        let partials = (0..devices.len())
            .map(|d| devices.output(d))
            .collect::<Result<_>>()?;
        Ok(Self {
            shares: (0..devices.len()).map(|_| Share::default()).collect(),
            devices,
            partials,
            host: Vec::new(),
            from: Vec::new(),
            assembled: (0..n).map(|_| None).collect(),
            order: Vec::new(),
            traffic: HostTraffic::default(),
        })
    }

    /// Number of devices.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// The device that owns row `id`.
    pub fn owner(&self, id: u32) -> usize {
        id as usize % self.devices.len()
    }

    /// Device `d`'s cache (its stats, memory, context): a cache of the rows it owns,
    /// numbered `id / devices` ([`OwnedRows`]).
    pub fn cache(&self, d: usize) -> Option<&EmbeddingCache<OwnedRows<S>>> {
        self.devices.caches.get(d)
    }

    /// Counters summed over the devices.
    pub fn stats(&self) -> CacheStats {
        self.devices.stats()
    }

    /// Bytes moved through host memory so far.
    pub fn traffic(&self) -> HostTraffic {
        self.traffic
    }

    /// Makes `ids` resident, each on its owner.
    pub fn preload(&mut self, ids: &[u32]) -> Result<()> {
        let n = self.devices.len() as u32;
        self.devices
            .preload(ids, |id| Some(((id % n) as usize, id / n)))
    }

    /// Rows of `ids` (`ids.len() x dim`), on device `on`.
    pub fn lookup(&mut self, ids: &[u32], on: usize) -> Result<Embeddings> {
        self.devices.check_device(on)?;
        let mut out = self.devices.output(on)?;
        self.lookup_into(ids, on, &mut out)?;
        Ok(out)
    }

    /// Like [`PartitionedCache::lookup`], into `out` (of device `on`).
    pub fn lookup_into(&mut self, ids: &[u32], on: usize, out: &mut Embeddings) -> Result<()> {
        self.devices.check_device(on)?;
        check_ids(ids, self.devices.rows())?;
        self.devices.check_output(on, out)?;
        let n = self.devices.len();
        self.clear_shares();
        // Where each position's row will be: (device, row of its share).
        self.from.clear();
        for &id in ids {
            let d = id as usize % n;
            let s = &mut self.shares[d];
            self.from.push((d as u32, s.ids.len() as u32));
            s.ids.push(id / n as u32);
        }
        let dim = self.devices.dim();
        let limit = self.devices.ctx(on).max_binding();
        if ids.len() as u64 * dim as u64 * 4 <= limit {
            return self.lookup_assembled(on, dim, out);
        }
        // (Too many rows for one binding on `on`: through the host.)
        let parts = self.run_shares(|cache, s, partial| cache.lookup_into(&s.ids, partial))?;
        let parts: Vec<&[f32]> = parts.iter().map(|p| p.as_deref().unwrap_or(&[])).collect();
        self.host.clear();
        self.host.resize(ids.len() * dim, 0.0);
        // Rows placed in parallel (a W2 batch is 32 MiB of them).
        self.host
            .par_chunks_mut(dim.max(1))
            .zip(self.from.par_iter())
            .for_each(|(row, &(d, k))| {
                let k = k as usize * dim;
                row.copy_from_slice(&parts[d as usize][k..k + dim]);
            });
        self.finish(on, ids.len(), dim, out)
    }

    /// A lookup whose shares (`self.shares`, positions in `self.from`) are gathered on
    /// their devices; only the other devices' rows cross the host: device `on` copies its
    /// own share into its `assembled` rows on the GPU, receives the others' after it, and
    /// gathers all of them into `out` in batch order.
    fn lookup_assembled(&mut self, on: usize, dim: usize, out: &mut Embeddings) -> Result<()> {
        let jobs = self
            .shares
            .iter()
            .zip(self.partials.iter_mut())
            .enumerate()
            .map(|(d, (s, p))| (!s.ids.is_empty()).then_some((d, s, p)))
            .collect();
        let parts = self.devices.run(jobs, |cache, (d, s, partial)| {
            cache.lookup_into(&s.ids, partial)?;
            // (`on`'s rows stay where they are.)
            if d == on {
                return Ok(None);
            }
            partial.to_host().map(Some)
        })?;
        let own = self.shares[on].ids.len();
        // Row of each device's share in the assembled rows: `on`'s first, then the others
        // in device order.
        let mut first = vec![0u32; parts.len()];
        let mut next = own as u32;
        self.host.clear();
        for (d, part) in parts.iter().enumerate() {
            if let Some(Some(rows)) = part {
                first[d] = next;
                next += (rows.len() / dim.max(1)) as u32;
                self.host.extend_from_slice(rows);
            }
        }
        let total = next as usize;
        self.order.clear();
        self.order.extend(self.from.iter().map(|&(d, k)| {
            if d as usize == on {
                k
            } else {
                first[d as usize] + k
            }
        }));
        let ctx = self.devices.ctx(on).clone();
        let on_device_error = |e| on_device(on, &ctx, e);
        if total == 0 {
            out.reset_for(&ctx, 0, dim).map_err(on_device_error)?;
            self.traffic.calls += 1;
            return Ok(());
        }
        let rows = match &self.assembled[on] {
            Some(a) if a.rows() >= total => a,
            _ => {
                // Room for a quarter more, so a slowly growing batch does not reallocate
                // every call (bounded by what one binding holds).
                let most = (ctx.max_binding() / (dim as u64 * 4)) as usize;
                let room = (total + total / 4).min(most).max(total);
                self.assembled[on] = None;
                let buffer = RowBuffer::new(&ctx, room, dim).map_err(on_device_error)?;
                self.assembled[on].insert(buffer)
            }
        };
        if own > 0 {
            // (Inside error scopes on a device the caller shares, as every call of hotrow's.)
            ctx.guarded(|| {
                let shard = rows.shards().next().expect("a row buffer has a shard");
                let mut enc = encoder(&ctx, "hotrow partitioned lookup");
                let own_bytes = (own * dim * 4) as u64;
                enc.copy_buffer_to_buffer(self.partials[on].buffer(), 0, shard, 0, own_bytes);
                submit_encoder(&ctx, enc).map(drop)
            })
            .map_err(on_device_error)?;
        }
        if !self.host.is_empty() {
            rows.write_rows(own, &self.host).map_err(on_device_error)?;
        }
        rows.gather_into(&self.order, out)
            .map_err(on_device_error)?;
        let bytes = self.host.len() as u64 * 4;
        self.traffic.bytes_to_host += bytes;
        self.traffic.bytes_from_host += bytes + self.order.len() as u64 * 4;
        self.traffic.calls += 1;
        Ok(())
    }

    /// Pooled bags (as [`EmbeddingCache::lookup_bags`], `offsets.len() x dim`), on device
    /// `on`. Each device pools the ids it owns in every bag (a sum, or a maximum); the host
    /// adds the partial sums (divides by the bag's length for `Mean`) or takes the maximum
    /// over the devices that had ids in the bag. Sums may differ from one device's in the
    /// last bits (another order of additions).
    pub fn lookup_bags(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
        on: usize,
    ) -> Result<Embeddings> {
        self.devices.check_device(on)?;
        let mut out = self.devices.output(on)?;
        self.lookup_bags_into(ids, offsets, pooling, weights, on, &mut out)?;
        Ok(out)
    }

    /// Like [`PartitionedCache::lookup_bags`], into `out` (of device `on`).
    pub fn lookup_bags_into(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
        on: usize,
        out: &mut Embeddings,
    ) -> Result<()> {
        self.devices.check_device(on)?;
        check_ids(ids, self.devices.rows())?;
        check_bags(ids.len(), offsets, pooling, weights)?;
        self.devices.check_output(on, out)?;
        let n = self.devices.len();
        self.clear_shares();
        let bags = offsets.len();
        for b in 0..bags {
            let (lo, hi) = (
                offsets[b] as usize,
                offsets.get(b + 1).map_or(ids.len(), |&e| e as usize),
            );
            for s in &mut self.shares {
                s.offsets.push(s.ids.len() as u32);
            }
            for j in lo..hi {
                let s = &mut self.shares[ids[j] as usize % n];
                s.ids.push(ids[j] / n as u32);
                if let Some(w) = weights {
                    s.weights.push(w[j]);
                }
            }
        }
        let pool = if pooling == Pooling::Max {
            Pooling::Max
        } else {
            Pooling::Sum
        };
        let weighted = weights.is_some();
        for (d, s) in self.shares.iter().enumerate() {
            let w = weighted.then_some(&s.weights[..]);
            self.devices.caches[d].check_bags(&s.ids, &s.offsets, pool, w)?;
        }
        let parts = self.run_shares(|cache, s, partial| {
            let w = weighted.then_some(&s.weights[..]);
            cache.lookup_bags_into(&s.ids, &s.offsets, pool, w, partial)
        })?;
        let dim = self.devices.dim();
        combine_bags(
            &mut self.host,
            &self.shares,
            &parts,
            ids.len(),
            offsets,
            pooling,
            dim,
        );
        self.finish(on, bags, dim, out)
    }

    /// Scores of every host query (`dim` values each) against every candidate (as
    /// [`EmbeddingCache::scores`], `m x cand.len()`), on device `on`: each device scores
    /// the candidates it owns; the host places their columns.
    pub fn scores(&mut self, queries: &[f32], cand: &[u32], on: usize) -> Result<Embeddings> {
        self.devices.check_device(on)?;
        let mut out = self.devices.output(on)?;
        self.scores_into(queries, cand, on, &mut out)?;
        Ok(out)
    }

    /// Like [`PartitionedCache::scores`], into `out` (of device `on`).
    pub fn scores_into(
        &mut self,
        queries: &[f32],
        cand: &[u32],
        on: usize,
        out: &mut Embeddings,
    ) -> Result<()> {
        self.devices.check_device(on)?;
        let dim = self.devices.dim();
        if cand.is_empty() {
            return Err(HotrowError::EmptyCandidates);
        }
        check_ids(cand, self.devices.rows())?;
        self.devices.check_output(on, out)?;
        self.share_by_owner(cand);
        // Each device checks the queries (dim, finite, its binding limit) for its share.
        let mut m = 0;
        for (d, s) in self.shares.iter().enumerate() {
            if !s.ids.is_empty() {
                let q = Queries::Host { data: queries, dim };
                m = self.devices.caches[d].check_scores(q, &s.ids)?;
            }
        }
        let parts = self.run_shares(|cache, s, partial| {
            cache.scores_into(Queries::Host { data: queries, dim }, &s.ids, partial)
        })?;
        let width = cand.len();
        self.host.clear();
        self.host.resize(m * width, 0.0);
        for (s, part) in self.shares.iter().zip(&parts) {
            let Some(cols) = part else { continue };
            let c = s.ids.len();
            for i in 0..m {
                for (k, &j) in s.positions.iter().enumerate() {
                    self.host[i * width + j as usize] = cols[i * c + k];
                }
            }
        }
        self.finish(on, m, width, out)
    }

    /// Combinations `x * E[ids]` (as [`EmbeddingCache::combine`], `x` is `m x ids.len()`,
    /// result `m x dim`) on device `on`: each device combines the ids it owns with their
    /// columns of `x`; the host adds the partial results.
    pub fn combine(&mut self, x: &[f32], ids: &[u32], on: usize) -> Result<Embeddings> {
        self.devices.check_device(on)?;
        let mut out = self.devices.output(on)?;
        self.combine_into(x, ids, on, &mut out)?;
        Ok(out)
    }

    /// Like [`PartitionedCache::combine`], into `out` (of device `on`).
    pub fn combine_into(
        &mut self,
        x: &[f32],
        ids: &[u32],
        on: usize,
        out: &mut Embeddings,
    ) -> Result<()> {
        self.devices.check_device(on)?;
        let k = ids.len();
        check_combine_shape(x.len(), k)?;
        check_ids(ids, self.devices.rows())?;
        check_finite("x", x)?;
        self.devices.check_output(on, out)?;
        let m = x.len() / k;
        self.share_by_owner(ids);
        // Each device's columns of x, row-major (m x its ids).
        for s in &mut self.shares {
            for i in 0..m {
                let row = &x[i * k..(i + 1) * k];
                s.weights
                    .extend(s.positions.iter().map(|&j| row[j as usize]));
            }
        }
        for (d, s) in self.shares.iter().enumerate() {
            if !s.ids.is_empty() {
                self.devices.caches[d].check_combine(&s.weights, &s.ids)?;
            }
        }
        let parts =
            self.run_shares(|cache, s, partial| cache.combine_into(&s.weights, &s.ids, partial))?;
        let dim = self.devices.dim();
        self.host.clear();
        self.host.resize(m * dim, 0.0);
        for part in parts.iter().flatten() {
            self.host.iter_mut().zip(part).for_each(|(a, &v)| *a += v);
        }
        self.finish(on, m, dim, out)
    }

    /// Puts each of `ids` in its owner's share (local id and position in `ids`).
    fn share_by_owner(&mut self, ids: &[u32]) {
        let n = self.devices.len() as u32;
        self.clear_shares();
        for (j, &id) in ids.iter().enumerate() {
            let s = &mut self.shares[(id % n) as usize];
            s.ids.push(id / n);
            s.positions.push(j as u32);
        }
    }

    /// Empties every device's share.
    fn clear_shares(&mut self) {
        for s in &mut self.shares {
            s.ids.clear();
            s.positions.clear();
            s.offsets.clear();
            s.weights.clear();
        }
    }

    /// Runs `op` for every device with a non-empty share, into that device's partial
    /// output, and reads the partials back (counted as host traffic); `None` for a device
    /// without work.
    fn run_shares(
        &mut self,
        op: impl Fn(&mut EmbeddingCache<OwnedRows<S>>, &Share, &mut Embeddings) -> Result<()> + Sync,
    ) -> Result<Vec<Option<Vec<f32>>>> {
        let jobs = self
            .shares
            .iter()
            .zip(self.partials.iter_mut())
            .map(|(s, p)| (!s.ids.is_empty()).then_some((s, p)))
            .collect();
        let parts = self.devices.run(jobs, |cache, (s, partial)| {
            op(cache, s, partial)?;
            partial.to_host()
        })?;
        let bytes: usize = parts.iter().flatten().map(Vec::len).sum();
        self.traffic.bytes_to_host += bytes as u64 * 4;
        Ok(parts)
    }

    /// Writes the combined result (`rows x width` in `self.host`) to `out` on device `on`.
    fn finish(&mut self, on: usize, rows: usize, width: usize, out: &mut Embeddings) -> Result<()> {
        let ctx = self.devices.ctx(on).clone();
        out.write_host(&ctx, &self.host, rows, width)
            .map_err(|e| on_device(on, &ctx, e))?;
        self.traffic.bytes_from_host += self.host.len() as u64 * 4;
        self.traffic.calls += 1;
        Ok(())
    }
}

/// The host's combination of the devices' partial bags (`parts[d]`: device `d`'s `bags x
/// dim` partial results, `None` when it had no ids) into `host`: sums (then divided by each
/// bag's length for a mean) or maxima over the devices that had ids in the bag.
fn combine_bags(
    host: &mut Vec<f32>,
    shares: &[Share],
    parts: &[Option<Vec<f32>>],
    ids: usize,
    offsets: &[u32],
    pooling: Pooling,
    dim: usize,
) {
    let bags = offsets.len();
    host.clear();
    host.resize(bags * dim, 0.0);
    // Whether a bag already has a value (Max: the first device with ids in it sets it).
    let mut set = vec![false; if pooling == Pooling::Max { bags } else { 0 }];
    for (s, part) in shares.iter().zip(parts) {
        let Some(rows) = part else { continue };
        for b in 0..bags {
            let count = s.offsets.get(b + 1).map_or(s.ids.len() as u32, |&e| e) - s.offsets[b];
            let (acc, part) = (
                &mut host[b * dim..(b + 1) * dim],
                &rows[b * dim..(b + 1) * dim],
            );
            match pooling {
                Pooling::Max if count > 0 => {
                    if set[b] {
                        acc.iter_mut().zip(part).for_each(|(a, &v)| *a = a.max(v));
                    } else {
                        acc.copy_from_slice(part);
                        set[b] = true;
                    }
                }
                Pooling::Max => {}
                _ => acc.iter_mut().zip(part).for_each(|(a, &v)| *a += v),
            }
        }
    }
    if pooling == Pooling::Mean {
        for b in 0..bags {
            let len = offsets.get(b + 1).map_or(ids as u32, |&e| e) - offsets[b];
            if len > 0 {
                let inv = 1.0 / len as f32;
                host[b * dim..(b + 1) * dim]
                    .iter_mut()
                    .for_each(|v| *v *= inv);
            }
        }
    }
}
