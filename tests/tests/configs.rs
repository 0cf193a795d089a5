//! Versioned configurations against a real opampd: create / update /
//! unchanged, bad input, versions, diff, rollback, delete.

mod common;

use common::*;
use opamp_tests::client::*;
use opamp_tests::Server;
use serde_json::json;

fn is_hex64(v: &serde_json::Value) -> bool {
    v.as_str()
        .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

#[tokio::test]
async fn create_update_unchanged_and_versions() {
    let s = Server::start();
    let (code, v) = save(&s, "otel", "receivers: {}\n", "env=prod").await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["result"], "created");
    assert_eq!(v["version"], 1);
    assert_eq!(v["content_type"], "text/yaml");
    assert!(is_hex64(&v["hash"]), "{v}");
    let h1 = v["hash"].clone();

    let (code, v) = save(&s, "otel", "receivers: {}\n", "env=prod").await;
    assert_eq!(
        (code, &v["result"], &v["version"]),
        (200, &json!("unchanged"), &json!(1))
    );
    assert_eq!(v["hash"], h1);

    let (code, v) = save(&s, "otel", "receivers: {otlp: {}}\n", "env=prod").await;
    assert_eq!(
        (code, &v["result"], &v["version"]),
        (201, &json!("updated"), &json!(2))
    );
    assert_ne!(v["hash"], h1);

    // A selector change alone updates the configuration, not its versions.
    let (code, v) = save(&s, "otel", "receivers: {otlp: {}}\n", " env = prod , team").await;
    assert_eq!(
        (code, &v["result"], &v["version"]),
        (200, &json!("updated"), &json!(2))
    );
    assert_eq!(v["selector"], "env=prod,team", "stored in canonical form");

    // Content type alone makes a new version too.
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations",
            json!({"name": "otel", "body": "receivers: {otlp: {}}\n", "content_type": "application/yaml", "description": "collector base"}),
        )
        .await;
    assert_eq!((code, &v["version"]), (201, &json!(3)), "{v}");
    assert_eq!(
        v["selector"], "env=prod,team",
        "an omitted selector is kept"
    );

    let (code, v) = s.get("/api/v1/configurations/otel").await;
    assert_eq!(code, 200);
    assert_eq!(v["body"], "receivers: {otlp: {}}\n");
    assert_eq!(v["version"], 3);
    assert_eq!(v["description"], "collector base");
    assert!(v["rolled_out_version"].is_null());
    assert!(v.get("result").is_none(), "result only on writes: {v}");

    let (code, v) = s.get("/api/v1/configurations/otel/versions").await;
    assert_eq!(code, 200);
    let versions: Vec<u64> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1], "newest first");
    assert_eq!(v["total"], 3);
    let (code, v) = s.get("/api/v1/configurations/otel/versions?limit=2").await;
    assert_eq!(code, 200);
    assert_eq!(v["next_cursor"], "2");
    let (_, v) = s
        .get("/api/v1/configurations/otel/versions?limit=2&cursor=2")
        .await;
    assert_eq!(v["items"][0]["version"], 1);
    assert!(v["next_cursor"].is_null());

    let (code, v) = s.get("/api/v1/configurations/otel/versions/1").await;
    assert_eq!(code, 200);
    assert_eq!(v["body"], "receivers: {}\n");
    assert_eq!(v["hash"], h1);
    assert_eq!(v["created_by"], "admin");
    let (code, v) = s.get("/api/v1/configurations/otel/versions/9").await;
    assert_eq!(code, 404);
    assert_eq!(
        v["error"]["message"],
        "configuration \"otel\" has no version 9 (newest is 3)"
    );
    let (code, _) = s.get("/api/v1/configurations/otel/versions/x").await;
    assert_eq!(code, 400);
    let (code, v) = s.get("/api/v1/configurations/nope").await;
    assert_eq!((code, &v["error"]["code"]), (404, &json!("not_found")));

    // The list is paginated by name.
    for n in ["b-cfg", "a-cfg"] {
        assert_eq!(save(&s, n, "x: 1\n", "").await.0, 201);
    }
    let (_, v) = s.get("/api/v1/configurations?limit=2").await;
    assert_eq!(v["total"], 3);
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-cfg", "b-cfg"]);
    assert!(v["items"][0].get("body").is_none(), "lists carry no bodies");
    let cursor = v["next_cursor"].as_str().unwrap().to_string();
    let (_, v) = s
        .get(&format!("/api/v1/configurations?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(v["items"][0]["name"], "otel");
    assert!(v["next_cursor"].is_null());
}

#[tokio::test]
async fn bad_input_says_what_is_wrong() {
    let s = Server::start();
    let check = |code: u16, v: &serde_json::Value, want_code: u16, needle: &str| {
        assert_eq!(code, want_code, "{v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains(needle),
            "message {m:?} should contain {needle:?}"
        );
    };
    for name in ["", "Upper", "-x", "a/b", &"a".repeat(64)] {
        let (code, v) = save(&s, name, "x: 1", "").await;
        check(code, &v, 400, "configuration name");
    }
    let (code, v) = save(&s, "c", "x: 1", "env=").await;
    check(
        code,
        &v,
        400,
        "bad selector at position 5: expected a value",
    );
    let (code, v) = save(&s, "c", "x: 1", "env=prod,,team").await;
    check(code, &v, 400, "position 10");
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations",
            json!({"name": "c", "body": "{\"a\": ", "content_type": "application/json"}),
        )
        .await;
    check(code, &v, 400, "body is not valid JSON");
    let (code, v) = save(&s, "c", "a: [1, 2\n", "").await;
    check(code, &v, 400, "body is not valid YAML");
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations",
            json!({"name": "c", "body": "x", "content_type": "yaml"}),
        )
        .await;
    check(code, &v, 400, "content_type \"yaml\" is not a media type");
    let big = "#".repeat((4 << 20) + 1);
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations",
            json!({"name": "c", "body": big, "content_type": "text/plain"}),
        )
        .await;
    check(code, &v, 413, "limit is 4194304 bytes");
    let (code, v) = s
        .send_json("POST", "/api/v1/configurations", json!({"body": "x"}))
        .await;
    check(code, &v, 400, "missing field `name`");
    let (code, v) = s.get("/api/v1/configurations?limit=0").await;
    check(code, &v, 400, "limit must be between 1 and 1000");
    // Nothing was stored by any of that.
    let (_, v) = s.get("/api/v1/configurations").await;
    assert_eq!(v["total"], 0);
    // Plain text with a JSON-looking body is fine; so is a body of exactly 4 MiB.
    let (code, _) = s
        .send_json(
            "POST",
            "/api/v1/configurations",
            json!({"name": "plain", "body": "#".repeat(4 << 20), "content_type": "text/plain"}),
        )
        .await;
    assert_eq!(code, 201);
}

