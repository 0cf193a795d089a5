//! Configuration, version and rollout records, and the typed inputs and
//! outcomes of the transactions that change them. Backend-neutral.
//!
//! A configuration row holds what may change without a new version
//! (selector, description) and the number of its newest version; each
//! version is written once and never updated. A rollout row records which
//! version goes out, in how many batches, and how far it got.

use super::users::AuditEntry;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ConfigRow {
    pub name: String,
    pub selector: String,
    pub description: String,
    pub content_type: String,
    pub latest_version: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub created_by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct VersionRow {
    pub name: String,
    pub version: u64,
    pub hash: String,
    pub content_type: String,
    pub body: String,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: i64,
    pub name: String,
    pub version: u64,
    pub hash: String,
    /// `running`, `paused`, `completed` or `superseded`.
    pub state: String,
    pub batch_size: u64,
    pub max_failures: u64,
    /// Batches `0..released_batches` are released.
    pub released_batches: u64,
    /// The version held-back agents keep (of the last completed rollout).
    pub previous_version: Option<u64>,
    pub reason: Option<String>,
    pub started_at: i64,
    pub updated_at: i64,
    pub started_by: Option<String>,
    /// The configuration's selector when the rollout started: who receives it.
    pub selector: String,
    /// Agents lacking components the version uses receive it anyway.
    pub force: bool,
    /// How long a batch may take (0: no limit).
    pub batch_timeout_ms: u64,
    /// When the current batch was released (or the rollout resumed).
    pub batch_started_at: i64,
}

/// A configuration as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub row: ConfigRow,
    /// Hash of the newest version.
    pub hash: String,
    /// Version and selector of the latest rollout.
    pub rolled_out: Option<(u64, String)>,
}

/// One agent of a rollout with what the store knows of it (`None` if the
/// agent was deleted since).
#[derive(Debug, Clone)]
pub struct RolloutAgent {
    pub uid: String,
    pub batch: u64,
    pub stored: Option<StoredAgent>,
}

#[derive(Debug, Clone)]
pub struct StoredAgent {
    pub labels: String,
    pub identifying: String,
    pub non_identifying: String,
    pub remote_status: Option<String>,
    pub capabilities: u64,
    /// JSON: the last offer (or the offer that could not be sent, with its `error`).
    pub offered: Option<String>,
    pub components_hash: Option<String>,
}

/// What one configuration contributes to the agents' desired state.
#[derive(Debug, Clone)]
pub struct TargetRow {
    pub name: String,
    /// The selector of the rollout (not the configuration's saved one).
    pub selector: String,
    pub rollout: RolloutRow,
    pub current: VersionRow,
    pub previous: Option<VersionRow>,
    /// Agents of released batches, the only ones the version reaches
    /// until the rollout completes; `None` once it has completed.
    pub released: Option<Vec<String>>,
}

/// A configuration with its newest version and latest rollout.
#[derive(Debug, Clone)]
pub struct ConfigDetail {
    pub row: ConfigRow,
    pub newest: VersionRow,
    pub rollout: Option<RolloutRow>,
}

impl ConfigDetail {
    /// Version and selector of the latest rollout.
    pub fn rolled_out(&self) -> Option<(u64, String)> {
        self.rollout
            .as_ref()
            .map(|r| (r.version, r.selector.clone()))
    }
}

/// A configuration to create or update.
#[derive(Debug, Clone)]
pub struct ConfigSave {
    pub name: String,
    pub content_type: String,
    pub body: String,
    /// The body's version hash (`targeting::version_hash`).
    pub hash: String,
    /// A new selector (parsed and printed back), if given.
    pub selector: Option<String>,
    pub description: Option<String>,
    pub actor: String,
    pub remote_addr: Option<String>,
}

/// What a save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveResult {
    Created,
    Updated,
    Unchanged,
}

impl SaveResult {
    pub fn as_str(self) -> &'static str {
        match self {
            SaveResult::Created => "created",
            SaveResult::Updated => "updated",
            SaveResult::Unchanged => "unchanged",
        }
    }
}

