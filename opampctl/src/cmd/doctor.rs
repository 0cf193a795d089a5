//! `opampctl doctor` and `opampctl troubleshoot startup|agent-connect|db-pool|memory`:
//! the runbook's checks, each with a verdict (ok, warn, fail, skip) and a
//! remedy. `-o json` gives a report to paste into a bug report.

use super::{health, supervisor};
use crate::cli::{DoctorArgs, MemoryArgs, TroubleshootCmd};
use crate::client::Client;
use crate::context::{url, Settings};
use crate::error::{CtlError, Exit, Result};
use crate::localdb;
use crate::output;
use comfy_table::Cell;
use futures_util::{SinkExt, StreamExt};
use opamp_proto::api::{DbStats, HealthReport, MemoryReport};
use opamp_proto::{frame, pb};
use prost::Message as _;
use reqwest::Method;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
    /// Not applicable with the options given.
    Skip,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
            Verdict::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

fn check(name: &str, verdict: Verdict, detail: impl Into<String>, remedy: Option<&str>) -> Check {
    Check {
        name: name.into(),
        verdict,
        detail: detail.into(),
        remedy: remedy.map(str::to_owned),
    }
}

fn fail(name: &str, detail: impl Into<String>, remedy: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict: Verdict::Fail,
        detail: detail.into(),
        remedy: Some(remedy.into()),
    }
}

