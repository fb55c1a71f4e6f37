//! RIFF/WAVE audio: 16-bit PCM only (plain or WAVE_FORMAT_EXTENSIBLE with the PCM subformat), any
//! number of channels — averaged to mono, since the sequence models here take one channel — and
//! any chunks besides `fmt ` and `data` skipped (LIST, fact, cue, odd sizes with their pad byte).
//! Other encodings (8/24/32-bit PCM, float, A-law, µ-law, ADPCM, MP3…) are rejected by name.
//!
//! A folder of class subfolders becomes a [`SequenceSet`] with [`read_dir`].

use std::path::{Path, PathBuf};

use super::SequenceSet;
use crate::error::{Error, Result};

fn bad(path: &Path, what: impl Into<String>) -> Error {
    Error::Data {
        path: path.into(),
        what: what.into(),
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

const FORMAT_PCM: u16 = 1;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;
/// The KSDATAFORMAT_SUBTYPE GUID after its leading 16-bit format tag.
const SUBTYPE_GUID_TAIL: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];
const CONVERT: &str = "convert it first, e.g. `sox in.wav -b 16 -e signed-integer out.wav`";

fn format_name(tag: u16) -> String {
    match tag {
        2 => "Microsoft ADPCM".into(),
        3 => "IEEE float".into(),
        6 => "A-law".into(),
        7 => "µ-law".into(),
        0x11 => "IMA ADPCM".into(),
        0x31 => "GSM 6.10".into(),
        0x55 => "MPEG layer 3".into(),
        t => format!("format tag 0x{t:04x}"),
    }
}

/// The `fmt ` chunk's facts that decoding needs: (channels, sample rate).
fn parse_fmt(body: &[u8], path: &Path) -> Result<(usize, u32)> {
    if body.len() < 16 {
        return Err(bad(
            path,
            format!(
                "fmt chunk is {} bytes, shorter than the 16 of PCM",
                body.len()
            ),
        ));
    }
    let mut tag = u16_at(body, 0);
    let (channels, rate) = (u16_at(body, 2) as usize, u32_at(body, 4));
    let (block_align, bits) = (u16_at(body, 12) as usize, u16_at(body, 14));
    if tag == FORMAT_EXTENSIBLE {
        if body.len() < 40 {
            return Err(bad(
                path,
                format!(
                    "WAVE_FORMAT_EXTENSIBLE fmt chunk is {} bytes, expected 40",
                    body.len()
                ),
            ));
        }
        if body[26..40] != SUBTYPE_GUID_TAIL {
            return Err(bad(
                path,
                format!("WAVE_FORMAT_EXTENSIBLE with an unknown subformat GUID; {CONVERT}"),
            ));
        }
        tag = u16_at(body, 24);
    }
    if tag != FORMAT_PCM {
        return Err(bad(
            path,
            format!(
                "unsupported encoding {}: only 16-bit PCM is read; {CONVERT}",
                format_name(tag)
            ),
        ));
    }
    if bits != 16 {
        return Err(bad(
            path,
            format!("{bits}-bit PCM: only 16-bit PCM is read; {CONVERT}"),
        ));
    }
    if channels == 0 || rate == 0 {
        return Err(bad(
            path,
            format!("fmt chunk declares {channels} channels at {rate} Hz"),
        ));
    }
    if block_align != 2 * channels {
        return Err(bad(
            path,
            format!("block align {block_align} does not match {channels} channels of 16 bits"),
        ));
    }
    Ok((channels, rate))
}

/// Decodes a WAV file's bytes into (sample rate, mono samples in [-1, 1)); `path` names it in errors.
/// Channels are averaged; a trailing partial frame is dropped.
pub fn parse(bytes: &[u8], path: &Path) -> Result<(u32, Vec<f32>)> {
    if bytes.len() < 12 || &bytes[8..12] != b"WAVE" || &bytes[0..4] != b"RIFF" {
        let what = match bytes.get(0..4) {
            Some(b"RIFX") => "big-endian RIFX is not supported".into(),
            Some(b"RF64") => "RF64 (64-bit WAV) is not supported".into(),
            _ => format!(
                "not a WAV file: no RIFF/WAVE header ({} bytes)",
                bytes.len()
            ),
        };
        return Err(bad(path, what));
    }
    let (mut fmt, mut data) = (None, None);
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32_at(bytes, pos + 4) as usize;
        let start = pos + 8;
        let avail = bytes.len() - start;
        if size > avail {
            // Trailing junk after the audio is harmless; a short fmt or data chunk is truncation.
            if data.is_some() && fmt.is_some() {
                break;
            }
            return Err(bad(
                path,
                format!(
                    "truncated: chunk {:?} at byte {pos} promises {size} bytes, {avail} remain",
                    String::from_utf8_lossy(id)
                ),
            ));
        }
        let body = &bytes[start..start + size];
        match id {
            b"fmt " if fmt.is_none() => fmt = Some(parse_fmt(body, path)?),
            b"data" if data.is_none() => data = Some(body),
            _ => {}
        }
        // Chunks are word-aligned: an odd-sized chunk is followed by one pad byte.
        pos = start + size + (size & 1);
    }
    let (channels, rate) = fmt.ok_or_else(|| bad(path, "no fmt chunk"))?;
    let data = data.ok_or_else(|| bad(path, "no data chunk"))?;
    let scale = 1.0 / (32768.0 * channels as f32);
    let samples = data
        .chunks_exact(2 * channels)
        .map(|frame| {
            let sum: f32 = frame
                .chunks_exact(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]) as f32)
                .sum();
            sum * scale
        })
        .collect();
    Ok((rate, samples))
}

