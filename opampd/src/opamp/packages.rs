//! Packages offered to agents (`PackagesAvailable`) and what they report
//! (`PackageStatuses`).
//!
//! Rules:
//!
//! - a package's hash is a SHA-256 over its name, version, type and file
//!   hash; the set's `all_packages_hash` a SHA-256 over the names and hashes
//!   of its packages in name order: the same packages always give the same
//!   hashes, whatever their URLs;
//! - an agent gets an offer only with AcceptsPackages, and only when a
//!   package target covers it ([`PackageTargets`], built from package
//!   rollouts); the file is the one for the agent's `os.type` / `host.arch`;
//! - never offered again: a set the agent reports having taken
//!   (`server_provided_all_packages_hash`) or whose every package it reports
//!   installed (`agent_has_hash`); otherwise once per connection (a retried
//!   message, a sequence gap or new capabilities offer it again);
//! - the reported statuses are kept per agent (stored as JSON, so a restart
//!   of opampd does not offer again what an agent took) and shown in the API.

use crate::selector::{AgentView, Selector};
use opamp_proto::api;
use opamp_proto::caps::ACCEPTS_PACKAGES;
use opamp_proto::pb;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Attribute keys that name an agent's platform.
pub const OS_KEY: &str = "os.type";
pub const ARCH_KEY: &str = "host.arch";
/// The platform word that matches every `os.type` or `host.arch`.
pub const ANY: &str = "any";

/// One downloadable file of a package version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// `linux`, `windows`, … or [`ANY`].
    pub os: String,
    /// `amd64`, `arm64`, … or [`ANY`].
    pub arch: String,
    pub url: String,
    /// SHA-256 of the file.
    pub content_hash: [u8; 32],
    pub signature: Vec<u8>,
}

/// A package version with its files, one per platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageVersion {
    pub name: String,
    pub version: String,
    /// The agent itself (true) or an addon.
    pub top_level: bool,
    pub files: Vec<PackageFile>,
}

impl PackageVersion {
    /// The file for an agent seen as `view`: its exact platform first, then
    /// one with [`ANY`] in place of the OS, the architecture or both.
    pub fn file_for(&self, view: &AgentView) -> Option<&PackageFile> {
        let os = view.values.get(OS_KEY).map(String::as_str).unwrap_or("");
        let arch = view.values.get(ARCH_KEY).map(String::as_str).unwrap_or("");
        let wanted = [(os, arch), (ANY, arch), (os, ANY), (ANY, ANY)];
        wanted.iter().find_map(|(o, a)| {
            self.files
                .iter()
                .find(|f| f.os == *o && f.arch == *a && !o.is_empty() && !a.is_empty())
        })
    }
}

/// A package rolled out to agents: the version the released agents get,
/// the one the others keep getting.
#[derive(Debug, Clone)]
pub struct PackageTarget {
    pub selector: Selector,
    pub current: Arc<PackageVersion>,
    /// The agents released so far; `None`: every matching agent.
    pub released: Option<HashSet<[u8; 16]>>,
    pub previous: Option<Arc<PackageVersion>>,
}

/// The package targets, replaced whole when a package rollout changes.
#[derive(Default)]
pub struct PackageTargets {
    epoch: AtomicU64,
    targets: RwLock<Arc<Vec<PackageTarget>>>,
}

impl PackageTargets {
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn replace(&self, mut targets: Vec<PackageTarget>) {
        targets.sort_by(|a, b| a.current.name.cmp(&b.current.name));
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(targets);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn snapshot(&self) -> Arc<Vec<PackageTarget>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The packages an agent seen as `view` should have; `None` when none
    /// (no target covers it, or no file fits its platform).
    pub fn desired_for(&self, uid: &[u8; 16], view: &AgentView) -> Option<Arc<PackageSet>> {
        let targets = self.snapshot();
        let mut chosen = Vec::new();
        for target in targets.iter() {
            if !target.selector.matches(view) {
                continue;
            }
            let version = match &target.released {
                Some(released) if !released.contains(uid) => target.previous.as_ref(),
                _ => Some(&target.current),
            };
            if let Some(file) = version.and_then(|v| v.file_for(view).map(|f| (v, f))) {
                chosen.push((Arc::clone(file.0), file.1.clone()));
            }
        }
        if chosen.is_empty() {
            return None;
        }
        Some(Arc::new(PackageSet::new(chosen)))
    }
}

/// The packages one agent should have, as offered.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageSet {
    pub all_hash: [u8; 32],
    /// Name → (version, package hash).
    pub packages: BTreeMap<String, (String, [u8; 32])>,
    pub message: pb::PackagesAvailable,
}

