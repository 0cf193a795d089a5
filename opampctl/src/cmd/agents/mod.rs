//! `opampctl agents list|show|label|delete|restart|components`.
//!
//! `resolve` turns a uid or a unique prefix into the agent's uid; `fleet`
//! runs label, delete and restart on every agent -l/--status picks.

mod fleet;
mod resolve;

pub use resolve::agent_uid;

use crate::cli::{AgentsCmd, AgentsListArgs};
use crate::client::{enc, Client};
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output::{self, status_cell};
use comfy_table::Cell;
use fleet::Action;
use opamp_proto::api::{Agent, AvailableComponent, LabelPatch, Page};
use reqwest::Method;
use std::collections::BTreeMap;

pub async fn run(settings: &Settings, client: &Client, cmd: AgentsCmd) -> Result<()> {
    match cmd {
        AgentsCmd::List(args) => list(settings, client, &args).await,
        AgentsCmd::Show { uid } => show(settings, client, &uid).await,
        AgentsCmd::Label { uid, labels, fleet } => {
            if fleet.picks() {
                // Without a uid every argument is a label.
                let labels: Vec<String> = uid.into_iter().chain(labels).collect();
                if labels.is_empty() {
                    return Err(CtlError::usage(
                        "no labels given: add k=v to set a label or k- to remove it",
                    ));
                }
                let patch = parse_labels(&labels)?;
                return fleet::run(settings, client, &fleet, Action::Label(patch)).await;
            }
            let Some(uid) = uid else {
                return Err(CtlError::usage(
                    "give the agent's uid and the labels, or pick agents with -l SELECTOR or --status STATUS",
                ));
            };
            if labels.is_empty() {
                return Err(CtlError::usage(
                    "no labels given: add k=v to set a label or k- to remove it",
                ));
            }
            label(settings, client, &uid, &labels).await
        }
        AgentsCmd::Delete { uid, force, fleet } => match uid {
            Some(uid) => delete(settings, client, &uid, force).await,
            None => fleet::run(settings, client, &fleet, Action::Delete { force }).await,
        },
        AgentsCmd::Restart { uid, fleet } => match uid {
            Some(uid) => restart(settings, client, &uid).await,
            None => fleet::run(settings, client, &fleet, Action::Restart).await,
        },
        AgentsCmd::Components { uid } => components(settings, client, &uid).await,
    }
}

/// Fetches agents: one page, or every page with `all`.
pub async fn fetch(
    client: &Client,
    selector: Option<&str>,
    status: Option<&str>,
    limit: usize,
    all: bool,
) -> Result<Page<Agent>> {
    if limit == 0 || limit > 1000 {
        return Err(CtlError::usage(format!(
            "--limit must be between 1 and 1000, got {limit}"
        )));
    }
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("/api/v1/agents?limit={limit}");
        if let Some(sel) = selector {
            q.push_str(&format!("&selector={}", enc(sel)));
        }
        if let Some(st) = status {
            q.push_str(&format!("&status={st}"));
        }
        if let Some(cur) = &cursor {
            q.push_str(&format!("&cursor={}", enc(cur)));
        }
        let page: Page<Agent> = client.get(&q).await?;
        items.extend(page.items);
        if !all || page.next_cursor.is_none() {
            return Ok(Page {
                items,
                next_cursor: page.next_cursor,
                total: page.total,
            });
        }
        cursor = page.next_cursor;
    }
}

