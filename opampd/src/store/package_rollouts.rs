//! Package rollouts as stored: which version of a package goes to which
//! agents, batch by batch; and the rules every backend applies when one
//! starts. State changes use [`super::configs::RolloutTransition`], as
//! configuration rollouts do.

use super::configs::{first_state, kept_version};
use super::packages::PackageRow;
use super::users::AuditEntry;
use serde_json::json;

/// A package rollout as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageRolloutRow {
    pub id: i64,
    /// The package name.
    pub name: String,
    /// The catalogue version rolled out.
    pub version: String,
    /// `running`, `paused`, `completed` or `superseded`.
    pub state: String,
    pub batch_size: u64,
    pub max_failures: u64,
    /// Batches `0..released_batches` are released.
    pub released_batches: u64,
    /// The version held-back agents keep (of the last completed rollout).
    pub previous_version: Option<String>,
    pub reason: Option<String>,
    pub started_at: i64,
    pub updated_at: i64,
    pub started_by: Option<String>,
    /// Who receives it, fixed at the start.
    pub selector: String,
    /// How long a batch may take (0: no limit).
    pub batch_timeout_ms: u64,
    /// When the current batch was released (or the rollout resumed).
    pub batch_started_at: i64,
}

/// One agent of a package rollout with what the store knows of it (`None`
/// if the agent was deleted since).
#[derive(Debug, Clone)]
pub struct PackageRolloutAgent {
    pub uid: String,
    pub batch: u64,
    pub stored: Option<StoredPackageAgent>,
}

/// What a package rollout reads of a stored agent.
#[derive(Debug, Clone)]
pub struct StoredPackageAgent {
    pub labels: String,
    pub identifying: String,
    pub non_identifying: String,
    pub capabilities: u64,
    /// The reported package statuses (JSON, `opamp::packages::statuses_json`).
    pub package_statuses: Option<String>,
}

/// What one package contributes to the agents' offers: its latest rollout
/// (not superseded) with the catalogue versions it names.
#[derive(Debug, Clone)]
pub struct PackageTargetRow {
    pub rollout: PackageRolloutRow,
    pub current: PackageRow,
    pub previous: Option<PackageRow>,
    /// Agents of released batches, the only ones the version reaches until
    /// the rollout completes; `None` once it has completed.
    pub released: Option<Vec<String>>,
}

/// The tables of package rollouts.
pub const PACKAGE_ROLLOUTS: crate::store::configs::RolloutTables =
    crate::store::configs::RolloutTables {
        rollouts: "package_rollouts",
        agents: "package_rollout_agents",
    };

/// A package rollout to start.
#[derive(Debug, Clone)]
pub struct PackageRolloutStart {
    pub name: String,
    pub version: String,
    pub batch_size: u64,
    pub max_failures: u64,
    /// Seconds (0: no limit).
    pub batch_timeout: u64,
    pub selector: String,
    /// Every matching agent with its batch.
    pub agents: Vec<(String, u64)>,
    /// How many matching agents are left out (no AcceptsPackages, or no
    /// file for their platform).
    pub skipped: usize,
    pub actor: String,
    pub remote_addr: Option<String>,
}

/// The rollout row (id 0 until stored) and audit entry of a start, given the
/// package's latest rollout before it.
pub fn plan_start(
    start: &PackageRolloutStart,
    prior: Option<&PackageRolloutRow>,
    now: i64,
) -> (PackageRolloutRow, AuditEntry) {
    let previous_version =
        prior.and_then(|p| kept_version(&p.state, &p.version, &p.previous_version));
    let row = PackageRolloutRow {
        id: 0,
        name: start.name.clone(),
        version: start.version.clone(),
        state: first_state(&start.agents).into(),
        batch_size: start.batch_size,
        max_failures: start.max_failures,
        released_batches: 1,
        previous_version,
        reason: None,
        started_at: now,
        updated_at: now,
        started_by: Some(start.actor.clone()),
        selector: start.selector.clone(),
        batch_timeout_ms: start.batch_timeout * 1000,
        batch_started_at: now,
    };
    let audit = AuditEntry::ok(
        &start.actor,
        "package.rollout.start",
        Some(&format!("{}/{}", start.name, start.version)),
        start.remote_addr.as_deref(),
        json!({
            "batch_size": start.batch_size,
            "max_failures": start.max_failures,
            "batch_timeout": start.batch_timeout,
            "agents": start.agents.len(),
            "skipped": start.skipped,
            "selector": row.selector,
            "superseded_version": prior.map(|p| p.version.clone()),
        }),
    );
    (row, audit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(agents: usize) -> PackageRolloutStart {
        PackageRolloutStart {
            name: "otelcol".into(),
            version: "0.120.0".into(),
            batch_size: 1,
            max_failures: 0,
            batch_timeout: 60,
            selector: String::new(),
            agents: (0..agents)
                .map(|i| (format!("{i:032x}"), i as u64))
                .collect(),
            skipped: 0,
            actor: "ops".into(),
            remote_addr: None,
        }
    }

    #[test]
    fn held_back_agents_keep_the_last_completed_version() {
        let (first, audit) = plan_start(&start(2), None, 5);
        assert_eq!(
            (
                first.state.as_str(),
                first.previous_version,
                first.batch_timeout_ms
            ),
            ("running", None, 60_000)
        );
        assert_eq!(audit.action, "package.rollout.start");
        let completed = PackageRolloutRow {
            state: "completed".into(),
            version: "0.119.0".into(),
            ..plan_start(&start(2), None, 1).0
        };
        let (next, _) = plan_start(&start(2), Some(&completed), 6);
        assert_eq!(next.previous_version.as_deref(), Some("0.119.0"));
        let running = PackageRolloutRow {
            state: "paused".into(),
            previous_version: Some("0.118.0".into()),
            ..completed
        };
        let (again, _) = plan_start(&start(0), Some(&running), 7);
        assert_eq!(again.previous_version.as_deref(), Some("0.118.0"));
        assert_eq!(again.state, "completed", "nobody to wait for");
    }
}
