//! The sequences OpenTelemetry Collectors send (opamp-go's client, as the
//! `opamp` extension and the supervisor use it), against a real opampd over
//! real sockets: no full-state loops, no lost offers, no false clones, and the
//! WebSocket details opamp-go relies on.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use opamp_proto::pb;
use opamp_tests::client::*;
use opamp_tests::{stdout, wait_for, Opts, Server};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const REPORT_FULL_STATE: u64 = 1;
const APPLIED: pb::RemoteConfigStatuses = pb::RemoteConfigStatuses::Applied;

/// What a collector's `opamp` extension sends first: its description and
/// health, but no effective config yet (the collector has not built one).
fn report_without_effective_config(uid: [u8; 16], seq: u64) -> pb::AgentToServer {
    let mut m = full_report(uid, seq, "collector");
    m.effective_config = None;
    m
}

#[tokio::test]
async fn a_collector_with_no_effective_config_yet_is_not_asked_for_full_state_again() {
    let s = Server::start();
    let uid = new_uid();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let r = ws_exchange(&mut ws, &report_without_effective_config(uid, 0)).await;
    assert_eq!(r.flags & REPORT_FULL_STATE, 0, "a first report is full");
    for seq in 1..6 {
        let r = ws_exchange(&mut ws, &heartbeat(uid, seq)).await;
        assert_eq!(r.flags, 0, "heartbeat {seq}");
    }

    // Over plain HTTP, from an agent opampd does not know (it polls with a
    // sequence number past 0): asked once; its full state, still without an
    // effective config, is not asked for again.
    let uid = new_uid();
    let (_, _, r) = http_exchange(&s.opamp_url(), &heartbeat(uid, 7)).await;
    assert_eq!(r.unwrap().flags, REPORT_FULL_STATE);
    let (_, _, r) = http_exchange(&s.opamp_url(), &report_without_effective_config(uid, 8)).await;
    assert_eq!(r.unwrap().flags, 0, "answered with all the agent has");
    for seq in 9..12 {
        let (_, _, r) = http_exchange(&s.opamp_url(), &heartbeat(uid, seq)).await;
        assert_eq!(r.unwrap().flags, 0, "poll {seq}");
    }
}

#[tokio::test]
async fn a_gap_with_an_omitted_remote_config_status_asks_for_full_state() {
    let s = Server::start();
    let uid = new_uid();
    let (_, _, r) = http_exchange(&s.opamp_url(), &full_report(uid, 0, "gap")).await;
    assert_eq!(r.unwrap().flags, 0);
    // Messages 1..4 were lost; this one has everything but the remote-config status.
    let (_, _, r) = http_exchange(&s.opamp_url(), &full_report(uid, 5, "gap")).await;
    assert_eq!(r.unwrap().flags, REPORT_FULL_STATE);
}

/// An HTTP agent known to opampd, with a rollout of `name` offering it a config.
async fn http_agent_with_rollout(s: &Server, uid: [u8; 16], name: &str) {
    let (_, _, r) = http_exchange(
        &s.opamp_url(),
        &report_with(uid, 0, "svc", &[("fleet", name)]),
    )
    .await;
    assert!(r.unwrap().remote_config.is_none());
    let (code, v) = save(s, name, "receivers: {otlp: {}}\n", &format!("fleet={name}")).await;
    assert_eq!(code, 201, "{v}");
    start_rollout(s, name, json!({})).await;
}

