// copy_rows.wgsl: moves whole rows between a row buffer addressed through slots (a table,
// or the cache's slots) and a plain buffer of rows in order:
//   gather  (scatter == 0): plain[offset + i] = table[slots[i]]   (lookups)
//   scatter (scatter == 1): table[slots[i]] = plain[offset + i]   (uploaded misses -> slots)
// for i in 0..n. The host prepends how rows are read (see RowLayout): `RowWord` is the
// storage type of the source binding, `Elem` the element a thread writes, and
// `load_row(row, c, width)` element c of a source row of `width` elements. Gathers from
// compact (f16, int8) rows decode them to f32 this way; scatters of compact rows move raw
// words (`Elem` = `RowWord` = u32, width = words per row); f32 rows are read as stored.
//
// The table may be split into shards (each one storage binding); the host dispatches once
// per shard, and a thread moves its element only when its slot falls in the bound shard,
// so every element is moved by exactly one dispatch. A scatter's slots are distinct (the
// host guarantees it), so no two threads write the same element.
//
// Bindings (group 0):
//   0  p      uniform              CopyParams
//   1  slots  storage, read        array<u32>, n entries: the table row of position i
//   2  rows   storage, read        array<RowWord>: the table shard (gather) or the plain
//                                  rows (scatter)
//   3  dst    storage, read_write  array<Elem>: the plain rows (gather) or the table shard
//                                  (scatter)
//
// Dispatch: workgroups of 256 threads over n * width threads, laid out as a (groups_x, y)
// grid so no dimension passes the adapter limit; `grid_element` (prepended by the host)
// gives a thread's position and Elem.

struct CopyParams {
    n: u32,           // positions moved by this dispatch
    width: u32,       // Elems per row
    groups_x: u32,    // workgroups along x in the dispatch grid
    offset: u32,      // first row of the plain buffer
    shard_base: u32,  // first table row held by the bound shard
    shard_rows: u32,  // table rows held by the bound shard
    scatter: u32,     // 0: gather, 1: scatter
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: CopyParams;
@group(0) @binding(1) var<storage, read> slots: array<u32>;
@group(0) @binding(2) var<storage, read> rows: array<RowWord>;
@group(0) @binding(3) var<storage, read_write> dst: array<Elem>;

@compute @workgroup_size(256)
fn copy_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let at = grid_element(wid, lid, p.groups_x, p.n, p.width);
    if (at.x == 0xffffffffu) {
        return;
    }
    let i = at.x;
    let c = at.y;
    // Unsigned wrap-around sends slots below the shard past shard_rows too.
    let local = slots[i] - p.shard_base;
    if (local >= p.shard_rows) {
        return;
    }
    if (p.scatter != 0u) {
        dst[local * p.width + c] = load_row(p.offset + i, c, p.width);
    } else {
        dst[(p.offset + i) * p.width + c] = load_row(local, c, p.width);
    }
}
