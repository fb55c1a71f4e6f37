mod common;

use common::*;
use contrastive::kernels::matmul::{self, Matmul, Trans, Variant};
use contrastive::{Arena, Error, Gpu};

const MODES: [Trans; 3] = [Trans::NN, Trans::NT, Trans::TN];
const VARIANTS: [Variant; 3] = [Variant::Vec4, Variant::Scalar, Variant::Shared];

/// (M, N, K): the awkward sizes 1, 3, 17, 31, 64, 129 in combinations that cover row vectors,
/// single columns, K = 1, sizes just past a tile, and shapes the vec4 kernels accept (K, N and,
/// for TN, M multiples of 4) but whose tiles are cut by the matrix edge.
const SHAPES: [(usize, usize, usize); 14] = [
    (1, 1, 1),
    (129, 31, 17),
    (64, 64, 64),
    (3, 129, 1),
    (1, 64, 64),
    (1, 129, 31),
    (17, 1, 129),
    (31, 17, 3),
    (129, 64, 64),
    (64, 3, 129),
    (20, 68, 36),
    (132, 260, 8),
    (36, 4, 4),
    (4, 96, 512),
];

/// `tol + |ref|·eps`, with the absolute part growing like the rounding of a K-term sum.
fn tolerance(k: usize) -> (f64, f64) {
    (1e-4 * (k.max(1) as f64).sqrt(), 1e-5)
}

struct Case {
    trans: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    bias: bool,
    relu: bool,
    accumulate: bool,
    /// Give the matmul split-K scratch (the shared-memory variant then splits long K loops).
    split: bool,
}

impl Case {
    fn plain(trans: Trans, (m, n, k): (usize, usize, usize)) -> Case {
        Case {
            trans,
            m,
            n,
            k,
            alpha: 1.0,
            bias: false,
            relu: false,
            accumulate: false,
            split: false,
        }
    }

    /// Runs the case on `variant` and compares with the f64 reference.
    fn check(&self, gpu: &Gpu, arena: &mut Arena, variant: Variant, seed: u64) {
        let (m, n, k) = (self.m, self.n, self.k);
        let (a_shape, b_shape) = match self.trans {
            Trans::NN => ([m, k], [k, n]),
            Trans::NT => ([m, k], [n, k]),
            Trans::TN => ([k, m], [k, n]),
        };
        let a = rand_vec(m * k, seed);
        let b = rand_vec(k * n, seed + 1);
        let prev = rand_vec(m * n, seed + 2);
        let bias = rand_vec(n, seed + 3);
        let ta = arena.upload(gpu, a_shape, &a).unwrap();
        let tb = arena.upload(gpu, b_shape, &b).unwrap();
        let tc = arena.upload(gpu, [m, n], &prev).unwrap();
        let tbias = arena.upload(gpu, [n], &bias).unwrap();
        let room = matmul::split_k_scratch(variant, m, n, k);
        let scratch = arena.tensor(gpu, [room.max(1)]).unwrap();
        let spec = Matmul {
            trans: self.trans,
            alpha: self.alpha,
            bias: self.bias.then_some(&tbias),
            relu: self.relu,
            accumulate: self.accumulate,
            scratch: self.split.then_some(&scratch),
        };
        matmul::matmul_with(gpu, &ta, &tb, &tc, &spec, variant).unwrap();
        let got: Vec<f32> = gpu.read(tc.region).unwrap();
        let want = matmul::reference(
            &a,
            &b,
            &prev,
            m,
            n,
            k,
            &spec,
            self.bias.then_some(&bias[..]),
        );
        let (tol, eps) = tolerance(k);
        assert_close(
            &format!(
                "{variant:?} {:?} {m}x{n}x{k} alpha={} bias={} relu={} acc={} split={}",
                self.trans, self.alpha, self.bias, self.relu, self.accumulate, self.split
            ),
            &got,
            &want,
            tol,
            eps,
        );
        arena.reset();
    }
}

// One test for all numeric cases: every variant compiles its kernels once (llvmpipe takes seconds
// per kernel when its shader cache is cold, and parallel tests would each compile them again).
#[test]
fn every_variant_mode_shape_and_epilogue_matches_reference() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    for variant in VARIANTS {
        for trans in MODES {
            for (i, &shape) in SHAPES.iter().enumerate() {
                Case::plain(trans, shape).check(&gpu, &mut arena, variant, i as u64);
            }
            let shapes = [(129, 31, 17), (20, 68, 36), (1, 64, 64), (3, 129, 1)];
            for (i, &shape) in shapes.iter().enumerate() {
                let seed = 100 + 10 * i as u64;
                for (bias, relu) in [(true, false), (false, true), (true, true)] {
                    let case = Case {
                        alpha: -0.75,
                        bias,
                        relu,
                        ..Case::plain(trans, shape)
                    };
                    case.check(&gpu, &mut arena, variant, seed);
                }
                for alpha in [1.0, 0.5] {
                    let case = Case {
                        alpha,
                        accumulate: true,
                        ..Case::plain(trans, shape)
                    };
                    case.check(&gpu, &mut arena, variant, seed + 1);
                }
            }
        }
    }
}

