//! One training step, the same for every method: the method's inputs and loss, backward, the
//! non-finite guard, the optimiser updates and the method's own state updates, all recorded into
//! one submission. A step that holds a NaN or an infinity in its loss or gradients changes no state:
//! every update after the guard reads its flag on the GPU and skips itself, and what changed before
//! the guard was known is copied back. In a data-parallel run (several MPI ranks, [`crate::dist`])
//! the step is two submissions, with the gradients averaged over the ranks between them.

use crate::autodiff::Graph;
use crate::dist;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::kernels::elementwise::{self, Broadcast, Map};
use crate::kernels::guard::{self, When};
use crate::memory::{Arena, Tensor};
use crate::methods::{Loss, Method, StepInput};

/// What one recorded step gives back: a small tensor [loss, contrastive accuracy, guard, extra…]
/// (read by the trainer with one readback; the guard word, as u32 bits, is non-zero when the step
/// held a non-finite value and its updates were skipped; the accuracy is NaN for a method without
/// one; the extra values are [`Loss::extra`]), and the learning rate used.
pub struct StepOutput {
    pub stats: Tensor,
    pub lr: f32,
}

/// Records a whole training step of `method` — inputs, forward, backward, guard, updates —
/// without submitting it.
pub fn record_step(method: &mut dyn Method, mut input: StepInput<'_>) -> Result<StepOutput> {
    input.arena.reset();
    let gpu = input.gpu;
    let inputs = method.inputs(&mut input)?;
    let name = method.name();
    let grads = method
        .trained()
        .iter()
        .map(|(store, _)| {
            store.grads.ok_or_else(|| {
                Error::Config(format!("{name}'s trained parameters have no gradients"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for &r in &grads {
        gpu.clear(r);
    }
    let rollback = Rollback::save(gpu, input.arena, &method.rollback())?;
    method.before_forward(gpu)?;
    let mut g = Graph::new(gpu, input.arena);
    let loss = method.loss(&mut g, &inputs)?;
    g.backward(loss.value)?;
    let (stats, flag) = guard_step(&mut g, &loss, &grads, input.dry_run)?;
    if dist::size() > 1 && !input.dry_run {
        average_over_ranks(gpu, stats, flag, &grads, &method.averaged())?;
        method.exchange(gpu, input.arena)?;
    }
    let mut lr = 0.0;
    for (store, optim) in method.trained() {
        lr = optim.step(gpu, store, flag)?;
    }
    method.after_guard(gpu, flag)?;
    rollback.restore(gpu, flag)?;
    Ok(StepOutput { stats, lr })
}

/// Ends the first of a data-parallel step's two submissions (forward, backward, guard) and makes
/// every rank's state agree before the second (updates): the statistics and the gradients
/// become their means over the ranks — each rank's loss is the mean over its equal slice, so the
/// mean of those is the loss of one process on the global batch — and so do the running
/// statistics each rank's forward pass updated from its slice ([`Method::averaged`]), as
/// split-BN groups in one process. The guard flag is raised on
/// every rank when it is raised on any, so a non-finite value anywhere skips the step everywhere.
fn average_over_ranks(
    gpu: &Gpu,
    stats: Tensor,
    flag: Region,
    grads: &[Region],
    averaged: &[Region],
) -> Result<()> {
    let _scope = gpu.scope(|| "all-reduce over the ranks".into());
    let n = dist::size() as f32;
    let mut s: Vec<f32> = gpu.read(stats.region)?;
    let raised = dist::any(s[2].to_bits() != 0);
    s[2] = 0.0;
    dist::all_reduce_sum(&mut s);
    s.iter_mut().for_each(|v| *v /= n);
    s[2] = f32::from_bits(u32::from(raised));
    gpu.upload(stats.region, &s)?;
    gpu.upload(flag, &[u32::from(raised)])?;
    if raised {
        // Nothing is updated: the gradients and the rolled-back state need not agree.
        return Ok(());
    }
    for &r in grads.iter().chain(averaged.iter().filter(|r| r.len > 0)) {
        let mut values: Vec<f32> = gpu.read(r)?;
        dist::all_reduce_sum(&mut values);
        values.iter_mut().for_each(|v| *v /= n);
        gpu.upload(r, &values)?;
    }
    Ok(())
}

/// The guard skipped the last recorded step's updates on the GPU: takes back the host-side
/// bookkeeping (optimiser step counts, ring pointers), so that the method is exactly as before
/// that step.
pub fn rewind(method: &mut dyn Method) {
    for (_, optim) in method.trained() {
        optim.rewind();
    }
    method.rewind();
}

/// Records the end of a step's forward and backward passes: the statistics of [`StepOutput`] and
/// the non-finite guard, a flag word raised when the loss or any gradient region in `grads` holds
/// a NaN or an infinity (always with `dry_run`). Returns (stats, flag).
fn guard_step(
    g: &mut Graph,
    loss: &Loss,
    grads: &[Region],
    dry_run: bool,
) -> Result<(Tensor, Region)> {
    let gpu = g.gpu;
    let _scope = gpu.scope(|| "non-finite guard".into());
    let flag = g.arena.tensor(gpu, [1])?.region;
    gpu.clear(flag);
    let value = g.value(loss.value).region;
    guard::check_finite(gpu, value, flag, 0, dry_run)?;
    for &r in grads {
        guard::check_finite(gpu, r, flag, 0, false)?;
    }
    let accuracy = match loss.accuracy {
        Some(a) => a,
        // NaN marks it as not applicable (the guard checks the loss and the gradients, never the
        // accuracy).
        None => {
            let na = g.arena.tensor(gpu, [1])?;
            let fill = Map::Fill { alpha: f32::NAN };
            elementwise::map(gpu, fill, &na, &na, Broadcast::Full, &na, false)?;
            na
        }
    };
    let extra = loss.extra.map_or(0, |e| e.numel());
    let stats = g.arena.tensor(gpu, [3 + extra])?;
    gpu.copy(value, stats.region.slice(0, 1))?;
    gpu.copy(accuracy.region, stats.region.slice(1, 1))?;
    gpu.copy(flag, stats.region.slice(2, 1))?;
    if let Some(e) = loss.extra {
        gpu.copy(e.region, stats.region.slice(3, extra))?;
    }
    Ok((stats, flag))
}

/// The state a step changes before its guard is known, copied aside into the step arena at the
/// start of the step and copied back when the guard is raised.
struct Rollback {
    pairs: Vec<(Region, Region)>,
}

impl Rollback {
    /// Records the copies aside (before anything changes the state).
    fn save(gpu: &Gpu, arena: &mut Arena, live: &[Region]) -> Result<Rollback> {
        let mut pairs = vec![];
        for &r in live.iter().filter(|r| r.len > 0) {
            let backup = arena.alloc(gpu, r.len)?;
            gpu.copy(r, backup)?;
            pairs.push((r, backup));
        }
        Ok(Rollback { pairs })
    }

    /// Records copying the state back, which runs only when the guard `flag` is raised.
    fn restore(&self, gpu: &Gpu, flag: Region) -> Result<()> {
        let _scope = gpu.scope(|| "roll-back of a skipped step".into());
        self.pairs.iter().try_for_each(|&(live, backup)| {
            guard::copy_if(gpu, backup, live, flag, When::NonFinite)
        })
    }
}
