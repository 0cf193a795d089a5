//! Connection settings (OpAMP destination and secret, own telemetry) offered
//! by a real opampd to agents of the agent library over real sockets: gated
//! by capability, offered once, remembered across restarts of opampd,
//! offered again when they change (SIGHUP, restart with new settings), and
//! shown per agent in the API and opampctl.

use opamp_agent::agent::{Agent, AgentSettings, OfferPolicy};
use opamp_agent::http::{HttpOptions, HttpTransport};
use opamp_agent::session::Session;
use opamp_agent::ws::{self, WsOptions};
use opamp_agent::{caps, message};
use opamp_tests::client::{new_uid, uid_str};
use opamp_tests::{bin, free_addr, wait_for, Opts, Server};
use serde_json::Value;
use std::time::Duration;

const PUBLIC_URL: &str = "wss://opamp.example.test/v1/opamp";
const FIRST: &str = "first-agent-secret-0123456789";
const NEXT: &str = "next-agent-secret-0123456789";
const OFFERS_CONNECTION_SETTINGS: u64 = 0x20;

fn config(secrets: &[&str], metrics_endpoint: &str) -> String {
    format!(
        "opamp:\n  agent_secrets: [{}]\n  public_url: {PUBLIC_URL}\n  heartbeat_interval_seconds: 20\n\
         telemetry:\n  own_metrics:\n    endpoint: {metrics_endpoint}\n    headers:\n      X-Api-Key: metrics-key\n",
        secrets.join(", ")
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn agent(uid: [u8; 16], name: &str, extra: u64) -> Agent {
    Agent::new(
        AgentSettings::new(uid)
            .identifying("service.name", name)
            .capabilities(message::TYPICAL_CAPABILITIES | extra),
    )
}

async fn http_session(server: &Server, agent: Agent) -> Session<HttpTransport> {
    let transport =
        HttpTransport::new(&server.opamp_url(), &HttpOptions::default().bearer(FIRST)).unwrap();
    Session::new(agent, transport)
}

async fn ws_session(server: &Server, agent: Agent) -> Session<ws::WebSocket> {
    let socket = ws::connect(&server.ws_url(), &WsOptions::default().bearer(FIRST))
        .await
        .unwrap();
    Session::new(agent, socket)
}

/// The agent's `connection_settings` in the API, once `status` is `want`
/// for the set with `hash`.
async fn api_state(server: &Server, uid: &[u8; 16], want: &str, hash: &[u8]) -> Value {
    wait_for(
        &format!("connection settings {want}"),
        Duration::from_secs(10),
        || async {
            let (code, v) = server
                .get(&format!("/api/v1/agents/{}", uid_str(uid)))
                .await;
            let shown = &v["connection_settings"];
            (code == 200 && shown["status"] == want && shown["offered_hash"] == hex(hash))
                .then(|| shown.clone())
        },
    )
    .await
}

#[tokio::test]
async fn connection_settings_are_offered_once_per_set_and_survive_restarts() {
    let data = tempfile::tempdir().unwrap();
    // One address across restarts: the plain-HTTP agents keep polling it.
    let listen = free_addr();
    let start = |config: String| {
        Server::start_with(Opts {
            config: Some(config),
            data_dir: Some(data.path().join("data")),
            listen: Some(listen.clone()),
            ..Default::default()
        })
    };
    let mut server = start(config(&[FIRST], "https://otlp.example.test/v1/metrics"));

    // A collector that takes everything and reports its status, over WebSocket.
    let full_uid = new_uid();
    let full_caps = caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS
        | caps::REPORTS_CONNECTION_SETTINGS_STATUS
        | caps::REPORTS_OWN_METRICS;
    let mut full = ws_session(&server, agent(full_uid, "full", full_caps)).await;
    let reply = full.start().await.unwrap();
    assert_ne!(reply.capabilities & OFFERS_CONNECTION_SETTINGS, 0);
    let offer = reply.connection_settings.clone().expect("offered at once");
    let opamp = offer.opamp.as_ref().unwrap();
    assert_eq!(opamp.destination_endpoint, PUBLIC_URL);
    assert_eq!(opamp.heartbeat_interval_seconds, 20);
    let header = &opamp.headers.as_ref().unwrap().headers[0];
    assert_eq!(
        (header.key.as_str(), header.value.as_str()),
        ("Authorization", format!("Bearer {FIRST}").as_str())
    );
    let metrics = offer.own_metrics.as_ref().unwrap();
    assert_eq!(
        metrics.destination_endpoint,
        "https://otlp.example.test/v1/metrics"
    );
    assert_eq!(
        metrics.headers.as_ref().unwrap().headers[0].value,
        "metrics-key"
    );
    assert!(offer.own_logs.is_none() && offer.own_traces.is_none());
    assert_eq!(full.agent().connection_settings().hash, offer.hash);
    assert!(full
        .heartbeat()
        .await
        .unwrap()
        .connection_settings
        .is_none());
    let shown = api_state(&server, &full_uid, "applied", &offer.hash).await;
    assert_eq!(shown["reported_hash"], hex(&offer.hash));

    // Only the OpAMP part, without a status report, over plain HTTP.
    let quiet_uid = new_uid();
    let mut quiet = http_session(
        &server,
        agent(quiet_uid, "quiet", caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS),
    )
    .await;
    let quiet_offer = quiet
        .start()
        .await
        .unwrap()
        .connection_settings
        .expect("offered");
    assert!(quiet_offer.opamp.is_some() && quiet_offer.own_metrics.is_none());
    assert_ne!(quiet_offer.hash, offer.hash, "another set, another hash");
    assert!(quiet
        .heartbeat()
        .await
        .unwrap()
        .connection_settings
        .is_none());
    api_state(&server, &quiet_uid, "offered", &quiet_offer.hash).await;

    // Without any of the capabilities: nothing, ever.
    let plain_uid = new_uid();
    let mut plain = http_session(&server, agent(plain_uid, "plain", 0)).await;
    assert!(plain.start().await.unwrap().connection_settings.is_none());
    assert!(plain
        .heartbeat()
        .await
        .unwrap()
        .connection_settings
        .is_none());

    // One that refuses: FAILED with its reason, shown, and not offered again.
    let refusing_uid = new_uid();
    let mut refusing = http_session(
        &server,
        Agent::new(
            AgentSettings::new(refusing_uid)
                .capabilities(
                    message::TYPICAL_CAPABILITIES
                        | caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS
                        | caps::REPORTS_CONNECTION_SETTINGS_STATUS,
                )
                .connection_offers(OfferPolicy::Fail("proxy refused".into())),
        ),
    )
    .await;
    let refused = refusing.start().await.unwrap().connection_settings.unwrap();
    assert!(refusing
        .heartbeat()
        .await
        .unwrap()
        .connection_settings
        .is_none());
    let shown = api_state(&server, &refusing_uid, "failed", &refused.hash).await;
    assert_eq!(shown["error"], "proxy refused");
    let plain_shown = server
        .get(&format!("/api/v1/agents/{}", uid_str(&plain_uid)))
        .await
        .1;
    assert_eq!(plain_shown["connection_settings"]["status"], "none");
    let out = server.ctl(&["agents", "show", &uid_str(&full_uid)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "connection_settings: {} status=applied",
            &hex(&offer.hash)[..12]
        )),
        "{text}"
    );

    // opampd restarts on the same data: the agents reconnect (a collector
    // does so after every OpAMP offer) and a restarted agent process starts
    // from sequence 0; nobody is offered the same set again.
    server.restart();
    let (agent_state, _) = full.into_parts();
    let mut full = ws_session(&server, agent_state).await;
    assert!(full
        .heartbeat()
        .await
        .unwrap()
        .connection_settings
        .is_none());
    assert_eq!(full.agent().counters().connection_offers, 1);
    let mut quiet = http_session(
        &server,
        agent(quiet_uid, "quiet", caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS),
    )
    .await;
    let reply = quiet.start().await.unwrap();
    assert!(reply.connection_settings.is_none(), "{reply:?}");

    // Rotation: a new first secret (SIGHUP) is a new set, offered once.
    std::fs::write(
        server.dir.join("config.yaml"),
        config(&[NEXT, FIRST], "https://otlp.example.test/v1/metrics"),
    )
    .unwrap();
    opamp_tests::signal(server.pid(), libc::SIGHUP);
    wait_for("secrets reloaded", Duration::from_secs(10), || async {
        server
            .logs()
            .contains("reloaded agent secrets")
            .then_some(())
    })
    .await;
    let rotated = quiet
        .heartbeat()
        .await
        .unwrap()
        .connection_settings
        .expect("the new secret is offered");
    let header = &rotated
        .opamp
        .as_ref()
        .unwrap()
        .headers
        .as_ref()
        .unwrap()
        .headers[0];
    assert_eq!(header.value, format!("Bearer {NEXT}"));
    assert!(quiet
        .heartbeat()
        .await
        .unwrap()
        .connection_settings
        .is_none());
    let rotated_full = full.heartbeat().await.unwrap().connection_settings.unwrap();
    assert_ne!(rotated_full.hash, offer.hash);
    assert!(plain
        .heartbeat()
        .await
        .unwrap()
        .connection_settings
        .is_none());
    api_state(&server, &full_uid, "applied", &rotated_full.hash).await;
    full.disconnect().await.unwrap();
    let (full_agent, _) = full.into_parts();

    // A restart with another metrics destination: a new set for the agent
    // that reports its metrics, nothing new for the one that does not.
    server.stop();
    let server = start(config(
        &[NEXT, FIRST],
        "https://otlp-2.example.test/v1/metrics",
    ));
    let mut full = ws_session(&server, full_agent).await;
    let moved = full
        .start()
        .await
        .unwrap()
        .connection_settings
        .expect("new set");
    assert_eq!(
        moved.own_metrics.unwrap().destination_endpoint,
        "https://otlp-2.example.test/v1/metrics"
    );
    assert!(full
        .heartbeat()
        .await
        .unwrap()
        .connection_settings
        .is_none());
    let mut quiet = http_session(
        &server,
        agent(quiet_uid, "quiet", caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS),
    )
    .await;
    assert!(quiet.start().await.unwrap().connection_settings.is_none());
}

#[tokio::test]
async fn without_a_public_url_no_opamp_settings_are_offered_and_that_is_said() {
    let server = Server::start();
    let uid = new_uid();
    let mut session = http_session_open(&server, uid).await;
    let reply = session.start().await.unwrap();
    assert!(reply.connection_settings.is_none());
    assert!(
        server.logs().contains("opamp.public_url is not set"),
        "start-up log says so"
    );

    let dir = tempfile::tempdir().unwrap();
    let check = |file: &str| {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, file).unwrap();
        std::process::Command::new(bin("opampd"))
            .env_clear()
            .env("JWT_SECRET_KEY", opamp_tests::jwt_key())
            .args(["check-config", "--print", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check("opamp:\n  agent_secrets: [a-long-agent-secret]\n");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("opamp.public_url is not set"));
    let out = check(&config(&[FIRST], "https://otlp.example.test/v1/metrics"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("public_url is not set"), "{stderr}");
    assert!(
        stdout.contains(PUBLIC_URL) && !stdout.contains("metrics-key") && !stdout.contains(FIRST),
        "header values and secrets masked:\n{stdout}"
    );
    let out =
        check("opamp:\n  agent_secrets: [a-long-agent-secret]\n  public_url: opamp.example.test\n");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("opamp.public_url \"opamp.example.test\""),
        "{stderr}"
    );
}

async fn http_session_open(server: &Server, uid: [u8; 16]) -> Session<HttpTransport> {
    let transport = HttpTransport::new(&server.opamp_url(), &HttpOptions::default()).unwrap();
    Session::new(
        agent(
            uid,
            "open",
            caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS | caps::REPORTS_CONNECTION_SETTINGS_STATUS,
        ),
        transport,
    )
}
