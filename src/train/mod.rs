//! The trainer shared by every method: epochs of shuffled fixed-size batches, one recorded step
//! (`step`) and one submission per batch, progress, the kNN monitor, resumable checkpoints, and
//! the diagnosis of a step that held a non-finite value, and the kernel choices a run starts with
//! (tuned on one dry-run step, or pinned from the checkpoint it resumes).

mod progress;
mod step;

pub use step::{record_step, rewind, StepOutput};

use std::time::Instant;

pub use progress::Progress;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::checkpoint::{self, Checkpoint};
use crate::data::Augment;
use crate::dist;
use crate::error::{Error, Result};
use crate::gpu::tune::{Budget, Cache, Mode, Trial, Tuning};
use crate::gpu::Gpu;
use crate::memory::Arena;
use crate::methods::{Examples, Method, StepInput};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub steps: u64,
    pub seed: u64,
    pub augment: Augment,
    /// Run the kNN monitor every this many steps (0: only at the end).
    pub knn_every: u64,
    /// Images of the held-out set used by the kNN monitor during training (all at the end).
    pub monitor_images: usize,
    pub progress: bool,
}

/// One line of the training log.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    pub step: u64,
    pub epoch: f64,
    pub loss: f32,
    /// Contrastive accuracy; none for methods without one (Deep InfoMax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f32>,
    pub lr: f32,
    pub images_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn: Option<f64>,
    /// Loss and contrastive accuracy of each predicted offset (CPC), k = 1, 2, ….
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<[f32; 2]>,
}

/// Checks the batch against the data and the adapter before any work starts.
pub fn validate(cfg: &TrainConfig, train_len: usize) -> Result<()> {
    if cfg.batch_size == 0 {
        return Err(Error::Config("--batch-size must be at least 1".into()));
    }
    if cfg.batch_size > train_len {
        return Err(Error::Config(format!(
            "--batch-size {} is larger than the {train_len} training examples",
            cfg.batch_size
        )));
    }
    if cfg.steps == 0 {
        return Err(Error::Config("nothing to do: 0 training steps".into()));
    }
    let ranks = dist::size();
    if !cfg.batch_size.is_multiple_of(ranks) {
        return Err(Error::Config(format!(
            "--batch-size {} must be a multiple of the {ranks} ranks (each trains on an equal \
             slice of the global batch)",
            cfg.batch_size
        )));
    }
    Ok(())
}

/// Draws the batches: each epoch a new seeded permutation, cut into full batches.
pub struct Batches {
    order: Vec<u32>,
    pos: usize,
    batch: usize,
    rng: rand_chacha::ChaCha8Rng,
}

impl Batches {
    pub fn new(len: usize, batch: usize, seed: u64) -> Batches {
        let mut b = Batches {
            order: (0..len as u32).collect(),
            pos: usize::MAX,
            batch,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        };
        b.pos = b.order.len();
        b
    }

    /// Adds the permutation, the position in it and the RNG state under `trainer.batches`.
    pub fn save(&self, ck: &mut Checkpoint) {
        ck.put_u32("trainer.order", &[self.order.len()], self.order.clone());
        ck.meta.insert("trainer.pos".into(), self.pos.to_string());
        save_rng(ck, "trainer.batch_rng", &self.rng);
    }

    pub fn load(&mut self, ck: &Checkpoint) -> Result<()> {
        let order = ck.get_u32("trainer.order")?;
        if order.len() != self.order.len() {
            return Err(Error::Checkpoint {
                path: ck.origin.clone(),
                what: format!(
                    "it was trained on {} images, this run has {}",
                    order.len(),
                    self.order.len()
                ),
            });
        }
        let pos: usize = ck.meta_parse("trainer.pos")?;
        let mut seen = vec![false; order.len()];
        let permutation = order.iter().all(|&i| {
            seen.get_mut(i as usize)
                .is_some_and(|s| !std::mem::replace(s, true))
        });
        if pos > order.len() || !permutation {
            return Err(Error::Checkpoint {
                path: ck.origin.clone(),
                what: "the batch order or the position in it is corrupt".into(),
            });
        }
        self.order = order;
        self.pos = pos;
        self.rng = load_rng(ck, "trainer.batch_rng")?;
        Ok(())
    }

