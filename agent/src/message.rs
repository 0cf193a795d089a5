//! Builders for the messages an agent sends.
//!
//! Every builder returns a plain prost struct from [`crate::pb`]. They build
//! correct messages; to send a deliberately wrong one (a short instance uid,
//! a sequence gap, a missing capability) change the fields of the result:
//!
//! ```
//! use opamp_agent::message;
//!
//! let mut wrong = message::heartbeat([7; 16], 3, message::TYPICAL_CAPABILITIES);
//! wrong.instance_uid = vec![1, 2, 3];
//! assert_eq!(wrong.sequence_num, 3);
//! ```
//!
//! Messages are combined with struct-update syntax:
//!
//! ```
//! use opamp_agent::{message, pb};
//!
//! let report = pb::AgentToServer {
//!     health: Some(message::health(false, "StatusRecoverableError", "disk full")),
//!     ..message::heartbeat([7; 16], 4, message::TYPICAL_CAPABILITIES)
//! };
//! assert!(!report.health.unwrap().healthy);
//! ```

use crate::caps;
use crate::pb;

/// The capabilities of a typical collector managed remotely: reports status,
/// health, effective config and remote-config status, accepts remote config
/// and the restart command.
pub const TYPICAL_CAPABILITIES: u64 = caps::REPORTS_STATUS
    | caps::ACCEPTS_REMOTE_CONFIG
    | caps::REPORTS_EFFECTIVE_CONFIG
    | caps::REPORTS_HEALTH
    | caps::REPORTS_REMOTE_CONFIG
    | caps::ACCEPTS_RESTART_COMMAND;

/// The content type of YAML configuration files.
pub const YAML: &str = "text/yaml";

/// A string attribute.
pub fn kv(key: &str, value: &str) -> pb::KeyValue {
    pb::KeyValue {
        key: key.into(),
        value: Some(pb::AnyValue {
            value: Some(pb::any_value::Value::StringValue(value.into())),
        }),
    }
}

/// An integer attribute.
pub fn kv_int(key: &str, value: i64) -> pb::KeyValue {
    pb::KeyValue {
        key: key.into(),
        value: Some(pb::AnyValue {
            value: Some(pb::any_value::Value::IntValue(value)),
        }),
    }
}

/// An agent description from string attributes: identifying ones
/// (`service.name`, `service.version`, ...) and non-identifying ones
/// (`host.name`, `os.type`, labels).
pub fn description(
    identifying: &[(&str, &str)],
    non_identifying: &[(&str, &str)],
) -> pb::AgentDescription {
    pb::AgentDescription {
        identifying_attributes: identifying.iter().map(|(k, v)| kv(k, v)).collect(),
        non_identifying_attributes: non_identifying.iter().map(|(k, v)| kv(k, v)).collect(),
    }
}

/// A heartbeat (WebSocket) or poll (plain HTTP): instance uid, sequence
/// number and capabilities, nothing else. To the server every omitted field
/// means "unchanged".
pub fn heartbeat(uid: [u8; 16], sequence_num: u64, capabilities: u64) -> pb::AgentToServer {
    pb::AgentToServer {
        instance_uid: uid.to_vec(),
        sequence_num,
        capabilities,
        ..Default::default()
    }
}

/// The whole-agent health: healthy or not, the agent's status word, and the
/// last error (empty when healthy).
pub fn health(healthy: bool, status: &str, last_error: &str) -> pb::ComponentHealth {
    pb::ComponentHealth {
        healthy,
        status: status.into(),
        last_error: last_error.into(),
        ..Default::default()
    }
}

/// A configuration map from `(file name, body, content type)` triples. A
/// single file may have the empty name.
pub fn config_map<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8], &'a str)>,
) -> pb::AgentConfigMap {
    pb::AgentConfigMap {
        config_map: files
            .into_iter()
            .map(|(name, body, content_type)| {
                (
                    name.to_string(),
                    pb::AgentConfigFile {
                        body: body.to_vec(),
                        content_type: content_type.into(),
                    },
                )
            })
            .collect(),
    }
}

