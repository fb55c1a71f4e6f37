//! Momentum (EMA) update of a key encoder from a query encoder (`shaders/ema.wgsl`):
//! `θ_k ← m·θ_k + (1 − m)·θ_q` over a whole parameter arena in one dispatch.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, Region};
use crate::kernel;

const EMA: Kernel = kernel!("ema.wgsl", "ema", 2);

const WG: usize = 256;
/// Elements per invocation aimed for; large arenas get more per invocation once the grid is full.
const PER_THREAD: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    threads: u32,
    m: f32,
    one_minus_m: f32,
}

/// `target ← momentum·target + (1 − momentum)·source`, elementwise over two regions of equal
/// length (typically the key and query encoders' parameter buffers, which share one layout).
/// `momentum = 1` leaves finite targets bit-identical; `momentum = 0` copies finite sources.
pub fn ema(gpu: &Gpu, target: Region, source: Region, momentum: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&momentum) {
        return Err(Error::Config(format!(
            "EMA momentum must be in [0, 1], got {momentum}"
        )));
    }
    if target.len != source.len {
        return Err(Error::shape(
            "ema",
            format!(
                "target has {} elements but source has {}",
                target.len, source.len
            ),
        ));
    }
    let groups = target
        .len
        .div_ceil(WG * PER_THREAD)
        .min(gpu.limits.max_compute_workgroups_per_dimension as usize);
    let params = Params {
        n: target.len as u32,
        threads: (groups * WG) as u32,
        m: momentum,
        one_minus_m: 1.0 - momentum,
    };
    gpu.dispatch(&EMA, &params, &[target, source], [groups as u32, 1, 1])
}

/// CPU reference of [`ema`], in f64 with the same f32 momentum.
pub fn reference(target: &[f32], source: &[f32], m: f32) -> Vec<f64> {
    let m = m as f64;
    target
        .iter()
        .zip(source)
        .map(|(&t, &s)| m * t as f64 + (1.0 - m) * s as f64)
        .collect()
}
