//! Batch gathering and augmentation on the GPU (`shaders/augment.wgsl`), and its CPU reference.
//!
//! The dataset is uploaded once as bytes; each step gathers a batch by index and augments it:
//! random resized crop, horizontal flip, small translation, colour jitter (brightness, contrast,
//! saturation, hue, in a random order), random grayscale and Gaussian noise, each switchable, then
//! normalises each channel by the dataset's statistics. Per-sample choices are drawn on the host
//! from a seeded RNG ([`SAMPLE_WORDS`] words per sample, see [`crate::data::Augment`]) and
//! per-pixel noise is a counter-based hash on the GPU, so batches are reproducible.

use crate::data::gpu_images::MAX_CHANNELS;
use crate::data::{GpuImages, ImageSet, PixelStats};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;

const AUGMENT: crate::gpu::Kernel = kernel!("augment.wgsl", "augment", 3, words = 0b11);

/// Words per sample in the parameter buffer.
pub const SAMPLE_WORDS: usize = 12;

/// The colour jitter's operations, as the sample's order word names them (2 bits each).
pub const BRIGHTNESS: u32 = 0;
pub const CONTRAST: u32 = 1;
pub const SATURATION: u32 = 2;
pub const HUE: u32 = 3;

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
    pivot: f32,
    _pad2: [f32; 2],
    mean: [f32; 4],
    inv_std: [f32; 4],
}

/// Writes the augmented batch `out` [B, H', W', C] for the samples in `samples` (u32 words from
/// [`crate::data::Augment::sample`]). `seed` varies the per-pixel noise from call to call.
pub fn augment(
    gpu: &Gpu,
    images: &GpuImages,
    samples: &Tensor,
    out: &Tensor,
    noise_std: f32,
    seed: u32,
) -> Result<()> {
    let d = out.shape.dims();
    if d.len() != 4
        || d[3] != images.channels
        || images.channels > MAX_CHANNELS
        || samples.numel() != d[0] * SAMPLE_WORDS
    {
        return Err(Error::shape(
            "augment",
            format!(
                "output {:?} and {} sample words for images of {} channels (at most {MAX_CHANNELS})",
                out.shape,
                samples.numel(),
                images.channels
            ),
        ));
    }
    let (mut mean, mut inv_std) = ([0f32; 4], [0f32; 4]);
    for c in 0..images.channels {
        mean[c] = images.stats.mean[c];
        inv_std[c] = 1.0 / images.stats.std[c];
    }
    let params = Params {
        n: (d[0] * d[1] * d[2]) as u32,
        in_h: images.height as u32,
        in_w: images.width as u32,
        channels: images.channels as u32,
        out_h: d[1] as u32,
        out_w: d[2] as u32,
        seed,
        _pad: 0,
        noise_std,
        pivot: images.stats.grey(),
        _pad2: [0.0; 2],
        mean,
        inv_std,
    };
    gpu.dispatch(
        &AUGMENT,
        &params,
        &[images.data, samples.region, out.region],
        grid_1d(d[0] * d[1] * d[2], 256),
    )
}

/// torchvision's grayscale weights.
fn luma(v: &[f64]) -> f64 {
    0.2989 * v[0] + 0.587 * v[1] + 0.114 * v[2]
}

/// `v` (RGB) with its hue rotated by `shift` turns, as torchvision's `adjust_hue`.
fn rotate_hue(v: &mut [f64], shift: f64) {
    let (r, g, b) = (v[0], v[1], v[2]);
    let maxc = r.max(g).max(b);
    let cr = maxc - r.min(g).min(b);
    if cr == 0.0 {
        return;
    }
    let s = cr / maxc;
    let (dr, dg, db) = ((maxc - r) / cr, (maxc - g) / cr, (maxc - b) / cr);
    let h = if maxc == r {
        db - dg
    } else if maxc == g {
        2.0 + dr - db
    } else {
        4.0 + dg - dr
    };
    let h = ((h / 6.0 + 1.0).rem_euclid(1.0) + shift).rem_euclid(1.0) * 6.0;
    let sector = h.floor();
    let f = h - sector;
    let p = (maxc * (1.0 - s)).clamp(0.0, 1.0);
    let q = (maxc * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (maxc * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    let rgb = match sector as u32 % 6 {
        0 => [maxc, t, p],
        1 => [q, maxc, p],
        2 => [p, maxc, t],
        3 => [p, q, maxc],
        4 => [t, p, maxc],
        _ => [maxc, p, q],
    };
    v.copy_from_slice(&rgb);
}

/// CPU reference of [`augment`] without noise (f64), for `set` normalised by `stats`.
pub fn reference(
    set: &ImageSet,
    samples: &[u32],
    out_h: usize,
    out_w: usize,
    stats: &PixelStats,
) -> Vec<f64> {
    let (h, w, c) = (set.height as i64, set.width as i64, set.channels);
    let px = |img: usize, y: i64, x: i64, ch: usize| -> f64 {
        if y < 0 || x < 0 || y >= h || x >= w {
            return 0.0;
        }
        set.images[((img * h as usize + y as usize) * w as usize + x as usize) * c + ch] as f64
            / 255.0
    };
    let pivot = stats.grey() as f64;
    let rgb = c == 3;
    let mut out = vec![];
    for s in samples.chunks(SAMPLE_WORDS) {
        let f = |i: usize| f32::from_bits(s[i]) as f64;
        let (x0, y0, cw, ch, flip, img) = (f(0), f(1), f(2), f(3), s[4], s[7] as usize);
        let (brightness, contrast, saturation, hue) = (f(5), f(6), f(8), f(9));
        let (order, grayscale) = (s[10], s[11]);
        for v in 0..out_h {
            for u in 0..out_w {
                let uu = if flip != 0 { out_w - 1 - u } else { u };
                let sx = x0 + (uu as f64 + 0.5) * cw / out_w as f64 - 0.5;
                let sy = y0 + (v as f64 + 0.5) * ch / out_h as f64 - 0.5;
                let (fx, fy) = (sx.floor(), sy.floor());
                let (ax, ay) = (sx - fx, sy - fy);
                let (xi, yi) = (fx as i64, fy as i64);
                let mut x: Vec<f64> = (0..c)
                    .map(|k| {
                        let top = px(img, yi, xi, k) * (1.0 - ax) + px(img, yi, xi + 1, k) * ax;
                        let bot =
                            px(img, yi + 1, xi, k) * (1.0 - ax) + px(img, yi + 1, xi + 1, k) * ax;
                        top * (1.0 - ay) + bot * ay
                    })
                    .collect();
                for k in 0..4 {
                    match (order >> (2 * k)) & 3 {
                        BRIGHTNESS if brightness != 1.0 => {
                            x.iter_mut()
                                .for_each(|x| *x = (*x * brightness).clamp(0.0, 1.0));
                        }
                        CONTRAST if contrast != 1.0 => x
                            .iter_mut()
                            .for_each(|x| *x = ((*x - pivot) * contrast + pivot).clamp(0.0, 1.0)),
                        SATURATION if rgb && saturation != 1.0 => {
                            let g = luma(&x);
                            x.iter_mut()
                                .for_each(|x| *x = (g + (*x - g) * saturation).clamp(0.0, 1.0));
                        }
                        HUE if rgb && hue != 0.0 => rotate_hue(&mut x, hue),
                        _ => {}
                    }
                }
                if rgb && grayscale != 0 {
                    let g = luma(&x);
                    x.fill(g);
                }
                for (k, x) in x.into_iter().enumerate() {
                    out.push((x - stats.mean[k] as f64) / stats.std[k] as f64);
                }
            }
        }
    }
    out
}
