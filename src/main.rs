//! The `contrastive` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use contrastive::data::{self, Dataset};
use contrastive::kernels::augment::{Augment, GpuImages};
use contrastive::kernels::optim::{Optimizer, Schedule};
use contrastive::methods::{Moco, MocoConfig};
use contrastive::nn::EncoderConfig;
use contrastive::train::{self, TrainConfig};
use contrastive::{Arena, Error, Gpu, Result};

#[derive(Parser)]
#[command(name = "contrastive", version, about = "Contrastive self-supervised learning on any GPU (wgpu + WGSL)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a method and evaluate it against a random encoder and raw pixels.
    Train {
        #[command(subcommand)]
        method: MethodCmd,
    },
    /// List the GPU adapters wgpu can see (honours WGPU_BACKEND) and the one that would be used.
    Devices,
}

#[derive(Subcommand)]
enum MethodCmd {
    /// Momentum Contrast (MoCo v1/v2): EMA key encoder and a queue of negatives.
    Moco {
        #[command(flatten)]
        common: CommonArgs,
        /// Keys in the negative queue (K).
        #[arg(long, default_value_t = 4096)]
        queue: usize,
        /// EMA momentum of the key encoder, in [0, 1] (1 freezes it).
        #[arg(long, default_value_t = 0.99)]
        momentum: f32,
        /// Softmax temperature τ (> 0).
        #[arg(long, default_value_t = 0.1)]
        temperature: f32,
        /// Embedding dimension.
        #[arg(long, default_value_t = 128)]
        dim: usize,
        /// Use MoCo v1's linear head instead of v2's 2-layer MLP.
        #[arg(long)]
        linear_head: bool,
        /// BatchNorm groups in the key encoder (split-BN, the one-device shuffle-BN); must divide the batch.
        #[arg(long, default_value_t = 8)]
        split_bn: usize,
        /// Symmetric loss: both views serve as queries (mean of the two directions).
        #[arg(long)]
        symmetric: bool,
    },
}

#[derive(Args)]
struct CommonArgs {
    /// Dataset. Without --data-dir, fashion-mnist is the embedded 10,000-image test set (8,000 train / 2,000 held out).
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    data: Dataset,
    /// Directory with the dataset files (see scripts/fetch-data.sh).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use only the first N training images (0: all).
    #[arg(long, default_value_t = 0)]
    train_images: usize,
    /// Training epochs (ignored when --steps is given).
    #[arg(long, default_value_t = 12.0)]
    epochs: f32,
    /// Training steps (overrides --epochs).
    #[arg(long)]
    steps: Option<u64>,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Base learning rate (SGD, momentum 0.9).
    #[arg(long, default_value_t = 0.06)]
    lr: f32,
    /// Weight decay (not applied to biases and BatchNorm parameters).
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f32,
    /// Linear warm-up steps before the cosine schedule.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Seed for initialisation, batches and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Encoder stage widths, comma-separated (each stage after the first halves the resolution).
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    widths: Vec<usize>,
    /// Residual blocks per stage.
    #[arg(long, default_value_t = 0)]
    residual_blocks: usize,
    /// Run the kNN monitor every N steps (0: only the final evaluation).
    #[arg(long, default_value_t = 0)]
    knn_every: u64,
    /// Turn augmentation off (the views differ only by noise-free identity: for debugging).
    #[arg(long)]
    no_augment: bool,
    /// Run directory for metrics and the summary.
    #[arg(long, default_value = "runs/moco")]
    out: PathBuf,
    /// Overwrite a run directory that already holds a run.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn devices() -> Result<()> {
    let (_, adapters) = contrastive::gpu::list_adapters();
    for a in &adapters {
        println!("{}", contrastive::gpu::AdapterSummary::from(&a.get_info()));
    }
    let gpu = Gpu::new()?;
    println!("selected: {}", gpu.adapter);
    let l = &gpu.limits;
    println!(
        "limits: max buffer {} MiB, max storage binding {} MiB, workgroup memory {} KiB, invocations {}; timestamps {}",
        l.max_buffer_size >> 20,
        l.max_storage_buffer_binding_size >> 20,
        l.max_compute_workgroup_storage_size >> 10,
        l.max_compute_invocations_per_workgroup,
        if gpu.has_timestamps() { "yes" } else { "no" }
    );
    Ok(())
}