#[tokio::test]
async fn an_http_retry_after_a_lost_reply_gets_the_offer_again() {
    let s = Server::start();
    let uid = new_uid();
    http_agent_with_rollout(&s, uid, "retried").await;
    let (_, _, r) = http_exchange(&s.opamp_url(), &heartbeat(uid, 1)).await;
    let offer = r.unwrap().remote_config.expect("offered at the next poll");
    // The reply was lost: opamp-go sends the same message again.
    let (_, _, r) = http_exchange(&s.opamp_url(), &heartbeat(uid, 1)).await;
    assert_eq!(
        r.unwrap().remote_config.as_ref(),
        Some(&offer),
        "a retry is answered as the original"
    );
    let (_, _, r) = http_exchange(&s.opamp_url(), &heartbeat(uid, 2)).await;
    assert!(r.unwrap().remote_config.is_none(), "offered, not repeated");
    // The agent reports that it still runs another config: the reply must carry it.
    let stale = applied(uid, 3, &[7; 32], APPLIED, "");
    let (_, _, r) = http_exchange(&s.opamp_url(), &stale).await;
    assert_eq!(r.unwrap().remote_config.as_ref(), Some(&offer));
    let done = applied(uid, 4, &offer.config_hash, APPLIED, "");
    let (_, _, r) = http_exchange(&s.opamp_url(), &done).await;
    assert!(r.unwrap().remote_config.is_none());
    let (_, _, r) = http_exchange(&s.opamp_url(), &heartbeat(uid, 5)).await;
    assert!(r.unwrap().remote_config.is_none());
}

#[tokio::test]
async fn a_websocket_agent_that_reconnects_before_applying_gets_the_offer_again() {
    let s = Server::start();
    let uid = new_uid();
    let (mut ws, first) = ws_agent(&s, uid, &[("fleet", "reconnect")]).await;
    assert!(first.remote_config.is_none());
    let (code, _) = save(&s, "reconnect", "x: 1\n", "fleet=reconnect").await;
    assert_eq!(code, 201);
    start_rollout(&s, "reconnect", json!({})).await;
    let offer = recv_offer(&mut ws).await;
    // The connection breaks before the agent applies it; opamp-go reconnects
    // and sends only uid, next sequence number and capabilities.
    drop(ws);
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let r = ws_exchange(&mut ws, &heartbeat(uid, 1)).await;
    assert_eq!(r.remote_config, Some(offer.clone()));
    assert_eq!(r.flags, 0, "nothing lost: the sequence continues");
    let r = ws_exchange(&mut ws, &applied(uid, 2, &offer.config_hash, APPLIED, "")).await;
    assert!(r.remote_config.is_none());
}

#[tokio::test]
async fn an_http_agent_polling_from_several_addresses_keeps_its_uid() {
    let s = Server::start();
    let uid = new_uid();
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .no_gzip()
            .build()
            .unwrap()
    };
    let send = |ip: &str, m: pb::AgentToServer| {
        let client = from(ip);
        let url = s.opamp_url();
        async move {
            use prost::Message as _;
            let r = client
                .post(url)
                .header("Content-Type", "application/x-protobuf")
                .body(m.encode_to_vec())
                .send()
                .await
                .unwrap();
            pb::ServerToAgent::decode(r.bytes().await.unwrap()).unwrap()
        }
    };
    // A load balancer with several nodes, a retry through another node, and
    // a restart of the collector (sequence 0) arriving from a new address.
    let sequence = [
        ("127.0.0.1", full_report(uid, 0, "lb")),
        ("127.0.0.2", heartbeat(uid, 1)),
        ("127.0.0.3", heartbeat(uid, 1)),
        ("127.0.0.1", heartbeat(uid, 2)),
        ("127.0.0.2", full_report(uid, 0, "lb")),
        ("127.0.0.3", heartbeat(uid, 1)),
    ];
    for (ip, m) in sequence {
        let seq = m.sequence_num;
        let r = send(ip, m).await;
        assert!(
            r.agent_identification.is_none(),
            "message {seq} from {ip} got a new uid"
        );
    }
    assert!(!s.logs().contains("duplicate instance uid"), "{}", s.logs());
}

