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
                .enumerate()
                .map(|(i, b)| {
                    let (m, s) = (g.stats.mean[i % c], g.stats.std[i % c]);
                    (b as f64 / 255.0 - m as f64) / s as f64
                })
                .collect();
            k.expect_values("images", &got, &want, Tol::new(1e-4, 1e-5));
        },
    );
}

/// Word `i` of every sample in `samples` set to `value`.
fn set_word(samples: &mut [u32], i: usize, value: u32) {
    for s in samples.chunks_mut(SAMPLE_WORDS) {
        s[i] = value;
    }
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
        let want = augment::reference(&set, &samples, oh, ow, &g.stats);
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
    let noise: Vec<f64> = a
        .iter()
        .map(|&x| x as f64 * g.stats.std[0] as f64)
        .collect();
    let mean = noise.iter().sum::<f64>() / noise.len() as f64;
    let std = (noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / noise.len() as f64).sqrt();
    assert!(mean.abs() < 0.005, "noise mean {mean}");
    assert!((std - 0.1).abs() < 0.005, "noise std {std}");
}

/// Strong colour augmentation: every sample jittered, half of them grayscale, hue up to half a turn.
fn strong() -> Augment {
    Augment {
        noise: 0.0,
        hue: 0.5,
        saturation: 0.9,
        jitter_p: 1.0,
        grayscale_p: 0.5,
        ..Augment::contrastive()
    }
}

#[test]
fn colour_jitter_and_grayscale_match_the_reference_on_rgb_and_grey_images() {
    let cases = [(8, 8, 3, 8, 8), (9, 7, 3, 5, 6), (8, 8, 1, 8, 8)];
    for_cases(&gpu(), cases, |k, (h, w, c, oh, ow)| {
        let mut set = images(6, h, w, c);
        // Spread colours: grey, saturated and clipped pixels all occur.
        for (i, p) in set.images.iter_mut().enumerate() {
            *p = ((i * 7919) % 256) as u8;
        }
        let g = GpuImages::upload(k.gpu, &mut k.arena, &set).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let samples = strong().sample(&mut rng, &[0, 1, 2, 3, 4, 5, 0, 1], h, w);
        let got = run(k, &g, &samples, (oh, ow), 0.0, 0);
        let want = augment::reference(&set, &samples, oh, ow, &g.stats);
        k.expect_values("jittered", &got, &want, Tol::new(1e-3, 1e-4));
        if c == 1 {
            // Saturation, hue and grayscale leave one channel as it is.
            let mut plain = samples.clone();
            set_word(&mut plain, 8, 1f32.to_bits());
            set_word(&mut plain, 9, 0);
            set_word(&mut plain, 11, 0);
            let without = run(k, &g, &plain, (oh, ow), 0.0, 0);
            k.expect_values(
                "grey, no colour ops",
                &got,
                &without.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                Tol::EXACT,
            );
        }
    });
}

#[test]
fn the_colour_reference_follows_torchvision() {
    // One pure red pixel, statistics that leave values as they are.
    let set = ImageSet {
        images: vec![255, 0, 0],
        labels: vec![0],
        height: 1,
        width: 1,
        channels: 3,
        classes: 0,
        names: vec![],
    };
    let stats = contrastive::data::PixelStats {
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let base = Augment::none().sample(&mut rng, &[0], 1, 1);
    let with = |edit: &dyn Fn(&mut [u32])| {
        let mut s = base.clone();
        edit(&mut s);
        augment::reference(&set, &s, 1, 1, &stats)
    };
    let close = |got: Vec<f64>, want: [f64; 3]| {
        assert!(
            got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{got:?} != {want:?}"
        )
    };
    close(with(&|_| {}), [1.0, 0.0, 0.0]);
    // A third of a turn takes red to green, two thirds to blue.
    close(with(&|s| s[9] = (1.0f32 / 3.0).to_bits()), [0.0, 1.0, 0.0]);
    close(with(&|s| s[9] = (-1.0f32 / 3.0).to_bits()), [0.0, 0.0, 1.0]);
    // Saturation 0 and grayscale both give the luma, 0.2989 for red.
    close(with(&|s| s[8] = 0f32.to_bits()), [0.2989; 3]);
    close(with(&|s| s[11] = 1), [0.2989; 3]);
    // Brightness then contrast (order word 0b..0100) or contrast then brightness (0b..0001),
    // around the pivot, the grey of the (zero) mean: the order matters once values clip.
    let bc = |order: u32| {
        with(&|s| {
            s[5] = 0.5f32.to_bits();
            s[6] = 3.0f32.to_bits();
            s[10] = order;
        })
    };
    close(bc(0b11_10_01_00), [1.0, 0.0, 0.0]);
    close(bc(0b11_10_00_01), [0.5, 0.0, 0.0]);
}
