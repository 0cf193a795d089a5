//! The per-agent protocol rules, free of I/O.
//!
//! [`handle`] takes one AgentToServer and the agent's in-memory [`Session`] and
//! returns the reply plus what must be persisted. Rules implemented here:
//! omitted sub-messages mean unchanged; a sequence gap (or unknown agent)
//! together with any omitted sub-message asks for ReportFullState, never for a
//! process's first report and never twice in a row; a repeated sequence number
//! is a retry, answered as the original was (same flags, the offer again);
//! offers are gated by the agent's current capabilities; a remote config is
//! offered when its hash differs from what the agent reports and was not
//! already offered on this connection, and again whenever the agent reports a
//! hash other than the one offered; a restart command goes out alone; an
//! unknown component-list hash is asked for once ([`crate::components`]).

use super::connection::{self, ConnectionSettings};
use super::packages::{self as offered_packages, PackageSet, PackageTargets};
use super::reply::{Answer, Command, Reply};
use crate::components::{self, ComponentSet};
use crate::selector::{AgentView, Subject};
use crate::store::{self, AgentPatch};
use crate::targeting::{Desired, Targets};
use opamp_proto::caps::*;
use opamp_proto::pb;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use super::reply::SERVER_CAPABILITIES;
use json::effective_config_json;
pub use json::{attr_strings, attrs_json, health_json, offered_json};

mod json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
        }
    }
}

/// What the server remembers of a live agent.
#[derive(Debug, Clone)]
pub struct Session {
    uid: [u8; 16],
    /// Last sequence number received; `None` when the server holds no state.
    seq: Option<u64>,
    capabilities: u64,
    /// Labels and string attributes, for selectors.
    attrs: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    reported_hash: Vec<u8>,
    reported_status: i32,
    /// The error message that came with the reported status.
    reported_error: String,
    /// Hash offered on the current connection (reset on reconnect or state loss).
    offered_hash: Option<[u8; 32]>,
    /// A desired configuration too big to send, and why: never offered (nor
    /// recorded as offered), shown as failed until what the agent should run changes.
    undeliverable: Option<([u8; 32], String)>,
    /// The last reply asked for ReportFullState.
    full_state_requested: bool,
    desired: Option<Arc<Desired>>,
    desired_epoch: u64,
    transport: Transport,
    /// Id of the WebSocket connection that carries this agent (0 for HTTP).
    conn_id: u64,
    /// The WebSocket the agent moved away from while it was still open (0: none).
    previous_conn: u64,
    remote_addr: Option<std::net::SocketAddr>,
    last_seen: i64,
    persisted_seen: i64,
    restart_pending: bool,
    disconnected: bool,
    /// Connection settings offered and reported.
    connection: connection::AgentState,
    /// Packages offered and reported.
    packages: offered_packages::AgentState,
    desired_packages: Option<Arc<PackageSet>>,
    packages_epoch: u64,
    components: components::Known,
    /// SHA-256 (hex) of the client certificate the agent registered with:
    /// only a connection presenting it speaks for this uid.
    certificate: Option<Arc<str>>,
    /// The shared session record this session stands at (plain HTTP on
    /// PostgreSQL): (version, row changes); (0, 0) none, (-1, -1) unknown.
    record: (i64, i64),
}

/// Whether a connection presenting `presented` may speak for an agent bound
/// to `bound` (a client certificate's fingerprint; `None`: not bound).
pub fn admits(bound: Option<&str>, presented: Option<&str>) -> bool {
    bound.is_none() || bound == presented
}

impl Session {
    pub fn new(uid: [u8; 16], transport: Transport) -> Session {
        Session {
            uid,
            seq: None,
            capabilities: 0,
            attrs: BTreeMap::new(),
            labels: BTreeMap::new(),
            reported_hash: Vec::new(),
            reported_status: 0,
            reported_error: String::new(),
            offered_hash: None,
            undeliverable: None,
            full_state_requested: false,
            desired: None,
            desired_epoch: u64::MAX,
            transport,
            conn_id: 0,
            previous_conn: 0,
            remote_addr: None,
            last_seen: 0,
            persisted_seen: 0,
            restart_pending: false,
            disconnected: false,
            connection: connection::AgentState::default(),
            packages: offered_packages::AgentState::default(),
            desired_packages: None,
            packages_epoch: u64::MAX,
            components: components::Known::default(),
            certificate: None,
            record: (0, 0),
        }
    }

