//! Batch normalisation (`shaders/batchnorm.wgsl`) over the columns of `[rows, cols]`: NHWC
//! activations `[N, H, W, C]` read as `[N·H·W, C]` (BatchNorm2d) and `[N, C]` (BatchNorm1d) are the
//! same computation.
//!
//! **Split BN.** [`BatchNorm::groups`] = G cuts the rows into G equal contiguous blocks (the batch
//! split into G groups of whole images) with separate statistics each; this is MoCo's one-device
//! stand-in for shuffle-BN. G = 1 is ordinary BN. The running statistics move toward the average of
//! the group statistics.
//!
//! **Scratch.** Column sums over many rows are computed in parallel chunks of rows and merged by a
//! finishing pass; the partial sums live in a caller-provided `scratch` tensor of at least
//! [`scratch_len`]`(rows, cols, groups)` floats (contents need not be initialised and are left
//! undefined). Each launcher writes its scratch before reading it and keeps nothing there for a
//! later call, so one scratch tensor sized for the largest layer can serve every BN call of a step.
//!
//! Dispatches: train forward 3, eval forward 1, backward 3. When the channel count is a multiple
//! of 4 every kernel runs in its vec4 build (four channels per thread).

use crate::error::{Error, Result};
use crate::gpu::{AdapterKind, Gpu, Kernel, Region};
use crate::memory::Tensor;

use super::grid_1d;

/// One entry point of a WGSL file written over a lane type `V`, built twice: with
/// `alias V = f32;` and with `alias V = vec4<f32>;` prepended, so that a thread handles one or four
/// consecutive floats per access. llvmpipe moves storage one component at a time per lane, so the
/// vec4 builds of these memory-bound kernels cost it a fraction per float; on GPUs 16-byte accesses
/// are the efficient kind too. (Used by the optimiser kernels as well.)
pub(crate) struct Lanes {
    pub(crate) scalar: Kernel,
    pub(crate) quad: Kernel,
}

impl Lanes {
    /// The vec4 build when `quad`, else the scalar one.
    pub(crate) fn pick(&self, quad: bool) -> &Kernel {
        if quad {
            &self.quad
        } else {
            &self.scalar
        }
    }
}

/// `lanes!("file.wgsl", "entry", n_buffers)`: the two builds of one entry point, see [`Lanes`].
macro_rules! lanes {
    ($file:literal, $entry:literal, $buffers:literal) => {
        $crate::kernels::batchnorm::Lanes {
            scalar: lanes!(@ "f32", $file, $entry, $buffers),
            quad: lanes!(@ "vec4<f32>", $file, $entry, $buffers),
        }
    };
    (@ $lane:literal, $file:literal, $entry:literal, $buffers:literal) => {
        $crate::gpu::Kernel {
            // Distinct names: the runtime caches shader modules by file name.
            file: concat!($file, ":", $lane),
            source: concat!(
                "alias V = ",
                $lane,
                ";\n",
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file))
            ),
            entry: $entry,
            buffers: $buffers,
            words: 0,
        }
    };
}
pub(crate) use lanes;

const STATS_PARTIAL: Lanes = lanes!("batchnorm.wgsl", "stats_partial", 2);
const STATS_FINISH: Lanes = lanes!("batchnorm.wgsl", "stats_finish", 5);
const NORMALIZE: Lanes = lanes!("batchnorm.wgsl", "normalize", 6);
const GRAD_PARTIAL: Lanes = lanes!("batchnorm.wgsl", "grad_partial", 7);
const GRAD_FINISH: Lanes = lanes!("batchnorm.wgsl", "grad_finish", 3);
const GRAD_INPUT: Lanes = lanes!("batchnorm.wgsl", "grad_input", 8);

const WG: u32 = 64;

/// Batch-norm settings (the learnable gamma/beta and the running statistics are tensors).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    /// Added to the variance before the inverse square root.
    pub eps: f32,
    /// PyTorch convention: `running = (1 - momentum)·running + momentum·batch`.
    pub momentum: f32,
    /// Number of row groups with separate statistics (split BN); 1 is ordinary BN.
    pub groups: usize,
    /// A ReLU fused after the normalisation (`y = max(bn(x), 0)`; the backward masks dy), which
    /// saves an elementwise pass each way.
    pub relu: bool,
}

