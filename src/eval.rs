//! Measuring a representation honestly: features from the frozen encoder (BatchNorm in eval mode,
//! computed once), a kNN classifier and a linear probe on them, always beside the same probes on a
//! randomly initialised encoder and on raw pixels.
//!
//! kNN (the MoCo monitor): L2-normalised features, cosine similarity to every bank feature (a GEMM
//! on the GPU), the k = 200 nearest vote for their class with weight exp(sim/τ), τ = 0.1.
//! Linear probe: multinomial logistic regression on standardised features, trained on the host
//! with mini-batch SGD (momentum 0.9, cosine learning rate); the encoder is never touched.

use rand::SeedableRng;

use crate::autodiff::{Graph, Var};
use crate::data::{Augment, GpuImages, SequenceSet, SequenceSplit, Split};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::augment::{self, SAMPLE_WORDS};
use crate::kernels::matmul::{self, Matmul, Trans};
use crate::memory::{Arena, Tensor};
use crate::methods::Method;

/// Features with their labels, row-major [len, dim].
#[derive(Clone, Debug)]
pub struct FeatureSet {
    pub data: Vec<f32>,
    pub labels: Vec<u8>,
    pub dim: usize,
}

impl FeatureSet {
    /// The rows as the linear probe takes them.
    pub fn rows(&self) -> crate::probe::Rows<'_> {
        crate::probe::Rows {
            x: &self.data,
            labels: &self.labels,
            dim: self.dim,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Images `0..len` of `images` as unaugmented batches, each recorded by `f(batch, first_index)`.
fn for_batches(
    gpu: &Gpu,
    arena: &mut Arena,
    images: &GpuImages,
    batch: usize,
    mut f: impl FnMut(&mut Arena, Tensor, usize) -> Result<()>,
) -> Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for start in (0..images.len).step_by(batch) {
        let idx: Vec<u32> = (start as u32..(start + batch).min(images.len) as u32).collect();
        arena.reset();
        let samples = Augment::none().sample(&mut rng, &idx, images.height, images.width);
        let st = arena.tensor(gpu, [idx.len() * SAMPLE_WORDS])?;
        gpu.upload(st.region, &samples)?;
        let x = arena.tensor(
            gpu,
            [idx.len(), images.height, images.width, images.channels],
        )?;
        augment::augment(gpu, images, &st, &x, 0.0, 0)?;
        f(arena, x, start)?;
    }
    Ok(())
}

/// Features of every image from a frozen model: `f` records the features of a batch on an
/// inference graph (BatchNorm in eval mode is the caller's part).
pub fn features(
    gpu: &Gpu,
    f: &dyn Fn(&mut Graph, Var) -> Result<Var>,
    images: &GpuImages,
    labels: &[u8],
) -> Result<FeatureSet> {
    features_counted(gpu, f, images, labels, &mut |_| {})
}

/// [`features`], telling `done` how many images are done after each batch.
pub fn features_counted(
    gpu: &Gpu,
    f: &dyn Fn(&mut Graph, Var) -> Result<Var>,
    images: &GpuImages,
    labels: &[u8],
    done: &mut dyn FnMut(usize),
) -> Result<FeatureSet> {
    let mut data = Vec::with_capacity(images.len);
    let mut dim = 0;
    let mut arena = Arena::for_gpu("eval", gpu);
    for_batches(gpu, &mut arena, images, 256, |arena, x, start| {
        let rows = x.shape.dim(0);
        let mut g = Graph::inference(gpu, arena);
        let x = g.input(x);
        let y = f(&mut g, x)?;
        dim = g.shape(y).rows_cols().1;
        data.extend(g.read(y)?);
        done(start + rows);
        Ok(())
    })?;
    arena.free(gpu)?;
    Ok(FeatureSet {
        data,
        labels: labels.to_vec(),
        dim,
    })
}

/// Crops per sequence when sequences are evaluated as fixed-length crops (long recordings).
pub const CROPS_PER_SEQUENCE: usize = 4;

/// The evaluation examples of `set`: `(sequence, first frame, frames)`, whole sequences or up to
/// [`CROPS_PER_SEQUENCE`] consecutive crops of `crop` frames (sequences shorter than a crop give
/// none). Sorted by length, so equal lengths batch together; the same order for every feature.
fn examples(set: &SequenceSet, crop: Option<usize>) -> Vec<(usize, usize, usize)> {
    let mut out = vec![];
    for i in 0..set.len() {
        let frames = set.frames(i);
        match crop {
            None => out.push((i, 0, frames)),
            Some(c) => {
                for k in 0..(frames / c.max(1)).min(CROPS_PER_SEQUENCE) {
                    out.push((i, k * c, c));
                }
            }
        }
    }
    out.sort_by_key(|&(i, _, len)| (len, i));
    out
}

fn labels_u8(set: &SequenceSet, ex: &[(usize, usize, usize)]) -> Result<Vec<u8>> {
    ex.iter()
        .map(|&(i, _, _)| {
            u8::try_from(set.labels[i]).map_err(|_| {
                Error::Config(format!(
                    "{} classes: the probes handle at most 256",
                    set.num_classes()
                ))
            })
        })
        .collect()
}

fn no_examples(crop: Option<usize>) -> Error {
    Error::Config(format!(
        "no sequence is long enough for an evaluation crop of {} frames",
        crop.unwrap_or(0)
    ))
}

/// Features of every evaluation example of `set` (see `examples`) from a frozen model: `f`
/// records the features of a batch `[n, frames, dim]` (`[n, frames]` for one channel).
pub fn sequence_features(
    gpu: &Gpu,
    f: &dyn Fn(&mut Graph, Var) -> Result<Var>,
    set: &SequenceSet,
    crop: Option<usize>,
) -> Result<FeatureSet> {
    let ex = examples(set, crop);
    if ex.is_empty() {
        return Err(no_examples(crop));
    }
    let mut data = vec![];
    let mut dim = 0;
    let mut arena = Arena::for_gpu("eval", gpu);
    // Batches of equal length, capped at about 4M input values.
    let mut start = 0;
    while start < ex.len() {
        let len = ex[start].2;
        let cap = (4 << 20) / (len * set.dim).max(1);
        let mut end = start;
        while end < ex.len() && ex[end].2 == len && end - start < cap.clamp(1, 256) {
            end += 1;
        }
        let mut x = Vec::with_capacity((end - start) * len * set.dim);
        for &(i, first, n) in &ex[start..end] {
            x.extend_from_slice(&set.seqs[i][first * set.dim..(first + n) * set.dim]);
        }
        arena.reset();
        let n = end - start;
        let xt = if set.dim == 1 {
            arena.upload(gpu, [n, len], &x)?
        } else {
            arena.upload(gpu, [n, len, set.dim], &x)?
        };
        let mut g = Graph::inference(gpu, &mut arena);
        let xv = g.input(xt);
        let y = f(&mut g, xv)?;
        dim = g.shape(y).rows_cols().1;
        data.extend(g.read(y)?);
        start = end;
    }
    arena.free(gpu)?;
    Ok(FeatureSet {
        data,
        labels: labels_u8(set, &ex)?,
        dim,
    })
}

/// The mean frame of every evaluation example: the raw-input baseline for sequences.
pub fn mean_frames(set: &SequenceSet, crop: Option<usize>) -> Result<FeatureSet> {
    let ex = examples(set, crop);
    if ex.is_empty() {
        return Err(no_examples(crop));
    }
    let mut data = Vec::with_capacity(ex.len() * set.dim);
    for &(i, first, n) in &ex {
        let mut mean = vec![0.0f64; set.dim];
        for t in first..first + n {
            for (m, &v) in mean
                .iter_mut()
                .zip(&set.seqs[i][t * set.dim..(t + 1) * set.dim])
            {
                *m += v as f64 / n as f64;
            }
        }
        data.extend(mean.iter().map(|&m| m as f32));
    }
    Ok(FeatureSet {
        data,
        labels: labels_u8(set, &ex)?,
        dim: set.dim,
    })
}

/// Raw pixels, normalised with the dataset mean and std, as features.
pub fn pixels(gpu: &Gpu, images: &GpuImages, labels: &[u8]) -> Result<FeatureSet> {
    let dim = images.height * images.width * images.channels;
    let mut data = Vec::with_capacity(images.len * dim);
    let mut arena = Arena::for_gpu("eval", gpu);
    for_batches(gpu, &mut arena, images, 1024, |_, x, _| {
        data.extend(gpu.read::<f32>(x.region)?);
        Ok(())
    })?;
    arena.free(gpu)?;
    Ok(FeatureSet {
        data,
        labels: labels.to_vec(),
        dim,
    })
}

fn l2_normalised(f: &FeatureSet) -> Vec<f32> {
    let mut out = f.data.clone();
    crate::nn::normalize_rows(&mut out, f.dim);
    out
}

/// Weighted kNN accuracy of `query` against `bank` (cosine similarity, k nearest, weights
/// exp(sim/τ)). Similarities are computed on the GPU, the top-k selection on the host.
pub fn knn(gpu: &Gpu, bank: &FeatureSet, query: &FeatureSet, k: usize, tau: f32) -> Result<f64> {
    let classes = bank
        .labels
        .iter()
        .chain(&query.labels)
        .max()
        .map_or(1, |&m| m as usize + 1);
    let k = k.min(bank.len()).max(1);
    let words = (gpu.max_binding() / 4) as usize;
    // The bank is uploaded in blocks of rows that each fit one binding (60,000 raw 28×28 images
    // do not), and queries go in chunks whose similarity rows to one block fit too.
    let block = (words / bank.dim.max(1)).clamp(1, bank.len().max(1));
    let mut bank_arena = Arena::for_gpu("knn bank", gpu);
    let bn = l2_normalised(bank);
    let blocks: Vec<(usize, Tensor)> = (0..bank.len())
        .step_by(block)
        .map(|b0| {
            let b1 = (b0 + block).min(bank.len());
            let t =
                bank_arena.upload(gpu, [b1 - b0, bank.dim], &bn[b0 * bank.dim..b1 * bank.dim])?;
            Ok((b0, t))
        })
        .collect::<Result<_>>()?;
    let mut arena = Arena::for_gpu("knn", gpu);
    let qn = l2_normalised(query);
    let chunk = (words / block.max(query.dim)).clamp(1, 256);
    let mut correct = 0usize;
    let mut scores = vec![0f64; classes];
    let mut sims = vec![0f32; chunk * bank.len()];
    for start in (0..query.len()).step_by(chunk) {
        let end = (start + chunk).min(query.len());
        let rows = end - start;
        let q = arena.upload(
            gpu,
            [rows, query.dim],
            &qn[start * query.dim..end * query.dim],
        )?;
        for (b0, bt) in &blocks {
            let n = bt.shape.dim(0);
            let out = arena.tensor(gpu, [rows, n])?;
            let spec = Matmul {
                trans: Trans::NT,
                ..Default::default()
            };
            matmul::matmul(gpu, &q, bt, &out, &spec)?;
            let part: Vec<f32> = gpu.read(out.region)?;
            for r in 0..rows {
                sims[r * bank.len() + b0..r * bank.len() + b0 + n]
                    .copy_from_slice(&part[r * n..(r + 1) * n]);
            }
        }
        for (r, row) in sims.chunks(bank.len()).take(rows).enumerate() {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
            scores.fill(0.0);
            for &j in &order[..k] {
                scores[bank.labels[j] as usize] += ((row[j] / tau) as f64).exp();
            }
            let best = (0..classes)
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                .unwrap();
            correct += (best == query.labels[start + r] as usize) as usize;
        }
        arena.reset();
    }
    arena.free(gpu)?;
    bank_arena.free(gpu)?;
    Ok(correct as f64 / query.len().max(1) as f64)
}

/// The converged linear probe ([`crate::probe`]) on `train`, scored on `test`.
pub fn linear_probe(train: &FeatureSet, test: &FeatureSet) -> Result<f64> {
    Ok(crate::probe::linear_probe(train.rows(), test.rows())?.accuracy)
}

/// Accuracy of one representation under both probes.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct ProbeResult {
    pub knn: f64,
    pub linear: f64,
}

