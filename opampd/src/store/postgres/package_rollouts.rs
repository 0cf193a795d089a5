//! The SQL of package rollouts and their per-agent batches.

use super::packages;
use super::staged;
use crate::selector::Selector;
use crate::store::package_rollouts::PACKAGE_ROLLOUTS;
use crate::store::package_rollouts::{
    PackageRolloutAgent, PackageRolloutRow, PackageTargetRow, StoredPackageAgent,
};
use anyhow::Result;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

const COLUMNS: &str = "id, name, version, state, batch_size, max_failures, released_batches,
    previous_version, reason, started_at, updated_at, started_by, selector, batch_timeout_ms,
    batch_started_at";

fn rollout_row(r: &Row) -> PackageRolloutRow {
    PackageRolloutRow {
        id: r.get(0),
        name: r.get(1),
        version: r.get(2),
        state: r.get(3),
        batch_size: r.get::<_, i64>(4) as u64,
        max_failures: r.get::<_, i64>(5) as u64,
        released_batches: r.get::<_, i64>(6) as u64,
        previous_version: r.get(7),
        reason: r.get(8),
        started_at: r.get(9),
        updated_at: r.get(10),
        started_by: r.get(11),
        selector: r.get(12),
        batch_timeout_ms: r.get::<_, i64>(13) as u64,
        batch_started_at: r.get(14),
    }
}

pub async fn latest(c: &impl GenericClient, name: &str) -> Result<Option<PackageRolloutRow>> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM package_rollouts WHERE name = $1 ORDER BY id DESC LIMIT 1"
            ),
            &[&name],
        )
        .await?;
    Ok(row.as_ref().map(rollout_row))
}

pub async fn get(c: &impl GenericClient, id: i64) -> Result<Option<PackageRolloutRow>> {
    let row = c
        .query_opt(
            &format!("SELECT {COLUMNS} FROM package_rollouts WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(rollout_row))
}

pub async fn in_state(c: &impl GenericClient, state: &str) -> Result<Vec<PackageRolloutRow>> {
    let rows = c
        .query(
            &format!("SELECT {COLUMNS} FROM package_rollouts WHERE state = $1 ORDER BY id"),
            &[&state],
        )
        .await?;
    Ok(rows.iter().map(rollout_row).collect())
}

/// Inserts a rollout and its agents (uid, batch); returns its id.
pub async fn insert(
    c: &impl GenericClient,
    r: &PackageRolloutRow,
    agents: &[(String, u64)],
) -> Result<i64> {
    let id: i64 = c
        .query_one(
            "INSERT INTO package_rollouts (name, version, state, batch_size, max_failures,
                released_batches, previous_version, reason, started_at, updated_at, started_by,
                selector, batch_timeout_ms, batch_started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             RETURNING id",
            &[
                &r.name,
                &r.version,
                &r.state,
                &(r.batch_size as i64),
                &(r.max_failures as i64),
                &(r.released_batches as i64),
                &r.previous_version,
                &r.reason,
                &r.started_at,
                &r.updated_at,
                &r.started_by,
                &r.selector,
                &(r.batch_timeout_ms as i64),
                &r.batch_started_at,
            ],
        )
        .await?
        .get(0);
    staged::insert_agents(c, PACKAGE_ROLLOUTS, id, agents).await?;
    Ok(id)
}

fn stored_agent(r: &Row, first: usize) -> Option<StoredPackageAgent> {
    r.get::<_, Option<String>>(first)?;
    Some(StoredPackageAgent {
        labels: r.get(first + 1),
        identifying: r.get(first + 2),
        non_identifying: r.get(first + 3),
        capabilities: r.get::<_, i64>(first + 4) as u64,
        package_statuses: r.get(first + 5),
    })
}

const AGENT_COLUMNS: &str =
    "agents.uid, agents.labels, agents.identifying, agents.non_identifying, agents.capabilities,
    agents.package_statuses";

pub async fn agents(c: &impl GenericClient, rollout_id: i64) -> Result<Vec<PackageRolloutAgent>> {
    let rows = c
        .query(
            &format!(
                "SELECT ra.uid, ra.batch, {AGENT_COLUMNS}
                 FROM package_rollout_agents ra LEFT JOIN agents ON agents.uid = ra.uid
                 WHERE ra.rollout_id = $1 ORDER BY ra.uid"
            ),
            &[&rollout_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PackageRolloutAgent {
            uid: r.get(0),
            batch: r.get::<_, i64>(1) as u64,
            stored: stored_agent(r, 2),
        })
        .collect())
}

/// Stored agents that match `selector`, whatever their capabilities, in uid order.
pub async fn candidates(
    c: &impl GenericClient,
    selector: &Selector,
) -> Result<Vec<(String, StoredPackageAgent)>> {
    let (cond, params) = super::selector::condition(selector, 1);
    let cond = if cond.is_empty() {
        String::new()
    } else {
        format!(" WHERE {cond}")
    };
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let rows = c
        .query(
            &format!("SELECT {AGENT_COLUMNS} FROM agents{cond} ORDER BY agents.uid"),
            &refs,
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get(0), stored_agent(r, 0)?)))
        .collect())
}

/// The latest rollout of every package that is not superseded, with the
/// catalogue versions it names (a rollout whose version was deleted from
/// the catalogue is left out).
pub async fn targets(c: &impl GenericClient) -> Result<Vec<PackageTargetRow>> {
    let columns = COLUMNS
        .split(',')
        .map(|col| format!("r.{}", col.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let latest: Vec<PackageRolloutRow> = c
        .query(
            &format!(
                "SELECT {columns} FROM package_rollouts r
                 WHERE r.id = (SELECT MAX(id) FROM package_rollouts WHERE name = r.name)
                   AND r.state != 'superseded'
                 ORDER BY r.name"
            ),
            &[],
        )
        .await?
        .iter()
        .map(rollout_row)
        .collect();
    let mut out = Vec::with_capacity(latest.len());
    for rollout in latest {
        let Some(current) = packages::get(c, &rollout.name, &rollout.version).await? else {
            continue;
        };
        let previous = match &rollout.previous_version {
            Some(v) => packages::get(c, &rollout.name, v).await?,
            None => None,
        };
        let released = staged::released(
            c,
            PACKAGE_ROLLOUTS,
            rollout.id,
            &rollout.state,
            rollout.released_batches,
        )
        .await?;
        out.push(PackageTargetRow {
            rollout,
            current,
            previous,
            released,
        });
    }
    Ok(out)
}
