//! `opampctl configs apply|list|show|history|diff|rollback|delete`.

use crate::cli::{ConfigsApplyArgs, ConfigsCmd};
use crate::client::{enc, Client};
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use comfy_table::Cell;
use opamp_proto::api::{
    ConfigDiff, ConfigVersion, Configuration, ConfigurationInput, Page, RollbackRequest,
};
use reqwest::Method;
use serde::de::DeserializeOwned;
use std::io::Read;
use std::path::Path;

pub async fn run(settings: &Settings, client: &Client, cmd: ConfigsCmd) -> Result<()> {
    match cmd {
        ConfigsCmd::Apply(args) => apply(settings, client, &args).await,
        ConfigsCmd::List => list(settings, client).await,
        ConfigsCmd::Show { name, version } => show(settings, client, &name, version).await,
        ConfigsCmd::History { name } => history(settings, client, &name).await,
        ConfigsCmd::Diff { name, from, to } => diff(settings, client, &name, from, to).await,
        ConfigsCmd::Rollback { name, to } => rollback(settings, client, &name, to).await,
        ConfigsCmd::Delete { name, force } => delete(settings, client, &name, force).await,
    }
}

fn base(name: &str) -> Result<String> {
    if name.trim().is_empty() {
        return Err(CtlError::usage("the configuration name is empty"));
    }
    Ok(format!("/api/v1/configurations/{}", enc(name)))
}

/// Content type from a file name's extension.
pub fn content_type_for(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("yaml" | "yml") => "text/yaml",
        Some("json") => "application/json",
        Some("toml") => "application/toml",
        _ => "text/plain",
    }
}

async fn apply(settings: &Settings, client: &Client, args: &ConfigsApplyArgs) -> Result<()> {
    let stdin = args.file.as_os_str() == "-";
    let body = if stdin {
        let mut b = String::new();
        std::io::stdin().read_to_string(&mut b).map_err(|e| {
            CtlError::usage(format!(
                "cannot read the configuration from standard input: {e}"
            ))
        })?;
        b
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| {
            CtlError::usage(format!(
                "cannot read the configuration file {}: {e}",
                args.file.display()
            ))
        })?
    };
    let name = match &args.name {
        Some(n) => n.clone(),
        None if stdin => return Err(CtlError::usage("-f - (standard input) needs --name NAME")),
        None => args
            .file
            .file_stem()
            .and_then(|stem| stem.to_str())
            .map(str::to_owned)
            .filter(|stem| !stem.is_empty())
            .ok_or_else(|| {
                CtlError::usage(format!(
                    "cannot take a configuration name from {}: pass --name NAME",
                    args.file.display()
                ))
            })?,
    };
    let content_type = args
        .content_type
        .clone()
        .unwrap_or_else(|| content_type_for(&args.file).to_string());
    let input = ConfigurationInput {
        name: name.clone(),
        body,
        content_type: Some(content_type),
        selector: args.selector.clone(),
        description: args.description.clone(),
    };
    let (status, cfg): (_, Configuration) = client
        .send_json(Method::POST, "/api/v1/configurations", &input)
        .await?;
    let result = cfg.result.clone().unwrap_or_else(|| {
        if status.as_u16() == 201 {
            "created".into()
        } else {
            "unchanged".into()
        }
    });
    if settings.human() {
        let word = if result == "unchanged" {
            "unchanged"
        } else {
            "configured"
        };
        if !settings.quiet {
            let what = match (result.as_str(), status.as_u16()) {
                ("created", _) => format!("created (version {})", cfg.version),
                ("unchanged", _) => format!("unchanged (version {})", cfg.version),
                (_, 201) => format!("updated: new version {}", cfg.version),
                _ => format!(
                    "updated (still version {}: selector or description only)",
                    cfg.version
                ),
            };
            output::out(&format!("configuration/{} {what}", cfg.name));
        }
        if word == "configured" {
            let selector_note = match &cfg.rolled_out_selector {
                Some(rolled) if *rolled != cfg.selector => format!(
                    "; the rolled-out version keeps going to agents matching {:?} until then",
                    rolled
                ),
                _ => String::new(),
            };
            output::info(
                settings,
                format!(
                    "saved only: distribute it with `opampctl rollout start {}`{selector_note}",
                    cfg.name
                ),
            );
        }
        Ok(())
    } else {
        output::machine(settings, &cfg)
    }
}

