//! Checks of a database file that is not the live database: a backup about to
//! be restored, by opampd's restore endpoint or by `opampctl restore` and
//! `opampctl backup --verify` on the server's host. One implementation, so the
//! server and the CLI accept and refuse the same files.
//!
//! A candidate must be exactly what a release of opampd creates: its schema
//! objects (tables with their columns, indexes) are compared with those the
//! migrations produce at the candidate's schema version. Triggers, views and
//! any other object opampd does not create are refused, since a trigger or a
//! view in a restored file would run its own code inside opampd.

use super::{open_connection, schema};
use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The 16-byte header every SQLite 3 database starts with.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Why a file cannot be restored. The message speaks of the file as "it", so
/// callers can name it: `format!("{} cannot be restored: {refused}", ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(message: impl Into<String>) -> Refused {
    Refused(message.into())
}

/// Where a restore keeps the database it replaces: the first free name of
/// `opamp.db.before-restore-TIMESTAMP`, `…-TIMESTAMP.2`, `…-TIMESTAMP.3`, …
/// in `data_dir`. "Free" means nothing is there, not even a dangling
/// symlink, so two restores in one second (one by the server, one by
/// `opampctl restore --data-dir`) never collide, and a planted link is
/// left alone. Whoever creates the file must still create it new.
pub fn keep_aside_path(data_dir: &Path, now: chrono::DateTime<chrono::Utc>) -> PathBuf {
    let stamp = now.format("%Y%m%d_%H%M%S");
    (1..)
        .map(|n| match n {
            1 => data_dir.join(format!("opamp.db.before-restore-{stamp}")),
            n => data_dir.join(format!("opamp.db.before-restore-{stamp}.{n}")),
        })
        .find(|path| path.symlink_metadata().is_err())
        .expect("an unbounded sequence of names has a free one")
}

/// Checks a database file a restore would bring in: SQLite header,
/// integrity, schema version, and the exact schema of that version.
/// Returns the schema version. The file is only read.
pub fn check(path: &Path) -> Result<u32, Refused> {
    check_header(path)?;
    let conn = open_untrusted(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    check_open(&conn)
}

/// Makes a checked candidate ready to be copied into the live database: it
/// is migrated to this release's schema, its agents are marked disconnected
/// (they reconnect to the restored server) and API tokens whose owner does
/// not exist in it are revoked. `path` must be a private copy (the restore
/// upload): it is modified. Returns the schema version it had before.
pub fn prepare_for_restore(path: &Path) -> Result<u32, Refused> {
    check_header(path)?;
    let mut conn = open_untrusted(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let version = check_open(&conn)?;
    schema::migrate(&mut conn).map_err(|e| {
        refused(format!(
            "it cannot be migrated to this release's schema: {e:#}"
        ))
    })?;
    conn.execute_batch(
        "BEGIN;
         UPDATE agents SET status = 'disconnected' WHERE status != 'disconnected';
         UPDATE api_tokens SET revoked = 1
             WHERE revoked = 0 AND owner NOT IN (SELECT username FROM users);
         COMMIT;",
    )
    .map_err(|e| refused(format!("it cannot be prepared for the restore: {e}")))?;
    // The migrated copy must now be exactly this release's schema.
    let migrated = check_open(&conn)?;
    if migrated != schema::SCHEMA_VERSION {
        return Err(refused(format!(
            "after migration its schema version is {migrated}, not {}",
            schema::SCHEMA_VERSION
        )));
    }
    conn.close()
        .map_err(|(_, e)| refused(format!("it cannot be written: {e}")))?;
    Ok(version)
}

fn check_header(path: &Path) -> Result<(), Refused> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut file =
        std::fs::File::open(path).map_err(|e| refused(format!("it cannot be read: {e}")))?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(refused(format!("it cannot be read: {e}"))),
        }
    }
    if filled < head.len() || &head != SQLITE_MAGIC {
        return Err(refused("it is not a SQLite database (wrong file header)"));
    }
    Ok(())
}

