//! `opampctl bench MODE`: simulated agents against a running opampd, and what
//! the server spends on them, for sizing a deployment.
//!
//! A parent coordinates one or more workers: a task of this process, or with
//! `--processes P` children re-executing this binary with the same arguments
//! and `OPAMPCTL_BENCH_WORKER=K/P/RUN` in their environment (not a flag, so
//! it stays out of the help, the man page and the completions). Every worker connects its share of the agents and says
//! `ready`; on `go` it runs the measured phase (rollout and reconnect workers
//! say `done` when their agents got there); on `stop` it says goodbye for its
//! agents and sends its result. Between processes these are JSON lines on the
//! child's stdout and words on its stdin. Only the parent reads the server's
//! /proc entries and calls the REST API, so its measurements cover every
//! worker.
//!
//! The simulated agents are ordinary OpAMP clients: 16-byte uids derived from
//! the run id and the agent's index, the `0x00` WebSocket header, one
//! outstanding message per agent.

use crate::cli::{BenchArgs, BenchMode, BenchTransport};
use crate::client::{enc, Client};
use crate::context::{url, Settings};
use crate::error::{CtlError, Exit, Result};
use crate::output;
use comfy_table::Cell;
use futures_util::{SinkExt, StreamExt};
use opamp_proto::api::{ConfigurationInput, RolloutRequest, RolloutStatus};
use opamp_proto::caps::*;
use opamp_proto::{frame, pb};
use prost::Message as _;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// WebSocket buffers per connection: small, so one process holds 15k agents.
const WS_BUFFER: usize = 4 * 1024;
/// Latency and connect samples a worker hands to the parent, at most.
const MAX_POINTS: usize = 20_000;
/// Distinct error messages reported.
const MAX_ERROR_SAMPLES: usize = 5;
/// How often reconnect mode asks /health/live.
const LIVE_EVERY: Duration = Duration::from_millis(50);
/// How often rollout mode asks for the rollout's status.
const ROLLOUT_POLL: Duration = Duration::from_millis(50);
/// Files a process needs besides its connections.
const SPARE_FILES: u64 = 64;
/// Usable ephemeral ports per source address when nothing else says.
const DEFAULT_PORTS: usize = 28_000;

// ------------------------------------------------------------------ the plan

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ws,
    Http,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Http => "http",
        }
    }
}

/// What one worker does, built from the flags.
#[derive(Debug, Clone)]
struct Plan {
    mode: BenchMode,
    transport: Transport,
    ws_url: String,
    http_url: String,
    addr: SocketAddr,
    secret: Option<String>,
    /// Global indexes of this worker's agents.
    shard: Range<usize>,
    heartbeat: Duration,
    timeout: Duration,
    jitter: Duration,
    /// This worker's keep-alive connections (plain HTTP).
    connections: usize,
    /// The effective config each agent reports.
    config_body: Vec<u8>,
    source_ips: Vec<IpAddr>,
    /// This worker's connects per second.
    ramp: f64,
    run_id: String,
    gzip: bool,
}

impl Plan {
    fn caps(&self) -> u64 {
        let base = REPORTS_STATUS | REPORTS_EFFECTIVE_CONFIG | REPORTS_HEALTH | REPORTS_HEARTBEAT;
        if self.mode == BenchMode::Rollout {
            base | ACCEPTS_REMOTE_CONFIG | REPORTS_REMOTE_CONFIG
        } else {
            base
        }
    }
}

/// The transport a mode uses; `Err` for a combination that does not exist.
fn transport_of(mode: BenchMode, given: Option<BenchTransport>) -> Result<Transport> {
    match (mode, given) {
        (BenchMode::Http, None | Some(BenchTransport::Http)) => Ok(Transport::Http),
        (BenchMode::Hold | BenchMode::Status, Some(BenchTransport::Http)) => Ok(Transport::Http),
        (_, None | Some(BenchTransport::Ws)) if mode != BenchMode::Http => Ok(Transport::Ws),
        _ => Err(CtlError::usage(format!(
            "bench {} does not use --transport {}: http mode is plain HTTP, rollout and reconnect are WebSocket",
            mode.as_str(),
            given.map_or("", |t| match t {
                BenchTransport::Ws => "ws",
                BenchTransport::Http => "http",
            })
        ))),
    }
}

/// Source addresses from `A-B` (IPv4 range), `A,B,C` or `A`.
pub fn parse_source_ips(s: &str) -> std::result::Result<Vec<IpAddr>, String> {
    let bad = |p: &str| format!("--source-ips: {p:?} is not an IP address");
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| bad(a))?;
                let b: std::net::Ipv4Addr = b.trim().parse().map_err(|_| bad(b))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a >= 65_536 {
                    return Err(format!(
                        "--source-ips: {part:?} is not a range of at most 65536 IPv4 addresses, low to high"
                    ));
                }
                out.extend((a..=b).map(|n| IpAddr::V4(n.into())));
            }
            None => out.push(part.parse().map_err(|_| bad(part))?),
        }
    }
    if out.is_empty() {
        return Err("--source-ips is empty".into());
    }
    Ok(out)
}

/// The part `k` of `p` gets of `n` things (contiguous, sizes differ by at most 1).
fn share(n: usize, k: usize, p: usize) -> Range<usize> {
    (n * k / p)..(n * (k + 1) / p)
}

/// A stable 16-byte uid (UUID version 8) for agent `idx` of run `run_id`.
pub fn bench_uid(run_id: &str, idx: usize) -> [u8; 16] {
    let d = Sha256::digest(format!("opampctl-bench/{run_id}/{idx}").as_bytes());
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// A YAML body of exactly `n` bytes naming the run (comments pad it).
pub fn config_body(run_id: &str, n: usize) -> Vec<u8> {
    let mut s = format!("bench.run: {run_id}\n");
    let mut i = 0;
    while s.len() + 64 <= n {
        let line = format!("pad_{i:05}: ");
        let fill = 63 - line.len();
        s.push_str(&line);
        s.push_str(&"x".repeat(fill));
        s.push('\n');
        i += 1;
    }
    let left = n.saturating_sub(s.len());
    if left >= 2 {
        s.push('#');
        s.push_str(&"x".repeat(left - 2));
        s.push('\n');
    } else if left == 1 {
        s.push('\n');
    }
    let mut b = s.into_bytes();
    b.truncate(n.max(1));
    b
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
        let n = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        max.mul_f64(n)
    }
}

// ------------------------------------------------------------------ samples

/// Sorted samples standing for `count` measurements (each point for
/// `count / points.len()` of them), so workers' percentiles can be merged.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Samples {
    pub count: u64,
    pub points: Vec<f64>,
}

impl Samples {
    pub fn new(mut v: Vec<f64>) -> Samples {
        v.sort_by(f64::total_cmp);
        let count = v.len() as u64;
        if v.len() > MAX_POINTS {
            let n = v.len();
            v = (0..MAX_POINTS).map(|i| v[i * n / MAX_POINTS]).collect();
        }
        Samples { count, points: v }
    }
}

/// The `p`-th percentile (nearest rank) over several workers' samples.
pub fn percentile(parts: &[&Samples], p: f64) -> Option<f64> {
    let mut weighted: Vec<(f64, f64)> = Vec::new();
    for s in parts.iter().filter(|s| !s.points.is_empty()) {
        let w = s.count as f64 / s.points.len() as f64;
        weighted.extend(s.points.iter().map(|&v| (v, w)));
    }
    if weighted.is_empty() {
        return None;
    }
    weighted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = weighted.iter().map(|(_, w)| w).sum();
    let target = (p / 100.0 * total).max(f64::MIN_POSITIVE);
    let mut seen = 0.0;
    for (v, w) in &weighted {
        seen += w;
        if seen + 1e-9 >= target {
            return Some(*v);
        }
    }
    weighted.last().map(|(v, _)| *v)
}

// ------------------------------------------------------------------ server /proc

/// The server's resident memory in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The server's CPU time in seconds (utime + stime of /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Raises this process's open-file soft limit to its hard limit; returns the
/// soft limit now in force.
#[allow(unsafe_code)]
// rlim_t is not u64 on every target.
#[allow(clippy::unnecessary_cast)]
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, exclusively borrowed rlimit for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur as u64;
            }
        }
    }
    lim.rlim_cur as u64
}

/// Ephemeral ports per source address, from ip_local_port_range.
fn ephemeral_ports() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let v: Vec<usize> = t
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 2 && v[1] >= v[0]).then(|| v[1] - v[0] + 1)
        })
        .unwrap_or(DEFAULT_PORTS)
}

