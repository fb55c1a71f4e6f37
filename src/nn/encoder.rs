//! The CNN encoder, in two layouts built by one builder (see [`Layout`]):
//! - `small`: conv-BN-ReLU stages, each after the first halving the resolution with a stride-2
//!   convolution, optional residual blocks, then global average pooling. Sized for 28×28 (MNIST
//!   family) and 32×32 (CIFAR) inputs: the default widths [16, 32, 64] give 7×7 (resp. 8×8) local
//!   feature maps and a 64-d global feature (3.8 MFLOP per 28×28 image).
//! - `resnet18`: CIFAR-style ResNet-18 (3×3 stride-1 stem, no max-pool, four stages of two
//!   BasicBlocks), its tensors named as torchvision's `resnet18().state_dict()`, so that a
//!   checkpoint loads into torchvision with `strict=True` (`scripts/load_in_pytorch.py`).

use serde::{Deserialize, Serialize};

use super::layers::{BatchNormLayer, ConvLayer};
use super::{Store, StoreBuilder};
use crate::autodiff::{Graph, Var};
use crate::error::{Error, Result};
use crate::kernels::batchnorm::BatchNorm;
use crate::kernels::conv::Conv2d;

/// The encoders `--encoder` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Plain conv-BN-ReLU stages (`--widths`, `--residual-blocks`).
    #[default]
    Small,
    /// CIFAR-style ResNet-18: widths 64, 128, 256, 512, two BasicBlocks per stage.
    Resnet18,
}

/// ResNet-18's stage widths (before `--width-mult`).
const RESNET18_WIDTHS: [usize; 4] = [64, 128, 256, 512];

impl Preset {
    /// This preset's encoder for `height×width×channels` images, every width times
    /// `width_mult` (rounded, at least 1). `widths` and `residual_blocks` are the small
    /// encoder's; ResNet-18 fixes its own.
    pub fn config(
        self,
        (height, width, in_channels): (usize, usize, usize),
        widths: &[usize],
        residual_blocks: usize,
        width_mult: f32,
    ) -> EncoderConfig {
        let (widths, residual_blocks, layout) = match self {
            Preset::Small => (widths, residual_blocks, Layout::Plain),
            Preset::Resnet18 => (&RESNET18_WIDTHS[..], 2, Layout::Resnet),
        };
        EncoderConfig {
            height,
            width,
            in_channels,
            widths: widths
                .iter()
                .map(|&w| ((w as f64 * width_mult as f64).round() as usize).max(1))
                .collect(),
            residual_blocks,
            layout,
        }
    }
}

/// How the stages are built and their tensors named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Stage `i`: a 3×3 conv-BN-ReLU (stride 2 after the first stage) `stage{i}.down`, then
    /// `residual_blocks` residual blocks `stage{i}.block{j}.{0,1}` on the same shape.
    #[default]
    Plain,
    /// torchvision's ResNet with a CIFAR stem: a 3×3 stride-1 conv-BN-ReLU `conv1`/`bn1` of
    /// `widths[0]` channels, then stage `i` is `layer{i+1}`: `residual_blocks` BasicBlocks
    /// (`conv1`, `bn1`, `conv2`, `bn2`), the first with stride 2 after the first stage and a 1×1
    /// conv-BN shortcut `downsample.{0,1}` where the shape changes.
    Resnet,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub height: usize,
    pub width: usize,
    pub in_channels: usize,
    /// Output channels of each stage; stages after the first downsample by 2.
    pub widths: Vec<usize>,
    /// Residual blocks per stage: after the stage's first conv ([`Layout::Plain`]), or all of the
    /// stage's BasicBlocks ([`Layout::Resnet`], at least 1).
    pub residual_blocks: usize,
    #[serde(default)]
    pub layout: Layout,
}

impl EncoderConfig {
    pub fn small(height: usize, width: usize, in_channels: usize) -> Self {
        Preset::Small.config((height, width, in_channels), &[16, 32, 64], 0, 1.0)
    }

