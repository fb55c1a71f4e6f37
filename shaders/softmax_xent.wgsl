// Softmax cross-entropy over the rows of a [N, M] logit matrix, forward and backward fused: the
// core of InfoNCE. Two entry points: `xent_group` gives each row a workgroup of 64 lanes merged
// by a tree in workgroup memory (wide rows on GPUs), `xent_row` one invocation and no barriers
// (short rows, or many rows on CPU adapters, where barriers are expensive).
//
// With s = logits / T and the diagonal optionally masked out (column n of row n: the
// self-similarity of in-batch two-view losses):
//   loss[n]       = logsumexp(s_n) − s_n[t]
//   dlogits[n, j] = (softmax(s_n)_j − [j = t]) / T     (0 on the masked entry)
//   correct[n]    = 1 if the first maximum of row n is at t, else 0
//
// Pass 1 keeps, per lane, the running maximum of the raw logits, the sum of exp((l − max)/T)
// rescaled whenever the maximum grows ("online softmax": one exp per element, one read of the row),
// and the first column holding the maximum. Lanes are merged pairwise.
// Pass 2 re-reads the row and writes the gradient. Differences of raw logits are taken before the
// division by T, so equal logits give exactly exp(0) = 1 and huge logits never overflow.
//
// Every lane reads its columns (and the target logit) before the lanes are merged, and the write
// of column j is done by the lane that read it, so dlogits may alias logits.

struct Params {
    n: u32,
    m: u32,
    mask_diagonal: u32,
    _pad: u32,
    inv_t: f32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

const WG: u32 = 64u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> logits: array<f32>;
@group(1) @binding(1) var<storage, read_write> targets: array<u32>;
@group(1) @binding(2) var<storage, read_write> loss: array<f32>;
@group(1) @binding(3) var<storage, read_write> dlogits: array<f32>;
@group(1) @binding(4) var<storage, read_write> correct: array<f32>;

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// sum · exp((old_max − new_max)/T), with an empty sum staying 0 (both maxima −inf would give NaN).
fn rescale(sum: f32, old_max: f32, new_max: f32) -> f32 {
    return select(sum * exp((old_max - new_max) * p.inv_t), 0.0, sum == 0.0);
}

struct Partial {
    mx: f32,  // largest raw logit seen
    sum: f32, // Σ exp((l − mx)/T) over the columns seen
    arg: u32, // first column holding mx (NONE if none seen)
}

// Pass 1 over columns lane, lane + lanes, ... of a row.
fn sweep(base: u32, masked: u32, lane: u32, lanes: u32) -> Partial {
    var q = Partial(neg_inf(), 0.0, NONE);
    for (var j = lane; j < p.m; j += lanes) {
        if j == masked {
            continue;
        }
        let l = logits[base + j];
        let e = exp(-abs(l - q.mx) * p.inv_t);
        if l > q.mx {
            q = Partial(l, q.sum * e + 1.0, j);
        } else {
            q.sum += e;
        }
    }
    return q;
}

fn merge(a: Partial, b: Partial) -> Partial {
    let m = max(a.mx, b.mx);
    let arg = select(select(min(a.arg, b.arg), b.arg, b.mx > a.mx), a.arg, a.mx > b.mx);
    return Partial(m, rescale(a.sum, a.mx, m) + rescale(b.sum, b.mx, m), arg);
}

// Pass 2 over the lane's columns, with the whole row's partial; lane 0 writes loss and correct.
fn finish(row: u32, base: u32, masked: u32, t: u32, l_t: f32, q: Partial, lane: u32, lanes: u32) {
    if lane == 0u {
        // A target on the masked diagonal has probability 0: its loss is +inf, which the
        // trainer's non-finite check reports instead of training on a wrong positive.
        let inf = bitcast<f32>(0x7f800000u);
        loss[row] = select(log(q.sum) - (l_t - q.mx) * p.inv_t, inf, t == masked);
        correct[row] = select(0.0, 1.0, q.arg == t);
    }
    let inv_sum = 1.0 / q.sum;
    for (var j = lane; j < p.m; j += lanes) {
        let prob = exp((logits[base + j] - q.mx) * p.inv_t) * inv_sum;
        let g = (prob - select(0.0, 1.0, j == t)) * p.inv_t;
        dlogits[base + j] = select(g, 0.0, j == masked);
    }
}

fn masked_col(row: u32) -> u32 {
    return select(NONE, row, p.mask_diagonal != 0u);
}

// Out-of-range targets are clamped to the last column: the kernel cannot raise an error.
fn target_of(row: u32) -> u32 {
    return min(targets[row], p.m - 1u);
}

@compute @workgroup_size(64)
fn xent_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if row >= p.n {
        return;
    }
    let base = row * p.m;
    let t = target_of(row);
    let l_t = logits[base + t];
    let q = sweep(base, masked_col(row), 0u, 1u);
    finish(row, base, masked_col(row), t, l_t, q, 0u, 1u);
}

var<workgroup> sh_max: array<f32, WG>;
var<workgroup> sh_sum: array<f32, WG>;
var<workgroup> sh_arg: array<u32, WG>;

@compute @workgroup_size(64)
fn xent_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.n {
        return;
    }
    let base = row * p.m;
    let t = target_of(row);
    let l_t = logits[base + t];
    var q = sweep(base, masked_col(row), lid, WG);
    sh_max[lid] = q.mx;
    sh_sum[lid] = q.sum;
    sh_arg[lid] = q.arg;
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if lid < s {
            let r = merge(Partial(sh_max[lid], sh_sum[lid], sh_arg[lid]),
                          Partial(sh_max[lid + s], sh_sum[lid + s], sh_arg[lid + s]));
            sh_max[lid] = r.mx;
            sh_sum[lid] = r.sum;
            sh_arg[lid] = r.arg;
        }
    }
    workgroupBarrier();
    q = Partial(sh_max[0], sh_sum[0], sh_arg[0]);
    finish(row, base, masked_col(row), t, l_t, q, lid, WG);
}
