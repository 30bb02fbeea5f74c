//! [`EvictionPolicy::TinyLfu`](super::EvictionPolicy::TinyLfu) inside the slot map:
//! W-TinyLFU over slots, at pass granularity.
//!
//! The slots are split into two CLOCK rings: a small **window** that takes every missed row,
//! and the **main** region. A row the window's hand pushes out asks for a place in the main
//! region: it takes the slot of the main hand's victim if a frequency sketch says it is used
//! more often than that victim, else it is the one evicted (refused). Either way no row
//! moves on the GPU: a ring entry (a slot number) changes rings. When every window slot is
//! pinned by the pass (a batch with more misses than the window has slots) a miss asks the
//! main region itself; refused, it is served from a **transient** slot past the capacity
//! (uploaded and read by this pass, never resident), so no output is ever missing.
//!
//! The window's share is tuned as Caffeine tunes it, against an LRU of the same capacity on
//! the same traffic: a shadow LRU over a spatially hashed sample of the ids (the SHARDS
//! idea: a sample of rate R behaves as an LRU of R x capacity), compared with this map's
//! own hits on the same sampled ids. Where LRU wins (a hot set on the move favours recency)
//! the window doubles toward the whole map; where frequency wins it shrinks by a quarter.
//! A pass whose share of hits (over all its distinct ids) falls under a quarter of the
//! usual is a hot set that moved at once: the sketch is forgotten and the window takes
//! the whole map, a batch before the shadow LRU could tell.
//! The sketch's counters are 4 bits, so the whole policy costs about 10 bytes a slot and
//! nothing per table row.

use std::num::NonZeroUsize;

use lru::LruCache;

use super::{pinned_or_held, PASS_MASK, REF};
use crate::sizing::FrequencySketch;
use crate::util::prefetch;

/// A CLOCK ring over some of the slots.
#[derive(Clone, Debug, Default)]
pub(super) struct Ring {
    pub(super) slots: Vec<u32>,
    hand: usize,
}

impl Ring {
    /// The ring index of the first slot the hand reaches that the pass may evict: not
    /// stamped by the pass (`pass`), not held (`held`, 0 for none), reference bit clear
    /// (a set bit is cleared on the way: its second chance). `None` when every slot is
    /// pinned or held (two rounds clear every bit that can be cleared).
    fn sweep(&mut self, stamp: &mut [u32], pass: u32, held: u32) -> Option<usize> {
        let n = self.slots.len();
        for _ in 0..2 * n {
            let i = self.hand;
            self.hand = if i + 1 == n { 0 } else { i + 1 };
            self.prefetch_stamp(stamp, i);
            let s = self.slots[i] as usize;
            let st = stamp[s];
            if pinned_or_held(st, pass, held) {
                continue;
            }
            if st & REF != 0 {
                stamp[s] = st & PASS_MASK;
                continue;
            }
            return Some(i);
        }
        None
    }

