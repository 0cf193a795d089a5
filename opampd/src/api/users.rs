//! Operator accounts: `/auth/login`, `/auth/logout`, `/tokens`, `/users`, and
//! the `/audit` log.
//!
//! Secrets (passwords, tokens) are only ever compared as digests or password
//! hashes; they never reach the audit log, the log or an API reply, except a
//! new API token, shown once to its creator.

use super::configs::{page_limit, parse_body, MAX_PAGE};
use super::{Admin, ApiError, ApiResult, Viewer};
use crate::app::App;
use crate::auth::{self, AuthError, Credential, Role};
use crate::store::users::{
    AuditEntry as Audit, AuditQuery, TokenRevoke, TokenRow, UserChange, UserDelete, UserRow,
    UserUpdate,
};
use crate::store::{now_ms, parse_rfc3339, rfc3339};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use opamp_proto::api::{
    ApiToken, AuditEntry, LoginRequest, LoginResponse, Page, TokenInput, TokenLifetime, User,
    UserInput, UserPatch, DEFAULT_TOKEN_DAYS,
};
use serde::Deserialize;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 1024;
/// Longest username (also checked at login, before any other work).
const MAX_USERNAME: usize = 64;

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
    if req.username.len() > MAX_USERNAME || req.password.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "username or password too long: usernames have at most {MAX_USERNAME} characters, passwords {MAX_PASSWORD}"
        ))
        .into_response());
    }
    let logins = &app.auth.logins;
    if let Some(secs) = logins.check(&req.username, remote.ip()) {
        tracing::debug!(username = %printable(&req.username), remote_addr = %remote, "login refused: too many failed attempts");
        audit_failure(&app, &req.username, remote.ip(), true);
        return Err(retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many failed logins from this address; retry in {secs} s"),
            secs,
        ));
    }
    let user = app
        .store
        .user(&req.username)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    let hash = user
        .as_ref()
        .map_or_else(|| dummy_hash().to_string(), |u| u.password_hash.clone());
    let verified = app
        .auth
        .passwords
        .verify(req.password, hash)
        .await
        .map_err(|busy| {
            retry_later(StatusCode::SERVICE_UNAVAILABLE, "busy", busy.to_string(), 1)
        })?;
    let role = user.as_ref().and_then(|u| Role::parse(&u.role));
    let (Some(user), Some(role), true) = (user, role, verified) else {
        logins.failed(&req.username, remote.ip());
        tracing::warn!(username = %printable(&req.username), remote_addr = %remote, "login failed");
        audit_failure(&app, &req.username, remote.ip(), false);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid username or password",
        )
        .into_response());
    };
    logins.succeeded(&req.username, remote.ip());
    let (token, exp) = app
        .auth
        .issue_jwt(&user.username, role, user.session_generation);
    app.store
        .audit(Audit::ok(
            &user.username,
            "auth.login",
            None,
            Some(&remote.to_string()),
            json!({"role": role.as_str(), "expires_at": rfc3339(exp * 1000)}),
        ))
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    tracing::info!(username = %user.username, remote_addr = %remote, "login");
    Ok(Json(LoginResponse {
        token,
        expires_at: rfc3339(exp * 1000),
        role: role.as_str().into(),
    }))
}

