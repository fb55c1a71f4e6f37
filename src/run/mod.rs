//! A training run as the command line makes it, for library users too: the settings and their
//! per-method defaults ([`Settings`]), the run directory with its `metrics.jsonl`, plots and
//! `summary.json`, the checkpoint policy (cadence, how many to keep, resuming), and the final
//! evaluation; settings files ([`config`]). `contrastive train` is [`train()`], `contrastive
//! eval` is [`evaluate`], `contrastive embed` is [`embed()`].

pub mod config;
mod settings;
mod setup;
mod validate;

pub use settings::{Common, OptimizerChoice, Settings};
pub use setup::{restore, setup, RunData, Setup};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::checkpoint::{self, Checkpoint};
use crate::data::Dataset;
use crate::dist;
use crate::error::{Error, Result};
use crate::eval::{self, Evaluation};
use crate::gpu::tune::{Mode, Trial, Tuning};
use crate::gpu::AdapterKind;
use crate::methods::{Method, Network};
use crate::train::{self, Checkpointing};

/// The settings `--resume` can honour beside the stored ones: how long to train, the learning
/// rate (lower it after a non-finite step), the checkpoint policy, and what only steers this
/// invocation. Any other setting given with `--resume` is refused by name.
const RESUME_HONOURS: &[&str] = &[
    "resume",
    "steps",
    "epochs",
    "lr",
    "checkpoint_every",
    "keep",
    "stop_after",
    "quiet",
    "tune",
];

/// A setting's field name as its flag: `batch_size` → `--batch-size`.
fn flag(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// The run directory `--resume PATH` continues: `PATH` itself, or the directory of a checkpoint
/// file.
fn run_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if path.is_file() => parent.to_path_buf(),
        _ => path.to_path_buf(),
    }
}

/// With `--resume PATH` (a run directory or one of its checkpoint files): the checkpoint to
/// continue from, and `cmd` replaced by the settings that run was started with, except those in
/// [`RESUME_HONOURS`] that were given. `--steps` or `--epochs` extends a run, finished or not.
fn resume_settings(cmd: &mut Settings) -> Result<Option<Checkpoint>> {
    let given = cmd.common().clone();
    let Some(path) = &given.resume else {
        return Ok(None);
    };
    let refused: Vec<String> = given
        .given
        .iter()
        .filter(|g| !RESUME_HONOURS.contains(&g.as_str()))
        .map(|g| flag(g))
        .collect();
    if !refused.is_empty() {
        let honoured: Vec<String> = RESUME_HONOURS
            .iter()
            .filter(|&&g| g != "resume")
            .map(|g| flag(g))
            .collect();
        return Err(Error::Config(format!(
            "--resume continues {} with the settings it was started with: {} cannot change (with --resume only {} may be given)",
            path.display(),
            refused.join(", "),
            honoured.join(", ")
        )));
    }
    let dir = run_dir(path);
    let ck = match find_checkpoint(path) {
        Err(_) if dir.join("metrics.jsonl").exists() && checkpoint::list(&dir).is_empty() => {
            return Err(Error::Config(format!(
                "{} holds a run that stopped before its first checkpoint: there is nothing to resume; start it again with `contrastive train {} --out {} --force`",
                dir.display(),
                cmd.name(),
                dir.display()
            )))
        }
        found => found?,
    };
    let stored = command_of(&ck)?;
    if stored.name() != cmd.name() {
        return Err(Error::Config(format!(
            "{} holds a {} run; resume it with `contrastive train {} --resume {}`",
            path.display(),
            stored.name(),
            stored.name(),
            path.display()
        )));
    }
    *cmd = stored;
    let c = cmd.common_mut();
    c.out = Some(dir);
    (c.resume, c.stop_after, c.quiet) = (given.resume.clone(), given.stop_after, given.quiet);
    let was_given = |field: &str| given.given.iter().any(|g| g == field);
    if given.lr.is_some() {
        c.lr = given.lr;
    }
    if was_given("checkpoint_every") {
        c.checkpoint_every = given.checkpoint_every;
    }
    if was_given("keep") {
        c.keep = given.keep;
    }
    if given.steps.is_some() {
        c.steps = given.steps;
    } else if given.epochs.is_some() {
        (c.epochs, c.steps) = (given.epochs, None);
    }
    Ok(Some(ck))
}

