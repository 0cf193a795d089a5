//! `opampctl configs …` and `opampctl rollout …` against a real opampd, with
//! plain-HTTP agents that apply (or reject) what they are offered.

use opamp_proto::pb;
use opamp_tests::cli::{code, fails, json, ok};
use opamp_tests::client::{applied, full_report, heartbeat, http_exchange, new_uid};
use opamp_tests::{bin, stderr, stdout, Server};

use std::process::{Command, Stdio};

#[test]
fn apply_is_idempotent_and_every_version_can_be_read_back() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, "receivers:\n  otlp: {}\n").unwrap();

    let out = ok(&s.ctl(&[
        "configs",
        "apply",
        "-f",
        f,
        "--selector",
        "service.name=checkout",
        "--description",
        "base",
    ]));
    assert!(
        out.contains("configuration/otel created (version 1)"),
        "{out}"
    );
    let out = ok(&s.ctl(&[
        "configs",
        "apply",
        "-f",
        f,
        "--selector",
        "service.name=checkout",
        "--description",
        "base",
    ]));
    assert!(
        out.contains("configuration/otel unchanged (version 1"),
        "{out}"
    );
    std::fs::write(&file, "receivers:\n  otlp: {}\n  prometheus: {}\n").unwrap();
    let j = json(&s.ctl(&[
        "configs",
        "apply",
        "-f",
        f,
        "--selector",
        "service.name=checkout",
        "-o",
        "json",
    ]));
    assert_eq!(j["version"], 2);
    assert_eq!(j["content_type"], "text/yaml");
    assert_eq!(j["result"], "updated");
    // Another name, from standard input would need --name; from a file, --name wins.
    ok(&s.ctl(&["configs", "apply", "-f", f, "--name", "edge"]));

    let list = json(&s.ctl(&["configs", "list", "-o", "json"]));
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["edge", "otel"]);
    let table = ok(&s.ctl(&["configs", "list"]));
    assert!(
        table.contains("otel") && table.contains("service.name=checkout"),
        "{table}"
    );

    let body = ok(&s.ctl(&["configs", "show", "otel"]));
    assert!(body.contains("prometheus"), "{body}");
    let v1 = json(&s.ctl(&["configs", "show", "otel", "--version", "1", "-o", "json"]));
    assert_eq!(v1["body"], "receivers:\n  otlp: {}\n");
    let hist = json(&s.ctl(&["configs", "history", "otel", "-o", "json"]));
    assert_eq!(hist["items"].as_array().unwrap().len(), 2);
    assert_eq!(hist["total"], 2);
    assert!(ok(&s.ctl(&["configs", "history", "otel"])).contains("VERSION"));

    let diff = ok(&s.ctl(&["configs", "diff", "otel", "--from", "1", "--to", "2"]));
    assert!(diff.contains("+  prometheus: {}"), "{diff}");
    let d = json(&s.ctl(&["configs", "diff", "otel", "-o", "json"]));
    assert_eq!((d["from"].as_u64(), d["to"].as_u64()), (Some(1), Some(2)));

    let o = s.ctl(&["configs", "rollback", "otel", "--to", "1"]);
    ok(&o);
    assert!(stderr(&o).contains("now version 3"), "{}", stderr(&o));
    let v3 = json(&s.ctl(&["configs", "show", "otel", "-o", "json"]));
    assert_eq!(
        (v3["version"].as_u64(), v3["body"].as_str()),
        (Some(3), Some("receivers:\n  otlp: {}\n"))
    );

    ok(&s.ctl(&["configs", "delete", "edge"]));
    fails(&s.ctl(&["configs", "show", "edge"]), "404");
    fails(
        &s.ctl(&["configs", "show", "otel", "--version", "9"]),
        "404",
    );

    // Bad input: a file that is not there, standard input without a name, an invalid name.
    let o = s.ctl(&["configs", "apply", "-f", "-"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--name"));
    let o = s.ctl(&["configs", "apply", "-f", f, "--name", "bad name/"]);
    assert_eq!(code(&o), 2, "a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("400"), "{}", stderr(&o));
}

async fn http_agent(s: &Server, service: &str) -> [u8; 16] {
    let uid = new_uid();
    let (st, _, _) = http_exchange(&s.opamp_url(), &full_report(uid, 0, service)).await;
    assert_eq!(st, 200);
    uid
}

/// The agent polls once; returns the hash of what it was offered.
async fn poll_offer(s: &Server, uid: [u8; 16], seq: u64) -> Vec<u8> {
    let (_, _, r) = http_exchange(&s.opamp_url(), &heartbeat(uid, seq)).await;
    r.unwrap()
        .remote_config
        .expect("an offer at the next poll")
        .config_hash
}

fn spawn_ctl(s: &Server, args: &[&str]) -> std::process::Child {
    Command::new(bin("opampctl"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OPAMPCTL_SERVER", s.url())
        .env("OPAMPCTL_TOKEN", s.token())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn rollout_start_watch_until_completed() {
    let s = Server::start();
    let uid = http_agent(&s, "checkout").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("base.yaml");
    std::fs::write(&file, "exporters: {debug: {}}\n").unwrap();
    ok(&s.ctl(&[
        "configs",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--selector",
        "service.name=checkout",
    ]));
    let st = json(&s.ctl(&["rollout", "start", "base", "-o", "json"]));
    assert_eq!(
        (st["total"].as_u64(), st["state"].as_str()),
        (Some(1), Some("running"))
    );

    let mut watch = spawn_ctl(
        &s,
        &[
            "rollout",
            "status",
            "base",
            "--watch",
            "--interval",
            "200ms",
        ],
    );
    // Its first progress line (plain lines on stderr when not on a terminal)
    // shows the rollout still waiting for the agent.
    let err = watch.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a progress line");
    assert!(
        first.contains("running") && first.contains("1 pending"),
        "{first}"
    );
    let hash = poll_offer(&s, uid, 1).await;
    http_exchange(
        &s.opamp_url(),
        &applied(uid, 2, &hash, pb::RemoteConfigStatuses::Applied, ""),
    )
    .await;
    let o = watch.wait_with_output().unwrap();
    let out = ok(&o);
    assert!(out.contains("completed"), "{out}");
    let more: Vec<String> = rx.iter().collect();
    assert!(
        more.iter().any(|l| l.contains("1 applied")),
        "progress lines on stderr: {more:?}"
    );
    let st = json(&s.ctl(&["rollout", "status", "base", "-o", "json"]));
    assert_eq!(
        (st["state"].as_str(), st["applied"].as_u64()),
        (Some("completed"), Some(1))
    );
    fails(&s.ctl(&["rollout", "status", "nope"]), "404");
    let o = s.ctl(&["rollout", "start", "base", "--batch-size", "0"]);
    assert_eq!(code(&o), 2);
}

#[tokio::test]
async fn a_failed_agent_makes_status_exit_1_and_pause_resume_work() {
    let s = Server::start();
    let bad = http_agent(&s, "checkout").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.yaml");
    std::fs::write(&file, "v: 1\n").unwrap();
    ok(&s.ctl(&[
        "configs",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--selector",
        "service.name=checkout",
    ]));
    ok(&s.ctl(&["rollout", "start", "edge", "--max-failures", "0"]));
    let watch = spawn_ctl(
        &s,
        &[
            "rollout",
            "status",
            "edge",
            "--watch",
            "--interval",
            "200ms",
        ],
    );
    let hash = poll_offer(&s, bad, 1).await;
    http_exchange(
        &s.opamp_url(),
        &applied(
            bad,
            2,
            &hash,
            pb::RemoteConfigStatuses::Failed,
            "exporter refused",
        ),
    )
    .await;
    let o = watch.wait_with_output().unwrap();
    assert_eq!(code(&o), 1, "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("exporter refused"), "{}", stdout(&o));
    let o = s.ctl(&["rollout", "status", "edge"]);
    assert_eq!(code(&o), 1);
    let o = s.ctl(&["rollout", "status", "edge", "-q"]);
    assert_eq!(code(&o), 1);
    assert!(o.stdout.is_empty());

    // Pause and resume a rollout that is still waiting for an agent.
    let slow = http_agent(&s, "search").await;
    let _ = slow;
    std::fs::write(&file, "v: 1\n").unwrap();
    ok(&s.ctl(&[
        "configs",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--name",
        "slow",
        "--selector",
        "service.name=search",
    ]));
    ok(&s.ctl(&["rollout", "start", "slow"]));
    let j = json(&s.ctl(&["rollout", "pause", "slow", "-o", "json"]));
    assert_eq!(j["state"], "paused");
    let st = s.ctl(&["rollout", "status", "slow"]);
    assert_eq!(code(&st), 1, "paused, even by hand: {}", stderr(&st));
    assert!(
        stderr(&st).contains("opampctl rollout resume slow"),
        "{}",
        stderr(&st)
    );
    let o = s.ctl(&["rollout", "resume", "slow"]);
    ok(&o);
    assert!(stderr(&o).contains("running"), "{}", stderr(&o));
}
