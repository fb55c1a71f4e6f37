// Exponential moving average of a whole parameter arena: target = m·target + (1 − m)·source.
//
// A grid-stride loop: invocation t handles elements t, t + T, t + 2T, ... where T is the number of
// invocations launched. Neighbouring invocations touch neighbouring words, so every load and store
// is contiguous across the workgroup (as good as vec4 loads on GPUs, and what llvmpipe vectorises
// best), any length works without a tail case, and the launch never needs a second grid dimension.

struct Params {
    n: u32,
    threads: u32, // T: invocations launched
    m: f32,
    one_minus_m: f32, // computed on the host, exact for m in [0.5, 1]
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> dst: array<f32>;
@group(1) @binding(1) var<storage, read_write> src: array<f32>;

@compute @workgroup_size(256)
fn ema(@builtin(global_invocation_id) gid: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += p.threads) {
        dst[i] = p.m * dst[i] + p.one_minus_m * src[i];
    }
}
