mod common;

use common::*;
use contrastive::kernels::elementwise::{self, Broadcast, Direction, Map};
use contrastive::Arena;

const MAPS: [Map; 7] = [
    Map::Broadcast { alpha: 3.0 },
    Map::Fill { alpha: -1.5 },
    Map::Axpby {
        alpha: 1.0,
        beta: -1.0,
    },
    Map::Mul { alpha: 0.5 },
    Map::MaskPositive,
    Map::Affine {
        alpha: -2.0,
        beta: 0.25,
    },
    Map::Relu,
];

const BROADCASTS: [Broadcast; 4] = [
    Broadcast::Full,
    Broadcast::Row,
    Broadcast::Col,
    Broadcast::Scalar,
];

#[test]
fn every_map_and_broadcast_matches_reference() {
    // (8, 12) and (129, 64) take the vec4 path for every broadcast (a scalar b, or the 129-long
    // column, bound padded to whole vec4s); the rest the scalar one.
    let shapes = [(1, 1), (1, 3), (17, 31), (129, 64), (3, 257), (8, 12)];
    let cases = shapes
        .into_iter()
        .flat_map(|s| BROADCASTS.into_iter().enumerate().map(move |b| (s, b)));
    for_cases(&gpu(), cases, |h, ((rows, cols), (bi, bcast))| {
        let blen = match bcast {
            Broadcast::Full => rows * cols,
            Broadcast::Row => cols,
            Broadcast::Col => rows,
            Broadcast::Scalar => 1,
        };
        let a = rand_vec(rows * cols, 1 + bi as u64);
        let b = rand_vec(blen, 2 + bi as u64);
        let prev = rand_vec(rows * cols, 3);
        let ta = h.upload([rows, cols], &a);
        let tb = h.upload([blen], &b);
        for m in MAPS {
            for acc in [false, true] {
                let out = h.upload([rows, cols], &prev);
                elementwise::map(h.gpu, m, &ta, &tb, bcast, &out, acc).unwrap();
                let want = elementwise::reference(m, &a, &b, bcast, cols, &prev, acc);
                h.expect(
                    &format!("{m:?} acc={acc}"),
                    &out,
                    &want,
                    Tol::new(1e-6, 1e-6),
                );
            }
        }
    });
}

#[test]
fn large_launch_folds_into_second_grid_dimension() {
    // 65535 workgroups of 256 is the 1-D limit; go past it.
    let n = 65535 * 256 + 1000;
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let a: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let ta = arena.upload(&gpu, [n], &a).unwrap();
    let out = arena.tensor(&gpu, [n]).unwrap();
    elementwise::map(
        &gpu,
        Map::Affine {
            alpha: 2.0,
            beta: 1.0,
        },
        &ta,
        &ta,
        Broadcast::Full,
        &out,
        false,
    )
    .unwrap();
    let got: Vec<f32> = gpu.read(out.region).unwrap();
    for i in [0, 1, 65535 * 256 - 1, 65535 * 256, n - 1] {
        assert_eq!(got[i], 2.0 * a[i] + 1.0, "index {i}");
    }
}

#[test]
fn broadcast_shape_mismatch_is_an_error_naming_the_shapes() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let a = arena.tensor(&gpu, [4, 3]).unwrap();
    let b = arena.tensor(&gpu, [4]).unwrap();
    let err = elementwise::map(
        &gpu,
        Map::Mul { alpha: 1.0 },
        &a,
        &b,
        Broadcast::Row,
        &a,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[4]") && err.contains("[4, 3]"), "{err}");
}

#[test]
fn column_block_copy_both_ways() {
    let cases = [(1, 1, 1, 0), (3, 1, 5, 0), (17, 4, 31, 27), (5, 30, 31, 1)];
    for_cases(&gpu(), cases, |h, (rows, c, wide, col0)| {
        let a = rand_vec(rows * c, 1);
        let b = rand_vec(rows * wide, 2);
        let ta = h.upload([rows, c], &a);
        let tb = h.upload([rows, wide], &b);
        elementwise::copy_cols(h.gpu, &ta, &tb, col0, Direction::IntoWide, true).unwrap();
        // Sums in f32, as the kernel adds: the copy must be exact.
        let wide_want: Vec<f32> = (0..rows * wide)
            .map(|i| {
                let (r, j) = (i / wide, i % wide);
                let inside = (col0..col0 + c).contains(&j);
                b[i] + if inside { a[r * c + j - col0] } else { 0.0 }
            })
            .collect();
        h.expect("into wide", &tb, &f64s(&wide_want), Tol::EXACT);
        elementwise::copy_cols(h.gpu, &ta, &tb, col0, Direction::FromWide, false).unwrap();
        let block: Vec<f32> = (0..rows * c)
            .map(|i| wide_want[(i / c) * wide + col0 + i % c])
            .collect();
        h.expect("from wide", &ta, &f64s(&block), Tol::EXACT);
    });
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let a = arena.tensor(&gpu, [2, 3]).unwrap();
    let b = arena.tensor(&gpu, [2, 4]).unwrap();
    assert!(elementwise::copy_cols(&gpu, &a, &b, 2, Direction::IntoWide, false).is_err());
}
