//! Every tape op's backward against central finite differences through the GPU kernels, plus the
//! tape's own guarantees (detached inputs, inference mode, shape errors, in-place accumulation).

mod common;

use common::*;
use contrastive::autodiff::gradcheck::{self, Input, Tolerance};
use contrastive::autodiff::{Graph, Var};
use contrastive::kernels::batchnorm::BatchNorm;
use contrastive::kernels::conv::Conv2d;
use contrastive::kernels::matmul::Trans;
use contrastive::kernels::softmax_xent::Xent;
use contrastive::{Arena, Result};

fn input(shape: &[usize], seed: u64) -> Input {
    let n = shape.iter().product();
    Input::new(shape, rand_vec_away_from_zero(n, seed, 0.05))
}

type OpFn = Box<dyn Fn(&mut Graph, &[Var]) -> Result<Var>>;

/// One op (or small graph) to gradient-check at random inputs of the given shapes.
struct Case {
    name: String,
    shapes: Vec<Vec<usize>>,
    f: OpFn,
}

fn case(
    name: impl Into<String>,
    shapes: &[&[usize]],
    f: impl Fn(&mut Graph, &[Var]) -> Result<Var> + 'static,
) -> Case {
    Case {
        name: name.into(),
        shapes: shapes.iter().map(|s| s.to_vec()).collect(),
        f: Box::new(f),
    }
}

