//! The `contrastive` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use contrastive::checkpoint::{self, Checkpoint};
use contrastive::data::{self, Dataset, SequenceData, SequenceSet, SequenceSplit, Split};
use contrastive::kernels::augment::{Augment, GpuImages};
use contrastive::kernels::cpc::PatchGrid;
use contrastive::kernels::mi::Estimator;
use contrastive::kernels::optim::{Optimizer, Schedule};
use contrastive::methods::cmc::Views;
use contrastive::methods::{
    Cmc, CmcConfig, Cpc, CpcConfig, CpcInput, Dim, DimConfig, Examples, Method, Moco, MocoConfig,
    Network,
};
use contrastive::nn::EncoderConfig;
use contrastive::optim::OptimConfig;
use contrastive::train::{self, Checkpointing, TrainConfig};
use contrastive::{Arena, Error, Gpu, Result};

#[derive(Parser)]
#[command(
    name = "contrastive",
    version,
    about = "Contrastive self-supervised learning on any GPU (wgpu + WGSL)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a method, then evaluate it beside a random encoder and raw pixels.
    Train {
        #[command(subcommand)]
        method: Box<MethodCmd>,
    },
    /// Evaluate a checkpoint: kNN and linear probe beside a random encoder and raw pixels.
    Eval {
        /// A checkpoint file, or a run directory (its newest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
    },
    /// Summarise the runs found in a directory (one per sub-directory with a metrics.jsonl) and
    /// redraw their plots.
    Runs {
        #[arg(default_value = "runs")]
        dir: PathBuf,
    },
    /// List the GPU adapters wgpu can see (honours WGPU_BACKEND) and the one that would be used.
    Devices,
}

#[derive(Subcommand, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
        /// How the two views are made (channel-split needs colour images).
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
    /// Contrastive Predictive Coding: a GRU context predicts future encodings, on sequences
    /// (--data japanese-vowels), raw audio (--data wav) or image patch grids (image datasets).
    Cpc {
        #[command(flatten)]
        common: CommonArgs,
        /// Offsets predicted (K) [default: 12 for wav, 3 otherwise].
        #[arg(long)]
        offsets: Option<usize>,
        /// Encoding size z (frames and audio; for images it is the last encoder width).
        #[arg(long, default_value_t = 64)]
        dim: usize,
        /// GRU context size.
        #[arg(long, default_value_t = 64)]
        context: usize,
        /// Training crop: frames for japanese-vowels [default: 10], samples for wav [default:
        /// 8000, one second; the encoder down-samples 160×]; also wav's evaluation crop.
        #[arg(long)]
        window: Option<usize>,
        /// Image patch size (images).
        #[arg(long, default_value_t = 8)]
        patch: usize,
        /// Image patch stride (images; smaller than the patch: patches overlap).
        #[arg(long, default_value_t = 4)]
        patch_stride: usize,
    },
}

impl MethodCmd {
    fn name(&self) -> &'static str {
        match self {
            MethodCmd::Moco { .. } => "moco",
            MethodCmd::Dim { .. } => "dim",
            MethodCmd::Cmc { .. } => "cmc",
            MethodCmd::Cpc { .. } => "cpc",
        }
    }

    fn common(&self) -> &CommonArgs {
        match self {
            MethodCmd::Moco { common, .. }
            | MethodCmd::Dim { common, .. }
            | MethodCmd::Cmc { common, .. }
            | MethodCmd::Cpc { common, .. } => common,
        }
    }

    fn common_mut(&mut self) -> &mut CommonArgs {
        match self {
            MethodCmd::Moco { common, .. }
            | MethodCmd::Dim { common, .. }
            | MethodCmd::Cmc { common, .. }
            | MethodCmd::Cpc { common, .. } => common,
        }
    }
}

