// Batch normalisation over the columns of a row-major [rows, cols] matrix (NHWC activations read as
// [N·H·W, C]), with the rows split into `groups` equal contiguous blocks that each get their own
// statistics ("split BN"; groups = 1 is ordinary BN).
//
// The launcher prepends `alias V = f32;` or, when the channel count is a multiple of 4,
// `alias V = vec4<f32>;`: every buffer is then an array of V and every index and count below
// (`cols` included) is in units of V, so one thread handles four channels with 16-byte loads.
// (On llvmpipe this halves the time of the elementwise passes.)
//
// The row-walking passes are laid out the same way, with no workgroup memory or barriers (barriers
// are slow on software rasterisers): thread (chunk, column) walks `chunk` consecutive rows of one
// column, never crossing a group boundary. Neighbouring threads touch neighbouring columns of the
// same row, so accesses coalesce, and the integer divisions that locate a thread's column and group
// are paid once per chunk rather than once per element (per-element division dominated on
// llvmpipe). Reductions write one partial per (chunk, column) into the scratch area; a finishing
// pass merges them with `split` threads per column, which share the chunks and combine their
// results by a tree in workgroup memory: split = 64 on GPUs, where one thread looping over the
// chunks is latency-bound, and 1 on CPU adapters, where the tree (and its barriers) is skipped. The elementwise passes use shorter chunks.

// Scratch layout, with Q = groups·chunks partial rows of `cols` values (parts = Q·cols):
//   [0, parts)                   partial A (forward: chunk mean;  backward: Σ dy)
//   [parts, 2·parts)             partial B (forward: chunk M2;    backward: Σ dy·x̂)
//   [2·parts, +groups·cols)      backward only: Σ dy per (group, column)
//   [.., +groups·cols)           backward only: Σ dy·x̂ per (group, column)

struct Params {
    cols: u32,       // channels, in units of V
    groups: u32,     // statistics groups
    group_rows: u32, // rows / groups
    chunk: u32,      // rows walked by one thread in this pass
    chunks: u32,     // chunks per group in this pass
    eps: f32,
    momentum: f32,
    flag: u32,       // normalize: 1 = stats are running mean/var (eval); grad_input: 1 = accumulate
    parts: u32,      // partials per scratch half: groups · (reduction chunks per group) · cols
    relu: u32,       // 1: y = max(bn(x), 0), and the backward passes mask dy where bn(x) <= 0
    split: u32,      // finishing passes: threads per column sharing its chunks (1 or WG)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;

// Every entry point names its own bindings; entry points never share a binding layout.

// stats_partial
@group(1) @binding(0) var<storage, read_write> sp_x: array<V>;
@group(1) @binding(1) var<storage, read_write> sp_scratch: array<V>;

// stats_finish
@group(1) @binding(0) var<storage, read_write> sf_scratch: array<V>;
@group(1) @binding(1) var<storage, read_write> sf_mean: array<V>;
@group(1) @binding(2) var<storage, read_write> sf_invstd: array<V>;
@group(1) @binding(3) var<storage, read_write> sf_running_mean: array<V>;
@group(1) @binding(4) var<storage, read_write> sf_running_var: array<V>;

// normalize
@group(1) @binding(0) var<storage, read_write> nm_x: array<V>;
@group(1) @binding(1) var<storage, read_write> nm_gamma: array<V>;
@group(1) @binding(2) var<storage, read_write> nm_beta: array<V>;
@group(1) @binding(3) var<storage, read_write> nm_mean: array<V>;
@group(1) @binding(4) var<storage, read_write> nm_scale: array<V>; // invstd, or running var (eval)
@group(1) @binding(5) var<storage, read_write> nm_y: array<V>;

// grad_partial
@group(1) @binding(0) var<storage, read_write> gp_x: array<V>;
@group(1) @binding(1) var<storage, read_write> gp_dy: array<V>;
@group(1) @binding(2) var<storage, read_write> gp_mean: array<V>;
@group(1) @binding(3) var<storage, read_write> gp_invstd: array<V>;
@group(1) @binding(4) var<storage, read_write> gp_scratch: array<V>;
@group(1) @binding(5) var<storage, read_write> gp_gamma: array<V>;
@group(1) @binding(6) var<storage, read_write> gp_beta: array<V>;

// grad_finish
@group(1) @binding(0) var<storage, read_write> gf_scratch: array<V>;
@group(1) @binding(1) var<storage, read_write> gf_dgamma: array<V>;
@group(1) @binding(2) var<storage, read_write> gf_dbeta: array<V>;

// grad_input
@group(1) @binding(0) var<storage, read_write> gi_x: array<V>;
@group(1) @binding(1) var<storage, read_write> gi_dy: array<V>;
@group(1) @binding(2) var<storage, read_write> gi_gamma: array<V>;
@group(1) @binding(3) var<storage, read_write> gi_mean: array<V>;
@group(1) @binding(4) var<storage, read_write> gi_invstd: array<V>;
@group(1) @binding(5) var<storage, read_write> gi_scratch: array<V>;
@group(1) @binding(6) var<storage, read_write> gi_dx: array<V>;
@group(1) @binding(7) var<storage, read_write> gi_beta: array<V>;

// Where thread `i` works: its column, its index s = group·cols + column into [groups, cols]
// statistics, the first element it touches and how many rows it walks.
struct Chunk {
    c: u32,
    s: u32,
    start: u32,
    n: u32,
}

fn chunk_of(i: u32) -> Chunk {
    let c = i % p.cols;
    let q = i / p.cols;
    let g = q / p.chunks;
    let k = q % p.chunks;
    let row = g * p.group_rows + k * p.chunk;
    return Chunk(c, g * p.cols + c, row * p.cols + c, min(p.chunk, p.group_rows - k * p.chunk));
}

// Per chunk: mean and M2 = Σ (x - mean)². Sums are taken about the chunk's first value, so a large
// common offset does not cancel catastrophically as it does in E[x²] - E[x]².
@compute @workgroup_size(64)
fn stats_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.parts {
        return;
    }
    let ch = chunk_of(i);
    var idx = ch.start;
    let shift = sp_x[idx];
    var s1 = V(0.0);
    var s2 = V(0.0);
    for (var r = 0u; r < ch.n; r++) {
        let d = sp_x[idx] - shift;
        s1 += d;
        s2 += d * d;
        idx += p.cols;
    }
    let m = s1 / f32(ch.n);
    sp_scratch[i] = shift + m;
    sp_scratch[p.parts + i] = max(s2 - s1 * m, V(0.0));
}

