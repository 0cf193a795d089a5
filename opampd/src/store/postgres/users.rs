//! The SQL of users, API tokens and the audit log.

use crate::store::users::AuditEntry;
use anyhow::Result;
use deadpool_postgres::GenericClient;

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
