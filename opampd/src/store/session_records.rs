//! The shared session records of plain-HTTP agents, on both backends: the
//! same calls, the same outcomes.

use super::agents::{RecordWrite, SessionRecord, SessionWrite};
use super::users::AuditEntry;
use super::{AgentPatch, Backend};
use std::collections::BTreeMap;

fn record(uid: &str, version: i64, sequence_num: u64) -> SessionRecord {
    SessionRecord {
        uid: uid.into(),
        version,
        row_changes: 1,
        replica: format!("replica-{version}"),
        sequence_num,
        restart_pending: false,
        disconnected: false,
        state: format!(r#"{{"offered":"{version}"}}"#),
        updated_at: 1_000 * version,
    }
}

fn write(record: SessionRecord, expected: i64, row_changed: bool) -> SessionWrite {
    SessionWrite {
        record,
        expected,
        row_changed,
        restart_sent: false,
    }
}

fn audit() -> AuditEntry {
    AuditEntry::ok("tester", "agent.test", None, None, serde_json::json!({}))
}

/// Every rule of the record, on one backend.
async fn exercise(store: &dyn Backend) {
    let uid = "0190a0a0-0000-7000-8000-000000000001";
    assert_eq!(store.session_record(uid).await.unwrap(), None);

    // The first poll creates it, counting its own change of the row; only
    // where nothing is stored.
    let mut first = record(uid, 1, 0);
    assert_eq!(
        store
            .write_session_record(write(first.clone(), 0, true))
            .await
            .unwrap(),
        RecordWrite::Written { row_changes: 2 }
    );
    first.row_changes = 2;
    assert_eq!(store.session_record(uid).await.unwrap(), Some(first));
    assert_eq!(
        store
            .write_session_record(write(record(uid, 1, 9), 0, true))
            .await
            .unwrap(),
        RecordWrite::Conflict,
        "a second first write"
    );

    // The next poll writes it at the version it read; a poll that read an
    // older version (a retry racing its original) does not.
    assert_eq!(
        store
            .write_session_record(write(record(uid, 2, 1), 1, false))
            .await
            .unwrap(),
        RecordWrite::Written { row_changes: 2 }
    );
    assert_eq!(
        store
            .write_session_record(write(record(uid, 2, 7), 1, true))
            .await
            .unwrap(),
        RecordWrite::Conflict
    );
    let stored = store.session_record(uid).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.sequence_num), (2, 1));
    assert_eq!(stored.replica, "replica-2");
    assert_eq!(stored.state, r#"{"offered":"2"}"#);

    // A restart waits in a fresh, connected record only.
    assert!(!store.request_session_restart(uid, 2_001).await.unwrap());
    assert!(store.request_session_restart(uid, 2_000).await.unwrap());
    assert!(
        !store
            .request_session_restart("0190a0a0-0000-7000-8000-00000000ffff", 0)
            .await
            .unwrap(),
        "no record"
    );
    // A poll that did not carry it keeps it; the one that did clears it.
    store
        .write_session_record(write(record(uid, 3, 2), 2, false))
        .await
        .unwrap();
    assert!(
        store
            .session_record(uid)
            .await
            .unwrap()
            .unwrap()
            .restart_pending
    );
    let mut sent = write(record(uid, 4, 3), 3, true);
    sent.restart_sent = true;
    assert_eq!(
        store.write_session_record(sent).await.unwrap(),
        RecordWrite::Written { row_changes: 3 }
    );
    assert!(
        !store
            .session_record(uid)
            .await
            .unwrap()
            .unwrap()
            .restart_pending
    );

    // A label change counts as a change of the row.
    let mut patch = AgentPatch::new(uid);
    patch.status = Some("connected");
    patch.last_seen = Some(1);
    store.queue_agent(patch);
    assert!(store.flush().await);
    let changes = BTreeMap::from([("env".to_string(), Some("prod".to_string()))]);
    store.patch_labels(uid, changes, audit()).await.unwrap();
    let stored = store.session_record(uid).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.row_changes), (4, 4));

    // A disconnected agent gets no restart; a deleted one has no record.
    let mut gone = record(uid, 5, 4);
    gone.disconnected = true;
    store
        .write_session_record(write(gone, 4, false))
        .await
        .unwrap();
    assert!(!store.request_session_restart(uid, 0).await.unwrap());
    assert!(store.delete_agent(uid, audit()).await.unwrap());
    assert_eq!(store.session_record(uid).await.unwrap(), None);
}

#[tokio::test]
async fn session_records_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opamp.db");
    let store = tokio::task::spawn_blocking(move || {
        super::Store::open(
            &path,
            &super::postgres::tests::options(),
            super::postgres::tests::metrics(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    exercise(&*store).await;
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn session_records_on_postgres() {
    let Some(cluster) = super::postgres::tests::cluster("session_records_on_postgres") else {
        return;
    };
    let url = super::postgres::tests::fresh_database(&cluster).await;
    let store = super::postgres::Postgres::open(
        &url,
        &super::postgres::tests::options(),
        super::postgres::tests::metrics(),
    )
    .await
    .unwrap();
    exercise(&store).await;
}
