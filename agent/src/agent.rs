//! A simulated agent: its identity and state, the messages it sends, and how
//! it answers what the server sends. Pure logic, no I/O: [`Agent::handle`]
//! takes a ServerToAgent and returns the messages to send next, so it can be
//! tested without a server and driven over any transport (see
//! [`crate::session`]).
//!
//! What it does, following the OpAMP specification:
//!
//! - every message carries the instance uid, the next sequence number
//!   (from 0, +1 per message) and the capabilities; the first one, and the
//!   answer to `ReportFullState`, is a full report (description, health,
//!   effective config, remote-config status — each only with its capability);
//! - a remote-config offer is applied (the offered files become the effective
//!   config, status APPLIED with the offer's hash, optionally APPLYING first)
//!   or refused (FAILED with a message) as the [`OfferPolicy`] says; an offer
//!   for the hash already applied is not answered again;
//! - connection settings are remembered, each part only with its capability
//!   (AcceptsOpAMPConnectionSettings, ReportsOwnMetrics / Logs / Traces), and
//!   with ReportsConnectionSettingsStatus answered APPLIED (or FAILED, as the
//!   connection-settings [`OfferPolicy`] says) with the offer's hash; an
//!   offer with the hash last taken is ignored, as opamp-go does;
//! - `agent_identification` replaces the instance uid (and ends a
//!   `RequestInstanceUid` request);
//! - with ReportsAvailableComponents, a full report carries only the hash of
//!   the component list; `ReportAvailableComponents` is answered with the
//!   whole list (as opamp-go does);
//! - custom capabilities, when set, go with every full report;
//! - packages (AcceptsPackages) are compared by hash, the files to fetch
//!   come back as [`Reaction::downloads`], a finished download is checked
//!   and installed (or refused) by [`Agent::download_finished`], and with
//!   ReportsPackageStatuses every step is reported (see [`packages`]);
//! - a restart command restarts the agent: sequence numbers start again from
//!   0 with a full report;
//! - an `error_response` is recorded and answered with nothing.
//!
//! ```
//! use opamp_agent::agent::{Agent, AgentSettings};
//! use opamp_agent::pb;
//!
//! let mut agent = Agent::new(AgentSettings::new([7; 16]).identifying("service.name", "collector"));
//! let first = agent.full_report();
//! assert_eq!(first.sequence_num, 0);
//! let offer = pb::ServerToAgent {
//!     instance_uid: vec![7; 16],
//!     remote_config: Some(pb::AgentRemoteConfig {
//!         config: Some(opamp_agent::message::config_map([("base", b"receivers: {}".as_slice(), "text/yaml")])),
//!         config_hash: vec![1; 32],
//!     }),
//!     ..Default::default()
//! };
//! let reaction = agent.handle(&offer);
//! let status = reaction.messages[0].remote_config_status.as_ref().unwrap();
//! assert_eq!(status.status, pb::RemoteConfigStatuses::Applied as i32);
//! ```

use crate::message::{self, FullState};
use crate::{caps, pb};
use std::collections::BTreeMap;
use std::sync::Arc;

pub mod packages;
pub use packages::{Download, InstalledPackage};
use std::time::Duration;

/// Who the agent is and what it starts with.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub uid: [u8; 16],
    pub capabilities: u64,
    pub description: pb::AgentDescription,
    /// The health reported in full reports; `None`: none.
    pub health: Option<pb::ComponentHealth>,
    /// The configuration the agent runs before any offer.
    pub effective_config: Option<pb::EffectiveConfig>,
    /// Ask the server for an instance uid (`RequestInstanceUid`) until one arrives.
    pub request_uid: bool,
    /// The sequence number of the first message (0 for a new process).
    pub first_sequence_num: u64,
    pub offers: OfferPolicy,
    /// Report APPLYING before APPLIED (or FAILED).
    pub report_applying: bool,
    /// What the agent does with connection-settings offers.
    pub connection_offers: OfferPolicy,
    /// The components the agent can run (sent with ReportsAvailableComponents).
    pub available_components: Option<pb::AvailableComponents>,
    /// Custom capabilities (reverse-FQDN names); none when empty.
    pub custom_capabilities: Vec<String>,
    /// The packages the agent has when it starts, by name.
    pub packages: BTreeMap<String, InstalledPackage>,
    /// What the simulated install does with downloaded packages.
    pub package_policy: OfferPolicy,
}