/// Before a resumed run appends: removes the checkpoints past the one resumed from (damaged
/// ones passed over, or newer ones when an older file was chosen) and cuts `metrics.jsonl` back
/// to its step, so that every later step is logged exactly once.
fn rewind(out: &Path, ck: &Checkpoint) -> Result<()> {
    let step: u64 = ck.meta_parse("step")?;
    for later in checkpoint::list(out) {
        if checkpoint::step_of(&later).is_some_and(|s| s > step) {
            std::fs::remove_file(&later).map_err(|e| Error::io(&later, e))?;
            eprintln!(
                "removed {} (past step {step}, resumed from)",
                later.display()
            );
        }
    }
    let cut = crate::report::metrics::cut_to_step(&out.join("metrics.jsonl"), step)?;
    if cut.dropped > 0 || cut.torn {
        eprintln!(
            "metrics.jsonl cut back to step {step}: {} line(s) logged past it dropped{}",
            cut.dropped,
            if cut.torn {
                ", a torn last line removed"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `metrics.jsonl`: one JSON line per step, opened at the first logged step, so that a run that
/// fails before training leaves no run behind. Each line also carries `seconds`, the training
/// time up to its step across every segment of the run (a resumed run continues the count).
struct Metrics {
    path: PathBuf,
    /// Continue the file (a resumed run) instead of starting it afresh.
    append: bool,
    file: Option<std::fs::File>,
    /// Training time of the earlier segments, and when this one started.
    before: f64,
    start: std::time::Instant,
}

impl Metrics {
    fn write(&mut self, line: &train::LogLine) -> Result<()> {
        let path = &self.path;
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(self.append)
                    .write(true)
                    .truncate(!self.append)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?,
            ),
        };
        let json = serde_json::to_string(line).expect("log lines serialise");
        let seconds = self.before + self.start.elapsed().as_secs_f64();
        let json = format!("{},\"seconds\":{seconds:.3}}}", &json[..json.len() - 1]);
        writeln!(file, "{json}").map_err(|e| Error::io(path, e))?;
        file.flush().map_err(|e| Error::io(path, e))
    }
}

/// The last line of a run's log (after [`rewind`]): its training time so far (0 for a log
/// without it) and loss.
fn logged(path: &Path) -> Result<(f64, Option<f32>)> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0.0, None)),
        read => read.map_err(|e| Error::io(path, e))?,
    };
    let last: Option<serde_json::Value> = text
        .lines()
        .next_back()
        .and_then(|l| serde_json::from_str(l).ok());
    Ok(last.map_or((0.0, None), |v| {
        (
            v["seconds"].as_f64().unwrap_or(0.0),
            v["loss"].as_f64().map(|l| l as f32),
        )
    }))
}

/// The checkpoint at `path` (a file, or a run directory's newest intact one), naming on stderr
/// each damaged newer checkpoint passed over.
fn find_checkpoint(path: &Path) -> Result<Checkpoint> {
    let found = checkpoint::find(path)?;
    for e in &found.skipped {
        eprintln!("skipped a damaged checkpoint: {e}");
    }
    Ok(found.checkpoint)
}

/// The command a checkpoint was trained with.
fn command_of(ck: &Checkpoint) -> Result<Settings> {
    serde_json::from_str(ck.meta("command")?).map_err(|e| Error::Checkpoint {
        path: ck.origin.clone(),
        what: format!("its stored command does not parse ({e})"),
    })
}