fn prepare_out(dir: &PathBuf, force: bool) -> Result<()> {
    if dir.join("metrics.jsonl").exists() && !force {
        return Err(Error::Config(format!(
            "{} already holds a run; pass --force to overwrite it or choose another --out",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

fn train_moco(c: CommonArgs, moco: MocoConfig) -> Result<()> {
    let gpu = Gpu::new()?;
    eprintln!("adapter: {}", gpu.adapter);
    let mut split = data::load(c.data, c.data_dir.as_deref())?;
    if c.train_images > 0 {
        split.train = split.train.take(c.train_images);
    }
    eprintln!("data: {}; training on {} images, evaluating on {}", split.origin, split.train.len(), split.test.len());
    let steps = c
        .steps
        .unwrap_or(((c.epochs as f64 * split.train.len() as f64) / c.batch_size.max(1) as f64).ceil() as u64);
    let cfg = TrainConfig {
        batch_size: c.batch_size,
        steps,
        seed: c.seed,
        augment: if c.no_augment { Augment::none() } else { Augment::contrastive() },
        knn_every: c.knn_every,
        monitor_images: split.test.len(),
        progress: !c.quiet,
    };
    train::validate(&cfg, split.train.len())?;
    moco.validate(c.batch_size)?;
    prepare_out(&c.out, c.force)?;

    let mut data_arena = Arena::for_gpu("datasets", &gpu);
    let train_images = GpuImages::upload(&gpu, &mut data_arena, &split.train)?;
    let test_images = GpuImages::upload(&gpu, &mut data_arena, &split.test)?;
    let enc = EncoderConfig {
        widths: c.widths.clone(),
        residual_blocks: c.residual_blocks,
        ..EncoderConfig::small(split.train.height, split.train.width, split.train.channels)
    };
    let schedule = Schedule::Cosine {
        warmup: c.warmup,
        total: steps,
        min_lr: 0.0,
    };
    let sgd = Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
    };
    let lr = c.lr * c.batch_size as f32 / 256.0;
    let mut method = Moco::new(&gpu, moco, &enc, c.batch_size, (sgd, lr, c.weight_decay, schedule), c.seed)?;
    let (encoder, params, _) = contrastive::methods::Method::backbone(&method);
    eprintln!(
        "encoder: {} parameters, {:.1} MFLOP per image forward; {} steps of batch {}",
        params.count(),
        encoder.flops_per_image() * 1e-6,
        steps,
        c.batch_size
    );

    let metrics_path = c.out.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
    let start = std::time::Instant::now();
    let lines = train::train(&gpu, &mut method, &split, &train_images, &test_images, &cfg, |line| {
        let json = serde_json::to_string(line).expect("log lines serialise");
        writeln!(metrics, "{json}").map_err(|e| Error::io(&metrics_path, e))
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let pairs_per_s = (steps * c.batch_size as u64) as f64 / elapsed;
    eprintln!("evaluating (features computed once, BatchNorm in eval mode)…");
    let evaluation = train::evaluate(&gpu, &method, &enc, &split, &train_images, &test_images, c.seed)?;
    println!("\n{evaluation}");
    println!(
        "training: {steps} steps in {elapsed:.1} s, {pairs_per_s:.1} image pairs/s on {}",
        gpu.adapter
    );
    let summary = serde_json::json!({
        "method": "moco",
        "adapter": gpu.adapter.to_string(),
        "data": split.origin,
        "steps": steps,
        "batch_size": c.batch_size,
        "seconds": elapsed,
        "image_pairs_per_s": pairs_per_s,
        "final_loss": lines.last().map(|l| l.loss),
        "evaluation": evaluation,
        "moco": method.config,
        "encoder": enc,
        "train": cfg,
    });
    let path = c.out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary).expect("summary serialises"))
        .map_err(|e| Error::io(&path, e))?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => devices(),
        Command::Train { method } => match method {
            MethodCmd::Moco {
                common,
                queue,
                momentum,
                temperature,
                dim,
                linear_head,
                split_bn,
                symmetric,
            } => train_moco(
                common,
                MocoConfig {
                    queue,
                    momentum,
                    temperature,
                    dim,
                    mlp: !linear_head,
                    split_bn,
                    symmetric,
                },
            ),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