/// Opens a file that may have been crafted: schema code (triggers, views,
/// defaults) is not trusted to call functions with side effects.
fn open_untrusted(path: &Path, flags: OpenFlags) -> Result<Connection, Refused> {
    let conn = open_connection(
        path,
        flags | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        Duration::from_secs(5),
    )
    .map_err(|e| refused(format!("it cannot be opened as a SQLite database: {e}")))?;
    conn.pragma_update(None, "trusted_schema", "OFF")
        .map_err(|e| refused(format!("it cannot be opened safely: {e}")))?;
    Ok(conn)
}

fn check_open(conn: &Connection) -> Result<u32, Refused> {
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| refused(format!("it is damaged or truncated: {e}")))?;
    if integrity != "ok" {
        return Err(refused(format!(
            "it fails SQLite's integrity check: {integrity}"
        )));
    }
    let version = schema::version(conn)
        .map_err(|e| refused(format!("its schema version cannot be read: {e}")))?;
    let objects = objects(conn).map_err(|e| refused(format!("its schema cannot be read: {e}")))?;
    if version == 0 || !objects.contains_key(&("table".to_string(), "agents".to_string())) {
        return Err(refused(if version == 0 {
            "it is not an opampd database (no schema version)"
        } else {
            "it is not an opampd database (no agents table)"
        }));
    }
    if version > schema::SCHEMA_VERSION {
        return Err(refused(format!(
            "its schema version {version} is newer than this release's ({}): restore it with \
             the opampd and opampctl of the release that wrote it",
            schema::SCHEMA_VERSION
        )));
    }
    let differences = compare(&objects, version)?;
    if !differences.is_empty() {
        return Err(refused(format!(
            "its schema is not exactly the one opampd creates at version {version}: {}; \
             only files written by opampd (opampctl backup) can be restored, and triggers, \
             views and other added objects are refused",
            differences.join(", ")
        )));
    }
    Ok(version)
}

/// Schema objects: (type, name) to (table, SQL text).
type Objects = BTreeMap<(String, String), (String, Option<String>)>;

fn objects(conn: &Connection) -> rusqlite::Result<Objects> {
    let mut stmt = conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_master")?;
    let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))?;
    rows.collect()
}

/// The objects of schema `version` as the migrations create them, and those
/// SQLite itself may add later (the statistics tables `ANALYZE` writes, which
/// `opampctl db optimize` runs).
fn expected(version: u32) -> rusqlite::Result<(Objects, Objects)> {
    let conn = Connection::open_in_memory()?;
    schema::create(&conn, version)?;
    let created = objects(&conn)?;
    conn.execute_batch("ANALYZE")?;
    let optional = objects(&conn)?
        .into_iter()
        .filter(|(key, _)| !created.contains_key(key))
        .collect();
    Ok((created, optional))
}

