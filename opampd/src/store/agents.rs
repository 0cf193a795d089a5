//! Agent records: the patches sessions queue, connection events, stored
//! rows and list queries. Backend-neutral; the SQL lives in the backends.

use crate::selector::Selector;

/// A change to one agent's row. `None` fields are left as they are.
#[derive(Debug, Default, Clone)]
pub struct AgentPatch {
    pub uid: String,
    pub status: Option<&'static str>,
    pub transport: Option<&'static str>,
    pub capabilities: Option<u64>,
    /// JSON objects.
    pub identifying: Option<String>,
    pub non_identifying: Option<String>,
    pub health: Option<String>,
    pub effective_config: Option<String>,
    pub effective_config_hash: Option<String>,
    pub remote_status: Option<String>,
    pub sequence_num: Option<u64>,
    pub last_seen: Option<i64>,
    pub remote_addr: Option<String>,
    /// JSON: what the server last offered (name → version, hash).
    pub offered: Option<String>,
    /// JSON: connection settings offered and reported (`opamp::connection`).
    pub connection_settings: Option<String>,
    /// JSON: the package statuses the agent reported (`opamp::packages`).
    pub package_statuses: Option<String>,
    /// Available components and custom capabilities (rare: boxed, so a
    /// heartbeat's patch stays small).
    pub components: Option<Box<ComponentsPatch>>,
    /// The client certificate's fingerprint: stored once, never replaced.
    pub cert_fingerprint: Option<String>,
}

/// A change to an agent's available components and custom capabilities.
#[derive(Debug, Default, Clone)]
pub struct ComponentsPatch {
    /// Hex hash of the agent's component list (held in `component_sets`).
    pub hash: Option<String>,
    /// A component list opampd did not hold yet, to store.
    pub set: Option<std::sync::Arc<crate::components::ComponentSet>>,
    /// JSON array of the agent's custom capabilities.
    pub custom_capabilities: Option<String>,
    /// The size of a reported list that was too big to keep (not stored;
    /// turned into a `not_stored` event).
    pub too_big: Option<usize>,
}

impl AgentPatch {
    pub fn new(uid: &str) -> Self {
        AgentPatch {
            uid: uid.to_string(),
            ..Default::default()
        }
    }

    /// Folds a newer patch into this one.
    pub fn merge(&mut self, newer: AgentPatch) {
        macro_rules! take {
            ($($f:ident),*) => { $( if newer.$f.is_some() { self.$f = newer.$f; } )* };
        }
        take!(
            status,
            transport,
            capabilities,
            identifying,
            non_identifying,
            health,
            effective_config,
            effective_config_hash,
            remote_status,
            sequence_num,
            remote_addr,
            offered,
            connection_settings,
            package_statuses,
            cert_fingerprint
        );
        if let Some(newer) = newer.components {
            let mine = self.components.get_or_insert_with(Default::default);
            if newer.hash.is_some() {
                mine.hash = newer.hash;
            }
            if newer.set.is_some() {
                mine.set = newer.set;
            }
            if newer.custom_capabilities.is_some() {
                mine.custom_capabilities = newer.custom_capabilities;
            }
        }
        self.last_seen = self.last_seen.max(newer.last_seen);
    }

    /// Only last-seen and sequence number (the periodic flush of a known agent).
    pub fn only_liveness(&self) -> bool {
        !self.changes_state() && self.effective_config_hash.is_none() && self.last_seen.is_some()
    }

