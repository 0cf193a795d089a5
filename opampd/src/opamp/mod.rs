//! The OpAMP endpoint: one path, two transports.
//!
//! A request with `Content-Type: application/x-protobuf` is a plain-HTTP
//! exchange ([`http`]); an upgrade request starts a WebSocket ([`ws`]).
//! Agent authentication and the max-agents limit are checked before either,
//! so a refused agent gets 401 / 503 before any upgrade. Both transports feed
//! [`process`], which applies [`session`] rules and persists through the
//! store's batching writer.

pub mod connection;
pub mod download;
pub mod http;
pub mod packages;
pub mod reply;
pub mod session;
pub mod ws;

use crate::app::App;
use crate::store::agents::{AgentEvent, RecordWrite, SessionRecord, SessionWrite};
use crate::store::users::AuditEntry;
use crate::store::{now_ms, AgentPatch};
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use opamp_proto::caps::FLAG_REQUEST_INSTANCE_UID;
use opamp_proto::pb;
use reply::{Answer, Command, Refusal, Reply};
use session::{Ctx, Outcome, Session, Transport};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub const PROTOBUF: &str = "application/x-protobuf";

/// The `/v1/opamp` handler.
pub async fn endpoint(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    if let Some(refused) = refuse_agent(&app, req.headers(), remote) {
        return refused;
    }
    if app.draining.load(Ordering::Relaxed) {
        return retry_later(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "opampd is shutting down; reconnect shortly\n",
        );
    }
    let is_protobuf = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(PROTOBUF));
    if is_protobuf {
        if *req.method() != axum::http::Method::POST {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "plain-HTTP OpAMP uses POST\n",
            );
        }
        let certificate = client_certificate(&req);
        return http::exchange(app, remote, certificate, req).await;
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        let msg = if *req.method() == axum::http::Method::POST {
            "unsupported Content-Type: OpAMP over plain HTTP needs 'Content-Type: application/x-protobuf'\n"
        } else {
            "this is the OpAMP endpoint: open a WebSocket, or POST a protobuf AgentToServer with 'Content-Type: application/x-protobuf'\n"
        };
        let status = if *req.method() == axum::http::Method::POST {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        } else {
            StatusCode::BAD_REQUEST
        };
        return plain(status, msg);
    }
    if at_capacity(&app) {
        tracing::warn!(remote_addr = %remote, max_agents = app.config.opamp.max_agents, "WebSocket refused: max agents reached");
        return retry_later(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "opampd is at its configured maximum of agents; retry later\n",
        );
    }
    let certificate = client_certificate(&req);
    match axum::extract::ws::WebSocketUpgrade::from_request(req, &app).await {
        Ok(upgrade) => ws::upgrade(app, remote, certificate, upgrade),
        Err(rejection) => rejection.into_response(),
    }
}

/// The answer to a request that does not come from an agent: a web page's
/// (an `Origin` not allowed) or one without a configured agent secret.
/// The OpAMP endpoint and the package downloads ask the same.
pub fn refuse_agent(app: &App, headers: &HeaderMap, remote: SocketAddr) -> Option<Response> {
    if let Some(origin) = foreign_origin(app, headers) {
        tracing::warn!(remote_addr = %remote, origin = %origin, "agent request refused: browser Origin not in opamp.allowed_origins");
        return Some(plain(
            StatusCode::FORBIDDEN,
            "requests from web pages are refused: agents send no Origin header (allow an origin with opamp.allowed_origins)\n",
        ));
    }
    if !agent_authorized(app, headers) {
        tracing::warn!(remote_addr = %remote, "agent refused: missing or wrong agent secret");
        let mut r = plain(StatusCode::UNAUTHORIZED, "agent authentication failed: send a configured agent secret as 'Authorization: Bearer <secret>'\n");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"opamp\""),
        );
        return Some(r);
    }
    None
}

/// The fingerprint of the client certificate the request's connection presented.
fn client_certificate(req: &Request) -> Option<Arc<str>> {
    req.extensions()
        .get::<crate::server::ClientCertificate>()
        .map(|c| c.0.clone())
}

pub fn plain(status: StatusCode, msg: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

fn retry_later(app: &App, status: StatusCode, msg: &'static str) -> Response {
    let mut r = plain(status, msg);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(app.config.opamp.retry_after_seconds),
    );
    r
}

