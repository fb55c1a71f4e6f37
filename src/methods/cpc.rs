//! Contrastive Predictive Coding (van den Oord et al., 2018) on sequences, audio and images.
//!
//! An encoder maps each step of a sequence to `z_t`; a GRU summarises `z_≤t` into the context
//! `c_t`; for each offset k = 1..K a bias-free linear map predicts `W_k·c_t`, scored against the
//! positive, the encoding `z_{t+k}` of the same sequence, and negatives ([`Negatives`]):
//! - `same-step` (the default): the other sequences of the batch at step t + k — one GEMM-shaped
//!   score per step;
//! - `random`: `--num-negatives` positions drawn at random, for every prediction, among all the
//!   batch's encodings but the positive (other steps of the same sequence and any step of the
//!   other sequences alike, the paper's mixed-sequence sampling); by default as many as the
//!   same-step scheme has (sequences per batch − 1), so both cost alike;
//! - `both`: the same-step candidates and the drawn ones in one softmax.
//!
//! The positions are drawn on the host from the run's seeded RNG and uploaded with the step's
//! inputs, so runs are reproducible and resume bit-identical; the scores and their gradients are
//! gathers (see [`crate::kernels::cpc`]). The loss is the softmax cross-entropy over the
//! candidates, averaged over every offset and valid step; the trainer logs it with each offset's
//! loss and accuracy.
//!
//! Encoders by input:
//! - feature frames (JapaneseVowels): an MLP applied to every frame;
//! - raw waveforms (each crop scaled to unit RMS): five strided 1-D convolutions (kernels 10, 8,
//!   4, 4, 4; strides 5, 4, 2, 2, 2; 160× down-sampling, the paper's), each followed by BatchNorm
//!   and ReLU as in the common PyTorch reimplementation, run as 1×k 2-D convolutions over
//!   `[B, 1, L, 1]`;
//! - images: a grid of overlapping patches, each through the CNN encoder; every column of the
//!   grid is a sequence running down the image, so the context predicts the rows below.
//!
//! The representation for evaluation is the context averaged over all steps (and, for images,
//! over all columns).

use rand::Rng;

use super::{augmented_views, Examples, Loss, Method, StepInput};
use crate::autodiff::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::kernels::batchnorm::BatchNorm;
use crate::kernels::conv::Conv2d;
use crate::kernels::cpc::{self, Candidates, Drawn, PatchGrid};
use crate::kernels::softmax_xent::Xent;
use crate::memory::{Arena, Tensor};
use crate::nn::layers::{BatchNormLayer, ConvLayer, Linear};
use crate::nn::{Encoder, EncoderConfig, Id, Init, Mlp, Store, StoreBuilder};
use crate::optim::{Optim, OptimConfig};

/// What the sequences are made of, and the encoder that goes with it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpcInput {
    /// Frames of `features` values (e.g. 12 LPC cepstra), encoded by a per-frame MLP.
    Frames { features: usize },
    /// A mono waveform, encoded by the strided convolution stack.
    Waveform,
    /// Images cut into a patch grid, each patch through the CNN encoder.
    Patches {
        grid: PatchGrid,
        encoder: EncoderConfig,
    },
}

/// The negatives each prediction is scored against.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Negatives {
    /// The other sequences at the predicted step.
    #[default]
    SameStep,
    /// Positions drawn at random from every sequence of the batch.
    Random,
    /// The same-step negatives and the drawn ones.
    Both,
}

/// Which negatives, and how many are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NegativeSampling {
    pub scheme: Negatives,
    /// Negatives drawn per prediction (random, both); none: the sequences per batch − 1.
    pub count: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CpcConfig {
    pub input: CpcInput,
    /// Offsets predicted (K).
    pub offsets: usize,
    /// Encoding size `z` (frames and waveforms; for patches it is the CNN's feature size).
    pub dim: usize,
    /// GRU state size (`c`).
    pub context: usize,
    /// Training crop in frames (frames) or samples (waveforms); ignored for patches.
    pub window: usize,
    #[serde(default)]
    pub negatives: NegativeSampling,
}

