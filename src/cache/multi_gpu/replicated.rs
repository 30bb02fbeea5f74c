//! [`ReplicatedCache`]: every device caches the hot rows and serves a contiguous share of
//! each batch (data parallel); nothing crosses devices.

use std::ops::Range;
use std::sync::Arc;

use super::devices::{bag_range, on_device, split, Devices};
use crate::batch::check_ids;
use crate::cache::{CacheConfig, CacheStats, EmbeddingCache, Queries};
use crate::error::{HotrowError, Result};
use crate::gpu::{Embeddings, GpuContext};
use crate::ops::bag::{check_bags, Pooling};
use crate::table::RowSource;

/// A cache over several GPUs that each hold their own copy of the hot rows (data
/// parallel): a batch is split into contiguous shares, one per device
/// ([`ReplicatedCache::split`]), served at once, and each device returns its share on its
/// own GPU. Nothing crosses devices. Every device holds `config`'s capacity.
///
/// Bad input is refused before any device starts (the same typed errors as
/// [`EmbeddingCache`]); a device that fails during a call fails the call with
/// [`HotrowError::OnDevice`] naming it.
///
/// ```no_run
/// # fn main() -> Result<(), hotrow::HotrowError> {
/// use hotrow::{CacheConfig, GpuContext, GpuOptions, HostTable, ReplicatedCache};
/// let gpus = GpuContext::every(GpuOptions::default())?;
/// let data: Vec<f32> = (0..10_000 * 8).map(|i| (i as f32).sin()).collect();
/// let mut cache = ReplicatedCache::new(&gpus, HostTable::borrowed(&data, 8)?, CacheConfig::default())?;
/// let ids = [5, 9_999, 5, 17];
/// let parts = cache.lookup(&ids)?; // part d: rows of ids[cache.split(4)[d]], on GPU d
/// assert_eq!(ReplicatedCache::<HostTable>::to_host(&parts)?.len(), 4 * 8);
/// # Ok(()) }
/// ```
pub struct ReplicatedCache<S: RowSource> {
    devices: Devices<Arc<S>>,
}

impl<S: RowSource> std::fmt::Debug for ReplicatedCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedCache")
            .field("devices", &self.devices.len())
            .finish()
    }
}

impl<S: RowSource> ReplicatedCache<S> {
    /// One cache per context (each a different device), all over `source`.
    pub fn new(contexts: &[GpuContext], source: S, config: CacheConfig) -> Result<Self> {
        let (rows, source) = (source.rows(), Arc::new(source));
        Ok(Self {
            devices: Devices::new(contexts, rows, config, |_| source.clone())?,
        })
    }

    /// Number of devices.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Device `d`'s cache (its stats, memory, context).
    pub fn cache(&self, d: usize) -> Option<&EmbeddingCache<Arc<S>>> {
        self.devices.caches.get(d)
    }

    /// Counters summed over the devices.
    pub fn stats(&self) -> CacheStats {
        self.devices.stats()
    }

    /// The positions device `d` serves of a batch of `n`: `split(n)[d]` (contiguous,
    /// balanced; for bags, the bags).
    pub fn split(&self, n: usize) -> Vec<Range<usize>> {
        split(n, self.devices.len())
    }

    /// One empty output per device, for the `_into` calls.
    pub fn outputs(&self) -> Result<Vec<Embeddings>> {
        (0..self.devices.len())
            .map(|d| self.devices.output(d))
            .collect()
    }

    /// The parts of a result, concatenated on the host (in device order); a part that
    /// cannot be read is [`HotrowError::OnDevice`] naming its device.
    pub fn to_host(parts: &[Embeddings]) -> Result<Vec<f32>> {
        let mut all = Vec::new();
        for (d, p) in parts.iter().enumerate() {
            all.extend(p.to_host().map_err(|e| on_device(d, p.context(), e))?);
        }
        Ok(all)
    }

    /// Makes `ids` resident on every device.
    pub fn preload(&mut self, ids: &[u32]) -> Result<()> {
        self.devices.preload(ids, |_| None)
    }

    /// Rows of `ids`: part `d` (on device `d`) holds the rows of `ids[split(n)[d]]`.
    pub fn lookup(&mut self, ids: &[u32]) -> Result<Vec<Embeddings>> {
        let mut outs = self.outputs()?;
        self.lookup_into(ids, &mut outs)?;
        Ok(outs)
    }

    /// Like [`ReplicatedCache::lookup`], into `outs` (one per device, each of its device:
    /// see [`ReplicatedCache::outputs`]).
    pub fn lookup_into(&mut self, ids: &[u32], outs: &mut [Embeddings]) -> Result<()> {
        check_ids(ids, self.devices.rows())?;
        self.check_outputs(outs)?;
        let jobs = self
            .split(ids.len())
            .into_iter()
            .zip(outs.iter_mut())
            .map(|(r, out)| Some((&ids[r], out)))
            .collect();
        self.devices
            .run(jobs, |cache, (ids, out)| cache.lookup_into(ids, out))?;
        Ok(())
    }

