//! The opampd command line: one clap definition that the binary parses and
//! that `cargo xtask codegen` renders into `man/opampd.8`, together with the
//! sections of that page clap does not describe (configuration keys,
//! environment, files, signals, exit status).

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// OpAMP server: agents and versioned configurations in SQLite, REST API, health and metrics.
#[derive(Parser, Debug)]
#[command(name = "opampd", version, about, long_about = None)]
pub struct Cli {
    /// Address for the REST API, health, metrics and OpAMP (port 0 picks a free port)
    #[arg(long, env = "OPAMPD_LISTEN", global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Extra listener serving only the OpAMP endpoint, e.g. 0.0.0.0:4320
    #[arg(long, env = "OPAMPD_AGENT_LISTEN", global = true, value_name = "ADDR")]
    pub agent_listen: Option<String>,
    /// Directory holding opamp.db, admin.token and jwt.key
    #[arg(long, env = "OPAMPD_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL postgres://USER:PASSWORD@HOST:PORT/DATABASE instead of the SQLite file
    #[arg(
        long,
        env = "OPAMPD_DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,
    /// YAML configuration file
    #[arg(
        long,
        short = 'c',
        env = "OPAMPD_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. info or opampd=debug
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format: auto (text on a terminal, JSON otherwise), text or json
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate the configuration (file, environment, flags) without starting
    CheckConfig {
        /// Print the built-in defaults as YAML and exit
        #[arg(long)]
        print_defaults: bool,
        /// Print the effective configuration (secrets masked)
        #[arg(long)]
        print: bool,
    },
}

/// The clap definition of opampd, for the man page and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// DESCRIPTION of the man page; paragraphs are separated by a blank line.
pub const DESCRIPTION: &str = "\
opampd serves the Open Agent Management Protocol (OpAMP) over WebSocket and plain HTTP on one \
path, keeps the agent inventory and versioned configurations in an embedded SQLite database, \
and offers a REST API under /api/v1, health probes under /health and Prometheus metrics under \
/metrics.

Started without options it listens on 127.0.0.1:8080 and keeps its data in ./data. At the \
first start it creates an admin user and writes an admin API token to DATA_DIR/admin.token \
(mode 0600), so that opampctl(1) works at once on the same host.

Settings come from four layers; a later one wins: built-in defaults, the configuration file, \
environment variables, command-line flags. Unknown keys in the file or unknown OPAMPD_* \
variables stop the start, naming the key.";

/// What `opampd check-config` does, beyond its one-line help.
pub const CHECK_CONFIG: &str = "\
Validate the configuration (file, environment and flags), the token signing key and the TLS \
files without starting, then exit. With --print also print the effective configuration with \
secrets masked; with --print-defaults print the built-in defaults, which list every key.";

/// Introduction of the CONFIGURATION section.
pub const CONFIGURATION_INTRO: &str = "\
The file is YAML. Every key can also be set in the environment: the key path in upper case, \
joined by underscores, after OPAMPD_; for example database.max_open_conns is \
OPAMPD_DATABASE_MAX_OPEN_CONNS. Lists are comma-separated there.";

