//! One truth about the fleet: after an online restore with agents connected,
//! every count, filter and gauge agrees with the restored inventory and the
//! live connections at once; the status filter and the STATUS column agree
//! whatever the timing settings; settings that cannot work together are
//! refused; saving a selector distributes nothing.

mod common;

use common::*;
use opamp_proto::pb;
use opamp_tests::cli::{code, json, ok};
use opamp_tests::client::*;
use opamp_tests::{bin, stderr, wait_for, Opts, Server};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Uids `opampctl agents list ARGS -o json` returns.
fn listed(s: &Server, args: &[&str]) -> BTreeSet<String> {
    let mut all = vec!["agents", "list", "--all", "-o", "json"];
    all.extend_from_slice(args);
    let v = json(&s.ctl(&all));
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a page: {v}"))
        .iter()
        .map(|a| a["instance_uid"].as_str().unwrap().to_string())
        .collect()
}

/// uid → STATUS column of the `agents list` table.
fn status_column(s: &Server) -> Vec<(String, String)> {
    let out = ok(&s.ctl(&["agents", "list", "--all"]));
    let mut lines = out.lines();
    let header = lines.next().expect("a header");
    assert!(header.contains("STATUS"), "{out}");
    lines
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let status = cols
                .iter()
                .find(|c| ["connected", "stale", "disconnected"].contains(c))
                .unwrap_or_else(|| panic!("a status in {l:?}"));
            (cols[0].to_string(), status.to_string())
        })
        .collect()
}

