//! The linear probe: multinomial logistic regression on standardised frozen features, trained to
//! convergence.
//!
//! A probe trained for a fixed number of SGD epochs reads low on small data and unevenly so across
//! feature sizes, which biases every comparison between representations. This one minimises the
//! regularised cross-entropy with full-batch L-BFGS until the gradient vanishes, so its figure
//! depends on the features alone. Protocol:
//! 1. standardise every feature with the training split's mean and standard deviation;
//! 2. choose the L2 strength from [`LAMBDAS`] by accuracy on a held-out tenth of the training split
//!    (every tenth example of each class), fitting on the other nine tenths — never on the test
//!    split;
//! 3. refit on the whole training split with that strength and report the test accuracy.

use crate::error::{Error, Result};

/// L2 strengths tried, strongest first (the penalty is `λ/2 · ‖W‖²` on the mean cross-entropy; the
/// biases are not penalised).
pub const LAMBDAS: [f64; 5] = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3];

/// Labelled feature rows, `x` row-major `[n, dim]`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub x: &'a [f32],
    pub labels: &'a [u8],
    pub dim: usize,
}

impl Rows<'_> {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }
}

/// What the probe found.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    pub accuracy: f64,
    /// The chosen L2 strength.
    pub lambda: f64,
    /// L-BFGS iterations of the final fit.
    pub iterations: usize,
    /// Largest gradient component at the end of the final fit.
    pub gradient: f64,
}

/// Runs the protocol above: `train` chooses and fits, `test` is only scored.
pub fn linear_probe(train: Rows, test: Rows) -> Result<ProbeReport> {
    if train.len() < 2
        || train.x.len() != train.len() * train.dim
        || test.x.len() != test.len() * test.dim
    {
        return Err(Error::Config(format!(
            "the linear probe needs at least two training rows of {} features ({} rows, {} values)",
            train.dim,
            train.len(),
            train.x.len()
        )));
    }
    let classes = train
        .labels
        .iter()
        .chain(test.labels)
        .max()
        .map_or(1, |&m| m as usize + 1);
    let (mean, inv) = standardisation(train);
    let standardise = |r: Rows| -> Vec<f32> {
        r.x.chunks(r.dim.max(1))
            .flat_map(|row| {
                row.iter()
                    .zip(&mean)
                    .zip(&inv)
                    .map(|((x, m), s)| (x - m) * s)
            })
            .collect()
    };
    let (xtrain, xtest) = (standardise(train), standardise(test));
    let all = Rows {
        x: &xtrain,
        ..train
    };

    // Hold out every tenth example of each class.
    let mut seen = vec![0usize; classes];
    let held: Vec<bool> = train
        .labels
        .iter()
        .map(|&l| {
            seen[l as usize] += 1;
            seen[l as usize].is_multiple_of(10)
        })
        .collect();
    let pick = |keep: bool| -> (Vec<f32>, Vec<u8>) {
        let idx: Vec<usize> = (0..all.len()).filter(|&i| held[i] == keep).collect();
        let x = idx
            .iter()
            .flat_map(|&i| all.row(i).iter().copied())
            .collect();
        (x, idx.iter().map(|&i| all.labels[i]).collect())
    };
    let (fx, fl) = pick(false);
    let (hx, hl) = pick(true);
    let fit_rows = Rows {
        x: &fx,
        labels: &fl,
        dim: train.dim,
    };
    let held_rows = Rows {
        x: &hx,
        labels: &hl,
        dim: train.dim,
    };

    let mut w = vec![0f64; classes * (train.dim + 1)];
    let mut best = (f64::NEG_INFINITY, LAMBDAS[0], w.clone());
    if !held_rows.labels.is_empty() && !fit_rows.labels.is_empty() {
        for &lambda in &LAMBDAS {
            fit(fit_rows, classes, lambda, &mut w);
            let acc = accuracy(held_rows, classes, &w);
            // Ties go to the stronger penalty, tried first.
            if acc > best.0 {
                best = (acc, lambda, w.clone());
            }
        }
    }
    let (_, lambda, mut w) = best;
    let (iterations, gradient) = fit(all, classes, lambda, &mut w);
    let test = Rows { x: &xtest, ..test };
    Ok(ProbeReport {
        accuracy: accuracy(test, classes, &w),
        lambda,
        iterations,
        gradient,
    })
}