    pub fn next_batch(&mut self) -> &[u32] {
        if self.pos + self.batch > self.order.len() {
            self.order.shuffle(&mut self.rng);
            self.pos = 0;
        }
        self.pos += self.batch;
        &self.order[self.pos - self.batch..self.pos]
    }
}

fn save_rng(ck: &mut Checkpoint, key: &str, rng: &rand_chacha::ChaCha8Rng) {
    let seed: String = rng.get_seed().iter().map(|b| format!("{b:02x}")).collect();
    ck.meta.insert(
        key.into(),
        format!("{seed}:{}:{}", rng.get_stream(), rng.get_word_pos()),
    );
}

fn load_rng(ck: &Checkpoint, key: &str) -> Result<rand_chacha::ChaCha8Rng> {
    let bad = || Error::Checkpoint {
        path: ck.origin.clone(),
        what: format!("metadata `{key}` is not a valid RNG state"),
    };
    let v = ck.meta(key)?;
    let mut parts = v.split(':');
    let (Some(seed), Some(stream), Some(pos)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let mut bytes = [0u8; 32];
    if seed.len() != 64 || !seed.is_ascii() {
        return Err(bad());
    }
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&seed[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(bytes);
    rng.set_stream(stream.parse().map_err(|_| bad())?);
    rng.set_word_pos(pos.parse().map_err(|_| bad())?);
    Ok(rng)
}

/// Restores the trainer's own state from a checkpoint — batch order and position, augmentation
/// RNG — and returns the RNG and the first step to run.
pub fn load_trainer_state(
    ck: &Checkpoint,
    batches: &mut Batches,
) -> Result<(rand_chacha::ChaCha8Rng, u64)> {
    batches.load(ck)?;
    let rng = load_rng(ck, "trainer.augment_rng")?;
    let step: u64 = ck.meta_parse("step")?;
    let first = step.checked_add(1).ok_or_else(|| Error::Checkpoint {
        path: ck.origin.clone(),
        what: format!("step {step} is not a valid step"),
    })?;
    Ok((rng, first))
}

/// Adds the largest batch that fits to a memory error: the tensor that did not fit grows
/// linearly with the batch (activations, logits against a queue).
pub fn with_batch_advice(e: Error, batch: usize) -> Error {
    match e {
        Error::OutOfMemory {
            what,
            needed,
            limit,
            advice,
        } => {
            let fits = (batch as u128 * limit as u128 / needed.max(1) as u128) as usize;
            Error::OutOfMemory {
                what: format!("{what} at batch size {batch}"),
                needed,
                limit,
                advice: format!("{advice}; the largest batch that fits is about {fits}"),
            }
        }
        e => e,
    }
}

/// Where and how often checkpoints are written.
#[derive(Clone, Debug)]
pub struct Checkpointing {
    pub dir: std::path::PathBuf,
    /// Every this many steps (0: only at the end and on interruption).
    pub every: u64,
    /// How many checkpoints to keep.
    pub keep: usize,
    /// What every checkpoint starts from: metadata (the command, the encoder configuration) and
    /// tensors (the input normalisation).
    pub base: Checkpoint,
}

/// How a training run ended.
pub struct Outcome {
    pub lines: Vec<LogLine>,
    /// The last step done.
    pub step: u64,
    /// Stopped early by the `stop` flag (Ctrl-C).
    pub interrupted: bool,
    pub checkpoint: Option<std::path::PathBuf>,
}

/// The trainer's own state in a checkpoint: step, batch order and RNGs.
fn save_state(
    gpu: &Gpu,
    method: &dyn Method,
    step: u64,
    batches: &Batches,
    rng: &rand_chacha::ChaCha8Rng,
    base: &Checkpoint,
) -> Result<Checkpoint> {
    let mut ck = base.clone();
    ck.meta.insert("method".into(), method.name().into());
    ck.meta.insert("step".into(), step.to_string());
    ck.meta.insert(RANKS_KEY.into(), dist::size().to_string());
    batches.save(&mut ck);
    save_rng(&mut ck, "trainer.augment_rng", rng);
    method.save(gpu, &mut ck)?;
    ck.meta
        .insert(TUNING_KEY.into(), Tuning::encode(gpu.tuning().choices()));
    Ok(ck)
}

/// The checkpoint metadata holding the number of ranks that trained it (absent: one).
const RANKS_KEY: &str = "trainer.ranks";

/// A run resumes with the ranks it was trained with: each rank's BatchNorm normalises its own
/// slice of the batch, so other ranks would train another model than the uninterrupted run.
fn check_ranks(ck: &Checkpoint) -> Result<()> {
    let trained: usize = match ck.meta.get(RANKS_KEY) {
        Some(_) => ck.meta_parse(RANKS_KEY)?,
        None => 1,
    };
    if trained != dist::size() {
        return Err(Error::Checkpoint {
            path: ck.origin.clone(),
            what: format!(
                "it was trained by {trained} rank(s) and resumes only with as many (this run has \
                 {}): each rank normalises its own slice of the batch, so another count trains \
                 another model; use `mpirun -n {trained}`",
                dist::size()
            ),
        });
    }
    Ok(())
}

/// Checks that every rank holds the same state — the tensors of the checkpoint `ck` each rank
/// made at `step`, bit for bit — which the step's averaging promises: a rank that drifted would
/// train another model than the one rank 0 saves.
fn check_ranks_agree(ck: &Checkpoint, step: u64) -> Result<()> {
    if dist::size() == 1 {
        return Ok(());
    }
    // FNV-1a over the tensors' words, exchanged as four 16-bit parts (exact in f32).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for name in ck.names() {
        let shape = ck.shape(name).unwrap_or_default().to_vec();
        let words = match ck.get_f32(name, &shape) {
            Ok(v) => v.iter().map(|x| x.to_bits()).collect(),
            Err(_) => ck.get_u32(name)?,
        };
        for w in name.bytes().map(u32::from).chain(words) {
            hash = (hash ^ u64::from(w)).wrapping_mul(0x100_0000_01b3);
        }
    }
    let parts: Vec<f32> = (0..4)
        .map(|i| ((hash >> (16 * i)) & 0xffff) as f32)
        .collect();
    let all = dist::all_gather(&parts);
    if all.chunks(4).any(|c| c != parts.as_slice()) {
        return Err(Error::Gpu(format!(
            "the ranks hold different parameters or state at step {step}, although every step \
             averages them; is one of the devices non-deterministic?"
        )));
    }
    Ok(())
}

/// The checkpoint metadata holding the kernel choices in force.
const TUNING_KEY: &str = "trainer.tuning";

/// Records one step of `method` that changes no state (a dry run, on a clone of the augment RNG,
/// rewound afterwards) and runs it: the kernel choosers ask the gpu's tuning for every shape the
/// step uses, so those without a choice become wanted.
fn collect_shapes(
    gpu: &Gpu,
    method: &mut dyn Method,
    arena: &mut Arena,
    examples: Examples,
    cfg: &TrainConfig,
    rng: &rand_chacha::ChaCha8Rng,
) -> Result<()> {
    let indices: Vec<u32> = (0..cfg.batch_size)
        .map(|i| (i % examples.len().max(1)) as u32)
        .collect();
    let run = record_step(
        method,
        StepInput {
            gpu,
            arena,
            examples,
            indices: &indices,
            augment: &cfg.augment,
            rng: &mut rng.clone(),
            step: 1,
            dry_run: true,
        },
    )
    .map_err(|e| with_batch_advice(e, cfg.batch_size));
    let synced = run.and_then(|_| gpu.sync());
    rewind(method);
    synced
}

/// Sets the kernel choices before the first step. A resumed run pins those its checkpoint
/// recorded (none: the heuristics), so it runs the kernels its original ran. A fresh run with
/// tuning on takes the choices cached for this adapter and, in full mode, times the shapes of
/// one dry-run step that the cache lacks and stores the winners.
#[allow(clippy::too_many_arguments)]
fn prepare_tuning(
    gpu: &Gpu,
    method: &mut dyn Method,
    arena: &mut Arena,
    examples: Examples,
    cfg: &TrainConfig,
    resume: Option<&Checkpoint>,
    rng: &rand_chacha::ChaCha8Rng,
) -> Result<()> {
    if let Some(ck) = resume {
        let choices = match ck.meta.get(TUNING_KEY) {
            Some(text) => Tuning::decode(text)?,
            None => Default::default(),
        };
        gpu.tuning().pin(choices);
        return Ok(());
    }
    let mode = gpu.tuning().mode();
    if mode == Mode::Off {
        return Ok(());
    }
    if let Some(c) = Cache::user() {
        let cached = c.load(&gpu.identity())?;
        gpu.tuning().merge(&cached);
    }
    if mode != Mode::Full {
        return Ok(());
    }
    tune_step(gpu, method, arena, examples, cfg, rng)?;
    Ok(())
}

/// Times every candidate of the shapes one step of `method` uses and has no choice for (see
/// [`crate::kernels::tune`]), makes the fastest the choices and stores them in the user's tuning
/// cache. Returns every measurement (none where the adapter has no timestamp queries).
pub fn tune_step(
    gpu: &Gpu,
    method: &mut dyn Method,
    arena: &mut Arena,
    examples: Examples,
    cfg: &TrainConfig,
    rng: &rand_chacha::ChaCha8Rng,
) -> Result<Vec<Trial>> {
    collect_shapes(gpu, method, arena, examples, cfg, rng)?;
    let trials = crate::kernels::tune(gpu, Budget::default())?;
    if let (Some(c), false) = (Cache::user(), trials.is_empty()) {
        c.store(&gpu.identity(), gpu.tuning().choices())?;
    }
    Ok(trials)
}

/// A held-out accuracy of the method as it stands (e.g. [`crate::eval::knn_monitor`]), run every
/// `cfg.knn_every` steps.
pub type Monitor<'a> = &'a dyn Fn(&dyn Method) -> Result<f64>;

/// Re-runs a step that tripped the non-finite guard (`input` as the first time, with the augment
/// RNG as it was before the step) with a finite check around every command, and names the first
/// command that wrote — or read, when the value came from before the step — a NaN or an infinity.
/// The re-run is a dry run: its guard is raised whatever the values, so it changes no state either.
fn diagnose(method: &mut dyn Method, input: StepInput<'_>) -> Result<String> {
    let gpu = input.gpu;
    // The first run left its values in the step arena; cleared, no stale value reads as an input.
    input.arena.clear(gpu);
    gpu.begin_finite_checks(crate::kernels::guard::check_finite)?;
    let run = record_step(method, input);
    let found = gpu.end_finite_checks();
    run?;
    rewind(method);
    Ok(found?.unwrap_or_else(|| {
        "the guard saw a non-finite loss or gradient, but a re-run with a check after every \
         command found none (is the device deterministic?)"
            .into()
    }))
}

/// Runs training steps up to `cfg.steps` (continuing from `resume` if given), calling `log` with
/// every step's line, checkpointing as `ckpt` says, and stopping cleanly — with a checkpoint —
/// when `stop` becomes true.
#[allow(clippy::too_many_arguments)]
pub fn train(
    gpu: &Gpu,
    method: &mut dyn Method,
    examples: Examples,
    monitor: Option<Monitor>,
    cfg: &TrainConfig,
    ckpt: Option<&Checkpointing>,
    resume: Option<&Checkpoint>,
    stop: &std::sync::atomic::AtomicBool,
    mut log: impl FnMut(&LogLine) -> Result<()>,
) -> Result<Outcome> {
    validate(cfg, examples.len())?;
    let mut arena = Arena::for_gpu("step", gpu);
    let mut batches = Batches::new(examples.len(), cfg.batch_size, cfg.seed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xa076_1d64);
    let mut first = 1;
    if let Some(ck) = resume {
        if ck.meta("method")? != method.name() {
            return Err(Error::Checkpoint {
                path: ck.origin.clone(),
                what: format!(
                    "it is a {} checkpoint, not {}",
                    ck.meta("method")?,
                    method.name()
                ),
            });
        }
        check_ranks(ck)?;
        method.load(gpu, ck)?;
        (rng, first) = load_trainer_state(ck, &mut batches)?;
    }
    prepare_tuning(gpu, method, &mut arena, examples, cfg, resume, &rng)?;
    let mut bar = Progress::new(cfg.steps, first, cfg.progress);
    // Every rank holds the same state, checked here: rank 0 alone writes it.
    let save =
        |method: &dyn Method, step: u64, batches: &Batches, rng: &rand_chacha::ChaCha8Rng| {
            ckpt.map(|c| -> Result<Option<std::path::PathBuf>> {
                let ck = save_state(gpu, method, step, batches, rng, &c.base)?;
                check_ranks_agree(&ck, step)?;
                dist::is_root()
                    .then(|| checkpoint::save_rotating(&ck, &c.dir, step, c.keep))
                    .transpose()
            })
            .transpose()
            .map(Option::flatten)
        };
    let mut lines = vec![];
    let mut images_per_s = 0.0;
    let mut last_saved = None;
    let mut step = first - 1;
    while step < cfg.steps {
        // Agreed, so that every rank stops after the same step.
        if dist::any(stop.load(std::sync::atomic::Ordering::SeqCst)) {
            bar.abandon();
            let path = save(method, step, &batches, &rng)?;
            return Ok(Outcome {
                lines,
                step,
                interrupted: true,
                checkpoint: path.or(last_saved),
            });
        }
        step += 1;
        let t = Instant::now();
        let indices = batches.next_batch().to_vec();
        let rng_before = rng.clone();
        let out = record_step(
            method,
            StepInput {
                gpu,
                arena: &mut arena,
                examples,
                indices: &indices,
                augment: &cfg.augment,
                rng: &mut rng,
                step,
                dry_run: false,
            },
        )
        .map_err(|e| with_batch_advice(e, cfg.batch_size))?;
        let stats: Vec<f32> = gpu.read(out.stats.region)?;
        let rate = cfg.batch_size as f64 / t.elapsed().as_secs_f64();
        // Smoothed for display; the first steps include pipeline compilation.
        images_per_s = if step <= first + 1 {
            rate
        } else {
            0.9 * images_per_s + 0.1 * rate
        };
        if stats[2].to_bits() != 0 || !stats[0].is_finite() {
            bar.abandon();
            rewind(method);
            let replay = StepInput {
                gpu,
                arena: &mut arena,
                examples,
                indices: &indices,
                augment: &cfg.augment,
                rng: &mut rng_before.clone(),
                step,
                dry_run: true,
            };
            let op = diagnose(method, replay)?;
            return Err(Error::NonFinite {
                step,
                op,
                checkpoint: ckpt.and_then(|c| checkpoint::list(&c.dir).pop()),
                advice: "resume from it with a lower learning rate".into(),
            });
        }
        let knn = monitor
            .filter(|_| cfg.knn_every > 0 && step % cfg.knn_every == 0 && dist::is_root())
            .map(|m| m(method))
            .transpose()?;
        let line = LogLine {
            step,
            epoch: (step * cfg.batch_size as u64) as f64 / examples.len() as f64,
            loss: stats[0],
            accuracy: stats[1].is_finite().then_some(stats[1]),
            lr: out.lr,
            images_per_s,
            knn,
            offsets: stats[3..].chunks(2).map(|c| [c[0], c[1]]).collect(),
        };
        let acc = line
            .accuracy
            .map_or(String::new(), |a| format!("  acc {:5.1}%", a * 100.0));
        bar.step(
            step,
            format!(
                "loss {:.4}{acc}  {:.0} img/s{}",
                line.loss,
                images_per_s,
                knn.map_or(String::new(), |k| format!("  kNN {:.1}%", k * 100.0))
            ),
        );
        if dist::is_root() {
            log(&line)?;
        }
        lines.push(line);
        if ckpt.is_some_and(|c| c.every > 0 && step % c.every == 0) || step == cfg.steps {
            last_saved = save(method, step, &batches, &rng)?.or(last_saved);
        }
    }
    bar.finish();
    arena.free(gpu)?;
    Ok(Outcome {
        lines,
        step,
        interrupted: false,
        checkpoint: last_saved,
    })
}
