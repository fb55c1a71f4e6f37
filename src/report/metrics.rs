//! A run's training log, `metrics.jsonl`: one JSON [`LogLine`] per step, appended as training
//! goes. A crash or SIGKILL can leave the last line torn (cut short, no newline); a resumed run
//! can be behind the log (its checkpoint is older than the last logged step). Reading tolerates
//! the first; [`cut_to_step`] repairs both before a resumed run appends.

use std::path::Path;

use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use crate::train::LogLine;

/// One parsed line and its text as written.
struct Entry<'a> {
    line: LogLine,
    text: &'a str,
}

/// The log's lines in order. A last line without its newline that does not parse is a line torn
/// by a crash (or one a running trainer is still writing): it is left out and `torn` says so.
/// Any other line that does not parse is an error naming the file and the line.
struct Parsed<'a> {
    entries: Vec<Entry<'a>>,
    torn: bool,
}

fn parse<'a>(text: &'a str, path: &Path) -> Result<Parsed<'a>> {
    let terminated = text.is_empty() || text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut entries = Vec::with_capacity(lines.len());
    let mut torn = false;
    for (i, &l) in lines.iter().enumerate() {
        match serde_json::from_str::<LogLine>(l) {
            Ok(line) => entries.push(Entry { line, text: l }),
            Err(_) if i + 1 == lines.len() && !terminated => torn = true,
            Err(e) => {
                return Err(Error::Metrics {
                    path: path.into(),
                    line: i + 1,
                    what: format!("not a log line ({e})"),
                })
            }
        }
    }
    Ok(Parsed { entries, torn })
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// The lines of the log at `path` (a torn last line left out). Errors name the file, and the
/// line when one does not parse.
pub fn read(path: &Path) -> Result<Vec<LogLine>> {
    let text = read_text(path)?;
    Ok(parse(&text, path)?
        .entries
        .into_iter()
        .map(|e| e.line)
        .collect())
}

/// Logged steps [`offsets_at_end`] averages over.
pub const OFFSET_WINDOW: usize = 25;

/// Each predicted offset's loss and contrastive accuracy (CPC), `[loss, accuracy]` for
/// k = 1, 2, …, averaged over the last [`OFFSET_WINDOW`] logged steps: one batch's accuracy is
/// noisy. Empty for methods that log no offsets.
pub fn offsets_at_end(lines: &[LogLine]) -> Vec<[f64; 2]> {
    let last = &lines[lines.len().saturating_sub(OFFSET_WINDOW)..];
    let k = last.iter().map(|l| l.offsets.len()).min().unwrap_or(0);
    (0..k)
        .map(|j| {
            let mean = |i: usize| {
                last.iter().map(|l| l.offsets[j][i] as f64).sum::<f64>() / last.len() as f64
            };
            [mean(0), mean(1)]
        })
        .collect()
}

/// The line a run prints of [`offsets_at_end`]: each offset's accuracy in percent.
pub fn describe_offsets(offsets: &[[f64; 2]]) -> String {
    let each: Vec<String> = offsets
        .iter()
        .enumerate()
        .map(|(j, o)| format!("k={} {:.1} %", j + 1, 100.0 * o[1]))
        .collect();
    format!(
        "contrastive accuracy per offset (mean of the last {OFFSET_WINDOW} steps): {}",
        each.join(", ")
    )
}

/// What [`cut_to_step`] did to a log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Lines kept (step ≤ the checkpoint's step).
    pub kept: usize,
    /// Lines dropped because their step is past the checkpoint's.
    pub dropped: usize,
    /// A torn last line was removed.
    pub torn: bool,
}

/// Cuts the log at `path` back to `step`, the step of the checkpoint a run resumes from, so that
/// the resumed run logs every later step exactly once: drops every line with a step past `step`
/// and a torn last line, and ends the file with a newline. The file is rewritten atomically
/// (temporary file, rename), and only when something changes. A missing log is left missing.
///
/// Call it before the resumed run opens the log for appending; a line that does not parse other
/// than a torn last one is an error (naming the file and the line), and the log is left as it was.
pub fn cut_to_step(path: &Path, step: u64) -> Result<Cut> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cut::default()),
        read => read.map_err(|e| Error::io(path, e))?,
    };
    let parsed = parse(&text, path)?;
    let kept: Vec<&str> = parsed
        .entries
        .iter()
        .filter(|e| e.line.step <= step)
        .map(|e| e.text)
        .collect();
    let cut = Cut {
        kept: kept.len(),
        dropped: parsed.entries.len() - kept.len(),
        torn: parsed.torn,
    };
    let mut out = String::with_capacity(text.len());
    for l in kept {
        out.push_str(l);
        out.push('\n');
    }
    if out != text {
        write_atomic(path, out.as_bytes())?;
    }
    Ok(cut)
}
