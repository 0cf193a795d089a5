//! PostgreSQL, from the server's database statistics: reachability, pool
//! saturation and long-running statements — the runbook's pool-exhaustion
//! procedure (DatabaseConnectionPoolExhausted).

use super::report::{fail, ok, warn, Check};
use super::Diagnosis;
use opamp_proto::api::{DbStats, PgStats, PgTableStats};

impl Diagnosis<'_> {
    /// `postgres`, `pg-pool` and `long-queries`, when the server runs on PostgreSQL.
    pub(super) fn check_postgres(&mut self, stats: &DbStats, pg: &PgStats) {
        let threshold = self.args.long_query_seconds as f64;
        let reach = match self.health.as_ref() {
            Some(health) if health.database.status != "ok" => fail(
                "postgres",
                format!("the server reports its database {}", health.database.status),
                "check the database host and credentials with `pg_isready -d URL` and `psql URL -c 'SELECT 1'` from the opampd host",
            ),
            Some(health) => ok(
                "postgres",
                format!(
                    "{} answers the server in {:.1} ms, schema {}, {}",
                    stats.path,
                    health.database.latency_ms,
                    stats.schema_version,
                    crate::output::bytes(pg.database_bytes)
                ),
            ),
            None => ok("postgres", format!("{} answers the server", stats.path)),
        };
        self.push(reach);
        self.push(pool_verdict(pg));
        self.push(long_queries_verdict(pg, threshold));
        self.push(size_verdict(pg));
    }
}

/// Dead row versions above this share of a table's rows (in a table of at
/// least [`BLOATED_MIN_ROWS`]) ask for a VACUUM.
const BLOATED_SHARE: u64 = 4;
const BLOATED_MIN_ROWS: u64 = 1000;

/// `db-size` on PostgreSQL: the database's size, the largest tables, and
/// tables whose dead row versions VACUUM has not reclaimed.
fn size_verdict(pg: &PgStats) -> Check {
    let mut largest: Vec<&PgTableStats> = pg.tables.iter().collect();
    largest.sort_by_key(|table| std::cmp::Reverse(table.bytes));
    let top: Vec<String> = largest
        .iter()
        .take(3)
        .map(|table| {
            format!(
                "{} {} ({} rows)",
                table.name,
                crate::output::bytes(table.bytes),
                table.rows
            )
        })
        .collect();
    let agents = pg
        .tables
        .iter()
        .find(|table| table.name == "agents")
        .map_or(0, |table| table.rows);
    let detail = format!(
        "{} in all, {agents} agents; largest tables: {}",
        crate::output::bytes(pg.database_bytes),
        if top.is_empty() {
            "-".into()
        } else {
            top.join(", ")
        }
    );
    let bloated: Vec<String> = pg
        .tables
        .iter()
        .filter(|table| {
            table.rows >= BLOATED_MIN_ROWS && table.dead_rows * BLOATED_SHARE > table.rows
        })
        .map(|table| {
            format!(
                "{} has {} dead of {} rows",
                table.name, table.dead_rows, table.rows
            )
        })
        .collect();
    if bloated.is_empty() {
        ok("db-size", detail)
    } else {
        warn(
            "db-size",
            format!("{detail}; {}", bloated.join(", ")),
            "autovacuum is behind: run `opampctl db optimize` (VACUUM ANALYZE) in a quiet hour",
        )
    }
}

fn pool_verdict(pg: &PgStats) -> Check {
    let pool = &pg.pool;
    let connections: u64 = pg.connections.values().sum();
    let detail = format!(
        "this replica: {} of {} connections open, {} in use, {} waits; {connections} connections to the database in all",
        pool.open, pool.max_open, pool.in_use, pool.waits_total
    );
    if pool.waits_total > 0 || (pool.max_open > 0 && pool.in_use >= pool.max_open) {
        warn(
            "pg-pool",
            detail,
            "requests waited for a connection: look at long-queries below (a stuck statement holds a connection); raise database.max_open_conns, keeping replicas x max_open_conns under PostgreSQL's max_connections",
        )
    } else {
        ok("pg-pool", detail)
    }
}

fn long_queries_verdict(pg: &PgStats, threshold: f64) -> Check {
    let long: Vec<String> = pg
        .running
        .iter()
        .filter(|query| query.seconds >= threshold)
        .map(|query| {
            format!(
                "pid {} {} {:.0}s ({}): {}",
                query.pid,
                query.state,
                query.seconds,
                query.application,
                query.query.replace('\n', " ")
            )
        })
        .collect();
    if long.is_empty() {
        ok(
            "long-queries",
            format!(
                "none running {threshold:.0} s or longer ({} running now)",
                pg.running.len()
            ),
        )
    } else {
        warn(
            "long-queries",
            long.join("; "),
            "a statement or transaction open this long holds a connection and blocks VACUUM: find its application; end it with SELECT pg_cancel_backend(PID) (or pg_terminate_backend(PID)); 'idle in transaction' is a client that never finished its transaction",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, rows: u64, dead_rows: u64, bytes: u64) -> PgTableStats {
        PgTableStats {
            name: name.into(),
            rows,
            dead_rows,
            bytes,
            ..Default::default()
        }
    }

    #[test]
    fn size_names_the_largest_tables_and_warns_of_dead_rows() {
        let mut pg = PgStats {
            database_bytes: 8 << 20,
            tables: vec![
                table("agents", 5000, 100, 4 << 20),
                table("audit_log", 200, 150, 1 << 20),
                table("configs", 3, 0, 16 << 10),
            ],
            ..Default::default()
        };
        let check = size_verdict(&pg);
        assert_eq!(
            check.verdict,
            super::super::report::Verdict::Ok,
            "{check:?}"
        );
        assert!(check.detail.contains("5000 agents"), "{}", check.detail);
        assert!(check.detail.starts_with("8.0 MiB"), "{}", check.detail);
        // Small tables never warn; a large one with a quarter dead does.
        pg.tables[0].dead_rows = 1500;
        let check = size_verdict(&pg);
        assert_eq!(check.verdict, super::super::report::Verdict::Warn);
        assert!(
            check.detail.contains("agents has 1500 dead of 5000 rows"),
            "{}",
            check.detail
        );
        assert!(check.remedy.unwrap().contains("opampctl db optimize"));
    }
}
