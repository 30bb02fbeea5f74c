// block_matmul.wgsl: C (m x n) = A (m x k) * B (k x n), where B's entries are embedding rows
// read through cache slots, so only the rows a batch names are ever touched:
//   B_MODE 0 (scores):  B(q, j) = row slot(j), value q     C = Q x E[cand]^T, k = dim
//   B_MODE 1 (combine): B(q, j) = row slot(q), value j     C = X x E[ids],    n = dim
// slot(x) = slots[x], or x itself when `identity` is set (rows already gathered in order).
//
// The host prepends how rows are read (see RowLayout: `Elem`, vec4<f32> when dim % 4 == 0,
// else f32, read from the `rows` binding of storage type `RowWord` by `load_row`, which
// decodes f16 and int8 rows), `AElem` for A (vec4<f32> when lda % 4 == 0, else f32), and
// the constant B_MODE: every load reads a whole element (wide rows and operands move 16
// bytes per load), and the compiler sees the mode and the lane counts as constants.
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
// Bindings (group 0), four storage buffers (the downlevel / WebGPU minimum per stage):
//   0  p      uniform              MatmulParams
//   1  a      storage, read        array<AElem>, m x lda f32, row-major (queries or weights)
//   2  slots  storage, read        array<u32>, slot of each candidate / id position
//   3  rows   storage, read        array<RowWord>, the cache slots (or gathered rows), dim wide
//   4  out    storage, read_write  array<f32>, m x n, row-major
//
// Dispatch: tiles_m * tiles_n workgroups of 16 x 16 threads (tiles of 128), laid out as a
// (groups_x, y) grid so no dimension passes the adapter limit; tile = wid.y * groups_x + wid.x.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    dim: u32,
    identity: u32,
    tiles_n: u32,
    tiles_total: u32,
    groups_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<AElem>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<storage, read> rows: array<RowWord>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const TILE: u32 = 128u;
const TK: u32 = 16u;
// Loads per thread for one block (2,048 values, 256 threads).
const A_LOADS: u32 = (TILE * TK) / (256u * AELEM_LANES);
const B_LOADS: u32 = (TILE * TK) / (256u * ELEM_LANES);
// Where the B block starts in `tiles`.
const B_AT: u32 = 528u;

// Both blocks as [kk][i / 4] vec4 over 4 consecutive rows i (A) or columns j (B): A at 0,
// B at B_AT. Rows of 33 vec4 (one of padding) so the 16 threads storing one column of a
// block hit different banks. (One array, so one function stores into either block: WGSL
// cannot pass workgroup pointers to functions.)
var<workgroup> tiles: array<vec4<f32>, 1056>;

fn slot_of(x: u32) -> u32 {
    if (p.identity != 0u) {
        return x;
    }
    return slots[x];
}

fn put(at: u32, kk: u32, x: u32, v: f32) {
    tiles[at + kk * 33u + x / 4u][x % 4u] = v;
}

// Element e of the A block covers AELEM_LANES consecutive k of one row: consecutive threads
// read consecutive k of a row (A is row-major).
fn a_row(e: u32) -> u32 {
    return e / (TK / AELEM_LANES);
}

fn a_k(e: u32) -> u32 {
    return (e % (TK / AELEM_LANES)) * AELEM_LANES;
}

// Element e of the B block covers ELEM_LANES consecutive values of one embedding row: along
// k in scores mode (a row is one column of B), along n in combine mode (a row of B).
fn b_k(e: u32) -> u32 {
    if (B_MODE == 0u) {
        return (e % (TK / ELEM_LANES)) * ELEM_LANES;
    }
    return e / (TILE / ELEM_LANES);
}

fn b_j(e: u32) -> u32 {
    if (B_MODE == 0u) {
        return e / (TK / ELEM_LANES);
    }
    return (e % (TILE / ELEM_LANES)) * ELEM_LANES;
}

fn load_a(row0: u32, k0: u32, e: u32) -> AElem {
    let row = row0 + a_row(e);
    let kk = k0 + a_k(e);
    // A vec4 element never straddles k: the host picks vec4 only when lda == k and
    // k % 4 == 0.
    if (row < p.m && kk < p.k) {
        return a[(row * p.lda + kk) / AELEM_LANES];
    }
    return AElem(0.0);
}

