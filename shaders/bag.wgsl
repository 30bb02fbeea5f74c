// bag.wgsl: pooled bags. out[b] = pool over j in offsets[b]..offsets[b+1] of
// w[j] * rows[slot(j)], pooling sum (0), mean (1: the weighted sum over the bag length) or
// max (2, no weights); an empty bag gives zeros.
//
// slot(j) = slots[j], or j itself when `identity` is set (rows already gathered in order).
//
// Bindings (group 0):
//   0  params   uniform              BagParams
//   1  slots    storage, read        array<u32>, one slot per id position
//   2  offsets  storage, read        array<u32>, n_bags + 1 entries (the last = ids length)
//   3  weights  storage, read        array<f32>, one per id position (read when has_weights)
//   4  rows     storage, read        array<f32>,       the cache slots (or gathered rows)  (bag_scalar)
//   5  out      storage, read_write  array<f32>,       n_bags x dim                        (bag_scalar)
//   6  rows4    storage, read        array<vec4<f32>>, as rows, dim / 4 per row            (bag_vec4)
//   7  out4     storage, read_write  array<vec4<f32>>, n_bags x dim / 4                    (bag_vec4)
//
// Dispatch: one thread per output element (per vec4 in bag_vec4), 256-thread workgroups in
// a (groups_x, y) grid; thread id = (wid.y * groups_x + wid.x) * 256 + local index. The
// threads of one bag read its rows at consecutive addresses (coalesced).

struct BagParams {
    n_bags: u32,
    width: u32,        // dim, or dim / 4 in bag_vec4
    groups_x: u32,
    mode: u32,         // 0 sum, 1 mean, 2 max
    has_weights: u32,
    identity: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: BagParams;
@group(0) @binding(1) var<storage, read> slots: array<u32>;
@group(0) @binding(2) var<storage, read> offsets: array<u32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read> rows: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> rows4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> out4: array<vec4<f32>>;

const WG: u32 = 256u;

fn slot_of(j: u32) -> u32 {
    if (p.identity != 0u) {
        return j;
    }
    return slots[j];
}

fn weight_of(j: u32) -> f32 {
    if (p.has_weights != 0u) {
        return weights[j];
    }
    return 1.0;
}

@compute @workgroup_size(256)
fn bag_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.y * p.groups_x + wid.x) * WG + lid;
    if (g >= p.n_bags * p.width) {
        return;
    }
    let b = g / p.width;
    let c = g - b * p.width;
    let start = offsets[b];
    let end = offsets[b + 1u];
    var acc = 0.0;
    if (p.mode == 2u) {
        acc = -3.402823e38;
    }
    // Four ids per step: their slot and row loads are independent, so four row reads are
    // in flight at once (a bag walk is bound by memory latency, not bandwidth).
    var j = start;
    for (; j + 4u <= end; j = j + 4u) {
        let v0 = rows[slot_of(j) * p.width + c];
        let v1 = rows[slot_of(j + 1u) * p.width + c];
        let v2 = rows[slot_of(j + 2u) * p.width + c];
        let v3 = rows[slot_of(j + 3u) * p.width + c];
        if (p.mode == 2u) {
            acc = max(max(acc, max(v0, v1)), max(v2, v3));
        } else {
            acc = acc + (weight_of(j) * v0 + weight_of(j + 1u) * v1) + (weight_of(j + 2u) * v2 + weight_of(j + 3u) * v3);
        }
    }
    for (; j < end; j = j + 1u) {
        let v = rows[slot_of(j) * p.width + c];
        if (p.mode == 2u) {
            acc = max(acc, v);
        } else {
            acc = acc + weight_of(j) * v;
        }
    }
    if (end == start) {
        acc = 0.0;
    } else if (p.mode == 1u) {
        acc = acc / f32(end - start);
    }
    out[b * p.width + c] = acc;
}

@compute @workgroup_size(256)
fn bag_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.y * p.groups_x + wid.x) * WG + lid;
    if (g >= p.n_bags * p.width) {
        return;
    }
    let b = g / p.width;
    let c = g - b * p.width;
    let start = offsets[b];
    let end = offsets[b + 1u];
    var acc = vec4<f32>(0.0);
    if (p.mode == 2u) {
        acc = vec4<f32>(-3.402823e38);
    }
    // Four ids per step, as in bag_scalar.
    var j = start;
    for (; j + 4u <= end; j = j + 4u) {
        let v0 = rows4[slot_of(j) * p.width + c];
        let v1 = rows4[slot_of(j + 1u) * p.width + c];
        let v2 = rows4[slot_of(j + 2u) * p.width + c];
        let v3 = rows4[slot_of(j + 3u) * p.width + c];
        if (p.mode == 2u) {
            acc = max(max(acc, max(v0, v1)), max(v2, v3));
        } else {
            acc = acc + (weight_of(j) * v0 + weight_of(j + 1u) * v1) + (weight_of(j + 2u) * v2 + weight_of(j + 3u) * v3);
        }
    }
    for (; j < end; j = j + 1u) {
        let v = rows4[slot_of(j) * p.width + c];
        if (p.mode == 2u) {
            acc = max(acc, v);
        } else {
            acc = acc + weight_of(j) * v;
        }
    }
    if (end == start) {
        acc = vec4<f32>(0.0);
    } else if (p.mode == 1u) {
        acc = acc / f32(end - start);
    }
    out4[b * p.width + c] = acc;
}
