//! Batch gathering and augmentation on the GPU (`shaders/augment.wgsl`), and its CPU reference.
//!
//! The dataset is uploaded once as bytes; each step gathers a batch by index and augments it:
//! random resized crop, horizontal flip, small translation, brightness/contrast jitter and Gaussian
//! noise, each switchable. Per-sample choices are drawn on the host from a seeded RNG (8 words per
//! sample, see [`crate::data::Augment`]) and per-pixel noise is a counter-based hash on the GPU, so
//! batches are reproducible.

use crate::data::{GpuImages, ImageSet};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;

const AUGMENT: crate::gpu::Kernel = kernel!("augment.wgsl", "augment", 3, words = 0b11);

/// Words per sample in the parameter buffer.
pub const SAMPLE_WORDS: usize = 8;

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