/// Every configuration key: (keys, separated by \", \"; what they do).
/// A unit test checks that each key of the configuration is listed here.
pub const CONFIGURATION: &[(&str, &str)] = &[
    (
        "listen, agent_listen, data_dir",
        "As the options of the same names.",
    ),
    (
        "log.level, log.format",
        "As the options of the same names (default info, auto).",
    ),
    ("log.file", "Also append JSON log lines to this file."),
    (
        "log.ring_lines",
        "Recent log lines kept in memory for opampctl logs (default 5000).",
    ),
    (
        "tls.cert_file, tls.key_file",
        "PEM certificate chain and key: serve HTTPS and WSS on every listener.",
    ),
    (
        "tls.client_ca_file, tls.require_client_cert",
        "Verify client certificates against these CAs; optionally require one. With \
         agent_listen they apply to the operator listener only, unless opamp.tls.client_ca_file \
         is unset (then the agent listener uses them too).",
    ),
    (
        "opamp.tls.client_ca_file, opamp.tls.require_client_cert",
        "The agent listener's (agent_listen) own client-certificate CAs; optionally require \
         one. An agent registered with a certificate is bound to its SHA-256 fingerprint: \
         another certificate cannot speak for its uid.",
    ),
    (
        "opamp.path",
        "Path of the OpAMP endpoint (default /v1/opamp).",
    ),
    (
        "opamp.agent_secrets",
        "Shared secrets agents send as an Authorization: Bearer or Secret-Key header; several \
         at once allow rotation. Placeholders and values published with opampd are refused. \
         Empty means open: allowed only when every listener is loopback.",
    ),
    (
        "opamp.allow_anonymous_agents",
        "Accept agents without a secret on a listener that is not loopback (default false: \
         opampd refuses to start there without agent secrets).",
    ),
    (
        "opamp.max_message_bytes, opamp.max_send_bytes",
        "Largest message accepted (after decompression) and sent (default 64 MiB); saving a \
         configuration, or starting a rollout, whose offer would not fit the send limit is \
         refused; an agent whose configurations do not fit together gets none of them and \
         shows as failed.",
    ),
    (
        "opamp.heartbeat_interval_seconds",
        "Expected agent heartbeat interval (default 30).",
    ),
    (
        "opamp.stale_after_seconds, opamp.disconnect_after_seconds",
        "Silence after which an agent is stale (default 90), and after which a plain-HTTP \
         agent is disconnected (default 300).",
    ),
    (
        "opamp.ws_ping_interval_seconds, opamp.ws_read_timeout_seconds",
        "Ping idle WebSocket connections (default 30); close those silent longer (default 120).",
    ),
    (
        "opamp.max_agents",
        "Agents served at once, however they arrive (a WebSocket, a new agent on a \
         WebSocket, a plain-HTTP agent, a new instance uid on request); past it new agents \
         get 503 with Retry-After (UNAVAILABLE with a retry delay on an open WebSocket). \
         0 means no limit.",
    ),
    (
        "opamp.max_agents_per_connection",
        "Agents one WebSocket connection may carry (default 16); a further agent on it is \
         refused with an error reply.",
    ),
    (
        "opamp.max_stored_bytes_per_agent",
        "Largest description, health, effective configuration or component list stored \
         for one agent (default 1 MiB, in stored JSON; a component list measured encoded); a \
         larger one is not stored, the rest of the report is, and the agent's events say \
         what was left out.",
    ),
    (
        "opamp.allowed_origins",
        "Browser origins (scheme://host[:port]) allowed to reach the OpAMP endpoint; a \
         request with any other Origin header is refused with 403 (default none: agents \
         send no Origin).",
    ),
    (
        "opamp.retry_after_seconds",
        "Retry-After sent with 429 and 503 (default 30).",
    ),
    (
        "opamp.reassign_duplicate_uids",
        "Give a second live agent that claims a uid in use a new uid (default true).",
    ),
    (
        "opamp.public_url",
        "The URL agents use to reach opampd (ws://, wss://, http:// or https://, e.g. \
         wss://opamp.example.com/v1/opamp). Agents with AcceptsOpAMPConnectionSettings are \
         offered it as their OpAMP destination, with opamp.heartbeat_interval_seconds and, when \
         agent secrets are set, the first one as Authorization: Bearer. Unset: no OpAMP \
         connection settings are offered.",
    ),
    (
        "telemetry.own_metrics.endpoint, telemetry.own_logs.endpoint, telemetry.own_traces.endpoint",
        "OTLP/HTTP URL (http:// or https://, with the path, e.g. \
         https://otlp.example.com/v1/metrics) offered to agents that report their own metrics, \
         logs or traces. Unset: not offered.",
    ),
    (
        "telemetry.own_metrics.headers, telemetry.own_logs.headers, telemetry.own_traces.headers",
        "Headers sent with that telemetry (name: value); in the environment as \
         name=value,name=value. An agent is offered a set of connection settings once; a \
         changed set (new URL, headers or first agent secret) is offered once more.",
    ),
    (
        "database.url",
        "PostgreSQL URL postgres://USER:PASSWORD@HOST:PORT/DATABASE (also --database-url): keep \
         the state in PostgreSQL instead of DATA_DIR/opamp.db, so that several opampd replicas \
         can share it. The schema is migrated at start under an advisory lock; the first \
         replica to find no user creates the admin user and writes admin.token to its own data \
         directory. Connections are made without TLS (sslmode=disable or prefer). The password \
         is never printed (check-config --print shows ********). Unset: SQLite.",
    ),
    (
        "database.max_open_conns, database.max_idle_conns",
        "Read pool size and idle connections kept (default 4 and 4); the writer is one more \
         connection.",
    ),
    (
        "database.conn_max_lifetime",
        "Seconds before a pooled read connection is reopened (default 3600).",
    ),
    (
        "database.flush_interval_ms",
        "How long the writer gathers changes into one transaction (default 50).",
    ),
    (
        "database.max_queued_writes",
        "Changes waiting for the database writer past which new ones wait for room (default \
         50000): an agent message that changes stored state waits up to a second, then gets \
         UNAVAILABLE with a retry delay (plain HTTP: 503 with Retry-After); an API write waits \
         up to 10 seconds, then gets 503.",
    ),
    (
        "database.last_seen_flush_seconds",
        "How often heartbeat times and sequence numbers of live agents are written, in one \
         batch (default 15).",
    ),
    (
        "database.busy_timeout_ms",
        "SQLite busy timeout (default 5000).",
    ),
    (
        "database.event_retention_days",
        "Age after which agent connection events are pruned (default 30).",
    ),
    (
        "database.slow_query_ms",
        "Queries slower than this count as slow in the metrics (default 100).",
    ),
    (
        "database.synchronous",
        "normal (default): a commit survives a crash of opampd; full: it survives power loss \
         too, at the cost of an fsync per write batch.",
    ),
    (
        "audit.retention_days",
        "Audit entries older than this are pruned hourly (default 365; 0 keeps them).",
    ),
    (
        "auth.jwt_secret_file",
        "File holding the token signing key; else JWT_SECRET_KEY, else a key generated into \
         the data directory.",
    ),
    (
        "auth.generate_jwt_secret",
        "Generate and keep a key in DATA_DIR/jwt.key when none is configured (always done when \
         no configuration file is given).",
    ),
    (
        "auth.token_ttl_minutes",
        "Lifetime of login tokens (default 60).",
    ),
    (
        "http.header_timeout_seconds, http.body_timeout_seconds",
        "Time allowed for request headers (default 10) and bodies (default 30; REST bodies \
         one more second per MiB declared).",
    ),
    (
        "http.idle_timeout_seconds",
        "Close HTTP/1.1 keep-alive and HTTP/2 connections without traffic for this long \
         (default 120).",
    ),
    (
        "http.max_api_body_bytes",
        "Largest REST request body (default 16 MiB); a restore upload has its own, larger \
         limit.",
    ),
    (
        "http.trusted_proxies",
        "Load balancers, as addresses or CIDR ranges (10.0.0.0/8), whose X-Forwarded-For \
         header is believed: behind them the client's address (port 0) is the right-most one \
         that is not a trusted proxy, in agents' remote_addr, logs, the audit and login \
         throttling. Empty (default): the header is ignored.",
    ),
    (
        "rollouts.batch_timeout_seconds",
        "Default time a rollout batch may take (default 300; a rollout's batch_timeout \
         overrides it; 0 waits for every report): then its agents that have not reported are \
         counted unconfirmed and the rollout moves on.",
    ),
    (
        "cluster.replica_id",
        "This replica's name, shown by /health, /health/ready, the replica_info metric and the          start-up log line (default: the host name, else opampd-RANDOM; letters, digits, '.',          '_', '-' and ':').",
    ),
    (
        "cluster.lease_seconds",
        "With several replicas on PostgreSQL: how long a replica's agents stay listed as \
         connected after its last heartbeat (default 30, 3 to 3600; renewed every third of it). \
         A replica killed without notice has its agents listed disconnected within this time.",
    ),
    (
        "packages.dir",
        "Where uploaded (hosted) package files are kept, named by their SHA-256 (default \
         DATA_DIR/packages). Several replicas need one directory they all share (a shared \
         volume): a file uploaded through one replica is served by all.",
    ),
    (
        "packages.max_file_bytes",
        "Largest package file one upload may bring (default 536870912, 512 MiB); a larger one \
         is refused with 413 and nothing is kept.",
    ),
    (
        "packages.public_url",
        "The address agents download hosted package files from, e.g. \
         https://opamp.example.com (files are under /v1/packages/). Default: the scheme and \
         host of opamp.public_url (wss becomes https), else the agent listener's address. \
         Behind a load balancer set it (or opamp.public_url) to the balancer's address.",
    ),
    (
        "packages.verify_interval_seconds",
        "A hosted file is checked against its SHA-256 before it is served on its first serve \
         after start, when it changed on disk, and when its last check is older than this \
         (default 3600); a file that does not match is refused to agents (410) and logged.",
    ),
    (
        "packages.orphan_grace_seconds",
        "A file in packages.dir that no catalogue entry names (a deleted version, an upload cut \
         short, files restored without their catalogue) is removed, and logged, once it is older \
         than this (default 3600); checked at start and every packages.verify_interval_seconds.",
    ),
];

