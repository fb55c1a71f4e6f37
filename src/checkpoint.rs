//! Checkpoints as safetensors files.
//!
//! Layout (documented in the README for PyTorch users):
//! - `<net>.<layer>.weight|bias|running_mean|running_var`: model tensors, f32. Convolution weights
//!   are stored in PyTorch's [Cout, Cin, KH, KW] order (this crate computes in [Cout, KH, KW, Cin]);
//!   Linear weights are [out, in] as in PyTorch. `<net>` is `query` (the trained encoder + head),
//!   and for MoCo `key` (the EMA copy).
//! - `optim.state1`, `optim.state2`: optimiser state, flat in the parameter store's layout.
//! - method state (`moco.queue`, …) and trainer state (`trainer.order`, u32).
//! - `input.mean`, `input.std`: f32 `[C]`, the input normalisation the encoder was trained with
//!   (image runs).
//! - metadata: `format`, `method`, `step`, the full configuration as JSON, RNG states.
//!
//! Files are written atomically ([`write_atomic`]), so a crash or SIGKILL in the middle of a write
//! leaves the previous checkpoint intact; [`find`] passes over a newer file damaged some other way
//! (a full disk, a copy cut short) for the newest intact one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::data::PixelStats;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Region};
use crate::nn::Store;

pub const FORMAT: &str = "contrastive-checkpoint-1";

#[derive(Clone, Debug)]
enum Data {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

/// Tensors and metadata of one checkpoint, in host memory.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    tensors: BTreeMap<String, (Vec<usize>, Data)>,
    pub meta: BTreeMap<String, String>,
    /// Where it was read from, for error messages.
    pub origin: PathBuf,
}

/// [Cout, KH, KW, Cin] ↔ [Cout, Cin, KH, KW].
fn permute_conv(data: &[f32], d: [usize; 4], to_torch: bool) -> Vec<f32> {
    let [o, h, w, i] = d;
    let mut out = vec![0.0; data.len()];
    for a in 0..o {
        for y in 0..h {
            for x in 0..w {
                for c in 0..i {
                    let ours = ((a * h + y) * w + x) * i + c;
                    let torch = ((a * i + c) * h + y) * w + x;
                    if to_torch {
                        out[torch] = data[ours];
                    } else {
                        out[ours] = data[torch];
                    }
                }
            }
        }
    }
    out
}

impl Checkpoint {
    pub fn new() -> Self {
        Self::default()
    }

    fn bad(&self, what: impl Into<String>) -> Error {
        Error::Checkpoint {
            path: self.origin.clone(),
            what: what.into(),
        }
    }

    /// Elements stored in all tensors together.
    pub fn stored_elements(&self) -> u128 {
        self.tensors
            .values()
            .map(|(shape, _)| shape.iter().map(|&d| d as u128).product::<u128>())
            .sum()
    }

    /// Refuses a size read from the checkpoint's stored settings (its `command` metadata) before
    /// anything is allocated for it: a checkpoint holds every parameter, queue and bank its
    /// settings size, so an honest setting never needs more than [`Self::stored_elements`].
    /// `elements` is what `setting` asks for (a parameter count, queue × dim, bank × dim):
    /// a corrupt or hostile header asking for more is an error naming the file and the setting.
    pub fn check_size(&self, setting: &str, elements: u128) -> Result<()> {
        let stored = self.stored_elements();
        if elements > stored {
            return Err(self.bad(format!(
                "its stored setting `{setting}` asks for {elements} elements but the file holds \
                 only {stored}: corrupt or edited settings"
            )));
        }
        Ok(())
    }

    pub fn put_f32(&mut self, name: impl Into<String>, shape: &[usize], data: Vec<f32>) {
        self.tensors
            .insert(name.into(), (shape.to_vec(), Data::F32(data)));
    }

