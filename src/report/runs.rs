//! The table of runs (`contrastive runs DIR`): one row per run directory, a run that cannot be
//! read named with its reason instead of stopping the table.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{metrics, plot, read_summary};
use crate::error::{Error, Result};

/// One run's row.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// The run directory's name.
    pub name: String,
    pub dir: PathBuf,
    /// From `summary.json`, once the run is done.
    pub method: Option<String>,
    /// The last logged step and its loss.
    pub steps: u64,
    pub loss: Option<f32>,
    /// The final evaluation's accuracies of the trained encoder (fractions).
    pub knn: Option<f64>,
    pub linear: Option<f64>,
    /// `summary.json` exists: the run finished (an interrupted run has only its log).
    pub done: bool,
}

/// The runs found under a directory.
#[derive(Debug, Default)]
pub struct Runs {
    /// Sorted by name.
    pub runs: Vec<Run>,
    /// Runs left out of the table: each error names the file that could not be read or parsed.
    pub skipped: Vec<Error>,
    /// Runs listed whose `training.png` could not be drawn (only when plots were asked for).
    pub unplotted: Vec<Error>,
}

/// Reads one run directory's row.
fn read_run(dir: &Path) -> Result<Run> {
    let lines = metrics::read(&dir.join("metrics.jsonl"))?;
    let summary = read_summary(dir)?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    let probe = |k: &str| {
        summary
            .as_ref()
            .and_then(|s| s["evaluation"]["trained"][k].as_f64())
    };
    Ok(Run {
        name,
        dir: dir.to_path_buf(),
        method: summary
            .as_ref()
            .and_then(|s| s["method"].as_str().map(String::from)),
        steps: lines.last().map_or(0, |l| l.step),
        loss: lines.last().map(|l| l.loss),
        knn: probe("knn"),
        linear: probe("linear"),
        done: summary.is_some(),
    })
}

/// The runs at `path`: `path` itself when it is a run directory (it holds a `metrics.jsonl`),
/// else each sub-directory that holds one. A run whose log or summary cannot be read or parsed
/// goes to [`Runs::skipped`] and the others are still listed. With `plots`, each listed run's
/// `training.png` is redrawn (failures in [`Runs::unplotted`]); without, nothing is written.
///
/// Errors: only `path` itself unreadable (missing, not a directory), naming it.
pub fn runs(path: &Path, plots: bool) -> Result<Runs> {
    let dirs: Vec<PathBuf> = if path.join("metrics.jsonl").exists() {
        vec![path.to_path_buf()]
    } else {
        let mut dirs = vec![];
        for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            let dir = entry.map_err(|e| Error::io(path, e))?.path();
            if dir.join("metrics.jsonl").exists() {
                dirs.push(dir);
            }
        }
        dirs
    };
    let mut out = Runs::default();
    for dir in dirs {
        match read_run(&dir) {
            Ok(run) => {
                if plots {
                    if let Err(e) = plot::draw(&dir) {
                        out.unplotted.push(e);
                    }
                }
                out.runs.push(run);
            }
            Err(e) => out.skipped.push(e),
        }
    }
    out.runs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The table: run, method, steps, final loss, kNN and linear accuracy (%), state.
impl fmt::Display for Runs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:<6} {:>7} {:>10} {:>9} {:>9} {:>9}",
            "run", "method", "steps", "loss", "kNN %", "linear %", "state"
        )?;
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v));
        for r in &self.runs {
            writeln!(
                f,
                "{:<28} {:<6} {:>7} {:>10} {:>9} {:>9} {:>9}",
                r.name,
                r.method.as_deref().unwrap_or("-"),
                r.steps,
                r.loss.map_or("-".into(), |l| format!("{l:.4}")),
                pct(r.knn),
                pct(r.linear),
                if r.done { "done" } else { "partial" },
            )?;
        }
        Ok(())
    }
}
