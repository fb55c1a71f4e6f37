// Memory floors for the convolution bench: the cheapest way llvmpipe has to write a tensor once
// or to read it once, in the pattern the convolution kernels use (vec4 accesses along runs of
// rows, one run per invocation). No arithmetic: a pass that must write y (the forward) or read dy
// (both gradients) cannot run faster than these.

struct Params { n4: u32, run: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> buf: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read_write> sink: array<vec4<f32>>;

@compute @workgroup_size(64)
fn write_once(@builtin(global_invocation_id) gid: vec3<u32>) {
    let first = min(gid.x * p.run, p.n4);
    let last = min(first + p.run, p.n4);
    for (var i = first; i < last; i++) {
        buf[i] = vec4(f32(i));
    }
}

@compute @workgroup_size(64)
fn read_once(@builtin(global_invocation_id) gid: vec3<u32>) {
    let first = min(gid.x * p.run, p.n4);
    let last = min(first + p.run, p.n4);
    var s = vec4(0.0);
    for (var i = first; i < last; i++) {
        s += buf[i];
    }
    // One store per invocation keeps the loads alive.
    sink[gid.x] = s;
}
