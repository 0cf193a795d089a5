//! The SQL that configuration and package rollouts share: their tables
//! differ by name only ([`RolloutTables`]).

use crate::store::configs::{RolloutTables, RolloutTransition};
use anyhow::Result;
use deadpool_postgres::GenericClient;

/// Marks every earlier rollout of `name` superseded.
pub async fn supersede(
    c: &impl GenericClient,
    tables: RolloutTables,
    name: &str,
    now: i64,
) -> Result<()> {
    c.execute(
        &format!(
            "UPDATE {} SET state = 'superseded', updated_at = $2
             WHERE name = $1 AND state != 'superseded'",
            tables.rollouts
        ),
        &[&name, &now],
    )
    .await?;
    Ok(())
}

/// Stores a new rollout's agents with their batch, in one statement.
pub async fn insert_agents(
    c: &impl GenericClient,
    tables: RolloutTables,
    rollout_id: i64,
    agents: &[(String, u64)],
) -> Result<()> {
    let uids: Vec<&str> = agents.iter().map(|(uid, _)| uid.as_str()).collect();
    let batches: Vec<i64> = agents.iter().map(|(_, batch)| *batch as i64).collect();
    c.execute(
        &format!(
            "INSERT INTO {} (rollout_id, uid, batch)
             SELECT $1, uid, batch FROM UNNEST($2::text[], $3::bigint[]) AS a(uid, batch)",
            tables.agents
        ),
        &[&rollout_id, &uids, &batches],
    )
    .await?;
    Ok(())
}

/// Changes a rollout's progress fields if it is still in state `from`, and
/// then writes the change's audit entry; a rollout that (again) runs starts
/// its batch's time limit now. Returns whether it changed.
pub async fn transition(
    c: &impl GenericClient,
    tables: RolloutTables,
    change: &RolloutTransition,
) -> Result<bool> {
    let moved = c
        .execute(
            &format!(
                "UPDATE {} SET state = $3::text, released_batches = $4, max_failures = $5,
                reason = $6, updated_at = $7,
                batch_started_at = CASE WHEN $3::text = 'running' THEN $7 ELSE batch_started_at END
             WHERE id = $1 AND state = $2",
                tables.rollouts
            ),
            &[
                &change.id,
                &change.from,
                &change.to,
                &(change.released_batches as i64),
                &(change.max_failures as i64),
                &change.reason,
                &crate::store::now_ms(),
            ],
        )
        .await?
        > 0;
    if let (true, Some(audit)) = (moved, &change.audit) {
        super::users::insert_audit(c, audit).await?;
    }
    Ok(moved)
}

/// The agents of a rollout's released batches; `None` once it completed
/// (the version then reaches every agent it targets).
pub async fn released(
    c: &impl GenericClient,
    tables: RolloutTables,
    rollout_id: i64,
    state: &str,
    released_batches: u64,
) -> Result<Option<Vec<String>>> {
    if state == "completed" {
        return Ok(None);
    }
    let rows = c
        .query(
            &format!(
                "SELECT uid FROM {} WHERE rollout_id = $1 AND batch < $2",
                tables.agents
            ),
            &[&rollout_id, &(released_batches as i64)],
        )
        .await?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}
