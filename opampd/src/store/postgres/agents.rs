//! The SQL of agents, their connection events and component lists.

use super::selector;
use crate::components::ComponentSet;
use crate::store::agents::{
    AgentEvent, AgentPatch, AgentRow, ComponentsPatch, EventRow, ListQuery, UidFilter,
};
use crate::store::json;
use anyhow::Result;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

const COLUMNS: &str = "uid, status, transport, capabilities, identifying, non_identifying, labels, health,
    effective_config, effective_config_hash, remote_status, sequence_num, first_seen, last_seen, updated_at,
    remote_addr, offered, applied, connection_settings, components_hash, custom_capabilities,
    cert_fingerprint, package_statuses";

fn row(r: &Row) -> AgentRow {
    AgentRow {
        uid: r.get(0),
        status: r.get(1),
        transport: r.get(2),
        capabilities: r.get::<_, i64>(3) as u64,
        identifying: r.get(4),
        non_identifying: r.get(5),
        labels: r.get(6),
        health: r.get(7),
        effective_config: r.get(8),
        effective_config_hash: r.get(9),
        remote_status: r.get(10),
        sequence_num: r.get::<_, i64>(11) as u64,
        first_seen: r.get(12),
        last_seen: r.get(13),
        updated_at: r.get(14),
        remote_addr: r.get(15),
        offered: r.get(16),
        applied: r.get(17),
        connection_settings: r.get(18),
        components_hash: r.get(19),
        custom_capabilities: r.get(20),
        cert_fingerprint: r.get(21),
        package_statuses: r.get(22),
    }
}

/// The upsert of one agent patch. `applied` follows the SQLite form: the
/// offer the agent reports APPLIED (same hash) is what it runs.
const UPSERT: &str = "INSERT INTO agents (uid, status, transport, capabilities, identifying, non_identifying, health,
        effective_config, effective_config_hash, remote_status, sequence_num,
        first_seen, last_seen, updated_at, remote_addr, offered, applied,
        connection_settings, cert_fingerprint, package_statuses)
     VALUES ($1, COALESCE($2, 'disconnected'), COALESCE($3, 'http'), COALESCE($4, 0), COALESCE($5, '{}'),
        COALESCE($6, '{}'), $7, $8, $9, $10, COALESCE($11, 0), COALESCE($12, $16), COALESCE($12, $16),
        $16, $14, $15,
        CASE WHEN $10::jsonb ->> 'status' = 'applied'
              AND $10::jsonb ->> 'hash' = $15::jsonb ->> 'hash' THEN $15 END,
        $17, $18, $19)
     ON CONFLICT (uid) DO UPDATE SET
        status = COALESCE($2, agents.status),
        transport = COALESCE($3, agents.transport),
        capabilities = COALESCE($4, agents.capabilities),
        identifying = COALESCE($5, agents.identifying),
        non_identifying = COALESCE($6, agents.non_identifying),
        health = COALESCE($7, agents.health),
        effective_config = COALESCE($8, agents.effective_config),
        effective_config_hash = COALESCE($9, agents.effective_config_hash),
        remote_status = COALESCE($10, agents.remote_status),
        sequence_num = COALESCE($11, agents.sequence_num),
        last_seen = GREATEST(agents.last_seen, COALESCE($12, agents.last_seen)),
        updated_at = COALESCE($13, agents.updated_at),
        remote_addr = COALESCE($14, agents.remote_addr),
        offered = COALESCE($15, agents.offered),
        connection_settings = COALESCE($17, agents.connection_settings),
        package_statuses = COALESCE($19, agents.package_statuses),
        applied = CASE WHEN ($10 IS NOT NULL OR $15 IS NOT NULL)
                    AND COALESCE($10, agents.remote_status)::jsonb ->> 'status' = 'applied'
                    AND COALESCE($10, agents.remote_status)::jsonb ->> 'hash'
                        = COALESCE($15, agents.offered)::jsonb ->> 'hash'
                  THEN COALESCE($15, agents.offered) ELSE agents.applied END,
        cert_fingerprint = COALESCE(agents.cert_fingerprint, $18)";

const UPSERT_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
];

