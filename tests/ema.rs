mod common;

use common::*;
use contrastive::kernels::ema;
use contrastive::{Arena, Error};

#[test]
fn matches_reference_on_awkward_lengths() {
    let lengths = [1, 3, 4, 17, 1001, 65_537, 1_000_003];
    for_cases(&gpu(), lengths, |h, n| {
        let t = rand_vec(n, n as u64);
        let s = rand_vec(n, n as u64 + 1);
        for m in [0.999, 0.99, 0.5, 0.3] {
            let tt = h.upload([n], &t);
            let ts = h.upload([n], &s);
            ema::ema(h.gpu, tt.region, ts.region, m).unwrap();
            let want = ema::reference(&t, &s, m);
            h.expect(&format!("m={m}"), &tt, &want, Tol::new(1e-7, 1e-6));
            // The source is only read.
            h.expect(&format!("m={m} source"), &ts, &f64s(&s), Tol::EXACT);
            h.arena.reset();
        }
    });
}

#[test]
fn momentum_one_keeps_target_and_zero_copies_source() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    for n in [1, 1001] {
        let t = rand_vec(n, 5);
        let s = rand_vec(n, 6);
        let tt = arena.upload(&gpu, [n], &t).unwrap();
        let ts = arena.upload(&gpu, [n], &s).unwrap();
        ema::ema(&gpu, tt.region, ts.region, 1.0).unwrap();
        let got: Vec<f32> = gpu.read(tt.region).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&t), "m=1, n={n}");
        ema::ema(&gpu, tt.region, ts.region, 0.0).unwrap();
        let got: Vec<f32> = gpu.read(tt.region).unwrap();
        assert_eq!(bits(&got), bits(&s), "m=0, n={n}");
    }
}

#[test]
fn whole_arena_is_one_dispatch() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let n = 1_000_000;
    let tt = arena.upload(&gpu, [n], &rand_vec(n, 1)).unwrap();
    let ts = arena.upload(&gpu, [n], &rand_vec(n, 2)).unwrap();
    gpu.sync().unwrap();
    let before = gpu.counters();
    ema::ema(&gpu, tt.region, ts.region, 0.99).unwrap();
    gpu.sync().unwrap();
    assert_eq!((gpu.counters() - before).dispatches, 1);
}

#[test]
fn bad_momentum_and_lengths_are_errors() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let a = arena.tensor(&gpu, [8]).unwrap();
    let b = arena.tensor(&gpu, [9]).unwrap();
    for m in [-0.1, 1.01, f32::NAN] {
        let err = ema::ema(&gpu, a.region, a.region, m).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "m={m}: {err}");
    }
    let err = ema::ema(&gpu, a.region, b.region, 0.9).unwrap_err();
    assert!(
        err.to_string().contains('8') && err.to_string().contains('9'),
        "{err}"
    );
}