fn load_b(k0: u32, col0: u32, e: u32) -> Elem {
    let kk = k0 + b_k(e);
    let j = col0 + b_j(e);
    if (kk >= p.k || j >= p.n) {
        return Elem(0.0);
    }
    if (B_MODE == 0u) {
        return load_row(slot_of(j), kk / ELEM_LANES, p.dim / ELEM_LANES);
    }
    return load_row(slot_of(kk), j / ELEM_LANES, p.dim / ELEM_LANES);
}

// Stores the lanes of A element e (consecutive k of one row).
fn put_a(e: u32, v: AElem) {
    let kk = a_k(e);
    let i = a_row(e);
    put(0u, kk, i, aelem_lane(v, 0u));
    // Constant lane indices (no dynamic indexing); the branch folds away for f32 elements.
    if (AELEM_LANES == 4u) {
        put(0u, kk + 1u, i, aelem_lane(v, 1u));
        put(0u, kk + 2u, i, aelem_lane(v, 2u));
        put(0u, kk + 3u, i, aelem_lane(v, 3u));
    }
}

// Stores the lanes of B element e: consecutive k of one column (scores) or consecutive
// columns of one k (combine).
fn put_b(e: u32, v: Elem) {
    let kk = b_k(e);
    let j = b_j(e);
    put(B_AT, kk, j, elem_lane(v, 0u));
    if (ELEM_LANES == 4u) {
        if (B_MODE == 0u) {
            put(B_AT, kk + 1u, j, elem_lane(v, 1u));
            put(B_AT, kk + 2u, j, elem_lane(v, 2u));
            put(B_AT, kk + 3u, j, elem_lane(v, 3u));
        } else {
            put(B_AT, kk, j + 1u, elem_lane(v, 1u));
            put(B_AT, kk, j + 2u, elem_lane(v, 2u));
            put(B_AT, kk, j + 3u, elem_lane(v, 3u));
        }
    }
}

fn load_tiles(k0: u32, row0: u32, col0: u32, li: u32) {
    // Every load is issued before any store, so they are in flight together (one at a
    // time, the step is bound by memory latency). A_LOADS and B_LOADS are 2 (vec4
    // elements) or 8 (f32): the conditions are constants and fold away, leaving straight
    // code with every value in a register.
    let a0 = load_a(row0, k0, li);
    let a1 = load_a(row0, k0, li + 256u);
    var a2 = AElem(0.0);
    var a3 = AElem(0.0);
    var a4 = AElem(0.0);
    var a5 = AElem(0.0);
    var a6 = AElem(0.0);
    var a7 = AElem(0.0);
    if (A_LOADS == 8u) {
        a2 = load_a(row0, k0, li + 512u);
        a3 = load_a(row0, k0, li + 768u);
        a4 = load_a(row0, k0, li + 1024u);
        a5 = load_a(row0, k0, li + 1280u);
        a6 = load_a(row0, k0, li + 1536u);
        a7 = load_a(row0, k0, li + 1792u);
    }
    let b0 = load_b(k0, col0, li);
    let b1 = load_b(k0, col0, li + 256u);
    var b2 = Elem(0.0);
    var b3 = Elem(0.0);
    var b4 = Elem(0.0);
    var b5 = Elem(0.0);
    var b6 = Elem(0.0);
    var b7 = Elem(0.0);
    if (B_LOADS == 8u) {
        b2 = load_b(k0, col0, li + 512u);
        b3 = load_b(k0, col0, li + 768u);
        b4 = load_b(k0, col0, li + 1024u);
        b5 = load_b(k0, col0, li + 1280u);
        b6 = load_b(k0, col0, li + 1536u);
        b7 = load_b(k0, col0, li + 1792u);
    }
    put_a(li, a0);
    put_a(li + 256u, a1);
    if (A_LOADS == 8u) {
        put_a(li + 512u, a2);
        put_a(li + 768u, a3);
        put_a(li + 1024u, a4);
        put_a(li + 1280u, a5);
        put_a(li + 1536u, a6);
        put_a(li + 1792u, a7);
    }
    put_b(li, b0);
    put_b(li + 256u, b1);
    if (B_LOADS == 8u) {
        put_b(li + 512u, b2);
        put_b(li + 768u, b3);
        put_b(li + 1024u, b4);
        put_b(li + 1280u, b5);
        put_b(li + 1536u, b6);
        put_b(li + 1792u, b7);
    }
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
        load_tiles(k0, row0, col0, li);
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let a0 = tiles[kk * 33u + lid.y];
            let a1 = tiles[kk * 33u + 16u + lid.y];
            let b0 = tiles[B_AT + kk * 33u + lid.x];
            let b1 = tiles[B_AT + kk * 33u + 16u + lid.x];
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
