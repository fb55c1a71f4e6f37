//! Autotuning: which candidate kernel each (kernel family, shape) runs on this adapter.
//!
//! Kernel speed depends on the GPU far more than any heuristic written on one machine can know,
//! so the choice is measured on the user's adapter. A family's chooser asks [`Tuning::choice`]
//! for a shape; an unknown shape is remembered as wanted and the heuristic answers meanwhile.
//! Before a run trains, the trainer records one step that changes no state to collect the shapes
//! it needs, times every valid candidate of each wanted shape with GPU timestamps
//! ([`time_candidates`]: few repetitions, a bounded time per shape), keeps the fastest, and stores
//! the choices in a cache file per adapter and driver ([`Cache`]), so later runs reuse them. A
//! checkpoint keeps the choices its run made, and a resumed run pins them: the same kernels run
//! the same reductions in the same order, so resume stays bit-identical.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};

/// How choices are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// The heuristic alone; nothing is timed or cached.
    Off,
    /// Choices from the cache; shapes it lacks take the heuristic and are not timed.
    Cached,
    /// Choices from the cache; shapes it lacks are timed and added to it.
    #[default]
    Full,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "off" => Ok(Mode::Off),
            "cached" => Ok(Mode::Cached),
            "full" => Ok(Mode::Full),
            _ => Err(Error::Config(format!(
                "unknown tuning mode `{s}`: use off, cached or full"
            ))),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::Cached => "cached",
            Mode::Full => "full",
        })
    }
}

/// A (kernel family, shape class) pair, e.g. `("matmul", "NT 256x4096x128")`.
pub type Key = (String, String);

/// The choices in force for one adapter, and the shapes asked for that have none yet.
#[derive(Debug, Default)]
pub struct Tuning {
    mode: Mode,
    choices: BTreeMap<Key, String>,
    wanted: BTreeSet<Key>,
    /// Choices restored from a checkpoint: never re-timed or replaced.
    pinned: bool,
}

