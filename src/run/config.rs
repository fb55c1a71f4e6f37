//! Settings from a TOML file (`contrastive train METHOD --config FILE.toml`) and the
//! `config.toml` every run writes, which `--config` replays.
//!
//! The file is a flat table: `method` and any train setting by its flag's name (`batch_size` or
//! `batch-size`), e.g. `steps = 500`, `widths = [16, 32, 64]`, `linear_head = true`. Each value
//! goes through the flag's own parser, so the file and the command line accept the same values;
//! a flag given on the command line overrides the file.

use std::path::Path;

use clap::CommandFactory;

use super::settings::Words;
use super::Settings;
use crate::error::{Error, Result};

/// The file a run writes its resolved settings to, in its run directory.
pub const FILE: &str = "config.toml";

/// `cli` (settings parsed from the command line, with [`super::Common::given`] filled in) with
/// every setting its `--config` file holds that the command line does not give. Errors name the
/// file and the key: unknown keys, values of the wrong type, another method's file.
pub fn apply(cli: Settings) -> Result<Settings> {
    let Some(path) = cli.common().config.clone() else {
        return Ok(cli);
    };
    let bad = |what: String| Error::Data {
        path: path.clone(),
        what,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(format!("not valid TOML: {e}")))?;
    let name = cli.name();
    match table.get("method") {
        None => {}
        Some(toml::Value::String(m)) if m == name => {}
        Some(other) => {
            return Err(bad(format!(
                "key `method`: the file is for {other}, the command line trains {name}"
            )))
        }
    }
    let words = Words::command();
    let method = words
        .find_subcommand(name)
        .expect("every method is a subcommand");
    let mut file_words = vec![name.to_string()];
    let mut from_file = vec![];
    for (key, value) in table.iter().filter(|(k, _)| *k != "method") {
        let id = key.replace('-', "_");
        let known = method.get_arguments().any(|a| a.get_id() == id.as_str());
        if !known || id == "config" || id == "given" {
            return Err(bad(format!(
                "unknown key `{key}`: `contrastive train {name} --help` lists the settings (without their `--`)"
            )));
        }
        if cli.common().given.contains(&id) {
            continue;
        }
        let mine = flag_words(&id, value).map_err(|what| bad(format!("key `{key}`: {what}")))?;
        // Parsed alone first, so that a bad value is reported with its key.
        parse([name.to_string()].into_iter().chain(mine.clone()))
            .map_err(|e| bad(format!("key `{key}`: {e}")))?;
        file_words.extend(mine);
        from_file.push(id);
    }
    let file = parse(file_words).map_err(bad)?;
    let mut merged = overlay(file, &cli)?;
    let given = &mut merged.common_mut().given;
    given.extend(cli.common().given.iter().cloned());
    given.extend(from_file);
    Ok(merged)
}

/// The settings of `words` (a method and its flags), or the first line of clap's error without
/// its usage hints, which name no file.
fn parse(words: impl IntoIterator<Item = String>) -> std::result::Result<Settings, String> {
    Settings::from_words(words).map_err(|e| match e {
        Error::Config(text) => {
            let line = text.lines().next().unwrap_or_default();
            line.trim_start_matches("error: ").to_string()
        }
        e => e.to_string(),
    })
}

/// A TOML value as the words of its flag: `--id value`, a bare `--id` for `true`, nothing for
/// `false`, a comma-separated list for an array.
fn flag_words(id: &str, value: &toml::Value) -> std::result::Result<Vec<String>, String> {
    let flag = format!("--{}", id.replace('_', "-"));
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!("{} is not a setting's value", other.type_str())),
    };
    Ok(match value {
        toml::Value::Boolean(true) => vec![flag],
        toml::Value::Boolean(false) => vec![],
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(scalar).collect::<Result<_, _>>()?;
            vec![format!("{flag}={}", items.join(","))]
        }
        v => vec![format!("{flag}={}", scalar(v)?)],
    })
}

/// `file`'s settings with those `cli` gives on the command line put over them.
fn overlay(file: Settings, cli: &Settings) -> Result<Settings> {
    let given = &cli.common().given;
    let mut merged = to_json(&file);
    let cli_json = to_json(cli);
    let name = cli.name();
    for id in given {
        for scope in [Some("common"), None] {
            let src = scope.map_or(&cli_json[name], |s| &cli_json[name][s]);
            if let Some(v) = src.get(id) {
                let dst = match scope {
                    Some(s) => &mut merged[name][s],
                    None => &mut merged[name],
                };
                dst[id.as_str()] = v.clone();
            }
        }
    }
    let mut out: Settings = serde_json::from_value(merged)
        .map_err(|e| Error::Config(format!("merging --config with the command line: {e}")))?;
    // What only steers this invocation is not serialised: the command line's, else the file's.
    let (c, f, l) = (out.common_mut(), file.common(), cli.common());
    let pick = |id: &str| given.iter().any(|g| g == id);
    c.force = if pick("force") { l.force } else { f.force };
    c.quiet = if pick("quiet") { l.quiet } else { f.quiet };
    c.resume = if pick("resume") { &l.resume } else { &f.resume }.clone();
    c.stop_after = if pick("stop_after") {
        l.stop_after
    } else {
        f.stop_after
    };
    c.tune = if pick("tune") { l.tune } else { f.tune };
    c.config = l.config.clone();
    Ok(out)
}

fn to_json(s: &Settings) -> serde_json::Value {
    serde_json::to_value(s).expect("settings serialise")
}

/// The settings as the flat table `--config` reads: `method`, then every setting that has a
/// value (unset ones keep their per-method defaults on replay).
pub fn to_toml(s: &Settings) -> String {
    let json = to_json(s);
    let mut table = toml::Table::new();
    table.insert("method".into(), s.name().into());
    let fields = json[s.name()].as_object().cloned().unwrap_or_default();
    let common = fields
        .get("common")
        .and_then(|c| c.as_object())
        .cloned()
        .unwrap_or_default();
    for (key, value) in common.iter().chain(fields.iter()) {
        if let Some(v) = toml_value(value).filter(|_| key != "common") {
            table.insert(key.clone(), v);
        }
    }
    format!(
        "# The settings of this run; replay them with\n#   contrastive train {} --config {FILE} --out NEW_DIR\n{}",
        s.name(),
        toml::to_string(&table).expect("a flat table serialises")
    )
}

/// A JSON setting as TOML; `None` for an unset one. Floats are written as the shortest decimal
/// of their f32 when they are one (every float setting is), so that `0.99` reads `0.99` and
/// parses back to the same bits.
fn toml_value(v: &serde_json::Value) -> Option<toml::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => toml::Value::Boolean(*b),
        // TOML integers are i64: a larger u64 (a seed) is written as a string, which its flag
        // parses all the same.
        J::Number(n) if n.is_u64() || n.is_i64() => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::String(n.to_string()),
        },
        J::Number(n) => {
            let f = n.as_f64().expect("a float");
            match (f as f32) as f64 == f {
                true => toml::Value::Float((f as f32).to_string().parse().expect("a float")),
                false => toml::Value::Float(f),
            }
        }
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(items) => toml::Value::Array(items.iter().filter_map(toml_value).collect()),
        J::Object(_) => toml::Value::String(v.to_string()),
    })
}

/// Writes `s` as `dir/config.toml`.
pub fn write(s: &Settings, dir: &Path) -> Result<()> {
    let path = dir.join(FILE);
    crate::checkpoint::write_atomic(&path, to_toml(s).as_bytes())
}