    /// The ring's slots are in no order: the stamp a few steps past ring index `i` is
    /// fetched ahead of the hand (the ring is not empty).
    #[inline]
    fn prefetch_stamp(&self, stamp: &[u32], i: usize) {
        let ahead = self.slots[(i + 8) % self.slots.len()] as usize;
        prefetch(stamp.as_ptr().wrapping_add(ahead));
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Takes the slot at ring index `i` out (the last one moves into its place, where the
    /// hand, if it was there, now points).
    fn take(&mut self, i: usize) -> u32 {
        let s = self.slots.swap_remove(i);
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
        s
    }

    /// Moves the hand past ring index `i`.
    fn pass_by(&mut self, i: usize) {
        self.hand = if i + 1 >= self.slots.len() { 0 } else { i + 1 };
    }

    fn pop(&mut self) -> Option<u32> {
        let s = self.slots.pop();
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
        s
    }
}

/// Where a missed row goes ([`Admission::place`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// This slot (its row, if any, is evicted).
    Slot(u32),
    /// A transient slot (local number, past the capacity): served, not resident.
    Transient(u32),
    /// Every slot is pinned by the pass or held.
    Full,
}

/// Sampled ids: this many out of 2^24 (hash of the local id).
const SAMPLE_SCALE: u64 = 1 << 24;
/// The shadow LRU holds about this many sampled ids (fewer only for small maps, sampled
/// whole): enough that one sample's hit counts are not noise. A partitioned map shares
/// them out among its partitions and tunes them together ([`Samples`]). Fewer samples a
/// large cache too thinly to see a moved hot set within a few batches (a 20% cache of
/// W5's table samples 0.25% of its ids).
pub(super) const SHADOW_IDS: usize = 4096;
/// Sampled references between quick checks for a moved hot set (at most a quarter sample):
/// a check every batch or two whatever the cache's size.
const QUICK_REFS: u64 = 128;

/// The sampled counts the window is tuned by: over the current sample and over its
/// current quarter, [references, this map's hits, the shadow LRU's hits]; and the shadow
/// LRU's capacity (a sample is a quarter of it). Beside them, every distinct id of the
/// last pass, [ids, hits], and the share of hits a pass had lately (per mille, smoothed;
/// the same in every partition). Summed over a partitioned map's partitions, they tune all
/// of them as one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Samples {
    pub(super) period: [u64; 3],
    pub(super) quick: [u64; 3],
    pub(super) shadow_cap: u64,
    pub(super) pass: [u64; 2],
    pub(super) share: u64,
}

impl std::ops::AddAssign for Samples {
    fn add_assign(&mut self, o: Samples) {
        for k in 0..3 {
            self.period[k] += o.period[k];
            self.quick[k] += o.quick[k];
        }
        self.shadow_cap += o.shadow_cap;
        self.pass[0] += o.pass[0];
        self.pass[1] += o.pass[1];
        self.share = self.share.max(o.share);
    }
}

/// What the samples say about the window ([`Samples::decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tuning {
    /// Not enough samples yet (`true`: the quarter is over, start the next).
    Wait(bool),
    /// The hot set moved: forget the counts, the window takes the whole map.
    Moved,
    /// Recency wins: the window doubles, the counts halve.
    Grow,
    /// Frequency wins: the window shrinks by a quarter.
    Shrink,
}

impl Samples {
    /// The last pass's share of hits, per mille (`None` under 64 distinct ids: too few
    /// to tell).
    fn pass_share(&self) -> Option<u64> {
        let [ids, hits] = self.pass;
        (ids >= 64).then(|| hits * 1000 / ids)
    }

    /// The smoothed share once the last pass is counted in.
    pub(super) fn next_share(&self) -> u64 {
        match self.pass_share() {
            Some(s) => self.share - self.share / 4 + s / 4,
            None => self.share,
        }
    }

    /// Once a sample's worth of sampled references came in, the window grows where the
    /// shadow LRU hit more than the map and shrinks otherwise. A quick check
    /// ([`QUICK_REFS`]) in which LRU hit a tenth more than the map (or a sample in which it
    /// hit a sixteenth more) is a hot set that moved: the sketch forgets what was popular
    /// and the window takes the whole map at once (recency rules until frequency wins
    /// again), without waiting for the sample's end: until then the sketch's old counts
    /// keep the new hot rows out, and those batches are where TinyLFU loses to LRU.
    pub(super) fn decide(&self) -> Tuning {
        // A pass whose share of hits fell under a quarter of the usual: the hot set moved
        // at once, seen in the pass itself (the shadow LRU sees it a batch later, once
        // the new rows it took hit there and the map had refused them).
        if self.pass_share().is_some_and(|s| s * 4 < self.share) {
            return Tuning::Moved;
        }
        let period = (self.shadow_cap / 4).max(1);
        let quarter = (period / 4).clamp(1, QUICK_REFS);
        let [q_refs, q_ours, q_lru] = self.quick;
        if q_refs >= quarter && q_lru > q_ours + q_lru / 10 {
            return Tuning::Moved;
        }
        let [refs, ours, lru] = self.period;
        if refs < period {
            return Tuning::Wait(q_refs >= quarter);
        }
        if lru > ours + lru / 16 {
            Tuning::Moved
        } else if lru > ours {
            Tuning::Grow
        } else {
            Tuning::Shrink
        }
    }
}

