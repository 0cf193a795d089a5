//! WebSocket transport.
//!
//! One task per connection drives reads, pushes and keep-alive from a single
//! `select!`, so a connection costs one task and small buffers. A connection
//! may carry several agents (a terminating proxy): it remembers every uid it
//! has seen and disconnects all of them when it closes. Pings go out when the
//! peer has been quiet for `ws_ping_interval_seconds`; a peer silent for
//! `ws_read_timeout_seconds` (no message, no pong) is closed.

use super::reply::{Refusal, Reply};
use super::{agent_left, encode_reply, process, Origin, Rejected};
use crate::app::App;
use crate::fleet::Outgoing;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use opamp_proto::{frame, pb};
use prost::Message as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_UNSUPPORTED: u16 = 1003;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Per-connection buffer sizes: small, because most agents are idle (the read
/// buffer grows for a larger message when one arrives).
const READ_BUFFER: usize = 2 * 1024;
const WRITE_BUFFER: usize = 4 * 1024;

pub fn upgrade(
    app: Arc<App>,
    remote: SocketAddr,
    certificate: Option<Arc<str>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let max = app.config.opamp.max_message_bytes;
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(
            move |e| tracing::debug!(remote_addr = %remote, error = %e, "WebSocket upgrade failed"),
        )
        .on_upgrade(move |socket| serve(app, remote, certificate, socket))
}

async fn serve(
    app: Arc<App>,
    remote: SocketAddr,
    certificate: Option<Arc<str>>,
    mut socket: WebSocket,
) {
    let (conn_id, queue) = app.fleet.register_conn();
    app.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
    let ping_every = Duration::from_secs(app.config.opamp.ws_ping_interval_seconds);
    let read_timeout = Duration::from_secs(app.config.opamp.ws_read_timeout_seconds);
    let mut uids: Vec<[u8; 16]> = Vec::new();
    let mut last_rx = Instant::now();
    let mut tick = tokio::time::interval_at(
        Instant::now() + ping_every,
        ping_every
            .min(read_timeout / 2)
            .max(Duration::from_millis(100)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let origin = Origin {
        transport: super::session::Transport::WebSocket,
        conn_id,
        remote,
        certificate,
    };
    let mut reason = "closed by agent";
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(incoming) = incoming else { break };
                last_rx = Instant::now();
                match incoming {
                    Ok(Message::Binary(data)) => {
                        // Boxed: the message path (session rules, store reads, durable acks)
                        // then lives only while a message is handled, not in every idle
                        // connection's task.
                        if !Box::pin(on_binary(&app, &mut socket, &origin, &mut uids, &data)).await {
                            reason = "send failed";
                            break;
                        }
                    }
                    Ok(Message::Text(_)) => {
                        tracing::warn!(remote_addr = %remote, "text WebSocket frame ignored: OpAMP uses binary frames");
                        let reply = Reply::bad_request(Vec::new(), "text frames are not OpAMP messages: send binary frames".into());
                        if !send(&app, &mut socket, reply).await {
                            break;
                        }
                    }
                    Ok(Message::Ping(_)) => {}
                    Ok(Message::Pong(_)) => {
                        // An answered ping is activity: the agents on this connection are alive
                        // even if they send no heartbeats.
                        let now = crate::store::now_ms();
                        for uid in &uids {
                            app.fleet.with(uid, |s| s.touch(conn_id, now));
                        }
                    }
                    Ok(Message::Close(_)) => {
                        // The close reply is queued by the protocol layer; one more read sends
                        // it, completing the close handshake.
                        let _ = tokio::time::timeout(Duration::from_secs(2), socket.recv()).await;
                        break;
                    }
                    Err(e) => {
                        let too_big = is_capacity_error(&e);
                        if too_big {
                            tracing::warn!(remote_addr = %remote, limit = app.config.opamp.max_message_bytes, "WebSocket message over opamp.max_message_bytes: closing with 1009");
                            let _ = socket.send(close(CLOSE_TOO_BIG, "message too big")).await;
                            reason = "message too big";
                        } else {
                            tracing::debug!(remote_addr = %remote, error = %e, "WebSocket read error");
                            reason = "read error";
                        }
                        break;
                    }
                }
            }
            _ = queue.notified() => {
                let mut stop = None;
                while let Some(out) = queue.pop() {
                    match out {
                        Outgoing::Message(msg) => {
                            if !send(&app, &mut socket, *msg).await {
                                stop = Some("send failed");
                                break;
                            }
                        }
                        Outgoing::Close(code, why) => {
                            let _ = socket.send(close(code, why)).await;
                            // Give the peer a moment to answer the close handshake.
                            let drain = async { while let Some(Ok(_)) = socket.recv().await {} };
                            let _ = tokio::time::timeout(Duration::from_secs(2), Box::pin(drain)).await;
                            stop = Some(why);
                            break;
                        }
                    }
                }
                if let Some(why) = stop {
                    reason = why;
                    break;
                }
            }
            _ = tick.tick() => {
                let quiet = last_rx.elapsed();
                if quiet >= read_timeout {
                    tracing::info!(remote_addr = %remote, quiet_s = quiet.as_secs(), "closing silent WebSocket (opamp.ws_read_timeout_seconds)");
                    let _ = socket.send(close(CLOSE_GOING_AWAY, "read timeout")).await;
                    reason = "read timeout";
                    break;
                }
                if quiet >= ping_every && socket.send(Message::Ping(Default::default())).await.is_err() {
                    reason = "ping failed";
                    break;
                }
            }
        }
    }
    app.fleet.unregister_conn(conn_id);
    app.metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
    for uid in uids {
        agent_left(&app, &uid, conn_id, reason);
    }
}

