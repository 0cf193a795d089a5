//! What a run measured: latency samples mergeable over workers, the
//! report (the JSON of `-o json`), how the workers' results and the
//! parent's readings fill it, and its table.

use super::measure::{Measured, ServerReadings, Servers};
use super::plan::Transport;
use super::worker::{EndpointCounts, WorkerResult};
use crate::cli::{BenchArgs, BenchMode};
use crate::context::Settings;
use crate::output;
use comfy_table::Cell;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Latency and connect samples a worker hands to the parent, at most.
const MAX_POINTS: usize = 20_000;
/// Distinct error messages reported.
const MAX_ERROR_SAMPLES: usize = 5;

/// Sorted samples standing for `count` measurements (each point for
/// `count / points.len()` of them), so workers' percentiles can be merged.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Samples {
    pub count: u64,
    pub points: Vec<f64>,
}

impl Samples {
    pub fn new(mut values: Vec<f64>) -> Samples {
        values.sort_by(f64::total_cmp);
        let count = values.len() as u64;
        if values.len() > MAX_POINTS {
            let n = values.len();
            values = (0..MAX_POINTS)
                .map(|i| values[i * n / MAX_POINTS])
                .collect();
        }
        Samples {
            count,
            points: values,
        }
    }
}

/// The `p`-th percentile (nearest rank) over several workers' samples.
pub fn percentile(parts: &[&Samples], p: f64) -> Option<f64> {
    let mut weighted: Vec<(f64, f64)> = Vec::new();
    for samples in parts.iter().filter(|samples| !samples.points.is_empty()) {
        let weight = samples.count as f64 / samples.points.len() as f64;
        weighted.extend(samples.points.iter().map(|&value| (value, weight)));
    }
    if weighted.is_empty() {
        return None;
    }
    weighted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = weighted.iter().map(|(_, weight)| weight).sum();
    let target = (p / 100.0 * total).max(f64::MIN_POSITIVE);
    let mut seen = 0.0;
    for (value, weight) in &weighted {
        seen += weight;
        if seen + 1e-9 >= target {
            return Some(*value);
        }
    }
    weighted.last().map(|(value, _)| *value)
}

/// Rounded to three decimals.
pub fn r3(x: f64) -> f64 {
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
    pub server_fds: Option<usize>,
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
    /// Several --server: each replica's figures (the fields above are the totals).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaReport>,
}

/// One replica's figures in a run over several replicas.
#[derive(Debug, Default, Serialize)]
pub struct ReplicaReport {
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Agents connected to it (not known through a balancer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_end_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_agent_kib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_heartbeat_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_1000_msgs_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_received: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_received_s: Option<f64>,
}

/// Error messages and how often each occurred.
type ErrorCounts = BTreeMap<String, u64>;

impl BenchReport {
    /// Fills in the workers' results, the parent's measured phase and the
    /// server's readings.
    pub fn add_results(
        &mut self,
        args: &BenchArgs,
        transport: Transport,
        results: &[WorkerResult],
        measured: &Measured,
        servers: &Servers,
    ) {
        let server = &servers.combined();
        let mut errors = self.count_errors(results, &measured.errors);
        self.connected = results.iter().map(|result| result.connected).sum();
        self.duration_s = r3(measured.duration.as_secs_f64());
        let connects: Vec<&Samples> = results.iter().map(|result| &result.connect_ms).collect();
        self.connect_p50_ms = percentile(&connects, 50.0).map(r3);
        self.connect_p99_ms = percentile(&connects, 99.0).map(r3);
        self.server_cpu_s = server.cpu().map(r3);
        self.server_fds = server.fds_connected;
        match args.mode {
            BenchMode::Hold | BenchMode::Status | BenchMode::Http => {
                self.add_steady(args, transport, results, measured, server)
            }
            BenchMode::Rollout => self.add_rollout(results, measured, &mut errors),
            BenchMode::Reconnect => self.add_reconnect(args, results, measured, &mut errors),
            BenchMode::Compare => unreachable!("bench compare runs its loads in child processes"),
        }
        self.set_error_samples(errors);
    }

