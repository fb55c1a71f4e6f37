//! Runs that survive, through the binary: kill -9 and resume logs every step once, damaged
//! checkpoints are passed over, SIGTERM/SIGHUP/SIGINT stop with a checkpoint and their exit
//! status, a finished run keeps its statistics and can be extended, `runs` reads what it can,
//! a checkpoint's stored paths work from anywhere, and CPC's drawn negatives resume exactly.
//! Tiny MNIST-like data written here keeps each run (and its evaluation) to seconds on llvmpipe.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use contrastive::checkpoint::{self, Checkpoint};
use contrastive::data::idx;

/// A fresh directory for one test, holding tiny MNIST-like data in `data/`.
fn workspace(name: &str) -> PathBuf {
    let root =
        std::env::temp_dir().join(format!("contrastive-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (prefix, n) in [("train", 128usize), ("t10k", 40)] {
        let pixels: Vec<u8> = (0..n * 28 * 28)
            .map(|i| ((i / 28 + (i / 784) * 37) * 13 % 251) as u8)
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
        let images = idx::encode(&[n, 28, 28], &pixels);
        std::fs::write(data.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        let labels = idx::encode(&[n], &labels);
        std::fs::write(data.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
    root
}

/// `contrastive` with `args`, run in `cwd`.
fn command(cwd: &Path, args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_contrastive"));
    c.args(args)
        .current_dir(cwd)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

fn words(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `train moco` on the workspace's data into `root/run`, tiny model, `extra` appended.
fn train_words(root: &Path, extra: &[&str]) -> Vec<String> {
    let (data, out) = (root.join("data"), root.join("run"));
    train_words_at(data.to_str().unwrap(), out.to_str().unwrap(), extra)
}

/// `train moco` on the data in `data` into `out` (as given: relative to where it runs).
fn train_words_at(data: &str, out: &str, extra: &[&str]) -> Vec<String> {
    let mut w = words(&["train", "moco", "--data", "mnist", "--quiet"]);
    w.extend(words(&["--data-dir", data, "--out", out]));
    w.extend(words(&["--batch-size", "16"]));
    w.extend(words(common::TINY_MOCO));
    w.extend(words(extra));
    w
}

/// `train moco --resume PATH` with `extra`.
fn resume(root: &Path, path: &Path, extra: &[&str]) -> Output {
    let mut w = words(&["train", "moco", "--quiet", "--resume"]);
    w.push(path.display().to_string());
    w.extend(words(extra));
    output(root, &w)
}

fn output(cwd: &Path, args: &[String]) -> Output {
    command(cwd, args).output().expect("the binary runs")
}

fn spawn(root: &Path, extra: &[&str]) -> Child {
    command(root, &train_words(root, extra))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs")
}

/// Stderr then stdout of a command that must have succeeded.
fn success(o: &Output) -> String {
    let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "the command failed: {text}");
    text
}

/// A command that must have failed with an error mentioning each of `needles`.
fn refused(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit status 1: {err}");
    for n in needles {
        assert!(err.contains(n), "the error should mention {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// The steps `metrics.jsonl` logs, in order.
fn steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
            v["step"].as_u64().unwrap()
        })
        .collect()
}

fn until(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

/// Waits until the run has logged `n` steps.
fn wait_for_steps(run: &Path, n: usize) {
    let start = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |m| m.lines().count()) < n {
        assert!(
            start.elapsed().as_secs() < 120,
            "the run never logged {n} steps"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn newest_step(run: &Path) -> u64 {
    let newest = checkpoint::list(run).pop().expect("a checkpoint");
    Checkpoint::read(&newest)
        .unwrap()
        .meta_parse("step")
        .unwrap()
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn after_kill_9_and_resume_every_step_is_logged_exactly_once() {
    let root = workspace("kill9");
    let run = root.join("run");
    let mut child = spawn(&root, &["--steps", "200", "--checkpoint-every", "2"]);
    wait_for_steps(&run, 7);
    child.kill().unwrap();
    child.wait().unwrap();
    // A line torn by the kill, as a crash mid-write leaves it.
    let mut log = std::fs::read(run.join("metrics.jsonl")).unwrap();
    log.extend_from_slice(b"{\"step\":99,\"epo");
    std::fs::write(run.join("metrics.jsonl"), log).unwrap();
    let at = newest_step(&run);
    let stop = (at + 3).to_string();
    let said = success(&resume(&root, &run, &["--stop-after", &stop]));
    assert!(said.contains("torn last line removed"), "{said}");
    assert_eq!(steps(&run), until(at + 3));

    // From an older checkpoint file: the later steps and checkpoints give way.
    let oldest = checkpoint::list(&run).remove(0);
    let older = checkpoint::step_of(&oldest).unwrap();
    assert!(older < at + 3);
    let stop = (older + 1).to_string();
    success(&resume(&root, &oldest, &["--stop-after", &stop]));
    assert_eq!(steps(&run), until(older + 1));
    assert_eq!(newest_step(&run), older + 1);
}

#[test]
fn resume_and_eval_pass_over_a_damaged_newest_checkpoint() {
    let root = workspace("damaged");
    let run = root.join("run");
    let w = train_words(
        &root,
        &[
            "--steps",
            "20",
            "--checkpoint-every",
            "2",
            "--stop-after",
            "4",
        ],
    );
    success(&output(&root, &w));
    let newest = checkpoint::path_for(&run, 4);
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();

    let eval = words(&["eval", "--checkpoint", run.to_str().unwrap()]);
    let said = success(&output(&root, &eval));
    assert!(said.contains("skipped a damaged checkpoint"), "{said}");
    assert!(
        said.contains("checkpoint-00000004") && said.contains("(step 2)"),
        "{said}"
    );

    let said = success(&resume(&root, &run, &["--stop-after", "3"]));
    assert!(
        said.contains("checkpoint-00000004") && said.contains("at step 2"),
        "{said}"
    );
    assert_eq!(steps(&run), until(3));
    assert_eq!(newest_step(&run), 3);
}

/// Sends `signal` to a training run once it has logged two steps.
fn interrupt(root: &Path, signal: &str) -> (Output, String) {
    let child = spawn(root, &["--steps", "500", "--checkpoint-every", "0"]);
    wait_for_steps(&root.join("run"), 2);
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    (o, err)
}

#[test]
fn sigterm_and_sighup_checkpoint_and_exit_with_their_status() {
    for (signal, status) in [("TERM", 143), ("HUP", 129)] {
        let root = workspace(&format!("sig{signal}"));
        let run = root.join("run");
        let (o, err) = interrupt(&root, signal);
        assert_eq!(o.status.code(), Some(status), "{signal}: {err}");
        assert!(
            err.contains(&format!("--resume {}", run.display())),
            "{err}"
        );
        let at = newest_step(&run);
        assert!(at >= 2, "checkpointed at step {at}");
        assert_eq!(steps(&run), until(at));
        let stop = (at + 1).to_string();
        success(&resume(&root, &run, &["--stop-after", &stop]));
        assert_eq!(steps(&run), until(at + 1));
    }
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_says_so() {
    let root = workspace("sigint2");
    let child = spawn(&root, &["--steps", "500", "--checkpoint-every", "0"]);
    wait_for_steps(&root.join("run"), 2);
    for _ in 0..2 {
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("exiting now without a checkpoint"), "{err}");
}

#[test]
fn a_run_without_a_checkpoint_is_offered_force() {
    let root = workspace("nockpt");
    let run = root.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "{\"step\":1}\n").unwrap();
    let again = output(&root, &train_words(&root, &["--steps", "2"]));
    refused(&again, &["before its first checkpoint", "--force"]);
    refused(&resume(&root, &run, &[]), &["nothing to resume", "--force"]);
}

#[test]
fn a_finished_run_keeps_its_statistics_and_can_be_extended() {
    let root = workspace("finished");
    let run = root.join("run");
    success(&output(
        &root,
        &train_words(&root, &["--steps", "4", "--checkpoint-every", "2"]),
    ));
    let first = summary(&run);
    let seconds = first["seconds"].as_f64().unwrap();
    assert!(seconds > 0.0 && first["final_loss"].is_number(), "{first}");

    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    refused(
        &resume(&root, &run, &["--batch-size", "8", "--out", "elsewhere"]),
        &["--batch-size", "--out"],
    );
    refused(
        &resume(&root, &run, &["--steps", "2"]),
        &["fewer than the 4"],
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);

    success(&resume(&root, &run, &[]));
    let again = summary(&run);
    assert_eq!(again["final_loss"], first["final_loss"]);
    assert!(
        (again["seconds"].as_f64().unwrap() - seconds).abs() < 1e-6,
        "{again}"
    );

    success(&resume(&root, &run, &["--steps", "6"]));
    let longer = summary(&run);
    assert_eq!(steps(&run), until(6));
    assert_eq!(longer["steps"], 6);
    assert!(longer["seconds"].as_f64().unwrap() > seconds, "{longer}");
    assert_ne!(longer["final_loss"], first["final_loss"]);
}

#[test]
fn runs_skips_unreadable_runs_reads_one_run_and_plots_only_when_asked() {
    let root = workspace("runs");
    let run = root.join("run");
    let w = train_words(&root, &["--steps", "20", "--stop-after", "2"]);
    success(&output(&root, &w));
    std::fs::remove_file(run.join("training.png")).unwrap();
    let bad = root.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("metrics.jsonl"), "not a log line\n").unwrap();

    let all = output(&root, &words(&["runs", root.to_str().unwrap()]));
    let said = success(&all);
    let table = String::from_utf8_lossy(&all.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("run ") && l.contains("partial")),
        "{table}"
    );
    assert!(
        said.contains("skipped") && said.contains(&bad.display().to_string()),
        "{said}"
    );
    assert!(!run.join("training.png").exists(), "no plot without --plot");

    let one = output(&root, &words(&["runs", run.to_str().unwrap()]));
    let table = String::from_utf8_lossy(&one.stdout).to_string();
    assert_eq!(table.lines().count(), 2, "a header and the run: {table}");
    assert!(table.lines().nth(1).unwrap().contains(" 2 "), "{table}");

    success(&output(
        &root,
        &words(&["runs", root.to_str().unwrap(), "--plot"]),
    ));
    assert!(run.join("training.png").exists());
}

#[test]
fn stored_paths_are_absolute_and_eval_takes_another_data_dir() {
    let root = workspace("paths");
    let rel = train_words_at("data", "run", &["--steps", "20", "--stop-after", "1"]);
    success(&output(&root, &rel));
    let run = root.join("run");
    let ck = Checkpoint::read(&checkpoint::list(&run).pop().unwrap()).unwrap();
    let stored: serde_json::Value = serde_json::from_str(ck.meta("command").unwrap()).unwrap();
    let common = &stored["moco"]["common"];
    assert_eq!(
        common["data_dir"].as_str().unwrap(),
        root.join("data").to_str().unwrap()
    );
    assert_eq!(common["out"].as_str().unwrap(), run.to_str().unwrap());

    let moved = root.join("moved");
    std::fs::rename(root.join("data"), &moved).unwrap();
    let elsewhere = std::env::temp_dir();
    let eval = words(&["eval", "--checkpoint", run.to_str().unwrap()]);
    let missing = output(&elsewhere, &eval);
    refused(&missing, &[root.join("data").to_str().unwrap()]);
    let mut eval = eval;
    eval.extend(["--data-dir".into(), moved.display().to_string()]);
    success(&output(&elsewhere, &eval));
}

/// CPC with drawn negatives (`--negatives both`): the draws come from the run's RNG, which the
/// checkpoint holds, so a run stopped and resumed logs the same losses and per-offset figures and
/// ends with the same parameters, bit for bit; the summary reports every offset's accuracy.
#[test]
fn cpc_with_drawn_negatives_resumes_bit_identical() {
    let root = workspace("cpc-negatives");
    let train = |out: &str, extra: &[&str]| {
        let mut w = words(&["train", "cpc", "--data", "japanese-vowels", "--quiet"]);
        w.extend(words(&[
            "--batch-size",
            "8",
            "--dim",
            "8",
            "--context",
            "8",
        ]));
        w.extend(words(&["--negatives", "both", "--num-negatives", "5"]));
        w.extend(words(&[
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--out",
            out,
        ]));
        w.extend(words(extra));
        success(&output(&root, &w))
    };
    let straight = train("straight", &[]);
    assert!(
        straight.contains("contrastive accuracy per offset") && straight.contains("k=3"),
        "{straight}"
    );
    train("resumed", &["--stop-after", "2"]);
    success(&output(
        &root,
        &words(&["train", "cpc", "--quiet", "--resume", "resumed"]),
    ));
    let (a, b) = (root.join("straight"), root.join("resumed"));
    let logged = |run: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!(
                    "{} {} {} {}",
                    v["step"], v["loss"], v["accuracy"], v["offsets"]
                )
            })
            .collect()
    };
    assert_eq!(logged(&a).len(), 4);
    assert_eq!(logged(&a), logged(&b));
    assert_eq!(summary(&a)["offsets"].as_array().map(Vec::len), Some(3));
    let read = |run: &Path| Checkpoint::read(&checkpoint::list(run).pop().unwrap()).unwrap();
    let (ca, cb) = (read(&a), read(&b));
    for name in ca.names().filter(|n| n.starts_with("cpc.")) {
        let shape = ca.shape(name).unwrap().to_vec();
        let (x, y) = (
            ca.get_f32(name, &shape).unwrap(),
            cb.get_f32(name, &shape).unwrap(),
        );
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} differs"
        );
    }
}