/// The items of a list reply, paginated (`{"items": …}`) or a bare array.
pub(crate) async fn list_all<T: DeserializeOwned>(client: &Client, path: &str) -> Result<Vec<T>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let p = match &cursor {
            Some(cur) => format!("{path}{sep}cursor={}", enc(cur)),
            None => path.to_string(),
        };
        let v: serde_json::Value = client.get(&p).await?;
        let (items, next) = match v {
            serde_json::Value::Array(array) => (array, None),
            mut obj => (
                obj["items"]
                    .as_array_mut()
                    .map(std::mem::take)
                    .unwrap_or_default(),
                obj["next_cursor"].as_str().map(str::to_owned),
            ),
        };
        for i in items {
            out.push(serde_json::from_value(i).map_err(|e| {
                CtlError::failed(format!(
                    "opampd's reply to {path} is not what this opampctl expects ({e})"
                ))
            })?);
        }
        match next {
            Some(n) if cursor.as_deref() != Some(n.as_str()) => cursor = Some(n),
            _ => return Ok(out),
        }
    }
}

/// Every item of a list, in the JSON shape of every list: `{items, total, next_cursor}`.
fn every<T: Clone>(items: &[T]) -> Page<T> {
    Page {
        items: items.to_vec(),
        total: items.len() as u64,
        next_cursor: None,
    }
}

async fn list(settings: &Settings, client: &Client) -> Result<()> {
    let items: Vec<Configuration> = list_all(client, "/api/v1/configurations").await?;
    output::show(settings, &every(&items), |wide| {
        if items.is_empty() {
            return String::new();
        }
        let mut header = vec!["NAME", "VERSION", "ROLLED OUT", "SELECTOR", "UPDATED"];
        if wide {
            header.extend(["CONTENT TYPE", "HASH", "BY", "DESCRIPTION"]);
        }
        let mut t = output::table(settings, &header);
        for cfg in &items {
            let mut row = vec![
                Cell::new(&cfg.name),
                Cell::new(cfg.version),
                Cell::new(cfg.rolled_out_version.map_or("-".into(), |v| v.to_string())),
                Cell::new(if cfg.selector.is_empty() {
                    "(all)"
                } else {
                    &cfg.selector
                }),
                Cell::new(output::age(&cfg.updated_at)),
            ];
            if wide {
                row.extend([
                    Cell::new(&cfg.content_type),
                    Cell::new(&cfg.hash[..cfg.hash.len().min(12)]),
                    Cell::new(cfg.created_by.as_deref().unwrap_or("-")),
                    Cell::new(&cfg.description),
                ]);
            }
            t.add_row(row);
        }
        output::render(&t)
    })?;
    if settings.human() && items.is_empty() {
        output::info(
            settings,
            "no configurations: create one with `opampctl configs apply -f FILE`",
        );
    }
    Ok(())
}

async fn show(
    settings: &Settings,
    client: &Client,
    name: &str,
    version: Option<u64>,
) -> Result<()> {
    let b = base(name)?;
    // The version itself, for its own creation time, author and note.
    let n = match version {
        Some(n) => n,
        None => client.get::<Configuration>(&b).await?.version,
    };
    let v: ConfigVersion = client.get(&format!("{b}/versions/{n}")).await?;
    output::show(settings, &v, |_| {
        let mut text = format!(
            "# {} version {} ({}, sha256 {}, {} by {})\n",
            v.name,
            v.version,
            v.content_type,
            v.hash,
            v.created_at,
            v.created_by.as_deref().unwrap_or("-")
        );
        text.push_str(&v.body);
        text
    })
}