pub(crate) fn at_capacity(app: &App) -> bool {
    let max = app.config.opamp.max_agents;
    max > 0 && app.fleet.live() >= max
}

/// The `Origin` of a request sent by a web page, unless `opamp.allowed_origins`
/// lists it. Agents send no `Origin`; a browser always does on a WebSocket
/// upgrade, so a page cannot pose as an agent and read rolled-out configurations.
fn foreign_origin(app: &App, headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?;
    let text = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    let allowed = app
        .config
        .opamp
        .allowed_origins
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(text.trim()));
    (!allowed).then_some(text)
}

/// Digest of a secret, so comparisons take the same time whatever the lengths.
pub fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn agent_authorized(app: &App, headers: &HeaderMap) -> bool {
    let secrets = app.agent_secrets.read().unwrap_or_else(|e| e.into_inner());
    if secrets.is_empty() {
        return true;
    }
    let presented = crate::auth::bearer_token(headers)
        .or_else(|| headers.get("secret-key").and_then(|v| v.to_str().ok()));
    let Some(presented) = presented else {
        return false;
    };
    let digest = secret_digest(presented.trim());
    // Check every secret, without stopping early, in constant time each.
    let mut ok = subtle::Choice::from(0);
    for s in secrets.iter() {
        ok |= subtle::ConstantTimeEq::ct_eq(&digest[..], &s[..]);
    }
    bool::from(ok)
}

/// Where a message came from.
pub struct Origin {
    pub transport: Transport,
    /// WebSocket connection id; 0 for plain HTTP.
    pub conn_id: u64,
    pub remote: SocketAddr,
    /// SHA-256 fingerprint of the connection's client certificate, if any.
    pub certificate: Option<Arc<str>>,
}

/// Why [`process`] applied nothing of a message (no session was created).
#[derive(Debug)]
pub enum Rejected {
    /// The message is wrong: this BAD_REQUEST reply says why.
    BadRequest(Box<Reply>),
    /// A new agent past `opamp.max_agents`: try again later.
    Full { instance_uid: Vec<u8> },
    /// The uid is held by a live WebSocket of another connection.
    Held { instance_uid: Vec<u8> },
    /// The database writer's queue stayed full: try again later.
    Busy { instance_uid: Vec<u8> },
    /// The uid is bound to another client certificate than the connection's.
    Foreign { instance_uid: Vec<u8> },
}

impl Rejected {
    pub const FULL: &'static str = "opampd is at its configured maximum of agents; retry later";
    pub const BUSY: &'static str = "opampd is overloaded (database writer queue full); retry later";
    pub const HELD: &'static str =
        "this instance uid is in use by a live WebSocket connection of another client";
    pub const FOREIGN: &'static str =
        "this instance uid is bound to another client certificate: connect with the certificate it registered with";
}