impl Tuning {
    pub fn new(mode: Mode) -> Tuning {
        Tuning {
            mode,
            ..Tuning::default()
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The candidate chosen for `family` at `shape`, if any. Without one, the shape is noted as
    /// wanted (unless tuning is off) and the caller takes its heuristic. Pinned choices hold in
    /// every mode.
    pub fn choice(&mut self, family: &str, shape: &str) -> Option<&str> {
        if self.mode == Mode::Off && !self.pinned {
            return None;
        }
        let key = (family.to_string(), shape.to_string());
        if !self.choices.contains_key(&key) && !self.pinned {
            self.wanted.insert(key.clone());
        }
        self.choices.get(&key).map(String::as_str)
    }

    /// Shapes asked for without a choice, to be timed (empty unless the mode is [`Mode::Full`]).
    pub fn take_wanted(&mut self) -> Vec<Key> {
        let wanted = std::mem::take(&mut self.wanted);
        if self.mode == Mode::Full {
            wanted.into_iter().collect()
        } else {
            vec![]
        }
    }

    pub fn set(&mut self, key: Key, candidate: String) {
        if !self.pinned {
            self.choices.insert(key, candidate);
        }
    }

    /// Every choice in force (for the cache and the checkpoint).
    pub fn choices(&self) -> &BTreeMap<Key, String> {
        &self.choices
    }

    /// Adds the cached choices for shapes that have none yet.
    pub fn merge(&mut self, cached: &BTreeMap<Key, String>) {
        for (k, v) in cached {
            self.choices.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    /// Replaces every choice with those a checkpoint recorded and keeps them: a resumed run runs
    /// the kernels its original ran. Shapes the checkpoint does not name take the heuristic.
    pub fn pin(&mut self, choices: BTreeMap<Key, String>) {
        // Even under `--tune off`: the original run's kernels are what resume must reproduce.
        self.choices = choices;
        self.wanted.clear();
        self.pinned = true;
    }

    /// The choices as one line per key, `family<TAB>shape<TAB>candidate` (checkpoint metadata).
    pub fn encode(choices: &BTreeMap<Key, String>) -> String {
        choices
            .iter()
            .map(|((f, s), c)| format!("{f}\t{s}\t{c}\n"))
            .collect()
    }

    /// Reads what [`Tuning::encode`] wrote.
    pub fn decode(text: &str) -> Result<BTreeMap<Key, String>> {
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| match l.split('\t').collect::<Vec<_>>()[..] {
                [f, s, c] => Ok(((f.to_string(), s.to_string()), c.to_string())),
                _ => Err(Error::Config(format!("malformed tuning choice `{l}`"))),
            })
            .collect()
    }
}

/// The tuning cache: a JSON file of choices per adapter and driver, under the user's cache
/// directory (`$CONTRASTIVE_CACHE_DIR`, else `$XDG_CACHE_HOME/contrastive`, else
/// `~/.cache/contrastive`).
pub struct Cache {
    path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct CacheFile {
    /// Adapter identity (name, backend, driver) → "family\tshape" → candidate.
    adapters: BTreeMap<String, BTreeMap<String, String>>,
}

impl Cache {
    /// The cache in the user's cache directory, or `None` where there is no home to put it in.
    pub fn user() -> Option<Cache> {
        let dir = std::env::var_os("CONTRASTIVE_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("contrastive"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/contrastive"))
            })?;
        Some(Cache::at(dir.join("tune.json")))
    }

    pub fn at(path: impl Into<PathBuf>) -> Cache {
        Cache { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_file(&self) -> Result<CacheFile> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| Error::Data {
                path: self.path.clone(),
                what: format!("unreadable tuning cache ({e}); delete it to start afresh"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CacheFile::default()),
            Err(e) => Err(Error::Data {
                path: self.path.clone(),
                what: format!("cannot read the tuning cache: {e}"),
            }),
        }
    }

    /// The choices cached for `adapter` (empty when none are).
    pub fn load(&self, adapter: &str) -> Result<BTreeMap<Key, String>> {
        let file = self.read_file()?;
        let Some(entries) = file.adapters.get(adapter) else {
            return Ok(BTreeMap::new());
        };
        entries
            .iter()
            .map(|(k, c)| match k.split_once('\t') {
                Some((f, s)) => Ok(((f.to_string(), s.to_string()), c.clone())),
                None => Err(Error::Data {
                    path: self.path.clone(),
                    what: format!("malformed key `{k}` in the tuning cache"),
                }),
            })
            .collect()
    }

    /// Stores `choices` for `adapter`, keeping other adapters' entries; written atomically.
    pub fn store(&self, adapter: &str, choices: &BTreeMap<Key, String>) -> Result<()> {
        let mut file = self.read_file().unwrap_or_default();
        let entry = file.adapters.entry(adapter.to_string()).or_default();
        for ((f, s), c) in choices {
            entry.insert(format!("{f}\t{s}"), c.clone());
        }
        let io = |e: std::io::Error| Error::Data {
            path: self.path.clone(),
            what: format!("cannot write the tuning cache: {e}"),
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&file).expect("a map of strings serialises");
        let written = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io)
    }
}

/// One candidate's measurement for one shape.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Trial {
    pub family: String,
    pub shape: String,
    pub candidate: String,
    /// GPU seconds per launch (median of the repetitions).
    pub seconds: f64,
    /// Useful floating-point operations per launch (0 where the family does not count them).
    pub flops: f64,
    pub chosen: bool,
}

impl Trial {
    /// The trials of one shape from [`time_candidates`]' measurements, the fastest chosen;
    /// `flops` per launch.
    pub fn ranked(family: &str, shape: &str, times: Vec<(String, f64)>, flops: f64) -> Vec<Trial> {
        let best = times.iter().map(|(_, t)| *t).fold(f64::INFINITY, f64::min);
        let mut chosen = false;
        times
            .into_iter()
            .map(|(candidate, seconds)| {
                // The first of equally fast candidates, so exactly one is chosen.
                let pick = !chosen && seconds == best;
                chosen |= pick;
                Trial {
                    family: family.into(),
                    shape: shape.into(),
                    candidate,
                    seconds,
                    flops,
                    chosen: pick,
                }
            })
            .collect()
    }

    pub fn gflops(&self) -> f64 {
        if self.seconds > 0.0 {
            self.flops / self.seconds * 1e-9
        } else {
            0.0
        }
    }
}

/// How long timing may take per shape, and how often each candidate runs.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub seconds_per_shape: f64,
    pub max_reps: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            seconds_per_shape: 0.5,
            max_reps: 7,
        }
    }
}

