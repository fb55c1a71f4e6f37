//! Contrastive Predictive Coding scores (`shaders/cpc.wgsl`), whose row softmax is over
//! candidates, never over offsets; and the image patch grid.
//!
//! Layout: encodings `z [B, T, D]`, predictions `pred [B, T, K·D]` (offset k's `W_k·c_t` in the
//! k-th block of D), logits row `r = off(k) + t·B + b` for `t < T − k`. [`Offsets::ranges`] gives
//! each offset's rows, so its loss and accuracy are a slice. Two ways to choose the candidates:
//! - same step ([`scores`]): every sequence's encoding at the predicted step, `[rows, B]`, the
//!   positive in column `b`; one small GEMM per (offset, step);
//! - drawn ([`gather_scores`]): row r against the encodings at the positions `idx[r, ·]` of
//!   [`Candidates`] (drawn on the host, see [`Drawn`]), `scores[r, j] = pred_r · z[idx[r, j]]`.
//!   Its gradients are gathers too: the gradient of z reads the inverse lists of which (r, j)
//!   point at each position (CSR, built on the host), in a fixed order, so no float atomics.

use rand::Rng;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};
use crate::kernel;
use crate::memory::{Arena, Tensor};

use super::grid_1d;

const SCORES: Kernel = kernel!("cpc.wgsl", "scores", 3);
const GRAD_PRED: Kernel = kernel!("cpc.wgsl", "grad_pred", 3);
const GRAD_Z: Kernel = kernel!("cpc.wgsl", "grad_z", 3);
const PATCHES: Kernel = kernel!("cpc.wgsl", "patches", 2);
const OFFSET_STATS: Kernel = kernel!("cpc.wgsl", "offset_stats", 3);
const GATHER_SCORES: Kernel = kernel!("cpc.wgsl", "gather_scores", 4);
const GATHER_GRAD_PRED: Kernel = kernel!("cpc.wgsl", "gather_grad_pred", 4);
const GATHER_GRAD_Z: Kernel = kernel!("cpc.wgsl", "gather_grad_z", 5);

/// The most offsets [`offset_stats`] handles (one workgroup, one invocation per offset).
pub const MAX_OFFSETS: usize = 63;

/// The scoring problem's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub batch: usize,
    pub steps: usize,
    pub dim: usize,
    /// K: offsets 1..=K are predicted.
    pub k: usize,
}

impl Offsets {
    /// Reads B, T, D from `z [B, T, D]` and checks `pred [B, T, K·D]`; K must leave every
    /// offset at least one step to predict (K < T).
    pub fn of(z: &Tensor, pred: &Tensor, k: usize) -> Result<Offsets> {
        let bad = |why: &str| {
            Error::shape(
                "cpc_scores",
                format!(
                    "encodings {:?} must be [B, T, D] and predictions {:?} [B, T, K·D] with K = {k}: {why}",
                    z.shape, pred.shape
                ),
            )
        };
        if z.shape.rank() != 3 || pred.shape.rank() != 3 {
            return Err(bad("wrong rank"));
        }
        let (batch, steps, dim) = (z.shape.dim(0), z.shape.dim(1), z.shape.dim(2));
        if pred.shape.dims() != [batch, steps, k * dim] {
            return Err(bad("shapes differ"));
        }
        if k == 0 || k >= steps || k > MAX_OFFSETS {
            return Err(bad(&format!("need 1 ≤ K < T and K ≤ {MAX_OFFSETS}")));
        }
        Ok(Offsets {
            batch,
            steps,
            dim,
            k,
        })
    }

    /// Total logits rows, `Σ_k (T − k)·B`.
    pub fn rows(&self) -> usize {
        self.ranges().last().map_or(0, |r| r.end)
    }

    /// The logits rows of each offset k = 1..=K.
    pub fn ranges(&self) -> Vec<std::ops::Range<usize>> {
        let mut start = 0;
        (1..=self.k)
            .map(|k| {
                let end = start + (self.steps - k) * self.batch;
                let r = start..end;
                start = end;
                r
            })
            .collect()
    }

    /// The positive column of every row of the same-step scores.
    pub fn targets(&self) -> Vec<u32> {
        (0..self.rows()).map(|r| (r % self.batch) as u32).collect()
    }

    /// Encoding positions `b·T + s`, the rows of `z` seen as `[B·T, D]`.
    pub fn positions(&self) -> usize {
        self.batch * self.steps
    }

    /// (k, t, b) of every logits row, in row order.
    pub fn row_keys(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (1..=self.k).flat_map(move |k| {
            (0..self.steps - k).flat_map(move |t| (0..self.batch).map(move |b| (k, t, b)))
        })
    }

