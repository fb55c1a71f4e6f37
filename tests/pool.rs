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
    for_cases(&gpu(), SHAPES, |h, d| {
        let [n, hh, w, c] = d;
        let x = rand_vec(n * hh * w * c, 1);
        let tx = h.upload(d, &x);
        let ty = h.output([n, c]);
        pool::avgpool_global(h.gpu, &tx, &ty).unwrap();
        h.expect(
            "avg",
            &ty,
            &pool::reference_avg(&x, d),
            Tol::new(1e-6, 1e-5),
        );
        let dy = rand_vec(n * c, 2);
        let tdy = h.upload([n, c], &dy);
        let spread: Vec<f64> = (0..x.len())
            .map(|i| dy[(i / (hh * w * c)) * c + i % c] as f64 / (hh * w) as f64)
            .collect();
        let prev = rand_vec(x.len(), 3);
        h.expect_both_ways(
            "avg backward",
            d,
            &prev,
            &spread,
            Tol::new(1e-6, 1e-5),
            |gpu, dx, acc| pool::avgpool_global_backward(gpu, &tdy, dx, acc),
        );
    });
}

#[test]
fn max_pool_forward_and_backward_with_odd_sizes() {
    let cases = SHAPES.into_iter().filter(|d| d[1] >= 2 && d[2] >= 2);
    for_cases(&gpu(), cases, |h, d| {
        let [n, hh, w, c] = d;
        let x = rand_vec(n * hh * w * c, 4);
        let o = [n, hh / 2, w / 2, c];
        let tx = h.upload(d, &x);
        let ty = h.output(o);
        let ta = h.output(o);
        pool::maxpool2x2(h.gpu, &tx, &ty, &ta).unwrap();
        let (want, arg) = pool::reference_max(&x, d);
        h.expect("max", &ty, &want, Tol::EXACT);
        assert_eq!(h.read_u32(&ta), arg, "{d:?}");
        let dy = rand_vec(want.len(), 5);
        let tdy = h.upload(o, &dy);
        let mut scattered = vec![0.0; x.len()];
        for (o, &k) in arg.iter().enumerate() {
            scattered[k as usize] += dy[o] as f64;
        }
        let prev = rand_vec(x.len(), 6);
        let tol = Tol::new(1e-7, 1e-6);
        h.expect_both_ways("max backward", d, &prev, &scattered, tol, |gpu, dx, acc| {
            pool::maxpool2x2_backward(gpu, &tdy, &ta, dx, acc)
        });
    });
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
