//! `/api/v1/configurations…`: versioned configurations and their rollouts.
//!
//! Saving never distributes: a new version reaches agents only through
//! `POST …/rollout`. Every change is audited in the same transaction.

use super::{ApiError, ApiResult, ForceParam, Operator, Viewer};
use crate::app::App;
use crate::auth::insert_audit;
use crate::configs::{self as rules, BodyError};
use crate::rollouts;
use crate::selector::Selector;
use crate::store::configs::{self, ConfigRow, RolloutRow, VersionRow};
use crate::store::{now_ms, rfc3339};
use crate::targeting::version_hash;
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use opamp_proto::api::{
    ConfigDiff, ConfigVersion, Configuration, ConfigurationInput, Page, RollbackRequest,
    RolloutPlan, RolloutPlanAgent, RolloutRequest, RolloutResume, RolloutStatus,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Parses a JSON request body, or says what is wrong with it; an empty body
/// (or `null`) is `T::default()` when `optional`.
pub fn parse_body<T: DeserializeOwned + Default>(
    body: &Bytes,
    what: &str,
    optional: bool,
) -> ApiResult<T> {
    let blank = body.iter().all(u8::is_ascii_whitespace);
    if blank || (optional && body.trim_ascii() == b"null") {
        if optional {
            return Ok(T::default());
        }
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON {what}"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not a valid {what}: {e}")))
}

#[derive(Deserialize)]
pub struct PageParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

pub const MAX_PAGE: usize = 1000;

/// A page size between 1 and `max`, `default` when absent.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> ApiResult<usize> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}"
        )));
    }
    Ok(limit)
}

fn bad_cursor() -> ApiError {
    ApiError::bad_request("cursor is not one this server returned: pass next_cursor unchanged")
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("no configuration {name:?}"))
}

fn to_api(
    row: &ConfigRow,
    hash: String,
    rolled_out: Option<(u64, String)>,
    result: Option<&str>,
    body: Option<String>,
) -> Configuration {
    let (rolled_out_version, rolled_out_selector) = rolled_out.unzip();
    Configuration {
        name: row.name.clone(),
        version: row.latest_version,
        hash,
        content_type: row.content_type.clone(),
        selector: row.selector.clone(),
        description: row.description.clone(),
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
        created_by: row.created_by.clone(),
        rolled_out_version,
        rolled_out_selector,
        result: result.map(str::to_owned),
        body,
    }
}

fn version_to_api(v: VersionRow) -> ConfigVersion {
    ConfigVersion {
        name: v.name,
        version: v.version,
        hash: v.hash,
        content_type: v.content_type,
        body: v.body,
        created_at: rfc3339(v.created_at),
        created_by: v.created_by,
        note: v.note,
    }
}

/// The outcome of a write to a configuration.
struct Saved {
    config: Configuration,
    created_version: bool,
}

fn newest(c: &rusqlite::Connection, row: &ConfigRow) -> anyhow::Result<VersionRow> {
    configs::get_version(c, &row.name, row.latest_version)?
        .with_context(|| format!("configuration {} lacks its newest version", row.name))
}

