//! The coordinator against a real PostgreSQL: the cluster named by
//! `OPAMP_TEST_POSTGRES_URL` (scripts/test.sh starts one), a fresh database
//! per test migrated by the store. Without it the tests print a SKIPPED
//! line, or fail when `OPAMP_REQUIRE_TOOLS=1`.

use super::*;
use crate::store::postgres::tests::{self as store_tests, cluster};
use crate::store::postgres::Postgres;
use std::time::Instant;

/// A fresh database with the current schema; its URL.
async fn fresh_database(cluster: &str) -> DatabaseUrl {
    let url = store_tests::fresh_database(cluster).await;
    Postgres::open(&url, &store_tests::options(), store_tests::metrics())
        .await
        .unwrap();
    url
}

/// Runs `sql` on a connection of its own; the rows' first columns as text.
async fn query(url: &DatabaseUrl, sql: &str) -> Vec<String> {
    let (client, connection) = url.config().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// Polls `check` for up to `limit`; panics with `what` if it never holds.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Running {
    coordinator: Arc<Coordinator>,
    messages: mpsc::UnboundedReceiver<Message>,
    stop: watch::Sender<bool>,
}

async fn start(url: &DatabaseUrl, id: &str, lease: Duration) -> Running {
    let coordinator = Coordinator::open(url, id, Some(format!("{id}:4320")), lease)
        .await
        .unwrap();
    let (tx, messages) = mpsc::unbounded_channel();
    let (stop, shutdown) = watch::channel(false);
    coordinator.clone().spawn(tx, shutdown);
    Running {
        coordinator,
        messages,
        stop,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_see_each_others_agents_until_a_lease_expires() {
    let Some(cluster) = cluster("replicas_see_each_others_agents_until_a_lease_expires") else {
        return;
    };
    let url = fresh_database(&cluster).await;
    let lease = Duration::from_secs(3);
    let a = start(&url, "a", lease).await;
    let b = start(&url, "b", lease).await;
    assert_eq!(
        b.coordinator.live_replicas().await.unwrap(),
        ["a".to_string(), "b".to_string()]
    );
    a.coordinator.record_owner("agent-1".into(), true);
    b.coordinator.record_owner("agent-2".into(), true);
    eventually(Duration::from_secs(2), "both owners recorded", || async {
        query(&url, "SELECT uid FROM agent_owners").await.len() == 2
    })
    .await;
    assert_eq!(
        b.coordinator.owner("agent-1").await.unwrap().as_deref(),
        Some("a")
    );

    // Renewed every lease/3: a is still live after twice its lease.
    tokio::time::sleep(lease * 2).await;
    assert_eq!(
        b.coordinator.owner("agent-1").await.unwrap().as_deref(),
        Some("a"),
        "a renews its lease"
    );

    // a stops: it gives its lease up at once, its agents with it.
    let died = Instant::now();
    a.stop.send(true).ok();
    let a_url = url.clone();
    eventually(Duration::from_secs(2), "a resigned at shutdown", || async {
        query(&a_url, "SELECT id FROM replicas ORDER BY id").await == ["b"]
    })
    .await;
    assert_eq!(b.coordinator.owner("agent-1").await.unwrap(), None);
    assert!(died.elapsed() < lease);

    // A replica killed without a word leaves its row and owner records,
    // with the heartbeat it last wrote: its agents are held by nobody once
    // its lease has run out.
    let (client, connection) = url.config().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "INSERT INTO replicas (id, started_at, heartbeat_at, lease_ms, address) \
             VALUES ('dead', 0, {DB_NOW}, 3000, NULL); \
             INSERT INTO agent_owners (uid, replica, since) VALUES ('agent-3', 'dead', 0)"
        ))
        .await
        .unwrap();
    assert_eq!(
        b.coordinator.owner("agent-3").await.unwrap().as_deref(),
        Some("dead")
    );
    eventually(
        lease + Duration::from_secs(1),
        "dead's lease expired",
        || async { b.coordinator.owner("agent-3").await.unwrap().is_none() },
    )
    .await;

    // The agent reconnects to b: held again.
    b.coordinator.record_owner("agent-3".into(), true);
    eventually(Duration::from_secs(2), "agent-3 held by b", || async {
        b.coordinator.owner("agent-3").await.unwrap().as_deref() == Some("b")
    })
    .await;

    // A replica that starts clears what expired replicas left behind.
    client
        .batch_execute(
            "INSERT INTO replicas (id, started_at, heartbeat_at, lease_ms, address) \
             VALUES ('ancient', 0, 0, 3000, NULL); \
             INSERT INTO agent_owners (uid, replica, since) VALUES ('agent-4', 'ancient', 0)",
        )
        .await
        .unwrap();
    let c = start(&url, "c", lease).await;
    assert_eq!(
        query(&url, "SELECT id FROM replicas ORDER BY id").await,
        ["b", "c"]
    );
    assert!(
        query(&url, "SELECT uid FROM agent_owners WHERE uid = 'agent-4'")
            .await
            .is_empty()
    );

    // Released: gone, but only this replica's own record.
    c.coordinator.record_owner("agent-3".into(), false);
    c.coordinator.flush_owners().await.unwrap();
    assert_eq!(
        b.coordinator.owner("agent-3").await.unwrap().as_deref(),
        Some("b"),
        "c cannot release what b holds"
    );
    b.coordinator.record_owner("agent-3".into(), false);
    b.coordinator.flush_owners().await.unwrap();
    assert_eq!(b.coordinator.owner("agent-3").await.unwrap(), None);
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_replica_and_a_reconnected_listener_resyncs() {
    let Some(cluster) = cluster("messages_reach_every_replica_and_a_reconnected_listener_resyncs")
    else {
        return;
    };
    let url = fresh_database(&cluster).await;
    let lease = Duration::from_secs(30);
    let mut a = start(&url, "a", lease).await;
    let mut b = start(&url, "b", lease).await;
    // Both listeners are up once a message sent now reaches both.
    let restart = Message::Restart {
        uid: "agent-1".into(),
        owner: "a".into(),
    };
    let sent = Instant::now();
    let mut heard_a = None;
    let mut heard_b = None;
    while heard_a.is_none() || heard_b.is_none() {
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "listeners never heard"
        );
        b.coordinator.notify(&restart).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(m) = a.messages.try_recv() {
            heard_a = Some(m);
        }
        while let Ok(m) = b.messages.try_recv() {
            heard_b = Some(m);
        }
    }
    assert_eq!(heard_a.as_ref(), Some(&restart));
    assert_eq!(heard_b.as_ref(), Some(&restart));

    // Within a second.
    let labels = Message::Labels {
        uid: "agent-2".into(),
        owner: "a".into(),
        labels: [("env".to_string(), "prod".to_string())].into(),
    };
    let sent = Instant::now();
    b.coordinator.notify(&labels).await;
    let got = tokio::time::timeout(Duration::from_secs(1), a.messages.recv())
        .await
        .expect("heard within a second")
        .unwrap();
    assert_eq!(got, labels);
    assert!(sent.elapsed() < Duration::from_secs(1));
    while b.messages.try_recv().is_ok() {}

    // The listener's connection is killed: it reconnects and says Resync,
    // then hears messages again.
    let (client, connection) = url.config().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    let killed: i64 = client
        .query_one(
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query = 'LISTEN {CHANNEL}'"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 2, "both listeners found");
    let resync = tokio::time::timeout(Duration::from_secs(5), a.messages.recv())
        .await
        .expect("a resync after the reconnect")
        .unwrap();
    assert_eq!(resync, Message::Resync);
    let targets = Message::Targets { from: "b".into() };
    b.coordinator.notify(&targets).await;
    let got = tokio::time::timeout(Duration::from_secs(2), a.messages.recv())
        .await
        .expect("heard after the reconnect")
        .unwrap();
    assert_eq!(got, targets);
    drop(b.stop);
    drop(a.stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over_when_it_dies() {
    let Some(cluster) = cluster("one_replica_leads_and_another_takes_over_when_it_dies") else {
        return;
    };
    let url = fresh_database(&cluster).await;
    let lease = Duration::from_secs(3);
    let a = start(&url, "a", lease).await;
    eventually(Duration::from_secs(3), "a leads", || async {
        a.coordinator.is_leader()
    })
    .await;
    let b = start(&url, "b", lease).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(a.coordinator.is_leader());
    assert!(!b.coordinator.is_leader(), "one leader at a time");

    // The leader's connection dies: leadership is lost with it and one
    // replica (whichever tries first) holds it again.
    let (client, connection) = url.config().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(4), "a leader again", || async {
        a.coordinator.is_leader() != b.coordinator.is_leader()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        a.coordinator.is_leader() != b.coordinator.is_leader(),
        "exactly one leader"
    );

    // The leader stops (its connection goes, the lock with it): the other
    // takes over.
    let (leader, other) = if a.coordinator.is_leader() {
        (a, b)
    } else {
        (b, a)
    };
    leader.stop.send(true).ok();
    eventually(Duration::from_secs(4), "the other takes over", || async {
        other.coordinator.is_leader()
    })
    .await;
    assert!(!leader.coordinator.is_leader());
    drop((leader, other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_clears_what_a_dead_replica_left_and_stores_its_agents_disconnected() {
    let Some(cluster) =
        cluster("the_leader_clears_what_a_dead_replica_left_and_stores_its_agents_disconnected")
    else {
        return;
    };
    let url = fresh_database(&cluster).await;
    let (client, connection) = url.config().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    // A replica that was killed just now (its lease still current), one of
    // its agents, an agent nobody recorded (its replica died first) and
    // an agent that stays held.
    client
        .batch_execute(&format!(
            "INSERT INTO agents (uid, status, first_seen, last_seen, updated_at) VALUES \
               ('agent-dead', 'connected', 0, 0, 0), \
               ('agent-unrecorded', 'connected', 0, 0, 0); \
             INSERT INTO replicas (id, started_at, heartbeat_at, lease_ms, address) \
               VALUES ('dead', 0, {DB_NOW}, 3000, NULL); \
             INSERT INTO agent_owners (uid, replica, since) VALUES ('agent-dead', 'dead', 0)"
        ))
        .await
        .unwrap();
    let status = |uid: &'static str| {
        let url = url.clone();
        async move {
            query(
                &url,
                &format!("SELECT status FROM agents WHERE uid = '{uid}'"),
            )
            .await
        }
    };
    let lease = Duration::from_secs(3);
    let b = start(&url, "b", lease).await;
    // An agent connecting to b now.
    client
        .batch_execute(&format!(
            "INSERT INTO agents (uid, status, first_seen, last_seen, updated_at) \
             VALUES ('agent-held', 'connected', {DB_NOW}, {DB_NOW}, {DB_NOW})"
        ))
        .await
        .unwrap();
    b.coordinator.record_owner("agent-held".into(), true);
    b.coordinator.flush_owners().await.unwrap();
    // At start: what no replica holds is stored disconnected; the dead
    // replica's lease is still current.
    assert_eq!(status("agent-unrecorded").await, ["disconnected"]);
    assert_eq!(status("agent-dead").await, ["connected"]);
    let held = b.coordinator.held_elsewhere(None).await.unwrap();
    assert_eq!(held, [("agent-dead".to_string(), 0)], "b sees dead's agent");
    assert_eq!(b.coordinator.count_elsewhere(0).await.unwrap(), (1, 0));
    assert_eq!(b.coordinator.count_elsewhere(1).await.unwrap(), (0, 1));

    // Once the lease runs out: not held at once, and cleared by the
    // leader within a third of the lease.
    eventually(
        lease + Duration::from_secs(1),
        "dead's lease over",
        || async { b.coordinator.held_elsewhere(None).await.unwrap().is_empty() },
    )
    .await;
    eventually(lease, "dead's agent stored disconnected", || async {
        status("agent-dead").await == ["disconnected"]
    })
    .await;
    assert!(b.coordinator.is_leader());
    assert!(
        query(&url, "SELECT uid FROM agent_owners WHERE replica = 'dead'")
            .await
            .is_empty()
    );
    assert_eq!(query(&url, "SELECT id FROM replicas").await, ["b"]);
    assert_eq!(status("agent-held").await, ["connected"], "b holds it");
    drop(b);
}
