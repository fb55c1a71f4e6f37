//! Pooling over NHWC activations (`shaders/pool.wgsl`): global average pooling and 2×2 max pooling
//! with stride 2, their backward passes, and f64 CPU references.
//!
//! Max pooling records, for every output, the element index into `x` of the input that won (ties
//! go to the first in row-major window order); the backward pass is a gather over those indices.
//! Odd heights and widths are rounded down: the last row or column is in no window and gets a zero
//! gradient.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;

const AVG4: Kernel = kernel!("pool.wgsl", "avg_global4", 2);
const AVG1: Kernel = kernel!("pool.wgsl", "avg_global1", 2);
const AVG_BACK4: Kernel = kernel!("pool.wgsl", "avg_global_backward4", 2);
const AVG_BACK1: Kernel = kernel!("pool.wgsl", "avg_global_backward1", 2);
const MAX4: Kernel = kernel!("pool.wgsl", "max2x24", 3);
const MAX1: Kernel = kernel!("pool.wgsl", "max2x21", 3);
const MAX_BACK4: Kernel = kernel!("pool.wgsl", "max2x2_backward4", 3);
const MAX_BACK1: Kernel = kernel!("pool.wgsl", "max2x2_backward1", 3);

const WG: u32 = 256;
const F_ACC: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    h: u32,
    w: u32,
    c: u32,
    ho: u32,
    wo: u32,
    count: u32,
    flags: u32,
}

/// `[N, H, W, C]` of a rank-4 tensor.
fn nhwc(op: &'static str, t: &Tensor) -> Result<[usize; 4]> {
    match *t.shape.dims() {
        [n, h, w, c] if n * h * w * c > 0 => Ok([n, h, w, c]),
        _ => Err(Error::shape(
            op,
            format!(
                "expected a non-empty [N, H, W, C] tensor, got {:?}",
                t.shape
            ),
        )),
    }
}

/// Vec4 kernel when channels are a multiple of 4. Returns the kernel and the channels per
/// invocation.
fn pick(c: usize, k4: &'static Kernel, k1: &'static Kernel) -> (&'static Kernel, usize) {
    if c.is_multiple_of(4) {
        (k4, 4)
    } else {
        (k1, 1)
    }
}

fn params(x: [usize; 4], ho: usize, wo: usize, count: usize, accumulate: bool) -> Params {
    Params {
        n: x[0] as u32,
        h: x[1] as u32,
        w: x[2] as u32,
        c: x[3] as u32,
        ho: ho as u32,
        wo: wo as u32,
        count: count as u32,
        flags: if accumulate { F_ACC } else { 0 },
    }
}

/// Checks `[N, C]` against `x [N, H, W, C]` for global average pooling.
fn check_global(op: &'static str, x: &Tensor, y: &Tensor) -> Result<[usize; 4]> {
    let d = nhwc(op, x)?;
    if y.shape.dims() != [d[0], d[3]] {
        return Err(Error::shape(
            op,
            format!(
                "pooled {:?} does not match input {:?} (expected [N, C])",
                y.shape, x.shape
            ),
        ));
    }
    Ok(d)
}

