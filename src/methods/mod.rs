//! Contrastive methods. Each is a small module implementing [`Method`]: its loss, from the step's
//! inputs to a scalar, and the state it owns (networks, optimisers, a queue or a bank). The step
//! around the loss — clearing gradients, the non-finite guard, optimiser updates, rolling back what
//! a skipped step changed — is the trainer's, in one place ([`crate::train::record_step`]); data,
//! schedule, evaluation, checkpoints and metrics are the trainer's and the run's too.

pub mod cmc;
pub mod cpc;
pub mod dim;
pub mod moco;

use crate::autodiff::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::{Augment, GpuImages, SequenceSet};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::kernels::augment::{self, SAMPLE_WORDS};
use crate::kernels::batchnorm::BatchNorm;
use crate::kernels::guard::{self, When};
use crate::memory::{Arena, Tensor};
use crate::nn::{Encoder, EncoderConfig, Mlp, Store, StoreBuilder};
use crate::optim::Optim;

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
    /// The step arena, reset by the trainer at the start of the step.
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

/// A method's loss as recorded on the step's graph.
pub struct Loss {
    /// The scalar the trainer differentiates.
    pub value: Var,
    /// Contrastive accuracy, a `[1]` tensor; none for methods without one (Deep InfoMax).
    pub accuracy: Option<Tensor>,
    /// Further statistics logged after [loss, accuracy, guard] (CPC: each offset's loss and
    /// accuracy).
    pub extra: Option<Tensor>,
}

