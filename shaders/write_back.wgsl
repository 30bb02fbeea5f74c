// write_back.wgsl: a training cache's changed rows back into the table in host memory (the
// GPU-driven path). A slot whose row an update changed is marked dirty (`mark`); before a
// pass's fetch overwrites its victims, `write_back` copies each dirty victim's row (values
// and optimizer state, raw `Word`s) to its table row and sets that row's bit in the
// written-rows bitmap; `clean_victims` then clears the victims' marks (a separate dispatch:
// every word of a row must be copied, in every (table shard, slot shard) dispatch, before
// its mark goes). `flush` does the same for every dirty resident row, and `clean` clears
// every mark. The host reads the bitmap and the rows at a flush.
//
// Encodings and the work layout: driven_common.wgsl (prepended by the host, with `Word`).
//
// Bindings (group 0; each entry binds a subset, at most four storage buffers):
//   0  p      uniform              DrivenParams
//   1  work   storage, read_write  array<atomic<u32>>  (write_back, clean_victims, flush)
//   2  table  storage, read_write  array<Word>: one table shard (write_back, flush)
//   3  slots  storage, read        array<Word>: one slot shard (write_back, flush)
//   4  state  storage, read_write  array<atomic<u32>>  (every entry)
//   5  list   storage, read        array<u32>: the slots an update changed (mark)

@group(0) @binding(0) var<uniform> p: DrivenParams;
@group(0) @binding(1) var<storage, read_write> work: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read_write> table: array<Word>;
@group(0) @binding(3) var<storage, read> slots: array<Word>;
@group(0) @binding(4) var<storage, read_write> state: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read> list: array<u32>;

fn dirty_at(slot: u32) -> u32 {
    return 2u * p.capacity + slot;
}

// Word w of slot `slot`'s row to table row `id`, when both fall in the bound shards; the
// row's bit is set once (by the thread of word 0).
fn copy_out(slot: u32, id: u32, w: u32) {
    let r = id - p.table_base;
    let s = slot - p.slot_base;
    if (r < p.table_rows && s < p.slot_rows) {
        table[r * p.words + w] = slots[s * p.words + w];
        if (w == 0u) {
            atomicOr(&work[p.written_at + id / 32u], 1u << (id % 32u));
        }
    }
}

@compute @workgroup_size(256)
fn write_back(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * groups.y * 256u;
    let total = atomicLoad(&work[VICTIMS]) * p.words;
    for (var t = grid_thread(wid, lid, p.groups_x); t < total; t += stride) {
        let v = t / p.words;
        let slot = atomicLoad(&work[miss_slots_at() + v]);
        let old = atomicLoad(&work[evicted_at() + v]);
        if (old != 0u && atomicLoad(&state[dirty_at(slot)]) != 0u) {
            copy_out(slot, old - 1u, t - v * p.words);
        }
    }
}

@compute @workgroup_size(256)
fn clean_victims(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * groups.y * 256u;
    let victims = atomicLoad(&work[VICTIMS]);
    for (var v = grid_thread(wid, lid, p.groups_x); v < victims; v += stride) {
        atomicStore(&state[dirty_at(atomicLoad(&work[miss_slots_at() + v]))], 0u);
    }
}

@compute @workgroup_size(256)
fn mark(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = grid_thread(wid, lid, p.groups_x);
    if (k < p.n) {
        atomicStore(&state[dirty_at(list[k])], 1u);
    }
}

@compute @workgroup_size(256)
fn flush(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * groups.y * 256u;
    let total = p.capacity * p.words;
    for (var t = grid_thread(wid, lid, p.groups_x); t < total; t += stride) {
        let slot = t / p.words;
        let id = atomicLoad(&state[slot]);
        if (id != 0u && atomicLoad(&state[dirty_at(slot)]) != 0u) {
            copy_out(slot, id - 1u, t - slot * p.words);
        }
    }
}

@compute @workgroup_size(256)
fn clean(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = grid_thread(wid, lid, p.groups_x);
    if (s < p.capacity) {
        atomicStore(&state[dirty_at(s)], 0u);
    }
}
