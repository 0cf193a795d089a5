//! Attacks on the agent plane of a real opampd: sessions past the limits,
//! browser origins, a uid spoken for by a second client, and acknowledgements
//! of remote-config statuses whose commit failed.

mod common;

use common::*;
use opamp_proto::pb;
use opamp_tests::client::*;
use opamp_tests::{wait_for, Opts, Server};
use std::time::Duration;

const REQUEST_INSTANCE_UID: u64 = 1;

fn start(config: &str) -> Server {
    Server::start_with(Opts {
        config: Some(config.into()),
        ..Default::default()
    })
}

/// Waits until the API lists `n` connected agents (a new agent is stored a
/// writer batch after it is live), and checks that it stays `n`.
async fn connected(s: &Server, n: u64) {
    let count = || async {
        let (_, v) = s.get("/api/v1/agents?status=connected").await;
        v["total"].as_u64().unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = count().await;
    while last != n {
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} agents connected, the API lists {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = count().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count().await, n);
}

fn unavailable_after(r: &pb::ServerToAgent) -> Option<u64> {
    let e = r.error_response.as_ref()?;
    (e.r#type == pb::ServerErrorResponseType::Unavailable as i32).then_some(())?;
    match e.details {
        Some(pb::server_error_response::Details::RetryInfo(ref info)) => {
            Some(info.retry_after_nanoseconds / 1_000_000_000)
        }
        None => Some(0),
    }
}

#[tokio::test]
async fn max_agents_holds_wherever_a_session_is_created() {
    let s = start("opamp:\n  max_agents: 2\n  retry_after_seconds: 42\n");
    // Two plain-HTTP agents fill the server.
    let first = new_uid();
    let (code, _, _) = http_exchange(&s.opamp_url(), &full_report(first, 0, "first")).await;
    assert_eq!(code, 200);
    let second = new_uid();
    let (code, _, _) = http_exchange(&s.opamp_url(), &full_report(second, 0, "second")).await;
    assert_eq!(code, 200);

    // A connected agent moving to a new uid replaces its session: still two.
    let mut m = heartbeat(first, 1);
    m.flags = REQUEST_INSTANCE_UID;
    let (code, _, r) = http_exchange(&s.opamp_url(), &m).await;
    assert_eq!(code, 200);
    let moved: [u8; 16] = r
        .unwrap()
        .agent_identification
        .expect("a new uid")
        .new_instance_uid
        .try_into()
        .unwrap();
    let (code, _, _) = http_exchange(&s.opamp_url(), &heartbeat(moved, 2)).await;
    assert_eq!(code, 200);

    // Past the limit: a new plain-HTTP agent, a stranger asking for a uid
    // (again and again), a new agent on an open WebSocket, a new WebSocket.
    let (code, headers, _) = http_exchange(&s.opamp_url(), &full_report(new_uid(), 0, "x")).await;
    assert_eq!(code, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "42");
    for _ in 0..5 {
        let mut m = full_report(new_uid(), 0, "wants-a-uid");
        m.flags = REQUEST_INSTANCE_UID;
        let (code, headers, _) = http_exchange(&s.opamp_url(), &m).await;
        assert_eq!(
            code, 503,
            "RequestInstanceUid creates no session past the limit"
        );
        assert_eq!(headers.get("retry-after").unwrap(), "42");
    }
    match ws_connect(&s.ws_url(), &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| "upgraded")),
    }
    connected(&s, 2).await;

    // Room again after one leaves; the uid requested on a WebSocket counts too.
    let (code, _, _) =
        http_exchange(&s.opamp_url(), &agent::message::disconnect(second, 1, CAPS)).await;
    assert_eq!(code, 200);
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let mut m = full_report(new_uid(), 0, "ws-wants-a-uid");
    m.flags = REQUEST_INSTANCE_UID;
    let r = ws_exchange(&mut ws, &m).await;
    assert!(r.agent_identification.is_some(), "{r:?}");
    let mut m = full_report(new_uid(), 0, "one-more-on-the-socket");
    m.flags = REQUEST_INSTANCE_UID;
    let r = ws_exchange(&mut ws, &m).await;
    assert_eq!(unavailable_after(&r), Some(42), "{r:?}");
    assert!(r.agent_identification.is_none());
    let (code, _, _) = http_exchange(&s.opamp_url(), &heartbeat(moved, 3)).await;
    assert_eq!(code, 200, "agents already served are unaffected");
    connected(&s, 2).await;
}