// ------------------------------------------------------------------ coordination

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Ready { connected: usize, failed: usize },
    Done,
    Result(Box<WorkerResult>),
}

/// Parent → worker.
#[derive(Debug, Clone, Copy)]
enum Cmd {
    Go,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Setup,
    Run,
    Stop,
}

/// What a worker measured.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerResult {
    agents: usize,
    connected: usize,
    errors: u64,
    error_samples: BTreeMap<String, u64>,
    connect_ms: Samples,
    latency_ms: Samples,
    /// Exchanges completed in the measured phase.
    messages: u64,
    full_state_requests: u64,
    /// rollout: agents that received a configuration, and when the last did.
    received: usize,
    last_received_ms: Option<f64>,
    /// reconnect: agents back, the first close seen and the last agent back.
    back: usize,
    first_close_ms: Option<f64>,
    last_back_ms: Option<f64>,
    reconnect_attempts: u64,
}

impl WorkerResult {
    fn error(&mut self, msg: impl Into<String>, n: u64) {
        self.errors += n;
        *self.error_samples.entry(msg.into()).or_default() += n;
    }
}

/// What one agent measured.
#[derive(Debug, Default)]
struct AgentOutcome {
    connect_ms: Option<f64>,
    latencies: Vec<f64>,
    messages: u64,
    errors: Vec<String>,
    full_state_requests: u64,
    received_ms: Option<f64>,
    first_close_ms: Option<f64>,
    back_ms: Option<f64>,
    attempts: u64,
}

/// State shared by one worker's agents.
struct Shared {
    plan: Plan,
    http: Option<HttpPool>,
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// rollout: agents that received the configuration; reconnect: agents back.
    reached: AtomicUsize,
}

// ------------------------------------------------------------------ transports

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
}

/// Opens a WebSocket to the OpAMP endpoint from the agent's source address.
async fn ws_open(plan: &Plan, idx: usize) -> std::result::Result<Ws, String> {
    let sock = if plan.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("cannot open a socket: {e}"))?;
    if !plan.source_ips.is_empty() {
        let ip = plan.source_ips[idx % plan.source_ips.len()];
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("cannot bind to {ip}: {e}"))?;
    }
    let tcp = sock
        .connect(plan.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", plan.addr))?;
    let _ = tcp.set_nodelay(true);
    let mut req = plan
        .ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad WebSocket URL {}: {e}", plan.ws_url))?;
    if let Some(s) = &plan.secret {
        let v = format!("Bearer {s}")
            .parse()
            .map_err(|_| "the agent secret is not a valid header value".to_string())?;
        req.headers_mut().insert("authorization", v);
    }
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config()))
        .await
        .map_err(|e| format!("WebSocket upgrade failed: {e}"))?;
    Ok(ws)
}

async fn ws_send(ws: &mut Ws, msg: &pb::AgentToServer) -> std::result::Result<(), String> {
    ws.send(Message::Binary(frame::encode_message(msg).into()))
        .await
        .map_err(|e| format!("WebSocket send failed: {e}"))
}

fn decode_binary(b: &[u8]) -> std::result::Result<pb::ServerToAgent, String> {
    let payload = frame::decode(b).map_err(|e| e.to_string())?;
    pb::ServerToAgent::decode(payload).map_err(|e| format!("the reply is not a ServerToAgent: {e}"))
}

fn close_reason(
    m: Option<std::result::Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> String {
    match m {
        Some(Ok(Message::Close(Some(f)))) => {
            format!(
                "the server closed the WebSocket ({} {})",
                u16::from(f.code),
                f.reason
            )
        }
        Some(Ok(Message::Close(None))) | None => "the server closed the WebSocket".into(),
        Some(Err(e)) => format!("WebSocket read failed: {e}"),
        Some(Ok(other)) => format!("unexpected WebSocket message {other:?}"),
    }
}

/// The next OpAMP message (pings and pongs skipped).
async fn ws_recv(ws: &mut Ws) -> std::result::Result<pb::ServerToAgent, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return decode_binary(&b),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            other => return Err(close_reason(other)),
        }
    }
}

/// Plain-HTTP exchanges over a bounded set of keep-alive connections: one
/// lane per source address, each with its share of the connections; a
/// semaphore keeps as many requests in flight as a lane has connections.
struct HttpPool {
    url: String,
    lanes: Vec<(reqwest::Client, Semaphore)>,
    secret: Option<String>,
}

impl HttpPool {
    fn new(plan: &Plan) -> std::result::Result<HttpPool, String> {
        let sources: Vec<Option<IpAddr>> = if plan.source_ips.is_empty() {
            vec![None]
        } else {
            plan.source_ips.iter().copied().map(Some).collect()
        };
        let n = sources.len().min(plan.connections).max(1);
        let mut lanes = Vec::with_capacity(n);
        for (k, src) in sources.into_iter().take(n).enumerate() {
            let conns = share(plan.connections, k, n).len().max(1);
            let client = reqwest::Client::builder()
                .user_agent(concat!("opampctl-bench/", env!("CARGO_PKG_VERSION")))
                .pool_max_idle_per_host(conns)
                .pool_idle_timeout(None)
                .tcp_nodelay(true)
                .http1_only()
                .gzip(plan.gzip)
                .timeout(plan.timeout)
                .local_address(src)
                .build()
                .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
            lanes.push((client, Semaphore::new(conns)));
        }
        Ok(HttpPool {
            url: plan.http_url.clone(),
            lanes,
            secret: plan.secret.clone(),
        })
    }

    async fn exchange(
        &self,
        idx: usize,
        uid: &str,
        msg: &pb::AgentToServer,
    ) -> std::result::Result<(pb::ServerToAgent, Duration), String> {
        let (client, sem) = &self.lanes[idx % self.lanes.len()];
        let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
        // The latency of a request, not of the wait for a free connection.
        let started = Instant::now();
        let mut req = client
            .post(&self.url)
            .header("content-type", "application/x-protobuf")
            .header("opamp-instance-uid", uid)
            .body(msg.encode_to_vec());
        if let Some(s) = &self.secret {
            req = req.bearer_auth(s);
        }
        let resp = req.send().await.map_err(|e| {
            let mut chain = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                chain = s.to_string();
                src = s.source();
            }
            format!("POST {}: {chain}", self.url)
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the reply failed: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(format!(
                "HTTP {}: {}",
                status.as_u16(),
                text.trim().chars().take(120).collect::<String>()
            ));
        }
        let reply = pb::ServerToAgent::decode(body.as_ref())
            .map_err(|e| format!("the reply is not a ServerToAgent: {e}"))?;
        Ok((reply, started.elapsed()))
    }
}

// ------------------------------------------------------------------ one agent

fn kv(k: &str, v: &str) -> pb::KeyValue {
    pb::KeyValue {
        key: k.into(),
        value: Some(pb::AnyValue {
            value: Some(pb::any_value::Value::StringValue(v.into())),
        }),
    }
}

/// An agent's identity and protocol state, and the messages it sends.
struct AgentState {
    idx: usize,
    uid: [u8; 16],
    uid_str: String,
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
            uid_str: opamp_proto::uid_string(&uid),
            seq: 0,
            caps: plan.caps(),
            healthy: true,
            full_state_due: false,
            full_state_requests: 0,
        }
    }

    fn base(&mut self) -> pb::AgentToServer {
        let seq = self.seq;
        self.seq += 1;
        pb::AgentToServer {
            instance_uid: self.uid.to_vec(),
            sequence_num: seq,
            capabilities: self.caps,
            ..Default::default()
        }
    }

    fn health(&self) -> pb::ComponentHealth {
        pb::ComponentHealth {
            healthy: self.healthy,
            status: if self.healthy {
                "StatusOK"
            } else {
                "StatusRecoverableError"
            }
            .into(),
            last_error: if self.healthy {
                String::new()
            } else {
                "simulated by opampctl bench".into()
            },
            ..Default::default()
        }
    }

    fn full_report(&mut self, plan: &Plan) -> pb::AgentToServer {
        self.full_state_due = false;
        let health = self.health();
        pb::AgentToServer {
            agent_description: Some(pb::AgentDescription {
                identifying_attributes: vec![
                    kv("service.name", "opampctl-bench"),
                    kv("service.instance.id", &self.idx.to_string()),
                    kv("service.version", env!("CARGO_PKG_VERSION")),
                ],
                non_identifying_attributes: vec![
                    kv("bench.run", &plan.run_id),
                    kv("host.name", &format!("bench-{}", self.idx)),
                    kv("os.type", "linux"),
                ],
            }),
            health: Some(health),
            effective_config: Some(pb::EffectiveConfig {
                config_map: Some(pb::AgentConfigMap {
                    config_map: [(
                        String::new(),
                        pb::AgentConfigFile {
                            body: plan.config_body.clone(),
                            content_type: "text/yaml".into(),
                        },
                    )]
                    .into(),
                }),
            }),
            ..self.base()
        }
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
    fn applied(&mut self, rc: &pb::AgentRemoteConfig) -> pb::AgentToServer {
        pb::AgentToServer {
            remote_config_status: Some(pb::RemoteConfigStatus {
                last_remote_config_hash: rc.config_hash.clone(),
                status: pb::RemoteConfigStatuses::Applied as i32,
                error_message: String::new(),
            }),
            effective_config: rc.config.clone().map(|c| pb::EffectiveConfig {
                config_map: Some(c),
            }),
            ..self.base()
        }
    }

    fn goodbye(&mut self) -> pb::AgentToServer {
        pb::AgentToServer {
            agent_disconnect: Some(pb::AgentDisconnect {}),
            ..self.base()
        }
    }

    /// Takes note of a reply's flags.
    fn absorb(&mut self, reply: &pb::ServerToAgent) {
        if reply.flags & FLAG_REPORT_FULL_STATE != 0 {
            self.full_state_due = true;
            self.full_state_requests += 1;
        }
    }
}

