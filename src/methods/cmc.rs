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

use super::{augmented_views, gather_rows, Loss, Method, Network, Ring, StepInput};
use crate::autodiff::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::kernels::elementwise::{self, Broadcast, Map};
use crate::kernels::matmul::Trans;
use crate::kernels::reduce::{self, Axis, Reduce};
use crate::kernels::softmax_xent::Xent;
use crate::memory::{Arena, Tensor};
use crate::nn::{EncoderConfig, Store};
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
    pub bank: Option<Ring>,
    targets: Tensor,
    /// BT.601 RGB → YCbCr rows (channel-split mode).
    ycbcr: Option<Tensor>,
    /// The embeddings the last step writes into the bank.
    last: Option<Tensor>,
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
            let uniform = || rand::Rng::random_range(&mut rng, -1.0f32..1.0);
            Some(Ring::random(
                gpu,
                &mut state,
                config.bank,
                config.dim,
                uniform,
            )?)
        } else {
            None
        };
        Ok(Cmc {
            config,
            net,
            net2,
            optim,
            bank,
            targets,
            ycbcr,
            last: None,
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
        if let Some(bank) = &self.bank {
            let bank = g.input(bank.rows);
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

    fn inputs(&mut self, input: &mut StepInput<'_>) -> Result<Vec<Tensor>> {
        match self.config.views {
            Views::Augment => augmented_views(input, 2, true),
            Views::ChannelSplit => augmented_views(input, 1, false),
        }
    }

    fn trained(&mut self) -> Vec<(&Store, &mut Optim)> {
        std::iter::once(&self.net)
            .chain(&self.net2)
            .map(|n| &n.params)
            .zip(self.optim.iter_mut())
            .collect()
    }

    fn rollback(&self) -> Vec<Region> {
        std::iter::once(&self.net)
            .chain(&self.net2)
            .map(|n| n.buffers.values)
            .collect()
    }

    fn loss(&mut self, g: &mut Graph, views: &[Tensor]) -> Result<Loss> {
        let x = g.input(views[0]);
        let (loss, acc, z) = match (&self.net2, self.ycbcr) {
            (Some(net2), Some(m)) => {
                let (luma, chroma) = self.split(g, x, m)?;
                let za = self.net.embed(g, luma, 1)?;
                let zb = net2.embed(g, chroma, 1)?;
                let (l1, a1) = self.infonce(g, za, zb, false)?;
                let (l2, a2) = self.infonce(g, zb, za, false)?;
                let sum = g.add(l1, l2)?;
                let loss = g.scale(sum, 0.5)?;
                let mean = Map::Axpby {
                    alpha: 0.5,
                    beta: 0.5,
                };
                elementwise::map(g.gpu, mean, &a1, &a2, Broadcast::Full, &a1, false)?;
                (loss, a1, g.value(za))
            }
            _ => {
                let z = self.net.embed(g, x, 1)?;
                let (loss, acc) = self.infonce(g, z, z, true)?;
                (loss, acc, g.value(z))
            }
        };
        self.last = Some(z);
        Ok(Loss {
            value: loss,
            accuracy: Some(acc),
            extra: None,
        })
    }

    /// The bank takes every rank's embeddings (in rank order: the same rows as one process
    /// writes, in another order, which the loss does not see).
    fn exchange(&mut self, gpu: &Gpu, arena: &mut Arena) -> Result<()> {
        if let (Some(_), Some(z)) = (&self.bank, self.last) {
            self.last = Some(gather_rows(gpu, arena, &z)?);
        }
        Ok(())
    }

    fn after_guard(&mut self, gpu: &Gpu, flag: Region) -> Result<()> {
        match (&mut self.bank, self.last) {
            (Some(bank), Some(z)) => bank.write(gpu, &[z], flag),
            _ => Ok(()),
        }
    }

    fn rewind(&mut self) {
        if let Some(bank) = &mut self.bank {
            bank.rewind();
        }
    }

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
        match &self.bank {
            Some(bank) => bank.save(gpu, ck, "cmc", "bank"),
            None => Ok(()),
        }
    }

    fn load(&mut self, gpu: &Gpu, ck: &Checkpoint) -> Result<()> {
        self.net.load(gpu, ck, "query")?;
        if let Some(n2) = &self.net2 {
            n2.load(gpu, ck, "query2")?;
        }
        for (i, o) in self.optim.iter_mut().enumerate() {
            o.load(gpu, ck, &format!("optim{i}"))?;
        }
        match &mut self.bank {
            Some(bank) => bank.load(gpu, ck, "cmc", "bank"),
            None => Ok(()),
        }
    }

    /// In channel-split mode the representation is both encoders' features side by side, as CMC
    /// evaluates it.
    fn features(&self, g: &mut Graph, x: Var) -> Result<Var> {
        match (&self.net2, self.ycbcr) {
            (Some(net2), Some(m)) => {
                let (luma, chroma) = self.split(g, x, m)?;
                let a = self.net.features(g, luma)?;
                let b = net2.features(g, chroma)?;
                g.concat_cols(a, b)
            }
            _ => self.net.features(g, x),
        }
    }
}
