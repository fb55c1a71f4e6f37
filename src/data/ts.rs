//! The sktime/aeon `.ts` time-series format (as in the UEA/UCR archives): `#` comments, `@key value`
//! header lines, `@data`, then one case per line — dimensions separated by `:`, values within a
//! dimension by `,`, the class label as the last field. Files are dimension-major; sets are stored
//! frame-major. Files may be gzip-compressed.
//!
//! Supported: `@classLabel true …` (the class names, in label order), `@dimensions`,
//! `@univariate`, `@equalLength` (checked when `true`). Rejected with an error: unlabelled or
//! regression files, `@timeStamps true`, missing values (`?`), non-finite values.

use std::path::Path;

use std::io::Read;

use super::SequenceSet;
use crate::error::{Error, Result};

fn bad(path: &Path, what: impl Into<String>) -> Error {
    Error::Data {
        path: path.into(),
        what: what.into(),
    }
}

fn flag(value: Option<&str>) -> Option<bool> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    }
}

/// Parses one case line into frame-major values and the label field.
fn parse_case<'a>(line: &'a str, n: usize, dim: usize, path: &Path) -> Result<(Vec<f32>, &'a str)> {
    let fields: Vec<&str> = line.split(':').collect();
    let (label, dims) = fields
        .split_last()
        .filter(|(_, d)| !d.is_empty())
        .ok_or_else(|| {
            bad(
                path,
                format!("line {n}: expected `values:…:label`, found no `:` separator"),
            )
        })?;
    if dims.len() != dim {
        return Err(bad(
            path,
            format!(
                "line {n}: {} dimensions, expected {dim} (every case needs the same number)",
                dims.len()
            ),
        ));
    }
    let mut columns: Vec<Vec<f32>> = Vec::with_capacity(dim);
    for (d, field) in dims.iter().enumerate() {
        if field.trim().is_empty() {
            return Err(bad(path, format!("line {n}: dimension {} is empty", d + 1)));
        }
        let column = field
            .split(',')
            .map(|v| {
                let v = v.trim();
                match v.parse::<f32>() {
                    Ok(x) if x.is_finite() => Ok(x),
                    Ok(_) => Err(format!("non-finite value '{v}'")),
                    Err(_) if v == "?" => Err("missing value '?' (not supported)".to_string()),
                    Err(_) => Err(format!("'{v}' is not a number")),
                }
            })
            .collect::<std::result::Result<Vec<f32>, String>>()
            .map_err(|e| bad(path, format!("line {n}, dimension {}: {e}", d + 1)))?;
        if let Some(first) = columns.first() {
            if first.len() != column.len() {
                return Err(bad(
                    path,
                    format!(
                        "line {n}: dimension {} has {} values but dimension 1 has {} \
                         (all dimensions of one case must have the same length)",
                        d + 1,
                        column.len(),
                        first.len()
                    ),
                ));
            }
        }
        columns.push(column);
    }
    let frames = columns[0].len();
    let mut seq = Vec::with_capacity(frames * dim);
    for t in 0..frames {
        seq.extend(columns.iter().map(|c| c[t]));
    }
    Ok((seq, label.trim()))
}

