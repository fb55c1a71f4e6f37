mod common;

use common::*;
use contrastive::kernels::batchnorm::{self, BatchNorm};
use contrastive::{Error, Gpu, Shape, Tensor};

/// Everything one BN layer needs on the GPU, filled from host data.
struct Layer {
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    y: Tensor,
    mean: Tensor,
    invstd: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    scratch: Tensor,
}

struct Host {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

fn host(rows: usize, cols: usize, seed: u64) -> Host {
    Host {
        x: rand_vec(rows * cols, seed)
            .iter()
            .enumerate()
            // Distinct offsets and spreads per column, so a wrong column index shows.
            .map(|(i, v)| 2.0 * v * (1.0 + (i % cols) as f32 * 0.3) + (i % cols) as f32 - 1.0)
            .collect(),
        gamma: rand_vec(cols, seed + 1).iter().map(|v| 1.0 + v).collect(),
        beta: rand_vec(cols, seed + 2),
        running_mean: rand_vec(cols, seed + 3),
        running_var: rand_vec(cols, seed + 4).iter().map(|v| 1.5 + v).collect(),
    }
}

fn upload(k: &mut Harness, dims: &[usize], groups: usize, h: &Host) -> Layer {
    let shape = Shape::new(dims);
    let (rows, cols) = shape.rows_cols();
    Layer {
        x: k.upload(shape, &h.x),
        gamma: k.upload([cols], &h.gamma),
        beta: k.upload([cols], &h.beta),
        y: k.output(shape),
        mean: k.output([groups, cols]),
        invstd: k.output([groups, cols]),
        running_mean: k.upload([cols], &h.running_mean),
        running_var: k.upload([cols], &h.running_var),
        scratch: k.output([batchnorm::scratch_len(rows, cols, groups)]),
    }
}

fn train(gpu: &Gpu, l: &Layer, bn: &BatchNorm) {
    batchnorm::forward_train(
        gpu,
        &l.x,
        &l.gamma,
        &l.beta,
        &l.y,
        &l.mean,
        &l.invstd,
        &l.running_mean,
        &l.running_var,
        &l.scratch,
        bn,
    )
    .unwrap();
}

/// The f64 train-mode reference for the host data.
fn train_reference(h: &Host, cols: usize, bn: &BatchNorm) -> batchnorm::TrainReference {
    batchnorm::reference_forward_train(
        &h.x,
        cols,
        &h.gamma,
        &h.beta,
        &h.running_mean,
        &h.running_var,
        bn,
    )
}

/// Train forward, both backward modes and eval on one shape, all against the f64 references, with
/// and without the fused ReLU. `tol` scales every tolerance (large reductions and badly
/// conditioned inputs need more).
fn check(gpu: &Gpu, dims: &[usize], groups: usize, h: &Host, tol: f64) {
    for relu in [false, true] {
        check_one(gpu, dims, groups, h, tol, relu);
    }
}

fn check_one(gpu: &Gpu, dims: &[usize], groups: usize, h: &Host, tol: f64, relu: bool) {
    let bn = BatchNorm {
        groups,
        relu,
        ..BatchNorm::default()
    };
    let (rows, cols) = Shape::new(dims).rows_cols();
    let what = format!(
        "{dims:?} groups={groups} relu={relu} ({:?} launches)",
        gpu.kind()
    );
    let mut k = Harness::new(gpu, what);
    let l = upload(&mut k, dims, groups, h);
    train(gpu, &l, &bn);
    let want = train_reference(h, cols, &bn);
    let t = Tol::new(tol, tol);
    k.expect("y", &l.y, &want.y, t);
    k.expect("mean", &l.mean, &want.mean, t);
    k.expect("invstd", &l.invstd, &want.invstd, Tol::new(0.0, tol));
    let running_mean = k.read(&l.running_mean);
    let running_var = k.read(&l.running_var);
    k.expect_values("running_mean", &running_mean, &want.running_mean, t);
    k.expect_values("running_var", &running_var, &want.running_var, t);

    // With the ReLU, dy is zero where bn(x) is within 1e-3 of the kink: there f32 and f64 may
    // disagree on its side, and the mask would differ by a whole element of dy.
    let pre = train_reference(h, cols, &BatchNorm { relu: false, ..bn });
    let dy: Vec<f32> = rand_vec(rows * cols, 11)
        .iter()
        .zip(&pre.y)
        .map(|(&d, &z)| if relu && z.abs() < 1e-3 { 0.0 } else { d })
        .collect();
    let prev_dx = rand_vec(rows * cols, 12);
    let prev_dgamma = rand_vec(cols, 13);
    let prev_dbeta = rand_vec(cols, 14);
    let tdy = k.upload([rows, cols], &dy);
    for accumulate in [false, true] {
        let dx = k.upload([rows, cols], &prev_dx);
        let dgamma = k.upload([cols], &prev_dgamma);
        let dbeta = k.upload([cols], &prev_dbeta);
        batchnorm::backward(
            gpu, &l.x, &tdy, &l.gamma, &l.beta, &l.mean, &l.invstd, &dx, &dgamma, &dbeta,
            &l.scratch, &bn, accumulate,
        )
        .unwrap();
        let want = batchnorm::reference_backward(
            &h.x,
            &dy,
            cols,
            &h.gamma,
            &h.beta,
            &prev_dx,
            &prev_dgamma,
            &prev_dbeta,
            &bn,
            accumulate,
        );
        let acc = format!("accumulate={accumulate}");
        k.expect(&format!("dx {acc}"), &dx, &want.dx, t);
        // Sums over all rows: the bound grows with the row count.
        let sum_tol = Tol::new(tol * (rows as f64).sqrt(), tol);
        k.expect(&format!("dgamma {acc}"), &dgamma, &want.dgamma, sum_tol);
        k.expect(&format!("dbeta {acc}"), &dbeta, &want.dbeta, sum_tol);
    }

    batchnorm::forward_eval(
        gpu,
        &l.x,
        &l.gamma,
        &l.beta,
        &l.running_mean,
        &l.running_var,
        &l.y,
        &bn,
    )
    .unwrap();
    let want = batchnorm::reference_forward_eval(
        &h.x,
        cols,
        &h.gamma,
        &h.beta,
        &running_mean,
        &running_var,
        &bn,
    );
    k.expect("eval y", &l.y, &want, t);
    k.finish();
}

#[test]
fn small_and_nhwc_shapes_match_reference() {
    for gpu in gpus() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[1, 1], &[1]),
            (&[3, 5], &[1, 3]),
            (&[17, 3], &[1, 17]),
            (&[2, 5, 3, 7], &[1, 2]),
            (&[4, 3, 2, 5], &[1, 2, 4]),
            (&[129, 64], &[1, 3]),
            (&[1000, 3], &[1, 2, 4, 8]),
            (&[8, 2, 2, 131], &[1, 4, 8]),
            // Channel counts divisible by 4 run the vec4 build.
            (&[17, 4], &[1]),
            (&[6, 3, 3, 12], &[1, 2, 3, 6]),
            (&[1000, 8], &[1, 8]),
        ];
        for (seed, &(dims, groups)) in cases.iter().enumerate() {
            let (rows, cols) = Shape::new(dims).rows_cols();
            let h = host(rows, cols, 100 * seed as u64);
            for &g in groups {
                check(&gpu, dims, g, &h, 1e-4);
            }
        }
    }
}

