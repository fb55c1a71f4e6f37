//! A GRU layer (`shaders/gru.wgsl` and the matmul kernels): CPC's autoregressive context network.
//!
//! PyTorch's formulation and gate order (r, u, n), with the input projections `gx = x·W_ihᵀ + b_ih`
//! for all steps done beforehand as one matmul: `r = σ(gx_r + gh_r)`, `u = σ(gx_u + gh_u)`,
//! `n = tanh(gx_n + r ⊙ gh_n)`, `h' = (1 − u) ⊙ n + u ⊙ h` with `gh = h·W_hhᵀ + b_hh`, from a zero
//! initial state. Sequences are `[B, T, ·]` row-major.
//!
//! Each step is a GEMM for `gh` (the register-tiled matmul, fast where a per-element dot product
//! is not — on llvmpipe every storage load is a per-lane loop) and one gates kernel; the state
//! ping-pongs between two `[B, H]` tensors. The backward walks the steps in reverse: the gates
//! kernel gives the step's `dgh`, and one accumulating GEMM `dgh·W_hh` carries the gradient into
//! the previous step. The recurrent weights' gradients are then one GEMM over all steps at once
//! (`dW = dghᵀ·hprev`, see the autodiff).

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};
use crate::kernel;
use crate::kernels::matmul::{self, Matmul, Trans};
use crate::memory::Tensor;

use super::grid_1d;

const FORWARD_GATES: Kernel = kernel!("gru.wgsl", "forward_gates", 7);
const BACKWARD_GATES: Kernel = kernel!("gru.wgsl", "backward_gates", 7);

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

/// Shapes of the forward's scratch: two states `[B, H]` (ping-pong) and the step's `gh [B, 3H]`.
pub fn forward_scratch(batch: usize, hidden: usize) -> [[usize; 2]; 3] {
    [[batch, hidden], [batch, hidden], [batch, 3 * hidden]]
}

/// Runs the recurrence: `out [B, T, H]` the states after every step, `hprev [B, T, H]` the state
/// before it, `gates [B, T, 4H]` (r, u, n and `gh_n`) for the backward. `scratch` as
/// [`forward_scratch`] says.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    gpu: &Gpu,
    gx: &Tensor,
    w: &Tensor,
    b: &Tensor,
    out: &Tensor,
    hprev: &Tensor,
    gates: &Tensor,
    scratch: &[Tensor; 3],
) -> Result<()> {
    let (batch, steps, hidden) = dims(gx, w, b)?;
    let states = batch * steps * hidden;
    check_len("states", out, states)?;
    check_len("previous states", hprev, states)?;
    check_len("saved gates", gates, 4 * states)?;
    let [s0, s1, gh] = scratch;
    check_len("state scratch", s0, batch * hidden)?;
    check_len("state scratch", s1, batch * hidden)?;
    check_len("gh scratch", gh, 3 * batch * hidden)?;
    let spec = Matmul {
        trans: Trans::NT,
        bias: Some(b),
        ..Default::default()
    };
    for t in 0..steps {
        let (prev, next) = if t % 2 == 0 { (s1, s0) } else { (s0, s1) };
        // Step 0 starts from h = 0, where gh is the bias alone.
        let gh_t = if t == 0 {
            b.region
        } else {
            matmul::matmul(gpu, prev, w, gh, &spec)?;
            gh.region
        };
        let p = params(batch, steps, hidden, t, false);
        let regions = [
            gx.region,
            gh_t,
            prev.region,
            next.region,
            out.region,
            hprev.region,
            gates.region,
        ];
        gpu.dispatch(&FORWARD_GATES, &p, &regions, grid_1d(batch * hidden, 64))?;
    }
    Ok(())
}

/// Shapes of the backward's scratch: `dgh [B·T, 3H]` (every step's gradient of `h·Wᵀ + b`, from
/// which the caller gets `dW = dghᵀ·hprev` and `db = Σ dgh`), the carry `[B, H]` and the step's
/// `dgh [B, 3H]`.
pub fn backward_scratch(batch: usize, steps: usize, hidden: usize) -> [[usize; 2]; 3] {
    [
        [batch * steps, 3 * hidden],
        [batch, hidden],
        [batch, 3 * hidden],
    ]
}

/// Backpropagates `dh [B, T, H]` (the gradient of every output state) through time. Writes (or,
/// with `accumulate`, adds) the input projections' gradient `dgx [B, T, 3H]` and fills
/// `scratch[0]` with every step's `dgh` (see [`backward_scratch`]).
#[allow(clippy::too_many_arguments)]
pub fn backward_steps(
    gpu: &Gpu,
    dh: &Tensor,
    w: &Tensor,
    b: &Tensor,
    hprev: &Tensor,
    gates: &Tensor,
    dgx: &Tensor,
    scratch: &[Tensor; 3],
    accumulate: bool,
) -> Result<()> {
    let (batch, steps, hidden) = dims(dgx, w, b)?;
    let states = batch * steps * hidden;
    check_len("state gradient", dh, states)?;
    check_len("previous states", hprev, states)?;
    check_len("saved gates", gates, 4 * states)?;
    let [dgh, carry, dgh_t] = scratch;
    check_len("dgh", dgh, 3 * states)?;
    check_len("carry", carry, batch * hidden)?;
    check_len("step dgh", dgh_t, 3 * batch * hidden)?;
    let spec = Matmul {
        accumulate: true,
        ..Default::default()
    };
    for t in (0..steps).rev() {
        let p = params(batch, steps, hidden, t, accumulate);
        let regions = [
            dh.region,
            carry.region,
            hprev.region,
            gates.region,
            dgx.region,
            dgh.region,
            dgh_t.region,
        ];
        gpu.dispatch(&BACKWARD_GATES, &p, &regions, grid_1d(batch * hidden, 64))?;
        if t > 0 {
            matmul::matmul(gpu, dgh_t, w, carry, &spec)?;
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
