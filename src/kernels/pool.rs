//! Pooling over NHWC tensors (`shaders/pool.wgsl`): global average pooling and 2×2 max pooling
//! (stride 2, odd trailing rows and columns dropped), forward and backward.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;

const AVG_FORWARD: Kernel = kernel!("pool.wgsl", "avg_forward", 2);
const AVG_BACKWARD: Kernel = kernel!("pool.wgsl", "avg_backward", 2);
const MAX_FORWARD: Kernel = kernel!("pool.wgsl", "max_forward", 3, words = 0b100);
const MAX_BACKWARD: Kernel = kernel!("pool.wgsl", "max_backward", 3, words = 0b100);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    h: u32,
    w: u32,
    c: u32,
    accumulate: u32,
    _pad: [u32; 3],
}

fn nhwc(op: &'static str, x: &Tensor) -> Result<[usize; 4]> {
    match *x.shape.dims() {
        [n, h, w, c] => Ok([n, h, w, c]),
        _ => Err(Error::shape(
            op,
            format!("input {:?} must be [N, H, W, C]", x.shape),
        )),
    }
}

fn params(n: usize, [_, h, w, c]: [usize; 4], accumulate: bool) -> Params {
    Params {
        n: n as u32,
        h: h as u32,
        w: w as u32,
        c: c as u32,
        accumulate: accumulate as u32,
        _pad: [0; 3],
    }
}

fn expect(op: &'static str, t: &Tensor, what: &str, dims: &[usize]) -> Result<()> {
    if t.numel() != dims.iter().product::<usize>() {
        return Err(Error::shape(
            op,
            format!("{what} {:?} should be {dims:?}", t.shape),
        ));
    }
    Ok(())
}

/// `y [N, C]` = mean of `x [N, H, W, C]` over H and W.
pub fn avgpool_global(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<()> {
    let d = nhwc("avg_pool_global", x)?;
    expect("avg_pool_global", y, "output", &[d[0], d[3]])?;
    gpu.dispatch(
        &AVG_FORWARD,
        &params(y.numel(), d, false),
        &[x.region, y.region],
        grid_1d(y.numel(), 256),
    )
}

/// `dx [N, H, W, C]` (+)= `dy [N, C]` / (H·W).
pub fn avgpool_global_backward(
    gpu: &Gpu,
    dy: &Tensor,
    dx: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let d = nhwc("avg_pool_global backward", dx)?;
    expect("avg_pool_global backward", dy, "gradient", &[d[0], d[3]])?;
    gpu.dispatch(
        &AVG_BACKWARD,
        &params(dx.numel(), d, accumulate),
        &[dx.region, dy.region],
        grid_1d(dx.numel(), 256),
    )
}

/// `y [N, H/2, W/2, C]`: 2×2 maxima; `argmax` (u32, one per output) records the winners.
pub fn maxpool2x2(gpu: &Gpu, x: &Tensor, y: &Tensor, argmax: &Tensor) -> Result<()> {
    let d = nhwc("max_pool_2x2", x)?;
    let out = [d[0], d[1] / 2, d[2] / 2, d[3]];
    expect("max_pool_2x2", y, "output", &out)?;
    expect("max_pool_2x2", argmax, "argmax", &out)?;
    gpu.dispatch(
        &MAX_FORWARD,
        &params(y.numel(), d, false),
        &[x.region, y.region, argmax.region],
        grid_1d(y.numel(), 256),
    )
}

/// `dx` (+)= `dy` routed to each window's maximum.
pub fn maxpool2x2_backward(
    gpu: &Gpu,
    dy: &Tensor,
    argmax: &Tensor,
    dx: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let d = nhwc("max_pool_2x2 backward", dx)?;
    let out = [d[0], d[1] / 2, d[2] / 2, d[3]];
    expect("max_pool_2x2 backward", dy, "gradient", &out)?;
    expect("max_pool_2x2 backward", argmax, "argmax", &out)?;
    gpu.dispatch(
        &MAX_BACKWARD,
        &params(dx.numel(), d, accumulate),
        &[dx.region, dy.region, argmax.region],
        grid_1d(dx.numel(), 256),
    )
}

/// f64 references: (global average [N, C], 2×2 max [N, H/2, W/2, C] with argmax).
pub fn reference_avg(x: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f64> {
    let mut y = vec![0.0; n * c];
    for b in 0..n {
        for k in 0..h * w {
            for ch in 0..c {
                y[b * c + ch] += x[(b * h * w + k) * c + ch] as f64 / (h * w) as f64;
            }
        }
    }
    y
}

pub fn reference_max(x: &[f32], [n, h, w, c]: [usize; 4]) -> (Vec<f64>, Vec<u32>) {
    let (oh, ow) = (h / 2, w / 2);
    let mut y = vec![];
    let mut arg = vec![];
    for b in 0..n {
        for i in 0..oh {
            for j in 0..ow {
                for ch in 0..c {
                    let mut best = (f32::NEG_INFINITY, 0usize);
                    for (di, dj) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let k = ((b * h + 2 * i + di) * w + 2 * j + dj) * c + ch;
                        if x[k] > best.0 || (di, dj) == (0, 0) {
                            best = (x[k], k);
                        }
                    }
                    y.push(best.0 as f64);
                    arg.push(best.1 as u32);
                }
            }
        }
    }
    (y, arg)
}
