//! Operating a deployment on PostgreSQL: `opampctl backup` (opampd's SQL
//! dump, checksummed, verified, pruned) and `opampctl restore` through the
//! server, the dump loaded by `psql`, `opampctl db stats|optimize`, `doctor`
//! and `opampctl db migrate --from-sqlite`. The counterparts of the SQLite
//! file tests in ctl_backup.rs; each prints a SKIPPED line without a cluster.

use opamp_tests::cli::{fails, json, ok};
use opamp_tests::client::{full_report, http_exchange, new_uid, uid_str};
use opamp_tests::{postgres, stderr, Opts, Server};
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A server on a fresh PostgreSQL database, or None after a SKIPPED line.
fn pg_server(test: &str) -> Option<Server> {
    postgres::available(test)?;
    Some(Server::start_with(Opts {
        postgres: true,
        ..Default::default()
    }))
}

async fn register(s: &Server, service: &str) -> String {
    let uid = new_uid();
    let (status, _, _) = http_exchange(&s.opamp_url(), &full_report(uid, 0, service)).await;
    assert_eq!(status, 200);
    opamp_tests::wait_for("the agent stored", Duration::from_secs(10), || async {
        let (code, _) = s.get(&format!("/api/v1/agents/{}", uid_str(&uid))).await;
        (code == 200).then_some(())
    })
    .await;
    uid_str(&uid)
}

async fn save_config(s: &Server, name: &str, body: &str) {
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations",
            json!({"name": name, "body": body, "content_type": "text/yaml"}),
        )
        .await;
    assert!(code == 201 || code == 200, "{code} {v}");
}

