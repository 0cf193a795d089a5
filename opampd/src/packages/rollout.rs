//! Package rollouts: which version of a package goes to which agents, batch
//! by batch, with the configuration rollouts' engine ([`crate::rollouts`]:
//! [`Staged`], [`Progress`], [`next`], [`automatic`]).
//!
//! - Who: the agents matching the rollout's selector when it starts, in uid
//!   order, `batch_size` per batch. An agent without AcceptsPackages, or
//!   without a catalogue file for its platform (`os.type` / `host.arch`,
//!   see [`PackageVersion::file_for`]), is skipped: reported, never offered,
//!   holding no batch.
//! - What they get: [`rebuild_targets`] turns the latest rollout of every
//!   package into a [`PackageTarget`]; released agents get the rolled-out
//!   version, the others keep the previous completed one (or get nothing).
//! - Progress: from the agents' package statuses (the live session's, else
//!   the stored ones): `installed` once the agent has the offered package's
//!   hash, `failed` on INSTALL_FAILED for it (failures beyond
//!   `max_failures` pause the rollout), `downloading` / `installing`
//!   meanwhile; silent agents are counted unconfirmed once the batch timed
//!   out, and at once when they do not report package statuses.
//! - [`step`] runs beside the configuration rollouts' step, on the replica
//!   that leads rollouts.

use crate::app::App;
use crate::opamp::packages::{
    package_hash, PackageFile, PackageTarget, PackageVersion, ARCH_KEY, OS_KEY,
};
use crate::opamp::session::attr_strings;
use crate::rollouts::{automatic, batch_expired, next, Next, Progress, Staged, WAITING_MAX};
use crate::selector::{AgentView, Selector};
use crate::store::package_rollouts::{PackageRolloutAgent, PackageRolloutRow, StoredPackageAgent};
use crate::store::packages::PackageRow;
use crate::store::rfc3339;
use anyhow::Result;
use opamp_proto::api;
use opamp_proto::api::RolloutFailure;
use opamp_proto::caps::{ACCEPTS_PACKAGES, REPORTS_PACKAGE_STATUSES};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// How many agents a package rollout status lists.
pub const AGENTS_MAX: usize = 1000;

impl Staged for PackageRolloutRow {
    fn id(&self) -> i64 {
        self.id
    }
    fn max_failures(&self) -> u64 {
        self.max_failures
    }
    fn released_batches(&self) -> u64 {
        self.released_batches
    }
    fn batch_timeout_ms(&self) -> u64 {
        self.batch_timeout_ms
    }
    fn batch_started_at(&self) -> i64 {
        self.batch_started_at
    }
}

/// Rebuilds the package targets (and the rollout gauges) from the store;
/// called by [`crate::rollouts::rebuild_targets`], under its lock.
pub async fn rebuild_targets(app: &App) -> Result<()> {
    let rows = app.store.package_targets().await?;
    let mut states = [0i64; 3];
    let mut targets = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(i) = STATES.iter().position(|s| *s == row.rollout.state) {
            states[i] += 1;
        }
        let selector = match Selector::parse(&row.rollout.selector) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(package = %row.rollout.name, error = %e, "stored selector does not parse; package not offered");
                continue;
            }
        };
        targets.push(PackageTarget {
            selector,
            current: Arc::new(version_of(&app.hosted, &row.current)),
            previous: row
                .previous
                .as_ref()
                .map(|p| Arc::new(version_of(&app.hosted, p))),
            released: row.released.map(|uids| {
                uids.iter()
                    .filter_map(|u| opamp_proto::parse_uid(u))
                    .collect::<HashSet<_>>()
            }),
        });
    }
    app.package_targets.replace(targets);
    app.metrics.set_package_rollouts(states);
    Ok(())
}

/// The states `opamp_platform_package_rollouts` counts (latest rollout of each package).
pub const STATES: [&str; 3] = ["running", "paused", "completed"];