/// A contrastive method: its loss and the state it owns. The trainer records the step around it
/// in this order: [`Method::inputs`], clearing the gradients of [`Method::trained`], copying
/// [`Method::rollback`] aside, [`Method::before_forward`], [`Method::loss`], backward, the guard,
/// (with several ranks: the gradients averaged, [`Method::exchange`]), the optimiser updates,
/// [`Method::after_guard`], and the roll-back when the guard is raised.
pub trait Method {
    fn name(&self) -> &'static str;
    /// Records the step's input tensors (augmented views, uploaded crops). Everything uploaded
    /// happens here, before anything else of the step is recorded, so the step stays one
    /// submission (an upload flushes recorded work, see [`Gpu::upload`]).
    fn inputs(&mut self, input: &mut StepInput<'_>) -> Result<Vec<Tensor>>;
    /// The trained parameter stores, each with its optimiser.
    fn trained(&mut self) -> Vec<(&Store, &mut Optim)>;
    /// State the step changes before its guard is known — BatchNorm running statistics (updated
    /// by the forward pass), an EMA target network: the trainer copies it aside at the start of
    /// every step and back when the guard is raised.
    fn rollback(&self) -> Vec<Region>;
    /// The part of [`Method::rollback`] that each rank of a data-parallel run changes from its
    /// own slice of the batch (BatchNorm running statistics), averaged over the ranks after every
    /// step as one process averages split-BN groups. All of it by default; a method leaves out
    /// what is the same on every rank anyway (an EMA of the averaged parameters), which would
    /// only cost traffic.
    fn averaged(&self) -> Vec<Region> {
        self.rollback()
    }
    /// Records the updates that precede the forward pass (MoCo's EMA of the key network).
    fn before_forward(&mut self, _gpu: &Gpu) -> Result<()> {
        Ok(())
    }
    /// Records the loss of the batch `inputs` (from [`Method::inputs`]).
    fn loss(&mut self, g: &mut Graph, inputs: &[Tensor]) -> Result<Loss>;
    /// Records the updates of the method's own state that follow a finite step (a queue or bank
    /// write); each reads the guard `flag` on the GPU and skips itself when it is raised.
    fn after_guard(&mut self, _gpu: &Gpu, _flag: Region) -> Result<()> {
        Ok(())
    }
    /// In a data-parallel run, between the step's backward pass and its updates (after
    /// [`Method::loss`], before [`Method::after_guard`]): gathers from every rank what the
    /// updates of the method's own state need from the whole global batch (MoCo's keys for its
    /// queue), so that every rank's state stays that of one process.
    fn exchange(&mut self, _gpu: &Gpu, _arena: &mut Arena) -> Result<()> {
        Ok(())
    }
    /// The guard skipped the last recorded step: takes back the host-side bookkeeping of
    /// [`Method::after_guard`] (ring pointers). The trainer rewinds the optimisers itself.
    fn rewind(&mut self) {}
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

    /// The encoder's frozen representation of images `x` (see [`Encoder::frozen`]).
    pub fn features(&self, g: &mut Graph, x: Var) -> Result<Var> {
        self.encoder.frozen(g, &self.params, &self.buffers, x)
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
    if crate::dist::size() == 1 {
        return Ok(out);
    }
    // Every rank draws and augments the whole global batch (cheap beside the network), so the
    // random choices and the per-pixel noise are those of one process, and keeps its own rows.
    let rows = crate::dist::shard(input.indices.len());
    let per_tensor = if stacked { views } else { 1 };
    out.iter()
        .map(|x| shard_rows(input.gpu, input.arena, x, per_tensor, rows.clone()))
        .collect()
}

/// Rows `rows` of each of the `parts` equal blocks of `x` (the views of a stacked batch), as a new
/// tensor with the blocks' rows one after the other.
fn shard_rows(
    gpu: &Gpu,
    arena: &mut Arena,
    x: &Tensor,
    parts: usize,
    rows: std::ops::Range<usize>,
) -> Result<Tensor> {
    let dims = x.shape.dims();
    let (n, row) = (dims[0] / parts, x.numel() / dims[0]);
    let mut shape = dims.to_vec();
    shape[0] = parts * rows.len();
    let out = arena.tensor(gpu, shape.as_slice())?;
    for p in 0..parts {
        gpu.copy(
            x.region.slice((p * n + rows.start) * row, rows.len() * row),
            out.region.slice(p * rows.len() * row, rows.len() * row),
        )?;
    }
    Ok(out)
}

/// Every rank's rows of `x` (`[b, …]`, the same shape on every rank), in rank order, uploaded as a
/// new `[N·b, …]` tensor of `arena`: what a rank's state updates need from the whole global batch.
pub fn gather_rows(gpu: &Gpu, arena: &mut Arena, x: &Tensor) -> Result<Tensor> {
    let all = crate::dist::all_gather(&gpu.read::<f32>(x.region)?);
    let mut shape = x.shape.dims().to_vec();
    shape[0] *= crate::dist::size();
    let out = arena.tensor(gpu, shape.as_slice())?;
    gpu.upload(out.region, &all)?;
    Ok(out)
}

/// A ring buffer of `[K, d]` rows (MoCo's queue, a memory bank): each write overwrites the
/// oldest rows, wrapping around so that any batch size works.
pub struct Ring {
    pub rows: Tensor,
    /// The next row to be overwritten.
    pub ptr: usize,
    /// `ptr` before the last write (see [`Ring::rewind`]).
    before: usize,
}

impl Ring {
    /// A ring of `rows` random unit rows of `dim` values drawn by `draw`, in `arena`.
    pub fn random(
        gpu: &Gpu,
        arena: &mut Arena,
        rows: usize,
        dim: usize,
        draw: impl FnMut() -> f32,
    ) -> Result<Ring> {
        // The device memory first: it is checked against the adapter's limits, so an oversized
        // ring is refused before its host copy is made.
        let tensor = arena.tensor(gpu, [rows, dim])?;
        let mut data: Vec<f32> = std::iter::repeat_with(draw).take(rows * dim).collect();
        crate::nn::normalize_rows(&mut data, dim);
        gpu.upload(tensor.region, &data)?;
        Ok(Ring {
            rows: tensor,
            ptr: 0,
            before: 0,
        })
    }

    /// Records writing the rows of each of `batches` ([B, d]) in turn at the pointer (a batch
    /// larger than the ring leaves only its last K rows) and advances it. The copies run only
    /// when the guard `flag` is not raised.
    pub fn write(&mut self, gpu: &Gpu, batches: &[Tensor], flag: Region) -> Result<()> {
        self.before = self.ptr;
        let (k, d) = (self.rows.shape.dim(0), self.rows.shape.dim(1));
        for rows in batches {
            let b = rows.shape.dim(0);
            let mut row = b.saturating_sub(k);
            while row < b {
                let n = (b - row).min(k - self.ptr);
                guard::copy_if(
                    gpu,
                    rows.region.slice(row * d, n * d),
                    self.rows.region.slice(self.ptr * d, n * d),
                    flag,
                    When::Finite,
                )?;
                self.ptr = (self.ptr + n) % k;
                row += n;
            }
        }
        Ok(())
    }

    /// Takes back the pointer of the last [`Ring::write`], whose copies the guard skipped.
    pub fn rewind(&mut self) {
        self.ptr = self.before;
    }

    /// Adds the rows as `{prefix}.{what}` and the pointer as `{prefix}.ptr`.
    pub fn save(&self, gpu: &Gpu, ck: &mut Checkpoint, prefix: &str, what: &str) -> Result<()> {
        let name = format!("{prefix}.{what}");
        ck.put_region(gpu, &name, self.rows.region, self.rows.shape.dims())?;
        ck.meta
            .insert(format!("{prefix}.ptr"), self.ptr.to_string());
        Ok(())
    }

    /// Restores what [`Ring::save`] wrote, checking the shape and the pointer.
    pub fn load(&mut self, gpu: &Gpu, ck: &Checkpoint, prefix: &str, what: &str) -> Result<()> {
        let name = format!("{prefix}.{what}");
        ck.get_region(gpu, &name, self.rows.region, self.rows.shape.dims())?;
        let ptr: usize = ck.meta_parse(&format!("{prefix}.ptr"))?;
        let k = self.rows.shape.dim(0);
        if ptr >= k {
            return Err(Error::Checkpoint {
                path: ck.origin.clone(),
                what: format!("{what} pointer {ptr} outside a {what} of {k}"),
            });
        }
        (self.ptr, self.before) = (ptr, ptr);
        Ok(())
    }
}