#[derive(Args, Clone, Serialize, Deserialize)]
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
    /// Training epochs (ignored when --steps is given) [default: 8; cpc: 300 on
    /// japanese-vowels, 10 on wav].
    #[arg(long)]
    epochs: Option<f32>,
    /// Training steps (overrides --epochs).
    #[arg(long)]
    steps: Option<u64>,
    /// Images (or sequences) per batch [default: 256; cpc: 64].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Optimiser [default: sgd (momentum 0.9) for moco and cmc, adam for dim and cpc].
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// Base learning rate for batch 256, scaled linearly with the batch size
    /// [default: 0.06 with sgd, 1e-3 with adam/adamw, 4e-3 for cpc].
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
    #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
    widths: Vec<usize>,
    /// Residual blocks per stage.
    #[arg(long, default_value_t = 0)]
    residual_blocks: usize,
    /// Run the kNN monitor every N steps (0: only the final evaluation).
    #[arg(long, default_value_t = 0)]
    knn_every: u64,
    /// Turn augmentation off (debugging: the views are then identical).
    #[arg(long)]
    no_augment: bool,
    /// Run directory for metrics, checkpoints, plots and the summary [default: runs/<method>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite a run directory that already holds a run.
    #[arg(long)]
    #[serde(skip)]
    force: bool,
    /// Continue the run in this directory from its newest checkpoint (its settings are used,
    /// except --lr when given: lower it after a non-finite step).
    #[arg(long)]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// Write a checkpoint every N steps (0: only at the end or when interrupted).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Stop cleanly after this step, as Ctrl-C would (checkpoint written; continue with --resume).
    #[arg(long)]
    #[serde(skip)]
    stop_after: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    #[serde(skip)]
    quiet: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
        "limits: max buffer {} MiB, max storage binding {} MiB, workgroup memory {} KiB, invocations {}; timestamps {}; 64-bit words {}",
        l.max_buffer_size >> 20,
        l.max_storage_buffer_binding_size >> 20,
        l.max_compute_workgroup_storage_size >> 10,
        l.max_compute_invocations_per_workgroup,
        if gpu.has_timestamps() { "yes" } else { "no" },
        if gpu.has_int64() { "yes" } else { "no" }
    );
    Ok(())
}

/// The data of a run: images on the GPU, or sequences on the host.
enum RunData {
    Images {
        split: Split,
        train: GpuImages,
        test: GpuImages,
        _arena: Arena,
    },
    Sequences {
        split: SequenceSplit,
        /// The training sequences long enough for one crop.
        train: SequenceSet,
        /// Evaluation crop (audio); whole sequences otherwise.
        crop: Option<usize>,
    },
}

impl RunData {
    fn examples(&self) -> Examples<'_> {
        match self {
            RunData::Images { train, .. } => Examples::Images(train),
            RunData::Sequences { train, .. } => Examples::Sequences(train),
        }
    }

    fn eval_data(&self) -> train::EvalData<'_> {
        match self {
            RunData::Images {
                split, train, test, ..
            } => train::EvalData::Images { split, train, test },
            RunData::Sequences { split, crop, .. } => {
                train::EvalData::Sequences { split, crop: *crop }
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            RunData::Images { split, .. } => format!(
                "{}; training on {} images, evaluating on {}",
                split.origin,
                split.train.len(),
                split.test.len()
            ),
            RunData::Sequences { split, train, crop } => format!(
                "{} sequences of {} channel(s), {} classes; training on {} of {} (long enough for a crop), evaluating on {}{}",
                split.train.len() + split.test.len(),
                split.train.dim,
                split.train.num_classes(),
                train.len(),
                split.train.len(),
                split.test.len(),
                crop.map_or(String::new(), |c| format!(" in crops of {c} frames"))
            ),
        }
    }
}

/// Everything a command needs, built from its settings: device, data, the method, and a
/// randomly initialised model of the same kind for the evaluation's baseline.
struct Setup {
    gpu: Gpu,
    data: RunData,
    /// The image encoder's configuration (image methods).
    encoder: EncoderConfig,
    cfg: TrainConfig,
    method: Box<dyn Method>,
    random: Box<dyn Method>,
    /// The base learning rate (per 256 images) in use.
    lr: f32,
}

