//! The `contrastive` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use contrastive::data::{self, Dataset};
use contrastive::kernels::augment::{Augment, GpuImages};
use contrastive::kernels::optim::{Optimizer, Schedule};
use contrastive::kernels::mi::Estimator;
use contrastive::methods::cmc::Views;
use contrastive::methods::{Cmc, CmcConfig, Dim, DimConfig, Method, Moco, MocoConfig};
use contrastive::optim::OptimConfig;
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
    /// Deep InfoMax: global vector vs local feature map, JSD or NCE estimator.
    Dim {
        #[command(flatten)]
        common: CommonArgs,
        /// Mutual-information estimator.
        #[arg(long, value_enum, default_value = "jsd")]
        estimator: Estimator,
        /// Dimension of the shared space of the MI networks.
        #[arg(long, default_value_t = 64)]
        dim: usize,
        /// Encoder stage giving the local feature map (default: the one before the last).
        #[arg(long)]
        local_stage: Option<usize>,
    },
    /// Two-view invariance (CMC / SimCLR family): symmetric InfoNCE with in-batch negatives.
    Cmc {
        #[command(flatten)]
        common: CommonArgs,
        /// How the two views are made.
        #[arg(long, value_enum, default_value = "augment")]
        views: Views,
        /// Softmax temperature τ (> 0).
        #[arg(long, default_value_t = 0.2)]
        temperature: f32,
        /// Embedding dimension.
        #[arg(long, default_value_t = 128)]
        dim: usize,
        /// Memory bank of past embeddings used as extra negatives (0: none).
        #[arg(long, default_value_t = 0)]
        bank: usize,
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
    /// Optimiser [default: sgd (momentum 0.9) for moco and cmc, adam for dim].
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// Base learning rate for batch 256, scaled linearly with the batch size
    /// [default: 0.06 with sgd, 1e-3 with adam/adamw].
    #[arg(long)]
    lr: Option<f32>,
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
    /// Run directory for metrics, checkpoints and the summary [default: runs/<method>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite a run directory that already holds a run.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adam,
    Adamw,
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

type Build<'a> = Box<dyn FnOnce(&Gpu, &EncoderConfig, &OptimConfig, usize, u64) -> Result<Box<dyn Method>> + 'a>;

fn run(method: &str, c: CommonArgs, default_optimizer: OptimizerArg, config: serde_json::Value, build: Build<'_>) -> Result<()> {
    let gpu = Gpu::new()?;
    eprintln!("adapter: {}", gpu.adapter);
    let mut split = data::load(c.data, c.data_dir.as_deref())?;
    if c.train_images > 0 {
        split.train = split.train.take(c.train_images);
    }
    eprintln!(
        "data: {}; training on {} images, evaluating on {}",
        split.origin,
        split.train.len(),
        split.test.len()
    );
    let steps = c.steps.unwrap_or(
        ((c.epochs as f64 * split.train.len() as f64) / c.batch_size.max(1) as f64).ceil() as u64,
    );
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
    let out = c.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(method));
    prepare_out(&out, c.force)?;

    let mut data_arena = Arena::for_gpu("datasets", &gpu);
    let train_images = GpuImages::upload(&gpu, &mut data_arena, &split.train)?;
    let test_images = GpuImages::upload(&gpu, &mut data_arena, &split.test)?;
    let enc = EncoderConfig {
        widths: c.widths.clone(),
        residual_blocks: c.residual_blocks,
        ..EncoderConfig::small(split.train.height, split.train.width, split.train.channels)
    };
    let optimizer = c.optimizer.unwrap_or(default_optimizer);
    let (kind, default_lr) = match optimizer {
        OptimizerArg::Sgd => (Optimizer::Sgd { momentum: 0.9, nesterov: false }, 0.06),
        OptimizerArg::Adam | OptimizerArg::Adamw => (
            Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                decoupled: optimizer == OptimizerArg::Adamw,
            },
            1e-3,
        ),
    };
    let optim = OptimConfig {
        kind,
        lr: c.lr.unwrap_or(default_lr) * c.batch_size as f32 / 256.0,
        weight_decay: c.weight_decay,
        schedule: Schedule::Cosine {
            warmup: c.warmup,
            total: steps,
            min_lr: 0.0,
        },
    };
    let mut m = build(&gpu, &enc, &optim, c.batch_size, c.seed)?;
    let probe_enc = contrastive::methods::Network::new(&gpu, &enc, &[], 0)?;
    eprintln!(
        "encoder: {} parameters, {:.1} MFLOP per image forward; model with heads: {} parameters; {steps} steps of batch {}",
        probe_enc.params.count(),
        probe_enc.encoder.flops_per_image() * 1e-6,
        m.parameter_count(),
        c.batch_size
    );

    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
    let start = std::time::Instant::now();
    let lines = train::train(&gpu, m.as_mut(), &split, &train_images, &test_images, &cfg, |line| {
        let json = serde_json::to_string(line).expect("log lines serialise");
        writeln!(metrics, "{json}").map_err(|e| Error::io(&metrics_path, e))
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let per_s = (steps * c.batch_size as u64) as f64 / elapsed;
    eprintln!("evaluating (features computed once, BatchNorm in eval mode)…");
    let evaluation = train::evaluate(&gpu, m.as_ref(), &enc, &split, &train_images, &test_images, c.seed)?;
    println!("\n{evaluation}");
    println!("training: {steps} steps in {elapsed:.1} s, {per_s:.1} images/s (each with its views) on {}", gpu.adapter);
    let summary = serde_json::json!({
        "method": method,
        "adapter": gpu.adapter.to_string(),
        "data": split.origin,
        "steps": steps,
        "batch_size": c.batch_size,
        "seconds": elapsed,
        "images_per_s": per_s,
        "final_loss": lines.last().map(|l| l.loss),
        "evaluation": evaluation,
        "config": config,
        "encoder": enc,
        "train": cfg,
    });
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary).expect("summary serialises"))
        .map_err(|e| Error::io(&path, e))?;
    Ok(())
}

fn train_command(cmd: MethodCmd) -> Result<()> {
    match cmd {
        MethodCmd::Moco { common, queue, momentum, temperature, dim, linear_head, split_bn, symmetric } => {
            let config = MocoConfig { queue, momentum, temperature, dim, mlp: !linear_head, split_bn, symmetric };
            config.validate(common.batch_size)?;
            let json = serde_json::to_value(&config).expect("config serialises");
            run("moco", common, OptimizerArg::Sgd, json, Box::new(move |gpu, enc, opt, batch, seed| {
                Ok(Box::new(Moco::new(gpu, config, enc, batch, opt, seed)?) as Box<dyn Method>)
            }))
        }
        MethodCmd::Dim { common, estimator, dim, local_stage } => {
            let config = DimConfig { estimator, dim, local_stage };
            let json = serde_json::to_value(&config).expect("config serialises");
            run("dim", common, OptimizerArg::Adam, json, Box::new(move |gpu, enc, opt, _, seed| {
                Ok(Box::new(Dim::new(gpu, config, enc, opt, seed)?) as Box<dyn Method>)
            }))
        }
        MethodCmd::Cmc { common, views, temperature, dim, bank } => {
            let config = CmcConfig { views, temperature, dim, bank };
            let json = serde_json::to_value(&config).expect("config serialises");
            run("cmc", common, OptimizerArg::Sgd, json, Box::new(move |gpu, enc, opt, batch, seed| {
                Ok(Box::new(Cmc::new(gpu, config, enc, batch, opt, seed)?) as Box<dyn Method>)
            }))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => devices(),
        Command::Train { method } => train_command(method),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
