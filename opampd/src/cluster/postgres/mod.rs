//! The PostgreSQL form of the cluster: the only cluster code that talks to
//! PostgreSQL.
//!
//! - **Lease**: a `replicas` row per replica, its heartbeat renewed every
//!   third of `cluster.lease_seconds` in the database's clock (replicas'
//!   clocks may differ). A replica whose heartbeat is older than its lease
//!   is gone: what it held counts for nothing at once (every lookup joins
//!   the lease), and the rollout leader clears it every third of the lease
//!   ([`Coordinator::reap`]): owner records deleted, agents stored
//!   disconnected.
//! - **Owners**: `agent_owners` says which replica holds each connected
//!   agent, written in batches from an in-memory queue.
//! - **Messages**: NOTIFY on [`CHANNEL`]; each replica LISTENs on one
//!   dedicated connection, reconnects with backoff and then reports
//!   [`Message::Resync`] (notifications sent meanwhile are lost).
//! - **Leadership**: the replica holding the session-level advisory lock
//!   [`LEADER_LOCK`] on its own dedicated connection drives rollout
//!   progress; when it dies the connection drops, the lock with it, and
//!   another replica takes it at its next attempt (every second).

#[cfg(test)]
mod tests;

use super::Message;
use crate::store::postgres::DatabaseUrl;
use anyhow::{Context, Result};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// The NOTIFY channel replicas talk on.
pub const CHANNEL: &str = "opampd_cluster";
/// Advisory lock key of rollout leadership ("rollout" in ASCII).
pub const LEADER_LOCK: i64 = 0x0072_6f6c_6c6f_7574;
/// Longest NOTIFY payload PostgreSQL accepts (8000 bytes), with room to spare.
const MAX_PAYLOAD: usize = 7900;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often owner records are written and leadership is tried.
const TICK: Duration = Duration::from_millis(200);

/// The database's clock, in Unix milliseconds.
const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// One replica's coordination with the others through PostgreSQL.
pub struct Coordinator {
    url: DatabaseUrl,
    replica: String,
    address: Option<String>,
    lease: Duration,
    /// The connection for heartbeats, owner records, lookups and NOTIFY.
    control: tokio::sync::Mutex<Option<Client>>,
    leader: AtomicBool,
    /// Owner changes waiting to be written: uid → held (true) or released.
    pending: Mutex<HashMap<String, bool>>,
    /// Every agent this replica holds now.
    held: Mutex<HashSet<String>>,
}