    /// Where the prediction of row (k, t, b) starts in `pred`.
    fn pred_at(&self, (k, t, b): (usize, usize, usize)) -> usize {
        ((b * self.steps + t) * self.k + k - 1) * self.dim
    }

    /// `cols`: candidates per row of drawn scores (0 for the same-step ones).
    fn params(&self, cols: usize, accumulate: bool) -> [u32; 8] {
        [
            self.batch as u32,
            self.steps as u32,
            self.dim as u32,
            self.k as u32,
            self.rows() as u32,
            accumulate as u32,
            cols as u32,
            0,
        ]
    }
}

/// Candidates drawn on the host for every logits row: `idx [rows, cols]` holds encoding positions
/// `b·T + s` (see [`Offsets::positions`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drawn {
    pub cols: usize,
    pub idx: Vec<u32>,
}

impl Drawn {
    /// For every row, `count` positions drawn uniformly with replacement among all B·T positions
    /// of the batch except the row's positive — the other steps of the same sequence and every
    /// step of the other sequences alike — after the positive itself in column 0 when
    /// `with_positive`.
    pub fn draw(o: &Offsets, count: usize, with_positive: bool, rng: &mut impl Rng) -> Drawn {
        let cols = count + with_positive as usize;
        let others = o.positions() as u32 - 1;
        let mut idx = Vec::with_capacity(o.rows() * cols);
        for (k, t, b) in o.row_keys() {
            let positive = (b * o.steps + t + k) as u32;
            if with_positive {
                idx.push(positive);
            }
            for _ in 0..count {
                let u = rng.random_range(0..others);
                idx.push(if u >= positive { u + 1 } else { u });
            }
        }
        Drawn { cols, idx }
    }

    /// The inverse lists (CSR): `entries[starts[n]..starts[n + 1]]` are the flat indices
    /// `r·cols + j` of every candidate that is position n, in increasing order.
    pub fn inverse(&self, positions: usize) -> (Vec<u32>, Vec<u32>) {
        let mut starts = vec![0u32; positions + 1];
        for &n in &self.idx {
            starts[n as usize + 1] += 1;
        }
        for n in 0..positions {
            starts[n + 1] += starts[n];
        }
        let mut next = starts.clone();
        let mut entries = vec![0u32; self.idx.len()];
        for (e, &n) in self.idx.iter().enumerate() {
            entries[next[n as usize] as usize] = e as u32;
            next[n as usize] += 1;
        }
        (starts, entries)
    }

    /// Uploads the candidates and their inverse lists into `arena`.
    pub fn upload(&self, gpu: &Gpu, arena: &mut Arena, o: &Offsets) -> Result<Candidates> {
        if self.cols == 0 || self.idx.len() != o.rows() * self.cols {
            return Err(Error::shape(
                "cpc candidates",
                format!(
                    "{} indices in {} columns for {} rows",
                    self.idx.len(),
                    self.cols,
                    o.rows()
                ),
            ));
        }
        let (starts, entries) = self.inverse(o.positions());
        let mut put = |shape: &[usize], data: &[u32]| -> Result<Tensor> {
            let t = arena.tensor(gpu, shape)?;
            gpu.upload(t.region, data)?;
            Ok(t)
        };
        Ok(Candidates {
            idx: put(&[o.rows(), self.cols], &self.idx)?,
            starts: put(&[starts.len()], &starts)?,
            entries: put(&[entries.len()], &entries)?,
        })
    }
}

/// [`Drawn`] on the GPU (u32 tensors): `idx [rows, cols]`, `starts [B·T + 1]`,
/// `entries [rows·cols]`.
#[derive(Clone, Copy, Debug)]
pub struct Candidates {
    pub idx: Tensor,
    pub starts: Tensor,
    pub entries: Tensor,
}

impl Candidates {
    pub fn cols(&self) -> usize {
        self.idx.shape.rows_cols().1
    }

    fn check(&self, o: &Offsets) -> Result<()> {
        check_len("candidates", &self.idx, o.rows() * self.cols())?;
        check_len("candidate lists", &self.starts, o.positions() + 1)?;
        check_len("candidate entries", &self.entries, self.idx.numel())
    }
}

/// Tiles of the register-tiled kernels along a dimension of `n` (the WGSL `TILE` is 8).
fn tiles(n: usize) -> usize {
    n.div_ceil(8)
}

fn check_len(what: &str, t: &Tensor, want: usize) -> Result<()> {
    if t.numel() != want {
        return Err(Error::shape(
            "cpc_scores",
            format!("{what} {:?} must hold {want} values", t.shape),
        ));
    }
    Ok(())
}

