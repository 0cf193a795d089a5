//! Writing and loading opampd's dump (the format is `store/dump.rs`).
//!
//! A dump is written from one REPEATABLE READ, READ ONLY transaction: every
//! table as of one moment, while replicas keep writing. A load never runs
//! a statement of the file: it checks the whole file first, creates the
//! dump's schema version with this build's own migrations in a scratch
//! schema, copies the rows in there with COPY, migrates the scratch schema
//! to this release, then replaces every table's rows in the live schema,
//! all in one transaction under the migration lock: other replicas see the
//! old content or the new, never a mix.

use super::schema::{self, MIGRATION_LOCK};
use crate::store::agents::{AgentEvent, LiveAgent};
use crate::store::dump::{self, Refused};
use crate::store::{now_ms, rfc3339};
use anyhow::{Context, Result};
use deadpool_postgres::{Object, Transaction};
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// The scratch schema a load fills first.
const SCRATCH: &str = "opampd_load";

/// What a written dump holds.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub schema_version: u32,
    pub tables: usize,
    pub rows: u64,
}

/// How a load treats what the database holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Replace the content (a restore).
    Replace,
    /// Only into a database with no opampd rows (a migration); refused otherwise.
    Empty,
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub summary: dump::Summary,
    /// Rows of every table of this release's schema after the load, in dump order.
    pub counts: Vec<(String, u64)>,
    /// Live agents the dump did not contain, kept in the inventory as connected.
    pub live_agents_added: u64,
}

/// A database that is not empty, refused by a load into an empty one.
#[derive(Debug)]
pub struct NotEmpty(pub Vec<String>);

impl std::fmt::Display for NotEmpty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the database is not empty: tables {} have rows",
            self.0.join(", ")
        )
    }
}

impl std::error::Error for NotEmpty {}

/// Writes a dump of the database to `dest`, a new owner-only file.
pub async fn write(client: &mut Object, dest: &Path) -> Result<Written> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await?
        .get(0);
    let version = version as u32;
    let file = crate::files::create_private(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file));
    out.write_all(dump::head(version, "postgresql", &rfc3339(now_ms())).as_bytes())
        .await?;
    let tables = dump::data_tables(version);
    let mut total = 0;
    for table in &tables {
        let columns = columns(&tx, table).await?;
        out.write_all(dump::copy_begin(table, &columns).as_bytes())
            .await?;
        let stream = tx
            .copy_out(&format!("COPY {table} ({}) TO STDOUT", columns.join(", ")))
            .await
            .with_context(|| format!("cannot read table {table}"))?;
        futures_util::pin_mut!(stream);
        let mut rows = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading table {table}"))?;
            rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            out.write_all(&chunk).await?;
        }
        out.write_all(dump::copy_end(table, rows).as_bytes())
            .await?;
        total += rows;
    }
    let identities: Vec<(String, String)> = identities(&tx)
        .await?
        .into_iter()
        .filter(|(table, _)| tables.contains(&table.as_str()))
        .collect();
    out.write_all(dump::tail(&identities, tables.len(), total).as_bytes())
        .await?;
    out.flush().await?;
    out.get_mut().sync_all().await?;
    tx.commit().await?;
    Ok(Written {
        schema_version: version,
        tables: tables.len(),
        rows: total,
    })
}

/// Checks the dump at `path` ([`dump::check`]); a refusal is a
/// [`Refused`] error.
pub async fn check(path: &Path) -> Result<dump::Summary> {
    let path = path.to_path_buf();
    let summary = tokio::task::spawn_blocking(move || {
        let file =
            std::fs::File::open(&path).map_err(|e| Refused(format!("it cannot be read: {e}")))?;
        dump::check(std::io::BufReader::new(file))
    })
    .await??;
    Ok(summary)
}