/// The sequence dataset a `--data` value names, if it names one.
fn sequence_data(d: Dataset) -> Option<SequenceData> {
    match d {
        Dataset::JapaneseVowels => Some(SequenceData::JapaneseVowels),
        Dataset::Wav => Some(SequenceData::Wav),
        _ => None,
    }
}

fn build_method(
    gpu: &Gpu,
    cmd: &MethodCmd,
    encoder: &EncoderConfig,
    data: &RunData,
    optim: &OptimConfig,
    batch: usize,
    seed: u64,
) -> Result<Box<dyn Method>> {
    Ok(match cmd.clone() {
        MethodCmd::Moco {
            queue,
            momentum,
            temperature,
            dim,
            linear_head,
            split_bn,
            symmetric,
            ..
        } => {
            let config = MocoConfig {
                queue,
                momentum,
                temperature,
                dim,
                mlp: !linear_head,
                split_bn,
                symmetric,
            };
            config.validate(batch)?;
            Box::new(Moco::new(gpu, config, encoder, batch, optim, seed)?)
        }
        MethodCmd::Dim {
            estimator,
            dim,
            local_stage,
            ..
        } => {
            let config = DimConfig {
                estimator,
                dim,
                local_stage,
            };
            Box::new(Dim::new(gpu, config, encoder, optim, seed)?)
        }
        MethodCmd::Cmc {
            views,
            temperature,
            dim,
            bank,
            ..
        } => {
            let config = CmcConfig {
                views,
                temperature,
                dim,
                bank,
            };
            Box::new(Cmc::new(gpu, config, encoder, batch, optim, seed)?)
        }
        MethodCmd::Cpc {
            common,
            offsets,
            dim,
            context,
            window,
            patch,
            patch_stride,
        } => {
            let input = match (sequence_data(common.data), data) {
                (Some(SequenceData::Wav), _) => CpcInput::Waveform,
                (Some(SequenceData::JapaneseVowels), RunData::Sequences { split, .. }) => {
                    CpcInput::Frames {
                        features: split.train.dim,
                    }
                }
                _ => CpcInput::Patches {
                    grid: PatchGrid {
                        size: patch,
                        stride: patch_stride,
                    },
                    encoder: encoder.clone(),
                },
            };
            let wav = input == CpcInput::Waveform;
            let config = CpcConfig {
                input,
                offsets: offsets.unwrap_or(if wav { 12 } else { 3 }),
                dim,
                context,
                window: cpc_window(common.data, window),
            };
            Box::new(Cpc::new(gpu, config, batch, optim, seed)?)
        }
    })
}

/// CPC's training crop: frames for japanese-vowels, samples for wav.
fn cpc_window(data: Dataset, window: Option<usize>) -> usize {
    window.unwrap_or(match data {
        Dataset::Wav => 8000,
        _ => 10,
    })
}

