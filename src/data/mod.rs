//! Datasets: file readers (IDX for MNIST/Fashion-MNIST, CIFAR-10 binary, folders of image files),
//! the embedded default data, and the image set type the trainers consume; sequence data (`.ts` series, WAV audio) in
//! [`sequence`]; the images on the GPU ([`GpuImages`]) and the augmentation policy ([`Augment`]).
//!
//! Images are kept as `u8` in NHWC order (channels last, as every activation in this crate).

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod gpu_images;
pub mod idx;
pub mod sequence;
pub mod ts;
pub mod wav;

pub use augment::Augment;
pub use folder::FolderOptions;
pub use gpu_images::{GpuImages, PixelStats};
pub use sequence::{SequenceData, SequenceSet, SequenceSplit};

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Images as bytes, NHWC, with one label each. `classes == 0` means the images have no labels
/// (a flat folder): every label is 0 and nothing can be scored against them.
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// Classes of the labels; 0: unlabelled.
    pub classes: usize,
    /// Each image's file, relative to its data directory, in set order; empty for sources
    /// without file names (IDX, CIFAR-10).
    pub names: Vec<String>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Images `range` as a new set (used to split one file into pre-training and held-out parts).
    pub fn slice(&self, range: std::ops::Range<usize>) -> ImageSet {
        let d = self.image_len();
        ImageSet {
            images: self.images[range.start * d..range.end * d].to_vec(),
            labels: self.labels[range.clone()].to_vec(),
            names: self.names.get(range).map_or(vec![], <[String]>::to_vec),
            ..*self
        }
    }

    /// The first `n` images (all if `n` is larger).
    pub fn take(&self, n: usize) -> ImageSet {
        self.slice(0..n.min(self.len()))
    }

    /// Pixels scaled to [0, 1] as f32, NHWC (raw-pixel baselines, tests).
    pub fn pixels_f32(&self) -> Vec<f32> {
        self.images.iter().map(|&p| p as f32 / 255.0).collect()
    }

    fn with_labels(images: ImageSet, labels: Vec<u8>, path: &Path) -> Result<ImageSet> {
        if labels.len() != images.len() {
            return Err(Error::Data {
                path: path.into(),
                what: format!(
                    "{} labels for {} images: the image and label files do not belong together",
                    labels.len(),
                    images.len()
                ),
            });
        }
        let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        Ok(ImageSet {
            labels,
            classes,
            ..images
        })
    }

    /// Whether the images carry labels (see [`ImageSet::classes`]).
    pub fn is_labelled(&self) -> bool {
        self.classes > 0
    }
}

/// Which dataset to train on.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// The embedded Fashion-MNIST test set (10,000 images) when no --data-dir is given;
    /// the full 60,000/10,000 split from --data-dir otherwise.
    FashionMnist,
    /// MNIST from --data-dir (see scripts/fetch-data.sh).
    Mnist,
    /// CIFAR-10 binary batches from --data-dir (data_batch_{1..5}.bin, test_batch.bin).
    Cifar10,
    /// JapaneseVowels sequences (`train cpc` only): embedded, or from --data-dir.
    JapaneseVowels,
    /// WAV recordings from --data-dir/speech, one folder per class (`train cpc` only).
    Wav,
    /// Image files (PNG, JPEG, BMP, GIF, WebP, TIFF) from --data-dir: one sub-folder per class,
    /// or a flat folder of unlabelled images.
    Images,
}

/// A pre-training set and a held-out set for evaluation.
pub struct Split {
    pub train: ImageSet,
    pub test: ImageSet,
    /// Where the data came from, for logs and run metadata.
    pub origin: String,
}

const EMBEDDED_IMAGES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/fashion-mnist/t10k-images-idx3-ubyte.gz"
));
const EMBEDDED_LABELS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/fashion-mnist/t10k-labels-idx1-ubyte.gz"
));

/// Images of the embedded default split that are used for pre-training; the rest are held out.
pub const EMBEDDED_TRAIN: usize = 8000;

/// The embedded Fashion-MNIST test set (compressed bytes), for checksum tests.
pub fn embedded_files() -> [(&'static str, &'static [u8]); 2] {
    [
        ("t10k-images-idx3-ubyte.gz", EMBEDDED_IMAGES),
        ("t10k-labels-idx1-ubyte.gz", EMBEDDED_LABELS),
    ]
}

