//! The miss-ratio curve of a stream of batches, online, in fixed memory: SHARDS
//! (Waldspurger et al., FAST '15). Ids are sampled by a hash of the id (spatial sampling:
//! an id is either always or never sampled), so the sampled references keep their reuse
//! pattern; each sampled reference's LRU stack distance, counted among sampled ids and
//! scaled by the sampling rate, estimates its distance in the whole stream. The fraction of
//! references whose distance is below `c` is the hit rate of an LRU cache of `c` rows.
//! Fixed size: at most `max_tracked` ids are tracked; past that the threshold drops to
//! the largest tracked hash, and that id leaves (each reference counts with the weight
//! `1 / rate` of its time, so the curve stays a fraction when the rate falls).
//!
//! A reference is a batch's distinct id, as the cache counts its hit rate (a row a batch
//! repeats is one reference), and it hits when its row was resident as the batch arrived:
//! its distance counts the ids referenced since its last use up to the batch's start, not
//! the batch's own (the cache pins them; they do not compete). That is an LRU cache
//! updated batch by batch, a batch's rows becoming most recent in their batch order (the
//! unit tests check it against exactly that). A batch with more distinct rows than the
//! cache is served in passes that evict each other's rows, which the model leaves out: it
//! counts such a batch's hits as the rows resident when it arrived.

use std::collections::{BinaryHeap, HashMap};

/// Hash values are taken modulo this (the sampling rate is `threshold / MODULUS`).
const MODULUS: u64 = 1 << 24;

/// The hit rate an LRU cache would have at every capacity, from the references it saw.
#[derive(Clone, Debug, PartialEq)]
pub struct MissRatioCurve {
    /// Rows per bucket of `hits`.
    bucket_rows: u64,
    /// Weight of references whose scaled reuse distance falls in each bucket.
    hits: Vec<f64>,
    /// Weight of all references (first references included: they miss at any size).
    total: f64,
    /// Sampled references seen.
    samples: u64,
}

impl MissRatioCurve {
    /// The estimated hit rate (0 to 1) of an LRU cache of `capacity` rows over the stream
    /// seen; 0 before any sampled reference.
    pub fn hit_rate(&self, capacity: u64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        // A reference hits in a cache of c rows when fewer than c distinct rows were used
        // since its last use: its distance d < c. Whole buckets below c, and the bucket
        // holding c in proportion.
        let full = (capacity / self.bucket_rows) as usize;
        let mut hit: f64 = self.hits.iter().take(full).sum();
        if let Some(&part) = self.hits.get(full) {
            let frac = (capacity % self.bucket_rows) as f64 / self.bucket_rows as f64;
            hit += part * frac;
        }
        (hit / self.total).clamp(0.0, 1.0)
    }

    /// The curve at `points` capacities spread evenly up to `max_rows`: `(rows, hit
    /// rate)`.
    pub fn points(&self, max_rows: u64, points: usize) -> Vec<(u64, f64)> {
        (1..=points as u64)
            .map(|k| {
                let c = max_rows * k / points as u64;
                (c, self.hit_rate(c))
            })
            .collect()
    }

    /// Sampled references the curve rests on (few mean a rough curve).
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

/// Fenwick tree over reference times: 1 at the time of each tracked id's last reference.
struct Marks {
    tree: Vec<i32>,
    live: i64,
}

impl Marks {
    fn new(n: usize) -> Self {
        Self {
            tree: vec![0; n + 1],
            live: 0,
        }
    }

    fn add(&mut self, t: usize, v: i32) {
        let mut i = t + 1;
        while i < self.tree.len() {
            self.tree[i] += v;
            i += i & i.wrapping_neg();
        }
        self.live += i64::from(v);
    }