pub async fn create(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Configuration>)> {
    let input: ConfigurationInput = parse_body(&body, "configuration", false)?;
    rules::check_name(&input.name).map_err(ApiError::bad_request)?;
    let content_type =
        rules::content_type(input.content_type.as_deref()).map_err(ApiError::bad_request)?;
    match rules::check_body(&content_type, &input.body) {
        Ok(()) => {}
        Err(BodyError::TooLarge(n)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "configuration body is {n} bytes; the limit is {} bytes (4 MiB)",
                    rules::MAX_BODY_BYTES
                ),
            ))
        }
        Err(BodyError::Invalid(m)) => return Err(ApiError::bad_request(m)),
    }
    let limit = app.config.opamp.max_send_bytes;
    let offer = crate::opamp::single_offer_len(&input.name, &content_type, &input.body);
    if offer > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "configuration {:?} would be offered in a {offer}-byte message, over opamp.max_send_bytes ({limit} bytes): no agent could receive it; shrink the body or raise opamp.max_send_bytes",
                input.name
            ),
        ));
    }
    let selector = match &input.selector {
        Some(s) => Some(
            Selector::parse(s)
                .map_err(|e| ApiError::bad_request(format!("selector: {e}")))?
                .to_string(),
        ),
        None => None,
    };
    if let Some(d) = &input.description {
        rules::check_description(d).map_err(ApiError::bad_request)?;
    }
    let name = input.name.clone();
    let actor = who.name.clone();
    let saved = app
        .store
        .write("config_save", move |c| {
            let now = now_ms();
            let hash = version_hash(&content_type, &input.body);
            let bytes = input.body.len();
            let Some(mut row) = configs::get(c, &input.name)? else {
                let row = ConfigRow {
                    name: input.name.clone(),
                    selector: selector.unwrap_or_default(),
                    description: input.description.unwrap_or_default(),
                    content_type: content_type.clone(),
                    latest_version: 1,
                    created_at: now,
                    updated_at: now,
                    created_by: Some(actor.clone()),
                };
                configs::insert(c, &row)?;
                configs::insert_version(
                    c,
                    &VersionRow {
                        name: row.name.clone(),
                        version: 1,
                        hash: hash.clone(),
                        content_type,
                        body: input.body,
                        created_at: now,
                        created_by: Some(actor.clone()),
                        note: None,
                    },
                )?;
                insert_audit(
                    c,
                    &actor,
                    "config.create",
                    Some(&row.name),
                    addr.as_deref(),
                    "ok",
                    &json!({"version": 1, "hash": hash, "selector": row.selector, "content_type": row.content_type, "bytes": bytes}),
                )?;
                return Ok(Saved {
                    config: to_api(&row, hash, None, Some("created"), None),
                    created_version: true,
                });
            };
            let latest = newest(c, &row)?;
            let body_changed = latest.body != input.body || latest.content_type != content_type;
            let old_selector = row.selector.clone();
            let selector_changed = selector.as_ref().is_some_and(|s| *s != row.selector);
            let description_changed = input
                .description
                .as_ref()
                .is_some_and(|d| *d != row.description);
            let rolled_out = configs::latest_rollout(c, &row.name)?.map(|r| (r.version, r.selector));
            if !body_changed && !selector_changed && !description_changed {
                return Ok(Saved {
                    config: to_api(&row, latest.hash, rolled_out, Some("unchanged"), None),
                    created_version: false,
                });
            }
            let mut hash_now = latest.hash.clone();
            if body_changed {
                row.latest_version += 1;
                row.content_type = content_type.clone();
                hash_now = hash.clone();
                configs::insert_version(
                    c,
                    &VersionRow {
                        name: row.name.clone(),
                        version: row.latest_version,
                        hash,
                        content_type,
                        body: input.body,
                        created_at: now,
                        created_by: Some(actor.clone()),
                        note: None,
                    },
                )?;
            }
            if let Some(s) = selector {
                row.selector = s;
            }
            if let Some(d) = input.description {
                row.description = d;
            }
            row.updated_at = now;
            configs::update(c, &row)?;
            let mut details = json!({
                "version": row.latest_version,
                "hash": hash_now,
                "new_version": body_changed,
            });
            if body_changed {
                details["bytes"] = json!(bytes);
            }
            if selector_changed {
                details["selector"] = json!({"from": old_selector, "to": row.selector});
            }
            if description_changed {
                details["description_changed"] = json!(true);
            }
            insert_audit(
                c,
                &actor,
                "config.update",
                Some(&row.name),
                addr.as_deref(),
                "ok",
                &details,
            )?;
            Ok(Saved {
                config: to_api(&row, hash_now, rolled_out, Some("updated"), None),
                created_version: body_changed,
            })
        })
        .await?;
    if saved.config.result.as_deref() != Some("unchanged") {
        tracing::info!(configuration = %name, version = saved.config.version, by = %who.name,
            result = saved.config.result.as_deref().unwrap_or(""), "configuration saved");
    }
    let status = if saved.created_version {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(saved.config)))
}

