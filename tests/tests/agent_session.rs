//! The `opamp-agent` state machine against a real opampd, over both
//! transports: connect, full report, receive a rollout's configuration,
//! report APPLIED (or FAILED), and see the result through the REST API. Also
//! over TLS with a client certificate, as an agent in production would.

mod common;

use common::*;
use opamp_agent::agent::{Agent, AgentSettings, Event, OfferPolicy};
use opamp_agent::http::{HttpOptions, HttpTransport};
use opamp_agent::session::{Session, Transport};
use opamp_agent::tls::TlsOptions;
use opamp_agent::{caps, message, pb, ws};
use opamp_tests::{Opts, Server};
use serde_json::json;
use std::time::Duration;

const APPLIED: i32 = pb::RemoteConfigStatuses::Applied as i32;
const FAILED: i32 = pb::RemoteConfigStatuses::Failed as i32;

fn settings(env: &str) -> AgentSettings {
    AgentSettings::new(opamp_agent::new_uid())
        .identifying("service.name", "lib-agent")
        .non_identifying("env", env)
        .effective_config(message::effective_yaml("receivers: {}\n"))
}

/// Until the agent has reported a final status for an offer.
fn settled(agent: &Agent, _: &[Event]) -> bool {
    agent
        .remote_config_status()
        .is_some_and(|s| s.status == APPLIED || s.status == FAILED)
}

/// Starts the session, rolls out `body` to the agent's `env`, and lives until
/// the agent has answered the offer; returns the agent's view of the status.
async fn roll_out_to<T: Transport>(
    s: &Server,
    session: &mut Session<T>,
    name: &str,
    env: &str,
    body: &str,
) -> pb::RemoteConfigStatus {
    let uid = session.agent().uid();
    let first = session.start().await.expect("first exchange");
    assert!(first.error_response.is_none(), "{first:?}");
    assert_eq!(first.instance_uid, uid.to_vec());
    assert_eq!(
        first.flags & caps::FLAG_REPORT_FULL_STATE,
        0,
        "the first report is complete"
    );
    let v = agent(s, &uid).await;
    assert_eq!(v["identifying_attributes"]["service.name"], "lib-agent");
    let (code, saved) = save(s, name, body, &format!("env={env}")).await;
    assert_eq!(code, 201, "{saved}");
    start_rollout(s, name, json!({})).await;
    session
        .run_until(Duration::from_secs(15), Duration::from_millis(200), settled)
        .await
        .expect("the offer arrives and is answered");
    session.agent().remote_config_status().unwrap().clone()
}

/// The REST API shows the configuration applied and running on the agent.
async fn check_applied(s: &Server, uid: &[u8; 16], name: &str, body: &str, hash: &[u8]) {
    wait_rollout(s, name, "rollout completed", |v| v["state"] == "completed").await;
    let v = agent(s, uid).await;
    assert_eq!(v["remote_config"]["status"], "applied", "{v}");
    assert_eq!(v["remote_config"]["hash"], hex(hash));
    let (code, effective) = s
        .get(&format!(
            "/api/v1/agents/{}/effective-config",
            opamp_agent::uid_string(uid)
        ))
        .await;
    assert_eq!(code, 200, "{effective}");
    assert_eq!(effective["files"][name]["body"], body, "{effective}");
}

#[tokio::test]
async fn websocket_agent_applies_a_rollout() {
    let s = Server::start();
    let socket = ws::connect(&s.ws_url(), &ws::WsOptions::default())
        .await
        .unwrap();
    let mut session = Session::new(Agent::new(settings("lib-ws")), socket);
    let body = "receivers: {otlp: {}}\n";
    let status = roll_out_to(&s, &mut session, "lib-ws", "lib-ws", body).await;
    assert_eq!(status.status, APPLIED);
    assert_eq!(status.last_remote_config_hash.len(), 32);
    let uid = session.agent().uid();
    check_applied(&s, &uid, "lib-ws", body, &status.last_remote_config_hash).await;
    let files = &session.agent().effective_config().unwrap().config_map;
    assert_eq!(
        files.as_ref().unwrap().config_map["lib-ws"].body,
        body.as_bytes(),
        "the agent runs what it was offered"
    );
    assert!(session.events().contains(&Event::ConfigApplied {
        hash: status.last_remote_config_hash.clone()
    }));
    // Heartbeats in sequence: nothing more to do for the server.
    let r = session.heartbeat().await.unwrap();
    assert!(r.remote_config.is_none() && r.flags == 0, "{r:?}");
    session.disconnect().await.unwrap();
}

