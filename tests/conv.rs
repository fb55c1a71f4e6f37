mod common;

use common::*;
use contrastive::gpu::AdapterKind;
use contrastive::kernels::conv::{self, Candidate, Conv2d, ConvShape, Pass};
use contrastive::{Arena, Gpu, Result, Tensor};

/// Launches one pass with a given candidate.
type Launch<'a> = dyn Fn(Candidate) -> Result<()> + 'a;

fn geom(kh: usize, kw: usize, s: usize, p: usize) -> Conv2d {
    Conv2d {
        kh,
        kw,
        stride: (s, s),
        pad: (p, p),
    }
}

/// Runs every pass with every candidate that fits on one problem and compares with the
/// references; `seed` varies data and the optional parts (bias, ReLU, accumulate). Leaves `arena`
/// empty for the next problem.
fn check(gpu: &Gpu, arena: &mut Arena, s: ConvShape, g: Conv2d, seed: u64) {
    let (ho, wo) = g.out_hw(s.h, s.w).unwrap();
    let xn = s.n * s.h * s.w * s.cin;
    let x = rand_vec(xn, seed);
    let w = rand_vec(s.cout * g.kh * g.kw * s.cin, seed + 1);
    let b = rand_vec(s.cout, seed + 2);
    let dy = rand_vec(s.n * ho * wo * s.cout, seed + 3);
    let prev_dx = rand_vec(xn, seed + 4);
    let wn = s.cout * g.kh * g.kw * s.cin;
    let prev_dw = rand_vec(wn, seed + 5);
    let (bias, relu, acc) = (seed.is_multiple_of(2), seed.is_multiple_of(3), seed % 4 < 2);
    let what = |c: Candidate| format!("{c:?} {s:?} {g:?} seed {seed} ({:?} launches)", gpu.kind());

    let tx = arena.upload(gpu, [s.n, s.h, s.w, s.cin], &x).unwrap();
    let tw = arena.upload(gpu, [s.cout, g.kh, g.kw, s.cin], &w).unwrap();
    let tb = arena.upload(gpu, [s.cout], &b).unwrap();
    let tdy = arena.upload(gpu, [s.n, ho, wo, s.cout], &dy).unwrap();
    let ty = arena.tensor(gpu, [s.n, ho, wo, s.cout]).unwrap();
    let tdx = arena.tensor(gpu, [s.n, s.h, s.w, s.cin]).unwrap();
    let tdw = arena.tensor(gpu, [s.cout, g.kh, g.kw, s.cin]).unwrap();
    // No scratch (one pass), room for exactly two chunks, or full parallelism.
    let scratch_len = match seed % 3 {
        0 => 0,
        1 => 2 * wn + 1,
        _ => g.weight_grad_scratch(gpu, s.n, s.h, s.w, s.cin, s.cout),
    };
    let scratch = arena.tensor(gpu, [scratch_len.max(1)]).unwrap();

    // Each candidate of `pass` runs `launch` from `out` = `start` and is compared with `want`.
    let each =
        |pass: Pass, out: &Tensor, start: &[f32], want: &[f64], label: &str, launch: &Launch| {
            for c in g.candidates(&s, pass) {
                gpu.upload(out.region, start).unwrap();
                launch(c).unwrap();
                let got: Vec<f32> = gpu.read(out.region).unwrap();
                assert_close(&format!("{label} {}", what(c)), &got, want, 1e-4, 1e-4);
            }
        };
    // NaN before the forward: every output element must be written.
    let want = conv::reference_forward(&s, &g, &x, &w, bias.then_some(&b[..]), relu);
    let nan = vec![f32::NAN; want.len()];
    let forward = |c| {
        let bias = bias.then_some(&tb);
        conv::Forward {
            x: &tx,
            w: &tw,
            bias,
            y: &ty,
            relu,
        }
        .run(gpu, &g, Some(c))
    };
    each(
        Pass::Forward,
        &ty,
        &nan,
        &want,
        &format!("forward bias={bias} relu={relu}"),
        &forward,
    );

    let want = conv::reference_backward_input(&s, &g, &dy, &w, acc.then_some(&prev_dx[..]));
    let input_grad = |c| {
        let (dy, w, dx) = (&tdy, &tw, &tdx);
        conv::InputGrad {
            dy,
            w,
            dx,
            accumulate: acc,
        }
        .run(gpu, &g, Some(c))
    };
    each(
        Pass::InputGrad,
        &tdx,
        &prev_dx,
        &want,
        &format!("backward_input acc={acc}"),
        &input_grad,
    );

    let scratch = (scratch_len > 0).then_some(&scratch);
    let want = conv::reference_backward_weight(&s, &g, &x, &dy, acc.then_some(&prev_dw[..]));
    let weight_grad = |c| {
        let (x, dy, dw) = (&tx, &tdy, &tdw);
        conv::WeightGrad {
            x,
            dy,
            dw,
            scratch,
            accumulate: acc,
        }
        .run(gpu, &g, Some(c))
    };
    let label = format!("backward_weight acc={acc} scratch={scratch_len}");
    each(
        Pass::WeightGrad,
        &tdw,
        &prev_dw,
        &want,
        &label,
        &weight_grad,
    );
    arena.reset();
}

