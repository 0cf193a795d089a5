//! Attacks on a real opampd (issue: security round 2): shipped and
//! placeholder secrets, anonymous agents off loopback, login floods, slow and
//! idle clients, sessions that must end, what /health tells strangers,
//! durability settings, audit retention and token pruning.

mod common;

use opamp_proto::pb;
use opamp_tests::{jwt_key, root, wait_for, Opts, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the real opampd and expects it to refuse: returns its stderr.
fn refused_start(config: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, config).unwrap();
    let mut cmd = Command::new(opamp_tests::bin("opampd"));
    cmd.env_clear()
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("opampd started although it should refuse ({config:?}, {env:?}); log:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    err
}

/// Secret values written in this repository's deploy files and docs: the
/// values of JWT_SECRET_KEY / agent secret settings that are literal (not a
/// command substitution or a variable).
fn secrets_in_repository() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut stack = vec![root().join("deploy")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    for doc in ["README.md", "SECURITY.md"] {
        files.push(root().join(doc));
    }
    let mut found = Vec::new();
    let literal = |v: &str| {
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'' || c == ',');
        (!v.is_empty()
            && !v.contains('$')
            && !v.contains('%')
            && !v.contains('`')
            && !v.contains('<')
            && !v.contains("...")
            && !v.contains('…')
            && !v.starts_with('[')
            && !v.starts_with('/'))
        .then(|| v.to_string())
    };
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let name = f.strip_prefix(root()).unwrap().display().to_string();
        let mut in_secret_list = false;
        for line in text.lines() {
            let t = line.trim().trim_start_matches('#').trim();
            for key in [
                "JWT_SECRET_KEY=",
                "JWT_SECRET_KEY:",
                "jwt-secret-key:",
                "jwt-secret-key=",
                "OPAMPD_OPAMP_AGENT_SECRETS=",
                "OPAMPD_OPAMP_AGENT_SECRETS:",
                "agent-secrets=",
            ] {
                if let Some((_, v)) = t.split_once(key) {
                    found.extend(literal(v).map(|v| (name.clone(), v)));
                }
            }
            if let Some(rest) = t.strip_prefix("agent_secrets:") {
                in_secret_list = rest.trim().is_empty();
                if let Some(list) = rest.trim().strip_prefix('[') {
                    for v in list.trim_end_matches(']').split(',') {
                        found.extend(literal(v).map(|v| (name.clone(), v)));
                    }
                }
                continue;
            }
            if in_secret_list {
                match t.strip_prefix("- ") {
                    Some(v) => found.extend(literal(v).map(|v| (name.clone(), v))),
                    None => in_secret_list = false,
                }
            }
        }
    }
    found
}

