// Parameters of the block-tile kernel `block`. The launcher replaces everything above the
// "end of block parameters" line with one candidate's values; these defaults are one valid set.
const BM: u32 = 64u; // rows of c per workgroup
const BN: u32 = 64u; // columns of c per workgroup
const BK: u32 = 16u; // K slice staged in workgroup memory per step
const TM: u32 = 4u; // rows of c per invocation (a multiple of 4)
const TN: u32 = 4u; // columns of c per invocation (a multiple of 4)
// end of block parameters

// Matrix multiply: c = epilogue(alpha · op(a) · op(b)), op(x) = x or xᵀ per the mode.
//
// NN: a [M,K], b [K,N]; NT: a [M,K], b [N,K]; TN: a [K,M], b [K,N]; c [M,N]; all row-major.
// Epilogue: + bias[col], then ReLU; or, when accumulating, c += alpha · op(a) · op(b).
//
// Two families of kernels:
// - Register tiles for CPU adapters (llvmpipe). llvmpipe runs 8 invocations as the 8 lanes of one
//   SIMD vector, so a workgroup of 8 is one vector and there are no barriers (each one costs a
//   coroutine switch there). Every storage load is a per-lane loop, about as costly per vec4 as a
//   scalar one, while arithmetic is cheap: each lane therefore owns a 32×32 tile of c and pays 64
//   vec4 loads for 4096 multiply-adds per step of 4 along K. Everything in the hot loop is
//   unrolled by hand and indexed by constants (llvmpipe keeps such arrays in registers; any
//   dynamic index would move them to memory). Loads are clamped to the matrix instead of being
//   bounds-checked, so edge tiles run the same code and only their stores are guarded.
//   `tile4` needs K and N (and M in TN) to be multiples of 4; `tile1` takes any shape.
// - `block`, for GPUs: a BM×BN tile of c per workgroup, TM×TN per invocation, K in slices of BK
//   double-buffered in workgroup memory (see the section's comment).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32, // FLAG_* bits
    alpha: f32,
    // Register tiles: how many of a workgroup's 8 lanes sit side by side along N (1, 2, 4 or 8).
    lanes_x: u32,
    // Element strides of op(a)[row, k] and op(b)[k, col] (`tile1`; `block` reads its leading
    // dimensions from them).
    a_row: u32,
    a_k: u32,
    b_k: u32,
    b_col: u32,
    mode: u32, // 0 NN, NT or TN (`tile4`)
    // `block`: K is cut into slices of `kchunk`, one per workgroup along z; slice z writes its
    // partial product to c[z·M·N ..] (the launcher then sums the slices). kchunk ≥ K: no split.
    kchunk: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;
const FLAG_BIAS: u32 = 2u;
const FLAG_RELU: u32 = 4u;
// `block`: the leading dimensions of a, b and c are multiples of 4 (vec4 loads and stores).
const FLAG_VEC4: u32 = 8u;

// Params::mode (0 is NN).
const MODE_NT: u32 = 1u;
const MODE_TN: u32 = 2u;

// Side of the square tile of c each lane owns in `tile4` and in `tile1`.
const TILE4_SIDE: u32 = 32u;
const TILE1_SIDE: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
// The operands seen as vec4s and, in `tile1`, as scalars (an entry point uses one view of each).
// The launcher binds them grown to whole vec4s, so element i of any matrix is [i / 4][i % 4].
@group(1) @binding(0) var<storage, read_write> a4: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read_write> b4: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read_write> c4: array<vec4<f32>>;
@group(1) @binding(0) var<storage, read_write> a1: array<f32>;
@group(1) @binding(1) var<storage, read_write> b1: array<f32>;
// Bias, N elements (bound to c when there is none; then it is not read).
@group(1) @binding(3) var<storage, read_write> bias: array<f32>;

// ---------------------------------------------------------------------------------------------
// Epilogue, shared by all kernels. The flags are uniform, so the branches never diverge.

