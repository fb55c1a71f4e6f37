//! Matrix multiply: GFLOP/s (2·M·N·K) and GB/s (a, b and c each moved once) for the variant
//! `matmul` picks on this adapter. 1023³ cannot be read as vec4s, so on CPU adapters it measures
//! the scalar-load fallback.

use contrastive::kernels::matmul::{self, Matmul, Trans, Variant};
use contrastive::{Arena, Result};

use crate::harness::Bench;

pub fn run(b: &mut Bench) -> Result<()> {
    let gpu = b.gpu;
    let variant = Variant::for_adapter(gpu);
    println!("matmul variant: {variant:?}");
    let cases = [
        (Trans::NN, 256, 256, 256),
        (Trans::NN, 512, 512, 512),
        (Trans::NN, 1024, 1024, 1024),
        (Trans::NN, 2048, 2048, 2048),
        (Trans::NT, 256, 4096, 128),
        (Trans::NN, 1023, 1023, 1023),
    ];
    for (trans, m, n, k) in cases {
        let name = format!("matmul {trans:?} {m}x{n}x{k}");
        if !b.wants(&name) {
            continue;
        }
        let mut arena = Arena::for_gpu("bench", gpu);
        let (a_shape, b_shape) = match trans {
            Trans::NN => ([m, k], [k, n]),
            Trans::NT => ([m, k], [n, k]),
            Trans::TN => ([k, m], [k, n]),
        };
        let ta = arena.upload(gpu, a_shape, &vec![0.5; m * k])?;
        let tb = arena.upload(gpu, b_shape, &vec![0.25; k * n])?;
        let tc = arena.tensor(gpu, [m, n])?;
        let spec = Matmul {
            trans,
            ..Default::default()
        };
        let flops = 2.0 * (m * n * k) as f64;
        let bytes = 4.0 * (m * k + k * n + m * n) as f64;
        b.run(&name, flops, bytes, 3.0, || {
            matmul::matmul(gpu, &ta, &tb, &tc, &spec)
        })?;
    }
    Ok(())
}
