//! PostgreSQL, from the server's database statistics: reachability, pool
//! saturation and long-running statements — the runbook's pool-exhaustion
//! procedure (DatabaseConnectionPoolExhausted).

use super::report::{fail, ok, warn, Check};
use super::Diagnosis;
use opamp_proto::api::{DbStats, PgStats};

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
