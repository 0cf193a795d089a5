//! Several replicas behaving as one: who holds which agent, pushes that
//! cross replicas, and which replica drives rollout progress.
//!
//! Two forms behind one handle, [`Cluster`]:
//! - **local** (SQLite, one process): every agent is held here, a push goes
//!   straight to the local session, this process drives rollouts. Nothing
//!   extra runs and nothing extra is stored.
//! - **PostgreSQL** (several replicas on one database, [`postgres`]): each
//!   replica renews a lease in the `replicas` table, records the agents it
//!   holds in `agent_owners`, hears the others through LISTEN/NOTIFY and
//!   drives rollout progress only while it holds an advisory lock.

pub mod postgres;

use crate::app::App;
use crate::fleet::{Fleet, LiveCounts, Liveness};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What one replica tells the others (a NOTIFY payload, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Rollouts or configurations changed: rebuild the targets and push to
    /// the agents you hold. `from` already did.
    Targets { from: String },
    /// Send a restart command to this agent if you hold it.
    Restart { uid: String, owner: String },
    /// This agent's labels changed: take them and offer again if you hold it.
    Labels {
        uid: String,
        owner: String,
        labels: BTreeMap<String, String>,
    },
    /// This agent was deleted: drop its session if you hold it.
    Delete { uid: String, owner: String },
    /// The database was restored: forget what agents reported, ask them
    /// for their full state, rebuild everything. `from` already did.
    Restored { from: String },
    /// Not sent by anyone: the listener (re)connected and may have missed
    /// messages, so everything is rebuilt.
    Resync,
}

/// What this replica knows of the agents other live replicas hold: their
/// stored last-seen times. Always empty in the local form.
///
/// An agent's liveness on any replica ([`Elsewhere::liveness`]): its session
/// here if there is one; otherwise held by another live replica, connected
/// or stale by its stored last-seen time; otherwise disconnected. The stored
/// time lags the owner's in-memory one by up to a last-seen flush
/// (`database.last_seen_flush_seconds`), so that much is added to the
/// staleness window of agents held elsewhere.
#[derive(Debug, Default)]
pub struct Elsewhere {
    /// uid → stored last-seen time (Unix ms).
    held: HashMap<String, i64>,
    /// How far a stored last-seen time may lag the live one, in ms.
    lag_ms: i64,
}

impl Elsewhere {
    /// The agent's liveness: from its session here if there is one,
    /// otherwise as held by another replica.
    pub fn liveness(
        &self,
        fleet: &Fleet,
        uid: &[u8; 16],
        now_ms: i64,
        stale_after_ms: i64,
    ) -> Liveness {
        if fleet.contains(uid) {
            return fleet.liveness(uid, now_ms, stale_after_ms);
        }
        self.remote(&opamp_proto::uid_string(uid), now_ms, stale_after_ms)
            .map_or(Liveness::Disconnected, |(liveness, _)| liveness)
    }

    /// Liveness and stored last-seen time of an agent another live replica
    /// holds; `None` if none does (say nothing of this replica's sessions).
    pub fn remote(&self, uid: &str, now_ms: i64, stale_after_ms: i64) -> Option<(Liveness, i64)> {
        let seen = *self.held.get(uid)?;
        let liveness = if now_ms - seen > stale_after_ms + self.lag_ms {
            Liveness::Stale
        } else {
            Liveness::Connected
        };
        Some((liveness, seen))
    }

    /// Uids of the agents held elsewhere, and not here, whose liveness
    /// satisfies `keep`.
    pub fn uids_where(
        &self,
        fleet: &Fleet,
        now_ms: i64,
        stale_after_ms: i64,
        keep: impl Fn(Liveness) -> bool,
    ) -> Vec<String> {
        self.held
            .keys()
            .filter(|uid| {
                opamp_proto::parse_uid(uid).is_none_or(|key| !fleet.contains(&key))
                    && self
                        .remote(uid, now_ms, stale_after_ms)
                        .is_some_and(|(liveness, _)| keep(liveness))
            })
            .cloned()
            .collect()
    }
}

/// The coordination handle of a running opampd (see the module docs).
pub enum Cluster {
    Local,
    Postgres(Arc<postgres::Coordinator>),
}

impl Cluster {
    /// One process on SQLite: today's behaviour, no extra cost.
    pub fn local() -> Cluster {
        Cluster::Local
    }