/// The policy's state beside a [`super::SlotMap`] of `capacity` slots.
#[derive(Clone, Debug)]
pub(super) struct Admission {
    capacity: u32,
    sketch: FrequencySketch,
    window: Ring,
    /// The main region, a segmented CLOCK: rows enter `probation`; one found referenced
    /// there by the hand moves to `protected` (at most 80% of the main region), whose own
    /// hand sends unreferenced rows back. Victims come from probation only.
    probation: Ring,
    protected: Ring,
    window_target: usize,
    transient_slots: u32,
    /// This pass: transient slots handed out, the ids given them (marked in `slot_of`
    /// until the pass ends), and whether either ring had no victim left.
    transient_used: u32,
    pub(super) transients: Vec<u32>,
    window_full: bool,
    main_full: bool,
    /// Rows refused admission to the main region this pass.
    pub(super) refused: u64,
    /// The window's tuning (module docs): which ids are sampled, the shadow LRU, the
    /// counts.
    sample_below: u64,
    shadow: LruCache<u32, ()>,
    samples: Samples,
}

fn sample_hash(id: u32) -> u64 {
    (u64::from(id) ^ 0x5851_f42d).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40
}

impl Admission {
    /// The policy for `capacity` slots (>= 1), with `transient_slots` transient ones, its
    /// shadow LRU holding up to `shadow_ids` sampled ids.
    pub(super) fn new(capacity: usize, transient_slots: usize, shadow_ids: usize) -> Self {
        let window_target = Self::clamp_window(capacity, capacity / 10);
        let c = capacity as u32;
        let w = window_target as u32;
        let shadow_cap = capacity.clamp(1, shadow_ids.max(1));
        let sample_below = (SAMPLE_SCALE * shadow_cap as u64).div_ceil(capacity as u64);
        Self {
            capacity: c,
            sketch: FrequencySketch::new(capacity),
            window: Ring {
                slots: (0..w).collect(),
                hand: 0,
            },
            probation: Ring {
                slots: (w..c).collect(),
                hand: 0,
            },
            protected: Ring::default(),
            window_target,
            transient_slots: transient_slots as u32,
            transient_used: 0,
            transients: Vec::new(),
            window_full: false,
            main_full: false,
            refused: 0,
            sample_below,
            shadow: LruCache::new(NonZeroUsize::new(shadow_cap).expect("at least 1")),
            samples: Samples {
                shadow_cap: shadow_cap as u64,
                ..Samples::default()
            },
        }
    }

    /// The window's size kept in `[max(1, capacity / 100), capacity - 1]` (all of a
    /// one-slot map).
    fn clamp_window(capacity: usize, w: usize) -> usize {
        let lo = (capacity / 100).max(1);
        let hi = capacity.saturating_sub(1).max(1);
        w.clamp(lo.min(hi), hi)
    }

    /// Slots in the window now.
    pub(super) fn window_len(&self) -> usize {
        self.window.len()
    }

    /// Transient slots (past the capacity).
    pub(super) fn transient_slots(&self) -> u32 {
        self.transient_slots
    }

    /// A pass begins: both rings may have victims again, no transient slot is used.
    pub(super) fn begin_pass(&mut self) {
        self.window_full = false;
        self.main_full = false;
        self.transient_used = 0;
        self.refused = 0;
    }

    /// A hold ended mid-pass: its slots may be victims again.
    pub(super) fn unblock(&mut self) {
        self.window_full = false;
        self.main_full = false;
    }

