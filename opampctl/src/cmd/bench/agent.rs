//! One simulated agent: its identity and protocol state, the messages it
//! sends, and what it does in each mode from its start time to its goodbye.

use super::plan::{bench_uid, Plan, Transport};
use super::transport::{close_reason, decode_binary, http_exchange, ws_open, ws_recv, ws_send, Ws};
use super::worker::{Phase, Shared};
use crate::cli::BenchMode;
use futures_util::{SinkExt, StreamExt};
use opamp_agent::caps::FLAG_REPORT_FULL_STATE;
use opamp_agent::message::{self, FullState};
use opamp_agent::pb;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// What one agent measured.
#[derive(Debug, Default)]
pub struct AgentOutcome {
    /// The endpoint (replica) the agent connects to.
    pub endpoint: usize,
    pub connect_ms: Option<f64>,
    pub latencies: Vec<f64>,
    pub messages: u64,
    pub errors: Vec<String>,
    pub full_state_requests: u64,
    pub received_ms: Option<f64>,
    pub first_close_ms: Option<f64>,
    pub back_ms: Option<f64>,
    pub attempts: u64,
}

/// One simulated agent from its start time to its goodbye.
pub async fn agent_task(
    shared: Arc<Shared>,
    idx: usize,
    start: Instant,
    mut phase: watch::Receiver<Phase>,
) -> AgentOutcome {
    let mut outcome = AgentOutcome {
        endpoint: shared.plan.endpoint_of(idx),
        ..Default::default()
    };
    tokio::select! {
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(start)) => {}
        _ = phase.wait_for(|now| *now == Phase::Stop) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return outcome;
        }
    }
    let mut agent = match Agent::connect(&shared, idx).await {
        Ok((agent, took)) => {
            outcome.connect_ms = Some(took);
            shared.connected.fetch_add(1, Ordering::Relaxed);
            agent
        }
        Err(e) => {
            outcome.errors.push(e);
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return outcome;
        }
    };
    let alive = match shared.plan.mode {
        BenchMode::Hold => hold(&shared, &mut agent, &mut phase, &mut outcome).await,
        BenchMode::Status | BenchMode::Http => {
            busy(&shared, &mut agent, &mut phase, &mut outcome).await
        }
        BenchMode::Rollout => rollout(&shared, &mut agent, &mut phase, &mut outcome).await,
        BenchMode::Reconnect => reconnect(&shared, &mut agent, &mut phase, &mut outcome).await,
        BenchMode::Compare => unreachable!("bench compare runs its loads in child processes"),
    };
    outcome.full_state_requests = agent.state.full_state_requests;
    if alive {
        agent.goodbye(&shared).await;
    }
    outcome
}

/// Milliseconds since the Unix epoch: comparable between worker processes.
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// An agent's identity and protocol state, and the messages it sends.
struct AgentState {
    idx: usize,
    uid: [u8; 16],
    seq: u64,
    caps: u64,
    healthy: bool,
    /// The server asked for a full report: the next message is one.
    full_state_due: bool,
    full_state_requests: u64,
}

impl AgentState {
    fn new(plan: &Plan, idx: usize) -> AgentState {
        let uid = bench_uid(&plan.run_id, idx);
        AgentState {
            idx,
            uid,
            seq: 0,
            caps: plan.caps(),
            healthy: true,
            full_state_due: false,
            full_state_requests: 0,
        }
    }

