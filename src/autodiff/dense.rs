//! Matrix products: `matmul` and the fully connected layer, and the fused-ReLU mask their
//! backwards (and the convolution's) share.

use super::{Graph, Op, Var};
use crate::error::Result;
use crate::kernels::elementwise::{self, Broadcast, Map};
use crate::kernels::matmul::{self, Matmul, Trans};
use crate::memory::Tensor;

impl Graph<'_> {
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
        Ok(self.record("matmul", out, Op::MatMul { a, b, trans, alpha }, &[a, b]))
    }

    pub(super) fn matmul_backward(
        &mut self,
        a: Var,
        b: Var,
        trans: Trans,
        alpha: f32,
        dout: Tensor,
    ) -> Result<()> {
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
        Ok(())
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
        Ok(self.record("linear", out, Op::Linear { x, w, b, relu }, &inputs))
    }

    /// `dpre` is the gradient before the fused ReLU ([`Graph::masked`]).
    pub(super) fn linear_backward(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        dpre: Tensor,
    ) -> Result<()> {
        let (xv, wv) = (self.value(x), self.value(w));
        self.contribute_matmul(x, dpre, wv, Trans::NN, 1.0)?;
        self.contribute_matmul(w, dpre, xv, Trans::TN, 1.0)?;
        if let Some(b) = b {
            self.contribute_bias(b, dpre)?;
        }
        Ok(())
    }

    /// `grad(v) (+)= alpha · op(x) · op(y)`, with scratch for a split K loop where the matmul
    /// would use one.
    pub(super) fn contribute_matmul(
        &mut self,
        v: Var,
        x: Tensor,
        y: Tensor,
        trans: Trans,
        alpha: f32,
    ) -> Result<()> {
        if !self.needs_grad(v) {
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

    /// The gradient flowing into a fused ReLU's input (linear, conv2d): `dout` where the output
    /// is positive.
    pub(super) fn masked(&mut self, out: Tensor, dout: Tensor, relu: bool) -> Result<Tensor> {
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
}