#[tokio::test]
async fn a_reconnect_before_the_old_socket_closes_is_no_clone_but_two_live_sockets_are() {
    let s = Server::start();
    let uid = new_uid();
    let mut old = ws_connect(&s.ws_url(), &[]).await.unwrap();
    ws_exchange(&mut old, &full_report(uid, 0, "original")).await;
    ws_exchange(&mut old, &heartbeat(uid, 1)).await;
    // The agent reconnects while the old socket still looks open to opampd:
    // with the next number, and after a restart of its process (number 0).
    let mut next = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let r = ws_exchange(&mut next, &heartbeat(uid, 2)).await;
    assert!(
        r.agent_identification.is_none(),
        "a reconnect keeps the uid"
    );
    let mut restarted = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let r = ws_exchange(&mut restarted, &full_report(uid, 0, "restarted")).await;
    assert!(r.agent_identification.is_none(), "a restart keeps the uid");
    let r = ws_exchange(&mut restarted, &heartbeat(uid, 1)).await;
    assert!(r.agent_identification.is_none());
    // A socket the agent left goes on sending with numbers of its own: a clone.
    let r = ws_exchange(&mut next, &heartbeat(uid, 9)).await;
    let new = r
        .agent_identification
        .expect("a new uid for the clone")
        .new_instance_uid;
    assert_eq!(new.len(), 16);
    assert_ne!(new, uid.to_vec());
    assert_eq!(r.instance_uid, uid.to_vec());
    let r = ws_exchange(&mut restarted, &heartbeat(uid, 2)).await;
    assert!(r.agent_identification.is_none(), "the agent keeps its uid");
    wait_for(
        "the restarted agent's description",
        Duration::from_secs(10),
        || async {
            let (_, v) = s.get(&format!("/api/v1/agents/{}", uid_str(&uid))).await;
            (v["identifying_attributes"]["service.name"] == "restarted").then_some(())
        },
    )
    .await;
    assert!(s.logs().contains("duplicate instance uid"), "{}", s.logs());
}

#[tokio::test]
async fn the_agents_close_frame_is_answered() {
    let s = Server::start();
    let uid = new_uid();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    ws_exchange(&mut ws, &full_report(uid, 0, "closing")).await;
    // What opamp-go does on Stop: agent_disconnect, then close 1000.
    let mut bye = heartbeat(uid, 1);
    bye.agent_disconnect = Some(pb::AgentDisconnect {});
    ws_exchange(&mut ws, &bye).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .unwrap();
    let answer = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an answer to the close frame within 5 s")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected the server's close frame, got {other:?}"),
        }
    };
    assert_eq!(answer.map(|f| f.code), Some(CloseCode::Normal));
}

#[tokio::test]
async fn an_agent_that_answers_pings_stays_connected_without_heartbeats() {
    let cfg = "opamp:\n  heartbeat_interval_seconds: 1\n  ws_ping_interval_seconds: 1\n  ws_read_timeout_seconds: 30\n  stale_after_seconds: 4\n  disconnect_after_seconds: 8\ndatabase:\n  last_seen_flush_seconds: 1\n";
    let s = Server::start_with(Opts {
        config: Some(cfg.into()),
        ..Default::default()
    });
    let uid = new_uid();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let mut m = full_report(uid, 0, "quiet");
    m.capabilities &= !0x2000;
    ws_exchange(&mut ws, &m).await;
    // Read for 7 s, past the 4 s staleness window (tungstenite answers each
    // ping with a pong), sending nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(7);
    while let Ok(next) = tokio::time::timeout_at(deadline, ws.next()).await {
        assert!(matches!(next, Some(Ok(Message::Ping(_)))), "{next:?}");
    }
    let (_, v) = s.get(&format!("/api/v1/agents/{}", uid_str(&uid))).await;
    assert_eq!(v["status"], "connected", "{v}");
}