#[test]
fn large_batch_reduction_matches_reference() {
    // A ResNet stage-1 activation at batch 32: 25088 rows of 32 channels, many chunks per group.
    for gpu in gpus() {
        let dims = [32, 28, 28, 32];
        let h = host(32 * 28 * 28, 32, 7);
        for groups in [1, 4] {
            check(&gpu, &dims, groups, &h, 2e-4);
        }
    }
}

#[test]
fn variance_is_sound_for_large_means() {
    // x = 100 + 0.1·u: E[x²] - E[x]² in f32 would lose most of the variance (1e4 vs 3e-3).
    for gpu in gpus() {
        for (rows, cols) in [(3000, 2), (3000, 8)] {
            let mut h = host(rows, cols, 21);
            h.x = rand_vec(rows * cols, 22)
                .iter()
                .map(|v| 100.0 + 0.1 * v)
                .collect();
            check(&gpu, &[rows, cols], 1, &h, 2e-3);
        }
    }
}

#[test]
fn constant_column_gives_finite_results() {
    let gpu = gpu();
    for cols in [3, 4] {
        let rows = 300;
        let mut h = host(rows, cols, 31);
        for r in 0..rows {
            h.x[r * cols + 1] = 3.25;
        }
        check(&gpu, &[rows, cols], 1, &h, 1e-4);
        check(&gpu, &[rows, cols], 2, &h, 1e-4);
        let mut k = Harness::new(&gpu, format!("constant column of {cols}"));
        let l = upload(&mut k, &[rows, cols], 1, &h);
        train(&gpu, &l, &BatchNorm::default());
        let y = k.read(&l.y);
        assert!(y.iter().all(|v| v.is_finite()));
        assert_eq!(
            y[cols + 1],
            h.beta[1],
            "a constant column normalises to beta"
        );
    }
}