/// Per-feature mean and inverse standard deviation of `r` (constant features get scale 0).
fn standardisation(r: Rows) -> (Vec<f32>, Vec<f32>) {
    let n = r.len() as f64;
    let mut mean = vec![0f64; r.dim];
    let mut sq = vec![0f64; r.dim];
    for i in 0..r.len() {
        for (j, &x) in r.row(i).iter().enumerate() {
            mean[j] += x as f64;
            sq[j] += x as f64 * x as f64;
        }
    }
    let mut inv = vec![0f32; r.dim];
    for j in 0..r.dim {
        mean[j] /= n;
        let var = (sq[j] / n - mean[j] * mean[j]).max(0.0);
        inv[j] = if var > 1e-12 {
            (1.0 / var.sqrt()) as f32
        } else {
            0.0
        };
    }
    (mean.iter().map(|&m| m as f32).collect(), inv)
}

/// Logits of one row, `W x + b`: `w` holds the weights feature-major (`w[j·classes + c]`, so that the
/// inner loops run over classes without a reduction and vectorise) and then the biases.
fn logits(w: &[f32], x: &[f32], classes: usize, out: &mut [f32]) {
    let d = x.len();
    out[..classes].copy_from_slice(&w[d * classes..(d + 1) * classes]);
    for (j, &xj) in x.iter().enumerate() {
        let wj = &w[j * classes..(j + 1) * classes];
        for (o, wc) in out[..classes].iter_mut().zip(wj) {
            *o += xj * wc;
        }
    }
}

fn accuracy(r: Rows, classes: usize, w: &[f64]) -> f64 {
    let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    let mut z = vec![0f32; classes];
    let correct = (0..r.len())
        .filter(|&i| {
            logits(&w32, r.row(i), classes, &mut z);
            let top = z
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|t| t.0);
            top == Some(r.labels[i] as usize)
        })
        .count();
    correct as f64 / r.len().max(1) as f64
}