impl PackageSet {
    /// The set of `(version, the file for the agent)` pairs; one per name.
    pub fn new(chosen: Vec<(Arc<PackageVersion>, PackageFile)>) -> PackageSet {
        let mut packages = BTreeMap::new();
        let mut message = pb::PackagesAvailable::default();
        for (version, file) in chosen {
            let hash = package_hash(
                &version.name,
                &version.version,
                version.top_level,
                &file.content_hash,
            );
            packages.insert(version.name.clone(), (version.version.clone(), hash));
            let r#type = if version.top_level {
                pb::PackageType::TopLevel
            } else {
                pb::PackageType::Addon
            };
            message.packages.insert(
                version.name.clone(),
                pb::PackageAvailable {
                    r#type: r#type as i32,
                    version: version.version.clone(),
                    file: Some(pb::DownloadableFile {
                        download_url: file.url.clone(),
                        content_hash: file.content_hash.to_vec(),
                        signature: file.signature.clone(),
                        headers: None,
                    }),
                    hash: hash.to_vec(),
                },
            );
        }
        let all_hash = all_packages_hash(packages.iter().map(|(n, (_, h))| (n.as_str(), h)));
        message.all_packages_hash = all_hash.to_vec();
        PackageSet {
            all_hash,
            packages,
            message,
        }
    }
}

/// SHA-256 over a package's name, version, type and file hash.
pub fn package_hash(name: &str, version: &str, top_level: bool, content_hash: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [name.as_bytes(), version.as_bytes(), content_hash] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update([u8::from(top_level)]);
    hash.finalize().into()
}

/// SHA-256 over `(name, package hash)` pairs in name order.
pub fn all_packages_hash<'a>(packages: impl Iterator<Item = (&'a str, &'a [u8; 32])>) -> [u8; 32] {
    let mut sorted: Vec<_> = packages.collect();
    sorted.sort();
    let mut hash = Sha256::new();
    for (name, package) in sorted {
        hash.update((name.len() as u64).to_be_bytes());
        hash.update(name.as_bytes());
        hash.update(package);
    }
    hash.finalize().into()
}

/// What one agent was offered and reported.
#[derive(Debug, Clone, Default)]
pub struct AgentState {
    /// `all_packages_hash` offered on the current connection.
    offered: Option<[u8; 32]>,
    /// The last `server_provided_all_packages_hash` reported.
    reported_all_hash: Vec<u8>,
    /// Name → `agent_has_hash`, as last reported.
    installed: BTreeMap<String, Vec<u8>>,
    /// The statuses as last reported (JSON, [`statuses_json`]).
    reported: Option<String>,
}

