// Elementwise maps: out (+)= f(a, b), with b broadcast over rows, columns or as a scalar.
//
// One parameter struct for the family; `op` selects the map and is uniform across the dispatch,
// so the switch costs no divergence.

struct Params {
    n: u32,          // elements in `out`
    op: u32,         // see the OP_* constants
    bcast: u32,      // how `b` is indexed, see the B_* constants
    cols: u32,       // row length for row/column broadcast
    accumulate: u32, // 1: out += v, 0: out = v
    alpha: f32,
    beta: f32,
    _pad: u32,
}

const OP_AXPBY: u32 = 0u;     // alpha*a + beta*b
const OP_MUL: u32 = 1u;       // alpha*a*b
const OP_MASK_POS: u32 = 2u;  // b where a > 0 else 0 (ReLU backward with a = x, b = dy)
const OP_AFFINE: u32 = 3u;    // alpha*a + beta (b unused)
const OP_RELU: u32 = 4u;      // max(a, 0) (b unused)
const OP_BROADCAST: u32 = 5u; // alpha*b (a unused): spreads a row, column or scalar
const OP_FILL: u32 = 6u;      // alpha (a and b unused)

const B_FULL: u32 = 0u;
const B_ROW: u32 = 1u;    // b[i % cols]: a bias row added to every row
const B_COL: u32 = 2u;    // b[i / cols]: one value per row
const B_SCALAR: u32 = 3u; // b[0]

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> a: array<f32>;
@group(1) @binding(1) var<storage, read_write> b: array<f32>;
@group(1) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

// Index of b for output element i (ALU only: see `apply`).
fn b_index(i: u32) -> u32 {
    switch p.bcast {
        case 1u: { return i % p.cols; }
        case 2u: { return i / p.cols; }
        case 3u: { return 0u; }
        default: { return i; }
    }
}

// The map, on values already loaded. llvmpipe runs every case of a switch (lanes masked off, not
// skipped), so each operand is loaded exactly once before it and the cases are arithmetic only;
// a case with loads of its own would pay for them under every op. Operands an op ignores may be
// uninitialised memory (even NaN): they are loaded but never reach its result.
fn apply(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    switch p.op {
        case 0u: { return p.alpha * a + p.beta * b; }
        case 1u: { return p.alpha * a * b; }
        case 2u: { return select(vec4(0.0), b, a > vec4(0.0)); }
        case 3u: { return p.alpha * a + p.beta; }
        case 4u: { return max(a, vec4(0.0)); }
        case 5u: { return p.alpha * b; }
        default: { return vec4(p.alpha); }
    }
}

@compute @workgroup_size(256)
fn map(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.n {
        return;
    }
    var v = apply(vec4(a[i]), vec4(b[b_index(i)])).x;
    if p.accumulate != 0u {
        v += out[i];
    }
    out[i] = v;
}

// The same maps, four elements per load and several vec4s per invocation: llvmpipe pays per
// load instruction and per invocation, and this amortises both. Used when every
// length and row width involved is a multiple of 4 (regions are always 16-byte aligned).
@group(1) @binding(0) var<storage, read_write> a4: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read_write> b4: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read_write> out4: array<vec4<f32>>;

const PER_INVOCATION: u32 = 16u;

// b for the vec4 of output elements 4i..4i+3. With cols % 4 == 0 the four share a row, so Col and
// Scalar take one element (`b_index` of the first) and Row and Full a whole vec4.
fn b4_at(i: u32) -> vec4<f32> {
    let whole = p.bcast == 0u || p.bcast == 1u;
    let j = select(b_index(4u * i), b_index(4u * i) / 4u, whole);
    let v = b4[select(j / 4u, j, whole)];
    let e = j % 4u;
    let one = select(select(v.x, v.y, e == 1u), select(v.z, v.w, e == 3u), e >= 2u);
    return select(vec4(one), v, whole);
}

@compute @workgroup_size(256)
fn map4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n4 = p.n / 4u;
    let first = (gid.x + gid.y * nwg.x * WG) * PER_INVOCATION;
    let last = min(first + PER_INVOCATION, n4);
    for (var i = first; i < last; i++) {
        var v = apply(a4[i], b4_at(i));
        if p.accumulate != 0u {
            v += out4[i];
        }
        out4[i] = v;
    }
}

// Column-block copy between a narrow matrix `a` [rows, cols] and a wide one `b` [rows, wide_cols]
// at column offset `col0`. `from_wide` 0 writes the block into b (concatenation), 1 reads it back
// out into a (the concatenation's backward).
struct CopyParams {
    n: u32, // rows * cols
    cols: u32,
    wide_cols: u32,
    col0: u32,
    from_wide: u32,
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> cp: CopyParams;

@compute @workgroup_size(256)
fn copy_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= cp.n {
        return;
    }
    let j = (i / cp.cols) * cp.wide_cols + cp.col0 + (i % cp.cols);
    if cp.from_wide == 0u {
        b[j] = select(0.0, b[j], cp.accumulate != 0u) + a[i];
    } else {
        a[i] = select(0.0, a[i], cp.accumulate != 0u) + b[j];
    }
}
