//! Reductions, softmax cross-entropy, L2 normalisation and the EMA update at training sizes.
//! All are memory-bound: GB/s counts each tensor read or written once.

use contrastive::kernels::reduce::{Axis, Reduce};
use contrastive::kernels::softmax_xent::Xent;
use contrastive::kernels::{ema, l2norm, reduce, softmax_xent};
use contrastive::{Arena, Result, Shape, Tensor};

use crate::harness::Bench;

const BUDGET_S: f64 = 1.0;

pub fn run(b: &mut Bench) -> Result<()> {
    let gpu = b.gpu;
    let mut arena = Arena::for_gpu("bench", gpu);
    let f = 4.0; // bytes per element

    // Wide logits rows (MoCo: batch 256, 4096 queue keys + 1 positive), bias gradients of
    // a conv layer's [N·H·W, C] map, a loss mean over many scores.
    for (rows, cols, axis) in [
        (256, 4097, Axis::Rows),
        (256, 4097, Axis::Cols),
        (50_176, 64, Axis::Rows),
        (50_176, 64, Axis::Cols),
        (200_000, 1, Axis::Cols),
    ] {
        let x = arena.tensor(gpu, [rows, cols])?;
        let n_out = if axis == Axis::Rows { rows } else { cols };
        let out = arena.tensor(gpu, [n_out])?;
        b.run(
            &format!("reduce sum {axis:?} {rows}x{cols}"),
            (rows * cols) as f64,
            f * (rows * cols + n_out) as f64,
            BUDGET_S,
            || reduce::reduce(gpu, &x, &out, Reduce::Sum, axis, false),
        )?;
    }

    for (n, m, mask) in [(256, 4097, false), (512, 512, true), (64, 65_537, false)] {
        let logits = arena.tensor(gpu, [n, m])?;
        let targets = Tensor {
            region: arena.alloc(gpu, n)?,
            shape: Shape::new(&[n]),
        };
        gpu.upload(targets.region, &vec![0u32; n])?;
        let loss = arena.tensor(gpu, [n])?;
        let grad = arena.tensor(gpu, [n, m])?;
        let correct = arena.tensor(gpu, [n])?;
        let spec = Xent {
            temperature: 0.07,
            mask_diagonal: mask,
        };
        b.run(
            &format!("softmax_xent {n}x{m}{}", if mask { " masked" } else { "" }),
            0.0,
            f * (2 * n * m + 3 * n) as f64,
            BUDGET_S,
            || softmax_xent::softmax_xent(gpu, &logits, &targets, &spec, &loss, &grad, &correct),
        )?;
    }

    for (rows, cols) in [(256, 128), (512, 2048), (50_000, 128)] {
        let x = arena.tensor(gpu, [rows, cols])?;
        let y = arena.tensor(gpu, [rows, cols])?;
        let dx = arena.tensor(gpu, [rows, cols])?;
        let norms = arena.tensor(gpu, [rows])?;
        let n = (rows * cols) as f64;
        b.run(
            &format!("l2norm forward {rows}x{cols}"),
            0.0,
            f * 2.0 * n,
            BUDGET_S,
            || l2norm::l2norm_forward(gpu, &x, &y, &norms),
        )?;
        b.run(
            &format!("l2norm backward {rows}x{cols}"),
            0.0,
            f * 3.0 * n,
            BUDGET_S,
            || l2norm::l2norm_backward(gpu, &y, &norms, &x, &dx, false),
        )?;
    }

    // A small projection-head model and a ResNet-18.
    for n in [1_000_000, 11_200_000] {
        let target = arena.alloc(gpu, n)?;
        let source = arena.alloc(gpu, n)?;
        b.run(
            &format!("ema {}M parameters", n as f64 / 1e6),
            2.0 * n as f64,
            f * 3.0 * n as f64,
            BUDGET_S,
            || ema::ema(gpu, target, source, 0.99),
        )?;
    }
    Ok(())
}
