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

pub mod gradcheck;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Scope};
use crate::kernels::batchnorm::{self, BatchNorm};
use crate::kernels::conv::{self, Conv2d};
use crate::kernels::cpc::{self, Offsets};
use crate::kernels::elementwise::{self, Broadcast, Direction, Map};
use crate::kernels::gru;
use crate::kernels::l2norm;
use crate::kernels::matmul::{self, Matmul, Trans};
use crate::kernels::mi::{self, Estimator};
use crate::kernels::pool;
use crate::kernels::reduce::{self, Axis, Reduce};
use crate::kernels::softmax_xent::{self, Xent};
use crate::memory::{Arena, Shape, Tensor};

/// A value on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

/// A recorded op: its inputs and whatever its backward needs that is not an input or the output.
#[derive(Clone, Debug)]
enum Op {
    MatMul {
        a: Var,
        b: Var,
        trans: Trans,
        alpha: f32,
    },
    /// `x·wᵀ + b`, then ReLU if `relu` (PyTorch's Linear layout: w is [out, in]).
    Linear {
        x: Var,
        w: Var,
        b: Option<Var>,
        relu: bool,
    },
    Add {
        a: Var,
        b: Var,
    },
    Sub {
        a: Var,
        b: Var,
    },
    Mul {
        a: Var,
        b: Var,
    },
    AddBias {
        x: Var,
        b: Var,
    },
    Scale {
        x: Var,
        s: f32,
    },
    Relu {
        x: Var,
    },
    /// Sum or mean along an axis.
    Reduce {
        x: Var,
        mean: bool,
        axis: Axis,
    },
    L2Normalize {
        x: Var,
        norms: Tensor,
    },
    /// Per-row softmax cross-entropy; `dlogits` is the fused forward's gradient of each row's loss.
    SoftmaxXent {
        logits: Var,
        dlogits: Tensor,
    },
    ConcatCols {
        a: Var,
        b: Var,
    },
    SliceCols {
        x: Var,
        col0: usize,
    },
    /// A Deep InfoMax estimator; `dscores` is the fused forward's gradient of the total.
    MiEstimate {
        scores: Var,
        dscores: Tensor,
    },
    Reshape {
        x: Var,
    },
    Conv2d {
        x: Var,
        w: Var,
        b: Option<Var>,
        geom: Conv2d,
        relu: bool,
    },
    BatchNorm {
        x: Var,
        gamma: Var,
        beta: Var,
        mean: Tensor,
        invstd: Tensor,
        bn: BatchNorm,
    },
    AvgPoolGlobal {
        x: Var,
    },
    MaxPool2x2 {
        x: Var,
        argmax: Tensor,
    },
    /// A GRU over the input projections `gx`; the forward saves the previous states and gates.
    Gru {
        gx: Var,
        w: Var,
        b: Var,
        hprev: Tensor,
        gates: Tensor,
    },
    /// CPC's per-offset scores of predictions against encodings.
    CpcScores {
        z: Var,
        pred: Var,
        offsets: Offsets,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::MatMul { .. } => "matmul",
            Op::Linear { .. } => "linear",
            Op::Add { .. } => "add",
            Op::Sub { .. } => "sub",
            Op::Mul { .. } => "mul",
            Op::AddBias { .. } => "add_bias",
            Op::Scale { .. } => "scale",
            Op::Relu { .. } => "relu",
            Op::Reduce { .. } => "reduce",
            Op::L2Normalize { .. } => "l2_normalize",
            Op::SoftmaxXent { .. } => "softmax_xent",
            Op::ConcatCols { .. } => "concat_cols",
            Op::SliceCols { .. } => "slice_cols",
            Op::MiEstimate { .. } => "mi_estimate",
            Op::Reshape { .. } => "reshape",
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm { .. } => "batch_norm",
            Op::AvgPoolGlobal { .. } => "avg_pool_global",
            Op::MaxPool2x2 { .. } => "max_pool_2x2",
            Op::Gru { .. } => "gru",
            Op::CpcScores { .. } => "cpc_scores",
        }
    }
}

struct Node {
    value: Tensor,
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

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape != b.shape {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.shape, b.shape)));
    }
    Ok(())
}

impl<'a> Graph<'a> {
    /// A graph that records ops for a backward pass.
    pub fn new(gpu: &'a Gpu, arena: &'a mut Arena) -> Self {
        Graph {
            gpu,
            arena,
            nodes: vec![],
            recording: true,
        }
    }

