//! Operator authentication: HS256 JWTs from password login, and long-lived
//! API tokens for scripts. Both are revocable; only digests of tokens are
//! stored; every comparison of a secret is constant-time.
//!
//! A login token carries its user's session generation; changing the user's
//! password or role (or deleting the user) moves the generation on, which
//! ends every session issued before. `password` runs argon2 on its own
//! bounded threads; `throttle` slows down failing logins.

pub mod password;
pub mod throttle;

use crate::store::users::{AuditEntry, TokenGrant, TokenRow, UserRow};
use crate::store::{now_ms, Store};
use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

type HmacSha256 = Hmac<Sha256>;

/// Roles, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub credential: Credential,
}

#[derive(Debug, Clone)]
pub enum Credential {
    Jwt { jti: String, exp: i64 },
    ApiToken { id: String },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error(
        "missing bearer token: send 'Authorization: Bearer <token>' (see opampctl --token-file)"
    )]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    iat: i64,
    exp: i64,
    jti: String,
    /// The user's session generation at login.
    #[serde(default)]
    gen: i64,
}

struct CachedToken {
    principal: Principal,
    expires_at: Option<i64>,
}

pub struct Auth {
    key: Vec<u8>,
    ttl_ms: i64,
    tokens: DashMap<String, CachedToken>,
    /// Moves on with every invalidation, so a cache fill that read the
    /// database before a revocation never outlives it.
    token_epoch: AtomicU64,
    pub passwords: password::PasswordHashing,
    pub logins: throttle::LoginThrottle,
}

pub const MIN_SECRET_BYTES: usize = 32;
pub const TOKEN_PREFIX: &str = "opampd_";

/// Where the JWT key comes from, strongest source first.
pub fn load_jwt_key(config: &crate::config::Config, zero_config: bool) -> Result<Vec<u8>> {
    let from_file = |p: &Path| -> Result<Vec<u8>> {
        let raw = std::fs::read(p)
            .with_context(|| format!("cannot read JWT secret file {}", p.display()))?;
        Ok(trim(raw))
    };
    let key = if let Some(p) = &config.auth.jwt_secret_file {
        Some((
            from_file(p)?,
            format!("auth.jwt_secret_file {}", p.display()),
        ))
    } else if let Ok(v) = std::env::var("JWT_SECRET_KEY") {
        Some((v.into_bytes(), "JWT_SECRET_KEY".to_string()))
    } else if let Ok(p) = std::env::var("JWT_SECRET_KEY_FILE") {
        Some((
            from_file(Path::new(&p))?,
            format!("JWT_SECRET_KEY_FILE {p}"),
        ))
    } else {
        None
    };
    match key {
        Some((k, source)) => {
            if k.len() < MIN_SECRET_BYTES || k.iter().all(|b| *b == k[0]) {
                bail!(
                    "{source} is too weak: use at least {MIN_SECRET_BYTES} random bytes, e.g. `openssl rand -base64 48`"
                );
            }
            crate::config::refuse_published_secret(&source, &k)?;
            Ok(k)
        }
        None if zero_config || config.auth.generate_jwt_secret => {
            let path = config.data_dir.join("jwt.key");
            if path.exists() {
                let k = from_file(&path)?;
                if k.len() >= MIN_SECRET_BYTES {
                    return Ok(k);
                }
            }
            let mut raw = [0u8; 48];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            let k = B64.encode(raw).into_bytes();
            write_private(&path, &k)?;
            tracing::info!(path = %path.display(), "generated a JWT signing key");
            Ok(k)
        }
        None => bail!(
            "no JWT signing key: set JWT_SECRET_KEY (or JWT_SECRET_KEY_FILE, or auth.jwt_secret_file), \
             or set auth.generate_jwt_secret: true to keep a generated one in the data directory"
        ),
    }
}

/// `check-config`: the key source is usable (a generated key is not written).
pub fn load_jwt_key_check(config: &crate::config::Config, zero_config: bool) -> Result<()> {
    let configured = config.auth.jwt_secret_file.is_some()
        || std::env::var_os("JWT_SECRET_KEY").is_some()
        || std::env::var_os("JWT_SECRET_KEY_FILE").is_some();
    if configured || !(zero_config || config.auth.generate_jwt_secret) {
        load_jwt_key(config, zero_config)?;
    }
    Ok(())
}