enum Link {
    Ws(Box<Ws>),
    Http,
}

struct Agent {
    st: AgentState,
    link: Link,
}

/// Why an idle agent woke up.
enum Wake {
    Due,
    Phase,
    Closed(String),
}

impl Agent {
    /// Connects (WebSocket) and exchanges the full first report.
    async fn connect(sh: &Shared, idx: usize) -> std::result::Result<(Agent, f64), String> {
        let plan = &sh.plan;
        let started = Instant::now();
        let link = match plan.transport {
            Transport::Ws => {
                let ws = tokio::time::timeout(plan.timeout, ws_open(plan, idx))
                    .await
                    .map_err(|_| format!("no WebSocket within {}s", plan.timeout.as_secs()))??;
                Link::Ws(Box::new(ws))
            }
            Transport::Http => Link::Http,
        };
        let mut a = Agent {
            st: AgentState::new(plan, idx),
            link,
        };
        let first = a.st.full_report(plan);
        a.exchange(sh, &first).await?;
        Ok((a, ms(started.elapsed())))
    }

    /// Sends one message and waits for its reply; returns the latency in ms.
    async fn exchange(
        &mut self,
        sh: &Shared,
        msg: &pb::AgentToServer,
    ) -> std::result::Result<f64, String> {
        let timeout = sh.plan.timeout;
        let (reply, took) = match &mut self.link {
            Link::Ws(ws) => {
                let started = Instant::now();
                let reply = tokio::time::timeout(timeout, async {
                    ws_send(ws, msg).await?;
                    ws_recv(ws).await
                })
                .await
                .map_err(|_| format!("no reply within {}s", timeout.as_secs()))??;
                (reply, started.elapsed())
            }
            Link::Http => {
                let pool = sh.http.as_ref().ok_or("no plain-HTTP client")?;
                pool.exchange(self.st.idx, &self.st.uid_str, msg).await?
            }
        };
        if let Some(e) = &reply.error_response {
            return Err(format!("the server answered an error: {}", e.error_message));
        }
        self.st.absorb(&reply);
        Ok(ms(took))
    }

    /// Waits until `due` or a phase change, answering the WebSocket meanwhile.
    async fn idle_until(&mut self, due: Instant, phase: &mut watch::Receiver<Phase>) -> Wake {
        let due = tokio::time::Instant::from_std(due);
        match &mut self.link {
            Link::Ws(ws) => loop {
                tokio::select! {
                    m = ws.next() => match m {
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
    async fn goodbye(mut self, sh: &Shared) {
        let bye = self.st.goodbye();
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
                if let Some(pool) = &sh.http {
                    let _ = pool.exchange(self.st.idx, &self.st.uid_str, &bye).await;
                }
            }
        }
    }
}

fn phase_now(phase: &watch::Receiver<Phase>) -> Phase {
    *phase.borrow()
}

/// One simulated agent from its start time to its goodbye.
async fn agent_task(
    sh: Arc<Shared>,
    idx: usize,
    start: Instant,
    mut phase: watch::Receiver<Phase>,
) -> AgentOutcome {
    let mut out = AgentOutcome::default();
    tokio::select! {
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(start)) => {}
        _ = phase.wait_for(|p| *p == Phase::Stop) => {
            sh.failed.fetch_add(1, Ordering::Relaxed);
            return out;
        }
    }
    let mut a = match Agent::connect(&sh, idx).await {
        Ok((a, t)) => {
            out.connect_ms = Some(t);
            sh.connected.fetch_add(1, Ordering::Relaxed);
            a
        }
        Err(e) => {
            out.errors.push(e);
            sh.failed.fetch_add(1, Ordering::Relaxed);
            return out;
        }
    };
    let alive = match sh.plan.mode {
        BenchMode::Hold => hold(&sh, &mut a, &mut phase, &mut out).await,
        BenchMode::Status | BenchMode::Http => busy(&sh, &mut a, &mut phase, &mut out).await,
        BenchMode::Rollout => rollout(&sh, &mut a, &mut phase, &mut out).await,
        BenchMode::Reconnect => reconnect(&sh, &mut a, &mut phase, &mut out).await,
    };
    out.full_state_requests = a.st.full_state_requests;
    if alive {
        a.goodbye(&sh).await;
    }
    out
}

/// hold: a heartbeat every interval, each reply awaited. False when the
/// connection was lost.
async fn hold(
    sh: &Shared,
    a: &mut Agent,
    phase: &mut watch::Receiver<Phase>,
    out: &mut AgentOutcome,
) -> bool {
    let every = sh.plan.heartbeat;
    let mut due = Instant::now() + every;
    loop {
        match a.idle_until(due, phase).await {
            Wake::Phase if phase_now(phase) == Phase::Stop => return true,
            Wake::Phase => continue,
            Wake::Closed(e) => {
                out.errors.push(e);
                return false;
            }
            Wake::Due => {}
        }
        let measuring = phase_now(phase) == Phase::Run;
        let msg = a.st.heartbeat(&sh.plan);
        match a.exchange(sh, &msg).await {
            Ok(took) if measuring => {
                out.latencies.push(took);
                out.messages += 1;
            }
            Ok(_) => {}
            Err(e) => {
                out.errors.push(e);
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
    sh: &Shared,
    a: &mut Agent,
    phase: &mut watch::Receiver<Phase>,
    out: &mut AgentOutcome,
) -> bool {
    let far = Duration::from_secs(86_400);
    loop {
        match phase_now(phase) {
            Phase::Setup => {}
            Phase::Run => break,
            Phase::Stop => return true,
        }
        if let Wake::Closed(e) = a.idle_until(Instant::now() + far, phase).await {
            out.errors.push(e);
            return false;
        }
    }
    while phase_now(phase) == Phase::Run {
        let msg = if sh.plan.mode == BenchMode::Status {
            a.st.status_change(&sh.plan)
        } else {
            a.st.heartbeat(&sh.plan)
        };
        match a.exchange(sh, &msg).await {
            Ok(took) => {
                out.latencies.push(took);
                out.messages += 1;
            }
            Err(e) => {
                out.errors.push(e);
                return false;
            }
        }
    }
    true
}

/// rollout: heartbeats, and APPLIED for every remote config received.
async fn rollout(
    sh: &Shared,
    a: &mut Agent,
    phase: &mut watch::Receiver<Phase>,
    out: &mut AgentOutcome,
) -> bool {
    let every = sh.plan.heartbeat;
    let mut due = tokio::time::Instant::now() + every;
    let Link::Ws(ws) = &mut a.link else {
        return true;
    };
    let failed = loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    let reply = match decode_binary(&b) {
                        Ok(r) => r,
                        Err(e) => break e,
                    };
                    a.st.absorb(&reply);
                    if a.st.full_state_due {
                        let full = a.st.full_report(&sh.plan);
                        if let Err(e) = ws_send(ws, &full).await {
                            break e;
                        }
                    }
                    if let Some(rc) = &reply.remote_config {
                        if out.received_ms.is_none() {
                            out.received_ms = Some(now_ms());
                            sh.reached.fetch_add(1, Ordering::Relaxed);
                        }
                        let applied = a.st.applied(rc);
                        if let Err(e) = ws_send(ws, &applied).await {
                            break e;
                        }
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_) | Message::Frame(_))) => {}
                other => break close_reason(other),
            },
            _ = tokio::time::sleep_until(due) => {
                due += every;
                let hb = a.st.heartbeat(&sh.plan);
                if let Err(e) = ws_send(ws, &hb).await {
                    break e;
                }
            }
            r = phase.changed() => {
                if r.is_err() || phase_now(phase) == Phase::Stop {
                    return true;
                }
            }
        }
    };
    out.errors.push(failed);
    if out.received_ms.is_none() {
        // It never will: count it as settled so the worker does not wait for it.
        sh.reached.fetch_add(1, Ordering::Relaxed);
    }
    false
}

