//! Rollouts: which version of a configuration goes to which agents, batch by
//! batch, and when the next batch goes.
//!
//! The store holds every rollout and its agents' batch numbers; the agent side
//! only sees [`Targets`](crate::targeting::Targets), rebuilt from the store
//! whenever a rollout changes ([`retarget`]). The latest rollout of each
//! configuration contributes one target: until the rollout completes, only
//! agents of its released batches receive the rolled-out version; every other
//! matching agent (an unreleased batch, or an agent that matched after the
//! start, above all while the rollout is paused) keeps the version of the
//! last completed rollout (or receives nothing from it).
//!
//! [`progress`] runs in the background: it is woken whenever an agent reports
//! a new remote config status (and every second), recomputes each running
//! rollout from the agents' reports, pauses it when failures exceed its
//! allowance, and otherwise releases the next batch once every agent of the
//! released ones has applied (or failed within the allowance) or is counted
//! unconfirmed: it received the offer but never reports on it, or stayed
//! silent past the batch's `batch_timeout` ([`unconfirmed`]).
//!
//! The engine has two subjects: configuration versions (here) and package
//! versions ([`crate::packages::rollout`]). Both keep their rollouts as
//! [`Staged`], count their agents into a [`Progress`] and let [`next`]
//! decide; [`automatic`] is the state change that decision makes, and
//! [`progress`] moves both.

use crate::app::App;
use crate::cluster::Elsewhere;
use crate::opamp::session::status_name;
use crate::selector::{AgentView, Selector};
use crate::store::configs::{self, RolloutAgent, RolloutRow, RolloutTransition};
use crate::store::users::AuditEntry;
use crate::store::{json, rfc3339};
use crate::targeting::{Desired, Target, VersionRef};
use anyhow::Result;
use opamp_proto::api::{
    RolloutFailure, RolloutIncompatible, RolloutStatus, RolloutUnconfirmed, RolloutWaiting,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Serializes "read the store, replace the targets", so an older snapshot can
/// never replace a newer one. One opampd process serves one store.
static REBUILD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Rebuilds the targets from the store (start-up and after every rollout change).
pub async fn rebuild_targets(app: &App) -> Result<()> {
    let _guard = REBUILD.lock().await;
    let rows = app.store.targets().await?;
    let mut targets = Vec::with_capacity(rows.len());
    for row in rows {
        let selector = match Selector::parse(&row.selector) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(configuration = %row.name, error = %e, "stored selector does not parse; configuration not offered");
                continue;
            }
        };
        let version = |v: configs::VersionRow| VersionRef {
            version: v.version,
            content_type: v.content_type,
            body: v.body.into(),
        };
        let released: Option<HashSet<[u8; 16]>> = row.released.map(|uids| {
            uids.iter()
                .filter_map(|u| opamp_proto::parse_uid(u))
                .collect()
        });
        let requires = if row.rollout.force {
            BTreeSet::new()
        } else {
            crate::components::required(&row.current.body)
        };
        targets.push(Target {
            name: row.name,
            selector,
            current: version(row.current),
            previous: row.previous.map(version),
            released: released.map(Arc::new),
            requires: Arc::new(requires),
        });
    }
    app.targets.replace(targets);
    crate::packages::rollout::rebuild_targets(app).await
}

/// Offers every live agent what it should now run (WebSocket agents at once,
/// plain-HTTP agents at their next poll).
pub fn push_all(app: &App) {
    for uid in app.fleet.uids() {
        crate::opamp::push_offer(app, &uid);
    }
}

/// After a rollout changes (or a restore, or a deletion): new targets, then
/// offers, here and on every other replica.
pub async fn retarget(app: &App) -> Result<()> {
    retarget_local(app).await?;
    app.cluster.targets_changed().await;
    Ok(())
}

/// New targets and offers for the agents this replica holds (another
/// replica changed a rollout: [`crate::cluster`]).
pub async fn retarget_local(app: &App) -> Result<()> {
    rebuild_targets(app).await?;
    push_all(app);
    app.rollout_wakeup.notify_one();
    Ok(())
}