/// The evaluation table: trained encoder beside a random one and raw pixels.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub trained: ProbeResult,
    pub random: ProbeResult,
    /// The raw input: pixels, or mean-pooled frames for sequences.
    pub pixels: ProbeResult,
    /// What the raw row shows.
    #[serde(default)]
    pub raw: String,
}

impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<22} {:>10} {:>14}",
            "representation", "kNN (%)", "linear (%)"
        )?;
        for (name, r) in [
            ("trained encoder", self.trained),
            ("random encoder", self.random),
            (self.raw.as_str(), self.pixels),
        ] {
            writeln!(
                f,
                "{name:<22} {:>10.2} {:>14.2}",
                r.knn * 100.0,
                r.linear * 100.0
            )?;
        }
        Ok(())
    }
}

/// Features of a batch recorded on an inference graph.
pub type FeatureFn<'a> = &'a dyn Fn(&mut Graph, Var) -> Result<Var>;

/// The labelled data a representation is probed on: images on the GPU, or sequences on the host
/// (whole sequences, or with `crop` up to [`CROPS_PER_SEQUENCE`] consecutive crops of that
/// many frames from each).
#[derive(Clone, Copy)]
pub enum EvalData<'a> {
    Images {
        split: &'a Split,
        train: &'a GpuImages,
        test: &'a GpuImages,
    },
    Sequences {
        split: &'a SequenceSplit,
        crop: Option<usize>,
    },
}

