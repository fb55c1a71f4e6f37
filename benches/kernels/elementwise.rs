//! Elementwise maps and the augmentation gather at training sizes (memory-bound: GB/s counts each
//! tensor read or written once).

use contrastive::data::{Augment, GpuImages};
use contrastive::kernels::augment::{self, SAMPLE_WORDS};
use contrastive::kernels::elementwise::{self, Broadcast, Map};
use contrastive::{data, Arena, Result};
use rand::SeedableRng;

use crate::harness::Bench;

pub fn run(b: &mut Bench) -> Result<()> {
    let gpu = b.gpu;
    let mut arena = Arena::for_gpu("bench", gpu);
    // The first conv layer's activations at batch 256: [256·28·28, 32].
    let n = 256 * 28 * 28 * 32;
    let x = arena.tensor(gpu, [n / 32, 32])?;
    let y = arena.tensor(gpu, [n / 32, 32])?;
    let bias = arena.tensor(gpu, [32])?;
    for (name, m, bcast, tensors) in [
        ("relu", Map::Relu, Broadcast::Full, 2.0),
        (
            "relu backward (mask)",
            Map::MaskPositive,
            Broadcast::Full,
            3.0,
        ),
        (
            "add",
            Map::Axpby {
                alpha: 1.0,
                beta: 1.0,
            },
            Broadcast::Full,
            3.0,
        ),
        (
            "add bias (row broadcast)",
            Map::Axpby {
                alpha: 1.0,
                beta: 1.0,
            },
            Broadcast::Row,
            2.0,
        ),
    ] {
        let operand = if bcast == Broadcast::Row { bias } else { y };
        b.run(
            &format!("elementwise {name} {n}"),
            n as f64,
            4.0 * tensors * n as f64,
            1.0,
            || elementwise::map(gpu, m, &x, &operand, bcast, &y, false),
        )?;
    }

    let set = data::embedded()?.train;
    let images = GpuImages::upload(gpu, &mut arena, &set)?;
    let idx: Vec<u32> = (0..256).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let samples = Augment::contrastive().sample(&mut rng, &idx, 28, 28);
    let st = arena.tensor(gpu, [256 * SAMPLE_WORDS])?;
    gpu.upload(st.region, &samples)?;
    let out = arena.tensor(gpu, [256, 28, 28, 1])?;
    b.run(
        "augment gather+crop+jitter+noise 256x28x28",
        0.0,
        4.0 * out.numel() as f64 * 1.25,
        1.0,
        || augment::augment(gpu, &images, &st, &out, 0.03, 1),
    )?;
    Ok(())
}
