//! Folders of image files (`--data images`): the loader on a tree the test writes (PNG and JPEG
//! from the embedded Fashion-MNIST, grayscale and tinted RGB, with a corrupt file, a non-image
//! file and an empty class folder), and short training runs on it through the library.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use contrastive::data::{self, folder, FolderOptions, ImageSet};
use contrastive::run::{self, Settings};

/// Class folders and the Fashion-MNIST label each takes its images from; sorted by name they are
/// pullover (0), trouser (1), tshirt (2).
const CLASSES: [(&str, u8); 3] = [("tshirt", 0), ("trouser", 1), ("pullover", 2)];
/// Images written per class.
const PER_CLASS: usize = 10;
/// Colour per class for the tinted tree (a multiplier per channel).
const TINTS: [[f32; 3]; 3] = [[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0]];

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-images-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The first `PER_CLASS` embedded images of Fashion-MNIST class `label`, 28×28 bytes each.
fn source(label: u8) -> Vec<Vec<u8>> {
    let split = data::embedded().unwrap();
    let set = &split.train;
    let d = set.image_len();
    (0..set.len())
        .filter(|&i| set.labels[i] == label)
        .take(PER_CLASS)
        .map(|i| set.images[i * d..(i + 1) * d].to_vec())
        .collect()
}

/// Writes `pixels` (28×28 grey) as `path`, PNG or JPEG by its suffix, tinted RGB when `tint`.
fn write(path: &Path, pixels: &[u8], tint: Option<[f32; 3]>) {
    match tint {
        None => image::GrayImage::from_raw(28, 28, pixels.to_vec())
            .unwrap()
            .save(path)
            .unwrap(),
        Some(t) => {
            let rgb = pixels
                .iter()
                .flat_map(|&p| t.map(|k| (p as f32 * k).round() as u8))
                .collect();
            image::RgbImage::from_raw(28, 28, rgb)
                .unwrap()
                .save(path)
                .unwrap()
        }
    }
}

/// An ImageFolder tree: three classes of `PER_CLASS` images (even ones PNG, odd ones JPEG), a
/// corrupt PNG in `trouser/`, a text file in `tshirt/`, an empty class folder `empty/`.
fn tree(name: &str, tinted: bool) -> PathBuf {
    let root = dir(name);
    for (k, &(class, label)) in CLASSES.iter().enumerate() {
        let folder = root.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for (i, pixels) in source(label).iter().enumerate() {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            let path = folder.join(format!("img_{i:03}.{ext}"));
            write(&path, pixels, tinted.then_some(TINTS[k]));
        }
    }
    let mut broken = b"\x89PNG\r\n\x1a\n".to_vec();
    broken.extend_from_slice(&[7; 64]);
    std::fs::write(root.join("trouser/broken.png"), broken).unwrap();
    std::fs::write(root.join("tshirt/notes.txt"), "not an image").unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    root
}

/// The class index a file name's folder stands for (folders sorted by name).
fn class_of(name: &str) -> Option<usize> {
    ["pullover", "trouser", "tshirt"]
        .iter()
        .position(|c| name.starts_with(&format!("{c}/")))
}

fn options(size: usize) -> FolderOptions {
    FolderOptions {
        image_size: size,
        ..FolderOptions::default()
    }
}

