//! Layers: each holds the ids of its tensors in the model's stores and records its ops on a graph.

use super::{Id, Init, Store, StoreBuilder};
use crate::autodiff::{Graph, Var};
use crate::error::Result;
use crate::kernels::batchnorm::BatchNorm;
use crate::kernels::conv::Conv2d;

/// PyTorch's default init for Linear and Conv weights and biases: uniform in ±1/√fan_in.
fn fan_in_uniform(fan_in: usize) -> Init {
    Init::Uniform {
        bound: 1.0 / (fan_in as f32).sqrt(),
    }
}

/// `y = x·wᵀ + b` with w [out, in].
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: Id,
    pub b: Option<Id>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    pub fn new(
        p: &mut StoreBuilder,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Linear {
        let init = fan_in_uniform(in_features);
        Linear {
            w: p.add(
                format!("{name}.weight"),
                [out_features, in_features],
                init,
                true,
            ),
            b: bias.then(|| p.add(format!("{name}.bias"), [out_features], init, false)),
            in_features,
            out_features,
        }
    }

    pub fn forward(&self, g: &mut Graph, params: &Store, x: Var, relu: bool) -> Result<Var> {
        let w = params.var(g, self.w);
        let b = self.b.map(|b| params.var(g, b));
        g.linear(x, w, b, relu)
    }

    pub fn flops(&self) -> f64 {
        2.0 * (self.in_features * self.out_features) as f64
    }
}

/// A 2-D convolution over NHWC input with weights [Cout, KH, KW, Cin].
#[derive(Clone, Debug)]
pub struct ConvLayer {
    pub w: Id,
    pub b: Option<Id>,
    pub geom: Conv2d,
    pub cin: usize,
    pub cout: usize,
}

impl ConvLayer {
    pub fn new(
        p: &mut StoreBuilder,
        name: &str,
        cin: usize,
        cout: usize,
        geom: Conv2d,
        bias: bool,
    ) -> ConvLayer {
        let init = fan_in_uniform(cin * geom.kh * geom.kw);
        ConvLayer {
            w: p.add(
                format!("{name}.weight"),
                [cout, geom.kh, geom.kw, cin],
                init,
                true,
            ),
            b: bias.then(|| p.add(format!("{name}.bias"), [cout], init, false)),
            geom,
            cin,
            cout,
        }
    }

    pub fn forward(&self, g: &mut Graph, params: &Store, x: Var, relu: bool) -> Result<Var> {
        let w = params.var(g, self.w);
        let b = self.b.map(|b| params.var(g, b));
        g.conv2d(x, w, b, self.geom, relu)
    }
}

/// BatchNorm over the channel (last) dimension; running statistics live in the buffer store.
#[derive(Clone, Debug)]
pub struct BatchNormLayer {
    pub gamma: Id,
    pub beta: Id,
    pub running_mean: Id,
    pub running_var: Id,
    pub channels: usize,
}

impl BatchNormLayer {
    pub fn new(
        p: &mut StoreBuilder,
        buffers: &mut StoreBuilder,
        name: &str,
        channels: usize,
    ) -> Self {
        BatchNormLayer {
            gamma: p.add(
                format!("{name}.weight"),
                [channels],
                Init::Constant(1.0),
                false,
            ),
            beta: p.add(
                format!("{name}.bias"),
                [channels],
                Init::Constant(0.0),
                false,
            ),
            running_mean: buffers.add(
                format!("{name}.running_mean"),
                [channels],
                Init::Constant(0.0),
                false,
            ),
            running_var: buffers.add(
                format!("{name}.running_var"),
                [channels],
                Init::Constant(1.0),
                false,
            ),
            channels,
        }
    }

    /// `train`: batch statistics (split into `bn.groups` groups) and running-average updates;
    /// otherwise the running statistics.
    pub fn forward(
        &self,
        g: &mut Graph,
        params: &Store,
        buffers: &Store,
        x: Var,
        bn: &BatchNorm,
        train: bool,
    ) -> Result<Var> {
        let gamma = params.var(g, self.gamma);
        let beta = params.var(g, self.beta);
        let (rm, rv) = (
            buffers.tensor(self.running_mean),
            buffers.tensor(self.running_var),
        );
        g.batch_norm(x, gamma, beta, &rm, &rv, bn, train)
    }
}

/// Linear layers with ReLU between them (not after the last): MoCo v2's and SimCLR's projection head.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// `dims` = [in, hidden…, out].
    pub fn new(p: &mut StoreBuilder, name: &str, dims: &[usize]) -> Mlp {
        Mlp {
            layers: dims
                .windows(2)
                .enumerate()
                .map(|(i, d)| Linear::new(p, &format!("{name}.{i}"), d[0], d[1], true))
                .collect(),
        }
    }

    pub fn forward(&self, g: &mut Graph, params: &Store, mut x: Var) -> Result<Var> {
        let last = self.layers.len().saturating_sub(1);
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(g, params, x, i < last)?;
        }
        Ok(x)
    }

    pub fn flops(&self) -> f64 {
        self.layers.iter().map(Linear::flops).sum()
    }
}