/// Checks every case's backward against central finite differences; fails listing every case
/// that disagrees.
fn check(cases: Vec<Case>) {
    let gpu = gpu();
    let mut failures = vec![];
    for c in cases {
        let inputs: Vec<Input> = c
            .shapes
            .iter()
            .enumerate()
            .map(|(i, s)| input(s, 10 + i as u64))
            .collect();
        match gradcheck::check(&gpu, &inputs, &c.f, &Tolerance::default()) {
            Ok(r) => assert!(r.checked > 0, "{}: nothing checked", c.name),
            Err(e) => failures.push(format!("{} at inputs {:?}: {e}", c.name, c.shapes)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn elementwise_ops() {
    check(vec![
        case("add", &[&[3, 5], &[3, 5]], |g, v| g.add(v[0], v[1])),
        case("sub", &[&[3, 5], &[3, 5]], |g, v| g.sub(v[0], v[1])),
        case("mul", &[&[17, 3], &[17, 3]], |g, v| g.mul(v[0], v[1])),
        case("scale", &[&[1, 7]], |g, v| g.scale(v[0], -2.5)),
        case("relu", &[&[4, 9]], |g, v| g.relu(v[0])),
        case("add_bias", &[&[5, 3], &[3]], |g, v| g.add_bias(v[0], v[1])),
        // The same value used twice: its gradient accumulates both contributions.
        case("mul by itself", &[&[2, 3]], |g, v| g.mul(v[0], v[0])),
    ]);
}

#[test]
fn reductions_and_reshape() {
    check(vec![
        case("sum_rows", &[&[5, 7]], |g, v| g.sum_rows(v[0])),
        case("mean_rows", &[&[5, 7]], |g, v| g.mean_rows(v[0])),
        case("sum_cols", &[&[17, 3]], |g, v| g.sum_cols(v[0])),
        case("mean_cols", &[&[17, 3]], |g, v| g.mean_cols(v[0])),
        case("mean", &[&[4, 6]], |g, v| g.mean(v[0])),
        case("sum", &[&[4, 6]], |g, v| g.sum(v[0])),
        case("reshape", &[&[4, 6]], |g, v| {
            let r = g.reshape(v[0], [8, 3])?;
            g.sum_rows(r)
        }),
    ]);
}

#[test]
fn matmul_every_transposition_and_linear() {
    let mut cases = vec![
        case("matmul NN", &[&[3, 5], &[5, 4]], |g, v| {
            g.matmul(v[0], v[1], Trans::NN, 1.0)
        }),
        case("matmul NT", &[&[3, 5], &[4, 5]], |g, v| {
            g.matmul(v[0], v[1], Trans::NT, 0.5)
        }),
        case("matmul TN", &[&[5, 3], &[5, 4]], |g, v| {
            g.matmul(v[0], v[1], Trans::TN, 1.0)
        }),
        case("matmul dot", &[&[1, 17], &[17, 1]], |g, v| {
            g.matmul(v[0], v[1], Trans::NN, 1.0)
        }),
        case("linear without bias", &[&[1, 3], &[2, 3]], |g, v| {
            g.linear(v[0], v[1], None, false)
        }),
    ];
    for relu in [false, true] {
        cases.push(case(
            format!("linear relu={relu}"),
            &[&[6, 5], &[7, 5], &[7]],
            move |g, v| g.linear(v[0], v[1], Some(v[2]), relu),
        ));
    }
    check(cases);
}

#[test]
fn normalisation_softmax_and_concat() {
    let mut cases = vec![
        case("l2_normalize", &[&[5, 7]], |g, v| g.l2_normalize(v[0])),
        case("l2_normalize one row", &[&[1, 3]], |g, v| {
            g.l2_normalize(v[0])
        }),
        case("concat_cols", &[&[3, 2], &[3, 5]], |g, v| {
            g.concat_cols(v[0], v[1])
        }),
        case("slice_cols", &[&[6, 4]], |g, v| g.slice_cols(v[0], 1, 2)),
    ];
    for (tau, mask) in [(1.0, false), (0.1, false), (0.5, true)] {
        let name = format!("softmax_xent tau={tau} mask={mask}");
        cases.push(case(name, &[&[4, 6]], move |g, v| {
            let t = g.constant_u32([4], &[1, 0, 5, 2])?;
            let spec = Xent {
                temperature: tau,
                mask_diagonal: mask,
            };
            Ok(g.softmax_xent(v[0], t, &spec)?.0)
        }));
    }
    check(cases);
}

#[test]
fn conv2d_strides_padding_bias_and_relu() {
    let mut cases = vec![];
    for (stride, pad) in [(1, 0), (1, 1), (2, 1), (2, 0)] {
        let geom = Conv2d {
            kh: 3,
            kw: 2,
            stride: (stride, stride),
            pad: (pad, pad),
        };
        let name = format!("conv2d stride {stride} pad {pad}");
        cases.push(case(
            name,
            &[&[2, 5, 6, 3], &[5, 3, 2, 3], &[5]],
            move |g, v| g.conv2d(v[0], v[1], Some(v[2]), geom, false),
        ));
    }
    let k3 = Conv2d {
        kh: 3,
        kw: 3,
        stride: (1, 1),
        pad: (1, 1),
    };
    cases.push(case(
        "conv2d 3x3 no bias",
        &[&[1, 4, 3, 1], &[2, 3, 3, 1]],
        move |g, v| g.conv2d(v[0], v[1], None, k3, false),
    ));
    check(cases);
}

/// Fused-ReLU epilogues (linear, conv) have kinks that finite differences straddle; check them
/// against the separately gradient-checked ReLU op instead: same values, same gradients.
#[test]
fn fused_relu_equals_separate_relu() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let k3 = Conv2d {
        kh: 3,
        kw: 3,
        stride: (2, 2),
        pad: (1, 1),
    };
    let x = rand_vec(2 * 5 * 6 * 3, 1);
    let w = rand_vec(4 * 9 * 3, 2);
    let b = rand_vec(4, 3);
    let mut results = vec![];
    for fused in [true, false] {
        arena.reset();
        let mut g = Graph::new(&gpu, &mut arena);
        let xv = g.arena.upload(&gpu, [2, 5, 6, 3], &x).unwrap();
        let wv = g.arena.upload(&gpu, [4, 3, 3, 3], &w).unwrap();
        let bv = g.arena.upload(&gpu, [4], &b).unwrap();
        let (xv, wv, bv) = (g.leaf(xv), g.leaf(wv), g.leaf(bv));
        let y = if fused {
            g.conv2d(xv, wv, Some(bv), k3, true).unwrap()
        } else {
            let y = g.conv2d(xv, wv, Some(bv), k3, false).unwrap();
            g.relu(y).unwrap()
        };
        let flat = g.reshape(y, [g.shape(y).numel() / 4, 4]).unwrap();
        let lw = g.constant([3, 4], &rand_vec(12, 4)).unwrap();
        let z = g.linear(flat, lw, None, true).unwrap();
        let loss = g.mean(z).unwrap();
        g.backward(loss).unwrap();
        let read = |v| gpu.read::<f32>(g.grad(v).unwrap().region).unwrap();
        results.push((g.read(loss).unwrap(), read(xv), read(wv), read(bv)));
    }
    assert_eq!(results[0].0, results[1].0);
    for (a, b) in [
        (&results[0].1, &results[1].1),
        (&results[0].2, &results[1].2),
        (&results[0].3, &results[1].3),
    ] {
        assert_close("fused vs separate ReLU", a, &f64s(b), 1e-6, 1e-5);
    }
}

#[test]
fn pooling() {
    check(vec![
        case("avg_pool_global", &[&[2, 3, 5, 4]], |g, v| {
            g.avg_pool_global(v[0])
        }),
        case("max_pool_2x2", &[&[2, 5, 4, 3]], |g, v| {
            g.max_pool_2x2(v[0])
        }),
    ]);
}

#[test]
fn batch_norm_train_mode() {
    check(
        [1, 2]
            .map(|groups| {
                case(
                    format!("batch_norm groups={groups}"),
                    &[&[4, 3, 2, 5], &[5], &[5]],
                    move |g, v| batch_norm(g, v, groups, false),
                )
            })
            .into(),
    );
}

fn batch_norm(g: &mut Graph, v: &[Var], groups: usize, relu: bool) -> Result<Var> {
    let gpu = g.gpu;
    let rm = g.arena.tensor(gpu, [5])?;
    let rv = g.arena.tensor(gpu, [5])?;
    let bn = BatchNorm {
        groups,
        relu,
        ..BatchNorm::default()
    };
    g.batch_norm(v[0], v[1], v[2], &rm, &rv, &bn, true)
}

/// BatchNorm's fused ReLU against BatchNorm then the ReLU op, each finite-difference checked on its
/// own. (Finite differences through the pair are unreliable: a step on one input moves every
/// output of its group, and an output near zero crosses the kink.)
#[test]
fn batch_norm_fused_relu_matches_batch_norm_then_relu() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let inputs = [input(&[4, 3, 2, 5], 10), input(&[5], 11), input(&[5], 12)];
    let r = rand_vec(4 * 3 * 2 * 5, 13);
    for groups in [1, 2] {
        let fused = |g: &mut Graph, v: &[Var]| batch_norm(g, v, groups, true);
        let parts = |g: &mut Graph, v: &[Var]| {
            let y = batch_norm(g, v, groups, false)?;
            g.relu(y)
        };
        let (y, grads) = gradcheck::evaluate(&gpu, &mut arena, &inputs, &fused, Some(&r)).unwrap();
        let (y_ref, grads_ref) =
            gradcheck::evaluate(&gpu, &mut arena, &inputs, &parts, Some(&r)).unwrap();
        assert!(y.contains(&0.0) && y.iter().any(|&v| v > 0.0));
        assert_close(&format!("y groups={groups}"), &y, &f64s(&y_ref), 1e-6, 1e-6);
        for (k, (a, b)) in grads.iter().zip(&grads_ref).enumerate() {
            assert_close(
                &format!("grad {k} groups={groups}"),
                a,
                &f64s(b),
                1e-5,
                1e-5,
            );
        }
    }
}

/// 2-layer MLP → L2 normalise → InfoNCE (τ = 0.1) against a queue of negatives, end to end.
#[test]
fn mlp_normalise_infonce_against_a_queue() {
    let (n, d_in, hidden, d, k) = (4, 6, 8, 5, 7);
    let queue = rand_vec(k * d, 99);
    check(vec![case(
        "MLP, L2 normalise, InfoNCE",
        &[
            &[n, d_in],
            &[n, d],
            &[hidden, d_in],
            &[hidden],
            &[d, hidden],
            &[d],
        ],
        move |g, v| {
            let h = g.linear(v[0], v[2], Some(v[3]), true)?;
            let z = g.linear(h, v[4], Some(v[5]), false)?;
            let q = g.l2_normalize(z)?;
            let key = g.l2_normalize(v[1])?;
            let pos = g.mul(q, key)?;
            let pos = g.sum_rows(pos)?;
            let pos = g.reshape(pos, [n, 1])?;
            let queue = g.constant([k, d], &queue)?;
            let neg = g.matmul(q, queue, Trans::NT, 1.0)?;
            let logits = g.concat_cols(pos, neg)?;
            let t = g.constant_u32([n], &vec![0; n])?;
            let spec = Xent {
                temperature: 0.1,
                mask_diagonal: false,
            };
            let (rows, _) = g.softmax_xent(logits, t, &spec)?;
            g.mean(rows)
        },
    )]);
}

#[test]
fn identical_embeddings_give_ln_m() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let (n, k, d) = (5, 16, 8);
    let e = vec![0.25f32; d];
    let mut g = Graph::new(&gpu, &mut arena);
    let q = g.constant([n, d], &e.repeat(n)).unwrap();
    let q = g.l2_normalize(q).unwrap();
    let queue = g.constant([k, d], &e.repeat(k)).unwrap();
    let queue = g.l2_normalize(queue).unwrap();
    let pos = g.mul(q, q).unwrap();
    let pos = g.sum_rows(pos).unwrap();
    let pos = g.reshape(pos, [n, 1]).unwrap();
    let neg = g.matmul(q, queue, Trans::NT, 1.0).unwrap();
    let logits = g.concat_cols(pos, neg).unwrap();
    let t = g.constant_u32([n], &vec![0; n]).unwrap();
    let spec = Xent {
        temperature: 0.07,
        mask_diagonal: false,
    };
    let (rows, _) = g.softmax_xent(logits, t, &spec).unwrap();
    let loss = g.mean(rows).unwrap();
    let got = g.read(loss).unwrap()[0] as f64;
    let want = ((k + 1) as f64).ln();
    assert!((got - want).abs() < 1e-5, "loss {got}, ln(K+1) = {want}");
}

#[test]
fn detached_inputs_get_no_gradient_and_cost_no_backward_work() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let dispatches_for = |arena: &mut Arena, detach: bool| {
        arena.reset();
        let mut g = Graph::new(&gpu, arena);
        let a = g.arena.upload(&gpu, [8, 8], &rand_vec(64, 1)).unwrap();
        let b = g.arena.upload(&gpu, [8, 8], &rand_vec(64, 2)).unwrap();
        let a = g.leaf(a);
        let b = if detach { g.input(b) } else { g.leaf(b) };
        let c = g.matmul(a, b, Trans::NN, 1.0).unwrap();
        let loss = g.mean(c).unwrap();
        let before = gpu.counters().dispatches + gpu.pending() as u64;
        g.backward(loss).unwrap();
        let after = gpu.counters().dispatches + gpu.pending() as u64;
        assert!(g.grad(a).is_some());
        assert_eq!(g.grad(b).is_none(), detach);
        gpu.flush().unwrap();
        after - before
    };
    let both = dispatches_for(&mut arena, false);
    let one = dispatches_for(&mut arena, true);
    assert_eq!(
        both,
        one + 1,
        "the detached operand's matmul must not be launched"
    );
}