    /// Rebuilds a session from the stored row of a returning agent.
    pub fn from_row(uid: [u8; 16], row: &store::AgentRow, transport: Transport) -> Session {
        let mut s = Session::new(uid, transport);
        s.seq = Some(row.sequence_num);
        s.capabilities = row.capabilities;
        let identifying: Map<String, Value> =
            serde_json::from_str(&row.identifying).unwrap_or_default();
        let non_identifying: Map<String, Value> =
            serde_json::from_str(&row.non_identifying).unwrap_or_default();
        s.labels = serde_json::from_str(&row.labels).unwrap_or_default();
        s.attrs = attr_strings(&identifying, &non_identifying);
        if let Some(rs) = row
            .remote_status
            .as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
        {
            s.reported_hash = rs["hash"]
                .as_str()
                .and_then(|h| hex::decode(h).ok())
                .unwrap_or_default();
            s.reported_status = status_code(rs["status"].as_str().unwrap_or("unset"));
            s.reported_error = rs["error"].as_str().unwrap_or("").to_string();
        }
        s.persisted_seen = row.last_seen;
        s.remote_addr = row.remote_addr.as_deref().and_then(|a| a.parse().ok());
        s.connection = connection::AgentState::from_json(row.connection_settings.as_deref());
        s.packages = offered_packages::AgentState::from_json(row.package_statuses.as_deref());
        s.certificate = row.cert_fingerprint.as_deref().map(Arc::from);
        s
    }

    /// Whether a connection presenting `certificate` (a fingerprint) may
    /// speak for this agent: any may until the agent is bound to one.
    pub fn admits(&self, certificate: Option<&str>) -> bool {
        admits(self.certificate.as_deref(), certificate)
    }

    /// Binds the agent to `certificate` unless it is bound already.
    pub fn bind_certificate(&mut self, certificate: Option<&Arc<str>>) {
        if self.certificate.is_none() {
            self.certificate = certificate.cloned();
        }
    }

    /// Selector lookup: labels first, then string attributes.
    pub fn lookup(&self, key: &str) -> Option<&str> {
        self.labels
            .get(key)
            .or_else(|| self.attrs.get(key))
            .map(String::as_str)
    }

