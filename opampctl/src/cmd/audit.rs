//! `opampctl audit`: the audit log (`GET /api/v1/audit`), filtered by actor,
//! action and time, newest first; `-f` polls and prints new entries as they
//! are recorded, oldest first.

use crate::cli::{AuditArgs, Format};
use crate::client::{enc, Client};
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use comfy_table::Cell;
use opamp_proto::api::{AuditEntry, Page};

pub async fn run(settings: &Settings, client: &Client, args: &AuditArgs) -> Result<()> {
    let page = fetch(client, args).await?;
    if !args.follow {
        return output::show(settings, &page, |wide| table(settings, &page.items, wide));
    }
    let mut entries = page.items;
    entries.reverse();
    print_follow(settings, &entries, true)?;
    let mut last = entries.last().map(|entry| entry.id).unwrap_or(0);
    loop {
        tokio::time::sleep(args.interval).await;
        let page = fetch(client, args).await?;
        let mut fresh: Vec<AuditEntry> = page
            .items
            .into_iter()
            .filter(|entry| entry.id > last)
            .collect();
        fresh.reverse();
        if let Some(newest) = fresh.last() {
            last = newest.id;
            print_follow(settings, &fresh, false)?;
        }
    }
}

/// The newest entries that match the filters.
async fn fetch(client: &Client, args: &AuditArgs) -> Result<Page<AuditEntry>> {
    let mut path = format!("/api/v1/audit?limit={}", args.limit);
    for (name, value) in [
        ("actor", &args.actor),
        ("action", &args.action),
        ("since", &args.since),
    ] {
        if let Some(value) = value {
            path.push_str(&format!("&{name}={}", enc(value)));
        }
    }
    client.get(&path).await
}

/// With -f: a table (header first time only), or one JSON object per line.
fn print_follow(settings: &Settings, entries: &[AuditEntry], first: bool) -> Result<()> {
    if settings.quiet {
        return Ok(());
    }
    match settings.format {
        Format::Json | Format::Yaml => {
            for entry in entries {
                let line = serde_json::to_string(entry)
                    .map_err(|e| CtlError::failed(format!("cannot print JSON: {e}")))?;
                output::out(&line);
            }
        }
        Format::Table | Format::Wide => {
            if entries.is_empty() && !first {
                return Ok(());
            }
            let text = table(settings, entries, settings.format == Format::Wide);
            let text = if first {
                text
            } else {
                // The header was printed with the first entries.
                text.lines().skip(1).collect::<Vec<_>>().join("\n")
            };
            if !text.is_empty() {
                output::out(&text);
            }
        }
    }
    Ok(())
}

fn table(settings: &Settings, entries: &[AuditEntry], wide: bool) -> String {
    let mut header = vec!["TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME"];
    if wide {
        header.extend(["FROM", "DETAILS"]);
    }
    let mut rows = output::table(settings, &header);
    for entry in entries {
        let mut row = vec![
            Cell::new(&entry.at),
            Cell::new(&entry.actor),
            Cell::new(&entry.action),
            Cell::new(entry.target.as_deref().unwrap_or("-")),
            output::status_cell(settings, &entry.outcome),
        ];
        if wide {
            row.push(Cell::new(entry.remote_addr.as_deref().unwrap_or("-")));
            row.push(Cell::new(match &entry.details {
                serde_json::Value::Null => "-".to_string(),
                details => details.to_string(),
            }));
        }
        rows.add_row(row);
    }
    output::render(&rows)
}
