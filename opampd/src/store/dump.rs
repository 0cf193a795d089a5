//! opampd's dump: the whole database as a plain SQL script in the shape of
//! pg_dump's plain format, which `psql -f` loads into an empty PostgreSQL
//! database and `opampctl restore` loads into a running deployment.
//!
//! The PostgreSQL backend writes one from a single read-only snapshot
//! (`store/postgres/dump.rs`); `opampctl db migrate` writes one from a SQLite
//! file (`store/sqlite/dump.rs`). Both use the pieces here, and every reader
//! checks a dump with [`check`] before trusting any of it:
//!
//! ```text
//! -- opampd PostgreSQL dump, schema version 10
//! -- source: postgresql; created: 2026-01-02T03:04:05Z
//! SET …; BEGIN;
//! <the schema of that version, as the migrations create it>
//! COPY agents (uid, status, …) FROM stdin;
//! <rows in COPY's text format>
//! \.
//! -- agents: 12 rows
//! … one block per table …
//! SELECT pg_catalog.setval(…);   (identity columns)
//! COMMIT;
//! -- opampd dump end: 11 tables, 1234 rows
//! ```
//!
//! Rows of the replicas' coordination tables ([`COORDINATION_TABLES`]) are
//! not dumped: they describe the live replicas, which write them again.

use super::postgres::schema;
use std::io::BufRead;

/// The first line's start; the schema version follows.
pub const MAGIC: &str = "-- opampd PostgreSQL dump, schema version ";
/// The last line's start; the table and row counts follow.
pub const END: &str = "-- opampd dump end: ";
/// Tables whose rows are live coordination state, never dumped.
/// (`agent_sessions`: the live plain-HTTP sessions, which go on from what
/// the replicas hold.)
pub const COORDINATION_TABLES: &[&str] = &["replicas", "agent_owners", "agent_sessions"];
/// The statements before the schema.
const PREAMBLE: &str = "SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SET client_min_messages = warning;
BEGIN;
";

/// Why a dump cannot be used. The message speaks of the file as "it".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// What [`check`] found in a complete, well-formed dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub schema_version: u32,
    /// `postgresql` or `sqlite`: what it was dumped from.
    pub source: String,
    pub created: String,
    /// Each table's columns and row count, in the order of the dump.
    pub tables: Vec<TableData>,
}

impl Summary {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableData {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: u64,
}

/// Where a restore on PostgreSQL keeps a dump of the content it replaces:
/// the first free name of `opamp-postgresql.sql.before-restore-TIMESTAMP`,
/// `…-TIMESTAMP.2`, … in `data_dir` (free: nothing there, not even a
/// dangling symlink; whoever creates the file must still create it new).
pub fn keep_aside_path(
    data_dir: &std::path::Path,
    now: chrono::DateTime<chrono::Utc>,
) -> std::path::PathBuf {
    let stamp = now.format("%Y%m%d_%H%M%S");
    (1..)
        .map(|n| match n {
            1 => data_dir.join(format!("opamp-postgresql.sql.before-restore-{stamp}")),
            n => data_dir.join(format!("opamp-postgresql.sql.before-restore-{stamp}.{n}")),
        })
        .find(|path| path.symlink_metadata().is_err())
        .expect("an unbounded sequence of names has a free one")
}

/// Whether a dump holds the rows of `table`.
pub fn has_rows(table: &str) -> bool {
    !COORDINATION_TABLES.contains(&table)
}

/// The tables whose rows a dump of `version` holds, in dump order.
pub fn data_tables(version: u32) -> Vec<&'static str> {
    schema::tables(version)
        .into_iter()
        .filter(|t| has_rows(t))
        .collect()
}

/// Everything before the first table: header, preamble, schema.
pub fn head(version: u32, source: &str, created: &str) -> String {
    format!(
        "{MAGIC}{version}\n-- source: {source}; created: {created}\n-- restore: psql -v ON_ERROR_STOP=1 -f FILE URL (an empty database), or opampctl restore FILE\n{PREAMBLE}{}",
        schema::script(version)
    )
}

/// The line that opens a table's rows.
pub fn copy_begin(table: &str, columns: &[String]) -> String {
    format!("COPY {table} ({}) FROM stdin;\n", columns.join(", "))
}

/// The lines that close a table's rows.
pub fn copy_end(table: &str, rows: u64) -> String {
    format!("\\.\n-- {table}: {rows} rows\n")
}

/// Everything after the last table: identity sequences, commit, end line.
pub fn tail(identities: &[(String, String)], tables: usize, rows: u64) -> String {
    let mut out = String::new();
    for (table, column) in identities {
        out.push_str(&setval(table, column));
    }
    out.push_str(&format!("COMMIT;\n{END}{tables} tables, {rows} rows\n"));
    out
}

/// Moves an identity column's sequence past the rows loaded.
fn setval(table: &str, column: &str) -> String {
    format!(
        "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('{table}', '{column}'), COALESCE(MAX({column}), 0) + 1, false) FROM {table};\n"
    )
}

