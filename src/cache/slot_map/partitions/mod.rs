//! [`PartitionedSlotMap`]: the slot map split by id into independent partitions that
//! resolve a batch in parallel. Slot resolution is the host's bottleneck (a serial walk
//! with dependent random reads per id); partitions turn it into `P` shorter walks.

use rayon::prelude::*;

mod bits;

use super::{EvictionPolicy, PassPlan, Samples, SlotMap, SHADOW_IDS};
use bits::{count_bits, set_bits};

/// Ids with the same low bits share a partition; each partition owns its own range of
/// slots, its own eviction state and its own [`SlotMap`] over the ids `id >> bits`.
///
/// Behaviour matches a single [`SlotMap`] except that each partition evicts among its own
/// slots (capacity / P each), and a pass ends when any one partition is full; rows that a
/// partition resolved past that point stay resident (they were uploaded with the pass) and
/// are hits in the next pass. With one partition it *is* a single `SlotMap`.
#[derive(Debug)]
pub struct PartitionedSlotMap {
    parts: Vec<SlotMap>,
    /// Each partition's slots in the global numbering.
    base: Vec<Span>,
    /// Slots with the transient ones (past the capacity, [`EvictionPolicy::TinyLfu`]).
    slots: usize,
    bits: u32,
    capacity: usize,
    /// Per-partition plans (local slots and ids) and their misses as global (id, slot),
    /// reused across batches.
    plans: Vec<(PassPlan, Vec<(u32, u32)>)>,
    /// The batch bucketed by partition (a counting sort that keeps batch order within a
    /// partition): position in the batch, and local id, of each entry.
    order: Vec<u32>,
    local: Vec<u32>,
    /// Per (chunk, partition) counts, then write cursors, of the bucketing.
    counts: Vec<usize>,
}

/// A partition's slots in the global numbering: its own slots from `first` (`len` of
/// them), then its transient slots (numbered past every partition's own) from `transient`.
#[derive(Clone, Copy, Debug)]
struct Span {
    first: u32,
    len: u32,
    transient: u32,
}

impl Span {
    #[inline]
    fn global(self, local: u32) -> u32 {
        if local < self.len {
            self.first + local
        } else {
            self.transient + (local - self.len)
        }
    }

    fn local(self, global: u32) -> u32 {
        if global >= self.first && global - self.first < self.len {
            global - self.first
        } else {
            self.len + global.wrapping_sub(self.transient)
        }
    }
}

/// A u32 array written by parallel tasks at disjoint positions (the plan's slots, the
/// buckets of the batch).
#[derive(Clone, Copy)]
struct SlotsOut(*mut u32);

// SAFETY: tasks write disjoint positions of a buffer that outlives them (see `resolve` and
// `bucket`).
unsafe impl Send for SlotsOut {}
unsafe impl Sync for SlotsOut {}

impl SlotsOut {
    /// # Safety
    /// `i` is in bounds and no other thread accesses position `i` concurrently.
    unsafe fn write(self, i: usize, v: u32) {
        unsafe { *self.0.add(i) = v };
    }
}

/// One partition's share of a pass: its index, its map and plan (with its misses as global
/// (id, slot)), and its bucket `B` of the batch.
type PartTask<'a, B> = (
    usize,
    ((&'a mut SlotMap, &'a mut (PassPlan, Vec<(u32, u32)>)), B),
);

/// Runs `task` on every partition's share (in parallel when `parallel`) and returns the
/// results in partition order.
fn run_partitions<'a, B: Send, R: Send>(
    parts: &'a mut [SlotMap],
    plans: &'a mut [(PassPlan, Vec<(u32, u32)>)],
    buckets: Vec<B>,
    parallel: bool,
    task: impl Fn(PartTask<'a, B>) -> R + Sync + Send,
) -> Vec<R> {
    if parallel {
        parts
            .par_iter_mut()
            .zip(plans.par_iter_mut())
            .zip(buckets.into_par_iter())
            .enumerate()
            .map(task)
            .collect()
    } else {
        parts
            .iter_mut()
            .zip(plans.iter_mut())
            .zip(buckets)
            .enumerate()
            .map(task)
            .collect()
    }
}

