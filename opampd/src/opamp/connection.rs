//! Connection settings offered to agents: where they reach opampd
//! (`opamp.public_url`, the heartbeat interval, the agent secret) and where
//! they send their own metrics, logs and traces (`telemetry.*`).
//!
//! Rules:
//!
//! - each part goes only to agents with its capability: the OpAMP settings
//!   to AcceptsOpAMPConnectionSettings, own metrics / logs / traces to
//!   ReportsOwnMetrics / ReportsOwnLogs / ReportsOwnTraces; an agent with
//!   none of them (or a server with none configured) gets nothing;
//! - the parts an agent gets form its set, whose hash is a SHA-256 of the
//!   set's encoding: the same settings always give the same hash, changed
//!   settings (a new URL, header or first agent secret) a new one;
//! - an agent is offered a set once: never again once it was delivered or
//!   the agent reported it (ConnectionSettingsStatus with its hash); the
//!   hash is stored, so a restart of opampd does not offer it again
//!   (collectors reconnect on every OpAMP offer). A retried message (same
//!   sequence number) whose reply carried the offer gets it again.

use crate::config::{Config, TelemetryDestination};
use opamp_proto::caps::{
    ACCEPTS_OPAMP_CONNECTION_SETTINGS, REPORTS_OWN_LOGS, REPORTS_OWN_METRICS, REPORTS_OWN_TRACES,
};
use opamp_proto::pb;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What check-config and the start-up log say when `opamp.public_url` is unset.
pub const NO_PUBLIC_URL: &str = "opamp.public_url is not set: no OpAMP connection settings \
     (destination, heartbeat interval, agent secret) are offered to agents; set it to the URL \
     agents use to reach opampd, e.g. wss://opamp.example.com/v1/opamp";

/// The capabilities that select parts of a set, in index-bit order.
const GATES: [u64; 4] = [
    ACCEPTS_OPAMP_CONNECTION_SETTINGS,
    REPORTS_OWN_METRICS,
    REPORTS_OWN_LOGS,
    REPORTS_OWN_TRACES,
];

/// The connection settings of the server, as sets per capability combination.
#[derive(Debug, Clone, Default)]
pub struct ConnectionSettings {
    /// Index: bit i set when the agent has `GATES[i]`.
    sets: [Option<Arc<SettingsSet>>; 16],
}

/// One set of connection settings and its hash.
#[derive(Debug, PartialEq)]
pub struct SettingsSet {
    pub hash: [u8; 32],
    pub message: pb::ConnectionSettingsOffers,
}

impl ConnectionSettings {
    /// The settings of `config`, with the first of `agent_secrets` as the
    /// OpAMP bearer token (the secrets may be newer than `config`: SIGHUP).
    pub fn new(config: &Config, agent_secrets: &[String]) -> ConnectionSettings {
        let opamp = config.opamp.public_url.as_ref().map(|url| {
            let headers = agent_secrets.first().map(|secret| pb::Headers {
                headers: vec![pb::Header {
                    key: "Authorization".into(),
                    value: format!("Bearer {secret}"),
                }],
            });
            pb::OpAmpConnectionSettings {
                destination_endpoint: url.clone(),
                headers,
                heartbeat_interval_seconds: config.opamp.heartbeat_interval_seconds,
                ..Default::default()
            }
        });
        let telemetry = &config.telemetry;
        let own_metrics = telemetry_settings(&telemetry.own_metrics);
        let own_logs = telemetry_settings(&telemetry.own_logs);
        let own_traces = telemetry_settings(&telemetry.own_traces);
        let mut sets: [Option<Arc<SettingsSet>>; 16] = Default::default();
        for (index, slot) in sets.iter_mut().enumerate() {
            let has = |gate: usize| index & (1 << gate) != 0;
            let mut message = pb::ConnectionSettingsOffers {
                opamp: opamp.clone().filter(|_| has(0)),
                own_metrics: own_metrics.clone().filter(|_| has(1)),
                own_logs: own_logs.clone().filter(|_| has(2)),
                own_traces: own_traces.clone().filter(|_| has(3)),
                ..Default::default()
            };
            if message == pb::ConnectionSettingsOffers::default() {
                continue;
            }
            let hash = set_hash(&message);
            message.hash = hash.to_vec();
            *slot = Some(Arc::new(SettingsSet { hash, message }));
        }
        ConnectionSettings { sets }
    }

    /// The set for an agent with `capabilities`; `None` when it gets nothing.
    pub fn for_capabilities(&self, capabilities: u64) -> Option<&Arc<SettingsSet>> {
        let index = GATES
            .iter()
            .enumerate()
            .filter(|(_, gate)| capabilities & **gate != 0)
            .fold(0, |index, (bit, _)| index | (1 << bit));
        self.sets[index].as_ref()
    }

