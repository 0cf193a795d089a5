//! A worker: its share of the agents through the phases the parent orders
//! (setup, the measured run, stop), and the result it hands back. In a
//! worker process, the orders come as words on stdin and the events go out
//! as JSON lines on stdout.

use super::agent::{agent_task, AgentOutcome};
use super::coordinator::{Command, Event};
use super::plan::{share, Plan, Transport};
use super::report::Samples;
use super::transport::{http_pool, ws_connector};
use crate::cli::BenchMode;
use crate::error::{CtlError, Result};
use crate::output;
use crate::procfs;
use opamp_agent::http::HttpTransport;
use opamp_agent::ws::WsConnector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The phase a worker's agents are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Setup,
    Run,
    Stop,
}

/// State shared by one worker's agents.
pub struct Shared {
    pub plan: Plan,
    /// Opens the agents' WebSockets, one per endpoint (WebSocket transport).
    pub ws: Vec<WsConnector>,
    /// The agents' keep-alive connections, a pool per endpoint (plain-HTTP transport).
    pub http: Vec<HttpTransport>,
    pub connected: AtomicUsize,
    pub failed: AtomicUsize,
    /// rollout: agents that received the configuration; reconnect: agents back.
    pub reached: AtomicUsize,
}

/// What a worker measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub agents: usize,
    pub connected: usize,
    pub errors: u64,
    pub error_samples: BTreeMap<String, u64>,
    pub connect_ms: Samples,
    pub latency_ms: Samples,
    /// Exchanges completed in the measured phase.
    pub messages: u64,
    pub full_state_requests: u64,
    /// rollout: agents that received a configuration, and when the last did.
    pub received: usize,
    pub last_received_ms: Option<f64>,
    /// reconnect: agents back, the first close seen and the last agent back.
    pub back: usize,
    pub first_close_ms: Option<f64>,
    pub last_back_ms: Option<f64>,
    pub reconnect_attempts: u64,
    /// The same counts per endpoint (replica), in the order of the endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointCounts>,
}

/// What a worker counted of the agents of one endpoint (replica).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct EndpointCounts {
    pub connected: usize,
    /// Exchanges completed in the measured phase.
    pub messages: u64,
    /// rollout: agents that received a configuration, and when the last did.
    pub received: usize,
    pub last_received_ms: Option<f64>,
}

impl WorkerResult {
    /// `count` errors with this message.
    pub fn error(&mut self, message: impl Into<String>, count: u64) {
        self.errors += count;
        *self.error_samples.entry(message.into()).or_default() += count;
    }

    /// Adds one agent's outcome (its latencies go to `latencies`).
    fn add(&mut self, outcome: AgentOutcome, connects: &mut Vec<f64>, latencies: &mut Vec<f64>) {
        if self.endpoints.len() <= outcome.endpoint {
            self.endpoints
                .resize(outcome.endpoint + 1, EndpointCounts::default());
        }
        let counts = &mut self.endpoints[outcome.endpoint];
        counts.connected += usize::from(outcome.connect_ms.is_some());
        counts.messages += outcome.messages;
        if let Some(at) = outcome.received_ms {
            counts.received += 1;
            counts.last_received_ms = Some(counts.last_received_ms.map_or(at, |m: f64| m.max(at)));
        }
        if let Some(took) = outcome.connect_ms {
            connects.push(took);
            self.connected += 1;
        }
        latencies.extend(outcome.latencies);
        self.messages += outcome.messages;
        self.full_state_requests += outcome.full_state_requests;
        for e in outcome.errors {
            self.error(e, 1);
        }
        if let Some(at) = outcome.received_ms {
            self.received += 1;
            self.last_received_ms = Some(self.last_received_ms.map_or(at, |m: f64| m.max(at)));
        }
        if let Some(at) = outcome.first_close_ms {
            self.first_close_ms = Some(self.first_close_ms.map_or(at, |m: f64| m.min(at)));
        }
        if let Some(at) = outcome.back_ms {
            self.back += 1;
            self.last_back_ms = Some(self.last_back_ms.map_or(at, |m: f64| m.max(at)));
        }
        self.reconnect_attempts += outcome.attempts;
    }
}

