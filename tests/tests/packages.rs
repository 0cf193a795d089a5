//! Packages over real sockets: agents of the agent library with
//! AcceptsPackages and ReportsPackageStatuses report what they have; a real
//! opampd announces OffersPackages, stores the statuses per agent (within
//! opamp.max_stored_bytes_per_agent, across restarts) and shows them in the
//! API and `opampctl agents show`. The catalogue through the real opampctl:
//! versions by reference, the safety rules and their overrides, roles, audit.

use opamp_agent::agent::{Agent, AgentSettings};
use opamp_agent::session::Session;
use opamp_agent::ws::{self, WsOptions};
use opamp_tests::cli::{fails, json, ok};
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

/// opampctl exited with `exit` and said `needle`.
#[track_caller]
fn rejects(o: &std::process::Output, exit: i32, needle: &str) {
    let stderr = opamp_tests::stderr(o);
    assert_eq!(opamp_tests::cli::code(o), exit, "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
}

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn add<'a>(version: &'a str, platform: &'a str, url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "packages",
        "add",
        "otelcol-contrib",
        version,
        "--platform",
        platform,
        "--url",
        url,
        "--sha256",
        SHA,
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test]
async fn the_catalogue_lists_versions_by_reference_under_its_safety_rules() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("otelcol-contrib.tar.gz.sigstore.json");
    std::fs::write(
        &bundle,
        br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#,
    )
    .unwrap();
    let bundle = bundle.to_str().unwrap();
    let url = "https://github.com/open-telemetry/opentelemetry-collector-releases/releases/download/v0.120.0/otelcol-contrib_0.120.0_linux_amd64.tar.gz";

    // Safety rules, each naming its override.
    rejects(
        &server.ctl(&add("0.120.0", "linux/amd64", url, &[])),
        2,
        "--unsigned",
    );
    rejects(
        &server.ctl(&add(
            "0.120.0",
            "linux/amd64",
            "http://mirror.example.com/a.tar.gz",
            &["--signature-file", bundle],
        )),
        2,
        "--allow-http",
    );
    rejects(
        &server.ctl(&add("0.120.0", "linux", url, &["--unsigned"])),
        2,
        "OS/ARCH",
    );
    let mut bad_sha = add("0.120.0", "linux/amd64", url, &["--unsigned"]);
    bad_sha[9] = "abc";
    rejects(&server.ctl(&bad_sha), 2, "64 hex digits");

    let created = json(
        &server.ctl(
            &[
                &["-o", "json"][..],
                &add("0.120.0", "linux/amd64", url, &["--signature-file", bundle]),
            ]
            .concat(),
        ),
    );
    assert_eq!(created["result"], "created");
    assert_eq!(created["files"][0]["signed"], true);
    assert_eq!(created["files"][0]["sha256"], SHA);
    // Another platform of the same version; http allowed on request, unsigned on request.
    let text = ok(&server.ctl(&add(
        "0.120.0",
        "linux/arm64",
        "http://mirror.example.com/otelcol-contrib_0.120.0_linux_arm64.tar.gz",
        &["--allow-http", "--unsigned"],
    )));
    assert!(
        text.contains("package/otelcol-contrib 0.120.0 updated (2 files)"),
        "{text}"
    );
    // A listed platform's file never changes.
    let mut changed = add("0.120.0", "linux/amd64", url, &["--unsigned"]);
    changed[9] = "0000000000000000000000000000000000000000000000000000000000000000";
    fails(&server.ctl(&changed), "never change");
    // Older than the newest listed: only with --allow-downgrade.
    fails(
        &server.ctl(&add("0.119.0", "linux/amd64", url, &["--unsigned"])),
        "--allow-downgrade",
    );
    ok(&server.ctl(&add(
        "0.119.0",
        "linux/amd64",
        url,
        &["--unsigned", "--allow-downgrade"],
    )));

    let listed = ok(&server.ctl(&["packages", "list"]));
    assert!(
        listed.contains("NAME") && listed.contains("linux/amd64,linux/arm64"),
        "{listed}"
    );
    let shown = json(&server.ctl(&[
        "-o",
        "json",
        "packages",
        "show",
        "otelcol-contrib",
        "0.120.0",
    ]));
    assert_eq!(shown["type"], "top_level");
    assert_eq!(shown["files"].as_array().unwrap().len(), 2);
    assert_eq!(shown["files"][1]["signed"], false);
    let versions = json(&server.ctl(&["-o", "json", "packages", "list", "otelcol-contrib"]));
    assert_eq!(versions.as_array().unwrap().len(), 2);

    // Admin only: an operator token cannot add or delete.
    let (code, _) = server
        .send_json("POST", "/api/v1/users", serde_json::json!({"username": "olga", "password": "operator-password-1", "role": "operator"}))
        .await;
    assert_eq!(code, 201);
    let (_, login) = server
        .send_json(
            "POST",
            "/api/v1/auth/login",
            serde_json::json!({"username": "olga", "password": "operator-password-1"}),
        )
        .await;
    let operator = login["token"].as_str().unwrap().to_string();
    let refused = opamp_tests::ctl_env(
        &["packages", "delete", "otelcol-contrib", "0.119.0"],
        &[
            ("OPAMPCTL_SERVER", &server.url()),
            ("OPAMPCTL_TOKEN", &operator),
        ],
    );
    fails(&refused, "403");

    ok(&server.ctl(&["packages", "delete", "otelcol-contrib", "0.119.0"]));
    fails(
        &server.ctl(&["packages", "show", "otelcol-contrib", "0.119.0"]),
        "no package",
    );
    let audit = ok(&server.ctl(&["-o", "json", "audit"]));
    for action in ["package.create", "package.update", "package.delete"] {
        assert!(audit.contains(action), "{action} audited: {audit}");
    }
}
