//! [`SlotMap`]: which table row sits in which GPU slot, with eviction at batch (pass)
//! granularity, built from flat arrays (no hashing, no allocation per id).

mod admission;
mod partitions;

use admission::{Admission, Place, Samples, Tuning, SHADOW_IDS};

pub(crate) use partitions::OnMisses;
pub use partitions::PartitionedSlotMap;

use crate::util::prefetch;

/// Marks "no slot" in `slot_of` and "no id" in `id_of`.
const NONE: u32 = u32::MAX;
/// Reference bit of CLOCK, kept in the top bit of a slot's stamp.
const REF: u32 = 1 << 31;
/// Pass numbers live in the low 31 bits of a stamp.
const PASS_MASK: u32 = REF - 1;

/// How many ids ahead [`SlotMap::resolve`] prefetches.
const PREFETCH_AHEAD: usize = 64;

/// Which resident row makes room for a miss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EvictionPolicy {
    /// CLOCK (second chance) over pass stamps: a hit only stamps its slot (one write), and a
    /// hand sweeping the slots in order evicts the first one not used since the hand last
    /// passed. Approximates LRU at a fraction of its cost per id; the default.
    #[default]
    Clock,
    /// Exact least-recently-used over passes, through an intrusive doubly linked list in
    /// flat arrays (every hit relinks its slot: more random memory traffic per id).
    Lru,
    /// TinyLFU admission: a missed row takes a slot only if a frequency sketch says it is
    /// used more often than the row it would evict. On the host path (W-TinyLFU in the
    /// slot map): CLOCK over a small recency window that takes every missed row and a main
    /// region guarded by the sketch, the window's share tuned against LRU on the same
    /// traffic (so a moving hot set does not lose to recency); about 10 bytes a slot on the
    /// host. On the GPU-driven path (in the GPU's CLOCK sweep): a share of each pass's
    /// misses enters freely (the window), the rest asks the sketch (u32 counters on the
    /// GPU, 32-64 bytes a slot of GPU memory), the share tuned by weighing misses of rows
    /// refused lately against hits on rows a refusal kept. Either way a row refused
    /// admission is still served to its batch, from one of `capacity / 8` transient slots
    /// (GPU memory beside the cache, never counted as resident); `CacheStats::refused`
    /// counts them. Pays off on skewed traffic with a small cache (1-10% of the table);
    /// nothing per table row. Not offered for training.
    TinyLfu,
}

impl EvictionPolicy {
    /// Transient slots a map of `capacity` slots under this policy adds past its capacity.
    pub fn transient_slots(self, capacity: usize) -> usize {
        match self {
            EvictionPolicy::TinyLfu => capacity.div_ceil(8),
            _ => 0,
        }
    }
}

/// Whether a slot stamped `st` may not be evicted by pass `pass`: the pass itself uses it,
/// or a prefetch's hold (`held`, 0 for none) keeps it.
#[inline]
fn pinned_or_held(st: u32, pass: u32, held: u32) -> bool {
    let p = st & PASS_MASK;
    p == pass || (held != 0 && p == held)
}

/// id -> slot for a fixed number of GPU slots.
///
/// * `slot_of` has one entry per table row (4 bytes a row), so a lookup is one array read;
/// * `stamp` holds, per slot, the number of the pass that last touched it (and CLOCK's
///   reference bit). All ids of one pass count as used together, and the slots touched by
///   the pass in progress are **pinned**: the pass never evicts them. A slot seen twice in a
///   pass is recognised by its stamp, which is how the map also dedups the batch;
/// * free slots are taken before anything is evicted.
///
/// With [`EvictionPolicy::Lru`] eviction is exact LRU over passes (ties inside a pass in
/// order of first occurrence), checked against the `lru` crate in the tests. With
/// [`EvictionPolicy::Clock`] it may evict a row LRU would keep, and keep one LRU would
/// evict: a row touched after the hand last passed it gets a second chance even if it is
/// older than rows the hand reaches first (the tests bound how far its hit rate may fall).
#[derive(Clone, Debug)]
pub struct SlotMap {
    policy: EvictionPolicy,
    slot_of: Vec<u32>,
    id_of: Vec<u32>,
    stamp: Vec<u32>,
    /// LRU only: recency list, head = least recent; sentinel index = capacity.
    prev: Vec<u32>,
    next: Vec<u32>,
    /// CLOCK only: next slot the hand looks at.
    hand: u32,
    /// TinyLFU only: the window and main rings, the sketch, the window's tuning.
    adm: Option<Box<Admission>>,
    /// TinyLFU: the window tuned by this map's own samples after each pass (else by a
    /// partitioned map, over all its partitions).
    tunes_alone: bool,
    pass: u32,
    len: usize,
    /// A prefetch's hold: the pass whose rows no later pass may evict (0: none), how
    /// many of its slots are still held (not touched by a pass since), and the distinct
    /// ids of the last pass (what a hold of it covers).
    held: u32,
    held_left: usize,
    last_distinct: usize,
}

