mod common;

use common::*;
use contrastive::kernels::reduce::{self, Axis, Reduce};
use contrastive::{Arena, Gpu};

const OPS: [Reduce; 3] = [Reduce::Sum, Reduce::Mean, Reduce::Max];

/// Runs every op along `axis` on a `[rows, cols]` input, plain and accumulating into random
/// previous values, against the reference.
fn check(gpu: &Gpu, rows: usize, cols: usize, axis: Axis, tol: f64) {
    let mut arena = Arena::for_gpu("test", gpu);
    let x = rand_vec(rows * cols, (rows * 7919 + cols) as u64);
    let tx = arena.upload(gpu, [rows, cols], &x).unwrap();
    let n_out = match axis {
        Axis::Rows => rows,
        Axis::Cols => cols,
    };
    let prev = rand_vec(n_out, 99);
    for op in OPS {
        let want = reduce::reference(&x, rows, cols, op, axis);
        for acc in [false, true] {
            let out = arena.upload(gpu, [n_out], &prev).unwrap();
            reduce::reduce(gpu, &tx, &out, op, axis, acc).unwrap();
            let got: Vec<f32> = gpu.read(out.region).unwrap();
            let want: Vec<f64> = if acc {
                want.iter().zip(&prev).map(|(w, &p)| w + p as f64).collect()
            } else {
                want.clone()
            };
            assert_close(
                &format!("{op:?} {axis:?} {rows}x{cols} acc={acc}"),
                &got,
                &want,
                tol,
                1e-5,
            );
        }
    }
}

#[test]
fn awkward_shapes_match_reference_on_both_axes() {
    let gpu = gpu();
    for (rows, cols) in [
        (1, 1),
        (1, 3),
        (3, 1),
        (17, 31),
        (31, 17),
        (64, 129),
        (129, 64),
        // Fewer than 8 long rows take the workgroup-per-row path on CPU adapters too.
        (1, 4097),
        (3, 4097),
        (7, 100),
        (4097, 3),
        (256, 63),
    ] {
        for axis in [Axis::Rows, Axis::Cols] {
            check(&gpu, rows, cols, axis, 1e-5);
        }
    }
}

#[test]
fn tall_single_column_reduces_to_one_value() {
    check(&gpu(), 200_000, 1, Axis::Cols, 1e-3);
}

#[test]
fn tall_skinny_columns() {
    check(&gpu(), 50_176 / 8, 64, Axis::Cols, 1e-4);
}

#[test]
fn more_rows_than_one_grid_dimension() {
    // Row-per-workgroup launches fold past 65535 workgroups.
    check(&gpu(), 65_600, 64, Axis::Rows, 1e-5);
}

#[test]
fn rank_three_input_reduces_its_last_dimension() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let x = rand_vec(2 * 3 * 5, 4);
    let tx = arena.upload(&gpu, [2, 3, 5], &x).unwrap();
    let out = arena.tensor(&gpu, [2, 3]).unwrap();
    reduce::reduce(&gpu, &tx, &out, Reduce::Sum, Axis::Rows, false).unwrap();
    let got: Vec<f32> = gpu.read(out.region).unwrap();
    assert_close(
        "sum over [2,3,5]",
        &got,
        &reduce::reference(&x, 6, 5, Reduce::Sum, Axis::Rows),
        1e-6,
        1e-6,
    );
}

#[test]
fn output_size_mismatch_is_an_error_naming_the_shapes() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let x = arena.tensor(&gpu, [4, 3]).unwrap();
    let out = arena.tensor(&gpu, [4]).unwrap();
    let err = reduce::reduce(&gpu, &x, &out, Reduce::Sum, Axis::Cols, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[4, 3]") && err.contains("[4]"), "{err}");
    reduce::reduce(&gpu, &x, &out, Reduce::Sum, Axis::Rows, false).unwrap();
}
