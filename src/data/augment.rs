//! The augmentation policy: which augmentations run and how strong they are, and the per-sample
//! parameters drawn on the host from a seeded RNG (the GPU side is [`crate::kernels::augment`]).

use rand::seq::SliceRandom;
use rand::Rng;

use crate::kernels::augment::{BRIGHTNESS, CONTRAST, HUE, SAMPLE_WORDS, SATURATION};

/// Which augmentations run, and how strong they are. The colour jitter follows torchvision's
/// `ColorJitter` (each factor drawn uniformly, the four operations in a random order, each result
/// clamped to [0, 1]) except that contrast pivots around the dataset's mean grey level rather
/// than each image's. Saturation, hue and grayscale change colour images only.
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
    /// Contrast factor drawn in [1 − c, 1 + c], around the dataset's mean grey level.
    pub contrast: f32,
    /// Saturation factor drawn in [1 − s, 1 + s].
    #[serde(default)]
    pub saturation: f32,
    /// Hue rotation drawn in [−h, h] turns (h ≤ 0.5).
    #[serde(default)]
    pub hue: f32,
    /// Probability that a sample's colour is jittered at all.
    #[serde(default = "always")]
    pub jitter_p: f32,
    /// Probability that a sample is made grayscale.
    #[serde(default)]
    pub grayscale_p: f32,
    /// Standard deviation of additive Gaussian noise, in [0, 1] pixel units.
    pub noise: f32,
}

fn always() -> f32 {
    1.0
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
            saturation: 0.0,
            hue: 0.0,
            jitter_p: 0.0,
            grayscale_p: 0.0,
            noise: 0.0,
        }
    }

    /// The contrastive default for small greyscale or colour images: MoCo v2's colour
    /// augmentation (jitter 0.4, 0.4, 0.4, 0.1 with probability 0.8, grayscale with probability
    /// 0.2) beside a crop, a flip, a small shift and noise.
    pub fn contrastive() -> Self {
        Augment {
            crop_scale: Some((0.35, 1.0)),
            flip: true,
            translate: 2.0,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
            jitter_p: 0.8,
            grayscale_p: 0.2,
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
            let factor = |rng: &mut dyn rand::RngCore, s: f32| {
                if s > 0.0 {
                    rng.random_range(1.0 - s..=1.0 + s)
                } else {
                    1.0
                }
            };
            let mut order = [BRIGHTNESS, CONTRAST, SATURATION, HUE];
            let (mut brightness, mut contrast, mut saturation, mut hue) = (1.0, 1.0, 1.0, 0.0);
            if self.jitter_p > 0.0 && rng.random_bool(self.jitter_p.min(1.0) as f64) {
                order.shuffle(rng);
                brightness = factor(rng, self.brightness);
                contrast = factor(rng, self.contrast);
                saturation = factor(rng, self.saturation);
                if self.hue > 0.0 {
                    hue = rng.random_range(-self.hue..=self.hue);
                }
            }
            let grayscale =
                self.grayscale_p > 0.0 && rng.random_bool(self.grayscale_p.min(1.0) as f64);
            out.extend_from_slice(&[
                f32::to_bits(x0),
                f32::to_bits(y0),
                f32::to_bits(cw),
                f32::to_bits(ch),
                flip as u32,
                f32::to_bits(brightness),
                f32::to_bits(contrast),
                index,
                f32::to_bits(saturation),
                f32::to_bits(hue),
                order.iter().enumerate().map(|(k, &op)| op << (2 * k)).sum(),
                grayscale as u32,
            ]);
        }
        out
    }
}