impl EvalData<'_> {
    /// Why the data cannot be scored, when its images carry no labels (a flat folder).
    pub fn unlabelled(&self) -> Option<String> {
        match self {
            EvalData::Images { split, .. } if !split.train.is_labelled() => Some(
                "kNN and linear-probe accuracy need labelled images, and these are a flat folder without class sub-folders: put each class's images in its own sub-folder of --data-dir (and of --val-dir)".into(),
            ),
            _ => None,
        }
    }

    fn labelled(&self) -> Result<()> {
        self.unlabelled()
            .map_or(Ok(()), |why| Err(Error::Config(why)))
    }

    /// (train, test) features of a frozen model.
    fn features(&self, gpu: &Gpu, f: FeatureFn) -> Result<(FeatureSet, FeatureSet)> {
        Ok(match *self {
            EvalData::Images { split, train, test } => (
                features(gpu, f, train, &split.train.labels)?,
                features(gpu, f, test, &split.test.labels)?,
            ),
            EvalData::Sequences { split, crop } => (
                sequence_features(gpu, f, &split.train, crop)?,
                sequence_features(gpu, f, &split.test, crop)?,
            ),
        })
    }

    /// The raw input as (train, test) features, and its name: pixels, or the mean frame.
    fn raw(&self, gpu: &Gpu) -> Result<(FeatureSet, FeatureSet, &'static str)> {
        Ok(match *self {
            EvalData::Images { split, train, test } => (
                pixels(gpu, train, &split.train.labels)?,
                pixels(gpu, test, &split.test.labels)?,
                "raw pixels",
            ),
            EvalData::Sequences { split, crop } => (
                mean_frames(&split.train, crop)?,
                mean_frames(&split.test, crop)?,
                "raw (mean frame)",
            ),
        })
    }
}