    /// Marks at times `<= t`.
    fn upto(&self, t: usize) -> i64 {
        let (mut i, mut s) = (t + 1, 0i64);
        while i > 0 {
            s += i64::from(self.tree[i]);
            i -= i & i.wrapping_neg();
        }
        s
    }
}

/// The online estimator (see the module's description).
pub(crate) struct Shards {
    /// The sampling threshold to start from.
    start: u64,
    threshold: u64,
    max_tracked: usize,
    /// Each tracked id's last reference time.
    last: HashMap<u32, usize>,
    /// Tracked ids by hash, largest first (the next to leave when the threshold drops).
    by_hash: BinaryHeap<(u64, u32)>,
    marks: Marks,
    now: usize,
    /// The batch's sampled ids: (id, position) (scratch).
    refs: Vec<(u32, u32)>,
    curve: MissRatioCurve,
}

/// `id` hashed into `0..MODULUS`: Fibonacci hashing (one multiply: every id of every
/// batch is hashed on the cache's own thread, so it must cost about nothing).
fn hash(id: u32) -> u64 {
    u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 24)
}

impl Shards {
    /// Tracks at most `max_tracked` ids, starting at sampling rate `rate` (0 to 1], with
    /// distances kept in buckets of `bucket_rows` rows up to `max_rows`.
    pub(crate) fn new(rate: f64, max_tracked: usize, max_rows: u64, bucket_rows: u64) -> Self {
        let bucket_rows = bucket_rows.max(1);
        let max_tracked = max_tracked.max(16);
        let threshold = ((rate.clamp(1e-6, 1.0) * MODULUS as f64) as u64).max(1);
        Self {
            start: threshold,
            threshold,
            max_tracked,
            last: HashMap::with_capacity(max_tracked + 1),
            by_hash: BinaryHeap::with_capacity(max_tracked + 1),
            marks: Marks::new(4 * max_tracked),
            now: 0,
            refs: Vec::new(),
            curve: MissRatioCurve {
                bucket_rows,
                hits: vec![0.0; max_rows.div_ceil(bucket_rows).max(1) as usize],
                total: 0.0,
                samples: 0,
            },
        }
    }

    /// A cache's estimator over a table of `rows` rows: every id sampled to start, the
    /// rate falling as needed to track 16,384 ids at most, distances in 4,096 buckets over
    /// the table.
    pub(crate) fn for_table(rows: usize) -> Self {
        let rows = rows as u64;
        Self::new(1.0, 16_384, rows, rows.div_ceil(4_096))
    }

    /// A new estimator with this one's settings, nothing seen.
    pub(crate) fn emptied(&self) -> Self {
        let c = &self.curve;
        let max_rows = c.hits.len() as u64 * c.bucket_rows;
        let rate = self.start as f64 / MODULUS as f64;
        Self::new(rate, self.max_tracked, max_rows, c.bucket_rows)
    }

    /// The curve so far.
    pub(crate) fn curve(&self) -> &MissRatioCurve {
        &self.curve
    }

