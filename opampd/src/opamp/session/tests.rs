use super::*;

fn kv(k: &str, v: &str) -> pb::KeyValue {
    pb::KeyValue {
        key: k.into(),
        value: Some(pb::AnyValue {
            value: Some(pb::any_value::Value::StringValue(v.into())),
        }),
    }
}

fn full(seq: u64, caps: u64) -> pb::AgentToServer {
    pb::AgentToServer {
        instance_uid: vec![1; 16],
        sequence_num: seq,
        capabilities: caps,
        agent_description: Some(pb::AgentDescription {
            identifying_attributes: vec![kv("service.name", "a")],
            non_identifying_attributes: vec![kv("host.name", "h")],
        }),
        health: Some(pb::ComponentHealth {
            healthy: true,
            ..Default::default()
        }),
        effective_config: Some(pb::EffectiveConfig::default()),
        ..Default::default()
    }
}

fn heartbeat(seq: u64, caps: u64) -> pb::AgentToServer {
    pb::AgentToServer {
        instance_uid: vec![1; 16],
        sequence_num: seq,
        capabilities: caps,
        ..Default::default()
    }
}

const CAPS: u64 = REPORTS_STATUS
    | REPORTS_EFFECTIVE_CONFIG
    | REPORTS_HEALTH
    | ACCEPTS_REMOTE_CONFIG
    | REPORTS_REMOTE_CONFIG;

fn check(s: &mut Session, msg: pb::AgentToServer, targets: &Targets) -> Outcome {
    handle(
        s,
        &msg,
        &Ctx {
            targets,
            connection: &ConnectionSettings::default(),
            packages: &PackageTargets::default(),
            now_ms: 1,
            remote_addr: "127.0.0.1:1".parse().ok(),
            new_uid: None,
            max_send_bytes: 64 << 20,
            components: &components::Cache::default(),
        },
    )
}

#[test]
fn first_full_report_gets_capabilities_and_no_full_state_request() {
    let t = Targets::default();
    let mut s = Session::new([1; 16], Transport::WebSocket);
    let out = check(&mut s, full(0, CAPS), &t);
    assert_eq!(out.reply.capabilities, SERVER_CAPABILITIES);
    assert_eq!(out.reply.flags, 0);
    assert_eq!(out.reply.instance_uid, vec![1; 16]);
}

#[test]
fn heartbeat_from_unknown_agent_asks_for_full_state() {
    let t = Targets::default();
    let mut s = Session::new([1; 16], Transport::Http);
    let out = check(&mut s, heartbeat(5, CAPS), &t);
    assert_eq!(
        out.reply.flags & FLAG_REPORT_FULL_STATE,
        FLAG_REPORT_FULL_STATE
    );
}

#[test]
fn heartbeats_in_sequence_do_not_ask_again() {
    let t = Targets::default();
    let mut s = Session::new([1; 16], Transport::Http);
    check(&mut s, full(0, CAPS), &t);
    assert_eq!(check(&mut s, heartbeat(1, CAPS), &t).reply.flags, 0);
    assert_eq!(
        check(&mut s, heartbeat(1, CAPS), &t).reply.flags,
        0,
        "a repeated message is not a gap"
    );
    assert_eq!(check(&mut s, heartbeat(2, CAPS), &t).reply.flags, 0);
}

#[test]
fn a_sequence_gap_with_omitted_fields_asks_for_full_state() {
    let t = Targets::default();
    let mut s = Session::new([1; 16], Transport::Http);
    check(&mut s, full(0, CAPS), &t);
    assert_eq!(
        check(&mut s, heartbeat(7, CAPS), &t).reply.flags,
        FLAG_REPORT_FULL_STATE
    );
    assert_eq!(check(&mut s, full(8, CAPS), &t).reply.flags, 0);
}

#[test]
fn omitted_description_keeps_attributes_and_a_heartbeat_writes_nothing() {
    let t = Targets::default();
    let mut s = Session::new([1; 16], Transport::Http);
    assert!(check(&mut s, full(0, CAPS), &t).patch.is_some());
    let out = check(&mut s, heartbeat(1, CAPS), &t);
    assert_eq!(s.lookup("service.name"), Some("a"));
    assert!(out.patch.is_none(), "a heartbeat is no database write");
    assert_eq!(
        (s.seq, s.last_seen),
        (Some(1), 1),
        "kept in memory for the periodic flush"
    );
}

