//! `opampctl db stats [--integrity] [--data-dir DIR]|optimize|migrate`.

use crate::cli::DbCmd;
use crate::client::Client;
use crate::context::Settings;
use crate::error::{CtlError, Exit, Result};
use crate::localdb;
use crate::output;
use opamp_proto::api::{DbOptimizeReport, DbStats, PgStats};
use reqwest::Method;

fn stats_text(settings: &Settings, st: &DbStats) -> String {
    if let Some(pg) = &st.postgres {
        return postgres_text(settings, st, pg);
    }
    let mut lines = vec![
        format!("path:            {}", st.path),
        format!("schema version:  {}", st.schema_version),
        format!(
            "size:            {} ({} pages of {} B, {} free)",
            output::bytes(st.size_bytes),
            st.page_count,
            st.page_size,
            st.freelist_count
        ),
        format!("wal:             {}", output::bytes(st.wal_bytes)),
    ];
    if let Some(i) = &st.integrity {
        lines.push(format!("integrity:       {i}"));
    }
    let mut t = output::table(settings, &["TABLE", "ROWS"]);
    for (name, rows) in &st.tables {
        t.add_row(vec![name.clone(), rows.to_string()]);
    }
    lines.push(String::new());
    lines.push(output::render(&t));
    lines.join("\n")
}

/// The statistics of a database on PostgreSQL.
fn postgres_text(settings: &Settings, st: &DbStats, pg: &PgStats) -> String {
    let pool = &pg.pool;
    let connections: Vec<String> = pg
        .connections
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let mut lines = vec![
        format!("database:        {}", st.path),
        format!("schema version:  {}", st.schema_version),
        format!("size:            {}", output::bytes(pg.database_bytes)),
        format!(
            "pool (this replica): {} open of {} max, {} idle, {} waits",
            pool.open, pool.max_open, pool.idle, pool.waits_total
        ),
        format!("connections:     {}", connections.join(", ")),
    ];
    let mut t = output::table(
        settings,
        &["TABLE", "ROWS", "DEAD", "SIZE", "VACUUMED", "ANALYZED"],
    );
    for table in &pg.tables {
        t.add_row(vec![
            table.name.clone(),
            table.rows.to_string(),
            table.dead_rows.to_string(),
            output::bytes(table.bytes),
            table.last_vacuum.clone().unwrap_or_else(|| "never".into()),
            table.last_analyze.clone().unwrap_or_else(|| "never".into()),
        ]);
    }
    lines.push(String::new());
    lines.push(output::render(&t));
    if !pg.running.is_empty() {
        let mut t = output::table(
            settings,
            &["PID", "STATE", "SECONDS", "APPLICATION", "WAIT", "QUERY"],
        );
        for query in &pg.running {
            t.add_row(vec![
                query.pid.to_string(),
                query.state.clone(),
                format!("{:.1}", query.seconds),
                query.application.clone(),
                query.wait.clone().unwrap_or_default(),
                query.query.replace('\n', " "),
            ]);
        }
        lines.push(String::new());
        lines.push("running statements:".into());
        lines.push(output::render(&t));
    }
    lines.join("\n")
}

pub async fn run(settings: &Settings, client: &Client, cmd: DbCmd) -> Result<()> {
    match cmd {
        DbCmd::Stats {
            integrity,
            data_dir,
        } => {
            let st: DbStats = match data_dir {
                Some(dir) => {
                    localdb::stats(&dir.join("opamp.db"), integrity).map_err(CtlError::failed)?
                }
                None => {
                    client
                        .get(&format!("/api/v1/admin/db/stats?integrity={integrity}"))
                        .await?
                }
            };
            if integrity && st.postgres.is_some() {
                output::warn(
                    "--integrity is a SQLite check: PostgreSQL checks its own pages (data checksums, the amcheck extension)",
                );
            }
            if !settings.quiet {
                output::show(settings, &st, |_| stats_text(settings, &st))?;
            }
            match &st.integrity {
                Some(i) if i != "ok" => {
                    eprintln!("the integrity check failed: restore the newest good backup with `opampctl restore`");
                    Err(CtlError::silent(Exit::Failed))
                }
                _ => Ok(()),
            }
        }
        DbCmd::Migrate {
            from_sqlite,
            to,
            replace,
        } => super::migrate::run(settings, &from_sqlite, &to, replace).await,
        DbCmd::Optimize => {
            let (_, r): (_, DbOptimizeReport) = client
                .send_json(
                    Method::POST,
                    "/api/v1/admin/db/optimize",
                    &serde_json::json!({}),
                )
                .await?;
            if settings.quiet {
                return Ok(());
            }
            output::show(settings, &r, |_| {
                let mut text: Vec<String> =
                    r.steps.iter().map(|st| format!("done: {st}")).collect();
                text.push(format!(
                    "size ({}) {} -> {} in {} ms",
                    if r.steps
                        .iter()
                        .any(|step| step.starts_with("VACUUM (ANALYZE)"))
                    {
                        "database"
                    } else {
                        "database and WAL"
                    },
                    output::bytes(r.size_before),
                    output::bytes(r.size_after),
                    r.duration_ms
                ));
                text.join("\n")
            })
        }
    }
}