impl AgentSettings {
    /// An agent with [`message::TYPICAL_CAPABILITIES`], healthy, with an
    /// empty description and no effective config, applying every offer.
    pub fn new(uid: [u8; 16]) -> AgentSettings {
        AgentSettings {
            uid,
            capabilities: message::TYPICAL_CAPABILITIES,
            description: pb::AgentDescription::default(),
            health: Some(message::health(true, "StatusOK", "")),
            effective_config: None,
            request_uid: false,
            first_sequence_num: 0,
            offers: OfferPolicy::Apply,
            report_applying: false,
            connection_offers: OfferPolicy::Apply,
            available_components: None,
            custom_capabilities: Vec::new(),
            packages: BTreeMap::new(),
            package_policy: OfferPolicy::Apply,
        }
    }

    /// Adds AcceptsPackages and ReportsPackageStatuses.
    pub fn accepts_packages(mut self) -> AgentSettings {
        self.capabilities |= caps::ACCEPTS_PACKAGES | caps::REPORTS_PACKAGE_STATUSES;
        self
    }

    /// A package the agent has from the start (the top-level one is the
    /// agent itself); `hash` is the package hash a server would offer.
    pub fn package(
        mut self,
        name: &str,
        version: &str,
        hash: &[u8],
        top_level: bool,
    ) -> AgentSettings {
        self.packages.insert(
            name.into(),
            InstalledPackage {
                version: version.into(),
                hash: hash.to_vec(),
                top_level,
            },
        );
        self
    }

    /// Sets what the simulated install does: install (`Apply`), fail with a
    /// message (`Fail`), or leave offers alone (`Ignore`).
    pub fn package_policy(mut self, policy: OfferPolicy) -> AgentSettings {
        self.package_policy = policy;
        self
    }

    /// Sets the component list and adds ReportsAvailableComponents.
    pub fn available_components(mut self, components: pb::AvailableComponents) -> AgentSettings {
        self.available_components = Some(components);
        self.capabilities |= caps::REPORTS_AVAILABLE_COMPONENTS;
        self
    }

    /// Sets the custom capabilities.
    pub fn custom_capabilities(mut self, names: &[&str]) -> AgentSettings {
        self.custom_capabilities = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// Sets the capabilities.
    pub fn capabilities(mut self, capabilities: u64) -> AgentSettings {
        self.capabilities = capabilities;
        self
    }

    /// Adds an identifying attribute (`service.name`, ...).
    pub fn identifying(mut self, key: &str, value: &str) -> AgentSettings {
        self.description
            .identifying_attributes
            .push(message::kv(key, value));
        self
    }

    /// Adds a non-identifying attribute (`host.name`, a label, ...).
    pub fn non_identifying(mut self, key: &str, value: &str) -> AgentSettings {
        self.description
            .non_identifying_attributes
            .push(message::kv(key, value));
        self
    }

    /// Sets the effective config the agent starts with.
    pub fn effective_config(mut self, config: pb::EffectiveConfig) -> AgentSettings {
        self.effective_config = Some(config);
        self
    }

    /// Sets the health reported in full reports.
    pub fn health(mut self, health: Option<pb::ComponentHealth>) -> AgentSettings {
        self.health = health;
        self
    }

    /// Sets what the agent does with remote-config offers.
    pub fn offers(mut self, policy: OfferPolicy) -> AgentSettings {
        self.offers = policy;
        self
    }

    /// Sets what the agent does with connection-settings offers.
    pub fn connection_offers(mut self, policy: OfferPolicy) -> AgentSettings {
        self.connection_offers = policy;
        self
    }

    /// Reports APPLYING before the final status of an offer.
    pub fn report_applying(mut self, on: bool) -> AgentSettings {
        self.report_applying = on;
        self
    }

    /// Asks the server for an instance uid.
    pub fn request_uid(mut self, on: bool) -> AgentSettings {
        self.request_uid = on;
        self
    }

    /// Starts counting messages from `sequence_num` (an agent that was
    /// already running).
    pub fn first_sequence_num(mut self, sequence_num: u64) -> AgentSettings {
        self.first_sequence_num = sequence_num;
        self
    }
}

/// What the agent does with a remote-config offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferPolicy {
    /// Runs the offered files: they become the effective config; APPLIED.
    Apply,
    /// Refuses: FAILED with this message; the effective config stays.
    Fail(String),
    /// Neither applies nor answers.
    Ignore,
}