fn setup(cmd: &MethodCmd, quiet: bool) -> Result<Setup> {
    let c = cmd.common();
    let is_cpc = matches!(cmd, MethodCmd::Cpc { .. });
    let seq = sequence_data(c.data);
    if seq.is_some() && !is_cpc {
        return Err(Error::Config(format!(
            "--data {} is a sequence dataset: only `contrastive train cpc` reads it",
            c.data
                .to_possible_value()
                .map_or("?".into(), |v| v.get_name().to_string())
        )));
    }
    let batch = c.batch_size.unwrap_or(if is_cpc { 64 } else { 256 });
    let epochs = c.epochs.unwrap_or(match seq {
        Some(SequenceData::JapaneseVowels) => 300.0,
        Some(SequenceData::Wav) => 10.0,
        None => 8.0,
    });
    let gpu = Gpu::new()?;
    let data = match seq {
        Some(kind) => {
            let split = data::sequence::load(kind, c.data_dir.as_deref())?;
            let given = match cmd {
                MethodCmd::Cpc { window, .. } => *window,
                _ => None,
            };
            let window = cpc_window(c.data, given);
            let long: Vec<usize> = (0..split.train.len())
                .filter(|&i| split.train.frames(i) >= window)
                .collect();
            let mut train = split.train.subset(&long);
            if c.train_images > 0 {
                train = train.subset(&(0..c.train_images.min(train.len())).collect::<Vec<_>>());
            }
            let crop = (kind == SequenceData::Wav).then_some(window);
            RunData::Sequences { split, train, crop }
        }
        None => {
            let mut split = data::load(c.data, c.data_dir.as_deref())?;
            if c.train_images > 0 {
                split.train = split.train.take(c.train_images);
            }
            let mut arena = Arena::for_gpu("datasets", &gpu);
            let train = GpuImages::upload(&gpu, &mut arena, &split.train)?;
            let test = GpuImages::upload(&gpu, &mut arena, &split.test)?;
            RunData::Images {
                split,
                train,
                test,
                _arena: arena,
            }
        }
    };
    let train_len = data.examples().len();
    let steps = c
        .steps
        .unwrap_or(((epochs as f64 * train_len as f64) / batch.max(1) as f64).ceil() as u64);
    let monitor_images = match &data {
        RunData::Images { split, .. } => split.test.len(),
        RunData::Sequences { split, .. } => split.test.len(),
    };
    let cfg = TrainConfig {
        batch_size: batch,
        steps,
        seed: c.seed,
        augment: if c.no_augment {
            Augment::none()
        } else {
            Augment::contrastive()
        },
        knn_every: c.knn_every,
        monitor_images,
        progress: !quiet,
    };
    train::validate(&cfg, train_len)?;
    let (h, w, ch) = match &data {
        RunData::Images { split, .. } => {
            (split.train.height, split.train.width, split.train.channels)
        }
        RunData::Sequences { .. } => (1, 1, 1),
    };
    let encoder = EncoderConfig {
        widths: c.widths.clone(),
        residual_blocks: c.residual_blocks,
        ..EncoderConfig::small(h, w, ch)
    };
    let default = if matches!(cmd, MethodCmd::Dim { .. } | MethodCmd::Cpc { .. }) {
        OptimizerArg::Adam
    } else {
        OptimizerArg::Sgd
    };
    let optimizer = c.optimizer.unwrap_or(default);
    let (kind, default_lr) = match optimizer {
        OptimizerArg::Sgd => (
            Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            0.06,
        ),
        OptimizerArg::Adam | OptimizerArg::Adamw => (
            Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                decoupled: optimizer == OptimizerArg::Adamw,
            },
            // CPC's scores start near zero (no temperature): it needs a larger step to leave
            // chance (measured on JapaneseVowels: kNN 69 % at 1e-3 vs 83 % at 4e-3).
            if is_cpc { 4e-3 } else { 1e-3 },
        ),
    };
    let optim = OptimConfig {
        kind,
        lr: c.lr.unwrap_or(default_lr) * batch as f32 / 256.0,
        weight_decay: c.weight_decay,
        schedule: Schedule::Cosine {
            warmup: c.warmup,
            total: steps,
            min_lr: 0.0,
        },
    };
    let method = build_method(&gpu, cmd, &encoder, &data, &optim, batch, c.seed)?;
    let random = build_method(
        &gpu,
        cmd,
        &encoder,
        &data,
        &optim,
        batch,
        c.seed ^ 0xdead_beef,
    )?;
    Ok(Setup {
        gpu,
        data,
        encoder,
        cfg,
        method,
        random,
        lr: c.lr.unwrap_or(default_lr),
    })
}

impl Setup {
    /// The evaluation table of the method as it stands.
    fn evaluate(&self) -> Result<train::Evaluation> {
        let trained = |g: &mut contrastive::autodiff::Graph, x| self.method.features(g, x);
        let random = |g: &mut contrastive::autodiff::Graph, x| self.random.features(g, x);
        train::evaluate(&self.gpu, &trained, &random, self.data.eval_data())
    }
}

