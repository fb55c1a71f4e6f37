//! A dataset's images on the GPU: uploaded once as packed bytes, with the per-channel pixel
//! statistics the augmentation kernel normalises by.

use super::ImageSet;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::memory::Arena;

/// Channels the augmentation kernel normalises separately.
pub const MAX_CHANNELS: usize = 4;

/// Per-channel pixel mean and standard deviation in [0, 1] units: what the network's input is
/// normalised by. A held-out set is normalised with its training set's statistics.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PixelStats {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl PixelStats {
    /// The statistics of `set`, channel by channel (a constant channel's std is floored at 1e-6).
    pub fn of(set: &ImageSet) -> PixelStats {
        let c = set.channels.max(1);
        let mut sum = vec![0f64; c];
        for px in set.images.chunks_exact(c) {
            for (s, &b) in sum.iter_mut().zip(px) {
                *s += b as f64 / 255.0;
            }
        }
        let n = (set.images.len() / c).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let mut var = vec![0f64; c];
        for px in set.images.chunks_exact(c) {
            for ((v, &b), m) in var.iter_mut().zip(px).zip(&mean) {
                *v += (b as f64 / 255.0 - m).powi(2);
            }
        }
        PixelStats {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: var
                .iter()
                .map(|v| (v / n).sqrt().max(1e-6) as f32)
                .collect(),
        }
    }

    /// The mean grey level: the luma of the mean colour (torchvision's weights) for RGB, the mean
    /// over the channels otherwise. Contrast jitter pivots around it.
    pub fn grey(&self) -> f32 {
        match self.mean[..] {
            [r, g, b] => 0.2989 * r + 0.587 * g + 0.114 * b,
            ref m => m.iter().sum::<f32>() / m.len().max(1) as f32,
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
    /// What the augmentation kernel normalises by (one entry per channel).
    pub stats: PixelStats,
}

impl GpuImages {
    /// Uploads `set`, normalised by its own statistics (a training set).
    pub fn upload(gpu: &Gpu, arena: &mut Arena, set: &ImageSet) -> Result<GpuImages> {
        GpuImages::upload_normalised(gpu, arena, set, PixelStats::of(set))
    }

    /// Uploads `set`, normalised by `stats` (a held-out set, by its training set's statistics).
    pub fn upload_normalised(
        gpu: &Gpu,
        arena: &mut Arena,
        set: &ImageSet,
        stats: PixelStats,
    ) -> Result<GpuImages> {
        if set.is_empty() {
            return Err(Error::Config("the dataset has no images".into()));
        }
        if set.channels > MAX_CHANNELS
            || stats.mean.len() != set.channels
            || stats.std.len() != set.channels
        {
            return Err(Error::Config(format!(
                "images of {} channel(s) with statistics of {}: at most {MAX_CHANNELS} channels, one statistic each",
                set.channels,
                stats.mean.len()
            )));
        }
        let data = arena.alloc(gpu, set.images.len().div_ceil(4))?;
        // Packed four bytes to a little-endian word, a slice at a time, so that the host never
        // holds a second copy of the whole set.
        const SLICE_WORDS: usize = 1 << 20;
        for (k, bytes) in set.images.chunks(4 * SLICE_WORDS).enumerate() {
            let words: Vec<u32> = bytes
                .chunks(4)
                .map(|b| {
                    let mut w = [0u8; 4];
                    w[..b.len()].copy_from_slice(b);
                    u32::from_le_bytes(w)
                })
                .collect();
            gpu.upload(data.slice(k * SLICE_WORDS, words.len()), &words)?;
        }
        Ok(GpuImages {
            data,
            len: set.len(),
            height: set.height,
            width: set.width,
            channels: set.channels,
            stats,
        })
    }
}
