mod common;

use common::*;
use contrastive::kernels::mi::{self, Estimator};
use contrastive::{Arena, Gpu};

fn run(
    gpu: &Gpu,
    est: Estimator,
    scores: &[f32],
    n: usize,
    locs: usize,
    acc: bool,
) -> (f64, Vec<f32>) {
    let mut arena = Arena::for_gpu("test", gpu);
    let s = arena.upload(gpu, [n, n * locs], scores).unwrap();
    let loss = arena.tensor(gpu, [mi::loss_len(est, n, locs)]).unwrap();
    let prev = vec![0.5f32; scores.len()];
    let d = arena.upload(gpu, [n, n * locs], &prev).unwrap();
    mi::estimate(gpu, est, &s, locs, &loss, &d, acc).unwrap();
    let rows = mi::loss_terms(est, n, locs);
    let l: Vec<f32> = gpu.read(loss.region).unwrap();
    let total = l[..rows].iter().map(|&x| x as f64).sum();
    (total, gpu.read(d.region).unwrap())
}

#[test]
fn both_estimators_match_the_reference() {
    let gpu = gpu();
    for est in [Estimator::Jsd, Estimator::Nce] {
        // 6×50: rows of 300 scores, more than the 256 JSD threads per row.
        for &(n, locs) in &[(1, 1), (2, 1), (3, 4), (5, 9), (4, 49), (6, 50)] {
            let scores: Vec<f32> = rand_vec(n * n * locs, 3).iter().map(|x| 4.0 * x).collect();
            let (want_loss, want_grad) = mi::reference(est, &scores, n, locs);
            for acc in [false, true] {
                let (loss, grad) = run(&gpu, est, &scores, n, locs, acc);
                assert!(
                    (loss - want_loss).abs() < 1e-5 + 1e-5 * want_loss.abs(),
                    "{est:?} {n}x{locs}: loss {loss} vs {want_loss}"
                );
                let want: Vec<f64> = want_grad
                    .iter()
                    .map(|g| g + if acc { 0.5 } else { 0.0 })
                    .collect();
                assert_close(
                    &format!("{est:?} {n}x{locs} acc={acc}"),
                    &grad,
                    &want,
                    1e-6,
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn constant_scores_give_the_analytic_losses() {
    let gpu = gpu();
    let (n, locs, c) = (4, 9, 0.7f64);
    let scores = vec![c as f32; n * n * locs];
    let softplus = |x: f64| (1.0 + x.exp()).ln();
    let (jsd, _) = run(&gpu, Estimator::Jsd, &scores, n, locs, false);
    assert!(
        (jsd - (softplus(c) + softplus(-c))).abs() < 1e-5,
        "JSD {jsd}"
    );
    let (nce, _) = run(&gpu, Estimator::Nce, &scores, n, locs, false);
    let want = (1.0 + ((n - 1) * locs) as f64).ln();
    assert!(
        (nce - want).abs() < 1e-5,
        "NCE {nce} vs ln(1 + (N-1)L) = {want}"
    );
}

#[test]
fn extreme_scores_stay_finite() {
    let gpu = gpu();
    let (n, locs) = (3, 4);
    let scores: Vec<f32> = rand_vec(n * n * locs, 5).iter().map(|x| 1e4 * x).collect();
    for est in [Estimator::Jsd, Estimator::Nce] {
        let (loss, grad) = run(&gpu, est, &scores, n, locs, false);
        assert!(
            loss.is_finite() && grad.iter().all(|g| g.is_finite()),
            "{est:?}"
        );
    }
}