pub async fn list(
    State(app): State<Arc<App>>,
    _: Viewer,
    Query(q): Query<PageParams>,
) -> ApiResult<Json<Page<Configuration>>> {
    let limit = page_limit(q.limit, 100, MAX_PAGE)?;
    if let Some(c) = &q.cursor {
        rules::check_name(c).map_err(|_| bad_cursor())?;
    }
    let (mut rows, total) = app
        .store
        .read("configs_list", move |c| {
            configs::list(c, q.cursor.as_deref(), limit + 1)
        })
        .await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|l| l.row.name.clone())
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|l| to_api(&l.row, l.hash, l.rolled_out, None, None))
        .collect();
    Ok(Json(Page {
        items,
        next_cursor,
        total,
    }))
}

pub async fn show(
    State(app): State<Arc<App>>,
    _: Viewer,
    Path(name): Path<String>,
) -> ApiResult<Json<Configuration>> {
    let key = name.clone();
    let found = app
        .store
        .read("config_get", move |c| {
            let Some(row) = configs::get(c, &key)? else {
                return Ok(None);
            };
            let latest = newest(c, &row)?;
            let rolled = configs::latest_rollout(c, &key)?.map(|r| (r.version, r.selector));
            Ok(Some((row, latest, rolled)))
        })
        .await?;
    let (row, latest, rolled) = found.ok_or_else(|| not_found(&name))?;
    Ok(Json(to_api(
        &row,
        latest.hash,
        rolled,
        None,
        Some(latest.body),
    )))
}

pub async fn remove(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(name): Path<String>,
    Query(f): Query<ForceParam>,
) -> ApiResult<StatusCode> {
    let (key, actor) = (name.clone(), who.name.clone());
    let was_rolled_out = app
        .store
        .write("config_delete", move |c| {
            let Some(row) = configs::get(c, &key)? else {
                return Err(not_found(&key).into());
            };
            let rollout = configs::latest_rollout(c, &key)?;
            if let (Some(r), false) = (&rollout, f.force) {
                return Err(ApiError::conflict(format!(
                    "configuration {key:?} is rolled out (version {}, rollout {}): agents matching {:?} receive it; \
                     pass --force to delete it anyway (agents stop receiving it)",
                    r.version, r.state, r.selector
                ))
                .into());
            }
            configs::delete(c, &key)?;
            insert_audit(
                c,
                &actor,
                "config.delete",
                Some(&key),
                addr.as_deref(),
                "ok",
                &json!({"force": f.force, "versions": row.latest_version, "rolled_out_version": rollout.as_ref().map(|r| r.version)}),
            )?;
            Ok(rollout.is_some())
        })
        .await?;
    if was_rolled_out {
        rollouts::retarget(&app).await?;
    }
    tracing::info!(configuration = %name, by = %who.name, force = f.force, "configuration deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn versions(
    State(app): State<Arc<App>>,
    _: Viewer,
    Path(name): Path<String>,
    Query(q): Query<PageParams>,
) -> ApiResult<Json<Page<ConfigVersion>>> {
    let limit = page_limit(q.limit, 20, 100)?;
    let before = match &q.cursor {
        Some(c) => Some(c.parse::<u64>().map_err(|_| bad_cursor())?),
        None => None,
    };
    let key = name.clone();
    let found = app
        .store
        .read("config_versions", move |c| {
            if configs::get(c, &key)?.is_none() {
                return Ok(None);
            }
            Ok(Some(configs::list_versions(c, &key, before, limit + 1)?))
        })
        .await?;
    let (mut rows, total) = found.ok_or_else(|| not_found(&name))?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|v| v.version.to_string())
    } else {
        None
    };
    Ok(Json(Page {
        items: rows.into_iter().map(version_to_api).collect(),
        next_cursor,
        total,
    }))
}

