//! The interface every store backend implements: one method per operation
//! the rest of opampd needs, with typed inputs and outputs. A transaction a
//! handler needs (a rollout start, a configuration save…) is one method, so
//! each backend runs it atomically in its own way.

use super::agents::{
    AgentEvent, AgentPatch, AgentRow, EventRow, ListQuery, LiveAgent, RecordWrite, SessionRecord,
    SessionWrite,
};
use super::configs::{
    ConfigDelete, ConfigDetail, ConfigRollback, ConfigRow, ConfigSave, DeleteOutcome, Listed,
    RollbackOutcome, RolloutAgent, RolloutRow, RolloutStart, RolloutTransition, Saved, TargetRow,
    VersionRow,
};
use super::package_rollouts::{
    PackageRolloutAgent, PackageRolloutRow, PackageRolloutStart, PackageTargetRow,
    StoredPackageAgent,
};
use super::packages::{AddOutcome, DeleteOutcome as PackageDeleteOutcome, PackageAdd, PackageRow};
use super::users::{
    AuditEntry, AuditQuery, AuditRow, SessionCheck, TokenGrant, TokenRevoke, TokenRow, UserChange,
    UserDelete, UserRow, UserUpdate,
};
use super::WriteError;
use crate::auth::throttle::FailureSummary;
use crate::components::ComponentSet;
use crate::selector::Selector;
use anyhow::Result;
use opamp_proto::api::{DbOptimizeReport, DbStats};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Room reserved in the writer's queue ([`Backend::reserve`]), released on drop.
pub struct Room {
    _release: Box<dyn Send + Sync>,
}

impl Room {
    /// Room held until `release` is dropped.
    pub fn new(release: impl Send + Sync + 'static) -> Room {
        Room {
            _release: Box::new(release),
        }
    }
}

/// Connection pool usage, for /health and the memory report.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    pub max_open: usize,
    pub open: usize,
    pub idle: usize,
    pub waits: u64,
}

