// block_matmul.wgsl: C (m x n) = A (m x k) * B (k x n), where B's entries are embedding rows
// read through cache slots, so only the rows a batch names are ever touched:
//   b_mode 0 (scores):  B(p, j) = rows[slot(j) * dim + p]   C = Q x E[cand]^T, k = dim
//   b_mode 1 (combine): B(p, j) = rows[slot(p) * dim + j]   C = X x E[ids],    n = dim
// slot(x) = slots[x], or x itself when `identity` is set (rows already gathered in order).
//
// Tiling: each workgroup computes one 128 x 128 tile of C. Per step of 16 along k it loads a
// 128 x 16 block of A and a 16 x 128 block of B into workgroup memory once (each element of
// B, i.e. each embedding row segment, is read from memory once per tile), then each of its
// 16 x 16 threads accumulates an 8 x 8 block of C in registers: rows {y*4..y*4+3,
// 64+y*4..64+y*4+3} x columns {x*4..x*4+3, 64+x*4..64+x*4+3}, so that neighbouring threads
// read neighbouring vec4s of workgroup memory. The accumulators are 16 named vec4 values
// (an array indexed in loops may be placed in slow local memory by the driver). Edge tiles
// are zero-padded on load and masked on store: any m, n, k >= 1 works.
//
// Bindings (group 0):
//   0  params  uniform              MatmulParams
//   1  a       storage, read        array<f32>, m x lda, row-major (queries or weights)
//   2  slots   storage, read        array<u32>, slot of each candidate / id position
//   3  rows    storage, read        array<f32>, the cache slots (or gathered rows), dim wide
//   4  out     storage, read_write  array<f32>, m x n, row-major
//   5  a4      storage, read        array<vec4<f32>>, the same buffer as `a` (vec4 loads)
//   6  rows4   storage, read        array<vec4<f32>>, the same buffer as `rows` (vec4 loads)
//
// Dispatch: tiles_m * tiles_n workgroups of 16 x 16 threads (tiles of 128), laid out as a
// (groups_x, y) grid so no dimension passes the adapter limit; tile = wid.y * groups_x + wid.x.

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
    vec4_loads: u32, // scores mode with dim % 4 == 0: tiles loaded as vec4 (a4, rows4)
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<storage, read> rows: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> rows4: array<vec4<f32>>;

const TILE: u32 = 128u;
const TK: u32 = 16u;

// [kk][i / 4] as vec4 over 4 consecutive rows i (A) or columns j (B); rows of 33 vec4 (one
// of padding) so the 16 threads storing one column of a block hit different banks.
var<workgroup> a_tile: array<vec4<f32>, 528>;
var<workgroup> b_tile: array<vec4<f32>, 528>;

fn slot_of(x: u32) -> u32 {
    if (p.identity != 0u) {
        return x;
    }
    return slots[x];
}

fn load_a(row: u32, kk: u32) -> f32 {
    if (row < p.m && kk < p.k) {
        return a[row * p.lda + kk];
    }
    return 0.0;
}

fn load_b(kk: u32, j: u32) -> f32 {
    if (j >= p.n || kk >= p.k) {
        return 0.0;
    }
    if (p.b_mode == 0u) {
        return rows[slot_of(j) * p.dim + kk];
    }
    return rows[slot_of(kk) * p.dim + j];
}

// Position of block element `idx` of B (0..2047) along k and along n: k varies fastest in
// scores mode (embedding rows are contiguous along k), n in combine mode.
fn bk(idx: u32) -> u32 {
    if (p.b_mode == 0u) {
        return idx % TK;
    }
    return idx / TILE;
}

fn bj(idx: u32) -> u32 {
    if (p.b_mode == 0u) {
        return idx / TK;
    }
    return idx % TILE;
}

// Stores up to 4 consecutive outputs of row i from column j on, masked at the edges.
fn store4(i: u32, j: u32, v: vec4<f32>) {
    if (i >= p.m) {
        return;
    }
    for (var c = 0u; c < 4u; c = c + 1u) {
        if (j + c < p.n) {
            out[i * p.n + j + c] = v[c];
        }
    }
}

