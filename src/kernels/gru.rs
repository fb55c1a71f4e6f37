//! A GRU layer (`shaders/gru.wgsl`): CPC's autoregressive context network.
//!
//! PyTorch's formulation and gate order (r, u, n), with the input projections `gx = x·W_ihᵀ + b_ih`
//! for all steps done beforehand as one matmul, so the kernels only run the recurrence:
//! `r = σ(gx_r + h·W_rᵀ + b_r)`, `u = σ(gx_u + h·W_uᵀ + b_u)`, `n = tanh(gx_n + r ⊙ (h·W_nᵀ + b_n))`,
//! `h' = (1 − u) ⊙ n + u ⊙ h`, from a zero initial state. Sequences are `[B, T, ·]` row-major.
//!
//! The forward is one dispatch per step; it saves the previous state and the gates. The
//! backward is two dispatches per step in reverse ([`backward_steps`]); the recurrent weights'
//! gradients are then `dWᵀ = hprevᵀ·dgh`-style GEMMs over all steps at once (see the autodiff).

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;

const FORWARD_STEP: Kernel = kernel!("gru.wgsl", "forward_step", 6);
const BACKWARD_GATES: Kernel = kernel!("gru.wgsl", "backward_gates", 7);
const BACKWARD_HIDDEN: Kernel = kernel!("gru.wgsl", "backward_hidden", 4);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    steps: u32,
    hidden: u32,
    t: u32,
    accumulate: u32,
    _pad: [u32; 3],
}

/// `(B, T, H)` of a `[B, T, 3H]` input projection, checked against the weights `[3H, H]` and
/// bias `[3H]`.
pub fn dims(gx: &Tensor, w: &Tensor, b: &Tensor) -> Result<(usize, usize, usize)> {
    let bad = || {
        Error::shape(
            "gru",
            format!(
                "input projections {:?} must be [B, T, 3H] with weights {:?} [3H, H] and bias {:?} [3H]",
                gx.shape, w.shape, b.shape
            ),
        )
    };
    if gx.shape.rank() != 3 || w.shape.rank() != 2 {
        return Err(bad());
    }
    let (batch, steps, g3) = (gx.shape.dim(0), gx.shape.dim(1), gx.shape.dim(2));
    let hidden = w.shape.dim(1);
    if hidden == 0 || g3 != 3 * hidden || w.shape.dim(0) != g3 || b.numel() != g3 {
        return Err(bad());
    }
    Ok((batch, steps, hidden))
}

fn check_len(what: &str, t: &Tensor, want: usize) -> Result<()> {
    if t.numel() != want {
        return Err(Error::shape(
            "gru",
            format!("{what} {:?} must hold {want} values", t.shape),
        ));
    }
    Ok(())
}

fn params(batch: usize, steps: usize, hidden: usize, t: usize, accumulate: bool) -> Params {
    Params {
        batch: batch as u32,
        steps: steps as u32,
        hidden: hidden as u32,
        t: t as u32,
        accumulate: accumulate as u32,
        _pad: [0; 3],
    }
}

/// Runs the recurrence: `h [B, T, H]` the states after every step, `hprev [B, T, H]` the state
/// before it, `gates [B, T, 4H]` (r, u, n and `h·W_nᵀ + b_n`) for the backward.
pub fn forward(
    gpu: &Gpu,
    gx: &Tensor,
    w: &Tensor,
    b: &Tensor,
    h: &Tensor,
    hprev: &Tensor,
    gates: &Tensor,
) -> Result<()> {
    let (batch, steps, hidden) = dims(gx, w, b)?;
    let states = batch * steps * hidden;
    check_len("states", h, states)?;
    check_len("previous states", hprev, states)?;
    check_len("saved gates", gates, 4 * states)?;
    let regions = [
        gx.region,
        w.region,
        b.region,
        h.region,
        hprev.region,
        gates.region,
    ];
    for t in 0..steps {
        let p = params(batch, steps, hidden, t, false);
        gpu.dispatch(&FORWARD_STEP, &p, &regions, grid_1d(batch * hidden, 64))?;
    }
    Ok(())
}

/// Scratch the backward needs: `(dgh [B, T, 3H], carry [B, H], direct [B, H])` element counts.
pub fn backward_scratch(batch: usize, steps: usize, hidden: usize) -> [usize; 3] {
    [batch * steps * 3 * hidden, batch * hidden, batch * hidden]
}

/// Backpropagates `dh [B, T, H]` (the gradient of every output state) through time. Writes (or,
/// with `accumulate`, adds) the input projections' gradient `dgx [B, T, 3H]` and writes
/// `dgh [B, T, 3H]`, the gradient of `h·Wᵀ + b` at every step, from which the caller gets
/// `dW = dghᵀ·hprev` and `db = Σ dgh`.
#[allow(clippy::too_many_arguments)]
pub fn backward_steps(
    gpu: &Gpu,
    dh: &Tensor,
    w: &Tensor,
    b: &Tensor,
    hprev: &Tensor,
    gates: &Tensor,
    dgx: &Tensor,
    dgh: &Tensor,
    carry: &Tensor,
    direct: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let (batch, steps, hidden) = dims(dgx, w, b)?;
    let states = batch * steps * hidden;
    check_len("state gradient", dh, states)?;
    check_len("previous states", hprev, states)?;
    check_len("saved gates", gates, 4 * states)?;
    check_len("dgh", dgh, 3 * states)?;
    check_len("carry", carry, batch * hidden)?;
    check_len("direct", direct, batch * hidden)?;
    let grid = grid_1d(batch * hidden, 64);
    for t in (0..steps).rev() {
        let p = params(batch, steps, hidden, t, accumulate);
        let regions = [
            dh.region,
            carry.region,
            hprev.region,
            gates.region,
            dgx.region,
            dgh.region,
            direct.region,
        ];
        gpu.dispatch(&BACKWARD_GATES, &p, &regions, grid)?;
        if t > 0 {
            let regions = [dgh.region, w.region, direct.region, carry.region];
            gpu.dispatch(&BACKWARD_HIDDEN, &p, &regions, grid)?;
        }
    }
    Ok(())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// CPU reference of [`forward`] in f64: the states `[B, T, H]`.
pub fn reference(
    gx: &[f32],
    w: &[f32],
    b: &[f32],
    batch: usize,
    steps: usize,
    hidden: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * steps * hidden];
    for s in 0..batch {
        let mut h = vec![0.0f64; hidden];
        for t in 0..steps {
            let row = s * steps + t;
            let gh = |j: usize| -> f64 {
                b[j] as f64
                    + (0..hidden)
                        .map(|i| h[i] * w[j * hidden + i] as f64)
                        .sum::<f64>()
            };
            let next: Vec<f64> = (0..hidden)
                .map(|j| {
                    let x = |g: usize| gx[row * 3 * hidden + g * hidden + j] as f64;
                    let r = sigmoid(x(0) + gh(j));
                    let u = sigmoid(x(1) + gh(hidden + j));
                    let n = (x(2) + r * gh(2 * hidden + j)).tanh();
                    (1.0 - u) * n + u * h[j]
                })
                .collect();
            out[row * hidden..(row + 1) * hidden].copy_from_slice(&next);
            h = next;
        }
    }
    out
}