    /// A graph that only runs forward kernels: nothing is recorded, nothing needs a gradient.
    pub fn inference(gpu: &'a Gpu, arena: &'a mut Arena) -> Self {
        Graph {
            recording: false,
            ..Graph::new(gpu, arena)
        }
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    fn push(&mut self, value: Tensor, op: Option<Op>, needs_grad: bool) -> Var {
        let needs_grad = needs_grad && self.recording;
        self.nodes.push(Node {
            value,
            op: op.filter(|_| needs_grad),
            needs_grad,
            grad: None,
            fixed_grad: false,
            grad_written: false,
        });
        Var(self.nodes.len() - 1)
    }

    /// A value that gets no gradient (data, targets, detached keys, a queue).
    pub fn input(&mut self, t: Tensor) -> Var {
        self.push(t, None, false)
    }

    /// A leaf that gets a gradient in the step arena (for gradient checks of inputs).
    pub fn leaf(&mut self, t: Tensor) -> Var {
        self.push(t, None, true)
    }

    /// A parameter whose gradient is accumulated into `grad` (a view of the model's gradient arena).
    pub fn param(&mut self, value: Tensor, grad: Tensor) -> Var {
        let v = self.push(value, None, true);
        let node = &mut self.nodes[v.0];
        if node.needs_grad {
            node.grad = Some(grad);
            node.fixed_grad = true;
        }
        v
    }

    /// Uploads host data as an input (flushes recorded work first: use before recording a step).
    pub fn constant(&mut self, shape: impl Into<Shape>, data: &[f32]) -> Result<Var> {
        let t = self.arena.upload(self.gpu, shape, data)?;
        Ok(self.input(t))
    }

    /// Uploads u32 host data (class indices, positives) as an input.
    pub fn constant_u32(&mut self, shape: impl Into<Shape>, data: &[u32]) -> Result<Var> {
        let t = self.arena.tensor(self.gpu, shape)?;
        self.gpu.upload(t.region, data)?;
        Ok(self.input(t))
    }

    pub fn value(&self, v: Var) -> Tensor {
        self.nodes[v.0].value
    }

    pub fn shape(&self, v: Var) -> Shape {
        self.nodes[v.0].value.shape
    }

    /// The gradient of `v` after [`Graph::backward`], if one reached it.
    pub fn grad(&self, v: Var) -> Option<Tensor> {
        let n = &self.nodes[v.0];
        n.grad.filter(|_| n.grad_written || n.fixed_grad)
    }

    /// Reads a value back to the host (flushes all recorded work).
    pub fn read(&self, v: Var) -> Result<Vec<f32>> {
        self.gpu.read(self.value(v).region)
    }

    /// Labels the kernels of the op about to be pushed, for the diagnostics of
    /// [`Gpu::begin_finite_checks`].
    fn scope(&self, op: &'static str) -> Scope<'a> {
        let node = self.nodes.len();
        self.gpu
            .scope(move || format!("{op} forward (tape node {node})"))
    }

    fn alloc(&mut self, shape: impl Into<Shape>) -> Result<Tensor> {
        self.arena.tensor(self.gpu, shape)
    }

    fn needs(&self, vars: &[Var]) -> bool {
        vars.iter().any(|v| self.nodes[v.0].needs_grad)
    }

    fn unary_map(&mut self, x: Var, m: Map, op: Op) -> Result<Var> {
        let _scope = self.scope(op.name());
        let xv = self.value(x);
        let out = self.alloc(xv.shape)?;
        elementwise::map(self.gpu, m, &xv, &xv, Broadcast::Full, &out, false)?;
        let g = self.needs(&[x]);
        Ok(self.push(out, Some(op), g))
    }

    fn binary_map(&mut self, a: Var, b: Var, m: Map, op: Op) -> Result<Var> {
        let _scope = self.scope(op.name());
        let (av, bv) = (self.value(a), self.value(b));
        same_shape(op.name(), &av, &bv)?;
        let out = self.alloc(av.shape)?;
        elementwise::map(self.gpu, m, &av, &bv, Broadcast::Full, &out, false)?;
        let g = self.needs(&[a, b]);
        Ok(self.push(out, Some(op), g))
    }

    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary_map(
            a,
            b,
            Map::Axpby {
                alpha: 1.0,
                beta: 1.0,
            },
            Op::Add { a, b },
        )
    }

    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary_map(
            a,
            b,
            Map::Axpby {
                alpha: 1.0,
                beta: -1.0,
            },
            Op::Sub { a, b },
        )
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary_map(a, b, Map::Mul { alpha: 1.0 }, Op::Mul { a, b })
    }

    pub fn scale(&mut self, x: Var, s: f32) -> Result<Var> {
        self.unary_map(
            x,
            Map::Affine {
                alpha: s,
                beta: 0.0,
            },
            Op::Scale { x, s },
        )
    }

    pub fn relu(&mut self, x: Var) -> Result<Var> {
        self.unary_map(x, Map::Relu, Op::Relu { x })
    }

    /// `x [rows, cols] + b [cols]` on every row.
    pub fn add_bias(&mut self, x: Var, b: Var) -> Result<Var> {
        let _scope = self.scope("add_bias");
        let (xv, bv) = (self.value(x), self.value(b));
        let out = self.alloc(xv.shape)?;
        elementwise::map(
            self.gpu,
            Map::Axpby {
                alpha: 1.0,
                beta: 1.0,
            },
            &xv,
            &bv,
            Broadcast::Row,
            &out,
            false,
        )?;
        let g = self.needs(&[x, b]);
        Ok(self.push(out, Some(Op::AddBias { x, b }), g))
    }

