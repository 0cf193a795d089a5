//! The backend against a real PostgreSQL: the cluster named by
//! `OPAMP_TEST_POSTGRES_URL` (scripts/test.sh starts one), a fresh database
//! per test. Without it the tests print a SKIPPED line, or fail when
//! `OPAMP_REQUIRE_TOOLS=1`.

use super::*;
use crate::metrics::Metrics;
use std::sync::atomic::AtomicU32;

/// The test cluster's URL, or `None` after a SKIPPED line (a panic under
/// `OPAMP_REQUIRE_TOOLS=1`). Shared with the coordinator's tests.
pub(crate) fn cluster(test: &str) -> Option<String> {
    match std::env::var("OPAMP_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("OPAMP_REQUIRE_TOOLS").as_deref() == Ok("1") => {
            panic!("{test}: PostgreSQL is required (OPAMP_REQUIRE_TOOLS=1) but OPAMP_TEST_POSTGRES_URL is not set")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: PostgreSQL not available (OPAMP_TEST_POSTGRES_URL is not set): {test}"
            );
            None
        }
    }
}

/// Creates an empty database in the cluster; returns its checked URL.
pub(crate) async fn fresh_database(cluster: &str) -> DatabaseUrl {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "opampd_unit_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = DatabaseUrl::parse(cluster).unwrap();
    let (client, connection) = admin.config().connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = cluster.rsplit_once('/').unwrap().0;
    DatabaseUrl::parse(&format!("{base}/{name}")).unwrap()
}

pub(crate) fn options() -> StoreOptions {
    StoreOptions {
        max_open_conns: 3,
        max_idle_conns: 1,
        conn_max_lifetime: Duration::from_secs(60),
        flush_interval: Duration::from_millis(20),
        max_queued_writes: 1000,
        busy_timeout: Duration::from_secs(5),
        synchronous: "NORMAL",
    }
}

pub(crate) fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(
        Duration::from_millis(100),
        crate::replica::Replica::new(Some("unit"), "postgres"),
    ))
}

/// The first admin as opampd creates it, told apart by `n`.
fn admin(
    n: u32,
) -> (
    crate::store::users::UserRow,
    crate::store::users::TokenRow,
    crate::store::users::AuditEntry,
) {
    let now = crate::store::now_ms();
    (
        crate::store::users::UserRow {
            username: "admin".into(),
            password_hash: format!("hash-{n}"),
            role: "admin".into(),
            created_at: now,
            session_generation: now,
        },
        crate::store::users::TokenRow {
            id: format!("id-{n}"),
            name: "bootstrap".into(),
            token_hash: format!("digest-{n}"),
            role: "admin".into(),
            owner: "admin".into(),
            created_at: now,
            expires_at: None,
            revoked: false,
        },
        crate::store::users::AuditEntry::ok(
            "system",
            "user.create",
            Some("admin"),
            None,
            serde_json::json!({}),
        ),
    )
}

