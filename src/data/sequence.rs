//! Sequence datasets for sequence models (Contrastive Predictive Coding): variable-length
//! multichannel series with one class label each, and the two sources this crate knows —
//! JapaneseVowels (embedded, `.ts` format) and folders of WAV files (one subfolder per class).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{ts, wav};
use crate::error::{Error, Result};

/// Variable-length multichannel sequences with class labels; frame-major f32 (`seq[t*dim + d]`).
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceSet {
    /// Channels per frame.
    pub dim: usize,
    /// One entry per sequence, `frames * dim` values each.
    pub seqs: Vec<Vec<f32>>,
    /// Index into `classes`, one per sequence.
    pub labels: Vec<u32>,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Frames per second for audio; `None` for series without a time base.
    pub sample_rate: Option<u32>,
}

impl SequenceSet {
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Frames (time steps) of sequence `i`.
    pub fn frames(&self, i: usize) -> usize {
        self.seqs[i].len() / self.dim.max(1)
    }

    /// Frames of the shortest sequence (0 for an empty set).
    pub fn min_frames(&self) -> usize {
        (0..self.len()).map(|i| self.frames(i)).min().unwrap_or(0)
    }

    /// Frames of the longest sequence (0 for an empty set).
    pub fn max_frames(&self) -> usize {
        (0..self.len()).map(|i| self.frames(i)).max().unwrap_or(0)
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The sequences at `indices` (in that order) as a new set with the same classes.
    pub fn subset(&self, indices: &[usize]) -> SequenceSet {
        SequenceSet {
            dim: self.dim,
            seqs: indices.iter().map(|&i| self.seqs[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
            sample_rate: self.sample_rate,
        }
    }
}

/// A pre-training set and a held-out set for evaluation.
#[derive(Clone, Debug)]
pub struct SequenceSplit {
    pub train: SequenceSet,
    pub test: SequenceSet,
}

/// Which sequence dataset to load; the CLI names are `japanese-vowels` and `wav`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SequenceData {
    /// UCI Japanese Vowels (9 speakers, 12 LPC cepstra per frame, 7–29 frames): embedded when no
    /// --data-dir is given, otherwise DIR/japanese-vowels/JapaneseVowels_{TRAIN,TEST}.ts.
    JapaneseVowels,
    /// 16-bit PCM WAV files at 8 kHz (or an integer multiple), one subfolder per class, from
    /// DIR/speech/ (scripts/fetch-data.sh DIR speech) or DIR itself; every 5th file of each class
    /// is held out.
    Wav,
}

impl SequenceData {
    pub const ALL: [SequenceData; 2] = [SequenceData::JapaneseVowels, SequenceData::Wav];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            SequenceData::JapaneseVowels => "japanese-vowels",
            SequenceData::Wav => "wav",
        }
    }
}

impl fmt::Display for SequenceData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SequenceData {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown sequence dataset '{s}' (known: japanese-vowels, wav)"
                ))
            })
    }
}

/// The rate WAV data is brought to: the Asterisk prompts of `scripts/fetch-data.sh speech` are
/// 8 kHz telephone audio, and files at 16, 24, 32, 48 kHz… are decimated to it.
pub const WAV_RATE: u32 = 8000;

/// Every `WAV_TEST_EVERY`-th file of each class (in sorted path order) is held out.
pub const WAV_TEST_EVERY: usize = 5;

const JV_TRAIN: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/japanese-vowels/JapaneseVowels_TRAIN.ts.gz"
));
const JV_TEST: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/japanese-vowels/JapaneseVowels_TEST.ts.gz"
));

/// The embedded JapaneseVowels files (gzip bytes), for checksum tests.
pub fn embedded_files() -> [(&'static str, &'static [u8]); 2] {
    [
        ("JapaneseVowels_TRAIN.ts.gz", JV_TRAIN),
        ("JapaneseVowels_TEST.ts.gz", JV_TEST),
    ]
}

fn embedded_vowels() -> Result<SequenceSplit> {
    let [(train_name, train), (test_name, test)] = embedded_files();
    let parse = |name: &str, bytes: &[u8]| {
        let path = PathBuf::from("<embedded>").join(name);
        ts::parse_bytes(bytes, &path)
    };
    Ok(SequenceSplit {
        train: parse(train_name, train)?,
        test: parse(test_name, test)?,
    })
}

/// `dir/sub` when it exists, else `dir` (so --data-dir may name the download root or the dataset).
fn subdir(dir: &Path, sub: &str) -> PathBuf {
    let d = dir.join(sub);
    if d.is_dir() {
        d
    } else {
        dir.to_path_buf()
    }
}

fn vowels_from(dir: &Path) -> Result<SequenceSplit> {
    let dir = subdir(dir, "japanese-vowels");
    let find = |part: &str| {
        let stem = format!("JapaneseVowels_{part}.ts");
        [format!("{stem}.gz"), stem.clone()]
            .into_iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::Data {
                path: dir.join(&stem),
                what: "not found (neither .ts nor .ts.gz); run `scripts/fetch-data.sh data/downloads japanese-vowels` \
                       or leave out --data-dir to use the embedded copy"
                    .into(),
            })
    };
    let train = ts::read(&find("TRAIN")?)?;
    let test_path = find("TEST")?;
    let test = ts::read(&test_path)?;
    if (train.dim, &train.classes) != (test.dim, &test.classes) {
        return Err(Error::Data {
            path: test_path,
            what: format!(
                "does not match the training file: dim {} classes {:?} vs dim {} classes {:?}",
                test.dim, test.classes, train.dim, train.classes
            ),
        });
    }
    Ok(SequenceSplit { train, test })
}

/// Splits by file: within each class, in the set's order, every `every`-th sequence (the 5th,
/// 10th, … for 5) goes to test. Whole files go to one side, so no window of a file is in both.
pub fn split_every(set: &SequenceSet, every: usize) -> SequenceSplit {
    let mut seen = vec![0usize; set.num_classes()];
    let (mut train, mut test) = (vec![], vec![]);
    for (i, &l) in set.labels.iter().enumerate() {
        let k = &mut seen[l as usize];
        *k += 1;
        if every > 0 && k.is_multiple_of(every) {
            test.push(i);
        } else {
            train.push(i);
        }
    }
    SequenceSplit {
        train: set.subset(&train),
        test: set.subset(&test),
    }
}

/// Loads a sequence dataset: JapaneseVowels from `dir` or the embedded copy; WAV folders from
/// `dir/speech/` (or `dir` itself when it has no `speech` subfolder).
pub fn load(kind: SequenceData, dir: Option<&Path>) -> Result<SequenceSplit> {
    match (kind, dir) {
        (SequenceData::JapaneseVowels, None) => embedded_vowels(),
        (SequenceData::JapaneseVowels, Some(dir)) => vowels_from(dir),
        (SequenceData::Wav, None) => Err(Error::Config(
            "wav needs audio files: run `scripts/fetch-data.sh data/downloads speech` and pass \
             --data-dir data/downloads (or a folder with one subfolder of .wav files per class)"
                .into(),
        )),
        (SequenceData::Wav, Some(dir)) => {
            let set = wav::read_dir(&subdir(dir, "speech"), WAV_RATE)?;
            Ok(split_every(&set, WAV_TEST_EVERY))
        }
    }
}
