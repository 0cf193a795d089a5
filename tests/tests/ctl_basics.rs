//! opampctl's global contract: exit statuses (0 ok, 1 failed, 2 usage,
//! 3 unreachable), output formats, quiet mode, contexts and token lookup,
//! a closed pipe, health.

use opamp_tests::cli::{code, ok};
use opamp_tests::{bin, ctl_env, free_addr, stderr, stdout, Opts, Server};
use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn json(o: &Output) -> Value {
    serde_json::from_str(&ok(o)).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(o)))
}

/// An address where nothing listens.
fn dead_url() -> String {
    format!("http://{}", free_addr())
}

#[test]
fn health_reports_ok_in_every_format() {
    let s = Server::start();
    let table = ok(&s.ctl(&["health"]));
    for word in ["live", "ready", "database", "agents"] {
        assert!(table.contains(word), "{table}");
    }
    assert!(
        !table.contains('\x1b'),
        "no colour when not a terminal: {table:?}"
    );
    let j = json(&s.ctl(&["health", "-o", "json"]));
    assert_eq!(j["status"], "ok");
    assert_eq!(j["live"]["status_code"], 200);
    assert_eq!(j["ready"]["status_code"], 200);
    assert_eq!(j["health"]["database"]["status"], "ok");
    let y = ok(&s.ctl(&["health", "-o", "yaml"]));
    let y: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
    assert_eq!(y["status"].as_str(), Some("ok"));
    let q = s.ctl(&["health", "-q"]);
    assert_eq!(code(&q), 0);
    assert!(q.stdout.is_empty() && q.stderr.is_empty(), "{q:?}");
    // Global flags go before or after the subcommand (Docker's HEALTHCHECK form).
    let o = ctl_env(&["health", "-q", "--server", &s.url()], &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn health_wait_waits_for_the_server_to_start() {
    let addr = free_addr();
    let url = format!("http://{addr}");
    let mut child = Command::new(bin("opampctl"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["health", "--wait", "--timeout", "30s", "--server", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "must still be waiting");
    let _s = Server::start_with(Opts {
        listen: Some(addr),
        ..Default::default()
    });
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("ready"));

    let o = ctl_env(
        &[
            "health",
            "--wait",
            "--timeout",
            "1s",
            "--server",
            &dead_url(),
        ],
        &[],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("gave up after"), "{}", stderr(&o));
}

/// A fake server: /health/live 200, everything else 503 (a server that
/// is up but not ready).
fn not_ready_server() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in l.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /health/live ") {
                ("200 OK", r#"{"status":"ok"}"#)
            } else if req.starts_with("GET /health/ready ") {
                ("503 Service Unavailable", r#"{"status":"draining"}"#)
            } else {
                (
                    "503 Service Unavailable",
                    r#"{"error":{"code":"x","message":"down"}}"#,
                )
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn an_unready_server_exits_1() {
    let url = not_ready_server();
    let o = ctl_env(&["health", "--server", &url], &[]);
    assert_eq!(code(&o), 1, "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("draining"), "{}", stdout(&o));
    let o = ctl_env(&["health", "-q", "--server", &url], &[]);
    assert_eq!(code(&o), 1);
    assert!(o.stdout.is_empty());
    let o = ctl_env(&["health", "-o", "json", "--server", &url], &[]);
    assert_eq!(code(&o), 1);
    let j: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["ready"]["status_code"], 503);
}

#[test]
fn every_remote_command_exits_3_when_the_server_is_down() {
    // A valid backup file, so restore gets past its own checks (of a SQLite
    // server on either backend: the file is all this test needs).
    let s = Server::start_with(Opts {
        sqlite: true,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    ok(&s.ctl(&["backup", "--dir", d, "-q"]));
    let backup = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gz"))
        .unwrap();
    let backup = backup.to_str().unwrap().to_string();
    let url = dead_url();
    let out_dir = dir.path().join("out");
    let out_dir = out_dir.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["health"],
        vec!["agents", "list"],
        vec!["agents", "show", "0190c1e2-7dec-71d0-a765-00a0c91e6bf6"],
        vec!["configs", "list"],
        vec!["configs", "show", "x"],
        vec!["rollout", "status", "x"],
        vec!["backup", "--dir", out_dir, "--create-dir"],
        vec!["restore", &backup, "--yes"],
        vec!["logs", "-n", "5"],
        vec!["db", "stats"],
        vec!["db", "optimize"],
        vec!["audit"],
        vec!["users", "list"],
        vec!["users", "set-role", "alice", "viewer"],
        vec!["users", "delete", "alice"],
        vec!["tokens", "list"],
        vec!["tokens", "create", "ci"],
        vec!["tokens", "revoke", "x"],
        vec!["doctor"],
        vec!["troubleshoot", "agent-connect"],
        vec![
            "troubleshoot",
            "memory",
            "--samples",
            "2",
            "--duration",
            "1s",
        ],
    ];
    for args in cases {
        let mut a = args.clone();
        a.extend(["--server", &url, "--token", "t"]);
        let o = ctl_env(&a, &[]);
        assert_eq!(code(&o), 3, "{args:?}: {}\n{}", stdout(&o), stderr(&o));
    }
    let o = ctl_env(&["agents", "list", "--server", &url], &[]);
    assert!(stderr(&o).contains("cannot reach opampd"), "{}", stderr(&o));
    // The failed backup left nothing behind.
    assert!(std::fs::read_dir(out_dir)
        .map(|d| d.count() == 0)
        .unwrap_or(true));
}

#[test]
fn usage_errors_exit_2() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let invalid = dir.path().join("broken.yaml");
    std::fs::write(&invalid, "receivers: [otlp\n").unwrap();
    let invalid = invalid.to_str().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "receivers: {}\n").unwrap();
    let good = good.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["agents", "list", "-l", "env="], "bad selector"),
        (vec!["agents", "show", "not-a-uid"], "not an instance uid"),
        (vec!["agents", "restart", "host-42"], "not an instance uid"),
        (vec!["configs", "apply", "-f", invalid], "YAML"),
        (
            vec!["configs", "apply", "-f", good, "--selector", "env="],
            "selector",
        ),
        (vec!["health", "--bogus"], "--bogus"),
        (vec!["health", "-o", "xml"], "xml"),
        (vec!["nosuchcommand"], "nosuchcommand"),
        (vec!["health", "--server", "ftp://x"], "not an http"),
        (
            vec!["health", "--wait", "--timeout", "soon"],
            "not a duration",
        ),
        (
            vec![
                "agents",
                "label",
                "0190c1e2-7dec-71d0-a765-00a0c91e6bf6",
                "bad",
            ],
            "neither key=value",
        ),
        (vec!["agents", "list", "--limit", "0"], "--limit"),
        (
            vec!["health", "--token-file", "/nonexistent/token"],
            "/nonexistent/token",
        ),
        (
            vec!["configs", "apply", "-f", "/nonexistent/otel.yaml"],
            "otel.yaml",
        ),
        (
            vec!["troubleshoot", "memory", "--samples", "1"],
            "--samples",
        ),
        (vec!["audit", "--since", "yesterday"], "--since"),
        (vec!["audit", "--limit", "0"], "--limit"),
        (
            vec!["users", "create", "alice", "--role", "viewer"],
            "--password-stdin",
        ),
        (vec!["users", "set-role", "alice", "root"], "root"),
        (vec!["users", "set-password", "alice"], "--password-stdin"),
        (
            vec!["tokens", "create", "ci", "--expires-in-days", "0"],
            "--expires-in-days",
        ),
    ];
    for (args, needle) in cases {
        let o = s.ctl(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    let o = s.ctl(&["--help"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("Exit status"));
    let o = s.ctl(&["--version"]);
    assert_eq!(code(&o), 0);
}

#[test]
fn refused_tokens_exit_1_with_the_servers_reason() {
    let s = Server::start();
    let o = ctl_env(
        &["agents", "list"],
        &[
            ("OPAMPCTL_SERVER", &s.url()),
            ("OPAMPCTL_TOKEN", "opampd_wrong"),
        ],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    assert!(stderr(&o).contains("OPAMPCTL_TOKEN"), "{}", stderr(&o));
    // doctor: a refused token is a failed check and a non-zero exit.
    let o = ctl_env(
        &["doctor", "-o", "json"],
        &[
            ("OPAMPCTL_SERVER", &s.url()),
            ("OPAMPCTL_TOKEN", "opampd_wrong"),
        ],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let token = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "token")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(token["verdict"], "fail", "{report}");
    assert!(
        token["detail"].as_str().unwrap().contains("OPAMPCTL_TOKEN"),
        "{report}"
    );
    // No token at all: says how to give one.
    let o = ctl_env(&["agents", "list"], &[("OPAMPCTL_SERVER", &s.url())]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no token given"), "{}", stderr(&o));
}

#[test]
fn contexts_choose_server_and_token_file() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let token = s.data_dir().join("admin.token");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "current-context: local\ncontexts:\n  local:\n    server: {}\n    token-file: {}\n  dead:\n    server: {}\n",
            s.url(),
            token.display(),
            dead_url()
        ),
    )
    .unwrap();
    let env = [("OPAMPCTL_CONFIG", cfg.to_str().unwrap())];
    let j: Value =
        serde_json::from_str(&ok(&ctl_env(&["agents", "list", "-o", "json"], &env))).unwrap();
    assert_eq!(j["total"], 0);
    let o = ctl_env(&["health", "--context", "dead"], &env);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    // A flag beats the context.
    let o = ctl_env(
        &["health", "-q", "--context", "dead", "--server", &s.url()],
        &env,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = ctl_env(&["health", "--context", "nope"], &env);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("local, dead") || stderr(&o).contains("dead, local"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&cfg, "contexts:\n  x:\n    sever: typo\n").unwrap();
    let o = ctl_env(&["health"], &env);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("sever"), "{}", stderr(&o));
}

#[test]
fn the_admin_token_is_found_in_the_data_directory() {
    let s = Server::start();
    // Run where opampd keeps ./data, with no token given.
    let o = Command::new(bin("opampctl"))
        .current_dir(&s.dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &s.dir)
        .args(["agents", "list", "-o", "json", "--server", &s.url()])
        .output()
        .unwrap();
    let j: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(j["total"], 0);
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(bin("opampctl"))
        .env_clear()
        .args(["alerts", "rules"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
}

#[test]
fn alerts_rules_prints_the_shipped_rules() {
    let o = ctl_env(&["alerts", "rules"], &[]);
    let text = ok(&o);
    let file =
        std::fs::read_to_string(opamp_tests::root().join("deploy/prometheus/rules.yml")).unwrap();
    assert_eq!(text, file);
    let y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert!(y["groups"].is_sequence());
}
