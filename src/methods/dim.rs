//! Deep InfoMax (local–global): the global vector of each image is scored against every location
//! of every image's intermediate feature map; same-image pairs are positives (REFERENCE §1).
//!
//! Both sides go through small "MI networks" into a shared space: the global one is an MLP, the
//! local one is the same MLP shape applied at every location (1×1 convolutions, which in NHWC are
//! plain matmuls over [N·M·M, C]). Scores are one GEMM, [N, d] · [N·M², d]ᵀ.

use super::{augmented_views, Loss, Method, StepInput};
use crate::autodiff::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::kernels::batchnorm::BatchNorm;
use crate::kernels::matmul::Trans;
use crate::kernels::mi::Estimator;
use crate::memory::Tensor;
use crate::nn::{Encoder, EncoderConfig, Mlp, Store, StoreBuilder};
use crate::optim::{Optim, OptimConfig};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DimConfig {
    pub estimator: Estimator,
    /// Dimension of the shared MI space.
    pub dim: usize,
    /// Encoder stage whose feature map is the local feature (default: the one before the last).
    pub local_stage: Option<usize>,
}

impl Default for DimConfig {
    fn default() -> Self {
        DimConfig {
            estimator: Estimator::Jsd,
            dim: 64,
            local_stage: None,
        }
    }
}

pub struct Dim {
    pub config: DimConfig,
    pub encoder: Encoder,
    global_net: Mlp,
    local_net: Mlp,
    pub params: Store,
    pub buffers: Store,
    pub optim: Optim,
    stage: usize,
    locs: usize,
}

impl Dim {
    pub fn new(
        gpu: &Gpu,
        config: DimConfig,
        enc: &EncoderConfig,
        optimizer: &OptimConfig,
        seed: u64,
    ) -> Result<Dim> {
        if config.dim == 0 {
            return Err(Error::Config("--dim must be at least 1".into()));
        }
        let mut p = StoreBuilder::new(seed);
        let mut b = StoreBuilder::new(seed);
        let encoder = Encoder::new(&mut p, &mut b, enc)?;
        let shapes = encoder.map_shapes();
        let stage = config.local_stage.unwrap_or(shapes.len().saturating_sub(2));
        let &(h, w, c) = shapes.get(stage).ok_or_else(|| {
            Error::Config(format!(
                "--local-stage {stage}: the encoder has {} stages",
                shapes.len()
            ))
        })?;
        let g = encoder.feature_dim();
        let global_net = Mlp::new(&mut p, "mi_global", &[g, g, config.dim]);
        let local_net = Mlp::new(&mut p, "mi_local", &[c, c, config.dim]);
        let params = p.build(gpu, "parameters", true)?;
        let buffers = b.build(gpu, "batchnorm statistics", false)?;
        let optim = Optim::new(gpu, &params, optimizer)?;
        Ok(Dim {
            config,
            encoder,
            global_net,
            local_net,
            params,
            buffers,
            optim,
            stage,
            locs: h * w,
        })
    }
}

impl Method for Dim {
    fn name(&self) -> &'static str {
        "dim"
    }

    fn inputs(&mut self, input: &mut StepInput<'_>) -> Result<Vec<Tensor>> {
        augmented_views(input, 1, false)
    }

    fn trained(&mut self) -> Vec<(&Store, &mut Optim)> {
        vec![(&self.params, &mut self.optim)]
    }

    fn rollback(&self) -> Vec<Region> {
        vec![self.buffers.values]
    }

    /// DIM has no contrastive accuracy to report.
    fn loss(&mut self, g: &mut Graph, views: &[Tensor]) -> Result<Loss> {
        let x = g.input(views[0]);
        let f = self.encoder.forward(
            g,
            &self.params,
            &self.buffers,
            x,
            &BatchNorm::default(),
            true,
        )?;
        let global = self.global_net.forward(g, &self.params, f.global)?;
        let local = f.maps[self.stage];
        let c = g.shape(local).dim(-1);
        let n = g.shape(local).dim(0);
        let local = g.reshape(local, [n * self.locs, c])?;
        let local = self.local_net.forward(g, &self.params, local)?;
        let scores = g.matmul(global, local, Trans::NT, 1.0)?;
        Ok(Loss {
            value: g.mi_estimate(scores, self.locs, self.config.estimator)?,
            accuracy: None,
            extra: None,
        })
    }

    fn parameter_count(&self) -> usize {
        self.params.count()
    }

    fn save(&self, gpu: &Gpu, ck: &mut Checkpoint) -> Result<()> {
        ck.put_store(gpu, "query", &self.params)?;
        ck.put_store(gpu, "query", &self.buffers)?;
        self.optim.save(gpu, ck, "optim")
    }

    fn load(&mut self, gpu: &Gpu, ck: &Checkpoint) -> Result<()> {
        ck.get_store(gpu, "query", &self.params)?;
        ck.get_store(gpu, "query", &self.buffers)?;
        self.optim.load(gpu, ck, "optim")
    }

    fn features(&self, g: &mut Graph, x: Var) -> Result<Var> {
        self.encoder.frozen(g, &self.params, &self.buffers, x)
    }
}