#[test]
fn split_k_matches_reference() {
    // Few output tiles over a long K: the shared-memory variant splits K (2, 7 and 4 slices here,
    // the last one short), with alpha, accumulation and an epilogue (which is not split).
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    assert_eq!(
        matmul::split_k_scratch(Variant::Shared, 4, 96, 512),
        2 * 4 * 96
    );
    assert_eq!(
        matmul::split_k_scratch(Variant::Shared, 17, 3, 2000),
        7 * 17 * 3
    );
    assert_eq!(matmul::split_k_scratch(Variant::Vec4, 17, 3, 2000), 0);
    assert_eq!(
        matmul::split_k_scratch(Variant::Shared, 1024, 1024, 4096),
        0
    );
    for variant in VARIANTS {
        for trans in MODES {
            for (i, &shape) in [(4, 96, 512), (17, 3, 2000), (70, 65, 1100)]
                .iter()
                .enumerate()
            {
                let seed = 300 + 10 * i as u64;
                let split = Case {
                    split: true,
                    ..Case::plain(trans, shape)
                };
                split.check(&gpu, &mut arena, variant, seed);
                for (alpha, accumulate, bias) in [(0.5, true, false), (-0.75, false, true)] {
                    let case = Case {
                        alpha,
                        accumulate,
                        bias,
                        split: true,
                        ..Case::plain(trans, shape)
                    };
                    case.check(&gpu, &mut arena, variant, seed + 1);
                }
            }
        }
    }
}

#[test]
fn leading_dimensions_fold_into_rows() {
    // a [2, 3, 8] · b [8, 12] -> c [2, 3, 12], as used for batched sequences.
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let a = rand_vec(48, 1);
    let b = rand_vec(96, 2);
    let ta = arena.upload(&gpu, [2, 3, 8], &a).unwrap();
    let tb = arena.upload(&gpu, [8, 12], &b).unwrap();
    let tc = arena.tensor(&gpu, [2, 3, 12]).unwrap();
    let spec = Matmul::default();
    matmul::matmul(&gpu, &ta, &tb, &tc, &spec).unwrap();
    let got: Vec<f32> = gpu.read(tc.region).unwrap();
    let want = matmul::reference(&a, &b, &[], 6, 12, 8, &spec, None);
    let (tol, eps) = tolerance(8);
    assert_close("batched rows", &got, &want, tol, eps);
}

#[test]
fn auto_variant_follows_the_adapter_type() {
    let gpu = gpu();
    let want = if gpu.kind() == contrastive::gpu::AdapterKind::Cpu {
        Variant::Vec4
    } else {
        Variant::Shared
    };
    assert_eq!(Variant::for_adapter(&gpu), want);
}

#[test]
fn shape_mismatches_are_errors_naming_shapes_and_mode() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let a = arena.tensor(&gpu, [5, 7]).unwrap();
    let b = arena.tensor(&gpu, [6, 3]).unwrap();
    let c = arena.tensor(&gpu, [5, 3]).unwrap();
    let bias = arena.tensor(&gpu, [4]).unwrap();
    let b_ok = arena.tensor(&gpu, [7, 3]).unwrap();
    let cases = [
        (&a, &b, &c, Matmul::default(), "[6, 3]"),
        (
            &a,
            &b_ok,
            &c,
            Matmul {
                trans: Trans::NT,
                ..Default::default()
            },
            "NT",
        ),
        (
            &a,
            &b_ok,
            &c,
            Matmul {
                trans: Trans::TN,
                ..Default::default()
            },
            "TN",
        ),
        (&a, &b_ok, &bias, Matmul::default(), "[4]"),
        (
            &a,
            &b_ok,
            &c,
            Matmul {
                bias: Some(&bias),
                ..Default::default()
            },
            "bias [4]",
        ),
    ];
    for (a, b, c, spec, needle) in cases {
        let err = matmul::matmul(&gpu, a, b, c, &spec).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(needle) && msg.contains(&format!("{:?}", a.shape)),
            "{msg}"
        );
    }
}

#[test]
fn accumulate_with_epilogue_and_aliased_output_are_config_errors() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let a = arena.tensor(&gpu, [4, 4]).unwrap();
    let b = arena.tensor(&gpu, [4, 4]).unwrap();
    let c = arena.tensor(&gpu, [4, 4]).unwrap();
    let bias = arena.tensor(&gpu, [4]).unwrap();
    for spec in [
        Matmul {
            accumulate: true,
            relu: true,
            ..Default::default()
        },
        Matmul {
            accumulate: true,
            bias: Some(&bias),
            ..Default::default()
        },
    ] {
        let err = matmul::matmul(&gpu, &a, &b, &c, &spec).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
    let err = matmul::matmul(&gpu, &a, &b, &a, &Matmul::default()).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}
