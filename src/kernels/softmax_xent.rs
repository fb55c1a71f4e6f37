//! Softmax cross-entropy with integer targets, forward and backward in one kernel
//! (`shaders/softmax_xent.wgsl`): the InfoNCE core shared by every method.
//!
//! Per row n of `[N, M]` logits, with `s = logits / T` and optionally the diagonal masked out:
//! `loss[n] = logsumexp(s_n) − s_n[target]`, `dlogits[n] = (softmax(s_n) − onehot(target)) / T`
//! (the gradient of `loss[n]` with respect to the raw logits; masked entries get 0), and
//! `correct[n] = 1` when the first maximum of the row sits at the target. The caller applies the
//! mean over rows and the upstream gradient.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;
use super::reduce::invocation_per_output;

const XENT_ROW: Kernel = kernel!("softmax_xent.wgsl", "xent_row", 5, words = 0b10);
const XENT_GROUP: Kernel = kernel!("softmax_xent.wgsl", "xent_group", 5, words = 0b10);

/// Loss settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Xent {
    /// Divides the logits; must be positive.
    pub temperature: f32,
    /// Exclude column n of row n (logit treated as −inf): the self-similarity in in-batch
    /// two-view losses. Needs M ≥ N and M ≥ 2.
    pub mask_diagonal: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    m: u32,
    mask_diagonal: u32,
    _pad: u32,
    inv_t: f32,
    _pad1: [u32; 3],
}

/// Loss, gradient and accuracy flag per row of `logits` (`[N, M]`, read with `rows_cols`).
///
/// `targets` holds N u32 words (bit patterns, e.g. uploaded with `gpu.upload(region, &[u32])`),
/// the positive column of each row. The kernel cannot fail, so a target ≥ M is clamped to M − 1;
/// a target on the masked diagonal gets loss +inf (its probability is 0). `loss` and `correct`
/// hold N values, `dlogits` as many as `logits`, and may be `logits` itself (in place).
pub fn softmax_xent(
    gpu: &Gpu,
    logits: &Tensor,
    targets: &Tensor,
    spec: &Xent,
    loss: &Tensor,
    dlogits: &Tensor,
    correct: &Tensor,
) -> Result<()> {
    if !(spec.temperature > 0.0 && spec.temperature.is_finite()) {
        return Err(Error::Config(format!(
            "softmax cross-entropy temperature must be positive and finite, got {}",
            spec.temperature
        )));
    }
    let (n, m) = logits.shape.rows_cols();
    let per_row = [("targets", targets), ("loss", loss), ("correct", correct)];
    for (what, t) in per_row {
        if t.numel() != n {
            return Err(Error::shape(
                "softmax_xent",
                format!(
                    "{what} {:?} must hold one value per row of logits {:?}",
                    t.shape, logits.shape
                ),
            ));
        }
    }
    if dlogits.numel() != logits.numel() {
        return Err(Error::shape(
            "softmax_xent",
            format!(
                "dlogits {:?} and logits {:?} differ in size",
                dlogits.shape, logits.shape
            ),
        ));
    }
    if spec.mask_diagonal && m < n.max(2) {
        return Err(Error::shape(
            "softmax_xent",
            format!(
                "masking the diagonal needs at least as many columns as rows (and 2), logits are {:?}",
                logits.shape
            ),
        ));
    }
    if m == 0 {
        return Ok(());
    }
    let params = Params {
        n: n as u32,
        m: m as u32,
        mask_diagonal: spec.mask_diagonal as u32,
        _pad: 0,
        inv_t: 1.0 / spec.temperature,
        _pad1: [0; 3],
    };
    let regions = [
        logits.region,
        targets.region,
        loss.region,
        dlogits.region,
        correct.region,
    ];
    if invocation_per_output(gpu, n, m) {
        gpu.dispatch(&XENT_ROW, &params, &regions, grid_1d(n, 64))
    } else {
        gpu.dispatch(&XENT_GROUP, &params, &regions, grid_1d(n, 1))
    }
}

/// CPU reference of [`softmax_xent`] in f64: `(loss, dlogits, correct)`, with the kernel's
/// clamping of out-of-range targets and first-maximum rule for `correct`.
pub fn reference(
    logits: &[f32],
    targets: &[u32],
    n: usize,
    m: usize,
    spec: &Xent,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let t_inv = 1.0 / spec.temperature as f64;
    let mut loss = Vec::with_capacity(n);
    let mut grad = Vec::with_capacity(n * m);
    let mut correct = Vec::with_capacity(n);
    for (r, row) in logits.chunks(m).take(n).enumerate() {
        let live = |j: usize| !(spec.mask_diagonal && j == r);
        let t = (targets[r] as usize).min(m - 1);
        let (arg, mx) = (0..m)
            .filter(|&j| live(j))
            .map(|j| (j, row[j] as f64))
            .fold((usize::MAX, f64::NEG_INFINITY), |best, c| {
                if c.1 > best.1 {
                    c
                } else {
                    best
                }
            });
        let z = |j: usize| (row[j] as f64 - mx) * t_inv;
        let sum: f64 = (0..m).filter(|&j| live(j)).map(|j| z(j).exp()).sum();
        loss.push(if live(t) {
            sum.ln() - z(t)
        } else {
            f64::INFINITY
        });
        correct.push(if arg == t { 1.0 } else { 0.0 });
        grad.extend((0..m).map(|j| {
            if live(j) {
                (z(j).exp() / sum - if j == t { 1.0 } else { 0.0 }) * t_inv
            } else {
                0.0
            }
        }));
    }
    (loss, grad, correct)
}
