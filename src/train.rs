//! The training skeleton shared by every method: epochs of shuffled fixed-size batches, one
//! recorded step and one submission per batch, progress, the kNN monitor, and the final
//! evaluation table (trained encoder vs random encoder vs raw pixels).

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::autodiff::{Graph, Var};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::eval::{self, FeatureSet, Probe};
use crate::gpu::Gpu;
use crate::kernels::augment::{Augment, GpuImages};
use crate::memory::Arena;
use crate::methods::{Method, StepInput};
use crate::nn::EncoderConfig;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub steps: u64,
    pub seed: u64,
    pub augment: Augment,
    /// Run the kNN monitor every this many steps (0: only at the end).
    pub knn_every: u64,
    /// Images of the held-out set used by the kNN monitor during training (all at the end).
    pub monitor_images: usize,
    pub progress: bool,
}

/// One line of the training log.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    pub step: u64,
    pub epoch: f64,
    pub loss: f32,
    pub accuracy: f32,
    pub lr: f32,
    pub images_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn: Option<f64>,
}

/// Accuracy of one representation under both probes.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct ProbeResult {
    pub knn: f64,
    pub linear: f64,
}

/// The evaluation table: trained encoder beside a random one and raw pixels.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub trained: ProbeResult,
    pub random: ProbeResult,
    pub pixels: ProbeResult,
}

impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<22} {:>10} {:>14}", "representation", "kNN (%)", "linear (%)")?;
        for (name, r) in [
            ("trained encoder", self.trained),
            ("random encoder", self.random),
            ("raw pixels", self.pixels),
        ] {
            writeln!(f, "{name:<22} {:>10.2} {:>14.2}", r.knn * 100.0, r.linear * 100.0)?;
        }
        Ok(())
    }
}

/// Checks the batch against the data and the adapter before any work starts.
pub fn validate(cfg: &TrainConfig, train_len: usize) -> Result<()> {
    if cfg.batch_size == 0 {
        return Err(Error::Config("--batch-size must be at least 1".into()));
    }
    if cfg.batch_size > train_len {
        return Err(Error::Config(format!(
            "--batch-size {} is larger than the {train_len} training images",
            cfg.batch_size
        )));
    }
    if cfg.steps == 0 {
        return Err(Error::Config("nothing to do: 0 training steps".into()));
    }
    Ok(())
}

/// Draws the batches: each epoch a new seeded permutation, cut into full batches.
pub struct Batches {
    order: Vec<u32>,
    pos: usize,
    batch: usize,
    rng: rand_chacha::ChaCha8Rng,
}

impl Batches {
    pub fn new(len: usize, batch: usize, seed: u64) -> Batches {
        let mut b = Batches {
            order: (0..len as u32).collect(),
            pos: usize::MAX,
            batch,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        };
        b.pos = b.order.len();
        b
    }

    pub fn next_batch(&mut self) -> &[u32] {
        if self.pos + self.batch > self.order.len() {
            self.order.shuffle(&mut self.rng);
            self.pos = 0;
        }
        self.pos += self.batch;
        &self.order[self.pos - self.batch..self.pos]
    }
}

/// Probes one feature set pair with kNN and the linear probe.
pub fn probe(gpu: &Gpu, train: &FeatureSet, test: &FeatureSet) -> Result<ProbeResult> {
    Ok(ProbeResult {
        knn: eval::knn(gpu, train, test, 200, 0.1)?,
        linear: eval::linear_probe(train, test, &Probe::default()),
    })
}

