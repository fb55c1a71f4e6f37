//! CPC's scores against an f64 reference and their gradients against central differences, for
//! same-step and drawn candidates (random negatives: their draw, inverse lists and gathers); the
//! per-offset statistics count every offset, and the softmax runs over candidate sequences (not
//! over offsets); the image patch grid against a reference.

mod common;

use common::*;
use contrastive::autodiff::gradcheck::{self, Input, Tolerance};
use contrastive::autodiff::{Graph, Var};
use contrastive::kernels::cpc::{self, Drawn, Offsets, PatchGrid};
use contrastive::kernels::softmax_xent::Xent;
use contrastive::{Arena, Result};
use rand::SeedableRng;

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

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// A draw's positives, range, exclusions, reproducibility and inverse lists.
#[test]
fn drawn_candidates_exclude_the_positive_and_invert_exactly() {
    let (b, t, d, k) = (4, 6, 1, 3);
    let o = Offsets {
        batch: b,
        steps: t,
        dim: d,
        k,
    };
    for with_positive in [true, false] {
        let drawn = Drawn::draw(&o, 40, with_positive, &mut rng(3));
        assert_eq!(drawn, Drawn::draw(&o, 40, with_positive, &mut rng(3)));
        assert_ne!(drawn, Drawn::draw(&o, 40, with_positive, &mut rng(4)));
        assert_eq!(drawn.cols, 40 + with_positive as usize);
        let (mut same_sequence, mut other_sequence) = (0, 0);
        for ((kk, tt, bb), row) in o.row_keys().zip(drawn.idx.chunks(drawn.cols)) {
            let positive = (bb * t + tt + kk) as u32;
            let negatives = if with_positive {
                assert_eq!(row[0], positive);
                &row[1..]
            } else {
                row
            };
            for &n in negatives {
                assert!(n != positive && (n as usize) < b * t, "{n} for {positive}");
                if n as usize / t == bb {
                    same_sequence += 1;
                } else {
                    other_sequence += 1;
                }
            }
        }
        // Uniform over the 23 other positions: 5 of them in the same sequence.
        let share = same_sequence as f64 / (same_sequence + other_sequence) as f64;
        assert!(
            (share - 5.0 / 23.0).abs() < 0.03,
            "same-sequence share {share}"
        );
        let (starts, entries) = drawn.inverse(b * t);
        assert_eq!((starts[0], starts[b * t]), (0, drawn.idx.len() as u32));
        for n in 0..b * t {
            let list = &entries[starts[n] as usize..starts[n + 1] as usize];
            assert!(list.windows(2).all(|w| w[0] < w[1]), "position {n}");
            assert!(list.iter().all(|&e| drawn.idx[e as usize] == n as u32));
        }
    }
}

/// (B, T, D, K, negatives drawn, positive first): one sequence and one feature, odd sizes, twelve
/// offsets, a single candidate, the positive alone.
const GATHER_CASES: [(usize, usize, usize, usize, usize, bool); 5] = [
    (1, 2, 1, 1, 1, true),
    (3, 5, 7, 2, 4, false),
    (5, 9, 16, 4, 9, true),
    (2, 13, 3, 12, 1, false),
    (7, 4, 5, 3, 0, true),
];

#[test]
fn gathered_scores_and_gradients_match_reference() {
    for_cases(&gpu(), GATHER_CASES, |h, (b, t, d, k, count, pos)| {
        let z = rand_vec(b * t * d, 8);
        let p = rand_vec(b * t * k * d, 80);
        let zt = h.upload([b, t, d], &z);
        let pt = h.upload([b, t, k * d], &p);
        let o = Offsets::of(&zt, &pt, k).unwrap();
        let drawn = Drawn::draw(&o, count, pos, &mut rng(b as u64));
        let c = drawn.upload(h.gpu, &mut h.arena, &o).unwrap();
        let logits = h.output([o.rows(), drawn.cols]);
        cpc::gather_scores(h.gpu, &zt, &pt, &c, &logits, &o).unwrap();
        let want = cpc::gather_scores_reference(&z, &p, &drawn, &o);
        h.expect("scores", &logits, &want, Tol::new(1e-5, 1e-5));
        let dl = rand_vec(o.rows() * drawn.cols, 9);
        let dlt = h.upload([o.rows(), drawn.cols], &dl);
        let (dpred, dz) = cpc::gather_grads_reference(&dl, &z, &p, &drawn, &o);
        let prev = rand_vec(p.len(), 10);
        h.expect_both_ways(
            "dpred",
            [p.len()],
            &prev,
            &dpred,
            Tol::new(1e-5, 1e-5),
            |gpu, g, acc| cpc::gather_grad_pred(gpu, &dlt, &zt, &c, g, &o, acc),
        );
        let prev = rand_vec(z.len(), 11);
        h.expect_both_ways(
            "dz",
            [z.len()],
            &prev,
            &dz,
            Tol::new(1e-5, 1e-5),
            |gpu, g, acc| cpc::gather_grad_z(gpu, &dlt, &pt, &c, g, &o, acc),
        );
    });
}

