//! The database: the file on this host (integrity, schema, WAL), and the
//! server's view of it (read pool, writer queue, slow queries, size).

use super::report::{fail, ok, skip, warn, Check, Verdict};
use super::Diagnosis;
use crate::localdb;
use crate::output;
use opamp_proto::api::{DbStats, HealthReport};
use reqwest::Method;
use std::path::Path;

/// A WAL this large means checkpoints are blocked.
const LARGE_WAL: u64 = 256 << 20;

impl Diagnosis<'_> {
    /// `database`: the file in the data directory (--data-dir, or data_dir
    /// of --config), opened read-only; skipped on PostgreSQL.
    pub(super) fn check_database_file(&mut self) {
        if let Some(why) = self.postgres_backend() {
            self.push(skip(
                "database",
                format!("{why}: there is no SQLite file to check (the postgres check covers the database)"),
            ));
            return;
        }
        let Some(dir) = self.data_dir.clone() else {
            let why = self.no_data_dir();
            self.push(skip(
                "database",
                format!("{why} (the server's view is in the health check)"),
            ));
            return;
        };
        let db = dir.join("opamp.db");
        if !db.exists() {
            self.push(warn(
                "database",
                format!("{} does not exist yet", db.display()),
                "opampd creates it at its first start; if it should exist, check --data-dir",
            ));
            return;
        }
        self.push(database_file_verdict(&db));
    }

    /// `db-pool`, `slow-queries` and `db-size`, from the health report,
    /// /metrics and the admin API.
    pub(super) async fn check_db_pool(&mut self) {
        let Some(health) = self.health.clone() else {
            return;
        };
        self.push(pool_verdict(&health));
        self.check_slow_queries().await;
        self.check_db_size().await;
    }

    /// Why the server's database is PostgreSQL, when it is: its health
    /// report says so, or --config sets `database.url`.
    fn postgres_backend(&self) -> Option<String> {
        match &self.health {
            Some(health) if health.database.backend == "postgresql" => {
                Some("the server keeps its data in PostgreSQL".into())
            }
            _ => self.postgres_note.clone(),
        }
    }

    async fn check_slow_queries(&mut self) {
        let response = self
            .client
            .send_any(self.client.request(Method::GET, "/metrics"))
            .await;
        let check = match response {
            Ok(response) if response.status().is_success() => {
                let text = response.text().await.unwrap_or_default();
                slow_queries_verdict(&query_stats(&text))
            }
            _ => warn(
                "slow-queries",
                "cannot read /metrics",
                "check that /metrics is reachable from here",
            ),
        };
        self.push(check);
    }

    async fn check_db_size(&mut self) {
        let check = match self.client.get::<DbStats>("/api/v1/admin/db/stats").await {
            Ok(stats) => match &stats.postgres {
                Some(pg) => {
                    self.check_postgres(&stats, pg);
                    return;
                }
                None => db_size_verdict(&stats),
            },
            Err(e) => warn(
                "db-size",
                format!("cannot read database statistics: {}", e.message),
                "use an admin token for the full report",
            ),
        };
        self.push(check);
    }
}

fn database_file_verdict(db: &Path) -> Check {
    let version = match localdb::check_db(db) {
        Ok(version) => version,
        Err(e) => {
            return fail(
                "database",
                format!("{}: {e}", db.display()),
                "stop opampd and restore the newest good backup: `opampctl restore FILE --data-dir DIR`",
            )
        }
    };
    let size = std::fs::metadata(db).map(|meta| meta.len()).unwrap_or(0);
    let wal = std::fs::metadata(format!("{}-wal", db.display()))
        .map(|meta| meta.len())
        .unwrap_or(0);
    if wal > LARGE_WAL {
        warn(
            "database",
            format!(
                "{}: integrity ok, schema {version}, {} but the WAL is {}",
                db.display(),
                output::bytes(size),
                output::bytes(wal)
            ),
            "a long-running reader blocks checkpoints; run `opampctl db optimize`",
        )
    } else {
        ok(
            "database",
            format!(
                "{}: integrity ok, schema {version}, {}, WAL {}",
                db.display(),
                output::bytes(size),
                output::bytes(wal)
            ),
        )
    }
}

