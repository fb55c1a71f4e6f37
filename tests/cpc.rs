//! CPC's scores against an f64 reference and their gradients against central differences; the
//! per-offset statistics count every offset, and the softmax runs over candidate sequences (not
//! over offsets); the image patch grid against a reference.

mod common;

use common::*;
use contrastive::autodiff::gradcheck::{self, Input, Tolerance};
use contrastive::autodiff::{Graph, Var};
use contrastive::kernels::cpc::{self, Offsets, PatchGrid};
use contrastive::kernels::softmax_xent::Xent;
use contrastive::{Arena, Result};

#[test]
fn scores_match_reference() {
    let shapes = [(1, 2, 1, 1), (3, 5, 7, 2), (5, 9, 16, 4), (2, 13, 3, 12)];
    for_cases(
        &gpu(),
        shapes.into_iter().enumerate(),
        |h, (i, (b, t, d, k))| {
            let z = rand_vec(b * t * d, 7 + i as u64);
            let p = rand_vec(b * t * k * d, 70 + i as u64);
            let zt = h.upload([b, t, d], &z);
            let pt = h.upload([b, t, k * d], &p);
            let o = Offsets::of(&zt, &pt, k).unwrap();
            assert_eq!(o.rows(), (1..=k).map(|kk| (t - kk) * b).sum::<usize>());
            let logits = h.output([o.rows(), b]);
            cpc::scores(h.gpu, &zt, &pt, &logits, &o).unwrap();
            let want = cpc::scores_reference(&z, &p, &o);
            h.expect("scores", &logits, &want, Tol::new(1e-5, 1e-5));
        },
    );
}

#[test]
fn too_many_offsets_is_a_shape_error() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("cpc", &gpu);
    let z = arena.tensor(&gpu, [2, 3, 4]).unwrap();
    let p = arena.tensor(&gpu, [2, 3, 12]).unwrap();
    let e = Offsets::of(&z, &p, 3).unwrap_err().to_string();
    assert!(e.contains("K < T"), "{e}");
}

fn cpc_loss(g: &mut Graph, z: Var, pred: Var, k: usize) -> Result<Var> {
    let (logits, o) = g.cpc_scores(z, pred, k)?;
    let targets = g.constant_u32([o.rows()], &o.targets())?;
    let spec = Xent {
        temperature: 1.0,
        mask_diagonal: false,
    };
    let (rows, _) = g.softmax_xent(logits, targets, &spec)?;
    g.mean(rows)
}

#[test]
fn gradients_match_finite_differences() {
    let gpu = gpu();
    for &(b, t, d, k) in &[(1, 3, 2, 2), (3, 5, 4, 2), (4, 4, 3, 3)] {
        let inputs = [
            Input::new([b, t, d], rand_vec(b * t * d, 5)),
            Input::new([b, t, k * d], rand_vec(b * t * k * d, 6)),
        ];
        // The raw scores, then the whole InfoNCE over them.
        let scores = |g: &mut Graph, v: &[Var]| Ok(g.cpc_scores(v[0], v[1], k)?.0);
        let loss = |g: &mut Graph, v: &[Var]| cpc_loss(g, v[0], v[1], k);
        for (what, r) in [
            (
                "scores",
                gradcheck::check(&gpu, &inputs, scores, &Tolerance::default()),
            ),
            (
                "loss",
                gradcheck::check(&gpu, &inputs, loss, &Tolerance::default()),
            ),
        ] {
            let r = r.unwrap_or_else(|e| panic!("{what} B{b} T{t} D{d} K{k}: {e}"));
            assert!(r.checked > 0);
        }
    }
}

/// Offset 1 is predicted perfectly and offset 2 not at all: the statistics must show both, and
/// the loss of a row must be the softmax over the B candidates at that step.
#[test]
fn every_offset_is_counted_and_softmax_is_over_candidates() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("cpc", &gpu);
    let (b, t, d, k) = (6, 5, 6, 2);
    // One-hot encodings: sequence s is e_s at every step.
    let mut z = vec![0.0f32; b * t * d];
    for s in 0..b {
        for step in 0..t {
            z[(s * t + step) * d + s] = 1.0;
        }
    }
    // Offset 1 predicts 5·e_s (right), offset 2 predicts 5·e_{s+1} (always wrong).
    let mut pred = vec![0.0f32; b * t * k * d];
    for s in 0..b {
        for step in 0..t {
            pred[((s * t + step) * k) * d + s] = 5.0;
            pred[((s * t + step) * k + 1) * d + (s + 1) % b] = 5.0;
        }
    }
    let zt = arena.upload(&gpu, [b, t, d], &z).unwrap();
    let pt = arena.upload(&gpu, [b, t, k * d], &pred).unwrap();
    let o = Offsets::of(&zt, &pt, k).unwrap();
    let targets = arena.tensor(&gpu, [o.rows()]).unwrap();
    gpu.upload(targets.region, &o.targets()).unwrap();
    let mut g = Graph::inference(&gpu, &mut arena);
    let (zv, pv) = (g.input(zt), g.input(pt));
    let (logits, _) = g.cpc_scores(zv, pv, k).unwrap();
    let tv = g.input(targets);
    let spec = Xent {
        temperature: 1.0,
        mask_diagonal: false,
    };
    let (rows, hits) = g.softmax_xent(logits, tv, &spec).unwrap();
    let (rows, hits) = (g.value(rows), g.value(hits));
    let stats = g.arena.tensor(&gpu, [2 + 2 * k]).unwrap();
    cpc::offset_stats(&gpu, &rows, &hits, &stats, &o).unwrap();
    let s: Vec<f32> = gpu.read(stats.region).unwrap();
    // Softmax over the 6 candidates: right = −ln(e⁵ / (e⁵ + 5)), wrong = −ln(1 / (e⁵ + 5)).
    let e5 = 5f64.exp();
    let right = -(e5 / (e5 + 5.0)).ln();
    let wrong = (e5 + 5.0).ln();
    let n1 = (t - 1) as f64;
    let n2 = (t - 2) as f64;
    let want = [
        (n1 * right + n2 * wrong) / (n1 + n2),
        n1 / (n1 + n2),
        right,
        1.0,
        wrong,
        0.0,
    ];
    let h = Harness::new(&gpu, "offsets 1 right, 2 wrong");
    h.expect_values("statistics", &s, &want, Tol::new(1e-5, 1e-5));
    h.finish();
}

#[test]
fn patch_grid_matches_reference() {
    let cases = [
        ([2, 28, 28, 1], 8, 4),
        ([1, 9, 7, 3], 3, 2),
        ([3, 5, 5, 2], 5, 1),
    ];
    for_cases(&gpu(), cases, |h, (dims, size, stride)| {
        let grid = PatchGrid { size, stride };
        let x = rand_vec(dims.iter().product(), 3);
        let xt = h.upload(dims, &x);
        let (gh, gw) = grid.grid(dims[1], dims[2]).unwrap();
        let out = h.output([dims[0] * gh * gw, size, size, dims[3]]);
        cpc::patches(h.gpu, &xt, &out, &grid).unwrap();
        let want = f64s(&cpc::patches_reference(&x, dims, &grid));
        h.expect("patches", &out, &want, Tol::EXACT);
    });
    let e = PatchGrid { size: 9, stride: 1 }
        .grid(8, 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not fit"), "{e}");
}
