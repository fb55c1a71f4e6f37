//! Run reports, from the files a run directory holds (`metrics.jsonl`, `summary.json`):
//! - [`metrics`]: reading the training log, and cutting it back to a checkpoint's step before a
//!   resumed run appends ([`metrics::cut_to_step`]);
//! - [`draw`]: the plots, `training.png`;
//! - [`runs`]: the table of the runs in a directory, unreadable runs named and skipped.

pub mod metrics;
mod plot;
mod runs;

use std::io;
use std::path::Path;

use crate::error::{Error, Result};

pub use runs::{runs, Run, Runs};

/// A run's `summary.json` (written when the run is done), or none before that. A summary that
/// exists but cannot be read or parsed is an error naming it.
fn read_summary(dir: &Path) -> Result<Option<serde_json::Value>> {
    let path = dir.join("summary.json");
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Data {
                path,
                what: format!("not a run summary ({e})"),
            }),
    }
}

/// A report error as the `std::io::Error` that today's command line wraps; its message keeps
/// the file and the problem.
fn into_io(e: Error) -> io::Error {
    let kind = match &e {
        Error::Io { source, .. } => source.kind(),
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, e.to_string())
}

/// Draws `training.png` in the run directory `dir` from its `metrics.jsonl` and, once the run is
/// done, its `summary.json`: loss, learning rate and kNN accuracy (the monitor's and the final
/// evaluation's) against the step, and for CPC each offset's contrastive accuracy. Call it after
/// writing `summary.json` so that the final evaluation shows in the kNN panel. The file is
/// replaced atomically; the error names the file that could not be read or written.
pub fn draw(dir: &Path) -> io::Result<()> {
    plot::draw(dir).map_err(into_io)
}

/// Redraws the plots every 25 steps (cheap enough not to matter beside a training step).
pub fn refresh(dir: &Path, step: u64) -> io::Result<()> {
    if step.is_multiple_of(25) {
        draw(dir)?;
    }
    Ok(())
}
