//! Running several replicas: each replica's identity on `/health`,
//! `/health/ready`, `/metrics`, in the start-up log line and in `opampctl
//! health`; and opampd behind a real HAProxy built from
//! `deploy/haproxy/haproxy.cfg`.

mod common;

use common::{files, recv_offer, report_with};
use opamp_tests::balancer::{self, Balancer};
use opamp_tests::cli;
use opamp_tests::client::{heartbeat, http_exchange, new_uid, uid_str, ws_connect, ws_exchange};
use opamp_tests::{bin, ctl_env, free_addr, Opts, Server};
use serde_json::Value;
use std::time::Duration;

fn with_replica_id(id: &str) -> Opts {
    Opts {
        env: vec![("OPAMPD_CLUSTER_REPLICA_ID".into(), id.into())],
        ..Opts::default()
    }
}

#[tokio::test]
async fn a_replica_names_itself_on_health_metrics_logs_and_opampctl() {
    let server = Server::start_with(with_replica_id("eu-west-1.replica-2"));
    let http = server.http();

    let ready: Value = http
        .get(format!("{}/health/ready", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["replica_id"], "eu-west-1.replica-2");

    let health: Value = http
        .get(format!("{}/health", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["replica_id"], "eu-west-1.replica-2", "{health}");
    let backend = server.backend();
    assert_eq!(health["database"]["backend"], backend, "{health}");

    let scrape = http
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scrape.contains(&format!(
            "opamp_platform_replica_info{{replica=\"eu-west-1.replica-2\",backend=\"{backend}\"}} 1"
        )),
        "replica_info in:\n{scrape}"
    );
    // The pool gauges a balancer deployment watches are there for every pool.
    for gauge in ["open", "idle", "max"] {
        assert!(
            scrape.contains(&format!(
                "opamp_platform_db_connections_{gauge}{{pool=\"read\"}}"
            )),
            "db_connections_{gauge}"
        );
    }

    let listening = server
        .logs()
        .lines()
        .find(|l| l.contains("opampd listening"))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .expect("the listening line");
    let fields = if listening["fields"].is_object() {
        &listening["fields"]
    } else {
        &listening
    };
    assert_eq!(fields["replica"], "eu-west-1.replica-2", "{listening}");
    assert_eq!(fields["backend"], backend, "{listening}");

    let table = cli::ok(&server.ctl(&["health"]));
    assert!(
        table.contains("replica eu-west-1.replica-2") && table.contains(&format!("{backend}, ")),
        "{table}"
    );
    let json = cli::json(&server.ctl(&["health", "-o", "json"]));
    assert_eq!(json["health"]["replica_id"], "eu-west-1.replica-2");
}

#[tokio::test]
async fn without_a_setting_the_replica_is_named_after_the_host() {
    let server = Server::start();
    let (_, health) = server.get("/health").await;
    let id = health["replica_id"].as_str().unwrap().to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    assert!(
        id == host || (id.starts_with("opampd-") && id.len() == 15),
        "replica id {id:?}, host {host:?}"
    );
}

#[test]
fn a_bad_replica_id_is_refused_naming_the_setting() {
    let out = std::process::Command::new(bin("opampd"))
        .env_clear()
        .env("OPAMPD_CLUSTER_REPLICA_ID", "two words")
        .args(["check-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cluster.replica_id \"two words\" contains ' '"),
        "{err}"
    );
}

// ---------------------------------------------------------------- behind HAProxy

/// A real haproxy from deploy/haproxy/haproxy.cfg in front of `replicas`,
/// once it reports every one of them UP; None (with a SKIPPED line) when
/// haproxy is not installed.
fn balancer_for(replicas: &[&Server]) -> Option<Balancer> {
    let haproxy = balancer::haproxy()?;
    let addresses: Vec<_> = replicas.iter().map(|s| s.addr).collect();
    let lb = Balancer::start(&haproxy, &addresses);
    for i in 1..=replicas.len() {
        lb.wait_replica(&format!("opampd-{i}"), "UP", Duration::from_secs(15));
    }
    Some(lb)
}

#[tokio::test]
async fn agents_and_opampctl_work_through_haproxy() {
    let server = Server::start_with(with_replica_id("behind-haproxy"));
    let Some(lb) = balancer_for(&[&server]) else {
        return;
    };
    let token = server.token();
    let ctl = |args: &[&str]| {
        ctl_env(
            args,
            &[("OPAMPCTL_SERVER", &lb.url()), ("OPAMPCTL_TOKEN", &token)],
        )
    };

    // A WebSocket agent and a plain-HTTP agent, both on the agents' frontend.
    let ws_uid = new_uid();
    let mut ws = ws_connect(&lb.ws_url(), &[])
        .await
        .expect("a WebSocket upgrade through haproxy");
    let first = ws_exchange(&mut ws, &report_with(ws_uid, 0, "svc", &[("env", "prod")])).await;
    assert_eq!(first.instance_uid, ws_uid.to_vec());
    assert!(first.remote_config.is_none());
    let http_uid = new_uid();
    let (code, headers, reply) = http_exchange(
        &lb.opamp_url(),
        &report_with(http_uid, 0, "svc", &[("env", "prod")]),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert_eq!(reply.unwrap().instance_uid, http_uid.to_vec());

    // The agents' frontend serves the OpAMP path only.
    let (status, _) = get(&format!("http://{}/api/v1/agents", lb.frontend(4320))).await;
    assert_eq!(status, 404, "the agents' port does not expose the API");

    // opampctl through the operators' frontend: health names the replica,
    // both agents are listed, a configuration is saved and rolled out.
    let health = cli::ok(&ctl(&["health"]));
    assert!(health.contains("replica behind-haproxy"), "{health}");
    for uid in [&ws_uid, &http_uid] {
        common::agent(&server, uid).await;
    }
    let listed = cli::json(&ctl(&["agents", "list", "-o", "json"]));
    let uids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["instance_uid"].as_str().unwrap())
        .collect();
    for uid in [&ws_uid, &http_uid] {
        assert!(uids.contains(&uid_str(uid).as_str()), "{listed}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.yaml");
    std::fs::write(&file, "receivers: {otlp: {}}\n").unwrap();
    cli::ok(&ctl(&[
        "configs",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--selector",
        "env=prod",
    ]));
    cli::ok(&ctl(&["rollout", "start", "otel"]));

    // The WebSocket agent gets the push through the tunnel; the HTTP agent
    // at its next poll.
    let offer = recv_offer(&mut ws).await;
    assert_eq!(files(&offer)["otel"], "receivers: {otlp: {}}\n");
    let (_, _, reply) = http_exchange(&lb.opamp_url(), &heartbeat(http_uid, 1)).await;
    let offer = reply
        .unwrap()
        .remote_config
        .expect("offered at the next poll");
    assert_eq!(files(&offer)["otel"], "receivers: {otlp: {}}\n");

    // haproxy sent every one of those requests to the one replica.
    let states = lb.replicas();
    assert_eq!(states.len(), 1, "{states:?}");
    assert!(states[0].sessions_total >= 5, "{states:?}");
}

#[tokio::test]
async fn haproxy_takes_a_killed_replica_out_and_back_by_its_readiness() {
    let listen = free_addr();
    let mut server = Server::start_with(Opts {
        listen: Some(listen.clone()),
        ..Opts::default()
    });
    let Some(lb) = balancer_for(&[&server]) else {
        return;
    };
    let (status, body) = get(&format!("{}/health/ready", lb.url())).await;
    assert_eq!((status, &body["status"]), (200, &Value::from("ready")));

    server.kill9();
    lb.wait_replica("opampd-1", "DOWN", Duration::from_secs(15));
    let (status, _) = get(&format!("{}/health/ready", lb.url())).await;
    assert_eq!(status, 503, "no replica left to answer");
    assert!(
        lb.logs().contains("opampd/opampd-1 is DOWN"),
        "haproxy logs the check failure:\n{}",
        lb.logs()
    );

    // The same replica back on its address: ready, so in rotation again.
    server.start_again();
    lb.wait_replica("opampd-1", "UP", Duration::from_secs(15));
    let (status, _) = get(&format!("{}/health/ready", lb.url())).await;
    assert_eq!(status, 200);
}

/// Per request, not per connection: one keep-alive client's requests
/// alternate between two replicas (each names itself on /health/ready).
#[tokio::test]
async fn haproxy_balances_each_request_without_stickiness() {
    let first = Server::start_with(with_replica_id("r1"));
    let second = Server::start_with(with_replica_id("r2"));
    let Some(lb) = balancer_for(&[&first, &second]) else {
        return;
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let mut answered = Vec::new();
    for _ in 0..6 {
        let body: Value = client
            .get(format!("{}/health/ready", lb.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answered.push(body["replica_id"].as_str().unwrap().to_string());
    }
    assert!(
        answered.windows(2).all(|pair| pair[0] != pair[1]),
        "round robin per request: {answered:?}"
    );
    let states = lb.replicas();
    assert!(
        states
            .iter()
            .all(|r| r.status == "UP" && r.sessions_total >= 3),
        "{states:?}"
    );
}

/// `http.trusted_proxies`: behind a trusted balancer an agent's address is
/// the one X-Forwarded-For names; from anyone else the header is ignored.
#[tokio::test]
async fn a_trusted_balancer_names_the_agent_address() {
    let trusting = Server::start_with(Opts {
        env: vec![("OPAMPD_HTTP_TRUSTED_PROXIES".into(), "127.0.0.1".into())],
        ..Opts::default()
    });
    let plain = Server::start();
    let post = |server: &Server, uid: [u8; 16]| {
        let body = prost::Message::encode_to_vec(&report_with(uid, 0, "svc", &[]));
        server
            .http()
            .post(server.opamp_url())
            .header("content-type", "application/x-protobuf")
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.9")
            .body(body)
            .send()
    };
    let (trusted_uid, plain_uid) = (new_uid(), new_uid());
    assert_eq!(post(&trusting, trusted_uid).await.unwrap().status(), 200);
    assert_eq!(post(&plain, plain_uid).await.unwrap().status(), 200);
    let agent = common::agent(&trusting, &trusted_uid).await;
    assert_eq!(agent["remote_addr"], "203.0.113.9:0", "{agent}");
    let agent = common::agent(&plain, &plain_uid).await;
    let address = agent["remote_addr"].as_str().unwrap();
    assert!(
        address.starts_with("127.0.0.1:") && !address.ends_with(":0"),
        "without trusted proxies the header is ignored: {address}"
    );

    // Through haproxy (which appends the address it saw, 127.0.0.1, a
    // trusted proxy too): the client-sent address left of it is taken.
    let Some(lb) = balancer_for(&[&trusting]) else {
        return;
    };
    let ws_uid = new_uid();
    let mut ws = ws_connect(&lb.ws_url(), &[("x-forwarded-for", "192.0.2.44")])
        .await
        .unwrap();
    ws_exchange(&mut ws, &report_with(ws_uid, 0, "svc", &[])).await;
    let agent = common::agent(&trusting, &ws_uid).await;
    assert_eq!(agent["remote_addr"], "192.0.2.44:0", "{agent}");
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
