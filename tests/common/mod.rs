//! Shared test helpers. Every test opens its own device: tests run in parallel threads and each
//! device keeps its own command recorder.
//!
//! Kernel tests are written with [`Harness`] and [`for_cases`]: a test of a kernel family is a list
//! of cases (awkward shapes: 1×1, odd sizes, more than one workgroup or grid dimension) and one
//! closure that uploads the case's inputs, launches the kernel, and compares each output against
//! the family's CPU reference with `tol + |ref|·eps`:
//!
//! ```ignore
//! for_cases(&gpu(), [(1, 1), (17, 31), (129, 64)], |h, (rows, cols)| {
//!     let x = rand_vec(rows * cols, 1);
//!     let tx = h.upload([rows, cols], &x);
//!     let out = h.output([rows]);
//!     kernel(h.gpu, &tx, &out).unwrap();
//!     h.expect("out", &out, &reference(&x, rows, cols), Tol::new(1e-6, 1e-5));
//! });
//! ```
//!
//! Every failing comparison of every case is reported, each named by its case and `what`.
#![allow(dead_code)]

use std::cell::RefCell;
use std::fmt::Debug;

use contrastive::kernels::optim::{Optimizer, Schedule};
use contrastive::nn::EncoderConfig;
use contrastive::optim::OptimConfig;
use contrastive::{Arena, Gpu, Shape, Tensor};
use rand::{Rng, SeedableRng};

/// The adapter for this test run. Fails (never skips) when none is found, with the error that says
/// how to get a software driver.
pub fn gpu() -> Gpu {
    match Gpu::new() {
        Ok(g) => g,
        Err(e) => panic!("tests need a GPU adapter: {e}"),
    }
}

/// The adapter, and the adapter again with every launch decision taken as for a discrete GPU
/// (kernel variants, invocation counts, reduction splits), so that CI on a CPU adapter also covers
/// the code paths that only GPUs take.
pub fn gpus() -> [Gpu; 2] {
    let mut shaped = gpu();
    shaped.set_kind(contrastive::gpu::AdapterKind::Gpu);
    [gpu(), shaped]
}

/// Uniform values in [-1, 1), seeded.
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Values in [-1, 1) kept at least `gap` away from zero (for kinks like ReLU's).
pub fn rand_vec_away_from_zero(n: usize, seed: u64, gap: f32) -> Vec<f32> {
    rand_vec(n, seed)
        .into_iter()
        .map(|x| {
            if x.abs() < gap {
                x.signum() * gap + x
            } else {
                x
            }
        })
        .collect()
}

/// How far a result may be from its reference: `|got − ref| ≤ tol + |ref|·eps` per element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    pub tol: f64,
    pub eps: f64,
}

impl Tol {
    pub const EXACT: Tol = Tol { tol: 0.0, eps: 0.0 };

    pub const fn new(tol: f64, eps: f64) -> Tol {
        Tol { tol, eps }
    }
}

/// One kernel case on one device: its own arena for the inputs and outputs, and the failed
/// comparisons so far (reported together by [`Harness::finish`], which [`for_cases`] calls).
pub struct Harness<'g> {
    pub gpu: &'g Gpu,
    pub arena: Arena,
    /// Names the case in every failure.
    pub label: String,
    failures: RefCell<Vec<String>>,
}

impl<'g> Harness<'g> {
    pub fn new(gpu: &'g Gpu, label: impl Into<String>) -> Self {
        Harness {
            gpu,
            arena: Arena::for_gpu("test", gpu),
            label: label.into(),
            failures: RefCell::new(vec![]),
        }
    }

    /// A tensor holding `data`.
    pub fn upload(&mut self, shape: impl Into<Shape>, data: &[f32]) -> Tensor {
        self.arena.upload(self.gpu, shape, data).unwrap()
    }

    /// A tensor holding u32 `data` (indices, targets).
    pub fn upload_u32(&mut self, shape: impl Into<Shape>, data: &[u32]) -> Tensor {
        let t = self.output(shape);
        self.gpu.upload(t.region, data).unwrap();
        t
    }

