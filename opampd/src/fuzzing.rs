//! Entry points for the fuzz targets in `fuzz/` and for the regression test
//! that replays their corpora in the normal test run. Each takes arbitrary
//! bytes and must never panic, hang or allocate without bound.

use crate::opamp::session::{self, Ctx, Session, Transport};
use crate::selector::Selector;
use crate::targeting::{Target, Targets, VersionRef};
use opamp_proto::{frame, pb};
use prost::Message;
use std::sync::OnceLock;

fn targets() -> &'static Targets {
    static T: OnceLock<Targets> = OnceLock::new();
    T.get_or_init(|| {
        let t = Targets::default();
        t.replace(vec![Target {
            name: "fuzz".into(),
            selector: Selector::parse("service.name=a").expect("static selector"),
            current: VersionRef {
                version: 1,
                content_type: "text/yaml".into(),
                body: "x: 1".into(),
            },
            previous: None,
            released: None,
            requires: Default::default(),
        }]);
        t
    })
}

fn connection_settings() -> &'static crate::opamp::connection::ConnectionSettings {
    static SETTINGS: OnceLock<crate::opamp::connection::ConnectionSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let mut config = crate::config::Config::default();
        config.opamp.public_url = Some("wss://opamp.example/v1/opamp".into());
        config.telemetry.own_metrics.endpoint = Some("https://otlp.example/v1/metrics".into());
        crate::opamp::connection::ConnectionSettings::new(&config, &["fuzz-secret".into()])
    })
}

fn run_session(msgs: &[pb::AgentToServer]) {
    let mut s = Session::new([7; 16], Transport::WebSocket);
    for m in msgs {
        if m.instance_uid.len() != 16 {
            continue;
        }
        let out = session::handle(
            &mut s,
            m,
            &Ctx {
                targets: targets(),
                connection: connection_settings(),
                packages: &crate::opamp::packages::PackageTargets::default(),
                now_ms: 1,
                remote_addr: None,
                new_uid: None,
                max_send_bytes: 64 << 20,
                components: &crate::components::Cache::default(),
            },
        );
        // The reply always echoes the uid and carries AcceptsStatus.
        assert_eq!(out.reply.instance_uid, m.instance_uid);
        assert!(out.reply.capabilities & 1 == 1 || out.reply.command.is_some());
        if out.reply.remote_config.is_some() {
            assert!(m.capabilities & opamp_proto::caps::ACCEPTS_REMOTE_CONFIG != 0);
        }
        if let Some(offer) = &out.reply.connection_settings {
            use opamp_proto::caps::{ACCEPTS_OPAMP_CONNECTION_SETTINGS, REPORTS_OWN_METRICS};
            assert_eq!(
                offer.opamp.is_some(),
                m.capabilities & ACCEPTS_OPAMP_CONNECTION_SETTINGS != 0
            );
            assert_eq!(
                offer.own_metrics.is_some(),
                m.capabilities & REPORTS_OWN_METRICS != 0
            );
        }
    }
}

/// A WebSocket message: header, then AgentToServer, then the session rules.
pub fn ws_message(data: &[u8]) {
    if let Ok(payload) = frame::decode(data) {
        if let Ok(msg) = pb::AgentToServer::decode(payload) {
            run_session(&[msg]);
        }
    }
}

/// A stream of AgentToServer messages (length-prefixed by one byte) through one session.
pub fn agent_to_server(data: &[u8]) {
    let mut msgs = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        if let Ok(m) = pb::AgentToServer::decode(&tail[..n]) {
            msgs.push(m);
        }
        rest = &tail[n..];
    }
    run_session(&msgs);
}

/// A plain-HTTP body; the first byte says whether it is gzip.
pub fn http_body(data: &[u8]) {
    let Some((&flag, body)) = data.split_first() else {
        return;
    };
    if let Ok(msg) = crate::opamp::http::decode_body(body, flag & 1 == 1, 64 * 1024) {
        assert!(msg.encoded_len() <= 64 * 1024);
        run_session(&[msg]);
    }
}

/// The selector parser: what parses prints back to an equal selector.
pub fn selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Selector::parse(text) {
        Ok(sel) => {
            let again = Selector::parse(&sel.to_string()).expect("a printed selector parses");
            assert_eq!(sel, again);
            let _ = crate::store::sqlite::selector::condition(&sel, 1);
        }
        Err(e) => assert!(
            e.position >= 1 && e.position <= text.chars().count() + 1,
            "{e}"
        ),
    }
}

/// The config file parser.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::config::from_yaml(text, std::path::Path::new("fuzz.yaml"));
}
