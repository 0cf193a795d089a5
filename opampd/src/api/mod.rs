//! The operator plane: REST API under `/api/v1`, health probes, metrics.
//!
//! Every API handler names the role it needs in its signature ([`Viewer`],
//! [`Operator`], [`Admin`] extractors), so an unprotected handler does not
//! compile into a route by accident; [`ROUTES`] lists every route with its
//! role and the access-control tests walk it.

pub mod admin;
pub mod agents;
pub mod configs;
pub mod health;
pub mod users;

use crate::app::App;
use crate::auth::{AuthError, Principal, Role};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use dashmap::DashMap;
use opamp_proto::api::{ErrorBody, ErrorDetail};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Every API route: method, path template, least role. Health, metrics, the
/// OpAMP endpoint and `POST /api/v1/auth/login` are open by design and not listed.
pub const ROUTES: &[(&str, &str, Role)] = &[
    ("GET", "/api/v1/agents", Role::Viewer),
    ("GET", "/api/v1/agents/{uid}", Role::Viewer),
    ("DELETE", "/api/v1/agents/{uid}", Role::Operator),
    ("PATCH", "/api/v1/agents/{uid}/labels", Role::Operator),
    ("POST", "/api/v1/agents/{uid}/restart", Role::Operator),
    ("GET", "/api/v1/agents/{uid}/effective-config", Role::Viewer),
    ("GET", "/api/v1/agents/{uid}/events", Role::Viewer),
    ("GET", "/api/v1/configurations", Role::Viewer),
    ("POST", "/api/v1/configurations", Role::Operator),
    ("GET", "/api/v1/configurations/{name}", Role::Viewer),
    ("DELETE", "/api/v1/configurations/{name}", Role::Operator),
    (
        "GET",
        "/api/v1/configurations/{name}/versions",
        Role::Viewer,
    ),
    (
        "GET",
        "/api/v1/configurations/{name}/versions/{n}",
        Role::Viewer,
    ),
    ("GET", "/api/v1/configurations/{name}/diff", Role::Viewer),
    (
        "POST",
        "/api/v1/configurations/{name}/rollback",
        Role::Operator,
    ),
    ("GET", "/api/v1/configurations/{name}/rollout", Role::Viewer),
    (
        "POST",
        "/api/v1/configurations/{name}/rollout",
        Role::Operator,
    ),
    (
        "POST",
        "/api/v1/configurations/{name}/rollout/pause",
        Role::Operator,
    ),
    (
        "POST",
        "/api/v1/configurations/{name}/rollout/resume",
        Role::Operator,
    ),
    ("POST", "/api/v1/auth/logout", Role::Viewer),
    ("GET", "/api/v1/tokens", Role::Viewer),
    ("POST", "/api/v1/tokens", Role::Viewer),
    ("DELETE", "/api/v1/tokens/{id}", Role::Viewer),
    ("GET", "/api/v1/users", Role::Admin),
    ("POST", "/api/v1/users", Role::Admin),
    ("PATCH", "/api/v1/users/{name}", Role::Admin),
    ("DELETE", "/api/v1/users/{name}", Role::Admin),
    ("GET", "/api/v1/audit", Role::Admin),
    ("GET", "/api/v1/admin/backup", Role::Admin),
    ("POST", "/api/v1/admin/restore", Role::Admin),
    ("GET", "/api/v1/admin/logs", Role::Admin),
    ("GET", "/api/v1/admin/db/stats", Role::Admin),
    ("POST", "/api/v1/admin/db/optimize", Role::Admin),
    ("GET", "/api/v1/admin/memory", Role::Admin),
];

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// A failure inside the server; the details go to the log, not the client.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "API request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the opampd log",
        )
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(format!("{e:#}"))
    }
}

impl From<crate::store::WriteError> for ApiError {
    fn from(e: crate::store::WriteError) -> Self {
        match e {
            crate::store::WriteError::Job(inner) => match inner.downcast::<ApiError>() {
                Ok(api) => api,
                Err(other) => ApiError::internal(format!("{other:#}")),
            },
            crate::store::WriteError::Storage(msg) => {
                tracing::error!(error = %msg, "database write failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the database cannot be written (disk full or read-only?); see /health",
                )
            }
            crate::store::WriteError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "opampd is shutting down",
            ),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `?force=true` on deletions that are refused by default.
#[derive(serde::Deserialize)]
pub struct ForceParam {
    #[serde(default)]
    pub force: bool,
}

/// The caller's address, from the connection.
pub fn remote(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
}

async fn authenticate(parts: &Parts, app: &Arc<App>, need: Role) -> Result<Principal, ApiError> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let p = app
        .auth
        .authenticate(&app.store, bearer)
        .await
        .map_err(|e| {
            let code = match e {
                AuthError::Missing => "unauthenticated",
                AuthError::Expired => "token_expired",
                AuthError::Revoked => "token_revoked",
                AuthError::Invalid => "invalid_token",
            };
            ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
        })?;
    if p.role < need {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role; {} has {}",
                need.as_str(),
                p.name,
                p.role.as_str()
            ),
        ));
    }
    Ok(p)
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        pub struct $name(pub Principal, pub Option<String>);

        impl FromRequestParts<Arc<App>> for $name {
            type Rejection = ApiError;
            async fn from_request_parts(
                parts: &mut Parts,
                app: &Arc<App>,
            ) -> Result<Self, Self::Rejection> {
                let p = authenticate(parts, app, $role).await?;
                Ok($name(p, remote(parts)))
            }
        }
    };
}

