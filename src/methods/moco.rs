//! MoCo v1/v2: a query network trained by InfoNCE against keys from an EMA copy of itself and a
//! queue of past keys (REFERENCE §1).
//!
//! Step order, as the reference implementation: EMA update of the key network → key forward
//! (BatchNorm in train mode, split into groups: the one-device stand-in for shuffle-BN) → logits
//! `[q·k⁺, q·queue] / τ` with the positive at column 0 → loss → backward through the query network
//! only → optimiser update → enqueue the keys (wrap-around, so any batch size works).
//!
//! Loss scaling: the mean over the batch of the per-row cross-entropy; with `symmetric` the mean of
//! the two directions (q₁ against k₂ and q₂ against k₁), both key batches enqueued.

use rand::SeedableRng;

use super::{
    augmented_views, guard_step, ring_write, Method, Network, Rollback, StepInput, StepOutput,
};
use crate::autodiff::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::elementwise::{self, Broadcast, Map};
use crate::kernels::ema::ema;
use crate::kernels::matmul::Trans;
use crate::kernels::reduce::{self, Axis, Reduce};
use crate::kernels::softmax_xent::Xent;
use crate::memory::{Arena, Tensor};
use crate::nn::EncoderConfig;
use crate::optim::{Optim, OptimConfig};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MocoConfig {
    /// Keys in the queue (K).
    pub queue: usize,
    /// EMA momentum m of the key network.
    pub momentum: f32,
    pub temperature: f32,
    /// Embedding dimension.
    pub dim: usize,
    /// MoCo v2's 2-layer MLP head instead of v1's linear one.
    pub mlp: bool,
    /// BatchNorm groups in the key network (split-BN); 1 disables.
    pub split_bn: usize,
    pub symmetric: bool,
}

impl Default for MocoConfig {
    fn default() -> Self {
        MocoConfig {
            queue: 4096,
            momentum: 0.99,
            temperature: 0.1,
            dim: 128,
            mlp: true,
            split_bn: 8,
            symmetric: false,
        }
    }
}

impl MocoConfig {
    pub fn validate(&self, batch: usize) -> Result<()> {
        if self.queue == 0 {
            return Err(Error::Config("--queue must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::Config(format!(
                "--momentum {} must be in [0, 1]",
                self.momentum
            )));
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(Error::Config(format!(
                "--temperature {} must be > 0",
                self.temperature
            )));
        }
        if self.dim == 0 {
            return Err(Error::Config("--dim must be at least 1".into()));
        }
        if self.split_bn == 0 || !batch.is_multiple_of(self.split_bn) {
            return Err(Error::Config(format!(
                "--split-bn {} must divide the batch size {batch}",
                self.split_bn
            )));
        }
        Ok(())
    }
}

pub struct Moco {
    pub config: MocoConfig,
    pub query: Network,
    pub key: Network,
    /// [K, dim], L2-normalised keys; row `ptr` is the next to be overwritten.
    pub queue: Tensor,
    pub ptr: usize,
    pub optim: Optim,
    /// The keys enqueued by the last step (for tests and diagnostics).
    pub last_keys: Vec<Tensor>,
    /// Positive index (0) for every row, sized for the batch.
    targets: Tensor,
    /// What a skipped step must put back: the key network and both networks' BatchNorm statistics.
    rollback: Rollback,
    /// The queue pointer before the last recorded step (see [`Method::rewind`]).
    ptr_before: usize,
    /// Holds the queue and the targets for the whole run.
    _state: Arena,
}