/// One field in COPY's text format.
pub enum Field<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// Appends one row in COPY's text format (tab-separated, `\N` for NULL,
/// backslash escapes, bytea as `\\x` hex) to `out`.
pub fn push_row(out: &mut String, fields: &[Field<'_>]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        match field {
            Field::Null => out.push_str("\\N"),
            Field::Integer(n) => out.push_str(&n.to_string()),
            Field::Real(x) => out.push_str(&x.to_string()),
            Field::Text(text) => {
                for c in text.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c => out.push(c),
                    }
                }
            }
            Field::Bytes(bytes) => {
                out.push_str("\\\\x");
                out.push_str(&hex::encode(bytes));
            }
        }
    }
    out.push('\n');
}

fn refused(message: impl Into<String>) -> Refused {
    Refused(message.into())
}

/// Reads a whole dump and checks that it is complete and exactly what
/// opampd writes: the header with a schema version this build knows; the
/// preamble and the schema statements of that version, unchanged; one block
/// for each table of that version that holds rows, no other, each ended, with
/// every row carrying as many fields as the block has columns and the row
/// count its closing comment states; the identity statements; COMMIT; the
/// end line, whose counts match. Nothing in it is run.
pub fn check(reader: impl BufRead) -> Result<Summary, Refused> {
    let mut lines = Lines {
        inner: reader,
        number: 0,
    };
    let first = lines
        .next()?
        .ok_or_else(|| refused("it is empty, not an opampd dump"))?;
    let version: u32 = first
        .strip_prefix(MAGIC)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            refused("it is not an opampd PostgreSQL dump (its first line is not the dump header)")
        })?;
    if version > schema::SCHEMA_VERSION {
        return Err(refused(format!(
            "its schema version {version} is newer than this release's {}: use a newer opampd and opampctl",
            schema::SCHEMA_VERSION
        )));
    }
    if version < schema::first_version() {
        return Err(refused(format!(
            "its schema version {version} predates PostgreSQL support (version {})",
            schema::first_version()
        )));
    }
    let second = lines.expect_line("the source line")?;
    let (source, created) = second
        .strip_prefix("-- source: ")
        .and_then(|rest| rest.split_once("; created: "))
        .ok_or_else(|| refused(format!("line 2 is not the source line: {second:?}")))?;
    let (source, created) = (source.to_string(), created.to_string());
    // The header, preamble and schema must be exactly those of this version.
    let expected = head(version, &source, &created);
    for want in expected.lines().skip(2) {
        let got = lines.expect_line("the schema statements")?;
        if got != want && !want.starts_with("-- restore:") {
            return Err(refused(format!(
                "line {} differs from the schema of version {version} that opampd writes (found {got:?}, expected {want:?}): it was changed after it was written",
                lines.number
            )));
        }
    }
    let expected_tables = data_tables(version);
    let mut tables: Vec<TableData> = Vec::new();
    let mut line = lines.expect_line("the first table")?;
    while let Some(rest) = line.strip_prefix("COPY ") {
        let (table, columns) = parse_copy(rest).ok_or_else(|| {
            refused(format!(
                "line {} is not a COPY line: {line:?}",
                lines.number
            ))
        })?;
        if !expected_tables.contains(&table.as_str()) {
            return Err(refused(format!(
                "it has rows for table {table:?}, which schema version {version} has no rows for"
            )));
        }
        if tables.iter().any(|t| t.name == table) {
            return Err(refused(format!("it has rows for table {table} twice")));
        }
        let mut rows = 0u64;
        loop {
            let row = lines.expect_line(&format!("the end of table {table}'s rows"))?;
            if row == "\\." {
                break;
            }
            let fields = row.split('\t').count();
            if fields != columns.len() {
                return Err(refused(format!(
                    "line {} (a row of {table}) has {fields} fields, {} expected",
                    lines.number,
                    columns.len()
                )));
            }
            rows += 1;
        }
        let count = lines.expect_line("a row count")?;
        if count != format!("-- {table}: {rows} rows") {
            return Err(refused(format!(
                "table {table} has {rows} rows but line {} says {count:?}: it is damaged",
                lines.number
            )));
        }
        tables.push(TableData {
            name: table,
            columns,
            rows,
        });
        line = lines.expect_line("the next table or the end")?;
    }
    if let Some(missing) = expected_tables
        .iter()
        .find(|t| !tables.iter().any(|d| d.name == **t))
    {
        return Err(refused(format!(
            "it has no rows block for table {missing}: it is incomplete"
        )));
    }
    while line.starts_with("SELECT pg_catalog.setval(") {
        let valid = tables.iter().any(|t| {
            t.columns
                .iter()
                .any(|column| line == setval(&t.name, column).trim_end())
        });
        if !valid {
            return Err(refused(format!(
                "line {} is not a sequence statement opampd writes: {line:?}",
                lines.number
            )));
        }
        line = lines.expect_line("COMMIT")?;
    }
    if line != "COMMIT;" {
        return Err(refused(format!(
            "line {} is {line:?} where COMMIT was expected",
            lines.number
        )));
    }
    let summary = Summary {
        schema_version: version,
        source,
        created,
        tables,
    };
    let end = lines.expect_line("the end line")?;
    let want = format!(
        "{END}{} tables, {} rows",
        summary.tables.len(),
        summary.rows()
    );
    if end != want {
        return Err(refused(format!(
            "its end line {end:?} does not match its content ({want:?})"
        )));
    }
    if let Some(extra) = lines.next()? {
        return Err(refused(format!(
            "there is more after the end line (line {}: {extra:?})",
            lines.number
        )));
    }
    Ok(summary)
}

