// Storage prelude of conv_words64.wgsl where the adapter has 64-bit integers: the words are u64,
// and a word of 8 channels is a vec4<u64> (channel 2i in the low half of component i).

@group(1) @binding(0) var<storage, read_write> x64: array<u64>;
@group(1) @binding(0) var<storage, read_write> src64: array<vec4<u64>>;
@group(1) @binding(1) var<storage, read_write> opd64: array<vec4<u64>>;
@group(1) @binding(2) var<storage, read_write> dy64: array<vec4<u64>>;
@group(1) @binding(3) var<storage, read_write> dst64: array<vec4<u64>>;
@group(1) @binding(3) var<storage, read_write> dx64: array<u64>;

fn unpack8(v: vec4<u64>) -> W8 {
    let lo = bitcast<vec4<f32>>(vec4<u32>(v & vec4(0xfffffffflu)));
    let hi = bitcast<vec4<f32>>(vec4<u32>(v >> vec4(32u)));
    return W8(vec4(lo.x, hi.x, lo.y, hi.y), vec4(lo.z, hi.z, lo.w, hi.w));
}

fn pack8(a: vec4<f32>, b: vec4<f32>) -> vec4<u64> {
    let lo = vec4<u64>(bitcast<vec4<u32>>(vec4(a.x, a.z, b.x, b.z)));
    let hi = vec4<u64>(bitcast<vec4<u32>>(vec4(a.y, a.w, b.y, b.w)));
    return lo | (hi << vec4(32u));
}

// Two f32 in one u64: the first in the low half.
fn unpack2(v: u64) -> vec2<f32> {
    return bitcast<vec2<f32>>(vec2(u32(v & 0xfffffffflu), u32(v >> 32u)));
}

fn pack2(v: vec2<f32>) -> u64 {
    let b = bitcast<vec2<u32>>(v);
    return u64(b.x) | (u64(b.y) << 32u);
}
