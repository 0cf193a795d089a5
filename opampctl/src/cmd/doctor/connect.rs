//! Agents connecting: one OpAMP exchange over plain HTTP and one over
//! WebSocket, whether the endpoint requires an agent secret, and the fleet's
//! connected and stale agents.
//!
//! The probes register nothing: their AgentToServer has no instance uid, so
//! opampd, after authenticating it, refuses it as a bad request before it
//! looks up or records an agent. That refusal, an OpAMP ServerToAgent,
//! shows that opampd answers OpAMP on the endpoint.

use super::report::{fail, ok, skip, warn, Check};
use super::{tls, Diagnosis};
use crate::client::Client;
use opamp_agent::pb;
use opamp_agent::tls::TlsOptions;
use opamp_agent::ws::{self, WsOptions};
use prost::Message as _;
use reqwest::Method;
use std::sync::{Arc, Mutex};

impl Diagnosis<'_> {
    /// `opamp-http`: the probe POSTed, the reply judged.
    pub(super) async fn check_opamp_http(&mut self) {
        if self.server_down() {
            self.push(skip("opamp-http", self.down_reason()));
            return;
        }
        let url = self.opamp_url();
        let request = probe_post(self.client, &url, self.args.agent_secret.as_deref());
        let check = match self.client.send_any(request).await {
            Err(e) => fail(
                "opamp-http",
                format!("POST {url}: {}", e.message),
                "check the OpAMP URL (--opamp-url, opamp.path) and that agents can reach that listener",
            ),
            Ok(response) => self.http_reply_verdict(&url, response).await,
        };
        self.push(check);
    }

    async fn http_reply_verdict(&self, url: &str, response: reqwest::Response) -> Check {
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
            200 | 400 if content_type == "application/x-protobuf" => {
                match pb::ServerToAgent::decode(body.as_ref()) {
                    Ok(reply) => judge_reply("opamp-http", &format!("POST {url}"), &reply),
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

    /// `opamp-ws`: the probe over WebSocket, the reply judged.
    pub(super) async fn check_opamp_ws(&mut self) {
        if self.server_down() {
            self.push(skip("opamp-ws", self.down_reason()));
            return;
        }
        let http_url = self.opamp_url();
        let ws_url = if let Some(rest) = http_url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", http_url.trim_start_matches("http://"))
        };
        let timeout = self.settings.timeout;
        let result = tokio::time::timeout(
            timeout,
            ws_exchange(&ws_url, self.args.agent_secret.as_deref()),
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
            Ok(Ok(reply)) => judge_reply("opamp-ws", &ws_url, &reply),
        };
        self.push(check);
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
            .send_any(probe_post(self.client, &url, None))
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
                    .send_any(probe_post(self.client, &url, Some(secret)))
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

/// The probe POST: the probe message, with the agent secret if given.
fn probe_post(client: &Client, url: &str, secret: Option<&str>) -> reqwest::RequestBuilder {
    let request = client
        .plain(Method::POST, url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .body(probe_message().encode_to_vec());
    match secret {
        Some(secret) => request.bearer_auth(secret),
        None => request,
    }
}

/// An AgentToServer without an instance uid: authenticated, then refused
/// before any agent is looked up or recorded.
fn probe_message() -> pb::AgentToServer {
    pb::AgentToServer::default()
}

/// The reply to the probe: opampd refuses it as a bad request (an OpAMP
/// error reply), which is the good outcome.
fn judge_reply(name: &str, what: &str, reply: &pb::ServerToAgent) -> Check {
    let Some(error) = &reply.error_response else {
        return fail(
            name,
            format!("{what}: a message without an instance uid was accepted: this is not opampd's answer"),
            "something other than opampd answers there (a proxy, another OpAMP server?): check the OpAMP URL",
        );
    };
    match pb::ServerErrorResponseType::try_from(error.r#type) {
        Ok(pb::ServerErrorResponseType::BadRequest) => ok(
            name,
            format!(
                "{what}: the server answers OpAMP (the probe, which has no instance uid, was refused as it should be; no agent was recorded)"
            ),
        ),
        Ok(pb::ServerErrorResponseType::Unavailable) => warn(
            name,
            format!("{what}: the server is unavailable: {}", error.error_message),
            "opampd is at opamp.max_agents or overloaded: agents retry later; see `opampctl health` and `opampctl logs --level warn`",
        ),
        _ => fail(
            name,
            format!("{what}: the server answered with an error: {}", error.error_message),
            "see the opampd log: `opampctl logs --level warn`",
        ),
    }
}

/// WebSocket: header 0 + the probe, one reply, then close. Over wss:// any
/// certificate is accepted: the tls check judges it.
async fn ws_exchange(
    ws_url: &str,
    secret: Option<&str>,
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
    let reply = ws::exchange(&mut socket, &probe_message()).await;
    ws::close(&mut socket).await;
    reply
}