    /// Fetches `id`'s sketch block ahead of [`Admission::seen`].
    #[inline]
    pub(super) fn prefetch(&self, id: u32) {
        self.sketch.prefetch(id);
    }

    /// One distinct id of a pass, a hit or not: counted in the sketch and, if sampled, in
    /// the comparison with the shadow LRU.
    #[inline]
    pub(super) fn seen(&mut self, id: u32, hit: bool) {
        self.sketch.increment(id);
        self.samples.pass[0] += 1;
        self.samples.pass[1] += u64::from(hit);
        if sample_hash(id) < self.sample_below {
            let lru = self.shadow.get(&id).is_some();
            if !lru {
                self.shadow.put(id, ());
            }
            let add = [1, u64::from(hit), u64::from(lru)];
            let s = &mut self.samples;
            for ((p, q), a) in s.period.iter_mut().zip(&mut s.quick).zip(add) {
                *p += a;
                *q += a;
            }
        }
    }

    fn sweep_window(&mut self, stamp: &mut [u32], pass: u32, held: u32) -> Option<usize> {
        if self.window_full {
            return None;
        }
        let r = self.window.sweep(stamp, pass, held);
        self.window_full = r.is_none();
        r
    }

    /// The probation index of the main region's victim: the first probation slot the hand
    /// reaches that is neither pinned nor held nor referenced; a referenced one moves to
    /// protected on the way (its reference bit kept: it is recent there).
    fn sweep_main(&mut self, stamp: &mut [u32], pass: u32, held: u32) -> Option<usize> {
        if self.main_full {
            return None;
        }
        // Each step advances the hand or moves a slot between the segments (a slot moves
        // to protected with its bit set, and back only once its bit is clear): four rounds
        // of the main region bound a search that finds nothing.
        let mut steps = 4 * (self.probation.len() + self.protected.len()) + 4;
        // Probation slots passed over in a row as pinned or held: a whole round of them
        // means protected must give one up.
        let mut skipped = 0;
        while steps > 0 {
            steps -= 1;
            if skipped >= self.probation.len() {
                if !self.demote(stamp, pass, held) {
                    break;
                }
                skipped = 0;
                continue;
            }
            let i = self.probation.hand;
            self.probation.prefetch_stamp(stamp, i);
            let s = self.probation.slots[i] as usize;
            let st = stamp[s];
            if pinned_or_held(st, pass, held) {
                self.probation.pass_by(i);
                skipped += 1;
                continue;
            }
            if st & REF != 0 {
                let slot = self.probation.take(i);
                self.protected.slots.push(slot);
                if self.protected.len() > self.protected_max() {
                    self.demote(stamp, pass, held);
                }
                continue;
            }
            return Some(i);
        }
        self.main_full = true;
        None
    }

    /// The largest protected segment: 80% of the main region.
    fn protected_max(&self) -> usize {
        (self.probation.len() + self.protected.len()) * 4 / 5
    }

    /// Moves protected's first unreferenced slot that the pass may evict (CLOCK: bits
    /// cleared on the way; pinned and held slots stay) to the end of probation; `false`
    /// when there is none.
    fn demote(&mut self, stamp: &mut [u32], pass: u32, held: u32) -> bool {
        let n = self.protected.len();
        for _ in 0..2 * n {
            let i = self.protected.hand;
            let s = self.protected.slots[i] as usize;
            if pinned_or_held(stamp[s], pass, held) {
                self.protected.pass_by(i);
                continue;
            }
            if stamp[s] & REF != 0 {
                stamp[s] &= PASS_MASK;
                self.protected.pass_by(i);
                continue;
            }
            let slot = self.protected.take(i);
            self.probation.slots.push(slot);
            return true;
        }
        false
    }

