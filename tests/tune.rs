//! Autotuning through the binary: `contrastive tune` times every candidate of the shapes one
//! step uses and caches the fastest; `train --tune cached` runs the cached choices and records
//! them in its checkpoints; a resumed run pins them, so resume stays bit-identical.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use contrastive::checkpoint::{self, Checkpoint};

/// A tiny MoCo run (seconds on llvmpipe) with its shapes: a strided layer, odd matmuls.
const MOCO: &[&str] = &["moco", "--train-images", "128", "--batch-size", "16"];

/// A fresh temporary directory for this test.
fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-tune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the binary with its tuning cache in `cache`; its stderr on success.
fn run(cache: &Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_contrastive"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("CONTRASTIVE_CACHE_DIR", cache)
        .output()
        .expect("the binary runs");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?} failed: {err}");
    err
}

/// `train` with the MOCO settings into `out`, for `steps`, `extra` appended.
fn train(cache: &Path, out: &Path, steps: &str, extra: &[&str]) {
    let mut args = vec!["train"];
    args.extend_from_slice(MOCO);
    args.extend_from_slice(common::TINY_MOCO);
    args.extend_from_slice(&["--out", out.to_str().unwrap(), "--quiet", "--steps", steps]);
    args.extend_from_slice(&["--checkpoint-every", "2"]);
    args.extend_from_slice(extra);
    run(cache, &args);
}

/// The one adapter's choices in the cache, as checkpoint-style `family\tshape` → candidate.
fn cached(cache: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(cache.join("tune.json")).expect("a tuning cache");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let adapters = v["adapters"].as_object().unwrap();
    assert_eq!(adapters.len(), 1, "one adapter tuned");
    let entries = adapters.values().next().unwrap().as_object().unwrap();
    entries
        .iter()
        .map(|(k, c)| (k.clone(), c.as_str().unwrap().to_string()))
        .collect()
}

/// The choices a checkpoint recorded, keyed as in the cache.
fn recorded(ck: &Checkpoint) -> BTreeMap<String, String> {
    ck.meta["trainer.tuning"]
        .lines()
        .map(|l| {
            let (key, c) = l.rsplit_once('\t').unwrap();
            (key.to_string(), c.to_string())
        })
        .collect()
}

fn newest(out: &Path) -> Checkpoint {
    Checkpoint::read(checkpoint::list(out).last().expect("a checkpoint")).unwrap()
}

#[test]
fn tune_table_caches_the_fastest_and_runs_reuse_and_pin_it() {
    let cache = temp("cache");
    let json = cache.join("table.json");
    let mut args = vec!["tune"];
    args.extend_from_slice(MOCO);
    args.extend_from_slice(common::TINY_MOCO);
    args.extend_from_slice(&["--json", json.to_str().unwrap()]);
    run(&cache, &args);

    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let mut shapes = BTreeMap::<(String, String), Vec<(f64, bool, String)>>::new();
    for t in table["trials"].as_array().unwrap() {
        let key = (t["family"].to_string(), t["shape"].to_string());
        let row = (
            t["seconds"].as_f64().unwrap(),
            t["chosen"].as_bool().unwrap(),
            t["candidate"].as_str().unwrap().to_string(),
        );
        shapes.entry(key).or_default().push(row);
    }
    let families: Vec<&str> = shapes.keys().map(|(f, _)| f.as_str()).collect();
    assert!(
        families.contains(&"\"matmul\"") && families.contains(&"\"conv\""),
        "both families tuned: {families:?}"
    );
    let choices = cached(&cache);
    assert_eq!(choices.len(), shapes.len(), "every shape cached");
    for ((family, shape), rows) in &shapes {
        let chosen: Vec<_> = rows.iter().filter(|r| r.1).collect();
        assert_eq!(chosen.len(), 1, "{shape}: exactly one chosen");
        let fastest = rows.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
        assert_eq!(chosen[0].0, fastest, "{shape}: the chosen is the fastest");
        let key = format!("{}\t{}", family.trim_matches('"'), shape.trim_matches('"'));
        assert_eq!(
            choices[&key], chosen[0].2,
            "{key}: the cache holds the pick"
        );
    }

    // A cached run times nothing: the cache is left as it was, and its checkpoint records the
    // cached choices. Straight through, 4 steps.
    let before = std::fs::read_to_string(cache.join("tune.json")).unwrap();
    let straight = cache.join("straight");
    train(&cache, &straight, "4", &["--tune", "cached"]);
    assert_eq!(
        std::fs::read_to_string(cache.join("tune.json")).unwrap(),
        before
    );
    let ck = newest(&straight);
    assert_eq!(recorded(&ck), choices);

    // 2 of 4 steps, then resumed under `--tune off`: the checkpoint's choices are pinned, so the
    // resumed run runs the straight run's kernels (not the heuristics) and matches it bit for bit.
    let resumed = cache.join("resumed");
    train(
        &cache,
        &resumed,
        "4",
        &["--tune", "cached", "--stop-after", "2"],
    );
    let out = resumed.to_str().unwrap();
    run(
        &cache,
        &["train", "moco", "--resume", out, "--quiet", "--tune", "off"],
    );
    let (a, b) = (newest(&straight), newest(&resumed));
    assert_eq!(a.meta("step").unwrap(), "4");
    assert_eq!(b.meta("step").unwrap(), "4");
    assert_eq!(recorded(&b), choices, "the resumed run kept the choices");
    let mut compared = 0;
    for name in a.names() {
        let shape = a.shape(name).unwrap().to_vec();
        let Ok(x) = a.get_f32(name, &shape) else {
            continue;
        };
        let y = b.get_f32(name, &shape).unwrap();
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} differs after resume"
        );
        compared += 1;
    }
    assert!(compared > 0);
    std::fs::remove_dir_all(&cache).unwrap();
}

