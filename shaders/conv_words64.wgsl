// Prelude of conv.wgsl: runs of channels (the CD channels of the direct kernels and of the vec4
// weight gradient, the vec4 GEMMs' k-steps), moved as 64-bit words: 8 channels per access, or two
// input columns; needs channel counts that are multiples of 8. llvmpipe loads and stores storage
// one lane and one component at a time, with a bounds check per component, so moving 8 channels
// per access instead of 4 makes these rows about a third cheaper. Needs 64-bit integers in WGSL
// (Vulkan has them; wgpu's GL backend does not, and runs the conv_words32.wgsl build).

// A word of 8 channels, in memory order.
alias W8 = array<vec4<f32>, 2>;

// The words' buffers are u64, and a word of 8 channels is a vec4<u64> (channel 2i in the low half
// of component i).
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

// w where ok, else zeros.
fn keep8(w: W8, ok: bool) -> W8 {
    return W8(select(vec4(0.0), w[0], ok), select(vec4(0.0), w[1], ok));
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

fn dy8(b: u32, c: u32, o8: u32) -> W8 {
    return keep8(unpack8(dy64[b + min(c, o8 - 1u)]), c < o8);
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
    let q = unpack2(x64[i / 2u]);
    return select(0.0, select(q.x, q.y, (i & 1u) != 0u), ok);
}

// x at columns wi and wi + 1 of input row hi of the image whose first row is r0 (zero outside),
// with one 64-bit load. The two must be an aligned pair, both inside the image or both outside:
// the host takes this build at stride 2 only for even widths and odd paddings (the frame's new
// columns then start at even ones). A pixel then costs 3 input loads instead of 6.
fn x_pair(r0: u32, hi: i32, wi: i32) -> vec2<f32> {
    let ok = u32(hi) < p.h && u32(wi) < p.w;
    let v = x64[select(0u, ((r0 + u32(hi)) * p.w + u32(wi)) / 2u, ok)];
    return select(vec2(0.0), unpack2(v), ok);
}

// Stores (`first`) or adds v to the two dx columns of pair o, as one 64-bit word.
fn put_pair(o: u32, v: vec2<f32>, first: bool) {
    dx64[o] = pack2(select(unpack2(dx64[o]) + v, v, first));
}

// The weight gradient's 32 columns of x at one output pixel (see block_src): blocks 2j and 2j + 1
// are one tap's 8 channels from a multiple of 8 (cin is), so four word loads.
fn x_blocks(s: BlockSrc) -> Row {
    let i0 = s.i[0] / 8u;
    let i1 = s.i[1] / 8u;
    let a = keep8(unpack8(src64[i0.x]), s.ok[0].x);
    let b = keep8(unpack8(src64[i0.z]), s.ok[0].z);
    let c = keep8(unpack8(src64[i1.x]), s.ok[1].x);
    let d = keep8(unpack8(src64[i1.z]), s.ok[1].z);
    return Row(a[0], a[1], b[0], b[1], c[0], c[1], d[0], d[1]);
}

// One k-step of gemm4: 8 channels of the tile's 16 source pixels (s) times the 16 columns'
// weights at offset o, as two 4-channel halves (wa, wb) from one word per pixel and column.
const KSTEP: u32 = 8u;

fn gemm_step(acc: ptr<function, Tile>, s: Srcs, l: Layout, o: u32, c: u32, col0: u32,
             input_grad: bool) {
    var wa: Wb;
    var wb: Wb;
    if input_grad {
        // Weight rows 8c .. 8c + 7 (output channels) at the tile's two words of input channels.
        let rl = p.k / 8u;
        let lb = p.cin / 8u - 1u;
        let x0 = wrows8(o + min(col0 / 8u, lb), rl);
        let x1 = wrows8(o + min(col0 / 8u + 1u, lb), rl);
        wa = Wb(x0[0], x0[1], x1[0], x1[1]);
        wb = Wb(x0[2], x0[3], x1[2], x1[3]);
    } else {
        // Column q: one word of weight row l.wo[q / 4][q % 4].
        let ov = vec4(o);
        let m0 = wcols8(l.wo[0] + ov);
        let m1 = wcols8(l.wo[1] + ov);
        let m2 = wcols8(l.wo[2] + ov);
        let m3 = wcols8(l.wo[3] + ov);
        wa = Wb(m0[0], m1[0], m2[0], m3[0]);
        wb = Wb(m0[1], m1[1], m2[1], m3[1]);
    }
    fma8(acc, 0u, s[0], c, &wa, &wb);
    fma8(acc, 1u, s[1], c, &wa, &wb);
    fma8(acc, 2u, s[2], c, &wa, &wb);
    fma8(acc, 3u, s[3], c, &wa, &wb);
    fma8(acc, 4u, s[4], c, &wa, &wb);
    fma8(acc, 5u, s[5], c, &wa, &wb);
    fma8(acc, 6u, s[6], c, &wa, &wb);
    fma8(acc, 7u, s[7], c, &wa, &wb);
    fma8(acc, 8u, s[8], c, &wa, &wb);
    fma8(acc, 9u, s[9], c, &wa, &wb);
    fma8(acc, 10u, s[10], c, &wa, &wb);
    fma8(acc, 11u, s[11], c, &wa, &wb);
    fma8(acc, 12u, s[12], c, &wa, &wb);
    fma8(acc, 13u, s[13], c, &wa, &wb);
    fma8(acc, 14u, s[14], c, &wa, &wb);
    fma8(acc, 15u, s[15], c, &wa, &wb);
}

fn fma8(acc: ptr<function, Tile>, t: u32, s: Src, c: u32, wa: ptr<function, Wb>,
        wb: ptr<function, Wb>) {
    let v = keep8(unpack8(src64[s.i + c]), s.ok);
    fma4(acc, t, v[0], wa);
    fma4(acc, t, v[1], wb);
}

// Forward: the words at o of four weight rows (columns), as the two 4-channel halves' matrices.
fn wcols8(o: vec4<u32>) -> array<mat4x4<f32>, 2> {
    let a = unpack8(opd64[o.x]);
    let b = unpack8(opd64[o.y]);
    let c = unpack8(opd64[o.z]);
    let d = unpack8(opd64[o.w]);
    return array(mat4x4(a[0], b[0], c[0], d[0]), mat4x4(a[1], b[1], c[1], d[1]));
}

// Input gradient: the word at o of weight rows 0 .. 7 (rl words apart), transposed into the
// matrices of rows 0-3 x channels 0-3, rows 0-3 x channels 4-7, then the same for rows 4-7.
fn wrows8(o: u32, rl: u32) -> array<mat4x4<f32>, 4> {
    let r0 = unpack8(opd64[o]);
    let r1 = unpack8(opd64[o + rl]);
    let r2 = unpack8(opd64[o + 2u * rl]);
    let r3 = unpack8(opd64[o + 3u * rl]);
    let r4 = unpack8(opd64[o + 4u * rl]);
    let r5 = unpack8(opd64[o + 5u * rl]);
    let r6 = unpack8(opd64[o + 6u * rl]);
    let r7 = unpack8(opd64[o + 7u * rl]);
    return array(transpose(mat4x4(r0[0], r1[0], r2[0], r3[0])),
                 transpose(mat4x4(r0[1], r1[1], r2[1], r3[1])),
                 transpose(mat4x4(r4[0], r5[0], r6[0], r7[0])),
                 transpose(mat4x4(r4[1], r5[1], r6[1], r7[1])));
}
