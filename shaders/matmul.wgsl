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
// - `smem`: the classic GPU kernel. A 64×64 tile of c per workgroup of 16×16, 4×4 per
//   invocation, K in slices of 16 staged in workgroup memory.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32, // FLAG_* bits
    alpha: f32,
    // Register tiles: how many of a workgroup's 8 lanes sit side by side along N (1, 2, 4 or 8).
    lanes_x: u32,
    // Element strides of op(a)[row, k] and op(b)[k, col] (`tile1`, `smem`).
    a_row: u32,
    a_k: u32,
    b_k: u32,
    b_col: u32,
    mode: u32, // 0 NN, NT or TN (`tile4`)
    // `smem`: K is cut into slices of `kchunk`, one per workgroup along z; slice z writes its
    // partial product to c[z·M·N ..] (the launcher then sums the slices). kchunk ≥ K: no split.
    kchunk: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;
const FLAG_BIAS: u32 = 2u;
const FLAG_RELU: u32 = 4u;

// Params::mode (0 is NN).
const NT: u32 = 1u;
const TN: u32 = 2u;

// Side of the square tile of c each lane owns in `tile4` and in `tile1`.
const TILE4_SIDE: u32 = 32u;
const TILE1_SIDE: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
// The same bindings seen as vec4s (aligned kernels) and as scalars (the others).
@group(1) @binding(0) var<storage, read_write> a4: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read_write> b4: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read_write> c4: array<vec4<f32>>;
@group(1) @binding(0) var<storage, read_write> a1: array<f32>;
@group(1) @binding(1) var<storage, read_write> b1: array<f32>;
@group(1) @binding(2) var<storage, read_write> c1: array<f32>;
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

// Stores v into c[row, col4*4 .. col4*4+4] (N a multiple of 4) if that is inside c.
fn store4(row: u32, col4: u32, v: vec4<f32>, b: vec4<f32>) {
    let n4 = p.n / 4u;
    if row >= p.m || col4 >= n4 {
        return;
    }
    let i = row * n4 + col4;
    var old = vec4(0.0);
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        old = c4[i];
    }
    c4[i] = finish(v, old, b);
}

// Where in c this invocation's [M, N] block starts: 0, or its K slice's partial in `smem`.
var<private> c_base: u32 = 0u;

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
                old = c1[i];
            }
            var b = 0.0;
            if (p.flags & FLAG_BIAS) != 0u {
                b = bias[col + j];
            }
            c1[i] = finish(vec4(v[j]), vec4(old), vec4(b)).x;
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
// the loads of both sides of a branch, so it only selects addresses and orientation. (Keep the
// address arithmetic scalar: the same selects on vec4<u32> indices made every llvmpipe dispatch
// cost ~70 ms more, for reasons inside llvmpipe.)
fn load_a4(r: u32, k4: u32) -> mat4x4<f32> {
    let tn = p.mode == TN;
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
    let nt = p.mode == NT;
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
// Shared-memory tiles (GPUs): any shape, any mode (from the strides).

const TILE: u32 = 64u;
const SLICE: u32 = 16u;
// vec4s per k in the staged slices: 16 hold the tile, one more spreads the column-wise writes
// of the staging loop over the memory banks.
const PITCH: u32 = 17u;

// One K-slice of op(a) and op(b), stored k-major as vec4s: sa[k·PITCH + i] holds rows 4i .. 4i+4
// (columns in sb).
var<workgroup> sa: array<vec4<f32>, 272>;
var<workgroup> sb: array<vec4<f32>, 272>;

@compute @workgroup_size(16, 16, 1)
fn smem(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    let kbeg = wg.z * p.kchunk;
    let kend = min(p.k, kbeg + p.kchunk);
    c_base = wg.z * p.m * p.n;
    var acc0 = vec4(0.0);
    var acc1 = vec4(0.0);
    var acc2 = vec4(0.0);
    var acc3 = vec4(0.0);
    for (var k0 = kbeg; k0 < kend; k0 += SLICE) {
        // Each invocation stages 4 elements of each slice; consecutive invocations read
        // consecutive addresses along whichever dimension is contiguous in memory.
        for (var s = 0u; s < 4u; s++) {
            let e = tid + 256u * s;
            var row = e % TILE;
            var ka = e / TILE;
            if p.a_k == 1u {
                row = e / SLICE;
                ka = e % SLICE;
            }
            var va = 0.0;
            if row0 + row < p.m && k0 + ka < kend {
                va = a1[(row0 + row) * p.a_row + (k0 + ka) * p.a_k];
            }
            sa[ka * PITCH + row / 4u][row % 4u] = va;
            var col = e % TILE;
            var kb = e / TILE;
            if p.b_col != 1u {
                col = e / SLICE;
                kb = e % SLICE;
            }
            var vb = 0.0;
            if col0 + col < p.n && k0 + kb < kend {
                vb = b1[(k0 + kb) * p.b_k + (col0 + col) * p.b_col];
            }
            sb[kb * PITCH + col / 4u][col % 4u] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < SLICE; kk++) {
            let av = sa[kk * PITCH + lid.y];
            let bv = sb[kk * PITCH + lid.x];
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
