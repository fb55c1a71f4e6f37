//! Contrastive methods. Each is a small module implementing [`Method`]: how to record one training
//! step on a batch of image indices. Everything else — data, schedule, evaluation, checkpoints,
//! metrics — is the shared trainer's (`crate::train`).

pub mod cmc;
pub mod cpc;
pub mod dim;
pub mod moco;

use crate::autodiff::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::SequenceSet;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::kernels::augment::{self, Augment, GpuImages, SAMPLE_WORDS};
use crate::kernels::batchnorm::BatchNorm;
use crate::kernels::guard::{self, When};
use crate::memory::{Arena, Tensor};
use crate::nn::{Encoder, EncoderConfig, Mlp, Store, StoreBuilder};

pub use cmc::{Cmc, CmcConfig};
pub use cpc::{Cpc, CpcConfig, CpcInput};
pub use dim::{Dim, DimConfig};
pub use moco::{Moco, MocoConfig};

/// The training examples: images on the GPU, or sequences on the host (a method crops and
/// uploads its batch).
#[derive(Clone, Copy)]
pub enum Examples<'a> {
    Images(&'a GpuImages),
    Sequences(&'a SequenceSet),
}

impl Examples<'_> {
    pub fn len(&self) -> usize {
        match self {
            Examples::Images(im) => im.len,
            Examples::Sequences(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one step needs from the trainer.
pub struct StepInput<'a> {
    pub gpu: &'a Gpu,
    /// The step arena, reset by the method at the start of the step.
    pub arena: &'a mut Arena,
    pub examples: Examples<'a>,
    pub indices: &'a [u32],
    pub augment: &'a Augment,
    pub rng: &'a mut rand_chacha::ChaCha8Rng,
    pub step: u64,
    /// Record the whole step but raise the guard whatever the values, so that it changes no state
    /// (the trainer's diagnostic re-run of a non-finite step).
    pub dry_run: bool,
}

/// What one recorded step gives back: a small tensor [loss, contrastive accuracy, guard] (read by
/// the trainer with one readback; the guard word, as u32 bits, is non-zero when the step held a
/// non-finite value and its updates were skipped, see [`guard_step`]), and the learning rate used.
pub struct StepOutput {
    pub stats: Tensor,
    pub lr: f32,
}

pub trait Method {
    fn name(&self) -> &'static str;
    /// Records a whole training step — augmentation, forward, backward, update — without
    /// submitting it.
    fn record_step(&mut self, input: StepInput<'_>) -> Result<StepOutput>;
    /// Records the representation of images `x` (frozen: inference graph, BatchNorm in eval
    /// mode) for evaluation.
    fn features(&self, g: &mut Graph, x: Var) -> Result<Var>;
    /// Trained parameters (all networks with gradients).
    fn parameter_count(&self) -> usize;
    /// Adds everything needed to resume — networks, optimiser and method state — to `ck`.
    fn save(&self, gpu: &Gpu, ck: &mut Checkpoint) -> Result<()>;
    /// Restores what [`Method::save`] wrote, checking every shape.
    fn load(&mut self, gpu: &Gpu, ck: &Checkpoint) -> Result<()>;
    /// The guard skipped the last recorded step's updates on the GPU: takes back its host-side
    /// bookkeeping (optimiser step counts, ring pointers), so that the method is exactly as before
    /// that step.
    fn rewind(&mut self);
}

/// Records the end of a step's forward and backward passes: the statistics [loss, accuracy, guard]
/// of [`StepOutput`] and the non-finite guard, a flag word raised when the loss or any gradient
/// region in `grads` holds a NaN or an infinity (always with `dry_run`). Returns (stats, flag).
/// Every update recorded after it — [`crate::optim::Optim::step`], [`ring_write`],
/// [`Rollback::restore`] — reads the flag on the GPU and skips itself, so a non-finite step
/// changes no state and the step stays one submission.
pub fn guard_step(
    g: &mut Graph,
    loss: Var,
    accuracy: Tensor,
    grads: &[Region],
    dry_run: bool,
) -> Result<(Tensor, Region)> {
    let gpu = g.gpu;
    let _scope = gpu.scope(|| "non-finite guard".into());
    let flag = g.arena.tensor(gpu, [1])?.region;
    gpu.clear(flag);
    let loss = g.value(loss).region;
    guard::check_finite(gpu, loss, flag, 0, dry_run)?;
    for &r in grads {
        guard::check_finite(gpu, r, flag, 0, false)?;
    }
    let stats = g.arena.tensor(gpu, [3])?;
    gpu.copy(loss, stats.region.slice(0, 1))?;
    gpu.copy(accuracy.region, stats.region.slice(1, 1))?;
    gpu.copy(flag, stats.region.slice(2, 1))?;
    Ok((stats, flag))
}

/// State a step changes before its guard is known — BatchNorm running statistics (updated by the
/// forward pass), MoCo's key network (EMA at the start of the step): copied aside at the start of
/// every step, copied back when the guard trips.
pub struct Rollback {
    pairs: Vec<(Region, Region)>,
    _backup: Arena,
}

impl Rollback {
    pub fn new(gpu: &Gpu, live: &[Region]) -> Result<Rollback> {
        let mut arena = Arena::for_gpu("rollback", gpu);
        let pairs = live
            .iter()
            .map(|&r| Ok((r, arena.alloc(gpu, r.len)?)))
            .collect::<Result<_>>()?;
        Ok(Rollback {
            pairs,
            _backup: arena,
        })
    }

    /// Records the copies aside (at the start of a step, before anything changes the state).
    pub fn save(&self, gpu: &Gpu) -> Result<()> {
        self.pairs
            .iter()
            .try_for_each(|&(live, backup)| gpu.copy(live, backup))
    }

    /// Records copying the state back, which runs only when the guard `flag` is raised.
    pub fn restore(&self, gpu: &Gpu, flag: Region) -> Result<()> {
        let _scope = gpu.scope(|| "roll-back of a skipped step".into());
        self.pairs.iter().try_for_each(|&(live, backup)| {
            guard::copy_if(gpu, backup, live, flag, When::NonFinite)
        })
    }
}

/// An encoder followed by an MLP head, its parameters in one store.
pub struct Network {
    pub encoder: Encoder,
    pub head: Mlp,
    pub params: Store,
    pub buffers: Store,
}

impl Network {
    /// `head_dims` are the head's sizes after the encoder's feature dimension.
    pub fn new(
        gpu: &Gpu,
        config: &EncoderConfig,
        head_dims: &[usize],
        seed: u64,
    ) -> Result<Network> {
        let mut p = StoreBuilder::new(seed);
        let mut b = StoreBuilder::new(seed);
        let encoder = Encoder::new(&mut p, &mut b, config)?;
        let mut dims = vec![encoder.feature_dim()];
        dims.extend_from_slice(head_dims);
        let head = Mlp::new(&mut p, "head", &dims);
        Ok(Network {
            encoder,
            head,
            params: p.build(gpu, "parameters", true)?,
            buffers: b.build(gpu, "batchnorm statistics", false)?,
        })
    }

    /// A copy with the same architecture and values, without gradients (an EMA target).
    pub fn frozen_copy(&self, gpu: &Gpu) -> Result<Network> {
        Ok(Network {
            encoder: self.encoder.clone(),
            head: self.head.clone(),
            params: self.params.duplicate(gpu, "ema parameters", false)?,
            buffers: self
                .buffers
                .duplicate(gpu, "ema batchnorm statistics", false)?,
        })
    }

    /// Adds the parameters and BatchNorm statistics under `prefix.`.
    pub fn save(&self, gpu: &Gpu, ck: &mut Checkpoint, prefix: &str) -> Result<()> {
        ck.put_store(gpu, prefix, &self.params)?;
        ck.put_store(gpu, prefix, &self.buffers)
    }

    pub fn load(&self, gpu: &Gpu, ck: &Checkpoint, prefix: &str) -> Result<()> {
        ck.get_store(gpu, prefix, &self.params)?;
        ck.get_store(gpu, prefix, &self.buffers)
    }

    /// L2-normalised head output for images `x`, BatchNorm in train mode with `groups` groups.
    pub fn embed(&self, g: &mut Graph, x: Var, groups: usize) -> Result<Var> {
        let bn = BatchNorm {
            groups,
            ..BatchNorm::default()
        };
        let f = self
            .encoder
            .forward(g, &self.params, &self.buffers, x, &bn, true)?;
        let z = self.head.forward(g, &self.params, f.global)?;
        g.l2_normalize(z)
    }
}

/// Draws augmentation parameters for `views` views of the batch and records the augmented
/// images: one tensor per view, or with `stacked` one tensor [views·B, H, W, C] with the views one
/// after the other (one dispatch; what a network that embeds all views at once wants). All uploads
/// happen before anything is recorded, so the step stays one submission (an upload flushes
/// recorded work, see [`Gpu::upload`]).
pub fn augmented_views(
    input: &mut StepInput<'_>,
    views: usize,
    stacked: bool,
) -> Result<Vec<Tensor>> {
    let Examples::Images(im) = input.examples else {
        return Err(Error::Config(
            "this method trains on images; sequence datasets are for `train cpc`".into(),
        ));
    };
    let _scope = input.gpu.scope(|| "augmentation".into());
    let mut samples = vec![];
    for _ in 0..views {
        samples.push(
            input
                .augment
                .sample(input.rng, input.indices, im.height, im.width),
        );
    }
    let groups: Vec<Vec<u32>> = if stacked {
        vec![samples.concat()]
    } else {
        samples
    };
    let mut uploaded = vec![];
    for s in &groups {
        let st = input.arena.tensor(input.gpu, [s.len()])?;
        input.gpu.upload(st.region, s)?;
        uploaded.push(st);
    }
    let mut out = vec![];
    for (v, st) in uploaded.iter().enumerate() {
        let n = st.numel() / SAMPLE_WORDS;
        let x = input
            .arena
            .tensor(input.gpu, [n, im.height, im.width, im.channels])?;
        let seed = (input.step as u32)
            .wrapping_mul(2654435761)
            .wrapping_add(v as u32);
        augment::augment(input.gpu, im, st, &x, input.augment.noise, seed)?;
        out.push(x);
    }
    Ok(out)
}

/// Writes the rows of `rows` [B, d] into the ring buffer `ring` [K, d] at `*ptr`, wrapping around
/// so that any B works (MoCo's queue, a memory bank); a batch larger than the ring leaves only its
/// last K rows. Advances `*ptr`. The copies run only when the guard `flag` is not raised.
pub fn ring_write(
    gpu: &Gpu,
    rows: Tensor,
    ring: Tensor,
    ptr: &mut usize,
    flag: Region,
) -> Result<()> {
    let (k, d) = (ring.shape.dim(0), ring.shape.dim(1));
    let b = rows.shape.dim(0);
    let mut row = b.saturating_sub(k);
    while row < b {
        let n = (b - row).min(k - *ptr);
        guard::copy_if(
            gpu,
            rows.region.slice(row * d, n * d),
            ring.region.slice(*ptr * d, n * d),
            flag,
            When::Finite,
        )?;
        *ptr = (*ptr + n) % k;
        row += n;
    }
    Ok(())
}