/// An agent a rollout targets, and the components it lacks.
#[derive(Debug, Clone, PartialEq)]
pub struct Targeted {
    pub uid: String,
    /// `None`: it never reported its components (not skipped).
    pub missing: Option<Vec<String>>,
}

/// Agents that accept remote configuration and match `selector`: stored ones
/// and live ones not stored yet, ordered by uid, each with the components of
/// `requires` it lacks (the live session's list over the stored one).
pub async fn matching_agents(
    app: &App,
    selector: &Selector,
    requires: &BTreeSet<String>,
) -> Result<Vec<Targeted>> {
    let mut agents: BTreeMap<String, Option<Arc<crate::components::ComponentSet>>> = app
        .store
        .matching_agents(selector)
        .await?
        .into_iter()
        .map(|(uid, hash)| {
            let set = app.components.get_hex(hash.as_deref());
            (uid, set)
        })
        .collect();
    for uid in app.fleet.uids() {
        let matched = app.fleet.with(&uid, |s| {
            let matched =
                s.accepts_remote_config() && !s.is_disconnected() && selector.matches(&*s);
            matched.then(|| s.components().cloned())
        });
        if let Some(Some(set)) = matched {
            let id = opamp_proto::uid_string(&uid);
            let entry = agents.entry(id).or_default();
            if set.is_some() {
                *entry = set;
            }
        }
    }
    Ok(agents
        .into_iter()
        .map(|(uid, set)| Targeted {
            missing: crate::components::missing(requires, set.as_deref()),
            uid,
        })
        .collect())
}

/// An agent that could not receive what a rollout would have it run.
#[derive(Debug, Clone, PartialEq)]
pub struct Oversized {
    pub instance_uid: String,
    /// Bytes of the reply that would carry its configurations.
    pub bytes: usize,
    /// Its configurations, `name vN`, in name order.
    pub configs: Vec<String>,
    /// How many of the targeted agents are over the limit.
    pub agents: usize,
}

/// Checks, before a rollout of `version` of configuration `name` starts,
/// that every agent in `uids` could receive everything it would then run
/// (one file per matching configuration) within `opamp.max_send_bytes`.
/// Returns the largest offer over the limit, if any.
pub async fn oversized_offer(
    app: &App,
    name: &str,
    version: &configs::VersionRow,
    uids: &[String],
) -> Result<Option<Oversized>> {
    let limit = app.config.opamp.max_send_bytes;
    let mut views = Vec::with_capacity(uids.len());
    let mut stored_only = Vec::new();
    for id in uids {
        let Some(uid) = opamp_proto::parse_uid(id) else {
            continue;
        };
        match app.fleet.with(&uid, |s| s.selector_view()) {
            Some(view) => views.push((id.clone(), uid, view)),
            None => stored_only.push(id.clone()),
        }
    }
    let stored = app.store.agents(stored_only).await?;
    for row in stored {
        let id = row.uid;
        let view = AgentView::stored(
            &row.identifying,
            &row.non_identifying,
            &row.labels,
            app.components.get_hex(row.components_hash.as_deref()),
        );
        if let Some(uid) = opamp_proto::parse_uid(&id) {
            views.push((id, uid, view));
        }
    }
    let body: Arc<str> = version.body.as_str().into();
    let mut sizes: std::collections::HashMap<Vec<(String, u64)>, usize> = Default::default();
    let mut worst: Option<Oversized> = None;
    let mut over = 0;
    for (id, uid, view) in views {
        let mut files = app
            .targets
            .desired_for(&uid, &view)
            .map(|d| d.files.clone())
            .unwrap_or_default();
        files.insert(
            name.to_string(),
            (version.content_type.clone(), body.clone(), version.version),
        );
        let desired = Desired {
            files,
            hash: [0; 32],
        };
        let parts = desired.parts();
        let bytes = *sizes.entry(parts.clone()).or_insert_with(|| {
            crate::opamp::reply::Reply::largest_offer_len(&crate::opamp::session::remote_config(
                &desired,
            ))
        });
        if bytes <= limit {
            continue;
        }
        over += 1;
        if worst.as_ref().is_none_or(|w| bytes > w.bytes) {
            worst = Some(Oversized {
                instance_uid: id,
                bytes,
                configs: parts
                    .into_iter()
                    .map(|(n, v)| format!("{n} v{v}"))
                    .collect(),
                agents: 0,
            });
        }
    }
    Ok(worst.map(|w| Oversized { agents: over, ..w }))
}

