//! Rollouts end to end: real opampd, the project's WebSocket and plain-HTTP
//! clients receiving configurations, applying or rejecting them.

mod common;

use common::*;
use opamp_proto::pb;
use opamp_tests::client::*;
use opamp_tests::Server;
use serde_json::json;

const APPLIED: pb::RemoteConfigStatuses = pb::RemoteConfigStatuses::Applied;
const FAILED: pb::RemoteConfigStatuses = pb::RemoteConfigStatuses::Failed;

#[tokio::test]
async fn websocket_agent_receives_the_rollout_as_a_named_file_and_reports_applied() {
    let s = Server::start();
    let uid = new_uid();
    let (mut ws, first) = ws_agent(&s, uid, &[("env", "prod")]).await;
    assert!(first.remote_config.is_none());

    let (code, _) = save(&s, "otel", "receivers: {otlp: {}}\n", "env=prod").await;
    assert_eq!(code, 201);
    assert_quiet(&mut ws, "saving never distributes").await;

    let st = start_rollout(&s, "otel", json!({})).await;
    assert_eq!(st["version"], 1);
    assert_eq!(st["total"], 1);
    assert_eq!(st["started_by"], "admin");
    let rc = recv_offer(&mut ws).await;
    assert_eq!(
        files(&rc),
        [("otel".to_string(), "receivers: {otlp: {}}\n".to_string())].into()
    );
    let ct = &rc.config.as_ref().unwrap().config_map["otel"].content_type;
    assert_eq!(ct, "text/yaml");
    assert_eq!(rc.config_hash.len(), 32);

    opamp_tests::wait_for(
        "offer recorded",
        std::time::Duration::from_secs(10),
        || async { (agent(&s, &uid).await["remote_config"]["status"] == "pending").then_some(()) },
    )
    .await;
    ws_exchange(&mut ws, &applied(uid, 1, &rc.config_hash, APPLIED, "")).await;
    let st = wait_rollout(&s, "otel", "rollout completed", |v| {
        v["state"] == "completed"
    })
    .await;
    assert_eq!(
        (&st["applied"], &st["pending"], &st["failed"], &st["total"]),
        (&json!(1), &json!(0), &json!(0), &json!(1)),
        "{st}"
    );
    let v = agent(&s, &uid).await;
    assert_eq!(v["remote_config"]["status"], "applied");
    assert_eq!(v["remote_config"]["hash"], hex(&rc.config_hash));
    assert_eq!(
        v["remote_config"]["configs"],
        json!([{"name": "otel", "version": 1}])
    );
    let (_, c) = s.get("/api/v1/configurations/otel").await;
    assert_eq!(c["rolled_out_version"], 1);

    // The agent has it: heartbeats and a reconnect do not bring it again.
    let r = ws_exchange(&mut ws, &heartbeat(uid, 2)).await;
    assert!(r.remote_config.is_none());
    drop(ws);
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let mut again = report_with(uid, 3, "svc", &[("env", "prod")]);
    again.remote_config_status = Some(pb::RemoteConfigStatus {
        last_remote_config_hash: rc.config_hash.clone(),
        status: APPLIED as i32,
        error_message: String::new(),
    });
    let r = ws_exchange(&mut ws, &again).await;
    assert!(
        r.remote_config.is_none(),
        "never resend what the agent reports"
    );

    // A new version is saved (nothing sent), then rolled out (sent).
    save(
        &s,
        "otel",
        "receivers: {otlp: {protocols: {grpc: {}}}}\n",
        "env=prod",
    )
    .await;
    assert_quiet(&mut ws, "saving never distributes").await;
    start_rollout(&s, "otel", json!({})).await;
    let rc2 = recv_offer(&mut ws).await;
    assert!(files(&rc2)["otel"].contains("grpc"));
    assert_ne!(rc2.config_hash, rc.config_hash);
    ws_exchange(&mut ws, &applied(uid, 4, &rc2.config_hash, APPLIED, "")).await;
    wait_rollout(&s, "otel", "v2 completed", |v| {
        v["version"] == 2 && v["state"] == "completed"
    })
    .await;

    // Roll back: version 3 has version 1's body; rolled out, the agent gets it again.
    let (code, v) = s
        .send_json("POST", "/api/v1/configurations/otel/rollback", json!({}))
        .await;
    assert_eq!((code, &v["version"]), (201, &json!(3)), "{v}");
    assert_quiet(&mut ws, "a rollback is saved, not distributed").await;
    start_rollout(&s, "otel", json!({})).await;
    let rc3 = recv_offer(&mut ws).await;
    assert_eq!(files(&rc3)["otel"], "receivers: {otlp: {}}\n");
    assert_eq!(rc3.config_hash, rc.config_hash, "same files, same hash");
    ws_exchange(&mut ws, &applied(uid, 5, &rc3.config_hash, APPLIED, "")).await;
    let st = wait_rollout(&s, "otel", "v3 completed", |v| v["state"] == "completed").await;
    assert_eq!((&st["version"], &st["applied"]), (&json!(3), &json!(1)));
    let v = agent(&s, &uid).await;
    assert_eq!(
        v["remote_config"]["configs"],
        json!([{"name": "otel", "version": 3}])
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn http_agent_receives_the_rollout_at_its_next_poll() {
    let s = Server::start();
    let uid = new_uid();
    let (code, _, r) = http_exchange(&s.opamp_url(), &report_with(uid, 0, "svc-http", &[])).await;
    assert_eq!(code, 200);
    assert!(r.unwrap().remote_config.is_none());
    save(
        &s,
        "base",
        "exporters: {debug: {}}\n",
        "service.name=svc-http",
    )
    .await;
    let st = start_rollout(&s, "base", json!({})).await;
    assert_eq!(st["total"], 1, "{st}");
    let (_, _, r) = http_exchange(&s.opamp_url(), &heartbeat(uid, 1)).await;
    let rc = r.unwrap().remote_config.expect("offered at the next poll");
    assert_eq!(files(&rc)["base"], "exporters: {debug: {}}\n");
    let (_, _, r) = http_exchange(
        &s.opamp_url(),
        &applied(uid, 2, &rc.config_hash, APPLIED, ""),
    )
    .await;
    assert!(r.unwrap().remote_config.is_none());
    let st = wait_rollout(&s, "base", "rollout completed", |v| {
        v["state"] == "completed"
    })
    .await;
    assert_eq!(st["applied"], 1);
}

#[tokio::test]
async fn a_rejecting_agent_pauses_a_staged_rollout() {
    let s = Server::start();
    let ids = uids(3);
    let mut socks = Vec::new();
    for uid in &ids {
        socks.push(ws_agent(&s, *uid, &[("tier", "edge")]).await.0);
    }
    // Version 1 everywhere first, so held-back agents have something to keep.
    save(&s, "edge", "v: 1\n", "tier=edge").await;
    start_rollout(&s, "edge", json!({})).await;
    for (uid, ws) in ids.iter().zip(socks.iter_mut()) {
        let rc = recv_offer(ws).await;
        ws_exchange(ws, &applied(*uid, 1, &rc.config_hash, APPLIED, "")).await;
    }
    wait_rollout(&s, "edge", "v1 completed", |v| v["state"] == "completed").await;

    save(&s, "edge", "v: 2\n", "tier=edge").await;
    let st = start_rollout(&s, "edge", json!({"batch_size": 1, "max_failures": 0})).await;
    assert_eq!(
        (&st["version"], &st["batches"], &st["total"]),
        (&json!(2), &json!(3), &json!(3)),
        "{st}"
    );
    // Batch 0 is the agent with the lowest uid; the others keep version 1.
    let rc = recv_offer(&mut socks[0]).await;
    assert_eq!(files(&rc)["edge"], "v: 2\n");
    assert_quiet(&mut socks[1], "batch 1 is not released").await;
    ws_exchange(
        &mut socks[0],
        &applied(
            ids[0],
            2,
            &rc.config_hash,
            FAILED,
            "exporter otlp: connection refused",
        ),
    )
    .await;
    let st = wait_rollout(&s, "edge", "rollout paused", |v| v["state"] == "paused").await;
    assert_eq!(st["reason"], "1 failures exceed max_failures 0");
    assert_eq!(st["failed"], 1);
    assert_eq!(
        st["failures"],
        json!([{"instance_uid": uid_str(&ids[0]), "error": "exporter otlp: connection refused"}])
    );
    assert_eq!(st["released_batches"], 1);
    assert_eq!(st["pending"], 2);
    for ws in socks.iter_mut().skip(1) {
        assert_quiet(ws, "a paused rollout releases nothing").await;
    }
    let a = agent(&s, &ids[0]).await;
    assert_eq!(a["remote_config"]["status"], "failed");
    assert_eq!(
        a["remote_config"]["error"],
        "exporter otlp: connection refused"
    );
    let pause = audit(&s, "&action=rollout.pause").await;
    assert_eq!(pause[0]["actor"], "system");
    assert_eq!(
        pause[0]["details"]["reason"],
        "1 failures exceed max_failures 0"
    );

    // Resuming needs a larger allowance; with it, the next batches go out.
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations/edge/rollout/resume",
            json!(null),
        )
        .await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-failures 1"));
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations/edge/rollout/resume",
            json!({"max_failures": 1}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["max_failures"], 1);
    for i in 1..3 {
        let rc = recv_offer(&mut socks[i]).await;
        assert_eq!(files(&rc)["edge"], "v: 2\n");
        if i == 1 {
            assert_quiet(&mut socks[2], "one batch at a time").await;
        }
        ws_exchange(
            &mut socks[i],
            &applied(ids[i], 2, &rc.config_hash, APPLIED, ""),
        )
        .await;
    }
    let st = wait_rollout(&s, "edge", "completed", |v| v["state"] == "completed").await;
    assert_eq!(
        (&st["applied"], &st["failed"]),
        (&json!(2), &json!(1)),
        "{st}"
    );

    // Pause and resume by hand.
    save(&s, "edge", "v: 3\n", "tier=edge").await;
    start_rollout(&s, "edge", json!({"batch_size": 2})).await;
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations/edge/rollout/pause",
            json!(null),
        )
        .await;
    assert_eq!((code, &v["state"]), (200, &json!("paused")), "{v}");
    assert_eq!(v["reason"], "paused by admin");
    let (code, _) = s
        .send_json(
            "POST",
            "/api/v1/configurations/edge/rollout/pause",
            json!(null),
        )
        .await;
    assert_eq!(code, 409, "already paused");
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations/edge/rollout/resume",
            json!(null),
        )
        .await;
    assert_eq!((code, &v["state"]), (200, &json!("running")), "{v}");
}

