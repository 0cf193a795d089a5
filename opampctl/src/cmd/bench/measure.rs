//! The parent's measured phase of each mode, after every worker said
//! `ready`: ordering `go`, reading the server's /proc entries, and what the
//! mode drives itself (a rollout through the API; a restart with
//! /health/live probes).

use super::agent::{ms, now_ms};
use super::coordinator::{collect, send_all, wait_done, Command, Handle};
use super::report::{r3, BenchReport};
use super::Bench;
use crate::client::enc;
use crate::error::{CtlError, Result};
use crate::output;
use crate::procfs;
use opamp_proto::api::{ConfigurationInput, RolloutRequest, RolloutStatus};
use reqwest::Method;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often reconnect mode asks /health/live.
const LIVE_EVERY: Duration = Duration::from_millis(50);
/// How often rollout mode asks for the rollout's status.
const ROLLOUT_POLL: Duration = Duration::from_millis(50);

/// The /proc readings of every server given with --server-pid (one per
/// replica, in the order of --server), taken together.
#[derive(Debug, Default)]
pub struct Servers {
    pub pids: Vec<u32>,
    pub readings: Vec<ServerReadings>,
}

impl Servers {
    /// The servers' RSS now, as their `rss_before`.
    pub fn new(pids: Vec<u32>) -> Servers {
        let readings = pids
            .iter()
            .map(|&pid| ServerReadings {
                rss_before: procfs::rss_kib(pid),
                ..Default::default()
            })
            .collect();
        Servers { pids, readings }
    }

    fn each(&mut self, mut read: impl FnMut(u32, &mut ServerReadings)) {
        for (&pid, readings) in self.pids.iter().zip(self.readings.iter_mut()) {
            read(pid, readings);
        }
    }

    /// RSS and open files once every agent connected.
    pub fn read_connected(&mut self) {
        self.each(|pid, readings| {
            readings.rss_connected = procfs::rss_kib(pid);
            readings.fds_connected = procfs::open_files(pid);
        });
    }

    pub fn read_cpu_before(&mut self) {
        self.each(|pid, readings| readings.cpu_before = procfs::cpu_seconds(pid));
    }

    /// CPU time after the measured phase and RSS at the end.
    pub fn read_end(&mut self) {
        self.each(|pid, readings| {
            readings.cpu_after = procfs::cpu_seconds(pid);
            readings.rss_end = procfs::rss_kib(pid);
        });
    }

    /// hold: an RSS sample of every server.
    pub fn sample_rss(&mut self) {
        self.each(|pid, readings| readings.rss_samples.extend(procfs::rss_kib(pid)));
    }

    /// The readings of all servers as one: the sums (a figure missing for
    /// one server is missing for all).
    pub fn combined(&self) -> ServerReadings {
        fn sum<T: std::iter::Sum<T>>(values: impl Iterator<Item = Option<T>>) -> Option<T> {
            values
                .collect::<Option<Vec<T>>>()
                .map(|all| all.into_iter().sum())
        }
        let all = &self.readings;
        if all.is_empty() {
            return ServerReadings::default();
        }
        let samples = all.iter().map(|r| r.rss_samples.len()).min().unwrap_or(0);
        ServerReadings {
            rss_before: sum(all.iter().map(|r| r.rss_before)),
            rss_connected: sum(all.iter().map(|r| r.rss_connected)),
            rss_samples: (0..samples)
                .map(|i| all.iter().map(|r| r.rss_samples[i]).sum())
                .collect(),
            rss_end: sum(all.iter().map(|r| r.rss_end)),
            cpu_before: sum(all.iter().map(|r| r.cpu_before)),
            cpu_after: sum(all.iter().map(|r| r.cpu_after)),
            fds_connected: sum(all.iter().map(|r| r.fds_connected)),
        }
    }
}

/// One server's /proc readings, in KiB and CPU seconds.
#[derive(Debug, Default, Clone)]
pub struct ServerReadings {
    pub rss_before: Option<u64>,
    /// When every agent had connected.
    pub rss_connected: Option<u64>,
    /// hold: the connected RSS and samples every few seconds of the measured phase.
    pub rss_samples: Vec<u64>,
    pub rss_end: Option<u64>,
    pub cpu_before: Option<f64>,
    pub cpu_after: Option<f64>,
    /// Open files (sockets included) when every agent had connected.
    pub fds_connected: Option<usize>,
}

impl ServerReadings {
    /// CPU seconds the server spent in the measured phase.
    pub fn cpu(&self) -> Option<f64> {
        match (self.cpu_before, self.cpu_after) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        }
    }
}