/// Parses the text of a `.ts` file; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<SequenceSet> {
    let mut dim: Option<usize> = None;
    let mut univariate = false;
    let mut equal_length = false;
    let mut classes: Option<Vec<String>> = None;
    let mut in_data = false;
    let (mut seqs, mut labels) = (vec![], vec![]);
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if in_data {
            let classes = classes.as_deref().unwrap_or_default();
            let d = *dim.get_or_insert_with(|| line.split(':').count().saturating_sub(1));
            let (seq, label) = parse_case(line, n, d, path)?;
            let l = classes.iter().position(|c| c == label).ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "line {n}: unknown class label '{label}' (@classLabel declares: {})",
                        classes.join(" ")
                    ),
                )
            })?;
            seqs.push(seq);
            labels.push(l as u32);
            continue;
        }
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or_default().to_ascii_lowercase();
        let value = words.next();
        match key.as_str() {
            "@data" => {
                if classes.is_none() {
                    return Err(bad(
                        path,
                        format!("line {n}: @data before any `@classLabel true …` line (unlabelled files are not supported)"),
                    ));
                }
                if univariate && dim.is_none() {
                    dim = Some(1);
                }
                in_data = true;
            }
            "@dimensions" => match value.and_then(|v| v.parse::<usize>().ok()) {
                Some(d) if d > 0 => dim = Some(d),
                _ => {
                    return Err(bad(
                        path,
                        format!(
                            "line {n}: @dimensions needs a positive integer, got '{}'",
                            value.unwrap_or_default()
                        ),
                    ))
                }
            },
            "@univariate" => univariate = flag(value) == Some(true),
            "@equallength" => equal_length = flag(value) == Some(true),
            "@timestamps" if flag(value) == Some(true) => {
                return Err(bad(
                    path,
                    format!("line {n}: @timeStamps true is not supported"),
                ))
            }
            "@targetlabel" if flag(value) == Some(true) => {
                return Err(bad(
                    path,
                    format!("line {n}: regression targets (@targetLabel true) are not supported, only class labels"),
                ))
            }
            "@classlabel" => {
                let names: Vec<String> = words.map(str::to_string).collect();
                if flag(value) != Some(true) || names.is_empty() {
                    return Err(bad(
                        path,
                        format!("line {n}: expected `@classLabel true <name> <name> …` (unlabelled files are not supported)"),
                    ));
                }
                if let Some(dup) = names.iter().enumerate().find_map(|(j, c)| {
                    names[..j].contains(c).then_some(c)
                }) {
                    return Err(bad(
                        path,
                        format!("line {n}: class '{dup}' is declared twice"),
                    ));
                }
                classes = Some(names);
            }
            k if k.starts_with('@') => {}
            _ => {
                return Err(bad(
                    path,
                    format!(
                        "line {n}: expected a `@` header line or `#` comment before @data, found '{}'",
                        line.chars().take(40).collect::<String>()
                    ),
                ))
            }
        }
    }
    if !in_data {
        return Err(bad(path, "no @data line: not a .ts file, or truncated"));
    }
    let set = SequenceSet {
        dim: dim.unwrap_or(1),
        seqs,
        labels,
        classes: classes.unwrap_or_default(),
        sample_rate: None,
    };
    if set.is_empty() {
        return Err(bad(path, "no cases after @data"));
    }
    if equal_length && set.min_frames() != set.max_frames() {
        return Err(bad(
            path,
            format!(
                "@equalLength true, but cases have {} to {} frames",
                set.min_frames(),
                set.max_frames()
            ),
        ));
    }
    Ok(set)
}

/// The most text a `.ts` file may decompress to: far above any real one, and a bound on what a
/// gzip bomb can make us allocate.
const MAX_TEXT: u64 = 1 << 30;

/// The bytes of a raw or gzip-compressed file, decompressed as a stream up to [`MAX_TEXT`].
fn gunzip(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes.to_vec());
    }
    let mut out = vec![];
    flate2::read::MultiGzDecoder::new(bytes)
        .take(MAX_TEXT + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(path, format!("corrupt gzip data: {e}")))?;
    if out.len() as u64 > MAX_TEXT {
        return Err(bad(path, "decompresses to more than 1 GiB: not a .ts file"));
    }
    Ok(out)
}

/// Parses a `.ts` file's bytes, raw or gzip.
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<SequenceSet> {
    let data = gunzip(bytes, path)?;
    let text = std::str::from_utf8(&data)
        .map_err(|e| bad(path, format!("not UTF-8 text ({e}): not a .ts file")))?;
    parse(text, path)
}

/// Reads a `.ts` or `.ts.gz` file.
pub fn read(path: &Path) -> Result<SequenceSet> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_bytes(&bytes, path)
}