#[test]
fn restart_goes_alone_over_http() {
    let t = Targets::default();
    let mut s = Session::new([1; 16], Transport::Http);
    check(&mut s, full(0, CAPS | ACCEPTS_RESTART_COMMAND), &t);
    s.queue_restart();
    let out = check(&mut s, heartbeat(1, CAPS | ACCEPTS_RESTART_COMMAND), &t);
    assert!(out.reply.command.is_some());
    assert!(
        out.reply.remote_config.is_none()
            && out.reply.flags == 0
            && out.reply.error_response.is_none()
    );
}

#[test]
fn an_assigned_uid_is_sent_and_the_reply_echoes_the_received_uid() {
    let t = Targets::default();
    let mut s = Session::new([2; 16], Transport::Http);
    let out = handle(
        &mut s,
        &full(0, CAPS),
        &Ctx {
            targets: &t,
            connection: &ConnectionSettings::default(),
            packages: &PackageTargets::default(),
            now_ms: 1,
            remote_addr: None,
            new_uid: Some([2; 16]),
            max_send_bytes: 64 << 20,
            components: &components::Cache::default(),
        },
    );
    assert_eq!(
        out.reply
            .agent_identification
            .clone()
            .unwrap()
            .new_instance_uid,
        vec![2; 16]
    );
    assert_eq!(out.reply.instance_uid, vec![1; 16]);
    assert_eq!(out.patch.unwrap().uid, opamp_proto::uid_string(&[2; 16]));
}

#[test]
fn config_offered_once_and_not_when_agent_has_it() {
    use crate::targeting::{Target, VersionRef};
    let t = Targets::default();
    t.replace(vec![Target {
        name: "base".into(),
        selector: crate::selector::Selector::parse("service.name=a").unwrap(),
        current: VersionRef {
            version: 1,
            content_type: "text/yaml".into(),
            body: "x: 1".into(),
        },
        previous: None,
        released: None,
        requires: Default::default(),
    }]);
    let mut s = Session::new([1; 16], Transport::WebSocket);
    let out = check(&mut s, full(0, CAPS), &t);
    let rc = out.reply.remote_config.clone().expect("offered");
    assert!(rc.config.unwrap().config_map.contains_key("base"));
    assert!(
        check(&mut s, heartbeat(1, CAPS), &t)
            .reply
            .remote_config
            .is_none(),
        "not offered twice"
    );
    let mut applied = heartbeat(2, CAPS);
    applied.remote_config_status = Some(pb::RemoteConfigStatus {
        last_remote_config_hash: rc.config_hash.clone(),
        status: pb::RemoteConfigStatuses::Applied as i32,
        error_message: String::new(),
    });
    check(&mut s, applied, &t);
    let mut gap = full(9, CAPS);
    gap.remote_config_status = None;
    assert!(
        check(&mut s, gap, &t).reply.remote_config.is_none(),
        "agent reports the same hash"
    );
}

