//! `opampctl health [--wait --timeout 30s]`: /health/live, /health/ready and
//! /health; exit 1 unless all say healthy.

use crate::cli::HealthArgs;
use crate::client::Client;
use crate::context::Settings;
use crate::error::{CtlError, Exit, Result};
use crate::output;
use opamp_proto::api::HealthReport;
use reqwest::Method;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct Probe {
    pub status_code: u16,
    pub status: String,
}

/// Everything `health` found; the JSON of `-o json`.
#[derive(Debug, Serialize)]
pub struct HealthSummary {
    pub server: String,
    /// `ok` only when live, ready and /health all say so.
    pub status: String,
    pub live: Probe,
    pub ready: Probe,
    pub health: Option<HealthReport>,
}

async fn probe(client: &Client, path: &str) -> Result<(u16, serde_json::Value)> {
    let resp = client.send_any(client.request(Method::GET, path)).await?;
    let code = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    Ok((code, body))
}

/// Polls /health/ready until 200; Err after `timeout` (exit 3 if never reached).
pub async fn wait_ready(settings: &Settings, client: &Client, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let bar = settings.progress().then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_message(format!("waiting for {} to be ready", client.base));
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    loop {
        let last = match probe(client, "/health/ready").await {
            Ok((200, _)) => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                return Ok(());
            }
            Ok((code, body)) => {
                let word = body["status"].as_str().unwrap_or("not ready").to_string();
                CtlError::failed(format!(
                    "{} is not ready after {}s: /health/ready answers {code} ({word})",
                    client.base,
                    timeout.as_secs()
                ))
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let mut e = last;
            if e.exit == Exit::Unreachable {
                e.message = format!("gave up after {}s: {}", timeout.as_secs(), e.message);
            }
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn check(client: &Client) -> Result<HealthSummary> {
    let (live_code, live_body) = probe(client, "/health/live").await?;
    let (ready_code, ready_body) = probe(client, "/health/ready").await?;
    let resp = client
        .send_any(client.request(Method::GET, "/health"))
        .await?;
    let health: Option<HealthReport> = resp.json().await.ok();
    let ok =
        live_code == 200 && ready_code == 200 && health.as_ref().is_some_and(|h| h.status == "ok");
    let status = if ok {
        "ok".to_string()
    } else if let Some(h) = health.as_ref().filter(|h| h.status != "ok") {
        h.status.clone()
    } else if ready_code != 200 {
        "not-ready".to_string()
    } else {
        "unhealthy".to_string()
    };
    let word = |b: &serde_json::Value, code: u16| {
        b["status"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| if code == 200 { "ok" } else { "failed" }.into())
    };
    Ok(HealthSummary {
        server: client.base.clone(),
        status,
        live: Probe {
            status_code: live_code,
            status: word(&live_body, live_code),
        },
        ready: Probe {
            status_code: ready_code,
            status: word(&ready_body, ready_code),
        },
        health,
    })
}

fn table(settings: &Settings, h: &HealthSummary) -> String {
    let mut t = output::table(settings, &["CHECK", "STATUS", "DETAIL"]);
    t.add_row(vec![
        comfy_table::Cell::new("live"),
        output::status_cell(settings, &h.live.status),
        comfy_table::Cell::new(format!("/health/live {}", h.live.status_code)),
    ]);
    t.add_row(vec![
        comfy_table::Cell::new("ready"),
        output::status_cell(settings, &h.ready.status),
        comfy_table::Cell::new(format!("/health/ready {}", h.ready.status_code)),
    ]);
    let mut problems = Vec::new();
    if let Some(r) = &h.health {
        t.add_row(vec![
            comfy_table::Cell::new("health"),
            output::status_cell(settings, &r.status),
            comfy_table::Cell::new(format!(
                "opampd {}{}, up {}",
                r.version,
                replica(&r.replica_id),
                uptime(r.uptime_seconds)
            )),
        ]);
        t.add_row(vec![
            comfy_table::Cell::new("database"),
            output::status_cell(settings, &r.database.status),
            comfy_table::Cell::new(format!(
                "{}{:.1} ms, schema {}, writer queue {}",
                backend(&r.database.backend),
                r.database.latency_ms,
                r.database.schema_version,
                r.database.writer_queue
            )),
        ]);
        t.add_row(vec![
            comfy_table::Cell::new("agents"),
            comfy_table::Cell::new("-"),
            comfy_table::Cell::new(format!(
                "{} connected, {} stale, {} disconnected ({} total)",
                r.agents.connected, r.agents.stale, r.agents.disconnected, r.agents.total
            )),
        ]);
        t.add_row(vec![
            comfy_table::Cell::new("db pool"),
            comfy_table::Cell::new("-"),
            comfy_table::Cell::new(format!(
                "{} of {} open, {} in use, {} waits",
                r.pool.open, r.pool.max_open, r.pool.in_use, r.pool.waits_total
            )),
        ]);
        problems.clone_from(&r.problems);
    } else {
        t.add_row(vec![
            comfy_table::Cell::new("health"),
            output::status_cell(settings, "failed"),
            comfy_table::Cell::new("/health did not answer with a report"),
        ]);
    }
    let mut text = output::render(&t);
    for p in problems {
        text.push_str(&format!("\nproblem: {p}"));
    }
    text
}

/// `, replica ID` for servers that report one.
fn replica(id: &str) -> String {
    if id.is_empty() {
        String::new()
    } else {
        format!(", replica {id}")
    }
}

/// `BACKEND, ` for servers that report one.
fn backend(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!("{name}, ")
    }
}

fn uptime(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

pub async fn run(settings: &Settings, client: &Client, args: &HealthArgs) -> Result<()> {
    if args.wait {
        wait_ready(settings, client, args.timeout).await?;
    }
    let h = check(client).await?;
    if !settings.quiet {
        output::show(settings, &h, |_| table(settings, &h))?;
    }
    if h.status == "ok" {
        Ok(())
    } else if settings.quiet {
        Err(CtlError::failed(format!("{} is {}", client.base, h.status)))
    } else {
        Err(CtlError::silent(Exit::Failed))
    }
}
