//! OpAMP over plain HTTP against a real opampd: every reply checked exactly.

use opamp_proto::pb;
use opamp_tests::client::*;
use opamp_tests::{wait_for, Opts, Server};
use prost::Message as _;
use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;

const ACCEPTS_STATUS: u64 = 1;
const REPORT_FULL_STATE: u64 = 1;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let mut req = client.post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.bytes().await.unwrap().to_vec())
}

fn decode(body: &[u8]) -> pb::ServerToAgent {
    pb::ServerToAgent::decode(body).expect("protobuf ServerToAgent")
}

async fn wait_status(s: &Server, uid: &[u8; 16], want: &str) -> Value {
    wait_for(
        &format!("agent {want}"),
        Duration::from_secs(15),
        || async {
            let (code, v) = s.get(&format!("/api/v1/agents/{}", uid_str(uid))).await;
            (code == 200 && v["status"] == want).then_some(v)
        },
    )
    .await
}

#[tokio::test]
async fn a_report_gets_an_exact_protobuf_reply() {
    let s = Server::start();
    let uid = new_uid();
    let (status, headers, reply) =
        http_exchange(&s.opamp_url(), &full_report(uid, 0, "svc-http")).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/x-protobuf",
        "exact Content-Type"
    );
    assert!(
        headers.get("content-encoding").is_none(),
        "no gzip unless asked"
    );
    let reply = reply.unwrap();
    assert_eq!(reply.instance_uid, uid.to_vec());
    assert_eq!(reply.capabilities & ACCEPTS_STATUS, ACCEPTS_STATUS);
    assert_eq!(reply.flags, 0);
    let v = wait_status(&s, &uid, "connected").await;
    assert_eq!(v["transport"], "http");
    assert_eq!(v["identifying_attributes"]["service.name"], "svc-http");
    // A poll: only uid, sequence number, capabilities.
    let (_, _, reply) = http_exchange(&s.opamp_url(), &heartbeat(uid, 1)).await;
    assert_eq!(reply.unwrap().flags, 0);
}

#[tokio::test]
async fn gzip_request_bodies_are_accepted() {
    let s = Server::start();
    let uid = new_uid();
    let body = gzip(&full_report(uid, 0, "gz").encode_to_vec());
    let (status, headers, body) = post(
        &s.opamp_url(),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
        body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/x-protobuf"
    );
    assert_eq!(decode(&body).instance_uid, uid.to_vec());
    // Accept-Encoding: gzip on a small reply: still valid protobuf, compressed or not as marked.
    let (status, headers, body) = post(
        &s.opamp_url(),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Accept-Encoding", "gzip"),
        ],
        heartbeat(uid, 1).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let plain = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        body
    };
    assert_eq!(decode(&plain).instance_uid, uid.to_vec());
}

