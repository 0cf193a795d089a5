//! `opampctl rollout start|status [--watch]|pause|resume`.

use crate::cli::RolloutCmd;
use crate::client::{enc, Client};
use crate::context::Settings;
use crate::error::{CtlError, Exit, Result};
use crate::output;
use comfy_table::Cell;
use opamp_proto::api::{RolloutRequest, RolloutStatus};
use reqwest::Method;
use std::time::{Duration, Instant};

pub async fn run(s: &Settings, c: &Client, cmd: RolloutCmd) -> Result<()> {
    match cmd {
        RolloutCmd::Start {
            name,
            version,
            batch_size,
            max_failures,
        } => {
            if batch_size == Some(0) {
                return Err(CtlError::usage("--batch-size must be at least 1"));
            }
            let req = RolloutRequest {
                version,
                batch_size,
                max_failures,
            };
            let (_, st): (_, RolloutStatus) =
                c.send_json(Method::POST, &path(&name, "")?, &req).await?;
            if s.human() {
                output::info(
                    s,
                    format!(
                        "rollout of {} version {} started: {} agents, batches of {}, pause after {} failures; follow it with `opampctl rollout status {} --watch`",
                        st.name, st.version, st.total, st.batch_size, st.max_failures, st.name
                    ),
                );
                Ok(())
            } else {
                output::machine(s, &st)
            }
        }
        RolloutCmd::Status {
            name,
            watch,
            interval,
        } => status(s, c, &name, watch, interval).await,
        RolloutCmd::Pause { name } => change(s, c, &name, "pause").await,
        RolloutCmd::Resume { name } => change(s, c, &name, "resume").await,
    }
}

fn path(name: &str, tail: &str) -> Result<String> {
    if name.trim().is_empty() {
        return Err(CtlError::usage("the configuration name is empty"));
    }
    Ok(format!(
        "/api/v1/configurations/{}/rollout{tail}",
        enc(name)
    ))
}

async fn change(s: &Settings, c: &Client, name: &str, action: &str) -> Result<()> {
    let (_, st): (_, RolloutStatus) = c
        .send_json(
            Method::POST,
            &path(name, &format!("/{action}"))?,
            &serde_json::json!({}),
        )
        .await?;
    if s.human() {
        output::info(
            s,
            format!(
                "rollout of {} version {}: {}",
                st.name, st.version, st.state
            ),
        );
        Ok(())
    } else {
        output::machine(s, &st)
    }
}

/// Whether the rollout stopped because of failures (exit 1).
pub fn stopped_by_failures(st: &RolloutStatus) -> bool {
    st.state == "failed" || (st.state == "paused" && st.failed > 0)
}

fn line(st: &RolloutStatus) -> String {
    format!(
        "{} v{} {}: {} applied, {} applying, {} pending, {} failed of {}",
        st.name, st.version, st.state, st.applied, st.applying, st.pending, st.failed, st.total
    )
}

fn table(s: &Settings, st: &RolloutStatus) -> String {
    let mut t = output::table(
        s,
        &[
            "NAME", "VERSION", "STATE", "TOTAL", "APPLIED", "APPLYING", "PENDING", "FAILED",
        ],
    );
    t.add_row(vec![
        Cell::new(&st.name),
        Cell::new(st.version),
        output::status_cell(s, &st.state),
        Cell::new(st.total),
        Cell::new(st.applied),
        Cell::new(st.applying),
        Cell::new(st.pending),
        Cell::new(st.failed),
    ]);
    let mut text = output::render(&t);
    if let Some(r) = &st.reason {
        text.push_str(&format!("\nreason: {r}"));
    }
    for f in &st.failures {
        text.push_str(&format!("\nfailed: {} {}", f.instance_uid, f.error));
    }
    text
}

fn finish(s: &Settings, st: &RolloutStatus) -> Result<()> {
    if !s.quiet {
        output::show(s, st, |_| table(s, st))?;
    }
    if stopped_by_failures(st) {
        if s.human() {
            eprintln!(
                "rollout of {} stopped after {} failed agents: see `opampctl agents list -o wide`, fix the configuration, then `opampctl configs rollback {}` or `opampctl rollout resume {}`",
                st.name, st.failed, st.name, st.name
            );
        }
        return Err(if s.quiet {
            CtlError::failed(line(st))
        } else {
            CtlError::silent(Exit::Failed)
        });
    }
    Ok(())
}

async fn status(
    s: &Settings,
    c: &Client,
    name: &str,
    watch: bool,
    interval: Duration,
) -> Result<()> {
    let p = path(name, "")?;
    let st: RolloutStatus = c.get(&p).await?;
    if !watch || matches!(st.state.as_str(), "completed" | "failed") {
        return finish(s, &st);
    }
    let bar = s.progress().then(|| {
        let b = indicatif::ProgressBar::new(st.total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(format!("{} v{}", st.name, st.version));
        b.enable_steady_tick(Duration::from_millis(150));
        b
    });
    let plain = bar.is_none() && s.human() && !s.quiet;
    let mut last_line = String::new();
    let mut last_print = Instant::now();
    let mut st = st;
    loop {
        if let Some(b) = &bar {
            b.set_length(st.total);
            b.set_position(st.applied + st.failed);
            b.set_message(format!(
                "{} applying, {} pending, {} failed ({})",
                st.applying, st.pending, st.failed, st.state
            ));
        } else if plain {
            let l = line(&st);
            if l != last_line || last_print.elapsed() > Duration::from_secs(30) {
                eprintln!("{} {l}", chrono::Local::now().format("%H:%M:%S"));
                last_line = l;
                last_print = Instant::now();
            }
        }
        if st.state == "completed" || stopped_by_failures(&st) {
            break;
        }
        tokio::time::sleep(interval).await;
        st = c.get(&p).await?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    finish(s, &st)
}
