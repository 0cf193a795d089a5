//! [`Backend`] for [`Postgres`]: reads on a pooled connection, agent state
//! through the batching writer, every other write one transaction of its
//! own. Writes that read first (a configuration save, a rollout start) take
//! a transaction-scoped advisory lock on the configuration's name, so that
//! replicas and concurrent requests apply them one at a time.

mod accounts;
mod catalogue;
mod configurations;

use super::{agents, configs, dump, package_rollouts, packages, sessions, users, Postgres};
use crate::auth::throttle::FailureSummary;
use crate::components::ComponentSet;
use crate::selector::Selector;
use crate::store::agents::LiveAgent;
use crate::store::agents::{
    AgentEvent, AgentPatch, AgentRow, EventRow, ListQuery, RecordWrite, SessionRecord, SessionWrite,
};
use crate::store::configs::{
    ConfigDelete, ConfigDetail, ConfigRollback, ConfigRow, ConfigSave, DeleteOutcome, Listed,
    RollbackOutcome, RolloutAgent, RolloutRow, RolloutStart, RolloutTransition, Saved, TargetRow,
    VersionRow,
};
use crate::store::package_rollouts::{
    PackageRolloutAgent, PackageRolloutRow, PackageRolloutStart, PackageTargetRow,
    StoredPackageAgent,
};
use crate::store::packages::{
    AddOutcome, DeleteOutcome as PackageDeleteOutcome, PackageAdd, PackageRow,
};
use crate::store::users::{
    AuditEntry, AuditQuery, AuditRow, SessionCheck, TokenGrant, TokenRevoke, TokenRow, UserChange,
    UserDelete, UserRow, UserUpdate,
};
use crate::store::{Backend, Room, WriteError};
use crate::store::{Location, PoolStats};
use anyhow::{Context, Result};
use deadpool_postgres::GenericClient;
use opamp_proto::api::{DbOptimizeReport, DbStats};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A failed write: the database's own trouble (connection, resources,
/// read-only) is `Storage`, anything else the operation's.
fn write_error(e: anyhow::Error) -> WriteError {
    let storage = e.chain().any(|cause| {
        if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
            return pg.is_closed()
                || pg.code().is_some_and(|code| {
                    let code = code.code();
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57")
                        || code.starts_with("58")
                        || code == "25006"
                });
        }
        cause
            .to_string()
            .starts_with("cannot get a PostgreSQL connection")
    });
    if storage {
        WriteError::Storage(format!("{e:#}"))
    } else {
        WriteError::Job(e)
    }
}

impl Postgres {
    /// Runs a read, timed under `operation`.
    async fn read<T>(
        &self,
        operation: &'static str,
        read: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let out = read.await;
        self.metrics.db_query(operation, start.elapsed());
        out
    }

    /// Runs a write, timed under `operation`, with its error classified.
    async fn write<T>(
        &self,
        operation: &'static str,
        write: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T, WriteError> {
        let start = Instant::now();
        let out = write.await;
        self.metrics.db_query(operation, start.elapsed());
        out.map_err(write_error)
    }
}

#[async_trait::async_trait]
impl Backend for Postgres {
    fn queue_agent(&self, patch: AgentPatch) {
        self.writer.agent(patch);
    }

    fn queue_event(&self, event: AgentEvent) {
        self.writer.event(event);
    }

    async fn reserve(&self, ops: u64, limit: Duration) -> Option<Room> {
        self.writer.reserve(ops, limit).await
    }

    async fn flush(&self) -> bool {
        self.writer.flush().await
    }

    fn queued(&self) -> u64 {
        self.writer.queued()
    }

    fn has_room(&self) -> bool {
        self.writer.has_room()
    }

    fn last_error(&self) -> Option<String> {
        self.writer.last_error()
    }

    fn shutdown(&self) {
        self.writer.shutdown();
        self.pool.close();
    }

    async fn agent(&self, uid: &str) -> Result<Option<AgentRow>> {
        self.read("agent_get", async {
            agents::get(&self.client().await?, uid).await
        })
        .await
    }

    async fn agents(&self, uids: Vec<String>) -> Result<Vec<AgentRow>> {
        self.read("agents_get", async {
            agents::get_many(&self.client().await?, &uids).await
        })
        .await
    }

    async fn list_agents(&self, query: ListQuery) -> Result<(Vec<AgentRow>, u64)> {
        self.read("agents_list", async {
            agents::list(&self.client().await?, &query).await
        })
        .await
    }

    async fn count_agents(&self) -> Result<u64> {
        self.read("agent_count", async {
            agents::count(&self.client().await?).await
        })
        .await
    }

