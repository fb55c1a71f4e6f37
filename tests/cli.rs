//! The command line as a user meets it: exact resume, interruption safety, and clear errors (exit
//! code ≠ 0, nothing overwritten) for impossible settings and bad files; the library's run is the
//! command line's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use contrastive::checkpoint::{self, Checkpoint};

/// A tiny but complete MoCo configuration: seconds per run on llvmpipe.
const TINY: &[&str] = &[
    "--train-images",
    "256",
    "--batch-size",
    "32",
    "--widths",
    "4,8",
    "--queue",
    "64",
    "--dim",
    "8",
    "--split-bn",
    "2",
];

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn contrastive(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_contrastive"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the binary runs")
}

/// `train moco` with the tiny settings, `extra` overriding any of them.
fn train_args<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "moco", "--out", out.to_str().unwrap(), "--quiet"];
    for pair in TINY.chunks(2).filter(|p| p.len() == 2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    args
}

fn train(out: &Path, extra: &[&str]) -> Output {
    contrastive(&train_args(out, extra))
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "command failed: {err}");
    err + &String::from_utf8_lossy(&o.stdout)
}

fn fails(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected a failure mentioning {needle:?}"
    );
    assert!(
        err.contains(needle),
        "error should mention {needle:?}: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "a panic is not an error message: {err}"
    );
}

fn losses(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {}", v["step"], v["loss"])
        })
        .collect()
}

/// The f32 tensors `names` of two checkpoints hold the same bits.
fn assert_bit_identical<'a>(a: &Checkpoint, b: &Checkpoint, names: impl Iterator<Item = &'a str>) {
    for name in names {
        let shape = a.shape(name).unwrap().to_vec();
        let (x, y) = (
            a.get_f32(name, &shape).unwrap(),
            b.get_f32(name, &shape).unwrap(),
        );
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} differs"
        );
    }
}

fn final_tensors(out: &Path) -> Checkpoint {
    Checkpoint::read(checkpoint::list(out).last().expect("a checkpoint")).unwrap()
}

/// Trained 6 steps straight vs 3 steps, stop, resume, 3 more: same losses and same parameters,
/// bit for bit (the kernels are deterministic: no atomics, fixed reduction orders).
#[test]
fn resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    let (a, b) = (dir("straight"), dir("resumed"));
    ok(&train(&a, &["--steps", "6", "--checkpoint-every", "2"]));
    let first = ok(&train(
        &b,
        &[
            "--steps",
            "6",
            "--checkpoint-every",
            "2",
            "--stop-after",
            "3",
        ],
    ));
    assert!(
        first.contains("--resume"),
        "the stop message says how to resume: {first}"
    );
    ok(&contrastive(&[
        "train",
        "moco",
        "--resume",
        b.to_str().unwrap(),
        "--quiet",
    ]));
    assert_eq!(losses(&a), losses(&b));
    let (ca, cb) = (final_tensors(&a), final_tensors(&b));
    assert_eq!(ca.meta("step").unwrap(), "6");
    let names: Vec<&str> = ca.names().collect();
    assert!(names.contains(&"query.encoder.stage0.down.conv.weight"));
    assert!(names.contains(&"moco.queue"));
    assert_eq!(
        ca.get_u32("trainer.order").unwrap(),
        cb.get_u32("trainer.order").unwrap()
    );
    assert_bit_identical(
        &ca,
        &cb,
        names.into_iter().filter(|&n| n != "trainer.order"),
    );
    // Only the newest checkpoints are kept.
    assert!(checkpoint::list(&a).len() <= 3);
    assert!(a.join("training.png").exists() && a.join("summary.json").exists());
}