/// Writes a batch of patches (one statement each; a heartbeat-only patch is
/// a lean update), auditing the registration of agents not stored before.
pub async fn apply_patches<'a>(
    c: &impl GenericClient,
    patches: impl Iterator<Item = &'a AgentPatch>,
) -> Result<()> {
    let now = crate::store::now_ms();
    let upsert = c.prepare_typed_cached(UPSERT, UPSERT_TYPES).await?;
    let seen = c
        .prepare_typed_cached(
            "UPDATE agents SET last_seen = GREATEST(last_seen, $2), sequence_num = COALESCE($3, sequence_num) WHERE uid = $1",
            &[Type::TEXT, Type::INT8, Type::INT8],
        )
        .await?;
    let known = c
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM agents WHERE uid = $1)")
        .await?;
    for p in patches {
        if p.only_liveness() {
            c.execute(
                &seen,
                &[&p.uid, &p.last_seen, &p.sequence_num.map(|s| s as i64)],
            )
            .await?;
            continue;
        }
        let exists: bool = c.query_one(&known, &[&p.uid]).await?.get(0);
        if !exists {
            let service = p.identifying.as_deref().and_then(json::service_name);
            let details = serde_json::json!({
                "transport": p.transport.unwrap_or("http"),
                "service.name": service,
            });
            super::users::insert_audit_row(
                c,
                "agent",
                "agent.register",
                Some(&p.uid),
                p.remote_addr.as_deref(),
                "ok",
                &details.to_string(),
            )
            .await?;
        }
        let params: [&(dyn ToSql + Sync); 19] = [
            &p.uid,
            &p.status,
            &p.transport,
            &p.capabilities.map(|c| c as i64),
            &p.identifying,
            &p.non_identifying,
            &p.health,
            &p.effective_config,
            &p.effective_config_hash,
            &p.remote_status,
            &p.sequence_num.map(|s| s as i64),
            &p.last_seen,
            &p.changes_state().then_some(now),
            &p.remote_addr,
            &p.offered,
            &now,
            &p.connection_settings,
            &p.cert_fingerprint,
            &p.package_statuses,
        ];
        c.execute(&upsert, &params).await?;
        if let Some(components) = &p.components {
            apply_components(c, &p.uid, components).await?;
        }
    }
    Ok(())
}

async fn apply_components(
    c: &impl GenericClient,
    uid: &str,
    patch: &ComponentsPatch,
) -> Result<()> {
    if let Some(set) = &patch.set {
        let entries = serde_json::to_string(&set.entries).unwrap_or_else(|_| "[]".into());
        let types = serde_json::to_string(&set.types).unwrap_or_else(|_| "[]".into());
        c.execute(
            "INSERT INTO component_sets (hash, entries, types, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (hash) DO NOTHING",
            &[&set.hash_hex(), &entries, &types, &crate::store::now_ms()],
        )
        .await?;
    }
    if patch.hash.is_some() || patch.custom_capabilities.is_some() {
        c.execute(
            "UPDATE agents SET components_hash = COALESCE($2, components_hash),
                custom_capabilities = COALESCE($3, custom_capabilities) WHERE uid = $1",
            &[&uid, &patch.hash, &patch.custom_capabilities],
        )
        .await?;
    }
    Ok(())
}

pub async fn insert_events(c: &impl GenericClient, events: &[AgentEvent]) -> Result<()> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO agent_events (uid, at, event, remote_addr, details) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    for e in events {
        c.execute(
            &stmt,
            &[&e.uid, &e.at, &e.event, &e.remote_addr, &e.details],
        )
        .await?;
    }
    Ok(())
}

pub async fn get(c: &impl GenericClient, uid: &str) -> Result<Option<AgentRow>> {
    let stmt = c
        .prepare_cached(&format!("SELECT {COLUMNS} FROM agents WHERE uid = $1"))
        .await?;
    Ok(c.query_opt(&stmt, &[&uid]).await?.as_ref().map(row))
}

/// The stored agents among `uids`, in the given order.
pub async fn get_many(c: &impl GenericClient, uids: &[String]) -> Result<Vec<AgentRow>> {
    let stmt = c
        .prepare_cached(&format!("SELECT {COLUMNS} FROM agents WHERE uid = ANY($1)"))
        .await?;
    let mut found: std::collections::HashMap<String, AgentRow> = c
        .query(&stmt, &[&uids])
        .await?
        .iter()
        .map(|r| {
            let agent = row(r);
            (agent.uid.clone(), agent)
        })
        .collect();
    Ok(uids.iter().filter_map(|uid| found.remove(uid)).collect())
}