/// Applies one decoded AgentToServer. On success returns the outcome and the
/// uid the agent now has; the outcome's reply is an UNAVAILABLE error when a
/// remote-config status could not be committed (it is not acknowledged).
pub async fn process(
    app: &Arc<App>,
    msg: &pb::AgentToServer,
    origin: &Origin,
) -> Result<(Outcome, [u8; 16]), Rejected> {
    let Ok(uid) = <[u8; 16]>::try_from(msg.instance_uid.as_slice()) else {
        return Err(Rejected::BadRequest(Box::new(Reply::bad_request(
            msg.instance_uid.clone(),
            format!(
                "instance_uid must be 16 bytes, got {}",
                msg.instance_uid.len()
            ),
        ))));
    };
    app.metrics.opamp_messages
        [crate::metrics::transport_index(origin.transport == Transport::WebSocket)]
    .fetch_add(1, Ordering::Relaxed);
    let now = now_ms();

    // An agent registered with a client certificate speaks only through it.
    let presented = origin.certificate.as_deref();
    if app.fleet.with(&uid, |s| s.admits(presented)) == Some(false) {
        return Err(foreign(app, &uid, msg, origin));
    }

    // Duplicate detection: a second live agent is using this uid.
    if let Some(dup) = app.fleet.with(&uid, |s| is_duplicate(app, s, msg, origin)) {
        if dup {
            return Ok((duplicate_reply(app, uid, msg, origin), uid));
        }
    }

    // A plain-HTTP request cannot speak for an agent that a live WebSocket carries.
    if origin.transport == Transport::Http
        && app
            .fleet
            .with(&uid, |s| {
                !s.is_disconnected()
                    && s.transport() == Transport::WebSocket
                    && app.fleet.conn_open(s.conn_id())
            })
            .unwrap_or(false)
    {
        tracing::warn!(uid = %opamp_proto::uid_string(&uid), remote_addr = %origin.remote,
            "plain-HTTP request refused: a live WebSocket carries this agent");
        return Err(Rejected::Held {
            instance_uid: msg.instance_uid.clone(),
        });
    }

    // A message that changes stored state waits for room in the writer's
    // queue: overload slows agents down (and past a second refuses them, to
    // retry) instead of growing the queue.
    let writes = changes_stored_state(app, &uid, msg);
    // Held until the message is handled (its changes queued).
    let room = if writes {
        app.store.reserve(OPS_PER_MESSAGE, ROOM_WAIT).await
    } else {
        None
    };
    if writes && room.is_none() {
        tracing::warn!(uid = %opamp_proto::uid_string(&uid), remote_addr = %origin.remote,
            queued = app.store.queued(), "agent message refused: the database writer's queue is full");
        return Err(Rejected::Busy {
            instance_uid: msg.instance_uid.clone(),
        });
    }

    // Which session the message applies to: a new uid if the agent asked for one.
    let assigned =
        (msg.flags & FLAG_REQUEST_INSTANCE_UID != 0).then(|| *uuid::Uuid::now_v7().as_bytes());
    let key = assigned.unwrap_or(uid);
    // An agent of this connection moving to a new uid replaces its session.
    let replacing = assigned.is_some()
        && app
            .fleet
            .with(&uid, |s| s.conn_id() == origin.conn_id)
            .unwrap_or(false);
    // Plain HTTP on several replicas: the agent's last poll may have been
    // served by another replica; its shared record says where it stands.
    let sharing = match app.cluster.shares_sessions() {
        Some(replica) if origin.transport == Transport::Http => Some(replica),
        _ => None,
    };
    let record = match sharing {
        Some(_) if assigned.is_none() => match shared_record(app, &uid).await {
            Ok(record) => record,
            Err(reply) => return Ok((Outcome::reply_only(reply), uid)),
        },
        _ => None,
    };
    if sharing.is_some() && assigned.is_none() {
        catch_up(app, &uid, record.as_ref());
    }
    if !app.fleet.contains(&key) && !replacing && at_capacity(app) {
        tracing::warn!(remote_addr = %origin.remote, max_agents = app.config.opamp.max_agents,
            transport = origin.transport.as_str(), "agent refused: max agents reached");
        return Err(Rejected::Full {
            instance_uid: msg.instance_uid.clone(),
        });
    }
    if !app.fleet.contains(&key) {
        let loaded = if assigned.is_some() {
            None
        } else {
            // What its last session queued (its first report, its offer) is
            // committed before the agent's row is read back.
            if app.store.queued() > 0 {
                app.store.flush().await;
            }
            app.store
                .agent(&opamp_proto::uid_string(&uid))
                .await
                .ok()
                .flatten()
        };
        if let Some(row) = &loaded {
            if !session::admits(row.cert_fingerprint.as_deref(), presented) {
                return Err(foreign(app, &uid, msg, origin));
            }
        }
        let mut session = match &loaded {
            Some(row) => {
                let mut session = Session::from_row(key, row, origin.transport);
                session.set_components(app.components.get_hex(row.components_hash.as_deref()));
                session
            }
            None => Session::new(key, origin.transport),
        };
        // A plain-HTTP agent polling another replica too: this poll continues
        // the session its record holds, it is no new connection.
        let continuing = match (&loaded, &record) {
            (Some(_), Some(record)) => {
                session.take_record(record);
                !record.disconnected
                    && now - record.updated_at
                        <= app.config.opamp.disconnect_after_seconds as i64 * 1000
            }
            (None, Some(record)) => {
                session.follow_record((record.version, record.row_changes));
                false
            }
            _ => false,
        };
        if !continuing {
            // Becomes connected below, with the connect event.
            session = session.arriving(origin.conn_id);
        }
        app.fleet.insert_if_absent(session);
        app.cluster.holds(&key);
    }
    let targets = &app.targets;
    let connection = app.connection_settings();
    let result = app.fleet.with(&key, |s| {
        let connecting = s.connect(origin.transport, origin.conn_id);
        if connecting {
            s.bind_certificate(origin.certificate.as_ref());
        }
        let restart_pending = s.restart_pending();
        let out = session::handle(
            s,
            msg,
            &Ctx {
                targets,
                connection: &connection,
                packages: &app.package_targets,
                now_ms: now,
                remote_addr: Some(origin.remote),
                new_uid: assigned,
                max_send_bytes: app.config.opamp.max_send_bytes,
                components: &app.components,
            },
        );
        let write = sharing.map(|replica| SessionWrite {
            expected: s.record_position().0.max(0),
            record: s.record(replica, now),
            row_changed: false,
            restart_sent: restart_pending && !s.restart_pending(),
        });
        (out, connecting, write)
    });
    let Some((mut out, connecting, mut write)) = result else {
        // Removed concurrently (deleted through the API): answer, keep nothing.
        return Ok((
            Outcome::reply_only(Reply::ack(msg.instance_uid.clone())),
            key,
        ));
    };
    let mut patch = out.patch.take();
    if connecting {
        let p = patch.get_or_insert_with(|| {
            let mut p = AgentPatch::new(&opamp_proto::uid_string(&key));
            p.sequence_num = Some(msg.sequence_num);
            p.last_seen = Some(now);
            p
        });
        p.status = Some(if out.disconnect {
            "disconnected"
        } else {
            "connected"
        });
        p.transport = Some(origin.transport.as_str());
        p.remote_addr = Some(origin.remote.to_string());
        // Stored once: the store keeps the first fingerprint of an agent.
        p.cert_fingerprint = origin.certificate.as_deref().map(String::from);
    }
    if let Some(p) = patch.as_mut() {
        for event in over_storage_limit(app, p, origin, now) {
            app.store.queue_event(event);
        }
    }
    if let Some(write) = write.as_mut() {
        write.row_changed = patch.is_some();
    }
    if let Some(patch) = patch {
        app.store.queue_agent(patch);
    }
    if let Some(reason) = &out.not_offered {
        log_too_big(&key, reason);
        app.rollout_wakeup.notify_one();
    }
    let mut flushed = false;
    if out.remote_status_changed {
        // A remote-config status is acknowledged only once it is durable: an
        // APPLIED the agent saw answered must survive a crash of the server.
        flushed = true;
        if app.store.flush().await {
            app.rollout_wakeup.notify_one();
        } else {
            write = None;
            app.fleet.with(&key, Session::lose_record);
            // Not committed: no acknowledgement. The agent sends the status
            // again; forgetting it here makes that report count as new.
            tracing::warn!(uid = %opamp_proto::uid_string(&key),
                "remote-config status not acknowledged: its commit failed");
            app.fleet.with(&key, |s| {
                s.forget_reported_status();
                s.forget_offer();
            });
            out.reply = unavailable(
                app,
                msg,
                "the remote-config status could not be stored; send it again later",
            );
            out.follow_up = None;
        }
    }
    if let Some(write) = write {
        if !share(app, &key, write, flushed).await {
            out.reply = unavailable(
                app,
                msg,
                "this agent's session changed on another replica meanwhile; send the message again",
            );
            out.follow_up = None;
        }
    }
    if !(connecting || out.disconnect || assigned.is_some()) {
        // The common case, a heartbeat: nothing to log or record.
        return Ok((out, key));
    }
    let id = opamp_proto::uid_string(&key);
    let remote = origin.remote.to_string();
    if connecting && !out.disconnect {
        app.metrics.agent_connects
            [crate::metrics::transport_index(origin.transport == Transport::WebSocket)]
        .fetch_add(1, Ordering::Relaxed);
        tracing::info!(uid = %id, remote_addr = %remote, transport = origin.transport.as_str(), "agent connected");
        app.store.queue_event(AgentEvent {
            uid: id.clone(),
            at: now,
            event: "connected",
            remote_addr: Some(remote),
            details: Some(origin.transport.as_str().into()),
        });
    }
    if assigned.is_some() {
        tracing::info!(uid = %opamp_proto::uid_string(&uid), new_uid = %id, "assigned a new instance uid on request");
        if replacing {
            agent_left(app, &uid, origin.conn_id, "new instance uid");
        }
    }
    if out.disconnect {
        agent_left(app, &key, origin.conn_id, "agent_disconnect");
    }
    Ok((out, key))
}

