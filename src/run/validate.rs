//! Settings refused before anything is built: contradictions between them, settings the data
//! cannot honour, and allocations too large for the adapter or the host. Each error names the
//! setting; the memory checks run before the first byte is allocated, so an oversized setting is
//! an error rather than an aborted process.

use crate::data::{Dataset, FolderOptions, ImageSet};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::methods::cmc::Views;
use crate::nn::Preset;

use super::Settings;

/// Contradictions within the settings themselves, before the device or the data are opened.
pub fn settings(cmd: &Settings) -> Result<()> {
    let c = cmd.common();
    if c.stop_after == Some(0) {
        return Err(Error::Config(
            "--stop-after 0 would stop before the first step; give a step of at least 1".into(),
        ));
    }
    if c.keep == 0 {
        return Err(Error::Config(
            "--keep 0 would delete every checkpoint, the one a resume needs included; keep at least 1"
                .into(),
        ));
    }
    if !(c.width_mult.is_finite() && c.width_mult > 0.0) {
        return Err(Error::Config(format!(
            "--width-mult {} must be a positive number",
            c.width_mult
        )));
    }
    if c.encoder == Preset::Resnet18 {
        if let Some(g) = ["widths", "residual_blocks"]
            .iter()
            .find(|g| c.given.iter().any(|h| h == *g))
        {
            return Err(Error::Config(format!(
                "--{} sets the small encoder; resnet18's stages are fixed (scale their widths with --width-mult)",
                g.replace('_', "-")
            )));
        }
    }
    images(cmd)?;
    let batch = cmd.batch_size();
    let no_negatives = match cmd {
        Settings::Cmc { bank, .. } => *bank == 0,
        Settings::Dim { .. } => true,
        Settings::Moco { .. } | Settings::Cpc { .. } => false,
    };
    if no_negatives && batch == 1 {
        return Err(Error::Config(format!(
            "--batch-size 1 leaves {} without negatives (they are the other images of the batch); use a batch of at least 2",
            cmd.name()
        )));
    }
    if let Settings::Cpc {
        patch,
        patch_stride,
        ..
    } = cmd
    {
        if cmd.sequence_data().is_none() && patch_stride > patch {
            return Err(Error::Config(format!(
                "--patch-stride {patch_stride} is larger than --patch {patch}: pixels between the patches would never be seen"
            )));
        }
    }
    Ok(())
}

/// The settings of `--data images`, and that no other dataset is given them.
fn images(cmd: &Settings) -> Result<()> {
    let c = cmd.common();
    if c.data != Dataset::Images {
        let given = [
            ("--val-dir", c.val_dir.is_some()),
            ("--val-fraction", c.val_fraction.is_some()),
            ("--image-size", c.image_size.is_some()),
            ("--channels", c.channels.is_some()),
            ("--strict", c.strict),
        ];
        if let Some((flag, _)) = given.iter().find(|g| g.1) {
            return Err(Error::Config(format!(
                "{flag} applies to folders of images (--data images) only"
            )));
        }
        return Ok(());
    }
    if c.data_dir.is_none() {
        return Err(Error::Config(
            "--data images needs --data-dir DIR: a folder of images, one sub-folder per class (a flat folder is unlabelled)".into(),
        ));
    }
    let size = c.image_size.unwrap_or(FolderOptions::default().image_size);
    // Each encoder stage after the first halves the resolution.
    let least = (1usize << c.widths.len().saturating_sub(1)).max(MIN_IMAGE_SIZE);
    if !(least..=MAX_IMAGE_SIZE).contains(&size) {
        return Err(Error::Config(format!(
            "--image-size {size} is outside {least}..={MAX_IMAGE_SIZE} (pixels per side; the smallest leaves the encoder's {} stages at least one pixel)",
            c.widths.len()
        )));
    }
    if let Settings::Cpc { patch, .. } = cmd {
        if *patch > size {
            return Err(Error::Config(format!(
                "--patch {patch} is larger than --image-size {size}"
            )));
        }
    }
    if let Some(ch) = c.channels.filter(|&ch| ch != 1 && ch != 3) {
        return Err(Error::Config(format!(
            "--channels {ch}: images are read as 1 (grayscale) or 3 (RGB) channels"
        )));
    }
    if let Some(f) = c.val_fraction {
        if c.val_dir.is_some() {
            return Err(Error::Config(
                "--val-fraction and --val-dir both choose the held-out images: give one".into(),
            ));
        }
        if !(f > 0.0 && f < 1.0) {
            return Err(Error::Config(format!(
                "--val-fraction {f} is outside (0, 1): it is the fraction of each class held out"
            )));
        }
    }
    Ok(())
}

