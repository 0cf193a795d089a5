//! A SQLite database written as opampd's dump (`store/dump.rs`), for
//! `opampctl db migrate --from-sqlite`: the database is copied with the
//! online backup API, the copy migrated to this release's schema, and its
//! rows written table by table in COPY's text format.

use super::{maintenance, open_connection, schema};
use crate::store::dump::{self, Field};
use crate::store::{now_ms, rfc3339};
use anyhow::{Context, Result};
use rusqlite::types::ValueRef;
use rusqlite::OpenFlags;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Writes the database at `source` as a dump to `dest` (a new owner-only
/// file); `scratch` is a private directory for the migrated copy. Returns
/// each table's rows, in dump order.
pub fn export(source: &Path, scratch: &Path, dest: &Path) -> Result<Vec<(String, u64)>> {
    let copy = scratch.join("export.db");
    maintenance::backup_to(source, &copy)?;
    let mut conn = open_connection(
        &copy,
        OpenFlags::SQLITE_OPEN_READ_WRITE,
        Duration::from_secs(5),
    )?;
    schema::migrate(&mut conn).with_context(|| {
        format!(
            "cannot bring a copy of {} to this release's schema",
            source.display()
        )
    })?;
    let version = schema::SCHEMA_VERSION;
    let file = crate::files::create_private(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    out.write_all(dump::head(version, "sqlite", &rfc3339(now_ms())).as_bytes())?;
    let mut counts = Vec::new();
    let mut identities = Vec::new();
    for table in dump::data_tables(version) {
        let mut info = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let described: Vec<(String, String, bool)> = info
            .query_map([], |row| {
                Ok((row.get(1)?, row.get(2)?, row.get::<_, i64>(5)? > 0))
            })?
            .collect::<rusqlite::Result<_>>()?;
        anyhow::ensure!(
            !described.is_empty(),
            "{} has no table {table}",
            source.display()
        );
        let columns: Vec<String> = described.iter().map(|(name, _, _)| name.clone()).collect();
        // An INTEGER PRIMARY KEY alone is an identity column on PostgreSQL.
        let keys: Vec<&(String, String, bool)> = described.iter().filter(|c| c.2).collect();
        if let [(name, kind, _)] = keys.as_slice() {
            if kind.eq_ignore_ascii_case("INTEGER") {
                identities.push((table.to_string(), name.clone()));
            }
        }
        out.write_all(dump::copy_begin(table, &columns).as_bytes())?;
        let mut select = conn.prepare(&format!("SELECT {} FROM {table}", columns.join(", ")))?;
        let mut rows = select.query([])?;
        let mut count = 0u64;
        let mut line = String::new();
        while let Some(row) = rows.next()? {
            line.clear();
            let mut fields = Vec::with_capacity(columns.len());
            for (i, column) in columns.iter().enumerate() {
                fields.push(match row.get_ref(i)? {
                    ValueRef::Null => Field::Null,
                    ValueRef::Integer(n) => Field::Integer(n),
                    ValueRef::Real(x) => Field::Real(x),
                    ValueRef::Text(text) => {
                        Field::Text(std::str::from_utf8(text).with_context(|| {
                            format!("table {table}, column {column}: text that is not UTF-8")
                        })?)
                    }
                    ValueRef::Blob(bytes) => Field::Bytes(bytes),
                });
            }
            dump::push_row(&mut line, &fields);
            out.write_all(line.as_bytes())?;
            count += 1;
        }
        out.write_all(dump::copy_end(table, count).as_bytes())?;
        counts.push((table.to_string(), count));
    }
    let total = counts.iter().map(|(_, rows)| rows).sum();
    out.write_all(dump::tail(&identities, counts.len(), total).as_bytes())?;
    out.flush()?;
    out.get_ref().sync_all()?;
    Ok(counts)
}
