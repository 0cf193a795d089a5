//! Backup, restore, statistics and optimisation of the live database.
//!
//! Backups use SQLite's online backup API from a read connection in a single
//! step, so the copy is one consistent snapshot while agents keep writing
//! (WAL readers do not block the writer). A restore is copied into the live
//! database by the writer thread itself, between batches, so no other write
//! can interleave.

use super::{agents, open_connection, schema, Store};
use anyhow::{bail, Context, Result};
use opamp_proto::api::{DbOptimizeReport, DbStats};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Checks a database file a restore would bring in: opens, integrity, schema.
pub fn check_candidate(path: &Path) -> Result<u32> {
    let conn = open_connection(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY,
        Duration::from_secs(5),
    )
    .with_context(|| format!("{} cannot be opened as a SQLite database", path.display()))?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .with_context(|| format!("{} is not a valid SQLite database", path.display()))?;
    if check != "ok" {
        bail!("{} fails the integrity check: {check}", path.display());
    }
    let version = schema::version(&conn)?;
    if version == 0 {
        bail!(
            "{} is not an opampd database (no schema version)",
            path.display()
        );
    }
    if version > schema::SCHEMA_VERSION {
        bail!(
            "{} has schema version {version}, newer than this opampd ({}): upgrade opampd first",
            path.display(),
            schema::SCHEMA_VERSION
        );
    }
    let has_agents: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'agents')",
        [],
        |r| r.get(0),
    )?;
    if !has_agents {
        bail!(
            "{} is not an opampd database (no agents table)",
            path.display()
        );
    }
    Ok(version)
}

/// Copies the live database to `dest` (a new file) as one consistent snapshot.
pub fn backup_to(source: &Path, dest: &Path) -> Result<()> {
    let src = open_connection(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY,
        Duration::from_secs(5),
    )?;
    let mut dst =
        Connection::open(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // One step: the whole copy reads from a single snapshot.
        backup.step(-1).context("online backup failed")?;
    }
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    dst.close().map_err(|(_, e)| e)?;
    Ok(())
}

pub fn stats(conn: &Connection, path: &Path, integrity: bool) -> Result<DbStats> {
    let pragma = |name: &str| -> Result<u64> {
        Ok(conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))? as u64)
    };
    let mut tables = std::collections::BTreeMap::new();
    for t in [
        "agents",
        "agent_events",
        "configurations",
        "config_versions",
        "rollouts",
        "rollout_agents",
        "audit_log",
        "users",
        "api_tokens",
    ] {
        let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))?;
        tables.insert(t.to_string(), n as u64);
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
    })
}

impl Store {
    /// Online backup to `dest`.
    pub async fn backup_to(&self, dest: PathBuf) -> Result<()> {
        let source = self.path().to_path_buf();
        let start = Instant::now();
        tokio::task::spawn_blocking(move || backup_to(&source, &dest)).await??;
        self.inner.metrics.db_query("backup", start.elapsed());
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
        let size = move || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let before = size();
        let start = Instant::now();
        let steps = self
            .inner
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

    /// Replaces the live database's content with `candidate` (already checked
    /// with [`check_candidate`]) and migrates it. The previous content is first
    /// saved to `keep_aside`. `live_agents` is called on the writer, after
    /// the copy, and its agents are stored connected (see
    /// [`agents::mark_live_after_restore`]); writes queued meanwhile apply
    /// after it. Returns how many live agents the backup did not contain.
    pub async fn restore_from(
        &self,
        candidate: PathBuf,
        keep_aside: PathBuf,
        live_agents: impl FnOnce() -> Vec<agents::LiveAgent> + Send + 'static,
    ) -> Result<u64> {
        check_candidate(&candidate)?;
        let live = self.path().to_path_buf();
        self.inner
            .writer
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
                schema::migrate(c)?;
                agents::mark_live_after_restore(c, &live_agents())
            })
            .await
    }
}
