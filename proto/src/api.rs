//! REST JSON types of `/api/v1` and `/health`, shared by opampd and opampctl.
//!
//! Field names are an API: scripts parse them. Add fields; never rename them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Error body of every non-2xx API reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// A page of a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
    pub total: u64,
}

/// One agent as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Agent {
    pub instance_uid: String,
    /// `connected`, `disconnected` or `stale`.
    pub status: String,
    /// `websocket` or `http`.
    pub transport: String,
    pub identifying_attributes: BTreeMap<String, serde_json::Value>,
    pub non_identifying_attributes: BTreeMap<String, serde_json::Value>,
    pub labels: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub health: Option<Health>,
    pub effective_config_hash: Option<String>,
    pub remote_config: RemoteConfigState,
    /// The connection settings offered to the agent and what it reported.
    #[serde(default)]
    pub connection_settings: ConnectionSettingsState,
    /// The package statuses the agent last reported; `None` when it never
    /// reported any (no ReportsPackageStatuses, or nothing yet).
    #[serde(default)]
    pub packages: Option<PackageStatuses>,
    pub first_seen: String,
    pub last_seen: String,
    pub remote_addr: Option<String>,
    pub sequence_num: u64,
    /// The custom capabilities the agent reported (reverse-FQDN names).
    #[serde(default)]
    pub custom_capabilities: Vec<String>,
    /// Hash (hex) of the component list the agent reported; `None` when it
    /// never reported one opampd holds.
    #[serde(default)]
    pub available_components_hash: Option<String>,
    /// The components the agent can run, as it reported them; only in
    /// `GET /agents/{uid}` (lists leave them out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_components: Option<Vec<AvailableComponent>>,
}

/// One component an agent can run (AvailableComponents), flattened:
/// `receivers` / `otlp`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AvailableComponent {
    /// `receivers`, `processors`, `exporters`, `extensions`, `connectors`
    /// (or what else the agent groups its components by).
    pub kind: String,
    /// The component type, e.g. `otlp`; nested levels are joined with `/`.
    pub name: String,
    /// From the metadata (`version`, or the version of `code.namespace`).
    pub version: Option<String>,
    /// The metadata as reported.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl Agent {
    /// `service.name` from the identifying attributes, if it is a string.
    pub fn service_name(&self) -> Option<&str> {
        self.identifying_attributes
            .get("service.name")
            .and_then(|v| v.as_str())
    }
}

/// Component health as reported by an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Health {
    pub healthy: bool,
    pub status: String,
    pub last_error: String,
    pub start_time: Option<String>,
    pub status_time: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, Health>,
}

/// The connection settings (OpAMP destination, own telemetry) offered to an
/// agent and what the agent reported about them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ConnectionSettingsState {
    /// Hash of the last set offered (hex); none when nothing was offered.
    pub offered_hash: Option<String>,
    /// Hash the agent last reported in a ConnectionSettingsStatus (hex).
    pub reported_hash: Option<String>,
    /// `none` (nothing offered or reported), `offered` (delivered, not
    /// reported), or what the agent reported: `applying|applied|failed|unset`.
    pub status: String,
    pub error: Option<String>,
}

/// The packages an agent reported (PackageStatuses).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PackageStatuses {
    /// The `all_packages_hash` of the offer the agent last took (hex).
    pub all_packages_hash: Option<String>,
    /// An error about the offer as a whole.
    pub error: Option<String>,
    pub packages: Vec<PackageStatus>,
}

/// One package as an agent reported it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PackageStatus {
    pub name: String,
    /// `installed`, `install_pending`, `installing`, `install_failed` or `downloading`.
    pub status: String,
    pub agent_has_version: Option<String>,
    /// Hex.
    pub agent_has_hash: Option<String>,
    pub server_offered_version: Option<String>,
    /// Hex.
    pub server_offered_hash: Option<String>,
    pub error: Option<String>,
    /// While downloading, if the agent says.
    pub download_percent: Option<f64>,
    pub download_bytes_per_second: Option<f64>,
}