fn target(selector: &str) -> Targets {
    use crate::targeting::{Target, VersionRef};
    let t = Targets::default();
    t.replace(vec![Target {
        name: "base".into(),
        selector: crate::selector::Selector::parse(selector).unwrap(),
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
}

#[test]
fn an_agent_with_nothing_to_report_yet_is_not_asked_again_and_again() {
    let t = Targets::default();
    let mut s = Session::new([1; 16], Transport::WebSocket);
    let mut first = full(0, CAPS);
    first.effective_config = None;
    first.health = None;
    assert_eq!(
        check(&mut s, first, &t).reply.flags,
        0,
        "a first report is full"
    );
    for seq in 1..5 {
        assert_eq!(check(&mut s, heartbeat(seq, CAPS), &t).reply.flags, 0);
    }
}

#[test]
fn full_state_is_asked_once_not_twice_in_a_row() {
    let t = Targets::default();
    let mut s = Session::new([1; 16], Transport::Http);
    assert_eq!(
        check(&mut s, heartbeat(5, CAPS), &t).reply.flags,
        FLAG_REPORT_FULL_STATE
    );
    // The agent's full state lacks what it does not have yet.
    let mut answer = full(6, CAPS);
    answer.effective_config = None;
    assert_eq!(check(&mut s, answer.clone(), &t).reply.flags, 0);
    answer.sequence_num = 9;
    assert_eq!(
        check(&mut s, answer, &t).reply.flags,
        FLAG_REPORT_FULL_STATE,
        "a new gap with an omission asks again"
    );
}

#[test]
fn a_gap_with_any_omitted_sub_message_asks_for_full_state() {
    let t = Targets::default();
    let caps = CAPS | REPORTS_AVAILABLE_COMPONENTS;
    let mut s = Session::new([1; 16], Transport::WebSocket);
    check(&mut s, full(0, caps), &t);
    let mut gap = full(4, caps);
    gap.remote_config_status = Some(Default::default());
    assert_eq!(
        check(&mut s, gap, &t).reply.flags,
        FLAG_REPORT_FULL_STATE,
        "available_components omitted"
    );
}

#[test]
fn a_retry_is_answered_as_the_original() {
    let t = target("service.name=a");
    let mut s = Session::new([1; 16], Transport::Http);
    let first = check(&mut s, full(0, CAPS), &t);
    let offer = first.reply.remote_config.clone().expect("offered");
    let retried = check(&mut s, full(0, CAPS), &t);
    assert_eq!(retried.reply.remote_config, Some(offer), "offered again");
    assert!(check(&mut s, heartbeat(1, CAPS), &t)
        .reply
        .remote_config
        .is_none());
    let mut unknown = Session::new([1; 16], Transport::Http);
    let asked = check(&mut unknown, heartbeat(3, CAPS), &t).reply.flags;
    assert_eq!(asked, FLAG_REPORT_FULL_STATE);
    assert_eq!(
        check(&mut unknown, heartbeat(3, CAPS), &t).reply.flags,
        asked,
        "same flags for the same message"
    );
}

#[test]
fn a_reported_hash_other_than_the_offer_gets_the_offer_again() {
    let t = target("service.name=a");
    let mut s = Session::new([1; 16], Transport::WebSocket);
    let offer = check(&mut s, full(0, CAPS), &t)
        .reply
        .remote_config
        .clone()
        .expect("offered");
    let mut old = heartbeat(1, CAPS);
    old.remote_config_status = Some(pb::RemoteConfigStatus {
        last_remote_config_hash: vec![7; 32],
        status: pb::RemoteConfigStatuses::Applied as i32,
        error_message: String::new(),
    });
    assert_eq!(
        check(&mut s, old, &t).reply.remote_config,
        Some(offer.clone())
    );
    let mut applying = heartbeat(2, CAPS);
    applying.remote_config_status = Some(pb::RemoteConfigStatus {
        last_remote_config_hash: offer.config_hash.clone(),
        status: pb::RemoteConfigStatuses::Applying as i32,
        error_message: String::new(),
    });
    assert!(check(&mut s, applying, &t).reply.remote_config.is_none());
}

#[test]
fn a_failure_message_is_held_by_the_session_before_any_write() {
    // Rollout progress reads the live session: the message must be there as
    // soon as the status is, not one writer flush later.
    let t = target("service.name=a");
    let mut s = Session::new([1; 16], Transport::WebSocket);
    let offer = check(&mut s, full(0, CAPS), &t)
        .reply
        .remote_config
        .clone()
        .expect("offered");
    let mut failed = heartbeat(1, CAPS);
    failed.remote_config_status = Some(pb::RemoteConfigStatus {
        last_remote_config_hash: offer.config_hash.clone(),
        status: pb::RemoteConfigStatuses::Failed as i32,
        error_message: "bad receiver".into(),
    });
    check(&mut s, failed, &t);
    assert_eq!(
        (status_name(s.reported_status()), s.reported_error()),
        ("failed", "bad receiver")
    );
    s.forget_reported_status();
    assert_eq!(s.reported_error(), "");
}

#[test]
fn an_offer_over_the_send_limit_is_not_made_and_says_why_once() {
    let t = target("service.name=a");
    let mut s = Session::new([1; 16], Transport::WebSocket);
    let connection = ConnectionSettings::default();
    let cache = components::Cache::default();
    let packages = PackageTargets::default();
    let ctx = |max_send_bytes| Ctx {
        targets: &t,
        connection: &connection,
        packages: &packages,
        now_ms: 1,
        remote_addr: None,
        new_uid: None,
        max_send_bytes,
        components: &cache,
    };
    let out = handle(&mut s, &full(0, CAPS), &ctx(100));
    assert!(out.reply.remote_config.is_none());
    let reason = out.not_offered.expect("the reason");
    assert!(
        reason.contains("over opamp.max_send_bytes (100 bytes)"),
        "{reason}"
    );
    let offered: Value = serde_json::from_str(&out.patch.unwrap().offered.unwrap()).unwrap();
    assert_eq!(offered["error"], reason.as_str(), "recorded as not sent");
    assert!(s.offered_hash.is_none(), "not recorded as offered");
    let again = handle(&mut s, &heartbeat(1, CAPS), &ctx(100));
    assert!(again.reply.remote_config.is_none() && again.not_offered.is_none());
    assert!(again.patch.is_none(), "said once");
    let retried = handle(&mut s, &heartbeat(1, CAPS), &ctx(100));
    assert!(retried.reply.remote_config.is_none());
}

#[test]
fn no_offer_without_accepts_remote_config() {
    use crate::targeting::{Target, VersionRef};
    let t = Targets::default();
    t.replace(vec![Target {
        name: "base".into(),
        selector: Default::default(),
        current: VersionRef {
            version: 1,
            content_type: "text/yaml".into(),
            body: "x: 1".into(),
        },
        previous: None,
        released: None,
        requires: Default::default(),
    }]);
    let mut s = Session::new([1; 16], Transport::WebSocket);
    let out = check(&mut s, full(0, REPORTS_STATUS), &t);
    assert!(out.reply.remote_config.is_none());
}

#[test]
fn connection_settings_wait_for_a_reply_without_a_remote_config() {
    let t = target("service.name=a");
    let mut config = crate::config::Config::default();
    config.opamp.public_url = Some("wss://opamp.example/v1/opamp".into());
    let connection = ConnectionSettings::new(&config, &[]);
    let caps = CAPS | ACCEPTS_OPAMP_CONNECTION_SETTINGS;
    let mut s = Session::new([1; 16], Transport::WebSocket);
    let cache = components::Cache::default();
    let mut send = |msg| {
        handle(
            &mut s,
            &msg,
            &Ctx {
                targets: &t,
                connection: &connection,
                packages: &PackageTargets::default(),
                now_ms: 1,
                remote_addr: None,
                new_uid: None,
                max_send_bytes: 64 << 20,
                components: &cache,
            },
        )
        .reply
    };
    let first = send(full(0, caps));
    assert!(first.remote_config.is_some() && first.connection_settings.is_none());
    assert!(send(heartbeat(1, caps)).connection_settings.is_some());
    assert!(
        send(heartbeat(2, caps)).connection_settings.is_none(),
        "once"
    );
}

mod packages {
    use super::*;
    use crate::opamp::packages::{PackageFile, PackageTarget, PackageVersion, ANY};

    const PACKAGE_CAPS: u64 = CAPS | ACCEPTS_PACKAGES | REPORTS_PACKAGE_STATUSES;

    fn package_targets() -> PackageTargets {
        let t = PackageTargets::default();
        t.replace(vec![PackageTarget {
            selector: crate::selector::Selector::parse("service.name=a").unwrap(),
            current: Arc::new(PackageVersion {
                name: "otelcol".into(),
                version: "0.120.0".into(),
                top_level: true,
                files: vec![PackageFile {
                    os: ANY.into(),
                    arch: ANY.into(),
                    url: "https://example.com/otelcol.tar.gz".into(),
                    content_hash: [5; 32],
                    signature: Vec::new(),
                }],
            }),
            released: None,
            previous: None,
        }]);
        t
    }

    fn send(s: &mut Session, msg: pb::AgentToServer, packages: &PackageTargets) -> Outcome {
        handle(
            s,
            &msg,
            &Ctx {
                targets: &Targets::default(),
                connection: &ConnectionSettings::default(),
                packages,
                now_ms: 1,
                remote_addr: None,
                new_uid: None,
                max_send_bytes: 64 << 20,
                components: &components::Cache::default(),
            },
        )
    }

    #[test]
    fn packages_are_offered_only_with_accepts_packages() {
        let t = package_targets();
        let mut without = Session::new([1; 16], Transport::WebSocket);
        assert!(send(&mut without, full(0, CAPS), &t)
            .reply
            .packages_available
            .is_none());
        let mut with = Session::new([1; 16], Transport::WebSocket);
        let offer = send(&mut with, full(0, PACKAGE_CAPS), &t)
            .reply
            .packages_available
            .clone()
            .expect("an offer");
        assert_eq!(offer.packages["otelcol"].version, "0.120.0");
        assert!(
            send(&mut with, heartbeat(1, PACKAGE_CAPS), &t)
                .reply
                .packages_available
                .is_none(),
            "offered once per connection"
        );
        // A sequence gap: the offer may not have arrived.
        assert!(send(&mut with, full(5, PACKAGE_CAPS), &t)
            .reply
            .packages_available
            .is_some());
    }

    #[test]
    fn reported_statuses_are_stored_and_what_was_taken_is_not_offered_again() {
        let t = package_targets();
        let mut s = Session::new([1; 16], Transport::WebSocket);
        let offer = send(&mut s, full(0, PACKAGE_CAPS), &t)
            .reply
            .packages_available
            .clone()
            .unwrap();
        let report = pb::AgentToServer {
            package_statuses: Some(pb::PackageStatuses {
                packages: [(
                    "otelcol".to_string(),
                    pb::PackageStatus {
                        name: "otelcol".into(),
                        server_offered_version: "0.120.0".into(),
                        server_offered_hash: offer.packages["otelcol"].hash.clone(),
                        status: pb::PackageStatusEnum::Downloading as i32,
                        ..Default::default()
                    },
                )]
                .into(),
                server_provided_all_packages_hash: offer.all_packages_hash.clone(),
                error_message: String::new(),
            }),
            ..heartbeat(1, PACKAGE_CAPS)
        };
        let out = send(&mut s, report, &t);
        let stored = out.patch.unwrap().package_statuses.unwrap();
        assert!(stored.contains("downloading"), "{stored}");
        // On a new connection (or after a restart of opampd) the taken set is not offered.
        let mut row_state = Session::new([1; 16], Transport::WebSocket);
        row_state.packages = crate::opamp::packages::AgentState::from_json(Some(&stored));
        assert!(send(&mut row_state, full(0, PACKAGE_CAPS), &t)
            .reply
            .packages_available
            .is_none());
    }
}

#[test]
fn a_session_taking_the_shared_record_continues_where_another_replica_left_it() {
    let t = target("service.name=a");
    let caps = CAPS | ACCEPTS_RESTART_COMMAND;
    // Replica A serves the first polls and offers the configuration.
    let mut a = Session::new([1; 16], Transport::Http);
    let offer = check(&mut a, full(0, caps), &t).reply.remote_config.clone();
    assert!(offer.is_some(), "offered on A");
    check(&mut a, heartbeat(1, caps), &t);
    check(&mut a, heartbeat(2, caps), &t);
    a.queue_restart();
    let record = a.record("a", 7);
    assert_eq!((record.version, record.sequence_num), (1, 2));
    assert!(record.restart_pending && !record.disconnected);

    // Replica B saw only the first report: on its own it would see a gap.
    let mut stale = Session::new([1; 16], Transport::Http);
    check(&mut stale, full(0, caps), &Targets::default());
    let mut lost = stale.clone();
    let gap = check(&mut lost, heartbeat(3, caps), &t);
    assert_eq!(
        gap.reply.flags & FLAG_REPORT_FULL_STATE,
        FLAG_REPORT_FULL_STATE
    );

    // With the record it continues: no full-state request, no second offer,
    // the restart A queued goes out.
    let mut b = stale;
    b.take_record(&record);
    assert_eq!(b.record_position(), (1, 0));
    let out = check(&mut b, heartbeat(3, caps), &t);
    assert_eq!(out.reply.flags & FLAG_REPORT_FULL_STATE, 0);
    assert!(out.reply.command.is_some(), "the restart A queued");
    let out = check(&mut b, heartbeat(4, caps), &t);
    assert_eq!(out.reply.flags & FLAG_REPORT_FULL_STATE, 0);
    assert!(out.reply.remote_config.is_none(), "offered once, on A");

    // A retry of B's last poll reaching A is answered as B answered it.
    let next = b.record("b", 9);
    a.take_record(&next);
    let retry = check(&mut a, heartbeat(4, caps), &t);
    assert_eq!(retry.reply.flags & FLAG_REPORT_FULL_STATE, 0);
}
