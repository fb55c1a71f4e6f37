//! The elementwise family, one op parameterised by the kernel's [`Map`]: add, sub, mul, scale,
//! ReLU and a bias added to every row.

use super::tape::same_shape;
use super::{Graph, Op, Var};
use crate::error::{Error, Result};
use crate::kernels::elementwise::{self, Broadcast, Map};
use crate::memory::Tensor;

/// `alpha · a` (the second operand is not read).
fn scaled(alpha: f32) -> Map {
    Map::Affine { alpha, beta: 0.0 }
}

impl Graph<'_> {
    /// `out = m(a, b)` with `b` broadcast as `bcast` (unary maps pass `a` as `b`).
    fn map(&mut self, name: &'static str, m: Map, a: Var, b: Var, bcast: Broadcast) -> Result<Var> {
        let _scope = self.scope(name);
        let (av, bv) = (self.value(a), self.value(b));
        if bcast == Broadcast::Full {
            same_shape(name, &av, &bv)?;
        }
        let out = self.alloc(av.shape)?;
        elementwise::map(self.gpu, m, &av, &bv, bcast, &out, false)?;
        Ok(self.record(name, out, Op::Map { m, a, b, bcast }, &[a, b]))
    }

    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let m = Map::Axpby {
            alpha: 1.0,
            beta: 1.0,
        };
        self.map("add", m, a, b, Broadcast::Full)
    }

    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        let m = Map::Axpby {
            alpha: 1.0,
            beta: -1.0,
        };
        self.map("sub", m, a, b, Broadcast::Full)
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.map("mul", Map::Mul { alpha: 1.0 }, a, b, Broadcast::Full)
    }

    pub fn scale(&mut self, x: Var, s: f32) -> Result<Var> {
        self.map("scale", scaled(s), x, x, Broadcast::Full)
    }

    pub fn relu(&mut self, x: Var) -> Result<Var> {
        self.map("relu", Map::Relu, x, x, Broadcast::Full)
    }

    /// `x [rows, cols] + b [cols]` on every row.
    pub fn add_bias(&mut self, x: Var, b: Var) -> Result<Var> {
        let m = Map::Axpby {
            alpha: 1.0,
            beta: 1.0,
        };
        self.map("add_bias", m, x, b, Broadcast::Row)
    }

    pub(super) fn map_backward(
        &mut self,
        m: Map,
        a: Var,
        b: Var,
        bcast: Broadcast,
        out: Tensor,
        dout: Tensor,
    ) -> Result<()> {
        let full = Broadcast::Full;
        match (m, bcast) {
            (Map::Axpby { alpha, beta }, Broadcast::Full) => {
                self.contribute_map(a, scaled(alpha), dout, dout, full)?;
                self.contribute_map(b, scaled(beta), dout, dout, full)
            }
            // A bias: the only row broadcast the tape records.
            (Map::Axpby { alpha, beta: 1.0 }, Broadcast::Row) => {
                self.contribute_map(a, scaled(alpha), dout, dout, full)?;
                self.contribute_bias(b, dout)
            }
            (Map::Mul { alpha }, Broadcast::Full) => {
                let (av, bv) = (self.value(a), self.value(b));
                self.contribute_map(a, Map::Mul { alpha }, dout, bv, full)?;
                self.contribute_map(b, Map::Mul { alpha }, dout, av, full)
            }
            (Map::Affine { alpha, .. }, _) => {
                self.contribute_map(a, scaled(alpha), dout, dout, full)
            }
            // ReLU's output is positive exactly where its input is.
            (Map::Relu, _) => self.contribute_map(a, Map::MaskPositive, out, dout, full),
            _ => Err(Error::Config(format!(
                "the tape has no backward for the map {m:?} broadcast as {bcast:?}"
            ))),
        }
    }
}