    /// Pooled bags (as [`EmbeddingCache::lookup_bags`]): part `d` holds bags
    /// `split(offsets.len())[d]`.
    pub fn lookup_bags(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
    ) -> Result<Vec<Embeddings>> {
        let mut outs = self.outputs()?;
        self.lookup_bags_into(ids, offsets, pooling, weights, &mut outs)?;
        Ok(outs)
    }

    /// Like [`ReplicatedCache::lookup_bags`], into `outs`.
    pub fn lookup_bags_into(
        &mut self,
        ids: &[u32],
        offsets: &[u32],
        pooling: Pooling,
        weights: Option<&[f32]>,
        outs: &mut [Embeddings],
    ) -> Result<()> {
        check_ids(ids, self.devices.rows())?;
        check_bags(ids.len(), offsets, pooling, weights)?;
        self.check_outputs(outs)?;
        let parts: Vec<_> = self
            .split(offsets.len())
            .into_iter()
            .map(|r| bag_range(ids, offsets, weights, r))
            .collect();
        for (d, (ids, offsets, weights)) in parts.iter().enumerate() {
            self.devices.caches[d].check_bags(ids, offsets, pooling, *weights)?;
        }
        let jobs = parts.into_iter().zip(outs.iter_mut()).map(Some).collect();
        self.devices
            .run(jobs, |cache, ((ids, offsets, weights), out)| {
                cache.lookup_bags_into(ids, &offsets, pooling, weights, out)
            })?;
        Ok(())
    }

    /// Scores of every host query against every candidate (as
    /// [`EmbeddingCache::scores`]): part `d` holds the columns of candidates
    /// `split(cand.len())[d]` (`m x` that many).
    pub fn scores(&mut self, queries: &[f32], cand: &[u32]) -> Result<Vec<Embeddings>> {
        let mut outs = self.outputs()?;
        self.scores_into(queries, cand, &mut outs)?;
        Ok(outs)
    }

    /// Like [`ReplicatedCache::scores`], into `outs` (one per device, each of its device).
    pub fn scores_into(
        &mut self,
        queries: &[f32],
        cand: &[u32],
        outs: &mut [Embeddings],
    ) -> Result<()> {
        let dim = self.devices.dim();
        self.devices.caches[0].check_scores(Queries::Host { data: queries, dim }, cand)?;
        self.check_outputs(outs)?;
        let jobs = self
            .split(cand.len())
            .into_iter()
            .zip(outs.iter_mut())
            .map(|(r, out)| Some((&cand[r], out)))
            .collect();
        self.devices.run(jobs, |cache, (cand, out)| {
            if cand.is_empty() {
                let m = queries.len() / dim;
                return out.write_host(cache.context(), &[], m, 0);
            }
            cache.scores_into(Queries::Host { data: queries, dim }, cand, out)
        })?;
        Ok(())
    }

    /// Combinations `x * E[ids]` (as [`EmbeddingCache::combine`], `x` is `m x ids.len()`):
    /// part `d` holds rows `split(m)[d]` of the `m x dim` result.
    pub fn combine(&mut self, x: &[f32], ids: &[u32]) -> Result<Vec<Embeddings>> {
        let mut outs = self.outputs()?;
        self.combine_into(x, ids, &mut outs)?;
        Ok(outs)
    }

    /// Like [`ReplicatedCache::combine`], into `outs` (one per device, each of its device).
    pub fn combine_into(&mut self, x: &[f32], ids: &[u32], outs: &mut [Embeddings]) -> Result<()> {
        let m = self.devices.caches[0].check_combine(x, ids)?;
        self.check_outputs(outs)?;
        let k = ids.len();
        let jobs = self
            .split(m)
            .into_iter()
            .zip(outs.iter_mut())
            .map(|(r, out)| Some((&x[r.start * k..r.end * k], out)))
            .collect();
        let dim = self.devices.dim();
        self.devices.run(jobs, |cache, (x, out)| {
            if x.is_empty() {
                return out.write_host(cache.context(), &[], 0, dim);
            }
            cache.combine_into(x, ids, out)
        })?;
        Ok(())
    }

    fn check_outputs(&self, outs: &[Embeddings]) -> Result<()> {
        if outs.len() != self.devices.len() {
            return Err(HotrowError::LengthMismatch {
                what: "outputs (one per device)",
                expected: self.devices.len(),
                got: outs.len(),
            });
        }
        for (d, out) in outs.iter().enumerate() {
            self.devices.check_output(d, out)?;
        }
        Ok(())
    }
}