/// Loads the dump at `path` in one transaction (see the module docs).
/// `live` are the agents connected to this replica: stored connected, and
/// added if the dump lacks them (so are those other live replicas hold).
pub async fn load(
    client: &mut Object,
    path: &Path,
    target: Target,
    live: Vec<LiveAgent>,
) -> Result<Loaded> {
    let summary = check(path).await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("cannot take the migration lock")?;
    let live_schema: String = tx
        .query_one("SELECT current_schema()::text", &[])
        .await?
        .get(0);
    // An empty database gets this release's schema first.
    schema::migrate_in(&tx).await?;
    let tables = dump::data_tables(schema::SCHEMA_VERSION);
    if target == Target::Empty {
        let mut filled = Vec::new();
        for table in &tables {
            let any: bool = tx
                .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
                .await?
                .get(0);
            if any {
                filled.push(table.to_string());
            }
        }
        if !filled.is_empty() {
            return Err(NotEmpty(filled).into());
        }
    }
    tx.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {SCRATCH} CASCADE; CREATE SCHEMA {SCRATCH}; SET LOCAL search_path TO {SCRATCH}"
    ))
    .await?;
    for sql in schema::migrations_between(0, summary.schema_version) {
        tx.batch_execute(sql)
            .await
            .context("cannot create the dump's schema")?;
    }
    copy_rows(&tx, path, &summary).await?;
    for sql in schema::migrations_between(summary.schema_version, schema::SCHEMA_VERSION) {
        tx.batch_execute(sql)
            .await
            .context("cannot migrate the dump to this release's schema")?;
    }
    // Agents reconnect to report; tokens of users the dump lacks are revoked.
    tx.batch_execute(
        "UPDATE agents SET status = 'disconnected' WHERE status != 'disconnected';
         UPDATE api_tokens SET revoked = TRUE
             WHERE NOT revoked AND owner NOT IN (SELECT username FROM users);",
    )
    .await?;
    tx.batch_execute(&format!(
        "SET LOCAL search_path TO {}",
        quote_ident(&live_schema)
    ))
    .await?;
    tx.batch_execute(&format!("TRUNCATE {}", tables.join(", ")))
        .await?;
    for table in &tables {
        let columns = columns(&tx, table).await?.join(", ");
        tx.batch_execute(&format!(
            "INSERT INTO {table} ({columns}) SELECT {columns} FROM {SCRATCH}.{table}"
        ))
        .await
        .with_context(|| format!("cannot copy table {table} into place"))?;
    }
    for (table, column) in identities(&tx).await? {
        if tables.contains(&table.as_str()) {
            tx.batch_execute(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE(MAX({column}), 0) + 1, false) FROM {table}"
            ))
            .await?;
        }
    }
    tx.batch_execute(&format!("DROP SCHEMA {SCRATCH} CASCADE"))
        .await?;
    let live_agents_added = keep_live_agents(&tx, &live).await?;
    let mut counts = Vec::new();
    for table in &tables {
        let rows: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        counts.push((table.to_string(), rows as u64));
    }
    // Into an empty database every row of the dump is there, and nothing else.
    if target == Target::Empty {
        for (table, rows) in &counts {
            let dumped = summary
                .tables
                .iter()
                .find(|t| &t.name == table)
                .map_or(0, |t| t.rows);
            anyhow::ensure!(
                *rows == dumped,
                "table {table} holds {rows} rows after the load, the dump {dumped}: nothing was committed"
            );
        }
    }
    tx.commit().await?;
    Ok(Loaded {
        summary,
        counts,
        live_agents_added,
    })
}

/// Loads the dump at `path` into the database at `url` from outside a
/// running opampd (`opampctl db migrate`): into an empty database, or
/// replacing its content when `replace`. A database with rows is refused
/// with a [`NotEmpty`] error otherwise.
pub async fn load_into(url: &super::DatabaseUrl, path: &Path, replace: bool) -> Result<Loaded> {
    let mut config = url.config().clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    config.application_name("opampctl db migrate");
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(1)
        .build()
        .context("cannot build a PostgreSQL connection")?;
    let mut client = pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", url.redacted()))?;
    let target = if replace {
        Target::Replace
    } else {
        Target::Empty
    };
    load(&mut client, path, target, Vec::new()).await
}

