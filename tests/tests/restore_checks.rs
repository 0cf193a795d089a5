//! Restore checks against the real binaries: a backup with objects opampd
//! does not create (a trigger, a view) is refused by opampctl and by the
//! server, the refusal is audited and the running data is untouched; a
//! restored API token whose owner is not in the restored database does not
//! authenticate.

mod common;

use common::*;
use opamp_tests::client::{full_report, http_exchange, new_uid, uid_str};
use opamp_tests::{stderr, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A backup of the running server as a plain SQLite file.
async fn backup(s: &Server, dir: &Path) -> PathBuf {
    let r = s
        .http()
        .get(format!("{}/api/v1/admin/backup", s.url()))
        .bearer_auth(s.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let path = dir.join("backup.db");
    std::fs::write(&path, r.bytes().await.unwrap()).unwrap();
    path
}

/// A copy of `file` with `sql` run on it.
fn altered(file: &Path, name: &str, sql: &str) -> PathBuf {
    let path = file.with_file_name(name);
    std::fs::copy(file, &path).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    path
}

async fn upload(s: &Server, file: &Path) -> (u16, Value) {
    let r = s
        .http()
        .post(format!("{}/api/v1/admin/restore", s.url()))
        .bearer_auth(s.token())
        .body(std::fs::read(file).unwrap())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn kept_aside(s: &Server) -> bool {
    std::fs::read_dir(s.data_dir()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .contains("before-restore")
    })
}

#[tokio::test]
async fn a_backup_with_a_trigger_or_a_view_is_refused_audited_and_changes_nothing() {
    if opamp_tests::postgres::sqlite_only(
        "a_backup_with_a_trigger_or_a_view_is_refused_audited_and_changes_nothing",
    ) {
        return;
    }
    let s = Server::start();
    let uid = new_uid();
    let (status, _, _) = http_exchange(&s.opamp_url(), &full_report(uid, 0, "checkout")).await;
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let good = backup(&s, dir.path()).await;
    let trigger = altered(
        &good,
        "trigger.db",
        "CREATE TRIGGER forget AFTER INSERT ON audit_log BEGIN DELETE FROM audit_log; END;",
    );
    let view = altered(
        &good,
        "view.db",
        "CREATE VIEW secrets AS SELECT username, password_hash FROM users;",
    );

    // The server refuses the upload, names the object, and audits it.
    let (status, v) = upload(&s, &trigger).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_backup", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("trigger forget"), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    let entries = audit(&s, "&action=db.restore").await;
    let refused = entries
        .iter()
        .find(|e| e["outcome"] == "refused")
        .unwrap_or_else(|| panic!("no refused db.restore in {entries:?}"));
    assert!(refused.to_string().contains("trigger forget"), "{refused}");

    // opampctl checks the file on this side first, with the same checks.
    let o = s.ctl(&["restore", view.to_str().unwrap(), "--yes"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("view secrets"), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing was changed"), "{}", stderr(&o));

    // The running data is untouched.
    assert!(!kept_aside(&s));
    let (status, agent) = s.get(&format!("/api/v1/agents/{}", uid_str(&uid))).await;
    assert_eq!(status, 200, "{agent}");
    let (status, v) = upload(&s, &good).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn a_token_of_a_user_missing_from_the_restored_database_is_rejected() {
    if opamp_tests::postgres::sqlite_only(
        "a_token_of_a_user_missing_from_the_restored_database_is_rejected",
    ) {
        return;
    }
    let s = Server::start();
    create_user(&s, "dave", "dave-password-12", "viewer").await;
    let jwt = login(&s, "dave", "dave-password-12").await;
    let (status, _, token) = call(
        &s,
        "POST",
        "/api/v1/tokens",
        Some(&jwt),
        Some(json!({"name": "dave's script"})),
    )
    .await;
    assert_eq!(status, 201, "{token}");
    let token = token["token"].as_str().unwrap().to_string();
    let agents = |token: String| {
        let s = &s;
        async move { call(s, "GET", "/api/v1/agents", Some(&token), None).await.0 }
    };
    assert_eq!(agents(token.clone()).await, 200);

    // A backup in which dave's token remains but dave does not.
    let dir = tempfile::tempdir().unwrap();
    let good = backup(&s, dir.path()).await;
    let orphan = altered(
        &good,
        "orphan.db",
        "DELETE FROM users WHERE username = 'dave';",
    );
    let o = s.ctl(&["restore", orphan.to_str().unwrap(), "--yes"]);
    assert!(o.status.success(), "{}", stderr(&o));

    assert_eq!(agents(token).await, 401);
    assert_eq!(agents(s.token()).await, 200);
}