/// The waveform encoder's layers: (kernel, stride, padding).
const WAVE_LAYERS: [(usize, usize, usize); 5] =
    [(10, 5, 3), (8, 4, 2), (4, 2, 1), (4, 2, 1), (4, 2, 1)];

enum Enc {
    Frames(Mlp),
    Waveform(Vec<(ConvLayer, BatchNormLayer)>),
    Patches { grid: PatchGrid, encoder: Encoder },
}

pub struct Cpc {
    pub config: CpcConfig,
    enc: Enc,
    /// The GRU's input projections `x·W_ihᵀ + b_ih`.
    gru_in: Linear,
    w_hh: Id,
    b_hh: Id,
    /// The K prediction maps side by side, `[K·D, H]`, no bias.
    heads: Linear,
    pub params: Store,
    pub buffers: Store,
    pub optim: Optim,
    /// The positive of every logits row at the training shape.
    targets: Tensor,
    /// The scoring problem of a training batch.
    offsets: cpc::Offsets,
    /// Negatives drawn per prediction (none for same-step).
    drawn: Option<usize>,
    _state: Arena,
}

impl Cpc {
    pub fn new(
        gpu: &Gpu,
        config: CpcConfig,
        batch: usize,
        optimizer: &OptimConfig,
        seed: u64,
    ) -> Result<Cpc> {
        if config.dim == 0 || config.context == 0 {
            return Err(Error::Config(
                "--dim and --context must be at least 1".into(),
            ));
        }
        let mut p = StoreBuilder::new(seed);
        let mut b = StoreBuilder::new(seed);
        let (enc, d, steps, per_batch) = match &config.input {
            CpcInput::Frames { features } => {
                let mlp = Mlp::new(&mut p, "encoder", &[*features, config.dim, config.dim]);
                (Enc::Frames(mlp), config.dim, config.window, batch)
            }
            CpcInput::Waveform => {
                let mut layers = vec![];
                let mut len = config.window;
                let mut cin = 1;
                for (i, &(k, s, pad)) in WAVE_LAYERS.iter().enumerate() {
                    let geom = Conv2d {
                        kh: 1,
                        kw: k,
                        stride: (1, s),
                        pad: (0, pad),
                    };
                    len = geom
                        .out_hw(1, len)
                        .map_err(|_| {
                            Error::Config(format!(
                                "--window {} samples is too short for the 160× down-sampling encoder",
                                config.window
                            ))
                        })?
                        .1;
                    let name = format!("encoder.conv{i}");
                    let conv = ConvLayer::new(&mut p, &name, cin, config.dim, geom, false);
                    let bn =
                        BatchNormLayer::new(&mut p, &mut b, &format!("encoder.bn{i}"), config.dim);
                    layers.push((conv, bn));
                    cin = config.dim;
                }
                (Enc::Waveform(layers), config.dim, len, batch)
            }
            CpcInput::Patches { grid, encoder } => {
                let (rows, cols) = grid.grid(encoder.height, encoder.width)?;
                let patch_cfg = EncoderConfig {
                    height: grid.size,
                    width: grid.size,
                    ..encoder.clone()
                };
                let e = Encoder::new(&mut p, &mut b, &patch_cfg)?;
                let d = e.feature_dim();
                let enc = Enc::Patches {
                    grid: *grid,
                    encoder: e,
                };
                (enc, d, rows, batch * cols)
            }
        };
        if config.offsets == 0 || config.offsets >= steps || config.offsets > cpc::MAX_OFFSETS {
            return Err(Error::Config(format!(
                "--offsets {} must be between 1 and {} for sequences of {steps} steps",
                config.offsets,
                (steps.max(1) - 1).min(cpc::MAX_OFFSETS)
            )));
        }
        let h = config.context;
        let gru_in = Linear::new(&mut p, "context.gru.ih", d, 3 * h, true);
        // The recurrent weights and bias as PyTorch's GRU initialises them, uniform in ±1/√H
        // (the input projection is a Linear with its default init).
        let init = Init::Uniform {
            bound: 1.0 / (h as f32).sqrt(),
        };
        let w_hh = p.add("context.gru.weight_hh", [3 * h, h], init, true);
        let b_hh = p.add("context.gru.bias_hh", [3 * h], init, false);
        let heads = Linear::new(&mut p, "predict", h, config.offsets * d, false);
        let params = p.build(gpu, "parameters", true)?;
        let buffers = b.build(gpu, "batchnorm statistics", false)?;
        let optim = Optim::new(gpu, &params, optimizer)?;
        let mut state = Arena::for_gpu("cpc targets", gpu);
        let offsets = cpc::Offsets {
            batch: per_batch,
            steps,
            dim: d,
            k: config.offsets,
        };
        let drawn = drawn_negatives(&config.negatives, per_batch, &offsets, gpu)?;
        let targets = state.tensor(gpu, [offsets.rows()])?;
        // Drawn candidates alone put the positive first; otherwise it is among the same-step ones.
        let positives = match config.negatives.scheme {
            Negatives::Random => vec![0; offsets.rows()],
            Negatives::SameStep | Negatives::Both => offsets.targets(),
        };
        gpu.upload(targets.region, &positives)?;
        Ok(Cpc {
            config,
            enc,
            gru_in,
            w_hh,
            b_hh,
            heads,
            params,
            buffers,
            optim,
            targets,
            offsets,
            drawn,
            _state: state,
        })
    }

