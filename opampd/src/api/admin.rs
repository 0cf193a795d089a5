//! `/api/v1/admin/…`: backup stream, restore upload, log stream, database
//! statistics and optimisation, memory report. Admin role only.
//!
//! Temporary files live in the data directory, never in /tmp: a snapshot is
//! as large as the database, and the data directory is where the operator
//! made room for it (and where a restore's rename stays on one file system).

use super::{Admin, ApiError, ApiResult};
use crate::app::App;
use crate::logring::LogLine;
use crate::opamp::reply::{Answer, Reply};
use crate::opamp::session::Session;
use crate::store::sqlite::{dbfile, schema};
use crate::store::users::AuditEntry;
use crate::store::{dump, now_ms, Location};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use futures_util::StreamExt;
use opamp_proto::api::{DbOptimizeReport, DbStats, MemoryReport, RestoreReport};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest database a restore accepts (the route's body limit).
pub const RESTORE_MAX_BYTES: usize = 16 << 30;

/// A unique temporary path in the data directory.
fn temp_path(app: &App, what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    app.config.data_dir.join(format!(
        ".{what}-{}-{}-{n}.tmp",
        std::process::id(),
        now_ms()
    ))
}

/// Removes the file when dropped, unless disarmed.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(format!("{}-journal", p.display()));
        }
    }
}

/// `GET /api/v1/admin/backup`: one consistent snapshot of the database: a
/// SQLite file, or on PostgreSQL opampd's SQL dump (`store/dump.rs`). The
/// header `x-opampd-backup-format` says which (`sqlite`, `postgresql-dump`).
pub async fn backup(State(app): State<Arc<App>>, Admin(who, addr): Admin) -> ApiResult<Response> {
    let tmp = temp_path(&app, "backup");
    let guard = TempFile(Some(tmp.clone()));
    app.store.backup_to(tmp.clone()).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "backup_failed",
            format!("the snapshot could not be written to the data directory ({e:#}); check free space with `df` and see the opampd log"),
        )
    })?;
    let file = tokio::fs::File::open(&tmp)
        .await
        .map_err(ApiError::internal)?;
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    // Unlinked now, read through the open handle: nothing is left behind even
    // if the client goes away mid-stream.
    drop(guard);
    app.store
        .audit(AuditEntry::ok(
            &who.name,
            "db.backup",
            None,
            addr.as_deref(),
            json!({"bytes": len}),
        ))
        .await?;
    tracing::info!(by = %who.name, bytes = len, "database backup streamed");
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let format = BackupFormat::of(&app);
    let name = format!(
        "opamp_{}.{}",
        chrono::Utc::now().format("%Y%m%d_%H%M%S"),
        format.extension()
    );
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(
        "x-opampd-backup-format",
        HeaderValue::from_static(format.name()),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        "x-opampd-schema-version",
        HeaderValue::from(schema::SCHEMA_VERSION),
    );
    Ok(r)
}

/// `POST /api/v1/admin/restore`: the body is a SQLite database (an opampd
/// backup, uncompressed). Checked and migrated as a private copy before
/// anything is touched; the current database is kept aside first. Every
/// attempt is audited: ok, refused (a bad upload) or failed.
pub async fn restore(
    State(app): State<Arc<App>>,
    Admin(who, addr): Admin,
    body: Body,
) -> ApiResult<Json<RestoreReport>> {
    let result = restore_upload(&app, &who.name, body).await;
    let (outcome, details) = match &result {
        Ok(report) => (
            "ok",
            json!({"bytes": report.bytes, "schema_version": report.restored_schema_version, "kept_aside": report.kept_aside, "live_agents_added": report.live_agents_added}),
        ),
        Err(e) if e.status.is_client_error() => ("refused", json!({"error": e.message})),
        Err(e) => ("failed", json!({"error": e.message})),
    };
    app.store
        .audit(AuditEntry {
            actor: who.name.clone(),
            action: "db.restore".into(),
            target: None,
            remote_addr: addr,
            outcome: outcome.into(),
            details,
        })
        .await?;
    result.map(Json)
}

