// fetch.wgsl: the third phase of a batch served by the GPU: each missed row is copied from
// the table in host memory (read across the bus) into the slot the eviction phase gave it,
// `Word` (prepended by the host: vec4<u32> when a row is whole 16-byte units, else u32) at
// a time, raw: the table is stored as the slots store rows (f32, f16 or int8 words), so no
// decoding happens here. The table and the slots may each be split into shards (one storage
// binding each); the host dispatches once per (table shard, slot shard) pair and a thread
// copies its word only when both fall in the bound shards.
//
// The host does not know how many rows missed (nothing is read back): it dispatches a grid
// sized for the pass's positions (capped), and the threads stride over `VICTIMS x words`
// words, so the grid needs no count from the GPU and idle threads cost one check.
//
// Bindings (group 0):
//   0  p      uniform              DrivenParams
//   1  work   storage, read        array<u32> (layout: driven_common.wgsl)
//   2  table  storage, read        array<Word>: one table shard (host memory)
//   3  slots  storage, read_write  array<Word>: one slot shard

@group(0) @binding(0) var<uniform> p: DrivenParams;
@group(0) @binding(1) var<storage, read> work: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<Word>;
@group(0) @binding(3) var<storage, read_write> slots: array<Word>;

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
        // Unsigned wrap-around sends rows below a shard past its size too.
        let r = id - p.table_base;
        let s = slot - p.slot_base;
        if (r < p.table_rows && s < p.slot_rows) {
            slots[s * p.words + w] = table[r * p.words + w];
        }
    }
}
