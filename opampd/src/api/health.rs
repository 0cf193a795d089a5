//! `/health`, `/health/ready`, `/health/live` and `/metrics`: open, cheap, never slow.
//!
//! `/health` answers everybody, but only a caller with an operator token
//! (any role) sees the database path and the raw text of a write error;
//! without one the error is reduced to its kind (disk full, read-only, I/O).

use crate::app::App;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use opamp_proto::api::{AgentCounts, DatabaseCheck, HealthReport, PoolUsage};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn live() -> Response {
    (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response()
}

pub async fn ready(State(app): State<Arc<App>>) -> Response {
    let (status, word) = if app.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !app.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    } else {
        (StatusCode::OK, "ready")
    };
    let replica = &app.metrics.replica().id;
    (
        status,
        Json(serde_json::json!({"status": word, "replica_id": replica})),
    )
        .into_response()
}

pub async fn health(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let bearer = crate::auth::bearer_token(&headers);
    let detailed = bearer.is_some() && app.auth.authenticate(&app.store, bearer).await.is_ok();
    let start = Instant::now();
    let probe = app.store.probe();
    let db_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(()))
    );
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    let write_error = app.store.last_error().map(|e| {
        if detailed {
            e
        } else {
            error_kind(&e).to_string()
        }
    });
    let mut problems = Vec::new();
    if !db_ok {
        problems.push("database does not answer reads".to_string());
    }
    if let Some(e) = &write_error {
        problems.push(format!("database writes failing: {e}"));
    }
    let draining = app.draining.load(Ordering::Relaxed);
    if draining {
        problems.push("draining for shutdown".into());
    }
    let status = if !db_ok {
        "down"
    } else if write_error.is_some() || draining {
        "degraded"
    } else {
        "ok"
    };
    let pool = app.store.pool_stats();
    let m = &app.metrics.agents;
    let report = HealthReport {
        status: status.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        replica_id: app.metrics.replica().id.clone(),
        uptime_seconds: app.started.elapsed().as_secs(),
        ready: app.ready.load(Ordering::Relaxed),
        draining,
        database: DatabaseCheck {
            status: if !db_ok {
                "down"
            } else if write_error.is_some() {
                "degraded"
            } else {
                "ok"
            }
            .into(),
            backend: app.metrics.replica().backend.into(),
            latency_ms,
            schema_version: crate::store::SCHEMA_VERSION,
            path: if detailed {
                app.store.location().to_string()
            } else {
                String::new()
            },
            writer_queue: app.store.queued(),
            last_write_error: write_error,
        },
        agents: AgentCounts {
            connected: m.connected.load(Ordering::Relaxed).max(0) as u64,
            stale: m.stale.load(Ordering::Relaxed).max(0) as u64,
            disconnected: m.disconnected.load(Ordering::Relaxed).max(0) as u64,
            total: m.total.load(Ordering::Relaxed).max(0) as u64,
        },
        pool: PoolUsage {
            max_open: pool.max_open as u64,
            open: pool.open as u64,
            in_use: (pool.open - pool.idle) as u64,
            idle: pool.idle as u64,
            waits_total: pool.waits,
        },
        problems,
    };
    let code = if status == "down" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(report)).into_response()
}

/// The kind of a database write error, without paths or other detail.
fn error_kind(raw: &str) -> &'static str {
    let raw = raw.to_ascii_lowercase();
    if raw.contains("full") {
        "database or disk is full"
    } else if raw.contains("readonly") || raw.contains("read-only") || raw.contains("read only") {
        "the database is read-only"
    } else if raw.contains("i/o") || raw.contains("ioerr") {
        "disk I/O error"
    } else if raw.contains("locked") || raw.contains("busy") {
        "the database is locked"
    } else {
        "write failed (details in the opampd log, or /health with a token)"
    }
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let body = app.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
