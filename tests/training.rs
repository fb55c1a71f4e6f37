//! Short seeded training runs that must learn: the loss falls and the kNN accuracy of the trained
//! encoder beats the same encoder at initialisation by a documented margin.
//!
//! Margins (measured on llvmpipe, see the README): MoCo gains ≥ 3 kNN points over its own
//! initialisation after 80 steps of batch 64 on 2,048 embedded Fashion-MNIST images (measured
//! +5.1); the two-view method must show a falling loss and beat its initialisation; DIM must show
//! a falling loss and non-collapsed features (its short-run kNN is below its initialisation's).
//! CPC's per-offset contrastive accuracy must rise far above chance on JapaneseVowels.

mod common;

use std::sync::atomic::AtomicBool;

use contrastive::data;
use contrastive::data::{Augment, GpuImages};
use contrastive::eval;
use contrastive::kernels::mi::Estimator;
use contrastive::kernels::optim::{Optimizer, Schedule};
use contrastive::methods::{
    Cmc, CmcConfig, Cpc, CpcConfig, CpcInput, Dim, DimConfig, Examples, Method, Moco, MocoConfig,
};
use contrastive::nn::EncoderConfig;
use contrastive::optim::OptimConfig;
use contrastive::train::{self, TrainConfig};
use contrastive::{Arena, Gpu};

const BATCH: usize = 64;

struct Data {
    split: data::Split,
    train: GpuImages,
    test: GpuImages,
    _arena: Arena,
}

impl Data {
    fn eval(&self) -> eval::EvalData<'_> {
        eval::EvalData::Images {
            split: &self.split,
            train: &self.train,
            test: &self.test,
        }
    }
}

fn data(gpu: &Gpu) -> Data {
    let mut split = data::embedded().unwrap();
    split.train = split.train.take(2048);
    split.test = split.test.take(1000);
    let mut arena = Arena::for_gpu("data", gpu);
    let train = GpuImages::upload(gpu, &mut arena, &split.train).unwrap();
    let test = GpuImages::upload(gpu, &mut arena, &split.test).unwrap();
    Data {
        split,
        train,
        test,
        _arena: arena,
    }
}

fn encoder() -> EncoderConfig {
    EncoderConfig {
        widths: vec![8, 16, 32],
        ..EncoderConfig::small(28, 28, 1)
    }
}

/// The shared SGD settings on a cosine schedule with 5 warm-up steps.
fn sgd(lr: f32, steps: u64) -> OptimConfig {
    OptimConfig {
        schedule: Schedule::Cosine {
            warmup: 5,
            total: steps,
            min_lr: 0.0,
        },
        ..common::sgd(lr)
    }
}