/// Copies every block of the dump into the scratch schema's tables.
async fn copy_rows(tx: &Transaction<'_>, path: &Path, summary: &dump::Summary) -> Result<()> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
    let mut line = Vec::new();
    let mut blocks = summary.tables.iter();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        if !line.starts_with(b"COPY ") {
            continue;
        }
        let table = blocks
            .next()
            .context("the dump changed while it was loaded")?;
        let sink = tx
            .copy_in(&format!(
                "COPY {SCRATCH}.{} ({}) FROM STDIN",
                table.name,
                table.columns.join(", ")
            ))
            .await
            .with_context(|| format!("cannot load table {}", table.name))?;
        futures_util::pin_mut!(sink);
        let mut chunk: Vec<u8> = Vec::with_capacity(256 * 1024);
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).await? == 0 {
                anyhow::bail!("the dump changed while it was loaded");
            }
            if line == b"\\.\n" {
                break;
            }
            chunk.extend_from_slice(&line);
            if chunk.len() >= 256 * 1024 {
                sink.send(bytes::Bytes::from(std::mem::take(&mut chunk)))
                    .await
                    .with_context(|| format!("loading table {}", table.name))?;
            }
        }
        if !chunk.is_empty() {
            sink.send(bytes::Bytes::from(chunk))
                .await
                .with_context(|| format!("loading table {}", table.name))?;
        }
        let rows = sink
            .finish()
            .await
            .with_context(|| format!("loading table {}", table.name))?;
        anyhow::ensure!(
            rows == table.rows,
            "table {} received {rows} rows of {}",
            table.name,
            table.rows
        );
    }
}

/// Stores the live agents connected (adding those the loaded rows lack,
/// with a connection event), and adds the agents other live replicas hold;
/// returns how many were added.
async fn keep_live_agents(tx: &Transaction<'_>, live: &[LiveAgent]) -> Result<u64> {
    let now = now_ms();
    let mut added = Vec::new();
    for agent in live {
        let exists = tx
            .query_opt("SELECT 1 FROM agents WHERE uid = $1", &[&agent.uid])
            .await?
            .is_some();
        tx.execute(
            "INSERT INTO agents (uid, status, transport, first_seen, last_seen, updated_at, remote_addr)
             VALUES ($1, 'connected', $2, $3, $3, $4, $5)
             ON CONFLICT (uid) DO UPDATE SET status = 'connected', transport = excluded.transport,
                last_seen = GREATEST(agents.last_seen, excluded.last_seen),
                updated_at = excluded.updated_at,
                remote_addr = COALESCE(excluded.remote_addr, agents.remote_addr)",
            &[&agent.uid, &agent.transport, &agent.last_seen, &now, &agent.remote_addr],
        )
        .await?;
        if !exists {
            added.push(AgentEvent {
                uid: agent.uid.clone(),
                at: now,
                event: "connected",
                remote_addr: agent.remote_addr.clone(),
                details: Some(format!(
                    "{}; connected during a restore that did not contain it",
                    agent.transport
                )),
            });
        }
    }
    // Agents held by other live replicas: their sessions report the rest.
    let elsewhere = tx
        .query(
            "INSERT INTO agents (uid, status, first_seen, last_seen, updated_at)
             SELECT o.uid, 'connected', o.since, $1, $1 FROM agent_owners o
             WHERE NOT EXISTS (SELECT 1 FROM agents a WHERE a.uid = o.uid)
             RETURNING uid",
            &[&now],
        )
        .await?;
    for row in elsewhere {
        added.push(AgentEvent {
            uid: row.get(0),
            at: now,
            event: "connected",
            remote_addr: None,
            details: Some(
                "held by another replica during a restore that did not contain it".into(),
            ),
        });
    }
    super::agents::insert_events(tx, &added).await?;
    Ok(added.len() as u64)
}

/// A table's columns in order (the table found through the search path).
async fn columns(tx: &Transaction<'_>, table: &str) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT attname::text FROM pg_attribute
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
             ORDER BY attnum",
            &[&table],
        )
        .await?;
    anyhow::ensure!(!rows.is_empty(), "the database has no table {table}");
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Identity columns (table, column) of the current schema.
async fn identities(tx: &Transaction<'_>) -> Result<Vec<(String, String)>> {
    let rows = tx
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND is_identity = 'YES'
             ORDER BY table_name, column_name",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// A schema name as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
