//! The transactions and snapshot reads of configurations and their rollouts.

use crate::store::configs::CONFIGURATION_ROLLOUTS;
use crate::store::configs::{
    self as plan, ConfigDelete, ConfigDetail, ConfigRollback, ConfigRow, ConfigSave, DeleteOutcome,
    RollbackOutcome, RolloutRow, RolloutStart, RolloutTransition, SavePlan, Saved, TargetRow,
    VersionRow,
};
use crate::store::now_ms;
use crate::store::postgres::staged;
use crate::store::postgres::{configs, users, Postgres};
use anyhow::{Context, Result};
use deadpool_postgres::{GenericClient, Transaction};

/// A configuration with its newest version and latest rollout.
pub(super) async fn detail(c: &impl GenericClient, name: &str) -> Result<Option<ConfigDetail>> {
    let Some(row) = configs::get(c, name).await? else {
        return Ok(None);
    };
    let newest = configs::get_version(c, name, row.latest_version)
        .await?
        .with_context(|| format!("configuration {} lacks its newest version", row.name))?;
    let rollout = configs::latest_rollout(c, name).await?;
    Ok(Some(ConfigDetail {
        row,
        newest,
        rollout,
    }))
}

/// Writes what a save or rollback decided.
pub(super) async fn apply(c: &impl GenericClient, plan: SavePlan) -> Result<Saved> {
    let Some(audit) = plan.audit else {
        return Ok(plan.saved);
    };
    if plan.insert {
        configs::insert(c, &plan.saved.row).await?;
    }
    if let Some(version) = &plan.version {
        configs::insert_version(c, version).await?;
    }
    if !plan.insert {
        configs::update(c, &plan.saved.row).await?;
    }
    users::insert_audit(c, &audit).await?;
    Ok(plan.saved)
}

/// Serialises writes to one configuration across connections and replicas
/// until the transaction ends.
pub(super) async fn lock_configuration(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('configuration:' || $1))",
        &[&name],
    )
    .await?;
    Ok(())
}

pub(super) async fn config_version(
    pg: &Postgres,
    name: &str,
    version: u64,
) -> Result<Option<(ConfigRow, Option<VersionRow>)>> {
    let client = pg.client().await?;
    let Some(row) = configs::get(&client, name).await? else {
        return Ok(None);
    };
    Ok(Some((
        row,
        configs::get_version(&client, name, version).await?,
    )))
}

pub(super) async fn config_versions(
    pg: &Postgres,
    name: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Option<(Vec<VersionRow>, u64)>> {
    let client = pg.client().await?;
    if configs::get(&client, name).await?.is_none() {
        return Ok(None);
    }
    Ok(Some(
        configs::list_versions(&client, name, before, limit).await?,
    ))
}

pub(super) async fn save_configuration(pg: &Postgres, save: ConfigSave) -> Result<Saved> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    lock_configuration(&tx, &save.name).await?;
    let current = detail(&tx, &save.name).await?;
    let saved = apply(&tx, plan::plan_save(save, current, now_ms())).await?;
    tx.commit().await?;
    Ok(saved)
}

pub(super) async fn rollback_configuration(
    pg: &Postgres,
    rollback: ConfigRollback,
) -> Result<RollbackOutcome> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    lock_configuration(&tx, &rollback.name).await?;
    let Some(current) = detail(&tx, &rollback.name).await? else {
        return Ok(RollbackOutcome::Missing);
    };
    let newest = current.row.latest_version;
    let target = match plan::rollback_target(rollback.version, newest) {
        Ok(target) => target,
        Err(outcome) => return Ok(outcome),
    };
    let Some(old) = configs::get_version(&tx, &rollback.name, target).await? else {
        return Ok(RollbackOutcome::NoSuchVersion {
            version: target,
            newest,
        });
    };
    let plan = plan::plan_rollback(&rollback, current, old, now_ms());
    let saved = apply(&tx, plan).await?;
    tx.commit().await?;
    Ok(RollbackOutcome::Saved(Box::new(saved)))
}

pub(super) async fn delete_configuration(
    pg: &Postgres,
    delete: ConfigDelete,
) -> Result<DeleteOutcome> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    lock_configuration(&tx, &delete.name).await?;
    let row = configs::get(&tx, &delete.name).await?;
    let rollout = configs::latest_rollout(&tx, &delete.name).await?;
    let audit = match plan::plan_delete(&delete, row.as_ref(), rollout.as_ref()) {
        Ok(audit) => audit,
        Err(outcome) => return Ok(outcome),
    };
    configs::delete(&tx, &delete.name).await?;
    users::insert_audit(&tx, &audit).await?;
    tx.commit().await?;
    Ok(DeleteOutcome::Deleted {
        rolled_out: rollout.is_some(),
    })
}

pub(super) async fn latest_rollout(
    pg: &Postgres,
    name: &str,
) -> Result<Option<(ConfigRow, Option<RolloutRow>)>> {
    let client = pg.client().await?;
    let Some(row) = configs::get(&client, name).await? else {
        return Ok(None);
    };
    Ok(Some((row, configs::latest_rollout(&client, name).await?)))
}

pub(super) async fn targets(pg: &Postgres) -> Result<Vec<TargetRow>> {
    let mut client = pg.client().await?;
    // One snapshot: rollouts and their agents as of one moment.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let targets = configs::targets(&tx).await?;
    tx.commit().await?;
    Ok(targets)
}

pub(super) async fn start_rollout(
    pg: &Postgres,
    start: RolloutStart,
) -> Result<Option<RolloutRow>> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    lock_configuration(&tx, &start.name).await?;
    let Some(version) = configs::get_version(&tx, &start.name, start.version).await? else {
        return Ok(None);
    };
    let now = now_ms();
    let prior = configs::latest_rollout(&tx, &start.name).await?;
    let (row, audit) = plan::plan_rollout(&start, version.hash, prior.as_ref(), now);
    staged::supersede(&tx, CONFIGURATION_ROLLOUTS, &start.name, now).await?;
    let id = configs::insert_rollout(&tx, &row, &start.agents).await?;
    users::insert_audit(&tx, &audit).await?;
    tx.commit().await?;
    Ok(Some(RolloutRow { id, ..row }))
}

pub(super) async fn transition_rollout(pg: &Postgres, change: RolloutTransition) -> Result<bool> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let moved = staged::transition(&tx, CONFIGURATION_ROLLOUTS, &change).await?;
    tx.commit().await?;
    Ok(moved)
}
