// Storage prelude of conv_words64.wgsl for wgpu's GL backend, which has no 64-bit integers in
// WGSL: the same words declared as u32 vectors (a word of 8 channels as two vec4<u32>, a word of
// 2 as a vec2<u32>). On its own this is a 32-bit build. gpu::glsl translates it to GLSL and
// retypes the variables named *64 to uint64_t / u64vec4, so that each access moves 64-bit
// components, as the u64 build does on Vulkan.

@group(1) @binding(0) var<storage, read_write> x64: array<vec2<u32>>;
@group(1) @binding(0) var<storage, read_write> src64: array<array<vec4<u32>, 2>>;
@group(1) @binding(1) var<storage, read_write> opd64: array<array<vec4<u32>, 2>>;
@group(1) @binding(2) var<storage, read_write> dy64: array<array<vec4<u32>, 2>>;
@group(1) @binding(3) var<storage, read_write> dst64: array<array<vec4<u32>, 2>>;
@group(1) @binding(3) var<storage, read_write> dx64: array<vec2<u32>>;

fn unpack8(w: array<vec4<u32>, 2>) -> W8 {
    return W8(bitcast<vec4<f32>>(w[0]), bitcast<vec4<f32>>(w[1]));
}

fn pack8(a: vec4<f32>, b: vec4<f32>) -> array<vec4<u32>, 2> {
    return array(bitcast<vec4<u32>>(a), bitcast<vec4<u32>>(b));
}

fn unpack2(v: vec2<u32>) -> vec2<f32> {
    return bitcast<vec2<f32>>(v);
}

fn pack2(v: vec2<f32>) -> vec2<u32> {
    return bitcast<vec2<u32>>(v);
}
