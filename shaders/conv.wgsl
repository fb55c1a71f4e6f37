// 2-D convolution as implicit GEMMs. Activations NHWC, weights [Cout, KH, KW, Cin].
//
// forward:        y[m, co]  = sum_(tap, ci) x[pixel(m, tap), ci] * w[co, tap, ci]   m: output pixels
// input gradient: dx[m, ci] = sum_(tap, co) dy[pixel(m, tap), co] * w[co, tap, ci]  m: input pixels
// weight grad:    dw[co, tap, ci] = sum_m dy[m, co] * x[pixel(m, tap), ci]         m: output pixels
//
// The first two share one register-tiled GEMM: rows are pixels whose source values are gathered
// per tap (im2col folded into the loads), columns are channels. The input gradient is a gather, not
// a scatter: input pixels are grouped by their position modulo the stride, and every pixel of a
// group is reached by the same taps, so a stride-s transposed convolution becomes s*s small
// stride-1 convolutions and no tap is wasted on a pixel it cannot reach.
//
// Shape of the code, for llvmpipe (where storage loads cost a loop over the 8 SIMD lanes each and
// barriers are coroutine switches):
// - each invocation owns a TM x TN = 16 pixel x 16 channel tile: one gathered vec4 feeds 16
//   outputs, one weight vec4 feeds 16. Lanes differ in pixels and share the channel block
//   (workgroup y), so weight loads hit one address across lanes, which is the cheaper kind;
// - no workgroup memory, no barriers;
// - padding and image edges are resolved once per (pixel, tap): the source index is clamped and a
//   flag zeroes the value, so the channel loop has no branches;
// - vec4 loads along the contiguous channel dimension when both channel counts are multiples of 4;
//   four of them form a mat4x4 (free in SIMD-of-lanes code), and `a * W` is a 4x4 block of FMAs.

struct Params {
    n: u32, h: u32, w: u32, cin: u32,
    // m: forward and weight grad: n*ho*wo pixels (direct kernels: n*ho rows); dx: row tiles
    ho: u32, wo: u32, cout: u32, m: u32,
    kh: u32, kw: u32, sh: u32, sw: u32,
    ph: u32, pw: u32, flags: u32, k: u32,   // k: kh*kw*cin, the length of a weight row
    splits: u32, chunk: u32, total: u32,  // weight grad: split-K sums of `chunk` pixels (or rows)
    rsplit: u32,  // weight-grad reduce: threads per weight sharing its splits (1 or 64)
}

const TM: u32 = 16u;  // pixels per invocation
const TN: u32 = 16u;  // channels per invocation

const F_BIAS: u32 = 1u;
const F_RELU: u32 = 2u;
const F_ACC: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
// The same buffers viewed as vec4 (channel counts that are multiples of 4) or as scalars.
// src: the image gathered per tap (x, or dy for the input gradient; scratch for the reduction).
// opd: the other operand (the weights, or dy for the weight gradient).
@group(1) @binding(0) var<storage, read_write> src4: array<vec4<f32>>;
@group(1) @binding(0) var<storage, read_write> src1: array<f32>;
@group(1) @binding(1) var<storage, read_write> opd4: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read_write> opd1: array<f32>;
@group(1) @binding(2) var<storage, read_write> bias4: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read_write> bias1: array<f32>;
@group(1) @binding(3) var<storage, read_write> dst4: array<vec4<f32>>;
@group(1) @binding(3) var<storage, read_write> dst1: array<f32>;

alias Acc = array<vec4<f32>, 4>;   // one pixel's TN outputs
alias Tile = array<Acc, 16>;       // TM pixels
alias Wb = array<mat4x4<f32>, 4>;  // one k-step of weights for the TN channels

// Every array below is indexed with constants only (the 16-way repetitions are spelled out): a
// loop-indexed access to a register array becomes a compare-and-select ladder over all its
// elements, which multiplies both run time and shader compile time.

// A tile row: where its source window starts in the source image (may be negative: padding), the
// source image's first row, and the destination row it is written to.
struct Px { h0: i32, w0: i32, row0: u32, out: u32 }
alias Pxs = array<Px, 16>;

// The taps that reach a tile: tap (i, j) has weight position (kh0 + kstep_h*i, kw0 + kstep_w*j)
// and reads source pixel (h0 + sign*i, w0 + sign*j) of a src_h x src_w image. Only the first
// `rows` rows of the tile exist (the others duplicate the last one and are not stored).
struct Taps {
    kh0: u32, kw0: u32, kstep_h: u32, kstep_w: u32,
    nth: u32, ntw: u32, sign: i32,
    src_h: u32, src_w: u32, rows: u32,
}

// Index of a source pixel's first channel in units of `per`; clamped to 0 (and flagged) outside the
// image.
struct Src { i: u32, ok: bool }
alias Srcs = array<Src, 16>;

fn src_at(q: Px, dh: i32, dw: i32, tp: Taps, per: u32) -> Src {
    let hi = q.h0 + dh;
    let wi = q.w0 + dw;
    let ok = u32(hi) < tp.src_h && u32(wi) < tp.src_w;
    return Src(select(0u, ((q.row0 + u32(hi)) * tp.src_w + u32(wi)) * per, ok), ok);
}

fn srcs(px: ptr<function, Pxs>, i: u32, j: u32, tp: Taps, per: u32) -> Srcs {
    let dh = tp.sign * i32(i);
    let dw = tp.sign * i32(j);
    return Srcs(
        src_at((*px)[0], dh, dw, tp, per), src_at((*px)[1], dh, dw, tp, per),
        src_at((*px)[2], dh, dw, tp, per), src_at((*px)[3], dh, dw, tp, per),
        src_at((*px)[4], dh, dw, tp, per), src_at((*px)[5], dh, dw, tp, per),
        src_at((*px)[6], dh, dw, tp, per), src_at((*px)[7], dh, dw, tp, per),
        src_at((*px)[8], dh, dw, tp, per), src_at((*px)[9], dh, dw, tp, per),
        src_at((*px)[10], dh, dw, tp, per), src_at((*px)[11], dh, dw, tp, per),
        src_at((*px)[12], dh, dw, tp, per), src_at((*px)[13], dh, dw, tp, per),
        src_at((*px)[14], dh, dw, tp, per), src_at((*px)[15], dh, dw, tp, per),
    );
}

fn ld4(s: Src, c: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), src4[s.i + c], s.ok);
}

fn ld1(s: Src, c: u32) -> f32 {
    return select(0.0, src1[s.i + c], s.ok);
}

fn fma4(acc: ptr<function, Tile>, t: u32, a: vec4<f32>, wm: ptr<function, Wb>) {
    (*acc)[t][0] += a * (*wm)[0];
    (*acc)[t][1] += a * (*wm)[1];
    (*acc)[t][2] += a * (*wm)[2];
    (*acc)[t][3] += a * (*wm)[3];
}

fn fma1(acc: ptr<function, Tile>, t: u32, a: f32, wv: ptr<function, Acc>) {
    (*acc)[t][0] += a * (*wv)[0];
    (*acc)[t][1] += a * (*wv)[1];
    (*acc)[t][2] += a * (*wv)[2];
    (*acc)[t][3] += a * (*wv)[3];
}

fn cdiv(a: u32, b: u32) -> u32 {
    return (a + b - 1u) / b;
}

// A position (n, r, c) in an [n, rows, cols] grid, stepped one element at a time: integer division
// has no SIMD instruction and runs lane by lane, so it is done once, at the start.
struct Walk { n: u32, r: u32, c: u32 }

fn walk_start(i: u32, rows: u32, cols: u32) -> Walk {
    let plane = rows * cols;
    let n = i / plane;
    let rem = i - n * plane;
    let r = rem / cols;
    return Walk(n, r, rem - r * cols);
}

// The next position, or `v` itself when `go` is false (rows past the end repeat the last one).
fn walk_next(v: Walk, rows: u32, cols: u32, go: bool) -> Walk {
    let wrap_c = v.c + 1u == cols;
    let r = select(v.r, v.r + 1u, wrap_c);
    let wrap_r = r == rows;
    let n = select(v.n, v.n + 1u, wrap_r);
    return Walk(select(v.n, n, go), select(v.r, select(r, 0u, wrap_r), go),
                select(v.c, select(v.c + 1u, 0u, wrap_c), go));
}

// ---------------------------------------------------------------------------------------------
// Row decoding.

// Forward: row m is output pixel (n, oh, ow); its window starts at (oh*sh - ph, ow*sw - pw).
// Rows past the last pixel repeat it.
fn px_forward(v: Walk, m: u32) -> Px {
    return Px(i32(v.r * p.sh) - i32(p.ph), i32(v.c * p.sw) - i32(p.pw), v.n * p.h, min(m, p.m - 1u));
}

fn next_forward(v: Walk, m: u32) -> Walk {
    return walk_next(v, p.ho, p.wo, m < p.m);
}