fn warn(name: &str, detail: impl Into<String>, remedy: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict: Verdict::Warn,
        detail: detail.into(),
        remedy: Some(remedy.into()),
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

/// The whole diagnosis; the JSON of `-o json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub opampctl_version: String,
    pub server: String,
    pub generated_at: String,
    pub host: HostInfo,
    pub server_reachable: bool,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory_samples: Vec<MemorySample>,
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct HostInfo {
    pub os: String,
    pub arch: String,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemorySample {
    pub at: String,
    pub rss_bytes: u64,
    pub agents_live: u64,
    pub connections: u64,
    pub subsystems: std::collections::BTreeMap<String, u64>,
}

/// Shared state of one run: what the server said, whether it answered.
struct Run<'a> {
    s: &'a Settings,
    c: &'a Client,
    a: &'a DoctorArgs,
    reachable: Option<bool>,
    health: Option<HealthReport>,
    checks: Vec<Check>,
}

impl<'a> Run<'a> {
    fn push(&mut self, c: Check) {
        self.checks.push(c);
    }

    fn opamp_url(&self) -> String {
        match &self.a.opamp_url {
            Some(u) => u.clone(),
            None => format!("{}{}", self.c.base, self.a.opamp_path),
        }
    }

    // ------------------------------------------------------------------ config

    fn config(&mut self) {
        let Some(cfg) = &self.a.config else {
            self.push(check(
                "config",
                Verdict::Skip,
                "no --config FILE given",
                None,
            ));
            return;
        };
        if !cfg.is_file() {
            self.push(fail(
                "config",
                format!("{} does not exist", cfg.display()),
                "pass the path opampd is started with (see the unit file or OPAMPD_CONFIG)",
            ));
            return;
        }
        if supervisor::which("opampd").is_none() {
            self.push(warn(
                "config",
                format!("opampd is not on PATH: cannot validate {}", cfg.display()),
                "put opampd on PATH (or run on the server host) to validate the configuration",
            ));
            return;
        }
        match std::process::Command::new("opampd")
            .arg("check-config")
            .arg("--config")
            .arg(cfg)
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => self.push(check(
                "config",
                Verdict::Ok,
                format!("{} is valid (opampd check-config)", cfg.display()),
                None,
            )),
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let msg = err
                    .lines()
                    .find(|l| l.contains("error"))
                    .unwrap_or(err.trim())
                    .trim()
                    .to_string();
                self.push(fail(
                    "config",
                    format!("{}: {msg}", cfg.display()),
                    "fix the key or value named above; `opampd check-config --print-defaults` lists every key",
                ))
            }
            Err(e) => self.push(warn(
                "config",
                format!("cannot run opampd check-config: {e}"),
                "check that the opampd binary on PATH runs",
            )),
        }
    }

    // ---------------------------------------------------------------- data dir

    fn data_dir(&mut self) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let Some(dir) = &self.a.data_dir else {
            self.push(check(
                "data-dir",
                Verdict::Skip,
                "no --data-dir DIR given",
                None,
            ));
            return;
        };
        let meta = match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => {
                self.push(fail(
                    "data-dir",
                    format!("{} is not a directory", dir.display()),
                    "point opampd's --data-dir (OPAMPD_DATA_DIR) at a directory",
                ));
                return;
            }
            Err(e) => {
                self.push(fail(
                    "data-dir",
                    format!("{}: {e}", dir.display()),
                    "create it (opampd creates it at start if its parent is writable), owned by the service user",
                ));
                return;
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        let probe = dir.join(".opampctl-doctor-probe");
        let writable = std::fs::write(&probe, b"").is_ok();
        let _ = std::fs::remove_file(&probe);
        let mut notes = vec![format!(
            "{} mode {:o}, owner uid {}",
            dir.display(),
            mode,
            meta.uid()
        )];
        let mut verdict = Verdict::Ok;
        let mut remedy = None;
        if !writable {
            verdict = Verdict::Fail;
            notes.push(format!("not writable by this user (uid {})", current_uid()));
            remedy = Some(format!(
                "chown -R <service user> {} (opampd must write the database, WAL and backups there); or run opampctl as the service user",
                dir.display()
            ));
        }
        if mode & 0o007 != 0 {
            if verdict == Verdict::Ok {
                verdict = Verdict::Warn;
            }
            notes.push("readable by other users".into());
            remedy.get_or_insert_with(|| {
                format!(
                    "chmod o-rwx {}: it holds the database and admin.token",
                    dir.display()
                )
            });
        }
        let token = dir.join("admin.token");
        if let Ok(m) = std::fs::metadata(&token) {
            if m.permissions().mode() & 0o077 != 0 {
                if verdict == Verdict::Ok {
                    verdict = Verdict::Warn;
                }
                notes.push(format!(
                    "admin.token mode {:o} (should be 600)",
                    m.permissions().mode() & 0o777
                ));
                remedy.get_or_insert_with(|| format!("chmod 600 {}", token.display()));
            }
        }
        self.push(Check {
            name: "data-dir".into(),
            verdict,
            detail: notes.join("; "),
            remedy,
        });
    }

    // ---------------------------------------------------------------- database

    fn database(&mut self) {
        let Some(dir) = &self.a.data_dir else {
            self.push(check(
                "database",
                Verdict::Skip,
                "no --data-dir DIR given (the server's view is in the health check)",
                None,
            ));
            return;
        };
        let db = dir.join("opamp.db");
        if !db.exists() {
            self.push(warn(
                "database",
                format!("{} does not exist yet", db.display()),
                "opampd creates it at its first start; if it should exist, check --data-dir",
            ));
            return;
        }
        match localdb::check_db(&db) {
            Ok(v) => {
                let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
                let wal = std::fs::metadata(format!("{}-wal", db.display()))
                    .map(|m| m.len())
                    .unwrap_or(0);
                let c = if wal > 256 << 20 {
                    warn(
                        "database",
                        format!(
                            "{}: integrity ok, schema {v}, {} but the WAL is {}",
                            db.display(),
                            output::bytes(size),
                            output::bytes(wal)
                        ),
                        "a long-running reader blocks checkpoints; run `opampctl db optimize`",
                    )
                } else {
                    check(
                        "database",
                        Verdict::Ok,
                        format!(
                            "{}: integrity ok, schema {v}, {}, WAL {}",
                            db.display(),
                            output::bytes(size),
                            output::bytes(wal)
                        ),
                        None,
                    )
                };
                self.push(c);
            }
            Err(e) => self.push(fail(
                "database",
                format!("{}: {e}", db.display()),
                "stop opampd and restore the newest good backup: `opampctl restore FILE --data-dir DIR`",
            )),
        }
    }

    // -------------------------------------------------------------------- port

    async fn port(&mut self) {
        if !crate::context::is_local_url(&self.c.base) {
            self.push(check(
                "port",
                Verdict::Skip,
                format!("{} is not on this host", self.c.base),
                None,
            ));
            return;
        }
        let Some(port) = url::port(&self.c.base) else {
            return;
        };
        let listeners = listening_sockets(port);
        let live = self
            .c
            .send_any(self.c.request(Method::GET, "/health/live"))
            .await
            .is_ok_and(|r| r.status().is_success());
        let owners: Vec<String> = listeners
            .iter()
            .map(|l| match &l.owner {
                Some((pid, comm)) => format!("{} (pid {pid}) on {}", comm, l.local),
                None => format!(
                    "a process of uid {} on {} (run as root to see which)",
                    l.uid, l.local
                ),
            })
            .collect();
        if listeners.is_empty() {
            self.push(fail(
                "port",
                format!("nothing listens on port {port}"),
                "start opampd (e.g. `systemctl start opampd`); if it does not stay up, run `opampctl troubleshoot startup` and read `opampctl logs --via journald`",
            ));
        } else if live {
            self.push(check(
                "port",
                Verdict::Ok,
                format!("port {port}: {}", owners.join(", ")),
                None,
            ));
        } else {
            self.push(fail(
                "port",
                format!(
                    "port {port} is taken by {}, which does not answer as opampd",
                    owners.join(", ")
                ),
                "stop that process, or give opampd another `listen` address (and --server here)",
            ));
        }
    }

    // ------------------------------------------------------------------ server

    async fn server(&mut self) {
        match health::check(self.c).await {
            Ok(h) => {
                self.reachable = Some(true);
                let report = h.health.clone();
                let detail = match &report {
                    Some(r) => format!(
                        "{} {}: live {}, ready {}, database {} ({:.1} ms), {} of {} agents connected",
                        self.c.base,
                        r.status,
                        h.live.status_code,
                        h.ready.status_code,
                        r.database.status,
                        r.database.latency_ms,
                        r.agents.connected,
                        r.agents.total
                    ),
                    None => format!(
                        "{}: live {}, ready {}, no /health report",
                        self.c.base, h.live.status_code, h.ready.status_code
                    ),
                };
                let problems = report
                    .as_ref()
                    .map(|r| r.problems.join("; "))
                    .unwrap_or_default();
                let c = match report.as_ref().map(|r| r.status.as_str()) {
                    Some("ok") if h.ready.status_code == 200 => {
                        check("server", Verdict::Ok, detail, None)
                    }
                    Some("degraded") => warn(
                        "server",
                        format!("{detail}; {problems}"),
                        "see the problems above; `opampctl logs --level warn` shows the causes (disk full? read-only file system?)",
                    ),
                    _ if h.ready.status_code != 200 => fail(
                        "server",
                        format!("{detail}; not ready ({})", h.ready.status),
                        "opampd is starting or draining; if it stays so, read `opampctl logs`",
                    ),
                    _ => fail(
                        "server",
                        format!("{detail}; {problems}"),
                        "the database does not answer: check the disk and `opampctl troubleshoot db-pool`",
                    ),
                };
                self.health = report;
                self.push(c);
            }
            Err(e) if e.exit == Exit::Unreachable => {
                self.reachable = Some(false);
                self.push(fail(
                    "server",
                    e.message,
                    "start opampd or fix --server; `opampctl troubleshoot startup --config FILE --data-dir DIR` checks why it does not start",
                ));
            }
            Err(e) => {
                self.reachable = Some(true);
                self.push(fail(
                    "server",
                    e.message,
                    "see the opampd log: `opampctl logs`",
                ));
            }
        }
    }

    fn server_down(&self) -> bool {
        self.reachable == Some(false)
    }

    // --------------------------------------------------------------------- tls

    async fn tls(&mut self) {
        if let Some(f) = &self.a.tls_cert {
            let c = match std::fs::read(f) {
                Ok(pem) => {
                    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&pem)
                        .filter_map(|p| p.ok())
                        .filter(|p| p.label == "CERTIFICATE")
                        .map(|p| p.contents)
                        .collect();
                    match ders.first() {
                        Some(der) => cert_check(&format!("{}", f.display()), der, None),
                        None => fail(
                            "tls",
                            format!("{} holds no PEM certificate", f.display()),
                            "pass the certificate file of tls.cert_file (PEM, BEGIN CERTIFICATE)",
                        ),
                    }
                }
                Err(e) => fail(
                    "tls",
                    format!("cannot read {}: {e}", f.display()),
                    "pass a readable certificate file",
                ),
            };
            self.push(c);
        }
        if url::scheme(&self.c.base) != "https" {
            if self.a.tls_cert.is_none() {
                self.push(check(
                    "tls",
                    Verdict::Skip,
                    format!(
                        "{} is plain http (pass --tls-cert FILE to check a certificate file)",
                        self.c.base
                    ),
                    None,
                ));
            }
            return;
        }
        if self.server_down() {
            return;
        }
        let host = url::host(&self.c.base);
        let port = url::port(&self.c.base).unwrap_or(443);
        match peer_certificates(&host, port).await {
            Ok(chain) if !chain.is_empty() => {
                let mut c = cert_check(&format!("{host}:{port}"), &chain[0], Some(&host));
                if c.verdict != Verdict::Fail {
                    // Does the chain verify against the trusted roots (and --ca-file)?
                    if let Err(e) = self
                        .c
                        .send_any(self.c.request(Method::GET, "/health/live"))
                        .await
                    {
                        c = fail(
                            "tls",
                            format!("{}; but it is not trusted here: {}", c.detail, e.message),
                            "give clients the CA (opampctl --ca-file, the agents' TLS settings) or use a certificate from a trusted CA",
                        );
                    }
                }
                self.push(c);
            }
            Ok(_) => self.push(fail(
                "tls",
                "the server sent no certificate",
                "check tls.cert_file",
            )),
            Err(e) => self.push(fail(
                "tls",
                format!("TLS handshake with {host}:{port} failed: {e}"),
                "check tls.cert_file and tls.key_file in the opampd config",
            )),
        }
    }

    // ------------------------------------------------------------------- OpAMP

    async fn opamp_http(&mut self) {
        if self.server_down() {
            self.push(check(
                "opamp-http",
                Verdict::Skip,
                "the server is unreachable",
                None,
            ));
            return;
        }
        let url = self.opamp_url();
        let uid = *uuid::Uuid::now_v7().as_bytes();
        let msg = probe_message(uid);
        let mut req = self
            .c
            .plain(Method::POST, &url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(msg.encode_to_vec());
        if let Some(secret) = &self.a.agent_secret {
            req = req.bearer_auth(secret);
        }
        let c = match self.c.send_any(req).await {
            Err(e) => fail(
                "opamp-http",
                format!("POST {url}: {}", e.message),
                "check the OpAMP URL (--opamp-url, opamp.path) and that agents can reach that listener",
            ),
            Ok(r) => {
                let status = r.status().as_u16();
                let ct = r
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = r.bytes().await.unwrap_or_default();
                match status {
                    401 if self.a.agent_secret.is_none() => warn(
                        "opamp-http",
                        format!("POST {url}: 401, the server requires an agent secret"),
                        "pass --agent-secret SECRET (one of opamp.agent_secrets) to test the exchange",
                    ),
                    401 => fail(
                        "opamp-http",
                        format!("POST {url}: 401, the agent secret was refused"),
                        "use one of opamp.agent_secrets; after changing them run `systemctl reload opampd`",
                    ),
                    200 if ct == "application/x-protobuf" => match pb::ServerToAgent::decode(body.as_ref()) {
                        Ok(reply) => judge_reply("opamp-http", &url, &uid, &reply),
                        Err(e) => fail(
                            "opamp-http",
                            format!("POST {url}: the reply is not a ServerToAgent: {e}"),
                            "something else answers on that path (a proxy?); check opamp.path",
                        ),
                    },
                    _ => fail(
                        "opamp-http",
                        format!(
                            "POST {url}: {status} {ct}: {}",
                            String::from_utf8_lossy(&body).trim().chars().take(200).collect::<String>()
                        ),
                        "check opamp.path and any proxy in front of opampd (it must pass application/x-protobuf through)",
                    ),
                }
            }
        };
        let exchanged = c.verdict == Verdict::Ok;
        self.push(c);
        if exchanged {
            self.forget_probe(&uid).await;
        }
    }

    async fn opamp_ws(&mut self) {
        if self.server_down() {
            self.push(check(
                "opamp-ws",
                Verdict::Skip,
                "the server is unreachable",
                None,
            ));
            return;
        }
        let http_url = self.opamp_url();
        let ws_url = if let Some(rest) = http_url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", http_url.trim_start_matches("http://"))
        };
        let uid = *uuid::Uuid::now_v7().as_bytes();
        let result = tokio::time::timeout(
            self.s.timeout,
            ws_exchange(&ws_url, self.a.agent_secret.as_deref(), uid),
        )
        .await;
        let c = match result {
            Err(_) => fail(
                "opamp-ws",
                format!("{ws_url}: no reply within {}s", self.s.timeout.as_secs()),
                "a proxy may not pass WebSocket upgrades: enable them for the OpAMP path",
            ),
            Ok(Err(e)) if e.contains("401") => {
                if self.a.agent_secret.is_none() {
                    warn(
                        "opamp-ws",
                        format!("{ws_url}: 401 before the upgrade, the server requires an agent secret"),
                        "pass --agent-secret SECRET to test the exchange",
                    )
                } else {
                    fail(
                        "opamp-ws",
                        format!("{ws_url}: 401, the agent secret was refused"),
                        "use one of opamp.agent_secrets",
                    )
                }
            }
            Ok(Err(e)) => fail(
                "opamp-ws",
                format!("{ws_url}: {e}"),
                "check that proxies pass WebSocket upgrades (Upgrade/Connection headers) on the OpAMP path",
            ),
            Ok(Ok(reply)) => judge_reply("opamp-ws", &ws_url, &uid, &reply),
        };
        let exchanged = c.verdict == Verdict::Ok;
        self.push(c);
        if exchanged {
            self.forget_probe(&uid).await;
        }
    }

    /// Deletes the inventory entry a probe created (best effort; needs an operator token).
    async fn forget_probe(&mut self, uid: &[u8; 16]) {
        let id = opamp_proto::uid_string(uid);
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = self
                .c
                .send_any(
                    self.c
                        .request(Method::DELETE, &format!("/api/v1/agents/{id}?force=true")),
                )
                .await;
            match r.map(|r| r.status().as_u16()) {
                Ok(204) | Ok(200) => return,
                Ok(404) => continue,
                _ => break,
            }
        }
        if let Some(last) = self.checks.last_mut() {
            last.detail.push_str(&format!(
                " (probe agent {id} stays in the inventory: delete it with `opampctl agents delete {id}`)"
            ));
        }
    }

    async fn agent_secret(&mut self) {
        if self.server_down() {
            return;
        }
        let url = self.opamp_url();
        // An empty instance uid is refused by the protocol layer, after
        // authentication: the status tells whether the secret was accepted,
        // and no agent is recorded.
        let empty = pb::AgentToServer::default().encode_to_vec();
        let post = |secret: Option<&str>| {
            let mut r = self
                .c
                .plain(Method::POST, &url)
                .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                .body(empty.clone());
            if let Some(s) = secret {
                r = r.bearer_auth(s);
            }
            r
        };
        let open = match self.c.send_any(post(None)).await {
            Ok(r) => r.status().as_u16() != 401,
            Err(_) => return,
        };
        match &self.a.agent_secret {
            None if open => self.push(warn(
                "agent-secret",
                "the OpAMP endpoint accepts agents without a secret",
                "set opamp.agent_secrets in the opampd config (agents send one as 'Authorization: Bearer <secret>')",
            )),
            None => self.push(check(
                "agent-secret",
                Verdict::Ok,
                "agent secrets are required (pass --agent-secret to test one)",
                None,
            )),
            Some(secret) => {
                let status = self
                    .c
                    .send_any(post(Some(secret)))
                    .await
                    .map(|r| r.status().as_u16());
                match status {
                    Ok(401) => self.push(fail(
                        "agent-secret",
                        "the given agent secret is refused (401)",
                        "use one of opamp.agent_secrets; after changing them run `systemctl reload opampd` (SIGHUP)",
                    )),
                    Ok(_) if open => self.push(warn(
                        "agent-secret",
                        "the secret works, but so does no secret: the endpoint is open",
                        "set opamp.agent_secrets in the opampd config",
                    )),
                    Ok(_) => self.push(check(
                        "agent-secret",
                        Verdict::Ok,
                        "the given agent secret is accepted; requests without one get 401",
                        None,
                    )),
                    Err(e) => self.push(fail("agent-secret", e.message, "see the opamp-http check")),
                }
            }
        }
    }

    fn agents(&mut self) {
        let Some(h) = &self.health else { return };
        let a = &h.agents;
        let c = if a.total > 0 && a.connected == 0 {
            warn(
                "agents",
                format!("none of {} known agents is connected ({} stale)", a.total, a.stale),
                "check the agents' OpAMP endpoint setting and their logs; the opamp-http and opamp-ws checks test this server's side",
            )
        } else if a.stale > 0 {
            warn(
                "agents",
                format!(
                    "{} connected, {} stale (silent past opamp.stale_after_seconds)",
                    a.connected, a.stale
                ),
                "stale agents are connected but silent: check their heartbeat interval and network",
            )
        } else {
            check(
                "agents",
                Verdict::Ok,
                format!(
                    "{} connected, {} disconnected, {} total",
                    a.connected, a.disconnected, a.total
                ),
                None,
            )
        };
        self.push(c);
    }

    // ------------------------------------------------------------------ db pool

    async fn db_pool(&mut self) {
        let Some(h) = self.health.clone() else { return };
        let p = &h.pool;
        let mut notes = vec![format!(
            "read pool {} of {} open, {} in use, {} waits; writer queue {}",
            p.open, p.max_open, p.in_use, p.waits_total, h.database.writer_queue
        )];
        let mut verdict = Verdict::Ok;
        let mut remedy = None;
        if p.waits_total > 0 || (p.max_open > 0 && p.in_use >= p.max_open) {
            verdict = Verdict::Warn;
            remedy = Some(format!(
                "requests waited for a read connection: raise database.max_open_conns (now {}) and find slow queries below",
                p.max_open
            ));
        }
        if h.database.writer_queue > 1000 {
            verdict = Verdict::Warn;
            notes.push("the writer is behind".into());
            remedy.get_or_insert_with(|| {
                "the disk is slow or busy: check iostat; raise database.flush_interval_ms to batch more".into()
            });
        }
        self.push(Check {
            name: "db-pool".into(),
            verdict,
            detail: notes.join("; "),
            remedy,
        });
        match self
            .c
            .send_any(self.c.request(Method::GET, "/metrics"))
            .await
        {
            Ok(r) if r.status().is_success() => {
                let text = r.text().await.unwrap_or_default();
                let q = query_stats(&text);
                let slow: u64 = q.iter().map(|x| x.slow).sum();
                let mut worst: Vec<&QueryStat> = q.iter().filter(|x| x.count > 0).collect();
                worst.sort_by(|a, b| b.mean().total_cmp(&a.mean()));
                let top: Vec<String> = worst
                    .iter()
                    .take(3)
                    .map(|x| {
                        format!(
                            "{} {:.1} ms avg over {}",
                            x.operation,
                            x.mean() * 1000.0,
                            x.count
                        )
                    })
                    .collect();
                let detail = format!(
                    "{slow} slow queries; slowest on average: {}",
                    if top.is_empty() {
                        "-".into()
                    } else {
                        top.join(", ")
                    }
                );
                self.push(if slow > 0 {
                    warn(
                        "slow-queries",
                        detail,
                        "run `opampctl db optimize` (ANALYZE, VACUUM); if the slow operation is a list, use smaller pages or selectors",
                    )
                } else {
                    check("slow-queries", Verdict::Ok, detail, None)
                });
            }
            _ => self.push(warn(
                "slow-queries",
                "cannot read /metrics",
                "check that /metrics is reachable from here",
            )),
        }
        match self.c.get::<DbStats>("/api/v1/admin/db/stats").await {
            Ok(st) => {
                let free = st.freelist_count * st.page_size;
                let detail = format!(
                    "{} on disk, WAL {}, {} free pages ({}), {} agents",
                    output::bytes(st.size_bytes),
                    output::bytes(st.wal_bytes),
                    st.freelist_count,
                    output::bytes(free),
                    st.tables.get("agents").copied().unwrap_or(0)
                );
                self.push(
                    if st.wal_bytes > 256 << 20 || (st.size_bytes > 0 && free * 4 > st.size_bytes) {
                        warn(
                            "db-size",
                            detail,
                            "run `opampctl db optimize` in a quiet hour",
                        )
                    } else {
                        check("db-size", Verdict::Ok, detail, None)
                    },
                );
            }
            Err(e) => self.push(warn(
                "db-size",
                format!("cannot read database statistics: {}", e.message),
                "use an admin token for the full report",
            )),
        }
    }

    // ------------------------------------------------------------------ memory

    async fn memory_once(&mut self) {
        match self.c.get::<MemoryReport>("/api/v1/admin/memory").await {
            Ok(m) => {
                let top = top_subsystems(&m);
                self.push(check(
                    "memory",
                    Verdict::Ok,
                    format!(
                        "RSS {} (peak {}), {} agents, {} connections; largest: {top}",
                        output::bytes(m.rss_bytes),
                        output::bytes(m.allocator.get("VmHWM").copied().unwrap_or(0)),
                        m.agents_live,
                        m.connections
                    ),
                    None,
                ));
            }
            Err(e) => self.push(warn(
                "memory",
                format!("cannot read the memory report: {}", e.message),
                "use an admin token",
            )),
        }
    }
}

