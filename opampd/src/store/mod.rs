//! The only code that touches SQLite.
//!
//! One writer thread owns the single write connection and commits changes in
//! batches: agent state patches for the same agent coalesce, so a burst of
//! reports costs one row write, and a heartbeat costs nothing here at all
//! (last-seen times are flushed periodically). Reads use a small pool and run
//! on tokio's blocking threads, never on the async workers.

pub mod agents;
pub mod components;
pub mod configs;
pub mod dbfile;
pub mod maintenance;
mod pool;
pub mod postgres;
pub mod schema;
pub mod users;
mod writer;

use crate::metrics::Metrics;
use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use agents::{AgentPatch, AgentRow};
pub use pool::ReadPool;
pub use writer::{WriteError, Writer};

#[derive(Clone)]
pub struct StoreOptions {
    pub max_open_conns: usize,
    pub max_idle_conns: usize,
    pub conn_max_lifetime: Duration,
    pub flush_interval: Duration,
    /// Queued writer operations past which writers wait (`database.max_queued_writes`).
    pub max_queued_writes: u64,
    pub busy_timeout: Duration,
    /// SQLite `synchronous` of the write connection: `NORMAL` or `FULL`.
    pub synchronous: &'static str,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    pool: ReadPool,
    writer: Writer,
    metrics: Arc<Metrics>,
}

/// Opens a connection with the pragmas every connection uses.
pub fn open_connection(
    path: &Path,
    flags: OpenFlags,
    busy: Duration,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) and migrates the database, then starts the writer.
    pub fn open(path: &Path, opts: &StoreOptions, metrics: Arc<Metrics>) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        }
        let mut conn = open_connection(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            opts.busy_timeout,
        )
        .with_context(|| format!("cannot open database {}", path.display()))?;
        conn.pragma_update(None, "synchronous", opts.synchronous)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            anyhow::bail!("database {} refused WAL mode (got {mode})", path.display());
        }
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            anyhow::bail!(
                "database {} failed its integrity check ({check}): restore a backup with `opampctl restore`",
                path.display()
            );
        }
        schema::migrate(&mut conn)
            .with_context(|| format!("cannot migrate database {}", path.display()))?;
        // Agents are only connected while a live session says so.
        conn.execute(
            "UPDATE agents SET status = 'disconnected' WHERE status != 'disconnected'",
            [],
        )?;
        let pool = ReadPool::new(path, opts, metrics.clone())?;
        let writer = Writer::start(
            conn,
            opts.flush_interval,
            opts.max_queued_writes,
            metrics.clone(),
        );
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                pool,
                writer,
                metrics,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    pub fn pool(&self) -> &ReadPool {
        &self.inner.pool
    }

    /// Runs `f` on a pooled read connection on a blocking thread.
    pub async fn read<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.pool.get()?;
            let start = Instant::now();
            let out = f(&conn);
            inner.metrics.db_query(operation, start.elapsed());
            out
        })
        .await
        .context("database read task failed")?
    }

    /// Runs `f` inside the writer's next transaction (in a savepoint of its own)
    /// and waits for the commit.
    pub async fn write<T, F>(&self, operation: &'static str, f: F) -> Result<T, WriteError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.inner.writer.exec(operation, f).await
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, milliseconds) of a Unix time in milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses RFC 3339 into Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}
