//! Row-wise L2 normalisation (`shaders/l2norm.wgsl`), the projection onto the unit sphere before
//! every contrastive similarity, and its backward.
//!
//! Semantics follow PyTorch's `F.normalize(x, dim=-1, eps=1e-12)`: `y = x / max(‖x‖, ε)`. The
//! forward also stores the denominator `max(‖x‖, ε)` per row, which is all the backward needs
//! besides `y`. The backward is the gradient of `x / ‖x‖` evaluated with that denominator,
//! `(dy − y·⟨y, dy⟩) / max(‖x‖, ε)`: for an all-zero row (y = 0) that is `dy / ε`, exactly
//! PyTorch's, finite and NaN-free; it differs from PyTorch only for rows with 0 < ‖x‖ < 1e-12.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, Region};
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;
use super::reduce::invocation_per_output;

const FORWARD_ROW: Kernel = kernel!("l2norm.wgsl", "forward_row", 3);
const FORWARD_GROUP: Kernel = kernel!("l2norm.wgsl", "forward_group", 3);
const BACKWARD_ROW: Kernel = kernel!("l2norm.wgsl", "backward_row", 4);
const BACKWARD_GROUP: Kernel = kernel!("l2norm.wgsl", "backward_group", 4);

/// The ε of `max(‖x‖, ε)`.
pub const EPS: f64 = 1e-12;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    accumulate: u32,
    _pad: u32,
}

/// Checks that `others` hold as many elements as `x` and `norms` one per row of `x`; returns
/// the parameters for `x` read as `[rows, cols]`.
fn check(op: &'static str, x: &Tensor, others: &[&Tensor], norms: &Tensor) -> Result<Params> {
    let (rows, cols) = x.shape.rows_cols();
    for t in others {
        if t.numel() != x.numel() {
            return Err(Error::shape(
                op,
                format!("{:?} and {:?} differ in size", x.shape, t.shape),
            ));
        }
    }
    if norms.numel() != rows {
        return Err(Error::shape(
            op,
            format!(
                "norms {:?} must hold one value per row of {:?}",
                norms.shape, x.shape
            ),
        ));
    }
    Ok(Params {
        rows: rows as u32,
        cols: cols as u32,
        accumulate: 0,
        _pad: 0,
    })
}

/// Records `per_row` or `per_group` (the same kernel with a row per invocation or per workgroup).
fn launch(
    gpu: &Gpu,
    p: &Params,
    per_row: &Kernel,
    per_group: &Kernel,
    regions: &[Region],
) -> Result<()> {
    let rows = p.rows as usize;
    if invocation_per_output(gpu, rows, p.cols as usize) {
        gpu.dispatch(per_row, p, regions, grid_1d(rows, 64))
    } else {
        gpu.dispatch(per_group, p, regions, grid_1d(rows, 1))
    }
}

/// `y = x / max(‖x‖, ε)` per row of `x` read as `[rows, cols]`; `norms[row] = max(‖x‖, ε)`.
/// `y` may be `x` itself.
pub fn l2norm_forward(gpu: &Gpu, x: &Tensor, y: &Tensor, norms: &Tensor) -> Result<()> {
    let p = check("l2norm_forward", x, &[y], norms)?;
    launch(
        gpu,
        &p,
        &FORWARD_ROW,
        &FORWARD_GROUP,
        &[x.region, norms.region, y.region],
    )
}

/// `dx (+)= (dy − y·⟨y, dy⟩) / norm` per row, with `y` and `norms` from [`l2norm_forward`].
pub fn l2norm_backward(
    gpu: &Gpu,
    y: &Tensor,
    norms: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let mut p = check("l2norm_backward", y, &[dy, dx], norms)?;
    p.accumulate = accumulate as u32;
    launch(
        gpu,
        &p,
        &BACKWARD_ROW,
        &BACKWARD_GROUP,
        &[y.region, norms.region, dy.region, dx.region],
    )
}

/// CPU reference of [`l2norm_forward`] in f64: `(y, norms)`.
pub fn reference_forward(x: &[f32], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = Vec::with_capacity(rows * cols);
    let mut norms = Vec::with_capacity(rows);
    for row in x.chunks(cols.max(1)).take(rows) {
        let n = row
            .iter()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(EPS);
        y.extend(row.iter().map(|&v| v as f64 / n));
        norms.push(n);
    }
    (y, norms)
}

/// CPU reference of [`l2norm_backward`] in f64; `dx` holds the previous gradient when
/// accumulating.
pub fn reference_backward(
    y: &[f32],
    norms: &[f32],
    dy: &[f32],
    dx: &[f32],
    cols: usize,
    accumulate: bool,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(y.len());
    for (r, &n) in norms.iter().enumerate() {
        let row = r * cols..(r + 1) * cols;
        let (yr, dyr) = (&y[row.clone()], &dy[row.clone()]);
        let dot: f64 = yr.iter().zip(dyr).map(|(&a, &b)| a as f64 * b as f64).sum();
        for ((&a, &b), &prev) in yr.iter().zip(dyr).zip(&dx[row]) {
            let v = (b as f64 - a as f64 * dot) / n as f64;
            out.push(if accumulate { prev as f64 + v } else { v });
        }
    }
    out
}
