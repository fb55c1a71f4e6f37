// Sum, mean and max of a [rows, cols] matrix along either axis: out (+)= reduce(x).
//
// Three entry points, chosen by the launcher from the shape and the adapter:
// - `rows_thread`: one invocation per row, no barriers (short rows, or many rows on CPU adapters);
// - `rows_group`: one workgroup per row, a strided sweep then a tree in workgroup memory;
// - `cols_tile`: one workgroup per tile of `tx` adjacent columns, its 256 invocations laid out as
//   tx columns × (256 / tx) row lanes. Neighbouring invocations read neighbouring columns, so loads
//   stay contiguous whatever the column count; the row lanes are combined by a tree. tx = 1 turns
//   it into a plain 256-way reduction of a column (the 200000×1 → 1 case); tx = 256 into one
//   invocation per column, where the tree is skipped.

struct Params {
    rows: u32,
    cols: u32,
    op: u32,         // OP_* below
    accumulate: u32, // 1: out += v, 0: out = v
    tx: u32,         // cols_tile: columns per workgroup, a power of two dividing WG
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const OP_SUM: u32 = 0u;
const OP_MEAN: u32 = 1u;
const OP_MAX: u32 = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> x: array<f32>;
@group(1) @binding(1) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const WG_ROW: u32 = 64u;

var<workgroup> sh: array<f32, WG>;

fn identity() -> f32 {
    // -inf for max: an empty reduction stays -inf, like a max over nothing should.
    return select(0.0, bitcast<f32>(0xff800000u), p.op == OP_MAX);
}

fn combine(a: f32, b: f32) -> f32 {
    return select(a + b, max(a, b), p.op == OP_MAX);
}

fn finish(i: u32, v: f32, count: u32) {
    let r = select(v, v / f32(count), p.op == OP_MEAN);
    if p.accumulate != 0u {
        out[i] = out[i] + r;
    } else {
        out[i] = r;
    }
}

// Combines sh[lane + k * stride] over k in 0..count (count a power of two) into sh[lane], for
// every lane < stride. Ends with a barrier, so every invocation may read the results.
fn tree(lid: u32, stride: u32, count: u32) {
    var s = count / 2u;
    loop {
        if s == 0u {
            break;
        }
        workgroupBarrier();
        if lid < s * stride {
            sh[lid] = combine(sh[lid], sh[lid + s * stride]);
        }
        s = s / 2u;
    }
    workgroupBarrier();
}

// Combines the elements lane, lane + lanes, ... of a row.
fn sweep_row(row: u32, lane: u32, lanes: u32) -> f32 {
    var acc = identity();
    let base = row * p.cols;
    for (var j = lane; j < p.cols; j += lanes) {
        acc = combine(acc, x[base + j]);
    }
    return acc;
}

@compute @workgroup_size(64)
fn rows_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG_ROW;
    if row >= p.rows {
        return;
    }
    finish(row, sweep_row(row, 0u, 1u), p.cols);
}

@compute @workgroup_size(64)
fn rows_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    sh[lid] = sweep_row(row, lid, WG_ROW);
    tree(lid, 1u, WG_ROW);
    if lid == 0u {
        finish(row, sh[0], p.cols);
    }
}

@compute @workgroup_size(256)
fn cols_tile(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let tx = p.tx;
    let lanes = WG / tx;
    let col = (wid.x + wid.y * nwg.x) * tx + lid % tx;
    // Tiles of the last row of folded workgroups may lie past the end: they do no loads but
    // still take part in the barriers.
    var acc = identity();
    if col < p.cols {
        for (var r = lid / tx; r < p.rows; r += lanes) {
            acc = combine(acc, x[r * p.cols + col]);
        }
    }
    if lanes > 1u {
        sh[lid] = acc;
        tree(lid, tx, lanes);
        acc = sh[lid];
    }
    if lid < tx && col < p.cols {
        finish(col, acc, p.rows);
    }
}