fn rows_forward(tile: u32, px: ptr<function, Pxs>) -> Taps {
    let m = tile * TM;
    var v = walk_start(min(m, p.m - 1u), p.ho, p.wo);
    (*px)[0] = px_forward(v, m);
    v = next_forward(v, m + 1u);
    (*px)[1] = px_forward(v, m + 1u);
    v = next_forward(v, m + 2u);
    (*px)[2] = px_forward(v, m + 2u);
    v = next_forward(v, m + 3u);
    (*px)[3] = px_forward(v, m + 3u);
    v = next_forward(v, m + 4u);
    (*px)[4] = px_forward(v, m + 4u);
    v = next_forward(v, m + 5u);
    (*px)[5] = px_forward(v, m + 5u);
    v = next_forward(v, m + 6u);
    (*px)[6] = px_forward(v, m + 6u);
    v = next_forward(v, m + 7u);
    (*px)[7] = px_forward(v, m + 7u);
    v = next_forward(v, m + 8u);
    (*px)[8] = px_forward(v, m + 8u);
    v = next_forward(v, m + 9u);
    (*px)[9] = px_forward(v, m + 9u);
    v = next_forward(v, m + 10u);
    (*px)[10] = px_forward(v, m + 10u);
    v = next_forward(v, m + 11u);
    (*px)[11] = px_forward(v, m + 11u);
    v = next_forward(v, m + 12u);
    (*px)[12] = px_forward(v, m + 12u);
    v = next_forward(v, m + 13u);
    (*px)[13] = px_forward(v, m + 13u);
    v = next_forward(v, m + 14u);
    (*px)[14] = px_forward(v, m + 14u);
    v = next_forward(v, m + 15u);
    (*px)[15] = px_forward(v, m + 15u);
    let rows = select(0u, min(TM, p.m - m), m < p.m);
    return Taps(0u, 0u, 1u, 1u, p.kh, p.kw, 1, p.h, p.w, rows);
}

// Input gradient: input pixels are grouped by (hi mod sh, wi mod sw) and tiled within their group.
// For group (rh, rw) the taps that reach a pixel are kh = kh0 + sh*i with kh0 = (rh + ph) mod sh,
// and the output pixel they read is oh = hq + (rh + ph) / sh - i where hi = rh + sh*hq (likewise
// for w).
// Pixel (n, hq, wq) of group g is input pixel (n, rh + sh*hq, rw + sw*wq).
struct Group { rh: u32, rw: u32, hr: u32, wr: u32, cnt: u32, ok: bool }

fn px_input(g: Group, v: Walk) -> Px {
    let out = (v.n * p.h + g.rh + p.sh * v.r) * p.w + g.rw + p.sw * v.c;
    return Px(
        i32(v.r + (g.rh + p.ph) / p.sh),
        i32(v.c + (g.rw + p.pw) / p.sw),
        v.n * p.ho,
        min(out, p.n * p.h * p.w - 1u),
    );
}

fn next_input(g: Group, v: Walk, l: u32) -> Walk {
    return walk_next(v, g.hr, g.wr, l < g.cnt);
}

fn rows_input_grad(tile: u32, px: ptr<function, Pxs>) -> Taps {
    // Find the group of this tile; tiles past the last group get an empty group.
    var rest = tile;
    var g = Group(0u, 0u, 1u, 1u, 1u, false);
    for (var k = 0u; k < p.sh * p.sw; k++) {
        let rh = k / p.sw;
        let rw = k - rh * p.sw;
        let hr = cdiv(p.h - min(rh, p.h), p.sh);
        let wr = cdiv(p.w - min(rw, p.w), p.sw);
        let tiles = cdiv(p.n * hr * wr, TM);
        if !g.ok && rest < tiles {
            g = Group(rh, rw, hr, wr, p.n * hr * wr, true);
        } else if !g.ok {
            rest -= tiles;
        }
    }
    let l = rest * TM;
    var v = walk_start(min(l, g.cnt - 1u), g.hr, g.wr);
    (*px)[0] = px_input(g, v);
    v = next_input(g, v, l + 1u);
    (*px)[1] = px_input(g, v);
    v = next_input(g, v, l + 2u);
    (*px)[2] = px_input(g, v);
    v = next_input(g, v, l + 3u);
    (*px)[3] = px_input(g, v);
    v = next_input(g, v, l + 4u);
    (*px)[4] = px_input(g, v);
    v = next_input(g, v, l + 5u);
    (*px)[5] = px_input(g, v);
    v = next_input(g, v, l + 6u);
    (*px)[6] = px_input(g, v);
    v = next_input(g, v, l + 7u);
    (*px)[7] = px_input(g, v);
    v = next_input(g, v, l + 8u);
    (*px)[8] = px_input(g, v);
    v = next_input(g, v, l + 9u);
    (*px)[9] = px_input(g, v);
    v = next_input(g, v, l + 10u);
    (*px)[10] = px_input(g, v);
    v = next_input(g, v, l + 11u);
    (*px)[11] = px_input(g, v);
    v = next_input(g, v, l + 12u);
    (*px)[12] = px_input(g, v);
    v = next_input(g, v, l + 13u);
    (*px)[13] = px_input(g, v);
    v = next_input(g, v, l + 14u);
    (*px)[14] = px_input(g, v);
    v = next_input(g, v, l + 15u);
    (*px)[15] = px_input(g, v);
    let kh0 = (g.rh + p.ph) % p.sh;
    let kw0 = (g.rw + p.pw) % p.sw;
    let nth = select(0u, cdiv(p.kh - min(kh0, p.kh), p.sh), g.ok);
    let ntw = cdiv(p.kw - min(kw0, p.kw), p.sw);
    let rows = select(0u, min(TM, g.cnt - l), g.ok && l < g.cnt);
    return Taps(kh0, kw0, p.sh, p.sw, nth, ntw, -1, p.ho, p.wo, rows);
}

// ---------------------------------------------------------------------------------------------
// The tile GEMM shared by forward and input gradient, in a vec4 and a scalar flavour (an entry
// point may use only one view of a buffer, so the two cannot share a body).
//
// Weights: the element for tile column 4b+e at k-step c of tap `tap` is at
// wo[b][e] + tap * tap_len + c * cstep (in vec4 or scalar units). Forward: columns are output
// channels (weight rows) and k runs along a row. Input gradient: columns are input channels (along
// a row) and k runs over output channels (across rows), so the 4x4 blocks arrive transposed.

struct Layout {
    wo: array<vec4<u32>, 4>,
    tap_len: u32,  // weight elements per tap (cin, in load units)
    cstep: u32,    // weight offset of one k-step
    per: u32,      // loads per source pixel = k-steps per tap
    ncols: u32,    // channels of the result
}

fn col_offsets(col: u32, last: u32, mul: u32) -> vec4<u32> {
    return min(vec4(col) + vec4(0u, 1u, 2u, 3u), vec4(last)) * mul;
}

fn weight_layout(col0: u32, input_grad: bool, lanes: u32) -> Layout {
    var l: Layout;
    l.ncols = select(p.cout, p.cin, input_grad);
    l.per = select(p.cin, p.cout, input_grad) / lanes;
    l.tap_len = p.cin / lanes;
    let row_len = p.k / lanes;
    let last = l.ncols - 1u;
    if !input_grad {
        // Column q is weight row min(col0 + q, last).
        l.wo = array(col_offsets(col0, last, row_len), col_offsets(col0 + 4u, last, row_len),
                     col_offsets(col0 + 8u, last, row_len), col_offsets(col0 + 12u, last, row_len));
        l.cstep = 1u;
    } else if lanes == 1u {
        // Column q is input channel min(col0 + q, last) of weight row c.
        l.wo = array(col_offsets(col0, last, 1u), col_offsets(col0 + 4u, last, 1u),
                     col_offsets(col0 + 8u, last, 1u), col_offsets(col0 + 12u, last, 1u));
        l.cstep = p.k;
    } else {
        // K-step c is weight rows lanes * c ... With vec4s, block b is the vec4 of input channels
        // col0 + 4b.., element e is weight row 4c + e (the 64-bit build reads its own blocks).
        let rows = vec4(0u, 1u, 2u, 3u) * row_len;
        let b0 = col0 / 4u;
        let lb = l.tap_len - 1u;
        l.wo = array(rows + min(b0, lb), rows + min(b0 + 1u, lb), rows + min(b0 + 2u, lb),
                     rows + min(b0 + 3u, lb));
        l.cstep = lanes * row_len;
    }
    return l;
}

fn tap_index(tp: Taps, i: u32, j: u32) -> u32 {
    return (tp.kh0 + tp.kstep_h * i) * p.kw + tp.kw0 + tp.kstep_w * j;
}

fn wmat(o: vec4<u32>, transposed: bool) -> mat4x4<f32> {
    let m = mat4x4(opd4[o.x], opd4[o.y], opd4[o.z], opd4[o.w]);
    if transposed {
        return transpose(m);
    }
    return m;
}

fn wvec(o: vec4<u32>) -> vec4<f32> {
    return vec4(opd1[o.x], opd1[o.y], opd1[o.z], opd1[o.w]);
}

