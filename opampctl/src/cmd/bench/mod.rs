//! `opampctl bench MODE`: simulated agents against a running opampd, and what
//! the server spends on them, for sizing a deployment.
//!
//! A parent coordinates one or more workers: a task of this process, or with
//! `--processes P` children re-executing this binary with the same arguments
//! and `OPAMPCTL_BENCH_WORKER=K/P/RUN` in their environment (not a flag, so
//! it stays out of the help, the man page and the completions). Every worker
//! connects its share of the agents and says `ready`; on `go` it runs the
//! measured phase (rollout and reconnect workers say `done` when their agents
//! got there); on `stop` it says goodbye for its agents and sends its result.
//! Between processes these are JSON lines on the child's stdout and words on
//! its stdin. Only the parent reads the server's /proc entries and calls the
//! REST API, so its measurements cover every worker.
//!
//! The simulated agents are ordinary OpAMP clients: 16-byte uids derived from
//! the run id and the agent's index, the `0x00` WebSocket header, one
//! outstanding message per agent.
//!
//! Layout: this file is the entry point and the parent's steps; `plan` (the
//! flags, each worker's share), `coordinator` (starting workers, events and
//! orders, collecting), `worker` (one worker's agents through the phases),
//! `agent` (one simulated agent's messages and behaviour per mode),
//! `compare` (one load against two servers, in child processes),
//! `transport` (WebSocket and plain-HTTP pool), `measure` (the parent's
//! measured phase per mode), `report` (samples, percentiles, the report and
//! its table).

mod agent;
mod compare;
mod coordinator;
mod measure;
mod plan;
mod report;
mod transport;
mod worker;

pub use report::BenchReport;

use crate::cli::{BenchArgs, BenchMode};
use crate::client::{enc, Client};
use crate::context::Settings;
use crate::error::{CtlError, Exit, Result};
use crate::output;
use crate::procfs;
use coordinator::{
    collect, parse_worker, spawn_child, spawn_local, wait_ready, Handle, WORKER_ENV,
};
use futures_util::StreamExt;
use measure::Servers;
use plan::{
    bench_uid, new_run_id, plan_for, share, transport_of, validate, warn_limits, Plan, Transport,
};
use reqwest::Method;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `opampctl bench MODE` (or, with `OPAMPCTL_BENCH_WORKER` set, one worker process of it).
pub async fn run(settings: &Settings, client: &Client, args: &BenchArgs) -> Result<()> {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        let (index, count, run_id) = parse_worker(&spec)
            .ok_or_else(|| CtlError::usage(format!("{WORKER_ENV}={spec}: expected K/P/RUN")))?;
        let plan = plan_for(settings, args, index, count, &run_id).await?;
        return worker::worker_process(plan).await;
    }
    if args.mode == BenchMode::Compare {
        return compare::run(settings, args).await;
    }
    let bench = Bench::prepare(settings, client, args).await?;
    let plans = bench.plans().await?;
    let mut servers = Servers::new(bench.server_pids.clone());
    bench.announce();
    let mut workers = bench.start_workers(plans).await?;
    let connected = bench.connect(&mut workers).await;
    servers.read_connected();
    let balanced = match settings.servers.len() {
        replicas if replicas > 1 && !bench.direct() => Some(bench.replica_connections().await),
        _ => None,
    };
    let mut report = bench.new_report();
    let measured = match args.mode {
        BenchMode::Hold | BenchMode::Status | BenchMode::Http => {
            measure::steady(&bench, &mut workers, &mut servers).await
        }
        BenchMode::Rollout => {
            match measure::rollout(&bench, &mut workers, connected, &mut report, &mut servers).await
            {
                Ok(measured) => measured,
                Err(e) => {
                    if !args.keep {
                        bench.cleanup().await;
                    }
                    return Err(e);
                }
            }
        }
        BenchMode::Reconnect => measure::reconnect(&bench, &mut workers, &mut report).await,
        BenchMode::Compare => unreachable!("bench compare runs its loads in child processes"),
    };
    servers.read_end();
    output::info(settings, "stopping the agents");
    let teardown = args.duration + settings.timeout + Duration::from_secs(30);
    let results = collect(&mut workers, &bench.per_worker, teardown).await;
    report.add_results(args, bench.transport, &results, &measured, &servers);
    if settings.servers.len() > 1 {
        report.add_replicas(
            args,
            &settings.servers,
            balanced.as_deref(),
            &results,
            &measured,
            &servers,
        );
    }
    if args.mode == BenchMode::Rollout {
        bench.delete_configuration().await;
    }
    if !args.keep {
        bench.cleanup().await;
    }
    bench.show(&report)?;
    exit_status(settings, &report)
}

