//! CPC's kernels at training shapes: the GRU recurrence (forward and backward through time) and
//! the per-offset scores with their two gradients. FLOPs count multiply-adds as 2.

use contrastive::kernels::cpc::{self, Offsets};
use contrastive::kernels::gru;
use contrastive::{Arena, Result};

use crate::harness::Bench;

const BUDGET_S: f64 = 1.0;

pub fn run(b: &mut Bench) -> Result<()> {
    let gpu = b.gpu;
    let mut arena = Arena::for_gpu("bench", gpu);
    // JapaneseVowels (64 sequences of 10 frames), audio (64 × 50 steps), image patch columns
    // (64 images × 6 columns, 6 rows).
    for (bs, t, h) in [(64, 10, 64), (64, 50, 128), (384, 6, 64)] {
        let gx = arena.tensor(gpu, [bs, t, 3 * h])?;
        let w = arena.tensor(gpu, [3 * h, h])?;
        let bias = arena.tensor(gpu, [3 * h])?;
        let hs = arena.tensor(gpu, [bs, t, h])?;
        let hprev = arena.tensor(gpu, [bs * t, h])?;
        let gates = arena.tensor(gpu, [bs * t, 4 * h])?;
        let fs = gru::forward_scratch(bs, h);
        let fs = [
            arena.tensor(gpu, fs[0])?,
            arena.tensor(gpu, fs[1])?,
            arena.tensor(gpu, fs[2])?,
        ];
        let flops = 2.0 * (bs * t * 3 * h * h) as f64;
        b.run(
            &format!("gru forward B{bs} T{t} H{h}"),
            flops,
            4.0 * (bs * t * 8 * h + 3 * h * h) as f64,
            BUDGET_S,
            || gru::forward(gpu, &gx, &w, &bias, &hs, &hprev, &gates, &fs),
        )?;
        let bs_ = gru::backward_scratch(bs, t, h);
        let scratch = [
            arena.tensor(gpu, bs_[0])?,
            arena.tensor(gpu, bs_[1])?,
            arena.tensor(gpu, bs_[2])?,
        ];
        let dgx = arena.tensor(gpu, [bs, t, 3 * h])?;
        b.run(
            &format!("gru backward B{bs} T{t} H{h}"),
            flops,
            4.0 * (bs * t * 14 * h + 3 * h * h) as f64,
            BUDGET_S,
            || gru::backward_steps(gpu, &hs, &w, &bias, &hprev, &gates, &dgx, &scratch, false),
        )?;
    }
    for (bs, t, d, k) in [(64, 10, 64, 3), (64, 50, 64, 12), (384, 6, 64, 3)] {
        let z = arena.tensor(gpu, [bs, t, d])?;
        let pred = arena.tensor(gpu, [bs, t, k * d])?;
        let o = Offsets::of(&z, &pred, k)?;
        let logits = arena.tensor(gpu, [o.rows(), bs])?;
        let flops = 2.0 * (o.rows() * bs * d) as f64;
        let name = format!("B{bs} T{t} D{d} K{k}");
        b.run(
            &format!("cpc scores {name}"),
            flops,
            4.0 * (z.numel() + pred.numel() + logits.numel()) as f64,
            BUDGET_S,
            || cpc::scores(gpu, &z, &pred, &logits, &o),
        )?;
        b.run(
            &format!("cpc grad_pred {name}"),
            flops,
            4.0 * (z.numel() + pred.numel() + logits.numel()) as f64,
            BUDGET_S,
            || cpc::grad_pred(gpu, &logits, &z, &pred, &o, false),
        )?;
        b.run(
            &format!("cpc grad_z {name}"),
            flops,
            4.0 * (z.numel() + pred.numel() + logits.numel()) as f64,
            BUDGET_S,
            || cpc::grad_z(gpu, &logits, &pred, &z, &o, false),
        )?;
    }
    arena.free(gpu)
}