// Epilogue. It is a loop over the tile's rows that shifts the tile down by one row per iteration,
// so every access uses a constant index and the stores are emitted once rather than 64 times
// (spelled out, they dominated the shader's compile time). Columns past ncols are dropped.

fn shift_acc(acc: ptr<function, Tile>) {
    let a = *acc;
    *acc = Tile(a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13],
                a[14], a[15], a[15]);
}

fn shift_rows(px: ptr<function, Pxs>, acc: ptr<function, Tile>) {
    let q = *px;
    *px = Pxs(q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8], q[9], q[10], q[11], q[12], q[13],
              q[14], q[15], q[15]);
    shift_acc(acc);
}

// Bias of four columns starting at `col` (zero without bias; the index is clamped because the
// bias binding is a stand-in when there is none).
fn bias_of(col: u32, ncols: u32) -> vec4<f32> {
    let b = bias4[min(col, ncols - 1u) / 4u];
    return select(vec4(0.0), b, (p.flags & F_BIAS) != 0u);
}

fn put4(row: u32, v_in: vec4<f32>, b: vec4<f32>, col: u32, ncols: u32) {
    if col < ncols {
        let o = (row * ncols + col) / 4u;
        var v = v_in + b;
        v = select(v, max(v, vec4(0.0)), (p.flags & F_RELU) != 0u);
        if (p.flags & F_ACC) != 0u {
            v += dst4[o];
        }
        dst4[o] = v;
    }
}

fn store_tile4(px: ptr<function, Pxs>, acc: ptr<function, Tile>, rows: u32, col0: u32, ncols: u32) {
    let b0 = bias_of(col0, ncols);
    let b1 = bias_of(col0 + 4u, ncols);
    let b2 = bias_of(col0 + 8u, ncols);
    let b3 = bias_of(col0 + 12u, ncols);
    for (var t = 0u; t < rows; t++) {
        let row = (*px)[0].out;
        let a = (*acc)[0];
        put4(row, a[0], b0, col0, ncols);
        put4(row, a[1], b1, col0 + 4u, ncols);
        put4(row, a[2], b2, col0 + 8u, ncols);
        put4(row, a[3], b3, col0 + 12u, ncols);
        shift_rows(px, acc);
    }
}

fn put1(row: u32, v_in: f32, col: u32, ncols: u32) {
    if col < ncols {
        let o = row * ncols + col;
        var v = v_in;
        if (p.flags & F_BIAS) != 0u {
            v += bias1[col];
        }
        v = select(v, max(v, 0.0), (p.flags & F_RELU) != 0u);
        if (p.flags & F_ACC) != 0u {
            v += dst1[o];
        }
        dst1[o] = v;
    }
}

fn store_tile1(px: ptr<function, Pxs>, acc: ptr<function, Tile>, rows: u32, col0: u32, ncols: u32) {
    for (var t = 0u; t < rows; t++) {
        let row = (*px)[0].out;
        for (var e = 0u; e < TN; e++) {
            put1(row, (*acc)[0][e / 4u][e % 4u], col0 + e, ncols);
        }
        shift_rows(px, acc);
    }
}

// K-steps of KSTEP channels (the prelude's: 4, or 8 in the 64-bit build), each done by the
// prelude's gemm_step.
fn gemm4(px: ptr<function, Pxs>, tp: Taps, col0: u32, input_grad: bool) -> Tile {
    let l = weight_layout(col0, input_grad, KSTEP);
    var acc: Tile;
    for (var i = 0u; i < tp.nth; i++) {
        for (var j = 0u; j < tp.ntw; j++) {
            let s = srcs(px, i, j, tp, l.per);
            let tb = tap_index(tp, i, j) * l.tap_len;
            for (var c = 0u; c < l.per; c++) {
                gemm_step(&acc, s, l, tb + c * l.cstep, c, col0, input_grad);
            }
        }
    }
    return acc;
}

fn gemm1(px: ptr<function, Pxs>, tp: Taps, col0: u32, input_grad: bool) -> Tile {
    let l = weight_layout(col0, input_grad, 1u);
    var acc: Tile;
    for (var i = 0u; i < tp.nth; i++) {
        for (var j = 0u; j < tp.ntw; j++) {
            let s = srcs(px, i, j, tp, l.per);
            let tb = tap_index(tp, i, j) * l.tap_len;
            for (var c = 0u; c < l.per; c++) {
                let o = vec4(tb + c * l.cstep);
                var wv = Acc(wvec(l.wo[0] + o), wvec(l.wo[1] + o), wvec(l.wo[2] + o),
                             wvec(l.wo[3] + o));
                fma1(&acc, 0u, ld1(s[0], c), &wv);
                fma1(&acc, 1u, ld1(s[1], c), &wv);
                fma1(&acc, 2u, ld1(s[2], c), &wv);
                fma1(&acc, 3u, ld1(s[3], c), &wv);
                fma1(&acc, 4u, ld1(s[4], c), &wv);
                fma1(&acc, 5u, ld1(s[5], c), &wv);
                fma1(&acc, 6u, ld1(s[6], c), &wv);
                fma1(&acc, 7u, ld1(s[7], c), &wv);
                fma1(&acc, 8u, ld1(s[8], c), &wv);
                fma1(&acc, 9u, ld1(s[9], c), &wv);
                fma1(&acc, 10u, ld1(s[10], c), &wv);
                fma1(&acc, 11u, ld1(s[11], c), &wv);
                fma1(&acc, 12u, ld1(s[12], c), &wv);
                fma1(&acc, 13u, ld1(s[13], c), &wv);
                fma1(&acc, 14u, ld1(s[14], c), &wv);
                fma1(&acc, 15u, ld1(s[15], c), &wv);
            }
        }
    }
    return acc;
}

// Entry points: gid.x is the row tile, gid.y the channel tile. The suffix says how channels are
// read and written: 4 = vec4 gathers and stores, 1 = scalar, 1_out4 = scalar gathers (few input
// channels, e.g. a first layer) with vec4 stores.

@compute @workgroup_size(64)
fn forward4(@builtin(global_invocation_id) gid: vec3<u32>) {
    var px: Pxs;
    let tp = rows_forward(gid.x, &px);
    var acc = gemm4(&px, tp, gid.y * TN, false);
    store_tile4(&px, &acc, tp.rows, gid.y * TN, p.cout);
}

@compute @workgroup_size(64)
fn forward1(@builtin(global_invocation_id) gid: vec3<u32>) {
    var px: Pxs;
    let tp = rows_forward(gid.x, &px);
    var acc = gemm1(&px, tp, gid.y * TN, false);
    store_tile1(&px, &acc, tp.rows, gid.y * TN, p.cout);
}

@compute @workgroup_size(64)
fn forward1_out4(@builtin(global_invocation_id) gid: vec3<u32>) {
    var px: Pxs;
    let tp = rows_forward(gid.x, &px);
    var acc = gemm1(&px, tp, gid.y * TN, false);
    store_tile4(&px, &acc, tp.rows, gid.y * TN, p.cout);
}

@compute @workgroup_size(64)
fn input_grad4(@builtin(global_invocation_id) gid: vec3<u32>) {
    var px: Pxs;
    let tp = rows_input_grad(gid.x, &px);
    var acc = gemm4(&px, tp, gid.y * TN, true);
    store_tile4(&px, &acc, tp.rows, gid.y * TN, p.cin);
}

@compute @workgroup_size(64)
fn input_grad1(@builtin(global_invocation_id) gid: vec3<u32>) {
    var px: Pxs;
    let tp = rows_input_grad(gid.x, &px);
    var acc = gemm1(&px, tp, gid.y * TN, true);
    store_tile1(&px, &acc, tp.rows, gid.y * TN, p.cin);
}

// ---------------------------------------------------------------------------------------------
// Weight gradient: dw[co, q] = sum over output pixels m of dy[m, co] * x[pixel(m, tap(q)), ci(q)]
// with q = tap * cin + ci the position along a weight row. The reduction (n*ho*wo, long) is split
// into `splits` chunks of `chunk` pixels whose partial sums go to a scratch buffer
// [splits, cout * k] and are added up by weight_grad_reduce; with one split the partial kernel
// writes dw directly.
//
// An invocation owns a tile of output channels (rows, workgroup y) x weight-row positions (columns):
// 32 x 32 in weight_grad4, 16 x 16 in weight_grad1. Invocations along x are (split, column tile)
// with the column tile fastest, so neighbouring lanes share the split and read the same dy values.
// weight_grad1 holds its tile as acc[row][column block].

