//! Convolution passes on batch-256 training shapes (3×3 kernels, padding 1, stride 1 and 2),
//! each next to a square matmul of about the same FLOPs timed in the same run, so that the ratio
//! holds even when other work shares the machine.

use contrastive::gpu::Kernel;
use contrastive::kernels::conv::{self, Conv2d};
use contrastive::kernels::matmul::{self, Matmul};
use contrastive::{Arena, Result};

use crate::harness::Bench;

/// (input channels, output channels, input side) of the layers of a small MNIST-sized CNN.
const LAYERS: [(usize, usize, usize); 3] = [(1, 32, 28), (32, 64, 14), (64, 128, 7)];
const BATCH: usize = 256;

/// Memory floors (see the shader): `y` written once, `dy` read once.
const WRITE_ONCE: Kernel = floor_kernel("write_once");
const READ_ONCE: Kernel = floor_kernel("read_once");
/// Invocations of a floor kernel, as in the convolution's direct kernels.
const FLOOR_INVOCATIONS: usize = 1024;

const fn floor_kernel(entry: &'static str) -> Kernel {
    Kernel {
        file: "floor.wgsl",
        source: include_str!("floor.wgsl"),
        entry,
        buffers: 2,
        words: 0,
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FloorParams {
    n4: u32,
    run: u32,
    _pad: [u32; 2],
}

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
            if !["fwd", "dx", "dw", "floor y", "floor dy"]
                .iter()
                .any(|p| b.wants(&name(p)))
            {
                continue;
            }
            let mut arena = Arena::for_gpu("bench", gpu);
            let x = arena.tensor(gpu, [BATCH, side, side, cin])?;
            let w = arena.tensor(gpu, [cout, 3, 3, cin])?;
            let bias = arena.tensor(gpu, [cout])?;
            let y = arena.tensor(gpu, [BATCH, ho, wo, cout])?;
            let scratch = arena.tensor(
                gpu,
                [g.weight_grad_scratch(gpu, BATCH, side, side, cin, cout)
                    .max(1)],
            )?;
            let flops = g.flops(BATCH, side, side, cin, cout);
            // The reference: a square matmul whose side (a multiple of 32, the register tile)
            // gives about the same FLOPs.
            let side_mm = (((flops / 2.0).cbrt() / 32.0).round() as usize).max(2) * 32;
            let ma = arena.upload(gpu, [side_mm, side_mm], &vec![0.5; side_mm * side_mm])?;
            let mb = arena.upload(gpu, [side_mm, side_mm], &vec![0.25; side_mm * side_mm])?;
            let mc = arena.tensor(gpu, [side_mm, side_mm])?;
            let mm_flops = 2.0 * (side_mm as f64).powi(3);
            // Bytes each pass must move at least: its operands once and its result once (the same
            // three tensors for all passes).
            let bytes = 4.0 * (x.numel() + w.numel() + y.numel()) as f64;
            let mut mm = || matmul::matmul(gpu, &ma, &mb, &mc, &Matmul::default());
            let mm_name = format!("  matmul NN {side_mm}^3");
            b.compare(
                &name("fwd"),
                flops,
                bytes,
                3.0,
                || conv::forward(gpu, &x, &w, Some(&bias), &y, &g, true),
                (&mm_name, mm_flops, &mut mm),
            )?;
            b.compare(
                &name("dx"),
                flops,
                bytes,
                3.0,
                || conv::backward_input(gpu, &y, &w, &x, &g, false),
                (&mm_name, mm_flops, &mut mm),
            )?;
            b.compare(
                &name("dw"),
                flops,
                bytes,
                3.0,
                || conv::backward_weight(gpu, &x, &y, &w, Some(&scratch), &g, false),
                (&mm_name, mm_flops, &mut mm),
            )?;
            // Counted at the convolution's FLOPs, a floor's ratio is the best any pass that
            // writes y (forward) or reads dy (both gradients) could reach with free arithmetic.
            let n4 = y.numel() / 4;
            let params = FloorParams {
                n4: n4 as u32,
                run: n4.div_ceil(FLOOR_INVOCATIONS) as u32,
                _pad: [0; 2],
            };
            let sink = arena.tensor(gpu, [4 * FLOOR_INVOCATIONS])?;
            for (pass, kernel) in [("floor y", &WRITE_ONCE), ("floor dy", &READ_ONCE)] {
                b.compare(
                    &name(pass),
                    flops,
                    4.0 * y.numel() as f64,
                    1.0,
                    || {
                        gpu.dispatch(
                            kernel,
                            &params,
                            &[y.region, sink.region],
                            [FLOOR_INVOCATIONS.div_ceil(64) as u32, 1, 1],
                        )
                    },
                    (&mm_name, mm_flops, &mut mm),
                )?;
            }
        }
    }
    Ok(())
}
