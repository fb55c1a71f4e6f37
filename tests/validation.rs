//! Bad input through the binary: every probe of an oversized or contradictory setting, a data set
//! whose splits disagree, or an unknown backend ends with exit status 1 and an error that names
//! the cause, before any training (no run directory is left behind); and a run without a
//! terminal still reports its progress.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use contrastive::checkpoint::Checkpoint;
use contrastive::run::Settings;

/// A fresh scratch directory for test `name`.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-valid-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The binary run with `args` and the extra environment `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_contrastive"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

/// `contrastive train METHOD --out OUT --quiet ARGS…`, which must fail with status 1 and an error
/// containing every one of `needles`, leaving no metrics behind.
fn refused(method: &str, args: &[&str], needles: &[&str]) {
    let name: String = args
        .concat()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let out = scratch(&format!(
        "{method}{}",
        &name[name.len().saturating_sub(40)..]
    ));
    let mut all = vec!["train", method, "--out", out.to_str().unwrap(), "--quiet"];
    all.extend_from_slice(args);
    fails_with(&run(&all, &[]), needles);
    assert!(
        !out.join("metrics.jsonl").exists(),
        "a refused run must not start training"
    );
}

fn fails_with(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit status 1; stderr: {err}"
    );
    assert!(
        !err.contains("memory allocation") && !err.contains("panicked"),
        "aborted instead of an error: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
}

#[test]
fn oversized_settings_are_errors_that_name_them() {
    refused(
        "moco",
        &["--widths", "100000"],
        &["--widths 100000", "bytes"],
    );
    refused(
        "moco",
        &["--queue", "100000000"],
        &["--queue 100000000", "bytes"],
    );
    refused(
        "cmc",
        &["--bank", "100000000"],
        &["--bank 100000000", "bytes"],
    );
    refused(
        "moco",
        &["--dim", "100000000"],
        &["--dim 100000000", "bytes"],
    );
    refused(
        "cpc",
        &["--data", "japanese-vowels", "--context", "100000"],
        &["--context 100000", "bytes"],
    );
    refused(
        "cmc",
        &["--batch-size", "100000"],
        &[
            "at batch size 100000",
            "the largest batch that fits is about",
        ],
    );
}

#[test]
fn eval_refuses_a_checkpoint_whose_settings_are_oversized() {
    let dir = scratch("eval-oversized");
    std::fs::create_dir_all(&dir).unwrap();
    let settings = Settings::from_words(["moco", "--widths", "100000"]).unwrap();
    let mut ck = Checkpoint::new();
    ck.meta
        .insert("command".into(), serde_json::to_string(&settings).unwrap());
    ck.meta.insert("step".into(), "1".into());
    ck.meta.insert("method".into(), "moco".into());
    let path = dir.join("checkpoint-00000001.safetensors");
    ck.write(&path).unwrap();
    fails_with(
        &run(&["eval", "--checkpoint", path.to_str().unwrap()], &[]),
        &["--widths 100000"],
    );
}

#[test]
fn contradictory_settings_are_refused_with_their_cause() {
    refused(
        "cmc",
        &["--batch-size", "1"],
        &["--batch-size 1", "negatives"],
    );
    refused(
        "dim",
        &["--batch-size", "1"],
        &["--batch-size 1", "negatives"],
    );
    refused(
        "moco",
        &["--train-images", "100000"],
        &["--train-images 100000", "8000"],
    );
    refused("moco", &["--stop-after", "0"], &["--stop-after 0"]);
    refused("moco", &["--keep", "0"], &["--keep 0"]);
    refused(
        "cpc",
        &["--data", "japanese-vowels", "--window", "100"],
        &["--window 100", "longer than every training sequence"],
    );
    refused(
        "cpc",
        &["--patch", "8", "--patch-stride", "9"],
        &["--patch-stride 9", "--patch 8"],
    );
}

#[test]
fn an_unknown_backend_is_named() {
    let o = run(&["devices"], &[("WGPU_BACKEND", "nonsense")]);
    fails_with(&o, &["WGPU_BACKEND", "\"nonsense\" is not a backend"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("no GPU adapter"), "{err}");
}

/// Writes an IDX image file of `n` blank `side × side` images and its label file.
fn idx_pair(dir: &Path, prefix: &str, n: u32, side: u32) {
    let mut images = [0x803u32, n, side, side]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect::<Vec<u8>>();
    images.resize(images.len() + (n * side * side) as usize, 0);
    let mut labels = [0x801u32, n]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect::<Vec<u8>>();
    labels.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

#[test]
fn splits_of_different_shapes_are_refused_when_the_data_loads() {
    let data = scratch("shapes-data");
    std::fs::create_dir_all(&data).unwrap();
    idx_pair(&data, "train", 64, 28);
    idx_pair(&data, "t10k", 32, 14);
    refused(
        "moco",
        &["--data", "mnist", "--data-dir", data.to_str().unwrap()],
        &["28×28", "14×14", "test images"],
    );
}

#[test]
fn without_a_terminal_training_and_evaluation_log_plain_progress() {
    let out = scratch("plain-progress");
    let mut args = vec!["train", "moco", "--out", out.to_str().unwrap()];
    args.extend_from_slice(&[
        "--train-images",
        "256",
        "--batch-size",
        "32",
        "--steps",
        "3",
    ]);
    args.extend_from_slice(common::TINY_MOCO);
    let o = run(&args, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // The first and the last step are always logged, with loss, throughput and ETA.
    for step in ["step 1/3", "step 3/3"] {
        let line = err
            .lines()
            .find(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("no {step:?} line: {err}"));
        assert!(
            line.contains("loss") && line.contains("img/s") && line.contains("eta"),
            "{line}"
        );
    }
    for phase in [
        "trained model: features",
        "trained model: kNN",
        "random model: linear probe",
        "raw pixels: kNN",
    ] {
        assert!(err.contains(phase), "no {phase:?} in: {err}");
    }
}
