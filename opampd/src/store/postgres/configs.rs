//! The SQL of configurations, their immutable versions, and rollouts with
//! their per-agent batch assignment.

use super::staged;
use crate::store::configs::CONFIGURATION_ROLLOUTS;
use crate::store::configs::{
    ConfigRow, Listed, RolloutAgent, RolloutRow, StoredAgent, TargetRow, VersionRow,
};
use anyhow::Result;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

const CONFIG_COLUMNS: &str =
    "name, selector, description, content_type, latest_version, created_at, updated_at, created_by";

fn config_row(r: &Row) -> ConfigRow {
    ConfigRow {
        name: r.get(0),
        selector: r.get(1),
        description: r.get(2),
        content_type: r.get(3),
        latest_version: r.get::<_, i64>(4) as u64,
        created_at: r.get(5),
        updated_at: r.get(6),
        created_by: r.get(7),
    }
}

const VERSION_COLUMNS: &str =
    "name, version, hash, content_type, body, created_at, created_by, note";

fn version_row(r: &Row) -> VersionRow {
    VersionRow {
        name: r.get(0),
        version: r.get::<_, i64>(1) as u64,
        hash: r.get(2),
        content_type: r.get(3),
        body: r.get(4),
        created_at: r.get(5),
        created_by: r.get(6),
        note: r.get(7),
    }
}

const ROLLOUT_COLUMNS: &str =
    "id, name, version, hash, state, batch_size, max_failures, released_batches,
    previous_version, reason, started_at, updated_at, started_by, selector, force, batch_timeout_ms,
    batch_started_at";

fn rollout_row(r: &Row) -> RolloutRow {
    RolloutRow {
        id: r.get(0),
        name: r.get(1),
        version: r.get::<_, i64>(2) as u64,
        hash: r.get(3),
        state: r.get(4),
        batch_size: r.get::<_, i64>(5) as u64,
        max_failures: r.get::<_, i64>(6) as u64,
        released_batches: r.get::<_, i64>(7) as u64,
        previous_version: r.get::<_, Option<i64>>(8).map(|v| v as u64),
        reason: r.get(9),
        started_at: r.get(10),
        updated_at: r.get(11),
        started_by: r.get(12),
        selector: r.get(13),
        force: r.get(14),
        batch_timeout_ms: r.get::<_, i64>(15) as u64,
        batch_started_at: r.get(16),
    }
}

pub async fn get(c: &impl GenericClient, name: &str) -> Result<Option<ConfigRow>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {CONFIG_COLUMNS} FROM configurations WHERE name = $1"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&name]).await?.as_ref().map(config_row))
}

/// One page of configurations by name; plus the total.
pub async fn list(
    c: &impl GenericClient,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Listed>, u64)> {
    let total: i64 = c
        .query_one("SELECT COUNT(*) FROM configurations", &[])
        .await?
        .get(0);
    let columns = CONFIG_COLUMNS
        .split(", ")
        .map(|col| format!("c.{col}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = c
        .query(
            &format!(
                "SELECT {columns}, v.hash, r.version, r.selector
                 FROM configurations c
                 JOIN config_versions v ON v.name = c.name AND v.version = c.latest_version
                 LEFT JOIN LATERAL (SELECT version, selector FROM rollouts
                     WHERE rollouts.name = c.name ORDER BY id DESC LIMIT 1) r ON TRUE
                 WHERE c.name > $1 ORDER BY c.name LIMIT $2"
            ),
            &[&after.unwrap_or(""), &(limit as i64)],
        )
        .await?;
    let listed = rows
        .iter()
        .map(|r| Listed {
            row: config_row(r),
            hash: r.get(8),
            rolled_out: match (r.get::<_, Option<i64>>(9), r.get::<_, Option<String>>(10)) {
                (Some(v), Some(sel)) => Some((v as u64, sel)),
                _ => None,
            },
        })
        .collect();
    Ok((listed, total as u64))
}

pub async fn insert(c: &impl GenericClient, row: &ConfigRow) -> Result<()> {
    c.execute(
        &format!(
            "INSERT INTO configurations ({CONFIG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        &[
            &row.name,
            &row.selector,
            &row.description,
            &row.content_type,
            &(row.latest_version as i64),
            &row.created_at,
            &row.updated_at,
            &row.created_by,
        ],
    )
    .await?;
    Ok(())
}

/// Writes the mutable columns of a configuration row.
pub async fn update(c: &impl GenericClient, row: &ConfigRow) -> Result<()> {
    c.execute(
        "UPDATE configurations SET selector = $2, description = $3, content_type = $4,
            latest_version = $5, updated_at = $6 WHERE name = $1",
        &[
            &row.name,
            &row.selector,
            &row.description,
            &row.content_type,
            &(row.latest_version as i64),
            &row.updated_at,
        ],
    )
    .await?;
    Ok(())
}

pub async fn insert_version(c: &impl GenericClient, v: &VersionRow) -> Result<()> {
    c.execute(
        &format!(
            "INSERT INTO config_versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        &[
            &v.name,
            &(v.version as i64),
            &v.hash,
            &v.content_type,
            &v.body,
            &v.created_at,
            &v.created_by,
            &v.note,
        ],
    )
    .await?;
    Ok(())
}

pub async fn get_version(
    c: &impl GenericClient,
    name: &str,
    version: u64,
) -> Result<Option<VersionRow>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM config_versions WHERE name = $1 AND version = $2"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&name, &(version as i64)])
        .await?
        .as_ref()
        .map(version_row))
}