/// Trains `steps` steps; returns (kNN before, kNN after, losses).
fn run(gpu: &Gpu, d: &Data, method: &mut dyn Method, steps: u64) -> (f64, f64, Vec<f32>) {
    let before = eval::knn_monitor(gpu, method, d.eval()).unwrap();
    let cfg = TrainConfig {
        batch_size: BATCH,
        steps,
        seed: 1,
        augment: Augment::contrastive(),
        knn_every: 0,
        monitor_images: d.test.len,
        progress: false,
    };
    let stop = AtomicBool::new(false);
    let out = train::train(
        gpu,
        method,
        Examples::Images(&d.train),
        None,
        &cfg,
        None,
        None,
        &stop,
        |_| Ok(()),
    )
    .unwrap();
    let after = eval::knn_monitor(gpu, method, d.eval()).unwrap();
    let losses = out.lines.iter().map(|l| l.loss).collect();
    (before, after, losses)
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

#[test]
fn moco_learns_on_a_small_slice() {
    let gpu = common::gpu();
    let d = data(&gpu);
    let steps = 80;
    let config = MocoConfig {
        queue: 512,
        dim: 32,
        ..MocoConfig::default()
    };
    let mut moco = Moco::new(&gpu, config, &encoder(), BATCH, &sgd(0.06, steps), 7).unwrap();
    let (before, after, losses) = run(&gpu, &d, &mut moco, steps);
    eprintln!("moco kNN {before:.4} -> {after:.4}; losses {losses:?}");
    // The loss rises while the queue (512 = 8 batches) fills with real keys, then falls.
    let peak = mean(&losses[8..20]);
    let end = mean(&losses[losses.len() - 10..]);
    assert!(end < peak - 0.1, "loss should fall: {peak} -> {end}");
    assert!(after > before + 0.03, "kNN {before} -> {after}");
}

#[test]
fn deep_infomax_and_two_view_learn() {
    let gpu = common::gpu();
    let d = data(&gpu);
    let steps = 60;
    let adam = OptimConfig {
        kind: Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decoupled: false,
        },
        ..sgd(1e-3, steps)
    };
    let dim_cfg = DimConfig {
        estimator: Estimator::Jsd,
        dim: 32,
        local_stage: None,
    };
    let mut dim = Dim::new(&gpu, dim_cfg, &encoder(), &adam, 7).unwrap();
    let (before, after, losses) = run(&gpu, &d, &mut dim, steps);
    eprintln!("dim kNN {before:.4} -> {after:.4}; losses {losses:?}");
    assert!(
        mean(&losses[losses.len() - 10..]) < mean(&losses[..10]),
        "DIM loss should fall"
    );
    // Measured: a short DIM run lowers kNN below the random initialisation's (49 -> 39 %); its
    // features stay far from collapse, which is what this short test can promise.
    assert!(after > 0.25, "DIM kNN {before} -> {after}");

    let cmc_cfg = CmcConfig {
        dim: 32,
        ..CmcConfig::default()
    };
    let mut cmc = Cmc::new(&gpu, cmc_cfg, &encoder(), BATCH, &sgd(0.06, steps), 7).unwrap();
    let (before, after, losses) = run(&gpu, &d, &mut cmc, steps);
    eprintln!("cmc kNN {before:.4} -> {after:.4}; losses {losses:?}");
    assert!(
        mean(&losses[losses.len() - 10..]) < mean(&losses[..10]) - 0.1,
        "two-view loss should fall"
    );
    assert!(after > before, "two-view kNN {before} -> {after}");
}

fn adam(lr: f32, steps: u64) -> OptimConfig {
    OptimConfig {
        kind: Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decoupled: false,
        },
        ..sgd(lr, steps)
    }
}

/// CPC on the embedded JapaneseVowels: every offset's contrastive accuracy must rise by 10 points
/// and end far above chance (1/32; measured: 7.6 → 29.2 %, 5.3 → 27.3 %, 11.8 → 25.9 % for
/// k = 1, 2, 3), and the first offset — the easiest — must end at least as high as the last.
#[test]
fn cpc_predicts_every_offset_well_above_chance() {
    let gpu = common::gpu();
    let split = data::sequence::load(data::SequenceData::JapaneseVowels, None).unwrap();
    let window = 10;
    let long: Vec<usize> = (0..split.train.len())
        .filter(|&i| split.train.frames(i) >= window)
        .collect();
    let train_set = split.train.subset(&long);
    let (batch, steps, k) = (32, 120, 3);
    let config = CpcConfig {
        input: CpcInput::Frames { features: 12 },
        offsets: k,
        dim: 32,
        context: 32,
        window,
        negatives: Default::default(),
    };
    let mut cpc = Cpc::new(&gpu, config, batch, &adam(1e-2, steps), 7).unwrap();
    let cfg = TrainConfig {
        batch_size: batch,
        steps,
        seed: 1,
        augment: Augment::none(),
        knn_every: 0,
        monitor_images: 0,
        progress: false,
    };
    let stop = AtomicBool::new(false);
    let out = train::train(
        &gpu,
        &mut cpc,
        Examples::Sequences(&train_set),
        None,
        &cfg,
        None,
        None,
        &stop,
        |_| Ok(()),
    )
    .unwrap();
    let acc = |lines: &[train::LogLine], j: usize| {
        lines.iter().map(|l| l.offsets[j][1]).sum::<f32>() / lines.len() as f32
    };
    let (first, last) = (&out.lines[..5], &out.lines[out.lines.len() - 10..]);
    let chance = 1.0 / batch as f32;
    for j in 0..k {
        eprintln!(
            "offset {}: accuracy {:.3} -> {:.3} (chance {chance:.3})",
            j + 1,
            acc(first, j),
            acc(last, j)
        );
        assert!(
            acc(first, j) < 4.0 * chance,
            "offset {} starts near chance",
            j + 1
        );
        assert!(acc(last, j) > 6.0 * chance, "offset {} learns", j + 1);
    }
    assert!(acc(last, 0) >= acc(last, k - 1));
    for l in &out.lines {
        assert_eq!(l.offsets.len(), k, "every offset is logged");
    }
}
