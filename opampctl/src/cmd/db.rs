//! `opampctl db stats [--integrity] [--data-dir DIR]|optimize`.

use crate::cli::DbCmd;
use crate::client::Client;
use crate::context::Settings;
use crate::error::{CtlError, Exit, Result};
use crate::localdb;
use crate::output;
use opamp_proto::api::{DbOptimizeReport, DbStats};
use reqwest::Method;

fn stats_text(settings: &Settings, st: &DbStats) -> String {
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
                    "size (database and WAL) {} -> {} in {} ms",
                    output::bytes(r.size_before),
                    output::bytes(r.size_after),
                    r.duration_ms
                ));
                text.join("\n")
            })
        }
    }
}
