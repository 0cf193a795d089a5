//! Several opampd replicas on one PostgreSQL database behaving as one
//! server: every replica lists every agent with the right status, pushes
//! requested on one replica reach agents held by another, and a replica
//! killed with kill -9 loses its agents within the lease while the others
//! carry on (its agents reconnect, rollout progress continues, nothing
//! acknowledged is lost). Skipped, with a SKIPPED line, without PostgreSQL.

mod common;

use common::{files, recv_offer, report_with, save, start_rollout, wait_rollout};
use opamp_proto::pb;
use opamp_tests::client::{agent as opamp_agent, applied, new_uid, uid_str, ws_connect, ws_send};
use opamp_tests::client::{ws_exchange, ws_recv, Ws};
use opamp_tests::{postgres, wait_for, Opts, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The lease the replicas run with: short, so a death shows quickly.
const LEASE_SECONDS: u64 = 3;

/// A replica named `id`: the first on a fresh database of its own (dropped
/// with it), the others on the first's database with its admin token (only
/// the first replica writes one).
fn replica(id: &str, first: Option<&Server>) -> Server {
    let server = Server::start_with(Opts {
        postgres: first.is_none(),
        database_url: first.map(|f| f.database_url().expect("on PostgreSQL").to_string()),
        env: vec![
            ("OPAMPD_CLUSTER_REPLICA_ID".into(), id.into()),
            (
                "OPAMPD_CLUSTER_LEASE_SECONDS".into(),
                LEASE_SECONDS.to_string(),
            ),
        ],
        ..Opts::default()
    });
    if let Some(first) = first {
        std::fs::write(server.data_dir().join("admin.token"), first.token())
            .expect("the first replica's token written");
    }
    server
}

/// Two replicas, `a` (started first, so it drives rollouts) and `b`, on a
/// fresh database; None (SKIPPED line printed) without PostgreSQL.
async fn two_replicas(test: &str) -> Option<(Server, Server)> {
    postgres::available(test)?;
    let a = replica("a", None);
    wait_for("a drives rollouts", Duration::from_secs(10), || async {
        a.logs()
            .contains("this replica now drives rollout progress")
            .then_some(())
    })
    .await;
    let b = replica("b", Some(&a));
    Some((a, b))
}

/// A WebSocket agent on `s` with attributes `attrs`, after its first
/// report: the socket and the reply.
async fn ws_agent(s: &Server, uid: [u8; 16], attrs: &[(&str, &str)]) -> (Ws, pb::ServerToAgent) {
    let mut ws = ws_connect(&s.ws_url(), &[]).await.expect("ws connect");
    let reply = ws_exchange(&mut ws, &report_with(uid, 0, "svc", attrs)).await;
    (ws, reply)
}

/// The agent's status as `s` lists it.
async fn status_on(s: &Server, uid: &[u8; 16]) -> String {
    let (code, v) = s.get(&format!("/api/v1/agents/{}", uid_str(uid))).await;
    if code != 200 {
        return format!("HTTP {code}");
    }
    v["status"].as_str().unwrap_or("").to_string()
}

/// Waits until `s` lists the agent with `status`.
async fn wait_status(s: &Server, uid: &[u8; 16], status: &str, limit: Duration) {
    let what = format!("{} {status} on {}", uid_str(uid), s.url());
    wait_for(&what, limit, || async {
        (status_on(s, uid).await == status).then_some(())
    })
    .await;
}

/// Uids `s` lists with `?status=`.
async fn listed(s: &Server, status: &str) -> Vec<String> {
    let (code, v) = s.get(&format!("/api/v1/agents?status={status}")).await;
    assert_eq!(code, 200, "{v}");
    let mut uids: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["instance_uid"].as_str().unwrap().to_string())
        .collect();
    uids.sort();
    uids
}

/// Answers every remote config the agent is offered with APPLIED, from
/// the reply to its first report on, in the background, until the
/// connection ends.
fn apply_everything(
    uid: [u8; 16],
    (mut ws, first): (Ws, pb::ServerToAgent),
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seq = 1;
        let mut message = Ok(first);
        while let Ok(received) = message {
            if let Some(rc) = received.remote_config {
                let report = applied(
                    uid,
                    seq,
                    &rc.config_hash,
                    pb::RemoteConfigStatuses::Applied,
                    "",
                );
                seq += 1;
                if opamp_agent::ws::send(&mut ws, &report).await.is_err() {
                    return;
                }
            }
            message = opamp_agent::ws::recv(&mut ws).await;
        }
    })
}

