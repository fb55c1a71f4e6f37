//! Optimisers (`shaders/optim.wgsl`) and learning-rate schedules.
//!
//! Every optimiser step is ONE dispatch over a whole parameter arena: parameters, gradients, the
//! state buffers and a per-element weight-decay mask share one layout (mask 1 = decay, 0 = no decay,
//! for BN parameters and biases), so a model of any number of tensors updates in one launch.
//!
//! State is "fresh" at step `t = 1`: the kernel does not read the state buffers then, so they need
//! not be zeroed. This is exactly PyTorch's behaviour: its SGD sets the momentum buffer to the first
//! gradient, and its Adam starts from zero moments.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};

use super::batchnorm::{lanes, Lanes};
use super::grid_1d;

/// Both lane builds; the vec4 one runs when the arena length is a multiple of 4.
const STEP: Lanes = lanes!("optim.wgsl", "step", 6);
/// Elements (of the build's lane type) each thread updates.
const PER_THREAD: usize = 4;

/// An update rule; the learning rate and weight decay are given per step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// PyTorch's SGD without dampening: `g = grad + wd·mask·p`, `buf = momentum·buf + g`
    /// (`buf = g` at t = 1), `p -= lr·(nesterov ? g + momentum·buf : buf)`. Uses `state1` as the
    /// momentum buffer; `state2` is not touched (pass any region, e.g. `state1`).
    Sgd { momentum: f32, nesterov: bool },
    /// Adam with bias correction (PyTorch's formula: `p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)`).
    /// `decoupled: false` is Adam with L2 decay (`g = grad + wd·mask·p`); `true` is AdamW
    /// (`p -= lr·wd·mask·p` before the update, gradient untouched). `state1` = m, `state2` = v.
    Adam {
        beta1: f32,
        beta2: f32,
        eps: f32,
        decoupled: bool,
    },
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    kind: u32,
    nesterov: u32,
    decoupled: u32,
    first: u32,
    lr: f32,
    wd: f32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    guarded: u32,
    _pad: [u32; 2],
}

/// Adam's `(lr / (1 - β1^t), 1 / sqrt(1 - β2^t))`, in f64.
fn bias_correction(lr: f32, beta1: f32, beta2: f32, t: u32) -> (f64, f64) {
    let t = t as i32;
    (
        lr as f64 / (1.0 - (beta1 as f64).powi(t)),
        1.0 / (1.0 - (beta2 as f64).powi(t)).sqrt(),
    )
}

/// One step at learning rate `lr`, weight decay `wd` and step number `t` (1-based: Adam's bias
/// correction, and fresh state at t = 1). All regions have the same length except `state2` under
/// SGD, which is ignored. With `guard`, nothing is written when its word 0 is non-zero (the
/// non-finite guard, [`super::guard`]).
#[allow(clippy::too_many_arguments)]
pub fn step(
    gpu: &Gpu,
    opt: &Optimizer,
    params: Region,
    grads: Region,
    state1: Region,
    state2: Region,
    decay_mask: Region,
    lr: f32,
    wd: f32,
    t: u32,
    guard: Option<Region>,
) -> Result<()> {
    if t == 0 {
        return Err(Error::Config(
            "optimiser step numbers start at 1 (Adam's bias correction divides by 1 - beta^t)"
                .into(),
        ));
    }
    let n = params.len;
    let mut named = vec![("grads", grads), ("state1", state1), ("mask", decay_mask)];
    if matches!(opt, Optimizer::Adam { .. }) {
        named.push(("state2", state2));
    }
    for (name, r) in named {
        if r.len != n {
            return Err(Error::shape(
                "optimizer step",
                format!("{name} has {} elements but the parameters have {n}", r.len),
            ));
        }
    }
    let quad = n.is_multiple_of(4);
    let n_lanes = if quad { n / 4 } else { n };
    let mut p = Params {
        n: n_lanes as u32,
        kind: 0,
        nesterov: 0,
        decoupled: 0,
        first: (t == 1) as u32,
        lr,
        wd,
        momentum: 0.0,
        beta1: 0.0,
        beta2: 0.0,
        eps: 0.0,
        step_size: 0.0,
        inv_sqrt_bc2: 0.0,
        guarded: guard.is_some() as u32,
        _pad: [0; 2],
    };
    match *opt {
        Optimizer::Sgd { momentum, nesterov } => {
            p.momentum = momentum;
            p.nesterov = nesterov as u32;
        }
        Optimizer::Adam {
            beta1,
            beta2,
            eps,
            decoupled,
        } => {
            let (step_size, inv_sqrt_bc2) = bias_correction(lr, beta1, beta2, t);
            p.kind = 1;
            p.decoupled = decoupled as u32;
            p.beta1 = beta1;
            p.beta2 = beta2;
            p.eps = eps;
            p.step_size = step_size as f32;
            p.inv_sqrt_bc2 = inv_sqrt_bc2 as f32;
        }
    }
    // SGD's ignored state2 may have any length; bind state1 in its place so the vec4 build never
    // sees a binding that is not a whole number of vec4s.
    let state2 = match opt {
        Optimizer::Sgd { .. } => state1,
        Optimizer::Adam { .. } => state2,
    };
    // Unguarded, the flag binding is never read: any region will do.
    let guard = guard.map_or(params.slice(0, 0), |g| g.slice(0, 1));
    gpu.dispatch(
        STEP.pick(quad),
        &p,
        &[params, grads, state1, state2, decay_mask, guard],
        grid_1d(n_lanes.div_ceil(PER_THREAD), 256),
    )
}

