//! Training-step throughput: images per second for a full MoCo step (augmentation, query forward
//! and backward, key forward, EMA, optimiser update, enqueue) at batch 256 on the default encoder,
//! with the dispatches and submissions each step issues.
//!
//! `cargo bench --bench train [-- WIDTHS]`, e.g. `-- 32,64,128`.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use contrastive::data;
use contrastive::kernels::augment::{Augment, GpuImages};
use contrastive::kernels::optim::{Optimizer, Schedule};
use contrastive::methods::{Examples, Moco, MocoConfig};
use contrastive::nn::EncoderConfig;
use contrastive::optim::OptimConfig;
use contrastive::train::{self, TrainConfig};
use contrastive::{Arena, Gpu, Result};

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let widths: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|w| w.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 32, 64]);
    let split = data::embedded()?;
    let mut arena = Arena::for_gpu("data", &gpu);
    let images = GpuImages::upload(&gpu, &mut arena, &split.train)?;
    let batch = 256;
    let encoder = EncoderConfig {
        widths: widths.clone(),
        ..EncoderConfig::small(28, 28, 1)
    };
    let optim = OptimConfig {
        kind: Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
        },
        lr: 0.06,
        weight_decay: 5e-4,
        schedule: Schedule::Constant,
    };
    let mut moco = Moco::new(&gpu, MocoConfig::default(), &encoder, batch, &optim, 0)?;
    let stop = AtomicBool::new(false);
    let run = |moco: &mut Moco, steps: u64| -> Result<f64> {
        let cfg = TrainConfig {
            batch_size: batch,
            steps,
            seed: 0,
            augment: Augment::contrastive(),
            knn_every: 0,
            monitor_images: 0,
            progress: false,
        };
        let t = Instant::now();
        train::train(
            &gpu,
            moco,
            Examples::Images(&images),
            None,
            &cfg,
            None,
            None,
            &stop,
            |_| Ok(()),
        )?;
        Ok(t.elapsed().as_secs_f64())
    };
    run(&mut moco, 2)?; // pipelines compiled, arenas sized
    let before = gpu.counters();
    let steps = 8;
    let seconds = run(&mut moco, steps)?;
    let d = gpu.counters() - before;
    println!("adapter: {}", gpu.adapter);
    println!(
        "MoCo step, encoder widths {widths:?}, batch {batch}: {:.1} image pairs/s ({:.0} ms/step); \
         per step {} dispatches, {} submission(s)",
        (steps as usize * batch) as f64 / seconds,
        seconds / steps as f64 * 1e3,
        d.dispatches / steps,
        d.submissions as f64 / steps as f64,
    );
    Ok(())
}
