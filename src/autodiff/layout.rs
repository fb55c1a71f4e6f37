//! Ops that move or sum values without arithmetic per element: reshape, column blocks, and sums
//! and means along an axis.

use super::tape::fill;
use super::{Graph, Op, Var};
use crate::error::{Error, Result};
use crate::kernels::elementwise::{self, Broadcast, Direction, Map};
use crate::kernels::reduce::{self, Axis, Reduce};
use crate::memory::{Shape, Tensor};

impl Graph<'_> {
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
        Ok(self.record("reshape", xv.reshape(shape), Op::Reshape { x }, &[x]))
    }

    pub(super) fn reshape_backward(&mut self, x: Var, dout: Tensor) -> Result<()> {
        let d = dout.reshape(self.shape(x));
        let copy = Map::Affine {
            alpha: 1.0,
            beta: 0.0,
        };
        self.contribute_map(x, copy, d, d, Broadcast::Full)
    }

    fn reduce_op(&mut self, x: Var, mean: bool, axis: Axis) -> Result<Var> {
        let _scope = self.scope("reduce");
        let xv = self.value(x);
        let (rows, cols) = xv.shape.rows_cols();
        let out = self.alloc([if axis == Axis::Rows { rows } else { cols }])?;
        let op = if mean { Reduce::Mean } else { Reduce::Sum };
        reduce::reduce(self.gpu, &xv, &out, op, axis, false)?;
        Ok(self.record("reduce", out, Op::Reduce { x, mean, axis }, &[x]))
    }

    pub(super) fn reduce_backward(
        &mut self,
        x: Var,
        mean: bool,
        axis: Axis,
        dout: Tensor,
    ) -> Result<()> {
        let xv = self.value(x);
        let (rows, cols) = xv.shape.rows_cols();
        let (len, bcast) = match axis {
            Axis::Rows => (cols, Broadcast::Col),
            Axis::Cols => (rows, Broadcast::Row),
        };
        let alpha = if mean { 1.0 / len as f32 } else { 1.0 };
        self.contribute_map(x, Map::Broadcast { alpha }, xv, dout, bcast)
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

    /// Sum of all elements, as a one-element tensor.
    pub fn sum(&mut self, x: Var) -> Result<Var> {
        let n = self.shape(x).numel();
        let flat = self.reshape(x, [n, 1])?;
        self.sum_cols(flat)
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
        Ok(self.record("concat_cols", out, Op::ConcatCols { a, b }, &[a, b]))
    }

    pub(super) fn concat_cols_backward(&mut self, a: Var, b: Var, dout: Tensor) -> Result<()> {
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
        Ok(())
    }

    /// Columns `col0..col0 + width` of `x` [rows, cols].
    pub fn slice_cols(&mut self, x: Var, col0: usize, width: usize) -> Result<Var> {
        let _scope = self.scope("slice_cols");
        let xv = self.value(x);
        let (rows, _) = xv.shape.rows_cols();
        let out = self.alloc([rows, width])?;
        elementwise::copy_cols(self.gpu, &out, &xv, col0, Direction::FromWide, false)?;
        Ok(self.record("slice_cols", out, Op::SliceCols { x, col0 }, &[x]))
    }

    pub(super) fn slice_cols_backward(&mut self, x: Var, col0: usize, dout: Tensor) -> Result<()> {
        let shape = self.shape(x);
        self.contribute(x, |gpu, g, acc| {
            if !acc {
                // Only the block receives gradient: the rest of the first write is zero.
                fill(gpu, g, 0.0)?;
            }
            elementwise::copy_cols(
                gpu,
                &dout,
                &g.reshape(shape),
                col0,
                Direction::IntoWide,
                true,
            )
        })
    }
}
