//! Pooling over NHWC tensors.

use super::tape::check_rank;
use super::{Graph, Op, Var};
use crate::error::Result;
use crate::kernels::pool;
use crate::memory::Tensor;

const NHWC: [&str; 4] = ["N", "H", "W", "C"];

impl Graph<'_> {
    /// Mean over H and W: `[N,H,W,C]` → `[N,C]`.
    pub fn avg_pool_global(&mut self, x: Var) -> Result<Var> {
        let _scope = self.scope("avg_pool_global");
        let xv = self.value(x);
        check_rank("avg_pool_global", "input", &xv, &NHWC)?;
        let out = self.alloc([xv.shape.dim(0), xv.shape.dim(3)])?;
        pool::avgpool_global(self.gpu, &xv, &out)?;
        Ok(self.record("avg_pool_global", out, Op::AvgPoolGlobal { x }, &[x]))
    }

    pub(super) fn avg_pool_global_backward(&mut self, x: Var, dout: Tensor) -> Result<()> {
        self.contribute(x, |gpu, g, acc| {
            pool::avgpool_global_backward(gpu, &dout, g, acc)
        })
    }

    /// 2×2 max pooling with stride 2 (odd trailing rows/columns dropped).
    pub fn max_pool_2x2(&mut self, x: Var) -> Result<Var> {
        let _scope = self.scope("max_pool_2x2");
        let xv = self.value(x);
        check_rank("max_pool_2x2", "input", &xv, &NHWC)?;
        let d = xv.shape.dims();
        let out = self.alloc([d[0], d[1] / 2, d[2] / 2, d[3]])?;
        let argmax = self.alloc(out.shape)?;
        pool::maxpool2x2(self.gpu, &xv, &out, &argmax)?;
        Ok(self.record("max_pool_2x2", out, Op::MaxPool2x2 { x, argmax }, &[x]))
    }

    pub(super) fn max_pool_2x2_backward(
        &mut self,
        x: Var,
        argmax: Tensor,
        dout: Tensor,
    ) -> Result<()> {
        self.contribute(x, |gpu, g, acc| {
            pool::maxpool2x2_backward(gpu, &dout, &argmax, g, acc)
        })
    }
}