    /// Uid, the next sequence number and capabilities: the minimal message.
    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        seq
    }

    fn base(&mut self) -> pb::AgentToServer {
        message::heartbeat(self.uid, self.next_seq(), self.caps)
    }

    fn health(&self) -> pb::ComponentHealth {
        if self.healthy {
            message::health(true, "StatusOK", "")
        } else {
            message::health(
                false,
                "StatusRecoverableError",
                "simulated by opampctl bench",
            )
        }
    }

    fn full_report(&mut self, plan: &Plan) -> pb::AgentToServer {
        self.full_state_due = false;
        let instance = self.idx.to_string();
        let host = format!("bench-{}", self.idx);
        let state = FullState {
            description: Some(message::description(
                &[
                    ("service.name", "opampctl-bench"),
                    ("service.instance.id", &instance),
                    ("service.version", env!("CARGO_PKG_VERSION")),
                ],
                &[
                    ("bench.run", &plan.run_id),
                    ("host.name", &host),
                    ("os.type", "linux"),
                ],
            )),
            health: Some(self.health()),
            effective_config: Some(message::effective_config(message::config_map([(
                "",
                plan.config_body.as_slice(),
                message::YAML,
            )]))),
            remote_config_status: None,
        };
        message::full_report(self.uid, self.next_seq(), self.caps, state)
    }

    /// A heartbeat or poll: uid, sequence number, capabilities (or the full
    /// report the server asked for).
    fn heartbeat(&mut self, plan: &Plan) -> pb::AgentToServer {
        if self.full_state_due {
            return self.full_report(plan);
        }
        self.base()
    }

    /// A message carrying a changed health status.
    fn status_change(&mut self, plan: &Plan) -> pb::AgentToServer {
        if self.full_state_due {
            return self.full_report(plan);
        }
        self.healthy = !self.healthy;
        let health = self.health();
        pb::AgentToServer {
            health: Some(health),
            ..self.base()
        }
    }

    /// APPLIED for a received remote config, with the new effective config.
    fn applied(&mut self, remote_config: &pb::AgentRemoteConfig) -> pb::AgentToServer {
        pb::AgentToServer {
            remote_config_status: Some(message::remote_config_status(
                &remote_config.config_hash,
                pb::RemoteConfigStatuses::Applied,
                "",
            )),
            effective_config: remote_config.config.clone().map(message::effective_config),
            ..self.base()
        }
    }

    fn goodbye(&mut self) -> pb::AgentToServer {
        message::disconnect(self.uid, self.next_seq(), self.caps)
    }

    /// Takes note of a reply's flags.
    fn absorb(&mut self, reply: &pb::ServerToAgent) {
        if reply.flags & FLAG_REPORT_FULL_STATE != 0 {
            self.full_state_due = true;
            self.full_state_requests += 1;
        }
    }
}

/// The agent's connection: its own WebSocket, or the worker's HTTP pool.
enum Link {
    Ws(Box<Ws>),
    Http,
}

struct Agent {
    state: AgentState,
    link: Link,
}

/// Why an idle agent woke up.
enum Wake {
    Due,
    Phase,
    Closed(String),
}

impl Agent {
    /// Connects (WebSocket) and exchanges the full first report; the agent
    /// and the time that took in ms.
    async fn connect(shared: &Shared, idx: usize) -> Result<(Agent, f64), String> {
        let plan = &shared.plan;
        let started = Instant::now();
        let link = match plan.transport {
            Transport::Ws => {
                let connector = shared
                    .ws
                    .get(plan.endpoint_of(idx))
                    .ok_or("no WebSocket connector")?;
                let ws = tokio::time::timeout(plan.timeout, ws_open(connector, plan, idx))
                    .await
                    .map_err(|_| format!("no WebSocket within {}s", plan.timeout.as_secs()))??;
                Link::Ws(Box::new(ws))
            }
            Transport::Http => Link::Http,
        };
        let mut agent = Agent {
            state: AgentState::new(plan, idx),
            link,
        };
        let first = agent.state.full_report(plan);
        agent.exchange(shared, &first).await?;
        Ok((agent, ms(started.elapsed())))
    }

    /// Sends one message and waits for its reply; returns the latency in ms.
    async fn exchange(
        &mut self,
        shared: &Shared,
        message: &pb::AgentToServer,
    ) -> Result<f64, String> {
        let timeout = shared.plan.timeout;
        let (reply, took) = match &mut self.link {
            Link::Ws(ws) => {
                let started = Instant::now();
                let reply = tokio::time::timeout(timeout, async {
                    ws_send(ws, message).await?;
                    ws_recv(ws).await
                })
                .await
                .map_err(|_| format!("no reply within {}s", timeout.as_secs()))??;
                (reply, started.elapsed())
            }
            Link::Http => {
                let pool = shared
                    .http
                    .get(shared.plan.endpoint_of(self.state.idx))
                    .ok_or("no plain-HTTP client")?;
                http_exchange(pool, self.state.idx, message).await?
            }
        };
        if let Some(e) = &reply.error_response {
            return Err(format!("the server answered an error: {}", e.error_message));
        }
        self.state.absorb(&reply);
        Ok(ms(took))
    }

