//! The checkpoint layout as a PyTorch user meets it: `scripts/load_in_pytorch.py` loads a
//! checkpoint written by the library into a torch encoder built from the README's description and
//! must reproduce this crate's eval-mode features. Runs only where `python3` can import torch and
//! safetensors (it says so loudly otherwise); it is not part of CI.

use std::process::Command;

use contrastive::autodiff::Graph;
use contrastive::checkpoint::Checkpoint;
use contrastive::kernels::batchnorm::BatchNorm;
use contrastive::methods::Network;
use contrastive::nn::{EncoderConfig, Preset};
use contrastive::{Arena, Gpu};
use rand::{Rng, SeedableRng};

fn torch_available(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn pytorch_reproduces_the_encoder_features_of_a_checkpoint() {
    // Residual blocks and an odd size (27×27: strides meet odd inputs) cover the whole layout.
    let enc = EncoderConfig {
        widths: vec![4, 8, 16],
        residual_blocks: 1,
        ..EncoderConfig::small(27, 27, 1)
    };
    reproduces(&enc, "torch, safetensors", "1 residual block");
}

/// The resnet18 preset at a sixteenth of its width loads into torchvision's `resnet18()` with
/// `strict=True` and gives the same features.
#[test]
fn torchvision_resnet18_reproduces_the_resnet_features_of_a_checkpoint() {
    let enc = Preset::Resnet18.config((27, 27, 1), &[], 0, 1.0 / 16.0);
    reproduces(
        &enc,
        "torch, torchvision, safetensors",
        "torchvision resnet18",
    );
}

/// Saves a network with encoder `enc` and non-trivial BatchNorm, and checks that
/// scripts/load_in_pytorch.py reproduces its eval-mode features and prints `says`.
fn reproduces(enc: &EncoderConfig, modules: &str, says: &str) {
    if !torch_available(modules) {
        eprintln!(
            "NOT RUN: `python3 -c \"import {modules}\"` fails here; install them \
             (pip install {}) to check scripts/load_in_pytorch.py",
            modules.replace(',', "")
        );
        return;
    }
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("tests need a GPU adapter: {e}"));
    let net = Network::new(&gpu, enc, &[8], 11).unwrap();
    // Non-trivial BatchNorm: random scales, shifts and running statistics.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for store in [&net.params, &net.buffers] {
        let mut values: Vec<f32> = gpu.read(store.values).unwrap();
        for e in &store.entries {
            // The encoder's convolutions have no bias: its vectors are BatchNorm's.
            if e.name.starts_with("encoder.") && e.shape.rank() == 1 {
                for v in &mut values[e.offset..e.offset + e.shape.numel()] {
                    *v = rng.random_range(0.5..1.5);
                }
            }
        }
        gpu.upload(store.values, &values).unwrap();
    }
    let n = 5;
    let input: Vec<f32> = (0..n * 27 * 27)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let mut arena = Arena::for_gpu("test", &gpu);
    let x = arena.upload(&gpu, [n, 27, 27, 1], &input).unwrap();
    let mut g = Graph::inference(&gpu, &mut arena);
    let x = g.input(x);
    let f = net
        .encoder
        .forward(
            &mut g,
            &net.params,
            &net.buffers,
            x,
            &BatchNorm::default(),
            false,
        )
        .unwrap();
    let features = g.read(f.global).unwrap();

    let dir = std::env::temp_dir().join(format!(
        "contrastive-pytorch-{}-{}",
        enc.widths.len(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut ck = Checkpoint::new();
    net.save(&gpu, &mut ck, "query").unwrap();
    ck.write(&dir.join("model.safetensors")).unwrap();
    let mut expected = Checkpoint::new();
    expected.put_f32("input", &[n, 27, 27, 1], input);
    expected.put_f32("features", &[n, *enc.widths.last().unwrap()], features);
    expected.write(&dir.join("expected.safetensors")).unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/load_in_pytorch.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir.join("model.safetensors"))
        .arg("--expected")
        .arg(dir.join("expected.safetensors"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "PyTorch disagrees: {text}");
    assert!(text.contains(says), "{text}");
}