/// A library user gets the CLI's run from the same settings: same losses, same final tensors bit
/// for bit, the evaluation and the summary.
#[test]
fn the_library_runs_a_training_as_the_cli_does() {
    let (cli, lib) = (dir("cli"), dir("library"));
    ok(&train(&cli, &["--steps", "3"]));
    let words = train_args(&lib, &["--steps", "3"]);
    let settings = contrastive::run::Settings::from_words(&words[1..]).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let report = contrastive::run::train(settings, &stop).unwrap();
    assert_eq!((report.step, report.interrupted), (3, false));
    assert!(report.evaluation.is_some() && lib.join("summary.json").exists());
    assert_eq!(losses(&cli), losses(&lib));
    let (a, b) = (final_tensors(&cli), final_tensors(&lib));
    assert_bit_identical(&a, &b, a.names().filter(|&n| n != "trainer.order"));
    assert!(contrastive::run::Settings::from_words(["moco", "--no-such-flag"]).is_err());
}

#[test]
fn impossible_settings_are_clear_errors() {
    let out = dir("settings");
    fails(&train(&out, &["--batch-size", "0"]), "--batch-size");
    fails(
        &train(&out, &["--batch-size", "512"]),
        "larger than the 256 training examples",
    );
    fails(&train(&out, &["--queue", "0"]), "--queue");
    fails(&train(&out, &["--temperature", "0"]), "--temperature");
    fails(&train(&out, &["--momentum", "1.5"]), "--momentum");
    fails(&train(&out, &["--split-bn", "3"]), "--split-bn");
    fails(&train(&out, &["--data", "mnist"]), "--data-dir");
    fails(
        &train(
            &out,
            &[
                "--train-images",
                "8000",
                "--batch-size",
                "8000",
                // [8000, 28, 28, 128] activations are 3.2 GB: more than one binding holds on
                // any adapter.
                "--widths",
                "128",
            ],
        ),
        "the largest batch that fits is about",
    );
    assert!(
        !out.join("metrics.jsonl").exists(),
        "nothing written for refused settings"
    );
}

#[test]
fn an_existing_run_is_not_overwritten_without_force() {
    let out = dir("existing");
    ok(&train(&out, &["--steps", "2"]));
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    fails(&train(&out, &["--steps", "2"]), "--resume");
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);
    ok(&train(&out, &["--steps", "2", "--force"]));
}

#[test]
fn bad_checkpoints_are_named_errors() {
    let out = dir("badck");
    ok(&train(&out, &["--steps", "2"]));
    let ck = checkpoint::list(&out).pop().unwrap();
    let bytes = std::fs::read(&ck).unwrap();

    let truncated = out.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &contrastive(&["eval", "--checkpoint", truncated.to_str().unwrap()]),
        "truncated.safetensors",
    );

    let junk = out.join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    fails(
        &contrastive(&["eval", "--checkpoint", junk.to_str().unwrap()]),
        "not a readable safetensors",
    );

    // A checkpoint of another encoder configuration.
    let mut other = Checkpoint::read(&ck).unwrap();
    let cmd = other.meta("command").unwrap().replace("[4,8]", "[4,16]");
    other.meta.insert("command".into(), cmd);
    let wrong = out.join("wrong.safetensors");
    other.write(&wrong).unwrap();
    fails(
        &contrastive(&["eval", "--checkpoint", wrong.to_str().unwrap()]),
        "another configuration",
    );

    // Resuming with the wrong method.
    fails(
        &contrastive(&["train", "dim", "--resume", out.to_str().unwrap(), "--quiet"]),
        "holds a moco run",
    );
}

