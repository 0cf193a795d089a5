//! Which configuration each agent should run.
//!
//! Every configuration that has a rollout contributes one [`Target`]. An agent
//! receives one file per matching target, named after the configuration, in a
//! single AgentConfigMap; the offer's hash covers all files, in name order, so
//! it is deterministic. Until a rollout completes, its version reaches only
//! the agents of its released batches; any other matching agent (an
//! unreleased batch, or one that matched later) keeps the previous version.
//! An agent whose reported component list lacks a component the version
//! uses keeps the previous version too, unless the rollout was forced.

use crate::selector::{AgentView, Selector};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// One immutable configuration version as offered to agents.
#[derive(Debug, Clone)]
pub struct VersionRef {
    pub version: u64,
    pub content_type: String,
    pub body: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub selector: Selector,
    pub current: VersionRef,
    pub previous: Option<VersionRef>,
    /// Until the rollout completes, the agents of its released batches: the
    /// only ones `current` reaches (the others keep `previous`). `None` once
    /// it has completed: every matching agent gets `current`.
    pub released: Option<Arc<HashSet<[u8; 16]>>>,
    /// The components (`kind/type`) `current` uses, which an agent must have
    /// reported to receive it; empty when the rollout was forced.
    pub requires: Arc<BTreeSet<String>>,
}

impl Target {
    /// The components of `current` the agent lacks (empty: none, or the
    /// agent never reported its components).
    pub fn lacking(&self, view: &AgentView) -> Vec<String> {
        if self.requires.is_empty() {
            return Vec::new();
        }
        crate::components::missing(&self.requires, view.components.as_deref()).unwrap_or_default()
    }
}

/// What one agent should run.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// name → (content type, body, version).
    pub files: BTreeMap<String, (String, Arc<str>, u64)>,
    pub hash: [u8; 32],
}

impl Desired {
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// `name@version` per file, for the API and the offered-record.
    pub fn parts(&self) -> Vec<(String, u64)> {
        self.files
            .iter()
            .map(|(n, (_, _, v))| (n.clone(), *v))
            .collect()
    }
}