    /// Several --server: each replica's figures, from its readings and the
    /// workers' counts of its agents; through a balancer (`balanced`: each
    /// replica's WebSocket connections, from its /metrics) its messages are
    /// its share of all of them.
    pub fn add_replicas(
        &mut self,
        args: &BenchArgs,
        servers: &[String],
        balanced: Option<&[Option<usize>]>,
        results: &[WorkerResult],
        measured: &Measured,
        readings: &Servers,
    ) {
        let total_messages: u64 = results.iter().map(|result| result.messages).sum();
        let balanced_total: usize = balanced.unwrap_or_default().iter().flatten().sum();
        for (index, server) in servers.iter().enumerate() {
            let counts = match balanced {
                Some(connections) => {
                    connections
                        .get(index)
                        .copied()
                        .flatten()
                        .map(|connected| EndpointCounts {
                            connected,
                            messages: (total_messages as f64 * connected as f64
                                / balanced_total.max(1) as f64)
                                .round() as u64,
                            ..Default::default()
                        })
                }
                None => Some(
                    results
                        .iter()
                        .filter_map(|result| result.endpoints.get(index))
                        .fold(EndpointCounts::default(), |mut total, counts| {
                            total.connected += counts.connected;
                            total.messages += counts.messages;
                            total.received += counts.received;
                            total.last_received_ms =
                                match (total.last_received_ms, counts.last_received_ms) {
                                    (Some(a), Some(b)) => Some(a.max(b)),
                                    (a, b) => a.or(b),
                                };
                            total
                        }),
                ),
            };
            let own = readings.readings.get(index);
            let mut replica = ReplicaReport {
                server: server.clone(),
                pid: readings.pids.get(index).copied(),
                connected: counts.as_ref().map(|counts| counts.connected),
                fds: own.and_then(|own| own.fds_connected),
                cpu_s: own.and_then(ServerReadings::cpu).map(r3),
                ..Default::default()
            };
            let steady = matches!(
                args.mode,
                BenchMode::Hold | BenchMode::Status | BenchMode::Http
            );
            if let (Some(counts), true) = (&counts, steady) {
                replica.messages = Some(counts.messages);
                let cpu = replica.cpu_s.filter(|_| counts.messages > 0);
                if args.mode == BenchMode::Hold {
                    replica.cpu_per_heartbeat_us =
                        cpu.map(|cpu| r3(cpu * 1e6 / counts.messages as f64));
                } else {
                    replica.cpu_per_1000_msgs_s =
                        cpu.map(|cpu| r3(cpu * 1000.0 / counts.messages as f64));
                }
            }
            if let Some(own) = own.filter(|_| args.mode == BenchMode::Hold) {
                replica.rss_before_kib = own.rss_before;
                replica.rss_after_kib = own.rss_connected;
                replica.rss_end_kib = own.rss_end;
                if let (Some(before), Some(connected), Some(counts)) =
                    (own.rss_before, own.rss_connected, &counts)
                {
                    replica.rss_per_agent_kib = Some(r3(
                        (connected as f64 - before as f64) / counts.connected.max(1) as f64
                    ));
                }
            }
            if let (Some(counts), BenchMode::Rollout, None) = (&counts, args.mode, balanced) {
                replica.rollout_received = Some(counts.received);
                if counts.received >= counts.connected && counts.connected > 0 {
                    if let (Some(started), Some(last)) =
                        (measured.rollout_started_ms, counts.last_received_ms)
                    {
                        replica.rollout_received_s = Some(r3((last - started).max(0.0) / 1000.0));
                    }
                }
            }
            self.replicas.push(replica);
        }
    }

    fn count_errors(&mut self, results: &[WorkerResult], parent_errors: &[String]) -> ErrorCounts {
        let mut errors = ErrorCounts::new();
        for result in results {
            self.errors += result.errors;
            for (message, count) in &result.error_samples {
                *errors.entry(message.clone()).or_default() += count;
            }
        }
        for message in parent_errors {
            self.errors += 1;
            *errors.entry(message.clone()).or_default() += 1;
        }
        errors
    }