#[tokio::test]
async fn past_max_agents_a_new_uid_on_an_existing_websocket_gets_unavailable() {
    let cfg = "opamp:\n  max_agents: 1\n  retry_after_seconds: 42\n";
    let s = Server::start_with(Opts {
        config: Some(cfg.into()),
        ..Default::default()
    });
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let first = new_uid();
    ws_exchange(&mut ws, &full_report(first, 0, "first")).await;
    let second = new_uid();
    let r = ws_exchange(&mut ws, &full_report(second, 0, "second")).await;
    let error = r.error_response.as_ref().expect("error_response");
    assert_eq!(
        error.r#type,
        pb::ServerErrorResponseType::Unavailable as i32
    );
    assert_eq!(
        error.details,
        Some(pb::server_error_response::Details::RetryInfo(
            pb::RetryInfo {
                retry_after_nanoseconds: 42_000_000_000
            }
        ))
    );
    assert_eq!(r.instance_uid, second.to_vec());
    assert!(r.capabilities == 0 && r.remote_config.is_none() && r.flags == 0);
    let (code, _) = s.get(&format!("/api/v1/agents/{}", uid_str(&second))).await;
    assert_eq!(code, 404, "a refused agent is not stored");
    // The agent already there is unaffected.
    let r = ws_exchange(&mut ws, &heartbeat(first, 1)).await;
    assert!(r.error_response.is_none());
    wait_for("first agent listed", Duration::from_secs(10), || async {
        let (code, _) = s.get(&format!("/api/v1/agents/{}", uid_str(&first))).await;
        (code == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_paused_rollout_does_not_reach_agents_that_match_later() {
    let s = Server::start();
    let first = new_uid();
    let (mut ws, _) = ws_agent(&s, first, &[("fleet", "edge")]).await;
    let (code, _) = save(&s, "edge", "v: 1\n", "fleet=edge").await;
    assert_eq!(code, 201);
    start_rollout(&s, "edge", json!({})).await;
    let v1 = recv_offer(&mut ws).await;
    ws_exchange(&mut ws, &applied(first, 1, &v1.config_hash, APPLIED, "")).await;
    wait_rollout(&s, "edge", "version 1 completed", |v| {
        v["state"] == "completed"
    })
    .await;
    let (code, _) = save(&s, "edge", "v: 2\n", "fleet=edge").await;
    assert_eq!(code, 201);
    start_rollout(&s, "edge", json!({"max_failures": 0})).await;
    let v2 = recv_offer(&mut ws).await;
    assert_eq!(files(&v2)["edge"], "v: 2\n");
    let failed = applied(
        first,
        2,
        &v2.config_hash,
        pb::RemoteConfigStatuses::Failed,
        "bad config",
    );
    ws_exchange(&mut ws, &failed).await;
    wait_rollout(&s, "edge", "version 2 paused", |v| v["state"] == "paused").await;
    // A collector that starts now matches the selector: it gets the last
    // completed version, not the one that failed.
    let later = new_uid();
    let (mut other, reply) = ws_agent(&s, later, &[("fleet", "edge")]).await;
    let offer = match reply.remote_config {
        Some(rc) => rc,
        None => recv_offer(&mut other).await,
    };
    assert_eq!(files(&offer)["edge"], "v: 1\n");
    assert_eq!(offer.config_hash, v1.config_hash);
}

#[tokio::test]
async fn a_configuration_too_big_to_offer_is_refused_at_save_time() {
    let cfg = "opamp:\n  max_send_bytes: 2048\n";
    let s = Server::start_with(Opts {
        config: Some(cfg.into()),
        ..Default::default()
    });
    let body = format!("# {}\nx: 1\n", "y".repeat(2100));
    let (code, v) = save(&s, "big", &body, "").await;
    assert_eq!(code, 413, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("opamp.max_send_bytes (2048 bytes)") && message.contains("\"big\""),
        "{message}"
    );
    let (code, _) = s.get("/api/v1/configurations/big").await;
    assert_eq!(code, 404, "nothing saved");
    let (code, v) = save(&s, "small", "x: 1\n", "").await;
    assert_eq!(code, 201, "{v}");
}

/// Bytes of a ServerToAgent as sent (the WebSocket header byte aside).
fn sent_len(m: &pb::ServerToAgent) -> usize {
    prost::Message::encoded_len(m)
}

#[tokio::test]
async fn configurations_too_big_together_are_not_sent_and_the_agent_shows_as_failed() {
    const LIMIT: usize = 2048;
    let s = Server::start_with(Opts {
        config: Some(format!("opamp:\n  max_send_bytes: {LIMIT}\n")),
        ..Default::default()
    });
    // Each fits alone; together they do not.
    let body = |c: char| format!("# {}\nx: 1\n", c.to_string().repeat(1200));
    assert_eq!(save(&s, "base", &body('a'), "").await.0, 201);
    assert_eq!(save(&s, "prod", &body('b'), "env=prod").await.0, 201);
    start_rollout(&s, "prod", json!({})).await;

    // One WebSocket and one plain-HTTP agent receive `base` alone.
    let (ws_uid, http_uid) = (new_uid(), new_uid());
    let (mut ws, first) = ws_agent(&s, ws_uid, &[]).await;
    assert!(first.remote_config.is_none());
    let (code, _, first) =
        http_exchange(&s.opamp_url(), &report_with(http_uid, 0, "svc", &[])).await;
    assert_eq!(code, 200);
    assert!(first.unwrap().remote_config.is_none());
    start_rollout(&s, "base", json!({"max_failures": 0})).await;
    let rc = recv_offer(&mut ws).await;
    assert_eq!(files(&rc).len(), 1);
    let (_, _, reply) = http_exchange(&s.opamp_url(), &heartbeat(http_uid, 1)).await;
    assert_eq!(
        files(&reply.unwrap().remote_config.expect("base offered")).len(),
        1
    );

    // Labelled env=prod, each should run base + prod: too big to send.
    for uid in [&ws_uid, &http_uid] {
        let (code, v) = s
            .send_json(
                "PATCH",
                &format!("/api/v1/agents/{}/labels", uid_str(uid)),
                json!({"labels": {"env": "prod"}}),
            )
            .await;
        assert_eq!(code, 200, "{v}");
    }
    let reply = ws_exchange(&mut ws, &heartbeat(ws_uid, 1)).await;
    assert!(
        reply.remote_config.is_none(),
        "nothing pushed, nothing sent"
    );
    assert!(sent_len(&reply) <= LIMIT);
    let (code, _, reply) = http_exchange(&s.opamp_url(), &heartbeat(http_uid, 2)).await;
    let reply = reply.expect("a protobuf reply");
    assert_eq!(code, 200);
    assert!(
        reply.remote_config.is_none(),
        "the poll is answered without it"
    );
    assert!(sent_len(&reply) <= LIMIT);
    for uid in [&ws_uid, &http_uid] {
        let a = wait_for("shown as failed", Duration::from_secs(10), || async {
            let a = agent(&s, uid).await;
            (a["remote_config"]["status"] == "failed").then_some(a)
        })
        .await;
        let error = a["remote_config"]["error"].as_str().unwrap();
        assert!(
            error.contains("opamp.max_send_bytes (2048 bytes)")
                && error.contains("base v1, prod v1"),
            "{error}"
        );
    }
    // Not recorded as offered: a retry or a reconnect does not get it either,
    // and nothing over the limit is ever sent.
    let reply = ws_exchange(&mut ws, &heartbeat(ws_uid, 1)).await;
    assert!(reply.remote_config.is_none() && sent_len(&reply) <= LIMIT);
    drop(ws);
    let (mut ws, reply) = ws_agent(&s, ws_uid, &[]).await;
    assert!(reply.remote_config.is_none() && sent_len(&reply) <= LIMIT);
    assert_quiet(&mut ws, "no offer after a reconnect").await;

    // The rollout counts both agents as failed, with the reason.
    let st = wait_rollout(&s, "base", "both failed", |v| v["failed"] == 2).await;
    assert_eq!(st["state"], "paused", "{st}");
    for f in st["failures"].as_array().unwrap() {
        assert!(
            f["error"]
                .as_str()
                .unwrap()
                .contains("opamp.max_send_bytes"),
            "{f}"
        );
    }
    let out = s.ctl(&["agents", "show", &uid_str(&http_uid)]);
    let text = stdout(&out);
    assert!(
        text.contains("status=failed") && text.contains("max_send_bytes"),
        "{text}"
    );

    // What is known at rollout time is refused then, naming the agents.
    assert_eq!(save(&s, "base", &body('c'), "").await.0, 201);
    let (code, v) = s
        .send_json("POST", "/api/v1/configurations/base/rollout", json!({}))
        .await;
    assert_eq!(code, 413, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("opamp.max_send_bytes (2048 bytes)")
            && message.contains("base v2 + prod v1")
            && message.contains("and 1 other agent"),
        "{message}"
    );
    assert_eq!(
        rollout_status(&s, "base").await["version"],
        1,
        "not started"
    );
}