/// Batch numbers in uid order: `batch_size` agents per batch, 0 = one batch.
/// Agents in `skipped` do not count towards batches; they are put in batch
/// 0 (they receive the version once they report the components it uses).
pub fn assign_batches(
    uids: Vec<String>,
    batch_size: u64,
    skipped: &HashSet<String>,
) -> Vec<(String, u64)> {
    let mut index = 0u64;
    uids.into_iter()
        .map(|u| {
            if skipped.contains(&u) {
                return (u, 0);
            }
            let batch = index.checked_div(batch_size).unwrap_or(0);
            index += 1;
            (u, batch)
        })
        .collect()
}

/// Where a rollout stands, computed from the agents' reports.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Progress {
    pub total: u64,
    pub pending: u64,
    pub applying: u64,
    pub applied: u64,
    pub failed: u64,
    pub failures: Vec<RolloutFailure>,
    /// Released agents not yet done (at most [`WAITING_MAX`]).
    pub waiting: Vec<RolloutWaiting>,
    pub waiting_total: u64,
    /// Released agents counted without their confirmation (see [`unconfirmed`]).
    pub unconfirmed: u64,
    /// Those agents (at most [`WAITING_MAX`]), with the reason.
    pub unconfirmed_agents: Vec<RolloutUnconfirmed>,
    pub batches: u64,
    /// Every agent of the released batches has applied or failed.
    pub released_done: bool,
    /// Agents skipped: they lack components the version uses.
    pub incompatible: u64,
    /// The first [`WAITING_MAX`] of them, with what they lack.
    pub incompatible_agents: Vec<RolloutIncompatible>,
}

/// How many waiting agents a rollout status names.
pub const WAITING_MAX: usize = 100;

/// What one agent reports, as the rollout needs it.
struct Report {
    view: AgentView,
    hash: String,
    status: String,
    error: String,
    /// An offer too big to send: its hash (hex) and why.
    not_sent: Option<(String, String)>,
    /// Hash (hex) of the last offer made to the agent.
    offered: Option<String>,
    /// The agent reports its remote-config status (ReportsRemoteConfig).
    reports_status: bool,
}

/// The hash of the last offer made, from an offered-record (not one that could not be sent).
fn stored_offered(offered: Option<&str>) -> Option<String> {
    let record = json::value(offered);
    if record.get("error").is_some() {
        return None;
    }
    Some(record["hash"].as_str()?.to_string())
}

/// The offer that could not be sent, from an offered-record.
fn stored_not_sent(offered: Option<&str>) -> Option<(String, String)> {
    let record = json::value(offered);
    Some((
        record["hash"].as_str()?.to_string(),
        record["error"].as_str()?.to_string(),
    ))
}

fn stored_report(app: &App, s: &configs::StoredAgent) -> Report {
    let view = AgentView::stored(
        &s.identifying,
        &s.non_identifying,
        &s.labels,
        app.components.get_hex(s.components_hash.as_deref()),
    );
    let rs = json::value(s.remote_status.as_deref());
    Report {
        view,
        hash: rs["hash"].as_str().unwrap_or("").to_string(),
        status: rs["status"].as_str().unwrap_or("unset").to_string(),
        error: rs["error"].as_str().unwrap_or("").to_string(),
        not_sent: stored_not_sent(s.offered.as_deref()),
        offered: stored_offered(s.offered.as_deref()),
        reports_status: s.capabilities & opamp_proto::caps::REPORTS_REMOTE_CONFIG != 0,
    }
}