// acc[t] += b * a[t / 4][t % 4] for the 16 rows t: a holds dy for the tile's 16 output channels,
// b the gathered x values of its 16 columns.
fn outer16(acc: ptr<function, Tile>, a: Acc, b: ptr<function, Acc>) {
    fma1(acc, 0u, a[0].x, b);
    fma1(acc, 1u, a[0].y, b);
    fma1(acc, 2u, a[0].z, b);
    fma1(acc, 3u, a[0].w, b);
    fma1(acc, 4u, a[1].x, b);
    fma1(acc, 5u, a[1].y, b);
    fma1(acc, 6u, a[1].z, b);
    fma1(acc, 7u, a[1].w, b);
    fma1(acc, 8u, a[2].x, b);
    fma1(acc, 9u, a[2].y, b);
    fma1(acc, 10u, a[2].z, b);
    fma1(acc, 11u, a[2].w, b);
    fma1(acc, 12u, a[3].x, b);
    fma1(acc, 13u, a[3].y, b);
    fma1(acc, 14u, a[3].z, b);
    fma1(acc, 15u, a[3].w, b);
}

// Where this invocation's partial sums start in the destination, and whether it exists.
struct Part { split: u32, tile: u32, base: u32, ok: bool }

fn part(gx: u32, col_tiles: u32) -> Part {
    let split = gx / col_tiles;
    let base = select(0u, split * p.total, p.splits > 1u);
    return Part(split, gx - split * col_tiles, base, split < p.splits);
}

fn put_w(o: u32, v: f32) {
    dst1[o] = select(v, v + dst1[o], (p.flags & F_ACC) != 0u);
}

// cin and cout multiples of 4: an invocation owns CD = 32 output channels (rows) x 32 consecutive
// weight-row positions (columns: eight 4-channel blocks, which may span taps), as in the matmul's
// tile4: it walks its pixels four at a time, reads their dy rows (`dy_row`; dy is bound as the third
// operand too) and x columns (`x_blocks`, from the prelude), and adds 64 products of 4 x 4 blocks,
// so each accumulator is loaded and stored once per four pixels. The tile is acc[i][j][r]: output
// channel co0 + 4i + r, columns q0 + 4j ... Four pixels per step, not one, is what pays: it cuts
// the accumulators' loads and stores fourfold, where a larger tile alone changes little.
alias Strip = array<mat4x4<f32>, 8>;

// acc[j] += x[j] * d: x[j]'s columns are four pixels' values of column block j, d's rows r those
// pixels' dy of one output channel.
fn strip_mac(acc: Strip, d: mat4x4<f32>, x: Strip) -> Strip {
    return Strip(acc[0] + x[0] * d, acc[1] + x[1] * d, acc[2] + x[2] * d, acc[3] + x[3] * d,
                 acc[4] + x[4] * d, acc[5] + x[5] * d, acc[6] + x[6] * d, acc[7] + x[7] * d);
}

// dy block i of four pixels' rows, as d[r][t] = dy of pixel t, channel 4i + r.
fn dy_block(a: array<Row, 4>, i: u32) -> mat4x4<f32> {
    return transpose(mat4x4(a[0][i], a[1][i], a[2][i], a[3][i]));
}

fn x_strip(b: array<Row, 4>) -> Strip {
    return Strip(mat4x4(b[0][0], b[1][0], b[2][0], b[3][0]), mat4x4(b[0][1], b[1][1], b[2][1], b[3][1]),
                 mat4x4(b[0][2], b[1][2], b[2][2], b[3][2]), mat4x4(b[0][3], b[1][3], b[2][3], b[3][3]),
                 mat4x4(b[0][4], b[1][4], b[2][4], b[3][4]), mat4x4(b[0][5], b[1][5], b[2][5], b[3][5]),
                 mat4x4(b[0][6], b[1][6], b[2][6], b[3][6]), mat4x4(b[0][7], b[1][7], b[2][7], b[3][7]));
}

// The tile's column blocks: block b starts at weight-row position q0 + 4b (clamped to the last
// block), which is tap (kh, kw) and input channel ci; lo holds blocks 0-3, hi blocks 4-7.
struct Blocks { dh: array<vec4<i32>, 2>, dw: array<vec4<i32>, 2>, ci: array<vec4<u32>, 2> }

fn blocks_at(q0: u32) -> Blocks {
    var bl: Blocks;
    for (var i = 0u; i < 2u; i++) {
        let q = min(vec4(q0 + 16u * i) + vec4(0u, 4u, 8u, 12u), vec4(p.k - 4u));
        let tap = q / p.cin;
        let kh = tap / p.kw;
        bl.dh[i] = vec4<i32>(kh) - i32(p.ph);
        bl.dw[i] = vec4<i32>(tap - kh * p.kw) - i32(p.pw);
        bl.ci[i] = q - tap * p.cin;
    }
    return bl;
}

// Where output pixel v's x values for the blocks start (element index of their first channel), and
// whether they are inside the image (`live` false: all outside).
struct BlockSrc { i: array<vec4<u32>, 2>, ok: array<vec4<bool>, 2> }

fn block_src(bl: Blocks, v: Walk, live: bool) -> BlockSrc {
    var s: BlockSrc;
    let h0 = vec4(i32(v.r * p.sh));
    let w0 = vec4(i32(v.c * p.sw));
    let row0 = vec4(v.n * p.h);
    for (var i = 0u; i < 2u; i++) {
        let hi = h0 + bl.dh[i];
        let wi = w0 + bl.dw[i];
        let ok = vec4<u32>(hi) < vec4(p.h) & vec4<u32>(wi) < vec4(p.w) & vec4(live);
        s.ok[i] = ok;
        s.i[i] = select(vec4(0u), ((row0 + vec4<u32>(hi)) * p.w + vec4<u32>(wi)) * p.cin + bl.ci[i], ok);
    }
    return s;
}

@compute @workgroup_size(64)
fn weight_grad4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let pt = part(gid.x, cdiv(p.k, CD));
    if !pt.ok {
        return;
    }
    let q0 = pt.tile * CD;
    let co0 = gid.y * CD;
    let bl = blocks_at(q0);
    let m0 = pt.split * p.chunk;
    let m1 = min(m0 + p.chunk, p.m);
    var s0: Strip;
    var s1: Strip;
    var s2: Strip;
    var s3: Strip;
    var s4: Strip;
    var s5: Strip;
    var s6: Strip;
    var s7: Strip;
    var v = walk_start(min(m0, p.m - 1u), p.ho, p.wo);
    for (var m = m0; m < m1; m += 4u) {
        // Pixels at or past m1 repeat the last one, with x read as zeros.
        var d: array<Row, 4>;
        var x: array<Row, 4>;
        d[0] = dy_row(m, co0);
        x[0] = x_blocks(block_src(bl, v, true));
        v = walk_next(v, p.ho, p.wo, m + 1u < m1);
        d[1] = dy_row(min(m + 1u, m1 - 1u), co0);
        x[1] = x_blocks(block_src(bl, v, m + 1u < m1));
        v = walk_next(v, p.ho, p.wo, m + 2u < m1);
        d[2] = dy_row(min(m + 2u, m1 - 1u), co0);
        x[2] = x_blocks(block_src(bl, v, m + 2u < m1));
        v = walk_next(v, p.ho, p.wo, m + 3u < m1);
        d[3] = dy_row(min(m + 3u, m1 - 1u), co0);
        x[3] = x_blocks(block_src(bl, v, m + 3u < m1));
        v = walk_next(v, p.ho, p.wo, m + 4u < m1);
        let xs = x_strip(x);
        s0 = strip_mac(s0, dy_block(d, 0u), xs);
        s1 = strip_mac(s1, dy_block(d, 1u), xs);
        s2 = strip_mac(s2, dy_block(d, 2u), xs);
        s3 = strip_mac(s3, dy_block(d, 3u), xs);
        s4 = strip_mac(s4, dy_block(d, 4u), xs);
        s5 = strip_mac(s5, dy_block(d, 5u), xs);
        s6 = strip_mac(s6, dy_block(d, 6u), xs);
        s7 = strip_mac(s7, dy_block(d, 7u), xs);
    }
    // Output channel co goes to dst[base + co * k + q0 ..], a block at a time.
    for (var r = 0u; r < 4u; r++) {
        put_strip_row(pt.base, co0 + r, q0, s0, r);
        put_strip_row(pt.base, co0 + 4u + r, q0, s1, r);
        put_strip_row(pt.base, co0 + 8u + r, q0, s2, r);
        put_strip_row(pt.base, co0 + 12u + r, q0, s3, r);
        put_strip_row(pt.base, co0 + 16u + r, q0, s4, r);
        put_strip_row(pt.base, co0 + 20u + r, q0, s5, r);
        put_strip_row(pt.base, co0 + 24u + r, q0, s6, r);
        put_strip_row(pt.base, co0 + 28u + r, q0, s7, r);
    }
}

// Row r of every block of a strip (picked with selects: a dynamic index would move the tile to
// memory), stored or added at output channel co; columns past k are dropped.
fn put_strip_row(base: u32, co: u32, q0: u32, s: Strip, r: u32) {
    if co < p.cout {
        let o = (base + co * p.k + q0) / 4u;
        for (var j = 0u; j < 8u; j++) {
            if q0 + 4u * j < p.k {
                let m = s[j];
                let val = select(select(m[0], m[1], r == 1u), select(m[2], m[3], r == 3u), r >= 2u);
                dst4[o + j] = select(val, val + dst4[o + j], (p.flags & F_ACC) != 0u);
            }
        }
    }
}

