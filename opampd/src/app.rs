//! Shared state of a running opampd and its background tasks.

use crate::auth::Auth;
use crate::config::Config;
use crate::fleet::Fleet;
use crate::logring::LogRing;
use crate::metrics::Metrics;
use crate::opamp::connection::ConnectionSettings;
use crate::opamp::session::Transport;
use crate::store::{now_ms, Store};
use crate::targeting::Targets;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

pub struct App {
    pub config: Config,
    pub store: Store,
    pub fleet: Fleet,
    /// This replica among the others: owners, cross-replica pushes, rollout leadership.
    pub cluster: crate::cluster::Cluster,
    pub targets: Targets,
    /// The packages rolled out to agents.
    pub package_targets: crate::opamp::packages::PackageTargets,
    /// The package files uploaded to opampd, served to agents.
    pub hosted: crate::packages::hosted::Hosted,
    /// The component lists agents reported, by hash.
    pub components: crate::components::Cache,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    pub logs: LogRing,
    pub started: Instant,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    /// SHA-256 digests of the accepted agent secrets (replaced on SIGHUP).
    pub agent_secrets: RwLock<Vec<[u8; 32]>>,
    /// The connection settings offered to agents (rebuilt on SIGHUP: new agent secrets).
    pub connection_settings: RwLock<Arc<ConnectionSettings>>,
    /// Woken when an agent reports a new remote config status or a rollout changes.
    pub rollout_wakeup: Notify,
    /// (uid, certificate) pairs refused and audited already: a refused
    /// certificate is audited once, not once per message.
    pub foreign_certificates: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    pub shutdown: watch::Receiver<bool>,
}

impl App {
    /// The connection settings offered to agents now.
    pub fn connection_settings(&self) -> Arc<ConnectionSettings> {
        self.connection_settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stale_after_ms(&self) -> i64 {
        self.config.opamp.stale_after_seconds as i64 * 1000
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Writes heartbeat times and sequence numbers of live agents every few seconds:
/// one batch for the whole fleet instead of a transaction per heartbeat.
pub async fn flush_last_seen(app: Arc<App>) {
    let every = Duration::from_secs(app.config.database.last_seen_flush_seconds.max(1));
    let mut shutdown = app.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {}
        }
        let store = &app.store;
        if !store.has_room() && !app.is_shutting_down() {
            // The times stay unflushed in the sessions until the next round.
            continue;
        }
        app.fleet.for_each_mut(|s| {
            if let Some(patch) = s.take_unflushed_seen() {
                store.queue_agent(patch);
            }
        });
        if app.is_shutting_down() {
            return;
        }
    }
}

/// Sets the agent gauges (and so `/health`'s counts) for the whole fleet:
/// connected and stale from this replica's sessions
/// ([`crate::fleet::Liveness`]) plus the agents other replicas hold
/// ([`crate::cluster::Elsewhere`], PostgreSQL form), disconnected = the rest
/// of the stored inventory.
pub async fn refresh_agent_gauges(app: &App) {
    let Ok(stored) = app.store.count_agents().await else {
        return;
    };
    let now = now_ms();
    let mut live = app.fleet.counts(now, app.stale_after_ms());
    match app.cluster.count_elsewhere(app, now).await {
        Ok(elsewhere) => {
            live.connected += elsewhere.connected;
            live.stale += elsewhere.stale;
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot count the agents other replicas hold");
            return;
        }
    }
    let live_total = live.connected + live.stale;
    // A brand-new agent is live a writer batch before it is stored.
    let total = stored.max(live_total);
    let m = &app.metrics.agents;
    m.connected.store(live.connected as i64, Ordering::Relaxed);
    m.stale.store(live.stale as i64, Ordering::Relaxed);
    m.disconnected
        .store((total - live_total) as i64, Ordering::Relaxed);
    m.total.store(total as i64, Ordering::Relaxed);
}

/// Whether the last poll of a plain-HTTP agent whose polls stopped here was
/// served by another replica (its shared session record names that
/// replica): true only where replicas share sessions.
async fn served_elsewhere(app: &App, uid: &[u8; 16]) -> bool {
    let Some(me) = app.cluster.shares_sessions() else {
        return false;
    };
    match app
        .store
        .session_record(&opamp_proto::uid_string(uid))
        .await
    {
        Ok(Some(record)) => record.replica != me,
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a silent agent's shared session record");
            false
        }
    }
}

/// Marks silent plain-HTTP agents disconnected, refreshes the agent gauges and
/// prunes old connection events.
pub async fn liveness(app: Arc<App>) {
    let mut shutdown = app.shutdown.clone();
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
        let now = now_ms();
        let cutoff = now - app.config.opamp.disconnect_after_seconds as i64 * 1000;
        let mut gone = Vec::new();
        app.fleet.for_each_mut(|s| {
            if s.transport() == Transport::Http && s.last_seen() < cutoff {
                gone.push(*s.uid());
            }
        });
        for uid in gone {
            if served_elsewhere(&app, &uid).await {
                // Its polls go to other replicas now: the one that served
                // the last of them says when it goes silent.
                app.fleet.remove_if(&uid, |s| {
                    s.transport() == Transport::Http && s.last_seen() < cutoff
                });
                app.cluster.released(&uid);
                continue;
            }
            crate::opamp::agent_left(
                &app,
                &uid,
                0,
                "no poll within opamp.disconnect_after_seconds",
            );
        }
        refresh_agent_gauges(&app).await;
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = Instant::now();
            let before = now - app.config.database.event_retention_days as i64 * 86_400_000;
            let _ = app.store.prune_events(before).await;
            let _ = app.store.prune_revoked().await;
            if let Some(before) = app.config.audit.retention_days.checked_mul(86_400_000) {
                if before > 0 {
                    let before = now - before as i64;
                    let _ = app.store.prune_audit(before).await;
                }
            }
        }
    }
}
