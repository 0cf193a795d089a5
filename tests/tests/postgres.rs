//! PostgreSQL as opampd's database (`database.url`): the URL's checks and
//! redaction, and opampd on a real PostgreSQL cluster (the one
//! scripts/test.sh starts; see tests/src/postgres.rs).

use opamp_tests::{bin, stderr, stdout};
use std::process::{Command, Output};

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
