//! Counters of an [`crate::EmbeddingCache`].

use std::time::Duration;

/// Cumulative counters since the cache was made (or [`crate::EmbeddingCache::reset_stats`]).
///
/// Invariants: `hits + misses == distinct`; `bytes_uploaded == rows_uploaded * dim * 4`;
/// `rows_uploaded - evictions` is the number of resident rows (when counted from an empty
/// cache; a failed batch counts the evictions it made and none of its uploads).
///
/// On the GPU-driven path ([`crate::BatchPath::Gpu`]) the GPU counts distinct ids, hits,
/// misses and evictions itself; the host times (`resolve_time`, `probe_time`, ...) stay 0
/// but for staging and submission, and `max_upload_bytes_per_pass` does not apply. A row
/// evicted by its own batch's later pass and missed again (a batch longer than the cache)
/// counts as a distinct id and a miss each time it is fetched.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheStats {
    /// Batches served (`lookup`, `preload` and op calls with at least one id). A training
    /// backward counts one only when it runs a pass of its own: right after the forward of
    /// its batch it reads the forward's slots and counts nothing here.
    pub batches: u64,
    /// Passes run (a batch with more distinct ids than slots takes several).
    pub passes: u64,
    /// Passes whose hits the GPU found ([`crate::Resolution::Device`], and every pass of the
    /// GPU-driven path).
    pub device_passes: u64,
    /// Ids requested (positions, repeats included).
    pub requests: u64,
    /// Distinct ids per batch, summed over batches.
    pub distinct: u64,
    /// Distinct ids of a batch served without uploading their row (resident when the
    /// batch arrived, and never evicted by the batch's own passes), summed over batches.
    pub hits: u64,
    /// Distinct ids of a batch whose row had to be uploaded, summed over batches.
    pub misses: u64,
    /// Rows uploaded. Equals `misses` unless a batch bigger than the cache evicted rows of
    /// its own earlier passes and uploaded them again.
    pub rows_uploaded: u64,
    /// Resident rows dropped to make room.
    pub evictions: u64,
    /// Rows refused admission to the cache's main region (`EvictionPolicy::TinyLfu`): on the
    /// host path a row the window pushed out that lost to the main region's victim, or a
    /// missed row of a pass whose window was full that lost and was served from a transient
    /// slot; on the GPU-driven path a missed row that lost to its victim (each served from a
    /// transient slot).
    pub refused: u64,
    /// Of the rows uploaded, those served from a transient slot (never resident): the
    /// batch got them, the cache kept the rows it had.
    pub transient: u64,
    /// Row bytes copied from the row source to the GPU.
    pub bytes_uploaded: u64,
    /// Host time resolving ids to slots (dedup, slot map, eviction). Once the cache has a
    /// miss estimate, each slot-map partition copies its missed rows into staging memory
    /// right after it resolves, while others still resolve: that copy is counted here.
    pub resolve_time: Duration,
    /// The part of `resolve_time`'s work spent copying missed rows while other partitions
    /// resolve, summed over the threads that copied (so it can exceed `resolve_time`):
    /// divided by the rows, the per-row copy cost under load. Counted for passes that
    /// stand: a pass whose row source failed adds nothing.
    pub resolve_copy_thread_time: Duration,
    /// Host time staging and recording a pass after resolution: the slot lists, params and
    /// slot-index changes written into staging while the pass's commands are recorded
    /// (and finished), and the missed rows of a pass that copies them serially (the first
    /// pass, or one with more misses than the estimate has room for).
    pub copy_time: Duration,
    /// Host time waiting for a free staging buffer (the GPU is behind).
    pub staging_wait_time: Duration,
    /// Host time handing recorded work to the queue (the submissions themselves).
    pub submit_time: Duration,
    /// GPU submissions made by the cache's calls. An op (bags, scores, combine) submits
    /// its kernel together with the pass that loaded its rows: one per call on the host
    /// path when the batch fits one pass; resolution on the GPU adds the probe's (which must
    /// come back before the pass); a batch bigger than the cache one per extra pass.
    pub submissions: u64,
    /// Host time of the first submission of resolution on the GPU: uploading the ids, the GPU's
    /// probe and reading back its misses and touched slots (one round trip per batch).
    pub probe_time: Duration,
    /// Host time grouping a training cache's batches by distinct row for their backward:
    /// in the backward's call, or beside the forward that grouped its batch ahead (on
    /// another thread: then only `group_wait_time` of it is on the forward's path).
    pub group_time: Duration,
    /// The part of `group_time` a forward waited for, its own work done: the grouping
    /// ahead that outlasted it.
    pub group_wait_time: Duration,
    /// The hit rate an LRU cache of any size would have had on the batches counted here,
    /// estimated online from a hashed sample of their ids ([`crate::sizing`]), when
    /// [`crate::CacheConfig::miss_ratio_curve`] is on (else `None`). One cache's own:
    /// not summed by `+=` (a sum of caches has none).
    pub miss_ratio_curve: Option<crate::sizing::MissRatioCurve>,
}

impl CacheStats {
    /// Fraction of the distinct ids of the batches that were served from resident rows
    /// (0 when nothing was looked up).
    pub fn hit_rate(&self) -> f64 {
        if self.distinct == 0 {
            0.0
        } else {
            self.hits as f64 / self.distinct as f64
        }
    }
}

/// Adds another cache's counters (the totals of several pools).
impl std::ops::AddAssign<&CacheStats> for CacheStats {
    fn add_assign(&mut self, o: &CacheStats) {
        // Destructured, so a new counter cannot be left out of the sum.
        let CacheStats {
            batches,
            passes,
            device_passes,
            requests,
            distinct,
            hits,
            misses,
            rows_uploaded,
            evictions,
            refused,
            transient,
            bytes_uploaded,
            resolve_time,
            resolve_copy_thread_time,
            copy_time,
            staging_wait_time,
            submit_time,
            submissions,
            probe_time,
            group_time,
            group_wait_time,
            miss_ratio_curve: _,
        } = o;
        self.miss_ratio_curve = None;
        self.batches += batches;
        self.passes += passes;
        self.device_passes += device_passes;
        self.requests += requests;
        self.distinct += distinct;
        self.hits += hits;
        self.misses += misses;
        self.rows_uploaded += rows_uploaded;
        self.evictions += evictions;
        self.refused += refused;
        self.transient += transient;
        self.bytes_uploaded += bytes_uploaded;
        self.resolve_time += *resolve_time;
        self.resolve_copy_thread_time += *resolve_copy_thread_time;
        self.copy_time += *copy_time;
        self.staging_wait_time += *staging_wait_time;
        self.submit_time += *submit_time;
        self.submissions += submissions;
        self.probe_time += *probe_time;
        self.group_time += *group_time;
        self.group_wait_time += *group_wait_time;
    }
}