/// One run as the parent sees it: the flags and what was decided from them.
struct Bench<'a> {
    settings: &'a Settings,
    client: &'a Client,
    args: &'a BenchArgs,
    transport: Transport,
    run_id: String,
    /// The server processes to measure, one per --server (none in reconnect mode).
    server_pids: Vec<u32>,
    /// Agents per worker.
    per_worker: Vec<usize>,
}

impl<'a> Bench<'a> {
    /// Checks the flags and the server, raises the open-file limit, warns
    /// about limits the run will hit, and names the run.
    async fn prepare(
        settings: &'a Settings,
        client: &'a Client,
        args: &'a BenchArgs,
    ) -> Result<Bench<'a>> {
        validate(settings, args)?;
        if args.opamp_url.is_none() {
            // Fail fast (exit 3) rather than with thousands of refused agents.
            for server in &settings.servers {
                let replica = Settings {
                    server: server.clone(),
                    ..settings.clone()
                };
                let replica_client = Client::new(&replica)?;
                replica_client
                    .send_any(replica_client.request(Method::GET, "/health/live"))
                    .await?;
            }
        }
        let transport = transport_of(args.mode, args.transport)?;
        let nofile = procfs::raise_nofile();
        warn_limits(args, transport, nofile);
        let server_pids = if args.mode == BenchMode::Reconnect {
            if !args.server_pid.is_empty() {
                output::warn("--server-pid is not used by bench reconnect: the restart gives the server a new process");
            }
            Vec::new()
        } else {
            args.server_pid.clone()
        };
        let count = args.processes;
        Ok(Bench {
            settings,
            client,
            args,
            transport,
            run_id: new_run_id(),
            server_pids,
            per_worker: (0..count)
                .map(|index| share(args.agents, index, count).len())
                .collect(),
        })
    }

    /// Every worker's plan.
    async fn plans(&self) -> Result<Vec<Plan>> {
        let count = self.args.processes;
        let mut plans = Vec::with_capacity(count);
        for index in 0..count {
            plans.push(plan_for(self.settings, self.args, index, count, &self.run_id).await?);
        }
        Ok(plans)
    }

    /// Whether the agents connect to the replicas themselves (round-robin),
    /// not through one --opamp-url such as a balancer.
    fn direct(&self) -> bool {
        self.args.opamp_url.is_none()
    }

    /// Through a balancer: each replica's open WebSocket connections, from
    /// its /metrics (`None` for a replica that does not say).
    async fn replica_connections(&self) -> Vec<Option<usize>> {
        let mut connections = Vec::new();
        for server in &self.settings.servers {
            connections.push(websocket_connections(self.settings, server).await);
        }
        connections
    }

    fn configuration_name(&self) -> String {
        format!("bench-{}", self.run_id)
    }

    fn announce(&self) {
        output::info(
            self.settings,
            format!(
                "bench {}: connecting {} {} agents at {}/s{} (run {})",
                self.args.mode.as_str(),
                self.args.agents,
                self.transport.as_str(),
                self.args.ramp,
                match self.settings.servers.len() {
                    1 => String::new(),
                    replicas if self.direct() => format!(", spread over {replicas} replicas"),
                    replicas => format!(
                        " through {} to {replicas} replicas",
                        self.args.opamp_url.as_deref().unwrap_or_default()
                    ),
                },
                self.run_id
            ),
        );
    }

    /// One local worker, or `--processes` child processes (those started are
    /// stopped again when one cannot be).
    async fn start_workers(&self, plans: Vec<Plan>) -> Result<Vec<Handle>> {
        let count = self.args.processes;
        if count == 1 {
            return Ok(plans.into_iter().map(spawn_local).collect());
        }
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            match spawn_child(index, count, &self.run_id) {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    collect(&mut workers, &self.per_worker, Duration::from_secs(30)).await;
                    return Err(e);
                }
            }
        }
        Ok(workers)
    }

    /// Waits for every worker's agents to connect (or fail); the number connected.
    async fn connect(&self, workers: &mut [Handle]) -> usize {
        let setup = Instant::now();
        let (connected, failed) = wait_ready(workers).await;
        output::info(
            self.settings,
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
        connected
    }

    fn new_report(&self) -> BenchReport {
        BenchReport {
            mode: self.args.mode.as_str(),
            transport: self.transport.as_str(),
            run_id: self.run_id.clone(),
            agents: self.args.agents,
            processes: self.args.processes,
            server_pid: match self.server_pids.as_slice() {
                [pid] => Some(*pid),
                _ => None,
            },
            ..Default::default()
        }
    }

    /// rollout: deletes the run's configuration (a warning if it cannot).
    async fn delete_configuration(&self) {
        let name = self.configuration_name();
        let deleted = self
            .client
            .call(
                Method::DELETE,
                &format!("/api/v1/configurations/{}?force=true", enc(&name)),
            )
            .await;
        if let Err(e) = deleted {
            output::warn(format!("could not delete {name}: {}", e.message));
        }
    }

    /// The report (unless quiet), and a hint when the server was not measured.
    fn show(&self, report: &BenchReport) -> Result<()> {
        if self.settings.quiet {
            return Ok(());
        }
        output::show(self.settings, report, |_| {
            report::table(self.settings, report)
        })?;
        let mode = self.args.mode;
        if self.server_pids.is_empty()
            && self.settings.human()
            && mode != BenchMode::Reconnect
            && mode != BenchMode::Rollout
        {
            output::info(
                self.settings,
                "note: pass --server-pid PID (opampd on this host) to measure the server's memory and CPU",
            );
        }
        Ok(())
    }
}

