//! Shared test helpers. Every test opens its own device: tests run in parallel threads and each
//! device keeps its own command recorder.
#![allow(dead_code)]

use contrastive::kernels::optim::{Optimizer, Schedule};
use contrastive::nn::EncoderConfig;
use contrastive::optim::OptimConfig;
use contrastive::Gpu;
use rand::{Rng, SeedableRng};

/// The adapter for this test run. Fails (never skips) when none is found, with the error that says
/// how to get a software driver.
pub fn gpu() -> Gpu {
    match Gpu::new() {
        Ok(g) => g,
        Err(e) => panic!("tests need a GPU adapter: {e}"),
    }
}

/// The adapter, and the adapter again with every launch decision taken as for a discrete GPU
/// (kernel variants, invocation counts, reduction splits), so that CI on a CPU adapter also covers
/// the code paths that only GPUs take.
pub fn gpus() -> [Gpu; 2] {
    let mut shaped = gpu();
    shaped.set_kind(contrastive::gpu::AdapterKind::Gpu);
    [gpu(), shaped]
}

/// Uniform values in [-1, 1), seeded.
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Values in [-1, 1) kept at least `gap` away from zero (for kinks like ReLU's).
pub fn rand_vec_away_from_zero(n: usize, seed: u64, gap: f32) -> Vec<f32> {
    rand_vec(n, seed)
        .into_iter()
        .map(|x| {
            if x.abs() < gap {
                x.signum() * gap + x
            } else {
                x
            }
        })
        .collect()
}

/// Panics with the comparison's message.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64, eps: f64) {
    if let Err(e) = contrastive::kernels::check_close(got, want, tol, eps) {
        panic!("{what}: {e}");
    }
}

/// The two-stage encoder (widths 4 and 8) that the method tests train on 28×28 images.
pub fn tiny_encoder() -> EncoderConfig {
    EncoderConfig {
        widths: vec![4, 8],
        ..EncoderConfig::small(28, 28, 1)
    }
}

/// SGD with momentum 0.9 and weight decay 5e-4 at a constant learning rate.
pub fn sgd(lr: f32) -> OptimConfig {
    OptimConfig {
        kind: Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
        },
        lr,
        weight_decay: 5e-4,
        schedule: Schedule::Constant,
    }
}
