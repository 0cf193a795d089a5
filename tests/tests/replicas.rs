//! Running several replicas: each replica's identity on `/health`,
//! `/health/ready`, `/metrics`, in the start-up log line and in `opampctl
//! health`; and opampd behind a real HAProxy built from
//! `deploy/haproxy/haproxy.cfg`.

use opamp_tests::cli;
use opamp_tests::{bin, Opts, Server};
use serde_json::Value;

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
    assert_eq!(health["database"]["backend"], "sqlite", "{health}");

    let scrape = http
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scrape.contains(
            "opamp_platform_replica_info{replica=\"eu-west-1.replica-2\",backend=\"sqlite\"} 1"
        ),
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
    assert_eq!(fields["backend"], "sqlite", "{listening}");

    let table = cli::ok(&server.ctl(&["health"]));
    assert!(
        table.contains("replica eu-west-1.replica-2") && table.contains("sqlite, "),
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
