//! Training-step throughput of every method: examples per second for a full step (augmentation
//! or cropping, forward, backward, optimiser update, method state), with the dispatches and
//! submissions each step issues.
//!
//! `cargo bench --bench train [-- METHOD] [WIDTHS]`: METHOD is one of moco, dim, cmc, cpc-frames
//! (JapaneseVowels), cpc-wave (synthetic 1-second waveforms; the speed does not depend on the
//! sound), cpc-patches (image patch grids); all of them by default. WIDTHS (e.g. `32,64,128`) sets
//! the image encoder's stage widths (default 16,32,64). Images: batch 256 (CPC: 64). With
//! `--profile`, one more step runs in profile mode and the GPU time per kernel is printed (needs
//! timestamp queries).

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use rand::{Rng, SeedableRng};

use contrastive::data::{self, SequenceData, SequenceSet};
use contrastive::data::{Augment, GpuImages};
use contrastive::kernels::cpc::PatchGrid;
use contrastive::kernels::optim::{Optimizer, Schedule};
use contrastive::methods::{
    Cmc, CmcConfig, Cpc, CpcConfig, CpcInput, Dim, DimConfig, Examples, Method, Moco, MocoConfig,
};
use contrastive::nn::EncoderConfig;
use contrastive::optim::OptimConfig;
use contrastive::train::{self, TrainConfig};
use contrastive::{Arena, Gpu, Result};

const METHODS: [&str; 6] = [
    "moco",
    "dim",
    "cmc",
    "cpc-frames",
    "cpc-wave",
    "cpc-patches",
];

fn optim(adam: bool) -> OptimConfig {
    OptimConfig {
        kind: if adam {
            Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                decoupled: false,
            }
        } else {
            Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
            }
        },
        lr: if adam { 1e-3 } else { 0.06 },
        weight_decay: 5e-4,
        schedule: Schedule::Constant,
    }
}

/// Times `steps` steps after two warm-up steps (pipelines compiled, arenas sized); prints the
/// rate and the per-step dispatch and submission counts.
fn time(
    gpu: &Gpu,
    name: &str,
    method: &mut dyn Method,
    examples: Examples,
    batch: usize,
    profile: bool,
) -> Result<()> {
    let stop = AtomicBool::new(false);
    let mut run = |steps: u64| -> Result<f64> {
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
        train::train(gpu, method, examples, None, &cfg, None, None, &stop, |_| {
            Ok(())
        })?;
        Ok(t.elapsed().as_secs_f64())
    };
    run(2)?;
    let before = gpu.counters();
    let steps = 8;
    let seconds = run(steps)?;
    let d = gpu.counters() - before;
    println!(
        "{name:<12} batch {batch:>3}: {:>7.1} examples/s ({:>5.0} ms/step), {} dispatches and {} submission(s) per step",
        (steps as usize * batch) as f64 / seconds,
        seconds / steps as f64 * 1e3,
        d.dispatches / steps,
        d.submissions as f64 / steps as f64,
    );
    if profile {
        gpu.begin_profile()?;
        run(1)?;
        let kernels = gpu.end_profile()?;
        let total: f64 = kernels.iter().map(|k| k.seconds).sum();
        println!(
            "  GPU time of one step by kernel (each dispatch timed alone): {:.0} ms",
            total * 1e3
        );
        for k in kernels.iter().take(PROFILE_ROWS) {
            println!(
                "  {:>5.1}% {:>8.1} ms {:>4}× {}",
                100.0 * k.seconds / total,
                k.seconds * 1e3,
                k.calls,
                k.kernel
            );
        }
    }
    Ok(())
}

/// Kernels listed by `--profile`, longest first.
const PROFILE_ROWS: usize = 15;

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let profile = std::env::args().any(|a| a == "--profile");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let widths: Vec<usize> = args
        .iter()
        .find(|a| a.contains(',') || a.parse::<usize>().is_ok())
        .map(|w| w.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 32, 64]);
    let wanted: Vec<&str> = METHODS
        .into_iter()
        .filter(|m| {
            args.iter()
                .all(|a| a.contains(',') || a.parse::<usize>().is_ok())
                || args.iter().any(|a| a == m)
        })
        .collect();
    let split = data::embedded()?;
    let mut arena = Arena::for_gpu("data", &gpu);
    let images = GpuImages::upload(&gpu, &mut arena, &split.train)?;
    let encoder = EncoderConfig {
        widths: widths.clone(),
        ..EncoderConfig::small(28, 28, 1)
    };
    let vowels = data::sequence::load(SequenceData::JapaneseVowels, None)?.train;
    let long: Vec<usize> = (0..vowels.len())
        .filter(|&i| vowels.frames(i) >= 10)
        .collect();
    let vowels = vowels.subset(&long);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let waves = SequenceSet {
        dim: 1,
        seqs: (0..256)
            .map(|_| (0..8000).map(|_| rng.random_range(-0.5..0.5)).collect())
            .collect(),
        labels: vec![0; 256],
        classes: vec!["noise".into()],
        sample_rate: Some(8000),
    };
    println!("adapter: {}; image encoder widths {widths:?}", gpu.adapter);
    let cpc = |input, window| CpcConfig {
        input,
        offsets: if window == 8000 { 12 } else { 3 },
        dim: 64,
        context: 64,
        window,
        negatives: Default::default(),
    };
    for name in wanted {
        let batch = if name.starts_with("cpc") { 64 } else { 256 };
        let examples = match name {
            "cpc-frames" => Examples::Sequences(&vowels),
            "cpc-wave" => Examples::Sequences(&waves),
            _ => Examples::Images(&images),
        };
        let (sgd, adam) = (optim(false), optim(true));
        let mut method: Box<dyn Method> = match name {
            "moco" => Box::new(Moco::new(
                &gpu,
                MocoConfig::default(),
                &encoder,
                batch,
                &sgd,
                0,
            )?),
            "dim" => Box::new(Dim::new(&gpu, DimConfig::default(), &encoder, &adam, 0)?),
            "cmc" => Box::new(Cmc::new(
                &gpu,
                CmcConfig::default(),
                &encoder,
                batch,
                &sgd,
                0,
            )?),
            "cpc-frames" => {
                let config = cpc(CpcInput::Frames { features: 12 }, 10);
                Box::new(Cpc::new(&gpu, config, batch, &adam, 0)?)
            }
            "cpc-wave" => Box::new(Cpc::new(
                &gpu,
                cpc(CpcInput::Waveform, 8000),
                batch,
                &adam,
                0,
            )?),
            _ => {
                let input = CpcInput::Patches {
                    grid: PatchGrid { size: 8, stride: 4 },
                    encoder: encoder.clone(),
                };
                Box::new(Cpc::new(&gpu, cpc(input, 0), batch, &adam, 0)?)
            }
        };
        time(&gpu, name, method.as_mut(), examples, batch, profile)?;
    }
    Ok(())
}
