// driven_common.wgsl: prepended by the host to find.wgsl, evict.wgsl and fetch.wgsl (the
// GPU-driven path): the params block every dispatch of a pass reads, and the layout of the
// work buffer the phases share.
//
// Encodings (every buffer starts zeroed, which is the empty cache):
//   slot_of[id]         slot + 1; 0 not resident; PENDING claimed by this pass; past
//                       `capacity`: a transient slot an earlier pass served the row from
//                       (admission refused it), which is not resident either
//   state[s]            id + 1 of the row in slot s (0: empty)
//   state[capacity + s] epoch of the last pass that used slot s | REF (bit 31) | SAVED
//                       (bit 30: admission kept its row when it refused a miss)
//   state[2 capacity + s] (training caches only) 1 when slot s's row changed since it was
//                       last written back to the table
//
// Work layout (u32 words): [0, 16) this pass's counters, cleared by the host before the
// pass; [16, 48) kept across passes: the hand, then the 64-bit totals (lo, hi) of distinct
// ids, hits, misses and evictions, FAULT, then admission's refused total and tuning; then
// the eviction phase's block counts (3 * blocks words: A, B and held slots), the miss ids
// (capacity words), their slots (capacity words) and the id + 1 of the row each of those
// slots held (0: empty, or nothing evicted: the row was
// refused admission and took a transient slot); then, when misses are counted by
// id range (a table-batched width's tables), the `bins + 1` range boundaries and a 64-bit
// count per range; then, for a training cache, one bit per table row written back to the
// table since the last flush (from word `written_at`).

struct DrivenParams {
    n: u32,           // positions of the pass
    groups_x: u32,    // workgroups along x in the dispatch grid
    epoch: u32,       // the pass's epoch, 1 ..= EPOCH
    capacity: u32,    // slots
    blocks: u32,      // eviction blocks: ceil(capacity / BLOCK)
    words: u32,       // Words per row (fetch)
    table_base: u32,  // first table row of the bound table shard (fetch)
    table_rows: u32,  // rows of the bound table shard (fetch)
    slot_base: u32,   // first slot of the bound slot shard (fetch)
    slot_rows: u32,   // slots of the bound slot shard (fetch)
    bins: u32,        // id ranges whose misses find.wgsl counts (0: none)
    batch_epoch: u32, // the epoch of the batch's first pass
    written_at: u32,  // word of the written-rows bitmap (training caches)
    held: u32,        // a prefetch's epoch whose slots are victims only when no other is left (0: none)
    shard_rows: u32,  // rows of every table shard but the last (fetch)
    group_rows: u32,  // rows of the table shards fetch binds, from table_base (fetch)
    admit: u32,       // 1: frequency admission (EvictionPolicy::TinyLfu), else 0
    transient: u32,   // transient slots past `capacity` (admission)
    sketch_mask: u32, // counters per row of the frequency sketch, minus 1 (a power of two)
    ghost_mask: u32,  // entries of the refused-rows table, minus 1 (a power of two)
}

const PENDING: u32 = 0xffffffffu;
const REF: u32 = 0x80000000u;
const SAVED: u32 = 0x40000000u;
const EPOCH: u32 = 0x3fffffffu;
// this pass's counters
const MISSES: u32 = 0u;
const HITS: u32 = 1u;
const EVICTED: u32 = 2u;
const VICTIMS: u32 = 3u;
const TOTAL_A: u32 = 4u;
const TOTAL_B: u32 = 5u;
const REFUSED: u32 = 6u;   // misses refused admission (each in a transient slot)
const SPARE: u32 = 7u;     // transient slots handed out (and asked for past the last)
const GHOST: u32 = 8u;     // misses of rows refused lately (found in the refused-rows table)
const FREE: u32 = 9u;      // victims whose misses are admitted without asking the sketch
const SAVED_HITS: u32 = 10u; // hits on rows admission kept (SAVED), once each
// kept across passes
const HAND: u32 = 16u;
const NEXT_HAND: u32 = 17u;
const T_DISTINCT: u32 = 18u;
const T_HITS: u32 = 20u;
const T_MISSES: u32 = 22u;
const T_EVICTIONS: u32 = 24u;
const FAULT: u32 = 26u;
const T_REFUSED: u32 = 27u; // 64-bit
const WINDOW: u32 = 29u;    // per mille of a pass's victims admitted without asking
const TUNE_MISSES: u32 = 30u;
const TUNE_GHOST: u32 = 31u;
const TUNE_SAVED: u32 = 32u;
const RESIDENCE: u32 = 33u; // passes a row admitted now stays, about (a CLOCK round)
const VICTIMS16: u32 = 34u; // victims a pass, smoothed, x16 (RESIDENCE's source)
const RATIO: u32 = 35u;     // hits per mille of a pass's distinct ids, smoothed
const MOVED: u32 = 36u;     // the last pass whose hits fell below a quarter of RATIO (0: none)
// the lists
const LISTS: u32 = 48u;

fn miss_ids_at() -> u32 {
    return LISTS + 3u * p.blocks;
}

fn miss_slots_at() -> u32 {
    return LISTS + 3u * p.blocks + p.capacity;
}

fn evicted_at() -> u32 {
    return LISTS + 3u * p.blocks + 2u * p.capacity;
}

// The admission buffer (admission caches): a count-min sketch of 4 rows of
// `sketch_mask + 1` counters (4-bit counts in u32 words, halved every so many positions),
// then the refused-rows table: at each hash, id + 1 of the last row refused there and the
// epoch of the pass that refused it.
fn mix(x0: u32) -> u32 {
    var x = x0;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn sketch_at(id: u32, r: u32) -> u32 {
    return r * (p.sketch_mask + 1u) + (mix(id * 4u + r + 0x9e3779b9u) & p.sketch_mask);
}

fn ghost_at(id: u32) -> u32 {
    return 4u * (p.sketch_mask + 1u) + 2u * (mix(id ^ 0x5bd1e995u) & p.ghost_mask);
}

// Counts stop at 15, as 4-bit counters would.
const COUNT_MAX: u32 = 15u;

fn bins_at() -> u32 {
    return LISTS + 3u * p.blocks + 3u * p.capacity;
}
