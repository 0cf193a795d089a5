//! The tests' OpAMP client: thin, panicking wrappers over the `opamp-agent`
//! crate, so a test reads as what it does. They do exactly what a test says,
//! including the wrong things (change the fields of a built message), so the
//! server's replies can be checked. For more (TLS, headers, gzip, the agent
//! state machine) use [`opamp_agent`] directly; it is re-exported as `agent`.

pub use opamp_agent as agent;
pub use opamp_agent::message::kv;
pub use opamp_agent::new_uid;
use opamp_agent::{message, pb, ws};
use std::time::Duration;

/// A WebSocket opened by [`ws_connect`]: tokio-tungstenite's stream, usable
/// directly for raw frames and close codes.
pub type Ws = ws::WebSocket;

/// The capabilities of the tests' agents.
pub const CAPS: u64 = message::TYPICAL_CAPABILITIES;

/// A complete first report.
pub fn full_report(uid: [u8; 16], seq: u64, service: &str) -> pb::AgentToServer {
    message::full_report(
        uid,
        seq,
        CAPS,
        message::FullState {
            description: Some(message::description(
                &[("service.name", service), ("service.version", "1.0.0")],
                &[("host.name", "test-host"), ("os.type", "linux")],
            )),
            health: Some(message::health(true, "StatusOK", "")),
            effective_config: Some(message::effective_yaml("receivers: {}")),
            remote_config_status: None,
        },
    )
}

pub fn heartbeat(uid: [u8; 16], seq: u64) -> pb::AgentToServer {
    message::heartbeat(uid, seq, CAPS)
}

/// A heartbeat reporting a remote-config status.
pub fn applied(
    uid: [u8; 16],
    seq: u64,
    hash: &[u8],
    status: pb::RemoteConfigStatuses,
    error: &str,
) -> pb::AgentToServer {
    message::status_report(
        uid,
        seq,
        CAPS,
        message::remote_config_status(hash, status, error),
    )
}

pub fn uid_str(uid: &[u8; 16]) -> String {
    opamp_agent::uid_string(uid)
}

/// Opens a WebSocket to `url` with optional extra headers. A refused
/// upgrade is tungstenite's `Error::Http`, with the status and headers.
pub async fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let mut options = ws::WsOptions::default();
    for (name, value) in headers {
        options = options.header(name, value);
    }
    ws::connect(url, &options).await.map_err(|e| match e {
        opamp_agent::Error::Rejected(rejection) => {
            let mut response = http::Response::new(Some(rejection.body));
            *response.status_mut() =
                http::StatusCode::from_u16(rejection.status).expect("a valid status");
            *response.headers_mut() = rejection.headers;
            WsError::Http(Box::new(response))
        }
        opamp_agent::Error::WebSocket(e) => *e,
        other => WsError::Io(std::io::Error::other(other.to_string())),
    })
}

pub async fn ws_send(ws: &mut Ws, msg: &pb::AgentToServer) {
    ws::send(ws, msg).await.expect("ws send");
}

/// Next OpAMP message (skipping pings), or panics after 10 s.
pub async fn ws_recv(ws: &mut Ws) -> pb::ServerToAgent {
    tokio::time::timeout(Duration::from_secs(10), ws::recv(ws))
        .await
        .expect("reply within 10 s")
        .expect("a ServerToAgent")
}

/// Sends and waits for the reply.
pub async fn ws_exchange(ws: &mut Ws, msg: &pb::AgentToServer) -> pb::ServerToAgent {
    ws_send(ws, msg).await;
    ws_recv(ws).await
}

/// One plain-HTTP exchange; returns status, headers and decoded reply (if protobuf).
pub async fn http_exchange(
    url: &str,
    msg: &pb::AgentToServer,
) -> (u16, http::HeaderMap, Option<pb::ServerToAgent>) {
    let transport = opamp_agent::http::HttpTransport::new(url, &Default::default())
        .expect("a plain-HTTP transport");
    let reply = transport.post(msg).await.expect("http exchange");
    let message = reply.message().map(|m| m.expect("valid ServerToAgent"));
    (reply.status, reply.headers, message)
}
