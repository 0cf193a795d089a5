//! Operator and agent authentication against a real opampd: every route in
//! `opampd::api::least_roles()` refuses missing, forged, expired, revoked and
//! under-privileged credentials; login, logout, tokens, users; the audit log
//! and what must never appear in it; agent secrets and TLS client certificates.

mod common;

use common::*;
use opamp_tests::client::*;
use opamp_tests::{jwt_key, wait_for, Opts, Server};
use opampd::auth::{Auth, Role};
use serde_json::{json, Value};
use std::time::Duration;

fn server() -> Server {
    Server::start_with(Opts {
        config: Some("auth:\n  token_ttl_minutes: 60\n".into()),
        ..Default::default()
    })
}

fn admin_password(s: &Server) -> String {
    std::fs::read_to_string(s.data_dir().join("admin.password"))
        .unwrap()
        .trim()
        .to_string()
}

/// A route template with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{uid}", "0190c1e2-7dec-71d0-a765-00a0c91e6bf6")
        .replace("{name}", "nothing-here")
        .replace("{id}", "nothing-here")
        .replace("{n}", "1")
}

fn body_for(method: &str) -> Option<Value> {
    matches!(method, "POST" | "PATCH" | "PUT").then(|| json!({}))
}

#[tokio::test]
async fn every_route_refuses_bad_and_weak_credentials() {
    let s = server();
    create_user(&s, "vera", "viewer-password-1", "viewer").await;
    create_user(&s, "otto", "operator-password-1", "operator").await;
    let viewer = login(&s, "vera", "viewer-password-1").await;
    let admin = s.token();
    let operator = login(&s, "otto", "operator-password-1").await;

    let revoked_jwt = login(&s, "admin", &admin_password(&s)).await;
    let (code, _, _) = call(&s, "POST", "/api/v1/auth/logout", Some(&revoked_jwt), None).await;
    assert_eq!(code, 204);
    let (code, t) = create_token(&s, &s.token(), json!({"name": "soon revoked"})).await;
    assert_eq!(code, 201, "{t}");
    let revoked_token = t["token"].as_str().unwrap().to_string();
    let code = revoke_token(&s, &s.token(), t["id"].as_str().unwrap()).await;
    assert_eq!(code, 204);

    let forged = Auth::new(
        b"some-other-key-that-is-long-enough-0123456789".to_vec(),
        60,
    )
    .issue_jwt("admin", Role::Admin, 0)
    .0;
    let expired = Auth::new(jwt_key().as_bytes().to_vec(), 0)
        .issue_jwt("admin", Role::Admin, 0)
        .0;
    let bad: [(&str, Option<&str>, &str); 7] = [
        ("missing", None, "unauthenticated"),
        ("garbage", Some("not-a-token"), "invalid_token"),
        ("bad signature", Some(&forged), "invalid_token"),
        ("expired", Some(&expired), "token_expired"),
        ("revoked login", Some(&revoked_jwt), "token_revoked"),
        ("revoked API token", Some(&revoked_token), "token_revoked"),
        (
            "unknown API token",
            Some("opampd_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            "invalid_token",
        ),
    ];
    let routes = opampd::api::least_roles();
    assert!(routes.len() >= 30);
    for (method, path, role) in routes {
        let path = concrete(path);
        for (what, token, code_want) in &bad {
            let (code, headers, v) = call(&s, method, &path, *token, body_for(method)).await;
            assert_eq!(code, 401, "{method} {path} with a {what} token: {v}");
            assert_eq!(
                v["error"]["code"], *code_want,
                "{method} {path} with a {what} token"
            );
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
        let weaker: Vec<(&str, &str)> = match role {
            Role::Viewer => vec![],
            Role::Operator => vec![("viewer", &viewer)],
            Role::Admin => vec![("viewer", &viewer), ("operator", &operator)],
        };
        for (who, token) in &weaker {
            let (code, _, v) = call(&s, method, &path, Some(token), body_for(method)).await;
            assert_eq!(code, 403, "{method} {path} as {who}: {v}");
            assert_eq!(v["error"]["code"], "forbidden");
        }
        // The least role gets past authentication (logout and restore have effects).
        if !path.ends_with("/logout") && !path.ends_with("/restore") {
            let token = match role {
                Role::Viewer => &viewer,
                Role::Operator => &operator,
                Role::Admin => &admin,
            };
            let (code, _, v) = call(&s, method, &path, Some(token), body_for(method)).await;
            assert!(
                code != 401 && code != 403,
                "{method} {path} as {role:?} got {code}: {v}"
            );
        }
    }
    // Login itself is open.
    let (code, _, _) = try_login(
        &s,
        json!({"username": "vera", "password": "viewer-password-1"}),
    )
    .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn login_logout_and_rate_limit() {
    let s = server();
    create_user(&s, "alice", "alice-password-1", "operator").await;
    let (code, _, v) = try_login(
        &s,
        json!({"username": "alice", "password": "wrong-password"}),
    )
    .await;
    assert_eq!(
        (code, &v["error"]["message"]),
        (401, &json!("invalid username or password"))
    );
    let (code, _, v2) = try_login(
        &s,
        json!({"username": "nobody", "password": "whatever-it-is"}),
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(v, v2, "unknown users and wrong passwords look the same");
    let (code, _, v) = try_login(&s, json!({"user": "x"})).await;
    assert_eq!(code, 400, "{v}");

    let (code, _, v) = try_login(
        &s,
        json!({"username": "alice", "password": "alice-password-1"}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["role"], "operator");
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    let jwt = v["token"].as_str().unwrap().to_string();
    let (code, _, _) = call(&s, "GET", "/api/v1/agents", Some(&jwt), None).await;
    assert_eq!(code, 200);
    let (code, _, _) = call(&s, "POST", "/api/v1/auth/logout", Some(&jwt), None).await;
    assert_eq!(code, 204);
    let (code, _, v) = call(&s, "GET", "/api/v1/agents", Some(&jwt), None).await;
    assert_eq!((code, &v["error"]["code"]), (401, &json!("token_revoked")));
    let (code, _, _) = call(&s, "POST", "/api/v1/auth/logout", Some("junk"), None).await;
    assert_eq!(code, 401);

    // Logging out with an API token revokes that token.
    let (_, t) = create_token(&s, &s.token(), json!({"name": "ci"})).await;
    let secret = t["token"].as_str().unwrap().to_string();
    let (code, _, _) = call(&s, "POST", "/api/v1/auth/logout", Some(&secret), None).await;
    assert_eq!(code, 204);
    let (code, _, _) = call(&s, "GET", "/api/v1/agents", Some(&secret), None).await;
    assert_eq!(code, 401);

    // Ten failures for one user from one address: the eleventh try waits, even with the right password.
    for _ in 0..10 {
        let (code, _, _) = try_login(
            &s,
            json!({"username": "alice", "password": "guess-guess-guess"}),
        )
        .await;
        assert!(code == 401, "{code}");
    }
    let (code, headers, v) = try_login(
        &s,
        json!({"username": "alice", "password": "alice-password-1"}),
    )
    .await;
    assert_eq!(code, 429, "{v}");
    assert_eq!(v["error"]["code"], "too_many_attempts");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    // Other users are not locked out.
    login(&s, "admin", &admin_password(&s)).await;
}

#[tokio::test]
async fn tokens_are_bounded_by_their_creator() {
    let s = server();
    create_user(&s, "otto", "operator-password-1", "operator").await;
    let jwt = login(&s, "otto", "operator-password-1").await;
    let (code, v) = create_token(&s, &jwt, json!({"name": "deploy", "role": "admin"})).await;
    assert_eq!(code, 403, "{v}");
    let (code, v) = create_token(&s, &jwt, json!({"name": ""})).await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = create_token(&s, &jwt, json!({"name": "x", "expires_in_days": 0})).await;
    assert_eq!(code, 400, "{v}");
    let (code, t) = create_token(&s, &jwt, json!({"name": "deploy", "expires_in_days": 30})).await;
    assert_eq!(code, 201, "{t}");
    assert_eq!(
        (&t["role"], &t["owner"], &t["revoked"]),
        (&json!("operator"), &json!("otto"), &json!(false))
    );
    assert!(t["expires_at"].is_string());
    let secret = t["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("opampd_"));
    let (code, _, _) = call(
        &s,
        "POST",
        "/api/v1/configurations",
        Some(&secret),
        Some(json!({"name": "c", "body": "x: 1"})),
    )
    .await;
    assert_eq!(code, 201, "an operator token can save configurations");
    let (code, _, v) = call(&s, "GET", "/api/v1/users", Some(&secret), None).await;
    assert_eq!(code, 403, "{v}");

    // Own tokens only; never the secret again; admins see all.
    let (_, _, list) = call(&s, "GET", "/api/v1/tokens", Some(&jwt), None).await;
    assert_eq!(list["total"], 1, "{list}");
    assert!(list["items"][0].get("token").is_none());
    let (_, _, all) = call(&s, "GET", "/api/v1/tokens", Some(&s.token()), None).await;
    assert_eq!(all["total"], 2, "bootstrap token and otto's: {all}");
    let bootstrap_id = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["owner"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let code = revoke_token(&s, &jwt, &bootstrap_id).await;
    assert_eq!(code, 404, "someone else's token is not yours to revoke");
    let code = revoke_token(&s, &jwt, t["id"].as_str().unwrap()).await;
    assert_eq!(code, 204);
    let (code, _, v) = call(&s, "GET", "/api/v1/agents", Some(&secret), None).await;
    assert_eq!((code, &v["error"]["code"]), (401, &json!("token_revoked")));

    // A demoted user's tokens lose the rights too.
    let (_, t2) = create_token(&s, &jwt, json!({"name": "second"})).await;
    let second = t2["token"].as_str().unwrap().to_string();
    let (code, _, _) = call(&s, "GET", "/api/v1/agents", Some(&second), None).await;
    assert_eq!(code, 200);
    let (code, v) = s
        .send_json("PATCH", "/api/v1/users/otto", json!({"role": "viewer"}))
        .await;
    assert_eq!((code, &v["role"]), (200, &json!("viewer")), "{v}");
    let (code, _, _) = call(
        &s,
        "POST",
        "/api/v1/configurations",
        Some(&second),
        Some(json!({"name": "c", "body": "x: 2"})),
    )
    .await;
    assert_eq!(code, 403);
    let (code, _, v) = call(
        &s,
        "POST",
        "/api/v1/configurations",
        Some(&jwt),
        Some(json!({"name": "c", "body": "x: 2"})),
    )
    .await;
    assert_eq!(
        (code, &v["error"]["code"]),
        (401, &json!("token_revoked")),
        "a role change ends the user's login sessions"
    );
}

#[tokio::test]
async fn users_are_managed_by_admins_and_the_last_admin_stays() {
    let s = server();
    let (code, v) = post_user(
        &s,
        json!({"username": "bob", "password": "short", "role": "viewer"}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("12 to 1024 characters"),
        "{v}"
    );
    let (code, _) = post_user(
        &s,
        json!({"username": "bob", "password": "long-enough-pw", "role": "root"}),
    )
    .await;
    assert_eq!(code, 400);
    let (code, _) = post_user(
        &s,
        json!({"username": "bad name", "password": "long-enough-pw", "role": "viewer"}),
    )
    .await;
    assert_eq!(code, 400);
    create_user(&s, "bob", "long-enough-pw", "viewer").await;
    let (code, _) = post_user(
        &s,
        json!({"username": "bob", "password": "long-enough-pw", "role": "viewer"}),
    )
    .await;
    assert_eq!(code, 409);
    let (_, v) = s.get("/api/v1/users").await;
    assert_eq!(v["total"], 2);
    assert!(v.to_string().contains("\"bob\"") && !v.to_string().contains("password"));

    // The only admin can be neither demoted nor deleted.
    let (code, v) = s
        .send_json("PATCH", "/api/v1/users/admin", json!({"role": "operator"}))
        .await;
    assert_eq!(code, 409, "{v}");
    let (code, v) = s
        .send_json("DELETE", "/api/v1/users/admin", json!(null))
        .await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("last admin"));
    let (code, _) = s.send_json("PATCH", "/api/v1/users/bob", json!({})).await;
    assert_eq!(code, 400);
    let (code, _) = s
        .send_json("PATCH", "/api/v1/users/nobody", json!({"role": "viewer"}))
        .await;
    assert_eq!(code, 404);

    // Password change: the old one stops working.
    let (code, _) = s
        .send_json(
            "PATCH",
            "/api/v1/users/bob",
            json!({"password": "a-new-long-password", "role": "admin"}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, _, _) =
        try_login(&s, json!({"username": "bob", "password": "long-enough-pw"})).await;
    assert_eq!(code, 401);
    let bob = login(&s, "bob", "a-new-long-password").await;
    // With two admins, one may go; its tokens go with it.
    let (code, _, _) = call(&s, "DELETE", "/api/v1/users/admin", Some(&bob), None).await;
    assert_eq!(code, 204);
    let (code, _, v) = call(&s, "GET", "/api/v1/agents", Some(&s.token()), None).await;
    assert_eq!(code, 401, "the deleted admin's token is revoked: {v}");
    let (code, _, v) = call(&s, "DELETE", "/api/v1/users/bob", Some(&bob), None).await;
    assert_eq!(code, 409, "{v}");
}

#[tokio::test]
async fn audit_log_records_who_did_what_and_never_a_secret() {
    let s = server();
    let admin_pw = admin_password(&s);
    create_user(&s, "carol", "carol-password-1", "operator").await;
    let carol = login(&s, "carol", "carol-password-1").await;
    let (code, _, _) = try_login(
        &s,
        json!({"username": "carol", "password": "not-carols-password"}),
    )
    .await;
    assert_eq!(code, 401);
    let admin_jwt = login(&s, "admin", &admin_pw).await;

    expect_codes(
        &s,
        &carol,
        [
            (
                "POST",
                "/api/v1/configurations".into(),
                Some(json!({"name": "audited", "body": "a: 1"})),
                201,
            ),
            (
                "POST",
                "/api/v1/configurations".into(),
                Some(json!({"name": "audited", "body": "a: 2"})),
                201,
            ),
            (
                "POST",
                "/api/v1/configurations/audited/rollback".into(),
                Some(json!({})),
                201,
            ),
        ],
    )
    .await;
    // An agent to label, restart and delete.
    let uid = new_uid();
    let (mut ws, _) = ws_agent(&s, uid, &[]).await;
    agent(&s, &uid).await;
    let id = uid_str(&uid);
    expect_codes(
        &s,
        &carol,
        [
            (
                "POST",
                "/api/v1/configurations/audited/rollout".into(),
                Some(json!({"batch_size": 1})),
                202,
            ),
            (
                "POST",
                "/api/v1/configurations/audited/rollout/pause".into(),
                None,
                200,
            ),
            (
                "POST",
                "/api/v1/configurations/audited/rollout/resume".into(),
                None,
                200,
            ),
            (
                "PATCH",
                format!("/api/v1/agents/{id}/labels"),
                Some(json!({"labels": {"team": "a"}})),
                200,
            ),
            ("POST", format!("/api/v1/agents/{id}/restart"), None, 202),
        ],
    )
    .await;
    ws.close(None).await.ok();
    drop(ws);
    wait_for("agent disconnected", Duration::from_secs(10), || async {
        (agent(&s, &uid).await["status"] == "disconnected").then_some(())
    })
    .await;
    expect_codes(
        &s,
        &carol,
        [
            ("DELETE", format!("/api/v1/agents/{id}"), None, 204),
            (
                "DELETE",
                "/api/v1/configurations/audited?force=true".into(),
                None,
                204,
            ),
        ],
    )
    .await;
    let (code, tok) = create_token(&s, &carol, json!({"name": "script"})).await;
    assert_eq!(code, 201);
    let token_secret = tok["token"].as_str().unwrap().to_string();
    let code = revoke_token(&s, &carol, tok["id"].as_str().unwrap()).await;
    assert_eq!(code, 204);
    create_user(&s, "dave", "dave-password-12", "viewer").await;
    let (code, _) = s
        .send_json(
            "PATCH",
            "/api/v1/users/dave",
            json!({"role": "operator", "password": "dave-password-34"}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = s
        .send_json("DELETE", "/api/v1/users/dave", json!(null))
        .await;
    assert_eq!(code, 204);
    let (code, _, _) = call(&s, "POST", "/api/v1/auth/logout", Some(&carol), None).await;
    assert_eq!(code, 204);

    let entries = audit(&s, "").await;
    let has = |actor: &str, action: &str, outcome: &str| {
        entries
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action && e["outcome"] == outcome)
    };
    for (actor, action, outcome) in [
        ("carol", "auth.login", "ok"),
        ("anonymous", "auth.login", "denied"),
        ("admin", "auth.login", "ok"),
        ("carol", "auth.logout", "ok"),
        ("carol", "config.create", "ok"),
        ("carol", "config.update", "ok"),
        ("carol", "config.rollback", "ok"),
        ("carol", "config.delete", "ok"),
        ("carol", "rollout.start", "ok"),
        ("carol", "rollout.pause", "ok"),
        ("carol", "rollout.resume", "ok"),
        ("carol", "agent.labels", "ok"),
        ("carol", "agent.restart", "ok"),
        ("carol", "agent.delete", "ok"),
        ("carol", "token.create", "ok"),
        ("carol", "token.revoke", "ok"),
        ("admin", "user.create", "ok"),
        ("admin", "user.update", "ok"),
        ("admin", "user.delete", "ok"),
    ] {
        assert!(
            has(actor, action, outcome),
            "no audit entry {actor} {action} {outcome}"
        );
    }
    // Failed logins are anonymous, summarised per address with the usernames tried.
    let denied = entries
        .iter()
        .find(|e| e["actor"] == "anonymous" && e["action"] == "auth.login")
        .unwrap();
    assert_eq!(denied["remote_addr"], "127.0.0.1", "{denied}");
    assert!(denied["details"]["usernames"]
        .as_array()
        .unwrap()
        .contains(&json!("carol")));
    let login_ok = entries
        .iter()
        .find(|e| e["actor"] == "carol" && e["action"] == "auth.login")
        .unwrap();
    assert!(login_ok["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(login_ok["at"].as_str().unwrap().ends_with('Z'));
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");

    // Filters and paging.
    let configs = audit(&s, "&action=config").await;
    assert!(
        configs.len() >= 4
            && configs
                .iter()
                .all(|e| e["action"].as_str().unwrap().starts_with("config."))
    );
    let admins = audit(&s, "&actor=admin").await;
    assert!(!admins.is_empty() && admins.iter().all(|e| e["actor"] == "admin"));
    assert!(audit(&s, "&since=2999-01-01T00:00:00Z").await.is_empty());
    assert_eq!(
        audit(&s, "&since=2000-01-01T00:00:00Z").await.len(),
        entries.len()
    );
    let (code, _) = s.get("/api/v1/audit?since=yesterday").await;
    assert_eq!(code, 400);
    let (_, p1) = s.get("/api/v1/audit?limit=2").await;
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = s
        .get(&format!("/api/v1/audit?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(p2["items"][0]["id"], ids[2]);
    assert_eq!(p1["total"].as_u64().unwrap() as usize, entries.len());

    // Secrets appear nowhere: not in the audit log, not in the server log.
    let (_, whole) = s.get("/api/v1/audit?limit=1000").await;
    let text = whole.to_string();
    let logs = s.logs();
    for secret in [
        admin_pw.as_str(),
        "carol-password-1",
        "not-carols-password",
        "dave-password-12",
        "dave-password-34",
        token_secret.as_str(),
        carol.as_str(),
        admin_jwt.as_str(),
        s.token().as_str(),
    ] {
        assert!(!text.contains(secret), "a secret is in the audit log");
        assert!(!logs.contains(secret), "a secret is in the server log");
    }
}

#[tokio::test]
async fn agent_secrets_rotate_without_a_restart() {
    let s = Server::start_with(Opts {
        config: Some(
            "opamp:\n  agent_secrets: [old-secret-0123456789, new-secret-0123456789]\n".into(),
        ),
        ..Default::default()
    });
    let exchange = |secret: Option<&'static str>, header: &'static str| {
        let url = s.opamp_url();
        async move {
            let mut req = reqwest::Client::new()
                .post(url)
                .header("Content-Type", "application/x-protobuf")
                .body(prost::Message::encode_to_vec(&report_with(
                    new_uid(),
                    0,
                    "svc",
                    &[],
                )));
            if let Some(sec) = secret {
                req = req.header(
                    header,
                    if header == "authorization" {
                        format!("Bearer {sec}")
                    } else {
                        sec.to_string()
                    },
                );
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(
        exchange(Some("old-secret-0123456789"), "authorization").await,
        200
    );
    assert_eq!(
        exchange(Some("new-secret-0123456789"), "authorization").await,
        200
    );
    assert_eq!(
        exchange(Some("new-secret-0123456789"), "secret-key").await,
        200
    );
    assert_eq!(exchange(Some("wrong"), "authorization").await, 401);
    assert_eq!(exchange(None, "authorization").await, 401);
    let ws_status = |secret: &'static str| {
        let url = s.ws_url();
        async move {
            match ws_connect(&url, &[("authorization", &format!("Bearer {secret}"))]).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("ws connect: {e}"),
            }
        }
    };
    assert_eq!(ws_status("old-secret-0123456789").await, 101);
    assert_eq!(ws_status("new-secret-0123456789").await, 101);
    assert_eq!(ws_status("wrong").await, 401, "refused before the upgrade");

    // Rotation: the old secret leaves the config, SIGHUP reloads it.
    std::fs::write(
        s.dir.join("config.yaml"),
        "opamp:\n  agent_secrets: [new-secret-0123456789]\n",
    )
    .unwrap();
    opamp_tests::signal(s.pid(), libc::SIGHUP);
    wait_for("secrets reloaded", Duration::from_secs(10), || async {
        s.logs().contains("reloaded agent secrets").then_some(())
    })
    .await;
    assert_eq!(
        exchange(Some("old-secret-0123456789"), "authorization").await,
        401
    );
    assert_eq!(ws_status("old-secret-0123456789").await, 401);
    assert_eq!(
        exchange(Some("new-secret-0123456789"), "authorization").await,
        200
    );
    assert_eq!(ws_status("new-secret-0123456789").await, 101);
    let logs = s.logs();
    assert!(!logs.contains("old-secret-0123456789") && !logs.contains("new-secret-0123456789"));
}

/// Sends each request with `token` in turn and asserts its status.
async fn expect_codes<const N: usize>(
    s: &Server,
    token: &str,
    requests: [(&str, String, Option<Value>, u16); N],
) {
    for (method, path, body, expected) in requests {
        let (code, _, v) = call(s, method, &path, Some(token), body).await;
        assert_eq!(code, expected, "{method} {path}: {v}");
    }
}

/// `POST /api/v1/tokens` with `token`: the status and the answer.
async fn create_token(s: &Server, token: &str, body: Value) -> (u16, Value) {
    let (code, _, v) = call(s, "POST", "/api/v1/tokens", Some(token), Some(body)).await;
    (code, v)
}

/// `POST /api/v1/auth/login` with `body`, as it answers.
async fn try_login(s: &Server, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    call(s, "POST", "/api/v1/auth/login", None, Some(body)).await
}

/// `DELETE /api/v1/tokens/{id}` with `token`: the status.
async fn revoke_token(s: &Server, token: &str, id: &str) -> u16 {
    call(
        s,
        "DELETE",
        &format!("/api/v1/tokens/{id}"),
        Some(token),
        None,
    )
    .await
    .0
}

/// `POST /api/v1/users` with the admin token: the status and the answer.
async fn post_user(s: &Server, body: Value) -> (u16, Value) {
    s.send_json("POST", "/api/v1/users", body).await
}

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (p.self_signed(&key).unwrap(), key)
    };
    let leaf = |issuer: &(rcgen::Certificate, KeyPair), cn: &str, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer.0, &issuer.1).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let real = ca("opampd test CA");
    let other = ca("some other CA");
    Pki {
        ca_pem: real.0.pem(),
        server: leaf(&real, "opampd", ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf(&real, "agent-1", ExtendedKeyUsagePurpose::ClientAuth),
        stranger: leaf(&other, "agent-x", ExtendedKeyUsagePurpose::ClientAuth),
    }
}

#[tokio::test]
async fn tls_with_required_client_certificates() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let cert = write("server.pem", &pki.server.0);
    let key = write("server.key", &pki.server.1);
    let ca = write("ca.pem", &pki.ca_pem);
    let s = Server::start_with(Opts {
        config: Some(format!(
            "tls:\n  cert_file: {cert}\n  key_file: {key}\n  client_ca_file: {ca}\n  require_client_cert: true\n"
        )),
        ..Default::default()
    });
    let client = |identity: Option<&(String, String)>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(10));
        if let Some((c, k)) = identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{c}{k}").as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let base = format!("https://127.0.0.1:{}", s.addr.port());
    let good = client(Some(&pki.client));
    let r = good
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = good
        .post(format!("{base}/v1/opamp"))
        .header("Content-Type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(&report_with(
            new_uid(),
            0,
            "tls-agent",
            &[],
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let r = good
        .get(format!("{base}/api/v1/agents"))
        .bearer_auth(s.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    assert!(
        client(None)
            .get(format!("{base}/health/live"))
            .send()
            .await
            .is_err(),
        "no client certificate: refused in the handshake"
    );
    assert!(
        client(Some(&pki.stranger))
            .get(format!("{base}/health/live"))
            .send()
            .await
            .is_err(),
        "a certificate from another CA: refused"
    );
    assert!(
        s.http()
            .get(format!("{}/health/live", s.url()))
            .send()
            .await
            .is_err(),
        "no plain HTTP on a TLS listener"
    );
}
