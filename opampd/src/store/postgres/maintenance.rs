//! Statistics and maintenance of the PostgreSQL database: table sizes, rows
//! and dead row versions, the database's size, this replica's pool, the
//! connections and the statements running now (`opampctl db stats`,
//! `opampctl doctor`), and VACUUM ANALYZE (`opampctl db optimize`).

use super::{schema, Postgres};
use anyhow::Result;
use deadpool_postgres::GenericClient;
use opamp_proto::api::{DbOptimizeReport, DbStats, PgQuery, PgStats, PgTableStats, PoolUsage};
use std::collections::BTreeMap;
use std::time::Instant;

/// The statements `stats` lists at most.
const RUNNING_LIMIT: i64 = 20;

impl Postgres {
    /// The figures of `GET /api/v1/admin/db/stats`.
    pub(super) async fn database_stats(&self) -> Result<DbStats> {
        let client = self.client().await?;
        let version: i32 = client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .await?
            .get(0);
        let row = client
            .query_one(
                "SELECT pg_database_size(current_database()), current_setting('block_size')::bigint",
                &[],
            )
            .await?;
        let (size, block): (i64, i64) = (row.get(0), row.get(1));
        let mut tables = Vec::new();
        let mut rows = BTreeMap::new();
        for table in schema::tables(schema::SCHEMA_VERSION) {
            let figures = table_stats(&client, table).await?;
            rows.insert(table.to_string(), figures.rows);
            tables.push(figures);
        }
        let connections = client
            .query(
                "SELECT COALESCE(state, 'unknown'), count(*) FROM pg_stat_activity
                 WHERE datname = current_database() GROUP BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1) as u64))
            .collect();
        let running = client
            .query(
                "SELECT pid::bigint, state,
                        EXTRACT(EPOCH FROM now() - COALESCE(
                            CASE WHEN state LIKE 'idle in transaction%' THEN xact_start END,
                            query_start))::float8,
                        application_name,
                        wait_event_type || ':' || wait_event,
                        left(query, 200)
                 FROM pg_stat_activity
                 WHERE datname = current_database() AND pid != pg_backend_pid()
                   AND state IS NOT NULL AND state != 'idle'
                   AND COALESCE(xact_start, query_start) IS NOT NULL
                 ORDER BY 3 DESC NULLS LAST LIMIT $1",
                &[&RUNNING_LIMIT],
            )
            .await?
            .iter()
            .map(|row| PgQuery {
                pid: row.get(0),
                state: row.get(1),
                seconds: row.get::<_, Option<f64>>(2).unwrap_or(0.0),
                application: row.get(3),
                wait: row.get(4),
                query: row.get(5),
            })
            .collect();
        let pool = self.pool_stats();
        Ok(DbStats {
            path: self.redacted_url().to_string(),
            schema_version: version as u32,
            page_size: block as u64,
            page_count: (size / block.max(1)) as u64,
            freelist_count: 0,
            size_bytes: size as u64,
            wal_bytes: 0,
            tables: rows,
            integrity: None,
            postgres: Some(PgStats {
                database_bytes: size as u64,
                tables,
                pool: PoolUsage {
                    max_open: pool.max_open as u64,
                    open: pool.open as u64,
                    in_use: pool.open.saturating_sub(pool.idle) as u64,
                    idle: pool.idle as u64,
                    waits_total: pool.waits,
                },
                connections,
                running,
            }),
        })
    }

    /// VACUUM ANALYZE of every opampd table, one at a time (VACUUM cannot
    /// run in a transaction; each table's statement is its own).
    pub(super) async fn vacuum_analyze(&self) -> Result<DbOptimizeReport> {
        let start = Instant::now();
        let client = self.client().await?;
        let size = || async {
            let size: i64 = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await?
                .get(0);
            anyhow::Ok(size as u64)
        };
        let before = size().await?;
        let mut steps = Vec::new();
        for table in schema::tables(schema::SCHEMA_VERSION) {
            let statement = format!("VACUUM (ANALYZE) {table}");
            client.batch_execute(&statement).await.map_err(|e| {
                anyhow::anyhow!("{statement} failed: {e} (the database user must own the table)")
            })?;
            steps.push(statement);
        }
        Ok(DbOptimizeReport {
            steps,
            size_before: before,
            size_after: size().await?,
            duration_ms: start.elapsed().as_millis() as u64,
        })
    }
}

/// One table's rows (exact), dead row versions, size and last maintenance.
async fn table_stats(client: &impl GenericClient, table: &str) -> Result<PgTableStats> {
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0);
    let row = client
        .query_one(
            "SELECT COALESCE(s.n_dead_tup, 0), pg_total_relation_size(c.oid),
                    (EXTRACT(EPOCH FROM GREATEST(s.last_vacuum, s.last_autovacuum)) * 1000)::bigint,
                    (EXTRACT(EPOCH FROM GREATEST(s.last_analyze, s.last_autoanalyze)) * 1000)::bigint
             FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
             WHERE c.oid = to_regclass($1)",
            &[&table],
        )
        .await?;
    let time = |ms: Option<i64>| ms.map(crate::store::rfc3339);
    Ok(PgTableStats {
        name: table.to_string(),
        rows: rows as u64,
        dead_rows: row.get::<_, i64>(0) as u64,
        bytes: row.get::<_, i64>(1) as u64,
        last_vacuum: time(row.get(2)),
        last_analyze: time(row.get(3)),
    })
}