/// Something that happened while handling a ServerToAgent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server asked for a full report.
    FullStateRequested,
    /// An offer was applied.
    ConfigApplied { hash: Vec<u8> },
    /// An offer was refused (by the [`OfferPolicy`]).
    ConfigFailed { hash: Vec<u8>, message: String },
    /// An offer was not acted upon.
    OfferIgnored { hash: Vec<u8>, reason: &'static str },
    /// The server asked for the whole component list.
    ComponentsRequested,
    /// The server gave the agent a new instance uid.
    NewInstanceUid { old: [u8; 16], new: [u8; 16] },
    /// `agent_identification` with a uid that is not 16 bytes (ignored).
    InvalidInstanceUid { len: usize },
    /// A restart command, carried out.
    Restarted,
    /// A restart command without AcceptsRestartCommand (ignored).
    RestartIgnored,
    /// The server answered with an error.
    ServerError {
        kind: i32,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A reply naming another instance uid (ignored).
    OtherInstanceUid { uid: Vec<u8> },
    /// Connection settings were taken (the parts the capabilities allow).
    ConnectionSettingsApplied { hash: Vec<u8> },
    /// Connection settings were refused (by the connection-settings [`OfferPolicy`]).
    ConnectionSettingsFailed { hash: Vec<u8>, message: String },
    /// Connection settings were not acted upon.
    ConnectionSettingsIgnored { hash: Vec<u8>, reason: &'static str },
    /// Packages were offered: `downloads` of them are to be fetched.
    PackagesOffered { all_hash: Vec<u8>, downloads: usize },
    /// A package offer was not acted upon.
    PackagesIgnored {
        all_hash: Vec<u8>,
        reason: &'static str,
    },
    /// An addon the server no longer offers was removed.
    PackageRemoved { name: String },
    /// A download was interrupted and will be resumed from `received` bytes.
    DownloadInterrupted {
        name: String,
        received: u64,
        reason: String,
    },
    /// A package was downloaded, checked and installed.
    PackageInstalled { name: String, version: String },
    /// A package could not be downloaded, did not match its hash, or its install failed.
    PackageFailed { name: String, message: String },
    /// A download finished after its offer was replaced: dropped.
    PackageDropped { name: String },
}

/// What to send and what happened, after one ServerToAgent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reaction {
    /// Messages to send now, in order (their sequence numbers are taken).
    pub messages: Vec<pb::AgentToServer>,
    pub events: Vec<Event>,
    /// Files to fetch (package offers), for [`Agent::download_finished`].
    pub downloads: Vec<Download>,
}

/// Counts of what the agent went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub messages: u64,
    pub full_state_requests: u64,
    pub offers_applied: u64,
    pub offers_failed: u64,
    pub restarts: u64,
    pub server_errors: u64,
    pub connection_offers: u64,
    pub components_requests: u64,
    pub packages_installed: u64,
    pub packages_failed: u64,
}

/// One simulated agent.
#[derive(Debug, Clone)]
pub struct Agent {
    uid: [u8; 16],
    sequence_num: u64,
    capabilities: u64,
    /// Shared, so that thousands of agents built from one description or one
    /// big configuration do not each hold a copy.
    description: Arc<pb::AgentDescription>,
    health: Option<pb::ComponentHealth>,
    effective_config: Option<Arc<pb::EffectiveConfig>>,
    remote_config_status: Option<pb::RemoteConfigStatus>,
    request_uid: bool,
    full_state_due: bool,
    offers: OfferPolicy,
    report_applying: bool,
    connection_offers: OfferPolicy,
    /// The connection settings taken, each part as last offered.
    connection_settings: pb::ConnectionSettingsOffers,
    connection_settings_status: Option<pb::ConnectionSettingsStatus>,
    available_components: Option<Arc<pb::AvailableComponents>>,
    custom_capabilities: Vec<String>,
    packages: BTreeMap<String, InstalledPackage>,
    package_policy: OfferPolicy,
    /// The last package offer taken.
    package_offer: Option<pb::PackagesAvailable>,
    package_statuses: Option<pb::PackageStatuses>,
    counters: Counters,
}

