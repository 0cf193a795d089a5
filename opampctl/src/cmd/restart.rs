//! `opampctl restart [--via systemd|compose|kubernetes] [--dry-run] [--config FILE] [--timeout 60s]`:
//! validate the configuration, restart through the supervisor, wait for
//! ready, report how many agents came back.

use super::{health, supervisor};
use crate::cli::RestartArgs;
use crate::client::Client;
use crate::context::Settings;
use crate::error::{CtlError, Exit, Result};
use crate::output;
use opamp_proto::api::{Agent, Page};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct RestartReport {
    pub commands: Vec<String>,
    pub ready: bool,
    /// Connected agents before the restart (None if the server did not answer).
    pub agents_before: Option<u64>,
    pub agents_after: Option<u64>,
    pub seconds: f64,
}

async fn connected(client: &Client) -> Result<u64> {
    let p: Page<Agent> = client
        .get("/api/v1/agents?status=connected&limit=1")
        .await?;
    Ok(p.total)
}

pub async fn run(settings: &Settings, client: &Client, args: &RestartArgs) -> Result<()> {
    let mut plan: Vec<Vec<String>> = Vec::new();
    if let Some(cfg) = &args.config {
        plan.push(vec![
            "opampd".into(),
            "check-config".into(),
            "--config".into(),
            cfg.display().to_string(),
        ]);
    }
    let restart = supervisor::restart_commands(args.via, &args.supervisor);
    if args.dry_run {
        let mut lines: Vec<String> = plan
            .iter()
            .chain(&restart)
            .map(|v| supervisor::show(v))
            .collect();
        lines.push(format!(
            "# then: wait up to {}s for {}/health/ready and for the connected agents to come back",
            args.timeout.as_secs(),
            client.base
        ));
        if settings.human() {
            output::out(&lines.join("\n"));
        } else {
            output::machine(
                settings,
                &serde_json::json!({"dry_run": true, "commands": lines}),
            )?;
        }
        return Ok(());
    }
    if let Some(cfg) = &args.config {
        if !cfg.is_file() {
            return Err(CtlError::usage(format!(
                "--config {} does not exist",
                cfg.display()
            )));
        }
        output::info(settings, format!("validating {}", cfg.display()));
        supervisor::run_checked(&plan[0]).map_err(|e| {
            CtlError::failed(format!(
                "{}; the configuration is not valid, so opampd was not restarted",
                e.message
            ))
        })?;
    }
    let started = Instant::now();
    let before = match connected(client).await {
        Ok(n) => Some(n),
        Err(e) => {
            output::warn(format!(
                "cannot count connected agents before the restart ({}); restarting anyway",
                e.message
            ));
            None
        }
    };
    for argv in &restart {
        output::info(settings, format!("running: {}", supervisor::show(argv)));
        supervisor::run_checked(argv)?;
    }
    // Give the supervisor a moment to stop the old process before probing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = started + args.timeout;
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    health::wait_ready(settings, client, remaining)
        .await
        .map_err(|e| {
            let exit = if e.exit == Exit::Unreachable {
                Exit::Unreachable
            } else {
                Exit::Failed
            };
            CtlError {
                exit,
                message: format!(
                    "opampd did not become ready after the restart: {}",
                    e.message
                ),
            }
        })?;
    output::info(settings, format!("{} is ready", client.base));
    let mut after = connected(client).await.ok();
    if let Some(b) = before {
        while after.is_some_and(|n| n < b) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            after = connected(client).await.ok().or(after);
        }
    }
    let report = RestartReport {
        commands: restart.iter().map(|v| supervisor::show(v)).collect(),
        ready: true,
        agents_before: before,
        agents_after: after,
        seconds: started.elapsed().as_secs_f64(),
    };
    if settings.human() {
        if !settings.quiet {
            let agents = match (before, after) {
                (Some(before), Some(after)) if after >= before => {
                    format!("{after} of {before} agents reconnected")
                },
                (Some(before), Some(after)) => format!(
                    "only {after} of {before} agents reconnected within {}s (agents retry with back-off; check `opampctl agents list --status disconnected`)",
                    report.seconds.round() as u64
                ),
                (None, Some(after)) => format!("{after} agents connected"),
                _ => "agent count unknown".into(),
            };
            let via = match args.via {
                crate::cli::Supervisor::Systemd => "systemd",
                crate::cli::Supervisor::Compose => "compose",
                crate::cli::Supervisor::Kubernetes => "kubernetes",
            };
            output::out(&format!(
                "opampd restarted via {via} in {:.1}s: ready; {agents}",
                report.seconds
            ));
        }
        Ok(())
    } else {
        output::machine(settings, &report)
    }
}