fn load_tiles(k0: u32, row0: u32, col0: u32, li: u32) {
    // 2,048 elements of each block, 8 per thread. All 16 loads are issued before any
    // store, so they are in flight together (one at a time, the step is bound by memory
    // latency). A: consecutive threads read consecutive k of one row. B: along the
    // contiguous direction of the embedding rows.
    let i0 = li + 0u;
    let i1 = li + 256u;
    let i2 = li + 512u;
    let i3 = li + 768u;
    let i4 = li + 1024u;
    let i5 = li + 1280u;
    let i6 = li + 1536u;
    let i7 = li + 1792u;
    let va0 = load_a(row0 + i0 / TK, k0 + i0 % TK);
    let va1 = load_a(row0 + i1 / TK, k0 + i1 % TK);
    let va2 = load_a(row0 + i2 / TK, k0 + i2 % TK);
    let va3 = load_a(row0 + i3 / TK, k0 + i3 % TK);
    let va4 = load_a(row0 + i4 / TK, k0 + i4 % TK);
    let va5 = load_a(row0 + i5 / TK, k0 + i5 % TK);
    let va6 = load_a(row0 + i6 / TK, k0 + i6 % TK);
    let va7 = load_a(row0 + i7 / TK, k0 + i7 % TK);
    let vb0 = load_b(k0 + bk(i0), col0 + bj(i0));
    let vb1 = load_b(k0 + bk(i1), col0 + bj(i1));
    let vb2 = load_b(k0 + bk(i2), col0 + bj(i2));
    let vb3 = load_b(k0 + bk(i3), col0 + bj(i3));
    let vb4 = load_b(k0 + bk(i4), col0 + bj(i4));
    let vb5 = load_b(k0 + bk(i5), col0 + bj(i5));
    let vb6 = load_b(k0 + bk(i6), col0 + bj(i6));
    let vb7 = load_b(k0 + bk(i7), col0 + bj(i7));
    a_tile[(i0 % TK) * 33u + (i0 / TK) / 4u][(i0 / TK) % 4u] = va0;
    a_tile[(i1 % TK) * 33u + (i1 / TK) / 4u][(i1 / TK) % 4u] = va1;
    a_tile[(i2 % TK) * 33u + (i2 / TK) / 4u][(i2 / TK) % 4u] = va2;
    a_tile[(i3 % TK) * 33u + (i3 / TK) / 4u][(i3 / TK) % 4u] = va3;
    a_tile[(i4 % TK) * 33u + (i4 / TK) / 4u][(i4 / TK) % 4u] = va4;
    a_tile[(i5 % TK) * 33u + (i5 / TK) / 4u][(i5 / TK) % 4u] = va5;
    a_tile[(i6 % TK) * 33u + (i6 / TK) / 4u][(i6 / TK) % 4u] = va6;
    a_tile[(i7 % TK) * 33u + (i7 / TK) / 4u][(i7 / TK) % 4u] = va7;
    b_tile[bk(i0) * 33u + bj(i0) / 4u][bj(i0) % 4u] = vb0;
    b_tile[bk(i1) * 33u + bj(i1) / 4u][bj(i1) % 4u] = vb1;
    b_tile[bk(i2) * 33u + bj(i2) / 4u][bj(i2) % 4u] = vb2;
    b_tile[bk(i3) * 33u + bj(i3) / 4u][bj(i3) % 4u] = vb3;
    b_tile[bk(i4) * 33u + bj(i4) / 4u][bj(i4) % 4u] = vb4;
    b_tile[bk(i5) * 33u + bj(i5) / 4u][bj(i5) % 4u] = vb5;
    b_tile[bk(i6) * 33u + bj(i6) / 4u][bj(i6) % 4u] = vb6;
    b_tile[bk(i7) * 33u + bj(i7) / 4u][bj(i7) % 4u] = vb7;
}

fn load_a4(row: u32, kk: u32) -> vec4<f32> {
    if (row < p.m && kk < p.k) {
        return a4[(row * p.lda + kk) / 4u];
    }
    return vec4<f32>(0.0);
}

fn load_b4(j: u32, kk: u32) -> vec4<f32> {
    if (j < p.n && kk < p.k) {
        return rows4[(slot_of(j) * p.dim + kk) / 4u];
    }
    return vec4<f32>(0.0);
}

// Vec4 form of load_tiles for scores with dim % 4 == 0 (so lda, k and every row start are
// multiples of 4): 4 consecutive threads read the 16 k of one row, 2 vec4 of A and 2 of B
// per thread, all issued before the stores.
fn load_tiles_vec4(k0: u32, row0: u32, col0: u32, li: u32) {
    let i0 = li;
    let i1 = li + 256u;
    let va0 = load_a4(row0 + i0 / 4u, k0 + (i0 % 4u) * 4u);
    let va1 = load_a4(row0 + i1 / 4u, k0 + (i1 % 4u) * 4u);
    let vb0 = load_b4(col0 + i0 / 4u, k0 + (i0 % 4u) * 4u);
    let vb1 = load_b4(col0 + i1 / 4u, k0 + (i1 % 4u) * 4u);
    put4_a(i0, va0);
    put4_a(i1, va1);
    put4_b(i0, vb0);
    put4_b(i1, vb1);
}

