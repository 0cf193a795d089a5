//! The backend against a real PostgreSQL: the cluster named by
//! `OPAMP_TEST_POSTGRES_URL` (scripts/test.sh starts one), a fresh database
//! per test. Without it the tests print a SKIPPED line, or fail when
//! `OPAMP_REQUIRE_TOOLS=1`.

use super::*;
use crate::metrics::Metrics;
use std::sync::atomic::AtomicU32;

fn cluster(test: &str) -> Option<String> {
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
async fn fresh_database(cluster: &str) -> DatabaseUrl {
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

fn options() -> StoreOptions {
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

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(
        Duration::from_millis(100),
        crate::replica::Replica::new(Some("unit"), "postgres"),
    ))
}

fn admin(n: u32) -> AdminBootstrap {
    AdminBootstrap {
        password_hash: format!("hash-{n}"),
        token_digest: format!("digest-{n}"),
        token_id: format!("id-{n}"),
    }
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
            .map(|(n, replica)| replica.bootstrap_admin(admin(n as u32))),
    )
    .await;
    let created: Vec<bool> = created.into_iter().map(Result::unwrap).collect();
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
    assert!(!late.bootstrap_admin(admin(9)).await.unwrap());
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