/// Mean cross-entropy plus `λ/2 ‖W‖²` and its gradient, the rows split over the CPU's cores.
fn loss_and_gradient(r: Rows, classes: usize, lambda: f64, w: &[f64], grad: &mut [f64]) -> f64 {
    let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    let d = r.dim;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16);
    let chunk = r.len().div_ceil(threads).max(1);
    let parts: Vec<(f64, Vec<f64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..r.len())
            .step_by(chunk)
            .map(|start| {
                let w32 = &w32;
                s.spawn(move || {
                    let mut g = vec![0f32; w32.len()];
                    let mut z = vec![0f32; classes];
                    let mut loss = 0f64;
                    for i in start..(start + chunk).min(r.len()) {
                        let x = r.row(i);
                        logits(w32, x, classes, &mut z);
                        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let sum: f32 = z.iter().map(|v| (v - m).exp()).sum();
                        let y = r.labels[i] as usize;
                        loss += (sum.ln() + m - z[y]) as f64;
                        for (c, zc) in z.iter_mut().enumerate() {
                            *zc = (*zc - m).exp() / sum - (c == y) as u8 as f32;
                        }
                        for (j, &xj) in x.iter().enumerate() {
                            let gj = &mut g[j * classes..(j + 1) * classes];
                            for (gc, p) in gj.iter_mut().zip(&z) {
                                *gc += xj * p;
                            }
                        }
                        for (gc, p) in g[d * classes..].iter_mut().zip(&z) {
                            *gc += p;
                        }
                    }
                    (loss, g.into_iter().map(f64::from).collect())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe worker"))
            .collect()
    });
    let n = r.len() as f64;
    grad.fill(0.0);
    let mut loss = 0.0;
    for (l, g) in parts {
        loss += l;
        for (a, b) in grad.iter_mut().zip(g) {
            *a += b;
        }
    }
    loss /= n;
    for (i, (gi, wi)) in grad.iter_mut().zip(w).enumerate() {
        *gi /= n;
        if i < d * classes {
            *gi += lambda * wi;
            loss += 0.5 * lambda * wi * wi;
        }
    }
    loss
}

/// Minimises the probe's loss from `w` with L-BFGS (history 10, backtracking Armijo line search)
/// until the largest gradient component is below 1e-5, the loss stops falling, or 500
/// iterations. Returns (iterations, largest gradient component).
fn fit(r: Rows, classes: usize, lambda: f64, w: &mut [f64]) -> (usize, f64) {
    const HISTORY: usize = 10;
    const MAX_ITER: usize = 500;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let n = w.len();
    let mut g = vec![0f64; n];
    let mut loss = loss_and_gradient(r, classes, lambda, w, &mut g);
    let mut hist: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let (mut wn, mut gn) = (vec![0f64; n], vec![0f64; n]);
    let mut flat = 0;
    for it in 0..MAX_ITER {
        let gmax = g.iter().fold(0f64, |m, v| m.max(v.abs()));
        if gmax < 1e-5 || flat >= 3 {
            return (it, gmax);
        }
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, y, rho) in hist.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        if let Some((s, y, _)) = hist.back() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, y, rho), a) in hist.iter().zip(alphas.into_iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            hist.clear();
            dir = g.iter().map(|v| -v).collect();
            slope = -dot(&g, &g);
        }
        let mut step = if hist.is_empty() {
            1.0 / gmax.max(1.0)
        } else {
            1.0
        };
        let mut accepted = false;
        for _ in 0..30 {
            wn.iter_mut()
                .zip(w.iter())
                .zip(&dir)
                .for_each(|((a, b), d)| *a = b + step * d);
            let ln = loss_and_gradient(r, classes, lambda, &wn, &mut gn);
            if ln <= loss + 1e-4 * step * slope {
                let s: Vec<f64> = wn.iter().zip(w.iter()).map(|(a, b)| a - b).collect();
                let y: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
                let sy = dot(&s, &y);
                if sy > 1e-12 {
                    if hist.len() == HISTORY {
                        hist.pop_front();
                    }
                    hist.push_back((s, y, 1.0 / sy));
                }
                flat = if loss - ln <= 1e-9 * loss.abs().max(1.0) {
                    flat + 1
                } else {
                    0
                };
                loss = ln;
                w.copy_from_slice(&wn);
                g.copy_from_slice(&gn);
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            return (it, g.iter().fold(0f64, |m, v| m.max(v.abs())));
        }
    }
    (MAX_ITER, g.iter().fold(0f64, |m, v| m.max(v.abs())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Three Gaussian classes in 5 dimensions, two of them overlapping.
    fn blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let centres = [
            [2.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0, 0.0],
        ];
        let mut x = vec![];
        let mut l = vec![];
        for i in 0..n {
            let c = i % 3;
            for centre in centres[c] {
                x.push(centre + rng.random_range(-1.0f32..1.0));
            }
            l.push(c as u8);
        }
        (x, l)
    }

    #[test]
    fn the_fit_reaches_a_stationary_point_of_the_regularised_loss() {
        let (x, l) = blobs(600, 1);
        let r = Rows {
            x: &x,
            labels: &l,
            dim: 5,
        };
        let mut w = vec![0f64; 3 * 6];
        let (iters, gmax) = fit(r, 3, 1e-3, &mut w);
        assert!(gmax < 1e-5, "gradient {gmax} after {iters} iterations");
        // Central differences agree with the analytic gradient the fit used.
        let mut g = vec![0f64; w.len()];
        let mut scratch = vec![0f64; w.len()];
        loss_and_gradient(r, 3, 1e-3, &w, &mut g);
        for i in [0, 4, 5, 11, 17] {
            let h = 1e-3;
            let (mut a, mut b) = (w.clone(), w.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (loss_and_gradient(r, 3, 1e-3, &a, &mut scratch)
                - loss_and_gradient(r, 3, 1e-3, &b, &mut scratch))
                / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-4, "weight {i}: {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn separable_classes_are_found_and_noise_is_near_chance() {
        let (x, l) = blobs(900, 2);
        let (tx, tl) = blobs(300, 3);
        let train = Rows {
            x: &x,
            labels: &l,
            dim: 5,
        };
        let test = Rows {
            x: &tx,
            labels: &tl,
            dim: 5,
        };
        let report = linear_probe(train, test).unwrap();
        assert!(report.accuracy > 0.8, "{report:?}");
        // Labels unrelated to the features.
        let shuffled: Vec<u8> = (0..tl.len()).map(|i| ((i * 7 + i / 3) % 3) as u8).collect();
        let noise = linear_probe(
            train,
            Rows {
                labels: &shuffled,
                ..test
            },
        )
        .unwrap();
        assert!(noise.accuracy < 0.5, "{noise:?}");
    }

    #[test]
    fn too_few_rows_are_refused() {
        let r = Rows {
            x: &[1.0],
            labels: &[0],
            dim: 1,
        };
        assert!(linear_probe(r, r).is_err());
    }
}
