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

/// What checking a login token needs of its user.
#[derive(Debug, Clone)]
pub struct SessionCheck {
    pub role: String,
    pub session_generation: i64,
    /// The token (by its id) was revoked at a logout.
    pub jwt_revoked: bool,
}

/// An API token as authentication sees it, with its owner's role.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub id: String,
    pub owner: String,
    pub role: String,
    pub expires_at: Option<i64>,
    pub revoked: bool,
    pub owner_role: String,
}

/// A change of a user's role and/or password; either ends their sessions.
#[derive(Debug, Clone)]
pub struct UserUpdate {
    pub username: String,
    /// The new role, and the roles up to it (the user's tokens with another
    /// role are lowered to it).
    pub role: Option<(String, Vec<String>)>,
    pub password_hash: Option<String>,
    pub actor: String,
    pub remote_addr: Option<String>,
}

/// A user to delete, with their tokens.
#[derive(Debug, Clone)]
pub struct UserDelete {
    pub username: String,
    pub actor: String,
    pub remote_addr: Option<String>,
}

/// What a user change or deletion did.
#[derive(Debug, Clone)]
pub enum UserChange {
    Missing,
    /// Refused: the user is the last admin.
    LastAdmin,
    /// The user after the change (before the deletion).
    Done(UserRow),
}

/// A token to revoke at an operator's request.
#[derive(Debug, Clone)]
pub struct TokenRevoke {
    pub id: String,
    pub actor: String,
    pub remote_addr: Option<String>,
    /// An admin may revoke anybody's token; others only their own.
    pub any_owner: bool,
}

impl UserUpdate {
    /// The audit entry of this update; `role` is the role change made
    /// (from, to), if any.
    pub fn audit(&self, role: Option<(&str, &str)>) -> AuditEntry {
        let mut details = serde_json::json!({"password_changed": self.password_hash.is_some()});
        if let Some((from, to)) = role {
            details["role"] = serde_json::json!({"from": from, "to": to});
        }
        AuditEntry::ok(
            &self.actor,
            "user.update",
            Some(&self.username),
            self.remote_addr.as_deref(),
            details,
        )
    }
}

impl UserDelete {
    /// The audit entry of this deletion: the user's role and how many of
    /// their tokens went with them.
    pub fn audit(&self, role: &str, tokens_revoked: usize) -> AuditEntry {
        AuditEntry::ok(
            &self.actor,
            "user.delete",
            Some(&self.username),
            self.remote_addr.as_deref(),
            serde_json::json!({"role": role, "tokens_revoked": tokens_revoked}),
        )
    }
}

impl TokenRevoke {
    /// The audit entry of revoking `token` (never its secret: it has none here).
    pub fn audit(&self, token: &TokenRow) -> AuditEntry {
        AuditEntry::ok(
            &self.actor,
            "token.revoke",
            Some(&self.id),
            self.remote_addr.as_deref(),
            serde_json::json!({"name": token.name, "owner": token.owner, "role": token.role}),
        )
    }
}