role_extractor!(
    Viewer,
    Role::Viewer,
    "A caller with at least the viewer role."
);
role_extractor!(
    Operator,
    Role::Operator,
    "A caller with at least the operator role."
);
role_extractor!(Admin, Role::Admin, "A caller with the admin role.");

/// The whole HTTP surface of opampd.
pub fn router(app: Arc<App>) -> Router {
    let opamp_path = app.config.opamp.path.clone();
    let api = Router::new()
        .route("/api/v1/agents", get(agents::list))
        .route(
            "/api/v1/agents/{uid}",
            get(agents::show).delete(agents::remove),
        )
        .route("/api/v1/agents/{uid}/labels", patch(agents::labels))
        .route("/api/v1/agents/{uid}/restart", post(agents::restart))
        .route(
            "/api/v1/agents/{uid}/effective-config",
            get(agents::effective_config),
        )
        .route("/api/v1/agents/{uid}/events", get(agents::events))
        .route(
            "/api/v1/configurations",
            get(configs::list).post(configs::create),
        )
        .route(
            "/api/v1/configurations/{name}",
            get(configs::show).delete(configs::remove),
        )
        .route(
            "/api/v1/configurations/{name}/versions",
            get(configs::versions),
        )
        .route(
            "/api/v1/configurations/{name}/versions/{n}",
            get(configs::version),
        )
        .route("/api/v1/configurations/{name}/diff", get(configs::diff))
        .route(
            "/api/v1/configurations/{name}/rollback",
            post(configs::rollback),
        )
        .route(
            "/api/v1/configurations/{name}/rollout",
            get(configs::rollout_show).post(configs::rollout_start),
        )
        .route(
            "/api/v1/configurations/{name}/rollout/pause",
            post(configs::rollout_pause),
        )
        .route(
            "/api/v1/configurations/{name}/rollout/resume",
            post(configs::rollout_resume),
        )
        .route("/api/v1/auth/login", post(users::login))
        .route("/api/v1/auth/logout", post(users::logout))
        .route(
            "/api/v1/tokens",
            get(users::tokens_list).post(users::tokens_create),
        )
        .route(
            "/api/v1/tokens/{id}",
            axum::routing::delete(users::tokens_revoke),
        )
        .route(
            "/api/v1/users",
            get(users::users_list).post(users::users_create),
        )
        .route(
            "/api/v1/users/{name}",
            patch(users::users_update).delete(users::users_delete),
        )
        .route("/api/v1/audit", get(users::audit))
        .route("/api/v1/admin/backup", get(admin::backup))
        .route(
            "/api/v1/admin/restore",
            post(admin::restore).layer(axum::extract::DefaultBodyLimit::max(
                admin::RESTORE_MAX_BYTES,
            )),
        )
        .route("/api/v1/admin/logs", get(admin::logs))
        .route("/api/v1/admin/db/stats", get(admin::db_stats))
        .route("/api/v1/admin/db/optimize", post(admin::db_optimize))
        .route("/api/v1/admin/memory", get(admin::memory))
        .fallback(api_not_found);
    Router::new()
        .merge(api)
        .route("/health", get(health::health))
        .route("/health/ready", get(health::ready))
        .route("/health/live", get(health::live))
        .route("/metrics", get(health::metrics))
        .route(&opamp_path, axum::routing::any(crate::opamp::endpoint))
        .layer(axum::extract::DefaultBodyLimit::max(
            app.config.http.max_api_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// The router of the agent-only listener: just the OpAMP endpoint.
pub fn agent_router(app: Arc<App>) -> Router {
    let opamp_path = app.config.opamp.path.clone();
    Router::new()
        .route(&opamp_path, axum::routing::any(crate::opamp::endpoint))
        .layer(axum::middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

async fn api_not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no API route {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// Interns route templates so metric labels are `&'static str` (bounded by the number of routes).
fn intern(path: &str) -> &'static str {
    static TABLE: OnceLock<DashMap<String, &'static str>> = OnceLock::new();
    let table = TABLE.get_or_init(DashMap::new);
    if let Some(v) = table.get(path) {
        return *v;
    }
    *table
        .entry(path.to_string())
        .or_insert_with(|| Box::leak(path.to_string().into_boxed_str()))
}

fn method_name(m: &axum::http::Method) -> &'static str {
    match *m {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Request metrics by route template (never the raw path).
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_name(req.method());
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| intern(p.as_str()))
        .unwrap_or("unmatched");
    let req_bytes = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let resp = next.run(req).await;
    let resp_bytes = axum::body::HttpBody::size_hint(resp.body())
        .exact()
        .unwrap_or(0);
    app.metrics.http_request(
        method,
        path,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
        req_bytes,
        resp_bytes,
    );
    resp
}
