//! The tape: leaves and parameters, recording, the backward walk and the gradient contributions
//! every op's backward is written with; and the small checks and fills the ops share.

use super::{Graph, Node, Op, Var};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Scope};
use crate::kernels::elementwise::{self, Broadcast, Map};
use crate::kernels::reduce::{self, Axis, Reduce};
use crate::memory::{Arena, Shape, Tensor};

/// Errors unless `a` and `b` have the same shape.
pub(super) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape != b.shape {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.shape, b.shape)));
    }
    Ok(())
}

/// Errors unless `t` (named `what` in the message) has as many dimensions as `layout` names,
/// e.g. `["N", "H", "W", "C"]`.
pub(super) fn check_rank(op: &'static str, what: &str, t: &Tensor, layout: &[&str]) -> Result<()> {
    if t.shape.rank() != layout.len() {
        return Err(Error::shape(
            op,
            format!("{what} {:?} must be [{}]", t.shape, layout.join(", ")),
        ));
    }
    Ok(())
}

/// Writes `value` to every element of `t`.
pub(super) fn fill(gpu: &Gpu, t: &Tensor, value: f32) -> Result<()> {
    elementwise::map(
        gpu,
        Map::Fill { alpha: value },
        t,
        t,
        Broadcast::Full,
        t,
        false,
    )
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

    fn push(&mut self, value: Tensor, name: &'static str, op: Option<Op>, needs_grad: bool) -> Var {
        let needs_grad = needs_grad && self.recording;
        self.nodes.push(Node {
            value,
            name,
            op: op.filter(|_| needs_grad),
            needs_grad,
            grad: None,
            fixed_grad: false,
            grad_written: false,
        });
        Var(self.nodes.len() - 1)
    }

    /// Pushes the output of op `name`: it needs a gradient when one of `inputs` does.
    pub(super) fn record(
        &mut self,
        name: &'static str,
        out: Tensor,
        op: Op,
        inputs: &[Var],
    ) -> Var {
        let needs = inputs.iter().any(|v| self.nodes[v.0].needs_grad);
        self.push(out, name, Some(op), needs)
    }

    /// A value that gets no gradient (data, targets, detached keys, a queue).
    pub fn input(&mut self, t: Tensor) -> Var {
        self.push(t, "input", None, false)
    }

    /// A leaf that gets a gradient in the step arena (for gradient checks of inputs).
    pub fn leaf(&mut self, t: Tensor) -> Var {
        self.push(t, "leaf", None, true)
    }

    /// A parameter whose gradient is accumulated into `grad` (a view of the model's gradient arena).
    pub fn param(&mut self, value: Tensor, grad: Tensor) -> Var {
        let v = self.push(value, "param", None, true);
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
    pub(super) fn scope(&self, op: &'static str) -> Scope<'a> {
        let node = self.nodes.len();
        self.gpu
            .scope(move || format!("{op} forward (tape node {node})"))
    }

    pub(super) fn alloc(&mut self, shape: impl Into<Shape>) -> Result<Tensor> {
        self.arena.tensor(self.gpu, shape)
    }

    /// A new tensor holding `value` everywhere.
    pub(super) fn filled(&mut self, shape: impl Into<Shape>, value: f32) -> Result<Tensor> {
        let t = self.alloc(shape)?;
        fill(self.gpu, &t, value)?;
        Ok(t)
    }

    pub(super) fn needs_grad(&self, v: Var) -> bool {
        self.nodes[v.0].needs_grad
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
        let seed = self.filled(lv.shape, 1.0)?;
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
                let (out, dout, name) =
                    (node.value, node.grad.expect("written gradient"), node.name);
                let gpu = self.gpu;
                let _scope = gpu.scope(|| format!("{name} backward (tape node {i})"));
                self.backward_op(op, out, dout)?;
            }
        }
        Ok(())
    }

    /// Each op's backward, in the file of its recording function.
    fn backward_op(&mut self, op: Op, out: Tensor, dout: Tensor) -> Result<()> {
        match op {
            Op::Map { m, a, b, bcast } => self.map_backward(m, a, b, bcast, out, dout),
            Op::MatMul { a, b, trans, alpha } => self.matmul_backward(a, b, trans, alpha, dout),
            Op::Linear { x, w, b, relu } => {
                let dpre = self.masked(out, dout, relu)?;
                self.linear_backward(x, w, b, dpre)
            }
            Op::Reduce { x, mean, axis } => self.reduce_backward(x, mean, axis, dout),
            Op::Reshape { x } => self.reshape_backward(x, dout),
            Op::ConcatCols { a, b } => self.concat_cols_backward(a, b, dout),
            Op::SliceCols { x, col0 } => self.slice_cols_backward(x, col0, dout),
            Op::L2Normalize { x, norms } => self.l2_normalize_backward(x, norms, out, dout),
            Op::BatchNorm {
                x,
                gamma,
                beta,
                mean,
                invstd,
                bn,
            } => self.batch_norm_backward(x, gamma, beta, mean, invstd, &bn, dout),
            Op::SoftmaxXent { logits, dlogits } => {
                self.saved_grad_backward(logits, dlogits, dout, Broadcast::Col)
            }
            Op::MiEstimate { scores, dscores } => {
                self.saved_grad_backward(scores, dscores, dout, Broadcast::Scalar)
            }
            Op::CpcScores {
                z,
                pred,
                offsets,
                candidates,
            } => self.cpc_scores_backward(z, pred, &offsets, candidates, dout),
            Op::Conv2d {
                x,
                w,
                b,
                geom,
                relu,
            } => {
                let dpre = self.masked(out, dout, relu)?;
                self.conv2d_backward(x, w, b, &geom, dpre)
            }
            Op::AvgPoolGlobal { x } => self.avg_pool_global_backward(x, dout),
            Op::MaxPool2x2 { x, argmax } => self.max_pool_2x2_backward(x, argmax, dout),
            Op::Gru {
                gx,
                w,
                b,
                hprev,
                gates,
            } => self.gru_backward(gx, w, b, hprev, gates, dout),
        }
    }

    /// Calls `f(grad, accumulate)` to add a contribution to `v`'s gradient, allocating the gradient
    /// on first use. Does nothing for values that need no gradient.
    pub(super) fn contribute(
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

    /// Like [`Graph::contribute`], for a fused backward whose other outputs are needed anyway:
    /// when `v` needs no gradient, `f` writes its share to a scratch tensor.
    pub(super) fn contribute_or_discard(
        &mut self,
        v: Var,
        f: impl FnOnce(&Gpu, &Tensor, bool) -> Result<()>,
    ) -> Result<()> {
        if self.needs_grad(v) {
            return self.contribute(v, f);
        }
        let unused = self.alloc(self.shape(v))?;
        f(self.gpu, &unused, false)
    }

    /// `grad(v) (+)= map(a, b)` elementwise.
    pub(super) fn contribute_map(
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

    /// `grad(v) (+)= Σ rows of d`: the gradient of a bias added to every row.
    pub(super) fn contribute_bias(&mut self, v: Var, d: Tensor) -> Result<()> {
        self.contribute(v, |gpu, g, acc| {
            reduce::reduce(gpu, &d, g, Reduce::Sum, Axis::Cols, acc)
        })
    }

    /// The gradient buffer of an input that a fused backward always accumulates into: a
    /// parameter's own, or a zeroed one for other leaves (gradient checks).
    pub(super) fn accumulated_grad(&mut self, v: Var) -> Result<Tensor> {
        let node = &self.nodes[v.0];
        if node.fixed_grad || node.grad_written {
            return Ok(node.grad.unwrap());
        }
        let t = self.filled(node.value.shape, 0.0)?;
        let node = &mut self.nodes[v.0];
        node.grad = Some(t);
        node.grad_written = node.needs_grad;
        Ok(t)
    }
}