async fn history(settings: &Settings, client: &Client, name: &str) -> Result<()> {
    let b = base(name)?;
    let items: Vec<ConfigVersion> = list_all(client, &format!("{b}/versions")).await?;
    output::show(settings, &every(&items), |wide| {
        let mut header = vec!["VERSION", "HASH", "CREATED", "BY", "NOTE"];
        if wide {
            header.push("CONTENT TYPE");
        }
        let mut t = output::table(settings, &header);
        for v in &items {
            let mut row = vec![
                Cell::new(v.version),
                Cell::new(&v.hash[..v.hash.len().min(12)]),
                Cell::new(&v.created_at),
                Cell::new(v.created_by.as_deref().unwrap_or("-")),
                Cell::new(v.note.as_deref().unwrap_or("")),
            ];
            if wide {
                row.push(Cell::new(&v.content_type));
            }
            t.add_row(row);
        }
        output::render(&t)
    })
}

async fn diff(
    settings: &Settings,
    client: &Client,
    name: &str,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<()> {
    let mut q = Vec::new();
    if let Some(f) = from {
        q.push(format!("from={f}"));
    }
    if let Some(t) = to {
        q.push(format!("to={t}"));
    }
    let mut path = format!("{}/diff", base(name)?);
    if !q.is_empty() {
        path.push('?');
        path.push_str(&q.join("&"));
    }
    let d: ConfigDiff = client.get(&path).await?;
    output::show(settings, &d, |_| {
        if d.diff.trim().is_empty() {
            return format!(
                "# {} versions {} and {} have the same body",
                d.name, d.from, d.to
            );
        }
        if !settings.color {
            return d.diff.trim_end().to_string();
        }
        d.diff
            .lines()
            .map(|l| {
                if l.starts_with("+++") || l.starts_with("---") {
                    format!("\x1b[1m{l}\x1b[0m")
                } else if l.starts_with('+') {
                    format!("\x1b[32m{l}\x1b[0m")
                } else if l.starts_with('-') {
                    format!("\x1b[31m{l}\x1b[0m")
                } else if l.starts_with("@@") {
                    format!("\x1b[36m{l}\x1b[0m")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

async fn rollback(settings: &Settings, client: &Client, name: &str, to: Option<u64>) -> Result<()> {
    let (_, v): (_, serde_json::Value) = client
        .send_json(
            Method::POST,
            &format!("{}/rollback", base(name)?),
            &RollbackRequest { version: to },
        )
        .await?;
    if settings.human() {
        let version = v["version"]
            .as_u64()
            .map_or("?".to_string(), |n| n.to_string());
        output::info(
            settings,
            format!(
                "configuration/{name} rolled back{}: now version {version}",
                to.map(|t| format!(" to the body of version {t}"))
                    .unwrap_or_default()
            ),
        );
        if v.get("state").is_none() {
            output::info(
                settings,
                format!("distribute it with `opampctl rollout start {name}` if it is not rolled out yet"),
            );
        }
        Ok(())
    } else {
        output::machine(settings, &v)
    }
}

async fn delete(settings: &Settings, client: &Client, name: &str, force: bool) -> Result<()> {
    let mut path = base(name)?;
    if force {
        path.push_str("?force=true");
    }
    client.call(Method::DELETE, &path).await?;
    if settings.human() {
        output::info(settings, format!("configuration/{name} deleted"));
        Ok(())
    } else {
        output::machine(
            settings,
            &serde_json::json!({"name": name, "deleted": true}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_from_extensions() {
        assert_eq!(content_type_for(Path::new("a/otel.yaml")), "text/yaml");
        assert_eq!(content_type_for(Path::new("x.YML")), "text/yaml");
        assert_eq!(content_type_for(Path::new("x.json")), "application/json");
        assert_eq!(content_type_for(Path::new("x")), "text/plain");
    }
}
