//! The SQL of agent rows: patches from sessions, connection events, and the
//! queries the API and the session layer need.

use crate::store::agents::{
    AgentEvent, AgentPatch, AgentRow, EventRow, ListQuery, LiveAgent, UidFilter,
};
use anyhow::Result;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

pub(super) fn apply_patches<'a>(
    conn: &Connection,
    patches: impl Iterator<Item = &'a AgentPatch>,
) -> rusqlite::Result<()> {
    let now = crate::store::now_ms();
    let mut stmt = conn.prepare_cached(
        "INSERT INTO agents (uid, status, transport, capabilities, identifying, non_identifying, health,
                             effective_config, effective_config_hash, remote_status, sequence_num,
                             first_seen, last_seen, updated_at, remote_addr, offered, applied,
                             connection_settings, cert_fingerprint, package_statuses)
         VALUES (?1, COALESCE(?2, 'disconnected'), COALESCE(?3, 'http'), COALESCE(?4, 0), COALESCE(?5, '{}'),
                 COALESCE(?6, '{}'), ?7, ?8, ?9, ?10, COALESCE(?11, 0), COALESCE(?12, ?16), COALESCE(?12, ?16),
                 ?16, ?14, ?15,
                 CASE WHEN json_extract(?10, '$.status') = 'applied'
                       AND json_extract(?10, '$.hash') = json_extract(?15, '$.hash') THEN ?15 END,
                 ?17, ?18, ?19)
         ON CONFLICT(uid) DO UPDATE SET
            status = COALESCE(?2, status),
            transport = COALESCE(?3, transport),
            capabilities = COALESCE(?4, capabilities),
            identifying = COALESCE(?5, identifying),
            non_identifying = COALESCE(?6, non_identifying),
            health = COALESCE(?7, health),
            effective_config = COALESCE(?8, effective_config),
            effective_config_hash = COALESCE(?9, effective_config_hash),
            remote_status = COALESCE(?10, remote_status),
            sequence_num = COALESCE(?11, sequence_num),
            last_seen = MAX(last_seen, COALESCE(?12, last_seen)),
            updated_at = COALESCE(?13, updated_at),
            remote_addr = COALESCE(?14, remote_addr),
            offered = COALESCE(?15, offered),
            connection_settings = COALESCE(?17, connection_settings),
            package_statuses = COALESCE(?19, package_statuses),
            applied = CASE WHEN (?10 IS NOT NULL OR ?15 IS NOT NULL)
                        AND json_extract(COALESCE(?10, remote_status), '$.status') = 'applied'
                        AND json_extract(COALESCE(?10, remote_status), '$.hash')
                            = json_extract(COALESCE(?15, offered), '$.hash')
                      THEN COALESCE(?15, offered) ELSE applied END,
            cert_fingerprint = COALESCE(cert_fingerprint, ?18)",
    )?;
    let mut seen = conn.prepare_cached(
        "UPDATE agents SET last_seen = MAX(last_seen, ?2), sequence_num = COALESCE(?3, sequence_num) WHERE uid = ?1",
    )?;
    let mut known = conn.prepare_cached("SELECT EXISTS(SELECT 1 FROM agents WHERE uid = ?1)")?;
    // A registration is audited in the transaction that stores the agent:
    // its first row, or its first after a deletion.
    let mut registered = conn.prepare_cached(
        "INSERT INTO audit_log (at, actor, action, target, remote_addr, outcome, details)
         VALUES (?1, 'agent', 'agent.register', ?2, ?3, 'ok',
                 json_object('transport', COALESCE(?4, 'http'),
                             'service.name', json_extract(COALESCE(?5, '{}'), '$.\"service.name\"')))",
    )?;
    for p in patches {
        if p.only_liveness() {
            // The periodic last-seen flush: a lean update, not the full upsert.
            seen.execute(params![
                p.uid,
                p.last_seen,
                p.sequence_num.map(|s| s as i64)
            ])?;
            continue;
        }
        if !known.query_row([&p.uid], |r| r.get::<_, bool>(0))? {
            registered.execute(params![
                now,
                p.uid,
                p.remote_addr,
                p.transport,
                p.identifying
            ])?;
        }
        stmt.execute(params![
            p.uid,
            p.status,
            p.transport,
            p.capabilities.map(|c| c as i64),
            p.identifying,
            p.non_identifying,
            p.health,
            p.effective_config,
            p.effective_config_hash,
            p.remote_status,
            p.sequence_num.map(|s| s as i64),
            p.last_seen,
            p.changes_state().then_some(now),
            p.remote_addr,
            p.offered,
            now,
            p.connection_settings,
            p.cert_fingerprint,
            p.package_statuses,
        ])?;
        if let Some(components) = &p.components {
            super::components::apply(conn, &p.uid, components)?;
        }
    }
    Ok(())
}