/// reconnect: heartbeats until the server closes the connection, then back
/// at once (after a random jitter) with a minimal message, and a full
/// report when asked for one.
async fn reconnect(
    sh: &Shared,
    a: &mut Agent,
    phase: &mut watch::Receiver<Phase>,
    out: &mut AgentOutcome,
) -> bool {
    let plan = &sh.plan;
    let mut rng = Rng::new(u64::from_le_bytes(
        a.st.uid[..8].try_into().unwrap_or([7; 8]),
    ));
    let mut came_back = false;
    loop {
        let mut due = Instant::now() + plan.heartbeat;
        loop {
            match a.idle_until(due, phase).await {
                Wake::Phase if phase_now(phase) == Phase::Stop => return true,
                Wake::Phase => continue,
                Wake::Closed(_) => break,
                Wake::Due => {
                    due += plan.heartbeat;
                    let hb = a.st.heartbeat(plan);
                    // A lost heartbeat shows up as a close at the next read.
                    if let Link::Ws(ws) = &mut a.link {
                        let _ = ws_send(ws, &hb).await;
                    }
                }
            }
        }
        if out.first_close_ms.is_none() {
            out.first_close_ms = Some(now_ms());
        }
        let mut wait = rng.upto(plan.jitter);
        let mut last_error = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = phase.wait_for(|p| *p == Phase::Stop) => {
                    out.errors.push(format!("did not come back before the end of the run ({last_error})"));
                    return false;
                }
            }
            out.attempts += 1;
            match back(sh, a).await {
                Ok(()) => break,
                Err(e) => {
                    last_error = e;
                    wait = Duration::from_millis(100) + rng.upto(Duration::from_millis(100));
                }
            }
        }
        out.back_ms = Some(now_ms());
        if !came_back {
            came_back = true;
            sh.reached.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One reconnect attempt: connect, minimal message, full report if asked.
async fn back(sh: &Shared, a: &mut Agent) -> std::result::Result<(), String> {
    let plan = &sh.plan;
    let ws = tokio::time::timeout(plan.timeout, ws_open(plan, a.st.idx))
        .await
        .map_err(|_| "connect timed out".to_string())??;
    a.link = Link::Ws(Box::new(ws));
    let minimal = a.st.base();
    a.exchange(sh, &minimal).await?;
    if a.st.full_state_due {
        let full = a.st.full_report(plan);
        a.exchange(sh, &full).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------ a worker

async fn wait_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one worker: its agents, the phases the parent orders, its result.
async fn worker(
    plan: Plan,
    events: mpsc::UnboundedSender<Event>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let shard = plan.shard.clone();
    let n = shard.len();
    let mut result = WorkerResult {
        agents: n,
        ..Default::default()
    };
    let http = if plan.transport == Transport::Http {
        match HttpPool::new(&plan) {
            Ok(p) => Some(p),
            Err(e) => {
                result.error(e, n as u64);
                let _ = events.send(Event::Ready {
                    connected: 0,
                    failed: n,
                });
                let _ = cmds.recv().await;
                let _ = events.send(Event::Result(Box::new(result)));
                return;
            }
        }
    } else {
        None
    };
    let ramp = plan.ramp;
    let sh = Arc::new(Shared {
        plan,
        http,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        reached: AtomicUsize::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let t0 = Instant::now();
    let tasks: Vec<_> = shard
        .enumerate()
        .map(|(local, idx)| {
            let start = t0 + Duration::from_secs_f64(local as f64 / ramp);
            tokio::spawn(agent_task(sh.clone(), idx, start, phase_rx.clone()))
        })
        .collect();
    drop(phase_rx);

    // Setup, until every agent connected or failed (or the parent gives up).
    let settled = wait_until(|| {
        sh.connected.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed) >= n
    });
    let mut early: Option<Cmd> = None;
    tokio::select! {
        _ = settled => {}
        c = cmds.recv() => early = Some(c.unwrap_or(Cmd::Stop)),
    }
    let connected = sh.connected.load(Ordering::Relaxed);
    let _ = events.send(Event::Ready {
        connected,
        failed: n - connected,
    });
    let first = match early {
        Some(c) => Some(c),
        None => cmds.recv().await,
    };
    if let Some(Cmd::Go) = first {
        let _ = phase_tx.send(Phase::Run);
        if matches!(sh.plan.mode, BenchMode::Rollout | BenchMode::Reconnect) {
            let reached = wait_until(|| sh.reached.load(Ordering::Relaxed) >= connected);
            let mut sent_done = false;
            let stop = async {
                tokio::pin!(reached);
                loop {
                    tokio::select! {
                        _ = &mut reached, if !sent_done => {
                            sent_done = true;
                            let _ = events.send(Event::Done);
                        }
                        c = cmds.recv() => if matches!(c, Some(Cmd::Stop) | None) { break },
                    }
                }
            };
            stop.await;
        } else {
            while let Some(Cmd::Go) = cmds.recv().await {}
        }
    }
    let _ = phase_tx.send(Phase::Stop);

    let mut connect = Vec::with_capacity(n);
    let mut latency = Vec::new();
    for t in tasks {
        let o = match t.await {
            Ok(o) => o,
            Err(e) => {
                result.error(format!("an agent task failed: {e}"), 1);
                continue;
            }
        };
        if let Some(c) = o.connect_ms {
            connect.push(c);
            result.connected += 1;
        }
        latency.extend(o.latencies);
        result.messages += o.messages;
        result.full_state_requests += o.full_state_requests;
        for e in o.errors {
            result.error(e, 1);
        }
        if let Some(r) = o.received_ms {
            result.received += 1;
            result.last_received_ms = Some(result.last_received_ms.map_or(r, |m: f64| m.max(r)));
        }
        if let Some(c) = o.first_close_ms {
            result.first_close_ms = Some(result.first_close_ms.map_or(c, |m: f64| m.min(c)));
        }
        if let Some(b) = o.back_ms {
            result.back += 1;
            result.last_back_ms = Some(result.last_back_ms.map_or(b, |m: f64| m.max(b)));
        }
        result.reconnect_attempts += o.attempts;
    }
    result.connect_ms = Samples::new(connect);
    result.latency_ms = Samples::new(latency);
    let _ = events.send(Event::Result(Box::new(result)));
}

/// A worker as the parent sees it.
struct Handle {
    k: usize,
    events: mpsc::UnboundedReceiver<Event>,
    cmds: mpsc::UnboundedSender<Cmd>,
    child: Option<tokio::process::Child>,
    ready: Option<(usize, usize)>,
    done: bool,
    result: Option<WorkerResult>,
}

impl Handle {
    fn send(&self, c: Cmd) {
        let _ = self.cmds.send(c);
    }
}

fn spawn_local(plan: Plan) -> Handle {
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    tokio::spawn(worker(plan, ev_tx, cmd_rx));
    Handle {
        k: 0,
        events: ev_rx,
        cmds: cmd_tx,
        child: None,
        ready: None,
        done: false,
        result: None,
    }
}

/// Environment variable that makes a bench process worker `K/P/RUN`.
const WORKER_ENV: &str = "OPAMPCTL_BENCH_WORKER";

/// Re-executes this binary with the same arguments as worker `k` of `p`.
fn spawn_child(k: usize, p: usize, run_id: &str) -> Result<Handle> {
    let exe = std::env::current_exe().map_err(|e| {
        CtlError::failed(format!(
            "cannot find the opampctl binary to start workers: {e}"
        ))
    })?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(WORKER_ENV, format!("{k}/{p}/{run_id}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| CtlError::failed(format!("cannot start worker {k}: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| CtlError::failed("worker without stdout"))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| CtlError::failed("worker without stdin"))?;
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Cmd>();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(ev) => {
                    if ev_tx.send(ev).is_err() {
                        break;
                    }
                }
                Err(_) => eprintln!("worker {k}: {line}"),
            }
        }
    });
    tokio::spawn(async move {
        while let Some(c) = cmd_rx.recv().await {
            let word: &[u8] = match c {
                Cmd::Go => b"go\n",
                Cmd::Stop => b"stop\n",
            };
            if stdin.write_all(word).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    Ok(Handle {
        k,
        events: ev_rx,
        cmds: cmd_tx,
        child: Some(child),
        ready: None,
        done: false,
        result: None,
    })
}

/// Waits for every worker's `ready`; returns (connected, failed).
async fn wait_ready(hs: &mut [Handle]) -> (usize, usize) {
    let (mut connected, mut failed) = (0, 0);
    for h in hs.iter_mut() {
        while h.ready.is_none() {
            match h.events.recv().await {
                Some(Event::Ready { connected, failed }) => h.ready = Some((connected, failed)),
                Some(Event::Done) => h.done = true,
                Some(Event::Result(r)) => {
                    h.ready = Some((r.connected, r.agents - r.connected));
                    h.result = Some(*r);
                }
                None => h.ready = Some((0, 0)),
            }
        }
        let (c, f) = h.ready.unwrap_or_default();
        connected += c;
        failed += f;
    }
    (connected, failed)
}

/// Waits for every worker's `done` until `deadline`; true if all said it.
async fn wait_done(hs: &mut [Handle], deadline: tokio::time::Instant) -> bool {
    for h in hs.iter_mut() {
        while !h.done && h.result.is_none() {
            match tokio::time::timeout_at(deadline, h.events.recv()).await {
                Err(_) => return false,
                Ok(Some(Event::Done)) => h.done = true,
                Ok(Some(Event::Result(r))) => h.result = Some(*r),
                Ok(Some(Event::Ready { .. })) => {}
                Ok(None) => return false,
            }
        }
    }
    hs.iter().all(|h| h.done)
}

/// Stops every worker and collects the results (a lost worker counts all
/// its agents as errors).
async fn collect(hs: &mut [Handle], per_worker: &[usize], teardown: Duration) -> Vec<WorkerResult> {
    for h in hs.iter() {
        h.send(Cmd::Stop);
    }
    let deadline = tokio::time::Instant::now() + teardown;
    let mut out = Vec::new();
    for h in hs.iter_mut() {
        while h.result.is_none() {
            match tokio::time::timeout_at(deadline, h.events.recv()).await {
                Ok(Some(Event::Result(r))) => h.result = Some(*r),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let r = h.result.take().unwrap_or_else(|| {
            let agents = per_worker.get(h.k).copied().unwrap_or(0);
            let mut r = WorkerResult {
                agents,
                ..Default::default()
            };
            r.error(
                format!("worker {} ended without a result", h.k),
                agents.max(1) as u64,
            );
            r
        });
        out.push(r);
        if let Some(c) = h.child.as_mut() {
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.start_kill();
            }
        }
    }
    out
}

/// Parses `K/P/RUN`.
fn parse_worker(spec: &str) -> Option<(usize, usize, String)> {
    let mut it = spec.splitn(3, '/');
    let k = it.next()?.parse().ok()?;
    let p = it.next()?.parse().ok()?;
    let run = it.next()?.to_string();
    (k < p && !run.is_empty()).then_some((k, p, run))
}

/// A worker process: one share of the agents, JSON lines on stdout.
async fn worker_main(plan: Plan) -> Result<()> {
    raise_nofile();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let c = match lines.next_line().await {
                Ok(Some(l)) if l.trim() == "go" => Cmd::Go,
                Ok(Some(l)) if l.trim() == "stop" => Cmd::Stop,
                Ok(Some(_)) => continue,
                // The parent is gone: stop.
                _ => Cmd::Stop,
            };
            let stop = matches!(c, Cmd::Stop);
            if cmd_tx.send(c).is_err() || stop {
                break;
            }
        }
    });
    tokio::spawn(worker(plan, ev_tx, cmd_rx));
    while let Some(ev) = ev_rx.recv().await {
        let line = serde_json::to_string(&ev)
            .map_err(|e| CtlError::failed(format!("cannot encode a worker event: {e}")))?;
        output::out(&line);
        if matches!(ev, Event::Result(_)) {
            break;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ the report

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Everything a run measured; the JSON of `-o json` (only the fields of the mode).
#[derive(Debug, Default, Serialize)]
pub struct BenchReport {
    pub mode: &'static str,
    pub transport: &'static str,
    pub run_id: String,
    pub agents: usize,
    pub connected: usize,
    pub processes: usize,
    pub duration_s: f64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gzip: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_state_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_before_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_after_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_end_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_agent_kib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_samples_kib: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_growth_kib: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_flat: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_heartbeat_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_1000_msgs_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_received: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_applied: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_received_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_applied_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub back: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_attempts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_max_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_probes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_failures: Option<u64>,
}

fn opt<T: ToString>(v: Option<T>, unit: &str) -> Option<String> {
    v.map(|v| format!("{}{unit}", v.to_string()))
}

fn table(s: &Settings, r: &BenchReport) -> String {
    let mut t = output::table(s, &["METRIC", "VALUE"]);
    let per_msg = if r.mode == "http" {
        "requests/s"
    } else {
        "messages/s"
    };
    let rows: Vec<(&str, Option<String>)> = vec![
        ("mode", Some(format!("{} over {}", r.mode, r.transport))),
        (
            "agents",
            Some(format!(
                "{} connected of {} ({} process{})",
                r.connected,
                r.agents,
                r.processes,
                if r.processes == 1 { "" } else { "es" }
            )),
        ),
        ("measured", Some(format!("{:.1} s", r.duration_s))),
        ("errors", Some(r.errors.to_string())),
        ("connect p50", opt(r.connect_p50_ms, " ms")),
        ("connect p99", opt(r.connect_p99_ms, " ms")),
        ("heartbeat", opt(r.heartbeat_s, " s")),
        ("connections", opt(r.connections, "")),
        ("gzip", opt(r.gzip, "")),
        ("messages", opt(r.messages, "")),
        (per_msg, opt(r.msgs_per_s, "")),
        ("latency p50", opt(r.latency_p50_ms, " ms")),
        ("latency p99", opt(r.latency_p99_ms, " ms")),
        ("full-state requests", opt(r.full_state_requests, "")),
        ("server pid", opt(r.server_pid, "")),
        (
            "server RSS before",
            r.server_rss_before_kib.map(|k| output::bytes(k * 1024)),
        ),
        (
            "server RSS connected",
            r.server_rss_after_kib.map(|k| output::bytes(k * 1024)),
        ),
        (
            "server RSS end",
            r.server_rss_end_kib.map(|k| output::bytes(k * 1024)),
        ),
        ("RSS per agent", opt(r.rss_per_agent_kib, " KiB")),
        (
            "RSS during hold",
            r.rss_flat.map(|f| {
                format!(
                    "{} ({:+} KiB)",
                    if f { "flat" } else { "grows" },
                    r.rss_growth_kib.unwrap_or(0)
                )
            }),
        ),
        ("server CPU", opt(r.server_cpu_s, " s")),
        ("CPU per heartbeat", opt(r.cpu_per_heartbeat_us, " µs")),
        ("CPU per 1000 messages", opt(r.cpu_per_1000_msgs_s, " s")),
        ("configuration", r.configuration.clone()),
        ("received by", opt(r.rollout_received, " agents")),
        ("applied by", opt(r.rollout_applied, " agents")),
        ("all received after", opt(r.rollout_received_s, " s")),
        ("all applied after", opt(r.rollout_applied_s, " s")),
        ("back", opt(r.back, " agents")),
        ("all back after", opt(r.reconnect_s, " s")),
        ("reconnect attempts", opt(r.reconnect_attempts, "")),
        ("/health/live max", opt(r.live_max_ms, " ms")),
        (
            "/health/live probes",
            r.live_probes
                .map(|p| format!("{p} ({} unanswered)", r.live_failures.unwrap_or(0))),
        ),
    ];
    for (k, v) in rows {
        if let Some(v) = v {
            t.add_row(vec![Cell::new(k), Cell::new(v)]);
        }
    }
    let mut text = output::render(&t);
    for e in &r.error_samples {
        text.push_str(&format!("\nerror: {e}"));
    }
    text
}

// ------------------------------------------------------------------ the parent

/// Live probe results: (max latency of answered probes, answered, unanswered).
async fn probe_live(url: String, mut stop: watch::Receiver<bool>) -> (Option<f64>, u64, u64) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(_) => return (None, 0, 0),
    };
    let mut tick = tokio::time::interval(LIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut max, mut ok, mut failed) = (None::<f64>, 0u64, 0u64);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let t = Instant::now();
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                let v = ms(t.elapsed());
                max = Some(max.map_or(v, |m| m.max(v)));
                ok += 1;
            }
            _ => failed += 1,
        }
    }
    (max, ok, failed)
}