fn parse_version(what: &str, v: &str) -> ApiResult<u64> {
    v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request(format!("{what} {v:?} is not a version number (1, 2, …)"))
    })
}

/// Loads a configuration and one of its versions, with errors that say which is missing.
async fn load_version(app: &App, name: &str, version: u64) -> ApiResult<VersionRow> {
    let key = name.to_string();
    let (row, v) = app
        .store
        .read("config_version", move |c| {
            let row = configs::get(c, &key)?;
            let v = configs::get_version(c, &key, version)?;
            Ok((row, v))
        })
        .await?;
    let row = row.ok_or_else(|| not_found(name))?;
    v.ok_or_else(|| {
        ApiError::not_found(format!(
            "configuration {name:?} has no version {version} (newest is {})",
            row.latest_version
        ))
    })
}

pub async fn version(
    State(app): State<Arc<App>>,
    _: Viewer,
    Path((name, n)): Path<(String, String)>,
) -> ApiResult<Json<ConfigVersion>> {
    let n = parse_version("version", &n)?;
    Ok(Json(version_to_api(load_version(&app, &name, n).await?)))
}

#[derive(Deserialize)]
pub struct DiffParams {
    from: Option<String>,
    to: Option<String>,
}

pub async fn diff(
    State(app): State<Arc<App>>,
    _: Viewer,
    Path(name): Path<String>,
    Query(q): Query<DiffParams>,
) -> ApiResult<Json<ConfigDiff>> {
    let key = name.clone();
    let row = app
        .store
        .read("config_get", move |c| configs::get(c, &key))
        .await?
        .ok_or_else(|| not_found(&name))?;
    let to = match q.to.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => parse_version("to", t)?,
        None => row.latest_version,
    };
    let from = match q.from.as_deref().filter(|s| !s.is_empty()) {
        Some(f) => parse_version("from", f)?,
        None => to.saturating_sub(1).max(1),
    };
    let a = load_version(&app, &name, from).await?;
    let b = load_version(&app, &name, to).await?;
    Ok(Json(ConfigDiff {
        diff: rules::unified_diff(&name, (from, &a.body), (to, &b.body)),
        name,
        from,
        to,
    }))
}

pub async fn rollback(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Configuration>)> {
    let req: RollbackRequest = parse_body(&body, "rollback request", true)?;
    let (key, actor) = (name.clone(), who.name.clone());
    let saved = app
        .store
        .write("config_rollback", move |c| {
            let Some(mut row) = configs::get(c, &key)? else {
                return Err(not_found(&key).into());
            };
            let newest_v = row.latest_version;
            let target = match req.version {
                Some(v) => v,
                None if newest_v > 1 => newest_v - 1,
                None => {
                    return Err(ApiError::conflict(format!(
                        "configuration {key:?} has only version 1: there is nothing to roll back to"
                    ))
                    .into())
                }
            };
            if target == newest_v {
                return Err(ApiError::conflict(format!(
                    "version {target} is already the newest version of {key:?}; name an older one"
                ))
                .into());
            }
            let Some(old) = configs::get_version(c, &key, target)? else {
                return Err(ApiError::not_found(format!(
                    "configuration {key:?} has no version {target} (newest is {newest_v})"
                ))
                .into());
            };
            let latest = newest(c, &row)?;
            let rolled_out = configs::latest_rollout(c, &key)?.map(|r| (r.version, r.selector));
            if old.body == latest.body && old.content_type == latest.content_type {
                return Ok(Saved {
                    config: to_api(&row, latest.hash, rolled_out, Some("unchanged"), None),
                    created_version: false,
                });
            }
            let now = now_ms();
            row.latest_version += 1;
            row.content_type = old.content_type.clone();
            row.updated_at = now;
            configs::insert_version(
                c,
                &VersionRow {
                    name: key.clone(),
                    version: row.latest_version,
                    hash: old.hash.clone(),
                    content_type: old.content_type,
                    body: old.body,
                    created_at: now,
                    created_by: Some(actor.clone()),
                    note: Some(format!("rollback of v{target}")),
                },
            )?;
            configs::update(c, &row)?;
            insert_audit(
                c,
                &actor,
                "config.rollback",
                Some(&key),
                addr.as_deref(),
                "ok",
                &json!({"rollback_of": target, "previous_newest": newest_v, "version": row.latest_version, "hash": old.hash}),
            )?;
            Ok(Saved {
                config: to_api(&row, old.hash, rolled_out, Some("updated"), None),
                created_version: true,
            })
        })
        .await?;
    let status = if saved.created_version {
        tracing::info!(configuration = %name, version = saved.config.version, by = %who.name, "configuration rolled back to an earlier body");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(saved.config)))
}