    async fn agent_events(&self, uid: &str, limit: usize) -> Result<Vec<EventRow>> {
        self.read("agent_events", async {
            agents::events(&self.client().await?, uid, limit).await
        })
        .await
    }

    async fn delete_agent(&self, uid: &str, audit: AuditEntry) -> Result<bool, WriteError> {
        // State queued before the deletion must not bring the agent back.
        self.writer.flush().await;
        self.write("agent_delete", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let found = agents::delete(&tx, uid).await?;
            sessions::delete(&tx, uid).await?;
            if found {
                users::insert_audit(&tx, &audit).await?;
            }
            tx.commit().await?;
            Ok(found)
        })
        .await
    }

    async fn patch_labels(
        &self,
        uid: &str,
        changes: BTreeMap<String, Option<String>>,
        audit: AuditEntry,
    ) -> Result<Option<BTreeMap<String, String>>, WriteError> {
        // As on SQLite, where it queues behind them: an agent whose first
        // report is still queued is labelled, not unknown.
        self.writer.flush().await;
        self.write("agent_labels", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let Some(labels) = agents::patch_labels(&tx, uid, &changes).await? else {
                return Ok(None);
            };
            sessions::row_changed(&tx, uid).await?;
            users::insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(Some(labels))
        })
        .await
    }

    async fn prune_events(&self, before: i64) -> Result<usize, WriteError> {
        self.write("event_prune", async {
            agents::prune_events(&self.client().await?, before).await
        })
        .await
    }

    async fn session_record(&self, uid: &str) -> Result<Option<SessionRecord>> {
        self.read("session_get", async {
            sessions::get(&self.client().await?, uid).await
        })
        .await
    }

    async fn write_session_record(&self, write: SessionWrite) -> Result<RecordWrite, WriteError> {
        self.write("session_write", async {
            sessions::write(&self.client().await?, &write).await
        })
        .await
    }

    async fn request_session_restart(
        &self,
        uid: &str,
        fresh_after: i64,
    ) -> Result<bool, WriteError> {
        self.write("session_restart", async {
            sessions::request_restart(&self.client().await?, uid, fresh_after).await
        })
        .await
    }

    async fn component_sets(&self) -> Result<Vec<ComponentSet>> {
        self.read("component_sets_load", async {
            agents::component_sets(&self.client().await?).await
        })
        .await
    }

    async fn matching_agents(&self, selector: &Selector) -> Result<Vec<(String, Option<String>)>> {
        self.read("rollout_agents_match", async {
            agents::matching(&self.client().await?, selector).await
        })
        .await
    }

    async fn configuration(&self, name: &str) -> Result<Option<ConfigRow>> {
        self.read("config_get", async {
            configs::get(&self.client().await?, name).await
        })
        .await
    }

    async fn configuration_detail(&self, name: &str) -> Result<Option<ConfigDetail>> {
        self.read("config_get", async {
            configurations::detail(&self.client().await?, name).await
        })
        .await
    }

    async fn list_configurations(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<Listed>, u64)> {
        self.read("configs_list", async {
            configs::list(&self.client().await?, after.as_deref(), limit).await
        })
        .await
    }

    async fn config_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<(ConfigRow, Option<VersionRow>)>> {
        self.read(
            "config_version",
            configurations::config_version(self, name, version),
        )
        .await
    }

    async fn config_versions(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Option<(Vec<VersionRow>, u64)>> {
        self.read(
            "config_versions",
            configurations::config_versions(self, name, before, limit),
        )
        .await
    }

    async fn save_configuration(&self, save: ConfigSave) -> Result<Saved, WriteError> {
        self.write(
            "config_save",
            configurations::save_configuration(self, save),
        )
        .await
    }

    async fn rollback_configuration(
        &self,
        rollback: ConfigRollback,
    ) -> Result<RollbackOutcome, WriteError> {
        self.write(
            "config_rollback",
            configurations::rollback_configuration(self, rollback),
        )
        .await
    }

    async fn delete_configuration(
        &self,
        delete: ConfigDelete,
    ) -> Result<DeleteOutcome, WriteError> {
        self.write(
            "config_delete",
            configurations::delete_configuration(self, delete),
        )
        .await
    }

    async fn latest_rollout(&self, name: &str) -> Result<Option<(ConfigRow, Option<RolloutRow>)>> {
        self.read("rollout_get", configurations::latest_rollout(self, name))
            .await
    }

    async fn rollout(&self, id: i64) -> Result<Option<RolloutRow>> {
        self.read("rollout_get", async {
            configs::get_rollout(&self.client().await?, id).await
        })
        .await
    }

    async fn rollouts_in_state(&self, state: &str) -> Result<Vec<RolloutRow>> {
        self.read("rollouts_running", async {
            configs::rollouts_in_state(&self.client().await?, state).await
        })
        .await
    }

    async fn rollout_agents(&self, rollout_id: i64) -> Result<Vec<RolloutAgent>> {
        self.read("rollout_agents", async {
            configs::rollout_agents(&self.client().await?, rollout_id).await
        })
        .await
    }

    async fn targets(&self) -> Result<Vec<TargetRow>> {
        self.read("targets_load", configurations::targets(self))
            .await
    }

    async fn start_rollout(&self, start: RolloutStart) -> Result<Option<RolloutRow>, WriteError> {
        self.write("rollout_start", configurations::start_rollout(self, start))
            .await
    }

    async fn transition_rollout(&self, change: RolloutTransition) -> Result<bool, WriteError> {
        self.write(
            "rollout_transition",
            configurations::transition_rollout(self, change),
        )
        .await
    }

    async fn prune_revoked(&self) -> Result<usize, WriteError> {
        self.write("jwt_prune", async {
            users::prune_revoked(&self.client().await?).await
        })
        .await
    }

    async fn audit(&self, entry: AuditEntry) -> Result<(), WriteError> {
        self.write("audit", async {
            users::insert_audit(&self.client().await?, &entry).await
        })
        .await
    }

    async fn prune_audit(&self, before: i64) -> Result<usize, WriteError> {
        self.write("audit_prune", async {
            users::prune_audit(&self.client().await?, before).await
        })
        .await
    }

    async fn package(&self, name: &str, version: &str) -> Result<Option<PackageRow>> {
        self.read("package_get", async {
            packages::get(&self.client().await?, name, version).await
        })
        .await
    }

    async fn packages(&self, name: Option<String>) -> Result<Vec<PackageRow>> {
        self.read("package_list", async {
            packages::list(&self.client().await?, name.as_deref()).await
        })
        .await
    }

    async fn add_package(&self, add: PackageAdd) -> Result<AddOutcome, WriteError> {
        self.write("package_add", catalogue::add_package(self, add))
            .await
    }

    async fn delete_package(
        &self,
        name: &str,
        version: &str,
        actor: &str,
        remote_addr: Option<String>,
    ) -> Result<PackageDeleteOutcome, WriteError> {
        self.write(
            "package_delete",
            catalogue::delete_package(self, name, version, actor, remote_addr),
        )
        .await
    }

    async fn user(&self, username: &str) -> Result<Option<UserRow>> {
        self.read("user_get", async {
            users::get_user(&self.client().await?, username).await
        })
        .await
    }

    async fn list_users(&self, after: Option<String>, limit: usize) -> Result<(Vec<UserRow>, u64)> {
        self.read("users_list", async {
            users::list_users(&self.client().await?, after.as_deref(), limit).await
        })
        .await
    }

    async fn create_user(&self, user: UserRow, audit: AuditEntry) -> Result<bool, WriteError> {
        self.write("user_create", accounts::create_user(self, user, audit))
            .await
    }

    async fn update_user(&self, update: UserUpdate) -> Result<UserChange, WriteError> {
        self.write("user_update", accounts::update_user(self, update))
            .await
    }

    async fn delete_user(&self, delete: UserDelete) -> Result<UserChange, WriteError> {
        self.write("user_delete", accounts::delete_user(self, delete))
            .await
    }

    async fn create_first_admin(
        &self,
        user: UserRow,
        token: TokenRow,
        audit: AuditEntry,
    ) -> Result<bool, WriteError> {
        self.write(
            "bootstrap_admin",
            accounts::create_first_admin(self, user, token, audit),
        )
        .await
    }

    async fn session_check(&self, username: &str, jti: &str) -> Result<Option<SessionCheck>> {
        self.read("jwt_check", accounts::session_check(self, username, jti))
            .await
    }

    async fn token_grant(&self, digest: &str) -> Result<Option<TokenGrant>> {
        self.read("token_lookup", accounts::token_grant(self, digest))
            .await
    }

    async fn list_tokens(
        &self,
        owner: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<TokenRow>, u64)> {
        self.read("tokens_list", async {
            users::list_tokens(
                &self.client().await?,
                owner.as_deref(),
                after.as_deref(),
                limit,
            )
            .await
        })
        .await
    }

    async fn create_token(&self, token: TokenRow, audit: AuditEntry) -> Result<(), WriteError> {
        self.write("token_create", accounts::create_token(self, token, audit))
            .await
    }

    async fn revoke_token(&self, revoke: TokenRevoke) -> Result<bool, WriteError> {
        self.write("token_revoke", accounts::revoke_token(self, revoke))
            .await
    }

    async fn logout_jwt(
        &self,
        jti: &str,
        expires_at: i64,
        audit: AuditEntry,
    ) -> Result<(), WriteError> {
        self.write("logout", accounts::logout_jwt(self, jti, expires_at, audit))
            .await
    }

    async fn logout_token(&self, id: &str, audit: AuditEntry) -> Result<(), WriteError> {
        self.write("logout", accounts::logout_token(self, id, audit))
            .await
    }

    async fn record_login_failures(&self, summary: FailureSummary) -> Result<(), WriteError> {
        self.write("audit", accounts::record_login_failures(self, summary))
            .await
    }

    async fn list_audit(&self, query: AuditQuery) -> Result<(Vec<AuditRow>, u64)> {
        self.read("audit_list", async {
            users::list_audit(&self.client().await?, &query).await
        })
        .await
    }

    async fn probe(&self) -> Result<()> {
        self.read("health_probe", async {
            let one: i32 = self
                .client()
                .await?
                .query_one("SELECT 1", &[])
                .await?
                .get(0);
            anyhow::ensure!(one == 1, "SELECT 1 returned {one}");
            Ok(())
        })
        .await
    }

    fn location(&self) -> Location {
        Location::Database(self.redacted_url().to_string())
    }

    fn pool_stats(&self) -> PoolStats {
        Postgres::pool_stats(self)
    }

    async fn connection_cache_bytes(&self) -> Result<u64> {
        // The server's caches are PostgreSQL's memory, not this process's.
        Ok(0)
    }

    async fn backup_to(&self, dest: PathBuf) -> Result<()> {
        self.read("db_backup", async {
            let mut client = self.client().await?;
            dump::write(&mut client, &dest).await?;
            Ok(())
        })
        .await
    }

    async fn stats(&self, _integrity: bool) -> Result<DbStats> {
        // PostgreSQL checks its pages itself (checksums, amcheck): no
        // integrity figure here.
        self.read("db_stats", self.database_stats()).await
    }

    async fn optimize(&self) -> Result<DbOptimizeReport> {
        self.read("db_optimize", self.vacuum_analyze()).await
    }

    async fn restore_from(
        &self,
        candidate: PathBuf,
        keep_aside: PathBuf,
        live_agents: Box<dyn FnOnce() -> Vec<LiveAgent> + Send>,
    ) -> Result<u64> {
        // Refused before anything is written, even the copy kept aside.
        dump::check(&candidate).await?;
        self.backup_to(keep_aside)
            .await
            .context("saving the current content aside")?;
        let start = Instant::now();
        let mut client = self.client().await?;
        let loaded = dump::load(
            &mut client,
            &candidate,
            dump::Target::Replace,
            live_agents(),
        )
        .await;
        self.metrics.db_query("db_restore", start.elapsed());
        Ok(loaded?.live_agents_added)
    }

    async fn latest_package_rollout(&self, name: &str) -> Result<Option<PackageRolloutRow>> {
        self.read("package_rollout_get", async {
            package_rollouts::latest(&self.client().await?, name).await
        })
        .await
    }

    async fn package_rollout(&self, id: i64) -> Result<Option<PackageRolloutRow>> {
        self.read("package_rollout_get", async {
            package_rollouts::get(&self.client().await?, id).await
        })
        .await
    }

    async fn package_rollouts_in_state(&self, state: &str) -> Result<Vec<PackageRolloutRow>> {
        self.read("package_rollouts_in_state", async {
            package_rollouts::in_state(&self.client().await?, state).await
        })
        .await
    }

    async fn package_rollout_agents(&self, rollout_id: i64) -> Result<Vec<PackageRolloutAgent>> {
        self.read("package_rollout_agents", async {
            package_rollouts::agents(&self.client().await?, rollout_id).await
        })
        .await
    }

    async fn package_candidates(
        &self,
        selector: &Selector,
    ) -> Result<Vec<(String, StoredPackageAgent)>> {
        self.read("package_rollout_candidates", async {
            package_rollouts::candidates(&self.client().await?, selector).await
        })
        .await
    }

    async fn package_targets(&self) -> Result<Vec<PackageTargetRow>> {
        self.read("package_targets", async {
            package_rollouts::targets(&self.client().await?).await
        })
        .await
    }

    async fn start_package_rollout(
        &self,
        start: PackageRolloutStart,
    ) -> Result<Option<PackageRolloutRow>, WriteError> {
        self.write(
            "package_rollout_start",
            catalogue::start_package_rollout(self, start),
        )
        .await
    }

    async fn transition_package_rollout(
        &self,
        change: RolloutTransition,
    ) -> Result<bool, WriteError> {
        self.write(
            "package_rollout_transition",
            catalogue::transition_package_rollout(self, change),
        )
        .await
    }
}
