// update.wgsl: training's backward and optimizer step over the rows of a batch, in place in
// their cache slots. One workgroup per distinct row `k` of the dispatch: its gradient is the
// sum, in position order (so results are deterministic; no float atomics), of what every
// position that read the row contributes; the optimizer then updates the row in its slot.
//
// A skewed batch reads a few rows thousands of times (W7's hottest row: ~10k of 131k
// positions), and one workgroup summing such a row alone would hold up the whole step.
// Rows read more than `split_over` times are therefore split by the host into chunks
// of consecutive positions (`chunks_at`: begin, end per chunk; `split_at`: k, first chunk,
// end chunk per split row, ascending k); `partial_sums` sums each chunk into `partials`, one
// workgroup per chunk, and `update` sums a split row's chunks in chunk order: still one
// fixed order, so results stay deterministic.
//
// Contribution of position `j` (batch[order_at + i] for i in the row's group) to column c:
//   mode 0 (lookup):   grad[j * dim + c]
//   mode 1 (bags):     scale(j) * grad[row(bag(j)) + c], scale = weight (1 without),
//                      over the bag's length for mean
//   mode 2 (max bags): grad[row(bag(j)) + c] when j is the bag's argmax in column c
//                      (batch[argmax_at + bag(j) * dim + c], written by `argmax` below)
// where row(b) = (b % per_table) * grad_stride + cols[b / per_table]: one table's bags
// (per_table = bags, grad_stride = dim, cols = [0]), or a table-batched step's, several
// tables' bags table-major with each table's pooled rows in its own columns.
//
// Rows are f32, `stride` words apart; the row's optimizer state is from word `state_at` of
// its row: row-wise Adagrad's accumulator; Adam's first moments (dim), then its second
// moments (dim).
//
// Bindings (group 0): 0 p uniform; 1 slots (slot of each distinct row of the dispatch, or
// with `by_position` of each position of the batch: the forward's slot list, a row's slot
// the one at its first position);
// 2 batch (the batch's groups, order, offsets, weights, argmax; read_write for `argmax`);
// 3 grad; 4 rows (read_write); 6 partials (read_write). `argmax` binds 0, 1, 2 and 4;
// `partial_sums` 0, 2, 3 and 6.

struct UpdateParams {
    n: u32,          // distinct rows of this dispatch
    groups_x: u32,
    dim: u32,
    stride: u32,     // f32 words per stored row
    state_at: u32,   // word of the row's optimizer state
    mode: u32,       // 0 lookup, 1 bags (sum / mean), 2 bags (max)
    mean: u32,
    has_weights: u32,
    n_bags: u32,
    n_ids: u32,
    optimizer: u32,  // 0 SGD, 1 row-wise Adagrad
    first: u32,      // first distinct row of this dispatch (index into the groups)
    starts_at: u32,  // batch: group starts (distinct + 1)
    order_at: u32,   // batch: positions grouped by distinct row
    offsets_at: u32, // batch: bag offsets (n_bags + 1)
    weights_at: u32, // batch: per-position weights (bits)
    argmax_at: u32,  // batch: argmax positions (n_bags x dim)
    lr: f32,
    eps: f32,
    identity: u32,   // argmax: the rows are the batch's, in order (no slot list)
    grad_stride: u32, // f32 values per gradient row (bags)
    per_table: u32,  // bags per table (bags)
    cols_at: u32,    // batch: each table's first gradient column (bags)
    n_split: u32,    // rows split into chunks
    n_chunks: u32,
    split_at: u32,   // batch: (k, first chunk, end chunk) per split row, ascending k
    chunks_at: u32,  // batch: (begin, end) into the grouped positions, per chunk
    split_over: u32, // a row with more positions than this is split
    beta1: f32,      // Adam: the moments' decays and bias corrections 1 - beta^t
    beta2: f32,
    bias1: f32,
    bias2: f32,
    zero: u32,       // 0, read at run time (see `keep`)
    by_position: u32, // 1: `slots` is a slot per position (the forward's): a row's is its first position's
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: UpdateParams;
@group(0) @binding(1) var<storage, read> slots: array<u32>;
@group(0) @binding(2) var<storage, read_write> batch: array<u32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> rows: array<f32>;
@group(0) @binding(6) var<storage, read_write> partials: array<vec2<f32>>;

const WG: u32 = 64u;
var<workgroup> partial: array<vec2<f32>, 64>;
var<workgroup> shared_step: vec2<f32>;

// The bag holding position j, at or after bag `start`: the last bag whose offset is <= j
// (empty bags share their offset with the next one, and hold no position). A row's
// positions ascend, so each search starts at the previous one's bag, a few steps first.
fn bag_of(start: u32, j: u32) -> u32 {
    var lo = start;
    for (var t = 0u; t < 4u; t = t + 1u) {
        if (batch[p.offsets_at + lo + 1u] > j) {
            return lo;
        }
        lo = lo + 1u;
    }
    var hi = p.n_bags; // batch[offsets_at + n_bags] == n_ids > j
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (batch[p.offsets_at + mid] <= j) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// First value of bag b's gradient row.
fn grad_row(b: u32) -> u32 {
    return (b % p.per_table) * p.grad_stride + batch[p.cols_at + b / p.per_table];
}

// Double-f32 ("df") arithmetic: a value hi + lo as vec2(hi, lo), |lo| <= ulp(hi) / 2, about
// 48 bits (WGSL has no f64). The gradient (thousands of weighted terms for a hot row), the
// mean square, Adagrad's step and the row's move are computed in it, and the row and the
// accumulator are rounded to f32 once, as the f64 reference rounds them. In f32
// arithmetic each product, sum and the step itself would round too, errors the size of the
// move's own rounding that grow large against a row that has come close to 0.
//
// Compilers may rewrite float expressions by algebra, as if the arithmetic were exact
// (SPIR-V without `NoContraction`, which WGSL cannot ask for: Mesa's drivers turn
// `(a + b) - a` into `b`, the error terms below into 0), and may contract a product into
// the addition that takes it (`s + a * b` computed unrounded is not the `s + p` the error
// terms account for). `keep` passes a value through an integer XOR with a 0 the compiler
// cannot see (a uniform): no float rule reaches across it, so the sum or product it wraps
// is rounded and taken as computed. (A multiply by a uniform 1.0 is not enough: a compiler
// may move it, and fuse the product inside into the next addition.)
//
// A product's rounding error is `fma(a, b, -p)` where `fma` is fused (NVIDIA); SPIR-V and
// HLSL allow it not to be (llvmpipe and lavapipe compute it as a multiply and an add: it
// comes out 0), and then Dekker's product gives it, exact where nothing is fused.
fn keep(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ p.zero);
}

fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = keep(a + b);
    let v = keep(s - a);
    return vec2<f32>(s, (a - keep(s - v)) + (b - v));
}

