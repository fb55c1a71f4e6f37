// Pooling over NHWC tensors: global average pooling and 2×2 max pooling with stride 2, forward and
// backward. Both backwards are gathers (each input element reads the one output it fed), so no
// atomics are needed: global pooling spreads dy/(H·W), and max-pool windows do not overlap.

struct Params {
    n: u32,  // output elements (forward) or input elements (backward)
    h: u32,  // input height
    w: u32,  // input width
    c: u32,  // channels
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> x: array<f32>;
@group(1) @binding(1) var<storage, read_write> y: array<f32>;
// Max pooling only: the flat input index of each output's maximum.
@group(1) @binding(2) var<storage, read_write> argmax: array<u32>;

const WG: u32 = 256u;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

fn put(i: u32, v: f32) {
    if p.accumulate != 0u {
        x[i] = x[i] + v;
    } else {
        x[i] = v;
    }
}

// y[b, c] = mean over (i, j) of x[b, i, j, c]; one invocation per output, consecutive invocations
// reading consecutive channels.
@compute @workgroup_size(256)
fn avg_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = index(gid, nwg);
    if o >= p.n {
        return;
    }
    let b = o / p.c;
    let ch = o % p.c;
    let hw = p.h * p.w;
    var s = 0.0;
    for (var k = 0u; k < hw; k++) {
        s += x[(b * hw + k) * p.c + ch];
    }
    y[o] = s / f32(hw);
}

// dx[b, i, j, c] (+)= dy[b, c] / (H·W).
@compute @workgroup_size(256)
fn avg_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.n {
        return;
    }
    let hw = p.h * p.w;
    let b = i / (hw * p.c);
    put(i, y[b * p.c + i % p.c] / f32(hw));
}

// Output (b, i, j, c) takes the max of rows 2i, 2i+1 and columns 2j, 2j+1 (odd tails dropped);
// ties go to the first element in row-major window order.
@compute @workgroup_size(256)
fn max_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = index(gid, nwg);
    if o >= p.n {
        return;
    }
    let oh = p.h / 2u;
    let ow = p.w / 2u;
    let ch = o % p.c;
    let oj = (o / p.c) % ow;
    let oi = (o / (p.c * ow)) % oh;
    let b = o / (p.c * ow * oh);
    var best = -3.4028235e38;
    var at = 0u;
    for (var di = 0u; di < 2u; di++) {
        for (var dj = 0u; dj < 2u; dj++) {
            let k = ((b * p.h + 2u * oi + di) * p.w + 2u * oj + dj) * p.c + ch;
            let v = x[k];
            if v > best || (di == 0u && dj == 0u) {
                best = v;
                at = k;
            }
        }
    }
    y[o] = best;
    argmax[o] = at;
}

// dx[k] (+)= dy[o] if k is the maximum of output o's window, else 0.
@compute @workgroup_size(256)
fn max_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = index(gid, nwg);
    if k >= p.n {
        return;
    }
    let oh = p.h / 2u;
    let ow = p.w / 2u;
    let ch = k % p.c;
    let j = (k / p.c) % p.w;
    let i = (k / (p.c * p.w)) % p.h;
    let b = k / (p.c * p.w * p.h);
    var v = 0.0;
    if i / 2u < oh && j / 2u < ow {
        let o = ((b * oh + i / 2u) * ow + j / 2u) * p.c + ch;
        if argmax[o] == k {
            v = y[o];
        }
    }
    put(k, v);
}
