//! The operator plane: REST API under `/api/v1`, health probes, metrics.
//!
//! [`routes`] is the one route table: method, path, least role and handler of
//! every route but the OpAMP endpoint (whose path is configured). It builds the
//! router and [`least_roles`], which the access-control tests walk. A protected
//! handler names its role in its signature ([`Viewer`], [`Operator`], [`Admin`]
//! extractors right after `State`), and its table entry is written with the
//! same extractor type ([`guarded`]), so the table and the handler cannot
//! disagree: a mismatch does not compile.

pub mod admin;
pub mod agents;
pub mod configs;
pub mod health;
pub mod package_files;
pub mod package_rollouts;
pub mod packages;
pub mod users;

use crate::app::App;
use crate::auth::{AuthError, Principal, Role};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Json, Router};
use dashmap::DashMap;
use opamp_proto::api::{ErrorBody, ErrorDetail};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Served without a token, by design (health, metrics, login).
    Open,
    /// Needs a credential with at least this role.
    Least(Role),
}

/// One entry of the route table.
pub struct Route {
    /// `GET`, `POST`, `PATCH`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// Path template (`{uid}` for a parameter); also the label of request metrics.
    pub path: &'static str,
    pub access: Access,
    handler: MethodRouter<Arc<App>>,
}

impl Route {
    /// The least role, `None` for an open route.
    pub fn least_role(&self) -> Option<Role> {
        match self.access {
            Access::Open => None,
            Access::Least(role) => Some(role),
        }
    }

    /// Caps the request body of this route at `bytes` (instead of `http.max_api_body_bytes`).
    fn body_limit(mut self, bytes: usize) -> Route {
        self.handler = self
            .handler
            .layer(axum::extract::DefaultBodyLimit::max(bytes));
        self
    }
}