// two_sum for |a| >= |b| (or a == 0).
fn fast_two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = keep(a + b);
    return vec2<f32>(s, b - keep(s - a));
}

// a = hi + lo, each half of a's significand (Veltkamp's split).
fn split(a: f32) -> vec2<f32> {
    let t = keep(4097.0 * a);
    let hi = keep(t - keep(t - a));
    return vec2<f32>(hi, a - hi);
}

fn two_prod(a: f32, b: f32) -> vec2<f32> {
    let p = keep(a * b);
    let fused = fma(a, b, -p);
    if (fused != 0.0) {
        return vec2<f32>(p, fused);
    }
    let x = split(a);
    let y = split(b);
    let e = keep(keep(keep(x.x * y.x - p) + x.x * y.y) + x.y * y.x) + x.y * y.y;
    return vec2<f32>(p, e);
}

fn df_add(x: vec2<f32>, y: vec2<f32>) -> vec2<f32> {
    let s = two_sum(x.x, y.x);
    let t = two_sum(x.y, y.y);
    let u = fast_two_sum(s.x, s.y + t.x);
    return fast_two_sum(u.x, u.y + t.y);
}

fn df_mul(x: vec2<f32>, y: vec2<f32>) -> vec2<f32> {
    let p = two_prod(x.x, y.x);
    return fast_two_sum(p.x, p.y + (x.x * y.y + x.y * y.x));
}

// x / d: the f32 quotient, corrected by its remainder (formed exactly).
fn df_div(x: vec2<f32>, d: vec2<f32>) -> vec2<f32> {
    let q = x.x / d.x;
    let r = df_add(x, -df_mul(vec2<f32>(q, 0.0), d));
    let q2 = r.x / d.x;
    let s = fast_two_sum(q, q2);
    let r2 = df_add(x, -df_mul(s, d));
    return df_add(s, vec2<f32>(r2.x / d.x, 0.0));
}

// sqrt(x) for x >= 0: the f32 root, corrected by its residual (Newton's step).
fn df_sqrt(x: vec2<f32>) -> vec2<f32> {
    if (x.x <= 0.0) {
        return vec2<f32>(0.0, 0.0);
    }
    var y = vec2<f32>(sqrt(x.x), 0.0);
    for (var i = 0u; i < 2u; i = i + 1u) {
        let r = df_add(x, -df_mul(y, y));
        y = df_add(y, vec2<f32>(r.x / (2.0 * y.x), 0.0));
    }
    return y;
}

