//! The SQL of the shared session records of plain-HTTP agents
//! (`agent_sessions`, see [`SessionRecord`]). Only the PostgreSQL form
//! shares sessions; the table and its queries are kept alike here.

use crate::store::agents::{RecordWrite, SessionRecord, SessionWrite};
use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension, Row};

const COLUMNS: &str = "uid, version, row_changes, replica, sequence_num, restart_pending, \
    disconnected, state, updated_at";

fn record(r: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        uid: r.get(0)?,
        version: r.get(1)?,
        row_changes: r.get(2)?,
        replica: r.get(3)?,
        sequence_num: r.get::<_, i64>(4)? as u64,
        restart_pending: r.get(5)?,
        disconnected: r.get(6)?,
        state: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

pub fn get(conn: &Connection, uid: &str) -> Result<Option<SessionRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM agent_sessions WHERE uid = ?1"
    ))?;
    Ok(stmt.query_row([uid], record).optional()?)
}

/// Writes the record if the stored version is still `write.expected` (no
/// record counts as 0), in one statement.
pub fn write(conn: &Connection, write: &SessionWrite) -> Result<RecordWrite> {
    let r = &write.record;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO agent_sessions (uid, version, row_changes, replica, sequence_num, \
             restart_pending, disconnected, state, updated_at) \
         VALUES (?1, ?2, ?3 + ?9, ?4, ?5, 0, ?6, ?7, ?8) \
         ON CONFLICT (uid) DO UPDATE SET version = excluded.version, \
             row_changes = agent_sessions.row_changes + ?9, replica = excluded.replica, \
             sequence_num = excluded.sequence_num, \
             restart_pending = agent_sessions.restart_pending AND NOT ?10, \
             disconnected = excluded.disconnected, state = excluded.state, \
             updated_at = excluded.updated_at \
         WHERE agent_sessions.version = ?11 \
         RETURNING row_changes",
    )?;
    let row_changes: Option<i64> = stmt
        .query_row(
            params![
                r.uid,
                r.version,
                r.row_changes,
                r.replica,
                r.sequence_num as i64,
                r.disconnected,
                r.state,
                r.updated_at,
                i64::from(write.row_changed),
                write.restart_sent,
                write.expected,
            ],
            |row| row.get(0),
        )
        .optional()?;
    Ok(match row_changes {
        Some(row_changes) => RecordWrite::Written { row_changes },
        None => RecordWrite::Conflict,
    })
}

/// Asks for a restart with the next poll of an agent whose record was
/// written at `fresh_after` or later and says it is connected; whether one is.
pub fn request_restart(conn: &Connection, uid: &str, fresh_after: i64) -> Result<bool> {
    Ok(conn.execute(
        "UPDATE agent_sessions SET restart_pending = 1 \
         WHERE uid = ?1 AND NOT disconnected AND updated_at >= ?2",
        params![uid, fresh_after],
    )? > 0)
}

/// The agent's stored row changed outside a poll (its labels): sessions
/// holding a copy reload it.
pub fn row_changed(conn: &Connection, uid: &str) -> Result<()> {
    conn.execute(
        "UPDATE agent_sessions SET row_changes = row_changes + 1 WHERE uid = ?1",
        [uid],
    )?;
    Ok(())
}

pub fn delete(conn: &Connection, uid: &str) -> Result<()> {
    conn.execute("DELETE FROM agent_sessions WHERE uid = ?1", [uid])?;
    Ok(())
}