/// `path` made absolute, so that a checkpoint's stored command works from any directory.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// How a run ended.
pub struct Report {
    /// The run directory.
    pub dir: PathBuf,
    /// The last step done.
    pub step: u64,
    /// Stopped early (`stop` became true, or `--stop-after`), with its checkpoint.
    pub interrupted: bool,
    pub checkpoint: Option<PathBuf>,
    /// Steps this call trained (after the resumed step), their time and throughput.
    pub steps_run: u64,
    pub seconds: f64,
    pub images_per_s: f64,
    /// The adapter trained on.
    pub adapter: String,
    /// The evaluation table (none for unlabelled images) and `summary.json`'s content, once
    /// training finished.
    pub evaluation: Option<Evaluation>,
    pub summary: Option<serde_json::Value>,
}

/// Trains as `contrastive train` does: resolves the settings (or, with `--resume`, those the run
/// was started with), writes `metrics.jsonl`, the plots and rotating checkpoints into the run
/// directory, stops cleanly with a checkpoint when `stop` becomes true, and evaluates the result
/// into `summary.json`, whose training time and final loss cover every segment of a resumed run.
/// The run directory and data directory are stored absolute in the checkpoints' command.
///
/// Started by `mpirun` (built with the `mpi` feature), each rank trains on its slice of every
/// batch ([`crate::dist`]) and rank 0 alone writes the run directory, reports and evaluates; an
/// error on any rank ends the whole job with that rank's message.
pub fn train(cmd: Settings, stop: &AtomicBool) -> Result<Report> {
    let _job = dist::Session::join()?;
    train_rank(cmd, stop).map_err(dist::fail)
}