    pub fn put_u32(&mut self, name: impl Into<String>, shape: &[usize], data: Vec<u32>) {
        self.tensors
            .insert(name.into(), (shape.to_vec(), Data::U32(data)));
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// A tensor's shape, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.0.as_slice())
    }

    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.tensors.get(name) {
            None => Err(self.bad(format!("tensor `{name}` is missing"))),
            Some((s, _)) if s != shape => Err(self.bad(format!(
                "tensor `{name}` has shape {s:?}, this configuration needs {shape:?} \
                 (a checkpoint from another configuration?)"
            ))),
            Some((_, Data::F32(d))) => Ok(d.clone()),
            Some((_, Data::U32(_))) => {
                Err(self.bad(format!("tensor `{name}` is u32, expected f32")))
            }
        }
    }

    pub fn get_u32(&self, name: &str) -> Result<Vec<u32>> {
        match self.tensors.get(name) {
            None => Err(self.bad(format!("tensor `{name}` is missing"))),
            Some((_, Data::U32(d))) => Ok(d.clone()),
            Some((_, Data::F32(_))) => {
                Err(self.bad(format!("tensor `{name}` is f32, expected u32")))
            }
        }
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| self.bad(format!("metadata `{key}` is missing")))
    }

    pub fn meta_parse<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        self.meta(key)?
            .parse()
            .map_err(|_| self.bad(format!("metadata `{key}` is not valid")))
    }

    /// Stores the input normalisation as `input.mean` and `input.std`, one value per channel.
    pub fn put_normalisation(&mut self, stats: &PixelStats) {
        let c = stats.mean.len();
        self.put_f32("input.mean", &[c], stats.mean.clone());
        self.put_f32("input.std", &[c], stats.std.clone());
    }

    /// The stored input normalisation of `channels`-channel images, `None` for a checkpoint
    /// written before it was stored.
    pub fn normalisation(&self, channels: usize) -> Result<Option<PixelStats>> {
        if self.shape("input.mean").is_none() && self.shape("input.std").is_none() {
            return Ok(None);
        }
        let mean = self.get_f32("input.mean", &[channels])?;
        let std = self.get_f32("input.std", &[channels])?;
        if !mean.iter().all(|m| m.is_finite()) || !std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(self.bad(format!(
                "tensors `input.mean` {mean:?} and `input.std` {std:?}: every mean must be finite and every std positive"
            )));
        }
        Ok(Some(PixelStats { mean, std }))
    }

    /// Reads a store's tensors from the GPU under `prefix.`.
    pub fn put_store(&mut self, gpu: &Gpu, prefix: &str, store: &Store) -> Result<()> {
        for (name, shape, data) in store.read_all(gpu)? {
            let d = shape.dims();
            let (dims, data) = match *d {
                [o, h, w, i] => (vec![o, i, h, w], permute_conv(&data, [o, h, w, i], true)),
                _ => (d.to_vec(), data),
            };
            self.put_f32(format!("{prefix}.{name}"), &dims, data);
        }
        Ok(())
    }

    /// Writes a store's tensors from `prefix.` to the GPU, checking every shape.
    pub fn get_store(&self, gpu: &Gpu, prefix: &str, store: &Store) -> Result<()> {
        let mut tensors = vec![];
        for e in &store.entries {
            let d = e.shape.dims();
            let name = format!("{prefix}.{}", e.name);
            let data = match *d {
                [o, h, w, i] => {
                    permute_conv(&self.get_f32(&name, &[o, i, h, w])?, [o, h, w, i], false)
                }
                _ => self.get_f32(&name, d)?,
            };
            tensors.push((e.name.clone(), e.shape, data));
        }
        store.write_all(gpu, &tensors, &self.origin.display().to_string())
    }

    /// Reads a raw region (optimiser state, queues) from the GPU.
    pub fn put_region(
        &mut self,
        gpu: &Gpu,
        name: &str,
        region: Region,
        shape: &[usize],
    ) -> Result<()> {
        let data: Vec<f32> = gpu.read(region)?;
        self.put_f32(name, shape, data);
        Ok(())
    }

    pub fn get_region(&self, gpu: &Gpu, name: &str, region: Region, shape: &[usize]) -> Result<()> {
        let data = self.get_f32(name, shape)?;
        gpu.upload(region, &data)
    }

    fn serialize(&self) -> Result<Vec<u8>> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(name, (shape, data))| {
                let (dtype, bytes): (Dtype, &[u8]) = match data {
                    Data::F32(d) => (Dtype::F32, bytemuck::cast_slice(d)),
                    Data::U32(d) => (Dtype::U32, bytemuck::cast_slice(d)),
                };
                let view = safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes)
                    .map_err(|e| self.bad(format!("tensor `{name}`: {e}")))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_>>()?;
        let mut meta: std::collections::HashMap<String, String> = self
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.insert("format".into(), FORMAT.into());
        safetensors::serialize(views, Some(meta)).map_err(|e| self.bad(e.to_string()))
    }

    /// Writes the checkpoint to `path` atomically (see [`write_atomic`]).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.serialize()?)
    }

    /// Reads and parses a checkpoint file; errors name the file.
    pub fn read(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Checkpoint::from_bytes(&bytes, path)
    }

    /// Parses a checkpoint file's bytes; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
        let bad = |what: String| Error::Checkpoint {
            path: path.into(),
            what,
        };
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            bad(format!(
                "not a readable safetensors file ({e}); truncated or corrupt?"
            ))
        })?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let meta: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        match meta.get("format").map(String::as_str) {
            Some(FORMAT) => {}
            other => {
                return Err(bad(format!(
                    "format {other:?} is not {FORMAT:?}: not a checkpoint written by this program"
                )))
            }
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = match view.dtype() {
                Dtype::F32 => Data::F32(
                    view.data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                Dtype::U32 => Data::U32(
                    view.data()
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                other => {
                    return Err(bad(format!(
                        "tensor `{name}` has dtype {other:?}; only F32 and U32 are written"
                    )))
                }
            };
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Ok(Checkpoint {
            tensors,
            meta,
            origin: path.into(),
        })
    }
}

/// `dir/checkpoint-<step>.safetensors`.
pub fn path_for(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("checkpoint-{step:08}.safetensors"))
}