impl Default for BatchNorm {
    fn default() -> Self {
        BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
            groups: 1,
            relu: false,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    cols: u32,
    groups: u32,
    group_rows: u32,
    chunk: u32,
    chunks: u32,
    eps: f32,
    momentum: f32,
    flag: u32,
    parts: u32,
    relu: u32,
    split: u32,
    _pad: u32,
}

/// Rows reduced by one partial-sum thread, and the resulting chunks per group, on a GPU (`cpu`
/// false) or a CPU adapter. GPUs get many short chunks, which keep them busy where few long ones
/// would leave most of the chip idle; the finishing pass then has more to merge, which its split
/// threads share. On llvmpipe, whose few cores are busy with any chunking, fewer long chunks save
/// the finishing work.
fn chunking(group_rows: usize, cpu: bool) -> (usize, usize) {
    let (max_chunks, min_rows) = if cpu { (256, 64) } else { (2048, 32) };
    let chunk = group_rows
        .div_ceil(max_chunks)
        .max(min_rows)
        .min(group_rows.max(1));
    (chunk, group_rows.div_ceil(chunk))
}

/// Threads of a finishing workgroup that share a column's chunks. On GPUs a single thread looping
/// over up to 2048 chunks is latency-bound; on CPU adapters, which run a workgroup as one thread,
/// the tree's barriers cost more than the loop.
fn finish_split(gpu: &Gpu) -> usize {
    if gpu.kind() == AdapterKind::Cpu {
        1
    } else {
        WG as usize
    }
}

/// Rows one thread of an elementwise pass walks: enough to amortise locating its column and group,
/// few enough to leave many threads.
const MAP_CHUNK: usize = 16;

/// Floats of scratch the train forward and the backward need for a `[rows, cols]` input.
pub fn scratch_len(rows: usize, cols: usize, groups: usize) -> usize {
    let groups = groups.max(1);
    // The GPU chunking has the most chunks.
    let (_, chunks) = chunking(rows / groups, false);
    2 * groups * chunks * cols + 2 * groups * cols
}

/// Validated geometry of one call.
struct Geometry {
    rows: usize,
    cols: usize,
    groups: usize,
    /// Channels per thread: 4 (vec4 build) when they divide the channel count, else 1.
    lanes: usize,
    /// Chunked for the reductions; counts in units of `lanes` channels.
    params: Params,
}

impl Geometry {
    fn kernel<'a>(&self, k: &'a Lanes) -> &'a Kernel {
        k.pick(self.lanes == 4)
    }

    fn reduce_grid(&self) -> [u32; 3] {
        grid_1d(self.params.parts as usize, WG)
    }

    /// `split` threads per column.
    fn finish_grid(&self) -> [u32; 3] {
        grid_1d((self.params.cols * self.params.split) as usize, WG)
    }

    /// Parameters and grid of an elementwise pass.
    fn map_pass(&self, flag: bool) -> (Params, [u32; 3]) {
        let group_rows = self.rows / self.groups;
        let chunk = MAP_CHUNK.min(group_rows);
        let chunks = group_rows.div_ceil(chunk);
        let params = Params {
            chunk: chunk as u32,
            chunks: chunks as u32,
            flag: flag as u32,
            ..self.params
        };
        let threads = self.groups * chunks * self.params.cols as usize;
        (params, grid_1d(threads, WG))
    }

    /// Exactly the scratch this call uses (a whole number of vec4s in the vec4 build).
    fn scratch(&self, op: &'static str, scratch: &Tensor) -> Result<Region> {
        let want = scratch_len(self.rows, self.cols, self.groups);
        if scratch.numel() < want {
            return Err(Error::shape(
                op,
                format!(
                    "scratch {:?} is smaller than the {want} floats a [{}, {}] input with {} \
                     groups needs",
                    scratch.shape, self.rows, self.cols, self.groups
                ),
            ));
        }
        Ok(scratch.region.slice(0, want))
    }
}

