//! Two-view invariance learning (the CMC / AMDIM / SimCLR family).
//!
//! `Augment` mode: two augmented views of each image go through one network as a single batch of
//! 2N; the loss is InfoNCE over the 2N×2N similarity matrix with each row's own column masked and
//! the other view of the same image as the positive (2N−2 in-batch negatives; ln(2N−1) at
//! collapse). Every row is an anchor, so both directions are included; the loss is their mean.
//!
//! `ChannelSplit` mode (CMC's L vs ab): an augmented colour image is converted to a luma/chroma
//! space (BT.601 YCbCr) and split into Y and CbCr, each with its own encoder; the loss is the mean
//! of InfoNCE from Y to CbCr and from CbCr to Y over the N×N cross-view similarities.
//!
//! Optional memory bank: the last K detached embeddings are extra negatives for every row.

use rand::SeedableRng;

use super::{
    augmented_views, guard_step, ring_write, Method, Network, Rollback, StepInput, StepOutput,
};
use crate::autodiff::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::elementwise::{self, Broadcast, Map};
use crate::kernels::matmul::Trans;
use crate::kernels::reduce::{self, Axis, Reduce};
use crate::kernels::softmax_xent::Xent;
use crate::memory::{Arena, Tensor};
use crate::nn::EncoderConfig;
use crate::optim::{Optim, OptimConfig};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Views {
    /// Two augmentations of the same image, one shared network.
    Augment,
    /// Luma vs chroma channels of one augmented colour image, one network each.
    ChannelSplit,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CmcConfig {
    pub views: Views,
    pub temperature: f32,
    pub dim: usize,
    /// Memory-bank size (0: in-batch negatives only).
    pub bank: usize,
}

impl Default for CmcConfig {
    fn default() -> Self {
        CmcConfig {
            views: Views::Augment,
            temperature: 0.2,
            dim: 128,
            bank: 0,
        }
    }
}

pub struct Cmc {
    pub config: CmcConfig,
    /// The network of view 1 (and of both views in `Augment` mode).
    pub net: Network,
    /// The chroma network in `ChannelSplit` mode.
    pub net2: Option<Network>,
    pub optim: Vec<Optim>,
    pub bank: Option<Tensor>,
    pub ptr: usize,
    targets: Tensor,
    /// BT.601 RGB → YCbCr rows (channel-split mode).
    ycbcr: Option<Tensor>,
    /// The BatchNorm statistics, put back when the guard skips a step.
    rollback: Rollback,
    /// The bank pointer before the last recorded step (see [`Method::rewind`]).
    ptr_before: usize,
    _state: Arena,
}

impl Cmc {
    pub fn new(
        gpu: &Gpu,
        config: CmcConfig,
        enc: &EncoderConfig,
        batch: usize,
        optimizer: &OptimConfig,
        seed: u64,
    ) -> Result<Cmc> {
        if config.temperature.is_nan() || config.temperature <= 0.0 {
            return Err(Error::Config(format!(
                "--temperature {} must be > 0",
                config.temperature
            )));
        }
        let head = [*enc.widths.last().unwrap_or(&1), config.dim];
        let mut state = Arena::for_gpu("cmc state", gpu);
        let (net, net2, ycbcr, rows) = match config.views {
            Views::Augment => (Network::new(gpu, enc, &head, seed)?, None, None, 2 * batch),
            Views::ChannelSplit => {
                if enc.in_channels != 3 {
                    return Err(Error::Config(format!(
                        "channel-split views need colour images; this data has {} channel(s) (use --views augment)",
                        enc.in_channels
                    )));
                }
                let luma = EncoderConfig {
                    in_channels: 1,
                    ..enc.clone()
                };
                let chroma = EncoderConfig {
                    in_channels: 2,
                    ..enc.clone()
                };
                let m = [
                    0.299, 0.587, 0.114, //
                    -0.168_736, -0.331_264, 0.5, //
                    0.5, -0.418_688, -0.081_312,
                ];
                (
                    Network::new(gpu, &luma, &head, seed)?,
                    Some(Network::new(gpu, &chroma, &head, seed ^ 1)?),
                    Some(state.upload(gpu, [3, 3], &m)?),
                    batch,
                )
            }
        };
        let mut optim = vec![Optim::new(gpu, &net.params, optimizer)?];
        if let Some(n2) = &net2 {
            optim.push(Optim::new(gpu, &n2.params, optimizer)?);
        }
        let targets = state.tensor(gpu, [rows])?;
        let t: Vec<u32> = match config.views {
            Views::Augment => (0..rows as u32)
                .map(|i| (i + batch as u32) % rows as u32)
                .collect(),
            Views::ChannelSplit => (0..rows as u32).collect(),
        };
        gpu.upload(targets.region, &t)?;
        let bank = if config.bank > 0 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xba4c);
            let mut b: Vec<f32> = (0..config.bank * config.dim)
                .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
                .collect();
            crate::eval::normalize_rows(&mut b, config.dim);
            Some(state.upload(gpu, [config.bank, config.dim], &b)?)
        } else {
            None
        };
        let stats: Vec<_> = std::iter::once(&net)
            .chain(&net2)
            .map(|n| n.buffers.values)
            .collect();
        let rollback = Rollback::new(gpu, &stats)?;
        Ok(Cmc {
            config,
            net,
            net2,
            optim,
            bank,
            ptr: 0,
            targets,
            ycbcr,
            rollback,
            ptr_before: 0,
            _state: state,
        })
    }

    /// InfoNCE of `anchors` against `others` (+ the bank); returns (loss, accuracy tensor).
    fn infonce(
        &self,
        g: &mut Graph,
        anchors: Var,
        others: Var,
        mask: bool,
    ) -> Result<(Var, Tensor)> {
        let rows = g.shape(anchors).dim(0);
        let mut logits = g.matmul(anchors, others, Trans::NT, 1.0)?;
        if let Some(bank) = self.bank {
            let bank = g.input(bank);
            let extra = g.matmul(anchors, bank, Trans::NT, 1.0)?;
            logits = g.concat_cols(logits, extra)?;
        }
        let t = g.input(Tensor {
            region: self.targets.region.slice(0, rows),
            shape: [rows].into(),
        });
        let spec = Xent {
            temperature: self.config.temperature,
            mask_diagonal: mask,
        };
        let (per_row, hits) = g.softmax_xent(logits, t, &spec)?;
        let loss = g.mean(per_row)?;
        let acc = g.arena.tensor(g.gpu, [1])?;
        reduce::reduce(
            g.gpu,
            &g.value(hits).reshape([rows, 1]),
            &acc,
            Reduce::Mean,
            Axis::Cols,
            false,
        )?;
        Ok((loss, acc))
    }

    /// Y and CbCr images [N, H, W, 1] and [N, H, W, 2] of RGB images `x`.
    fn split(&self, g: &mut Graph, x: Var, m: Tensor) -> Result<(Var, Var)> {
        let d = g.shape(x);
        let (n, h, w) = (d.dim(0), d.dim(1), d.dim(2));
        let flat = g.reshape(x, [n * h * w, 3])?;
        let m = g.input(m);
        let yuv = g.matmul(flat, m, Trans::NT, 1.0)?;
        let luma = g.slice_cols(yuv, 0, 1)?;
        let chroma = g.slice_cols(yuv, 1, 2)?;
        Ok((
            g.reshape(luma, [n, h, w, 1])?,
            g.reshape(chroma, [n, h, w, 2])?,
        ))
    }
}