fn top_subsystems(m: &MemoryReport) -> String {
    let mut v: Vec<(&String, &u64)> = m.subsystems.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    v.iter()
        .take(3)
        .map(|(k, n)| format!("{k} {}", output::bytes(**n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One operation's query statistics from /metrics.
#[derive(Debug, Default, Clone)]
pub struct QueryStat {
    pub operation: String,
    pub count: u64,
    pub sum_seconds: f64,
    pub slow: u64,
}

impl QueryStat {
    fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_seconds / self.count as f64
        }
    }
}

/// Reads db query counts, durations and slow counts per operation.
pub fn query_stats(metrics: &str) -> Vec<QueryStat> {
    let mut by: std::collections::BTreeMap<String, QueryStat> = Default::default();
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(op) = name_labels
            .split("operation=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or("");
        let v: f64 = value.parse().unwrap_or(0.0);
        let e = by.entry(op.to_string()).or_insert_with(|| QueryStat {
            operation: op.to_string(),
            ..Default::default()
        });
        match name {
            "opamp_platform_db_query_duration_seconds_sum" => e.sum_seconds = v,
            "opamp_platform_db_query_duration_seconds_count" => e.count = v as u64,
            "opamp_platform_db_slow_queries_total" => e.slow = v as u64,
            _ => {}
        }
    }
    by.into_values().collect()
}

fn probe_message(uid: [u8; 16]) -> pb::AgentToServer {
    let kv = |k: &str, v: &str| pb::KeyValue {
        key: k.into(),
        value: Some(pb::AnyValue {
            value: Some(pb::any_value::Value::StringValue(v.into())),
        }),
    };
    pb::AgentToServer {
        instance_uid: uid.to_vec(),
        sequence_num: 0,
        capabilities: opamp_proto::caps::REPORTS_STATUS,
        agent_description: Some(pb::AgentDescription {
            identifying_attributes: vec![kv("service.name", "opampctl-doctor")],
            non_identifying_attributes: vec![],
        }),
        agent_disconnect: Some(pb::AgentDisconnect {}),
        ..Default::default()
    }
}

fn judge_reply(name: &str, url: &str, uid: &[u8; 16], reply: &pb::ServerToAgent) -> Check {
    if let Some(err) = &reply.error_response {
        return fail(
            name,
            format!(
                "{url}: the server answered with an error: {}",
                err.error_message
            ),
            "see the opampd log: `opampctl logs --level warn`",
        );
    }
    if reply.instance_uid != uid.to_vec() {
        return fail(
            name,
            format!("{url}: the reply does not echo the instance uid"),
            "something other than opampd answers there (a proxy?)",
        );
    }
    if reply.capabilities & opamp_proto::caps::SERVER_ACCEPTS_STATUS == 0 {
        return fail(
            name,
            format!(
                "{url}: the reply lacks the AcceptsStatus capability (capabilities {:#x})",
                reply.capabilities
            ),
            "upgrade opampd; a server must announce its capabilities",
        );
    }
    check(
        name,
        Verdict::Ok,
        format!(
            "{url}: AgentToServer answered, capabilities {:#x} (AcceptsStatus)",
            reply.capabilities
        ),
        None,
    )
}

/// WebSocket: header 0 + AgentToServer, one reply, then agent_disconnect and close.
async fn ws_exchange(
    ws_url: &str,
    secret: Option<&str>,
    uid: [u8; 16],
) -> std::result::Result<pb::ServerToAgent, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = ws_url
        .into_client_request()
        .map_err(|e| format!("bad WebSocket URL: {e}"))?;
    if let Some(s) = secret {
        let v = format!("Bearer {s}")
            .parse()
            .map_err(|_| "the agent secret is not a valid header value".to_string())?;
        req.headers_mut().insert("authorization", v);
    }
    let host = url::host(ws_url);
    let port = url::port(ws_url).unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let stream: Box<dyn Io> = if ws_url.starts_with("wss://") {
        let tls = tls_connector(Arc::new(Mutex::new(Vec::new()))).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("bad host name {host}: {e}"))?;
        let s = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| format!("WebSocket upgrade failed: {e}"))?;
    ws.send(Message::Binary(
        frame::encode_message(&probe_first(uid)).into(),
    ))
    .await
    .map_err(|e| format!("send failed: {e}"))?;
    let reply = loop {
        let m = ws
            .next()
            .await
            .ok_or("the server closed the connection without a reply")?
            .map_err(|e| format!("read failed: {e}"))?;
        match m {
            Message::Binary(b) => {
                let payload = frame::decode(&b).map_err(|e| e.to_string())?;
                break pb::ServerToAgent::decode(payload)
                    .map_err(|e| format!("the reply is not a ServerToAgent: {e}"))?;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(c) => return Err(format!("the server closed the connection: {c:?}")),
            other => return Err(format!("unexpected message {other:?}")),
        }
    };
    let bye = pb::AgentToServer {
        instance_uid: uid.to_vec(),
        sequence_num: 1,
        capabilities: opamp_proto::caps::REPORTS_STATUS,
        agent_disconnect: Some(pb::AgentDisconnect {}),
        ..Default::default()
    };
    let _ = ws
        .send(Message::Binary(frame::encode_message(&bye).into()))
        .await;
    let _ = ws.close(None).await;
    Ok(reply)
}

/// A byte stream a WebSocket can run over: plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

fn probe_first(uid: [u8; 16]) -> pb::AgentToServer {
    let mut m = probe_message(uid);
    m.agent_disconnect = None;
    m
}

// ------------------------------------------------------------------------ TLS

/// Accepts any certificate and keeps the chain: for inspecting it, never for trusting it.
#[derive(Debug)]
struct Capture {
    chain: Arc<Mutex<Vec<Vec<u8>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut c = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        c.push(end_entity.to_vec());
        c.extend(intermediates.iter().map(|i| i.to_vec()));
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls_connector(
    chain: Arc<Mutex<Vec<Vec<u8>>>>,
) -> std::result::Result<tokio_rustls::TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Capture { chain, provider }))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn peer_certificates(host: &str, port: u16) -> std::result::Result<Vec<Vec<u8>>, String> {
    let chain = Arc::new(Mutex::new(Vec::new()));
    let connector = tls_connector(chain.clone()).map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let c = chain.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(c)
}