#[test]
fn sigkill_while_checkpointing_leaves_a_loadable_checkpoint() {
    for delay_ms in [0u64, 30, 120, 400] {
        let out = dir(&format!("sigkill{delay_ms}"));
        let args = train_args(&out, &["--steps", "200", "--checkpoint-every", "1"]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_contrastive"))
            .args(&args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Checkpoints are now written after every step: kill at an arbitrary moment among them.
        let start = std::time::Instant::now();
        while checkpoint::list(&out).is_empty() && start.elapsed().as_secs() < 120 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let newest = checkpoint::list(&out).pop().expect("a checkpoint survives");
        let ck = Checkpoint::read(&newest).unwrap_or_else(|e| panic!("{e}"));
        assert!(ck.meta_parse::<u64>("step").unwrap() >= 1);
    }
}

/// A learning rate that makes the first update explode: the next step's guard trips, the run
/// stops naming the step and the op, and the checkpoint written before it is intact.
#[test]
fn a_diverging_run_stops_at_the_bad_step_and_keeps_its_last_checkpoint() {
    let out = dir("diverge");
    let args = [
        "--steps",
        "6",
        "--checkpoint-every",
        "1",
        "--lr",
        "1e30",
        "--warmup",
        "0",
    ];
    let o = train(&out, &args);
    fails(&o, "first non-finite value written by");
    let err = String::from_utf8_lossy(&o.stderr);
    let newest = checkpoint::list(&out)
        .pop()
        .expect("a checkpoint before the failure");
    let ck = Checkpoint::read(&newest).unwrap_or_else(|e| panic!("{e}"));
    let step: u64 = ck.meta_parse("step").unwrap();
    assert!(
        err.contains(&format!("non-finite value at step {}:", step + 1)),
        "{err}"
    );
    assert!(
        err.contains(&format!("{} (intact)", newest.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("--resume {}", out.display())) && err.contains("--lr "),
        "the message says how to resume with a lower learning rate: {err}"
    );
    for name in ck.names().filter(|n| n.starts_with("query.")) {
        let shape = ck.shape(name).unwrap().to_vec();
        let v = ck.get_f32(name, &shape).unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name} is finite");
    }
    assert_eq!(
        losses(&out).len() as u64,
        step,
        "one metrics line per good step"
    );
}

/// `train cpc` on the embedded JapaneseVowels with a tiny model.
fn cpc(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "cpc",
        "--data",
        "japanese-vowels",
        "--batch-size",
        "16",
        "--dim",
        "8",
        "--context",
        "8",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    contrastive(&args)
}

/// CPC through the whole command line: per-offset metrics, exact resume, the evaluation table
/// with its sequence baselines.
#[test]
fn cpc_on_sequences_logs_every_offset_resumes_exactly_and_evaluates() {
    let (a, b) = (dir("cpc-straight"), dir("cpc-resumed"));
    let report = ok(&cpc(&a, &["--steps", "4", "--checkpoint-every", "2"]));
    for row in ["trained encoder", "random encoder", "raw (mean frame)"] {
        assert!(report.contains(row), "{row} missing: {report}");
    }
    ok(&cpc(
        &b,
        &[
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--stop-after",
            "2",
        ],
    ));
    ok(&contrastive(&[
        "train",
        "cpc",
        "--resume",
        b.to_str().unwrap(),
        "--quiet",
    ]));
    assert_eq!(losses(&a), losses(&b));
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    for l in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["offsets"].as_array().map(Vec::len), Some(3), "{l}");
    }
    let (ca, cb) = (final_tensors(&a), final_tensors(&b));
    assert_bit_identical(&ca, &cb, ca.names().filter(|n| n.starts_with("cpc.")));
}

/// A mono 16-bit PCM WAV file.
fn wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let data_len = 2 * samples.len() as u32;
    let mut v = b"RIFF".to_vec();
    v.extend((36 + data_len).to_le_bytes());
    v.extend(b"WAVEfmt ");
    v.extend(16u32.to_le_bytes());
    v.extend(1u16.to_le_bytes()); // PCM
    v.extend(1u16.to_le_bytes()); // mono
    v.extend(rate.to_le_bytes());
    v.extend((2 * rate).to_le_bytes());
    v.extend(2u16.to_le_bytes());
    v.extend(16u16.to_le_bytes());
    v.extend(b"data");
    v.extend(data_len.to_le_bytes());
    for s in samples {
        v.extend(s.to_le_bytes());
    }
    v
}

