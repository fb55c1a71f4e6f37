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