/// The effective config: what the agent runs, as it reports it.
pub fn effective_config(map: pb::AgentConfigMap) -> pb::EffectiveConfig {
    pb::EffectiveConfig {
        config_map: Some(map),
    }
}

/// An effective config of one unnamed YAML file.
pub fn effective_yaml(body: &str) -> pb::EffectiveConfig {
    effective_config(config_map([("", body.as_bytes(), YAML)]))
}

/// The status of the last remote config the agent received, named by the
/// hash the server sent with it.
pub fn remote_config_status(
    hash: &[u8],
    status: pb::RemoteConfigStatuses,
    error_message: &str,
) -> pb::RemoteConfigStatus {
    pb::RemoteConfigStatus {
        last_remote_config_hash: hash.to_vec(),
        status: status as i32,
        error_message: error_message.into(),
    }
}

/// The status of the last connection settings the agent received, named by
/// the hash the server sent with them.
pub fn connection_settings_status(
    hash: &[u8],
    status: pb::ConnectionSettingsStatuses,
    error_message: &str,
) -> pb::ConnectionSettingsStatus {
    pb::ConnectionSettingsStatus {
        last_connection_settings_hash: hash.to_vec(),
        status: status as i32,
        error_message: error_message.into(),
    }
}

/// A heartbeat carrying a remote-config status.
pub fn status_report(
    uid: [u8; 16],
    sequence_num: u64,
    capabilities: u64,
    status: pb::RemoteConfigStatus,
) -> pb::AgentToServer {
    pb::AgentToServer {
        remote_config_status: Some(status),
        ..heartbeat(uid, sequence_num, capabilities)
    }
}

/// Everything a full report carries besides uid, sequence number and
/// capabilities. `None` fields are left out of the message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FullState {
    pub description: Option<pb::AgentDescription>,
    pub health: Option<pb::ComponentHealth>,
    pub effective_config: Option<pb::EffectiveConfig>,
    pub remote_config_status: Option<pb::RemoteConfigStatus>,
}

/// A full report: the first message of an agent, and the answer to a
/// ReportFullState request.
pub fn full_report(
    uid: [u8; 16],
    sequence_num: u64,
    capabilities: u64,
    state: FullState,
) -> pb::AgentToServer {
    pb::AgentToServer {
        agent_description: state.description,
        health: state.health,
        effective_config: state.effective_config,
        remote_config_status: state.remote_config_status,
        ..heartbeat(uid, sequence_num, capabilities)
    }
}