/// Validity window, expiry and (for a server) the host name of a certificate.
fn cert_check(what: &str, der: &[u8], host: Option<&str>) -> Check {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => c,
        Err(e) => {
            return fail(
                "tls",
                format!("{what}: the certificate cannot be parsed: {e}"),
                "use a PEM (X.509) certificate",
            )
        }
    };
    let now = chrono::Utc::now().timestamp();
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let expires = chrono::DateTime::from_timestamp(not_after, 0)
        .map(|d| d.to_rfc3339())
        .unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => {
                        names.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string())
                    }
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        names.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let detail = format!(
        "{what}: subject {}, issuer {}, names [{}], expires {expires}",
        cert.subject(),
        cert.issuer(),
        names.join(", ")
    );
    if now > not_after {
        return fail(
            "tls",
            format!("{detail}: EXPIRED"),
            "renew the certificate (tls.cert_file) and restart opampd",
        );
    }
    if now < not_before {
        return fail(
            "tls",
            format!("{detail}: not valid yet"),
            "check the clock of this host and of the CA",
        );
    }
    if let Some(h) = host {
        let matches = names.iter().any(|n| {
            n.eq_ignore_ascii_case(h)
                || n.strip_prefix("*.").is_some_and(|suffix| {
                    h.split_once('.')
                        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(suffix))
                })
        });
        if !matches {
            return fail(
                "tls",
                format!("{detail}: {h} is not among its names"),
                "issue the certificate for the name clients use (subjectAltName), or use that name in --server",
            );
        }
    }
    let days = (not_after - now) / 86400;
    if days < 14 {
        return warn(
            "tls",
            format!("{detail}: expires in {days} days"),
            "renew the certificate soon",
        );
    }
    check(
        "tls",
        Verdict::Ok,
        format!("{detail} ({days} days left)"),
        None,
    )
}