/// An UNAVAILABLE error reply with opampd's retry delay.
fn unavailable(app: &App, msg: &pb::AgentToServer, why: &str) -> Reply {
    Reply::error(
        msg.instance_uid.clone(),
        Refusal::Unavailable {
            retry_after: Some(std::time::Duration::from_secs(
                app.config.opamp.retry_after_seconds,
            )),
        },
        why.into(),
    )
}

/// The shared session record of a plain-HTTP agent, or the reply that says
/// to poll again later when it cannot be read.
async fn shared_record(app: &App, uid: &[u8; 16]) -> Result<Option<SessionRecord>, Reply> {
    app.store
        .session_record(&opamp_proto::uid_string(uid))
        .await
        .map_err(|e| {
            tracing::warn!(uid = %opamp_proto::uid_string(uid), error = %format!("{e:#}"),
                "cannot read the agent's shared session record; asking it to poll again later");
            Reply::error(
                uid.to_vec(),
                Refusal::Unavailable {
                    retry_after: Some(std::time::Duration::from_secs(
                        app.config.opamp.retry_after_seconds,
                    )),
                },
                "the agent's session could not be read; send the message again later".into(),
            )
        })
}

/// Brings this replica's copy of a plain-HTTP agent's session up to its
/// shared record: nothing when it wrote the record itself; the record's
/// protocol state when only other replicas' polls came in between; a reload
/// from the stored row (the session is dropped here and loaded again) when
/// the row changed too or the record is gone (the agent was deleted). A
/// WebSocket session the agent leaves for plain HTTP is the freshest there
/// is: it goes on from where the record stands.
fn catch_up(app: &App, uid: &[u8; 16], record: Option<&SessionRecord>) {
    let stale = app.fleet.with(uid, |s| {
        let (version, row_changes) = s.record_position();
        match record {
            _ if s.transport() != Transport::Http => {
                s.follow_record(record.map_or((0, 0), |r| (r.version, r.row_changes)));
                false
            }
            None => version != 0,
            Some(r) if row_changes != r.row_changes => true,
            Some(r) => {
                if version != r.version || r.restart_pending != s.restart_pending() {
                    s.take_record(r);
                }
                false
            }
        }
    });
    if stale == Some(true) {
        app.fleet
            .remove_if(uid, |s| s.transport() == Transport::Http);
    }
}

