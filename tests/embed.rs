//! `contrastive embed`: the features it writes are the evaluation's, bit for bit, for every image
//! of the chosen split, with their labels and names, in safetensors or `.npy` files that other
//! tools can parse; the input normalisation is the training split's, stored in the checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

mod common;

use contrastive::checkpoint::{self, Checkpoint};
use contrastive::data::{self, PixelStats};
use contrastive::embed::Embeddings;
use contrastive::eval::{self, FeatureSet};
use contrastive::run::{self, EmbedRequest, Part, RunData, Settings};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-embed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A `.npy` file's dtype, shape and data bytes.
fn read_npy(path: &Path) -> (String, Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "the header is padded to 64 bytes");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.ends_with('\n') && header.contains("'fortran_order': False"));
    let field = |key: &str| {
        let start = header.find(key).unwrap() + key.len();
        header[start..].trim_start_matches([':', ' ', '\''])
    };
    let descr = field("'descr'").split('\'').next().unwrap().to_string();
    let shape = field("'shape'");
    let shape: Vec<usize> = shape[1..shape.find(')').unwrap()]
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse().unwrap())
        .collect();
    (descr, shape, bytes[10 + len..].to_vec())
}

fn f32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i64s(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A safetensors file's tensors (dtype, shape, bytes) and metadata.
type Tensors = HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>;

fn read_safetensors(path: &Path) -> (Tensors, HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, header.metadata().clone().unwrap_or_default())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A tiny MoCo run trained on the first 256 embedded images, stopped after 2 steps (its
/// checkpoint, without the final evaluation).
fn trained(out: &Path) {
    let words = [
        "moco",
        "--out",
        out.to_str().unwrap(),
        "--train-images",
        "256",
        "--batch-size",
        "32",
        "--steps",
        "4",
        "--stop-after",
        "2",
        "--quiet",
    ];
    let report = run::train(
        Settings::from_words(words.iter().chain(common::TINY_MOCO).copied()).unwrap(),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(report.interrupted && report.checkpoint.is_some());
}

#[test]
fn embed_writes_the_evaluation_features_bit_for_bit() {
    let d = dir("features");
    let out = d.join("run");
    trained(&out);
    let split = data::embedded().unwrap();
    let train_norm = PixelStats::of(&split.train.take(256));

    // The checkpoint stores the training split's normalisation, one value per channel.
    let ck = Checkpoint::read(checkpoint::list(&out).last().unwrap()).unwrap();
    assert_eq!(ck.normalisation(1).unwrap(), Some(train_norm.clone()));
    assert_eq!(ck.shape("input.mean"), Some(&[1][..]));

    // The evaluation path: the run restored as `contrastive eval` restores it.
    let cmd: Settings = serde_json::from_str(ck.meta("command").unwrap()).unwrap();
    let s = run::restore(&cmd, &ck, true).unwrap();
    let RunData::Images {
        split: run_split,
        train,
        test,
        ..
    } = &s.data
    else {
        panic!("image data");
    };
    assert_eq!(train.stats, train_norm);
    assert_eq!(
        test.stats, train_norm,
        "held-out images are normalised with the training statistics"
    );
    let f = |g: &mut contrastive::autodiff::Graph, x| s.method.features(g, x);
    let eval_train = eval::features(&s.gpu, &f, train, &run_split.train.labels).unwrap();
    let eval_test = eval::features(&s.gpu, &f, test, &run_split.test.labels).unwrap();
    drop(s);

    // Every image of both splits, training first.
    let st = d.join("all.safetensors");
    let e = run::embed(&EmbedRequest {
        checkpoint: out.clone(),
        data: None,
        data_dir: None,
        part: Part::All,
        out: st.clone(),
        quiet: true,
    })
    .unwrap();
    let n = split.train.len() + split.test.len();
    assert_eq!((e.images, e.dim, e.labelled, e.named), (n, 8, true, false));
    let (tensors, meta) = read_safetensors(&st);
    let (dtype, shape, feats) = &tensors["features"];
    assert_eq!(
        (*dtype, shape.clone()),
        (safetensors::Dtype::F32, vec![n, 8])
    );
    let feats = f32s(feats);
    let rows = |r: std::ops::Range<usize>| feats[r.start * 8..r.end * 8].to_vec();
    assert_eq!(rows(0..256), bits(&eval_train.data), "training rows");
    assert_eq!(
        rows(split.train.len()..n),
        bits(&eval_test.data),
        "held-out rows"
    );
    let (dtype, shape, labels) = &tensors["labels"];
    assert_eq!((*dtype, shape.clone()), (safetensors::Dtype::I64, vec![n]));
    let want: Vec<i64> = split
        .train
        .labels
        .iter()
        .chain(&split.test.labels)
        .map(|&l| l as i64)
        .collect();
    assert_eq!(i64s(labels), want);
    assert_eq!(meta["split"], "all");
    assert_eq!(meta["method"], "moco");
    assert!(
        !meta.contains_key("names"),
        "the embedded set has no file names"
    );

    // The held-out split as .npy: the same rows, labels beside them.
    let npy = d.join("test.npy");
    let e = run::embed(&EmbedRequest {
        checkpoint: out.clone(),
        data: None,
        data_dir: None,
        part: Part::Test,
        out: npy.clone(),
        quiet: true,
    })
    .unwrap();
    let labels_npy = d.join("test.labels.npy");
    assert_eq!(e.files, vec![npy.clone(), labels_npy.clone()]);
    let (descr, shape, data) = read_npy(&npy);
    assert_eq!((descr.as_str(), shape), ("<f4", vec![split.test.len(), 8]));
    assert_eq!(f32s(&data), bits(&eval_test.data));
    let (descr, shape, data) = read_npy(&labels_npy);
    assert_eq!((descr.as_str(), shape), ("<i8", vec![split.test.len()]));
    assert_eq!(i64s(&data), want[split.train.len()..]);
}

#[test]
fn names_and_unlabelled_sets_are_written_as_documented() {
    let d = dir("names");
    let names: Vec<String> = ["cats/a.png", "cats/b.jpg", "dogs/c d.png"]
        .map(String::from)
        .to_vec();
    let e = Embeddings {
        features: FeatureSet {
            data: (0..6).map(|i| i as f32 * 0.5 - 1.0).collect(),
            labels: vec![0; 3],
            dim: 2,
        },
        labelled: false,
        names: names.clone(),
    };
    let meta = [("data".to_string(), "folder".to_string())].into();
    let st = d.join("e.safetensors");
    assert_eq!(e.write(&st, &meta).unwrap(), vec![st.clone()]);
    let (tensors, meta) = read_safetensors(&st);
    assert!(!tensors.contains_key("labels"), "unlabelled: no labels");
    assert_eq!(tensors["features"].1, vec![3, 2]);
    assert_eq!(f32s(&tensors["features"].2), bits(&e.features.data));
    let listed: Vec<String> = serde_json::from_str(&meta["names"]).unwrap();
    assert_eq!((listed, meta["data"].as_str()), (names.clone(), "folder"));

    let npy = d.join("e.npy");
    let files = e.write(&npy, &Default::default()).unwrap();
    assert_eq!(files, vec![npy.clone(), d.join("e.names.json")]);
    let (_, shape, data) = read_npy(&npy);
    assert_eq!((shape, f32s(&data)), (vec![3, 2], bits(&e.features.data)));
    let listed: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(d.join("e.names.json")).unwrap()).unwrap();
    assert_eq!(listed, names);

    let err = e.write(&d.join("e.csv"), &Default::default()).unwrap_err();
    assert!(err.to_string().contains(".npy"), "{err}");
    let wrong = Embeddings {
        names: names[..2].to_vec(),
        ..e
    };
    assert!(wrong.write(&st, &Default::default()).is_err());
}
