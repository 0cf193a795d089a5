//! Packages on the agent side, as the OpAMP specification and opamp-go's
//! package syncer handle them; pure logic, the downloads themselves are
//! [`crate::download`]'s.
//!
//! - `packages_available` is taken only with AcceptsPackages; an offer whose
//!   `all_packages_hash` was already synced (or is being synced) is ignored;
//! - a package whose hash equals the one the agent has is kept (INSTALLED);
//!   every other one becomes INSTALL_PENDING and a [`Download`] in the
//!   [`Reaction`];
//! - an addon the agent has that the offer no longer lists is removed; the
//!   top-level package is never removed;
//! - a finished download is checked against the offered SHA-256, then the
//!   simulated install follows the package [`OfferPolicy`] (INSTALLED, or
//!   INSTALL_FAILED with its message);
//! - with ReportsPackageStatuses every change is reported (DOWNLOADING with
//!   progress while a file arrives), each report carrying the offer's
//!   `all_packages_hash` as `server_provided_all_packages_hash`.

use super::{Agent, Event, OfferPolicy, Reaction};
use crate::{caps, pb};
use sha2::{Digest, Sha256};

/// A file the agent must fetch: what [`crate::session::Session`] downloads
/// and hands back to [`Agent::download_finished`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// The package name (the key of `PackagesAvailable.packages`).
    pub name: String,
    pub version: String,
    /// The package hash the server offered.
    pub package_hash: Vec<u8>,
    pub url: String,
    /// The SHA-256 the file must have.
    pub content_hash: Vec<u8>,
    pub signature: Vec<u8>,
    /// Extra request headers the server asked for.
    pub headers: Vec<(String, String)>,
}

/// A package the agent has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    pub version: String,
    /// The package hash (as the server offered it).
    pub hash: Vec<u8>,
    /// Top-level (the agent itself) or addon.
    pub top_level: bool,
}

const INSTALLED: i32 = pb::PackageStatusEnum::Installed as i32;
const PENDING: i32 = pb::PackageStatusEnum::InstallPending as i32;
const INSTALLING: i32 = pb::PackageStatusEnum::Installing as i32;
const FAILED: i32 = pb::PackageStatusEnum::InstallFailed as i32;
const DOWNLOADING: i32 = pb::PackageStatusEnum::Downloading as i32;

impl Agent {
    /// The packages the agent has, by name.
    pub fn packages(&self) -> &std::collections::BTreeMap<String, InstalledPackage> {
        &self.packages
    }

    /// The package statuses, as last reported (or to be reported).
    pub fn package_statuses(&self) -> Option<&pb::PackageStatuses> {
        self.package_statuses.as_ref()
    }

    /// Changes what the simulated install does with the next packages.
    pub fn set_package_policy(&mut self, policy: OfferPolicy) {
        self.package_policy = policy;
    }

    /// The package statuses for a message, with ReportsPackageStatuses.
    pub(super) fn package_report(&self) -> Option<pb::PackageStatuses> {
        self.package_statuses
            .clone()
            .filter(|_| self.has(caps::REPORTS_PACKAGE_STATUSES))
    }

