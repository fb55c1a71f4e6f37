//! Gradient checking through the real GPU kernels, for the crate's tests and for users' own graphs.
//!
//! For a graph `y = f(x₁, …, xₖ)` the checker seeds the backward pass with a fixed random `r`
//! (the gradient of the scalar `L = Σ r ⊙ y`), reads the analytic gradients, then perturbs input
//! coordinates one at a time and compares with the central difference
//! `(L(x + h·eᵢ) − L(x − h·eᵢ)) / 2h`, evaluated in f64 from f32 forward passes.
//!
//! Defaults and why: `h = 1e-2` balances the O(h²) truncation error of the central difference
//! against f32 round-off, which is amplified by 1/2h; a coordinate passes when
//! `|analytic − numeric| ≤ atol + rtol·max(|analytic|, |numeric|)` with `atol = 1e-3`,
//! `rtol = 2e-2`. Inputs should keep away from kinks (ReLU at 0, ties in max pooling) by more than
//! `h`. Large inputs are checked on a seeded random subset of `max_coords` coordinates.

use rand::{Rng, SeedableRng};

use super::{Graph, Var};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::memory::{Arena, Shape};

#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Finite-difference step `h`.
    pub step: f32,
    pub atol: f64,
    pub rtol: f64,
    /// Coordinates checked per input (all of them when the input is smaller).
    pub max_coords: usize,
    pub seed: u64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            step: 1e-2,
            atol: 1e-3,
            rtol: 2e-2,
            max_coords: 48,
            seed: 0,
        }
    }
}

/// What a passing check measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    pub checked: usize,
    pub max_abs_diff: f64,
}

/// One input of the checked function: its shape and values.
pub struct Input {
    pub shape: Shape,
    pub data: Vec<f32>,
}

impl Input {
    pub fn new(shape: impl Into<Shape>, data: Vec<f32>) -> Input {
        let shape = shape.into();
        assert_eq!(
            shape.numel(),
            data.len(),
            "input data does not match its shape"
        );
        Input { shape, data }
    }
}

/// Runs `f` on fresh leaves holding `xs`; returns the output's values and, with `r`, the
/// gradients of `Σ r ⊙ y` with respect to every input. Also useful on its own, to compare two
/// formulations of one function (a fused op against its parts).
pub fn evaluate<F>(
    gpu: &Gpu,
    arena: &mut Arena,
    xs: &[Input],
    f: &F,
    r: Option<&[f32]>,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)>
where
    F: Fn(&mut Graph, &[Var]) -> Result<Var>,
{
    arena.reset();
    let mut g = if r.is_some() {
        Graph::new(gpu, arena)
    } else {
        Graph::inference(gpu, arena)
    };
    let mut vars = vec![];
    for x in xs {
        let t = g.arena.upload(gpu, x.shape, &x.data)?;
        vars.push(g.leaf(t));
    }
    let y = f(&mut g, &vars)?;
    let mut grads = vec![];
    if let Some(r) = r {
        let seed = g.arena.upload(gpu, g.shape(y), r)?;
        g.backward_with(y, seed)?;
        for (v, x) in vars.iter().zip(xs) {
            grads.push(match g.grad(*v) {
                Some(t) => gpu.read(t.region)?,
                None => vec![0.0; x.data.len()],
            });
        }
    }
    Ok((g.read(y)?, grads))
}

fn weighted(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Checks the gradients of `f` at `inputs`. Returns an [`Error::Gradient`] naming the first
/// coordinate out of tolerance.
pub fn check<F>(gpu: &Gpu, inputs: &[Input], f: F, tol: &Tolerance) -> Result<Report>
where
    F: Fn(&mut Graph, &[Var]) -> Result<Var>,
{
    let mut arena = Arena::for_gpu("gradcheck", gpu);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(tol.seed);
    let (y0, _) = evaluate(gpu, &mut arena, inputs, &f, None)?;
    let r: Vec<f32> = (0..y0.len())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let (_, analytic) = evaluate(gpu, &mut arena, inputs, &f, Some(&r))?;

    let mut xs: Vec<Input> = inputs
        .iter()
        .map(|x| Input::new(x.shape, x.data.clone()))
        .collect();
    let mut report = Report::default();
    for k in 0..xs.len() {
        let n = xs[k].data.len();
        let coords: Vec<usize> = if n <= tol.max_coords {
            (0..n).collect()
        } else {
            (0..tol.max_coords)
                .map(|_| rng.random_range(0..n))
                .collect()
        };
        for i in coords {
            let x0 = xs[k].data[i];
            xs[k].data[i] = x0 + tol.step;
            let plus = weighted(&evaluate(gpu, &mut arena, &xs, &f, None)?.0, &r);
            xs[k].data[i] = x0 - tol.step;
            let minus = weighted(&evaluate(gpu, &mut arena, &xs, &f, None)?.0, &r);
            xs[k].data[i] = x0;
            let numeric = (plus - minus) / (2.0 * tol.step as f64);
            let a = analytic[k][i] as f64;
            let diff = (a - numeric).abs();
            let bound = tol.atol + tol.rtol * a.abs().max(numeric.abs());
            if diff.is_nan() || diff > bound {
                return Err(Error::Gradient {
                    input: k,
                    index: i,
                    analytic: a,
                    numeric,
                    diff,
                    bound,
                });
            }
            report.checked += 1;
            report.max_abs_diff = report.max_abs_diff.max(diff);
        }
    }
    Ok(report)
}
