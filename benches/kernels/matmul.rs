//! Matrix multiply: every candidate's ms, GFLOP/s (2·M·N·K) and GB/s (a, b and c each moved once)
//! per shape, with the one `choose` picks on this adapter marked. Square sizes, one that cannot
//! be read as vec4s (1023³), and the training shapes: MoCo's logits against the queue and the
//! conv layer 3×3, 32→64 channels at 14² over a batch of 256 as GEMMs (forward, input gradient,
//! weight gradient: the last one a long K that split-K is for).

use contrastive::kernels::matmul::{self, Dims, Matmul, Tiling, Trans};
use contrastive::{Arena, Result};

use crate::harness::Bench;

/// Seconds of timing per candidate and shape.
const BUDGET_S: f64 = 0.5;

pub fn run(b: &mut Bench) -> Result<()> {
    let gpu = b.gpu;
    let cases = [
        (Trans::NN, 256, 256, 256),
        (Trans::NN, 512, 512, 512),
        (Trans::NN, 1024, 1024, 1024),
        (Trans::NN, 2048, 2048, 2048),
        (Trans::NN, 4096, 4096, 4096),
        (Trans::NN, 1023, 1023, 1023),
        (Trans::NT, 256, 4096, 128),
        (Trans::NT, 256, 4096, 64),
        (Trans::NN, 50176, 64, 288),
        (Trans::NT, 50176, 288, 64),
        (Trans::TN, 64, 288, 50176),
    ];
    for (trans, m, n, k) in cases {
        let case = format!("matmul {trans:?} {m}x{n}x{k}");
        let dims = Dims { m, n, k };
        let chosen = matmul::choose(gpu, dims);
        // The largest product takes minutes per candidate where register tiles are the pick
        // (CPU adapters).
        let cpu = chosen.tiling == Tiling::Registers;
        if !b.wants(&case) || (cpu && m * n * k > 2048 * 2048 * 2048) {
            continue;
        }
        let candidates = matmul::candidates(gpu, dims);
        let mut arena = Arena::for_gpu("bench", gpu);
        let (a_shape, b_shape) = match trans {
            Trans::NN => ([m, k], [k, n]),
            Trans::NT => ([m, k], [n, k]),
            Trans::TN => ([k, m], [k, n]),
        };
        let ta = arena.upload(gpu, a_shape, &vec![0.5; m * k])?;
        let tb = arena.upload(gpu, b_shape, &vec![0.25; k * n])?;
        let tc = arena.tensor(gpu, [m, n])?;
        let room = candidates
            .iter()
            .map(|c| c.scratch(dims))
            .max()
            .unwrap_or(0);
        let scratch = arena.tensor(gpu, [room.max(1)])?;
        let flops = 2.0 * (m * n * k) as f64;
        let bytes = 4.0 * (m * k + k * n + m * n) as f64;
        for candidate in candidates {
            let spec = Matmul {
                trans,
                scratch: Some(&scratch),
                ..Default::default()
            };
            let mark = if candidate == chosen { " (chosen)" } else { "" };
            let name = format!("{case} {}{mark}", candidate.name());
            b.run(&name, flops, bytes, BUDGET_S, || {
                matmul::matmul_candidate(gpu, &ta, &tb, &tc, &spec, candidate)
            })?;
        }
    }
    Ok(())
}
