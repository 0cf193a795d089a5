//! SQLite files on this host: the checks a restore makes (opampd's own, from
//! `opampd::store::sqlite::dbfile`), statistics, and telling whether a daemon holds a
//! database. Online backups are opampd's own too
//! (`opampd::store::sqlite::maintenance::backup_to`).
//!
//! A database opampd has open is only ever read here, through the online
//! backup API or read-only connections; writes happen only to files opampd
//! does not hold (checked with [`held_by_another_process`]).

use opamp_proto::api::DbStats;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

pub use opampd::store::sqlite::dbfile::SQLITE_MAGIC;

/// Checks a database file as opampd's restore does: SQLite header,
/// integrity, and exactly the schema opampd creates at the file's schema
/// version. Returns the schema version; the error speaks of the file as "it".
pub fn check_db(path: &Path) -> Result<u32, String> {
    opampd::store::sqlite::dbfile::check(path).map_err(|refused| refused.to_string())
}

/// The hosted package files the catalogue of the database at `path` names,
/// each once, by SHA-256 (none before the catalogue existed).
pub fn hosted_files(path: &Path) -> Result<Vec<opamp_proto::api::HostedFile>, String> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let has_catalogue: bool = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'package_files'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !has_catalogue {
        return Ok(Vec::new());
    }
    let mut statement = c
        .prepare(
            "SELECT sha256, max(coalesce(size, 0)) FROM package_files WHERE hosted != 0 \
             GROUP BY sha256 ORDER BY sha256",
        )
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let rows = statement
        .query_map([], |r| {
            Ok(opamp_proto::api::HostedFile {
                sha256: r.get(0)?,
                size: r.get::<_, i64>(1)?.max(0) as u64,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(rows)
}

/// Whether another process has the database open (a running opampd).
///
/// In WAL mode every open connection holds a shared lock on the file, so an
/// exclusive-locking-mode transaction cannot start while opampd runs, even
/// when it is idle.
pub fn held_by_another_process(db: &Path) -> Result<bool, String> {
    if !db.exists() {
        return Ok(false);
    }
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    c.busy_timeout(Duration::from_millis(300))
        .map_err(|e| e.to_string())?;
    let attempt = (|| -> rusqlite::Result<()> {
        c.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        c.execute_batch("BEGIN EXCLUSIVE")?;
        c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        c.execute_batch("COMMIT")?;
        Ok(())
    })();
    match attempt {
        Ok(()) => Ok(false),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Ok(true)
        }
        Err(e) => Err(format!("cannot lock {}: {e}", db.display())),
    }
}

/// Folds the WAL into the database file and leaves it in rollback-journal
/// mode, so the file alone is the whole database (no -wal/-shm to carry).
pub fn checkpoint_and_close(db: &Path) -> Result<(), String> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    c.busy_timeout(Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    let (busy, _, _): (i64, i64, i64) = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(|e| format!("checkpoint of {} failed: {e}", db.display()))?;
    if busy != 0 {
        return Err(format!(
            "checkpoint of {} could not finish: another process uses the database",
            db.display()
        ));
    }
    let _: String = c
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .map_err(|e| format!("cannot leave WAL mode on {}: {e}", db.display()))?;
    c.close()
        .map_err(|(_, e)| format!("closing {}: {e}", db.display()))?;
    Ok(())
}

/// Statistics of a database file, read-only (the server's own figures).
pub fn stats(db: &Path, integrity: bool) -> Result<DbStats, String> {
    if !db.is_file() {
        return Err(format!(
            "{} does not exist: is --data-dir the opampd data directory?",
            db.display()
        ));
    }
    opampd::store::sqlite::maintenance::file_stats(db, integrity).map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn opampd_like(path: &Path) -> Connection {
        let mut c = Connection::open(path).unwrap();
        let _: String = c
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        opampd::store::sqlite::schema::migrate(&mut c).unwrap();
        c.execute_batch(
            "INSERT INTO agents (uid, first_seen, last_seen, updated_at) VALUES ('a', 0, 0, 0)",
        )
        .unwrap();
        c
    }

    #[test]
    fn an_idle_open_connection_holds_the_database() {
        let dir = tempfile_dir();
        let db = dir.join("opamp.db");
        let c = opampd_like(&db);
        c.query_row("SELECT count(*) FROM agents", [], |r| r.get::<_, i64>(0))
            .unwrap();
        assert!(held_by_another_process(&db).unwrap());
        drop(c);
        assert!(!held_by_another_process(&db).unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn backups_check_and_bad_files_are_named() {
        let dir = tempfile_dir();
        let db = dir.join("opamp.db");
        let _c = opampd_like(&db);
        let copy = dir.join("copy.db");
        opampd::store::sqlite::maintenance::backup_to(&db, &copy).unwrap();
        assert_eq!(
            check_db(&copy),
            Ok(opampd::store::sqlite::schema::SCHEMA_VERSION)
        );
        let junk = dir.join("junk.db");
        std::fs::write(&junk, b"definitely not sqlite").unwrap();
        assert!(check_db(&junk)
            .unwrap_err()
            .contains("not a SQLite database"));
        let bytes = std::fs::read(&copy).unwrap();
        let cut = dir.join("cut.db");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert!(check_db(&cut).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "opampctl-localdb-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
