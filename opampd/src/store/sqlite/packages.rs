//! The SQL of the package catalogue: package versions and their files.

use super::users::insert_audit;
use crate::store::now_ms;
use crate::store::packages::{add_audit, refusal, AddOutcome, FileRow, PackageAdd, PackageRow};
use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension, Row};

fn package_row(r: &Row<'_>) -> rusqlite::Result<PackageRow> {
    Ok(PackageRow {
        name: r.get(0)?,
        version: r.get(1)?,
        top_level: r.get(2)?,
        created_at: r.get(3)?,
        created_by: r.get(4)?,
        files: Vec::new(),
    })
}

fn file_row(r: &Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        os: r.get(0)?,
        arch: r.get(1)?,
        url: r.get(2)?,
        sha256: r.get(3)?,
        signature: r.get(4)?,
        size: r.get::<_, Option<i64>>(5)?.map(|n| n as u64),
        hosted: r.get(6)?,
        created_at: r.get(7)?,
    })
}

fn files(c: &Connection, name: &str, version: &str) -> Result<Vec<FileRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT os, arch, url, sha256, signature, size, hosted, created_at FROM package_files
         WHERE name = ?1 AND version = ?2 ORDER BY os, arch",
    )?;
    let rows = stmt.query_map(params![name, version], file_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn get(c: &Connection, name: &str, version: &str) -> Result<Option<PackageRow>> {
    let row = c
        .query_row(
            "SELECT name, version, top_level, created_at, created_by FROM packages
             WHERE name = ?1 AND version = ?2",
            params![name, version],
            package_row,
        )
        .optional()?;
    let Some(mut row) = row else {
        return Ok(None);
    };
    row.files = files(c, name, version)?;
    Ok(Some(row))
}

pub fn list(c: &Connection, name: Option<&str>) -> Result<Vec<PackageRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT name, version, top_level, created_at, created_by FROM packages
         WHERE ?1 IS NULL OR name = ?1 ORDER BY name, created_at, version",
    )?;
    let mut rows = stmt
        .query_map(params![name], package_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for row in &mut rows {
        row.files = files(c, &row.name, &row.version)?;
    }
    Ok(rows)
}

pub fn insert(c: &Connection, add: PackageAdd) -> Result<AddOutcome> {
    let now = now_ms();
    let existing = get(c, &add.name, &add.version)?;
    let created = existing.is_none();
    let versions: Vec<String> = if created {
        list(c, Some(&add.name))?
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
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![add.name, add.version, add.top_level, now, add.actor],
        )?;
    }
    let mut stmt = c.prepare_cached(
        "INSERT OR IGNORE INTO package_files
             (name, version, os, arch, url, sha256, signature, size, hosted, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut added = Vec::new();
    for file in &add.files {
        let inserted = stmt.execute(params![
            add.name,
            add.version,
            file.os,
            file.arch,
            file.url,
            file.sha256,
            file.signature,
            file.size.map(|n| n as i64),
            file.hosted,
            now,
        ])?;
        if inserted > 0 {
            added.push(format!("{}/{}", file.os, file.arch));
        }
    }
    insert_audit(c, &add_audit(&add, created, &added))?;
    let package = get(c, &add.name, &add.version)?
        .ok_or_else(|| anyhow::anyhow!("package {}/{} vanished", add.name, add.version))?;
    Ok(AddOutcome::Added { package, created })
}

/// Deletes a version and its files; whether it existed.
pub fn delete(c: &Connection, name: &str, version: &str) -> Result<bool> {
    let deleted = c.execute(
        "DELETE FROM packages WHERE name = ?1 AND version = ?2",
        params![name, version],
    )? > 0;
    c.execute(
        "DELETE FROM package_files WHERE name = ?1 AND version = ?2",
        params![name, version],
    )?;
    Ok(deleted)
}