#[test]
fn shipped_and_placeholder_secrets_are_refused() {
    let mut candidates = secrets_in_repository();
    // Values earlier versions of the deploy files shipped, and obvious placeholders.
    for v in [
        "REPLACE-ME-with-output-of-openssl-rand-hex-32",
        "CHANGE-ME-current-agent-secret",
        "CHANGE-ME-next-agent-secret",
        "test-only-jwt-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "please-changeme-0123456789abcdefghijklmnopqrstuvwxyz",
        "my-example-secret-0123456789abcdefghijklmnopqrstuvwxyz",
        "Replace-Me-0123456789abcdefghijklmnopqrstuvwxyz0123456789",
    ] {
        candidates.push(("known placeholder".into(), v.into()));
    }
    let long_key = "Zq3v8e1Lm0Rk5Tt2Wd7Yb4Nc9Hp6Jx1Sa3Uf8Ge5Ki2Ow7";
    for (origin, value) in &candidates {
        // As the JWT signing key...
        let err = refused_start("{}\n", &[("JWT_SECRET_KEY", value)], &[]);
        assert!(
            err.contains("JWT_SECRET_KEY") && err.contains("openssl rand"),
            "JWT key {value:?} from {origin}: {err}"
        );
        // ...and as an agent secret.
        let err = refused_start(
            &format!("opamp:\n  agent_secrets: [{value:?}]\n"),
            &[("JWT_SECRET_KEY", long_key)],
            &[],
        );
        assert!(
            err.contains("opamp.agent_secrets[0]") && err.contains("openssl rand"),
            "agent secret {value:?} from {origin}: {err}"
        );
    }
    // A real random key starts.
    let mut s = Server::start_with(Opts {
        config: Some(format!("opamp:\n  agent_secrets: [{long_key}]\n")),
        ..Default::default()
    });
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn anonymous_agents_only_on_loopback() {
    let jwt = [("JWT_SECRET_KEY", jwt_key())];
    for args in [
        &["--listen", "0.0.0.0:0"][..],
        &["--agent-listen", "0.0.0.0:0"][..],
    ] {
        let err = refused_start("{}\n", &jwt, args);
        assert!(
            err.contains("opamp.agent_secrets is empty") && err.contains("allow_anonymous_agents"),
            "{args:?}: {err}"
        );
    }
    // Explicitly allowed, or with a secret, it starts.
    let mut open = Server::start_with(Opts {
        config: Some("opamp:\n  allow_anonymous_agents: true\n".into()),
        listen: Some("0.0.0.0:0".into()),
        ..Default::default()
    });
    assert_eq!(open.stop(), Some(0));
    let mut guarded = Server::start_with(Opts {
        config: Some("opamp:\n  agent_secrets: [Zq3v8e1Lm0Rk5Tt2Wd7Yb4Nc9Hp6Jx1]\n".into()),
        listen: Some("0.0.0.0:0".into()),
        ..Default::default()
    });
    assert_eq!(guarded.stop(), Some(0));
}

async fn agent_post(s: &Server, secret: Option<&str>) -> u16 {
    let msg = pb::AgentToServer {
        instance_uid: uuid::Uuid::now_v7().as_bytes().to_vec(),
        ..Default::default()
    };
    let mut req = reqwest::Client::new()
        .post(s.opamp_url())
        .header("Content-Type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(&msg));
    if let Some(secret) = secret {
        req = req.bearer_auth(secret);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_reload_cannot_empty_the_agent_secrets() {
    let secret = "Zq3v8e1Lm0Rk5Tt2Wd7Yb4Nc9Hp6Jx1";
    let s = Server::start_with(Opts {
        config: Some(format!("opamp:\n  agent_secrets: [{secret}]\n")),
        ..Default::default()
    });
    assert_eq!(agent_post(&s, None).await, 401);
    std::fs::write(s.dir.join("config.yaml"), "opamp:\n  agent_secrets: []\n").unwrap();
    opamp_tests::signal(s.pid(), libc::SIGHUP);
    wait_for("reload refused", Duration::from_secs(10), || async {
        s.logs()
            .contains("keeping the current agent secrets")
            .then_some(())
    })
    .await;
    assert_eq!(agent_post(&s, None).await, 401, "still closed");
    assert_eq!(agent_post(&s, Some(secret)).await, 200);
}

async fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let (code, _, value) = common::call(s, method, path, token, body).await;
    (code, value)
}

async fn login(s: &Server, user: &str, password: &str) -> String {
    let (code, v) = call(
        s,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"username": user, "password": password})),
    )
    .await;
    assert_eq!(code, 200, "login {user}: {v}");
    v["token"].as_str().unwrap().to_string()
}

