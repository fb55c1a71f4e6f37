mod common;

use common::*;
use contrastive::kernels::l2norm;
use contrastive::Arena;

// Fewer than 8 rows of 64 or more columns take the workgroup-per-row path on CPU adapters too.
const SHAPES: [(usize, usize); 10] = [
    (1, 1),
    (1, 3),
    (3, 1),
    (17, 31),
    (31, 17),
    (64, 129),
    (129, 64),
    (256, 128),
    (2, 4097),
    (7, 129),
];

#[test]
fn forward_matches_reference() {
    for_cases(&gpu(), SHAPES, |h, (rows, cols)| {
        let x: Vec<f32> = rand_vec(rows * cols, rows as u64)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let tx = h.upload([rows, cols], &x);
        let y = h.output([rows, cols]);
        let norms = h.output([rows]);
        l2norm::l2norm_forward(h.gpu, &tx, &y, &norms).unwrap();
        let (wy, wn) = l2norm::reference_forward(&x, rows, cols);
        h.expect("y", &y, &wy, Tol::new(1e-6, 1e-5));
        h.expect("norms", &norms, &wn, Tol::new(0.0, 1e-5));
    });
}

#[test]
fn forward_in_place() {
    for_cases(&gpu(), [(17, 129)], |h, (rows, cols)| {
        let x = rand_vec(rows * cols, 8);
        let tx = h.upload([rows, cols], &x);
        let norms = h.output([rows]);
        l2norm::l2norm_forward(h.gpu, &tx, &tx, &norms).unwrap();
        let (wy, _) = l2norm::reference_forward(&x, rows, cols);
        h.expect("in place", &tx, &wy, Tol::new(1e-6, 1e-5));
    });
}

#[test]
fn backward_matches_reference_and_accumulates() {
    for_cases(&gpu(), SHAPES, |h, (rows, cols)| {
        let x = rand_vec(rows * cols, 11 + rows as u64);
        let dy = rand_vec(rows * cols, 12);
        let prev = rand_vec(rows * cols, 13);
        let tx = h.upload([rows, cols], &x);
        let y = h.output([rows, cols]);
        let norms = h.output([rows]);
        let tdy = h.upload([rows, cols], &dy);
        l2norm::l2norm_forward(h.gpu, &tx, &y, &norms).unwrap();
        let (hy, hn) = (h.read(&y), h.read(&norms));
        for acc in [false, true] {
            let dx = h.upload([rows, cols], &prev);
            l2norm::l2norm_backward(h.gpu, &y, &norms, &tdy, &dx, acc).unwrap();
            let want = l2norm::reference_backward(&hy, &hn, &dy, &prev, cols, acc);
            h.expect(&format!("acc={acc}"), &dx, &want, Tol::new(1e-5, 1e-4));
        }
    });
}

#[test]
fn backward_is_the_gradient_of_the_forward() {
    // Finite differences of f(x) = <normalize(x), w> against the backward with dy = w, in f64
    // through the references (the GPU backward is checked against the same reference above).
    let (rows, cols) = (3, 5);
    let x = rand_vec(rows * cols, 21);
    let w = rand_vec(rows * cols, 22);
    let (y, n) = l2norm::reference_forward(&x, rows, cols);
    let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
    let n32: Vec<f32> = n.iter().map(|&v| v as f32).collect();
    let grad = l2norm::reference_backward(&y32, &n32, &w, &w, cols, false);
    let f = |x: &[f32]| -> f64 {
        let (y, _) = l2norm::reference_forward(x, rows, cols);
        y.iter().zip(&w).map(|(a, &b)| a * b as f64).sum()
    };
    for i in 0..rows * cols {
        let h = 1e-3f32;
        let mut xp = x.clone();
        xp[i] += h;
        let mut xm = x.clone();
        xm[i] -= h;
        let fd = (f(&xp) - f(&xm)) / (xp[i] as f64 - xm[i] as f64);
        assert!(
            (fd - grad[i]).abs() < 1e-3,
            "index {i}: {fd} vs {}",
            grad[i]
        );
    }
}

#[test]
fn zero_row_gives_zero_output_and_finite_gradient() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let (rows, cols) = (3, 70);
    let mut x = rand_vec(rows * cols, 31);
    x[cols..2 * cols].fill(0.0);
    let tx = arena.upload(&gpu, [rows, cols], &x).unwrap();
    let y = arena.tensor(&gpu, [rows, cols]).unwrap();
    let norms = arena.tensor(&gpu, [rows]).unwrap();
    let dy = arena
        .upload(&gpu, [rows, cols], &rand_vec(rows * cols, 32))
        .unwrap();
    let dx = arena.tensor(&gpu, [rows, cols]).unwrap();
    l2norm::l2norm_forward(&gpu, &tx, &y, &norms).unwrap();
    l2norm::l2norm_backward(&gpu, &y, &norms, &dy, &dx, false).unwrap();
    let hy: Vec<f32> = gpu.read(y.region).unwrap();
    assert!(hy[cols..2 * cols].iter().all(|&v| v == 0.0));
    assert_eq!(gpu.read::<f32>(norms.region).unwrap()[1], 1e-12);
    let hdx: Vec<f32> = gpu.read(dx.region).unwrap();
    assert!(hdx.iter().all(|v| v.is_finite()), "non-finite gradient");
}

#[test]
fn norms_of_the_wrong_length_are_an_error() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let x = arena.tensor(&gpu, [4, 3]).unwrap();
    let norms = arena.tensor(&gpu, [3]).unwrap();
    let err = l2norm::l2norm_forward(&gpu, &x, &x, &norms)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[4, 3]") && err.contains("[3]"), "{err}");
}