/// Candidates that do not match the scoring problem are refused, not read out of bounds.
#[test]
fn candidates_of_another_shape_are_a_shape_error() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("cpc", &gpu);
    let o = Offsets {
        batch: 2,
        steps: 4,
        dim: 3,
        k: 2,
    };
    let bigger = Offsets { batch: 3, ..o };
    let c = Drawn::draw(&bigger, 2, true, &mut rng(0))
        .upload(&gpu, &mut arena, &bigger)
        .unwrap();
    let z = arena.tensor(&gpu, [2, 4, 3]).unwrap();
    let p = arena.tensor(&gpu, [2, 4, 6]).unwrap();
    let logits = arena.tensor(&gpu, [o.rows(), 3]).unwrap();
    let e = cpc::gather_scores(&gpu, &z, &p, &c, &logits, &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("candidates"), "{e}");
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

/// The negative schemes of `train cpc --negatives`.
#[derive(Clone, Copy, Debug)]
enum Scheme {
    SameStep,
    Random,
    Both,
}

const SCHEMES: [Scheme; 3] = [Scheme::SameStep, Scheme::Random, Scheme::Both];

/// CPC's InfoNCE with `scheme`'s candidates, `count` of them drawn (the same draw at every call,
/// as the gradient check needs): same-step, drawn with the positive first, or both side by side.
fn cpc_loss(
    g: &mut Graph,
    z: Var,
    pred: Var,
    k: usize,
    scheme: Scheme,
    count: usize,
) -> Result<Var> {
    let o = Offsets::of(&g.value(z), &g.value(pred), k)?;
    let gathered = |g: &mut Graph, with_positive| -> Result<Var> {
        let drawn = Drawn::draw(&o, count, with_positive, &mut rng(5));
        let c = drawn.upload(g.gpu, g.arena, &o)?;
        Ok(g.cpc_gather(z, pred, k, &c)?.0)
    };
    let (logits, positives) = match scheme {
        Scheme::SameStep => (g.cpc_scores(z, pred, k)?.0, o.targets()),
        Scheme::Random => (gathered(g, true)?, vec![0; o.rows()]),
        Scheme::Both => {
            let same = g.cpc_scores(z, pred, k)?.0;
            let drawn = gathered(g, false)?;
            (g.concat_cols(same, drawn)?, o.targets())
        }
    };
    let targets = g.constant_u32([o.rows()], &positives)?;
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
        // The raw scores, then the whole InfoNCE over them; the drawn schemes on one shape (the
        // gathers have their own references above): more draws than positions, so every
        // position is named, most of them more than once.
        let scores = |g: &mut Graph, v: &[Var]| Ok(g.cpc_scores(v[0], v[1], k)?.0);
        let r = gradcheck::check(&gpu, &inputs, scores, &Tolerance::default());
        let r = r.unwrap_or_else(|e| panic!("scores B{b} T{t} D{d} K{k}: {e}"));
        assert!(r.checked > 0);
        let schemes = if b == 3 { &SCHEMES[..] } else { &SCHEMES[..1] };
        for &scheme in schemes {
            let loss = |g: &mut Graph, v: &[Var]| cpc_loss(g, v[0], v[1], k, scheme, 2 * b * t);
            let r = gradcheck::check(&gpu, &inputs, loss, &Tolerance::default());
            let r = r.unwrap_or_else(|e| panic!("{scheme:?} loss B{b} T{t} D{d} K{k}: {e}"));
            assert!(r.checked > 0);
        }
    }
}

/// Collapsed encodings (all equal) score every candidate alike: the loss is exactly ln of the
/// candidates per row, B for same-step, 1 + N for random, B + N for both.
#[test]
fn collapse_gives_ln_of_the_candidates() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("cpc", &gpu);
    let (b, t, d, k, n) = (5, 6, 4, 2, 7);
    for (scheme, candidates) in SCHEMES.into_iter().zip([b, 1 + n, b + n]) {
        let mut g = Graph::inference(&gpu, &mut arena);
        let z = g.constant([b, t, d], &vec![0.3; b * t * d]).unwrap();
        let pred = g
            .constant([b, t, k * d], &rand_vec(b * t * k * d, 2))
            .unwrap();
        let loss = cpc_loss(&mut g, z, pred, k, scheme, n).unwrap();
        let got = g.read(loss).unwrap();
        assert_close(
            &format!("{scheme:?}"),
            &got,
            &[(candidates as f64).ln()],
            1e-5,
            1e-5,
        );
        arena.reset();
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