#[tokio::test]
async fn every_replica_lists_every_agent_with_its_status() {
    let Some((a, b)) = two_replicas("every_replica_lists_every_agent_with_its_status").await else {
        return;
    };
    let (on_a, on_b) = (new_uid(), new_uid());
    let (ws_a, _) = ws_agent(&a, on_a, &[]).await;
    let (_ws_b, _) = ws_agent(&b, on_b, &[]).await;
    let limit = Duration::from_secs(10);
    for server in [&a, &b] {
        for uid in [&on_a, &on_b] {
            wait_status(server, uid, "connected", limit).await;
        }
    }
    let mut both = vec![uid_str(&on_a), uid_str(&on_b)];
    both.sort();
    for server in [&a, &b] {
        assert_eq!(listed(server, "connected").await, both);
        assert!(listed(server, "disconnected").await.is_empty());
        assert!(listed(server, "stale").await.is_empty());
        // opampctl agrees.
        let out = server.ctl(&["agents", "list", "-o", "json"]);
        let agents: Value = serde_json::from_str(&opamp_tests::stdout(&out)).unwrap();
        let statuses: Vec<&str> = agents
            .as_array()
            .or_else(|| agents["items"].as_array())
            .expect("a list")
            .iter()
            .map(|a| a["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["connected", "connected"], "{agents}");
        // So do the counts (/health, the gauges): the whole fleet.
        let health = wait_for("fleet-wide counts", limit, || async {
            let (_, health) = server.get("/health").await;
            (health["agents"]["connected"] == 2).then_some(health)
        })
        .await;
        assert_eq!(health["agents"]["total"], 2, "{health}");
        assert_eq!(health["agents"]["disconnected"], 0, "{health}");
    }

    // The agent on a goes away: both replicas list it disconnected.
    drop(ws_a);
    for server in [&a, &b] {
        wait_status(server, &on_a, "disconnected", limit).await;
        assert_eq!(listed(server, "disconnected").await, [uid_str(&on_a)]);
        assert_eq!(listed(server, "connected").await, [uid_str(&on_b)]);
    }
}

#[tokio::test]
async fn rollouts_restarts_and_labels_requested_on_one_replica_reach_an_agent_on_another() {
    let Some((a, b)) = two_replicas(
        "rollouts_restarts_and_labels_requested_on_one_replica_reach_an_agent_on_another",
    )
    .await
    else {
        return;
    };
    let uid = new_uid();
    let (mut ws, _) = ws_agent(&a, uid, &[("env", "prod")]).await;
    wait_status(&b, &uid, "connected", Duration::from_secs(10)).await;
    // The contract is 1 s over NOTIFY on loopback; the bound is generous
    // so a loaded machine does not fail the test (figures: BENCHMARKS.md).
    let bound = Duration::from_secs(5);

    // A rollout started on b.
    let (code, v) = save(&b, "otel", "receivers: {otlp: {}}\n", "env=prod").await;
    assert_eq!(code, 201, "{v}");
    let asked = Instant::now();
    start_rollout(&b, "otel", json!({})).await;
    let offer = recv_offer(&mut ws).await;
    let rollout_ms = asked.elapsed().as_millis();
    assert_eq!(files(&offer)["otel"], "receivers: {otlp: {}}\n");
    ws_send(
        &mut ws,
        &applied(
            uid,
            1,
            &offer.config_hash,
            pb::RemoteConfigStatuses::Applied,
            "",
        ),
    )
    .await;
    wait_rollout(&b, "otel", "rollout completed on b", |v| {
        v["state"] == "completed"
    })
    .await;

    // A restart requested on b.
    let asked = Instant::now();
    let (code, v) = b
        .send_json(
            "POST",
            &format!("/api/v1/agents/{}/restart", uid_str(&uid)),
            Value::Null,
        )
        .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["delivery"], "sent through replica a", "{v}");
    let command = loop {
        let m = ws_recv(&mut ws).await;
        if let Some(command) = m.command {
            break command;
        }
    };
    let restart_ms = asked.elapsed().as_millis();
    assert_eq!(command.r#type, pb::CommandType::Restart as i32);

    // A label set on b: a offers what the agent now matches.
    let (code, v) = save(&b, "team-blue", "exporters: {debug: {}}\n", "team=blue").await;
    assert_eq!(code, 201, "{v}");
    start_rollout(&b, "team-blue", json!({})).await;
    let asked = Instant::now();
    let (code, v) = b
        .send_json(
            "PATCH",
            &format!("/api/v1/agents/{}/labels", uid_str(&uid)),
            json!({"labels": {"team": "blue"}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["labels"]["team"], "blue", "{v}");
    let offer = recv_offer(&mut ws).await;
    let labels_ms = asked.elapsed().as_millis();
    assert_eq!(files(&offer)["team-blue"], "exporters: {debug: {}}\n");
    assert_eq!(files(&offer)["otel"], "receivers: {otlp: {}}\n");

    eprintln!(
        "pushes across replicas (requested on b, received on a's WebSocket): \
         rollout {rollout_ms} ms, restart {restart_ms} ms, label change {labels_ms} ms"
    );
    for (what, ms) in [
        ("rollout", rollout_ms),
        ("restart", restart_ms),
        ("labels", labels_ms),
    ] {
        assert!(
            ms < bound.as_millis(),
            "{what} took {ms} ms to cross replicas"
        );
    }
}

#[tokio::test]
async fn a_replica_killed_mid_rollout_loses_its_agents_within_the_lease_and_nothing_else() {
    let Some((mut a, b)) = two_replicas(
        "a_replica_killed_mid_rollout_loses_its_agents_within_the_lease_and_nothing_else",
    )
    .await
    else {
        return;
    };
    let limit = Duration::from_secs(10);
    // Two agents on a (silent: they never confirm while a lives), two on b
    // (apply whatever they are offered).
    let on_a = [new_uid(), new_uid()];
    let on_b = [new_uid(), new_uid()];
    let mut silent = Vec::new();
    for uid in on_a {
        silent.push(ws_agent(&a, uid, &[("env", "prod")]).await.0);
    }
    for uid in on_b {
        let ws = ws_agent(&b, uid, &[("env", "prod")]).await;
        apply_everything(uid, ws);
    }
    for uid in on_a.iter().chain(&on_b) {
        wait_status(&b, uid, "connected", limit).await;
    }

    // Writes acknowledged before the kill, on a.
    let (code, v) = a
        .send_json(
            "PATCH",
            &format!("/api/v1/agents/{}/labels", uid_str(&on_a[0])),
            json!({"labels": {"rack": "r7"}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = save(&a, "kept", "processors: {batch: {}}\n", "rack=r7").await;
    assert_eq!(code, 201, "{v}");

    // A rollout of one agent per batch, started on b and driven by a (the
    // leader), waits for a's silent agents.
    let (code, v) = save(&b, "otel", "receivers: {otlp: {}}\n", "env=prod").await;
    assert_eq!(code, 201, "{v}");
    start_rollout(&b, "otel", json!({"batch_size": 1, "batch_timeout": 0})).await;
    let running = wait_rollout(&b, "otel", "a batch waiting for a's agents", |v| {
        v["state"] == "running"
            && v["waiting"].as_array().is_some_and(|w| {
                w.iter()
                    .any(|agent| on_a.iter().any(|uid| agent["instance_uid"] == uid_str(uid)))
            })
    })
    .await;
    // b shows the waiting agent held by a as connected.
    for waiting in running["waiting"].as_array().unwrap() {
        assert_eq!(waiting["status"], "connected", "{running}");
    }

    // kill -9: a's agents are listed disconnected within the lease.
    a.kill9();
    let killed = Instant::now();
    let lease = Duration::from_secs(LEASE_SECONDS);
    for uid in &on_a {
        wait_status(&b, uid, "disconnected", lease + Duration::from_secs(3)).await;
    }
    eprintln!(
        "a replica killed with kill -9: its agents listed disconnected after {} ms (lease {} ms)",
        killed.elapsed().as_millis(),
        lease.as_millis()
    );
    assert_eq!(listed(&b, "disconnected").await.len(), 2);
    drop(silent);

    // They reconnect (through the balancer, here: to b) and are connected
    // again; b takes the rollout over and it completes.
    for uid in on_a {
        let ws = ws_agent(&b, uid, &[("env", "prod")]).await;
        apply_everything(uid, ws);
    }
    for uid in &on_a {
        wait_status(&b, uid, "connected", limit).await;
    }
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let (_, v) = b.get("/api/v1/configurations/otel/rollout").await;
        if v["state"] == "completed" {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not complete on b: {last:#}\n{}",
            b.logs()
        );
        last = v;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["applied"], 4, "{done}");
    assert!(
        b.logs()
            .contains("this replica now drives rollout progress"),
        "b took the leadership over:\n{}",
        b.logs()
    );

    // Every write acknowledged before the kill is there.
    let (code, agent) = b
        .get(&format!("/api/v1/agents/{}", uid_str(&on_a[0])))
        .await;
    assert_eq!(code, 200);
    assert_eq!(agent["labels"]["rack"], "r7", "{agent}");
    let (code, kept) = b.get("/api/v1/configurations/kept").await;
    assert_eq!(code, 200, "{kept}");
}