    /// `local` or `postgresql`.
    pub fn form(&self) -> &'static str {
        match self {
            Cluster::Local => "local",
            Cluster::Postgres(_) => "postgresql",
        }
    }

    /// Starts the background tasks of the PostgreSQL form (lease renewal,
    /// listener, rollout leadership, owner records). Nothing for the local
    /// form. They end at shutdown.
    pub fn start(app: &Arc<App>) {
        let Cluster::Postgres(coordinator) = &app.cluster else {
            return;
        };
        let shutdown = app.shutdown.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        coordinator.clone().spawn(tx, shutdown);
        let app = app.clone();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                handle(&app, message).await;
            }
        });
    }

    /// Whether plain-HTTP agents' sessions are shared through their records
    /// (the PostgreSQL form: any replica may serve the next poll); the id
    /// of this replica, which the records name, if so.
    pub fn shares_sessions(&self) -> Option<&str> {
        match self {
            Cluster::Local => None,
            Cluster::Postgres(coordinator) => Some(coordinator.replica()),
        }
    }

    /// Whether this replica drives rollout progress now: always in the local
    /// form, while holding the advisory lock in the PostgreSQL form.
    pub fn leads_rollouts(&self) -> bool {
        match self {
            Cluster::Local => true,
            Cluster::Postgres(coordinator) => coordinator.is_leader(),
        }
    }

    /// After this replica rebuilt its targets: the others rebuild theirs.
    pub async fn targets_changed(&self) {
        if let Cluster::Postgres(coordinator) = self {
            let from = coordinator.replica().to_string();
            coordinator.notify(&Message::Targets { from }).await;
        }
    }

    /// After this replica restored the database: the others catch up.
    pub async fn restored(&self) {
        if let Cluster::Postgres(coordinator) = self {
            let from = coordinator.replica().to_string();
            coordinator.notify(&Message::Restored { from }).await;
        }
    }

    /// Records that this replica now holds the agent's connection.
    pub fn holds(&self, uid: &[u8; 16]) {
        if let Cluster::Postgres(coordinator) = self {
            coordinator.record_owner(opamp_proto::uid_string(uid), true);
        }
    }

    /// Records that this replica no longer holds the agent's connection.
    pub fn released(&self, uid: &[u8; 16]) {
        if let Cluster::Postgres(coordinator) = self {
            coordinator.record_owner(opamp_proto::uid_string(uid), false);
        }
    }

    /// Sends a restart command to a connected agent, wherever it is held:
    /// how it was delivered, or `None` if no live replica holds it.
    pub async fn restart(&self, app: &App, uid: &[u8; 16]) -> Option<String> {
        if self.shares_sessions().is_some()
            && !app.fleet.with(uid, |s| s.pushable()).unwrap_or(false)
        {
            // A plain-HTTP agent's next poll may reach any replica: the
            // command waits in its shared session record.
            let fresh_after =
                crate::store::now_ms() - app.config.opamp.disconnect_after_seconds as i64 * 1000;
            match app
                .store
                .request_session_restart(&opamp_proto::uid_string(uid), fresh_after)
                .await
            {
                Ok(true) => return Some("queued for the next poll".to_string()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot queue a restart in the agent's session record")
                }
            }
        }
        if let Some(delivery) = crate::opamp::send_restart(app, uid) {
            return Some(delivery.to_string());
        }
        let owner = self.remote_owner(app, uid).await?;
        let message = Message::Restart {
            uid: opamp_proto::uid_string(uid),
            owner: owner.clone(),
        };
        self.notify(&message).await;
        Some(format!("sent through replica {owner}"))
    }

    /// The agent's labels changed: its session takes them and is offered
    /// what it should now run, wherever it is held.
    pub async fn labels_changed(
        &self,
        app: &App,
        uid: &[u8; 16],
        labels: BTreeMap<String, String>,
    ) {
        if app.fleet.contains(uid) {
            apply_labels(app, uid, labels);
            return;
        }
        if let Some(owner) = self.remote_owner(app, uid).await {
            let message = Message::Labels {
                uid: opamp_proto::uid_string(uid),
                owner,
                labels,
            };
            self.notify(&message).await;
        }
    }

    /// The agent was deleted: its session ends, wherever it is held.
    pub async fn deleted(&self, app: &App, uid: &[u8; 16]) {
        if drop_session(app, uid) {
            return;
        }
        if let Some(owner) = self.remote_owner(app, uid).await {
            let message = Message::Delete {
                uid: opamp_proto::uid_string(uid),
                owner,
            };
            self.notify(&message).await;
        }
    }

    /// The agents other live replicas hold: every one (`among` = None) or
    /// those among `among`. No database read in the local form.
    pub async fn elsewhere(&self, app: &App, among: Option<&[String]>) -> Result<Elsewhere> {
        let Cluster::Postgres(coordinator) = self else {
            return Ok(Elsewhere::default());
        };
        if among.is_some_and(<[String]>::is_empty) {
            return Ok(Elsewhere::default());
        }
        let held = coordinator.held_elsewhere(among).await?;
        Ok(Elsewhere {
            held: held.into_iter().collect(),
            lag_ms: lag_ms(app),
        })
    }

    /// How many agents other live replicas hold, by liveness (the rule of
    /// [`Elsewhere`]). Nothing to read in the local form.
    pub async fn count_elsewhere(&self, app: &App, now_ms: i64) -> Result<LiveCounts> {
        let Cluster::Postgres(coordinator) = self else {
            return Ok(LiveCounts::default());
        };
        let fresh_since = now_ms - app.stale_after_ms() - lag_ms(app);
        let (connected, stale) = coordinator.count_elsewhere(fresh_since).await?;
        Ok(LiveCounts { connected, stale })
    }

    /// Whether another live replica holds the agent (PostgreSQL form only).
    pub async fn held_elsewhere(&self, app: &App, uid: &[u8; 16]) -> bool {
        self.remote_owner(app, uid).await.is_some()
    }

    /// The live replica other than this one that holds the agent.
    async fn remote_owner(&self, _app: &App, uid: &[u8; 16]) -> Option<String> {
        let Cluster::Postgres(coordinator) = self else {
            return None;
        };
        match coordinator.owner(&opamp_proto::uid_string(uid)).await {
            Ok(Some(owner)) if owner != coordinator.replica() => Some(owner),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read which replica holds an agent");
                None
            }
        }
    }

    async fn notify(&self, message: &Message) {
        if let Cluster::Postgres(coordinator) = self {
            coordinator.notify(message).await;
        }
    }
}

