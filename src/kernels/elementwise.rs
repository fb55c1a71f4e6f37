//! Elementwise maps (`shaders/elementwise.wgsl`): add, sub, mul, scale, ReLU and its backward, with
//! a second operand broadcast over rows (bias), columns (a value per row) or as a scalar.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;

const MAP: crate::gpu::Kernel = kernel!("elementwise.wgsl", "map", 3);
const MAP4: crate::gpu::Kernel = kernel!("elementwise.wgsl", "map4", 3);
/// vec4s per invocation of `map4` (PER_INVOCATION in the shader).
const MAP4_PER_INVOCATION: usize = 16;

/// The map applied per element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Map {
    /// `alpha·a + beta·b` (add, sub and axpy).
    Axpby { alpha: f32, beta: f32 },
    /// `alpha·a·b`.
    Mul { alpha: f32 },
    /// `b` where `a > 0`, else 0: ReLU's backward with `a` the ReLU input and `b` the output gradient.
    MaskPositive,
    /// `alpha·a + beta` (b is not read).
    Affine { alpha: f32, beta: f32 },
    /// `max(a, 0)` (b is not read).
    Relu,
    /// `alpha·b` (a is not read): spreads a row, a column or a scalar over the output.
    Broadcast { alpha: f32 },
    /// `alpha` everywhere (neither a nor b is read).
    Fill { alpha: f32 },
}

/// How the second operand is indexed for output element `i` of a `[rows, cols]` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broadcast {
    /// Same shape as the output.
    Full,
    /// `b[i % cols]`: one row added to every row (a bias).
    Row,
    /// `b[i / cols]`: one value per row.
    Col,
    /// `b[0]`.
    Scalar,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    op: u32,
    bcast: u32,
    cols: u32,
    accumulate: u32,
    alpha: f32,
    beta: f32,
    _pad: u32,
}

impl Map {
    fn code(&self) -> (u32, f32, f32) {
        match *self {
            Map::Axpby { alpha, beta } => (0, alpha, beta),
            Map::Mul { alpha } => (1, alpha, 0.0),
            Map::MaskPositive => (2, 0.0, 0.0),
            Map::Affine { alpha, beta } => (3, alpha, beta),
            Map::Relu => (4, 0.0, 0.0),
            Map::Broadcast { alpha } => (5, alpha, 0.0),
            Map::Fill { alpha } => (6, alpha, 0.0),
        }
    }

    fn reads_b(&self) -> bool {
        matches!(
            self,
            Map::Axpby { .. } | Map::Mul { .. } | Map::MaskPositive | Map::Broadcast { .. }
        )
    }
}

/// Length `b` must have for output shape `[rows, cols]` under `bcast`.
fn b_len(bcast: Broadcast, rows: usize, cols: usize) -> usize {
    match bcast {
        Broadcast::Full => rows * cols,
        Broadcast::Row => cols,
        Broadcast::Col => rows,
        Broadcast::Scalar => 1,
    }
}

