//! What a run is built from its settings: the device, the data (images on the GPU or sequences on
//! the host), the method, and a randomly initialised model of the same kind for the evaluation's
//! baseline; for a checkpoint, the same with its trained model loaded.

use crate::checkpoint::Checkpoint;
use crate::data::{
    self, Augment, FolderOptions, GpuImages, PixelStats, SequenceData, SequenceSet, SequenceSplit,
    Split,
};
use crate::error::{Error, Result};
use crate::eval::{self, EvalData, Evaluation};
use crate::gpu::Gpu;
use crate::kernels::cpc::PatchGrid;
use crate::memory::Arena;
use crate::methods::cpc::NegativeSampling;
use crate::methods::{
    Cmc, CmcConfig, Cpc, CpcConfig, CpcInput, Dim, DimConfig, Examples, Method, Moco, MocoConfig,
};
use crate::nn::EncoderConfig;
use crate::optim::OptimConfig;
use crate::train::{self, TrainConfig};

use super::Settings;

/// The data of a run: images on the GPU, or sequences on the host.
// One value per run: the size of its larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum RunData {
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
    pub fn examples(&self) -> Examples<'_> {
        match self {
            RunData::Images { train, .. } => Examples::Images(train),
            RunData::Sequences { train, .. } => Examples::Sequences(train),
        }
    }

    pub fn eval_data(&self) -> EvalData<'_> {
        match self {
            RunData::Images {
                split, train, test, ..
            } => EvalData::Images { split, train, test },
            RunData::Sequences { split, crop, .. } => EvalData::Sequences { split, crop: *crop },
        }
    }

    pub fn describe(&self) -> String {
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
pub struct Setup {
    pub gpu: Gpu,
    pub data: RunData,
    /// The image encoder's configuration (image methods).
    pub encoder: EncoderConfig,
    pub cfg: TrainConfig,
    pub method: Box<dyn Method>,
    pub random: Box<dyn Method>,
    /// The base learning rate (per 256 images) in use.
    pub lr: f32,
}

fn build_method(
    gpu: &Gpu,
    cmd: &Settings,
    encoder: &EncoderConfig,
    data: &RunData,
    optim: &OptimConfig,
    batch: usize,
    seed: u64,
) -> Result<Box<dyn Method>> {
    Ok(match cmd.clone() {
        Settings::Moco {
            queue,
            momentum,
            temperature,
            dim,
            linear_head,
            split_bn,
            query_split_bn,
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
                query_split_bn,
                symmetric,
            };
            config.validate(batch)?;
            Box::new(Moco::new(gpu, config, encoder, batch, optim, seed)?)
        }
        Settings::Dim {
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
        Settings::Cmc {
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
        Settings::Cpc {
            offsets,
            dim,
            context,
            patch,
            patch_stride,
            negatives,
            num_negatives,
            ..
        } => {
            let input = match (cmd.sequence_data(), data) {
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
                window: cmd.cpc_window(),
                negatives: NegativeSampling {
                    scheme: negatives,
                    count: num_negatives,
                },
            };
            Box::new(Cpc::new(gpu, config, batch, optim, seed)?)
        }
    })
}

/// Builds the device, the data, the method and its random baseline, to train: every image is
/// normalised with the training split's statistics.
pub fn setup(cmd: &Settings, quiet: bool) -> Result<Setup> {
    build(cmd, quiet, None)
}

/// Builds the run `ck` was trained with (`cmd`, its stored settings, perhaps pointed at other
/// data) with its trained model loaded, to compute features: every image is normalised as in
/// training, by the statistics the checkpoint stores (computed from the training split, with a
/// note, for a checkpoint older than them). The settings are not checked against the data's
/// size, since nothing is trained.
pub fn restore(cmd: &Settings, ck: &Checkpoint, quiet: bool) -> Result<Setup> {
    let mut s = build(cmd, quiet, Some(ck))?;
    s.method.load(&s.gpu, ck)?;
    Ok(s)
}

/// The input normalisation: the checkpoint's when restoring one that stores it, else the
/// training split's.
fn normalisation(train: &data::ImageSet, ck: Option<&Checkpoint>) -> Result<PixelStats> {
    let Some(ck) = ck else {
        return Ok(PixelStats::of(train));
    };
    Ok(match ck.normalisation(train.channels)? {
        Some(stored) => stored,
        None => {
            eprintln!(
                "note: {} stores no input normalisation (written by an older version): using the training split's statistics, computed now",
                ck.origin.display()
            );
            PixelStats::of(train)
        }
    })
}

fn build(cmd: &Settings, quiet: bool, ck: Option<&Checkpoint>) -> Result<Setup> {
    let training = ck.is_none();
    let c = cmd.common();
    let seq = cmd.sequence_data();
    if seq.is_some() && !cmd.is_cpc() {
        return Err(Error::Config(format!(
            "--data {} is a sequence dataset: only `contrastive train cpc` reads it",
            clap::ValueEnum::to_possible_value(&c.data)
                .map_or("?".into(), |v| v.get_name().to_string())
        )));
    }
    super::validate::settings(cmd)?;
    let batch = cmd.batch_size();
    let gpu = Gpu::nth(crate::dist::rank())?;
    let data = match seq {
        Some(kind) => {
            let split = data::sequence::load(kind, c.data_dir.as_deref())?;
            if training {
                super::validate::train_examples(cmd, split.train.len(), "training sequences")?;
            }
            super::validate::cpc_window(cmd, split.train.max_frames())?;
            super::validate::sequence_sizes(cmd, &gpu, split.train.dim)?;
            let window = cmd.cpc_window();
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
            let folder = FolderOptions::default();
            let folder = FolderOptions {
                image_size: c.image_size.unwrap_or(folder.image_size),
                channels: c.channels,
                strict: c.strict,
                val_dir: c.val_dir.clone(),
                val_fraction: c.val_fraction.unwrap_or(folder.val_fraction),
                progress: !quiet,
            };
            let mut split = data::load_with(c.data, c.data_dir.as_deref(), &folder)?;
            if training {
                super::validate::labels(cmd, &split.train)?;
                super::validate::train_examples(cmd, split.train.len(), "training images")?;
            }
            if c.train_images > 0 {
                split.train = split.train.take(c.train_images);
            }
            super::validate::image_sizes(cmd, &gpu, &split.train, &split.test)?;
            let norm = normalisation(&split.train, ck)?;
            let mut arena = Arena::for_gpu("datasets", &gpu);
            let train = GpuImages::upload_normalised(&gpu, &mut arena, &split.train, norm.clone())?;
            let test = GpuImages::upload_normalised(&gpu, &mut arena, &split.test, norm)?;
            RunData::Images {
                split,
                train,
                test,
                _arena: arena,
            }
        }
    };
    let train_len = data.examples().len();
    let steps = cmd.steps(train_len);
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
        progress: !quiet && crate::dist::is_root(),
    };
    if training {
        train::validate(&cfg, train_len)?;
    }
    let (h, w, ch) = match &data {
        RunData::Images { split, .. } => {
            (split.train.height, split.train.width, split.train.channels)
        }
        RunData::Sequences { .. } => (1, 1, 1),
    };
    let encoder = c
        .encoder
        .config((h, w, ch), &c.widths, c.residual_blocks, c.width_mult);
    let optim = cmd.optim_config(steps);
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
        lr: cmd.base_lr(),
    })
}

impl Setup {
    /// The evaluation table of the method as it stands.
    pub fn evaluate(&self) -> Result<Evaluation> {
        let trained = |g: &mut crate::autodiff::Graph, x| self.method.features(g, x);
        let random = |g: &mut crate::autodiff::Graph, x| self.random.features(g, x);
        let say = |phase: &str| eprintln!("evaluating: {phase}…");
        let quiet = |_: &str| {};
        let progress: &dyn Fn(&str) = if self.cfg.progress { &say } else { &quiet };
        eval::evaluate(
            &self.gpu,
            &trained,
            &random,
            self.data.eval_data(),
            progress,
        )
    }
}
