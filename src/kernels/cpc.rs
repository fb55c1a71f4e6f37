//! Contrastive Predictive Coding scores (`shaders/cpc.wgsl`): every offset's prediction against
//! every sequence's encoding at the predicted step, as one `[rows, B]` logits matrix whose row
//! softmax is over candidates (sequences), never over offsets; and the image patch grid.
//!
//! Layout: encodings `z [B, T, D]`, predictions `pred [B, T, K·D]` (offset k's `W_k·c_t` in the
//! k-th block of D), logits row `r = off(k) + t·B + b` for `t < T − k`, positive column `b`.
//! [`Offsets::ranges`] gives each offset's rows, so its loss and accuracy are a slice.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;

const SCORES: Kernel = kernel!("cpc.wgsl", "scores", 3);
const GRAD_PRED: Kernel = kernel!("cpc.wgsl", "grad_pred", 3);
const GRAD_Z: Kernel = kernel!("cpc.wgsl", "grad_z", 3);
const PATCHES: Kernel = kernel!("cpc.wgsl", "patches", 2);
const OFFSET_STATS: Kernel = kernel!("cpc.wgsl", "offset_stats", 3);

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

    /// The positive column of every row.
    pub fn targets(&self) -> Vec<u32> {
        (0..self.rows()).map(|r| (r % self.batch) as u32).collect()
    }

    fn params(&self, accumulate: bool) -> [u32; 8] {
        [
            self.batch as u32,
            self.steps as u32,
            self.dim as u32,
            self.k as u32,
            self.rows() as u32,
            accumulate as u32,
            0,
            0,
        ]
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
        &o.params(false),
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
        &o.params(accumulate),
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
        &o.params(accumulate),
        &[dlogits.region, pred.region, dz.region],
        grid_1d(o.steps * tiles(o.batch) * tiles(o.dim), 64),
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
        &o.params(false),
        &[loss.region, hits.region, out.region],
        [1, 1, 1],
    )
}

/// CPU reference of [`scores`] in f64.
pub fn scores_reference(z: &[f32], pred: &[f32], o: &Offsets) -> Vec<f64> {
    let (bs, ts, d, kk) = (o.batch, o.steps, o.dim, o.k);
    let mut out = vec![];
    for k in 1..=kk {
        for t in 0..ts - k {
            for b in 0..bs {
                for b2 in 0..bs {
                    let p = &pred[((b * ts + t) * kk + k - 1) * d..][..d];
                    let q = &z[(b2 * ts + t + k) * d..][..d];
                    out.push(p.iter().zip(q).map(|(&x, &y)| x as f64 * y as f64).sum());
                }
            }
        }
    }
    out
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