/// Bounds of `--image-size`.
const MIN_IMAGE_SIZE: usize = 8;
const MAX_IMAGE_SIZE: usize = 1024;

/// Unlabelled images (a flat folder) train, but nothing can score them: a kNN monitor is refused.
pub fn labels(cmd: &Settings, train: &ImageSet) -> Result<()> {
    let every = cmd.common().knn_every;
    if every > 0 && !train.is_labelled() {
        return Err(Error::Config(format!(
            "--knn-every {every} needs labelled images, and {} is a flat folder: put each class's images in a sub-folder, or leave out --knn-every",
            cmd.common().data_dir.as_deref().unwrap_or(std::path::Path::new("--data-dir")).display()
        )));
    }
    Ok(())
}

/// `--train-images` against the examples the data holds.
pub fn train_examples(cmd: &Settings, available: usize, what: &str) -> Result<()> {
    let asked = cmd.common().train_images;
    if asked > available {
        return Err(Error::Config(format!(
            "--train-images {asked} is more than the {available} {what} the data holds"
        )));
    }
    Ok(())
}

/// CPC's `--window` against the longest training sequence.
pub fn cpc_window(cmd: &Settings, longest: usize) -> Result<()> {
    let window = cmd.cpc_window();
    if window > longest {
        return Err(Error::Config(format!(
            "--window {window} is longer than every training sequence (the longest has {longest} frames)"
        )));
    }
    Ok(())
}

/// One allocation the settings imply: the setting that sizes it, what it is, its 32-bit words.
struct Need {
    setting: String,
    what: String,
    words: u128,
    /// Grows with the batch size: the error then says which batch would fit.
    per_batch: bool,
}

/// The largest allocations an image run's settings imply (lower bounds: the exact layout adds
/// alignment and smaller tensors).
fn image_needs(cmd: &Settings, train: &ImageSet, test: &ImageSet) -> Vec<Need> {
    let c = cmd.common();
    let (h, w) = (train.height as u128, train.width as u128);
    let batch = cmd.batch_size() as u128;
    let enc = c.encoder.config(
        (train.height, train.width, train.channels),
        &c.widths,
        c.residual_blocks,
        c.width_mult,
    );
    let params = enc.parameter_count();
    let feat = enc.widths.last().map_or(0, |&w| w as u128);
    let head = match cmd {
        Settings::Moco {
            dim, linear_head, ..
        } => feat * *dim as u128 + if *linear_head { 0 } else { feat * feat },
        Settings::Cmc { dim, .. } | Settings::Dim { dim, .. } => feat * *dim as u128,
        Settings::Cpc { .. } => 0,
    };
    // Rows of one forward pass: CMC's augmented views go through the encoder together.
    let rows = match cmd {
        Settings::Cmc {
            views: Views::Augment,
            ..
        } => 2 * batch,
        _ => batch,
    };
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mult = match c.width_mult {
        1.0 => String::new(),
        m => format!(" --width-mult {m}"),
    };
    let widths_given = match c.encoder {
        Preset::Small => format!("--widths {}{mult}", list(&c.widths)),
        Preset::Resnet18 => format!("--encoder resnet18{mult} (widths {})", list(&enc.widths)),
    };
    let mut model = widths_given.clone();
    if c.encoder == Preset::Small && c.residual_blocks > 0 {
        model += &format!(" --residual-blocks {}", c.residual_blocks);
    }
    if let Settings::Moco { dim, .. } | Settings::Cmc { dim, .. } | Settings::Dim { dim, .. } = cmd
    {
        model += &format!(" --dim {dim}");
    }
    let first = enc.widths.first().map_or(0, |&w| w as u128);
    let mut needs = vec![
        Need {
            setting: model,
            what: format!(
                "the model's parameters ({} floats)",
                params.saturating_add(head)
            ),
            words: params.saturating_add(head),
            per_batch: false,
        },
        Need {
            setting: widths_given,
            what: format!("the first stage's activations ({rows}×{h}×{w}×{first})"),
            words: rows * h * w * first,
            per_batch: true,
        },
    ];
    for (split, set) in [("training", train), ("test", test)] {
        needs.push(Need {
            setting: "--data".into(),
            what: format!(
                "the {split} images ({} of {}×{}×{})",
                set.len(),
                set.height,
                set.width,
                set.channels
            ),
            words: (set.images.len() as u128).div_ceil(4),
            per_batch: false,
        });
    }
    let ring = |flag: &str, size: usize, dim: usize, name: &str| {
        [
            Need {
                setting: format!("{flag} {size}"),
                what: format!("{name} ({size} rows of {dim})"),
                words: size as u128 * dim as u128,
                per_batch: false,
            },
            Need {
                setting: format!("{flag} {size}"),
                what: format!("the scores of {rows} rows against {name}"),
                words: rows * size as u128,
                per_batch: true,
            },
        ]
    };
    match cmd {
        Settings::Moco { queue, dim, .. } => {
            needs.extend(ring("--queue", *queue, *dim, "the queue"))
        }
        Settings::Cmc { bank, dim, .. } if *bank > 0 => {
            needs.extend(ring("--bank", *bank, *dim, "the memory bank"))
        }
        _ => {}
    }
    needs
}