async fn restore_upload(app: &Arc<App>, who: &str, body: Body) -> ApiResult<RestoreReport> {
    let tmp = temp_path(app, "restore");
    let _guard = TempFile(Some(tmp.clone()));
    let size = receive(&tmp, body).await?;
    if size == 0 {
        return Err(ApiError::bad_request(
            "the request body is empty: send the database file (opampctl restore FILE does this)",
        ));
    }
    let refused = |reason: &dbfile::Refused| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_backup",
            format!("the uploaded file cannot be restored: {reason}; nothing was changed"),
        )
    };
    let format = BackupFormat::of(app);
    let uploaded = BackupFormat::sniff(&tmp).await;
    if uploaded != Some(format) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_backup",
            format!(
                "the uploaded file cannot be restored: {}; nothing was changed",
                format.mismatch(uploaded)
            ),
        ));
    }
    let candidate = tmp.clone();
    let version = match format {
        BackupFormat::Sqlite => tokio::task::spawn_blocking(move || dbfile::check(&candidate))
            .await
            .map_err(ApiError::internal)?
            .map_err(|reason| refused(&reason))?,
        BackupFormat::PostgresDump => {
            crate::store::postgres::dump::check(&candidate)
                .await
                .map_err(|e| match e.downcast_ref::<dump::Refused>() {
                    Some(reason) => refused(&dbfile::Refused(reason.0.clone())),
                    None => ApiError::internal(e),
                })?
                .schema_version
        }
    };
    let keep_aside = match format {
        BackupFormat::Sqlite => dbfile::keep_aside_path(&app.config.data_dir, chrono::Utc::now()),
        BackupFormat::PostgresDump => {
            dump::keep_aside_path(&app.config.data_dir, chrono::Utc::now())
        }
    };
    let fleet_app = app.clone();
    let live_agents_added = app
        .store
        .restore_from(
            tmp.clone(),
            keep_aside.clone(),
            Box::new(move || fleet_app.fleet.live_agents()),
        )
        .await
        .map_err(|e| {
            if let Some(reason) = e.downcast_ref::<dbfile::Refused>() {
                return refused(reason);
            }
            if let Some(reason) = e.downcast_ref::<dump::Refused>() {
                return refused(&dbfile::Refused(reason.0.clone()));
            }
            tracing::error!(error = %format!("{e:#}"), "restore failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "restore_failed",
                format!("the restore failed ({e:#}); the previous database is kept as {} if it was written", keep_aside.display()),
            )
        })?;
    let notified = after_restore(app).await;
    // The other replicas forget what their agents reported and rebuild too.
    app.cluster.restored().await;
    tracing::warn!(by = %who, bytes = size, kept_aside = %keep_aside.display(), agents_notified = notified, live_agents_added, "database restored from an uploaded backup");
    Ok(RestoreReport {
        kept_aside: keep_aside.display().to_string(),
        schema_version: schema::SCHEMA_VERSION,
        restored_schema_version: version,
        bytes: size,
        agents_notified: notified,
        live_agents_added,
        package_files_restored: 0,
    })
}

/// What a backup is: a SQLite file, or opampd's PostgreSQL dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackupFormat {
    Sqlite,
    PostgresDump,
}

impl BackupFormat {
    /// The format of this server's backups.
    fn of(app: &App) -> BackupFormat {
        match app.store.location() {
            Location::File(_) => BackupFormat::Sqlite,
            Location::Database(_) => BackupFormat::PostgresDump,
        }
    }

