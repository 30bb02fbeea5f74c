//! Frequency-aware admission, simulated on the CPU (the twin a cache's policy is built
//! against, and what the sizing tool replays beside LRU and the optimum): W-TinyLFU as
//! Caffeine runs it. A small LRU window takes every missed row; a row the window pushes out
//! enters the main region (segmented LRU: probation, then protected once hit again) only if
//! a compact frequency sketch says it is used more often than the row it would evict; a
//! refused row was still served to its batch (uploaded, never resident). The window's
//! share of the cache is tuned by hill climbing on the hit rate, so a moving hot set
//! (which favours recency) does not lose to LRU.
//!
//! Batches: a batch's distinct rows hit when resident as it arrived; its hits are touched
//! first (the cache pins them: the batch's own misses cannot evict them), then its misses
//! are admitted in batch order.

use lru::LruCache;

/// A count-min sketch of 4-bit counters (four per id, one in each of four rows of 64-bit
/// words), halved every `sample` increments so old popularity fades, with a doorkeeper
/// bit set that absorbs an id's first occurrence (most ids are seen once): TinyLFU's
/// frequency estimate in ~1 byte per cached row.
pub struct FrequencySketch {
    table: Vec<u64>,
    mask: usize,
    doorkeeper: Vec<u64>,
    additions: usize,
    sample: usize,
}

