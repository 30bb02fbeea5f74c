//! [`SlotMap`]: which table row sits in which GPU slot, with least-recently-used eviction
//! at batch granularity, built from flat arrays (no hashing, no allocation per id).

/// Marks "no slot" in `slot_of` and "no id" in `id_of`.
const NONE: u32 = u32::MAX;

/// id -> slot for a fixed number of GPU slots.
///
/// * `slot_of` has one entry per table row (4 bytes a row) so a lookup is one array read;
/// * the slots form an intrusive doubly linked list in recency order (`prev`/`next` arrays):
///   the head is the least recently used slot, the tail the most recent; free slots sit at
///   the head so they are used before anything is evicted;
/// * `last_use` holds the pass number that last touched a slot. All ids of one pass count as
///   used together, and the slots touched by the pass in progress are **pinned**: the pass
///   never evicts them. A slot seen twice in one pass is recognised by its stamp, which is
///   how the slot map also dedups the batch.
///
/// Eviction is exact LRU over passes (ties inside a pass in order of first occurrence); the
/// tests check it against the `lru` crate used as a model.
#[derive(Clone, Debug)]
pub struct SlotMap {
    slot_of: Vec<u32>,
    id_of: Vec<u32>,
    prev: Vec<u32>,
    next: Vec<u32>,
    last_use: Vec<u64>,
    /// Sentinel index of the list (== capacity).
    head_tail: u32,
    pass: u64,
    len: usize,
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
}

impl PassPlan {
    fn clear(&mut self) {
        self.slots.clear();
        self.misses.clear();
        self.hits = 0;
        self.evictions = 0;
    }

    /// Distinct ids of the pass.
    pub fn distinct(&self) -> u64 {
        self.hits + self.misses.len() as u64
    }
}