    /// The format of an uploaded file, by its first bytes.
    async fn sniff(path: &Path) -> Option<BackupFormat> {
        let mut head = [0u8; 64];
        let mut file = tokio::fs::File::open(path).await.ok()?;
        let mut filled = 0;
        while filled < head.len() {
            match file.read(&mut head[filled..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        let head = &head[..filled];
        if head.starts_with(dbfile::SQLITE_MAGIC) {
            Some(BackupFormat::Sqlite)
        } else if head.starts_with(dump::MAGIC.as_bytes()) {
            Some(BackupFormat::PostgresDump)
        } else {
            None
        }
    }

    /// `x-opampd-backup-format`.
    fn name(self) -> &'static str {
        match self {
            BackupFormat::Sqlite => "sqlite",
            BackupFormat::PostgresDump => "postgresql-dump",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            BackupFormat::Sqlite => "db",
            BackupFormat::PostgresDump => "sql",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            BackupFormat::Sqlite => "application/vnd.sqlite3",
            BackupFormat::PostgresDump => "application/sql",
        }
    }

    /// Why an upload of format `uploaded` does not fit this server.
    fn mismatch(self, uploaded: Option<BackupFormat>) -> &'static str {
        match (self, uploaded) {
            (_, None) => "it is neither a SQLite database nor an opampd PostgreSQL dump (wrong file header)",
            (BackupFormat::Sqlite, Some(_)) => "it is a PostgreSQL dump and this opampd keeps its data in SQLite: restore it into a deployment on PostgreSQL (or load it with psql)",
            (BackupFormat::PostgresDump, Some(_)) => "it is a SQLite database and this opampd keeps its data in PostgreSQL: move a SQLite deployment with `opampctl db migrate --from-sqlite DATA_DIR --to URL`",
        }
    }
}

/// Streams the request body into `path`; returns its size.
async fn receive(path: &Path, body: Body) -> ApiResult<u64> {
    let mut file = tokio::fs::File::create(path).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("cannot create a temporary file in the data directory: {e}"),
        )
    })?;
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!(
                "the upload was interrupted or exceeds {} bytes: {e}",
                RESTORE_MAX_BYTES
            ))
        })?;
        size += chunk.len() as u64;
        if size > RESTORE_MAX_BYTES as u64 {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a restore is limited to {RESTORE_MAX_BYTES} bytes"),
            ));
        }
        file.write_all(&chunk).await.map_err(|e| {
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage",
                format!("cannot write the upload to the data directory (disk full?): {e}"),
            )
        })?;
    }
    file.sync_all().await.map_err(ApiError::internal)?;
    Ok(size)
}

/// After a restore every live agent must report its full state again, and
/// cached API tokens may no longer exist. Run by the replica that restored
/// and, on PostgreSQL, by every other one when it hears of it.
pub(crate) async fn after_restore(app: &Arc<App>) -> u64 {
    app.auth.invalidate_tokens();
    let uids = app.fleet.uids();
    let mut notified = 0;
    for uid in uids {
        // Labels come from the restored rows; the agent reports the rest.
        let id = opamp_proto::uid_string(&uid);
        let row = app.store.agent(&id).await.ok().flatten();
        let push = app.fleet.with(&uid, |s: &mut Session| {
            // The stored state may now differ from what the agent runs: forget
            // it, so the next message (or the push below) asks for all of it.
            s.forget_reports(
                row.as_ref()
                    .map(|r| crate::store::json::labels(&r.labels))
                    .unwrap_or_default(),
            );
            s.pushable().then_some(s.conn_id())
        });
        if let Some(Some(conn_id)) = push {
            let msg = Reply::answer(
                uid.to_vec(),
                Answer {
                    flags: opamp_proto::caps::FLAG_REPORT_FULL_STATE,
                    ..Default::default()
                },
            );
            if app
                .fleet
                .send_to_conn(conn_id, crate::fleet::Outgoing::Message(Box::new(msg)))
            {
                notified += 1;
            }
        }
    }
    // Configurations, rollouts and component lists come from the restored database too.
    if let Err(e) = app.components.load(&app.store).await {
        tracing::error!(error = %format!("{e:#}"), "after the restore: cannot read the component lists");
    }
    if let Err(e) = crate::rollouts::retarget(app).await {
        tracing::error!(error = %format!("{e:#}"), "after the restore: cannot rebuild the configuration targets");
    }
    // Counts and gauges describe the restored inventory from now on.
    crate::app::refresh_agent_gauges(app).await;
    notified
}

#[derive(Deserialize)]
pub struct LogParams {
    n: Option<usize>,
    level: Option<String>,
    grep: Option<String>,
    #[serde(default)]
    follow: bool,
}

fn level_rank(level: &str) -> Option<u8> {
    Some(match level.to_ascii_lowercase().as_str() {
        "error" => 0,
        "warn" | "warning" => 1,
        "info" => 2,
        "debug" => 3,
        "trace" => 4,
        _ => return None,
    })
}

