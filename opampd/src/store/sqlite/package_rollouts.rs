//! The SQL of package rollouts and their per-agent batches.

use super::packages;
use super::staged;
use crate::selector::Selector;
use crate::store::package_rollouts::PACKAGE_ROLLOUTS;
use crate::store::package_rollouts::{
    PackageRolloutAgent, PackageRolloutRow, PackageTargetRow, StoredPackageAgent,
};
use anyhow::Result;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

const COLUMNS: &str = "id, name, version, state, batch_size, max_failures, released_batches,
    previous_version, reason, started_at, updated_at, started_by, selector, batch_timeout_ms,
    batch_started_at";

fn rollout_row(r: &Row<'_>) -> rusqlite::Result<PackageRolloutRow> {
    Ok(PackageRolloutRow {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        state: r.get(3)?,
        batch_size: r.get::<_, i64>(4)? as u64,
        max_failures: r.get::<_, i64>(5)? as u64,
        released_batches: r.get::<_, i64>(6)? as u64,
        previous_version: r.get(7)?,
        reason: r.get(8)?,
        started_at: r.get(9)?,
        updated_at: r.get(10)?,
        started_by: r.get(11)?,
        selector: r.get(12)?,
        batch_timeout_ms: r.get::<_, i64>(13)? as u64,
        batch_started_at: r.get(14)?,
    })
}

pub fn latest(c: &Connection, name: &str) -> Result<Option<PackageRolloutRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM package_rollouts WHERE name = ?1 ORDER BY id DESC LIMIT 1"
    ))?;
    Ok(stmt.query_row([name], rollout_row).optional()?)
}

pub fn get(c: &Connection, id: i64) -> Result<Option<PackageRolloutRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM package_rollouts WHERE id = ?1"
    ))?;
    Ok(stmt.query_row([id], rollout_row).optional()?)
}

pub fn in_state(c: &Connection, state: &str) -> Result<Vec<PackageRolloutRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM package_rollouts WHERE state = ?1 ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([state], rollout_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Inserts a rollout and its agents (uid, batch); returns its id.
pub fn insert(c: &Connection, r: &PackageRolloutRow, agents: &[(String, u64)]) -> Result<i64> {
    c.execute(
        "INSERT INTO package_rollouts (name, version, state, batch_size, max_failures,
            released_batches, previous_version, reason, started_at, updated_at, started_by,
            selector, batch_timeout_ms, batch_started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            r.name,
            r.version,
            r.state,
            r.batch_size as i64,
            r.max_failures as i64,
            r.released_batches as i64,
            r.previous_version,
            r.reason,
            r.started_at,
            r.updated_at,
            r.started_by,
            r.selector,
            r.batch_timeout_ms as i64,
            r.batch_started_at
        ],
    )?;
    let id = c.last_insert_rowid();
    staged::insert_agents(c, PACKAGE_ROLLOUTS, id, agents)?;
    Ok(id)
}

const AGENT_COLUMNS: &str =
    "a.uid, a.labels, a.identifying, a.non_identifying, a.capabilities, a.package_statuses";

fn stored_agent(r: &Row<'_>, first: usize) -> rusqlite::Result<Option<StoredPackageAgent>> {
    let present: Option<String> = r.get(first)?;
    if present.is_none() {
        return Ok(None);
    }
    Ok(Some(StoredPackageAgent {
        labels: r.get(first + 1)?,
        identifying: r.get(first + 2)?,
        non_identifying: r.get(first + 3)?,
        capabilities: r.get::<_, i64>(first + 4)? as u64,
        package_statuses: r.get(first + 5)?,
    }))
}

pub fn agents(c: &Connection, rollout_id: i64) -> Result<Vec<PackageRolloutAgent>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT ra.uid, ra.batch, {AGENT_COLUMNS}
         FROM package_rollout_agents ra LEFT JOIN agents a ON a.uid = ra.uid
         WHERE ra.rollout_id = ?1 ORDER BY ra.uid"
    ))?;
    let rows = stmt
        .query_map([rollout_id], |r| {
            Ok(PackageRolloutAgent {
                uid: r.get(0)?,
                batch: r.get::<_, i64>(1)? as u64,
                stored: stored_agent(r, 2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Stored agents that match `selector`, whatever their capabilities, in uid order.
pub fn candidates(
    c: &Connection,
    selector: &Selector,
) -> Result<Vec<(String, StoredPackageAgent)>> {
    let (cond, params) = super::selector::condition(selector, 1);
    let cond = if cond.is_empty() {
        String::new()
    } else {
        format!(" WHERE {cond}")
    };
    let mut stmt = c.prepare(&format!(
        "SELECT {} FROM agents{cond} ORDER BY uid",
        AGENT_COLUMNS.replace("a.", "")
    ))?;
    let rows = stmt
        .query_map(params_from_iter(params.iter()), |r| {
            Ok((r.get(0)?, stored_agent(r, 0)?))
        })?
        .filter_map(|row| match row {
            Ok((uid, Some(agent))) => Some(Ok((uid, agent))),
            Ok((_, None)) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The latest rollout of every package that is not superseded, with the
/// catalogue versions it names (a rollout whose version was deleted from
/// the catalogue is left out).
pub fn targets(c: &Connection) -> Result<Vec<PackageTargetRow>> {
    let columns = COLUMNS
        .split(',')
        .map(|col| format!("r.{}", col.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {columns} FROM package_rollouts r
         WHERE r.id = (SELECT MAX(id) FROM package_rollouts WHERE name = r.name)
           AND r.state != 'superseded'
         ORDER BY r.name"
    ))?;
    let latest = stmt
        .query_map([], rollout_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(latest.len());
    for rollout in latest {
        let Some(current) = packages::get(c, &rollout.name, &rollout.version)? else {
            continue;
        };
        let previous = match &rollout.previous_version {
            Some(v) => packages::get(c, &rollout.name, v)?,
            None => None,
        };
        let released = staged::released(
            c,
            PACKAGE_ROLLOUTS,
            rollout.id,
            &rollout.state,
            rollout.released_batches,
        )?;
        out.push(PackageTargetRow {
            rollout,
            current,
            previous,
            released,
        });
    }
    Ok(out)
}
