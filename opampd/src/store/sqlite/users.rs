//! The SQL of operator accounts, API tokens and the audit log.

use crate::store::users::{AuditEntry, AuditQuery, AuditRow, TokenRow, UserRow};
use anyhow::Result;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

const USER_COLUMNS: &str = "username, password_hash, role, created_at, session_generation";

fn user_row(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        username: r.get(0)?,
        password_hash: r.get(1)?,
        role: r.get(2)?,
        created_at: r.get(3)?,
        session_generation: r.get(4)?,
    })
}

pub fn get_user(c: &Connection, username: &str) -> Result<Option<UserRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE username = ?1"
    ))?;
    Ok(stmt.query_row([username], user_row).optional()?)
}

/// Users by name after `after`; plus the total.
pub fn list_users(
    c: &Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<UserRow>, u64)> {
    let total: i64 = c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE username > ?1 ORDER BY username LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![after.unwrap_or(""), limit as i64], user_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((rows, total as u64))
}

pub fn insert_user(c: &Connection, u: &UserRow) -> Result<()> {
    c.execute(
        &format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
        params![
            u.username,
            u.password_hash,
            u.role,
            u.created_at,
            u.session_generation
        ],
    )?;
    Ok(())
}

/// Moves the user's session generation on: every login token issued before is refused.
pub fn end_sessions(c: &Connection, username: &str) -> Result<()> {
    let current: Option<i64> = c
        .query_row(
            "SELECT session_generation FROM users WHERE username = ?1",
            [username],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(current) = current {
        c.execute(
            "UPDATE users SET session_generation = ?2 WHERE username = ?1",
            params![username, crate::auth::next_generation(current)],
        )?;
    }
    Ok(())
}

pub fn set_role(c: &Connection, username: &str, role: &str) -> Result<()> {
    c.execute(
        "UPDATE users SET role = ?2 WHERE username = ?1",
        params![username, role],
    )?;
    Ok(())
}

pub fn set_password_hash(c: &Connection, username: &str, hash: &str) -> Result<()> {
    c.execute(
        "UPDATE users SET password_hash = ?2 WHERE username = ?1",
        params![username, hash],
    )?;
    Ok(())
}

pub fn delete_user(c: &Connection, username: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM users WHERE username = ?1", [username])? > 0)
}

pub fn count_admins(c: &Connection) -> Result<u64> {
    let n: i64 = c.query_row("SELECT COUNT(*) FROM users WHERE role = 'admin'", [], |r| {
        r.get(0)
    })?;
    Ok(n as u64)
}

const TOKEN_COLUMNS: &str = "id, name, token_hash, role, owner, created_at, expires_at, revoked";

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        name: r.get(1)?,
        token_hash: r.get(2)?,
        role: r.get(3)?,
        owner: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        revoked: r.get(7)?,
    })
}

pub fn insert_token(c: &Connection, t: &TokenRow) -> Result<()> {
    c.execute(
        &format!(
            "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![
            t.id,
            t.name,
            t.token_hash,
            t.role,
            t.owner,
            t.created_at,
            t.expires_at,
            t.revoked
        ],
    )?;
    Ok(())
}

pub fn get_token(c: &Connection, id: &str) -> Result<Option<TokenRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1"
    ))?;
    Ok(stmt.query_row([id], token_row).optional()?)
}

/// Tokens by id after `after`, of one owner or of everybody; plus the total.
pub fn list_tokens(
    c: &Connection,
    owner: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<TokenRow>, u64)> {
    let total: i64 = c.query_row(
        "SELECT COUNT(*) FROM api_tokens WHERE ?1 IS NULL OR owner = ?1",
        [owner],
        |r| r.get(0),
    )?;
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE (?1 IS NULL OR owner = ?1) AND id > ?2
         ORDER BY id LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(params![owner, after.unwrap_or(""), limit as i64], token_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((rows, total as u64))
}

pub fn revoke_token(c: &Connection, id: &str) -> Result<bool> {
    Ok(c.execute(
        "UPDATE api_tokens SET revoked = 1 WHERE id = ?1 AND revoked = 0",
        [id],
    )? > 0)
}

/// Revokes every token of a user; returns how many.
pub fn revoke_tokens_of(c: &Connection, owner: &str) -> Result<usize> {
    Ok(c.execute(
        "UPDATE api_tokens SET revoked = 1 WHERE owner = ?1 AND revoked = 0",
        [owner],
    )?)
}

/// Sets a user's tokens whose role is not in `allowed` (the roles up to the
/// user's new one) to `to`; returns how many changed.
pub fn clamp_token_roles(c: &Connection, owner: &str, allowed: &[&str], to: &str) -> Result<usize> {
    let placeholders: Vec<String> = (0..allowed.len()).map(|i| format!("?{}", i + 3)).collect();
    let mut p: Vec<&str> = vec![owner, to];
    p.extend_from_slice(allowed);
    Ok(c.execute(
        &format!(
            "UPDATE api_tokens SET role = ?2 WHERE owner = ?1 AND role NOT IN ({})",
            placeholders.join(", ")
        ),
        params_from_iter(p.iter()),
    )?)
}

/// Writes an address's summary of failed logins: one row per address and
/// window (identified by its start time), updated as the counts grow.
pub fn record_login_failures(
    c: &Connection,
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
    let updated = c.execute(
        "UPDATE audit_log SET details = ?3
         WHERE at = ?1 AND remote_addr = ?2 AND actor = 'anonymous' AND action = 'auth.login'
           AND json_extract(details, '$.failures') + json_extract(details, '$.throttled') <= ?4",
        params![summary.window_at, summary.remote_addr, details, attempts],
    )?;
    if updated == 0 {
        let exists: bool = c.query_row(
            "SELECT EXISTS(SELECT 1 FROM audit_log WHERE at = ?1 AND remote_addr = ?2
               AND actor = 'anonymous' AND action = 'auth.login')",
            params![summary.window_at, summary.remote_addr],
            |r| r.get(0),
        )?;
        if !exists {
            c.execute(
                "INSERT INTO audit_log (at, actor, action, target, remote_addr, outcome, details)
                 VALUES (?1, 'anonymous', 'auth.login', NULL, ?2, 'denied', ?3)",
                params![summary.window_at, summary.remote_addr, details],
            )?;
        }
    }
    Ok(())
}