    /// Waits until `due` or a phase change, answering the WebSocket meanwhile.
    async fn idle_until(&mut self, due: Instant, phase: &mut watch::Receiver<Phase>) -> Wake {
        let due = tokio::time::Instant::from_std(due);
        match &mut self.link {
            Link::Ws(ws) => loop {
                tokio::select! {
                    message = ws.next() => match message {
                        Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Text(_) | Message::Frame(_))) => continue,
                        other => return Wake::Closed(close_reason(other)),
                    },
                    _ = tokio::time::sleep_until(due) => return Wake::Due,
                    _ = phase.changed() => return Wake::Phase,
                }
            },
            Link::Http => tokio::select! {
                _ = tokio::time::sleep_until(due) => Wake::Due,
                _ = phase.changed() => Wake::Phase,
            },
        }
    }

    /// agent_disconnect, then close.
    async fn goodbye(mut self, shared: &Shared) {
        let bye = self.state.goodbye();
        match &mut self.link {
            Link::Ws(ws) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    ws_send(ws, &bye).await?;
                    ws_recv(ws).await
                })
                .await;
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
            }
            Link::Http => {
                if let Some(pool) = shared.http.get(shared.plan.endpoint_of(self.state.idx)) {
                    let _ = http_exchange(pool, self.state.idx, &bye).await;
                }
            }
        }
    }
}

fn phase_now(phase: &watch::Receiver<Phase>) -> Phase {
    *phase.borrow()
}

/// hold: a heartbeat every interval, each reply awaited. False when the
/// connection was lost.
async fn hold(
    shared: &Shared,
    agent: &mut Agent,
    phase: &mut watch::Receiver<Phase>,
    outcome: &mut AgentOutcome,
) -> bool {
    let every = shared.plan.heartbeat;
    let mut due = Instant::now() + every;
    loop {
        match agent.idle_until(due, phase).await {
            Wake::Phase if phase_now(phase) == Phase::Stop => return true,
            Wake::Phase => continue,
            Wake::Closed(e) => {
                outcome.errors.push(e);
                return false;
            }
            Wake::Due => {}
        }
        let measuring = phase_now(phase) == Phase::Run;
        let message = agent.state.heartbeat(&shared.plan);
        match agent.exchange(shared, &message).await {
            Ok(took) if measuring => {
                outcome.latencies.push(took);
                outcome.messages += 1;
            }
            Ok(_) => {}
            Err(e) => {
                outcome.errors.push(e);
                return false;
            }
        }
        due += every;
        if due < Instant::now() {
            due = Instant::now() + every;
        }
    }
}

/// status and http: exchanges back to back during the measured phase.
async fn busy(
    shared: &Shared,
    agent: &mut Agent,
    phase: &mut watch::Receiver<Phase>,
    outcome: &mut AgentOutcome,
) -> bool {
    let far = Duration::from_secs(86_400);
    loop {
        match phase_now(phase) {
            Phase::Setup => {}
            Phase::Run => break,
            Phase::Stop => return true,
        }
        if let Wake::Closed(e) = agent.idle_until(Instant::now() + far, phase).await {
            outcome.errors.push(e);
            return false;
        }
    }
    while phase_now(phase) == Phase::Run {
        let message = if shared.plan.mode == BenchMode::Status {
            agent.state.status_change(&shared.plan)
        } else {
            agent.state.heartbeat(&shared.plan)
        };
        match agent.exchange(shared, &message).await {
            Ok(took) => {
                outcome.latencies.push(took);
                outcome.messages += 1;
            }
            Err(e) => {
                outcome.errors.push(e);
                return false;
            }
        }
    }
    true
}

/// rollout: heartbeats, and APPLIED for every remote config received.
async fn rollout(
    shared: &Shared,
    agent: &mut Agent,
    phase: &mut watch::Receiver<Phase>,
    outcome: &mut AgentOutcome,
) -> bool {
    let every = shared.plan.heartbeat;
    let mut due = tokio::time::Instant::now() + every;
    let Link::Ws(ws) = &mut agent.link else {
        return true;
    };
    let failed = loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let reply = match decode_binary(&bytes) {
                        Ok(reply) => reply,
                        Err(e) => break e,
                    };
                    if let Err(e) = answer_rollout_reply(shared, &mut agent.state, ws, &reply, outcome).await {
                        break e;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_) | Message::Frame(_))) => {}
                other => break close_reason(other),
            },
            _ = tokio::time::sleep_until(due) => {
                due += every;
                let heartbeat = agent.state.heartbeat(&shared.plan);
                if let Err(e) = ws_send(ws, &heartbeat).await {
                    break e;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() || phase_now(phase) == Phase::Stop {
                    return true;
                }
            }
        }
    };
    outcome.errors.push(failed);
    if outcome.received_ms.is_none() {
        // It never will: count it as settled so the worker does not wait for it.
        shared.reached.fetch_add(1, Ordering::Relaxed);
    }
    false
}