/// `out (+)= map(a, b)`. `a` and `out` have the same element count; maps that do not read an
/// operand accept any tensor for it (e.g. `out` itself).
pub fn map(
    gpu: &Gpu,
    m: Map,
    a: &Tensor,
    b: &Tensor,
    bcast: Broadcast,
    out: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let (rows, cols) = out.shape.rows_cols();
    if a.numel() != out.numel() && !matches!(m, Map::Broadcast { .. } | Map::Fill { .. }) {
        return Err(Error::shape(
            "elementwise",
            format!(
                "input {:?} and output {:?} differ in size",
                a.shape, out.shape
            ),
        ));
    }
    if m.reads_b() && b.numel() != b_len(bcast, rows, cols) {
        return Err(Error::shape(
            "elementwise",
            format!(
                "operand {:?} cannot be broadcast as {bcast:?} to {:?}",
                b.shape, out.shape
            ),
        ));
    }
    let (op, alpha, beta) = m.code();
    let params = Params {
        n: out.numel() as u32,
        op,
        bcast: bcast as u32,
        cols: cols.max(1) as u32,
        accumulate: accumulate as u32,
        alpha,
        beta,
        _pad: 0,
    };
    let n = out.numel();
    // The vec4 variant binds every operand (read or not) as whole vec4s (a short broadcast operand,
    // such as a scalar, padded), and four lanes must never straddle two rows of a broadcast.
    let whole = |t: &Tensor| t.numel() >= 4 && t.numel().is_multiple_of(4);
    let vec4 =
        n.is_multiple_of(4) && whole(a) && (bcast == Broadcast::Full || cols.is_multiple_of(4));
    if vec4 {
        let threads = (n / 4).div_ceil(MAP4_PER_INVOCATION);
        gpu.dispatch(
            &MAP4,
            &params,
            &[a.region, b.region.padded_to_vec4(), out.region],
            grid_1d(threads, 256),
        )
    } else {
        gpu.dispatch(
            &MAP,
            &params,
            &[a.region, b.region, out.region],
            grid_1d(n, 256),
        )
    }
}

/// CPU reference of [`map`], in f64. `out` holds the previous output when accumulating.
pub fn reference(
    m: Map,
    a: &[f32],
    b: &[f32],
    bcast: Broadcast,
    cols: usize,
    out: &[f32],
    accumulate: bool,
) -> Vec<f64> {
    (0..a.len())
        .map(|i| {
            let bi = || {
                b[match bcast {
                    Broadcast::Full => i,
                    Broadcast::Row => i % cols,
                    Broadcast::Col => i / cols,
                    Broadcast::Scalar => 0,
                }] as f64
            };
            let x = a[i] as f64;
            let v = match m {
                Map::Axpby { alpha, beta } => alpha as f64 * x + beta as f64 * bi(),
                Map::Mul { alpha } => alpha as f64 * x * bi(),
                Map::MaskPositive => {
                    if x > 0.0 {
                        bi()
                    } else {
                        0.0
                    }
                }
                Map::Affine { alpha, beta } => alpha as f64 * x + beta as f64,
                Map::Relu => x.max(0.0),
                Map::Broadcast { alpha } => alpha as f64 * bi(),
                Map::Fill { alpha } => alpha as f64,
            };
            if accumulate {
                out[i] as f64 + v
            } else {
                v
            }
        })
        .collect()
}

const COPY_COLS: crate::gpu::Kernel = kernel!("elementwise.wgsl", "copy_cols", 2);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyParams {
    n: u32,
    cols: u32,
    wide_cols: u32,
    col0: u32,
    from_wide: u32,
    accumulate: u32,
    _pad: [u32; 2],
}

/// Which way [`copy_cols`] moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Write the narrow matrix into the wide one's column block (concatenation).
    IntoWide,
    /// Read the wide matrix's column block into the narrow one (the concatenation's backward).
    FromWide,
}

/// Copies between `narrow` [rows, c] and columns `col0..col0+c` of `wide` [rows, C].
pub fn copy_cols(
    gpu: &Gpu,
    narrow: &Tensor,
    wide: &Tensor,
    col0: usize,
    dir: Direction,
    accumulate: bool,
) -> Result<()> {
    let (rows, c) = narrow.shape.rows_cols();
    let (wrows, wc) = wide.shape.rows_cols();
    if rows != wrows || col0 + c > wc {
        return Err(Error::shape(
            "concat",
            format!(
                "block {:?} at column {col0} does not fit in {:?}",
                narrow.shape, wide.shape
            ),
        ));
    }
    let params = CopyParams {
        n: narrow.numel() as u32,
        cols: c.max(1) as u32,
        wide_cols: wc as u32,
        col0: col0 as u32,
        from_wide: (dir == Direction::FromWide) as u32,
        accumulate: accumulate as u32,
        _pad: [0; 2],
    };
    gpu.dispatch(
        &COPY_COLS,
        &params,
        &[narrow.region, wide.region],
        grid_1d(narrow.numel(), 256),
    )
}