async fn add_user(s: &Server, name: &str) {
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/users",
            json!({"username": name, "password": "long-enough-password", "role": "viewer"}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
}

/// Names in `dir/items` of a list answer.
async fn names(s: &Server, path: &str, key: &str) -> Vec<String> {
    let (code, v) = s.get(path).await;
    assert_eq!(code, 200, "{v}");
    let mut out: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[key].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[tokio::test]
async fn a_postgresql_backup_is_a_checksummed_dump_that_restores_through_the_server() {
    let Some(s) =
        pg_server("a_postgresql_backup_is_a_checksummed_dump_that_restores_through_the_server")
    else {
        return;
    };
    let agent = register(&s, "checkout").await;
    save_config(&s, "base", "receivers: {}\n").await;
    save_config(&s, "base", "receivers: {otlp: {}}\n").await;
    add_user(&s, "carol").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();

    let report = json(&s.ctl(&["backup", "--dir", d, "--verify", "-o", "json"]));
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["source"], "server");
    assert_eq!(
        report["schema_version"],
        opamp_proto::api::DB_SCHEMA_VERSION
    );
    let file = PathBuf::from(report["file"].as_str().unwrap());
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("opamp_") && name.ends_with(".sql.gz"),
        "{name}"
    );
    assert_eq!(
        files_in(dir.path()),
        vec![name.clone(), format!("{name}.sha256")]
    );
    let sum = std::fs::read_to_string(dir.path().join(format!("{name}.sha256"))).unwrap();
    assert_eq!(
        sum,
        format!("{}  {name}\n", report["sha256"].as_str().unwrap())
    );
    let text = gunzip(&file);
    assert!(
        text.starts_with("-- opampd PostgreSQL dump, schema version "),
        "{}",
        &text[..200]
    );
    assert!(text.contains("COPY users ("), "users are in the dump");
    assert!(text.contains(&agent), "the agent is in the dump");
    assert!(
        text.contains("\\.\n-- config_versions: 2 rows\n"),
        "both versions are in the dump"
    );

    // Changes after the backup are undone by the restore.
    add_user(&s, "dave").await;
    let (code, _) = s
        .send_json(
            "DELETE",
            "/api/v1/configurations/base?force=true",
            json!({}),
        )
        .await;
    assert!(code == 200 || code == 204, "{code}");
    let restored = json(&s.ctl(&["restore", file.to_str().unwrap(), "--yes", "-o", "json"]));
    assert_eq!(
        restored["restored_schema_version"],
        opamp_proto::api::DB_SCHEMA_VERSION
    );
    let aside = restored["kept_aside"].as_str().unwrap();
    assert!(
        aside.contains("opamp-postgresql.sql.before-restore-"),
        "{aside}"
    );
    assert!(Path::new(aside).is_file(), "{aside} is kept");
    let users = names(&s, "/api/v1/users", "username").await;
    assert!(users.contains(&"carol".to_string()), "{users:?}");
    assert!(!users.contains(&"dave".to_string()), "{users:?}");
    let (code, versions) = s.get("/api/v1/configurations/base/versions").await;
    assert_eq!(code, 200, "{versions}");
    assert_eq!(versions["total"], 2, "{versions}");
    let (code, _) = s.get(&format!("/api/v1/agents/{agent}")).await;
    assert_eq!(code, 200);
    // New rows after the restore get fresh ids (the sequences moved past the rows).
    add_user(&s, "erin").await;
    let (_, audit) = s.get("/api/v1/audit?action=db.restore").await;
    assert_eq!(audit["items"][0]["outcome"], "ok", "{audit}");

    // A damaged dump is refused before anything is touched.
    let damaged = dir.path().join("damaged.sql");
    std::fs::write(&damaged, text.replace("-- users: ", "-- users: 9")).unwrap();
    fails(
        &s.ctl(&["restore", damaged.to_str().unwrap(), "--yes"]),
        "cannot be restored",
    );
    // So is something else.
    let other = dir.path().join("other.db");
    std::fs::write(&other, b"SQLite format 3\0 and more").unwrap();
    fails(
        &s.ctl(&["restore", other.to_str().unwrap(), "--yes"]),
        "cannot be restored",
    );

    // The server refuses a SQLite database, naming the way to move one.
    let response = s
        .http()
        .post(format!("{}/api/v1/admin/restore", s.url()))
        .bearer_auth(s.token())
        .body(b"SQLite format 3\0 and more".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let v: Value = response.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("opampctl db migrate --from-sqlite"), "{v}");
    assert!(message.contains("nothing was changed"), "{v}");

    // Retention prunes dumps by the same name rule.
    let old = dir.path().join("opamp_20000101_000000.sql.gz");
    std::fs::write(&old, b"old").unwrap();
    std::fs::write(dir.path().join("opamp_20000101_000000.sql.gz.sha256"), b"x").unwrap();
    let report = json(&s.ctl(&["backup", "--dir", d, "--retention-days", "7", "-o", "json"]));
    assert_eq!(report["pruned"].as_array().unwrap().len(), 2, "{report}");
    assert!(!old.exists());
}