impl AgentState {
    /// The state kept in the agent's stored statuses (JSON, [`statuses_json`]).
    pub fn from_json(stored: Option<&str>) -> AgentState {
        let Some(value) = stored.and_then(|t| serde_json::from_str::<Value>(t).ok()) else {
            return AgentState::default();
        };
        let hex_of = |v: &Value| v.as_str().and_then(|h| hex::decode(h).ok());
        AgentState {
            reported: stored.map(str::to_string),
            offered: None,
            reported_all_hash: hex_of(&value["all_packages_hash"]).unwrap_or_default(),
            installed: value["packages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p["name"].as_str()?.to_string(),
                        hex_of(&p["agent_has_hash"])?,
                    ))
                })
                .collect(),
        }
    }

    /// The statuses as last reported (JSON, [`statuses_json`]).
    pub fn reported(&self) -> Option<&str> {
        self.reported.as_deref()
    }

    /// Forgets the offer made on this connection (it may not have arrived).
    pub fn forget_offer(&mut self) {
        self.offered = None;
    }

    /// The `all_packages_hash` offered on the current connection.
    pub fn offered(&self) -> Option<[u8; 32]> {
        self.offered
    }

    /// Takes the offer made on the current connection from a shared session record.
    pub fn set_offered(&mut self, offered: Option<[u8; 32]>) {
        self.offered = offered;
    }

    /// The offer to make now, if any (and records it).
    pub fn take_offer(
        &mut self,
        desired: Option<&PackageSet>,
        capabilities: u64,
    ) -> Option<pb::PackagesAvailable> {
        if capabilities & ACCEPTS_PACKAGES == 0 {
            return None;
        }
        let desired = desired?;
        if self.reported_all_hash == desired.all_hash || self.offered == Some(desired.all_hash) {
            return None;
        }
        let installed = desired
            .packages
            .iter()
            .all(|(name, (_, hash))| self.installed.get(name).is_some_and(|h| h[..] == hash[..]));
        if installed {
            return None;
        }
        self.offered = Some(desired.all_hash);
        Some(desired.message.clone())
    }

    /// Takes in reported statuses; the JSON to store.
    pub fn record(&mut self, statuses: &pb::PackageStatuses) -> String {
        self.reported_all_hash = statuses.server_provided_all_packages_hash.clone();
        self.installed = statuses
            .packages
            .iter()
            .filter(|(_, p)| !p.agent_has_hash.is_empty())
            .map(|(name, p)| (name.clone(), p.agent_has_hash.clone()))
            .collect();
        let json = statuses_json(statuses).to_string();
        self.reported = Some(json.clone());
        json
    }
}

/// The names of PackageStatusEnum values, as the API shows them.
pub fn status_name(code: i32) -> &'static str {
    match code {
        0 => "installed",
        1 => "install_pending",
        2 => "installing",
        3 => "install_failed",
        4 => "downloading",
        _ => "unknown",
    }
}

/// Reported statuses as stored (and shown by [`api_state`]).
pub fn statuses_json(statuses: &pb::PackageStatuses) -> Value {
    let packages: Vec<Value> = statuses
        .packages
        .values()
        .map(|p| {
            let mut v = json!({
                "name": p.name,
                "status": status_name(p.status),
                "agent_has_version": p.agent_has_version,
                "agent_has_hash": hex::encode(&p.agent_has_hash),
                "server_offered_version": p.server_offered_version,
                "server_offered_hash": hex::encode(&p.server_offered_hash),
                "error": p.error_message,
            });
            if let Some(details) = &p.download_details {
                v["download_percent"] = json!(details.download_percent);
                v["download_bytes_per_second"] = json!(details.download_bytes_per_second);
            }
            v
        })
        .collect();
    json!({
        "all_packages_hash": hex::encode(&statuses.server_provided_all_packages_hash),
        "error": statuses.error_message,
        "packages": packages,
    })
}

