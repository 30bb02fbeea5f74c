// evict.wgsl: the second phase of a batch served by the GPU: victims for the pass's misses,
// chosen by a parallel CLOCK sweep. Positions 0 .. capacity count slots from the hand
// (slot = (hand + position) mod capacity). A slot stamped with this pass's epoch is in use
// by the pass and never chosen; the others are class A (reference bit clear: taken first,
// in position order) or class B (bit set: CLOCK's second chance, taken in position order
// only when the A slots do not suffice, as a hand going round a second time would), or
// class C: stamped by a held prefetch (`p.held`), taken last, only when A and B do not
// suffice (the batch in hand wins over the one prefetched). The reference bits of the B
// slots the hand passed are cleared, and the hand stops after the last victim. With at most `capacity` positions a pass (the host splits longer batches),
// the misses never outnumber the slots not in use, so every miss gets a slot (FAULT counts
// a shortfall, which would be a bug, and the tests check it stays 0).
//
//   tally: per block of BLOCK positions, the A and B counts (into the block lists);
//   plan:  one workgroup: the lists become exclusive prefixes; the victims, the 64-bit
//          totals; the hand stays unless evict moves it;
//   evict: per block, each A/B slot's rank; a slot whose rank falls among the victims
//          takes miss `rank`: its old row leaves slot_of, the miss enters, and the slot is
//          stamped (no reference bit: a new row earns it by a hit, as on the host).
//   age:   (admission) halves every counter of the frequency sketch; the host runs it
//          once every 25 x capacity positions, so old popularity fades (the period, like
//          the thresholds below, chosen with the CPU twin on W2's and W5's traces:
//          benches/HISTORY.md).
//   forget: (admission) zeroes the sketch at the start of the pass after one that saw
//          the hot set move at once (its share of hits below a quarter of the mean).
//
// Admission (`p.admit`, EvictionPolicy::TinyLfu): a miss whose victim slot holds a row
// enters only if the sketch counts it more often than that row, except the first FREE
// misses of the pass (the window: WINDOW per mille of the victims), which enter as under
// CLOCK. A refused miss leaves the victim's row where it is (the hand passes it), takes a
// transient slot past the capacity (served by this pass, never resident) and is noted in
// the refused-rows table, and the row kept is marked SAVED; with no transient slot left
// the miss enters after all. The window is tuned by weighing what refusing cost against
// what it kept (counted by find.wgsl): misses of rows refused lately (GHOST: hits recency
// would have had) against hits on rows kept by a refusal (SAVED_HITS: hits frequency won).
// Over a sample of misses, the window doubles where the first are more, and shrinks by a
// quarter otherwise. A quarter of a sample in which a sixteenth of the misses are rows
// refused lately, and three times the hits refusals kept (a hot set that moved: its new
// rows are refused for the old rows' counts), gives the window every victim at once. The
// test spans passes, not one: a pass's counts are a few dozen, and one noisy pass of a
// steady skewed stream would open the window for good. `sizing::GpuSweep` replays this
// policy on the CPU with the same constants: a change here is a change there.
//
// Encodings and the work layout: driven_common.wgsl (prepended by the host).
//
// Bindings (group 0):
//   0  p        uniform              DrivenParams
//   1  slot_of  storage, read_write  array<atomic<u32>>
//   2  state    storage, read_write  array<atomic<u32>>
//   3  work     storage, read_write  array<atomic<u32>>
//   4  adm      storage, read_write  array<atomic<u32>> (evict, age): sketch, refused rows
//
// Dispatch: tally and evict one workgroup per block (a (groups_x, y) grid); plan one; age
// and forget any grid (they stride over the counters).

const BLOCK: u32 = 1024u;
const PER_THREAD: u32 = 4u;
const NO_CUT: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: DrivenParams;
@group(0) @binding(1) var<storage, read_write> slot_of: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read_write> state: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> work: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> adm: array<atomic<u32>>;

var<workgroup> sa: array<u32, 256>;
var<workgroup> sb: array<u32, 256>;
var<workgroup> sc: array<u32, 256>;
var<workgroup> cut: atomic<u32>;
var<workgroup> group_evicted: atomic<u32>;
var<workgroup> group_refused: atomic<u32>;

// The count-min estimate of `id`'s uses.
fn uses(id: u32) -> u32 {
    var c = atomicLoad(&adm[sketch_at(id, 0u)]);
    for (var r = 1u; r < 4u; r++) {
        c = min(c, atomicLoad(&adm[sketch_at(id, r)]));
    }
    return c;
}

