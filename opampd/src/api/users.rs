//! Operator accounts: `/auth/login`, `/auth/logout`, `/tokens`, `/users`, and
//! the `/audit` log.
//!
//! Secrets (passwords, tokens) are only ever compared as digests or password
//! hashes; they never reach the audit log, the log or an API reply, except a
//! new API token, shown once to its creator.

use super::configs::{page_limit, parse_body, MAX_PAGE};
use super::{Admin, ApiError, ApiResult, Viewer};
use crate::app::App;
use crate::auth::{self, insert_audit, AuthError, Credential, Role};
use crate::store::users::{self, AuditQuery, TokenRow, UserRow};
use crate::store::{now_ms, parse_rfc3339, rfc3339};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dashmap::DashMap;
use opamp_proto::api::{
    ApiToken, AuditEntry, LoginRequest, LoginResponse, Page, TokenInput, User, UserInput, UserPatch,
};
use serde::Deserialize;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Failed logins allowed per username and client address within [`LOGIN_WINDOW`].
pub const MAX_LOGIN_FAILURES: usize = 10;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(300);
const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 1024;

/// Recent failed logins per (username, client address). One opampd process
/// serves one user table, so a process-wide map is enough.
fn failures() -> &'static DashMap<(String, IpAddr), Vec<Instant>> {
    static MAP: OnceLock<DashMap<(String, IpAddr), Vec<Instant>>> = OnceLock::new();
    MAP.get_or_init(DashMap::new)
}

/// Seconds until another attempt is allowed, if the key is over its limit.
fn blocked_for(key: &(String, IpAddr)) -> Option<u64> {
    let mut entry = failures().get_mut(key)?;
    entry.retain(|t| t.elapsed() < LOGIN_WINDOW);
    if entry.len() < MAX_LOGIN_FAILURES {
        return None;
    }
    let oldest = entry.iter().min()?;
    Some((LOGIN_WINDOW.saturating_sub(oldest.elapsed())).as_secs() + 1)
}

fn record_failure(key: (String, IpAddr)) {
    let map = failures();
    if map.len() > 10_000 {
        map.retain(|_, v| v.iter().any(|t| t.elapsed() < LOGIN_WINDOW));
    }
    map.entry(key).or_default().push(Instant::now());
}

/// A password hash to verify against when the user does not exist, so both
/// failures take the same time.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| auth::hash_password("no such user, no such password").unwrap_or_default())
}

/// A name as it may appear in the audit log: bounded, printable.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

pub async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Json<LoginResponse>, Response> {
    let req: LoginRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body must be {{\"username\": …, \"password\": …}}: {e}"
        ))
        .into_response()
    })?;
    let key = (req.username.to_lowercase(), remote.ip());
    if let Some(secs) = blocked_for(&key) {
        tracing::warn!(username = %printable(&req.username), remote_addr = %remote, "login refused: too many failed attempts");
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many failed logins for this user from this address; retry in {secs} s"),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Err(r);
    }
    let name = req.username.clone();
    let user = app
        .store
        .read("user_get", move |c| users::get_user(c, &name))
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    let hash = user
        .as_ref()
        .map_or_else(|| dummy_hash().to_string(), |u| u.password_hash.clone());
    let password = req.password;
    let verified = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let addr = remote.to_string();
    let actor = printable(&req.username);
    let role = user.as_ref().and_then(|u| Role::parse(&u.role));
    let (Some(user), Some(role), true) = (user, role, verified) else {
        record_failure(key);
        let reason = if role.is_none() {
            "unknown user"
        } else {
            "wrong password"
        };
        tracing::warn!(username = %actor, remote_addr = %remote, "login failed");
        let a = actor.clone();
        app.store
            .write("audit", move |c| {
                insert_audit(
                    c,
                    &a,
                    "auth.login",
                    None,
                    Some(&addr),
                    "denied",
                    &json!({"reason": reason}),
                )
            })
            .await
            .map_err(|e| ApiError::from(e).into_response())?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid username or password",
        )
        .into_response());
    };
    failures().remove(&key);
    let (token, exp) = app.auth.issue_jwt(&user.username, role);
    let who = user.username.clone();
    app.store
        .write("audit", move |c| {
            insert_audit(
                c,
                &who,
                "auth.login",
                None,
                Some(&addr),
                "ok",
                &json!({"role": role.as_str(), "expires_at": rfc3339(exp * 1000)}),
            )
        })
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    tracing::info!(username = %user.username, remote_addr = %remote, "login");
    Ok(Json(LoginResponse {
        token,
        expires_at: rfc3339(exp * 1000),
        role: role.as_str().into(),
    }))
}