/// Writes a poll's shared session record before its reply goes out, after
/// committing the agent state the poll queued (a replica reading the record
/// then finds the row current). False when it could not be written or
/// another poll wrote it first (a retry racing its original): the session
/// is reloaded at the next poll and this one is answered "again later".
async fn share(app: &App, uid: &[u8; 16], write: SessionWrite, flushed: bool) -> bool {
    if write.row_changed && !flushed && !app.store.flush().await {
        app.fleet.with(uid, Session::lose_record);
        return false;
    }
    let version = write.record.version;
    let mine = write.record.row_changes + i64::from(write.row_changed);
    match app.store.write_session_record(write).await {
        Ok(RecordWrite::Written { row_changes }) => {
            app.fleet
                .with(uid, |s| s.record_written(version, row_changes, mine));
            true
        }
        Ok(RecordWrite::Conflict) => {
            tracing::info!(uid = %opamp_proto::uid_string(uid),
                "another replica served this agent's session meanwhile; it is asked to send its message again");
            app.fleet.with(uid, Session::lose_record);
            false
        }
        Err(e) => {
            tracing::warn!(uid = %opamp_proto::uid_string(uid), error = %e,
                "cannot write the agent's shared session record; it is asked to send its message again");
            app.fleet.with(uid, Session::lose_record);
            false
        }
    }
}

