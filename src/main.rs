//! The `contrastive` command line: parses the arguments and hands them to the library
//! ([`contrastive::run`] for training and evaluation).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use contrastive::run::{self, Settings};
use contrastive::{Error, Gpu, Result};

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
    },
    /// Summarise the runs found in a directory (one per sub-directory with a metrics.jsonl) and
    /// redraw their plots.
    Runs {
        #[arg(default_value = "runs")]
        dir: PathBuf,
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

/// Trains, then prints the evaluation table and the throughput.
fn train(settings: Settings, stop: &AtomicBool) -> Result<()> {
    let report = run::train(settings, stop)?;
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
        std::fs::write(&path, text.to_string()).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // The first Ctrl-C asks the trainer to checkpoint and stop; a second one exits at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the current step and writing a checkpoint…");
    });
    let result = match cli.command {
        Command::Devices => devices(),
        Command::Train { method } => train(*method, &stop),
        Command::Tune { method, json } => tune(*method, json),
        Command::Eval { checkpoint } => run::evaluate(&checkpoint).map(|e| println!("{e}")),
        Command::Runs { dir } => {
            contrastive::report::summarize(&dir).map_err(|e| Error::io(&dir, e))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