/// Runs `sh -c cmd` with its output on our stderr; Err with what went wrong.
async fn run_restart(cmd: &str) -> std::result::Result<(), String> {
    use std::os::fd::AsFd;
    let err_out = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null());
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(err_out)
        .stderr(std::process::Stdio::inherit())
        .status()
        .await
        .map_err(|e| format!("cannot run --restart-cmd: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("--restart-cmd failed ({status})"))
    }
}

fn check_pid(pid: u32) -> Result<()> {
    if rss_kib(pid).is_none() || cpu_seconds(pid).is_none() {
        return Err(CtlError::usage(format!(
            "--server-pid {pid}: no such process on this host (or its /proc entries are not readable)"
        )));
    }
    Ok(())
}

fn new_run_id() -> String {
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%d-%H%M%S"),
        &rand[..4]
    )
}

/// The plan of worker `k` of `p`.
async fn plan_for(s: &Settings, a: &BenchArgs, k: usize, p: usize, run_id: &str) -> Result<Plan> {
    let transport = transport_of(a.mode, a.transport)?;
    let http_url = a
        .opamp_url
        .clone()
        .unwrap_or_else(|| format!("{}/v1/opamp", s.server));
    let ws_url = match url::scheme(&http_url).as_str() {
        "http" => format!("ws://{}", &http_url["http://".len()..]),
        "ws" => http_url.clone(),
        _ => {
            return Err(CtlError::usage(format!(
                "bench needs a plain http:// OpAMP URL, not {http_url}: point --opamp-url (or --server) at a listener without TLS"
            )))
        }
    };
    let http_url = format!("http://{}", ws_url.trim_start_matches("ws://"));
    let host = url::host(&http_url);
    let port = url::port(&http_url).unwrap_or(80);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| {
            CtlError::unreachable(format!("cannot resolve {host}:{port} of {http_url}"))
        })?;
    let source_ips = match &a.source_ips {
        Some(t) => parse_source_ips(t).map_err(CtlError::usage)?,
        None => Vec::new(),
    };
    let conns = share(a.connections, k, p).len().max(1);
    Ok(Plan {
        mode: a.mode,
        transport,
        ws_url,
        http_url,
        addr,
        secret: a.secret.clone(),
        shard: share(a.agents, k, p),
        heartbeat: a.heartbeat,
        timeout: s.timeout,
        jitter: a.jitter,
        connections: conns,
        config_body: config_body(run_id, a.config_bytes),
        source_ips,
        ramp: a.ramp / p as f64,
        run_id: run_id.to_string(),
        gzip: a.gzip,
    })
}