/// What one pass of [`SlotMap::resolve`] decided.
#[derive(Clone, Debug, Default)]
pub struct PassPlan {
    /// Slot of each position handled by the pass, in batch order.
    pub slots: Vec<u32>,
    /// (id, slot) of each distinct id that was not resident: its row must be uploaded.
    pub misses: Vec<(u32, u32)>,
    /// Distinct ids of the pass that were already resident.
    pub hits: u64,
    /// Resident rows dropped to make room.
    pub evictions: u64,
    /// Distinct ids of the pass refused admission to the main region
    /// ([`EvictionPolicy::TinyLfu`]): served from a transient slot, or evicted from the
    /// window for a row the pass missed.
    pub refused: u64,
    /// Of the misses, those served from a transient slot (past the capacity).
    pub transient: u64,
    /// The ids of those rows (no longer resident), in eviction order.
    pub evicted: Vec<u32>,
    /// The slot each of those rows held (aligned with `evicted`): where
    /// [`SlotMap::restore`] puts them back when the pass's rows never reach the GPU.
    pub evicted_slots: Vec<u32>,
}

impl PassPlan {
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.misses.clear();
        self.hits = 0;
        self.evictions = 0;
        self.refused = 0;
        self.transient = 0;
        self.evicted.clear();
        self.evicted_slots.clear();
    }

    /// Distinct ids of the pass.
    pub fn distinct(&self) -> u64 {
        self.hits + self.misses.len() as u64
    }
}

impl SlotMap {
    /// A map for ids `0..rows` over `capacity` slots (`capacity >= 1`).
    pub fn new(rows: usize, capacity: usize, policy: EvictionPolicy) -> Self {
        Self::with_shadow(rows, capacity, policy, SHADOW_IDS, true)
    }

