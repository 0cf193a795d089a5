//! `opampctl bench compare`: one load against two OpAMP servers, alternately,
//! and each figure's ratio.
//!
//! Every run is a fresh `opampctl bench LOAD` child process of this binary
//! with the comparison's flags, the side's `--opamp-url` and `--server-pid`,
//! `--keep` (a server that is not opampd has no inventory API, and neither
//! inventory is touched) and `-o json`; its report is read from its stdout,
//! its progress lines pass through on stderr. Rounds alternate which server
//! goes first (A B, B A, …) so that a drift of the machine over the
//! comparison weighs on both sides alike.

use crate::cli::{BenchArgs, BenchMode, BenchTransport};
use crate::context::Settings;
use crate::error::{CtlError, Exit, Result};
use crate::output;
use crate::procfs;
use comfy_table::Cell;
use serde::Serialize;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

/// The most rounds one comparison runs.
const MAX_ROUNDS: usize = 20;
/// Quiet time between two runs, so that one server's teardown (agents
/// saying goodbye, sockets closing) is not measured against the other.
const SETTLE: Duration = Duration::from_secs(2);

/// `opampctl bench compare`.
pub async fn run(settings: &Settings, args: &BenchArgs) -> Result<()> {
    let load = load_of(args)?;
    let sides = sides(args)?;
    if args.rounds == 0 || args.rounds > MAX_ROUNDS {
        return Err(CtlError::usage(format!(
            "--rounds must be between 1 and {MAX_ROUNDS}"
        )));
    }
    let mut runs = Vec::with_capacity(args.rounds * 2);
    for round in 1..=args.rounds {
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for index in order {
            let side = &sides[index];
            if !runs.is_empty() {
                tokio::time::sleep(SETTLE).await;
            }
            output::info(
                settings,
                format!(
                    "round {round} of {}: bench {} against {} ({}, pid {})",
                    args.rounds,
                    load.as_str(),
                    side.name,
                    side.url,
                    side.pid
                ),
            );
            let report = run_once(args, load, side).await?;
            runs.push(Run {
                server: side.name,
                round,
                report,
            });
        }
    }
    let comparison = Comparison {
        load: load.as_str(),
        rounds: args.rounds,
        agents: args.agents,
        server_a: sides[0].url.clone(),
        server_b: sides[1].url.clone(),
        figures: figures(load, &runs),
        runs,
    };
    output::show(settings, &comparison, |_| table(settings, &comparison))?;
    let errors: u64 = comparison
        .runs
        .iter()
        .map(|run| run.report["errors"].as_u64().unwrap_or(0))
        .sum();
    if errors > 0 {
        output::warn(format!(
            "{errors} errors over the runs: the figures of a run with errors measure less than the load asked for"
        ));
        return Err(CtlError::silent(Exit::Failed));
    }
    Ok(())
}

/// What `-o json` prints.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub load: &'static str,
    pub rounds: usize,
    pub agents: usize,
    pub server_a: String,
    pub server_b: String,
    /// Each figure: both servers' medians over the rounds and B/A.
    pub figures: Vec<Figure>,
    /// Every run's own report, in the order they ran.
    pub runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
pub struct Figure {
    /// The report field (`cpu_per_heartbeat_us`, …).
    pub name: &'static str,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// `b / a`, when both are known and `a` is not zero.
    pub ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub server: &'static str,
    pub round: usize,
    pub report: Value,
}

/// One of the two servers.
struct Side {
    name: &'static str,
    url: String,
    pid: u32,
}

/// The load to run: hold unless `--load` says otherwise.
fn load_of(args: &BenchArgs) -> Result<BenchMode> {
    match args.load.unwrap_or(BenchMode::Hold) {
        mode @ (BenchMode::Hold | BenchMode::Status | BenchMode::Http) => Ok(mode),
        other => Err(CtlError::usage(format!(
            "--load {}: bench compare runs hold, status or http (rollout and reconnect need opampd's API or a restart of the server)",
            other.as_str()
        ))),
    }
}