/// What the parent saw of the measured phase.
#[derive(Debug, Default)]
pub struct Measured {
    pub duration: Duration,
    /// rollout: when the rollout was started (ms since the epoch).
    pub rollout_started_ms: Option<f64>,
    /// reconnect: every worker said all its agents are back.
    pub all_back: bool,
    /// Errors of the parent's own part (rollout API, restart command).
    pub errors: Vec<String>,
}

/// hold, status, http: `go`, then --duration, sampling the server's RSS
/// (hold) every tenth of it (1 to 5 s).
pub async fn steady(bench: &Bench<'_>, workers: &mut [Handle], servers: &mut Servers) -> Measured {
    let args = bench.args;
    servers.read_cpu_before();
    send_all(workers, Command::Go);
    let go = Instant::now();
    output::info(
        bench.settings,
        format!("measuring for {}s", args.duration.as_secs_f64()),
    );
    let hold = args.mode == crate::cli::BenchMode::Hold;
    if hold {
        for readings in &mut servers.readings {
            readings.rss_samples.extend(readings.rss_connected);
        }
    }
    let every = (args.duration / 10).clamp(Duration::from_secs(1), Duration::from_secs(5));
    loop {
        let left = args.duration.saturating_sub(go.elapsed());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(every)).await;
        if hold {
            servers.sample_rss();
        }
    }
    Measured {
        duration: go.elapsed(),
        ..Default::default()
    }
}