/// How far a stored last-seen time may lag the owner's live one, in ms.
fn lag_ms(app: &App) -> i64 {
    app.config.database.last_seen_flush_seconds.max(1) as i64 * 1000
}

/// Acts on a message from another replica (or the listener's resync).
async fn handle(app: &Arc<App>, message: Message) {
    let me = match &app.cluster {
        Cluster::Postgres(coordinator) => coordinator.replica().to_string(),
        Cluster::Local => return,
    };
    match message {
        Message::Targets { from } if from == me => {}
        Message::Targets { .. } | Message::Resync => {
            if let Err(e) = crate::rollouts::retarget_local(app).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot rebuild targets after another replica's change");
            }
        }
        Message::Restored { from } if from == me => {}
        Message::Restored { from } => {
            let notified = crate::api::admin::after_restore(app).await;
            tracing::warn!(by = %from, agents_notified = notified, "the database was restored by another replica");
        }
        Message::Restart { uid, owner } if owner == me => {
            if let Some(uid) = opamp_proto::parse_uid(&uid) {
                let delivery = crate::opamp::send_restart(app, &uid);
                tracing::info!(uid = %opamp_proto::uid_string(&uid), delivery = delivery.unwrap_or("not connected here"), "restart command from another replica");
            }
        }
        Message::Labels { uid, owner, labels } if owner == me => {
            if let Some(uid) = opamp_proto::parse_uid(&uid) {
                apply_labels(app, &uid, labels);
            }
        }
        Message::Delete { uid, owner } if owner == me => {
            if let Some(uid) = opamp_proto::parse_uid(&uid) {
                drop_session(app, &uid);
            }
        }
        Message::Restart { .. } | Message::Labels { .. } | Message::Delete { .. } => {}
    }
}

fn apply_labels(app: &App, uid: &[u8; 16], labels: BTreeMap<String, String>) {
    app.fleet.with(uid, |s| s.set_labels(labels));
    crate::opamp::push_offer(app, uid);
}

/// Ends the agent's local session (closing its WebSocket); whether there was one.
fn drop_session(app: &App, uid: &[u8; 16]) -> bool {
    let Some(session) = app.fleet.remove(uid) else {
        return false;
    };
    if session.transport() == crate::opamp::session::Transport::WebSocket {
        app.fleet.send_to_conn(
            session.conn_id(),
            crate::fleet::Outgoing::Close(crate::opamp::ws::CLOSE_NORMAL, "agent deleted"),
        );
    }
    app.cluster.released(uid);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_travel_as_json_and_back() {
        let messages = [
            Message::Targets { from: "a".into() },
            Message::Restart {
                uid: "u".into(),
                owner: "b".into(),
            },
            Message::Labels {
                uid: "u".into(),
                owner: "b".into(),
                labels: [("env".to_string(), "prod".to_string())].into(),
            },
            Message::Delete {
                uid: "u".into(),
                owner: "b".into(),
            },
            Message::Restored { from: "a".into() },
        ];
        for message in messages {
            let text = serde_json::to_string(&message).unwrap();
            assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), message);
        }
        assert!(
            serde_json::to_string(&Message::Targets { from: "a".into() })
                .unwrap()
                .contains(r#""kind":"targets""#)
        );
    }

    #[test]
    fn the_local_form_leads_rollouts_and_holds_everything_itself() {
        let local = Cluster::local();
        assert!(local.leads_rollouts());
        assert_eq!(local.form(), "local");
    }
}
