//! How a simulated agent reaches the server: a WebSocket per agent (from
//! its source address, with small buffers) or a shared pool of plain-HTTP
//! keep-alive connections.

use super::plan::{share, Plan};
use futures_util::{SinkExt, StreamExt};
use opamp_proto::{frame, pb};
use prost::Message as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// WebSocket buffers per connection: small, so one process holds 15k agents.
const WS_BUFFER: usize = 4 * 1024;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
}

/// Opens a WebSocket to the OpAMP endpoint from the agent's source address.
pub async fn ws_open(plan: &Plan, idx: usize) -> Result<Ws, String> {
    let socket = if plan.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("cannot open a socket: {e}"))?;
    if !plan.source_ips.is_empty() {
        let ip = plan.source_ips[idx % plan.source_ips.len()];
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("cannot bind to {ip}: {e}"))?;
    }
    let tcp = socket
        .connect(plan.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", plan.addr))?;
    let _ = tcp.set_nodelay(true);
    let mut request = plan
        .ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad WebSocket URL {}: {e}", plan.ws_url))?;
    if let Some(secret) = &plan.secret {
        let value = format!("Bearer {secret}")
            .parse()
            .map_err(|_| "the agent secret is not a valid header value".to_string())?;
        request.headers_mut().insert("authorization", value);
    }
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(ws_config()))
        .await
        .map_err(|e| format!("WebSocket upgrade failed: {e}"))?;
    Ok(ws)
}

pub async fn ws_send(ws: &mut Ws, message: &pb::AgentToServer) -> Result<(), String> {
    ws.send(Message::Binary(frame::encode_message(message).into()))
        .await
        .map_err(|e| format!("WebSocket send failed: {e}"))
}

/// A binary WebSocket message (header and ServerToAgent) decoded.
pub fn decode_binary(bytes: &[u8]) -> Result<pb::ServerToAgent, String> {
    let payload = frame::decode(bytes).map_err(|e| e.to_string())?;
    pb::ServerToAgent::decode(payload).map_err(|e| format!("the reply is not a ServerToAgent: {e}"))
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

/// The next OpAMP message (pings and pongs skipped).
pub async fn ws_recv(ws: &mut Ws) -> Result<pb::ServerToAgent, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => return decode_binary(&bytes),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            other => return Err(close_reason(other)),
        }
    }
}

/// Plain-HTTP exchanges over a bounded set of keep-alive connections: one
/// lane per source address, each with its share of the connections; a
/// semaphore keeps as many requests in flight as a lane has connections.
pub struct HttpPool {
    url: String,
    lanes: Vec<(reqwest::Client, Semaphore)>,
    secret: Option<String>,
}

impl HttpPool {
    pub fn new(plan: &Plan) -> Result<HttpPool, String> {
        let sources: Vec<Option<IpAddr>> = if plan.source_ips.is_empty() {
            vec![None]
        } else {
            plan.source_ips.iter().copied().map(Some).collect()
        };
        let lane_count = sources.len().min(plan.connections).max(1);
        let mut lanes = Vec::with_capacity(lane_count);
        for (lane, source) in sources.into_iter().take(lane_count).enumerate() {
            let connections = share(plan.connections, lane, lane_count).len().max(1);
            let client = reqwest::Client::builder()
                .user_agent(concat!("opampctl-bench/", env!("CARGO_PKG_VERSION")))
                .pool_max_idle_per_host(connections)
                .pool_idle_timeout(None)
                .tcp_nodelay(true)
                .http1_only()
                .gzip(plan.gzip)
                .timeout(plan.timeout)
                .local_address(source)
                .build()
                .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
            lanes.push((client, Semaphore::new(connections)));
        }
        Ok(HttpPool {
            url: plan.http_url.clone(),
            lanes,
            secret: plan.secret.clone(),
        })
    }

    /// POSTs agent `idx`'s message; the reply and the request's own latency.
    pub async fn exchange(
        &self,
        idx: usize,
        uid: &str,
        message: &pb::AgentToServer,
    ) -> Result<(pb::ServerToAgent, Duration), String> {
        let (client, lane) = &self.lanes[idx % self.lanes.len()];
        let _permit = lane.acquire().await.map_err(|e| e.to_string())?;
        // The latency of a request, not of the wait for a free connection.
        let started = Instant::now();
        let mut request = client
            .post(&self.url)
            .header("content-type", "application/x-protobuf")
            .header("opamp-instance-uid", uid)
            .body(message.encode_to_vec());
        if let Some(secret) = &self.secret {
            request = request.bearer_auth(secret);
        }
        let response = request.send().await.map_err(|e| {
            let mut chain = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                chain = cause.to_string();
                source = cause.source();
            }
            format!("POST {}: {chain}", self.url)
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading the reply failed: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(format!(
                "HTTP {}: {}",
                status.as_u16(),
                text.trim().chars().take(120).collect::<String>()
            ));
        }
        let reply = pb::ServerToAgent::decode(body.as_ref())
            .map_err(|e| format!("the reply is not a ServerToAgent: {e}"))?;
        Ok((reply, started.elapsed()))
    }
}