fn mix(id: u32, seed: u64) -> u64 {
    let mut x = (u64::from(id) ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

const SEEDS: [u64; 4] = [
    0x97cb_3127_0e3b_4f4d,
    0x5e2f_5f35_43b1_0cc1,
    0x2c1b_3c6d_9d0a_7e13,
    0x7fb5_d329_728e_a185,
];

impl FrequencySketch {
    /// A sketch for a cache of `capacity` rows.
    pub fn new(capacity: usize) -> Self {
        let words = capacity.max(16).next_power_of_two();
        Self {
            table: vec![0; words],
            mask: words - 1,
            doorkeeper: vec![0; (words * 4).div_ceil(64)],
            additions: 0,
            sample: 3 * capacity.max(16),
        }
    }

    fn counter(&self, id: u32, i: usize) -> (usize, u32) {
        let h = mix(id, SEEDS[i]);
        let word = (h as usize) & self.mask;
        // 16 counters a word: this row's counter in this word
        let nibble = ((h >> 40) as u32 & 3) * 4 + i as u32;
        (word, nibble * 4)
    }

    fn door_bit(&self, id: u32) -> (usize, u64) {
        let bits = self.doorkeeper.len() * 64;
        let b = (mix(id, 0x1234_5678_9abc_def1) as usize) % bits;
        (b / 64, 1 << (b % 64))
    }

    /// How often `id` was seen lately (0 to 16).
    pub fn frequency(&self, id: u32) -> u32 {
        let (w, bit) = self.door_bit(id);
        let door = u32::from(self.doorkeeper[w] & bit != 0);
        let count = (0..4)
            .map(|i| {
                let (word, shift) = self.counter(id, i);
                (self.table[word] >> shift) as u32 & 15
            })
            .min()
            .unwrap_or(0);
        count + door
    }

    /// One occurrence of `id`.
    pub fn increment(&mut self, id: u32) {
        let (w, bit) = self.door_bit(id);
        if self.doorkeeper[w] & bit == 0 {
            self.doorkeeper[w] |= bit;
        } else {
            // conservative update: only the smallest counters grow
            let mut counters = [(0usize, 0u32, 0u32); 4];
            for (i, c) in counters.iter_mut().enumerate() {
                let (word, shift) = self.counter(id, i);
                *c = (word, shift, (self.table[word] >> shift) as u32 & 15);
            }
            let min = counters.iter().map(|c| c.2).min().unwrap_or(0);
            if min < 15 {
                for &(word, shift, v) in &counters {
                    if v == min {
                        self.table[word] += 1 << shift;
                    }
                }
            }
        }
        self.additions += 1;
        if self.additions >= self.sample {
            self.halve();
        }
    }

    /// Every counter halved and the doorkeeper cleared: popularity fades.
    fn halve(&mut self) {
        for w in &mut self.table {
            *w = (*w >> 1) & 0x7777_7777_7777_7777;
        }
        self.doorkeeper.iter_mut().for_each(|w| *w = 0);
        self.additions /= 2;
    }
}

/// W-TinyLFU over `capacity` rows, batch by batch (module docs).
pub struct AdmissionSim {
    capacity: usize,
    window: LruCache<u32, ()>,
    probation: LruCache<u32, ()>,
    protected: LruCache<u32, ()>,
    window_max: usize,
    sketch: FrequencySketch,
    /// The window's tuning: an LRU of the same size over the same references (ids only),
    /// and this sample's references, hits, and the shadow LRU's hits.
    shadow: LruCache<u32, ()>,
    sample_refs: u64,
    sample_hits: u64,
    shadow_hits: u64,
    /// Rows refused admission so far.
    pub refused: u64,
}

impl AdmissionSim {
    /// A cache of `capacity` rows (at least 2), the window starting at 10% of it.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2);
        let window_max = (capacity / 10).max(1);
        let unbounded = || LruCache::unbounded();
        Self {
            capacity,
            window: unbounded(),
            probation: unbounded(),
            protected: unbounded(),
            window_max,
            sketch: FrequencySketch::new(capacity),
            shadow: unbounded(),
            sample_refs: 0,
            sample_hits: 0,
            shadow_hits: 0,
            refused: 0,
        }
    }

    fn main_max(&self) -> usize {
        self.capacity - self.window_max
    }

    fn protected_max(&self) -> usize {
        self.main_max() * 4 / 5
    }

    fn resident(&self, id: u32) -> bool {
        self.window.contains(&id) || self.probation.contains(&id) || self.protected.contains(&id)
    }

    /// One batch's ids; returns its hits and references (distinct ids).
    pub fn batch(&mut self, ids: &[u32]) -> (u64, u64) {
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        let distinct: Vec<u32> = ids.iter().copied().filter(|&id| seen.insert(id)).collect();
        let mut hits = 0u64;
        let mut misses = Vec::new();
        for &id in &distinct {
            self.sketch.increment(id);
            if self.resident(id) {
                hits += 1;
                self.touch(id);
            } else {
                misses.push(id);
            }
        }
        for id in misses {
            self.admit(id);
        }
        for &id in &distinct {
            if self.shadow.contains(&id) {
                self.shadow_hits += 1;
            }
        }
        for &id in &distinct {
            self.shadow.put(id, ());
        }
        while self.shadow.len() > self.capacity {
            self.shadow.pop_lru();
        }
        self.sample_refs += distinct.len() as u64;
        self.sample_hits += hits;
        if self.sample_refs >= self.capacity as u64 {
            self.climb();
        }
        (hits, distinct.len() as u64)
    }

    fn touch(&mut self, id: u32) {
        if self.window.get(&id).is_some() || self.protected.get(&id).is_some() {
            return;
        }
        if self.probation.pop(&id).is_some() {
            self.protected.put(id, ());
            while self.protected.len() > self.protected_max() {
                let Some((old, ())) = self.protected.pop_lru() else {
                    break;
                };
                self.probation.put(old, ());
            }
        }
    }

    fn admit(&mut self, id: u32) {
        self.window.put(id, ());
        while self.window.len() > self.window_max {
            let Some((candidate, ())) = self.window.pop_lru() else {
                break;
            };
            self.offer(candidate);
        }
    }

    /// The window's oldest row asks for a place in the main region.
    fn offer(&mut self, candidate: u32) {
        if self.probation.len() + self.protected.len() < self.main_max() {
            self.probation.put(candidate, ());
            return;
        }
        let victim = match self.probation.peek_lru() {
            Some((&v, ())) => v,
            None => match self.protected.peek_lru() {
                Some((&v, ())) => v,
                None => {
                    self.refused += 1;
                    return;
                }
            },
        };
        if self.sketch.frequency(candidate) > self.sketch.frequency(victim) {
            if self.probation.pop(&victim).is_none() {
                self.protected.pop(&victim);
            }
            self.probation.put(candidate, ());
        } else {
            self.refused += 1;
        }
    }

    /// The window's size, tuned once a sample (as many references as the cache has rows)
    /// against the shadow LRU on the same references: where recency wins (a hot set on
    /// the move) the window doubles toward the whole cache (plain LRU); where frequency
    /// wins it shrinks by a quarter toward 1%. Comparing two policies on
    /// the same references, not one policy's rate between samples, is what keeps the
    /// tuning steady while the traffic itself changes.
    fn climb(&mut self) {
        let (ours, lru) = (self.sample_hits, self.shadow_hits);
        self.sample_refs = 0;
        self.sample_hits = 0;
        self.shadow_hits = 0;
        let (lo, hi) = ((self.capacity / 100).max(1), self.capacity - 1);
        let target = if lru > ours {
            self.window_max * 2
        } else {
            self.window_max * 3 / 4
        };
        self.window_max = target.clamp(lo, hi);
        // the regions follow the new split at once
        while self.window.len() > self.window_max {
            let Some((c, ())) = self.window.pop_lru() else {
                break;
            };
            self.offer(c);
        }
        while self.probation.len() + self.protected.len() > self.main_max() {
            let popped = match self.probation.pop_lru() {
                Some(p) => Some(p),
                None => self.protected.pop_lru(),
            };
            if popped.is_none() {
                break;
            }
        }
    }

    /// Rows resident now.
    pub fn len(&self) -> usize {
        self.window.len() + self.probation.len() + self.protected.len()
    }

    /// Whether nothing is resident.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotrow_workloads::{Rng, ZipfIds};

    #[test]
    fn the_sketch_counts_saturates_and_fades() {
        let mut s = FrequencySketch::new(1_000);
        for _ in 0..5 {
            s.increment(7);
        }
        assert_eq!(s.frequency(7), 5, "doorkeeper 1 + 4 counts");
        assert_eq!(s.frequency(8), 0);
        for _ in 0..100 {
            s.increment(9);
        }
        assert_eq!(s.frequency(9), 16, "counters stop at 15");
        s.halve();
        assert_eq!(s.frequency(9), 7);
        assert_eq!(s.frequency(7), 2);
    }

    fn lru_hits(batches: &[Vec<u32>], cap: usize) -> f64 {
        let (hits, refs) = crate::reference::batch_lru_hits(batches, cap);
        hits as f64 / refs as f64
    }

    fn rate(sim: &mut AdmissionSim, batches: &[Vec<u32>]) -> f64 {
        let (mut h, mut r) = (0, 0);
        for b in batches {
            let (bh, br) = sim.batch(b);
            h += bh;
            r += br;
        }
        assert!(sim.len() <= sim.capacity);
        h as f64 / r as f64
    }

    /// A skewed stream with a fixed hot set: admission beats LRU at a small cache; a hot
    /// set that moves every 50 batches (W5): admission stays at least near LRU.
    #[test]
    fn admission_beats_lru_on_skew_and_keeps_up_when_the_hot_set_moves() {
        let rows = 100_000;
        let mut rng = Rng::new(41);
        let zipf = ZipfIds::new(rows, 1.05, 40);
        let batches: Vec<Vec<u32>> = (0..400).map(|_| zipf.batch(1_024, &mut rng)).collect();
        let cap = rows / 20;
        let lru = lru_hits(&batches, cap);
        let tiny = rate(&mut AdmissionSim::new(cap), &batches);
        eprintln!("fixed hot set: {tiny:.4} vs LRU {lru:.4}");
        assert!(
            tiny > lru + 0.02,
            "fixed hot set: {tiny:.4} vs LRU {lru:.4}"
        );
        let moving: Vec<Vec<u32>> = (0..400)
            .map(|k| {
                let z = ZipfIds::new(rows, 1.05, 100 + k / 50);
                z.batch(1_024, &mut rng)
            })
            .collect();
        let lru = lru_hits(&moving, cap);
        let mut sim = AdmissionSim::new(cap);
        let tiny = rate(&mut sim, &moving);
        eprintln!(
            "window {} of {cap}, refused {}",
            sim.window_max, sim.refused
        );
        eprintln!("moving hot set: {tiny:.4} vs LRU {lru:.4}");
        assert!(
            tiny > lru - 0.01,
            "moving hot set: {tiny:.4} vs LRU {lru:.4}"
        );
    }
}
