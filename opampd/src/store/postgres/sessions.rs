//! The SQL of the shared session records of plain-HTTP agents
//! (`agent_sessions`, see [`SessionRecord`]).

use crate::store::agents::{RecordWrite, SessionRecord, SessionWrite};
use anyhow::Result;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

const COLUMNS: &str = "uid, version, row_changes, replica, sequence_num, restart_pending, \
    disconnected, state, updated_at";

fn record(r: &Row) -> SessionRecord {
    SessionRecord {
        uid: r.get(0),
        version: r.get(1),
        row_changes: r.get(2),
        replica: r.get(3),
        sequence_num: r.get::<_, i64>(4) as u64,
        restart_pending: r.get(5),
        disconnected: r.get(6),
        state: r.get(7),
        updated_at: r.get(8),
    }
}

pub async fn get(c: &impl GenericClient, uid: &str) -> Result<Option<SessionRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM agent_sessions WHERE uid = $1");
    Ok(c.query_opt(&sql, &[&uid]).await?.map(|r| record(&r)))
}

/// Writes the record if the stored version is still `write.expected` (no
/// record counts as 0), in one statement.
pub async fn write(c: &impl GenericClient, write: &SessionWrite) -> Result<RecordWrite> {
    let r = &write.record;
    let bump: i64 = write.row_changed.into();
    let row = c
        .query_opt(
            "INSERT INTO agent_sessions (uid, version, row_changes, replica, sequence_num, \
                 restart_pending, disconnected, state, updated_at) \
             VALUES ($1, $2, $3::BIGINT + $9::BIGINT, $4, $5, FALSE, $6, $7, $8) \
             ON CONFLICT (uid) DO UPDATE SET version = EXCLUDED.version, \
                 row_changes = agent_sessions.row_changes + $9, replica = EXCLUDED.replica, \
                 sequence_num = EXCLUDED.sequence_num, \
                 restart_pending = agent_sessions.restart_pending AND NOT $10, \
                 disconnected = EXCLUDED.disconnected, state = EXCLUDED.state, \
                 updated_at = EXCLUDED.updated_at \
             WHERE agent_sessions.version = $11 \
             RETURNING row_changes",
            &[
                &r.uid,
                &r.version,
                &r.row_changes,
                &r.replica,
                &(r.sequence_num as i64),
                &r.disconnected,
                &r.state,
                &r.updated_at,
                &bump,
                &write.restart_sent,
                &write.expected,
            ],
        )
        .await?;
    Ok(match row {
        Some(row) => RecordWrite::Written {
            row_changes: row.get(0),
        },
        None => RecordWrite::Conflict,
    })
}

/// Asks for a restart with the next poll of an agent whose record was
/// written at `fresh_after` or later and says it is connected; whether one is.
pub async fn request_restart(c: &impl GenericClient, uid: &str, fresh_after: i64) -> Result<bool> {
    Ok(c.execute(
        "UPDATE agent_sessions SET restart_pending = TRUE \
         WHERE uid = $1 AND NOT disconnected AND updated_at >= $2",
        &[&uid, &fresh_after],
    )
    .await?
        > 0)
}

/// The agent's stored row changed outside a poll (its labels): sessions
/// holding a copy reload it.
pub async fn row_changed(c: &impl GenericClient, uid: &str) -> Result<()> {
    c.execute(
        "UPDATE agent_sessions SET row_changes = row_changes + 1 WHERE uid = $1",
        &[&uid],
    )
    .await?;
    Ok(())
}

pub async fn delete(c: &impl GenericClient, uid: &str) -> Result<()> {
    c.execute("DELETE FROM agent_sessions WHERE uid = $1", &[&uid])
        .await?;
    Ok(())
}
