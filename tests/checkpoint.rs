//! Checkpoint files without a GPU: a failed write leaves no temporary file, the newest intact
//! checkpoint is found past corrupt or truncated newer ones (from a directory or a file), files
//! sort by step, and sizes asked for by stored settings are checked against what the file holds.

use std::path::{Path, PathBuf};

use contrastive::checkpoint::{self, Checkpoint};
use contrastive::Error;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "contrastive-checkpoint-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small checkpoint of `step` holding 12 + 3 elements.
fn small(step: u64) -> Checkpoint {
    let mut ck = Checkpoint::new();
    ck.put_f32(
        "query.fc.weight",
        &[3, 4],
        (0..12).map(|i| i as f32).collect(),
    );
    ck.put_u32("trainer.order", &[3], vec![2, 0, 1]);
    ck.meta.insert("step".into(), step.to_string());
    ck
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_failed_write_removes_its_temporary_file() {
    let d = dir("failed-write");
    // The target is a directory that is not empty: the temporary file is written, then the
    // rename onto the target fails.
    let target = d.join("checkpoint-00000004.safetensors");
    std::fs::create_dir_all(target.join("inside")).unwrap();
    let e = small(4).write(&target).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("checkpoint-00000004"), "{e}");
    assert_eq!(names(&d), ["checkpoint-00000004.safetensors"]);

    // A directory that is gone: nothing is created, and the error names the file.
    let gone = d.join("gone");
    let e = small(2).write(&gone.join("checkpoint-00000002.safetensors"));
    assert!(e.unwrap_err().to_string().contains("gone"));
    assert!(!gone.exists());

    // And a write that succeeds leaves only its file.
    let ok = d.join("ok");
    std::fs::create_dir_all(&ok).unwrap();
    small(2)
        .write(&ok.join("checkpoint-00000002.safetensors"))
        .unwrap();
    assert_eq!(names(&ok), ["checkpoint-00000002.safetensors"]);
}

#[test]
fn find_passes_over_corrupt_newer_checkpoints() {
    let d = dir("find");
    for step in [2, 4, 6, 8] {
        small(step).write(&checkpoint::path_for(&d, step)).unwrap();
    }
    // Step 8 truncated (a full disk), step 6 overwritten with garbage.
    let eight = checkpoint::path_for(&d, 8);
    let bytes = std::fs::read(&eight).unwrap();
    std::fs::write(&eight, &bytes[..bytes.len() - 10]).unwrap();
    let six = checkpoint::path_for(&d, 6);
    std::fs::write(&six, b"not a checkpoint at all").unwrap();

    let found = checkpoint::find(&d).unwrap();
    assert_eq!(found.checkpoint.meta("step").unwrap(), "4");
    assert_eq!(found.checkpoint.origin, checkpoint::path_for(&d, 4));
    let skipped: Vec<String> = found.skipped.iter().map(|e| e.to_string()).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped[0].contains(&eight.display().to_string()),
        "{skipped:?}"
    );
    assert!(
        skipped[1].contains(&six.display().to_string()),
        "{skipped:?}"
    );
    assert!(
        skipped.iter().all(|m| m.contains("truncated or corrupt")),
        "{skipped:?}"
    );

    // A file is taken as it is, intact or not.
    let two = checkpoint::find(&checkpoint::path_for(&d, 2)).unwrap();
    assert_eq!(two.checkpoint.meta("step").unwrap(), "2");
    assert!(two.skipped.is_empty());
    let e = checkpoint::find(&eight).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert!(e.to_string().contains(&eight.display().to_string()), "{e}");
}

#[test]
fn find_without_an_intact_checkpoint_names_every_file() {
    let d = dir("none-intact");
    let e = checkpoint::find(&d).unwrap_err();
    assert!(e.to_string().contains("no checkpoint-*.safetensors"), "{e}");
    // Intact as a file but without its step: not a checkpoint to resume from.
    let mut no_step = small(3);
    no_step.meta.remove("step");
    no_step.write(&checkpoint::path_for(&d, 3)).unwrap();
    std::fs::write(checkpoint::path_for(&d, 5), b"").unwrap();
    let e = checkpoint::find(&d).unwrap_err().to_string();
    assert!(e.contains("no intact checkpoint"), "{e}");
    assert!(
        e.contains("checkpoint-00000003") && e.contains("`step` is missing"),
        "{e}"
    );
    assert!(e.contains("checkpoint-00000005"), "{e}");
    let missing = checkpoint::find(&d.join("nowhere")).unwrap_err();
    assert!(missing.to_string().contains("nowhere"), "{missing}");
}

#[test]
fn checkpoints_sort_by_step_past_the_padded_width() {
    let d = dir("order");
    for step in [99_999_999, 100_000_000, 7] {
        small(step).write(&checkpoint::path_for(&d, step)).unwrap();
    }
    let steps: Vec<String> = checkpoint::list(&d)
        .iter()
        .map(|p| {
            Checkpoint::read(p)
                .unwrap()
                .meta("step")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(steps, ["7", "99999999", "100000000"]);
    let found = checkpoint::find(&d).unwrap();
    assert_eq!(found.checkpoint.meta("step").unwrap(), "100000000");
    // Rotation keeps the newest by step too.
    checkpoint::save_rotating(&small(100_000_001), &d, 100_000_001, 2).unwrap();
    let kept: Vec<String> = names(&d);
    assert_eq!(
        kept,
        [
            "checkpoint-100000000.safetensors",
            "checkpoint-100000001.safetensors"
        ]
    );
}

#[test]
fn sizes_from_stored_settings_are_checked_against_the_file() {
    let d = dir("sizes");
    let path = d.join("checkpoint-00000001.safetensors");
    small(1).write(&path).unwrap();
    let ck = Checkpoint::read(&path).unwrap();
    assert_eq!(ck.stored_elements(), 15);
    ck.check_size("widths", 15).unwrap();
    // A header whose settings ask for 100000 × 100000 weights.
    let e = ck
        .check_size("widths", 100_000u128 * 100_000 * 9)
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Checkpoint { .. }), "{msg}");
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("`widths`"),
        "{msg}"
    );
}