/// Reads and decodes one WAV file.
pub fn read(path: &Path) -> Result<(u32, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, path)
}

/// Brings `samples` from `from` Hz to `to` Hz when `from` is an integer multiple of `to`, by
/// averaging each block of `from / to` samples (a box low-pass) and keeping one value per block.
/// A trailing partial block is dropped.
pub fn resample(samples: Vec<f32>, from: u32, to: u32, path: &Path) -> Result<Vec<f32>> {
    if from == to {
        return Ok(samples);
    }
    if to == 0 || from < to || !from.is_multiple_of(to) {
        return Err(bad(
            path,
            format!(
                "sample rate {from} Hz is not an integer multiple of {to} Hz; resample it first, \
                 e.g. `sox in.wav -r {to} out.wav`"
            ),
        ));
    }
    let k = (from / to) as usize;
    Ok(samples
        .chunks_exact(k)
        .map(|b| b.iter().sum::<f32>() / k as f32)
        .collect())
}

/// `.wav` files below `dir`, recursively; hidden entries (`.name`, e.g. macOS `._x.wav`) and
/// symlinked folders are skipped.
fn collect_wavs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        let is_wav = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
        if kind.is_dir() {
            collect_wavs(&path, out)?;
        } else if is_wav && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a folder with one subfolder per class (sorted names = label order), every `.wav` below
/// each subfolder one sequence (dim 1) at `rate` Hz, in sorted path order. Files with no audio at
/// `rate` (an empty data chunk, or fewer samples than one decimation block) are skipped; a class
/// left with none is an error.
pub fn read_dir(dir: &Path, rate: u32) -> Result<SequenceSet> {
    if rate == 0 {
        return Err(Error::Config("WAV sample rate must be positive".into()));
    }
    let mut class_dirs = vec![];
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            class_dirs.push((name, entry.path()));
        }
    }
    class_dirs.sort();
    if class_dirs.is_empty() {
        return Err(bad(
            dir,
            "no class subfolders: expected one subfolder of .wav files per class",
        ));
    }
    let mut set = SequenceSet {
        dim: 1,
        seqs: vec![],
        labels: vec![],
        classes: vec![],
        sample_rate: Some(rate),
    };
    for (label, (name, class_dir)) in class_dirs.into_iter().enumerate() {
        let mut files = vec![];
        collect_wavs(&class_dir, &mut files)?;
        files.sort();
        for f in files {
            let (from, samples) = read(&f)?;
            let samples = resample(samples, from, rate, &f)?;
            // Header-only files exist in real collections (Asterisk's ru/is.wav): nothing to
            // learn from, and a zero-frame sequence would break every windowing downstream.
            if !samples.is_empty() {
                set.seqs.push(samples);
                set.labels.push(label as u32);
            }
        }
        if set.labels.last() != Some(&(label as u32)) {
            return Err(bad(&class_dir, "class folder contains no audio"));
        }
        set.classes.push(name);
    }
    Ok(set)
}
