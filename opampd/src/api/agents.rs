//! `/api/v1/agents…`: inventory, labels, restart, deletion.

use super::{ApiError, ApiResult, ForceParam, Operator, Viewer};
use crate::app::App;
use crate::cluster::Elsewhere;
use crate::fleet::Liveness;
use crate::selector::Selector;
use crate::store::agents::{AgentRow, ListQuery, UidFilter};
use crate::store::users::AuditEntry;
use crate::store::{json, now_ms, rfc3339};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use opamp_proto::api::{self, Agent, ConfigFile, LabelPatch, Page, RemoteConfigState};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Deserialize)]
pub struct ListParams {
    selector: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    /// Only agents whose uid starts with this: how opampctl resolves a uid prefix.
    uid_prefix: Option<String>,
}

pub const MAX_PAGE: usize = 1000;

pub async fn list(
    State(app): State<Arc<App>>,
    _: Viewer,
    Query(q): Query<ListParams>,
) -> ApiResult<Json<Page<Agent>>> {
    let selector = Selector::parse(q.selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("selector: {e}")))?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Liveness::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status must be connected, stale or disconnected, got {s:?}"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    if let Some(c) = &q.cursor {
        if uuid::Uuid::parse_str(c).is_err() {
            return Err(ApiError::bad_request(
                "cursor is not one this server returned: pass next_cursor unchanged",
            ));
        }
    }
    let uid_prefix = match q.uid_prefix.as_deref() {
        None => None,
        Some(p) => {
            let p = p.to_ascii_lowercase();
            if p.is_empty() || p.len() > 36 || !p.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            {
                return Err(ApiError::bad_request(format!(
                    "uid_prefix {p:?} is not the start of an instance uid: use 1-36 hex digits and dashes, like 0190c1e2"
                )));
            }
            Some(p)
        }
    };
    // The status filter is resolved like the STATUS column: this replica's
    // sessions, then the agents other replicas hold (PostgreSQL form).
    let (now, stale_after) = (now_ms(), app.stale_after_ms());
    let everywhere = match status {
        Some(_) => Some(app.cluster.elsewhere(&app, None).await?),
        None => None,
    };
    let uids = status.zip(everywhere.as_ref()).map(|(wanted, elsewhere)| {
        let keep = |l: Liveness| match wanted {
            Liveness::Disconnected => l != Liveness::Disconnected,
            _ => l == wanted,
        };
        let mut uids = app.fleet.uids_where(now, stale_after, keep);
        uids.extend(elsewhere.uids_where(&app.fleet, now, stale_after, keep));
        match wanted {
            Liveness::Disconnected => UidFilter::Except(uids),
            _ => UidFilter::Only(uids),
        }
    });
    let query = ListQuery {
        selector,
        uids,
        limit: limit + 1,
        after: q.cursor.clone(),
        uid_prefix,
    };
    let (mut rows, total) = app.store.list_agents(query).await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| r.uid.clone())
    } else {
        None
    };
    let elsewhere = match everywhere {
        Some(everywhere) => everywhere,
        None => {
            let page: Vec<String> = rows.iter().map(|r| r.uid.clone()).collect();
            app.cluster.elsewhere(&app, Some(&page)).await?
        }
    };
    let items = rows.iter().map(|r| to_api(&app, r, &elsewhere)).collect();
    Ok(Json(Page {
        items,
        next_cursor,
        total,
    }))
}

fn parse_uid(uid: &str) -> ApiResult<[u8; 16]> {
    opamp_proto::parse_uid(uid).ok_or_else(|| {
        ApiError::bad_request(format!("{uid:?} is not an instance uid: expected a UUID like 0190c1e2-7dec-71d0-a765-00a0c91e6bf6"))
    })
}