/// What the server wants an agent to run and what the agent said about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RemoteConfigState {
    /// The configuration assigned to the agent, if any.
    pub name: Option<String>,
    pub version: Option<u64>,
    /// Hash of what was offered (hex).
    pub hash: Option<String>,
    /// `pending|applying|applied|failed|unset`.
    pub status: String,
    pub error: Option<String>,
    /// Hash the agent last reported (hex).
    pub reported_hash: Option<String>,
    /// Every configuration in the offer (one file each), in name order.
    #[serde(default)]
    pub configs: Vec<ConfigRef>,
    /// What the agent runs: the configurations of the last offer it reported
    /// APPLIED, while it still reports that offer's hash (empty otherwise).
    #[serde(default)]
    pub running: Vec<ConfigRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ConfigRef {
    pub name: String,
    pub version: u64,
}

/// `PATCH /agents/{uid}/labels`: keys to set; a `null` value removes the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LabelPatch {
    pub labels: BTreeMap<String, Option<String>>,
}

/// `GET /agents/{uid}/effective-config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EffectiveConfig {
    pub instance_uid: String,
    pub hash: Option<String>,
    pub files: BTreeMap<String, ConfigFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigFile {
    pub content_type: String,
    pub body: String,
}

/// `POST /configurations`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ConfigurationInput {
    pub name: String,
    pub body: String,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A configuration with its newest version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Configuration {
    pub name: String,
    pub version: u64,
    pub hash: String,
    pub content_type: String,
    pub selector: String,
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: Option<String>,
    /// The version being rolled out or last rolled out, if any.
    pub rolled_out_version: Option<u64>,
    /// The selector of that rollout: who receives the rolled-out version.
    /// `selector` (the saved one) takes effect at the next rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_out_selector: Option<String>,
    /// `created`, `updated` or `unchanged` on a write; absent on reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// One immutable version of a configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigVersion {
    pub name: String,
    pub version: u64,
    pub hash: String,
    pub content_type: String,
    pub body: String,
    pub created_at: String,
    pub created_by: Option<String>,
    pub note: Option<String>,
}

/// `GET /configurations/{name}/diff`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigDiff {
    pub name: String,
    pub from: u64,
    pub to: u64,
    pub diff: String,
}

/// `POST /configurations/{name}/rollout`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RolloutRequest {
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub batch_size: Option<u64>,
    #[serde(default)]
    pub max_failures: Option<u64>,
    /// Seconds a batch may take; then its silent agents are counted
    /// unconfirmed and the rollout moves on. 0 = wait for every report.
    /// Default: opampd's `rollouts.batch_timeout_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_timeout: Option<u64>,
    /// Roll out to agents that lack components the configuration uses, too.
    #[serde(default)]
    pub force: bool,
    /// Change nothing: say which targeted agents lack which components.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a rollout request with `dry_run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutPlan {
    pub name: String,
    pub version: u64,
    /// The component types the version's YAML uses, as `kind/type`.
    pub components: Vec<String>,
    /// Every agent the rollout would target, in uid order.
    pub agents: Vec<RolloutPlanAgent>,
    /// How many targeted agents lack components (skipped unless forced).
    pub incompatible: u64,
    /// How many targeted agents never reported their components.
    pub unknown: u64,
}

/// One agent of a [`RolloutPlan`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutPlanAgent {
    pub instance_uid: String,
    /// `compatible`, `incompatible` or `unknown` (no component list reported).
    pub components: String,
    /// The components it lacks, as `kind/type`.
    #[serde(default)]
    pub missing: Vec<String>,
}

/// `POST /configurations/{name}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RollbackRequest {
    /// The version whose body becomes the new newest version; default: the one before the newest.
    #[serde(default)]
    pub version: Option<u64>,
}

