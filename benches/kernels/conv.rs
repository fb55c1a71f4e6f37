//! Convolution passes on batch-256 training shapes (3×3 kernels, padding 1, stride 1 and 2).

use contrastive::kernels::conv::{self, Conv2d};
use contrastive::{Arena, Result};

use crate::harness::Bench;

/// (input channels, output channels, input side) of the layers of a small MNIST-sized CNN.
const LAYERS: [(usize, usize, usize); 3] = [(1, 32, 28), (32, 64, 14), (64, 128, 7)];
const BATCH: usize = 256;

pub fn run(b: &mut Bench) -> Result<()> {
    let gpu = b.gpu;
    for stride in [1, 2] {
        for (cin, cout, side) in LAYERS {
            let g = Conv2d {
                kh: 3,
                kw: 3,
                stride: (stride, stride),
                pad: (1, 1),
            };
            let (ho, wo) = g.out_hw(side, side)?;
            let name = |pass: &str| format!("conv {pass} {cin}->{cout} {side}x{side} s{stride}");
            if !["fwd", "dx", "dw"].iter().any(|p| b.wants(&name(p))) {
                continue;
            }
            let mut arena = Arena::for_gpu("bench", gpu);
            let x = arena.tensor(gpu, [BATCH, side, side, cin])?;
            let w = arena.tensor(gpu, [cout, 3, 3, cin])?;
            let bias = arena.tensor(gpu, [cout])?;
            let y = arena.tensor(gpu, [BATCH, ho, wo, cout])?;
            let scratch = arena.tensor(
                gpu,
                [g.weight_grad_scratch(BATCH, side, side, cin, cout).max(1)],
            )?;
            let flops = g.flops(BATCH, side, side, cin, cout);
            // Bytes each pass must move at least: its operands once and its result once (the same
            // three tensors for all passes).
            let bytes = 4.0 * (x.numel() + w.numel() + y.numel()) as f64;
            b.run(&name("fwd"), flops, bytes, 2.0, || {
                conv::forward(gpu, &x, &w, Some(&bias), &y, &g, true)
            })?;
            b.run(&name("dx"), flops, bytes, 2.0, || {
                conv::backward_input(gpu, &y, &w, &x, &g, false)
            })?;
            b.run(&name("dw"), flops, bytes, 2.0, || {
                conv::backward_weight(gpu, &x, &y, &w, Some(&scratch), &g, false)
            })?;
        }
    }
    Ok(())
}