/// The evaluation table: the trained and the random model's features, and the raw input.
/// `progress` hears of each phase as it starts (features, kNN, linear probe of each row), since
/// the whole takes minutes on a large test set.
pub fn evaluate(
    gpu: &Gpu,
    trained: FeatureFn,
    random: FeatureFn,
    data: EvalData,
    progress: &dyn Fn(&str),
) -> Result<Evaluation> {
    data.labelled()?;
    let mut rows = vec![];
    for (name, f) in [("trained model", trained), ("random model", random)] {
        progress(&format!("{name}: features"));
        let (train, test) = data.features(gpu, f)?;
        rows.push(probe(gpu, &train, &test, name, progress)?);
    }
    progress("raw input: features");
    let (raw_train, raw_test, raw) = data.raw(gpu)?;
    Ok(Evaluation {
        trained: rows[0],
        random: rows[1],
        pixels: probe(gpu, &raw_train, &raw_test, raw, progress)?,
        raw: raw.into(),
    })
}

/// Probes one feature set pair (of the representation `name`) with kNN and the linear probe,
/// telling `progress` of each.
pub fn probe(
    gpu: &Gpu,
    train: &FeatureSet,
    test: &FeatureSet,
    name: &str,
    progress: &dyn Fn(&str),
) -> Result<ProbeResult> {
    progress(&format!(
        "{name}: kNN of {} test against {} training examples",
        test.len(),
        train.len()
    ));
    let knn = knn(gpu, train, test, 200, 0.1)?;
    progress(&format!("{name}: linear probe on {} features", train.dim));
    Ok(ProbeResult {
        knn,
        linear: linear_probe(train, test)?,
    })
}

/// kNN accuracy of the method's current model on the held-out data.
pub fn knn_monitor(gpu: &Gpu, method: &dyn Method, data: EvalData) -> Result<f64> {
    data.labelled()?;
    let f = |g: &mut Graph, x: Var| method.features(g, x);
    let (bank, query) = data.features(gpu, &f)?;
    knn(gpu, &bank, &query, 200, 0.1)
}