/// Rollout progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutStatus {
    pub name: String,
    pub version: u64,
    pub hash: String,
    /// `running|paused|completed|failed`.
    pub state: String,
    pub batch_size: u64,
    pub max_failures: u64,
    pub total: u64,
    pub pending: u64,
    pub applying: u64,
    pub applied: u64,
    pub failed: u64,
    pub started_at: String,
    pub updated_at: String,
    pub started_by: Option<String>,
    #[serde(default)]
    pub failures: Vec<RolloutFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Number of batches (0 when no agent matched at the start).
    #[serde(default)]
    pub batches: u64,
    /// Batches released so far (their agents may receive the version).
    #[serde(default)]
    pub released_batches: u64,
    /// Agents of the released batches the rollout waits for (not yet
    /// APPLIED or FAILED), in uid order, at most 100.
    #[serde(default)]
    pub waiting: Vec<RolloutWaiting>,
    /// How many agents of the released batches the rollout waits for.
    #[serde(default)]
    pub waiting_total: u64,
    /// Released agents counted without a report: the agent received the
    /// offer but does not report remote-config status, or stayed silent
    /// past the batch timeout (also when the offer never reached it).
    #[serde(default)]
    pub unconfirmed: u64,
    /// Those agents with the reason, in uid order, at most 100.
    #[serde(default)]
    pub unconfirmed_agents: Vec<RolloutUnconfirmed>,
    /// Seconds a batch may take (0: no limit).
    #[serde(default)]
    pub batch_timeout: u64,
    /// When the current batch times out (RFC 3339), while the rollout runs
    /// with a timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_deadline: Option<String>,
    /// Agents skipped because they lack components the version uses.
    #[serde(default)]
    pub incompatible: u64,
    /// The skipped agents and what each lacks, in uid order, at most 100.
    #[serde(default)]
    pub incompatible_agents: Vec<RolloutIncompatible>,
    /// Started with `force`: agents lacking components are not skipped.
    #[serde(default)]
    pub force: bool,
}

/// An agent a rollout skips: it lacks components the version uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutIncompatible {
    pub instance_uid: String,
    /// `kind/type` of every component it lacks.
    pub missing: Vec<String>,
}

/// An agent a rollout counted without a report from it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutUnconfirmed {
    pub instance_uid: String,
    /// `delivered` (it received the offer) or `not_delivered`.
    pub state: String,
    pub reason: String,
}

/// An agent a rollout waits for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutWaiting {
    pub instance_uid: String,
    /// `pending` (not received or not reported yet) or `applying`.
    pub state: String,
    /// The agent's status: `connected`, `stale` or `disconnected`.
    pub status: String,
}

/// `POST /configurations/{name}/rollout/resume` (the body is optional).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RolloutResume {
    /// A new failure allowance, e.g. to go on after failures paused the rollout.
    #[serde(default)]
    pub max_failures: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutFailure {
    pub instance_uid: String,
    pub error: String,
}

/// `POST /auth/login`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoginResponse {
    pub token: String,
    pub expires_at: String,
    pub role: String,
}

/// `POST /users`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserInput {
    pub username: String,
    pub password: String,
    pub role: String,
}

/// `PATCH /users/{name}`: what to change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct UserPatch {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub username: String,
    pub role: String,
    pub created_at: String,
}

/// `POST /tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TokenInput {
    pub name: String,
    #[serde(default)]
    pub role: Option<String>,
    /// Lifetime: a number of days, or `"never"`; absent = the server's
    /// default lifetime (see `DEFAULT_TOKEN_DAYS`).
    #[serde(default)]
    pub expires_in_days: Option<TokenLifetime>,
}

/// How long a new API token lives.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenLifetime {
    Days(u64),
    Never(NeverExpires),
}

/// The word `"never"`: a token without expiry, asked for explicitly.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum NeverExpires {
    Never,
}