fn train_rank(mut cmd: Settings, stop: &AtomicBool) -> Result<Report> {
    let resume = resume_settings(&mut cmd)?;
    let name = cmd.name();
    let c = cmd.common_mut();
    let out = absolute(
        &c.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(name)),
    )?;
    c.out = Some(out.clone());
    c.data_dir = c.data_dir.as_deref().map(absolute).transpose()?;
    c.val_dir = c.val_dir.as_deref().map(absolute).transpose()?;
    let c = cmd.common().clone();
    if resume.is_none() && out.join("metrics.jsonl").exists() && !c.force {
        let advice = if checkpoint::list(&out).is_empty() {
            "it stopped before its first checkpoint, so it cannot be resumed: start it again with --force, or choose another --out".to_string()
        } else {
            format!(
                "continue it with --resume {}, overwrite it with --force, or choose another --out",
                out.display()
            )
        };
        return Err(Error::Config(format!(
            "{} already holds a run; {advice}",
            out.display()
        )));
    }
    let mut s = setup(&cmd, c.quiet)?;
    let mode = c.tune.unwrap_or(match s.gpu.kind() {
        AdapterKind::Gpu => Mode::Full,
        AdapterKind::Cpu => Mode::Off,
    });
    *s.gpu.tuning() = Tuning::new(mode);
    let first = resume
        .as_ref()
        .map_or(Ok(0), |ck| ck.meta_parse::<u64>("step"))?;
    if s.cfg.steps < first {
        return Err(Error::Config(format!(
            "the run is {} steps long, fewer than the {first} already trained: extend it with --steps (or --epochs) beyond step {first}",
            s.cfg.steps
        )));
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    if dist::is_root() {
        config::write(&cmd, &out)?;
    }
    match &resume {
        _ if !dist::is_root() => {}
        Some(ck) => rewind(&out, ck)?,
        None => {
            for old in checkpoint::list(&out) {
                std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
            }
        }
    }
    if dist::size() > 1 {
        eprintln!(
            "rank {} of {}: adapter: {}",
            dist::rank(),
            dist::size(),
            s.gpu.adapter
        );
    } else {
        eprintln!("adapter: {}", s.gpu.adapter);
    }
    if dist::is_root() {
        describe(&cmd, &s, resume.as_ref())?;
    }
    let mut base = Checkpoint::new();
    base.meta.insert(
        "command".into(),
        serde_json::to_string(&cmd).expect("command serialises"),
    );
    base.meta.insert(
        "encoder".into(),
        serde_json::to_string(&s.encoder).expect("config serialises"),
    );
    if let RunData::Images { train, .. } = &s.data {
        base.put_normalisation(&train.stats);
    }
    let ckpt = Checkpointing {
        dir: out.clone(),
        every: c.checkpoint_every,
        keep: c.keep,
        base,
    };
    let start = std::time::Instant::now();
    let mut metrics = Metrics {
        path: out.join("metrics.jsonl"),
        append: resume.is_some(),
        file: None,
        before: logged(&out.join("metrics.jsonl"))?.0,
        start,
    };
    let stop_after = c.stop_after;
    let lower_lr = s.lr / 10.0;
    let lower_lr = if (1e-4..1e4).contains(&lower_lr) {
        lower_lr.to_string()
    } else {
        format!("{lower_lr:e}")
    };
    let outcome = train::train(
        &s.gpu,
        s.method.as_mut(),
        s.data.examples(),
        Some(&|m: &dyn Method| eval::knn_monitor(&s.gpu, m, s.data.eval_data())),
        &s.cfg,
        Some(&ckpt),
        resume.as_ref(),
        stop,
        |line| {
            metrics.write(line)?;
            crate::report::refresh(&out, line.step).map_err(|e| Error::io(&out, e))?;
            if stop_after.is_some_and(|n| line.step >= n) {
                stop.store(true, Ordering::SeqCst);
            }
            Ok(())
        },
    )
    .map_err(|e| match e {
        Error::NonFinite {
            step,
            op,
            checkpoint,
            ..
        } => {
            let advice = match checkpoint {
                Some(_) => format!(
                    "resume from it with a lower learning rate:\n  contrastive train {} --resume {} --lr {lower_lr}",
                    cmd.name(),
                    out.display()
                ),
                None => format!("start again with a lower learning rate (--lr {lower_lr})"),
            };
            Error::NonFinite {
                step,
                op,
                checkpoint,
                advice,
            }
        }
        e => e,
    })?;
    if dist::is_root() {
        crate::report::draw(&out).map_err(|e| Error::io(&out, e))?;
    }
    if outcome.interrupted && dist::is_root() {
        let saved = outcome
            .checkpoint
            .as_ref()
            .map_or("no checkpoint".to_string(), |p| p.display().to_string());
        eprintln!(
            "\nstopped after step {} ({saved}); continue with:\n  contrastive train {} --resume {}",
            outcome.step,
            cmd.name(),
            out.display()
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = outcome.step - first;
    let per_s = (done * s.cfg.batch_size as u64) as f64 / elapsed;
    let mut report = Report {
        dir: out.clone(),
        step: outcome.step,
        interrupted: outcome.interrupted,
        checkpoint: outcome.checkpoint.clone(),
        steps_run: done,
        seconds: elapsed,
        images_per_s: per_s,
        adapter: s.gpu.adapter.to_string(),
        evaluation: None,
        summary: None,
    };
    // The other ranks' work ends with training: rank 0 evaluates and writes the summary.
    if outcome.interrupted || !dist::is_root() {
        return Ok(report);
    }
    let log = crate::report::metrics::read(&out.join("metrics.jsonl"))?;
    let offsets = crate::report::metrics::offsets_at_end(&log);
    if !offsets.is_empty() {
        eprintln!("{}", crate::report::metrics::describe_offsets(&offsets));
    }
    let evaluation = match s.data.eval_data().unlabelled() {
        Some(why) => {
            eprintln!("not evaluated: {why}");
            None
        }
        None => {
            eprintln!("evaluating (features computed once, BatchNorm in eval mode)…");
            Some(s.evaluate()?)
        }
    };
    let (seconds, final_loss) = logged(&out.join("metrics.jsonl"))?;
    let offsets: Vec<_> = offsets
        .iter()
        .enumerate()
        .map(|(j, o)| serde_json::json!({"k": j + 1, "loss": o[0], "accuracy": o[1]}))
        .collect();
    let summary = serde_json::json!({
        "method": cmd.name(),
        "adapter": s.gpu.adapter.to_string(),
        "data": s.data.describe(),
        "steps": outcome.step,
        "batch_size": s.cfg.batch_size,
        "seconds": seconds,
        "images_per_s": (outcome.step * s.cfg.batch_size as u64) as f64 / seconds,
        "final_loss": final_loss,
        "offsets": offsets,
        "evaluation": evaluation,
        "command": cmd,
        "encoder": s.encoder,
    });
    let path = out.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).expect("summary serialises"),
    )
    .map_err(|e| Error::io(&path, e))?;
    report.evaluation = evaluation;
    report.summary = Some(summary);
    Ok(report)
}

