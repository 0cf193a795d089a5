//! `opampctl rollout start|status [--watch]|pause|resume`.

use crate::cli::RolloutCmd;
use crate::client::{enc, Client};
use crate::context::Settings;
use crate::error::{CtlError, Exit, Result};
use crate::output;
use comfy_table::Cell;
use opamp_proto::api::{RolloutPlan, RolloutRequest, RolloutResume, RolloutStatus};
use reqwest::Method;
use std::time::{Duration, Instant};

pub async fn run(settings: &Settings, client: &Client, cmd: RolloutCmd) -> Result<()> {
    match cmd {
        RolloutCmd::Start {
            name,
            version,
            batch_size,
            max_failures,
            dry_run,
            force,
            batch_timeout,
        } => {
            if batch_size == Some(0) {
                return Err(CtlError::usage("--batch-size must be at least 1"));
            }
            let req = RolloutRequest {
                version,
                batch_size,
                max_failures,
                force,
                dry_run,
                batch_timeout: batch_timeout.map(timeout_seconds).transpose()?,
            };
            if dry_run {
                let (_, plan): (_, RolloutPlan) = client
                    .send_json(Method::POST, &path(&name, "")?, &req)
                    .await?;
                return show_plan(settings, &plan, force);
            }
            let (_, st): (_, RolloutStatus) = client
                .send_json(Method::POST, &path(&name, "")?, &req)
                .await?;
            if settings.human() {
                output::info(
                    settings,
                    format!(
                        "rollout of {} version {} started: {}, {}, {}, {}; follow it with `opampctl rollout status {} --watch`",
                        st.name,
                        st.version,
                        count(st.total, "agent"),
                        batches_text(&st),
                        allowance_text(st.max_failures),
                        timeout_text(st.batch_timeout),
                        st.name
                    ),
                );
                if st.incompatible > 0 {
                    output::info(
                        settings,
                        format!(
                            "{} skipped: they lack components the configuration uses (`opampctl rollout status {}` names them; --force rolls out to them too)",
                            count(st.incompatible, "agent"),
                            st.name
                        ),
                    );
                }
                Ok(())
            } else {
                output::machine(settings, &st)
            }
        }
        RolloutCmd::Status {
            name,
            watch,
            interval,
        } => status(settings, client, &name, watch, interval).await,
        RolloutCmd::Pause { name } => change(settings, client, &name, "pause", None).await,
        RolloutCmd::Resume { name, max_failures } => {
            change(settings, client, &name, "resume", max_failures).await
        }
    }
}

/// A dry run: every targeted agent and what it lacks.
fn show_plan(settings: &Settings, plan: &RolloutPlan, force: bool) -> Result<()> {
    output::show(settings, plan, |_| {
        let mut t = output::table(settings, &["INSTANCE UID", "COMPONENTS", "MISSING"]);
        for a in &plan.agents {
            t.add_row(vec![
                Cell::new(&a.instance_uid),
                Cell::new(&a.components),
                Cell::new(if a.missing.is_empty() {
                    "-".to_string()
                } else {
                    a.missing.join(", ")
                }),
            ]);
        }
        output::render(&t)
    })?;
    if settings.human() {
        let targeted = plan.agents.len() as u64;
        let skipped = if force || plan.incompatible == 0 {
            String::new()
        } else {
            format!("; {} would be skipped", count(plan.incompatible, "agent"))
        };
        output::info(
            settings,
            format!(
                "dry run of {} version {}: {} targeted, {} lacking components, {} never reported them{skipped}; nothing changed",
                plan.name,
                plan.version,
                count(targeted, "agent"),
                plan.incompatible,
                plan.unknown
            ),
        );
    }
    Ok(())
}

pub fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// "in one batch", "in 3 batches of 10".
fn batches_text(st: &RolloutStatus) -> String {
    if st.batch_size == 0 || st.batches <= 1 {
        "in one batch".into()
    } else {
        format!("in {} batches of {}", st.batches, st.batch_size)
    }
}

/// What the failure allowance means, in words.
pub fn allowance_text(max_failures: u64) -> String {
    match max_failures {
        0 => "pausing at the first failed agent".into(),
        n => format!("pausing when more than {} fail", count(n, "agent")),
    }
}

/// `--batch-timeout` in whole seconds (rounded up); 0 stays 0 (no limit).
pub fn timeout_seconds(timeout: Duration) -> Result<u64> {
    if timeout.is_zero() {
        return Ok(0);
    }
    if timeout < Duration::from_secs(1) {
        return Err(CtlError::usage(
            "--batch-timeout must be at least 1s (or 0 to wait for every report)",
        ));
    }
    Ok(timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0))
}