/// The model of a CPC run on sequences: its encoder and GRU weights (lower bound).
fn sequence_needs(cmd: &Settings, features: usize) -> Vec<Need> {
    let Settings::Cpc { dim, context, .. } = cmd else {
        return vec![];
    };
    let (d, h, f) = (*dim as u128, *context as u128, features as u128);
    let words = f * d + d * d + 3 * h * (d + h);
    vec![Need {
        setting: format!("--dim {dim} --context {context}"),
        what: format!("the model's parameters ({words} floats)"),
        words,
        per_batch: false,
    }]
}

/// Physical memory of the host, where the system says (Linux).
fn host_memory() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u128>()
        .ok()?;
    Some(kib * 1024)
}

/// Refuses an image run whose settings imply an allocation larger than one GPU binding may hold
/// or than the host's memory (each is staged on the host before it is uploaded).
pub fn image_sizes(cmd: &Settings, gpu: &Gpu, train: &ImageSet, test: &ImageSet) -> Result<()> {
    check(cmd, gpu, image_needs(cmd, train, test))
}

/// [`image_sizes`] for a CPC run on sequences of `features` values per frame.
pub fn sequence_sizes(cmd: &Settings, gpu: &Gpu, features: usize) -> Result<()> {
    check(cmd, gpu, sequence_needs(cmd, features))
}

fn check(cmd: &Settings, gpu: &Gpu, needs: Vec<Need>) -> Result<()> {
    let binding = gpu.max_binding() as u128;
    let host = host_memory().unwrap_or(u128::MAX);
    let (limit, which) = if binding <= host {
        (binding, "the adapter's largest binding")
    } else {
        (host, "the host's memory")
    };
    let batch = cmd.batch_size() as u128;
    for need in needs {
        let bytes = need.words * 4;
        if bytes > limit {
            let e = Error::OutOfMemory {
                what: format!("{}: {}", need.setting, need.what),
                needed: bytes.min(u64::MAX as u128) as u64,
                limit: limit as u64,
                advice: format!(" ({which})"),
            };
            // A smaller batch helps only when one example fits.
            return Err(if need.per_batch && bytes / batch.max(1) <= limit {
                crate::train::with_batch_advice(e, cmd.batch_size())
            } else {
                e
            });
        }
    }
    Ok(())
}