/// The `opamp_platform_websocket_connections` gauge of `server`'s /metrics.
async fn websocket_connections(settings: &Settings, server: &str) -> Option<usize> {
    let replica = Settings {
        server: server.to_string(),
        ..settings.clone()
    };
    let client = Client::new(&replica).ok()?;
    let response = client
        .send_any(client.request(Method::GET, "/metrics"))
        .await
        .ok()?;
    let text = response.text().await.ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("opamp_platform_websocket_connections "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as usize)
}

/// Exit 1 when the run had errors (with the first error sample when quiet).
fn exit_status(settings: &Settings, report: &BenchReport) -> Result<()> {
    if report.errors == 0 {
        return Ok(());
    }
    Err(if settings.quiet {
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
    })
}

impl Bench<'_> {
    /// Deletes the run's agents from the inventory: each through the replica
    /// it was connected to (which stored its goodbye), or all through the
    /// first --server when they went through one --opamp-url.
    async fn cleanup(&self) {
        let mut clients = Vec::new();
        if self.direct() && self.settings.servers.len() > 1 {
            for server in &self.settings.servers {
                let replica = Settings {
                    server: server.clone(),
                    ..self.settings.clone()
                };
                match Client::new(&replica) {
                    Ok(client) => clients.push(client),
                    Err(_) => {
                        clients.clear();
                        break;
                    }
                }
            }
        }
        let clients: Vec<&Client> = if clients.is_empty() {
            vec![self.client]
        } else {
            clients.iter().collect()
        };
        cleanup(self.settings, &clients, &self.run_id, self.args.agents).await;
    }
}

/// Deletes the run's agents from the inventory (they are disconnected by
/// now; agent `idx` through `clients[idx % clients.len()]`), or says how to
/// when there is no token to do it with. With several replicas a second
/// pass a second later deletes the agents whose goodbye a replica stored
/// after the first delete.
async fn cleanup(settings: &Settings, clients: &[&Client], run_id: &str, agents: usize) {
    if !clients[0].has_token() {
        output::warn(format!(
            "the {agents} simulated agents stay in the inventory: deleting them needs an operator token (--token, --token-file or OPAMPCTL_TOKEN); delete them later with `opampctl agents delete -l bench.run={run_id} --force --yes`"
        ));
        return;
    }
    let (deleted, mut failures) = delete_agents(clients, run_id, agents).await;
    if settings.servers.len() > 1 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (again, still) = delete_agents(clients, run_id, agents).await;
        failures = still;
        if again > 0 {
            output::info(
                settings,
                format!("deleted {again} simulated agents a second time (a replica stored their goodbye after the first delete)"),
            );
        }
    }
    if failures > 0 {
        output::warn(format!(
            "{failures} simulated agents could not be deleted: `opampctl agents delete -l bench.run={run_id} --force --yes` retries"
        ));
    }
    output::info(
        settings,
        format!("deleted {deleted} simulated agents from the inventory"),
    );
}

/// One pass of deletes over the run's agents: (deleted, failed).
async fn delete_agents(clients: &[&Client], run_id: &str, agents: usize) -> (usize, usize) {
    let deleted = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    futures_util::stream::iter(0..agents)
        .for_each_concurrent(16, |idx| {
            let uid = opamp_proto::uid_string(&bench_uid(run_id, idx));
            let client = clients[idx % clients.len()];
            let (deleted, failures) = (&deleted, &failures);
            async move {
                let request =
                    client.request(Method::DELETE, &format!("/api/v1/agents/{uid}?force=true"));
                match client.send_any(request).await {
                    Ok(response) if response.status().is_success() => {
                        deleted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    (deleted.into_inner(), failures.into_inner())
}
