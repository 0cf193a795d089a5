//! opampd configuration: defaults < YAML file < `OPAMPD_*` environment < flags.
//!
//! Every key of the file can also come from the environment: the key path in
//! upper case joined by `_` after `OPAMPD_` (`database.max_open_conns` is
//! `OPAMPD_DATABASE_MAX_OPEN_CONNS`); lists are comma-separated. Unknown keys,
//! in the file or as `OPAMPD_*` variables, stop start-up with the key named.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Operator plane (REST, health, metrics) and, unless `agent_listen` is set, OpAMP too.
    pub listen: String,
    /// Optional second listener serving only the OpAMP endpoint (e.g. `0.0.0.0:4320`).
    pub agent_listen: Option<String>,
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub opamp: OpampConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub audit: AuditConfig,
    pub telemetry: TelemetryConfig,
    pub rollouts: RolloutsConfig,
    pub cluster: ClusterConfig,
    pub packages: PackagesConfig,
}

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
}

impl Default for PackagesConfig {
    fn default() -> Self {
        PackagesConfig {
            dir: None,
            max_file_bytes: 512 * 1024 * 1024,
            public_url: None,
            verify_interval_seconds: 3600,
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

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            agent_listen: None,
            data_dir: PathBuf::from("./data"),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
            opamp: OpampConfig::default(),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            audit: AuditConfig::default(),
            telemetry: TelemetryConfig::default(),
            rollouts: RolloutsConfig::default(),
            cluster: ClusterConfig::default(),
            packages: PackagesConfig::default(),
        }
    }
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

/// Values given on the command line; `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub agent_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub database_url: Option<String>,
}

/// Environment variables that are not config keys but are read by opampd.
const EXTRA_ENV: &[&str] = &["OPAMPD_CONFIG"];

