//! The batching writer of agent state: sessions queue patches and events;
//! one task takes whatever is queued, coalesces patches per agent and
//! commits the batch in one transaction, like the SQLite writer. Operator
//! writes do not queue here: each is one transaction of its own.

use super::agents;
use crate::metrics::Metrics;
use crate::store::agents::{AgentEvent, AgentPatch};
use crate::store::Room;
use deadpool_postgres::Pool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

enum Op {
    /// Boxed: a patch is several times larger than the other operations.
    Agent(Box<AgentPatch>),
    Event(AgentEvent),
    /// Answered with whether everything queued before it is committed.
    Flush(oneshot::Sender<bool>),
}

/// Operations past which a batch is committed without waiting.
const MAX_BATCH_OPS: u64 = 20_000;
/// How long shutdown waits for the last commit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

pub struct Writer {
    tx: Mutex<Option<mpsc::UnboundedSender<Op>>>,
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    shared: Arc<Shared>,
}

struct Shared {
    queued: AtomicU64,
    max_queued: u64,
    room: tokio::sync::Notify,
    last_error: Mutex<Option<String>>,
}

/// Releases reserved room when dropped.
struct Reservation {
    shared: Arc<Shared>,
    ops: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared.queued.fetch_sub(self.ops, Ordering::Relaxed);
        self.shared.room.notify_waiters();
    }
}

impl Writer {
    pub fn start(
        pool: Pool,
        flush_interval: Duration,
        max_queued: u64,
        metrics: Arc<Metrics>,
    ) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            queued: AtomicU64::new(0),
            max_queued: max_queued.max(1),
            room: tokio::sync::Notify::new(),
            last_error: Mutex::new(None),
        });
        let task_shared = shared.clone();
        tokio::spawn(async move {
            run(pool, rx, flush_interval, task_shared, metrics).await;
            let _ = done_tx.send(());
        });
        Writer {
            tx: Mutex::new(Some(tx)),
            done: Mutex::new(Some(done_rx)),
            shared,
        }
    }

    fn send(&self, op: Op) -> bool {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(tx) => {
                self.shared.queued.fetch_add(1, Ordering::Relaxed);
                if tx.send(op).is_err() {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    return false;
                }
                true
            }
            None => false,
        }
    }

    pub fn agent(&self, patch: AgentPatch) {
        self.send(Op::Agent(Box::new(patch)));
    }

    pub fn event(&self, event: AgentEvent) {
        self.send(Op::Event(event));
    }

    pub async fn flush(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if !self.send(Op::Flush(tx)) {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    pub fn queued(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    pub fn has_room(&self) -> bool {
        self.queued() < self.shared.max_queued
    }

    /// As the SQLite writer's: room for `ops` operations, waiting up to
    /// `limit` while the queue is full.
    pub async fn reserve(&self, ops: u64, limit: Duration) -> Option<Room> {
        let deadline = tokio::time::Instant::now() + limit;
        let queued = &self.shared.queued;
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut current = queued.load(Ordering::Relaxed);
            while current + ops <= self.shared.max_queued {
                match queued.compare_exchange_weak(
                    current,
                    current + ops,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        return Some(Room::new(Reservation {
                            shared: self.shared.clone(),
                            ops,
                        }))
                    }
                    Err(now) => current = now,
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Commits what is queued and stops the task. Blocking (not on an async worker).
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(done) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = done.recv_timeout(SHUTDOWN_WAIT);
        }
    }
}

#[derive(Default)]
struct Batch {
    patches: HashMap<String, AgentPatch>,
    events: Vec<AgentEvent>,
    flushes: Vec<oneshot::Sender<bool>>,
    ops: u64,
}

impl Batch {
    fn add(&mut self, op: Op) {
        self.ops += 1;
        match op {
            Op::Agent(p) => match self.patches.get_mut(&p.uid) {
                Some(existing) => existing.merge(*p),
                None => {
                    self.patches.insert(p.uid.clone(), *p);
                }
            },
            Op::Event(e) => self.events.push(e),
            Op::Flush(tx) => self.flushes.push(tx),
        }
    }
}

async fn run(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<Op>,
    flush_interval: Duration,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
) {
    // What failed to commit is retried with the next batch.
    let mut carry = Batch::default();
    let mut open = true;
    while open || !carry.patches.is_empty() || !carry.events.is_empty() {
        let mut batch = Batch::default();
        let pending = !carry.patches.is_empty() || !carry.events.is_empty();
        let first = if pending {
            match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                Ok(Some(op)) => Some(op),
                Ok(None) => {
                    open = false;
                    None
                }
                Err(_) => None,
            }
        } else {
            rx.recv().await
        };
        match first {
            Some(op) => batch.add(op),
            None if !pending => break,
            None => {}
        }
        // As the SQLite writer: everything already queued joins the batch; a
        // flush only ends the wait for more (concurrent flushes share a commit).
        let deadline = tokio::time::Instant::now() + flush_interval;
        while open && batch.ops < MAX_BATCH_OPS {
            match rx.try_recv() {
                Ok(op) => batch.add(op),
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                Err(mpsc::error::TryRecvError::Empty) if !batch.flushes.is_empty() => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(op)) => batch.add(op),
                        Ok(None) => open = false,
                        Err(_) => break,
                    }
                }
            }
        }
        shared.queued.fetch_sub(batch.ops, Ordering::Relaxed);
        shared.room.notify_waiters();
        for (uid, mut old) in carry.patches.drain() {
            if let Some(newer) = batch.patches.remove(&uid) {
                old.merge(newer);
            }
            batch.patches.insert(uid, old);
        }
        let mut events = std::mem::take(&mut carry.events);
        events.append(&mut batch.events);
        batch.events = events;
        let start = Instant::now();
        let result = commit(&pool, &batch).await;
        metrics.db_query("commit", start.elapsed());
        let committed = result.is_ok();
        match result {
            Ok(()) => {
                *shared.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!(error = %message, "database commit failed; agent state will be retried");
                *shared.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
                carry.patches = std::mem::take(&mut batch.patches);
                carry.events = std::mem::take(&mut batch.events);
            }
        }
        for flush in batch.flushes {
            let _ = flush.send(committed);
        }
    }
}

async fn commit(pool: &Pool, batch: &Batch) -> anyhow::Result<()> {
    if batch.patches.is_empty() && batch.events.is_empty() {
        return Ok(());
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Rows in uid order: two replicas' batches never wait on each other in a cycle.
    let mut patches: Vec<&AgentPatch> = batch.patches.values().collect();
    patches.sort_by(|a, b| a.uid.cmp(&b.uid));
    agents::apply_patches(&tx, patches.into_iter()).await?;
    agents::insert_events(&tx, &batch.events).await?;
    tx.commit().await?;
    Ok(())
}