impl Coordinator {
    /// Registers this replica (a fresh lease) and clears what expired
    /// replicas, and this replica's previous run, left behind.
    pub async fn open(
        url: &DatabaseUrl,
        replica: &str,
        address: Option<String>,
        lease: Duration,
    ) -> Result<Arc<Coordinator>> {
        let coordinator = Arc::new(Coordinator {
            url: url.clone(),
            replica: replica.to_string(),
            address,
            lease,
            control: tokio::sync::Mutex::new(None),
            leader: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            held: Mutex::new(HashSet::new()),
        });
        coordinator
            .register()
            .await
            .with_context(|| format!("cannot register replica {replica} in the database"))?;
        Ok(coordinator)
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether this replica holds the rollout leadership lock now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Starts the lease renewal, the owner writer, the leadership loop and
    /// the listener (which sends what it hears to `messages`). They end when
    /// `shutdown` turns true; the lease is then given up.
    pub fn spawn(
        self: Arc<Self>,
        messages: mpsc::UnboundedSender<Message>,
        shutdown: watch::Receiver<bool>,
    ) {
        tokio::spawn(self.clone().renew_lease(shutdown.clone()));
        tokio::spawn(self.clone().write_owners(shutdown.clone()));
        tokio::spawn(self.clone().lead(shutdown.clone()));
        tokio::spawn(self.clone().reap_expired(shutdown.clone()));
        tokio::spawn(self.listen(messages, shutdown));
    }

    /// Queues an owner record: this replica holds (or released) the agent.
    pub fn record_owner(&self, uid: String, held: bool) {
        {
            let mut all = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if held {
                all.insert(uid.clone());
            } else {
                all.remove(&uid);
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid, held);
    }

    /// The live replica holding the agent, if any (a replica past its lease
    /// holds nothing).
    pub async fn owner(&self, uid: &str) -> Result<Option<String>> {
        let sql = format!(
            "SELECT o.replica FROM agent_owners o JOIN replicas r ON r.id = o.replica \
             WHERE o.uid = $1 AND r.heartbeat_at + r.lease_ms >= {DB_NOW}"
        );
        let control = self.control().await?;
        let row = client(&control).query_opt(&sql, &[&uid]).await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Agents held by a live replica other than this one, with their stored
    /// last-seen time (Unix ms): every one, or those among `among`. Agents
    /// not stored yet are left out (no list shows them either).
    pub async fn held_elsewhere(&self, among: Option<&[String]>) -> Result<Vec<(String, i64)>> {
        let sql = format!(
            "SELECT o.uid, a.last_seen FROM agent_owners o \
             JOIN replicas r ON r.id = o.replica JOIN agents a ON a.uid = o.uid \
             WHERE o.replica <> $1 AND r.heartbeat_at + r.lease_ms >= {DB_NOW}"
        );
        let control = self.control().await?;
        let rows = match among {
            None => client(&control).query(&sql, &[&self.replica]).await?,
            Some(uids) => {
                let sql = format!("{sql} AND o.uid = ANY($2)");
                client(&control)
                    .query(&sql, &[&self.replica, &uids])
                    .await?
            }
        };
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// How many agents live replicas other than this one hold: (stored
    /// last-seen time at or after `fresh_since`, before it).
    pub async fn count_elsewhere(&self, fresh_since: i64) -> Result<(u64, u64)> {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE a.last_seen >= $2), \
                    count(*) FILTER (WHERE a.last_seen < $2) \
             FROM agent_owners o \
             JOIN replicas r ON r.id = o.replica JOIN agents a ON a.uid = o.uid \
             WHERE o.replica <> $1 AND r.heartbeat_at + r.lease_ms >= {DB_NOW}"
        );
        let control = self.control().await?;
        let row = client(&control)
            .query_one(&sql, &[&self.replica, &fresh_since])
            .await?;
        let count = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        Ok((count(0), count(1)))
    }

    /// The replicas whose lease is current, by id.
    pub async fn live_replicas(&self) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT id FROM replicas WHERE heartbeat_at + lease_ms >= {DB_NOW} ORDER BY id"
        );
        let control = self.control().await?;
        let rows = client(&control).query(&sql, &[]).await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Tells every replica (this one included) `message`. A failure is
    /// logged: the others resynchronise when their listener reconnects.
    pub async fn notify(&self, message: &Message) {
        let payload = match serde_json::to_string(message) {
            Ok(p) if p.len() <= MAX_PAYLOAD => p,
            Ok(p) => {
                tracing::warn!(
                    bytes = p.len(),
                    "cluster message too long for NOTIFY; not sent"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a cluster message");
                return;
            }
        };
        let sent = match self.control().await {
            Ok(control) => client(&control)
                .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %format!("{e:#}"), "cannot notify the other replicas");
        }
    }

    /// Inserts or refreshes this replica's row, then clears expired
    /// replicas and this replica's previous owner records.
    async fn register(&self) -> Result<()> {
        let lease_ms = self.lease.as_millis() as i64;
        let insert = format!(
            "INSERT INTO replicas (id, started_at, heartbeat_at, lease_ms, address) \
             VALUES ($1, {DB_NOW}, {DB_NOW}, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET started_at = EXCLUDED.started_at, \
             heartbeat_at = EXCLUDED.heartbeat_at, lease_ms = EXCLUDED.lease_ms, \
             address = EXCLUDED.address"
        );
        {
            let control = self.control().await?;
            client(&control)
                .execute(&insert, &[&self.replica, &lease_ms, &self.address])
                .await?;
        }
        self.reap(true).await?;
        Ok(())
    }

    /// Clears what replicas past their lease left behind (with `mine_too`,
    /// also this replica's records from a previous run): their owner
    /// records and replica rows go, and their agents are stored
    /// disconnected. So are agents stored as connected that no replica
    /// holds and that nothing changed for twice the lease (a replica killed
    /// before it recorded them). Returns how many agents were marked.
    pub async fn reap(&self, mine_too: bool) -> Result<u64> {
        let expired = format!("heartbeat_at + lease_ms < {DB_NOW}");
        let now = crate::store::now_ms();
        let quiet_since = now - 2 * self.lease.as_millis() as i64;
        let owners = format!(
            "WITH gone AS ( \
                DELETE FROM agent_owners \
                WHERE replica IN (SELECT id FROM replicas WHERE {expired}) \
                   OR replica NOT IN (SELECT id FROM replicas) \
                   OR ($2 AND replica = $1) \
                RETURNING uid) \
             UPDATE agents SET status = 'disconnected', updated_at = $3 \
             WHERE uid IN (SELECT uid FROM gone) AND status <> 'disconnected'"
        );
        let orphans = "UPDATE agents SET status = 'disconnected', updated_at = $1 \
             WHERE status <> 'disconnected' AND updated_at < $2 \
             AND NOT EXISTS (SELECT 1 FROM agent_owners o WHERE o.uid = agents.uid)";
        let control = self.control().await?;
        let client = client(&control);
        let marked = client
            .execute(&owners, &[&self.replica, &mine_too, &now])
            .await?;
        client
            .execute(
                &format!("DELETE FROM replicas WHERE {expired} AND id <> $1"),
                &[&self.replica],
            )
            .await?;
        let orphaned = client.execute(orphans, &[&now, &quiet_since]).await?;
        let marked = marked + orphaned;
        if marked > 0 {
            tracing::info!(
                agents = marked,
                "agents of replicas past their lease marked disconnected"
            );
        }
        Ok(marked)
    }

    /// Every third of the lease, while this replica drives rollouts: clears
    /// what replicas past their lease left behind ([`Coordinator::reap`]).
    async fn reap_expired(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = (self.lease / 3).max(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            if !self.is_leader() {
                continue;
            }
            if let Err(e) = self.reap(false).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot clear what expired replicas left behind; retrying");
            }
        }
    }

