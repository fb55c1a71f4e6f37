//! Batch gathering and augmentation on the GPU (`shaders/augment.wgsl`).
//!
//! The dataset is uploaded once as bytes; each step gathers a batch by index and augments it:
//! random resized crop, horizontal flip, small translation, brightness/contrast jitter and Gaussian
//! noise, each switchable. Per-sample choices are drawn on the host from a seeded RNG (8 words per
//! sample) and per-pixel noise is a counter-based hash on the GPU, so batches are reproducible.

use rand::Rng;

use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::kernel;
use crate::memory::{Arena, Tensor};

use super::grid_1d;

const AUGMENT: crate::gpu::Kernel = kernel!("augment.wgsl", "augment", 3, words = 0b11);

/// Words per sample in the parameter buffer.
pub const SAMPLE_WORDS: usize = 8;

/// Which augmentations run, and how strong they are.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random resized crop: fraction of the image area kept, drawn uniformly in this range, with
    /// an aspect ratio log-uniform in [3/4, 4/3]. `None` keeps the whole image.
    pub crop_scale: Option<(f32, f32)>,
    /// Horizontal flip with probability 1/2.
    pub flip: bool,
    /// Shift of the crop box by up to this many pixels each way (uncovered pixels are 0).
    pub translate: f32,
    /// Brightness factor drawn in [1 − b, 1 + b].
    pub brightness: f32,
    /// Contrast factor drawn in [1 − c, 1 + c], around the dataset mean.
    pub contrast: f32,
    /// Standard deviation of additive Gaussian noise, in [0, 1] pixel units.
    pub noise: f32,
}

impl Augment {
    /// No augmentation: the batch is the images themselves (normalised).
    pub fn none() -> Self {
        Augment {
            crop_scale: None,
            flip: false,
            translate: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            noise: 0.0,
        }
    }

    /// The contrastive default for small greyscale or colour images.
    pub fn contrastive() -> Self {
        Augment {
            crop_scale: Some((0.35, 1.0)),
            flip: true,
            translate: 2.0,
            brightness: 0.4,
            contrast: 0.4,
            noise: 0.03,
        }
    }

    /// Draws the per-sample parameters for images `indices` of an `h`×`w` set.
    pub fn sample(&self, rng: &mut impl Rng, indices: &[u32], h: usize, w: usize) -> Vec<u32> {
        let (hf, wf) = (h as f32, w as f32);
        let mut out = Vec::with_capacity(indices.len() * SAMPLE_WORDS);
        for &index in indices {
            let (mut cw, mut ch) = (wf, hf);
            let (mut x0, mut y0) = (0.0, 0.0);
            if let Some((lo, hi)) = self.crop_scale {
                let area = rng.random_range(lo..=hi) * hf * wf;
                let ratio = rng.random_range((0.75f32).ln()..=(4.0f32 / 3.0).ln()).exp();
                cw = (area * ratio).sqrt().min(wf);
                ch = (area / ratio).sqrt().min(hf);
                x0 = rng.random_range(0.0..=wf - cw);
                y0 = rng.random_range(0.0..=hf - ch);
            }
            if self.translate > 0.0 {
                x0 += rng.random_range(-self.translate..=self.translate);
                y0 += rng.random_range(-self.translate..=self.translate);
            }
            let flip = self.flip && rng.random_bool(0.5);
            let jitter = |rng: &mut dyn rand::RngCore, s: f32| {
                if s > 0.0 {
                    rng.random_range(1.0 - s..=1.0 + s)
                } else {
                    1.0
                }
            };
            let brightness = jitter(rng, self.brightness);
            let contrast = jitter(rng, self.contrast);
            out.extend_from_slice(&[
                f32::to_bits(x0),
                f32::to_bits(y0),
                f32::to_bits(cw),
                f32::to_bits(ch),
                flip as u32,
                f32::to_bits(brightness),
                f32::to_bits(contrast),
                index,
            ]);
        }
        out
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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    in_h: u32,
    in_w: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    seed: u32,
    _pad: u32,
    noise_std: f32,
    mean: f32,
    inv_std: f32,
    _pad2: f32,
}

/// Writes the augmented batch `out` [B, H', W', C] for the samples in `samples` (u32 words from
/// [`Augment::sample`]). `seed` varies the per-pixel noise from call to call.
pub fn augment(
    gpu: &Gpu,
    images: &GpuImages,
    samples: &Tensor,
    out: &Tensor,
    noise_std: f32,
    seed: u32,
) -> Result<()> {
    let d = out.shape.dims();
    if d.len() != 4 || d[3] != images.channels || samples.numel() != d[0] * SAMPLE_WORDS {
        return Err(Error::shape(
            "augment",
            format!(
                "output {:?} and {} sample words for images of {} channels",
                out.shape,
                samples.numel(),
                images.channels
            ),
        ));
    }
    let params = Params {
        n: out.numel() as u32,
        in_h: images.height as u32,
        in_w: images.width as u32,
        channels: images.channels as u32,
        out_h: d[1] as u32,
        out_w: d[2] as u32,
        seed,
        _pad: 0,
        noise_std,
        mean: images.mean,
        inv_std: 1.0 / images.std,
        _pad2: 0.0,
    };
    gpu.dispatch(
        &AUGMENT,
        &params,
        &[images.data, samples.region, out.region],
        grid_1d(out.numel(), 256),
    )
}

/// CPU reference of [`augment`] without noise (f64), for `images` in NHWC bytes.
pub fn reference(
    set: &ImageSet,
    samples: &[u32],
    out_h: usize,
    out_w: usize,
    mean: f32,
    std: f32,
) -> Vec<f64> {
    let (h, w, c) = (set.height as i64, set.width as i64, set.channels);
    let px = |img: usize, y: i64, x: i64, ch: usize| -> f64 {
        if y < 0 || x < 0 || y >= h || x >= w {
            return 0.0;
        }
        set.images[((img * h as usize + y as usize) * w as usize + x as usize) * c + ch] as f64
            / 255.0
    };
    let mut out = vec![];
    for s in samples.chunks(SAMPLE_WORDS) {
        let f = |i: usize| f32::from_bits(s[i]) as f64;
        let (x0, y0, cw, ch, flip, br, co, img) =
            (f(0), f(1), f(2), f(3), s[4], f(5), f(6), s[7] as usize);
        for v in 0..out_h {
            for u in 0..out_w {
                let uu = if flip != 0 { out_w - 1 - u } else { u };
                let sx = x0 + (uu as f64 + 0.5) * cw / out_w as f64 - 0.5;
                let sy = y0 + (v as f64 + 0.5) * ch / out_h as f64 - 0.5;
                let (fx, fy) = (sx.floor(), sy.floor());
                let (ax, ay) = (sx - fx, sy - fy);
                let (xi, yi) = (fx as i64, fy as i64);
                for k in 0..c {
                    let top = px(img, yi, xi, k) * (1.0 - ax) + px(img, yi, xi + 1, k) * ax;
                    let bot = px(img, yi + 1, xi, k) * (1.0 - ax) + px(img, yi + 1, xi + 1, k) * ax;
                    let x = top * (1.0 - ay) + bot * ay;
                    let m = mean as f64;
                    let x = ((x * br - m) * co + m).clamp(0.0, 1.0);
                    out.push((x - m) / std as f64);
                }
            }
        }
    }
    out
}