fn retry_later(status: StatusCode, code: &'static str, message: String, secs: u64) -> Response {
    let mut r = ApiError::new(status, code, message).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Adds a failed or throttled login to its address's audit summary (one row
/// per address and window), written in the background when due.
fn audit_failure(app: &Arc<App>, username: &str, ip: IpAddr, throttled: bool) {
    let Some(summary) = app
        .auth
        .logins
        .audit(&printable(username), ip, throttled, now_ms())
    else {
        return;
    };
    let app = app.clone();
    tokio::spawn(async move {
        let _ = app.store.record_login_failures(summary).await;
    });
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
    let bearer = crate::auth::bearer_token(&headers);
    let addr = remote.to_string();
    // A logout without a valid credential changes nothing: not audited (a
    // flood of them must not fill the audit log), only logged at debug level.
    let p = app
        .auth
        .authenticate(&app.store, bearer)
        .await
        .map_err(|e| {
            tracing::debug!(remote_addr = %remote, error = %e, "logout without a valid credential");
            auth_error(&e)
        })?;
    match p.credential.clone() {
        Credential::Jwt { jti, exp } => {
            let audit = Audit::ok(
                &p.name,
                "auth.logout",
                None,
                Some(&addr),
                json!({"credential": "login token"}),
            );
            app.store.logout_jwt(&jti, exp, audit).await?;
        }
        Credential::ApiToken { id } => {
            let audit = Audit::ok(
                &p.name,
                "auth.logout",
                None,
                Some(&addr),
                json!({"credential": "api token", "token_id": id}),
            );
            app.store.logout_token(&id, audit).await?;
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
        .list_tokens(owner, q.cursor.clone(), limit + 1)
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
    let days = match input.expires_in_days {
        None => Some(DEFAULT_TOKEN_DAYS),
        Some(TokenLifetime::Never(_)) => None,
        Some(TokenLifetime::Days(d)) if (1..=3650).contains(&d) => Some(d),
        Some(TokenLifetime::Days(d)) => {
            return Err(ApiError::bad_request(format!(
                "expires_in_days must be between 1 and 3650, or \"never\", got {d}"
            )))
        }
    };
    let expires_at = days.map(|d| now_ms() + d as i64 * 86_400_000);
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
    let audit = Audit::ok(
        &who.name,
        "token.create",
        Some(&row.id),
        addr.as_deref(),
        json!({"name": row.name, "role": row.role, "owner": row.owner, "expires_at": row.expires_at.map(rfc3339)}),
    );
    app.store.create_token(row.clone(), audit).await?;
    tracing::info!(token_id = %row.id, owner = %row.owner, role = %row.role, "API token created");
    Ok((StatusCode::CREATED, Json(token_to_api(row, Some(secret)))))
}

/// Revokes one of the caller's tokens (an admin: anybody's).
pub async fn tokens_revoke(
    State(app): State<Arc<App>>,
    Viewer(who, addr): Viewer,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let found = app
        .store
        .revoke_token(TokenRevoke {
            id: id.clone(),
            actor: who.name.clone(),
            remote_addr: addr,
            any_owner: who.role == Role::Admin,
        })
        .await?;
    if !found {
        return Err(ApiError::not_found(format!("no token {id:?} of yours")));
    }
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
        && name.len() <= MAX_USERNAME
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

async fn hash(app: &App, password: String) -> ApiResult<String> {
    app.auth
        .passwords
        .hash(password)
        .await
        .map_err(|busy| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", busy.to_string()))?
        .map_err(ApiError::from)
}

pub async fn users_list(
    State(app): State<Arc<App>>,
    _: Admin,
    Query(q): Query<PageParams>,
) -> ApiResult<Json<Page<User>>> {
    let limit = page_limit(q.limit, 100, MAX_PAGE)?;
    let (mut rows, total) = app.store.list_users(q.cursor.clone(), limit + 1).await?;
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
        password_hash: hash(&app, input.password).await?,
        role: role.as_str().into(),
        created_at: now_ms(),
        session_generation: now_ms(),
    };
    let audit = Audit::ok(
        &who.name,
        "user.create",
        Some(&row.username),
        addr.as_deref(),
        json!({"role": row.role}),
    );
    if !app.store.create_user(row.clone(), audit).await? {
        return Err(ApiError::conflict(format!(
            "user {:?} exists; change it with PATCH /api/v1/users/{}",
            row.username, row.username
        )));
    }
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
            Some(hash(&app, p).await?)
        }
        None => None,
    };
    let role = role.map(|role| {
        let allowed: Vec<String> = ROLES
            .iter()
            .filter(|r| **r <= role)
            .map(|r| r.as_str().to_string())
            .collect();
        (role.as_str().to_string(), allowed)
    });
    let change = app
        .store
        .update_user(UserUpdate {
            username: name.clone(),
            role,
            password_hash,
            actor: who.name.clone(),
            remote_addr: addr,
        })
        .await?;
    let user = match change {
        UserChange::Missing => return Err(ApiError::not_found(format!("no user {name:?}"))),
        UserChange::LastAdmin => {
            return Err(ApiError::conflict(format!(
                "{name:?} is the last admin: make another user admin first"
            )))
        }
        UserChange::Done(user) => user,
    };
    app.auth.invalidate_tokens();
    tracing::info!(username = %name, by = %who.name, "user changed");
    Ok(Json(user_to_api(&user)))
}

pub async fn users_delete(
    State(app): State<Arc<App>>,
    Admin(who, addr): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let change = app
        .store
        .delete_user(UserDelete {
            username: name.clone(),
            actor: who.name.clone(),
            remote_addr: addr,
        })
        .await?;
    match change {
        UserChange::Missing => return Err(ApiError::not_found(format!("no user {name:?}"))),
        UserChange::LastAdmin => {
            return Err(ApiError::conflict(format!(
                "refusing to delete {name:?}, the last admin: make another user admin first"
            )))
        }
        UserChange::Done(_) => {}
    }
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
    let (mut rows, total) = app.store.list_audit(query).await?;
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
            details: crate::store::json::value(Some(&r.details)),
        })
        .collect();
    Ok(Json(Page {
        items,
        next_cursor,
        total,
    }))
}