/// Refuses a message for `uid` from a connection whose client certificate is
/// not the one the agent is bound to. Audited once per uid and certificate.
fn foreign(app: &Arc<App>, uid: &[u8; 16], msg: &pb::AgentToServer, origin: &Origin) -> Rejected {
    let id = opamp_proto::uid_string(uid);
    let presented = origin.certificate.as_deref().unwrap_or("none").to_string();
    let first = {
        let mut seen = app
            .foreign_certificates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if seen.len() >= FOREIGN_CERTIFICATES_KEPT {
            seen.clear();
        }
        seen.insert((id.clone(), presented.clone()))
    };
    if first {
        tracing::warn!(uid = %id, remote_addr = %origin.remote, certificate = %presented,
            "agent refused: its instance uid is bound to another client certificate");
        let app = app.clone();
        let remote = origin.remote.to_string();
        tokio::spawn(async move {
            let _ = app
                .store
                .audit(AuditEntry {
                    actor: "agent".into(),
                    action: "agent.certificate_mismatch".into(),
                    target: Some(id),
                    remote_addr: Some(remote),
                    outcome: "denied".into(),
                    details: serde_json::json!({ "certificate": presented }),
                })
                .await;
        });
    }
    Rejected::Foreign {
        instance_uid: msg.instance_uid.clone(),
    }
}

/// Refused (uid, certificate) pairs remembered, so each is audited once.
const FOREIGN_CERTIFICATES_KEPT: usize = 4096;

