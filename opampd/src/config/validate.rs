//! The checks of values the types cannot make: addresses, ranges, URLs,
//! settings that go together, and secrets that are no secrets.

use super::{Config, DatabaseConfig, OpampConfig};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;

impl Config {
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