    /// Whether anything beyond last-seen and sequence number changes.
    pub fn changes_state(&self) -> bool {
        self.status.is_some()
            || self.transport.is_some()
            || self.capabilities.is_some()
            || self.identifying.is_some()
            || self.non_identifying.is_some()
            || self.health.is_some()
            || self.effective_config.is_some()
            || self.remote_status.is_some()
            || self.remote_addr.is_some()
            || self.offered.is_some()
            || self.connection_settings.is_some()
            || self.package_statuses.is_some()
            || self.components.is_some()
            || self.cert_fingerprint.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct AgentEvent {
    pub uid: String,
    pub at: i64,
    pub event: &'static str,
    pub remote_addr: Option<String>,
    pub details: Option<String>,
}

/// One agent as stored.
#[derive(Debug, Clone)]
pub struct AgentRow {
    pub uid: String,
    pub status: String,
    pub transport: String,
    pub capabilities: u64,
    pub identifying: String,
    pub non_identifying: String,
    pub labels: String,
    pub health: Option<String>,
    pub effective_config: Option<String>,
    pub effective_config_hash: Option<String>,
    pub remote_status: Option<String>,
    pub sequence_num: u64,
    pub first_seen: i64,
    pub last_seen: i64,
    pub updated_at: i64,
    pub remote_addr: Option<String>,
    pub offered: Option<String>,
    /// JSON like `offered`: the last offer the agent reported APPLIED.
    pub applied: Option<String>,
    /// JSON: connection settings offered and reported (`opamp::connection`).
    pub connection_settings: Option<String>,
    /// Hex hash of the component list the agent reported, if held.
    pub components_hash: Option<String>,
    /// JSON array of custom capabilities.
    pub custom_capabilities: Option<String>,
    /// SHA-256 (hex) of the client certificate the agent registered with.
    pub cert_fingerprint: Option<String>,
    /// JSON: the package statuses the agent reported (`opamp::packages`).
    pub package_statuses: Option<String>,
}

/// Which agents a list asks for.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub selector: Selector,
    /// Restricts the list by uid (the status filter, resolved from the fleet).
    pub uids: Option<UidFilter>,
    pub limit: usize,
    /// Exclusive lower bound on uid.
    pub after: Option<String>,
    /// Only uids that start with this (lowercase canonical form).
    pub uid_prefix: Option<String>,
}

/// A set of uids a list is restricted to, or excludes.
#[derive(Debug, Clone)]
pub enum UidFilter {
    Only(Vec<String>),
    Except(Vec<String>),
}

/// One agent with a live session, as a restore re-registers it.
#[derive(Debug, Clone)]
pub struct LiveAgent {
    pub uid: String,
    pub transport: &'static str,
    pub last_seen: i64,
    pub remote_addr: Option<String>,
}

/// (at ms, event, remote address, details).
pub type EventRow = (i64, String, Option<String>, Option<String>);

/// The protocol state of a plain-HTTP agent's session that replicas share
/// (PostgreSQL form): written before each poll's reply, so that whichever
/// replica serves the next poll continues the same session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub uid: String,
    /// Bumped by every poll that writes the record; a write is refused
    /// unless the stored version is the one its session was read at.
    pub version: i64,
    /// Changes to the agent's stored row the session holds a copy of: bumped
    /// by a poll that committed agent state and by a label change. A replica
    /// whose copy is older reloads the row.
    pub row_changes: i64,
    /// The replica that served the poll that wrote it.
    pub replica: String,
    pub sequence_num: u64,
    /// A restart command waits for the next poll.
    pub restart_pending: bool,
    /// The agent said goodbye.
    pub disconnected: bool,
    /// JSON: the rest of the session's protocol state (`opamp::session`).
    pub state: String,
    /// When it was written, in Unix milliseconds.
    pub updated_at: i64,
}

/// What writing a [`SessionRecord`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordWrite {
    /// Written; the stored `row_changes` now (a label change may have
    /// raised it meanwhile).
    Written { row_changes: i64 },
    /// Another poll wrote the record since this session was read.
    Conflict,
}

/// A poll's write of its agent's [`SessionRecord`].
#[derive(Debug, Clone)]
pub struct SessionWrite {
    /// What to store; its `version` is `expected + 1`, its `row_changes`
    /// what a new record starts with.
    pub record: SessionRecord,
    /// The version the session was read at (0: no record then).
    pub expected: i64,
    /// The poll committed agent state: `row_changes` goes up by one.
    pub row_changed: bool,
    /// The poll carried the pending restart command: it is no longer pending
    /// (one requested meanwhile is kept otherwise).
    pub restart_sent: bool,
}