#[test]
fn inference_mode_records_nothing() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let mut g = Graph::inference(&gpu, &mut arena);
    let a = g.arena.upload(&gpu, [3, 4], &rand_vec(12, 1)).unwrap();
    let a = g.leaf(a);
    let b = g.relu(a).unwrap();
    let s = g.mean(b).unwrap();
    assert!(!g.is_recording());
    let e = g.backward(s).unwrap_err().to_string();
    assert!(e.contains("inference"), "{e}");
}

#[test]
fn shape_mismatch_names_the_op_and_both_shapes() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let mut g = Graph::new(&gpu, &mut arena);
    let a = g.constant([3, 4], &[0.0; 12]).unwrap();
    let b = g.constant([4, 3], &[0.0; 12]).unwrap();
    let e = g.add(a, b).unwrap_err().to_string();
    assert!(
        e.contains("add") && e.contains("[3, 4]") && e.contains("[4, 3]"),
        "{e}"
    );
    let e = g.matmul(a, a, Trans::NN, 1.0).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("[3, 4]"), "{e}");
}

#[test]
fn gradient_checker_rejects_a_wrong_gradient() {
    // relu'(x) is 0 for x < 0: at a kink-free point the checker passes; a function whose
    // backward is wrong cannot be built from correct ops, so check the checker's comparison by
    // perturbing across a kink where the finite difference disagrees with the derivative.
    let gpu = gpu();
    let x = Input::new([1, 1], vec![0.001]);
    let tol = Tolerance {
        step: 1e-2,
        ..Tolerance::default()
    };
    let e = gradcheck::check(&gpu, &[x], |g, v| g.relu(v[0]), &tol).unwrap_err();
    assert!(e.to_string().contains("gradient check failed"), "{e}");
}

