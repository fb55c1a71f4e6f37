//! A dataset's images on the GPU: uploaded once as packed bytes, with the pixel statistics the
//! augmentation kernel normalises by.

use super::ImageSet;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::memory::Arena;

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
    pub fn upload(gpu: &Gpu, arena: &mut Arena, set: &ImageSet) -> Result<GpuImages> {
        if set.is_empty() {
            return Err(Error::Config("the dataset has no images".into()));
        }
        let mut words = vec![0u32; set.images.len().div_ceil(4)];
        for (i, &b) in set.images.iter().enumerate() {
            words[i / 4] |= (b as u32) << ((i % 4) * 8);
        }
        let data = arena.alloc(gpu, words.len())?;
        gpu.upload(data, &words)?;
        let n = set.images.len() as f64;
        let mean = set.images.iter().map(|&b| b as f64).sum::<f64>() / n / 255.0;
        let var = set
            .images
            .iter()
            .map(|&b| (b as f64 / 255.0 - mean).powi(2))
            .sum::<f64>()
            / n;
        Ok(GpuImages {
            data,
            len: set.len(),
            height: set.height,
            width: set.width,
            channels: set.channels,
            mean: mean as f32,
            std: var.sqrt().max(1e-6) as f32,
        })
    }
}
