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

/// Checks the header and returns the dimensions and the payload. Gzip data is decompressed as a
/// stream and never beyond what the header promises (plus one byte to notice trailing data), so
/// neither a lying header nor a gzip bomb makes it allocate more than the data it really holds.
fn parse(raw: &[u8], path: &Path, magic: u32, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut reader: Box<dyn Read + '_> = if raw.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let corrupt = |e: std::io::Error| bad(path, format!("corrupt gzip data: {e}"));
    let header_len = 4 + 4 * rank;
    let mut header = vec![];
    (&mut reader)
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(corrupt)?;
    let short = || {
        bad(
            path,
            format!(
                "truncated: {} bytes, shorter than the IDX header",
                header.len()
            ),
        )
    };
    if header.len() < 4 {
        return Err(short());
    }
    let word = |i: usize| u32::from_be_bytes(header[4 * i..4 * i + 4].try_into().unwrap());
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
    if header.len() < header_len {
        return Err(short());
    }
    let dims: Vec<usize> = (1..=rank).map(|i| word(i) as usize).collect();
    let Some(n) = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
        return Err(bad(path, format!("header dimensions {dims:?} overflow")));
    };
    let mut payload = vec![];
    (&mut reader)
        .take(n as u64 + 1)
        .read_to_end(&mut payload)
        .map_err(corrupt)?;
    if payload.len() < n {
        return Err(bad(
            path,
            format!(
                "truncated: header {dims:?} promises {n} bytes of data, file has {}",
                payload.len()
            ),
        ));
    }
    if payload.len() > n {
        let rest = std::io::copy(&mut reader, &mut std::io::sink()).map_err(corrupt)?;
        return Err(bad(
            path,
            format!(
                "{} unexpected bytes after the {n} promised by header {dims:?}",
                rest + 1
            ),
        ));
    }
    Ok((dims, payload))
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
        names: vec![],
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
