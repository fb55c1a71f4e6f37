//! BatchNorm forward (train and eval) and backward on ResNet-stage activations at batch 256, and
//! the arena-wide optimiser steps over one million parameters.
//!
//! Bytes count the big streams only: train forward reads x twice and writes y; eval reads x and
//! writes y; backward reads x and dy twice and writes dx; SGD moves p, grad, buf, mask and writes
//! p, buf; Adam moves p, grad, m, v, mask and writes p, m, v. FLOPs are rough per-element counts.

use contrastive::kernels::batchnorm::{self, BatchNorm};
use contrastive::kernels::optim::{self, Optimizer};
use contrastive::{Arena, Result};

use crate::harness::Bench;

pub fn run(b: &mut Bench) -> Result<()> {
    let gpu = b.gpu;
    let mut arena = Arena::for_gpu("bench", gpu);
    for (rows, cols) in [(256 * 28 * 28, 32), (256 * 14 * 14, 64), (256 * 7 * 7, 128)] {
        for groups in [1, 8] {
            let bn = BatchNorm {
                groups,
                ..BatchNorm::default()
            };
            let shape = format!("[{rows},{cols}] G={groups}");
            let names = ["train fwd", "eval fwd", "backward"].map(|k| format!("bn {k} {shape}"));
            if !names.iter().any(|name| b.wants(name)) {
                continue;
            }
            let n = (rows * cols) as f64;
            let x = arena.upload(gpu, [rows, cols], &pattern(rows * cols))?;
            let dy = arena.upload(gpu, [rows, cols], &pattern(rows * cols))?;
            let y = arena.tensor(gpu, [rows, cols])?;
            let gamma = arena.upload(gpu, [cols], &vec![1.0; cols])?;
            let beta = arena.tensor(gpu, [cols])?;
            let mean = arena.tensor(gpu, [groups, cols])?;
            let invstd = arena.tensor(gpu, [groups, cols])?;
            let rmean = arena.tensor(gpu, [cols])?;
            let rvar = arena.upload(gpu, [cols], &vec![1.0; cols])?;
            let dgamma = arena.tensor(gpu, [cols])?;
            let dbeta = arena.tensor(gpu, [cols])?;
            let scratch = arena.tensor(gpu, [batchnorm::scratch_len(rows, cols, groups)])?;
            b.run(&names[0], 7.0 * n, 12.0 * n, 1.0, || {
                batchnorm::forward_train(
                    gpu, &x, &gamma, &beta, &y, &mean, &invstd, &rmean, &rvar, &scratch, &bn,
                )
            })?;
            if groups == 1 {
                b.run(&names[1], 4.0 * n, 8.0 * n, 1.0, || {
                    batchnorm::forward_eval(gpu, &x, &gamma, &beta, &rmean, &rvar, &y, &bn)
                })?;
            }
            b.run(&names[2], 12.0 * n, 20.0 * n, 1.0, || {
                batchnorm::backward(
                    gpu, &x, &dy, &gamma, &beta, &mean, &invstd, &y, &dgamma, &dbeta, &scratch,
                    &bn, false,
                )
            })?;
            arena.reset();
        }
    }

    let opts = [
        (
            "sgd momentum 1M",
            Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            5.0,
            24.0,
        ),
        (
            "adamw 1M",
            Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                decoupled: true,
            },
            16.0,
            32.0,
        ),
    ];
    if !opts.iter().any(|o| b.wants(o.0)) {
        return Ok(());
    }
    let n = 1 << 20;
    let p = arena.upload(gpu, [n], &pattern(n))?.region;
    let g = arena.upload(gpu, [n], &pattern(n))?.region;
    let s1 = arena.tensor(gpu, [n])?.region;
    let s2 = arena.tensor(gpu, [n])?.region;
    let mask = arena.upload(gpu, [n], &vec![1.0; n])?.region;
    let nf = n as f64;
    for (name, opt, flops, bytes) in opts {
        // t = 2 so the state buffers are read as in every step after the first.
        b.run(name, flops * nf, bytes * nf, 1.0, || {
            optim::step(gpu, &opt, p, g, s1, s2, mask, 1e-3, 1e-4, 2, None)
        })?;
    }
    Ok(())
}

/// Deterministic values in [-1, 1) without a random generator.
fn pattern(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i.wrapping_mul(2654435761) % 2000) as f32) / 1000.0 - 1.0)
        .collect()
}
