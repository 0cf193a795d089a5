//! The transactions of users, API tokens, sessions and login failures.

use crate::auth::throttle::FailureSummary;
use crate::store::postgres::{users, Postgres};
use crate::store::users::{
    AuditEntry, SessionCheck, TokenGrant, TokenRevoke, TokenRow, UserChange, UserDelete, UserRow,
    UserUpdate,
};
use anyhow::Result;
use deadpool_postgres::{GenericClient, Transaction};

/// Serialises changes to users (the last-admin rule, the first admin)
/// across connections and replicas until the transaction ends.
pub(super) async fn lock_users(tx: &Transaction<'_>) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('users'))", &[])
        .await?;
    Ok(())
}

pub(super) async fn create_user(pg: &Postgres, user: UserRow, audit: AuditEntry) -> Result<bool> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    lock_users(&tx).await?;
    if users::get_user(&tx, &user.username).await?.is_some() {
        return Ok(false);
    }
    users::insert_user(&tx, &user).await?;
    users::insert_audit(&tx, &audit).await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn update_user(pg: &Postgres, update: UserUpdate) -> Result<UserChange> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    lock_users(&tx).await?;
    let key = &update.username;
    let Some(mut user) = users::get_user(&tx, key).await? else {
        return Ok(UserChange::Missing);
    };
    let mut old = None;
    if let Some((role, allowed)) = &update.role {
        if user.role == "admin" && role != "admin" && users::count_admins(&tx).await? <= 1 {
            return Ok(UserChange::LastAdmin);
        }
        users::set_role(&tx, key, role).await?;
        let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
        users::clamp_token_roles(&tx, key, &allowed, role).await?;
        old = Some(std::mem::replace(&mut user.role, role.clone()));
    }
    if let Some(hash) = &update.password_hash {
        users::set_password_hash(&tx, key, hash).await?;
    }
    // A new password or role ends the user's existing sessions.
    users::end_sessions(&tx, key).await?;
    let change = old.as_deref().map(|from| (from, user.role.as_str()));
    users::insert_audit(&tx, &update.audit(change)).await?;
    tx.commit().await?;
    Ok(UserChange::Done(user))
}

pub(super) async fn delete_user(pg: &Postgres, delete: UserDelete) -> Result<UserChange> {
    let mut client = pg.client().await?;
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
    users::insert_audit(&tx, &delete.audit(&user.role, revoked)).await?;
    tx.commit().await?;
    Ok(UserChange::Done(user))
}

pub(super) async fn create_first_admin(
    pg: &Postgres,
    user: UserRow,
    token: TokenRow,
    audit: AuditEntry,
) -> Result<bool> {
    let mut client = pg.client().await?;
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
}

pub(super) async fn session_check(
    pg: &Postgres,
    username: &str,
    jti: &str,
) -> Result<Option<SessionCheck>> {
    let client = pg.client().await?;
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
}

pub(super) async fn token_grant(pg: &Postgres, digest: &str) -> Result<Option<TokenGrant>> {
    let client = pg.client().await?;
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
}

pub(super) async fn create_token(pg: &Postgres, token: TokenRow, audit: AuditEntry) -> Result<()> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    users::insert_token(&tx, &token).await?;
    users::insert_audit(&tx, &audit).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn revoke_token(pg: &Postgres, revoke: TokenRevoke) -> Result<bool> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let Some(token) = users::get_token(&tx, &revoke.id)
        .await?
        .filter(|t| revoke.any_owner || t.owner == revoke.actor)
    else {
        return Ok(false);
    };
    if users::revoke_token(&tx, &revoke.id).await? {
        users::insert_audit(&tx, &revoke.audit(&token)).await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn logout_jwt(
    pg: &Postgres,
    jti: &str,
    expires_at: i64,
    audit: AuditEntry,
) -> Result<()> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    users::revoke_jwt(&tx, jti, expires_at).await?;
    users::insert_audit(&tx, &audit).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn logout_token(pg: &Postgres, id: &str, audit: AuditEntry) -> Result<()> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    users::revoke_token(&tx, id).await?;
    users::insert_audit(&tx, &audit).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn record_login_failures(pg: &Postgres, summary: FailureSummary) -> Result<()> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('login_failures:' || $1))",
        &[&summary.remote_addr],
    )
    .await?;
    users::record_login_failures(&tx, &summary).await?;
    tx.commit().await?;
    Ok(())
}