/// ENVIRONMENT of the man page: (variables, what they do).
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "OPAMPD_LISTEN, OPAMPD_AGENT_LISTEN, OPAMPD_DATA_DIR, OPAMPD_CONFIG",
        "As the options of the same names.",
    ),
    (
        "OPAMPD_*",
        "Any configuration key, as described under CONFIGURATION.",
    ),
    (
        "JWT_SECRET_KEY",
        "Key that signs operator login tokens, unless auth.jwt_secret_file is set. Without a \
         stable key, login tokens do not survive a restart; API tokens always do.",
    ),
];

/// FILES of the man page: (path, what it is).
pub const FILES: &[(&str, &str)] = &[
    (
        "DATA_DIR/opamp.db",
        "The SQLite database (WAL mode, with opamp.db-wal and opamp.db-shm). Back it up with \
         opampctl backup, never by copying the files of a running server.",
    ),
    (
        "DATA_DIR/admin.token",
        "Admin API token written at the first start (mode 0600).",
    ),
    (
        "DATA_DIR/jwt.key",
        "Generated token signing key, when none is configured.",
    ),
    (
        "DATA_DIR/opamp.db.before-restore-TIMESTAMP",
        "The database a restore replaced.",
    ),
];

/// SIGNALS of the man page: (signals, what opampd does).
pub const SIGNALS: &[(&str, &str)] = &[
    (
        "SIGTERM, SIGINT",
        "Drain gracefully: stop accepting, close agent connections cleanly, flush the database \
         writer, exit 0.",
    ),
    (
        "SIGHUP",
        "Reload what can be reloaded: the log level and the agent secrets (agents that accept \
         OpAMP connection settings are offered the new first secret). Other changes are \
         reported and need a restart.",
    ),
];