impl Config {
    /// Builds the effective configuration from all layers.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        flags: &Overrides,
    ) -> Result<Config> {
        let mut tree = serde_yaml::to_value(Config::default())?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            merge_file(&mut tree, &text, path)?;
        }
        apply_env(&mut tree, env)?;
        let mut config: Config = serde_yaml::from_value(tree)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if let Some(v) = &flags.listen {
            config.listen = v.clone();
        }
        if let Some(v) = &flags.agent_listen {
            config.agent_listen = Some(v.clone());
        }
        if let Some(v) = &flags.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &flags.log_level {
            config.log.level = v.clone();
        }
        if let Some(v) = &flags.log_format {
            config.log.format = v.clone();
        }
        if let Some(v) = &flags.database_url {
            config.database.url = Some(v.clone());
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks values the types cannot: addresses, ranges, file pairs.
    pub fn validate(&self) -> Result<()> {
        parse_addr("listen", &self.listen)?;
        if let Some(a) = &self.agent_listen {
            parse_addr("agent_listen", a)?;
        }
        if !self.opamp.path.starts_with('/') {
            bail!("opamp.path must start with '/', got {:?}", self.opamp.path);
        }
        if self.opamp.path.starts_with("/api/") || self.opamp.path.starts_with("/health") {
            bail!(
                "opamp.path {:?} collides with the REST or health routes",
                self.opamp.path
            );
        }
        if !matches!(self.log.format.as_str(), "auto" | "text" | "json") {
            bail!(
                "log.format must be auto, text or json, got {:?}",
                self.log.format
            );
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            anyhow::anyhow!("log.level {:?} is not a valid filter: {e}", self.log.level)
        })?;
        if self.opamp.max_stored_bytes_per_agent < 1024 {
            bail!("opamp.max_stored_bytes_per_agent must be at least 1024 (default 1048576)");
        }
        if self.opamp.max_agents_per_connection == 0 {
            bail!("opamp.max_agents_per_connection must be at least 1 (default 16)");
        }
        for origin in &self.opamp.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.trim_end_matches('/').matches('/').count() != 2
            {
                bail!(
                    "opamp.allowed_origins entry {origin:?} is not an origin: write it as \
                     scheme://host[:port], e.g. https://console.example.com"
                );
            }
        }
        if self.opamp.max_message_bytes < 1024 {
            bail!("opamp.max_message_bytes must be at least 1024");
        }
        if self.opamp.heartbeat_interval_seconds == 0 {
            bail!("opamp.heartbeat_interval_seconds must be greater than 0");
        }
        if self.opamp.stale_after_seconds == 0
            || self.opamp.disconnect_after_seconds < self.opamp.stale_after_seconds
        {
            bail!("opamp.disconnect_after_seconds must be >= opamp.stale_after_seconds > 0");
        }
        liveness_keys_agree(&self.opamp, &self.database)?;
        if self.opamp.ws_read_timeout_seconds <= self.opamp.ws_ping_interval_seconds {
            bail!(
                "opamp.ws_read_timeout_seconds must be greater than opamp.ws_ping_interval_seconds"
            );
        }
        for (i, s) in self.opamp.agent_secrets.iter().enumerate() {
            let setting = format!("opamp.agent_secrets[{i}]");
            if s.len() < 8 {
                bail!("{setting} is shorter than 8 characters: use a long random secret, e.g. `openssl rand -base64 48`");
            }
            refuse_published_secret(&setting, s.as_bytes())?;
        }
        if self.opamp.agent_secrets.is_empty() && !self.opamp.allow_anonymous_agents {
            let addresses = std::iter::once(("listen", &self.listen))
                .chain(self.agent_listen.as_ref().map(|a| ("agent_listen", a)));
            for (key, value) in addresses {
                if !parse_addr(key, value)?.ip().is_loopback() {
                    bail!(
                        "{key} {value} is not a loopback address and opamp.agent_secrets is empty: \
                         any host could pose as an agent. Set opamp.agent_secrets (e.g. \
                         OPAMPD_OPAMP_AGENT_SECRETS=\"$(openssl rand -base64 48)\"), or set \
                         opamp.allow_anonymous_agents: true to accept agents without a secret"
                    );
                }
            }
        }
        if self.database.max_queued_writes < 8 {
            bail!("database.max_queued_writes must be at least 8 (default 50000)");
        }
        if self.database.max_open_conns == 0 || self.database.max_open_conns > 64 {
            bail!("database.max_open_conns must be between 1 and 64");
        }
        if self.http.idle_timeout_seconds == 0 || self.http.body_timeout_seconds == 0 {
            bail!("http.idle_timeout_seconds and http.body_timeout_seconds must be greater than 0");
        }
        if let Some(url) = &self.database.url {
            crate::store::postgres::DatabaseUrl::parse(url)?;
        }
        if !matches!(self.database.synchronous.as_str(), "normal" | "full") {
            bail!(
                "database.synchronous must be normal or full, got {:?}",
                self.database.synchronous
            );
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) | (None, Some(_)) => {
                bail!("tls.cert_file and tls.key_file go together")
            }
            _ => {}
        }
        if self.tls.client_ca_file.is_some() && self.tls.cert_file.is_none() {
            bail!("tls.client_ca_file needs tls.cert_file and tls.key_file");
        }
        if self.tls.require_client_cert && self.tls.client_ca_file.is_none() {
            bail!("tls.require_client_cert needs tls.client_ca_file");
        }
        if let Some(url) = &self.opamp.public_url {
            check_url("opamp.public_url", url, &["ws", "wss", "http", "https"])?;
        }
        for (key, destination) in self.telemetry.destinations() {
            match &destination.endpoint {
                Some(url) => check_url(&format!("{key}.endpoint"), url, &["http", "https"])?,
                None if !destination.headers.is_empty() => bail!(
                    "{key}.headers is set but {key}.endpoint is not: set the OTLP/HTTP URL the \
                     agents send to, e.g. https://otlp.example.com/v1/metrics"
                ),
                None => {}
            }
            for (name, value) in &destination.headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    bail!("{key}.headers: {name:?} is not a valid HTTP header name");
                }
                if http::HeaderValue::from_str(value).is_err() {
                    bail!("{key}.headers.{name}: the value is not a valid HTTP header value (no control characters)");
                }
            }
        }
        crate::forwarded::TrustedProxies::parse(&self.http.trusted_proxies)
            .map_err(anyhow::Error::msg)?;
        if let Some(id) = &self.cluster.replica_id {
            crate::replica::check_id(id)
                .map_err(|why| anyhow::anyhow!("cluster.replica_id {id:?} {why}"))?;
        }
        if !(3..=3600).contains(&self.cluster.lease_seconds) {
            bail!(
                "cluster.lease_seconds {} is out of range: use 3 to 3600 seconds (default 30)",
                self.cluster.lease_seconds
            );
        }
        if let Some(url) = &self.packages.public_url {
            check_url("packages.public_url", url, &["http", "https"])?;
        }
        if self.packages.max_file_bytes == 0 {
            bail!("packages.max_file_bytes is 0: give the largest file an upload may bring in bytes (default 536870912, 512 MiB)");
        }
        if self.packages.verify_interval_seconds == 0 {
            bail!("packages.verify_interval_seconds is 0: give how often a stored file is checked again before it is served, in seconds (default 3600)");
        }
        let agent_tls = &self.opamp.tls;
        if agent_tls.client_ca_file.is_some() || agent_tls.require_client_cert {
            if self.agent_listen.is_none() {
                bail!("opamp.tls.client_ca_file and opamp.tls.require_client_cert apply to the agent listener: set agent_listen too, or use tls.client_ca_file for the one listener");
            }
            if self.tls.cert_file.is_none() {
                bail!("opamp.tls.client_ca_file needs tls.cert_file and tls.key_file");
            }
            if agent_tls.require_client_cert && agent_tls.client_ca_file.is_none() {
                bail!("opamp.tls.require_client_cert needs opamp.tls.client_ca_file");
            }
        }
        Ok(())
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("opamp.db")
    }

    /// Where hosted package files are kept.
    pub fn packages_dir(&self) -> PathBuf {
        self.packages
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("packages"))
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

