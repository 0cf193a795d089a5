//! `/api/v1/configurations…`: versioned configurations and their rollouts.
//!
//! Saving never distributes: a new version reaches agents only through
//! `POST …/rollout`. Every change is audited in the same transaction.

use super::{ApiError, ApiResult, ForceParam, Operator, Viewer};
use crate::app::App;
use crate::configs::{self as rules, BodyError};
use crate::rollouts;
use crate::selector::Selector;
use crate::store::configs::{
    ConfigDelete, ConfigRollback, ConfigRow, ConfigSave, DeleteOutcome, RollbackOutcome,
    RolloutRow, RolloutStart, RolloutTransition, Saved, VersionRow,
};
use crate::store::rfc3339;
use crate::store::users::AuditEntry;
use crate::targeting::version_hash;
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

/// The API view of a saved configuration.
fn saved_to_api(saved: &Saved) -> Configuration {
    to_api(
        &saved.row,
        saved.hash.clone(),
        saved.rolled_out.clone(),
        Some(saved.result.as_str()),
        None,
    )
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
    let hash = version_hash(&content_type, &input.body);
    let saved = app
        .store
        .save_configuration(ConfigSave {
            name: input.name,
            content_type,
            body: input.body,
            hash,
            selector,
            description: input.description,
            actor: who.name.clone(),
            remote_addr: addr,
        })
        .await?;
    let saved = SavedView {
        config: saved_to_api(&saved),
        created_version: saved.created_version,
    };
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
        .list_configurations(q.cursor.clone(), limit + 1)
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
    let found = app.store.configuration_detail(&name).await?;
    let detail = found.ok_or_else(|| not_found(&name))?;
    let rolled = detail.rolled_out();
    Ok(Json(to_api(
        &detail.row,
        detail.newest.hash,
        rolled,
        None,
        Some(detail.newest.body),
    )))
}

pub async fn remove(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(name): Path<String>,
    Query(f): Query<ForceParam>,
) -> ApiResult<StatusCode> {
    let outcome = app
        .store
        .delete_configuration(ConfigDelete {
            name: name.clone(),
            force: f.force,
            actor: who.name.clone(),
            remote_addr: addr,
        })
        .await?;
    let was_rolled_out = match outcome {
        DeleteOutcome::Missing => return Err(not_found(&name)),
        DeleteOutcome::RolledOut(r) => {
            return Err(ApiError::conflict(format!(
                "configuration {name:?} is rolled out (version {}, rollout {}): agents matching {:?} receive it; \
                 pass --force to delete it anyway (agents stop receiving it)",
                r.version, r.state, r.selector
            )))
        }
        DeleteOutcome::Deleted { rolled_out } => rolled_out,
    };
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
    let found = app.store.config_versions(&name, before, limit + 1).await?;
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
    let (row, v) = app
        .store
        .config_version(name, version)
        .await?
        .ok_or_else(|| not_found(name))?;
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
    let row = app
        .store
        .configuration(&name)
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
    let outcome = app
        .store
        .rollback_configuration(ConfigRollback {
            name: name.clone(),
            version: req.version,
            actor: who.name.clone(),
            remote_addr: addr,
        })
        .await?;
    let saved = match outcome {
        RollbackOutcome::Missing => return Err(not_found(&name)),
        RollbackOutcome::NothingBefore => {
            return Err(ApiError::conflict(format!(
                "configuration {name:?} has only version 1: there is nothing to roll back to"
            )))
        }
        RollbackOutcome::AlreadyNewest(target) => {
            return Err(ApiError::conflict(format!(
                "version {target} is already the newest version of {name:?}; name an older one"
            )))
        }
        RollbackOutcome::NoSuchVersion { version, newest } => {
            return Err(ApiError::not_found(format!(
                "configuration {name:?} has no version {version} (newest is {newest})"
            )))
        }
        RollbackOutcome::Saved(saved) => SavedView {
            config: saved_to_api(&saved),
            created_version: saved.created_version,
        },
    };
    let status = if saved.created_version {
        tracing::info!(configuration = %name, version = saved.config.version, by = %who.name, "configuration rolled back to an earlier body");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(saved.config)))
}