/// A configuration after a save or a rollback.
#[derive(Debug, Clone)]
pub struct Saved {
    pub row: ConfigRow,
    /// Hash of the newest version.
    pub hash: String,
    /// Version and selector of the latest rollout.
    pub rolled_out: Option<(u64, String)>,
    pub result: SaveResult,
    /// Whether a version was added.
    pub created_version: bool,
}

/// The writes a save or rollback consists of, decided from what is stored
/// ([`plan_save`], [`plan_rollback`]); every backend applies it as is.
#[derive(Debug, Clone)]
pub struct SavePlan {
    pub saved: Saved,
    /// Insert `saved.row` (a new configuration) rather than update it.
    pub insert: bool,
    /// A version to add.
    pub version: Option<VersionRow>,
    /// `None` when nothing changes (nothing to write).
    pub audit: Option<AuditEntry>,
}

/// Decides what saving `save` over `current` (the stored configuration,
/// if any) writes.
pub fn plan_save(save: ConfigSave, current: Option<ConfigDetail>, now: i64) -> SavePlan {
    let bytes = save.body.len();
    let actor = save.actor.clone();
    let audit = |action: &str, name: &str, details: serde_json::Value| {
        Some(AuditEntry::ok(
            &actor,
            action,
            Some(name),
            save.remote_addr.as_deref(),
            details,
        ))
    };
    let Some(current) = current else {
        let row = ConfigRow {
            name: save.name.clone(),
            selector: save.selector.clone().unwrap_or_default(),
            description: save.description.clone().unwrap_or_default(),
            content_type: save.content_type.clone(),
            latest_version: 1,
            created_at: now,
            updated_at: now,
            created_by: Some(save.actor.clone()),
        };
        let audit = audit(
            "config.create",
            &row.name,
            json!({"version": 1, "hash": save.hash, "selector": row.selector, "content_type": row.content_type, "bytes": bytes}),
        );
        let version = VersionRow {
            name: row.name.clone(),
            version: 1,
            hash: save.hash.clone(),
            content_type: save.content_type.clone(),
            body: save.body.clone(),
            created_at: now,
            created_by: Some(save.actor.clone()),
            note: None,
        };
        return SavePlan {
            saved: Saved {
                row,
                hash: save.hash.clone(),
                rolled_out: None,
                result: SaveResult::Created,
                created_version: true,
            },
            insert: true,
            version: Some(version),
            audit,
        };
    };
    let rolled_out = current.rolled_out();
    let ConfigDetail {
        mut row, newest, ..
    } = current;
    let body_changed = newest.body != save.body || newest.content_type != save.content_type;
    let old_selector = row.selector.clone();
    let selector_changed = save.selector.as_ref().is_some_and(|s| *s != row.selector);
    let description_changed = save
        .description
        .as_ref()
        .is_some_and(|d| *d != row.description);
    if !body_changed && !selector_changed && !description_changed {
        return SavePlan {
            saved: Saved {
                row,
                hash: newest.hash,
                rolled_out,
                result: SaveResult::Unchanged,
                created_version: false,
            },
            insert: false,
            version: None,
            audit: None,
        };
    }
    let mut hash_now = newest.hash.clone();
    let mut version = None;
    if body_changed {
        row.latest_version += 1;
        row.content_type = save.content_type.clone();
        hash_now = save.hash.clone();
        version = Some(VersionRow {
            name: row.name.clone(),
            version: row.latest_version,
            hash: save.hash.clone(),
            content_type: save.content_type.clone(),
            body: save.body.clone(),
            created_at: now,
            created_by: Some(save.actor.clone()),
            note: None,
        });
    }
    if let Some(s) = &save.selector {
        row.selector = s.clone();
    }
    if let Some(d) = &save.description {
        row.description = d.clone();
    }
    row.updated_at = now;
    let mut details = json!({
        "version": row.latest_version,
        "hash": hash_now,
        "new_version": body_changed,
    });
    if body_changed {
        details["bytes"] = json!(bytes);
    }
    if selector_changed {
        details["selector"] = json!({"from": old_selector, "to": row.selector});
    }
    if description_changed {
        details["description_changed"] = json!(true);
    }
    let audit = audit("config.update", &row.name, details);
    SavePlan {
        saved: Saved {
            row,
            hash: hash_now,
            rolled_out,
            result: SaveResult::Updated,
            created_version: body_changed,
        },
        insert: false,
        version,
        audit,
    }
}