    /// Takes an offer of packages; true when the statuses changed.
    pub(super) fn take_packages(
        &mut self,
        offer: &pb::PackagesAvailable,
        reaction: &mut Reaction,
    ) -> bool {
        let all_hash = offer.all_packages_hash.clone();
        let ignore = |reason| Event::PackagesIgnored {
            all_hash: all_hash.clone(),
            reason,
        };
        if !self.has(caps::ACCEPTS_PACKAGES) {
            reaction
                .events
                .push(ignore("the agent does not have AcceptsPackages"));
            return false;
        }
        if self.package_statuses.as_ref().is_some_and(|s| {
            !all_hash.is_empty() && s.server_provided_all_packages_hash == all_hash
        }) {
            reaction
                .events
                .push(ignore("this all_packages_hash was already taken"));
            return false;
        }
        if self.package_policy == OfferPolicy::Ignore {
            reaction
                .events
                .push(ignore("the package policy ignores offers"));
            return false;
        }
        self.package_offer = Some(offer.clone());
        let mut statuses = pb::PackageStatuses {
            server_provided_all_packages_hash: all_hash.clone(),
            ..Default::default()
        };
        let mut downloads = 0;
        for (name, available) in &offer.packages {
            let has = self.packages.get(name);
            let mut status = pb::PackageStatus {
                name: name.clone(),
                agent_has_version: has.map(|p| p.version.clone()).unwrap_or_default(),
                agent_has_hash: has.map(|p| p.hash.clone()).unwrap_or_default(),
                server_offered_version: available.version.clone(),
                server_offered_hash: available.hash.clone(),
                status: INSTALLED,
                ..Default::default()
            };
            if has.is_none_or(|p| p.hash != available.hash) {
                status.status = PENDING;
                let file = available.file.clone().unwrap_or_default();
                reaction.downloads.push(Download {
                    name: name.clone(),
                    version: available.version.clone(),
                    package_hash: available.hash.clone(),
                    url: file.download_url,
                    content_hash: file.content_hash,
                    signature: file.signature,
                    headers: file
                        .headers
                        .map(|h| h.headers.into_iter().map(|h| (h.key, h.value)).collect())
                        .unwrap_or_default(),
                });
                downloads += 1;
            }
            statuses.packages.insert(name.clone(), status);
        }
        // Addons no longer offered go; the agent itself stays.
        let removed: Vec<String> = self
            .packages
            .iter()
            .filter(|(name, p)| !p.top_level && !offer.packages.contains_key(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in removed {
            self.packages.remove(&name);
            reaction.events.push(Event::PackageRemoved { name });
        }
        for (name, p) in &self.packages {
            statuses
                .packages
                .entry(name.clone())
                .or_insert_with(|| pb::PackageStatus {
                    name: name.clone(),
                    agent_has_version: p.version.clone(),
                    agent_has_hash: p.hash.clone(),
                    status: INSTALLED,
                    ..Default::default()
                });
        }
        self.package_statuses = Some(statuses);
        reaction.events.push(Event::PackagesOffered {
            all_hash,
            downloads,
        });
        true
    }

    /// Reports download progress of package `name`: `received` of `total`
    /// bytes (total unknown: 0) at `bytes_per_second`. The message to send,
    /// with ReportsPackageStatuses.
    pub fn download_progress(
        &mut self,
        name: &str,
        received: u64,
        total: u64,
        bytes_per_second: f64,
    ) -> Option<pb::AgentToServer> {
        let status = self
            .package_statuses
            .as_mut()
            .and_then(|s| s.packages.get_mut(name))?;
        status.status = DOWNLOADING;
        status.download_details = Some(pb::PackageDownloadDetails {
            download_percent: if total == 0 {
                0.0
            } else {
                received as f64 * 100.0 / total as f64
            },
            download_bytes_per_second: bytes_per_second,
        });
        self.status_message()
    }

    /// Takes the outcome of a download (the file, or why it could not be
    /// fetched): checks its SHA-256 and installs it as the package policy
    /// says. A download for an offer that was replaced since is dropped.
    pub fn download_finished(
        &mut self,
        download: &Download,
        outcome: Result<Vec<u8>, String>,
    ) -> Reaction {
        let mut reaction = Reaction::default();
        let current = self
            .package_offer
            .as_ref()
            .and_then(|offer| offer.packages.get(&download.name))
            .is_some_and(|p| p.hash == download.package_hash);
        if !current {
            reaction.events.push(Event::PackageDropped {
                name: download.name.clone(),
            });
            return reaction;
        }
        let installed = outcome.and_then(|bytes| {
            let digest = Sha256::digest(&bytes);
            if digest.as_slice() != download.content_hash.as_slice() {
                return Err(format!(
                    "the downloaded file's SHA-256 is {}, the server declared {}",
                    hex(digest.as_slice()),
                    hex(&download.content_hash)
                ));
            }
            if self.report_applying {
                self.set_package_status(&download.name, INSTALLING, "");
                if let Some(m) = self.status_message() {
                    reaction.messages.push(m);
                }
            }
            match &self.package_policy {
                OfferPolicy::Fail(message) => Err(message.clone()),
                OfferPolicy::Apply | OfferPolicy::Ignore => Ok(()),
            }
        });
        match installed {
            Ok(()) => {
                let top_level = self
                    .package_offer
                    .as_ref()
                    .and_then(|offer| offer.packages.get(&download.name))
                    .is_none_or(|p| p.r#type == pb::PackageType::TopLevel as i32);
                self.packages.insert(
                    download.name.clone(),
                    InstalledPackage {
                        version: download.version.clone(),
                        hash: download.package_hash.clone(),
                        top_level,
                    },
                );
                if let Some(status) = self
                    .package_statuses
                    .as_mut()
                    .and_then(|s| s.packages.get_mut(&download.name))
                {
                    status.agent_has_version = download.version.clone();
                    status.agent_has_hash = download.package_hash.clone();
                }
                self.set_package_status(&download.name, INSTALLED, "");
                self.counters.packages_installed += 1;
                reaction.events.push(Event::PackageInstalled {
                    name: download.name.clone(),
                    version: download.version.clone(),
                });
            }
            Err(message) => {
                self.set_package_status(&download.name, FAILED, &message);
                self.counters.packages_failed += 1;
                reaction.events.push(Event::PackageFailed {
                    name: download.name.clone(),
                    message,
                });
            }
        }
        if let Some(m) = self.status_message() {
            reaction.messages.push(m);
        }
        reaction
    }

    fn set_package_status(&mut self, name: &str, status: i32, error: &str) {
        if let Some(entry) = self
            .package_statuses
            .as_mut()
            .and_then(|s| s.packages.get_mut(name))
        {
            entry.status = status;
            entry.error_message = error.into();
            entry.download_details = None;
        }
    }

    /// A message carrying the package statuses (the full report when one is due).
    fn status_message(&mut self) -> Option<pb::AgentToServer> {
        if !self.has(caps::REPORTS_PACKAGE_STATUSES) {
            return None;
        }
        if self.full_state_due {
            return Some(self.full_report());
        }
        Some(pb::AgentToServer {
            package_statuses: self.package_statuses.clone(),
            ..self.base()
        })
    }
}

/// Lowercase hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
