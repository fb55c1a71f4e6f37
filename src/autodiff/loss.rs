//! Losses whose forward kernel also writes their gradient (softmax cross-entropy, Deep InfoMax's
//! estimators) and CPC's scores.

use super::{Graph, Op, Var};
use crate::error::{Error, Result};
use crate::kernels::cpc::{self, Candidates, Offsets};
use crate::kernels::elementwise::{Broadcast, Map};
use crate::kernels::mi::{self, Estimator};
use crate::kernels::reduce::{self, Axis, Reduce};
use crate::kernels::softmax_xent::{self, Xent};
use crate::memory::Tensor;

impl Graph<'_> {
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
        let op = Op::SoftmaxXent { logits, dlogits };
        let loss = self.record("softmax_xent", loss, op, &[logits]);
        let correct = self.input(correct);
        Ok((loss, correct))
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
        let op = Op::MiEstimate { scores, dscores };
        Ok(self.record("mi_estimate", out, op, &[scores]))
    }

    /// The backward of a loss whose fused forward saved its gradient `saved`: that gradient
    /// times `dout` (one value per row for softmax_xent, a scalar for mi_estimate).
    pub(super) fn saved_grad_backward(
        &mut self,
        v: Var,
        saved: Tensor,
        dout: Tensor,
        bcast: Broadcast,
    ) -> Result<()> {
        self.contribute_map(v, Map::Mul { alpha: 1.0 }, saved, dout, bcast)
    }

    /// CPC's logits `[rows, B]`: the predictions `pred [B, T, K·D]` of offsets 1..=K scored
    /// against the encodings `z [B, T, D]` of every sequence at the predicted step (see
    /// [`crate::kernels::cpc`]).
    pub fn cpc_scores(&mut self, z: Var, pred: Var, k: usize) -> Result<(Var, Offsets)> {
        self.cpc_scores_with(z, pred, k, None)
    }

    /// CPC's logits `[rows, C]` against drawn candidates: row r's prediction scored against the
    /// encodings at the positions `candidates.idx[r, ·]` (see [`crate::kernels::cpc::Drawn`]).
    pub fn cpc_gather(
        &mut self,
        z: Var,
        pred: Var,
        k: usize,
        candidates: &Candidates,
    ) -> Result<(Var, Offsets)> {
        self.cpc_scores_with(z, pred, k, Some(*candidates))
    }

    fn cpc_scores_with(
        &mut self,
        z: Var,
        pred: Var,
        k: usize,
        candidates: Option<Candidates>,
    ) -> Result<(Var, Offsets)> {
        let _scope = self.scope("cpc_scores");
        let (zv, pv) = (self.value(z), self.value(pred));
        let offsets = Offsets::of(&zv, &pv, k)?;
        let cols = candidates.map_or(offsets.batch, |c| c.cols());
        let logits = self.alloc([offsets.rows(), cols])?;
        match &candidates {
            None => cpc::scores(self.gpu, &zv, &pv, &logits, &offsets)?,
            Some(c) => cpc::gather_scores(self.gpu, &zv, &pv, c, &logits, &offsets)?,
        }
        let op = Op::CpcScores {
            z,
            pred,
            offsets,
            candidates,
        };
        Ok((self.record("cpc_scores", logits, op, &[z, pred]), offsets))
    }

    pub(super) fn cpc_scores_backward(
        &mut self,
        z: Var,
        pred: Var,
        o: &Offsets,
        candidates: Option<Candidates>,
        dout: Tensor,
    ) -> Result<()> {
        let (zv, pv) = (self.value(z), self.value(pred));
        self.contribute(pred, |gpu, g, acc| match &candidates {
            None => cpc::grad_pred(gpu, &dout, &zv, g, o, acc),
            Some(c) => cpc::gather_grad_pred(gpu, &dout, &zv, c, g, o, acc),
        })?;
        self.contribute(z, |gpu, g, acc| match &candidates {
            None => cpc::grad_z(gpu, &dout, &pv, g, o, acc),
            Some(c) => cpc::gather_grad_z(gpu, &dout, &pv, c, g, o, acc),
        })
    }
}