/// Prints what is trained (rank 0 of a data-parallel run).
fn describe(cmd: &Settings, s: &Setup, resume: Option<&Checkpoint>) -> Result<()> {
    eprintln!("data: {}", s.data.describe());
    if matches!(s.data, RunData::Images { .. }) && !matches!(cmd, Settings::Cpc { .. }) {
        let probe = Network::new(&s.gpu, &s.encoder, &[], 0)?;
        eprintln!(
            "encoder: {} parameters, {:.1} MFLOP per image forward",
            probe.params.count(),
            probe.encoder.flops_per_image() * 1e-6,
        );
    }
    eprintln!(
        "trained model: {} parameters; {} steps of batch {}{}",
        s.method.parameter_count(),
        s.cfg.steps,
        s.cfg.batch_size,
        match dist::size() {
            1 => String::new(),
            n => format!(" over {n} ranks ({} each)", s.cfg.batch_size / n),
        }
    );
    if let Some(ck) = resume {
        eprintln!(
            "resuming {} at step {}",
            ck.origin.display(),
            ck.meta("step")?
        );
    }
    Ok(())
}

/// Benchmarks the kernels of the model `contrastive train` would train with `cmd`, as
/// `contrastive tune` does: collects the shapes of one dry-run step, times every candidate of
/// each (cached choices ignored), makes the fastest the choice and stores them in the tuning
/// cache. Returns every measurement (none where the adapter has no timestamp queries).
pub fn tune(cmd: &Settings) -> Result<(String, Vec<Trial>)> {
    let mut s = setup(cmd, true)?;
    *s.gpu.tuning() = Tuning::new(Mode::Full);
    let mut arena = crate::memory::Arena::for_gpu("step", &s.gpu);
    let rng = rand::SeedableRng::seed_from_u64(s.cfg.seed);
    let trials = train::tune_step(
        &s.gpu,
        s.method.as_mut(),
        &mut arena,
        s.data.examples(),
        &s.cfg,
        &rng,
    )?;
    Ok((s.gpu.adapter.to_string(), trials))
}

/// Evaluates a checkpoint (a file, or a run directory's newest intact one) as `contrastive eval`
/// does: rebuilds its run from the settings it stores (reading the data from `data_dir` when
/// given, else from the stored `--data-dir`) and probes the trained model beside a random one and
/// the raw input.
pub fn evaluate(path: &Path, data_dir: Option<&Path>) -> Result<Evaluation> {
    let ck = find_checkpoint(path)?;
    let mut cmd = command_of(&ck)?;
    if let Some(d) = data_dir {
        // A held-out folder of the original data does not belong to data elsewhere.
        let c = cmd.common_mut();
        c.data_dir = Some(d.to_path_buf());
        c.val_dir = None;
    }
    // Not quiet: the evaluation reports its phases.
    let s = restore(&cmd, &ck, false)?;
    eprintln!(
        "{} checkpoint {} (step {}) on {}",
        cmd.name(),
        ck.origin.display(),
        ck.meta("step")?,
        s.gpu.adapter
    );
    s.evaluate()
}

/// The images `contrastive embed` encodes: the training split, the held-out split, or both (the
/// training split first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Train,
    Test,
    All,
}

