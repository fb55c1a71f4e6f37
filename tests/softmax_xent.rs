mod common;

use common::*;
use contrastive::kernels::softmax_xent::{self, Xent};
use contrastive::{Arena, Error, Gpu, Tensor};
use rand::{Rng, SeedableRng};

struct Out {
    loss: Vec<f32>,
    grad: Vec<f32>,
    correct: Vec<f32>,
}

fn run(gpu: &Gpu, logits: &[f32], targets: &[u32], n: usize, m: usize, spec: &Xent) -> Out {
    let mut h = Harness::new(gpu, format!("{n}x{m}"));
    let tl = h.upload([n, m], logits);
    let tt = h.upload_u32([n], targets);
    let loss = h.output([n]);
    let grad = h.output([n, m]);
    let correct = h.output([n]);
    softmax_xent::softmax_xent(gpu, &tl, &tt, spec, &loss, &grad, &correct).unwrap();
    Out {
        loss: h.read(&loss),
        grad: h.read(&grad),
        correct: h.read(&correct),
    }
}

/// Random targets in range, off the diagonal when it is masked.
fn rand_targets(n: usize, m: usize, mask: bool, seed: u64) -> Vec<u32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|r| loop {
            let t = rng.random_range(0..m);
            if !(mask && t == r) {
                break t as u32;
            }
        })
        .collect()
}

fn check(gpu: &Gpu, logits: &[f32], targets: &[u32], n: usize, m: usize, spec: &Xent, what: &str) {
    let got = run(gpu, logits, targets, n, m, spec);
    let (loss, grad, correct) = softmax_xent::reference(logits, targets, n, m, spec);
    let t_inv = 1.0 / spec.temperature as f64;
    let h = Harness::new(gpu, what);
    h.expect_values("loss", &got.loss, &loss, Tol::new(2e-5, 2e-5));
    h.expect_values("dlogits", &got.grad, &grad, Tol::new(1e-6 * t_inv, 1e-4));
    h.expect_values("correct", &got.correct, &correct, Tol::EXACT);
    h.finish();
}

#[test]
fn awkward_shapes_match_reference() {
    let gpu = gpu();
    for (n, m) in [
        (1, 1),
        (1, 2),
        (3, 3),
        (2, 5),
        (17, 31),
        (31, 17),
        (64, 129),
        (129, 64),
        // Fewer than 8 long rows take the workgroup-per-row path on CPU adapters too.
        (3, 4097),
        (7, 100),
    ] {
        for mask in [false, true] {
            if mask && m < n.max(2) {
                continue;
            }
            for temperature in [0.07, 1.0] {
                let spec = Xent {
                    temperature,
                    mask_diagonal: mask,
                };
                let logits = rand_vec(n * m, (n * 31 + m) as u64);
                let targets = rand_targets(n, m, mask, n as u64);
                check(
                    &gpu,
                    &logits,
                    &targets,
                    n,
                    m,
                    &spec,
                    &format!("{n}x{m} {spec:?}"),
                );
            }
        }
    }
}

#[test]
fn wide_rows() {
    let gpu = gpu();
    let (n, m) = (2, 65_537);
    let spec = Xent {
        temperature: 0.2,
        mask_diagonal: true,
    };
    let logits = rand_vec(n * m, 3);
    check(&gpu, &logits, &[65_536, 0], n, m, &spec, "2x65537");
}

#[test]
fn huge_logits_stay_finite() {
    let gpu = gpu();
    let (n, m) = (17, 129);
    let logits: Vec<f32> = rand_vec(n * m, 4).iter().map(|v| v * 1e4).collect();
    let spec = Xent {
        temperature: 0.05,
        mask_diagonal: true,
    };
    let targets = rand_targets(n, m, true, 4);
    let got = run(&gpu, &logits, &targets, n, m, &spec);
    assert!(got.loss.iter().chain(&got.grad).all(|v| v.is_finite()));
    let (loss, grad, _) = softmax_xent::reference(&logits, &targets, n, m, &spec);
    let h = Harness::new(&gpu, "logits ×1e4");
    h.expect_values("loss", &got.loss, &loss, Tol::new(1e-3, 1e-5));
    h.expect_values("dlogits", &got.grad, &grad, Tol::new(1e-4, 1e-4));
    h.finish();
}

