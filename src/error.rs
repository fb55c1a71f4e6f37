//! One error type for the whole crate: every failure a user can cause is reported here with
//! enough context (the op, the shapes, the file, the limit) to fix it without a backtrace.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no GPU adapter found (backends tried: {tried}).\n{hint}\n\
         On Debian/Ubuntu without a GPU, install Mesa's software Vulkan driver: \
         `sudo apt-get install mesa-vulkan-drivers` (it provides the llvmpipe adapter).\n\
         Choose a backend with WGPU_BACKEND=vulkan|gl|metal|dx12 and an adapter with WGPU_ADAPTER_NAME=<part of its name>."
    )]
    NoAdapter { tried: String, hint: String },

    #[error("could not open the GPU device on {adapter}: {reason}")]
    Device { adapter: String, reason: String },

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error(
        "not enough GPU memory for `{what}`: it needs {needed} bytes but the adapter allows {limit} bytes{advice}"
    )]
    OutOfMemory {
        what: String,
        needed: u64,
        limit: u64,
        advice: String,
    },

    #[error("shape mismatch in `{op}`: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("invalid setting: {0}")]
    Config(String),

    #[error("{}: {what}", path.display())]
    Data { path: PathBuf, what: String },

    #[error("checkpoint {}: {what}", path.display())]
    Checkpoint { path: PathBuf, what: String },

    /// A line of a run's training log (`metrics.jsonl`) that does not parse; `line` counts from 1.
    #[error("{} line {line}: {what}", path.display())]
    Metrics {
        path: PathBuf,
        line: usize,
        what: String,
    },

    #[error(
        "gradient check failed for input {input} at index {index}: analytic {analytic:.6e}, \
         finite difference {numeric:.6e} (|diff| {diff:.3e} > {bound:.3e})"
    )]
    Gradient {
        input: usize,
        index: usize,
        analytic: f64,
        numeric: f64,
        diff: f64,
        bound: f64,
    },

    /// A NaN or an infinity in the loss or a gradient: the guard skipped the step's updates, so
    /// the model is as it was after the previous step; `op` names where the value first appeared.
    #[error(
        "non-finite value at step {step}: {op}.\nThe update of step {step} was skipped and training \
         stopped; {}; {advice}",
        last_good(.checkpoint)
    )]
    NonFinite {
        step: u64,
        op: String,
        /// The newest checkpoint on disk, untouched by the failed step.
        checkpoint: Option<PathBuf>,
        /// What to do about it (the command line fills in the exact command).
        advice: String,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn last_good(checkpoint: &Option<PathBuf>) -> String {
    match checkpoint {
        Some(p) => format!("the last good checkpoint is {} (intact)", p.display()),
        None => "no checkpoint had been written yet".into(),
    }
}

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
