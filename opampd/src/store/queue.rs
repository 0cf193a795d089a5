//! What the batching writers of every backend share: the bounded queue's
//! accounting ([`Queue`]: room reserved before queueing, waiters woken as
//! the writer takes batches, the last commit error) and the agent state of a
//! batch ([`AgentChanges`]: patches coalesced per agent, events in order,
//! kept for the next batch when a commit fails). Each backend keeps its own
//! channel, loop and commit: a thread with one SQLite connection, a task on
//! the PostgreSQL pool.

use crate::store::agents::{AgentEvent, AgentPatch};
use crate::store::Room;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Operations past which a batch is committed without waiting for more.
pub(crate) const MAX_BATCH_OPS: u64 = 20_000;

/// The writer's queue as its callers see it: how much is queued, the bound
/// (`database.max_queued_writes`) and the last commit error.
pub(crate) struct Queue {
    queued: AtomicU64,
    /// Past this many queued operations, writers wait ([`Queue::reserve`]).
    max_queued: u64,
    /// Woken whenever the writer takes operations off the queue.
    room: tokio::sync::Notify,
    last_error: Mutex<Option<String>>,
}

impl Queue {
    pub(crate) fn new(max_queued: u64) -> Arc<Queue> {
        Arc::new(Queue {
            queued: AtomicU64::new(0),
            max_queued: max_queued.max(1),
            room: tokio::sync::Notify::new(),
            last_error: Mutex::new(None),
        })
    }

    /// Counts one operation in while `send` queues it; whether it was queued
    /// (a writer that stopped takes nothing and counts nothing).
    pub(crate) fn push(&self, send: impl FnOnce() -> bool) -> bool {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if send() {
            return true;
        }
        self.queued.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// The writer took `ops` operations off the queue: wakes who waits for room.
    pub(crate) fn taken(&self, ops: u64) {
        self.queued.fetch_sub(ops, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether the queue is below `database.max_queued_writes`.
    pub(crate) fn has_room(&self) -> bool {
        self.queued() < self.max_queued
    }

    /// Reserves room for `ops` operations in the queue, waiting up to `limit`
    /// while it is full (`database.max_queued_writes`); `None` if it stayed
    /// full. Whoever is about to queue changes reserves first, and the
    /// reservation is released when the [`Room`] is dropped: overload becomes
    /// waiting (and past the limit a refusal to retry), never an unbounded
    /// queue. The queue holds at most twice the bound: reservations plus the
    /// operations of their holders.
    pub(crate) async fn reserve(self: &Arc<Self>, ops: u64, limit: Duration) -> Option<Room> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut current = self.queued.load(Ordering::Relaxed);
            while current + ops <= self.max_queued {
                match self.queued.compare_exchange_weak(
                    current,
                    current + ops,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        return Some(Room::new(Reserved {
                            queue: self.clone(),
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

    /// The error of the last commit, `None` once a commit succeeded.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records a commit's outcome, lets the backend answer its own waiters
    /// (`answer`), then the flushes; after a failure (logged) the batch's
    /// agent state comes back, to go before the next batch's
    /// ([`AgentChanges::after`]).
    pub(crate) fn settle(
        &self,
        result: Result<(), String>,
        changes: AgentChanges,
        flushes: Vec<oneshot::Sender<bool>>,
        answer: impl FnOnce(&Result<(), String>),
    ) -> AgentChanges {
        let committed = result.is_ok();
        match &result {
            Ok(()) => {
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(message) => {
                tracing::error!(error = %message, "database commit failed; agent state will be retried");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
            }
        }
        answer(&result);
        let carry = if committed {
            AgentChanges::default()
        } else {
            changes
        };
        for flush in flushes {
            let _ = flush.send(committed);
        }
        carry
    }
}

/// Room reserved in the writer's queue ([`Queue::reserve`]), released on drop.
struct Reserved {
    queue: Arc<Queue>,
    ops: u64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.queue.taken(self.ops);
    }
}

/// The agent state of one batch: patches coalesced per agent (a newer
/// field wins), events in the order they came.
#[derive(Default)]
pub(crate) struct AgentChanges {
    pub(crate) patches: HashMap<String, AgentPatch>,
    pub(crate) events: Vec<AgentEvent>,
}

impl AgentChanges {
    pub(crate) fn patch(&mut self, patch: AgentPatch) {
        match self.patches.get_mut(&patch.uid) {
            Some(existing) => existing.merge(patch),
            None => {
                self.patches.insert(patch.uid.clone(), patch);
            }
        }
    }

    pub(crate) fn event(&mut self, event: AgentEvent) {
        self.events.push(event);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.patches.is_empty() && self.events.is_empty()
    }

    /// Puts `earlier` (what a failed commit left) before these changes: for
    /// the same agent the newer patch merges over the older one, and the
    /// earlier events come first.
    pub(crate) fn after(&mut self, earlier: AgentChanges) {
        for (uid, mut old) in earlier.patches {
            if let Some(newer) = self.patches.remove(&uid) {
                old.merge(newer);
            }
            self.patches.insert(uid, old);
        }
        let mut events = earlier.events;
        events.append(&mut self.events);
        self.events = events;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(uid: &str, status: &'static str) -> AgentPatch {
        AgentPatch {
            status: Some(status),
            ..AgentPatch::new(uid)
        }
    }

    #[test]
    fn newer_patches_win_within_a_batch_and_over_a_failed_one() {
        let mut earlier = AgentChanges::default();
        earlier.patch(patch("a", "connected"));
        earlier.patch(patch("b", "connected"));
        let mut batch = AgentChanges::default();
        batch.patch(patch("a", "stale"));
        batch.patch(patch("a", "disconnected"));
        batch.after(earlier);
        assert_eq!(batch.patches.len(), 2);
        assert_eq!(batch.patches["a"].status, Some("disconnected"));
        assert_eq!(batch.patches["b"].status, Some("connected"));
    }

    #[tokio::test]
    async fn a_failed_commit_keeps_its_changes_and_its_error() {
        let queue = Queue::new(10);
        let mut changes = AgentChanges::default();
        changes.patch(patch("a", "connected"));
        let (flush, answer) = oneshot::channel();
        let carry = queue.settle(Err("disk full".into()), changes, vec![flush], |_| {});
        assert!(!answer.await.unwrap());
        assert_eq!(carry.patches.len(), 1);
        assert_eq!(queue.last_error().as_deref(), Some("disk full"));
        let (flush, answer) = oneshot::channel();
        let carry = queue.settle(Ok(()), carry, vec![flush], |_| {});
        assert!(answer.await.unwrap());
        assert!(carry.is_empty());
        assert_eq!(queue.last_error(), None);
    }

    #[tokio::test]
    async fn reserved_room_comes_back_when_dropped() {
        let queue = Queue::new(2);
        let room = queue.reserve(2, Duration::ZERO).await.expect("room");
        assert!(!queue.has_room());
        assert!(queue.reserve(1, Duration::ZERO).await.is_none());
        drop(room);
        assert!(queue.has_room());
        assert!(queue.push(|| true));
        assert!(!queue.push(|| false));
        assert_eq!(queue.queued(), 1);
    }
}