/// A rollback: the body of `version` (default: the one before the newest)
/// becomes a new newest version.
#[derive(Debug, Clone)]
pub struct ConfigRollback {
    pub name: String,
    pub version: Option<u64>,
    pub actor: String,
    pub remote_addr: Option<String>,
}

/// What a rollback did, or why it did nothing.
#[derive(Debug, Clone)]
pub enum RollbackOutcome {
    /// No such configuration.
    Missing,
    /// The configuration has only version 1.
    NothingBefore,
    /// The version named is the newest.
    AlreadyNewest(u64),
    NoSuchVersion {
        version: u64,
        newest: u64,
    },
    Saved(Box<Saved>),
}

/// The version a rollback goes back to, or why there is none.
pub fn rollback_target(requested: Option<u64>, newest: u64) -> Result<u64, RollbackOutcome> {
    let target = match requested {
        Some(v) => v,
        None if newest > 1 => newest - 1,
        None => return Err(RollbackOutcome::NothingBefore),
    };
    if target == newest {
        return Err(RollbackOutcome::AlreadyNewest(target));
    }
    Ok(target)
}

/// Decides what rolling `current` back to `old` writes.
pub fn plan_rollback(
    rollback: &ConfigRollback,
    current: ConfigDetail,
    old: VersionRow,
    now: i64,
) -> SavePlan {
    let rolled_out = current.rolled_out();
    let ConfigDetail {
        mut row, newest, ..
    } = current;
    if old.body == newest.body && old.content_type == newest.content_type {
        return SavePlan {
            saved: Saved {
                row,
                hash: newest.hash,
                rolled_out,
                result: SaveResult::Unchanged,
                created_version: false,
            },
            insert: false,
            version: None,
            audit: None,
        };
    }
    let newest_v = row.latest_version;
    row.latest_version += 1;
    row.content_type = old.content_type.clone();
    row.updated_at = now;
    let audit = AuditEntry::ok(
        &rollback.actor,
        "config.rollback",
        Some(&row.name),
        rollback.remote_addr.as_deref(),
        json!({"rollback_of": old.version, "previous_newest": newest_v, "version": row.latest_version, "hash": old.hash}),
    );
    let version = VersionRow {
        name: row.name.clone(),
        version: row.latest_version,
        hash: old.hash.clone(),
        content_type: old.content_type,
        body: old.body,
        created_at: now,
        created_by: Some(rollback.actor.clone()),
        note: Some(format!("rollback of v{}", old.version)),
    };
    SavePlan {
        saved: Saved {
            row,
            hash: old.hash,
            rolled_out,
            result: SaveResult::Updated,
            created_version: true,
        },
        insert: false,
        version: Some(version),
        audit: Some(audit),
    }
}

/// A configuration to delete.
#[derive(Debug, Clone)]
pub struct ConfigDelete {
    pub name: String,
    /// Delete it even while it is rolled out.
    pub force: bool,
    pub actor: String,
    pub remote_addr: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    Missing,
    /// Refused: it is rolled out (this rollout) and the delete is not forced.
    RolledOut(Box<RolloutRow>),
    Deleted {
        /// Whether it had been rolled out (agents stop receiving it).
        rolled_out: bool,
    },
}