impl SlotMap {
    /// A map for ids `0..rows` over `capacity` slots (`capacity >= 1`).
    pub fn new(rows: usize, capacity: usize) -> Self {
        assert!(
            capacity >= 1 && capacity < NONE as usize,
            "SlotMap capacity out of range"
        );
        let c = capacity as u32;
        // List order 0, 1, ..., c-1 between the sentinel c at both ends.
        let next = (0..=c).map(|i| if i == c { 0 } else { i + 1 }).collect();
        let prev = (0..=c).map(|i| if i == 0 { c } else { i - 1 }).collect();
        Self {
            slot_of: vec![NONE; rows],
            id_of: vec![NONE; capacity],
            prev,
            next,
            last_use: vec![0; capacity],
            head_tail: c,
            pass: 0,
            len: 0,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.id_of.len()
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
            .filter(|&s| s != NONE)
    }

    /// The id held by `slot`, if any.
    pub fn id_in(&self, slot: u32) -> Option<u32> {
        self.id_of
            .get(slot as usize)
            .copied()
            .filter(|&i| i != NONE)
    }

    /// Resident ids from least to most recently used.
    pub fn lru_order(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.len);
        let mut s = self.next[self.head_tail as usize];
        while s != self.head_tail {
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
    fn push_tail(&mut self, s: u32) {
        let t = self.head_tail;
        let last = self.prev[t as usize];
        self.next[last as usize] = s;
        self.prev[s as usize] = last;
        self.next[s as usize] = t;
        self.prev[t as usize] = s;
    }

    #[inline]
    fn push_head(&mut self, s: u32) {
        let t = self.head_tail;
        let first = self.next[t as usize];
        self.prev[first as usize] = s;
        self.next[s as usize] = first;
        self.prev[s as usize] = t;
        self.next[t as usize] = s;
    }

    /// Resolves a prefix of `ids` (all `< rows()`, checked by the caller) as one pass:
    /// hits are touched, misses get a slot (a free one, else the least recently used one not
    /// pinned by this pass). Stops early when every slot is pinned by this pass, i.e. when
    /// the batch has more distinct ids than there are slots; the caller then serves the rest
    /// in another pass. Returns the number of positions handled (at least 1 unless `ids` is
    /// empty).
    pub fn resolve(&mut self, ids: &[u32], plan: &mut PassPlan) -> usize {
        plan.clear();
        self.pass += 1;
        let pass = self.pass;
        plan.slots.reserve(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            let s = self.slot_of[id as usize];
            if s != NONE {
                if self.last_use[s as usize] != pass {
                    self.last_use[s as usize] = pass;
                    self.unlink(s);
                    self.push_tail(s);
                    plan.hits += 1;
                }
                plan.slots.push(s);
                continue;
            }
            let v = self.next[self.head_tail as usize];
            if self.last_use[v as usize] == pass {
                return i; // every slot is pinned by this pass
            }
            let old = self.id_of[v as usize];
            if old != NONE {
                self.slot_of[old as usize] = NONE;
                plan.evictions += 1;
            } else {
                self.len += 1;
            }
            self.id_of[v as usize] = id;
            self.slot_of[id as usize] = v;
            self.last_use[v as usize] = pass;
            self.unlink(v);
            self.push_tail(v);
            plan.misses.push((id, v));
            plan.slots.push(v);
        }
        ids.len()
    }

    /// Forgets the misses of a pass whose rows could not be uploaded: their slots become
    /// free (at the head of the list) so the map never claims a row the GPU does not hold.
    pub fn forget(&mut self, misses: &[(u32, u32)]) {
        for &(id, s) in misses {
            if self.slot_of[id as usize] == s {
                self.slot_of[id as usize] = NONE;
                self.id_of[s as usize] = NONE;
                self.last_use[s as usize] = 0;
                self.len -= 1;
                self.unlink(s);
                self.push_head(s);
            }
        }
    }

    /// Checks the internal invariants (for tests): the list holds every slot once, ids and
    /// slots map to each other, and no two ids share a slot.
    pub fn check_invariants(&self) -> Result<(), String> {
        let c = self.capacity();
        let mut seen = vec![false; c];
        let mut s = self.next[self.head_tail as usize];
        let mut count = 0;
        while s != self.head_tail {
            if s as usize >= c || seen[s as usize] {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Rng;

    fn seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
    }

    fn batch(rng: &mut Rng, rows: u32, n: usize, hot: &[u32]) -> Vec<u32> {
        (0..n)
            .map(|_| {
                if rng.below(3) > 0 {
                    hot[rng.below(hot.len() as u64) as usize]
                } else {
                    rng.below(rows as u64) as u32
                }
            })
            .collect()
    }

    /// The flat map and the `lru` crate, fed the distinct ids of each batch in order of
    /// first occurrence, agree on what is resident and in which recency order, whenever a
    /// batch fits in the cache (a larger batch splits into passes, which the model lacks).
    #[test]
    fn agrees_with_lru_crate_model() {
        let s = seed();
        eprintln!("seed {s}");
        let mut rng = Rng::new(s);
        for _ in 0..20 {
            let rows = 50 + rng.below(2000) as u32;
            let cap = 1 + rng.below(rows as u64 / 2) as usize;
            let hot: Vec<u32> = (0..1 + cap / 2)
                .map(|_| rng.below(rows as u64) as u32)
                .collect();
            let mut map = SlotMap::new(rows as usize, cap);
            let mut model =
                lru::LruCache::<u32, ()>::new(std::num::NonZeroUsize::new(cap).unwrap());
            let mut plan = PassPlan::default();
            for _ in 0..60 {
                let n = rng.below(3 * cap as u64 + 1) as usize;
                let ids = batch(&mut rng, rows, n, &hot);
                let distinct = crate::CompactBatch::new(&ids);
                if distinct.distinct().len() > cap {
                    continue;
                }
                let done = map.resolve(&ids, &mut plan);
                assert_eq!(done, ids.len());
                let mut model_hits = 0;
                for &id in distinct.distinct() {
                    if model.get(&id).is_some() {
                        model_hits += 1;
                    } else {
                        model.put(id, ());
                    }
                }
                assert_eq!(plan.hits, model_hits, "hits differ (seed {s})");
                let want: Vec<u32> = model.iter().rev().map(|(k, _)| *k).collect();
                assert_eq!(map.lru_order(), want, "recency order differs (seed {s})");
                for (i, &id) in ids.iter().enumerate() {
                    assert_eq!(map.slot_of(id), Some(plan.slots[i]));
                }
                map.check_invariants().unwrap();
            }
        }
    }

    /// Random batches, many bigger than the cache: every pass leaves all its ids resident in
    /// the slots it reported (pinned rows are never lost), no slot holds two ids, and the
    /// passes together cover the batch.
    #[test]
    fn passes_never_lose_pinned_rows() {
        let s = seed() ^ 0xABCD;
        eprintln!("seed {s}");
        let mut rng = Rng::new(s);
        for _ in 0..30 {
            let rows = 20 + rng.below(500) as u32;
            let cap = 1 + rng.below(40) as usize;
            let hot: Vec<u32> = (0..1 + rng.below(60))
                .map(|_| rng.below(rows as u64) as u32)
                .collect();
            let mut map = SlotMap::new(rows as usize, cap);
            let mut plan = PassPlan::default();
            for _ in 0..40 {
                let n = rng.below(200) as usize;
                let ids = batch(&mut rng, rows, n, &hot);
                let mut start = 0;
                while start < ids.len() {
                    let done = map.resolve(&ids[start..], &mut plan);
                    assert!(done >= 1, "a pass must make progress");
                    assert!(plan.distinct() as usize <= cap);
                    let mut seen_slots = std::collections::HashMap::new();
                    for (k, &id) in ids[start..start + done].iter().enumerate() {
                        let slot = plan.slots[k];
                        assert_eq!(
                            map.slot_of(id),
                            Some(slot),
                            "pinned id {id} lost (seed {s})"
                        );
                        assert_eq!(
                            *seen_slots.entry(slot).or_insert(id),
                            id,
                            "two ids in slot {slot}"
                        );
                    }
                    // misses are distinct slots and distinct ids
                    let mut ms: Vec<u32> = plan.misses.iter().map(|m| m.1).collect();
                    ms.sort_unstable();
                    ms.dedup();
                    assert_eq!(ms.len(), plan.misses.len());
                    map.check_invariants().unwrap();
                    start += done;
                }
                if rng.below(10) == 0 && !plan.misses.is_empty() {
                    let misses = plan.misses.clone();
                    map.forget(&misses);
                    map.check_invariants().unwrap();
                    for (id, _) in misses {
                        assert_eq!(map.slot_of(id), None);
                    }
                }
            }
        }
    }
}