fn trim(mut v: Vec<u8>) -> Vec<u8> {
    while v.last().is_some_and(|b| b.is_ascii_whitespace()) {
        v.pop();
    }
    v
}

/// Writes a file readable by its owner only, atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{TOKEN_PREFIX}{}", B64.encode(raw))
}

pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash password: {e}"))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).ok().is_some_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Auth {
    pub fn new(key: Vec<u8>, ttl_minutes: u64) -> Auth {
        Auth {
            key,
            ttl_ms: ttl_minutes as i64 * 60_000,
            tokens: DashMap::new(),
            token_epoch: AtomicU64::new(0),
            passwords: password::PasswordHashing::for_this_machine(),
            logins: throttle::LoginThrottle::default(),
        }
    }

    /// Creates the first admin (user, API token in `admin.token`) when there are no users.
    pub async fn bootstrap(&self, store: &Store, data_dir: &Path) -> Result<()> {
        let token_path = data_dir.join("admin.token");
        if store.list_users(None, 1).await?.1 > 0 {
            return Ok(());
        }
        let token = random_token();
        let mut pw = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut pw);
        let password = B64.encode(pw);
        let now = now_ms();
        let user = UserRow {
            username: "admin".into(),
            password_hash: hash_password(&password)?,
            role: "admin".into(),
            created_at: now,
            session_generation: now,
        };
        let api_token = TokenRow {
            id: uuid::Uuid::new_v4().to_string(),
            name: "bootstrap".into(),
            token_hash: token_digest(&token),
            role: "admin".into(),
            owner: "admin".into(),
            created_at: now,
            expires_at: None,
            revoked: false,
        };
        let audit = AuditEntry {
            actor: "system".into(),
            action: "user.create".into(),
            target: Some("admin".into()),
            remote_addr: None,
            outcome: "ok".into(),
            details: serde_json::json!({"role": "admin", "bootstrap": true}),
        };
        if !store.create_first_admin(user, api_token, audit).await? {
            return Ok(());
        }
        // The password first: admin.token appearing means both are there.
        write_private(
            &data_dir.join("admin.password"),
            format!("{password}\n").as_bytes(),
        )?;
        write_private(&token_path, format!("{token}\n").as_bytes())?;
        tracing::info!(token_file = %token_path.display(), "first start: created user 'admin'; its API token is in admin.token, its password in admin.password");
        Ok(())
    }

    /// A login token for `user` at its current session `generation`.
    pub fn issue_jwt(&self, user: &str, role: Role, generation: i64) -> (String, i64) {
        let now = now_ms() / 1000;
        let exp = now + self.ttl_ms / 1000;
        let claims = Claims {
            sub: user.into(),
            role,
            iat: now,
            exp,
            jti: uuid::Uuid::new_v4().to_string(),
            gen: generation,
        };
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = B64.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signing_input = format!("{header}.{payload}");
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(signing_input.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        (format!("{signing_input}.{sig}"), exp)
    }

    fn verify_jwt(&self, token: &str) -> Result<(Principal, i64), AuthError> {
        let mut parts = token.splitn(3, '.');
        let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Invalid);
        };
        let header: serde_json::Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Invalid)?;
        if header["alg"] != "HS256" {
            return Err(AuthError::Invalid);
        }
        let sig = B64.decode(s).map_err(|_| AuthError::Invalid)?;
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig).map_err(|_| AuthError::Invalid)?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Invalid)?;
        if claims.exp <= now_ms() / 1000 {
            return Err(AuthError::Expired);
        }
        Ok((
            Principal {
                name: claims.sub,
                role: claims.role,
                credential: Credential::Jwt {
                    jti: claims.jti,
                    exp: claims.exp,
                },
            },
            claims.gen,
        ))
    }

    /// Checks a bearer token (JWT or API token).
    pub async fn authenticate(
        &self,
        store: &Store,
        bearer: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let token = bearer
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        if token.starts_with(TOKEN_PREFIX) {
            return self.check_api_token(store, token).await;
        }
        let (p, generation) = self.verify_jwt(token)?;
        let Credential::Jwt { jti, .. } = &p.credential else {
            return Err(AuthError::Invalid);
        };
        // One read per request: the token is not revoked, its user still
        // exists, and the user's sessions have not been ended since.
        let row = store
            .session_check(&p.name, jti)
            .await
            .map_err(|_| AuthError::Invalid)?;
        match row {
            Some(check) if !check.jwt_revoked && check.session_generation == generation => {
                // The user may have been demoted since (which also ends sessions).
                let role = Role::parse(&check.role).ok_or(AuthError::Invalid)?;
                Ok(Principal {
                    role: role.min(p.role),
                    ..p
                })
            }
            _ => Err(AuthError::Revoked),
        }
    }

    async fn check_api_token(&self, store: &Store, token: &str) -> Result<Principal, AuthError> {
        let digest = token_digest(token);
        let now = now_ms();
        if let Some(c) = self.tokens.get(&digest) {
            return match c.expires_at {
                Some(exp) if exp <= now => Err(AuthError::Expired),
                _ => Ok(c.principal.clone()),
            };
        }
        let epoch = self.token_epoch.load(Ordering::SeqCst);
        // A token whose owner does not exist (deleted, or a restored
        // database without them) does not authenticate.
        let grant = store
            .token_grant(&digest)
            .await
            .map_err(|_| AuthError::Invalid)?;
        let Some(TokenGrant {
            id,
            owner,
            role,
            expires_at,
            revoked,
            owner_role,
        }) = grant
        else {
            return Err(AuthError::Invalid);
        };
        if revoked {
            return Err(AuthError::Revoked);
        }
        if expires_at.is_some_and(|e| e <= now) {
            return Err(AuthError::Expired);
        }
        let role = Role::parse(&role).ok_or(AuthError::Invalid)?;
        let owner_role = Role::parse(&owner_role).ok_or(AuthError::Invalid)?;
        let principal = Principal {
            name: owner,
            role: role.min(owner_role),
            credential: Credential::ApiToken { id },
        };
        self.tokens.insert(
            digest.clone(),
            CachedToken {
                principal: principal.clone(),
                expires_at,
            },
        );
        // An invalidation between the read and the insert: the row read may
        // predate a revocation, so the entry must not stay.
        if self.token_epoch.load(Ordering::SeqCst) != epoch {
            self.tokens.remove(&digest);
        }
        Ok(principal)
    }

    /// Forgets cached API tokens; call after the change (revocation, role
    /// change, deletion) is committed.
    pub fn invalidate_tokens(&self) {
        self.token_epoch.fetch_add(1, Ordering::SeqCst);
        self.tokens.clear();
    }
}

