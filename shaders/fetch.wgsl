// fetch.wgsl: the third phase of a batch served by the GPU: each missed row is copied from
// the table in host memory (read across the bus) into the slot the eviction phase gave it,
// `Word` (prepended by the host: vec4<u32> when a row is whole 16-byte units, else u32) at
// a time, raw: the table is stored as the slots store rows (f32, f16 or int8 words), so no
// decoding happens here.
//
// The table and the slots may each be split into shards (one storage binding each). One
// dispatch binds up to four table shards at once (a group; the host repeats the last
// shard in bindings a short group leaves over) and one slot shard, and a thread copies its
// word only when its row falls in the group and its slot in the shard. Every dispatch
// writes the slots, so each is a pass of its own behind a barrier, and every dispatch
// strides over all the misses: the fewer dispatches, the fewer of both.
//
// The host does not know how many rows missed (nothing is read back): it dispatches a grid
// sized for the pass's positions (capped), and the threads stride over `VICTIMS x words`
// words, so the grid needs no count from the GPU and idle threads cost one check.
//
// Bindings (group 0):
//   0  p       uniform              DrivenParams
//   1  work    storage, read        array<u32> (layout: driven_common.wgsl)
//   2  table0  storage, read        array<Word>: the group's first table shard (host memory)
//   3  slots   storage, read_write  array<Word>: one slot shard
//   4  table1  storage, read        array<Word>: the group's second shard (or the last again)
//   5  table2  storage, read        array<Word>: third
//   6  table3  storage, read        array<Word>: fourth

@group(0) @binding(0) var<uniform> p: DrivenParams;
@group(0) @binding(1) var<storage, read> work: array<u32>;
@group(0) @binding(2) var<storage, read> table0: array<Word>;
@group(0) @binding(3) var<storage, read_write> slots: array<Word>;
@group(0) @binding(4) var<storage, read> table1: array<Word>;
@group(0) @binding(5) var<storage, read> table2: array<Word>;
@group(0) @binding(6) var<storage, read> table3: array<Word>;

// Word `at` of the group's shard `k` (a warp reads one row, so `k` is uniform across it).
fn table_word(k: u32, at: u32) -> Word {
    switch k {
        case 0u: { return table0[at]; }
        case 1u: { return table1[at]; }
        case 2u: { return table2[at]; }
        default: { return table3[at]; }
    }
}

@compute @workgroup_size(256)
fn fetch(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * groups.y * 256u;
    let total = work[VICTIMS] * p.words;
    for (var t = grid_thread(wid, lid, p.groups_x); t < total; t += stride) {
        let v = t / p.words;
        let w = t - v * p.words;
        let id = work[miss_ids_at() + v];
        let slot = work[miss_slots_at() + v];
        // Unsigned wrap-around sends rows below the group past its size too.
        let r = id - p.table_base;
        let s = slot - p.slot_base;
        if (r < p.group_rows && s < p.slot_rows) {
            let k = r / p.shard_rows;
            slots[s * p.words + w] = table_word(k, (r - k * p.shard_rows) * p.words + w);
        }
    }
}
