//! The SQL of configurations, their immutable versions, and rollouts with
//! their per-agent batch assignment.

use super::staged;
use crate::selector::Selector;
use crate::store::configs::CONFIGURATION_ROLLOUTS;
use crate::store::configs::{
    ConfigRow, Listed, RolloutAgent, RolloutRow, StoredAgent, TargetRow, VersionRow,
};
use anyhow::Result;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

const CONFIG_COLUMNS: &str =
    "name, selector, description, content_type, latest_version, created_at, updated_at, created_by";

fn config_row(r: &Row<'_>) -> rusqlite::Result<ConfigRow> {
    Ok(ConfigRow {
        name: r.get(0)?,
        selector: r.get(1)?,
        description: r.get(2)?,
        content_type: r.get(3)?,
        latest_version: r.get::<_, i64>(4)? as u64,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        created_by: r.get(7)?,
    })
}

const VERSION_COLUMNS: &str =
    "name, version, hash, content_type, body, created_at, created_by, note";

fn version_row(r: &Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        name: r.get(0)?,
        version: r.get::<_, i64>(1)? as u64,
        hash: r.get(2)?,
        content_type: r.get(3)?,
        body: r.get(4)?,
        created_at: r.get(5)?,
        created_by: r.get(6)?,
        note: r.get(7)?,
    })
}

const ROLLOUT_COLUMNS: &str =
    "id, name, version, hash, state, batch_size, max_failures, released_batches,
    previous_version, reason, started_at, updated_at, started_by, selector, force, batch_timeout_ms,
    batch_started_at";

fn rollout_row(r: &Row<'_>) -> rusqlite::Result<RolloutRow> {
    Ok(RolloutRow {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get::<_, i64>(2)? as u64,
        hash: r.get(3)?,
        state: r.get(4)?,
        batch_size: r.get::<_, i64>(5)? as u64,
        max_failures: r.get::<_, i64>(6)? as u64,
        released_batches: r.get::<_, i64>(7)? as u64,
        previous_version: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        reason: r.get(9)?,
        started_at: r.get(10)?,
        updated_at: r.get(11)?,
        started_by: r.get(12)?,
        selector: r.get(13)?,
        force: r.get::<_, i64>(14)? != 0,
        batch_timeout_ms: r.get::<_, i64>(15)? as u64,
        batch_started_at: r.get(16)?,
    })
}

pub fn get(c: &Connection, name: &str) -> Result<Option<ConfigRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {CONFIG_COLUMNS} FROM configurations WHERE name = ?1"
    ))?;
    Ok(stmt.query_row([name], config_row).optional()?)
}