/// Where the data lives, as /health and the database statistics show it.
#[derive(Debug, Clone)]
pub enum Location {
    /// The SQLite database file.
    File(std::path::PathBuf),
    /// A PostgreSQL database (its URL, password hidden).
    Database(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Database(url) => f.write_str(url),
        }
    }
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    // ---- The batching writer: agent state from sessions ----

    /// Queues an agent state change; patches for the same agent coalesce.
    fn queue_agent(&self, patch: AgentPatch);

    /// Queues a connection event.
    fn queue_event(&self, event: AgentEvent);

    /// Reserves room for `ops` operations in the writer's queue, waiting up
    /// to `limit` while it is full (`database.max_queued_writes`); `None` if
    /// it stayed full. Released when the [`Room`] is dropped.
    async fn reserve(&self, ops: u64, limit: Duration) -> Option<Room>;

    /// Waits until everything queued before this call is committed (true) or
    /// its commit failed (false: it stays queued for the next attempt).
    async fn flush(&self) -> bool;

    /// Operations waiting in the writer's queue.
    fn queued(&self) -> u64;

    /// Whether the queue is below `database.max_queued_writes`.
    fn has_room(&self) -> bool;

    /// The last commit's error, cleared by the next successful commit.
    fn last_error(&self) -> Option<String>;

    /// Commits what is queued and stops the writer. Blocking.
    fn shutdown(&self);

    // ---- Agents, their events and component lists ----

    async fn agent(&self, uid: &str) -> Result<Option<AgentRow>>;

    /// The stored agents among `uids` (those that exist), in the given order.
    async fn agents(&self, uids: Vec<String>) -> Result<Vec<AgentRow>>;

    /// One page of agents ordered by uid, and the total matching the filters.
    async fn list_agents(&self, query: ListQuery) -> Result<(Vec<AgentRow>, u64)>;

    /// How many agents the inventory holds.
    async fn count_agents(&self) -> Result<u64>;

    /// Recent connection events of one agent, newest first.
    async fn agent_events(&self, uid: &str, limit: usize) -> Result<Vec<EventRow>>;

    /// Deletes an agent with its events and session record, auditing it
    /// with `audit` if it existed; returns whether it did.
    async fn delete_agent(&self, uid: &str, audit: AuditEntry) -> Result<bool, WriteError>;

    /// Applies a label patch (`None` removes a key) and audits it; returns
    /// the new labels, `None` if there is no such agent. A session record
    /// counts it as a change of the row (sessions holding a copy reload it).
    async fn patch_labels(
        &self,
        uid: &str,
        changes: BTreeMap<String, Option<String>>,
        audit: AuditEntry,
    ) -> Result<Option<BTreeMap<String, String>>, WriteError>;

    /// Deletes connection events older than `before` (ms); returns how many.
    async fn prune_events(&self, before: i64) -> Result<usize, WriteError>;

    /// A plain-HTTP agent's shared session record (see [`SessionRecord`]).
    async fn session_record(&self, uid: &str) -> Result<Option<SessionRecord>>;

    /// Writes a poll's session record, unless another poll wrote it since
    /// the session was read ([`RecordWrite::Conflict`]).
    async fn write_session_record(&self, write: SessionWrite) -> Result<RecordWrite, WriteError>;

    /// Asks for a restart command with the next poll of an agent whose
    /// session record says it is connected and was written at `fresh_after`
    /// (ms) or later; whether there is such a record.
    async fn request_session_restart(
        &self,
        uid: &str,
        fresh_after: i64,
    ) -> Result<bool, WriteError>;

    /// Every stored component list.
    async fn component_sets(&self) -> Result<Vec<ComponentSet>>;

    /// Stored agents that match `selector` and accept remote configuration:
    /// uid and component-list hash, in uid order.
    async fn matching_agents(&self, selector: &Selector) -> Result<Vec<(String, Option<String>)>>;

    // ---- Configurations and their versions ----

    async fn configuration(&self, name: &str) -> Result<Option<ConfigRow>>;

    /// A configuration with its newest version and latest rollout.
    async fn configuration_detail(&self, name: &str) -> Result<Option<ConfigDetail>>;

    /// One page of configurations by name after `after`; plus the total.
    async fn list_configurations(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<Listed>, u64)>;

    /// A configuration and one of its versions (`None` inside if it lacks
    /// it); `None` if there is no such configuration.
    async fn config_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<(ConfigRow, Option<VersionRow>)>>;

    /// A configuration's versions newest first, those below `before` if
    /// given, plus their total; `None` if there is no such configuration.
    async fn config_versions(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Option<(Vec<VersionRow>, u64)>>;

    /// Creates or updates a configuration (a new version when the body
    /// changes) and audits it, in one transaction.
    async fn save_configuration(&self, save: ConfigSave) -> Result<Saved, WriteError>;

    /// Makes an earlier version's body the newest version, audited.
    async fn rollback_configuration(
        &self,
        rollback: ConfigRollback,
    ) -> Result<RollbackOutcome, WriteError>;

    /// Deletes a configuration with its versions and rollouts, audited;
    /// refused while it is rolled out unless forced.
    async fn delete_configuration(&self, delete: ConfigDelete)
        -> Result<DeleteOutcome, WriteError>;

    // ---- Rollouts ----

    /// A configuration and its latest rollout; `None` if there is no such
    /// configuration.
    async fn latest_rollout(&self, name: &str) -> Result<Option<(ConfigRow, Option<RolloutRow>)>>;

    async fn rollout(&self, id: i64) -> Result<Option<RolloutRow>>;

    /// Rollouts in a state, oldest first.
    async fn rollouts_in_state(&self, state: &str) -> Result<Vec<RolloutRow>>;

    /// The agents of a rollout with what the store knows of each.
    async fn rollout_agents(&self, rollout_id: i64) -> Result<Vec<RolloutAgent>>;

    /// The latest rollout of every configuration, with the versions it
    /// distributes (superseded ones never are the latest).
    async fn targets(&self) -> Result<Vec<TargetRow>>;

    /// Starts a rollout: supersedes the earlier ones, stores it with its
    /// agents' batches, audits it. `None` if the version does not exist.
    async fn start_rollout(&self, start: RolloutStart) -> Result<Option<RolloutRow>, WriteError>;

    /// Moves a rollout from one state to another if it is still in the
    /// first, auditing it if it moved; returns whether it moved.
    async fn transition_rollout(&self, change: RolloutTransition) -> Result<bool, WriteError>;

    // ---- Users, API tokens, login failures ----

    async fn user(&self, username: &str) -> Result<Option<UserRow>>;

    /// Users by name after `after`; plus the total.
    async fn list_users(&self, after: Option<String>, limit: usize) -> Result<(Vec<UserRow>, u64)>;

    /// Creates a user, audited; false if the name is taken.
    async fn create_user(&self, user: UserRow, audit: AuditEntry) -> Result<bool, WriteError>;

    /// Changes a user's role (lowering their stronger tokens) and/or
    /// password and ends their sessions, audited.
    async fn update_user(&self, update: UserUpdate) -> Result<UserChange, WriteError>;

    /// Deletes a user and revokes their tokens, audited.
    async fn delete_user(&self, delete: UserDelete) -> Result<UserChange, WriteError>;

    /// Creates the first admin and its API token, audited, if there is no
    /// user yet; returns whether it did.
    async fn create_first_admin(
        &self,
        user: UserRow,
        token: TokenRow,
        audit: AuditEntry,
    ) -> Result<bool, WriteError>;

    /// What checking a login token of `username` with id `jti` needs;
    /// `None` if the user does not exist.
    async fn session_check(&self, username: &str, jti: &str) -> Result<Option<SessionCheck>>;

    /// The API token with this digest, if its owner exists.
    async fn token_grant(&self, digest: &str) -> Result<Option<TokenGrant>>;

    /// Tokens by id after `after`, of one owner or of everybody; plus the total.
    async fn list_tokens(
        &self,
        owner: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<TokenRow>, u64)>;

    async fn create_token(&self, token: TokenRow, audit: AuditEntry) -> Result<(), WriteError>;

    /// Revokes a token, audited if it was not revoked yet; false if there is
    /// no such token the actor may revoke.
    async fn revoke_token(&self, revoke: TokenRevoke) -> Result<bool, WriteError>;

    /// Revokes a login token (by id, until it expires anyway), audited.
    async fn logout_jwt(
        &self,
        jti: &str,
        expires_at: i64,
        audit: AuditEntry,
    ) -> Result<(), WriteError>;

    /// Revokes the API token a logout presents, audited.
    async fn logout_token(&self, id: &str, audit: AuditEntry) -> Result<(), WriteError>;

    /// Writes an address's summary of failed logins (one audit row per
    /// address and window, updated as the counts grow).
    async fn record_login_failures(&self, summary: FailureSummary) -> Result<(), WriteError>;

    /// Drops revocations of login tokens and revoked API tokens that have
    /// expired anyway; returns how many.
    async fn prune_revoked(&self) -> Result<usize, WriteError>;

    // ---- Audit ----

    /// Appends one audit entry.
    async fn audit(&self, entry: AuditEntry) -> Result<(), WriteError>;

    /// Audit entries newest first; plus the total matching the filters.
    async fn list_audit(&self, query: AuditQuery) -> Result<(Vec<AuditRow>, u64)>;

    /// Deletes audit entries older than `before` (ms); returns how many.
    async fn prune_audit(&self, before: i64) -> Result<usize, WriteError>;

    // ---- The package catalogue ----

    /// One package version with its files.
    async fn package(&self, name: &str, version: &str) -> Result<Option<PackageRow>>;

    /// Every version of `name` (every package when `None`), by name, then
    /// in the order they were added.
    async fn packages(&self, name: Option<String>) -> Result<Vec<PackageRow>>;

    /// Adds a version or more files for it, audited, in one transaction;
    /// refused (see [`super::packages::refusal`]) without a change.
    async fn add_package(&self, add: PackageAdd) -> Result<AddOutcome, WriteError>;

    /// Deletes a version and its files, audited; refused while an active
    /// rollout offers it (see [`super::packages::blocking_rollout`]).
    async fn delete_package(
        &self,
        name: &str,
        version: &str,
        actor: &str,
        remote_addr: Option<String>,
    ) -> Result<PackageDeleteOutcome, WriteError>;

    // ---- Package rollouts ----

    /// The latest rollout of package `name`, if any.
    async fn latest_package_rollout(&self, name: &str) -> Result<Option<PackageRolloutRow>>;

    async fn package_rollout(&self, id: i64) -> Result<Option<PackageRolloutRow>>;

    /// Package rollouts in a state, oldest first.
    async fn package_rollouts_in_state(&self, state: &str) -> Result<Vec<PackageRolloutRow>>;

    /// The agents of a package rollout with what the store knows of each.
    async fn package_rollout_agents(&self, rollout_id: i64) -> Result<Vec<PackageRolloutAgent>>;

    /// Stored agents matching `selector`, whatever their capabilities, in
    /// uid order: who a package rollout would consider.
    async fn package_candidates(
        &self,
        selector: &Selector,
    ) -> Result<Vec<(String, StoredPackageAgent)>>;

    /// The latest rollout of every package (superseded ones never are),
    /// with the catalogue versions it names.
    async fn package_targets(&self) -> Result<Vec<PackageTargetRow>>;

    /// Starts a package rollout: supersedes the earlier ones of the package,
    /// stores it with its agents, audited, in one transaction. `None` when
    /// the version is not in the catalogue.
    async fn start_package_rollout(
        &self,
        start: PackageRolloutStart,
    ) -> Result<Option<PackageRolloutRow>, WriteError>;

    /// Moves a package rollout from one state to another if it is still in
    /// the expected one (audited when it moved); whether it moved.
    async fn transition_package_rollout(
        &self,
        change: RolloutTransition,
    ) -> Result<bool, WriteError>;

    // ---- Maintenance ----

    /// A trivial read: whether the database answers.
    async fn probe(&self) -> Result<()>;

    /// Where the data lives.
    fn location(&self) -> Location;

    /// The connection pool's usage.
    fn pool_stats(&self) -> PoolStats;

    /// The page cache one connection may hold, in bytes.
    async fn connection_cache_bytes(&self) -> Result<u64>;

    /// A consistent copy of the whole database, written to `dest` (a new
    /// file in a private directory).
    async fn backup_to(&self, dest: PathBuf) -> Result<()>;

    /// Table sizes, schema version and storage figures (and an integrity
    /// check when asked).
    async fn stats(&self, integrity: bool) -> Result<DbStats>;

    /// Reclaims space and refreshes the planner's statistics.
    async fn optimize(&self) -> Result<DbOptimizeReport>;

    /// Replaces the content with the backup `candidate` (checked and
    /// migrated first; a refused one is a `dbfile::Refused` error), saving
    /// the previous content to `keep_aside`; the agents `live_agents` names
    /// (called once the copy is in) are stored connected. Returns how many
    /// live agents the backup did not contain.
    async fn restore_from(
        &self,
        candidate: PathBuf,
        keep_aside: PathBuf,
        live_agents: Box<dyn FnOnce() -> Vec<LiveAgent> + Send>,
    ) -> Result<u64>;
}