impl Agent {
    pub fn new(settings: AgentSettings) -> Agent {
        Agent {
            uid: settings.uid,
            sequence_num: settings.first_sequence_num,
            capabilities: settings.capabilities,
            description: Arc::new(settings.description),
            health: settings.health,
            effective_config: settings.effective_config.map(Arc::new),
            remote_config_status: None,
            request_uid: settings.request_uid,
            full_state_due: false,
            offers: settings.offers,
            report_applying: settings.report_applying,
            connection_offers: settings.connection_offers,
            connection_settings: pb::ConnectionSettingsOffers::default(),
            connection_settings_status: None,
            available_components: settings.available_components.map(Arc::new),
            custom_capabilities: settings.custom_capabilities,
            package_statuses: (!settings.packages.is_empty()).then(|| pb::PackageStatuses {
                packages: settings
                    .packages
                    .iter()
                    .map(|(name, p)| {
                        let status = pb::PackageStatus {
                            name: name.clone(),
                            agent_has_version: p.version.clone(),
                            agent_has_hash: p.hash.clone(),
                            ..Default::default()
                        };
                        (name.clone(), status)
                    })
                    .collect(),
                ..Default::default()
            }),
            packages: settings.packages,
            package_policy: settings.package_policy,
            package_offer: None,
            counters: Counters::default(),
        }
    }

    /// An agent sharing `description` and `effective_config` with others.
    pub fn with_shared(
        settings: AgentSettings,
        description: Arc<pb::AgentDescription>,
        effective_config: Option<Arc<pb::EffectiveConfig>>,
    ) -> Agent {
        Agent {
            description,
            effective_config,
            ..Agent::new(AgentSettings {
                description: pb::AgentDescription::default(),
                effective_config: None,
                ..settings
            })
        }
    }

    pub fn uid(&self) -> [u8; 16] {
        self.uid
    }

    /// The sequence number the next message will carry.
    pub fn next_sequence_num(&self) -> u64 {
        self.sequence_num
    }

    pub fn capabilities(&self) -> u64 {
        self.capabilities
    }

    pub fn description(&self) -> &pb::AgentDescription {
        &self.description
    }

    pub fn health(&self) -> Option<&pb::ComponentHealth> {
        self.health.as_ref()
    }

    /// What the agent runs: the start configuration or the last applied offer.
    pub fn effective_config(&self) -> Option<&pb::EffectiveConfig> {
        self.effective_config.as_deref()
    }

    /// The status of the last offer, as last reported.
    pub fn remote_config_status(&self) -> Option<&pb::RemoteConfigStatus> {
        self.remote_config_status.as_ref()
    }

    /// The connection settings taken: each part (opamp, own metrics, logs,
    /// traces) as last offered; `hash` is the hash of the last offer taken.
    pub fn connection_settings(&self) -> &pb::ConnectionSettingsOffers {
        &self.connection_settings
    }

    /// The status of the last connection settings, as last reported.
    pub fn connection_settings_status(&self) -> Option<&pb::ConnectionSettingsStatus> {
        self.connection_settings_status.as_ref()
    }

    /// True when the server asked for a full report that was not sent yet.
    pub fn full_state_due(&self) -> bool {
        self.full_state_due
    }

