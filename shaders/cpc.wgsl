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
//
// Drawn candidates (random positions) score row r = (k, t, b) against the encodings at the
// positions idx[r, j] (n = b'·T + s, the rows of z as [B·T, D]) drawn on the host:
//
//   logits[r, j] = pred[b, t, k] · z[idx[r, j]]
//
// Their gradient of z is a gather too: the host also uploads, for every position, the list of
// flat indices r·C + j that name it (CSR: starts, entries), in increasing order.

struct Params {
    batch: u32, // B
    steps: u32, // T
    dim: u32, // D
    offsets: u32, // K
    rows: u32, // Σ_k (T − k)·B
    accumulate: u32,
    cols: u32, // C: candidates per row of drawn scores
    _pad: u32,
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

// Each score and gradient is a small GEMM per (offset, step) block. Every invocation computes an
// 8×8 register tile of one block, held in four mat4x4 and indexed only by constants (llvmpipe
// keeps those in registers; a dynamically indexed array would live in memory): sixteen loads per
// sixty-four multiply-adds and no barriers. Loads past the block's edge are clamped to its last
// row or column; only the stores are guarded.

const TILE: u32 = 8u;

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

// An 8×8 tile: rows 0–3 and 4–7 against columns 0–3 and 4–7.
struct Acc {
    c00: mat4x4<f32>,
    c01: mat4x4<f32>,
    c10: mat4x4<f32>,
    c11: mat4x4<f32>,
}

// acc += a ⊗ b for a column (a0: rows 0–3, a1: rows 4–7) and a row (b0, b1) of the two operands.
fn mac(acc: Acc, a0: vec4<f32>, a1: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>) -> Acc {
    var r = acc;
    r.c00 += mat4x4(a0.x * b0, a0.y * b0, a0.z * b0, a0.w * b0);
    r.c01 += mat4x4(a0.x * b1, a0.y * b1, a0.z * b1, a0.w * b1);
    r.c10 += mat4x4(a1.x * b0, a1.y * b0, a1.z * b0, a1.w * b0);
    r.c11 += mat4x4(a1.x * b1, a1.y * b1, a1.z * b1, a1.w * b1);
    return r;
}

// Row u (0–7) of the tile as two vec4 (columns 0–3, 4–7).
fn tile_row(acc: Acc, u: u32) -> array<vec4<f32>, 2> {
    switch u {
        case 0u: { return array(acc.c00[0], acc.c01[0]); }
        case 1u: { return array(acc.c00[1], acc.c01[1]); }
        case 2u: { return array(acc.c00[2], acc.c01[2]); }
        case 3u: { return array(acc.c00[3], acc.c01[3]); }
        case 4u: { return array(acc.c10[0], acc.c11[0]); }
        case 5u: { return array(acc.c10[1], acc.c11[1]); }
        case 6u: { return array(acc.c10[2], acc.c11[2]); }
        default: { return array(acc.c10[3], acc.c11[3]); }
    }
}

// Element (u, v) of the tile.
fn tile_at(acc: Acc, u: u32, v: u32) -> f32 {
    let row = tile_row(acc, u);
    return row[v / 4u][v % 4u];
}

// Eight indices starting at `first`, clamped to `last`.
fn eight(first: u32, last: u32) -> array<u32, 8> {
    return array(
        min(first, last), min(first + 1u, last), min(first + 2u, last), min(first + 3u, last),
        min(first + 4u, last), min(first + 5u, last), min(first + 6u, last), min(first + 7u, last),
    );
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
    let bi = eight(i0, nb - 1u);
    let bj = eight(j0, nb - 1u);
    let a = array(
        pred_at(bi[0], t, k), pred_at(bi[1], t, k), pred_at(bi[2], t, k), pred_at(bi[3], t, k),
        pred_at(bi[4], t, k), pred_at(bi[5], t, k), pred_at(bi[6], t, k), pred_at(bi[7], t, k),
    );
    let c = array(
        z_at(bj[0], t + k), z_at(bj[1], t + k), z_at(bj[2], t + k), z_at(bj[3], t + k),
        z_at(bj[4], t + k), z_at(bj[5], t + k), z_at(bj[6], t + k), z_at(bj[7], t + k),
    );
    var acc: Acc;
    for (var d = 0u; d < p.dim; d++) {
        acc = mac(
            acc,
            vec4(s_pred[a[0] + d], s_pred[a[1] + d], s_pred[a[2] + d], s_pred[a[3] + d]),
            vec4(s_pred[a[4] + d], s_pred[a[5] + d], s_pred[a[6] + d], s_pred[a[7] + d]),
            vec4(s_z[c[0] + d], s_z[c[1] + d], s_z[c[2] + d], s_z[c[3] + d]),
            vec4(s_z[c[4] + d], s_z[c[5] + d], s_z[c[6] + d], s_z[c[7] + d]),
        );
    }
    let row0 = off(k) + t * nb;
    for (var u = 0u; u < TILE && i0 + u < nb; u++) {
        for (var v = 0u; v < TILE && j0 + v < nb; v++) {
            s_logits[(row0 + i0 + u) * nb + j0 + v] = tile_at(acc, u, v);
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
    var acc: Acc;
    if t + k < p.steps {
        let row0 = off(k) + t * nb;
        let bi = eight(i0, nb - 1u);
        let a = array(
            (row0 + bi[0]) * nb, (row0 + bi[1]) * nb, (row0 + bi[2]) * nb, (row0 + bi[3]) * nb,
            (row0 + bi[4]) * nb, (row0 + bi[5]) * nb, (row0 + bi[6]) * nb, (row0 + bi[7]) * nb,
        );
        let c = eight(j0, p.dim - 1u);
        for (var b2 = 0u; b2 < nb; b2++) {
            let zr = z_at(b2, t + k);
            acc = mac(
                acc,
                vec4(gp_dlogits[a[0] + b2], gp_dlogits[a[1] + b2], gp_dlogits[a[2] + b2], gp_dlogits[a[3] + b2]),
                vec4(gp_dlogits[a[4] + b2], gp_dlogits[a[5] + b2], gp_dlogits[a[6] + b2], gp_dlogits[a[7] + b2]),
                vec4(gp_z[zr + c[0]], gp_z[zr + c[1]], gp_z[zr + c[2]], gp_z[zr + c[3]]),
                vec4(gp_z[zr + c[4]], gp_z[zr + c[5]], gp_z[zr + c[6]], gp_z[zr + c[7]]),
            );
        }
    }
    for (var u = 0u; u < TILE && i0 + u < nb; u++) {
        let base = pred_at(i0 + u, t, k) + j0;
        for (var v = 0u; v < TILE && j0 + v < p.dim; v++) {
            if p.accumulate != 0u {
                gp_dpred[base + v] += tile_at(acc, u, v);
            } else {
                gp_dpred[base + v] = tile_at(acc, u, v);
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
    let a = eight(i0, nb - 1u);
    let c = eight(j0, p.dim - 1u);
    var acc: Acc;
    for (var k = 1u; k <= min(p.offsets, s); k++) {
        let t = s - k;
        let row0 = off(k) + t * nb;
        for (var b = 0u; b < nb; b++) {
            let ar = (row0 + b) * nb;
            let pr = pred_at(b, t, k);
            acc = mac(
                acc,
                vec4(gz_dlogits[ar + a[0]], gz_dlogits[ar + a[1]], gz_dlogits[ar + a[2]], gz_dlogits[ar + a[3]]),
                vec4(gz_dlogits[ar + a[4]], gz_dlogits[ar + a[5]], gz_dlogits[ar + a[6]], gz_dlogits[ar + a[7]]),
                vec4(gz_pred[pr + c[0]], gz_pred[pr + c[1]], gz_pred[pr + c[2]], gz_pred[pr + c[3]]),
                vec4(gz_pred[pr + c[4]], gz_pred[pr + c[5]], gz_pred[pr + c[6]], gz_pred[pr + c[7]]),
            );
        }
    }
    for (var u = 0u; u < TILE && i0 + u < nb; u++) {
        let base = z_at(i0 + u, s) + j0;
        for (var v = 0u; v < TILE && j0 + v < p.dim; v++) {
            if p.accumulate != 0u {
                gz_dz[base + v] += tile_at(acc, u, v);
            } else {
                gz_dz[base + v] = tile_at(acc, u, v);
            }
        }
    }
}

// ---- drawn candidates -------------------------------------------------------------------------

// (k, t, b) of logits row r.
fn row_ktb(r: u32) -> vec3<u32> {
    let kt = block_kt(r / p.batch);
    return vec3<u32>(kt.x, kt.y, r % p.batch);
}

@group(1) @binding(0) var<storage, read_write> ga_z: array<f32>;
@group(1) @binding(1) var<storage, read_write> ga_pred: array<f32>;
@group(1) @binding(2) var<storage, read_write> ga_idx: array<u32>; // [rows, C]
@group(1) @binding(3) var<storage, read_write> ga_logits: array<f32>; // [rows, C]

// One invocation per score.
@compute @workgroup_size(64)
fn gather_scores(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if i >= p.rows * p.cols {
        return;
    }
    let key = row_ktb(i / p.cols);
    let a = pred_at(key.z, key.y, key.x);
    let c = ga_idx[i] * p.dim;
    var acc = 0.0;
    for (var d = 0u; d < p.dim; d++) {
        acc += ga_pred[a + d] * ga_z[c + d];
    }
    ga_logits[i] = acc;
}

@group(1) @binding(0) var<storage, read_write> gg_dlogits: array<f32>;
@group(1) @binding(1) var<storage, read_write> gg_z: array<f32>;
@group(1) @binding(2) var<storage, read_write> gg_idx: array<u32>;
@group(1) @binding(3) var<storage, read_write> gg_dpred: array<f32>;

// dpred[b, t, k, d] = Σ_j dlogits[r, j] · z[idx[r, j], d] for r = (k, t, b); 0 where t + k ≥ T.
// One invocation per element of dpred, so every element is written.
@compute @workgroup_size(64)
fn gather_grad_pred(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if i >= p.batch * p.steps * p.offsets * p.dim {
        return;
    }
    let d = i % p.dim;
    let slot = i / p.dim; // (b·T + t)·K + k − 1
    let k = slot % p.offsets + 1u;
    let t = (slot / p.offsets) % p.steps;
    let b = slot / (p.offsets * p.steps);
    var acc = 0.0;
    if t + k < p.steps {
        let row = (off(k) + t * p.batch + b) * p.cols;
        for (var j = 0u; j < p.cols; j++) {
            acc += gg_dlogits[row + j] * gg_z[gg_idx[row + j] * p.dim + d];
        }
    }
    if p.accumulate != 0u {
        gg_dpred[i] += acc;
    } else {
        gg_dpred[i] = acc;
    }
}

@group(1) @binding(0) var<storage, read_write> gw_dlogits: array<f32>;
@group(1) @binding(1) var<storage, read_write> gw_pred: array<f32>;
@group(1) @binding(2) var<storage, read_write> gw_starts: array<u32>; // [B·T + 1]
@group(1) @binding(3) var<storage, read_write> gw_entries: array<u32>; // [rows·C]
@group(1) @binding(4) var<storage, read_write> gw_dz: array<f32>;

// dz[n, d] = Σ over the entries e = r·C + j of position n: dlogits[e] · pred[r, d].
@compute @workgroup_size(64)
fn gather_grad_z(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if i >= p.batch * p.steps * p.dim {
        return;
    }
    let n = i / p.dim;
    let d = i % p.dim;
    var acc = 0.0;
    for (var e = gw_starts[n]; e < gw_starts[n + 1u]; e++) {
        let flat = gw_entries[e];
        let key = row_ktb(flat / p.cols);
        acc += gw_dlogits[flat] * gw_pred[pred_at(key.z, key.y, key.x) + d];
    }
    if p.accumulate != 0u {
        gw_dz[i] += acc;
    } else {
        gw_dz[i] = acc;
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