/// Runs one worker: its agents, the phases the parent orders, its result.
pub async fn worker(
    plan: Plan,
    events: mpsc::UnboundedSender<Event>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let agents = plan.shard.len();
    let endpoints = plan.endpoints.len();
    let links = match plan.transport {
        Transport::Ws => plan
            .endpoints
            .iter()
            .map(|endpoint| ws_connector(&plan, endpoint))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map(|ws| (ws, Vec::new())),
        Transport::Http => plan
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, endpoint)| {
                let connections = share(plan.connections, index, endpoints).len().max(1);
                http_pool(&plan, endpoint, connections)
            })
            .collect::<std::result::Result<Vec<_>, String>>()
            .map(|http| (Vec::new(), http)),
    };
    let (ws, http) = match links {
        Ok(links) => links,
        Err(e) => return fail_all(agents, e, &events, &mut commands).await,
    };
    let shared = Arc::new(Shared {
        plan,
        ws,
        http,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        reached: AtomicUsize::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let tasks = start_agents(&shared, phase_rx);
    let connected = setup(&shared, &events, &mut commands).await;
    if let Some(first) = connected.first_command {
        run_phase(
            &shared,
            first,
            connected.count,
            &phase_tx,
            &events,
            &mut commands,
        )
        .await;
    }
    let _ = phase_tx.send(Phase::Stop);
    let result = gather(agents, tasks).await;
    let _ = events.send(Event::Result(Box::new(result)));
}

/// No agent can start (the transport cannot be set up): ready with all
/// failed, and the result once the parent says anything.
async fn fail_all(
    agents: usize,
    error: String,
    events: &mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) {
    let mut result = WorkerResult {
        agents,
        ..Default::default()
    };
    result.error(error, agents as u64);
    let _ = events.send(Event::Ready {
        connected: 0,
        failed: agents,
    });
    let _ = commands.recv().await;
    let _ = events.send(Event::Result(Box::new(result)));
}

/// One task per agent, started `1 / ramp` seconds apart.
fn start_agents(
    shared: &Arc<Shared>,
    phase: watch::Receiver<Phase>,
) -> Vec<JoinHandle<AgentOutcome>> {
    let ramp = shared.plan.ramp;
    let t0 = Instant::now();
    shared
        .plan
        .shard
        .clone()
        .enumerate()
        .map(|(local, idx)| {
            let start = t0 + Duration::from_secs_f64(local as f64 / ramp);
            tokio::spawn(agent_task(shared.clone(), idx, start, phase.clone()))
        })
        .collect()
}

/// The end of the setup: how many agents connected, and the parent's
/// first order (`None` when the parent is gone).
struct Connected {
    count: usize,
    first_command: Option<Command>,
}

/// Waits until every agent connected or failed (or the parent gives up),
/// says `ready`, and waits for the parent's first order.
async fn setup(
    shared: &Shared,
    events: &mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Connected {
    let agents = shared.plan.shard.len();
    let settled = wait_until(|| {
        shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) >= agents
    });
    let mut early: Option<Command> = None;
    tokio::select! {
        _ = settled => {}
        command = commands.recv() => early = Some(command.unwrap_or(Command::Stop)),
    }
    let count = shared.connected.load(Ordering::Relaxed);
    let _ = events.send(Event::Ready {
        connected: count,
        failed: agents - count,
    });
    let first_command = match early {
        Some(command) => Some(command),
        None => commands.recv().await,
    };
    Connected {
        count,
        first_command,
    }
}

/// The measured phase, on `go`, until `stop`: rollout and reconnect
/// workers say `done` once all their connected agents got there.
async fn run_phase(
    shared: &Shared,
    first: Command,
    connected: usize,
    phase_tx: &watch::Sender<Phase>,
    events: &mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) {
    let Command::Go = first else {
        return;
    };
    let _ = phase_tx.send(Phase::Run);
    if !matches!(shared.plan.mode, BenchMode::Rollout | BenchMode::Reconnect) {
        while let Some(Command::Go) = commands.recv().await {}
        return;
    }
    let reached = wait_until(|| shared.reached.load(Ordering::Relaxed) >= connected);
    tokio::pin!(reached);
    let mut sent_done = false;
    loop {
        tokio::select! {
            _ = &mut reached, if !sent_done => {
                sent_done = true;
                let _ = events.send(Event::Done);
            }
            command = commands.recv() => if matches!(command, Some(Command::Stop) | None) { break },
        }
    }
}

/// Every agent's outcome, after its goodbye, as the worker's result.
async fn gather(agents: usize, tasks: Vec<JoinHandle<AgentOutcome>>) -> WorkerResult {
    let mut result = WorkerResult {
        agents,
        ..Default::default()
    };
    let mut connects = Vec::with_capacity(agents);
    let mut latencies = Vec::new();
    for task in tasks {
        match task.await {
            Ok(outcome) => result.add(outcome, &mut connects, &mut latencies),
            Err(e) => result.error(format!("an agent task failed: {e}"), 1),
        }
    }
    result.connect_ms = Samples::new(connects);
    result.latency_ms = Samples::new(latencies);
    result
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker process: one share of the agents, JSON lines on stdout.
pub async fn worker_process(plan: Plan) -> Result<()> {
    procfs::raise_nofile();
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let command = match lines.next_line().await {
                Ok(Some(line)) if line.trim() == "go" => Command::Go,
                Ok(Some(line)) if line.trim() == "stop" => Command::Stop,
                Ok(Some(_)) => continue,
                // The parent is gone: stop.
                _ => Command::Stop,
            };
            let stop = matches!(command, Command::Stop);
            if command_tx.send(command).is_err() || stop {
                break;
            }
        }
    });
    tokio::spawn(worker(plan, event_tx, command_rx));
    while let Some(event) = event_rx.recv().await {
        let line = serde_json::to_string(&event)
            .map_err(|e| CtlError::failed(format!("cannot encode a worker event: {e}")))?;
        output::out(&line);
        if matches!(event, Event::Result(_)) {
            break;
        }
    }
    Ok(())
}
