//! `opampctl agents list|show|label|delete|restart` against a real opampd
//! with real (plain-HTTP) OpAMP agents.

use opamp_tests::cli::{code, fails, json, ok};
use opamp_tests::client::{full_report, heartbeat, http_exchange, new_uid, uid_str};
use opamp_tests::{stderr, Server};

async fn register(s: &Server, service: &str) -> String {
    let uid = new_uid();
    let (status, _, _) = http_exchange(&s.opamp_url(), &full_report(uid, 0, service)).await;
    assert_eq!(status, 200);
    uid_str(&uid)
}

async fn wait_total(s: &Server, n: u64) {
    opamp_tests::wait_for(
        "agents stored",
        std::time::Duration::from_secs(10),
        || async {
            let (_, v) = s.get("/api/v1/agents").await;
            (v["total"] == n).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn list_filters_pages_and_formats() {
    let s = Server::start();
    let a = register(&s, "checkout").await;
    let b = register(&s, "billing").await;
    let c = register(&s, "search").await;
    wait_total(&s, 3).await;

    let table = ok(&s.ctl(&["agents", "list"]));
    assert!(
        table.lines().next().unwrap().contains("INSTANCE UID"),
        "{table}"
    );
    for uid in [&a, &b, &c] {
        assert!(table.contains(uid.as_str()), "{table}");
    }
    assert!(
        table.contains("checkout") && table.contains("connected"),
        "{table}"
    );
    let wide = ok(&s.ctl(&["agents", "list", "-o", "wide"]));
    assert!(
        wide.contains("test-host") && wide.contains("1.0.0"),
        "{wide}"
    );

    let j = json(&s.ctl(&["agents", "list", "-o", "json"]));
    assert_eq!(j["total"], 3);
    assert_eq!(j["items"].as_array().unwrap().len(), 3);
    assert_eq!(j["items"][0]["status"], "connected");

    let j = json(&s.ctl(&["agents", "list", "-l", "service.name=billing", "-o", "json"]));
    assert_eq!(j["items"].as_array().unwrap().len(), 1);
    assert_eq!(j["items"][0]["instance_uid"], b.as_str());
    let j = json(&s.ctl(&[
        "agents",
        "list",
        "-l",
        "service.name!=billing",
        "-o",
        "json",
    ]));
    assert_eq!(j["items"].as_array().unwrap().len(), 2);

    let j = json(&s.ctl(&["agents", "list", "--status", "disconnected", "-o", "json"]));
    assert_eq!(j["items"].as_array().unwrap().len(), 0);

    // One page, then every page.
    let o = s.ctl(&["agents", "list", "--limit", "1"]);
    assert_eq!(ok(&o).lines().count(), 2, "header + one agent");
    assert!(stderr(&o).contains("showing 1 of 3"), "{}", stderr(&o));
    let j = json(&s.ctl(&["agents", "list", "--limit", "1", "-o", "json"]));
    assert!(j["next_cursor"].is_string());
    let j = json(&s.ctl(&["agents", "list", "--limit", "1", "--all", "-o", "json"]));
    assert_eq!(j["items"].as_array().unwrap().len(), 3);
    let y = ok(&s.ctl(&["agents", "list", "-o", "yaml"]));
    let y: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
    assert_eq!(y["total"].as_u64(), Some(3));

    // A bad selector is the server's 400, with its explanation: a usage error.
    let o = s.ctl(&["agents", "list", "-l", "env="]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("bad selector"), "{}", stderr(&o));
}

#[tokio::test]
async fn show_label_restart_delete() {
    let s = Server::start();
    let uid = register(&s, "checkout").await;
    wait_total(&s, 1).await;

    let text = ok(&s.ctl(&["agents", "show", &uid]));
    assert!(
        text.contains(&uid) && text.contains("service.name: checkout"),
        "{text}"
    );
    let j = json(&s.ctl(&["agents", "show", &uid, "-o", "json"]));
    assert_eq!(j["instance_uid"], uid.as_str());
    assert_eq!(j["identifying_attributes"]["service.name"], "checkout");

    let o = s.ctl(&["agents", "label", &uid, "env=prod", "team=obs"]);
    ok(&o);
    assert!(stderr(&o).contains("env=prod,team=obs"), "{}", stderr(&o));
    let j = json(&s.ctl(&["agents", "label", &uid, "team-", "-o", "json"]));
    assert_eq!(j["labels"], serde_json::json!({"env": "prod"}));
    let j = json(&s.ctl(&["agents", "list", "-l", "env=prod", "-o", "json"]));
    assert_eq!(j["total"], 1);

    // Plain-HTTP agent: the restart goes out with the reply to its next poll.
    let o = s.ctl(&["agents", "restart", &uid]);
    ok(&o);
    assert!(stderr(&o).contains("queued"), "{}", stderr(&o));
    let raw = opamp_proto::parse_uid(&uid).unwrap();
    let (_, _, reply) = http_exchange(&s.opamp_url(), &heartbeat(raw, 1)).await;
    assert!(
        reply.unwrap().command.is_some(),
        "restart command delivered"
    );

    // A connected agent is only deleted with --force.
    fails(&s.ctl(&["agents", "delete", &uid]), "force");
    let o = s.ctl(&["agents", "delete", &uid, "--force"]);
    ok(&o);
    assert!(stderr(&o).contains("deleted"));
    fails(&s.ctl(&["agents", "show", &uid]), "no agent");
    let o = s.ctl(&["agents", "show", "not-a-uid"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("not an instance uid"), "{}", stderr(&o));
    fails(&s.ctl(&["agents", "restart", &uid]), "no agent");
    fails(&s.ctl(&["agents", "label", &uid, "a=b"]), "404");
}
