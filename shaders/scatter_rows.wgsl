// scatter_rows.wgsl: rows[slots[i]] = src[i] for i in 0..n: moves uploaded rows into their
// cache slots in one pass (never one copy command per row).
//
// The destination may be split into shards (each one storage binding); the host dispatches
// once per shard and a thread writes only when its slot falls in the bound shard.
// The host guarantees the slots of one dispatch are distinct (one row per slot), so no two
// threads write the same element.
//
// Bindings (group 0):
//   0  params  uniform              ScatterParams
//   1  slots   storage, read        array<u32>, n entries: destination slot of source row i
//   2  src     storage, read        array<f32>,       n x dim uploaded rows             (scatter_scalar)
//   3  rows    storage, read_write  array<f32>,       one shard, shard_rows x dim       (scatter_scalar)
//   4  src4    storage, read        array<vec4<f32>>, n x dim/4                         (scatter_vec4)
//   5  rows4   storage, read_write  array<vec4<f32>>, one shard, shard_rows x dim/4     (scatter_vec4)
//
// Dispatch: as gather.wgsl: 256-thread workgroups over n * width threads in a 2-D grid.

struct ScatterParams {
    n: u32,           // rows to move
    width: u32,       // elements per row: dim (scalar) or dim / 4 (vec4)
    groups_x: u32,    // workgroups along x in the dispatch grid
    src_offset: u32,  // first source row read
    shard_base: u32,  // first slot held by the bound shard
    shard_rows: u32,  // rows held by the bound shard
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: ScatterParams;
@group(0) @binding(1) var<storage, read> slots: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> rows: array<f32>;
@group(0) @binding(4) var<storage, read> src4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> rows4: array<vec4<f32>>;

const WG: u32 = 256u;

fn locate(g: u32) -> vec3<u32> {
    let total = p.n * p.width;
    if (g >= total) {
        return vec3<u32>(0xffffffffu, 0u, 0u);
    }
    let i = g / p.width;
    let c = g - i * p.width;
    let local = slots[i] - p.shard_base;
    if (local >= p.shard_rows) {
        return vec3<u32>(0xffffffffu, 0u, 0u);
    }
    return vec3<u32>(local, i, c);
}

@compute @workgroup_size(256)
fn scatter_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.y * p.groups_x + wid.x) * WG + lid;
    let at = locate(g);
    if (at.x == 0xffffffffu) {
        return;
    }
    rows[at.x * p.width + at.z] = src[(p.src_offset + at.y) * p.width + at.z];
}

@compute @workgroup_size(256)
fn scatter_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.y * p.groups_x + wid.x) * WG + lid;
    let at = locate(g);
    if (at.x == 0xffffffffu) {
        return;
    }
    rows4[at.x * p.width + at.z] = src4[(p.src_offset + at.y) * p.width + at.z];
}