    /// hold, status, http: throughput, latency, and the server's cost.
    fn add_steady(
        &mut self,
        args: &BenchArgs,
        transport: Transport,
        results: &[WorkerResult],
        measured: &Measured,
        server: &ServerReadings,
    ) {
        let messages: u64 = results.iter().map(|result| result.messages).sum();
        let latencies: Vec<&Samples> = results.iter().map(|result| &result.latency_ms).collect();
        self.messages = Some(messages);
        self.msgs_per_s = Some(r3(
            messages as f64 / measured.duration.as_secs_f64().max(1e-9)
        ));
        self.latency_p50_ms = percentile(&latencies, 50.0).map(r3);
        self.latency_p99_ms = percentile(&latencies, 99.0).map(r3);
        let cpu = server.cpu().filter(|_| messages > 0);
        if args.mode == BenchMode::Hold {
            self.heartbeat_s = Some(r3(args.heartbeat.as_secs_f64()));
            self.add_memory(server);
            self.cpu_per_heartbeat_us = cpu.map(|cpu| r3(cpu * 1e6 / messages as f64));
        } else {
            self.cpu_per_1000_msgs_s = cpu.map(|cpu| r3(cpu * 1000.0 / messages as f64));
        }
        if transport == Transport::Http {
            self.connections = Some(args.connections);
            self.gzip = Some(args.gzip);
        }
        let full_state: u64 = results
            .iter()
            .map(|result| result.full_state_requests)
            .sum();
        if full_state > 0 {
            self.full_state_requests = Some(full_state);
        }
    }

    /// hold: RSS before, connected and at the end; per agent; flat or not
    /// (within 2% or 2 MiB of the connected RSS).
    fn add_memory(&mut self, server: &ServerReadings) {
        self.server_rss_before_kib = server.rss_before;
        self.server_rss_after_kib = server.rss_connected;
        self.server_rss_end_kib = server.rss_end;
        if let (Some(before), Some(connected)) = (server.rss_before, server.rss_connected) {
            self.rss_per_agent_kib = Some(r3(
                (connected as f64 - before as f64) / self.connected.max(1) as f64
            ));
        }
        if let (Some(connected), Some(end)) = (server.rss_connected, server.rss_end) {
            let mut samples = server.rss_samples.clone();
            samples.push(end);
            let low = samples.iter().copied().min().unwrap_or(connected);
            let high = samples.iter().copied().max().unwrap_or(connected);
            self.rss_growth_kib = Some(end as i64 - connected as i64);
            self.rss_flat = Some((high - low) as f64 <= (connected as f64 * 0.02).max(2048.0));
            self.rss_samples_kib = Some(samples);
        }
    }

    /// rollout: how many agents received the configuration and when the last
    /// did; an error when some did not.
    fn add_rollout(
        &mut self,
        results: &[WorkerResult],
        measured: &Measured,
        errors: &mut ErrorCounts,
    ) {
        let received: usize = results.iter().map(|result| result.received).sum();
        self.rollout_received = Some(received);
        let last = results
            .iter()
            .filter_map(|result| result.last_received_ms)
            .reduce(f64::max);
        if received >= self.connected && self.connected > 0 {
            if let (Some(started), Some(last)) = (measured.rollout_started_ms, last) {
                self.rollout_received_s = Some(r3((last - started).max(0.0) / 1000.0));
            }
        } else {
            self.errors += 1;
            *errors
                .entry(format!(
                    "{} of {} agents did not receive the configuration",
                    self.connected.saturating_sub(received),
                    self.connected
                ))
                .or_default() += 1;
        }
    }