#[tokio::test]
async fn size_limits_apply_after_decompression() {
    let s = Server::start_with(Opts {
        config: Some("opamp:\n  max_message_bytes: 65536\n".into()),
        ..Default::default()
    });
    // A gzip bomb: 64 KiB on the wire, 20 MiB inflated.
    let bomb = gzip(&vec![0u8; 20 << 20]);
    assert!(bomb.len() < 65536);
    let (status, _, body) = post(
        &s.opamp_url(),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
        bomb,
    )
    .await;
    assert_eq!(status, 413);
    assert!(String::from_utf8_lossy(&body).contains("after decompression"));
    // Plainly too big.
    let (status, _, _) = post(
        &s.opamp_url(),
        &[("Content-Type", "application/x-protobuf")],
        vec![0x0a; 70_000],
    )
    .await;
    assert_eq!(status, 413);
    // Others are still served.
    let (status, _, _) = http_exchange(&s.opamp_url(), &full_report(new_uid(), 0, "fine")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn malformed_messages_get_bad_request() {
    let s = Server::start();
    let (status, headers, body) = post(
        &s.opamp_url(),
        &[("Content-Type", "application/x-protobuf")],
        vec![0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/x-protobuf"
    );
    let r = decode(&body);
    let e = r.error_response.unwrap();
    assert_eq!(e.r#type, pb::ServerErrorResponseType::BadRequest as i32);
    assert!(
        e.error_message.starts_with("malformed AgentToServer"),
        "{}",
        e.error_message
    );
    // Wrong uid length.
    let mut m = full_report(new_uid(), 0, "x");
    m.instance_uid = vec![9; 26];
    let (status, _, reply) = http_exchange(&s.opamp_url(), &m).await;
    assert_eq!(status, 400);
    let r = reply.unwrap();
    assert_eq!(r.instance_uid, vec![9; 26]);
    assert_eq!(
        r.error_response.unwrap().error_message,
        "instance_uid must be 16 bytes, got 26"
    );
    assert!(r.capabilities == 0 && r.flags == 0 && r.remote_config.is_none());
    // Broken gzip.
    let (status, _, body) = post(
        &s.opamp_url(),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(decode(&body)
        .error_response
        .unwrap()
        .error_message
        .contains("not valid gzip"));
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_refused() {
    let s = Server::start();
    let body = full_report(new_uid(), 0, "x").encode_to_vec();
    let (status, _, text) = post(
        &s.opamp_url(),
        &[("Content-Type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(status, 415);
    assert!(String::from_utf8_lossy(&text).contains("application/x-protobuf"));
    let (status, _, _) = post(&s.opamp_url(), &[], body).await;
    assert_eq!(status, 415);
    let r = reqwest::get(s.opamp_url()).await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        400,
        "a GET without upgrade is not OpAMP"
    );
    let (status, _, _) = post(
        &s.opamp_url(),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "br"),
        ],
        vec![],
    )
    .await;
    assert_eq!(status, 415);
}

#[tokio::test]
async fn unknown_uid_poll_asks_for_full_state() {
    let s = Server::start();
    let uid = new_uid();
    let (_, _, r) = http_exchange(&s.opamp_url(), &heartbeat(uid, 7)).await;
    assert_eq!(r.unwrap().flags & REPORT_FULL_STATE, REPORT_FULL_STATE);
    let (_, _, r) = http_exchange(&s.opamp_url(), &full_report(uid, 8, "later")).await;
    assert_eq!(r.unwrap().flags, 0);
    // The same message twice (client retry): answered both times, no full-state request.
    let (s1, _, r1) = http_exchange(&s.opamp_url(), &heartbeat(uid, 9)).await;
    let (s2, _, r2) = http_exchange(&s.opamp_url(), &heartbeat(uid, 9)).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!((r1.unwrap().flags, r2.unwrap().flags), (0, 0));
}

#[tokio::test]
async fn agent_secret_401_and_max_agents_503() {
    let cfg = "opamp:\n  agent_secrets: [\"http-secret-abc\"]\n  max_agents: 1\n  retry_after_seconds: 30\n";
    let s = Server::start_with(Opts {
        config: Some(cfg.into()),
        ..Default::default()
    });
    let body = full_report(new_uid(), 0, "x").encode_to_vec();
    let (status, headers, _) = post(
        &s.opamp_url(),
        &[("Content-Type", "application/x-protobuf")],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(headers.get("www-authenticate").is_some());
    let (status, _, _) = post(
        &s.opamp_url(),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Authorization", "Bearer nope-nope-nope"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let first = new_uid();
    let auth = [
        ("Content-Type", "application/x-protobuf"),
        ("Authorization", "Bearer http-secret-abc"),
    ];
    let (status, _, _) = post(
        &s.opamp_url(),
        &auth,
        full_report(first, 0, "first").encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, headers, _) = post(
        &s.opamp_url(),
        &auth,
        full_report(new_uid(), 0, "second").encode_to_vec(),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "30");
    let (status, _, _) = post(&s.opamp_url(), &auth, heartbeat(first, 1).encode_to_vec()).await;
    assert_eq!(status, 200, "the agent already served is unaffected");
}

#[tokio::test]
async fn silent_http_agents_go_stale_then_disconnected_and_goodbye_is_immediate() {
    let cfg = "opamp:\n  heartbeat_interval_seconds: 1\n  stale_after_seconds: 1\n  disconnect_after_seconds: 3\n  ws_ping_interval_seconds: 1\n  ws_read_timeout_seconds: 5\ndatabase:\n  last_seen_flush_seconds: 1\n";
    let s = Server::start_with(Opts {
        config: Some(cfg.into()),
        ..Default::default()
    });
    let uid = new_uid();
    http_exchange(&s.opamp_url(), &full_report(uid, 0, "poller")).await;
    wait_status(&s, &uid, "connected").await;
    wait_status(&s, &uid, "stale").await;
    wait_status(&s, &uid, "disconnected").await;
    // Back with a poll, then a goodbye.
    http_exchange(&s.opamp_url(), &heartbeat(uid, 1)).await;
    wait_status(&s, &uid, "connected").await;
    let mut bye = heartbeat(uid, 2);
    bye.agent_disconnect = Some(pb::AgentDisconnect {});
    let (status, _, r) = http_exchange(&s.opamp_url(), &bye).await;
    assert_eq!(status, 200);
    assert_eq!(r.unwrap().instance_uid, uid.to_vec());
    wait_status(&s, &uid, "disconnected").await;
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let cfg = "http:\n  header_timeout_seconds: 1\n  body_timeout_seconds: 1\n";
    let s = Server::start_with(Opts {
        config: Some(cfg.into()),
        ..Default::default()
    });
    // Headers that never finish.
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.write_all(b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = c.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "connection closed by the header timeout"
    );
    // A body that trickles.
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.write_all(b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\n0123456789").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // Still serving.
    let (status, _, _) = http_exchange(&s.opamp_url(), &full_report(new_uid(), 0, "ok")).await;
    assert_eq!(status, 200);
}