impl BatchNorm {
    fn geometry(&self, gpu: &Gpu, op: &'static str, x: &Tensor) -> Result<Geometry> {
        let (rows, cols) = x.shape.rows_cols();
        if rows == 0 || cols == 0 {
            return Err(Error::shape(op, format!("empty input {:?}", x.shape)));
        }
        let groups = self.groups;
        if groups == 0 || rows % groups != 0 {
            return Err(Error::Config(format!(
                "{op}: {groups} BN groups do not divide the {rows} rows of input {:?} into equal \
                 blocks (the batch size must be a multiple of the number of split-BN groups)",
                x.shape
            )));
        }
        let group_rows = rows / groups;
        let (chunk, chunks) = chunking(group_rows, gpu.kind() == AdapterKind::Cpu);
        let lanes = if cols.is_multiple_of(4) { 4 } else { 1 };
        let vcols = cols / lanes;
        Ok(Geometry {
            rows,
            cols,
            groups,
            lanes,
            params: Params {
                cols: vcols as u32,
                groups: groups as u32,
                group_rows: group_rows as u32,
                chunk: chunk as u32,
                chunks: chunks as u32,
                eps: self.eps,
                momentum: self.momentum,
                flag: 0,
                parts: (groups * chunks * vcols) as u32,
                relu: self.relu as u32,
                split: finish_split(gpu) as u32,
                _pad: 0,
            },
        })
    }
}

/// Checks that each named tensor has `want` elements.
fn check_len(op: &'static str, x: &Tensor, want: usize, named: &[(&str, &Tensor)]) -> Result<()> {
    for (name, t) in named {
        if t.numel() != want {
            return Err(Error::shape(
                op,
                format!(
                    "{name} {:?} should have {want} elements for input {:?}",
                    t.shape, x.shape
                ),
            ));
        }
    }
    Ok(())
}

/// Train mode. Per (group, channel) mean and biased variance over the group's rows;
/// `y = gamma·(x - mean)·invstd + beta` (then `max(y, 0)` with `bn.relu`). Saves `mean` and `invstd = 1/sqrt(var + eps)` as
/// `[groups, cols]` for [`backward`] and updates `running_mean`/`running_var` `[cols]` with the
/// average over groups of the group mean and the group's UNBIASED variance (PyTorch's convention;
/// a one-row group contributes its biased variance, 0, instead of dividing by zero). `y` may be `x`.
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    y: &Tensor,
    save_mean: &Tensor,
    save_invstd: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    scratch: &Tensor,
    bn: &BatchNorm,
) -> Result<()> {
    const OP: &str = "batchnorm forward";
    let g = bn.geometry(gpu, OP, x)?;
    let c = g.cols;
    check_len(
        OP,
        x,
        c,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
        ],
    )?;
    check_len(
        OP,
        x,
        g.groups * c,
        &[("save_mean", save_mean), ("save_invstd", save_invstd)],
    )?;
    check_len(OP, x, x.numel(), &[("y", y)])?;
    let scratch = g.scratch(OP, scratch)?;
    gpu.dispatch(
        g.kernel(&STATS_PARTIAL),
        &g.params,
        &[x.region, scratch],
        g.reduce_grid(),
    )?;
    gpu.dispatch(
        g.kernel(&STATS_FINISH),
        &g.params,
        &[
            scratch,
            save_mean.region,
            save_invstd.region,
            running_mean.region,
            running_var.region,
        ],
        g.finish_grid(),
    )?;
    let (params, grid) = g.map_pass(false);
    gpu.dispatch(
        g.kernel(&NORMALIZE),
        &params,
        &[
            x.region,
            gamma.region,
            beta.region,
            save_mean.region,
            save_invstd.region,
            y.region,
        ],
        grid,
    )
}

/// Eval mode: `y = gamma·(x - running_mean)/sqrt(running_var + eps) + beta` (then `max(y, 0)`
/// with `bn.relu`; groups play no part). `y` may be `x`.
#[allow(clippy::too_many_arguments)]
pub fn forward_eval(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    y: &Tensor,
    bn: &BatchNorm,
) -> Result<()> {
    const OP: &str = "batchnorm eval";
    let one = BatchNorm { groups: 1, ..*bn };
    let g = one.geometry(gpu, OP, x)?;
    check_len(
        OP,
        x,
        g.cols,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
        ],
    )?;
    check_len(OP, x, x.numel(), &[("y", y)])?;
    let (params, grid) = g.map_pass(true);
    gpu.dispatch(
        g.kernel(&NORMALIZE),
        &params,
        &[
            x.region,
            gamma.region,
            beta.region,
            running_mean.region,
            running_var.region,
            y.region,
        ],
        grid,
    )
}

