//! Folders of image files (`--data images`) in the ImageFolder convention: each first-level
//! sub-folder is a class (classes sorted by name, files found at any depth below it); a folder
//! without sub-folders holds unlabelled images (`classes == 0`).
//!
//! Files are decoded in parallel on the CPU straight into the set's byte buffer, one slot per
//! image: the shorter side is resized to the asked size (a triangle filter, which averages when it
//! shrinks) and the centre square kept, as grayscale or RGB. Files that do not decode as images are
//! skipped with a count (refused with `strict`). Held-out images come from a second folder with
//! the same class names, or are every `1/fraction`-th file of each class by sorted name: a
//! choice made from the names alone, so it is the same on every run.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{ImageSet, Split};
use crate::error::{Error, Result};

/// How a folder of images is read.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderOptions {
    /// Side of the square every image is resized and centre-cropped to.
    pub image_size: usize,
    /// 1 (grayscale) or 3 (RGB); `None`: 3 if any image has colour, else 1.
    pub channels: Option<usize>,
    /// Refuse a file that does not decode instead of skipping it.
    pub strict: bool,
    /// Held-out images: a folder with the same class folders. Without it, `val_fraction` of each
    /// class is held out.
    pub val_dir: Option<PathBuf>,
    pub val_fraction: f64,
    /// A progress bar (plain lines without a terminal) while decoding.
    pub progress: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            image_size: 32,
            channels: None,
            strict: false,
            val_dir: None,
            val_fraction: 0.1,
            progress: false,
        }
    }
}

/// Files skipped or refused at most are named in a message.
const NAMED: usize = 5;

/// One image file: its name relative to the data directory, and its label.
struct Entry {
    name: String,
    path: PathBuf,
    label: u8,
}

/// A folder's image files and class names.
struct Listing {
    classes: Vec<String>,
    entries: Vec<Entry>,
}

fn bad(path: &Path, what: impl Into<String>) -> Error {
    Error::Data {
        path: path.into(),
        what: what.into(),
    }
}

/// The entries of `dir` that are not hidden, sorted by name: (name, path, is a directory).
fn children(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let read = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = vec![];
    for entry in read {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symbolic links, as a user pointing at a folder of links expects.
        let is_dir = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .is_dir();
        out.push((name, path, is_dir));
    }
    out.sort();
    Ok(out)
}

/// Every file below `dir` (depth first, sorted), named relative to the data directory by
/// `prefix/…`.
fn files_below(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    for (name, path, is_dir) in children(dir)? {
        let name = format!("{prefix}/{name}");
        if is_dir {
            files_below(&path, &name, out)?;
        } else {
            out.push((name, path));
        }
    }
    Ok(())
}

/// The image files of `dir`. `known`: the training data's class names, which a held-out folder
/// must use (the same name gets the same label); `None` for the training folder itself.
fn list(dir: &Path, known: Option<&[String]>) -> Result<Listing> {
    if !dir.is_dir() {
        return Err(bad(
            dir,
            "not a directory (expected a folder of images, one sub-folder per class)",
        ));
    }
    let all = children(dir)?;
    let folders: Vec<_> = all.iter().filter(|c| c.2).collect();
    if folders.is_empty() {
        if known.is_some_and(|k| !k.is_empty()) {
            return Err(bad(
                dir,
                "has no class folders, but the training data has: give held-out images in the same class folders",
            ));
        }
        let entries = all
            .into_iter()
            .map(|(name, path, _)| Entry {
                name,
                path,
                label: 0,
            })
            .collect();
        return Ok(Listing {
            classes: vec![],
            entries,
        });
    }
    if known.is_some_and(|k| k.is_empty()) {
        return Err(bad(
            dir,
            "has class folders, but the training images are a flat folder without labels: put the training images in class folders too",
        ));
    }
    let loose = all.len() - folders.len();
    if loose > 0 {
        eprintln!(
            "{}: {loose} file(s) beside the class folders ignored (with class folders, images belong in them)",
            dir.display()
        );
    }
    let mut classes: Vec<String> = known.map_or(vec![], <[String]>::to_vec);
    let mut entries = vec![];
    for (class, path, _) in folders {
        let mut files = vec![];
        files_below(path, class, &mut files)?;
        if files.is_empty() {
            eprintln!(
                "{}: class folder '{class}' holds no files: skipped",
                dir.display()
            );
            continue;
        }
        let label = match classes.iter().position(|c| c == class) {
            Some(i) => i,
            None if known.is_some() => {
                return Err(bad(
                    path,
                    format!(
                        "class '{class}' is not one of the training data's classes ({})",
                        classes.join(", ")
                    ),
                ))
            }
            None => {
                classes.push(class.clone());
                classes.len() - 1
            }
        };
        let label = u8::try_from(label).map_err(|_| {
            bad(
                dir,
                "more than 256 class folders: the labels and probes handle at most 256 classes",
            )
        })?;
        entries.extend(
            files
                .into_iter()
                .map(|(name, path)| Entry { name, path, label }),
        );
    }
    Ok(Listing { classes, entries })
}