fn sides(args: &BenchArgs) -> Result<[Side; 2]> {
    let side = |name: &'static str, url: &Option<String>, pid: Option<u32>| -> Result<Side> {
        let (Some(url), Some(pid)) = (url, pid) else {
            return Err(CtlError::usage(format!(
                "bench compare needs --server-{name} URL and --pid-{name} PID for each of the two servers (A and B), e.g. --server-a ws://127.0.0.1:4320/v1/opamp --pid-a $(pidof server)",
                name = name.to_lowercase()
            )));
        };
        if !procfs::process_exists(pid) {
            return Err(CtlError::usage(format!(
                "--pid-{}: no process {pid} on this host (the server's CPU and memory are read from /proc)",
                name.to_lowercase()
            )));
        }
        Ok(Side {
            name,
            url: endpoint(url).map_err(|e| {
                CtlError::usage(format!("--server-{} {url}: {e}", name.to_lowercase()))
            })?,
            pid,
        })
    };
    Ok([
        side("A", &args.server_a, args.pid_a)?,
        side("B", &args.server_b, args.pid_b)?,
    ])
}

/// The OpAMP endpoint of a `--server-a/b` URL: plain `ws://` or `http://`,
/// with the path `/v1/opamp` when the URL has none.
pub fn endpoint(url: &str) -> std::result::Result<String, String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or(
            "expected a plain ws:// or http:// URL (the bench speaks to listeners without TLS)",
        )?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    let scheme = &url[..url.len() - rest.len()];
    Ok(if path.is_empty() {
        format!("{scheme}{host}/v1/opamp")
    } else {
        url.trim_end_matches('/').to_string()
    })
}

/// The child's arguments: the comparison's load flags for one side.
fn child_args(args: &BenchArgs, load: BenchMode, side: &Side) -> Vec<String> {
    let mut out: Vec<String> = vec![
        "-o".into(),
        "json".into(),
        "bench".into(),
        load.as_str().into(),
        "--opamp-url".into(),
        side.url.clone(),
        "--server-pid".into(),
        side.pid.to_string(),
        "--keep".into(),
        "--agents".into(),
        args.agents.to_string(),
        "--duration".into(),
        format!("{}ms", args.duration.as_millis()),
        "--heartbeat".into(),
        format!("{}ms", args.heartbeat.as_millis()),
        "--connections".into(),
        args.connections.to_string(),
        "--config-bytes".into(),
        args.config_bytes.to_string(),
        "--processes".into(),
        args.processes.to_string(),
        "--ramp".into(),
        format!("{}/s", args.ramp),
    ];
    if let Some(transport) = args.transport {
        out.push("--transport".into());
        out.push(
            match transport {
                BenchTransport::Ws => "ws",
                BenchTransport::Http => "http",
            }
            .into(),
        );
    }
    if let Some(ips) = &args.source_ips {
        out.push("--source-ips".into());
        out.push(ips.clone());
    }
    if args.gzip {
        out.push("--gzip".into());
    }
    out
}

/// One run against one server: its JSON report.
async fn run_once(args: &BenchArgs, load: BenchMode, side: &Side) -> Result<Value> {
    let exe = std::env::current_exe()
        .map_err(|e| CtlError::failed(format!("cannot find opampctl's own binary: {e}")))?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args(child_args(args, load, side))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(secret) = &args.secret {
        command.env("OPAMPCTL_AGENT_SECRET", secret);
    }
    let output = command
        .output()
        .await
        .map_err(|e| CtlError::failed(format!("cannot start a bench run: {e}")))?;
    let report: Option<Value> = serde_json::from_slice(&output.stdout).ok();
    match (output.status.code(), report) {
        // 1 = the run had errors: its report says how many.
        (Some(0 | 1), Some(report)) => Ok(report),
        (code, _) => Err(CtlError {
            exit: if code == Some(3) {
                Exit::Unreachable
            } else {
                Exit::Failed
            },
            message: format!(
                "bench {} against {} ({}) failed (exit {}): see its message above",
                load.as_str(),
                side.name,
                side.url,
                code.map_or("by a signal".to_string(), |code| code.to_string())
            ),
        }),
    }
}

