//! Available components and custom capabilities, against a real opampd over
//! real sockets: the component list is asked for once per unknown hash,
//! stored and shown (API, `opampctl agents show|components`), selectors can
//! require a component, and a rollout skips agents that lack a component
//! its configuration uses (a dry run says which), unless forced.

mod common;

use common::*;
use opamp_agent::agent::{Agent, AgentSettings};
use opamp_agent::http::HttpTransport;
use opamp_agent::session::Session;
use opamp_agent::{caps, message, pb};
use opamp_tests::cli::{json, ok};
use opamp_tests::client::*;
use opamp_tests::{stderr, wait_for, Server};
use serde_json::{json, Value};
use std::time::Duration;

const ASK: u64 = caps::FLAG_REPORT_AVAILABLE_COMPONENTS;
const WITH_COMPONENTS: u64 = CAPS | caps::REPORTS_AVAILABLE_COMPONENTS;

fn collector_components() -> pb::AvailableComponents {
    message::available_components(&[
        (
            "receivers",
            "otlp",
            "go.opentelemetry.io/collector/receiver/otlpreceiver v0.118.0",
        ),
        (
            "exporters",
            "debug",
            "go.opentelemetry.io/collector/exporter/debugexporter v0.118.0",
        ),
    ])
}

fn filelog_components() -> pb::AvailableComponents {
    message::available_components(&[
        (
            "receivers",
            "filelog",
            "example.com/filelogreceiver v0.118.0",
        ),
        ("exporters", "debug", "example.com/debugexporter v0.118.0"),
    ])
}

/// A first report with a component list (whole, or only its hash).
fn report_with_components(
    uid: [u8; 16],
    seq: u64,
    attrs: &[(&str, &str)],
    components: pb::AvailableComponents,
) -> pb::AgentToServer {
    let mut m = report_with(uid, seq, "collector", attrs);
    m.capabilities = WITH_COMPONENTS;
    m.available_components = Some(components);
    m
}