/// Versions newest first, those below `before` if given; plus the total.
pub async fn list_versions(
    c: &impl GenericClient,
    name: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<(Vec<VersionRow>, u64)> {
    let total: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM config_versions WHERE name = $1",
            &[&name],
        )
        .await?
        .get(0);
    let rows = c
        .query(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM config_versions WHERE name = $1 AND version < $2
                 ORDER BY version DESC LIMIT $3"
            ),
            &[
                &name,
                &before.map_or(i64::MAX, |b| b as i64),
                &(limit as i64),
            ],
        )
        .await?;
    Ok((rows.iter().map(version_row).collect(), total as u64))
}

/// Removes a configuration with its versions and rollouts.
pub async fn delete(c: &impl GenericClient, name: &str) -> Result<bool> {
    c.execute(
        "DELETE FROM rollout_agents WHERE rollout_id IN (SELECT id FROM rollouts WHERE name = $1)",
        &[&name],
    )
    .await?;
    c.execute("DELETE FROM rollouts WHERE name = $1", &[&name])
        .await?;
    c.execute("DELETE FROM config_versions WHERE name = $1", &[&name])
        .await?;
    Ok(
        c.execute("DELETE FROM configurations WHERE name = $1", &[&name])
            .await?
            > 0,
    )
}

pub async fn latest_rollout(c: &impl GenericClient, name: &str) -> Result<Option<RolloutRow>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE name = $1 ORDER BY id DESC LIMIT 1"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&name])
        .await?
        .as_ref()
        .map(rollout_row))
}

pub async fn get_rollout(c: &impl GenericClient, id: i64) -> Result<Option<RolloutRow>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&id]).await?.as_ref().map(rollout_row))
}

/// Rollouts in a state, oldest first.
pub async fn rollouts_in_state(c: &impl GenericClient, state: &str) -> Result<Vec<RolloutRow>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE state = $1 ORDER BY id"
        ))
        .await?;
    Ok(c.query(&stmt, &[&state])
        .await?
        .iter()
        .map(rollout_row)
        .collect())
}

/// Inserts a rollout and its agents (uid, batch); returns its id.
pub async fn insert_rollout(
    c: &impl GenericClient,
    r: &RolloutRow,
    agents: &[(String, u64)],
) -> Result<i64> {
    let id: i64 = c
        .query_one(
            "INSERT INTO rollouts (name, version, hash, state, batch_size, max_failures, released_batches,
                previous_version, reason, started_at, updated_at, started_by, selector, force,
                batch_timeout_ms, batch_started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             RETURNING id",
            &[
                &r.name,
                &(r.version as i64),
                &r.hash,
                &r.state,
                &(r.batch_size as i64),
                &(r.max_failures as i64),
                &(r.released_batches as i64),
                &r.previous_version.map(|v| v as i64),
                &r.reason,
                &r.started_at,
                &r.updated_at,
                &r.started_by,
                &r.selector,
                &r.force,
                &(r.batch_timeout_ms as i64),
                &r.batch_started_at,
            ],
        )
        .await?
        .get(0);
    staged::insert_agents(c, CONFIGURATION_ROLLOUTS, id, agents).await?;
    Ok(id)
}

pub async fn rollout_agents(c: &impl GenericClient, rollout_id: i64) -> Result<Vec<RolloutAgent>> {
    let rows = c
        .query(
            "SELECT ra.uid, ra.batch, a.uid, a.labels, a.identifying, a.non_identifying, a.remote_status,
                    a.capabilities, a.offered, a.components_hash
             FROM rollout_agents ra LEFT JOIN agents a ON a.uid = ra.uid
             WHERE ra.rollout_id = $1 ORDER BY ra.uid",
            &[&rollout_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RolloutAgent {
            uid: r.get(0),
            batch: r.get::<_, i64>(1) as u64,
            stored: r.get::<_, Option<String>>(2).map(|_| StoredAgent {
                labels: r.get(3),
                identifying: r.get(4),
                non_identifying: r.get(5),
                remote_status: r.get(6),
                capabilities: r.get::<_, i64>(7) as u64,
                offered: r.get(8),
                components_hash: r.get(9),
            }),
        })
        .collect())
}

/// The latest rollout of every configuration (superseded ones never are the latest).
pub async fn targets(c: &impl GenericClient) -> Result<Vec<TargetRow>> {
    let columns = ROLLOUT_COLUMNS
        .split(',')
        .map(|col| format!("r.{}", col.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let latest: Vec<RolloutRow> = c
        .query(
            &format!(
                "SELECT {columns} FROM rollouts r JOIN configurations c ON c.name = r.name
                 WHERE r.id = (SELECT MAX(id) FROM rollouts WHERE name = r.name) AND r.state != 'superseded'
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
        let Some(current) = get_version(c, &rollout.name, rollout.version).await? else {
            continue;
        };
        let previous = match rollout.previous_version {
            Some(v) => get_version(c, &rollout.name, v).await?,
            None => None,
        };
        let released = staged::released(
            c,
            CONFIGURATION_ROLLOUTS,
            rollout.id,
            &rollout.state,
            rollout.released_batches,
        )
        .await?;
        out.push(TargetRow {
            name: rollout.name.clone(),
            selector: rollout.selector.clone(),
            rollout,
            current,
            previous,
            released,
        });
    }
    Ok(out)
}