/// Hash of a set of files: SHA-256 over length-prefixed name, content type and body, in name order.
pub fn config_map_hash<'a>(files: impl Iterator<Item = (&'a str, &'a str, &'a [u8])>) -> [u8; 32] {
    let mut h = Sha256::new();
    for (name, ct, body) in files {
        for part in [name.as_bytes(), ct.as_bytes(), body] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    h.finalize().into()
}

/// Hash of one configuration version: SHA-256 over content type and body (hex).
pub fn version_hash(content_type: &str, body: &str) -> String {
    hex::encode(config_map_hash(std::iter::once((
        "",
        content_type,
        body.as_bytes(),
    ))))
}

/// The set of targets, replaced whole when a rollout changes.
#[derive(Default)]
pub struct Targets {
    epoch: AtomicU64,
    targets: RwLock<Arc<Vec<Target>>>,
}

impl Targets {
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn replace(&self, mut targets: Vec<Target>) {
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(targets);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn snapshot(&self) -> Arc<Vec<Target>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What an agent seen as `view` should run; `None` when nothing targets it.
    pub fn desired_for(&self, uid: &[u8; 16], view: &AgentView) -> Option<Arc<Desired>> {
        let targets = self.snapshot();
        let mut files = BTreeMap::new();
        for t in targets.iter() {
            if !t.selector.matches(view) {
                continue;
            }
            let v = match &t.released {
                Some(released) if !released.contains(uid) => t.previous.as_ref(),
                _ if !t.lacking(view).is_empty() => t.previous.as_ref(),
                _ => Some(&t.current),
            };
            if let Some(v) = v {
                files.insert(
                    t.name.clone(),
                    (v.content_type.clone(), v.body.clone(), v.version),
                );
            }
        }
        if files.is_empty() {
            return None;
        }
        let hash = config_map_hash(
            files
                .iter()
                .map(|(n, (ct, b, _))| (n.as_str(), ct.as_str(), b.as_bytes())),
        );
        Some(Arc::new(Desired { files, hash }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, sel: &str, version: u64, body: &str) -> Target {
        Target {
            name: name.into(),
            selector: Selector::parse(sel).unwrap(),
            current: VersionRef {
                version,
                content_type: "text/yaml".into(),
                body: body.into(),
            },
            previous: None,
            released: None,
            requires: Default::default(),
        }
    }

    fn view(values: &[(&str, &str)]) -> AgentView {
        AgentView {
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            components: None,
        }
    }

    #[test]
    fn two_matching_configurations_give_two_files_in_name_order() {
        let t = Targets::default();
        t.replace(vec![
            target("zeta", "", 1, "z: 1"),
            target("alpha", "env=prod", 2, "a: 2"),
        ]);
        let attrs = view(&[("env", "prod")]);
        let d = t.desired_for(&[1; 16], &attrs).unwrap();
        assert_eq!(
            d.parts(),
            vec![("alpha".to_string(), 2), ("zeta".to_string(), 1)]
        );
        let again = t.desired_for(&[1; 16], &attrs).unwrap();
        assert_eq!(d.hash, again.hash);
    }

    #[test]
    fn until_completion_only_released_agents_get_the_new_version() {
        let t = Targets::default();
        let mut tg = target("c", "", 2, "new");
        tg.previous = Some(VersionRef {
            version: 1,
            content_type: "text/yaml".into(),
            body: "old".into(),
        });
        tg.released = Some(Arc::new(HashSet::from([[8; 16]])));
        t.replace(vec![tg.clone()]);
        assert_eq!(
            t.desired_for(&[7; 16], &view(&[])).unwrap().parts(),
            vec![("c".to_string(), 1)],
            "not released, or matched after the start"
        );
        assert_eq!(
            t.desired_for(&[8; 16], &view(&[])).unwrap().parts(),
            vec![("c".to_string(), 2)]
        );
        tg.released = None;
        t.replace(vec![tg]);
        assert_eq!(
            t.desired_for(&[7; 16], &view(&[])).unwrap().parts(),
            vec![("c".to_string(), 2)],
            "completed: every matching agent"
        );
    }

    #[test]
    fn an_agent_lacking_a_component_keeps_the_previous_version() {
        use crate::components::ComponentSet;
        use opamp_agent::message;
        let t = Targets::default();
        let mut tg = target("c", "", 2, "receivers:\n  otlp:\n");
        tg.previous = Some(VersionRef {
            version: 1,
            content_type: "text/yaml".into(),
            body: "old".into(),
        });
        tg.requires = Arc::new(BTreeSet::from(["receivers/otlp".to_string()]));
        t.replace(vec![tg]);
        let mut agent = view(&[]);
        let with = |list: &[(&str, &str, &str)]| {
            Some(Arc::new(ComponentSet::from_report(
                &message::available_components(list),
            )))
        };
        agent.components = with(&[("receivers", "filelog", "m v1")]);
        assert_eq!(
            t.desired_for(&[1; 16], &agent).unwrap().parts(),
            vec![("c".to_string(), 1)]
        );
        agent.components = with(&[("receivers", "otlp", "m v1")]);
        assert_eq!(
            t.desired_for(&[1; 16], &agent).unwrap().parts(),
            vec![("c".to_string(), 2)]
        );
        agent.components = None;
        assert_eq!(
            t.desired_for(&[1; 16], &agent).unwrap().parts(),
            vec![("c".to_string(), 2)],
            "never reported: not skipped"
        );
    }

    #[test]
    fn hash_depends_on_every_part() {
        let a = version_hash("text/yaml", "x: 1");
        assert_ne!(a, version_hash("text/json", "x: 1"));
        assert_ne!(a, version_hash("text/yaml", "x: 2"));
        assert_eq!(a.len(), 64);
    }
}
