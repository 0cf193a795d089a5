//! OpAMP over WebSocket against a real opampd: every reply checked exactly.

use futures_util::{SinkExt, StreamExt};
use opamp_proto::pb;
use opamp_tests::client::*;
use opamp_tests::{wait_for, Opts, Server};
use prost::Message as _;
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const ACCEPTS_STATUS: u64 = 1;
const REPORT_FULL_STATE: u64 = 1;

async fn agent_status(s: &Server, uid: &[u8; 16]) -> (u16, Value) {
    s.get(&format!("/api/v1/agents/{}", uid_str(uid))).await
}

async fn wait_status(s: &Server, uid: &[u8; 16], want: &str) -> Value {
    wait_for(
        &format!("agent {} {want}", uid_str(uid)),
        Duration::from_secs(15),
        || async {
            let (code, v) = agent_status(s, uid).await;
            (code == 200 && v["status"] == want).then_some(v)
        },
    )
    .await
}

fn bad_request_message(r: &pb::ServerToAgent) -> String {
    let e = r.error_response.as_ref().expect("error_response set");
    assert_eq!(e.r#type, pb::ServerErrorResponseType::BadRequest as i32);
    assert!(
        r.remote_config.is_none() && r.command.is_none() && r.flags == 0 && r.capabilities == 0,
        "error replies carry nothing else: {r:?}"
    );
    e.error_message.clone()
}

#[tokio::test]
async fn first_reply_has_capabilities_and_agent_is_listed() {
    let s = Server::start();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let uid = new_uid();
    let r = ws_exchange(&mut ws, &full_report(uid, 0, "svc-ws")).await;
    assert_eq!(r.instance_uid, uid.to_vec());
    assert_eq!(r.capabilities & ACCEPTS_STATUS, ACCEPTS_STATUS);
    assert_eq!(
        r.flags & REPORT_FULL_STATE,
        0,
        "a complete first report needs no full-state request"
    );
    assert!(r.error_response.is_none());
    let v = wait_status(&s, &uid, "connected").await;
    assert_eq!(v["transport"], "websocket");
    assert_eq!(v["identifying_attributes"]["service.name"], "svc-ws");
    assert_eq!(v["non_identifying_attributes"]["host.name"], "test-host");
    assert_eq!(v["health"]["healthy"], true);
    assert!(v["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "AcceptsRemoteConfig"));
    assert!(v["effective_config_hash"]
        .as_str()
        .is_some_and(|h| h.len() == 64));
    // In-sequence heartbeats: no full-state request, omitted fields unchanged.
    let r = ws_exchange(&mut ws, &heartbeat(uid, 1)).await;
    assert_eq!(r.flags, 0);
    assert_eq!(r.instance_uid, uid.to_vec());
    let (_, v) = agent_status(&s, &uid).await;
    assert_eq!(
        v["identifying_attributes"]["service.name"], "svc-ws",
        "omitted description means unchanged"
    );
    assert_eq!(v["health"]["healthy"], true);
}

#[tokio::test]
async fn unknown_agent_and_sequence_gap_get_report_full_state() {
    let s = Server::start();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let uid = new_uid();
    let r = ws_exchange(&mut ws, &heartbeat(uid, 41)).await;
    assert_eq!(
        r.flags & REPORT_FULL_STATE,
        REPORT_FULL_STATE,
        "unknown agent sends only a heartbeat"
    );
    let r = ws_exchange(&mut ws, &full_report(uid, 42, "svc")).await;
    assert_eq!(r.flags, 0);
    let r = ws_exchange(&mut ws, &heartbeat(uid, 43)).await;
    assert_eq!(r.flags, 0);
    let r = ws_exchange(&mut ws, &heartbeat(uid, 50)).await;
    assert_eq!(
        r.flags & REPORT_FULL_STATE,
        REPORT_FULL_STATE,
        "sequence gap with omitted fields"
    );
    let r = ws_exchange(&mut ws, &full_report(uid, 51, "svc")).await;
    assert_eq!(r.flags, 0);
}

#[tokio::test]
async fn bad_input_gets_bad_request_and_the_connection_keeps_working() {
    let s = Server::start();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    // Non-zero header.
    let mut framed = vec![1u8];
    framed.extend(full_report(new_uid(), 0, "x").encode_to_vec());
    ws.send(Message::Binary(framed.into())).await.unwrap();
    let m = bad_request_message(&ws_recv(&mut ws).await);
    assert!(m.contains("header 1"), "{m}");
    // Garbage protobuf.
    ws.send(Message::Binary(vec![0u8, 0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    let m = bad_request_message(&ws_recv(&mut ws).await);
    assert!(m.contains("malformed AgentToServer"), "{m}");
    // Empty message (no header byte).
    ws.send(Message::Binary(Vec::new().into())).await.unwrap();
    let m = bad_request_message(&ws_recv(&mut ws).await);
    assert!(m.contains("header byte is missing"), "{m}");
    // Instance uid of the wrong length.
    let mut msg = full_report(new_uid(), 0, "x");
    msg.instance_uid = vec![1, 2, 3];
    let r = ws_exchange(&mut ws, &msg).await;
    assert_eq!(
        r.instance_uid,
        vec![1, 2, 3],
        "the uid is echoed even when invalid"
    );
    assert_eq!(
        bad_request_message(&r),
        "instance_uid must be 16 bytes, got 3"
    );
    // Text frame.
    ws.send(Message::Text("hello".into())).await.unwrap();
    let m = bad_request_message(&ws_recv(&mut ws).await);
    assert!(m.contains("text frames"), "{m}");
    // Still serving on the same connection.
    let uid = new_uid();
    let r = ws_exchange(&mut ws, &full_report(uid, 0, "after-bad-input")).await;
    assert!(r.error_response.is_none());
    assert_eq!(r.instance_uid, uid.to_vec());
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let s = Server::start_with(Opts {
        config: Some("opamp:\n  max_message_bytes: 4096\n".into()),
        ..Default::default()
    });
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let mut msg = full_report(new_uid(), 0, "big");
    msg.custom_message = Some(pb::CustomMessage {
        capability: "x".into(),
        r#type: "y".into(),
        data: vec![7; 8192],
    });
    ws_send(&mut ws, &msg).await;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.expect("close frame has a code").code, CloseCode::Size);
    // Others are unaffected.
    let mut ws2 = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let r = ws_exchange(&mut ws2, &full_report(new_uid(), 0, "small")).await;
    assert!(r.error_response.is_none());
}

#[tokio::test]
async fn one_connection_carries_several_agents() {
    let s = Server::start();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let (a, b) = (new_uid(), new_uid());
    let ra = ws_exchange(&mut ws, &full_report(a, 0, "proxy-a")).await;
    let rb = ws_exchange(&mut ws, &full_report(b, 0, "proxy-b")).await;
    assert_eq!(ra.instance_uid, a.to_vec());
    assert_eq!(rb.instance_uid, b.to_vec());
    wait_status(&s, &a, "connected").await;
    wait_status(&s, &b, "connected").await;
    ws.close(None).await.unwrap();
    drop(ws);
    wait_status(&s, &a, "disconnected").await;
    let v = wait_status(&s, &b, "disconnected").await;
    assert_eq!(
        v["identifying_attributes"]["service.name"], "proxy-b",
        "agents are never forgotten"
    );
}

#[tokio::test]
async fn agent_disconnect_marks_the_agent_disconnected_but_keeps_it() {
    let s = Server::start();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let uid = new_uid();
    ws_exchange(&mut ws, &full_report(uid, 0, "bye")).await;
    wait_status(&s, &uid, "connected").await;
    let mut bye = heartbeat(uid, 1);
    bye.agent_disconnect = Some(pb::AgentDisconnect {});
    let r = ws_exchange(&mut ws, &bye).await;
    assert_eq!(
        r.instance_uid,
        uid.to_vec(),
        "a reply to every message, goodbye included"
    );
    let v = wait_status(&s, &uid, "disconnected").await;
    assert_eq!(v["identifying_attributes"]["service.name"], "bye");
    wait_for(
        "connected and disconnected events",
        Duration::from_secs(10),
        || async {
            let (_, events) = s
                .get(&format!("/api/v1/agents/{}/events", uid_str(&uid)))
                .await;
            let kinds: Vec<String> = events["items"]
                .as_array()?
                .iter()
                .filter_map(|e| e["event"].as_str().map(str::to_owned))
                .collect();
            (kinds.contains(&"connected".to_string())
                && kinds.contains(&"disconnected".to_string()))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn idle_connections_are_pinged_and_silent_ones_closed() {
    let cfg = "opamp:\n  ws_ping_interval_seconds: 1\n  ws_read_timeout_seconds: 3\n  heartbeat_interval_seconds: 1\n  stale_after_seconds: 1\n  disconnect_after_seconds: 2\ndatabase:\n  last_seen_flush_seconds: 1\n";
    let s = Server::start_with(Opts {
        config: Some(cfg.into()),
        ..Default::default()
    });
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let uid = new_uid();
    ws_exchange(&mut ws, &full_report(uid, 0, "quiet")).await;
    // Reading answers pings (tungstenite replies with pongs): the connection stays up.
    let ping = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a ping within 5 s")
        {
            Some(Ok(Message::Ping(p))) => break p,
            Some(Ok(_)) => continue,
            other => panic!("expected a ping, got {other:?}"),
        }
    };
    drop(ping);
    // Stop reading (no pongs): the server must close the connection after its read timeout.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The server sent close 1001 and dropped the socket; depending on timing the
    // client sees the close frame or a reset while answering queued pings.
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => {
                break f.map(|f| f.code == CloseCode::Away).unwrap_or(false)
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => break true,
            Err(_) => panic!("connection still open after the read timeout"),
        }
    };
    assert!(ended, "closed with 1001 (or reset)");
    wait_status(&s, &uid, "disconnected").await;
    assert!(
        s.logs().contains("closing silent WebSocket"),
        "{}",
        s.logs()
    );
}

#[tokio::test]
async fn restart_command_is_pushed_alone() {
    let s = Server::start();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let uid = new_uid();
    ws_exchange(&mut ws, &full_report(uid, 0, "restartable")).await;
    wait_status(&s, &uid, "connected").await;
    let (code, body) = s
        .send_json(
            "POST",
            &format!("/api/v1/agents/{}/restart", uid_str(&uid)),
            Value::Null,
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let cmd = ws_recv(&mut ws).await;
    assert_eq!(
        cmd.command.map(|c| c.r#type),
        Some(pb::CommandType::Restart as i32)
    );
    assert_eq!(cmd.instance_uid, uid.to_vec());
    assert!(
        cmd.remote_config.is_none()
            && cmd.flags == 0
            && cmd.error_response.is_none()
            && cmd.agent_identification.is_none()
    );
    // An agent without AcceptsRestartCommand is refused.
    let other = new_uid();
    let mut m = full_report(other, 0, "no-restart");
    m.capabilities &= !0x400;
    ws_exchange(&mut ws, &m).await;
    wait_status(&s, &other, "connected").await;
    let (code, body) = s
        .send_json(
            "POST",
            &format!("/api/v1/agents/{}/restart", uid_str(&other)),
            Value::Null,
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("AcceptsRestartCommand"));
}

#[tokio::test]
async fn agent_secret_is_checked_before_the_upgrade() {
    let cfg = "opamp:\n  agent_secrets: [\"first-secret-123\", \"second-secret-456\"]\n";
    let s = Server::start_with(Opts {
        config: Some(cfg.into()),
        ..Default::default()
    });
    for headers in [vec![], vec![("Authorization", "Bearer wrong-secret-000")]] {
        match ws_connect(&s.ws_url(), &headers).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                assert!(resp.headers().get("www-authenticate").is_some());
            }
            other => panic!(
                "expected 401 before upgrade, got {:?}",
                other.map(|_| "upgraded")
            ),
        }
    }
    for headers in [
        vec![("Authorization", "Bearer first-secret-123")],
        vec![("Secret-Key", "second-secret-456")],
    ] {
        let mut ws = ws_connect(&s.ws_url(), &headers)
            .await
            .expect("accepted secret");
        let r = ws_exchange(&mut ws, &full_report(new_uid(), 0, "authed")).await;
        assert!(r.error_response.is_none());
    }
    assert!(
        !s.logs().contains("first-secret-123"),
        "secrets never logged"
    );
    let metrics = reqwest::get(format!("{}/metrics", s.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let health = reqwest::get(format!("{}/health", s.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = s.token();
    for secret in [
        "first-secret-123",
        "second-secret-456",
        opamp_tests::jwt_key(),
        token.as_str(),
    ] {
        assert!(
            !metrics.contains(secret) && !health.contains(secret),
            "a secret in /metrics or /health"
        );
    }
}

#[tokio::test]
async fn past_max_agents_new_connections_get_503_with_retry_after() {
    let cfg = "opamp:\n  max_agents: 1\n  retry_after_seconds: 42\n";
    let s = Server::start_with(Opts {
        config: Some(cfg.into()),
        ..Default::default()
    });
    let mut first = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let uid = new_uid();
    ws_exchange(&mut first, &full_report(uid, 0, "first")).await;
    match ws_connect(&s.ws_url(), &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers().get("retry-after").unwrap(), "42");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| "upgraded")),
    }
    // The existing agent is unaffected.
    let r = ws_exchange(&mut first, &heartbeat(uid, 1)).await;
    assert!(r.error_response.is_none());
}

#[tokio::test]
async fn request_instance_uid_rekeys_the_agent() {
    let s = Server::start();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let temp = new_uid();
    let mut m = full_report(temp, 0, "wants-uid");
    m.flags = 1;
    let r = ws_exchange(&mut ws, &m).await;
    assert_eq!(r.instance_uid, temp.to_vec());
    let new: [u8; 16] = r
        .agent_identification
        .expect("new uid")
        .new_instance_uid
        .try_into()
        .unwrap();
    let r = ws_exchange(&mut ws, &heartbeat(new, 1)).await;
    assert_eq!(r.instance_uid, new.to_vec());
    assert_eq!(
        r.flags, 0,
        "state moved to the new uid: no full-state request"
    );
    let v = wait_status(&s, &new, "connected").await;
    assert_eq!(v["identifying_attributes"]["service.name"], "wants-uid");
    assert_eq!(
        agent_status(&s, &temp).await.0,
        404,
        "the temporary uid is not kept"
    );
}

#[tokio::test]
async fn agents_survive_a_restart_and_come_back() {
    let mut s = Server::start();
    let uid = new_uid();
    {
        let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
        ws_exchange(&mut ws, &full_report(uid, 0, "survivor")).await;
        ws_exchange(&mut ws, &heartbeat(uid, 1)).await;
        wait_status(&s, &uid, "connected").await;
        // Graceful stop closes the socket cleanly (1001) before exiting 0.
        let stopper = std::thread::spawn({
            let pid = s.pid();
            move || opamp_tests::signal(pid, libc::SIGTERM)
        });
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("closed on shutdown")
            {
                Some(Ok(Message::Close(f))) => break f,
                Some(Ok(_)) => continue,
                other => panic!("expected close, got {other:?}"),
            }
        };
        stopper.join().unwrap();
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    }
    assert_eq!(s.stop(), Some(0), "graceful shutdown exits 0");
    s.start_again();
    let v = wait_status(&s, &uid, "disconnected").await;
    assert_eq!(v["identifying_attributes"]["service.name"], "survivor");
    // Reconnect with the next sequence number and nothing else: state was kept, no full-state request.
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let r = ws_exchange(&mut ws, &heartbeat(uid, 2)).await;
    assert_eq!(
        r.flags & REPORT_FULL_STATE,
        0,
        "sequence continues after restart: no needless full-state request"
    );
    assert_eq!(r.capabilities & ACCEPTS_STATUS, ACCEPTS_STATUS);
    wait_status(&s, &uid, "connected").await;
}
