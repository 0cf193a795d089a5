//! The SQLite backend: everything that touches SQLite lives in this folder.
//!
//! One writer thread owns the single write connection and commits changes in
//! batches ([`writer`]): agent state patches for the same agent coalesce, so
//! a burst of reports costs one row write, and a heartbeat costs nothing here
//! at all (last-seen times are flushed periodically). Reads use a small pool
//! ([`pool`]) and run on tokio's blocking threads, never on the async workers.

pub mod agents;
mod backend;
pub mod components;
pub mod configs;
pub mod dbfile;
pub mod dump;
pub mod maintenance;
pub mod package_rollouts;
pub mod packages;
mod pool;
pub mod schema;
pub mod selector;
pub mod sessions;
mod staged;
pub mod users;
mod writer;

use super::{StoreOptions, WriteError};
use crate::metrics::Metrics;
use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use pool::ReadPool;
pub use writer::Writer;

/// The SQLite database of one opampd process.
pub struct Sqlite {
    path: PathBuf,
    pool: Arc<ReadPool>,
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

impl Sqlite {
    /// Opens (creating if needed) and migrates the database, then starts the writer.
    pub fn open(path: &Path, opts: &StoreOptions, metrics: Arc<Metrics>) -> Result<Sqlite> {
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
        Ok(Sqlite {
            path: path.to_path_buf(),
            pool: Arc::new(pool),
            writer,
            metrics,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a pooled read connection on a blocking thread.
    pub(crate) async fn read<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get()?;
            let start = Instant::now();
            let out = f(&conn);
            metrics.db_query(operation, start.elapsed());
            out
        })
        .await
        .context("database read task failed")?
    }

    /// Runs `f` inside the writer's next transaction (in a savepoint of its
    /// own) and waits for the commit.
    pub(crate) async fn write<T, F>(&self, operation: &'static str, f: F) -> Result<T, WriteError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.writer.exec(operation, f).await
    }
}
