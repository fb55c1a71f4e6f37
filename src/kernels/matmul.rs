//! Matrix multiply (`shaders/matmul.wgsl`): `c = epilogue(alpha · op(a) · op(b))` with either
//! operand transposed, a bias + ReLU epilogue, or accumulation into `c`.
//!
//! Two kernel families, chosen per adapter ([`Variant::for_adapter`]):
//! - register tiles for CPU adapters (llvmpipe), where workgroup barriers are very expensive and
//!   every storage load costs a per-lane loop: each invocation owns a 32×32 tile of `c` and streams
//!   vec4s of `a` and `b` straight from storage ([`Variant::Vec4`]); shapes that cannot be read as
//!   vec4s use a scalar-load version ([`Variant::Scalar`]);
//! - shared-memory tiles for GPUs ([`Variant::Shared`]): 64×64 per workgroup, 4×4 per invocation,
//!   K in slices of 16 staged in workgroup memory. A product with few output tiles and a long K
//!   (a weight gradient summed over a batch of locations) splits K across workgroups when the
//!   caller gives scratch for the partial products ([`split_k_scratch`]); the reduction kernel
//!   then adds them up. Without the split, DIM's 256×64 score gradient over K = 50176 ran on 4
//!   workgroups and took 88 % of its step on an H100.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, Region};
use crate::kernel;
use crate::kernels::reduce::{self, Axis, Reduce};
use crate::memory::Tensor;

const TILE4: Kernel = kernel!("matmul.wgsl", "tile4", 4);
const TILE1: Kernel = kernel!("matmul.wgsl", "tile1", 4);
const SMEM: Kernel = kernel!("matmul.wgsl", "smem", 4);

/// Side of the square tile of `c` per invocation in the register-tile kernels and per workgroup
/// in the shared-memory kernel (they must match the WGSL constants).
const TILE4_SIDE: usize = 32;
const TILE1_SIDE: usize = 16;
const SMEM_TILE: usize = 64;
/// K slice staged per step by the shared-memory kernel (its SLICE).
const SMEM_SLICE: usize = 16;
/// Invocations per workgroup in the register-tile kernels: one SIMD vector on llvmpipe.
const LANES: usize = 8;
/// Split-K (shared-memory kernel): split K until about this many workgroups run, in slices of at
/// least SPLIT_MIN_K (a multiple of the kernel's 16-long K slices).
const SPLIT_WORKGROUPS: usize = 256;
const SPLIT_MIN_K: usize = 256;

/// Which operand is transposed. (The discriminants are the kernels' mode codes.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// `a [M,K] · b [K,N]`
    NN = 0,
    /// `a [M,K] · b [N,K]ᵀ`
    NT,
    /// `a [K,M]ᵀ · b [K,N]`
    TN,
}

/// What to compute; see [`matmul`].
#[derive(Clone, Copy, Debug)]
pub struct Matmul<'a> {
    pub trans: Trans,
    pub alpha: f32,
    /// Added to every row of the product (N elements).
    pub bias: Option<&'a Tensor>,
    /// ReLU after the bias.
    pub relu: bool,
    /// `c += alpha · op(a) · op(b)` instead of `c = ...`; excludes `bias` and `relu`.
    pub accumulate: bool,
    /// Room for the partial products of a split K loop ([`split_k_scratch`] floats). Without
    /// it, or with a bias or ReLU epilogue, K is not split.
    pub scratch: Option<&'a Tensor>,
}

impl Default for Matmul<'_> {
    fn default() -> Self {
        Matmul {
            trans: Trans::NN,
            alpha: 1.0,
            bias: None,
            relu: false,
            accumulate: false,
            scratch: None,
        }
    }
}