/// Lifetime of an API token created without `expires_in_days`.
pub const DEFAULT_TOKEN_DAYS: u64 = 90;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: String,
    pub owner: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked: bool,
    /// The secret, shown once when the token is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub remote_addr: Option<String>,
    pub outcome: String,
    pub details: serde_json::Value,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthReport {
    /// `ok|degraded|down`.
    pub status: String,
    pub version: String,
    /// The replica that answered (`cluster.replica_id`, else its host name);
    /// empty from servers older than this field.
    #[serde(default)]
    pub replica_id: String,
    pub uptime_seconds: u64,
    pub ready: bool,
    pub draining: bool,
    pub database: DatabaseCheck,
    pub agents: AgentCounts,
    pub pool: PoolUsage,
    #[serde(default)]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseCheck {
    pub status: String,
    /// `sqlite` or `postgresql`; empty from servers older than this field.
    #[serde(default)]
    pub backend: String,
    pub latency_ms: f64,
    pub schema_version: u32,
    /// Only shown to a caller with a token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    pub writer_queue: u64,
    pub last_write_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AgentCounts {
    pub connected: u64,
    pub stale: u64,
    pub disconnected: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PoolUsage {
    pub max_open: u64,
    pub open: u64,
    pub in_use: u64,
    pub idle: u64,
    pub waits_total: u64,
}

/// `GET /api/v1/admin/db/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DbStats {
    pub path: String,
    pub schema_version: u32,
    pub page_size: u64,
    pub page_count: u64,
    pub freelist_count: u64,
    pub size_bytes: u64,
    pub wal_bytes: u64,
    pub tables: BTreeMap<String, u64>,
    pub integrity: Option<String>,
    /// PostgreSQL's own figures; absent on SQLite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgStats>,
}

/// The PostgreSQL part of `GET /api/v1/admin/db/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PgStats {
    /// `pg_database_size` of the database.
    pub database_bytes: u64,
    /// Every opampd table, by name.
    pub tables: Vec<PgTableStats>,
    /// This replica's connection pool.
    pub pool: PoolUsage,
    /// Connections to this database (every client, every replica) by state.
    pub connections: BTreeMap<String, u64>,
    /// Statements running now on this database (other than this one), longest first (at most 20).
    pub running: Vec<PgQuery>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PgTableStats {
    pub name: String,
    /// Exact row count.
    pub rows: u64,
    /// Dead row versions VACUUM has not reclaimed yet (estimate).
    pub dead_rows: u64,
    /// Table, indexes and TOAST.
    pub bytes: u64,
    pub last_vacuum: Option<String>,
    pub last_analyze: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PgQuery {
    pub pid: i64,
    /// `active`, `idle in transaction`, …
    pub state: String,
    /// Since the statement (or, idle in a transaction, the transaction) started.
    pub seconds: f64,
    pub application: String,
    /// What it waits for, e.g. `Lock:transactionid`.
    pub wait: Option<String>,
    /// The statement's first 200 characters.
    pub query: String,
}

/// `POST /api/v1/admin/db/optimize`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DbOptimizeReport {
    pub steps: Vec<String>,
    /// Bytes of the database file and its WAL, before and after.
    pub size_before: u64,
    pub size_after: u64,
    pub duration_ms: u64,
}

/// `GET /api/v1/admin/memory`: what holds memory, by subsystem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MemoryReport {
    pub rss_bytes: u64,
    pub subsystems: BTreeMap<String, u64>,
    pub allocator: BTreeMap<String, u64>,
    pub agents_live: u64,
    pub connections: u64,
}

/// The database schema version opampd writes (`PRAGMA user_version`).
/// opampctl checks backups against it; opampd's tests keep it equal to the
/// number of its migrations.
pub const DB_SCHEMA_VERSION: u32 = 12;

/// `POST /api/v1/admin/restore`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RestoreReport {
    /// Where the database that was replaced is kept.
    pub kept_aside: String,
    /// Schema version after the restore (the backup migrated if it was older).
    pub schema_version: u32,
    /// Schema version of the backup as uploaded.
    pub restored_schema_version: u32,
    pub bytes: u64,
    /// Live WebSocket agents asked to report their full state at once.
    pub agents_notified: u64,
    /// Live agents the backup did not contain: kept in the inventory as
    /// connected (they report their description with their full state).
    #[serde(default)]
    pub live_agents_added: u64,
    /// Hosted package files put back from the archive beside the backup
    /// (`opampctl restore`; the server's answer leaves it 0).
    #[serde(default)]
    pub package_files_restored: u64,
}

/// A hosted package file the catalogue names (`GET /api/v1/admin/packages/files`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostedFile {
    /// Its SHA-256 (lowercase hex), which names it.
    pub sha256: String,
    pub size: u64,
}