    /// Labels over string attributes, and the component list: what selectors see.
    pub fn selector_view(&self) -> AgentView {
        let mut all = self.attrs.clone();
        all.extend(self.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        AgentView {
            values: all,
            components: self.components.set.clone(),
        }
    }

    /// The component list of the agent's reported hash, if opampd holds it.
    pub fn components(&self) -> Option<&Arc<ComponentSet>> {
        self.components.set.as_ref()
    }

    /// Sets the component list (a returning agent's stored one).
    pub fn set_components(&mut self, set: Option<Arc<ComponentSet>>) {
        self.components.set = set;
        self.desired_epoch = u64::MAX;
        self.packages_epoch = u64::MAX;
    }

    /// Recomputes the desired configuration if targets or attributes changed.
    pub fn refresh_desired(&mut self, targets: &Targets) {
        let epoch = targets.epoch();
        if self.desired_epoch != epoch {
            self.desired = targets.desired_for(&self.uid, &self.selector_view());
            self.desired_epoch = epoch;
        }
    }

    pub fn uid(&self) -> &[u8; 16] {
        &self.uid
    }

    /// What the agent should run, as last computed.
    pub fn desired(&self) -> Option<&Desired> {
        self.desired.as_deref()
    }

    /// Last sequence number received; `None` when the server holds no state.
    pub fn sequence_num(&self) -> Option<u64> {
        self.seq
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Id of the WebSocket connection that carries this agent (0 for HTTP).
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// The WebSocket this agent last moved away from while it was still
    /// open (0: none): a message arriving there later comes from a second agent.
    pub fn previous_conn(&self) -> u64 {
        self.previous_conn
    }

    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.remote_addr
    }

    /// Time of the last message, in Unix milliseconds.
    pub fn last_seen(&self) -> i64 {
        self.last_seen
    }

    /// Whether the agent said goodbye (its session lingers until removed).
    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// Whether a WebSocket connection carries the agent now, so a message can be pushed.
    pub fn pushable(&self) -> bool {
        self.transport == Transport::WebSocket && !self.disconnected
    }

    pub fn accepts_remote_config(&self) -> bool {
        self.capabilities & ACCEPTS_REMOTE_CONFIG != 0
    }

    /// The capability bits the agent last reported.
    pub fn capabilities(&self) -> u64 {
        self.capabilities
    }

    /// The package statuses the agent last reported (JSON, as stored).
    pub fn package_statuses(&self) -> Option<&str> {
        self.packages.reported()
    }

    /// Whether the agent reports its remote-config status (ReportsRemoteConfig).
    pub fn reports_remote_config(&self) -> bool {
        self.capabilities & REPORTS_REMOTE_CONFIG != 0
    }

    /// The hash offered on the current connection, if any.
    pub fn offered_hash(&self) -> Option<&[u8; 32]> {
        self.offered_hash.as_ref()
    }

    /// The remote-config hash the agent last reported.
    pub fn reported_hash(&self) -> &[u8] {
        &self.reported_hash
    }

    /// The remote-config status the agent last reported (RemoteConfigStatuses).
    pub fn reported_status(&self) -> i32 {
        self.reported_status
    }

    /// The error message the agent sent with its last reported status.
    pub fn reported_error(&self) -> &str {
        &self.reported_error
    }

    /// Marks a new session as arriving on `conn_id`: its next message is a connect.
    pub fn arriving(mut self, conn_id: u64) -> Session {
        self.disconnected = true;
        self.conn_id = conn_id;
        self
    }

    /// Records the connection a message came on; true when it is a new
    /// connection for this agent (then nothing offered before counts).
    pub fn connect(&mut self, transport: Transport, conn_id: u64) -> bool {
        let connecting =
            self.disconnected || self.conn_id != conn_id || self.transport != transport;
        if connecting {
            let moved_from_live_ws = self.transport == Transport::WebSocket
                && transport == Transport::WebSocket
                && !self.disconnected
                && self.conn_id != conn_id;
            self.previous_conn = if moved_from_live_ws { self.conn_id } else { 0 };
            self.transport = transport;
            self.conn_id = conn_id;
            self.offered_hash = None;
            self.packages.forget_offer();
        }
        connecting
    }

    /// Records activity other than a message (a pong on `conn_id`, the
    /// agent's connection): the agent is alive.
    pub fn touch(&mut self, conn_id: u64, now_ms: i64) {
        if self.conn_id == conn_id && !self.disconnected {
            self.last_seen = self.last_seen.max(now_ms);
        }
    }

    /// Replaces the labels (set through the API); the desired configuration is recomputed.
    pub fn set_labels(&mut self, labels: BTreeMap<String, String>) {
        self.labels = labels;
        self.desired_epoch = u64::MAX;
        self.packages_epoch = u64::MAX;
    }

    /// Forgets what the agent reported, keeping `labels`: its next message (or
    /// a ReportFullState push) brings all of it again.
    pub fn forget_reports(&mut self, labels: BTreeMap<String, String>) {
        self.seq = None;
        self.offered_hash = None;
        self.packages.forget_offer();
        self.full_state_requested = false;
        self.set_labels(labels);
    }

    /// Forgets the last offer (it may not have arrived): offer again at the next message.
    pub fn forget_offer(&mut self) {
        self.offered_hash = None;
        self.packages.forget_offer();
    }

    /// The packages the agent should have, recomputed when the package
    /// targets or what selectors see changed.
    pub fn desired_packages(&mut self, targets: &PackageTargets) -> Option<&Arc<PackageSet>> {
        let epoch = targets.epoch();
        if self.packages_epoch != epoch {
            self.desired_packages = targets.desired_for(&self.uid, &self.selector_view());
            self.packages_epoch = epoch;
        }
        self.desired_packages.as_ref()
    }

    /// Forgets the reported remote-config status, so that the next report of
    /// it counts as a change (its commit failed).
    pub fn forget_reported_status(&mut self) {
        self.reported_hash.clear();
        self.reported_status = 0;
        self.reported_error.clear();
    }

    /// Asks for a restart command with the reply to the next poll (plain HTTP).
    pub fn queue_restart(&mut self) {
        self.restart_pending = true;
    }

    /// The last-seen time and sequence number not yet written, as a patch;
    /// counts them as written.
    pub fn take_unflushed_seen(&mut self) -> Option<AgentPatch> {
        if self.last_seen <= self.persisted_seen {
            return None;
        }
        let mut patch = AgentPatch::new(&opamp_proto::uid_string(&self.uid));
        patch.last_seen = Some(self.last_seen);
        patch.sequence_num = self.seq;
        self.persisted_seen = self.last_seen;
        Some(patch)
    }

    /// Whether a restart command waits for the next poll.
    pub fn restart_pending(&self) -> bool {
        self.restart_pending
    }

    /// The shared session record this session stands at: (version, row
    /// changes); (0, 0) when there is none, (-1, -1) when unknown.
    pub fn record_position(&self) -> (i64, i64) {
        self.record
    }

    /// Forgets where this session stands against its shared record (a
    /// write failed or lost a race): the next poll reloads it.
    pub fn lose_record(&mut self) {
        self.record = (-1, -1);
    }

    /// Stands at `position` of the shared record without taking anything
    /// from it (a record left by an agent whose row is gone).
    pub fn follow_record(&mut self, position: (i64, i64)) {
        self.record = position;
    }

    /// Takes the protocol state of the agent's shared session record (the
    /// rest is the stored row's, or this session's own when the row did not
    /// change since).
    pub fn take_record(&mut self, record: &store::agents::SessionRecord) {
        let state: SharedState = serde_json::from_str(&record.state).unwrap_or_default();
        let hash = |h: Option<&String>| {
            h.and_then(|h| hex::decode(h).ok())
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
        };
        self.seq = Some(record.sequence_num);
        self.restart_pending = record.restart_pending;
        self.full_state_requested = state.full_state_requested;
        self.offered_hash = hash(state.offered.as_ref());
        self.undeliverable = state
            .undeliverable
            .as_ref()
            .and_then(|(h, reason)| Some((hash(Some(h))?, reason.clone())));
        self.packages
            .set_offered(hash(state.packages_offered.as_ref()));
        self.record = (record.version, record.row_changes);
    }

    /// The shared session record this session makes after a poll served by
    /// `replica` at `now_ms`: the next version; row changes as they stand
    /// (the poll's own change is counted by the writer).
    pub fn record(&self, replica: &str, now_ms: i64) -> store::agents::SessionRecord {
        let (version, row_changes) = self.record;
        let state = SharedState {
            offered: self.offered_hash.map(hex::encode),
            undeliverable: self
                .undeliverable
                .as_ref()
                .map(|(h, reason)| (hex::encode(h), reason.clone())),
            full_state_requested: self.full_state_requested,
            packages_offered: self.packages.offered().map(hex::encode),
        };
        store::agents::SessionRecord {
            uid: opamp_proto::uid_string(&self.uid),
            version: version.max(0) + 1,
            row_changes: row_changes.max(0),
            replica: replica.to_string(),
            sequence_num: self.seq.unwrap_or(0),
            restart_pending: self.restart_pending,
            disconnected: self.disconnected,
            state: serde_json::to_string(&state).unwrap_or_default(),
            updated_at: now_ms,
        }
    }

    /// Records that the poll wrote the shared record at `version`, leaving
    /// `row_changes` stored where this session expected `mine`: when another
    /// change of the row slipped in, the next poll reloads it.
    pub fn record_written(&mut self, version: i64, row_changes: i64, mine: i64) {
        self.record = (version, if row_changes == mine { mine } else { -1 });
    }

    /// Estimated heap and inline bytes this session holds.
    pub fn estimated_bytes(&self) -> usize {
        let strings: usize = self
            .attrs
            .iter()
            .chain(self.labels.iter())
            .map(|(k, v)| k.len() + v.len() + 64)
            .sum();
        std::mem::size_of::<Session>()
            + strings
            + self.reported_hash.len()
            + self
                .remote_addr
                .map_or(0, |_| std::mem::size_of::<std::net::SocketAddr>())
    }

    /// The remote config to offer now, if any (and records the offer). A
    /// configuration whose reply would exceed `max_send_bytes` is not offered:
    /// [`Offer::TooBig`] the first time, `None` afterwards.
    pub fn take_offer(&mut self, targets: &Targets, max_send_bytes: usize) -> Option<Offer> {
        if self.capabilities & ACCEPTS_REMOTE_CONFIG == 0 {
            return None;
        }
        self.refresh_desired(targets);
        let desired = self.desired.clone()?;
        if self.reported_hash == desired.hash || self.offered_hash == Some(desired.hash) {
            return None;
        }
        if self
            .undeliverable
            .as_ref()
            .is_some_and(|(hash, _)| *hash == desired.hash)
        {
            return None;
        }
        let rc = remote_config(&desired);
        let bytes = Reply::largest_offer_len(&rc);
        if bytes > max_send_bytes {
            let reason = too_big_reason(&desired, bytes, max_send_bytes);
            self.offer_undeliverable(desired.hash, reason.clone());
            return Some(Offer::TooBig(reason));
        }
        self.offered_hash = Some(desired.hash);
        Some(Offer::Send(rc))
    }

    /// Records that the offer of `hash` cannot be sent (it is not offered).
    pub fn offer_undeliverable(&mut self, hash: [u8; 32], reason: String) {
        if self.offered_hash == Some(hash) {
            self.offered_hash = None;
        }
        self.undeliverable = Some((hash, reason));
    }

    /// Why the configuration the agent should run cannot be sent to it, if so.
    pub fn undeliverable(&self) -> Option<(&[u8; 32], &str)> {
        self.undeliverable
            .as_ref()
            .map(|(hash, reason)| (hash, reason.as_str()))
    }
}

/// The part of a shared session record that is neither a column nor in the
/// stored row: what was offered on the current connection, and the retry
/// state of the last reply. (Which message's reply carried the connection
/// settings stays in memory, as across restarts: a retry elsewhere does not
/// get them again.)
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SharedState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offered: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    undeliverable: Option<(String, String)>,
    #[serde(default)]
    full_state_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    packages_offered: Option<String>,
}

