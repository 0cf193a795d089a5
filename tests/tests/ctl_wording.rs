//! opampctl says exactly what happened: apply results without repeats,
//! a version's own creation time, and whose role a refusal is about.

use opamp_tests::cli::{code, json, ok};
use opamp_tests::{ctl_env, stderr, Server};

#[tokio::test]
async fn apply_results_show_times_and_role_refusals_say_what_they_mean() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.yaml");
    std::fs::write(&file, "receivers: {otlp: {}}\n").unwrap();
    let f = file.to_str().unwrap();
    let apply = |extra: &[&str]| {
        let mut args = vec!["configs", "apply", "-f", f];
        args.extend_from_slice(extra);
        s.ctl(&args)
    };
    assert_eq!(
        ok(&apply(&[])).trim(),
        "configuration/otel created (version 1)"
    );
    assert_eq!(
        ok(&apply(&[])).trim(),
        "configuration/otel unchanged (version 1)"
    );
    let o = apply(&["--description", "base collectors"]);
    assert_eq!(
        ok(&o).trim(),
        "configuration/otel updated (still version 1: selector or description only)"
    );
    std::fs::write(&file, "receivers: {otlp: {}, prometheus: {}}\n").unwrap();
    assert_eq!(
        ok(&apply(&[])).trim(),
        "configuration/otel updated: new version 2"
    );

    // Wait for a later second, touch the configuration again, then show
    // version 2: the time is the version's, not the configuration's.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    ok(&apply(&["--description", "changed later"]));
    let (_, v2) = s.get("/api/v1/configurations/otel/versions/2").await;
    let (_, cfg) = s.get("/api/v1/configurations/otel").await;
    assert_ne!(v2["created_at"], cfg["updated_at"]);
    let shown = json(&s.ctl(&["configs", "show", "otel", "-o", "json"]));
    assert_eq!(shown["created_at"], v2["created_at"], "{shown}");
    let text = ok(&s.ctl(&["configs", "show", "otel"]));
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains(v2["created_at"].as_str().unwrap()),
        "{text}"
    );

    // A viewer token owned by admin: the refusal is about the token.
    let (st, t) = s
        .send_json(
            "POST",
            "/api/v1/tokens",
            serde_json::json!({"name": "dashboards", "role": "viewer"}),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    let token = t["token"].as_str().unwrap();
    let o = ctl_env(
        &["configs", "apply", "-f", f],
        &[("OPAMPCTL_SERVER", &s.url()), ("OPAMPCTL_TOKEN", token)],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("needs the operator role")
            && e.contains("API token")
            && e.contains("grants only viewer")
            && !e.contains("admin has viewer"),
        "{e}"
    );
}

#[tokio::test]
async fn db_optimize_compares_sizes_including_the_wal() {
    // The file and its WAL; db stats and optimize on PostgreSQL have tests of their own.
    if opamp_tests::postgres::sqlite_only("db_optimize_compares_sizes_including_the_wal") {
        return;
    }
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let file = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(
            &file,
            format!("receivers: {{otlp: {{}}}}\n# {}\n", "x".repeat(4000)),
        )
        .unwrap();
        ok(&s.ctl(&["configs", "apply", "-f", file.to_str().unwrap()]));
    }
    let st = json(&s.ctl(&["db", "stats", "-o", "json"]));
    let (db, wal) = (
        st["size_bytes"].as_u64().unwrap(),
        st["wal_bytes"].as_u64().unwrap(),
    );
    assert!(wal > 0, "writes are in the WAL: {st}");
    let r = json(&s.ctl(&["db", "optimize", "-o", "json"]));
    let before = r["size_before"].as_u64().unwrap();
    assert!(
        before >= db + wal,
        "database and WAL before: {before} < {db} + {wal}"
    );
    // The checkpoint empties the WAL: the sum shrinks.
    let after = r["size_after"].as_u64().unwrap();
    assert!(after < before, "{r}");
}