/// CPC's waveform encoder end to end on a folder of WAV files (two "languages": tones of
/// different pitch), and the settings a sequence run can get wrong.
#[test]
fn cpc_on_wav_files_and_sequence_settings_errors() {
    let data = dir("wav-data");
    for (class, freq) in [("high", 900.0f32), ("low", 200.0)] {
        let d = data.join("speech").join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..6 {
            let samples: Vec<i16> = (0..2400)
                .map(|t| {
                    let x = (t as f32 * freq * (1.0 + 0.05 * i as f32) / 8000.0
                        * std::f32::consts::TAU)
                        .sin();
                    (x * 8000.0) as i16
                })
                .collect();
            std::fs::write(d.join(format!("{i}.wav")), wav(&samples, 8000)).unwrap();
        }
    }
    let out = dir("cpc-wav");
    let d = data.to_str().unwrap();
    let o = out.to_str().unwrap();
    let base = [
        "train",
        "cpc",
        "--data",
        "wav",
        "--data-dir",
        d,
        "--out",
        o,
        "--quiet",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        contrastive(&args)
    };
    let report = ok(&with(&[
        "--window",
        "1600",
        "--offsets",
        "2",
        "--batch-size",
        "4",
        "--steps",
        "3",
        "--dim",
        "8",
        "--context",
        "8",
        "--force",
    ]));
    assert!(report.contains("trained encoder"), "{report}");

    fails(
        &with(&["--window", "100", "--batch-size", "4", "--force"]),
        "--window",
    );
    fails(
        &with(&[
            "--window",
            "1600",
            "--offsets",
            "10",
            "--batch-size",
            "4",
            "--force",
        ]),
        "--offsets",
    );
    fails(
        &contrastive(&["train", "cpc", "--data", "wav", "--out", o, "--force"]),
        "fetch-data.sh",
    );
    fails(
        &contrastive(&[
            "train",
            "moco",
            "--data",
            "japanese-vowels",
            "--out",
            o,
            "--force",
        ]),
        "sequence dataset",
    );
}

/// Ctrl-C (SIGINT) during training: the step finishes, a checkpoint is written, the process exits
/// with status 130 saying how to resume, and resuming finishes the run.
#[test]
fn ctrl_c_checkpoints_and_says_how_to_resume() {
    let out = dir("sigint");
    let args = train_args(&out, &["--steps", "200", "--checkpoint-every", "0"]);
    let child = Command::new(env!("CARGO_BIN_EXE_contrastive"))
        .args(&args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 2
        && start.elapsed().as_secs() < 120
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(130),
        "exit status 130 after SIGINT: {err}"
    );
    assert!(err.contains("interrupt"), "{err}");
    assert!(
        err.contains(&format!("--resume {}", out.display())),
        "the message says how to resume: {err}"
    );
    let ck = Checkpoint::read(checkpoint::list(&out).last().expect("a checkpoint")).unwrap();
    let step: u64 = ck.meta_parse("step").unwrap();
    assert!((2..200).contains(&step), "stopped at step {step}");
    ok(&contrastive(&[
        "train",
        "moco",
        "--resume",
        out.to_str().unwrap(),
        "--quiet",
    ]));
    let done = Checkpoint::read(checkpoint::list(&out).last().unwrap()).unwrap();
    assert_eq!(done.meta("step").unwrap(), "200");
}

/// A method without a contrastive accuracy (Deep InfoMax) logs none, and `runs` reads its log.
#[test]
fn runs_summarises_a_run_without_contrastive_accuracy() {
    let root = dir("runs-dim");
    let out = root.join("dim");
    ok(&contrastive(&[
        "train",
        "dim",
        "--train-images",
        "256",
        "--batch-size",
        "32",
        "--widths",
        "4,8",
        "--dim",
        "8",
        "--steps",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(!metrics.contains("accuracy"), "{metrics}");
    let table = ok(&contrastive(&["runs", root.to_str().unwrap()]));
    let row = table.lines().find(|l| l.starts_with("dim")).expect("a row");
    assert!(row.contains(" 3 ") && row.contains("done"), "{row}");
}
