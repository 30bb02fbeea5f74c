//! Sizing a cache from its traffic: the online miss-ratio curve ([`MissRatioCurve`],
//! SHARDS sampling), the hit rate an LRU cache of every size would have had on the
//! batches a cache served, kept in fixed memory while the cache runs; and, over a whole
//! trace, the offline optimum ([`optimal_hits`]); the [`FrequencySketch`] that
//! frequency-aware admission (`EvictionPolicy::TinyLfu`) asks on the host path; and
//! [`GpuSweep`], the GPU-driven path's eviction and admission replayed on the CPU.
//!
//! ```no_run
//! # fn main() -> Result<(), hotrow::HotrowError> {
//! use hotrow::{CacheConfig, Capacity, EmbeddingCache, GpuContext, HostTable};
//! let ctx = GpuContext::new()?;
//! let dim = 16;
//! let data = vec![0.5f32; 100_000 * dim];
//! let table = HostTable::borrowed(&data, dim)?;
//! let config = CacheConfig::default()
//!     .capacity(Capacity::Fraction(0.05))
//!     .miss_ratio_curve(true);
//! let mut cache = EmbeddingCache::new(&ctx, table, config)?;
//! for batch in 0..100u32 {
//!     let ids: Vec<u32> = (0..4_096).map(|i| (i * 7 + batch * 13) % 20_000).collect();
//!     cache.lookup(&ids)?;
//! }
//! let curve = cache.stats().miss_ratio_curve.expect("asked for");
//! for (rows, hit) in curve.points(100_000, 10) {
//!     println!("{rows:>7} rows: hit rate {hit:.3}");
//! }
//! # Ok(()) }
//! ```

mod belady;
mod gpu_sweep;
mod shards;
mod sketch;

pub use belady::optimal_hits;
pub use gpu_sweep::GpuSweep;
pub use shards::MissRatioCurve;
pub(crate) use shards::Shards;
pub use sketch::FrequencySketch;

/// The estimator a cache runs with [`crate::CacheConfig::miss_ratio_curve`], fed by hand:
/// the miss-ratio curve of an id trace with no GPU and no cache (the sizing tool,
/// `examples/size_cache.rs`, runs it beside the policies).
///
/// ```
/// let mut est = hotrow::sizing::CurveEstimator::new(1_000);
/// for b in 0..50u32 {
///     let ids: Vec<u32> = (0..100).map(|i| (i * 3 + b) % 400).collect();
///     est.batch(&ids);
/// }
/// let curve = est.curve();
/// assert!(curve.hit_rate(400) > curve.hit_rate(50));
/// ```
pub struct CurveEstimator(Shards);

impl CurveEstimator {
    /// An estimator for ids below `rows`, with a cache's settings.
    pub fn new(rows: usize) -> Self {
        Self(Shards::for_table(rows))
    }

    /// One batch's ids, in order.
    pub fn batch(&mut self, ids: &[u32]) {
        self.0.batch(ids);
    }

    /// The curve so far.
    pub fn curve(&self) -> &MissRatioCurve {
        self.0.curve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Awkward but valid input is served, never a panic: empty traces and batches, zero
    /// rows or capacity, ids past the estimator's table (sampled, their distances clamped
    /// into the curve's range).
    #[test]
    fn awkward_input_is_served() {
        let mut est = CurveEstimator::new(0);
        est.batch(&[]);
        est.batch(&[5, u32::MAX, 5]);
        est.batch(&[u32::MAX, 7]);
        let c = est.curve();
        assert!(
            (0.0..=1.0).contains(&c.hit_rate(0)) && (0.0..=1.0).contains(&c.hit_rate(u64::MAX))
        );
        assert!(c.points(0, 0).is_empty());
        assert_eq!(optimal_hits(&[], 10, 0, None).unwrap(), (0, 0));
        assert_eq!(
            optimal_hits(&[vec![], vec![1, 1]], 2, 0, None).unwrap(),
            (0, 1)
        );
        let mut sketch = FrequencySketch::new(0);
        sketch.increment(u32::MAX);
        assert!(sketch.frequency(u32::MAX) >= 1);
    }
}
