//! The GPU-driven path's eviction replayed on the CPU (its twin, for the sizing tool and
//! the tests): a pass at a time, CLOCK as evict.wgsl's parallel sweep runs it (victims in
//! sweep order from the hand, slots without the reference bit first, the hand stopping past
//! the last victim) and, with admission (`EvictionPolicy::TinyLfu` on that path), the
//! sketch, the refused-rows table and the window's tuning as find.wgsl and evict.wgsl
//! decide them, with the same hashes and constants.
//!
//! One thing differs by nature: the GPU lists a pass's misses in the order its threads
//! claim them, which varies from run to run; here they are listed in batch order. That
//! order decides which miss lands in which victim slot (so where the sweep meets it later)
//! and, with admission, which misses the window admits freely: the twin's hit rates match
//! the GPU's in distribution (within a point under CLOCK in the tests), not batch by batch.

use crate::ops::driven::{AGE_EVERY, EPOCH, FIRST_WINDOW};

const PENDING: u32 = u32::MAX;
const REF: u32 = 0x8000_0000;
const SAVED: u32 = 0x4000_0000;
const COUNT_MAX: u32 = 15;

fn mix(x0: u32) -> u32 {
    let mut x = x0;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Admission's state (driven_common.wgsl's admission buffer and kept words).
#[derive(Clone, Debug)]
struct Admit {
    sketch: Vec<u32>,
    width: usize,
    /// (id + 1, epoch) of the last row refused at each hash.
    ghost: Vec<(u32, u32)>,
    transient: u32,
    age_every: u64,
    since_age: u64,
    window: u32,
    victims16: u32,
    residence: u32,
    tune: [u32; 3],
    /// Hits per mille of a pass's distinct ids, smoothed; the last pass that saw the hot
    /// set move (its share below a quarter of that), whose next pass forgets the sketch.
    ratio: u32,
    moved: u32,
}

/// A pass's counts the window is tuned by (find.wgsl's HITS, MISSES, GHOST, SAVED_HITS).
#[derive(Clone, Copy, Debug)]
struct PassCounts {
    hits: u32,
    misses: u32,
    ghost: u32,
    saved: u32,
}

impl Admit {
    fn at(&self, id: u32, r: u32) -> usize {
        r as usize * self.width
            + (mix(id.wrapping_mul(4).wrapping_add(r).wrapping_add(0x9e37_79b9)) as usize
                & (self.width - 1))
    }

    fn ghost_at(&self, id: u32) -> usize {
        mix(id ^ 0x5bd1_e995) as usize & (self.ghost.len() - 1)
    }

    fn count_use(&mut self, id: u32) {
        for r in 0..4 {
            let at = self.at(id, r);
            if self.sketch[at] < COUNT_MAX {
                self.sketch[at] += 1;
            }
        }
    }

    fn uses(&self, id: u32) -> u32 {
        (0..4)
            .map(|r| self.sketch[self.at(id, r)])
            .min()
            .unwrap_or(0)
    }

    /// evict.wgsl's `tune_window`: the victims admitted freely this pass (pass `epoch`,
    /// `first` of its batch, with counts `c`).
    fn tune(
        &mut self,
        capacity: u32,
        (epoch, first): (u32, bool),
        c: PassCounts,
        victims: u32,
    ) -> u32 {
        let PassCounts {
            hits,
            misses: m,
            ghost,
            saved,
        } = c;
        let v = self.victims16 - self.victims16 / 4 + victims.min(1 << 26) * 4;
        self.victims16 = v;
        self.residence = capacity / (v / 16).max(1);
        let t = hits + m;
        let mut moved = false;
        if t >= 64 && first {
            let sh = if t >= 4_000_000 { 10 } else { 0 };
            let r = (hits >> sh) * 1000 / (t >> sh).max(1);
            let avg = self.ratio;
            self.ratio = avg - avg / 4 + r / 4;
            moved = r * 4 < avg;
            if moved {
                self.moved = epoch;
            }
        }
        let [tm, tg, ts] = &mut self.tune;
        *tm += m;
        *tg += ghost;
        *ts += saved;
        let sample = (capacity / 8).max(1024);
        if moved || (*tm >= sample / 4 && *tg * 16 > *tm && *tg > 3 * *ts) {
            self.window = 1000;
            self.tune = [0; 3];
        } else if *tm >= sample {
            self.window = if *tg > *ts {
                (self.window * 2).min(1000)
            } else {
                (self.window - self.window / 4).max(10)
            };
            self.tune = [0; 3];
        }
        (victims * self.window).div_ceil(1000)
    }
}

/// The GPU-driven path's cache of `capacity` slots over a table of `rows` rows, replayed
/// (module docs).
#[derive(Clone, Debug)]
pub struct GpuSweep {
    slot_of: Vec<u32>,
    id_of: Vec<u32>,
    stamp: Vec<u32>,
    hand: usize,
    epoch: u32,
    batch_epoch: u32,
    admit: Option<Admit>,
    hits: u64,
    distinct: u64,
    refused: u64,
}