/// Largest batch size and failure allowance accepted.
pub const MAX_COUNT: u64 = 1_000_000_000;

/// Longest batch timeout accepted, in seconds.
pub const MAX_BATCH_TIMEOUT: u64 = 30 * 86_400;

/// A rollout request's batch size, failure allowance and batch timeout
/// (seconds), with their defaults; 400 when one is out of range. The same
/// for configuration and package rollouts.
pub fn batch_settings(
    app: &App,
    batch_size: Option<u64>,
    max_failures: Option<u64>,
    batch_timeout: Option<u64>,
) -> ApiResult<(u64, u64, u64)> {
    let batch_size = batch_size.unwrap_or(0);
    let max_failures = max_failures.unwrap_or(0);
    if batch_size > MAX_COUNT || max_failures > MAX_COUNT {
        return Err(ApiError::bad_request(format!(
            "batch_size and max_failures must be at most {MAX_COUNT}"
        )));
    }
    let batch_timeout = batch_timeout.unwrap_or(app.config.rollouts.batch_timeout_seconds);
    if batch_timeout > MAX_BATCH_TIMEOUT {
        return Err(ApiError::bad_request(format!(
            "batch_timeout is in seconds and must be at most {MAX_BATCH_TIMEOUT} (30 days); 0 waits for every report"
        )));
    }
    Ok((batch_size, max_failures, batch_timeout))
}

/// The failure allowance a resume goes on with: the one asked for, else
/// the rollout's own; 400 when out of range.
pub fn resumed_allowance(asked: Option<u64>, current: u64) -> ApiResult<u64> {
    let max_failures = asked.unwrap_or(current);
    if max_failures > MAX_COUNT {
        return Err(ApiError::bad_request(format!(
            "max_failures must be at most {MAX_COUNT}"
        )));
    }
    Ok(max_failures)
}

/// Starts a rollout (202 and its status), or with `dry_run` says which
/// targeted agents lack which components (200 and a [`RolloutPlan`]).
pub async fn rollout_start(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: RolloutRequest = parse_body(&body, "rollout request", true)?;
    let (batch_size, max_failures, batch_timeout) =
        batch_settings(&app, req.batch_size, req.max_failures, req.batch_timeout)?;
    if req.version == Some(0) {
        return Err(ApiError::bad_request(
            "version 0 does not exist: versions start at 1",
        ));
    }
    let row = app
        .store
        .configuration(&name)
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
    let count = agents.len();
    let rollout = app
        .store
        .start_rollout(RolloutStart {
            name: name.clone(),
            version,
            batch_size,
            max_failures,
            batch_timeout,
            force,
            selector: row.selector.clone(),
            agents,
            skipped: skipped.len(),
            actor: who.name.clone(),
            remote_addr: addr,
        })
        .await?
        .ok_or_else(|| not_found(&name))?;
    tracing::info!(configuration = %name, version, agents = count, batch_size, max_failures, by = %who.name, "rollout started");
    rollouts::retarget(&app).await?;
    let p = rollouts::progress_of(&app, &rollout).await?;
    Ok((StatusCode::ACCEPTED, Json(rollouts::to_api(&rollout, p))).into_response())
}

/// A saved configuration and whether a version was added.
struct SavedView {
    config: Configuration,
    created_version: bool,
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
    let (_, rollout) = app
        .store
        .latest_rollout(name)
        .await?
        .ok_or_else(|| not_found(name))?;
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
    r: &RolloutRow,
    name: &str,
    t: Transition,
    actor: String,
    addr: Option<String>,
) -> ApiResult<()> {
    let moved = app
        .store
        .transition_rollout(RolloutTransition {
            id: r.id,
            from: t.from,
            to: t.to,
            released_batches: r.released_batches,
            max_failures: t.max_failures,
            reason: t.reason,
            audit: Some(AuditEntry::ok(
                &actor,
                t.action,
                Some(&r.name),
                addr.as_deref(),
                t.details,
            )),
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
        .rollout(id)
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
    let max_failures = resumed_allowance(req.max_failures, r.max_failures)?;
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
