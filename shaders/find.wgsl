// find.wgsl: the first phase of a batch served by the GPU (the GPU-driven path): each
// position looks its id up in the GPU's id -> slot array. A resident row's slot is stamped
// with the pass's epoch and its reference bit set (so the eviction phase leaves it alone and
// CLOCK gives it a second chance); a row that is not resident is claimed by the first
// position that reaches it (compare-exchange 0 -> PENDING, so repeats of one id list it
// once) and appended to the miss list. Hits are counted once per distinct slot and batch: the
// stamp's exchange tells the first position of a slot from its repeats, and epochs grow,
// so a stamp from an earlier pass of the same batch is at least the batch's first epoch.
// A row in a transient slot (slot + 1 past the capacity: refused admission by an earlier
// pass) is not resident: it is claimed as a miss, from that value.
//
// With admission (`p.admit`), every distinct id of the batch is counted once in the
// frequency sketch (by the position that claims it, or that finds its slot first this
// batch), a miss of a row refused within the last RESIDENCE passes (found in the
// refused-rows table: admitted then, it would likely still be resident) counts in GHOST,
// and a batch's first hit on a row admission kept (SAVED) in SAVED_HITS (the window's
// tuning weighs the two: evict.wgsl).
//
// Encodings and the work layout: driven_common.wgsl (prepended by the host).
//
// Bindings (group 0):
//   0  p        uniform              DrivenParams
//   1  ids      storage, read        array<u32>: the pass's ids (checked < rows by the host)
//   2  slot_of  storage, read_write  array<atomic<u32>>
//   3  state    storage, read_write  array<atomic<u32>>
//   4  work     storage, read_write  array<atomic<u32>>
//   5  adm      storage, read_write  array<atomic<u32>>: sketch, refused-rows table
//                                    (driven_common.wgsl; a placeholder without admission)
//
// touch: the lookup of a batch just prefetched, served through the prefetch's slot list
// (bound as `ids`: a slot per position; every row resident, nothing having run since):
// each slot stamped by the batch with its reference bit as the prefetch left it, and the
// batch's hits (each of its distinct rows) added to the totals. (The prefetch and its
// lookup are one use of the batch: a row the prefetch loaded has not earned its bit, as
// a row a plain pass loads has not, and a row it found has it already. Setting the bit
// here would give every row loaded once a second chance: ~5% more misses in W2's stream.)
//
// Dispatch: one thread per position, 256-thread workgroups in a (groups_x, y) grid.

@group(0) @binding(0) var<uniform> p: DrivenParams;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> slot_of: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> state: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> work: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> adm: array<atomic<u32>>;

var<workgroup> group_hits: atomic<u32>;
var<workgroup> group_ghosts: atomic<u32>;
var<workgroup> group_saved: atomic<u32>;

// 64-bit counter at (lo, lo + 1): the add that wraps the low word carries (evict.wgsl's
// add64; each shader declares its own `work`, so the two cannot share one function).
fn add64(at: u32, x: u32) {
    let old = atomicAdd(&work[at], x);
    if (old + x < old) {
        atomicAdd(&work[at + 1u], 1u);
    }
}

// One more use of `id` in the sketch: each of its counters, saturating at COUNT_MAX. An
// add undone past the cap (nothing reads the counters during find) keeps the counts
// exactly the CPU twin's whatever the threads' order; a load and then an add let two
// threads take a counter one past it.
fn count_use(id: u32) {
    for (var r = 0u; r < 4u; r++) {
        let at = sketch_at(id, r);
        if (atomicAdd(&adm[at], 1u) >= COUNT_MAX) {
            atomicSub(&adm[at], 1u);
        }
    }
}

// One more miss in the id range (bin) holding `id`: the boundaries are sorted, bin j
// holds ids in [bound[j], bound[j + 1]); its 64-bit count carries on a wrapping add.
fn count_in_bin(id: u32) {
    let bounds = bins_at();
    var lo = 0u;
    var hi = p.bins;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (id >= atomicLoad(&work[bounds + mid])) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let at = bounds + p.bins + 1u + 2u * lo;
    let old = atomicAdd(&work[at], 1u);
    if (old == 0xffffffffu) {
        atomicAdd(&work[at + 1u], 1u);
    }
}

@compute @workgroup_size(256)
fn find(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, lid, p.groups_x);
    if (i == 0u) {
        // The hand moves where the last pass's eviction left it; nothing else reads it
        // during this dispatch.
        atomicStore(&work[HAND], atomicLoad(&work[NEXT_HAND]));
    }
    if (i < p.n) {
        let id = ids[i];
        let v = atomicLoad(&slot_of[id]);
        if (v != 0u && v != PENDING && v <= p.capacity) {
            let old = atomicExchange(&state[p.capacity + v - 1u], p.epoch | REF);
            // A hit counts once per batch: not if an earlier position of this pass, or an
            // earlier pass of this batch, used the slot.
            if ((old & EPOCH) < p.batch_epoch) {
                atomicAdd(&group_hits, 1u);
                if (p.admit != 0u) {
                    count_use(id);
                    if ((old & SAVED) != 0u) {
                        atomicAdd(&group_saved, 1u);
                    }
                }
            }
        } else if (v != PENDING) {
            loop {
                // (weak: it may fail spuriously, so retry until it succeeds or another
                // position has claimed the row)
                let r = atomicCompareExchangeWeak(&slot_of[id], v, PENDING);
                if (r.exchanged) {
                    let k = atomicAdd(&work[MISSES], 1u);
                    atomicStore(&work[miss_ids_at() + k], id);
                    if (p.bins != 0u) {
                        count_in_bin(id);
                    }
                    if (p.admit != 0u) {
                        count_use(id);
                        let gh = ghost_at(id);
                        let recent = p.epoch - atomicLoad(&adm[gh + 1u]) <= atomicLoad(&work[RESIDENCE]);
                        if (atomicLoad(&adm[gh]) == id + 1u && recent) {
                            atomicAdd(&group_ghosts, 1u);
                        }
                    }
                    break;
                }
                if (r.old_value != v) {
                    break;
                }
            }
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        let h = atomicLoad(&group_hits);
        if (h != 0u) {
            atomicAdd(&work[HITS], h);
        }
        let g = atomicLoad(&group_ghosts);
        if (g != 0u) {
            atomicAdd(&work[GHOST], g);
        }
        let s = atomicLoad(&group_saved);
        if (s != 0u) {
            atomicAdd(&work[SAVED_HITS], s);
        }
    }
}

@compute @workgroup_size(256)
fn touch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, lid, p.groups_x);
    if (i < p.n) {
        let s = ids[i];
        if (s < p.capacity) {
            // (a position of a row already stamped by this batch finds its epoch and
            // leaves the word as it is: each distinct row is counted once)
            var old = atomicLoad(&state[p.capacity + s]);
            loop {
                let stamped = (old & ~EPOCH) | p.epoch;
                let r = atomicCompareExchangeWeak(&state[p.capacity + s], old, stamped);
                if (r.exchanged) {
                    break;
                }
                old = r.old_value;
            }
            if ((old & EPOCH) < p.batch_epoch) {
                atomicAdd(&group_hits, 1u);
            }
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        let h = atomicLoad(&group_hits);
        if (h != 0u) {
            add64(T_DISTINCT, h);
            add64(T_HITS, h);
        }
    }
}