/// Key paths whose value is a free-form map (header name → value): any key
/// is accepted there, and the environment sets them as `name=value,name=value`.
fn is_free_form(path: &str) -> bool {
    path.starts_with("telemetry.") && path.ends_with(".headers")
}

/// Refuses a URL that is not absolute with one of `schemes` and a host.
fn check_url(key: &str, value: &str, schemes: &[&str]) -> Result<()> {
    let expected = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ");
    let uri: http::Uri = value.parse().map_err(|e| {
        anyhow::anyhow!(
            "{key} {value:?} is not a URL ({e}): expected {expected} followed by a host"
        )
    })?;
    let scheme = uri.scheme_str().unwrap_or_default();
    if !schemes.contains(&scheme) {
        bail!("{key} {value:?} must start with one of {expected}");
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("{key} {value:?} has no host: expected {expected}host[:port]/path");
    }
    Ok(())
}

/// Liveness settings that cannot work together, refused with both keys named.
fn liveness_keys_agree(opamp: &OpampConfig, database: &DatabaseConfig) -> Result<()> {
    let (stale, heartbeat) = (opamp.stale_after_seconds, opamp.heartbeat_interval_seconds);
    if stale < heartbeat {
        bail!(
            "opamp.stale_after_seconds ({stale}) is shorter than opamp.heartbeat_interval_seconds ({heartbeat}): \
             every agent would turn stale between two heartbeats; set stale_after_seconds to at least {heartbeat} \
             (three heartbeats is usual) or lower heartbeat_interval_seconds"
        );
    }
    let flush = database.last_seen_flush_seconds;
    if flush > stale {
        bail!(
            "database.last_seen_flush_seconds ({flush}) is longer than opamp.stale_after_seconds ({stale}): \
             the stored last-seen time of a connected agent (in the database, its backups and after a restart) \
             would routinely be older than the staleness window; set last_seen_flush_seconds to at most {stale} \
             or raise stale_after_seconds"
        );
    }
    Ok(())
}

/// Fragments of placeholder values (compared case-insensitively).
const PLACEHOLDER_MARKS: &[&str] = &[
    "change-me",
    "change_me",
    "changeme",
    "replace-me",
    "replace_me",
    "replaceme",
    "example",
];

/// Secret values that this repository publishes or once published (deploy
/// manifests, examples, the test harness): anyone can read them, so a
/// deployment that kept one is open.
const PUBLISHED_SECRETS: &[&str] = &[
    "REPLACE-ME-with-output-of-openssl-rand-hex-32",
    "CHANGE-ME-current-agent-secret",
    "CHANGE-ME-next-agent-secret",
    "test-only-jwt-key-0123456789abcdefghijklmnopqrstuvwxyz",
];

/// Refuses a secret that is an obvious placeholder or was published in this
/// repository, naming the setting and how to make a real one.
pub fn refuse_published_secret(setting: &str, value: &[u8]) -> Result<()> {
    let text = String::from_utf8_lossy(value).to_ascii_lowercase();
    let published = PUBLISHED_SECRETS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(text.trim()));
    if published || PLACEHOLDER_MARKS.iter().any(|m| text.contains(m)) {
        bail!(
            "{setting} is a placeholder or a value published with opampd, not a secret: \
             generate a real one, e.g. `openssl rand -base64 48`"
        );
    }
    Ok(())
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr> {
    value.parse().with_context(|| {
        format!("{key} {value:?} is not an address like 127.0.0.1:8080 or [::]:4320")
    })
}