/// The value of an agent gauge in `/metrics`.
async fn gauge(s: &Server, name: &str) -> i64 {
    let text = s
        .http()
        .get(format!("{}/metrics", s.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k.ends_with(name) && !k.starts_with('#')).then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
}

fn set(uids: &[&[u8; 16]]) -> BTreeSet<String> {
    uids.iter().map(|u| uid_str(u)).collect()
}

#[tokio::test]
async fn online_restore_with_agents_connected_keeps_every_count_right_at_once() {
    if opamp_tests::postgres::sqlite_only(
        "online_restore_with_agents_connected_keeps_every_count_right_at_once",
    ) {
        return;
    }
    let s = Server::start();
    // Before the backup: two WebSocket agents and a plain-HTTP one, all live.
    let (a, b, c) = (new_uid(), new_uid(), new_uid());
    let (mut ws_a, _) = ws_agent(&s, a, &[]).await;
    let (ws_b, _) = ws_agent(&s, b, &[]).await;
    http_exchange(&s.opamp_url(), &full_report(c, 0, "poller")).await;
    wait_for("three agents stored", Duration::from_secs(10), || async {
        let (_, v) = s.get("/api/v1/agents?status=connected").await;
        (v["total"] == 3).then_some(())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let r = json(&s.ctl(&[
        "backup",
        "--dir",
        dir.path().to_str().unwrap(),
        "-o",
        "json",
    ]));
    let file = PathBuf::from(r["file"].as_str().unwrap());

    // The fleet changes: b leaves, d (not in the backup) arrives over WebSocket.
    drop(ws_b);
    let d = new_uid();
    let (mut ws_d, _) = ws_agent(&s, d, &[]).await;
    wait_for("b gone, d stored", Duration::from_secs(10), || async {
        let (_, v) = s.get("/api/v1/agents?status=connected").await;
        (v["total"] == 3 && v.to_string().contains(&uid_str(&d))).then_some(())
    })
    .await;

    let r = json(&s.ctl(&["restore", file.to_str().unwrap(), "--yes", "-o", "json"]));
    assert_eq!(r["live_agents_added"], 1, "{r}");
    assert_eq!(
        r["agents_notified"], 2,
        "a and d are asked for their state: {r}"
    );

    // At once, with no waiting: live a, c, d connected; b (restored) disconnected.
    let connected = set(&[&a, &c, &d]);
    let (_, h) = s.get("/health").await;
    assert_eq!(
        h["agents"],
        json!({"connected": 3, "stale": 0, "disconnected": 1, "total": 4}),
        "{h}"
    );
    assert_eq!(gauge(&s, "agents_connected").await, 3);
    assert_eq!(gauge(&s, "agents_stale").await, 0);
    assert_eq!(gauge(&s, "agents_disconnected").await, 1);
    assert_eq!(gauge(&s, "agents_known").await, 4);
    assert_eq!(listed(&s, &["--status", "connected"]), connected);
    assert_eq!(listed(&s, &["--status", "disconnected"]), set(&[&b]));
    assert!(listed(&s, &["--status", "stale"]).is_empty());
    let column = status_column(&s);
    assert_eq!(column.len(), 4, "{column:?}");
    for (uid, status) in &column {
        let want = if connected.contains(uid) {
            "connected"
        } else {
            "disconnected"
        };
        assert_eq!(status, want, "STATUS of {uid}: {column:?}");
    }
    let page = json(&s.ctl(&["agents", "list", "--status", "connected", "-o", "json"]));
    assert_eq!(page["total"], 3, "{page}");

    // d was not in the backup: it is back in the inventory with its
    // description as soon as it answers the full-state request.
    let ask = ws_recv(&mut ws_d).await;
    assert_eq!(ask.flags & opamp_proto::caps::FLAG_REPORT_FULL_STATE, 1);
    ws_exchange(&mut ws_d, &report_with(d, 1, "late", &[])).await;
    wait_for("d's description", Duration::from_secs(10), || async {
        let v = agent(&s, &d).await;
        (v["identifying_attributes"]["service.name"] == "late" && v["status"] == "connected")
            .then_some(())
    })
    .await;
    let ask = ws_recv(&mut ws_a).await;
    assert_eq!(ask.flags & opamp_proto::caps::FLAG_REPORT_FULL_STATE, 1);

    // A disconnect after the restore is counted once, everywhere.
    drop(ws_a);
    wait_for("a disconnected", Duration::from_secs(10), || async {
        let (_, h) = s.get("/health").await;
        (h["agents"] == json!({"connected": 2, "stale": 0, "disconnected": 2, "total": 4}))
            .then_some(())
    })
    .await;
    assert_eq!(listed(&s, &["--status", "connected"]), set(&[&c, &d]));
    assert_eq!(listed(&s, &["--status", "disconnected"]), set(&[&a, &b]));
}

#[tokio::test]
async fn status_filter_and_status_column_agree_between_last_seen_flushes() {
    // A last-seen flush as long as the staleness window: the stored last-seen
    // time lags, the status does not.
    let cfg = "opamp:\n  heartbeat_interval_seconds: 1\n  stale_after_seconds: 2\n  disconnect_after_seconds: 30\ndatabase:\n  last_seen_flush_seconds: 2\n";
    let s = Server::start_with(Opts {
        config: Some(cfg.into()),
        ..Default::default()
    });
    let (beating, quiet) = (new_uid(), new_uid());
    let (mut ws, _) = ws_agent(&s, beating, &[]).await;
    http_exchange(&s.opamp_url(), &full_report(quiet, 0, "quiet")).await;
    agent(&s, &quiet).await;
    // For five seconds the WebSocket agent heartbeats every half second and
    // the HTTP agent stays silent: every answer agrees with itself.
    let start = Instant::now();
    let mut seq = 1;
    let mut saw_stale = false;
    while start.elapsed() < Duration::from_secs(5) {
        ws_exchange(&mut ws, &heartbeat(beating, seq)).await;
        seq += 1;
        let (_, connected) = s.get("/api/v1/agents?status=connected").await;
        let (_, stale) = s.get("/api/v1/agents?status=stale").await;
        let ids = |v: &Value| -> BTreeSet<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["instance_uid"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(
            ids(&connected).contains(&uid_str(&beating)),
            "a heartbeating agent is connected: {connected}"
        );
        assert!(!ids(&stale).contains(&uid_str(&beating)), "{stale}");
        for a in connected["items"].as_array().unwrap() {
            assert_eq!(a["status"], "connected", "filtered connected: {a}");
        }
        for a in stale["items"].as_array().unwrap() {
            assert_eq!(a["status"], "stale", "filtered stale: {a}");
        }
        saw_stale |= ids(&stale).contains(&uid_str(&quiet));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(saw_stale, "the silent HTTP agent turned stale");
    assert_eq!(listed(&s, &["--status", "stale"]), set(&[&quiet]));
    assert_eq!(listed(&s, &["--status", "connected"]), set(&[&beating]));
    let column: Vec<(String, String)> = status_column(&s);
    assert!(
        column.contains(&(uid_str(&quiet), "stale".into()))
            && column.contains(&(uid_str(&beating), "connected".into())),
        "{column:?}"
    );
    let (_, h) = s.get("/health").await;
    assert_eq!(h["agents"]["stale"], 1, "{h}");
    assert_eq!(h["agents"]["connected"], 1, "{h}");
}

#[test]
fn check_config_refuses_liveness_settings_that_cannot_work_together() {
    let dir = tempfile::tempdir().unwrap();
    let check = |yaml: &str| {
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, format!("auth:\n  generate_jwt_secret: true\n{yaml}")).unwrap();
        std::process::Command::new(bin("opampd"))
            .args(["check-config", "--config"])
            .arg(&f)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap()
    };
    let o = check("opamp:\n  heartbeat_interval_seconds: 5\n  stale_after_seconds: 10\ndatabase:\n  last_seen_flush_seconds: 15\n");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("database.last_seen_flush_seconds (15)")
            && e.contains("opamp.stale_after_seconds (10)"),
        "{e}"
    );
    let o = check("opamp:\n  heartbeat_interval_seconds: 60\n  stale_after_seconds: 30\n");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("opamp.stale_after_seconds (30)")
            && e.contains("opamp.heartbeat_interval_seconds (60)"),
        "{e}"
    );
    let o = check("opamp:\n  heartbeat_interval_seconds: 10\n  stale_after_seconds: 30\ndatabase:\n  last_seen_flush_seconds: 30\n");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// Waits `for_how_long` and fails if a remote config arrives meanwhile.
async fn no_offer_for(ws: &mut Ws, for_how_long: Duration, what: &str) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + for_how_long;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b)))) => {
                use prost::Message as _;
                let payload = opamp_proto::frame::decode(&b).expect("a framed message");
                let m = pb::ServerToAgent::decode(payload).expect("a ServerToAgent");
                assert!(m.remote_config.is_none(), "{what}: got {m:?}");
            }
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("{what}: connection ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn saving_a_new_selector_distributes_nothing_until_a_rollout() {
    let s = Server::start();
    let (prod, dev) = (new_uid(), new_uid());
    let (mut ws_prod, _) = ws_agent(&s, prod, &[("env", "prod")]).await;
    let (mut ws_dev, _) = ws_agent(&s, dev, &[("env", "dev")]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.yaml");
    std::fs::write(&file, "receivers: {otlp: {}}\n").unwrap();
    let f = file.to_str().unwrap();
    ok(&s.ctl(&["configs", "apply", "-f", f, "--selector", "env=prod"]));
    ok(&s.ctl(&["rollout", "start", "otel"]));
    let rc = recv_offer(&mut ws_prod).await;
    ws_exchange(
        &mut ws_prod,
        &applied(
            prod,
            1,
            &rc.config_hash,
            pb::RemoteConfigStatuses::Applied,
            "",
        ),
    )
    .await;
    wait_rollout(&s, "otel", "completed", |v| v["state"] == "completed").await;

    // The selector changes to every agent: saved only, pushed to nobody.
    let o = s.ctl(&["configs", "apply", "-f", f, "--selector", ""]);
    assert!(
        stderr(&o).contains("saved only") && ok(&o).contains("otel"),
        "{}",
        stderr(&o)
    );
    no_offer_for(&mut ws_dev, Duration::from_secs(4), "a saved selector").await;
    let (_, shown) = s.get("/api/v1/configurations/otel").await;
    assert_eq!(shown["selector"], "", "{shown}");
    assert_eq!(shown["rolled_out_selector"], "env=prod", "{shown}");
    let st = json(&s.ctl(&["rollout", "status", "otel", "-o", "json"]));
    assert_eq!(
        (st["total"].as_u64(), st["applied"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );
    // The dev agent's CONFIG column: nothing.
    let v = agent(&s, &dev).await;
    assert!(
        v["remote_config"]["configs"].as_array().unwrap().is_empty(),
        "{v}"
    );
    let v = agent(&s, &prod).await;
    assert_eq!(
        v["remote_config"]["running"],
        json!([{"name": "otel", "version": 1}])
    );

    // A rollout distributes the saved selector.
    ok(&s.ctl(&["rollout", "start", "otel"]));
    let rc = recv_offer(&mut ws_dev).await;
    assert_eq!(files(&rc).len(), 1);
    // Offered, not applied: the agent runs nothing yet, and the CONFIG column says so.
    wait_for("offer recorded", Duration::from_secs(10), || async {
        (agent(&s, &dev).await["remote_config"]["status"] == "pending").then_some(())
    })
    .await;
    let table = ok(&s.ctl(&["agents", "list"]));
    let line = table.lines().find(|l| l.contains(&uid_str(&dev))).unwrap();
    assert!(line.contains("- → otel@1 pending"), "{table}");
    let line = table.lines().find(|l| l.contains(&uid_str(&prod))).unwrap();
    assert!(line.contains(" otel@1 ") && !line.contains('→'), "{table}");
}