#[tokio::test]
async fn a_websocket_carries_at_most_max_agents_per_connection() {
    let s = start("opamp:\n  max_agents_per_connection: 3\n");
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let carried = [new_uid(), new_uid(), new_uid()];
    for (i, uid) in carried.iter().enumerate() {
        let r = ws_exchange(&mut ws, &full_report(*uid, 0, &format!("proxied-{i}"))).await;
        assert!(r.error_response.is_none(), "{r:?}");
    }
    for _ in 0..3 {
        let extra = new_uid();
        let r = ws_exchange(&mut ws, &full_report(extra, 0, "one-too-many")).await;
        let e = r.error_response.expect("an error reply");
        assert_eq!(e.r#type, pb::ServerErrorResponseType::BadRequest as i32);
        assert!(
            e.error_message.contains("opamp.max_agents_per_connection"),
            "{}",
            e.error_message
        );
        let (code, _) = s.get(&format!("/api/v1/agents/{}", uid_str(&extra))).await;
        assert_eq!(code, 404, "a refused agent is not stored");
    }
    // The carried agents go on, and another connection is welcome.
    let r = ws_exchange(&mut ws, &heartbeat(carried[0], 1)).await;
    assert!(r.error_response.is_none(), "{r:?}");
    let (_other, r) = ws_agent(&s, new_uid(), &[]).await;
    assert!(r.error_response.is_none(), "{r:?}");
    connected(&s, 4).await;
}

#[tokio::test]
async fn browser_origins_are_refused_unless_allowed() {
    let s = start("opamp:\n  allowed_origins: [\"https://console.example.org\"]\n");
    for origin in ["https://evil.example.net", "null", "http://127.0.0.1"] {
        match ws_connect(&s.ws_url(), &[("Origin", origin)]).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{origin}");
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains("opamp.allowed_origins"), "{body}");
            }
            other => panic!(
                "{origin}: expected 403, got {:?}",
                other.map(|_| "upgraded")
            ),
        }
    }
    // A page cannot register over plain HTTP either.
    let transport = agent::http::HttpTransport::new(
        &s.opamp_url(),
        &agent::http::HttpOptions::default().header("Origin", "https://evil.example.net"),
    )
    .unwrap();
    let uid = new_uid();
    let reply = transport.post(&full_report(uid, 0, "page")).await.unwrap();
    assert_eq!(reply.status, 403);
    let (code, _) = s.get(&format!("/api/v1/agents/{}", uid_str(&uid))).await;
    assert_eq!(code, 404);
    assert!(s
        .logs()
        .contains("browser Origin not in opamp.allowed_origins"));
    // Agents (no Origin) and the listed origin are served.
    let (_, r) = ws_agent(&s, new_uid(), &[]).await;
    assert!(r.error_response.is_none());
    let mut ws = ws_connect(&s.ws_url(), &[("Origin", "https://console.example.org")])
        .await
        .expect("an allowed origin is served");
    let r = ws_exchange(&mut ws, &full_report(new_uid(), 0, "console")).await;
    assert!(r.error_response.is_none());
}