/// Parses a config file's text and merges it onto the defaults.
pub fn from_yaml(text: &str, origin: &Path) -> Result<Config> {
    let mut tree = serde_yaml::to_value(Config::default())?;
    merge_file(&mut tree, text, origin)?;
    let config: Config =
        serde_yaml::from_value(tree).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    config.validate()?;
    Ok(config)
}

fn merge_file(tree: &mut serde_yaml::Value, text: &str, path: &Path) -> Result<()> {
    let file_tree: serde_yaml::Value = if text.trim().is_empty() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
    };
    merge(tree, file_tree, "", path)
}

/// Merges `over` into `base`, refusing keys `base` does not have.
fn merge(
    base: &mut serde_yaml::Value,
    over: serde_yaml::Value,
    prefix: &str,
    file: &Path,
) -> Result<()> {
    use serde_yaml::Value;
    let Value::Mapping(over) = over else {
        bail!(
            "config file {}: expected a mapping of keys at {}",
            file.display(),
            if prefix.is_empty() {
                "the top level"
            } else {
                prefix
            }
        );
    };
    let Value::Mapping(base_map) = base else {
        unreachable!("defaults are a mapping")
    };
    for (k, v) in over {
        let key = k
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{k:?}"));
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match base_map.get_mut(&k) {
            Some(slot) if is_free_form(&path) => {
                if !matches!(v, Value::Mapping(_) | Value::Null) {
                    bail!(
                        "config file {}: `{path}` must be a mapping of header names to values",
                        file.display()
                    );
                }
                *slot = v;
            }
            None => bail!(
                "config file {}: unknown key `{path}` (see `opampd check-config --print-defaults` for the valid keys)",
                file.display()
            ),
            Some(slot @ Value::Mapping(_)) if matches!(v, Value::Mapping(_)) => merge(slot, v, &path, file)?,
            Some(slot) => *slot = v,
        }
    }
    Ok(())
}

/// Applies `OPAMPD_*` variables onto the key tree.
fn apply_env(tree: &mut serde_yaml::Value, env: &[(String, String)]) -> Result<()> {
    let mut leaves = Vec::new();
    collect_leaves(tree, String::new(), &mut leaves);
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("OPAMPD_") else {
            continue;
        };
        if EXTRA_ENV.contains(&name.as_str()) {
            continue;
        }
        let Some(path) = leaves
            .iter()
            .find(|p| p.replace('.', "_").eq_ignore_ascii_case(rest))
        else {
            bail!("environment variable {name} is not a configuration key (unset it, or see `opampd check-config --print-defaults`)");
        };
        let parsed =
            env_value(tree, path, value).with_context(|| format!("environment variable {name}"))?;
        set_path(tree, path, parsed);
    }
    Ok(())
}

fn collect_leaves(v: &serde_yaml::Value, prefix: String, out: &mut Vec<String>) {
    if let serde_yaml::Value::Mapping(m) = v {
        for (k, child) in m {
            let key = k.as_str().unwrap_or_default();
            let path = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            if matches!(child, serde_yaml::Value::Mapping(_)) && !is_free_form(&path) {
                collect_leaves(child, path, out);
            } else {
                out.push(path);
            }
        }
    }
}

fn get_path<'a>(tree: &'a serde_yaml::Value, path: &str) -> Option<&'a serde_yaml::Value> {
    path.split('.').try_fold(tree, |v, k| v.get(k))
}

fn set_path(tree: &mut serde_yaml::Value, path: &str, value: serde_yaml::Value) {
    let mut cur = tree;
    for k in path.split('.') {
        cur = &mut cur[k];
    }
    *cur = value;
}