async fn load(app: &Arc<App>, uid: &[u8; 16]) -> ApiResult<AgentRow> {
    let id = opamp_proto::uid_string(uid);
    app.store
        .agent(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no agent {id}")))
}

pub async fn show(
    State(app): State<Arc<App>>,
    _: Viewer,
    Path(uid): Path<String>,
) -> ApiResult<Json<Agent>> {
    let uid = parse_uid(&uid)?;
    let row = load(&app, &uid).await?;
    let elsewhere = app
        .cluster
        .elsewhere(&app, Some(std::slice::from_ref(&row.uid)))
        .await?;
    let mut agent = to_api(&app, &row, &elsewhere);
    agent.available_components = app
        .components
        .get_hex(row.components_hash.as_deref())
        .map(|set| set.entries.clone());
    Ok(Json(agent))
}

pub async fn remove(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(uid): Path<String>,
    Query(f): Query<ForceParam>,
) -> ApiResult<StatusCode> {
    let uid = parse_uid(&uid)?;
    let id = opamp_proto::uid_string(&uid);
    let connected = app.fleet.contains(&uid) || app.cluster.held_elsewhere(&app, &uid).await;
    if connected && !f.force {
        return Err(ApiError::conflict(format!(
            "agent {id} is connected: it would come back at its next message; disconnect it first or pass --force"
        )));
    }
    app.cluster.deleted(&app, &uid).await;
    let audit = AuditEntry::ok(
        &who.name,
        "agent.delete",
        Some(&id),
        addr.as_deref(),
        json!({"force": f.force, "connected": connected}),
    );
    let deleted = app.store.delete_agent(&id, audit).await?;
    if !deleted {
        return Err(ApiError::not_found(format!("no agent {id}")));
    }
    tracing::info!(uid = %id, by = %who.name, "agent deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn valid_label_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && !v
            .chars()
            .any(|c| matches!(c, ',' | '=' | '!') || c.is_control())
        && v.trim() == v
}

pub async fn labels(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(uid): Path<String>,
    Json(body): Json<LabelPatch>,
) -> ApiResult<Json<Agent>> {
    let uid = parse_uid(&uid)?;
    for (k, v) in &body.labels {
        if k == crate::selector::COMPONENT_KEY {
            return Err(ApiError::bad_request(format!(
                "label key {k:?} is reserved: selectors use it for the agent's available components"
            )));
        }
        if !valid_label_key(k) {
            return Err(ApiError::bad_request(format!(
                "label key {k:?}: use 1-128 letters, digits, '.', '_', '-', '/'"
            )));
        }
        if let Some(v) = v {
            if !valid_label_value(v) {
                return Err(ApiError::bad_request(format!("label {k}: value {v:?} must be 1-256 characters without ',', '=', '!' or surrounding spaces")));
            }
        }
    }
    let id = opamp_proto::uid_string(&uid);
    let audit = AuditEntry::ok(
        &who.name,
        "agent.labels",
        Some(&id),
        addr.as_deref(),
        json!({"changes": body.labels}),
    );
    let labels = app
        .store
        .patch_labels(&id, body.labels, audit)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no agent {id}")))?;
    app.cluster.labels_changed(&app, &uid, labels).await;
    let row = load(&app, &uid).await?;
    let elsewhere = app
        .cluster
        .elsewhere(&app, Some(std::slice::from_ref(&row.uid)))
        .await?;
    Ok(Json(to_api(&app, &row, &elsewhere)))
}

pub async fn restart(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(uid): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let uid = parse_uid(&uid)?;
    let id = opamp_proto::uid_string(&uid);
    let row = load(&app, &uid).await?;
    if row.capabilities & opamp_proto::caps::ACCEPTS_RESTART_COMMAND == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_supported",
            format!(
                "agent {id} does not accept restart commands (no AcceptsRestartCommand capability)"
            ),
        ));
    }
    let delivery = app.cluster.restart(&app, &uid).await;
    let Some(delivery) = delivery else {
        return Err(ApiError::conflict(format!(
            "agent {id} is not connected; a restart can only be sent to a connected agent"
        )));
    };
    app.store
        .audit(AuditEntry::ok(
            &who.name,
            "agent.restart",
            Some(&id),
            addr.as_deref(),
            json!({"delivery": delivery}),
        ))
        .await?;
    tracing::info!(uid = %id, by = %who.name, %delivery, "restart command sent");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"instance_uid": id, "delivery": delivery})),
    ))
}

pub async fn effective_config(
    State(app): State<Arc<App>>,
    _: Viewer,
    Path(uid): Path<String>,
) -> ApiResult<Json<api::EffectiveConfig>> {
    let uid = parse_uid(&uid)?;
    let row = load(&app, &uid).await?;
    let files: Map<String, Value> =
        json::typed(row.effective_config.as_deref()).unwrap_or_default();
    let files = files
        .into_iter()
        .map(|(name, f)| {
            (
                name,
                ConfigFile {
                    content_type: f["content_type"].as_str().unwrap_or("").into(),
                    body: f["body"].as_str().unwrap_or("").into(),
                },
            )
        })
        .collect();
    Ok(Json(api::EffectiveConfig {
        instance_uid: row.uid,
        hash: row.effective_config_hash,
        files,
    }))
}

#[derive(Deserialize)]
pub struct EventParams {
    limit: Option<usize>,
}