/// A catalogue version as offered: the files agents can download (a hosted
/// file at the address opampd serves it from).
pub fn version_of(hosted: &crate::packages::hosted::Hosted, row: &PackageRow) -> PackageVersion {
    PackageVersion {
        name: row.name.clone(),
        version: row.version.clone(),
        top_level: row.top_level,
        files: row
            .files
            .iter()
            .filter_map(|f| {
                let mut content_hash = [0u8; 32];
                hex::decode_to_slice(&f.sha256, &mut content_hash).ok()?;
                Some(PackageFile {
                    os: f.os.clone(),
                    arch: f.arch.clone(),
                    url: match f.hosted {
                        true => hosted.url(&row.name, &row.version, &f.os, &f.arch),
                        false => f.url.clone()?,
                    },
                    content_hash,
                    signature: f.signature.clone().unwrap_or_default(),
                })
            })
            .collect(),
    }
}

/// An agent as a package rollout sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub uid: String,
    pub view: AgentView,
    pub capabilities: u64,
    /// Reported package statuses (JSON).
    pub statuses: Option<String>,
}

impl Candidate {
    /// `os.type/host.arch`, `?` for what it does not report.
    pub fn platform(&self) -> String {
        let get = |k| self.view.values.get(k).map(String::as_str).unwrap_or("?");
        format!("{}/{}", get(OS_KEY), get(ARCH_KEY))
    }

    /// The file it gets of `version`, or why it is skipped.
    pub fn placement<'a>(&self, version: &'a PackageVersion) -> Result<&'a PackageFile, String> {
        if self.capabilities & ACCEPTS_PACKAGES == 0 {
            return Err(
                "the agent does not accept packages (no AcceptsPackages capability)".into(),
            );
        }
        version.file_for(&self.view).ok_or_else(|| {
            format!(
                "no file of {} {} for its platform {} (add one with `opampctl packages add`)",
                version.name,
                version.version,
                self.platform()
            )
        })
    }
}

fn stored_candidate(uid: String, s: &StoredPackageAgent) -> Candidate {
    let obj = |t: &str| -> Map<String, Value> { serde_json::from_str(t).unwrap_or_default() };
    let mut values = attr_strings(&obj(&s.identifying), &obj(&s.non_identifying));
    let labels: BTreeMap<String, String> = serde_json::from_str(&s.labels).unwrap_or_default();
    values.extend(labels);
    Candidate {
        uid,
        view: AgentView {
            values,
            components: None,
        },
        capabilities: s.capabilities,
        statuses: s.package_statuses.clone(),
    }
}

/// The live session's view of an agent, if this replica holds it.
fn live_candidate(app: &App, uid: &str) -> Option<Candidate> {
    let parsed = opamp_proto::parse_uid(uid)?;
    app.fleet
        .with(&parsed, |s| {
            (!s.is_disconnected()).then(|| Candidate {
                uid: uid.to_string(),
                view: s.selector_view(),
                capabilities: s.capabilities(),
                statuses: s.package_statuses().map(str::to_string),
            })
        })
        .flatten()
}

/// Every agent matching `selector`: stored ones and live ones not stored
/// yet, the live session's view over the stored one, in uid order.
pub async fn candidates(app: &App, selector: &Selector) -> Result<Vec<Candidate>> {
    let mut found: BTreeMap<String, Candidate> = app
        .store
        .package_candidates(selector)
        .await?
        .into_iter()
        .map(|(uid, s)| (uid.clone(), stored_candidate(uid, &s)))
        .collect();
    for uid in app.fleet.uids() {
        let id = opamp_proto::uid_string(&uid);
        if let Some(live) = live_candidate(app, &id) {
            if selector.matches(&live.view) {
                found.insert(id, live);
            } else {
                found.remove(&id);
            }
        }
    }
    Ok(found.into_values().collect())
}

