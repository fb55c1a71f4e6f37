// Optimiser steps over a whole parameter arena in one dispatch: parameters, gradients, two state
// buffers and a weight-decay mask share one layout, so element i of each belongs together.
// `kind` is uniform across the dispatch, so the branch costs no divergence.
//
// The launcher prepends `alias V = f32;` or, when the arena length is a multiple of 4,
// `alias V = vec4<f32>;` (all indices and `n` in units of V), and each thread updates a few
// elements a grid apart: on llvmpipe the per-invocation cost dominates such a light update, and
// both amortise it, while on GPUs neighbouring threads still touch neighbouring memory.

struct Params {
    n: u32,         // elements in the arena, in units of V
    kind: u32,      // 0: SGD, 1: Adam
    nesterov: u32,  // SGD: 1 = Nesterov momentum
    decoupled: u32, // Adam: 1 = AdamW (decay applied to the weights, not the gradient)
    first: u32,     // 1 on step t = 1: state is not read (fresh), so it need not be zeroed
    lr: f32,
    wd: f32,
    momentum: f32,  // SGD
    beta1: f32,     // Adam
    beta2: f32,
    eps: f32,
    step_size: f32, // Adam: lr / (1 - beta1^t)
    inv_sqrt_bc2: f32, // Adam: 1 / sqrt(1 - beta2^t)
    guarded: u32,   // 1: skip the whole update when the guard's flag word is raised
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> param: array<V>;
@group(1) @binding(1) var<storage, read_write> grad: array<V>;
@group(1) @binding(2) var<storage, read_write> state1: array<V>; // SGD momentum / Adam m
@group(1) @binding(3) var<storage, read_write> state2: array<V>; // Adam v (SGD: unused)
@group(1) @binding(4) var<storage, read_write> mask: array<V>;   // weight-decay multiplier
@group(1) @binding(5) var<storage, read_write> guard: array<u32>; // word 0: non-finite step (guard.wgsl)

const WG: u32 = 256u;

// Grid-stride loop: the launcher picks how many threads, hence how many elements each updates.
@compute @workgroup_size(256)
fn step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // Every invocation reads the flag itself: a non-finite step leaves parameters and state as
    // they were, decided on the GPU without a host round trip.
    if p.guarded != 0u && guard[0] != 0u {
        return;
    }
    let threads = nwg.x * nwg.y * WG;
    for (var i = gid.x + gid.y * nwg.x * WG; i < p.n; i += threads) {
        update(i);
    }
}

fn update(i: u32) {
    var w = param[i];
    let decay = p.wd * mask[i];
    if p.kind == 0u {
        let g = grad[i] + decay * w;
        var buf = g;
        if p.first == 0u {
            buf = p.momentum * state1[i] + g;
        }
        state1[i] = buf;
        param[i] = w - p.lr * select(buf, g + p.momentum * buf, p.nesterov != 0u);
        return;
    }
    var g = grad[i];
    if p.decoupled != 0u {
        w = w * (1.0 - p.lr * decay);
    } else {
        g = g + decay * w;
    }
    var m = (1.0 - p.beta1) * g;
    var v = (1.0 - p.beta2) * g * g;
    if p.first == 0u {
        m += p.beta1 * state1[i];
        v += p.beta2 * state2[i];
    }
    state1[i] = m;
    state2[i] = v;
    param[i] = w - p.step_size * m / (sqrt(v) * p.inv_sqrt_bc2 + p.eps);
}
