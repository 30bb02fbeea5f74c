// find.wgsl: the first phase of a batch served by the GPU (the GPU-driven path): each
// position looks its id up in the GPU's id -> slot array. A resident row's slot is stamped
// with the pass's epoch and its reference bit set (so the eviction phase leaves it alone and
// CLOCK gives it a second chance); a row that is not resident is claimed by the first
// position that reaches it (compare-exchange 0 -> PENDING, so repeats of one id list it
// once) and appended to the miss list. Hits are counted once per distinct slot and batch: the
// stamp's exchange tells the first position of a slot from its repeats, and epochs grow,
// so a stamp from an earlier pass of the same batch is at least the batch's first epoch.
//
// Encodings (every buffer starts zeroed, which is the empty cache):
//   slot_of[id]         slot + 1; 0 not resident; PENDING claimed by this pass
//   state[s]            id + 1 of the row in slot s (0: empty)       (evict.wgsl)
//   state[capacity + s] epoch of the last pass that used slot s | REF (bit 31)
//   work                counters and lists shared by the phases (layout below)
//
// Work layout (u32 words): [0, 16) this pass's counters, cleared by the host before the
// pass: MISSES, HITS, EVICTED, VICTIMS, TOTAL_A, FETCH_GX; [16, 32) kept across passes:
// HAND, NEXT_HAND, then the 64-bit totals (lo, hi) of distinct ids, hits, misses,
// evictions, and FAULT; then the eviction phase's block counts (2 * blocks words), the miss
// ids (capacity words) and their slots (capacity words).
//
// Bindings (group 0):
//   0  p        uniform              DrivenParams
//   1  ids      storage, read        array<u32>: the pass's ids (checked < rows by the host)
//   2  slot_of  storage, read_write  array<atomic<u32>>
//   3  state    storage, read_write  array<atomic<u32>>
//   4  work     storage, read_write  array<atomic<u32>>
//
// Dispatch: one thread per position, 256-thread workgroups in a (groups_x, y) grid.

struct DrivenParams {
    n: u32,          // positions of the pass
    groups_x: u32,   // workgroups along x in the dispatch grid
    epoch: u32,      // the pass's epoch, 1 ..= EPOCH
    capacity: u32,   // slots
    blocks: u32,     // eviction blocks: ceil(capacity / BLOCK)
    words: u32,      // Words per row (fetch)
    table_base: u32, // first table row of the bound table shard (fetch)
    table_rows: u32, // rows of the bound table shard (fetch)
    slot_base: u32,  // first slot of the bound slot shard (fetch)
    slot_rows: u32,  // slots of the bound slot shard (fetch)
    max_groups: u32, // the adapter's max workgroups per dimension
    batch_epoch: u32, // the epoch of the batch's first pass
}

const PENDING: u32 = 0xffffffffu;
const REF: u32 = 0x80000000u;
const EPOCH: u32 = 0x7fffffffu;
const MISSES: u32 = 0u;
const HITS: u32 = 1u;
const HAND: u32 = 16u;
const NEXT_HAND: u32 = 17u;
const LISTS: u32 = 32u;

@group(0) @binding(0) var<uniform> p: DrivenParams;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> slot_of: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> state: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> work: array<atomic<u32>>;

var<workgroup> group_hits: atomic<u32>;

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
        if (v != 0u && v != PENDING) {
            let old = atomicExchange(&state[p.capacity + v - 1u], p.epoch | REF);
            // A hit counts once per batch: not if an earlier position of this pass, or an
            // earlier pass of this batch, used the slot.
            if ((old & EPOCH) < p.batch_epoch) {
                atomicAdd(&group_hits, 1u);
            }
        } else if (v == 0u) {
            let miss_ids = LISTS + 2u * p.blocks;
            loop {
                // (weak: it may fail spuriously, so retry until it succeeds or another
                // position has claimed the row)
                let r = atomicCompareExchangeWeak(&slot_of[id], 0u, PENDING);
                if (r.exchanged) {
                    let k = atomicAdd(&work[MISSES], 1u);
                    atomicStore(&work[miss_ids + k], id);
                    break;
                }
                if (r.old_value != 0u) {
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
    }
}
