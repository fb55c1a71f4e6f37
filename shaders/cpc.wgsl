// Contrastive Predictive Coding scores and their gradients, and the image patch grid CPC reads.
//
// z [B, T, D] are the encodings, pred [B, T, K·D] the predictions W_k·c_t of every offset
// k = 1..K side by side. For each k and each step t < T − k, the prediction of sequence b is
// scored against every sequence's encoding at step t + k (the negatives are the other sequences
// at the same step):
//
//   logits[r, b'] = pred[b, t, k] · z[b', t + k],   r = off(k) + t·B + b,
//   off(k) = B · Σ_{k' < k} (T − k')
//
// so the positive of row r is column b = r mod B, and a plain row softmax over candidates
// follows. The two gradients are gathers over that layout (no float atomics, no scatter).

struct Params {
    batch: u32, // B
    steps: u32, // T
    dim: u32, // D
    offsets: u32, // K
    rows: u32, // Σ_k (T − k)·B
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Row offset of offset k (1-based) in the logits.
fn off(k: u32) -> u32 {
    return p.batch * ((k - 1u) * p.steps - (k - 1u) * k / 2u);
}

// Where prediction (b, t, k) starts in pred.
fn pred_at(b: u32, t: u32, k: u32) -> u32 {
    return ((b * p.steps + t) * p.offsets + k - 1u) * p.dim;
}

fn z_at(b: u32, t: u32) -> u32 {
    return (b * p.steps + t) * p.dim;
}

// Each score and gradient is a small GEMM per (offset, step) block. Every invocation computes a
// 4×4 register tile of one block: barrier-free, eight loads per sixteen multiply-adds, which is
// what llvmpipe (and any GPU) needs far more than one dot product per invocation.

const TILE: u32 = 16u;

fn tiles(n: u32) -> u32 {
    return (n + TILE - 1u) / TILE;
}

// The (k, t) of valid block `blk` (t < T − k), in logits row order.
fn block_kt(blk: u32) -> vec2<u32> {
    var k = 1u;
    var first = 0u;
    while k < p.offsets && blk >= first + p.steps - k {
        first += p.steps - k;
        k++;
    }
    return vec2<u32>(k, blk - first);
}

@group(1) @binding(0) var<storage, read_write> s_z: array<f32>;
@group(1) @binding(1) var<storage, read_write> s_pred: array<f32>;
@group(1) @binding(2) var<storage, read_write> s_logits: array<f32>; // [rows, B]

// logits[(k, t) block][b, b'] = pred[b, t, k] · z[b', t + k].
@compute @workgroup_size(64)
fn scores(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let nb = p.batch;
    let per_block = tiles(nb) * tiles(nb);
    if i >= (p.rows / nb) * per_block {
        return;
    }
    let kt = block_kt(i / per_block);
    let k = kt.x;
    let t = kt.y;
    let i0 = (i % per_block) / tiles(nb) * TILE;
    let j0 = (i % per_block) % tiles(nb) * TILE;
    var ai: array<u32, 16>;
    var bj: array<u32, 16>;
    for (var u = 0u; u < TILE; u++) {
        ai[u] = pred_at(min(i0 + u, nb - 1u), t, k);
        bj[u] = z_at(min(j0 + u, nb - 1u), t + k);
    }
    var acc: array<array<f32, 16>, 16>;
    for (var d = 0u; d < p.dim; d++) {
        var a: array<f32, 16>;
        var b: array<f32, 16>;
        for (var u = 0u; u < TILE; u++) {
            a[u] = s_pred[ai[u] + d];
            b[u] = s_z[bj[u] + d];
        }
        for (var u = 0u; u < TILE; u++) {
            for (var v = 0u; v < TILE; v++) {
                acc[u][v] += a[u] * b[v];
            }
        }
    }
    let row0 = off(k) + t * nb;
    for (var u = 0u; u < TILE && i0 + u < nb; u++) {
        for (var v = 0u; v < TILE && j0 + v < nb; v++) {
            s_logits[(row0 + i0 + u) * nb + j0 + v] = acc[u][v];
        }
    }
}

@group(1) @binding(0) var<storage, read_write> gp_dlogits: array<f32>;
@group(1) @binding(1) var<storage, read_write> gp_z: array<f32>;
@group(1) @binding(2) var<storage, read_write> gp_dpred: array<f32>;

// dpred[b, t, k, d] = Σ_b' dlogits[r(k, t, b), b'] · z[b', t + k, d]; 0 where t + k ≥ T.
// Blocks are every (k, t), the empty ones included, so every element is written.
@compute @workgroup_size(64)
fn grad_pred(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let nb = p.batch;
    let per_block = tiles(nb) * tiles(p.dim);
    if i >= p.offsets * p.steps * per_block {
        return;
    }
    let blk = i / per_block;
    let k = blk / p.steps + 1u;
    let t = blk % p.steps;
    let i0 = (i % per_block) / tiles(p.dim) * TILE; // sequences b
    let j0 = (i % per_block) % tiles(p.dim) * TILE; // features d
    var acc: array<array<f32, 16>, 16>;
    if t + k < p.steps {
        let row0 = off(k) + t * nb;
        var ar: array<u32, 16>;
        for (var u = 0u; u < TILE; u++) {
            ar[u] = (row0 + min(i0 + u, nb - 1u)) * nb;
        }
        let jd = min(j0 + TILE, p.dim) - 1u;
        for (var b2 = 0u; b2 < nb; b2++) {
            let zr = z_at(b2, t + k);
            var a: array<f32, 16>;
            var b: array<f32, 16>;
            for (var u = 0u; u < TILE; u++) {
                a[u] = gp_dlogits[ar[u] + b2];
                b[u] = gp_z[zr + min(j0 + u, jd)];
            }
            for (var u = 0u; u < TILE; u++) {
                for (var v = 0u; v < TILE; v++) {
                    acc[u][v] += a[u] * b[v];
                }
            }
        }
    }
    for (var u = 0u; u < TILE && i0 + u < nb; u++) {
        let base = pred_at(i0 + u, t, k) + j0;
        for (var v = 0u; v < TILE && j0 + v < p.dim; v++) {
            if p.accumulate != 0u {
                gp_dpred[base + v] += acc[u][v];
            } else {
                gp_dpred[base + v] = acc[u][v];
            }
        }
    }
}

@group(1) @binding(0) var<storage, read_write> gz_dlogits: array<f32>;
@group(1) @binding(1) var<storage, read_write> gz_pred: array<f32>;
@group(1) @binding(2) var<storage, read_write> gz_dz: array<f32>;

// dz[b', s, d] = Σ_{k ≤ s} Σ_b dlogits[r(k, s − k, b), b'] · pred[b, s − k, k, d].
@compute @workgroup_size(64)
fn grad_z(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let nb = p.batch;
    let per_block = tiles(nb) * tiles(p.dim);
    if i >= p.steps * per_block {
        return;
    }
    let s = i / per_block;
    let i0 = (i % per_block) / tiles(p.dim) * TILE; // sequences b'
    let j0 = (i % per_block) % tiles(p.dim) * TILE; // features d
    let ib = min(i0 + TILE, nb) - 1u;
    let jd = min(j0 + TILE, p.dim) - 1u;
    var acc: array<array<f32, 16>, 16>;
    for (var k = 1u; k <= min(p.offsets, s); k++) {
        let t = s - k;
        let row0 = off(k) + t * nb;
        for (var b = 0u; b < nb; b++) {
            let ar = (row0 + b) * nb;
            let pr = pred_at(b, t, k);
            var a: array<f32, 16>;
            var c: array<f32, 16>;
            for (var u = 0u; u < TILE; u++) {
                a[u] = gz_dlogits[ar + min(i0 + u, ib)];
                c[u] = gz_pred[pr + min(j0 + u, jd)];
            }
            for (var u = 0u; u < TILE; u++) {
                for (var v = 0u; v < TILE; v++) {
                    acc[u][v] += a[u] * c[v];
                }
            }
        }
    }
    for (var u = 0u; u < TILE && i0 + u < nb; u++) {
        let base = z_at(i0 + u, s) + j0;
        for (var v = 0u; v < TILE && j0 + v < p.dim; v++) {
            if p.accumulate != 0u {
                gz_dz[base + v] += acc[u][v];
            } else {
                gz_dz[base + v] = acc[u][v];
            }
        }
    }
}

// ---- image patch grid -------------------------------------------------------------------------

struct PatchParams {
    n: u32,
    h: u32,
    w: u32,
    c: u32,
    size: u32, // P
    stride: u32,
    grid_h: u32, // patches down a column
    grid_w: u32, // columns
}

@group(0) @binding(0) var<uniform> q: PatchParams;
@group(1) @binding(0) var<storage, read_write> pt_x: array<f32>; // [N, H, W, C]
@group(1) @binding(1) var<storage, read_write> pt_out: array<f32>; // [N·Gw·Gh, P, P, C]

// Patches are ordered (image, column, row): each column of the grid is one sequence running
// down the image, which is how CPC's context reads images.
@compute @workgroup_size(64)
fn patches(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let per_patch = q.size * q.size * q.c;
    if i >= q.n * q.grid_w * q.grid_h * per_patch {
        return;
    }
    let pidx = i / per_patch;
    let e = i % per_patch;
    let ch = e % q.c;
    let px = (e / q.c) % q.size;
    let py = e / (q.c * q.size);
    let row = pidx % q.grid_h;
    let col = (pidx / q.grid_h) % q.grid_w;
    let img = pidx / (q.grid_h * q.grid_w);
    let y = row * q.stride + py;
    let x = col * q.stride + px;
    pt_out[i] = pt_x[((img * q.h + y) * q.w + x) * q.c + ch];
}

// ---- per-offset statistics --------------------------------------------------------------------

@group(1) @binding(0) var<storage, read_write> st_loss: array<f32>; // [rows]
@group(1) @binding(1) var<storage, read_write> st_hits: array<f32>; // [rows]
@group(1) @binding(2) var<storage, read_write> st_out: array<f32>; // [2 + 2K]

// Invocation 0 averages every row, invocation k the rows of offset k: out[2k] is the mean loss
// and out[2k + 1] the accuracy, so every offset is counted, not only the last.
@compute @workgroup_size(64)
fn offset_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    if k > p.offsets {
        return;
    }
    var start = 0u;
    var end = p.rows;
    if k > 0u {
        start = off(k);
        end = start + (p.steps - k) * p.batch;
    }
    var loss = 0.0;
    var hits = 0.0;
    for (var r = start; r < end; r++) {
        loss += st_loss[r];
        hits += st_hits[r];
    }
    let n = f32(end - start);
    st_out[2u * k] = loss / n;
    st_out[2u * k + 1u] = hits / n;
}