fn pool_verdict(health: &HealthReport) -> Check {
    let pool = &health.pool;
    let mut notes = vec![format!(
        "read pool {} of {} open, {} in use, {} waits; writer queue {}",
        pool.open, pool.max_open, pool.in_use, pool.waits_total, health.database.writer_queue
    )];
    let mut verdict = Verdict::Ok;
    let mut remedy = None;
    if pool.waits_total > 0 || (pool.max_open > 0 && pool.in_use >= pool.max_open) {
        verdict = Verdict::Warn;
        remedy = Some(format!(
            "requests waited for a read connection: raise database.max_open_conns (now {}) and find slow queries below",
            pool.max_open
        ));
    }
    if health.database.writer_queue > 1000 {
        verdict = Verdict::Warn;
        notes.push("the writer is behind".into());
        remedy.get_or_insert_with(|| {
            "the disk is slow or busy: check iostat; raise database.flush_interval_ms to batch more".into()
        });
    }
    Check {
        name: "db-pool".into(),
        verdict,
        detail: notes.join("; "),
        remedy,
    }
}

fn slow_queries_verdict(stats: &[QueryStat]) -> Check {
    let slow: u64 = stats.iter().map(|stat| stat.slow).sum();
    let mut worst: Vec<&QueryStat> = stats.iter().filter(|stat| stat.count > 0).collect();
    worst.sort_by(|a, b| b.mean().total_cmp(&a.mean()));
    let top: Vec<String> = worst
        .iter()
        .take(3)
        .map(|stat| {
            format!(
                "{} {:.1} ms avg over {}",
                stat.operation,
                stat.mean() * 1000.0,
                stat.count
            )
        })
        .collect();
    let detail = format!(
        "{slow} slow queries; slowest on average: {}",
        if top.is_empty() {
            "-".into()
        } else {
            top.join(", ")
        }
    );
    if slow > 0 {
        warn(
            "slow-queries",
            detail,
            "run `opampctl db optimize` (ANALYZE, VACUUM); if the slow operation is a list, use smaller pages or selectors",
        )
    } else {
        ok("slow-queries", detail)
    }
}

fn db_size_verdict(stats: &DbStats) -> Check {
    let free = stats.freelist_count * stats.page_size;
    let detail = format!(
        "{} on disk, WAL {}, {} free pages ({}), {} agents",
        output::bytes(stats.size_bytes),
        output::bytes(stats.wal_bytes),
        stats.freelist_count,
        output::bytes(free),
        stats.tables.get("agents").copied().unwrap_or(0)
    );
    if stats.wal_bytes > LARGE_WAL || (stats.size_bytes > 0 && free * 4 > stats.size_bytes) {
        warn(
            "db-size",
            detail,
            "run `opampctl db optimize` in a quiet hour",
        )
    } else {
        ok("db-size", detail)
    }
}

/// One operation's query statistics from /metrics.
#[derive(Debug, Default, Clone)]
pub struct QueryStat {
    pub operation: String,
    pub count: u64,
    pub sum_seconds: f64,
    pub slow: u64,
}

impl QueryStat {
    fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_seconds / self.count as f64
        }
    }
}

/// Reads db query counts, durations and slow counts per operation.
pub fn query_stats(metrics: &str) -> Vec<QueryStat> {
    let mut by_operation: std::collections::BTreeMap<String, QueryStat> = Default::default();
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(operation) = name_labels
            .split("operation=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or("");
        let value: f64 = value.parse().unwrap_or(0.0);
        let stat = by_operation
            .entry(operation.to_string())
            .or_insert_with(|| QueryStat {
                operation: operation.to_string(),
                ..Default::default()
            });
        match name {
            "opamp_platform_db_query_duration_seconds_sum" => stat.sum_seconds = value,
            "opamp_platform_db_query_duration_seconds_count" => stat.count = value as u64,
            "opamp_platform_db_slow_queries_total" => stat.slow = value as u64,
            _ => {}
        }
    }
    by_operation.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_query_stats() {
        let metrics = "# HELP x\nopamp_platform_db_query_duration_seconds_sum{operation=\"agents_list\"} 2\nopamp_platform_db_query_duration_seconds_count{operation=\"agents_list\"} 4\nopamp_platform_db_slow_queries_total{operation=\"agents_list\"} 1\n";
        let stats = query_stats(metrics);
        assert_eq!(stats.len(), 1);
        assert_eq!((stats[0].count, stats[0].slow), (4, 1));
        assert!((stats[0].mean() - 0.5).abs() < 1e-9);
    }
}
