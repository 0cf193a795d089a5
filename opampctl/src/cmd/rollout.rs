//! `opampctl rollout start|status [--watch]|pause|resume`.

use crate::cli::RolloutCmd;
use crate::client::{enc, Client};
use crate::cmd::staged::{
    self, allowance_text, batches_text, count, timeout_seconds, timeout_text, Staged,
};
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use comfy_table::Cell;
use opamp_proto::api::{RolloutPlan, RolloutRequest, RolloutStatus};
use reqwest::Method;

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
                        batches_text(st.batch_size, st.batches),
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
        } => {
            staged::status::<RolloutStatus>(settings, client, &path(&name, "")?, watch, interval)
                .await
        }
        RolloutCmd::Pause { name } => {
            staged::change::<RolloutStatus>(settings, client, &path(&name, "/pause")?, None).await
        }
        RolloutCmd::Resume { name, max_failures } => {
            staged::change::<RolloutStatus>(
                settings,
                client,
                &path(&name, "/resume")?,
                max_failures,
            )
            .await
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

fn path(name: &str, tail: &str) -> Result<String> {
    if name.trim().is_empty() {
        return Err(CtlError::usage("the configuration name is empty"));
    }
    Ok(format!(
        "/api/v1/configurations/{}/rollout{tail}",
        enc(name)
    ))
}

/// How many waiting agents a table names (`-o wide` names all the server sent).
const WAITING_SHOWN: usize = 10;

impl Staged for RolloutStatus {
    fn title(&self) -> String {
        format!("{} version {}", self.name, self.version)
    }

    fn state(&self) -> &str {
        &self.state
    }

    fn ended(&self) -> bool {
        matches!(self.state.as_str(), "completed" | "failed")
    }

    /// Failed or paused.
    fn stopped(&self) -> bool {
        matches!(self.state.as_str(), "failed" | "paused")
    }

    fn line(&self) -> String {
        line(self)
    }

    fn table(&self, settings: &Settings, wide: bool) -> String {
        table(settings, self, wide)
    }

    fn advice(&self) -> String {
        stopped_advice(self)
    }

    fn bar(&self) -> (String, u64, u64, String) {
        (
            format!("{} v{}", self.name, self.version),
            self.total,
            self.applied + self.failed + self.unconfirmed,
            format!(
                "{} applying, {} pending, {} failed, {} unconfirmed ({})",
                self.applying, self.pending, self.failed, self.unconfirmed, self.state
            ),
        )
    }
}

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
