//! Run reports on hand-written run directories: the metrics log cut back to a checkpoint's step,
//! the table of runs (unreadable runs named and skipped, a single run, plots only when asked) and
//! the plots (the final evaluation in the kNN panel). No GPU needed.

use std::path::{Path, PathBuf};

use contrastive::report::{self, metrics};
use contrastive::Error;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn line(step: u64) -> String {
    format!(
        r#"{{"step":{step},"epoch":{},"loss":{},"lr":0.06,"images_per_s":120.5}}"#,
        step as f64 / 8.0,
        3.0 / step as f64
    )
}

/// A log of steps `1..=n`, each line terminated.
fn log(n: u64) -> String {
    (1..=n).map(|s| line(s) + "\n").collect()
}

fn steps(path: &Path) -> Vec<u64> {
    metrics::read(path)
        .unwrap()
        .iter()
        .map(|l| l.step)
        .collect()
}

/// Files in `dir` other than `keep`, e.g. temporary files left behind.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// Writes `text` as the log in `dir`, cuts it back to `step`; returns the cut and the log after.
fn cut(dir: &Path, text: &str, step: u64) -> (metrics::Cut, String) {
    let path = dir.join("metrics.jsonl");
    std::fs::write(&path, text).unwrap();
    let cut = metrics::cut_to_step(&path, step).unwrap();
    assert_eq!(others(dir, &["metrics.jsonl"]), Vec::<String>::new());
    (cut, std::fs::read_to_string(&path).unwrap())
}

fn counts(kept: usize, dropped: usize, torn: bool) -> metrics::Cut {
    metrics::Cut {
        kept,
        dropped,
        torn,
    }
}

#[test]
fn cut_drops_a_torn_last_line() {
    let d = dir("torn");
    let path = d.join("metrics.jsonl");
    let torn = log(4) + &line(5)[..17];
    std::fs::write(&path, &torn).unwrap();
    // Reading tolerates the torn line (a crash, or a trainer still writing it).
    assert_eq!(steps(&path), [1, 2, 3, 4]);
    assert_eq!(cut(&d, &torn, 4), (counts(4, 0, true), log(4)));
    // Appending after the cut gives whole lines.
    std::fs::write(&path, log(4) + &line(5) + "\n").unwrap();
    assert_eq!(steps(&path), [1, 2, 3, 4, 5]);
}

#[test]
fn cut_drops_steps_past_the_checkpoint() {
    let d = dir("longer");
    // Killed at step 9 after a checkpoint at step 6, with step 10 half written.
    let killed = log(9) + &line(10)[..30];
    assert_eq!(cut(&d, &killed, 6), (counts(6, 3, true), log(6)));
    // Cutting again changes nothing.
    assert_eq!(cut(&d, &log(6), 6), (counts(6, 0, false), log(6)));
}

#[test]
fn cut_ends_a_whole_unterminated_last_line() {
    let d = dir("unterminated");
    let unterminated = log(2) + &line(3);
    assert_eq!(cut(&d, &unterminated, 3), (counts(3, 0, false), log(3)));
}

#[test]
fn cut_of_an_empty_or_missing_log() {
    let d = dir("empty");
    let path = d.join("metrics.jsonl");
    assert_eq!(
        metrics::cut_to_step(&path, 3).unwrap(),
        metrics::Cut::default()
    );
    assert!(!path.exists(), "a missing log stays missing");
    assert_eq!(cut(&d, "", 3), (counts(0, 0, false), String::new()));
    // Cut back to before the first step: an empty log.
    assert_eq!(cut(&d, &log(3), 0), (counts(0, 3, false), String::new()));
}

#[test]
fn a_corrupt_line_inside_the_log_is_named_and_nothing_is_cut() {
    let d = dir("corrupt");
    let path = d.join("metrics.jsonl");
    // A torn line glued to the next, as older versions left after kill -9 and resume.
    let glued = format!("{}{}\n", &line(3)[..14], line(3));
    let text = log(2) + &glued + &line(4) + "\n";
    std::fs::write(&path, &text).unwrap();
    for e in [
        metrics::cut_to_step(&path, 2).unwrap_err(),
        metrics::read(&path).unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(matches!(e, Error::Metrics { line: 3, .. }), "{msg}");
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("line 3"),
            "{msg}"
        );
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

/// A finished run: its log and a summary with the final evaluation.
fn finished_run(dir: &Path, steps: u64, knn_every: Option<u64>) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = (1..=steps)
        .map(|s| {
            let mut l = line(s);
            if knn_every.is_some_and(|k| s % k == 0) {
                l.insert_str(
                    l.len() - 1,
                    &format!(r#","knn":{}"#, 0.3 + s as f64 * 0.001),
                );
            }
            l + "\n"
        })
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    let summary = serde_json::json!({
        "method": "moco",
        "steps": steps,
        "evaluation": {
            "trained": {"knn": 0.8125, "linear": 0.84},
            "random": {"knn": 0.41, "linear": 0.5},
            "pixels": {"knn": 0.7, "linear": 0.75},
        },
    });
    std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
}

#[test]
fn runs_skips_and_names_unreadable_runs() {
    let root = dir("runs");
    finished_run(&root.join("good"), 40, None);
    std::fs::create_dir_all(root.join("bad")).unwrap();
    let bad = root.join("bad").join("metrics.jsonl");
    std::fs::write(&bad, "{\"step\":1,\"epo{\"step\":1}\n").unwrap();
    std::fs::create_dir_all(root.join("unreadable").join("metrics.jsonl")).unwrap();
    std::fs::create_dir_all(root.join("not-a-run")).unwrap();
    std::fs::create_dir_all(root.join("partial")).unwrap();
    std::fs::write(root.join("partial").join("metrics.jsonl"), log(7)).unwrap();

    let found = report::runs(&root, false).unwrap();
    let names: Vec<&str> = found.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["good", "partial"]);
    let good = &found.runs[0];
    assert_eq!(good.method.as_deref(), Some("moco"));
    assert_eq!((good.steps, good.knn, good.done), (40, Some(0.8125), true));
    let partial = &found.runs[1];
    assert_eq!((partial.steps, partial.done), (7, false));
    let skipped: Vec<String> = found.skipped.iter().map(|e| e.to_string()).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped
            .iter()
            .any(|m| m.contains(&bad.display().to_string()) && m.contains("line 1")),
        "{skipped:?}"
    );
    assert!(
        skipped.iter().any(|m| m.contains("unreadable")),
        "{skipped:?}"
    );
    let table = found.to_string();
    assert!(
        table.lines().any(|l| l.starts_with("good")
            && l.contains("81.25")
            && l.contains("84.00")
            && l.contains("done")),
        "{table}"
    );
    // Without plots asked for, nothing is written.
    assert!(!root.join("good").join("training.png").exists());
    assert!(!root.join("partial").join("training.png").exists());
}