/// What `contrastive embed` is asked to do.
#[derive(Clone, Debug)]
pub struct EmbedRequest {
    /// A checkpoint file, or a run directory (its newest intact checkpoint).
    pub checkpoint: PathBuf,
    /// Another dataset than the one the run trained on.
    pub data: Option<Dataset>,
    /// Read the data from this directory instead of the one the checkpoint stores.
    pub data_dir: Option<PathBuf>,
    pub part: Part,
    /// `.safetensors` or `.npy` (see [`crate::embed`]).
    pub out: PathBuf,
    /// No progress bar.
    pub quiet: bool,
}

/// What `contrastive embed` wrote.
#[derive(Clone, Debug)]
pub struct Embedded {
    pub files: Vec<PathBuf>,
    pub images: usize,
    pub dim: usize,
    pub labelled: bool,
    pub named: bool,
}

/// Writes the features of a checkpoint's frozen encoder (BatchNorm in eval mode, its stored input
/// normalisation) for every image of the chosen data, as `contrastive embed` does: the run's
/// own data unless `data` or `data_dir` point elsewhere. The features are the evaluation's
/// ([`eval::features`]), row for row. Image methods only.
pub fn embed(req: &EmbedRequest) -> Result<Embedded> {
    crate::embed::Format::of(&req.out)?;
    let ck = find_checkpoint(&req.checkpoint)?;
    let mut cmd = command_of(&ck)?;
    let c = cmd.common_mut();
    if let Some(d) = req.data {
        c.data = d;
    }
    if let Some(d) = &req.data_dir {
        c.data_dir = Some(d.clone());
        c.val_dir = None;
    }
    // Every image of the data, not the part of it the run trained on.
    c.train_images = 0;
    if cmd.sequence_data().is_some() {
        return Err(Error::Config(format!(
            "contrastive embed encodes images; {} reads sequences (--data {}), which it does not support",
            ck.origin.display(),
            clap::ValueEnum::to_possible_value(&cmd.common().data)
                .map_or("?".into(), |v| v.get_name().to_string())
        )));
    }
    let s = restore(&cmd, &ck, req.quiet)?;
    let RunData::Images {
        split, train, test, ..
    } = &s.data
    else {
        unreachable!("image settings give image data");
    };
    let parts = match req.part {
        Part::Train => vec![(&split.train, train)],
        Part::Test => vec![(&split.test, test)],
        Part::All => vec![(&split.train, train), (&split.test, test)],
    };
    let total: usize = parts.iter().map(|(set, _)| set.len()).sum();
    let mut bar = train::Progress::counting("image", total as u64, 1, !req.quiet);
    let f = |g: &mut crate::autodiff::Graph, x| s.method.features(g, x);
    let mut features = eval::FeatureSet {
        data: Vec::new(),
        labels: Vec::new(),
        dim: 0,
    };
    let mut names = Vec::new();
    for (set, images) in &parts {
        let before = features.len();
        let part = eval::features_counted(&s.gpu, &f, images, &set.labels, &mut |done| {
            bar.step((before + done) as u64, String::new())
        })?;
        features.dim = part.dim;
        features.data.extend(part.data);
        features.labels.extend(part.labels);
        names.extend(set.names.iter().cloned());
    }
    bar.finish();
    if names.len() != features.len() {
        names.clear();
    }
    let part = clap::ValueEnum::to_possible_value(&req.part).expect("a named part");
    let meta = std::collections::BTreeMap::from([
        ("checkpoint".to_string(), ck.origin.display().to_string()),
        ("step".to_string(), ck.meta("step")?.to_string()),
        ("method".to_string(), cmd.name().to_string()),
        ("data".to_string(), split.origin.clone()),
        ("split".to_string(), part.get_name().to_string()),
    ]);
    let embeddings = crate::embed::Embeddings {
        labelled: parts.iter().all(|(set, _)| set.classes > 0),
        names,
        features,
    };
    Ok(Embedded {
        files: embeddings.write(&req.out, &meta)?,
        images: embeddings.features.len(),
        dim: embeddings.features.dim,
        labelled: embeddings.labelled,
        named: !embeddings.names.is_empty(),
    })
}