async fn bootstrap(db: &Postgres, n: u32) -> bool {
    use crate::store::Backend;
    let (user, token, audit) = admin(n);
    db.create_first_admin(user, token, audit).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once_and_bootstrap_once() {
    let Some(cluster) = cluster("replicas_starting_together_migrate_once_and_bootstrap_once")
    else {
        return;
    };
    let url = fresh_database(&cluster).await;
    let opts = options();
    let opened =
        futures_util::future::join_all((0..4).map(|_| Postgres::open(&url, &opts, metrics())))
            .await;
    let replicas: Vec<Postgres> = opened.into_iter().map(Result::unwrap).collect();
    let client = replicas[0].client().await.unwrap();
    let versions: Vec<i32> = client
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expected: Vec<i32> = (8..=schema::SCHEMA_VERSION as i32).collect();
    assert_eq!(versions, expected, "each migration applied once");

    let created = futures_util::future::join_all(
        replicas
            .iter()
            .enumerate()
            .map(|(n, replica)| bootstrap(replica, n as u32)),
    )
    .await;
    let created: Vec<bool> = created.into_iter().collect();
    assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
    let winner = created.iter().position(|c| *c).unwrap();
    let row = client
        .query_one(
            "SELECT u.password_hash, t.token_hash, (SELECT COUNT(*) FROM audit_log) \
             FROM users u JOIN api_tokens t ON t.owner = u.username",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), format!("hash-{winner}"));
    assert_eq!(row.get::<_, String>(1), format!("digest-{winner}"));
    assert_eq!(row.get::<_, i64>(2), 1);
    // A later start finds the admin and creates nothing.
    let late = Postgres::open(&url, &options(), metrics()).await.unwrap();
    assert!(!bootstrap(&late, 9).await);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let Some(cluster) = cluster("a_newer_schema_is_refused") else {
        return;
    };
    let url = fresh_database(&cluster).await;
    let first = Postgres::open(&url, &options(), metrics()).await.unwrap();
    first
        .client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, 0)",
            &[&(schema::SCHEMA_VERSION as i32 + 1)],
        )
        .await
        .unwrap();
    let message = match Postgres::open(&url, &options(), metrics()).await {
        Ok(_) => panic!("a newer schema was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        message.contains("is newer than this opampd supports"),
        "{message}"
    );
    assert!(
        !message.contains(
            url.config()
                .get_password()
                .map_or("-", |p| std::str::from_utf8(p).unwrap())
        ),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url =
        DatabaseUrl::parse(&format!("postgres://opampd:hunter2@127.0.0.1:{port}/opamp")).unwrap();
    let message = match Postgres::open(&url, &options(), metrics()).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        message.contains(&format!(
            "postgres://opampd:********@127.0.0.1:{port}/opamp"
        )),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

/// The backend's operations against a real PostgreSQL, as handlers call them.
mod backend {
    use super::*;
    use crate::selector::Selector;
    use crate::store::agents::{AgentPatch, ListQuery, UidFilter};
    use crate::store::configs::{
        ConfigDelete, ConfigSave, DeleteOutcome, RollbackOutcome, RolloutStart, RolloutTransition,
        SaveResult,
    };
    use crate::store::users::AuditEntry;
    use crate::store::{now_ms, Backend};

    async fn open(test: &str) -> Option<Postgres> {
        let cluster = cluster(test)?;
        let url = fresh_database(&cluster).await;
        Some(Postgres::open(&url, &options(), metrics()).await.unwrap())
    }

    fn report(uid: &str, labels_service: &str) -> AgentPatch {
        AgentPatch {
            status: Some("connected"),
            transport: Some("ws"),
            capabilities: Some(opamp_proto::caps::ACCEPTS_REMOTE_CONFIG),
            identifying: Some(format!(r#"{{"service.name":"{labels_service}"}}"#)),
            non_identifying: Some(r#"{"host.name":"h1"}"#.into()),
            last_seen: Some(now_ms()),
            sequence_num: Some(1),
            ..AgentPatch::new(uid)
        }
    }

    fn audit(action: &str) -> AuditEntry {
        AuditEntry::ok("admin", action, None, None, serde_json::json!({}))
    }

    #[tokio::test]
    async fn agent_state_is_batched_listed_labelled_and_deleted() {
        let Some(db) = open("agent_state_is_batched_listed_labelled_and_deleted").await else {
            return;
        };
        for (uid, service) in [
            ("a-1", "collector"),
            ("a-2", "collector"),
            ("b-1", "gateway"),
        ] {
            db.queue_agent(report(uid, service));
        }
        db.queue_agent(AgentPatch {
            health: Some(r#"{"healthy":true}"#.into()),
            ..AgentPatch::new("a-1")
        });
        db.queue_event(crate::store::agents::AgentEvent {
            uid: "a-1".into(),
            at: now_ms(),
            event: "connected",
            remote_addr: Some("127.0.0.1:1".into()),
            details: None,
        });
        assert!(db.flush().await, "{:?}", db.last_error());
        let a1 = db.agent("a-1").await.unwrap().unwrap();
        assert_eq!(
            (a1.status.as_str(), a1.transport.as_str()),
            ("connected", "ws")
        );
        assert_eq!(a1.health.as_deref(), Some(r#"{"healthy":true}"#));
        assert_eq!(db.count_agents().await.unwrap(), 3);
        assert_eq!(db.agent_events("a-1", 10).await.unwrap().len(), 1);

        let labels = db
            .patch_labels(
                "a-2",
                [("env".to_string(), Some("prod".to_string()))].into(),
                audit("agent.label"),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(labels["env"], "prod");
        let list = |selector: &str, uids: Option<UidFilter>, prefix: Option<&str>| ListQuery {
            selector: Selector::parse(selector).unwrap(),
            uids,
            limit: 10,
            after: None,
            uid_prefix: prefix.map(str::to_string),
        };
        let uids = |rows: Vec<crate::store::AgentRow>| -> Vec<String> {
            rows.into_iter().map(|r| r.uid).collect()
        };
        let (rows, total) = db.list_agents(list("env=prod", None, None)).await.unwrap();
        assert_eq!((uids(rows), total), (vec!["a-2".to_string()], 1));
        let (rows, _) = db
            .list_agents(list("service.name=collector,env!=prod", None, None))
            .await
            .unwrap();
        assert_eq!(uids(rows), ["a-1"]);
        let (rows, total) = db.list_agents(list("", None, Some("a-"))).await.unwrap();
        assert_eq!(
            (uids(rows), total),
            (vec!["a-1".to_string(), "a-2".to_string()], 2)
        );
        let (rows, _) = db
            .list_agents(list("", Some(UidFilter::Except(vec!["a-1".into()])), None))
            .await
            .unwrap();
        assert_eq!(uids(rows), ["a-2", "b-1"]);
        let mut page = list("", None, None);
        page.limit = 1;
        page.after = Some("a-1".into());
        let (rows, total) = db.list_agents(page).await.unwrap();
        assert_eq!((uids(rows), total), (vec!["a-2".to_string()], 3));
        let matching = db
            .matching_agents(&Selector::parse("host.name=h1").unwrap())
            .await
            .unwrap();
        assert_eq!(matching.len(), 3);

        assert!(db.delete_agent("b-1", audit("agent.delete")).await.unwrap());
        assert!(!db.delete_agent("b-1", audit("agent.delete")).await.unwrap());
        assert!(db.agent("b-1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn configurations_are_versioned_rolled_out_and_rolled_back() {
        let Some(db) = open("configurations_are_versioned_rolled_out_and_rolled_back").await else {
            return;
        };
        let save = |body: &str| ConfigSave {
            name: "otel".into(),
            content_type: "text/yaml".into(),
            body: body.into(),
            hash: crate::targeting::version_hash("text/yaml", body),
            selector: Some("env=prod".into()),
            description: None,
            actor: "admin".into(),
            remote_addr: None,
        };
        let first = db.save_configuration(save("a: 1\n")).await.unwrap();
        assert_eq!(
            (first.result, first.row.latest_version),
            (SaveResult::Created, 1)
        );
        let same = db.save_configuration(save("a: 1\n")).await.unwrap();
        assert_eq!(same.result, SaveResult::Unchanged);
        let second = db.save_configuration(save("a: 2\n")).await.unwrap();
        assert_eq!(
            (second.result, second.row.latest_version),
            (SaveResult::Updated, 2)
        );
        let (listed, total) = db.list_configurations(None, 10).await.unwrap();
        assert_eq!((listed.len(), total), (1, 1));
        let (versions, total) = db.config_versions("otel", None, 10).await.unwrap().unwrap();
        assert_eq!((versions[0].version, total), (2, 2));

        let started = db
            .start_rollout(RolloutStart {
                name: "otel".into(),
                version: 2,
                batch_size: 1,
                max_failures: 0,
                batch_timeout: 0,
                force: false,
                selector: "env=prod".into(),
                agents: vec![("a-1".into(), 0), ("a-2".into(), 1)],
                skipped: 0,
                actor: "admin".into(),
                remote_addr: None,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((started.version, started.state.as_str()), (2, "running"));
        let targets = db.targets().await.unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(
            targets[0].released.as_deref(),
            Some(&["a-1".to_string()][..])
        );
        assert_eq!(db.rollout_agents(started.id).await.unwrap().len(), 2);
        assert!(db
            .transition_rollout(RolloutTransition {
                id: started.id,
                from: "running",
                to: "completed",
                released_batches: 2,
                max_failures: 0,
                reason: None,
                audit: Some(audit("rollout.complete")),
            })
            .await
            .unwrap());
        assert_eq!(db.targets().await.unwrap()[0].released, None);
        assert!(db.rollouts_in_state("running").await.unwrap().is_empty());

        let RollbackOutcome::Saved(rolled_back) = db
            .rollback_configuration(crate::store::configs::ConfigRollback {
                name: "otel".into(),
                version: None,
                actor: "admin".into(),
                remote_addr: None,
            })
            .await
            .unwrap()
        else {
            panic!("not rolled back");
        };
        assert_eq!(rolled_back.row.latest_version, 3);
        let delete = |force| ConfigDelete {
            name: "otel".into(),
            force,
            actor: "admin".into(),
            remote_addr: None,
        };
        assert!(matches!(
            db.delete_configuration(delete(false)).await.unwrap(),
            DeleteOutcome::RolledOut(_)
        ));
        assert!(matches!(
            db.delete_configuration(delete(true)).await.unwrap(),
            DeleteOutcome::Deleted { rolled_out: true }
        ));
        assert!(db.configuration("otel").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn agent_state_survives_lost_connections_and_a_full_queue_waits() {
        let Some(db) = open("agent_state_survives_lost_connections_and_a_full_queue_waits").await
        else {
            return;
        };
        db.queue_agent(report("c-1", "collector"));
        assert!(db.flush().await);
        // Every connection of this database is cut: the next batch fails or
        // reconnects, and what it held is committed by a later one.
        let client = db.client().await.unwrap();
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        drop(client);
        db.queue_agent(AgentPatch {
            health: Some(r#"{"healthy":false}"#.into()),
            ..AgentPatch::new("c-1")
        });
        let mut committed = false;
        for _ in 0..5 {
            if db.flush().await {
                committed = true;
                break;
            }
        }
        assert!(committed, "{:?}", db.last_error());
        let row = db.agent("c-1").await.unwrap().unwrap();
        assert_eq!(row.health.as_deref(), Some(r#"{"healthy":false}"#));

        // The queue is bounded: past max_queued_writes a reservation waits, then fails.
        let held = db.reserve(1000, Duration::from_millis(10)).await.unwrap();
        assert!(!db.has_room());
        assert!(db.reserve(1, Duration::from_millis(50)).await.is_none());
        drop(held);
        assert!(db.reserve(1, Duration::from_millis(50)).await.is_some());
    }
}
