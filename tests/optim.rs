mod common;

use common::*;
use contrastive::kernels::optim::{self, Optimizer, Schedule};
use contrastive::{Arena, Error};

const SGD: Optimizer = Optimizer::Sgd {
    momentum: 0.9,
    nesterov: false,
};
const NESTEROV: Optimizer = Optimizer::Sgd {
    momentum: 0.9,
    nesterov: true,
};
const ADAM: Optimizer = Optimizer::Adam {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    decoupled: false,
};
const ADAMW: Optimizer = Optimizer::Adam {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    decoupled: true,
};

/// Three steps on an arena of `n` parameters with fresh gradients each step, against the f64
/// reference; every step must be exactly one dispatch.
fn three_steps(opt: Optimizer, wd: f32, n: usize) {
    let gpu = gpu();
    let mut h = Harness::new(&gpu, format!("{opt:?} wd={wd} n={n}"));
    let p0 = rand_vec(n, 1);
    // Half the elements (think BN parameters and biases) are excluded from weight decay.
    let mask: Vec<f32> = (0..n).map(|i| ((i / 7) % 2) as f32).collect();
    // Garbage in the state buffers: step 1 must not read them.
    let junk = rand_vec(n, 2);
    let params = h.upload([n], &p0);
    let grads = h.output([n]);
    let state1 = h.upload([n], &junk);
    let state2 = h.upload([n], &junk);
    let tmask = h.upload([n], &mask);
    let mut want = f64s(&p0);
    let (mut s1, mut s2) = (vec![0.0; n], vec![0.0; n]);
    for t in 1..=3u32 {
        let lr = 0.1 / t as f32;
        let g = rand_vec(n, 10 + t as u64);
        gpu.upload(grads.region, &g).unwrap();
        let before = gpu.counters();
        let [p, gr, a, b, m] = [params, grads, state1, state2, tmask].map(|t| t.region);
        optim::step(&gpu, &opt, p, gr, a, b, m, lr, wd, t, None).unwrap();
        gpu.flush().unwrap();
        assert_eq!((gpu.counters() - before).dispatches, 1, "{opt:?} step {t}");
        optim::reference_step(&opt, &mut want, &g, &mut s1, &mut s2, &mask, lr, wd, t);
        h.expect(&format!("step {t}"), &params, &want, Tol::new(1e-5, 1e-5));
        h.expect(
            &format!("state1 step {t}"),
            &state1,
            &s1,
            Tol::new(1e-5, 1e-5),
        );
        if matches!(opt, Optimizer::Adam { .. }) {
            h.expect(
                &format!("state2 step {t}"),
                &state2,
                &s2,
                Tol::new(1e-7, 1e-5),
            );
        }
    }
    h.finish();
}

#[test]
fn sgd_matches_reference() {
    // 3001 and 4108 (scalar and vec4 builds) make threads update several elements a grid apart.
    for n in [1, 17, 1000, 3001, 4108] {
        three_steps(SGD, 0.0, n);
    }
}

#[test]
fn sgd_nesterov_matches_reference() {
    three_steps(NESTEROV, 0.0, 257);
}

#[test]
fn sgd_with_masked_weight_decay_matches_reference() {
    three_steps(SGD, 0.05, 257);
    three_steps(NESTEROV, 0.05, 31);
}

#[test]
fn adam_matches_reference() {
    three_steps(ADAM, 0.0, 1000);
    three_steps(ADAM, 0.05, 129);
    three_steps(ADAM, 0.05, 3001);
}

#[test]
fn adamw_matches_reference() {
    three_steps(ADAMW, 0.05, 1000);
    three_steps(ADAMW, 0.05, 4108);
}

#[test]
fn decay_mask_zero_leaves_decay_out() {
    // With a zero gradient, masked-out elements keep their value under every rule; masked-in ones
    // shrink.
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let n = 6;
    let p0 = vec![1.0f32; n];
    let mask = [0.0f32, 1.0, 0.0, 1.0, 0.0, 1.0];
    for opt in [SGD, ADAMW] {
        let params = arena.upload(&gpu, [n], &p0).unwrap().region;
        let grads = arena.tensor(&gpu, [n]).unwrap().region;
        let s1 = arena.tensor(&gpu, [n]).unwrap().region;
        let s2 = arena.tensor(&gpu, [n]).unwrap().region;
        let m = arena.upload(&gpu, [n], &mask).unwrap().region;
        optim::step(&gpu, &opt, params, grads, s1, s2, m, 0.1, 0.5, 1, None).unwrap();
        let got: Vec<f32> = gpu.read(params).unwrap();
        for i in 0..n {
            if mask[i] == 0.0 {
                assert_eq!(got[i], 1.0, "{opt:?} element {i}");
            } else {
                assert!(got[i] < 1.0, "{opt:?} element {i}: {}", got[i]);
            }
        }
        arena.reset();
    }
}

#[test]
fn length_mismatch_and_step_zero_are_errors() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let a = arena.tensor(&gpu, [10]).unwrap().region;
    let b = arena.tensor(&gpu, [9]).unwrap().region;
    let err = optim::step(&gpu, &ADAM, a, a, a, b, a, 0.1, 0.0, 1, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("state2") && err.contains('9') && err.contains("10"),
        "{err}"
    );
    // SGD ignores state2, whatever its length.
    optim::step(&gpu, &SGD, a, a, a, b, a, 0.1, 0.0, 1, None).unwrap();
    let err = optim::step(&gpu, &SGD, a, a, a, a, a, 0.1, 0.0, 0, None).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[test]
fn schedules_at_chosen_steps() {
    let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-6 * (1.0 + b.abs());
    assert_eq!(Schedule::Constant.lr(0.3, 12345), 0.3);

    let s = Schedule::Step {
        every: 10,
        gamma: 0.1,
    };
    assert!(close(s.lr(1.0, 0), 1.0));
    assert!(close(s.lr(1.0, 9), 1.0));
    assert!(close(s.lr(1.0, 10), 0.1));
    assert!(close(s.lr(1.0, 25), 0.01));
    let never = Schedule::Step {
        every: 0,
        gamma: 0.1,
    };
    assert_eq!(never.lr(1.0, 100), 1.0);

    let c = Schedule::Cosine {
        warmup: 10,
        total: 110,
        min_lr: 0.01,
    };
    assert!(close(c.lr(1.0, 0), 0.1), "step 0 is the first warmup step");
    assert!(close(c.lr(1.0, 4), 0.5));
    assert!(
        close(c.lr(1.0, 9), 1.0),
        "the last warmup step reaches base"
    );
    assert!(close(c.lr(1.0, 10), 1.0), "the cosine starts at base");
    assert!(close(c.lr(1.0, 60), 0.01 + 0.99 * 0.5), "halfway");
    assert!(close(
        c.lr(1.0, 35),
        0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())
    ));
    assert!(close(c.lr(1.0, 110), 0.01), "end");
    assert!(close(c.lr(1.0, 1000), 0.01), "after the end");
    // Monotone decay after warmup.
    let lrs: Vec<f32> = (10..=110).map(|s| c.lr(1.0, s)).collect();
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]));

    let no_warmup = Schedule::Cosine {
        warmup: 0,
        total: 100,
        min_lr: 0.0,
    };
    assert!(close(no_warmup.lr(0.5, 0), 0.5));
    assert!(close(no_warmup.lr(0.5, 50), 0.25));
    assert!(close(no_warmup.lr(0.5, 100), 0.0));
}
