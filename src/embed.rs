//! Embeddings out: a frozen encoder's features for a set of images, written where other tools
//! read them — safetensors, or NumPy's `.npy` — with their labels and file names.
//!
//! The features are [`crate::eval::features`]' (the evaluation's own function), so an embedding
//! file holds exactly what the probes measured. Layout:
//! - safetensors: `features` f32 `[N, D]`; `labels` i64 `[N]` where the set is labelled (the
//!   dtype PyTorch's losses take); metadata `names`, the file names (relative to the data
//!   directory) as a JSON list where the set has them, beside what the caller adds (checkpoint,
//!   data, split).
//! - `.npy`: `FILE.npy` holds the features (`<f4`, `[N, D]`); `FILE.labels.npy` the labels
//!   (`<i8`, `[N]`) and `FILE.names.json` the names (a JSON list), each where known.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::eval::FeatureSet;

/// Features of a set of images with what is known of them.
pub struct Embeddings {
    /// Row-major `[len, dim]`; the labels in it count only when `labelled`.
    pub features: FeatureSet,
    pub labelled: bool,
    /// One file name per row, or none.
    pub names: Vec<String>,
}

/// The formats an embedding file can take, chosen by its suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    Npy,
}

impl Format {
    /// The format `path`'s suffix names: `.safetensors` or `.npy`.
    pub fn of(path: &Path) -> Result<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(Format::Safetensors),
            Some("npy") => Ok(Format::Npy),
            _ => Err(Error::Config(format!(
                "--out {}: the suffix chooses the format, .safetensors or .npy",
                path.display()
            ))),
        }
    }
}

impl Embeddings {
    fn labels_i64(&self) -> Option<Vec<i64>> {
        self.labelled
            .then(|| self.features.labels.iter().map(|&l| l as i64).collect())
    }

    fn names_json(&self) -> Option<String> {
        (!self.names.is_empty())
            .then(|| serde_json::to_string(&self.names).expect("names serialise"))
    }

    /// Writes the embeddings to `path` in the format its suffix names, with `meta` in the
    /// safetensors metadata; returns every file written.
    pub fn write(&self, path: &Path, meta: &BTreeMap<String, String>) -> Result<Vec<PathBuf>> {
        let n = self.features.len();
        if self.features.data.len() != n * self.features.dim
            || !(self.names.is_empty() || self.names.len() == n)
        {
            return Err(Error::Config(format!(
                "{n} embeddings with {} feature values of dimension {} and {} names do not belong together",
                self.features.data.len(),
                self.features.dim,
                self.names.len()
            )));
        }
        let shape = [n, self.features.dim];
        match Format::of(path)? {
            Format::Safetensors => {
                let mut meta = meta.clone();
                if let Some(names) = self.names_json() {
                    meta.insert("names".into(), names);
                }
                let labels = self.labels_i64();
                let mut views = vec![(
                    "features",
                    view(
                        safetensors::Dtype::F32,
                        &shape,
                        bytemuck::cast_slice(&self.features.data),
                    )?,
                )];
                if let Some(l) = &labels {
                    views.push((
                        "labels",
                        view(safetensors::Dtype::I64, &[n], bytemuck::cast_slice(l))?,
                    ));
                }
                let bytes = safetensors::serialize(views, Some(meta.into_iter().collect()))
                    .map_err(|e| Error::Data {
                        path: path.into(),
                        what: e.to_string(),
                    })?;
                crate::checkpoint::write_atomic(path, &bytes)?;
                Ok(vec![path.into()])
            }
            Format::Npy => {
                let mut written = vec![path.to_path_buf()];
                crate::checkpoint::write_atomic(path, &npy("<f4", &shape, &self.features.data))?;
                if let Some(l) = self.labels_i64() {
                    let p = path.with_extension("labels.npy");
                    crate::checkpoint::write_atomic(&p, &npy("<i8", &[n], &l))?;
                    written.push(p);
                }
                if let Some(names) = self.names_json() {
                    let p = path.with_extension("names.json");
                    crate::checkpoint::write_atomic(&p, names.as_bytes())?;
                    written.push(p);
                }
                Ok(written)
            }
        }
    }
}

fn view<'a>(
    dtype: safetensors::Dtype,
    shape: &[usize],
    bytes: &'a [u8],
) -> Result<safetensors::tensor::TensorView<'a>> {
    safetensors::tensor::TensorView::new(dtype, shape.to_vec(), bytes)
        .map_err(|e| Error::Config(format!("embedding tensor: {e}")))
}

/// A NumPy `.npy` file (format 1.0): magic, header dictionary padded to a multiple of 64 bytes,
/// then the little-endian values in C order.
pub fn npy<T: bytemuck::Pod>(descr: &str, shape: &[usize], values: &[T]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6), version (2), header length (2), header ending in a newline.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.extend(std::iter::repeat_n(' ', total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(bytemuck::cast_slice(values));
    out
}