#[test]
fn runs_of_a_single_run_directory_and_plots_when_asked() {
    let root = dir("single");
    let run = root.join("only");
    finished_run(&run, 12, Some(4));
    let found = report::runs(&run, false).unwrap();
    assert_eq!(found.runs.len(), 1);
    assert_eq!(
        (found.runs[0].name.as_str(), found.runs[0].steps),
        ("only", 12)
    );
    assert!(found.skipped.is_empty());
    let found = report::runs(&run, true).unwrap();
    assert!(found.unplotted.is_empty(), "{:?}", found.unplotted);
    assert!(run.join("training.png").exists());
    assert_eq!(
        others(&run, &["metrics.jsonl", "summary.json", "training.png"]).len(),
        0
    );
    let missing = report::runs(&root.join("nowhere"), false).unwrap_err();
    assert!(missing.to_string().contains("nowhere"), "{missing}");
}

/// The picture's pixels, its size, and the number of pixels of `color` in rows `rows`.
fn count_color(png_path: &Path, color: [u8; 3], rows: std::ops::Range<usize>) -> (usize, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let (w, h) = (info.width as usize, info.height as usize);
    let n = rows
        .filter(|&y| y < h)
        .flat_map(|y| (0..w).map(move |x| (y * w + x) * 3))
        .filter(|&i| buf[i..i + 3] == color)
        .count();
    (n, h)
}

/// The final evaluation's colour in the plots (orange).
const FINAL: [u8; 3] = [255, 127, 14];
/// Pixels of the axis text (black).
const TEXT: [u8; 3] = [0, 0, 0];

#[test]
fn plots_show_the_final_evaluation_in_the_knn_panel() {
    let run = dir("plot");
    finished_run(&run, 3, None);
    report::draw(&run).unwrap();
    let png = run.join("training.png");
    let (_, h) = count_color(&png, FINAL, 0..0);
    assert_eq!(h % 3, 0, "three panels");
    let panel = h / 3;
    let (final_px, _) = count_color(&png, FINAL, 2 * panel..3 * panel);
    assert!(
        final_px > 20,
        "no final evaluation marker: {final_px} pixels"
    );
    let (text_px, _) = count_color(&png, TEXT, 0..h);
    assert!(text_px > 500, "no text drawn: {text_px} pixels");
    std::fs::copy(
        &png,
        std::env::temp_dir().join("contrastive-report-final.png"),
    )
    .unwrap();

    // Before the run ends (no summary) the panel has no final marker; a summary of another run
    // (more steps than this log) is not this run's.
    for summary in [
        None,
        Some(r#"{"steps": 50, "evaluation": {"trained": {"knn": 0.9}}}"#),
    ] {
        match summary {
            Some(s) => std::fs::write(run.join("summary.json"), s).unwrap(),
            None => std::fs::remove_file(run.join("summary.json")).unwrap(),
        }
        report::draw(&run).unwrap();
        let (final_px, _) = count_color(&png, FINAL, 2 * panel..3 * panel);
        assert_eq!(final_px, 0, "summary {summary:?}");
    }
    assert_eq!(
        others(&run, &["metrics.jsonl", "summary.json", "training.png"]).len(),
        0
    );
}

#[test]
fn plots_of_a_long_cpc_run_with_a_monitor() {
    let run = dir("plot-cpc");
    let text: String = (1..=1234u64)
        .map(|s| {
            let knn = if s % 200 == 0 {
                format!(r#","knn":{}"#, 0.5 + s as f64 * 1e-4)
            } else {
                String::new()
            };
            format!(
                r#"{{"step":{s},"epoch":{},"loss":{},"lr":{},"images_per_s":1000.0{knn},"offsets":[[1.0,{}],[1.2,{}],[1.5,{}]]}}"#,
                s as f64 / 40.0,
                2.0 + 1.0 / s as f64,
                2.8e-6 * (1.0 - s as f64 / 1300.0),
                0.5 + s as f64 * 3e-4,
                0.3 + s as f64 * 2e-4,
                0.2 + s as f64 * 1e-4,
            ) + "\n"
        })
        .collect();
    std::fs::write(run.join("metrics.jsonl"), text).unwrap();
    report::draw(&run).unwrap();
    let png = run.join("training.png");
    let (_, h) = count_color(&png, TEXT, 0..0);
    assert_eq!(h % 4, 0, "four panels");
    std::fs::copy(
        &png,
        std::env::temp_dir().join("contrastive-report-cpc.png"),
    )
    .unwrap();
}
