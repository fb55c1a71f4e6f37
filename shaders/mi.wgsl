// Mutual-information estimators of Deep InfoMax over local–global scores.
//
// `scores` is [N, N·L]: row n holds u(n, n', i) = G(n)·L_i(n') for every image n' and location i
// (column n'·L + i). Positives are the columns of the row's own image (n' = n).
//
// JSD (fused forward/backward): `parts` threads per row, thread `part` taking every parts-th column
// from `part` on, so that neighbouring threads read neighbouring scores and a long row is spread
// over many threads (one thread per row was latency-bound on GPUs: a DIM step with 256 rows of
// 50176 scores took 58 ms on an H100, against 9 ms for a MoCo step):
//   loss = E_neg softplus(u) + E_pos softplus(−u)  (the −2 ln 2 constant dropped),
//   means over all N·L positives and N·(N−1)·L negatives of the batch; each thread writes its share
//   to `loss` so the total is their sum; d/du = σ(u)/#neg for negatives, −σ(−u)/#pos for positives.
//
// NCE: for each (image n, location i) a softmax over its positive u(n, n, i) and the (N−1)·L
// negatives u(n, n', ·), n' ≠ n; the loss is the mean over the N·L rows. `nce_rows` computes each
// row's log-sum-exp and loss, `nce_grad` gathers every score's gradient from the rows it is in
// (a negative sits in the L rows of its image n; a positive only in its own).

struct Params {
    n: u32,     // images N
    locs: u32,  // locations per image L
    accumulate: u32,
    parts: u32, // JSD: threads per row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> scores: array<f32>;
@group(1) @binding(1) var<storage, read_write> loss: array<f32>;
@group(1) @binding(2) var<storage, read_write> grad: array<f32>;

const WG: u32 = 64u;

fn softplus(x: f32) -> f32 {
    // Stable for large |x|.
    return max(x, 0.0) + log(1.0 + exp(-abs(x)));
}

fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

fn store(i: u32, v: f32) {
    grad[i] = select(0.0, grad[i], p.accumulate != 0u) + v;
}

@compute @workgroup_size(64)
fn jsd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.n * p.parts {
        return;
    }
    let row = i / p.parts;
    let cols = p.n * p.locs;
    // The row's positives are the columns of its own image.
    let pos_lo = row * p.locs;
    let pos_hi = pos_lo + p.locs;
    let n_pos = f32(cols);
    let n_neg = max(f32(cols) * f32(p.n - 1u), 1.0);
    var total = 0.0;
    for (var j = i % p.parts; j < cols; j += p.parts) {
        let e = row * cols + j;
        let u = scores[e];
        if j >= pos_lo && j < pos_hi {
            total += softplus(-u) / n_pos;
            store(e, -sigmoid(-u) / n_pos);
        } else {
            total += softplus(u) / n_neg;
            store(e, sigmoid(u) / n_neg);
        }
    }
    loss[i] = total;
}

// `loss` here holds 2·N·L words: the per-row losses, then the per-row log-sum-exps.
@compute @workgroup_size(64)
fn nce_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x; // row (n, i) = n·L + i
    let rows = p.n * p.locs;
    if r >= rows {
        return;
    }
    let n = r / p.locs;
    let cols = p.n * p.locs;
    let pos = scores[n * cols + r];
    var m = pos;
    for (var j = 0u; j < cols; j++) {
        if j / p.locs != n {
            m = max(m, scores[n * cols + j]);
        }
    }
    var s = exp(pos - m);
    for (var j = 0u; j < cols; j++) {
        if j / p.locs != n {
            s += exp(scores[n * cols + j] - m);
        }
    }
    let lse = m + log(s);
    loss[r] = (lse - pos) / f32(rows);
    loss[rows + r] = lse;
}

@compute @workgroup_size(64)
fn nce_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    let cols = p.n * p.locs;
    let rows = p.n * p.locs;
    if e >= p.n * cols {
        return;
    }
    let n = e / cols;
    let j = e % cols;
    let u = scores[e];
    var g = 0.0;
    if j / p.locs == n {
        // The positive of row (n, i = j mod L) only.
        g = exp(u - loss[rows + j]) - 1.0;
    } else {
        for (var i = 0u; i < p.locs; i++) {
            g += exp(u - loss[rows + n * p.locs + i]);
        }
    }
    store(e, g / f32(rows));
}