/// Backward of [`forward_train`] (batch statistics, `save_mean`/`save_invstd` from it):
/// `dx (+)= gamma·invstd·(dy - mean_g(dy) - x̂·mean_g(dy·x̂))` with means over the row's group,
/// `dgamma += Σ dy·x̂`, `dbeta += Σ dy` per channel over all rows (always accumulated: they are
/// parameter gradients). `dx` honours `accumulate`. With `bn.relu`, dy is first zeroed where the
/// forward's ReLU clipped (recomputed from x, gamma and beta).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    x: &Tensor,
    dy: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    save_mean: &Tensor,
    save_invstd: &Tensor,
    dx: &Tensor,
    dgamma: &Tensor,
    dbeta: &Tensor,
    scratch: &Tensor,
    bn: &BatchNorm,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "batchnorm backward";
    let g = bn.geometry(gpu, OP, x)?;
    let c = g.cols;
    check_len(
        OP,
        x,
        c,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("dgamma", dgamma),
            ("dbeta", dbeta),
        ],
    )?;
    check_len(
        OP,
        x,
        g.groups * c,
        &[("save_mean", save_mean), ("save_invstd", save_invstd)],
    )?;
    check_len(OP, x, x.numel(), &[("dy", dy), ("dx", dx)])?;
    let scratch = g.scratch(OP, scratch)?;
    gpu.dispatch(
        g.kernel(&GRAD_PARTIAL),
        &g.params,
        &[
            x.region,
            dy.region,
            save_mean.region,
            save_invstd.region,
            scratch,
            gamma.region,
            beta.region,
        ],
        g.reduce_grid(),
    )?;
    gpu.dispatch(
        g.kernel(&GRAD_FINISH),
        &g.params,
        &[scratch, dgamma.region, dbeta.region],
        g.finish_grid(),
    )?;
    let (params, grid) = g.map_pass(accumulate);
    gpu.dispatch(
        g.kernel(&GRAD_INPUT),
        &params,
        &[
            x.region,
            dy.region,
            gamma.region,
            save_mean.region,
            save_invstd.region,
            scratch,
            dx.region,
            beta.region,
        ],
        grid,
    )
}

/// What [`reference_forward_train`] computes.
#[derive(Clone, Debug)]
pub struct TrainReference {
    pub y: Vec<f64>,
    /// `[groups, cols]`.
    pub mean: Vec<f64>,
    /// `[groups, cols]`.
    pub invstd: Vec<f64>,
    pub running_mean: Vec<f64>,
    pub running_var: Vec<f64>,
}

/// Per (group, column) mean and biased variance of `x` `[rows, cols]`, two-pass, in f64.
fn group_stats(x: &[f32], cols: usize, groups: usize) -> (Vec<f64>, Vec<f64>) {
    let group_rows = x.len() / cols / groups;
    let mut mean = vec![0.0; groups * cols];
    let mut var = vec![0.0; groups * cols];
    for g in 0..groups {
        let rows = &x[g * group_rows * cols..(g + 1) * group_rows * cols];
        for c in 0..cols {
            let col = || rows.iter().skip(c).step_by(cols).map(|&v| v as f64);
            let m = col().sum::<f64>() / group_rows as f64;
            mean[g * cols + c] = m;
            var[g * cols + c] = col().map(|v| (v - m) * (v - m)).sum::<f64>() / group_rows as f64;
        }
    }
    (mean, var)
}

/// The fused ReLU of the references.
fn relu(bn: &BatchNorm, v: f64) -> f64 {
    if bn.relu {
        v.max(0.0)
    } else {
        v
    }
}