fn auth_error(e: &AuthError) -> ApiError {
    let code = match e {
        AuthError::Missing => "unauthenticated",
        AuthError::Expired => "token_expired",
        AuthError::Revoked => "token_revoked",
        AuthError::Invalid => "invalid_token",
    };
    ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
}

/// Revokes the credential the request presents: a login token (JWT) or an API token.
pub async fn logout(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let addr = remote.to_string();
    let p = match app.auth.authenticate(&app.store, bearer).await {
        Ok(p) => p,
        Err(e) => {
            let err = auth_error(&e);
            let code = err.code;
            app.store
                .write("audit", move |c| {
                    insert_audit(
                        c,
                        "anonymous",
                        "auth.logout",
                        None,
                        Some(&addr),
                        "denied",
                        &json!({"reason": code}),
                    )
                })
                .await?;
            return Err(err);
        }
    };
    let who = p.name.clone();
    match p.credential.clone() {
        Credential::Jwt { jti, exp } => {
            let id = jti.clone();
            app.store
                .write("logout", move |c| {
                    c.execute(
                        "INSERT OR IGNORE INTO revoked_jwts (jti, expires_at) VALUES (?1, ?2)",
                        rusqlite::params![id, exp],
                    )?;
                    insert_audit(
                        c,
                        &who,
                        "auth.logout",
                        None,
                        Some(&addr),
                        "ok",
                        &json!({"credential": "login token"}),
                    )
                })
                .await?;
            app.auth.revoke_jti(&jti, exp);
        }
        Credential::ApiToken { id } => {
            app.store
                .write("logout", move |c| {
                    users::revoke_token(c, &id)?;
                    insert_audit(
                        c,
                        &who,
                        "auth.logout",
                        None,
                        Some(&addr),
                        "ok",
                        &json!({"credential": "api token", "token_id": id}),
                    )
                })
                .await?;
            app.auth.invalidate_tokens();
        }
    }
    tracing::info!(username = %p.name, remote_addr = %remote, "logout");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct PageParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

fn token_to_api(t: TokenRow, secret: Option<String>) -> ApiToken {
    ApiToken {
        id: t.id,
        name: t.name,
        role: t.role,
        owner: t.owner,
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339),
        revoked: t.revoked,
        token: secret,
    }
}

/// Own tokens; an admin sees everybody's.
pub async fn tokens_list(
    State(app): State<Arc<App>>,
    Viewer(who, _): Viewer,
    Query(q): Query<PageParams>,
) -> ApiResult<Json<Page<ApiToken>>> {
    let limit = page_limit(q.limit, 100, MAX_PAGE)?;
    let owner = (who.role < Role::Admin).then(|| who.name.clone());
    let (mut rows, total) = app
        .store
        .read("tokens_list", move |c| {
            users::list_tokens(c, owner.as_deref(), q.cursor.as_deref(), limit + 1)
        })
        .await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|t| t.id.clone())
    } else {
        None
    };
    Ok(Json(Page {
        items: rows.into_iter().map(|t| token_to_api(t, None)).collect(),
        next_cursor,
        total,
    }))
}

/// A new API token for the caller, with at most the caller's role.
pub async fn tokens_create(
    State(app): State<Arc<App>>,
    Viewer(who, addr): Viewer,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ApiToken>)> {
    let input: TokenInput = parse_body(&body, "token request", false)?;
    let name = input.name.trim().to_string();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "token name must be 1-64 printable characters (say what the token is for)",
        ));
    }
    let role = match input.role.as_deref() {
        None => who.role,
        Some(r) => Role::parse(r).ok_or_else(|| {
            ApiError::bad_request(format!("role {r:?} is not one of admin, operator, viewer"))
        })?,
    };
    if role > who.role {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a token cannot have more rights than its creator: {} has the {} role",
                who.name,
                who.role.as_str()
            ),
        ));
    }
    let expires_at = match input.expires_in_days {
        None => None,
        Some(d) if (1..=3650).contains(&d) => Some(now_ms() + d as i64 * 86_400_000),
        Some(d) => {
            return Err(ApiError::bad_request(format!(
                "expires_in_days must be between 1 and 3650, got {d}"
            )))
        }
    };
    let secret = auth::random_token();
    let row = TokenRow {
        id: uuid::Uuid::now_v7().to_string(),
        name,
        token_hash: auth::token_digest(&secret),
        role: role.as_str().into(),
        owner: who.name.clone(),
        created_at: now_ms(),
        expires_at,
        revoked: false,
    };
    let stored = row.clone();
    let actor = who.name.clone();
    app.store
        .write("token_create", move |c| {
            users::insert_token(c, &stored)?;
            insert_audit(
                c,
                &actor,
                "token.create",
                Some(&stored.id),
                addr.as_deref(),
                "ok",
                &json!({"name": stored.name, "role": stored.role, "owner": stored.owner, "expires_at": stored.expires_at.map(rfc3339)}),
            )
        })
        .await?;
    tracing::info!(token_id = %row.id, owner = %row.owner, role = %row.role, "API token created");
    Ok((StatusCode::CREATED, Json(token_to_api(row, Some(secret)))))
}