/// The choosers take a tuned choice only where it is valid for the shape (a split needs the
/// scratch, a conv candidate must fit), and note shapes without one as wanted.
#[test]
fn choosers_take_valid_tuned_choices_and_otherwise_the_heuristic() {
    use contrastive::gpu::AdapterKind;
    for kind in [AdapterKind::Cpu, AdapterKind::Gpu] {
        let mut gpu = contrastive::Gpu::new().unwrap();
        gpu.set_kind(kind);
        choosers_take_valid_tuned_choices(&gpu);
    }
}

fn choosers_take_valid_tuned_choices(gpu: &contrastive::Gpu) {
    use contrastive::gpu::tune::{Mode, Tuning};
    use contrastive::kernels::conv::{self, Candidate, Conv2d, ConvShape, Pass};
    use contrastive::kernels::matmul::{self, Dims, Trans};
    let dims = Dims {
        m: 64,
        n: 64,
        k: 4096,
    };
    // Without room for its partial products the heuristic's pick runs unsplit.
    let heuristic = matmul::Candidate {
        splits: 1,
        ..matmul::choose(gpu, dims)
    };
    assert_eq!(
        matmul::pick(gpu, Trans::TN, dims, 0),
        heuristic,
        "tuning off"
    );
    *gpu.tuning() = Tuning::new(Mode::Full);
    assert_eq!(matmul::pick(gpu, Trans::TN, dims, 0), heuristic);
    let wanted = gpu.tuning().take_wanted();
    assert_eq!(
        wanted,
        vec![(
            matmul::FAMILY.to_string(),
            matmul::shape_class(Trans::TN, dims, 0)
        )]
    );
    let list = matmul::candidates(gpu, dims);
    let split = list
        .iter()
        .find(|c| c.splits > 1)
        .expect("a split candidate");
    let unsplit = list.iter().rfind(|c| c.splits == 1).unwrap();
    for room in [0, split.scratch(dims)] {
        let key = (
            matmul::FAMILY.to_string(),
            matmul::shape_class(Trans::TN, dims, room),
        );
        gpu.tuning().set(key.clone(), split.name());
        let want = if room == 0 { heuristic } else { *split };
        assert_eq!(
            matmul::pick(gpu, Trans::TN, dims, room),
            want,
            "room {room}"
        );
        gpu.tuning().set(key, unsplit.name());
        assert_eq!(matmul::pick(gpu, Trans::TN, dims, room), *unsplit);
    }

    let g = Conv2d {
        kh: 3,
        kw: 3,
        stride: (1, 1),
        pad: (1, 1),
    };
    let s = ConvShape {
        n: 2,
        h: 8,
        w: 8,
        cin: 4,
        cout: 8,
    };
    let key = (
        conv::FAMILY.to_string(),
        conv::shape_class(&g, &s, Pass::Forward, 0),
    );
    gpu.tuning().set(key.clone(), "Direct".into());
    assert!(!g.fits(&s, Pass::Forward, Candidate::Direct));
    assert_eq!(
        g.pick(gpu, &s, Pass::Forward, 0),
        g.choose(gpu.kind(), &s, Pass::Forward),
        "a candidate that does not fit is not taken"
    );
    gpu.tuning().set(key, "Shared".into());
    assert_eq!(g.pick(gpu, &s, Pass::Forward, 0), Candidate::Shared);
}
