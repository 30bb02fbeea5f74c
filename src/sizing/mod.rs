//! Sizing a cache from its traffic: the online miss-ratio curve ([`MissRatioCurve`],
//! SHARDS sampling), the hit rate an LRU cache of every size would have had on the
//! batches a cache served, kept in fixed memory while the cache runs; and, over a whole
//! trace, the offline optimum ([`optimal_hits`]) and frequency-aware admission simulated
//! ([`AdmissionSim`], W-TinyLFU with a [`FrequencySketch`]: the CPU twin of a policy the
//! cache does not run yet).
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

mod admission;
mod belady;
mod shards;

pub use admission::{AdmissionSim, FrequencySketch};
pub use belady::optimal_hits;
pub use shards::MissRatioCurve;
pub(crate) use shards::Shards;

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