/// What [`Session::take_offer`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Offer {
    /// Send this remote config; it is recorded as offered.
    Send(pb::AgentRemoteConfig),
    /// The configuration does not fit the send limit: nothing is offered,
    /// and this is why (the agent's remote-config status shows it as failed).
    TooBig(String),
}

/// Why an offer of `bytes` cannot go out, for the agent's status and the rollout.
pub fn too_big_reason(desired: &Desired, bytes: usize, limit: usize) -> String {
    let names: Vec<String> = desired
        .parts()
        .into_iter()
        .map(|(name, version)| format!("{name} v{version}"))
        .collect();
    format!(
        "not sent: the configurations for this agent ({}) make a {bytes}-byte message, over \
         opamp.max_send_bytes ({limit} bytes); shrink them, target fewer to this agent, or raise \
         opamp.max_send_bytes",
        names.join(", ")
    )
}

/// JSON record of an offer that could not be sent: what the offered-record
/// holds instead of an offer, so the API shows the agent as failed.
pub fn undeliverable_json(s: &Session) -> Value {
    let mut record = offered_json(s);
    if let (Some((_, reason)), Value::Object(map)) = (&s.undeliverable, &mut record) {
        map.insert("error".into(), Value::String(reason.clone()));
    }
    record
}

impl Subject for Session {
    fn value(&self, key: &str) -> Option<&str> {
        self.lookup(key)
    }

