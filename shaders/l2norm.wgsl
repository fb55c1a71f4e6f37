// Row-wise L2 normalisation y = x / max(‖x‖, EPS) and its backward. Each row is a sweep that
// takes a sum of products, then a sweep that writes the row. The `_group` entry points give a row
// a workgroup of 64 lanes, their sums combined by a tree in workgroup memory (wide rows on GPUs);
// the `_row` ones give it one invocation and no barriers (short rows, or many rows on CPU
// adapters, where barriers are expensive).
//
// Bindings are shared by both entry points: a, norms, b, c with
//   forward:  a = x,  norms = max(‖x‖, EPS) (written),  b = y (written)
//   backward: a = y,  norms (read),  b = dy,  c = dx (written or accumulated)

struct Params {
    rows: u32,
    cols: u32,
    accumulate: u32, // backward: 1: dx += v, 0: dx = v
    _pad: u32,
}

// PyTorch's F.normalize default.
const EPS: f32 = 1e-12;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> a: array<f32>;
@group(1) @binding(1) var<storage, read_write> norms: array<f32>;
@group(1) @binding(2) var<storage, read_write> b: array<f32>;
@group(1) @binding(3) var<storage, read_write> c: array<f32>;

var<workgroup> sh: array<f32, WG>;

// Sums v over the workgroup; every invocation gets the total.
fn group_sum(v: f32, lid: u32) -> f32 {
    sh[lid] = v;
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if lid < s {
            sh[lid] = sh[lid] + sh[lid + s];
        }
    }
    workgroupBarrier();
    return sh[0];
}

// Σ a·b over elements lane, lane + lanes, ... of the row at `base`: ⟨y, dy⟩ in the backward.
fn dot_ab(base: u32, lane: u32, lanes: u32) -> f32 {
    var acc = 0.0;
    for (var j = lane; j < p.cols; j += lanes) {
        acc += a[base + j] * b[base + j];
    }
    return acc;
}

// Σ a² over the same elements: the squared norm in the forward.
fn sum_sq(base: u32, lane: u32, lanes: u32) -> f32 {
    var acc = 0.0;
    for (var j = lane; j < p.cols; j += lanes) {
        let v = a[base + j];
        acc += v * v;
    }
    return acc;
}

fn write_y(row: u32, ss: f32, lane: u32, lanes: u32) {
    let base = row * p.cols;
    let nrm = max(sqrt(ss), EPS);
    for (var j = lane; j < p.cols; j += lanes) {
        b[base + j] = a[base + j] / nrm;
    }
    if lane == 0u {
        norms[row] = nrm;
    }
}

fn write_dx(row: u32, d: f32, lane: u32, lanes: u32) {
    let base = row * p.cols;
    let nrm = norms[row];
    for (var j = lane; j < p.cols; j += lanes) {
        let v = (b[base + j] - a[base + j] * d) / nrm;
        if p.accumulate != 0u {
            c[base + j] = c[base + j] + v;
        } else {
            c[base + j] = v;
        }
    }
}

fn row_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(64)
fn forward_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_index(gid, nwg);
    if row < p.rows {
        write_y(row, sum_sq(row * p.cols, 0u, 1u), 0u, 1u);
    }
}

@compute @workgroup_size(64)
fn backward_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_index(gid, nwg);
    if row < p.rows {
        write_dx(row, dot_ab(row * p.cols, 0u, 1u), 0u, 1u);
    }
}

@compute @workgroup_size(64)
fn forward_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if row < p.rows {
        write_y(row, group_sum(sum_sq(row * p.cols, lid, WG), lid), lid, WG);
    }
}

@compute @workgroup_size(64)
fn backward_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if row < p.rows {
        write_dx(row, group_sum(dot_ab(row * p.cols, lid, WG), lid), lid, WG);
    }
}

