//! `/api/v1/packages/{name}/rollout…`: staged package rollouts, as
//! `/api/v1/configurations/{name}/rollout…` for configurations (same JSON
//! style, same states, same resume rule); the engine is
//! [`crate::packages::rollout`]. Operator role; every change audited.

use super::configs::{batch_settings, parse_body, resumed_allowance};
use super::{ApiError, ApiResult, Operator, Viewer};
use crate::app::App;
use crate::packages::rollout::{self as engine, version_of, Candidate};
use crate::rollouts::assign_batches;
use crate::selector::Selector;
use crate::store::configs::RolloutTransition;
use crate::store::package_rollouts::{PackageRolloutRow, PackageRolloutStart};
use crate::store::users::AuditEntry;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use opamp_proto::api::{
    PackagePlanAgent, PackageRolloutPlan, PackageRolloutRequest, PackageRolloutStatus,
    RolloutResume,
};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;

/// Starts a package rollout (202 and its status), or with `dry_run` says
/// which agents would get which file (200 and a [`PackageRolloutPlan`]).
pub async fn start(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: PackageRolloutRequest = parse_body(&body, "package rollout request", true)?;
    let (batch_size, max_failures, batch_timeout) =
        batch_settings(&app, req.batch_size, req.max_failures, req.batch_timeout)?;
    let selector_text = req.selector.clone().unwrap_or_default();
    let selector = Selector::parse(&selector_text)
        .map_err(|e| ApiError::bad_request(format!("selector {selector_text:?}: {e}")))?;
    let versions = app.store.packages(Some(name.clone())).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!(
            "no package {name:?} in the catalogue: add it with `opampctl packages add {name} VERSION …`"
        )));
    }
    let row = match &req.version {
        Some(v) => versions.iter().find(|r| &r.version == v).ok_or_else(|| {
            ApiError::not_found(format!(
                "package {name:?} has no version {v:?}: `opampctl packages list {name}` shows the versions"
            ))
        })?,
        None => versions
            .iter()
            .max_by(|a, b| crate::packages::compare_versions(&a.version, &b.version))
            .expect("not empty"),
    };
    let version = version_of(&app.hosted, row);
    let candidates = engine::candidates(&app, &selector).await?;
    let placed: Vec<(Candidate, Result<String, String>)> = candidates
        .into_iter()
        .map(|c| {
            let file = c
                .placement(&version)
                .map(|f| format!("{}/{}", f.os, f.arch));
            (c, file)
        })
        .collect();
    let skipped: HashSet<String> = placed
        .iter()
        .filter(|(_, f)| f.is_err())
        .map(|(c, _)| c.uid.clone())
        .collect();
    let agents = assign_batches(
        placed.iter().map(|(c, _)| c.uid.clone()).collect(),
        batch_size,
        &skipped,
    );
    if req.dry_run {
        let plan = PackageRolloutPlan {
            name: name.clone(),
            version: version.version.clone(),
            selector: selector_text,
            offered: (placed.len() - skipped.len()) as u64,
            skipped: skipped.len() as u64,
            batches: agents
                .iter()
                .filter(|(uid, _)| !skipped.contains(uid))
                .map(|(_, b)| b + 1)
                .max()
                .unwrap_or(0),
            agents: placed
                .into_iter()
                .zip(&agents)
                .map(|((c, file), (_, batch))| {
                    let url = file
                        .as_ref()
                        .ok()
                        .and_then(|_| c.placement(&version).ok().map(|f| f.url.clone()));
                    PackagePlanAgent {
                        platform: c.platform(),
                        batch: file.is_ok().then_some(*batch),
                        url,
                        reason: file.as_ref().err().cloned(),
                        file: file.ok(),
                        instance_uid: c.uid,
                    }
                })
                .collect(),
        };
        return Ok(Json(plan).into_response());
    }
    let count = agents.len();
    let rollout = app
        .store
        .start_package_rollout(PackageRolloutStart {
            name: name.clone(),
            version: version.version.clone(),
            batch_size,
            max_failures,
            batch_timeout,
            selector: selector_text,
            agents,
            skipped: skipped.len(),
            actor: who.name.clone(),
            remote_addr: addr,
        })
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "package {name:?} version {:?} was deleted meanwhile",
                version.version
            ))
        })?;
    tracing::info!(package = %name, version = %version.version, agents = count, skipped = skipped.len(), batch_size, max_failures, by = %who.name, "package rollout started");
    crate::rollouts::retarget(&app).await?;
    Ok((StatusCode::ACCEPTED, Json(status_of(&app, &rollout).await?)).into_response())
}