#[tokio::test]
async fn diff_and_rollback() {
    let s = Server::start();
    save(&s, "otel", "a: 1\nb: 2\nc: 3\n", "").await;
    save(&s, "otel", "a: 1\nb: 20\nc: 3\n", "").await;
    let (code, v) = s.get("/api/v1/configurations/otel/diff").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!((&v["from"], &v["to"]), (&json!(1), &json!(2)));
    assert_eq!(
        v["diff"],
        "--- otel@v1\n+++ otel@v2\n@@ -1,3 +1,3 @@\n a: 1\n-b: 2\n+b: 20\n c: 3\n"
    );
    let (_, v) = s.get("/api/v1/configurations/otel/diff?from=2&to=1").await;
    assert_eq!(
        v["diff"],
        "--- otel@v2\n+++ otel@v1\n@@ -1,3 +1,3 @@\n a: 1\n-b: 20\n+b: 2\n c: 3\n"
    );
    let (code, v) = s.get("/api/v1/configurations/otel/diff?from=7").await;
    assert_eq!(code, 404, "{v}");

    // Rollback: the old body becomes the newest version; nothing is distributed.
    let (code, v) = s
        .send_json("POST", "/api/v1/configurations/otel/rollback", json!({}))
        .await;
    assert_eq!(
        (code, &v["version"], &v["result"]),
        (201, &json!(3), &json!("updated")),
        "{v}"
    );
    let (_, v3) = s.get("/api/v1/configurations/otel/versions/3").await;
    assert_eq!(v3["body"], "a: 1\nb: 2\nc: 3\n");
    assert_eq!(v3["note"], "rollback of v1");
    let (_, v1) = s.get("/api/v1/configurations/otel/versions/1").await;
    assert_eq!(v3["hash"], v1["hash"], "same content, same hash");
    let (_, v) = s.get("/api/v1/configurations/otel/diff").await;
    assert_eq!((&v["from"], &v["to"]), (&json!(2), &json!(3)));
    assert!(v["diff"].as_str().unwrap().contains("-b: 20\n+b: 2\n"));

    // Rolling back to a version with the newest body changes nothing.
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations/otel/rollback",
            json!({"version": 1}),
        )
        .await;
    assert_eq!(
        (code, &v["result"], &v["version"]),
        (200, &json!("unchanged"), &json!(3))
    );
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations/otel/rollback",
            json!({"version": 3}),
        )
        .await;
    assert_eq!(code, 409, "{v}");
    let (code, _) = s
        .send_json(
            "POST",
            "/api/v1/configurations/otel/rollback",
            json!({"version": 42}),
        )
        .await;
    assert_eq!(code, 404);
    save(&s, "single", "x: 1\n", "").await;
    let (code, v) = s
        .send_json("POST", "/api/v1/configurations/single/rollback", json!({}))
        .await;
    assert_eq!(code, 409);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nothing to roll back to"));
}

#[tokio::test]
async fn delete_refuses_while_rolled_out_unless_forced() {
    let s = Server::start();
    save(&s, "draft", "x: 1\n", "").await;
    let (code, _) = s
        .send_json("DELETE", "/api/v1/configurations/draft", json!(null))
        .await;
    assert_eq!(code, 204, "never rolled out: deleted at once");
    let (code, _) = s.get("/api/v1/configurations/draft").await;
    assert_eq!(code, 404);

    save(&s, "live", "x: 1\n", "").await;
    start_rollout(&s, "live", json!({})).await;
    let (code, v) = s
        .send_json("DELETE", "/api/v1/configurations/live", json!(null))
        .await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("--force"));
    let uid = new_uid();
    let (_ws, r) = ws_agent(&s, uid, &[]).await;
    assert!(r.remote_config.is_some(), "rolled out before the deletion");

    let (code, _) = s
        .send_json(
            "DELETE",
            "/api/v1/configurations/live?force=true",
            json!(null),
        )
        .await;
    assert_eq!(code, 204);
    let (code, _) = s.get("/api/v1/configurations/live/rollout").await;
    assert_eq!(code, 404);
    let (_ws2, r) = ws_agent(&s, new_uid(), &[]).await;
    assert!(
        r.remote_config.is_none(),
        "a deleted configuration is offered to nobody: {r:?}"
    );
    let (code, _) = s
        .send_json("DELETE", "/api/v1/configurations/live", json!(null))
        .await;
    assert_eq!(code, 404);
}
