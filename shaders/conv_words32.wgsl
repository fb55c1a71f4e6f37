// Prelude of conv.wgsl: runs of channels (the CD channels of the direct kernels and of the vec4
// weight gradient, the vec4 GEMMs' k-steps), moved as vec4<f32>. Used where the adapter has no
// 64-bit integers (see conv_words64.wgsl) or the channels are not multiples of 8.

@group(1) @binding(3) var<storage, read_write> dst2: array<vec2<f32>>;

// The CD channels from co0 of pixel row m of dy, bound as the third operand (zero past cout).
fn dy_row(m: u32, co0: u32) -> Row {
    let o4 = p.cout / 4u;
    let b = m * o4;
    let c = co0 / 4u;
    return Row(dy_at(b, c, o4), dy_at(b, c + 1u, o4), dy_at(b, c + 2u, o4), dy_at(b, c + 3u, o4),
               dy_at(b, c + 4u, o4), dy_at(b, c + 5u, o4), dy_at(b, c + 6u, o4), dy_at(b, c + 7u, o4));
}

fn dy_at(b: u32, c: u32, o4: u32) -> vec4<f32> {
    return select(vec4(0.0), bias4[b + min(c, o4 - 1u)], c < o4);
}

// Stores the CD channels from co0 of pixel row m of y (none past cout).
fn put_row(m: u32, co0: u32, y: Row) {
    let o = m * (p.cout / 4u) + co0 / 4u;
    put_y(o, co0, y[0]);
    put_y(o + 1u, co0 + 4u, y[1]);
    put_y(o + 2u, co0 + 8u, y[2]);
    put_y(o + 3u, co0 + 12u, y[3]);
    put_y(o + 4u, co0 + 16u, y[4]);
    put_y(o + 5u, co0 + 20u, y[5]);
    put_y(o + 6u, co0 + 24u, y[6]);
    put_y(o + 7u, co0 + 28u, y[7]);
}

fn put_y(o: u32, co: u32, v: vec4<f32>) {
    if co < p.cout {
        dst4[o] = v;
    }
}

// x at (hi, wi) of the image whose first row is r0, zero outside the image.
fn x_in(r0: u32, hi: i32, wi: i32) -> f32 {
    let ok = u32(hi) < p.h && u32(wi) < p.w;
    return select(0.0, src1[select(0u, (r0 + u32(hi)) * p.w + u32(wi), ok)], ok);
}

// x at columns wi and wi + 1 of input row hi of the image whose first row is r0 (zero outside).
fn x_pair(r0: u32, hi: i32, wi: i32) -> vec2<f32> {
    return vec2(x_in(r0, hi, wi), x_in(r0, hi, wi + 1));
}

// Stores (`first`) or adds v to the two dx columns of pair o.
fn put_pair(o: u32, v: vec2<f32>, first: bool) {
    dst2[o] = select(dst2[o] + v, v, first);
}

// The weight gradient's 32 columns of x at one output pixel (see block_src): eight vec4 loads.
fn x_blocks(s: BlockSrc) -> Row {
    let i0 = s.i[0] / 4u;
    let i1 = s.i[1] / 4u;
    let z = vec4(0.0);
    return Row(select(z, src4[i0.x], s.ok[0].x), select(z, src4[i0.y], s.ok[0].y),
               select(z, src4[i0.z], s.ok[0].z), select(z, src4[i0.w], s.ok[0].w),
               select(z, src4[i1.x], s.ok[1].x), select(z, src4[i1.y], s.ok[1].y),
               select(z, src4[i1.z], s.ok[1].z), select(z, src4[i1.w], s.ok[1].w));
}

// One k-step of gemm4: 4 channels of the tile's 16 source pixels (s) times the 16 columns'
// weights at offset o.
const KSTEP: u32 = 4u;

fn gemm_step(acc: ptr<function, Tile>, s: Srcs, l: Layout, o: u32, c: u32, col0: u32,
             input_grad: bool) {
    let ov = vec4(o);
    var wm = Wb(wmat(l.wo[0] + ov, input_grad), wmat(l.wo[1] + ov, input_grad),
                wmat(l.wo[2] + ov, input_grad), wmat(l.wo[3] + ov, input_grad));
    fma4(acc, 0u, ld4(s[0], c), &wm);
    fma4(acc, 1u, ld4(s[1], c), &wm);
    fma4(acc, 2u, ld4(s[2], c), &wm);
    fma4(acc, 3u, ld4(s[3], c), &wm);
    fma4(acc, 4u, ld4(s[4], c), &wm);
    fma4(acc, 5u, ld4(s[5], c), &wm);
    fma4(acc, 6u, ld4(s[6], c), &wm);
    fma4(acc, 7u, ld4(s[7], c), &wm);
    fma4(acc, 8u, ld4(s[8], c), &wm);
    fma4(acc, 9u, ld4(s[9], c), &wm);
    fma4(acc, 10u, ld4(s[10], c), &wm);
    fma4(acc, 11u, ld4(s[11], c), &wm);
    fma4(acc, 12u, ld4(s[12], c), &wm);
    fma4(acc, 13u, ld4(s[13], c), &wm);
    fma4(acc, 14u, ld4(s[14], c), &wm);
    fma4(acc, 15u, ld4(s[15], c), &wm);
}