pub(super) fn insert_events(conn: &Connection, events: &[AgentEvent]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO agent_events (uid, at, event, remote_addr, details) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for e in events {
        stmt.execute(params![e.uid, e.at, e.event, e.remote_addr, e.details])?;
    }
    Ok(())
}

const COLUMNS: &str = "uid, status, transport, capabilities, identifying, non_identifying, labels, health,
    effective_config, effective_config_hash, remote_status, sequence_num, first_seen, last_seen, updated_at,
    remote_addr, offered, applied, connection_settings, components_hash, custom_capabilities,
    cert_fingerprint, package_statuses";

fn row(r: &Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        uid: r.get(0)?,
        status: r.get(1)?,
        transport: r.get(2)?,
        capabilities: r.get::<_, i64>(3)? as u64,
        identifying: r.get(4)?,
        non_identifying: r.get(5)?,
        labels: r.get(6)?,
        health: r.get(7)?,
        effective_config: r.get(8)?,
        effective_config_hash: r.get(9)?,
        remote_status: r.get(10)?,
        sequence_num: r.get::<_, i64>(11)? as u64,
        first_seen: r.get(12)?,
        last_seen: r.get(13)?,
        updated_at: r.get(14)?,
        remote_addr: r.get(15)?,
        offered: r.get(16)?,
        applied: r.get(17)?,
        connection_settings: r.get(18)?,
        components_hash: r.get(19)?,
        custom_capabilities: r.get(20)?,
        cert_fingerprint: r.get(21)?,
        package_statuses: r.get(22)?,
    })
}

pub fn get(conn: &Connection, uid: &str) -> Result<Option<AgentRow>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM agents WHERE uid = ?1"))?;
    Ok(stmt.query_row([uid], row).optional()?)
}

/// One page of agents ordered by uid, and the total matching the filters.
pub fn list(conn: &Connection, q: &ListQuery) -> Result<(Vec<AgentRow>, u64)> {
    let (sel_sql, mut params) = super::selector::condition(&q.selector, 1);
    let mut conds: Vec<String> = Vec::new();
    if !sel_sql.is_empty() {
        conds.push(sel_sql);
    }
    if let Some(filter) = &q.uids {
        let (op, uids) = match filter {
            UidFilter::Only(u) => ("IN", u),
            UidFilter::Except(u) => ("NOT IN", u),
        };
        params.push(serde_json::to_string(uids)?);
        conds.push(format!(
            "uid {op} (SELECT value FROM json_each(?{}))",
            params.len()
        ));
    }
    if let Some(prefix) = &q.uid_prefix {
        // A range on the primary key: '~' sorts after every uid character.
        params.push(prefix.clone());
        params.push(format!("{prefix}~"));
        conds.push(format!(
            "uid >= ?{} AND uid < ?{}",
            params.len() - 1,
            params.len()
        ));
    }
    let filter = if conds.is_empty() {
        "1".to_string()
    } else {
        conds.join(" AND ")
    };
    let total: i64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM agents WHERE {filter}"))?
        .query_row(params_from_iter(params.iter()), |r| r.get(0))?;
    let mut page_params = params.clone();
    let mut page_filter = filter;
    if let Some(after) = &q.after {
        page_params.push(after.clone());
        page_filter = format!("{page_filter} AND uid > ?{}", page_params.len());
    }
    page_params.push(q.limit.to_string());
    let sql = format!(
        "SELECT {COLUMNS} FROM agents WHERE {page_filter} ORDER BY uid LIMIT CAST(?{} AS INTEGER)",
        page_params.len()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(page_params.iter()), row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((rows, total as u64))
}

/// How many agents the inventory holds.
pub fn count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM agents")?
        .query_row([], |r| r.get(0))?;
    Ok(n as u64)
}