/// The agent's report: the live session's (fresh) where there is one, the
/// stored row otherwise; `None` for an agent deleted since the start.
fn report(app: &App, a: &RolloutAgent) -> Option<Report> {
    let stored = a.stored.as_ref().map(|s| stored_report(app, s));
    let uid = opamp_proto::parse_uid(&a.uid)?;
    // A plain-HTTP agent polling several replicas: this replica's copy of
    // its session may be behind; the stored row is committed before each
    // poll's reply.
    let shared = app.cluster.shares_sessions().is_some();
    let live = app.fleet.with(&uid, |s| {
        if shared && s.transport() == crate::opamp::session::Transport::Http {
            return None;
        }
        Some((
            s.selector_view(),
            hex::encode(s.reported_hash()),
            status_name(s.reported_status()),
            s.reported_error().to_string(),
            s.undeliverable()
                .map(|(hash, reason)| (hex::encode(hash), reason.to_string())),
            s.offered_hash().map(hex::encode),
            s.reports_remote_config(),
        ))
    });
    match (live.flatten(), stored) {
        (Some((view, hash, status, error, not_sent, offered, reports_status)), stored) => {
            // The live offer is only the current connection's.
            Some(Report {
                view,
                error,
                hash,
                status: status.to_string(),
                not_sent,
                offered: offered.or(stored.and_then(|r| r.offered)),
                reports_status,
            })
        }
        (None, stored) => stored,
    }
}

/// Counts a rollout's agents. Agents of unreleased batches are pending; an
/// agent that no longer matches the selector (or was deleted) has left the
/// rollout and is not counted.
/// An agent whose component list lacks one of `requires` is incompatible:
/// skipped, neither pending nor holding its batch.
pub fn evaluate(
    app: &App,
    rollout: &RolloutRow,
    selector: &Selector,
    requires: &BTreeSet<String>,
    agents: &[RolloutAgent],
    elsewhere: &Elsewhere,
) -> Progress {
    let mut p = Progress {
        released_done: true,
        ..Default::default()
    };
    let current_expired = batch_expired(rollout, crate::store::now_ms());
    let timeout = rollout.batch_timeout_ms / 1000;
    for a in agents {
        p.batches = p.batches.max(a.batch + 1);
        let Some(r) = report(app, a) else { continue };
        if !selector.matches(&r.view) {
            continue;
        }
        p.total += 1;
        let lacking =
            crate::components::missing(requires, r.view.components.as_deref()).unwrap_or_default();
        if !lacking.is_empty() {
            p.incompatible += 1;
            if p.incompatible_agents.len() < WAITING_MAX {
                p.incompatible_agents.push(RolloutIncompatible {
                    instance_uid: a.uid.clone(),
                    missing: lacking,
                });
            }
            continue;
        }
        let released = rollout.state == "completed" || a.batch < rollout.released_batches;
        if !released {
            p.pending += 1;
            continue;
        }
        // The rollout went past earlier batches: their time is up.
        let passed = rollout.state == "completed" || a.batch + 1 < rollout.released_batches;
        let expired = if passed {
            (rollout.batch_timeout_ms > 0).then_some(timeout)
        } else {
            current_expired
        };
        let uid = opamp_proto::parse_uid(&a.uid).unwrap_or([0; 16]);
        let desired = app.targets.desired_for(&uid, &r.view);
        if let Some(reason) = not_sent(rollout, desired.as_deref(), &r) {
            p.failed += 1;
            p.failures.push(RolloutFailure {
                instance_uid: a.uid.clone(),
                error: reason.to_string(),
            });
            continue;
        }
        let current = desired.as_ref().filter(|d| {
            d.files
                .get(&rollout.name)
                .is_some_and(|f| f.2 == rollout.version)
                && d.hash_hex() == r.hash
        });
        match (current, r.status.as_str()) {
            (Some(_), "applied") => p.applied += 1,
            (Some(_), "failed") => {
                p.failed += 1;
                p.failures.push(RolloutFailure {
                    instance_uid: a.uid.clone(),
                    error: if r.error.is_empty() {
                        "the agent reported FAILED without a message".into()
                    } else {
                        r.error
                    },
                });
            }
            (Some(_), "applying") => match unconfirmed(&r, Silence::Applying, expired) {
                Some(u) => count_unconfirmed(&mut p, &a.uid, u),
                None => {
                    p.applying += 1;
                    p.released_done = false;
                    wait_for(app, elsewhere, &mut p, &a.uid, &uid, "applying");
                }
            },
            _ => {
                let delivered = desired.as_ref().is_some_and(|d| {
                    d.files
                        .get(&rollout.name)
                        .is_some_and(|f| f.2 == rollout.version)
                        && r.offered.as_deref() == Some(d.hash_hex().as_str())
                });
                let silence = if delivered {
                    Silence::Delivered
                } else {
                    let status = elsewhere.liveness(
                        &app.fleet,
                        &uid,
                        crate::store::now_ms(),
                        app.stale_after_ms(),
                    );
                    Silence::NotDelivered(status.as_str())
                };
                match unconfirmed(&r, silence, expired) {
                    Some(u) => count_unconfirmed(&mut p, &a.uid, u),
                    None => {
                        p.pending += 1;
                        p.released_done = false;
                        wait_for(app, elsewhere, &mut p, &a.uid, &uid, "pending");
                    }
                }
            }
        }
    }
    p
}

