use std::io::Write;
use std::path::Path;

use contrastive::data::{self, cifar, idx, Dataset, ImageSet};
use sha2::Digest;

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write_mnist_like(dir: &Path, prefix: &str, n: usize, compress: bool) -> (Vec<u8>, Vec<u8>) {
    let images: Vec<u8> = (0..n * 28 * 28).map(|i| (i * 7 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let (ib, lb) = (
        idx::encode(&[n, 28, 28], &images),
        idx::encode(&[n], &labels),
    );
    let (ib, lb, ext) = if compress {
        (gz(&ib), gz(&lb), ".gz")
    } else {
        (ib, lb, "")
    };
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), ib).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), lb).unwrap();
    (images, labels)
}

#[test]
fn embedded_fashion_mnist_is_byte_identical_to_the_official_files() {
    let want = [
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    ];
    for ((name, bytes), want) in data::embedded_files().iter().zip(want) {
        let got: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, want, "{name}");
    }
    let split = data::embedded().unwrap();
    assert_eq!((split.train.len(), split.test.len()), (8000, 2000));
    assert_eq!(
        (split.train.height, split.train.width, split.train.channels),
        (28, 28, 1)
    );
    assert_eq!(split.train.classes, 10);
    // The official test set has exactly 1000 images per class.
    let mut counts = [0; 10];
    for &l in split.train.labels.iter().chain(&split.test.labels) {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [1000; 10]);
}

#[test]
fn idx_raw_and_gzip_round_trip() {
    for compress in [false, true] {
        let dir = tmpdir(&format!("idx{compress}"));
        let (images, labels) = write_mnist_like(&dir, "train", 5, compress);
        write_mnist_like(&dir, "t10k", 3, compress);
        let split = data::load(Dataset::Mnist, Some(&dir)).unwrap();
        assert_eq!(split.train.images, images);
        assert_eq!(split.train.labels, labels);
        assert_eq!(split.test.len(), 3);
    }
}

fn err_of(dir: &Path) -> String {
    match data::load(Dataset::Mnist, Some(dir)) {
        Ok(_) => panic!("bad data accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_corrupt_and_wrong_magic_files_are_named_errors() {
    let dir = tmpdir("bad");
    write_mnist_like(&dir, "train", 4, false);
    write_mnist_like(&dir, "t10k", 4, false);
    let images = dir.join("train-images-idx3-ubyte");
    let full = std::fs::read(&images).unwrap();

    std::fs::write(&images, &full[..full.len() - 10]).unwrap();
    let e = err_of(&dir);
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("truncated"),
        "{e}"
    );

    std::fs::write(&images, &full[..6]).unwrap();
    assert!(err_of(&dir).contains("shorter than the IDX header"));

    let labels = std::fs::read(dir.join("train-labels-idx1-ubyte")).unwrap();
    std::fs::write(&images, &labels).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("wrong magic") && e.contains("label file"), "{e}");

    std::fs::write(&images, [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    assert!(err_of(&dir).contains("corrupt gzip"));

    std::fs::write(&images, &full).unwrap();
    write_mnist_like(&dir, "train", 4, false);
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx::encode(&[3], &[1, 2, 3]),
    )
    .unwrap();
    assert!(err_of(&dir).contains("do not belong together"));

    write_mnist_like(&dir, "train", 4, false);
    std::fs::remove_file(dir.join("t10k-images-idx3-ubyte")).unwrap();
    assert!(err_of(&dir).contains("not found"));
}

#[test]
fn cifar_binary_round_trip_and_errors() {
    let dir = tmpdir("cifar");
    let set = ImageSet {
        images: (0..4 * 32 * 32 * 3).map(|i| (i * 13 % 251) as u8).collect(),
        labels: vec![3, 0, 9, 1],
        height: 32,
        width: 32,
        channels: 3,
        classes: 10,
        names: vec![],
    };
    let bytes = cifar::encode(&set);
    assert_eq!(bytes.len(), 4 * 3073);
    // Record layout: label, then the whole red plane: pixel 1's red is byte 2.
    assert_eq!(bytes[2], set.images[3]);
    for i in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), &bytes).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), &bytes[..3073]).unwrap();
    let split = data::load(Dataset::Cifar10, Some(&dir)).unwrap();
    assert_eq!(split.train.len(), 20);
    assert_eq!(&split.train.images[..set.images.len()], &set.images[..]);
    assert_eq!(split.test.labels, vec![3]);

    std::fs::write(dir.join("test_batch.bin"), &bytes[..3000]).unwrap();
    let e = data::load(Dataset::Cifar10, Some(&dir))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("test_batch.bin") && e.contains("whole number"),
        "{e}"
    );
    let mut bad = bytes.clone();
    bad[0] = 11;
    std::fs::write(dir.join("test_batch.bin"), &bad).unwrap();
    let e = data::load(Dataset::Cifar10, Some(&dir))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("label 11"), "{e}");
}

#[test]
fn non_embedded_datasets_need_a_directory() {
    let e = data::load(Dataset::Mnist, None).err().unwrap().to_string();
    assert!(e.contains("--data-dir"), "{e}");
}