#[tokio::test]
async fn an_agent_matched_by_two_configurations_gets_both_files() {
    let s = Server::start();
    let (a, b, c) = (new_uid(), new_uid(), new_uid());
    let (mut wa, _) = ws_agent(&s, a, &[("env", "prod")]).await;
    let (mut wb, _) = ws_agent(&s, b, &[("env", "prod")]).await;
    let (mut wc, _) = ws_agent(&s, c, &[("env", "dev")]).await;
    save(&s, "zeta", "z: 1\n", "").await;
    save(&s, "alpha", "a: 1\n", "env=prod").await;
    start_rollout(&s, "zeta", json!({})).await;
    let za = recv_offer(&mut wa).await;
    recv_offer(&mut wb).await;
    let zc = recv_offer(&mut wc).await;
    start_rollout(&s, "alpha", json!({})).await;
    let ra = recv_offer(&mut wa).await;
    let rb = recv_offer(&mut wb).await;
    assert_eq!(
        files(&ra),
        [
            ("alpha".to_string(), "a: 1\n".to_string()),
            ("zeta".to_string(), "z: 1\n".to_string())
        ]
        .into()
    );
    assert_eq!(ra.config_hash, rb.config_hash, "same files, same hash");
    assert_ne!(ra.config_hash, za.config_hash);
    assert_eq!(files(&zc).len(), 1);
    assert_quiet(&mut wc, "env=dev does not match alpha").await;
    let v = agent(&s, &a).await;
    assert_eq!(
        v["remote_config"]["configs"],
        json!([{"name": "alpha", "version": 1}, {"name": "zeta", "version": 1}])
    );
    // Both rollouts count the agent as applied once it applies the combined offer.
    ws_exchange(&mut wa, &applied(a, 1, &ra.config_hash, APPLIED, "")).await;
    ws_exchange(&mut wb, &applied(b, 1, &rb.config_hash, APPLIED, "")).await;
    ws_exchange(&mut wc, &applied(c, 1, &zc.config_hash, APPLIED, "")).await;
    wait_rollout(&s, "alpha", "alpha applied", |v| {
        v["applied"] == 2 && v["state"] == "completed"
    })
    .await;
    wait_rollout(&s, "zeta", "zeta applied", |v| {
        v["applied"] == 3 && v["state"] == "completed"
    })
    .await;
}

