//! Tape-based reverse-mode autodiff.
//!
//! A [`Graph`] runs each op's forward kernel as the op is called (recorded, not yet submitted) and,
//! unless it is in inference mode, pushes the op on its tape. [`Graph::backward`] walks the tape in
//! reverse and records each op's backward kernels into the same command stream, so forward,
//! backward and the optimiser update go to the GPU as one submission.
//!
//! Gradients accumulate in place: the first contribution to an intermediate's gradient is written
//! (`accumulate = false`), later ones are added by the kernels themselves — there are no zero-fills
//! and no temporary-then-add copies. Parameter gradients live in the model's gradient arena and are
//! always accumulated into (the trainer clears that arena once per step with one command). Inputs
//! that do not require a gradient — data, MoCo's keys and queue — get no gradient buffer and their
//! backward kernels are never launched.
//!
//! Where things are: the tape itself (leaves, backward walk, gradient contributions) in `tape`;
//! each op's recording function next to its backward in the file of its group. Adding an op means
//! a variant of `Op`, its recording function and backward in its group's file, and one arm in
//! `Graph::backward_op`.

pub mod gradcheck;

mod conv;
mod dense;
mod layout;
mod loss;
mod map;
mod norm;
mod pool;
mod sequence;
mod tape;

use crate::gpu::Gpu;
use crate::kernels::batchnorm::BatchNorm;
use crate::kernels::conv::Conv2d;
use crate::kernels::cpc::{Candidates, Offsets};
use crate::kernels::elementwise::{Broadcast, Map};
use crate::kernels::matmul::Trans;
use crate::kernels::reduce::Axis;
use crate::memory::{Arena, Tensor};

/// A value on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

/// A recorded op: its inputs and whatever its backward needs that is not an input or the output.
#[derive(Clone, Debug)]
enum Op {
    /// An elementwise map of `a` and `b` (`b` broadcast as `bcast`; unary maps ignore it), see
    /// `map.rs`: add, sub, mul, scale, ReLU, bias.
    Map {
        m: Map,
        a: Var,
        b: Var,
        bcast: Broadcast,
    },
    /// `alpha · op(a) · op(b)` (`dense.rs`).
    MatMul {
        a: Var,
        b: Var,
        trans: Trans,
        alpha: f32,
    },
    /// `x·wᵀ + b`, then ReLU if `relu` (PyTorch's Linear layout: w is [out, in]; `dense.rs`).
    Linear {
        x: Var,
        w: Var,
        b: Option<Var>,
        relu: bool,
    },
    /// Sum or mean along an axis (`layout.rs`).
    Reduce {
        x: Var,
        mean: bool,
        axis: Axis,
    },
    Reshape {
        x: Var,
    },
    ConcatCols {
        a: Var,
        b: Var,
    },
    SliceCols {
        x: Var,
        col0: usize,
    },
    /// `norm.rs`.
    L2Normalize {
        x: Var,
        norms: Tensor,
    },
    BatchNorm {
        x: Var,
        gamma: Var,
        beta: Var,
        mean: Tensor,
        invstd: Tensor,
        bn: BatchNorm,
    },
    /// Per-row softmax cross-entropy; `dlogits` is the fused forward's gradient of each row's loss
    /// (`loss.rs`).
    SoftmaxXent {
        logits: Var,
        dlogits: Tensor,
    },
    /// A Deep InfoMax estimator; `dscores` is the fused forward's gradient of the total.
    MiEstimate {
        scores: Var,
        dscores: Tensor,
    },
    /// CPC's per-offset scores of predictions against encodings: the same step's, or the
    /// drawn `candidates`' (`loss.rs`).
    CpcScores {
        z: Var,
        pred: Var,
        offsets: Offsets,
        candidates: Option<Candidates>,
    },
    /// `conv.rs`.
    Conv2d {
        x: Var,
        w: Var,
        b: Option<Var>,
        geom: Conv2d,
        relu: bool,
    },
    /// `pool.rs`.
    AvgPoolGlobal {
        x: Var,
    },
    MaxPool2x2 {
        x: Var,
        argmax: Tensor,
    },
    /// A GRU over the input projections `gx`; the forward saves the previous states and gates
    /// (`sequence.rs`).
    Gru {
        gx: Var,
        w: Var,
        b: Var,
        hprev: Tensor,
        gates: Tensor,
    },
}

struct Node {
    value: Tensor,
    /// The op's name, for the labels of its kernels.
    name: &'static str,
    op: Option<Op>,
    needs_grad: bool,
    grad: Option<Tensor>,
    /// Parameter gradients are owned by the model and always accumulated into.
    fixed_grad: bool,
    grad_written: bool,
}

/// The tape. Holds the step arena in which op outputs and gradients are allocated.
pub struct Graph<'a> {
    pub gpu: &'a Gpu,
    pub arena: &'a mut Arena,
    nodes: Vec<Node>,
    recording: bool,
}