/// Kernel family. [`matmul`] picks one with [`Variant::for_adapter`]; [`matmul_with`] takes it
/// explicitly (tests run every variant on every adapter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Register tiles with vec4 loads. Needs K and N (and M in [`Trans::TN`]) to be multiples of
    /// 4; other shapes run [`Variant::Scalar`].
    Vec4,
    /// Register tiles with scalar loads, any shape.
    Scalar,
    /// Shared-memory tiles, any shape.
    Shared,
}

impl Variant {
    /// Register tiles on CPU adapters, shared-memory tiles on GPUs.
    pub fn for_adapter(gpu: &Gpu) -> Variant {
        if gpu.kind() == crate::gpu::AdapterKind::Cpu {
            Variant::Vec4
        } else {
            Variant::Shared
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    alpha: f32,
    lanes_x: u32,
    a_row: u32,
    a_k: u32,
    b_k: u32,
    b_col: u32,
    mode: u32,
    kchunk: u32,
}

const FLAG_ACCUMULATE: u32 = 1;
const FLAG_BIAS: u32 = 2;
const FLAG_RELU: u32 = 4;

/// `c = epilogue(alpha · op(a) · op(b))`; `a`, `b` and `c` are read as matrices through
/// [`crate::Shape::rows_cols`] (leading dimensions fold into rows).
///
/// - [`Trans::NN`]: `a [M,K]`, `b [K,N]`; [`Trans::NT`]: `a [M,K]`, `b [N,K]` (`c = a·bᵀ`);
///   [`Trans::TN`]: `a [K,M]`, `b [K,N]` (`c = aᵀ·b`); always `c [M,N]`.
/// - Epilogue: `+ bias[col]` (bias has N elements), then ReLU if `relu`.
/// - `accumulate`: `c += alpha · op(a) · op(b)`. Combining it with `bias` or `relu` is an
///   [`Error::Config`]: the epilogue of a sum of contributions is not the sum of epilogues.
///
/// `c` must not overlap `a`, `b` or the bias. Only records the work (see [`Gpu::dispatch`]).
pub fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor, c: &Tensor, spec: &Matmul) -> Result<()> {
    matmul_with(gpu, a, b, c, spec, Variant::for_adapter(gpu))
}

/// [`matmul`] with the kernel family chosen by the caller.
pub fn matmul_with(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    spec: &Matmul,
    variant: Variant,
) -> Result<()> {
    let (m, n, k) = dims(a, b, c, spec)?;
    if spec.accumulate && (spec.bias.is_some() || spec.relu) {
        return Err(Error::Config(
            "matmul: `accumulate` cannot be combined with a bias or ReLU epilogue".into(),
        ));
    }
    for (input, what) in [(Some(a), "a"), (Some(b), "b"), (spec.bias, "the bias")] {
        if input.is_some_and(|t| overlaps(t.region, c.region)) {
            return Err(Error::Config(format!(
                "matmul: the output c {:?} overlaps {what}",
                c.shape
            )));
        }
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let flags = if spec.accumulate { FLAG_ACCUMULATE } else { 0 }
        | if spec.bias.is_some() { FLAG_BIAS } else { 0 }
        | if spec.relu { FLAG_RELU } else { 0 };
    // Element strides of op(a)[row, k] and op(b)[k, col].
    let (a_row, a_k) = match spec.trans {
        Trans::NN | Trans::NT => (k, 1),
        Trans::TN => (1, m),
    };
    let (b_k, b_col) = match spec.trans {
        Trans::NN | Trans::TN => (n, 1),
        Trans::NT => (1, k),
    };
    let vec4_ok = k > 0 && k % 4 == 0 && n % 4 == 0 && (spec.trans != Trans::TN || m % 4 == 0);
    let variant = match variant {
        Variant::Vec4 if !vec4_ok => Variant::Scalar,
        v => v,
    };
    let (kernel, lanes_x, groups) = match variant {
        Variant::Vec4 => {
            let (lanes_x, groups) = lane_grid(m, n, TILE4_SIDE);
            (&TILE4, lanes_x, groups)
        }
        Variant::Scalar => {
            let (lanes_x, groups) = lane_grid(m, n, TILE1_SIDE);
            (&TILE1, lanes_x, groups)
        }
        Variant::Shared => (
            &SMEM,
            1,
            [
                n.div_ceil(SMEM_TILE) as u32,
                m.div_ceil(SMEM_TILE) as u32,
                1,
            ],
        ),
    };
    let params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        flags,
        alpha: spec.alpha,
        lanes_x: lanes_x as u32,
        a_row: a_row as u32,
        a_k: a_k as u32,
        b_k: b_k as u32,
        b_col: b_col as u32,
        mode: spec.trans as u32,
        kchunk: k as u32,
    };
    // Without a bias, `c` fills the slot; the kernel does not read it.
    let bias = spec.bias.map_or(c.region, |t| t.region);
    // Split K only without an epilogue and with room for at least two partial products.
    let split = spec
        .scratch
        .filter(|_| spec.bias.is_none() && !spec.relu)
        .map(|t| (t, k_splits(variant, m, n, k).min(t.numel() / (m * n))))
        .filter(|&(_, splits)| splits > 1);
    let Some((scratch, splits)) = split else {
        return gpu.dispatch(
            kernel,
            &params,
            &[a.region, b.region, c.region, bias],
            groups,
        );
    };
    // Split K: slice z stores alpha · (its partial product) into scratch[z]; a column sum of
    // the [splits, M·N] partials then writes (or adds to) c.
    let kchunk = k.div_ceil(splits).next_multiple_of(SMEM_SLICE);
    let splits = k.div_ceil(kchunk);
    let partials = Tensor {
        region: scratch.region.slice(0, splits * m * n),
        shape: [splits, m * n].into(),
    };
    let params = Params {
        flags: 0,
        kchunk: kchunk as u32,
        ..params
    };
    gpu.dispatch(
        kernel,
        &params,
        &[a.region, b.region, partials.region, partials.region],
        [groups[0], groups[1], splits as u32],
    )?;
    let flat_c = Tensor {
        region: c.region,
        shape: [m * n].into(),
    };
    reduce::reduce(
        gpu,
        &partials,
        &flat_c,
        Reduce::Sum,
        Axis::Cols,
        spec.accumulate,
    )
}

/// K slices a product runs in on `variant`: only the shared-memory kernel splits, when it would
/// run fewer than SPLIT_WORKGROUPS workgroups and K is long enough.
fn k_splits(variant: Variant, m: usize, n: usize, k: usize) -> usize {
    let tiles = m.div_ceil(SMEM_TILE) * n.div_ceil(SMEM_TILE);
    if variant != Variant::Shared || tiles >= SPLIT_WORKGROUPS {
        return 1;
    }
    SPLIT_WORKGROUPS.div_ceil(tiles).min(k / SPLIT_MIN_K).max(1)
}

/// [`split_k_scratch`] for `op(a) · op(b)` on `gpu`'s own variant (zero for operands whose
/// shapes do not multiply; [`matmul`] reports those).
pub fn split_k_scratch_for(gpu: &Gpu, a: &Tensor, b: &Tensor, trans: Trans) -> usize {
    let ((ar, ac), (br, bc)) = (a.shape.rows_cols(), b.shape.rows_cols());
    let (m, k, n) = match trans {
        Trans::NN => (ar, ac, bc),
        Trans::NT => (ar, ac, br),
        Trans::TN => (ac, ar, bc),
    };
    split_k_scratch(Variant::for_adapter(gpu), m, n, k)
}

/// Floats of scratch with which [`matmul_with`] on `variant` (see [`Variant::for_adapter`])
/// splits the K loop of an `m×n` product over `k`; 0 when it would not split.
pub fn split_k_scratch(variant: Variant, m: usize, n: usize, k: usize) -> usize {
    match k_splits(variant, m, n, k) {
        1 => 0,
        s => s * m * n,
    }
}

/// (M, N, K) of the product, or a shape error naming all shapes and the mode.
fn dims(a: &Tensor, b: &Tensor, c: &Tensor, spec: &Matmul) -> Result<(usize, usize, usize)> {
    let (ar, ac) = a.shape.rows_cols();
    let (br, bc) = b.shape.rows_cols();
    let (m, k, kb, n) = match spec.trans {
        Trans::NN => (ar, ac, br, bc),
        Trans::NT => (ar, ac, bc, br),
        Trans::TN => (ac, ar, br, bc),
    };
    let fail = |why: String| {
        Err(Error::shape(
            "matmul",
            format!(
                "{:?}: a {:?} · b {:?} -> c {:?}: {why}",
                spec.trans, a.shape, b.shape, c.shape
            ),
        ))
    };
    if k != kb {
        return fail(format!("inner dimensions differ ({k} and {kb})"));
    }
    if c.shape.rows_cols() != (m, n) {
        return fail(format!("c must be {m}×{n}"));
    }
    if let Some(t) = spec.bias {
        if t.numel() != n {
            return fail(format!("bias {:?} must have {n} elements", t.shape));
        }
    }
    Ok((m, n, k))
}

fn overlaps(x: Region, y: Region) -> bool {
    x.buffer == y.buffer
        && x.len > 0
        && y.len > 0
        && x.offset < y.offset + y.bytes()
        && y.offset < x.offset + x.bytes()
}

/// How the 8 lanes of a register-tile workgroup are laid out (`lanes_x` of them side by side
/// along N) and the workgroup grid: the layout that covers `m × n` with the least padding,
/// preferring tall workgroups. Workgroups run in x-major order, so neighbours share their rows
/// of `a`: with the lanes stacked along M that shared panel is the large one and stays in
/// cache, while each workgroup streams only a narrow panel of `b` (2048³ runs ~30% faster on
/// llvmpipe than with the lanes side by side).
fn lane_grid(m: usize, n: usize, side: usize) -> (usize, [u32; 3]) {
    [1, 2, 4, 8]
        .into_iter()
        .map(|lanes_x| {
            let (wg_rows, wg_cols) = (LANES / lanes_x * side, lanes_x * side);
            let (gy, gx) = (m.div_ceil(wg_rows), n.div_ceil(wg_cols));
            (
                gy * wg_rows * gx * wg_cols,
                lanes_x,
                [gx as u32, gy as u32, 1],
            )
        })
        .min_by_key(|&(area, _, _)| area)
        .map(|(_, lanes_x, groups)| (lanes_x, groups))
        .expect("four layouts")
}

/// CPU reference of [`matmul`] in f64. `a`, `b` are laid out as for `spec.trans`; `c_prev` is
/// read only when accumulating; `bias` stands in for `spec.bias` (whose GPU tensor is ignored).
#[allow(clippy::too_many_arguments)]
pub fn reference(
    a: &[f32],
    b: &[f32],
    c_prev: &[f32],
    m: usize,
    n: usize,
    k: usize,
    spec: &Matmul,
    bias: Option<&[f32]>,
) -> Vec<f64> {
    let at = |i: usize, q: usize| match spec.trans {
        Trans::NN | Trans::NT => a[i * k + q],
        Trans::TN => a[q * m + i],
    } as f64;
    let bt = |q: usize, j: usize| match spec.trans {
        Trans::NN | Trans::TN => b[q * n + j],
        Trans::NT => b[j * k + q],
    } as f64;
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|q| at(i, q) * bt(q, j)).sum();
            let v = spec.alpha as f64 * dot;
            out.push(if spec.accumulate {
                c_prev[i * n + j] as f64 + v
            } else {
                let v = v + bias.map_or(0.0, |b| b[j] as f64);
                if spec.relu {
                    v.max(0.0)
                } else {
                    v
                }
            });
        }
    }
    out
}
