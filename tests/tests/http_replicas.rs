//! Plain-HTTP agents whose polls reach any replica (several opampd on one
//! PostgreSQL database, no balancer stickiness): every poll continues the
//! same session wherever the one before was served — no ReportFullState
//! loop, the instance uid never changes, a configuration rolled out, the
//! connection settings and a restart command each arrive exactly once.
//!
//! The agents are the agent library's, over real sockets: once alternating
//! explicitly between two replicas, once through a real HAProxy built from
//! `deploy/haproxy/haproxy.cfg` balancing every request round-robin.

mod common;

use common::{start_rollout, wait_rollout};
use opamp_agent::agent::{Agent, AgentSettings, Event};
use opamp_agent::http::{HttpOptions, HttpTransport};
use opamp_agent::session::{Session, Transport};
use opamp_agent::{caps, message, pb, Error};
use opamp_tests::balancer::{self, Balancer};
use opamp_tests::client::{new_uid, uid_str};
use opamp_tests::{postgres, wait_for, Opts, Server};
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "replicas-agent-secret-0123456789";
const PUBLIC_URL: &str = "https://opamp.example.test/v1/opamp";

/// `n` replicas on one fresh database, named `replica-1`…; None (with a
/// SKIPPED line) without PostgreSQL.
fn replicas(n: usize, test: &str) -> Option<Vec<Server>> {
    replicas_with(n, test, "  heartbeat_interval_seconds: 20\n")
}

/// [`replicas`] with other `opamp:` settings (lines indented two spaces),
/// then any other sections.
fn replicas_with(n: usize, test: &str, opamp: &str) -> Option<Vec<Server>> {
    let cluster = postgres::available(test)?;
    let url = postgres::fresh_database(&cluster);
    let config =
        format!("opamp:\n  agent_secrets: [{SECRET}]\n  public_url: {PUBLIC_URL}\n{opamp}");
    Some(
        (1..=n)
            .map(|i| {
                Server::start_with(Opts {
                    config: Some(config.clone()),
                    database_url: Some(url.clone()),
                    env: vec![("OPAMPD_CLUSTER_REPLICA_ID".into(), format!("replica-{i}"))],
                    ..Default::default()
                })
            })
            .collect(),
    )
}

/// Plain HTTP that sends each exchange to the next replica in turn.
struct Alternating {
    transports: Vec<HttpTransport>,
    next: usize,
    /// Exchanges sent to each replica.
    sent: Vec<u64>,
    /// Every exchange to this replica, when set.
    pinned: Option<usize>,
}

impl Alternating {
    fn new(servers: &[Server]) -> Alternating {
        let options = HttpOptions::default().bearer(SECRET);
        Alternating {
            transports: servers
                .iter()
                .map(|s| HttpTransport::new(&s.opamp_url(), &options).unwrap())
                .collect(),
            next: 0,
            sent: vec![0; servers.len()],
            pinned: None,
        }
    }
}

impl Transport for Alternating {
    async fn exchange(&mut self, message: &pb::AgentToServer) -> Result<pb::ServerToAgent, Error> {
        let i = self.pinned.unwrap_or(self.next % self.transports.len());
        self.next += 1;
        self.sent[i] += 1;
        self.transports[i].exchange(message).await
    }

    async fn receive(&mut self, wait: Duration) -> Result<Option<pb::ServerToAgent>, Error> {
        tokio::time::sleep(wait).await;
        Ok(None)
    }

    fn pushes(&self) -> bool {
        false
    }
}

/// A collector-like agent that takes configurations, connection settings
/// and restart commands.
fn agent(uid: [u8; 16], service: &str) -> Agent {
    Agent::new(
        AgentSettings::new(uid)
            .identifying("service.name", service)
            .capabilities(
                message::TYPICAL_CAPABILITIES
                    | caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS
                    | caps::REPORTS_CONNECTION_SETTINGS_STATUS,
            ),
    )
}

/// Remote-config offers the agent received (applied, failed or ignored).
fn config_offers(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::ConfigApplied { .. }
                    | Event::ConfigFailed { .. }
                    | Event::OfferIgnored { .. }
            )
        })
        .count()
}