    /// Whether OpAMP connection settings are offered (`opamp.public_url` is set).
    pub fn offers_opamp(&self) -> bool {
        self.for_capabilities(ACCEPTS_OPAMP_CONNECTION_SETTINGS)
            .is_some()
    }
}

fn telemetry_settings(
    destination: &TelemetryDestination,
) -> Option<pb::TelemetryConnectionSettings> {
    let endpoint = destination.endpoint.as_ref()?;
    Some(pb::TelemetryConnectionSettings {
        destination_endpoint: endpoint.clone(),
        headers: (!destination.headers.is_empty()).then(|| pb::Headers {
            // BTreeMap: in name order, so the hash is deterministic.
            headers: destination
                .headers
                .iter()
                .map(|(key, value)| pb::Header {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }),
        ..Default::default()
    })
}

/// SHA-256 over the set's protobuf encoding (no maps, so the encoding of
/// the same settings is always the same bytes).
fn set_hash(message: &pb::ConnectionSettingsOffers) -> [u8; 32] {
    use prost::Message;
    let mut digest = Sha256::new();
    digest.update(b"opampd connection settings v1\0");
    digest.update(message.encode_to_vec());
    digest.finalize().into()
}

/// What one agent was offered and what it reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentState {
    /// Hash of the last set delivered to the agent.
    offered: Option<[u8; 32]>,
    /// The sequence number whose reply carried that set (kept in memory only).
    offered_with: Option<u64>,
    /// The agent's last ConnectionSettingsStatus.
    reported: Option<pb::ConnectionSettingsStatus>,
}

impl AgentState {
    /// The state stored as [`AgentState::to_json`]; empty if absent or unreadable.
    pub fn from_json(text: Option<&str>) -> AgentState {
        let Some(value) = text.and_then(|t| serde_json::from_str::<Value>(t).ok()) else {
            return AgentState::default();
        };
        let offered = value["offered"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok());
        let reported = value["reported"]
            .is_object()
            .then(|| pb::ConnectionSettingsStatus {
                last_connection_settings_hash: value["reported"]["hash"]
                    .as_str()
                    .and_then(|h| hex::decode(h).ok())
                    .unwrap_or_default(),
                status: status_code(value["reported"]["status"].as_str().unwrap_or("unset")),
                error_message: value["reported"]["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        AgentState {
            offered,
            offered_with: None,
            reported,
        }
    }

    /// The stored form: `{"offered": hash hex, "reported": {hash, status, error}}`.
    pub fn to_json(&self) -> String {
        json!({
            "offered": self.offered.map(hex::encode),
            "reported": self.reported.as_ref().map(|r| json!({
                "hash": hex::encode(&r.last_connection_settings_hash),
                "status": super::session::status_name(r.status),
                "error": r.error_message,
            })),
        })
        .to_string()
    }

    /// Records a reported status; true when it changed.
    pub fn record_status(&mut self, status: &pb::ConnectionSettingsStatus) -> bool {
        if self.reported.as_ref() == Some(status) {
            return false;
        }
        self.reported = Some(status.clone());
        true
    }

    /// The set to offer with the reply to message `sequence_num`, if any;
    /// records the offer. `retry`: the message repeats the previous one.
    pub fn take_offer(
        &mut self,
        settings: &ConnectionSettings,
        capabilities: u64,
        sequence_num: u64,
        retry: bool,
    ) -> Option<pb::ConnectionSettingsOffers> {
        let set = settings.for_capabilities(capabilities)?;
        if retry && self.offered_with == Some(sequence_num) && self.offered == Some(set.hash) {
            // The reply that carried it was lost: answer as before.
            return Some(set.message.clone());
        }
        let reported = self
            .reported
            .as_ref()
            .is_some_and(|r| r.last_connection_settings_hash[..] == set.hash[..]);
        if self.offered == Some(set.hash) || reported {
            return None;
        }
        self.offered = Some(set.hash);
        self.offered_with = Some(sequence_num);
        Some(set.message.clone())
    }
}

/// The API view of a stored [`AgentState`] (`agents.connection_settings`).
pub fn api_state(stored: Option<&str>) -> opamp_proto::api::ConnectionSettingsState {
    let state = AgentState::from_json(stored);
    let offered_hash = state.offered.map(hex::encode);
    let reported_hash = state
        .reported
        .as_ref()
        .map(|r| hex::encode(&r.last_connection_settings_hash))
        .filter(|h| !h.is_empty());
    let status = match (&offered_hash, &state.reported) {
        (Some(offered), Some(r)) if reported_hash.as_ref() == Some(offered) => {
            super::session::status_name(r.status)
        }
        (Some(_), _) => "offered",
        (None, Some(r)) => super::session::status_name(r.status),
        (None, None) => "none",
    };
    let error = state
        .reported
        .as_ref()
        .filter(|_| status == "failed")
        .map(|r| r.error_message.clone())
        .filter(|e| !e.is_empty());
    opamp_proto::api::ConnectionSettingsState {
        offered_hash,
        reported_hash,
        status: status.into(),
        error,
    }
}

fn status_code(name: &str) -> i32 {
    match name {
        "applied" => 1,
        "applying" => 2,
        "failed" => 3,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(public_url: Option<&str>, metrics: Option<&str>) -> Config {
        let mut c = Config::default();
        c.opamp.public_url = public_url.map(str::to_owned);
        c.telemetry.own_metrics.endpoint = metrics.map(str::to_owned);
        c.telemetry
            .own_metrics
            .headers
            .insert("X-Key".into(), "k".into());
        c
    }

    #[test]
    fn sets_follow_the_capabilities_and_hash_deterministically() {
        let c = config(
            Some("wss://o.example/v1/opamp"),
            Some("https://m/v1/metrics"),
        );
        let settings = ConnectionSettings::new(&c, &["first-secret".into(), "second".into()]);
        assert!(settings.for_capabilities(0x1).is_none());
        let opamp = settings
            .for_capabilities(ACCEPTS_OPAMP_CONNECTION_SETTINGS)
            .unwrap();
        let o = opamp.message.opamp.as_ref().unwrap();
        assert_eq!(o.destination_endpoint, "wss://o.example/v1/opamp");
        assert_eq!(o.heartbeat_interval_seconds, 30);
        assert_eq!(
            o.headers.as_ref().unwrap().headers[0].value,
            "Bearer first-secret"
        );
        assert!(opamp.message.own_metrics.is_none());
        assert_eq!(opamp.message.hash, opamp.hash.to_vec());
        let both = settings
            .for_capabilities(ACCEPTS_OPAMP_CONNECTION_SETTINGS | REPORTS_OWN_METRICS | 0x1)
            .unwrap();
        assert!(both.message.opamp.is_some() && both.message.own_metrics.is_some());
        assert_ne!(both.hash, opamp.hash);
        assert!(
            settings.for_capabilities(REPORTS_OWN_LOGS).is_none(),
            "not configured"
        );
        let again = ConnectionSettings::new(&c, &["first-secret".into()]);
        assert_eq!(
            again
                .for_capabilities(ACCEPTS_OPAMP_CONNECTION_SETTINGS)
                .unwrap()
                .hash,
            opamp.hash
        );
        let rotated = ConnectionSettings::new(&c, &["next-secret".into()]);
        assert_ne!(
            rotated
                .for_capabilities(ACCEPTS_OPAMP_CONNECTION_SETTINGS)
                .unwrap()
                .hash,
            opamp.hash
        );
        let without_url = ConnectionSettings::new(&config(None, None), &[]);
        assert!(!without_url.offers_opamp());
    }

    #[test]
    fn a_set_is_offered_once_and_kept_across_a_restart() {
        let c = config(Some("ws://o/v1/opamp"), None);
        let settings = ConnectionSettings::new(&c, &[]);
        let caps = ACCEPTS_OPAMP_CONNECTION_SETTINGS;
        let mut state = AgentState::default();
        let offer = state.take_offer(&settings, caps, 0, false).unwrap();
        assert_eq!(
            state.take_offer(&settings, caps, 0, true),
            Some(offer.clone()),
            "a retry"
        );
        assert_eq!(state.take_offer(&settings, caps, 1, false), None);
        let mut restored = AgentState::from_json(Some(&state.to_json()));
        assert_eq!(restored.take_offer(&settings, caps, 2, false), None);
        let changed = ConnectionSettings::new(&config(Some("ws://other/v1/opamp"), None), &[]);
        assert!(restored.take_offer(&changed, caps, 3, false).is_some());
    }

    #[test]
    fn a_reported_set_is_not_offered_and_the_status_shows() {
        let c = config(Some("ws://o/v1/opamp"), None);
        let settings = ConnectionSettings::new(&c, &[]);
        let caps = ACCEPTS_OPAMP_CONNECTION_SETTINGS;
        let hash = settings.for_capabilities(caps).unwrap().hash;
        let mut state = AgentState::default();
        assert!(state.record_status(&pb::ConnectionSettingsStatus {
            last_connection_settings_hash: hash.to_vec(),
            status: pb::ConnectionSettingsStatuses::Failed as i32,
            error_message: "cannot reach".into(),
        }));
        assert_eq!(state.take_offer(&settings, caps, 0, false), None);
        let shown = api_state(Some(&state.to_json()));
        assert_eq!(
            (shown.status.as_str(), shown.error.as_deref()),
            ("failed", Some("cannot reach"))
        );
        assert_eq!(api_state(None).status, "none");
    }
}
