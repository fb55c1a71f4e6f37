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

@group(1) @binding(0) var<storage, read_write> s_z: array<f32>;
@group(1) @binding(1) var<storage, read_write> s_pred: array<f32>;
@group(1) @binding(2) var<storage, read_write> s_logits: array<f32>; // [rows, B]

@compute @workgroup_size(64)
fn scores(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if i >= p.rows * p.batch {
        return;
    }
    let r = i / p.batch;
    let b2 = i % p.batch;
    var k = 1u;
    while k < p.offsets && r >= off(k + 1u) {
        k++;
    }
    let local = r - off(k);
    let t = local / p.batch;
    let b = local % p.batch;
    let a = pred_at(b, t, k);
    let c = z_at(b2, t + k);
    var acc = 0.0;
    for (var d = 0u; d < p.dim; d++) {
        acc += s_pred[a + d] * s_z[c + d];
    }
    s_logits[i] = acc;
}

@group(1) @binding(0) var<storage, read_write> gp_dlogits: array<f32>;
@group(1) @binding(1) var<storage, read_write> gp_z: array<f32>;
@group(1) @binding(2) var<storage, read_write> gp_dpred: array<f32>;

// dpred[b, t, k, d] = Σ_b' dlogits[r(k, t, b), b'] · z[b', t + k, d]; 0 where t + k ≥ T.
@compute @workgroup_size(64)
fn grad_pred(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if i >= p.batch * p.steps * p.offsets * p.dim {
        return;
    }
    let d = i % p.dim;
    let k = (i / p.dim) % p.offsets + 1u;
    let bt = i / (p.dim * p.offsets);
    let t = bt % p.steps;
    let b = bt / p.steps;
    var acc = 0.0;
    if t + k < p.steps {
        let row = (off(k) + t * p.batch + b) * p.batch;
        for (var b2 = 0u; b2 < p.batch; b2++) {
            acc += gp_dlogits[row + b2] * gp_z[z_at(b2, t + k) + d];
        }
    }
    if p.accumulate != 0u {
        gp_dpred[i] += acc;
    } else {
        gp_dpred[i] = acc;
    }
}

@group(1) @binding(0) var<storage, read_write> gz_dlogits: array<f32>;
@group(1) @binding(1) var<storage, read_write> gz_pred: array<f32>;
@group(1) @binding(2) var<storage, read_write> gz_dz: array<f32>;

// dz[b', s, d] = Σ_{k ≤ s} Σ_b dlogits[r(k, s − k, b), b'] · pred[b, s − k, k, d].
@compute @workgroup_size(64)
fn grad_z(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if i >= p.batch * p.steps * p.dim {
        return;
    }
    let d = i % p.dim;
    let s = (i / p.dim) % p.steps;
    let b2 = i / (p.dim * p.steps);
    var acc = 0.0;
    for (var k = 1u; k <= min(p.offsets, s); k++) {
        let t = s - k;
        let base = off(k) + t * p.batch;
        for (var b = 0u; b < p.batch; b++) {
            acc += gz_dlogits[(base + b) * p.batch + b2] * gz_pred[pred_at(b, t, k) + d];
        }
    }
    if p.accumulate != 0u {
        gz_dz[i] += acc;
    } else {
        gz_dz[i] = acc;
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
