//! The SQL that configuration and package rollouts share: their tables
//! differ by name only ([`RolloutTables`]).

use crate::store::configs::{RolloutTables, RolloutTransition};
use anyhow::Result;
use rusqlite::{params, Connection};

/// Marks every earlier rollout of `name` superseded.
pub fn supersede(c: &Connection, tables: RolloutTables, name: &str, now: i64) -> Result<()> {
    c.execute(
        &format!(
            "UPDATE {} SET state = 'superseded', updated_at = ?2
             WHERE name = ?1 AND state != 'superseded'",
            tables.rollouts
        ),
        params![name, now],
    )?;
    Ok(())
}

/// Stores a new rollout's agents with their batch.
pub fn insert_agents(
    c: &Connection,
    tables: RolloutTables,
    rollout_id: i64,
    agents: &[(String, u64)],
) -> Result<()> {
    let mut stmt = c.prepare_cached(&format!(
        "INSERT INTO {} (rollout_id, uid, batch) VALUES (?1, ?2, ?3)",
        tables.agents
    ))?;
    for (uid, batch) in agents {
        stmt.execute(params![rollout_id, uid, *batch as i64])?;
    }
    Ok(())
}

/// Changes a rollout's progress fields if it is still in state `from`, and
/// then writes the change's audit entry; a rollout that (again) runs starts
/// its batch's time limit now. Returns whether it changed.
pub fn transition(
    c: &Connection,
    tables: RolloutTables,
    change: &RolloutTransition,
) -> Result<bool> {
    let moved = c.execute(
        &format!(
            "UPDATE {} SET state = ?3, released_batches = ?4, max_failures = ?5,
                reason = ?6, updated_at = ?7,
                batch_started_at = CASE WHEN ?3 = 'running' THEN ?7 ELSE batch_started_at END
             WHERE id = ?1 AND state = ?2",
            tables.rollouts
        ),
        params![
            change.id,
            change.from,
            change.to,
            change.released_batches as i64,
            change.max_failures as i64,
            change.reason,
            crate::store::now_ms()
        ],
    )? > 0;
    if let (true, Some(audit)) = (moved, &change.audit) {
        super::users::insert_audit(c, audit)?;
    }
    Ok(moved)
}

/// The agents of a rollout's released batches; `None` once it completed
/// (the version then reaches every agent it targets).
pub fn released(
    c: &Connection,
    tables: RolloutTables,
    rollout_id: i64,
    state: &str,
    released_batches: u64,
) -> Result<Option<Vec<String>>> {
    if state == "completed" {
        return Ok(None);
    }
    let mut stmt = c.prepare_cached(&format!(
        "SELECT uid FROM {} WHERE rollout_id = ?1 AND batch < ?2",
        tables.agents
    ))?;
    let uids = stmt
        .query_map(params![rollout_id, released_batches as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Some(uids))
}
