//! `agents label|delete|restart -l SELECTOR / --status STATUS`: one action
//! on every agent the filters pick. The agents are listed first (the count
//! and a few uids are shown, and confirmed on a terminal or with --yes),
//! then acted on one by one through the single-agent API, a few at a time;
//! the summary counts successes and failures, and any failure exits 1.

use super::{delete_one, fetch, label_one, restart_one};
use crate::cli::FleetArgs;
use crate::client::Client;
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use futures_util::StreamExt;
use opamp_proto::api::LabelPatch;
use serde::Serialize;

/// What to do to each agent.
pub enum Action {
    Label(LabelPatch),
    Delete { force: bool },
    Restart,
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Label(_) => "label",
            Action::Delete { .. } => "delete",
            Action::Restart => "restart",
        }
    }

    /// The past tense, for the summary.
    fn done(&self) -> &'static str {
        match self {
            Action::Label(_) => "labeled",
            Action::Delete { .. } => "deleted",
            Action::Restart => "asked to restart",
        }
    }
}

/// Agents shown by uid before the confirmation.
const SHOWN: usize = 5;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;

/// The `-o json` summary.
#[derive(Serialize)]
struct Summary {
    action: &'static str,
    selector: Option<String>,
    status: Option<&'static str>,
    matched: usize,
    succeeded: usize,
    failed: usize,
    results: Vec<Outcome>,
}

#[derive(Serialize)]
struct Outcome {
    instance_uid: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(
    settings: &Settings,
    client: &Client,
    fleet: &FleetArgs,
    action: Action,
) -> Result<()> {
    let status = fleet.status.map(|st| st.as_str());
    let picked = fetch(client, fleet.selector.as_deref(), status, 1000, true).await?;
    let uids: Vec<String> = picked.items.into_iter().map(|a| a.instance_uid).collect();
    let filters = describe(fleet);
    if uids.is_empty() {
        output::info(
            settings,
            format!("no agents match {filters}: nothing to do"),
        );
        return finish(settings, fleet, &action, Vec::new());
    }
    let mut shown = uids
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if uids.len() > SHOWN {
        shown.push_str(&format!(" and {} more", uids.len() - SHOWN));
    }
    let noun = if uids.len() == 1 { "agent" } else { "agents" };
    output::info(
        settings,
        format!("{} {noun} match {filters}: {shown}", uids.len()),
    );
    crate::prompt::confirm(
        fleet.yes,
        &format!("{} {} {noun}", action.name(), uids.len()),
    )?;
    let action_ref = &action;
    let results: Vec<Outcome> = futures_util::stream::iter(uids)
        .map(|uid| async move {
            let done = match action_ref {
                Action::Label(patch) => label_one(client, &uid, patch).await.map(drop),
                Action::Delete { force } => delete_one(client, &uid, *force).await,
                Action::Restart => restart_one(client, &uid).await.map(drop),
            };
            Outcome {
                ok: done.is_ok(),
                error: done.err().map(|e| e.message),
                instance_uid: uid,
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    finish(settings, fleet, &action, results)
}

/// Prints the summary; exit 1 when any agent failed.
fn finish(
    settings: &Settings,
    fleet: &FleetArgs,
    action: &Action,
    results: Vec<Outcome>,
) -> Result<()> {
    let failed = results.iter().filter(|r| !r.ok).count();
    let summary = Summary {
        action: action.name(),
        selector: fleet.selector.clone(),
        status: fleet.status.map(|st| st.as_str()),
        matched: results.len(),
        succeeded: results.len() - failed,
        failed,
        results,
    };
    if settings.human() {
        for r in summary.results.iter().filter(|r| !r.ok) {
            eprintln!(
                "{}: {}",
                r.instance_uid,
                r.error.as_deref().unwrap_or("failed")
            );
        }
        if summary.matched > 0 && failed == 0 {
            output::info(
                settings,
                format!(
                    "{} {} of {} agents",
                    action.done(),
                    summary.succeeded,
                    summary.matched
                ),
            );
        }
    } else {
        output::machine(settings, &summary)?;
    }
    if failed == 0 {
        return Ok(());
    }
    Err(CtlError::failed(format!(
        "{} {} of {} agents; {failed} failed",
        action.done(),
        summary.succeeded,
        summary.matched
    )))
}

/// `-l env=prod --status connected`, as the user gave them.
fn describe(fleet: &FleetArgs) -> String {
    let mut parts = Vec::new();
    if let Some(selector) = &fleet.selector {
        parts.push(format!("-l {selector:?}"));
    }
    if let Some(status) = fleet.status {
        parts.push(format!("--status {}", status.as_str()));
    }
    parts.join(" ")
}