/// The report fields compared for a load, with their table labels.
fn fields(load: BenchMode) -> &'static [(&'static str, &'static str)] {
    match load {
        BenchMode::Hold => &[
            ("cpu_per_heartbeat_us", "server CPU per heartbeat (µs)"),
            ("rss_per_agent_kib", "server RSS per agent (KiB)"),
            ("latency_p50_ms", "heartbeat latency p50 (ms)"),
            ("latency_p99_ms", "heartbeat latency p99 (ms)"),
            ("connect_p99_ms", "connect p99 (ms)"),
        ],
        BenchMode::Http => &[
            ("cpu_per_1000_msgs_s", "server CPU-s per 1000 polls"),
            ("msgs_per_s", "polls/s"),
            ("latency_p50_ms", "poll latency p50 (ms)"),
            ("latency_p99_ms", "poll latency p99 (ms)"),
        ],
        _ => &[
            ("cpu_per_1000_msgs_s", "server CPU-s per 1000 messages"),
            ("msgs_per_s", "messages/s"),
            ("latency_p50_ms", "latency p50 (ms)"),
            ("latency_p99_ms", "latency p99 (ms)"),
        ],
    }
}

fn figures(load: BenchMode, runs: &[Run]) -> Vec<Figure> {
    let median_of = |server: &str, field: &str| {
        median(
            runs.iter()
                .filter(|run| run.server == server)
                .filter_map(|run| run.report[field].as_f64())
                .collect(),
        )
    };
    fields(load)
        .iter()
        .map(|&(name, _)| {
            let a = median_of("A", name);
            let b = median_of("B", name);
            let ratio = match (a, b) {
                (Some(a), Some(b)) if a > 0.0 => Some(round3(b / a)),
                _ => None,
            };
            Figure {
                name,
                a: a.map(round3),
                b: b.map(round3),
                ratio,
            }
        })
        .collect()
}

/// The median (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn table(settings: &Settings, comparison: &Comparison) -> String {
    let load = match comparison.load {
        "status" => BenchMode::Status,
        "http" => BenchMode::Http,
        _ => BenchMode::Hold,
    };
    let mut table = output::table(settings, &["FIGURE", "A", "B", "B/A"]);
    let show = |value: Option<f64>| value.map_or("-".to_string(), |value| value.to_string());
    for (figure, &(_, label)) in comparison.figures.iter().zip(fields(load)) {
        table.add_row(vec![
            Cell::new(label),
            Cell::new(show(figure.a)),
            Cell::new(show(figure.b)),
            Cell::new(show(figure.ratio)),
        ]);
    }
    format!(
        "bench {} with {} agents, median of {} round{} each\nA: {}\nB: {}\n{}",
        comparison.load,
        comparison.agents,
        comparison.rounds,
        if comparison.rounds == 1 { "" } else { "s" },
        comparison.server_a,
        comparison.server_b,
        output::render(&table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_opamp_path_when_they_have_none() {
        assert_eq!(
            endpoint("ws://127.0.0.1:4320").unwrap(),
            "ws://127.0.0.1:4320/v1/opamp"
        );
        assert_eq!(
            endpoint("http://h:1/").unwrap(),
            "http://h:1/v1/opamp",
            "a bare slash is no path"
        );
        assert_eq!(endpoint("http://h:1/custom/").unwrap(), "http://h:1/custom");
        assert!(endpoint("https://h:1").is_err());
        assert!(endpoint("ws://").is_err());
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
    }
}
