//! What a run does, from the flags: checks of the flags, each worker's
//! plan (its share of the agents and connections, the endpoint, the source
//! addresses), the agents' uids and the configuration body.

use crate::cli::{BenchArgs, BenchMode, BenchTransport};
use crate::context::{url, Settings};
use crate::error::{CtlError, Result};
use crate::output;
use crate::procfs;
use opamp_proto::caps::*;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

/// Files a process needs besides its connections.
const SPARE_FILES: u64 = 64;
/// Usable ephemeral ports per source address when nothing else says.
const DEFAULT_PORTS: usize = 28_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Http => "http",
        }
    }
}

/// One OpAMP endpoint the agents connect to: a replica, or the balancer in
/// front of the replicas.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub ws_url: String,
    pub http_url: String,
    /// The host of the URL resolved once, for every agent.
    pub addr: SocketAddr,
}

/// What one worker does, built from the flags.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: BenchMode,
    pub transport: Transport,
    /// Agent `idx` connects to endpoint `idx % endpoints.len()` (round-robin).
    pub endpoints: Vec<Endpoint>,
    pub secret: Option<String>,
    /// Global indexes of this worker's agents.
    pub shard: Range<usize>,
    pub heartbeat: Duration,
    pub timeout: Duration,
    pub jitter: Duration,
    /// This worker's keep-alive connections (plain HTTP).
    pub connections: usize,
    /// The effective config each agent reports.
    pub config_body: Vec<u8>,
    pub source_ips: Vec<IpAddr>,
    /// This worker's connects per second.
    pub ramp: f64,
    pub run_id: String,
    pub gzip: bool,
}

impl Plan {
    /// The endpoint (replica) of agent `idx`.
    pub fn endpoint_of(&self, idx: usize) -> usize {
        idx % self.endpoints.len().max(1)
    }

    /// The capabilities the agents announce.
    pub fn caps(&self) -> u64 {
        let base = REPORTS_STATUS | REPORTS_EFFECTIVE_CONFIG | REPORTS_HEALTH | REPORTS_HEARTBEAT;
        if self.mode == BenchMode::Rollout {
            base | ACCEPTS_REMOTE_CONFIG | REPORTS_REMOTE_CONFIG
        } else {
            base
        }
    }
}

/// The plan of worker `index` of `count`.
pub async fn plan_for(
    settings: &Settings,
    args: &BenchArgs,
    index: usize,
    count: usize,
    run_id: &str,
) -> Result<Plan> {
    let transport = transport_of(args.mode, args.transport)?;
    let mut endpoints = Vec::new();
    for given_url in opamp_urls(settings, args) {
        endpoints.push(endpoint(&given_url).await?);
    }
    let source_ips = match &args.source_ips {
        Some(text) => parse_source_ips(text).map_err(CtlError::usage)?,
        None => Vec::new(),
    };
    Ok(Plan {
        mode: args.mode,
        transport,
        endpoints,
        secret: args.secret.clone(),
        shard: share(args.agents, index, count),
        heartbeat: args.heartbeat,
        timeout: settings.timeout,
        jitter: args.jitter,
        connections: share(args.connections, index, count).len().max(1),
        config_body: config_body(run_id, args.config_bytes),
        source_ips,
        ramp: args.ramp / count as f64,
        run_id: run_id.to_string(),
        gzip: args.gzip,
    })
}

/// The OpAMP URLs the agents connect to: --opamp-url (one endpoint, such as
/// a balancer in front of the replicas), else each --server's /v1/opamp.
pub fn opamp_urls(settings: &Settings, args: &BenchArgs) -> Vec<String> {
    match &args.opamp_url {
        Some(url) => vec![url.clone()],
        None => settings
            .servers
            .iter()
            .map(|server| format!("{server}/v1/opamp"))
            .collect(),
    }
}

/// The endpoint of a plain OpAMP URL (http:// or ws://).
async fn endpoint(given_url: &str) -> Result<Endpoint> {
    let ws_url = match url::scheme(given_url).as_str() {
        "http" => format!("ws://{}", &given_url["http://".len()..]),
        "ws" => given_url.to_string(),
        _ => {
            return Err(CtlError::usage(format!(
                "bench needs a plain http:// OpAMP URL, not {given_url}: point --opamp-url (or --server) at a listener without TLS"
            )))
        }
    };
    let http_url = format!("http://{}", ws_url.trim_start_matches("ws://"));
    let addr = resolve(&http_url).await?;
    Ok(Endpoint {
        ws_url,
        http_url,
        addr,
    })
}

/// The first address of the URL's host.
async fn resolve(http_url: &str) -> Result<SocketAddr> {
    let host = url::host(http_url);
    let port = url::port(http_url).unwrap_or(80);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| CtlError::unreachable(format!("cannot resolve {host}:{port} of {http_url}")))
}