// Any channel counts: a column tile is 16 consecutive weight-row positions (taps and channels
// mixed), each gathered with its own scalar load.
@compute @workgroup_size(64)
fn weight_grad1(@builtin(global_invocation_id) gid: vec3<u32>) {
    let pt = part(gid.x, cdiv(p.k, TN));
    if !pt.ok {
        return;
    }
    let q0 = pt.tile * TN;
    let co0 = gid.y * TM;
    // Tap offsets and channel of the 16 columns, four per vec4.
    var qh: array<vec4<i32>, 4>;
    var qw: array<vec4<i32>, 4>;
    var qc: array<vec4<u32>, 4>;
    for (var b = 0u; b < 4u; b++) {
        let q = min(vec4(q0 + 4u * b) + vec4(0u, 1u, 2u, 3u), vec4(p.k - 1u));
        let tap = q / p.cin;
        let kh = tap / p.kw;
        qh[b] = vec4<i32>(kh) - i32(p.ph);
        qw[b] = vec4<i32>(tap - kh * p.kw) - i32(p.pw);
        qc[b] = q - tap * p.cin;
    }
    let yi = min(vec4(co0), vec4(p.cout - 1u));
    let m0 = pt.split * p.chunk;
    let m1 = min(m0 + p.chunk, p.m);
    var acc: Tile;
    var v = walk_start(min(m0, p.m - 1u), p.ho, p.wo);
    for (var m = m0; m < m1; m++) {
        let h0 = vec4(i32(v.r * p.sh));
        let w0 = vec4(i32(v.c * p.sw));
        var b = Acc(gather4(v.n, h0 + qh[0], w0 + qw[0], qc[0]), gather4(v.n, h0 + qh[1], w0 + qw[1], qc[1]),
                    gather4(v.n, h0 + qh[2], w0 + qw[2], qc[2]), gather4(v.n, h0 + qh[3], w0 + qw[3], qc[3]));
        let yb = m * p.cout;
        let a = Acc(dy4(yb, co0), dy4(yb, co0 + 4u), dy4(yb, co0 + 8u), dy4(yb, co0 + 12u));
        outer16(&acc, a, &b);
        v = walk_next(v, p.ho, p.wo, true);
    }
    let rows = min(TM, p.cout - co0);
    for (var t = 0u; t < rows; t++) {
        let o = pt.base + (co0 + t) * p.k + q0;
        for (var e = 0u; e < TN; e++) {
            if q0 + e < p.k {
                put_w(o + e, acc[0][e / 4u][e % 4u]);
            }
        }
        shift_acc(&acc);
    }
}

// x at four (row, column, channel) positions of image n, zero outside the image.
fn gather4(n: u32, hi: vec4<i32>, wi: vec4<i32>, c: vec4<u32>) -> vec4<f32> {
    let ok = vec4<u32>(hi) < vec4(p.h) & vec4<u32>(wi) < vec4(p.w);
    let i = select(vec4(0u), ((vec4(n * p.h) + vec4<u32>(hi)) * p.w + vec4<u32>(wi)) * p.cin + c, ok);
    return select(vec4(0.0), vec4(src1[i.x], src1[i.y], src1[i.z], src1[i.w]), ok);
}

// dy of output channels co..co+3 (clamped) at pixel offset yb.
fn dy4(yb: u32, co: u32) -> vec4<f32> {
    let c = min(vec4(co) + vec4(0u, 1u, 2u, 3u), vec4(p.cout - 1u));
    return vec4(opd1[yb + c.x], opd1[yb + c.y], opd1[yb + c.z], opd1[yb + c.w]);
}

// ---------------------------------------------------------------------------------------------
// Shared-memory kernels (GPUs, any channel counts). The register tiles above keep a 16 x 16 tile
// per invocation, which spills from registers on GPUs. Here a 16 x 16 workgroup owns a 64 x 64 output tile
// and walks the reduction in slices of 16: both operands' slices are staged in workgroup memory
// (gathered through the convolution's indexing), then every invocation adds their outer products
// into its 4 x 4 block, as in the matmul's `smem`. Slices are stored reduction-major as vec4s:
// ws_a[j * WS_PITCH + r / 4][r % 4] holds row r at reduction step j (ws_b: column r).

const WS_TILE: u32 = 64u;
const WS_SLICE: u32 = 16u;
const WS_PITCH: u32 = 17u;  // vec4s per reduction step; the 17th spreads the writes over banks
var<workgroup> ws_a: array<vec4<f32>, 272>;
var<workgroup> ws_b: array<vec4<f32>, 272>;

// Row (or column) r of reduction step `step` in the staged slices.
fn put_a(step: u32, r: u32, v: f32) {
    ws_a[step * WS_PITCH + r / 4u][r % 4u] = v;
}

fn put_b(step: u32, r: u32, v: f32) {
    ws_b[step * WS_PITCH + r / 4u][r % 4u] = v;
}

// A staged pixel: its image (p.n when the pixel does not exist) and the source row and column
// that tap (0, 0) reads.
struct Origin { n: u32, h: i32, w: i32 }

// Pixel m of an [N, rows, cols] grid, which exists when m < end; its origin is (r·s + off,
// c·s + off) for grid position (r, c).
fn origin(m: u32, end: u32, rows: u32, cols: u32, s: vec2<u32>, off: vec2<i32>) -> Origin {
    let v = walk_start(min(m, p.m - 1u), rows, cols);
    return Origin(select(p.n, v.n, m < end), i32(v.r * s.x) + off.x, i32(v.c * s.y) + off.y);
}

// Channel c at (o.h + dh, o.w + dw) of the [N, rows, cols, chans] image in src1: zero outside the
// image, for a pixel that does not exist, or unless `ok`.
fn gather(o: Origin, dh: i32, dw: i32, c: u32, rows: u32, cols: u32, chans: u32, ok: bool) -> f32 {
    let h = o.h + dh;
    let w = o.w + dw;
    if ok && o.n < p.n && u32(h) < rows && u32(w) < cols {
        return src1[((o.n * rows + u32(h)) * cols + u32(w)) * chans + c];
    }
    return 0.0;
}

// acc[t] += a[t] * b over the staged slice, where a holds this invocation's 4 rows and b its 4
// columns at one reduction step.
fn ws_multiply(lid: vec3<u32>, acc: ptr<function, Acc>) {
    for (var j = 0u; j < WS_SLICE; j++) {
        let a = ws_a[j * WS_PITCH + lid.y];
        let b = ws_b[j * WS_PITCH + lid.x];
        (*acc)[0] += a.x * b;
        (*acc)[1] += a.y * b;
        (*acc)[2] += a.z * b;
        (*acc)[3] += a.w * b;
    }
}

// Forward: y[pixel, co] over k = (tap, ci). Invocation tid stages reduction step tid % 16 for the
// tile's pixels (tid / 16 + 16 s) and output channels (likewise), so that consecutive invocations
// read consecutive weights and input channels.
@compute @workgroup_size(16, 16, 1)
fn forward_smem(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let m0 = wg.y * WS_TILE;
    let co0 = wg.x * WS_TILE;
    let j = tid % WS_SLICE;
    // The four output pixels this invocation stages.
    var px: array<Origin, 4>;
    for (var s = 0u; s < 4u; s++) {
        let m = m0 + tid / WS_SLICE + 16u * s;
        px[s] = origin(m, p.m, p.ho, p.wo, vec2(p.sh, p.sw), -vec2(i32(p.ph), i32(p.pw)));
    }
    var acc: Acc;
    for (var k0 = 0u; k0 < p.k; k0 += WS_SLICE) {
        let k = k0 + j;
        let tap = k / p.cin;
        let ci = k - tap * p.cin;
        let kh = tap / p.kw;
        let kw = tap - kh * p.kw;
        for (var s = 0u; s < 4u; s++) {
            let r = tid / WS_SLICE + 16u * s;
            put_a(j, r, gather(px[s], i32(kh), i32(kw), ci, p.h, p.w, p.cin, k < p.k));
            var vw = 0.0;
            if co0 + r < p.cout && k < p.k {
                vw = opd1[(co0 + r) * p.k + k];
            }
            put_b(j, r, vw);
        }
        workgroupBarrier();
        ws_multiply(lid, &acc);
        workgroupBarrier();
    }
    let c = co0 + 4u * lid.x;
    // Dynamic indices into the accumulators would keep them in memory for the whole loop on
    // GPUs: the epilogue indexes a copy.
    let accs = acc;
    for (var t = 0u; t < 4u; t++) {
        let m = m0 + 4u * lid.y + t;
        for (var q = 0u; q < 4u; q++) {
            if m < p.m && c + q < p.cout {
                var v = accs[t][q];
                if (p.flags & F_BIAS) != 0u {
                    v += bias1[c + q];
                }
                dst1[m * p.cout + c + q] = select(v, max(v, 0.0), (p.flags & F_RELU) != 0u);
            }
        }
    }
}

