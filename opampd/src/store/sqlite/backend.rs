//! [`Backend`] for [`Sqlite`]: each operation is a read on the pool or one
//! job of the batching writer (one savepoint of its transaction).

use super::staged;
use super::users::insert_audit;
use super::{agents, components, configs, package_rollouts, packages, sessions, users, Sqlite};
use crate::auth::throttle::FailureSummary;
use crate::components::ComponentSet;
use crate::selector::Selector;
use crate::store::agents::{
    AgentEvent, AgentPatch, AgentRow, EventRow, ListQuery, LiveAgent, RecordWrite, SessionRecord,
    SessionWrite,
};
use crate::store::configs::CONFIGURATION_ROLLOUTS;
use crate::store::configs::{
    self as plan, ConfigDelete, ConfigDetail, ConfigRollback, ConfigRow, ConfigSave, DeleteOutcome,
    Listed, RollbackOutcome, RolloutAgent, RolloutRow, RolloutStart, RolloutTransition, SavePlan,
    Saved, TargetRow, VersionRow,
};
use crate::store::package_rollouts::PACKAGE_ROLLOUTS;
use crate::store::package_rollouts::{
    plan_start, PackageRolloutAgent, PackageRolloutRow, PackageRolloutStart, PackageTargetRow,
    StoredPackageAgent,
};
use crate::store::packages::{
    blocking_rollout, delete_audit, AddOutcome, DeleteOutcome as PackageDeleteOutcome, PackageAdd,
    PackageRow,
};
use crate::store::users::{
    AuditEntry, AuditQuery, AuditRow, SessionCheck, TokenGrant, TokenRevoke, TokenRow, UserChange,
    UserDelete, UserRow, UserUpdate,
};
use crate::store::{now_ms, Backend, Location, PoolStats, Room, WriteError};
use anyhow::{Context, Result};
use opamp_proto::api::{DbOptimizeReport, DbStats};
use rusqlite::Connection;
use rusqlite::{params, OptionalExtension};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A configuration with its newest version and latest rollout.
fn detail(c: &Connection, name: &str) -> Result<Option<ConfigDetail>> {
    let Some(row) = configs::get(c, name)? else {
        return Ok(None);
    };
    let newest = configs::get_version(c, name, row.latest_version)?
        .with_context(|| format!("configuration {} lacks its newest version", row.name))?;
    let rollout = configs::latest_rollout(c, name)?;
    Ok(Some(ConfigDetail {
        row,
        newest,
        rollout,
    }))
}

/// Writes what a save or rollback decided.
fn apply(c: &Connection, plan: SavePlan) -> Result<Saved> {
    let Some(audit) = plan.audit else {
        return Ok(plan.saved);
    };
    if plan.insert {
        configs::insert(c, &plan.saved.row)?;
    }
    if let Some(version) = &plan.version {
        configs::insert_version(c, version)?;
    }
    if !plan.insert {
        configs::update(c, &plan.saved.row)?;
    }
    insert_audit(c, &audit)?;
    Ok(plan.saved)
}