// Store 4 consecutive k of row (A) or column (B) idx / 4 into its [kk][i / 4] tile.
// (WGSL cannot pass workgroup pointers to functions, hence one function per tile.)
fn put4_a(idx: u32, v: vec4<f32>) {
    let i = idx / 4u;
    let kq = (idx % 4u) * 4u;
    a_tile[kq * 33u + i / 4u][i % 4u] = v.x;
    a_tile[(kq + 1u) * 33u + i / 4u][i % 4u] = v.y;
    a_tile[(kq + 2u) * 33u + i / 4u][i % 4u] = v.z;
    a_tile[(kq + 3u) * 33u + i / 4u][i % 4u] = v.w;
}

fn put4_b(idx: u32, v: vec4<f32>) {
    let j = idx / 4u;
    let kq = (idx % 4u) * 4u;
    b_tile[kq * 33u + j / 4u][j % 4u] = v.x;
    b_tile[(kq + 1u) * 33u + j / 4u][j % 4u] = v.y;
    b_tile[(kq + 2u) * 33u + j / 4u][j % 4u] = v.z;
    b_tile[(kq + 3u) * 33u + j / 4u][j % 4u] = v.w;
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
    var c0a = vec4<f32>(0.0);
    var c0b = vec4<f32>(0.0);
    var c1a = vec4<f32>(0.0);
    var c1b = vec4<f32>(0.0);
    var c2a = vec4<f32>(0.0);
    var c2b = vec4<f32>(0.0);
    var c3a = vec4<f32>(0.0);
    var c3b = vec4<f32>(0.0);
    var c4a = vec4<f32>(0.0);
    var c4b = vec4<f32>(0.0);
    var c5a = vec4<f32>(0.0);
    var c5b = vec4<f32>(0.0);
    var c6a = vec4<f32>(0.0);
    var c6b = vec4<f32>(0.0);
    var c7a = vec4<f32>(0.0);
    var c7b = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 = k0 + TK) {
        if (p.vec4_loads != 0u) {
            load_tiles_vec4(k0, row0, col0, li);
        } else {
            load_tiles(k0, row0, col0, li);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let a0 = a_tile[kk * 33u + lid.y];
            let a1 = a_tile[kk * 33u + 16u + lid.y];
            let b0 = b_tile[kk * 33u + lid.x];
            let b1 = b_tile[kk * 33u + 16u + lid.x];
            c0a = c0a + a0.x * b0;
            c0b = c0b + a0.x * b1;
            c1a = c1a + a0.y * b0;
            c1b = c1b + a0.y * b1;
            c2a = c2a + a0.z * b0;
            c2b = c2b + a0.z * b1;
            c3a = c3a + a0.w * b0;
            c3b = c3b + a0.w * b1;
            c4a = c4a + a1.x * b0;
            c4b = c4b + a1.x * b1;
            c5a = c5a + a1.y * b0;
            c5b = c5b + a1.y * b1;
            c6a = c6a + a1.z * b0;
            c6b = c6b + a1.z * b1;
            c7a = c7a + a1.w * b0;
            c7b = c7b + a1.w * b1;
        }
        workgroupBarrier();
    }
    store4(row0 + lid.y * 4u + 0u, col0 + lid.x * 4u, c0a);
    store4(row0 + lid.y * 4u + 0u, col0 + 64u + lid.x * 4u, c0b);
    store4(row0 + lid.y * 4u + 1u, col0 + lid.x * 4u, c1a);
    store4(row0 + lid.y * 4u + 1u, col0 + 64u + lid.x * 4u, c1b);
    store4(row0 + lid.y * 4u + 2u, col0 + lid.x * 4u, c2a);
    store4(row0 + lid.y * 4u + 2u, col0 + 64u + lid.x * 4u, c2b);
    store4(row0 + lid.y * 4u + 3u, col0 + lid.x * 4u, c3a);
    store4(row0 + lid.y * 4u + 3u, col0 + 64u + lid.x * 4u, c3b);
    store4(row0 + 64u + lid.y * 4u + 0u, col0 + lid.x * 4u, c4a);
    store4(row0 + 64u + lid.y * 4u + 0u, col0 + 64u + lid.x * 4u, c4b);
    store4(row0 + 64u + lid.y * 4u + 1u, col0 + lid.x * 4u, c5a);
    store4(row0 + 64u + lid.y * 4u + 1u, col0 + 64u + lid.x * 4u, c5b);
    store4(row0 + 64u + lid.y * 4u + 2u, col0 + lid.x * 4u, c6a);
    store4(row0 + 64u + lid.y * 4u + 2u, col0 + 64u + lid.x * 4u, c6b);
    store4(row0 + 64u + lid.y * 4u + 3u, col0 + lid.x * 4u, c7a);
    store4(row0 + 64u + lid.y * 4u + 3u, col0 + 64u + lid.x * 4u, c7b);
}
