//! The server: who holds its port on this host, and its health report.

use super::report::{fail, ok, skip, warn, Check};
use super::Diagnosis;
use crate::cmd::health;
use crate::context::url;
use crate::error::Exit;
use crate::procfs;
use reqwest::Method;

impl Diagnosis<'_> {
    /// `port`: for a server on this host, what listens on its port and
    /// whether it answers as opampd.
    pub(super) async fn check_port(&mut self) {
        let base = &self.client.base;
        if !crate::context::is_local_url(base) {
            self.push(skip("port", format!("{base} is not on this host")));
            return;
        }
        let Some(port) = url::port(base) else {
            return;
        };
        let listeners = procfs::listening_sockets(port);
        let live = self
            .client
            .send_any(self.client.request(Method::GET, "/health/live"))
            .await
            .is_ok_and(|response| response.status().is_success());
        self.push(port_verdict(port, &listeners, live));
    }

    /// `server`: /health/live, /health/ready and /health; remembers whether
    /// the server answered and its health report for the later checks.
    pub(super) async fn check_server(&mut self) {
        match health::check(self.client).await {
            Ok(summary) => {
                self.reachable = Some(true);
                let check = health_verdict(&self.client.base, &summary);
                self.health = summary.health;
                self.push(check);
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
}

impl Diagnosis<'_> {
    /// `token`: whether the server accepts the operator token (a refused one
    /// fails: every command would fail with it).
    pub(super) async fn check_token(&mut self) {
        if self.server_down() {
            return;
        }
        if !self.client.has_token() {
            self.push(skip(
                "token",
                "no token given (--token, OPAMPCTL_TOKEN, --token-file or the context's token-file)",
            ));
            return;
        }
        let check = match self
            .client
            .send_any(self.client.request(Method::GET, "/api/v1/agents?limit=1"))
            .await
        {
            Ok(response) if response.status().is_success() => {
                ok("token", "the server accepts the token")
            }
            Ok(response) if response.status().as_u16() == 401 => {
                let refused = self.client.error_reply(response).await;
                fail(
                    "token",
                    refused.message,
                    "give a token the server accepts: --token, OPAMPCTL_TOKEN, --token-file, or a new one from `opampctl tokens create` with a valid token",
                )
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let reply = self.client.error_reply(response).await;
                warn(
                    "token",
                    format!(
                        "GET /api/v1/agents with the token: {status}: {}",
                        reply.message
                    ),
                    "use an operator or admin token",
                )
            }
            Err(e) => fail("token", e.message, "check --server and the network"),
        };
        self.push(check);
    }
}

fn port_verdict(port: u16, listeners: &[procfs::Listener], live: bool) -> Check {
    let owners: Vec<String> = listeners
        .iter()
        .map(|listener| match &listener.owner {
            Some((pid, comm)) => format!("{comm} (pid {pid}) on {}", listener.local),
            None => format!(
                "a process of uid {} on {} (run as root to see which)",
                listener.uid, listener.local
            ),
        })
        .collect();
    if listeners.is_empty() {
        fail(
            "port",
            format!("nothing listens on port {port}"),
            "start opampd (e.g. `systemctl start opampd`); if it does not stay up, run `opampctl troubleshoot startup` and read `opampctl logs --via journald`",
        )
    } else if live {
        ok("port", format!("port {port}: {}", owners.join(", ")))
    } else {
        fail(
            "port",
            format!(
                "port {port} is taken by {}, which does not answer as opampd",
                owners.join(", ")
            ),
            "stop that process, or give opampd another `listen` address (and --server here)",
        )
    }
}

fn health_verdict(base: &str, summary: &health::HealthSummary) -> Check {
    let report = summary.health.as_ref();
    let detail = match report {
        Some(report) => format!(
            "{base} {}: live {}, ready {}, database {} ({:.1} ms), {} of {} agents connected",
            report.status,
            summary.live.status_code,
            summary.ready.status_code,
            report.database.status,
            report.database.latency_ms,
            report.agents.connected,
            report.agents.total
        ),
        None => format!(
            "{base}: live {}, ready {}, no /health report",
            summary.live.status_code, summary.ready.status_code
        ),
    };
    let problems = report
        .map(|report| report.problems.join("; "))
        .unwrap_or_default();
    match report.map(|report| report.status.as_str()) {
        Some("ok") if summary.ready.status_code == 200 => ok("server", detail),
        Some("degraded") => warn(
            "server",
            format!("{detail}; {problems}"),
            "see the problems above; `opampctl logs --level warn` shows the causes (disk full? read-only file system?)",
        ),
        _ if summary.ready.status_code != 200 => fail(
            "server",
            format!("{detail}; not ready ({})", summary.ready.status),
            "opampd is starting or draining; if it stays so, read `opampctl logs`",
        ),
        _ => fail(
            "server",
            format!("{detail}; {problems}"),
            "the database does not answer: check the disk and `opampctl troubleshoot db-pool`",
        ),
    }
}