impl GpuSweep {
    /// An empty cache; with `admission`, TinyLFU as the GPU runs it (the sketch sized as
    /// the library sizes it, ignoring the binding limit).
    pub fn new(rows: usize, capacity: usize, admission: bool) -> Self {
        let capacity = capacity.clamp(1, rows.max(1));
        let admit = admission.then(|| {
            let width = (2 * capacity.next_power_of_two()).max(64);
            Admit {
                sketch: vec![0; 4 * width],
                width,
                ghost: vec![(0, 0); width / 4],
                transient: capacity.div_ceil(8) as u32,
                age_every: AGE_EVERY * capacity as u64,
                since_age: 0,
                window: FIRST_WINDOW,
                victims16: 0,
                residence: 0,
                tune: [0; 3],
                ratio: 0,
                moved: 0,
            }
        });
        Self {
            slot_of: vec![0; rows],
            id_of: vec![0; capacity],
            stamp: vec![0; capacity],
            hand: 0,
            epoch: 0,
            batch_epoch: 0,
            admit,
            hits: 0,
            distinct: 0,
            refused: 0,
        }
    }

    /// Serves one batch (ids below `rows`), in passes of at most `capacity` positions as
    /// the library splits it.
    pub fn batch(&mut self, ids: &[u32]) {
        let cap = self.id_of.len();
        for (k, pass) in ids.chunks(cap).enumerate() {
            self.pass(pass, k == 0);
        }
    }