/// Largest batch size and failure allowance accepted.
const MAX_COUNT: u64 = 1_000_000_000;

/// Longest batch timeout accepted, in seconds.
const MAX_BATCH_TIMEOUT: u64 = 30 * 86_400;

/// Starts a rollout (202 and its status), or with `dry_run` says which
/// targeted agents lack which components (200 and a [`RolloutPlan`]).
pub async fn rollout_start(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: RolloutRequest = parse_body(&body, "rollout request", true)?;
    let batch_size = req.batch_size.unwrap_or(0);
    let max_failures = req.max_failures.unwrap_or(0);
    if batch_size > MAX_COUNT || max_failures > MAX_COUNT {
        return Err(ApiError::bad_request(format!(
            "batch_size and max_failures must be at most {MAX_COUNT}"
        )));
    }
    let batch_timeout = req
        .batch_timeout
        .unwrap_or(app.config.rollouts.batch_timeout_seconds);
    if batch_timeout > MAX_BATCH_TIMEOUT {
        return Err(ApiError::bad_request(format!(
            "batch_timeout is in seconds and must be at most {MAX_BATCH_TIMEOUT} (30 days); 0 waits for every report"
        )));
    }
    if req.version == Some(0) {
        return Err(ApiError::bad_request(
            "version 0 does not exist: versions start at 1",
        ));
    }
    let key = name.clone();
    let row = app
        .store
        .read("config_get", move |c| configs::get(c, &key))
        .await?
        .ok_or_else(|| not_found(&name))?;
    let version = req.version.unwrap_or(row.latest_version);
    let chosen = load_version(&app, &name, version).await?;
    let selector = Selector::parse(&row.selector).unwrap_or_default();
    let requires = crate::components::required(&chosen.body);
    let targeted = rollouts::matching_agents(&app, &selector, &requires).await?;
    let lacking = |t: &rollouts::Targeted| t.missing.as_ref().is_some_and(|m| !m.is_empty());
    if req.dry_run {
        let plan = RolloutPlan {
            name: name.clone(),
            version,
            components: requires.into_iter().collect(),
            incompatible: targeted.iter().filter(|t| lacking(t)).count() as u64,
            unknown: targeted.iter().filter(|t| t.missing.is_none()).count() as u64,
            agents: targeted
                .into_iter()
                .map(|t| RolloutPlanAgent {
                    components: match &t.missing {
                        None => "unknown",
                        Some(m) if m.is_empty() => "compatible",
                        Some(_) => "incompatible",
                    }
                    .into(),
                    missing: t.missing.unwrap_or_default(),
                    instance_uid: t.uid,
                })
                .collect(),
        };
        return Ok(Json(plan).into_response());
    }
    let force = req.force;
    let skipped: std::collections::HashSet<String> = targeted
        .iter()
        .filter(|t| !force && lacking(t))
        .map(|t| t.uid.clone())
        .collect();
    let matching: Vec<String> = targeted.into_iter().map(|t| t.uid).collect();
    let receiving: Vec<String> = matching
        .iter()
        .filter(|u| !skipped.contains(*u))
        .cloned()
        .collect();
    refuse_oversized(&app, &name, &chosen, &receiving).await?;
    let agents = rollouts::assign_batches(matching, batch_size, &skipped);
    let (key, actor) = (name.clone(), who.name.clone());
    let selector_text = row.selector.clone();
    let count = agents.len();
    let rollout = app
        .store
        .write("rollout_start", move |c| {
            let Some(v) = configs::get_version(c, &key, version)? else {
                return Err(not_found(&key).into());
            };
            let now = now_ms();
            let prior = configs::latest_rollout(c, &key)?;
            let previous_version = prior.as_ref().and_then(|p| {
                if p.state == "completed" {
                    Some(p.version)
                } else {
                    p.previous_version
                }
            });
            configs::supersede(c, &key, now)?;
            let row = RolloutRow {
                id: 0,
                name: key.clone(),
                version,
                hash: v.hash,
                state: if agents.is_empty() {
                    "completed"
                } else {
                    "running"
                }
                .into(),
                batch_size,
                max_failures,
                released_batches: 1,
                previous_version,
                reason: None,
                started_at: now,
                updated_at: now,
                started_by: Some(actor.clone()),
                selector: selector_text,
                force,
                batch_timeout_ms: batch_timeout * 1000,
                batch_started_at: now,
            };
            let id = configs::insert_rollout(c, &row, &agents)?;
            insert_audit(
                c,
                &actor,
                "rollout.start",
                Some(&key),
                addr.as_deref(),
                "ok",
                &json!({
                    "version": version,
                    "batch_size": batch_size,
                    "max_failures": max_failures,
                    "batch_timeout": batch_timeout,
                    "agents": agents.len(),
                    "skipped_incompatible": skipped.len(),
                    "force": force,
                    "selector": row.selector,
                    "superseded_version": prior.as_ref().map(|p| p.version),
                }),
            )?;
            Ok(RolloutRow { id, ..row })
        })
        .await?;
    tracing::info!(configuration = %name, version, agents = count, batch_size, max_failures, by = %who.name, "rollout started");
    rollouts::retarget(&app).await?;
    let p = rollouts::progress_of(&app, &rollout).await?;
    Ok((StatusCode::ACCEPTED, Json(rollouts::to_api(&rollout, p))).into_response())
}

