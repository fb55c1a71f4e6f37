//! 2-D convolution over NHWC tensors, bias and ReLU fused.

use super::tape::check_rank;
use super::{Graph, Op, Var};
use crate::error::Result;
use crate::kernels::conv::{self, Conv2d};
use crate::memory::Tensor;

impl Graph<'_> {
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
        check_rank("conv2d", "input", &xv, &["N", "H", "W", "C"])?;
        check_rank("conv2d", "weights", &wv, &["Cout", "KH", "KW", "Cin"])?;
        let d = xv.shape.dims();
        let (ho, wo) = geom.out_hw(d[1], d[2])?;
        let out = self.alloc([d[0], ho, wo, wv.shape.dim(0)])?;
        let bias = b.map(|b| self.value(b));
        conv::forward(self.gpu, &xv, &wv, bias.as_ref(), &out, &geom, relu)?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let op = Op::Conv2d {
            x,
            w,
            b,
            geom,
            relu,
        };
        Ok(self.record("conv2d", out, op, &inputs))
    }

    /// `dpre` is the gradient before the fused ReLU ([`Graph::masked`]).
    pub(super) fn conv2d_backward(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        geom: &Conv2d,
        dpre: Tensor,
    ) -> Result<()> {
        let (xv, wv) = (self.value(x), self.value(w));
        self.contribute(x, |gpu, g, acc| {
            conv::backward_input(gpu, &dpre, &wv, g, geom, acc)
        })?;
        let d = xv.shape.dims();
        let room = geom.weight_grad_scratch(self.gpu, d[0], d[1], d[2], d[3], wv.shape.dim(0));
        let scratch = self.alloc([room])?;
        self.contribute(w, |gpu, g, acc| {
            conv::backward_weight(gpu, &xv, &dpre, g, Some(&scratch), geom, acc)
        })?;
        if let Some(b) = b {
            self.contribute_bias(b, dpre)?;
        }
        Ok(())
    }
}