async fn audit_rows(s: &Server) -> Vec<Value> {
    let (code, v) = s.get("/api/v1/audit?limit=1000").await;
    assert_eq!(code, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_flood_does_not_slow_the_api_or_fill_the_audit_log() {
    let s = Server::start_with(Opts {
        config: Some("{}\n".into()),
        ..Default::default()
    });
    let token = s.token();
    let audit_before = audit_rows(&s).await.len();
    let flood = {
        let url = format!("{}/api/v1/auth/login", s.url());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut tasks = Vec::new();
            for worker in 0..16 {
                let (client, url) = (client.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let mut codes = Vec::new();
                    for i in 0..25 {
                        let r = client
                            .post(&url)
                            .json(&json!({"username": format!("user-{worker}-{i}"), "password": "not-the-password"}))
                            .send()
                            .await
                            .unwrap();
                        codes.push(r.status().as_u16());
                    }
                    codes
                }));
            }
            let mut codes = Vec::new();
            for t in tasks {
                codes.extend(t.await.unwrap());
            }
            codes
        })
    };
    // Meanwhile the operator works: every answer comes promptly.
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while !flood.is_finished() || answered < 20 {
        let start = Instant::now();
        let (code, v) = call(&s, "GET", "/api/v1/agents", Some(&token), None).await;
        assert_eq!(code, 200, "{v}");
        slowest = slowest.max(start.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let codes = flood.await.unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "an operator request took {slowest:?} during the flood"
    );
    assert_eq!(codes.len(), 400);
    assert!(
        codes.iter().all(|c| matches!(c, 401 | 429 | 503)),
        "bad logins only fail: {codes:?}"
    );
    let throttled = codes.iter().filter(|c| **c == 429).count();
    assert!(
        throttled > 300,
        "bad logins are throttled: {throttled} of 400"
    );

    // One summary row for the address, not one row per failure.
    let rows = wait_for("failure summary", Duration::from_secs(10), || async {
        let rows = audit_rows(&s).await;
        let failed: Vec<Value> = rows
            .iter()
            .filter(|r| r["actor"] == "anonymous" && r["action"] == "auth.login")
            .cloned()
            .collect();
        (failed.len() == 1 && failed[0]["details"]["failures"].as_u64() > Some(0)).then_some(rows)
    })
    .await;
    assert!(
        rows.len() - audit_before <= 2,
        "{} audit rows for 400 bad logins",
        rows.len() - audit_before
    );
    let summary = rows.iter().find(|r| r["actor"] == "anonymous").unwrap();
    assert_eq!(summary["remote_addr"], "127.0.0.1");
    assert_eq!(summary["outcome"], "denied");
    assert!(summary["details"]["usernames"].as_array().unwrap().len() <= 10);

    // The real admin, from another address, logs in at once.
    let password = std::fs::read_to_string(s.data_dir().join("admin.password")).unwrap();
    let client = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let r = client
        .post(format!("{}/api/v1/auth/login", s.url()))
        .json(&json!({"username": "admin", "password": password.trim()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Overlong usernames are refused before any work; anonymous logouts leave no trace.
    let (code, _) = call(
        &s,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"username": "u".repeat(65), "password": "x"})),
    )
    .await;
    assert_eq!(code, 400);
    let before = audit_rows(&s).await.len();
    for _ in 0..20 {
        let (code, _) = call(&s, "POST", "/api/v1/auth/logout", Some("junk"), None).await;
        assert_eq!(code, 401);
    }
    assert!(audit_rows(&s).await.len() - before <= 1);
}