impl Method for Cmc {
    fn name(&self) -> &'static str {
        "cmc"
    }

    fn record_step(&mut self, mut input: StepInput<'_>) -> Result<StepOutput> {
        input.arena.reset();
        let gpu = input.gpu;
        let views = match self.config.views {
            Views::Augment => augmented_views(&mut input, 2, true)?,
            Views::ChannelSplit => augmented_views(&mut input, 1, false)?,
        };
        let grads: Vec<_> = std::iter::once(&self.net)
            .chain(&self.net2)
            .filter_map(|n| n.params.grads)
            .collect();
        for &r in &grads {
            gpu.clear(r);
        }
        self.rollback.save(gpu)?;
        self.ptr_before = self.ptr;
        let mut g = Graph::new(gpu, input.arena);
        let x = g.input(views[0]);
        let (loss, acc, z) = match (&self.net2, self.ycbcr) {
            (Some(net2), Some(m)) => {
                let (luma, chroma) = self.split(&mut g, x, m)?;
                let za = self.net.embed(&mut g, luma, 1)?;
                let zb = net2.embed(&mut g, chroma, 1)?;
                let (l1, a1) = self.infonce(&mut g, za, zb, false)?;
                let (l2, a2) = self.infonce(&mut g, zb, za, false)?;
                let sum = g.add(l1, l2)?;
                let loss = g.scale(sum, 0.5)?;
                elementwise::map(
                    gpu,
                    Map::Axpby {
                        alpha: 0.5,
                        beta: 0.5,
                    },
                    &a1,
                    &a2,
                    Broadcast::Full,
                    &a1,
                    false,
                )?;
                (loss, a1, g.value(za))
            }
            _ => {
                let z = self.net.embed(&mut g, x, 1)?;
                let (loss, acc) = self.infonce(&mut g, z, z, true)?;
                (loss, acc, g.value(z))
            }
        };
        g.backward(loss)?;
        let (stats, flag) = guard_step(&mut g, loss, acc, &grads, input.dry_run)?;
        let mut lr = 0.0;
        for (opt, net) in self
            .optim
            .iter_mut()
            .zip(std::iter::once(&self.net).chain(&self.net2))
        {
            lr = opt.step(gpu, &net.params, flag)?;
        }
        if let Some(bank) = self.bank {
            ring_write(gpu, z, bank, &mut self.ptr, flag)?;
        }
        self.rollback.restore(gpu, flag)?;
        Ok(StepOutput { stats, lr })
    }

    /// In channel-split mode the representation is both encoders' features side by side, as CMC
    /// evaluates it.
    fn parameter_count(&self) -> usize {
        self.net.params.count() + self.net2.as_ref().map_or(0, |n| n.params.count())
    }

    fn save(&self, gpu: &Gpu, ck: &mut Checkpoint) -> Result<()> {
        self.net.save(gpu, ck, "query")?;
        if let Some(n2) = &self.net2 {
            n2.save(gpu, ck, "query2")?;
        }
        for (i, o) in self.optim.iter().enumerate() {
            o.save(gpu, ck, &format!("optim{i}"))?;
        }
        if let Some(bank) = self.bank {
            ck.put_region(gpu, "cmc.bank", bank.region, bank.shape.dims())?;
        }
        ck.meta.insert("cmc.ptr".into(), self.ptr.to_string());
        Ok(())
    }

    fn load(&mut self, gpu: &Gpu, ck: &Checkpoint) -> Result<()> {
        self.net.load(gpu, ck, "query")?;
        if let Some(n2) = &self.net2 {
            n2.load(gpu, ck, "query2")?;
        }
        for (i, o) in self.optim.iter_mut().enumerate() {
            o.load(gpu, ck, &format!("optim{i}"))?;
        }
        if let Some(bank) = self.bank {
            ck.get_region(gpu, "cmc.bank", bank.region, bank.shape.dims())?;
        }
        self.ptr = ck.meta_parse("cmc.ptr")?;
        let rows = self.bank.map_or(1, |b| b.shape.dim(0));
        if self.ptr >= rows {
            return Err(Error::Checkpoint {
                path: ck.origin.clone(),
                what: format!("bank pointer {} outside a bank of {rows}", self.ptr),
            });
        }
        Ok(())
    }

    fn rewind(&mut self) {
        self.optim.iter_mut().for_each(Optim::rewind);
        self.ptr = self.ptr_before;
    }

    fn features(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let feats = |net: &Network, g: &mut Graph, x: Var| {
            crate::eval::encoder_features(&net.encoder, &net.params, &net.buffers)(g, x)
        };
        match (&self.net2, self.ycbcr) {
            (Some(net2), Some(m)) => {
                let (luma, chroma) = self.split(g, x, m)?;
                let a = feats(&self.net, g, luma)?;
                let b = feats(net2, g, chroma)?;
                g.concat_cols(a, b)
            }
            _ => feats(&self.net, g, x),
        }
    }
}