// The window's tuning: once per pass (plan's thread 0), from this pass's misses `m`;
// returns the victims admitted without asking the sketch.
fn tune_window(m: u32, victims: u32) -> u32 {
    // A row admitted now stays about a CLOCK round: the capacity over the victims a pass,
    // smoothed (x16 for precision; a short pass, e.g. the tail of a split batch, moves
    // the mean a little, not the round).
    let v16 = atomicLoad(&work[VICTIMS16]);
    let v = v16 - v16 / 4u + min(victims, 1u << 26u) * 4u;
    atomicStore(&work[VICTIMS16], v);
    atomicStore(&work[RESIDENCE], p.capacity / max(v / 16u, 1u));
    // A batch whose first pass's share of hits falls below a quarter of its smoothed share:
    // the hot set moved at once. Every victim enters, and the next pass first forgets the
    // sketch (`forget`): the old rows' counts would keep the new rows out until they aged.
    // (A batch's later passes hold the rows its first pass did not: their share is lower
    // by nature, so they are not counted.)
    let hits = atomicLoad(&work[HITS]);
    let t = hits + m;
    var moved = false;
    if (t >= 64u && p.epoch == p.batch_epoch) {
        // (scaled down past 4 million so the product stays within 32 bits)
        let sh = select(0u, 10u, t >= 4000000u);
        let r = (hits >> sh) * 1000u / max(t >> sh, 1u);
        let avg = atomicLoad(&work[RATIO]);
        atomicStore(&work[RATIO], avg - avg / 4u + r / 4u);
        moved = r * 4u < avg;
        if (moved) {
            atomicStore(&work[MOVED], p.epoch);
        }
    }
    var window = atomicLoad(&work[WINDOW]);
    let g = atomicLoad(&work[GHOST]);
    let s = atomicLoad(&work[SAVED_HITS]);
    var tm = atomicLoad(&work[TUNE_MISSES]) + m;
    var tg = atomicLoad(&work[TUNE_GHOST]) + g;
    var ts = atomicLoad(&work[TUNE_SAVED]) + s;
    // A sample is an eighth of the capacity in misses (at least 1,024).
    let sample = max(p.capacity / 8u, 1024u);
    if (moved || (tm >= sample / 4u && tg * 16u > tm && tg > 3u * ts)) {
        window = 1000u;
        tm = 0u;
        tg = 0u;
        ts = 0u;
    } else if (tm >= sample) {
        if (tg > ts) {
            window = min(1000u, window * 2u);
        } else {
            window = max(10u, window - window / 4u);
        }
        tm = 0u;
        tg = 0u;
        ts = 0u;
    }
    atomicStore(&work[WINDOW], window);
    atomicStore(&work[TUNE_MISSES], tm);
    atomicStore(&work[TUNE_GHOST], tg);
    atomicStore(&work[TUNE_SAVED], ts);
    return (victims * window + 999u) / 1000u;
}

fn slot_at(pos: u32, hand: u32) -> u32 {
    let s = hand + pos;
    return select(s, s - p.capacity, s >= p.capacity);
}

// 0: in use by this pass; 1: class A; 2: class B; 3: class C (held).
fn class_of(slot: u32) -> u32 {
    let w = atomicLoad(&state[p.capacity + slot]);
    if ((w & EPOCH) == p.epoch) {
        return 0u;
    }
    if (p.held != 0u && (w & EPOCH) == p.held) {
        return 3u;
    }
    return select(1u, 2u, (w & REF) != 0u);
}

// Inclusive scan of sa, sb and sc over the workgroup (each thread has written its own
// entries).
fn scan(lid: u32) {
    // Every entry written before any thread reads its neighbours'.
    workgroupBarrier();
    for (var d = 1u; d < 256u; d = d << 1u) {
        var a = 0u;
        var b = 0u;
        var c = 0u;
        if (lid >= d) {
            a = sa[lid - d];
            b = sb[lid - d];
            c = sc[lid - d];
        }
        workgroupBarrier();
        sa[lid] += a;
        sb[lid] += b;
        sc[lid] += c;
        workgroupBarrier();
    }
}

// The classes of this thread's PER_THREAD positions of block b, and the workgroup's
// inclusive scan of each thread's A and B counts in sa and sb (positions past the slots,
// and blocks past the last, count as in use).
fn classes(b: u32, lid: u32, hand: u32) -> array<u32, 4> {
    var cls = array<u32, 4>(0u, 0u, 0u, 0u);
    var ca = 0u;
    var cb = 0u;
    var cc = 0u;
    if (b < p.blocks) {
        for (var j = 0u; j < PER_THREAD; j++) {
            let pos = b * BLOCK + lid * PER_THREAD + j;
            if (pos < p.capacity) {
                cls[j] = class_of(slot_at(pos, hand));
                ca += u32(cls[j] == 1u);
                cb += u32(cls[j] == 2u);
                cc += u32(cls[j] == 3u);
            }
        }
    }
    sa[lid] = ca;
    sb[lid] = cb;
    sc[lid] = cc;
    scan(lid);
    return cls;
}

