//! The single batching writer.
//!
//! Everything that changes the database goes through here. The thread takes
//! whatever is queued, coalesces agent patches per agent, and commits it all
//! in one transaction. Each generic job runs inside its own savepoint, so one
//! failing job does not undo the others; its caller hears of the result only
//! after the commit, so a reply means durable.

use super::agents;
use crate::metrics::Metrics;
use crate::store::agents::{AgentEvent, AgentPatch};
use crate::store::queue::{AgentChanges, Queue, MAX_BATCH_OPS};
use crate::store::{Room, WriteError};
use rusqlite::Connection;
use std::any::Any;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type JobResult = anyhow::Result<Box<dyn Any + Send>>;
type JobReply = oneshot::Sender<Result<Box<dyn Any + Send>, WriteError>>;
type ExclusiveReply = oneshot::Sender<anyhow::Result<Box<dyn Any + Send>>>;
type Job = Box<dyn FnOnce(&Connection) -> JobResult + Send>;

enum Op {
    /// Boxed: a patch is several times larger than the other operations.
    Agent(Box<AgentPatch>),
    Event(AgentEvent),
    Exec {
        operation: &'static str,
        job: Job,
        reply: JobReply,
    },
    /// Answered with whether everything queued before it is committed.
    Flush(oneshot::Sender<bool>),
    /// Runs outside any transaction, after everything queued before it.
    Exclusive {
        operation: &'static str,
        job: ExclusiveJob,
        reply: ExclusiveReply,
    },
}

type ExclusiveJob = Box<dyn FnOnce(&mut Connection) -> JobResult + Send>;

/// How long an API write waits for room in a full queue before it is refused.
const EXEC_ROOM_WAIT: Duration = Duration::from_secs(10);

pub struct Writer {
    tx: Mutex<Option<Sender<Op>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    queue: Arc<Queue>,
}