#[tokio::test]
async fn http_agent_applies_a_rollout() {
    let s = Server::start();
    let transport = HttpTransport::new(&s.opamp_url(), &HttpOptions::default()).unwrap();
    let mut session = Session::new(Agent::new(settings("lib-http")), transport);
    let body = "exporters: {debug: {}}\n";
    let status = roll_out_to(&s, &mut session, "lib-http", "lib-http", body).await;
    assert_eq!(status.status, APPLIED);
    let uid = session.agent().uid();
    check_applied(&s, &uid, "lib-http", body, &status.last_remote_config_hash).await;
    let r = session.heartbeat().await.unwrap();
    assert!(
        r.remote_config.is_none(),
        "never offered again once applied"
    );
}

#[tokio::test]
async fn a_failing_agent_reports_failed_over_http() {
    let s = Server::start();
    let transport = HttpTransport::new(
        &s.opamp_url(),
        &HttpOptions::default().gzip_requests(true).accept_gzip(true),
    )
    .unwrap();
    let failing = Agent::new(
        settings("lib-fail")
            .offers(OfferPolicy::Fail("unknown receiver".into()))
            .report_applying(true),
    );
    let mut session = Session::new(failing, transport);
    let status = roll_out_to(&s, &mut session, "lib-fail", "lib-fail", "bad: yes\n").await;
    assert_eq!(status.status, FAILED);
    let uid = session.agent().uid();
    let v = opamp_tests::wait_for("failed stored", Duration::from_secs(10), || async {
        let v = agent(&s, &uid).await;
        (v["remote_config"]["status"] == "failed").then_some(v)
    })
    .await;
    assert_eq!(v["remote_config"]["error"], "unknown receiver", "{v}");
    let (_, effective) = s
        .get(&format!(
            "/api/v1/agents/{}/effective-config",
            opamp_agent::uid_string(&uid)
        ))
        .await;
    assert_eq!(
        effective["files"][""]["body"], "receivers: {}\n",
        "a refused configuration does not run"
    );
}

#[tokio::test]
async fn both_transports_work_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let s = Server::start_with(Opts {
        config: Some(format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n  require_client_cert: true\n",
            pki.server_cert, pki.server_key, pki.ca
        )),
        ..Default::default()
    });
    let tls = TlsOptions::default()
        .with_ca_file(&pki.ca)
        .with_client_cert(&pki.client_cert, &pki.client_key);
    let port = s.addr.port();

    let options = ws::WsOptions::default().tls(tls.clone());
    let socket = ws::connect(&format!("wss://127.0.0.1:{port}/v1/opamp"), &options)
        .await
        .expect("wss with a client certificate");
    let mut session = Session::new(Agent::new(settings("tls")), socket);
    assert!(session.start().await.unwrap().error_response.is_none());

    let transport = HttpTransport::new(
        &format!("https://127.0.0.1:{port}/v1/opamp"),
        &HttpOptions::default().tls(tls),
    )
    .unwrap();
    let mut session = Session::new(Agent::new(settings("tls")), transport);
    assert!(session.start().await.unwrap().error_response.is_none());

    // Without the client certificate the handshake fails, and says so.
    let options = ws::WsOptions::default().tls(TlsOptions::default().with_ca_file(&pki.ca));
    let e = ws::connect(&format!("wss://127.0.0.1:{port}/v1/opamp"), &options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            opamp_agent::Error::Handshake { .. } | opamp_agent::Error::WebSocket(_)
        ),
        "{e}"
    );
}

#[tokio::test]
async fn refusals_carry_their_status_and_retry_after() {
    let s = Server::start_with(Opts {
        config: Some(
            "opamp:\n  agent_secrets: [\"lib-secret-123\"]\n  max_agents: 1\n  retry_after_seconds: 42\n"
                .into(),
        ),
        ..Default::default()
    });
    let e = ws::connect(&s.ws_url(), &ws::WsOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    let transport = HttpTransport::new(&s.opamp_url(), &HttpOptions::default()).unwrap();
    let uid = opamp_agent::new_uid();
    let reply = transport
        .post(&message::heartbeat(uid, 0, message::TYPICAL_CAPABILITIES))
        .await
        .unwrap();
    assert_eq!(reply.status, 401);

    let options = ws::WsOptions::default().bearer("lib-secret-123");
    let first = ws::connect(&s.ws_url(), &options).await.unwrap();
    let mut session = Session::new(Agent::new(settings("full")), first);
    session.start().await.unwrap();
    let e = ws::connect(&s.ws_url(), &options).await.unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(42)));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as files.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new(dir: &std::path::Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            SanType,
        };
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "agent library test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = vec![purpose];
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            (
                write(&format!("{name}.pem"), &cert.pem()),
                write(&format!("{name}.key"), &key.serialize_pem()),
            )
        };
        let (server_cert, server_key) = leaf("server", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf("client", ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }
}
