// A GRU layer over sequences, one time step per dispatch (PyTorch's gate order and formulas):
//
//   r = σ(gx_r + h·W_rᵀ + b_r)      u = σ(gx_u + h·W_uᵀ + b_u)
//   n = tanh(gx_n + r ⊙ (h·W_nᵀ + b_n))
//   h' = (1 − u) ⊙ n + u ⊙ h
//
// gx [B, T, 3H] holds the input projections of every step, computed beforehand as one matmul;
// W [3H, H] and b [3H] are the recurrent weights (PyTorch's weight_hh / bias_hh). Sequences are
// rows b·T + t. The initial state is zero.
//
// Each invocation owns one (b, j) of the step: it needs row b of the previous state and rows
// j, H + j, 2H + j of W, all contiguous, and no other invocation's result, so a step has no
// barriers. The backward walks the steps in reverse with two dispatches each: `backward_gates`
// turns dh into the gradients of the gate pre-activations, then `backward_hidden` carries
// dh into the previous step through Wᵀ. W's and b's gradients are one GEMM and one column sum
// over all steps afterwards, from the saved previous states.

struct Params {
    batch: u32,
    steps: u32, // T
    hidden: u32, // H
    t: u32, // the step this dispatch computes
    accumulate: u32, // backward_gates: dgx += instead of =
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

// ---- forward ----------------------------------------------------------------------------------

@group(1) @binding(0) var<storage, read_write> f_gx: array<f32>;
@group(1) @binding(1) var<storage, read_write> f_w: array<f32>;
@group(1) @binding(2) var<storage, read_write> f_b: array<f32>;
@group(1) @binding(3) var<storage, read_write> f_h: array<f32>; // [B, T, H] outputs
@group(1) @binding(4) var<storage, read_write> f_hprev: array<f32>; // [B, T, H] state before step
@group(1) @binding(5) var<storage, read_write> f_gates: array<f32>; // [B, T, 4H]: r, u, n, h·W_nᵀ+b_n

@compute @workgroup_size(64)
fn forward_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hd = p.hidden;
    if gid.x >= p.batch * hd {
        return;
    }
    let b = gid.x / hd;
    let j = gid.x % hd;
    let row = b * p.steps + p.t;
    let prev = row * hd - hd; // row b·T + t − 1: only read when t > 0
    var ar = f_b[j];
    var au = f_b[hd + j];
    var an = f_b[2u * hd + j];
    var hj = 0.0;
    if p.t > 0u {
        for (var i = 0u; i < hd; i++) {
            let h = f_h[prev + i];
            ar += h * f_w[j * hd + i];
            au += h * f_w[(hd + j) * hd + i];
            an += h * f_w[(2u * hd + j) * hd + i];
        }
        hj = f_h[prev + j];
    }
    let g = row * 3u * hd;
    let r = sigmoid(f_gx[g + j] + ar);
    let u = sigmoid(f_gx[g + hd + j] + au);
    let n = tanh_safe(f_gx[g + 2u * hd + j] + r * an);
    f_h[row * hd + j] = (1.0 - u) * n + u * hj;
    f_hprev[row * hd + j] = hj;
    let s = row * 4u * hd;
    f_gates[s + j] = r;
    f_gates[s + hd + j] = u;
    f_gates[s + 2u * hd + j] = n;
    f_gates[s + 3u * hd + j] = an;
}

// ---- backward ---------------------------------------------------------------------------------

@group(1) @binding(0) var<storage, read_write> g_dh: array<f32>; // [B, T, H] upstream gradient
@group(1) @binding(1) var<storage, read_write> g_carry: array<f32>; // [B, H] dh from step t + 1
@group(1) @binding(2) var<storage, read_write> g_hprev: array<f32>;
@group(1) @binding(3) var<storage, read_write> g_gates: array<f32>;
@group(1) @binding(4) var<storage, read_write> g_dgx: array<f32>; // [B, T, 3H]
@group(1) @binding(5) var<storage, read_write> g_dgh: array<f32>; // [B, T, 3H]: d(h·Wᵀ + b)
@group(1) @binding(6) var<storage, read_write> g_direct: array<f32>; // [B, H]: dh ⊙ u

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
    g_direct[b * hd + j] = dh * u;
}

@group(1) @binding(0) var<storage, read_write> c_dgh: array<f32>;
@group(1) @binding(1) var<storage, read_write> c_w: array<f32>;
@group(1) @binding(2) var<storage, read_write> c_direct: array<f32>;
@group(1) @binding(3) var<storage, read_write> c_carry: array<f32>;

// carry[b, i] = direct[b, i] + Σ_g dgh[b, t, g] · W[g, i]: the gradient reaching step t − 1.
@compute @workgroup_size(64)
fn backward_hidden(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hd = p.hidden;
    if gid.x >= p.batch * hd {
        return;
    }
    let b = gid.x / hd;
    let i = gid.x % hd;
    let g = (b * p.steps + p.t) * 3u * hd;
    var acc = c_direct[b * hd + i];
    for (var k = 0u; k < 3u * hd; k++) {
        acc += c_dgh[g + k] * c_w[k * hd + i];
    }
    c_carry[b * hd + i] = acc;
}