/// Decoding progress: a bar on a terminal, a plain line every few seconds otherwise (a log
/// keeps no redraws), nothing when not enabled.
struct Progress {
    bar: indicatif::ProgressBar,
    plain: Option<Mutex<Instant>>,
    done: AtomicUsize,
    total: usize,
}

impl Progress {
    fn new(total: usize, enabled: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = if enabled && terminal {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} images decoded  [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template"),
            );
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Progress {
            bar,
            plain: (enabled && !terminal).then(|| Mutex::new(Instant::now())),
            done: AtomicUsize::new(0),
            total,
        }
    }

    fn inc(&self) {
        self.bar.inc(1);
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(said) = &self.plain {
            let mut said = said.lock().expect("progress lock");
            if said.elapsed() >= Duration::from_secs(5) || done == self.total {
                *said = Instant::now();
                eprintln!("decoded {done}/{} images", self.total);
            }
        }
    }
}

/// Decodes `path` into `slot` (`size`×`size`×`channels` bytes): the shorter side resized to
/// `size`, the centre square kept. Returns whether the file's pixels have colour.
fn decode_into(path: &Path, size: u32, channels: usize, slot: &mut [u8]) -> Result<bool, String> {
    let image = image::io::Reader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    let colour = image.color().has_color();
    let (w, h) = (image.width(), image.height());
    let side = w.min(h);
    if side == 0 {
        return Err("the image is empty".into());
    }
    let square = image.crop_imm((w - side) / 2, (h - side) / 2, side, side);
    let filter = image::imageops::FilterType::Triangle;
    if channels == 1 {
        let small = image::imageops::resize(&square.to_luma8(), size, size, filter);
        slot.copy_from_slice(small.as_raw());
    } else {
        let small = image::imageops::resize(&square.to_rgb8(), size, size, filter);
        slot.copy_from_slice(small.as_raw());
    }
    Ok(colour)
}

/// Files that failed to decode: (index, reason).
type Failures = Vec<(usize, String)>;

/// The images of `entries`, decoded in parallel into one buffer, with the files that failed:
/// `(index, reason)`. Panics inside a decoder count as failures, so that no file stops the run.
fn decode(
    entries: &[Entry],
    size: usize,
    channels: usize,
    progress: &Progress,
    dir: &Path,
) -> Result<(Vec<u8>, bool, Failures)> {
    let d = size * size * channels;
    let mut images = vec![];
    images
        .try_reserve_exact(entries.len() * d)
        .map_err(|_| {
            bad(
                dir,
                format!(
                    "{} images of {size}×{size}×{channels} bytes do not fit in the host's memory: lower --image-size",
                    entries.len()
                ),
            )
        })?;
    images.resize(entries.len() * d, 0u8);
    let slots = Mutex::new(images.chunks_mut(d.max(1)).enumerate());
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(entries.len().max(1));
    let results: Vec<(usize, Result<bool, String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = vec![];
                    loop {
                        let next = slots.lock().expect("slot lock").next();
                        let Some((i, slot)) = next else { break };
                        let path = &entries[i].path;
                        let decoded =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                decode_into(path, size as u32, channels, slot)
                            }))
                            .unwrap_or_else(|_| Err("the decoder failed on it".into()));
                        out.push((i, decoded));
                        progress.inc();
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("decoding threads catch their panics"))
            .collect()
    });
    let mut colour = false;
    let mut failed = vec![];
    for (i, r) in results {
        match r {
            Ok(c) => colour |= c,
            Err(e) => failed.push((i, e)),
        }
    }
    failed.sort();
    Ok((images, colour, failed))
}

/// A set of `entries` decoded, without the files that failed (dropped in place).
struct Decoded {
    set: ImageSet,
    colour: bool,
    skipped: Vec<(String, String)>,
}

fn decode_set(
    entries: Vec<Entry>,
    classes: usize,
    options: &FolderOptions,
    channels: usize,
    progress: &Progress,
    dir: &Path,
) -> Result<Decoded> {
    let size = options.image_size;
    let (mut images, colour, failed) = decode(&entries, size, channels, progress, dir)?;
    if options.strict {
        if let Some((i, why)) = failed.first() {
            return Err(bad(
                &entries[*i].path,
                format!("not a readable image ({why}); without --strict such files are skipped"),
            ));
        }
    }
    let d = size * size * channels;
    let mut keep = 0;
    let (mut labels, mut names, mut skipped) = (vec![], vec![], vec![]);
    let mut failed = failed.into_iter().peekable();
    for (i, e) in entries.into_iter().enumerate() {
        if let Some((_, why)) = failed.next_if(|f| f.0 == i) {
            skipped.push((e.name, why));
            continue;
        }
        images.copy_within(i * d..(i + 1) * d, keep * d);
        keep += 1;
        labels.push(e.label);
        names.push(e.name);
    }
    images.truncate(keep * d);
    Ok(Decoded {
        set: ImageSet {
            images,
            labels,
            height: size,
            width: size,
            channels,
            classes,
            names,
        },
        colour,
        skipped,
    })
}