    /// reconnect: agents back, attempts, full-state requests, and the time
    /// from the first close to the last agent back; an error when some
    /// were not back.
    fn add_reconnect(
        &mut self,
        args: &BenchArgs,
        results: &[WorkerResult],
        measured: &Measured,
        errors: &mut ErrorCounts,
    ) {
        let back: usize = results.iter().map(|result| result.back).sum();
        self.back = Some(back);
        self.reconnect_attempts =
            Some(results.iter().map(|result| result.reconnect_attempts).sum());
        self.full_state_requests = Some(
            results
                .iter()
                .map(|result| result.full_state_requests)
                .sum(),
        );
        let first = results
            .iter()
            .filter_map(|result| result.first_close_ms)
            .reduce(f64::min);
        let last = results
            .iter()
            .filter_map(|result| result.last_back_ms)
            .reduce(f64::max);
        if measured.all_back && back >= self.connected {
            if let (Some(first), Some(last)) = (first, last) {
                self.reconnect_s = Some(r3((last - first).max(0.0) / 1000.0));
            }
            return;
        }
        let message = if first.is_none() {
            format!(
                "no agent saw the server close its connection within {:.0}s: was opampd restarted?",
                args.duration.as_secs_f64()
            )
        } else {
            format!(
                "{} of {} agents were not back within {:.0}s",
                self.connected.saturating_sub(back),
                self.connected,
                args.duration.as_secs_f64()
            )
        };
        self.errors += 1;
        *errors.entry(message).or_default() += 1;
    }