fn finish(v: vec4<f32>, old: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    var r = p.alpha * v;
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        return old + r;
    }
    if (p.flags & FLAG_BIAS) != 0u {
        r += b;
    }
    if (p.flags & FLAG_RELU) != 0u {
        r = max(r, vec4(0.0));
    }
    return r;
}

// Where in c this invocation's [M, N] block starts: 0, or its K slice's partial in `block`.
var<private> c_base: u32 = 0u;

// Stores v into c[row, col4*4 .. col4*4+4] (N a multiple of 4) if that is inside c.
fn store4(row: u32, col4: u32, v: vec4<f32>, b: vec4<f32>) {
    let n4 = p.n / 4u;
    if row >= p.m || col4 >= n4 {
        return;
    }
    let i = c_base / 4u + row * n4 + col4;
    var old = vec4(0.0);
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        old = c4[i];
    }
    c4[i] = finish(v, old, b);
}


// Stores v into c[row, col .. col+4], any N: the columns past N are dropped.
fn store1(row: u32, col: u32, v: vec4<f32>) {
    if row >= p.m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if col + j < p.n {
            let i = c_base + row * p.n + col + j;
            var old = 0.0;
            if (p.flags & FLAG_ACCUMULATE) != 0u {
                old = c4[i / 4u][i % 4u];
            }
            var b = 0.0;
            if (p.flags & FLAG_BIAS) != 0u {
                b = bias[col + j];
            }
            c4[i / 4u][i % 4u] = finish(vec4(v[j]), vec4(old), vec4(b)).x;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Register tiles (CPU adapters). A 4×4 block is held in a mat4x4 used as 4 rows of 4 (its
// "columns" in WGSL terms); transpose() only renames registers.

// acc[t] += Σ_q a[t][q] · b[q]: a holds 4 rows × 4 k of op(a), b 4 k × 4 columns of op(b).
// (Summing the four products before adding them to acc runs faster on llvmpipe than a chain of
// fma through acc.)
fn mac(acc: mat4x4<f32>, a: mat4x4<f32>, b: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4(
        acc[0] + (a[0].x * b[0] + a[0].y * b[1] + a[0].z * b[2] + a[0].w * b[3]),
        acc[1] + (a[1].x * b[0] + a[1].y * b[1] + a[1].z * b[2] + a[1].w * b[3]),
        acc[2] + (a[2].x * b[0] + a[2].y * b[1] + a[2].z * b[2] + a[2].w * b[3]),
        acc[3] + (a[3].x * b[0] + a[3].y * b[1] + a[3].z * b[2] + a[3].w * b[3]),
    );
}

// op(a)[r .. r+4, 4·k4 .. 4·k4+4] as 4 rows; rows past M are clamped to the last one (their
// results are never stored). In NN and NT a vec4 holds 4 k of one row; in TN (a is [K, M]) it
// holds 4 rows at one k and the block is transposed. The mode is uniform, but llvmpipe would run
// the loads of both sides of a branch, so it only selects addresses and orientation. (The address
// arithmetic stays scalar: llvmpipe runs the same selects on vec4<u32> indices far slower.)
fn load_a4(r: u32, k4: u32) -> mat4x4<f32> {
    let tn = p.mode == MODE_TN;
    // TN: rows r .. r+4 at k = 4·k4 + t.
    let m4 = p.m / 4u;
    let kt = 4u * k4 * m4 + min(r / 4u, m4 - 1u);
    // NN, NT: k = 4·k4 .. 4·k4+4 of row r + t.
    let k4n = p.k / 4u;
    let last = p.m - 1u;
    let i0 = select(min(r, last) * k4n + k4, kt, tn);
    let i1 = select(min(r + 1u, last) * k4n + k4, kt + m4, tn);
    let i2 = select(min(r + 2u, last) * k4n + k4, kt + 2u * m4, tn);
    let i3 = select(min(r + 3u, last) * k4n + k4, kt + 3u * m4, tn);
    return transpose_if(mat4x4(a4[i0], a4[i1], a4[i2], a4[i3]), tn);
}

// op(b)[4·k4 .. 4·k4+4, c .. c+4] as 4 rows, columns past N clamped. In NN and TN a vec4 holds
// 4 columns at one k; in NT (b is [N, K]) it holds 4 k of one column and the block is transposed.
fn load_b4(c: u32, k4: u32) -> mat4x4<f32> {
    let nt = p.mode == MODE_NT;
    // NN, TN: columns c .. c+4 at k = 4·k4 + t.
    let n4 = p.n / 4u;
    let kt = 4u * k4 * n4 + min(c / 4u, n4 - 1u);
    // NT: k = 4·k4 .. 4·k4+4 of column c + t.
    let k4n = p.k / 4u;
    let last = p.n - 1u;
    let i0 = select(kt, min(c, last) * k4n + k4, nt);
    let i1 = select(kt + n4, min(c + 1u, last) * k4n + k4, nt);
    let i2 = select(kt + 2u * n4, min(c + 2u, last) * k4n + k4, nt);
    let i3 = select(kt + 3u * n4, min(c + 3u, last) * k4n + k4, nt);
    return transpose_if(mat4x4(b4[i0], b4[i1], b4[i2], b4[i3]), nt);
}

fn transpose_if(m: mat4x4<f32>, t: bool) -> mat4x4<f32> {
    let mt = transpose(m);
    return mat4x4(select(m[0], mt[0], t), select(m[1], mt[1], t), select(m[2], mt[2], t), select(m[3], mt[3], t));
}

// First row and column of this lane's side × side tile: the 8 lanes of a workgroup form a
// (8 / lanes_x) × lanes_x grid of tiles.
fn lane_origin(wg: vec3<u32>, lane: u32, side: u32) -> vec2<u32> {
    let lanes_y = 8u / p.lanes_x;
    let row = (wg.y * lanes_y + lane / p.lanes_x) * side;
    let col = (wg.x * p.lanes_x + lane % p.lanes_x) * side;
    return vec2(row, col);
}

// A lane's 4 rows × 32 columns: 8 blocks of 4×4.
alias Strip = array<mat4x4<f32>, 8>;

// op(b)[4·k4 .. 4·k4+4, c .. c+32] as 8 blocks.
fn load_b_strip(c: u32, k4: u32) -> Strip {
    return Strip(
        load_b4(c, k4), load_b4(c + 4u, k4), load_b4(c + 8u, k4), load_b4(c + 12u, k4),
        load_b4(c + 16u, k4), load_b4(c + 20u, k4), load_b4(c + 24u, k4), load_b4(c + 28u, k4),
    );
}

fn strip_mac(acc: Strip, a: mat4x4<f32>, b: Strip) -> Strip {
    return Strip(
        mac(acc[0], a, b[0]), mac(acc[1], a, b[1]), mac(acc[2], a, b[2]), mac(acc[3], a, b[3]),
        mac(acc[4], a, b[4]), mac(acc[5], a, b[5]), mac(acc[6], a, b[6]), mac(acc[7], a, b[7]),
    );
}

// Row t of the strip at (r, c) through the epilogue; bias holds the strip's 8 column blocks.
fn store_strip_row(r: u32, c: u32, t: u32, acc: Strip, bias: array<vec4<f32>, 8>) {
    let c4i = c / 4u;
    store4(r + t, c4i, row_of(acc[0], t), bias[0]);
    store4(r + t, c4i + 1u, row_of(acc[1], t), bias[1]);
    store4(r + t, c4i + 2u, row_of(acc[2], t), bias[2]);
    store4(r + t, c4i + 3u, row_of(acc[3], t), bias[3]);
    store4(r + t, c4i + 4u, row_of(acc[4], t), bias[4]);
    store4(r + t, c4i + 5u, row_of(acc[5], t), bias[5]);
    store4(r + t, c4i + 6u, row_of(acc[6], t), bias[6]);
    store4(r + t, c4i + 7u, row_of(acc[7], t), bias[7]);
}

@compute @workgroup_size(8, 1, 1)
fn tile4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let o = lane_origin(wg, lane, TILE4_SIDE);
    let r = o.x;
    let c = o.y;
    // s[i] holds rows r + 4i .. r + 4i + 4.
    var s0: Strip;
    var s1: Strip;
    var s2: Strip;
    var s3: Strip;
    var s4: Strip;
    var s5: Strip;
    var s6: Strip;
    var s7: Strip;
    for (var k4 = 0u; k4 < p.k / 4u; k4++) {
        // All of b first, then a block by block: the order llvmpipe runs fastest.
        let b = load_b_strip(c, k4);
        s0 = strip_mac(s0, load_a4(r, k4), b);
        s1 = strip_mac(s1, load_a4(r + 4u, k4), b);
        s2 = strip_mac(s2, load_a4(r + 8u, k4), b);
        s3 = strip_mac(s3, load_a4(r + 12u, k4), b);
        s4 = strip_mac(s4, load_a4(r + 16u, k4), b);
        s5 = strip_mac(s5, load_a4(r + 20u, k4), b);
        s6 = strip_mac(s6, load_a4(r + 24u, k4), b);
        s7 = strip_mac(s7, load_a4(r + 28u, k4), b);
    }
    // The epilogue walks the 4 rows of each block in a loop (unrolled, its guarded stores would
    // take llvmpipe far longer to compile) and picks the row with selects: a dynamic index into
    // the tile would move it all to memory.
    var bias_c: array<vec4<f32>, 8>;
    if (p.flags & FLAG_BIAS) != 0u {
        bias_c = array(
            load_bias4(c), load_bias4(c + 4u), load_bias4(c + 8u), load_bias4(c + 12u),
            load_bias4(c + 16u), load_bias4(c + 20u), load_bias4(c + 24u), load_bias4(c + 28u),
        );
    }
    for (var t = 0u; t < 4u; t++) {
        store_strip_row(r, c, t, s0, bias_c);
        store_strip_row(r + 4u, c, t, s1, bias_c);
        store_strip_row(r + 8u, c, t, s2, bias_c);
        store_strip_row(r + 12u, c, t, s3, bias_c);
        store_strip_row(r + 16u, c, t, s4, bias_c);
        store_strip_row(r + 20u, c, t, s5, bias_c);
        store_strip_row(r + 24u, c, t, s6, bias_c);
        store_strip_row(r + 28u, c, t, s7, bias_c);
    }
}

fn row_of(m: mat4x4<f32>, t: u32) -> vec4<f32> {
    return select(select(m[0], m[1], t == 1u), select(m[2], m[3], t == 3u), t >= 2u);
}

// bias[c .. c+4], clamped like the loads (N is a multiple of 4 here).
fn load_bias4(c: u32) -> vec4<f32> {
    let j = min(c, p.n - 4u);
    return vec4(bias[j], bias[j + 1u], bias[j + 2u], bias[j + 3u]);
}

// Any shape, any mode (from the strides): scalar loads, a 16×16 tile per lane, K one at a time.
@compute @workgroup_size(8, 1, 1)
fn tile1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let o = lane_origin(wg, lane, TILE1_SIDE);
    let r = o.x;
    let c = o.y;
    // Offsets of the tile's (clamped) rows in a and columns in b, fixed for the whole K loop.
    let ra0 = clamped_offsets(r, p.m, p.a_row);
    let ra1 = clamped_offsets(r + 4u, p.m, p.a_row);
    let ra2 = clamped_offsets(r + 8u, p.m, p.a_row);
    let ra3 = clamped_offsets(r + 12u, p.m, p.a_row);
    let cb0 = clamped_offsets(c, p.n, p.b_col);
    let cb1 = clamped_offsets(c + 4u, p.n, p.b_col);
    let cb2 = clamped_offsets(c + 8u, p.n, p.b_col);
    let cb3 = clamped_offsets(c + 12u, p.n, p.b_col);
    // acc[4·i + j]: rows r + 4i .. +4, columns c + 4j .. +4.
    var acc: array<mat4x4<f32>, 16>;
    for (var k = 0u; k < p.k; k++) {
        let ka = k * p.a_k;
        let kb = k * p.b_k;
        let a0 = load_a1(ra0 + ka);
        let a1 = load_a1(ra1 + ka);
        let a2 = load_a1(ra2 + ka);
        let a3 = load_a1(ra3 + ka);
        let b0 = load_b1(cb0 + kb);
        let b1 = load_b1(cb1 + kb);
        let b2 = load_b1(cb2 + kb);
        let b3 = load_b1(cb3 + kb);
        acc[0] = outer(acc[0], a0, b0);
        acc[1] = outer(acc[1], a0, b1);
        acc[2] = outer(acc[2], a0, b2);
        acc[3] = outer(acc[3], a0, b3);
        acc[4] = outer(acc[4], a1, b0);
        acc[5] = outer(acc[5], a1, b1);
        acc[6] = outer(acc[6], a1, b2);
        acc[7] = outer(acc[7], a1, b3);
        acc[8] = outer(acc[8], a2, b0);
        acc[9] = outer(acc[9], a2, b1);
        acc[10] = outer(acc[10], a2, b2);
        acc[11] = outer(acc[11], a2, b3);
        acc[12] = outer(acc[12], a3, b0);
        acc[13] = outer(acc[13], a3, b1);
        acc[14] = outer(acc[14], a3, b2);
        acc[15] = outer(acc[15], a3, b3);
    }
    for (var t = 0u; t < 4u; t++) {
        store1(r + t, c, row_of(acc[0], t));
        store1(r + t, c + 4u, row_of(acc[1], t));
        store1(r + t, c + 8u, row_of(acc[2], t));
        store1(r + t, c + 12u, row_of(acc[3], t));
        store1(r + 4u + t, c, row_of(acc[4], t));
        store1(r + 4u + t, c + 4u, row_of(acc[5], t));
        store1(r + 4u + t, c + 8u, row_of(acc[6], t));
        store1(r + 4u + t, c + 12u, row_of(acc[7], t));
        store1(r + 8u + t, c, row_of(acc[8], t));
        store1(r + 8u + t, c + 4u, row_of(acc[9], t));
        store1(r + 8u + t, c + 8u, row_of(acc[10], t));
        store1(r + 8u + t, c + 12u, row_of(acc[11], t));
        store1(r + 12u + t, c, row_of(acc[12], t));
        store1(r + 12u + t, c + 4u, row_of(acc[13], t));
        store1(r + 12u + t, c + 8u, row_of(acc[14], t));
        store1(r + 12u + t, c + 12u, row_of(acc[15], t));
    }
}

// (i .. i+4, each clamped below n) · stride.
fn clamped_offsets(i: u32, n: u32, stride: u32) -> vec4<u32> {
    return min(vec4(i) + vec4(0u, 1u, 2u, 3u), vec4(n - 1u)) * stride;
}

fn load_a1(i: vec4<u32>) -> vec4<f32> {
    return vec4(a1[i.x], a1[i.y], a1[i.z], a1[i.w]);
}

fn load_b1(i: vec4<u32>) -> vec4<f32> {
    return vec4(b1[i.x], b1[i.y], b1[i.z], b1[i.w]);
}

// acc[t] += a[t] · b: a holds 4 rows of one column of op(a), b 4 columns of one row of op(b).
fn outer(acc: mat4x4<f32>, a: vec4<f32>, b: vec4<f32>) -> mat4x4<f32> {
    return mat4x4(fma(vec4(a.x), b, acc[0]), fma(vec4(a.y), b, acc[1]), fma(vec4(a.z), b, acc[2]), fma(vec4(a.w), b, acc[3]));
}

// ---------------------------------------------------------------------------------------------
// Block tiles (GPUs): any shape and mode; the tile is the compile-time parameter block.
//
// Invocation (tx, ty) of a (BN/TN)×(BM/TM) grid owns TM/4 × TN/4 blocks of 4×4 results, spread
// over the tile: rows g·(4·BM/TM) + 4·ty + 0..4 and columns h·(4·BN/TN) + 4·tx + 0..4. Each K
// slice of op(a) and op(b) is stored k-major in workgroup memory (sa[k][row], sb[k][col]), so an
// invocation reads its TM values of a column of op(a) as TM/4 vec4s and its TN values of a row of
// op(b) as TN/4 vec4s per k, and accumulates their outer product: TM·TN multiply-adds for
// (TM+TN)/4 workgroup loads. Neighbouring invocations read neighbouring vec4s of sb and the same
// vec4 of sa (a broadcast), which no bank conflict slows.
//
// Staging: the tile of each operand is cut into groups of 4 elements that are consecutive in
// memory (along K for a [M,K] and b [N,K], along M or N otherwise); each invocation fetches
// LOADS_A and LOADS_B such groups per slice, as one vec4 load with FLAG_VEC4 (the leading dimensions
// are multiples of 4, so a group is all inside the matrix or all outside) or as 4 guarded scalar
// loads. Groups along M or N are stored as one vec4; groups along K are scattered over 4 rows of
// the k-major tile, whose rows are padded by one vec4 so that those scattered stores of
// neighbouring invocations fall in different banks.
//
// Double buffering: the slice after the current one is fetched into registers before the
// current one is multiplied and stored into the other half of workgroup memory after it, so the
// global loads' latency hides behind the arithmetic and one barrier per slice suffices.

const THREADS: u32 = (BM / TM) * (BN / TN);
const PITCH_A: u32 = BM / 4u + 1u; // vec4s per k row of the staged op(a), padding included
const PITCH_B: u32 = BN / 4u + 1u;
const LOADS_A: u32 = BM * BK / (4u * THREADS);
const LOADS_B: u32 = BN * BK / (4u * THREADS);

var<workgroup> sa: array<vec4<f32>, 2u * BK * PITCH_A>;
var<workgroup> sb: array<vec4<f32>, 2u * BK * PITCH_B>;

// One operand's view for staging: `wide` is M for op(a) and N for op(b).
struct Operand {
    is_a: bool,
    // The operand is contiguous along K (a [M,K], b [N,K]); otherwise along M or N.
    k_major: bool,
    wide: u32, // BM or BN
    pitch: u32,
    origin: u32, // first row (column) of the workgroup's tile
    extent: u32, // M or N
    ld: u32, // leading dimension in elements
}

// Group `e` of the operand's slice at k0: its position (k, w) in the tile, 4 long along K when
// k_major, else along w.
fn group_pos(o: Operand, e: u32) -> vec2<u32> {
    if o.k_major {
        return vec2(4u * (e % (BK / 4u)), e / (BK / 4u));
    }
    return vec2(e / (o.wide / 4u), 4u * (e % (o.wide / 4u)));
}

fn load1(is_a: bool, i: u32) -> f32 {
    if is_a {
        return a4[i / 4u][i % 4u];
    }
    return b4[i / 4u][i % 4u];
}

fn load4(is_a: bool, i: u32) -> vec4<f32> {
    if is_a {
        return a4[i];
    }
    return b4[i];
}

// The 4 elements of group `e` of the slice [k0, kend), zero outside the matrix.
fn fetch(o: Operand, e: u32, k0: u32, kend: u32) -> vec4<f32> {
    let kw = group_pos(o, e);
    let k = k0 + kw.x;
    let w = o.origin + kw.y;
    // Element (k, w) and the step between the group's 4 elements.
    let at = select(k * o.ld + w, w * o.ld + k, o.k_major);
    if (p.flags & FLAG_VEC4) != 0u {
        if k < kend && w < o.extent {
            return load4(o.is_a, at / 4u);
        }
        return vec4(0.0);
    }
    var v = vec4(0.0);
    for (var j = 0u; j < 4u; j++) {
        let kj = select(k, k + j, o.k_major);
        let wj = select(w + j, w, o.k_major);
        if kj < kend && wj < o.extent {
            v[j] = load1(o.is_a, at + j);
        }
    }
    return v;
}

// Stores group `e` into half `half` of the operand's workgroup tile.
fn stage(o: Operand, half: u32, e: u32, v: vec4<f32>) {
    let kw = group_pos(o, e);
    let base = half * BK * o.pitch;
    if o.k_major {
        for (var j = 0u; j < 4u; j++) {
            let i = base + (kw.x + j) * o.pitch + kw.y / 4u;
            if o.is_a {
                sa[i][kw.y % 4u] = v[j];
            } else {
                sb[i][kw.y % 4u] = v[j];
            }
        }
    } else {
        let i = base + kw.x * o.pitch + kw.y / 4u;
        if o.is_a {
            sa[i] = v;
        } else {
            sb[i] = v;
        }
    }
}

@compute @workgroup_size(THREADS, 1, 1)
fn block(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let tx = tid % (BN / TN);
    let ty = tid / (BN / TN);
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let kbeg = wg.z * p.kchunk;
    let kend = min(p.k, kbeg + p.kchunk);
    c_base = wg.z * p.m * p.n;
    // a is stored [K, M] in TN, b [N, K] in NT.
    let a_t = p.mode == MODE_TN;
    let b_t = p.mode == MODE_NT;
    let oa = Operand(true, !a_t, BM, PITCH_A, row0, p.m, select(p.a_row, p.a_k, a_t));
    let ob = Operand(false, b_t, BN, PITCH_B, col0, p.n, select(p.b_k, p.b_col, b_t));
    let slices = (max(kend, kbeg) - kbeg + BK - 1u) / BK;

    var ra: array<vec4<f32>, LOADS_A>;
    var rb: array<vec4<f32>, LOADS_B>;
    for (var s = 0u; s < LOADS_A; s++) {
        stage(oa, 0u, tid + s * THREADS, fetch(oa, tid + s * THREADS, kbeg, kend));
    }
    for (var s = 0u; s < LOADS_B; s++) {
        stage(ob, 0u, tid + s * THREADS, fetch(ob, tid + s * THREADS, kbeg, kend));
    }
    workgroupBarrier();

    // acc[i·TN/4 + h]: row i of the invocation's TM, column block h of its TN/4.
    var acc: array<vec4<f32>, TM * TN / 4u>;
    for (var slice = 0u; slice < slices; slice++) {
        let half = slice % 2u;
        let more = slice + 1u < slices;
        let k_next = kbeg + (slice + 1u) * BK;
        if more {
            for (var s = 0u; s < LOADS_A; s++) {
                ra[s] = fetch(oa, tid + s * THREADS, k_next, kend);
            }
            for (var s = 0u; s < LOADS_B; s++) {
                rb[s] = fetch(ob, tid + s * THREADS, k_next, kend);
            }
        }
        let base_a = half * BK * PITCH_A + ty;
        let base_b = half * BK * PITCH_B + tx;
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<vec4<f32>, TM / 4u>;
            var bv: array<vec4<f32>, TN / 4u>;
            for (var g = 0u; g < TM / 4u; g++) {
                av[g] = sa[base_a + kk * PITCH_A + g * (BM / TM)];
            }
            for (var h = 0u; h < TN / 4u; h++) {
                bv[h] = sb[base_b + kk * PITCH_B + h * (BN / TN)];
            }
            for (var i = 0u; i < TM; i++) {
                let a = vec4(av[i / 4u][i % 4u]);
                for (var h = 0u; h < TN / 4u; h++) {
                    acc[i * (TN / 4u) + h] = fma(a, bv[h], acc[i * (TN / 4u) + h]);
                }
            }
        }
        if more {
            for (var s = 0u; s < LOADS_A; s++) {
                stage(oa, 1u - half, tid + s * THREADS, ra[s]);
            }
            for (var s = 0u; s < LOADS_B; s++) {
                stage(ob, 1u - half, tid + s * THREADS, rb[s]);
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let row = row0 + (i / 4u) * (4u * BM / TM) + 4u * ty + i % 4u;
        for (var h = 0u; h < TN / 4u; h++) {
            let col = col0 + h * (4u * BN / TN) + 4u * tx;
            let v = acc[i * (TN / 4u) + h];
            if (p.flags & FLAG_VEC4) != 0u {
                var b = vec4(0.0);
                if (p.flags & FLAG_BIAS) != 0u && col < p.n {
                    b = load_bias4(col);
                }
                store4(row, col / 4u, v, b);
            } else {
                store1(row, col, v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `smem`: the plain shared-memory tile (GPUs): 64×64 per workgroup, 4×4 per invocation, K in
// slices of 16, no double buffering; any shape, any mode (from the strides), split K like `block`.

const SMEM_TILE: u32 = 64u;
const SMEM_SLICE: u32 = 16u;
// vec4s per k in the staged slices: 16 hold the tile, one more spreads the column-wise writes
// of the staging loop over the memory banks.
const SMEM_PITCH: u32 = 17u;

// One K-slice of op(a) and op(b), stored k-major as vec4s: smem_a[k·SMEM_PITCH + i] holds rows
// 4i .. 4i+4 (columns in smem_b).
var<workgroup> smem_a: array<vec4<f32>, 272>;
var<workgroup> smem_b: array<vec4<f32>, 272>;

@compute @workgroup_size(16, 16, 1)
fn smem(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row0 = wg.y * SMEM_TILE;
    let col0 = wg.x * SMEM_TILE;
    let kbeg = wg.z * p.kchunk;
    let kend = min(p.k, kbeg + p.kchunk);
    c_base = wg.z * p.m * p.n;
    var acc0 = vec4(0.0);
    var acc1 = vec4(0.0);
    var acc2 = vec4(0.0);
    var acc3 = vec4(0.0);
    for (var k0 = kbeg; k0 < kend; k0 += SMEM_SLICE) {
        // Each invocation stages 4 elements of each slice; consecutive invocations read
        // consecutive addresses along whichever dimension is contiguous in memory.
        for (var s = 0u; s < 4u; s++) {
            let e = tid + 256u * s;
            var row = e % SMEM_TILE;
            var ka = e / SMEM_TILE;
            if p.a_k == 1u {
                row = e / SMEM_SLICE;
                ka = e % SMEM_SLICE;
            }
            var va = 0.0;
            if row0 + row < p.m && k0 + ka < kend {
                va = a1[(row0 + row) * p.a_row + (k0 + ka) * p.a_k];
            }
            smem_a[ka * SMEM_PITCH + row / 4u][row % 4u] = va;
            var col = e % SMEM_TILE;
            var kb = e / SMEM_TILE;
            if p.b_col != 1u {
                col = e / SMEM_SLICE;
                kb = e % SMEM_SLICE;
            }
            var vb = 0.0;
            if col0 + col < p.n && k0 + kb < kend {
                vb = b1[(k0 + kb) * p.b_k + (col0 + col) * p.b_col];
            }
            smem_b[kb * SMEM_PITCH + col / 4u][col % 4u] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < SMEM_SLICE; kk++) {
            let av = smem_a[kk * SMEM_PITCH + lid.y];
            let bv = smem_b[kk * SMEM_PITCH + lid.x];
            acc0 = fma(vec4(av.x), bv, acc0);
            acc1 = fma(vec4(av.y), bv, acc1);
            acc2 = fma(vec4(av.z), bv, acc2);
            acc3 = fma(vec4(av.w), bv, acc3);
        }
        workgroupBarrier();
    }
    let r = row0 + 4u * lid.y;
    let c = col0 + 4u * lid.x;
    store1(r, c, acc0);
    store1(r + 1u, c, acc1);
    store1(r + 2u, c, acc2);
    store1(r + 3u, c, acc3);
}