    /// (distinct ids, hits, rows refused admission) counted per pass since construction, as
    /// the GPU counts them.
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.distinct, self.hits, self.refused)
    }

    /// The frequency sketch's counters, as the GPU lays them out (4 rows; empty without
    /// admission): for the tests that hold the GPU to its twin.
    #[doc(hidden)]
    pub fn sketch(&self) -> &[u32] {
        self.admit.as_ref().map_or(&[], |a| &a.sketch)
    }

    /// The resident rows, ascending.
    pub fn resident(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .id_of
            .iter()
            .filter(|&&x| x != 0)
            .map(|&x| x - 1)
            .collect();
        v.sort_unstable();
        v
    }

    fn pass(&mut self, ids: &[u32], batch_start: bool) {
        let cap = self.id_of.len();
        self.epoch += 1;
        if batch_start {
            self.batch_epoch = self.epoch;
        }
        let (epoch, batch_epoch) = (self.epoch, self.batch_epoch);
        if let Some(a) = self.admit.as_mut() {
            if a.moved != 0 && a.moved + 1 == epoch {
                a.sketch.iter_mut().for_each(|c| *c = 0);
            }
            a.since_age += ids.len() as u64;
            if a.since_age >= a.age_every {
                a.since_age = 0;
                a.sketch.iter_mut().for_each(|c| *c >>= 1);
            }
        }
        // find
        let (mut hits, mut ghost, mut saved) = (0u32, 0u32, 0u32);
        let mut misses = Vec::new();
        for &id in ids {
            let v = self.slot_of[id as usize];
            if v != 0 && v != PENDING && v as usize <= cap {
                let old = std::mem::replace(&mut self.stamp[v as usize - 1], epoch | REF);
                if old & EPOCH < batch_epoch {
                    hits += 1;
                    if let Some(a) = self.admit.as_mut() {
                        a.count_use(id);
                        saved += u32::from(old & SAVED != 0);
                    }
                }
            } else if v != PENDING {
                self.slot_of[id as usize] = PENDING;
                misses.push(id);
                if let Some(a) = self.admit.as_mut() {
                    a.count_use(id);
                    let (gid, at) = a.ghost[a.ghost_at(id)];
                    ghost += u32::from(gid == id + 1 && epoch - at <= a.residence);
                }
            }
        }
        // tally and plan: the free slots from the hand, A (no reference bit) then B
        let mut a_slots = Vec::new();
        let mut b_slots = Vec::new();
        for pos in 0..cap {
            let slot = (self.hand + pos) % cap;
            let st = self.stamp[slot];
            if st & EPOCH == epoch {
                continue;
            }
            if st & REF == 0 {
                a_slots.push((pos, slot));
            } else {
                b_slots.push((pos, slot));
            }
        }
        let m = misses.len();
        let victims = m.min(a_slots.len() + b_slots.len());
        self.hits += u64::from(hits);
        self.distinct += u64::from(hits) + m as u64;
        let free = match self.admit.as_mut() {
            Some(a) => {
                let c = PassCounts {
                    hits,
                    misses: m as u32,
                    ghost,
                    saved,
                };
                a.tune(cap as u32, (epoch, batch_start), c, victims as u32) as usize
            }
            None => victims,
        };
        // evict
        let mut spare = 0u32;
        let mut last_pos = None;
        for (v, &id) in misses.iter().enumerate().take(victims) {
            let (pos, slot) = match a_slots.get(v) {
                Some(&a) => a,
                None => b_slots[v - a_slots.len()],
            };
            if v + 1 == victims {
                last_pos = Some(pos);
                self.hand = (slot + 1) % cap;
            }
            let old = self.id_of[slot];
            if let Some(a) = self.admit.as_mut() {
                if v >= free && old != 0 && a.uses(id) <= a.uses(old - 1) {
                    let t = spare;
                    spare += 1;
                    if t < a.transient {
                        self.slot_of[id as usize] = (cap as u32) + t + 1;
                        let g = a.ghost_at(id);
                        a.ghost[g] = (id + 1, epoch);
                        self.stamp[slot] = (self.stamp[slot] & EPOCH) | SAVED;
                        self.refused += 1;
                        continue;
                    }
                }
            }
            if old != 0 {
                self.slot_of[old as usize - 1] = 0;
            }
            self.id_of[slot] = id + 1;
            self.stamp[slot] = epoch;
            self.slot_of[id as usize] = slot as u32 + 1;
        }
        // reference bits the hand passed: every B slot not taken when the sweep went round,
        // else those before the last victim
        if let Some(last) = last_pos {
            let taken_b = victims.saturating_sub(a_slots.len());
            for &(pos, slot) in &b_slots[taken_b..] {
                if victims > a_slots.len() || pos < last {
                    self.stamp[slot] &= !REF;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_keeps_a_repeated_batch_and_evicts_in_sweep_order() {
        let mut c = GpuSweep::new(100, 4, false);
        c.batch(&[1, 2, 1, 3]);
        assert_eq!(c.counts(), (3, 0, 0));
        c.batch(&[3, 2, 1]);
        assert_eq!(c.counts(), (6, 3, 0));
        // from the hand (slot 3): slot 3 is free (A), slots 0-2 hold 1, 2, 3 with
        // reference bits (B): row 7 takes slot 3
        c.batch(&[7]);
        // row 2 is in use; row 7 (no bit: not used since it came) goes before rows 1 and 3
        // (B), whose bits the hand clears on its way
        c.batch(&[8, 2]);
        assert_eq!(c.counts(), (9, 4, 0));
        c.batch(&[1, 3]);
        assert_eq!(c.counts(), (11, 6, 0), "rows 1 and 3 stayed");
        c.batch(&[7]);
        assert_eq!(c.counts(), (12, 6, 0), "row 7 was evicted");
    }

    #[test]
    fn admission_refuses_a_scan_and_keeps_the_hot_rows() {
        // 8 hot rows used every batch, then a scan of fresh rows each batch: CLOCK lets
        // the scan push hot rows out, the sketch keeps them
        let run = |admit| {
            let mut c = GpuSweep::new(100_000, 64, admit);
            let mut next = 1_000u32;
            for _ in 0..200 {
                let mut ids: Vec<u32> = (0..8).collect();
                ids.extend(next..next + 60);
                next += 60;
                c.batch(&ids);
            }
            c.counts()
        };
        let (clock, tiny) = (run(false), run(true));
        assert!(tiny.2 > 0, "nothing refused: {tiny:?}");
        assert!(tiny.1 > clock.1 + 500, "{tiny:?} vs {clock:?}");
    }

    /// TinyLFU's gain over CLOCK on many draws of three small streams: two steady skewed
    /// ones (one with batches longer than the cache, split into passes) and a hot set that
    /// moves. The window's tuning must neither open for good on a steady stream's noise
    /// nor keep a moved hot set out.
    #[test]
    fn admission_gains_on_every_draw_and_follows_a_move() {
        use hotrow_workloads::{Rng, ZipfIds};
        let gain = |rows: usize, cap: usize, stream: &[Vec<u32>]| {
            let rate = |admit| {
                let mut c = GpuSweep::new(rows, cap, admit);
                stream.iter().for_each(|ids| c.batch(ids));
                let (d, h, _) = c.counts();
                h as f64 / d as f64
            };
            rate(true) - rate(false)
        };
        for seed in 0..8u64 {
            let zipf = ZipfIds::new(20_000, 1.05, seed * 7 + 1);
            let mut rng = Rng::new(seed * 13 + 5);
            let split: Vec<Vec<u32>> = (0..60)
                .map(|k| zipf.batch(if k % 13 == 12 { 1_405 } else { 500 }, &mut rng))
                .collect();
            let g = gain(20_000, 700, &split);
            assert!(g > 0.02, "seed {seed}, split batches: {g}");
            let zipf = ZipfIds::new(40_000, 1.05, seed * 7 + 2);
            let steady: Vec<Vec<u32>> = (0..60).map(|_| zipf.batch(1_000, &mut rng)).collect();
            let g = gain(40_000, 800, &steady);
            assert!(g > 0.02, "seed {seed}, steady: {g}");
            let mut moving = Vec::new();
            for phase in 0..6u64 {
                let zipf = ZipfIds::new(40_000, 1.05, (seed * 7 + 3) ^ (phase << 20));
                moving.extend((0..15).map(|_| zipf.batch(1_000, &mut rng)));
            }
            let g = gain(40_000, 2_000, &moving);
            assert!(g > -0.005, "seed {seed}, moving: {g}");
        }
    }
}