/// Where one agent of a rollout stands.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentState {
    Pending,
    Downloading(Option<f64>),
    Installing,
    Installed,
    Failed(String),
}

/// What the agent reports of `name`, judged against the offer it should
/// have (`hash`, of `version`).
pub fn reported_state(statuses: Option<&str>, name: &str, version: &str, hash: &str) -> AgentState {
    let Some(value) = statuses.and_then(|t| serde_json::from_str::<Value>(t).ok()) else {
        return AgentState::Pending;
    };
    let Some(p) = value["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
    else {
        return AgentState::Pending;
    };
    let text = |k: &str| p[k].as_str().unwrap_or("");
    let status = text("status");
    if text("agent_has_hash") == hash
        || (text("agent_has_version") == version && status == "installed")
    {
        return AgentState::Installed;
    }
    if text("server_offered_hash") != hash && text("server_offered_version") != version {
        return AgentState::Pending;
    }
    match status {
        "install_failed" => AgentState::Failed(if text("error").is_empty() {
            "the agent reported INSTALL_FAILED without a message".into()
        } else {
            text("error").to_string()
        }),
        "downloading" => AgentState::Downloading(p["download_percent"].as_f64()),
        "install_pending" | "installing" => AgentState::Installing,
        _ => AgentState::Pending,
    }
}

/// A rollout's agents counted ([`Progress`], as the engine needs it) and
/// listed (at most [`AGENTS_MAX`]).
pub fn evaluate(
    app: &App,
    rollout: &PackageRolloutRow,
    version: Option<&PackageVersion>,
    agents: &[PackageRolloutAgent],
) -> (Progress, Vec<api::PackageRolloutAgent>) {
    let selector = Selector::parse(&rollout.selector).unwrap_or_default();
    let mut p = Progress {
        released_done: true,
        ..Default::default()
    };
    let mut listed = Vec::new();
    let now = crate::store::now_ms();
    let current_expired = batch_expired(rollout, now);
    let timeout = rollout.batch_timeout_ms / 1000;
    for a in agents {
        p.batches = p.batches.max(a.batch + 1);
        let candidate = live_candidate(app, &a.uid).or_else(|| {
            a.stored
                .as_ref()
                .map(|s| stored_candidate(a.uid.clone(), s))
        });
        let Some(candidate) = candidate else { continue };
        if !selector.matches(&candidate.view) {
            continue;
        }
        p.total += 1;
        let uid = opamp_proto::parse_uid(&a.uid).unwrap_or([0; 16]);
        let status = app.fleet.liveness(&uid, now, app.stale_after_ms());
        let mut shown = api::PackageRolloutAgent {
            instance_uid: a.uid.clone(),
            batch: a.batch,
            platform: candidate.platform(),
            state: String::new(),
            status: status.as_str().into(),
            error: None,
            reason: None,
            download_percent: None,
        };
        let placed = match version {
            Some(v) => candidate.placement(v).map(|f| (v, f)),
            None => Err("the version was deleted from the catalogue".into()),
        };
        let (v, file) = match placed {
            Ok(placed) => placed,
            Err(reason) => {
                p.incompatible += 1;
                shown.state = "skipped".into();
                shown.reason = Some(reason);
                push(&mut listed, shown);
                continue;
            }
        };
        let released = rollout.state == "completed" || a.batch < rollout.released_batches;
        if !released {
            p.pending += 1;
            shown.state = "pending".into();
            push(&mut listed, shown);
            continue;
        }
        let passed = rollout.state == "completed" || a.batch + 1 < rollout.released_batches;
        let expired = if passed {
            (rollout.batch_timeout_ms > 0).then_some(timeout)
        } else {
            current_expired
        };
        let hash = hex::encode(package_hash(
            &v.name,
            &v.version,
            v.top_level,
            &file.content_hash,
        ));
        let state = reported_state(candidate.statuses.as_deref(), &v.name, &v.version, &hash);
        let silent = match &state {
            AgentState::Installed => {
                p.applied += 1;
                shown.state = "installed".into();
                None
            }
            AgentState::Failed(error) => {
                p.failed += 1;
                p.failures.push(RolloutFailure {
                    instance_uid: a.uid.clone(),
                    error: error.clone(),
                });
                shown.state = "failed".into();
                shown.error = Some(error.clone());
                None
            }
            AgentState::Downloading(percent) => {
                shown.state = "downloading".into();
                shown.download_percent = *percent;
                Some(true)
            }
            AgentState::Installing => {
                shown.state = "installing".into();
                Some(true)
            }
            AgentState::Pending => {
                shown.state = "pending".into();
                Some(false)
            }
        };
        if let Some(busy) = silent {
            let reason = if candidate.capabilities & REPORTS_PACKAGE_STATUSES == 0 {
                Some("the agent does not report package statuses (no ReportsPackageStatuses capability)".to_string())
            } else {
                expired.map(|t| {
                    format!("no installed report within the batch timeout (batch_timeout {t}s); it is {}", status.as_str())
                })
            };
            match reason {
                Some(reason) => {
                    p.unconfirmed += 1;
                    shown.state = "unconfirmed".into();
                    shown.reason = Some(reason);
                }
                None if busy => {
                    p.applying += 1;
                    p.released_done = false;
                }
                None => {
                    p.pending += 1;
                    p.released_done = false;
                }
            }
        }
        push(&mut listed, shown);
    }
    (p, listed)
}

fn push(listed: &mut Vec<api::PackageRolloutAgent>, agent: api::PackageRolloutAgent) {
    if listed.len() < AGENTS_MAX {
        listed.push(agent);
    }
}

/// A rollout's progress, read now.
pub async fn progress_of(
    app: &App,
    rollout: &PackageRolloutRow,
) -> Result<(Progress, Vec<api::PackageRolloutAgent>)> {
    let agents = app.store.package_rollout_agents(rollout.id).await?;
    let version = app
        .store
        .package(&rollout.name, &rollout.version)
        .await?
        .map(|row| version_of(&app.hosted, &row));
    Ok(evaluate(app, rollout, version.as_ref(), &agents))
}

/// The API view of a package rollout.
pub fn to_api(
    r: &PackageRolloutRow,
    p: Progress,
    agents: Vec<api::PackageRolloutAgent>,
) -> api::PackageRolloutStatus {
    api::PackageRolloutStatus {
        name: r.name.clone(),
        version: r.version.clone(),
        previous_version: r.previous_version.clone(),
        selector: r.selector.clone(),
        state: r.state.clone(),
        reason: r.reason.clone(),
        batch_size: r.batch_size,
        max_failures: r.max_failures,
        batch_timeout: r.batch_timeout_ms / 1000,
        batch_deadline: (r.state == "running" && r.batch_timeout_ms > 0).then(|| {
            rfc3339(
                r.batch_started_at
                    .saturating_add(i64::try_from(r.batch_timeout_ms).unwrap_or(i64::MAX)),
            )
        }),
        batches: p.batches,
        released_batches: if r.state == "completed" {
            p.batches
        } else {
            r.released_batches.min(p.batches)
        },
        total: p.total,
        pending: p.pending,
        installing: p.applying,
        installed: p.applied,
        failed: p.failed,
        skipped: p.incompatible,
        unconfirmed: p.unconfirmed,
        started_at: rfc3339(r.started_at),
        updated_at: rfc3339(r.updated_at),
        started_by: r.started_by.clone(),
        failures: p.failures.into_iter().take(WAITING_MAX).collect(),
        agents,
    }
}

/// Moves running package rollouts forward (on the replica leading rollouts).
pub async fn step(app: &Arc<App>) -> Result<()> {
    let running = app.store.package_rollouts_in_state("running").await?;
    let mut changed = false;
    for r in running {
        let (p, _) = progress_of(app, &r).await?;
        let decision = next(&r, &p);
        let target = format!("{}/{}", r.name, r.version);
        let Some(change) = automatic(
            &r,
            &decision,
            "package.rollout",
            &target,
            json!({}),
            p.failed,
        ) else {
            continue;
        };
        if !app.store.transition_package_rollout(change).await? {
            continue;
        }
        changed = true;
        match decision {
            Next::Pause(reason) => {
                tracing::warn!(package = %r.name, version = %r.version, %reason, "package rollout paused")
            }
            Next::Release(n) => {
                tracing::info!(package = %r.name, version = %r.version, batch = n - 1, "package rollout: next batch released")
            }
            _ => {
                tracing::info!(package = %r.name, version = %r.version, installed = p.applied, failed = p.failed, "package rollout completed")
            }
        }
    }
    if changed {
        crate::rollouts::retarget(app).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(status: &str, has: &str, offered: &str, error: &str) -> String {
        json!({"packages": [{
            "name": "otelcol", "status": status, "agent_has_version": "0.119.0",
            "agent_has_hash": has, "server_offered_version": "0.120.0",
            "server_offered_hash": offered, "error": error, "download_percent": 40.0,
        }]})
        .to_string()
    }

    #[test]
    fn an_agent_is_judged_against_the_offer_it_should_have() {
        let state = |t: Option<&str>| reported_state(t, "otelcol", "0.120.0", "aa");
        assert_eq!(state(None), AgentState::Pending);
        assert_eq!(
            state(Some(&statuses("installed", "aa", "aa", ""))),
            AgentState::Installed
        );
        assert_eq!(
            state(Some(&statuses("install_failed", "bb", "aa", "disk full"))),
            AgentState::Failed("disk full".into())
        );
        assert_eq!(
            state(Some(&statuses("install_failed", "bb", "aa", ""))),
            AgentState::Failed("the agent reported INSTALL_FAILED without a message".into())
        );
        assert_eq!(
            state(Some(&statuses("downloading", "bb", "aa", ""))),
            AgentState::Downloading(Some(40.0))
        );
        assert_eq!(
            state(Some(&statuses("installing", "bb", "aa", ""))),
            AgentState::Installing
        );
        // A failure of another offer is not this rollout's.
        let other = json!({"packages": [{
            "name": "otelcol", "status": "install_failed", "agent_has_hash": "bb",
            "server_offered_version": "0.118.0", "server_offered_hash": "cc", "error": "x",
        }]})
        .to_string();
        assert_eq!(state(Some(&other)), AgentState::Pending);
    }

    #[test]
    fn skipped_agents_say_why() {
        let version = PackageVersion {
            name: "otelcol".into(),
            version: "0.120.0".into(),
            top_level: true,
            files: vec![PackageFile {
                os: "linux".into(),
                arch: "amd64".into(),
                url: "https://example.com/a.tar.gz".into(),
                content_hash: [1; 32],
                signature: Vec::new(),
            }],
        };
        let agent = |caps: u64, os: &str, arch: &str| Candidate {
            uid: "u".into(),
            view: AgentView {
                values: [
                    (OS_KEY.to_string(), os.to_string()),
                    (ARCH_KEY.to_string(), arch.to_string()),
                ]
                .into(),
                components: None,
            },
            capabilities: caps,
            statuses: None,
        };
        assert!(agent(ACCEPTS_PACKAGES, "linux", "amd64")
            .placement(&version)
            .is_ok());
        let no_caps = agent(0, "linux", "amd64").placement(&version).unwrap_err();
        assert!(no_caps.contains("AcceptsPackages"), "{no_caps}");
        let no_file = agent(ACCEPTS_PACKAGES, "linux", "arm64")
            .placement(&version)
            .unwrap_err();
        assert!(no_file.contains("linux/arm64"), "{no_file}");
    }
}