/// Whether the rollout's current batch has run out of time at `now_ms`:
/// `Some(timeout in seconds)` if so.
pub fn batch_expired(rollout: &impl Staged, now_ms: i64) -> Option<u64> {
    let timeout = rollout.batch_timeout_ms();
    let deadline = rollout
        .batch_started_at()
        .saturating_add(i64::try_from(timeout).unwrap_or(i64::MAX));
    (timeout > 0 && now_ms >= deadline).then_some(timeout / 1000)
}

/// Where a released agent that has not confirmed the rollout's version stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Silence<'a> {
    /// It reported APPLYING.
    Applying,
    /// It received the offer and has not reported on it.
    Delivered,
    /// The offer has not reached it; its liveness (`connected`, `stale`, `disconnected`).
    NotDelivered(&'a str),
}

/// Whether a silent released agent is counted unconfirmed instead of waited
/// for, with its state (`delivered`, `not_delivered`) and the reason: an agent
/// that received the offer but never reports on it (no ReportsRemoteConfig)
/// at once; any silent agent once the batch timed out (`expired`: the timeout
/// in seconds).
fn unconfirmed(
    r: &Report,
    silence: Silence<'_>,
    expired: Option<u64>,
) -> Option<(&'static str, String)> {
    match (silence, expired) {
        (Silence::Delivered, _) if !r.reports_status => Some((
            "delivered",
            "received the offer; the agent does not report remote config status \
             (no ReportsRemoteConfig capability)"
                .into(),
        )),
        (_, None) => None,
        (Silence::Applying, Some(timeout)) => Some((
            "delivered",
            format!("still applying when the batch timed out (batch_timeout {timeout}s)"),
        )),
        (Silence::Delivered, Some(timeout)) => Some((
            "delivered",
            format!("received the offer; no status report within the batch timeout (batch_timeout {timeout}s)"),
        )),
        (Silence::NotDelivered(status), Some(timeout)) => Some((
            "not_delivered",
            format!("the offer did not reach the agent within the batch timeout (batch_timeout {timeout}s); it is {status}"),
        )),
    }
}

/// Counts a released agent as done without its confirmation (agents come in uid order).
fn count_unconfirmed(p: &mut Progress, id: &str, (state, reason): (&'static str, String)) {
    p.unconfirmed += 1;
    if p.unconfirmed_agents.len() < WAITING_MAX {
        p.unconfirmed_agents.push(RolloutUnconfirmed {
            instance_uid: id.to_string(),
            state: state.into(),
            reason,
        });
    }
}

/// Why the rollout's version, in what `desired` the agent should run, could
/// not be sent to it (too big for `opamp.max_send_bytes`): a failure.
fn not_sent<'a>(rollout: &RolloutRow, desired: Option<&Desired>, r: &'a Report) -> Option<&'a str> {
    let desired = desired?;
    let (hash, reason) = r.not_sent.as_ref()?;
    let ours = desired
        .files
        .get(&rollout.name)
        .is_some_and(|f| f.2 == rollout.version);
    (ours && *hash == desired.hash_hex()).then_some(reason.as_str())
}

