//! Micro-benchmarks of the per-message hot paths:
//! `cargo bench -p opampd --bench hot_paths`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use opamp_agent::message::{self, FullState};
use opamp_proto::caps::{
    ACCEPTS_REMOTE_CONFIG, REPORTS_EFFECTIVE_CONFIG, REPORTS_HEALTH, REPORTS_REMOTE_CONFIG,
    REPORTS_STATUS,
};
use opamp_proto::{frame, pb};
use opampd::opamp::session::{self, Ctx, Session, Transport};
use opampd::selector::Selector;
use opampd::targeting::{config_map_hash, Target, Targets, VersionRef};
use prost::Message;
use std::collections::BTreeMap;

const UID: [u8; 16] = [3; 16];
const CAPABILITIES: u64 = REPORTS_STATUS
    | ACCEPTS_REMOTE_CONFIG
    | REPORTS_EFFECTIVE_CONFIG
    | REPORTS_HEALTH
    | REPORTS_REMOTE_CONFIG;

/// A collector's first report: five attributes, health, a 2 KiB effective config.
fn full(seq: u64) -> pb::AgentToServer {
    message::full_report(
        UID,
        seq,
        CAPABILITIES,
        FullState {
            description: Some(message::description(
                &[
                    ("service.name", "collector"),
                    ("service.version", "0.110.0"),
                ],
                &[
                    ("host.name", "web-17"),
                    ("os.type", "linux"),
                    ("env", "prod"),
                ],
            )),
            health: Some(message::health(true, "ok", "")),
            effective_config: Some(message::effective_config(message::config_map([(
                "",
                vec![b'x'; 2048].as_slice(),
                message::YAML,
            )]))),
            remote_config_status: None,
        },
    )
}

fn heartbeat(seq: u64) -> pb::AgentToServer {
    message::heartbeat(UID, seq, CAPABILITIES)
}

fn targets() -> Targets {
    let t = Targets::default();
    t.replace(vec![Target {
        name: "base".into(),
        selector: Selector::parse("env=prod,service.name=collector").unwrap(),
        current: VersionRef {
            version: 3,
            content_type: "text/yaml".into(),
            body: "x".repeat(2048).into(),
        },
        previous: None,
        released: None,
        requires: Default::default(),
    }]);
    t
}

fn benches(c: &mut Criterion) {
    let hb = frame::encode_message(&heartbeat(1));
    c.bench_function("frame_decode_heartbeat", |b| {
        b.iter(|| {
            let payload = frame::decode(black_box(&hb)).unwrap();
            black_box(pb::AgentToServer::decode(payload).unwrap())
        })
    });
    let full_bytes = frame::encode_message(&full(0));
    c.bench_function("frame_decode_full_report", |b| {
        b.iter(|| {
            let payload = frame::decode(black_box(&full_bytes)).unwrap();
            black_box(pb::AgentToServer::decode(payload).unwrap())
        })
    });
    let t = targets();
    let connection = opampd::opamp::connection::ConnectionSettings::default();
    let components = opampd::components::Cache::default();
    let packages = opampd::opamp::packages::PackageTargets::default();
    c.bench_function("session_heartbeat", |b| {
        let mut s = Session::new([3; 16], Transport::WebSocket);
        session::handle(
            &mut s,
            &full(0),
            &Ctx {
                targets: &t,
                connection: &connection,
                packages: &packages,
                now_ms: 1,
                remote_addr: "127.0.0.1:1".parse().ok(),
                new_uid: None,
                max_send_bytes: 64 << 20,
                components: &components,
            },
        );
        let mut seq = 1;
        b.iter(|| {
            let out = session::handle(
                &mut s,
                &heartbeat(seq),
                &Ctx {
                    targets: &t,
                    connection: &connection,
                    packages: &packages,
                    now_ms: 2,
                    remote_addr: "127.0.0.1:1".parse().ok(),
                    new_uid: None,
                    max_send_bytes: 64 << 20,
                    components: &components,
                },
            );
            seq += 1;
            black_box(out.reply.encode_to_vec())
        })
    });
    c.bench_function("session_full_report", |b| {
        let msg = full(0);
        b.iter(|| {
            let mut s = Session::new([3; 16], Transport::WebSocket);
            black_box(session::handle(
                &mut s,
                &msg,
                &Ctx {
                    targets: &t,
                    connection: &connection,
                    packages: &packages,
                    now_ms: 1,
                    remote_addr: None,
                    new_uid: None,
                    max_send_bytes: 64 << 20,
                    components: &components,
                },
            ))
        })
    });
    let sel = Selector::parse("env=prod,service.name=collector,team!=b,!legacy").unwrap();
    let attrs: BTreeMap<String, String> = [
        ("env", "prod"),
        ("service.name", "collector"),
        ("host.name", "web-17"),
        ("os.type", "linux"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    c.bench_function("selector_match", |b| {
        b.iter(|| black_box(sel.matches(&attrs)))
    });
    c.bench_function("selector_parse", |b| {
        b.iter(|| {
            black_box(Selector::parse("env=prod,service.name=collector,team!=b,!legacy").unwrap())
        })
    });
    let body = "receivers:\n  otlp: {}\n".repeat(90);
    c.bench_function("config_hash_2k", |b| {
        b.iter(|| {
            black_box(config_map_hash(std::iter::once((
                "base",
                "text/yaml",
                black_box(body.as_bytes()),
            ))))
        })
    });
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