pub async fn list(c: &impl GenericClient, q: &ListQuery) -> Result<(Vec<AgentRow>, u64)> {
    let (sel_sql, sel_params) = selector::condition(&q.selector, 1);
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
        sel_params.into_iter().map(|p| Box::new(p) as _).collect();
    let mut conds: Vec<String> = Vec::new();
    if !sel_sql.is_empty() {
        conds.push(sel_sql);
    }
    if let Some(filter) = &q.uids {
        let (op, uids) = match filter {
            UidFilter::Only(u) => ("", u),
            UidFilter::Except(u) => ("NOT ", u),
        };
        params.push(Box::new(uids.clone()));
        conds.push(format!("{op}(uid = ANY(${}))", params.len()));
    }
    if let Some(prefix) = &q.uid_prefix {
        params.push(Box::new(prefix.clone()));
        params.push(Box::new(format!("{prefix}~")));
        conds.push(format!(
            "uid >= ${} AND uid < ${}",
            params.len() - 1,
            params.len()
        ));
    }
    let filter = if conds.is_empty() {
        "TRUE".to_string()
    } else {
        conds.join(" AND ")
    };
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
    let total: i64 = c
        .query_one(
            &format!("SELECT COUNT(*) FROM agents WHERE {filter}"),
            &refs,
        )
        .await?
        .get(0);
    let mut page_filter = filter;
    if let Some(after) = &q.after {
        params.push(Box::new(after.clone()));
        page_filter = format!("{page_filter} AND uid > ${}", params.len());
    }
    params.push(Box::new(q.limit as i64));
    let sql = format!(
        "SELECT {COLUMNS} FROM agents WHERE {page_filter} ORDER BY uid LIMIT ${}",
        params.len()
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
    let rows = c.query(&sql, &refs).await?.iter().map(row).collect();
    Ok((rows, total as u64))
}

pub async fn count(c: &impl GenericClient) -> Result<u64> {
    let n: i64 = c
        .query_one("SELECT COUNT(*) FROM agents", &[])
        .await?
        .get(0);
    Ok(n as u64)
}

/// Applies a label patch; returns the new labels, None if there is no such agent.
pub async fn patch_labels(
    c: &impl GenericClient,
    uid: &str,
    changes: &std::collections::BTreeMap<String, Option<String>>,
) -> Result<Option<std::collections::BTreeMap<String, String>>> {
    let Some(current) = c
        .query_opt(
            "SELECT labels FROM agents WHERE uid = $1 FOR UPDATE",
            &[&uid],
        )
        .await?
    else {
        return Ok(None);
    };
    let current: String = current.get(0);
    let mut labels = json::labels(&current);
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
    c.execute(
        "UPDATE agents SET labels = $2, updated_at = $3 WHERE uid = $1",
        &[&uid, &json, &crate::store::now_ms()],
    )
    .await?;
    Ok(Some(labels))
}

pub async fn delete(c: &impl GenericClient, uid: &str) -> Result<bool> {
    c.execute("DELETE FROM agent_events WHERE uid = $1", &[&uid])
        .await?;
    Ok(c.execute("DELETE FROM agents WHERE uid = $1", &[&uid])
        .await?
        > 0)
}

pub async fn events(c: &impl GenericClient, uid: &str, limit: usize) -> Result<Vec<EventRow>> {
    let rows = c
        .query(
            "SELECT at, event, remote_addr, details FROM agent_events WHERE uid = $1
             ORDER BY at DESC, id DESC LIMIT $2",
            &[&uid, &(limit as i64)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

pub async fn prune_events(c: &impl GenericClient, before: i64) -> Result<usize> {
    Ok(
        c.execute("DELETE FROM agent_events WHERE at < $1", &[&before])
            .await? as usize,
    )
}

/// Every stored component list.
pub async fn component_sets(c: &impl GenericClient) -> Result<Vec<ComponentSet>> {
    let rows = c
        .query("SELECT hash, entries FROM component_sets", &[])
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let (hash, entries): (String, String) = (r.get(0), r.get(1));
            let entries = json::component_entries(&entries)?;
            Some(ComponentSet::from_stored(hex::decode(hash).ok()?, entries))
        })
        .collect())
}

/// Stored agents that match `selector` and accept remote configuration.
pub async fn matching(
    c: &impl GenericClient,
    selector: &crate::selector::Selector,
) -> Result<Vec<(String, Option<String>)>> {
    let (cond, params) = selector::condition(selector, 1);
    let cond = if cond.is_empty() {
        String::new()
    } else {
        format!(" AND {cond}")
    };
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let rows = c
        .query(
            &format!(
                "SELECT uid, components_hash FROM agents WHERE (capabilities & {}) != 0{cond}
                 ORDER BY uid",
                opamp_proto::caps::ACCEPTS_REMOTE_CONFIG
            ),
            &refs,
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