    /// Encodings `[sequences, steps, D]` of a batch: frames `[B, T, F]`, waveforms `[B, L]`, or
    /// images `[N, H, W, C]`.
    fn encode(&self, g: &mut Graph, x: Var, train: bool) -> Result<Var> {
        let shape = g.shape(x);
        match &self.enc {
            Enc::Frames(mlp) => {
                if shape.rank() != 3 {
                    return Err(Error::shape(
                        "cpc frames",
                        format!("input {shape:?} must be [B, T, features]"),
                    ));
                }
                let (b, t, f) = (shape.dim(0), shape.dim(1), shape.dim(2));
                let x = g.reshape(x, [b * t, f])?;
                let z = mlp.forward(g, &self.params, x)?;
                g.reshape(z, [b, t, self.config.dim])
            }
            Enc::Waveform(layers) => {
                // Recordings differ in level by orders of magnitude: every crop is scaled to unit
                // RMS (L2 norm √L) before the convolutions, in training and evaluation alike.
                let (b, l) = shape.rows_cols();
                let x = g.reshape(x, [b, l])?;
                let x = g.l2_normalize(x)?;
                let x = g.scale(x, (l as f32).sqrt())?;
                let mut h = g.reshape(x, [b, 1, l, 1])?;
                for (conv, bn) in layers {
                    h = conv.forward(g, &self.params, h, false)?;
                    let bn_relu = BatchNorm {
                        relu: true,
                        ..BatchNorm::default()
                    };
                    h = bn.forward(g, &self.params, &self.buffers, h, &bn_relu, train)?;
                }
                let d = g.shape(h).dims().to_vec();
                g.reshape(h, [b, d[2], d[3]])
            }
            Enc::Patches { grid, encoder } => {
                if shape.rank() != 4 {
                    return Err(Error::shape(
                        "cpc patches",
                        format!("input {shape:?} must be [N, H, W, C]"),
                    ));
                }
                let d = shape.dims();
                let (rows, cols) = grid.grid(d[1], d[2])?;
                let patches = g
                    .arena
                    .tensor(g.gpu, [d[0] * cols * rows, grid.size, grid.size, d[3]])?;
                cpc::patches(g.gpu, &g.value(x), &patches, grid)?;
                let p = g.input(patches);
                let f = encoder.forward(
                    g,
                    &self.params,
                    &self.buffers,
                    p,
                    &BatchNorm::default(),
                    train,
                )?;
                g.reshape(f.global, [d[0] * cols, rows, encoder.feature_dim()])
            }
        }
    }

