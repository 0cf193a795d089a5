//! Soak: many simulated agents connect, heartbeat, reconnect and receive
//! configurations for a while as the API is queried. Zero errors, memory that
//! stops growing after warm-up, and no leaked file descriptors.
//!
//! CI size: 600 agents for 75 s. Bigger by environment:
//! `OPAMP_SOAK_AGENTS=5000 OPAMP_SOAK_SECONDS=600 cargo test -p opamp-tests --test soak`.

use futures_util::{SinkExt, StreamExt};
use opamp_proto::{frame, pb};
use opamp_tests::client::*;
use opamp_tests::{wait_for, Server};
use prost::Message as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

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
}

/// One agent: heartbeats every second, applies every config it is offered,
/// and reconnects now and then (with the next sequence number).
async fn agent(url: String, i: usize, until: Instant, c: Arc<Counters>) {
    let uid = new_uid();
    let mut seq = 0u64;
    let mut first = true;
    while Instant::now() < until {
        let Ok(mut ws) = ws_connect(&url, &[]).await else {
            c.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let hello = if first {
            full_report(uid, seq, &format!("soak-{i}"))
        } else {
            heartbeat(uid, seq)
        };
        first = false;
        if ws
            .send(Message::Binary(frame::encode_message(&hello).into()))
            .await
            .is_err()
        {
            c.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Stay on this connection for 10-30 s, then reconnect.
        let stay = Instant::now() + Duration::from_secs(10 + (i as u64 * 7) % 20);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Binary(b))) => {
                        let Ok(reply) = frame::decode(&b).map_err(|_| ()).and_then(|p| pb::ServerToAgent::decode(p).map_err(|_| ())) else {
                            c.errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        };
                        if reply.error_response.is_some() || reply.instance_uid != uid.to_vec() {
                            c.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        c.replies.fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                        let next = if reply.flags & 1 == 1 {
                            full_report(uid, seq, &format!("soak-{i}"))
                        } else if let Some(rc) = reply.remote_config {
                            c.configs.fetch_add(1, Ordering::Relaxed);
                            applied(uid, seq, &rc.config_hash, pb::RemoteConfigStatuses::Applied, "")
                        } else {
                            continue;
                        };
                        if ws.send(Message::Binary(frame::encode_message(&next).into())).await.is_err() {
                            c.errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => { c.errors.fetch_add(1, Ordering::Relaxed); break; }
                },
                _ = tick.tick() => {
                    if Instant::now() > stay || Instant::now() > until {
                        seq += 1;
                        let mut bye = heartbeat(uid, seq);
                        bye.agent_disconnect = Some(pb::AgentDisconnect {});
                        let _ = ws.send(Message::Binary(frame::encode_message(&bye).into())).await;
                        let _ = ws.close(None).await;
                        c.reconnects.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    seq += 1;
                    if ws.send(Message::Binary(frame::encode_message(&heartbeat(uid, seq)).into())).await.is_err() {
                        c.errors.fetch_add(1, Ordering::Relaxed);
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
    assert_eq!(c.errors.load(Ordering::Relaxed), 0, "agent-side errors");
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