/// The step in a checkpoint file's name (`checkpoint-<step>.safetensors`).
pub fn step_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// Checkpoints in `dir`, oldest first (by the step in their names, so that steps past the
/// zero-padded width still sort).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| Some((step_of(&p)?, p)))
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// The checkpoint [`find`] chose, and the newer files it passed over.
#[derive(Debug)]
pub struct Found {
    pub checkpoint: Checkpoint,
    /// Newer checkpoint files that are corrupt or truncated, newest first: each error names the
    /// file and what is wrong with it. Tell the user (the run resumes from an older step).
    pub skipped: Vec<Error>,
}

/// Reads a checkpoint and checks that it names its step.
fn read_intact(path: &Path) -> Result<Checkpoint> {
    let ck = Checkpoint::read(path)?;
    ck.meta_parse::<u64>("step")?;
    Ok(ck)
}

/// The checkpoint to resume or evaluate from `path`: the file itself when `path` is a file, or
/// the newest intact checkpoint of a run directory, passing over newer files that do not parse
/// (truncated by a full disk, damaged) and listing them in [`Found::skipped`].
///
/// Errors: `path` missing; a given file that is not an intact checkpoint; a directory with no
/// checkpoint, or none intact (the message names each file and its problem).
pub fn find(path: &Path) -> Result<Found> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(Found {
            checkpoint: read_intact(path)?,
            skipped: vec![],
        });
    }
    let mut skipped = vec![];
    for file in list(path).iter().rev() {
        match read_intact(file) {
            Ok(checkpoint) => {
                return Ok(Found {
                    checkpoint,
                    skipped,
                })
            }
            Err(e) => skipped.push(e),
        }
    }
    let what = if skipped.is_empty() {
        "no checkpoint-*.safetensors in this directory".to_string()
    } else {
        let each: Vec<String> = skipped.iter().map(|e| e.to_string()).collect();
        format!(
            "no intact checkpoint in this directory: {}",
            each.join("; ")
        )
    };
    Err(Error::Checkpoint {
        path: path.into(),
        what,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory, so that a crash or SIGKILL mid-write leaves the previous file intact. A failed
/// write removes its temporary file; errors name the file that failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `ck` as the checkpoint of `step` and keeps only the newest `keep`.
pub fn save_rotating(ck: &Checkpoint, dir: &Path, step: u64, keep: usize) -> Result<PathBuf> {
    let path = path_for(dir, step);
    ck.write(&path)?;
    let all = list(dir);
    for old in &all[..all.len().saturating_sub(keep.max(1))] {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}