/// Which lines a log request wants.
#[derive(Clone)]
struct LogFilter {
    max_rank: u8,
    grep: Option<String>,
}

impl LogFilter {
    fn keep(&self, l: &LogLine) -> bool {
        level_rank(l.level).unwrap_or(4) <= self.max_rank
            && self.grep.as_deref().is_none_or(|g| l.text().contains(g))
    }
}

fn ndjson(l: &LogLine) -> bytes::Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    bytes::Bytes::from(v)
}

/// `GET /api/v1/admin/logs?n=&level=&grep=&follow=`: JSON lines from the ring,
/// then (with `follow`) new lines until the client goes away.
pub async fn logs(
    State(app): State<Arc<App>>,
    _: Admin,
    Query(p): Query<LogParams>,
) -> ApiResult<Response> {
    let max_rank = match p.level.as_deref() {
        None | Some("") => 4,
        Some(l) => level_rank(l).ok_or_else(|| {
            ApiError::bad_request(format!(
                "level must be error, warn, info, debug or trace, got {l:?}"
            ))
        })?,
    };
    let filter = LogFilter {
        max_rank,
        grep: p.grep.filter(|g| !g.is_empty()),
    };
    let n = p.n.unwrap_or(100);
    // Subscribe before reading the tail, so no line falls between the two.
    let rx = p.follow.then(|| app.logs.subscribe());
    let all = app.logs.tail(usize::MAX);
    let mut lines: Vec<bytes::Bytes> = all
        .iter()
        .filter(|l| filter.keep(l))
        .map(|l| ndjson(l))
        .collect();
    let lines = lines.split_off(lines.len().saturating_sub(n));
    let head = futures_util::stream::iter(lines.into_iter().map(Ok::<_, std::io::Error>));
    let body = match rx {
        None => Body::from_stream(head),
        Some(rx) => {
            let shutdown = app.shutdown.clone();
            let tail = futures_util::stream::unfold(
                (rx, shutdown, filter),
                |(mut rx, mut shutdown, filter)| async move {
                    loop {
                        if *shutdown.borrow() {
                            return None;
                        }
                        let next = tokio::select! {
                            r = rx.recv() => r,
                            _ = shutdown.changed() => return None,
                            // A blank line now and then lets the server notice a client that went away.
                            _ = tokio::time::sleep(Duration::from_secs(15)) => {
                                return Some((Ok(bytes::Bytes::from_static(b"\n")), (rx, shutdown, filter)));
                            }
                        };
                        match next {
                            Ok(l) if filter.keep(&l) => {
                                return Some((Ok(ndjson(&l)), (rx, shutdown, filter)))
                            }
                            Ok(_) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                let note = LogLine {
                                    ts: crate::store::rfc3339(now_ms()),
                                    level: "warn",
                                    target: "opampd::api::admin".into(),
                                    message: format!("log stream fell behind: {n} lines skipped"),
                                    fields: Default::default(),
                                };
                                return Some((Ok(ndjson(&note)), (rx, shutdown, filter)));
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                },
            );
            Body::from_stream(head.chain(tail))
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

#[derive(Deserialize)]
pub struct StatsParams {
    #[serde(default)]
    integrity: bool,
}

/// `GET /api/v1/admin/db/stats?integrity=true`.
pub async fn db_stats(
    State(app): State<Arc<App>>,
    _: Admin,
    Query(p): Query<StatsParams>,
) -> ApiResult<Json<DbStats>> {
    Ok(Json(app.store.stats(p.integrity).await?))
}

/// `POST /api/v1/admin/db/optimize`: ANALYZE, PRAGMA optimize, VACUUM, WAL checkpoint.
pub async fn db_optimize(
    State(app): State<Arc<App>>,
    Admin(who, addr): Admin,
) -> ApiResult<Json<DbOptimizeReport>> {
    let report = app.store.optimize().await?;
    app.store
        .audit(AuditEntry::ok(
            &who.name,
            "db.optimize",
            None,
            addr.as_deref(),
            json!({"size_before": report.size_before, "size_after": report.size_after, "duration_ms": report.duration_ms}),
        ))
        .await?;
    tracing::info!(by = %who.name, size_before = report.size_before, size_after = report.size_after, "database optimized");
    Ok(Json(report))
}

/// Estimated bytes per WebSocket connection: read and write buffers (4 KiB
/// each) plus the connection task and its push channel.
const CONNECTION_ESTIMATE: u64 = 4096 + 4096 + 4096;

/// `GET /api/v1/admin/memory`: resident memory and what holds it. Subsystem
/// figures are estimates (their keys end in `_estimated`); `allocator` holds
/// the kernel's own accounting from /proc.
pub async fn memory(State(app): State<Arc<App>>, _: Admin) -> ApiResult<Json<MemoryReport>> {
    let sample = crate::procinfo::sample();
    let mut agents_bytes = 0u64;
    let mut live = 0u64;
    app.fleet.for_each_mut(|s| {
        live += 1;
        agents_bytes += s.estimated_bytes() as u64;
    });
    let connections = app.fleet.connections() as u64;
    let ring: u64 = app
        .logs
        .tail(usize::MAX)
        .iter()
        .map(|l| {
            (std::mem::size_of::<LogLine>()
                + l.ts.len()
                + l.target.len()
                + l.message.len()
                + l.fields
                    .iter()
                    .map(|(k, v)| k.len() + v.to_string().len() + 48)
                    .sum::<usize>()) as u64
        })
        .sum();
    let cache_per_conn = app
        .store
        .connection_cache_bytes()
        .await
        .unwrap_or(2000 * 1024);
    let pool = app.store.pool_stats();
    let mut subsystems = BTreeMap::new();
    subsystems.insert("agents_estimated".to_string(), agents_bytes);
    subsystems.insert(
        "connections_estimated".to_string(),
        connections * CONNECTION_ESTIMATE,
    );
    subsystems.insert("log_ring_estimated".to_string(), ring);
    // Upper bound: every open connection (read pool plus the writer) with a full cache.
    subsystems.insert(
        "db_page_cache_estimated".to_string(),
        (pool.open as u64 + 1) * cache_per_conn,
    );
    Ok(Json(MemoryReport {
        rss_bytes: sample.rss_bytes,
        subsystems,
        allocator: proc_memory(),
        agents_live: live,
        connections,
    }))
}

/// Memory figures of this process from /proc/self/status and smaps_rollup, in bytes.
fn proc_memory() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut read = |file: &str, prefix: &str, keys: &[&str]| {
        if let Ok(text) = std::fs::read_to_string(file) {
            for line in text.lines() {
                let Some((k, rest)) = line.split_once(':') else {
                    continue;
                };
                if !keys.contains(&k) {
                    continue;
                }
                let mut parts = rest.split_whitespace();
                let (Some(n), Some("kB")) = (parts.next(), parts.next()) else {
                    continue;
                };
                if let Ok(n) = n.parse::<u64>() {
                    out.insert(format!("{prefix}{k}"), n * 1024);
                }
            }
        }
    };
    read(
        "/proc/self/status",
        "",
        &["VmRSS", "VmHWM", "VmData", "RssAnon", "RssFile"],
    );
    read(
        "/proc/self/smaps_rollup",
        "smaps_",
        &[
            "Pss",
            "Pss_Anon",
            "Pss_File",
            "Shared_Clean",
            "Private_Dirty",
            "Swap",
        ],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opampctl_knows_the_schema_version() {
        // opampctl checks backups against this constant without linking opampd.
        assert_eq!(opamp_proto::api::DB_SCHEMA_VERSION, schema::SCHEMA_VERSION);
    }

    #[test]
    fn log_levels_rank_by_severity() {
        assert!(level_rank("error") < level_rank("warn"));
        assert_eq!(level_rank("WARNING"), level_rank("warn"));
        assert_eq!(level_rank("loud"), None);
    }

    #[test]
    fn proc_memory_reads_status() {
        let m = proc_memory();
        assert!(m.get("VmRSS").is_some_and(|v| *v > 0), "{m:?}");
    }
}