fn attr(agent: &Agent, key: &str) -> String {
    agent
        .identifying_attributes
        .get(key)
        .or_else(|| agent.non_identifying_attributes.get(key))
        .map(|v| match v {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// The CONFIG column: what the agent runs (the offer it reported APPLIED),
/// then an offer it has not applied yet with its state, e.g.
/// `otel@1 → otel@2 pending`.
fn config_of(agent: &Agent) -> String {
    let rc = &agent.remote_config;
    let refs = |r: &[opamp_proto::api::ConfigRef]| {
        r.iter()
            .map(|config| format!("{}@{}", config.name, config.version))
            .collect::<Vec<_>>()
            .join("+")
    };
    let running = refs(&rc.running);
    let offered = refs(&rc.configs);
    if rc.configs.is_empty() || (rc.status == "applied" && running == offered) {
        return if running.is_empty() {
            "-".into()
        } else {
            running
        };
    }
    let has = if running.is_empty() {
        "-"
    } else {
        running.as_str()
    };
    format!("{has} → {offered} {}", rc.status)
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn list_table(settings: &Settings, agents: &[Agent], wide: bool) -> String {
    let mut header = vec![
        "INSTANCE UID",
        "SERVICE",
        "STATUS",
        "TRANSPORT",
        "CONFIG",
        "LAST SEEN",
    ];
    if wide {
        header.extend(["VERSION", "HOST", "HEALTH", "LABELS", "REMOTE ADDR"]);
    }
    let mut t = output::table(settings, &header);
    for agent in agents {
        let mut row = vec![
            Cell::new(&agent.instance_uid),
            Cell::new(agent.service_name().unwrap_or("-")),
            status_cell(settings, &agent.status),
            Cell::new(&agent.transport),
            Cell::new(config_of(agent)),
            Cell::new(output::age(&agent.last_seen)),
        ];
        if wide {
            let health = match &agent.health {
                Some(h) if h.healthy => "healthy".to_string(),
                Some(h) => format!("unhealthy: {}", h.last_error),
                None => "-".into(),
            };
            row.extend([
                Cell::new(attr(agent, "service.version")),
                Cell::new(attr(agent, "host.name")),
                Cell::new(health),
                Cell::new(labels_text(&agent.labels)),
                Cell::new(agent.remote_addr.as_deref().unwrap_or("-")),
            ]);
        }
        t.add_row(row);
    }
    output::render(&t)
}

async fn list(settings: &Settings, client: &Client, args: &AgentsListArgs) -> Result<()> {
    let page = fetch(
        client,
        args.selector.as_deref(),
        args.status.map(|st| st.as_str()),
        args.limit,
        args.all,
    )
    .await?;
    output::show(settings, &page, |wide| {
        if page.items.is_empty() {
            return String::new();
        }
        list_table(settings, &page.items, wide)
    })?;
    if settings.human() {
        if page.items.is_empty() {
            output::info(settings, "no agents match");
        } else if page.next_cursor.is_some() {
            output::info(
                settings,
                format!(
                    "showing {} of {} agents: pass --all for every page, or --limit",
                    page.items.len(),
                    page.total
                ),
            );
        }
    }
    Ok(())
}

fn show_text(agent: &Agent) -> String {
    let mut lines = vec![
        format!("instance_uid:  {}", agent.instance_uid),
        format!("status:        {}", agent.status),
        format!("transport:     {}", agent.transport),
        format!(
            "remote_addr:   {}",
            agent.remote_addr.as_deref().unwrap_or("-")
        ),
        format!("first_seen:    {}", agent.first_seen),
        format!(
            "last_seen:     {} ({})",
            agent.last_seen,
            output::age(&agent.last_seen)
        ),
        format!("sequence_num:  {}", agent.sequence_num),
        format!("labels:        {}", labels_text(&agent.labels)),
        "identifying_attributes:".to_string(),
    ];
    for (k, v) in &agent.identifying_attributes {
        lines.push(format!(
            "  {k}: {}",
            v.as_str().map_or(v.to_string(), str::to_owned)
        ));
    }
    lines.push("non_identifying_attributes:".into());
    for (k, v) in &agent.non_identifying_attributes {
        lines.push(format!(
            "  {k}: {}",
            v.as_str().map_or(v.to_string(), str::to_owned)
        ));
    }
    lines.push(format!("capabilities:  {}", agent.capabilities.join(", ")));
    match &agent.health {
        Some(h) => lines.push(format!(
            "health:        {} {}{}",
            if h.healthy { "healthy" } else { "unhealthy" },
            h.status,
            if h.last_error.is_empty() {
                String::new()
            } else {
                format!(" (last error: {})", h.last_error)
            }
        )),
        None => lines.push("health:        -".into()),
    }
    lines.push(format!(
        "custom_capabilities: {}",
        if agent.custom_capabilities.is_empty() {
            "-".to_string()
        } else {
            agent.custom_capabilities.join(", ")
        }
    ));
    lines.push(match &agent.available_components {
        Some(list) => format!(
            "available_components: {} (hash {}; `opampctl agents components {}` lists them)",
            list.len(),
            agent.available_components_hash.as_deref().unwrap_or("-"),
            agent.instance_uid
        ),
        None => "available_components: - (none reported)".into(),
    });
    lines.push(format!(
        "effective_config_hash: {}",
        agent.effective_config_hash.as_deref().unwrap_or("-")
    ));
    let rc = &agent.remote_config;
    lines.push(format!(
        "remote_config: {} status={}{}",
        config_of(agent),
        rc.status,
        rc.error
            .as_deref()
            .map(|e| format!(" error={e}"))
            .unwrap_or_default()
    ));
    let cs = &agent.connection_settings;
    lines.push(format!(
        "connection_settings: {} status={}{}",
        cs.offered_hash.as_deref().map_or("-", short_hash),
        cs.status,
        cs.error
            .as_deref()
            .map(|e| format!(" error={e}"))
            .unwrap_or_default()
    ));
    lines.extend(package_lines(agent));
    lines.join("\n")
}

/// `packages:` and one line per package the agent reported.
fn package_lines(agent: &Agent) -> Vec<String> {
    let Some(reported) = &agent.packages else {
        return vec!["packages: - (none reported)".into()];
    };
    let mut lines = vec![format!(
        "packages: {} (offer {}){}",
        reported.packages.len(),
        reported
            .all_packages_hash
            .as_deref()
            .map_or("-", short_hash),
        reported
            .error
            .as_deref()
            .map(|e| format!(" error={e}"))
            .unwrap_or_default()
    )];
    for p in &reported.packages {
        let mut line = format!(
            "  {} {} status={}",
            p.name,
            p.agent_has_version.as_deref().unwrap_or("-"),
            p.status
        );
        if let Some(offered) = p
            .server_offered_version
            .as_deref()
            .filter(|v| Some(*v) != p.agent_has_version.as_deref())
        {
            line.push_str(&format!(" offered={offered}"));
        }
        if let Some(percent) = p.download_percent {
            line.push_str(&format!(" downloaded={percent:.0}%"));
        }
        if let Some(error) = &p.error {
            line.push_str(&format!(" error={error}"));
        }
        lines.push(line);
    }
    lines
}

/// The first 12 hex digits of a hash, as shown in text output.
fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

async fn show(settings: &Settings, client: &Client, uid: &str) -> Result<()> {
    let uid = agent_uid(client, uid).await?;
    let agent: Agent = client.get(&format!("/api/v1/agents/{}", enc(&uid))).await?;
    output::show(settings, &agent, |_| show_text(&agent))
}

fn components_table(settings: &Settings, list: &[AvailableComponent]) -> String {
    let mut t = output::table(settings, &["KIND", "TYPE/NAME", "VERSION"]);
    for c in list {
        t.add_row(vec![
            Cell::new(&c.kind),
            Cell::new(&c.name),
            Cell::new(c.version.as_deref().unwrap_or("-")),
        ]);
    }
    output::render(&t)
}

async fn components(settings: &Settings, client: &Client, uid: &str) -> Result<()> {
    let uid = agent_uid(client, uid).await?;
    let agent: Agent = client.get(&format!("/api/v1/agents/{}", enc(&uid))).await?;
    let Some(list) = &agent.available_components else {
        return Err(CtlError::failed(format!(
            "agent {} has reported no component list (it needs the ReportsAvailableComponents capability)",
            agent.instance_uid
        )));
    };
    output::show(settings, list, |_| components_table(settings, list))
}

/// Parses `k=v` (set) and `k-` (remove) arguments.
pub fn parse_labels(arguments: &[String]) -> Result<LabelPatch> {
    let mut labels = BTreeMap::new();
    for argument in arguments {
        if let Some((k, v)) = argument.split_once('=') {
            if k.trim().is_empty() {
                return Err(CtlError::usage(format!(
                    "label {argument:?} has no key: use key=value to set, key- to remove"
                )));
            }
            labels.insert(k.trim().to_string(), Some(v.to_string()));
        } else if let Some(k) = argument.strip_suffix('-').filter(|k| !k.is_empty()) {
            labels.insert(k.trim().to_string(), None);
        } else {
            return Err(CtlError::usage(format!(
                "label {argument:?} is neither key=value (set) nor key- (remove)"
            )));
        }
    }
    Ok(LabelPatch { labels })
}

/// Sets and removes labels of one agent (by its full uid).
async fn label_one(client: &Client, uid: &str, patch: &LabelPatch) -> Result<Agent> {
    let (_, agent) = client
        .send_json(
            Method::PATCH,
            &format!("/api/v1/agents/{}/labels", enc(uid)),
            patch,
        )
        .await?;
    Ok(agent)
}

/// Deletes one agent (by its full uid).
async fn delete_one(client: &Client, uid: &str, force: bool) -> Result<()> {
    let mut path = format!("/api/v1/agents/{}", enc(uid));
    if force {
        path.push_str("?force=true");
    }
    client.call(Method::DELETE, &path).await?;
    Ok(())
}

/// Asks one agent (by its full uid) to restart; the server's answer.
async fn restart_one(client: &Client, uid: &str) -> Result<serde_json::Value> {
    client
        .call(
            Method::POST,
            &format!("/api/v1/agents/{}/restart", enc(uid)),
        )
        .await
}

async fn label(settings: &Settings, client: &Client, uid: &str, labels: &[String]) -> Result<()> {
    let patch = parse_labels(labels)?;
    let uid = agent_uid(client, uid).await?;
    let agent = label_one(client, &uid, &patch).await?;
    if settings.human() {
        output::info(
            settings,
            format!(
                "agent {} labeled: {}",
                agent.instance_uid,
                labels_text(&agent.labels)
            ),
        );
        Ok(())
    } else {
        output::machine(settings, &agent)
    }
}

async fn delete(settings: &Settings, client: &Client, uid: &str, force: bool) -> Result<()> {
    let uid = agent_uid(client, uid).await?;
    delete_one(client, &uid, force).await?;
    if settings.human() {
        output::info(settings, format!("agent {uid} deleted"));
        Ok(())
    } else {
        output::machine(
            settings,
            &serde_json::json!({"instance_uid": uid, "deleted": true}),
        )
    }
}

async fn restart(settings: &Settings, client: &Client, uid: &str) -> Result<()> {
    let uid = agent_uid(client, uid).await?;
    let v = restart_one(client, &uid).await?;
    if settings.human() {
        let delivery = v["delivery"].as_str().unwrap_or("sent");
        output::info(settings, format!("restart of agent {uid}: {delivery}"));
        Ok(())
    } else {
        output::machine(settings, &v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_arguments() {
        let p = parse_labels(&["env=prod".into(), "team-".into(), "x=".into()]).unwrap();
        assert_eq!(p.labels["env"], Some("prod".into()));
        assert_eq!(p.labels["team"], None);
        assert_eq!(p.labels["x"], Some(String::new()));
        assert!(parse_labels(&["bare".into()]).is_err());
        assert!(parse_labels(&["=v".into()]).is_err());
        assert!(parse_labels(&["-".into()]).is_err());
    }
}
