mod common;

use common::*;
use contrastive::kernels::reduce::{self, Axis, Reduce};
use contrastive::Arena;

const OPS: [Reduce; 3] = [Reduce::Sum, Reduce::Mean, Reduce::Max];

/// Runs every op along `axis` on a `[rows, cols]` input, plain and accumulating into random
/// previous values, against the reference.
fn check(cases: &[(usize, usize, Axis)], tol: f64) {
    for_cases(&gpu(), cases, |h, &(rows, cols, axis)| {
        let x = rand_vec(rows * cols, (rows * 7919 + cols) as u64);
        let tx = h.upload([rows, cols], &x);
        let n_out = match axis {
            Axis::Rows => rows,
            Axis::Cols => cols,
        };
        let prev = rand_vec(n_out, 99);
        let tol = Tol::new(tol, 1e-5);
        for op in OPS {
            let want = reduce::reference(&x, rows, cols, op, axis);
            h.expect_both_ways(
                &format!("{op:?}"),
                [n_out],
                &prev,
                &want,
                tol,
                |gpu, out, acc| reduce::reduce(gpu, &tx, out, op, axis, acc),
            );
        }
    });
}

#[test]
fn awkward_shapes_match_reference_on_both_axes() {
    let shapes = [
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
    ];
    let cases: Vec<_> = shapes
        .into_iter()
        .flat_map(|(r, c)| [(r, c, Axis::Rows), (r, c, Axis::Cols)])
        .collect();
    check(&cases, 1e-5);
}

#[test]
fn tall_single_column_reduces_to_one_value() {
    check(&[(200_000, 1, Axis::Cols)], 1e-3);
}

#[test]
fn tall_skinny_columns() {
    check(&[(50_176 / 8, 64, Axis::Cols)], 1e-4);
}

#[test]
fn more_rows_than_one_grid_dimension() {
    // Row-per-workgroup launches fold past 65535 workgroups.
    check(&[(65_600, 64, Axis::Rows)], 1e-5);
}

#[test]
fn rank_three_input_reduces_its_last_dimension() {
    let gpu = gpu();
    let mut h = Harness::new(&gpu, "sum over [2,3,5]");
    let x = rand_vec(2 * 3 * 5, 4);
    let tx = h.upload([2, 3, 5], &x);
    let out = h.output([2, 3]);
    reduce::reduce(&gpu, &tx, &out, Reduce::Sum, Axis::Rows, false).unwrap();
    let want = reduce::reference(&x, 6, 5, Reduce::Sum, Axis::Rows);
    h.expect("out", &out, &want, Tol::new(1e-6, 1e-6));
    h.finish();
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
