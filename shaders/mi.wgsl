// Mutual-information estimators of Deep InfoMax over local–global scores.
//
// `scores` is [N, N·L]: row n holds u(n, n', i) = G(n)·L_i(n') for every image n' and location i
// (column n'·L + i). Positives are the columns of the row's own image (n' = n).
//
// JSD (fused forward/backward): `parts` threads per row, thread `part` taking every parts-th column
// from `part` on, so that neighbouring threads read neighbouring scores and a long row is spread
// over many threads (one thread per row is latency-bound on GPUs, whose DIM rows hold tens of
// thousands of scores):
//   loss = E_neg softplus(u) + E_pos softplus(−u)  (the −2 ln 2 constant dropped),
//   means over all N·L positives and N·(N−1)·L negatives of the batch; each thread writes its share
//   to `loss` so the total is their sum; d/du = σ(u)/#neg for negatives, −σ(−u)/#pos for positives.
//
// NCE: for each (image n, location i) a softmax over its positive u(n, n, i) and the (N−1)·L
// negatives u(n, n', ·), n' ≠ n; the loss is the mean over the N·L rows. All L rows of image n share
// their negatives, so their sums are taken once per image: `nce_partial` reduces the negatives of
// score row n in `parts` strided pieces (max, then Σ exp); `nce_rows`, one thread per image, merges
// them and adds each location's positive to get its log-sum-exp and loss; `nce_grad` gives every
// score its gradient in O(1): a positive's is its own softmax weight − 1, a negative's the sum of
// its softmax weights over the image's L rows, Σ_i exp(u − lse_i) = exp(u − c)·Σ_i exp(c − lse_i)
// with c = min_i lse_i (both factors ≤ 1 and ≤ L, since every lse_i ≥ u). (Looping over all N·L
// columns for each of the N·L rows would make the step quadratic in N·L.)
//
// `loss` layout for NCE, with R = N·L and Q = N·parts: [0, R) row losses, [R, 2R) row log-sum-exps,
// [2R, 2R + Q) partial maxima, [2R + Q, 2R + 2Q) partial sums, then per image c and Σ_i exp(c − lse_i).

struct Params {
    n: u32,     // images N
    locs: u32,  // locations per image L
    accumulate: u32,
    parts: u32, // threads per score row (JSD; NCE partial sums)
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

// Most negative finite f32: a max over nothing, whose exp(m − m') is 0 rather than NaN.
const LOWEST: f32 = -3.4028235e38;

fn nce_partials() -> u32 {
    return 2u * p.n * p.locs;
}

fn nce_images() -> u32 {
    return nce_partials() + 2u * p.n * p.parts;
}

@compute @workgroup_size(64)
fn nce_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG; // (image n, part)
    if t >= p.n * p.parts {
        return;
    }
    let n = t / p.parts;
    let cols = p.n * p.locs;
    let lo = n * p.locs;
    let hi = lo + p.locs;
    let first = t % p.parts;
    var m = LOWEST;
    for (var j = first; j < cols; j += p.parts) {
        if j < lo || j >= hi {
            m = max(m, scores[n * cols + j]);
        }
    }
    var s = 0.0;
    for (var j = first; j < cols; j += p.parts) {
        if j < lo || j >= hi {
            s += exp(scores[n * cols + j] - m);
        }
    }
    loss[nce_partials() + t] = m;
    loss[nce_partials() + p.n * p.parts + t] = s;
}

@compute @workgroup_size(64)
fn nce_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    if n >= p.n {
        return;
    }
    let rows = p.n * p.locs;
    let pm = nce_partials() + n * p.parts;
    let ps = pm + p.n * p.parts;
    var m = LOWEST;
    for (var k = 0u; k < p.parts; k++) {
        m = max(m, loss[pm + k]);
    }
    var s = 0.0;
    for (var k = 0u; k < p.parts; k++) {
        s += loss[ps + k] * exp(loss[pm + k] - m);
    }
    // c = min lse and t = Σ exp(c − lse) over the image's rows, kept as lse values arrive.
    var c = -LOWEST;
    var t = 0.0;
    for (var i = 0u; i < p.locs; i++) {
        let r = n * p.locs + i;
        let pos = scores[n * rows + r];
        let top = max(m, pos);
        let lse = top + log(exp(pos - top) + s * exp(m - top));
        loss[r] = (lse - pos) / f32(rows);
        loss[rows + r] = lse;
        if lse < c {
            t = t * exp(lse - c) + 1.0;
            c = lse;
        } else {
            t += exp(c - lse);
        }
    }
    loss[nce_images() + n] = c;
    loss[nce_images() + p.n + n] = t;
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
    var g: f32;
    if j >= n * p.locs && j < (n + 1u) * p.locs {
        // The positive of row (n, i = j mod L) only.
        g = exp(u - loss[rows + j]) - 1.0;
    } else {
        g = exp(u - loss[nce_images() + n]) * loss[nce_images() + p.n + n];
    }
    store(e, g / f32(rows));
}
