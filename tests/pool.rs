mod common;

use common::*;
use contrastive::kernels::pool;
use contrastive::Arena;

const SHAPES: [[usize; 4]; 5] = [
    [1, 1, 1, 1],
    [2, 3, 5, 4],
    [1, 7, 5, 3],
    [3, 4, 4, 17],
    [2, 28, 28, 32],
];

#[test]
fn global_average_forward_and_backward() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    for d in SHAPES {
        let [n, h, w, c] = d;
        let x = rand_vec(n * h * w * c, 1);
        let tx = arena.upload(&gpu, d, &x).unwrap();
        let ty = arena.tensor(&gpu, [n, c]).unwrap();
        pool::avgpool_global(&gpu, &tx, &ty).unwrap();
        assert_close(
            &format!("avg {d:?}"),
            &gpu.read(ty.region).unwrap(),
            &pool::reference_avg(&x, d),
            1e-6,
            1e-5,
        );
        let dy = rand_vec(n * c, 2);
        let tdy = arena.upload(&gpu, [n, c], &dy).unwrap();
        for acc in [false, true] {
            let prev = rand_vec(x.len(), 3);
            let tdx = arena.upload(&gpu, d, &prev).unwrap();
            pool::avgpool_global_backward(&gpu, &tdy, &tdx, acc).unwrap();
            let want: Vec<f64> = (0..x.len())
                .map(|i| {
                    dy[(i / (h * w * c)) * c + i % c] as f64 / (h * w) as f64
                        + if acc { prev[i] as f64 } else { 0.0 }
                })
                .collect();
            assert_close(
                &format!("avg backward {d:?}"),
                &gpu.read(tdx.region).unwrap(),
                &want,
                1e-6,
                1e-5,
            );
        }
        arena.reset();
    }
}

#[test]
fn max_pool_forward_and_backward_with_odd_sizes() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    for d in SHAPES.iter().copied().filter(|d| d[1] >= 2 && d[2] >= 2) {
        let [n, h, w, c] = d;
        let x = rand_vec(n * h * w * c, 4);
        let o = [n, h / 2, w / 2, c];
        let tx = arena.upload(&gpu, d, &x).unwrap();
        let ty = arena.tensor(&gpu, o).unwrap();
        let ta = arena.tensor(&gpu, o).unwrap();
        pool::maxpool2x2(&gpu, &tx, &ty, &ta).unwrap();
        let (want, arg) = pool::reference_max(&x, d);
        assert_close(
            &format!("max {d:?}"),
            &gpu.read(ty.region).unwrap(),
            &want,
            0.0,
            0.0,
        );
        assert_eq!(gpu.read::<u32>(ta.region).unwrap(), arg);
        let dy = rand_vec(want.len(), 5);
        let tdy = arena.upload(&gpu, o, &dy).unwrap();
        for acc in [false, true] {
            let prev = rand_vec(x.len(), 6);
            let tdx = arena.upload(&gpu, d, &prev).unwrap();
            pool::maxpool2x2_backward(&gpu, &tdy, &ta, &tdx, acc).unwrap();
            let mut want: Vec<f64> = prev
                .iter()
                .map(|&p| if acc { p as f64 } else { 0.0 })
                .collect();
            for (o, &k) in arg.iter().enumerate() {
                want[k as usize] += dy[o] as f64;
            }
            assert_close(
                &format!("max backward {d:?}"),
                &gpu.read(tdx.region).unwrap(),
                &want,
                1e-7,
                1e-6,
            );
        }
        arena.reset();
    }
}

#[test]
fn pooling_rejects_wrong_shapes() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let x = arena.tensor(&gpu, [2, 4, 4]).unwrap();
    let y = arena.tensor(&gpu, [2, 4]).unwrap();
    assert!(pool::avgpool_global(&gpu, &x, &y)
        .unwrap_err()
        .to_string()
        .contains("[N, H, W, C]"));
    let x = arena.tensor(&gpu, [2, 4, 4, 3]).unwrap();
    let e = pool::avgpool_global(&gpu, &x, &y).unwrap_err().to_string();
    assert!(e.contains("[2, 3]"), "{e}");
}