/// An UNAVAILABLE error reply with `opamp.retry_after_seconds`.
fn retry_later(app: &App, instance_uid: Vec<u8>, why: &str) -> Reply {
    let refusal = Refusal::Unavailable {
        retry_after: Some(Duration::from_secs(app.config.opamp.retry_after_seconds)),
    };
    Reply::error(instance_uid, refusal, why.into())
}

fn is_capacity_error(e: &axum::Error) -> bool {
    let text = format!("{e:?}");
    text.contains("Capacity") || text.contains("MessageTooLong") || text.contains("too long")
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn send(app: &App, socket: &mut WebSocket, reply: Reply) -> bool {
    let bytes = encode_reply(app, reply);
    socket
        .send(Message::Binary(frame::encode(&bytes).into()))
        .await
        .is_ok()
}

/// Handles one binary message; false when the connection must end.
async fn on_binary(
    app: &Arc<App>,
    socket: &mut WebSocket,
    origin: &Origin,
    uids: &mut Vec<[u8; 16]>,
    data: &[u8],
) -> bool {
    let payload = match frame::decode(data) {
        Ok(p) => p,
        Err(e) => return send(app, socket, Reply::bad_request(Vec::new(), e.to_string())).await,
    };
    let msg = match pb::AgentToServer::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            return send(
                app,
                socket,
                Reply::bad_request(Vec::new(), format!("malformed AgentToServer: {e}")),
            )
            .await
        }
    };
    let cap = app.config.opamp.max_agents_per_connection;
    if uids.len() >= cap && !uids.iter().any(|u| u[..] == msg.instance_uid[..]) {
        tracing::warn!(remote_addr = %origin.remote, max_agents_per_connection = cap, "agent refused: the WebSocket carries its maximum of agents");
        let reply = Reply::bad_request(
            msg.instance_uid.clone(),
            format!("this connection already carries {cap} agents (opamp.max_agents_per_connection): open another connection"),
        );
        return send(app, socket, reply).await;
    }
    match process(app, &msg, origin).await {
        Ok((out, uid)) => {
            if !out.disconnect && !uids.contains(&uid) {
                uids.push(uid);
            }
            if out.disconnect {
                uids.retain(|u| *u != uid);
            }
            if let Ok(old) = <[u8; 16]>::try_from(msg.instance_uid.as_slice()) {
                if old != uid {
                    uids.retain(|u| *u != old);
                }
            }
            if !send(app, socket, out.reply).await {
                return false;
            }
            match out.follow_up {
                Some(cmd) => send(app, socket, cmd).await,
                None => true,
            }
        }
        Err(Rejected::BadRequest(reply)) => send(app, socket, *reply).await,
        Err(Rejected::Full { instance_uid }) => {
            // A new agent on a connection carrying others: no upgrade to refuse, so
            // the refusal is an OpAMP error with the retry delay.
            send(app, socket, retry_later(app, instance_uid, Rejected::FULL)).await
        }
        Err(Rejected::Busy { instance_uid }) => {
            send(app, socket, retry_later(app, instance_uid, Rejected::BUSY)).await
        }
        Err(Rejected::Held { instance_uid }) => {
            let reply = Reply::bad_request(instance_uid, Rejected::HELD.into());
            send(app, socket, reply).await
        }
        Err(Rejected::Foreign { instance_uid }) => {
            let reply = Reply::bad_request(instance_uid, Rejected::FOREIGN.into());
            send(app, socket, reply).await
        }
    }
}