#[async_trait::async_trait]
impl Backend for Sqlite {
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
    }

    async fn agent(&self, uid: &str) -> Result<Option<AgentRow>> {
        let uid = uid.to_string();
        self.read("agent_get", move |c| agents::get(c, &uid)).await
    }

    async fn agents(&self, uids: Vec<String>) -> Result<Vec<AgentRow>> {
        self.read("agents_get", move |c| {
            let mut out = Vec::with_capacity(uids.len());
            for uid in uids {
                if let Some(row) = agents::get(c, &uid)? {
                    out.push(row);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_agents(&self, query: ListQuery) -> Result<(Vec<AgentRow>, u64)> {
        self.read("agents_list", move |c| agents::list(c, &query))
            .await
    }

    async fn count_agents(&self) -> Result<u64> {
        self.read("agent_count", agents::count).await
    }

    async fn agent_events(&self, uid: &str, limit: usize) -> Result<Vec<EventRow>> {
        let uid = uid.to_string();
        self.read("agent_events", move |c| agents::events(c, &uid, limit))
            .await
    }

    async fn delete_agent(&self, uid: &str, audit: AuditEntry) -> Result<bool, WriteError> {
        let uid = uid.to_string();
        self.write("agent_delete", move |c| {
            let found = agents::delete(c, &uid)?;
            sessions::delete(c, &uid)?;
            if found {
                insert_audit(c, &audit)?;
            }
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
        let uid = uid.to_string();
        self.write("agent_labels", move |c| {
            let Some(labels) = agents::patch_labels(c, &uid, &changes)? else {
                return Ok(None);
            };
            sessions::row_changed(c, &uid)?;
            insert_audit(c, &audit)?;
            Ok(Some(labels))
        })
        .await
    }

    async fn prune_events(&self, before: i64) -> Result<usize, WriteError> {
        self.write("event_prune", move |c| agents::prune_events(c, before))
            .await
    }

    async fn session_record(&self, uid: &str) -> Result<Option<SessionRecord>> {
        let uid = uid.to_string();
        self.read("session_get", move |c| sessions::get(c, &uid))
            .await
    }

    async fn write_session_record(&self, write: SessionWrite) -> Result<RecordWrite, WriteError> {
        self.write("session_write", move |c| sessions::write(c, &write))
            .await
    }

    async fn request_session_restart(
        &self,
        uid: &str,
        fresh_after: i64,
    ) -> Result<bool, WriteError> {
        let uid = uid.to_string();
        self.write("session_restart", move |c| {
            sessions::request_restart(c, &uid, fresh_after)
        })
        .await
    }

    async fn component_sets(&self) -> Result<Vec<ComponentSet>> {
        self.read("component_sets_load", components::all).await
    }

    async fn matching_agents(&self, selector: &Selector) -> Result<Vec<(String, Option<String>)>> {
        let selector = selector.clone();
        self.read("rollout_agents_match", move |c| {
            configs::matching_agents(c, &selector)
        })
        .await
    }

    async fn configuration(&self, name: &str) -> Result<Option<ConfigRow>> {
        let name = name.to_string();
        self.read("config_get", move |c| configs::get(c, &name))
            .await
    }

    async fn configuration_detail(&self, name: &str) -> Result<Option<ConfigDetail>> {
        let name = name.to_string();
        self.read("config_get", move |c| detail(c, &name)).await
    }

    async fn list_configurations(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<Listed>, u64)> {
        self.read("configs_list", move |c| {
            configs::list(c, after.as_deref(), limit)
        })
        .await
    }

    async fn config_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<(ConfigRow, Option<VersionRow>)>> {
        let name = name.to_string();
        self.read("config_version", move |c| {
            let Some(row) = configs::get(c, &name)? else {
                return Ok(None);
            };
            Ok(Some((row, configs::get_version(c, &name, version)?)))
        })
        .await
    }

    async fn config_versions(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Option<(Vec<VersionRow>, u64)>> {
        let name = name.to_string();
        self.read("config_versions", move |c| {
            if configs::get(c, &name)?.is_none() {
                return Ok(None);
            }
            Ok(Some(configs::list_versions(c, &name, before, limit)?))
        })
        .await
    }

    async fn save_configuration(&self, save: ConfigSave) -> Result<Saved, WriteError> {
        self.write("config_save", move |c| {
            let current = detail(c, &save.name)?;
            apply(c, plan::plan_save(save, current, now_ms()))
        })
        .await
    }

    async fn rollback_configuration(
        &self,
        rollback: ConfigRollback,
    ) -> Result<RollbackOutcome, WriteError> {
        self.write("config_rollback", move |c| {
            let Some(current) = detail(c, &rollback.name)? else {
                return Ok(RollbackOutcome::Missing);
            };
            let newest = current.row.latest_version;
            let target = match plan::rollback_target(rollback.version, newest) {
                Ok(target) => target,
                Err(outcome) => return Ok(outcome),
            };
            let Some(old) = configs::get_version(c, &rollback.name, target)? else {
                return Ok(RollbackOutcome::NoSuchVersion {
                    version: target,
                    newest,
                });
            };
            let plan = plan::plan_rollback(&rollback, current, old, now_ms());
            Ok(RollbackOutcome::Saved(Box::new(apply(c, plan)?)))
        })
        .await
    }

    async fn delete_configuration(
        &self,
        delete: ConfigDelete,
    ) -> Result<DeleteOutcome, WriteError> {
        self.write("config_delete", move |c| {
            let row = configs::get(c, &delete.name)?;
            let rollout = configs::latest_rollout(c, &delete.name)?;
            let audit = match plan::plan_delete(&delete, row.as_ref(), rollout.as_ref()) {
                Ok(audit) => audit,
                Err(outcome) => return Ok(outcome),
            };
            configs::delete(c, &delete.name)?;
            insert_audit(c, &audit)?;
            Ok(DeleteOutcome::Deleted {
                rolled_out: rollout.is_some(),
            })
        })
        .await
    }

    async fn latest_rollout(&self, name: &str) -> Result<Option<(ConfigRow, Option<RolloutRow>)>> {
        let name = name.to_string();
        self.read("rollout_get", move |c| {
            let Some(row) = configs::get(c, &name)? else {
                return Ok(None);
            };
            Ok(Some((row, configs::latest_rollout(c, &name)?)))
        })
        .await
    }

    async fn rollout(&self, id: i64) -> Result<Option<RolloutRow>> {
        self.read("rollout_get", move |c| configs::get_rollout(c, id))
            .await
    }

    async fn rollouts_in_state(&self, state: &str) -> Result<Vec<RolloutRow>> {
        let state = state.to_string();
        self.read("rollouts_running", move |c| {
            configs::rollouts_in_state(c, &state)
        })
        .await
    }

    async fn rollout_agents(&self, rollout_id: i64) -> Result<Vec<RolloutAgent>> {
        self.read("rollout_agents", move |c| {
            configs::rollout_agents(c, rollout_id)
        })
        .await
    }

    async fn targets(&self) -> Result<Vec<TargetRow>> {
        self.read("targets_load", configs::targets).await
    }

    async fn start_rollout(&self, start: RolloutStart) -> Result<Option<RolloutRow>, WriteError> {
        self.write("rollout_start", move |c| {
            let Some(version) = configs::get_version(c, &start.name, start.version)? else {
                return Ok(None);
            };
            let now = now_ms();
            let prior = configs::latest_rollout(c, &start.name)?;
            let (row, audit) = plan::plan_rollout(&start, version.hash, prior.as_ref(), now);
            staged::supersede(c, CONFIGURATION_ROLLOUTS, &start.name, now)?;
            let id = configs::insert_rollout(c, &row, &start.agents)?;
            insert_audit(c, &audit)?;
            Ok(Some(RolloutRow { id, ..row }))
        })
        .await
    }

    async fn transition_rollout(&self, change: RolloutTransition) -> Result<bool, WriteError> {
        self.write("rollout_transition", move |c| {
            staged::transition(c, CONFIGURATION_ROLLOUTS, &change)
        })
        .await
    }

    async fn user(&self, username: &str) -> Result<Option<UserRow>> {
        let username = username.to_string();
        self.read("user_get", move |c| users::get_user(c, &username))
            .await
    }

    async fn list_users(&self, after: Option<String>, limit: usize) -> Result<(Vec<UserRow>, u64)> {
        self.read("users_list", move |c| {
            users::list_users(c, after.as_deref(), limit)
        })
        .await
    }

    async fn create_user(&self, user: UserRow, audit: AuditEntry) -> Result<bool, WriteError> {
        self.write("user_create", move |c| {
            if users::get_user(c, &user.username)?.is_some() {
                return Ok(false);
            }
            users::insert_user(c, &user)?;
            insert_audit(c, &audit)?;
            Ok(true)
        })
        .await
    }

    async fn update_user(&self, update: UserUpdate) -> Result<UserChange, WriteError> {
        self.write("user_update", move |c| {
            let key = &update.username;
            let Some(mut user) = users::get_user(c, key)? else {
                return Ok(UserChange::Missing);
            };
            let mut old = None;
            if let Some((role, allowed)) = &update.role {
                if user.role == "admin" && role != "admin" && users::count_admins(c)? <= 1 {
                    return Ok(UserChange::LastAdmin);
                }
                users::set_role(c, key, role)?;
                let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
                users::clamp_token_roles(c, key, &allowed, role)?;
                old = Some(std::mem::replace(&mut user.role, role.clone()));
            }
            if let Some(h) = &update.password_hash {
                users::set_password_hash(c, key, h)?;
            }
            // A new password or role ends the user's existing sessions.
            users::end_sessions(c, key)?;
            let change = old.as_deref().map(|from| (from, user.role.as_str()));
            insert_audit(c, &update.audit(change))?;
            Ok(UserChange::Done(user))
        })
        .await
    }

    async fn delete_user(&self, delete: UserDelete) -> Result<UserChange, WriteError> {
        self.write("user_delete", move |c| {
            let key = &delete.username;
            let Some(user) = users::get_user(c, key)? else {
                return Ok(UserChange::Missing);
            };
            if user.role == "admin" && users::count_admins(c)? <= 1 {
                return Ok(UserChange::LastAdmin);
            }
            users::delete_user(c, key)?;
            let revoked = users::revoke_tokens_of(c, key)?;
            insert_audit(c, &delete.audit(&user.role, revoked))?;
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
        self.write("bootstrap_admin", move |c| {
            let any: bool = c.query_row("SELECT EXISTS(SELECT 1 FROM users)", [], |r| r.get(0))?;
            if any {
                return Ok(false);
            }
            users::insert_user(c, &user)?;
            users::insert_token(c, &token)?;
            insert_audit(c, &audit)?;
            Ok(true)
        })
        .await
    }

    async fn session_check(&self, username: &str, jti: &str) -> Result<Option<SessionCheck>> {
        let (username, jti) = (username.to_string(), jti.to_string());
        self.read("jwt_check", move |c| {
            Ok(c.prepare_cached(
                "SELECT role, session_generation,
                        EXISTS(SELECT 1 FROM revoked_jwts WHERE jti = ?2)
                 FROM users WHERE username = ?1",
            )?
            .query_row(params![username, jti], |r| {
                Ok(SessionCheck {
                    role: r.get(0)?,
                    session_generation: r.get(1)?,
                    jwt_revoked: r.get(2)?,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn token_grant(&self, digest: &str) -> Result<Option<TokenGrant>> {
        let digest = digest.to_string();
        self.read("token_lookup", move |c| {
            Ok(c.prepare_cached(
                "SELECT t.id, t.owner, t.role, t.expires_at, t.revoked, u.role
                 FROM api_tokens t JOIN users u ON u.username = t.owner
                 WHERE t.token_hash = ?1",
            )?
            .query_row([digest], |r| {
                Ok(TokenGrant {
                    id: r.get(0)?,
                    owner: r.get(1)?,
                    role: r.get(2)?,
                    expires_at: r.get(3)?,
                    revoked: r.get(4)?,
                    owner_role: r.get(5)?,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn list_tokens(
        &self,
        owner: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<TokenRow>, u64)> {
        self.read("tokens_list", move |c| {
            users::list_tokens(c, owner.as_deref(), after.as_deref(), limit)
        })
        .await
    }

    async fn create_token(&self, token: TokenRow, audit: AuditEntry) -> Result<(), WriteError> {
        self.write("token_create", move |c| {
            users::insert_token(c, &token)?;
            insert_audit(c, &audit)
        })
        .await
    }

    async fn revoke_token(&self, revoke: TokenRevoke) -> Result<bool, WriteError> {
        self.write("token_revoke", move |c| {
            let Some(token) = users::get_token(c, &revoke.id)?
                .filter(|t| revoke.any_owner || t.owner == revoke.actor)
            else {
                return Ok(false);
            };
            if users::revoke_token(c, &revoke.id)? {
                insert_audit(c, &revoke.audit(&token))?;
            }
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
        let jti = jti.to_string();
        self.write("logout", move |c| {
            c.execute(
                "INSERT OR IGNORE INTO revoked_jwts (jti, expires_at) VALUES (?1, ?2)",
                params![jti, expires_at],
            )?;
            insert_audit(c, &audit)
        })
        .await
    }

    async fn logout_token(&self, id: &str, audit: AuditEntry) -> Result<(), WriteError> {
        let id = id.to_string();
        self.write("logout", move |c| {
            users::revoke_token(c, &id)?;
            insert_audit(c, &audit)
        })
        .await
    }

    async fn record_login_failures(&self, summary: FailureSummary) -> Result<(), WriteError> {
        self.write("audit", move |c| users::record_login_failures(c, &summary))
            .await
    }

    async fn prune_revoked(&self) -> Result<usize, WriteError> {
        self.write("jwt_prune", users::prune_revoked).await
    }

    async fn audit(&self, entry: AuditEntry) -> Result<(), WriteError> {
        self.write("audit", move |c| insert_audit(c, &entry)).await
    }

    async fn list_audit(&self, query: AuditQuery) -> Result<(Vec<AuditRow>, u64)> {
        self.read("audit_list", move |c| users::list_audit(c, &query))
            .await
    }

    async fn probe(&self) -> Result<()> {
        self.read("health_probe", |c| {
            let one: i64 = c.query_row("SELECT 1", [], |r| r.get(0))?;
            anyhow::ensure!(one == 1, "SELECT 1 returned {one}");
            Ok(())
        })
        .await
    }

    fn location(&self) -> Location {
        Location::File(self.path().to_path_buf())
    }

    fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    async fn connection_cache_bytes(&self) -> Result<u64> {
        self.read("memory_cache_size", |c| {
            let size: i64 = c.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
            let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            Ok(if size < 0 { -size * 1024 } else { size * page }.max(0) as u64)
        })
        .await
    }

    async fn backup_to(&self, dest: PathBuf) -> Result<()> {
        Sqlite::backup_to(self, dest).await
    }

    async fn stats(&self, integrity: bool) -> Result<DbStats> {
        Sqlite::stats(self, integrity).await
    }

    async fn optimize(&self) -> Result<DbOptimizeReport> {
        Sqlite::optimize(self).await
    }

    async fn restore_from(
        &self,
        candidate: PathBuf,
        keep_aside: PathBuf,
        live_agents: Box<dyn FnOnce() -> Vec<LiveAgent> + Send>,
    ) -> Result<u64> {
        Sqlite::restore_from(self, candidate, keep_aside, live_agents).await
    }

    async fn prune_audit(&self, before: i64) -> Result<usize, WriteError> {
        self.write("audit_prune", move |c| users::prune_audit(c, before))
            .await
    }

    async fn package(&self, name: &str, version: &str) -> Result<Option<PackageRow>> {
        let (name, version) = (name.to_string(), version.to_string());
        self.read("package_get", move |c| packages::get(c, &name, &version))
            .await
    }

    async fn packages(&self, name: Option<String>) -> Result<Vec<PackageRow>> {
        self.read("package_list", move |c| packages::list(c, name.as_deref()))
            .await
    }

    async fn add_package(&self, add: PackageAdd) -> Result<AddOutcome, WriteError> {
        self.write("package_add", move |c| packages::insert(c, add))
            .await
    }

    async fn delete_package(
        &self,
        name: &str,
        version: &str,
        actor: &str,
        remote_addr: Option<String>,
    ) -> Result<PackageDeleteOutcome, WriteError> {
        let audit = delete_audit(name, version, actor, remote_addr.as_deref());
        let (name, version) = (name.to_string(), version.to_string());
        self.write("package_delete", move |c| {
            let latest = package_rollouts::latest(c, &name)?;
            if let Some(rollout) = blocking_rollout(latest, &version) {
                return Ok(PackageDeleteOutcome::InRollout(Box::new(rollout)));
            }
            if !packages::delete(c, &name, &version)? {
                return Ok(PackageDeleteOutcome::Missing);
            }
            insert_audit(c, &audit)?;
            Ok(PackageDeleteOutcome::Deleted)
        })
        .await
    }

    async fn latest_package_rollout(&self, name: &str) -> Result<Option<PackageRolloutRow>> {
        let name = name.to_string();
        self.read("package_rollout_get", move |c| {
            package_rollouts::latest(c, &name)
        })
        .await
    }

    async fn package_rollout(&self, id: i64) -> Result<Option<PackageRolloutRow>> {
        self.read("package_rollout_get", move |c| package_rollouts::get(c, id))
            .await
    }

    async fn package_rollouts_in_state(&self, state: &str) -> Result<Vec<PackageRolloutRow>> {
        let state = state.to_string();
        self.read("package_rollouts_in_state", move |c| {
            package_rollouts::in_state(c, &state)
        })
        .await
    }

    async fn package_rollout_agents(&self, rollout_id: i64) -> Result<Vec<PackageRolloutAgent>> {
        self.read("package_rollout_agents", move |c| {
            package_rollouts::agents(c, rollout_id)
        })
        .await
    }

    async fn package_candidates(
        &self,
        selector: &Selector,
    ) -> Result<Vec<(String, StoredPackageAgent)>> {
        let selector = selector.clone();
        self.read("package_rollout_candidates", move |c| {
            package_rollouts::candidates(c, &selector)
        })
        .await
    }

    async fn package_targets(&self) -> Result<Vec<PackageTargetRow>> {
        self.read("package_targets", package_rollouts::targets)
            .await
    }

    async fn start_package_rollout(
        &self,
        start: PackageRolloutStart,
    ) -> Result<Option<PackageRolloutRow>, WriteError> {
        self.write("package_rollout_start", move |c| {
            if packages::get(c, &start.name, &start.version)?.is_none() {
                return Ok(None);
            }
            let now = now_ms();
            let prior = package_rollouts::latest(c, &start.name)?;
            let (row, audit) = plan_start(&start, prior.as_ref(), now);
            staged::supersede(c, PACKAGE_ROLLOUTS, &start.name, now)?;
            let id = package_rollouts::insert(c, &row, &start.agents)?;
            insert_audit(c, &audit)?;
            Ok(Some(PackageRolloutRow { id, ..row }))
        })
        .await
    }

    async fn transition_package_rollout(
        &self,
        change: RolloutTransition,
    ) -> Result<bool, WriteError> {
        self.write("package_rollout_transition", move |c| {
            staged::transition(c, PACKAGE_ROLLOUTS, &change)
        })
        .await
    }
}