/// What a deletion decides and audits, given the stored configuration and
/// its latest rollout: `Err` when it must not happen.
pub fn plan_delete(
    delete: &ConfigDelete,
    row: Option<&ConfigRow>,
    rollout: Option<&RolloutRow>,
) -> Result<AuditEntry, DeleteOutcome> {
    let Some(row) = row else {
        return Err(DeleteOutcome::Missing);
    };
    if let (Some(r), false) = (rollout, delete.force) {
        return Err(DeleteOutcome::RolledOut(Box::new(r.clone())));
    }
    Ok(AuditEntry::ok(
        &delete.actor,
        "config.delete",
        Some(&delete.name),
        delete.remote_addr.as_deref(),
        json!({"force": delete.force, "versions": row.latest_version, "rolled_out_version": rollout.map(|r| r.version)}),
    ))
}

/// A rollout to start.
#[derive(Debug, Clone)]
pub struct RolloutStart {
    pub name: String,
    pub version: u64,
    pub batch_size: u64,
    pub max_failures: u64,
    /// Seconds (0: no limit).
    pub batch_timeout: u64,
    pub force: bool,
    /// The configuration's selector: who receives it.
    pub selector: String,
    /// Every matching agent with its batch.
    pub agents: Vec<(String, u64)>,
    /// How many matching agents are left out (lacking components).
    pub skipped: usize,
    pub actor: String,
    pub remote_addr: Option<String>,
}

/// The rollout row (id 0 until stored) and audit entry of a start, given
/// the version's hash and the configuration's latest rollout before it.
pub fn plan_rollout(
    start: &RolloutStart,
    hash: String,
    prior: Option<&RolloutRow>,
    now: i64,
) -> (RolloutRow, AuditEntry) {
    let previous_version =
        prior.and_then(|p| kept_version(&p.state, &p.version, &p.previous_version));
    let row = RolloutRow {
        id: 0,
        name: start.name.clone(),
        version: start.version,
        hash,
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
        force: start.force,
        batch_timeout_ms: start.batch_timeout * 1000,
        batch_started_at: now,
    };
    let audit = AuditEntry::ok(
        &start.actor,
        "rollout.start",
        Some(&start.name),
        start.remote_addr.as_deref(),
        json!({
            "version": start.version,
            "batch_size": start.batch_size,
            "max_failures": start.max_failures,
            "batch_timeout": start.batch_timeout,
            "agents": start.agents.len(),
            "skipped_incompatible": start.skipped,
            "force": start.force,
            "selector": row.selector,
            "superseded_version": prior.map(|p| p.version),
        }),
    );
    (row, audit)
}

/// The version a new rollout keeps for the agents outside its released
/// batches: its predecessor's version if that one completed, else the one
/// the predecessor kept. The same for configuration and package rollouts.
pub fn kept_version<V: Clone>(state: &str, version: &V, kept: &Option<V>) -> Option<V> {
    if state == "completed" {
        Some(version.clone())
    } else {
        kept.clone()
    }
}

/// A new rollout's state: completed at once when nobody is to receive it.
pub fn first_state(agents: &[(String, u64)]) -> &'static str {
    if agents.is_empty() {
        "completed"
    } else {
        "running"
    }
}

/// The two tables of one kind of staged rollout: its rollouts, and each
/// rollout's agents with their batch. Configuration and package rollouts
/// keep the same columns there, so one piece of SQL per backend serves both.
#[derive(Debug, Clone, Copy)]
pub struct RolloutTables {
    pub rollouts: &'static str,
    pub agents: &'static str,
}

/// The tables of configuration rollouts.
pub const CONFIGURATION_ROLLOUTS: RolloutTables = RolloutTables {
    rollouts: "rollouts",
    agents: "rollout_agents",
};

/// A rollout state change: applied only while the rollout is in `from`; a
/// rollout that (again) runs starts its batch's time limit now.
#[derive(Debug, Clone)]
pub struct RolloutTransition {
    pub id: i64,
    pub from: &'static str,
    pub to: &'static str,
    pub released_batches: u64,
    pub max_failures: u64,
    pub reason: Option<String>,
    /// Written if the rollout moved.
    pub audit: Option<AuditEntry>,
}
