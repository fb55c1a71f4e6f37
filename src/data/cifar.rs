//! The CIFAR-10 binary format: records of 1 label byte followed by 3072 pixel bytes stored as three
//! 32×32 planes (R, G, B). Planes are interleaved into NHWC on load.

use std::path::Path;

use super::ImageSet;
use crate::error::{Error, Result};

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;
const RECORD: usize = 1 + 3 * PLANE;

/// Parses one batch file's bytes, appending to `set`.
pub fn parse_into(raw: &[u8], path: &Path, set: &mut ImageSet) -> Result<()> {
    if raw.is_empty() || !raw.len().is_multiple_of(RECORD) {
        return Err(Error::Data {
            path: path.into(),
            what: format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated or not CIFAR-10 binary)",
                raw.len()
            ),
        });
    }
    for rec in raw.chunks_exact(RECORD) {
        if rec[0] > 9 {
            return Err(Error::Data {
                path: path.into(),
                what: format!("label {} outside 0..=9 (corrupt record)", rec[0]),
            });
        }
        set.labels.push(rec[0]);
        let planes = &rec[1..];
        for i in 0..PLANE {
            set.images
                .extend_from_slice(&[planes[i], planes[PLANE + i], planes[2 * PLANE + i]]);
        }
    }
    Ok(())
}

pub fn read_batches(paths: &[impl AsRef<Path>]) -> Result<ImageSet> {
    let mut set = ImageSet {
        images: vec![],
        labels: vec![],
        height: SIDE,
        width: SIDE,
        channels: 3,
        classes: 10,
        names: vec![],
    };
    for p in paths {
        let p = p.as_ref();
        let raw = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        parse_into(&raw, p, &mut set)?;
    }
    Ok(set)
}

/// Encodes NHWC images as CIFAR-10 binary records (tests write small files with it).
pub fn encode(set: &ImageSet) -> Vec<u8> {
    let mut out = vec![];
    for (i, &label) in set.labels.iter().enumerate() {
        out.push(label);
        let img = &set.images[i * PLANE * 3..(i + 1) * PLANE * 3];
        for c in 0..3 {
            out.extend(img.iter().skip(c).step_by(3));
        }
    }
    out
}
