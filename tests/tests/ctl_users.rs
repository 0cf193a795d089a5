//! `opampctl users` and `opampctl tokens` over the REST API: tables, JSON
//! pages, exit codes, passwords from stdin, and tokens that work until revoked.

use opamp_tests::cli::{code, json, ok};
use opamp_tests::{bin, ctl_env, stderr, stdout, Server};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// opampctl with the admin token and `input` on stdin.
fn ctl_stdin(s: &Server, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(bin("opampctl"))
        .env_clear()
        .env("HOME", std::env::temp_dir())
        .env("NO_COLOR", "1")
        .env("OPAMPCTL_SERVER", s.url())
        .env("OPAMPCTL_TOKEN", s.token())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // opampctl may exit before reading (a usage error): a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

fn with_token(s: &Server, token: &str, args: &[&str]) -> Output {
    ctl_env(
        args,
        &[("OPAMPCTL_SERVER", &s.url()), ("OPAMPCTL_TOKEN", token)],
    )
}

#[tokio::test]
async fn users_are_created_changed_and_deleted() {
    let s = Server::start();
    let page = json(&s.ctl(&["users", "list", "-o", "json"]));
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["items"][0]["username"], "admin", "{page}");
    assert!(page.get("next_cursor").is_some(), "{page}");

    // The password comes from stdin only.
    let o = s.ctl(&["users", "create", "alice", "--role", "viewer"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--password-stdin"), "{}", stderr(&o));
    let o = ctl_stdin(
        &s,
        &[
            "users",
            "create",
            "alice",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        "correct horse battery\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("user alice created (viewer)"),
        "{}",
        stderr(&o)
    );
    let o = ctl_stdin(
        &s,
        &[
            "users",
            "create",
            "alice",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        "correct horse battery\n",
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
    let o = ctl_stdin(
        &s,
        &[
            "users",
            "create",
            "bob",
            "--role",
            "root",
            "--password-stdin",
        ],
        "correct horse battery\n",
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = ctl_stdin(
        &s,
        &[
            "users",
            "create",
            "bob",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        "short\n",
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("password"), "{}", stderr(&o));

    let user = json(&s.ctl(&["users", "set-role", "alice", "operator", "-o", "json"]));
    assert_eq!(user["role"], "operator", "{user}");
    let o = ctl_stdin(
        &s,
        &["users", "set-password", "alice", "--password-stdin"],
        "a new passphrase here\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (status, reply) = s
        .send_json(
            "POST",
            "/api/v1/auth/login",
            json!({"username": "alice", "password": "a new passphrase here"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");

    let table = ok(&s.ctl(&["users", "list"]));
    assert!(
        table.lines().next().unwrap().contains("USERNAME"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|line| line.contains("alice") && line.contains("operator")),
        "{table}"
    );
    let o = s.ctl(&["users", "delete", "nobody"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("no user"), "{}", stderr(&o));
    let o = s.ctl(&["-q", "users", "delete", "alice"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
    let page = json(&s.ctl(&["audit", "--actor", "admin", "-o", "json"]));
    let actions: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entry| entry["action"].as_str())
        .collect();
    for action in ["user.create", "user.update", "user.delete"] {
        assert!(actions.contains(&action), "{action}: {page}");
    }
}

#[test]
fn tokens_work_until_revoked() {
    let s = Server::start();
    let o = s.ctl(&[
        "tokens",
        "create",
        "ci",
        "--role",
        "viewer",
        "--expires-in-days",
        "30",
    ]);
    let secret = ok(&o).trim().to_string();
    assert!(!secret.is_empty() && !secret.contains(' '), "{secret}");
    assert!(stderr(&o).contains("not shown again"), "{}", stderr(&o));
    ok(&with_token(&s, &secret, &["agents", "list"]));
    // A viewer cannot change users.
    let o = with_token(&s, &secret, &["users", "list"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));

    // -q still prints the secret: it is the answer, shown once.
    let o = s.ctl(&["-q", "tokens", "create", "quiet"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let created = json(&s.ctl(&["tokens", "create", "json", "-o", "json"]));
    assert!(created["token"].is_string(), "{created}");
    assert!(
        created["expires_at"].is_string(),
        "a default lifetime: {created}"
    );
    let forever = json(&s.ctl(&[
        "tokens",
        "create",
        "forever",
        "--expires-in-days",
        "never",
        "-o",
        "json",
    ]));
    assert_eq!(forever["expires_at"], Value::Null, "{forever}");

    let page = json(&s.ctl(&["tokens", "list", "-o", "json"]));
    let ci: &Value = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token["name"] == "ci")
        .unwrap_or_else(|| panic!("{page}"));
    assert_eq!(ci["role"], "viewer", "{page}");
    assert!(
        ci.get("token").is_none(),
        "the secret is never listed: {page}"
    );
    let id = ci["id"].as_str().unwrap();
    let table = ok(&s.ctl(&["tokens", "list"]));
    assert!(table.lines().next().unwrap().contains("EXPIRES"), "{table}");
    assert!(table.contains(id), "{table}");

    let o = s.ctl(&["tokens", "create", "too-long", "--expires-in-days", "0"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    ok(&s.ctl(&["tokens", "revoke", id]));
    let o = with_token(&s, &secret, &["agents", "list"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let o = s.ctl(&["tokens", "revoke", "no-such-id"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
}
