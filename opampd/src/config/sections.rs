//! One struct per section of the configuration file, with its defaults.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Package files uploaded to opampd (hosted) and served to agents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PackagesConfig {
    /// Where hosted files are kept, by SHA-256; unset: `<data_dir>/packages`.
    /// Several replicas need one directory they all share.
    pub dir: Option<PathBuf>,
    /// Largest file one upload may bring.
    pub max_file_bytes: u64,
    /// The address agents download hosted files from (`https://opamp.example.com`);
    /// unset: derived from `opamp.public_url`, else the agent listener's address.
    pub public_url: Option<String>,
    /// A stored file is checked against its SHA-256 before it is served when
    /// its last check is older than this (and on its first serve after start).
    pub verify_interval_seconds: u64,
    /// A file under `dir` that no catalogue entry names is removed once it
    /// is older than this (at start and every `verify_interval_seconds`).
    pub orphan_grace_seconds: u64,
}

impl Default for PackagesConfig {
    fn default() -> Self {
        PackagesConfig {
            dir: None,
            max_file_bytes: 512 * 1024 * 1024,
            public_url: None,
            verify_interval_seconds: 3600,
            orphan_grace_seconds: 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This process's name among several replicas (health, metrics, logs);
    /// unset: the host name, else `opampd-<random>`.
    pub replica_id: Option<String>,
    /// How long a replica's agents stay listed as connected after its last
    /// heartbeat in the shared database (renewed every third of it).
    pub lease_seconds: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            replica_id: None,
            lease_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutsConfig {
    /// Default time a rollout batch may take before its silent agents are
    /// counted unconfirmed and the rollout moves on (0 = no limit).
    pub batch_timeout_seconds: u64,
}

impl Default for RolloutsConfig {
    fn default() -> Self {
        RolloutsConfig {
            batch_timeout_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter directive, e.g. `info` or `opampd=debug,info`.
    pub level: String,
    /// `auto` (text on a terminal, JSON otherwise), `text` or `json`.
    pub format: String,
    /// Also append logs (JSON lines) to this file.
    pub file: Option<PathBuf>,
    /// Lines kept in memory for the log stream endpoint.
    pub ring_lines: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// PEM bundle of CAs that sign client certificates; enables client-certificate checks.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a valid certificate (else a certificate is optional).
    pub require_client_cert: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OpampConfig {
    pub path: String,
    /// Shared secrets agents present as `Authorization: Bearer …` or `Secret-Key`.
    /// Several may be valid at once, for rotation. Empty = open (warned at start-up).
    pub agent_secrets: Vec<String>,
    /// Largest accepted AgentToServer, after decompression (WS close 1009 / HTTP 413).
    pub max_message_bytes: usize,
    /// Largest ServerToAgent the server will send.
    pub max_send_bytes: usize,
    /// Expected agent heartbeat interval; liveness is derived from it.
    pub heartbeat_interval_seconds: u64,
    /// An agent silent this long is `stale`.
    pub stale_after_seconds: u64,
    /// A plain-HTTP agent silent this long is `disconnected`.
    pub disconnect_after_seconds: u64,
    /// Ping idle WebSocket connections this often.
    pub ws_ping_interval_seconds: u64,
    /// Close a WebSocket connection that sent nothing (not even a pong) for this long.
    pub ws_read_timeout_seconds: u64,
    /// Agents served at once; past it new agents get 503 + Retry-After. 0 = no limit.
    pub max_agents: usize,
    /// Agents one WebSocket connection may carry (a terminating proxy multiplexes).
    pub max_agents_per_connection: usize,
    /// Largest description, health, effective config or component list
    /// stored for one agent; a larger one is not stored (an agent event says so).
    pub max_stored_bytes_per_agent: usize,
    /// Browser origins allowed to open the OpAMP endpoint (agents send no `Origin`).
    pub allowed_origins: Vec<String>,
    /// Retry-After seconds sent with 429/503.
    pub retry_after_seconds: u64,
    /// Send a new instance uid to a second live connection that claims a uid in use.
    pub reassign_duplicate_uids: bool,
    /// Accept agents without a secret on a listener that is not loopback-only.
    /// Without it, an empty `agent_secrets` list is allowed on loopback listeners only.
    pub allow_anonymous_agents: bool,
    /// The URL agents use to reach this server (`wss://opamp.example.com/v1/opamp`):
    /// the destination of the OpAMP connection settings offered to agents.
    /// Unset: no OpAMP connection settings are offered.
    pub public_url: Option<String>,
    /// Client certificates on the agent listener (`agent_listen`), verified
    /// apart from the operator listener's (`tls.client_ca_file`).
    pub tls: AgentTlsConfig,
}

/// Where agents send their own telemetry (offered to agents that report it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub own_metrics: TelemetryDestination,
    pub own_logs: TelemetryDestination,
    pub own_traces: TelemetryDestination,
}

/// One OTLP/HTTP destination: its full URL and the headers to send.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryDestination {
    /// Full OTLP/HTTP URL including the path, e.g. `https://otlp.example.com/v1/metrics`.
    pub endpoint: Option<String>,
    /// Header name → value (an API key, ...).
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AgentTlsConfig {
    /// PEM bundle of CAs that sign agents' client certificates (agent listener
    /// only; unset: the agent listener uses the `tls.client_ca_file` settings).
    pub client_ca_file: Option<PathBuf>,
    /// Refuse agents without a valid certificate on the agent listener.
    pub require_client_cert: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL (`postgres://user:password@host:port/database`);
    /// unset: the SQLite file `<data_dir>/opamp.db`.
    pub url: Option<String>,
    /// Read pool size (the writer is one more connection).
    pub max_open_conns: usize,
    /// Idle read connections kept open (at most `max_open_conns`).
    pub max_idle_conns: usize,
    /// Seconds before a pooled read connection is reopened.
    pub conn_max_lifetime: u64,
    /// How long the writer gathers changes into one transaction.
    pub flush_interval_ms: u64,
    /// Queued writer operations past which agents and API writes wait for room
    /// (agents: up to a second, then UNAVAILABLE / 503 with a retry delay).
    pub max_queued_writes: u64,
    /// How often heartbeat times (last seen) are written.
    pub last_seen_flush_seconds: u64,
    pub busy_timeout_ms: u64,
    /// Connection events older than this are pruned.
    pub event_retention_days: u64,
    /// Queries slower than this count as slow.
    pub slow_query_ms: u64,
    /// SQLite `synchronous` of the writer: `normal` (a commit survives a crash
    /// of opampd; the last commits may be lost on power loss) or `full`
    /// (every commit is on disk before it is acknowledged).
    pub synchronous: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File holding the JWT signing key (else `JWT_SECRET_KEY`, else generated in the data dir).
    pub jwt_secret_file: Option<PathBuf>,
    /// Without a configured key, generate one and keep it in `<data_dir>/jwt.key`
    /// (always done in the zero-config start, where no config file is given).
    pub generate_jwt_secret: bool,
    pub token_ttl_minutes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Audit entries older than this many days are pruned (0 = kept forever).
    pub retention_days: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Time allowed for a client to send its request headers.
    pub header_timeout_seconds: u64,
    /// Time allowed for a request body to arrive (REST: plus a second per MiB declared).
    pub body_timeout_seconds: u64,
    /// Close a connection (HTTP/1.1 keep-alive or HTTP/2) without any traffic for this long.
    pub idle_timeout_seconds: u64,
    /// Largest REST request body.
    pub max_api_body_bytes: usize,
    /// Load balancers (addresses or CIDR ranges) whose `X-Forwarded-For`
    /// names the client in agents' `remote_addr`, logs, audit and login throttling.
    pub trusted_proxies: Vec<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "auto".into(),
            file: None,
            ring_lines: 5000,
        }
    }
}

impl Default for OpampConfig {
    fn default() -> Self {
        OpampConfig {
            path: "/v1/opamp".into(),
            agent_secrets: Vec::new(),
            max_message_bytes: 64 << 20,
            max_send_bytes: 64 << 20,
            heartbeat_interval_seconds: 30,
            stale_after_seconds: 90,
            disconnect_after_seconds: 300,
            ws_ping_interval_seconds: 30,
            ws_read_timeout_seconds: 120,
            max_agents: 0,
            max_agents_per_connection: 16,
            max_stored_bytes_per_agent: 1 << 20,
            allowed_origins: Vec::new(),
            retry_after_seconds: 30,
            reassign_duplicate_uids: true,
            allow_anonymous_agents: false,
            public_url: None,
            tls: AgentTlsConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_open_conns: 4,
            max_idle_conns: 4,
            conn_max_lifetime: 3600,
            flush_interval_ms: 50,
            max_queued_writes: 50_000,
            last_seen_flush_seconds: 15,
            busy_timeout_ms: 5000,
            event_retention_days: 30,
            slow_query_ms: 100,
            synchronous: "normal".into(),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention_days: 365,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret_file: None,
            generate_jwt_secret: false,
            token_ttl_minutes: 60,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout_seconds: 10,
            body_timeout_seconds: 30,
            idle_timeout_seconds: 120,
            max_api_body_bytes: 16 << 20,
            trusted_proxies: Vec::new(),
        }
    }
}

impl TelemetryConfig {
    /// The three destinations with their key paths.
    pub fn destinations(&self) -> [(&'static str, &TelemetryDestination); 3] {
        [
            ("telemetry.own_metrics", &self.own_metrics),
            ("telemetry.own_logs", &self.own_logs),
            ("telemetry.own_traces", &self.own_traces),
        ]
    }
}