/// Kernel shapes, strides and paddings: square and not, 1×1, stride 2 with and without padding.
const GEOMS: [(usize, usize, usize, usize); 6] = [
    (3, 3, 1, 1),
    (3, 3, 2, 1),
    (3, 1, 1, 0),
    (1, 3, 2, 1),
    (5, 3, 1, 0),
    (1, 1, 2, 0),
];

/// Every shape `(n, h, w, cin, cout)` with every geometry of GEOMS, on both launch modes; seeds
/// count up from `first_seed` (+1 before each case).
fn check_shapes_and_geoms(shapes: &[(usize, usize, usize, usize, usize)], first_seed: u64) {
    for gpu in gpus() {
        let mut arena = Arena::for_gpu("test", &gpu);
        let mut seed = first_seed;
        for &(n, h, w, cin, cout) in shapes {
            for &(kh, kw, st, pd) in &GEOMS {
                seed += 1;
                check(
                    &gpu,
                    &mut arena,
                    ConvShape { n, h, w, cin, cout },
                    geom(kh, kw, st, pd),
                    seed,
                );
            }
        }
    }
}

#[test]
fn scalar_paths_match_reference() {
    // Channel counts that are not multiples of 4 take the scalar kernels (with vec4 stores when
    // only the input channels are odd, as in a first layer).
    check_shapes_and_geoms(
        &[
            (1, 7, 5, 1, 17),
            (2, 6, 5, 3, 5),
            (1, 5, 7, 5, 1),
            (2, 5, 6, 17, 3),
            (1, 6, 6, 4, 5),
            (2, 7, 5, 3, 8),
            (1, 6, 5, 1, 20),
        ],
        0,
    );
}

#[test]
fn vec4_paths_match_reference() {
    // Rows and channels that are not multiples of the 16×16 tile, one batch of 1. Where the
    // adapter has 64-bit integers, channel counts that are both multiples of 8 (the last two)
    // take the 64-bit build, including tiles cut short after 8 channels.
    check_shapes_and_geoms(
        &[
            (1, 7, 5, 4, 20),
            (2, 6, 7, 8, 4),
            (3, 5, 5, 20, 36),
            (2, 6, 7, 8, 24),
            (1, 5, 6, 40, 16),
        ],
        100,
    );
}

#[test]
fn stride_larger_than_kernel_leaves_unreached_pixels_zero() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    check(
        &gpu,
        &mut arena,
        ConvShape {
            n: 2,
            h: 7,
            w: 6,
            cin: 4,
            cout: 8,
        },
        Conv2d {
            kh: 1,
            kw: 2,
            stride: (3, 2),
            pad: (0, 1),
        },
        8,
    );
    check(
        &gpu,
        &mut arena,
        ConvShape {
            n: 1,
            h: 7,
            w: 6,
            cin: 3,
            cout: 2,
        },
        Conv2d {
            kh: 2,
            kw: 1,
            stride: (3, 3),
            pad: (1, 0),
        },
        9,
    );
}

#[test]
fn weight_grad_reduction_splits_match_reference() {
    // Enough pixels for several chunks: every scratch mode of `check` runs a different split count.
    for gpu in gpus() {
        let mut arena = Arena::for_gpu("test", &gpu);
        for (seed, cin, cout) in [
            (30, 8, 12),
            (31, 8, 12),
            (32, 8, 12),
            (33, 3, 5),
            (34, 3, 5),
            (35, 3, 5),
        ] {
            let s = ConvShape {
                n: 3,
                h: 17,
                w: 13,
                cin,
                cout,
            };
            check(&gpu, &mut arena, s, geom(3, 3, 1, 1), seed);
        }
    }
}

