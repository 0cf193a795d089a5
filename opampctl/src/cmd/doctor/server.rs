//! The server: who holds its port on this host, and its health report.

use super::report::{fail, ok, skip, warn, Check};
use super::{Diagnosis, Procedure};
use crate::client::STARTUP_HINT;
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
        let answer = match health::check(self.client).await {
            Ok(summary) if is_opampd(&summary) => Answer::Opampd,
            Ok(_) => Answer::Other,
            Err(_) => Answer::Nothing,
        };
        // A process named opampd that does not answer (untrusted TLS, say)
        // is still opampd: the server check says why it does not answer.
        let opampd_process = listeners.iter().any(|listener| {
            listener
                .owner
                .as_ref()
                .is_some_and(|(_, command)| command == "opampd")
        });
        if answer != Answer::Opampd && !opampd_process && !listeners.is_empty() {
            self.port_holder = Some(owners(&listeners).join(", "));
        }
        let check = port_verdict(port, &listeners, answer, opampd_process, self.procedure);
        self.push(check);
    }

    /// `server`: /health/live, /health/ready and /health; remembers whether
    /// the server answered (and whether as opampd) and its health report
    /// for the later checks.
    pub(super) async fn check_server(&mut self) {
        let base = self.client.base.clone();
        match health::check(self.client).await {
            Ok(summary) if !is_opampd(&summary) => {
                self.reachable = Some(true);
                self.not_opampd = true;
                let detail = format!(
                    "{base} answers HTTP, but not as opampd: /health/live {}, /health/ready {}, and /health is no opampd health report",
                    summary.live.status_code, summary.ready.status_code
                );
                let remedy = match &self.port_holder {
                    Some(holder) => format!(
                        "{holder} holds that port: stop it, or give opampd another `listen` address (and use it in --server)"
                    ),
                    None => "another program answers at that address (a proxy without a route to opampd?): check --server and what listens there".to_string(),
                };
                self.push(fail("server", detail, remedy));
            }
            Ok(summary) => {
                self.reachable = Some(true);
                let check = health_verdict(&base, &summary, self.procedure);
                self.health = summary.health;
                self.push(check);
            }
            Err(e) if e.exit == Exit::Unreachable => {
                self.reachable = Some(false);
                let check = match &self.port_holder {
                    Some(holder) => fail(
                        "server",
                        format!(
                            "no opampd answers at {base}: {holder} holds the port ({})",
                            e.message
                        ),
                        "stop that process, or give opampd another `listen` address (and use it in --server)",
                    ),
                    None if self.procedure == Procedure::Startup => fail(
                        "server",
                        e.message.replace(STARTUP_HINT, ""),
                        "start opampd (e.g. `systemctl start opampd`); if it does not stay up, the checks above and its log (`opampctl logs --via journald`) say why",
                    ),
                    None => fail(
                        "server",
                        e.message,
                        "start opampd or fix --server; `opampctl troubleshoot startup --config FILE --data-dir DIR` checks why it does not start",
                    ),
                };
                self.push(check);
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

/// Whether what answers is opampd: its readiness probe speaks opampd's
/// words, or /health is opampd's report.
fn is_opampd(summary: &health::HealthSummary) -> bool {
    summary.health.is_some()
        || matches!(
            summary.ready.status.as_str(),
            "ready" | "starting" | "draining"
        )
}

/// The processes holding a port, for messages.
fn owners(listeners: &[procfs::Listener]) -> Vec<String> {
    listeners
        .iter()
        .map(|listener| match &listener.owner {
            Some((pid, comm)) => format!("{comm} (pid {pid}) on {}", listener.local),
            None => format!(
                "a process of uid {} on {} (run as root to see which)",
                listener.uid, listener.local
            ),
        })
        .collect()
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
            Ok(response) if response.status().is_success() => match &self.token_note {
                Some(note) => ok("token", format!("the server accepts the token; {note}")),
                None => ok("token", "the server accepts the token"),
            },
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

/// What answered on the server's health endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Opampd,
    /// HTTP, but not opampd's health endpoints.
    Other,
    /// No HTTP answer (refused, timed out, a TLS failure).
    Nothing,
}

fn port_verdict(
    port: u16,
    listeners: &[procfs::Listener],
    answer: Answer,
    opampd_process: bool,
    procedure: Procedure,
) -> Check {
    let owners = owners(listeners).join(", ");
    if listeners.is_empty() {
        let why = if procedure == Procedure::Startup {
            "the checks above and `opampctl logs --via journald` say why"
        } else {
            "run `opampctl troubleshoot startup` and read `opampctl logs --via journald`"
        };
        return fail(
            "port",
            format!("nothing listens on port {port}"),
            format!("start opampd (e.g. `systemctl start opampd`); if it does not stay up, {why}"),
        );
    }
    match answer {
        Answer::Opampd => ok("port", format!("port {port}: {owners}")),
        Answer::Nothing if opampd_process => warn(
            "port",
            format!("port {port}: {owners}, which does not answer here"),
            "see the server check for why",
        ),
        Answer::Other => fail(
            "port",
            format!("port {port} is taken by {owners}, which answers HTTP but not as opampd"),
            "stop that process, or give opampd another `listen` address (and --server here)",
        ),
        Answer::Nothing => fail(
            "port",
            format!("port {port} is taken by {owners}, which does not answer as opampd"),
            "stop that process, or give opampd another `listen` address (and --server here)",
        ),
    }
}

fn health_verdict(base: &str, summary: &health::HealthSummary, procedure: Procedure) -> Check {
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
            format!(
                "opampd is {}; if it stays so, read `opampctl logs`",
                summary.ready.status
            ),
        ),
        _ => fail(
            "server",
            format!("{detail}; {problems}"),
            if procedure == Procedure::DbPool {
                "the database does not answer: check the disk, and the checks below"
            } else {
                "the database does not answer: check the disk and `opampctl troubleshoot db-pool`"
            },
        ),
    }
}
