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
            let flops = g.flops(BATCH, side, side, cin, cout);
            let (xn, wn, yn) = (x.numel() as f64, w.numel() as f64, y.numel() as f64);
            // Bytes each pass must move at least: its inputs once and its output once.
            b.run(&name("fwd"), flops, 4.0 * (xn + wn + yn), 2.0, || {
                conv::forward(gpu, &x, &w, Some(&bias), &y, &g, true)
            })?;
            let _ = wn;
        }
    }
    Ok(())
}