/// Refuses flags that do not go together, with what to do instead.
pub fn validate(settings: &Settings, args: &BenchArgs) -> Result<()> {
    let compare_flags = [
        ("--load", args.load.is_some()),
        ("--server-a", args.server_a.is_some()),
        ("--pid-a", args.pid_a.is_some()),
        ("--server-b", args.server_b.is_some()),
        ("--pid-b", args.pid_b.is_some()),
    ];
    if let Some((flag, _)) = compare_flags.iter().find(|(_, given)| *given) {
        return Err(CtlError::usage(format!(
            "{flag} is for bench compare (bench {} measures one server: --opamp-url, --server-pid)",
            args.mode.as_str()
        )));
    }
    transport_of(args.mode, args.transport)?;
    if args.agents == 0 {
        return Err(CtlError::usage("--agents must be at least 1"));
    }
    if args.processes == 0 || args.processes > args.agents {
        return Err(CtlError::usage(format!(
            "--processes must be between 1 and --agents ({})",
            args.agents
        )));
    }
    if args.connections == 0 {
        return Err(CtlError::usage("--connections must be at least 1"));
    }
    if args.duration.is_zero() {
        return Err(CtlError::usage("--duration must be more than 0"));
    }
    if args.heartbeat < Duration::from_millis(10) {
        return Err(CtlError::usage("--heartbeat must be at least 10ms"));
    }
    if args.config_bytes == 0 || args.config_bytes > 4 << 20 {
        return Err(CtlError::usage(
            "--config-bytes must be between 1 and 4194304",
        ));
    }
    if args.restart_cmd.is_some() && args.mode != BenchMode::Reconnect {
        return Err(CtlError::usage("--restart-cmd is for bench reconnect"));
    }
    if args.gzip && transport_of(args.mode, args.transport)? != Transport::Http {
        return Err(CtlError::usage(
            "--gzip is for plain-HTTP agents (bench http, or --transport http)",
        ));
    }
    if let Some(text) = &args.source_ips {
        parse_source_ips(text).map_err(CtlError::usage)?;
    }
    if args.mode == BenchMode::Rollout && settings.token.is_none() {
        return Err(CtlError::usage(
            "bench rollout needs an operator token: pass --token, --token-file or OPAMPCTL_TOKEN",
        ));
    }
    if !args.keep && settings.token.is_none() {
        crate::output::warn(
            "no token: the simulated agents cannot be deleted at the end and will stay in the inventory (pass --token, --token-file or OPAMPCTL_TOKEN, or --keep to keep them on purpose)",
        );
    }
    let servers = settings.servers.len();
    if !args.server_pid.is_empty() && args.server_pid.len() != servers {
        return Err(CtlError::usage(format!(
            "--server-pid names {} process(es) for {servers} server(s): give one pid per --server, in the same order",
            args.server_pid.len()
        )));
    }
    for &pid in &args.server_pid {
        check_pid(pid)?;
    }
    Ok(())
}

fn check_pid(pid: u32) -> Result<()> {
    if procfs::rss_kib(pid).is_none() || procfs::cpu_seconds(pid).is_none() {
        return Err(CtlError::usage(format!(
            "--server-pid {pid}: no such process on this host (or its /proc entries are not readable)"
        )));
    }
    Ok(())
}

/// Warns about limits the run will hit: open files per process, ephemeral
/// ports per source address.
pub fn warn_limits(args: &BenchArgs, transport: Transport, nofile: u64) {
    let total = match transport {
        Transport::Ws => args.agents,
        Transport::Http => args.connections,
    };
    let sockets = total.div_ceil(args.processes);
    if sockets as u64 + SPARE_FILES > nofile {
        output::warn(format!(
            "{sockets} connections per process need more open files than its limit of {nofile}: use --processes {} or more",
            (total as u64).div_ceil(nofile.saturating_sub(SPARE_FILES).max(1))
        ));
    }
    let sources = args
        .source_ips
        .as_deref()
        .and_then(|text| parse_source_ips(text).ok())
        .map_or(1, |ips| ips.len());
    let ports = procfs::ephemeral_ports().unwrap_or(DEFAULT_PORTS);
    if total.div_ceil(sources) > ports {
        output::warn(format!(
            "{} connections from {sources} source address(es) need more than the {ports} ephemeral ports of each: add addresses with --source-ips (e.g. 127.0.0.1-127.0.0.8)",
            total
        ));
    }
}