#[tokio::test]
async fn plain_http_cannot_speak_for_an_agent_on_a_live_websocket() {
    let s = Server::start();
    let uid = new_uid();
    let (mut ws, _) = ws_agent(&s, uid, &[]).await;
    for seq in 1..=3 {
        let (code, _, _) = http_exchange(&s.opamp_url(), &heartbeat(uid, seq)).await;
        assert_eq!(code, 409);
        let mut status = full_report(uid, seq, "impostor");
        status.remote_config_status = Some(agent::message::remote_config_status(
            &[7; 32],
            pb::RemoteConfigStatuses::Failed,
            "forged",
        ));
        let (code, _, _) = http_exchange(&s.opamp_url(), &status).await;
        assert_eq!(code, 409);
    }
    // The WebSocket agent keeps working, and nothing the impostor said is stored.
    let r = ws_exchange(&mut ws, &heartbeat(uid, 1)).await;
    assert!(r.error_response.is_none(), "{r:?}");
    let v = agent(&s, &uid).await;
    assert_eq!(v["transport"], "websocket", "{v}");
    assert_eq!(v["identifying_attributes"]["service.name"], "svc", "{v}");
    assert!(v["remote_config"]["reported_hash"].is_null(), "{v}");
    // Once the WebSocket is gone, the agent may poll over plain HTTP.
    agent::ws::close(&mut ws).await;
    wait_for(
        "the agent moves to plain HTTP",
        Duration::from_secs(10),
        || async {
            let (code, _, _) = http_exchange(&s.opamp_url(), &heartbeat(uid, 2)).await;
            (code == 200).then_some(())
        },
    )
    .await;
}