    /// Where the missed `id` of pass `pass` goes. `id_of` says which row each slot holds
    /// (`none` for a free one); `stamp` are the slots' stamps; `held` the held pass (0:
    /// none).
    pub(super) fn place(
        &mut self,
        id: u32,
        id_of: &[u32],
        stamp: &mut [u32],
        pass: u32,
        held: u32,
        none: u32,
    ) -> Place {
        if let Some(wi) = self.sweep_window(stamp, pass, held) {
            let ws = self.window.slots[wi];
            let candidate = id_of[ws as usize];
            if candidate == none {
                return Place::Slot(ws);
            }
            // The window's oldest row asks for a place in the main region.
            let Some(mi) = self.sweep_main(stamp, pass, held) else {
                return Place::Slot(ws); // no main victim this pass: it leaves
            };
            let ms = self.probation.slots[mi];
            let victim = id_of[ms as usize];
            if victim == none || self.sketch.frequency(candidate) > self.sketch.frequency(victim) {
                // Admitted: its slot joins probation, the victim's the window (where the
                // new row goes).
                self.window.slots[wi] = ms;
                self.probation.slots[mi] = ws;
                self.probation.pass_by(mi);
                return Place::Slot(ms);
            }
            // (The victim stays first in line until beaten: the hand did not pass it.)
            self.refused += 1;
            return Place::Slot(ws);
        }
        // The window is all this pass's: the row asks the main region itself.
        let Some(mi) = self.sweep_main(stamp, pass, held) else {
            return Place::Full;
        };
        let ms = self.probation.slots[mi];
        let victim = id_of[ms as usize];
        if victim == none
            || self.transient_used == self.transient_slots
            || self.sketch.frequency(id) > self.sketch.frequency(victim)
        {
            self.probation.pass_by(mi);
            return Place::Slot(ms);
        }
        // Refused; the victim stays first in line until beaten.
        self.refused += 1;
        let t = self.capacity + self.transient_used;
        self.transient_used += 1;
        Place::Transient(t)
    }

    /// The counts the window is tuned by.
    pub(super) fn samples(&self) -> Samples {
        self.samples
    }

    /// Between passes, the window tuned by this map's own samples.
    pub(super) fn tune(&mut self) {
        self.apply(self.samples.decide(), self.samples.next_share());
    }

    /// Applies a tuning decision (this map's own, or a partitioned map's over all its
    /// partitions): the counts it was taken on start again; rows stay where they are,
    /// only which ring their slot is in changes.
    pub(super) fn apply(&mut self, tuning: Tuning, share: u64) {
        // (the pass's counts go into the share of hits, whatever the decision)
        self.samples.share = share;
        self.samples.pass = [0; 2];
        let w = self.window_target;
        let target = match tuning {
            Tuning::Wait(quarter_over) => {
                if quarter_over {
                    self.samples.quick = [0; 3];
                }
                return;
            }
            Tuning::Moved => {
                self.sketch.clear();
                self.capacity as usize
            }
            Tuning::Grow => {
                self.sketch.halve();
                w * 2
            }
            Tuning::Shrink => w * 3 / 4,
        };
        self.samples.period = [0; 3];
        self.samples.quick = [0; 3];
        self.window_target = Self::clamp_window(self.capacity as usize, target);
        while self.window.len() > self.window_target {
            let Some(s) = self.window.pop() else { break };
            self.probation.slots.push(s);
        }
        while self.window.len() < self.window_target {
            let Some(s) = self.probation.pop().or_else(|| self.protected.pop()) else {
                break;
            };
            self.window.slots.push(s);
        }
    }

    /// Every slot in exactly one ring (for tests).
    pub(super) fn check(&self) -> Result<(), String> {
        let mut seen = vec![false; self.capacity as usize];
        let rings = [&self.window, &self.probation, &self.protected];
        for &s in rings.iter().flat_map(|r| &r.slots) {
            let Some(b) = seen.get_mut(s as usize) else {
                return Err(format!("ring slot {s} out of range"));
            };
            if *b {
                return Err(format!("slot {s} in the rings twice"));
            }
            *b = true;
        }
        if seen.iter().any(|&b| !b) {
            return Err("a slot in neither ring".into());
        }
        Ok(())
    }
}