    /// Renews the heartbeat every third of the lease; at shutdown, removes
    /// this replica's row and owner records (its agents are disconnected).
    async fn renew_lease(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = (self.lease / 3).max(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
            let renewed = self.renew().await;
            match renewed {
                Ok(0) => {
                    // Another replica found the lease expired and cleared it.
                    tracing::warn!(replica = %self.replica, "lease had expired; registering again");
                    match self.register().await {
                        Ok(()) => self.hold_again().await,
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "cannot register the replica again")
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot renew the replica lease")
                }
            }
        }
        if let Err(e) = self.resign().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot give up the replica lease");
        }
    }

    /// Moves the heartbeat to now; the number of rows (0: the row is gone).
    async fn renew(&self) -> Result<u64> {
        let sql = format!("UPDATE replicas SET heartbeat_at = {DB_NOW} WHERE id = $1");
        let control = self.control().await?;
        Ok(client(&control).execute(&sql, &[&self.replica]).await?)
    }

    /// Removes this replica's row and owner records (shutdown: its agents
    /// are disconnected).
    pub async fn resign(&self) -> Result<()> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let control = self.control().await?;
        let client = client(&control);
        client
            .execute(
                "DELETE FROM agent_owners WHERE replica = $1",
                &[&self.replica],
            )
            .await?;
        client
            .execute("DELETE FROM replicas WHERE id = $1", &[&self.replica])
            .await?;
        Ok(())
    }

    /// Queues again, as held here, every agent this replica serves (after
    /// its lease expired and another replica cleared its records), and
    /// stores them as connected again.
    async fn hold_again(&self) {
        let held: Vec<String> = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for uid in held.iter() {
                pending.entry(uid.clone()).or_insert(true);
            }
            held.iter().cloned().collect()
        };
        let reclaimed = async {
            let control = self.control().await?;
            client(&control)
                .execute(
                    "UPDATE agents SET status = 'connected' \
                     WHERE uid = ANY($1) AND status = 'disconnected'",
                    &[&held],
                )
                .await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = reclaimed {
            tracing::warn!(error = %format!("{e:#}"), "cannot store this replica's agents as connected again");
        }
    }

    /// Writes queued owner records in one batch every [`TICK`].
    async fn write_owners(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = self.flush_owners().await {
                tracing::warn!(error = %format!("{e:#}"), "cannot record which agents this replica holds; retrying");
            }
        }
    }

    /// Writes the queued owner records now (kept queued if that fails).
    pub async fn flush_owners(&self) -> Result<()> {
        let batch: HashMap<String, bool> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        let (held, released): (Vec<_>, Vec<_>) = batch.iter().partition(|(_, held)| **held);
        let held: Vec<String> = held.into_iter().map(|(uid, _)| uid.clone()).collect();
        let released: Vec<String> = released.into_iter().map(|(uid, _)| uid.clone()).collect();
        let upsert = format!(
            "INSERT INTO agent_owners (uid, replica, since) \
             SELECT uid, $2, {DB_NOW} FROM unnest($1::text[]) AS uid \
             ON CONFLICT (uid) DO UPDATE SET replica = EXCLUDED.replica, since = EXCLUDED.since"
        );
        let written = async {
            let control = self.control().await?;
            let client = client(&control);
            if !held.is_empty() {
                client.execute(&upsert, &[&held, &self.replica]).await?;
            }
            if !released.is_empty() {
                // Only this replica's records: the agent may hold a newer
                // connection on another replica already.
                client
                    .execute(
                        "DELETE FROM agent_owners WHERE uid = ANY($1) AND replica = $2",
                        &[&released, &self.replica],
                    )
                    .await?;
            }
            anyhow::Ok(())
        }
        .await;
        if written.is_err() {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (uid, held) in batch {
                pending.entry(uid).or_insert(held);
            }
        }
        written
    }

    /// Tries the leadership lock every [`TICK`] while not holding it; while
    /// holding it, checks every second that its connection is alive.
    async fn lead(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let client = match self.connect().await {
                Ok(client) => {
                    backoff = Duration::from_millis(250);
                    client
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "rollout leadership: cannot connect; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            loop {
                let holding = self.is_leader();
                let checked = if holding {
                    client.simple_query("SELECT 1").await.map(|_| true)
                } else {
                    client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                        .await
                        .map(|row| row.get::<_, bool>(0))
                };
                match checked {
                    Ok(leads) => {
                        if leads && !holding {
                            tracing::info!(replica = %self.replica, "this replica now drives rollout progress");
                        }
                        self.leader.store(leads, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if holding {
                            tracing::warn!(error = %e, "rollout leadership lost with its connection");
                        }
                        self.leader.store(false, Ordering::Relaxed);
                        break;
                    }
                }
                let wait = if self.is_leader() {
                    Duration::from_secs(1)
                } else {
                    Duration::from_secs(1).min(self.lease / 3)
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                if *shutdown.borrow() {
                    self.leader.store(false, Ordering::Relaxed);
                    // Dropping the connection releases the lock.
                    return;
                }
            }
        }
    }

    /// LISTENs on [`CHANNEL`] on its own connection, sending each message
    /// heard to `messages`; reconnects with backoff and then sends
    /// [`Message::Resync`].
    async fn listen(
        self: Arc<Self>,
        messages: mpsc::UnboundedSender<Message>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(250);
        let mut first = true;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.listen_once(&messages, &mut shutdown, first).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "cluster listener disconnected; reconnecting");
                }
            }
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One listening connection, until it fails (Err) or shutdown (Ok).
    async fn listen_once(
        &self,
        messages: &mpsc::UnboundedSender<Message>,
        shutdown: &mut watch::Receiver<bool>,
        first: bool,
    ) -> Result<()> {
        let (client, mut connection) = self
            .url
            .config()
            .connect(NoTls)
            .await
            .with_context(|| format!("cannot connect to {}", self.url.redacted()))?;
        let (heard_tx, mut heard) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = stream.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if heard_tx.send(n.payload().to_string()).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        let listening = client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .context("LISTEN failed");
        if let Err(e) = listening {
            driver.abort();
            return Err(e);
        }
        if !first {
            // Messages sent while disconnected are lost: rebuild everything.
            let _ = messages.send(Message::Resync);
        }
        loop {
            tokio::select! {
                heard = heard.recv() => match heard {
                    Some(payload) => match serde_json::from_str::<Message>(&payload) {
                        Ok(Message::Resync) => {}
                        Ok(message) => {
                            let _ = messages.send(message);
                        }
                        Err(e) => tracing::warn!(error = %e, "unreadable cluster message ignored"),
                    },
                    None => {
                        let ended = driver.await;
                        drop(client);
                        return match ended {
                            Ok(Ok(())) => Err(anyhow::anyhow!("the connection closed")),
                            Ok(Err(e)) => Err(e.into()),
                            Err(e) => Err(e.into()),
                        };
                    }
                },
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        driver.abort();
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The control connection, connected first if needed (a closed one is
    /// replaced: a call that failed on it is not retried, the next one works).
    async fn control(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>> {
        let mut control = self.control.lock().await;
        if control.as_ref().is_none_or(Client::is_closed) {
            *control = Some(self.connect().await?);
        }
        Ok(control)
    }

    /// A new connection, its driver running in the background.
    async fn connect(&self) -> Result<Client> {
        let (client, connection) = self
            .url
            .config()
            .connect(NoTls)
            .await
            .with_context(|| format!("cannot connect to {}", self.url.redacted()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// The connected client of a [`Coordinator::control`] guard.
fn client(control: &Option<Client>) -> &Client {
    control.as_ref().expect("Coordinator::control connects")
}