// 64-bit counter at (lo, lo + 1): the add that wraps the low word carries.
fn add64(at: u32, x: u32) {
    if (x == 0u) {
        return;
    }
    let old = atomicAdd(&work[at], x);
    if (old + x < old) {
        atomicAdd(&work[at + 1u], 1u);
    }
}

@compute @workgroup_size(256)
fn tally(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.y * p.groups_x + wid.x;
    let hand = atomicLoad(&work[HAND]);
    classes(b, lid, hand);
    if (b < p.blocks && lid == 255u) {
        atomicStore(&work[LISTS + b], sa[255]);
        atomicStore(&work[LISTS + p.blocks + b], sb[255]);
        atomicStore(&work[LISTS + 2u * p.blocks + b], sc[255]);
    }
}

@compute @workgroup_size(256)
fn plan(@builtin(local_invocation_index) lid: u32) {
    var run_a = 0u;
    var run_b = 0u;
    var run_c = 0u;
    for (var base = 0u; base < p.blocks; base += 256u) {
        let b = base + lid;
        var ca = 0u;
        var cb = 0u;
        var cc = 0u;
        if (b < p.blocks) {
            ca = atomicLoad(&work[LISTS + b]);
            cb = atomicLoad(&work[LISTS + p.blocks + b]);
            cc = atomicLoad(&work[LISTS + 2u * p.blocks + b]);
        }
        sa[lid] = ca;
        sb[lid] = cb;
        sc[lid] = cc;
        scan(lid);
        if (b < p.blocks) {
            atomicStore(&work[LISTS + b], run_a + sa[lid] - ca);
            atomicStore(&work[LISTS + p.blocks + b], run_b + sb[lid] - cb);
            atomicStore(&work[LISTS + 2u * p.blocks + b], run_c + sc[lid] - cc);
        }
        run_a += sa[255];
        run_b += sb[255];
        run_c += sc[255];
        workgroupBarrier();
    }
    if (lid != 0u) {
        return;
    }
    let m = atomicLoad(&work[MISSES]);
    let avail = run_a + run_b + run_c;
    let victims = min(m, avail);
    if (m > avail) {
        atomicAdd(&work[FAULT], m - avail);
    }
    atomicStore(&work[VICTIMS], victims);
    if (p.admit != 0u) {
        atomicStore(&work[FREE], tune_window(m, victims));
    }
    atomicStore(&work[TOTAL_A], run_a);
    atomicStore(&work[TOTAL_B], run_b);
    atomicStore(&work[NEXT_HAND], atomicLoad(&work[HAND]));
    let hits = atomicLoad(&work[HITS]);
    add64(T_DISTINCT, hits + m);
    add64(T_HITS, hits);
    add64(T_MISSES, m);
}