// The reduction steps of an input-gradient slice: output channel (cout past the end), tap row and
// column, and where w[co, tap, 0] starts.
var<workgroup> ws_co: array<u32, 16>;
var<workgroup> ws_kh: array<i32, 16>;
var<workgroup> ws_kw: array<i32, 16>;
var<workgroup> ws_wo: array<u32, 16>;

// Input gradient at stride 1: dx[pixel, ci] over k = (tap, co) as a gather: input pixel (ih, iw)
// takes dy at (ih + ph - kh, iw + pw - kw) where that lies in the output. (Strided layers run the
// register tiles above, which skip the taps that cannot reach a pixel.)
// Invocation tid stages dy for reduction step tid % 16 and pixels tid / 16 + 16 s, and w for steps
// tid / 64 + 4 s at input channel ci0 + tid % 64.
@compute @workgroup_size(16, 16, 1)
fn input_grad_smem(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let m0 = wg.y * WS_TILE;
    let ci0 = wg.x * WS_TILE;
    let j = tid % WS_SLICE;
    let col = tid % WS_TILE;
    let kk = p.kh * p.kw * p.cout;
    // The four input pixels this invocation stages; tap (kh, kw) reads dy at (ih + ph - kh,
    // iw + pw - kw).
    var px: array<Origin, 4>;
    for (var s = 0u; s < 4u; s++) {
        let m = m0 + tid / WS_SLICE + 16u * s;
        px[s] = origin(m, p.m, p.h, p.w, vec2(1u), vec2(i32(p.ph), i32(p.pw)));
    }
    var acc: Acc;
    for (var k0 = 0u; k0 < kk; k0 += WS_SLICE) {
        if tid < WS_SLICE {
            let k = k0 + tid;
            let tap = k / p.cout;
            let co = k - tap * p.cout;
            let kh = tap / p.kw;
            ws_co[tid] = select(p.cout, co, k < kk);
            ws_kh[tid] = i32(kh);
            ws_kw[tid] = i32(tap - kh * p.kw);
            ws_wo[tid] = (co * p.kh * p.kw + tap) * p.cin;
        }
        workgroupBarrier();
        let co = ws_co[j];
        for (var s = 0u; s < 4u; s++) {
            let r = tid / WS_SLICE + 16u * s;
            put_a(j, r, gather(px[s], -ws_kh[j], -ws_kw[j], co, p.ho, p.wo, p.cout, co < p.cout));
        }
        for (var s = 0u; s < 4u; s++) {
            let kb = tid / WS_TILE + 4u * s;
            var v = 0.0;
            if ws_co[kb] < p.cout && ci0 + col < p.cin {
                v = opd1[ws_wo[kb] + ci0 + col];
            }
            put_b(kb, col, v);
        }
        workgroupBarrier();
        ws_multiply(lid, &acc);
        workgroupBarrier();
    }
    let c = ci0 + 4u * lid.x;
    // Dynamic indices into the accumulators would keep them in memory for the whole loop on
    // GPUs: the epilogue indexes a copy.
    let accs = acc;
    for (var t = 0u; t < 4u; t++) {
        let m = m0 + 4u * lid.y + t;
        for (var q = 0u; q < 4u; q++) {
            if m < p.m && c + q < p.cin {
                let i = m * p.cin + c + q;
                dst1[i] = select(accs[t][q], accs[t][q] + dst1[i], (p.flags & F_ACC) != 0u);
            }
        }
    }
}

// Weight gradient: dw[co, kc] over the output pixels of one split's chunk. Invocation tid stages,
// for pixels tid / 64 + 4 s of the slice, dy at output channel co0 + tid % 64 and x at weight-row
// position kc0 + tid % 64.
// The slice's output pixels (not existing past the chunk).
var<workgroup> ws_px: array<Origin, 16>;

@compute @workgroup_size(16, 16, 1)
fn weight_grad_smem(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let co0 = wg.y * WS_TILE;
    let kc0 = wg.x * WS_TILE;
    let m0 = wg.z * p.chunk;
    let m1 = min(m0 + p.chunk, p.m);
    // The weight-row position whose x values this invocation stages: tap (kh, kw), channel ci.
    let col = tid % WS_TILE;
    let kc = kc0 + col;
    let tap = kc / p.cin;
    let ci = kc - tap * p.cin;
    let kh = tap / p.kw;
    let kw = tap - kh * p.kw;
    var acc: Acc;
    for (var ms = m0; ms < m1; ms += WS_SLICE) {
        if tid < WS_SLICE {
            let stride = vec2(p.sh, p.sw);
            ws_px[tid] = origin(ms + tid, m1, p.ho, p.wo, stride, -vec2(i32(p.ph), i32(p.pw)));
        }
        workgroupBarrier();
        for (var s = 0u; s < 4u; s++) {
            // Invocation tid stages pixel j of the slice: dy at output channel co0 + col, and x
            // at weight-row position kc (e % WS_TILE == col for every s).
            let j = tid / WS_TILE + 4u * s;
            var vdy = 0.0;
            if ms + j < m1 && co0 + col < p.cout {
                vdy = opd1[(ms + j) * p.cout + co0 + col];
            }
            put_a(j, col, vdy);
            put_b(j, col, gather(ws_px[j], i32(kh), i32(kw), ci, p.h, p.w, p.cin, kc < p.k));
        }
        workgroupBarrier();
        ws_multiply(lid, &acc);
        workgroupBarrier();
    }
    let base = select(0u, wg.z * p.total, p.splits > 1u);
    let c = kc0 + 4u * lid.x;
    // Dynamic indices into the accumulators would keep them in memory for the whole loop on
    // GPUs: the epilogue indexes a copy.
    let accs = acc;
    for (var t = 0u; t < 4u; t++) {
        let co = co0 + 4u * lid.y + t;
        for (var q = 0u; q < 4u; q++) {
            if co < p.cout && c + q < p.k {
                put_w(base + co * p.k + c + q, accs[t][q]);
            }
        }
    }
}

// dw (+)= the sum of the partial sums over splits. src: scratch, dst: dw. `rsplit` consecutive
// threads share one weight's splits: 1 on CPU adapters (weight_grad_reduce), 64 on GPUs
// (weight_grad_reduce_tree), where one thread summing up to 2048 splits alone is latency-bound, so
// the 64 add their sums by a tree in workgroup memory. The CPU build has no tree at all: llvmpipe
// pays for a shader's barriers even where rsplit = 1 skips them.

// This thread's weight and its share of the splits, summed.
struct SplitSum { i: u32, lane: u32, s: f32 }