    /// An uninitialised tensor for a kernel to write.
    pub fn output(&mut self, shape: impl Into<Shape>) -> Tensor {
        self.arena.tensor(self.gpu, shape).unwrap()
    }

    /// Reads `t` back (flushes recorded work).
    pub fn read(&self, t: &Tensor) -> Vec<f32> {
        self.gpu.read(t.region).unwrap()
    }

    pub fn read_u32(&self, t: &Tensor) -> Vec<u32> {
        self.gpu.read(t.region).unwrap()
    }

    /// Reads `t` back and compares it with `want`.
    pub fn expect(&self, what: &str, t: &Tensor, want: &[f64], tol: Tol) {
        self.expect_values(what, &self.read(t), want, tol);
    }

    /// Compares host values with `want`, recording a failure named by the case and `what`.
    pub fn expect_values(&self, what: &str, got: &[f32], want: &[f64], tol: Tol) {
        if let Err(e) = contrastive::kernels::check_close(got, want, tol.tol, tol.eps) {
            let failure = format!("case {}, {what}: {e}", self.label);
            self.failures.borrow_mut().push(failure);
        }
    }

    /// Checks a kernel that writes or accumulates into its output: `launch(out, accumulate)` runs
    /// twice on an output of `shape` holding `prev`, once writing (expecting `want`) and once
    /// accumulating (expecting `want + prev`).
    pub fn expect_both_ways(
        &mut self,
        what: &str,
        shape: impl Into<Shape> + Copy,
        prev: &[f32],
        want: &[f64],
        tol: Tol,
        mut launch: impl FnMut(&Gpu, &Tensor, bool) -> contrastive::Result<()>,
    ) {
        for acc in [false, true] {
            let out = self.upload(shape, prev);
            launch(self.gpu, &out, acc).unwrap();
            let want = accumulated(want, prev, acc);
            self.expect(&format!("{what} acc={acc}"), &out, &want, tol);
        }
    }

    /// Panics listing every failed comparison.
    pub fn finish(self) {
        let failures = self.failures.into_inner();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// Runs `test` on every case, each with a fresh [`Harness`] labelled with the case's `Debug`
/// form; fails listing every comparison that failed in any case.
pub fn for_cases<C: Debug>(
    gpu: &Gpu,
    cases: impl IntoIterator<Item = C>,
    mut test: impl FnMut(&mut Harness, C),
) {
    let mut failures = vec![];
    for case in cases {
        let mut h = Harness::new(gpu, format!("{case:?}"));
        test(&mut h, case);
        failures.extend(h.failures.into_inner());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The reference of an accumulating kernel: `want + prev` when `accumulate`, else `want`.
pub fn accumulated(want: &[f64], prev: &[f32], accumulate: bool) -> Vec<f64> {
    want.iter()
        .zip(prev)
        .map(|(&w, &p)| if accumulate { w + p as f64 } else { w })
        .collect()
}

/// `v` widened to f64, for comparing two GPU results.
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Panics with the comparison's message.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64, eps: f64) {
    if let Err(e) = contrastive::kernels::check_close(got, want, tol, eps) {
        panic!("{what}: {e}");
    }
}

/// The two-stage encoder (widths 4 and 8) that the method tests train on 28×28 images.
pub fn tiny_encoder() -> EncoderConfig {
    EncoderConfig {
        widths: vec![4, 8],
        ..EncoderConfig::small(28, 28, 1)
    }
}

/// SGD with momentum 0.9 and weight decay 5e-4 at a constant learning rate.
pub fn sgd(lr: f32) -> OptimConfig {
    OptimConfig {
        kind: Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
        },
        lr,
        weight_decay: 5e-4,
        schedule: Schedule::Constant,
    }
}

/// The smallest MoCo model the tests through the binary train (seconds on llvmpipe): flags of
/// `train moco` beside the data, batch and length settings.
pub const TINY_MOCO: &[&str] = &[
    "--widths",
    "4,8",
    "--queue",
    "32",
    "--dim",
    "8",
    "--split-bn",
    "2",
];