impl Moco {
    pub fn new(
        gpu: &Gpu,
        config: MocoConfig,
        encoder: &EncoderConfig,
        batch: usize,
        optimizer: &OptimConfig,
        seed: u64,
    ) -> Result<Moco> {
        config.validate(batch)?;
        let feat = *encoder.widths.last().unwrap_or(&0);
        let head: Vec<usize> = if config.mlp {
            vec![feat, config.dim]
        } else {
            vec![config.dim]
        };
        let query = Network::new(gpu, encoder, &head, seed)?;
        let key = query.frozen_copy(gpu)?;
        let mut persistent = Arena::for_gpu("moco state", gpu);
        // The queue starts as random unit vectors, as in the reference implementation.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x51ed);
        let mut q: Vec<f32> = (0..config.queue * config.dim)
            .map(|_| {
                let (u, v): (f32, f32) = (rand::Rng::random(&mut rng), rand::Rng::random(&mut rng));
                (-2.0 * (u.max(1e-7)).ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect();
        crate::eval::normalize_rows(&mut q, config.dim);
        let queue = persistent.upload(gpu, [config.queue, config.dim], &q)?;
        let targets = persistent.tensor(gpu, [batch])?;
        gpu.upload(targets.region, &vec![0u32; batch])?;
        let optim = Optim::new(gpu, &query.params, optimizer)?;
        gpu.name_region(queue.region, "MoCo's queue");
        let rollback = Rollback::new(
            gpu,
            &[key.params.values, query.buffers.values, key.buffers.values],
        )?;
        Ok(Moco {
            config,
            query,
            key,
            queue,
            ptr: 0,
            optim,
            last_keys: vec![],
            targets,
            rollback,
            ptr_before: 0,
            _state: persistent,
        })
    }

    /// InfoNCE of queries `q` against their positive keys `k` and the queue; returns (loss, accuracy).
    fn infonce(&self, g: &mut Graph, q: Var, k: Var) -> Result<(Var, Tensor)> {
        let b = g.shape(q).dim(0);
        let pos = g.mul(q, k)?;
        let pos = g.sum_rows(pos)?;
        let pos = g.reshape(pos, [b, 1])?;
        let queue = g.input(self.queue);
        let neg = g.matmul(q, queue, Trans::NT, 1.0)?;
        let logits = g.concat_cols(pos, neg)?;
        let targets = g.input(Tensor {
            region: self.targets.region.slice(0, b),
            shape: [b].into(),
        });
        let spec = Xent {
            temperature: self.config.temperature,
            mask_diagonal: false,
        };
        let (rows, hits) = g.softmax_xent(logits, targets, &spec)?;
        let loss = g.mean(rows)?;
        let acc = g.arena.tensor(g.gpu, [1])?;
        let hits = g.value(hits).reshape([b, 1]);
        reduce::reduce(g.gpu, &hits, &acc, Reduce::Mean, Axis::Cols, false)?;
        Ok((loss, acc))
    }
}

impl Method for Moco {
    fn name(&self) -> &'static str {
        "moco"
    }

    fn record_step(&mut self, mut input: StepInput<'_>) -> Result<StepOutput> {
        input.arena.reset();
        let gpu = input.gpu;
        let views = augmented_views(&mut input, 2, false)?;
        let grads = self
            .query
            .params
            .grads
            .ok_or_else(|| Error::Config("MoCo's query network has no gradients".into()))?;
        gpu.clear(grads);
        self.rollback.save(gpu)?;
        self.ptr_before = self.ptr;
        {
            let _scope = gpu.scope(|| "EMA of the key network".into());
            ema(
                gpu,
                self.key.params.values,
                self.query.params.values,
                self.config.momentum,
            )?;
        }

        let mut g = Graph::new(gpu, input.arena);
        let groups = self.config.split_bn;
        let x1 = g.input(views[0]);
        let x2 = g.input(views[1]);
        let q1 = self.query.embed(&mut g, x1, 1)?;
        let k2 = self.key.embed(&mut g, x2, groups)?;
        let (mut loss, acc) = self.infonce(&mut g, q1, k2)?;
        let mut keys = vec![g.value(k2)];
        if self.config.symmetric {
            let q2 = self.query.embed(&mut g, x2, 1)?;
            let k1 = self.key.embed(&mut g, x1, groups)?;
            let (loss2, acc2) = self.infonce(&mut g, q2, k1)?;
            let sum = g.add(loss, loss2)?;
            loss = g.scale(sum, 0.5)?;
            let mean = Map::Axpby {
                alpha: 0.5,
                beta: 0.5,
            };
            elementwise::map(gpu, mean, &acc, &acc2, Broadcast::Full, &acc, false)?;
            keys.push(g.value(k1));
        }
        g.backward(loss)?;
        let (stats, flag) = guard_step(&mut g, loss, acc, &[grads], input.dry_run)?;
        let lr = self.optim.step(gpu, &self.query.params, flag)?;
        for k in &keys {
            ring_write(gpu, *k, self.queue, &mut self.ptr, flag)?;
        }
        self.rollback.restore(gpu, flag)?;
        self.last_keys = keys;
        Ok(StepOutput { stats, lr })
    }

    fn parameter_count(&self) -> usize {
        self.query.params.count()
    }

    fn save(&self, gpu: &Gpu, ck: &mut Checkpoint) -> Result<()> {
        self.query.save(gpu, ck, "query")?;
        self.key.save(gpu, ck, "key")?;
        self.optim.save(gpu, ck, "optim")?;
        ck.put_region(
            gpu,
            "moco.queue",
            self.queue.region,
            self.queue.shape.dims(),
        )?;
        ck.meta.insert("moco.ptr".into(), self.ptr.to_string());
        Ok(())
    }

    fn load(&mut self, gpu: &Gpu, ck: &Checkpoint) -> Result<()> {
        self.query.load(gpu, ck, "query")?;
        self.key.load(gpu, ck, "key")?;
        self.optim.load(gpu, ck, "optim")?;
        ck.get_region(
            gpu,
            "moco.queue",
            self.queue.region,
            self.queue.shape.dims(),
        )?;
        self.ptr = ck.meta_parse("moco.ptr")?;
        if self.ptr >= self.config.queue {
            return Err(Error::Checkpoint {
                path: ck.origin.clone(),
                what: format!(
                    "queue pointer {} outside a queue of {}",
                    self.ptr, self.config.queue
                ),
            });
        }
        Ok(())
    }

    fn rewind(&mut self) {
        self.optim.rewind();
        self.ptr = self.ptr_before;
    }

    fn features(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let q = &self.query;
        crate::eval::encoder_features(&q.encoder, &q.params, &q.buffers)(g, x)
    }
}
