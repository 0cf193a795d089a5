use super::*;

const UID: [u8; 16] = [7; 16];

fn agent() -> Agent {
    Agent::new(
        AgentSettings::new(UID)
            .identifying("service.name", "collector")
            .non_identifying("host.name", "web-1")
            .effective_config(message::effective_yaml("receivers: {}")),
    )
}

#[test]
fn components_go_as_a_hash_until_the_server_asks_for_the_list() {
    let list = message::available_components(&[("receivers", "otlp", "otlpreceiver v1")]);
    let mut a = Agent::new(
        AgentSettings::new(UID)
            .available_components(list.clone())
            .custom_capabilities(&["io.example.pause/v1"]),
    );
    let first = a.full_report();
    let sent = first.available_components.unwrap();
    assert!(sent.components.is_empty() && sent.hash == list.hash);
    assert_eq!(
        first.custom_capabilities.unwrap().capabilities,
        vec!["io.example.pause/v1"]
    );
    let reaction = a.handle(&pb::ServerToAgent {
        flags: caps::FLAG_REPORT_AVAILABLE_COMPONENTS,
        ..reply()
    });
    assert_eq!(reaction.events, vec![Event::ComponentsRequested]);
    assert_eq!(
        reaction.messages[0].available_components.as_ref(),
        Some(&list)
    );
    assert_eq!(a.counters().components_requests, 1);
    assert!(a.handle(&reply()).messages.is_empty());
}

fn reply() -> pb::ServerToAgent {
    pb::ServerToAgent {
        instance_uid: UID.to_vec(),
        capabilities: caps::SERVER_ACCEPTS_STATUS,
        ..Default::default()
    }
}

fn offer(hash: u8) -> pb::ServerToAgent {
    pb::ServerToAgent {
        remote_config: Some(pb::AgentRemoteConfig {
            config: Some(message::config_map([(
                "base",
                b"exporters: {}".as_slice(),
                message::YAML,
            )])),
            config_hash: vec![hash; 32],
        }),
        ..reply()
    }
}

fn status(m: &pb::AgentToServer) -> (i32, Vec<u8>, String) {
    let s = m
        .remote_config_status
        .as_ref()
        .expect("a remote-config status");
    (
        s.status,
        s.last_remote_config_hash.clone(),
        s.error_message.clone(),
    )
}

const APPLIED: i32 = pb::RemoteConfigStatuses::Applied as i32;
const APPLYING: i32 = pb::RemoteConfigStatuses::Applying as i32;
const FAILED: i32 = pb::RemoteConfigStatuses::Failed as i32;

#[test]
fn the_first_report_is_full_then_heartbeats_are_minimal() {
    let mut a = agent();
    let first = a.full_report();
    assert_eq!(first.sequence_num, 0);
    assert_eq!(first.instance_uid, UID.to_vec());
    assert_eq!(
        message::attribute(
            &first.agent_description.unwrap().identifying_attributes,
            "service.name"
        ),
        Some("collector")
    );
    assert!(first.health.unwrap().healthy);
    assert!(first.effective_config.is_some());
    assert!(first.remote_config_status.is_none(), "no offer yet");
    let next = a.heartbeat();
    assert_eq!(
        next,
        message::heartbeat(UID, 1, message::TYPICAL_CAPABILITIES)
    );
    assert_eq!(a.next_sequence_num(), 2);
}

#[test]
fn full_reports_leave_out_what_the_capabilities_do_not_cover() {
    let mut a = Agent::new(
        AgentSettings::new(UID)
            .capabilities(caps::REPORTS_STATUS)
            .effective_config(message::effective_yaml("x: 1")),
    );
    let m = a.full_report();
    assert!(m.agent_description.is_some());
    assert!(m.health.is_none() && m.effective_config.is_none());
}

#[test]
fn report_full_state_is_answered_with_a_full_report() {
    let mut a = agent();
    a.full_report();
    let reaction = a.handle(&pb::ServerToAgent {
        flags: caps::FLAG_REPORT_FULL_STATE,
        ..reply()
    });
    assert_eq!(reaction.events, [Event::FullStateRequested]);
    let [m] = reaction.messages.as_slice() else {
        panic!("one message: {reaction:?}")
    };
    assert_eq!(m.sequence_num, 1);
    assert!(m.agent_description.is_some() && m.effective_config.is_some());
    assert!(!a.full_state_due());
    assert_eq!(a.counters().full_state_requests, 1);
}

#[test]
fn a_plain_reply_needs_no_answer() {
    let mut a = agent();
    a.full_report();
    assert_eq!(a.handle(&reply()), Reaction::default());
    assert_eq!(a.next_sequence_num(), 1);
}

