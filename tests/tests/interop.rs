//! Interoperability with the published Python OpAMP client
//! (opentelemetry-opamp-client, pinned in scripts/test-deps.sh), a client
//! nobody on this project wrote. It speaks plain HTTP only.

use opamp_tests::{free_addr, interop_python, root, wait_for, Opts, Server};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn python() -> Option<std::path::PathBuf> {
    match interop_python() {
        Some(p) => Some(p),
        None if std::env::var("OPAMP_REQUIRE_TOOLS").as_deref() == Ok("1") => {
            panic!("the interop venv is missing: run scripts/test-deps.sh")
        }
        None => {
            eprintln!("SKIPPED (Python OpAMP client not installed: run scripts/test-deps.sh)");
            None
        }
    }
}

fn spawn_agent(
    py: &Path,
    url: &str,
    name: &str,
    events: &Path,
    seconds: f64,
    extra: &[&str],
) -> Child {
    Command::new(py)
        .arg(root().join("tests/interop/py_agent.py"))
        .args(["--url", url, "--name", name, "--events"])
        .arg(events)
        .args(["--seconds", &seconds.to_string(), "--heartbeat", "0.3"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start python agent")
}

pub fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn listed(s: &Server, name: &str, status: &str) -> Option<Value> {
    let (code, v) = s
        .get(&format!("/api/v1/agents?selector=service.name={name}"))
        .await;
    if code != 200 {
        return None;
    }
    v["items"]
        .as_array()?
        .iter()
        .find(|a| a["status"] == status)
        .cloned()
}

#[tokio::test]
async fn python_agents_connect_are_listed_and_survive_a_restart() {
    let Some(py) = python() else { return };
    let listen = free_addr();
    let mut s = Server::start_with(Opts {
        listen: Some(listen.clone()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("events.jsonl");
    let mut agents: Vec<Child> = ["py-alpha", "py-beta"]
        .iter()
        .map(|n| spawn_agent(&py, &s.opamp_url(), n, &ev, 14.0, &[]))
        .collect();
    for name in ["py-alpha", "py-beta"] {
        let a = wait_for(&format!("{name} listed"), Duration::from_secs(20), || {
            listed(&s, name, "connected")
        })
        .await;
        assert_eq!(a["transport"], "http");
        assert_eq!(a["identifying_attributes"]["service.name"], name);
        assert_eq!(a["non_identifying_attributes"]["host.name"], "interop-host");
        assert_eq!(a["health"]["healthy"], true, "{a}");
        assert!(a["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "ReportsHeartbeat"));
    }
    // Every exchange echoed the uid and carried server capabilities; a full first
    // report was never answered with a full-state request.
    wait_for("a few polls", Duration::from_secs(10), || async {
        (events(&ev)
            .iter()
            .filter(|e| e["event"] == "exchange")
            .count()
            >= 6)
            .then_some(())
    })
    .await;
    let evs = events(&ev);
    let exchanges: Vec<&Value> = evs.iter().filter(|e| e["event"] == "exchange").collect();
    assert!(exchanges.len() >= 4, "{evs:?}");
    assert!(exchanges
        .iter()
        .all(|e| e["uid_echoed"] == true && e["capabilities"].as_u64().unwrap() & 1 == 1));
    let needless: Vec<&&Value> = exchanges
        .iter()
        .filter(|e| {
            e["flags"].as_u64() == Some(1)
                && e["sent"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == "agent_description")
        })
        .collect();
    assert!(
        needless.is_empty(),
        "full state requested after a full report: {needless:?}"
    );
    assert!(
        !evs.iter()
            .any(|e| e["event"] == "server_error" || e["event"] == "library_error"),
        "{evs:?}"
    );

    // Restart opampd on the same address while the agents keep polling.
    s.stop();
    s.start_again();
    for name in ["py-alpha", "py-beta"] {
        let a = wait_for(
            &format!("{name} back after restart"),
            Duration::from_secs(20),
            || listed(&s, name, "connected"),
        )
        .await;
        assert_eq!(a["identifying_attributes"]["service.name"], name);
    }
    let (_, all) = s.get("/api/v1/agents").await;
    assert_eq!(all["total"], 2, "the same two agents, not new ones: {all}");
    for a in &mut agents {
        assert!(a.wait().unwrap().success());
    }
    // They said goodbye on exit.
    for name in ["py-alpha", "py-beta"] {
        wait_for(
            &format!("{name} disconnected"),
            Duration::from_secs(10),
            || listed(&s, name, "disconnected"),
        )
        .await;
    }
    let _ = listen;
}

#[tokio::test]
async fn python_agent_applies_a_rolled_out_configuration() {
    let Some(py) = python() else { return };
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("events.jsonl");
    let mut good = spawn_agent(&py, &s.opamp_url(), "py-apply", &ev, 12.0, &[]);
    let mut bad = spawn_agent(
        &py,
        &s.opamp_url(),
        "py-reject",
        &ev,
        12.0,
        &["--reject-config"],
    );
    for name in ["py-apply", "py-reject"] {
        wait_for(&format!("{name} listed"), Duration::from_secs(20), || {
            listed(&s, name, "connected")
        })
        .await;
    }
    let body = "receivers:\n  otlp:\n    protocols:\n      http: {}\n";
    let (code, created) = s
        .send_json(
            "POST",
            "/api/v1/configurations",
            serde_json::json!({"name": "collector-base", "body": body, "content_type": "text/yaml", "selector": "service.name=py-apply"}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let (code, started) = s
        .send_json(
            "POST",
            "/api/v1/configurations/collector-base/rollout",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(code, 202, "{started}");
    let status = wait_for("rollout completed", Duration::from_secs(20), || async {
        let (_, st) = s.get("/api/v1/configurations/collector-base/rollout").await;
        (st["state"] == "completed").then_some(st)
    })
    .await;
    assert_eq!(
        (status["total"].as_u64(), status["applied"].as_u64()),
        (Some(1), Some(1)),
        "{status}"
    );
    let evs = events(&ev);
    let received: Vec<&Value> = evs
        .iter()
        .filter(|e| e["event"] == "config_received" && e["agent"] == "py-apply")
        .collect();
    assert_eq!(received.len(), 1, "offered once, never resent: {evs:?}");
    assert_eq!(
        received[0]["files"]["collector-base"], body,
        "a file named after the configuration"
    );
    assert!(evs
        .iter()
        .any(|e| e["event"] == "config_applied" && e["agent"] == "py-apply"));
    assert!(
        !evs.iter()
            .any(|e| e["event"] == "config_received" && e["agent"] == "py-reject"),
        "the selector excludes the other agent"
    );
    let a = listed(&s, "py-apply", "connected").await.unwrap();
    assert_eq!(a["remote_config"]["status"], "applied", "{a}");
    assert_eq!(a["remote_config"]["name"], "collector-base");

    // Retarget to the rejecting agent: it reports FAILED with its message.
    let (code, _) = s
        .send_json(
            "POST",
            "/api/v1/configurations",
            serde_json::json!({"name": "collector-base", "body": body, "content_type": "text/yaml", "selector": "service.name=py-reject"}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = s
        .send_json(
            "POST",
            "/api/v1/configurations/collector-base/rollout",
            serde_json::json!({"max_failures": 0}),
        )
        .await;
    assert_eq!(code, 202);
    let st = wait_for(
        "rollout paused by the failure",
        Duration::from_secs(20),
        || async {
            let (_, st) = s.get("/api/v1/configurations/collector-base/rollout").await;
            (st["failed"] == 1).then_some(st)
        },
    )
    .await;
    assert_eq!(st["failures"][0]["error"], "rejected by test agent", "{st}");
    for a in [&mut good, &mut bad] {
        assert!(a.wait().unwrap().success());
    }
}