fn split_sum(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> SplitSum {
    let i = (wid.x + wid.y * nwg.x) * (256u / p.rsplit) + lid / p.rsplit;
    let lane = lid % p.rsplit;
    var s = 0.0;
    if i < p.total {
        for (var k = lane; k < p.splits; k += p.rsplit) {
            s += src1[k * p.total + i];
        }
    }
    return SplitSum(i, lane, s);
}

@compute @workgroup_size(256)
fn weight_grad_reduce(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let r = split_sum(wid, nwg, lid);
    if r.i < p.total {
        put_w(r.i, r.s);
    }
}

var<workgroup> wg_sum: array<f32, 256>;

@compute @workgroup_size(256)
fn weight_grad_reduce_tree(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let r = split_sum(wid, nwg, lid);
    wg_sum[lid] = r.s;
    workgroupBarrier();
    for (var h = p.rsplit / 2u; h > 0u; h >>= 1u) {
        if r.lane < h {
            wg_sum[lid] += wg_sum[lid + h];
        }
        workgroupBarrier();
    }
    if r.i < p.total && r.lane == 0u {
        put_w(r.i, wg_sum[lid]);
    }
}

// ---------------------------------------------------------------------------------------------
// Direct kernels for one input channel and kernels of at most 3x3, as in a first layer on
// grayscale images. A GEMM tile over a 9-long reduction spends far more on its gathers and
// epilogue than on arithmetic. Here an invocation loads the weights of CD = 32 output channels at
// all taps into registers once. The forward and the weight gradient then walk a run of `chunk`
// whole output rows; per pixel, 9 inputs feed 9 x CD multiply-adds. Taps live in a 3x3 frame
// (slot 3i + j is kernel row i, column j); slots outside a smaller kernel read clamped weights,
// and the forward zeroes their inputs. The output channels must be a multiple of 4. Rows of y and
// dy are read and written by `dy_row` and `put_row`, defined by the prelude this file is built
// behind: conv_words32.wgsl (vec4<f32>) or conv_words64.wgsl (vec4<u64>).

const CD: u32 = 32u;
alias Row = array<vec4<f32>, 8>;  // CD channels
alias Rows = array<Row, 9>;       // the frame's slots
alias Frame = array<f32, 9>;      // one input per slot

// Whether slot s is a tap of the kernel.
fn in_kernel(s: u32) -> bool {
    return s / 3u < p.kh && s % 3u < p.kw;
}

// The inputs of a frame whose top-left is (h0, w0), moved one input column right: column w0 + 3
// comes in (x_in, defined by the prelude, is the input at a row and column, zero outside). At
// stride 1 a pixel costs these 3 loads where gathering its window costs 9.
fn slide(a: Frame, r0: u32, h0: i32, w0: i32) -> Frame {
    let wi = w0 + 3;
    return Frame(a[1], a[2], x_in(r0, h0, wi), a[4], a[5], x_in(r0, h0 + 1, wi), a[7], a[8],
                 x_in(r0, h0 + 2, wi));
}

// Output row `row` (over all images): its image's first input row, and the input row and column
// of the frame one stride left of its first pixel (one `advance` from the first pixel's frame).
struct RowStart { r0: u32, h0: i32, w0: i32 }

fn row_start(row: u32) -> RowStart {
    let n = row / p.ho;
    return RowStart(n * p.h, i32((row - n * p.ho) * p.sh) - i32(p.ph), -i32(p.pw) - i32(p.sw));
}

// The frame whose top-left is (o.h0, o.w0), gathered.
fn frame_at(o: RowStart) -> Frame {
    var a: Frame;
    for (var t = 0; t < 3; t++) {
        a = slide(a, o.r0, o.h0, o.w0 + t - 3);
    }
    return a;
}

// The frame moved two input columns right, with one `x_pair` (defined by the prelude) per row.
fn slide2(a: Frame, r0: u32, h0: i32, w0: i32) -> Frame {
    let wi = w0 + 3;
    let q0 = x_pair(r0, h0, wi);
    let q1 = x_pair(r0, h0 + 1, wi);
    let q2 = x_pair(r0, h0 + 2, wi);
    return Frame(a[2], q0.x, q0.y, a[5], q1.x, q1.y, a[8], q2.x, q2.y);
}

// Moves the frame to the next output pixel, sw input columns right. SLIDES (set by the kernel's
// prelude) is the stride where it is 1 or 2, and 0 for wider strides, where frames do not overlap
// and each is gathered afresh. (A loop over p.sw slides cost 10 % of the weight gradient at
// stride 1.)
fn advance(x: ptr<function, Frame>, o: ptr<function, RowStart>) {
    if SLIDES == 1u {
        *x = slide(*x, (*o).r0, (*o).h0, (*o).w0);
    } else if SLIDES == 2u {
        *x = slide2(*x, (*o).r0, (*o).h0, (*o).w0);
    } else {
        *x = frame_at(RowStart((*o).r0, (*o).h0, (*o).w0 + i32(p.sw)));
    }
    (*o).w0 += i32(p.sw);
}

// Clamped, not zeroed: past cout or k this repeats the last channel or position. A select here
// would be redone at every use (llvmpipe keeps the weights spilled with their masks), so the
// kernels mask elsewhere: the forward zeroes the inputs of slots outside the kernel and stores no
// channel past cout; dy rows are zero past cout, and the weight gradient writes no slot outside
// the kernel.
fn w_at(co: u32, k: u32) -> f32 {
    return opd1[min(co, p.cout - 1u) * p.k + min(k, p.k - 1u)];
}

fn w_col4(co: u32, k: u32) -> vec4<f32> {
    return vec4(w_at(co, k), w_at(co + 1u, k), w_at(co + 2u, k), w_at(co + 3u, k));
}

// Weights of weight-row position k for channels co0 .. co0 + CD.
fn w_col(co0: u32, k: u32) -> Row {
    return Row(w_col4(co0, k), w_col4(co0 + 4u, k), w_col4(co0 + 8u, k), w_col4(co0 + 12u, k),
               w_col4(co0 + 16u, k), w_col4(co0 + 20u, k), w_col4(co0 + 24u, k),
               w_col4(co0 + 28u, k));
}

// Weights of frame slot s: kernel row s / 3, column s % 3.
fn w_slot(co0: u32, s: u32) -> Row {
    return w_col(co0, s / 3u * p.kw + s % 3u);
}

fn axpy(acc: Row, a: f32, r: Row) -> Row {
    return Row(acc[0] + a * r[0], acc[1] + a * r[1], acc[2] + a * r[2], acc[3] + a * r[3],
               acc[4] + a * r[4], acc[5] + a * r[5], acc[6] + a * r[6], acc[7] + a * r[7]);
}

// Output pixel m of the row the frame walks along: its inputs (the frame slid to it; zeros for a
// pixel at or past `end`) and its dy row.
struct Pixel { x: Frame, dy: Row }

fn pixel(x: ptr<function, Frame>, o: ptr<function, RowStart>, m: u32, end: u32, co0: u32) -> Pixel {
    advance(x, o);
    let f = *x;
    let on = m < end;
    return Pixel(Frame(select(0.0, f[0], on), select(0.0, f[1], on), select(0.0, f[2], on),
                       select(0.0, f[3], on), select(0.0, f[4], on), select(0.0, f[5], on),
                       select(0.0, f[6], on), select(0.0, f[7], on), select(0.0, f[8], on)),
                 dy_row(min(m, end - 1u), co0));
}

fn axpy2(acc: Row, a: f32, r: Row, b: f32, q: Row) -> Row {
    return Row(acc[0] + (a * r[0] + b * q[0]), acc[1] + (a * r[1] + b * q[1]),
               acc[2] + (a * r[2] + b * q[2]), acc[3] + (a * r[3] + b * q[3]),
               acc[4] + (a * r[4] + b * q[4]), acc[5] + (a * r[5] + b * q[5]),
               acc[6] + (a * r[6] + b * q[6]), acc[7] + (a * r[7] + b * q[7]));
}

// Output rows [r0, r1) of this invocation's run.
fn run_of(i: u32) -> vec2<u32> {
    let r0 = min(i * p.chunk, p.m);
    return vec2(r0, min(r0 + p.chunk, p.m));
}

// A forward output through the ReLU when `relu`. (Not put4: a forward never accumulates, and
// llvmpipe runs the load of put4's accumulation even when its flag is off.)
fn out(v: vec4<f32>, relu: bool) -> vec4<f32> {
    return select(v, max(v, vec4(0.0)), relu);
}

@compute @workgroup_size(64)
fn forward_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let co0 = gid.y * CD;
    var w = Rows(w_slot(co0, 0u), w_slot(co0, 1u), w_slot(co0, 2u), w_slot(co0, 3u),
                 w_slot(co0, 4u), w_slot(co0, 5u), w_slot(co0, 6u), w_slot(co0, 7u),
                 w_slot(co0, 8u));
    let b = Row(bias_of(co0, p.cout), bias_of(co0 + 4u, p.cout), bias_of(co0 + 8u, p.cout),
                bias_of(co0 + 12u, p.cout), bias_of(co0 + 16u, p.cout),
                bias_of(co0 + 20u, p.cout), bias_of(co0 + 24u, p.cout),
                bias_of(co0 + 28u, p.cout));
    let relu = (p.flags & F_RELU) != 0u;
    let k = array(in_kernel(0u), in_kernel(1u), in_kernel(2u), in_kernel(3u), in_kernel(4u),
                  in_kernel(5u), in_kernel(6u), in_kernel(7u), in_kernel(8u));
    let run = run_of(gid.x);
    for (var row = run.x; row < run.y; row++) {
        var o = row_start(row);
        var x = frame_at(o);
        for (var m = row * p.wo; m < (row + 1u) * p.wo; m++) {
            advance(&x, &o);
            var acc: Row;
            acc = axpy(acc, select(0.0, x[0], k[0]), w[0]);
            acc = axpy(acc, select(0.0, x[1], k[1]), w[1]);
            acc = axpy(acc, select(0.0, x[2], k[2]), w[2]);
            acc = axpy(acc, select(0.0, x[3], k[3]), w[3]);
            acc = axpy(acc, select(0.0, x[4], k[4]), w[4]);
            acc = axpy(acc, select(0.0, x[5], k[5]), w[5]);
            acc = axpy(acc, select(0.0, x[6], k[6]), w[6]);
            acc = axpy(acc, select(0.0, x[7], k[7]), w[7]);
            acc = axpy(acc, select(0.0, x[8], k[8]), w[8]);
            put_row(m, co0, Row(out(acc[0] + b[0], relu), out(acc[1] + b[1], relu),
                                out(acc[2] + b[2], relu), out(acc[3] + b[3], relu),
                                out(acc[4] + b[4], relu), out(acc[5] + b[5], relu),
                                out(acc[6] + b[6], relu), out(acc[7] + b[7], relu)));
        }
    }
}

