// slot_index.wgsl: the cache's id -> slot index kept on the GPU (resolution on the GPU), so a
// batch's hits are found by the GPU and only its misses go through the host:
// The index stores slot + 1, and 0 for a row that is not resident (so a new, zeroed buffer
// is an empty index).
//   probe:    for each position i: s = slot_of[ids[i]] - 1; a resident id sets bit s of the
//             touched bitmap (the host pins and ages those slots); an id that is not
//             resident is appended to the miss list (repeats included: the host dedups).
//   assign:   slot_of[pairs[2k]] = pairs[2k + 1] for k = first + j, j < n: the host's
//             changes to the index (evicted rows -> 0, new rows -> their slot + 1). Keys
//             within one dispatch are distinct; removals go in a dispatch before the
//             insertions, since a pass may evict a row and then load it again.
//   position: out[i] = slot_of[ids[i]] - 1, the slot list an op reads (after assign, every id
//             of the batch is resident).
// The host checks every id against the table's rows before any of this runs.
//
// Bindings (group 0):
//   0  p        uniform              MapParams
//   1  ids      storage, read        array<u32>: the batch's ids (probe, position) or the
//                                    (key, value) pairs (assign)
//   2  slot_of  storage, read_write  array<u32>: one entry per table row (slot + 1, or 0)
//   3  out      storage, read_write  array<atomic<u32>>:
//                 probe:    [0] miss count, [1..4] unused, [4 .. 4 + bitmap_words] touched
//                           bitmap (cleared by the host before), then the miss list
//                           (`miss_room` entries; a count past it means the list is
//                           incomplete and the host serves the batch another way)
//                 position: the slot list, n entries
//
// Dispatch: one thread per position (pair), 256-thread workgroups in a (groups_x, y) grid;
// `grid_thread` (prepended by the host) gives the linear index.

struct MapParams {
    n: u32,            // positions (probe, position) or pairs (assign)
    groups_x: u32,     // workgroups along x in the dispatch grid
    bitmap_words: u32, // words of the touched bitmap (probe)
    miss_room: u32,    // entries of the miss list (probe)
    first: u32,        // first pair of the dispatch (assign)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const HEADER: u32 = 4u;

@group(0) @binding(0) var<uniform> p: MapParams;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> slot_of: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<atomic<u32>>;

@compute @workgroup_size(256)
fn probe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, lid, p.groups_x);
    if (i >= p.n) {
        return;
    }
    let id = ids[i];
    let v = slot_of[id];
    if (v != 0u) {
        let s = v - 1u;
        atomicOr(&out[HEADER + (s >> 5u)], 1u << (s & 31u));
        return;
    }
    let k = atomicAdd(&out[0], 1u);
    if (k < p.miss_room) {
        atomicStore(&out[HEADER + p.bitmap_words + k], id);
    }
}

@compute @workgroup_size(256)
fn assign(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = grid_thread(wid, lid, p.groups_x);
    if (j >= p.n) {
        return;
    }
    let k = p.first + j;
    slot_of[ids[2u * k]] = ids[2u * k + 1u];
}

@compute @workgroup_size(256)
fn position(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_thread(wid, lid, p.groups_x);
    if (i >= p.n) {
        return;
    }
    atomicStore(&out[i], slot_of[ids[i]] - 1u);
}
