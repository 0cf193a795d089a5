//! The SQL of the package catalogue: package versions and their files.

use super::users::insert_audit;
use crate::store::now_ms;
use crate::store::packages::{add_audit, refusal, AddOutcome, FileRow, PackageAdd, PackageRow};
use anyhow::Result;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

pub async fn get(c: &impl GenericClient, name: &str, version: &str) -> Result<Option<PackageRow>> {
    let row = c
        .query_opt(
            "SELECT name, version, top_level, created_at, created_by FROM packages
             WHERE name = $1 AND version = $2",
            &[&name, &version],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut package = package_row(&row);
    package.files = files(c, name, version).await?;
    Ok(Some(package))
}

pub async fn list(c: &impl GenericClient, name: Option<&str>) -> Result<Vec<PackageRow>> {
    let rows = c
        .query(
            "SELECT name, version, top_level, created_at, created_by FROM packages
             WHERE $1::TEXT IS NULL OR name = $1 ORDER BY name, created_at, version",
            &[&name],
        )
        .await?;
    let mut packages: Vec<PackageRow> = rows.iter().map(package_row).collect();
    for package in &mut packages {
        package.files = files(c, &package.name, &package.version).await?;
    }
    Ok(packages)
}

/// Adds a version or files for it inside the caller's transaction (the
/// version's row is locked first, so two replicas adding the same version
/// at once store one).
pub async fn insert(c: &impl GenericClient, add: PackageAdd) -> Result<AddOutcome> {
    let now = now_ms();
    c.execute(
        "SELECT pg_advisory_xact_lock(hashtext('opampd.packages.' || $1))",
        &[&add.name],
    )
    .await?;
    let existing = get(c, &add.name, &add.version).await?;
    let created = existing.is_none();
    let versions: Vec<String> = if created {
        list(c, Some(&add.name))
            .await?
            .into_iter()
            .map(|row| row.version)
            .collect()
    } else {
        Vec::new()
    };
    if let Some(refused) = refusal(existing.as_ref(), &versions, &add) {
        return Ok(refused);
    }
    if created {
        c.execute(
            "INSERT INTO packages (name, version, top_level, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5)",
            &[&add.name, &add.version, &add.top_level, &now, &add.actor],
        )
        .await?;
    }
    let mut added = Vec::new();
    for file in &add.files {
        let size = file.size.map(|n| n as i64);
        let inserted = c
            .execute(
                "INSERT INTO package_files
                     (name, version, os, arch, url, sha256, signature, size, hosted, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT DO NOTHING",
                &[
                    &add.name,
                    &add.version,
                    &file.os,
                    &file.arch,
                    &file.url,
                    &file.sha256,
                    &file.signature,
                    &size,
                    &file.hosted,
                    &now,
                ],
            )
            .await?;
        if inserted > 0 {
            added.push(format!("{}/{}", file.os, file.arch));
        }
    }
    insert_audit(c, &add_audit(&add, created, &added)).await?;
    let package = get(c, &add.name, &add.version)
        .await?
        .ok_or_else(|| anyhow::anyhow!("package {}/{} vanished", add.name, add.version))?;
    Ok(AddOutcome::Added { package, created })
}

/// Deletes a version (its files go with it); whether it existed.
pub async fn delete(c: &impl GenericClient, name: &str, version: &str) -> Result<bool> {
    Ok(c.execute(
        "DELETE FROM packages WHERE name = $1 AND version = $2",
        &[&name, &version],
    )
    .await?
        > 0)
}

fn package_row(r: &Row) -> PackageRow {
    PackageRow {
        name: r.get(0),
        version: r.get(1),
        top_level: r.get(2),
        created_at: r.get(3),
        created_by: r.get(4),
        files: Vec::new(),
    }
}

async fn files(c: &impl GenericClient, name: &str, version: &str) -> Result<Vec<FileRow>> {
    let rows = c
        .query(
            "SELECT os, arch, url, sha256, signature, size, hosted, created_at FROM package_files
             WHERE name = $1 AND version = $2 ORDER BY os, arch",
            &[&name, &version],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| FileRow {
            os: r.get(0),
            arch: r.get(1),
            url: r.get(2),
            sha256: r.get(3),
            signature: r.get(4),
            size: r.get::<_, Option<i64>>(5).map(|n| n as u64),
            hosted: r.get(6),
            created_at: r.get(7),
        })
        .collect())
}
