//! The parent's side of the workers: starting them (a task of this process,
//! or child processes re-executing this binary), the events and orders
//! between them, waiting for `ready` and `done`, and collecting results.

use super::plan::Plan;
use super::worker::{worker, WorkerResult};
use crate::error::{CtlError, Result};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Environment variable that makes a bench process worker `K/P/RUN`.
pub const WORKER_ENV: &str = "OPAMPCTL_BENCH_WORKER";

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Ready { connected: usize, failed: usize },
    Done,
    Result(Box<WorkerResult>),
}

/// Parent → worker.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    Go,
    Stop,
}

/// A worker as the parent sees it.
pub struct Handle {
    index: usize,
    events: mpsc::UnboundedReceiver<Event>,
    commands: mpsc::UnboundedSender<Command>,
    child: Option<tokio::process::Child>,
    ready: Option<(usize, usize)>,
    done: bool,
    result: Option<WorkerResult>,
}

impl Handle {
    fn new(
        index: usize,
        events: mpsc::UnboundedReceiver<Event>,
        commands: mpsc::UnboundedSender<Command>,
        child: Option<tokio::process::Child>,
    ) -> Handle {
        Handle {
            index,
            events,
            commands,
            child,
            ready: None,
            done: false,
            result: None,
        }
    }

    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }
}

/// Sends `command` to every worker.
pub fn send_all(handles: &[Handle], command: Command) {
    for handle in handles {
        handle.send(command);
    }
}

/// The one worker as a task of this process.
pub fn spawn_local(plan: Plan) -> Handle {
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    tokio::spawn(worker(plan, event_tx, command_rx));
    Handle::new(0, event_rx, command_tx, None)
}

/// Re-executes this binary with the same arguments as worker `index` of `count`.
pub fn spawn_child(index: usize, count: usize, run_id: &str) -> Result<Handle> {
    let exe = std::env::current_exe().map_err(|e| {
        CtlError::failed(format!(
            "cannot find the opampctl binary to start workers: {e}"
        ))
    })?;
    let mut child = tokio::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(WORKER_ENV, format!("{index}/{count}/{run_id}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CtlError::failed(format!("cannot start worker {index}: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| CtlError::failed("worker without stdout"))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| CtlError::failed("worker without stdin"))?;
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let (command_tx, mut command_rx) = mpsc::unbounded_channel::<Command>();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => {
                    if event_tx.send(event).is_err() {
                        break;
                    }
                }
                Err(_) => eprintln!("worker {index}: {line}"),
            }
        }
    });
    tokio::spawn(async move {
        while let Some(command) = command_rx.recv().await {
            let word: &[u8] = match command {
                Command::Go => b"go\n",
                Command::Stop => b"stop\n",
            };
            if stdin.write_all(word).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    Ok(Handle::new(index, event_rx, command_tx, Some(child)))
}

/// Waits for every worker's `ready`; returns (connected, failed).
pub async fn wait_ready(handles: &mut [Handle]) -> (usize, usize) {
    let (mut connected, mut failed) = (0, 0);
    for handle in handles.iter_mut() {
        while handle.ready.is_none() {
            match handle.events.recv().await {
                Some(Event::Ready { connected, failed }) => {
                    handle.ready = Some((connected, failed))
                }
                Some(Event::Done) => handle.done = true,
                Some(Event::Result(result)) => {
                    handle.ready = Some((result.connected, result.agents - result.connected));
                    handle.result = Some(*result);
                }
                None => handle.ready = Some((0, 0)),
            }
        }
        let (worker_connected, worker_failed) = handle.ready.unwrap_or_default();
        connected += worker_connected;
        failed += worker_failed;
    }
    (connected, failed)
}

/// Waits for every worker's `done` until `deadline`; true if all said it.
pub async fn wait_done(handles: &mut [Handle], deadline: tokio::time::Instant) -> bool {
    for handle in handles.iter_mut() {
        while !handle.done && handle.result.is_none() {
            match tokio::time::timeout_at(deadline, handle.events.recv()).await {
                Err(_) => return false,
                Ok(Some(Event::Done)) => handle.done = true,
                Ok(Some(Event::Result(result))) => handle.result = Some(*result),
                Ok(Some(Event::Ready { .. })) => {}
                Ok(None) => return false,
            }
        }
    }
    handles.iter().all(|handle| handle.done)
}

/// Stops every worker and collects the results (a lost worker counts all
/// its agents as errors).
pub async fn collect(
    handles: &mut [Handle],
    per_worker: &[usize],
    teardown: Duration,
) -> Vec<WorkerResult> {
    send_all(handles, Command::Stop);
    let deadline = tokio::time::Instant::now() + teardown;
    let mut results = Vec::new();
    for handle in handles.iter_mut() {
        while handle.result.is_none() {
            match tokio::time::timeout_at(deadline, handle.events.recv()).await {
                Ok(Some(Event::Result(result))) => handle.result = Some(*result),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let result = handle.result.take().unwrap_or_else(|| {
            let agents = per_worker.get(handle.index).copied().unwrap_or(0);
            let mut lost = WorkerResult {
                agents,
                ..Default::default()
            };
            lost.error(
                format!("worker {} ended without a result", handle.index),
                agents.max(1) as u64,
            );
            lost
        });
        results.push(result);
        if let Some(child) = handle.child.as_mut() {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
            }
        }
    }
    results
}

/// Parses `K/P/RUN`: worker K of P in run RUN.
pub fn parse_worker(spec: &str) -> Option<(usize, usize, String)> {
    let mut parts = spec.splitn(3, '/');
    let index = parts.next()?.parse().ok()?;
    let count = parts.next()?.parse().ok()?;
    let run = parts.next()?.to_string();
    (index < count && !run.is_empty()).then_some((index, count, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_json_lines() {
        let line = serde_json::to_string(&Event::Ready {
            connected: 3,
            failed: 1,
        })
        .unwrap();
        assert_eq!(line, r#"{"event":"ready","connected":3,"failed":1}"#);
        let result = WorkerResult {
            agents: 2,
            messages: 7,
            ..Default::default()
        };
        let line = serde_json::to_string(&Event::Result(Box::new(result))).unwrap();
        match serde_json::from_str::<Event>(&line).unwrap() {
            Event::Result(result) => assert_eq!((result.agents, result.messages), (2, 7)),
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
}
