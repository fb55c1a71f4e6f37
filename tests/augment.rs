mod common;

use common::*;
use contrastive::data::ImageSet;
use contrastive::data::{Augment, GpuImages};
use contrastive::kernels::augment::{self, SAMPLE_WORDS};
use rand::SeedableRng;

fn images(n: usize, h: usize, w: usize, c: usize) -> ImageSet {
    ImageSet {
        images: (0..n * h * w * c).map(|i| (i * 37 % 256) as u8).collect(),
        labels: vec![0; n],
        height: h,
        width: w,
        channels: c,
        classes: 1,
        names: Vec::new(),
    }
}

/// The augmented batch of `samples` from `g`, `oh × ow` each.
fn run(
    h: &mut Harness,
    g: &GpuImages,
    samples: &[u32],
    (oh, ow): (usize, usize),
    noise: f32,
    seed: u32,
) -> Vec<f32> {
    let b = samples.len() / SAMPLE_WORDS;
    let st = h.upload_u32([samples.len()], samples);
    let out = h.output([b, oh, ow, g.channels]);
    augment::augment(h.gpu, g, &st, &out, noise, seed).unwrap();
    h.read(&out)
}

#[test]
fn no_augmentation_returns_the_normalised_images() {
    for_cases(
        &gpu(),
        [(28, 28, 1), (5, 7, 3), (1, 1, 1)],
        |k, (h, w, c)| {
            let set = images(4, h, w, c);
            let g = GpuImages::upload(k.gpu, &mut k.arena, &set).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let samples = Augment::none().sample(&mut rng, &[3, 0, 2], h, w);
            let got = run(k, &g, &samples, (h, w), 0.0, 0);
            let d = h * w * c;
            let want: Vec<f64> = [3, 0, 2]
                .iter()
                .flat_map(|&i| set.images[i * d..(i + 1) * d].to_vec())
                .map(|b| (b as f64 / 255.0 - g.mean as f64) / g.std as f64)
                .collect();
            k.expect_values("images", &got, &want, Tol::new(1e-4, 1e-5));
        },
    );
}

#[test]
fn random_crops_flips_and_jitter_match_the_reference() {
    let cases = [(28, 28, 1, 28, 28), (9, 7, 3, 5, 6), (32, 32, 3, 17, 17)];
    for_cases(&gpu(), cases, |k, (h, w, c, oh, ow)| {
        let set = images(6, h, w, c);
        let g = GpuImages::upload(k.gpu, &mut k.arena, &set).unwrap();
        let aug = Augment {
            noise: 0.0,
            ..Augment::contrastive()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let samples = aug.sample(&mut rng, &[5, 1, 1, 0, 4], h, w);
        let got = run(k, &g, &samples, (oh, ow), 0.0, 0);
        let want = augment::reference(&set, &samples, oh, ow, g.mean, g.std);
        k.expect_values("augmented", &got, &want, Tol::new(1e-3, 1e-4));
    });
}

#[test]
fn augmentation_is_reproducible_and_noise_has_the_asked_std() {
    let gpu = gpu();
    let mut k = Harness::new(&gpu, "noise");
    let mut set = images(64, 28, 28, 1);
    set.images.fill(128);
    let g = GpuImages::upload(&gpu, &mut k.arena, &set).unwrap();
    let idx: Vec<u32> = (0..64).collect();
    let aug = Augment::contrastive();
    let draw = |seed| {
        aug.sample(
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            &idx,
            28,
            28,
        )
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
    let none = Augment::none().sample(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &idx, 28, 28);
    let a = run(&mut k, &g, &none, (28, 28), 0.1, 11);
    let b = run(&mut k, &g, &none, (28, 28), 0.1, 11);
    let c = run(&mut k, &g, &none, (28, 28), 0.1, 12);
    assert_eq!(a, b, "same seed, same batch");
    assert_ne!(a, c, "another seed, other noise");
    // The constant image has std 0, so normalisation divides by the 1e-6 floor: undo it.
    let noise: Vec<f64> = a.iter().map(|&x| x as f64 * g.std as f64).collect();
    let mean = noise.iter().sum::<f64>() / noise.len() as f64;
    let std = (noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / noise.len() as f64).sqrt();
    assert!(mean.abs() < 0.005, "noise mean {mean}");
    assert!((std - 0.1).abs() < 0.005, "noise std {std}");
}