    /// The most frequent error messages, with their counts.
    fn set_error_samples(&mut self, errors: ErrorCounts) {
        let mut samples: Vec<(String, u64)> = errors.into_iter().collect();
        samples.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        self.error_samples = samples
            .into_iter()
            .take(MAX_ERROR_SAMPLES)
            .map(|(message, count)| {
                if count > 1 {
                    format!("{message} (x{count})")
                } else {
                    message
                }
            })
            .collect();
    }
}

fn with_unit<T: ToString>(value: Option<T>, unit: &str) -> Option<String> {
    value.map(|value| format!("{}{unit}", value.to_string()))
}

/// The text form: one row per metric the mode has, then the error samples.
pub fn table(settings: &Settings, report: &BenchReport) -> String {
    let mut table = output::table(settings, &["METRIC", "VALUE"]);
    for (metric, value) in rows(report) {
        if let Some(value) = value {
            table.add_row(vec![Cell::new(metric), Cell::new(value)]);
        }
    }
    let mut text = output::render(&table);
    if !report.replicas.is_empty() {
        text.push_str("\n\n");
        text.push_str(&replica_table(settings, report));
    }
    for e in &report.error_samples {
        text.push_str(&format!("\nerror: {e}"));
    }
    text
}

/// One row per replica: its agents and what it spent on them.
fn replica_table(settings: &Settings, report: &BenchReport) -> String {
    let per_message = match report.mode {
        "hold" => "CPU/HEARTBEAT",
        "rollout" => "ALL RECEIVED",
        _ => "CPU/1000 MSGS",
    };
    let mut table = output::table(
        settings,
        &[
            "REPLICA",
            "PID",
            "AGENTS",
            "RSS",
            "RSS/AGENT",
            "FDS",
            "CPU",
            per_message,
        ],
    );
    let text = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    for replica in &report.replicas {
        let last = match report.mode {
            "hold" => with_unit(replica.cpu_per_heartbeat_us, " µs"),
            "rollout" => with_unit(replica.rollout_received_s, " s"),
            _ => with_unit(replica.cpu_per_1000_msgs_s, " s"),
        };
        table.add_row(vec![
            Cell::new(&replica.server),
            Cell::new(text(with_unit(replica.pid, ""))),
            Cell::new(text(with_unit(replica.connected, ""))),
            Cell::new(text(
                replica.rss_after_kib.map(|kib| output::bytes(kib * 1024)),
            )),
            Cell::new(text(with_unit(replica.rss_per_agent_kib, " KiB"))),
            Cell::new(text(with_unit(replica.fds, ""))),
            Cell::new(text(with_unit(replica.cpu_s, " s"))),
            Cell::new(text(last)),
        ]);
    }
    output::render(&table)
}

fn rows(report: &BenchReport) -> Vec<(&'static str, Option<String>)> {
    let per_message = if report.mode == "http" {
        "requests/s"
    } else {
        "messages/s"
    };
    let kib = |value: Option<u64>| value.map(|kib| output::bytes(kib * 1024));
    vec![
        (
            "mode",
            Some(format!("{} over {}", report.mode, report.transport)),
        ),
        (
            "agents",
            Some(format!(
                "{} connected of {} ({} process{})",
                report.connected,
                report.agents,
                report.processes,
                if report.processes == 1 { "" } else { "es" }
            )),
        ),
        (
            "replicas",
            (!report.replicas.is_empty()).then(|| {
                format!(
                    "{} (figures below are totals; each replica in the second table)",
                    report.replicas.len()
                )
            }),
        ),
        ("measured", Some(format!("{:.1} s", report.duration_s))),
        ("errors", Some(report.errors.to_string())),
        ("connect p50", with_unit(report.connect_p50_ms, " ms")),
        ("connect p99", with_unit(report.connect_p99_ms, " ms")),
        ("heartbeat", with_unit(report.heartbeat_s, " s")),
        ("connections", with_unit(report.connections, "")),
        ("gzip", with_unit(report.gzip, "")),
        ("messages", with_unit(report.messages, "")),
        (per_message, with_unit(report.msgs_per_s, "")),
        ("latency p50", with_unit(report.latency_p50_ms, " ms")),
        ("latency p99", with_unit(report.latency_p99_ms, " ms")),
        (
            "full-state requests",
            with_unit(report.full_state_requests, ""),
        ),
        ("server pid", with_unit(report.server_pid, "")),
        ("server RSS before", kib(report.server_rss_before_kib)),
        ("server RSS connected", kib(report.server_rss_after_kib)),
        ("server RSS end", kib(report.server_rss_end_kib)),
        ("server open files", with_unit(report.server_fds, "")),
        ("RSS per agent", with_unit(report.rss_per_agent_kib, " KiB")),
        (
            "RSS during hold",
            report.rss_flat.map(|flat| {
                format!(
                    "{} ({:+} KiB)",
                    if flat { "flat" } else { "grows" },
                    report.rss_growth_kib.unwrap_or(0)
                )
            }),
        ),
        ("server CPU", with_unit(report.server_cpu_s, " s")),
        (
            "CPU per heartbeat",
            with_unit(report.cpu_per_heartbeat_us, " µs"),
        ),
        (
            "CPU per 1000 messages",
            with_unit(report.cpu_per_1000_msgs_s, " s"),
        ),
        ("configuration", report.configuration.clone()),
        ("received by", with_unit(report.rollout_received, " agents")),
        ("applied by", with_unit(report.rollout_applied, " agents")),
        (
            "all received after",
            with_unit(report.rollout_received_s, " s"),
        ),
        (
            "all applied after",
            with_unit(report.rollout_applied_s, " s"),
        ),
        ("back", with_unit(report.back, " agents")),
        ("all back after", with_unit(report.reconnect_s, " s")),
        (
            "reconnect attempts",
            with_unit(report.reconnect_attempts, ""),
        ),
        ("/health/live max", with_unit(report.live_max_ms, " ms")),
        (
            "/health/live probes",
            report.live_probes.map(|probes| {
                format!(
                    "{probes} ({} unanswered)",
                    report.live_failures.unwrap_or(0)
                )
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_percentile(values: &[f64], p: f64, expected: f64) {
        let samples = Samples::new(values.to_vec());
        assert_eq!(
            percentile(&[&samples], p),
            Some(expected),
            "p{p} of {values:?}"
        );
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
        let fast = Samples::new(vec![1.0; 90]);
        let slow = Samples::new(vec![10.0; 10]);
        assert_eq!(percentile(&[&fast, &slow], 50.0), Some(1.0));
        assert_eq!(percentile(&[&fast, &slow], 95.0), Some(10.0));
        // Thinned samples keep their weight.
        let many = Samples::new((0..100_000).map(f64::from).collect());
        assert_eq!(many.count, 100_000);
        assert_eq!(many.points.len(), MAX_POINTS);
        let p50 = percentile(&[&many], 50.0).unwrap();
        assert!((p50 - 50_000.0).abs() <= 10.0, "{p50}");
    }
}