/// The latest rollout of a package.
async fn latest(app: &App, name: &str) -> ApiResult<PackageRolloutRow> {
    app.store
        .latest_package_rollout(name)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "package {name:?} has not been rolled out: start one with `opampctl packages rollout start {name}`"
            ))
        })
}

async fn status_of(app: &App, r: &PackageRolloutRow) -> ApiResult<PackageRolloutStatus> {
    let (p, agents) = engine::progress_of(app, r).await?;
    Ok(engine::to_api(r, p, agents))
}

pub async fn show(
    State(app): State<Arc<App>>,
    _: Viewer,
    Path(name): Path<String>,
) -> ApiResult<Json<PackageRolloutStatus>> {
    let r = latest(&app, &name).await?;
    Ok(Json(status_of(&app, &r).await?))
}

pub async fn pause(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(name): Path<String>,
) -> ApiResult<Json<PackageRolloutStatus>> {
    let r = latest(&app, &name).await?;
    if r.state != "running" {
        return Err(ApiError::conflict(format!(
            "the rollout of package {name:?} version {} is {}; only a running rollout can be paused",
            r.version, r.state
        )));
    }
    let change = RolloutTransition {
        id: r.id,
        from: "running",
        to: "paused",
        released_batches: r.released_batches,
        max_failures: r.max_failures,
        reason: Some(format!("paused by {}", who.name)),
        audit: Some(AuditEntry::ok(
            &who.name,
            "package.rollout.pause",
            Some(&format!("{name}/{}", r.version)),
            addr.as_deref(),
            json!({"automatic": false}),
        )),
    };
    moved(&app, &name, change).await?;
    tracing::info!(package = %name, version = %r.version, by = %who.name, "package rollout paused");
    reread(&app, r.id).await
}

pub async fn resume(
    State(app): State<Arc<App>>,
    Operator(who, addr): Operator,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<PackageRolloutStatus>> {
    let req: RolloutResume = parse_body(&body, "resume request", true)?;
    let r = latest(&app, &name).await?;
    if r.state != "paused" {
        return Err(ApiError::conflict(format!(
            "the rollout of package {name:?} version {} is {}; only a paused rollout can be resumed",
            r.version, r.state
        )));
    }
    let max_failures = resumed_allowance(req.max_failures, r.max_failures)?;
    let (p, _) = engine::progress_of(&app, &r).await?;
    if p.failed > max_failures {
        return Err(ApiError::conflict(format!(
            "{} agents failed to install {name} {}, more than max_failures {max_failures}: \
             resume with `opampctl packages rollout resume {name} --max-failures {}` (or more) to go on, \
             or roll out a fixed version",
            p.failed, r.version, p.failed
        )));
    }
    let change = RolloutTransition {
        id: r.id,
        from: "paused",
        to: "running",
        released_batches: r.released_batches,
        max_failures,
        reason: None,
        audit: Some(AuditEntry::ok(
            &who.name,
            "package.rollout.resume",
            Some(&format!("{name}/{}", r.version)),
            addr.as_deref(),
            json!({"max_failures": max_failures}),
        )),
    };
    moved(&app, &name, change).await?;
    tracing::info!(package = %name, version = %r.version, max_failures, by = %who.name, "package rollout resumed");
    reread(&app, r.id).await
}

/// Applies an operator's state change; 409 if the state changed meanwhile.
/// Every replica rebuilds its targets (and rollout gauges).
async fn moved(app: &App, name: &str, change: RolloutTransition) -> ApiResult<()> {
    if !app.store.transition_package_rollout(change).await? {
        return Err(ApiError::conflict(format!(
            "the rollout of package {name:?} changed state meanwhile; check it with `opampctl packages rollout status {name}`"
        )));
    }
    crate::rollouts::retarget(app).await?;
    Ok(())
}

async fn reread(app: &App, id: i64) -> ApiResult<Json<PackageRolloutStatus>> {
    let r = app
        .store
        .package_rollout(id)
        .await?
        .ok_or_else(|| ApiError::not_found("the rollout was deleted meanwhile"))?;
    Ok(Json(status_of(app, &r).await?))
}
