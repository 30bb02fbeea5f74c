// fetch.wgsl: the third phase of a batch served by the GPU: each missed row is copied from
// the table in host memory (read across the bus) into the slot the eviction phase gave it,
// `Word` (prepended by the host: vec4<u32> when a row is whole 16-byte units, else u32) at
// a time, raw: the table is stored as the slots store rows (f32, f16 or int8 words), so no
// decoding happens here. The table and the slots may each be split into shards (one storage
// binding each); the host dispatches once per (table shard, slot shard) pair and a thread
// copies its word only when both fall in the bound shards.
//
// The dispatch is indirect: its grid was written by evict.wgsl's plan, which also left
// the grid's x size in FETCH_GX, so the host needs no count back from the GPU.
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
fn fetch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = grid_thread(wid, lid, work[FETCH_GX]);
    let v = t / p.words;
    if (v >= work[VICTIMS]) {
        return;
    }
    let w = t - v * p.words;
    let id = work[miss_ids_at() + v];
    let slot = work[miss_slots_at() + v];
    // Unsigned wrap-around sends rows below a shard past its size too.
    let r = id - p.table_base;
    let s = slot - p.slot_base;
    if (r >= p.table_rows || s >= p.slot_rows) {
        return;
    }
    slots[s * p.words + w] = table[r * p.words + w];
}