/// One line of `GET /api/v1/admin/logs` (`application/x-ndjson`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LogEntry {
    pub ts: String,
    pub level: String,
    #[serde(default)]
    pub target: String,
    pub message: String,
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// `POST /api/v1/packages`: a package version by reference (files opampd
/// never downloads), or more platforms for a version already listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PackageInput {
    pub name: String,
    pub version: String,
    /// `top_level` (the agent itself, the default) or `addon`.
    #[serde(default)]
    pub r#type: Option<String>,
    pub files: Vec<PackageFileInput>,
    /// Accept files without a signature.
    #[serde(default)]
    pub unsigned: bool,
    /// Accept `http://` download URLs.
    #[serde(default)]
    pub allow_insecure_url: bool,
    /// Accept a version older than the newest one listed for the name.
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// One file of a package version, by reference.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PackageFileInput {
    /// As agents report `os.type` (`linux`, `windows`, `darwin`) or `any`.
    pub os: String,
    /// As agents report `host.arch` (`amd64`, `arm64`) or `any`.
    pub arch: String,
    pub url: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The signature (e.g. the `.sigstore.json` bundle), base64.
    #[serde(default)]
    pub signature: Option<String>,
}

/// A package version in the catalogue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// `top_level` or `addon`.
    pub r#type: String,
    pub created_at: String,
    pub created_by: String,
    pub files: Vec<PackageFile>,
    /// After a POST: `created` (a new version) or `updated` (files added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// One file of a package version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackageFile {
    pub os: String,
    pub arch: String,
    /// Where agents download it from (by reference).
    pub url: Option<String>,
    pub sha256: String,
    pub signed: bool,
    pub size: Option<u64>,
    /// Uploaded to opampd (true) or by reference.
    pub hosted: bool,
    pub created_at: String,
}

/// `POST /packages/{name}/rollout`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PackageRolloutRequest {
    /// The catalogue version; default: the newest one listed.
    #[serde(default)]
    pub version: Option<String>,
    /// Which agents (label selector); default: every agent.
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub batch_size: Option<u64>,
    #[serde(default)]
    pub max_failures: Option<u64>,
    /// Seconds a batch may take; then its silent agents are counted
    /// unconfirmed. 0 = wait for every report. Default: opampd's
    /// `rollouts.batch_timeout_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_timeout: Option<u64>,
    /// Change nothing: say which agents would get which file.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a package rollout request with `dry_run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackageRolloutPlan {
    pub name: String,
    pub version: String,
    pub selector: String,
    /// How many agents would be offered the version.
    pub offered: u64,
    /// How many matching agents would be skipped (see each agent's reason).
    pub skipped: u64,
    pub batches: u64,
    /// Every matching agent, in uid order.
    pub agents: Vec<PackagePlanAgent>,
}

/// One agent of a [`PackageRolloutPlan`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackagePlanAgent {
    pub instance_uid: String,
    /// The agent's `os.type/host.arch` (`?` where it does not report one).
    pub platform: String,
    /// The catalogue file it would get, as `os/arch`; none when skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// Why it would be skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Package rollout progress: `GET /packages/{name}/rollout`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackageRolloutStatus {
    pub name: String,
    pub version: String,
    /// The version agents not yet released keep (of the last completed rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    pub selector: String,
    /// `running`, `paused`, `completed` or `superseded`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub batch_size: u64,
    pub max_failures: u64,
    /// Seconds a batch may take (0: no limit).
    pub batch_timeout: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_deadline: Option<String>,
    pub batches: u64,
    pub released_batches: u64,
    /// Agents in the rollout (skipped ones included).
    pub total: u64,
    pub pending: u64,
    /// Downloading or installing.
    pub installing: u64,
    pub installed: u64,
    pub failed: u64,
    /// No AcceptsPackages, or no file for the agent's platform.
    pub skipped: u64,
    /// Counted without a report (silent past the batch timeout, or the
    /// agent does not report package statuses).
    pub unconfirmed: u64,
    pub started_at: String,
    pub updated_at: String,
    pub started_by: Option<String>,
    #[serde(default)]
    pub failures: Vec<RolloutFailure>,
    /// Every agent of the rollout in uid order (at most 1000).
    #[serde(default)]
    pub agents: Vec<PackageRolloutAgent>,
}

/// One agent of a package rollout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackageRolloutAgent {
    pub instance_uid: String,
    pub batch: u64,
    /// The agent's `os.type/host.arch`.
    pub platform: String,
    /// `pending`, `downloading`, `installing`, `installed`, `failed`,
    /// `unconfirmed` or `skipped`.
    pub state: String,
    /// The agent's status: `connected`, `stale` or `disconnected`.
    pub status: String,
    /// The agent's install error (`failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it is `skipped` or `unconfirmed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Download progress, where the agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_percent: Option<f64>,
}