fn validate(s: &Settings, a: &BenchArgs) -> Result<()> {
    transport_of(a.mode, a.transport)?;
    if a.agents == 0 {
        return Err(CtlError::usage("--agents must be at least 1"));
    }
    if a.processes == 0 || a.processes > a.agents {
        return Err(CtlError::usage(format!(
            "--processes must be between 1 and --agents ({})",
            a.agents
        )));
    }
    if a.connections == 0 {
        return Err(CtlError::usage("--connections must be at least 1"));
    }
    if a.duration.is_zero() {
        return Err(CtlError::usage("--duration must be more than 0"));
    }
    if a.heartbeat < Duration::from_millis(10) {
        return Err(CtlError::usage("--heartbeat must be at least 10ms"));
    }
    if a.config_bytes == 0 || a.config_bytes > 4 << 20 {
        return Err(CtlError::usage(
            "--config-bytes must be between 1 and 4194304",
        ));
    }
    if a.restart_cmd.is_some() && a.mode != BenchMode::Reconnect {
        return Err(CtlError::usage("--restart-cmd is for bench reconnect"));
    }
    if a.gzip && transport_of(a.mode, a.transport)? != Transport::Http {
        return Err(CtlError::usage(
            "--gzip is for plain-HTTP agents (bench http, or --transport http)",
        ));
    }
    if let Some(t) = &a.source_ips {
        parse_source_ips(t).map_err(CtlError::usage)?;
    }
    if (a.mode == BenchMode::Rollout || a.cleanup) && s.token.is_none() {
        return Err(CtlError::usage(format!(
            "bench {} needs an operator token: pass --token, --token-file or OPAMPCTL_TOKEN",
            if a.cleanup { "--cleanup" } else { "rollout" }
        )));
    }
    if let Some(pid) = a.server_pid {
        check_pid(pid)?;
    }
    Ok(())
}

/// Warns about limits the run will hit.
fn warn_limits(a: &BenchArgs, transport: Transport, nofile: u64) {
    let total = match transport {
        Transport::Ws => a.agents,
        Transport::Http => a.connections,
    };
    let sockets = total.div_ceil(a.processes);
    if sockets as u64 + SPARE_FILES > nofile {
        output::warn(format!(
            "{sockets} connections per process need more open files than its limit of {nofile}: use --processes {} or more",
            (total as u64).div_ceil(nofile.saturating_sub(SPARE_FILES).max(1))
        ));
    }
    let sources = a
        .source_ips
        .as_deref()
        .and_then(|t| parse_source_ips(t).ok())
        .map_or(1, |v| v.len());
    let ports = ephemeral_ports();
    if total.div_ceil(sources) > ports {
        output::warn(format!(
            "{} connections from {sources} source address(es) need more than the {ports} ephemeral ports of each: add addresses with --source-ips (e.g. 127.0.0.1-127.0.0.8)",
            total
        ));
    }
}