// Column c of the row's gradient (df): the contributions of positions order[begin..end].
fn gradient(begin: u32, end: u32, c: u32) -> vec2<f32> {
    var g = vec2<f32>(0.0, 0.0);
    var b = 0u;
    for (var i = begin; i < end; i = i + 1u) {
        let j = batch[p.order_at + i];
        if (p.mode == 0u) {
            g = df_add(g, vec2<f32>(grad[j * p.dim + c], 0.0));
            continue;
        }
        b = bag_of(b, j);
        if (p.mode == 2u) {
            if (batch[p.argmax_at + b * p.dim + c] == j) {
                g = df_add(g, vec2<f32>(grad[grad_row(b) + c], 0.0));
            }
            continue;
        }
        var s = vec2<f32>(1.0, 0.0);
        if (p.has_weights != 0u) {
            s.x = bitcast<f32>(batch[p.weights_at + j]);
        }
        if (p.mean != 0u) {
            let len = f32(batch[p.offsets_at + b + 1u] - batch[p.offsets_at + b]);
            s = df_div(s, vec2<f32>(len, 0.0));
        }
        g = df_add(g, df_mul(s, vec2<f32>(grad[grad_row(b) + c], 0.0)));
    }
    return g;
}

// partial_sums: chunk q's contributions, column by column, into partials[q * dim + c].
// One workgroup per chunk.
@compute @workgroup_size(64)
fn partial_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = wid.x + wid.y * p.groups_x;
    if (q >= p.n_chunks) {
        return;
    }
    let begin = batch[p.chunks_at + 2u * q];
    let end = batch[p.chunks_at + 2u * q + 1u];
    for (var c = lid; c < p.dim; c = c + WG) {
        partials[q * p.dim + c] = gradient(begin, end, c);
    }
}

// Whether any of the positions order[begin..end] is its bag's argmax in column c (max
// bags): the row then has a gradient there.
fn picked(begin: u32, end: u32, c: u32) -> bool {
    var b = 0u;
    for (var i = begin; i < end; i = i + 1u) {
        let j = batch[p.order_at + i];
        b = bag_of(b, j);
        if (batch[p.argmax_at + b * p.dim + c] == j) {
            return true;
        }
    }
    return false;
}

// Row k's chunks [q0, q1) if it was split (q1 > q0), found by binary search over the split
// rows (a few hundred at most in practice; searched only for rows read that often).
fn chunks_of(k: u32) -> vec2<u32> {
    var lo = 0u;
    var hi = p.n_split;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        let at = batch[p.split_at + 3u * mid];
        if (at == k) {
            return vec2<u32>(batch[p.split_at + 3u * mid + 1u], batch[p.split_at + 3u * mid + 2u]);
        }
        if (at < k) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return vec2<u32>(0u, 0u);
}

// Column c of row k's gradient: from its chunks' partial sums if it was split, else summed
// over its positions.
fn row_gradient(begin: u32, end: u32, chunks: vec2<u32>, c: u32) -> vec2<f32> {
    if (chunks.y == chunks.x) {
        return gradient(begin, end, c);
    }
    var g = vec2<f32>(0.0, 0.0);
    for (var q = chunks.x; q < chunks.y; q = q + 1u) {
        g = df_add(g, partials[q * p.dim + c]);
    }
    return g;
}

