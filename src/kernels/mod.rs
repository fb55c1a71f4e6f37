//! WGSL kernels, one module per family: the launcher, its CPU reference and its shapes checks sit
//! together. Launchers only record work (see [`crate::gpu::Gpu::dispatch`]); they never block.

pub mod augment;
pub mod batchnorm;
pub mod conv;
pub mod cpc;
pub mod elementwise;
pub mod ema;
pub mod gru;
pub mod guard;
pub mod l2norm;
pub mod matmul;
pub mod mi;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod softmax_xent;

use crate::error::{Error, Result};
use crate::gpu::tune::{Budget, Trial};

static NO_TIMESTAMPS: std::sync::Once = std::sync::Once::new();
use crate::gpu::Gpu;

/// Times the candidates of every shape `gpu`'s tuning wants (shapes asked for without a choice,
/// in [`crate::gpu::tune::Mode::Full`]; the others want none) and makes each fastest the choice. Returns every measurement. Adapters
/// without timestamp queries keep the heuristics: CPU timers around a submission would measure
/// the driver as much as the kernel.
pub fn tune(gpu: &Gpu, budget: Budget) -> Result<Vec<Trial>> {
    let wanted = gpu.tuning().take_wanted();
    if wanted.is_empty() {
        return Ok(vec![]);
    }
    if !gpu.has_timestamps() {
        NO_TIMESTAMPS.call_once(|| {
            eprintln!(
                "tuning: {} has no timestamp queries; kernels are chosen by the heuristics",
                gpu.adapter
            )
        });
        return Ok(vec![]);
    }
    gpu.flush()?;
    let mut all = vec![];
    for (family, shape) in wanted {
        let trials = match family.as_str() {
            matmul::FAMILY => matmul::time(gpu, &shape, budget)?,
            conv::FAMILY => conv::time(gpu, &shape, budget)?,
            _ => {
                return Err(Error::Config(format!(
                    "no kernel family `{family}` to tune"
                )))
            }
        };
        if let Some(best) = trials.iter().find(|t| t.chosen) {
            gpu.tuning().set((family, shape), best.candidate.clone());
        }
        all.extend(trials);
    }
    Ok(all)
}

/// Workgroup counts for a 1-D launch of `n` threads in groups of `wg`, folded into a second
/// dimension when it exceeds the per-dimension limit. Kernels recover the index as
/// `gid.x + gid.y * num_workgroups.x * WG`.
pub fn grid_1d(n: usize, wg: u32) -> [u32; 3] {
    let groups = n.div_ceil(wg as usize) as u32;
    if groups <= 65535 {
        [groups, 1, 1]
    } else {
        [65535, groups.div_ceil(65535), 1]
    }
}

/// Compares GPU results with an f64 reference, element by element, with tolerance
/// `tol + |ref|·eps`. Returns a message naming the first bad index.
pub fn check_close(got: &[f32], want: &[f64], tol: f64, eps: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "length {} but the reference has {}",
            got.len(),
            want.len()
        ));
    }
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let bound = tol + w.abs() * eps;
        // NaN fails too.
        if err.is_nan() || err > bound {
            return Err(format!(
                "index {i}: got {g}, reference {w}, error {err:.3e} > bound {bound:.3e}"
            ));
        }
        if err > worst.0 {
            worst = (err, i);
        }
    }
    Ok(())
}
