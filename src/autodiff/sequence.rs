//! Recurrences over sequences: the GRU.

use super::{Graph, Op, Var};
use crate::error::Result;
use crate::kernels::gru;
use crate::kernels::matmul::{self, Matmul, Trans};
use crate::memory::Tensor;

impl Graph<'_> {
    /// A GRU from a zero state over `gx [B, T, 3H]`, the input projections of every step
    /// (`x·W_ihᵀ + b_ih`, e.g. a [`Graph::linear`]), with recurrent weights `w [3H, H]` and bias
    /// `b [3H]` (PyTorch's `weight_hh`, `bias_hh`, gate order r, z, n). Returns the states
    /// `[B, T, H]`.
    pub fn gru(&mut self, gx: Var, w: Var, b: Var) -> Result<Var> {
        let _scope = self.scope("gru");
        let (gxv, wv, bv) = (self.value(gx), self.value(w), self.value(b));
        let (batch, steps, hidden) = gru::dims(&gxv, &wv, &bv)?;
        let h = self.alloc([batch, steps, hidden])?;
        let hprev = self.alloc([batch * steps, hidden])?;
        let gates = self.alloc([batch * steps, 4 * hidden])?;
        let scratch = self.alloc_each(gru::forward_scratch(batch, hidden))?;
        gru::forward(self.gpu, &gxv, &wv, &bv, &h, &hprev, &gates, &scratch)?;
        let op = Op::Gru {
            gx,
            w,
            b,
            hprev,
            gates,
        };
        Ok(self.record("gru", h, op, &[gx, w, b]))
    }

    /// Backward through time; the recurrence also produces the gates' gradient `dgh`, which the
    /// weights need whether or not `gx` does.
    pub(super) fn gru_backward(
        &mut self,
        gx: Var,
        w: Var,
        b: Var,
        hprev: Tensor,
        gates: Tensor,
        dout: Tensor,
    ) -> Result<()> {
        let (gxv, wv, bv) = (self.value(gx), self.value(w), self.value(b));
        let (batch, steps, hidden) = gru::dims(&gxv, &wv, &bv)?;
        let scratch = self.alloc_each(gru::backward_scratch(batch, steps, hidden))?;
        let dgh = scratch[0];
        self.contribute_or_discard(gx, |gpu, dgx, acc| {
            gru::backward_steps(gpu, &dout, &wv, &bv, &hprev, &gates, dgx, &scratch, acc)
        })?;
        // dW [3H, H] = dghᵀ·hprev and db = Σ dgh over every sequence and step.
        self.contribute(w, |gpu, g, acc| {
            let spec = Matmul {
                trans: Trans::TN,
                accumulate: acc,
                ..Default::default()
            };
            matmul::matmul(gpu, &dgh, &hprev, g, &spec)
        })?;
        self.contribute_bias(b, dgh)
    }

    /// One tensor per shape.
    fn alloc_each(&mut self, shapes: [[usize; 2]; 3]) -> Result<[Tensor; 3]> {
        let [a, b, c] = shapes;
        Ok([self.alloc(a)?, self.alloc(b)?, self.alloc(c)?])
    }
}
