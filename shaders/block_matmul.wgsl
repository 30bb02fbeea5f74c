// block_matmul.wgsl: C (m x n) = A (m x k) * B (k x n), where B's entries are embedding rows
// read through cache slots, so only the rows a batch names are ever touched:
//   b_mode 0 (scores):  B(p, j) = rows[slot(j) * dim + p]   C = Q x E[cand]^T, k = dim
//   b_mode 1 (combine): B(p, j) = rows[slot(p) * dim + j]   C = X x E[ids],    n = dim
// slot(x) = slots[x], or x itself when `identity` is set (rows already gathered in order).
//
// Tiling: each workgroup computes one 64 x 64 tile of C; per step of 16 along k it loads a
// 64 x 16 block of A and a 16 x 64 block of B into workgroup memory once, then each of its
// 16 x 16 threads accumulates a 4 x 4 block of C in registers. Edge tiles are zero-padded
// on load and masked on store, so any m, n, k >= 1 works.
//
// Bindings (group 0):
//   0  params  uniform              MatmulParams
//   1  a       storage, read        array<f32>, m x lda, row-major (queries or weights)
//   2  slots   storage, read        array<u32>, slot of each candidate / id position
//   3  rows    storage, read        array<f32>, the cache slots (or gathered rows), dim wide
//   4  out     storage, read_write  array<f32>, m x n, row-major
//
// Dispatch: tiles_m * tiles_n workgroups of 16 x 16 threads, laid out as a (groups_x, y)
// grid so no dimension passes the adapter limit; tile = wid.y * groups_x + wid.x.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    dim: u32,
    b_mode: u32,
    identity: u32,
    tiles_n: u32,
    tiles_total: u32,
    groups_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<storage, read> rows: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [kk][i]: a_tile[kk * 64 + i]
var<workgroup> b_tile: array<f32, 1024>; // [kk][j]: b_tile[kk * 64 + j]

fn slot_of(x: u32) -> u32 {
    if (p.identity != 0u) {
        return x;
    }
    return slots[x];
}

@compute @workgroup_size(16, 16)
fn block_matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let tile = wid.y * p.groups_x + wid.x;
    // `tile` is the same for the whole workgroup, so this exit keeps barriers uniform.
    if (tile >= p.tiles_total) {
        return;
    }
    let row0 = (tile / p.tiles_n) * TILE;
    let col0 = (tile % p.tiles_n) * TILE;
    // The 4 x 4 accumulator block as four vec4 rows: plain registers (an array indexed in
    // loops may be placed in slow local memory by the driver).
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 = k0 + TK) {
        for (var e = 0u; e < 4u; e = e + 1u) {
            let idx = li + e * 256u;
            // A block: consecutive threads read consecutive k of one row.
            let i = idx / TK;
            let kk = idx % TK;
            var va = 0.0;
            if (row0 + i < p.m && k0 + kk < p.k) {
                va = a[(row0 + i) * p.lda + k0 + kk];
            }
            a_tile[kk * TILE + i] = va;
            // B block: read along the contiguous direction of the embedding rows.
            var vb = 0.0;
            var j = 0u;
            var kb = 0u;
            if (p.b_mode == 0u) {
                j = idx / TK;
                kb = idx % TK;
                if (col0 + j < p.n && k0 + kb < p.k) {
                    vb = rows[slot_of(col0 + j) * p.dim + k0 + kb];
                }
            } else {
                kb = idx / TILE;
                j = idx % TILE;
                if (col0 + j < p.n && k0 + kb < p.k) {
                    vb = rows[slot_of(k0 + kb) * p.dim + col0 + j];
                }
            }
            b_tile[kb * TILE + j] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let ab = kk * TILE + lid.y * 4u;
            let bb = kk * TILE + lid.x * 4u;
            let af = vec4<f32>(a_tile[ab], a_tile[ab + 1u], a_tile[ab + 2u], a_tile[ab + 3u]);
            let bf = vec4<f32>(b_tile[bb], b_tile[bb + 1u], b_tile[bb + 2u], b_tile[bb + 3u]);
            acc0 = acc0 + af.x * bf;
            acc1 = acc1 + af.y * bf;
            acc2 = acc2 + af.z * bf;
            acc3 = acc3 + af.w * bf;
        }
        workgroupBarrier();
    }
    store_row(row0 + lid.y * 4u, col0 + lid.x * 4u, acc0);
    store_row(row0 + lid.y * 4u + 1u, col0 + lid.x * 4u, acc1);
    store_row(row0 + lid.y * 4u + 2u, col0 + lid.x * 4u, acc2);
    store_row(row0 + lid.y * 4u + 3u, col0 + lid.x * 4u, acc3);
}

// Stores 4 consecutive outputs of row i from column j on, masked at the edges.
fn store_row(i: u32, j: u32, v: vec4<f32>) {
    if (i >= p.m) {
        return;
    }
    for (var c = 0u; c < 4u; c = c + 1u) {
        if (j + c < p.n) {
            out[i * p.n + j + c] = v[c];
        }
    }
}
