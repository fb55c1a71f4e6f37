mod common;

use common::*;
use contrastive::gpu::AdapterKind;
use contrastive::kernels::matmul::{self, Candidate, Dims, Matmul, Tiling, Trans};
use contrastive::{Arena, Error, Gpu};

const MODES: [Trans; 3] = [Trans::NN, Trans::NT, Trans::TN];

/// (M, N, K): row vectors, single columns, K = 1, sizes just past a tile (64, 128), shapes whose
/// leading dimensions are multiples of 4 (the vec4 loads) but whose tiles are cut by the edge.
const SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (7, 13, 5),
    (65, 127, 33),
    (129, 64, 257),
    (3, 129, 1),
    (17, 1, 129),
    (64, 64, 64),
    (20, 68, 36),
    (132, 260, 8),
    (36, 4, 4),
];

/// Few output tiles over a long K: the block candidates split K (the last slice short).
const LONG_K: [(usize, usize, usize); 3] = [(4, 96, 512), (17, 3, 2000), (70, 65, 1100)];

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
        }
    }

    fn dims(&self) -> Dims {
        Dims {
            m: self.m,
            n: self.n,
            k: self.k,
        }
    }

    /// Runs the case on `candidate` (with the scratch it needs) and compares with the f64
    /// reference.
    fn check(&self, gpu: &Gpu, arena: &mut Arena, candidate: Candidate, seed: u64) {
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
        let room = candidate.scratch(self.dims());
        let scratch = arena.tensor(gpu, [room.max(1)]).unwrap();
        let spec = Matmul {
            trans: self.trans,
            alpha: self.alpha,
            bias: self.bias.then_some(&tbias),
            relu: self.relu,
            accumulate: self.accumulate,
            scratch: (room > 0).then_some(&scratch),
        };
        matmul::matmul_candidate(gpu, &ta, &tb, &tc, &spec, candidate).unwrap();
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
                "{} {:?} {m}x{n}x{k} alpha={} bias={} relu={} acc={}",
                candidate.name(),
                self.trans,
                self.alpha,
                self.bias,
                self.relu,
                self.accumulate
            ),
            &got,
            &want,
            tol,
            eps,
        );
        arena.reset();
    }
}

// One test for all numeric cases: every candidate compiles its kernels once (llvmpipe takes
// seconds per kernel when its shader cache is cold, and parallel tests would each compile them
// again).
#[test]
fn every_candidate_mode_shape_and_epilogue_matches_reference() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let mut splits_seen = 0;
    for trans in MODES {
        for (i, &shape) in SHAPES.iter().chain(&LONG_K).enumerate() {
            let plain = Case::plain(trans, shape);
            let candidates = matmul::candidates(&gpu, plain.dims());
            assert!(candidates.contains(&matmul::choose(&gpu, plain.dims())));
            for candidate in candidates {
                splits_seen += (candidate.splits > 1) as usize;
                let seed = 10 * i as u64;
                plain.check(&gpu, &mut arena, candidate, seed);
                let acc = Case {
                    alpha: 0.5,
                    accumulate: true,
                    ..Case::plain(trans, shape)
                };
                acc.check(&gpu, &mut arena, candidate, seed + 1);
                // Epilogues on a few shapes, for the candidates that apply them.
                if candidate.splits == 1 && [1, 2, 7].contains(&i) {
                    for (bias, relu) in [(true, false), (false, true), (true, true)] {
                        let case = Case {
                            alpha: -0.75,
                            bias,
                            relu,
                            ..Case::plain(trans, shape)
                        };
                        case.check(&gpu, &mut arena, candidate, seed + 2);
                    }
                }
            }
        }
    }
    // Every workgroup-memory tiling splits each long-K shape in every mode.
    let blocks = matmul::candidates(&gpu, Dims { m: 1, n: 1, k: 1 }).len() - 1;
    assert_eq!(splits_seen, MODES.len() * LONG_K.len() * blocks);
}

#[test]
fn split_k_needs_scratch_and_no_epilogue() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let dims = Dims {
        m: 17,
        n: 3,
        k: 2000,
    };
    let split = matmul::candidates(&gpu, dims)
        .into_iter()
        .find(|c| c.splits > 1)
        .expect("a split candidate for a long K");
    assert_ne!(split.tiling, Tiling::Registers);
    assert_eq!(split.scratch(dims), split.splits * 17 * 3);
    let a = arena.tensor(&gpu, [17, 2000]).unwrap();
    let b = arena.tensor(&gpu, [2000, 3]).unwrap();
    let c = arena.tensor(&gpu, [17, 3]).unwrap();
    let bias = arena.tensor(&gpu, [3]).unwrap();
    let small = arena.tensor(&gpu, [split.scratch(dims) - 1]).unwrap();
    for spec in [
        Matmul::default(),
        Matmul {
            scratch: Some(&small),
            ..Default::default()
        },
        Matmul {
            bias: Some(&bias),
            ..Default::default()
        },
    ] {
        let err = matmul::matmul_candidate(&gpu, &a, &b, &c, &spec, split).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
    // The automatic path asks for exactly the scratch of its pick, and none where it does not split.
    let want = matmul::choose(&gpu, dims).scratch(dims);
    assert_eq!(matmul::split_k_scratch_for(&gpu, &a, &b, Trans::NN), want);
    let big = Dims {
        m: 2048,
        n: 2048,
        k: 64,
    };
    assert_eq!(matmul::choose(&gpu, big).splits, 1);
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
fn choice_follows_the_adapter_type() {
    let gpu = gpu();
    let dims = Dims {
        m: 1024,
        n: 1024,
        k: 1024,
    };
    let pick = matmul::choose(&gpu, dims);
    assert_eq!(
        gpu.kind() == AdapterKind::Cpu,
        pick.tiling == Tiling::Registers,
        "{}",
        pick.name()
    );
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

/// The shader file's parameter block is the generator's output for the 64×64 tiling, so the file
/// as it stands is one valid candidate (and what naga checks when it builds the other kernels).
#[test]
fn shader_parameter_block_is_the_generated_one() {
    let source = include_str!("../shaders/matmul.wgsl");
    let (head, _) = source
        .split_once("// end of block parameters\n")
        .expect("the parameter block's end marker");
    let generated: String = head
        .lines()
        .filter(|l| !l.starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let block = matmul::BLOCKS[2];
    assert_eq!((block.bm, block.bn, block.tm, block.tn), (64, 64, 4, 4));
    assert_eq!(generated, block.params());
}
