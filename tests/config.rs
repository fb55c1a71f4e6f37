//! Settings files: `--config FILE.toml` gives any train setting, the command line overrides it,
//! bad keys and values are errors naming the key and the file, and the `config.toml` a run writes
//! replays it bit for bit.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

mod common;

use contrastive::run::{self, config, Settings};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("settings.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn json(s: &Settings) -> serde_json::Value {
    serde_json::to_value(s).unwrap()
}

#[test]
fn command_line_flags_override_the_file() {
    let d = dir("override");
    let path = file(
        &d,
        "method = \"moco\"\nsteps = 7\nbatch-size = 16\nwidths = [4, 8]\nlinear_head = true\nlr = 0.5\nqueue = 64\nquiet = true\n",
    );
    let s =
        Settings::from_words(["moco", "--config", path.to_str().unwrap(), "--steps", "3"]).unwrap();
    let c = s.common();
    assert_eq!(c.steps, Some(3), "the command line wins");
    assert_eq!(c.batch_size, Some(16), "dashed keys are flag names too");
    assert_eq!(c.widths, vec![4, 8]);
    assert_eq!(c.lr, Some(0.5));
    assert!(
        c.quiet,
        "settings that only steer the invocation come from the file too"
    );
    let Settings::Moco {
        linear_head, queue, ..
    } = s
    else {
        panic!("a moco run");
    };
    assert!(linear_head);
    assert_eq!(queue, 64);
    // Defaults the file leaves alone stay the flags' defaults.
    let plain = Settings::from_words(["moco"]).unwrap();
    assert_eq!(c.seed, plain.common().seed);
    assert_eq!(c.weight_decay, plain.common().weight_decay);
}

#[test]
fn the_written_config_reads_back_as_the_same_settings() {
    let d = dir("roundtrip");
    let words: [&[&str]; 4] = [
        &[
            "moco",
            "--momentum",
            "0.99",
            "--temperature",
            "0.07",
            "--symmetric",
            "--seed",
            "18446744073709551615",
            "--lr",
            "3e-5",
        ],
        &[
            "dim",
            "--estimator",
            "nce",
            "--local-stage",
            "1",
            "--epochs",
            "2.5",
        ],
        &[
            "cmc",
            "--views",
            "channel-split",
            "--data",
            "cifar10",
            "--bank",
            "128",
        ],
        &[
            "cpc",
            "--data",
            "japanese-vowels",
            "--window",
            "7",
            "--optimizer",
            "adamw",
        ],
    ];
    for w in words {
        let mut s = Settings::from_words(w.iter().copied()).unwrap();
        s.common_mut().out = Some(d.join("run"));
        let path = file(&d, &config::to_toml(&s));
        let back = Settings::from_words([s.name(), "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(
            json(&back),
            json(&s),
            "{w:?} through\n{}",
            config::to_toml(&s)
        );
    }
}

#[test]
fn bad_files_are_errors_naming_the_key_and_the_file() {
    let d = dir("bad");
    for (text, key) in [
        ("no_such_setting = 1\n", "no_such_setting"),
        ("steps = \"ten\"\n", "steps"),
        ("steps = 1.5\n", "steps"),
        ("widths = [[4]]\n", "widths"),
        ("common = { steps = 1 }\n", "common"),
        ("method = \"dim\"\n", "method"),
        ("config = \"other.toml\"\n", "config"),
        ("steps = \n", "TOML"),
    ] {
        let path = file(&d, text);
        let e = Settings::from_words(["moco", "--config", path.to_str().unwrap()])
            .err()
            .unwrap_or_else(|| panic!("{text:?} must be refused"))
            .to_string();
        assert!(
            e.contains(key) && e.contains(path.to_str().unwrap()),
            "{text:?}: the error names `{key}` and the file: {e}"
        );
    }
    let missing = d.join("missing.toml");
    let e = Settings::from_words(["moco", "--config", missing.to_str().unwrap()])
        .err()
        .expect("a missing file is refused")
        .to_string();
    assert!(e.contains("missing.toml"), "{e}");
    // The binary exits non-zero with the message, before touching the GPU.
    let path = file(&d, "no_such_setting = 1\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_contrastive"))
        .args(["train", "moco", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no_such_setting"),
        "{err}"
    );
}

/// Trains `words` with the tiny MoCo model's settings added.
fn train(words: &[&str]) -> run::Report {
    let settings = Settings::from_words(words.iter().chain(common::TINY_MOCO).copied()).unwrap();
    run::train(settings, &AtomicBool::new(false)).unwrap()
}

fn losses(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["loss"].as_f64().unwrap() as f32).to_bits()
        })
        .collect()
}

/// A few steps of a tiny run, then the same run from its `config.toml` into another directory:
/// the same losses, bit for bit.
#[test]
fn a_run_replays_from_its_config_toml_bit_for_bit() {
    let (a, b) = (dir("first"), dir("replay"));
    let a_out = a.join("run");
    train(&[
        "moco",
        "--out",
        a_out.to_str().unwrap(),
        "--train-images",
        "256",
        "--batch-size",
        "32",
        "--steps",
        "6",
        "--stop-after",
        "3",
        "--seed",
        "5",
        "--quiet",
    ]);
    let written = a_out.join(config::FILE);
    let text = std::fs::read_to_string(&written).unwrap();
    let absolute = format!("out = {:?}", std::path::absolute(&a_out).unwrap());
    assert!(
        text.contains(&absolute),
        "paths are stored absolute:\n{text}"
    );
    let b_out = b.join("run");
    train(&[
        "moco",
        "--config",
        written.to_str().unwrap(),
        "--out",
        b_out.to_str().unwrap(),
        "--stop-after",
        "3",
        "--quiet",
    ]);
    let first = losses(&a_out);
    assert_eq!(first.len(), 3);
    assert_eq!(first, losses(&b_out));
    let replayed = std::fs::read_to_string(b_out.join(config::FILE)).unwrap();
    assert_eq!(
        replayed.replace(b_out.to_str().unwrap(), "DIR"),
        text.replace(a_out.to_str().unwrap(), "DIR"),
        "the replay's config is the original's but for its directory"
    );
}
