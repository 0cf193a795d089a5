//! The in-memory registry of live agents and the push channels of their
//! WebSocket connections.
//!
//! Sharded maps (no lock over all agents): a message for one agent locks only
//! its shard, briefly, and never across an await. This is the only place that
//! knows which connection carries which agent.

use crate::opamp::reply::Reply;
use crate::opamp::session::Session;
use crate::store::agents::LiveAgent;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What a WebSocket connection task is asked to send.
#[derive(Debug)]
pub enum Outgoing {
    Message(Box<Reply>),
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

/// Messages waiting for one WebSocket connection's task. Lighter than a
/// channel (an empty queue allocates nothing), which matters at one per agent.
#[derive(Default)]
pub struct ConnQueue {
    queue: Mutex<VecDeque<Outgoing>>,
    notify: Notify,
}

/// Pushes beyond this many pending messages fail (the agent is not reading).
const QUEUE_MAX: usize = 16;

impl ConnQueue {
    fn push(&self, msg: Outgoing) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // A close always gets in, so shutdown reaches a stuck connection too.
        if q.len() >= QUEUE_MAX && !matches!(msg, Outgoing::Close(..)) {
            return false;
        }
        q.push_back(msg);
        drop(q);
        self.notify.notify_one();
        true
    }

    pub fn pop(&self) -> Option<Outgoing> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Resolves when something was pushed (a push before the wait counts).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// An agent's liveness: the one definition behind the STATUS column, the
/// `status` filter of agent lists, `/health` and the agent gauges.
///
/// It comes from the live session alone (its in-memory last-seen time), never
/// from the stored row: the stored status and last-seen time are a persisted
/// record that may lag by a writer batch or a last-seen flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Served and heard from within `opamp.stale_after_seconds`.
    Connected,
    /// Served, but silent past `opamp.stale_after_seconds`.
    Stale,
    /// No live session.
    Disconnected,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Connected => "connected",
            Liveness::Stale => "stale",
            Liveness::Disconnected => "disconnected",
        }
    }

    pub fn parse(s: &str) -> Option<Liveness> {
        Some(match s {
            "connected" => Liveness::Connected,
            "stale" => Liveness::Stale,
            "disconnected" => Liveness::Disconnected,
            _ => return None,
        })
    }

    /// The liveness of a session (`None`: no session).
    pub fn of(session: Option<&Session>, now_ms: i64, stale_after_ms: i64) -> Liveness {
        match session {
            None => Liveness::Disconnected,
            Some(s) if s.is_disconnected() => Liveness::Disconnected,
            Some(s) if now_ms - s.last_seen() > stale_after_ms => Liveness::Stale,
            Some(_) => Liveness::Connected,
        }
    }
}

#[derive(Default)]
pub struct Fleet {
    sessions: DashMap<[u8; 16], Session>,
    conns: DashMap<u64, Arc<ConnQueue>>,
    next_conn: AtomicU64,
}

/// Live counts by [`Liveness`].
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveCounts {
    pub connected: u64,
    pub stale: u64,
}

impl Fleet {
    pub fn contains(&self, uid: &[u8; 16]) -> bool {
        self.sessions.contains_key(uid)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Inserts a session unless one is already there (another request won the race).
    pub fn insert_if_absent(&self, session: Session) {
        self.sessions.entry(*session.uid()).or_insert(session);
    }

    /// Runs `f` on the agent's session while holding only its shard.
    pub fn with<R>(&self, uid: &[u8; 16], f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        self.sessions.get_mut(uid).map(|mut s| f(&mut s))
    }

    pub fn remove(&self, uid: &[u8; 16]) -> Option<Session> {
        self.sessions.remove(uid).map(|(_, s)| s)
    }

    /// Removes the session only if `pred` holds for it (checked under the shard lock).
    pub fn remove_if(
        &self,
        uid: &[u8; 16],
        pred: impl FnOnce(&Session) -> bool,
    ) -> Option<Session> {
        self.sessions.remove_if(uid, |_, s| pred(s)).map(|(_, s)| s)
    }

    /// Visits every session, one shard at a time.
    pub fn for_each_mut(&self, mut f: impl FnMut(&mut Session)) {
        for mut e in self.sessions.iter_mut() {
            f(e.value_mut());
        }
    }

    pub fn uids(&self) -> Vec<[u8; 16]> {
        self.sessions.iter().map(|e| *e.key()).collect()
    }

    pub fn register_conn(&self) -> (u64, Arc<ConnQueue>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let queue = Arc::new(ConnQueue::default());
        self.conns.insert(id, queue.clone());
        (id, queue)
    }

    pub fn unregister_conn(&self, id: u64) {
        self.conns.remove(&id);
    }

    pub fn conn_open(&self, id: u64) -> bool {
        id != 0 && self.conns.contains_key(&id)
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Queues a message on a connection without waiting; false if it is gone or full.
    pub fn send_to_conn(&self, conn_id: u64, msg: Outgoing) -> bool {
        match self.conns.get(&conn_id) {
            Some(q) => q.push(msg),
            None => false,
        }
    }

    /// Asks every connection to close (shutdown).
    pub fn close_all(&self, code: u16, reason: &'static str) {
        for e in self.conns.iter() {
            e.value().push(Outgoing::Close(code, reason));
        }
    }

    /// Counts live sessions by [`Liveness`].
    pub fn counts(&self, now_ms: i64, stale_after_ms: i64) -> LiveCounts {
        let mut c = LiveCounts::default();
        for e in self.sessions.iter() {
            match Liveness::of(Some(e.value()), now_ms, stale_after_ms) {
                Liveness::Connected => c.connected += 1,
                Liveness::Stale => c.stale += 1,
                Liveness::Disconnected => {}
            }
        }
        c
    }

    /// The liveness of one agent.
    pub fn liveness(&self, uid: &[u8; 16], now_ms: i64, stale_after_ms: i64) -> Liveness {
        Liveness::of(self.sessions.get(uid).as_deref(), now_ms, stale_after_ms)
    }

    /// Uids (as strings) of the sessions for which `keep` holds.
    pub fn uids_where(
        &self,
        now_ms: i64,
        stale_after_ms: i64,
        keep: impl Fn(Liveness) -> bool,
    ) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|e| keep(Liveness::of(Some(e.value()), now_ms, stale_after_ms)))
            .map(|e| opamp_proto::uid_string(e.key()))
            .collect()
    }

    /// Every agent with a live session, as a restore re-registers it.
    pub fn live_agents(&self) -> Vec<LiveAgent> {
        self.sessions
            .iter()
            .filter(|e| !e.value().is_disconnected())
            .map(|e| {
                let s = e.value();
                LiveAgent {
                    uid: opamp_proto::uid_string(s.uid()),
                    transport: s.transport().as_str(),
                    last_seen: s.last_seen(),
                    remote_addr: s.remote_addr().map(|a| a.to_string()),
                }
            })
            .collect()
    }

    /// Number of agents being served (for the max_agents limit).
    pub fn live(&self) -> usize {
        self.sessions.len()
    }
}
