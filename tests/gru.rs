//! The GRU recurrence against an f64 reference, and its backward through time (inputs, recurrent
//! weights and bias, and the input projection before it) against central differences.

mod common;

use common::*;
use contrastive::autodiff::gradcheck::{self, Input, Tolerance};
use contrastive::kernels::gru;
use contrastive::Arena;

#[test]
fn forward_matches_reference_on_awkward_shapes() {
    // (B, T, H): batch 1, one step, hidden sizes that are not multiples of anything.
    let shapes = [(1, 1, 1), (1, 5, 3), (3, 7, 17), (5, 2, 64), (2, 13, 33)];
    for_cases(
        &gpu(),
        shapes.into_iter().enumerate(),
        |h, (i, (b, t, hid))| {
            let seed = 100 + 3 * i as u64;
            // Large inputs saturate the gates: tanh and σ must stay finite there.
            let gx: Vec<f32> = rand_vec(b * t * 3 * hid, seed)
                .iter()
                .map(|v| v * 4.0)
                .collect();
            let w: Vec<f32> = rand_vec(3 * hid * hid, seed + 1)
                .iter()
                .map(|v| v / (hid as f32).sqrt())
                .collect();
            let bias = rand_vec(3 * hid, seed + 2);
            let gxt = h.upload([b, t, 3 * hid], &gx);
            let wt = h.upload([3 * hid, hid], &w);
            let bt = h.upload([3 * hid], &bias);
            let out = h.output([b, t, hid]);
            let hprev = h.output([b * t, hid]);
            let gates = h.output([b * t, 4 * hid]);
            let scratch = gru::forward_scratch(b, hid).map(|s| h.output(s));
            gru::forward(h.gpu, &gxt, &wt, &bt, &out, &hprev, &gates, &scratch).unwrap();
            let want = gru::reference(&gx, &w, &bias, b, t, hid);
            h.expect("states", &out, &want, Tol::new(1e-5, 1e-4));
        },
    );
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
