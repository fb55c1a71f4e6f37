//! The GRU recurrence against an f64 reference, and its backward through time (inputs, recurrent
//! weights and bias, and the input projection before it) against central differences.

mod common;

use common::*;
use contrastive::autodiff::gradcheck::{self, Input, Tolerance};
use contrastive::kernels::gru;
use contrastive::Arena;

#[test]
fn forward_matches_reference_on_awkward_shapes() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("gru", &gpu);
    // (B, T, H): batch 1, one step, hidden sizes that are not multiples of anything.
    for (i, &(b, t, h)) in [(1, 1, 1), (1, 5, 3), (3, 7, 17), (5, 2, 64), (2, 13, 33)]
        .iter()
        .enumerate()
    {
        let seed = 100 + 3 * i as u64;
        // Large inputs saturate the gates: tanh and σ must stay finite there.
        let gx: Vec<f32> = rand_vec(b * t * 3 * h, seed)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let w: Vec<f32> = rand_vec(3 * h * h, seed + 1)
            .iter()
            .map(|v| v / (h as f32).sqrt())
            .collect();
        let bias = rand_vec(3 * h, seed + 2);
        arena.reset();
        let gxt = arena.upload(&gpu, [b, t, 3 * h], &gx).unwrap();
        let wt = arena.upload(&gpu, [3 * h, h], &w).unwrap();
        let bt = arena.upload(&gpu, [3 * h], &bias).unwrap();
        let out = arena.tensor(&gpu, [b, t, h]).unwrap();
        let hprev = arena.tensor(&gpu, [b * t, h]).unwrap();
        let gates = arena.tensor(&gpu, [b * t, 4 * h]).unwrap();
        let scratch = gru::forward_scratch(b, h).map(|s| arena.tensor(&gpu, s).unwrap());
        gru::forward(&gpu, &gxt, &wt, &bt, &out, &hprev, &gates, &scratch).unwrap();
        let got = gpu.read(out.region).unwrap();
        let want = gru::reference(&gx, &w, &bias, b, t, h);
        assert_close(&format!("gru B{b} T{t} H{h}"), &got, &want, 1e-5, 1e-4);
    }
}

#[test]
fn shape_errors_name_the_op() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("gru", &gpu);
    let gx = arena.tensor(&gpu, [2, 3, 12]).unwrap();
    let w = arena.tensor(&gpu, [12, 5]).unwrap();
    let b = arena.tensor(&gpu, [12]).unwrap();
    let e = gru::dims(&gx, &w, &b).unwrap_err().to_string();
    assert!(e.contains("gru") && e.contains("[3H, H]"), "{e}");
}

fn check(b: usize, t: usize, din: usize, h: usize) {
    let gpu = gpu();
    let shapes: [&[usize]; 5] = [
        &[b * t, din],
        &[3 * h, din],
        &[3 * h],
        &[3 * h, h],
        &[3 * h],
    ];
    let inputs: Vec<Input> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Input::new(*s, rand_vec(s.iter().product(), 40 + i as u64)))
        .collect();
    // x → linear input projection → GRU: the states' gradient reaches x, W_ih, b_ih, W_hh, b_hh.
    let f = |g: &mut contrastive::autodiff::Graph, v: &[contrastive::autodiff::Var]| {
        let gx = g.linear(v[0], v[1], Some(v[2]), false)?;
        let gx = g.reshape(gx, [b, t, 3 * h])?;
        g.gru(gx, v[3], v[4])
    };
    let r = gradcheck::check(&gpu, &inputs, f, &Tolerance::default())
        .unwrap_or_else(|e| panic!("gru B{b} T{t} D{din} H{h}: {e}"));
    assert!(r.checked > 0);
}

#[test]
fn backward_through_time_matches_finite_differences() {
    check(1, 1, 2, 3);
    check(2, 5, 3, 4);
    check(3, 4, 5, 7);
}
