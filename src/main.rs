//! The `contrastive` command line: parses the arguments and hands them to the library
//! ([`contrastive::run`] for training and evaluation).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use contrastive::data::Dataset;
use contrastive::run::{self, EmbedRequest, Part, Settings};
use contrastive::{Gpu, Result};

#[derive(Parser)]
#[command(
    name = "contrastive",
    version,
    about = "Contrastive self-supervised learning on any GPU (wgpu + WGSL)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a method, then evaluate it beside a random encoder and raw pixels.
    Train {
        #[command(subcommand)]
        method: Box<Settings>,
    },
    /// Evaluate a checkpoint: kNN and linear probe beside a random encoder and raw pixels.
    Eval {
        /// A checkpoint file, or a run directory (its newest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Read the dataset from this directory instead of the one the checkpoint stores.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write the frozen encoder's features for every image (safetensors or .npy, by --out's
    /// suffix), with labels and file names where known.
    Embed {
        /// A checkpoint file, or a run directory (its newest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Dataset [default: the one the run trained on].
        #[arg(long, value_enum)]
        data: Option<Dataset>,
        /// Read the dataset from this directory instead of the one the checkpoint stores.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Which images: the training split, the held-out one, or both (training first).
        #[arg(long, value_enum, default_value = "all")]
        split: Part,
        /// Output file: FILE.safetensors, or FILE.npy (+ FILE.labels.npy, FILE.names.json).
        #[arg(long)]
        out: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Summarise the runs found in a directory (one per sub-directory with a metrics.jsonl), or
    /// one run directory; runs that cannot be read are named and skipped.
    Runs {
        #[arg(default_value = "runs")]
        dir: PathBuf,
        /// Redraw each listed run's training.png.
        #[arg(long)]
        plot: bool,
    },
    /// Benchmark the kernels of the model `train` would train with the same flags: time every
    /// candidate kernel of each shape one step uses, print the table, store the fastest in the
    /// tuning cache.
    Tune {
        #[command(subcommand)]
        method: Box<Settings>,
        /// Also write the table as JSON to this file.
        #[arg(long, global = true)]
        json: Option<PathBuf>,
    },
    /// List the GPU adapters wgpu can see (honours WGPU_BACKEND) and the one that would be used.
    Devices,
}

fn devices() -> Result<()> {
    let (_, adapters) = contrastive::gpu::list_adapters();
    for a in &adapters {
        println!("{}", contrastive::gpu::AdapterSummary::from(&a.get_info()));
    }
    let gpu = Gpu::new()?;
    println!("selected: {}", gpu.adapter);
    let l = &gpu.limits;
    println!(
        "limits: max buffer {} MiB, max storage binding {} MiB, workgroup memory {} KiB, invocations {}; timestamps {}; 64-bit words {}",
        l.max_buffer_size >> 20,
        l.max_storage_buffer_binding_size >> 20,
        l.max_compute_workgroup_storage_size >> 10,
        l.max_compute_invocations_per_workgroup,
        if gpu.has_timestamps() { "yes" } else { "no" },
        if gpu.has_int64() { "yes" } else { "no" }
    );
    Ok(())
}

/// Set by the first SIGINT, SIGTERM or SIGHUP: the trainer finishes its step, checkpoints and
/// stops.
static STOP: AtomicBool = AtomicBool::new(false);
/// The signal that asked to stop (0: none), for the exit status 128 + signal.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Handles the first interrupting signal by asking the trainer to stop, a second by exiting at
/// once. Runs in signal context: atomics, `write` and `_exit` only.
#[cfg(unix)]
extern "C" fn on_signal(signal: libc::c_int) {
    let say = |text: &str| {
        // SAFETY: write(2) is async-signal-safe; the buffer outlives the call.
        unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
    };
    if SIGNAL.swap(signal, Ordering::SeqCst) != 0 {
        say("\nsecond interrupt: exiting now without a checkpoint (resume from the last one written)\n");
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
    STOP.store(true, Ordering::SeqCst);
    say("\ninterrupt: finishing the current step and writing a checkpoint (interrupt again to exit without one)…\n");
}

/// SIGINT (Ctrl-C), SIGTERM (a scheduler's stop) and SIGHUP (a closed terminal) all stop training
/// with a checkpoint.
#[cfg(unix)]
fn handle_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only touches atomics and async-signal-safe calls.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

#[cfg(not(unix))]
fn handle_signals() {
    let _ = ctrlc::set_handler(|| {
        if SIGNAL.swap(2, Ordering::SeqCst) != 0 {
            eprintln!("\nsecond interrupt: exiting now without a checkpoint (resume from the last one written)");
            std::process::exit(130);
        }
        STOP.store(true, Ordering::SeqCst);
        eprintln!("\ninterrupt: finishing the current step and writing a checkpoint (interrupt again to exit without one)…");
    });
}

/// Trains, then prints the evaluation table and the throughput.
fn train(settings: Settings) -> Result<()> {
    let report = run::train(settings, &STOP)?;
    if let Some(evaluation) = &report.evaluation {
        println!("\n{evaluation}");
        println!(
            "training: {} steps in {:.1} s, {:.1} images/s (each with its views) on {}",
            report.steps_run, report.seconds, report.images_per_s, report.adapter
        );
    }
    Ok(())
}

/// Prints the table of candidate timings and writes it as JSON with `--json`.
fn tune(settings: Settings, json: Option<PathBuf>) -> Result<()> {
    let (adapter, trials) = run::tune(&settings)?;
    println!("kernel timings on {adapter} (* chosen)");
    println!(
        "{:<7} {:<52} {:<28} {:>10} {:>10}",
        "family", "shape", "candidate", "ms", "GFLOP/s"
    );
    for t in &trials {
        println!(
            "{:<7} {:<52} {:<28} {:>10.4} {:>10.1} {}",
            t.family,
            t.shape,
            t.candidate,
            t.seconds * 1e3,
            t.gflops(),
            if t.chosen { "*" } else { "" }
        );
    }
    if let Some(path) = json {
        let text = serde_json::json!({ "adapter": adapter, "trials": trials });
        std::fs::write(&path, text.to_string()).map_err(|e| contrastive::Error::io(&path, e))?;
    }
    Ok(())
}

/// Writes the embeddings and says what went where.
fn embed(request: EmbedRequest) -> Result<()> {
    let e = run::embed(&request)?;
    let files: Vec<String> = e.files.iter().map(|f| f.display().to_string()).collect();
    println!(
        "{} images, {} features each{}{}: {}",
        e.images,
        e.dim,
        if e.labelled { ", labelled" } else { "" },
        if e.named { ", named" } else { "" },
        files.join(", ")
    );
    Ok(())
}

/// Prints the table of the runs at `dir`, each skipped run on stderr with its file and reason.
fn runs(dir: &std::path::Path, plot: bool) -> Result<()> {
    let found = contrastive::report::runs(dir, plot)?;
    print!("{found}");
    if found.runs.is_empty() && found.skipped.is_empty() {
        eprintln!(
            "no runs (directories with a metrics.jsonl) in {}",
            dir.display()
        );
    }
    for e in &found.skipped {
        eprintln!("skipped: {e}");
    }
    for e in &found.unplotted {
        eprintln!("no plot: {e}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Train { method } | Command::Tune { method, .. }, Some((_, sub))) =
        (&mut cli.command, matches.subcommand())
    {
        if let Some((_, given)) = sub.subcommand() {
            **method = method.clone().with_given(given);
        }
    }
    handle_signals();
    let result = match cli.command {
        Command::Devices => devices(),
        Command::Train { method } => run::config::apply(*method).and_then(train),
        Command::Tune { method, json } => run::config::apply(*method).and_then(|m| tune(m, json)),
        Command::Eval {
            checkpoint,
            data_dir,
        } => run::evaluate(&checkpoint, data_dir.as_deref()).map(|e| println!("{e}")),
        Command::Embed {
            checkpoint,
            data,
            data_dir,
            split,
            out,
            quiet,
        } => embed(EmbedRequest {
            checkpoint,
            data,
            data_dir,
            part: split,
            out,
            quiet,
        }),
        Command::Runs { dir, plot } => runs(&dir, plot),
    };
    match (result, SIGNAL.load(Ordering::SeqCst)) {
        (Ok(()), 0) => ExitCode::SUCCESS,
        (Ok(()), signal) => ExitCode::from(128 + signal as u8),
        (Err(e), _) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