/// The evaluation table for a trained method.
pub fn evaluate(
    gpu: &Gpu,
    method: &dyn Method,
    encoder_config: &EncoderConfig,
    data: &Split,
    train_images: &GpuImages,
    test_images: &GpuImages,
    seed: u64,
) -> Result<Evaluation> {
    let trained_f = |g: &mut Graph, x: Var| method.features(g, x);
    let f_train = eval::features(gpu, &trained_f, train_images, &data.train.labels)?;
    let f_test = eval::features(gpu, &trained_f, test_images, &data.test.labels)?;
    let trained = probe(gpu, &f_train, &f_test)?;

    let net = crate::methods::Network::new(gpu, encoder_config, &[], seed ^ 0xdead_beef)?;
    let random_f = eval::encoder_features(&net.encoder, &net.params, &net.buffers);
    let r_train = eval::features(gpu, &random_f, train_images, &data.train.labels)?;
    let r_test = eval::features(gpu, &random_f, test_images, &data.test.labels)?;
    let random = probe(gpu, &r_train, &r_test)?;

    let p_train = eval::pixels(gpu, train_images, &data.train.labels)?;
    let p_test = eval::pixels(gpu, test_images, &data.test.labels)?;
    let pixels = probe(gpu, &p_train, &p_test)?;
    Ok(Evaluation {
        trained,
        random,
        pixels,
    })
}

/// kNN accuracy of the method's current encoder on (a prefix of) the held-out set.
pub fn knn_monitor(
    gpu: &Gpu,
    method: &dyn Method,
    data: &Split,
    train_images: &GpuImages,
    test_images: &GpuImages,
) -> Result<f64> {
    let f = |g: &mut Graph, x: Var| method.features(g, x);
    let bank = eval::features(gpu, &f, train_images, &data.train.labels)?;
    let query = eval::features(gpu, &f, test_images, &data.test.labels)?;
    eval::knn(gpu, &bank, &query, 200, 0.1)
}

/// Runs `cfg.steps` training steps, calling `log` with every step's line.
pub fn train(
    gpu: &Gpu,
    method: &mut dyn Method,
    data: &Split,
    train_images: &GpuImages,
    monitor_images: &GpuImages,
    cfg: &TrainConfig,
    mut log: impl FnMut(&LogLine) -> Result<()>,
) -> Result<Vec<LogLine>> {
    validate(cfg, train_images.len)?;
    let mut arena = Arena::for_gpu("step", gpu);
    let mut batches = Batches::new(train_images.len, cfg.batch_size, cfg.seed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xa076_1d64);
    let bar = if cfg.progress {
        let bar = indicatif::ProgressBar::new(cfg.steps);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut lines = vec![];
    let mut images_per_s = 0.0;
    for step in 1..=cfg.steps {
        let t = Instant::now();
        let indices = batches.next_batch().to_vec();
        let out = method.record_step(StepInput {
            gpu,
            arena: &mut arena,
            images: train_images,
            indices: &indices,
            augment: &cfg.augment,
            rng: &mut rng,
            step,
        })?;
        let stats: Vec<f32> = gpu.read(out.stats.region)?;
        let rate = cfg.batch_size as f64 / t.elapsed().as_secs_f64();
        // Smoothed for display; the first step includes pipeline compilation.
        images_per_s = if step <= 2 { rate } else { 0.9 * images_per_s + 0.1 * rate };
        if !stats[0].is_finite() {
            bar.abandon();
            return Err(Error::NonFinite {
                step,
                op: format!("{} loss", method.name()),
            });
        }
        let knn = (cfg.knn_every > 0 && step % cfg.knn_every == 0)
            .then(|| knn_monitor(gpu, method, data, train_images, monitor_images))
            .transpose()?;
        let line = LogLine {
            step,
            epoch: (step * cfg.batch_size as u64) as f64 / train_images.len as f64,
            loss: stats[0],
            accuracy: stats[1],
            lr: out.lr,
            images_per_s,
            knn,
        };
        bar.set_message(format!(
            "loss {:.4}  acc {:5.1}%  {:.0} img/s{}",
            line.loss,
            line.accuracy * 100.0,
            images_per_s,
            knn.map_or(String::new(), |k| format!("  kNN {:.1}%", k * 100.0))
        ));
        bar.inc(1);
        log(&line)?;
        lines.push(line);
    }
    bar.finish();
    Ok(lines)
}