/// The transport a mode uses; `Err` for a combination that does not exist.
pub fn transport_of(mode: BenchMode, given: Option<BenchTransport>) -> Result<Transport> {
    match (mode, given) {
        (BenchMode::Http, None | Some(BenchTransport::Http)) => Ok(Transport::Http),
        (BenchMode::Hold | BenchMode::Status, Some(BenchTransport::Http)) => Ok(Transport::Http),
        (_, None | Some(BenchTransport::Ws)) if mode != BenchMode::Http => Ok(Transport::Ws),
        _ => Err(CtlError::usage(format!(
            "bench {} does not use --transport {}: http mode is plain HTTP, rollout and reconnect are WebSocket",
            mode.as_str(),
            given.map_or("", |transport| match transport {
                BenchTransport::Ws => "ws",
                BenchTransport::Http => "http",
            })
        ))),
    }
}

/// Source addresses from `A-B` (IPv4 range), `A,B,C` or `A`.
pub fn parse_source_ips(text: &str) -> std::result::Result<Vec<IpAddr>, String> {
    let bad = |part: &str| format!("--source-ips: {part:?} is not an IP address");
    let mut ips = Vec::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match part.split_once('-') {
            Some((low, high)) => {
                let low: std::net::Ipv4Addr = low.trim().parse().map_err(|_| bad(low))?;
                let high: std::net::Ipv4Addr = high.trim().parse().map_err(|_| bad(high))?;
                let (low, high) = (u32::from(low), u32::from(high));
                if high < low || high - low >= 65_536 {
                    return Err(format!(
                        "--source-ips: {part:?} is not a range of at most 65536 IPv4 addresses, low to high"
                    ));
                }
                ips.extend((low..=high).map(|n| IpAddr::V4(n.into())));
            }
            None => ips.push(part.parse().map_err(|_| bad(part))?),
        }
    }
    if ips.is_empty() {
        return Err("--source-ips is empty".into());
    }
    Ok(ips)
}

/// The part `index` of `count` gets of `n` things (contiguous, sizes differ by at most 1).
pub fn share(n: usize, index: usize, count: usize) -> Range<usize> {
    (n * index / count)..(n * (index + 1) / count)
}

/// A new run id: the UTC time and four random hex digits.
pub fn new_run_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%d-%H%M%S"),
        &random[..4]
    )
}

/// A stable 16-byte uid (UUID version 8) for agent `idx` of run `run_id`.
pub fn bench_uid(run_id: &str, idx: usize) -> [u8; 16] {
    let digest = Sha256::digest(format!("opampctl-bench/{run_id}/{idx}").as_bytes());
    let mut uid = [0u8; 16];
    uid.copy_from_slice(&digest[..16]);
    uid[6] = (uid[6] & 0x0f) | 0x80;
    uid[8] = (uid[8] & 0x3f) | 0x80;
    uid
}

/// A YAML body of exactly `n` bytes naming the run (comments pad it).
pub fn config_body(run_id: &str, n: usize) -> Vec<u8> {
    let mut body = format!("bench.run: {run_id}\n");
    let mut i = 0;
    while body.len() + 64 <= n {
        let line = format!("pad_{i:05}: ");
        let fill = 63 - line.len();
        body.push_str(&line);
        body.push_str(&"x".repeat(fill));
        body.push('\n');
        i += 1;
    }
    let left = n.saturating_sub(body.len());
    if left >= 2 {
        body.push('#');
        body.push_str(&"x".repeat(left - 2));
        body.push('\n');
    } else if left == 1 {
        body.push('\n');
    }
    let mut bytes = body.into_bytes();
    bytes.truncate(n.max(1));
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_ranges_and_lists() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.8").unwrap();
        assert_eq!(ips.len(), 8);
        assert_eq!(ips[7].to_string(), "127.0.0.8");
        assert_eq!(parse_source_ips("10.0.0.1, 10.0.0.3").unwrap().len(), 2);
        assert_eq!(parse_source_ips("::1").unwrap().len(), 1);
        assert!(parse_source_ips("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_source_ips("localhost").is_err());
        assert!(parse_source_ips("").is_err());
    }

    #[test]
    fn shares_cover_everything_once() {
        for (n, count) in [(10, 3), (1, 1), (15_000, 4), (5, 5)] {
            let parts: Vec<Range<usize>> = (0..count).map(|index| share(n, index, count)).collect();
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts[count - 1].end, n);
            for pair in parts.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
        }
    }

    #[test]
    fn config_bodies_have_the_size_asked_for() {
        for n in [1, 2, 10, 64, 100, 2048, 5000] {
            let body = config_body("20260101-000000-abcd", n);
            assert_eq!(body.len(), n, "{n}");
        }
        let body = String::from_utf8(config_body("r", 300)).unwrap();
        assert!(body.starts_with("bench.run: r\n"), "{body}");
    }

    #[test]
    fn uids_are_stable_uuids() {
        let uid = bench_uid("run", 1);
        assert_eq!(uid, bench_uid("run", 1));
        assert_ne!(uid, bench_uid("run", 2));
        assert_ne!(uid, bench_uid("other", 1));
        assert_eq!(uuid::Uuid::from_bytes(uid).get_version_num(), 8);
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
}
