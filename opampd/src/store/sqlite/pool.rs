//! A small pool of read-only connections.
//!
//! A std `Mutex` + `Condvar` is right here: callers are blocking threads
//! (`spawn_blocking`), the critical sections are a push or a pop, and no lock
//! is held across a query.

use super::open_connection;
use crate::metrics::Metrics;
use crate::store::{PoolStats, StoreOptions};
use rusqlite::{Connection, OpenFlags};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct ReadPool {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    idle: Mutex<State>,
    available: Condvar,
    max_open: usize,
    max_idle: usize,
    lifetime: Duration,
    busy: Duration,
    metrics: Arc<Metrics>,
}

struct State {
    idle: Vec<(Connection, Instant)>,
    open: usize,
}

pub struct PooledConn {
    conn: Option<(Connection, Instant)>,
    shared: Arc<Shared>,
}

impl Deref for PooledConn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn.as_ref().expect("present until drop").0
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some((conn, born)) = self.conn.take() else {
            return;
        };
        let s = &self.shared;
        let mut st = s.idle.lock().unwrap_or_else(|e| e.into_inner());
        if st.idle.len() < s.max_idle && born.elapsed() < s.lifetime {
            st.idle.push((conn, born));
        } else {
            st.open -= 1;
            drop(conn);
        }
        s.publish(&st);
        drop(st);
        s.available.notify_one();
    }
}

impl Shared {
    fn publish(&self, st: &State) {
        self.metrics
            .read_pool
            .open
            .store(st.open as i64, Ordering::Relaxed);
        self.metrics
            .read_pool
            .idle
            .store(st.idle.len() as i64, Ordering::Relaxed);
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = open_connection(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            self.busy,
        )?;
        conn.pragma_update(None, "query_only", "ON")?;
        Ok(conn)
    }
}

impl ReadPool {
    pub fn new(path: &Path, opts: &StoreOptions, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        metrics
            .read_pool
            .max
            .store(opts.max_open_conns as i64, Ordering::Relaxed);
        metrics.write_pool.max.store(1, Ordering::Relaxed);
        metrics.write_pool.open.store(1, Ordering::Relaxed);
        Ok(ReadPool {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                idle: Mutex::new(State {
                    idle: Vec::new(),
                    open: 0,
                }),
                available: Condvar::new(),
                max_open: opts.max_open_conns,
                max_idle: opts.max_idle_conns,
                lifetime: opts.conn_max_lifetime,
                busy: opts.busy_timeout,
                metrics,
            }),
        })
    }

    /// Takes a connection, opening one if under the limit, else waiting (up to 30 s).
    pub fn get(&self) -> anyhow::Result<PooledConn> {
        let s = &self.shared;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut st = s.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut waited = false;
        loop {
            while let Some((conn, born)) = st.idle.pop() {
                if born.elapsed() < s.lifetime {
                    s.publish(&st);
                    return Ok(PooledConn {
                        conn: Some((conn, born)),
                        shared: s.clone(),
                    });
                }
                st.open -= 1;
            }
            if st.open < s.max_open {
                st.open += 1;
                s.publish(&st);
                drop(st);
                return match s.open() {
                    Ok(conn) => Ok(PooledConn {
                        conn: Some((conn, Instant::now())),
                        shared: s.clone(),
                    }),
                    Err(e) => {
                        let mut st = s.idle.lock().unwrap_or_else(|e| e.into_inner());
                        st.open -= 1;
                        s.publish(&st);
                        Err(anyhow::anyhow!(
                            "cannot open a database read connection: {e}"
                        ))
                    }
                };
            }
            if !waited {
                waited = true;
                s.metrics.pool_waits.fetch_add(1, Ordering::Relaxed);
            }
            let now = Instant::now();
            if now >= deadline {
                anyhow::bail!("timed out after 30 s waiting for a database read connection (database.max_open_conns = {})", s.max_open);
            }
            st = s
                .available
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.shared.idle.lock().unwrap_or_else(|e| e.into_inner());
        PoolStats {
            max_open: self.shared.max_open,
            open: st.open,
            idle: st.idle.len(),
            waits: self.shared.metrics.pool_waits.load(Ordering::Relaxed),
        }
    }
}