#[test]
fn equal_logits_give_log_m_and_gradient_rows_sum_to_zero() {
    let gpu = gpu();
    let (n, m) = (5, 4097);
    for mask in [false, true] {
        let spec = Xent {
            temperature: 0.1,
            mask_diagonal: mask,
        };
        let targets = rand_targets(n, m, mask, 7);
        let got = run(&gpu, &vec![0.37; n * m], &targets, n, m, &spec);
        let live = if mask { m - 1 } else { m };
        for (r, &l) in got.loss.iter().enumerate() {
            let want = (live as f64).ln();
            assert!(
                (l as f64 - want).abs() < 1e-5,
                "mask={mask} row {r}: {l} vs ln {live}"
            );
        }
        for (r, row) in got.grad.chunks(m).enumerate() {
            let s: f64 = row.iter().map(|&g| g as f64).sum();
            assert!(s.abs() < 1e-4, "mask={mask} row {r} gradient sums to {s}");
            if mask {
                assert_eq!(row[r], 0.0);
            }
        }
    }
    // Random logits too.
    let (n, m) = (31, 129);
    let spec = Xent {
        temperature: 0.07,
        mask_diagonal: true,
    };
    let got = run(
        &gpu,
        &rand_vec(n * m, 9),
        &rand_targets(n, m, true, 9),
        n,
        m,
        &spec,
    );
    for (r, row) in got.grad.chunks(m).enumerate() {
        let s: f64 = row.iter().map(|&g| g as f64).sum();
        assert!(s.abs() < 1e-4, "row {r} gradient sums to {s}");
    }
}

#[test]
fn accuracy_flags_follow_the_first_maximum() {
    let gpu = gpu();
    let (n, m) = (4, 3);
    #[rustfmt::skip]
    let logits = [
        0.9, 0.1, 0.2,   // max at 0
        0.1, 0.9, 0.2,   // max at 1
        0.5, 0.5, 0.1,   // tie: first maximum is 0
        0.3, 0.2, 0.1,   // max at 0
    ];
    let spec = Xent {
        temperature: 1.0,
        mask_diagonal: false,
    };
    let got = run(&gpu, &logits, &[0, 0, 1, 0], n, m, &spec);
    assert_eq!(got.correct, [1.0, 0.0, 0.0, 1.0]);
    // Masking: row 0's largest logit is on the diagonal, so the next one counts.
    let spec = Xent {
        temperature: 1.0,
        mask_diagonal: true,
    };
    let got = run(&gpu, &logits[..9], &[2, 0, 0], 3, 3, &spec);
    assert_eq!(got.correct, [1.0, 0.0, 1.0]);
}

#[test]
fn more_rows_than_one_grid_dimension() {
    let gpu = gpu();
    let (n, m) = (65_600, 2);
    let spec = Xent {
        temperature: 0.5,
        mask_diagonal: false,
    };
    check(
        &gpu,
        &rand_vec(n * m, 12),
        &rand_targets(n, m, false, 12),
        n,
        m,
        &spec,
        "65600x2",
    );
}

#[test]
fn gradient_in_place_and_targets_clamped() {
    let gpu = gpu();
    let mut h = Harness::new(&gpu, "in place");
    let (n, m) = (17, 31);
    let spec = Xent {
        temperature: 0.3,
        mask_diagonal: false,
    };
    let logits = rand_vec(n * m, 13);
    let mut targets = rand_targets(n, m, false, 13);
    targets[3] = 1000;
    let tl = h.upload([n, m], &logits);
    let tt = h.upload_u32([n], &targets);
    let loss = h.output([n]);
    let correct = h.output([n]);
    softmax_xent::softmax_xent(&gpu, &tl, &tt, &spec, &loss, &tl, &correct).unwrap();
    let (wl, wg, _) = softmax_xent::reference(&logits, &targets, n, m, &spec);
    h.expect("loss", &loss, &wl, Tol::new(2e-5, 2e-5));
    h.expect("dlogits", &tl, &wg, Tol::new(1e-5, 1e-4));
    h.finish();
    targets[3] = m as u32 - 1;
    let (clamped, _, _) = softmax_xent::reference(&logits, &targets, n, m, &spec);
    assert_eq!(wl[3], clamped[3]);
}

#[test]
fn bad_settings_are_errors() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let logits = arena.tensor(&gpu, [4, 3]).unwrap();
    let per_row = arena.tensor(&gpu, [4]).unwrap();
    let call = |temperature: f32, mask_diagonal: bool, loss: &Tensor| {
        let spec = Xent {
            temperature,
            mask_diagonal,
        };
        softmax_xent::softmax_xent(&gpu, &logits, &per_row, &spec, loss, &logits, &per_row)
    };
    for t in [0.0, -1.0, f32::NAN] {
        assert!(
            matches!(call(t, false, &per_row), Err(Error::Config(_))),
            "T={t}"
        );
    }
    let err = call(1.0, true, &per_row).unwrap_err().to_string();
    assert!(err.contains("[4, 3]"), "{err}");
    let short = arena.tensor(&gpu, [3]).unwrap();
    let err = call(1.0, false, &short).unwrap_err().to_string();
    assert!(err.contains("[3]") && err.contains("[4, 3]"), "{err}");
    call(1.0, false, &per_row).unwrap();
}