/// The API view of stored statuses; `None` when the agent never reported any.
pub fn api_state(stored: Option<&str>) -> Option<api::PackageStatuses> {
    let value: Value = serde_json::from_str(stored?).ok()?;
    let text = |v: &Value| v.as_str().filter(|t| !t.is_empty()).map(str::to_string);
    Some(api::PackageStatuses {
        all_packages_hash: text(&value["all_packages_hash"]),
        error: text(&value["error"]),
        packages: value["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| api::PackageStatus {
                name: p["name"].as_str().unwrap_or_default().to_string(),
                status: p["status"].as_str().unwrap_or("unknown").to_string(),
                agent_has_version: text(&p["agent_has_version"]),
                agent_has_hash: text(&p["agent_has_hash"]),
                server_offered_version: text(&p["server_offered_version"]),
                server_offered_hash: text(&p["server_offered_hash"]),
                error: text(&p["error"]),
                download_percent: p["download_percent"].as_f64(),
                download_bytes_per_second: p["download_bytes_per_second"].as_f64(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, version: &str, files: &[(&str, &str, u8)]) -> Arc<PackageVersion> {
        Arc::new(PackageVersion {
            name: name.into(),
            version: version.into(),
            top_level: true,
            files: files
                .iter()
                .map(|(os, arch, hash)| PackageFile {
                    os: os.to_string(),
                    arch: arch.to_string(),
                    url: format!("https://example.com/{name}-{version}-{os}-{arch}.tar.gz"),
                    content_hash: [*hash; 32],
                    signature: b"sig".to_vec(),
                })
                .collect(),
        })
    }

    fn view(os: &str, arch: &str) -> AgentView {
        AgentView {
            values: [
                (OS_KEY.to_string(), os.to_string()),
                (ARCH_KEY.to_string(), arch.to_string()),
            ]
            .into(),
            components: None,
        }
    }

    fn targets(released: Option<HashSet<[u8; 16]>>) -> PackageTargets {
        let t = PackageTargets::default();
        t.replace(vec![PackageTarget {
            selector: Selector::parse("").unwrap(),
            current: version(
                "otelcol",
                "0.120.0",
                &[
                    ("linux", "amd64", 1),
                    ("linux", "arm64", 2),
                    ("windows", ANY, 3),
                ],
            ),
            released,
            previous: Some(version("otelcol", "0.119.0", &[(ANY, ANY, 9)])),
        }]);
        t
    }

    #[test]
    fn each_platform_gets_its_file_and_hashes_are_deterministic() {
        let t = targets(None);
        let amd = t.desired_for(&[1; 16], &view("linux", "amd64")).unwrap();
        let arm = t.desired_for(&[1; 16], &view("linux", "arm64")).unwrap();
        let win = t.desired_for(&[1; 16], &view("windows", "amd64")).unwrap();
        let file = |s: &PackageSet| {
            s.message.packages["otelcol"]
                .file
                .clone()
                .unwrap()
                .content_hash
        };
        assert_eq!((file(&amd)[0], file(&arm)[0], file(&win)[0]), (1, 2, 3));
        assert_ne!(amd.all_hash, arm.all_hash);
        assert_eq!(
            amd,
            targets(None)
                .desired_for(&[2; 16], &view("linux", "amd64"))
                .unwrap()
        );
        assert_eq!(amd.message.all_packages_hash, amd.all_hash.to_vec());
        assert!(t.desired_for(&[1; 16], &view("darwin", "arm64")).is_none());
    }

    #[test]
    fn agents_not_released_keep_the_previous_version() {
        let t = targets(Some([[1; 16]].into()));
        let released = t.desired_for(&[1; 16], &view("linux", "amd64")).unwrap();
        let waiting = t.desired_for(&[2; 16], &view("linux", "amd64")).unwrap();
        assert_eq!(released.packages["otelcol"].0, "0.120.0");
        assert_eq!(waiting.packages["otelcol"].0, "0.119.0");
    }

    #[test]
    fn an_offer_goes_once_per_connection_and_never_when_taken_or_installed() {
        let t = targets(None);
        let set = t.desired_for(&[1; 16], &view("linux", "amd64")).unwrap();
        let mut state = AgentState::default();
        assert!(
            state.take_offer(Some(&set), 0).is_none(),
            "needs AcceptsPackages"
        );
        assert!(state.take_offer(Some(&set), ACCEPTS_PACKAGES).is_some());
        assert!(state.take_offer(Some(&set), ACCEPTS_PACKAGES).is_none());
        state.forget_offer();
        assert!(state.take_offer(Some(&set), ACCEPTS_PACKAGES).is_some());

        // Reported as taken: never again, even after a restart of opampd.
        let (_, hash) = set.packages["otelcol"];
        let statuses = pb::PackageStatuses {
            packages: [(
                "otelcol".to_string(),
                pb::PackageStatus {
                    name: "otelcol".into(),
                    agent_has_version: "0.120.0".into(),
                    agent_has_hash: hash.to_vec(),
                    status: pb::PackageStatusEnum::Installed as i32,
                    ..Default::default()
                },
            )]
            .into(),
            server_provided_all_packages_hash: set.all_hash.to_vec(),
            error_message: String::new(),
        };
        let stored = state.record(&statuses);
        let mut restarted = AgentState::from_json(Some(&stored));
        assert!(restarted.take_offer(Some(&set), ACCEPTS_PACKAGES).is_none());

        // Installed by hash, whatever set it came with: not offered.
        let mut other = AgentState::default();
        other.record(&pb::PackageStatuses {
            server_provided_all_packages_hash: vec![7; 32],
            ..statuses.clone()
        });
        assert!(other.take_offer(Some(&set), ACCEPTS_PACKAGES).is_none());

        let shown = api_state(Some(&stored)).unwrap();
        assert_eq!(shown.packages[0].status, "installed");
        assert_eq!(
            shown.packages[0].agent_has_version.as_deref(),
            Some("0.120.0")
        );
    }
}
