//! Normalisations: each row to unit L2 norm, and batch normalisation over the channels.

use super::{Graph, Op, Var};
use crate::error::Result;
use crate::kernels::batchnorm::{self, BatchNorm};
use crate::kernels::l2norm;
use crate::memory::Tensor;

impl Graph<'_> {
    /// Each row divided by its L2 norm (PyTorch `F.normalize`, eps 1e-12).
    pub fn l2_normalize(&mut self, x: Var) -> Result<Var> {
        let _scope = self.scope("l2_normalize");
        let xv = self.value(x);
        let (rows, _) = xv.shape.rows_cols();
        let out = self.alloc(xv.shape)?;
        let norms = self.alloc([rows])?;
        l2norm::l2norm_forward(self.gpu, &xv, &out, &norms)?;
        Ok(self.record("l2_normalize", out, Op::L2Normalize { x, norms }, &[x]))
    }

    pub(super) fn l2_normalize_backward(
        &mut self,
        x: Var,
        norms: Tensor,
        out: Tensor,
        dout: Tensor,
    ) -> Result<()> {
        self.contribute(x, |gpu, g, acc| {
            l2norm::l2norm_backward(gpu, &out, &norms, &dout, g, acc)
        })
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
        let op = Op::BatchNorm {
            x,
            gamma,
            beta,
            mean,
            invstd,
            bn: *bn,
        };
        Ok(self.record("batch_norm", out, op, &[x, gamma, beta]))
    }

    /// One fused kernel writes dx and accumulates dgamma and dbeta.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn batch_norm_backward(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        mean: Tensor,
        invstd: Tensor,
        bn: &BatchNorm,
        dout: Tensor,
    ) -> Result<()> {
        let (xv, gv, bv) = (self.value(x), self.value(gamma), self.value(beta));
        let dgamma = self.accumulated_grad(gamma)?;
        let dbeta = self.accumulated_grad(beta)?;
        let (rows, c) = xv.shape.rows_cols();
        let scratch = self.alloc([batchnorm::scratch_len(rows, c, bn.groups)])?;
        self.contribute_or_discard(x, |gpu, dx, acc| {
            batchnorm::backward(
                gpu, &xv, &dout, &gv, &bv, &mean, &invstd, dx, &dgamma, &dbeta, &scratch, bn, acc,
            )
        })
    }
}