    /// Host bytes held.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        (self.marks.tree.len() * 4 + self.curve.hits.len() * 8) as u64
            + self.last.capacity() as u64 * 16
            + self.by_hash.capacity() as u64 * 16
    }

    /// One batch's ids (a repeat within the batch is not a reference). Every distance is
    /// taken as the batch arrived, before any of its references moves an id to the top:
    /// the cache serves a batch from what was resident then (its own rows are pinned, not
    /// competing), so the batch's references do not push each other out.
    pub(crate) fn batch(&mut self, ids: &[u32]) {
        let mut refs = std::mem::take(&mut self.refs);
        refs.clear();
        let threshold = self.threshold;
        refs.extend(
            ids.iter()
                .enumerate()
                .filter(|&(_, &id)| hash(id) < threshold)
                .map(|(p, &id)| (id, p as u32)),
        );
        // each id once, at its first position; then in batch order, the order in which
        // the batch leaves its rows most recently used
        refs.sort_unstable();
        refs.dedup_by_key(|&mut (id, _)| id);
        refs.sort_unstable_by_key(|&(_, p)| p);
        let weight = 1.0 / self.rate();
        for &(id, _) in &refs {
            self.curve.total += weight;
            self.curve.samples += 1;
            if let Some(&prev) = self.last.get(&id) {
                // distinct sampled ids referenced after prev (all before this batch)
                let d = (self.marks.live - self.marks.upto(prev)).max(0);
                let scaled = d as f64 / self.rate();
                let b = (scaled / self.curve.bucket_rows as f64) as usize;
                if let Some(slot) = self.curve.hits.get_mut(b) {
                    *slot += weight;
                }
            }
        }
        for &(id, _) in &refs {
            // (The threshold may drop during a batch with more sampled ids than are
            // tracked: its ids above the new one are no longer tracked.)
            let h = hash(id);
            if h < self.threshold {
                self.touch(id, h);
            }
        }
        self.refs = refs;
    }

    fn rate(&self) -> f64 {
        self.threshold as f64 / MODULUS as f64
    }

    /// `id` (hash `h`) referenced now: its mark moves to the top.
    fn touch(&mut self, id: u32, h: u64) {
        if self.now == self.marks.tree.len() - 1 {
            self.compact();
        }
        match self.last.insert(id, self.now) {
            Some(prev) => self.marks.add(prev, -1),
            None => self.by_hash.push((h, id)),
        }
        self.marks.add(self.now, 1);
        self.now += 1;
        while self.last.len() > self.max_tracked {
            self.lower_threshold();
        }
    }

    /// The tracked id of the largest hash leaves, and the threshold drops to its hash.
    fn lower_threshold(&mut self) {
        let Some((h, id)) = self.by_hash.pop() else {
            return;
        };
        self.threshold = h.max(1);
        if let Some(t) = self.last.remove(&id) {
            self.marks.add(t, -1);
        }
        // Others of the same hash leave too (the threshold excludes them now).
        while let Some(&(h2, id2)) = self.by_hash.peek() {
            if h2 < self.threshold {
                break;
            }
            self.by_hash.pop();
            if let Some(t) = self.last.remove(&id2) {
                self.marks.add(t, -1);
            }
        }
    }

    /// Renumbers the tracked ids' last references 0.. in order (times ran out).
    fn compact(&mut self) {
        let mut live: Vec<(usize, u32)> = self.last.iter().map(|(&id, &t)| (t, id)).collect();
        live.sort_unstable();
        self.marks = Marks::new(self.marks.tree.len() - 1);
        for (t, &(_, id)) in live.iter().enumerate() {
            self.last.insert(id, t);
            self.marks.add(t, 1);
        }
        self.now = live.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotrow_workloads::{Rng, ZipfIds};

    fn lru_hit_rate(batches: &[Vec<u32>], cap: usize) -> f64 {
        let (hits, refs) = crate::reference::batch_lru_hits(batches, cap);
        hits as f64 / refs as f64
    }

    fn distinct_batches(rows: usize, n: usize, batch: usize, seed: u64) -> Vec<Vec<u32>> {
        let zipf = ZipfIds::new(rows, 1.05, seed);
        let mut rng = Rng::new(seed + 1);
        (0..n)
            .map(|_| {
                let mut ids = zipf.batch(batch, &mut rng);
                let mut seen = std::collections::HashSet::new();
                ids.retain(|&id| seen.insert(id));
                ids
            })
            .collect()
    }

    #[test]
    fn every_id_sampled_gives_the_exact_lru_curve() {
        let batches = distinct_batches(5_000, 60, 400, 11);
        let mut s = Shards::new(1.0, 1 << 20, 5_000, 1);
        for b in &batches {
            s.batch(b);
        }
        for cap in [10usize, 100, 400, 1_000, 4_000] {
            let want = lru_hit_rate(&batches, cap);
            let got = s.curve().hit_rate(cap as u64);
            assert!((got - want).abs() < 1e-9, "capacity {cap}: {got} vs {want}");
        }
    }

    #[test]
    fn a_sampled_fixed_size_curve_is_within_two_points() {
        let rows = 200_000;
        let batches = distinct_batches(rows, 100, 8_192, 5);
        // 4,096 tracked ids at most: the threshold falls well below the starting rate
        let mut s = Shards::new(0.1, 4_096, rows as u64, 100);
        for b in &batches {
            s.batch(b);
        }
        assert!(s.rate() < 0.1, "the threshold never dropped: {}", s.rate());
        assert!(s.last.len() <= 4_096);
        for frac in [0.01, 0.05, 0.1, 0.2] {
            let cap = (rows as f64 * frac) as usize;
            let want = lru_hit_rate(&batches, cap);
            let got = s.curve().hit_rate(cap as u64);
            assert!(
                (got - want).abs() < 0.02,
                "{frac}: estimated {got:.4}, exact LRU {want:.4}"
            );
        }
        assert!(s.bytes() < 1 << 20, "{} bytes", s.bytes());
    }

    #[test]
    fn a_repeat_within_a_batch_is_not_a_reference() {
        let batches = distinct_batches(2_000, 50, 300, 3);
        let (mut once, mut twice) = (
            Shards::new(1.0, 1 << 16, 2_000, 1),
            Shards::new(1.0, 64, 2_000, 1),
        );
        // (`twice` tracks 64 ids: its times are renumbered mid-batch too)
        let mut plain = Shards::new(1.0, 64, 2_000, 1);
        for b in &batches {
            let doubled: Vec<u32> = b.iter().chain(b.iter().rev()).copied().collect();
            once.batch(&doubled);
            twice.batch(&doubled);
            plain.batch(b);
        }
        let want = lru_hit_rate(&batches, 400);
        assert!((once.curve().hit_rate(400) - want).abs() < 1e-9);
        assert_eq!(twice.curve(), plain.curve());
    }

    #[test]
    fn times_are_renumbered_when_they_run_out() {
        // every id tracked (300 rows, 300 tracked), 1,200 times, ~28,000 references: the
        // times are renumbered many times and the curve stays exact
        let batches = distinct_batches(300, 400, 100, 9);
        let mut s = Shards::new(1.0, 300, 300, 1);
        for b in &batches {
            s.batch(b);
        }
        assert!(s.curve().samples() > 10 * 1_200, "{}", s.curve().samples());
        for cap in [5usize, 50, 100, 250] {
            let want = lru_hit_rate(&batches, cap);
            let got = s.curve().hit_rate(cap as u64);
            assert!((got - want).abs() < 1e-9, "capacity {cap}: {got} vs {want}");
        }
    }
}