fn env_value(tree: &serde_yaml::Value, path: &str, raw: &str) -> Result<serde_yaml::Value> {
    use serde_yaml::Value;
    if is_free_form(path) {
        let mut map = serde_yaml::Mapping::new();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = pair.split_once('=') else {
                bail!("expected name=value pairs separated by commas, got {pair:?}");
            };
            map.insert(
                Value::String(name.trim().into()),
                Value::String(value.trim().into()),
            );
        }
        return Ok(Value::Mapping(map));
    }
    Ok(match get_path(tree, path) {
        Some(Value::Sequence(_)) => Value::Sequence(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        ),
        Some(Value::Bool(_)) => Value::Bool(match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => bail!("expected true or false, got {raw:?}"),
        }),
        Some(Value::Number(_)) => Value::Number(
            raw.trim()
                .parse::<u64>()
                .map_err(|_| anyhow::anyhow!("expected a whole number, got {raw:?}"))?
                .into(),
        ),
        _ => Value::String(raw.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, env: &[(&str, &str)], flags: Overrides) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, file).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Config::load(Some(&path), &env, &flags)
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let c = Config::load(None, &[], &Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.db_path(), PathBuf::from("./data/opamp.db"));
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        let file = "listen: 127.0.0.1:1000\ndatabase:\n  max_open_conns: 2\n";
        let c = load(file, &[], Overrides::default()).unwrap();
        assert_eq!(
            (c.listen.as_str(), c.database.max_open_conns),
            ("127.0.0.1:1000", 2)
        );
        let c = load(
            file,
            &[
                ("OPAMPD_LISTEN", "127.0.0.1:2000"),
                ("OPAMPD_DATABASE_MAX_OPEN_CONNS", "3"),
            ],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            (c.listen.as_str(), c.database.max_open_conns),
            ("127.0.0.1:2000", 3)
        );
        let flags = Overrides {
            listen: Some("127.0.0.1:3000".into()),
            ..Default::default()
        };
        let c = load(file, &[("OPAMPD_LISTEN", "127.0.0.1:2000")], flags).unwrap();
        assert_eq!(c.listen, "127.0.0.1:3000");
    }

    #[test]
    fn unknown_file_key_is_named() {
        let err = load("database:\n  max_open_con: 2\n", &[], Overrides::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown key `database.max_open_con`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = load("", &[("OPAMPD_NOPE", "1")], Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("OPAMPD_NOPE"), "{err}");
    }

    #[test]
    fn env_lists_are_comma_separated() {
        let c = load(
            "",
            &[("OPAMPD_OPAMP_AGENT_SECRETS", "secret-one-1, secret-two-2")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.opamp.agent_secrets, vec!["secret-one-1", "secret-two-2"]);
    }

    #[test]
    fn bad_values_are_explained() {
        let err = load("listen: nowhere\n", &[], Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("listen \"nowhere\""), "{err}");
        let err = load(
            "",
            &[("OPAMPD_DATABASE_MAX_OPEN_CONNS", "many")],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("expected a whole number"),
            "{err:#}"
        );
        let err = load("tls:\n  cert_file: a.pem\n", &[], Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
    }

    #[test]
    fn connection_settings_are_read_and_checked() {
        let file = "opamp:\n  public_url: wss://opamp.example.net/v1/opamp\ntelemetry:\n  own_metrics:\n    endpoint: https://otlp.example.net/v1/metrics\n    headers:\n      X-Api-Key: k1\n";
        let c = load(file, &[], Overrides::default()).unwrap();
        assert_eq!(
            c.opamp.public_url.as_deref(),
            Some("wss://opamp.example.net/v1/opamp")
        );
        assert_eq!(c.telemetry.own_metrics.headers["X-Api-Key"], "k1");
        let c = load(
            "",
            &[
                (
                    "OPAMPD_TELEMETRY_OWN_LOGS_ENDPOINT",
                    "http://otlp:4318/v1/logs",
                ),
                ("OPAMPD_TELEMETRY_OWN_LOGS_HEADERS", "A=1, B = 2"),
            ],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.telemetry.own_logs.headers,
            [("A".to_string(), "1".to_string()), ("B".into(), "2".into())].into()
        );
        let err = load(
            "opamp:\n  public_url: ftp://x/\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("opamp.public_url \"ftp://x/\" must start with one of ws://"),
            "{err}"
        );
        let err = load(
            "opamp:\n  public_url: /v1/opamp\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("opamp.public_url"), "{err}");
        let err = load(
            "telemetry:\n  own_traces:\n    headers:\n      A: b\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("telemetry.own_traces.endpoint is not"),
            "{err}"
        );
        let err = load(
            "telemetry:\n  own_traces:\n    endpoint: https://o/v1/traces\n    headers:\n      \"bad name\": b\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not a valid HTTP header name"),
            "{err}"
        );
    }
}