    /// The same values under another shape (a view: no copy forward).
    pub fn reshape(&mut self, x: Var, shape: impl Into<Shape>) -> Result<Var> {
        let xv = self.value(x);
        let shape = shape.into();
        if shape.numel() != xv.numel() {
            return Err(Error::shape(
                "reshape",
                format!("{:?} to {shape:?}", xv.shape),
            ));
        }
        let g = self.needs(&[x]);
        Ok(self.push(xv.reshape(shape), Some(Op::Reshape { x }), g))
    }

    /// `alpha · op(a) · op(b)` with the transposition given by `trans`.
    pub fn matmul(&mut self, a: Var, b: Var, trans: Trans, alpha: f32) -> Result<Var> {
        let _scope = self.scope("matmul");
        let (av, bv) = (self.value(a), self.value(b));
        let (ar, ac) = av.shape.rows_cols();
        let (br, bc) = bv.shape.rows_cols();
        let (m, n) = match trans {
            Trans::NN => (ar, bc),
            Trans::NT => (ar, br),
            Trans::TN => (ac, bc),
        };
        let out = self.alloc([m, n])?;
        let spec = Matmul {
            trans,
            alpha,
            ..Default::default()
        };
        matmul::matmul(self.gpu, &av, &bv, &out, &spec)?;
        let g = self.needs(&[a, b]);
        Ok(self.push(out, Some(Op::MatMul { a, b, trans, alpha }), g))
    }