/// Called by [`PartitionedSlotMap::resolve_with`] with each partition's misses (global id,
/// global slot) as soon as that partition has resolved, possibly from several threads at
/// once.
pub(crate) type OnMisses<'a> = &'a (dyn Fn(&[(u32, u32)]) + Sync);

/// Writes partition `k`'s misses (local ids and slots in `plan`) as global (id, slot)
/// into `global` and hands them to `on_misses`.
fn publish_misses(
    k: usize,
    bits: u32,
    span: Span,
    plan: &PassPlan,
    global: &mut Vec<(u32, u32)>,
    on_misses: OnMisses<'_>,
) {
    global.clear();
    global.extend(
        plan.misses
            .iter()
            .map(|&(l, s)| ((l << bits) | k as u32, span.global(s))),
    );
    on_misses(global);
}

/// Batches shorter than this are resolved partition by partition on the calling thread:
/// below it, handing the partitions to the pool costs about what it saves. A higher
/// threshold helps a 2-core machine and hurts a pipelined stream of 4,096-id batches on a
/// 16-thread host (benches/HISTORY.md has both measurements).
const PARALLEL_MIN_IDS: usize = 4096;

/// One partition's share of [`PartitionedSlotMap::merge_plans`]: its number and first slot,
/// its places in the merged misses and evictions, and its own plan and global misses.
struct MergePart<'a> {
    k: u32,
    base: u32,
    misses: &'a mut [(u32, u32)],
    own: &'a PassPlan,
    global: &'a [(u32, u32)],
    evicted: &'a mut [u32],
    evicted_slots: &'a mut [u32],
}

impl PartitionedSlotMap {
    /// `parts` is rounded down to a power of two and to at most one partition per 1,024
    /// slots (so small caches stay exact).
    pub fn new(rows: usize, capacity: usize, policy: EvictionPolicy, parts: usize) -> Self {
        let max_parts = (capacity / 1024).max(1);
        let p = parts.clamp(1, max_parts);
        let p = 1usize << (usize::BITS - 1 - p.leading_zeros()); // round down to 2^k
        let bits = p.trailing_zeros();
        let mut base = Vec::with_capacity(p);
        let mut maps = Vec::with_capacity(p);
        let (mut next, mut transient) = (0u32, capacity as u32);
        for k in 0..p {
            let cap = capacity / p + usize::from(k < capacity % p);
            let local_rows = (rows >> bits) + usize::from(k < rows & (p - 1));
            base.push(Span {
                first: next,
                len: cap as u32,
                transient,
            });
            next += cap as u32;
            transient += policy.transient_slots(cap) as u32;
            maps.push(if p == 1 {
                SlotMap::new(local_rows.max(1), cap, policy)
            } else {
                // (TinyLFU: the sampled ids shared out, the window tuned over them all)
                SlotMap::partition(local_rows.max(1), cap, policy, (SHADOW_IDS / p).max(16))
            });
        }
        Self {
            parts: maps,
            base,
            slots: transient as usize,
            bits,
            capacity,
            plans: (0..p).map(|_| Default::default()).collect(),
            order: Vec::new(),
            local: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots a pass may name: the capacity, then the transient slots
    /// ([`EvictionPolicy::TinyLfu`]).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Slots in the recency windows ([`EvictionPolicy::TinyLfu`]; else 0).
    pub fn window(&self) -> usize {
        self.parts.iter().map(SlotMap::window).sum()
    }

    /// Number of resident ids.
    pub fn len(&self) -> usize {
        self.parts.iter().map(SlotMap::len).sum()
    }

    /// Whether nothing is resident.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn split(&self, id: u32) -> (usize, u32) {
        ((id & ((1 << self.bits) - 1)) as usize, id >> self.bits)
    }

    /// The slot holding `id`, if resident.
    pub fn slot_of(&self, id: u32) -> Option<u32> {
        let (p, local) = self.split(id);
        self.parts[p].slot_of(local).map(|s| self.base[p].first + s)
    }

    /// Resident ids (partition by partition; within one, as [`SlotMap::resident`]).
    pub fn resident(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.len());
        for (p, m) in self.parts.iter().enumerate() {
            v.extend(
                m.resident()
                    .into_iter()
                    .map(|l| (l << self.bits) | p as u32),
            );
        }
        v
    }

    /// Holds the last pass's rows in every partition ([`SlotMap::hold_last_pass`]).
    pub fn hold_last_pass(&mut self) {
        self.parts.iter_mut().for_each(SlotMap::hold_last_pass);
    }