/// Names a released agent the rollout waits for (agents come in uid order).
fn wait_for(
    app: &App,
    elsewhere: &Elsewhere,
    p: &mut Progress,
    id: &str,
    uid: &[u8; 16],
    state: &str,
) {
    p.waiting_total += 1;
    if p.waiting.len() < WAITING_MAX {
        let status = elsewhere.liveness(
            &app.fleet,
            uid,
            crate::store::now_ms(),
            app.stale_after_ms(),
        );
        p.waiting.push(RolloutWaiting {
            instance_uid: id.to_string(),
            state: state.into(),
            status: status.as_str().into(),
        });
    }
}

/// A rollout's agents and progress, read now.
pub async fn progress_of(app: &App, rollout: &RolloutRow) -> Result<Progress> {
    let id = rollout.id;
    let agents = app.store.rollout_agents(id).await?;
    let selector = Selector::parse(&rollout.selector).unwrap_or_default();
    // The latest rollout of a configuration is its target, which knows what
    // the version requires (nothing when forced).
    let requires = app
        .targets
        .snapshot()
        .iter()
        .find(|t| t.name == rollout.name && t.current.version == rollout.version)
        .map(|t| t.requires.clone())
        .unwrap_or_default();
    // Agents held by other replicas are live too (PostgreSQL form).
    let uids: Vec<String> = agents.iter().map(|a| a.uid.clone()).collect();
    let elsewhere = app.cluster.elsewhere(app, Some(&uids)).await?;
    Ok(evaluate(
        app, rollout, &selector, &requires, &agents, &elsewhere,
    ))
}

/// The API view of a rollout.
pub fn to_api(r: &RolloutRow, p: Progress) -> RolloutStatus {
    RolloutStatus {
        name: r.name.clone(),
        version: r.version,
        hash: r.hash.clone(),
        state: r.state.clone(),
        batch_size: r.batch_size,
        max_failures: r.max_failures,
        total: p.total,
        pending: p.pending,
        applying: p.applying,
        applied: p.applied,
        failed: p.failed,
        started_at: rfc3339(r.started_at),
        updated_at: rfc3339(r.updated_at),
        started_by: r.started_by.clone(),
        failures: p.failures,
        waiting: p.waiting,
        waiting_total: p.waiting_total,
        reason: r.reason.clone(),
        batches: p.batches,
        released_batches: if r.state == "completed" {
            p.batches
        } else {
            r.released_batches.min(p.batches)
        },
        incompatible: p.incompatible,
        incompatible_agents: p.incompatible_agents,
        force: r.force,
        unconfirmed: p.unconfirmed,
        unconfirmed_agents: p.unconfirmed_agents,
        batch_timeout: r.batch_timeout_ms / 1000,
        batch_deadline: (r.state == "running" && r.batch_timeout_ms > 0).then(|| {
            rfc3339(
                r.batch_started_at
                    .saturating_add(i64::try_from(r.batch_timeout_ms).unwrap_or(i64::MAX)),
            )
        }),
    }
}