/// After a restore: the restored rows' statuses are a past record, so every
/// agent is stored disconnected except the live ones, which are stored
/// connected — inserted (with what the server knows of them now) when the
/// restored inventory lacks them, so the inventory holds every agent the
/// server serves. Returns how many live agents were not in the restored
/// inventory.
pub fn mark_live_after_restore(conn: &Connection, live: &[LiveAgent]) -> Result<u64> {
    let now = crate::store::now_ms();
    conn.execute(
        "UPDATE agents SET status = 'disconnected' WHERE status != 'disconnected'",
        [],
    )?;
    let mut exists = conn.prepare_cached("SELECT 1 FROM agents WHERE uid = ?1")?;
    let mut upsert = conn.prepare_cached(
        "INSERT INTO agents (uid, status, transport, first_seen, last_seen, updated_at, remote_addr)
         VALUES (?1, 'connected', ?2, ?3, ?3, ?4, ?5)
         ON CONFLICT(uid) DO UPDATE SET status = 'connected', transport = excluded.transport,
            last_seen = MAX(last_seen, excluded.last_seen), updated_at = excluded.updated_at,
            remote_addr = COALESCE(excluded.remote_addr, remote_addr)",
    )?;
    let mut added = Vec::new();
    for a in live {
        if !exists.exists([&a.uid])? {
            added.push(a);
        }
        upsert.execute(params![a.uid, a.transport, a.last_seen, now, a.remote_addr])?;
    }
    let events: Vec<AgentEvent> = added
        .iter()
        .map(|a| AgentEvent {
            uid: a.uid.clone(),
            at: now,
            event: "connected",
            remote_addr: a.remote_addr.clone(),
            details: Some(format!(
                "{}; connected during a restore that did not contain it",
                a.transport
            )),
        })
        .collect();
    insert_events(conn, &events)?;
    Ok(added.len() as u64)
}

/// Applies a label patch; `None` removes a key. Returns the new labels.
pub fn patch_labels(
    conn: &Connection,
    uid: &str,
    changes: &std::collections::BTreeMap<String, Option<String>>,
) -> Result<Option<std::collections::BTreeMap<String, String>>> {
    let Some(current): Option<String> = conn
        .query_row("SELECT labels FROM agents WHERE uid = ?1", [uid], |r| {
            r.get(0)
        })
        .optional()?
    else {
        return Ok(None);
    };
    let mut labels = crate::store::json::labels(&current);
    for (k, v) in changes {
        match v {
            Some(v) => {
                labels.insert(k.clone(), v.clone());
            }
            None => {
                labels.remove(k);
            }
        }
    }
    let json = serde_json::to_string(&labels)?;
    conn.execute(
        "UPDATE agents SET labels = ?2, updated_at = ?3 WHERE uid = ?1",
        params![uid, json, crate::store::now_ms()],
    )?;
    Ok(Some(labels))
}

pub fn delete(conn: &Connection, uid: &str) -> Result<bool> {
    conn.execute("DELETE FROM agent_events WHERE uid = ?1", [uid])?;
    Ok(conn.execute("DELETE FROM agents WHERE uid = ?1", [uid])? > 0)
}

/// Recent connection events of one agent, newest first.
pub fn events(conn: &Connection, uid: &str, limit: usize) -> Result<Vec<EventRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, event, remote_addr, details FROM agent_events WHERE uid = ?1 ORDER BY at DESC, id DESC LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![uid, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Deletes connection events older than `before` (ms).
pub fn prune_events(conn: &Connection, before: i64) -> Result<usize> {
    Ok(conn.execute("DELETE FROM agent_events WHERE at < ?1", [before])?)
}