// Count, mean and M2 = Σ (x - mean)² of a set of rows.
struct Moments {
    n: f32,
    mean: V,
    m2: V,
}

// The moments of the union of two disjoint sets (Chan et al.).
fn merge(a: Moments, b: Moments) -> Moments {
    let n = a.n + b.n;
    if n == 0.0 {
        return a;
    }
    let d = b.mean - a.mean;
    let f = b.n / n;
    return Moments(n, a.mean + d * f, a.m2 + b.m2 + d * d * (a.n * f));
}

var<workgroup> wg_n: array<f32, WG>;
var<workgroup> wg_a: array<V, WG>;
var<workgroup> wg_b: array<V, WG>;

// Merges the moments held by the `split` threads of one column (consecutive local indices) by a
// tree in workgroup memory; the column's first thread gets the result. With split = 1 there is
// nothing to merge and no barrier to pay for.
fn column_merge(lid: u32, m: Moments) -> Moments {
    if p.split == 1u {
        return m;
    }
    wg_n[lid] = m.n;
    wg_a[lid] = m.mean;
    wg_b[lid] = m.m2;
    workgroupBarrier();
    let lane = lid % p.split;
    for (var s = p.split / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            let r = merge(Moments(wg_n[lid], wg_a[lid], wg_b[lid]),
                          Moments(wg_n[lid + s], wg_a[lid + s], wg_b[lid + s]));
            wg_n[lid] = r.n;
            wg_a[lid] = r.mean;
            wg_b[lid] = r.m2;
        }
        workgroupBarrier();
    }
    let out = Moments(wg_n[lid], wg_a[lid], wg_b[lid]);
    // The next call overwrites the slots.
    workgroupBarrier();
    return out;
}

// Where a finishing thread works: its column (possibly past the last one: such threads only take
// part in the barriers), its lane among the column's `split` threads, and the first chunk it
// merges (every split-th chunk from there on).
struct Finish {
    c: u32,
    lane: u32,
    first: u32,
    writes: bool,
}

fn finish_of(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Finish {
    let c = (wid.x + wid.y * nwg.x) * (WG / p.split) + lid / p.split;
    let lane = lid % p.split;
    let valid = c < p.cols;
    return Finish(c, lane, select(p.chunks, lane, valid), valid && lane == 0u);
}

// Merges the chunks of each group, writes the group's mean and 1/sqrt(biased var + eps), and moves
// the running statistics toward the average over groups of the group mean and UNBIASED group
// variance (PyTorch's convention).
@compute @workgroup_size(64)
fn stats_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let f = finish_of(wid, nwg, lid);
    let n = f32(p.group_rows);
    var mean_sum = V(0.0);
    var var_sum = V(0.0);
    for (var g = 0u; g < p.groups; g++) {
        var m = Moments(0.0, V(0.0), V(0.0));
        for (var k = f.first; k < p.chunks; k += p.split) {
            let j = (g * p.chunks + k) * p.cols + f.c;
            let nb = f32(min(p.chunk, p.group_rows - k * p.chunk));
            m = merge(m, Moments(nb, sf_scratch[j], sf_scratch[p.parts + j]));
        }
        let t = column_merge(lid, m);
        if f.writes {
            sf_mean[g * p.cols + f.c] = t.mean;
            sf_invstd[g * p.cols + f.c] = inverseSqrt(t.m2 / n + p.eps);
        }
        mean_sum += t.mean;
        // A one-row group has no unbiased variance; its (zero) biased variance is used instead.
        var_sum += t.m2 / max(n - 1.0, 1.0);
    }
    if f.writes {
        let inv_g = 1.0 / f32(p.groups);
        let m = p.momentum;
        sf_running_mean[f.c] = (1.0 - m) * sf_running_mean[f.c] + m * mean_sum * inv_g;
        sf_running_var[f.c] = (1.0 - m) * sf_running_var[f.c] + m * var_sum * inv_g;
    }
}