#[test]
fn deep_infomax_estimators() {
    use contrastive::kernels::mi::Estimator;
    let cases = [Estimator::Jsd, Estimator::Nce].map(|est| {
        case(format!("mi_estimate {est:?}"), &[&[3, 12]], move |g, v| {
            g.mi_estimate(v[0], 4, est)
        })
    });
    check(cases.into());
}

fn two_view_loss(g: &mut Graph, z: Var, n: usize) -> Result<Var> {
    let z = g.l2_normalize(z)?;
    let s = g.matmul(z, z, Trans::NT, 1.0)?;
    let targets: Vec<u32> = (0..2 * n as u32)
        .map(|i| (i + n as u32) % (2 * n as u32))
        .collect();
    let t = g.constant_u32([2 * n], &targets)?;
    let spec = Xent {
        temperature: 0.5,
        mask_diagonal: true,
    };
    let (rows, _) = g.softmax_xent(s, t, &spec)?;
    g.mean(rows)
}

#[test]
fn masked_two_view_loss() {
    check(vec![case("two-view loss", &[&[6, 4]], |g, v| {
        two_view_loss(g, v[0], 3)
    })]);
}

#[test]
fn collapsed_two_view_embeddings_give_ln_2n_minus_1() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let n = 5;
    let mut g = Graph::new(&gpu, &mut arena);
    let z = g
        .constant([2 * n, 3], &[0.3f32, -0.2, 0.9].repeat(2 * n))
        .unwrap();
    let loss = two_view_loss(&mut g, z, n).unwrap();
    let got = g.read(loss).unwrap()[0] as f64;
    let want = ((2 * n - 1) as f64).ln();
    assert!((got - want).abs() < 1e-5, "loss {got}, ln(2N-1) = {want}");
}

