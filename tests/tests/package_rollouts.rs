//! Staged package rollouts over real sockets: a real opampd, agents of the
//! agent library downloading real files from a real HTTP server, the real
//! opampctl. A mixed fleet (two platforms, one agent without a file for its
//! platform, one without AcceptsPackages, one whose install fails) upgraded
//! in batches: the failure pauses the rollout, opampd restarts in the
//! middle, the fixed agent installs, the resumed rollout completes, and
//! nothing is offered again. The same on PostgreSQL.

use opamp_agent::agent::{Agent, AgentSettings, OfferPolicy};
use opamp_agent::session::Session;
use opamp_agent::ws::{self, WsOptions};
use opamp_tests::cli::{code, fails, json, ok};
use opamp_tests::client::uid_str;
use opamp_tests::{Opts, Server};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PACKAGE: &str = "otelcol-contrib";

/// A file server on a real socket: `/amd64` and `/arm64` are the two
/// platforms' release archives.
async fn file_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let body = file(path.trim_start_matches('/'));
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    url
}

fn file(arch: &str) -> Vec<u8> {
    format!("otelcol-contrib 0.120.0 for linux/{arch}\n")
        .repeat(200)
        .into_bytes()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An agent on `os/arch` that has 0.119.0, installing offers by `policy`.
fn agent(uid: [u8; 16], os: &str, arch: &str, accepts: bool, policy: OfferPolicy) -> Agent {
    let mut settings = AgentSettings::new(uid)
        .identifying("service.name", "collector")
        .non_identifying("os.type", os)
        .non_identifying("host.arch", arch)
        .package(PACKAGE, "0.119.0", &[7; 32], true)
        .package_policy(policy);
    if accepts {
        settings = settings.accepts_packages();
    }
    Agent::new(settings)
}

async fn connect(server: &Server, agent: Agent) -> Session<ws::WebSocket> {
    let socket = ws::connect(&server.ws_url(), &WsOptions::default())
        .await
        .unwrap();
    let mut session = Session::new(agent, socket);
    session.start().await.unwrap();
    session
}

/// Lets every agent take what opampd pushes until `done(status)` holds.
async fn pump(
    server: &Server,
    sessions: &mut [Session<ws::WebSocket>],
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for session in sessions.iter_mut() {
            if session
                .receive(Duration::from_millis(30))
                .await
                .unwrap()
                .is_none()
            {
                session.heartbeat().await.unwrap();
            }
        }
        let (code, status) = server
            .get(&format!("/api/v1/packages/{PACKAGE}/rollout"))
            .await;
        assert_eq!(code, 200, "{status}");
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {status:#}"
        );
    }
}

fn agent_entry<'a>(status: &'a Value, uid: &[u8; 16]) -> &'a Value {
    status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["instance_uid"] == uid_str(uid))
        .unwrap_or_else(|| panic!("{} not in {status:#}", uid_str(uid)))
}

