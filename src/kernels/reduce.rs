//! Reductions (`shaders/reduce.wgsl`): sum, mean and max of a matrix along its rows or its columns,
//! in one dispatch. Bias gradients (sum over the batch), loss means and norms all come through here.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};
use crate::kernel;
use crate::memory::Tensor;

use super::grid_1d;

const ROWS_THREAD: Kernel = kernel!("reduce.wgsl", "rows_thread", 2);
const ROWS_GROUP: Kernel = kernel!("reduce.wgsl", "rows_group", 2);
const COLS_TILE: Kernel = kernel!("reduce.wgsl", "cols_tile", 2);

/// Invocations per workgroup of `cols_tile`.
const TILE_WG: usize = 256;
/// Lanes per result of the tree variants; shorter reductions are not worth a tree.
const TREE_LANES: usize = 64;
/// f32 lanes of llvmpipe's 256-bit SIMD.
const CPU_SIMD_LANES: usize = 8;
/// Widest column tile of the tree variant: 8 floats, one 32-byte memory sector.
const TILE_COLS: usize = 8;

/// Whether a kernel computing `outputs` results, each combining `len` inputs, should give every
/// result one invocation (and no barriers) rather than a group of lanes merged by a tree. Shared
/// by the row-wise kernels of this module, [`super::softmax_xent`] and [`super::l2norm`].
///
/// On GPUs barriers are cheap and a group per result wins once `len` can occupy it. On CPU
/// adapters (llvmpipe) a workgroup is a task whose invocations run as SIMD slices, and a shader with
/// barriers runs each slice as a coroutine, so a workgroup per result costs more than it saves
/// there, even for long rows and even when the barrier is never reached. So there an invocation
/// per result is used as soon as the results fill one SIMD slice; below that a lone long row
/// would run on one lane.
pub(crate) fn invocation_per_output(gpu: &Gpu, outputs: usize, len: usize) -> bool {
    len < TREE_LANES || (gpu.kind() == crate::gpu::AdapterKind::Cpu && outputs >= CPU_SIMD_LANES)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    /// Maximum; an empty reduction gives -inf.
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Reduce each row: one result per row.
    Rows,
    /// Reduce over the rows: one result per column.
    Cols,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    op: u32,
    accumulate: u32,
    tx: u32,
    _pad: [u32; 3],
}

/// Reduces `x`, read as `[rows, cols]` (its last dimension is the columns), along `axis` into `out`:
/// [`Axis::Rows`] gives `rows` results, [`Axis::Cols`] gives `cols`. With `accumulate` the result
/// is added to `out` (for every op, max included), otherwise it replaces it.
///
/// One dispatch whatever the shape. Row reductions give each row an invocation or a workgroup
/// (see `invocation_per_output`). Column reductions give each workgroup a tile of up to 8
/// adjacent columns (one 32-byte sector per row, so loads stay contiguous) and 256 / tile row
/// lanes merged by a tree: a single tall column is read by 256 invocations, and narrow tiles
/// make as many workgroups as the columns allow. Where an invocation per output is preferred the
/// tile is 256 columns with no tree. Splitting the rows of a tall input over several workgroups
/// would need scratch memory for a second pass, which this launcher does not have: a
/// 50176×64 input runs on 8 workgroups.
pub fn reduce(
    gpu: &Gpu,
    x: &Tensor,
    out: &Tensor,
    op: Reduce,
    axis: Axis,
    accumulate: bool,
) -> Result<()> {
    let (rows, cols) = x.shape.rows_cols();
    let want = match axis {
        Axis::Rows => rows,
        Axis::Cols => cols,
    };
    if out.numel() != want {
        return Err(Error::shape(
            "reduce",
            format!(
                "reducing {:?} over {axis:?} gives {want} values but the output is {:?}",
                x.shape, out.shape
            ),
        ));
    }
    let mut params = Params {
        rows: rows as u32,
        cols: cols as u32,
        op: match op {
            Reduce::Sum => 0,
            Reduce::Mean => 1,
            Reduce::Max => 2,
        },
        accumulate: accumulate as u32,
        tx: 1,
        _pad: [0; 3],
    };
    let regions = [x.region, out.region];
    match axis {
        Axis::Rows if invocation_per_output(gpu, rows, cols) => {
            gpu.dispatch(&ROWS_THREAD, &params, &regions, grid_1d(rows, 64))
        }
        Axis::Rows => gpu.dispatch(&ROWS_GROUP, &params, &regions, grid_1d(rows, 1)),
        Axis::Cols => {
            let tx = if invocation_per_output(gpu, cols, rows) {
                TILE_WG
            } else {
                cols.next_power_of_two().min(TILE_COLS)
            };
            params.tx = tx as u32;
            gpu.dispatch(&COLS_TILE, &params, &regions, grid_1d(cols, tx as u32))
        }
    }
}

/// CPU reference of [`reduce`] without accumulation, in f64.
pub fn reference(x: &[f32], rows: usize, cols: usize, op: Reduce, axis: Axis) -> Vec<f64> {
    let (outer, inner) = match axis {
        Axis::Rows => (rows, cols),
        Axis::Cols => (cols, rows),
    };
    (0..outer)
        .map(|o| {
            let vals = (0..inner).map(|k| {
                x[match axis {
                    Axis::Rows => o * cols + k,
                    Axis::Cols => k * cols + o,
                }] as f64
            });
            match op {
                Reduce::Sum => vals.sum(),
                Reduce::Mean => vals.sum::<f64>() / inner as f64,
                Reduce::Max => vals.fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}
