//! The SQL of users, API tokens and the audit log.

use crate::store::users::{AuditEntry, AuditQuery, AuditRow, TokenRow, UserRow};
use anyhow::Result;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

/// Appends one audit row.
pub async fn insert_audit_row(
    c: &impl GenericClient,
    actor: &str,
    action: &str,
    target: Option<&str>,
    remote_addr: Option<&str>,
    outcome: &str,
    details: &str,
) -> Result<()> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO audit_log (at, actor, action, target, remote_addr, outcome, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &crate::store::now_ms(),
            &actor,
            &action,
            &target,
            &remote_addr,
            &outcome,
            &details,
        ],
    )
    .await?;
    Ok(())
}

pub async fn insert_audit(c: &impl GenericClient, entry: &AuditEntry) -> Result<()> {
    insert_audit_row(
        c,
        &entry.actor,
        &entry.action,
        entry.target.as_deref(),
        entry.remote_addr.as_deref(),
        &entry.outcome,
        &entry.details.to_string(),
    )
    .await
}

pub async fn prune_audit(c: &impl GenericClient, before: i64) -> Result<usize> {
    Ok(c.execute("DELETE FROM audit_log WHERE at < $1", &[&before])
        .await? as usize)
}

/// Drops revocations of login tokens and revoked API tokens that have expired anyway.
pub async fn prune_revoked(c: &impl GenericClient) -> Result<usize> {
    let now = crate::store::now_ms();
    let jwts = c
        .execute(
            "DELETE FROM revoked_jwts WHERE expires_at < $1",
            &[&(now / 1000)],
        )
        .await?;
    let tokens = c
        .execute(
            "DELETE FROM api_tokens WHERE revoked AND expires_at IS NOT NULL AND expires_at < $1",
            &[&now],
        )
        .await?;
    Ok((jwts + tokens) as usize)
}

const USER_COLUMNS: &str = "username, password_hash, role, created_at, session_generation";

fn user_row(r: &Row) -> UserRow {
    UserRow {
        username: r.get(0),
        password_hash: r.get(1),
        role: r.get(2),
        created_at: r.get(3),
        session_generation: r.get(4),
    }
}

pub async fn get_user(c: &impl GenericClient, username: &str) -> Result<Option<UserRow>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&username])
        .await?
        .as_ref()
        .map(user_row))
}

/// Users by name after `after`; plus the total.
pub async fn list_users(
    c: &impl GenericClient,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<UserRow>, u64)> {
    let total: i64 = c.query_one("SELECT COUNT(*) FROM users", &[]).await?.get(0);
    let rows = c
        .query(
            &format!(
                "SELECT {USER_COLUMNS} FROM users WHERE username > $1 ORDER BY username LIMIT $2"
            ),
            &[&after.unwrap_or(""), &(limit as i64)],
        )
        .await?;
    Ok((rows.iter().map(user_row).collect(), total as u64))
}

pub async fn insert_user(c: &impl GenericClient, u: &UserRow) -> Result<()> {
    c.execute(
        &format!("INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"),
        &[
            &u.username,
            &u.password_hash,
            &u.role,
            &u.created_at,
            &u.session_generation,
        ],
    )
    .await?;
    Ok(())
}

/// Moves the user's session generation on: every login token issued before is refused.
pub async fn end_sessions(c: &impl GenericClient, username: &str) -> Result<()> {
    let current = c
        .query_opt(
            "SELECT session_generation FROM users WHERE username = $1 FOR UPDATE",
            &[&username],
        )
        .await?;
    if let Some(current) = current {
        let current: i64 = current.get(0);
        c.execute(
            "UPDATE users SET session_generation = $2 WHERE username = $1",
            &[&username, &crate::auth::next_generation(current)],
        )
        .await?;
    }
    Ok(())
}

pub async fn set_role(c: &impl GenericClient, username: &str, role: &str) -> Result<()> {
    c.execute(
        "UPDATE users SET role = $2 WHERE username = $1",
        &[&username, &role],
    )
    .await?;
    Ok(())
}

pub async fn set_password_hash(c: &impl GenericClient, username: &str, hash: &str) -> Result<()> {
    c.execute(
        "UPDATE users SET password_hash = $2 WHERE username = $1",
        &[&username, &hash],
    )
    .await?;
    Ok(())
}

pub async fn delete_user(c: &impl GenericClient, username: &str) -> Result<bool> {
    Ok(
        c.execute("DELETE FROM users WHERE username = $1", &[&username])
            .await?
            > 0,
    )
}

pub async fn count_admins(c: &impl GenericClient) -> Result<u64> {
    let n: i64 = c
        .query_one("SELECT COUNT(*) FROM users WHERE role = 'admin'", &[])
        .await?
        .get(0);
    Ok(n as u64)
}

const TOKEN_COLUMNS: &str = "id, name, token_hash, role, owner, created_at, expires_at, revoked";

fn token_row(r: &Row) -> TokenRow {
    TokenRow {
        id: r.get(0),
        name: r.get(1),
        token_hash: r.get(2),
        role: r.get(3),
        owner: r.get(4),
        created_at: r.get(5),
        expires_at: r.get(6),
        revoked: r.get(7),
    }
}

pub async fn insert_token(c: &impl GenericClient, t: &TokenRow) -> Result<()> {
    c.execute(
        &format!(
            "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        &[
            &t.id,
            &t.name,
            &t.token_hash,
            &t.role,
            &t.owner,
            &t.created_at,
            &t.expires_at,
            &t.revoked,
        ],
    )
    .await?;
    Ok(())
}