/// The embedded default: Fashion-MNIST's 10,000 test images, the first 8,000 for pre-training and
/// the last 2,000 held out.
pub fn embedded() -> Result<Split> {
    let path = PathBuf::from("<embedded>/t10k-images-idx3-ubyte.gz");
    let images = idx::parse_images(EMBEDDED_IMAGES, &path)?;
    let labels = idx::parse_labels(
        EMBEDDED_LABELS,
        &path.with_file_name("t10k-labels-idx1-ubyte.gz"),
    )?;
    let all = ImageSet::with_labels(images, labels, &path)?;
    Ok(Split {
        train: all.slice(0..EMBEDDED_TRAIN),
        test: all.slice(EMBEDDED_TRAIN..all.len()),
        origin: format!(
            "embedded Fashion-MNIST test set ({EMBEDDED_TRAIN} train / {} held out)",
            all.len() - EMBEDDED_TRAIN
        ),
    })
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(Error::Data {
        path: dir.join(stem),
        what: "not found (neither raw nor .gz); run scripts/fetch-data.sh or check --data-dir"
            .into(),
    })
}

fn idx_pair(dir: &Path, prefix: &str) -> Result<ImageSet> {
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = idx::read_images(&ip)?;
    let labels = idx::read_labels(&lp)?;
    ImageSet::with_labels(images, labels, &lp)
}

/// Loads a dataset: from `dir` when given, otherwise the embedded default (Fashion-MNIST only);
/// a folder of images with the default [`FolderOptions`].
pub fn load(dataset: Dataset, dir: Option<&Path>) -> Result<Split> {
    load_with(dataset, dir, &FolderOptions::default())
}

/// [`load`], reading a folder of images (`Dataset::Images`) as `folder` says. The splits must
/// share one image shape, checked here so that a mismatch stops the run before training rather
/// than at its evaluation.
pub fn load_with(dataset: Dataset, dir: Option<&Path>, folder: &FolderOptions) -> Result<Split> {
    let split = read(dataset, dir, folder)?;
    let shape = |s: &ImageSet| (s.height, s.width, s.channels);
    if shape(&split.train) != shape(&split.test) {
        let (a, b) = (shape(&split.train), shape(&split.test));
        return Err(Error::Data {
            path: dir.map_or("<embedded>".into(), Path::to_path_buf),
            what: format!(
                "the training images are {}×{} with {} channel(s) but the test images are {}×{} with {} channel(s): every split must have one shape",
                a.0, a.1, a.2, b.0, b.1, b.2
            ),
        });
    }
    Ok(split)
}

/// The splits of `dataset` as its files hold them.
fn read(dataset: Dataset, dir: Option<&Path>, folder: &FolderOptions) -> Result<Split> {
    match (dataset, dir) {
        (Dataset::JapaneseVowels | Dataset::Wav, _) => Err(Error::Config(format!(
            "{dataset:?} is a sequence dataset, not images (see data::sequence)"
        ))),
        (Dataset::FashionMnist, None) => embedded(),
        (Dataset::Images, Some(dir)) => folder::load(dir, folder),
        (Dataset::Images, None) => Err(Error::Config(
            "--data images needs --data-dir DIR: a folder of images, one sub-folder per class"
                .into(),
        )),
        (_, None) => Err(Error::Config(format!(
            "{dataset:?} needs --data-dir (run scripts/fetch-data.sh to download it)"
        ))),
        (Dataset::FashionMnist | Dataset::Mnist, Some(dir)) => {
            let dir = match dataset {
                Dataset::Mnist if dir.join("mnist").is_dir() => dir.join("mnist"),
                Dataset::FashionMnist if dir.join("fashion-mnist").is_dir() => {
                    dir.join("fashion-mnist")
                }
                _ => dir.to_path_buf(),
            };
            Ok(Split {
                train: idx_pair(&dir, "train")?,
                test: idx_pair(&dir, "t10k")?,
                origin: format!("{dataset:?} from {}", dir.display()),
            })
        }
        (Dataset::Cifar10, Some(dir)) => {
            let dir = if dir.join("cifar-10-batches-bin").is_dir() {
                dir.join("cifar-10-batches-bin")
            } else {
                dir.to_path_buf()
            };
            let train: Vec<PathBuf> = (1..=5)
                .map(|i| dir.join(format!("data_batch_{i}.bin")))
                .collect();
            Ok(Split {
                train: cifar::read_batches(&train)?,
                test: cifar::read_batches(&[dir.join("test_batch.bin")])?,
                origin: format!("CIFAR-10 from {}", dir.display()),
            })
        }
    }
}
