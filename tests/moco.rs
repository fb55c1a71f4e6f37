//! MoCo's invariants: the key network moves only by the EMA rule, m = 1 freezes it, the queue is a
//! ring of the most recent keys, the first loss is ≈ ln(K+1), and a step is one submission.

mod common;

use common::*;
use contrastive::data;
use contrastive::data::{Augment, GpuImages};
use contrastive::methods::{Examples, Moco, MocoConfig, StepInput};
use contrastive::train::record_step;
use contrastive::{Arena, Gpu};
use rand::SeedableRng;

const BATCH: usize = 8;

fn setup(gpu: &Gpu, config: MocoConfig) -> (Moco, GpuImages, Arena) {
    setup_lr(gpu, config, 0.1)
}

fn setup_lr(gpu: &Gpu, config: MocoConfig, lr: f32) -> (Moco, GpuImages, Arena) {
    let set = data::embedded().unwrap().train.take(64);
    let mut arena = Arena::for_gpu("data", gpu);
    let images = GpuImages::upload(gpu, &mut arena, &set).unwrap();
    let enc = tiny_encoder();
    let opt = sgd(lr);
    let moco = Moco::new(gpu, config, &enc, BATCH, &opt, 3).unwrap();
    (moco, images, arena)
}

fn small(queue: usize, momentum: f32) -> MocoConfig {
    MocoConfig {
        queue,
        momentum,
        dim: 8,
        split_bn: 2,
        ..MocoConfig::default()
    }
}

/// Runs one step on images `first..first+BATCH`; returns (loss, accuracy).
fn step(gpu: &Gpu, moco: &mut Moco, images: &GpuImages, arena: &mut Arena, n: u64) -> (f32, f32) {
    let idx: Vec<u32> = (0..BATCH as u32).map(|i| (i + n as u32 * 3) % 64).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n);
    let out = record_step(
        moco,
        StepInput {
            gpu,
            arena,
            examples: Examples::Images(images),
            indices: &idx,
            augment: &Augment::contrastive(),
            rng: &mut rng,
            step: n,
            dry_run: false,
        },
    )
    .unwrap();
    let s: Vec<f32> = gpu.read(out.stats.region).unwrap();
    (s[0], s[1])
}

#[test]
fn key_network_moves_only_by_the_ema_rule() {
    let gpu = gpu();
    let m = 0.9f32;
    let (mut moco, images, _) = setup(&gpu, small(20, m));
    let mut arena = Arena::for_gpu("step", &gpu);
    step(&gpu, &mut moco, &images, &mut arena, 0);
    let q0: Vec<f32> = gpu.read(moco.query.params.values).unwrap();
    let k0: Vec<f32> = gpu.read(moco.key.params.values).unwrap();
    assert!(
        moco.key.params.grads.is_none(),
        "the key network has no gradient buffer"
    );
    step(&gpu, &mut moco, &images, &mut arena, 1);
    let q1: Vec<f32> = gpu.read(moco.query.params.values).unwrap();
    let k1: Vec<f32> = gpu.read(moco.key.params.values).unwrap();
    assert_ne!(q0, q1, "the query network trains");
    for i in 0..k0.len() {
        let want = m as f64 * k0[i] as f64 + (1.0 - m as f64) * q0[i] as f64;
        assert!(
            (k1[i] as f64 - want).abs() <= 1e-6 + 1e-6 * want.abs(),
            "param {i}: {} vs {want}",
            k1[i]
        );
    }
}

#[test]
fn momentum_one_freezes_the_key_network() {
    let gpu = gpu();
    let (mut moco, images, _) = setup(&gpu, small(20, 1.0));
    let mut arena = Arena::for_gpu("step", &gpu);
    let k0: Vec<f32> = gpu.read(moco.key.params.values).unwrap();
    for n in 0..3 {
        step(&gpu, &mut moco, &images, &mut arena, n);
    }
    let k1: Vec<f32> = gpu.read(moco.key.params.values).unwrap();
    assert!(k0.iter().zip(&k1).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn queue_holds_the_last_k_keys_in_order_after_wrap_around() {
    let gpu = gpu();
    let (k, d) = (20, 8); // K is not a multiple of the batch (8)
    let (mut moco, images, _) = setup(&gpu, small(k, 0.99));
    let mut arena = Arena::for_gpu("step", &gpu);
    let mut keys: Vec<Vec<f32>> = vec![];
    for n in 0..4 {
        step(&gpu, &mut moco, &images, &mut arena, n);
        let kt = moco.last_keys[0];
        let kv: Vec<f32> = gpu.read(kt.region).unwrap();
        keys.extend(kv.chunks(d).map(|r| r.to_vec()));
    }
    // 32 keys went in; rows hold key j at row j % K, the last K = 20 keys being 12..32.
    let queue: Vec<f32> = gpu.read(moco.queue.rows.region).unwrap();
    for j in 12..32 {
        let row = &queue[(j % k) * d..(j % k + 1) * d];
        assert_eq!(row, &keys[j][..], "key {j} at row {}", j % k);
    }
    assert_eq!(moco.queue.ptr, 32 % k);
}

/// The queue starts as random unit vectors, which an untrained query barely matches, so the
/// first loss is far below ln(K+1); once the queue holds only real keys of the (untrained) key
/// network, positives and negatives are indistinguishable and the loss is ≈ ln(K+1) (REFERENCE §1).
#[test]
fn loss_is_close_to_ln_k_plus_one_once_the_queue_holds_real_keys_and_a_step_is_one_submission() {
    let gpu = gpu();
    let k = 50;
    let (mut moco, images, _) = setup_lr(&gpu, small(k, 0.99), 1e-6);
    let mut arena = Arena::for_gpu("step", &gpu);
    let want = ((k + 1) as f32).ln();
    let (first, _) = step(&gpu, &mut moco, &images, &mut arena, 0);
    assert!(first < want, "first loss {first} against a random queue");
    let fill = k.div_ceil(BATCH) as u64;
    let mut loss = first;
    for n in 1..=fill {
        let before = gpu.counters();
        loss = step(&gpu, &mut moco, &images, &mut arena, n).0;
        let d = gpu.counters() - before;
        assert_eq!(d.submissions, 1, "one submission per training step");
        if n >= 2 {
            assert_eq!(
                d.buffers_created, 0,
                "no GPU buffer created after the first steps"
            );
        }
    }
    assert!(
        (loss - want).abs() < 0.1 * want,
        "loss {loss} with a full queue, ln(K+1) = {want}"
    );
}

#[test]
fn impossible_settings_are_refused() {
    for (cfg, needle) in [
        (small(0, 0.9), "--queue"),
        (small(20, 1.5), "--momentum"),
        (
            MocoConfig {
                temperature: 0.0,
                ..small(20, 0.9)
            },
            "--temperature",
        ),
        (
            MocoConfig {
                split_bn: 3,
                ..small(20, 0.9)
            },
            "--split-bn",
        ),
    ] {
        let e = cfg.validate(BATCH).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}