#[tokio::test]
async fn a_postgresql_dump_loads_into_an_empty_database_with_psql() {
    let Some(cluster) =
        postgres::available("a_postgresql_dump_loads_into_an_empty_database_with_psql")
    else {
        return;
    };
    let Some(s) = pg_server("a_postgresql_dump_loads_into_an_empty_database_with_psql") else {
        return;
    };
    let agent = register(&s, "payments").await;
    save_config(&s, "edge", "exporters: {}\n").await;
    add_user(&s, "carol").await;
    let dir = tempfile::tempdir().unwrap();
    let report = json(&s.ctl(&[
        "backup",
        "--dir",
        dir.path().to_str().unwrap(),
        "-o",
        "json",
    ]));
    let plain = dir.path().join("dump.sql");
    std::fs::write(&plain, gunzip(Path::new(report["file"].as_str().unwrap()))).unwrap();

    let target = postgres::fresh_database(&cluster);
    let out = std::process::Command::new("psql")
        .args(["--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&plain)
        .arg(&target)
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(
        postgres::psql(&target, "SELECT max(version) FROM schema_version").unwrap(),
        opamp_proto::api::DB_SCHEMA_VERSION.to_string()
    );
    assert_eq!(
        postgres::psql(
            &target,
            "SELECT count(*) FROM users WHERE username = 'carol'"
        )
        .unwrap(),
        "1"
    );
    // An opampd on the loaded database serves the same fleet, and the first
    // server's API token (stored as a digest) works there too.
    let second = Server::start_with(Opts {
        database_url: Some(target),
        ..Default::default()
    });
    let out = opamp_tests::ctl_env(
        &["agents", "show", &agent, "-o", "json"],
        &[
            ("OPAMPCTL_SERVER", &second.url()),
            ("OPAMPCTL_TOKEN", &s.token()),
        ],
    );
    assert_eq!(json(&out)["instance_uid"], agent.as_str());
    // New rows get ids after the loaded ones (the dump moved the sequences).
    let created = second
        .http()
        .post(format!("{}/api/v1/users", second.url()))
        .bearer_auth(s.token())
        .json(&json!({"username": "dave", "password": "long-enough-password", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
}

#[tokio::test]
async fn db_stats_and_optimize_on_postgresql() {
    let Some(s) = pg_server("db_stats_and_optimize_on_postgresql") else {
        return;
    };
    register(&s, "stats").await;
    let stats = json(&s.ctl(&["db", "stats", "-o", "json"]));
    let pg = &stats["postgres"];
    assert!(pg["database_bytes"].as_u64().unwrap() > 0, "{stats}");
    let agents = pg["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "agents")
        .unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(agents["rows"], 1, "{stats}");
    assert!(agents["bytes"].as_u64().unwrap() > 0);
    assert!(pg["pool"]["max_open"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["tables"]["agents"], 1);
    let url = s.database_url().unwrap();
    let password = url.split('@').next().unwrap().rsplit(':').next().unwrap();
    assert!(
        !stats["path"].as_str().unwrap().contains(password),
        "{stats}"
    );
    let text = ok(&s.ctl(&["db", "stats"]));
    assert!(text.contains("DEAD"), "{text}");

    let report = json(&s.ctl(&["db", "optimize", "-o", "json"]));
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(steps.contains(&"VACUUM (ANALYZE) agents"), "{report}");
    let stats = json(&s.ctl(&["db", "stats", "-o", "json"]));
    let agents: &Value = stats["postgres"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "agents")
        .unwrap();
    assert!(agents["last_vacuum"].is_string(), "{stats}");
}

#[tokio::test]
async fn a_stopped_sqlite_deployment_migrates_to_postgresql_with_nothing_lost() {
    let test = "a_stopped_sqlite_deployment_migrates_to_postgresql_with_nothing_lost";
    let Some(cluster) = postgres::available(test) else {
        return;
    };
    let mut s = Server::start_with(Opts {
        sqlite: true,
        ..Default::default()
    });
    let agent = register(&s, "checkout").await;
    save_config(&s, "base", "receivers: {}\n").await;
    save_config(&s, "base", "receivers: {otlp: {}}\n").await;
    let (code, v) = s
        .send_json("POST", "/api/v1/configurations/base/rollout", json!({}))
        .await;
    assert_eq!(code, 202, "{v}");
    add_user(&s, "carol").await;
    let (_, audit_before) = s.get("/api/v1/audit?limit=1").await;
    let token = s.token();
    let data_dir = s.data_dir();
    let from = data_dir.to_str().unwrap();
    let target = postgres::fresh_database(&cluster);
    let migrate = |extra: &[&str]| {
        let mut args = vec!["db", "migrate", "--from-sqlite", from, "--to", &target];
        args.extend_from_slice(extra);
        opamp_tests::ctl_env(&args, &[])
    };

    // Refused while its opampd runs; nothing is written.
    fails(&migrate(&[]), "opampd is running");
    assert_eq!(
        postgres::psql(
            &target,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'agents'"
        )
        .unwrap(),
        "0"
    );
    s.stop();
    let report = json(&migrate(&["-o", "json"]));
    let tables = report["tables"].as_array().unwrap();
    for table in tables {
        assert_eq!(table["sqlite"], table["postgresql"], "{report}");
    }
    let rows = |name: &str| {
        tables
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {report}"))["postgresql"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(rows("agents"), 1);
    assert_eq!(rows("config_versions"), 2);
    assert_eq!(rows("rollouts"), 1);
    assert_eq!(rows("users"), 2);
    assert!(rows("api_tokens") >= 1);
    assert!(rows("audit_log") >= 4);
    assert!(rows("agent_events") >= 1);
    assert!(!report["to"].as_str().unwrap().contains(
        target
            .split('@')
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
    ));

    // A database that holds rows is refused, unless told to replace them.
    fails(&migrate(&[]), "not empty");
    ok(&migrate(&["--replace", "-q"]));

    // An opampd on PostgreSQL serves the same fleet, configurations and
    // users; the SQLite deployment's API token works there.
    let pg = Server::start_with(Opts {
        database_url: Some(target.clone()),
        ..Default::default()
    });
    let env = [("OPAMPCTL_SERVER", pg.url()), ("OPAMPCTL_TOKEN", token)];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let shown = json(&opamp_tests::ctl_env(
        &["agents", "show", &agent, "-o", "json"],
        &env,
    ));
    assert_eq!(shown["instance_uid"], agent.as_str());
    let history = json(&opamp_tests::ctl_env(
        &["configs", "history", "base", "-o", "json"],
        &env,
    ));
    assert_eq!(history["total"], 2, "{history}");
    let users = ok(&opamp_tests::ctl_env(&["users", "list"], &env));
    assert!(users.contains("carol"), "{users}");
    let audit_after = json(&opamp_tests::ctl_env(&["audit", "-o", "json"], &env));
    assert!(
        audit_after
            .to_string()
            .contains(audit_before["items"][0]["action"].as_str().unwrap()),
        "{audit_after}"
    );

    // A bad URL is a usage error that names the flag.
    let out = opamp_tests::ctl_env(
        &[
            "db",
            "migrate",
            "--from-sqlite",
            from,
            "--to",
            "mysql://x@y/z",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--to"), "{}", stderr(&out));
}

#[tokio::test]
async fn troubleshoot_db_pool_reports_postgresql_and_its_long_running_statements() {
    let Some(s) =
        pg_server("troubleshoot_db_pool_reports_postgresql_and_its_long_running_statements")
    else {
        return;
    };
    let url = s.database_url().unwrap().to_string();
    let sleeper = std::thread::spawn(move || postgres::psql(&url, "SELECT pg_sleep(4)"));
    std::thread::sleep(Duration::from_millis(1500));
    let out = s.ctl(&[
        "troubleshoot",
        "db-pool",
        "--long-query-seconds",
        "1",
        "-o",
        "json",
    ]);
    let report: Value = serde_json::from_str(&opamp_tests::stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    let text = report.to_string();
    let check = |name: &str| -> Value {
        report["checks"]
            .as_array()
            .unwrap_or_else(|| panic!("{text}"))
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .clone()
    };
    assert_eq!(check("postgres")["verdict"], "ok", "{text}");
    assert_eq!(check("pg-pool")["verdict"], "ok", "{text}");
    let long = check("long-queries");
    assert_eq!(long["verdict"], "warn", "{text}");
    assert!(
        long["detail"].as_str().unwrap().contains("pg_sleep"),
        "{text}"
    );
    assert!(
        long["remedy"]
            .as_str()
            .unwrap()
            .contains("pg_cancel_backend"),
        "{text}"
    );
    sleeper.join().unwrap().unwrap();
}