#[test]
fn an_offer_is_applied_and_reported_with_its_hash() {
    let mut a = agent();
    a.full_report();
    let reaction = a.handle(&offer(1));
    assert_eq!(
        reaction.events,
        [Event::ConfigApplied { hash: vec![1; 32] }]
    );
    let [m] = reaction.messages.as_slice() else {
        panic!("one message: {reaction:?}")
    };
    assert_eq!(status(m), (APPLIED, vec![1; 32], String::new()));
    let effective = m
        .effective_config
        .as_ref()
        .unwrap()
        .config_map
        .as_ref()
        .unwrap();
    assert_eq!(effective.config_map["base"].body, b"exporters: {}");
    assert_eq!(a.effective_config(), m.effective_config.as_ref());
    // The same offer again is not answered.
    let again = a.handle(&offer(1));
    assert!(again.messages.is_empty());
    assert_eq!(
        again.events,
        [Event::OfferIgnored {
            hash: vec![1; 32],
            reason: "this hash is already applied"
        }]
    );
}

#[test]
fn applying_comes_first_when_asked() {
    let mut a = Agent::new(AgentSettings::new(UID).report_applying(true));
    a.full_report();
    let reaction = a.handle(&offer(2));
    let statuses: Vec<_> = reaction
        .messages
        .iter()
        .map(|m| (m.sequence_num, status(m).0))
        .collect();
    assert_eq!(statuses, [(1, APPLYING), (2, APPLIED)]);
}

#[test]
fn a_failing_agent_reports_failed_and_keeps_its_config() {
    let mut a = agent().clone();
    a.set_offer_policy(OfferPolicy::Fail("bad exporter".into()));
    a.full_report();
    let before = a.effective_config().cloned();
    let reaction = a.handle(&offer(3));
    assert_eq!(
        status(&reaction.messages[0]),
        (FAILED, vec![3; 32], "bad exporter".into())
    );
    assert_eq!(a.effective_config().cloned(), before);
    assert_eq!(a.counters().offers_failed, 1);
    // A failed hash may be offered again and applied.
    a.set_offer_policy(OfferPolicy::Apply);
    assert_eq!(status(&a.handle(&offer(3)).messages[0]).0, APPLIED);
}

#[test]
fn offers_are_ignored_without_the_capability_or_by_policy() {
    let mut a = Agent::new(AgentSettings::new(UID).capabilities(caps::REPORTS_STATUS));
    let reaction = a.handle(&offer(4));
    assert!(reaction.messages.is_empty());
    assert!(matches!(reaction.events[0], Event::OfferIgnored { .. }));
    let mut a = Agent::new(AgentSettings::new(UID).offers(OfferPolicy::Ignore));
    assert!(a.handle(&offer(4)).messages.is_empty());
    assert_eq!(a.next_sequence_num(), 0);
}

#[test]
fn an_offer_with_a_full_state_request_is_one_full_report() {
    let mut a = agent();
    a.full_report();
    let reaction = a.handle(&pb::ServerToAgent {
        flags: caps::FLAG_REPORT_FULL_STATE,
        ..offer(5)
    });
    let [m] = reaction.messages.as_slice() else {
        panic!("one message: {reaction:?}")
    };
    assert!(m.agent_description.is_some());
    assert_eq!(status(m).0, APPLIED);
}

#[test]
fn a_new_uid_is_taken_and_ends_the_request() {
    let mut a = Agent::new(AgentSettings::new(UID).request_uid(true));
    assert_eq!(a.full_report().flags, caps::FLAG_REQUEST_INSTANCE_UID);
    let reaction = a.handle(&pb::ServerToAgent {
        agent_identification: Some(pb::AgentIdentification {
            new_instance_uid: vec![8; 16],
        }),
        ..reply()
    });
    assert_eq!(
        reaction.events,
        [Event::NewInstanceUid {
            old: UID,
            new: [8; 16]
        }]
    );
    let next = a.heartbeat();
    assert_eq!((next.instance_uid, next.flags), (vec![8; 16], 0));
    // A malformed uid is refused.
    let reaction = a.handle(&pb::ServerToAgent {
        instance_uid: vec![8; 16],
        agent_identification: Some(pb::AgentIdentification {
            new_instance_uid: vec![1, 2],
        }),
        ..Default::default()
    });
    assert_eq!(reaction.events, [Event::InvalidInstanceUid { len: 2 }]);
    assert_eq!(a.uid(), [8; 16]);
}