/// How long an agent message that changes stored state waits for room in a
/// full writer queue before it is refused with a retry delay.
const ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Writer operations one message queues at most (its patch, a connect or
/// disconnect event, the patch and event of a session it replaces).
const OPS_PER_MESSAGE: u64 = 4;

/// Whether handling `msg` may queue a database write: a new session, or a
/// report beyond a heartbeat.
fn changes_stored_state(app: &App, uid: &[u8; 16], msg: &pb::AgentToServer) -> bool {
    msg.agent_description.is_some()
        || msg.health.is_some()
        || msg.effective_config.is_some()
        || msg.remote_config_status.is_some()
        || msg.package_statuses.is_some()
        || msg.agent_disconnect.is_some()
        || msg.flags & FLAG_REQUEST_INSTANCE_UID != 0
        || !app.fleet.contains(uid)
}

/// Takes out of `patch` each report larger than
/// `opamp.max_stored_bytes_per_agent` (what is stored keeps its previous
/// value; a component list too big was never taken in) and returns the
/// events that say so.
fn over_storage_limit(
    app: &App,
    patch: &mut AgentPatch,
    origin: &Origin,
    now: i64,
) -> Vec<AgentEvent> {
    let limit = app.config.opamp.max_stored_bytes_per_agent;
    let description = patch.identifying.as_ref().map_or(0, String::len)
        + patch.non_identifying.as_ref().map_or(0, String::len);
    let mut dropped = Vec::new();
    if description > limit {
        patch.identifying = None;
        patch.non_identifying = None;
        dropped.push(("description", description));
    }
    if let Some(n) = patch
        .health
        .as_ref()
        .map(String::len)
        .filter(|n| *n > limit)
    {
        patch.health = None;
        dropped.push(("health", n));
    }
    if let Some(n) = patch
        .effective_config
        .as_ref()
        .map(String::len)
        .filter(|n| *n > limit)
    {
        patch.effective_config = None;
        patch.effective_config_hash = None;
        dropped.push(("effective config", n));
    }
    if let Some(n) = patch
        .package_statuses
        .as_ref()
        .map(String::len)
        .filter(|n| *n > limit)
    {
        patch.package_statuses = None;
        dropped.push(("package statuses", n));
    }
    if let Some(n) = patch.components.as_mut().and_then(|c| c.too_big.take()) {
        // Never kept: the list was refused before it reached the cache.
        dropped.push(("component list", n));
    }
    dropped
        .into_iter()
        .map(|(what, bytes)| {
            tracing::warn!(uid = %patch.uid, what, bytes, limit, "agent report not stored: over opamp.max_stored_bytes_per_agent");
            AgentEvent {
                uid: patch.uid.clone(),
                at: now,
                event: "not_stored",
                remote_addr: Some(origin.remote.to_string()),
                details: Some(format!(
                    "{what} of {bytes} bytes exceeds opamp.max_stored_bytes_per_agent ({limit}); the stored one was kept"
                )),
            }
        })
        .collect()
}

/// Whether `msg` comes from a second live agent using a uid already in use.
///
/// Only evidence one agent cannot produce counts, because the agent keeps a
/// reassigned uid for good: the WebSocket the agent moved away from, still
/// open, goes on sending with a sequence number of its own. A new address
/// (load balancer, dual stack), a reconnect before the old socket is seen
/// closed, or a restarted process (sequence number 0) is the same agent.
fn is_duplicate(app: &App, s: &Session, msg: &pb::AgentToServer, origin: &Origin) -> bool {
    if s.is_disconnected() || !app.config.opamp.reassign_duplicate_uids {
        return false;
    }
    let diverges = s
        .sequence_num()
        .is_none_or(|p| msg.sequence_num != p && msg.sequence_num != p.wrapping_add(1));
    origin.transport == Transport::WebSocket
        && s.transport() == Transport::WebSocket
        && origin.conn_id != s.conn_id()
        && origin.conn_id == s.previous_conn()
        && app.fleet.conn_open(origin.conn_id)
        && diverges
}

fn duplicate_reply(app: &App, uid: [u8; 16], msg: &pb::AgentToServer, origin: &Origin) -> Outcome {
    let new_uid = *uuid::Uuid::now_v7().as_bytes();
    let id = opamp_proto::uid_string(&uid);
    tracing::warn!(uid = %id, remote_addr = %origin.remote, new_uid = %opamp_proto::uid_string(&new_uid),
        "duplicate instance uid: another live agent uses it; sending this one a new uid");
    app.store.queue_event(AgentEvent {
        uid: id,
        at: now_ms(),
        event: "duplicate_uid",
        remote_addr: Some(origin.remote.to_string()),
        details: Some(format!("assigned {}", opamp_proto::uid_string(&new_uid))),
    });
    Outcome::reply_only(Reply::answer(
        msg.instance_uid.clone(),
        Answer {
            flags: opamp_proto::caps::FLAG_REPORT_FULL_STATE,
            new_instance_uid: Some(new_uid),
            ..Default::default()
        },
    ))
}

/// An agent is gone from `conn_id` (0 = plain HTTP): forget its live session,
/// keep everything stored, record the disconnect.
pub fn agent_left(app: &App, uid: &[u8; 16], conn_id: u64, reason: &'static str) {
    let Some(s) = app.fleet.remove_if(uid, |s| s.conn_id() == conn_id) else {
        return;
    };
    app.cluster.released(uid);
    let id = opamp_proto::uid_string(uid);
    let mut patch = AgentPatch::new(&id);
    patch.status = Some("disconnected");
    patch.sequence_num = s.sequence_num();
    patch.last_seen = Some(s.last_seen());
    app.store.queue_agent(patch);
    app.metrics.agent_disconnects
        [crate::metrics::transport_index(s.transport() == Transport::WebSocket)]
    .fetch_add(1, Ordering::Relaxed);
    let remote = s.remote_addr().map(|a| a.to_string());
    tracing::info!(uid = %id, remote_addr = remote.as_deref().unwrap_or(""), transport = s.transport().as_str(), reason, "agent disconnected");
    app.store.queue_event(AgentEvent {
        uid: id,
        at: now_ms(),
        event: "disconnected",
        remote_addr: remote,
        details: Some(reason.into()),
    });
}

/// Bytes of the ServerToAgent that offers one configuration file alone: what
/// must fit `opamp.max_send_bytes` for the configuration to be deliverable.
pub fn single_offer_len(name: &str, content_type: &str, body: &str) -> usize {
    let file = pb::AgentConfigFile {
        body: body.as_bytes().to_vec(),
        content_type: content_type.to_string(),
    };
    Reply::largest_offer_len(&pb::AgentRemoteConfig {
        config: Some(pb::AgentConfigMap {
            config_map: [(name.to_string(), file)].into(),
        }),
        config_hash: vec![0; 32],
    })
}

/// Encodes a reply, enforcing `opamp.max_send_bytes`. Offers are checked
/// before they are made ([`Session::take_offer`]); should a reply still be too
/// big, it goes without its remote config, which is then recorded as not sent
/// (the agent shows as failed with the reason) rather than as offered.
pub fn encode_reply(app: &App, mut reply: Reply) -> Vec<u8> {
    use prost::Message;
    let limit = app.config.opamp.max_send_bytes;
    let bytes = reply.encoded_len();
    if bytes > limit {
        app.metrics.outgoing_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            uid = %hex::encode(&reply.instance_uid),
            bytes,
            limit,
            "ServerToAgent over opamp.max_send_bytes: sent without its remote config"
        );
        if let Some(rc) = &reply.remote_config {
            let uid = reply
                .agent_identification
                .as_ref()
                .map_or(reply.instance_uid.as_slice(), |a| {
                    a.new_instance_uid.as_slice()
                });
            if let (Ok(uid), Ok(hash)) = (
                <[u8; 16]>::try_from(uid),
                <[u8; 32]>::try_from(rc.config_hash.as_slice()),
            ) {
                not_sent(app, &uid, hash, bytes);
            }
        }
        reply = reply.without_offers();
    }
    reply.encode_to_vec()
}

