// Pooling over NHWC activations: global average pooling and 2x2 max pooling (stride 2, odd sizes
// rounded down), with their backward passes.
//
// Every kernel maps one invocation to one output element, or to four consecutive channels of it
// when the channel count is a multiple of 4 (entry points ending in 4): storage loads cost per
// load instruction on llvmpipe, so vec4 accesses are close to four times cheaper per value. The
// backward passes are gathers (each input-gradient element reads the one output it fed), so no
// atomics are needed: 2x2 windows with stride 2 do not overlap.

struct Params {
    n: u32, h: u32, w: u32, c: u32,  // input shape
    ho: u32, wo: u32,                // output spatial size (max pooling)
    count: u32,                      // invocations
    flags: u32,
}

const F_ACC: u32 = 1u;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
// The same buffers viewed as vec4 (channels a multiple of 4) or as scalars.
@group(1) @binding(0) var<storage, read_write> in4: array<vec4<f32>>;
@group(1) @binding(0) var<storage, read_write> in1: array<f32>;
@group(1) @binding(1) var<storage, read_write> out4: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read_write> out1: array<f32>;
// Max pooling: for every output, the index into x of the input that won.
@group(1) @binding(2) var<storage, read_write> arg4: array<vec4<u32>>;
@group(1) @binding(2) var<storage, read_write> arg1: array<u32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

fn accumulating() -> bool {
    return (p.flags & F_ACC) != 0u;
}

fn put4(i: u32, v: vec4<f32>) {
    if accumulating() {
        out4[i] = v + out4[i];
    } else {
        out4[i] = v;
    }
}

fn put1(i: u32, v: f32) {
    if accumulating() {
        out1[i] = v + out1[i];
    } else {
        out1[i] = v;
    }
}

// ---------------------------------------------------------------------------------------------
// Global average pooling: y[n, c] = mean over (h, w) of x[n, h, w, c]. `lanes` channels per
// invocation, `cl` = c / lanes channel groups per pixel.

@compute @workgroup_size(256)
fn avg_global4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let cl = p.c / 4u;
    let n = i / cl;
    let base = n * p.h * p.w * cl + (i - n * cl);
    var s = vec4(0.0);
    for (var q = 0u; q < p.h * p.w; q++) {
        s += in4[base + q * cl];
    }
    out4[i] = s / f32(p.h * p.w);
}

@compute @workgroup_size(256)
fn avg_global1(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let n = i / p.c;
    let base = n * p.h * p.w * p.c + (i - n * p.c);
    var s = 0.0;
    for (var q = 0u; q < p.h * p.w; q++) {
        s += in1[base + q * p.c];
    }
    out1[i] = s / f32(p.h * p.w);
}

// dx[n, h, w, c] (+)= dy[n, c] / (h * w). in: dy, out: dx; i runs over dx.
@compute @workgroup_size(256)
fn avg_global_backward4(@builtin(global_invocation_id) gid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let cl = p.c / 4u;
    let hwc = p.h * p.w * cl;
    let n = i / hwc;
    put4(i, in4[n * cl + i % cl] / f32(p.h * p.w));
}

@compute @workgroup_size(256)
fn avg_global_backward1(@builtin(global_invocation_id) gid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let hwc = p.h * p.w * p.c;
    let n = i / hwc;
    put1(i, in1[n * p.c + i % p.c] / f32(p.h * p.w));
}

// ---------------------------------------------------------------------------------------------
// 2x2 max pooling, stride 2. Output (n, oh, ow) reads input rows 2oh, 2oh+1 and columns 2ow,
// 2ow+1; ties go to the first input in row-major window order.

// Element index into x (in units of `lanes` channels) of window corner (oh, ow) for output index i
// of an [n, ho, wo, cl] grid.
fn window_origin(i: u32, cl: u32) -> u32 {
    let c = i % cl;
    let pix = i / cl;
    let ow = pix % p.wo;
    let rest = pix / p.wo;
    let oh = rest % p.ho;
    let n = rest / p.ho;
    return ((n * p.h + 2u * oh) * p.w + 2u * ow) * cl + c;
}

@compute @workgroup_size(256)
fn max2x24(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let cl = p.c / 4u;
    let o = window_origin(i, cl);
    var best = in4[o];
    var arg = vec4(o);
    for (var k = 1u; k < 4u; k++) {
        let at = o + (k / 2u * p.w + k % 2u) * cl;
        let v = in4[at];
        let win = v > best;
        best = select(best, v, win);
        arg = select(arg, vec4(at), win);
    }
    out4[i] = best;
    // Element indices of the four channels.
    arg4[i] = arg * 4u + vec4(0u, 1u, 2u, 3u);
}

@compute @workgroup_size(256)
fn max2x21(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let o = window_origin(i, p.c);
    var best = in1[o];
    var arg = o;
    for (var k = 1u; k < 4u; k++) {
        let at = o + (k / 2u * p.w + k % 2u) * p.c;
        let v = in1[at];
        if v > best {
            best = v;
            arg = at;
        }
    }
    out1[i] = best;
    arg1[i] = arg;
}

// dx[x] (+)= dy[o] where o is the output whose window holds x and argmax[o] == x, else 0. The last
// row/column of odd sizes is in no window: it reads the neighbouring window, whose winner is never
// x. in: dy, out: dx; i runs over dx.
fn window_of(i: u32, cl: u32) -> u32 {
    let pix = i / cl;
    let wi = pix % p.w;
    let rest = pix / p.w;
    let hi = rest % p.h;
    let n = rest / p.h;
    return ((n * p.ho + min(hi / 2u, p.ho - 1u)) * p.wo + min(wi / 2u, p.wo - 1u)) * cl + i % cl;
}

@compute @workgroup_size(256)
fn max2x2_backward4(@builtin(global_invocation_id) gid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let o = window_of(i, p.c / 4u);
    let won = arg4[o] == vec4(i * 4u) + vec4(0u, 1u, 2u, 3u);
    put4(i, select(vec4(0.0), in4[o], won));
}

@compute @workgroup_size(256)
fn max2x2_backward1(@builtin(global_invocation_id) gid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let o = window_of(i, p.c);
    put1(i, select(0.0, in1[o], arg1[o] == i));
}
