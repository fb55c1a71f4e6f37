//! The settings of a run as the command line takes them (`contrastive train <method> …`), and
//! the per-method defaults they resolve to: batch size, epochs, optimiser and learning rate.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, SequenceData};
use crate::error::{Error, Result};
use crate::kernels::mi::Estimator;
use crate::kernels::optim::{Optimizer, Schedule};
use crate::methods::cmc::Views;
use crate::methods::cpc::Negatives;
use crate::optim::OptimConfig;

/// A method and its settings, as `contrastive train` parses them (and as a checkpoint stores
/// them, to resume or evaluate it).
#[derive(Subcommand, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Settings {
    /// Momentum Contrast (MoCo v1/v2): EMA key encoder and a queue of negatives.
    Moco {
        #[command(flatten)]
        common: Common,
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
        /// BatchNorm groups in the query encoder over the global batch; N ranks (MPI) normalise
        /// per rank, as N groups do in one process.
        #[arg(long, default_value_t = 1)]
        #[serde(default = "one")]
        query_split_bn: usize,
        /// Symmetric loss: both views serve as queries (mean of the two directions).
        #[arg(long)]
        symmetric: bool,
    },
    /// Deep InfoMax: global vector vs local feature map, JSD or NCE estimator.
    Dim {
        #[command(flatten)]
        common: Common,
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
        common: Common,
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
        common: Common,
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
        /// Negatives of each prediction: the other sequences at the predicted step, positions
        /// drawn at random from every sequence of the batch, or both.
        #[arg(long, value_enum, default_value = "same-step")]
        #[serde(default)]
        negatives: Negatives,
        /// Negatives drawn per prediction (random, both) [default: sequences per batch − 1,
        /// as many as same-step has; for images every column of a patch grid is a sequence].
        #[arg(long)]
        #[serde(default)]
        num_negatives: Option<usize>,
    },
}

impl Settings {
    pub fn name(&self) -> &'static str {
        match self {
            Settings::Moco { .. } => "moco",
            Settings::Dim { .. } => "dim",
            Settings::Cmc { .. } => "cmc",
            Settings::Cpc { .. } => "cpc",
        }
    }

    pub fn common(&self) -> &Common {
        match self {
            Settings::Moco { common, .. }
            | Settings::Dim { common, .. }
            | Settings::Cmc { common, .. }
            | Settings::Cpc { common, .. } => common,
        }
    }

    pub fn common_mut(&mut self) -> &mut Common {
        match self {
            Settings::Moco { common, .. }
            | Settings::Dim { common, .. }
            | Settings::Cmc { common, .. }
            | Settings::Cpc { common, .. } => common,
        }
    }
}