/// EXIT STATUS of the man page: (code, meaning).
pub const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "Stopped after a signal, or check-config found the configuration valid.",
    ),
    (
        "1",
        "The configuration is invalid, a listener cannot be bound, the data directory or the \
         database cannot be used, or another error stopped the server; the reason is printed \
         on standard error.",
    ),
    ("2", "The command line is invalid."),
];

/// SEE ALSO of the man page: (page, section).
pub const SEE_ALSO: &[(&str, &str)] = &[
    ("opampctl", "1"),
    ("opampctl-doctor", "1"),
    ("opampctl-backup", "1"),
    ("systemd.service", "5"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(prefix: &str, value: &serde_yaml::Value, out: &mut Vec<String>) {
        match value {
            // An empty mapping is a free-form map (headers): a key of its own.
            serde_yaml::Value::Mapping(map) if !map.is_empty() => {
                for (key, child) in map {
                    let key = key.as_str().unwrap_or_default();
                    let path = if prefix.is_empty() {
                        key.to_string()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    keys(&path, child, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn every_configuration_key_is_documented() {
        let defaults = serde_yaml::to_value(crate::config::Config::default()).unwrap();
        let mut all = Vec::new();
        keys("", &defaults, &mut all);
        assert!(all.len() > 20, "{all:?}");
        let documented: Vec<&str> = CONFIGURATION
            .iter()
            .flat_map(|(names, _)| names.split(", "))
            .collect();
        for key in &all {
            assert!(
                documented.contains(&key.as_str()),
                "configuration key {key} is not documented: add it to CONFIGURATION in \
                 opampd/src/cli.rs and run `cargo xtask codegen`"
            );
        }
        for key in &documented {
            assert!(
                all.iter().any(|k| k == key),
                "CONFIGURATION in opampd/src/cli.rs documents {key}, which is not a configuration key"
            );
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }
}