// Weight gradient: invocation (split, channel block) sums its run of rows into a 9-slot x CD tile,
// written like weight_grad1's partial sums (slots outside the kernel are dropped).
@compute @workgroup_size(64)
fn weight_grad_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x >= p.splits {
        return;
    }
    let co0 = gid.y * CD;
    var acc: Rows;
    let run = run_of(gid.x);
    for (var row = run.x; row < run.y; row++) {
        var o = row_start(row);
        var x = frame_at(o);
        // Two pixels per update of the accumulators, which live in memory: one load and one
        // store of each per two pixels (four per update would save no more than noise).
        let end = (row + 1u) * p.wo;
        for (var m = row * p.wo; m < end; m += 2u) {
            let a = pixel(&x, &o, m, end, co0);
            let b = pixel(&x, &o, m + 1u, end, co0);
            acc[0] = axpy2(acc[0], a.x[0], a.dy, b.x[0], b.dy);
            acc[1] = axpy2(acc[1], a.x[1], a.dy, b.x[1], b.dy);
            acc[2] = axpy2(acc[2], a.x[2], a.dy, b.x[2], b.dy);
            acc[3] = axpy2(acc[3], a.x[3], a.dy, b.x[3], b.dy);
            acc[4] = axpy2(acc[4], a.x[4], a.dy, b.x[4], b.dy);
            acc[5] = axpy2(acc[5], a.x[5], a.dy, b.x[5], b.dy);
            acc[6] = axpy2(acc[6], a.x[6], a.dy, b.x[6], b.dy);
            acc[7] = axpy2(acc[7], a.x[7], a.dy, b.x[7], b.dy);
            acc[8] = axpy2(acc[8], a.x[8], a.dy, b.x[8], b.dy);
        }
    }
    // Slot s of channel co goes to dst[base + co * k_len + kernel position]; the tile is shifted
    // down one slot per iteration so that every access uses a constant index.
    let base = select(0u, gid.x * p.total, p.splits > 1u);
    for (var s = 0u; s < 9u; s++) {
        let k = s / 3u * p.kw + s % 3u;
        for (var j = 0u; j < 8u; j++) {
            let r = acc[0][0];
            for (var e = 0u; e < 4u; e++) {
                let co = co0 + 4u * j + e;
                if co < p.cout && in_kernel(s) {
                    put_w(base + co * p.k + k, r[e]);
                }
            }
            let a = acc[0];
            acc[0] = Row(a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[0]);
        }
        let t = acc;
        acc = Rows(t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[8]);
    }
}

// Input gradient, for even widths and column strides 1 and 2 (SLIDES): invocation n walks image
// n's dy once, in row-major order. A dy pixel's CD channels times the weights give its tap values
// t(i, j), and tap (i, j) belongs to dx pixel (oh*sh - ph + i, ow*sw - pw + j). Along a dy row, dx
// is completed two columns at a time: pair q (columns 2q, 2q + 1) takes its taps from dy columns
// k .. k + 3 (stride 1) or k, k + 1 (stride 2), so each step computes the taps of the next one or
// two dy columns, writes one pair per kernel row (`put_pair`, from the prelude: one u64 in the
// 64-bit build) and keeps the rest for the next step. A dx row collects its kernel rows from up to
// three dy rows: the first one writes it, the others add to it (all add when accumulating or for
// channel blocks after the first). Rows that no dy row reaches are zeroed at the start. Every dy
// element is read once; dx costs about one write and two read-modify-writes per element (stride
// 1), where a gather would read KD dy rows per element.

alias Taps3 = array<Row, 3>;  // one kernel row's weights

fn w_tap_row(co0: u32, i: u32) -> Taps3 {
    let k = i * p.kw;
    return Taps3(w_col(co0, k), w_col(co0, k + 1u), w_col(co0, k + 2u));
}

fn tap(d: Row, w: Row) -> f32 {
    let s = d[0] * w[0] + d[1] * w[1] + d[2] * w[2] + d[3] * w[3] + d[4] * w[4] + d[5] * w[5]
        + d[6] * w[6] + d[7] * w[7];
    return dot(s, vec4(1.0));
}

// One dy pixel's taps by kernel row: t[i] = (t(i, 0), t(i, 1), t(i, 2)), zero outside the kernel
// and for columns outside the image.
alias RowTaps = array<vec3<f32>, 3>;

fn taps_at(m0: u32, ow: i32, co0: u32, w: array<Taps3, 3>, v: array<vec3<bool>, 3>) -> RowTaps {
    let d = dy_row(m0 + min(u32(ow), p.wo - 1u), co0);
    let on = vec3(u32(ow) < p.wo);
    let z = vec3(0.0);
    return RowTaps(
        select(z, vec3(tap(d, w[0][0]), tap(d, w[0][1]), tap(d, w[0][2])), v[0] & on),
        select(z, vec3(tap(d, w[1][0]), tap(d, w[1][1]), tap(d, w[1][2])), v[1] & on),
        select(z, vec3(tap(d, w[2][0]), tap(d, w[2][1]), tap(d, w[2][2])), v[2] & on));
}

// Stores (`first`) or adds v to pair q of dx row r of image n; rows outside the image and kernel
// rows past kh (`live` false) are dropped.
fn emit_pair(n: u32, r: i32, q: u32, v: vec2<f32>, first: bool, live: bool) {
    if live && u32(r) < p.h {
        put_pair((n * p.h + u32(r)) * (p.w / 2u) + q, v, first);
    }
}

// Pair q's columns at stride 1, from the taps a .. d of dy columns 2q + pw - 2 .. 2q + pw + 1:
// column c takes tap j of dy column c + pw - j.
fn pair1(a: vec3<f32>, b: vec3<f32>, c: vec3<f32>, d: vec3<f32>) -> vec2<f32> {
    return vec2(a.z + b.y + c.x, b.z + c.y + d.x);
}

// Pair q's columns at stride 2, from the taps t, u of dy columns q + (pw + 1) / 2 - 1 and the one
// after: column c takes tap j of dy column (c + pw - j) / 2 where that divides, which makes the
// pair (t.y, t.z + u.x) for odd paddings and (t.z + u.x, u.y) for even ones.
fn pair2(t: vec3<f32>, u: vec3<f32>, odd: bool) -> vec2<f32> {
    return select(vec2(t.z + u.x, u.y), vec2(t.y, t.z + u.x), odd);
}

@compute @workgroup_size(64)
fn input_grad_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    if n >= p.n {
        return;
    }
    let sh = i32(p.sh);
    let ph = i32(p.ph);
    let kh = i32(p.kh);
    let pairs = p.w / 2u;
    let odd = (p.pw & 1u) != 0u;
    let acc = (p.flags & F_ACC) != 0u;
    if !acc {
        for (var r = 0; r < i32(p.h); r++) {
            let oh = min((r + ph) / sh, i32(p.ho) - 1);
            if r + ph - oh * sh >= kh {
                for (var q = 0u; q < pairs; q++) {
                    emit_pair(n, r, q, vec2(0.0), true, true);
                }
            }
        }
    }
    // The first dy column a step brings in (that of the first pair, see pair1 and pair2).
    let k1 = select((i32(p.pw) + 1) / 2, i32(p.pw), SLIDES == 1u);
    for (var co0 = 0u; co0 < p.cout; co0 += CD) {
        let v0 = vec3(true, p.kw > 1u, p.kw > 2u);
        let v = array(v0, v0 & vec3(p.kh > 1u), v0 & vec3(p.kh > 2u));
        let w = array(w_tap_row(co0, 0u), w_tap_row(co0, 1u), w_tap_row(co0, 2u));
        let add = acc || co0 > 0u;
        for (var oh = 0; oh < i32(p.ho); oh++) {
            let r0 = oh * sh - ph;
            // Whether dy row oh is the first to reach dx row r0 + i: the row above ends before it
            // (its last kernel row reaches r0 - sh + kh - 1).
            let f = vec3(!add) & (vec3(oh == 0) | (vec3(kh - sh) <= vec3(0, 1, 2)));
            let m0 = (n * p.ho + u32(oh)) * p.wo;
            // The taps of dy columns k - 2 (stride 1 only) and k - 1.
            var k = k1;
            var a: RowTaps;
            if SLIDES == 1u {
                a = taps_at(m0, k - 2, co0, w, v);
            }
            var b = taps_at(m0, k - 1, co0, w, v);
            for (var q = 0u; q < pairs; q++) {
                var o: array<vec2<f32>, 3>;
                if SLIDES == 1u {
                    let c = taps_at(m0, k, co0, w, v);
                    let d = taps_at(m0, k + 1, co0, w, v);
                    o = array(pair1(a[0], b[0], c[0], d[0]), pair1(a[1], b[1], c[1], d[1]),
                              pair1(a[2], b[2], c[2], d[2]));
                    a = c;
                    b = d;
                } else {
                    let u = taps_at(m0, k, co0, w, v);
                    o = array(pair2(b[0], u[0], odd), pair2(b[1], u[1], odd),
                              pair2(b[2], u[2], odd));
                    b = u;
                }
                k += i32(3u - SLIDES);
                emit_pair(n, r0, q, o[0], f.x, true);
                emit_pair(n, r0 + 1, q, o[1], f.y, kh > 1);
                emit_pair(n, r0 + 2, q, o[2], f.z, kh > 2);
            }
        }
    }
}