/// The route table: every route of the HTTP surface except the OpAMP
/// endpoint, whose path comes from the configuration.
pub fn routes() -> Vec<Route> {
    vec![
        guarded::<Viewer, _, _>("GET", "/api/v1/agents", agents::list),
        guarded::<Viewer, _, _>("GET", "/api/v1/agents/{uid}", agents::show),
        guarded::<Operator, _, _>("DELETE", "/api/v1/agents/{uid}", agents::remove),
        guarded::<Operator, _, _>("PATCH", "/api/v1/agents/{uid}/labels", agents::labels),
        guarded::<Operator, _, _>("POST", "/api/v1/agents/{uid}/restart", agents::restart),
        guarded::<Viewer, _, _>(
            "GET",
            "/api/v1/agents/{uid}/effective-config",
            agents::effective_config,
        ),
        guarded::<Viewer, _, _>("GET", "/api/v1/agents/{uid}/events", agents::events),
        guarded::<Viewer, _, _>("GET", "/api/v1/configurations", configs::list),
        guarded::<Operator, _, _>("POST", "/api/v1/configurations", configs::create),
        guarded::<Viewer, _, _>("GET", "/api/v1/configurations/{name}", configs::show),
        guarded::<Operator, _, _>("DELETE", "/api/v1/configurations/{name}", configs::remove),
        guarded::<Viewer, _, _>(
            "GET",
            "/api/v1/configurations/{name}/versions",
            configs::versions,
        ),
        guarded::<Viewer, _, _>(
            "GET",
            "/api/v1/configurations/{name}/versions/{n}",
            configs::version,
        ),
        guarded::<Viewer, _, _>("GET", "/api/v1/configurations/{name}/diff", configs::diff),
        guarded::<Operator, _, _>(
            "POST",
            "/api/v1/configurations/{name}/rollback",
            configs::rollback,
        ),
        guarded::<Viewer, _, _>(
            "GET",
            "/api/v1/configurations/{name}/rollout",
            configs::rollout_show,
        ),
        guarded::<Operator, _, _>(
            "POST",
            "/api/v1/configurations/{name}/rollout",
            configs::rollout_start,
        ),
        guarded::<Operator, _, _>(
            "POST",
            "/api/v1/configurations/{name}/rollout/pause",
            configs::rollout_pause,
        ),
        guarded::<Operator, _, _>(
            "POST",
            "/api/v1/configurations/{name}/rollout/resume",
            configs::rollout_resume,
        ),
        guarded::<Viewer, _, _>("GET", "/api/v1/packages", packages::list),
        guarded::<Admin, _, _>("POST", "/api/v1/packages", packages::create),
        guarded::<Viewer, _, _>("GET", "/api/v1/packages/{name}", packages::versions),
        guarded::<Viewer, _, _>("GET", "/api/v1/packages/{name}/{version}", packages::show),
        guarded::<Admin, _, _>(
            "DELETE",
            "/api/v1/packages/{name}/{version}",
            packages::remove,
        ),
        guarded::<Viewer, _, _>(
            "GET",
            "/api/v1/packages/{name}/rollout",
            package_rollouts::show,
        ),
        guarded::<Operator, _, _>(
            "POST",
            "/api/v1/packages/{name}/rollout",
            package_rollouts::start,
        ),
        guarded::<Operator, _, _>(
            "POST",
            "/api/v1/packages/{name}/rollout/pause",
            package_rollouts::pause,
        ),
        guarded::<Operator, _, _>(
            "POST",
            "/api/v1/packages/{name}/rollout/resume",
            package_rollouts::resume,
        ),
        guarded::<Admin, _, _>(
            "PUT",
            "/api/v1/packages/{name}/{version}/files/{os}/{arch}",
            package_files::upload,
        ),
        open("POST", "/api/v1/auth/login", users::login),
        // Checks the credential it revokes itself, to audit refused attempts:
        // any valid credential will do, so the least role is viewer.
        Route {
            access: Access::Least(Role::Viewer),
            ..open("POST", "/api/v1/auth/logout", users::logout)
        },
        guarded::<Viewer, _, _>("GET", "/api/v1/tokens", users::tokens_list),
        guarded::<Viewer, _, _>("POST", "/api/v1/tokens", users::tokens_create),
        guarded::<Viewer, _, _>("DELETE", "/api/v1/tokens/{id}", users::tokens_revoke),
        guarded::<Admin, _, _>("GET", "/api/v1/users", users::users_list),
        guarded::<Admin, _, _>("POST", "/api/v1/users", users::users_create),
        guarded::<Admin, _, _>("PATCH", "/api/v1/users/{name}", users::users_update),
        guarded::<Admin, _, _>("DELETE", "/api/v1/users/{name}", users::users_delete),
        guarded::<Admin, _, _>("GET", "/api/v1/audit", users::audit),
        guarded::<Admin, _, _>("GET", "/api/v1/admin/backup", admin::backup),
        guarded::<Admin, _, _>("POST", "/api/v1/admin/restore", admin::restore)
            .body_limit(admin::RESTORE_MAX_BYTES),
        guarded::<Admin, _, _>(
            "GET",
            "/api/v1/admin/packages/files",
            package_files::list_stored,
        ),
        guarded::<Admin, _, _>(
            "GET",
            "/api/v1/admin/packages/files/{sha256}",
            package_files::fetch_stored,
        ),
        guarded::<Admin, _, _>(
            "PUT",
            "/api/v1/admin/packages/files/{sha256}",
            package_files::put_stored,
        ),
        guarded::<Admin, _, _>("GET", "/api/v1/admin/logs", admin::logs),
        guarded::<Admin, _, _>("GET", "/api/v1/admin/db/stats", admin::db_stats),
        guarded::<Admin, _, _>("POST", "/api/v1/admin/db/optimize", admin::db_optimize),
        guarded::<Admin, _, _>("GET", "/api/v1/admin/memory", admin::memory),
        open("GET", "/health", health::health),
        open("GET", "/health/ready", health::ready),
        open("GET", "/health/live", health::live),
        open("GET", "/metrics", health::metrics),
    ]
}

/// Every protected route as (method, path template, least role), from [`routes`].
pub fn least_roles() -> Vec<(&'static str, &'static str, Role)> {
    routes()
        .iter()
        .filter_map(|r| r.least_role().map(|role| (r.method, r.path, role)))
        .collect()
}

/// A role extractor: what a handler takes to demand a role.
pub trait RoleGuard {
    const ROLE: Role;
}

/// The argument lists (as axum's [`Handler`] sees them) of handlers taking
/// `State` and then the role extractor `R`.
pub trait GuardedBy<R> {}

macro_rules! guarded_by {
    ($($rest:ident),*) => {
        impl<M, R, $($rest),*> GuardedBy<R> for (M, State<Arc<App>>, R, $($rest),*) {}
    };
}
guarded_by!();
guarded_by!(A);
guarded_by!(A, B);
guarded_by!(A, B, C);
guarded_by!(A, B, C, D);

