//! Deep InfoMax's local–global mutual-information estimators (`shaders/mi.wgsl`): JSD and NCE over
//! a score matrix `[N, N·L]` (global vector of image n against location i of image n').

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;

const JSD: crate::gpu::Kernel = kernel!("mi.wgsl", "jsd", 3);
const NCE_PARTIAL: crate::gpu::Kernel = kernel!("mi.wgsl", "nce_partial", 3);
const NCE_ROWS: crate::gpu::Kernel = kernel!("mi.wgsl", "nce_rows", 3);
const NCE_GRAD: crate::gpu::Kernel = kernel!("mi.wgsl", "nce_grad", 3);

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    /// Jensen–Shannon: softplus(−u) on positives, softplus(u) on negatives.
    Jsd,
    /// InfoNCE: each (image, location) against all other images' locations.
    Nce,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    locs: u32,
    accumulate: u32,
    parts: u32,
}

/// Most threads per score row: enough to spread a DIM row (N·L = 50176 scores at batch 256 on
/// 14×14 maps) over 65536 threads.
const ROW_PARTS: usize = 256;

fn row_parts(n: usize, locs: usize) -> usize {
    (n * locs).min(ROW_PARTS)
}

/// Words of `loss` each estimator needs: JSD one per thread; NCE two per (image, location), two
/// per partial sum and two per image (the layout is in the shader).
pub fn loss_len(est: Estimator, n: usize, locs: usize) -> usize {
    match est {
        Estimator::Jsd => n * row_parts(n, locs),
        Estimator::Nce => 2 * n * locs + 2 * n * row_parts(n, locs) + 2 * n,
    }
}

/// How many leading words of `loss` sum to the loss: all of them for JSD, the per-row losses
/// (`n·locs`; the log-sum-exps follow) for NCE.
pub fn loss_terms(est: Estimator, n: usize, locs: usize) -> usize {
    match est {
        Estimator::Jsd => loss_len(est, n, locs),
        Estimator::Nce => n * locs,
    }
}

/// Writes the loss terms (the first [`loss_terms`] words of `loss` sum to the loss) and
/// `dscores` (+)= dloss/dscores.
pub fn estimate(
    gpu: &Gpu,
    est: Estimator,
    scores: &Tensor,
    locs: usize,
    loss: &Tensor,
    dscores: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let (n, cols) = scores.shape.rows_cols();
    if locs == 0
        || cols != n * locs
        || dscores.numel() != scores.numel()
        || loss.numel() != loss_len(est, n, locs)
    {
        return Err(Error::shape(
            "mutual information",
            format!(
                "scores {:?} with {locs} locations per image, loss {:?}, gradient {:?}",
                scores.shape, loss.shape, dscores.shape
            ),
        ));
    }
    let params = Params {
        n: n as u32,
        locs: locs as u32,
        accumulate: accumulate as u32,
        parts: row_parts(n, locs) as u32,
    };
    let bufs = [scores.region, loss.region, dscores.region];
    match est {
        Estimator::Jsd => {
            gpu.dispatch(&JSD, &params, &bufs, grid_1d(n * params.parts as usize, 64))
        }
        Estimator::Nce => {
            gpu.dispatch(
                &NCE_PARTIAL,
                &params,
                &bufs,
                grid_1d(n * params.parts as usize, 64),
            )?;
            gpu.dispatch(&NCE_ROWS, &params, &bufs, [n.div_ceil(64) as u32, 1, 1])?;
            gpu.dispatch(&NCE_GRAD, &params, &bufs, grid_1d(scores.numel(), 64))
        }
    }
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// f64 reference: (loss, dloss/dscores).
pub fn reference(est: Estimator, scores: &[f32], n: usize, locs: usize) -> (f64, Vec<f64>) {
    let cols = n * locs;
    let u = |r: usize, j: usize| scores[r * cols + j] as f64;
    let mut grad = vec![0.0; n * cols];
    let mut loss = 0.0;
    match est {
        Estimator::Jsd => {
            let (np, nn) = (cols as f64, (cols * (n - 1)).max(1) as f64);
            for r in 0..n {
                for j in 0..cols {
                    let x = u(r, j);
                    if j / locs == r {
                        loss += softplus(-x) / np;
                        grad[r * cols + j] = -1.0 / (1.0 + x.exp()) / np;
                    } else {
                        loss += softplus(x) / nn;
                        grad[r * cols + j] = 1.0 / (1.0 + (-x).exp()) / nn;
                    }
                }
            }
        }
        Estimator::Nce => {
            let rows = (n * locs) as f64;
            for r in 0..n {
                for i in 0..locs {
                    let pos = r * locs + i;
                    let members: Vec<usize> =
                        (0..cols).filter(|&j| j == pos || j / locs != r).collect();
                    let m = members.iter().map(|&j| u(r, j)).fold(f64::MIN, f64::max);
                    let lse = m + members
                        .iter()
                        .map(|&j| (u(r, j) - m).exp())
                        .sum::<f64>()
                        .ln();
                    loss += (lse - u(r, pos)) / rows;
                    for &j in &members {
                        grad[r * cols + j] +=
                            ((u(r, j) - lse).exp() - (j == pos) as u8 as f64) / rows;
                    }
                }
            }
        }
    }
    (loss, grad)
}