fn err_of<T>(r: contrastive::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_class_tree_loads_with_its_classes_names_held_out_files_and_skips() {
    let root = tree("loader", false);
    let split = folder::load(&root, &options(16)).unwrap();
    let (train, test) = (&split.train, &split.test);
    // 30 images decode (broken.png and notes.txt are skipped, `empty` holds nothing); the 10th
    // file of each class by name is held out: pullover/img_009, trouser/img_008 (broken.png sorts
    // first), tshirt/img_009 (notes.txt sorts last).
    assert_eq!((train.len(), test.len()), (27, 3));
    assert_eq!(
        test.names,
        [
            "pullover/img_009.jpg",
            "trouser/img_008.png",
            "tshirt/img_009.jpg"
        ]
    );
    assert_eq!(test.labels, [0, 1, 2]);
    assert_eq!((train.classes, test.classes), (3, 3));
    assert_eq!(train.names.len(), 27);
    assert_eq!(train.names[0], "pullover/img_000.png");
    assert!(!train
        .names
        .iter()
        .any(|n| n.contains("broken") || n.contains("notes")));
    for (name, &label) in train.names.iter().zip(&train.labels) {
        assert_eq!(Some(label as usize), class_of(name), "{name}");
    }
    // Grayscale files give one channel; the size is the one asked for.
    assert_eq!((train.height, train.width, train.channels), (16, 16, 1));
    assert_eq!(train.images.len(), 27 * 16 * 16);
    // At the source size, a PNG comes back as its own pixels.
    let full = folder::load(&root, &options(28)).unwrap();
    let tshirt = source(0);
    let i = full
        .train
        .names
        .iter()
        .position(|n| n == "tshirt/img_002.png")
        .unwrap();
    assert_eq!(full.train.images[i * 784..(i + 1) * 784], tshirt[2][..]);

    let strict = FolderOptions {
        strict: true,
        ..options(16)
    };
    let e = err_of(folder::load(&root, &strict));
    assert!(e.contains("broken.png") && e.contains("--strict"), "{e}");
}

#[test]
fn colour_is_detected_and_channels_can_be_forced() {
    let grey = tree("grey", false);
    let tinted = tree("tinted", true);
    let rgb = folder::read(&tinted, &options(8)).unwrap();
    assert_eq!((rgb.channels, rgb.len(), rgb.classes), (3, 30, 3));
    assert_eq!(rgb.images.len(), 30 * 8 * 8 * 3);
    // The tshirt images are tinted red: red dominates their pixels.
    let tshirt = rgb.labels.iter().position(|&l| l == 2).unwrap();
    let px = &rgb.images[tshirt * 192..(tshirt + 1) * 192];
    let (r, g): (u32, u32) = px
        .chunks(3)
        .fold((0, 0), |(r, g), p| (r + p[0] as u32, g + p[1] as u32));
    assert!(r > 2 * g, "red {r} green {g}");

    let forced = |path: &Path, channels| {
        let o = FolderOptions {
            channels: Some(channels),
            ..options(8)
        };
        folder::read(path, &o).unwrap()
    };
    let grey3 = forced(&grey, 3);
    assert_eq!(grey3.channels, 3);
    assert!(grey3.images.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    let grey1 = forced(&grey, 1);
    assert_eq!(grey1.channels, 1);
    let step: Vec<u8> = grey3.images.iter().step_by(3).copied().collect();
    assert_eq!(grey1.images, step, "one channel is the grey of three");
    assert_eq!(forced(&tinted, 1).channels, 1);
}

#[test]
fn held_out_folders_share_the_class_names_and_bad_folders_are_named_errors() {
    let root = tree("val-train", false);
    let val = dir("val");
    for (class, label) in [("tshirt", 0u8), ("pullover", 2)] {
        std::fs::create_dir_all(val.join(class)).unwrap();
        write(&val.join(class).join("a.png"), &source(label)[0], None);
    }
    let o = FolderOptions {
        val_dir: Some(val.clone()),
        ..options(8)
    };
    let split = folder::load(&root, &o).unwrap();
    assert_eq!(split.train.len(), 30);
    assert_eq!(split.test.names, ["pullover/a.png", "tshirt/a.png"]);
    assert_eq!(split.test.labels, [0, 2], "the training data's indices");

    std::fs::create_dir_all(val.join("sandal")).unwrap();
    write(&val.join("sandal/b.png"), &source(5)[0], None);
    let e = err_of(folder::load(&root, &o));
    assert!(e.contains("sandal") && e.contains("not one of"), "{e}");

    let nothing = dir("nothing");
    std::fs::write(nothing.join("readme.txt"), "no images here").unwrap();
    let e = err_of(folder::read(&nothing, &options(8)));
    assert!(e.contains("none of its 1 files"), "{e}");
    let e = err_of(folder::read(&nothing.join("missing"), &options(8)));
    assert!(e.contains("not a directory"), "{e}");
}

/// `contrastive train WORDS…` through the library, tiny and quiet, into a fresh run directory.
fn train(method: &str, data_dir: &Path, extra: &[&str]) -> contrastive::Result<run::Report> {
    let out = dir(&format!("run-{method}-{}", extra.join("")));
    let mut words = vec![
        method.to_string(),
        "--data".into(),
        "images".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--steps".into(),
        "2".into(),
        "--batch-size".into(),
        "8".into(),
        "--widths".into(),
        "4,8".into(),
        "--dim".into(),
        "8".into(),
        "--quiet".into(),
    ];
    if method == "moco" {
        words.extend(["--queue", "16", "--split-bn", "2"].map(String::from));
    }
    if !extra.contains(&"--image-size") {
        words.extend(["--image-size", "16"].map(String::from));
    }
    words.extend(extra.iter().map(|s| s.to_string()));
    let settings = Settings::from_words(&words)?;
    run::train(settings, &AtomicBool::new(false))
}

#[test]
fn moco_and_two_view_train_on_a_folder_in_both_channel_modes() {
    let root = tree("train", true);
    for method in ["moco", "cmc"] {
        for channels in ["1", "3"] {
            let report = train(method, &root, &["--channels", channels]).unwrap();
            assert_eq!(report.step, 2);
            let summary = report.summary.unwrap();
            assert!(
                summary["data"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("16×16×{channels}")),
                "{}",
                summary["data"]
            );
            let e = report.evaluation.expect("labelled images are evaluated");
            assert!((0.0..=1.0).contains(&e.trained.knn));
            embed_folder(&report.dir, &root);
        }
    }
}

/// `contrastive embed` of the folder a run trained on: every decodable image once, with its
/// label and file name, in the safetensors file.
fn embed_folder(run_dir: &Path, root: &Path) {
    let out = run_dir.join("features.safetensors");
    let e = run::embed(&run::EmbedRequest {
        checkpoint: run_dir.to_path_buf(),
        data: None,
        data_dir: Some(root.to_path_buf()),
        part: run::Part::All,
        out: out.clone(),
        quiet: true,
    })
    .unwrap();
    assert_eq!((e.images, e.dim, e.labelled, e.named), (30, 8, true, true));
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("features").unwrap().shape(), [30, 8]);
    let labels: Vec<i64> = st
        .tensor("labels")
        .unwrap()
        .data()
        .chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let names: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["names"]).unwrap();
    assert_eq!((labels.len(), names.len()), (30, 30));
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 30, "every image once");
    for (name, label) in names.iter().zip(&labels) {
        assert_eq!(class_of(name), Some(*label as usize), "{name}");
    }
}