/// Deletes audit entries older than `before` (ms); returns how many.
pub fn prune_audit(c: &Connection, before: i64) -> Result<usize> {
    Ok(c.execute("DELETE FROM audit_log WHERE at < ?1", [before])?)
}

/// Audit entries newest first; plus the total matching the filters.
pub fn list_audit(c: &Connection, q: &AuditQuery) -> Result<(Vec<AuditRow>, u64)> {
    let filter = "(?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR actor = ?2)
        AND (?3 IS NULL OR action = ?3 OR substr(action, 1, length(?3) + 1) = ?3 || '.')";
    let total: i64 = c
        .prepare_cached(&format!("SELECT COUNT(*) FROM audit_log WHERE {filter}"))?
        .query_row(params![q.since, q.actor, q.action], |r| r.get(0))?;
    let mut stmt = c.prepare_cached(&format!(
        "SELECT id, at, actor, action, target, remote_addr, outcome, details FROM audit_log
         WHERE {filter} AND id < ?4 ORDER BY id DESC LIMIT ?5"
    ))?;
    let rows = stmt
        .query_map(
            params![
                q.since,
                q.actor,
                q.action,
                q.before_id.unwrap_or(i64::MAX),
                q.limit as i64
            ],
            |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    remote_addr: r.get(5)?,
                    outcome: r.get(6)?,
                    details: r.get(7)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((rows, total as u64))
}

/// Appends one audit entry.
pub fn insert_audit(c: &Connection, entry: &AuditEntry) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO audit_log (at, actor, action, target, remote_addr, outcome, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        crate::store::now_ms(),
        entry.actor,
        entry.action,
        entry.target,
        entry.remote_addr,
        entry.outcome,
        entry.details.to_string()
    ])?;
    Ok(())
}

/// Drops revocations of JWTs and revoked API tokens that have expired anyway.
pub fn prune_revoked(c: &Connection) -> Result<usize> {
    let now = crate::store::now_ms();
    let jwts = c.execute(
        "DELETE FROM revoked_jwts WHERE expires_at < ?1",
        [now / 1000],
    )?;
    let tokens = c.execute(
        "DELETE FROM api_tokens WHERE revoked = 1 AND expires_at IS NOT NULL AND expires_at < ?1",
        [now],
    )?;
    Ok(jwts + tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut c).unwrap();
        c
    }

    #[test]
    fn audit_action_filter_matches_exact_and_dotted_prefix() {
        let c = db();
        for action in ["config.create", "config.delete", "configx", "rollout.start"] {
            insert_audit(
                &c,
                &AuditEntry::ok("a", action, None, None, serde_json::json!({})),
            )
            .unwrap();
        }
        let check = |action: &str, want: &[&str]| {
            let (rows, total) = list_audit(
                &c,
                &AuditQuery {
                    action: Some(action.into()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .unwrap();
            let got: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
            assert_eq!(got, want, "action filter {action:?}");
            assert_eq!(total as usize, want.len());
        };
        check("config", &["config.delete", "config.create"]);
        check("config.create", &["config.create"]);
        check("configx", &["configx"]);
    }

    #[test]
    fn clamping_lowers_only_stronger_tokens() {
        let c = db();
        for (id, role) in [("1", "admin"), ("2", "operator"), ("3", "viewer")] {
            insert_token(
                &c,
                &TokenRow {
                    id: id.into(),
                    name: id.into(),
                    token_hash: id.into(),
                    role: role.into(),
                    owner: "u".into(),
                    created_at: 0,
                    expires_at: None,
                    revoked: false,
                },
            )
            .unwrap();
        }
        assert_eq!(
            clamp_token_roles(&c, "u", &["viewer", "operator"], "operator").unwrap(),
            1
        );
        let roles: Vec<String> = list_tokens(&c, Some("u"), None, 10)
            .unwrap()
            .0
            .into_iter()
            .map(|t| t.role)
            .collect();
        assert_eq!(roles, ["operator", "operator", "viewer"]);
    }
}
