//! A training run as the command line makes it, for library users too: the settings and their
//! per-method defaults ([`Settings`]), the run directory with its `metrics.jsonl`, plots and
//! `summary.json`, the checkpoint policy (cadence, how many to keep, resuming), and the final
//! evaluation. `contrastive train` is [`train`], `contrastive eval` is [`evaluate`].

mod settings;
mod setup;
mod validate;

pub use settings::{Common, OptimizerChoice, Settings};
pub use setup::{setup, RunData, Setup};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::checkpoint::{self, Checkpoint};
use crate::error::{Error, Result};
use crate::eval::{self, Evaluation};
use crate::methods::{Method, Network};
use crate::train::{self, Checkpointing};

/// With `--resume DIR`: the newest checkpoint of `DIR`, and `cmd` replaced by the settings that
/// run was started with, except the ones that only steer this invocation (`--stop-after`,
/// `--quiet`, and `--lr` when given: lower it after a non-finite step).
fn resume_settings(cmd: &mut Settings) -> Result<Option<Checkpoint>> {
    let given = cmd.common().clone();
    Ok(match &given.resume {
        Some(dir) => {
            let ck = find_checkpoint(dir)?;
            let stored = command_of(&ck)?;
            if stored.name() != cmd.name() {
                return Err(Error::Config(format!(
                    "{} holds a {} run; resume it with `contrastive train {} --resume {}`",
                    dir.display(),
                    stored.name(),
                    stored.name(),
                    dir.display()
                )));
            }
            *cmd = stored;
            let c = cmd.common_mut();
            c.out = Some(dir.clone());
            (c.resume, c.stop_after, c.quiet) =
                (given.resume.clone(), given.stop_after, given.quiet);
            if given.lr.is_some() {
                c.lr = given.lr;
            }
            Some(ck)
        }
        None => None,
    })
}

/// `metrics.jsonl`: one JSON line per step, opened at the first logged step, so that a run that
/// fails before training leaves no run behind.
struct Metrics {
    path: PathBuf,
    /// Continue the file (a resumed run) instead of starting it afresh.
    append: bool,
    file: Option<std::fs::File>,
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
        writeln!(file, "{json}").map_err(|e| Error::io(path, e))?;
        file.flush().map_err(|e| Error::io(path, e))
    }
}

/// The newest checkpoint of a run directory, or the file itself.
fn find_checkpoint(path: &Path) -> Result<Checkpoint> {
    let file = if path.is_dir() {
        checkpoint::list(path)
            .pop()
            .ok_or_else(|| Error::Checkpoint {
                path: path.into(),
                what: "no checkpoint-*.safetensors in this directory".into(),
            })?
    } else {
        path.to_path_buf()
    };
    Checkpoint::read(&file)
}

/// The command a checkpoint was trained with.
fn command_of(ck: &Checkpoint) -> Result<Settings> {
    serde_json::from_str(ck.meta("command")?).map_err(|e| Error::Checkpoint {
        path: ck.origin.clone(),
        what: format!("its stored command does not parse ({e})"),
    })
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
    /// The evaluation table and `summary.json`'s content, once training finished.
    pub evaluation: Option<Evaluation>,
    pub summary: Option<serde_json::Value>,
}

/// Trains as `contrastive train` does: resolves the settings (or, with `--resume`, those the run
/// was started with), writes `metrics.jsonl`, the plots and rotating checkpoints into the run
/// directory, stops cleanly with a checkpoint when `stop` becomes true, and evaluates the result
/// into `summary.json`.
pub fn train(mut cmd: Settings, stop: &AtomicBool) -> Result<Report> {
    let resume = resume_settings(&mut cmd)?;
    let c = cmd.common().clone();
    let out = c
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(cmd.name()));
    if resume.is_none() && out.join("metrics.jsonl").exists() && !c.force {
        return Err(Error::Config(format!(
            "{} already holds a run; continue it with --resume {}, overwrite it with --force, or choose another --out",
            out.display(),
            out.display()
        )));
    }
    let mut s = setup(&cmd, c.quiet)?;
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    if resume.is_none() {
        for old in checkpoint::list(&out) {
            std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
        }
    }
    eprintln!("adapter: {}", s.gpu.adapter);
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
        "trained model: {} parameters; {} steps of batch {}",
        s.method.parameter_count(),
        s.cfg.steps,
        s.cfg.batch_size
    );
    if let Some(ck) = &resume {
        eprintln!(
            "resuming {} at step {}",
            ck.origin.display(),
            ck.meta("step")?
        );
    }
    let mut meta = std::collections::BTreeMap::new();
    meta.insert(
        "command".into(),
        serde_json::to_string(&cmd).expect("command serialises"),
    );
    meta.insert(
        "encoder".into(),
        serde_json::to_string(&s.encoder).expect("config serialises"),
    );
    let ckpt = Checkpointing {
        dir: out.clone(),
        every: c.checkpoint_every,
        keep: c.keep,
        meta,
    };
    let mut metrics = Metrics {
        path: out.join("metrics.jsonl"),
        append: resume.is_some(),
        file: None,
    };
    let start = std::time::Instant::now();
    let first = resume
        .as_ref()
        .map_or(Ok(0), |ck| ck.meta_parse::<u64>("step"))?;
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
    crate::report::draw(&out).map_err(|e| Error::io(&out, e))?;
    if outcome.interrupted {
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
    if outcome.interrupted {
        return Ok(report);
    }
    eprintln!("evaluating (features computed once, BatchNorm in eval mode)…");
    let evaluation = s.evaluate()?;
    let summary = serde_json::json!({
        "method": cmd.name(),
        "adapter": s.gpu.adapter.to_string(),
        "data": s.data.describe(),
        "steps": outcome.step,
        "batch_size": s.cfg.batch_size,
        "seconds": elapsed,
        "images_per_s": per_s,
        "final_loss": outcome.lines.last().map(|l| l.loss),
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
    report.evaluation = Some(evaluation);
    report.summary = Some(summary);
    Ok(report)
}

/// Evaluates a checkpoint (a file, or a run directory's newest) as `contrastive eval` does:
/// rebuilds its run from the settings it stores and probes the trained model beside a random one
/// and the raw input.
pub fn evaluate(path: &Path) -> Result<Evaluation> {
    let ck = find_checkpoint(path)?;
    let cmd = command_of(&ck)?;
    // Not quiet: the evaluation reports its phases.
    let mut s = setup(&cmd, false)?;
    s.method.load(&s.gpu, &ck)?;
    eprintln!(
        "{} checkpoint {} (step {}) on {}",
        cmd.name(),
        ck.origin.display(),
        ck.meta("step")?,
        s.gpu.adapter
    );
    s.evaluate()
}
