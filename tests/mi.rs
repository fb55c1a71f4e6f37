mod common;

use common::*;
use contrastive::kernels::mi::{self, Estimator};
use contrastive::Tensor;

/// The estimator's total loss and its gradient (written over, or added to, `prev`).
fn run(
    h: &mut Harness,
    est: Estimator,
    scores: &[f32],
    n: usize,
    locs: usize,
    prev: &[f32],
    acc: bool,
) -> (f64, Tensor) {
    let s = h.upload([n, n * locs], scores);
    let loss = h.output([mi::loss_len(est, n, locs)]);
    let d = h.upload([n, n * locs], prev);
    mi::estimate(h.gpu, est, &s, locs, &loss, &d, acc).unwrap();
    let rows = mi::loss_terms(est, n, locs);
    let total = h.read(&loss)[..rows].iter().map(|&x| x as f64).sum();
    (total, d)
}

/// `run` from zero on a fresh harness, read back.
fn run_once(est: Estimator, scores: &[f32], n: usize, locs: usize) -> (f64, Vec<f32>) {
    let gpu = gpu();
    let mut h = Harness::new(&gpu, format!("{est:?}"));
    let (loss, d) = run(
        &mut h,
        est,
        scores,
        n,
        locs,
        &vec![0.0; scores.len()],
        false,
    );
    (loss, h.read(&d))
}

#[test]
fn both_estimators_match_the_reference() {
    // 6×50: rows of 300 scores, more than the 256 JSD threads per row.
    let shapes = [(1, 1), (2, 1), (3, 4), (5, 9), (4, 49), (6, 50)];
    let cases = [Estimator::Jsd, Estimator::Nce]
        .into_iter()
        .flat_map(|est| shapes.map(|s| (est, s)));
    for_cases(&gpu(), cases, |h, (est, (n, locs))| {
        let scores: Vec<f32> = rand_vec(n * n * locs, 3).iter().map(|x| 4.0 * x).collect();
        let (want_loss, want_grad) = mi::reference(est, &scores, n, locs);
        let prev = vec![0.5f32; scores.len()];
        for acc in [false, true] {
            let (loss, grad) = run(h, est, &scores, n, locs, &prev, acc);
            h.expect_values("loss", &[loss as f32], &[want_loss], Tol::new(1e-5, 1e-5));
            let want = accumulated(&want_grad, &prev, acc);
            h.expect(
                &format!("grad acc={acc}"),
                &grad,
                &want,
                Tol::new(1e-6, 1e-4),
            );
        }
    });
}

#[test]
fn constant_scores_give_the_analytic_losses() {
    let (n, locs, c) = (4, 9, 0.7f64);
    let scores = vec![c as f32; n * n * locs];
    let softplus = |x: f64| (1.0 + x.exp()).ln();
    let (jsd, _) = run_once(Estimator::Jsd, &scores, n, locs);
    assert!(
        (jsd - (softplus(c) + softplus(-c))).abs() < 1e-5,
        "JSD {jsd}"
    );
    let (nce, _) = run_once(Estimator::Nce, &scores, n, locs);
    let want = (1.0 + ((n - 1) * locs) as f64).ln();
    assert!(
        (nce - want).abs() < 1e-5,
        "NCE {nce} vs ln(1 + (N-1)L) = {want}"
    );
}

#[test]
fn extreme_scores_stay_finite() {
    let (n, locs) = (3, 4);
    let scores: Vec<f32> = rand_vec(n * n * locs, 5).iter().map(|x| 1e4 * x).collect();
    for est in [Estimator::Jsd, Estimator::Nce] {
        let (loss, grad) = run_once(est, &scores, n, locs);
        assert!(
            loss.is_finite() && grad.iter().all(|g| g.is_finite()),
            "{est:?}"
        );
    }
}
