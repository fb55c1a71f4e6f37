//! Data-parallel training over MPI, as a user runs it: `mpirun -n 2 contrastive train …` on the
//! test machine's adapter (llvmpipe: both ranks share it, oversubscribed). Needs Open MPI's
//! `mpirun` on the PATH; `.ci/run` installs it.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use contrastive::checkpoint::{self, Checkpoint};

/// Tiny MoCo with BatchNorm grouped alike in one process and on two ranks: each rank normalises
/// its half of the batch, as two groups do in one process (query and key networks).
const TINY: &str = "train moco --quiet --train-images 256 --batch-size 16 --widths 4,8 \
    --queue 64 --dim 8 --split-bn 2 --query-split-bn 2 --steps 20 --stop-after 10 \
    --checkpoint-every 10";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `args` (words) with `--out out` added.
fn with_out<'a>(args: &'a str, out: &'a Path) -> Vec<&'a str> {
    let mut v: Vec<&str> = args.split_whitespace().collect();
    v.extend(["--out", out.to_str().unwrap()]);
    v
}

/// Runs `program` under `mpirun` with one `-n 1` section per entry of `ranks` (the arguments of
/// that rank), killing it after `limit`: a job that hangs fails the test instead of stalling CI.
fn mpirun(ranks: &[Vec<&str>], limit: Duration) -> Output {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--bind-to", "none"]);
    for (i, args) in ranks.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-n", "1", env!("CARGO_BIN_EXE_contrastive")]);
        cmd.args(args);
    }
    let mut child = cmd
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun runs (is Open MPI installed?)");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mpirun still ran after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn alone(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_contrastive"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the binary runs")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "command failed: {err}");
    err + &String::from_utf8_lossy(&o.stdout)
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["loss"].as_f64().unwrap()
        })
        .collect()
}

fn last_checkpoint(out: &Path) -> Checkpoint {
    Checkpoint::read(checkpoint::list(out).last().expect("a checkpoint")).unwrap()
}

/// Two ranks with a global batch of 16 train the model one process trains with 16: the same
/// losses step for step and the same parameters after 10 steps (up to the order of the
/// gradient sums); rank 0 alone wrote the run, its checkpoint evaluates in one process, and
/// resuming it with another number of ranks is refused with a clear error.
#[test]
fn two_ranks_match_one_process_step_for_step() {
    let (one, two) = (dir("one"), dir("two"));
    ok(&alone(&with_out(TINY, &one)));
    let args = with_out(TINY, &two);
    let job = mpirun(&[args.clone(), args], Duration::from_secs(240));
    let log = ok(&job);
    assert!(log.contains("over 2 ranks (8 each)"), "{log}");
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 10, "rank 0 alone logs each step once");
    assert_eq!(b.len(), 10, "rank 0 alone logs each step once");
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "step {}: one process {x}, two ranks {y}",
            step + 1
        );
    }
    let (ca, cb) = (last_checkpoint(&one), last_checkpoint(&two));
    assert_eq!(cb.meta("trainer.ranks").unwrap(), "2");
    for name in ca.names().filter(|n| n.starts_with("query.")) {
        let shape = ca.shape(name).unwrap().to_vec();
        let (x, y) = (
            ca.get_f32(name, &shape).unwrap(),
            cb.get_f32(name, &shape).unwrap(),
        );
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() <= 1e-4 + 1e-3 * p.abs(), "{name}: {p} vs {q}");
        }
    }
    let eval = ok(&alone(&["eval", "--checkpoint", two.to_str().unwrap()]));
    assert!(eval.contains("kNN"), "{eval}");
    let resumed = alone(&["train", "moco", "--resume", two.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(!resumed.status.success());
    assert!(err.contains("trained by 2 rank(s)"), "{err}");
    for d in [one, two] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A rank that meets an error ends the whole job with its message, instead of leaving the other
/// rank waiting in the first all-reduce forever.
#[test]
fn a_failing_rank_ends_the_job_with_its_error() {
    let out = dir("fails");
    let good = with_out(TINY, &out);
    let mut bad = good.clone();
    bad.extend(["--data-dir", "/nonexistent/contrastive-data"]);
    let job = mpirun(&[good, bad], Duration::from_secs(120));
    let err = String::from_utf8_lossy(&job.stderr);
    assert!(!job.status.success());
    assert!(err.contains("error on rank 1 of 2"), "{err}");
    assert!(err.contains("nonexistent"), "{err}");
    let _ = std::fs::remove_dir_all(out);
}