/// A route whose handler takes the role extractor `R` right after `State`;
/// its least role is `R`'s, so the table and the handler agree by construction.
pub fn guarded<R, H, T>(method: &'static str, path: &'static str, handler: H) -> Route
where
    R: RoleGuard,
    H: Handler<T, Arc<App>>,
    T: GuardedBy<R> + 'static,
{
    Route {
        method,
        path,
        access: Access::Least(R::ROLE),
        handler: axum::routing::on(method_filter(method), handler),
    }
}

/// A route served without a token.
fn open<H, T>(method: &'static str, path: &'static str, handler: H) -> Route
where
    H: Handler<T, Arc<App>>,
    T: 'static,
{
    Route {
        method,
        path,
        access: Access::Open,
        handler: axum::routing::on(method_filter(method), handler),
    }
}

fn method_filter(method: &str) -> MethodFilter {
    match method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "PATCH" => MethodFilter::PATCH,
        "DELETE" => MethodFilter::DELETE,
        other => panic!("route table: unsupported method {other}"),
    }
}

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
            crate::store::WriteError::Overloaded => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the database writer is overloaded (database.max_queued_writes); retry shortly",
            ),
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
    let bearer = crate::auth::bearer_token(&parts.headers);
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
            match &p.credential {
                crate::auth::Credential::ApiToken { id } => format!(
                    "this needs the {} role; the API token {id} (of {}) grants only {}: use a token with the {} role",
                    need.as_str(),
                    p.name,
                    p.role.as_str(),
                    need.as_str()
                ),
                crate::auth::Credential::Jwt { .. } => format!(
                    "this needs the {} role; the session of {} grants only {}: ask an admin for the {} role",
                    need.as_str(),
                    p.name,
                    p.role.as_str(),
                    need.as_str()
                ),
            },
        ));
    }
    Ok(p)
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        pub struct $name(pub Principal, pub Option<String>);

        impl RoleGuard for $name {
            const ROLE: Role = $role;
        }

        impl FromRequestParts<Arc<App>> for $name {
            type Rejection = ApiError;
            async fn from_request_parts(
                parts: &mut Parts,
                app: &Arc<App>,
            ) -> Result<Self, Self::Rejection> {
                let p = authenticate(parts, app, <$name as RoleGuard>::ROLE).await?;
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

/// The whole HTTP surface of opampd: the route table plus the OpAMP endpoint.
pub fn router(app: Arc<App>) -> Router {
    let opamp_path = app.config.opamp.path.clone();
    let table = routes()
        .into_iter()
        .fold(Router::new(), |router, route| {
            router.route(route.path, route.handler)
        })
        .fallback(api_not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::server::body_deadline,
        ));
    Router::new()
        .merge(table)
        .route(&opamp_path, axum::routing::any(crate::opamp::endpoint))
        .route(
            crate::packages::hosted::DOWNLOAD_PATH,
            axum::routing::get(crate::opamp::download::serve),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            app.config.http.max_api_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// The router of the agent-only listener: the OpAMP endpoint and the
/// hosted package files.
pub fn agent_router(app: Arc<App>) -> Router {
    let opamp_path = app.config.opamp.path.clone();
    Router::new()
        .route(&opamp_path, axum::routing::any(crate::opamp::endpoint))
        .route(
            crate::packages::hosted::DOWNLOAD_PATH,
            axum::routing::get(crate::opamp::download::serve),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_table_lists_each_route_once_and_builds_a_router() {
        let table = routes();
        let pairs: BTreeSet<(&str, &str)> = table.iter().map(|r| (r.method, r.path)).collect();
        assert_eq!(
            pairs.len(),
            table.len(),
            "a (method, path) pair listed twice"
        );
        // Registering the same method on one path twice would panic here.
        let _ = table
            .into_iter()
            .fold(Router::<Arc<App>>::new(), |router, route| {
                router.route(route.path, route.handler)
            });
    }

    #[test]
    fn open_routes_are_the_deliberate_ones() {
        let open: BTreeSet<(&str, &str)> = routes()
            .iter()
            .filter(|r| r.access == Access::Open)
            .map(|r| (r.method, r.path))
            .collect();
        let expected: BTreeSet<(&str, &str)> = [
            ("POST", "/api/v1/auth/login"),
            ("GET", "/health"),
            ("GET", "/health/ready"),
            ("GET", "/health/live"),
            ("GET", "/metrics"),
        ]
        .into_iter()
        .collect();
        assert_eq!(open, expected);
        assert!(least_roles()
            .iter()
            .all(|(_, path, _)| path.starts_with("/api/v1/")));
    }
}