/// The settings every method shares.
#[derive(Args, Clone, Serialize, Deserialize)]
pub struct Common {
    /// Dataset. Without --data-dir, fashion-mnist is the embedded 10,000-image test set (8,000 train / 2,000 held out).
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub data: Dataset,
    /// Directory with the dataset files (see scripts/fetch-data.sh); with --data images, a folder
    /// of images, one sub-folder per class (a flat folder is unlabelled).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Held-out images (--data images): a folder with the training data's class folders
    /// [default: --val-fraction of each class].
    #[arg(long)]
    #[serde(default)]
    pub val_dir: Option<PathBuf>,
    /// Fraction of each class held out for evaluation when no --val-dir is given (--data images)
    /// [default: 0.1, every 10th file by name].
    #[arg(long)]
    #[serde(default)]
    pub val_fraction: Option<f64>,
    /// Side of the square images are resized (shorter side) and centre-cropped to (--data
    /// images) [default: 32].
    #[arg(long)]
    #[serde(default)]
    pub image_size: Option<usize>,
    /// 1 (grayscale) or 3 (RGB) (--data images) [default: 3 if any image has colour, else 1].
    #[arg(long)]
    #[serde(default)]
    pub channels: Option<usize>,
    /// Refuse files that are not readable images instead of skipping them (--data images).
    #[arg(long)]
    #[serde(default)]
    pub strict: bool,
    /// Use only the first N training images (0: all).
    #[arg(long, default_value_t = 0)]
    pub train_images: usize,
    /// Training epochs (ignored when --steps is given) [default: 8; cpc: 300 on
    /// japanese-vowels, 10 on wav].
    #[arg(long)]
    pub epochs: Option<f32>,
    /// Training steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Images (or sequences) per batch [default: 256; cpc: 64].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Optimiser [default: sgd (momentum 0.9) for moco and cmc, adam for dim and cpc].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerChoice>,
    /// Base learning rate for batch 256, scaled linearly with the batch size
    /// [default: 0.06 with sgd, 1e-3 with adam/adamw, 4e-3 for cpc].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Weight decay (not applied to biases and BatchNorm parameters).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f32,
    /// Linear warm-up steps before the cosine schedule.
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Seed for initialisation, batches and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Encoder stage widths, comma-separated (each stage after the first halves the resolution).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
    pub widths: Vec<usize>,
    /// Residual blocks per stage.
    #[arg(long, default_value_t = 0)]
    pub residual_blocks: usize,
    /// Encoder: small (--widths, --residual-blocks) or resnet18 (CIFAR-style ResNet-18, its
    /// checkpoint tensors named as torchvision's).
    #[arg(long, value_enum, default_value = "small")]
    #[serde(default)]
    pub encoder: crate::nn::Preset,
    /// Multiplies every encoder width (rounded, at least 1): a narrower resnet18 for small machines.
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "unit")]
    pub width_mult: f32,
    /// Run the kNN monitor every N steps (0: only the final evaluation).
    #[arg(long, default_value_t = 0)]
    pub knn_every: u64,
    /// Turn augmentation off (debugging: the views are then identical).
    #[arg(long)]
    pub no_augment: bool,
    /// Run directory for metrics, checkpoints, plots and the summary [default: runs/METHOD].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite a run directory that already holds a run.
    #[arg(long)]
    #[serde(skip)]
    pub force: bool,
    /// Continue the run in this directory from its newest checkpoint (its settings are used,
    /// except --lr when given: lower it after a non-finite step).
    #[arg(long)]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Write a checkpoint every N steps (0: only at the end or when interrupted).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Stop cleanly after this step, as Ctrl-C would (checkpoint written; continue with --resume).
    #[arg(long)]
    #[serde(skip)]
    pub stop_after: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    #[serde(skip)]
    pub quiet: bool,
    /// Kernel choice: off (heuristics), cached (the choices cached for this adapter), full
    /// (also time the shapes the cache lacks) [default: full on GPUs, off on CPU adapters].
    #[arg(long)]
    #[serde(skip)]
    pub tune: Option<crate::gpu::tune::Mode>,
    /// Read the settings from this TOML file (a run's config.toml replays it); flags given on
    /// the command line override it.
    #[arg(long, value_name = "FILE.toml")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The settings given on the command line or in a `--config` file (their field names, e.g.
    /// `batch_size`), as opposed to defaults: `--resume` refuses those it cannot honour. Filled by [`Settings::from_words`]
    /// and [`Settings::with_given`].
    #[arg(skip)]
    #[serde(skip)]
    pub given: Vec<String>,
}

/// The optimiser a run asks for.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerChoice {
    Sgd,
    Adam,
    Adamw,
}

/// Parses a method's settings from command-line words, e.g. `["moco", "--steps", "10"]`.
#[derive(Parser)]
#[command(no_binary_name = true)]
pub(super) struct Words {
    #[command(subcommand)]
    settings: Settings,
}