#[tokio::test]
async fn selectors_match_labels_before_attributes() {
    let s = Server::start();
    let ids = uids(4);
    // 0: env=prod attribute; 1: env=dev attribute but label env=prod; 2: no env; 3: env=staging.
    let attrs: [&[(&str, &str)]; 4] = [
        &[("env", "prod")],
        &[("env", "dev")],
        &[],
        &[("env", "staging")],
    ];
    let mut socks = Vec::new();
    for (uid, a) in ids.iter().zip(attrs) {
        socks.push(ws_agent(&s, *uid, a).await.0);
    }
    for uid in &ids {
        agent(&s, uid).await;
    }
    let (code, v) = s
        .send_json(
            "PATCH",
            &format!("/api/v1/agents/{}/labels", uid_str(&ids[1])),
            json!({"labels": {"env": "prod"}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let cases = [
        ("eq", "env=prod", vec![0, 1]),
        ("ne", "env!=prod", vec![2, 3]),
        ("present", "env", vec![0, 1, 3]),
        ("absent", "!env", vec![2]),
        ("and", "env!=prod,service.name=svc", vec![2, 3]),
        ("attr", "host.name=test-host,env=staging", vec![3]),
    ];
    for (name, selector, want) in cases {
        let (code, v) = save(&s, name, "x: 1\n", selector).await;
        assert_eq!(code, 201, "{v}");
        let st = start_rollout(&s, name, json!({})).await;
        assert_eq!(
            st["total"],
            want.len() as u64,
            "selector {selector:?}: {st}"
        );
        for (i, uid) in ids.iter().enumerate() {
            let want_it = want.contains(&i);
            let got = opamp_tests::wait_for(
                &format!("offer state of agent {i} for {selector}"),
                std::time::Duration::from_secs(10),
                || async {
                    let has = offered_names(&s, uid).await.contains(&name.to_string());
                    (has == want_it).then_some(has)
                },
            )
            .await;
            assert_eq!(got, want_it, "agent {i}, selector {selector:?}");
        }
    }
}

#[tokio::test]
async fn agents_that_match_later_or_after_a_restart_receive_the_rollout() {
    let mut s = Server::start();
    save(&s, "late", "l: 1\n", "env=prod").await;
    let st = start_rollout(&s, "late", json!({"batch_size": 5})).await;
    assert_eq!(
        (&st["state"], &st["total"]),
        (&json!("completed"), &json!(0)),
        "no agent yet: {st}"
    );
    let uid = new_uid();
    let (mut ws, r) = ws_agent(&s, uid, &[("env", "prod")]).await;
    let rc = r.remote_config.expect("offered in the first reply");
    assert_eq!(files(&rc)["late"], "l: 1\n");
    ws_exchange(&mut ws, &applied(uid, 1, &rc.config_hash, APPLIED, "")).await;
    // An agent that gets the label later receives it too.
    let other = new_uid();
    let (mut wo, r) = ws_agent(&s, other, &[]).await;
    assert!(r.remote_config.is_none());
    agent(&s, &other).await;
    s.send_json(
        "PATCH",
        &format!("/api/v1/agents/{}/labels", uid_str(&other)),
        json!({"labels": {"env": "prod"}}),
    )
    .await;
    let rc2 = recv_offer(&mut wo).await;
    assert_eq!(rc2.config_hash, rc.config_hash);
    drop((ws, wo));

    // Targets come back from the database after a restart.
    s.restart();
    let (_ws, r) = ws_agent(&s, new_uid(), &[("env", "prod")]).await;
    assert_eq!(
        files(&r.remote_config.expect("offered after restart"))["late"],
        "l: 1\n"
    );
    // The applied agent reconnects with its hash: nothing is resent.
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let mut again = report_with(uid, 2, "svc", &[("env", "prod")]);
    again.remote_config_status = Some(pb::RemoteConfigStatus {
        last_remote_config_hash: rc.config_hash.clone(),
        status: APPLIED as i32,
        error_message: String::new(),
    });
    let r = ws_exchange(&mut ws, &again).await;
    assert!(r.remote_config.is_none());
}

#[tokio::test]
async fn rollout_of_an_older_version_and_bad_requests() {
    let s = Server::start();
    let uid = new_uid();
    let (mut ws, _) = ws_agent(&s, uid, &[]).await;
    save(&s, "c", "v: 1\n", "").await;
    save(&s, "c", "v: 2\n", "").await;
    let st = start_rollout(&s, "c", json!({"version": 1})).await;
    assert_eq!(st["version"], 1);
    assert_eq!(files(&recv_offer(&mut ws).await)["c"], "v: 1\n");
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/configurations/c/rollout",
            json!({"version": 5}),
        )
        .await;
    assert_eq!(code, 404, "{v}");
    let (code, _) = s
        .send_json(
            "POST",
            "/api/v1/configurations/c/rollout",
            json!({"batch_size": "x"}),
        )
        .await;
    assert_eq!(code, 400);
    let (code, _) = s
        .send_json("POST", "/api/v1/configurations/none/rollout", json!({}))
        .await;
    assert_eq!(code, 404);
    save(&s, "never", "x: 1\n", "").await;
    let (code, v) = s.get("/api/v1/configurations/never/rollout").await;
    assert_eq!(code, 404);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("has not been rolled out"));
    let (code, _) = s
        .send_json(
            "POST",
            "/api/v1/configurations/c/rollout/resume",
            json!(null),
        )
        .await;
    assert_eq!(code, 409, "nothing paused");
}

#[tokio::test]
async fn agents_that_never_report_are_unconfirmed_and_a_batch_times_out() {
    let s = Server::start();
    let ids = uids(3);
    let (mute, gone, last) = (ids[0], ids[1], ids[2]);
    // An agent that accepts remote config but never reports its status.
    let mut ws_mute = ws_connect(&s.ws_url(), &[]).await.expect("ws connect");
    let mut report = report_with(mute, 0, "svc", &[("tier", "edge")]);
    report.capabilities &= !opamp_proto::caps::REPORTS_REMOTE_CONFIG;
    ws_exchange(&mut ws_mute, &report).await;
    let (mut ws_gone, _) = ws_agent(&s, gone, &[("tier", "edge")]).await;
    let (mut ws_last, _) = ws_agent(&s, last, &[("tier", "edge")]).await;
    save(&s, "edge", "v: 1\n", "tier=edge").await;
    let st = start_rollout(&s, "edge", json!({"batch_size": 2, "batch_timeout": 3})).await;
    assert_eq!(
        (&st["batch_timeout"], &st["batches"]),
        (&json!(3), &json!(2)),
        "{st}"
    );
    assert!(st["batch_deadline"].is_string(), "{st}");

    // The mute agent counts as soon as it has the offer; the one that goes
    // away holds the batch until the timeout.
    recv_offer(&mut ws_mute).await;
    recv_offer(&mut ws_gone).await;
    drop(ws_gone);
    let st = wait_rollout(&s, "edge", "mute agent unconfirmed", |v| {
        v["unconfirmed"] == 1
    })
    .await;
    assert_eq!(st["unconfirmed_agents"][0]["instance_uid"], uid_str(&mute));
    assert_eq!(st["unconfirmed_agents"][0]["state"], "delivered");
    assert!(
        st["unconfirmed_agents"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("ReportsRemoteConfig"),
        "{st}"
    );
    if st["released_batches"] == 1 {
        assert_eq!(st["waiting"][0]["instance_uid"], uid_str(&gone), "{st}");
    }

    // After 3 s the silent agent is counted and the next batch goes out.
    let rc = recv_offer(&mut ws_last).await;
    let st = rollout_status(&s, "edge").await;
    assert_eq!(
        (&st["unconfirmed"], &st["released_batches"]),
        (&json!(2), &json!(2)),
        "{st}"
    );
    let reason = st["unconfirmed_agents"][1]["reason"].as_str().unwrap();
    assert!(reason.contains("batch_timeout 3s"), "{reason}");
    ws_exchange(
        &mut ws_last,
        &applied(last, 1, &rc.config_hash, APPLIED, ""),
    )
    .await;
    let st = wait_rollout(&s, "edge", "completed", |v| v["state"] == "completed").await;
    assert_eq!(
        (
            &st["applied"],
            &st["unconfirmed"],
            &st["pending"],
            &st["failed"]
        ),
        (&json!(1), &json!(2), &json!(0), &json!(0)),
        "{st}"
    );

    // opampctl shows them, and sets the timeout.
    let table = opamp_tests::stdout(&s.ctl(&["rollout", "status", "edge"]));
    assert!(
        table.contains("UNCONFIRMED")
            && table.contains(&format!("unconfirmed: {} delivered", uid_str(&mute))),
        "{table}"
    );
    let out = s.ctl(&[
        "rollout",
        "start",
        "edge",
        "--batch-timeout",
        "2m",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&opamp_tests::stdout(&out)).unwrap();
    assert_eq!(v["batch_timeout"], 120, "{v}");
    let wide = opamp_tests::stdout(&s.ctl(&["rollout", "status", "edge", "-o", "json"]));
    assert!(wide.contains("\"unconfirmed\""), "{wide}");
}