    /// A fully connected layer: `x [N, in] · w [out, in]ᵀ + b [out]`, ReLU fused when asked.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>, relu: bool) -> Result<Var> {
        let _scope = self.scope("linear");
        let (xv, wv) = (self.value(x), self.value(w));
        let (n, _) = xv.shape.rows_cols();
        let (out_f, _) = wv.shape.rows_cols();
        let out = self.alloc([n, out_f])?;
        let bias = b.map(|b| self.value(b));
        let spec = Matmul {
            trans: Trans::NT,
            bias: bias.as_ref(),
            relu,
            ..Default::default()
        };
        matmul::matmul(self.gpu, &xv, &wv, &out, &spec)?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let g = self.needs(&inputs);
        Ok(self.push(out, Some(Op::Linear { x, w, b, relu }), g))
    }

    fn reduce_op(&mut self, x: Var, mean: bool, axis: Axis) -> Result<Var> {
        let _scope = self.scope("reduce");
        let xv = self.value(x);
        let (rows, cols) = xv.shape.rows_cols();
        let out = self.alloc([if axis == Axis::Rows { rows } else { cols }])?;
        let op = if mean { Reduce::Mean } else { Reduce::Sum };
        reduce::reduce(self.gpu, &xv, &out, op, axis, false)?;
        let g = self.needs(&[x]);
        Ok(self.push(out, Some(Op::Reduce { x, mean, axis }), g))
    }

    /// Sum of each row: `[rows, cols]` → `[rows]`.
    pub fn sum_rows(&mut self, x: Var) -> Result<Var> {
        self.reduce_op(x, false, Axis::Rows)
    }

    /// Mean of each row: `[rows, cols]` → `[rows]`.
    pub fn mean_rows(&mut self, x: Var) -> Result<Var> {
        self.reduce_op(x, true, Axis::Rows)
    }

    /// Sum over the rows: `[rows, cols]` → `[cols]`.
    pub fn sum_cols(&mut self, x: Var) -> Result<Var> {
        self.reduce_op(x, false, Axis::Cols)
    }

    /// Mean over the rows: `[rows, cols]` → `[cols]`. On a vector, the scalar mean.
    pub fn mean_cols(&mut self, x: Var) -> Result<Var> {
        self.reduce_op(x, true, Axis::Cols)
    }

    /// Mean of all elements, as a one-element tensor.
    pub fn mean(&mut self, x: Var) -> Result<Var> {
        let n = self.shape(x).numel();
        let flat = self.reshape(x, [n, 1])?;
        self.mean_cols(flat)
    }

    /// Each row divided by its L2 norm (PyTorch `F.normalize`, eps 1e-12).
    pub fn l2_normalize(&mut self, x: Var) -> Result<Var> {
        let _scope = self.scope("l2_normalize");
        let xv = self.value(x);
        let (rows, _) = xv.shape.rows_cols();
        let out = self.alloc(xv.shape)?;
        let norms = self.alloc([rows])?;
        l2norm::l2norm_forward(self.gpu, &xv, &out, &norms)?;
        let g = self.needs(&[x]);
        Ok(self.push(out, Some(Op::L2Normalize { x, norms }), g))
    }

    /// Per-row softmax cross-entropy of `logits / temperature` against the positive column given
    /// by `targets` (u32 per row). Returns (per-row loss `[N]`, per-row hit `[N]`: 1 where the positive
    /// has the largest logit). The hit vector gets no gradient.
    pub fn softmax_xent(&mut self, logits: Var, targets: Var, spec: &Xent) -> Result<(Var, Var)> {
        let _scope = self.scope("softmax_xent");
        let lv = self.value(logits);
        let (n, _) = lv.shape.rows_cols();
        let tv = self.value(targets);
        if tv.numel() != n {
            return Err(Error::shape(
                "softmax_xent",
                format!("targets {:?} for logits {:?}", tv.shape, lv.shape),
            ));
        }
        let loss = self.alloc([n])?;
        let dlogits = self.alloc(lv.shape)?;
        let correct = self.alloc([n])?;
        softmax_xent::softmax_xent(self.gpu, &lv, &tv, spec, &loss, &dlogits, &correct)?;
        let g = self.needs(&[logits]);
        let loss = self.push(loss, Some(Op::SoftmaxXent { logits, dlogits }), g);
        let correct = self.input(correct);
        Ok((loss, correct))
    }

    /// `[a | b]`: columns of `b` appended to those of `a` (same number of rows).
    pub fn concat_cols(&mut self, a: Var, b: Var) -> Result<Var> {
        let _scope = self.scope("concat_cols");
        let (av, bv) = (self.value(a), self.value(b));
        let (ar, ac) = av.shape.rows_cols();
        let (br, bc) = bv.shape.rows_cols();
        if ar != br {
            return Err(Error::shape(
                "concat_cols",
                format!("{:?} and {:?} differ in rows", av.shape, bv.shape),
            ));
        }
        let out = self.alloc([ar, ac + bc])?;
        elementwise::copy_cols(self.gpu, &av, &out, 0, Direction::IntoWide, false)?;
        elementwise::copy_cols(self.gpu, &bv, &out, ac, Direction::IntoWide, false)?;
        let g = self.needs(&[a, b]);
        Ok(self.push(out, Some(Op::ConcatCols { a, b }), g))
    }

    /// Columns `col0..col0 + width` of `x` [rows, cols].
    pub fn slice_cols(&mut self, x: Var, col0: usize, width: usize) -> Result<Var> {
        let _scope = self.scope("slice_cols");
        let xv = self.value(x);
        let (rows, _) = xv.shape.rows_cols();
        let out = self.alloc([rows, width])?;
        elementwise::copy_cols(self.gpu, &out, &xv, col0, Direction::FromWide, false)?;
        let g = self.needs(&[x]);
        Ok(self.push(out, Some(Op::SliceCols { x, col0 }), g))
    }

    /// Sum of all elements, as a one-element tensor.
    pub fn sum(&mut self, x: Var) -> Result<Var> {
        let n = self.shape(x).numel();
        let flat = self.reshape(x, [n, 1])?;
        self.sum_cols(flat)
    }

    /// Deep InfoMax's local–global loss from `scores` [N, N·locs] (see [`crate::kernels::mi`]).
    pub fn mi_estimate(&mut self, scores: Var, locs: usize, est: Estimator) -> Result<Var> {
        let _scope = self.scope("mi_estimate");
        let sv = self.value(scores);
        let (n, _) = sv.shape.rows_cols();
        let terms = self.alloc([mi::loss_len(est, n, locs)])?;
        let dscores = self.alloc(sv.shape)?;
        mi::estimate(self.gpu, est, &sv, locs, &terms, &dscores, false)?;
        let rows = mi::loss_terms(est, n, locs);
        let out = self.alloc([1])?;
        let used = Tensor {
            region: terms.region.slice(0, rows),
            shape: [rows, 1].into(),
        };
        reduce::reduce(self.gpu, &used, &out, Reduce::Sum, Axis::Cols, false)?;
        let g = self.needs(&[scores]);
        Ok(self.push(out, Some(Op::MiEstimate { scores, dscores }), g))
    }

    /// 2-D convolution over NHWC `x` with weights [Cout, KH, KW, Cin], optional bias and ReLU.
    pub fn conv2d(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        geom: Conv2d,
        relu: bool,
    ) -> Result<Var> {
        let _scope = self.scope("conv2d");
        let (xv, wv) = (self.value(x), self.value(w));
        if xv.shape.rank() != 4 || wv.shape.rank() != 4 {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "input {:?} must be [N,H,W,C] and weights {:?} [Cout,KH,KW,Cin]",
                    xv.shape, wv.shape
                ),
            ));
        }
        let d = xv.shape.dims();
        let (ho, wo) = geom.out_hw(d[1], d[2])?;
        let out = self.alloc([d[0], ho, wo, wv.shape.dim(0)])?;
        let bias = b.map(|b| self.value(b));
        conv::forward(self.gpu, &xv, &wv, bias.as_ref(), &out, &geom, relu)?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let g = self.needs(&inputs);
        Ok(self.push(
            out,
            Some(Op::Conv2d {
                x,
                w,
                b,
                geom,
                relu,
            }),
            g,
        ))
    }

    /// Batch normalisation over the channels (last dimension). In train mode it uses batch
    /// statistics and updates the running ones; in eval mode it uses the running statistics and
    /// records nothing (eval-mode BN is only used without gradients: evaluation, key encoders).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        running_mean: &Tensor,
        running_var: &Tensor,
        bn: &BatchNorm,
        train: bool,
    ) -> Result<Var> {
        let _scope = self.scope("batch_norm");
        let (xv, gv, bv) = (self.value(x), self.value(gamma), self.value(beta));
        let (rows, c) = xv.shape.rows_cols();
        let out = self.alloc(xv.shape)?;
        if !train {
            batchnorm::forward_eval(self.gpu, &xv, &gv, &bv, running_mean, running_var, &out, bn)?;
            return Ok(self.input(out));
        }
        let mean = self.alloc([bn.groups, c])?;
        let invstd = self.alloc([bn.groups, c])?;
        let scratch = self.alloc([batchnorm::scratch_len(rows, c, bn.groups)])?;
        batchnorm::forward_train(
            self.gpu,
            &xv,
            &gv,
            &bv,
            &out,
            &mean,
            &invstd,
            running_mean,
            running_var,
            &scratch,
            bn,
        )?;
        let g = self.needs(&[x, gamma, beta]);
        let op = Op::BatchNorm {
            x,
            gamma,
            beta,
            mean,
            invstd,
            bn: *bn,
        };
        Ok(self.push(out, Some(op), g))
    }

    /// Mean over H and W: `[N,H,W,C]` → `[N,C]`.
    pub fn avg_pool_global(&mut self, x: Var) -> Result<Var> {
        let _scope = self.scope("avg_pool_global");
        let xv = self.value(x);
        if xv.shape.rank() != 4 {
            return Err(Error::shape(
                "avg_pool_global",
                format!("input {:?} must be [N,H,W,C]", xv.shape),
            ));
        }
        let out = self.alloc([xv.shape.dim(0), xv.shape.dim(3)])?;
        pool::avgpool_global(self.gpu, &xv, &out)?;
        let g = self.needs(&[x]);
        Ok(self.push(out, Some(Op::AvgPoolGlobal { x }), g))
    }

    /// 2×2 max pooling with stride 2 (odd trailing rows/columns dropped).
    pub fn max_pool_2x2(&mut self, x: Var) -> Result<Var> {
        let _scope = self.scope("max_pool_2x2");
        let xv = self.value(x);
        if xv.shape.rank() != 4 {
            return Err(Error::shape(
                "max_pool_2x2",
                format!("input {:?} must be [N,H,W,C]", xv.shape),
            ));
        }
        let d = xv.shape.dims();
        let out = self.alloc([d[0], d[1] / 2, d[2] / 2, d[3]])?;
        let argmax = self.alloc(out.shape)?;
        pool::maxpool2x2(self.gpu, &xv, &out, &argmax)?;
        let g = self.needs(&[x]);
        Ok(self.push(out, Some(Op::MaxPool2x2 { x, argmax }), g))
    }

    /// A GRU from a zero state over `gx [B, T, 3H]`, the input projections of every step
    /// (`x·W_ihᵀ + b_ih`, e.g. a [`Graph::linear`]), with recurrent weights `w [3H, H]` and bias
    /// `b [3H]` (PyTorch's `weight_hh`, `bias_hh`, gate order r, z, n). Returns the states
    /// `[B, T, H]`.
    pub fn gru(&mut self, gx: Var, w: Var, b: Var) -> Result<Var> {
        let (gxv, wv, bv) = (self.value(gx), self.value(w), self.value(b));
        let (batch, steps, hidden) = gru::dims(&gxv, &wv, &bv)?;
        let h = self.alloc([batch, steps, hidden])?;
        let hprev = self.alloc([batch * steps, hidden])?;
        let gates = self.alloc([batch * steps, 4 * hidden])?;
        let [a, b2, c] = gru::forward_scratch(batch, hidden);
        let scratch = [self.alloc(a)?, self.alloc(b2)?, self.alloc(c)?];
        gru::forward(self.gpu, &gxv, &wv, &bv, &h, &hprev, &gates, &scratch)?;
        let g = self.needs(&[gx, w, b]);
        let op = Op::Gru {
            gx,
            w,
            b,
            hprev,
            gates,
        };
        Ok(self.push(h, Some(op), g))
    }

    /// CPC's logits `[rows, B]`: the predictions `pred [B, T, K·D]` of offsets 1..=K scored
    /// against the encodings `z [B, T, D]` of every sequence at the predicted step (see
    /// [`crate::kernels::cpc`]).
    pub fn cpc_scores(&mut self, z: Var, pred: Var, k: usize) -> Result<(Var, Offsets)> {
        let (zv, pv) = (self.value(z), self.value(pred));
        let offsets = Offsets::of(&zv, &pv, k)?;
        let logits = self.alloc([offsets.rows(), offsets.batch])?;
        cpc::scores(self.gpu, &zv, &pv, &logits, &offsets)?;
        let g = self.needs(&[z, pred]);
        let op = Op::CpcScores { z, pred, offsets };
        Ok((self.push(logits, Some(op), g), offsets))
    }

    /// Backpropagates from a one-element `loss` (seeded with 1).
    pub fn backward(&mut self, loss: Var) -> Result<()> {
        let _scope = self.gpu.scope(|| "backward seed".into());
        let lv = self.value(loss);
        if lv.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!("the loss must have one element, not {:?}", lv.shape),
            ));
        }
        let seed = self.alloc(lv.shape)?;
        elementwise::map(
            self.gpu,
            Map::Fill { alpha: 1.0 },
            &seed,
            &seed,
            Broadcast::Full,
            &seed,
            false,
        )?;
        self.backward_with(loss, seed)
    }

    /// Backpropagates from `y` with `dy` as its gradient.
    pub fn backward_with(&mut self, y: Var, dy: Tensor) -> Result<()> {
        if !self.nodes[y.0].needs_grad {
            return Err(Error::Config(
                "backward from a value that depends on no parameter (or an inference graph)".into(),
            ));
        }
        same_shape("backward", &dy, &self.value(y))?;
        self.nodes[y.0].grad = Some(dy);
        self.nodes[y.0].grad_written = true;
        for i in (0..=y.0).rev() {
            let node = &self.nodes[i];
            if !node.grad_written {
                continue;
            }
            if let Some(op) = node.op.clone() {
                let (out, dout) = (node.value, node.grad.expect("written gradient"));
                let gpu = self.gpu;
                let _scope = gpu.scope(|| format!("{} backward (tape node {i})", op.name()));
                self.backward_op(&op, out, dout)?;
            }
        }
        Ok(())
    }

    /// Calls `f(grad, accumulate)` to add a contribution to `v`'s gradient, allocating the gradient
    /// on first use. Does nothing for values that need no gradient.
    fn contribute(
        &mut self,
        v: Var,
        f: impl FnOnce(&Gpu, &Tensor, bool) -> Result<()>,
    ) -> Result<()> {
        if !self.nodes[v.0].needs_grad {
            return Ok(());
        }
        if self.nodes[v.0].grad.is_none() {
            let t = self.alloc(self.nodes[v.0].value.shape)?;
            self.nodes[v.0].grad = Some(t);
        }
        let node = &mut self.nodes[v.0];
        let accumulate = node.grad_written || node.fixed_grad;
        node.grad_written = true;
        f(self.gpu, &node.grad.unwrap(), accumulate)
    }

    /// `grad(v) += map(a, b)` elementwise.
    /// `grad(v) (+)= alpha · op(x) · op(y)`, with scratch for a split K loop where the matmul
    /// would use one.
    fn contribute_matmul(
        &mut self,
        v: Var,
        x: Tensor,
        y: Tensor,
        trans: Trans,
        alpha: f32,
    ) -> Result<()> {
        if !self.nodes[v.0].needs_grad {
            return Ok(());
        }
        let room = matmul::split_k_scratch_for(self.gpu, &x, &y, trans);
        let scratch = if room > 0 {
            Some(self.alloc([room])?)
        } else {
            None
        };
        self.contribute(v, |gpu, g, acc| {
            let spec = Matmul {
                trans,
                alpha,
                accumulate: acc,
                scratch: scratch.as_ref(),
                ..Default::default()
            };
            matmul::matmul(gpu, &x, &y, g, &spec)
        })
    }

    fn contribute_map(
        &mut self,
        v: Var,
        m: Map,
        a: Tensor,
        b: Tensor,
        bcast: Broadcast,
    ) -> Result<()> {
        self.contribute(v, |gpu, g, acc| {
            elementwise::map(gpu, m, &a, &b, bcast, g, acc)
        })
    }

    fn backward_op(&mut self, op: &Op, out: Tensor, dout: Tensor) -> Result<()> {
        const COPY: Map = Map::Affine {
            alpha: 1.0,
            beta: 0.0,
        };
        let full = Broadcast::Full;
        match *op {
            Op::Add { a, b } => {
                self.contribute_map(a, COPY, dout, dout, full)?;
                self.contribute_map(b, COPY, dout, dout, full)?;
            }
            Op::Sub { a, b } => {
                self.contribute_map(a, COPY, dout, dout, full)?;
                self.contribute_map(
                    b,
                    Map::Affine {
                        alpha: -1.0,
                        beta: 0.0,
                    },
                    dout,
                    dout,
                    full,
                )?;
            }
            Op::Mul { a, b } => {
                let (av, bv) = (self.value(a), self.value(b));
                self.contribute_map(a, Map::Mul { alpha: 1.0 }, dout, bv, full)?;
                self.contribute_map(b, Map::Mul { alpha: 1.0 }, dout, av, full)?;
            }
            Op::Scale { x, s } => self.contribute_map(
                x,
                Map::Affine {
                    alpha: s,
                    beta: 0.0,
                },
                dout,
                dout,
                full,
            )?,
            Op::Relu { x } => self.contribute_map(x, Map::MaskPositive, out, dout, full)?,
            Op::Reshape { x } => {
                let shape = self.shape(x);
                self.contribute_map(x, COPY, dout.reshape(shape), dout.reshape(shape), full)?;
            }
            Op::AddBias { x, b } => {
                self.contribute_map(x, COPY, dout, dout, full)?;
                self.contribute(b, |gpu, g, acc| {
                    reduce::reduce(gpu, &dout, g, Reduce::Sum, Axis::Cols, acc)
                })?;
            }
            Op::Reduce { x, mean, axis } => {
                let (rows, cols) = self.shape(x).rows_cols();
                let (alpha, bcast) = match axis {
                    Axis::Rows => (if mean { 1.0 / cols as f32 } else { 1.0 }, Broadcast::Col),
                    Axis::Cols => (if mean { 1.0 / rows as f32 } else { 1.0 }, Broadcast::Row),
                };
                let xv = self.value(x);
                self.contribute_map(x, Map::Broadcast { alpha }, xv, dout, bcast)?;
            }
            Op::MatMul { a, b, trans, alpha } => {
                let (av, bv) = (self.value(a), self.value(b));
                // For C = αA·B: dA = α dC·Bᵀ, dB = α Aᵀ·dC; the transposed forms follow by symmetry.
                let (da, db) = match trans {
                    Trans::NN => ((dout, bv, Trans::NT), (av, dout, Trans::TN)),
                    Trans::NT => ((dout, bv, Trans::NN), (dout, av, Trans::TN)),
                    Trans::TN => ((bv, dout, Trans::NT), (av, dout, Trans::NN)),
                };
                for (v, (x, y, t)) in [(a, da), (b, db)] {
                    self.contribute_matmul(v, x, y, t, alpha)?;
                }
            }
            Op::Linear { x, w, b, relu } => {
                let dpre = self.masked(out, dout, relu)?;
                let (xv, wv) = (self.value(x), self.value(w));
                self.contribute_matmul(x, dpre, wv, Trans::NN, 1.0)?;
                self.contribute_matmul(w, dpre, xv, Trans::TN, 1.0)?;
                if let Some(b) = b {
                    self.contribute(b, |gpu, g, acc| {
                        reduce::reduce(gpu, &dpre, g, Reduce::Sum, Axis::Cols, acc)
                    })?;
                }
            }
            Op::L2Normalize { x, norms } => {
                self.contribute(x, |gpu, g, acc| {
                    l2norm::l2norm_backward(gpu, &out, &norms, &dout, g, acc)
                })?;
            }
            Op::SoftmaxXent { logits, dlogits } => {
                self.contribute_map(
                    logits,
                    Map::Mul { alpha: 1.0 },
                    dlogits,
                    dout,
                    Broadcast::Col,
                )?;
            }
            Op::ConcatCols { a, b } => {
                let ac = self.shape(a).rows_cols().1;
                for (v, col0) in [(a, 0), (b, ac)] {
                    let shape = self.shape(v);
                    self.contribute(v, |gpu, g, acc| {
                        elementwise::copy_cols(
                            gpu,
                            &g.reshape(shape),
                            &dout,
                            col0,
                            Direction::FromWide,
                            acc,
                        )
                    })?;
                }
            }
            Op::SliceCols { x, col0 } => {
                let xv = self.value(x);
                self.contribute(x, |gpu, g, acc| {
                    if !acc {
                        // Only the block receives gradient: the rest of the first write is zero.
                        elementwise::map(
                            gpu,
                            Map::Fill { alpha: 0.0 },
                            g,
                            g,
                            Broadcast::Full,
                            g,
                            false,
                        )?;
                    }
                    elementwise::copy_cols(
                        gpu,
                        &dout,
                        &g.reshape(xv.shape),
                        col0,
                        Direction::IntoWide,
                        true,
                    )
                })?;
            }
            Op::MiEstimate { scores, dscores } => {
                self.contribute_map(
                    scores,
                    Map::Mul { alpha: 1.0 },
                    dscores,
                    dout,
                    Broadcast::Scalar,
                )?;
            }
            Op::Conv2d {
                x,
                w,
                b,
                geom,
                relu,
            } => {
                let dpre = self.masked(out, dout, relu)?;
                let (xv, wv) = (self.value(x), self.value(w));
                self.contribute(x, |gpu, g, acc| {
                    conv::backward_input(gpu, &dpre, &wv, g, &geom, acc)
                })?;
                let d = xv.shape.dims();
                let scratch = self.alloc([geom.weight_grad_scratch(
                    self.gpu,
                    d[0],
                    d[1],
                    d[2],
                    d[3],
                    wv.shape.dim(0),
                )])?;
                self.contribute(w, |gpu, g, acc| {
                    conv::backward_weight(gpu, &xv, &dpre, g, Some(&scratch), &geom, acc)
                })?;
                if let Some(b) = b {
                    self.contribute(b, |gpu, g, acc| {
                        reduce::reduce(gpu, &dpre, g, Reduce::Sum, Axis::Cols, acc)
                    })?;
                }
            }
            Op::BatchNorm {
                x,
                gamma,
                beta,
                mean,
                invstd,
                bn,
            } => {
                let (xv, gv, bv) = (self.value(x), self.value(gamma), self.value(beta));
                let dgamma = self.param_grad(gamma)?;
                let dbeta = self.param_grad(beta)?;
                let (rows, c) = xv.shape.rows_cols();
                let scratch = self.alloc([batchnorm::scratch_len(rows, c, bn.groups)])?;
                let run = |gpu: &Gpu, dx: &Tensor, acc: bool| {
                    batchnorm::backward(
                        gpu, &xv, &dout, &gv, &bv, &mean, &invstd, dx, &dgamma, &dbeta, &scratch,
                        &bn, acc,
                    )
                };
                if self.nodes[x.0].needs_grad {
                    self.contribute(x, run)?;
                } else {
                    // The fused kernel also produces dgamma and dbeta: give it somewhere to put dx.
                    let unused = self.alloc(xv.shape)?;
                    run(self.gpu, &unused, false)?;
                }
            }
            Op::AvgPoolGlobal { x } => {
                self.contribute(x, |gpu, g, acc| {
                    pool::avgpool_global_backward(gpu, &dout, g, acc)
                })?;
            }
            Op::MaxPool2x2 { x, argmax } => {
                self.contribute(x, |gpu, g, acc| {
                    pool::maxpool2x2_backward(gpu, &dout, &argmax, g, acc)
                })?;
            }
            Op::Gru {
                gx,
                w,
                b,
                hprev,
                gates,
            } => {
                let (gxv, wv, bv) = (self.value(gx), self.value(w), self.value(b));
                let (batch, steps, hidden) = gru::dims(&gxv, &wv, &bv)?;
                let [a, c, d] = gru::backward_scratch(batch, steps, hidden);
                let scratch = [self.alloc(a)?, self.alloc(c)?, self.alloc(d)?];
                let dgh = scratch[0];
                let run = |gpu: &Gpu, dgx: &Tensor, acc: bool| {
                    gru::backward_steps(gpu, &dout, &wv, &bv, &hprev, &gates, dgx, &scratch, acc)
                };
                if self.nodes[gx.0].needs_grad {
                    self.contribute(gx, run)?;
                } else {
                    // The recurrence also produces dgh, which the weights need.
                    let unused = self.alloc(gxv.shape)?;
                    run(self.gpu, &unused, false)?;
                }
                // dW [3H, H] = dghᵀ·hprev and db = Σ dgh over every sequence and step.
                self.contribute(w, |gpu, g, acc| {
                    let spec = Matmul {
                        trans: Trans::TN,
                        accumulate: acc,
                        ..Default::default()
                    };
                    matmul::matmul(gpu, &dgh, &hprev, g, &spec)
                })?;
                self.contribute(b, |gpu, g, acc| {
                    reduce::reduce(gpu, &dgh, g, Reduce::Sum, Axis::Cols, acc)
                })?;
            }
            Op::CpcScores { z, pred, offsets } => {
                let (zv, pv) = (self.value(z), self.value(pred));
                self.contribute(pred, |gpu, g, acc| {
                    cpc::grad_pred(gpu, &dout, &zv, g, &offsets, acc)
                })?;
                self.contribute(z, |gpu, g, acc| {
                    cpc::grad_z(gpu, &dout, &pv, g, &offsets, acc)
                })?;
            }
        }
        Ok(())
    }

    /// The gradient flowing into a fused ReLU's input: `dout` where the output is positive.
    fn masked(&mut self, out: Tensor, dout: Tensor, relu: bool) -> Result<Tensor> {
        if !relu {
            return Ok(dout);
        }
        let d = self.alloc(out.shape)?;
        elementwise::map(
            self.gpu,
            Map::MaskPositive,
            &out,
            &dout,
            Broadcast::Full,
            &d,
            false,
        )?;
        Ok(d)
    }

    /// The gradient buffer of a BatchNorm scale or shift, which the fused backward always
    /// accumulates into: a parameter's own, or a zeroed one for other leaves (gradient checks).
    fn param_grad(&mut self, v: Var) -> Result<Tensor> {
        let node = &self.nodes[v.0];
        if node.fixed_grad || node.grad_written {
            return Ok(node.grad.unwrap());
        }
        let shape = node.value.shape;
        let t = self.alloc(shape)?;
        elementwise::map(
            self.gpu,
            Map::Fill { alpha: 0.0 },
            &t,
            &t,
            Broadcast::Full,
            &t,
            false,
        )?;
        let node = &mut self.nodes[v.0];
        node.grad = Some(t);
        node.grad_written = node.needs_grad;
        Ok(t)
    }
}
