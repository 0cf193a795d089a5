//! PostgreSQL as opampd's database (`database.url`): the URL's checks and
//! redaction, and opampd on a real PostgreSQL cluster (the one
//! scripts/test.sh starts; see tests/src/postgres.rs).

mod common;

use common::*;
use opamp_proto::pb;
use opamp_tests::client::*;
use opamp_tests::{bin, postgres, stderr, stdout, Opts, Server};
use serde_json::json;
use std::process::{Command, Output};
use std::time::Duration;

fn opampd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("opampd"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("--data-dir")
        .arg(data.path())
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run opampd")
}

#[test]
fn a_bad_database_url_is_refused_naming_the_setting_without_the_password() {
    for (url, reason) in [
        (
            "mysql://opampd:hunter2@db/opamp",
            "must start with postgres://",
        ),
        ("postgres://opampd:hunter2@db", "database name is missing"),
        (
            "postgres://opampd:hunter2@db:70000/opamp",
            "not a number from 1 to 65535",
        ),
        (
            "postgres://opampd:hunter2@db/opamp?sslmode=require",
            "sslmode=require is not supported",
        ),
    ] {
        for how in ["flag", "env"] {
            let out = match how {
                "flag" => opampd(&["--database-url", url, "check-config"], &[]),
                _ => opampd(&["check-config"], &[("OPAMPD_DATABASE_URL", url)]),
            };
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{url} ({how}): {err}");
            assert!(err.contains("database.url"), "{url} ({how}): {err}");
            assert!(err.contains(reason), "{url} ({how}): {err}");
            assert!(err.contains("e.g. postgres://"), "{url} ({how}): {err}");
            assert!(
                !err.contains("hunter2"),
                "{url} ({how}) shows the password: {err}"
            );
        }
    }
}

#[test]
fn printed_settings_and_help_never_show_the_password() {
    let url = "postgres://opampd:hunter2@127.0.0.1:5432/opamp";
    let out = opampd(
        &["check-config", "--print"],
        &[("OPAMPD_DATABASE_URL", url)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(
        printed.contains("url: postgres://opampd:********@127.0.0.1:5432/opamp"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");
    let help = opampd(&["--help"], &[("OPAMPD_DATABASE_URL", url)]);
    assert!(
        stdout(&help).contains("--database-url"),
        "{}",
        stdout(&help)
    );
    assert!(!stdout(&help).contains("hunter2"), "{}", stdout(&help));
}

/// A server on a fresh PostgreSQL database, or None (SKIPPED line printed).
fn server_on_postgres(test: &str) -> Option<Server> {
    postgres::available(test)?;
    Some(Server::start_with(Opts {
        postgres: true,
        ..Default::default()
    }))
}

/// The schema versions recorded in a database: (highest, rows, distinct versions).
fn schema_versions(url: &str) -> (u32, u32, u32) {
    let row = postgres::psql(
        url,
        "SELECT max(version) || ',' || count(*) || ',' || count(DISTINCT version) FROM schema_version",
    )
    .unwrap();
    let numbers: Vec<u32> = row.split(',').map(|n| n.trim().parse().unwrap()).collect();
    (numbers[0], numbers[1], numbers[2])
}

#[tokio::test]
async fn the_first_replica_creates_the_schema_and_the_admin_the_second_shares_them() {
    let test = "the_first_replica_creates_the_schema_and_the_admin_the_second_shares_them";
    let Some(first) = server_on_postgres(test) else {
        return;
    };
    let url = first.database_url().unwrap().to_string();
    assert!(
        first.logs().contains("first start: created user 'admin'"),
        "{}",
        first.logs()
    );
    let second = Server::start_with(Opts {
        database_url: Some(url.clone()),
        ..Default::default()
    });
    assert!(
        !second.data_dir().join("admin.token").exists(),
        "only the first replica writes admin.token"
    );
    assert!(!second.logs().contains("first start"), "{}", second.logs());
    // The first replica's token is in the shared database: both accept it.
    for server in [&first, &second] {
        let r = server
            .http()
            .get(format!("{}/api/v1/agents", server.url()))
            .bearer_auth(first.token())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // (second.get would read the second's admin.token, which must not exist.)
    let health: serde_json::Value = second
        .http()
        .get(format!("{}/health", second.url()))
        .bearer_auth(first.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["database"]["backend"], "postgresql", "{health:#}");
    let (highest, rows, distinct) = schema_versions(&url);
    assert_eq!(highest, opamp_proto::api::DB_SCHEMA_VERSION);
    assert_eq!(rows, distinct, "each migration recorded once");
}

#[test]
fn replicas_starting_at_once_migrate_once_and_create_one_admin() {
    let test = "replicas_starting_at_once_migrate_once_and_create_one_admin";
    let Some(cluster) = postgres::available(test) else {
        return;
    };
    let url = postgres::fresh_database(&cluster);
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                Server::start_with(Opts {
                    database_url: Some(url),
                    ..Default::default()
                })
            })
        })
        .collect();
    let servers: Vec<Server> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    let tokens = servers
        .iter()
        .filter(|s| s.data_dir().join("admin.token").exists())
        .count();
    assert_eq!(tokens, 1, "exactly one replica created the admin");
    let (highest, rows, distinct) = schema_versions(&url);
    assert_eq!(highest, opamp_proto::api::DB_SCHEMA_VERSION);
    assert_eq!(rows, distinct, "each migration applied once");
    let users = postgres::psql(&url, "SELECT count(*) FROM users").unwrap();
    assert_eq!(users.trim(), "1");
}

#[tokio::test]
async fn an_agent_is_listed_and_receives_a_rollout_on_postgres() {
    let Some(s) = server_on_postgres("an_agent_is_listed_and_receives_a_rollout_on_postgres")
    else {
        return;
    };
    let uid = new_uid();
    let (mut ws, _) = ws_agent(&s, uid, &[("env", "prod")]).await;
    let listed = opamp_tests::wait_for("the agent listed", Duration::from_secs(10), || async {
        let (_, v) = s.get("/api/v1/agents").await;
        (v["items"].as_array().map_or(0, Vec::len) == 1).then_some(v)
    })
    .await;
    assert_eq!(listed["items"][0]["instance_uid"], uid_str(&uid));
    let (code, _) = save(&s, "otel", "receivers: {otlp: {}}\n", "env=prod").await;
    assert_eq!(code, 201);
    start_rollout(&s, "otel", json!({})).await;
    let rc = recv_offer(&mut ws).await;
    assert_eq!(files(&rc)["otel"], "receivers: {otlp: {}}\n");
    ws_exchange(
        &mut ws,
        &applied(
            uid,
            1,
            &rc.config_hash,
            pb::RemoteConfigStatuses::Applied,
            "",
        ),
    )
    .await;
    wait_rollout(&s, "otel", "rollout completed", |v| {
        v["state"] == "completed"
    })
    .await;
    let out = s.ctl(&["agents", "list", "-o", "json"]);
    assert!(stdout(&out).contains(&uid_str(&uid)), "{}", stdout(&out));
}