    /// Ends every partition's hold.
    pub fn release(&mut self) {
        self.parts.iter_mut().for_each(SlotMap::release);
    }

    /// Slots held, over the partitions.
    pub fn held(&self) -> usize {
        self.parts.iter().map(SlotMap::held).sum()
    }

    /// Checks every partition's invariants.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.parts.iter().try_for_each(SlotMap::check_invariants)
    }

    /// Resolves a prefix of `ids` as one pass (see [`SlotMap::resolve`]); `plan` gets global
    /// slots and ids. Returns the number of positions handled.
    pub fn resolve(&mut self, ids: &[u32], plan: &mut PassPlan) -> usize {
        self.resolve_with(ids, plan, &|_| {})
    }

    /// [`PartitionedSlotMap::resolve`], calling `on_misses` with each partition's misses
    /// right after that partition resolved (while others may still be resolving), so the
    /// caller can start copying their rows early.
    pub(crate) fn resolve_with(
        &mut self,
        ids: &[u32],
        plan: &mut PassPlan,
        on_misses: OnMisses<'_>,
    ) -> usize {
        if self.parts.len() == 1 {
            let n = self.parts[0].resolve(ids, plan);
            on_misses(&plan.misses);
            return n;
        }
        let bits = self.bits;
        self.bucket(ids);
        // Every position belongs to exactly one partition, so the partitions write the
        // slots of their own positions straight into the plan, in parallel; positions past
        // the pass's end are cut off afterwards.
        plan.slots.clear();
        plan.slots.resize(ids.len(), 0);
        let out = SlotsOut(plan.slots.as_mut_ptr());
        let base = &self.base;
        let p = self.parts.len();
        // Bucket k is order/local[ends[k - 1]..ends[k]]: the last row of the cursors.
        let ends = &self.counts[self.counts.len() - p..];
        let mut buckets = Vec::with_capacity(p);
        let (mut order, mut local) = (&self.order[..], &self.local[..]);
        let mut at = 0;
        for &end in ends {
            let (o, o_rest) = order.split_at(end - at);
            let (l, l_rest) = local.split_at(end - at);
            buckets.push((o, l));
            (order, local, at) = (o_rest, l_rest, end);
        }
        let run = |(k, ((map, (plan, global)), (order, local))): PartTask<'_, (&[u32], &[u32])>| {
            let done = map.resolve(local, plan);
            // Every miss is uploaded, also those past the pass's end: the partition holds
            // them now.
            publish_misses(k, bits, base[k], plan, global, on_misses);
            for (&pos, &s) in order[..done].iter().zip(&plan.slots) {
                // SAFETY: `pos < ids.len()` (the plan's length), and no other partition
                // writes this position; the plan is not read until every task is done.
                unsafe { out.write(pos as usize, base[k].global(s)) };
            }
            // First position this partition could not serve (ids.len() if none).
            order.get(done).map_or(ids.len(), |&pos| pos as usize)
        };
        let parallel = ids.len() >= PARALLEL_MIN_IDS;
        let stops = run_partitions(&mut self.parts, &mut self.plans, buckets, parallel, run);
        let n = stops.into_iter().min().unwrap_or(ids.len());
        plan.slots.truncate(n);
        self.merge_plans(plan);
        self.tune();
        n
    }

    /// TinyLFU: the partitions' windows tuned as one, on all their samples (each alone has
    /// too few to tell recency from frequency as soon).
    fn tune(&mut self) {
        let mut all = Samples::default();
        for part in &self.parts {
            match part.admission_samples() {
                Some(s) => all += s,
                None => return,
            }
        }
        let (tuning, share) = (all.decide(), all.next_share());
        for part in &mut self.parts {
            part.tune(tuning, share);
        }
    }

    /// Sums the partitions' plans into `plan` (global ids and slots), except slots.
    fn merge_plans(&self, plan: &mut PassPlan) {
        plan.hits = self.plans.iter().map(|(w, _)| w.hits).sum();
        plan.evictions = self.plans.iter().map(|(w, _)| w.evictions).sum();
        plan.refused = self.plans.iter().map(|(w, _)| w.refused).sum();
        plan.transient = self.plans.iter().map(|(w, _)| w.transient).sum();
        let misses: usize = self.plans.iter().map(|(_, g)| g.len()).sum();
        let evicted: usize = self.plans.iter().map(|(w, _)| w.evicted.len()).sum();
        // (Resized, not cleared: every position is written below.)
        plan.misses.resize(misses, (0, 0));
        plan.evicted.resize(evicted, 0);
        plan.evicted_slots.resize(evicted, 0);
        let mut parts = Vec::with_capacity(self.plans.len());
        let (mut m, mut e) = (&mut plan.misses[..], &mut plan.evicted[..]);
        let mut es = &mut plan.evicted_slots[..];
        for (k, (w, global)) in self.plans.iter().enumerate() {
            let (mine, rest) = std::mem::take(&mut m).split_at_mut(global.len());
            m = rest;
            let (gone, rest) = std::mem::take(&mut e).split_at_mut(w.evicted.len());
            e = rest;
            let (held, rest) = std::mem::take(&mut es).split_at_mut(w.evicted.len());
            es = rest;
            parts.push(MergePart {
                k: k as u32,
                base: self.base[k].first,
                misses: mine,
                own: w,
                global,
                evicted: gone,
                evicted_slots: held,
            });
        }
        let bits = self.bits;
        let copy = |p: MergePart<'_>| {
            p.misses.copy_from_slice(p.global);
            for (g, &l) in p.evicted.iter_mut().zip(&p.own.evicted) {
                *g = (l << bits) | p.k;
            }
            for (g, &s) in p.evicted_slots.iter_mut().zip(&p.own.evicted_slots) {
                *g = p.base + s;
            }
        };
        // A W6 step resolved on the GPU merges ~30,000 misses and as many evictions.
        if misses + evicted >= PARALLEL_MIN_IDS {
            parts.into_par_iter().for_each(copy);
        } else {
            parts.into_iter().for_each(copy);
        }
    }

    /// Slots of partition `k`: its first and how many (transient ones aside).
    fn slot_range(&self, k: usize) -> (u32, u32) {
        (self.base[k].first, self.base[k].len)
    }

    /// One pass whose hits the GPU found (resolution on the GPU): `touched` is a bitmap over
    /// the slots (bit `s % 32` of word `s / 32`: slot `s` is read by the pass), `missing` the
    /// ids the GPU found not resident (repeats allowed). Each partition pins and touches its
    /// touched slots, then gives its missing ids slots, calling `on_misses` as
    /// [`PartitionedSlotMap::resolve_with`] does; `plan` gets the misses, hits (distinct
    /// touched slots) and evictions, not the per-position slots.
    ///
    /// Returns `false`, changing nothing, when the pass might not fit: a partition whose
    /// touched slots plus missing ids (counting repeats) pass its capacity, or more than
    /// `max_misses` missing ids. The caller then serves the batch on the host path.
    pub(crate) fn resolve_on_gpu(
        &mut self,
        touched: &[u32],
        missing: &[u32],
        max_misses: usize,
        plan: &mut PassPlan,
        on_misses: OnMisses<'_>,
    ) -> bool {
        if missing.len() > max_misses {
            return false;
        }
        let p = self.parts.len();
        let bits = self.bits;
        let ranges: Vec<(u32, u32)> = (0..p).map(|k| self.slot_range(k)).collect();
        // Each partition's pinned slots counted on its own task (millions of slots), while
        // the missing ids are bucketed: one parallel phase, not two.
        let (pinned, ()) = rayon::join(
            || {
                ranges
                    .par_iter()
                    .map(|&(start, len)| count_bits(touched, start, len))
                    .collect::<Vec<usize>>()
            },
            || self.bucket(missing),
        );
        let ends = &self.counts[self.counts.len() - p..];
        let fits = (0..p).all(|k| {
            let bucket = ends[k] - if k == 0 { 0 } else { ends[k - 1] };
            pinned[k] + bucket <= ranges[k].1 as usize
        });
        if !fits {
            return false;
        }
        let mut buckets = Vec::with_capacity(p);
        let mut local = &self.local[..];
        let mut at = 0;
        for &end in ends {
            let (l, rest) = local.split_at(end - at);
            buckets.push(l);
            (local, at) = (rest, end);
        }
        let base = &self.base;
        let run = |(k, ((map, (plan, global)), local)): PartTask<'_, &[u32]>| {
            let (start, len) = ranges[k];
            let done = map.resolve_touched(set_bits(touched, start, len), local, plan);
            debug_assert_eq!(done, local.len(), "checked to fit");
            publish_misses(k, bits, base[k], plan, global, on_misses);
        };
        let parallel = p > 1 && missing.len() + self.capacity / 32 >= PARALLEL_MIN_IDS;
        run_partitions(&mut self.parts, &mut self.plans, buckets, parallel, run);
        plan.slots.clear();
        self.merge_plans(plan);
        self.tune();
        true
    }

    /// Buckets `ids` by partition into `order` (positions) and `local` (local ids), batch
    /// order kept within each partition: one counting sort, by chunks in parallel for long
    /// batches (each chunk counts its ids per partition, then writes them at its own
    /// offsets), so no partition scans the whole batch. Leaves in the last `P` entries of
    /// `counts` the end of each partition's bucket.
    fn bucket(&mut self, ids: &[u32]) {
        let p = self.parts.len();
        let (bits, mask) = (self.bits, (1u32 << self.bits) - 1);
        let chunks = if ids.len() >= PARALLEL_MIN_IDS {
            rayon::current_num_threads().clamp(1, 16)
        } else {
            1
        };
        let chunk_len = ids.len().div_ceil(chunks).max(1);
        // counts[c * p + k]: ids of partition k in chunk c, then the write cursor.
        self.counts.clear();
        self.counts.resize(chunks * p + p, 0);
        let (counts, ends) = self.counts.split_at_mut(chunks * p);
        let count = |(ids, counts): (&[u32], &mut [usize])| {
            for &id in ids {
                counts[(id & mask) as usize] += 1;
            }
        };
        if chunks > 1 {
            ids.par_chunks(chunk_len)
                .zip(counts.par_chunks_mut(p))
                .for_each(count);
        } else {
            count((ids, &mut counts[..p]));
        }
        // Offsets: partition-major, chunk-minor (keeps batch order inside a partition).
        let mut at = 0;
        for k in 0..p {
            for c in 0..chunks {
                let n = counts[c * p + k];
                counts[c * p + k] = at;
                at += n;
            }
            ends[k] = at;
        }
        self.order.resize(ids.len(), 0);
        self.local.resize(ids.len(), 0);
        let (order, local) = (
            SlotsOut(self.order.as_mut_ptr()),
            SlotsOut(self.local.as_mut_ptr()),
        );
        let scatter = |(c, (ids, cursor)): (usize, (&[u32], &mut [usize]))| {
            for (i, &id) in ids.iter().enumerate() {
                let k = (id & mask) as usize;
                let dst = cursor[k];
                cursor[k] += 1;
                // SAFETY: chunk c owns positions [cursor start, start + its count) of each
                // bucket, disjoint from every other chunk's, all below ids.len().
                unsafe {
                    order.write(dst, (c * chunk_len + i) as u32);
                    local.write(dst, id >> bits);
                }
            }
        };
        if chunks > 1 {
            ids.par_chunks(chunk_len)
                .zip(counts.par_chunks_mut(p))
                .enumerate()
                .for_each(scatter);
        } else {
            scatter((0, (ids, &mut counts[..p])));
        }
    }

    /// Forgets misses (global ids and slots) whose rows could not be uploaded.
    pub fn forget(&mut self, misses: &[(u32, u32)]) {
        for &(id, s) in misses {
            let (p, id, s) = self.local(id, s);
            self.parts[p].forget(&[(id, s)]);
        }
    }

    /// [`SlotMap::restore`] over the partitions (global ids and slots, as a merged
    /// [`PassPlan`] gives them).
    pub fn restore(&mut self, evicted: &[u32], slots: &[u32]) -> usize {
        let mut back = 0;
        for (&id, &s) in evicted.iter().zip(slots) {
            let (p, id, s) = self.local(id, s);
            back += self.parts[p].restore(&[id], &[s]);
        }
        back
    }

    /// The partition that owns global id `id` and global slot `slot`, and both in its own
    /// numbering.
    fn local(&self, id: u32, slot: u32) -> (usize, u32, u32) {
        let (p, id) = self.split(id);
        (p, id, self.base[p].local(slot))
    }
}

#[cfg(test)]
mod tests;
