//! How a simulated agent reaches the server, through the `opamp-agent`
//! library: a WebSocket per agent (from its source address, with small
//! buffers, to the address resolved once by the plan) or a shared pool of
//! plain-HTTP keep-alive connections, one lane per source address.

use super::plan::{Endpoint, Plan};
use opamp_agent::http::{HttpOptions, HttpTransport};
use opamp_agent::pb;
use opamp_agent::ws::{self, Message, WsConnector, WsOptions};
use std::time::Duration;

pub type Ws = ws::WebSocket;

/// WebSocket buffers per connection: small, so one process holds 15k agents.
const WS_BUFFER: usize = 4 * 1024;

/// Opens the WebSockets of one worker's agents to one endpoint, prepared once.
pub fn ws_connector(plan: &Plan, endpoint: &Endpoint) -> Result<WsConnector, String> {
    let mut options = WsOptions::default()
        .buffer_size(WS_BUFFER)
        .server_addr(endpoint.addr);
    if let Some(secret) = &plan.secret {
        options = options.bearer(secret);
    }
    WsConnector::new(&endpoint.ws_url, &options).map_err(|e| e.to_string())
}

/// Opens agent `idx`'s WebSocket from its source address (round-robin).
pub async fn ws_open(connector: &WsConnector, plan: &Plan, idx: usize) -> Result<Ws, String> {
    let source =
        (!plan.source_ips.is_empty()).then(|| plan.source_ips[idx % plan.source_ips.len()]);
    connector
        .connect_from(source)
        .await
        .map_err(|e| e.to_string())
}

pub async fn ws_send(socket: &mut Ws, message: &pb::AgentToServer) -> Result<(), String> {
    ws::send(socket, message)
        .await
        .map_err(|e| format!("WebSocket send failed: {e}"))
}

/// The next OpAMP message (pings and pongs skipped).
pub async fn ws_recv(socket: &mut Ws) -> Result<pb::ServerToAgent, String> {
    ws::recv(socket).await.map_err(|e| e.to_string())
}

/// A binary WebSocket message (header and ServerToAgent) decoded.
pub fn decode_binary(bytes: &[u8]) -> Result<pb::ServerToAgent, String> {
    ws::decode(bytes).map_err(|e| e.to_string())
}

/// Why a WebSocket read ended the exchange.
pub fn close_reason(
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> String {
    match message {
        Some(Ok(Message::Close(Some(frame)))) => {
            format!(
                "the server closed the WebSocket ({} {})",
                u16::from(frame.code),
                frame.reason
            )
        }
        Some(Ok(Message::Close(None))) | None => "the server closed the WebSocket".into(),
        Some(Err(e)) => format!("WebSocket read failed: {e}"),
        Some(Ok(other)) => format!("unexpected WebSocket message {other:?}"),
    }
}

/// Plain-HTTP exchanges of one worker's agents with one endpoint over
/// `connections` keep-alive connections, split over the source addresses.
pub fn http_pool(
    plan: &Plan,
    endpoint: &Endpoint,
    connections: usize,
) -> Result<HttpTransport, String> {
    let mut options = HttpOptions::default()
        .connections(connections)
        .source_ips(plan.source_ips.clone())
        .timeout(plan.timeout)
        .accept_gzip(plan.gzip);
    options.user_agent = Some(concat!("opampctl-bench/", env!("CARGO_PKG_VERSION")).into());
    if let Some(secret) = &plan.secret {
        options = options.bearer(secret);
    }
    HttpTransport::new(&endpoint.http_url, &options).map_err(|e| e.to_string())
}

/// POSTs agent `idx`'s message through its lane; the reply and the
/// request's own latency (not the wait for a free connection).
pub async fn http_exchange(
    pool: &HttpTransport,
    idx: usize,
    message: &pb::AgentToServer,
) -> Result<(pb::ServerToAgent, Duration), String> {
    let reply = pool
        .post_via(idx, message)
        .await
        .map_err(|e| e.to_string())?;
    let took = reply.elapsed;
    let message = pool.expect_message(reply).map_err(|e| e.to_string())?;
    Ok((message, took))
}
