//! Operator accounts, API tokens (digests only) and audit records.
//! Backend-neutral.

#[derive(Debug, Clone)]
pub struct UserRow {
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub created_at: i64,
    /// Login tokens carry it; a different one is refused (see [`end_sessions`]).
    pub session_generation: i64,
}

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub role: String,
    pub owner: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub remote_addr: Option<String>,
    pub outcome: String,
    pub details: String,
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Entries at or after this time (ms).
    pub since: Option<i64>,
    pub actor: Option<String>,
    /// An action (`config.create`) or a prefix of dotted actions (`config`).
    pub action: Option<String>,
    /// Entries with a smaller id (the cursor).
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// One audit entry to append. `details` must never hold a secret.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub remote_addr: Option<String>,
    pub outcome: String,
    pub details: serde_json::Value,
}

impl AuditEntry {
    /// A successful action of `actor` from `remote_addr`.
    pub fn ok(
        actor: &str,
        action: &str,
        target: Option<&str>,
        remote_addr: Option<&str>,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.map(str::to_string),
            remote_addr: remote_addr.map(str::to_string),
            outcome: "ok".to_string(),
            details,
        }
    }
}
