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
use crate::gpu::Gpu;
use crate::kernels::augment::{self, Augment, GpuImages, SAMPLE_WORDS};
use crate::kernels::batchnorm::BatchNorm;
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
}

/// What one recorded step gives back: a small tensor whose first element is the loss and second
/// the contrastive accuracy (read by the trainer with one readback), and the learning rate used.
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
/// last K rows. Advances `*ptr`.
pub fn ring_write(gpu: &Gpu, rows: Tensor, ring: Tensor, ptr: &mut usize) -> Result<()> {
    let (k, d) = (ring.shape.dim(0), ring.shape.dim(1));
    let b = rows.shape.dim(0);
    let mut row = b.saturating_sub(k);
    while row < b {
        let n = (b - row).min(k - *ptr);
        gpu.copy(
            rows.region.slice(row * d, n * d),
            ring.region.slice(*ptr * d, n * d),
        )?;
        *ptr = (*ptr + n) % k;
        row += n;
    }
    Ok(())
}
