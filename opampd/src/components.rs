//! Available components: what an agent can run, and what a configuration needs.
//!
//! An agent with ReportsAvailableComponents sends the hash of its component
//! list; opampd asks for the list itself (ReportAvailableComponents) only for
//! a hash it holds no list for, once per hash (an agent that answers with the
//! hash again is not asked again until it reports another hash). Lists are
//! kept by hash ([`Cache`], table `component_sets`): a fleet of collectors of
//! one build reports one list.
//!
//! A collector configuration names its components under `receivers`,
//! `processors`, `exporters`, `extensions` and `connectors`, as `type` or
//! `type/name`; [`required`] reads the `kind/type` pairs, which a rollout
//! checks against each agent's list ([`missing`]).

use opamp_proto::api::AvailableComponent;
use opamp_proto::pb;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// The component kinds of a collector configuration.
pub const KINDS: [&str; 5] = [
    "receivers",
    "processors",
    "exporters",
    "extensions",
    "connectors",
];

/// Entries a reported list may hold; a longer one is cut there.
pub const MAX_ENTRIES: usize = 10_000;

/// One reported component list.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentSet {
    /// The agent's hash of the list.
    pub hash: Vec<u8>,
    /// `kind/type` of every component: what selectors and rollouts check.
    pub types: BTreeSet<String>,
    /// Every entry, flattened, in kind then name order.
    pub entries: Vec<AvailableComponent>,
}

impl ComponentSet {
    /// Flattens a reported list: kind, then the name path below it.
    pub fn from_report(report: &pb::AvailableComponents) -> ComponentSet {
        let mut entries = Vec::new();
        let mut kinds: Vec<_> = report.components.iter().collect();
        kinds.sort_by(|a, b| a.0.cmp(b.0));
        for (kind, details) in kinds {
            flatten(kind, "", details, &mut entries);
        }
        entries.truncate(MAX_ENTRIES);
        ComponentSet::from_stored(report.hash.clone(), entries)
    }

    /// A list from its flattened entries.
    pub fn from_stored(hash: Vec<u8>, entries: Vec<AvailableComponent>) -> ComponentSet {
        let types = entries
            .iter()
            .map(|e| {
                let r#type = e.name.split('/').next().unwrap_or("");
                format!("{}/{}", e.kind, r#type)
            })
            .collect();
        ComponentSet {
            hash,
            types,
            entries,
        }
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(&self.hash)
    }

    /// Whether the agent has a component of `kind/type`.
    pub fn has(&self, kind_type: &str) -> bool {
        self.types.contains(kind_type)
    }
}

fn flatten(
    kind: &str,
    prefix: &str,
    details: &pb::ComponentDetails,
    out: &mut Vec<AvailableComponent>,
) {
    let mut subs: Vec<_> = details.sub_component_map.iter().collect();
    subs.sort_by(|a, b| a.0.cmp(b.0));
    for (name, sub) in subs {
        if out.len() >= MAX_ENTRIES {
            return;
        }
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let metadata = crate::opamp::session::attrs_json(&sub.metadata);
        out.push(AvailableComponent {
            kind: kind.to_string(),
            name: path.clone(),
            version: version_of(&metadata),
            metadata: metadata.into_iter().collect(),
        });
        flatten(kind, &path, sub, out);
    }
}

/// The version in a component's metadata: `version` or `code.version`, else
/// the version of a `code.namespace` like `…/otlpreceiver v0.118.0`.
fn version_of(metadata: &serde_json::Map<String, Value>) -> Option<String> {
    for key in ["version", "code.version"] {
        if let Some(v) = metadata.get(key).and_then(Value::as_str) {
            return Some(v.to_string());
        }
    }
    let namespace = metadata.get("code.namespace").and_then(Value::as_str)?;
    let (_, version) = namespace.rsplit_once(' ')?;
    version
        .starts_with(|c: char| c == 'v' || c.is_ascii_digit())
        .then(|| version.to_string())
}

/// Every list opampd holds, by hash.
pub struct Cache {
    sets: RwLock<HashMap<Vec<u8>, Arc<ComponentSet>>>,
    /// Largest list (encoded, in bytes) taken in:
    /// `opamp.max_stored_bytes_per_agent`.
    max_set_bytes: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::with_limit(usize::MAX)
    }
}

impl Cache {
    /// A cache that takes in no list larger than `max_set_bytes` encoded.
    pub fn with_limit(max_set_bytes: usize) -> Cache {
        Cache {
            sets: RwLock::default(),
            max_set_bytes,
        }
    }

    pub fn get(&self, hash: &[u8]) -> Option<Arc<ComponentSet>> {
        self.sets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    /// Keeps `set` (or the one already held for its hash, which it returns).
    pub fn insert(&self, set: ComponentSet) -> Arc<ComponentSet> {
        self.sets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(set.hash.clone())
            .or_insert_with(|| Arc::new(set))
            .clone()
    }

    /// The list of a stored hash (hex), if held.
    pub fn get_hex(&self, hash: Option<&str>) -> Option<Arc<ComponentSet>> {
        self.get(&hex::decode(hash?).ok()?)
    }

    /// Reads every stored list (start-up, after a restore).
    pub async fn load(&self, store: &crate::store::Store) -> anyhow::Result<()> {
        let sets = store.component_sets().await?;
        for set in sets {
            self.insert(set);
        }
        Ok(())
    }
}

/// What a session knows of its agent's components.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// The list of the last reported hash opampd holds.
    pub set: Option<Arc<ComponentSet>>,
    /// The unknown hash the list was last asked for.
    asked_for: Option<Vec<u8>>,
}

