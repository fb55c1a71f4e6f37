// The elementwise half of a GRU step (PyTorch's gate order and formulas):
//
//   r = σ(gx_r + gh_r)      u = σ(gx_u + gh_u)      n = tanh(gx_n + r ⊙ gh_n)
//   h' = (1 − u) ⊙ n + u ⊙ h,      gh = h·Wᵀ + b
//
// gx [B, T, 3H] holds the input projections of every step (one matmul beforehand); gh, the
// recurrent product of the step, comes from the matmul kernels too (one [B, H]·[3H, H]ᵀ GEMM per
// step), so these kernels only do what a GEMM cannot: the gates, forward and backward. Sequences
// are rows b·T + t; the initial state is zero, and step 0 uses the bias alone for gh.

struct Params {
    batch: u32,
    steps: u32, // T
    hidden: u32, // H
    t: u32, // the step this dispatch computes
    accumulate: u32, // backward: dgx += instead of =
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// Safe for large |x|, where exp overflows to inf and a naive (e^x − e^−x)/(e^x + e^−x) is NaN.
fn tanh_safe(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

@group(1) @binding(0) var<storage, read_write> f_gx: array<f32>;
@group(1) @binding(1) var<storage, read_write> f_gh: array<f32>; // [B, 3H] (the bias at step 0)
@group(1) @binding(2) var<storage, read_write> f_prev: array<f32>; // [B, H] h of step t − 1
@group(1) @binding(3) var<storage, read_write> f_next: array<f32>; // [B, H] h of step t
@group(1) @binding(4) var<storage, read_write> f_out: array<f32>; // [B, T, H] every step's h
@group(1) @binding(5) var<storage, read_write> f_hprev: array<f32>; // [B, T, H] h before each step
@group(1) @binding(6) var<storage, read_write> f_gates: array<f32>; // [B, T, 4H]: r, u, n, gh_n

@compute @workgroup_size(64)
fn forward_gates(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hd = p.hidden;
    if gid.x >= p.batch * hd {
        return;
    }
    let b = gid.x / hd;
    let j = gid.x % hd;
    let row = b * p.steps + p.t;
    var gh_base = b * 3u * hd;
    var h = 0.0;
    if p.t == 0u {
        gh_base = 0u;
    } else {
        h = f_prev[b * hd + j];
    }
    let g = row * 3u * hd;
    let r = sigmoid(f_gx[g + j] + f_gh[gh_base + j]);
    let u = sigmoid(f_gx[g + hd + j] + f_gh[gh_base + hd + j]);
    let an = f_gh[gh_base + 2u * hd + j];
    let n = tanh_safe(f_gx[g + 2u * hd + j] + r * an);
    let next = (1.0 - u) * n + u * h;
    f_next[b * hd + j] = next;
    f_out[row * hd + j] = next;
    f_hprev[row * hd + j] = h;
    let s = row * 4u * hd;
    f_gates[s + j] = r;
    f_gates[s + hd + j] = u;
    f_gates[s + 2u * hd + j] = n;
    f_gates[s + 3u * hd + j] = an;
}

@group(1) @binding(0) var<storage, read_write> g_dh: array<f32>; // [B, T, H] upstream gradient
@group(1) @binding(1) var<storage, read_write> g_carry: array<f32>; // [B, H] in: dh from t + 1; out: dh ⊙ u
@group(1) @binding(2) var<storage, read_write> g_hprev: array<f32>;
@group(1) @binding(3) var<storage, read_write> g_gates: array<f32>;
@group(1) @binding(4) var<storage, read_write> g_dgx: array<f32>; // [B, T, 3H]
@group(1) @binding(5) var<storage, read_write> g_dgh: array<f32>; // [B, T, 3H]: d(h·Wᵀ + b)
@group(1) @binding(6) var<storage, read_write> g_dgh_t: array<f32>; // [B, 3H]: the same, this step

// The gradients of the step's gate pre-activations from dh = upstream + carry. The carry is then
// overwritten with dh ⊙ u, the direct path into step t − 1, to which the caller adds dgh_t·W.
@compute @workgroup_size(64)
fn backward_gates(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hd = p.hidden;
    if gid.x >= p.batch * hd {
        return;
    }
    let b = gid.x / hd;
    let j = gid.x % hd;
    let row = b * p.steps + p.t;
    var dh = g_dh[row * hd + j];
    if p.t + 1u < p.steps {
        dh += g_carry[b * hd + j];
    }
    let s = row * 4u * hd;
    let r = g_gates[s + j];
    let u = g_gates[s + hd + j];
    let n = g_gates[s + 2u * hd + j];
    let an = g_gates[s + 3u * hd + j];
    let hp = g_hprev[row * hd + j];
    let dn = dh * (1.0 - u) * (1.0 - n * n);
    let du = dh * (hp - n) * u * (1.0 - u);
    let dr = dn * an * r * (1.0 - r);
    let g = row * 3u * hd;
    if p.accumulate != 0u {
        g_dgx[g + j] += dr;
        g_dgx[g + hd + j] += du;
        g_dgx[g + 2u * hd + j] += dn;
    } else {
        g_dgx[g + j] = dr;
        g_dgx[g + hd + j] = du;
        g_dgx[g + 2u * hd + j] = dn;
    }
    g_dgh[g + j] = dr;
    g_dgh[g + hd + j] = du;
    g_dgh[g + 2u * hd + j] = dn * r;
    let gt = b * 3u * hd;
    g_dgh_t[gt + j] = dr;
    g_dgh_t[gt + hd + j] = du;
    g_dgh_t[gt + 2u * hd + j] = dn * r;
    g_carry[b * hd + j] = dh * u;
}