/// Records that the offer of `hash` to `uid` was not sent after all.
fn not_sent(app: &App, uid: &[u8; 16], hash: [u8; 32], bytes: usize) {
    let limit = app.config.opamp.max_send_bytes;
    let patch = app.fleet.with(uid, |s| {
        let reason = match s.desired() {
            Some(d) if d.hash == hash => session::too_big_reason(d, bytes, limit),
            _ => format!(
                "not sent: a {bytes}-byte message, over opamp.max_send_bytes ({limit} bytes)"
            ),
        };
        s.offer_undeliverable(hash, reason);
        let mut patch = AgentPatch::new(&opamp_proto::uid_string(s.uid()));
        patch.offered = Some(session::undeliverable_json(s).to_string());
        patch
    });
    if let Some(patch) = patch {
        app.store.queue_agent(patch);
    }
}

/// Logs an offer found too big to send (once per configuration set and agent).
fn log_too_big(uid: &[u8; 16], reason: &str) {
    tracing::warn!(uid = %opamp_proto::uid_string(uid), %reason, "remote config not offered: over opamp.max_send_bytes");
}

/// Offers an agent its desired configuration now, if it needs it and a
/// WebSocket carries it (plain-HTTP agents get it at their next poll).
/// Returns whether a message was queued.
pub fn push_offer(app: &App, uid: &[u8; 16]) -> bool {
    let pushed = app.fleet.with(uid, |s| {
        if !s.pushable() {
            return None;
        }
        let mut patch = AgentPatch::new(&opamp_proto::uid_string(s.uid()));
        match s.take_offer(&app.targets, app.config.opamp.max_send_bytes)? {
            session::Offer::Send(rc) => {
                patch.offered = Some(session::offered_json(s).to_string());
                let msg = Reply::answer(
                    s.uid().to_vec(),
                    Answer {
                        remote_config: Some(rc),
                        ..Default::default()
                    },
                );
                Some(Ok((s.conn_id(), msg, patch)))
            }
            session::Offer::TooBig(reason) => {
                log_too_big(s.uid(), &reason);
                patch.offered = Some(session::undeliverable_json(s).to_string());
                Some(Err(patch))
            }
        }
    });
    let (conn_id, msg, patch) = match pushed {
        Some(Some(Ok(push))) => push,
        Some(Some(Err(patch))) => {
            app.store.queue_agent(patch);
            app.rollout_wakeup.notify_one();
            return false;
        }
        _ => return false,
    };
    app.store.queue_agent(patch);
    if app
        .fleet
        .send_to_conn(conn_id, crate::fleet::Outgoing::Message(Box::new(msg)))
    {
        true
    } else {
        // The connection is busy or gone: offer again at the next message.
        app.fleet.with(uid, Session::forget_offer);
        false
    }
}

/// Sends a restart command to a connected agent: at once over WebSocket, with
/// the reply to the next poll over plain HTTP. `None` if it is not connected.
pub fn send_restart(app: &App, uid: &[u8; 16]) -> Option<&'static str> {
    let target = app.fleet.with(uid, |s| {
        if s.is_disconnected() {
            return None;
        }
        match s.transport() {
            Transport::WebSocket => Some(Some(s.conn_id())),
            Transport::Http => {
                s.queue_restart();
                Some(None)
            }
        }
    })??;
    match target {
        Some(conn_id) => {
            let msg = Reply::command(uid.to_vec(), Command::Restart);
            app.fleet
                .send_to_conn(conn_id, crate::fleet::Outgoing::Message(Box::new(msg)))
                .then_some("sent")
        }
        None => Some("queued for the next poll"),
    }
}