/// What to do after an agent reported its components.
#[derive(Debug, Default)]
pub struct Update {
    /// Set ReportAvailableComponents in the reply.
    pub ask: bool,
    /// The agent's list changed to this one: store its hash with the agent.
    pub changed: Option<Arc<ComponentSet>>,
    /// A list opampd did not hold: store it.
    pub learned: bool,
    /// A list larger than the cache takes (its size in bytes): not kept, and
    /// not asked for again.
    pub too_big: Option<usize>,
}

/// Takes in an AvailableComponents message. `retry`: the message repeats the
/// last one (answered as before, the flag included).
pub fn report(
    known: &mut Known,
    reported: &pb::AvailableComponents,
    cache: &Cache,
    retry: bool,
) -> Update {
    let mut update = Update::default();
    let set = match cache.get(&reported.hash) {
        Some(set) => Some(set),
        None if !reported.components.is_empty() => {
            let bytes = prost::Message::encoded_len(reported);
            if bytes > cache.max_set_bytes {
                known.asked_for = Some(reported.hash.clone());
                update.too_big = Some(bytes);
                return update;
            }
            update.learned = true;
            Some(cache.insert(ComponentSet::from_report(reported)))
        }
        None => None,
    };
    match set {
        Some(set) => {
            known.asked_for = None;
            if known.set.as_ref().is_none_or(|s| s.hash != set.hash) {
                update.changed = Some(set.clone());
            }
            known.set = Some(set);
        }
        None if reported.hash.is_empty() => {}
        None => {
            update.ask = retry || known.asked_for.as_deref() != Some(&reported.hash[..]);
            known.asked_for = Some(reported.hash.clone());
        }
    }
    update
}

/// The `kind/type` of every component a YAML collector configuration
/// defines (`otlp/2` is type `otlp`); empty when the body is not a YAML
/// mapping.
pub fn required(body: &str) -> BTreeSet<String> {
    let Ok(serde_yaml::Value::Mapping(top)) = serde_yaml::from_str::<serde_yaml::Value>(body)
    else {
        return BTreeSet::new();
    };
    let mut out = BTreeSet::new();
    for kind in KINDS {
        let Some(serde_yaml::Value::Mapping(section)) = top.get(kind) else {
            continue;
        };
        for key in section.keys() {
            if let Some(id) = key.as_str() {
                let r#type = id.split('/').next().unwrap_or(id).trim();
                if !r#type.is_empty() {
                    out.insert(format!("{kind}/{type}"));
                }
            }
        }
    }
    out
}

/// The components of `required` an agent lacks; `None` when it never
/// reported its components (unknown: not skipped).
pub fn missing(required: &BTreeSet<String>, set: Option<&ComponentSet>) -> Option<Vec<String>> {
    let set = set?;
    Some(required.iter().filter(|c| !set.has(c)).cloned().collect())
}

/// Checks the value of a `component=` selector term: `kind/type`.
pub fn valid_selector_value(value: &str) -> bool {
    matches!(value.split_once('/'), Some((kind, r#type)) if !kind.is_empty() && !r#type.is_empty() && !r#type.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_agent::message;

    fn list() -> pb::AvailableComponents {
        message::available_components(&[
            ("receivers", "otlp", "go.example/otlpreceiver v0.118.0"),
            ("exporters", "debug", "go.example/debugexporter v0.118.0"),
        ])
    }

    #[test]
    fn a_list_is_flattened_with_versions() {
        let set = ComponentSet::from_report(&list());
        assert_eq!(
            set.types,
            BTreeSet::from(["exporters/debug".to_string(), "receivers/otlp".to_string()])
        );
        assert_eq!(set.entries[0].kind, "exporters");
        assert_eq!(set.entries[0].version.as_deref(), Some("v0.118.0"));
    }

    #[test]
    fn an_unknown_hash_is_asked_for_once() {
        let cache = Cache::default();
        let mut known = Known::default();
        let only = message::components_hash_only(&list());
        assert!(report(&mut known, &only, &cache, false).ask);
        assert!(!report(&mut known, &only, &cache, false).ask, "no loop");
        assert!(
            report(&mut known, &only, &cache, true).ask,
            "a retry as before"
        );
        let update = report(&mut known, &list(), &cache, false);
        assert!(!update.ask && update.learned && update.changed.is_some());
        let mut other = Known::default();
        let update = report(&mut other, &only, &cache, false);
        assert!(!update.ask && !update.learned, "known from another agent");
        assert!(other.set.is_some());
    }

    #[test]
    fn required_reads_component_types() {
        let body = "receivers:\n  otlp:\n  otlp/2:\n    protocols: {}\nprocessors:\n  batch:\nexporters:\n  debug:\nservice:\n  pipelines: {}\n";
        assert_eq!(
            required(body).into_iter().collect::<Vec<_>>(),
            vec!["exporters/debug", "processors/batch", "receivers/otlp"]
        );
        assert!(required("not: [yaml").is_empty());
        assert!(required("just text").is_empty());
        let set = ComponentSet::from_report(&list());
        assert_eq!(
            missing(&required(body), Some(&set)),
            Some(vec!["processors/batch".to_string()])
        );
        assert_eq!(missing(&required(body), None), None);
    }

    #[test]
    fn selector_values_name_kind_and_type() {
        assert!(valid_selector_value("receivers/otlp"));
        assert!(!valid_selector_value("otlp"));
        assert!(!valid_selector_value("receivers/"));
        assert!(!valid_selector_value("receivers/otlp/2"));
    }
}
