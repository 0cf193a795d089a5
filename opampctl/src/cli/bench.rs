//! `opampctl bench`.

use super::parse::{parse_duration, parse_rate};
use clap::{Args, ValueEnum};
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to measure
    #[arg(value_enum)]
    pub mode: BenchMode,
    /// Number of simulated agents, in total over all processes
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub agents: usize,
    /// Measured phase; for rollout and reconnect, the longest wait
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Heartbeat interval of the agents of hold, rollout and reconnect
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub heartbeat: Duration,
    /// Transport of hold and status [default: ws; http mode always uses http, rollout and reconnect ws]
    #[arg(long, value_enum, value_name = "TRANSPORT")]
    pub transport: Option<BenchTransport>,
    /// Keep-alive connections of plain-HTTP agents, in total
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub connections: usize,
    /// Size of each agent's effective config, and of the rolled-out configuration
    #[arg(long, default_value_t = 2048, value_name = "BYTES")]
    pub config_bytes: usize,
    /// opampd's process id on this host: measure its memory (VmRSS), CPU time and open files; with several --server, one per replica in the same order (repeated, or a comma list)
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Worker processes simulating the agents (each one a share of --agents)
    #[arg(long, default_value_t = 1, value_name = "P")]
    pub processes: usize,
    /// Local addresses to connect from, round-robin: a range A-B, a list A,B,C or one address
    #[arg(long, value_name = "IPS")]
    pub source_ips: Option<String>,
    /// How fast agents connect, in total: N/s, N/m or N (per second)
    #[arg(long, default_value = "1000/s", value_parser = parse_rate, value_name = "RATE")]
    pub ramp: f64,
    /// Agent secret, sent as 'Authorization: Bearer SECRET'
    #[arg(
        long,
        env = "OPAMPCTL_AGENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: Option<String>,
    /// OpAMP endpoint (http://, plain listeners only) [default: SERVER/v1/opamp]
    #[arg(long, value_name = "URL")]
    pub opamp_url: Option<String>,
    /// http: send 'Accept-Encoding: gzip'
    #[arg(long)]
    pub gzip: bool,
    /// reconnect: command that restarts opampd, run with sh -c (without it, restart opampd yourself)
    #[arg(long, value_name = "COMMAND")]
    pub restart_cmd: Option<String>,
    /// reconnect: the longest random delay before an agent reconnects
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub jitter: Duration,
    /// Leave the simulated agents in the inventory (by default they are deleted at the end, with an operator token)
    #[arg(long)]
    pub keep: bool,
    /// The default now: the simulated agents are deleted unless --keep
    #[arg(long, hide = true, conflicts_with = "keep")]
    pub cleanup: bool,
    /// compare: the load run against both servers (hold, status or http) [default: hold]
    #[arg(long, value_enum, value_name = "MODE")]
    pub load: Option<BenchMode>,
    /// compare: OpAMP endpoint of the first server (ws:// or http://; path /v1/opamp when none)
    #[arg(long, value_name = "URL")]
    pub server_a: Option<String>,
    /// compare: process id of the first server on this host
    #[arg(long, value_name = "PID")]
    pub pid_a: Option<u32>,
    /// compare: OpAMP endpoint of the second server (ws:// or http://; path /v1/opamp when none)
    #[arg(long, value_name = "URL")]
    pub server_b: Option<String>,
    /// compare: process id of the second server on this host
    #[arg(long, value_name = "PID")]
    pub pid_b: Option<u32>,
    /// compare: rounds, each one run against each server (A B, then B A)
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub rounds: usize,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    /// Idle agents with heartbeats: connect time, RSS per agent, CPU per heartbeat
    Hold,
    /// Health-status changes as fast as possible: messages/s, latency, CPU
    Status,
    /// Plain-HTTP polls as fast as possible: requests/s, latency, CPU
    Http,
    /// Time for a configuration to reach and be applied by every agent
    Rollout,
    /// Time for every agent to come back after a server restart
    Reconnect,
    /// The same load against two OpAMP servers, alternately: each figure side by side and its ratio
    Compare,
}

impl BenchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BenchMode::Hold => "hold",
            BenchMode::Status => "status",
            BenchMode::Http => "http",
            BenchMode::Rollout => "rollout",
            BenchMode::Reconnect => "reconnect",
            BenchMode::Compare => "compare",
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchTransport {
    /// WebSocket
    Ws,
    /// Plain HTTP (POST per message)
    Http,
}
