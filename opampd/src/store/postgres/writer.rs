//! The batching writer of agent state: sessions queue patches and events;
//! one task takes whatever is queued, coalesces patches per agent and
//! commits the batch in one transaction, like the SQLite writer. Operator
//! writes do not queue here: each is one transaction of its own.

use super::agents;
use crate::metrics::Metrics;
use crate::store::agents::{AgentEvent, AgentPatch};
use crate::store::queue::{AgentChanges, Queue, MAX_BATCH_OPS};
use crate::store::Room;
use deadpool_postgres::Pool;
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

/// How long shutdown waits for the last commit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

pub struct Writer {
    tx: Mutex<Option<mpsc::UnboundedSender<Op>>>,
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    queue: Arc<Queue>,
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
        let queue = Queue::new(max_queued);
        let task_queue = queue.clone();
        tokio::spawn(async move {
            run(pool, rx, flush_interval, task_queue, metrics).await;
            let _ = done_tx.send(());
        });
        Writer {
            tx: Mutex::new(Some(tx)),
            done: Mutex::new(Some(done_rx)),
            queue,
        }
    }

    fn send(&self, op: Op) -> bool {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(tx) => self.queue.push(|| tx.send(op).is_ok()),
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
        self.queue.queued()
    }

    pub fn has_room(&self) -> bool {
        self.queue.has_room()
    }

    /// Room for `ops` operations, waiting up to `limit` while the queue is
    /// full ([`Queue::reserve`]).
    pub async fn reserve(&self, ops: u64, limit: Duration) -> Option<Room> {
        self.queue.reserve(ops, limit).await
    }

    pub fn last_error(&self) -> Option<String> {
        self.queue.last_error()
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
    changes: AgentChanges,
    flushes: Vec<oneshot::Sender<bool>>,
    ops: u64,
}

impl Batch {
    fn add(&mut self, op: Op) {
        self.ops += 1;
        match op {
            Op::Agent(p) => self.changes.patch(*p),
            Op::Event(e) => self.changes.event(e),
            Op::Flush(tx) => self.flushes.push(tx),
        }
    }
}

async fn run(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<Op>,
    flush_interval: Duration,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
) {
    // What failed to commit is retried with the next batch.
    let mut carry = AgentChanges::default();
    let mut open = true;
    while open || !carry.is_empty() {
        let mut batch = Batch::default();
        let pending = !carry.is_empty();
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
        queue.taken(batch.ops);
        batch.changes.after(std::mem::take(&mut carry));
        let start = Instant::now();
        let result = commit(&pool, &batch.changes).await;
        metrics.db_query("commit", start.elapsed());
        carry = queue.settle(
            result.map_err(|e| format!("{e:#}")),
            batch.changes,
            batch.flushes,
            |_| {},
        );
    }
}

async fn commit(pool: &Pool, changes: &AgentChanges) -> anyhow::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Rows in uid order: two replicas' batches never wait on each other in a cycle.
    let mut patches: Vec<&AgentPatch> = changes.patches.values().collect();
    patches.sort_by(|a, b| a.uid.cmp(&b.uid));
    agents::apply_patches(&tx, patches.into_iter()).await?;
    agents::insert_events(&tx, &changes.events).await?;
    tx.commit().await?;
    Ok(())
}