    /// Parameters (BatchNorm scales and shifts included) of the encoder this configuration
    /// builds, counted without building it: memory validation sizes hostile settings with it.
    pub fn parameter_count(&self) -> u128 {
        // Saturating: hostile widths must give a huge count, not an overflow.
        let conv_bn = |cin: u128, cout: u128, k: u128| {
            (k * k)
                .saturating_mul(cin)
                .saturating_mul(cout)
                .saturating_add(2 * cout)
        };
        let blocks = self.residual_blocks as u128;
        let mut cin = self.in_channels as u128;
        let mut count = 0u128;
        for (i, &c) in self.widths.iter().enumerate() {
            let c = c as u128;
            let identity = 2u128.saturating_mul(conv_bn(c, c, 3));
            let stage = match self.layout {
                Layout::Plain => conv_bn(cin, c, 3).saturating_add(blocks.saturating_mul(identity)),
                Layout::Resnet => {
                    let stem = if i == 0 { conv_bn(cin, c, 3) } else { 0 };
                    let cin = if i == 0 { c } else { cin };
                    let shortcut = if i > 0 || cin != c {
                        conv_bn(cin, c, 1)
                    } else {
                        0
                    };
                    [stem, conv_bn(cin, c, 3), conv_bn(c, c, 3), shortcut]
                        .into_iter()
                        .fold(
                            blocks.saturating_sub(1).saturating_mul(identity),
                            u128::saturating_add,
                        )
                }
            };
            count = count.saturating_add(stage);
            cin = c;
        }
        count
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
    /// A bias-free convolution named `conv` followed by BatchNorm named `bn`.
    fn new(
        p: &mut StoreBuilder,
        b: &mut StoreBuilder,
        [conv, bn]: [&str; 2],
        cin: usize,
        cout: usize,
        geom: Conv2d,
    ) -> Self {
        ConvBn {
            conv: ConvLayer::new(p, conv, cin, cout, geom, false),
            bn: BatchNormLayer::new(p, b, bn, cout),
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

    /// Forward FLOPs on an `h×w` input and the output's spatial size.
    fn flops(&self, (h, w): (usize, usize)) -> (f64, (usize, usize)) {
        let c = &self.conv;
        let out = c.geom.out_hw(h, w).expect("checked at construction");
        (c.geom.flops(1, h, w, c.cin, c.cout), out)
    }
}

// A few dozen blocks per encoder, built once: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Block {
    /// conv-BN-ReLU.
    Plain(ConvBn),
    /// conv-BN-ReLU, conv-BN, plus the input (through `shortcut` where the shape changes), ReLU.
    Residual {
        a: ConvBn,
        b: ConvBn,
        shortcut: Option<ConvBn>,
    },
}

impl Block {
    fn forward(
        &self,
        g: &mut Graph,
        (ps, bs): (&Store, &Store),
        x: Var,
        bn: &BatchNorm,
        train: bool,
    ) -> Result<Var> {
        match self {
            Block::Plain(c) => c.forward(g, ps, bs, x, bn, train, true),
            Block::Residual { a, b, shortcut } => {
                let y = a.forward(g, ps, bs, x, bn, train, true)?;
                let y = b.forward(g, ps, bs, y, bn, train, false)?;
                let s = match shortcut {
                    Some(s) => s.forward(g, ps, bs, x, bn, train, false)?,
                    None => x,
                };
                let y = g.add(y, s)?;
                g.relu(y)
            }
        }
    }

    /// Forward FLOPs on an `h×w` input and the output's spatial size.
    fn flops(&self, hw: (usize, usize)) -> (f64, (usize, usize)) {
        match self {
            Block::Plain(c) => c.flops(hw),
            Block::Residual { a, b, shortcut } => {
                let (fa, mid) = a.flops(hw);
                let (fb, out) = b.flops(mid);
                let fs = shortcut.as_ref().map_or(0.0, |s| s.flops(hw).0);
                (fa + fb + fs, out)
            }
        }
    }

    fn out_channels(&self) -> usize {
        match self {
            Block::Plain(c) | Block::Residual { b: c, .. } => c.conv.cout,
        }
    }
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
    /// The blocks of each stage; a stage's output is a feature map of [`Features::maps`].
    stages: Vec<Vec<Block>>,
}

/// The blocks of stage `i` (`cin` input channels, `cout` output channels, first convolution
/// `geom`) in `config`'s layout.
fn stage(
    p: &mut StoreBuilder,
    b: &mut StoreBuilder,
    config: &EncoderConfig,
    i: usize,
    (cin, cout): (usize, usize),
    geom: Conv2d,
) -> Vec<Block> {
    let mut blocks = vec![];
    let identity = |p: &mut StoreBuilder, b: &mut StoreBuilder, [a0, a1, b0, b1]: [String; 4]| {
        Block::Residual {
            a: ConvBn::new(p, b, [&a0, &a1], cout, cout, K3),
            b: ConvBn::new(p, b, [&b0, &b1], cout, cout, K3),
            shortcut: None,
        }
    };
    match config.layout {
        Layout::Plain => {
            let s = format!("encoder.stage{i}");
            let down = [format!("{s}.down.conv"), format!("{s}.down.bn")];
            let down = ConvBn::new(p, b, [&down[0], &down[1]], cin, cout, geom);
            blocks.push(Block::Plain(down));
            for j in 0..config.residual_blocks {
                let n = format!("{s}.block{j}");
                let names = [".0.conv", ".0.bn", ".1.conv", ".1.bn"].map(|t| format!("{n}{t}"));
                blocks.push(identity(p, b, names));
            }
        }
        Layout::Resnet => {
            let mut cin = cin;
            if i == 0 {
                let stem = ConvBn::new(p, b, ["encoder.conv1", "encoder.bn1"], cin, cout, K3);
                blocks.push(Block::Plain(stem));
                cin = cout;
            }
            let n = format!("encoder.layer{}", i + 1);
            let names =
                |j: usize| [".conv1", ".bn1", ".conv2", ".bn2"].map(|t| format!("{n}.{j}{t}"));
            let [a0, a1, b0, b1] = names(0);
            let shortcut = geom.stride != (1, 1) || cin != cout;
            let down = Conv2d {
                kh: 1,
                kw: 1,
                pad: (0, 0),
                ..geom
            };
            blocks.push(Block::Residual {
                a: ConvBn::new(p, b, [&a0, &a1], cin, cout, geom),
                b: ConvBn::new(p, b, [&b0, &b1], cout, cout, K3),
                shortcut: shortcut.then(|| {
                    let d = [format!("{n}.0.downsample.0"), format!("{n}.0.downsample.1")];
                    ConvBn::new(p, b, [&d[0], &d[1]], cin, cout, down)
                }),
            });
            for j in 1..config.residual_blocks {
                blocks.push(identity(p, b, names(j)));
            }
        }
    }
    blocks
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
        if config.layout == Layout::Resnet && config.residual_blocks == 0 {
            return Err(Error::Config(
                "a ResNet needs at least one residual block per stage".into(),
            ));
        }
        let (mut h, mut w) = (config.height, config.width);
        let mut cin = config.in_channels;
        let mut stages = vec![];
        for (i, &cout) in config.widths.iter().enumerate() {
            let geom = if i == 0 { K3 } else { K3_S2 };
            (h, w) = geom.out_hw(h, w)?;
            stages.push(stage(p, b, config, i, (cin, cout), geom));
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

    /// Forward FLOPs per image of each stage and its output's spatial size and channels.
    fn walk(&self) -> Vec<(f64, (usize, usize, usize))> {
        let mut hw = (self.config.height, self.config.width);
        self.stages
            .iter()
            .map(|blocks| {
                let mut flops = 0.0;
                for block in blocks {
                    let (f, out) = block.flops(hw);
                    (flops, hw) = (flops + f, out);
                }
                let c = blocks.last().map_or(0, Block::out_channels);
                (flops, (hw.0, hw.1, c))
            })
            .collect()
    }

    /// Spatial size and channels of each stage's output.
    pub fn map_shapes(&self) -> Vec<(usize, usize, usize)> {
        self.walk().into_iter().map(|(_, shape)| shape).collect()
    }

    /// Forward FLOPs per image (multiply-adds count 2), convolutions only.
    pub fn flops_per_image(&self) -> f64 {
        self.walk().iter().map(|(f, _)| f).sum()
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
        for blocks in &self.stages {
            for block in blocks {
                h = block.forward(g, (ps, bs), h, bn, train)?;
            }
            maps.push(h);
        }
        let global = g.avg_pool_global(h)?;
        Ok(Features { maps, global })
    }
}