/// CPU reference of [`forward_train`] for `x` `[rows, cols]` (rows divisible by `bn.groups`).
pub fn reference_forward_train(
    x: &[f32],
    cols: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    bn: &BatchNorm,
) -> TrainReference {
    let groups = bn.groups;
    let group_rows = x.len() / cols / groups;
    let (mean, var) = group_stats(x, cols, groups);
    let eps = bn.eps as f64;
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let y = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i % cols;
            let s = i / cols / group_rows * cols + c;
            relu(
                bn,
                gamma[c] as f64 * (v as f64 - mean[s]) * invstd[s] + beta[c] as f64,
            )
        })
        .collect();
    let m = bn.momentum as f64;
    let unbias = group_rows as f64 / (group_rows as f64 - 1.0).max(1.0);
    let avg =
        |v: &[f64], c: usize| (0..groups).map(|g| v[g * cols + c]).sum::<f64>() / groups as f64;
    let running_mean = (0..cols)
        .map(|c| (1.0 - m) * running_mean[c] as f64 + m * avg(&mean, c))
        .collect();
    let running_var = (0..cols)
        .map(|c| (1.0 - m) * running_var[c] as f64 + m * avg(&var, c) * unbias)
        .collect();
    TrainReference {
        y,
        mean,
        invstd,
        running_mean,
        running_var,
    }
}

/// CPU reference of [`forward_eval`].
pub fn reference_forward_eval(
    x: &[f32],
    cols: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    bn: &BatchNorm,
) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i % cols;
            let inv = 1.0 / (running_var[c] as f64 + bn.eps as f64).sqrt();
            relu(
                bn,
                gamma[c] as f64 * (v as f64 - running_mean[c] as f64) * inv + beta[c] as f64,
            )
        })
        .collect()
}

/// What [`reference_backward`] computes.
#[derive(Clone, Debug)]
pub struct BackwardReference {
    pub dx: Vec<f64>,
    pub dgamma: Vec<f64>,
    pub dbeta: Vec<f64>,
}

/// CPU reference of [`backward`], recomputing the batch statistics from `x` in f64. `dx`,
/// `dgamma` and `dbeta` hold the previous gradients (`dx` is only read when `accumulate`).
#[allow(clippy::too_many_arguments)]
pub fn reference_backward(
    x: &[f32],
    dy: &[f32],
    cols: usize,
    gamma: &[f32],
    beta: &[f32],
    dx: &[f32],
    dgamma: &[f32],
    dbeta: &[f32],
    bn: &BatchNorm,
    accumulate: bool,
) -> BackwardReference {
    let groups = bn.groups;
    let group_rows = x.len() / cols / groups;
    let (mean, var) = group_stats(x, cols, groups);
    let invstd: Vec<f64> = var
        .iter()
        .map(|v| 1.0 / (v + bn.eps as f64).sqrt())
        .collect();
    let xhat = |i: usize| {
        let s = i / cols / group_rows * cols + i % cols;
        (x[i] as f64 - mean[s]) * invstd[s]
    };
    // dy through the fused ReLU's mask.
    let dy: Vec<f64> = dy
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let c = i % cols;
            let open = !bn.relu || gamma[c] as f64 * xhat(i) + beta[c] as f64 > 0.0;
            if open {
                d as f64
            } else {
                0.0
            }
        })
        .collect();
    let mut sdy = vec![0.0; groups * cols];
    let mut sdyx = vec![0.0; groups * cols];
    for (i, &d) in dy.iter().enumerate() {
        let s = i / cols / group_rows * cols + i % cols;
        sdy[s] += d;
        sdyx[s] += d * xhat(i);
    }
    let n = group_rows as f64;
    let dxs = (0..x.len())
        .map(|i| {
            let c = i % cols;
            let s = i / cols / group_rows * cols + c;
            let v = gamma[c] as f64 * invstd[s] * (dy[i] - (sdy[s] + xhat(i) * sdyx[s]) / n);
            if accumulate {
                dx[i] as f64 + v
            } else {
                v
            }
        })
        .collect();
    let total = |v: &[f64], prev: &[f32]| -> Vec<f64> {
        (0..cols)
            .map(|c| prev[c] as f64 + (0..groups).map(|g| v[g * cols + c]).sum::<f64>())
            .collect()
    };
    BackwardReference {
        dx: dxs,
        dgamma: total(&sdyx, dgamma),
        dbeta: total(&sdy, dbeta),
    }
}