    /// The GRU context `[sequences, steps, H]` over encodings `z [sequences, steps, D]`.
    fn context(&self, g: &mut Graph, z: Var) -> Result<Var> {
        let d = g.shape(z).dims().to_vec();
        let (b, t) = (d[0], d[1]);
        let flat = g.reshape(z, [b * t, d[2]])?;
        let gx = self.gru_in.forward(g, &self.params, flat, false)?;
        let gx = g.reshape(gx, [b, t, 3 * self.config.context])?;
        let w = self.params.var(g, self.w_hh);
        let bias = self.params.var(g, self.b_hh);
        g.gru(gx, w, bias)
    }

    /// Random training crops `[B, window, dim]` of the batch's sequences.
    fn crops(&self, input: &mut StepInput<'_>) -> Result<Tensor> {
        let Examples::Sequences(set) = input.examples else {
            return Err(Error::Config(
                "CPC on frames or waveforms trains on a sequence dataset (--data japanese-vowels or wav)"
                    .into(),
            ));
        };
        let w = self.config.window;
        let mut data = Vec::with_capacity(input.indices.len() * w * set.dim);
        for &i in input.indices {
            let frames = set.frames(i as usize);
            if frames < w {
                return Err(Error::Config(format!(
                    "sequence {i} has {frames} frames, shorter than the --window of {w}"
                )));
            }
            let start = input.rng.random_range(0..=frames - w);
            data.extend_from_slice(&set.seqs[i as usize][start * set.dim..(start + w) * set.dim]);
        }
        let b = input.indices.len();
        match self.enc {
            Enc::Waveform(_) => input.arena.upload(input.gpu, [b, w], &data),
            _ => input.arena.upload(input.gpu, [b, w, set.dim], &data),
        }
    }
}

/// The negatives drawn per prediction (none for same-step), checked: at least one, and the
/// candidates of a batch within one storage binding.
fn drawn_negatives(
    n: &NegativeSampling,
    per_batch: usize,
    o: &cpc::Offsets,
    gpu: &Gpu,
) -> Result<Option<usize>> {
    let count = match (n.scheme, n.count) {
        (Negatives::SameStep, None) => return Ok(None),
        (Negatives::SameStep, Some(_)) => {
            return Err(Error::Config(
                "--num-negatives applies to --negatives random or both".into(),
            ))
        }
        (_, Some(0)) => return Err(Error::Config("--num-negatives must be at least 1".into())),
        (_, count) => count.unwrap_or(per_batch.saturating_sub(1).max(1)),
    };
    let words = o.rows() as u64 * (count as u64 + 1);
    if 4 * words > gpu.max_binding() {
        return Err(Error::Config(format!(
            "--num-negatives {count}: {} predictions per batch would need {} MiB of candidate indices, more than the adapter binds; draw fewer",
            o.rows(),
            (4 * words) >> 20
        )));
    }
    Ok(Some(count))
}