// ---------------------------------------------------------------- port owner

/// A listening TCP socket and, if visible, its process.
#[derive(Debug, Clone)]
pub struct Listener {
    pub local: String,
    pub uid: u32,
    pub inode: u64,
    pub owner: Option<(u32, String)>,
}

/// Listening sockets on `port`, from /proc/net/tcp{,6}, with their processes
/// (found through /proc/*/fd; other users' processes need root).
pub fn listening_sockets(port: u16) -> Vec<Listener> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((addr, p)) = f[1].split_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            out.push(Listener {
                local: format!("{}:{port}", hex_addr(addr, v6)),
                uid: f[7].parse().unwrap_or(0),
                inode: f[9].parse().unwrap_or(0),
                owner: None,
            });
        }
    }
    if out.is_empty() {
        return out;
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.filter_map(|e| e.ok()) {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.filter_map(|e| e.ok()) {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let t = target.to_string_lossy();
                let Some(inode) = t
                    .strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|r| r.parse::<u64>().ok())
                else {
                    continue;
                };
                for l in out
                    .iter_mut()
                    .filter(|l| l.inode == inode && l.owner.is_none())
                {
                    let comm = std::fs::read_to_string(p.path().join("comm"))
                        .map(|c| c.trim().to_string())
                        .unwrap_or_else(|_| "?".into());
                    l.owner = Some((pid, comm));
                }
            }
        }
    }
    out
}

