//! [`Backend`] for [`Postgres`]: reads on a pooled connection, agent state
//! through the batching writer, every other write one transaction of its
//! own. Writes that read first (a configuration save, a rollout start) take
//! a transaction-scoped advisory lock on the configuration's name, so that
//! replicas and concurrent requests apply them one at a time.

use super::{agents, configs, dump, package_rollouts, packages, sessions, users, Postgres};
use crate::auth::throttle::FailureSummary;
use crate::components::ComponentSet;
use crate::selector::Selector;
use crate::store::agents::LiveAgent;
use crate::store::agents::{
    AgentEvent, AgentPatch, AgentRow, EventRow, ListQuery, RecordWrite, SessionRecord, SessionWrite,
};
use crate::store::configs::{
    self as plan, ConfigDelete, ConfigDetail, ConfigRollback, ConfigRow, ConfigSave, DeleteOutcome,
    Listed, RollbackOutcome, RolloutAgent, RolloutRow, RolloutStart, RolloutTransition, SavePlan,
    Saved, TargetRow, VersionRow,
};
use crate::store::package_rollouts::{
    plan_start, PackageRolloutAgent, PackageRolloutRow, PackageRolloutStart, PackageTargetRow,
    StoredPackageAgent,
};
use crate::store::packages::{delete_audit, AddOutcome, PackageAdd, PackageRow};
use crate::store::users::{
    AuditEntry, AuditQuery, AuditRow, SessionCheck, TokenGrant, TokenRevoke, TokenRow, UserChange,
    UserDelete, UserRow, UserUpdate,
};
use crate::store::{now_ms, Backend, Room, WriteError};
use crate::store::{Location, PoolStats};
use anyhow::{Context, Result};
use deadpool_postgres::{GenericClient, Transaction};
use opamp_proto::api::{DbOptimizeReport, DbStats};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A configuration with its newest version and latest rollout.
async fn detail(c: &impl GenericClient, name: &str) -> Result<Option<ConfigDetail>> {
    let Some(row) = configs::get(c, name).await? else {
        return Ok(None);
    };
    let newest = configs::get_version(c, name, row.latest_version)
        .await?
        .with_context(|| format!("configuration {} lacks its newest version", row.name))?;
    let rollout = configs::latest_rollout(c, name).await?;
    Ok(Some(ConfigDetail {
        row,
        newest,
        rollout,
    }))
}

/// Writes what a save or rollback decided.
async fn apply(c: &impl GenericClient, plan: SavePlan) -> Result<Saved> {
    let Some(audit) = plan.audit else {
        return Ok(plan.saved);
    };
    if plan.insert {
        configs::insert(c, &plan.saved.row).await?;
    }
    if let Some(version) = &plan.version {
        configs::insert_version(c, version).await?;
    }
    if !plan.insert {
        configs::update(c, &plan.saved.row).await?;
    }
    users::insert_audit(c, &audit).await?;
    Ok(plan.saved)
}

/// Serialises changes to users (the last-admin rule, the first admin)
/// across connections and replicas until the transaction ends.
async fn lock_users(tx: &Transaction<'_>) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('users'))", &[])
        .await?;
    Ok(())
}