/// Images without colour, decoded as RGB (three equal channels), kept as one channel in place.
fn to_grayscale(set: &mut ImageSet) {
    let pixels = set.images.len() / 3;
    for i in 0..pixels {
        set.images[i] = set.images[3 * i];
    }
    set.images.truncate(pixels);
    set.images.shrink_to_fit();
    set.channels = 1;
}

fn report_skipped(dir: &Path, skipped: &[(String, String)], total: usize) {
    if skipped.is_empty() {
        return;
    }
    eprintln!(
        "{}: skipped {} of {total} files that are not readable images (--strict refuses them):",
        dir.display(),
        skipped.len()
    );
    for (name, why) in skipped.iter().take(NAMED) {
        eprintln!("  {name}: {why}");
    }
    if skipped.len() > NAMED {
        eprintln!("  … and {} more", skipped.len() - NAMED);
    }
}

/// Decodes the listed sets (training first) with one progress bar, choosing the channels when
/// `options` leaves them open: 3 if any image has colour, else 1.
fn decode_sets(
    parts: Vec<(Vec<Entry>, &Path)>,
    classes: usize,
    options: &FolderOptions,
) -> Result<Vec<ImageSet>> {
    let total = parts.iter().map(|p| p.0.len()).sum();
    let progress = Progress::new(total, options.progress);
    let channels = options.channels.unwrap_or(3);
    let mut sets = vec![];
    let mut colour = false;
    for (entries, dir) in parts {
        let listed = entries.len();
        let decoded = decode_set(entries, classes, options, channels, &progress, dir)?;
        report_skipped(dir, &decoded.skipped, listed);
        if decoded.set.is_empty() {
            return Err(bad(
                dir,
                format!("none of its {listed} files is a readable image"),
            ));
        }
        colour |= decoded.colour;
        sets.push(decoded.set);
    }
    progress.bar.finish_and_clear();
    if options.channels.is_none() && !colour {
        sets.iter_mut().for_each(to_grayscale);
    }
    Ok(sets)
}

/// Whether the `i`-th file of a class (by sorted name) is held out: every `1/fraction`-th.
fn held_out(i: usize, fraction: f64) -> bool {
    ((i + 1) as f64 * fraction).floor() > (i as f64 * fraction).floor()
}

/// Every image of `dir`, labelled by its class folder (or unlabelled when the folder is flat).
pub fn read(dir: &Path, options: &FolderOptions) -> Result<ImageSet> {
    let listing = list(dir, None)?;
    if listing.entries.is_empty() {
        return Err(bad(dir, "holds no image files"));
    }
    let classes = listing.classes.len();
    let mut sets = decode_sets(vec![(listing.entries, dir)], classes, options)?;
    Ok(sets.remove(0))
}

/// The training images of `dir` and the held-out ones (from `options.val_dir`, or a fraction of
/// each class of `dir`).
pub fn load(dir: &Path, options: &FolderOptions) -> Result<Split> {
    let listing = list(dir, None)?;
    if listing.entries.is_empty() {
        return Err(bad(dir, "holds no image files"));
    }
    let classes = listing.classes;
    let (train, test, held) = match &options.val_dir {
        Some(val) => {
            let test = list(val, Some(classes.as_slice()))?.entries;
            if test.is_empty() {
                return Err(bad(val, "holds no image files"));
            }
            (
                listing.entries,
                test,
                format!("held-out images from {}", val.display()),
            )
        }
        None => {
            let mut seen: BTreeMap<u8, usize> = BTreeMap::new();
            let (test, train): (Vec<Entry>, Vec<Entry>) =
                listing.entries.into_iter().partition(|e| {
                    let i = seen.entry(e.label).or_default();
                    *i += 1;
                    held_out(*i - 1, options.val_fraction)
                });
            if test.is_empty() {
                return Err(bad(
                    dir,
                    format!(
                        "holding out {} of each class leaves no image to evaluate on (each class has fewer than {:.0} files): give --val-dir or a larger --val-fraction",
                        options.val_fraction,
                        1.0 / options.val_fraction
                    ),
                ));
            }
            (
                train,
                test,
                format!("{} of each class held out", options.val_fraction),
            )
        }
    };
    let val_dir = options.val_dir.as_deref().unwrap_or(dir);
    let mut sets = decode_sets(vec![(train, dir), (test, val_dir)], classes.len(), options)?;
    let test = sets.pop().expect("two sets");
    let train = sets.pop().expect("two sets");
    let labels = if classes.is_empty() {
        "unlabelled".to_string()
    } else {
        format!("{} classes", classes.len())
    };
    Ok(Split {
        origin: format!(
            "images from {} ({labels}, {}×{}×{}; {held}: {} train / {} held out)",
            dir.display(),
            train.height,
            train.width,
            train.channels,
            train.len(),
            test.len()
        ),
        train,
        test,
    })
}