fn hex_addr(h: &str, v6: bool) -> String {
    let bytes: Vec<u8> = (0..h.len() / 2)
        .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
        .collect();
    if !v6 && bytes.len() == 4 {
        return std::net::Ipv4Addr::new(bytes[3], bytes[2], bytes[1], bytes[0]).to_string();
    }
    if v6 && bytes.len() == 16 {
        // Four 32-bit words, each in host (little-endian) order.
        let mut b = [0u8; 16];
        for w in 0..4 {
            for i in 0..4 {
                b[w * 4 + i] = bytes[w * 4 + 3 - i];
            }
        }
        return format!("[{}]", std::net::Ipv6Addr::from(b));
    }
    h.to_string()
}

fn current_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

// ------------------------------------------------------------------- report

fn host_info() -> HostInfo {
    HostInfo {
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

fn finish(s: &Settings, command: &str, run: Run<'_>, samples: Vec<MemorySample>) -> Result<()> {
    let count = |v: Verdict| run.checks.iter().filter(|c| c.verdict == v).count();
    let report = Report {
        command: command.into(),
        opampctl_version: env!("CARGO_PKG_VERSION").into(),
        server: run.c.base.clone(),
        generated_at: chrono::Utc::now().to_rfc3339(),
        host: host_info(),
        server_reachable: run.reachable != Some(false),
        summary: Summary {
            ok: count(Verdict::Ok),
            warn: count(Verdict::Warn),
            fail: count(Verdict::Fail),
            skip: count(Verdict::Skip),
        },
        checks: run.checks,
        memory_samples: samples,
    };
    if !s.quiet {
        output::show(s, &report, |wide| {
            let mut text = String::new();
            if !report.memory_samples.is_empty() {
                let mut t = output::table(s, &["TIME", "RSS", "AGENTS", "CONNECTIONS", "LARGEST"]);
                for m in &report.memory_samples {
                    let mut top: Vec<(&String, &u64)> = m.subsystems.iter().collect();
                    top.sort_by(|a, b| b.1.cmp(a.1));
                    t.add_row(vec![
                        Cell::new(&m.at),
                        Cell::new(output::bytes(m.rss_bytes)),
                        Cell::new(m.agents_live),
                        Cell::new(m.connections),
                        Cell::new(
                            top.first()
                                .map(|(k, v)| format!("{k} {}", output::bytes(**v)))
                                .unwrap_or_default(),
                        ),
                    ]);
                }
                text.push_str(&output::render(&t));
                text.push_str("\n\n");
            }
            let mut t = output::table(s, &["CHECK", "VERDICT", "DETAIL"]);
            for c in &report.checks {
                if c.verdict == Verdict::Skip && !wide {
                    continue;
                }
                t.add_row(vec![
                    Cell::new(&c.name),
                    output::status_cell(s, c.verdict.word()),
                    Cell::new(&c.detail),
                ]);
            }
            text.push_str(&output::render(&t));
            let remedies: Vec<String> = report
                .checks
                .iter()
                .filter_map(|c| c.remedy.as_ref().map(|r| format!("  {}: {r}", c.name)))
                .collect();
            if !remedies.is_empty() {
                text.push_str("\n\nWhat to do:\n");
                text.push_str(&remedies.join("\n"));
            }
            text.push_str(&format!(
                "\n\n{} ok, {} warn, {} fail{}",
                report.summary.ok,
                report.summary.warn,
                report.summary.fail,
                if report.summary.skip > 0 && !wide {
                    format!(" ({} skipped: -o wide shows them)", report.summary.skip)
                } else {
                    String::new()
                }
            ));
            text
        })?;
    }
    if !report.server_reachable {
        return Err(if s.quiet {
            CtlError::unreachable(format!("{} is unreachable", report.server))
        } else {
            CtlError::silent(Exit::Unreachable)
        });
    }
    if report.summary.fail > 0 {
        return Err(if s.quiet {
            let failed: Vec<&str> = report
                .checks
                .iter()
                .filter(|c| c.verdict == Verdict::Fail)
                .map(|c| c.name.as_str())
                .collect();
            CtlError::failed(format!("failed checks: {}", failed.join(", ")))
        } else {
            CtlError::silent(Exit::Failed)
        });
    }
    Ok(())
}

fn new_run<'a>(s: &'a Settings, c: &'a Client, a: &'a DoctorArgs) -> Run<'a> {
    Run {
        s,
        c,
        a,
        reachable: None,
        health: None,
        checks: Vec::new(),
    }
}