#[test]
fn a_restart_starts_counting_again_with_a_full_report() {
    let mut a = agent();
    a.full_report();
    a.heartbeat();
    let reaction = a.handle(&pb::ServerToAgent {
        command: Some(pb::ServerToAgentCommand {
            r#type: pb::CommandType::Restart as i32,
        }),
        ..reply()
    });
    assert_eq!(reaction.events, [Event::Restarted]);
    assert_eq!(reaction.messages[0].sequence_num, 0);
    assert!(reaction.messages[0].agent_description.is_some());
    let mut a = Agent::new(AgentSettings::new(UID).capabilities(caps::REPORTS_STATUS));
    let reaction = a.handle(&pb::ServerToAgent {
        command: Some(pb::ServerToAgentCommand::default()),
        ..reply()
    });
    assert_eq!(reaction.events, [Event::RestartIgnored]);
    assert!(reaction.messages.is_empty());
}

#[test]
fn server_errors_and_other_uids_are_events_only() {
    let mut a = agent();
    let reaction = a.handle(&pb::ServerToAgent {
        error_response: Some(pb::ServerErrorResponse {
            r#type: pb::ServerErrorResponseType::Unavailable as i32,
            error_message: "busy".into(),
            details: Some(pb::server_error_response::Details::RetryInfo(
                pb::RetryInfo {
                    retry_after_nanoseconds: 2_000_000_000,
                },
            )),
        }),
        flags: caps::FLAG_REPORT_FULL_STATE,
        ..reply()
    });
    assert_eq!(
        reaction.events,
        [Event::ServerError {
            kind: pb::ServerErrorResponseType::Unavailable as i32,
            message: "busy".into(),
            retry_after: Some(Duration::from_secs(2)),
        }]
    );
    assert!(reaction.messages.is_empty());
    let reaction = a.handle(&pb::ServerToAgent {
        instance_uid: vec![1; 16],
        ..offer(1)
    });
    assert_eq!(
        reaction.events,
        [Event::OtherInstanceUid { uid: vec![1; 16] }]
    );
    assert!(a.remote_config_status().is_none());
}

#[test]
fn health_and_description_changes_are_reported_alone() {
    let mut a = agent();
    a.full_report();
    let m = a.set_health(message::health(
        false,
        "StatusRecoverableError",
        "disk full",
    ));
    assert_eq!(m.health.as_ref().map(|h| h.healthy), Some(false));
    assert!(m.agent_description.is_none());
    let m = a.set_description(message::description(&[("service.name", "other")], &[]));
    assert!(m.agent_description.is_some() && m.health.is_none());
    assert_eq!(m.sequence_num, 2);
}

#[test]
fn agents_can_share_a_large_configuration() {
    let config = Arc::new(message::effective_yaml(&"x: 1\n".repeat(1000)));
    let description = Arc::new(message::description(&[("service.name", "bench")], &[]));
    let a = Agent::with_shared(
        AgentSettings::new(UID),
        description.clone(),
        Some(config.clone()),
    );
    let b = Agent::with_shared(
        AgentSettings::new([8; 16]),
        description,
        Some(config.clone()),
    );
    assert!(std::ptr::eq(
        a.effective_config().unwrap(),
        b.effective_config().unwrap()
    ));
    assert_eq!(Arc::strong_count(&config), 3);
}