/// Refuses (413) a rollout that would send an agent more than
/// `opamp.max_send_bytes`: all the configurations it would then run, together.
async fn refuse_oversized(
    app: &App,
    name: &str,
    version: &VersionRow,
    uids: &[String],
) -> ApiResult<()> {
    let Some(o) = rollouts::oversized_offer(app, name, version, uids).await? else {
        return Ok(());
    };
    let others = match o.agents {
        1 => String::new(),
        2 => " (and 1 other agent)".into(),
        n => format!(" (and {} other agents)", n - 1),
    };
    Err(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "rolling out {name:?} version {} would send agent {}{others} a {}-byte message \
             ({}), over opamp.max_send_bytes ({} bytes): no rollout started; shrink these \
             configurations, narrow their selectors, or raise opamp.max_send_bytes",
            version.version,
            o.instance_uid,
            o.bytes,
            o.configs.join(" + "),
            app.config.opamp.max_send_bytes
        ),
    ))
}

/// The latest rollout of a configuration.
async fn latest(app: &App, name: &str) -> ApiResult<RolloutRow> {
    let key = name.to_string();
    let (row, rollout) = app
        .store
        .read("rollout_get", move |c| {
            Ok((configs::get(c, &key)?, configs::latest_rollout(c, &key)?))
        })
        .await?;
    row.ok_or_else(|| not_found(name))?;
    rollout.ok_or_else(|| {
        ApiError::not_found(format!(
            "configuration {name:?} has not been rolled out: start one with `opampctl rollout start {name}`"
        ))
    })
}

pub async fn rollout_show(
    State(app): State<Arc<App>>,
    _: Viewer,
    Path(name): Path<String>,
) -> ApiResult<Json<RolloutStatus>> {
    let r = latest(&app, &name).await?;
    let p = rollouts::progress_of(&app, &r).await?;
    Ok(Json(rollouts::to_api(&r, p)))
}

