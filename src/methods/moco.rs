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

use super::{augmented_views, gather_rows, Loss, Method, Network, Ring, StepInput};
use crate::autodiff::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::dist;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::kernels::elementwise::{self, Broadcast, Map};
use crate::kernels::ema::ema;
use crate::kernels::matmul::Trans;
use crate::kernels::reduce::{self, Axis, Reduce};
use crate::kernels::softmax_xent::Xent;
use crate::memory::{Arena, Tensor};
use crate::nn::{EncoderConfig, Store};
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
    /// BatchNorm groups in the key network (split-BN) over the global batch; 1 disables.
    pub split_bn: usize,
    /// BatchNorm groups in the query network over the global batch. A data-parallel run
    /// normalises each rank's slice on its own, so N ranks match N groups in one process.
    pub query_split_bn: usize,
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
            query_split_bn: 1,
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
        for (groups, flag) in [
            (self.split_bn, "--split-bn"),
            (self.query_split_bn, "--query-split-bn"),
        ] {
            if groups == 0 || !batch.is_multiple_of(groups) {
                return Err(Error::Config(format!(
                    "{flag} {groups} must divide the batch size {batch}"
                )));
            }
            dist::local_groups(groups, flag)?;
        }
        Ok(())
    }
}

pub struct Moco {
    pub config: MocoConfig,
    pub query: Network,
    pub key: Network,
    /// [K, dim], L2-normalised keys.
    pub queue: Ring,
    pub optim: Optim,
    /// The keys enqueued by the last step (for tests and diagnostics).
    pub last_keys: Vec<Tensor>,
    /// Positive index (0) for every row, sized for the batch.
    targets: Tensor,
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
        let gaussian = || {
            let (u, v): (f32, f32) = (rand::Rng::random(&mut rng), rand::Rng::random(&mut rng));
            (-2.0 * (u.max(1e-7)).ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        };
        let queue = Ring::random(gpu, &mut persistent, config.queue, config.dim, gaussian)?;
        let targets = persistent.tensor(gpu, [batch])?;
        gpu.upload(targets.region, &vec![0u32; batch])?;
        let optim = Optim::new(gpu, &query.params, optimizer)?;
        gpu.name_region(queue.rows.region, "MoCo's queue");
        Ok(Moco {
            config,
            query,
            key,
            queue,
            optim,
            last_keys: vec![],
            targets,
            _state: persistent,
        })
    }

    /// InfoNCE of queries `q` against their positive keys `k` and the queue; returns (loss, accuracy).
    fn infonce(&self, g: &mut Graph, q: Var, k: Var) -> Result<(Var, Tensor)> {
        let b = g.shape(q).dim(0);
        let pos = g.mul(q, k)?;
        let pos = g.sum_rows(pos)?;
        let pos = g.reshape(pos, [b, 1])?;
        let queue = g.input(self.queue.rows);
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

    fn inputs(&mut self, input: &mut StepInput<'_>) -> Result<Vec<Tensor>> {
        augmented_views(input, 2, false)
    }

    fn trained(&mut self) -> Vec<(&Store, &mut Optim)> {
        vec![(&self.query.params, &mut self.optim)]
    }

    /// The key network and both networks' BatchNorm statistics.
    fn rollback(&self) -> Vec<Region> {
        vec![
            self.key.params.values,
            self.query.buffers.values,
            self.key.buffers.values,
        ]
    }

    /// The BatchNorm statistics: the key network is an EMA of the averaged query network, the
    /// same on every rank.
    fn averaged(&self) -> Vec<Region> {
        vec![self.query.buffers.values, self.key.buffers.values]
    }

    fn before_forward(&mut self, gpu: &Gpu) -> Result<()> {
        let _scope = gpu.scope(|| "EMA of the key network".into());
        ema(
            gpu,
            self.key.params.values,
            self.query.params.values,
            self.config.momentum,
        )
    }

    fn loss(&mut self, g: &mut Graph, views: &[Tensor]) -> Result<Loss> {
        let groups = dist::local_groups(self.config.split_bn, "--split-bn")?;
        let query_groups = dist::local_groups(self.config.query_split_bn, "--query-split-bn")?;
        let x1 = g.input(views[0]);
        let x2 = g.input(views[1]);
        let q1 = self.query.embed(g, x1, query_groups)?;
        let k2 = self.key.embed(g, x2, groups)?;
        let (mut loss, acc) = self.infonce(g, q1, k2)?;
        let mut keys = vec![g.value(k2)];
        if self.config.symmetric {
            let q2 = self.query.embed(g, x2, query_groups)?;
            let k1 = self.key.embed(g, x1, groups)?;
            let (loss2, acc2) = self.infonce(g, q2, k1)?;
            let sum = g.add(loss, loss2)?;
            loss = g.scale(sum, 0.5)?;
            let mean = Map::Axpby {
                alpha: 0.5,
                beta: 0.5,
            };
            elementwise::map(g.gpu, mean, &acc, &acc2, Broadcast::Full, &acc, false)?;
            keys.push(g.value(k1));
        }
        self.last_keys = keys;
        Ok(Loss {
            value: loss,
            accuracy: Some(acc),
            extra: None,
        })
    }

    /// The queue takes every rank's keys, as the reference's `concat_all_gather` does.
    fn exchange(&mut self, gpu: &Gpu, arena: &mut Arena) -> Result<()> {
        self.last_keys = self
            .last_keys
            .iter()
            .map(|k| gather_rows(gpu, arena, k))
            .collect::<Result<_>>()?;
        Ok(())
    }

    fn after_guard(&mut self, gpu: &Gpu, flag: Region) -> Result<()> {
        self.queue.write(gpu, &self.last_keys, flag)
    }

    fn rewind(&mut self) {
        self.queue.rewind();
    }

    fn parameter_count(&self) -> usize {
        self.query.params.count()
    }

    fn save(&self, gpu: &Gpu, ck: &mut Checkpoint) -> Result<()> {
        self.query.save(gpu, ck, "query")?;
        self.key.save(gpu, ck, "key")?;
        self.optim.save(gpu, ck, "optim")?;
        self.queue.save(gpu, ck, "moco", "queue")
    }

    fn load(&mut self, gpu: &Gpu, ck: &Checkpoint) -> Result<()> {
        self.query.load(gpu, ck, "query")?;
        self.key.load(gpu, ck, "key")?;
        self.optim.load(gpu, ck, "optim")?;
        self.queue.load(gpu, ck, "moco", "queue")
    }

    fn features(&self, g: &mut Graph, x: Var) -> Result<Var> {
        self.query.features(g, x)
    }
}