/// The batch timeout, in words.
pub fn timeout_text(seconds: u64) -> String {
    match seconds {
        0 => "waiting for every agent's report".into(),
        s => format!("counting agents silent after {s}s per batch as unconfirmed"),
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

async fn change(
    settings: &Settings,
    client: &Client,
    name: &str,
    action: &str,
    max_failures: Option<u64>,
) -> Result<()> {
    let body = RolloutResume { max_failures };
    let (_, st): (_, RolloutStatus) = client
        .send_json(Method::POST, &path(name, &format!("/{action}"))?, &body)
        .await?;
    if settings.human() {
        output::info(
            settings,
            format!(
                "rollout of {} version {}: {}",
                st.name, st.version, st.state
            ),
        );
        Ok(())
    } else {
        output::machine(settings, &st)
    }
}

/// Whether the rollout stopped: failed or paused (exit 1).
pub fn stopped(st: &RolloutStatus) -> bool {
    matches!(st.state.as_str(), "failed" | "paused")
}

/// How many waiting agents a table names (`-o wide` names all the server sent).
const WAITING_SHOWN: usize = 10;

fn line(st: &RolloutStatus) -> String {
    format!(
        "{} v{} {}: {} applied, {} applying, {} pending, {} failed, {} unconfirmed, {} incompatible of {}",
        st.name,
        st.version,
        st.state,
        st.applied,
        st.applying,
        st.pending,
        st.failed,
        st.unconfirmed,
        st.incompatible,
        st.total
    )
}

fn table(settings: &Settings, st: &RolloutStatus, wide: bool) -> String {
    let mut t = output::table(
        settings,
        &[
            "NAME",
            "VERSION",
            "STATE",
            "TOTAL",
            "APPLIED",
            "APPLYING",
            "PENDING",
            "FAILED",
            "UNCONFIRMED",
            "INCOMPATIBLE",
        ],
    );
    t.add_row(vec![
        Cell::new(&st.name),
        Cell::new(st.version),
        output::status_cell(settings, &st.state),
        Cell::new(st.total),
        Cell::new(st.applied),
        Cell::new(st.applying),
        Cell::new(st.pending),
        Cell::new(st.failed),
        Cell::new(st.unconfirmed),
        Cell::new(st.incompatible),
    ]);
    let mut text = output::render(&t);
    if let Some(r) = &st.reason {
        text.push_str(&format!("\nreason: {r}"));
    }
    for f in &st.failures {
        text.push_str(&format!("\nfailed: {} {}", f.instance_uid, f.error));
    }
    // The server names at most 100 agents of each kind; a table names a few.
    let shown = if wide { usize::MAX } else { WAITING_SHOWN };
    let groups = [
        (
            "unconfirmed",
            st.unconfirmed,
            st.unconfirmed_agents
                .iter()
                .map(|u| format!("{} {} ({})", u.instance_uid, u.state, u.reason))
                .collect::<Vec<_>>(),
        ),
        (
            "waiting",
            st.waiting_total,
            st.waiting
                .iter()
                .map(|w| format!("{} {} ({})", w.instance_uid, w.state, w.status))
                .collect(),
        ),
        (
            "incompatible",
            st.incompatible,
            st.incompatible_agents
                .iter()
                .map(|i| format!("{} lacks {}", i.instance_uid, i.missing.join(", ")))
                .collect(),
        ),
    ];
    for (kind, total, lines) in groups {
        for line in lines.iter().take(shown) {
            text.push_str(&format!("\n{kind}: {line}"));
        }
        let named = lines.len().min(shown) as u64;
        if total > named {
            let hint = if wide {
                ""
            } else {
                " (-o wide names up to 100)"
            };
            text.push_str(&format!("\n… and {} more {kind}{hint}", total - named));
        }
    }
    text
}

fn finish(settings: &Settings, st: &RolloutStatus) -> Result<()> {
    if !settings.quiet {
        output::show(settings, st, |wide| table(settings, st, wide))?;
    }
    if stopped(st) {
        if settings.human() {
            eprintln!("{}", stopped_advice(st));
        }
        return Err(if settings.quiet {
            CtlError::failed(line(st))
        } else {
            CtlError::silent(Exit::Failed)
        });
    }
    Ok(())
}

/// What to do about a paused or failed rollout, in commands.
fn stopped_advice(st: &RolloutStatus) -> String {
    let name = &st.name;
    if st.failed > st.max_failures {
        format!(
            "rollout of {name} {} after {}: see `opampctl agents list -o wide`, fix the configuration, then \
             `opampctl configs rollback {name}`, or go on with `opampctl rollout resume {name} --max-failures {}`",
            st.state,
            count(st.failed, "failed agent"),
            st.failed
        )
    } else {
        format!(
            "rollout of {name} is {}{}: go on with `opampctl rollout resume {name}`",
            st.state,
            st.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )
    }
}

async fn status(
    settings: &Settings,
    client: &Client,
    name: &str,
    watch: bool,
    interval: Duration,
) -> Result<()> {
    let p = path(name, "")?;
    let st: RolloutStatus = client.get(&p).await?;
    if !watch || matches!(st.state.as_str(), "completed" | "failed") {
        return finish(settings, &st);
    }
    let bar = settings.progress().then(|| {
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
    let plain = bar.is_none() && settings.human() && !settings.quiet;
    let mut last_line = String::new();
    let mut last_print = Instant::now();
    let mut st = st;
    loop {
        if let Some(b) = &bar {
            b.set_length(st.total);
            b.set_position(st.applied + st.failed + st.unconfirmed);
            b.set_message(format!(
                "{} applying, {} pending, {} failed, {} unconfirmed ({})",
                st.applying, st.pending, st.failed, st.unconfirmed, st.state
            ));
        } else if plain {
            let l = line(&st);
            if l != last_line || last_print.elapsed() > Duration::from_secs(30) {
                eprintln!("{} {l}", chrono::Local::now().format("%H:%M:%S"));
                last_line = l;
                last_print = Instant::now();
            }
        }
        if st.state == "completed" || stopped(&st) {
            break;
        }
        tokio::time::sleep(interval).await;
        st = client.get(&p).await?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    finish(settings, &st)
}
