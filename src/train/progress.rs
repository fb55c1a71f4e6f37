//! Training progress: a bar on a terminal; without one (a batch job's log, a pipe) a plain line
//! every few seconds, since a bar's redraws are lost there and the log would otherwise stay empty
//! for the whole run.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Time between two plain lines.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Progress through a count of things (`noun`: training steps, images to embed).
pub struct Progress {
    bar: indicatif::ProgressBar,
    noun: &'static str,
    /// Plain lines instead of the bar: `(last line's time, this call's start, first step)`.
    plain: Option<(Option<Instant>, Instant, u64)>,
    total: u64,
}

impl Progress {
    /// Progress of steps `first..=total` (`first - 1` already done); nothing when not `enabled`.
    pub fn new(total: u64, first: u64, enabled: bool) -> Progress {
        Progress::counting("step", total, first, enabled)
    }

    /// Progress of `noun`s (singular) `first..=total`, as [`Progress::new`] of steps.
    pub fn counting(noun: &'static str, total: u64, first: u64, enabled: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = if enabled && terminal {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{{bar:30}} {{pos}}/{{len}} {noun}s  {{msg}}  [{{elapsed_precise}} < {{eta_precise}}]"
                ))
                .expect("valid template"),
            );
            bar.set_position(first - 1);
            bar.reset_eta();
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Progress {
            bar,
            noun,
            plain: (enabled && !terminal).then(|| (None, Instant::now(), first)),
            total,
        }
    }

    /// Step `step` is done; `message` describes it (loss, throughput).
    pub fn step(&mut self, step: u64, message: String) {
        self.bar.set_message(message.clone());
        self.bar.set_position(step);
        let total = self.total;
        if let Some((said, start, first)) = &mut self.plain {
            if said.is_some_and(|t| t.elapsed() < PLAIN_EVERY) && step < total {
                return;
            }
            *said = Some(Instant::now());
            let per_step = start.elapsed().as_secs_f64() / (step + 1 - *first) as f64;
            let eta = per_step * (total - step) as f64;
            eprintln!(
                "{} {step}/{total}  {message}  eta {}",
                self.noun,
                clock(eta)
            );
        }
    }

    /// Training stopped before its last step: the bar stays as it is.
    pub fn abandon(&self) {
        self.bar.abandon();
    }

    pub fn finish(&self) {
        self.bar.finish();
    }
}

/// `seconds` as h:mm:ss.
fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