    fn has_component(&self, kind_type: &str) -> Option<bool> {
        self.components.set.as_ref().map(|set| set.has(kind_type))
    }
}

pub fn remote_config(d: &Desired) -> pb::AgentRemoteConfig {
    pb::AgentRemoteConfig {
        config: Some(pb::AgentConfigMap {
            config_map: d
                .files
                .iter()
                .map(|(name, (ct, body, _))| {
                    (
                        name.clone(),
                        pb::AgentConfigFile {
                            body: body.as_bytes().to_vec(),
                            content_type: ct.clone(),
                        },
                    )
                })
                .collect(),
        }),
        config_hash: d.hash.to_vec(),
    }
}

/// What handling one message produced.
#[derive(Debug)]
pub struct Outcome {
    pub reply: Reply,
    /// A separate message to send after the reply (WebSocket): a restart command.
    pub follow_up: Option<Reply>,
    pub patch: Option<AgentPatch>,
    /// The agent said goodbye.
    pub disconnect: bool,
    /// The remote config status changed: (hash hex, status name, error).
    pub remote_status_changed: bool,
    /// The agent's new uid, when it asked for one.
    pub new_uid: Option<[u8; 16]>,
    /// The configuration the agent should run is too big to send: why (it
    /// was not offered; its status now says so).
    pub not_offered: Option<String>,
}

