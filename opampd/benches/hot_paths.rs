//! Micro-benchmarks of the per-message hot paths:
//! `cargo bench -p opampd --bench hot_paths`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use opamp_proto::{frame, pb};
use opampd::opamp::session::{self, Ctx, Session, Transport};
use opampd::selector::Selector;
use opampd::targeting::{config_map_hash, Target, Targets, VersionRef};
use prost::Message;
use std::collections::BTreeMap;

fn kv(k: &str, v: &str) -> pb::KeyValue {
    pb::KeyValue {
        key: k.into(),
        value: Some(pb::AnyValue {
            value: Some(pb::any_value::Value::StringValue(v.into())),
        }),
    }
}

fn full(seq: u64) -> pb::AgentToServer {
    pb::AgentToServer {
        instance_uid: vec![3; 16],
        sequence_num: seq,
        capabilities: 0x1 | 0x2 | 0x4 | 0x800 | 0x1000,
        agent_description: Some(pb::AgentDescription {
            identifying_attributes: vec![
                kv("service.name", "collector"),
                kv("service.version", "0.110.0"),
            ],
            non_identifying_attributes: vec![
                kv("host.name", "web-17"),
                kv("os.type", "linux"),
                kv("env", "prod"),
            ],
        }),
        health: Some(pb::ComponentHealth {
            healthy: true,
            status: "ok".into(),
            ..Default::default()
        }),
        effective_config: Some(pb::EffectiveConfig {
            config_map: Some(pb::AgentConfigMap {
                config_map: [(
                    "".to_string(),
                    pb::AgentConfigFile {
                        body: vec![b'x'; 2048],
                        content_type: "text/yaml".into(),
                    },
                )]
                .into(),
            }),
        }),
        ..Default::default()
    }
}

fn heartbeat(seq: u64) -> pb::AgentToServer {
    pb::AgentToServer {
        instance_uid: vec![3; 16],
        sequence_num: seq,
        capabilities: 0x1 | 0x2 | 0x4 | 0x800 | 0x1000,
        ..Default::default()
    }
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
        held_back: Default::default(),
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
    c.bench_function("session_heartbeat", |b| {
        let mut s = Session::new([3; 16], Transport::WebSocket);
        session::handle(
            &mut s,
            &full(0),
            &Ctx {
                targets: &t,
                now_ms: 1,
                remote_addr: "127.0.0.1:1".parse().ok(),
                new_uid: None,
            },
        );
        let mut seq = 1;
        b.iter(|| {
            let out = session::handle(
                &mut s,
                &heartbeat(seq),
                &Ctx {
                    targets: &t,
                    now_ms: 2,
                    remote_addr: "127.0.0.1:1".parse().ok(),
                    new_uid: None,
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
                    now_ms: 1,
                    remote_addr: None,
                    new_uid: None,
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
        b.iter(|| black_box(sel.matches(|k| attrs.get(k).map(String::as_str))))
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