pub async fn run(s: &Settings, c: &Client, a: &BenchArgs) -> Result<()> {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        let (k, p, run_id) = parse_worker(&spec)
            .ok_or_else(|| CtlError::usage(format!("{WORKER_ENV}={spec}: expected K/P/RUN")))?;
        return worker_main(plan_for(s, a, k, p, &run_id).await?).await;
    }
    validate(s, a)?;
    if a.opamp_url.is_none() {
        // Fail fast (exit 3) rather than with thousands of refused agents.
        c.send_any(c.request(Method::GET, "/health/live")).await?;
    }
    let transport = transport_of(a.mode, a.transport)?;
    let nofile = raise_nofile();
    warn_limits(a, transport, nofile);
    let run_id = new_run_id();
    let pid = if a.mode == BenchMode::Reconnect {
        if a.server_pid.is_some() {
            output::warn("--server-pid is not used by bench reconnect: the restart gives the server a new process");
        }
        None
    } else {
        a.server_pid
    };
    let p = a.processes;
    let per_worker: Vec<usize> = (0..p).map(|k| share(a.agents, k, p).len()).collect();
    let plans: Vec<Plan> = {
        let mut v = Vec::with_capacity(p);
        for k in 0..p {
            v.push(plan_for(s, a, k, p, &run_id).await?);
        }
        v
    };
    let config_name = format!("bench-{run_id}");

    let rss_before = pid.and_then(rss_kib);
    output::info(
        s,
        format!(
            "bench {}: connecting {} {} agents at {}/s (run {run_id})",
            a.mode.as_str(),
            a.agents,
            transport.as_str(),
            a.ramp
        ),
    );
    let mut hs: Vec<Handle> = Vec::with_capacity(p);
    if p == 1 {
        hs.extend(plans.into_iter().map(spawn_local));
    } else {
        for k in 0..p {
            match spawn_child(k, p, &run_id) {
                Ok(h) => hs.push(h),
                Err(e) => {
                    collect(&mut hs, &per_worker, Duration::from_secs(30)).await;
                    return Err(e);
                }
            }
        }
    }
    let setup = Instant::now();
    let (connected, failed) = wait_ready(&mut hs).await;
    output::info(
        s,
        format!(
            "{connected} agents connected in {:.1}s{}",
            setup.elapsed().as_secs_f64(),
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            }
        ),
    );
    let rss_after = pid.and_then(rss_kib);

    let mut report = BenchReport {
        mode: a.mode.as_str(),
        transport: transport.as_str(),
        run_id: run_id.clone(),
        agents: a.agents,
        processes: p,
        server_pid: pid,
        ..Default::default()
    };
    let mut extra_errors: Vec<String> = Vec::new();
    let cpu0;
    let measured;
    let mut rss_samples = Vec::new();
    let mut rollout_t0 = None;
    let mut close_all_back = false;
    match a.mode {
        BenchMode::Hold | BenchMode::Status | BenchMode::Http => {
            cpu0 = pid.and_then(cpu_seconds);
            for h in &hs {
                h.send(Cmd::Go);
            }
            let go = Instant::now();
            output::info(s, format!("measuring for {}s", a.duration.as_secs_f64()));
            rss_samples.extend(rss_after);
            let every = (a.duration / 10).clamp(Duration::from_secs(1), Duration::from_secs(5));
            loop {
                let left = a.duration.saturating_sub(go.elapsed());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left.min(every)).await;
                if let Some(r) = pid.and_then(rss_kib) {
                    if a.mode == BenchMode::Hold {
                        rss_samples.push(r);
                    }
                }
            }
            measured = go.elapsed();
        }
        BenchMode::Rollout => {
            let input = ConfigurationInput {
                name: config_name.clone(),
                body: String::from_utf8_lossy(&config_body(&run_id, a.config_bytes)).into_owned(),
                content_type: Some("text/yaml".into()),
                selector: Some(format!("bench.run={run_id}")),
                description: Some("opampctl bench rollout".into()),
            };
            let created: Result<(reqwest::StatusCode, serde_json::Value)> = c
                .send_json(Method::POST, "/api/v1/configurations", &input)
                .await;
            if let Err(e) = created {
                collect(&mut hs, &per_worker, Duration::from_secs(60)).await;
                return Err(e);
            }
            report.configuration = Some(config_name.clone());
            cpu0 = pid.and_then(cpu_seconds);
            for h in &hs {
                h.send(Cmd::Go);
            }
            output::info(
                s,
                format!("rolling out {config_name} to {connected} agents"),
            );
            let go = Instant::now();
            let t0 = now_ms();
            rollout_t0 = Some(t0);
            let deadline = tokio::time::Instant::now() + a.duration;
            let path = format!("/api/v1/configurations/{}/rollout", enc(&config_name));
            let req = RolloutRequest {
                version: None,
                batch_size: None,
                max_failures: None,
            };
            let poll = async {
                let (_, st): (_, RolloutStatus) = c.send_json(Method::POST, &path, &req).await?;
                if st.total as usize != connected {
                    output::warn(format!(
                        "the rollout targets {} agents, {connected} simulated agents are connected",
                        st.total
                    ));
                }
                let mut st = st;
                loop {
                    if st.state == "completed" {
                        return Ok::<_, CtlError>((Some(go.elapsed()), st));
                    }
                    if matches!(st.state.as_str(), "failed" | "paused") {
                        return Ok((None, st));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Ok((None, st));
                    }
                    tokio::time::sleep(ROLLOUT_POLL).await;
                    st = c.get(&path).await?;
                }
            };
            let (_, polled) = tokio::join!(wait_done(&mut hs, deadline), poll);
            measured = go.elapsed();
            match polled {
                Ok((applied_after, st)) => {
                    report.rollout_applied = Some(st.applied);
                    report.rollout_applied_s = applied_after.map(|d| r3(d.as_secs_f64()));
                    if applied_after.is_none() {
                        extra_errors.push(format!(
                            "the rollout is {} after {:.0}s: {} of {} applied, {} failed",
                            st.state,
                            a.duration.as_secs_f64(),
                            st.applied,
                            st.total,
                            st.failed
                        ));
                    }
                }
                Err(e) => extra_errors.push(format!("rollout: {}", e.message)),
            }
        }
        BenchMode::Reconnect => {
            cpu0 = None;
            for h in &hs {
                h.send(Cmd::Go);
            }
            let go = Instant::now();
            match &a.restart_cmd {
                Some(cmd) => output::info(s, format!("restarting opampd: {cmd}")),
                None => output::info(
                    s,
                    format!(
                        "waiting up to {:.0}s for opampd to restart: restart it now (e.g. `opampctl restart`)",
                        a.duration.as_secs_f64()
                    ),
                ),
            }
            let deadline = tokio::time::Instant::now() + a.duration;
            let (stop_tx, stop_rx) = watch::channel(false);
            let live_url = format!("{}/health/live", s.server);
            let waiter = async {
                let all = wait_done(&mut hs, deadline).await;
                let _ = stop_tx.send(true);
                all
            };
            let restart = async {
                match &a.restart_cmd {
                    Some(cmd) => run_restart(cmd).await,
                    None => Ok(()),
                }
            };
            let (all_back, (live_max, probes, unanswered), restarted) =
                tokio::join!(waiter, probe_live(live_url, stop_rx), restart);
            measured = go.elapsed();
            close_all_back = all_back;
            if let Err(e) = restarted {
                extra_errors.push(e);
            }
            report.live_max_ms = live_max.map(r3);
            report.live_probes = Some(probes + unanswered);
            report.live_failures = Some(unanswered);
        }
    }
    let cpu1 = pid.and_then(cpu_seconds);
    let rss_end = pid.and_then(rss_kib);

    output::info(s, "stopping the agents");
    let results = collect(
        &mut hs,
        &per_worker,
        a.duration + s.timeout + Duration::from_secs(30),
    )
    .await;

    // Aggregate.
    let mut errors_by: BTreeMap<String, u64> = BTreeMap::new();
    for r in &results {
        report.errors += r.errors;
        for (k, v) in &r.error_samples {
            *errors_by.entry(k.clone()).or_default() += v;
        }
    }
    for e in extra_errors {
        report.errors += 1;
        *errors_by.entry(e).or_default() += 1;
    }
    report.connected = results.iter().map(|r| r.connected).sum();
    report.duration_s = r3(measured.as_secs_f64());
    let connects: Vec<&Samples> = results.iter().map(|r| &r.connect_ms).collect();
    let lats: Vec<&Samples> = results.iter().map(|r| &r.latency_ms).collect();
    report.connect_p50_ms = percentile(&connects, 50.0).map(r3);
    report.connect_p99_ms = percentile(&connects, 99.0).map(r3);
    let messages: u64 = results.iter().map(|r| r.messages).sum();
    let cpu = match (cpu0, cpu1) {
        (Some(a0), Some(a1)) => Some(a1 - a0),
        _ => None,
    };
    report.server_cpu_s = cpu.map(r3);
    let full_state: u64 = results.iter().map(|r| r.full_state_requests).sum();
    match a.mode {
        BenchMode::Hold | BenchMode::Status | BenchMode::Http => {
            report.messages = Some(messages);
            report.msgs_per_s = Some(r3(messages as f64 / measured.as_secs_f64().max(1e-9)));
            report.latency_p50_ms = percentile(&lats, 50.0).map(r3);
            report.latency_p99_ms = percentile(&lats, 99.0).map(r3);
            if a.mode == BenchMode::Hold {
                report.heartbeat_s = Some(r3(a.heartbeat.as_secs_f64()));
                report.server_rss_before_kib = rss_before;
                report.server_rss_after_kib = rss_after;
                report.server_rss_end_kib = rss_end;
                if let (Some(b), Some(af)) = (rss_before, rss_after) {
                    report.rss_per_agent_kib =
                        Some(r3((af as f64 - b as f64) / report.connected.max(1) as f64));
                }
                if let (Some(af), Some(end)) = (rss_after, rss_end) {
                    rss_samples.push(end);
                    let lo = rss_samples.iter().copied().min().unwrap_or(af);
                    let hi = rss_samples.iter().copied().max().unwrap_or(af);
                    report.rss_growth_kib = Some(end as i64 - af as i64);
                    report.rss_flat = Some((hi - lo) as f64 <= (af as f64 * 0.02).max(2048.0));
                    report.rss_samples_kib = Some(rss_samples.clone());
                }
                report.cpu_per_heartbeat_us = cpu
                    .filter(|_| messages > 0)
                    .map(|c| r3(c * 1e6 / messages as f64));
            } else {
                report.cpu_per_1000_msgs_s = cpu
                    .filter(|_| messages > 0)
                    .map(|c| r3(c * 1000.0 / messages as f64));
            }
            if transport == Transport::Http {
                report.connections = Some(a.connections);
                report.gzip = Some(a.gzip);
            }
            if full_state > 0 {
                report.full_state_requests = Some(full_state);
            }
        }
        BenchMode::Rollout => {
            let received: usize = results.iter().map(|r| r.received).sum();
            report.rollout_received = Some(received);
            let last = results
                .iter()
                .filter_map(|r| r.last_received_ms)
                .reduce(f64::max);
            if received >= report.connected && report.connected > 0 {
                if let (Some(t0), Some(last)) = (rollout_t0, last) {
                    report.rollout_received_s = Some(r3((last - t0).max(0.0) / 1000.0));
                }
            } else {
                report.errors += 1;
                *errors_by
                    .entry(format!(
                        "{} of {} agents did not receive the configuration",
                        report.connected.saturating_sub(received),
                        report.connected
                    ))
                    .or_default() += 1;
            }
            let st = c
                .call(
                    Method::DELETE,
                    &format!("/api/v1/configurations/{}?force=true", enc(&config_name)),
                )
                .await;
            if let Err(e) = st {
                output::warn(format!("could not delete {config_name}: {}", e.message));
            }
        }
        BenchMode::Reconnect => {
            let back: usize = results.iter().map(|r| r.back).sum();
            report.back = Some(back);
            report.reconnect_attempts = Some(results.iter().map(|r| r.reconnect_attempts).sum());
            report.full_state_requests = Some(full_state);
            let first = results
                .iter()
                .filter_map(|r| r.first_close_ms)
                .reduce(f64::min);
            let last = results
                .iter()
                .filter_map(|r| r.last_back_ms)
                .reduce(f64::max);
            if close_all_back && back >= report.connected {
                if let (Some(f), Some(l)) = (first, last) {
                    report.reconnect_s = Some(r3((l - f).max(0.0) / 1000.0));
                }
            } else {
                let msg = if first.is_none() {
                    format!(
                        "no agent saw the server close its connection within {:.0}s: was opampd restarted?",
                        a.duration.as_secs_f64()
                    )
                } else {
                    format!(
                        "{} of {} agents were not back within {:.0}s",
                        report.connected.saturating_sub(back),
                        report.connected,
                        a.duration.as_secs_f64()
                    )
                };
                report.errors += 1;
                *errors_by.entry(msg).or_default() += 1;
            }
        }
    }
    let mut samples: Vec<(String, u64)> = errors_by.into_iter().collect();
    samples.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    report.error_samples = samples
        .into_iter()
        .take(MAX_ERROR_SAMPLES)
        .map(|(m, n)| if n > 1 { format!("{m} (x{n})") } else { m })
        .collect();

    if a.cleanup {
        cleanup(s, c, &run_id, a.agents).await;
    }
    if !s.quiet {
        output::show(s, &report, |_| table(s, &report))?;
        if pid.is_none()
            && s.human()
            && a.mode != BenchMode::Reconnect
            && a.mode != BenchMode::Rollout
        {
            output::info(
                s,
                "note: pass --server-pid PID (opampd on this host) to measure the server's memory and CPU",
            );
        }
    }
    if report.errors > 0 {
        return Err(if s.quiet {
            CtlError::failed(format!(
                "bench {}: {} errors{}",
                report.mode,
                report.errors,
                report
                    .error_samples
                    .first()
                    .map(|e| format!(", e.g. {e}"))
                    .unwrap_or_default()
            ))
        } else {
            CtlError::silent(Exit::Failed)
        });
    }
    Ok(())
}

