//! Backup, restore, statistics and optimisation of the live database.
//!
//! Backups use SQLite's online backup API from a read connection in a single
//! step, so the copy is one consistent snapshot while agents keep writing
//! (WAL readers do not block the writer). A restore is copied into the live
//! database by the writer thread itself, between batches, so no other write
//! can interleave.

use super::{agents, dbfile, open_connection, schema, Sqlite};
use crate::store::agents::LiveAgent;
use anyhow::{Context, Result};
use opamp_proto::api::{DbOptimizeReport, DbStats};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Copies the database at `source` to `dest` as one consistent snapshot
/// (SQLite's online backup API, from a read-only connection, allowed while
/// opampd writes). `dest` must be a new name: it is created owner-only and
/// never through a symlink ([`crate::files::create_private`]); SQLite writes
/// its journal beside it, so put it in a private directory. The copy is left
/// in rollback-journal mode: the file alone is the whole database.
pub fn backup_to(source: &Path, dest: &Path) -> Result<()> {
    if !source.is_file() {
        anyhow::bail!("{} does not exist", source.display());
    }
    let src = open_connection(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        Duration::from_secs(5),
    )
    .with_context(|| format!("cannot open {} as a SQLite database", source.display()))?;
    // An empty file is an empty database to SQLite.
    crate::files::create_private(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let mut dst = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NOFOLLOW
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", dest.display()))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)
            .with_context(|| format!("cannot start the online backup of {}", source.display()))?;
        // One step: the whole copy reads from a single snapshot.
        backup
            .step(-1)
            .with_context(|| format!("online backup of {} failed", source.display()))?;
    }
    dst.pragma_update(None, "journal_mode", "DELETE")
        .with_context(|| format!("finishing {}", dest.display()))?;
    dst.close()
        .map_err(|(_, e)| e)
        .with_context(|| format!("finishing {}", dest.display()))?;
    Ok(())
}

pub fn stats(conn: &Connection, path: &Path, integrity: bool) -> Result<DbStats> {
    let pragma = |name: &str| -> Result<u64> {
        Ok(conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))? as u64)
    };
    // Every table of the file, so none is left out as the schema grows.
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut tables = std::collections::BTreeMap::new();
    for name in names {
        let n: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM \"{}\"", name.replace('"', "\"\"")),
            [],
            |r| r.get(0),
        )?;
        tables.insert(name, n as u64);
    }
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    Ok(DbStats {
        path: path.display().to_string(),
        schema_version: schema::version(conn)?,
        page_size: pragma("page_size")?,
        page_count: pragma("page_count")?,
        freelist_count: pragma("freelist_count")?,
        size_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        wal_bytes: std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0),
        tables,
        integrity: if integrity {
            Some(conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))?)
        } else {
            None
        },
        postgres: None,
    })
}

/// Statistics of a database file no server has open for writing, read-only
/// (`opampctl db stats --data-dir`); the same figures as [`Sqlite::stats`].
pub fn file_stats(path: &Path, integrity: bool) -> Result<DbStats> {
    let conn = open_connection(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        Duration::from_secs(5),
    )
    .with_context(|| format!("cannot open {} as a SQLite database", path.display()))?;
    stats(&conn, path, integrity)
}

impl Sqlite {
    /// Online backup to `dest`.
    pub async fn backup_to(&self, dest: PathBuf) -> Result<()> {
        let source = self.path().to_path_buf();
        let start = Instant::now();
        tokio::task::spawn_blocking(move || backup_to(&source, &dest)).await??;
        self.metrics.db_query("backup", start.elapsed());
        Ok(())
    }

    pub async fn stats(&self, integrity: bool) -> Result<DbStats> {
        let path = self.path().to_path_buf();
        self.read("db_stats", move |c| stats(c, &path, integrity))
            .await
    }

    /// ANALYZE, PRAGMA optimize, VACUUM and a WAL checkpoint, on the writer.
    pub async fn optimize(&self) -> Result<DbOptimizeReport> {
        let path = self.path().to_path_buf();
        // The database file and its WAL: a checkpoint moves bytes between them.
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let size = move || {
            [&path, &wal]
                .iter()
                .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                .sum::<u64>()
        };
        let before = size();
        let start = Instant::now();
        let steps = self
            .writer
            .exclusive("db_optimize", |c| {
                let mut steps = Vec::new();
                c.execute_batch("ANALYZE")?;
                steps.push("ANALYZE".to_string());
                c.execute_batch("PRAGMA optimize")?;
                steps.push("PRAGMA optimize".to_string());
                c.execute_batch("VACUUM")?;
                steps.push("VACUUM".to_string());
                let (busy, log, done): (i64, i64, i64) =
                    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                steps.push(format!(
                    "wal_checkpoint(TRUNCATE): busy={busy} log={log} checkpointed={done}"
                ));
                Ok(steps)
            })
            .await?;
        Ok(DbOptimizeReport {
            steps,
            size_before: before,
            size_after: size(),
            duration_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Replaces the live database's content with `candidate`, a private copy
    /// that is checked and migrated first ([`dbfile::prepare_for_restore`]):
    /// nothing is swapped in unless that succeeds, and a refused candidate is
    /// a [`dbfile::Refused`] error. The previous content is first saved to
    /// `keep_aside`. `live_agents` is called on the writer, after the copy,
    /// and its agents are stored connected (see
    /// [`agents::mark_live_after_restore`]); writes queued meanwhile apply
    /// after it. Returns how many live agents the backup did not contain.
    pub async fn restore_from(
        &self,
        candidate: PathBuf,
        keep_aside: PathBuf,
        live_agents: impl FnOnce() -> Vec<LiveAgent> + Send + 'static,
    ) -> Result<u64> {
        let prepared = candidate.clone();
        tokio::task::spawn_blocking(move || dbfile::prepare_for_restore(&prepared)).await??;
        let live = self.path().to_path_buf();
        self.writer
            .exclusive("db_restore", move |c| {
                backup_to(&live, &keep_aside).context("saving the current database aside")?;
                let src = open_connection(
                    &candidate,
                    OpenFlags::SQLITE_OPEN_READ_ONLY,
                    Duration::from_secs(5),
                )?;
                {
                    let backup = rusqlite::backup::Backup::new(&src, c)?;
                    backup
                        .step(-1)
                        .context("copying the backup into the live database")?;
                }
                // Already migrated; this only guards against a change in between.
                schema::migrate(c)?;
                agents::mark_live_after_restore(c, &live_agents())
            })
            .await
    }
}