/// `logits [rows, B]` of every offset's predictions against all sequences at the target step.
pub fn scores(gpu: &Gpu, z: &Tensor, pred: &Tensor, logits: &Tensor, o: &Offsets) -> Result<()> {
    check_len("logits", logits, o.rows() * o.batch)?;
    let blocks = o.rows() / o.batch;
    gpu.dispatch(
        &SCORES,
        &o.params(0, false),
        &[z.region, pred.region, logits.region],
        grid_1d(blocks * tiles(o.batch) * tiles(o.batch), 64),
    )
}

/// The gradient of the predictions from the logits' (`dpred = dlogits·z` per offset and step;
/// zero where nothing is predicted).
pub fn grad_pred(
    gpu: &Gpu,
    dlogits: &Tensor,
    z: &Tensor,
    dpred: &Tensor,
    o: &Offsets,
    accumulate: bool,
) -> Result<()> {
    check_len("dlogits", dlogits, o.rows() * o.batch)?;
    check_len("dpred", dpred, o.batch * o.steps * o.k * o.dim)?;
    gpu.dispatch(
        &GRAD_PRED,
        &o.params(0, accumulate),
        &[dlogits.region, z.region, dpred.region],
        grid_1d(o.k * o.steps * tiles(o.batch) * tiles(o.dim), 64),
    )
}

/// The gradient of the encodings from the logits' (a gather over offsets and sequences).
pub fn grad_z(
    gpu: &Gpu,
    dlogits: &Tensor,
    pred: &Tensor,
    dz: &Tensor,
    o: &Offsets,
    accumulate: bool,
) -> Result<()> {
    check_len("dlogits", dlogits, o.rows() * o.batch)?;
    check_len("dz", dz, o.batch * o.steps * o.dim)?;
    gpu.dispatch(
        &GRAD_Z,
        &o.params(0, accumulate),
        &[dlogits.region, pred.region, dz.region],
        grid_1d(o.steps * tiles(o.batch) * tiles(o.dim), 64),
    )
}

/// `logits [rows, C]`: every row's prediction against the encodings its candidates name,
/// `logits[r, j] = pred_r · z[idx[r, j]]`.
pub fn gather_scores(
    gpu: &Gpu,
    z: &Tensor,
    pred: &Tensor,
    cand: &Candidates,
    logits: &Tensor,
    o: &Offsets,
) -> Result<()> {
    cand.check(o)?;
    check_len("logits", logits, cand.idx.numel())?;
    gpu.dispatch(
        &GATHER_SCORES,
        &o.params(cand.cols(), false),
        &[z.region, pred.region, cand.idx.region, logits.region],
        grid_1d(logits.numel(), 64),
    )
}

/// The gradient of the predictions from the gathered logits' (`dpred_r = Σ_j dlogits[r, j]·
/// z[idx[r, j]]`; zero where nothing is predicted).
pub fn gather_grad_pred(
    gpu: &Gpu,
    dlogits: &Tensor,
    z: &Tensor,
    cand: &Candidates,
    dpred: &Tensor,
    o: &Offsets,
    accumulate: bool,
) -> Result<()> {
    cand.check(o)?;
    check_len("dlogits", dlogits, cand.idx.numel())?;
    check_len("dpred", dpred, o.positions() * o.k * o.dim)?;
    gpu.dispatch(
        &GATHER_GRAD_PRED,
        &o.params(cand.cols(), accumulate),
        &[dlogits.region, z.region, cand.idx.region, dpred.region],
        grid_1d(dpred.numel(), 64),
    )
}

/// The gradient of the encodings from the gathered logits': each position sums, over the
/// candidates that name it (its inverse list), `dlogits[r, j]·pred_r`.
pub fn gather_grad_z(
    gpu: &Gpu,
    dlogits: &Tensor,
    pred: &Tensor,
    cand: &Candidates,
    dz: &Tensor,
    o: &Offsets,
    accumulate: bool,
) -> Result<()> {
    cand.check(o)?;
    check_len("dlogits", dlogits, cand.idx.numel())?;
    check_len("dz", dz, o.positions() * o.dim)?;
    gpu.dispatch(
        &GATHER_GRAD_Z,
        &o.params(cand.cols(), accumulate),
        &[
            dlogits.region,
            pred.region,
            cand.starts.region,
            cand.entries.region,
            dz.region,
        ],
        grid_1d(dz.numel(), 64),
    )
}