#[test]
fn running_stats_follow_momentum_and_eval_uses_them() {
    let gpu = gpu();
    let mut k = Harness::new(&gpu, "momentum 0.25, two groups");
    let (rows, cols) = (64, 5);
    let h = host(rows, cols, 41);
    let bn = BatchNorm {
        momentum: 0.25,
        groups: 2,
        ..BatchNorm::default()
    };
    let l = upload(&mut k, &[rows, cols], 2, &h);
    train(&gpu, &l, &bn);
    let running_mean = k.read(&l.running_mean);
    let running_var = k.read(&l.running_var);
    // The momentum rule written out: average of the two half-batches' mean and unbiased variance.
    let n = rows / 2;
    for c in 0..cols {
        let (mut bm, mut bv) = (0.0, 0.0);
        for g in 0..2 {
            let col: Vec<f64> = (g * n..(g + 1) * n)
                .map(|r| h.x[r * cols + c] as f64)
                .collect();
            let m = col.iter().sum::<f64>() / n as f64;
            bm += m / 2.0;
            bv += col.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64 / 2.0;
        }
        let want_m = 0.75 * h.running_mean[c] as f64 + 0.25 * bm;
        let want_v = 0.75 * h.running_var[c] as f64 + 0.25 * bv;
        let abs = Tol::new(1e-5, 0.0);
        k.expect_values(
            &format!("running mean {c}"),
            &running_mean[c..=c],
            &[want_m],
            abs,
        );
        k.expect_values(
            &format!("running var {c}"),
            &running_var[c..=c],
            &[want_v],
            abs,
        );
    }
    batchnorm::forward_eval(
        &gpu,
        &l.x,
        &l.gamma,
        &l.beta,
        &l.running_mean,
        &l.running_var,
        &l.y,
        &bn,
    )
    .unwrap();
    let got = k.read(&l.y);
    let want = batchnorm::reference_forward_eval(
        &h.x,
        cols,
        &h.gamma,
        &h.beta,
        &running_mean,
        &running_var,
        &bn,
    );
    k.expect_values("eval", &got, &want, Tol::new(1e-5, 1e-5));
    let with_batch_stats = train_reference(&h, cols, &bn);
    assert!(
        contrastive::kernels::check_close(&got, &with_batch_stats.y, 1e-2, 0.0).is_err(),
        "eval output equals the train output: running statistics were not used"
    );
    k.finish();
}

#[test]
fn bad_groups_shapes_and_scratch_are_errors() {
    let gpu = gpu();
    let mut k = Harness::new(&gpu, "errors");
    let h = host(6, 4, 51);
    let l = upload(&mut k, &[6, 4], 1, &h);
    let call = |bn: &BatchNorm, gamma: &Tensor, scratch: &Tensor| {
        batchnorm::forward_train(
            &gpu,
            &l.x,
            gamma,
            &l.beta,
            &l.y,
            &l.mean,
            &l.invstd,
            &l.running_mean,
            &l.running_var,
            scratch,
            bn,
        )
    };
    for groups in [0, 4] {
        let bn = BatchNorm {
            groups,
            ..BatchNorm::default()
        };
        let err = call(&bn, &l.gamma, &l.scratch).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "groups={groups}: {err}");
    }
    let bn = BatchNorm::default();
    let short_gamma = k.output([3]);
    let err = call(&bn, &short_gamma, &l.scratch).unwrap_err().to_string();
    assert!(
        err.contains("gamma") && err.contains("[3]") && err.contains("[6, 4]"),
        "{err}"
    );
    let small = k.output([2]);
    let err = call(&bn, &l.gamma, &small).unwrap_err().to_string();
    assert!(err.contains("scratch"), "{err}");
    // Two groups need [2, 4] saved statistics, not [1, 4].
    let bn2 = BatchNorm {
        groups: 2,
        ..BatchNorm::default()
    };
    let err = call(&bn2, &l.gamma, &l.scratch).unwrap_err().to_string();
    assert!(err.contains("save_mean"), "{err}");
}