/// rollout: a configuration selecting this run's agents, `go`, a rollout
/// of it, and its status polled until completed, failed or paused, or
/// until --duration; meanwhile the workers say when all their agents got it.
/// `Err` (after stopping the workers) when the configuration cannot be created.
pub async fn rollout(
    bench: &Bench<'_>,
    workers: &mut [Handle],
    connected: usize,
    report: &mut BenchReport,
    servers: &mut Servers,
) -> Result<Measured> {
    let args = bench.args;
    let name = bench.configuration_name();
    let input = ConfigurationInput {
        name: name.clone(),
        body: String::from_utf8_lossy(&super::plan::config_body(&bench.run_id, args.config_bytes))
            .into_owned(),
        content_type: Some("text/yaml".into()),
        selector: Some(format!("bench.run={}", bench.run_id)),
        description: Some("opampctl bench rollout".into()),
    };
    let created: Result<(reqwest::StatusCode, serde_json::Value)> = bench
        .client
        .send_json(Method::POST, "/api/v1/configurations", &input)
        .await;
    if let Err(e) = created {
        collect(workers, &bench.per_worker, Duration::from_secs(60)).await;
        return Err(e);
    }
    report.configuration = Some(name.clone());
    if bench.settings.servers.len() > 1 {
        wait_listed(bench, connected).await;
    }
    servers.read_cpu_before();
    send_all(workers, Command::Go);
    output::info(
        bench.settings,
        format!("rolling out {name} to {connected} agents"),
    );
    let go = Instant::now();
    let mut measured = Measured {
        rollout_started_ms: Some(now_ms()),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + args.duration;
    let (_, polled) = tokio::join!(
        wait_done(workers, deadline),
        run_rollout(bench, &name, connected, go, deadline)
    );
    measured.duration = go.elapsed();
    match polled {
        Ok((applied_after, status)) => {
            report.rollout_applied = Some(status.applied);
            report.rollout_applied_s = applied_after.map(|took| r3(took.as_secs_f64()));
            if applied_after.is_none() {
                measured.errors.push(format!(
                    "the rollout is {} after {:.0}s: {} of {} applied, {} failed",
                    status.state,
                    args.duration.as_secs_f64(),
                    status.applied,
                    status.total,
                    status.failed
                ));
            }
        }
        Err(e) => measured.errors.push(format!("rollout: {}", e.message)),
    }
    Ok(measured)
}

/// Several replicas: waits (up to --duration) until the first replica,
/// where the rollout starts, lists every connected agent of the run. A
/// replica stores its agents' first reports a moment after they connected,
/// and a rollout targets the agents stored when it starts.
async fn wait_listed(bench: &Bench<'_>, connected: usize) {
    let path = format!(
        "/api/v1/agents?limit=1&selector={}",
        enc(&format!("bench.run={}", bench.run_id))
    );
    let deadline = Instant::now() + bench.args.duration;
    let mut listed = 0;
    while Instant::now() < deadline {
        if let Ok(page) = bench
            .client
            .get::<opamp_proto::api::Page<serde_json::Value>>(&path)
            .await
        {
            listed = page.total as usize;
            if listed >= connected {
                return;
            }
        }
        tokio::time::sleep(ROLLOUT_POLL).await;
    }
    output::warn(format!(
        "{} lists {listed} of the {connected} connected agents: the rollout targets those",
        bench.settings.server
    ));
}

/// Starts the rollout and polls it; the time until completed with every
/// agent counted (`None` if it failed, paused or ran past `deadline`) and
/// the last status.
async fn run_rollout(
    bench: &Bench<'_>,
    name: &str,
    connected: usize,
    go: Instant,
    deadline: tokio::time::Instant,
) -> Result<(Option<Duration>, RolloutStatus)> {
    let client = bench.client;
    let path = format!("/api/v1/configurations/{}/rollout", enc(name));
    let request = RolloutRequest {
        version: None,
        batch_size: None,
        max_failures: None,
        ..Default::default()
    };
    let (_, mut status): (_, RolloutStatus) =
        client.send_json(Method::POST, &path, &request).await?;
    if status.total as usize != connected {
        output::warn(format!(
            "the rollout targets {} agents, {connected} simulated agents are connected",
            status.total
        ));
    }
    loop {
        // With several replicas the one asked may count the last agents (or
        // their APPLIED) a moment after the replica driving the rollout
        // completed it: done when it counts every connected agent applied.
        if status.state == "completed" && status.applied >= connected as u64 {
            return Ok::<_, CtlError>((Some(go.elapsed()), status));
        }
        if matches!(status.state.as_str(), "failed" | "paused") {
            return Ok((None, status));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok((None, status));
        }
        tokio::time::sleep(ROLLOUT_POLL).await;
        status = client.get(&path).await?;
    }
}

/// reconnect: `go`, the restart (--restart-cmd, or the operator's), and
/// /health/live probed until every worker's agents are back or --duration.
pub async fn reconnect(
    bench: &Bench<'_>,
    workers: &mut [Handle],
    report: &mut BenchReport,
) -> Measured {
    let args = bench.args;
    send_all(workers, Command::Go);
    let go = Instant::now();
    match &args.restart_cmd {
        Some(command) => output::info(bench.settings, format!("restarting opampd: {command}")),
        None => output::info(
            bench.settings,
            format!(
                "waiting up to {:.0}s for opampd to restart: restart it now (e.g. `opampctl restart`)",
                args.duration.as_secs_f64()
            ),
        ),
    }
    let deadline = tokio::time::Instant::now() + args.duration;
    let (stop_tx, stop_rx) = watch::channel(false);
    let live_url = format!("{}/health/live", bench.settings.server);
    let waiter = async {
        let all = wait_done(workers, deadline).await;
        let _ = stop_tx.send(true);
        all
    };
    let restart = async {
        match &args.restart_cmd {
            Some(command) => run_restart(command).await,
            None => Ok(()),
        }
    };
    let (all_back, live, restarted) = tokio::join!(waiter, probe_live(live_url, stop_rx), restart);
    let mut measured = Measured {
        duration: go.elapsed(),
        all_back,
        ..Default::default()
    };
    if let Err(e) = restarted {
        measured.errors.push(e);
    }
    report.live_max_ms = live.max_ms.map(r3);
    report.live_probes = Some(live.answered + live.unanswered);
    report.live_failures = Some(live.unanswered);
    measured
}

/// What the /health/live probes saw.
struct LiveProbes {
    /// The slowest answered probe.
    max_ms: Option<f64>,
    answered: u64,
    unanswered: u64,
}

/// Probes `url` every [`LIVE_EVERY`] until `stop`.
async fn probe_live(url: String, mut stop: watch::Receiver<bool>) -> LiveProbes {
    let mut probes = LiveProbes {
        max_ms: None,
        answered: 0,
        unanswered: 0,
    };
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return probes;
    };
    let mut tick = tokio::time::interval(LIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
        let started = Instant::now();
        match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => {
                let _ = response.bytes().await;
                let took = ms(started.elapsed());
                probes.max_ms = Some(probes.max_ms.map_or(took, |max| max.max(took)));
                probes.answered += 1;
            }
            _ => probes.unanswered += 1,
        }
    }
    probes
}

/// Runs `sh -c command` with its output on our stderr; Err with what went wrong.
async fn run_restart(command: &str) -> std::result::Result<(), String> {
    use std::os::fd::AsFd;
    let err_out = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null());
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
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