// The sum (df) of every thread's `x`, reduced over the workgroup in a fixed order; every
// thread gets it. Called in uniform control flow only (it holds barriers).
fn workgroup_sum(lid: u32, x: vec2<f32>) -> vec2<f32> {
    partial[lid] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] = df_add(partial[lid], partial[lid + s]);
        }
        workgroupBarrier();
    }
    let total = partial[0];
    // (before any thread writes `partial` again)
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(64)
fn update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.x + wid.y * p.groups_x;
    // (k is the same for the whole workgroup: the barriers below stay uniform.)
    let live = k < p.n;
    var begin = 0u;
    var end = 0u;
    var base = 0u;
    var chunks = vec2<u32>(0u, 0u);
    if (live) {
        let d = p.first + k;
        begin = batch[p.starts_at + d];
        end = batch[p.starts_at + d + 1u];
        let at = select(k, batch[p.order_at + begin], p.by_position != 0u);
        base = slots[at] * p.stride;
        if (end - begin > p.split_over) {
            chunks = chunks_of(d);
        }
    }
    // Row-wise Adagrad: the row's mean squared gradient, reduced over the workgroup in a
    // fixed order.
    var sq = vec2<f32>(0.0, 0.0);
    if (live && p.optimizer == 1u) {
        for (var c = lid; c < p.dim; c = c + WG) {
            let g = row_gradient(begin, end, chunks, c);
            sq = df_add(sq, df_mul(g, g));
        }
    }
    let total_sq = workgroup_sum(lid, sq);
    // Thread 0 alone reads and writes the accumulator (rounded to f32 once), then shares
    // the step (df).
    if (live && lid == 0u) {
        var step = vec2<f32>(p.lr, 0.0);
        if (p.optimizer == 1u) {
            let mean_sq = df_div(total_sq, vec2<f32>(f32(p.dim), 0.0));
            let acc = df_add(vec2<f32>(rows[base + p.state_at], 0.0), mean_sq).x;
            rows[base + p.state_at] = acc;
            let root = df_sqrt(two_sum(acc, p.eps));
            step = df_div(vec2<f32>(p.lr, 0.0), root);
        }
        shared_step = step;
    }
    workgroupBarrier();
    let step = shared_step;
    if (p.optimizer == 2u && p.mode == 2u) {
        // Adam moves a row even where its gradient is 0 (its moments carry on): with max
        // bags, a row its bags' argmaxes never picked has no gradient at all, and is left
        // as it is (as PyTorch's sparse gradient leaves it out).
        var hits = 0.0;
        if (live) {
            for (var c = lid; c < p.dim; c = c + WG) {
                hits = hits + select(0.0, 1.0, picked(begin, end, c));
            }
        }
        if (workgroup_sum(lid, vec2<f32>(hits, 0.0)).x == 0.0) {
            return;
        }
    }
    if (!live) {
        return;
    }
    if (p.optimizer == 2u) {
        // Adam: each value's moments, then its step.
        for (var c = lid; c < p.dim; c = c + WG) {
            let g = row_gradient(begin, end, chunks, c).x;
            let at_m = base + p.state_at + c;
            let at_v = at_m + p.dim;
            let m = p.beta1 * rows[at_m] + (1.0 - p.beta1) * g;
            let v = p.beta2 * rows[at_v] + (1.0 - p.beta2) * g * g;
            rows[at_m] = m;
            rows[at_v] = v;
            rows[base + c] = rows[base + c] - step.x * (m / p.bias1) / (sqrt(v / p.bias2) + p.eps);
        }
        return;
    }
    // The row moves by its exact step, rounded once.
    for (var c = lid; c < p.dim; c = c + WG) {
        let moved = df_mul(step, row_gradient(begin, end, chunks, c));
        rows[base + c] = df_add(vec2<f32>(rows[base + c], 0.0), -moved).x;
    }
}

// argmax: for max bags, the first position of bag b holding the bag's largest value in
// column c, into batch[argmax_at + b * dim + c] (0xffffffff for an empty bag). Run over the
// batch's rows before `update` changes them. One thread per (bag, column); slots[j] is the
// slot of position j (or j itself with `identity`).
@compute @workgroup_size(256)
fn argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = grid_element(wid, lid, p.groups_x, p.n_bags, p.dim);
    if (at.x == 0xffffffffu) {
        return;
    }
    let b = at.x;
    let c = at.y;
    var best = 0xffffffffu;
    var top = 0.0;
    for (var j = batch[p.offsets_at + b]; j < batch[p.offsets_at + b + 1u]; j = j + 1u) {
        var s = j;
        if (p.identity == 0u) {
            s = slots[j];
        }
        let v = rows[s * p.stride + c];
        if (best == 0xffffffffu || v > top) {
            best = j;
            top = v;
        }
    }
    batch[p.argmax_at + b * p.dim + c] = best;
}

// a_t_b: out[j * dim + c] = sum over i < m of left[i * n + j] * right[i * dim + c], in i
// order (deterministic): the per-position gradient of a product, A^T B. For scores
// (out = Q E^T) left is the gradient (m x n) and right the queries (m x dim); for combine
// (out = X E) left is X (m x n) and right the gradient (m x dim). m = `n_bags`, n = `n`;
// left is binding 3, right binding 5, out binding 4; one thread per output value.
@group(0) @binding(5) var<storage, read> right: array<f32>;

@compute @workgroup_size(256)
fn a_t_b(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = grid_element(wid, lid, p.groups_x, p.n, p.dim);
    if (at.x == 0xffffffffu) {
        return;
    }
    let j = at.x;
    let c = at.y;
    var acc = 0.0;
    for (var i = 0u; i < p.n_bags; i = i + 1u) {
        acc = acc + grad[i * p.n + j] * right[i * p.dim + c];
    }
    rows[j * p.dim + c] = acc;
}
