mod common;

use common::*;
use contrastive::kernels::pool;
use contrastive::Arena;

/// Shapes: odd heights and widths, batch 1, channel counts on both the vec4 and the scalar path.
const SHAPES: [[usize; 4]; 6] = [
    [1, 5, 7, 1],
    [2, 6, 4, 3],
    [3, 7, 7, 4],
    [1, 4, 9, 5],
    [2, 3, 5, 17],
    [2, 8, 6, 32],
];

#[test]
fn global_average_pool_and_backward_match_reference() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    for (i, &d @ [n, h, w, c]) in SHAPES.iter().enumerate() {
        let x = rand_vec(n * h * w * c, i as u64);
        let dy = rand_vec(n * c, 10 + i as u64);
        let prev = rand_vec(n * h * w * c, 20 + i as u64);
        let tx = arena.upload(&gpu, d, &x).unwrap();
        let ty = arena.tensor(&gpu, [n, c]).unwrap();
        pool::avgpool_global(&gpu, &tx, &ty).unwrap();
        let got: Vec<f32> = gpu.read(ty.region).unwrap();
        assert_close(
            &format!("avgpool {d:?}"),
            &got,
            &pool::reference_avgpool_global(&x, d),
            1e-6,
            1e-5,
        );

        let tdy = arena.upload(&gpu, [n, c], &dy).unwrap();
        for acc in [false, true] {
            let tdx = arena.upload(&gpu, d, &prev).unwrap();
            pool::avgpool_global_backward(&gpu, &tdy, &tdx, acc).unwrap();
            let got: Vec<f32> = gpu.read(tdx.region).unwrap();
            let want = pool::reference_avgpool_global_backward(&dy, d, acc.then_some(&prev[..]));
            assert_close(
                &format!("avgpool backward {d:?} acc={acc}"),
                &got,
                &want,
                1e-6,
                1e-5,
            );
        }
        arena.reset();
    }
}

#[test]
fn max_pool_and_backward_match_reference_with_ties() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    for (i, &d @ [n, h, w, c]) in SHAPES.iter().enumerate() {
        // Values on a coarse grid so that windows often hold ties.
        let x: Vec<f32> = rand_vec(n * h * w * c, i as u64)
            .iter()
            .map(|v| (v * 2.0).round())
            .collect();
        let yd = [n, h / 2, w / 2, c];
        let ylen = yd.iter().product();
        let dy = rand_vec(ylen, 10 + i as u64);
        let prev = rand_vec(n * h * w * c, 20 + i as u64);
        let tx = arena.upload(&gpu, d, &x).unwrap();
        let ty = arena.tensor(&gpu, yd).unwrap();
        let targ = arena.tensor(&gpu, yd).unwrap();
        pool::maxpool2x2(&gpu, &tx, &ty, &targ).unwrap();
        let got: Vec<f32> = gpu.read(ty.region).unwrap();
        let arg: Vec<u32> = gpu.read(targ.region).unwrap();
        let (want, want_arg) = pool::reference_maxpool2x2(&x, d);
        assert_close(&format!("maxpool {d:?}"), &got, &want, 0.0, 0.0);
        assert_eq!(arg, want_arg, "maxpool argmax {d:?}");

        let tdy = arena.upload(&gpu, yd, &dy).unwrap();
        for acc in [false, true] {
            let tdx = arena.upload(&gpu, d, &prev).unwrap();
            pool::maxpool2x2_backward(&gpu, &tdy, &targ, &tdx, acc).unwrap();
            let got: Vec<f32> = gpu.read(tdx.region).unwrap();
            let want = pool::reference_maxpool2x2_backward(
                &dy,
                &want_arg,
                x.len(),
                acc.then_some(&prev[..]),
            );
            assert_close(
                &format!("maxpool backward {d:?} acc={acc}"),
                &got,
                &want,
                1e-7,
                0.0,
            );
        }
        arena.reset();
    }
}

#[test]
fn pool_shape_errors_name_the_shapes() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let x = arena.tensor(&gpu, [2, 5, 4, 3]).unwrap();
    let bad_y = arena.tensor(&gpu, [2, 3, 2, 3]).unwrap();
    let arg = arena.tensor(&gpu, [2, 3, 2, 3]).unwrap();
    let err = pool::maxpool2x2(&gpu, &x, &bad_y, &arg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[2, 3, 2, 3]")
            && err.contains("[2, 5, 4, 3]")
            && err.contains("[2, 2, 2, 3]"),
        "{err}"
    );

    let thin = arena.tensor(&gpu, [1, 1, 4, 2]).unwrap();
    let y = arena.tensor(&gpu, [1, 0, 2, 2]).unwrap();
    let err = pool::maxpool2x2(&gpu, &thin, &y, &y)
        .unwrap_err()
        .to_string();
    assert!(err.contains("smaller than the 2x2 window"), "{err}");

    let wrong = arena.tensor(&gpu, [3, 2]).unwrap();
    let err = pool::avgpool_global(&gpu, &x, &wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[3, 2]") && err.contains("[N, C]"), "{err}");
    let err = pool::avgpool_global_backward(&gpu, &wrong, &x, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[3, 2]"), "{err}");
    let flat = arena.tensor(&gpu, [40, 3]).unwrap();
    assert!(pool::avgpool_global(&gpu, &flat, &wrong).is_err());
}