impl Settings {
    /// The settings `contrastive train` would take from `words` (the words after `train`), e.g.
    /// `["moco", "--steps", "10", "--out", "runs/a"]`: every default filled in as the CLI does,
    /// and those of a `--config` file that the words do not give.
    pub fn from_words<I, T>(words: I) -> Result<Settings>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let config = |e: clap::Error| Error::Config(e.to_string());
        let matches = Words::command()
            .try_get_matches_from(words)
            .map_err(config)?;
        let settings = Words::from_arg_matches(&matches).map_err(config)?.settings;
        super::config::apply(match matches.subcommand() {
            Some((_, method)) => settings.with_given(method),
            None => settings,
        })
    }

    /// Notes which settings `matches` (a method's subcommand matches) took from the command line
    /// rather than from their defaults, in [`Common::given`].
    pub fn with_given(mut self, matches: &clap::ArgMatches) -> Settings {
        let words = Words::command();
        let method = words.find_subcommand(self.name());
        // Argument groups (the flattened `Common`) are listed too: keep the settings only.
        let setting =
            |id: &clap::Id| method.is_some_and(|m| m.get_arguments().any(|a| a.get_id() == id));
        self.common_mut().given = matches
            .ids()
            .filter(|id| {
                setting(id)
                    && matches.value_source(id.as_str())
                        == Some(clap::parser::ValueSource::CommandLine)
            })
            .map(|id| id.to_string())
            .collect();
        self
    }

    pub fn is_cpc(&self) -> bool {
        matches!(self, Settings::Cpc { .. })
    }

    /// The sequence dataset the settings read, if they read one.
    pub fn sequence_data(&self) -> Option<SequenceData> {
        sequence_data(self.common().data)
    }

    /// Images (or sequences) per batch.
    pub fn batch_size(&self) -> usize {
        let default = if self.is_cpc() { 64 } else { 256 };
        self.common().batch_size.unwrap_or(default)
    }

    /// Training epochs, when `--steps` is not given.
    pub fn epochs(&self) -> f32 {
        self.common().epochs.unwrap_or(match self.sequence_data() {
            Some(SequenceData::JapaneseVowels) => 300.0,
            Some(SequenceData::Wav) => 10.0,
            None => 8.0,
        })
    }

    /// Training steps for `train_len` training examples.
    pub fn steps(&self, train_len: usize) -> u64 {
        let epochs = self.epochs() as f64;
        let batch = self.batch_size().max(1) as f64;
        self.common()
            .steps
            .unwrap_or((epochs * train_len as f64 / batch).ceil() as u64)
    }

    /// CPC's training crop: frames for japanese-vowels, samples for wav.
    pub fn cpc_window(&self) -> usize {
        let given = match self {
            Settings::Cpc { window, .. } => *window,
            _ => None,
        };
        cpc_window(self.common().data, given)
    }

    /// The base learning rate for batch 256 (before linear scaling with the batch size).
    pub fn base_lr(&self) -> f32 {
        let c = self.common();
        c.lr.unwrap_or(match self.optimizer() {
            OptimizerChoice::Sgd => 0.06,
            // CPC's scores start near zero (no temperature): it needs a larger step to leave
            // chance.
            OptimizerChoice::Adam | OptimizerChoice::Adamw if self.is_cpc() => 4e-3,
            OptimizerChoice::Adam | OptimizerChoice::Adamw => 1e-3,
        })
    }

    /// The optimiser in use: the one given, or the method's default (SGD with momentum for MoCo
    /// and CMC, Adam for DIM and CPC).
    pub fn optimizer(&self) -> OptimizerChoice {
        let default = match self {
            Settings::Dim { .. } | Settings::Cpc { .. } => OptimizerChoice::Adam,
            Settings::Moco { .. } | Settings::Cmc { .. } => OptimizerChoice::Sgd,
        };
        self.common().optimizer.unwrap_or(default)
    }

    /// The optimiser configuration of a run of `steps` steps.
    pub fn optim_config(&self, steps: u64) -> OptimConfig {
        let c = self.common();
        let choice = self.optimizer();
        let kind = match choice {
            OptimizerChoice::Sgd => Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            OptimizerChoice::Adam | OptimizerChoice::Adamw => Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                decoupled: choice == OptimizerChoice::Adamw,
            },
        };
        OptimConfig {
            kind,
            lr: self.base_lr() * self.batch_size() as f32 / 256.0,
            weight_decay: c.weight_decay,
            schedule: Schedule::Cosine {
                warmup: c.warmup,
                total: steps,
                min_lr: 0.0,
            },
        }
    }
}

/// The sequence dataset a `--data` value names, if it names one.
fn sequence_data(d: Dataset) -> Option<SequenceData> {
    match d {
        Dataset::JapaneseVowels => Some(SequenceData::JapaneseVowels),
        Dataset::Wav => Some(SequenceData::Wav),
        _ => None,
    }
}

/// CPC's training crop: frames for japanese-vowels, samples for wav.
fn cpc_window(data: Dataset, window: Option<usize>) -> usize {
    window.unwrap_or(match data {
        Dataset::Wav => 8000,
        _ => 10,
    })
}

/// The default of settings added after checkpoints were first written (their stored command
/// lacks them).
fn one() -> usize {
    1
}

/// `--width-mult` of settings stored before it existed.
fn unit() -> f32 {
    1.0
}
