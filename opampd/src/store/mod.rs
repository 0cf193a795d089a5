//! The store: every piece of state opampd keeps, behind one typed async
//! interface ([`Backend`]) that each database backend implements.
//!
//! Handlers and background tasks hold a [`Store`] and call its typed
//! methods; no driver type appears outside the backend's folder. The SQLite
//! backend ([`sqlite`]) is the default: one writer thread commits changes in
//! batches (agent state patches for the same agent coalesce, and a heartbeat
//! costs nothing here: last-seen times are flushed periodically), and reads
//! use a small pool on tokio's blocking threads, never the async workers.

pub mod agents;
mod backend;
#[cfg(test)]
mod boundary;
pub mod configs;
pub mod dump;
mod error;
pub mod json;
pub mod package_rollouts;
pub mod packages;
pub mod postgres;
mod queue;
#[cfg(test)]
mod session_records;
pub mod sqlite;
pub mod users;

use crate::metrics::Metrics;
use anyhow::Result;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use agents::{AgentPatch, AgentRow};
pub use backend::{Backend, Location, PoolStats, Room};
pub use error::WriteError;

#[derive(Clone)]
pub struct StoreOptions {
    pub max_open_conns: usize,
    pub max_idle_conns: usize,
    pub conn_max_lifetime: Duration,
    pub flush_interval: Duration,
    /// Queued writer operations past which writers wait (`database.max_queued_writes`).
    pub max_queued_writes: u64,
    pub busy_timeout: Duration,
    /// SQLite `synchronous` of the write connection: `NORMAL` or `FULL`.
    pub synchronous: &'static str,
}

/// Handle to the store; cheap to clone. Its methods are those of
/// [`Backend`], grouped by domain there.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Opens (creating if needed) and migrates the SQLite database at
    /// `path`, then starts its writer. Blocking: call it off the async workers.
    pub fn open(path: &Path, opts: &StoreOptions, metrics: Arc<Metrics>) -> Result<Store> {
        let backend = sqlite::Sqlite::open(path, opts, metrics)?;
        Ok(Store::new(Arc::new(backend)))
    }

    /// A store over any backend.
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store { backend }
    }
}

impl Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

/// The schema version this build writes (every backend's migrations reach it).
pub const SCHEMA_VERSION: u32 = sqlite::schema::SCHEMA_VERSION;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, milliseconds) of a Unix time in milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses RFC 3339 into Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}