/// Times each candidate: `run(candidate)` records one launch and returns the GPU seconds it took
/// (e.g. `Gpu::sync_timed` around it). Every candidate runs once to warm up and once timed; while
/// the budget lasts, candidates within twice the best time so far run again, up to `max_reps`
/// timed runs. Returns the median seconds per candidate, in the order given; a candidate whose
/// launch fails is left out, and none succeeding is an error.
pub fn time_candidates(
    candidates: &[String],
    budget: Budget,
    mut run: impl FnMut(&str) -> Result<f64>,
) -> Result<Vec<(String, f64)>> {
    let start = Instant::now();
    let mut times: Vec<(String, Vec<f64>)> = vec![];
    let mut last_error = None;
    for c in candidates {
        let timed = run(c).and_then(|_| run(c));
        match timed {
            Ok(t) => times.push((c.clone(), vec![t])),
            Err(e) => last_error = Some(e),
        }
    }
    if times.is_empty() {
        return Err(last_error.unwrap_or_else(|| Error::Config("no candidate to time".into())));
    }
    for _ in 1..budget.max_reps {
        let best = times
            .iter()
            .map(|(_, t)| median(t))
            .fold(f64::INFINITY, f64::min);
        for (c, t) in times.iter_mut() {
            if start.elapsed().as_secs_f64() > budget.seconds_per_shape {
                break;
            }
            if median(t) <= 2.0 * best {
                t.push(run(c)?);
            }
        }
    }
    Ok(times.into_iter().map(|(c, t)| (c, median(&t))).collect())
}

fn median(t: &[f64]) -> f64 {
    let mut s = t.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_round_trip_through_the_cache_and_the_checkpoint_text() {
        let dir = std::env::temp_dir().join(format!("tune-test-{}", std::process::id()));
        let cache = Cache::at(dir.join("tune.json"));
        let mut t = Tuning::new(Mode::Full);
        assert_eq!(t.choice("matmul", "NN 64x64x64"), None);
        assert_eq!(
            t.take_wanted(),
            vec![("matmul".into(), "NN 64x64x64".into())]
        );
        t.set(("matmul".into(), "NN 64x64x64".into()), "smem64".into());
        cache.store("gpu a", t.choices()).unwrap();
        cache.store("gpu b", &BTreeMap::new()).unwrap();
        let loaded = cache.load("gpu a").unwrap();
        assert_eq!(&loaded, t.choices());
        assert!(cache.load("gpu b").unwrap().is_empty());
        assert_eq!(Tuning::decode(&Tuning::encode(&loaded)).unwrap(), loaded);
        let mut resumed = Tuning::new(Mode::Full);
        resumed.pin(loaded);
        assert_eq!(resumed.choice("matmul", "NN 64x64x64"), Some("smem64"));
        assert_eq!(resumed.choice("matmul", "NN 8x8x8"), None);
        assert!(
            resumed.take_wanted().is_empty(),
            "a pinned run times nothing"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cached_mode_times_nothing_and_off_asks_nothing() {
        let mut t = Tuning::new(Mode::Cached);
        assert_eq!(t.choice("conv", "fwd"), None);
        assert!(t.take_wanted().is_empty());
        let mut t = Tuning::new(Mode::Off);
        t.merge(&[(("conv".into(), "fwd".into()), "direct".into())].into());
        assert_eq!(t.choice("conv", "fwd"), None);
    }

    #[test]
    fn the_fastest_candidate_is_timed_most_and_failures_are_left_out() {
        let names: Vec<String> = ["slow", "fast", "broken"].map(String::from).to_vec();
        let mut runs = BTreeMap::<String, usize>::new();
        let times = time_candidates(&names, Budget::default(), |c| {
            *runs.entry(c.to_string()).or_default() += 1;
            match c {
                "slow" => Ok(1.0),
                "fast" => Ok(0.1),
                _ => Err(Error::Gpu("no".into())),
            }
        })
        .unwrap();
        assert_eq!(times, vec![("slow".into(), 1.0), ("fast".into(), 0.1)]);
        assert_eq!(runs["slow"], 2);
        assert_eq!(runs["fast"], 1 + Budget::default().max_reps);
    }
}
