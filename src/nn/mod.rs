//! Layers and models built on the tape: parameter stores, Linear / Conv2d / BatchNorm layers, the
//! MLP head and the CNN encoders (small and ResNet-18).
//!
//! All parameters of a model live in one [`Store`]: one GPU buffer of values and one of gradients
//! with the same layout, so optimisers and EMA updates are single dispatches over the whole model.
//! BatchNorm running statistics live in a second store without gradients.

pub mod encoder;
pub mod layers;

pub use encoder::{Encoder, EncoderConfig, Features, Layout, Preset};
pub use layers::{BatchNormLayer, ConvLayer, Linear, Mlp};

use rand::{Rng, SeedableRng};

use crate::autodiff::{Graph, Var};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::memory::{Shape, Tensor};

/// Index of a tensor in a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Id(usize);

/// How a tensor is initialised.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// Uniform in ±`bound` (PyTorch's default Linear/Conv init is bound = 1/√fan_in, which is
    /// Kaiming-uniform with a = √5).
    Uniform {
        bound: f32,
    },
    Constant(f32),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub shape: Shape,
    /// Offset in 32-bit words from the start of the store.
    pub offset: usize,
    /// Whether weight decay applies (not to biases and BatchNorm parameters).
    pub decay: bool,
}

/// Collects named tensors and their initial values on the host, then lays them out in one buffer.
pub struct StoreBuilder {
    entries: Vec<(String, Shape, Init, bool)>,
    rng: rand_chacha::ChaCha8Rng,
}

