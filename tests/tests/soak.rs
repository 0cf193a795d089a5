//! Soak: many simulated agents connect, heartbeat, reconnect and receive
//! configurations for a while as the API is queried. Zero errors, memory that
//! stops growing after warm-up, and no leaked file descriptors.
//!
//! CI size: 600 agents for 75 s. Bigger by environment:
//! `OPAMP_SOAK_AGENTS=5000 OPAMP_SOAK_SECONDS=600 cargo test -p opamp-tests --test soak`.

use opamp_agent::agent::{Agent, AgentSettings, Event};
use opamp_agent::{message, ws};
use opamp_tests::client::*;
use opamp_tests::{wait_for, Server};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[derive(Default)]
struct Counters {
    errors: AtomicU64,
    replies: AtomicU64,
    configs: AtomicU64,
    reconnects: AtomicU64,
    /// What the first agent-side errors were, for the failure message.
    first_errors: Mutex<Vec<String>>,
}

impl Counters {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < 10 {
            first.push(what);
        }
    }
}

/// One agent: heartbeats every second, applies every config it is offered,
/// and reconnects now and then (going on with its sequence numbers).
async fn agent(url: String, i: usize, until: Instant, c: Arc<Counters>) {
    let mut agent = Agent::new(
        AgentSettings::new(new_uid())
            .identifying("service.name", &format!("soak-{i}"))
            .identifying("service.version", "1.0.0")
            .non_identifying("host.name", "test-host")
            .non_identifying("os.type", "linux")
            .effective_config(message::effective_yaml("receivers: {}")),
    );
    let options = ws::WsOptions::default();
    let mut first = true;
    while Instant::now() < until {
        let mut socket = match ws::connect(&url, &options).await {
            Ok(socket) => socket,
            Err(e) => {
                c.error(format!("agent {i}: connect: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let hello = if first {
            agent.full_report()
        } else {
            agent.heartbeat()
        };
        first = false;
        if let Err(e) = ws::send(&mut socket, &hello).await {
            c.error(format!("agent {i}: first message: {e}"));
            continue;
        }
        // Stay on this connection for 10-30 s, then reconnect.
        let stay = Instant::now() + Duration::from_secs(10 + (i as u64 * 7) % 20);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        'connection: loop {
            // `ws::recv` only awaits the next WebSocket message: when the
            // tick wins, dropping it loses nothing.
            tokio::select! {
                received = ws::recv(&mut socket) => {
                    let reply = match received {
                        Ok(reply) => reply,
                        Err(e) => {
                            c.error(format!("agent {i}: receive: {e}"));
                            break;
                        }
                    };
                    if let Some(error) = &reply.error_response {
                        c.error(format!("agent {i}: server error: {}", error.error_message));
                    } else if reply.instance_uid != agent.uid() {
                        c.error(format!("agent {i}: a reply for another instance uid"));
                    }
                    c.replies.fetch_add(1, Ordering::Relaxed);
                    let reaction = agent.handle(&reply);
                    let applied = reaction
                        .events
                        .iter()
                        .filter(|e| matches!(e, Event::ConfigApplied { .. }))
                        .count();
                    c.configs.fetch_add(applied as u64, Ordering::Relaxed);
                    for next in &reaction.messages {
                        if let Err(e) = ws::send(&mut socket, next).await {
                            c.error(format!("agent {i}: answer: {e}"));
                            break 'connection;
                        }
                    }
                }
                _ = tick.tick() => {
                    if Instant::now() > stay || Instant::now() > until {
                        let _ = ws::send(&mut socket, &agent.disconnect()).await;
                        ws::close(&mut socket).await;
                        c.reconnects.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    if let Err(e) = ws::send(&mut socket, &agent.heartbeat()).await {
                        c.error(format!("agent {i}: heartbeat: {e}"));
                        break;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_many_agents_without_errors_growth_or_leaks() {
    let agents = env_num("OPAMP_SOAK_AGENTS", 600) as usize;
    let seconds = env_num("OPAMP_SOAK_SECONDS", 75);
    let s = Server::start();
    let pid = s.pid();
    let fds_before = open_fds(pid);
    let counters = Arc::new(Counters::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..agents {
        tasks.push(tokio::spawn(agent(s.ws_url(), i, until, counters.clone())));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A configuration, re-saved and rolled out every 15 s; the API queried all along.
    let mut api_errors = 0u64;
    let mut rss = Vec::new();
    let mut version = 0;
    let started = Instant::now();
    while Instant::now() < until {
        if started.elapsed().as_secs() >= version * 15 {
            version += 1;
            let body = format!("receivers:\n  otlp: {{}}\n# soak version {version}\n");
            let (c1, b1) = s
                .send_json("POST", "/api/v1/configurations", serde_json::json!({"name": "soak", "body": body, "selector": "service.version=1.0.0"}))
                .await;
            let (c2, b2) = s
                .send_json(
                    "POST",
                    "/api/v1/configurations/soak/rollout",
                    serde_json::json!({}),
                )
                .await;
            assert!(c1 < 300 && c2 == 202, "{c1} {b1} {c2} {b2}");
        }
        for path in [
            "/api/v1/agents?limit=100",
            "/api/v1/agents?status=connected&limit=10",
            "/api/v1/configurations/soak/rollout",
        ] {
            let (code, _) = s.get(path).await;
            if code != 200 {
                api_errors += 1;
            }
        }
        let health: serde_json::Value = reqwest::get(format!("{}/health", s.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["status"] != "ok" {
            api_errors += 1;
        }
        rss.push((started.elapsed().as_secs(), proc_status(pid, "VmRSS:")));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = &counters;
    eprintln!(
        "soak: {agents} agents, {seconds} s: {} replies, {} configs applied, {} reconnects, rss samples (s, KiB): {:?}",
        c.replies.load(Ordering::Relaxed),
        c.configs.load(Ordering::Relaxed),
        c.reconnects.load(Ordering::Relaxed),
        rss.iter().step_by(10).collect::<Vec<_>>()
    );
    assert_eq!(
        c.errors.load(Ordering::Relaxed),
        0,
        "agent-side errors, the first: {:#?}",
        c.first_errors.lock().unwrap()
    );
    assert_eq!(api_errors, 0, "API errors");
    assert!(
        c.reconnects.load(Ordering::Relaxed) >= agents as u64,
        "every agent reconnected at least once"
    );
    assert!(
        c.configs.load(Ordering::Relaxed) >= agents as u64,
        "configurations were delivered"
    );
    // Memory: after warm-up (first third), the peak stays within 25 % (+8 MiB) of the warm level.
    let warm_at = seconds / 3;
    let warm = rss
        .iter()
        .filter(|(t, _)| *t >= warm_at)
        .map(|(_, r)| *r)
        .next()
        .unwrap();
    let peak_after = rss
        .iter()
        .filter(|(t, _)| *t >= warm_at)
        .map(|(_, r)| *r)
        .max()
        .unwrap();
    assert!(
        peak_after <= warm + warm / 4 + 8 * 1024,
        "RSS kept growing: warm {warm} KiB, later peak {peak_after} KiB ({rss:?})"
    );
    // File descriptors: every connection closed, nothing leaked.
    wait_for(
        "fds back to the baseline",
        Duration::from_secs(30),
        || async { (open_fds(pid) <= fds_before + 8).then_some(()) },
    )
    .await;
}