/// Revokes one of the caller's tokens (an admin: anybody's).
pub async fn tokens_revoke(
    State(app): State<Arc<App>>,
    Viewer(who, addr): Viewer,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (key, actor, is_admin) = (id.clone(), who.name.clone(), who.role == Role::Admin);
    app.store
        .write("token_revoke", move |c| {
            let token = users::get_token(c, &key)?
                .filter(|t| is_admin || t.owner == actor)
                .ok_or_else(|| ApiError::not_found(format!("no token {key:?} of yours")))?;
            if users::revoke_token(c, &key)? {
                insert_audit(
                    c,
                    &actor,
                    "token.revoke",
                    Some(&key),
                    addr.as_deref(),
                    "ok",
                    &json!({"name": token.name, "owner": token.owner, "role": token.role}),
                )?;
            }
            Ok(())
        })
        .await?;
    app.auth.invalidate_tokens();
    tracing::info!(token_id = %id, by = %who.name, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}

fn user_to_api(u: &UserRow) -> User {
    User {
        username: u.username.clone(),
        role: u.role.clone(),
        created_at: rfc3339(u.created_at),
    }
}

fn check_username(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "username {:?} is not valid: use 1-64 of letters, digits, '.', '_', '-', '@'",
            printable(name)
        )))
    }
}

fn check_password(p: &str) -> ApiResult<()> {
    let n = p.chars().count();
    if n < MIN_PASSWORD || p.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long (a passphrase is fine)"
        )));
    }
    Ok(())
}

fn parse_role(r: &str) -> ApiResult<Role> {
    Role::parse(r).ok_or_else(|| {
        ApiError::bad_request(format!(
            "role {:?} is not one of admin, operator, viewer",
            printable(r)
        ))
    })
}

async fn hash(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

pub async fn users_list(
    State(app): State<Arc<App>>,
    _: Admin,
    Query(q): Query<PageParams>,
) -> ApiResult<Json<Page<User>>> {
    let limit = page_limit(q.limit, 100, MAX_PAGE)?;
    let (mut rows, total) = app
        .store
        .read("users_list", move |c| {
            users::list_users(c, q.cursor.as_deref(), limit + 1)
        })
        .await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|u| u.username.clone())
    } else {
        None
    };
    Ok(Json(Page {
        items: rows.iter().map(user_to_api).collect(),
        next_cursor,
        total,
    }))
}

pub async fn users_create(
    State(app): State<Arc<App>>,
    Admin(who, addr): Admin,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<User>)> {
    let input: UserInput = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body must be {{\"username\", \"password\", \"role\"}}: {e}"
        ))
    })?;
    check_username(&input.username)?;
    check_password(&input.password)?;
    let role = parse_role(&input.role)?;
    let row = UserRow {
        username: input.username.clone(),
        password_hash: hash(input.password).await?,
        role: role.as_str().into(),
        created_at: now_ms(),
    };
    let stored = row.clone();
    let actor = who.name.clone();
    app.store
        .write("user_create", move |c| {
            if users::get_user(c, &stored.username)?.is_some() {
                return Err(ApiError::conflict(format!(
                    "user {:?} exists; change it with PATCH /api/v1/users/{}",
                    stored.username, stored.username
                ))
                .into());
            }
            users::insert_user(c, &stored)?;
            insert_audit(
                c,
                &actor,
                "user.create",
                Some(&stored.username),
                addr.as_deref(),
                "ok",
                &json!({"role": stored.role}),
            )
        })
        .await?;
    tracing::info!(username = %row.username, role = %row.role, by = %who.name, "user created");
    Ok((StatusCode::CREATED, Json(user_to_api(&row))))
}