/// Holds SQLite's write lock on opampd's database from another connection,
/// so that every commit of opampd's writer fails (busy) until dropped.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(db: &std::path::Path) -> WriteLock {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        WriteLock(conn)
    }

    fn release(self) {
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

#[tokio::test]
async fn a_status_is_acknowledged_only_after_its_commit() {
    if opamp_tests::postgres::sqlite_only("a_status_is_acknowledged_only_after_its_commit") {
        return;
    }
    let s = start("database:\n  busy_timeout_ms: 300\nopamp:\n  retry_after_seconds: 7\n");
    let uid = new_uid();
    let (mut ws, _) = ws_agent(&s, uid, &[]).await;
    agent(&s, &uid).await;
    let hash = [9u8; 32];
    let lock = WriteLock::take(&s.data_dir().join("opamp.db"));
    // The commit fails: the status is not acknowledged, however often it is sent.
    for seq in 1..=3 {
        let r = ws_exchange(
            &mut ws,
            &applied(uid, seq, &hash, pb::RemoteConfigStatuses::Applied, ""),
        )
        .await;
        assert_eq!(unavailable_after(&r), Some(7), "{r:?}");
    }
    let http_agent = new_uid();
    let (code, _, _) = http_exchange(&s.opamp_url(), &full_report(http_agent, 0, "poller")).await;
    assert_eq!(code, 200, "a report without a status is answered as usual");
    let (code, headers, r) = http_exchange(
        &s.opamp_url(),
        &applied(
            http_agent,
            1,
            &hash,
            pb::RemoteConfigStatuses::Failed,
            "boom",
        ),
    )
    .await;
    assert_eq!(code, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "7");
    assert_eq!(unavailable_after(&r.unwrap()), Some(7));
    lock.release();
    // Committed now: the same report is acknowledged, and it is stored.
    let r = ws_exchange(
        &mut ws,
        &applied(uid, 4, &hash, pb::RemoteConfigStatuses::Applied, ""),
    )
    .await;
    assert!(r.error_response.is_none(), "{r:?}");
    let v = agent(&s, &uid).await;
    assert_eq!(v["remote_config"]["reported_hash"], "09".repeat(32), "{v}");
    let (code, _, r) = http_exchange(
        &s.opamp_url(),
        &applied(
            http_agent,
            2,
            &hash,
            pb::RemoteConfigStatuses::Failed,
            "boom",
        ),
    )
    .await;
    assert_eq!(code, 200);
    assert!(r.unwrap().error_response.is_none());
}

#[tokio::test]
async fn a_full_writer_queue_pushes_back_instead_of_growing() {
    if opamp_tests::postgres::sqlite_only("a_full_writer_queue_pushes_back_instead_of_growing") {
        return;
    }
    let s = start(
        "database:\n  max_queued_writes: 8\n  busy_timeout_ms: 3000\nopamp:\n  retry_after_seconds: 5\n",
    );
    let health_url = format!("{}/health", s.url());
    let lock = WriteLock::take(&s.data_dir().join("opamp.db"));
    // A flood of new agents while no commit succeeds (the writer retries
    // once a second, so the queue fills).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut deepest = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let v: serde_json::Value = reqwest::get(&health_url)
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                deepest = deepest.max(v["database"]["writer_queue"].as_u64().unwrap());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            deepest
        })
    };
    let url = s.opamp_url();
    let flood: Vec<_> = (0..40)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let uid = new_uid();
                let (code, headers, _) =
                    http_exchange(&url, &full_report(uid, 0, &format!("flood-{i}"))).await;
                (uid, code, headers.get("retry-after").cloned())
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for task in flood {
        let (uid, code, retry_after) = task.await.unwrap();
        match code {
            200 => admitted.push(uid),
            503 => {
                assert_eq!(retry_after.unwrap(), "5");
                refused.push(uid);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let deepest = sampler.await.unwrap();
    assert!(!refused.is_empty(), "a full queue refuses agents, to retry");
    assert!(
        deepest <= 2 * 8,
        "the queue stays within twice its bound, got {deepest}"
    );
    assert!(s.logs().contains("the database writer's queue is full"));
    lock.release();
    // Refused agents come back and are served; nothing admitted was lost.
    for uid in &refused {
        let (code, _, _) = http_exchange(&s.opamp_url(), &full_report(*uid, 0, "again")).await;
        assert_eq!(code, 200);
    }
    for uid in admitted.iter().chain(&refused) {
        agent(&s, uid).await;
    }
}

#[tokio::test]
async fn reports_over_the_per_agent_storage_limit_are_not_stored() {
    let s = start("opamp:\n  max_stored_bytes_per_agent: 4096\n");
    let uid = new_uid();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let r = ws_exchange(&mut ws, &full_report(uid, 0, "modest")).await;
    assert!(r.error_response.is_none());
    agent(&s, &uid).await;
    // A huge effective config and a huge health: the rest of the report is kept.
    let mut m = full_report(uid, 1, "renamed");
    m.effective_config = Some(agent::message::effective_yaml(&format!(
        "padding: {}\n",
        "x".repeat(64 * 1024)
    )));
    m.health = Some(agent::message::health(false, &"y".repeat(8 * 1024), "big"));
    let r = ws_exchange(&mut ws, &m).await;
    assert!(r.error_response.is_none(), "the agent is answered as usual");
    let v = wait_for("the new name stored", Duration::from_secs(10), || async {
        let v = agent(&s, &uid).await;
        (v["identifying_attributes"]["service.name"] == "renamed").then_some(v)
    })
    .await;
    assert_eq!(
        v["health"]["healthy"], true,
        "the stored health is kept: {v}"
    );
    let (_, ec) = s
        .get(&format!(
            "/api/v1/agents/{}/effective-config",
            uid_str(&uid)
        ))
        .await;
    assert_eq!(ec["files"][""]["body"], "receivers: {}", "{ec}");
    let (_, events) = s
        .get(&format!("/api/v1/agents/{}/events", uid_str(&uid)))
        .await;
    let reasons: Vec<String> = events
        .as_array()
        .or(events["items"].as_array())
        .expect("a list of events")
        .iter()
        .filter(|e| e["event"] == "not_stored")
        .map(|e| e["details"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.len(), 2, "{events}");
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("opamp.max_stored_bytes_per_agent (4096)")),
        "{reasons:?}"
    );
    // A description past the limit is not stored either.
    let mut m = full_report(uid, 2, &"z".repeat(8 * 1024));
    m.effective_config = None;
    m.health = None;
    ws_exchange(&mut ws, &m).await;
    let r = ws_exchange(&mut ws, &heartbeat(uid, 3)).await;
    assert!(r.error_response.is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = agent(&s, &uid).await;
    assert_eq!(
        v["identifying_attributes"]["service.name"], "renamed",
        "{v}"
    );
}

/// TLS options of an agent that trusts `ca` and presents `leaf`.
fn presenting(ca: &TestCa, leaf: &Leaf) -> agent::tls::TlsOptions {
    agent::tls::TlsOptions::default()
        .with_ca_file(&ca.file)
        .with_client_cert(&leaf.cert, &leaf.key)
}

/// The certificate-mismatch audit rows of `uid`: (outcome, details).
fn mismatches(s: &Server, uid: &[u8; 16]) -> Vec<(String, String)> {
    s.query(&format!(
        "SELECT outcome, details FROM audit_log WHERE action = 'agent.certificate_mismatch' AND target = '{}'",
        uid_str(uid)
    ))
    .iter()
    .map(|r| (text(&r["outcome"]), text(&r["details"])))
    .collect()
}

/// The stored certificate fingerprint of `uid` and its service name.
fn stored_binding(s: &Server, uid: &[u8; 16]) -> Option<(Option<String>, Option<String>)> {
    let rows = s.query(&format!(
        "SELECT cert_fingerprint, identifying FROM agents WHERE uid = '{}'",
        uid_str(uid)
    ));
    let row = rows.first()?;
    let identifying: serde_json::Value =
        serde_json::from_str(row["identifying"].as_str().unwrap_or("{}")).unwrap();
    Some((
        row["cert_fingerprint"].as_str().map(String::from),
        identifying["service.name"].as_str().map(String::from),
    ))
}

fn text(v: &serde_json::Value) -> String {
    v.as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string())
}

fn refused_for_certificate(r: &pb::ServerToAgent) {
    let e = r.error_response.as_ref().expect("an error response");
    assert_eq!(
        e.r#type,
        pb::ServerErrorResponseType::BadRequest as i32,
        "{r:?}"
    );
    assert!(
        e.error_message
            .contains("bound to another client certificate"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_uid_is_bound_to_the_client_certificate_it_registered_with() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "agents-ca");
    let server = ca.server("server");
    let (owner_cert, impostor_cert) = (ca.client("owner"), ca.client("impostor"));
    let mut s = start(&format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n  require_client_cert: true\n",
        server.cert, server.key, ca.file
    ));
    let wss = |s: &Server| format!("wss://127.0.0.1:{}/v1/opamp", s.addr.port());
    let https = |s: &Server| format!("https://127.0.0.1:{}/v1/opamp", s.addr.port());
    let as_owner = agent::ws::WsOptions::default().tls(presenting(&ca, &owner_cert));
    let as_impostor = agent::ws::WsOptions::default().tls(presenting(&ca, &impostor_cert));
    let uid = new_uid();
    let mut owner = agent::ws::connect(&wss(&s), &as_owner).await.unwrap();
    let r = ws_exchange(&mut owner, &full_report(uid, 0, "owner")).await;
    assert!(r.error_response.is_none(), "{r:?}");

    // Another certificate of the same CA cannot speak for the uid: not over a
    // WebSocket, not over plain HTTP.
    let mut impostor = agent::ws::connect(&wss(&s), &as_impostor).await.unwrap();
    for seq in 1..=3 {
        refused_for_certificate(
            &ws_exchange(&mut impostor, &full_report(uid, seq, "impostor")).await,
        );
    }
    let http_options = |leaf: &Leaf| agent::http::HttpOptions::default().tls(presenting(&ca, leaf));
    let impostor_http =
        agent::http::HttpTransport::new(&https(&s), &http_options(&impostor_cert)).unwrap();
    for seq in 1..=3 {
        let reply = impostor_http
            .post(&full_report(uid, seq, "impostor"))
            .await
            .unwrap();
        assert_eq!(reply.status, 403);
    }
    // The impostor's connection still serves agents of its own.
    let own = new_uid();
    let r = ws_exchange(&mut impostor, &full_report(own, 0, "other")).await;
    assert!(r.error_response.is_none(), "{r:?}");

    // The owner keeps working; what is stored is the owner's.
    let r = ws_exchange(&mut owner, &heartbeat(uid, 1)).await;
    assert!(r.error_response.is_none(), "{r:?}");
    wait_for(
        "the owner's fingerprint is stored",
        Duration::from_secs(10),
        || async { stored_binding(&s, &uid).filter(|(stored, _)| stored.is_some()) },
    )
    .await;
    let (stored, service) = stored_binding(&s, &uid).unwrap();
    assert_eq!(stored.as_deref(), Some(owner_cert.fingerprint.as_str()));
    assert_eq!(service.as_deref(), Some("owner"));

    // Six refused messages, one audit entry naming the refused certificate.
    let rows = wait_for(
        "the refusal is audited",
        Duration::from_secs(10),
        || async {
            let rows = mismatches(&s, &uid);
            (!rows.is_empty()).then_some(rows)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mismatches(&s, &uid).len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "denied");
    assert!(rows[0].1.contains(&impostor_cert.fingerprint), "{rows:?}");

    // The binding is stored: after a restart (no session in memory) the
    // impostor is still refused and the owner still served.
    agent::ws::close(&mut owner).await;
    agent::ws::close(&mut impostor).await;
    s.restart();
    let mut impostor = agent::ws::connect(&wss(&s), &as_impostor).await.unwrap();
    refused_for_certificate(&ws_exchange(&mut impostor, &heartbeat(uid, 5)).await);
    let impostor_http =
        agent::http::HttpTransport::new(&https(&s), &http_options(&impostor_cert)).unwrap();
    let reply = impostor_http.post(&heartbeat(uid, 5)).await.unwrap();
    assert_eq!(reply.status, 403);
    let owner_http =
        agent::http::HttpTransport::new(&https(&s), &http_options(&owner_cert)).unwrap();
    let reply = owner_http.post(&heartbeat(uid, 2)).await.unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn the_operator_and_agent_listeners_trust_their_own_client_cas() {
    let dir = tempfile::tempdir().unwrap();
    let agents = TestCa::new(dir.path(), "agents-ca");
    let operators = TestCa::new(dir.path(), "operators-ca");
    let server = agents.server("server");
    let (agent_cert, operator_cert) = (agents.client("agent"), operators.client("operator"));
    let s = start(&format!(
        "agent_listen: 127.0.0.1:0\n\
         tls:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n  require_client_cert: true\n\
         opamp:\n  tls:\n    client_ca_file: {}\n    require_client_cert: true\n",
        server.cert, server.key, operators.file, agents.file
    ));
    let listening = s
        .logs()
        .lines()
        .find(|l| l.contains("opampd listening"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .expect("the listening line");
    let agent_addr = listening["agent_addr"].as_str().unwrap().to_string();
    let agent_url = format!("wss://{agent_addr}/v1/opamp");
    let operator_url = format!("wss://127.0.0.1:{}/v1/opamp", s.addr.port());
    // Trusting the server's CA, presenting `leaf`: does the listener at `url`
    // accept the certificate (an HTTP answer, whatever its status)?
    let accepts = |url: String, leaf: &Leaf| {
        let options = agent::ws::WsOptions::default().tls(presenting(&agents, leaf));
        async move {
            match agent::ws::connect(&url, &options).await {
                Ok(_) => true,
                Err(e) => e.status().is_some(),
            }
        }
    };
    let mut socket = agent::ws::connect(
        &agent_url,
        &agent::ws::WsOptions::default().tls(presenting(&agents, &agent_cert)),
    )
    .await
    .expect("the agent listener accepts an agent certificate");
    let r = ws_exchange(&mut socket, &full_report(new_uid(), 0, "agent")).await;
    assert!(r.error_response.is_none(), "{r:?}");
    assert!(
        !accepts(agent_url.clone(), &operator_cert).await,
        "the agent listener refuses an operator certificate"
    );
    assert!(
        !accepts(operator_url.clone(), &agent_cert).await,
        "the operator listener refuses an agent certificate"
    );
    assert!(
        accepts(operator_url, &operator_cert).await,
        "the operator listener accepts an operator certificate"
    );
}