/// `y [N, C]` = the mean of `x [N, H, W, C]` over H and W.
pub fn avgpool_global(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<()> {
    let d = check_global("avgpool_global", x, y)?;
    let (k, lanes) = pick(d[3], &AVG4, &AVG1);
    let count = d[0] * d[3] / lanes;
    gpu.dispatch(
        k,
        &params(d, 1, 1, count, false),
        &[x.region, y.region],
        grid_1d(count, WG),
    )
}

/// `dx [N, H, W, C] (+)= dy [N, C] / (H·W)` broadcast over H and W.
pub fn avgpool_global_backward(
    gpu: &Gpu,
    dy: &Tensor,
    dx: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let d = check_global("avgpool_global_backward", dx, dy)?;
    let (k, lanes) = pick(d[3], &AVG_BACK4, &AVG_BACK1);
    let count = dx.numel() / lanes;
    gpu.dispatch(
        k,
        &params(d, 1, 1, count, accumulate),
        &[dy.region, dx.region],
        grid_1d(count, WG),
    )
}

/// Checks `y` and `argmax` (`[N, H/2, W/2, C]`) against `x` for 2×2 max pooling.
fn check_max(op: &'static str, x: &Tensor, y: &Tensor, argmax: &Tensor) -> Result<[usize; 4]> {
    let d = nhwc(op, x)?;
    if d[1] < 2 || d[2] < 2 {
        return Err(Error::shape(
            op,
            format!("input {:?} is smaller than the 2x2 window", x.shape),
        ));
    }
    let want = [d[0], d[1] / 2, d[2] / 2, d[3]];
    if y.shape.dims() != want || argmax.numel() != y.numel() {
        return Err(Error::shape(
            op,
            format!(
                "pooled {:?} and argmax {:?} do not match input {:?} (expected {want:?})",
                y.shape, argmax.shape, x.shape
            ),
        ));
    }
    Ok(d)
}

/// `y [N, H/2, W/2, C]` = the maximum of each 2×2 window of `x [N, H, W, C]` (stride 2, odd sizes
/// rounded down); `argmax` (u32, one per output) receives the element index into `x` of the
/// winner.
pub fn maxpool2x2(gpu: &Gpu, x: &Tensor, y: &Tensor, argmax: &Tensor) -> Result<()> {
    let d = check_max("maxpool2x2", x, y, argmax)?;
    let (k, lanes) = pick(d[3], &MAX4, &MAX1);
    let count = y.numel() / lanes;
    gpu.dispatch(
        k,
        &params(d, d[1] / 2, d[2] / 2, count, false),
        &[x.region, y.region, argmax.region],
        grid_1d(count, WG),
    )
}

/// `dx [N, H, W, C] (+)= dy` routed to the inputs recorded in `argmax` by [`maxpool2x2`]; inputs
/// that won nothing get zero.
pub fn maxpool2x2_backward(
    gpu: &Gpu,
    dy: &Tensor,
    argmax: &Tensor,
    dx: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let d = check_max("maxpool2x2_backward", dx, dy, argmax)?;
    let (k, lanes) = pick(d[3], &MAX_BACK4, &MAX_BACK1);
    let count = dx.numel() / lanes;
    gpu.dispatch(
        k,
        &params(d, d[1] / 2, d[2] / 2, count, accumulate),
        &[dy.region, dx.region, argmax.region],
        grid_1d(count, WG),
    )
}

/// CPU reference of [`avgpool_global`]: `[N, C]` from `x` of shape `[n, h, w, c]`.
pub fn reference_avgpool_global(x: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f64> {
    let mut y = vec![0.0f64; n * c];
    for (i, &v) in x.iter().enumerate() {
        y[i / (h * w * c) * c + i % c] += v as f64;
    }
    y.iter().map(|s| s / (h * w) as f64).collect()
}

/// CPU reference of [`avgpool_global_backward`]: `dx` of shape `[n, h, w, c]` (`prev` is added when
/// accumulating).
pub fn reference_avgpool_global_backward(
    dy: &[f32],
    [n, h, w, c]: [usize; 4],
    prev: Option<&[f32]>,
) -> Vec<f64> {
    (0..n * h * w * c)
        .map(|i| {
            let g = dy[i / (h * w * c) * c + i % c] as f64 / (h * w) as f64;
            g + prev.map_or(0.0, |p| p[i] as f64)
        })
        .collect()
}

/// CPU reference of [`maxpool2x2`]: the pooled values and the winners' element indices.
pub fn reference_maxpool2x2(x: &[f32], [n, h, w, c]: [usize; 4]) -> (Vec<f64>, Vec<u32>) {
    let (ho, wo) = (h / 2, w / 2);
    let mut y = Vec::with_capacity(n * ho * wo * c);
    let mut arg = Vec::with_capacity(n * ho * wo * c);
    for b in 0..n {
        for oh in 0..ho {
            for ow in 0..wo {
                for ch in 0..c {
                    let at =
                        |dh: usize, dw: usize| ((b * h + 2 * oh + dh) * w + 2 * ow + dw) * c + ch;
                    let mut best = at(0, 0);
                    for (dh, dw) in [(0, 1), (1, 0), (1, 1)] {
                        if x[at(dh, dw)] > x[best] {
                            best = at(dh, dw);
                        }
                    }
                    y.push(x[best] as f64);
                    arg.push(best as u32);
                }
            }
        }
    }
    (y, arg)
}

/// CPU reference of [`maxpool2x2_backward`]: `dx` with `x_len` elements (`prev` is added when
/// accumulating).
pub fn reference_maxpool2x2_backward(
    dy: &[f32],
    argmax: &[u32],
    x_len: usize,
    prev: Option<&[f32]>,
) -> Vec<f64> {
    let mut dx: Vec<f64> = match prev {
        Some(p) => p.iter().map(|&v| v as f64).collect(),
        None => vec![0.0; x_len],
    };
    for (&g, &a) in dy.iter().zip(argmax) {
        dx[a as usize] += g as f64;
    }
    dx
}