pub async fn events(
    State(app): State<Arc<App>>,
    _: Viewer,
    Path(uid): Path<String>,
    Query(p): Query<EventParams>,
) -> ApiResult<Json<Value>> {
    let uid = parse_uid(&uid)?;
    let id = opamp_proto::uid_string(&uid);
    let limit = p.limit.unwrap_or(100).min(MAX_PAGE);
    let rows = app.store.agent_events(&id, limit).await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|(at, event, addr, details)| json!({"at": rfc3339(at), "event": event, "remote_addr": addr, "details": details}))
        .collect();
    Ok(Json(json!({"items": items})))
}

/// The API view of a stored agent, with live facts from this replica's
/// session, or from `elsewhere` for an agent another replica holds.
pub fn to_api(app: &App, r: &AgentRow, elsewhere: &Elsewhere) -> Agent {
    let uid = opamp_proto::parse_uid(&r.uid).unwrap_or([0; 16]);
    let (now, stale_after) = (now_ms(), app.stale_after_ms());
    let live = app.fleet.with(&uid, |s| {
        (
            s.last_seen(),
            s.transport().as_str(),
            Liveness::of(Some(s), now, stale_after),
        )
    });
    let live = live.or_else(|| {
        let (liveness, seen) = elsewhere.remote(&r.uid, now, stale_after)?;
        Some((seen, r.transport.as_str(), liveness))
    });
    let last_seen = live.map_or(r.last_seen, |(seen, _, _)| seen.max(r.last_seen));
    let status = live.map_or(Liveness::Disconnected, |(_, _, l)| l).as_str();
    let transport = live.map_or(r.transport.as_str(), |(_, t, _)| t);
    let obj = |t: &str| -> BTreeMap<String, Value> { json::object(t).into_iter().collect() };
    let health = json::typed::<api::Health>(r.health.as_deref());
    Agent {
        instance_uid: r.uid.clone(),
        status: status.into(),
        transport: transport.into(),
        identifying_attributes: obj(&r.identifying),
        non_identifying_attributes: obj(&r.non_identifying),
        labels: json::labels(&r.labels),
        capabilities: opamp_proto::caps::agent_capability_names(r.capabilities),
        health,
        effective_config_hash: r.effective_config_hash.clone(),
        remote_config: remote_config_state(r),
        connection_settings: crate::opamp::connection::api_state(r.connection_settings.as_deref()),
        packages: crate::opamp::packages::api_state(r.package_statuses.as_deref()),
        first_seen: rfc3339(r.first_seen),
        last_seen: rfc3339(last_seen),
        remote_addr: r.remote_addr.clone(),
        sequence_num: r.sequence_num,
        custom_capabilities: json::typed(r.custom_capabilities.as_deref()).unwrap_or_default(),
        available_components_hash: r.components_hash.clone(),
        available_components: None,
    }
}

fn remote_config_state(r: &AgentRow) -> RemoteConfigState {
    let offered = json::value(r.offered.as_deref());
    let reported = json::value(r.remote_status.as_deref());
    let reported_hash = reported["hash"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned);
    let reported_status = reported["status"].as_str().unwrap_or("unset");
    let error = reported["error"]
        .as_str()
        .filter(|e| !e.is_empty())
        .map(str::to_owned);
    let files = offered["files"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = files.iter().filter_map(|f| f["name"].as_str()).collect();
    let offered_hash = offered["hash"].as_str().map(str::to_owned);
    // An offer too big to send is recorded with the reason, never as made.
    let not_sent = offered["error"].as_str().map(str::to_owned);
    let status = match (&offered_hash, &reported_hash) {
        _ if not_sent.is_some() => "failed",
        (Some(o), Some(rh)) if o == rh => reported_status,
        (Some(_), _) => "pending",
        (None, _) => reported_status,
    };
    let error = not_sent.or(error);
    let applied = json::value(r.applied.as_deref());
    let running = match (applied["hash"].as_str(), &reported_hash) {
        (Some(a), Some(rh)) if a == rh => config_refs(&applied),
        _ => Vec::new(),
    };
    RemoteConfigState {
        name: (!names.is_empty()).then(|| names.join("+")),
        version: files.first().and_then(|f| f["version"].as_u64()),
        hash: offered_hash,
        status: status.into(),
        error: if status == "failed" { error } else { None },
        reported_hash,
        configs: config_refs(&offered),
        running,
    }
}

/// The `files` of an offered-record as configuration references.
fn config_refs(record: &Value) -> Vec<api::ConfigRef> {
    record["files"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .filter_map(|f| {
                    Some(api::ConfigRef {
                        name: f["name"].as_str()?.into(),
                        version: f["version"].as_u64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}