/// A full report if the reply asks for one; APPLIED for a remote config
/// (the first one received is counted as reached).
async fn answer_rollout_reply(
    shared: &Shared,
    state: &mut AgentState,
    ws: &mut Ws,
    reply: &pb::ServerToAgent,
    outcome: &mut AgentOutcome,
) -> Result<(), String> {
    state.absorb(reply);
    if state.full_state_due {
        let full = state.full_report(&shared.plan);
        ws_send(ws, &full).await?;
    }
    if let Some(remote_config) = &reply.remote_config {
        if outcome.received_ms.is_none() {
            outcome.received_ms = Some(now_ms());
            shared.reached.fetch_add(1, Ordering::Relaxed);
        }
        let applied = state.applied(remote_config);
        ws_send(ws, &applied).await?;
    }
    Ok(())
}

/// reconnect: heartbeats until the server closes the connection, then back
/// at once (after a random jitter) with a minimal message, and a full
/// report when asked for one.
async fn reconnect(
    shared: &Shared,
    agent: &mut Agent,
    phase: &mut watch::Receiver<Phase>,
    outcome: &mut AgentOutcome,
) -> bool {
    let plan = &shared.plan;
    let mut rng = Rng::new(u64::from_le_bytes(
        agent.state.uid[..8].try_into().unwrap_or([7; 8]),
    ));
    let mut came_back = false;
    loop {
        if let Wake::Phase = heartbeat_until_closed(plan, agent, phase).await {
            return true;
        }
        if outcome.first_close_ms.is_none() {
            outcome.first_close_ms = Some(now_ms());
        }
        let mut wait = rng.upto(plan.jitter);
        let mut last_error = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = phase.wait_for(|now| *now == Phase::Stop) => {
                    outcome.errors.push(format!("did not come back before the end of the run ({last_error})"));
                    return false;
                }
            }
            outcome.attempts += 1;
            match come_back(shared, agent).await {
                Ok(()) => break,
                Err(e) => {
                    last_error = e;
                    wait = Duration::from_millis(100) + rng.upto(Duration::from_millis(100));
                }
            }
        }
        outcome.back_ms = Some(now_ms());
        if !came_back {
            came_back = true;
            shared.reached.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Heartbeats (replies not awaited) until the connection closes
/// (`Wake::Closed`) or the run stops (`Wake::Phase`).
async fn heartbeat_until_closed(
    plan: &Plan,
    agent: &mut Agent,
    phase: &mut watch::Receiver<Phase>,
) -> Wake {
    let mut due = Instant::now() + plan.heartbeat;
    loop {
        match agent.idle_until(due, phase).await {
            Wake::Phase if phase_now(phase) == Phase::Stop => return Wake::Phase,
            Wake::Phase => continue,
            Wake::Closed(reason) => return Wake::Closed(reason),
            Wake::Due => {
                due += plan.heartbeat;
                let heartbeat = agent.state.heartbeat(plan);
                // A lost heartbeat shows up as a close at the next read.
                if let Link::Ws(ws) = &mut agent.link {
                    let _ = ws_send(ws, &heartbeat).await;
                }
            }
        }
    }
}

/// One reconnect attempt: connect, minimal message, full report if asked.
async fn come_back(shared: &Shared, agent: &mut Agent) -> Result<(), String> {
    let plan = &shared.plan;
    let connector = shared
        .ws
        .get(plan.endpoint_of(agent.state.idx))
        .ok_or("no WebSocket connector")?;
    let ws = tokio::time::timeout(plan.timeout, ws_open(connector, plan, agent.state.idx))
        .await
        .map_err(|_| "connect timed out".to_string())??;
    agent.link = Link::Ws(Box::new(ws));
    let minimal = agent.state.base();
    agent.exchange(shared, &minimal).await?;
    if agent.state.full_state_due {
        let full = agent.state.full_report(plan);
        agent.exchange(shared, &full).await?;
    }
    Ok(())
}

/// A small pseudo-random number generator (splitmix64), for jitter.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ (now_ms() as u64).rotate_left(17))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A duration in `[0, max]`.
    fn upto(&mut self, max: Duration) -> Duration {
        let fraction = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        max.mul_f64(fraction)
    }
}