async fn staged_upgrade(mut server: Server) {
    let files = file_server().await;
    let (status_code, added) = server
        .send_json(
            "POST",
            "/api/v1/packages",
            json!({
                "name": PACKAGE, "version": "0.120.0", "unsigned": true, "allow_insecure_url": true,
                "files": [
                    {"os": "linux", "arch": "amd64", "url": format!("{files}/amd64"), "sha256": sha256(&file("amd64"))},
                    {"os": "linux", "arch": "arm64", "url": format!("{files}/arm64"), "sha256": sha256(&file("arm64"))},
                ],
            }),
        )
        .await;
    assert_eq!(status_code, 201, "{added}");

    // Batches follow uid order: [amd, arm], [failing, amd2]; two skipped.
    let amd = [0x10; 16];
    let arm = [0x20; 16];
    let failing = [0x30; 16];
    let amd2 = [0x40; 16];
    let darwin = [0x50; 16];
    let deaf = [0x60; 16];
    let mut sessions = Vec::new();
    for a in [
        agent(amd, "linux", "amd64", true, OfferPolicy::Apply),
        agent(arm, "linux", "arm64", true, OfferPolicy::Apply),
        agent(
            failing,
            "linux",
            "amd64",
            true,
            OfferPolicy::Fail("disk full".into()),
        ),
        agent(amd2, "linux", "amd64", true, OfferPolicy::Apply),
        agent(darwin, "darwin", "arm64", true, OfferPolicy::Apply),
        agent(deaf, "linux", "amd64", false, OfferPolicy::Apply),
    ] {
        sessions.push(connect(&server, a).await);
    }

    // Not yet rolled out: 404 that says how to start.
    fails(
        &server.ctl(&["packages", "rollout", "status", PACKAGE]),
        "opampctl packages rollout start",
    );

    // The dry run names each agent's file, or why it gets none.
    let plan = json(&server.ctl(&[
        "-o",
        "json",
        "packages",
        "rollout",
        "start",
        PACKAGE,
        "--version",
        "0.120.0",
        "--batch-size",
        "2",
        "--dry-run",
    ]));
    assert_eq!(
        (plan["offered"].as_u64(), plan["skipped"].as_u64()),
        (Some(4), Some(2)),
        "{plan:#}"
    );
    assert_eq!(plan["batches"], 2, "{plan:#}");
    let planned = |uid: &[u8; 16]| {
        plan["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["instance_uid"] == uid_str(uid))
            .cloned()
            .unwrap()
    };
    assert_eq!(planned(&amd)["file"], "linux/amd64");
    assert_eq!(planned(&arm)["file"], "linux/arm64");
    assert_eq!(planned(&arm)["url"], format!("{files}/arm64"));
    assert_eq!(planned(&failing)["batch"], 1);
    assert!(planned(&darwin)["reason"]
        .as_str()
        .unwrap()
        .contains("darwin/arm64"));
    assert!(planned(&deaf)["reason"]
        .as_str()
        .unwrap()
        .contains("AcceptsPackages"));
    let (_, nothing) = server
        .get(&format!("/api/v1/packages/{PACKAGE}/rollout"))
        .await;
    assert_eq!(
        nothing["error"]["code"], "not_found",
        "a dry run starts nothing"
    );

    let started = server.ctl(&[
        "packages",
        "rollout",
        "start",
        PACKAGE,
        "--batch-size",
        "2",
        "--batch-timeout",
        "0",
    ]);
    ok(&started);
    let said = String::from_utf8_lossy(&started.stderr).to_string();
    assert!(
        said.contains("rollout of otelcol-contrib 0.120.0 started: 4 agents in 2 batches of 2")
            && said.contains("2 agents skipped"),
        "{said}"
    );

    // Batch 0 installs its platform's file; batch 1 follows (its agents
    // are held still, so opampd restarts before they report).
    let status = pump(&server, &mut sessions[..2], "batch 0 installed", |s| {
        s["installed"] == 2 && s["released_batches"] == 2
    })
    .await;
    assert_eq!(status["state"], "running", "{status:#}");
    assert_eq!(status["skipped"], 2, "{status:#}");
    assert_eq!(agent_entry(&status, &darwin)["state"], "skipped");
    for (session, arch) in [(&sessions[0], "amd64"), (&sessions[1], "arm64")] {
        let has = &session.agent().packages()[PACKAGE];
        assert_eq!(has.version, "0.120.0", "{arch}");
    }
    assert_eq!(
        sessions[5].agent().packages()[PACKAGE].version,
        "0.119.0",
        "an agent without AcceptsPackages is not offered"
    );

    // opampd restarts in the middle: the rollout goes on where it was.
    let mut agents: Vec<Agent> = sessions.into_iter().map(|s| s.into_parts().0).collect();
    server.restart();
    let restarted = json(&server.ctl(&["-o", "json", "packages", "rollout", "status", PACKAGE]));
    assert_eq!(
        (
            &restarted["state"],
            &restarted["installed"],
            &restarted["released_batches"]
        ),
        (&json!("running"), &json!(2), &json!(2)),
        "{restarted:#}"
    );
    let mut sessions = Vec::new();
    for a in agents.drain(..) {
        sessions.push(connect(&server, a).await);
    }

    // The failing install pauses the rollout, with the agent's error.
    let status = pump(&server, &mut sessions, "the failure to pause", |s| {
        s["state"] == "paused" && s["installed"] == 3
    })
    .await;
    assert_eq!(status["failed"], 1, "{status:#}");
    assert_eq!(status["failures"][0]["instance_uid"], uid_str(&failing));
    assert_eq!(agent_entry(&status, &failing)["error"], "disk full");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("max_failures 0"),
        "{status:#}"
    );
    let shown = server.ctl(&["packages", "rollout", "status", PACKAGE]);
    assert_eq!(code(&shown), 1, "a paused rollout exits 1");
    let text = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(
        text.contains("paused") && text.contains("disk full"),
        "{text}"
    );
    let (_, metrics) = metrics(&server).await;
    assert!(
        metrics.contains("opamp_platform_package_rollouts{state=\"paused\"} 1"),
        "{metrics}"
    );

    // Resuming with the failure still there is refused.
    fails(
        &server.ctl(&["packages", "rollout", "resume", PACKAGE]),
        "--max-failures 1",
    );

    // The agent is fixed (restarted with room on its disk): it reports what
    // it has, is offered the version again and installs it.
    let fixed = sessions.remove(2);
    drop(fixed);
    sessions.push(
        connect(
            &server,
            agent(failing, "linux", "amd64", true, OfferPolicy::Apply),
        )
        .await,
    );
    pump(&server, &mut sessions, "the fixed agent to install", |s| {
        s["failed"] == 0 && s["installed"] == 4
    })
    .await;

    ok(&server.ctl(&["packages", "rollout", "resume", PACKAGE]));
    let status = pump(&server, &mut sessions, "completion", |s| {
        s["state"] == "completed"
    })
    .await;
    assert_eq!(
        (&status["installed"], &status["skipped"], &status["failed"]),
        (&json!(4), &json!(2), &json!(0)),
        "{status:#}"
    );
    assert_eq!(
        code(&server.ctl(&["packages", "rollout", "status", PACKAGE])),
        0,
        "a completed rollout exits 0"
    );

    // Never offered again what an agent reports installed.
    let (agent, _) = sessions.remove(0).into_parts();
    let mut again = Session::new(
        agent,
        ws::connect(&server.ws_url(), &WsOptions::default())
            .await
            .unwrap(),
    );
    let reply = again.start().await.unwrap();
    assert!(reply.packages_available.is_none(), "{reply:?}");

    let (_, audit) = server.get("/api/v1/audit?limit=100").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "package.rollout.start",
        "package.rollout.pause",
        "package.rollout.resume",
        "package.rollout.complete",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

async fn metrics(server: &Server) -> (u16, String) {
    let response = server
        .http()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_mixed_fleet_is_upgraded_in_stages_and_a_failure_pauses_it() {
    staged_upgrade(Server::start()).await;
}

#[tokio::test]
async fn a_mixed_fleet_is_upgraded_in_stages_on_postgresql() {
    let test = "a_mixed_fleet_is_upgraded_in_stages_on_postgresql";
    if opamp_tests::postgres::available(test).is_none() {
        return;
    }
    staged_upgrade(Server::start_with(Opts {
        postgres: true,
        ..Default::default()
    }))
    .await;
}

#[tokio::test]
async fn a_rollout_of_an_unknown_package_or_with_a_bad_selector_is_refused() {
    let server = Server::start();
    let (code, body) = server
        .send_json(
            "POST",
            &format!("/api/v1/packages/{PACKAGE}/rollout"),
            json!({}),
        )
        .await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("opampctl packages add"),
        "{body}"
    );
    let (code, body) = server
        .send_json(
            "POST",
            &format!("/api/v1/packages/{PACKAGE}/rollout"),
            json!({"selector": "a=="}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
}

/// Uploads `bytes` as the hosted linux/`arch` file of `PACKAGE` `version`.
fn upload(
    server: &Server,
    dir: &std::path::Path,
    version: &str,
    arch: &str,
    bytes: &[u8],
) -> std::process::Output {
    let path = dir.join(format!("otelcol-contrib_{version}_linux_{arch}.tar.gz"));
    std::fs::write(&path, bytes).unwrap();
    server.ctl(&[
        "packages",
        "upload",
        PACKAGE,
        version,
        path.to_str().unwrap(),
        "--platform",
        &format!("linux/{arch}"),
        "--unsigned",
    ])
}

/// A hosted file through a staged rollout: the agents download it from
/// opampd's /v1/packages/… address, check its SHA-256 and report it
/// installed; a file uploaded for the running rollout's version reaches the
/// agent it was missing for at once; the version cannot be deleted while
/// the rollout runs, nor be named like a route.
async fn hosted_rollout(server: Server) {
    let dir = tempfile::tempdir().unwrap();
    let amd64 = file("amd64");
    let arm64 = file("arm64");
    ok(&upload(&server, dir.path(), "0.120.0", "amd64", &amd64));

    // A version named like a route segment is refused, naming it.
    let refused = upload(&server, dir.path(), "rollout", "amd64", &amd64);
    assert_eq!(code(&refused), 2, "{}", opamp_tests::stderr(&refused));
    let said = opamp_tests::stderr(&refused);
    assert!(
        said.contains("version \"rollout\"") && said.contains("/api/v1/packages/{name}/rollout"),
        "{said}"
    );

    // Batches in uid order: [amd], [amd2]; arm is skipped (no arm64 file yet).
    let amd = [0x10; 16];
    let arm = [0x20; 16];
    let amd2 = [0x30; 16];
    let mut sessions = Vec::new();
    for (uid, arch) in [(amd, "amd64"), (arm, "arm64"), (amd2, "amd64")] {
        sessions.push(connect(&server, agent(uid, "linux", arch, true, OfferPolicy::Apply)).await);
    }
    ok(&server.ctl(&[
        "packages",
        "rollout",
        "start",
        PACKAGE,
        "--version",
        "0.120.0",
        "--batch-size",
        "1",
        "--batch-timeout",
        "0",
    ]));
    // Batch 0 installs from opampd; batch 1 is released (its agent held still).
    let status = pump(&server, &mut sessions[..1], "batch 0 installed", |s| {
        s["installed"] == 1 && s["released_batches"] == 2
    })
    .await;
    assert_eq!(status["state"], "running", "{status:#}");
    assert_eq!(agent_entry(&status, &arm)["state"], "skipped", "{status:#}");
    assert_eq!(sessions[0].agent().packages()[PACKAGE].version, "0.120.0");
    // The only copy of the file is opampd's: the agent downloaded it there.
    let shown = json(&server.ctl(&["-o", "json", "packages", "show", PACKAGE, "0.120.0"]));
    assert_eq!(
        shown["files"][0]["url"],
        format!(
            "{}/v1/packages/{PACKAGE}/0.120.0/files/linux/amd64",
            server.url()
        )
    );
    assert_eq!(shown["files"][0]["sha256"], sha256(&amd64));

    // The version of a running rollout cannot be deleted.
    let refused = server.ctl(&["packages", "delete", PACKAGE, "0.120.0"]);
    assert_eq!(code(&refused), 1);
    let said = opamp_tests::stderr(&refused);
    assert!(
        said.contains("409") && said.contains("running") && said.contains("rollout start"),
        "{said}"
    );

    // The arm64 file uploaded now reaches the skipped agent without any
    // other change to the rollout.
    ok(&upload(&server, dir.path(), "0.120.0", "arm64", &arm64));
    let status = pump(
        &server,
        &mut sessions[1..2],
        "the arm64 agent to install",
        |s| s["installed"] == 2,
    )
    .await;
    assert_eq!(
        agent_entry(&status, &arm)["state"],
        "installed",
        "{status:#}"
    );
    assert_eq!(sessions[1].agent().packages()[PACKAGE].version, "0.120.0");

    let status = pump(&server, &mut sessions, "completion", |s| {
        s["state"] == "completed"
    })
    .await;
    assert_eq!(
        (&status["installed"], &status["skipped"]),
        (&json!(3), &json!(0)),
        "{status:#}"
    );
}

#[tokio::test]
async fn a_hosted_file_goes_through_a_staged_rollout() {
    hosted_rollout(Server::start()).await;
}

#[tokio::test]
async fn a_hosted_file_goes_through_a_staged_rollout_on_postgresql() {
    let test = "a_hosted_file_goes_through_a_staged_rollout_on_postgresql";
    if opamp_tests::postgres::available(test).is_none() {
        return;
    }
    hosted_rollout(Server::start_with(Opts {
        postgres: true,
        ..Default::default()
    }))
    .await;
}
