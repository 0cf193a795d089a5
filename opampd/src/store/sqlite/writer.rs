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
use crate::store::{Room, WriteError};
use rusqlite::Connection;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    shared: Arc<Shared>,
}

struct Shared {
    queued: AtomicU64,
    /// Past this many queued operations, writers wait ([`Writer::wait_for_room`]).
    max_queued: u64,
    /// Woken whenever the thread takes operations off the queue.
    room: tokio::sync::Notify,
    commits: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Writer {
    pub(super) fn start(
        conn: Connection,
        flush_interval: Duration,
        max_queued: u64,
        metrics: Arc<Metrics>,
    ) -> Writer {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            queued: AtomicU64::new(0),
            max_queued: max_queued.max(1),
            room: tokio::sync::Notify::new(),
            commits: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("opampd-writer".into())
            .spawn(move || run(conn, rx, flush_interval, thread_shared, metrics))
            .expect("spawn writer thread");
        Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
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
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Whether the queue is below `database.max_queued_writes`.
    pub fn has_room(&self) -> bool {
        self.queued() < self.shared.max_queued
    }

    /// Reserves room for `ops` operations in the queue, waiting up to `limit`
    /// while it is full (`database.max_queued_writes`); `None` if it stayed
    /// full. Whoever is about to queue changes reserves first, and the
    /// reservation is released when the [`Room`] is dropped: overload becomes
    /// waiting (and past the limit a refusal to retry), never an unbounded
    /// queue. The queue holds at most twice the bound: reservations plus the
    /// operations of their holders.
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
                        return Some(Room::new(Reserved {
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

    /// Commits what is queued and stops the thread.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Room reserved in the writer's queue ([`Writer::reserve`]), released on drop.
struct Reserved {
    shared: Arc<Shared>,
    ops: u64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.shared.queued.fetch_sub(self.ops, Ordering::Relaxed);
        self.shared.room.notify_waiters();
    }
}

struct Batch {
    patches: HashMap<String, AgentPatch>,
    events: Vec<AgentEvent>,
    jobs: Vec<(&'static str, Job, JobReply)>,
    flushes: Vec<oneshot::Sender<bool>>,
    /// An exclusive job ends the batch; it runs after the batch commits.
    exclusive: Option<(&'static str, ExclusiveJob, ExclusiveReply)>,
    ops: u64,
}

impl Batch {
    fn new() -> Self {
        Batch {
            patches: HashMap::new(),
            events: Vec::new(),
            jobs: Vec::new(),
            flushes: Vec::new(),
            exclusive: None,
            ops: 0,
        }
    }

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
        self.patches.is_empty()
            && self.events.is_empty()
            && self.jobs.is_empty()
            && self.flushes.is_empty()
    }
}

const MAX_BATCH_OPS: u64 = 20_000;

fn run(
    mut conn: Connection,
    rx: Receiver<Op>,
    flush_interval: Duration,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
) {
    // Patches that failed to commit are retried with the next batch.
    let mut carry: HashMap<String, AgentPatch> = HashMap::new();
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
        shared.queued.fetch_sub(batch.ops, Ordering::Relaxed);
        shared.room.notify_waiters();
        for (uid, mut old) in carry.drain() {
            if let Some(newer) = batch.patches.remove(&uid) {
                old.merge(newer);
            }
            batch.patches.insert(uid, old);
        }
        let exclusive = batch.exclusive.take();
        if !batch.is_empty() {
            commit(&mut conn, batch, &shared, &metrics, &mut carry);
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

fn commit(
    conn: &mut Connection,
    batch: Batch,
    shared: &Shared,
    metrics: &Metrics,
    carry: &mut HashMap<String, AgentPatch>,
) {
    let start = Instant::now();
    let Batch {
        patches,
        events,
        jobs,
        flushes,
        ..
    } = batch;
    let mut replies = Vec::with_capacity(jobs.len());
    let result: rusqlite::Result<()> = (|| {
        // IMMEDIATE: take the write lock at the start, waiting up to the busy
        // timeout for another process (opampctl) to release it.
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !patches.is_empty() {
            let t = Instant::now();
            agents::apply_patches(&tx, patches.values())?;
            metrics.db_query("agent_upsert", t.elapsed());
        }
        if !events.is_empty() {
            agents::insert_events(&tx, &events)?;
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
    let committed = result.is_ok();
    match result {
        Ok(()) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            *shared.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            for (reply, r) in replies {
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            tracing::error!(error = %msg, "database commit failed; agent state will be retried");
            *shared.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
            for (reply, _) in replies {
                let _ = reply.send(Err(WriteError::Storage(msg.clone())));
            }
            carry.extend(patches);
        }
    }
    for f in flushes {
        let _ = f.send(committed);
    }
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
