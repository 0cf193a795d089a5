//! Agents connecting: one OpAMP exchange over plain HTTP and one over
//! WebSocket as a probe agent (deleted afterwards), whether the endpoint
//! requires an agent secret, and the fleet's connected and stale agents.

use super::report::{fail, ok, skip, warn, Check, Verdict};
use super::{tls, Diagnosis};
use crate::client::Client;
use opamp_agent::caps::{REPORTS_STATUS, SERVER_ACCEPTS_STATUS};
use opamp_agent::message;
use opamp_agent::pb;
use opamp_agent::tls::TlsOptions;
use opamp_agent::ws::{self, WsOptions};
use prost::Message as _;
use reqwest::Method;
use std::sync::{Arc, Mutex};
use std::time::Duration;

impl Diagnosis<'_> {
    /// `opamp-http`: a probe agent's AgentToServer POSTed, the reply judged.
    pub(super) async fn check_opamp_http(&mut self) {
        if self.server_down() {
            self.push(skip("opamp-http", "the server is unreachable"));
            return;
        }
        let url = self.opamp_url();
        let uid = *uuid::Uuid::now_v7().as_bytes();
        let mut request = self
            .client
            .plain(Method::POST, &url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(probe_message(uid).encode_to_vec());
        if let Some(secret) = &self.args.agent_secret {
            request = request.bearer_auth(secret);
        }
        let check = match self.client.send_any(request).await {
            Err(e) => fail(
                "opamp-http",
                format!("POST {url}: {}", e.message),
                "check the OpAMP URL (--opamp-url, opamp.path) and that agents can reach that listener",
            ),
            Ok(response) => self.http_reply_verdict(&url, &uid, response).await,
        };
        self.push_probe_check(check, &uid).await;
    }

    async fn http_reply_verdict(
        &self,
        url: &str,
        uid: &[u8; 16],
        response: reqwest::Response,
    ) -> Check {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response.bytes().await.unwrap_or_default();
        match status {
            401 if self.args.agent_secret.is_none() => warn(
                "opamp-http",
                format!("POST {url}: 401, the server requires an agent secret"),
                "pass --agent-secret SECRET (one of opamp.agent_secrets) to test the exchange",
            ),
            401 => fail(
                "opamp-http",
                format!("POST {url}: 401, the agent secret was refused"),
                "use one of opamp.agent_secrets; after changing them run `systemctl reload opampd`",
            ),
            200 if content_type == "application/x-protobuf" => {
                match pb::ServerToAgent::decode(body.as_ref()) {
                    Ok(reply) => judge_reply("opamp-http", url, uid, &reply),
                    Err(e) => fail(
                        "opamp-http",
                        format!("POST {url}: the reply is not a ServerToAgent: {e}"),
                        "something else answers on that path (a proxy?); check opamp.path",
                    ),
                }
            }
            _ => fail(
                "opamp-http",
                format!(
                    "POST {url}: {status} {content_type}: {}",
                    String::from_utf8_lossy(&body)
                        .trim()
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
                "check opamp.path and any proxy in front of opampd (it must pass application/x-protobuf through)",
            ),
        }
    }

    /// `opamp-ws`: a probe agent's first message over WebSocket, the reply judged.
    pub(super) async fn check_opamp_ws(&mut self) {
        if self.server_down() {
            self.push(skip("opamp-ws", "the server is unreachable"));
            return;
        }
        let http_url = self.opamp_url();
        let ws_url = if let Some(rest) = http_url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", http_url.trim_start_matches("http://"))
        };
        let uid = *uuid::Uuid::now_v7().as_bytes();
        let timeout = self.settings.timeout;
        let result = tokio::time::timeout(
            timeout,
            ws_exchange(&ws_url, self.args.agent_secret.as_deref(), uid),
        )
        .await;
        let check = match result {
            Err(_) => fail(
                "opamp-ws",
                format!("{ws_url}: no reply within {}s", timeout.as_secs()),
                "a proxy may not pass WebSocket upgrades: enable them for the OpAMP path",
            ),
            Ok(Err(e)) if e.status() == Some(401) => {
                if self.args.agent_secret.is_none() {
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
        self.push_probe_check(check, &uid).await;
    }

    /// Pushes a probe's check; after a good exchange, deletes the probe agent.
    async fn push_probe_check(&mut self, check: Check, uid: &[u8; 16]) {
        let exchanged = check.verdict == Verdict::Ok;
        self.push(check);
        if exchanged {
            self.forget_probe(uid).await;
        }
    }

    /// Deletes the inventory entry a probe created (best effort; needs an
    /// operator token). When it stays, the last check says so.
    async fn forget_probe(&mut self, uid: &[u8; 16]) {
        let id = opamp_proto::uid_string(uid);
        if delete_agent(self.client, &id).await {
            return;
        }
        if let Some(last) = self.checks.last_mut() {
            last.detail.push_str(&format!(
                " (probe agent {id} stays in the inventory: delete it with `opampctl agents delete {id}`)"
            ));
        }
    }

    /// `agent-secret`: whether the endpoint requires one, and whether the
    /// given one is accepted.
    pub(super) async fn check_agent_secret(&mut self) {
        if self.server_down() {
            return;
        }
        let url = self.opamp_url();
        let open = match self
            .client
            .send_any(empty_post(self.client, &url, None))
            .await
        {
            Ok(response) => response.status().as_u16() != 401,
            Err(_) => return,
        };
        let check = match &self.args.agent_secret {
            None if open => warn(
                "agent-secret",
                "the OpAMP endpoint accepts agents without a secret",
                "set opamp.agent_secrets in the opampd config (agents send one as 'Authorization: Bearer <secret>')",
            ),
            None => ok(
                "agent-secret",
                "agent secrets are required (pass --agent-secret to test one)",
            ),
            Some(secret) => {
                let status = self
                    .client
                    .send_any(empty_post(self.client, &url, Some(secret)))
                    .await
                    .map(|response| response.status().as_u16());
                match status {
                    Ok(401) => fail(
                        "agent-secret",
                        "the given agent secret is refused (401)",
                        "use one of opamp.agent_secrets; after changing them run `systemctl reload opampd` (SIGHUP)",
                    ),
                    Ok(_) if open => warn(
                        "agent-secret",
                        "the secret works, but so does no secret: the endpoint is open",
                        "set opamp.agent_secrets in the opampd config",
                    ),
                    Ok(_) => ok(
                        "agent-secret",
                        "the given agent secret is accepted; requests without one get 401",
                    ),
                    Err(e) => fail("agent-secret", e.message, "see the opamp-http check"),
                }
            }
        };
        self.push(check);
    }

    /// `agents`: connected and stale agents, from the health report.
    pub(super) fn check_agents(&mut self) {
        let Some(health) = &self.health else { return };
        let agents = &health.agents;
        let check = if agents.total > 0 && agents.connected == 0 {
            warn(
                "agents",
                format!(
                    "none of {} known agents is connected ({} stale)",
                    agents.total, agents.stale
                ),
                "check the agents' OpAMP endpoint setting and their logs; the opamp-http and opamp-ws checks test this server's side",
            )
        } else if agents.stale > 0 {
            warn(
                "agents",
                format!(
                    "{} connected, {} stale (silent past opamp.stale_after_seconds)",
                    agents.connected, agents.stale
                ),
                "stale agents are connected but silent: check their heartbeat interval and network",
            )
        } else {
            ok(
                "agents",
                format!(
                    "{} connected, {} disconnected, {} total",
                    agents.connected, agents.disconnected, agents.total
                ),
            )
        };
        self.push(check);
    }
}

/// Deletes agent `id`, waiting for it to appear (up to 2 s); true once deleted.
async fn delete_agent(client: &Client, id: &str) -> bool {
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let response = client
            .send_any(client.request(Method::DELETE, &format!("/api/v1/agents/{id}?force=true")))
            .await;
        match response.map(|response| response.status().as_u16()) {
            Ok(204) | Ok(200) => return true,
            Ok(404) => continue,
            _ => break,
        }
    }
    false
}

/// An AgentToServer without an instance uid: the protocol layer refuses it
/// after authentication, so the status tells whether the secret was
/// accepted, and no agent is recorded.
fn empty_post(client: &Client, url: &str, secret: Option<&str>) -> reqwest::RequestBuilder {
    let request = client
        .plain(Method::POST, url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .body(pb::AgentToServer::default().encode_to_vec());
    match secret {
        Some(secret) => request.bearer_auth(secret),
        None => request,
    }
}

/// The probe agent's only message over plain HTTP: its description, then gone.
fn probe_message(uid: [u8; 16]) -> pb::AgentToServer {
    pb::AgentToServer {
        agent_disconnect: Some(pb::AgentDisconnect {}),
        ..probe_first(uid)
    }
}

/// The probe agent's first message over WebSocket (it says goodbye later).
fn probe_first(uid: [u8; 16]) -> pb::AgentToServer {
    let description = message::description(&[("service.name", "opampctl-doctor")], &[]);
    message::full_report(
        uid,
        0,
        REPORTS_STATUS,
        message::FullState {
            description: Some(description),
            ..Default::default()
        },
    )
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
    if reply.capabilities & SERVER_ACCEPTS_STATUS == 0 {
        return fail(
            name,
            format!(
                "{url}: the reply lacks the AcceptsStatus capability (capabilities {:#x})",
                reply.capabilities
            ),
            "upgrade opampd; a server must announce its capabilities",
        );
    }
    ok(
        name,
        format!(
            "{url}: AgentToServer answered, capabilities {:#x} (AcceptsStatus)",
            reply.capabilities
        ),
    )
}

/// WebSocket: header 0 + AgentToServer, one reply, then agent_disconnect
/// and close. Over wss:// any certificate is accepted: the tls check judges it.
async fn ws_exchange(
    ws_url: &str,
    secret: Option<&str>,
    uid: [u8; 16],
) -> std::result::Result<pb::ServerToAgent, opamp_agent::Error> {
    let mut options = WsOptions::default();
    if let Some(secret) = secret {
        options = options.bearer(secret);
    }
    if ws_url.starts_with("wss://") {
        let config = tls::capturing_config(Arc::new(Mutex::new(Vec::new())))
            .map_err(opamp_agent::Error::Tls)?;
        options = options.tls(TlsOptions::default().with_config(config));
    }
    let mut socket = ws::connect(ws_url, &options).await?;
    let reply = ws::exchange(&mut socket, &probe_first(uid)).await?;
    let _ = ws::send(&mut socket, &message::disconnect(uid, 1, REPORTS_STATUS)).await;
    ws::close(&mut socket).await;
    Ok(reply)
}
