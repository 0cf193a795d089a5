//! `opampctl audit`: the audit log with filters, JSON page shape, exit codes and -f.

use opamp_tests::cli::{code, json, ok};
use opamp_tests::{bin, ctl_env, stderr, Server};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn apply(s: &Server, dir: &std::path::Path, name: &str) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, format!("receivers: {{otlp: {{}}}}\n# {name}\n")).unwrap();
    ok(&s.ctl(&[
        "configs",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--name",
        name,
    ]));
}

fn actions(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|entry| entry["action"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn audit_filters_pages_and_refuses_bad_input() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    apply(&s, dir.path(), "first");
    apply(&s, dir.path(), "second");

    let page = json(&s.ctl(&["audit", "-o", "json"]));
    assert!(page["total"].as_u64().unwrap() >= 2, "{page}");
    assert!(page.get("next_cursor").is_some(), "{page}");
    assert!(
        actions(&page).iter().any(|a| a == "config.create"),
        "{page}"
    );

    let page = json(&s.ctl(&["audit", "--action", "config.create", "-o", "json"]));
    assert_eq!(actions(&page), ["config.create", "config.create"], "{page}");
    // Newest first.
    assert!(page["items"][0]["id"].as_i64() > page["items"][1]["id"].as_i64());

    let page = json(&s.ctl(&["audit", "--actor", "nobody", "-o", "json"]));
    assert_eq!(page["total"], 0, "{page}");
    assert_eq!(page["items"], Value::Array(vec![]), "{page}");

    let page = json(&s.ctl(&["audit", "--since", "2099-01-01T00:00:00Z", "-o", "json"]));
    assert_eq!(page["total"], 0, "{page}");
    let page = json(&s.ctl(&["audit", "--since", "1h", "-o", "json"]));
    assert!(page["total"].as_u64().unwrap() >= 2, "{page}");

    let page = json(&s.ctl(&[
        "audit",
        "--action",
        "config.create",
        "--limit",
        "1",
        "-o",
        "json",
    ]));
    assert_eq!(actions(&page).len(), 1, "{page}");
    assert!(page["next_cursor"].is_string(), "{page}");

    let table = ok(&s.ctl(&["audit", "--action", "config.create"]));
    let header = table.lines().next().unwrap();
    for column in ["TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.contains("second"), "{table}");

    let o = s.ctl(&["-q", "audit"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(o.stdout.is_empty());

    // A bad --since is a usage error that names the flag.
    let o = s.ctl(&["audit", "--since", "yesterday"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--since"), "{}", stderr(&o));
    // A refused token is an error reply: exit 1.
    let o = ctl_env(
        &["audit"],
        &[
            ("OPAMPCTL_SERVER", &s.url()),
            ("OPAMPCTL_TOKEN", "not-a-token"),
        ],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
}

#[test]
fn audit_follow_prints_new_entries() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    apply(&s, dir.path(), "before");
    let mut child = Command::new(bin("opampctl"))
        .env_clear()
        .env("HOME", std::env::temp_dir())
        .env("OPAMPCTL_SERVER", s.url())
        .env("OPAMPCTL_TOKEN", s.token())
        .args(["audit", "-f", "--interval", "200ms", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    // The entries so far, oldest first, then the new ones as they come.
    let first: Value =
        serde_json::from_str(&receiver.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert_eq!(first["action"], "user.create", "{first}");
    apply(&s, dir.path(), "after");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = receiver.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let entry: Value = serde_json::from_str(&line).unwrap();
        let done = entry["target"]
            .as_str()
            .is_some_and(|t| t.contains("after"));
        seen.push(entry);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter().any(|entry| entry["target"]
            .as_str()
            .is_some_and(|t| t.contains("after"))),
        "{seen:?}"
    );
}

#[tokio::test]
async fn agent_registrations_and_deletions_are_audited() {
    use opamp_tests::client::{full_report, http_exchange, new_uid, uid_str};
    let s = Server::start();
    let uid = new_uid();
    let (status, _, _) = http_exchange(&s.opamp_url(), &full_report(uid, 0, "checkout")).await;
    assert_eq!(status, 200);
    let id = uid_str(&uid);
    let page = opamp_tests::wait_for("the registration audited", Duration::from_secs(10), || {
        let page = json(&s.ctl(&["audit", "--action", "agent", "-o", "json"]));
        std::future::ready((page["total"] == 1).then_some(page))
    })
    .await;
    let entry = &page["items"][0];
    assert_eq!(entry["action"], "agent.register", "{page}");
    assert_eq!(entry["actor"], "agent", "{page}");
    assert_eq!(entry["target"], id.as_str(), "{page}");
    assert_eq!(entry["details"]["service.name"], "checkout", "{page}");
    // A heartbeat, a reconnect: no new registration.
    let (status, _, _) = http_exchange(&s.opamp_url(), &full_report(uid, 1, "checkout")).await;
    assert_eq!(status, 200);

    ok(&s.ctl(&["agents", "delete", &id, "--force"]));
    let page = json(&s.ctl(&["audit", "--action", "agent", "-o", "json"]));
    assert_eq!(actions(&page), ["agent.delete", "agent.register"], "{page}");
    assert_eq!(page["items"][0]["target"], id.as_str(), "{page}");
}