/// The background task that moves running rollouts forward.
pub async fn progress(app: Arc<App>) {
    let mut shutdown = app.shutdown.clone();
    loop {
        tokio::select! {
            _ = app.rollout_wakeup.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        if app.is_shutting_down() {
            return;
        }
        // With several replicas, one at a time drives rollouts.
        if !app.cluster.leads_rollouts() {
            continue;
        }
        if let Err(e) = step(&app).await {
            tracing::warn!(error = %format!("{e:#}"), "rollout progress check failed; retrying");
        }
        if let Err(e) = crate::packages::rollout::step(&app).await {
            tracing::warn!(error = %format!("{e:#}"), "package rollout progress check failed; retrying");
        }
    }
}

/// What the next state of a running rollout is, given its progress.
#[derive(Debug, PartialEq)]
pub enum Next {
    Stay,
    Pause(String),
    Release(u64),
    Complete,
}

pub fn next(r: &impl Staged, p: &Progress) -> Next {
    if p.failed > r.max_failures() {
        Next::Pause(format!(
            "{} failures exceed max_failures {}",
            p.failed,
            r.max_failures()
        ))
    } else if !p.released_done {
        Next::Stay
    } else if r.released_batches() < p.batches {
        Next::Release(r.released_batches() + 1)
    } else {
        Next::Complete
    }
}

/// What the engine reads of a rollout, whatever it rolls out.
pub trait Staged {
    fn id(&self) -> i64;
    fn max_failures(&self) -> u64;
    /// Batches `0..released_batches` are released.
    fn released_batches(&self) -> u64;
    /// How long a batch may take (0: no limit).
    fn batch_timeout_ms(&self) -> u64;
    /// When the current batch was released (or the rollout resumed).
    fn batch_started_at(&self) -> i64;
}

impl Staged for RolloutRow {
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

/// The state change of a running rollout that `decision` makes (`None`:
/// it stays), audited as `{action}.pause` / `{action}.complete` by the
/// system on `target`, with `details` and the decision's reason, `failed`
/// and `automatic` added.
pub fn automatic(
    r: &impl Staged,
    decision: &Next,
    action: &str,
    target: &str,
    mut details: Value,
    failed: u64,
) -> Option<RolloutTransition> {
    let (to, released, reason, audit) = match decision {
        Next::Stay => return None,
        Next::Pause(reason) => (
            "paused",
            r.released_batches(),
            Some(reason.clone()),
            Some("pause"),
        ),
        Next::Release(n) => ("running", *n, None, None),
        Next::Complete => ("completed", r.released_batches(), None, Some("complete")),
    };
    details["reason"] = json!(reason);
    details["automatic"] = json!(true);
    details["failed"] = json!(failed);
    Some(RolloutTransition {
        id: r.id(),
        from: "running",
        to,
        released_batches: released,
        max_failures: r.max_failures(),
        reason,
        audit: audit.map(|what| {
            AuditEntry::ok(
                "system",
                &format!("{action}.{what}"),
                Some(target),
                None,
                details,
            )
        }),
    })
}

async fn step(app: &Arc<App>) -> Result<()> {
    let running = app.store.rollouts_in_state("running").await?;
    let mut changed = false;
    for r in running {
        let p = progress_of(app, &r).await?;
        let decision = next(&r, &p);
        let details = json!({"version": r.version});
        let Some(change) = automatic(&r, &decision, "rollout", &r.name, details, p.failed) else {
            continue;
        };
        let done = app.store.transition_rollout(change).await?;
        if !done {
            continue;
        }
        changed = true;
        match decision {
            Next::Pause(reason) => {
                tracing::warn!(configuration = %r.name, version = r.version, %reason, "rollout paused")
            }
            Next::Release(n) => {
                tracing::info!(configuration = %r.name, version = r.version, batch = n - 1, "rollout: next batch released")
            }
            _ => {
                tracing::info!(configuration = %r.name, version = r.version, applied = p.applied, failed = p.failed, "rollout completed")
            }
        }
    }
    if changed {
        retarget(app).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(released: u64, max_failures: u64) -> RolloutRow {
        RolloutRow {
            id: 1,
            name: "c".into(),
            version: 1,
            hash: String::new(),
            state: "running".into(),
            batch_size: 1,
            max_failures,
            released_batches: released,
            previous_version: None,
            reason: None,
            started_at: 0,
            updated_at: 0,
            started_by: None,
            selector: String::new(),
            force: false,
            batch_timeout_ms: 60_000,
            batch_started_at: 1_000,
        }
    }

    fn silent(reports_status: bool) -> Report {
        Report {
            view: AgentView::default(),
            hash: String::new(),
            status: "unset".into(),
            error: String::new(),
            not_sent: None,
            offered: None,
            reports_status,
        }
    }

    #[test]
    fn a_batch_expires_after_its_timeout_and_never_without_one() {
        let r = rollout(1, 0);
        assert_eq!(batch_expired(&r, 60_999), None);
        assert_eq!(batch_expired(&r, 61_000), Some(60));
        let forever = RolloutRow {
            batch_timeout_ms: 0,
            ..r
        };
        assert_eq!(batch_expired(&forever, i64::MAX), None);
    }

    #[test]
    fn silent_agents_are_unconfirmed_at_once_without_reports_or_after_the_timeout() {
        let state = |r: &Report, silence, expired| unconfirmed(r, silence, expired).map(|u| u.0);
        let mute = silent(false);
        let reporting = silent(true);
        assert_eq!(state(&mute, Silence::Delivered, None), Some("delivered"));
        assert_eq!(state(&reporting, Silence::Delivered, None), None);
        assert_eq!(state(&mute, Silence::NotDelivered("connected"), None), None);
        assert_eq!(state(&reporting, Silence::Applying, None), None);
        assert_eq!(
            state(&reporting, Silence::Delivered, Some(5)),
            Some("delivered")
        );
        assert_eq!(
            state(&reporting, Silence::Applying, Some(5)),
            Some("delivered")
        );
        let (state, reason) =
            unconfirmed(&reporting, Silence::NotDelivered("disconnected"), Some(5)).unwrap();
        assert_eq!(state, "not_delivered");
        assert!(
            reason.contains("batch_timeout 5s") && reason.contains("disconnected"),
            "{reason}"
        );
    }

    fn progress(batches: u64, failed: u64, done: bool) -> Progress {
        Progress {
            batches,
            failed,
            released_done: done,
            ..Default::default()
        }
    }

    #[test]
    fn batches_follow_uid_order() {
        let uids = vec!["a".into(), "b".into(), "c".into()];
        let none = HashSet::new();
        assert_eq!(
            assign_batches(uids.clone(), 2, &none),
            vec![("a".into(), 0), ("b".into(), 0), ("c".into(), 1)]
        );
        assert!(assign_batches(uids.clone(), 0, &none)
            .iter()
            .all(|(_, b)| *b == 0));
        let skipped = HashSet::from(["a".to_string()]);
        assert_eq!(
            assign_batches(uids, 1, &skipped),
            vec![("a".into(), 0), ("b".into(), 0), ("c".into(), 1)],
            "a skipped agent counts towards no batch"
        );
    }

    #[test]
    fn a_decision_becomes_an_audited_state_change() {
        let r = rollout(1, 0);
        let details = json!({"version": 1});
        assert!(automatic(&r, &Next::Stay, "rollout", "c", details.clone(), 0).is_none());
        let release = automatic(&r, &Next::Release(2), "rollout", "c", details.clone(), 0).unwrap();
        assert_eq!((release.to, release.released_batches), ("running", 2));
        assert!(release.audit.is_none(), "a released batch is not audited");
        let pause = automatic(
            &r,
            &Next::Pause("why".into()),
            "package.rollout",
            "p/1.0",
            details,
            3,
        )
        .unwrap();
        assert_eq!(
            (pause.from, pause.to, pause.released_batches),
            ("running", "paused", 1)
        );
        let audit = pause.audit.unwrap();
        assert_eq!(audit.action, "package.rollout.pause");
        assert_eq!(audit.target.as_deref(), Some("p/1.0"));
        assert_eq!(
            audit.details,
            json!({"version": 1, "reason": "why", "automatic": true, "failed": 3})
        );
    }

    #[test]
    fn next_step_of_a_running_rollout() {
        assert_eq!(next(&rollout(1, 0), &progress(3, 0, false)), Next::Stay);
        assert_eq!(
            next(&rollout(1, 0), &progress(3, 0, true)),
            Next::Release(2)
        );
        assert_eq!(next(&rollout(3, 0), &progress(3, 0, true)), Next::Complete);
        assert_eq!(
            next(&rollout(1, 1), &progress(3, 1, true)),
            Next::Release(2)
        );
        assert_eq!(
            next(&rollout(1, 0), &progress(3, 1, true)),
            Next::Pause("1 failures exceed max_failures 0".into())
        );
        assert_eq!(next(&rollout(1, 0), &progress(0, 0, true)), Next::Complete);
    }
}