/// Connection-settings offers the agent received.
fn connection_offers(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::ConnectionSettingsApplied { .. }
                    | Event::ConnectionSettingsFailed { .. }
                    | Event::ConnectionSettingsIgnored { .. }
            )
        })
        .count()
}

/// What must hold for an agent that polled through several replicas.
fn assert_one_session<T: Transport>(session: &Session<T>, uid: [u8; 16], what: &str) {
    let agent = session.agent();
    let events = session.events();
    assert_eq!(agent.uid(), uid, "{what}: the uid never changes");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::NewInstanceUid { .. })),
        "{what}: no new uid: {events:?}"
    );
    assert_eq!(
        agent.counters().full_state_requests,
        0,
        "{what}: no ReportFullState: {events:?}"
    );
    assert_eq!(
        agent.counters().server_errors,
        0,
        "{what}: no error: {events:?}"
    );
    assert_eq!(
        config_offers(events),
        1,
        "{what}: the configuration offered once: {events:?}"
    );
    assert_eq!(
        connection_offers(events),
        1,
        "{what}: the connection settings offered once: {events:?}"
    );
}

/// Polls until `done`, `limit` at most.
async fn poll_until<T: Transport>(
    session: &mut Session<T>,
    what: &str,
    done: impl FnMut(&Agent, &[Event]) -> bool,
) {
    session
        .run_until(Duration::from_secs(20), Duration::from_millis(50), done)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}; events: {:?}", session.events()));
}

async fn save_and_roll_out(api: &Server, name: &str, selector: &str) {
    let (code, v) = common::save(api, name, "receivers: {otlp: {}}\n", selector).await;
    assert_eq!(code, 201, "{v}");
    start_rollout(api, name, json!({})).await;
}

