// bag.wgsl: pooled bags. out[b] = pool over j in offsets[b]..offsets[b+1] of
// w[j] * rows[slot(j)], pooling sum (0), mean (1: the weighted sum over the bag length) or
// max (2, no weights); an empty bag gives zeros. The host prepends how rows are read (see
// RowLayout): `Elem` is vec4<f32> when the row width is a multiple of 4, else f32, `width`
// counts Elems per row, and `load_row` reads (and for f16 / int8 rows decodes) one Elem of
// the `rows` binding, whose storage type is `RowWord`.
//
// slot(j) = slots[j], or j itself when `identity` is set (rows already gathered in order).
//
// Output rows: bag b is row b of `out` (width Elems), unless `tables` > 0: then the bags are
// those of `tables` tables, `per_table` each, table-major (bag k is bag k % per_table of
// table k / per_table), and bag b of table t lands in row b of an output `out_stride` Elems
// wide, from column bags[cols_at + t] (table-batched bags: one row per sample, the tables'
// pooled rows side by side).
//
// Bindings (group 0), four storage buffers (the downlevel / WebGPU minimum per stage):
//   0  p      uniform              BagParams
//   1  slots  storage, read        array<u32>, one slot per id position
//   2  bags   storage, read        array<u32>: offsets (n_bags + 1 entries, the last = ids
//                                  length), then from `weights_at` one f32 weight per id
//                                  position as bits (read when has_weights), then from
//                                  `cols_at` each table's first output column (tables > 0)
//   3  rows   storage, read        array<RowWord>, the cache slots (or gathered rows)
//   4  out    storage, read_write  array<Elem>, n_bags x width (or per_table x out_stride)
//
// Dispatch: one thread per output Elem, 256-thread workgroups in a (groups_x, y) grid;
// `grid_element` (prepended by the host) gives a thread's bag and Elem. The threads of one
// bag read its rows at consecutive addresses (coalesced).

struct BagParams {
    n_bags: u32,
    width: u32,        // Elems per row
    groups_x: u32,
    mode: u32,         // 0 sum, 1 mean, 2 max
    has_weights: u32,
    identity: u32,
    weights_at: u32,   // index in `bags` of the first weight
    tables: u32,       // 0: plain output; else tables of `per_table` bags each
    per_table: u32,
    out_stride: u32,   // Elems per output row (tables > 0)
    cols_at: u32,      // index in `bags` of the tables' first output columns, in Elems
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: BagParams;
@group(0) @binding(1) var<storage, read> slots: array<u32>;
@group(0) @binding(2) var<storage, read> bags: array<u32>;
@group(0) @binding(3) var<storage, read> rows: array<RowWord>;
@group(0) @binding(4) var<storage, read_write> out: array<Elem>;

fn slot_of(j: u32) -> u32 {
    if (p.identity != 0u) {
        return j;
    }
    return slots[j];
}

fn weight_of(j: u32) -> f32 {
    if (p.has_weights != 0u) {
        return bitcast<f32>(bags[p.weights_at + j]);
    }
    return 1.0;
}

@compute @workgroup_size(256)
fn bag(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = grid_element(wid, lid, p.groups_x, p.n_bags, p.width);
    if (at.x == 0xffffffffu) {
        return;
    }
    let b = at.x;
    let c = at.y;
    let start = bags[b];
    let end = bags[b + 1u];
    var acc = Elem(0.0);
    if (p.mode == 2u) {
        acc = Elem(-3.402823e38);
    }
    // Four ids per step: their slot and row loads are independent, so four row reads are
    // in flight at once (a bag walk is bound by memory latency, not bandwidth).
    var j = start;
    for (; j + 4u <= end; j = j + 4u) {
        let v0 = load_row(slot_of(j), c, p.width);
        let v1 = load_row(slot_of(j + 1u), c, p.width);
        let v2 = load_row(slot_of(j + 2u), c, p.width);
        let v3 = load_row(slot_of(j + 3u), c, p.width);
        if (p.mode == 2u) {
            acc = max(max(acc, max(v0, v1)), max(v2, v3));
        } else {
            acc = acc + (weight_of(j) * v0 + weight_of(j + 1u) * v1) + (weight_of(j + 2u) * v2 + weight_of(j + 3u) * v3);
        }
    }
    for (; j < end; j = j + 1u) {
        let v = load_row(slot_of(j), c, p.width);
        if (p.mode == 2u) {
            acc = max(acc, v);
        } else {
            acc = acc + weight_of(j) * v;
        }
    }
    if (end == start) {
        acc = Elem(0.0);
    } else if (p.mode == 1u) {
        acc = acc / f32(end - start);
    }
    if (p.tables == 0u) {
        out[b * p.width + c] = acc;
    } else {
        let t = b / p.per_table;
        out[(b - t * p.per_table) * p.out_stride + bags[p.cols_at + t] + c] = acc;
    }
}