@compute @workgroup_size(256)
fn evict(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.y * p.groups_x + wid.x;
    let hand = atomicLoad(&work[HAND]);
    let victims = atomicLoad(&work[VICTIMS]);
    let total_a = atomicLoad(&work[TOTAL_A]);
    let total_ab = total_a + atomicLoad(&work[TOTAL_B]);
    let free = atomicLoad(&work[FREE]);
    if (lid == 0u) {
        atomicStore(&cut, NO_CUT);
        atomicStore(&group_evicted, 0u);
        atomicStore(&group_refused, 0u);
    }
    var cls = classes(b, lid, hand);
    let ca = u32(cls[0] == 1u) + u32(cls[1] == 1u) + u32(cls[2] == 1u) + u32(cls[3] == 1u);
    let cb = u32(cls[0] == 2u) + u32(cls[1] == 2u) + u32(cls[2] == 2u) + u32(cls[3] == 2u);
    let cc = u32(cls[0] == 3u) + u32(cls[1] == 3u) + u32(cls[2] == 3u) + u32(cls[3] == 3u);
    let in_block = b < p.blocks;
    var pa = 0u;
    var pb = 0u;
    var pc = 0u;
    if (in_block) {
        pa = atomicLoad(&work[LISTS + b]);
        pb = atomicLoad(&work[LISTS + p.blocks + b]);
        pc = atomicLoad(&work[LISTS + 2u * p.blocks + b]);
    }
    let block_a = sa[255];
    var ra = pa + sa[lid] - ca;
    var rb = pb + sb[lid] - cb;
    var rc = pc + sc[lid] - cc;
    var taken = array<bool, 4>(false, false, false, false);
    var evicted = 0u;
    var refused = 0u;
    for (var j = 0u; j < PER_THREAD; j++) {
        if (cls[j] == 0u) {
            continue;
        }
        var v = victims;
        if (cls[j] == 1u) {
            v = ra;
            ra += 1u;
        } else if (cls[j] == 2u) {
            if (victims > total_a) {
                v = total_a + rb;
            }
            rb += 1u;
        } else {
            if (victims > total_ab) {
                v = total_ab + rc;
            }
            rc += 1u;
        }
        if (v >= victims) {
            continue;
        }
        taken[j] = true;
        let local = lid * PER_THREAD + j;
        let slot = slot_at(b * BLOCK + local, hand);
        let id = atomicLoad(&work[miss_ids_at() + v]);
        let old = atomicLoad(&state[slot]);
        if (v + 1u == victims) {
            atomicStore(&work[NEXT_HAND], select(slot + 1u, 0u, slot + 1u == p.capacity));
            if (cls[j] == 1u) {
                atomicStore(&cut, local);
            }
        }
        if (p.admit != 0u && v >= free && old != 0u && uses(id) <= uses(old - 1u)) {
            let t = atomicAdd(&work[SPARE], 1u);
            if (t < p.transient) {
                // Refused: served from transient slot t; the victim's row stays (the hand
                // passed it: no second chance left).
                atomicStore(&slot_of[id], p.capacity + t + 1u);
                atomicStore(&work[miss_slots_at() + v], p.capacity + t);
                atomicStore(&work[evicted_at() + v], 0u);
                let gh = ghost_at(id);
                atomicStore(&adm[gh], id + 1u);
                atomicStore(&adm[gh + 1u], p.epoch);
                let stamp = atomicLoad(&state[p.capacity + slot]);
                atomicStore(&state[p.capacity + slot], (stamp & EPOCH) | SAVED);
                refused += 1u;
                continue;
            }
        }
        if (old != 0u) {
            atomicStore(&slot_of[old - 1u], 0u);
            evicted += 1u;
        }
        atomicStore(&state[slot], id + 1u);
        atomicStore(&state[p.capacity + slot], p.epoch);
        atomicStore(&slot_of[id], slot + 1u);
        atomicStore(&work[miss_slots_at() + v], slot);
        atomicStore(&work[evicted_at() + v], old);
    }
    if (evicted != 0u) {
        atomicAdd(&group_evicted, evicted);
    }
    if (refused != 0u) {
        atomicAdd(&group_refused, refused);
    }
    workgroupBarrier();
    // Reference bits the hand passed: every B slot when the sweep went round (victims past
    // the A slots); else those before the last victim.
    let c = atomicLoad(&cut);
    for (var j = 0u; j < PER_THREAD; j++) {
        if (cls[j] != 2u || taken[j] || victims == 0u) {
            continue;
        }
        let local = lid * PER_THREAD + j;
        var passed = victims > total_a || pa + block_a < victims;
        if (!passed && pa < victims && c != NO_CUT) {
            passed = local < c;
        }
        if (passed) {
            atomicAnd(&state[p.capacity + slot_at(b * BLOCK + local, hand)], EPOCH);
        }
    }
    if (lid == 0u) {
        let e = atomicLoad(&group_evicted);
        if (e != 0u) {
            atomicAdd(&work[EVICTED], e);
            add64(T_EVICTIONS, e);
        }
        let r = atomicLoad(&group_refused);
        if (r != 0u) {
            atomicAdd(&work[REFUSED], r);
            add64(T_REFUSED, r);
        }
    }
}

// Zeroes the sketch when the last pass saw the hot set move (MOVED); dispatched before
// every pass of an admission cache (the host cannot see the GPU's decision), it returns at
// once otherwise. (Threads stride over the counters, here and in `age`: any grid serves,
// so the pass's params block does.)
@compute @workgroup_size(256)
fn forget(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let moved = atomicLoad(&work[MOVED]);
    if (moved == 0u || moved + 1u != p.epoch) {
        return;
    }
    let stride = groups.x * groups.y * 256u;
    let counters = 4u * (p.sketch_mask + 1u);
    for (var i = (wid.y * groups.x + wid.x) * 256u + lid; i < counters; i += stride) {
        atomicStore(&adm[i], 0u);
    }
}

// Halves every counter of the sketch (the host schedules it every 25 x capacity positions).
@compute @workgroup_size(256)
fn age(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * groups.y * 256u;
    let counters = 4u * (p.sketch_mask + 1u);
    for (var i = (wid.y * groups.x + wid.x) * 256u + lid; i < counters; i += stride) {
        atomicStore(&adm[i], atomicLoad(&adm[i]) >> 1u);
    }
}
