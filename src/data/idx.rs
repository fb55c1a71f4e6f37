//! The IDX format of MNIST and Fashion-MNIST: a big-endian magic (0x00000803 images,
//! 0x00000801 labels), big-endian u32 dimensions, then raw u8 data. Files may be gzip-compressed.

use std::io::Read;
use std::path::Path;

use super::ImageSet;
use crate::error::{Error, Result};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

fn bad(path: &Path, what: impl Into<String>) -> Error {
    Error::Data {
        path: path.into(),
        what: what.into(),
    }
}

/// Gunzips `bytes` when they start with the gzip magic, otherwise returns them unchanged.
pub fn maybe_gunzip(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = vec![];
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Checks the header and returns the dimensions and the payload.
fn parse(raw: &[u8], path: &Path, magic: u32, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let data = maybe_gunzip(raw, path)?;
    let header = 4 + 4 * rank;
    let short = || {
        bad(
            path,
            format!(
                "truncated: {} bytes, shorter than the IDX header",
                data.len()
            ),
        )
    };
    if data.len() < 4 {
        return Err(short());
    }
    let word = |i: usize| u32::from_be_bytes(data[4 * i..4 * i + 4].try_into().unwrap());
    if word(0) != magic {
        let kind = match word(0) {
            IMAGES_MAGIC => " (this is an image file)",
            LABELS_MAGIC => " (this is a label file)",
            _ => "",
        };
        return Err(bad(
            path,
            format!(
                "wrong magic number 0x{:08x}, expected 0x{magic:08x}{kind}",
                word(0)
            ),
        ));
    }
    if data.len() < header {
        return Err(short());
    }
    let dims: Vec<usize> = (1..=rank).map(|i| word(i) as usize).collect();
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let payload = &data[header..];
    match expected {
        Some(n) if n == payload.len() => Ok((dims, payload.to_vec())),
        Some(n) if n > payload.len() => Err(bad(
            path,
            format!(
                "truncated: header {dims:?} promises {n} bytes of data, file has {}",
                payload.len()
            ),
        )),
        Some(n) => Err(bad(
            path,
            format!(
                "{} unexpected bytes after the {n} promised by header {dims:?}",
                payload.len() - n
            ),
        )),
        None => Err(bad(path, format!("header dimensions {dims:?} overflow"))),
    }
}

/// Parses an image file's bytes (raw or gzip) into a label-less set.
pub fn parse_images(raw: &[u8], path: &Path) -> Result<ImageSet> {
    let (dims, images) = parse(raw, path, IMAGES_MAGIC, 3)?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(bad(
            path,
            format!("empty image size {}×{}", dims[1], dims[2]),
        ));
    }
    Ok(ImageSet {
        images,
        labels: vec![0; dims[0]],
        height: dims[1],
        width: dims[2],
        channels: 1,
        classes: 0,
    })
}

pub fn parse_labels(raw: &[u8], path: &Path) -> Result<Vec<u8>> {
    Ok(parse(raw, path, LABELS_MAGIC, 1)?.1)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

pub fn read_images(path: &Path) -> Result<ImageSet> {
    parse_images(&read(path)?, path)
}

pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    parse_labels(&read(path)?, path)
}

/// Encodes images or labels as IDX (tests and tools write small files with it).
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let magic = if dims.len() == 1 {
        LABELS_MAGIC
    } else {
        IMAGES_MAGIC
    };
    let mut out = magic.to_be_bytes().to_vec();
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
