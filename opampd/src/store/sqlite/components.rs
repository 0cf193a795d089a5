//! Component lists (by hash) and the agent columns that refer to them:
//! `components_hash` and `custom_capabilities`.

use crate::components::ComponentSet;
use crate::store::agents::ComponentsPatch;
use anyhow::Result;
use rusqlite::{params, Connection};

/// Writes what a patch says of components and custom capabilities (after the
/// agent's row is written).
pub(super) fn apply(conn: &Connection, uid: &str, patch: &ComponentsPatch) -> rusqlite::Result<()> {
    if let Some(set) = &patch.set {
        let entries = serde_json::to_string(&set.entries).unwrap_or_else(|_| "[]".into());
        let types = serde_json::to_string(&set.types).unwrap_or_else(|_| "[]".into());
        conn.prepare_cached(
            "INSERT OR IGNORE INTO component_sets (hash, entries, types, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![set.hash_hex(), entries, types, crate::store::now_ms()])?;
    }
    if patch.hash.is_some() || patch.custom_capabilities.is_some() {
        conn.prepare_cached(
            "UPDATE agents SET components_hash = COALESCE(?2, components_hash),
                custom_capabilities = COALESCE(?3, custom_capabilities) WHERE uid = ?1",
        )?
        .execute(params![uid, patch.hash, patch.custom_capabilities])?;
    }
    Ok(())
}

/// Every stored list.
pub fn all(conn: &Connection) -> Result<Vec<ComponentSet>> {
    let mut stmt = conn.prepare_cached("SELECT hash, entries FROM component_sets")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(hash, entries)| {
            let entries = crate::store::json::component_entries(&entries)?;
            Some(ComponentSet::from_stored(hex::decode(hash).ok()?, entries))
        })
        .collect())
}

/// The SQL condition of a `component` selector term over the `agents`
/// columns: the agent's list holds `kind/type` (parameter `?{param}`).
pub fn has_component_sql(param: usize) -> String {
    format!(
        "EXISTS (SELECT 1 FROM component_sets cs, json_each(cs.types) t \
         WHERE cs.hash = agents.components_hash AND t.value = ?{param})"
    )
}