#[tokio::test]
async fn password_role_change_and_deletion_end_sessions() {
    let s = Server::start_with(Opts {
        config: Some("{}\n".into()),
        ..Default::default()
    });
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/users",
            json!({"username": "bob", "password": "bob-password-01", "role": "operator"}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let check = |token: String| {
        let s = &s;
        async move { call(s, "GET", "/api/v1/agents", Some(&token), None).await }
    };

    let session = login(&s, "bob", "bob-password-01").await;
    assert_eq!(check(session.clone()).await.0, 200);
    let (code, _) = s
        .send_json(
            "PATCH",
            "/api/v1/users/bob",
            json!({"password": "bob-password-02"}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, v) = check(session).await;
    assert_eq!(
        (code, &v["error"]["code"]),
        (401, &json!("token_revoked")),
        "password change"
    );

    let session = login(&s, "bob", "bob-password-02").await;
    let (code, _) = s
        .send_json("PATCH", "/api/v1/users/bob", json!({"role": "viewer"}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(check(session).await.0, 401, "role change");

    let session = login(&s, "bob", "bob-password-02").await;
    let (code, token) = call(
        &s,
        "POST",
        "/api/v1/tokens",
        Some(&session),
        Some(json!({"name": "script"})),
    )
    .await;
    assert_eq!(code, 201, "{token}");
    let api_token = token["token"].as_str().unwrap().to_string();
    assert_eq!(check(api_token.clone()).await.0, 200);
    let (code, _) = s
        .send_json("DELETE", "/api/v1/users/bob", json!(null))
        .await;
    assert_eq!(code, 204);
    assert_eq!(check(session).await.0, 401, "deleted user's session");
    assert_eq!(check(api_token).await.0, 401, "deleted user's API token");

    // A user created again under the same name does not revive old sessions.
    let old = {
        let (code, _) = s
            .send_json(
                "POST",
                "/api/v1/users",
                json!({"username": "carl", "password": "carl-password-01", "role": "viewer"}),
            )
            .await;
        assert_eq!(code, 201);
        login(&s, "carl", "carl-password-01").await
    };
    assert_eq!(
        s.send_json("DELETE", "/api/v1/users/carl", json!(null))
            .await
            .0,
        204
    );
    assert_eq!(
        s.send_json(
            "POST",
            "/api/v1/users",
            json!({"username": "carl", "password": "carl-password-01", "role": "admin"}),
        )
        .await
        .0,
        201
    );
    assert_eq!(check(old).await.0, 401, "a session of the earlier carl");
}

#[tokio::test]
async fn api_tokens_expire_by_default_and_never_only_when_asked() {
    let s = Server::start_with(Opts {
        config: Some("{}\n".into()),
        ..Default::default()
    });
    let days_left = |v: &Value| {
        let at = v["expires_at"].as_str()?;
        let t = chrono_like_days(at);
        Some(t)
    };
    let (code, v) = s
        .send_json("POST", "/api/v1/tokens", json!({"name": "default"}))
        .await;
    assert_eq!(code, 201, "{v}");
    let left = days_left(&v).expect("a default expiry");
    assert!((89..=90).contains(&left), "{v}");
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/tokens",
            json!({"name": "forever", "expires_in_days": "never"}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["expires_at"], Value::Null);
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/tokens",
            json!({"name": "bad", "expires_in_days": "sometimes"}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
}

/// Whole days from now until an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SS…Z).
fn chrono_like_days(at: &str) -> i64 {
    let days_from_civil = |y: i64, m: i64, d: i64| {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    };
    let num = |r: std::ops::Range<usize>| at[r].parse::<i64>().unwrap();
    let target = days_from_civil(num(0..4), num(5..7), num(8..10)) * 86_400
        + num(11..13) * 3600
        + num(14..16) * 60
        + num(17..19);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (target - now) / 86_400
}

#[tokio::test]
async fn health_tells_strangers_no_paths() {
    let s = Server::start_with(Opts {
        config: Some("{}\n".into()),
        ..Default::default()
    });
    let data_dir = s.data_dir().display().to_string();
    let anonymous = reqwest::get(format!("{}/health", s.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!anonymous.contains(&data_dir), "{anonymous}");
    assert!(!anonymous.contains("opamp.db"), "{anonymous}");
    assert!(!anonymous.contains("postgres://"), "{anonymous}");
    let (code, with_token) = s.get("/health").await;
    assert_eq!(code, 200);
    let path = with_token["database"]["path"].as_str().unwrap_or_default();
    match s.database_url() {
        // On PostgreSQL the path is the database URL, its password hidden.
        Some(url) => {
            let database = url.rsplit('/').next().unwrap();
            assert!(
                path.starts_with("postgres://") && path.ends_with(database),
                "{with_token}"
            );
            let password = url.split_once("://").unwrap().1.split_once('@').unwrap().0;
            let password = password.split_once(':').unwrap().1;
            assert!(!path.contains(password), "{with_token}");
        }
        None => assert!(path.ends_with("opamp.db"), "{with_token}"),
    }
}

/// Sends `head` and then waits for the server to answer or close; returns
/// what it sent back and how long it took.
fn raw_exchange(addr: std::net::SocketAddr, head: &[u8], wait: Duration) -> (Vec<u8>, Duration) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(head).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    (got, start.elapsed())
}

#[test]
fn slow_bodies_and_idle_connections_are_cut_off() {
    let s = Server::start_with(Opts {
        config: Some("http:\n  body_timeout_seconds: 1\n  idle_timeout_seconds: 2\n".into()),
        ..Default::default()
    });
    // A REST body that never arrives in full: 408 after the body timeout.
    let head = "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user";
    let (reply, took) = raw_exchange(s.addr, head.as_bytes(), Duration::from_secs(15));
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // An idle keep-alive connection is closed after the idle timeout.
    let (reply, took) = raw_exchange(
        s.addr,
        b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(15),
    );
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(10)).contains(&took),
        "closed after {took:?}"
    );

    // An idle HTTP/2 connection (prior knowledge) gets a GOAWAY and is closed.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let (reply, took) = raw_exchange(s.addr, &preface, Duration::from_secs(15));
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
    let mut frames = Vec::new();
    let mut rest = &reply[..];
    while rest.len() >= 9 {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        frames.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(frames.contains(&7), "a GOAWAY frame among {frames:?}");
}

#[test]
fn synchronous_setting_is_validated() {
    let err = refused_start(
        "database:\n  synchronous: sometimes\n",
        &[("JWT_SECRET_KEY", jwt_key())],
        &[],
    );
    assert!(
        err.contains("database.synchronous must be normal or full"),
        "{err}"
    );
    let mut s = Server::start_with(Opts {
        config: Some("database:\n  synchronous: full\n".into()),
        ..Default::default()
    });
    assert_eq!(s.stop(), Some(0));
}

#[tokio::test]
async fn old_audit_entries_and_expired_revoked_tokens_are_pruned() {
    if opamp_tests::postgres::sqlite_only("old_audit_entries_and_expired_revoked_tokens_are_pruned")
    {
        return;
    }
    let mut s = Server::start_with(Opts {
        config: Some("audit:\n  retention_days: 30\n".into()),
        ..Default::default()
    });
    s.stop();
    let db = s.data_dir().join("opamp.db");
    let day = 86_400_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "INSERT INTO audit_log (at, actor, action, outcome, details) VALUES (?1, 'old', 'test.old', 'ok', '{}'), (?2, 'new', 'test.new', 'ok', '{}')",
            [now - 40 * day, now - 20 * day],
        )
        .unwrap();
        c.execute(
            "INSERT INTO api_tokens (id, name, token_hash, role, owner, created_at, expires_at, revoked)
             VALUES ('gone', 'gone', 'h1', 'viewer', 'admin', ?1, ?2, 1), ('kept', 'kept', 'h2', 'viewer', 'admin', ?1, ?3, 1)",
            [now - 10 * day, now - day, now + day],
        )
        .unwrap();
    }
    s.start_again();
    wait_for("pruned", Duration::from_secs(20), || async {
        let c = rusqlite::Connection::open(&db).ok()?;
        let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        (count("SELECT COUNT(*) FROM audit_log WHERE actor = 'old'") == 0
            && count("SELECT COUNT(*) FROM api_tokens WHERE id = 'gone'") == 0)
            .then_some(())
    })
    .await;
    let c = rusqlite::Connection::open(&db).unwrap();
    let kept: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM audit_log WHERE actor = 'new'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let token_kept: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM api_tokens WHERE id = 'kept'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((kept, token_kept), (1, 1));
}
