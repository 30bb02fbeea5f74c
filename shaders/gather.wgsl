// gather.wgsl: out[out_offset + i] = rows[slots[i]] for i in 0..n, one row of `dim` f32.
//
// The row buffer may be split into shards (each one storage binding); the host dispatches
// once per shard, and a thread writes only when its slot falls in the bound shard, so every
// output row is written by exactly one dispatch.
//
// Bindings (group 0):
//   0  params   uniform              GatherParams
//   1  slots    storage, read        array<u32>, n entries: the row of each output position
//   2  rows     storage, read        array<f32>,       one shard, shard_rows x dim     (gather_scalar)
//   3  out      storage, read_write  array<f32>,       output rows x dim               (gather_scalar)
//   4  rows4    storage, read        array<vec4<f32>>, one shard, shard_rows x dim/4   (gather_vec4)
//   5  out4     storage, read_write  array<vec4<f32>>, output rows x dim/4             (gather_vec4)
//
// Dispatch: workgroups of 256 threads over n * width threads (width = dim, or dim / 4 in
// gather_vec4), laid out as a (groups_x, y) grid so no dimension passes the adapter limit;
// thread id = (wid.y * groups_x + wid.x) * 256 + local index.

struct GatherParams {
    n: u32,           // output positions in this dispatch
    width: u32,       // elements per row: dim (scalar) or dim / 4 (vec4)
    groups_x: u32,    // workgroups along x in the dispatch grid
    out_offset: u32,  // first output row written
    shard_base: u32,  // first slot held by the bound shard
    shard_rows: u32,  // rows held by the bound shard
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: GatherParams;
@group(0) @binding(1) var<storage, read> slots: array<u32>;
@group(0) @binding(2) var<storage, read> rows: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> rows4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out4: array<vec4<f32>>;

const WG: u32 = 256u;

// Returns the shard-local row and element for thread `g`, or row 0xffffffff when the thread
// has nothing to do (past the end, or its slot lives in another shard).
fn locate(g: u32) -> vec3<u32> {
    let total = p.n * p.width;
    if (g >= total) {
        return vec3<u32>(0xffffffffu, 0u, 0u);
    }
    let i = g / p.width;
    let c = g - i * p.width;
    // Unsigned wrap-around sends slots below the shard past shard_rows too.
    let local = slots[i] - p.shard_base;
    if (local >= p.shard_rows) {
        return vec3<u32>(0xffffffffu, 0u, 0u);
    }
    return vec3<u32>(local, i, c);
}

@compute @workgroup_size(256)
fn gather_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.y * p.groups_x + wid.x) * WG + lid;
    let at = locate(g);
    if (at.x == 0xffffffffu) {
        return;
    }
    out[(p.out_offset + at.y) * p.width + at.z] = rows[at.x * p.width + at.z];
}

@compute @workgroup_size(256)
fn gather_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.y * p.groups_x + wid.x) * WG + lid;
    let at = locate(g);
    if (at.x == 0xffffffffu) {
        return;
    }
    out4[(p.out_offset + at.y) * p.width + at.z] = rows4[at.x * p.width + at.z];
}