impl Outcome {
    /// A reply and nothing else to do.
    pub fn reply_only(reply: Reply) -> Outcome {
        Outcome {
            reply,
            follow_up: None,
            patch: None,
            disconnect: false,
            remote_status_changed: false,
            new_uid: None,
            not_offered: None,
        }
    }
}

/// Status names of RemoteConfigStatuses.
pub fn status_name(code: i32) -> &'static str {
    match code {
        1 => "applied",
        2 => "applying",
        3 => "failed",
        _ => "unset",
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

/// Context for [`handle`].
pub struct Ctx<'a> {
    pub targets: &'a Targets,
    /// The connection settings the server offers.
    pub connection: &'a ConnectionSettings,
    /// The packages rolled out.
    pub packages: &'a PackageTargets,
    pub now_ms: i64,
    pub remote_addr: Option<std::net::SocketAddr>,
    /// A new instance uid assigned in this reply (the session already uses it).
    pub new_uid: Option<[u8; 16]>,
    /// `opamp.max_send_bytes`: an offer whose reply would be larger is not made.
    pub max_send_bytes: usize,
    /// The component lists opampd holds.
    pub components: &'a components::Cache,
}

/// Applies one AgentToServer to the session. `msg.instance_uid` is valid (16 bytes).
pub fn handle(s: &mut Session, msg: &pb::AgentToServer, ctx: &Ctx<'_>) -> Outcome {
    let mut remote_status_changed = false;
    // Built only when something durable changes: a plain heartbeat costs no
    // database work (last-seen and sequence numbers are flushed in bulk).
    let mut patch: Option<AgentPatch> = None;
    let uid = s.uid;
    macro_rules! p {
        () => {
            patch_for(&mut patch, &uid)
        };
    }
    // The same number again is the agent retrying a message whose reply it did
    // not get (opamp-go does so after a transport error): answer as before.
    let known = s.seq.is_some();
    let retry = s.seq == Some(msg.sequence_num);
    let continues = s
        .seq
        .is_some_and(|prev| msg.sequence_num == prev.wrapping_add(1));
    s.seq = Some(msg.sequence_num);
    s.last_seen = ctx.now_ms;
    if s.disconnected {
        s.disconnected = false;
        p!().status = Some("connected");
    }
    if s.remote_addr != ctx.remote_addr {
        s.remote_addr = ctx.remote_addr;
        p!().remote_addr = s.remote_addr.map(|a| a.to_string());
    }
    if retry || !continues {
        // Whatever was offered before may not have arrived.
        s.offered_hash = None;
        s.packages.forget_offer();
    }

    if msg.capabilities != s.capabilities {
        s.capabilities = msg.capabilities;
        p!().capabilities = Some(msg.capabilities);
        // Capabilities gate offers: recompute what to offer.
        s.offered_hash = None;
        s.packages.forget_offer();
    }

    if let Some(d) = &msg.agent_description {
        let identifying = attrs_json(&d.identifying_attributes);
        let non_identifying = attrs_json(&d.non_identifying_attributes);
        s.attrs = attr_strings(&identifying, &non_identifying);
        s.desired_epoch = u64::MAX;
        s.packages_epoch = u64::MAX;
        let pa = p!();
        pa.identifying = Some(Value::Object(identifying).to_string());
        pa.non_identifying = Some(Value::Object(non_identifying).to_string());
    }
    if let Some(h) = &msg.health {
        p!().health = Some(health_json(h).to_string());
    }
    if let Some(ec) = &msg.effective_config {
        let (json, hash) = effective_config_json(ec);
        let pa = p!();
        pa.effective_config = Some(json.to_string());
        pa.effective_config_hash = Some(hash);
    }
    if let Some(rs) = &msg.remote_config_status {
        let changed =
            s.reported_hash != rs.last_remote_config_hash || s.reported_status != rs.status;
        if s.offered_hash
            .is_some_and(|offered| offered[..] != rs.last_remote_config_hash[..])
        {
            // The agent runs another config than the one offered: the reply
            // must carry the offer again.
            s.offered_hash = None;
        }
        s.reported_hash = rs.last_remote_config_hash.clone();
        s.reported_status = rs.status;
        s.reported_error.clone_from(&rs.error_message);
        p!().remote_status = Some(
            json!({
                "hash": hex::encode(&rs.last_remote_config_hash),
                "status": status_name(rs.status),
                "error": rs.error_message,
            })
            .to_string(),
        );
        remote_status_changed = changed;
    }
    if let Some(statuses) = &msg.package_statuses {
        p!().package_statuses = Some(s.packages.record(statuses));
    }
    if let Some(status) = &msg.connection_settings_status {
        if s.connection.record_status(status) {
            p!().connection_settings = Some(s.connection.to_json());
        }
    }
    let mut ask_components = false;
    if let Some(reported) = &msg.available_components {
        let update = components::report(&mut s.components, reported, ctx.components, retry);
        if let Some(set) = update.changed {
            // Selectors and rollouts may see the agent differently now.
            s.desired_epoch = u64::MAX;
            s.packages_epoch = u64::MAX;
            let pa = p!().components.get_or_insert_with(Default::default);
            pa.hash = Some(set.hash_hex());
            pa.set = update.learned.then_some(set);
        }
        if let Some(bytes) = update.too_big {
            p!().components.get_or_insert_with(Default::default).too_big = Some(bytes);
        }
        ask_components = update.ask && s.capabilities & REPORTS_AVAILABLE_COMPONENTS != 0;
    }
    if let Some(custom) = &msg.custom_capabilities {
        p!().components
            .get_or_insert_with(Default::default)
            .custom_capabilities = Some(Value::from(custom.capabilities.clone()).to_string());
    }

    let ask = if retry {
        s.full_state_requested
    } else {
        // A process's first message (number 0), or a description from an
        // agent opampd holds nothing of, is its full state; a request answered
        // with less is not repeated (the agent has nothing more to report).
        let first_report = msg.agent_description.is_some() && (msg.sequence_num == 0 || !known);
        let lost = !continues;
        lost && omits_any(s.capabilities, msg) && !first_report && !s.full_state_requested
    };
    s.full_state_requested = ask;
    let mut flags = if ask { FLAG_REPORT_FULL_STATE } else { 0 };
    if ask_components {
        flags |= FLAG_REPORT_AVAILABLE_COMPONENTS;
    }
    let mut answer = Answer {
        flags,
        new_instance_uid: ctx.new_uid,
        ..Default::default()
    };
    let mut follow_up = None;
    let mut disconnect = false;
    let mut not_offered = None;
    if msg.agent_disconnect.is_some() {
        disconnect = true;
        s.disconnected = true;
        p!().status = Some("disconnected");
    } else if s.restart_pending && s.capabilities & ACCEPTS_RESTART_COMMAND != 0 {
        s.restart_pending = false;
        let command = Reply::command(msg.instance_uid.clone(), Command::Restart);
        match s.transport {
            Transport::WebSocket => follow_up = Some(command),
            // Plain HTTP carries one reply: the command goes alone, the rest waits for the next poll.
            Transport::Http => {
                return Outcome {
                    reply: command,
                    follow_up: None,
                    patch: finish(s, patch, msg, ctx),
                    disconnect,
                    remote_status_changed,
                    new_uid: ctx.new_uid,
                    not_offered,
                };
            }
        }
    } else {
        match s.take_offer(ctx.targets, ctx.max_send_bytes) {
            Some(Offer::Send(rc)) => {
                p!().offered = Some(offered_json(s).to_string());
                answer.remote_config = Some(rc);
            }
            Some(Offer::TooBig(reason)) => {
                p!().offered = Some(undeliverable_json(s).to_string());
                not_offered = Some(reason);
            }
            None => {}
        }
    }
    // Connection settings go in a reply without a remote config (they wait
    // for the next one), so they never push an offer over the send limit.
    if !disconnect && follow_up.is_none() && answer.remote_config.is_none() {
        let capabilities = s.capabilities;
        if let Some(offer) =
            s.connection
                .take_offer(ctx.connection, capabilities, msg.sequence_num, retry)
        {
            p!().connection_settings = Some(s.connection.to_json());
            answer.connection_settings = Some(offer);
        }
        // Packages likewise: small, and never beside a remote config.
        let capabilities = s.capabilities;
        let desired = s.desired_packages(ctx.packages).cloned();
        answer.packages_available = s.packages.take_offer(desired.as_deref(), capabilities);
    }
    Outcome {
        reply: Reply::answer(msg.instance_uid.clone(), answer),
        follow_up,
        patch: finish(s, patch, msg, ctx),
        disconnect,
        remote_status_changed,
        new_uid: ctx.new_uid,
        not_offered,
    }
}

