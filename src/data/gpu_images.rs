//! A dataset's images on the GPU: uploaded once as packed bytes, with the input normalisation the
//! augmentation kernel applies.

use super::ImageSet;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::memory::Arena;

/// The input normalisation an encoder is trained with: pixels in [0, 1] minus `mean`, over `std`.
/// Always the training split's statistics, for every set the encoder sees (held-out data and
/// embedded folders included), and stored in checkpoints (`input.mean`, `input.std`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalisation {
    pub mean: f32,
    pub std: f32,
}

impl Normalisation {
    /// The pixel mean and standard deviation of `set`, over every channel.
    pub fn of(set: &ImageSet) -> Normalisation {
        let n = set.images.len().max(1) as f64;
        let mean = set.images.iter().map(|&b| b as f64).sum::<f64>() / n / 255.0;
        let var = set
            .images
            .iter()
            .map(|&b| (b as f64 / 255.0 - mean).powi(2))
            .sum::<f64>()
            / n;
        Normalisation {
            mean: mean as f32,
            std: var.sqrt().max(1e-6) as f32,
        }
    }
}

/// A dataset's images on the GPU, uploaded once.
pub struct GpuImages {
    pub data: Region,
    pub len: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// Pixel mean and standard deviation in [0, 1] units, for normalisation.
    pub mean: f32,
    pub std: f32,
}

impl GpuImages {
    /// Uploads `set`, normalised by its own statistics (a training split).
    pub fn upload(gpu: &Gpu, arena: &mut Arena, set: &ImageSet) -> Result<GpuImages> {
        Self::upload_normalised(gpu, arena, set, Normalisation::of(set))
    }

    /// Uploads `set`, normalised by `norm` (the training split's, for held-out data).
    pub fn upload_normalised(
        gpu: &Gpu,
        arena: &mut Arena,
        set: &ImageSet,
        norm: Normalisation,
    ) -> Result<GpuImages> {
        if set.is_empty() {
            return Err(Error::Config("the dataset has no images".into()));
        }
        let mut words = vec![0u32; set.images.len().div_ceil(4)];
        for (i, &b) in set.images.iter().enumerate() {
            words[i / 4] |= (b as u32) << ((i % 4) * 8);
        }
        let data = arena.alloc(gpu, words.len())?;
        gpu.upload(data, &words)?;
        Ok(GpuImages {
            data,
            len: set.len(),
            height: set.height,
            width: set.width,
            channels: set.channels,
            mean: norm.mean,
            std: norm.std,
        })
    }

    /// The normalisation these images are fed to the encoder with.
    pub fn normalisation(&self) -> Normalisation {
        Normalisation {
            mean: self.mean,
            std: self.std,
        }
    }
}
