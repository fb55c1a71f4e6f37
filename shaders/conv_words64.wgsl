// Prelude of conv.wgsl: rows of channels (the direct kernels' CD, the weight gradient's TN), moved
// as vec4<u64> (8 channels each); needs 64-bit integers and channel counts that are multiples of 8. llvmpipe loads and
// stores storage one lane and one component at a time, with a bounds check per component, so
// moving 8 channels per access instead of 4 makes these rows about a third cheaper (1→32 at batch
// 256: reading dy alone went from 1.38–1.48 to 2.0–2.1 times the matmul rate).

@group(1) @binding(0) var<storage, read_write> x64: array<u64>;
@group(1) @binding(0) var<storage, read_write> src64: array<vec4<u64>>;
@group(1) @binding(1) var<storage, read_write> opd64: array<vec4<u64>>;
@group(1) @binding(2) var<storage, read_write> dy64: array<vec4<u64>>;
@group(1) @binding(3) var<storage, read_write> dst64: array<vec4<u64>>;
@group(1) @binding(3) var<storage, read_write> dx64: array<u64>;

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

// x at (hi, wi) of the image whose first row is r0, zero outside the image (x is read through
// 64-bit words: an entry point may bind a buffer through one variable only).
fn x_in(r0: u32, hi: i32, wi: i32) -> f32 {
    let ok = u32(hi) < p.h && u32(wi) < p.w;
    let i = select(0u, (r0 + u32(hi)) * p.w + u32(wi), ok);
    let v = x64[i / 2u];
    return select(0.0, bitcast<f32>(u32(select(v, v >> 32u, (i & 1u) != 0u) & 0xfffffffflu)), ok);
}

// x at columns wi and wi + 1 of input row hi of the image whose first row is r0 (zero outside),
// with one 64-bit load. The two must be an aligned pair, both inside the image or both outside:
// the host takes this build at stride 2 only for even widths and odd paddings (the frame's new
// columns then start at even ones). A pixel then costs 3 input loads instead of 6 (1->32 at
// stride 2, batch 256: the weight gradient went from 0.58-0.60 to 0.66-0.71 of the matmul rate).
fn x_pair(r0: u32, hi: i32, wi: i32) -> vec2<f32> {
    let ok = u32(hi) < p.h && u32(wi) < p.w;
    let v = x64[select(0u, ((r0 + u32(hi)) * p.w + u32(wi)) / 2u, ok)];
    return select(vec2(0.0), bitcast<vec2<f32>>(vec2(u32(v & 0xfffffffflu), u32(v >> 32u))), ok);
}

// Stores (`first`) or adds v to the two dx columns of pair o, as one 64-bit word.
fn put_pair(o: u32, v: vec2<f32>, first: bool) {
    let old = dx64[o];
    let a = bitcast<vec2<f32>>(vec2(u32(old & 0xfffffffflu), u32(old >> 32u)));
    let b = bitcast<vec2<u32>>(select(a + v, v, first));
    dx64[o] = u64(b.x) | (u64(b.y) << 32u);
}

// The weight gradient's operands: TN channels from c0 of pixel px of x (zero unless ok) and of dy
// (bound as the second operand). Channels past the last repeat its last 8.
fn x16(px: u32, c0: u32, ok: bool) -> Acc {
    let c8 = p.cin / 8u;
    let b = px * c8;
    let i = min(vec2(c0 / 8u) + vec2(0u, 1u), vec2(c8 - 1u));
    let z = vec4(0lu);
    let lo = unpack8(select(z, src64[b + i.x], ok));
    let hi = unpack8(select(z, src64[b + i.y], ok));
    return Acc(lo[0], lo[1], hi[0], hi[1]);
}

fn dy16(px: u32, c0: u32) -> Acc {
    let o8 = p.cout / 8u;
    let b = px * o8;
    let i = min(vec2(c0 / 8u) + vec2(0u, 1u), vec2(o8 - 1u));
    let lo = unpack8(opd64[b + i.x]);
    let hi = unpack8(opd64[b + i.y]);
    return Acc(lo[0], lo[1], hi[0], hi[1]);
}
