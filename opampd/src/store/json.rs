//! The JSON columns of stored rows (labels, attributes, health, offered and
//! reported configurations, component lists), decoded in one place for
//! every backend and reader. A column opampd wrote is always valid JSON; one
//! that is not (a hand-edited row) reads as empty rather than failing the
//! request that met it.

use opamp_proto::api::AvailableComponent;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// An agent's labels (`agents.labels`): name → value.
pub fn labels(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// An object column (identifying or non-identifying attributes): key → value.
pub fn object(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).unwrap_or_default()
}

/// An optional column of any JSON (health, remote status, offered and
/// applied records): `Null` when absent or unreadable.
pub fn value(text: Option<&str>) -> Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

/// An optional column read as `T` (custom capabilities, health): `None`
/// when absent or not of that shape.
pub fn typed<T: DeserializeOwned>(text: Option<&str>) -> Option<T> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

/// The entries of a stored component list (`component_sets.entries`).
pub fn component_entries(text: &str) -> Option<Vec<AvailableComponent>> {
    serde_json::from_str(text).ok()
}

/// `service.name` of an agent's identifying attributes, if a string.
pub fn service_name(identifying: &str) -> Option<String> {
    object(identifying)
        .get("service.name")
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_columns_read_as_empty() {
        assert!(labels("not json").is_empty());
        assert!(object("[1]").is_empty());
        assert_eq!(value(Some("{")), Value::Null);
        assert_eq!(value(None), Value::Null);
        assert_eq!(typed::<Vec<String>>(Some("{}")), None);
    }

    #[test]
    fn columns_opampd_writes_are_read_back() {
        assert_eq!(labels(r#"{"env":"prod"}"#)["env"], "prod");
        assert_eq!(
            service_name(r#"{"service.name":"otelcol","host":"a"}"#).as_deref(),
            Some("otelcol")
        );
        assert_eq!(service_name(r#"{"service.name":3}"#), None);
        assert_eq!(value(Some(r#"{"hash":"ab"}"#))["hash"], "ab");
        assert_eq!(
            typed::<Vec<String>>(Some(r#"["a"]"#)),
            Some(vec!["a".to_string()])
        );
    }
}