/// What differs between `found` and the schema of `version`, in words.
fn compare(found: &Objects, version: u32) -> Result<Vec<String>, Refused> {
    let (created, optional) = expected(version).map_err(|e| {
        refused(format!(
            "the schema of version {version} cannot be built: {e}"
        ))
    })?;
    let mut differences = Vec::new();
    for ((kind, name), definition) in found {
        let key = (kind.clone(), name.clone());
        match created.get(&key).or_else(|| optional.get(&key)) {
            Some(wanted) if wanted == definition => {}
            Some(_) => differences.push(format!("{kind} {name} is defined differently")),
            None => differences.push(format!(
                "it has a {kind} {name} that opampd does not create"
            )),
        }
    }
    for (kind, name) in created.keys() {
        if !found.contains_key(&(kind.clone(), name.clone())) {
            differences.push(format!("{kind} {name} is missing"));
        }
    }
    Ok(differences)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut conn = Connection::open(&path).unwrap();
        schema::migrate(&mut conn).unwrap();
        conn.execute_batch(extra).unwrap();
        path
    }

    #[test]
    fn keep_aside_takes_the_first_free_name_and_passes_over_links() {
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::DateTime::from_timestamp(1_709_251_199, 0).unwrap();
        let first = keep_aside_path(dir.path(), now);
        assert_eq!(
            first.file_name().unwrap(),
            "opamp.db.before-restore-20240229_235959"
        );
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &first).unwrap();
        let second = keep_aside_path(dir.path(), now);
        assert_eq!(
            second.file_name().unwrap(),
            "opamp.db.before-restore-20240229_235959.2"
        );
        std::fs::write(&second, b"").unwrap();
        assert!(
            keep_aside_path(dir.path(), now).ends_with("opamp.db.before-restore-20240229_235959.3")
        );
    }

    fn refusal(path: &Path) -> String {
        check(path).unwrap_err().to_string()
    }

    #[test]
    fn a_database_opampd_creates_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(
            dir.path(),
            "ok.db",
            "INSERT INTO users (username, password_hash, role, created_at) VALUES ('u', 'h', 'admin', 0)",
        );
        assert_eq!(check(&path), Ok(schema::SCHEMA_VERSION));
        // ANALYZE (opampctl db optimize) adds statistics tables: still fine.
        let analyzed = database(dir.path(), "analyzed.db", "ANALYZE");
        assert_eq!(check(&analyzed), Ok(schema::SCHEMA_VERSION));
    }

    #[test]
    fn an_older_schema_passes_and_is_migrated_by_prepare() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            schema::create(&conn, 1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                "INSERT INTO users VALUES ('alice', 'h', 'admin', 0);
                 INSERT INTO api_tokens (id, name, token_hash, role, owner, created_at)
                     VALUES ('t1', 'n', 'h1', 'admin', 'alice', 0),
                            ('t2', 'n', 'h2', 'admin', 'ghost', 0);
                 INSERT INTO agents (uid, status, first_seen, last_seen, updated_at)
                     VALUES ('a', 'connected', 0, 0, 0);",
            )
            .unwrap();
        }
        assert_eq!(check(&path), Ok(1));
        assert_eq!(prepare_for_restore(&path), Ok(1));
        assert_eq!(check(&path), Ok(schema::SCHEMA_VERSION));
        let conn = Connection::open(&path).unwrap();
        let revoked: Vec<(String, bool)> = conn
            .prepare("SELECT id, revoked FROM api_tokens ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(revoked, vec![("t1".into(), false), ("t2".into(), true)]);
        let status: String = conn
            .query_row("SELECT status FROM agents", [], |r| r.get(0))
            .unwrap();
        assert_eq!(status, "disconnected");
    }

    #[test]
    fn added_objects_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (name, extra, needle) in [
            (
                "trigger.db",
                "CREATE TRIGGER spy AFTER INSERT ON audit_log BEGIN DELETE FROM audit_log; END",
                "trigger spy",
            ),
            ("view.db", "CREATE VIEW v AS SELECT * FROM users", "view v"),
            ("table.db", "CREATE TABLE notes (t TEXT)", "table notes"),
            (
                "index.db",
                "CREATE INDEX users_role ON users(role)",
                "index users_role",
            ),
            (
                "column.db",
                "ALTER TABLE users ADD COLUMN shell TEXT",
                "table users is defined differently",
            ),
            (
                "dropped.db",
                "DROP TABLE revoked_jwts",
                "table revoked_jwts is missing",
            ),
        ] {
            let message = refusal(&database(dir.path(), name, extra));
            assert!(message.contains(needle), "{name}: {message}");
            assert!(
                message.contains("not exactly the one opampd creates"),
                "{message}"
            );
        }
    }

    #[test]
    fn files_that_are_not_opampd_databases_are_named_so() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"definitely not sqlite").unwrap();
        assert!(refusal(&junk).contains("not a SQLite database"));
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE notes (t TEXT); PRAGMA user_version = 1;")
            .unwrap();
        assert!(refusal(&other).contains("not an opampd database"));
        let newer = database(dir.path(), "newer.db", "PRAGMA user_version = 999");
        assert!(refusal(&newer).contains("newer"));
        let good = database(dir.path(), "good.db", "");
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.path().join("cut.db");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert!(check(&cut).is_err());
    }
}