pub async fn get_token(c: &impl GenericClient, id: &str) -> Result<Option<TokenRow>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&id]).await?.as_ref().map(token_row))
}

/// Tokens by id after `after`, of one owner or of everybody; plus the total.
pub async fn list_tokens(
    c: &impl GenericClient,
    owner: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<TokenRow>, u64)> {
    let total: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM api_tokens WHERE $1::text IS NULL OR owner = $1",
            &[&owner],
        )
        .await?
        .get(0);
    let rows = c
        .query(
            &format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE ($1::text IS NULL OR owner = $1) AND id > $2
                 ORDER BY id LIMIT $3"
            ),
            &[&owner, &after.unwrap_or(""), &(limit as i64)],
        )
        .await?;
    Ok((rows.iter().map(token_row).collect(), total as u64))
}

pub async fn revoke_token(c: &impl GenericClient, id: &str) -> Result<bool> {
    Ok(c.execute(
        "UPDATE api_tokens SET revoked = TRUE WHERE id = $1 AND NOT revoked",
        &[&id],
    )
    .await?
        > 0)
}

/// Revokes every token of a user; returns how many.
pub async fn revoke_tokens_of(c: &impl GenericClient, owner: &str) -> Result<usize> {
    Ok(c.execute(
        "UPDATE api_tokens SET revoked = TRUE WHERE owner = $1 AND NOT revoked",
        &[&owner],
    )
    .await? as usize)
}

/// Sets a user's tokens whose role is not in `allowed` to `to`; returns how many changed.
pub async fn clamp_token_roles(
    c: &impl GenericClient,
    owner: &str,
    allowed: &[&str],
    to: &str,
) -> Result<usize> {
    Ok(c.execute(
        "UPDATE api_tokens SET role = $2 WHERE owner = $1 AND NOT (role = ANY($3))",
        &[&owner, &to, &allowed],
    )
    .await? as usize)
}

/// Writes an address's summary of failed logins: one row per address and
/// window (identified by its start time), updated as the counts grow.
pub async fn record_login_failures(
    c: &impl GenericClient,
    summary: &crate::auth::throttle::FailureSummary,
) -> Result<()> {
    let details = serde_json::json!({
        "failures": summary.failures,
        "throttled": summary.throttled,
        "usernames": summary.usernames,
        "last_at": crate::store::rfc3339(crate::store::now_ms()),
    })
    .to_string();
    let attempts = (summary.failures + summary.throttled) as i64;
    let updated = c
        .execute(
            "UPDATE audit_log SET details = $3
             WHERE at = $1 AND remote_addr = $2 AND actor = 'anonymous' AND action = 'auth.login'
               AND (details::jsonb ->> 'failures')::bigint + (details::jsonb ->> 'throttled')::bigint <= $4",
            &[&summary.window_at, &summary.remote_addr, &details, &attempts],
        )
        .await?;
    if updated == 0 {
        let exists: bool = c
            .query_one(
                "SELECT EXISTS(SELECT 1 FROM audit_log WHERE at = $1 AND remote_addr = $2
                   AND actor = 'anonymous' AND action = 'auth.login')",
                &[&summary.window_at, &summary.remote_addr],
            )
            .await?
            .get(0);
        if !exists {
            c.execute(
                "INSERT INTO audit_log (at, actor, action, target, remote_addr, outcome, details)
                 VALUES ($1, 'anonymous', 'auth.login', NULL, $2, 'denied', $3)",
                &[&summary.window_at, &summary.remote_addr, &details],
            )
            .await?;
        }
    }
    Ok(())
}

/// Audit entries newest first; plus the total matching the filters.
pub async fn list_audit(c: &impl GenericClient, q: &AuditQuery) -> Result<(Vec<AuditRow>, u64)> {
    let filter = "($1::bigint IS NULL OR at >= $1) AND ($2::text IS NULL OR actor = $2)
        AND ($3::text IS NULL OR action = $3 OR left(action, length($3) + 1) = $3 || '.')";
    let total: i64 = c
        .query_one(
            &format!("SELECT COUNT(*) FROM audit_log WHERE {filter}"),
            &[&q.since, &q.actor, &q.action],
        )
        .await?
        .get(0);
    let rows = c
        .query(
            &format!(
                "SELECT id, at, actor, action, target, remote_addr, outcome, details FROM audit_log
                 WHERE {filter} AND id < $4 ORDER BY id DESC LIMIT $5"
            ),
            &[
                &q.since,
                &q.actor,
                &q.action,
                &q.before_id.unwrap_or(i64::MAX),
                &(q.limit as i64),
            ],
        )
        .await?;
    let rows = rows
        .iter()
        .map(|r| AuditRow {
            id: r.get(0),
            at: r.get(1),
            actor: r.get(2),
            action: r.get(3),
            target: r.get(4),
            remote_addr: r.get(5),
            outcome: r.get(6),
            details: r.get(7),
        })
        .collect();
    Ok((rows, total as u64))
}

/// Records a revoked login token until it would have expired anyway.
pub async fn revoke_jwt(c: &impl GenericClient, jti: &str, expires_at: i64) -> Result<()> {
    c.execute(
        "INSERT INTO revoked_jwts (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        &[&jti, &expires_at],
    )
    .await?;
    Ok(())
}