pub async fn doctor(s: &Settings, c: &Client, a: &DoctorArgs) -> Result<()> {
    let mut r = new_run(s, c, a);
    r.config();
    r.data_dir();
    r.database();
    r.port().await;
    r.server().await;
    r.tls().await;
    r.opamp_http().await;
    r.opamp_ws().await;
    r.agent_secret().await;
    r.agents();
    if !r.server_down() {
        r.db_pool().await;
        r.memory_once().await;
    }
    finish(s, "doctor", r, Vec::new())
}

pub async fn troubleshoot(s: &Settings, c: &Client, t: TroubleshootCmd) -> Result<()> {
    match t {
        TroubleshootCmd::Startup(a) => {
            let mut r = new_run(s, c, &a);
            r.config();
            r.data_dir();
            r.database();
            r.port().await;
            r.server().await;
            finish(s, "troubleshoot startup", r, Vec::new())
        }
        TroubleshootCmd::AgentConnect(a) => {
            let mut r = new_run(s, c, &a);
            r.server().await;
            r.tls().await;
            r.opamp_http().await;
            r.opamp_ws().await;
            r.agent_secret().await;
            r.agents();
            finish(s, "troubleshoot agent-connect", r, Vec::new())
        }
        TroubleshootCmd::DbPool(a) => {
            let mut r = new_run(s, c, &a);
            r.server().await;
            if !r.server_down() {
                r.db_pool().await;
            }
            r.database();
            finish(s, "troubleshoot db-pool", r, Vec::new())
        }
        TroubleshootCmd::Memory(m) => memory(s, c, &m).await,
    }
}