/// `table (a, b, c) FROM stdin;` → the table and its columns, plain
/// lower-case identifiers only.
fn parse_copy(rest: &str) -> Option<(String, Vec<String>)> {
    let (table, rest) = rest.split_once(" (")?;
    let columns = rest.strip_suffix(") FROM stdin;")?;
    let plain = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let columns: Vec<String> = columns.split(", ").map(str::to_string).collect();
    (plain(table) && columns.iter().all(|c| plain(c))).then(|| (table.to_string(), columns))
}

/// Numbered lines, with read errors and a missing end as refusals.
struct Lines<R> {
    inner: R,
    number: u64,
}

impl<R: BufRead> Lines<R> {
    fn next(&mut self) -> Result<Option<String>, Refused> {
        let mut buf = Vec::new();
        let n = self
            .inner
            .read_until(b'\n', &mut buf)
            .map_err(|e| refused(format!("it cannot be read: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        if buf.last() != Some(&b'\n') {
            return Err(refused(format!(
                "its last line ({}) is cut off: it is truncated",
                self.number
            )));
        }
        buf.pop();
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| refused(format!("line {} is not UTF-8", self.number)))
    }

    fn expect_line(&mut self, what: &str) -> Result<String, Refused> {
        self.next()?.ok_or_else(|| {
            refused(format!(
                "it ends after line {} where {what} was expected: it is truncated",
                self.number
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump of the current version with one row in agents and audit_log.
    fn sample() -> String {
        let version = schema::SCHEMA_VERSION;
        let mut out = head(version, "sqlite", "2026-01-02T03:04:05Z");
        let mut tables = 0;
        let mut total = 0;
        for table in data_tables(version) {
            let columns = vec!["a".to_string(), "b".to_string()];
            out.push_str(&copy_begin(table, &columns));
            let mut rows = 0;
            if table == "agents" || table == "audit_log" {
                push_row(
                    &mut out,
                    &[Field::Text("tab\there\nnew \\ line"), Field::Null],
                );
                rows = 1;
            }
            out.push_str(&copy_end(table, rows));
            tables += 1;
            total += rows;
        }
        out.push_str(&tail(
            &[("audit_log".to_string(), "a".to_string())],
            tables,
            total,
        ));
        out
    }

    fn check_text(text: &str) -> Result<Summary, Refused> {
        check(std::io::Cursor::new(text.as_bytes()))
    }

    #[test]
    fn a_written_dump_checks() {
        let summary = check_text(&sample()).unwrap();
        assert_eq!(summary.schema_version, schema::SCHEMA_VERSION);
        assert_eq!(summary.source, "sqlite");
        assert_eq!(summary.rows(), 2);
        assert_eq!(summary.tables[0].name, "agents");
    }

    #[test]
    fn fields_are_escaped_as_copy_reads_them() {
        let mut row = String::new();
        push_row(
            &mut row,
            &[
                Field::Text("a\tb\\c\nd"),
                Field::Null,
                Field::Integer(-3),
                Field::Bytes(&[1, 255]),
            ],
        );
        assert_eq!(row, "a\\tb\\\\c\\nd\t\\N\t-3\t\\\\x01ff\n");
    }

    #[test]
    fn damaged_dumps_are_refused_saying_why() {
        let good = sample();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("hello\n".into(), "not an opampd PostgreSQL dump"),
            (good[..good.len() - 10].into(), "cut off"),
            (
                good.lines().take(40).collect::<Vec<_>>().join("\n") + "\n",
                "truncated",
            ),
            (
                good.replace("CREATE TABLE agents", "CREATE TABLE agentz"),
                "differs from the schema",
            ),
            (
                good.replace("-- agents: 1 rows", "-- agents: 2 rows"),
                "has 1 rows but",
            ),
            (good.replace("\t\\N\n", "\n"), "has 1 fields, 2 expected"),
            (
                good.replace(
                    &format!("{MAGIC}{}", schema::SCHEMA_VERSION),
                    &format!("{MAGIC}{}", schema::SCHEMA_VERSION + 1),
                ),
                "newer than this release",
            ),
            (
                good.clone() + "DROP TABLE users;\n",
                "more after the end line",
            ),
            (
                good.replace("COMMIT;", "SELECT pg_catalog.setval(x);\nCOMMIT;"),
                "not a sequence statement",
            ),
        ];
        for (text, reason) in cases {
            let err = check_text(&text).unwrap_err();
            assert!(err.0.contains(reason), "{reason}: {err}");
        }
    }
}
