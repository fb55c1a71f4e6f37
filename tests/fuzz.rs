//! Fuzz targets for everything that reads user files: IDX (raw and gzip), CIFAR-10 binary and
//! checkpoints. Seeded random mutations of valid files — truncations, byte flips, header and
//! dimension edits, huge dimensions, spliced and pure garbage — must each give `Ok` or an error
//! that names the file: never a panic, and never an allocation out of proportion to the input
//! (a counting allocator checks every case: a header that claims 2³²×2³² bytes must be refused
//! before anything is allocated for it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::AtomicBool;

mod common;
use common::*;

use contrastive::checkpoint::{self, Checkpoint};
use contrastive::data::{self, cifar, idx, ImageSet};
use contrastive::data::{Augment, GpuImages};
use contrastive::methods::{Examples, Method, Moco, MocoConfig};
use contrastive::train::{self, Batches, Checkpointing, TrainConfig};
use contrastive::{Arena, Error, Gpu};
use rand::{Rng, SeedableRng};

/// The system allocator, recording the largest single allocation made by the current thread.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.with(|c| c.set(c.get().max(l.size())));
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        LARGEST.with(|c| c.set(c.get().max(size)));
        System.realloc(p, l, size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` on one fuzzed input: it must not panic, and no single allocation may exceed what
/// the input could honestly decode to (gzip expands at most ~1032:1; 2048:1 and 1 MiB of slack).
fn case<T>(what: &str, n: usize, input: &[u8], f: impl FnOnce() -> T) -> T {
    LARGEST.with(|c| c.set(0));
    let out = catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| panic!("{what} case {n}: panicked on {} bytes", input.len()));
    let largest = LARGEST.with(|c| c.get());
    let bound = input.len() * 2048 + (1 << 20);
    assert!(
        largest <= bound,
        "{what} case {n}: allocated {largest} bytes at once for a {}-byte input",
        input.len()
    );
    out
}

/// A big-endian u32 that is interesting as a dimension or a length.
fn nasty_u32(rng: &mut impl Rng) -> u32 {
    match rng.random_range(0..8) {
        0 => 0,
        1 => 1,
        2 => u32::MAX,
        3 => 1 << 31,
        4 => 1 << 16,
        5 => rng.random_range(0..64),
        _ => rng.random(),
    }
}

/// One random mutation of `valid`; `header` is the length of its header (edited more often).
fn mutate(rng: &mut impl Rng, valid: &[u8], header: usize) -> Vec<u8> {
    let mut v = valid.to_vec();
    let len = v.len().max(1);
    match rng.random_range(0..9) {
        0 => v.truncate(rng.random_range(0..len)),
        1 => {
            for _ in 0..rng.random_range(1..8) {
                if !v.is_empty() {
                    let i = rng.random_range(0..v.len());
                    v[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        2 | 3 => {
            // A header word replaced (dimensions, magic, lengths).
            let words = header.min(v.len()) / 4;
            if words > 0 {
                let i = 4 * rng.random_range(0..words);
                v[i..i + 4].copy_from_slice(&nasty_u32(rng).to_be_bytes());
            }
        }
        4 => {
            let extra: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            v.extend(extra);
        }
        5 => {
            let i = rng.random_range(0..len.min(v.len() + 1));
            let garbage: Vec<u8> = (0..rng.random_range(1..32)).map(|_| rng.random()).collect();
            v.splice(i..i, garbage);
        }
        6 => {
            v = (0..rng.random_range(0..256))
                .map(|_| rng.random())
                .collect()
        }
        7 => {
            // A stretch cut out of the middle.
            if v.len() > 2 {
                let a = rng.random_range(0..v.len() - 1);
                let b = rng.random_range(a..v.len());
                v.drain(a..b);
            }
        }
        _ => {
            // Two mutations.
            v = mutate(rng, &v, header);
            v = mutate(rng, &v, header);
        }
    }
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn names_the_file(e: &Error, path: &Path) {
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Data { .. } | Error::Checkpoint { .. })
            && msg.contains(&path.display().to_string()),
        "unclear error: {msg}"
    );
}

#[test]
fn idx_reader_survives_fuzzed_files() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let path = Path::new("fuzzed-idx3-ubyte");
    for n in 0..6000 {
        let (count, h, w) = (
            rng.random_range(0..6),
            rng.random_range(1..6),
            rng.random_range(1..6),
        );
        let pixels: Vec<u8> = (0..count * h * w).map(|_| rng.random()).collect();
        let labels: Vec<u8> = (0..count).map(|_| rng.random_range(0..10)).collect();
        let (valid, header) = if n % 2 == 0 {
            (idx::encode(&[count, h, w], &pixels), 16)
        } else {
            (idx::encode(&[count], &labels), 8)
        };
        let mut input = mutate(&mut rng, &valid, header);
        if n % 3 == 0 {
            // Compressed: the mutation may hit the gzip stream or the data inside it.
            input = if rng.random() {
                gzip(&input)
            } else {
                mutate(&mut rng, &gzip(&valid), 10)
            };
        }
        let images = case("idx images", n, &input, || idx::parse_images(&input, path));
        let labels = case("idx labels", n, &input, || idx::parse_labels(&input, path));
        match images {
            Ok(set) => assert_eq!(set.images.len(), set.len() * set.image_len()),
            Err(e) => names_the_file(&e, path),
        }
        if let Err(e) = labels {
            names_the_file(&e, path);
        }
    }
}

#[test]
fn idx_headers_with_huge_dimensions_are_refused_before_allocating() {
    let path = Path::new("huge-idx3-ubyte");
    let huge = [
        [u32::MAX, u32::MAX, u32::MAX],
        [1 << 31, 1 << 31, 1],
        [65536, 65536, 65536],
        [u32::MAX, 1, 1],
    ];
    for (n, dims) in huge.iter().enumerate() {
        let mut bytes = 0x0000_0803u32.to_be_bytes().to_vec();
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&[7; 100]);
        for input in [bytes.clone(), gzip(&bytes)] {
            let e = case("huge idx", n, &input, || idx::parse_images(&input, path))
                .expect_err("refused");
            names_the_file(&e, path);
            let msg = e.to_string();
            assert!(
                msg.contains("overflow") || msg.contains("truncated"),
                "{msg}"
            );
        }
    }
    // A gzip bomb: 64 MiB of zeros behind a header that promises 4 images of 2×2.
    let mut bomb = idx::encode(&[4, 2, 2], &[0; 16]);
    bomb.extend(std::iter::repeat_n(0u8, 64 << 20));
    let input = gzip(&bomb);
    let e = case("gzip bomb", 0, &input, || idx::parse_images(&input, path)).expect_err("refused");
    assert!(e.to_string().contains("unexpected bytes"), "{e}");
    let largest = LARGEST.with(|c| c.get());
    assert!(
        largest < 1 << 20,
        "decompressed beyond the header's promise: {largest} bytes at once"
    );
}

#[test]
fn cifar_reader_survives_fuzzed_files() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let path = Path::new("fuzzed_batch.bin");
    const RECORD: usize = 3073;
    for n in 0..3000 {
        let count = rng.random_range(1..4);
        let set = ImageSet {
            images: (0..count * 3072).map(|_| rng.random()).collect(),
            labels: (0..count).map(|_| rng.random_range(0..10)).collect(),
            height: 32,
            width: 32,
            channels: 3,
            classes: 10,
            names: vec![],
        };
        let valid = cifar::encode(&set);
        // The "header" of a CIFAR record is its label byte: edit record starts more often.
        let mut input = mutate(&mut rng, &valid, 4);
        if rng.random_range(0..4) == 0 {
            let r = rng.random_range(0..count) * RECORD;
            if r < input.len() {
                input[r] = rng.random();
            }
        }
        let mut out = ImageSet {
            images: vec![],
            labels: vec![],
            ..set
        };
        match case("cifar", n, &input, || {
            cifar::parse_into(&input, path, &mut out)
        }) {
            Ok(()) => {
                assert_eq!(out.images.len(), out.len() * 3072);
                assert!(out.labels.iter().all(|&l| l < 10));
            }
            Err(e) => names_the_file(&e, path),
        }
    }
}

/// A real checkpoint of a tiny MoCo run, and the method to load fuzzed ones into.
fn real_checkpoint(gpu: &Gpu, name: &str) -> (Vec<u8>, Moco) {
    let mut split = data::embedded().unwrap();
    split.train = split.train.take(64);
    split.test = split.test.take(16);
    let mut arena = Arena::for_gpu("data", gpu);
    let images = GpuImages::upload(gpu, &mut arena, &split.train).unwrap();
    let enc = tiny_encoder();
    let opt = sgd(0.05);
    let config = MocoConfig {
        queue: 16,
        dim: 8,
        split_bn: 2,
        ..MocoConfig::default()
    };
    let mut moco = Moco::new(gpu, config, &enc, 8, &opt, 1).unwrap();
    let dir = std::env::temp_dir().join(format!("contrastive-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = TrainConfig {
        batch_size: 8,
        steps: 1,
        seed: 0,
        augment: Augment::contrastive(),
        knn_every: 0,
        monitor_images: 0,
        progress: false,
    };
    let ckpt = Checkpointing {
        dir: dir.clone(),
        every: 1,
        keep: 1,
        meta: Default::default(),
    };
    let stop = AtomicBool::new(false);
    train::train(
        gpu,
        &mut moco,
        Examples::Images(&images),
        None,
        &cfg,
        Some(&ckpt),
        None,
        &stop,
        |_| Ok(()),
    )
    .unwrap();
    let bytes = std::fs::read(checkpoint::list(&dir).pop().unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (bytes, moco)
}

/// Loads a parsed checkpoint the way `--resume` does: the method's state, then the trainer's.
fn load_all(gpu: &Gpu, moco: &mut Moco, ck: &Checkpoint) -> contrastive::Result<()> {
    moco.load(gpu, ck)?;
    train::load_trainer_state(ck, &mut Batches::new(64, 8, 0)).map(|_| ())
}

#[test]
fn checkpoint_reader_survives_fuzzed_files() {
    let gpu = gpu();
    let (valid, mut moco) = real_checkpoint(&gpu, "bytes");
    let path = Path::new("fuzzed.safetensors");
    let ck = Checkpoint::from_bytes(&valid, path).unwrap();
    load_all(&gpu, &mut moco, &ck).unwrap();
    let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut parsed = 0;
    for n in 0..3000 {
        let input = if n % 2 == 0 {
            mutate(&mut rng, &valid, header)
        } else {
            edit_json_numbers(&mut rng, &valid, header)
        };
        let result = case("checkpoint", n, &input, || {
            Checkpoint::from_bytes(&input, path).and_then(|ck| load_all(&gpu, &mut moco, &ck))
        });
        match result {
            Ok(()) => parsed += 1,
            Err(e) => names_the_file(&e, path),
        }
    }
    // The data section is most of the file: many mutations there still load.
    assert!(parsed > 25, "only {parsed} fuzzed checkpoints loaded");
}

/// The valid file with numbers of its JSON header (shapes, offsets, metadata) replaced by
/// nasty ones; the 8-byte header length is kept consistent.
fn edit_json_numbers(rng: &mut impl Rng, valid: &[u8], header: usize) -> Vec<u8> {
    let json = String::from_utf8_lossy(&valid[8..header]).to_string();
    let mut out = String::new();
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() && rng.random_range(0..12) == 0 {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
            let nasty = match rng.random_range(0..6) {
                0 => u64::MAX.to_string(),
                1 => (1u64 << 32).to_string(),
                2 => "0".into(),
                3 => "99999999999999999999999".into(),
                4 => "-1".into(),
                _ => rng.random_range(0..5000u32).to_string(),
            };
            out.push_str(&nasty);
        } else {
            out.push(c);
        }
    }
    let mut bytes = (out.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(out.as_bytes());
    bytes.extend_from_slice(&valid[header..]);
    bytes
}

#[test]
fn checkpoints_with_corrupt_values_are_refused_when_loaded() {
    let gpu = gpu();
    let (valid, mut moco) = real_checkpoint(&gpu, "values");
    let path = Path::new("edited.safetensors");
    let base = Checkpoint::from_bytes(&valid, path).unwrap();
    let keys: Vec<String> = base.meta.keys().cloned().collect();
    let names: Vec<String> = base.names().map(str::to_string).collect();
    let values = [
        "",
        "-1",
        "18446744073709551615",
        "4294967295",
        "2147483647",
        "1e9",
        "NaN",
        "ÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿ",
        "00000000000000000000000000000000000000000000000000000000000000é:0:0",
        "0000000000000000000000000000000000000000000000000000000000000000:0:99999999999999999999",
        "{\"not\": \"json\"",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    for n in 0..600 {
        let mut ck = base.clone();
        match rng.random_range(0..4) {
            0 | 1 => {
                let key = &keys[rng.random_range(0..keys.len())];
                let v = values[rng.random_range(0..values.len())];
                ck.meta.insert(key.clone(), v.to_string());
            }
            2 => {
                let name = &names[rng.random_range(0..names.len())];
                let len = rng.random_range(0..40);
                ck.put_f32(name.clone(), &[len], vec![f32::NAN; len]);
            }
            _ => {
                let name = &names[rng.random_range(0..names.len())];
                let len = rng.random_range(0..70);
                ck.put_u32(name.clone(), &[len], (0..len as u32).rev().collect());
            }
        }
        let result = case("edited checkpoint", n, &valid, || {
            load_all(&gpu, &mut moco, &ck)
        });
        if let Err(e) = result {
            names_the_file(&e, path);
        }
    }
}
