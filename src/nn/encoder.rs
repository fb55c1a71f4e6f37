//! The CNN encoder: conv-BN-ReLU stages, each after the first halving the resolution with a
//! stride-2 convolution, optional residual blocks, then global average pooling.
//!
//! Sized for 28×28 (MNIST family) and 32×32 (CIFAR) inputs: the default widths [16, 32, 64] give
//! 7×7 (resp. 8×8) local feature maps and a 64-d global feature (3.8 MFLOP per 28×28 image).

use super::layers::{BatchNormLayer, ConvLayer};
use super::{Store, StoreBuilder};
use crate::autodiff::{Graph, Var};
use crate::error::{Error, Result};
use crate::kernels::batchnorm::BatchNorm;
use crate::kernels::conv::Conv2d;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EncoderConfig {
    pub height: usize,
    pub width: usize,
    pub in_channels: usize,
    /// Output channels of each stage; stages after the first downsample by 2.
    pub widths: Vec<usize>,
    /// Residual blocks (two 3×3 conv-BN pairs and a skip) after each stage's first conv.
    pub residual_blocks: usize,
}

impl EncoderConfig {
    pub fn small(height: usize, width: usize, in_channels: usize) -> Self {
        EncoderConfig {
            height,
            width,
            in_channels,
            widths: vec![16, 32, 64],
            residual_blocks: 0,
        }
    }
}

const K3: Conv2d = Conv2d {
    kh: 3,
    kw: 3,
    stride: (1, 1),
    pad: (1, 1),
};
const K3_S2: Conv2d = Conv2d {
    stride: (2, 2),
    ..K3
};

#[derive(Clone, Debug)]
struct ConvBn {
    conv: ConvLayer,
    bn: BatchNormLayer,
}

impl ConvBn {
    fn new(
        p: &mut StoreBuilder,
        b: &mut StoreBuilder,
        name: &str,
        cin: usize,
        cout: usize,
        geom: Conv2d,
    ) -> Self {
        ConvBn {
            conv: ConvLayer::new(p, &format!("{name}.conv"), cin, cout, geom, false),
            bn: BatchNormLayer::new(p, b, &format!("{name}.bn"), cout),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        g: &mut Graph,
        ps: &Store,
        bs: &Store,
        x: Var,
        bn: &BatchNorm,
        train: bool,
        relu: bool,
    ) -> Result<Var> {
        let y = self.conv.forward(g, ps, x, false)?;
        self.bn
            .forward(g, ps, bs, y, &BatchNorm { relu, ..*bn }, train)
    }
}

#[derive(Clone, Debug)]
struct Stage {
    down: ConvBn,
    blocks: Vec<[ConvBn; 2]>,
}

/// What the encoder gives: every stage's feature map (NHWC) and the pooled global vector [N, C].
pub struct Features {
    pub maps: Vec<Var>,
    pub global: Var,
}

/// The encoder's architecture: ids of its tensors in the model's parameter and buffer stores.
#[derive(Clone, Debug)]
pub struct Encoder {
    pub config: EncoderConfig,
    stages: Vec<Stage>,
}

impl Encoder {
    pub fn new(
        p: &mut StoreBuilder,
        b: &mut StoreBuilder,
        config: &EncoderConfig,
    ) -> Result<Encoder> {
        if config.widths.is_empty() || config.widths.contains(&0) || config.in_channels == 0 {
            return Err(Error::Config(format!(
                "encoder widths {:?} and input channels {} must be non-empty and positive",
                config.widths, config.in_channels
            )));
        }
        let (mut h, mut w) = (config.height, config.width);
        let mut cin = config.in_channels;
        let mut stages = vec![];
        for (i, &cout) in config.widths.iter().enumerate() {
            let geom = if i == 0 { K3 } else { K3_S2 };
            (h, w) = geom.out_hw(h, w)?;
            let name = format!("encoder.stage{i}");
            stages.push(Stage {
                down: ConvBn::new(p, b, &format!("{name}.down"), cin, cout, geom),
                blocks: (0..config.residual_blocks)
                    .map(|j| {
                        let n = format!("{name}.block{j}");
                        [
                            ConvBn::new(p, b, &format!("{n}.0"), cout, cout, K3),
                            ConvBn::new(p, b, &format!("{n}.1"), cout, cout, K3),
                        ]
                    })
                    .collect(),
            });
            cin = cout;
        }
        if h == 0 || w == 0 {
            return Err(Error::Config(format!(
                "{}×{} input is too small for {} stages",
                config.height,
                config.width,
                config.widths.len()
            )));
        }
        Ok(Encoder {
            config: config.clone(),
            stages,
        })
    }

    /// Dimension of the global feature.
    pub fn feature_dim(&self) -> usize {
        *self.config.widths.last().unwrap()
    }

    /// Spatial size and channels of each stage's output.
    pub fn map_shapes(&self) -> Vec<(usize, usize, usize)> {
        let (mut h, mut w) = (self.config.height, self.config.width);
        self.stages
            .iter()
            .map(|s| {
                (h, w) = s
                    .down
                    .conv
                    .geom
                    .out_hw(h, w)
                    .expect("checked at construction");
                (h, w, s.down.conv.cout)
            })
            .collect()
    }

    /// Forward FLOPs per image (multiply-adds count 2), convolutions only.
    pub fn flops_per_image(&self) -> f64 {
        let (mut h, mut w) = (self.config.height, self.config.width);
        let mut flops = 0.0;
        for (s, &(ho, wo, c)) in self.stages.iter().zip(&self.map_shapes()) {
            flops += s.down.conv.geom.flops(1, h, w, s.down.conv.cin, c);
            flops += s.blocks.len() as f64 * 2.0 * K3.flops(1, ho, wo, c, c);
            (h, w) = (ho, wo);
        }
        flops
    }

    /// The pooled global feature of images `x`, BatchNorm in eval mode: the frozen
    /// representation that evaluation probes.
    pub fn frozen(&self, g: &mut Graph, ps: &Store, bs: &Store, x: Var) -> Result<Var> {
        Ok(self
            .forward(g, ps, bs, x, &BatchNorm::default(), false)?
            .global)
    }

    /// `x` is [N, H, W, C]. `train` selects batch statistics (and running-average updates) in
    /// BatchNorm; evaluation uses `train = false`.
    pub fn forward(
        &self,
        g: &mut Graph,
        ps: &Store,
        bs: &Store,
        x: Var,
        bn: &BatchNorm,
        train: bool,
    ) -> Result<Features> {
        let mut maps = vec![];
        let mut h = x;
        for s in &self.stages {
            h = s.down.forward(g, ps, bs, h, bn, train, true)?;
            for [a, b] in &s.blocks {
                let y = a.forward(g, ps, bs, h, bn, train, true)?;
                let y = b.forward(g, ps, bs, y, bn, train, false)?;
                let y = g.add(y, h)?;
                h = g.relu(y)?;
            }
            maps.push(h);
        }
        let global = g.avg_pool_global(h)?;
        Ok(Features { maps, global })
    }
}