/// Whether `msg` leaves out a sub-message the agent reports (per its capabilities).
fn omits_any(capabilities: u64, msg: &pb::AgentToServer) -> bool {
    let gated = |capability: u64, present: bool| capabilities & capability != 0 && !present;
    msg.agent_description.is_none()
        || gated(REPORTS_EFFECTIVE_CONFIG, msg.effective_config.is_some())
        || gated(REPORTS_HEALTH, msg.health.is_some())
        || gated(REPORTS_REMOTE_CONFIG, msg.remote_config_status.is_some())
        || gated(REPORTS_PACKAGE_STATUSES, msg.package_statuses.is_some())
        || gated(
            REPORTS_AVAILABLE_COMPONENTS,
            msg.available_components.is_some(),
        )
        || gated(
            REPORTS_CONNECTION_SETTINGS_STATUS,
            msg.connection_settings_status.is_some(),
        )
}

fn patch_for<'a>(patch: &'a mut Option<AgentPatch>, uid: &[u8; 16]) -> &'a mut AgentPatch {
    patch.get_or_insert_with(|| AgentPatch::new(&opamp_proto::uid_string(uid)))
}

/// A patch that is written also carries the sequence number and last-seen time.
fn finish(
    s: &mut Session,
    patch: Option<AgentPatch>,
    msg: &pb::AgentToServer,
    ctx: &Ctx<'_>,
) -> Option<AgentPatch> {
    let mut patch = patch?;
    patch.sequence_num = Some(msg.sequence_num);
    patch.last_seen = Some(ctx.now_ms);
    s.persisted_seen = ctx.now_ms;
    Some(patch)
}

#[cfg(test)]
mod tests;