// y = (x - mean)·scale + beta with scale = gamma·invstd (subtracting first keeps precision when
// the mean is large). In eval mode (flag 1) `nm_scale` holds the running variance.
@compute @workgroup_size(64)
fn normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.groups * p.chunks * p.cols {
        return;
    }
    let ch = chunk_of(i);
    var inv = nm_scale[ch.s];
    if p.flag != 0u {
        inv = inverseSqrt(inv + p.eps);
    }
    let scale = nm_gamma[ch.c] * inv;
    let mean = nm_mean[ch.s];
    let beta = nm_beta[ch.c];
    var idx = ch.start;
    for (var r = 0u; r < ch.n; r++) {
        let y = (nm_x[idx] - mean) * scale + beta;
        nm_y[idx] = select(y, max(y, V(0.0)), p.relu != 0u);
        idx += p.cols;
    }
}

// dy where the fused ReLU let bn(x) = xm·scale + beta through (xm = x - mean), zero elsewhere; the
// same expression as `normalize`, so the mask matches the forward's exactly.
fn relu_mask(dy: V, xm: V, scale: V, beta: V) -> V {
    return select(dy, select(V(0.0), dy, xm * scale + beta > V(0.0)), p.relu != 0u);
}

// Per chunk: Σ dy and Σ dy·x̂.
@compute @workgroup_size(64)
fn grad_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.parts {
        return;
    }
    let ch = chunk_of(i);
    let mean = gp_mean[ch.s];
    let scale = gp_gamma[ch.c] * gp_invstd[ch.s];
    let beta = gp_beta[ch.c];
    var idx = ch.start;
    var sdy = V(0.0);
    var sdyx = V(0.0);
    for (var r = 0u; r < ch.n; r++) {
        let xm = gp_x[idx] - mean;
        let d = relu_mask(gp_dy[idx], xm, scale, beta);
        sdy += d;
        sdyx += d * xm;
        idx += p.cols;
    }
    gp_scratch[i] = sdy;
    gp_scratch[p.parts + i] = sdyx * gp_invstd[ch.s];
}

// Per-group sums for grad_input, and dgamma += Σ dy·x̂, dbeta += Σ dy over all groups (parameter
// gradients always accumulate). The sums reuse the moments tree with zero means, where a merge
// adds the M2 slots.
@compute @workgroup_size(64)
fn grad_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let f = finish_of(wid, nwg, lid);
    let sums = 2u * p.parts;
    let gc = p.groups * p.cols;
    var dbeta = V(0.0);
    var dgamma = V(0.0);
    for (var g = 0u; g < p.groups; g++) {
        var sdy = V(0.0);
        var sdyx = V(0.0);
        for (var k = f.first; k < p.chunks; k += p.split) {
            let j = (g * p.chunks + k) * p.cols + f.c;
            sdy += gf_scratch[j];
            sdyx += gf_scratch[p.parts + j];
        }
        let t = column_merge(lid, Moments(1.0, V(0.0), sdy)).m2;
        let u = column_merge(lid, Moments(1.0, V(0.0), sdyx)).m2;
        if f.writes {
            gf_scratch[sums + g * p.cols + f.c] = t;
            gf_scratch[sums + gc + g * p.cols + f.c] = u;
        }
        dbeta += t;
        dgamma += u;
    }
    if f.writes {
        gf_dgamma[f.c] += dgamma;
        gf_dbeta[f.c] += dbeta;
    }
}

// dx = gamma·invstd·(dy - (Σ dy + x̂·Σ dy·x̂)/n) with sums over the row's group, rewritten as
// dx = a·dy + b·(x - mean) + d with a, b, d constant per (group, column) (dy masked by the fused
// ReLU, as in the sums).
@compute @workgroup_size(64)
fn grad_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.groups * p.chunks * p.cols {
        return;
    }
    let ch = chunk_of(i);
    let sums = 2u * p.parts;
    let inv = gi_invstd[ch.s];
    let inv_n = 1.0 / f32(p.group_rows);
    let sdy = gi_scratch[sums + ch.s] * inv_n;
    let sdyx = gi_scratch[sums + p.groups * p.cols + ch.s] * inv_n;
    let a = gi_gamma[ch.c] * inv;
    let b = -a * sdyx * inv;
    let d = -a * sdy;
    let mean = gi_mean[ch.s];
    let beta = gi_beta[ch.c];
    var idx = ch.start;
    if p.flag != 0u {
        for (var r = 0u; r < ch.n; r++) {
            let xm = gi_x[idx] - mean;
            gi_dx[idx] += a * relu_mask(gi_dy[idx], xm, a, beta) + b * xm + d;
            idx += p.cols;
        }
    } else {
        for (var r = 0u; r < ch.n; r++) {
            let xm = gi_x[idx] - mean;
            gi_dx[idx] = a * relu_mask(gi_dy[idx], xm, a, beta) + b * xm + d;
            idx += p.cols;
        }
    }
}
