//! Packages over real sockets: agents of the agent library with
//! AcceptsPackages and ReportsPackageStatuses report what they have; a real
//! opampd announces OffersPackages, stores the statuses per agent (within
//! opamp.max_stored_bytes_per_agent, across restarts) and shows them in the
//! API and `opampctl agents show`.

use opamp_agent::agent::{Agent, AgentSettings};
use opamp_agent::session::Session;
use opamp_agent::ws::{self, WsOptions};
use opamp_tests::cli::ok;
use opamp_tests::client::{new_uid, uid_str};
use opamp_tests::{wait_for, Opts, Server};
use serde_json::Value;
use std::time::Duration;

const OFFERS_PACKAGES: u64 = 0x8;
const ACCEPTS_PACKAGES_STATUS: u64 = 0x10;

fn packaged(uid: [u8; 16], name: &str) -> Agent {
    Agent::new(
        AgentSettings::new(uid)
            .identifying("service.name", name)
            .non_identifying("os.type", "linux")
            .non_identifying("host.arch", "amd64")
            .accepts_packages()
            .package("otelcol-contrib", "0.119.0", &[7; 32], true),
    )
}

async fn connect(server: &Server, agent: Agent) -> Session<ws::WebSocket> {
    let socket = ws::connect(&server.ws_url(), &WsOptions::default())
        .await
        .unwrap();
    Session::new(agent, socket)
}

/// The agent's `packages` in the API once it holds a package list.
async fn reported(server: &Server, uid: &[u8; 16]) -> Value {
    wait_for("package statuses", Duration::from_secs(10), || async {
        let (code, v) = server
            .get(&format!("/api/v1/agents/{}", uid_str(uid)))
            .await;
        (code == 200 && v["packages"]["packages"].is_array()).then(|| v["packages"].clone())
    })
    .await
}

#[tokio::test]
async fn reported_package_statuses_are_stored_and_shown() {
    let mut server = Server::start();
    let uid = new_uid();
    let mut session = connect(&server, packaged(uid, "edge")).await;
    let reply = session.start().await.unwrap();
    assert_eq!(
        reply.capabilities & (OFFERS_PACKAGES | ACCEPTS_PACKAGES_STATUS),
        OFFERS_PACKAGES | ACCEPTS_PACKAGES_STATUS,
        "opampd announces packages: {:#x}",
        reply.capabilities
    );
    assert!(
        reply.packages_available.is_none(),
        "nothing is rolled out, nothing is offered"
    );
    let shown = reported(&server, &uid).await;
    assert_eq!(shown["packages"][0]["name"], "otelcol-contrib");
    assert_eq!(shown["packages"][0]["status"], "installed");
    assert_eq!(shown["packages"][0]["agent_has_version"], "0.119.0");
    assert_eq!(shown["packages"][0]["agent_has_hash"], "07".repeat(32));

    let text = ok(&server.ctl(&["agents", "show", &uid_str(&uid)]));
    assert!(
        text.contains("packages: 1") && text.contains("otelcol-contrib 0.119.0 status=installed"),
        "{text}"
    );

    // An agent that reports no packages says so.
    let plain = new_uid();
    let mut other = connect(
        &server,
        Agent::new(AgentSettings::new(plain).identifying("service.name", "plain")),
    )
    .await;
    other.start().await.unwrap();
    wait_for("the second agent", Duration::from_secs(10), || async {
        let (code, _) = server
            .get(&format!("/api/v1/agents/{}", uid_str(&plain)))
            .await;
        (code == 200).then_some(())
    })
    .await;
    let text = ok(&server.ctl(&["agents", "show", &uid_str(&plain)]));
    assert!(text.contains("packages: - (none reported)"), "{text}");

    // Kept across a restart of opampd.
    drop(session);
    drop(other);
    server.restart();
    let (code, v) = server
        .get(&format!("/api/v1/agents/{}", uid_str(&uid)))
        .await;
    assert_eq!(code, 200);
    assert_eq!(v["packages"]["packages"][0]["agent_has_version"], "0.119.0");
}

#[tokio::test]
async fn package_statuses_over_the_storage_limit_are_not_stored() {
    let server = Server::start_with(Opts {
        config: Some("opamp:\n  max_stored_bytes_per_agent: 1024\n".into()),
        ..Default::default()
    });
    let uid = new_uid();
    let long = "x".repeat(2000);
    let agent = Agent::new(
        AgentSettings::new(uid)
            .identifying("service.name", "big")
            .accepts_packages()
            .package(&long, "1.0.0", &[1; 32], false),
    );
    let mut session = connect(&server, agent).await;
    session.start().await.unwrap();
    let events = wait_for("a not_stored event", Duration::from_secs(10), || async {
        let (_, v) = server
            .get(&format!("/api/v1/agents/{}/events", uid_str(&uid)))
            .await;
        let text = v.to_string();
        text.contains("package statuses").then_some(text)
    })
    .await;
    assert!(events.contains("max_stored_bytes_per_agent"), "{events}");
    let (_, v) = server
        .get(&format!("/api/v1/agents/{}", uid_str(&uid)))
        .await;
    assert!(v["packages"].is_null(), "{}", v["packages"]);
}