/// The components an agent can run, grouped by kind as collectors report
/// them: `(kind, type, module)` triples such as `("receivers", "otlp",
/// "go.opentelemetry.io/collector/receiver/otlpreceiver v0.118.0")`. Each
/// type carries the module as `code.namespace` metadata; the hash is SHA-256
/// over every triple in order, so the same list always has the same hash.
pub fn available_components(components: &[(&str, &str, &str)]) -> pb::AvailableComponents {
    use sha2::{Digest, Sha256};
    let mut sorted = components.to_vec();
    sorted.sort();
    let mut hash = Sha256::new();
    let mut map: std::collections::BTreeMap<String, pb::ComponentDetails> = Default::default();
    for (kind, r#type, module) in &sorted {
        for part in [kind, r#type, module] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        map.entry(kind.to_string())
            .or_default()
            .sub_component_map
            .insert(
                r#type.to_string(),
                pb::ComponentDetails {
                    metadata: vec![kv("code.namespace", module)],
                    sub_component_map: Default::default(),
                },
            );
    }
    pb::AvailableComponents {
        components: map,
        hash: hash.finalize().to_vec(),
    }
}

/// Only the hash of a component list: what an agent sends until the server
/// asks for the list (ReportAvailableComponents).
pub fn components_hash_only(components: &pb::AvailableComponents) -> pb::AvailableComponents {
    pb::AvailableComponents {
        components: Default::default(),
        hash: components.hash.clone(),
    }
}

/// Custom capabilities, e.g. `io.opentelemetry.pause/v1`.
pub fn custom_capabilities(names: &[&str]) -> pb::CustomCapabilities {
    pb::CustomCapabilities {
        capabilities: names.iter().map(|n| n.to_string()).collect(),
    }
}

/// The last message of an agent that stops: `agent_disconnect` set.
pub fn disconnect(uid: [u8; 16], sequence_num: u64, capabilities: u64) -> pb::AgentToServer {
    pb::AgentToServer {
        agent_disconnect: Some(pb::AgentDisconnect {}),
        ..heartbeat(uid, sequence_num, capabilities)
    }
}

/// The string value of attribute `key`, if it is a string.
pub fn attribute<'a>(attributes: &'a [pb::KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match &a.value {
            Some(pb::AnyValue {
                value: Some(pb::any_value::Value::StringValue(s)),
            }) => Some(s.as_str()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_is_a_string_attribute() {
        let a = kv("service.name", "collector");
        assert_eq!(a.key, "service.name");
        assert_eq!(attribute(&[a], "service.name"), Some("collector"));
    }

    #[test]
    fn attribute_skips_other_types_and_keys() {
        let attrs = [kv_int("pid", 7), kv("os.type", "linux")];
        assert_eq!(attribute(&attrs, "pid"), None);
        assert_eq!(attribute(&attrs, "missing"), None);
        assert_eq!(attribute(&attrs, "os.type"), Some("linux"));
    }

    #[test]
    fn heartbeat_carries_only_uid_sequence_and_capabilities() {
        let m = heartbeat([1; 16], 9, TYPICAL_CAPABILITIES);
        assert_eq!(
            m,
            pb::AgentToServer {
                instance_uid: vec![1; 16],
                sequence_num: 9,
                capabilities: TYPICAL_CAPABILITIES,
                ..Default::default()
            }
        );
    }

    #[test]
    fn full_report_leaves_out_what_is_unknown() {
        let m = full_report(
            [1; 16],
            0,
            caps::REPORTS_STATUS,
            FullState {
                description: Some(description(&[("service.name", "x")], &[])),
                ..Default::default()
            },
        );
        assert!(m.agent_description.is_some());
        assert!(
            m.health.is_none() && m.effective_config.is_none() && m.remote_config_status.is_none()
        );
    }

    #[test]
    fn effective_yaml_is_one_unnamed_file() {
        let e = effective_yaml("receivers: {}");
        let files = e.config_map.unwrap().config_map;
        assert_eq!(files.len(), 1);
        assert_eq!(files[""].body, b"receivers: {}");
        assert_eq!(files[""].content_type, YAML);
    }

    #[test]
    fn status_report_names_the_hash() {
        let m = status_report(
            [2; 16],
            5,
            TYPICAL_CAPABILITIES,
            remote_config_status(b"hash", pb::RemoteConfigStatuses::Failed, "bad yaml"),
        );
        let s = m.remote_config_status.unwrap();
        assert_eq!(s.last_remote_config_hash, b"hash");
        assert_eq!(s.status, pb::RemoteConfigStatuses::Failed as i32);
        assert_eq!(s.error_message, "bad yaml");
    }

    #[test]
    fn available_components_hash_depends_on_the_list_not_its_order() {
        let a = available_components(&[
            ("receivers", "otlp", "otlpreceiver v1"),
            ("exporters", "debug", "debugexporter v1"),
        ]);
        let b = available_components(&[
            ("exporters", "debug", "debugexporter v1"),
            ("receivers", "otlp", "otlpreceiver v1"),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.hash.len(), 32);
        assert!(
            a.components["receivers"].sub_component_map["otlp"].metadata[0].key == "code.namespace"
        );
        let c = available_components(&[("receivers", "otlp", "otlpreceiver v2")]);
        assert_ne!(a.hash, c.hash);
        let only = components_hash_only(&a);
        assert!(only.components.is_empty() && only.hash == a.hash);
    }

    #[test]
    fn disconnect_sets_agent_disconnect() {
        let m = disconnect([3; 16], 8, 1);
        assert_eq!(m.agent_disconnect, Some(pb::AgentDisconnect {}));
        assert_eq!(m.sequence_num, 8);
    }
}