async fn memory(s: &Settings, c: &Client, m: &MemoryArgs) -> Result<()> {
    if m.samples < 2 {
        return Err(CtlError::usage(
            "--samples must be at least 2 to show a trend",
        ));
    }
    let args = DoctorArgs::default();
    let mut r = new_run(s, c, &args);
    r.server().await;
    if r.server_down() {
        return finish(s, "troubleshoot memory", r, Vec::new());
    }
    let gap = m.duration / (m.samples - 1);
    let bar = s.progress().then(|| {
        let b = indicatif::ProgressBar::new(m.samples as u64);
        b.set_message("sampling memory");
        b
    });
    let start = Instant::now();
    let mut samples: Vec<MemorySample> = Vec::new();
    for i in 0..m.samples {
        if i > 0 {
            let due = start + gap * i;
            tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
        }
        let rep: MemoryReport = c.get("/api/v1/admin/memory").await?;
        samples.push(MemorySample {
            at: chrono::Local::now().format("%H:%M:%S").to_string(),
            rss_bytes: rep.rss_bytes,
            agents_live: rep.agents_live,
            connections: rep.connections,
            subsystems: rep.subsystems,
        });
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    let growth = last.rss_bytes as i64 - first.rss_bytes as i64;
    let minutes = start.elapsed().as_secs_f64().max(1.0) / 60.0;
    let per_agent_before = first.rss_bytes / first.agents_live.max(1);
    let per_agent_after = last.rss_bytes / last.agents_live.max(1);
    let detail = format!(
        "RSS {} -> {} ({}{} in {:.1} min, {:.1} MiB/min); agents {} -> {}",
        output::bytes(first.rss_bytes),
        output::bytes(last.rss_bytes),
        if growth >= 0 { "+" } else { "-" },
        output::bytes(growth.unsigned_abs()),
        minutes,
        growth as f64 / 1048576.0 / minutes,
        first.agents_live,
        last.agents_live
    );
    let grew = growth > (16 << 20) && growth as f64 > first.rss_bytes as f64 * 0.10;
    let agents_grew = last.agents_live > first.agents_live;
    r.push(if grew && !agents_grew {
        warn(
            "memory-trend",
            detail,
            "memory grows without more agents: sample again over a longer --duration; if it keeps growing, attach `opampctl troubleshoot memory -o json` to a bug report and restart with `opampctl restart`",
        )
    } else if grew && per_agent_after > per_agent_before * 2 {
        warn(
            "memory-trend",
            detail,
            "memory per agent doubled: check the log ring (log.ring_lines) and agent attribute sizes",
        )
    } else {
        check("memory-trend", Verdict::Ok, detail, None)
    });
    r.memory_once().await;
    finish(s, "troubleshoot memory", r, samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(hex_addr("0100007F", false), "127.0.0.1");
        assert_eq!(hex_addr("00000000000000000000000001000000", true), "[::1]");
    }

    #[test]
    fn metrics_query_stats() {
        let m = "# HELP x\nopamp_platform_db_query_duration_seconds_sum{operation=\"agents_list\"} 2\nopamp_platform_db_query_duration_seconds_count{operation=\"agents_list\"} 4\nopamp_platform_db_slow_queries_total{operation=\"agents_list\"} 1\n";
        let q = query_stats(m);
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].count, q[0].slow), (4, 1));
        assert!((q[0].mean() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn finds_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = listening_sockets(port);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].owner.as_ref().map(|o| o.0),
            Some(std::process::id())
        );
    }
}