#[test]
fn shape_errors_name_the_shapes() {
    let g = geom(3, 3, 1, 0);
    assert_eq!(g.out_hw(3, 5).unwrap(), (1, 3));
    let err = g.out_hw(2, 5).unwrap_err().to_string();
    assert!(err.contains("larger than the padded input 2x5"), "{err}");
    assert!(geom(3, 3, 1, 1).out_hw(1, 1).is_ok());
    assert!(geom(3, 3, 0, 1).out_hw(5, 5).is_err());

    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let x = arena.tensor(&gpu, [2, 5, 5, 3]).unwrap();
    let w = arena.tensor(&gpu, [4, 3, 3, 3]).unwrap();
    let y = arena.tensor(&gpu, [2, 3, 3, 4]).unwrap();
    let b = arena.tensor(&gpu, [4]).unwrap();
    conv::forward(&gpu, &x, &w, Some(&b), &y, &g, false).unwrap();

    let tiny = arena.tensor(&gpu, [2, 2, 5, 3]).unwrap();
    let err = conv::forward(&gpu, &tiny, &w, None, &y, &g, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than the padded input"), "{err}");
    let w_bad = arena.tensor(&gpu, [4, 3, 3, 2]).unwrap();
    let err = conv::forward(&gpu, &x, &w_bad, None, &y, &g, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[4, 3, 3, 2]") && err.contains("[2, 5, 5, 3]"),
        "{err}"
    );
    let y_bad = arena.tensor(&gpu, [2, 3, 3, 5]).unwrap();
    let err = conv::forward(&gpu, &x, &w, None, &y_bad, &g, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[2, 3, 3, 5]"), "{err}");
    let b_bad = arena.tensor(&gpu, [5]).unwrap();
    let err = conv::forward(&gpu, &x, &w, Some(&b_bad), &y, &g, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[5]"), "{err}");
    let flat = arena.tensor(&gpu, [50, 3]).unwrap();
    assert!(conv::forward(&gpu, &flat, &w, None, &y, &g, false).is_err());
    assert!(conv::backward_input(&gpu, &y_bad, &w, &x, &g, false).is_err());
    assert!(conv::backward_input(&gpu, &y, &w_bad, &x, &g, false).is_err());
    assert!(conv::backward_weight(&gpu, &x, &y_bad, &w, None, &g, false).is_err());
    assert!(conv::backward_weight(&gpu, &tiny, &y, &w, None, &g, false).is_err());
}

#[test]
fn choice_follows_the_adapter_kind() {
    // CPU adapters run the direct kernels where they fit (one input channel, up to 3×3, output
    // channels in vec4s); GPUs never do, and run the shared-memory GEMM where its tile fills.
    let shape = |cin, cout| ConvShape {
        n: 2,
        h: 8,
        w: 8,
        cin,
        cout,
    };
    let (cpu, gpu) = (AdapterKind::Cpu, AdapterKind::Gpu);
    for pass in Pass::ALL {
        for (g, cin, cout) in [(geom(3, 3, 1, 1), 1, 32), (geom(1, 3, 2, 0), 1, 4)] {
            let s = shape(cin, cout);
            assert_eq!(g.choose(cpu, &s, pass), Candidate::Direct, "{pass:?} {g:?}");
            assert_ne!(g.choose(gpu, &s, pass), Candidate::Direct, "{pass:?} {g:?}");
        }
        for (g, cin, cout) in [
            (geom(3, 1, 2, 0), 3, 4),
            (geom(1, 1, 1, 0), 9, 8),
            (geom(5, 2, 1, 0), 1, 8),
            (geom(3, 3, 1, 1), 2, 32),
            (geom(3, 3, 1, 1), 1, 30),
        ] {
            let s = shape(cin, cout);
            assert!(!g.fits(&s, pass, Candidate::Direct), "{pass:?} {g:?} {s:?}");
            assert_ne!(g.choose(cpu, &s, pass), Candidate::Direct, "{pass:?} {g:?}");
        }
        let wide = shape(32, 64);
        let g = geom(3, 3, 1, 1);
        assert_eq!(g.choose(gpu, &wide, pass), Candidate::Shared, "{pass:?}");
        assert_eq!(g.choose(cpu, &wide, pass), Candidate::Tile4, "{pass:?}");
        assert_eq!(
            g.choose(cpu, &shape(3, 5), pass),
            Candidate::Tile1,
            "{pass:?}"
        );
        // Every choice is a candidate that fits.
        for kind in [cpu, gpu] {
            for s in [wide, shape(1, 32), shape(3, 5)] {
                assert!(g.candidates(&s, pass).contains(&g.choose(kind, &s, pass)));
            }
        }
    }
    // The shared-memory input gradient runs stride 1 only; strided layers keep the tiles.
    assert_eq!(
        geom(3, 3, 2, 1).choose(gpu, &shape(32, 64), Pass::InputGrad),
        Candidate::Tile4
    );
}

#[test]
fn a_candidate_that_does_not_fit_is_an_error() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let g = geom(3, 3, 2, 1);
    let x = arena.tensor(&gpu, [1, 6, 6, 3]).unwrap();
    let w = arena.tensor(&gpu, [5, 3, 3, 3]).unwrap();
    let y = arena.tensor(&gpu, [1, 3, 3, 5]).unwrap();
    let forward = conv::Forward {
        x: &x,
        w: &w,
        bias: None,
        y: &y,
        relu: false,
    };
    let err = forward.run(&gpu, &g, Some(Candidate::Tile4)).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("Tile4") && err.contains("Tile1"), "{err}");
    let input_grad = conv::InputGrad {
        dy: &y,
        w: &w,
        dx: &x,
        accumulate: false,
    };
    let err = input_grad
        .run(&gpu, &g, Some(Candidate::Shared))
        .unwrap_err();
    assert!(err.to_string().contains("Shared"), "{err}");
    let weight_grad = conv::WeightGrad {
        x: &x,
        dy: &y,
        dw: &w,
        scratch: None,
        accumulate: false,
    };
    assert!(weight_grad.run(&gpu, &g, Some(Candidate::Direct)).is_err());
}

#[test]
fn direct_paths_match_reference() {
    // Both sides of the threshold (one input channel up to 3×3: direct; more channels or a larger
    // kernel: GEMM); the direct input gradient (even widths, column strides 1 and 2, odd and even
    // paddings) and its GEMM fallback (odd widths, wider strides); channel blocks of 32 cut short
    // (36 = 32 + 4, 4) and several (68); strides and paddings that leave taps outside the image,
    // padding wider than the kernel, and strides past the kernel that leave dx rows and columns no
    // tap reaches; kernels of one or two rows or columns; batch 1; every scratch mode. Where the
    // adapter has 64-bit integers, output channels that are a multiple of 8 (8, 16, 32, 40) take
    // the kernels' 64-bit build, the others the 32-bit one; at stride 2 only even widths with odd
    // paddings do for the forward and weight gradient (the input pairs), and an image of odd size
    // reads x's last word as half a pair.
    for gpu in gpus() {
        let mut arena = Arena::for_gpu("test", &gpu);
        let mut seed = 200;
        for &(n, h, w, cin, cout, kh, kw, st, pd) in &[
            (2, 9, 8, 1, 36, 3, 3, 1, 1),
            (2, 9, 7, 1, 36, 3, 3, 1, 1),
            (1, 8, 12, 1, 4, 3, 3, 2, 1),
            (1, 8, 9, 1, 4, 3, 3, 2, 1),
            (3, 7, 8, 1, 68, 3, 3, 2, 0),
            (2, 9, 12, 1, 8, 3, 3, 4, 1),
            (2, 7, 8, 1, 12, 1, 1, 2, 0),
            (1, 6, 4, 1, 8, 1, 3, 1, 2),
            (2, 7, 4, 1, 4, 3, 2, 3, 1),
            (1, 6, 8, 1, 8, 3, 3, 1, 5),
            (2, 6, 7, 3, 8, 3, 1, 1, 1),
            (1, 5, 6, 9, 12, 1, 1, 2, 0),
            (2, 7, 6, 1, 36, 5, 2, 1, 1),
            (1, 7, 5, 2, 20, 1, 5, 3, 2),
            (3, 30, 16, 1, 32, 3, 3, 1, 1),
            (2, 9, 8, 1, 40, 3, 3, 2, 1),
            (2, 9, 7, 1, 8, 3, 3, 2, 1),
            (1, 8, 8, 1, 16, 3, 3, 2, 0),
            (1, 5, 7, 1, 8, 3, 3, 1, 1),
            (2, 7, 8, 1, 8, 2, 3, 2, 1),
            (1, 6, 8, 1, 8, 2, 2, 1, 0),
            (2, 7, 8, 1, 8, 1, 1, 2, 1),
            (1, 6, 10, 1, 16, 3, 2, 2, 3),
            (1, 9, 6, 1, 4, 3, 3, 2, 1),
        ] {
            for _ in 0..3 {
                seed += 1;
                check(
                    &gpu,
                    &mut arena,
                    ConvShape { n, h, w, cin, cout },
                    geom(kh, kw, st, pd),
                    seed,
                );
            }
        }
        // Column stride 2 with other row strides: the input gradient's column pairs under the
        // row logic of strides 1 and 3.
        for (sh, ph) in [(1, 1), (3, 0)] {
            for _ in 0..3 {
                seed += 1;
                let g = Conv2d {
                    kh: 3,
                    kw: 3,
                    stride: (sh, 2),
                    pad: (ph, 1),
                };
                check(
                    &gpu,
                    &mut arena,
                    ConvShape {
                        n: 2,
                        h: 8,
                        w: 6,
                        cin: 1,
                        cout: 8,
                    },
                    g,
                    seed,
                );
            }
        }
    }
}