impl Writer {
    pub(super) fn start(
        conn: Connection,
        flush_interval: Duration,
        max_queued: u64,
        metrics: Arc<Metrics>,
    ) -> Writer {
        let (tx, rx) = mpsc::channel();
        let queue = Queue::new(max_queued);
        let thread_queue = queue.clone();
        let thread = std::thread::Builder::new()
            .name("opampd-writer".into())
            .spawn(move || run(conn, rx, flush_interval, thread_queue, metrics))
            .expect("spawn writer thread");
        Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
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

    /// Queues an agent state change (coalesced with others for the same agent).
    pub fn agent(&self, patch: AgentPatch) {
        self.send(Op::Agent(Box::new(patch)));
    }

    /// Queues a connection event.
    pub fn event(&self, event: AgentEvent) {
        self.send(Op::Event(event));
    }

    pub async fn exec<T, F>(&self, operation: &'static str, f: F) -> Result<T, WriteError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let room = self
            .reserve(1, EXEC_ROOM_WAIT)
            .await
            .ok_or(WriteError::Overloaded)?;
        let (reply, rx) = oneshot::channel();
        // The job runs inside a savepoint of the writer's batch transaction.
        let job: Job =
            Box::new(move |conn: &Connection| f(conn).map(|v| Box::new(v) as Box<dyn Any + Send>));
        let sent = self.send(Op::Exec {
            operation,
            job,
            reply,
        });
        drop(room);
        if !sent {
            return Err(WriteError::Stopped);
        }
        match rx.await {
            Ok(Ok(v)) => Ok(*v.downcast::<T>().expect("job returns T")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WriteError::Stopped),
        }
    }

    /// Runs `f` on the write connection outside any transaction (VACUUM, restore),
    /// after everything queued before it has been committed.
    pub async fn exclusive<T, F>(&self, operation: &'static str, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: ExclusiveJob =
            Box::new(move |c: &mut Connection| f(c).map(|v| Box::new(v) as Box<dyn Any + Send>));
        if !self.send(Op::Exclusive {
            operation,
            job,
            reply,
        }) {
            anyhow::bail!(WriteError::Stopped);
        }
        match rx.await {
            Ok(r) => r.map(|v| *v.downcast::<T>().expect("job returns T")),
            Err(_) => anyhow::bail!(WriteError::Stopped),
        }
    }

    /// Waits until everything queued before this call is committed (true) or
    /// its commit failed (false: it stays queued for the next attempt).
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

    /// Whether the queue is below `database.max_queued_writes`.
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

    /// Commits what is queued and stops the thread.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

struct Batch {
    changes: AgentChanges,
    jobs: Vec<(&'static str, Job, JobReply)>,
    flushes: Vec<oneshot::Sender<bool>>,
    /// An exclusive job ends the batch; it runs after the batch commits.
    exclusive: Option<(&'static str, ExclusiveJob, ExclusiveReply)>,
    ops: u64,
}

impl Batch {
    fn new() -> Self {
        Batch {
            changes: AgentChanges::default(),
            jobs: Vec::new(),
            flushes: Vec::new(),
            exclusive: None,
            ops: 0,
        }
    }

    fn add(&mut self, op: Op) {
        self.ops += 1;
        match op {
            Op::Agent(p) => self.changes.patch(*p),
            Op::Event(e) => self.changes.event(e),
            Op::Exec {
                operation,
                job,
                reply,
            } => self.jobs.push((operation, job, reply)),
            Op::Flush(tx) => self.flushes.push(tx),
            Op::Exclusive {
                operation,
                job,
                reply,
            } => self.exclusive = Some((operation, job, reply)),
        }
    }

    fn urgent(&self) -> bool {
        !self.jobs.is_empty() || !self.flushes.is_empty() || self.exclusive.is_some()
    }

    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.jobs.is_empty() && self.flushes.is_empty()
    }
}

fn run(
    mut conn: Connection,
    rx: Receiver<Op>,
    flush_interval: Duration,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
) {
    // Agent state that failed to commit is retried with the next batch.
    let mut carry = AgentChanges::default();
    let mut open = true;
    while open || !carry.is_empty() {
        let mut batch = Batch::new();
        // Wait for the first op (or retry carried patches after a pause).
        let first = if carry.is_empty() {
            rx.recv().ok()
        } else {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            }
        };
        match first {
            Some(op) => batch.add(op),
            None if carry.is_empty() => break,
            None => {}
        }
        let deadline = Instant::now() + flush_interval;
        while batch.ops < MAX_BATCH_OPS && batch.exclusive.is_none() {
            match rx.try_recv() {
                Ok(op) => batch.add(op),
                Err(mpsc::TryRecvError::Empty) => {
                    if batch.urgent() || !open {
                        break;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(op) => batch.add(op),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        queue.taken(batch.ops);
        batch.changes.after(std::mem::take(&mut carry));
        let exclusive = batch.exclusive.take();
        if !batch.is_empty() {
            carry = commit(&mut conn, batch, &queue, &metrics);
        }
        if let Some((operation, job, reply)) = exclusive {
            let t = Instant::now();
            let r = job(&mut conn);
            metrics.db_query(operation, t.elapsed());
            let _ = reply.send(r);
        }
    }
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

/// Commits a batch and answers its jobs and flushes; what is left to retry.
fn commit(conn: &mut Connection, batch: Batch, queue: &Queue, metrics: &Metrics) -> AgentChanges {
    let start = Instant::now();
    let Batch {
        changes,
        jobs,
        flushes,
        ..
    } = batch;
    let mut replies = Vec::with_capacity(jobs.len());
    let result: rusqlite::Result<()> = (|| {
        // IMMEDIATE: take the write lock at the start, waiting up to the busy
        // timeout for another process (opampctl) to release it.
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !changes.patches.is_empty() {
            let t = Instant::now();
            agents::apply_patches(&tx, changes.patches.values())?;
            metrics.db_query("agent_upsert", t.elapsed());
        }
        if !changes.events.is_empty() {
            agents::insert_events(&tx, &changes.events)?;
        }
        for (operation, job, reply) in jobs {
            let t = Instant::now();
            let sp = tx.savepoint()?;
            let out = job(&sp);
            match out {
                Ok(v) => {
                    sp.commit()?;
                    replies.push((reply, Ok(v)));
                }
                Err(e) => {
                    drop(sp); // rolls back this job only
                    let storage = e
                        .downcast_ref::<rusqlite::Error>()
                        .is_some_and(is_storage_error);
                    let err = if storage {
                        WriteError::Storage(format!("{e:#}"))
                    } else {
                        WriteError::Job(e)
                    };
                    replies.push((reply, Err(err)));
                }
            }
            metrics.db_query(operation, t.elapsed());
        }
        tx.commit()
    })();
    metrics.db_query("commit", start.elapsed());
    let result = result.map_err(|e| e.to_string());
    queue.settle(result, changes, flushes, |result| {
        for (reply, answer) in replies {
            let _ = match result {
                Ok(()) => reply.send(answer),
                Err(message) => reply.send(Err(WriteError::Storage(message.clone()))),
            };
        }
    })
}

fn is_storage_error(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DiskFull
                | ReadOnly
                | SystemIoFailure
                | CannotOpen
                | DatabaseCorrupt
                | NotADatabase
                | DatabaseBusy
                | DatabaseLocked
        )
    )
}