    /// The component list the agent reports.
    pub fn available_components(&self) -> Option<&pb::AvailableComponents> {
        self.available_components.as_deref()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Changes what the agent does with the next offers.
    pub fn set_offer_policy(&mut self, policy: OfferPolicy) {
        self.offers = policy;
    }

    /// Uid, next sequence number, capabilities, and the RequestInstanceUid
    /// flag while asking; takes the sequence number.
    fn base(&mut self) -> pb::AgentToServer {
        let mut m = message::heartbeat(self.uid, self.sequence_num, self.capabilities);
        if self.request_uid {
            m.flags |= caps::FLAG_REQUEST_INSTANCE_UID;
        }
        self.sequence_num += 1;
        self.counters.messages += 1;
        m
    }

    fn has(&self, capability: u64) -> bool {
        self.capabilities & capability != 0
    }

    /// The full report: the description and, with their capabilities, health,
    /// effective config and remote-config status.
    pub fn full_report(&mut self) -> pb::AgentToServer {
        self.full_state_due = false;
        let state = FullState {
            description: Some(pb::AgentDescription::clone(&self.description)),
            health: self
                .health
                .clone()
                .filter(|_| self.has(caps::REPORTS_HEALTH)),
            effective_config: self
                .effective_config
                .as_deref()
                .cloned()
                .filter(|_| self.has(caps::REPORTS_EFFECTIVE_CONFIG)),
            remote_config_status: self
                .remote_config_status
                .clone()
                .filter(|_| self.has(caps::REPORTS_REMOTE_CONFIG)),
        };
        pb::AgentToServer {
            agent_description: state.description,
            health: state.health,
            effective_config: state.effective_config,
            remote_config_status: state.remote_config_status,
            connection_settings_status: self
                .connection_settings_status
                .clone()
                .filter(|_| self.has(caps::REPORTS_CONNECTION_SETTINGS_STATUS)),
            available_components: self.components_report(false),
            package_statuses: self.package_report(),
            custom_capabilities: (!self.custom_capabilities.is_empty()).then(|| {
                pb::CustomCapabilities {
                    capabilities: self.custom_capabilities.clone(),
                }
            }),
            ..self.base()
        }
    }

    /// The component list (or only its hash), with ReportsAvailableComponents.
    fn components_report(&self, whole: bool) -> Option<pb::AvailableComponents> {
        let components = self
            .available_components
            .as_deref()
            .filter(|_| self.has(caps::REPORTS_AVAILABLE_COMPONENTS))?;
        Some(if whole {
            components.clone()
        } else {
            message::components_hash_only(components)
        })
    }

    /// Changes the component list and returns the message that reports its hash.
    pub fn set_available_components(
        &mut self,
        components: pb::AvailableComponents,
    ) -> pb::AgentToServer {
        self.available_components = Some(Arc::new(components));
        if self.full_state_due {
            return self.full_report();
        }
        pb::AgentToServer {
            available_components: self.components_report(false),
            ..self.base()
        }
    }

    /// A heartbeat or poll — or the full report, when the server asked for one.
    pub fn heartbeat(&mut self) -> pb::AgentToServer {
        if self.full_state_due {
            return self.full_report();
        }
        self.base()
    }

    /// Changes the health and returns the message that reports it.
    pub fn set_health(&mut self, health: pb::ComponentHealth) -> pb::AgentToServer {
        self.health = Some(health);
        if self.full_state_due {
            return self.full_report();
        }
        let mut m = self.base();
        if self.has(caps::REPORTS_HEALTH) {
            m.health = self.health.clone();
        }
        m
    }

    /// Changes the description and returns the message that reports it.
    pub fn set_description(&mut self, description: pb::AgentDescription) -> pb::AgentToServer {
        self.description = Arc::new(description);
        if self.full_state_due {
            return self.full_report();
        }
        pb::AgentToServer {
            agent_description: Some(pb::AgentDescription::clone(&self.description)),
            ..self.base()
        }
    }

    /// The last message: `agent_disconnect`.
    pub fn disconnect(&mut self) -> pb::AgentToServer {
        pb::AgentToServer {
            agent_disconnect: Some(pb::AgentDisconnect {}),
            ..self.base()
        }
    }

    /// Takes in one ServerToAgent (a reply or a push) and says what to send.
    pub fn handle(&mut self, reply: &pb::ServerToAgent) -> Reaction {
        let mut reaction = Reaction::default();
        if !reply.instance_uid.is_empty() && reply.instance_uid != self.uid {
            reaction.events.push(Event::OtherInstanceUid {
                uid: reply.instance_uid.clone(),
            });
            return reaction;
        }
        if let Some(error) = &reply.error_response {
            self.counters.server_errors += 1;
            let retry_after = error.details.as_ref().map(
                |pb::server_error_response::Details::RetryInfo(info)| {
                    Duration::from_nanos(info.retry_after_nanoseconds)
                },
            );
            reaction.events.push(Event::ServerError {
                kind: error.r#type,
                message: error.error_message.clone(),
                retry_after,
            });
            return reaction;
        }
        if let Some(identification) = &reply.agent_identification {
            match <[u8; 16]>::try_from(identification.new_instance_uid.as_slice()) {
                Ok(new) => {
                    reaction
                        .events
                        .push(Event::NewInstanceUid { old: self.uid, new });
                    self.uid = new;
                    self.request_uid = false;
                }
                Err(_) => reaction.events.push(Event::InvalidInstanceUid {
                    len: identification.new_instance_uid.len(),
                }),
            }
        }
        if reply.command.is_some() {
            // A command goes alone: nothing else in the message counts.
            if self.has(caps::ACCEPTS_RESTART_COMMAND) {
                self.counters.restarts += 1;
                self.sequence_num = 0;
                reaction.events.push(Event::Restarted);
                reaction.messages.push(self.full_report());
            } else {
                reaction.events.push(Event::RestartIgnored);
            }
            return reaction;
        }
        if reply.flags & caps::FLAG_REPORT_FULL_STATE != 0 {
            self.counters.full_state_requests += 1;
            self.full_state_due = true;
            reaction.events.push(Event::FullStateRequested);
        }
        let components_asked = reply.flags & caps::FLAG_REPORT_AVAILABLE_COMPONENTS != 0;
        if components_asked {
            self.counters.components_requests += 1;
            reaction.events.push(Event::ComponentsRequested);
        }
        let mut changed = false;
        if let Some(offer) = &reply.remote_config {
            changed = self.take_offer(offer, &mut reaction);
        }
        let connection_changed = reply
            .connection_settings
            .as_ref()
            .is_some_and(|offer| self.take_connection_settings(offer, &mut reaction));
        let packages_changed = reply
            .packages_available
            .as_ref()
            .is_some_and(|offer| self.take_packages(offer, &mut reaction))
            && self.has(caps::REPORTS_PACKAGE_STATUSES);
        if self.full_state_due {
            let mut m = self.full_report();
            if components_asked {
                m.available_components = self.components_report(true);
            }
            reaction.messages.push(m);
        } else if changed || connection_changed || components_asked || packages_changed {
            let mut m = self.base();
            if components_asked {
                m.available_components = self.components_report(true);
            }
            if connection_changed && self.has(caps::REPORTS_CONNECTION_SETTINGS_STATUS) {
                m.connection_settings_status = self.connection_settings_status.clone();
            }
            if changed && self.has(caps::REPORTS_REMOTE_CONFIG) {
                m.remote_config_status = self.remote_config_status.clone();
            }
            if packages_changed {
                m.package_statuses = self.package_report();
            }
            if changed && self.has(caps::REPORTS_EFFECTIVE_CONFIG) {
                m.effective_config = self.effective_config.as_deref().cloned();
            }
            if m.remote_config_status.is_some()
                || m.effective_config.is_some()
                || m.connection_settings_status.is_some()
                || m.available_components.is_some()
                || m.package_statuses.is_some()
            {
                reaction.messages.push(m);
            } else {
                // Nothing to report: give the sequence number back.
                self.sequence_num -= 1;
                self.counters.messages -= 1;
            }
        }
        reaction
    }

    /// Takes or refuses connection settings; true when there is a status to report.
    fn take_connection_settings(
        &mut self,
        offer: &pb::ConnectionSettingsOffers,
        reaction: &mut Reaction,
    ) -> bool {
        let hash = offer.hash.clone();
        let ignore = |reason| Event::ConnectionSettingsIgnored {
            hash: hash.clone(),
            reason,
        };
        if !hash.is_empty() && hash == self.connection_settings.hash {
            reaction.events.push(ignore("this hash was already taken"));
            return false;
        }
        let error = match &self.connection_offers {
            OfferPolicy::Ignore => {
                reaction
                    .events
                    .push(ignore("the offer policy ignores offers"));
                return false;
            }
            OfferPolicy::Apply => None,
            OfferPolicy::Fail(message) => Some(message.clone()),
        };
        self.counters.connection_offers += 1;
        let status = match error {
            None => {
                // Each part only with its capability; an absent part is unchanged.
                let taken = &mut self.connection_settings;
                let gated = |capability: u64| self.capabilities & capability != 0;
                if gated(caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS) && offer.opamp.is_some() {
                    taken.opamp = offer.opamp.clone();
                }
                if gated(caps::REPORTS_OWN_METRICS) && offer.own_metrics.is_some() {
                    taken.own_metrics = offer.own_metrics.clone();
                }
                if gated(caps::REPORTS_OWN_LOGS) && offer.own_logs.is_some() {
                    taken.own_logs = offer.own_logs.clone();
                }
                if gated(caps::REPORTS_OWN_TRACES) && offer.own_traces.is_some() {
                    taken.own_traces = offer.own_traces.clone();
                }
                taken.hash = hash.clone();
                reaction
                    .events
                    .push(Event::ConnectionSettingsApplied { hash: hash.clone() });
                message::connection_settings_status(
                    &hash,
                    pb::ConnectionSettingsStatuses::Applied,
                    "",
                )
            }
            Some(error) => {
                reaction.events.push(Event::ConnectionSettingsFailed {
                    hash: hash.clone(),
                    message: error.clone(),
                });
                message::connection_settings_status(
                    &hash,
                    pb::ConnectionSettingsStatuses::Failed,
                    &error,
                )
            }
        };
        self.connection_settings_status = Some(status);
        self.has(caps::REPORTS_CONNECTION_SETTINGS_STATUS)
    }

    /// Applies or refuses an offer; true when the state changed.
    fn take_offer(&mut self, offer: &pb::AgentRemoteConfig, reaction: &mut Reaction) -> bool {
        let hash = offer.config_hash.clone();
        let ignore = |reason| Event::OfferIgnored {
            hash: hash.clone(),
            reason,
        };
        if !self.has(caps::ACCEPTS_REMOTE_CONFIG) {
            reaction
                .events
                .push(ignore("the agent does not have AcceptsRemoteConfig"));
            return false;
        }
        let applied = pb::RemoteConfigStatuses::Applied as i32;
        if self
            .remote_config_status
            .as_ref()
            .is_some_and(|s| s.last_remote_config_hash == hash && s.status == applied)
        {
            reaction.events.push(ignore("this hash is already applied"));
            return false;
        }
        let outcome = match &self.offers {
            OfferPolicy::Ignore => {
                reaction
                    .events
                    .push(ignore("the offer policy ignores offers"));
                return false;
            }
            OfferPolicy::Apply => Ok(()),
            OfferPolicy::Fail(message) => Err(message.clone()),
        };
        if self.report_applying && self.has(caps::REPORTS_REMOTE_CONFIG) {
            let status =
                message::remote_config_status(&hash, pb::RemoteConfigStatuses::Applying, "");
            self.remote_config_status = Some(status.clone());
            let m = pb::AgentToServer {
                remote_config_status: Some(status),
                ..self.base()
            };
            reaction.messages.push(m);
        }
        match outcome {
            Ok(()) => {
                self.counters.offers_applied += 1;
                self.effective_config = Some(Arc::new(pb::EffectiveConfig {
                    config_map: offer.config.clone(),
                }));
                self.remote_config_status = Some(message::remote_config_status(
                    &hash,
                    pb::RemoteConfigStatuses::Applied,
                    "",
                ));
                reaction.events.push(Event::ConfigApplied { hash });
            }
            Err(error) => {
                self.counters.offers_failed += 1;
                self.remote_config_status = Some(message::remote_config_status(
                    &hash,
                    pb::RemoteConfigStatuses::Failed,
                    &error,
                ));
                reaction.events.push(Event::ConfigFailed {
                    hash,
                    message: error,
                });
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
