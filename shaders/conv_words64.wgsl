// Prelude of conv.wgsl: the direct kernels' rows of CD channels, moved as vec4<u64> (8 channels
// each); needs 64-bit integers and a channel count that is a multiple of 8. llvmpipe loads and
// stores storage one lane and one component at a time, with a bounds check per component, so
// moving 8 channels per access instead of 4 makes these rows about a third cheaper (1→32 at batch
// 256: reading dy alone went from 1.38–1.48 to 2.0–2.1 times the matmul rate).

@group(1) @binding(2) var<storage, read_write> dy64: array<vec4<u64>>;
@group(1) @binding(3) var<storage, read_write> dst64: array<vec4<u64>>;

// Channels 2i of the 8 in v are the low halves, 2i + 1 the high halves.
fn unpack8(v: vec4<u64>) -> array<vec4<f32>, 2> {
    let lo = bitcast<vec4<f32>>(vec4<u32>(v & vec4(0xfffffffflu)));
    let hi = bitcast<vec4<f32>>(vec4<u32>(v >> vec4(32u)));
    return array(vec4(lo.x, hi.x, lo.y, hi.y), vec4(lo.z, hi.z, lo.w, hi.w));
}

fn pack8(a: vec4<f32>, b: vec4<f32>) -> vec4<u64> {
    let lo = vec4<u64>(bitcast<vec4<u32>>(vec4(a.x, a.z, b.x, b.z)));
    let hi = vec4<u64>(bitcast<vec4<u32>>(vec4(a.y, a.w, b.y, b.w)));
    return lo | (hi << vec4(32u));
}

// The CD channels from co0 of pixel row m of dy, bound as the third operand (zero past cout).
fn dy_row(m: u32, co0: u32) -> Row {
    let o8 = p.cout / 8u;
    let b = m * o8;
    let c = co0 / 8u;
    let d0 = dy8(b, c, o8);
    let d1 = dy8(b, c + 1u, o8);
    let d2 = dy8(b, c + 2u, o8);
    let d3 = dy8(b, c + 3u, o8);
    return Row(d0[0], d0[1], d1[0], d1[1], d2[0], d2[1], d3[0], d3[1]);
}

fn dy8(b: u32, c: u32, o8: u32) -> array<vec4<f32>, 2> {
    return unpack8(select(vec4(0lu), dy64[b + min(c, o8 - 1u)], c < o8));
}

// Stores the CD channels from co0 of pixel row m of y (none past cout).
fn put_row(m: u32, co0: u32, y: Row) {
    let o = m * (p.cout / 8u) + co0 / 8u;
    put_y8(o, co0, y[0], y[1]);
    put_y8(o + 1u, co0 + 8u, y[2], y[3]);
    put_y8(o + 2u, co0 + 16u, y[4], y[5]);
    put_y8(o + 3u, co0 + 24u, y[6], y[7]);
}

fn put_y8(o: u32, co: u32, a: vec4<f32>, b: vec4<f32>) {
    if co < p.cout {
        dst64[o] = pack8(a, b);
    }
}