/// Serialises writes to one configuration across connections and replicas
/// until the transaction ends.
async fn lock_configuration(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('configuration:' || $1))",
        &[&name],
    )
    .await?;
    Ok(())
}

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
            detail(&self.client().await?, name).await
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
        self.read("config_version", async {
            let client = self.client().await?;
            let Some(row) = configs::get(&client, name).await? else {
                return Ok(None);
            };
            Ok(Some((
                row,
                configs::get_version(&client, name, version).await?,
            )))
        })
        .await
    }

    async fn config_versions(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Option<(Vec<VersionRow>, u64)>> {
        self.read("config_versions", async {
            let client = self.client().await?;
            if configs::get(&client, name).await?.is_none() {
                return Ok(None);
            }
            Ok(Some(
                configs::list_versions(&client, name, before, limit).await?,
            ))
        })
        .await
    }

    async fn save_configuration(&self, save: ConfigSave) -> Result<Saved, WriteError> {
        self.write("config_save", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            lock_configuration(&tx, &save.name).await?;
            let current = detail(&tx, &save.name).await?;
            let saved = apply(&tx, plan::plan_save(save, current, now_ms())).await?;
            tx.commit().await?;
            Ok(saved)
        })
        .await
    }

    async fn rollback_configuration(
        &self,
        rollback: ConfigRollback,
    ) -> Result<RollbackOutcome, WriteError> {
        self.write("config_rollback", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            lock_configuration(&tx, &rollback.name).await?;
            let Some(current) = detail(&tx, &rollback.name).await? else {
                return Ok(RollbackOutcome::Missing);
            };
            let newest = current.row.latest_version;
            let target = match plan::rollback_target(rollback.version, newest) {
                Ok(target) => target,
                Err(outcome) => return Ok(outcome),
            };
            let Some(old) = configs::get_version(&tx, &rollback.name, target).await? else {
                return Ok(RollbackOutcome::NoSuchVersion {
                    version: target,
                    newest,
                });
            };
            let plan = plan::plan_rollback(&rollback, current, old, now_ms());
            let saved = apply(&tx, plan).await?;
            tx.commit().await?;
            Ok(RollbackOutcome::Saved(Box::new(saved)))
        })
        .await
    }

    async fn delete_configuration(
        &self,
        delete: ConfigDelete,
    ) -> Result<DeleteOutcome, WriteError> {
        self.write("config_delete", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            lock_configuration(&tx, &delete.name).await?;
            let row = configs::get(&tx, &delete.name).await?;
            let rollout = configs::latest_rollout(&tx, &delete.name).await?;
            let audit = match plan::plan_delete(&delete, row.as_ref(), rollout.as_ref()) {
                Ok(audit) => audit,
                Err(outcome) => return Ok(outcome),
            };
            configs::delete(&tx, &delete.name).await?;
            users::insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(DeleteOutcome::Deleted {
                rolled_out: rollout.is_some(),
            })
        })
        .await
    }

    async fn latest_rollout(&self, name: &str) -> Result<Option<(ConfigRow, Option<RolloutRow>)>> {
        self.read("rollout_get", async {
            let client = self.client().await?;
            let Some(row) = configs::get(&client, name).await? else {
                return Ok(None);
            };
            Ok(Some((row, configs::latest_rollout(&client, name).await?)))
        })
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
        self.read("targets_load", async {
            let mut client = self.client().await?;
            // One snapshot: rollouts and their agents as of one moment.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let targets = configs::targets(&tx).await?;
            tx.commit().await?;
            Ok(targets)
        })
        .await
    }

    async fn start_rollout(&self, start: RolloutStart) -> Result<Option<RolloutRow>, WriteError> {
        self.write("rollout_start", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            lock_configuration(&tx, &start.name).await?;
            let Some(version) = configs::get_version(&tx, &start.name, start.version).await? else {
                return Ok(None);
            };
            let now = now_ms();
            let prior = configs::latest_rollout(&tx, &start.name).await?;
            let (row, audit) = plan::plan_rollout(&start, version.hash, prior.as_ref(), now);
            configs::supersede(&tx, &start.name, now).await?;
            let id = configs::insert_rollout(&tx, &row, &start.agents).await?;
            users::insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(Some(RolloutRow { id, ..row }))
        })
        .await
    }

    async fn transition_rollout(&self, change: RolloutTransition) -> Result<bool, WriteError> {
        self.write("rollout_transition", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let moved = configs::transition(
                &tx,
                change.id,
                change.from,
                change.to,
                change.released_batches,
                change.max_failures,
                change.reason.as_deref(),
            )
            .await?;
            if moved {
                if let Some(audit) = &change.audit {
                    users::insert_audit(&tx, audit).await?;
                }
            }
            tx.commit().await?;
            Ok(moved)
        })
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
        self.write("package_add", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let outcome = packages::insert(&tx, add).await?;
            // A refusal changed nothing: committing it is as good as not.
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    async fn delete_package(
        &self,
        name: &str,
        version: &str,
        actor: &str,
        remote_addr: Option<String>,
    ) -> Result<bool, WriteError> {
        let audit = delete_audit(name, version, actor, remote_addr.as_deref());
        self.write("package_delete", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let deleted = packages::delete(&tx, name, version).await?;
            if deleted {
                users::insert_audit(&tx, &audit).await?;
            }
            tx.commit().await?;
            Ok(deleted)
        })
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
        self.write("user_create", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            lock_users(&tx).await?;
            if users::get_user(&tx, &user.username).await?.is_some() {
                return Ok(false);
            }
            users::insert_user(&tx, &user).await?;
            users::insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn update_user(&self, update: UserUpdate) -> Result<UserChange, WriteError> {
        self.write("user_update", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            lock_users(&tx).await?;
            let key = &update.username;
            let Some(mut user) = users::get_user(&tx, key).await? else {
                return Ok(UserChange::Missing);
            };
            let mut details = json!({"password_changed": update.password_hash.is_some()});
            if let Some((role, allowed)) = &update.role {
                let old = user.role.clone();
                if old == "admin" && role != "admin" && users::count_admins(&tx).await? <= 1 {
                    return Ok(UserChange::LastAdmin);
                }
                users::set_role(&tx, key, role).await?;
                let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
                users::clamp_token_roles(&tx, key, &allowed, role).await?;
                user.role = role.clone();
                details["role"] = json!({"from": old, "to": user.role});
            }
            if let Some(hash) = &update.password_hash {
                users::set_password_hash(&tx, key, hash).await?;
            }
            // A new password or role ends the user's existing sessions.
            users::end_sessions(&tx, key).await?;
            users::insert_audit(
                &tx,
                &AuditEntry::ok(
                    &update.actor,
                    "user.update",
                    Some(key),
                    update.remote_addr.as_deref(),
                    details,
                ),
            )
            .await?;
            tx.commit().await?;
            Ok(UserChange::Done(user))
        })
        .await
    }

    async fn delete_user(&self, delete: UserDelete) -> Result<UserChange, WriteError> {
        self.write("user_delete", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            lock_users(&tx).await?;
            let key = &delete.username;
            let Some(user) = users::get_user(&tx, key).await? else {
                return Ok(UserChange::Missing);
            };
            if user.role == "admin" && users::count_admins(&tx).await? <= 1 {
                return Ok(UserChange::LastAdmin);
            }
            users::delete_user(&tx, key).await?;
            let revoked = users::revoke_tokens_of(&tx, key).await?;
            users::insert_audit(
                &tx,
                &AuditEntry::ok(
                    &delete.actor,
                    "user.delete",
                    Some(key),
                    delete.remote_addr.as_deref(),
                    json!({"role": user.role, "tokens_revoked": revoked}),
                ),
            )
            .await?;
            tx.commit().await?;
            Ok(UserChange::Done(user))
        })
        .await
    }

    async fn create_first_admin(
        &self,
        user: UserRow,
        token: TokenRow,
        audit: AuditEntry,
    ) -> Result<bool, WriteError> {
        self.write("bootstrap_admin", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Replicas starting together: the first to take the lock decides.
            lock_users(&tx).await?;
            let any: bool = tx
                .query_one("SELECT EXISTS(SELECT 1 FROM users)", &[])
                .await?
                .get(0);
            if any {
                return Ok(false);
            }
            users::insert_user(&tx, &user).await?;
            users::insert_token(&tx, &token).await?;
            users::insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn session_check(&self, username: &str, jti: &str) -> Result<Option<SessionCheck>> {
        self.read("jwt_check", async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT role, session_generation,
                            EXISTS(SELECT 1 FROM revoked_jwts WHERE jti = $2)
                     FROM users WHERE username = $1",
                    &[&username, &jti],
                )
                .await?;
            Ok(row.map(|r| SessionCheck {
                role: r.get(0),
                session_generation: r.get(1),
                jwt_revoked: r.get(2),
            }))
        })
        .await
    }

    async fn token_grant(&self, digest: &str) -> Result<Option<TokenGrant>> {
        self.read("token_lookup", async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT t.id, t.owner, t.role, t.expires_at, t.revoked, u.role
                     FROM api_tokens t JOIN users u ON u.username = t.owner
                     WHERE t.token_hash = $1",
                    &[&digest],
                )
                .await?;
            Ok(row.map(|r| TokenGrant {
                id: r.get(0),
                owner: r.get(1),
                role: r.get(2),
                expires_at: r.get(3),
                revoked: r.get(4),
                owner_role: r.get(5),
            }))
        })
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
        self.write("token_create", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            users::insert_token(&tx, &token).await?;
            users::insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn revoke_token(&self, revoke: TokenRevoke) -> Result<bool, WriteError> {
        self.write("token_revoke", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let Some(token) = users::get_token(&tx, &revoke.id)
                .await?
                .filter(|t| revoke.any_owner || t.owner == revoke.actor)
            else {
                return Ok(false);
            };
            if users::revoke_token(&tx, &revoke.id).await? {
                users::insert_audit(
                    &tx,
                    &AuditEntry::ok(
                        &revoke.actor,
                        "token.revoke",
                        Some(&revoke.id),
                        revoke.remote_addr.as_deref(),
                        json!({"name": token.name, "owner": token.owner, "role": token.role}),
                    ),
                )
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn logout_jwt(
        &self,
        jti: &str,
        expires_at: i64,
        audit: AuditEntry,
    ) -> Result<(), WriteError> {
        self.write("logout", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            users::revoke_jwt(&tx, jti, expires_at).await?;
            users::insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn logout_token(&self, id: &str, audit: AuditEntry) -> Result<(), WriteError> {
        self.write("logout", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            users::revoke_token(&tx, id).await?;
            users::insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn record_login_failures(&self, summary: FailureSummary) -> Result<(), WriteError> {
        self.write("audit", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('login_failures:' || $1))",
                &[&summary.remote_addr],
            )
            .await?;
            users::record_login_failures(&tx, &summary).await?;
            tx.commit().await?;
            Ok(())
        })
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
        self.write("package_rollout_start", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('package rollout:' || $1))",
                &[&start.name],
            )
            .await?;
            if packages::get(&tx, &start.name, &start.version)
                .await?
                .is_none()
            {
                return Ok(None);
            }
            let now = now_ms();
            let prior = package_rollouts::latest(&tx, &start.name).await?;
            let (row, audit) = plan_start(&start, prior.as_ref(), now);
            package_rollouts::supersede(&tx, &start.name, now).await?;
            let id = package_rollouts::insert(&tx, &row, &start.agents).await?;
            users::insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(Some(PackageRolloutRow { id, ..row }))
        })
        .await
    }

    async fn transition_package_rollout(
        &self,
        change: RolloutTransition,
    ) -> Result<bool, WriteError> {
        self.write("package_rollout_transition", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let moved = package_rollouts::transition(&tx, &change).await?;
            if moved {
                if let Some(audit) = &change.audit {
                    users::insert_audit(&tx, audit).await?;
                }
            }
            tx.commit().await?;
            Ok(moved)
        })
        .await
    }
}
