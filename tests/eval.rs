//! The evaluation protocol: frozen encoder (weights and BatchNorm statistics bit-identical before
//! and after), kNN and linear probe sanity on separable data.

mod common;

use common::*;
use contrastive::autodiff::Graph;
use contrastive::data;
use contrastive::data::GpuImages;
use contrastive::eval::{self, FeatureSet};
use contrastive::methods::Network;
use contrastive::Arena;

#[test]
fn probes_leave_the_encoder_bit_identical() {
    let gpu = gpu();
    let split = data::embedded().unwrap();
    let (train, test) = (split.train.take(300), split.test.take(100));
    let mut arena = Arena::for_gpu("data", &gpu);
    let ti = GpuImages::upload(&gpu, &mut arena, &train).unwrap();
    let qi = GpuImages::upload(&gpu, &mut arena, &test).unwrap();
    let config = tiny_encoder();
    let net = Network::new(&gpu, &config, &[], 3).unwrap();
    let snapshot = |_: ()| -> (Vec<u32>, Vec<u32>) {
        let p: Vec<u32> = gpu.read(net.params.values).unwrap();
        let b: Vec<u32> = gpu.read(net.buffers.values).unwrap();
        (p, b)
    };
    let before = snapshot(());
    let f = |g: &mut Graph, x| net.features(g, x);
    let ft = eval::features(&gpu, &f, &ti, &train.labels).unwrap();
    let fq = eval::features(&gpu, &f, &qi, &test.labels).unwrap();
    let knn = eval::knn(&gpu, &ft, &fq, 200, 0.1).unwrap();
    let lin = eval::linear_probe(&ft, &fq).unwrap();
    assert!((0.0..=1.0).contains(&knn) && (0.0..=1.0).contains(&lin));
    assert_eq!(
        before,
        snapshot(()),
        "evaluation must not change weights or BatchNorm statistics"
    );
}

#[test]
fn knn_and_linear_probe_solve_separable_data() {
    let gpu = gpu();
    // Two well-separated classes in 3-D (+ noise): both probes must be (nearly) perfect.
    let make = |n: usize, seed: u64| {
        let noise = rand_vec(n * 3, seed);
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        let data = (0..n * 3)
            .map(|j| {
                let c = labels[j / 3] as f32;
                let centre = if j % 3 == 0 { 4.0 * c - 2.0 } else { 1.0 };
                centre + 0.3 * noise[j]
            })
            .collect();
        FeatureSet {
            data,
            labels,
            dim: 3,
        }
    };
    let (train, test) = (make(400, 1), make(100, 2));
    assert!(eval::knn(&gpu, &train, &test, 20, 0.1).unwrap() > 0.98);
    assert!(eval::linear_probe(&train, &test).unwrap() > 0.98);
}