async fn list_uids(s: &Server, selector: &str) -> Vec<String> {
    let (code, v) = s
        .get(&format!(
            "/api/v1/agents?selector={}",
            selector.replace('=', "%3D").replace('!', "%21")
        ))
        .await;
    assert_eq!(code, 200, "{selector}: {v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["instance_uid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_component_list_is_asked_for_once_per_unknown_hash_stored_and_shown() {
    let mut s = Server::start();
    let list = collector_components();

    // The agent library's agent sends the hash; opampd asks once; the agent
    // answers with the list (as opamp-go does), and is not asked again.
    let settings = AgentSettings::new(new_uid())
        .identifying("service.name", "collector")
        .available_components(list.clone())
        .custom_capabilities(&["io.example.pause/v1"]);
    let uid = settings.uid;
    let transport = HttpTransport::new(&s.opamp_url(), &Default::default()).unwrap();
    let mut session = Session::new(Agent::new(settings), transport);
    let first = session.start().await.unwrap();
    assert_eq!(first.flags & ASK, ASK, "unknown hash: asked for the list");
    assert_eq!(session.agent().counters().components_requests, 1);
    for _ in 0..3 {
        let r = session.heartbeat().await.unwrap();
        assert_eq!(r.flags, 0, "asked once, no loop");
    }
    let v = wait_for("list stored", Duration::from_secs(10), || async {
        let v = agent(&s, &uid).await;
        v["available_components"].is_array().then_some(v)
    })
    .await;
    assert_eq!(v["available_components_hash"], hex(&list.hash), "{v}");
    assert_eq!(v["custom_capabilities"], json!(["io.example.pause/v1"]));
    let entries = v["available_components"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{v}");
    assert_eq!(
        (
            &entries[1]["kind"],
            &entries[1]["name"],
            &entries[1]["version"]
        ),
        (&json!("receivers"), &json!("otlp"), &json!("v0.118.0")),
        "{v}"
    );

    // An agent that only ever sends a hash is asked once, not in a loop.
    let stubborn = new_uid();
    let only_hash = message::components_hash_only(&filelog_components());
    let (_, _, r) = http_exchange(
        &s.opamp_url(),
        &report_with_components(stubborn, 0, &[], only_hash.clone()),
    )
    .await;
    assert_eq!(r.unwrap().flags, ASK);
    let mut again = message::heartbeat(stubborn, 1, WITH_COMPONENTS);
    again.available_components = Some(only_hash);
    let (_, _, r) = http_exchange(&s.opamp_url(), &again).await;
    assert_eq!(r.unwrap().flags, 0, "the same hash is not asked for twice");

    // A hash opampd holds (another agent's list) is not asked for.
    let known = new_uid();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let r = ws_exchange(
        &mut ws,
        &report_with_components(known, 0, &[], message::components_hash_only(&list)),
    )
    .await;
    assert_eq!(r.flags, 0, "known hash");
    let v = wait_for(
        "list of the known hash",
        Duration::from_secs(10),
        || async {
            let v = agent(&s, &known).await;
            v["available_components"].is_array().then_some(v)
        },
    )
    .await;
    assert_eq!(v["available_components_hash"], hex(&list.hash));

    // Selectors: component=kind/type in the agent list.
    let with_otlp = list_uids(&s, "component=receivers/otlp").await;
    assert!(
        with_otlp.contains(&uid_str(&uid)) && with_otlp.contains(&uid_str(&known)),
        "{with_otlp:?}"
    );
    assert!(!with_otlp.contains(&uid_str(&stubborn)), "{with_otlp:?}");
    assert!(list_uids(&s, "component=exporters/otlp").await.is_empty());
    assert_eq!(
        list_uids(&s, "!component").await,
        vec![uid_str(&stubborn)],
        "no list held"
    );
    let (code, v) = s.get("/api/v1/agents?selector=component%3Dotlp").await;
    assert_eq!(code, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kind/type, e.g. component=receivers/otlp"),
        "{v}"
    );

    // opampctl: show, components (table and JSON), list with a selector.
    let id = uid_str(&uid);
    let shown = ok(&s.ctl(&["agents", "show", &id]));
    assert!(
        shown.contains("custom_capabilities: io.example.pause/v1"),
        "{shown}"
    );
    assert!(shown.contains("available_components: 2"), "{shown}");
    let table = ok(&s.ctl(&["agents", "components", &id]));
    assert!(
        table.contains("KIND") && table.contains("TYPE/NAME"),
        "{table}"
    );
    let otlp_line = table.lines().find(|l| l.contains("otlp")).unwrap();
    assert!(
        otlp_line.contains("receivers") && otlp_line.contains("v0.118.0"),
        "{table}"
    );
    let listed = json(&s.ctl(&["agents", "components", &id, "-o", "json"]));
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let o = s.ctl(&["agents", "components", &uid_str(&stubborn)]);
    assert_eq!(opamp_tests::cli::code(&o), 1);
    assert!(stderr(&o).contains("no component list"), "{}", stderr(&o));
    let listed = json(&s.ctl(&[
        "agents",
        "list",
        "-l",
        "component=receivers/otlp",
        "-o",
        "json",
    ]));
    assert_eq!(listed["total"], 2, "{listed}");

    // Lists survive a restart: a new agent reporting the hash is not asked.
    drop(ws);
    s.restart();
    let v = agent(&s, &uid).await;
    assert_eq!(v["available_components"].as_array().unwrap().len(), 2);
    let (_, _, r) = http_exchange(
        &s.opamp_url(),
        &report_with_components(new_uid(), 0, &[], message::components_hash_only(&list)),
    )
    .await;
    assert_eq!(r.unwrap().flags, 0, "known from the store");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const OTEL: &str = "receivers:\n  otlp:\n    protocols: {grpc: {}}\n  otlp/2:\nexporters:\n  debug:\nservice:\n  pipelines: {}\n";

fn plan_entry<'a>(plan: &'a Value, uid: &[u8; 16]) -> &'a Value {
    plan["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["instance_uid"] == uid_str(uid))
        .unwrap_or_else(|| panic!("{} not in {plan}", uid_str(uid)))
}

#[tokio::test]
async fn a_rollout_skips_agents_lacking_components_unless_forced() {
    let s = Server::start();
    let ids = uids(3);
    let (able, lacking, unknown) = (ids[0], ids[1], ids[2]);
    let prod = [("env", "prod")];
    let mut ws_able = ws_connect(&s.ws_url(), &[]).await.unwrap();
    ws_exchange(
        &mut ws_able,
        &report_with_components(able, 0, &prod, collector_components()),
    )
    .await;
    let mut ws_lacking = ws_connect(&s.ws_url(), &[]).await.unwrap();
    ws_exchange(
        &mut ws_lacking,
        &report_with_components(lacking, 0, &prod, filelog_components()),
    )
    .await;
    let (mut ws_unknown, _) = ws_agent(&s, unknown, &prod).await;
    for uid in [able, lacking] {
        wait_for("list stored", Duration::from_secs(10), || async {
            agent(&s, &uid).await["available_components"]
                .is_array()
                .then_some(())
        })
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.yaml");
    std::fs::write(&file, OTEL).unwrap();
    ok(&s.ctl(&[
        "configs",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--selector",
        "env=prod",
    ]));

    // A dry run names who lacks what and changes nothing.
    let plan = json(&s.ctl(&["rollout", "start", "otel", "--dry-run", "-o", "json"]));
    assert_eq!(
        plan["components"],
        json!(["exporters/debug", "receivers/otlp"]),
        "{plan}"
    );
    assert_eq!(
        (&plan["incompatible"], &plan["unknown"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(plan_entry(&plan, &able)["components"], "compatible");
    assert_eq!(
        plan_entry(&plan, &lacking)["missing"],
        json!(["receivers/otlp"])
    );
    assert_eq!(plan_entry(&plan, &unknown)["components"], "unknown");
    let o = s.ctl(&["rollout", "start", "otel", "--dry-run"]);
    let table = ok(&o);
    let line = table
        .lines()
        .find(|l| l.contains(&uid_str(&lacking)))
        .unwrap();
    assert!(
        line.contains("incompatible") && line.contains("receivers/otlp"),
        "{table}"
    );
    assert!(stderr(&o).contains("nothing changed"), "{}", stderr(&o));
    let (code, _) = s.get("/api/v1/configurations/otel/rollout").await;
    assert_eq!(code, 404, "a dry run starts nothing");

    // The real rollout skips the agent that lacks the otlp receiver; the one
    // that never reported its components is not skipped.
    let o = s.ctl(&["rollout", "start", "otel"]);
    ok(&o);
    assert!(stderr(&o).contains("1 agent skipped"), "{}", stderr(&o));
    for (ws, uid) in [(&mut ws_able, able), (&mut ws_unknown, unknown)] {
        let rc = recv_offer(ws).await;
        ws_exchange(
            ws,
            &applied(
                uid,
                1,
                &rc.config_hash,
                pb::RemoteConfigStatuses::Applied,
                "",
            ),
        )
        .await;
    }
    assert_quiet(&mut ws_lacking, "an incompatible agent gets no offer").await;
    let st = wait_rollout(&s, "otel", "completed", |v| v["state"] == "completed").await;
    assert_eq!(
        (&st["applied"], &st["incompatible"], &st["pending"]),
        (&json!(2), &json!(1), &json!(0)),
        "{st}"
    );
    assert_eq!(
        st["incompatible_agents"],
        json!([{"instance_uid": uid_str(&lacking), "missing": ["receivers/otlp"]}])
    );
    let table = ok(&s.ctl(&["rollout", "status", "otel"]));
    assert!(table.contains("INCOMPATIBLE"), "{table}");
    assert!(
        table.contains(&format!(
            "incompatible: {} lacks receivers/otlp",
            uid_str(&lacking)
        )),
        "{table}"
    );

    // Forced, the same version reaches it too.
    let st = json(&s.ctl(&["rollout", "start", "otel", "--force", "-o", "json"]));
    assert_eq!(
        (&st["force"], &st["incompatible"]),
        (&json!(true), &json!(0))
    );
    let rc = recv_offer(&mut ws_lacking).await;
    assert!(files(&rc)["otel"].contains("otlp/2"));
}

#[tokio::test]
async fn a_component_list_over_the_per_agent_storage_limit_is_not_kept_nor_asked_again() {
    let s = Server::start_with(opamp_tests::Opts {
        config: Some("opamp:\n  max_stored_bytes_per_agent: 4096\n".into()),
        ..Default::default()
    });
    // A list of 200 components, well past 4096 bytes encoded.
    let names: Vec<(String, String)> = (0..200)
        .map(|i| {
            (
                format!("padded{i:03}"),
                format!("example.com/padded/{i:03} v1.0.0"),
            )
        })
        .collect();
    let entries: Vec<(&str, &str, &str)> = names
        .iter()
        .map(|(t, m)| ("receivers", t.as_str(), m.as_str()))
        .collect();
    let big = message::available_components(&entries);
    let uid = new_uid();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let r = ws_exchange(&mut ws, &report_with_components(uid, 0, &[], big.clone())).await;
    assert!(r.error_response.is_none(), "answered as usual: {r:?}");
    assert_eq!(r.flags & ASK, 0, "the list came with the report: {r:?}");
    // Only the hash again: opampd holds no list for it, yet does not ask for
    // the one it refused (the agent would send it again, and again).
    let mut again = heartbeat(uid, 1);
    again.available_components = Some(pb::AvailableComponents {
        hash: big.hash.clone(),
        components: Default::default(),
    });
    let r = ws_exchange(&mut ws, &again).await;
    assert_eq!(r.flags & ASK, 0, "not asked for the refused list: {r:?}");
    let events = wait_for("a not_stored event", Duration::from_secs(10), || async {
        let (_, events) = s
            .get(&format!("/api/v1/agents/{}/events", uid_str(&uid)))
            .await;
        let reasons: Vec<String> = events["items"]
            .as_array()
            .or(events.as_array())
            .into_iter()
            .flatten()
            .filter(|e| e["event"] == "not_stored")
            .map(|e| e["details"].as_str().unwrap_or_default().to_string())
            .collect();
        (!reasons.is_empty()).then_some(reasons)
    })
    .await;
    assert!(
        events[0].starts_with("component list of ")
            && events[0].contains("opamp.max_stored_bytes_per_agent (4096)"),
        "{events:?}"
    );
    let v = agent(&s, &uid).await;
    assert!(
        v["available_components"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "no list shown: {v}"
    );
}
