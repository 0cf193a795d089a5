//! The JSON the API shows of an agent's protocol state: attributes, health,
//! effective configuration and what it was offered.

use super::Session;
use crate::store;
use opamp_proto::pb;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// JSON record of what was offered, for the API and for restarts.
pub fn offered_json(s: &Session) -> Value {
    match &s.desired {
        Some(d) => json!({
            "hash": d.hash_hex(),
            "files": d.parts().into_iter().map(|(n, v)| json!({"name": n, "version": v})).collect::<Vec<_>>(),
        }),
        None => Value::Null,
    }
}

/// OpAMP attributes as a JSON object (AnyValue mapped to JSON).
pub fn attrs_json(kvs: &[pb::KeyValue]) -> Map<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_value(kv.value.as_ref())))
        .collect()
}

fn any_value(v: Option<&pb::AnyValue>) -> Value {
    use pb::any_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(V::StringValue(s)) => Value::String(s.clone()),
        Some(V::BoolValue(b)) => Value::Bool(*b),
        Some(V::IntValue(i)) => json!(i),
        Some(V::DoubleValue(d)) => json!(d),
        Some(V::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any_value(Some(v))).collect())
        }
        Some(V::KvlistValue(l)) => Value::Object(attrs_json(&l.values)),
        Some(V::BytesValue(b)) => Value::String(hex::encode(b)),
    }
}

/// String-valued attributes for selectors.
pub fn attr_strings(
    identifying: &Map<String, Value>,
    non_identifying: &Map<String, Value>,
) -> BTreeMap<String, String> {
    non_identifying
        .iter()
        .chain(identifying.iter())
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect()
}

fn nanos_rfc3339(ns: u64) -> Option<String> {
    (ns > 0).then(|| store::rfc3339((ns / 1_000_000) as i64))
}

pub fn health_json(h: &pb::ComponentHealth) -> Value {
    let components: Map<String, Value> = h
        .component_health_map
        .iter()
        .map(|(k, v)| (k.clone(), health_json(v)))
        .collect();
    let mut v = json!({
        "healthy": h.healthy,
        "status": h.status,
        "last_error": h.last_error,
        "start_time": nanos_rfc3339(h.start_time_unix_nano),
        "status_time": nanos_rfc3339(h.status_time_unix_nano),
    });
    if !components.is_empty() {
        v["components"] = Value::Object(components);
    }
    v
}

/// Effective config as JSON files plus a hash of its content.
pub(super) fn effective_config_json(ec: &pb::EffectiveConfig) -> (Value, String) {
    let files: BTreeMap<String, (String, String)> = ec
        .config_map
        .as_ref()
        .map(|m| {
            m.config_map
                .iter()
                .map(|(k, f)| {
                    (
                        k.clone(),
                        (
                            f.content_type.clone(),
                            String::from_utf8_lossy(&f.body).into_owned(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let hash = crate::targeting::config_map_hash(
        files
            .iter()
            .map(|(n, (ct, b))| (n.as_str(), ct.as_str(), b.as_bytes())),
    );
    let json: Map<String, Value> = files
        .into_iter()
        .map(|(n, (ct, b))| (n, json!({"content_type": ct, "body": b})))
        .collect();
    (Value::Object(json), hex::encode(hash))
}
