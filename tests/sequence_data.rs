use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use contrastive::data::sequence::{self, SequenceData};
use contrastive::data::{ts, wav, SequenceSet};
use rand::{Rng, SeedableRng};
use sha2::Digest;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-seq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn err_text<T: std::fmt::Debug>(r: contrastive::Result<T>) -> String {
    r.expect_err("bad input accepted").to_string()
}

// ---------------------------------------------------------------- .ts

const TS_OK: &str = "\
# a comment
@problemName Tiny
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true b a
@data
1,2,3:4,5,6:a
# comments may follow @data too

-1.5:2.5e1:b
0.25,0.5:-0.75,1:a
";

fn ts_path() -> PathBuf {
    PathBuf::from("tiny_TRAIN.ts")
}

#[test]
fn ts_parses_variable_lengths_and_labels_frame_major() {
    let set = ts::parse(TS_OK, &ts_path()).unwrap();
    assert_eq!(set.dim, 2);
    assert_eq!(set.classes, ["b", "a"]);
    assert_eq!(set.labels, [1, 0, 1]);
    assert_eq!(set.sample_rate, None);
    assert_eq!(set.seqs[0], [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_eq!(set.seqs[1], [-1.5, 25.0]);
    assert_eq!(set.seqs[2], [0.25, -0.75, 0.5, 1.0]);
    assert_eq!((set.len(), set.num_classes()), (3, 2));
    assert_eq!((set.frames(0), set.frames(1), set.frames(2)), (3, 1, 2));
    assert_eq!((set.min_frames(), set.max_frames()), (1, 3));
    assert!(!set.is_empty());
    let sub = set.subset(&[2, 0]);
    assert_eq!(sub.labels, [1, 1]);
    assert_eq!(sub.seqs[0], set.seqs[2]);
}

#[test]
fn ts_dimensions_inferred_and_univariate_and_crlf() {
    let text = "@univariate true\r\n@classLabel true x\r\n@data\r\n1,2,3:x\r\n4:x\r\n";
    let set = ts::parse(text, &ts_path()).unwrap();
    assert_eq!(
        (set.dim, set.seqs.clone()),
        (1, vec![vec![1.0, 2.0, 3.0], vec![4.0]])
    );
    let text = "@classLabel true x\n@data\n1:2:3:x\n";
    assert_eq!(ts::parse(text, &ts_path()).unwrap().dim, 3);
}

#[test]
fn ts_reads_plain_and_gzip_files() {
    let dir = tmpdir("ts");
    let want = ts::parse(TS_OK, &ts_path()).unwrap();
    std::fs::write(dir.join("a.ts"), TS_OK).unwrap();
    std::fs::write(dir.join("a.ts.gz"), gz(TS_OK.as_bytes())).unwrap();
    assert_eq!(ts::read(&dir.join("a.ts")).unwrap(), want);
    assert_eq!(ts::read(&dir.join("a.ts.gz")).unwrap(), want);
    let e = err_text(ts::read(&dir.join("missing.ts")));
    assert!(e.contains("missing.ts"), "{e}");
}

#[test]
fn ts_errors_name_the_file_line_and_problem() {
    let header = "@dimensions 2\n@classLabel true b a\n@data\n";
    let cases: &[(&str, &str)] = &[
        ("1,2:3,4:a\n1,2:b\n", "line 5: 1 dimensions, expected 2"),
        ("1,2:3,4:5:a\n", "line 4: 3 dimensions, expected 2"),
        (
            "1,2:3:a\n",
            "line 4: dimension 2 has 1 values but dimension 1 has 2",
        ),
        ("1,2:3,x:a\n", "line 4, dimension 2: 'x' is not a number"),
        ("1,,2:3,4,5:a\n", "line 4, dimension 1: '' is not a number"),
        ("1,2::a\n", "line 4: dimension 2 is empty"),
        (
            "1,NaN:3,4:a\n",
            "line 4, dimension 1: non-finite value 'NaN'",
        ),
        (
            "1,2:inf,4:a\n",
            "line 4, dimension 2: non-finite value 'inf'",
        ),
        ("1,2:1e40,4:a\n", "non-finite value '1e40'"),
        ("1,?:3,4:a\n", "missing value '?'"),
        ("1,2:3,4:c\n", "line 4: unknown class label 'c'"),
        ("1,2,3,4\n", "line 4: expected `values:…:label`"),
        ("", "no cases after @data"),
        ("\n# only a comment\n", "no cases after @data"),
    ];
    for (body, want) in cases {
        let e = err_text(ts::parse(&format!("{header}{body}"), &ts_path()));
        assert!(e.contains(want), "{body:?}: got `{e}`, want `{want}`");
        assert!(e.starts_with("tiny_TRAIN.ts: "), "{e}");
    }
    let whole: &[(&str, &str)] = &[
        (
            "@classLabel true a\n1:a\n",
            "line 2: expected a `@` header line",
        ),
        ("@classLabel true a\n", "no @data line"),
        ("", "no @data line"),
        (
            "@dimensions 1\n@data\n1:a\n",
            "line 2: @data before any `@classLabel true",
        ),
        (
            "@classLabel false\n@data\n1\n",
            "line 1: expected `@classLabel true",
        ),
        (
            "@classLabel true a a\n@data\n",
            "class 'a' is declared twice",
        ),
        (
            "@dimensions zero\n",
            "line 1: @dimensions needs a positive integer, got 'zero'",
        ),
        ("@dimensions 0\n", "@dimensions needs a positive integer"),
        ("@timeStamps true\n", "@timeStamps true is not supported"),
        ("@targetLabel true\n", "regression targets"),
        (
            "@equalLength true\n@classLabel true a\n@data\n1,2:a\n1:a\n",
            "@equalLength true, but cases have 1 to 2 frames",
        ),
    ];
    for (text, want) in whole {
        let e = err_text(ts::parse(text, &ts_path()));
        assert!(e.contains(want), "{text:?}: got `{e}`, want `{want}`");
    }
    let e = err_text(ts::parse_bytes(&[b'@', 0xff, 0xfe], &ts_path()));
    assert!(e.contains("not UTF-8"), "{e}");
    let e = err_text(ts::parse_bytes(&[0x1f, 0x8b, 1, 2, 3], &ts_path()));
    assert!(e.contains("corrupt gzip"), "{e}");
}

// ---------------------------------------------------------------- embedded JapaneseVowels

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_vowels(split: &sequence::SequenceSplit) {
    let (train, test) = (&split.train, &split.test);
    assert_eq!((train.len(), test.len()), (270, 370));
    for s in [train, test] {
        assert_eq!(s.dim, 12);
        assert_eq!(s.classes, ["1", "2", "3", "4", "5", "6", "7", "8", "9"]);
        assert_eq!(s.num_classes(), 9);
        assert_eq!(s.sample_rate, None);
        assert!(s.seqs.iter().all(|q| q.len() % 12 == 0));
    }
    let min = train.min_frames().min(test.min_frames());
    let max = train.max_frames().max(test.max_frames());
    assert_eq!((min, max), (7, 29));
    // The training file has 30 utterances per speaker, in speaker order.
    let mut counts = [0; 9];
    for &l in &train.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [30; 9]);
    assert!(train.labels.windows(2).all(|w| w[0] <= w[1]));
    // First value of the first case, as printed in the file.
    assert_eq!(train.seqs[0][0], 1.860936);
    assert_eq!(train.seqs[0][1], -0.207383);
}

#[test]
fn embedded_japanese_vowels_is_the_aeon_text_and_has_the_published_shape() {
    let want = [
        "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd",
        "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462",
    ];
    for ((name, bytes), want) in sequence::embedded_files().iter().zip(want) {
        assert_eq!(sha256_hex(&gunzip(bytes)), want, "{name}");
    }
    let split = sequence::load(SequenceData::JapaneseVowels, None).unwrap();
    check_vowels(&split);

    // The same files from a --data-dir (download root or the dataset folder itself), raw and gzip.
    let root = tmpdir("jv");
    let jv = root.join("japanese-vowels");
    std::fs::create_dir_all(&jv).unwrap();
    for (name, bytes) in sequence::embedded_files() {
        let raw = name.trim_end_matches(".gz");
        if raw.contains("TRAIN") {
            std::fs::write(jv.join(raw), gunzip(bytes)).unwrap();
        } else {
            std::fs::write(jv.join(name), bytes).unwrap();
        }
    }
    for dir in [&root, &jv] {
        let from_dir = sequence::load(SequenceData::JapaneseVowels, Some(dir)).unwrap();
        assert_eq!(from_dir.train, split.train);
        assert_eq!(from_dir.test, split.test);
    }
    let e = err_text(sequence::load(
        SequenceData::JapaneseVowels,
        Some(&tmpdir("jv-empty")),
    ));
    assert!(
        e.contains("JapaneseVowels_TRAIN.ts") && e.contains("fetch-data.sh"),
        "{e}"
    );
}

#[test]
fn dataset_names_round_trip() {
    for k in SequenceData::ALL {
        assert_eq!(k.to_string().parse::<SequenceData>().unwrap(), k);
    }
    assert_eq!(
        "japanese-vowels".parse::<SequenceData>().unwrap(),
        SequenceData::JapaneseVowels
    );
    assert_eq!("wav".parse::<SequenceData>().unwrap(), SequenceData::Wav);
    let e = err_text("mnist".parse::<SequenceData>());
    assert!(e.contains("japanese-vowels, wav"), "{e}");
}

// ---------------------------------------------------------------- WAV

fn riff(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut body = b"WAVE".to_vec();
    for (id, data) in chunks {
        body.extend_from_slice(*id);
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        if data.len() % 2 == 1 {
            body.push(0);
        }
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

fn fmt_chunk(tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
    let align = channels * bits.div_ceil(8);
    let mut f = vec![];
    f.extend_from_slice(&tag.to_le_bytes());
    f.extend_from_slice(&channels.to_le_bytes());
    f.extend_from_slice(&rate.to_le_bytes());
    f.extend_from_slice(&(rate * align as u32).to_le_bytes());
    f.extend_from_slice(&align.to_le_bytes());
    f.extend_from_slice(&bits.to_le_bytes());
    f
}

fn fmt_extensible(channels: u16, rate: u32, bits: u16, subformat: u16) -> Vec<u8> {
    let mut f = fmt_chunk(0xFFFE, channels, rate, bits);
    f.extend_from_slice(&22u16.to_le_bytes());
    f.extend_from_slice(&bits.to_le_bytes());
    f.extend_from_slice(&4u32.to_le_bytes());
    f.extend_from_slice(&subformat.to_le_bytes());
    f.extend_from_slice(&[
        0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
    ]);
    f
}

fn pcm(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn wav_mono(rate: u32, samples: &[i16]) -> Vec<u8> {
    riff(&[
        (b"fmt ", fmt_chunk(1, 1, rate, 16)),
        (b"data", pcm(samples)),
    ])
}

const SAMPLES: [i16; 5] = [0, 16384, -16384, i16::MIN, i16::MAX];
const DECODED: [f32; 5] = [0.0, 0.5, -0.5, -1.0, 32767.0 / 32768.0];

fn wav_path() -> PathBuf {
    PathBuf::from("prompt.wav")
}

#[test]
fn wav_plain_pcm_and_extra_chunks_and_extensible() {
    let p = wav_path();
    let plain = wav_mono(8000, &SAMPLES);
    assert_eq!(wav::parse(&plain, &p).unwrap(), (8000, DECODED.to_vec()));

    let list = b"INFOISFT\x05\x00\x00\x00sox!\x00\x00".to_vec();
    let with_chunks = riff(&[
        (b"LIST", list.clone()),
        (b"fmt ", fmt_chunk(1, 1, 16000, 16)),
        (b"odd ", vec![1, 2, 3]),
        (b"fact", 5u32.to_le_bytes().to_vec()),
        (b"data", pcm(&SAMPLES)),
        (b"LIST", list),
    ]);
    assert_eq!(
        wav::parse(&with_chunks, &p).unwrap(),
        (16000, DECODED.to_vec())
    );

    // Odd data chunk: the stray byte is a partial frame and the pad byte is skipped.
    let mut odd = pcm(&SAMPLES);
    odd.push(7);
    let odd = riff(&[(b"fmt ", fmt_chunk(1, 1, 8000, 16)), (b"data", odd)]);
    assert_eq!(wav::parse(&odd, &p).unwrap().1, DECODED.to_vec());

    let ext = riff(&[
        (b"fmt ", fmt_extensible(1, 8000, 16, 1)),
        (b"data", pcm(&SAMPLES)),
    ]);
    assert_eq!(wav::parse(&ext, &p).unwrap(), (8000, DECODED.to_vec()));

    // Stereo is averaged to mono.
    let stereo = riff(&[
        (b"fmt ", fmt_chunk(1, 2, 8000, 16)),
        (b"data", pcm(&[16384, 0, -32768, -32768, 8192, 16384])),
    ]);
    assert_eq!(wav::parse(&stereo, &p).unwrap().1, [0.25, -1.0, 0.375]);

    // A trailing truncated chunk after the audio is ignored; an empty data chunk is no audio.
    let mut trailing = plain.clone();
    trailing.extend_from_slice(b"junk\xff\xff\x00\x00ab");
    assert_eq!(wav::parse(&trailing, &p).unwrap().1, DECODED.to_vec());
    assert_eq!(
        wav::parse(&wav_mono(8000, &[]), &p).unwrap().1,
        Vec::<f32>::new()
    );
}

#[test]
fn wav_rejects_other_formats_and_broken_files_by_name() {
    let p = wav_path();
    let data = |chunk: Vec<u8>| riff(&[(b"fmt ", chunk), (b"data", vec![0; 8])]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (data(fmt_chunk(1, 1, 8000, 8)), "8-bit PCM: only 16-bit PCM"),
        (data(fmt_chunk(1, 1, 8000, 24)), "24-bit PCM"),
        (
            data(fmt_chunk(3, 1, 8000, 32)),
            "unsupported encoding IEEE float",
        ),
        (data(fmt_chunk(7, 1, 8000, 8)), "unsupported encoding µ-law"),
        (data(fmt_chunk(0x55, 1, 8000, 0)), "MPEG layer 3"),
        (data(fmt_chunk(0x1234, 1, 8000, 16)), "format tag 0x1234"),
        (data(fmt_extensible(1, 8000, 32, 3)), "IEEE float"),
        (
            data(fmt_extensible(1, 8000, 16, 1)[..30].to_vec()),
            "expected 40",
        ),
        (data(fmt_chunk(1, 0, 8000, 16)), "0 channels"),
        (data(fmt_chunk(1, 1, 0, 16)), "at 0 Hz"),
        (
            data(fmt_chunk(1, 1, 8000, 16)[..14].to_vec()),
            "fmt chunk is 14 bytes",
        ),
        (riff(&[(b"data", vec![0; 8])]), "no fmt chunk"),
        (
            riff(&[(b"fmt ", fmt_chunk(1, 1, 8000, 16))]),
            "no data chunk",
        ),
        (b"RIFX\0\0\0\0WAVE".to_vec(), "RIFX"),
        (b"OggS and more bytes".to_vec(), "not a WAV file"),
        (vec![], "not a WAV file"),
    ];
    for (bytes, want) in cases {
        let e = err_text(wav::parse(&bytes, &p));
        assert!(e.contains(want), "got `{e}`, want `{want}`");
        assert!(e.starts_with("prompt.wav: "), "{e}");
    }
    let mut bad_align = fmt_chunk(1, 2, 8000, 16);
    bad_align[12] = 2;
    let e = err_text(wav::parse(&data(bad_align), &p));
    assert!(e.contains("block align 2 does not match 2 channels"), "{e}");
    // A data chunk that claims more than the file holds (a truncated download).
    let mut truncated = wav_mono(8000, &SAMPLES);
    truncated.truncate(truncated.len() - 3);
    let e = err_text(wav::parse(&truncated, &p));
    assert!(e.contains("truncated: chunk \"data\""), "{e}");
}

#[test]
fn wav_resampling_by_integer_factors_only() {
    let p = wav_path();
    let s = vec![1.0, 3.0, -2.0, 0.0, 5.0];
    assert_eq!(
        wav::resample(s.clone(), 16000, 8000, &p).unwrap(),
        [2.0, -1.0]
    );
    assert_eq!(
        wav::resample(s.clone(), 24000, 8000, &p).unwrap(),
        [2.0 / 3.0]
    );
    assert_eq!(wav::resample(s.clone(), 8000, 8000, &p).unwrap(), s);
    for from in [11025, 4000, 12000] {
        let e = err_text(wav::resample(s.clone(), from, 8000, &p));
        assert!(
            e.contains(&format!("{from} Hz is not an integer multiple of 8000 Hz")),
            "{e}"
        );
    }
}

/// A file whose samples all equal `id`, so every sequence can be traced back to its file.
fn tagged(rate: u32, id: i16, len: usize) -> Vec<u8> {
    wav_mono(rate, &vec![id; len])
}

fn id_of(seq: &[f32]) -> i16 {
    (seq[0] * 32768.0).round() as i16
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn wav_read_dir_labels_order_resampling_and_split() {
    let root = tmpdir("wav");
    let speech = root.join("speech");
    // Class "zz" sorts after "aa"; nested folders with the same file names must all be kept.
    write(&speech.join("zz/b.wav"), &tagged(8000, 101, 10));
    write(&speech.join("zz/a.wav"), &tagged(16000, 100, 20));
    for (i, sub) in ["digits", "letters"].iter().enumerate() {
        for j in 0..3 {
            let id = 10 * (i as i16 + 1) + j;
            write(
                &speech.join(format!("aa/{sub}/{j}.wav")),
                &tagged(8000, id, 4 + j as usize),
            );
        }
    }
    write(&speech.join("aa/Z.WAV"), &tagged(8000, 30, 3));
    write(&speech.join("aa/readme.txt"), b"not audio");
    write(&speech.join("aa/._0.wav"), b"AppleDouble junk");
    write(&speech.join("loose.wav"), b"ignored: not in a class folder");
    write(&speech.join(".done"), b"layout 2");

    let set = wav::read_dir(&speech, 8000).unwrap();
    assert_eq!(set.classes, ["aa", "zz"]);
    assert_eq!((set.dim, set.sample_rate), (1, Some(8000)));
    let ids: Vec<i16> = set.seqs.iter().map(|s| id_of(s)).collect();
    assert_eq!(ids, [30, 10, 11, 12, 20, 21, 22, 100, 101]);
    assert_eq!(set.labels, [0, 0, 0, 0, 0, 0, 0, 1, 1]);
    let frames: Vec<usize> = (0..set.len()).map(|i| set.frames(i)).collect();
    assert_eq!(frames, [3, 4, 5, 6, 4, 5, 6, 10, 10]);

    // Every 5th file of each class is held out, whole.
    let split = sequence::load(SequenceData::Wav, Some(&root)).unwrap();
    let ids = |s: &SequenceSet| s.seqs.iter().map(|q| id_of(q)).collect::<Vec<_>>();
    assert_eq!(ids(&split.test), [20]);
    assert_eq!(ids(&split.train), [30, 10, 11, 12, 21, 22, 100, 101]);
    assert_eq!(split.train.classes, split.test.classes);
    assert_eq!(split.test.sample_rate, Some(8000));
    // The speech folder itself works as --data-dir too.
    assert_eq!(
        ids(&sequence::load(SequenceData::Wav, Some(&speech))
            .unwrap()
            .test),
        [20]
    );

    let e = err_text(sequence::load(SequenceData::Wav, None));
    assert!(
        e.contains("scripts/fetch-data.sh data/downloads speech") && e.contains("--data-dir"),
        "{e}"
    );

    // Problems name the offending file or folder.
    write(&speech.join("zz/c.wav"), &tagged(11025, 1, 10));
    let e = err_text(wav::read_dir(&speech, 8000));
    assert!(e.contains("zz/c.wav") && e.contains("11025 Hz"), "{e}");
    // Files without audio are skipped, but not a whole class of them.
    write(&speech.join("zz/c.wav"), &tagged(16000, 1, 1));
    write(&speech.join("aa/digits/empty.wav"), &tagged(8000, 1, 0));
    assert_eq!(wav::read_dir(&speech, 8000).unwrap(), set);
    std::fs::remove_file(speech.join("aa/digits/empty.wav")).unwrap();
    write(&speech.join("silent/a.wav"), &tagged(8000, 1, 0));
    let e = err_text(wav::read_dir(&speech, 8000));
    assert!(e.contains("silent") && e.contains("no audio"), "{e}");
    std::fs::remove_dir_all(speech.join("silent")).unwrap();
    write(
        &speech.join("zz/c.wav"),
        &riff(&[(b"fmt ", fmt_chunk(1, 1, 8000, 8))]),
    );
    let e = err_text(wav::read_dir(&speech, 8000));
    assert!(e.contains("zz/c.wav") && e.contains("8-bit"), "{e}");
    std::fs::remove_file(speech.join("zz/c.wav")).unwrap();
    std::fs::create_dir_all(speech.join("empty")).unwrap();
    let e = err_text(wav::read_dir(&speech, 8000));
    assert!(e.contains("empty") && e.contains("no audio"), "{e}");
    let e = err_text(wav::read_dir(&tmpdir("wav-none"), 8000));
    assert!(e.contains("no class subfolders"), "{e}");
}

#[test]
fn split_every_keeps_class_names_and_balances_per_class() {
    let set = SequenceSet {
        dim: 1,
        seqs: (0..12).map(|i| vec![i as f32]).collect(),
        labels: vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0],
        classes: vec!["x".into(), "y".into()],
        sample_rate: Some(8000),
    };
    let split = sequence::split_every(&set, 3);
    let vals = |s: &SequenceSet| s.seqs.iter().map(|q| q[0] as usize).collect::<Vec<_>>();
    // Class x is at 0,2,4,6,8,10,11 (3rd: 4, 6th: 10); class y at 1,3,5,7,9 (3rd: 5).
    assert_eq!(vals(&split.test), [4, 5, 10]);
    assert_eq!(vals(&split.train), [0, 1, 2, 3, 6, 7, 8, 9, 11]);
    assert_eq!(split.test.classes, set.classes);
}

// ---------------------------------------------------------------- robustness

fn mutate(rng: &mut impl Rng, base: &[u8], alphabet: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..5) {
            0 => b.truncate(rng.random_range(0..=b.len())),
            1 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            2 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = alphabet[rng.random_range(0..alphabet.len())];
            }
            3 => {
                let i = rng.random_range(0..=b.len());
                b.insert(i, alphabet[rng.random_range(0..alphabet.len())]);
            }
            // A lying 32-bit size at any offset (RIFF, chunk sizes) or a huge number in the text.
            _ if b.len() >= 4 => {
                let i = rng.random_range(0..=b.len() - 4);
                let v: u32 = if rng.random() {
                    u32::MAX - rng.random_range(0..3)
                } else {
                    rng.random()
                };
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    b
}

#[test]
fn mutated_files_never_panic_or_over_allocate() {
    let start = std::time::Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let p = Path::new("fuzz");

    let mut ok = 0;
    for _ in 0..5000 {
        let bytes = mutate(&mut rng, TS_OK.as_bytes(), b"0123456789:,.-@#\n eE?ab");
        if let Ok(set) = ts::parse_bytes(&bytes, p) {
            let values: usize = set.seqs.iter().map(Vec::len).sum();
            assert!(
                values <= bytes.len(),
                "{} values from {} bytes",
                values,
                bytes.len()
            );
            assert!(set.labels.iter().all(|&l| (l as usize) < set.num_classes()));
            assert!(set
                .seqs
                .iter()
                .all(|s| s.len() % set.dim == 0 && !s.is_empty()));
            ok += 1;
        }
    }
    assert!(
        ok > 100,
        "only {ok} mutated .ts files parsed: the mutations are too destructive"
    );

    let base = riff(&[
        (b"LIST", b"INFOabc".to_vec()),
        (b"fmt ", fmt_extensible(2, 16000, 16, 1)),
        (b"data", pcm(&SAMPLES.repeat(4))),
    ]);
    let mut ok = 0;
    for _ in 0..5000 {
        let bytes = mutate(&mut rng, &base, b"RIFFWAVEfmt data\x00\x01\x10\xfe\xff");
        if let Ok((rate, samples)) = wav::parse(&bytes, p) {
            assert!(samples.len() <= bytes.len() / 2);
            assert!(samples.iter().all(|s| (-1.0..1.0).contains(s)));
            // Whatever the header claims, resampling stays bounded by the decoded length.
            if let Ok(r) = wav::resample(samples.clone(), rate, 8000, p) {
                assert!(r.len() <= samples.len());
            }
            ok += 1;
        }
    }
    assert!(ok > 100, "only {ok} mutated WAV files parsed");
    assert!(
        start.elapsed().as_secs_f64() < 5.0,
        "fuzz loop took {:?}",
        start.elapsed()
    );
}