impl StoreBuilder {
    pub fn new(seed: u64) -> Self {
        StoreBuilder {
            entries: vec![],
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn add(
        &mut self,
        name: impl Into<String>,
        shape: impl Into<Shape>,
        init: Init,
        decay: bool,
    ) -> Id {
        self.entries.push((name.into(), shape.into(), init, decay));
        Id(self.entries.len() - 1)
    }

    /// Uploads the initial values. With `grads`, a gradient buffer of the same layout is created.
    pub fn build(mut self, gpu: &Gpu, what: &str, grads: bool) -> Result<Store> {
        let align = (gpu.align / 4) as usize;
        let mut entries = vec![];
        let mut len = 0;
        for (name, shape, _, decay) in &self.entries {
            entries.push(Entry {
                name: name.clone(),
                shape: *shape,
                offset: len,
                decay: *decay,
            });
            len = (len + shape.numel()).next_multiple_of(align);
        }
        let len = len.max(1);
        // Checked before the host copy is made: an oversized model is an error, not an abort.
        if len as u64 * 4 > gpu.max_binding() {
            return Err(Error::OutOfMemory {
                what: format!("{what}: {len} parameters"),
                needed: len as u64 * 4,
                limit: gpu.max_binding(),
                advice: " (the adapter's largest binding); use smaller layers".into(),
            });
        }
        let mut host = vec![0.0f32; len];
        for ((_, _, init, _), e) in self.entries.iter().zip(&entries) {
            let dst = &mut host[e.offset..e.offset + e.shape.numel()];
            match *init {
                Init::Uniform { bound } => dst
                    .iter_mut()
                    .for_each(|v| *v = self.rng.random_range(-bound..=bound)),
                Init::Constant(c) => dst.fill(c),
            }
        }
        let values = Region {
            buffer: gpu.create_buffer(host.len() as u64 * 4, what)?,
            offset: 0,
            len: host.len(),
        };
        gpu.upload(values, &host)?;
        let grads = if grads {
            Some(Region {
                buffer: gpu.create_buffer(host.len() as u64 * 4, what)?,
                offset: 0,
                len: host.len(),
            })
        } else {
            None
        };
        let store = Store {
            values,
            grads,
            entries,
        };
        store.name_regions(gpu, what);
        Ok(store)
    }
}

/// Named tensors in one buffer (and their gradients in a second one of the same layout).
pub struct Store {
    pub values: Region,
    pub grads: Option<Region>,
    pub entries: Vec<Entry>,
}

impl Store {
    fn view(&self, base: Region, id: Id) -> Tensor {
        let e = &self.entries[id.0];
        Tensor {
            region: base.slice(e.offset, e.shape.numel()),
            shape: e.shape,
        }
    }

    pub fn tensor(&self, id: Id) -> Tensor {
        self.view(self.values, id)
    }

    pub fn grad(&self, id: Id) -> Option<Tensor> {
        self.grads.map(|g| self.view(g, id))
    }

    /// The tensor as a graph value: a parameter when the store has gradients and the graph
    /// records, a constant otherwise (frozen or EMA copies, inference).
    pub fn var(&self, g: &mut Graph, id: Id) -> Var {
        match self.grad(id) {
            Some(grad) if g.is_recording() => g.param(self.tensor(id), grad),
            _ => g.input(self.tensor(id)),
        }
    }

    /// Number of scalars (without alignment padding).
    pub fn count(&self) -> usize {
        self.entries.iter().map(|e| e.shape.numel()).sum()
    }

    /// 1 where weight decay applies, 0 elsewhere (padding included), in the store's layout.
    pub fn decay_mask(&self) -> Vec<f32> {
        let mut m = vec![0.0; self.values.len];
        for e in &self.entries {
            if e.decay {
                m[e.offset..e.offset + e.shape.numel()].fill(1.0);
            }
        }
        m
    }

    /// A store with the same layout and a copy of the values (recorded on the GPU).
    pub fn duplicate(&self, gpu: &Gpu, what: &str, grads: bool) -> Result<Store> {
        let alloc = || -> Result<Region> {
            Ok(Region {
                buffer: gpu.create_buffer(self.values.bytes(), what)?,
                offset: 0,
                len: self.values.len,
            })
        };
        let values = alloc()?;
        gpu.copy(self.values, values)?;
        let grads = if grads { Some(alloc()?) } else { None };
        let store = Store {
            values,
            grads,
            entries: self.entries.clone(),
        };
        store.name_regions(gpu, what);
        Ok(store)
    }

    /// Names every tensor (and its gradient) in the diagnostics of [`Gpu::begin_finite_checks`].
    fn name_regions(&self, gpu: &Gpu, what: &str) {
        for (i, e) in self.entries.iter().enumerate() {
            gpu.name_region(self.tensor(Id(i)).region, format!("{what} `{}`", e.name));
            if let Some(g) = self.grad(Id(i)) {
                gpu.name_region(g.region, format!("gradient of `{}`", e.name));
            }
        }
    }

    /// Reads every tensor back: (name, shape, values) in layout order.
    pub fn read_all(&self, gpu: &Gpu) -> Result<Vec<(String, Shape, Vec<f32>)>> {
        let all: Vec<f32> = gpu.read(self.values)?;
        Ok(self
            .entries
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.shape,
                    all[e.offset..e.offset + e.shape.numel()].to_vec(),
                )
            })
            .collect())
    }

    /// Overwrites every tensor from host data by name; shapes must match exactly.
    pub fn write_all(
        &self,
        gpu: &Gpu,
        tensors: &[(String, Shape, Vec<f32>)],
        origin: &str,
    ) -> Result<()> {
        let mut host = vec![0.0f32; self.values.len];
        for e in &self.entries {
            let (_, shape, data) = tensors.iter().find(|t| t.0 == e.name).ok_or_else(|| {
                Error::Config(format!("{origin}: tensor `{}` is missing", e.name))
            })?;
            if *shape != e.shape {
                return Err(Error::Config(format!(
                    "{origin}: tensor `{}` has shape {shape:?}, this model needs {:?}",
                    e.name, e.shape
                )));
            }
            host[e.offset..e.offset + data.len()].copy_from_slice(data);
        }
        gpu.upload(self.values, &host)
    }
}

/// Divides every row of `data` (rows of `dim`) by its L2 norm (at least 1e-12), on the host.
pub fn normalize_rows(data: &mut [f32], dim: usize) {
    for row in data.chunks_mut(dim.max(1)) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= n);
    }
}
