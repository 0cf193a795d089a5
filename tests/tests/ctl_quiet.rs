//! `-q` prints nothing on success, for every command: a table over commands.

use opamp_tests::cli::code;
use opamp_tests::client::{full_report, http_exchange, new_uid, uid_str, CAPS};
use opamp_tests::{stderr, stdout, wait_for, Server};
use std::time::Duration;

#[tokio::test]
async fn quiet_prints_nothing_on_success_for_every_command() {
    let s = Server::start();
    let uid = new_uid();
    let mut report = full_report(uid, 0, "quiet");
    report.capabilities = CAPS;
    http_exchange(&s.opamp_url(), &report).await;
    wait_for("agent stored", Duration::from_secs(10), || async {
        let (code, _) = s.get(&format!("/api/v1/agents/{}", uid_str(&uid))).await;
        (code == 200).then_some(())
    })
    .await;
    let id = uid_str(&uid);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let file = dir.path().join("otel.yaml");
    std::fs::write(&file, "receivers: {otlp: {}}\n").unwrap();
    let f = file.to_str().unwrap();
    let v2 = dir.path().join("v2.yaml");
    std::fs::write(&v2, "receivers: {otlp: {}, prometheus: {}}\n").unwrap();
    let v2 = v2.to_str().unwrap();
    // In order: each step may need the ones before it.
    let cases: Vec<Vec<&str>> = vec![
        vec!["health"],
        vec!["agents", "list"],
        vec!["agents", "list", "-o", "wide"],
        vec!["agents", "show", &id],
        vec!["agents", "label", &id, "team=payments"],
        vec!["agents", "restart", &id],
        vec!["configs", "apply", "-f", f],
        vec!["configs", "apply", "-f", f],
        vec!["configs", "apply", "-f", v2, "--name", "otel"],
        vec!["configs", "list"],
        vec!["configs", "show", "otel"],
        vec!["configs", "history", "otel"],
        vec!["configs", "diff", "otel"],
        vec!["rollout", "start", "otel"],
        vec!["rollout", "pause", "otel"],
        vec!["rollout", "resume", "otel", "--max-failures", "1"],
        vec!["configs", "rollback", "otel"],
        vec!["backup", "--dir", d],
        vec!["db", "stats"],
        vec!["logs", "-n", "3"],
        vec!["alerts", "rules"],
        vec!["audit"],
        vec!["audit", "--action", "config.create", "-o", "wide"],
        vec!["users", "list"],
        vec!["tokens", "list"],
        vec!["configs", "delete", "otel", "--force"],
        vec!["agents", "delete", &id, "--force"],
    ];
    for args in cases {
        let mut a = vec!["-q"];
        a.extend_from_slice(&args);
        let o = s.ctl(&a);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        assert!(
            o.stdout.is_empty() && o.stderr.is_empty(),
            "{args:?} printed with -q:\nstdout: {}\nstderr: {}",
            stdout(&o),
            stderr(&o)
        );
    }
}

#[tokio::test]
async fn every_list_has_the_same_json_shape() {
    let s = Server::start();
    let uid = new_uid();
    http_exchange(&s.opamp_url(), &full_report(uid, 0, "listed")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.yaml");
    std::fs::write(&file, "receivers: {otlp: {}}\n").unwrap();
    opamp_tests::cli::ok(&s.ctl(&["configs", "apply", "-f", file.to_str().unwrap()]));
    wait_for("agent stored", Duration::from_secs(10), || async {
        let (code, _) = s.get(&format!("/api/v1/agents/{}", uid_str(&uid))).await;
        (code == 200).then_some(())
    })
    .await;
    for args in [
        vec!["agents", "list"],
        vec!["agents", "list", "--all"],
        vec!["configs", "list"],
        vec!["configs", "history", "otel"],
        vec!["audit", "--action", "config.create"],
        vec!["users", "list"],
    ] {
        for format in ["json", "yaml"] {
            let mut a = args.clone();
            a.extend(["-o", format]);
            let out = opamp_tests::cli::ok(&s.ctl(&a));
            let v: serde_json::Value = if format == "json" {
                serde_json::from_str(&out).unwrap()
            } else {
                serde_yaml::from_str(&out).unwrap()
            };
            let keys: Vec<&str> = v
                .as_object()
                .unwrap_or_else(|| panic!("{args:?} -o {format}: an object, got {out}"))
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["items", "next_cursor", "total"], "{args:?}: {out}");
            assert_eq!(v["total"], 1, "{args:?}: {out}");
            assert_eq!(v["items"].as_array().unwrap().len(), 1, "{args:?}");
        }
    }
}
