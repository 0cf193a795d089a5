//! The layers under the flags: defaults, the YAML file and `OPAMPD_*`
//! variables, merged on one key tree that refuses unknown keys.

use super::Config;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Environment variables that are not config keys but are read by opampd.
const EXTRA_ENV: &[&str] = &["OPAMPD_CONFIG"];

/// Parses a config file's text and merges it onto the defaults.
pub fn from_yaml(text: &str, origin: &Path) -> Result<Config> {
    let mut tree = serde_yaml::to_value(Config::default())?;
    merge_file(&mut tree, text, origin)?;
    let config: Config =
        serde_yaml::from_value(tree).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    config.validate()?;
    Ok(config)
}

/// Key paths whose value is a free-form map (header name → value): any key
/// is accepted there, and the environment sets them as `name=value,name=value`.
fn is_free_form(path: &str) -> bool {
    path.starts_with("telemetry.") && path.ends_with(".headers")
}

pub(super) fn merge_file(tree: &mut serde_yaml::Value, text: &str, path: &Path) -> Result<()> {
    let file_tree: serde_yaml::Value = if text.trim().is_empty() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
    };
    merge(tree, file_tree, "", path)
}

/// Merges `over` into `base`, refusing keys `base` does not have.
fn merge(
    base: &mut serde_yaml::Value,
    over: serde_yaml::Value,
    prefix: &str,
    file: &Path,
) -> Result<()> {
    use serde_yaml::Value;
    let Value::Mapping(over) = over else {
        bail!(
            "config file {}: expected a mapping of keys at {}",
            file.display(),
            if prefix.is_empty() {
                "the top level"
            } else {
                prefix
            }
        );
    };
    let Value::Mapping(base_map) = base else {
        unreachable!("defaults are a mapping")
    };
    for (k, v) in over {
        let key = k
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{k:?}"));
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match base_map.get_mut(&k) {
            Some(slot) if is_free_form(&path) => {
                if !matches!(v, Value::Mapping(_) | Value::Null) {
                    bail!(
                        "config file {}: `{path}` must be a mapping of header names to values",
                        file.display()
                    );
                }
                *slot = v;
            }
            None => bail!(
                "config file {}: unknown key `{path}` (see `opampd check-config --print-defaults` for the valid keys)",
                file.display()
            ),
            Some(slot @ Value::Mapping(_)) if matches!(v, Value::Mapping(_)) => merge(slot, v, &path, file)?,
            Some(slot) => *slot = v,
        }
    }
    Ok(())
}

/// Applies `OPAMPD_*` variables onto the key tree.
pub(super) fn apply_env(tree: &mut serde_yaml::Value, env: &[(String, String)]) -> Result<()> {
    let mut leaves = Vec::new();
    collect_leaves(tree, String::new(), &mut leaves);
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("OPAMPD_") else {
            continue;
        };
        if EXTRA_ENV.contains(&name.as_str()) {
            continue;
        }
        let Some(path) = leaves
            .iter()
            .find(|p| p.replace('.', "_").eq_ignore_ascii_case(rest))
        else {
            bail!("environment variable {name} is not a configuration key (unset it, or see `opampd check-config --print-defaults`)");
        };
        let parsed =
            env_value(tree, path, value).with_context(|| format!("environment variable {name}"))?;
        set_path(tree, path, parsed);
    }
    Ok(())
}

fn collect_leaves(v: &serde_yaml::Value, prefix: String, out: &mut Vec<String>) {
    if let serde_yaml::Value::Mapping(m) = v {
        for (k, child) in m {
            let key = k.as_str().unwrap_or_default();
            let path = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            if matches!(child, serde_yaml::Value::Mapping(_)) && !is_free_form(&path) {
                collect_leaves(child, path, out);
            } else {
                out.push(path);
            }
        }
    }
}

fn get_path<'a>(tree: &'a serde_yaml::Value, path: &str) -> Option<&'a serde_yaml::Value> {
    path.split('.').try_fold(tree, |v, k| v.get(k))
}

fn set_path(tree: &mut serde_yaml::Value, path: &str, value: serde_yaml::Value) {
    let mut cur = tree;
    for k in path.split('.') {
        cur = &mut cur[k];
    }
    *cur = value;
}

fn env_value(tree: &serde_yaml::Value, path: &str, raw: &str) -> Result<serde_yaml::Value> {
    use serde_yaml::Value;
    if is_free_form(path) {
        let mut map = serde_yaml::Mapping::new();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = pair.split_once('=') else {
                bail!("expected name=value pairs separated by commas, got {pair:?}");
            };
            map.insert(
                Value::String(name.trim().into()),
                Value::String(value.trim().into()),
            );
        }
        return Ok(Value::Mapping(map));
    }
    Ok(match get_path(tree, path) {
        Some(Value::Sequence(_)) => Value::Sequence(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        ),
        Some(Value::Bool(_)) => Value::Bool(match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => bail!("expected true or false, got {raw:?}"),
        }),
        Some(Value::Number(_)) => Value::Number(
            raw.trim()
                .parse::<u64>()
                .map_err(|_| anyhow::anyhow!("expected a whole number, got {raw:?}"))?
                .into(),
        ),
        _ => Value::String(raw.to_string()),
    })
}