const ROLES: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

pub async fn users_update(
    State(app): State<Arc<App>>,
    Admin(who, addr): Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<User>> {
    let patch: UserPatch = parse_body(&body, "user change", false)?;
    if patch.role.is_none() && patch.password.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: give \"role\" and/or \"password\"",
        ));
    }
    let role = patch.role.as_deref().map(parse_role).transpose()?;
    let password_hash = match patch.password {
        Some(p) => {
            check_password(&p)?;
            Some(hash(p).await?)
        }
        None => None,
    };
    let (key, actor) = (name.clone(), who.name.clone());
    let user = app
        .store
        .write("user_update", move |c| {
            let Some(mut user) = users::get_user(c, &key)? else {
                return Err(ApiError::not_found(format!("no user {key:?}")).into());
            };
            let mut details = json!({"password_changed": password_hash.is_some()});
            if let Some(role) = role {
                let old = user.role.clone();
                if old == "admin" && role != Role::Admin && users::count_admins(c)? <= 1 {
                    return Err(ApiError::conflict(format!(
                        "{key:?} is the last admin: make another user admin first"
                    ))
                    .into());
                }
                users::set_role(c, &key, role.as_str())?;
                let allowed: Vec<&str> = ROLES
                    .iter()
                    .filter(|r| **r <= role)
                    .map(|r| r.as_str())
                    .collect();
                users::clamp_token_roles(c, &key, &allowed, role.as_str())?;
                user.role = role.as_str().into();
                details["role"] = json!({"from": old, "to": user.role});
            }
            if let Some(h) = &password_hash {
                users::set_password_hash(c, &key, h)?;
            }
            insert_audit(
                c,
                &actor,
                "user.update",
                Some(&key),
                addr.as_deref(),
                "ok",
                &details,
            )?;
            Ok(user)
        })
        .await?;
    app.auth.invalidate_tokens();
    tracing::info!(username = %name, by = %who.name, "user changed");
    Ok(Json(user_to_api(&user)))
}

pub async fn users_delete(
    State(app): State<Arc<App>>,
    Admin(who, addr): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let (key, actor) = (name.clone(), who.name.clone());
    app.store
        .write("user_delete", move |c| {
            let Some(user) = users::get_user(c, &key)? else {
                return Err(ApiError::not_found(format!("no user {key:?}")).into());
            };
            if user.role == "admin" && users::count_admins(c)? <= 1 {
                return Err(ApiError::conflict(format!(
                    "refusing to delete {key:?}, the last admin: make another user admin first"
                ))
                .into());
            }
            users::delete_user(c, &key)?;
            let revoked = users::revoke_tokens_of(c, &key)?;
            insert_audit(
                c,
                &actor,
                "user.delete",
                Some(&key),
                addr.as_deref(),
                "ok",
                &json!({"role": user.role, "tokens_revoked": revoked}),
            )
        })
        .await?;
    app.auth.invalidate_tokens();
    tracing::info!(username = %name, by = %who.name, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct AuditParams {
    since: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn audit(
    State(app): State<Arc<App>>,
    _: Admin,
    Query(q): Query<AuditParams>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    let limit = page_limit(q.limit, 100, MAX_PAGE)?;
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(parse_rfc3339(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "since {s:?} is not an RFC 3339 time like 2026-01-31T12:00:00Z"
            ))
        })?),
        None => None,
    };
    let before_id = match &q.cursor {
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            ApiError::bad_request(
                "cursor is not one this server returned: pass next_cursor unchanged",
            )
        })?),
        None => None,
    };
    let query = AuditQuery {
        since,
        actor: q.actor.filter(|s| !s.is_empty()),
        action: q.action.filter(|s| !s.is_empty()),
        before_id,
        limit: limit + 1,
    };
    let (mut rows, total) = app
        .store
        .read("audit_list", move |c| users::list_audit(c, &query))
        .await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|r| AuditEntry {
            id: r.id,
            at: rfc3339(r.at),
            actor: r.actor,
            action: r.action,
            target: r.target,
            remote_addr: r.remote_addr,
            outcome: r.outcome,
            details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    Ok(Json(Page {
        items,
        next_cursor,
        total,
    }))
}
