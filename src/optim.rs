//! Optimisers over a whole parameter store: state buffers with the store's layout, a weight-decay
//! mask (biases and BatchNorm parameters excluded), a learning-rate schedule, and one dispatch per
//! update (`kernels::optim`).

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::kernels::optim::{self as kernel, Optimizer, Schedule};
use crate::nn::Store;

/// Which optimiser, at what learning rate and weight decay, on what schedule.
#[derive(Clone, Copy, Debug)]
pub struct OptimConfig {
    pub kind: Optimizer,
    pub lr: f32,
    pub weight_decay: f32,
    pub schedule: Schedule,
}

pub struct Optim {
    pub kind: Optimizer,
    pub schedule: Schedule,
    pub base_lr: f32,
    pub weight_decay: f32,
    /// Momentum buffer (SGD) or first moment (Adam).
    pub state1: Region,
    /// Second moment (Adam); unused by SGD.
    pub state2: Region,
    mask: Region,
    /// Updates done so far.
    pub t: u32,
}

impl Optim {
    pub fn new(gpu: &Gpu, store: &Store, c: &OptimConfig) -> Result<Optim> {
        let OptimConfig {
            kind,
            lr: base_lr,
            weight_decay,
            schedule,
        } = *c;
        if !(base_lr > 0.0 && base_lr.is_finite()) {
            return Err(Error::Config(format!(
                "learning rate {base_lr} must be positive"
            )));
        }
        if weight_decay.is_nan() || weight_decay < 0.0 {
            return Err(Error::Config(format!(
                "weight decay {weight_decay} must be ≥ 0"
            )));
        }
        let len = store.values.len;
        let region = |what: &str| -> Result<Region> {
            Ok(Region {
                buffer: gpu.create_buffer(len as u64 * 4, what)?,
                offset: 0,
                len,
            })
        };
        let (state1, state2, mask) = (
            region("optimiser state")?,
            region("optimiser state")?,
            region("decay mask")?,
        );
        gpu.upload(mask, &store.decay_mask())?;
        gpu.name_region(state1, "optimiser state 1");
        gpu.name_region(state2, "optimiser state 2");
        Ok(Optim {
            kind,
            schedule,
            base_lr,
            weight_decay,
            state1,
            state2,
            mask,
            t: 0,
        })
    }

    /// The learning rate the next update will use.
    pub fn lr(&self) -> f32 {
        self.schedule.lr(self.base_lr, self.t as u64)
    }

    /// Records one update of `store` from its gradients, skipped on the GPU when word 0 of `guard`
    /// is raised (see [`crate::train::record_step`]); returns the learning rate used.
    pub fn step(&mut self, gpu: &Gpu, store: &Store, guard: Region) -> Result<f32> {
        let grads = store
            .grads
            .ok_or_else(|| Error::Config("optimising a store without gradients".into()))?;
        let _scope = gpu.scope(|| "optimiser update".into());
        let lr = self.lr();
        self.t += 1;
        kernel::step(
            gpu,
            &self.kind,
            store.values,
            grads,
            self.state1,
            self.state2,
            self.mask,
            lr,
            self.weight_decay,
            self.t,
            Some(guard),
        )?;
        Ok(lr)
    }

    /// Takes back the step count of the last [`Optim::step`], whose update the guard skipped.
    pub fn rewind(&mut self) {
        self.t = self.t.saturating_sub(1);
    }
}

impl Optim {
    /// Adds the optimiser state under `prefix.` (flat, in the parameter store's layout).
    pub fn save(&self, gpu: &Gpu, ck: &mut Checkpoint, prefix: &str) -> Result<()> {
        let n = [self.state1.len];
        ck.put_region(gpu, &format!("{prefix}.state1"), self.state1, &n)?;
        ck.put_region(gpu, &format!("{prefix}.state2"), self.state2, &n)?;
        ck.meta.insert(format!("{prefix}.t"), self.t.to_string());
        Ok(())
    }

    pub fn load(&mut self, gpu: &Gpu, ck: &Checkpoint, prefix: &str) -> Result<()> {
        let n = [self.state1.len];
        ck.get_region(gpu, &format!("{prefix}.state1"), self.state1, &n)?;
        ck.get_region(gpu, &format!("{prefix}.state2"), self.state2, &n)?;
        let t: u32 = ck.meta_parse(&format!("{prefix}.t"))?;
        // Adam's bias correction raises β to the power t as an i32.
        if t >= i32::MAX as u32 {
            return Err(Error::Checkpoint {
                path: ck.origin.clone(),
                what: format!("optimiser step count {t} is corrupt"),
            });
        }
        self.t = t;
        Ok(())
    }
}
