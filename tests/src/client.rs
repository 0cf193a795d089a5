//! Minimal OpAMP clients written for the tests: they do exactly what a test
//! says, including the wrong things, so the server's replies can be checked.

use futures_util::{SinkExt, StreamExt};
use opamp_proto::{frame, pb};
use prost::Message as _;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub fn kv(k: &str, v: &str) -> pb::KeyValue {
    pb::KeyValue {
        key: k.into(),
        value: Some(pb::AnyValue {
            value: Some(pb::any_value::Value::StringValue(v.into())),
        }),
    }
}

pub const CAPS: u64 = 0x1 | 0x2 | 0x4 | 0x800 | 0x1000 | 0x400;

/// A complete first report.
pub fn full_report(uid: [u8; 16], seq: u64, service: &str) -> pb::AgentToServer {
    pb::AgentToServer {
        instance_uid: uid.to_vec(),
        sequence_num: seq,
        capabilities: CAPS,
        agent_description: Some(pb::AgentDescription {
            identifying_attributes: vec![
                kv("service.name", service),
                kv("service.version", "1.0.0"),
            ],
            non_identifying_attributes: vec![kv("host.name", "test-host"), kv("os.type", "linux")],
        }),
        health: Some(pb::ComponentHealth {
            healthy: true,
            status: "StatusOK".into(),
            ..Default::default()
        }),
        effective_config: Some(pb::EffectiveConfig {
            config_map: Some(pb::AgentConfigMap {
                config_map: [(
                    "".to_string(),
                    pb::AgentConfigFile {
                        body: b"receivers: {}".to_vec(),
                        content_type: "text/yaml".into(),
                    },
                )]
                .into(),
            }),
        }),
        ..Default::default()
    }
}

pub fn heartbeat(uid: [u8; 16], seq: u64) -> pb::AgentToServer {
    pb::AgentToServer {
        instance_uid: uid.to_vec(),
        sequence_num: seq,
        capabilities: CAPS,
        ..Default::default()
    }
}

pub fn applied(
    uid: [u8; 16],
    seq: u64,
    hash: &[u8],
    status: pb::RemoteConfigStatuses,
    error: &str,
) -> pb::AgentToServer {
    pb::AgentToServer {
        remote_config_status: Some(pb::RemoteConfigStatus {
            last_remote_config_hash: hash.to_vec(),
            status: status as i32,
            error_message: error.into(),
        }),
        ..heartbeat(uid, seq)
    }
}

pub fn new_uid() -> [u8; 16] {
    *uuid::Uuid::now_v7().as_bytes()
}

pub fn uid_str(uid: &[u8; 16]) -> String {
    opamp_proto::uid_string(uid)
}

/// Opens a WebSocket to `url` with optional extra headers.
pub async fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

pub async fn ws_send(ws: &mut Ws, msg: &pb::AgentToServer) {
    ws.send(Message::Binary(frame::encode_message(msg).into()))
        .await
        .expect("ws send");
}

/// Next OpAMP message (skipping pings), or panics after 10 s.
pub async fn ws_recv(ws: &mut Ws) -> pb::ServerToAgent {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("reply within 10 s")
            .expect("stream open")
            .expect("no ws error");
        match m {
            Message::Binary(b) => {
                let payload = frame::decode(&b).expect("server frames carry header 0");
                return pb::ServerToAgent::decode(payload).expect("valid ServerToAgent");
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected ws message {other:?}"),
        }
    }
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
) -> (u16, reqwest::header::HeaderMap, Option<pb::ServerToAgent>) {
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = client
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .body(msg.encode_to_vec())
        .send()
        .await
        .expect("http exchange");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap();
    let reply = if headers
        .get("content-type")
        .is_some_and(|v| v == "application/x-protobuf")
    {
        Some(pb::ServerToAgent::decode(body.as_ref()).expect("valid ServerToAgent"))
    } else {
        None
    };
    (status, headers, reply)
}