/// A request to `server` with `token`.
async fn post(server: &Server, token: &str, path: &str) -> (u16, Value) {
    let r = server
        .http()
        .post(format!("{}{path}", server.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn polls_alternating_between_two_replicas_continue_one_session() {
    let test = "polls_alternating_between_two_replicas_continue_one_session";
    let Some(servers) = replicas(2, test) else {
        return;
    };
    let (a, b) = (&servers[0], &servers[1]);
    let token = a.token();
    let uid = new_uid();
    let mut session = Session::new(agent(uid, "alternating"), Alternating::new(&servers));
    let first = session.start().await.unwrap();
    assert!(first.connection_settings.is_some(), "{first:?}");
    // Heartbeats, each on the other replica.
    for _ in 0..6 {
        let reply = session.heartbeat().await.unwrap();
        assert_eq!(reply.flags & caps::FLAG_REPORT_FULL_STATE, 0, "{reply:?}");
    }

    // A configuration rolled out on A reaches the agent once, whichever
    // replica its polls reach.
    save_and_roll_out(a, "alternating", "service.name=alternating").await;
    poll_until(&mut session, "configuration applied", |agent, _| {
        agent.counters().offers_applied == 1
    })
    .await;
    wait_rollout(a, "alternating", "rollout completed", |v| {
        v["state"] == "completed"
    })
    .await;
    for _ in 0..6 {
        session.heartbeat().await.unwrap();
    }
    assert_one_session(&session, uid, "after the rollout");

    // A restart asked of B goes out exactly once, with the next poll.
    let (code, v) = post(
        b,
        &token,
        &format!("/api/v1/agents/{}/restart", uid_str(&uid)),
    )
    .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["delivery"], "queued for the next poll", "{v}");
    poll_until(&mut session, "restart", |agent, _| {
        agent.counters().restarts == 1
    })
    .await;
    for _ in 0..6 {
        session.heartbeat().await.unwrap();
    }
    assert_eq!(session.agent().counters().restarts, 1, "restarted once");
    assert_one_session(&session, uid, "after the restart");
    let sent = &session.transport_mut().sent;
    assert!(
        sent.iter().all(|n| *n >= 10),
        "both replicas served: {sent:?}"
    );

    // Both replicas show the configuration applied.
    for server in [a, b] {
        let shown: Value = wait_for("applied shown", Duration::from_secs(10), || async {
            let r = server
                .http()
                .get(format!("{}/api/v1/agents/{}", server.url(), uid_str(&uid)))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (v["remote_config"]["status"] == "applied").then_some(v)
        })
        .await;
        assert_eq!(shown["instance_uid"], uid_str(&uid), "{shown}");
    }
}

/// A GET to `server` with `token`.
async fn fetch(server: &Server, token: &str, path: &str) -> Value {
    let r = server
        .http()
        .get(format!("{}{path}", server.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

/// The events of one agent, as `server` lists them.
async fn events(server: &Server, token: &str, uid: &[u8; 16]) -> Vec<Value> {
    let v = fetch(
        server,
        token,
        &format!("/api/v1/agents/{}/events", uid_str(uid)),
    )
    .await;
    v["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn an_agent_polling_another_replica_is_not_swept_as_silent() {
    let test = "an_agent_polling_another_replica_is_not_swept_as_silent";
    let Some(servers) = replicas_with(
        2,
        test,
        "  heartbeat_interval_seconds: 1\n  stale_after_seconds: 1\n  disconnect_after_seconds: 2\n\
         database:\n  last_seen_flush_seconds: 1\n",
    ) else {
        return;
    };
    let (a, b) = (&servers[0], &servers[1]);
    let token = a.token();
    let uid = new_uid();
    let mut session = Session::new(agent(uid, "moved"), Alternating::new(&servers));
    session.start().await.unwrap();
    assert_eq!(
        session.transport_mut().sent[0],
        1,
        "A served the first poll"
    );
    // From now on every poll goes to B; A's sweep runs every 2 s and finds
    // no poll of its own for longer than disconnect_after_seconds.
    session.transport_mut().pinned = Some(1);
    for _ in 0..7 {
        session.heartbeat().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let sent = session.transport_mut().sent.clone();
    assert!(sent[0] <= 2 && sent[1] >= 7, "{sent:?}");
    assert_one_session_start(&session, uid);
    for server in [a, b] {
        let events = events(server, &token, &uid).await;
        assert!(
            !events.iter().any(|e| e["event"] == "disconnected"),
            "no disconnection recorded: {events:?}"
        );
        let shown = fetch(server, &token, &format!("/api/v1/agents/{}", uid_str(&uid))).await;
        // (stale_after_seconds is 1: a second after the last poll.)
        assert_ne!(shown["status"], "disconnected", "{shown}");
    }

    // Silent for real: the replica that served its last poll says so, once.
    let disconnected = wait_for("disconnected", Duration::from_secs(15), || async {
        let events = events(b, &token, &uid).await;
        let n = events
            .iter()
            .filter(|e| e["event"] == "disconnected")
            .count();
        (n > 0).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = events(a, &token, &uid).await;
    let n = events
        .iter()
        .filter(|e| e["event"] == "disconnected")
        .count();
    assert_eq!((disconnected, n), (1, 1), "{events:?}");
}

/// No new uid, no ReportFullState, no error: the session went on.
fn assert_one_session_start<T: Transport>(session: &Session<T>, uid: [u8; 16]) {
    let agent = session.agent();
    assert_eq!(agent.uid(), uid);
    assert_eq!(
        agent.counters().full_state_requests,
        0,
        "{:?}",
        session.events()
    );
    assert_eq!(agent.counters().server_errors, 0, "{:?}", session.events());
}

#[tokio::test]
async fn a_retry_racing_its_original_on_another_replica_is_answered_once() {
    let test = "a_retry_racing_its_original_on_another_replica_is_answered_once";
    let Some(servers) = replicas(2, test) else {
        return;
    };
    let uid = new_uid();
    let mut session = Session::new(agent(uid, "retrying"), Alternating::new(&servers));
    session.start().await.unwrap();
    session.heartbeat().await.unwrap();
    save_and_roll_out(&servers[0], "retrying", "service.name=retrying").await;
    wait_for(
        "the rollout targets the agent",
        Duration::from_secs(10),
        || async {
            let (_, v) = servers[0]
                .get("/api/v1/configurations/retrying/rollout")
                .await;
            (v["state"] == "completed" || v["state"] == "running").then_some(())
        },
    )
    .await;
    // Both replicas have heard of the rollout (NOTIFY) before the race.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same message sent to both replicas at once, as a retry after a
    // timeout can: neither answer changes the uid, the offers they carry are
    // of one configuration, and a conflict is answered 503 + Retry-After.
    let heartbeat = session.agent_mut().heartbeat();
    let options = HttpOptions::default().bearer(SECRET);
    let posts = servers.iter().map(|s| {
        let transport = HttpTransport::new(&s.opamp_url(), &options).unwrap();
        let message = heartbeat.clone();
        async move { transport.post(&message).await.unwrap() }
    });
    let replies = futures_util::future::join_all(posts).await;
    let mut offered = std::collections::BTreeSet::new();
    for reply in &replies {
        match reply.status {
            200 => {
                let m = reply.message().unwrap().unwrap();
                assert!(m.agent_identification.is_none(), "{m:?}");
                assert_eq!(m.instance_uid, uid.to_vec());
                assert_eq!(m.flags & caps::FLAG_REPORT_FULL_STATE, 0, "{m:?}");
                if let Some(rc) = &m.remote_config {
                    offered.insert(rc.config_hash.clone());
                }
            }
            503 => assert!(reply.retry_after().is_some(), "{}", reply.body_text()),
            other => panic!("HTTP {other}: {}", reply.body_text()),
        }
    }
    assert!(offered.len() <= 1, "one configuration offered: {offered:?}");
    assert!(
        replies.iter().any(|r| r.status == 200),
        "one of them is answered"
    );
    // The agent sends that message once more (its retry) and goes on.
    let retried = session.send(heartbeat).await.unwrap();
    assert!(retried.error_response.is_none(), "{retried:?}");
    poll_until(&mut session, "configuration applied", |agent, _| {
        agent.counters().offers_applied == 1
    })
    .await;
    for _ in 0..4 {
        session.heartbeat().await.unwrap();
    }
    assert_eq!(session.agent().uid(), uid);
    assert_eq!(session.agent().counters().full_state_requests, 0);
}

#[tokio::test]
async fn http_agents_keep_one_session_through_a_round_robin_haproxy() {
    let test = "http_agents_keep_one_session_through_a_round_robin_haproxy";
    let Some(servers) = replicas(3, test) else {
        return;
    };
    let Some(haproxy) = balancer::haproxy() else {
        return;
    };
    let addresses: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let lb = Balancer::start(&haproxy, &addresses);
    for i in 1..=servers.len() {
        lb.wait_replica(&format!("opampd-{i}"), "UP", Duration::from_secs(15));
    }
    let before: Vec<u64> = lb.replicas().iter().map(|r| r.sessions_total).collect();

    // Three agents, each on one keep-alive connection to the balancer.
    let options = HttpOptions::default().bearer(SECRET);
    let mut sessions: Vec<(Session<HttpTransport>, [u8; 16])> = (0..3)
        .map(|_| {
            let uid = new_uid();
            let transport = HttpTransport::new(&lb.opamp_url(), &options).unwrap();
            (Session::new(agent(uid, "balanced"), transport), uid)
        })
        .collect();
    for (session, _) in &mut sessions {
        session.start().await.unwrap();
    }
    for _ in 0..4 {
        for (session, _) in &mut sessions {
            session.heartbeat().await.unwrap();
        }
    }
    save_and_roll_out(&servers[0], "balanced", "service.name=balanced").await;
    for (session, _) in &mut sessions {
        poll_until(session, "configuration applied", |agent, _| {
            agent.counters().offers_applied == 1
        })
        .await;
    }
    for _ in 0..6 {
        for (session, _) in &mut sessions {
            session.heartbeat().await.unwrap();
        }
    }
    for (session, uid) in &sessions {
        assert_one_session(session, *uid, "through haproxy");
    }
    // The balancer spread the polls over every replica.
    let after = lb.replicas();
    for (state, before) in after.iter().zip(&before) {
        assert!(
            state.sessions_total >= before + 5,
            "{} served {} requests of the agents: {after:?}",
            state.name,
            state.sessions_total - before
        );
    }
}