/// Deletes the run's agents from the inventory (they are disconnected by now).
async fn cleanup(s: &Settings, c: &Client, run_id: &str, agents: usize) {
    let deleted = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    futures_util::stream::iter(0..agents)
        .for_each_concurrent(16, |idx| {
            let uid = opamp_proto::uid_string(&bench_uid(run_id, idx));
            let (deleted, failures) = (&deleted, &failures);
            async move {
                let req = c.request(Method::DELETE, &format!("/api/v1/agents/{uid}?force=true"));
                match c.send_any(req).await {
                    Ok(r) if r.status().is_success() => {
                        deleted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    let (d, f) = (deleted.into_inner(), failures.into_inner());
    if f > 0 {
        output::warn(format!("--cleanup: {f} agents could not be deleted"));
    }
    output::info(
        s,
        format!("deleted {d} simulated agents from the inventory"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_percentile(values: &[f64], p: f64, expected: f64) {
        let s = Samples::new(values.to_vec());
        assert_eq!(percentile(&[&s], p), Some(expected), "p{p} of {values:?}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        check_percentile(&[4.0, 1.0, 3.0, 2.0], 50.0, 2.0);
        check_percentile(&[4.0, 1.0, 3.0, 2.0], 99.0, 4.0);
        check_percentile(&[7.0], 99.0, 7.0);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        check_percentile(&hundred, 99.0, 99.0);
        check_percentile(&hundred, 50.0, 50.0);
        assert_eq!(percentile(&[&Samples::default()], 50.0), None);
    }

    #[test]
    fn percentiles_merge_workers_by_weight() {
        let a = Samples::new(vec![1.0; 90]);
        let b = Samples::new(vec![10.0; 10]);
        assert_eq!(percentile(&[&a, &b], 50.0), Some(1.0));
        assert_eq!(percentile(&[&a, &b], 95.0), Some(10.0));
        // Thinned samples keep their weight.
        let many = Samples::new((0..100_000).map(f64::from).collect());
        assert_eq!(many.count, 100_000);
        assert_eq!(many.points.len(), MAX_POINTS);
        let p50 = percentile(&[&many], 50.0).unwrap();
        assert!((p50 - 50_000.0).abs() <= 10.0, "{p50}");
    }

    #[test]
    fn source_ip_ranges_and_lists() {
        let v = parse_source_ips("127.0.0.1-127.0.0.8").unwrap();
        assert_eq!(v.len(), 8);
        assert_eq!(v[7].to_string(), "127.0.0.8");
        assert_eq!(parse_source_ips("10.0.0.1, 10.0.0.3").unwrap().len(), 2);
        assert_eq!(parse_source_ips("::1").unwrap().len(), 1);
        assert!(parse_source_ips("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_source_ips("localhost").is_err());
        assert!(parse_source_ips("").is_err());
    }

    #[test]
    fn shares_cover_everything_once() {
        for (n, p) in [(10, 3), (1, 1), (15_000, 4), (5, 5)] {
            let parts: Vec<Range<usize>> = (0..p).map(|k| share(n, k, p)).collect();
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts[p - 1].end, n);
            for w in parts.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
        }
    }

    #[test]
    fn config_bodies_have_the_size_asked_for() {
        for n in [1, 2, 10, 64, 100, 2048, 5000] {
            let b = config_body("20260101-000000-abcd", n);
            assert_eq!(b.len(), n, "{n}");
        }
        let b = String::from_utf8(config_body("r", 300)).unwrap();
        assert!(b.starts_with("bench.run: r\n"), "{b}");
    }

    #[test]
    fn uids_are_stable_uuids() {
        let a = bench_uid("run", 1);
        assert_eq!(a, bench_uid("run", 1));
        assert_ne!(a, bench_uid("run", 2));
        assert_ne!(a, bench_uid("other", 1));
        let u = uuid::Uuid::from_bytes(a);
        assert_eq!(u.get_version_num(), 8);
    }

    #[test]
    fn transports_per_mode() {
        assert_eq!(transport_of(BenchMode::Hold, None).unwrap(), Transport::Ws);
        assert_eq!(
            transport_of(BenchMode::Hold, Some(BenchTransport::Http)).unwrap(),
            Transport::Http
        );
        assert_eq!(
            transport_of(BenchMode::Http, None).unwrap(),
            Transport::Http
        );
        assert!(transport_of(BenchMode::Http, Some(BenchTransport::Ws)).is_err());
        assert!(transport_of(BenchMode::Rollout, Some(BenchTransport::Http)).is_err());
        assert_eq!(
            transport_of(BenchMode::Reconnect, None).unwrap(),
            Transport::Ws
        );
    }

    #[test]
    fn events_round_trip_as_json_lines() {
        let line = serde_json::to_string(&Event::Ready {
            connected: 3,
            failed: 1,
        })
        .unwrap();
        assert_eq!(line, r#"{"event":"ready","connected":3,"failed":1}"#);
        let r = WorkerResult {
            agents: 2,
            messages: 7,
            ..Default::default()
        };
        let line = serde_json::to_string(&Event::Result(Box::new(r))).unwrap();
        match serde_json::from_str::<Event>(&line).unwrap() {
            Event::Result(r) => assert_eq!((r.agents, r.messages), (2, 7)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn worker_specs() {
        assert_eq!(parse_worker("1/3/r-1"), Some((1, 3, "r-1".into())));
        assert_eq!(parse_worker("3/3/r"), None);
        assert_eq!(parse_worker("0/2/"), None);
        assert_eq!(parse_worker("x"), None);
    }

    #[test]
    fn own_process_is_measurable() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_seconds(me).is_some());
        assert!(rss_kib(u32::MAX).is_none());
    }
}