#[test]
fn a_flat_folder_trains_and_evaluation_says_it_needs_labels() {
    let flat = dir("flat");
    for (i, pixels) in source(3).iter().chain(&source(4)).enumerate() {
        write(&flat.join(format!("{i:02}.png")), pixels, None);
    }
    let set: ImageSet = folder::read(&flat, &options(8)).unwrap();
    assert_eq!((set.classes, set.len()), (0, 2 * PER_CLASS));
    assert!(set.labels.iter().all(|&l| l == 0));

    let report = train("moco", &flat, &[]).unwrap();
    assert!(report.evaluation.is_none());
    assert!(report.summary.unwrap()["evaluation"].is_null());
    let e = err_of(run::evaluate(&report.dir, None));
    assert!(e.contains("need labelled images"), "{e}");
    let e = err_of(train("moco", &flat, &["--knn-every", "1"]));
    assert!(e.contains("--knn-every 1 needs labelled images"), "{e}");
}

#[test]
fn image_settings_are_checked_up_front() {
    let root = dir("settings");
    let refused = |extra: &[&str], needle: &str| {
        let e = err_of(train("cmc", &root, extra));
        assert!(e.contains(needle), "{extra:?}: {e}");
    };
    refused(&["--image-size", "3"], "--image-size 3");
    refused(&["--channels", "2"], "--channels 2");
    refused(&["--val-fraction", "1"], "--val-fraction 1");
    refused(&["--val-fraction", "0.2", "--val-dir", "x"], "give one");
    let no_dir = Settings::from_words(["cmc", "--data", "images"]).unwrap();
    let e = err_of(run::train(no_dir, &AtomicBool::new(false)));
    assert!(e.contains("--data images needs --data-dir"), "{e}");
    let other = Settings::from_words(["cmc", "--channels", "3"]).unwrap();
    let e = err_of(run::train(other, &AtomicBool::new(false)));
    assert!(e.contains("--channels applies to folders of images"), "{e}");
    let e = err_of(train("cmc", &root, &[]));
    assert!(e.contains("holds no image files"), "{e}");
}
