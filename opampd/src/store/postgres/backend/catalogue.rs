//! The transactions of the package catalogue and package rollouts.

use crate::store::configs::RolloutTransition;
use crate::store::now_ms;
use crate::store::package_rollouts::PACKAGE_ROLLOUTS;
use crate::store::package_rollouts::{plan_start, PackageRolloutRow, PackageRolloutStart};
use crate::store::packages::{
    blocking_rollout, delete_audit, AddOutcome, DeleteOutcome, PackageAdd,
};
use crate::store::postgres::staged;
use crate::store::postgres::{package_rollouts, packages, users, Postgres};
use anyhow::Result;
use deadpool_postgres::GenericClient;

pub(super) async fn add_package(pg: &Postgres, add: PackageAdd) -> Result<AddOutcome> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let outcome = packages::insert(&tx, add).await?;
    // A refusal changed nothing: committing it is as good as not.
    tx.commit().await?;
    Ok(outcome)
}

pub(super) async fn delete_package(
    pg: &Postgres,
    name: &str,
    version: &str,
    actor: &str,
    remote_addr: Option<String>,
) -> Result<DeleteOutcome> {
    let audit = delete_audit(name, version, actor, remote_addr.as_deref());
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let latest = package_rollouts::latest(&tx, name).await?;
    if let Some(rollout) = blocking_rollout(latest, version) {
        return Ok(DeleteOutcome::InRollout(Box::new(rollout)));
    }
    if !packages::delete(&tx, name, version).await? {
        return Ok(DeleteOutcome::Missing);
    }
    users::insert_audit(&tx, &audit).await?;
    tx.commit().await?;
    Ok(DeleteOutcome::Deleted)
}

pub(super) async fn start_package_rollout(
    pg: &Postgres,
    start: PackageRolloutStart,
) -> Result<Option<PackageRolloutRow>> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('package rollout:' || $1))",
        &[&start.name],
    )
    .await?;
    if packages::get(&tx, &start.name, &start.version)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let now = now_ms();
    let prior = package_rollouts::latest(&tx, &start.name).await?;
    let (row, audit) = plan_start(&start, prior.as_ref(), now);
    staged::supersede(&tx, PACKAGE_ROLLOUTS, &start.name, now).await?;
    let id = package_rollouts::insert(&tx, &row, &start.agents).await?;
    users::insert_audit(&tx, &audit).await?;
    tx.commit().await?;
    Ok(Some(PackageRolloutRow { id, ..row }))
}

pub(super) async fn transition_package_rollout(
    pg: &Postgres,
    change: RolloutTransition,
) -> Result<bool> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let moved = staged::transition(&tx, PACKAGE_ROLLOUTS, &change).await?;
    tx.commit().await?;
    Ok(moved)
}