    /// [`SlotMap::new`], with TinyLFU's shadow LRU holding up to `shadow_ids` sampled ids
    /// and its window tuned by this map alone (`tunes_alone`) or by a partitioned map.
    fn with_shadow(
        rows: usize,
        capacity: usize,
        policy: EvictionPolicy,
        shadow_ids: usize,
        tunes_alone: bool,
    ) -> Self {
        assert!(
            capacity >= 1 && capacity < NONE as usize / 2,
            "SlotMap capacity out of range"
        );
        let c = capacity as u32;
        let (prev, next) = if policy == EvictionPolicy::Lru {
            // List order 0, 1, ..., c-1 between the sentinel c at both ends.
            (
                (0..=c).map(|i| if i == 0 { c } else { i - 1 }).collect(),
                (0..=c).map(|i| if i == c { 0 } else { i + 1 }).collect(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        Self {
            policy,
            slot_of: vec![NONE; rows],
            id_of: vec![NONE; capacity],
            stamp: vec![0; capacity],
            prev,
            next,
            hand: 0,
            adm: (policy == EvictionPolicy::TinyLfu).then(|| {
                let transient = policy.transient_slots(capacity);
                Box::new(Admission::new(capacity, transient, shadow_ids))
            }),
            tunes_alone,
            pass: 0,
            len: 0,
            held: 0,
            held_left: 0,
            last_distinct: 0,
        }
    }

    /// Holds the rows of the last pass: no pass evicts them until [`SlotMap::release`]
    /// (a pass that touches one takes it over as its own), unless a pass needs their room
    /// (every other slot pinned by it): the hold then ends. A prefetch's rows wait so for
    /// the batch that reads them. Replaces an earlier hold.
    pub fn hold_last_pass(&mut self) {
        self.held = self.pass;
        self.held_left = self.last_distinct;
    }

    /// Ends the hold (if any).
    pub fn release(&mut self) {
        self.held = 0;
        self.held_left = 0;
        if let Some(a) = self.adm.as_mut() {
            a.unblock();
        }
    }

    /// Slots held and not yet touched by a pass since the hold.
    pub fn held(&self) -> usize {
        self.held_left
    }

    /// Whether a slot stamped `st` is held.
    #[inline]
    fn is_held(&self, st: u32) -> bool {
        self.held != 0 && st & PASS_MASK == self.held
    }

    /// The eviction policy.
    pub fn policy(&self) -> EvictionPolicy {
        self.policy
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.id_of.len()
    }

    /// Transient slots past the capacity ([`EvictionPolicy::TinyLfu`]; else 0): a pass's
    /// slots are below `capacity() + transient_slots()`.
    pub fn transient_slots(&self) -> usize {
        self.adm
            .as_ref()
            .map_or(0, |a| a.transient_slots() as usize)
    }

    /// Slots in the recency window ([`EvictionPolicy::TinyLfu`]; else 0).
    pub fn window(&self) -> usize {
        self.adm.as_ref().map_or(0, |a| a.window_len())
    }

    /// Number of resident ids.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is resident.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of table rows the map covers.
    pub fn rows(&self) -> usize {
        self.slot_of.len()
    }

    /// The slot holding `id`, if resident.
    pub fn slot_of(&self, id: u32) -> Option<u32> {
        self.slot_of
            .get(id as usize)
            .copied()
            .filter(|&s| (s as usize) < self.id_of.len())
    }

    /// The id held by `slot`, if any.
    pub fn id_in(&self, slot: u32) -> Option<u32> {
        self.id_of
            .get(slot as usize)
            .copied()
            .filter(|&i| i != NONE)
    }

    /// Resident ids: from least to most recently used under LRU; in slot order under CLOCK.
    pub fn resident(&self) -> Vec<u32> {
        if self.policy != EvictionPolicy::Lru {
            return self.id_of.iter().copied().filter(|&i| i != NONE).collect();
        }
        let sentinel = self.capacity() as u32;
        let mut v = Vec::with_capacity(self.len);
        let mut s = self.next[sentinel as usize];
        while s != sentinel {
            if self.id_of[s as usize] != NONE {
                v.push(self.id_of[s as usize]);
            }
            s = self.next[s as usize];
        }
        v
    }

    #[inline]
    fn unlink(&mut self, s: u32) {
        let (p, n) = (self.prev[s as usize], self.next[s as usize]);
        self.next[p as usize] = n;
        self.prev[n as usize] = p;
    }

    #[inline]
    fn link_after(&mut self, at: u32, s: u32) {
        let n = self.next[at as usize];
        self.prev[n as usize] = s;
        self.next[s as usize] = n;
        self.prev[s as usize] = at;
        self.next[at as usize] = s;
    }

    /// Moves `s` to the most-recent end (LRU only).
    #[inline]
    fn touch_lru(&mut self, s: u32) {
        let sentinel = self.capacity() as u32;
        self.unlink(s);
        let last = self.prev[sentinel as usize];
        self.link_after(last, s);
    }

    /// A slot for a miss of the current pass (which has `pinned` distinct ids so far, fewer
    /// than the capacity, so a victim exists).
    #[inline]
    fn victim(&mut self) -> u32 {
        match self.policy {
            EvictionPolicy::Lru => {
                // (Held slots are skipped; the pass's own are at the recent end.)
                let mut s = self.next[self.capacity()];
                while self.is_held(self.stamp[s as usize]) {
                    s = self.next[s as usize];
                }
                s
            }
            EvictionPolicy::Clock | EvictionPolicy::TinyLfu => {
                let c = self.capacity() as u32;
                loop {
                    let s = self.hand;
                    self.hand = if s + 1 == c { 0 } else { s + 1 };
                    let st = self.stamp[s as usize];
                    if pinned_or_held(st, self.pass, self.held) {
                        continue; // pinned by this pass, or held
                    }
                    if st & REF != 0 {
                        self.stamp[s as usize] = st & PASS_MASK; // second chance
                        continue;
                    }
                    // The row a later miss will likely evict: fetch its `slot_of` entry now.
                    let later = self.id_of[((s + 8) % c) as usize];
                    if later != NONE {
                        prefetch(self.slot_of.as_ptr().wrapping_add(later as usize));
                    }
                    return s;
                }
            }
        }
    }

    fn next_pass(&mut self) -> u32 {
        self.pass += 1;
        if self.pass > PASS_MASK {
            // After 2^31 passes: restart numbering; every stamp becomes "long ago".
            for st in &mut self.stamp {
                *st &= REF;
            }
            self.pass = 1;
            self.release();
        }
        if let Some(a) = self.adm.as_mut() {
            a.begin_pass();
        }
        self.pass
    }

    /// Resolves a prefix of `ids` (all `< rows()`, checked by the caller) as one pass:
    /// hits are touched, misses get a slot (a free one, else one evicted by the policy, never
    /// one pinned by this pass). Stops early when every slot is pinned by this pass, i.e.
    /// when the batch has more distinct ids than there are slots; the caller then serves
    /// the rest in another pass. Returns the number of positions handled (at least 1 unless
    /// `ids` is empty).
    pub fn resolve(&mut self, ids: &[u32], plan: &mut PassPlan) -> usize {
        plan.clear();
        let pass = self.next_pass();
        self.resolve_in(pass, ids, plan)
    }

    /// [`SlotMap::resolve`] for a pass whose hits were found elsewhere (on the GPU):
    /// `touched` are the slots the pass reads (each is touched and pinned, and counted as a
    /// hit once), `ids` the ids it found missing (repeats allowed; an id that is in fact
    /// resident is a hit). Under LRU, the touched slots count as used in the order given.
    pub(crate) fn resolve_touched(
        &mut self,
        touched: impl Iterator<Item = u32>,
        ids: &[u32],
        plan: &mut PassPlan,
    ) -> usize {
        plan.clear();
        let pass = self.next_pass();
        let lru = self.policy == EvictionPolicy::Lru;
        for s in touched {
            let st = self.stamp[s as usize];
            if st & PASS_MASK != pass && self.id_of[s as usize] != NONE {
                if self.is_held(st) {
                    self.held_left -= 1;
                }
                self.stamp[s as usize] = pass | REF;
                if lru {
                    self.touch_lru(s);
                }
                if let Some(a) = self.adm.as_mut() {
                    a.seen(self.id_of[s as usize], true);
                }
                plan.hits += 1;
            }
        }
        self.resolve_in(pass, ids, plan)
    }

    fn resolve_in(&mut self, pass: u32, ids: &[u32], plan: &mut PassPlan) -> usize {
        let n = self.resolve_ids(pass, ids, plan);
        self.last_distinct = (plan.distinct() - plan.transient) as usize;
        if let Some(a) = self.adm.as_mut() {
            // Transient rows were marked in `slot_of` only to dedup the pass.
            for id in a.transients.drain(..) {
                self.slot_of[id as usize] = NONE;
            }
            plan.refused = a.refused;
            if self.tunes_alone {
                a.tune();
            }
        }
        n
    }

    /// A partition of a [`PartitionedSlotMap`]: under TinyLFU its shadow LRU holds
    /// `shadow_ids` of the partitioned map's sampled ids, and the partitioned map tunes
    /// its window ([`SlotMap::admission_samples`], [`SlotMap::tune`]).
    fn partition(rows: usize, capacity: usize, policy: EvictionPolicy, shadow_ids: usize) -> Self {
        Self::with_shadow(rows, capacity, policy, shadow_ids, false)
    }

    /// TinyLFU: the counts its window is tuned by.
    fn admission_samples(&self) -> Option<Samples> {
        self.adm.as_ref().map(|a| a.samples())
    }

    /// TinyLFU: applies a tuning decision taken over several maps' samples, and their
    /// share of hits.
    fn tune(&mut self, tuning: Tuning, share: u64) {
        if let Some(a) = self.adm.as_mut() {
            a.apply(tuning, share);
        }
    }

    fn resolve_ids(&mut self, pass: u32, ids: &[u32], plan: &mut PassPlan) -> usize {
        let capacity = self.capacity() as u64;
        let lru = self.policy == EvictionPolicy::Lru;
        plan.slots.reserve(ids.len());
        // Prime the pipeline below: the first PREFETCH_AHEAD ids would otherwise be looked up
        // cold (a partition of a big batch, or a small batch, starts here every pass).
        for &id in &ids[..ids.len().min(PREFETCH_AHEAD)] {
            prefetch(self.slot_of.as_ptr().wrapping_add(id as usize));
        }
        for (i, &id) in ids.iter().enumerate() {
            // Software pipelining over the two dependent random reads of an id: its entry in
            // `slot_of` is fetched PREFETCH_AHEAD ids ahead, its slot's stamp half as far
            // ahead (by then the `slot_of` line has arrived). Resolution is bound by memory
            // latency, and this keeps several misses in flight.
            if let Some(&ahead) = ids.get(i + PREFETCH_AHEAD) {
                prefetch(self.slot_of.as_ptr().wrapping_add(ahead as usize));
                if let Some(a) = self.adm.as_deref() {
                    a.prefetch(ahead);
                }
            }
            if let Some(&half) = ids.get(i + PREFETCH_AHEAD / 2) {
                let hs = self.slot_of[half as usize];
                if hs != NONE {
                    prefetch(self.stamp.as_ptr().wrapping_add(hs as usize));
                }
            }
            let s = self.slot_of[id as usize];
            if s != NONE {
                if s as u64 >= capacity {
                    plan.slots.push(s); // transient, already this pass's
                    continue;
                }
                let st = self.stamp[s as usize];
                if st & PASS_MASK != pass {
                    if self.is_held(st) {
                        self.held_left -= 1;
                    }
                    self.stamp[s as usize] = pass | REF;
                    if lru {
                        self.touch_lru(s);
                    }
                    if let Some(a) = self.adm.as_mut() {
                        a.seen(id, true);
                    }
                    plan.hits += 1;
                }
                plan.slots.push(s);
                continue;
            }
            // (`>=`: the hold's count is an upper bound; never evict a pinned row for it)
            if plan.distinct() - plan.transient + self.held_left as u64 >= capacity {
                if self.held_left > 0 {
                    // The pass needs room the hold keeps: the batch in hand wins over the
                    // one prefetched (which then misses what this evicts).
                    self.release();
                } else {
                    return i; // every slot is pinned by this pass
                }
            }
            let v = match self.adm.is_some() {
                false => self.victim(),
                true => match self.place(id, pass) {
                    Place::Slot(v) => v,
                    Place::Transient(t) => {
                        plan.transient += 1;
                        plan.misses.push((id, t));
                        plan.slots.push(t);
                        continue;
                    }
                    Place::Full => return i, // every slot is pinned by this pass
                },
            };
            let old = self.id_of[v as usize];
            if old != NONE {
                self.slot_of[old as usize] = NONE;
                plan.evictions += 1;
                plan.evicted.push(old);
                plan.evicted_slots.push(v);
            } else {
                self.len += 1;
            }
            self.id_of[v as usize] = id;
            self.slot_of[id as usize] = v;
            // A new row starts without the reference bit: it must be hit again to earn
            // a second chance.
            self.stamp[v as usize] = pass;
            if lru {
                self.touch_lru(v);
            }
            plan.misses.push((id, v));
            plan.slots.push(v);
        }
        ids.len()
    }

    /// TinyLFU (the caller checked `adm`): where the missed `id` goes; a transient slot
    /// is marked in `slot_of` for the rest of the pass. `Place::Full` when every slot is
    /// pinned by the pass (a hold in the way is released first).
    fn place(&mut self, id: u32, pass: u32) -> Place {
        let Some(a) = self.adm.as_mut() else {
            return Place::Full;
        };
        a.seen(id, false);
        let mut place = a.place(id, &self.id_of, &mut self.stamp, pass, self.held, NONE);
        if place == Place::Full && self.held_left > 0 {
            self.release();
            if let Some(a) = self.adm.as_mut() {
                place = a.place(id, &self.id_of, &mut self.stamp, pass, 0, NONE);
            }
        }
        if let (Place::Transient(t), Some(a)) = (place, self.adm.as_mut()) {
            a.transients.push(id);
            self.slot_of[id as usize] = t;
        }
        place
    }

    /// Forgets the misses of a pass whose rows could not be uploaded: their slots become
    /// free (first in line for reuse) so the map never claims a row the GPU does not hold.
    pub fn forget(&mut self, misses: &[(u32, u32)]) {
        for &(id, s) in misses {
            if self.slot_of[id as usize] == s {
                // (a forgotten row is no longer the last pass's, nor held)
                let st = self.stamp[s as usize];
                if st & PASS_MASK == self.pass {
                    self.last_distinct = self.last_distinct.saturating_sub(1);
                }
                if self.is_held(st) {
                    self.held_left = self.held_left.saturating_sub(1);
                }
                self.slot_of[id as usize] = NONE;
                self.id_of[s as usize] = NONE;
                self.stamp[s as usize] = 0;
                self.len -= 1;
                if self.policy == EvictionPolicy::Lru {
                    let sentinel = self.capacity() as u32;
                    self.unlink(s);
                    self.link_after(sentinel, s);
                }
            }
        }
    }

    /// Puts back rows a failed pass evicted (`evicted` ids and the `slots` they held, as in
    /// [`PassPlan`]) after its misses were [`SlotMap::forget`]-ten: only right when the
    /// pass never reached the GPU, whose slots then still hold those rows. A row goes back
    /// if its slot is free and it is not resident elsewhere; returns how many went back.
    /// They come back without a reference bit (CLOCK) and first in line (LRU): they were
    /// this map's victims.
    ///
    /// ```
    /// use hotrow::{EvictionPolicy, PassPlan, SlotMap};
    /// let mut map = SlotMap::new(100, 2, EvictionPolicy::Clock);
    /// let mut plan = PassPlan::default();
    /// map.resolve(&[1, 2], &mut plan); // full
    /// let before = (map.slot_of(1), map.slot_of(2));
    /// map.resolve(&[3], &mut plan); // evicts one of them
    /// assert_eq!(plan.evicted.len(), 1);
    /// // row 3 could not be read: undo the pass
    /// map.forget(&plan.misses);
    /// assert_eq!(map.restore(&plan.evicted, &plan.evicted_slots), 1);
    /// assert_eq!((map.slot_of(1), map.slot_of(2), map.slot_of(3)), (before.0, before.1, None));
    /// ```
    pub fn restore(&mut self, evicted: &[u32], slots: &[u32]) -> usize {
        let mut back = 0;
        for (&id, &s) in evicted.iter().zip(slots) {
            if self.slot_of[id as usize] == NONE && self.id_of[s as usize] == NONE {
                self.slot_of[id as usize] = s;
                self.id_of[s as usize] = id;
                self.stamp[s as usize] = 0;
                self.len += 1;
                back += 1;
            }
        }
        back
    }

    /// Checks the internal invariants (for tests): ids and slots map to each other, no two
    /// ids share a slot, and (LRU) the list holds every slot once.
    pub fn check_invariants(&self) -> Result<(), String> {
        let c = self.capacity();
        if self.policy == EvictionPolicy::Lru {
            let mut seen = vec![false; c];
            let mut s = self.next[c];
            let mut count = 0;
            while s as usize != c {
                if s as usize > c || seen[s as usize] {
                    return Err(format!("slot {s} repeated or out of range in the list"));
                }
                if self.next[self.prev[s as usize] as usize] != s {
                    return Err(format!("broken prev link at slot {s}"));
                }
                seen[s as usize] = true;
                count += 1;
                s = self.next[s as usize];
            }
            if count != c {
                return Err(format!("list holds {count} of {c} slots"));
            }
        }
        let mut resident = 0;
        for (slot, &id) in self.id_of.iter().enumerate() {
            if id != NONE {
                resident += 1;
                if self.slot_of[id as usize] != slot as u32 {
                    return Err(format!("slot {slot} holds id {id}, which maps elsewhere"));
                }
            }
        }
        for (id, &s) in self.slot_of.iter().enumerate() {
            if s != NONE && self.id_of[s as usize] != id as u32 {
                return Err(format!("id {id} maps to slot {s}, which holds another id"));
            }
        }
        if resident != self.len {
            return Err(format!("len {} but {resident} resident", self.len));
        }
        match &self.adm {
            Some(a) => a.check(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
