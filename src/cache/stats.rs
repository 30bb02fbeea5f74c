//! Counters of an [`crate::EmbeddingCache`].

use std::time::Duration;

/// Cumulative counters since the cache was made (or [`crate::EmbeddingCache::reset_stats`]).
///
/// Invariants: `hits + misses == distinct`, `bytes_uploaded == misses * dim * 4`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheStats {
    /// Batches served (`lookup` and `preload` calls with at least one id).
    pub batches: u64,
    /// Passes run (a batch with more distinct ids than slots takes several).
    pub passes: u64,
    /// Ids requested (positions, repeats included).
    pub requests: u64,
    /// Distinct ids per pass, summed.
    pub distinct: u64,
    /// Distinct ids already resident.
    pub hits: u64,
    /// Distinct ids whose row was uploaded.
    pub misses: u64,
    /// Resident rows dropped to make room.
    pub evictions: u64,
    /// Row bytes copied from the row source to the GPU.
    pub bytes_uploaded: u64,
    /// Host time resolving ids to slots (dedup, slot map, eviction).
    pub resolve_time: Duration,
    /// Host time copying missed rows into staging memory.
    pub copy_time: Duration,
    /// Host time waiting for a free staging buffer (the GPU is behind).
    pub staging_wait_time: Duration,
    /// Host time encoding and submitting GPU work.
    pub submit_time: Duration,
}

impl CacheStats {
    /// Fraction of distinct ids that were resident (0 when nothing was looked up).
    pub fn hit_rate(&self) -> f64 {
        if self.distinct == 0 {
            0.0
        } else {
            self.hits as f64 / self.distinct as f64
        }
    }
}
