//! `contrastive`: contrastive self-supervised learning on any GPU through wgpu.
//!
//! Layers, bottom up:
//! - [`gpu`]: adapter choice, buffers, cached pipelines, the one-submission-per-step recorder,
//!   the autotune cache of kernel choices;
//! - [`memory`]: tensors and the arenas that hold them (the memory plan);
//! - [`kernels`]: the WGSL kernel families, each with its CPU reference;
//! - [`autodiff`]: the tape, its ops and their backward passes, and the gradient checker;
//! - [`nn`] and [`optim`]: parameter stores, layers, the CNN encoder, arena-wide optimisers;
//! - [`data`]: image and sequence datasets (embedded defaults, IDX, CIFAR-10, `.ts`, WAV), the
//!   images on the GPU and the augmentation policy;
//! - [`methods`]: MoCo, Deep InfoMax, two-view invariance and CPC, each its loss and its state;
//! - [`train`]: the trainer, which owns the step (guard, updates, roll-back) and the loop;
//! - [`dist`]: data parallelism over MPI (`--features mpi`): ranks, shards of the batch,
//!   host-staged collectives;
//! - [`eval`]: features, kNN and the linear probe, beside a random encoder and the raw input;
//! - [`embed`]: those features written out (safetensors or `.npy`) with labels and file names;
//! - [`probe`]: the linear probe itself, multinomial logistic regression trained to convergence;
//! - [`checkpoint`], [`report`]: resumable safetensors checkpoints, metrics plots and summaries;
//! - [`run`]: a whole run as the command line makes it — settings and their defaults, the run
//!   directory, metrics, checkpoint policy, evaluation;
//! - [`error`]: every failure a user can meet, named.

pub mod autodiff;
pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod embed;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod kernels;
pub mod memory;
pub mod methods;
pub mod nn;
pub mod optim;
pub mod probe;
pub mod report;
pub mod run;
pub mod train;

pub use error::{Error, Result};
pub use gpu::Gpu;
pub use memory::{Arena, Shape, Tensor};
