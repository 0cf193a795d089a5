//! `opampctl db migrate --from-sqlite DATA_DIR --to URL [--replace]`: moves a
//! stopped SQLite deployment into a PostgreSQL database.
//!
//! The SQLite file is copied with the online backup API, the copy brought to
//! this release's schema and written as opampd's dump in a private directory
//! inside DATA_DIR (it is about the database's size); opampd's loader then
//! puts every row into the PostgreSQL database in one transaction and checks
//! each table's row count against the dump before it commits. The SQLite file
//! is only read: it stays as it was, a way back.

use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::files::PrivateDir;
use crate::localdb;
use crate::output;
use opampd::store::postgres::{dump, DatabaseUrl};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Result of a migration; the JSON of `-o json`.
#[derive(Debug, Serialize)]
pub struct MigrateReport {
    pub from: String,
    /// The database URL, password hidden.
    pub to: String,
    pub schema_version: u32,
    pub tables: Vec<TableCount>,
    pub rows: u64,
}

#[derive(Debug, Serialize)]
pub struct TableCount {
    pub name: String,
    pub sqlite: u64,
    pub postgresql: u64,
}

pub async fn run(settings: &Settings, from: &Path, to: &str, replace: bool) -> Result<()> {
    let db = from.join("opamp.db");
    if !db.is_file() {
        return Err(CtlError::usage(format!(
            "{} does not exist: --from-sqlite must be the data directory of a SQLite opampd (the one holding opamp.db)",
            db.display()
        )));
    }
    let url = DatabaseUrl::parse(to).map_err(|e| CtlError::usage(format!("--to: {e:#}")))?;
    refuse_running(&db)?;
    let scratch = PrivateDir::new_in(from, "migrate").map_err(|e| {
        CtlError::failed(format!(
            "cannot create a private temporary directory in {}: {e}",
            from.display()
        ))
    })?;
    let dump_path = scratch.join("opamp.sql");
    output::info(settings, format!("reading {}", db.display()));
    let exported = {
        let (source, scratch_dir, dest) =
            (db.clone(), scratch.path().to_path_buf(), dump_path.clone());
        tokio::task::spawn_blocking(move || {
            opampd::store::sqlite::dump::export(&source, &scratch_dir, &dest)
        })
        .await
        .map_err(|e| CtlError::failed(format!("the export stopped: {e}")))?
        .map_err(|e| {
            CtlError::failed(format!(
                "cannot read {}: {e:#}; nothing was changed",
                db.display()
            ))
        })?
    };
    // An opampd started meanwhile would write what the copy lacks.
    refuse_running(&db)?;
    output::info(settings, format!("loading into {}", url.redacted()));
    let loaded = dump::load_into(&url, &dump_path, replace)
        .await
        .map_err(|e| match e.downcast_ref::<dump::NotEmpty>() {
            Some(not_empty) => CtlError::failed(format!(
                "{} refused: {not_empty}. Choose an empty database (createdb), or pass --replace to replace its content; nothing was changed",
                url.redacted()
            )),
            None => CtlError::failed(format!(
                "the migration into {} failed: {e:#}; nothing was committed",
                url.redacted()
            )),
        })?;
    drop(scratch);
    let tables: Vec<TableCount> = exported
        .iter()
        .map(|(name, sqlite)| TableCount {
            name: name.clone(),
            sqlite: *sqlite,
            postgresql: loaded
                .counts
                .iter()
                .find(|(table, _)| table == name)
                .map_or(0, |(_, rows)| *rows),
        })
        .collect();
    if let Some(short) = tables.iter().find(|t| t.sqlite != t.postgresql) {
        return Err(CtlError::failed(format!(
            "table {} has {} rows in SQLite but {} in PostgreSQL: check {} before using it",
            short.name,
            short.sqlite,
            short.postgresql,
            url.redacted()
        )));
    }
    let report = MigrateReport {
        from: db.display().to_string(),
        to: url.redacted().to_string(),
        schema_version: loaded.summary.schema_version,
        rows: tables.iter().map(|t| t.postgresql).sum(),
        tables,
    };
    if settings.quiet {
        return Ok(());
    }
    if settings.human() {
        let mut t = output::table(settings, &["TABLE", "SQLITE", "POSTGRESQL"]);
        for table in &report.tables {
            t.add_row(vec![
                table.name.clone(),
                table.sqlite.to_string(),
                table.postgresql.to_string(),
            ]);
        }
        output::out(&output::render(&t));
        eprintln!(
            "migrated {} rows into {} (schema version {}), every table's count checked. Start opampd with --database-url (or OPAMPD_DATABASE_URL) and the JWT key this deployment used (JWT_SECRET_KEY, jwt_secret_file, or {}); {} is left as it was",
            report.rows,
            report.to,
            report.schema_version,
            PathBuf::from(from).join("jwt.key").display(),
            report.from
        );
        Ok(())
    } else {
        output::machine(settings, &report)
    }
}

/// Refuses while an opampd holds the database.
fn refuse_running(db: &Path) -> Result<()> {
    match localdb::held_by_another_process(db) {
        Ok(false) => Ok(()),
        Ok(true) => Err(CtlError::failed(format!(
            "opampd is running: {} is open in another process. Stop it first (e.g. `systemctl stop opampd`), then migrate; nothing was changed",
            db.display()
        ))),
        Err(e) => Err(CtlError::failed(format!(
            "cannot tell whether opampd holds {}: {e}",
            db.display()
        ))),
    }
}