/// A whole (tiny) encoder + MLP head + L2 normalisation + in-batch InfoNCE: the parameter-store
/// gradients against central differences of the loss, on coordinates of every tensor.
#[test]
fn encoder_head_infonce_graph() {
    use contrastive::nn::{Encoder, EncoderConfig, Mlp, StoreBuilder};
    let gpu = gpu();
    let config = EncoderConfig {
        widths: vec![3, 4],
        residual_blocks: 1,
        ..EncoderConfig::small(6, 5, 1)
    };
    let mut p = StoreBuilder::new(1);
    let mut b = StoreBuilder::new(1);
    let encoder = Encoder::new(&mut p, &mut b, &config).unwrap();
    let head = Mlp::new(&mut p, "head", &[4, 5, 3]);
    let params = p.build(&gpu, "params", true).unwrap();
    let buffers = b.build(&gpu, "bn", false).unwrap();
    let x = rand_vec(4 * 6 * 5, 7);
    let mut arena = Arena::for_gpu("test", &gpu);
    let mut loss_at = |values: &[f32], backward: bool| -> f64 {
        gpu.upload(params.values, values).unwrap();
        arena.reset();
        let mut g = if backward {
            Graph::new(&gpu, &mut arena)
        } else {
            Graph::inference(&gpu, &mut arena)
        };
        gpu.clear(params.grads.unwrap());
        let xv = g.constant([4, 6, 5, 1], &x).unwrap();
        let f = encoder
            .forward(&mut g, &params, &buffers, xv, &BatchNorm::default(), true)
            .unwrap();
        let z = head.forward(&mut g, &params, f.global).unwrap();
        let loss = two_view_loss(&mut g, z, 2).unwrap();
        if backward {
            g.backward(loss).unwrap();
        }
        g.read(loss).unwrap()[0] as f64
    };
    let theta: Vec<f32> = gpu.read(params.values).unwrap();
    loss_at(&theta, true);
    let analytic: Vec<f32> = gpu.read(params.grads.unwrap()).unwrap();
    // ReLUs after BatchNorm put many pre-activations near 0: a smaller step straddles fewer kinks.
    let tol = Tolerance {
        step: 1e-3,
        ..Tolerance::default()
    };
    let mut checked = 0;
    for e in &params.entries {
        for k in [0, e.shape.numel() / 2, e.shape.numel() - 1] {
            let i = e.offset + k;
            let mut t = theta.clone();
            t[i] = theta[i] + tol.step;
            let plus = loss_at(&t, false);
            t[i] = theta[i] - tol.step;
            let minus = loss_at(&t, false);
            let numeric = (plus - minus) / (2.0 * tol.step as f64);
            let a = analytic[i] as f64;
            let bound = tol.atol + tol.rtol * a.abs().max(numeric.abs());
            assert!(
                (a - numeric).abs() <= bound,
                "{}[{k}]: analytic {a}, numeric {numeric}",
                e.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 3 * 10);
}