/// The newest checkpoint of a run directory, or the file itself.
fn find_checkpoint(path: &Path) -> Result<Checkpoint> {
    let file = if path.is_dir() {
        checkpoint::list(path)
            .pop()
            .ok_or_else(|| Error::Checkpoint {
                path: path.into(),
                what: "no checkpoint-*.safetensors in this directory".into(),
            })?
    } else {
        path.to_path_buf()
    };
    Checkpoint::read(&file)
}

/// The command a checkpoint was trained with.
fn command_of(ck: &Checkpoint) -> Result<MethodCmd> {
    serde_json::from_str(ck.meta("command")?).map_err(|e| Error::Checkpoint {
        path: ck.origin.clone(),
        what: format!("its stored command does not parse ({e})"),
    })
}

fn train_command(mut cmd: MethodCmd, stop: Arc<AtomicBool>) -> Result<()> {
    let given = cmd.common().clone();
    let resume = match &given.resume {
        Some(dir) => {
            let ck = find_checkpoint(dir)?;
            let stored = command_of(&ck)?;
            if stored.name() != cmd.name() {
                return Err(Error::Config(format!(
                    "{} holds a {} run; resume it with `contrastive train {} --resume {}`",
                    dir.display(),
                    stored.name(),
                    stored.name(),
                    dir.display()
                )));
            }
            cmd = stored;
            let c = cmd.common_mut();
            c.out = Some(dir.clone());
            (c.resume, c.stop_after, c.quiet) =
                (given.resume.clone(), given.stop_after, given.quiet);
            if given.lr.is_some() {
                c.lr = given.lr;
            }
            Some(ck)
        }
        None => None,
    };
    let c = cmd.common().clone();
    let out = c
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(cmd.name()));
    if resume.is_none() && out.join("metrics.jsonl").exists() && !c.force {
        return Err(Error::Config(format!(
            "{} already holds a run; continue it with --resume {}, overwrite it with --force, or choose another --out",
            out.display(),
            out.display()
        )));
    }
    let mut s = setup(&cmd, c.quiet)?;
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    if resume.is_none() {
        for old in checkpoint::list(&out) {
            std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
        }
    }
    eprintln!("adapter: {}", s.gpu.adapter);
    eprintln!("data: {}", s.data.describe());
    if matches!(s.data, RunData::Images { .. }) && !matches!(cmd, MethodCmd::Cpc { .. }) {
        let probe = Network::new(&s.gpu, &s.encoder, &[], 0)?;
        eprintln!(
            "encoder: {} parameters, {:.1} MFLOP per image forward",
            probe.params.count(),
            probe.encoder.flops_per_image() * 1e-6,
        );
    }
    eprintln!(
        "trained model: {} parameters; {} steps of batch {}",
        s.method.parameter_count(),
        s.cfg.steps,
        s.cfg.batch_size
    );
    if let Some(ck) = &resume {
        eprintln!(
            "resuming {} at step {}",
            ck.origin.display(),
            ck.meta("step")?
        );
    }
    let mut meta = std::collections::BTreeMap::new();
    meta.insert(
        "command".into(),
        serde_json::to_string(&cmd).expect("command serialises"),
    );
    meta.insert(
        "encoder".into(),
        serde_json::to_string(&s.encoder).expect("config serialises"),
    );
    let ckpt = Checkpointing {
        dir: out.clone(),
        every: c.checkpoint_every,
        keep: c.keep,
        meta,
    };
    let metrics_path = out.join("metrics.jsonl");
    // Opened at the first logged step, so a run that fails before training leaves no run behind.
    let mut metrics: Option<std::fs::File> = None;
    let start = std::time::Instant::now();
    let first = resume
        .as_ref()
        .map_or(Ok(0), |ck| ck.meta_parse::<u64>("step"))?;
    let stop_after = c.stop_after;
    let stop_flag = stop.clone();
    let lower_lr = s.lr / 10.0;
    let lower_lr = if (1e-4..1e4).contains(&lower_lr) {
        lower_lr.to_string()
    } else {
        format!("{lower_lr:e}")
    };
    let outcome = train::train(
        &s.gpu,
        s.method.as_mut(),
        s.data.examples(),
        Some(&|m: &dyn Method| train::knn_monitor(&s.gpu, m, s.data.eval_data())),
        &s.cfg,
        Some(&ckpt),
        resume.as_ref(),
        &stop,
        |line| {
            let json = serde_json::to_string(line).expect("log lines serialise");
            let file = match &mut metrics {
                Some(f) => f,
                None => metrics.insert(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(resume.is_some())
                        .write(true)
                        .truncate(resume.is_none())
                        .open(&metrics_path)
                        .map_err(|e| Error::io(&metrics_path, e))?,
                ),
            };
            writeln!(file, "{json}").map_err(|e| Error::io(&metrics_path, e))?;
            file.flush().map_err(|e| Error::io(&metrics_path, e))?;
            contrastive::report::refresh(&out, line.step).map_err(|e| Error::io(&out, e))?;
            if stop_after.is_some_and(|n| line.step >= n) {
                stop_flag.store(true, Ordering::SeqCst);
            }
            Ok(())
        },
    )
    .map_err(|e| match e {
        Error::NonFinite {
            step,
            op,
            checkpoint,
            ..
        } => {
            let advice = match checkpoint {
                Some(_) => format!(
                    "resume from it with a lower learning rate:\n  contrastive train {} --resume {} --lr {lower_lr}",
                    cmd.name(),
                    out.display()
                ),
                None => format!("start again with a lower learning rate (--lr {lower_lr})"),
            };
            Error::NonFinite {
                step,
                op,
                checkpoint,
                advice,
            }
        }
        e => e,
    })?;
    contrastive::report::draw(&out).map_err(|e| Error::io(&out, e))?;
    if outcome.interrupted {
        let saved = outcome
            .checkpoint
            .map_or("no checkpoint".to_string(), |p| p.display().to_string());
        eprintln!(
            "\nstopped after step {} ({saved}); continue with:\n  contrastive train {} --resume {}",
            outcome.step,
            cmd.name(),
            out.display()
        );
        return Ok(());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = outcome.step - first;
    let per_s = (done * s.cfg.batch_size as u64) as f64 / elapsed;
    eprintln!("evaluating (features computed once, BatchNorm in eval mode)…");
    let evaluation = s.evaluate()?;
    println!("\n{evaluation}");
    println!(
        "training: {done} steps in {elapsed:.1} s, {per_s:.1} images/s (each with its views) on {}",
        s.gpu.adapter
    );
    let summary = serde_json::json!({
        "method": cmd.name(),
        "adapter": s.gpu.adapter.to_string(),
        "data": s.data.describe(),
        "steps": outcome.step,
        "batch_size": s.cfg.batch_size,
        "seconds": elapsed,
        "images_per_s": per_s,
        "final_loss": outcome.lines.last().map(|l| l.loss),
        "evaluation": evaluation,
        "command": cmd,
        "encoder": s.encoder,
    });
    let path = out.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).expect("summary serialises"),
    )
    .map_err(|e| Error::io(&path, e))?;
    Ok(())
}

fn eval_command(path: &Path) -> Result<()> {
    let ck = find_checkpoint(path)?;
    let cmd = command_of(&ck)?;
    let mut s = setup(&cmd, true)?;
    s.method.load(&s.gpu, &ck)?;
    eprintln!(
        "{} checkpoint {} (step {}) on {}",
        cmd.name(),
        ck.origin.display(),
        ck.meta("step")?,
        s.gpu.adapter
    );
    let evaluation = s.evaluate()?;
    println!("{evaluation}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // The first Ctrl-C asks the trainer to checkpoint and stop; a second one exits at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the current step and writing a checkpoint…");
    });
    let result = match cli.command {
        Command::Devices => devices(),
        Command::Train { method } => train_command(*method, stop),
        Command::Eval { checkpoint } => eval_command(&checkpoint),
        Command::Runs { dir } => {
            contrastive::report::summarize(&dir).map_err(|e| Error::io(&dir, e))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