/// The next session generation of a user: ends every session issued before.
pub fn next_generation(current: i64) -> i64 {
    (current + 1).max(now_ms())
}

/// The credential in an `Authorization: Bearer …` header (either case of
/// the scheme), if the request carries one.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_roundtrip_and_tamper() {
        let a = Auth::new(vec![7; 40], 60);
        let (t, _) = a.issue_jwt("alice", Role::Operator, 5);
        let (p, generation) = a.verify_jwt(&t).unwrap();
        assert_eq!(generation, 5);
        assert_eq!((p.name.as_str(), p.role), ("alice", Role::Operator));
        let other = Auth::new(vec![8; 40], 60);
        assert_eq!(other.verify_jwt(&t).unwrap_err(), AuthError::Invalid);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged =
            B64.encode(br#"{"sub":"alice","role":"admin","iat":0,"exp":99999999999,"jti":"x"}"#);
        parts[1] = &forged;
        assert_eq!(
            a.verify_jwt(&parts.join(".")).unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn expired_jwt_is_refused() {
        let a = Auth::new(vec![7; 40], 0);
        let (t, _) = a.issue_jwt("alice", Role::Viewer, 0);
        assert_eq!(a.verify_jwt(&t).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn alg_none_is_refused() {
        let a = Auth::new(vec![7; 40], 60);
        let h = B64.encode(br#"{"alg":"none"}"#);
        let p = B64.encode(br#"{"sub":"x","role":"admin","iat":0,"exp":99999999999,"jti":"j"}"#);
        assert_eq!(
            a.verify_jwt(&format!("{h}.{p}.")).unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
    }
}