/// From the per-row losses and hits of the softmax over `logits`, `out [2 + 2K]`: the mean loss
/// and accuracy over all rows, then each offset's (`out[2k]`, `out[2k + 1]` for k = 1..=K).
pub fn offset_stats(
    gpu: &Gpu,
    loss: &Tensor,
    hits: &Tensor,
    out: &Tensor,
    o: &Offsets,
) -> Result<()> {
    check_len("row losses", loss, o.rows())?;
    check_len("row hits", hits, o.rows())?;
    check_len("statistics", out, 2 + 2 * o.k)?;
    gpu.dispatch(
        &OFFSET_STATS,
        &o.params(0, false),
        &[loss.region, hits.region, out.region],
        [1, 1, 1],
    )
}

/// CPU reference of [`scores`] in f64.
pub fn scores_reference(z: &[f32], pred: &[f32], o: &Offsets) -> Vec<f64> {
    let mut out = Vec::with_capacity(o.rows() * o.batch);
    for key @ (k, t, _) in o.row_keys() {
        let p = &pred[o.pred_at(key)..][..o.dim];
        for b2 in 0..o.batch {
            out.push(dot(p, &z[(b2 * o.steps + t + k) * o.dim..][..o.dim]));
        }
    }
    out
}

/// CPU reference of [`gather_scores`] in f64.
pub fn gather_scores_reference(z: &[f32], pred: &[f32], drawn: &Drawn, o: &Offsets) -> Vec<f64> {
    let mut out = Vec::with_capacity(drawn.idx.len());
    for (key, cands) in o.row_keys().zip(drawn.idx.chunks(drawn.cols)) {
        let p = &pred[o.pred_at(key)..][..o.dim];
        for &n in cands {
            out.push(dot(p, &z[n as usize * o.dim..][..o.dim]));
        }
    }
    out
}

/// CPU reference of [`gather_grad_pred`] and [`gather_grad_z`] in f64, as the scatter they
/// replace: (dpred, dz).
pub fn gather_grads_reference(
    dlogits: &[f32],
    z: &[f32],
    pred: &[f32],
    drawn: &Drawn,
    o: &Offsets,
) -> (Vec<f64>, Vec<f64>) {
    let d = o.dim;
    let mut dpred = vec![0.0; pred.len()];
    let mut dz = vec![0.0; z.len()];
    for (r, key) in o.row_keys().enumerate() {
        let at = o.pred_at(key);
        for j in 0..drawn.cols {
            let e = r * drawn.cols + j;
            let (g, n) = (dlogits[e] as f64, drawn.idx[e] as usize * d);
            for i in 0..d {
                dpred[at + i] += g * z[n + i] as f64;
                dz[n + i] += g * pred[at + i] as f64;
            }
        }
    }
    (dpred, dz)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// A grid of `size × size` patches every `stride` pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PatchGrid {
    pub size: usize,
    pub stride: usize,
}

impl PatchGrid {
    /// (rows, columns) of the grid over an `h × w` image.
    pub fn grid(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if self.size == 0 || self.stride == 0 || self.size > h.min(w) {
            return Err(Error::Config(format!(
                "patch size {} and stride {} do not fit a {h}×{w} image",
                self.size, self.stride
            )));
        }
        Ok((
            (h - self.size) / self.stride + 1,
            (w - self.size) / self.stride + 1,
        ))
    }
}

/// Cuts `x [N, H, W, C]` into `out [N·Gw·Gh, P, P, C]`, ordered image, column, row: every column
/// of the grid is a sequence running down the image.
pub fn patches(gpu: &Gpu, x: &Tensor, out: &Tensor, grid: &PatchGrid) -> Result<()> {
    if x.shape.rank() != 4 {
        return Err(Error::shape(
            "patches",
            format!("images {:?} must be [N, H, W, C]", x.shape),
        ));
    }
    let [n, h, w, c] = [0, 1, 2, 3].map(|i| x.shape.dim(i));
    let (gh, gw) = grid.grid(h, w)?;
    check_len("patches", out, n * gw * gh * grid.size * grid.size * c)?;
    let p = [n, h, w, c, grid.size, grid.stride, gh, gw].map(|v| v as u32);
    gpu.dispatch(
        &PATCHES,
        &p,
        &[x.region, out.region],
        grid_1d(out.numel(), 64),
    )
}

/// CPU reference of [`patches`].
pub fn patches_reference(x: &[f32], dims: [usize; 4], grid: &PatchGrid) -> Vec<f32> {
    let [n, h, w, c] = dims;
    let (gh, gw) = grid.grid(h, w).expect("valid grid");
    let mut out = vec![];
    for img in 0..n {
        for col in 0..gw {
            for row in 0..gh {
                for py in 0..grid.size {
                    for px in 0..grid.size {
                        let (y, xx) = (row * grid.stride + py, col * grid.stride + px);
                        out.extend_from_slice(&x[((img * h + y) * w + xx) * c..][..c]);
                    }
                }
            }
        }
    }
    out
}