fn connection_offer(hash: u8) -> pb::ServerToAgent {
    pb::ServerToAgent {
        connection_settings: Some(pb::ConnectionSettingsOffers {
            hash: vec![hash; 32],
            opamp: Some(pb::OpAmpConnectionSettings {
                destination_endpoint: "wss://server/v1/opamp".into(),
                heartbeat_interval_seconds: 30,
                ..Default::default()
            }),
            own_metrics: Some(pb::TelemetryConnectionSettings {
                destination_endpoint: "https://otlp/v1/metrics".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..reply()
    }
}

#[test]
fn connection_settings_are_taken_with_their_capabilities_and_reported() {
    let caps = caps::REPORTS_STATUS
        | caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS
        | caps::REPORTS_CONNECTION_SETTINGS_STATUS;
    let mut a = Agent::new(AgentSettings::new(UID).capabilities(caps));
    a.full_report();
    let reaction = a.handle(&connection_offer(1));
    assert_eq!(
        reaction.events,
        [Event::ConnectionSettingsApplied { hash: vec![1; 32] }]
    );
    let [m] = reaction.messages.as_slice() else {
        panic!("one message: {reaction:?}")
    };
    let status = m.connection_settings_status.as_ref().unwrap();
    assert_eq!(
        (status.status, status.last_connection_settings_hash.clone()),
        (pb::ConnectionSettingsStatuses::Applied as i32, vec![1; 32])
    );
    assert!(m.remote_config_status.is_none() && m.effective_config.is_none());
    let taken = a.connection_settings();
    assert_eq!(
        taken.opamp.as_ref().unwrap().destination_endpoint,
        "wss://server/v1/opamp"
    );
    assert!(taken.own_metrics.is_none(), "no ReportsOwnMetrics");
    assert!(a.full_report().connection_settings_status.is_some());
    let again = a.handle(&connection_offer(1));
    assert!(again.messages.is_empty());
    assert_eq!(a.counters().connection_offers, 1);
    // Without the status capability the settings are taken silently.
    let mut quiet = Agent::new(
        AgentSettings::new(UID).capabilities(caps::REPORTS_STATUS | caps::REPORTS_OWN_METRICS),
    );
    assert!(quiet.handle(&connection_offer(2)).messages.is_empty());
    assert!(quiet.connection_settings().own_metrics.is_some());
    assert!(quiet.full_report().connection_settings_status.is_none());
    // A refusing agent reports FAILED and keeps what it had.
    let mut refusing = Agent::new(
        AgentSettings::new(UID)
            .capabilities(caps)
            .connection_offers(OfferPolicy::Fail("cannot reach".into())),
    );
    let reaction = refusing.handle(&connection_offer(3));
    let status = reaction.messages[0]
        .connection_settings_status
        .clone()
        .unwrap();
    assert_eq!(
        (status.status, status.error_message.as_str()),
        (
            pb::ConnectionSettingsStatuses::Failed as i32,
            "cannot reach"
        )
    );
    assert!(refusing.connection_settings().opamp.is_none());
}

mod packages {
    use super::*;
    use sha2::{Digest, Sha256};

    const FILE: &[u8] = b"collector release 0.120.0";

    fn packaged(policy: OfferPolicy) -> Agent {
        Agent::new(
            AgentSettings::new(UID)
                .accepts_packages()
                .package("otelcol", "0.119.0", &[1; 32], true)
                .package("old-addon", "1.0.0", &[2; 32], false)
                .package_policy(policy),
        )
    }

    fn available(version: &str, hash: u8, content: &[u8]) -> pb::PackageAvailable {
        pb::PackageAvailable {
            r#type: pb::PackageType::TopLevel as i32,
            version: version.into(),
            file: Some(pb::DownloadableFile {
                download_url: "https://downloads.example.com/otelcol.tar.gz".into(),
                content_hash: Sha256::digest(content).to_vec(),
                signature: b"bundle".to_vec(),
                headers: Some(pb::Headers {
                    headers: vec![pb::Header {
                        key: "X-Token".into(),
                        value: "t".into(),
                    }],
                }),
            }),
            hash: vec![hash; 32],
        }
    }

    fn packages_offer(all: u8, packages: &[(&str, pb::PackageAvailable)]) -> pb::ServerToAgent {
        pb::ServerToAgent {
            packages_available: Some(pb::PackagesAvailable {
                packages: packages
                    .iter()
                    .map(|(name, p)| (name.to_string(), p.clone()))
                    .collect(),
                all_packages_hash: vec![all; 32],
            }),
            ..reply()
        }
    }

    fn statuses(m: &pb::AgentToServer) -> &pb::PackageStatuses {
        m.package_statuses.as_ref().expect("package statuses")
    }

    const INSTALLED: i32 = pb::PackageStatusEnum::Installed as i32;
    const PENDING: i32 = pb::PackageStatusEnum::InstallPending as i32;
    const FAILED: i32 = pb::PackageStatusEnum::InstallFailed as i32;
    const DOWNLOADING: i32 = pb::PackageStatusEnum::Downloading as i32;

    #[test]
    fn a_new_version_is_downloaded_checked_installed_and_reported() {
        let mut a = packaged(OfferPolicy::Apply);
        let first = a.full_report();
        assert_eq!(
            statuses(&first).packages["otelcol"].agent_has_version,
            "0.119.0"
        );
        let reaction = a.handle(&packages_offer(
            9,
            &[("otelcol", available("0.120.0", 3, FILE))],
        ));
        assert_eq!(reaction.downloads.len(), 1);
        let download = &reaction.downloads[0];
        assert_eq!(download.headers, vec![("X-Token".into(), "t".into())]);
        assert_eq!(download.signature, b"bundle");
        let report = statuses(&reaction.messages[0]);
        assert_eq!(report.server_provided_all_packages_hash, vec![9; 32]);
        let pending = &report.packages["otelcol"];
        assert_eq!(pending.status, PENDING);
        assert_eq!(pending.server_offered_version, "0.120.0");
        assert_eq!(pending.agent_has_version, "0.119.0");
        assert!(
            reaction.events.contains(&Event::PackageRemoved {
                name: "old-addon".into()
            }),
            "an addon no longer offered goes: {:?}",
            reaction.events
        );
        assert!(!report.packages.contains_key("old-addon"));

        let progress = a.download_progress("otelcol", 10, 40, 5.0).unwrap();
        let status = &statuses(&progress).packages["otelcol"];
        assert_eq!(status.status, DOWNLOADING);
        assert_eq!(status.download_details.unwrap().download_percent, 25.0);

        let done = a.download_finished(download, Ok(FILE.to_vec()));
        let status = &statuses(&done.messages[0]).packages["otelcol"];
        assert_eq!(status.status, INSTALLED);
        assert_eq!(status.agent_has_version, "0.120.0");
        assert_eq!(status.agent_has_hash, vec![3; 32]);
        assert!(status.download_details.is_none());
        assert_eq!(a.packages()["otelcol"].version, "0.120.0");
        assert_eq!(a.counters().packages_installed, 1);

        // The same offer again: already taken, nothing to do.
        let again = a.handle(&packages_offer(
            9,
            &[("otelcol", available("0.120.0", 3, FILE))],
        ));
        assert!(again.messages.is_empty() && again.downloads.is_empty());
        // A new all-hash with the installed package: installed, nothing fetched.
        let same = a.handle(&packages_offer(
            8,
            &[("otelcol", available("0.120.0", 3, FILE))],
        ));
        assert!(same.downloads.is_empty());
        assert_eq!(
            statuses(&same.messages[0]).packages["otelcol"].status,
            INSTALLED
        );
    }

    #[test]
    fn a_file_that_does_not_match_its_hash_is_refused() {
        let mut a = packaged(OfferPolicy::Apply);
        let reaction = a.handle(&packages_offer(
            9,
            &[("otelcol", available("0.120.0", 3, FILE))],
        ));
        let done = a.download_finished(&reaction.downloads[0], Ok(b"tampered".to_vec()));
        let status = &statuses(&done.messages[0]).packages["otelcol"];
        assert_eq!(status.status, FAILED);
        assert!(
            status.error_message.contains("SHA-256"),
            "{}",
            status.error_message
        );
        assert_eq!(status.agent_has_version, "0.119.0");
        assert_eq!(a.counters().packages_failed, 1);
    }

    #[test]
    fn the_simulated_install_fails_on_demand_and_download_errors_are_reported() {
        let mut a = packaged(OfferPolicy::Fail("disk full".into()));
        let reaction = a.handle(&packages_offer(
            9,
            &[("otelcol", available("0.120.0", 3, FILE))],
        ));
        let done = a.download_finished(&reaction.downloads[0], Ok(FILE.to_vec()));
        let status = &statuses(&done.messages[0]).packages["otelcol"];
        assert_eq!(
            (status.status, status.error_message.as_str()),
            (FAILED, "disk full")
        );

        let mut b = packaged(OfferPolicy::Apply);
        let reaction = b.handle(&packages_offer(
            9,
            &[("otelcol", available("0.120.0", 3, FILE))],
        ));
        let done = b.download_finished(&reaction.downloads[0], Err("HTTP 404".into()));
        assert_eq!(
            statuses(&done.messages[0]).packages["otelcol"].error_message,
            "HTTP 404"
        );
    }

    #[test]
    fn without_accepts_packages_offers_are_ignored() {
        let mut a = agent();
        let reaction = a.handle(&packages_offer(
            9,
            &[("otelcol", available("0.120.0", 3, FILE))],
        ));
        assert!(reaction.messages.is_empty() && reaction.downloads.is_empty());
        assert!(matches!(reaction.events[0], Event::PackagesIgnored { .. }));
        assert!(a.full_report().package_statuses.is_none());
    }

    #[test]
    fn a_download_for_a_replaced_offer_is_dropped() {
        let mut a = packaged(OfferPolicy::Apply);
        let old = a.handle(&packages_offer(
            9,
            &[("otelcol", available("0.120.0", 3, FILE))],
        ));
        a.handle(&packages_offer(
            7,
            &[("otelcol", available("0.121.0", 4, b"newer"))],
        ));
        let done = a.download_finished(&old.downloads[0], Ok(FILE.to_vec()));
        assert!(done.messages.is_empty());
        assert_eq!(
            done.events,
            vec![Event::PackageDropped {
                name: "otelcol".into()
            }]
        );
        assert_eq!(a.packages()["otelcol"].version, "0.119.0");
    }
}