/// Model-checked: on any small trace (repeats within and across batches, any capacity),
/// the estimator with every id tracked equals the exact batch-LRU oracle, and with few ids
/// tracked (the threshold falling mid-stream) it stays a fraction that rises with the
/// capacity and never panics.
#[cfg(test)]
mod model {
    use super::*;
    use proptest::prelude::*;

    fn trace() -> impl Strategy<Value = Vec<Vec<u32>>> {
        prop::collection::vec(prop::collection::vec(0u32..60, 0..25), 1..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn every_id_tracked_is_exact_lru(batches in trace(), cap in 1usize..70) {
            let mut s = Shards::new(1.0, 1 << 12, 64, 1);
            for b in &batches {
                s.batch(b);
            }
            let (hits, refs) = crate::reference::batch_lru_hits(&batches, cap);
            let want = if refs == 0 { 0.0 } else { hits as f64 / refs as f64 };
            prop_assert!((s.curve().hit_rate(cap as u64) - want).abs() < 1e-9);
        }

        #[test]
        fn a_small_estimator_stays_a_rising_fraction(batches in trace(), tracked in 1usize..20) {
            let mut s = Shards::new(1.0, tracked, 64, 1);
            for b in &batches {
                s.batch(b);
            }
            let mut last = 0.0;
            for cap in 0..70u64 {
                let h = s.curve().hit_rate(cap);
                prop_assert!((0.0..=1.0).contains(&h) && h >= last - 1e-12);
                last = h;
            }
        }
    }
}