/// One page of configurations by name; plus the total.
pub fn list(c: &Connection, after: Option<&str>, limit: usize) -> Result<(Vec<Listed>, u64)> {
    let total: i64 = c.query_row("SELECT COUNT(*) FROM configurations", [], |r| r.get(0))?;
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {}, v.hash,
            (SELECT r.version FROM rollouts r WHERE r.name = c.name ORDER BY r.id DESC LIMIT 1),
            (SELECT r.selector FROM rollouts r WHERE r.name = c.name ORDER BY r.id DESC LIMIT 1)
         FROM configurations c JOIN config_versions v ON v.name = c.name AND v.version = c.latest_version
         WHERE c.name > ?1 ORDER BY c.name LIMIT ?2",
        CONFIG_COLUMNS
            .split(", ")
            .map(|col| format!("c.{col}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    let rows = stmt
        .query_map(params![after.unwrap_or(""), limit as i64], |r| {
            Ok(Listed {
                row: config_row(r)?,
                hash: r.get(8)?,
                rolled_out: match (r.get::<_, Option<i64>>(9)?, r.get(10)?) {
                    (Some(v), Some(sel)) => Some((v as u64, sel)),
                    _ => None,
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((rows, total as u64))
}

pub fn insert(c: &Connection, row: &ConfigRow) -> Result<()> {
    c.execute(
        &format!(
            "INSERT INTO configurations ({CONFIG_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![
            row.name,
            row.selector,
            row.description,
            row.content_type,
            row.latest_version as i64,
            row.created_at,
            row.updated_at,
            row.created_by
        ],
    )?;
    Ok(())
}

/// Writes the mutable columns of a configuration row.
pub fn update(c: &Connection, row: &ConfigRow) -> Result<()> {
    c.execute(
        "UPDATE configurations SET selector = ?2, description = ?3, content_type = ?4,
            latest_version = ?5, updated_at = ?6 WHERE name = ?1",
        params![
            row.name,
            row.selector,
            row.description,
            row.content_type,
            row.latest_version as i64,
            row.updated_at
        ],
    )?;
    Ok(())
}

pub fn insert_version(c: &Connection, v: &VersionRow) -> Result<()> {
    c.execute(
        &format!("INSERT INTO config_versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            v.name,
            v.version as i64,
            v.hash,
            v.content_type,
            v.body,
            v.created_at,
            v.created_by,
            v.note
        ],
    )?;
    Ok(())
}

pub fn get_version(c: &Connection, name: &str, version: u64) -> Result<Option<VersionRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM config_versions WHERE name = ?1 AND version = ?2"
    ))?;
    Ok(stmt
        .query_row(params![name, version as i64], version_row)
        .optional()?)
}

/// Versions newest first, those below `before` if given; plus the total.
pub fn list_versions(
    c: &Connection,
    name: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<(Vec<VersionRow>, u64)> {
    let total: i64 = c.query_row(
        "SELECT COUNT(*) FROM config_versions WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?;
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM config_versions WHERE name = ?1 AND version < ?2
         ORDER BY version DESC LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(
            params![name, before.map_or(i64::MAX, |b| b as i64), limit as i64],
            version_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((rows, total as u64))
}

/// Removes a configuration with its versions and rollouts.
pub fn delete(c: &Connection, name: &str) -> Result<bool> {
    c.execute(
        "DELETE FROM rollout_agents WHERE rollout_id IN (SELECT id FROM rollouts WHERE name = ?1)",
        [name],
    )?;
    c.execute("DELETE FROM rollouts WHERE name = ?1", [name])?;
    c.execute("DELETE FROM config_versions WHERE name = ?1", [name])?;
    Ok(c.execute("DELETE FROM configurations WHERE name = ?1", [name])? > 0)
}

pub fn latest_rollout(c: &Connection, name: &str) -> Result<Option<RolloutRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE name = ?1 ORDER BY id DESC LIMIT 1"
    ))?;
    Ok(stmt.query_row([name], rollout_row).optional()?)
}

pub fn get_rollout(c: &Connection, id: i64) -> Result<Option<RolloutRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"
    ))?;
    Ok(stmt.query_row([id], rollout_row).optional()?)
}

/// Rollouts in a state, oldest first.
pub fn rollouts_in_state(c: &Connection, state: &str) -> Result<Vec<RolloutRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE state = ?1 ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([state], rollout_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Inserts a rollout and its agents (uid, batch); returns its id.
pub fn insert_rollout(c: &Connection, r: &RolloutRow, agents: &[(String, u64)]) -> Result<i64> {
    c.execute(
        "INSERT INTO rollouts (name, version, hash, state, batch_size, max_failures, released_batches,
            previous_version, reason, started_at, updated_at, started_by, selector, force,
            batch_timeout_ms, batch_started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            r.name,
            r.version as i64,
            r.hash,
            r.state,
            r.batch_size as i64,
            r.max_failures as i64,
            r.released_batches as i64,
            r.previous_version.map(|v| v as i64),
            r.reason,
            r.started_at,
            r.updated_at,
            r.started_by,
            r.selector,
            r.force as i64,
            r.batch_timeout_ms as i64,
            r.batch_started_at
        ],
    )?;
    let id = c.last_insert_rowid();
    staged::insert_agents(c, CONFIGURATION_ROLLOUTS, id, agents)?;
    Ok(id)
}

pub fn rollout_agents(c: &Connection, rollout_id: i64) -> Result<Vec<RolloutAgent>> {
    let mut stmt = c.prepare_cached(
        "SELECT ra.uid, ra.batch, a.uid, a.labels, a.identifying, a.non_identifying, a.remote_status,
                a.capabilities, a.offered,
                a.components_hash
         FROM rollout_agents ra LEFT JOIN agents a ON a.uid = ra.uid
         WHERE ra.rollout_id = ?1 ORDER BY ra.uid",
    )?;
    let rows = stmt
        .query_map([rollout_id], |r| {
            let present: Option<String> = r.get(2)?;
            Ok(RolloutAgent {
                uid: r.get(0)?,
                batch: r.get::<_, i64>(1)? as u64,
                stored: match present {
                    Some(_) => Some(StoredAgent {
                        labels: r.get(3)?,
                        identifying: r.get(4)?,
                        non_identifying: r.get(5)?,
                        remote_status: r.get(6)?,
                        capabilities: r.get::<_, i64>(7)? as u64,
                        offered: r.get(8)?,
                        components_hash: r.get(9)?,
                    }),
                    None => None,
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Stored agents that match `selector` and accept remote configuration:
/// uid and component-list hash, in uid order.
pub fn matching_agents(
    c: &Connection,
    selector: &Selector,
) -> Result<Vec<(String, Option<String>)>> {
    let (cond, params) = super::selector::condition(selector, 1);
    let cond = if cond.is_empty() {
        String::new()
    } else {
        format!(" AND {cond}")
    };
    let mut stmt = c.prepare(&format!(
        "SELECT uid, components_hash FROM agents WHERE (capabilities & {}) != 0{cond} ORDER BY uid",
        opamp_proto::caps::ACCEPTS_REMOTE_CONFIG
    ))?;
    let rows = stmt
        .query_map(params_from_iter(params.iter()), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The latest rollout of every configuration (superseded ones never are the latest).
pub fn targets(c: &Connection) -> Result<Vec<TargetRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {} FROM rollouts r JOIN configurations c ON c.name = r.name
         WHERE r.id = (SELECT MAX(id) FROM rollouts WHERE name = r.name) AND r.state != 'superseded'
         ORDER BY r.name",
        ROLLOUT_COLUMNS
            .split(',')
            .map(|col| format!("r.{}", col.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    let latest = stmt
        .query_map([], rollout_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(latest.len());
    for rollout in latest {
        let selector = rollout.selector.clone();
        let Some(current) = get_version(c, &rollout.name, rollout.version)? else {
            continue;
        };
        let previous = match rollout.previous_version {
            Some(v) => get_version(c, &rollout.name, v)?,
            None => None,
        };
        let released = staged::released(
            c,
            CONFIGURATION_ROLLOUTS,
            rollout.id,
            &rollout.state,
            rollout.released_batches,
        )?;
        out.push(TargetRow {
            name: rollout.name.clone(),
            selector,
            rollout,
            current,
            previous,
            released,
        });
    }
    Ok(out)
}