/// CPU reference of [`step`] in f64, updating `params`, `state1` and `state2` in place (`state2`
/// may be empty for SGD).
#[allow(clippy::too_many_arguments)]
pub fn reference_step(
    opt: &Optimizer,
    params: &mut [f64],
    grads: &[f32],
    state1: &mut [f64],
    state2: &mut [f64],
    mask: &[f32],
    lr: f32,
    wd: f32,
    t: u32,
) {
    let (lr, wd) = (lr as f64, wd as f64);
    for i in 0..params.len() {
        let decay = wd * mask[i] as f64;
        let mut w = params[i];
        match *opt {
            Optimizer::Sgd { momentum, nesterov } => {
                let m = momentum as f64;
                let g = grads[i] as f64 + decay * w;
                let buf = if t == 1 { g } else { m * state1[i] + g };
                state1[i] = buf;
                w -= lr * if nesterov { g + m * buf } else { buf };
            }
            Optimizer::Adam {
                beta1,
                beta2,
                eps,
                decoupled,
            } => {
                let (b1, b2) = (beta1 as f64, beta2 as f64);
                let mut g = grads[i] as f64;
                if decoupled {
                    w *= 1.0 - lr * decay;
                } else {
                    g += decay * w;
                }
                let (m0, v0) = if t == 1 {
                    (0.0, 0.0)
                } else {
                    (state1[i], state2[i])
                };
                let m = b1 * m0 + (1.0 - b1) * g;
                let v = b2 * v0 + (1.0 - b2) * g * g;
                state1[i] = m;
                state2[i] = v;
                let bc1 = 1.0 - b1.powi(t as i32);
                let bc2 = 1.0 - b2.powi(t as i32);
                w -= lr / bc1 * m / (v.sqrt() / bc2.sqrt() + eps as f64);
            }
        }
        params[i] = w;
    }
}

/// Learning rate as a function of the (0-based) optimiser step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// `base` throughout.
    Constant,
    /// `base·gamma^(step / every)` (integer division; `every = 0` never decays).
    Step { every: u64, gamma: f32 },
    /// Linear warmup `base·(step + 1)/warmup` for steps `0..warmup` (so step 0 is ~0 and step
    /// `warmup - 1` is `base`), then a half cosine from `base` at step `warmup` to `min_lr` at step
    /// `total`, and `min_lr` after. With `total <= warmup` there is no cosine part: `min_lr` after
    /// the warmup.
    Cosine {
        warmup: u64,
        total: u64,
        min_lr: f32,
    },
}

impl Schedule {
    pub fn lr(&self, base: f32, step: u64) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => {
                let k = step.checked_div(every).unwrap_or(0);
                (base as f64 * (gamma as f64).powf(k as f64)) as f32
            }
            Schedule::Cosine {
                warmup,
                total,
                min_lr,
            } => {
                if step < warmup {
                    return (base as f64 * (step + 1) as f64 / warmup as f64) as f32;
                }
                let progress = if total > warmup {
                    ((step - warmup) as f64 / (total - warmup) as f64).min(1.0)
                } else {
                    1.0
                };
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                (min_lr as f64 + (base as f64 - min_lr as f64) * cos) as f32
            }
        }
    }
}