pub async fn rollout_pause(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(name): Path<String>,
) -> ApiResult<Json<RolloutStatus>> {
    let r = latest(&app, &name).await?;
    if r.state != "running" {
        return Err(ApiError::conflict(format!(
            "the rollout of {name:?} version {} is {}; only a running rollout can be paused",
            r.version, r.state
        )));
    }
    let change = Transition {
        from: "running",
        to: "paused",
        max_failures: r.max_failures,
        reason: Some(format!("paused by {}", who.name)),
        action: "rollout.pause",
        details: json!({"version": r.version, "automatic": false}),
    };
    transition(&app, &r, &name, change, who.name.clone(), addr).await?;
    tracing::info!(configuration = %name, version = r.version, by = %who.name, "rollout paused");
    rollout_status(&app, r.id).await
}

/// A state change an operator asks for (pause, resume).
struct Transition {
    from: &'static str,
    to: &'static str,
    max_failures: u64,
    reason: Option<String>,
    action: &'static str,
    details: serde_json::Value,
}

/// Moves the rollout from `from` to `to` and audits it in the same write;
/// 409 if its state changed meanwhile.
async fn transition(
    app: &App,
    r: &configs::RolloutRow,
    name: &str,
    t: Transition,
    actor: String,
    addr: Option<String>,
) -> ApiResult<()> {
    let row = r.clone();
    let moved = app
        .store
        .write("rollout_transition", move |c| {
            let moved = configs::transition(
                c,
                row.id,
                t.from,
                t.to,
                row.released_batches,
                t.max_failures,
                t.reason.as_deref(),
            )?;
            if moved {
                insert_audit(
                    c,
                    &actor,
                    t.action,
                    Some(&row.name),
                    addr.as_deref(),
                    "ok",
                    &t.details,
                )?;
            }
            Ok(moved)
        })
        .await?;
    if !moved {
        return Err(ApiError::conflict(format!(
            "the rollout of {name:?} changed state meanwhile; check it with `opampctl rollout status {name}`"
        )));
    }
    Ok(())
}

async fn rollout_status(app: &App, id: i64) -> ApiResult<Json<RolloutStatus>> {
    let r = app
        .store
        .read("rollout_get", move |c| configs::get_rollout(c, id))
        .await?
        .ok_or_else(|| ApiError::not_found("the rollout was deleted meanwhile"))?;
    let p = rollouts::progress_of(app, &r).await?;
    Ok(Json(rollouts::to_api(&r, p)))
}

pub async fn rollout_resume(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<RolloutStatus>> {
    let req: RolloutResume = parse_body(&body, "resume request", true)?;
    let r = latest(&app, &name).await?;
    if r.state != "paused" {
        return Err(ApiError::conflict(format!(
            "the rollout of {name:?} version {} is {}; only a paused rollout can be resumed",
            r.version, r.state
        )));
    }
    let max_failures = req.max_failures.unwrap_or(r.max_failures);
    if max_failures > MAX_COUNT {
        return Err(ApiError::bad_request(format!(
            "max_failures must be at most {MAX_COUNT}"
        )));
    }
    let p = rollouts::progress_of(&app, &r).await?;
    if p.failed > max_failures {
        return Err(ApiError::conflict(format!(
            "{} agents failed to apply version {}, more than max_failures {max_failures}: \
             resume with `opampctl rollout resume {name} --max-failures {}` (or more) to go on, or roll out a fixed version",
            p.failed, r.version, p.failed
        )));
    }
    let change = Transition {
        from: "paused",
        to: "running",
        max_failures,
        reason: None,
        action: "rollout.resume",
        details: json!({"version": r.version, "max_failures": max_failures}),
    };
    transition(&app, &r, &name, change, who.name.clone(), addr).await?;
    tracing::info!(configuration = %name, version = r.version, max_failures, by = %who.name, "rollout resumed");
    app.rollout_wakeup.notify_one();
    rollout_status(&app, r.id).await
}