impl Method for Cpc {
    fn name(&self) -> &'static str {
        "cpc"
    }

    /// The batch, then the drawn candidates' three tensors (see [`Candidates`]) when the scheme
    /// draws. The candidates are drawn and uploaded first: augmentation records work, which an
    /// upload would flush.
    fn inputs(&mut self, input: &mut StepInput<'_>) -> Result<Vec<Tensor>> {
        let candidates = match self.drawn {
            Some(count) => {
                let with_positive = self.config.negatives.scheme == Negatives::Random;
                let drawn = Drawn::draw(&self.offsets, count, with_positive, input.rng);
                Some(drawn.upload(input.gpu, input.arena, &self.offsets)?)
            }
            None => None,
        };
        let mut inputs = match self.enc {
            Enc::Patches { .. } => augmented_views(input, 1, false)?,
            _ => vec![self.crops(input)?],
        };
        if let Some(c) = candidates {
            inputs.extend([c.idx, c.starts, c.entries]);
        }
        Ok(inputs)
    }

    fn trained(&mut self) -> Vec<(&Store, &mut Optim)> {
        vec![(&self.params, &mut self.optim)]
    }

    /// The BatchNorm statistics (waveform and patch encoders).
    fn rollback(&self) -> Vec<Region> {
        vec![self.buffers.values]
    }

    /// Logs each offset's loss and accuracy after the overall ones.
    fn loss(&mut self, g: &mut Graph, inputs: &[Tensor]) -> Result<Loss> {
        let x = g.input(inputs[0]);
        let z = self.encode(g, x, true)?;
        let c = self.context(g, z)?;
        let d = g.shape(c).dims().to_vec();
        let flat = g.reshape(c, [d[0] * d[1], d[2]])?;
        let pred = self.heads.forward(g, &self.params, flat, false)?;
        let pred = g.reshape(pred, [d[0], d[1], self.heads.out_features])?;
        let k = self.config.offsets;
        let candidates = match inputs {
            [_, idx, starts, entries] => Some(Candidates {
                idx: *idx,
                starts: *starts,
                entries: *entries,
            }),
            _ => None,
        };
        let (logits, o) = match (self.config.negatives.scheme, candidates) {
            (Negatives::SameStep, None) => g.cpc_scores(z, pred, k)?,
            (Negatives::Random, Some(c)) => g.cpc_gather(z, pred, k, &c)?,
            (Negatives::Both, Some(c)) => {
                let (same, o) = g.cpc_scores(z, pred, k)?;
                let (drawn, _) = g.cpc_gather(z, pred, k, &c)?;
                (g.concat_cols(same, drawn)?, o)
            }
            (scheme, _) => {
                return Err(Error::Config(format!(
                    "cpc: {scheme:?} negatives with {} input tensors",
                    inputs.len()
                )))
            }
        };
        if o != self.offsets {
            return Err(Error::shape(
                "cpc",
                format!(
                    "a batch of {} sequences of {} steps, built for {} of {}",
                    o.batch, o.steps, self.offsets.batch, self.offsets.steps
                ),
            ));
        }
        let targets = g.input(self.targets);
        let spec = Xent {
            temperature: 1.0,
            mask_diagonal: false,
        };
        let (rows, hits) = g.softmax_xent(logits, targets, &spec)?;
        let loss = g.mean(rows)?;
        let per_offset = g.arena.tensor(g.gpu, [2 + 2 * o.k])?;
        cpc::offset_stats(g.gpu, &g.value(rows), &g.value(hits), &per_offset, &o)?;
        let slice = |start, len| Tensor {
            region: per_offset.region.slice(start, len),
            shape: [len].into(),
        };
        Ok(Loss {
            value: loss,
            accuracy: Some(slice(1, 1)),
            extra: Some(slice(2, 2 * o.k)),
        })
    }

    /// The context averaged over every step (and every column of an image's patch grid).
    fn features(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let n = g.shape(x).dim(0);
        let z = self.encode(g, x, false)?;
        let c = self.context(g, z)?;
        let d = g.shape(c).dims().to_vec();
        let per_example = d[0] * d[1] / n;
        let c = g.reshape(c, [n, per_example, 1, d[2]])?;
        g.avg_pool_global(c)
    }

    fn parameter_count(&self) -> usize {
        self.params.count()
    }

    fn save(&self, gpu: &Gpu, ck: &mut Checkpoint) -> Result<()> {
        ck.put_store(gpu, "cpc", &self.params)?;
        ck.put_store(gpu, "cpc", &self.buffers)?;
        self.optim.save(gpu, ck, "optim")
    }

    fn load(&mut self, gpu: &Gpu, ck: &Checkpoint) -> Result<()> {
        ck.get_store(gpu, "cpc", &self.params)?;
        ck.get_store(gpu, "cpc", &self.buffers)?;
        self.optim.load(gpu, ck, "optim")
    }
}
